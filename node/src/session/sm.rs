//! XEP-0198 stream management: the counters and the queue of stanzas the
//! client has not acknowledged, for one session.
//!
//! `h` counts stanzas (never nonzas) modulo 2^32 in both directions: the
//! session counts what it handled of the client's (`h_in`, reported in
//! `<a/>` and `<resumed/>`) and what it wrote (`sent`); the client's `<a/>`
//! says how many of those it handled, and the ones after that stay in
//! `unacked` until it does. When a resumable session loses its connection
//! it waits (detached) for `<resume/>` for up to `max` seconds; a new
//! connection takes its state over ([`Detached`]) and resends what is
//! still unacknowledged. Whatever is left when the session finally ends is
//! treated as undelivered (XEP-0198 §4): messages are routed again,
//! requests get an error.
//!
//! Resumption is found through [`Resumable`], this node's table of
//! resumable sessions by SM-ID.

use crate::router::{SessionHandle, ToSession};
use dashmap::DashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub const NS_SM: &str = "urn:xmpp:sm:3";

/// The stream management state of one session.
#[derive(Debug)]
pub struct Sm {
    /// The SM-ID, when the client asked for resumption.
    pub id: Option<Arc<str>>,
    /// Seconds the session waits for resumption once detached.
    pub max: u32,
    /// Stanzas handled of the client's.
    pub h_in: u32,
    /// Stanzas written to the client (and sent + acked, shared with the
    /// resumption table so a resume's `h` is checked without asking the
    /// session).
    counts: Arc<Counts>,
    /// Written and not yet acknowledged, oldest first: `sent - acked` of them.
    unacked: VecDeque<Arc<str>>,
    /// Stanzas and bytes written since the last `<r/>` this side sent.
    since_request: u32,
    bytes_since_request: usize,
}

/// `sent` and `acked` in one word, so a reader sees a consistent pair;
/// and the client's stanzas handled, for a `<failed/>` that ends the
/// session (XEP-0198 §5: the client learns what to send again).
#[derive(Debug, Default)]
pub struct Counts(AtomicU64, AtomicU32);

impl Counts {
    fn new(sent: u32, acked: u32, h_in: u32) -> Arc<Self> {
        Arc::new(Counts(
            AtomicU64::new(pack(sent, acked)),
            AtomicU32::new(h_in),
        ))
    }

    /// (sent, acked).
    pub fn get(&self) -> (u32, u32) {
        unpack(self.0.load(Ordering::Acquire))
    }

    fn set(&self, sent: u32, acked: u32) {
        self.0.store(pack(sent, acked), Ordering::Release);
    }

    /// The client's stanzas the session handled.
    pub fn handled(&self) -> u32 {
        self.1.load(Ordering::Relaxed)
    }

    /// Whether a client that reports `h` claims no more than `sent` (of a
    /// session that is over: nothing is acked any more).
    pub fn fits(h: u32, sent: u32) -> bool {
        place(h, sent, sent) != Place::TooHigh
    }

    /// Whether a client that handled `h` of our stanzas claims no more
    /// than were sent.
    pub fn valid(&self, h: u32) -> bool {
        let (sent, acked) = self.get();
        place(h, sent, acked) != Place::TooHigh
    }
}

/// Where a client's `h` lies, modulo 2^32, against what was sent and what
/// it acknowledged before.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// From the last ack to what was sent.
    Within,
    /// Before the last ack: an old or reordered `<a/>`, which acknowledges
    /// nothing new (XEP-0198's error is for an `h` above what was sent).
    Behind,
    /// Beyond what was sent (within half the counter's range of it).
    TooHigh,
}

fn place(h: u32, sent: u32, acked: u32) -> Place {
    if h.wrapping_sub(acked) <= sent.wrapping_sub(acked) {
        Place::Within
    } else if h.wrapping_sub(sent) < 1 << 31 {
        Place::TooHigh
    } else {
        Place::Behind
    }
}

