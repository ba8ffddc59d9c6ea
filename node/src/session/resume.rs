//! XEP-0198 resumption anywhere in the cluster, and after the node that
//! held the session died.
//!
//! A resumable session of a node with peers has a [`Record`] in the
//! registry group (`sm_session`, by SM-ID): who it is, the `h` it reported
//! last, its last available presence, and how far the client acknowledged
//! what was archived for it (`acked_archive`, a message archive id:
//! messages are archived durably before they are delivered). The record is
//! written when stream management is enabled and then at most every
//! [`CHECKPOINT_EVERY`] when acks move it on; nothing per stanza.
//!
//! Another node resumes it from the record: if the session's node is alive
//! it is asked to let go first ([`RELEASE`]: it records exactly what the
//! client acknowledged and hands on what the archive does not hold); if
//! that node died, the record's last checkpoint is what is known. Either
//! way the new node replays, from the archive, the messages to the user's
//! bare JID or to that full JID after `acked_archive`, and removes from
//! offline storage those it replayed.
//!
//! A session that ended without being resumed (timed out, replaced,
//! closed) leaves its record behind as a tombstone for
//! `sm.ended_retention_secs` ([`write_ended`]): only who it was and the
//! `h` of the client's stanzas it handled, so that a late `<resume/>` on
//! any node gets `<failed h='...'/>` (XEP-0198 §5) and the client knows
//! which of its stanzas to send again. One registry write when the
//! session ends (it replaces the record's removal); an index by expiry
//! lets the leader sweep old tombstones ([`sweep_ended`]) without reading
//! the live records. A node without peers keeps them in its resumable
//! table instead (`sm::Resumable::end`): there is nothing to share.

use crate::server::Server;
use crate::stanza::{NS_CLIENT, NS_DELAY};
use serde::{Deserialize, Serialize};
use starling_cluster::{Envelope, Op, SM_SESSIONS, StoreError};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// `Envelope::close` that asks a node to let a session go for resumption
/// elsewhere; `Envelope::stanza` carries the client's `h`.
pub const RELEASE: &str = "sm-release";

/// Least time between two checkpoints of one session.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// How long the resuming node waits for the old one to let go.
const RELEASE_WAIT: Duration = Duration::from_secs(3);

/// Most messages replayed on one resumption.
const MAX_REPLAY: usize = 10_000;

/// A resumable session, as the cluster knows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub bare: String,
    pub full: String,
    pub node: u64,
    pub session: u64,
    pub max: u32,
    /// Stanzas of the client's handled (at the last checkpoint).
    pub h_in: u32,
    /// Every archived message for this session up to this archive id was
    /// acknowledged by the client (or was not this session's to get).
    pub acked_archive: u64,
    /// The last available presence it broadcast (serialised).
    pub presence: Option<String>,
    /// The node let the session go: the fields are exact, not a checkpoint.
    #[serde(default)]
    pub released: bool,
    /// The client's `h` when this was written (what it had acknowledged)...
    #[serde(default)]
    pub acked_h: u32,
    /// ...and the stanzas written after that, oldest first, by archive id
    /// (0: not archived): the client's `h` on resumption says how many of
    /// these it has, so those are not replayed.
    #[serde(default)]
    pub unacked: Vec<u64>,
    /// What the session asked for, restored where it resumes.
    #[serde(default)]
    pub flags: Flags,
    /// Set when released: stanzas the old node had taken for the client
    /// and the client does not have, that neither the archive holds nor
    /// routing again could bring (groupchat messages and presence a room
    /// sent to this full JID): the new node sends them after the replay.
    #[serde(default)]
    pub pending: Vec<String>,
    /// Set when the session ended without being resumed: the record is
    /// a tombstone until then (unix seconds), and `h_in` is exact.
    #[serde(default)]
    pub ended_until: u64,
    /// In a tombstone: the session ended because a resumption elsewhere
    /// claimed more than it had sent (this many).
    #[serde(default)]
    pub refused_sent: Option<u32>,
}

