//! XEP-0313 Message Archive Management (`urn:xmpp:mam:2` and `#extended`)
//! for user archives, with XEP-0359 stanza ids, XEP-0441 preferences and
//! XEP-0059 paging.
//!
//! It owns the archive's key spaces (`storage::ARCHIVE`, one record per
//! message and owner, keyed by the archive id; `storage::ARCHIVE_PREFS`)
//! and four things: the archiving point ([`archive`], which
//! `session::im::route_message` calls once per message, before delivery
//! and before offline storage, so an offline message carries the same
//! stanza-id as its archived copy), the queries and preferences (IQ
//! handlers), the retention pass ([`run_retention`]) and the reads a
//! resumed session replays from ([`incoming_after`], [`last_id`]).
//!
//! Archive ids come from the clock and the node id (see [`next_id`]), so
//! every node makes them without asking another, and they order a user's
//! archive in time: `start`/`end` filters are key ranges. Modules never
//! touch sockets: query results go through the requesting session's
//! handle, in order, followed by the final IQ result.

use super::{AccountFeature, IqCtx, IqHandler, IqReply, IqResult, IqTarget, Module};
use crate::config::{ArchivePolicy, Config};
use crate::router::{Offer, SessionHandle};
use crate::server::Server;
use crate::stanza::{Condition, MessageType, NS_CLIENT, NS_DELAY, StanzaError, iq_result, split};
use crate::storage::{ARCHIVE, ARCHIVE_PREFS, ArchivePrefs, ArchivedMessage, Storage};
use crate::xml::{Element, Node, escape_into};
use futures::FutureExt;
use starling_cluster::StoreError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub const NS_MAM: &str = "urn:xmpp:mam:2";
pub const NS_MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
pub const NS_SID: &str = "urn:xmpp:sid:0";
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
const NS_DATA: &str = "jabber:x:data";
const NS_MUC_USER: &str = crate::services::muc::NS_MUC_USER;
const NS_HINTS: &str = "urn:xmpp:hints";
const NS_XDATA_VALIDATE: &str = "http://jabber.org/protocol/xdata-validate";

fn enabled(config: &Config) -> bool {
    config.mam.enabled
}

pub static MODULE: Module = Module {
    name: "mam",
    spec: "XEP-0313 (urn:xmpp:mam:2, #extended), XEP-0359, XEP-0441, XEP-0059",
    account_features: &[
        AccountFeature {
            var: NS_MAM,
            when: Some(enabled),
        },
        AccountFeature {
            var: NS_MAM_EXTENDED,
            when: Some(enabled),
        },
        AccountFeature {
            var: NS_SID,
            when: Some(enabled),
        },
    ],
    iq: &[
        IqHandler {
            ns: NS_MAM,
            name: "query",
            get: Some(form),
            set: Some(query),
            no_account: false,
        },
        IqHandler {
            ns: NS_MAM,
            name: "prefs",
            get: Some(prefs),
            set: Some(prefs),
            no_account: false,
        },
        IqHandler {
            ns: NS_MAM,
            name: "metadata",
            get: Some(metadata),
            set: None,
            no_account: false,
        },
    ],
    config_section: Some("mam"),
    spaces: &[ARCHIVE, ARCHIVE_PREFS, ID_FLOOR],
    ..Module::EMPTY
};

// ---------------------------------------------------------------- ids

/// Microseconds of 2024-01-01T00:00:00Z since the Unix epoch: ids count
/// from there, so 52 bits last until 2166.
const ID_EPOCH_MICROS: i64 = 1_704_067_200_000_000;
/// Low bits of an id: the node id's, so two nodes never make the same id.
const NODE_BITS: u32 = 12;

/// The time part (microseconds since 2024) of the last id this process
/// made; at start, at least the floor its previous runs reserved.
static LAST: AtomicU64 = AtomicU64::new(0);

/// Ids whose time part is below this are new for certain (see
/// [`reserve_ids`]); 0 until this process reserved any.
static RESERVED: AtomicU64 = AtomicU64::new(0);

/// Key space of the reservations: node id (big endian) -> the time part
/// (big endian) below which that node made its ids so far.
pub const ID_FLOOR: &str = "mam_id_floor";

/// How far ahead of the clock a reservation goes; it is renewed when less
/// than half of it is left.
const RESERVE_AHEAD_MICROS: u64 = 600_000_000;

/// The next archive id of this process: the time in microseconds since
/// 2024 in the high 52 bits, the node id's low 12 bits in the low ones.
/// Strictly increasing per process (an id made in the same microsecond as
/// the last takes the next microsecond), unique in the cluster without
/// coordination (nodes differ in the low bits), and in time order across
/// nodes as far as their clocks agree. Across restarts, and a clock set
/// back meanwhile, by [`reserve_ids`].
pub fn next_id(node_id: u64) -> u64 {
    let now = u64::try_from(chrono::Utc::now().timestamp_micros() - ID_EPOCH_MICROS).unwrap_or(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let t = now.max(last + 1);
        match LAST.compare_exchange_weak(last, t, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return (t << NODE_BITS) | (node_id & ((1 << NODE_BITS) - 1)),
            Err(seen) => last = seen,
        }
    }
}

/// Whether no id equal to `id` was ever made by any run of its node (so
/// its archive records may be written without looking for one).
pub fn reserved(id: u64) -> bool {
    (id >> NODE_BITS) < RESERVED.load(Ordering::Acquire)
}

/// Reserves archive ids: reads the floor this node's previous runs wrote
/// (through a read barrier: the last one may not have reached this replica
/// yet), starts this process's ids above it, and writes a new floor ahead
/// of the clock. Once that write is committed, ids below it are unique
/// whatever the clock does across restarts, and their records are written
/// without an existence check (`Op::Put`). Called at start and then
/// periodically ([`run_reservations`]); until it succeeds, records are
/// written with one (`Op::Insert`).
pub async fn reserve_ids(server: &Server) -> Result<(), StoreError> {
    reserve_ids_in(&server.storage.store).await
}

async fn reserve_ids_in(store: &starling_cluster::Store) -> Result<(), StoreError> {
    let key = store.node_id().to_be_bytes().to_vec();
    if store.has_peers() {
        store.read_barrier().await?;
    }
    let floor = store
        .get(ID_FLOOR, &key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes);
    LAST.fetch_max(floor, Ordering::AcqRel);
    let now = u64::try_from(chrono::Utc::now().timestamp_micros() - ID_EPOCH_MICROS).unwrap_or(0);
    let until = now.max(LAST.load(Ordering::Acquire)) + RESERVE_AHEAD_MICROS;
    store
        .write(vec![starling_cluster::Op::Put {
            space: ID_FLOOR.into(),
            key,
            value: until.to_be_bytes().to_vec(),
        }])
        .await?;
    RESERVED.fetch_max(until, Ordering::AcqRel);
    Ok(())
}

/// Renews the id reservation before half of it is used (one write a few
/// minutes per node).
pub async fn run_reservations(server: Arc<Server>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let last = LAST.load(Ordering::Acquire).max(
            u64::try_from(chrono::Utc::now().timestamp_micros() - ID_EPOCH_MICROS).unwrap_or(0),
        );
        if last + RESERVE_AHEAD_MICROS / 2 < RESERVED.load(Ordering::Acquire) {
            continue;
        }
        if let Err(e) = reserve_ids(&server).await {
            tracing::warn!(error = %e, "could not renew the archive id reservation");
        }
    }
}

/// The id's time, in microseconds since the Unix epoch.
pub fn id_micros(id: u64) -> i64 {
    (id >> NODE_BITS) as i64 + ID_EPOCH_MICROS
}

/// The smallest id made at or after `micros` (since the Unix epoch).
fn first_id_at(micros: i64) -> u64 {
    u64::try_from(micros - ID_EPOCH_MICROS).map_or(0, |t| t.saturating_mul(1 << NODE_BITS))
}

/// The greatest id made at or before `micros`.
fn last_id_at(micros: i64) -> Option<u64> {
    let t = u64::try_from(micros - ID_EPOCH_MICROS).ok()?;
    Some(
        t.checked_add(1)
            .and_then(|n| n.checked_mul(1 << NODE_BITS))
            .map_or(u64::MAX, |n| n - 1),
    )
}

/// The string form of an id (stanza-id, RSM, `before-id`...): its 8 bytes
/// in URL-safe base64, 11 characters.
pub fn encode_id(id: u64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.to_be_bytes())
}