fn pack(sent: u32, acked: u32) -> u64 {
    (u64::from(sent) << 32) | u64::from(acked)
}

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

/// An `<a/>` acknowledged more stanzas than were sent.
#[derive(Debug, PartialEq, Eq)]
pub struct TooHigh {
    pub h: u32,
    pub sent: u32,
}

impl Sm {
    pub fn new(id: Option<Arc<str>>, max: u32) -> Self {
        Sm {
            id,
            max,
            h_in: 0,
            counts: Counts::new(0, 0, 0),
            unacked: VecDeque::new(),
            since_request: 0,
            bytes_since_request: 0,
        }
    }

    /// Continues a detached session's state on a new stream whose client
    /// handled `h` of the stanzas sent: returns it with what is to be
    /// written again (counted again, after `h`, as the client counts them).
    pub fn resumed(d: Detached, h: u32) -> Result<(Self, VecDeque<Arc<str>>), TooHigh> {
        if place(h, d.sent, d.acked) == Place::TooHigh {
            return Err(TooHigh { h, sent: d.sent });
        }
        Ok(Self::resumed_or_all(d, h))
    }

    /// As [`Sm::resumed`] for an `h` checked before (`Counts::valid`):
    /// should it no longer fit (or be behind the last ack), everything
    /// unacknowledged is sent again.
    pub fn resumed_or_all(d: Detached, h: u32) -> (Self, VecDeque<Arc<str>>) {
        let h = if d.fits(h) { h } else { d.acked };
        let mut resend = d.unacked;
        resend.drain(..h.wrapping_sub(d.acked) as usize);
        let sm = Sm {
            id: Some(d.id),
            max: d.max,
            h_in: d.h_in,
            counts: Counts::new(h, h, d.h_in),
            unacked: VecDeque::new(),
            since_request: 0,
            bytes_since_request: 0,
        };
        (sm, resend)
    }

    /// The client's last `h`.
    pub fn acked(&self) -> u32 {
        self.counts.get().1
    }

    pub fn counts(&self) -> Arc<Counts> {
        self.counts.clone()
    }

    /// One more stanza of the client's handled.
    pub fn handled(&mut self) {
        self.h_in = self.h_in.wrapping_add(1);
        self.counts.1.store(self.h_in, Ordering::Relaxed);
    }

    /// One more stanza written to the client.
    pub fn sent(&mut self, xml: Arc<str>) {
        let (sent, acked) = self.counts.get();
        self.since_request += 1;
        self.bytes_since_request += xml.len();
        self.unacked.push_back(xml);
        self.counts.set(sent.wrapping_add(1), acked);
    }

    /// The client handled `h` of the stanzas written to it.
    pub fn ack(&mut self, h: u32) -> Result<(), TooHigh> {
        let (sent, acked) = self.counts.get();
        match place(h, sent, acked) {
            Place::Within => {}
            Place::Behind => return Ok(()),
            Place::TooHigh => return Err(TooHigh { h, sent }),
        }
        let n = h.wrapping_sub(acked);
        self.unacked.drain(..n as usize);
        self.counts.set(sent, h);
        Ok(())
    }

    /// Whether to ask the client for an ack now: after `every` stanzas or
    /// `bytes` bytes written since the last request (0 disables either).
    pub fn request_due(&mut self, every: u32, bytes: usize) -> bool {
        let due = (every > 0 && self.since_request >= every)
            || (bytes > 0 && self.bytes_since_request >= bytes);
        if due {
            self.since_request = 0;
            self.bytes_since_request = 0;
        }
        due
    }

    /// An `<r/>` went out for what was written so far.
    pub fn requested(&mut self) {
        self.since_request = 0;
        self.bytes_since_request = 0;
    }

    /// The stanzas written and not acknowledged, oldest first.
    pub fn unacked(&self) -> impl Iterator<Item = &Arc<str>> {
        self.unacked.iter()
    }