/// Per-resource requests a resumed session keeps (they live in the
/// router's entry of its node).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags {
    /// Asked for the roster (RFC 6121 §2.1.6).
    pub interested: bool,
    /// Enabled message carbons (XEP-0280).
    pub carbons: bool,
    /// Asked for the blocklist (XEP-0191).
    pub blocklist: bool,
}

/// Most unacknowledged stanzas a record lists.
pub const MAX_LISTED: usize = 256;

impl Record {
    /// A tombstone of a session that ended: what a late `<resume/>` is told
    /// (`ended_until` is set when it is written).
    pub fn ended(bare: &str, node: u64, h_in: u32, refused_sent: Option<u32>) -> Self {
        Record {
            bare: bare.to_owned(),
            full: String::new(),
            node,
            session: 0,
            max: 0,
            h_in,
            acked_archive: 0,
            presence: None,
            released: false,
            acked_h: 0,
            unacked: Vec::new(),
            flags: Flags::default(),
            pending: Vec::new(),
            ended_until: 0,
            refused_sent,
        }
    }

    /// Whether this is the tombstone of a session that ended.
    pub fn is_ended(&self) -> bool {
        self.ended_until != 0
    }

    /// The archive ids of the messages a client that reports `h` received
    /// after the record was written.
    pub fn received(&self, h: u32) -> HashSet<u64> {
        let n = h.wrapping_sub(self.acked_h) as usize;
        self.unacked
            .iter()
            .take(n)
            .copied()
            .filter(|id| *id != 0)
            .collect()
    }
}

/// The record of `id`; a tombstone only while its time lasts.
pub fn read(server: &Server, id: &str) -> Option<Record> {
    read_raw(server, id.as_bytes()).filter(|r| !r.is_ended() || r.ended_until > unix_now())
}

pub async fn write(server: &Server, id: &str, rec: &Record) -> Result<(), StoreError> {
    let value = rmp_serde::to_vec_named(rec).expect("records serialise");
    server
        .storage
        .store
        .write(vec![Op::Put {
            space: SM_SESSIONS.into(),
            key: id.as_bytes().to_vec(),
            value,
        }])
        .await?;
    Ok(())
}

/// Keys of the index of tombstones by expiry: this prefix, the expiry
/// (unix seconds, big-endian), the SM-ID. Never an SM-ID itself: XML
/// cannot carry U+0001, so no `previd` reads it.
const ENDED_INDEX: &[u8] = b"\x01ended/";

/// Most tombstones one sweep removes.
const SWEEP_BATCH: usize = 512;