/// The id a string names, if it is the exact form [`encode_id`] makes.
pub fn decode_id(s: &str) -> Option<u64> {
    use base64::Engine;
    if s.len() != 11 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    let id = u64::from_be_bytes(bytes.try_into().ok()?);
    // Only the canonical spelling: the last character carries 2 spare bits.
    (encode_id(id) == s).then_some(id)
}

/// XEP-0082 DateTime of an id's time, in UTC with microseconds.
pub fn stamp(id: u64) -> String {
    chrono::DateTime::from_timestamp_micros(id_micros(id))
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

// ---------------------------------------------------------------- archiving

/// Whether a message belongs in an archive (XEP-0313 §5.1.1): chat and
/// normal messages with a body or an encrypted payload (or a XEP-0334
/// `<store/>` hint; a headline only with that hint), never errors,
/// groupchat, or chat states alone; a `<no-store/>` or
/// `<no-permanent-store/>` hint keeps it out.
fn worth_archiving(el: &Element) -> bool {
    match MessageType::of(el) {
        MessageType::Chat | MessageType::Normal => archivable_payload(el),
        // XEP-0334 §4.4: a message of any type but error with `<store/>`.
        MessageType::Headline => el.has_child("store", NS_HINTS) && archivable_payload(el),
        MessageType::Groupchat | MessageType::Error => false,
    }
}

/// Whether a message's payload is worth keeping in an archive, whatever
/// its type (also a room's, XEP-0313 §5.1.2): a body, an encrypted
/// payload, a reaction or retraction, or a XEP-0334 `<store/>` hint; not
/// chat states alone, nor with a `<no-store/>` or `<no-permanent-store/>`.
pub fn archivable_payload(el: &Element) -> bool {
    if el.has_child("no-store", NS_HINTS) || el.has_child("no-permanent-store", NS_HINTS) {
        return false;
    }
    el.elements().any(|c| {
        matches!(
            (c.name.as_str(), c.ns.as_str()),
            ("body", NS_CLIENT)
                | ("store", NS_HINTS)
                | ("encrypted", "eu.siacs.conversations.axolotl")
                | ("encrypted", "urn:xmpp:omemo:2")
                | ("openpgp", "urn:xmpp:openpgp:0")
                | ("x", "jabber:x:encrypted")
                | ("reactions", "urn:xmpp:reactions:0")
                | ("retract", "urn:xmpp:message-retract:1")
        )
    })
}

/// XEP-0359 §5: a `<stanza-id/>` only the archive may set. Those a client
/// put in, naming the recipient's or the sender's archive (or either's
/// server, which sets none: a client must not be led to trust one), go.
pub fn strip_spoofed(el: &mut Element, recipient: &str, sender: &str) {
    let rd = recipient.rsplit_once('@').map_or(recipient, |(_, d)| d);
    let sd = sender.rsplit_once('@').map_or(sender, |(_, d)| d);
    el.children.retain(|c| match c {
        Node::Element(e) if e.is("stanza-id", NS_SID) => !matches!(e.get_attr("by"),
            Some(by) if by == recipient || by == sender || by == rd || by == sd),
        _ => true,
    });
}

/// [`stanza_id`] serialised into `out` as `Element::write_to` would
/// (inside an element of another namespace), without building it.
fn write_stanza_id(out: &mut String, by: &str, id: u64) {
    use base64::Engine;
    out.push_str("<stanza-id xmlns=\"");
    out.push_str(NS_SID);
    out.push_str("\" by=\"");
    escape_into(out, by, true);
    out.push_str("\" id=\"");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(id.to_be_bytes(), out);
    out.push_str("\"/>");
}

fn stanza_id(by: &str, id: u64) -> Element {
    Element::new("stanza-id", NS_SID)
        .attr("by", by)
        .attr("id", encode_id(id))
}

/// A user's preferences, or the configured default. For a user with a
/// session here, from its router entry while the preferences space does
/// not change on this replica ([`PrefsCache`]: no store read per message).
fn prefs_of(server: &Server, bare: &str) -> Result<Arc<ArchivePrefs>, StoreError> {
    let read = || -> Result<Arc<ArchivePrefs>, StoreError> {
        Ok(Arc::new(
            server
                .storage
                .archive_prefs(bare)?
                .unwrap_or_else(|| ArchivePrefs {
                    default: server.config.mam.default_policy,
                    always: Vec::new(),
                    never: Vec::new(),
                }),
        ))
    };
    let Some(cache) = server.router.archive_prefs(bare) else {
        return read();
    };
    // The counter before the record: a change applied in between only
    // makes the next call read again.
    let version = server.storage.archive_prefs_version();
    if let Some(prefs) = cache.get(version) {
        return Ok(prefs);
    }
    let prefs = read()?;
    cache.keep(version, prefs.clone());
    Ok(prefs)
}

/// One user's archiving preferences as read at a change counter of their
/// space on this replica, kept in the router's entry of a user with a
/// session here: every message the user sends or gets asks them. Any
/// change of anyone's preferences (here, or applied from another node)
/// moves the counter and makes them read again.
#[derive(Debug, Default)]
pub struct PrefsCache(std::sync::RwLock<Option<(u64, Arc<ArchivePrefs>)>>);

impl PrefsCache {
    fn get(&self, version: u64) -> Option<Arc<ArchivePrefs>> {
        match &*self.0.read().unwrap_or_else(|e| e.into_inner()) {
            Some((v, prefs)) if *v == version => Some(prefs.clone()),
            _ => None,
        }
    }

    fn keep(&self, version: u64, prefs: Arc<ArchivePrefs>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some((version, prefs));
    }
}

/// Whether `owner`'s preferences archive a message with `with` (the
/// recipient of a sent message, the sender of a received one), by
/// XEP-0441 §2.3's matching: a listed bare JID matches every resource, a
/// listed full JID only itself; `never` wins over `always`.
fn archives_with(
    server: &Server,
    owner: &str,
    prefs: &ArchivePrefs,
    with: &str,
) -> Result<bool, StoreError> {
    let bare = split(with).0;
    let listed = |list: &[String]| {
        list.iter().any(|j| match split(j).1 {
            Some(_) => j == with,
            None => j == bare,
        })
    };
    if listed(&prefs.never) {
        return Ok(false);
    }
    if listed(&prefs.always) {
        return Ok(true);
    }
    Ok(match prefs.default {
        ArchivePolicy::Always => true,
        ArchivePolicy::Never => false,
        // Notes to self are always in the user's "roster".
        ArchivePolicy::Roster => {
            bare == owner || server.storage.roster_item(owner, bare)?.is_some()
        }
    })
}

/// A message's archive records, ready to write: the recipient's copy and
/// the sender's (each if that account keeps it), under one id.
pub struct Prepared {
    id: u64,
    records: Vec<(String, ArchivedMessage)>,
    /// The message carries the recipient archive's `<stanza-id/>` (its
    /// last child).
    keep_in: bool,
    started: std::time::Instant,
}

/// The archiving point, once per message a client sent to a local
/// account (`session::im::route_message`, after the `MessageIn` hooks and
/// before delivery or offline storage; a message the server routes again
/// does not come here). Strips spoofed stanza-ids; then, when the message
/// is worth keeping, makes the recipient's copy and the sender's (each if
/// that account's preferences allow it) and adds the recipient archive's
/// `<stanza-id/>` to the message about to be delivered. Nothing is
/// written yet: see [`Prepared::write`] and [`Prepared::queue`].
pub fn prepare(
    server: &Server,
    el: &mut Element,
    recipient: &str,
) -> Result<Option<Prepared>, StoreError> {
    prepare_copies(server, el, recipient, true)
}

/// As [`prepare`] for a message a local user sends to an entity with no
/// archive here (a XEP-0114 component's JID): the sender's copy only.
pub fn prepare_sent(server: &Server, el: &mut Element) -> Result<Option<Prepared>, StoreError> {
    let to = el.get_attr("to").unwrap_or_default().to_owned();
    prepare_copies(server, el, split(&to).0, false)
}

fn prepare_copies(
    server: &Server,
    el: &mut Element,
    recipient: &str,
    recipient_archives: bool,
) -> Result<Option<Prepared>, StoreError> {
    let from = el.get_attr("from").unwrap_or_default().to_owned();
    let sender = split(&from).0.to_owned();
    strip_spoofed(el, recipient, &sender);
    if !server.config.mam.enabled || !worth_archiving(el) {
        return Ok(None);
    }
    let to = el.get_attr("to").unwrap_or_default().to_owned();
    let keep_in = recipient_archives
        && archives_with(server, recipient, &*prefs_of(server, recipient)?, &from)?;
    // The sender's copy: a local account other than the recipient (a note
    // to self is archived once, as received).
    let keep_out = sender != recipient
        && sender
            .rsplit_once('@')
            .is_some_and(|(_, d)| server.is_local(d))
        // A user with a session here exists (no store read per message).
        && (server.router.has_user(&sender) || server.storage.account_exists(&sender)?)
        && archives_with(server, &sender, &*prefs_of(server, &sender)?, &to)?;
    if !keep_in && !keep_out {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let id = next_id(server.storage.store.node_id());
    let mut records = Vec::with_capacity(2);
    // The sender's copy carries the sender archive's stanza-id, never the
    // recipient's (XEP-0313 §3.5: only those who may read an archive see
    // its ids); the message delivered carries the recipient's.
    // The message is serialised once; each copy is that with its
    // stanza-id as the last child.
    let xml = el.to_stream_xml("");
    if keep_out {
        records.push((sender.clone(), copy(&xml, &sender, id, true, &to)));
    }
    if keep_in {
        records.push((
            recipient.to_owned(),
            copy(&xml, recipient, id, false, &from),
        ));
        el.children.push(Node::Element(stanza_id(recipient, id)));
    }
    Ok(Some(Prepared {
        id,
        records,
        keep_in,
        started,
    }))
}

impl Prepared {
    fn ops(&self) -> Vec<starling_cluster::Op> {
        let entries: Vec<(&str, u64, &ArchivedMessage)> = self
            .records
            .iter()
            .map(|(owner, m)| (owner.as_str(), self.id, m))
            .collect();
        // A reserved id: no record can hold it yet, no existence check.
        crate::storage::archive_ops(&entries, !reserved(self.id))
    }

    /// Counts the records written; `waited`: the message waited for the
    /// write (its time goes in the histogram; a write behind a delivery
    /// lingers for company, and recording each costs a lock-free push).
    fn written(&self, waited: bool) {
        static WRITE_SECONDS: std::sync::OnceLock<metrics::Histogram> = std::sync::OnceLock::new();
        if waited {
            WRITE_SECONDS
                .get_or_init(|| metrics::histogram!("starling_mam_write_seconds"))
                .record(self.started.elapsed().as_secs_f64());
        }
        crate::hot_counter!("starling_mam_archived_total").increment(self.records.len() as u64);
    }

    /// The same records under a later id: this one was taken (this node's
    /// clock went back across a restart).
    fn next(&mut self, server: &Server) {
        let new = next_id(server.storage.store.node_id());
        tracing::warn!(
            id = self.id,
            "archive id already taken (clock went back?); taking the next"
        );
        let (old, new_s) = (
            format!(" id=\"{}\"", encode_id(self.id)),
            format!(" id=\"{}\"", encode_id(new)),
        );
        for (_, m) in &mut self.records {
            m.xml = m.xml.replace(&old, &new_s);
        }
        self.id = new;
    }

    /// Writes the records durably; returns the id they were written under.
    pub async fn write(mut self, server: &Server) -> Result<u64, StoreError> {
        for _ in 0..ID_ATTEMPTS {
            if server.storage.archive_ops(self.ops()).await? {
                self.written(true);
                return Ok(self.id);
            }
            self.next(server);
        }
        Err(StoreError::Storage("no free archive id".into()))
    }

    /// Queues the write now, committed whether or not the returned future
    /// is polled (`Store::write_behind`); the future ends once it is
    /// durable (or failed: logged). For a message delivered before its
    /// write commits, whose sender's session counts it handled only then.
    pub fn queue(self, server: &Arc<Server>) -> futures::future::BoxFuture<'static, ()> {
        let server = server.clone();
        let queued = server.storage.store.write_behind(self.ops());
        async move {
            let done = match queued {
                Ok(q) => q
                    .done()
                    .await
                    .map(|r| !r.contains(&starling_cluster::OpResult::Exists)),
                Err(ops) => server.storage.archive_ops(ops).await,
            };
            let result = match done {
                Ok(true) => {
                    self.written(false);
                    Ok(self.id)
                }
                // Taken (the clock went back): the copy delivered names an
                // id the archive gives to another message.
                Ok(false) => {
                    let mut again = self;
                    again.next(&server);
                    again.write(&server).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                metrics::counter!("starling_mam_write_failed_total").increment(1);
                tracing::warn!(error = %e, "a delivered message could not be archived");
            }
        }
        .boxed()
    }

    /// Drops the records of a message that is not delivered after all,
    /// and the `<stanza-id/>` they gave it.
    pub fn discard(self, el: &mut Element) {
        if self.keep_in {
            el.children.pop();
        }
    }

    /// Writes the records before `el` (the message they were prepared
    /// from) is delivered: a message whose records could not be written
    /// does not claim their id, and one written under a later id names
    /// that one.
    pub async fn commit(self, server: &Server, el: &mut Element) -> Result<(), StoreError> {
        let (first, keep_in) = (self.id, self.keep_in);
        match self.write(server).await {
            Ok(id) if id != first && keep_in => {
                if let Some(Node::Element(sid)) = el.children.last_mut() {
                    sid.set_attr("id", encode_id(id));
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => {
                if keep_in {
                    el.children.pop();
                }
                Err(e)
            }
        }
    }
}

/// [`prepare`] and [`Prepared::commit`]: returns once the write is
/// committed, so a stanza a session owes its client is in the archive
/// before it is in the session.
pub async fn archive(server: &Server, el: &mut Element, recipient: &str) -> Result<(), StoreError> {
    match prepare(server, el, recipient)? {
        Some(prepared) => prepared.commit(server, el).await,
        None => Ok(()),
    }
}

/// Sees archive writes queued behind deliveries ([`Prepared::queue`])
/// to their end for sessions that do not wait for them (a client without
/// stream management has no `h` to hold back): counts them, writes again
/// under a free id the rare one whose id was taken, logs failures. One
/// task per node, started by the first write handed over; a batch of
/// writes that commit together wakes it once.
#[derive(Default)]
pub struct Followups {
    tx: std::sync::OnceLock<
        tokio::sync::mpsc::UnboundedSender<futures::future::BoxFuture<'static, ()>>,
    >,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

/// Writes the follower may have in flight before sessions keep their own
/// again (and wait past [`crate::session::im::MAX_BEHIND`] each, as with
/// stream management): a store that stopped committing slows senders
/// rather than filling memory.
const MAX_FOLLOWED: usize = 16 * 1024;

impl Followups {
    /// Whether the follower takes no more writes for now.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) >= MAX_FOLLOWED
    }

    pub fn hand_over(&self, writes: impl Iterator<Item = futures::future::BoxFuture<'static, ()>>) {
        let tx = self.tx.get_or_init(|| {
            let (tx, mut rx) =
                tokio::sync::mpsc::unbounded_channel::<futures::future::BoxFuture<'static, ()>>();
            let in_flight = self.in_flight.clone();
            tokio::spawn(async move {
                use futures::StreamExt;
                let mut running = futures::stream::FuturesUnordered::new();
                loop {
                    tokio::select! {
                        write = rx.recv() => match write {
                            Some(w) => running.push(w),
                            None => break,
                        },
                        Some(()) = running.next(), if !running.is_empty() => {
                            in_flight.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
                while running.next().await.is_some() {}
            });
            tx
        });
        for w in writes {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            // The receiver lives as long as the runtime that runs it.
            if tx.send(w).is_err() {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Tries for an unused archive id before a message is refused.
const ID_ATTEMPTS: usize = 8;

/// The record of a message in `owner`'s archive under `id`: sent to, or
/// received from, `with`. `xml` is the message serialised (`to_stream_xml("")`,
/// with children: an archived message has a payload); the record holds it
/// with `owner`'s `<stanza-id/>` as its last child, as
/// `Element::to_stream_xml` would write it.
fn copy(xml: &str, owner: &str, id: u64, outgoing: bool, with: &str) -> ArchivedMessage {
    let (bare, resource) = split(with);
    debug_assert!(xml.ends_with('>') && !xml.ends_with("/>"), "{xml}");
    let close = xml.rfind("</").unwrap_or(xml.len());
    let mut out = String::with_capacity(xml.len() + 64 + owner.len());
    out.push_str(&xml[..close]);
    write_stanza_id(&mut out, owner, id);
    out.push_str(&xml[close..]);
    ArchivedMessage {
        outgoing,
        with: bare.to_owned(),
        with_resource: resource.map(str::to_owned),
        xml: out,
        jid: None,
    }
}

// ------------------------------------------------------- replay (XEP-0198)

/// Messages `bare` received (serialised as delivered, with their
/// stanza-id) with ids after `after_id` (`None`: from the start), oldest
/// first, at most `limit`: what a resumed session replays of what its
/// client had not acknowledged.
pub fn incoming_after(
    storage: &Storage,
    bare: &str,
    after_id: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, String)>, StoreError> {
    let mut lo = match after_id {
        Some(id) => match id.checked_add(1) {
            Some(lo) => lo,
            None => return Ok(Vec::new()),
        },
        None => 0,
    };
    let mut out = Vec::new();
    while out.len() < limit {
        let chunk = storage.archive_range(bare, lo, u64::MAX, false, CHUNK)?;
        let Some(&(last, _)) = chunk.last() else {
            break;
        };
        let full = chunk.len() == CHUNK;
        let room = limit - out.len();
        out.extend(
            chunk
                .into_iter()
                .filter(|(_, m)| !m.outgoing)
                .map(|(id, m)| (id, m.xml))
                .take(room),
        );
        match last.checked_add(1) {
            Some(next) if full => lo = next,
            _ => break,
        }
    }
    Ok(out)
}

/// The newest id in `bare`'s archive (sent or received), if any.
pub fn last_id(storage: &Storage, bare: &str) -> Result<Option<u64>, StoreError> {
    Ok(storage
        .archive_range(bare, 0, u64::MAX, true, 1)?
        .first()
        .map(|(id, _)| *id))
}

// ---------------------------------------------------------------- queries

/// Records read per storage call while filtering.
const CHUNK: usize = 256;

fn bad_request(text: &str) -> StanzaError {
    StanzaError::with_text(Condition::BadRequest, text)
}

/// Reads of the archive are linearizable in a cluster: a message
/// archived through another node a moment ago (and maybe delivered to the
/// requester already) is in the answer.
async fn caught_up(server: &Server) -> Result<(), StanzaError> {
    // Messages this node delivered ahead of their archive write
    // (`session::im::route_message_behind`) are in the answer.
    server.storage.store.sync_behind().await;
    if server.storage.store.has_peers() {
        server.storage.store.read_barrier().await?;
    }
    Ok(())
}

/// Answers for the requester's own archive only (XEP-0313 §8.1); a
/// missing account is `<service-unavailable/>` before this runs.
fn own_archive(ctx: &IqCtx<'_>) -> Result<(), StanzaError> {
    if !ctx.server.config.mam.enabled {
        return Err(Condition::ServiceUnavailable.into());
    }
    match ctx.target {
        IqTarget::Own => Ok(()),
        IqTarget::Account(_) => Err(Condition::Forbidden.into()),
        IqTarget::Server(_) | IqTarget::NoAccount(_) => Err(Condition::ServiceUnavailable.into()),
    }
}

/// `with` of a query: a bare JID matches every resource, a full JID only
/// messages that named it.
enum With {
    Bare(String),
    Full(String, String),
    /// In a room's archive, to who may see real JIDs: the messages of the
    /// sender with this real bare JID (XEP-0313 §4.1.1).
    Sender(String),
}

impl With {
    fn matches(&self, m: &ArchivedMessage) -> bool {
        match self {
            With::Bare(b) => m.with == *b,
            With::Full(b, r) => m.with == *b && m.with_resource.as_deref() == Some(r.as_str()),
            With::Sender(b) => m.jid.as_deref().is_some_and(|j| split(j).0 == b),
        }
    }
}

/// A query, parsed and checked.
#[derive(Default)]
struct Query {
    with: Option<With>,
    /// Ids in `lo..=hi` (from `start`, `end`, `after-id`, `before-id`).
    lo: u64,
    hi: u64,
    /// `ids`: only these.
    ids: Option<Vec<u64>>,
    max: usize,
    /// RSM `after`.
    after: Option<u64>,
    /// RSM `before`: `Some(None)` is the last page.
    before: Option<Option<u64>>,
    /// RSM `index`.
    index: Option<u64>,
    flip: bool,
}

impl Query {
    /// Makes the range empty (`lo` only grows and `hi` only shrinks after).
    fn nothing(&mut self) {
        self.hi = 0;
        self.lo = self.lo.max(1);
    }
}

/// The values of one form field (checked to be a field type of XEP-0004).
fn field_values(field: &Element) -> Result<Vec<String>, StanzaError> {
    const TYPES: &[&str] = &[
        "boolean",
        "fixed",
        "hidden",
        "jid-multi",
        "jid-single",
        "list-multi",
        "list-single",
        "text-multi",
        "text-private",
        "text-single",
    ];
    if let Some(t) = field.get_attr("type")
        && !TYPES.contains(&t)
    {
        return Err(bad_request("unknown field type"));
    }
    Ok(field
        .elements()
        .filter(|v| v.is("value", NS_DATA))
        .map(Element::text_content)
        .collect())
}

/// The single value of a field (empty: none).
fn single(field: &Element) -> Result<Option<String>, StanzaError> {
    let mut values = field_values(field)?;
    if values.len() > 1 {
        return Err(bad_request("a single-valued field has several values"));
    }
    Ok(values.pop().filter(|v| !v.is_empty()))
}

/// A XEP-0082 DateTime in microseconds since the Unix epoch.
fn parse_date(s: &str) -> Result<i64, StanzaError> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|d| d.timestamp_micros())
        .map_err(|_| bad_request("not a XEP-0082 DateTime"))
}

/// An id the client names, which must be in the archive (XEP-0313 §4.1.3,
/// §4.3.2): otherwise `<item-not-found/>`.
fn known_id(storage: &Storage, bare: &str, s: &str) -> Result<u64, StanzaError> {
    let id = decode_id(s.trim()).ok_or(Condition::ItemNotFound)?;
    if storage.archived(bare, id)?.is_none() {
        return Err(Condition::ItemNotFound.into());
    }
    Ok(id)
}

fn parse_query(ctx: &Req<'_>) -> Result<Query, StanzaError> {
    let storage = &ctx.server.storage;
    let bare = ctx.owner;
    let max_page = ctx.server.config.mam.max_page;
    let mut q = Query {
        hi: u64::MAX,
        max: max_page,
        ..Default::default()
    };
    if ctx.payload.get_attr("node").is_some() {
        // Pubsub archives (XEP-0442) are not a user archive's.
        return Err(Condition::FeatureNotImplemented.into());
    }
    for child in ctx.payload.elements() {
        match (child.name.as_str(), child.ns.as_str()) {
            ("x", NS_DATA) => parse_form(ctx, child, &mut q)?,
            ("set", NS_RSM) => parse_rsm(storage, bare, max_page, child, &mut q)?,
            ("flip-page", NS_MAM) => q.flip = true,
            _ => {}
        }
    }
    Ok(q)
}

fn parse_form(ctx: &Req<'_>, x: &Element, q: &mut Query) -> Result<(), StanzaError> {
    let storage = &ctx.server.storage;
    let bare = ctx.owner;
    if !matches!(x.get_attr("type"), None | Some("submit")) {
        return Err(bad_request("the query form must be of type 'submit'"));
    }
    for field in x.elements().filter(|f| f.is("field", NS_DATA)) {
        let var = field
            .get_attr("var")
            .ok_or_else(|| bad_request("a field without 'var'"))?;
        match var {
            "FORM_TYPE" => {
                if single(field)?.as_deref().is_some_and(|v| v != NS_MAM) {
                    return Err(bad_request("FORM_TYPE is not urn:xmpp:mam:2"));
                }
            }
            "with" => {
                if let Some(v) = single(field)? {
                    let jid =
                        jid::Jid::new(v.trim()).map_err(|_| bad_request("bad JID in 'with'"))?;
                    let jid = jid.to_string();
                    q.with = Some(match split(&jid) {
                        (b, Some(r)) => With::Full(b.to_owned(), r.to_owned()),
                        (b, None) if ctx.reveal && b != bare => With::Sender(b.to_owned()),
                        (b, None) => With::Bare(b.to_owned()),
                    });
                }
            }
            "start" => {
                if let Some(v) = single(field)? {
                    q.lo = q.lo.max(first_id_at(parse_date(&v)?));
                }
            }
            "end" => {
                if let Some(v) = single(field)? {
                    match last_id_at(parse_date(&v)?) {
                        Some(hi) => q.hi = q.hi.min(hi),
                        // Before the first id could be made.
                        None => q.nothing(),
                    }
                }
            }
            "after-id" => {
                if let Some(v) = single(field)? {
                    q.lo = q.lo.max(known_id(storage, bare, &v)?.saturating_add(1));
                }
            }
            "before-id" => {
                if let Some(v) = single(field)? {
                    match known_id(storage, bare, &v)?.checked_sub(1) {
                        Some(hi) => q.hi = q.hi.min(hi),
                        None => q.nothing(),
                    }
                }
            }
            "ids" => {
                let mut ids = Vec::new();
                for v in field_values(field)?.iter().filter(|v| !v.is_empty()) {
                    ids.push(known_id(storage, bare, v)?);
                }
                if ids.len() > ctx.server.config.mam.max_page {
                    return Err(bad_request("more ids than a page holds"));
                }
                ids.sort_unstable();
                ids.dedup();
                q.ids = Some(ids);
            }
            // XEP-0313 §4.1.5: a field the server does not know.
            _ => return Err(Condition::FeatureNotImplemented.into()),
        }
    }
    Ok(())
}

fn parse_rsm(
    storage: &Storage,
    bare: &str,
    max_page: usize,
    set: &Element,
    q: &mut Query,
) -> Result<(), StanzaError> {
    for c in set.elements().filter(|c| c.ns == NS_RSM) {
        let text = c.text_content();
        match c.name.as_str() {
            "max" => {
                let max: usize = text
                    .trim()
                    .parse()
                    .map_err(|_| bad_request("RSM <max/> is not a non-negative integer"))?;
                q.max = max.min(max_page);
            }
            "after" => {
                if text.is_empty() {
                    return Err(bad_request("empty RSM <after/>"));
                }
                q.after = Some(known_id(storage, bare, &text)?);
            }
            "before" if text.is_empty() => q.before = Some(None),
            "before" => q.before = Some(Some(known_id(storage, bare, &text)?)),
            "index" => {
                q.index = Some(
                    text.trim()
                        .parse()
                        .map_err(|_| bad_request("RSM <index/> is not a non-negative integer"))?,
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where a query's results come from: the user's archive in id order,
/// filtered by `with`, or the few messages `ids` named.
enum Source<'a> {
    Archive {
        storage: &'a Storage,
        bare: &'a str,
        with: Option<&'a With>,
    },
    Listed(Vec<(u64, ArchivedMessage)>),
}

impl Source<'_> {
    /// Up to `n` matching messages in `lo..=hi`, from the low end or (with
    /// `reverse`) the high end.
    fn take(
        &self,
        lo: u64,
        hi: u64,
        reverse: bool,
        n: usize,
    ) -> Result<Vec<(u64, ArchivedMessage)>, StoreError> {
        if lo > hi || n == 0 {
            return Ok(Vec::new());
        }
        match self {
            Source::Listed(list) => {
                let within = list.iter().filter(|(id, _)| (lo..=hi).contains(id));
                Ok(if reverse {
                    within.rev().take(n).cloned().collect()
                } else {
                    within.take(n).cloned().collect()
                })
            }
            Source::Archive {
                storage,
                bare,
                with: None,
            } => storage.archive_range(bare, lo, hi, reverse, n),
            Source::Archive {
                storage,
                bare,
                with: Some(with),
            } => {
                // Filtered: read in chunks until enough match.
                let (mut lo, mut hi) = (lo, hi);
                let mut out = Vec::new();
                loop {
                    let chunk = storage.archive_range(bare, lo, hi, reverse, CHUNK)?;
                    let Some(&(edge, _)) = chunk.last() else {
                        break;
                    };
                    let full = chunk.len() == CHUNK;
                    for (id, m) in chunk {
                        if with.matches(&m) && out.len() < n {
                            out.push((id, m));
                        }
                    }
                    if out.len() >= n || !full {
                        break;
                    }
                    if reverse {
                        match edge.checked_sub(1) {
                            Some(h) if h >= lo => hi = h,
                            _ => break,
                        }
                    } else {
                        match edge.checked_add(1) {
                            Some(l) if l <= hi => lo = l,
                            _ => break,
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// Number of matching messages in `lo..=hi` (RSM `<count/>` and
    /// `index`): keys only, unless a `with` filter needs the records.
    fn count(&self, lo: u64, hi: u64) -> Result<u64, StoreError> {
        if lo > hi {
            return Ok(0);
        }
        match self {
            Source::Listed(list) => {
                Ok(list.iter().filter(|(id, _)| (lo..=hi).contains(id)).count() as u64)
            }
            Source::Archive {
                storage,
                bare,
                with: None,
            } => storage.archive_count(bare, lo, hi),
            Source::Archive { with: Some(_), .. } => {
                let mut n = 0;
                let mut from = lo;
                loop {
                    let chunk = self.take(from, hi, false, CHUNK)?;
                    n += chunk.len() as u64;
                    match chunk.last().and_then(|(id, _)| id.checked_add(1)) {
                        Some(next) if chunk.len() == CHUNK => from = next,
                        _ => break,
                    }
                }
                Ok(n)
            }
        }
    }
}

/// One page of a query's result set (XEP-0059 over XEP-0313 §4.3).
struct Page {
    items: Vec<(u64, ArchivedMessage)>,
    /// Nothing more in the direction the page was taken.
    complete: bool,
    count: u64,
    /// Position of the page's first item in the whole result set.
    first_index: u64,
}

fn page(q: &Query, source: &Source<'_>) -> Result<Page, StanzaError> {
    let (lo, hi) = (q.lo, q.hi);
    let count = source.count(lo, hi)?;
    // RSM <before/> pages back from its id (or, empty, from the end);
    // with <after/> too (undefined by RSM), the items between the two.
    let top = match q.before {
        Some(Some(b)) => b.checked_sub(1).map(|b| b.min(hi)),
        _ => Some(hi),
    };
    let mut bottom = lo;
    if let Some(a) = q.after {
        bottom = bottom.max(a.saturating_add(1));
    }
    let mut items = Vec::new();
    let mut complete = true;
    if let Some(top) = top {
        if q.before.is_some() && q.after.is_none() {
            items = source.take(bottom, top, true, q.max + 1)?;
            complete = items.len() <= q.max;
            items.truncate(q.max);
            items.reverse();
        } else {
            if let (Some(skip), None) = (q.index, q.after) {
                // Start `index` items into the result set.
                let skip = usize::try_from(skip).unwrap_or(usize::MAX);
                if skip > 0 {
                    let skipped = source.take(bottom, top, false, skip)?;
                    bottom = match skipped.last() {
                        Some((id, _)) if skipped.len() == skip => id.saturating_add(1),
                        _ => top.saturating_add(1),
                    };
                }
            }
            if bottom <= top {
                items = source.take(bottom, top, false, q.max + 1)?;
                complete = items.len() <= q.max;
                items.truncate(q.max);
            }
        }
    }
    let first_index = match items.first() {
        Some((first, _)) if *first > lo => source.count(lo, first - 1)?,
        _ => 0,
    };
    Ok(Page {
        items,
        complete,
        count,
        first_index,
    })
}

/// `get` of the query: the form of the fields it takes (XEP-0313 §4.1.5).
fn form<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        own_archive(ctx)?;
        Ok(form_element().into())
    }
    .boxed()
}

fn form_element() -> Element {
    let field = |var: &str, t: &str| {
        Element::new("field", NS_DATA)
            .attr("var", var)
            .attr("type", t)
    };
    let x = Element::new("x", NS_DATA)
        .attr("type", "form")
        .child(field("FORM_TYPE", "hidden").child(Element::new("value", NS_DATA).text(NS_MAM)))
        .child(field("with", "jid-single"))
        .child(field("start", "text-single"))
        .child(field("end", "text-single"))
        .child(field("before-id", "text-single"))
        .child(field("after-id", "text-single"))
        .child(
            field("ids", "list-multi").child(
                Element::new("validate", NS_XDATA_VALIDATE)
                    .attr("datatype", "xs:string")
                    .child(Element::new("open", NS_XDATA_VALIDATE)),
            ),
        );
    Element::new("query", NS_MAM).child(x)
}

/// A query on one archive: whose (`owner`: the requester's own, or a
/// room's, XEP-0313 §4 on a MUC room), by whom, in which IQ.
struct Req<'a> {
    server: &'a Server,
    owner: &'a str,
    /// The requester's full JID (a session of this node).
    requester: &'a str,
    iq: &'a Element,
    payload: &'a Element,
    /// A room's archive to who may see real JIDs: results name the
    /// sender's (XEP-0313 §5.1.2).
    reveal: bool,
}

/// `set` of the query: the matching messages, then the `<fin/>` result.
fn query<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        own_archive(ctx)?;
        run_query(&Req {
            server: ctx.server,
            owner: ctx.origin.bare,
            requester: ctx.origin.full,
            iq: ctx.iq,
            payload: ctx.payload,
            reveal: false,
        })
        .await?;
        Ok(IqReply::Sent)
    }
    .boxed()
}

/// A query (`get`: the form; `set`: the messages) on the archive of
/// `owner` that is not the requester's own (a MUC room's, whose service
/// checked the requester may read it). The requester is a session of this
/// node (`iq`'s `from`); errors are sent to it. With `reveal`, results
/// carry their sender's real JID where the archive has it.
pub async fn query_archive(server: &Server, iq: &Element, owner: &str, reveal: bool) {
    let requester = iq.get_attr("from").unwrap_or_default();
    let Some(payload) = iq.elements().next() else {
        crate::session::im::bounce(server, iq, Condition::BadRequest);
        return;
    };
    let r = if !server.config.mam.enabled {
        Err(Condition::ServiceUnavailable.into())
    } else if payload.name == "metadata" {
        // XEP-0313 §6 (`#extended`): the archive's first and last message.
        match iq.get_attr("type") {
            Some("get") => match caught_up(server).await {
                Ok(()) => match metadata_of(&server.storage, owner) {
                    Ok(md) => {
                        let mut reply = iq_result(iq, Some(md));
                        reply.set_attr("to", requester);
                        let _ = crate::session::im::deliver_to_full(server, requester, reply);
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e),
            },
            _ => Err(Condition::BadRequest.into()),
        }
    } else if iq.get_attr("type") == Some("get") {
        let mut reply = iq_result(iq, Some(form_element()));
        reply.set_attr("to", requester);
        let _ = crate::session::im::deliver_to_full(server, requester, reply);
        Ok(())
    } else {
        run_query(&Req {
            server,
            owner,
            requester,
            iq,
            payload,
            reveal,
        })
        .await
    };
    if let Err(e) = r {
        crate::session::im::bounce_with(server, iq, &e);
    }
}

async fn run_query(ctx: &Req<'_>) -> Result<(), StanzaError> {
    caught_up(ctx.server).await?;
    let q = parse_query(ctx)?;
    let storage = &ctx.server.storage;
    let bare = ctx.owner;
    let source = match &q.ids {
        Some(ids) => {
            let mut listed = Vec::with_capacity(ids.len());
            for &id in ids {
                if let Some(m) = storage.archived(bare, id)?
                    && q.with.as_ref().is_none_or(|w| w.matches(&m))
                {
                    listed.push((id, m));
                }
            }
            Source::Listed(listed)
        }
        None => Source::Archive {
            storage,
            bare,
            with: q.with.as_ref(),
        },
    };
    let page = page(&q, &source)?;
    metrics::counter!("starling_mam_queries_total").increment(1);
    let queryid = ctx.payload.get_attr("queryid");
    let full = ctx.requester;
    let mut out: Vec<Arc<str>> = Vec::with_capacity(page.items.len() + 1);
    let mut order: Vec<&(u64, ArchivedMessage)> = page.items.iter().collect();
    if q.flip {
        order.reverse();
    }
    for (n, (id, m)) in order.into_iter().enumerate() {
        let jid = m.jid.as_deref().filter(|_| ctx.reveal);
        out.push(result_message(full, bare, queryid, *id, &m.xml, jid, n).into());
    }
    let mut set = Element::new("set", NS_RSM);
    if let (Some((first, _)), Some((last, _))) = (page.items.first(), page.items.last()) {
        set = set
            .child(
                Element::new("first", NS_RSM)
                    .attr("index", page.first_index.to_string())
                    .text(encode_id(*first)),
            )
            .child(Element::new("last", NS_RSM).text(encode_id(*last)));
    }
    set = set.child(Element::new("count", NS_RSM).text(page.count.to_string()));
    let mut fin = Element::new("fin", NS_MAM);
    if let Some(qid) = queryid {
        fin.set_attr("queryid", qid);
    }
    fin.set_attr("complete", if page.complete { "true" } else { "false" });
    let mut reply = iq_result(ctx.iq, Some(fin.child(set)));
    reply.set_attr("to", full);
    out.push(reply.to_stream_xml(NS_CLIENT).into());
    let (req_bare, res) = split(full);
    let handle = res.and_then(|r| ctx.server.router.handle(req_bare, r));
    if let Some(handle) = handle {
        let patience = std::time::Duration::from_secs(ctx.server.config.c2s.write_timeout_secs);
        send_in_order(handle, out, patience);
    }
    Ok(())
}

/// One result of a query (XEP-0313 §4.2): the stored message, forwarded
/// as it is (it was serialised with its namespace declared).
fn result_message(
    to: &str,
    from: &str,
    queryid: Option<&str>,
    id: u64,
    xml: &str,
    jid: Option<&str>,
    n: usize,
) -> String {
    let mut s = String::with_capacity(xml.len() + 320);
    s.push_str("<message to=\"");
    escape_into(&mut s, to, true);
    s.push_str("\" from=\"");
    escape_into(&mut s, from, true);
    s.push_str("\" id=\"");
    s.push_str(&encode_id(id));
    s.push('-');
    s.push_str(&n.to_string());
    s.push_str("\"><result xmlns=\"");
    s.push_str(NS_MAM);
    s.push('"');
    if let Some(qid) = queryid {
        s.push_str(" queryid=\"");
        escape_into(&mut s, qid, true);
        s.push('"');
    }
    s.push_str(" id=\"");
    s.push_str(&encode_id(id));
    s.push_str("\"><forwarded xmlns=\"");
    s.push_str(NS_FORWARD);
    s.push_str("\"><delay xmlns=\"");
    s.push_str(NS_DELAY);
    s.push_str("\" stamp=\"");
    s.push_str(&stamp(id));
    s.push_str("\"/>");
    match jid.and_then(|j| xml.strip_suffix("</message>").map(|head| (j, head))) {
        // A room message to who may see its sender's real JID: muc#user
        // <item jid=.../> as in non-anonymous room presence.
        Some((j, head)) => {
            s.push_str(head);
            s.push_str("<x xmlns=\"");
            s.push_str(NS_MUC_USER);
            s.push_str("\"><item jid=\"");
            escape_into(&mut s, j, true);
            s.push_str("\"/></x></message>");
        }
        None => s.push_str(xml),
    }
    s.push_str("</forwarded></result></message>");
    s
}

/// Queues `stanzas` for the session in order. The IQ handler runs in the
/// session's own stream task, which writes the session's queue only
/// between stanzas: what does not fit now is handed on by a task of its
/// own that waits for room (at most `patience` per stanza), so a page
/// larger than the session's bound still arrives whole, before its
/// result.
fn send_in_order(handle: SessionHandle, stanzas: Vec<Arc<str>>, patience: std::time::Duration) {
    let mut rest = stanzas.into_iter();
    for xml in rest.by_ref() {
        match handle.offer(&xml) {
            Offer::Queued => continue,
            Offer::Ended => return,
            Offer::Full => {
                let pending: Vec<Arc<str>> = std::iter::once(xml).chain(rest).collect();
                actix_rt::spawn(async move {
                    for xml in pending {
                        let since = std::time::Instant::now();
                        loop {
                            match handle.offer(&xml) {
                                Offer::Queued => break,
                                Offer::Full if since.elapsed() < patience => {
                                    tokio::time::sleep(std::time::Duration::from_millis(5)).await
                                }
                                Offer::Full | Offer::Ended => return,
                            }
                        }
                    }
                });
                return;
            }
        }
    }
}

/// The archive's first and last message (XEP-0313 §6, `#extended`).
fn metadata<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        own_archive(ctx)?;
        caught_up(ctx.server).await?;
        Ok(metadata_of(&ctx.server.storage, ctx.origin.bare)?.into())
    }
    .boxed()
}

/// XEP-0386: the archive's `<metadata/>` for a Bind2 `<bound/>`, as this
/// node's replica has it (a hint for the client's first query, which
/// itself reads the archive as the cluster has it).
pub fn bind2_metadata(server: &Server, bare: &str) -> Option<Element> {
    if !enabled(&server.config) {
        return None;
    }
    metadata_of(&server.storage, bare).ok()
}

/// `<metadata/>` of the archive of `bare`: its first and last message
/// (none for an empty archive).
fn metadata_of(storage: &Storage, bare: &str) -> Result<Element, StoreError> {
    let mut md = Element::new("metadata", NS_MAM);
    let first = storage.archive_range(bare, 0, u64::MAX, false, 1)?;
    let last = storage.archive_range(bare, 0, u64::MAX, true, 1)?;
    if let (Some((first, _)), Some((last, _))) = (first.first(), last.first()) {
        for (name, id) in [("start", *first), ("end", *last)] {
            md = md.child(
                Element::new(name, NS_MAM)
                    .attr("id", encode_id(id))
                    .attr("timestamp", stamp(id)),
            );
        }
    }
    Ok(md)
}

// ---------------------------------------------------------------- preferences

fn prefs_element(p: &ArchivePrefs) -> Element {
    let list = |name: &str, jids: &[String]| {
        jids.iter().fold(Element::new(name, NS_MAM), |e, j| {
            e.child(Element::new("jid", NS_MAM).text(j.as_str()))
        })
    };
    Element::new("prefs", NS_MAM)
        .attr("default", p.default.as_str())
        .child(list("always", &p.always))
        .child(list("never", &p.never))
}

/// The JIDs of an `<always/>` or `<never/>` list, normalised.
fn jid_list(prefs: &Element, name: &str) -> Result<Vec<String>, StanzaError> {
    let mut out: Vec<String> = Vec::new();
    for list in prefs.elements().filter(|e| e.is(name, NS_MAM)) {
        for j in list.elements().filter(|e| e.is("jid", NS_MAM)) {
            let jid = jid::Jid::new(j.text_content().trim())
                .map_err(|_| StanzaError::with_text(Condition::BadRequest, "bad JID in prefs"))?
                .to_string();
            if !out.contains(&jid) {
                out.push(jid);
            }
        }
    }
    Ok(out)
}

/// XEP-0441 preferences: get, or set and answer with what applies.
fn prefs<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        own_archive(ctx)?;
        let server = ctx.server;
        let bare = ctx.origin.bare;
        if !ctx.set {
            return Ok(prefs_element(&*prefs_of(server, bare)?).into());
        }
        let default = ctx
            .payload
            .get_attr("default")
            .and_then(ArchivePolicy::parse)
            .ok_or_else(|| bad_request("'default' must be always, never or roster"))?;
        let never = jid_list(ctx.payload, "never")?;
        let always: Vec<String> = jid_list(ctx.payload, "always")?
            .into_iter()
            .filter(|j| !never.contains(j))
            .collect();
        let prefs = ArchivePrefs {
            default,
            always,
            never,
        };
        server.storage.set_archive_prefs(bare, &prefs).await?;
        Ok(prefs_element(&prefs).into())
    }
    .boxed()
}

// ---------------------------------------------------------------- retention

/// Deletes per write during a retention pass.
const RETENTION_BATCH: usize = 512;

/// Runs the retention pass every `mam.cleanup_interval_secs` on the node
/// that leads the durable group (every node runs the loop; the others
/// skip the pass), when any retention is configured.
pub async fn run_retention(server: Arc<Server>) {
    let cfg = &server.config.mam;
    let limited = cfg.max_age_days > 0
        || cfg.max_messages > 0
        || cfg
            .domains
            .values()
            .any(|r| r.max_age_days.unwrap_or(0) > 0 || r.max_messages.unwrap_or(0) > 0);
    if !limited {
        return;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(cfg.cleanup_interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = &server.storage.store;
        if store.leader() != Some(store.node_id()) {
            continue;
        }
        match enforce_retention(&server.storage, &server.config, chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "archive retention pass"),
            Err(e) => tracing::warn!(error = %e, "archive retention pass stopped; next interval"),
        }
    }
}

/// One retention pass over every archive: messages older than their
/// domain's `max_age_days`, then the oldest beyond `max_messages`, deleted
/// in bounded batches. Visits users with one seek each (never the whole
/// archive) and reads only the messages it deletes (and, for
/// `max_messages`, the keys it counts). Returns how many were deleted.
pub async fn enforce_retention(
    storage: &Storage,
    config: &Config,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<u64, StoreError> {
    let mut deleted = 0;
    let mut user = storage.next_archive_owner(None)?;
    while let Some(bare) = user {
        let domain = bare.rsplit_once('@').map_or(bare.as_str(), |(_, d)| d);
        let (max_age_days, max_messages) = config.mam.retention(domain);
        if max_age_days > 0 {
            let age = i64::try_from(max_age_days)
                .unwrap_or(i64::MAX / 86_400_000_000)
                .saturating_mul(86_400_000_000);
            let cutoff = first_id_at(now.timestamp_micros().saturating_sub(age));
            if let Some(hi) = cutoff.checked_sub(1) {
                deleted += delete_oldest(storage, &bare, hi, u64::MAX).await?;
            }
        }
        if max_messages > 0 {
            let n = storage.archive_count(&bare, 0, u64::MAX)?;
            if n > max_messages {
                deleted += delete_oldest(storage, &bare, u64::MAX, n - max_messages).await?;
            }
        }
        user = storage.next_archive_owner(Some(&bare))?;
    }
    metrics::counter!("starling_mam_retention_deleted_total").increment(deleted);
    Ok(deleted)
}

/// Deletes up to `limit` of the oldest messages of `bare` with ids up to
/// `hi`, a batch per write.
async fn delete_oldest(
    storage: &Storage,
    bare: &str,
    hi: u64,
    limit: u64,
) -> Result<u64, StoreError> {
    let mut done = 0;
    while done < limit {
        let want =
            usize::try_from(limit - done).map_or(RETENTION_BATCH, |l| l.min(RETENTION_BATCH));
        let ids: Vec<u64> = storage
            .archive_range(bare, 0, hi, false, want)?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if ids.is_empty() {
            break;
        }
        storage.delete_archived(bare, &ids).await?;
        done += ids.len() as u64;
        tokio::task::yield_now().await;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_keep_node_and_time() {
        let a = next_id(7);
        let b = next_id(7);
        assert!(b > a);
        assert_eq!(a & 0xfff, 7);
        let now = chrono::Utc::now().timestamp_micros();
        assert!(
            (now - id_micros(b)).abs() < 5_000_000,
            "{now} vs {}",
            id_micros(b)
        );
        // Another node's id in the same microsecond differs.
        assert_ne!(next_id(8) & 0xfff, next_id(7) & 0xfff);
        let many: Vec<u64> = (0..10_000).map(|_| next_id(1)).collect();
        assert!(many.windows(2).all(|w| w[1] > w[0]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ids_start_above_the_floor_a_previous_run_reserved() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(dir.path()).await;
        let key = storage.store.node_id().to_be_bytes().to_vec();
        // A previous run's floor, 2 s ahead of this clock (as if the clock
        // went back since).
        let now = u64::try_from(chrono::Utc::now().timestamp_micros() - ID_EPOCH_MICROS).unwrap();
        let floor = now + 2_000_000;
        storage
            .store
            .write(vec![starling_cluster::Op::Put {
                space: ID_FLOOR.into(),
                key: key.clone(),
                value: floor.to_be_bytes().to_vec(),
            }])
            .await
            .unwrap();
        reserve_ids_in(&storage.store).await.unwrap();
        let id = next_id(storage.store.node_id());
        assert!(id >> NODE_BITS > floor, "an id at or below the old floor");
        assert!(reserved(id));
        // The new floor is written ahead, and ids beyond it are not
        // taken for new.
        let written = storage.store.get(ID_FLOOR, &key).unwrap().unwrap();
        let written = u64::from_be_bytes(written.try_into().unwrap());
        assert!(written >= floor + RESERVE_AHEAD_MICROS);
        assert!(RESERVED.load(Ordering::Acquire) >= written);
        assert!(!reserved(
            (RESERVED.load(Ordering::Acquire) + 1) << NODE_BITS
        ));
        // Records under a reserved id are written without a check.
        let p = Prepared {
            id,
            records: vec![("b@x".into(), record(false, 1))],
            keep_in: true,
            started: std::time::Instant::now(),
        };
        assert!(matches!(p.ops()[0], starling_cluster::Op::Put { .. }));
        let unreserved = Prepared {
            id: (RESERVED.load(Ordering::Acquire) + 10) << NODE_BITS,
            ..p
        };
        assert!(matches!(
            unreserved.ops()[0],
            starling_cluster::Op::Insert { .. }
        ));
    }

    #[test]
    fn id_strings_round_trip_and_only_canonical_ones_decode() {
        for id in [0, 1, 4095, 1 << 40, u64::MAX, next_id(3)] {
            let s = encode_id(id);
            assert_eq!(s.len(), 11);
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(decode_id(&s), Some(id));
        }
        assert_eq!(decode_id(""), None);
        assert_eq!(decode_id("AAAAAAAAAAAA"), None);
        assert_eq!(decode_id("AAAAAAAAA+A"), None);
        // Same bytes, non-canonical last character (spare bits set).
        assert_eq!(decode_id("AAAAAAAAAAB"), None);
    }

    #[test]
    fn time_bounds_bracket_ids() {
        let id = next_id(5);
        let t = id_micros(id);
        assert!(first_id_at(t) <= id && id <= last_id_at(t).unwrap());
        assert!(last_id_at(t - 1).unwrap() < id);
        assert!(first_id_at(t + 1) > id);
        assert_eq!(first_id_at(0), 0);
        assert_eq!(last_id_at(0), None);
    }

    fn msg(xml: &str) -> Element {
        crate::stanza::parse_serialised(xml).unwrap()
    }

    #[test]
    fn what_is_worth_archiving() {
        assert!(worth_archiving(&msg(
            "<message type='chat'><body>x</body></message>"
        )));
        assert!(worth_archiving(&msg("<message><body>x</body></message>")));
        assert!(worth_archiving(&msg(
            "<message type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>"
        )));
        assert!(!worth_archiving(&msg(
            "<message type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )));
        for t in ["headline", "groupchat", "error"] {
            let m = msg(&format!("<message type='{t}'><body>x</body></message>"));
            assert!(!worth_archiving(&m), "{t}");
        }
        assert!(!worth_archiving(&msg(
            "<message type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"
        )));
        assert!(worth_archiving(&msg(
            "<message type='chat'><store xmlns='urn:xmpp:hints'/></message>"
        )));
    }

    #[test]
    fn spoofed_stanza_ids_go_and_others_stay() {
        let mut m = msg("<message><body>x</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='b@x' id='1'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='a@x' id='2'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.x' id='3'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='x' id='4'/></message>");
        strip_spoofed(&mut m, "b@x", "a@x");
        let left: Vec<_> = m
            .elements()
            .filter(|e| e.is("stanza-id", NS_SID))
            .map(|e| e.get_attr("id").unwrap().to_owned())
            .collect();
        assert_eq!(left, ["3"]);
    }

    #[test]
    fn a_copy_is_the_message_serialised_with_its_archive_stanza_id_last() {
        let mut m = msg(
            "<message from='a@x/r' to='b@x' type='chat'><body>1 &lt; 2</body>\
             <x xmlns='jabber:x:oob'><url>u</url></x></message>",
        );
        let xml = m.to_stream_xml("");
        let got = copy(&xml, "b@x", 77, false, "a@x/r");
        m.children.push(Node::Element(stanza_id("b@x", 77)));
        assert_eq!(got.xml, m.to_stream_xml(""));
        assert_eq!(
            (got.with.as_str(), got.with_resource.as_deref()),
            ("a@x", Some("r"))
        );
        assert!(!got.outgoing);
    }

    #[test]
    fn results_embed_the_stored_message_in_its_namespace() {
        let stored =
            msg("<message from='a@x/r' to='b@x' type='chat'><body>hi &amp; bye</body></message>")
                .to_stream_xml("");
        let r = result_message("b@x/r", "b@x", Some("q'1"), 77, &stored, None, 0);
        let el = msg(&r);
        let result = el.get_child("result", NS_MAM).unwrap();
        assert_eq!(result.get_attr("queryid"), Some("q'1"));
        assert_eq!(result.get_attr("id"), Some(encode_id(77).as_str()));
        let fwd = result.get_child("forwarded", NS_FORWARD).unwrap();
        assert!(fwd.has_child("delay", NS_DELAY));
        let inner = fwd.get_child("message", NS_CLIENT).unwrap();
        assert_eq!(
            inner.child_text("body", NS_CLIENT).as_deref(),
            Some("hi & bye")
        );
    }

    async fn storage(dir: &std::path::Path) -> Storage {
        let store = starling_cluster::Store::open(starling_cluster::StoreConfig {
            data_dir: dir.join("store"),
            node_id: 1,
            raft_addr: "127.0.0.1:1".into(),
        })
        .await
        .unwrap();
        Storage::new(store)
    }

    fn record(outgoing: bool, n: u64) -> ArchivedMessage {
        ArchivedMessage {
            outgoing,
            with: "c@x".into(),
            with_resource: None,
            xml: format!("<message xmlns='jabber:client'><body>{n}</body></message>"),
            jid: None,
        }
    }

    async fn put(storage: &Storage, owner: &str, items: &[(u64, bool)]) {
        let records: Vec<_> = items
            .iter()
            .map(|&(id, out)| (id, record(out, id)))
            .collect();
        let entries: Vec<_> = records.iter().map(|(id, m)| (owner, *id, m)).collect();
        assert!(storage.archive(&entries).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_reads_received_messages_after_an_id() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(dir.path()).await;
        assert_eq!(last_id(&storage, "b@x").unwrap(), None);
        assert!(
            incoming_after(&storage, "b@x", None, 10)
                .unwrap()
                .is_empty()
        );
        // An id is never written twice: the second write of a taken id
        // writes nothing, not even its other copies.
        let (m, other) = (record(false, 1), record(true, 1));
        assert!(storage.archive(&[("b@z", 99, &m)]).await.unwrap());
        assert!(
            !storage
                .archive(&[("c@z", 99, &other), ("b@z", 99, &other)])
                .await
                .unwrap()
        );
        assert_eq!(storage.archived("b@z", 99).unwrap(), Some(m));
        assert_eq!(storage.archived("c@z", 99).unwrap(), None);
        // 600 messages (more than one read chunk), every third one sent.
        let items: Vec<(u64, bool)> = (1..=600).map(|i| (i * 10, i % 3 == 0)).collect();
        put(&storage, "b@x", &items).await;
        put(&storage, "b@y", &[(5, false), (7000, false)]).await;
        assert_eq!(last_id(&storage, "b@x").unwrap(), Some(6000));
        let all = incoming_after(&storage, "b@x", None, 1000).unwrap();
        assert_eq!(all.len(), 400);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(all[0], (10, record(false, 10).xml));
        let after: Vec<u64> = incoming_after(&storage, "b@x", Some(5000), 3)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(after, [5020, 5030, 5050]);
        assert!(
            incoming_after(&storage, "b@x", Some(6000), 5)
                .unwrap()
                .is_empty()
        );
        assert!(
            incoming_after(&storage, "b@x", Some(u64::MAX), 5)
                .unwrap()
                .is_empty()
        );
        assert_eq!(incoming_after(&storage, "b@x", None, 0).unwrap().len(), 0);
        storage.store.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_deletes_old_and_excess_messages_per_domain() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(dir.path()).await;
        let now = chrono::Utc::now();
        let day = 86_400_000_000i64;
        let at = |days_ago: i64, n: u64| first_id_at(now.timestamp_micros() - days_ago * day) + n;
        // a@old keeps 5 days; a@few keeps 3 messages; a@all keeps everything.
        let mut config = Config {
            domains: vec!["old".into(), "few".into(), "all".into()],
            ..Config::default()
        };
        config.mam.max_age_days = 5;
        config.mam.domains.insert(
            "few".into(),
            crate::config::MamRetention {
                max_age_days: Some(0),
                max_messages: Some(3),
            },
        );
        config.mam.domains.insert(
            "all".into(),
            crate::config::MamRetention {
                max_age_days: Some(0),
                max_messages: None,
            },
        );
        let old: Vec<(u64, bool)> = (0..1200)
            .map(|n| (at(10, n), false))
            .chain([(at(1, 0), true)])
            .collect();
        put(&storage, "a@old", &old).await;
        put(
            &storage,
            "a@few",
            &[
                (at(9, 0), false),
                (at(3, 0), false),
                (at(2, 0), true),
                (at(1, 0), false),
                (at(0, 0), false),
            ],
        )
        .await;
        put(&storage, "a@all", &[(at(400, 0), false), (at(1, 0), false)]).await;
        let deleted = enforce_retention(&storage, &config, now).await.unwrap();
        assert_eq!(deleted, 1200 + 2);
        let ids = |bare: &str| -> Vec<u64> {
            storage
                .archive_range(bare, 0, u64::MAX, false, 100)
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        assert_eq!(ids("a@old"), [at(1, 0)]);
        assert_eq!(ids("a@few"), [at(2, 0), at(1, 0), at(0, 0)]);
        assert_eq!(ids("a@all").len(), 2);
        assert_eq!(enforce_retention(&storage, &config, now).await.unwrap(), 0);
        storage.store.shutdown().await.unwrap();
    }
}