    /// Hands the state over for resumption elsewhere, with `pending` (queued
    /// for the socket and never written) after the unacknowledged ones.
    pub fn detach(
        self,
        pending: impl IntoIterator<Item = Arc<str>>,
        archive: u64,
    ) -> Option<Detached> {
        let id = self.id?;
        let (sent, acked) = self.counts.get();
        let mut unacked = self.unacked;
        unacked.extend(pending);
        Some(Detached {
            id,
            max: self.max,
            h_in: self.h_in,
            sent,
            acked,
            unacked,
            archive,
        })
    }

    /// What was never acknowledged, for the session's end (§4).
    pub fn into_unacked(self) -> VecDeque<Arc<str>> {
        self.unacked
    }
}

/// A session's stream management state handed from its old connection to
/// the one that resumes it. `unacked` also holds what was queued and never
/// written: on resumption all of it is written, and counted, again.
#[derive(Debug)]
pub struct Detached {
    pub id: Arc<str>,
    pub max: u32,
    pub h_in: u32,
    /// Stanzas counted as written when the old connection stopped: the
    /// first `sent - acked` of `unacked` were written, the rest never.
    pub sent: u32,
    pub acked: u32,
    pub unacked: VecDeque<Arc<str>>,
    /// How far the client acknowledged the user's message archive
    /// (`resume::Record::acked_archive`).
    pub archive: u64,
}

impl Detached {
    /// Whether a client that reports `h` handled no more than was written.
    fn fits(&self, h: u32) -> bool {
        h.wrapping_sub(self.acked) <= self.sent.wrapping_sub(self.acked)
    }
}

/// What the resuming side asks a detached (or still connected) session.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Takeover {
    /// The resuming session's handle: from now on the router sends there.
    pub to: SessionHandle,
    /// Answered with the state, or nothing if the session ended meanwhile.
    pub reply: tokio::sync::oneshot::Sender<Option<TakenOver>>,
}

/// A session's state as its new connection continues it.
#[derive(Debug)]
pub struct TakenOver {
    pub sm: Detached,
    pub full: String,
}

/// This node's resumable sessions, by SM-ID.
#[derive(Default)]
pub struct Resumable {
    sessions: DashMap<Arc<str>, Entry>,
    /// Sessions that ended without being resumed, on a node without peers
    /// (with peers, the registry keeps them: `resume::write_ended`).
    ended: DashMap<Arc<str>, Ended>,
}

/// What a node without peers keeps of a session that ended, for a late
/// `<resume/>` (XEP-0198 §5: `<failed h='...'/>`).
struct Ended {
    bare: Arc<str>,
    h_in: u32,
    until: std::time::Instant,
}

/// Most ended sessions a node without peers keeps at once.
const MAX_ENDED: usize = 100_000;

/// One resumable session.
#[derive(Clone)]
pub struct Entry {
    pub bare: Arc<str>,
    pub session: u64,
    /// The connection that listed it (see `remove`).
    pub generation: u64,
    pub counts: Arc<Counts>,
    pub takeover: actix::Recipient<Takeover>,
    /// Asks the session to end (a resumption it cannot grant).
    pub close: actix::Recipient<ToSession>,
}

impl Resumable {
    pub fn insert(&self, id: Arc<str>, entry: Entry) {
        self.sessions.insert(id, entry);
    }

    pub fn get(&self, id: &str) -> Option<Entry> {
        self.sessions.get(id).map(|e| e.clone())
    }

    /// Every resumable session of this node.
    pub fn entries(&self) -> Vec<Entry> {
        self.sessions.iter().map(|e| e.value().clone()).collect()
    }