fn ended_index_key(until: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(ENDED_INDEX.len() + 8 + id.len());
    k.extend_from_slice(ENDED_INDEX);
    k.extend_from_slice(&until.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Replaces the record of session `id`, which ended without being
/// resumed, with its tombstone `rec` ([`Record::ended`]: how many of the
/// client's stanzas it handled), kept `keep_secs` (0: the record goes).
pub async fn write_ended(server: &Server, id: &str, mut rec: Record, keep_secs: u64) {
    if keep_secs == 0 {
        return remove(server, id).await;
    }
    let until = unix_now().saturating_add(keep_secs);
    rec.ended_until = until;
    let value = rmp_serde::to_vec_named(&rec).expect("records serialise");
    let ops = vec![
        Op::Put {
            space: SM_SESSIONS.into(),
            key: id.as_bytes().to_vec(),
            value,
        },
        Op::Put {
            space: SM_SESSIONS.into(),
            key: ended_index_key(until, id),
            value: Vec::new(),
        },
    ];
    if let Err(e) = server.storage.store.write(ops).await {
        tracing::debug!(error = %e, "could not record the end of a resumable session");
    }
}

/// Removes the tombstones whose time is up (at most [`SWEEP_BATCH`]);
/// returns how many.
pub async fn sweep_ended(server: &Server, now: u64) -> Result<usize, StoreError> {
    let store = &server.storage.store;
    let start = ended_index_key(0, "");
    let end = ended_index_key(now.saturating_add(1), "");
    let keys = store.scan_range(SM_SESSIONS, &start, &end, false, SWEEP_BATCH)?;
    if keys.is_empty() {
        return Ok(0);
    }
    let n = keys.len();
    let mut ops = Vec::with_capacity(2 * n);
    for (k, _) in keys {
        let id = k[ENDED_INDEX.len() + 8..].to_vec();
        // Only a tombstone goes: an SM-ID is never used again, but a
        // record written there since is not this one to remove.
        if read_raw(server, &id).is_some_and(|r| r.is_ended()) {
            ops.push(Op::Delete {
                space: SM_SESSIONS.into(),
                key: id,
            });
        }
        ops.push(Op::Delete {
            space: SM_SESSIONS.into(),
            key: k,
        });
    }
    store.write(ops).await?;
    metrics::counter!("starling_sm_ended_swept_total").increment(n as u64);
    Ok(n)
}

/// Sweeps the tombstones every minute on the node that leads the durable
/// group (every node runs the loop; the others skip the pass), and the
/// node's own table of ended sessions on every node.
pub async fn run_sweeper(server: Arc<Server>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        server.resumable.sweep_ended(std::time::Instant::now());
        let store = &server.storage.store;
        if !store.registry_active() || store.leader() != Some(store.node_id()) {
            continue;
        }
        loop {
            match sweep_ended(&server, unix_now()).await {
                Ok(n) if n == SWEEP_BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "could not sweep ended stream management records");
                    break;
                }
            }
        }
    }
}

/// Of the sessions `gone` (full JIDs) whose routes were dropped with
/// their node, those that may still be resumed: a live record (not a
/// tombstone) names them. It may name another node already: one that
/// resumed the session and wrote its record before its route (a session
/// without presence publishes its route a moment after `<resumed/>`).
/// With the seconds their client has to resume (`max`, at most what the
/// configuration grants). A walk of every record, a page at a time (a
/// large deployment holds millions): only when a node was lost, never on
/// a stanza's path.
pub fn resumable(server: &Server, gone: &[String]) -> HashMap<String, u32> {
    const PAGE: usize = 1024;
    let mut out = HashMap::new();
    let cap = server.config.sm.resume_timeout_secs;
    if gone.is_empty() || cap == 0 {
        return out;
    }
    let wanted: HashSet<&str> = gone.iter().map(String::as_str).collect();
    // Records are keyed by their id (printable); the ended index sorts
    // before them.
    let mut start = vec![ENDED_INDEX[0] + 1];
    loop {
        let Ok(page) = server
            .storage
            .store
            .scan_range(SM_SESSIONS, &start, &[0xff], false, PAGE)
        else {
            return out;
        };
        let full_page = page.len() == PAGE;
        for (k, v) in &page {
            let Ok(rec) = rmp_serde::from_slice::<Record>(v) else {
                continue;
            };
            if !rec.is_ended() && wanted.contains(rec.full.as_str()) {
                let secs = rec.max.min(cap);
                if secs > 0 {
                    out.insert(rec.full, secs);
                }
            }
            start.clone_from(k);
        }
        if !full_page {
            return out;
        }
        // The next page starts right after the last key read.
        start.push(0);
    }
}

fn read_raw(server: &Server, id: &[u8]) -> Option<Record> {
    let v = server.storage.store.get(SM_SESSIONS, id).ok().flatten()?;
    rmp_serde::from_slice(&v).ok()
}

pub async fn remove(server: &Server, id: &str) {
    let op = Op::Delete {
        space: SM_SESSIONS.into(),
        key: id.as_bytes().to_vec(),
    };
    if let Err(e) = server.storage.store.write(vec![op]).await {
        tracing::debug!(error = %e, "could not remove a stream management record");
    }
}

/// The message archive id in a stanza delivered to `bare`, from the
/// XEP-0359 `<stanza-id/>` the archive added (by `bare`).
pub fn archive_id(xml: &str, bare: &str) -> Option<u64> {
    const SID: &str = "<stanza-id xmlns=\"urn:xmpp:sid:0\"";
    let mut rest = xml;
    while let Some(i) = rest.find(SID) {
        let el = &rest[i..];
        let end = el.find("/>").unwrap_or(el.len());
        let el = &el[..end];
        if attr(el, " by=\"") == Some(bare)
            && let Some(id) = attr(el, " id=\"")
        {
            return crate::modules::mam::decode_id(id);
        }
        rest = &rest[i + SID.len()..];
    }
    None
}

/// The value after `key` (` name="`) in a start tag the server serialised
/// (`Element::write_to`: double quotes, no spaces around `=`).
fn attr<'a>(tag: &'a str, key: &str) -> Option<&'a str> {
    let i = tag.find(key)? + key.len();
    let j = tag[i..].find('"')?;
    Some(&tag[i..i + j])
}

/// How far the client acknowledged the archive: just before the oldest
/// archived message still unacknowledged, else up to the newest written.
pub fn acked_position<'x>(
    unacked: impl Iterator<Item = &'x Arc<str>>,
    bare: &str,
    written: u64,
) -> u64 {
    unacked
        .filter_map(|x| archive_id(x, bare))
        .min()
        .map_or(written, |oldest| oldest.saturating_sub(1).min(written))
}