    /// Keeps, for `keep`, that session `id` of `bare` ended having handled
    /// `h_in` of its client's stanzas (none kept past [`MAX_ENDED`]).
    pub fn end(&self, id: Arc<str>, bare: Arc<str>, h_in: u32, keep: std::time::Duration) {
        if keep.is_zero() {
            return;
        }
        let now = std::time::Instant::now();
        if self.ended.len() >= MAX_ENDED {
            self.sweep_ended(now);
            if self.ended.len() >= MAX_ENDED {
                return;
            }
        }
        let until = now + keep;
        self.ended.insert(id, Ended { bare, h_in, until });
    }

    /// The `h` an ended session `id` of `bare` reported last, while kept.
    pub fn ended(&self, id: &str, bare: &str) -> Option<u32> {
        let e = self.ended.get(id)?;
        (&*e.bare == bare && e.until > std::time::Instant::now()).then_some(e.h_in)
    }

    /// Forgets the ended sessions whose time is up.
    pub fn sweep_ended(&self, now: std::time::Instant) {
        self.ended.retain(|_, e| e.until > now);
    }

    /// Removes `id` if it is still the one connection `generation` listed
    /// (a resumed session keeps its id and session number).
    pub fn remove(&self, id: &str, generation: u64) {
        self.sessions
            .remove_if(id, |_, e| e.generation == generation);
    }
}

/// A new SM-ID: unguessable, and naming the node that issued it (for
/// operators reading logs; resumption finds sessions by their record).
pub fn new_id(node: u64) -> Arc<str> {
    format!("{node:x}-{}", crate::stream::new_id()).into()
}

/// `<a h='N'/>`.
pub fn ack_xml(h: u32) -> String {
    format!("<a xmlns='{NS_SM}' h='{h}'/>")
}

pub const REQUEST_XML: &str = "<r xmlns='urn:xmpp:sm:3'/>";

/// `<failed/>` with a stanza error condition (and `extra` after it).
pub fn failed_xml(condition: &str, extra: &str) -> String {
    format!(
        "<failed xmlns='{NS_SM}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>{extra}</failed>"
    )
}

/// `<failed/>` for a `<resume/>` of a session that is over, with the `h` of
/// the client's stanzas it handled (XEP-0198 §5), so the client knows
/// which to send again.
pub fn failed_with_h(condition: &str, h: u32, extra: &str) -> String {
    format!(
        "<failed xmlns='{NS_SM}' h='{h}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>{extra}</failed>"
    )
}

/// The `<failed/>` for a `<resume/>` of a session that ended: item not
/// found, with its `h`.
pub fn failed_ended_xml(h: u32) -> String {
    failed_with_h("item-not-found", h, "")
}

/// The `<handled-count-too-high/>` that explains an `h` beyond what was sent.
pub fn too_high_xml(t: &TooHigh) -> String {
    format!(
        "<handled-count-too-high xmlns='{NS_SM}' h='{}' send-count='{}'/>",
        t.h, t.sent
    )
}

/// Parses an `h` attribute: a number within 0..2^32.
pub fn parse_h(v: Option<&str>) -> Option<u32> {
    v?.trim().parse::<u32>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml(s: &str) -> Arc<str> {
        s.into()
    }

    #[test]
    fn acks_drop_what_the_client_handled_and_refuse_more_than_was_sent() {
        let mut sm = Sm::new(Some("x".into()), 300);
        for s in ["<a/>", "<b/>", "<c/>"] {
            sm.sent(xml(s));
        }
        assert_eq!(sm.ack(1), Ok(()));
        assert_eq!(sm.unacked().count(), 2);
        assert_eq!(sm.ack(1), Ok(()), "a repeated ack is no error");
        assert_eq!(sm.ack(4), Err(TooHigh { h: 4, sent: 3 }));
        assert_eq!(sm.ack(3), Ok(()));
        assert_eq!(sm.unacked().count(), 0);
        assert_eq!(sm.ack(1), Ok(()), "an older ack acknowledges nothing new");
        assert_eq!(sm.acked(), 3);
        assert!(sm.counts().valid(1));
        assert!(sm.counts().valid(3));
        assert!(!sm.counts().valid(4));
    }

    #[test]
    fn resumption_resends_what_the_client_did_not_handle_and_counts_it_again() {
        let d = || Detached {
            id: "x".into(),
            max: 300,
            h_in: 7,
            sent: 5,
            acked: 2,
            // three written and unacknowledged, one never written
            unacked: ["<c/>", "<d/>", "<e/>", "<f/>"].map(xml).into(),
            archive: 0,
        };
        let (mut sm, resend) = Sm::resumed(d(), 3).unwrap();
        assert_eq!(
            resend.iter().map(|x| &**x).collect::<Vec<_>>(),
            ["<d/>", "<e/>", "<f/>"]
        );
        assert_eq!(sm.h_in, 7);
        assert_eq!(sm.counts().get(), (3, 3));
        for x in resend {
            sm.sent(x);
        }
        assert_eq!(sm.ack(6), Ok(()));
        assert_eq!(
            Sm::resumed(d(), 6).err(),
            Some(TooHigh { h: 6, sent: 5 }),
            "the never-written stanza cannot have been handled"
        );
        let (_, resend) = Sm::resumed(d(), 1).expect("h before the last ack");
        assert_eq!(resend.len(), 4, "everything unacknowledged again");
    }

    #[test]
    fn counters_wrap_at_two_to_the_32() {
        let d = Detached {
            id: "x".into(),
            max: 300,
            h_in: u32::MAX,
            sent: u32::MAX - 1,
            acked: u32::MAX - 1,
            unacked: VecDeque::new(),
            archive: 0,
        };
        let (mut sm, _) = Sm::resumed(d, u32::MAX - 1).unwrap();
        sm.handled();
        assert_eq!(sm.h_in, 0);
        for s in ["<a/>", "<b/>", "<c/>"] {
            sm.sent(xml(s));
        }
        assert_eq!(sm.counts().get().0, 1, "sent wrapped past 2^32 - 1");
        assert!(sm.counts().valid(0));
        assert_eq!(sm.ack(0), Ok(()));
        assert_eq!(sm.unacked().map(|x| &**x).collect::<Vec<_>>(), ["<c/>"]);
        assert_eq!(sm.ack(2), Err(TooHigh { h: 2, sent: 1 }));
    }

    #[test]
    fn requests_are_due_every_n_stanzas_or_bytes() {
        let mut sm = Sm::new(None, 0);
        sm.sent(xml("<a/>"));
        assert!(!sm.request_due(2, 0));
        sm.sent(xml("<b/>"));
        assert!(sm.request_due(2, 0));
        assert!(!sm.request_due(2, 0), "counted again from the request");
        sm.sent(xml("<long-stanza/>"));
        assert!(sm.request_due(0, 10));
    }

    #[test]
    fn ended_sessions_tell_their_h_to_their_user_until_their_time_is_up() {
        use std::time::{Duration, Instant};
        let r = Resumable::default();
        r.end("s1".into(), "a@x".into(), 7, Duration::from_secs(60));
        r.end("s2".into(), "a@x".into(), 1, Duration::ZERO);
        assert_eq!(r.ended("s1", "a@x"), Some(7));
        assert_eq!(r.ended("s1", "b@x"), None, "someone else's");
        assert_eq!(r.ended("s2", "a@x"), None, "not kept with no retention");
        r.sweep_ended(Instant::now() + Duration::from_secs(61));
        assert_eq!(r.ended("s1", "a@x"), None, "swept");
    }

    #[test]
    fn ids_name_their_node() {
        let id = new_id(0x2a);
        assert!(id.starts_with("2a-") && id.len() > 10, "{id}");
        assert_eq!(parse_h(Some("12")), Some(12));
        assert_eq!(parse_h(Some("-1")), None);
        assert_eq!(parse_h(Some("4294967296")), None);
        assert_eq!(parse_h(Some("x")), None);
    }
}