/// What a resuming node knows of a session of another node (or of this
/// node before it restarted): its record, once the old node let go or is
/// known dead. `None`: not resumable by `bare` (unknown, expired, someone
/// else's).
pub async fn fetch(server: &Server, bare: &str, id: &str, h: u32) -> Option<Record> {
    let store = &server.storage.store;
    let rec = read(server, id).filter(|r| r.bare == bare)?;
    let me = store.node_id();
    if rec.is_ended() || rec.released || (rec.node == me) || !store.live_nodes().contains(&rec.node)
    {
        return Some(rec);
    }
    // Alive elsewhere: ask that node to let go, then read what it wrote.
    let env = Envelope {
        to: rec.full.clone(),
        session_id: rec.session,
        close: RELEASE.into(),
        stanza: h.to_string().into_bytes(),
        ..Envelope::default()
    };
    let asked = store.deliver_acked(rec.node, env).await;
    if !matches!(asked, Ok(starling_cluster::DeliveryResult::Delivered)) {
        // Gone there already (or unreachable): the record is what is known.
        return read(server, id).filter(|r| r.bare == bare);
    }
    let deadline = std::time::Instant::now() + RELEASE_WAIT;
    loop {
        let rec = read(server, id).filter(|r| r.bare == bare)?;
        if rec.released || rec.is_ended() || std::time::Instant::now() >= deadline {
            return Some(rec);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The messages owed to a session resumed from `rec`: archived for its
/// user after `acked_archive`, addressed to the bare JID or to that full
/// JID. Those that offline storage also kept are removed from it (they
/// are delivered now, once).
pub async fn owed(server: &Server, rec: &Record, received: &HashSet<u64>) -> VecDeque<Arc<str>> {
    let msgs = match crate::modules::mam::incoming_after(
        &server.storage,
        &rec.bare,
        Some(rec.acked_archive),
        MAX_REPLAY,
    ) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the archive to resume a session");
            return VecDeque::new();
        }
    };
    let mut ids = HashSet::new();
    let mut out = VecDeque::new();
    for (id, xml) in msgs {
        let Some(mut el) = crate::stanza::parse_serialised(&xml) else {
            continue;
        };
        let to = el.get_attr("to").unwrap_or_default();
        if (to == rec.bare || to == rec.full) && !received.contains(&id) {
            ids.insert(id);
            // Sent late: when it came, as XEP-0203 says (an offline copy
            // has its stamp already).
            if el.get_child("delay", NS_DELAY).is_none() {
                let domain = rec.bare.rsplit_once('@').map_or("", |(_, d)| d);
                el.children.push(crate::xml::Node::Element(
                    crate::xml::Element::new("delay", NS_DELAY)
                        .attr("from", domain)
                        .attr("stamp", crate::modules::mam::stamp(id)),
                ));
            }
            out.push_back(el.to_stream_xml(NS_CLIENT).into());
        }
    }
    if !ids.is_empty()
        && let Ok(stored) = server.storage.offline(&rec.bare)
    {
        let replayed: Vec<_> = stored
            .into_iter()
            .filter(|(_, xml)| archive_id(xml, &rec.bare).is_some_and(|i| ids.contains(&i)))
            .map(|(k, _)| k)
            .collect();
        if !replayed.is_empty()
            && let Err(e) = server.storage.delete_offline(replayed).await
        {
            tracing::warn!(error = %e, "could not remove replayed messages from offline storage");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_s_h_says_which_listed_messages_it_has() {
        let rec = Record {
            bare: "a@x".into(),
            full: "a@x/r".into(),
            node: 1,
            session: 1,
            max: 300,
            h_in: 0,
            acked_archive: 10,
            presence: None,
            released: false,
            acked_h: u32::MAX,
            // a presence, then two archived messages
            unacked: vec![0, 11, 12],
            flags: Flags::default(),
            pending: Vec::new(),
            ended_until: 0,
            refused_sent: None,
        };
        assert!(rec.received(u32::MAX).is_empty());
        assert!(
            rec.received(0).is_empty(),
            "h wrapped past 2^32: only the presence"
        );
        assert_eq!(rec.received(1), HashSet::from([11]));
        assert_eq!(rec.received(7), HashSet::from([11, 12]));
    }

    #[test]
    fn the_index_of_tombstones_sorts_by_expiry_apart_from_every_sm_id() {
        let (a, b) = (ended_index_key(5, "2a-x"), ended_index_key(300, "1-y"));
        assert!(a < b, "earlier expiry first, whatever the id");
        let (lo, hi) = (ended_index_key(0, ""), ended_index_key(6, ""));
        assert!(
            lo <= a && a < hi && b >= hi,
            "a sweep at 5 takes the first only"
        );
        assert_eq!(&a[ENDED_INDEX.len() + 8..], b"2a-x");
        // An SM-ID (and any previd XML can carry) sorts after the index.
        assert!(b.as_slice() < crate::session::sm::new_id(0).as_bytes());
        assert!(b.as_slice() < " ".as_bytes());
        let mut rec = Record::ended("a@x", 1, 9, None);
        assert!(!rec.is_ended(), "until its time is set");
        rec.ended_until = 100;
        assert!(rec.is_ended() && rec.h_in == 9 && rec.bare == "a@x");
    }

    #[test]
    fn finds_the_archive_id_the_user_s_archive_stamped() {
        let id = crate::modules::mam::encode_id(42);
        let xml = format!(
            r#"<message to="a@x/r"><body>hi</body><stanza-id xmlns="urn:xmpp:sid:0" by="b@x" id="zzz"/><stanza-id xmlns="urn:xmpp:sid:0" by="a@x" id="{id}"/></message>"#
        );
        assert_eq!(archive_id(&xml, "a@x"), Some(42));
        assert_eq!(archive_id(&xml, "c@x"), None);
        let unacked: Vec<Arc<str>> = vec![
            "<presence/>".into(),
            xml.as_str().into(),
            format!(
                r#"<message><stanza-id xmlns="urn:xmpp:sid:0" by="a@x" id="{}"/></message>"#,
                crate::modules::mam::encode_id(50)
            )
            .into(),
        ];
        assert_eq!(acked_position(unacked.iter(), "a@x", 60), 41);
        assert_eq!(acked_position(unacked[..1].iter(), "a@x", 60), 60);
    }
}
