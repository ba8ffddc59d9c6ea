//! The router: which sessions are bound on this node, and delivery to them.
//!
//! A concurrent map from bare JID to the user's bound resources, not an
//! actor everything funnels through: a sender looks the recipient up and
//! sends to the recipient session actor's address itself. Each entry
//! also holds what RFC 6121 delivery needs per resource (availability,
//! priority, last presence, whether it asked for the roster).
//!
//! The router is the one place that knows whether a resource is bound on
//! this node or on another: [`Router::bound`] and [`Router::find`] give a
//! user's resources wherever they are ([`Bound`], with [`At`] saying
//! where), and [`Router::send`] / [`Router::send_acked`] deliver to one:
//! into the session actor's mailbox here, or on the delivery stream to the
//! node that holds it. What to deliver to whom (RFC 6121) is decided by
//! `session::im` on top of this view; nothing else branches on local
//! versus remote. Sessions of this node are in a concurrent map; those of
//! other nodes in this node's replica of the routing table ([`table`]).

pub mod table;

use crate::modules::blocking::UserBlocks;
use crate::stanza::StreamCondition;
use crate::xml::Element;
use dashmap::DashMap;
use starling_cluster::{DeliveryResult, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// What other parts of the server send a session actor: its address
/// (behind a [`SessionHandle`]) is the only way into a bound session.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub enum ToSession {
    /// A serialised stanza to write to the client as it is. Serialised
    /// once by the sender, so one broadcast is shared by every recipient.
    Stanza(Arc<str>),
    /// Close the stream with this stream error condition.
    Close(StreamCondition),
    /// Let the session go: its client resumes it on another node, having
    /// handled this many of its stanzas (XEP-0198).
    Release(u32),
    /// Write the session's stream management record again (the node
    /// joined a new registry epoch, which starts empty).
    Checkpoint,
}

/// Admission to one session: what is queued for its socket (in its actor's
/// mailbox or its outbox) in stanzas and bytes, and whether it has ended.
/// Senders check it before they send, so a session that does not drain
/// (its client stopped reading) or that is ending refuses at once and the
/// sender does what RFC 6121 says for an unreachable resource (another
/// resource, offline storage, an error) — the actor's mailbox itself never
/// refuses, and never grows past these bounds.
#[derive(Debug)]
pub struct Gate {
    count: AtomicUsize,
    bytes: AtomicUsize,
    max_count: usize,
    max_bytes: usize,
    ended: AtomicBool,
}

impl Gate {
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Gate {
            count: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_count,
            max_bytes,
            ended: AtomicBool::new(false),
        }
    }

    /// Takes room for one stanza of `len` bytes; false when there is none.
    pub(crate) fn admit(&self, len: usize) -> bool {
        if self.ended.load(Ordering::Acquire) {
            return false;
        }
        let n = self.count.fetch_add(1, Ordering::AcqRel);
        let b = self.bytes.fetch_add(len, Ordering::AcqRel);
        if n >= self.max_count || b + len > self.max_bytes {
            self.release(1, len);
            return false;
        }
        true
    }

    /// The session wrote (or handed on) `count` stanzas of `bytes` bytes.
    pub fn release(&self, count: usize, bytes: usize) {
        self.count.fetch_sub(count, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// The session is ending: nothing more is admitted.
    pub fn end(&self) {
        self.ended.store(true, Ordering::Release);
    }
}

/// What [`SessionHandle::offer`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// No room now: the client has not read what is queued yet.
    Full,
    /// The session ended.
    Ended,
}

/// The sending side of one session: its id, its admission gate and the
/// session actor's address, typed by message rather than by actor so that
/// the router does not depend on the session module.
#[derive(Clone)]
pub struct SessionHandle {
    pub id: u64,
    /// Shared: cloning an actix address allocates, cloning this does not.
    to: Arc<actix::Recipient<ToSession>>,
    gate: Arc<Gate>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl SessionHandle {
    pub fn new(to: actix::Recipient<ToSession>, gate: Arc<Gate>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self::with_id(NEXT.fetch_add(1, Ordering::Relaxed), to, gate)
    }

    /// The handle of a session that continues session `id` of this node
    /// (XEP-0198 resumption): its user actor and route know it by that id.
    pub fn with_id(id: u64, to: actix::Recipient<ToSession>, gate: Arc<Gate>) -> Self {
        SessionHandle {
            id,
            to: Arc::new(to),
            gate,
        }
    }

    /// Queues an already serialised stanza (shared by many recipients);
    /// false when the session has ended or is full. A full session is a
    /// client that does not read: it is told to close with
    /// `<resource-constraint/>`.
    pub fn send_shared(&self, xml: &Arc<str>) -> bool {
        if !self.gate.admit(xml.len()) {
            if !self.gate.ended.load(Ordering::Acquire) {
                metrics::counter!("starling_router_mailbox_full_total").increment(1);
                self.close(StreamCondition::ResourceConstraint);
            }
            return false;
        }
        self.to.do_send(ToSession::Stanza(xml.clone()));
        crate::hot_counter!("starling_router_delivered_total").increment(1);
        true
    }

    /// Queues a serialised stanza if there is room, without asking a full
    /// session to close (a sender that can wait: an offline backlog).
    pub fn offer(&self, xml: &Arc<str>) -> Offer {
        if self.gate.admit(xml.len()) {
            self.to.do_send(ToSession::Stanza(xml.clone()));
            Offer::Queued
        } else if self.gate.ended.load(Ordering::Acquire) {
            Offer::Ended
        } else {
            Offer::Full
        }
    }

    /// Asks the session to close its stream with `condition`.
    pub fn close(&self, condition: StreamCondition) {
        self.to.do_send(ToSession::Close(condition));
    }

    /// Asks the session to let go for resumption on another node.
    pub fn release(&self, h: u32) {
        self.to.do_send(ToSession::Release(h));
    }
}

/// One bound resource of a user.
#[derive(Clone, Debug)]
pub struct Resource {
    /// Shared: the router's views of a user's resources copy it often.
    pub resource: Arc<str>,
    pub handle: SessionHandle,
    /// Sent initial presence and not yet unavailable.
    pub available: bool,
    pub priority: i32,
    /// The last available presence it broadcast.
    pub presence: Option<Element>,
    /// Requested the roster (RFC 6121 §2.1.6 "interested resource").
    pub interested: bool,
    /// Requested the blocklist (gets XEP-0191 pushes).
    pub blocklist: bool,
    /// Enabled XEP-0280 message carbons.
    pub carbons: bool,
}

/// What a session sends its user's actor (one per bare JID with a
/// session on this node): the operations on the user's online state, run
/// one at a time in the order they were sent.
#[derive(Debug, actix::Message)]
#[rtype(result = "Result<(), crate::stanza::StanzaError>")]
pub enum ToUser {
    /// A session was bound (`full`): close a session of the same full JID
    /// on another node; its route is written when first needed.
    Attach { session: u64, full: String },
    /// Write the session's route now if it is not yet (before the first
    /// stanza it sends, or a second after bind).
    Publish { session: u64 },
    /// A presence stanza the session's client sent (`from` stamped).
    Presence { session: u64, el: Element },
    /// The session asked for the roster: it gets roster pushes from now
    /// on (RFC 6121 §2.1.6), wherever they come from.
    Interested { session: u64 },
    /// The session asked for the blocklist: it gets blocklist pushes from
    /// now on (XEP-0191 §3.3), wherever they come from.
    BlocklistRequested { session: u64 },
    /// The user blocked these JIDs (sorted): those of them that got
    /// directed presence from a session here see it go unavailable
    /// (XEP-0191 §3.3).
    Blocked { items: Vec<String> },
    /// The session enabled or disabled message carbons (XEP-0280): copies
    /// reach it from any node while enabled.
    Carbons { session: u64, enabled: bool },
    /// The session ended: unavailable to whoever saw it, route removed.
    /// `owned`: the session still held its resource in the router.
    /// `silent`: it continues on another node (XEP-0198 resumption), so
    /// nobody is told it went unavailable.
    Detach {
        session: u64,
        owned: bool,
        silent: bool,
    },
}

/// A user actor's address, shared (cloning an actix address allocates).
pub type UserHandle = Arc<actix::Recipient<ToUser>>;

/// A user with sessions on this node: its actor and a view of its bound
/// resources for delivery to read without asking the actor.
struct UserEntry {
    /// Tells this user's actor from a later one for the same user.
    actor_id: u64,
    actor: UserHandle,
    resources: Vec<Resource>,
    /// The user's blocklist items that can match what services send, read by
    /// each of its sessions here as stanzas reach it.
    blocks: Arc<UserBlocks>,
    /// The user's archiving preferences, read when first needed.
    archive_prefs: Arc<crate::modules::mam::PrefsCache>,
}

/// Where an address points, seen from this server: the one distinction
/// between what is served here and another domain (where federation will
/// route). `session::im::destination` computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination<'a> {
    /// A domain this server hosts (or a resource of it).
    Server {
        domain: &'a str,
        resource: Option<&'a str>,
    },
    /// An account at a hosted domain, or one of its resources.
    Account {
        bare: &'a str,
        resource: Option<&'a str>,
        exists: bool,
    },
    /// Another domain's server (`has_node: false`) or one of its accounts:
    /// no federation yet.
    Remote { domain: &'a str, has_node: bool },
    /// A service hosted on a subdomain of a served domain (`domain`), or
    /// an entity of it (`node`: a MUC room) and its resource (an occupant).
    Service {
        domain: &'a str,
        kind: crate::services::ServiceKind,
        node: Option<&'a str>,
        resource: Option<&'a str>,
    },
}

/// Where a bound resource is.
#[derive(Clone, Debug)]
pub enum At {
    /// On this node: its session actor.
    Here(SessionHandle),
    /// On another node: that node, and the session's id there (so a stanza
    /// never reaches a newer session of the same full JID by mistake).
    Node { node: u64, session: u64 },
}

/// A bound resource of a user, on this node or another, with what RFC 6121
/// delivery needs to know about it.
#[derive(Clone, Debug)]
pub struct Bound {
    pub resource: Arc<str>,
    /// Sent initial presence and not yet unavailable.
    pub available: bool,
    pub priority: i32,
    /// Requested the roster (RFC 6121 §2.1.6).
    pub interested: bool,
    /// Requested the blocklist (XEP-0191 §3.3).
    pub blocklist: bool,
    /// Enabled message carbons (XEP-0280).
    pub carbons: bool,
    pub at: At,
}

/// A bound session of a user of some domain, wherever it is
/// ([`Router::sessions_of_domain`]).
#[derive(Clone, Debug)]
pub struct DomainSession {
    pub bare: String,
    pub resource: Arc<str>,
    /// Sent initial presence and not yet unavailable.
    pub available: bool,
    /// Its last available presence.
    pub presence: Option<Element>,
    pub at: At,
}

/// The sessions of this node by bare JID, and the way to those of others.
pub struct Router {
    users: DashMap<String, UserEntry>,
    store: Store,
}

impl Router {
    pub fn new(store: Store) -> Self {
        Router {
            users: DashMap::new(),
            store,
        }
    }

    /// Every bound resource of `bare` in the cluster: this node's from its
    /// own map, the others' from this node's replica of the routing table.
    pub fn bound(&self, bare: &str) -> Vec<Bound> {
        let mut out: Vec<Bound> = self.with_resources(bare, |rs| {
            rs.iter()
                .map(|r| Bound {
                    resource: r.resource.clone(),
                    available: r.available,
                    priority: r.priority,
                    interested: r.interested,
                    blocklist: r.blocklist,
                    carbons: r.carbons,
                    at: At::Here(r.handle.clone()),
                })
                .collect()
        });
        out.extend(table::remote(&self.store, bare).into_iter().map(|r| Bound {
            resource: r.resource.into(),
            available: r.info.available,
            priority: r.info.priority,
            interested: r.info.interested,
            blocklist: r.info.blocklist,
            carbons: r.info.carbons,
            at: At::Node {
                node: r.node,
                session: r.session,
            },
        }));
        out
    }

    /// As [`Router::bound`]; when nothing is bound, first makes sure this
    /// replica of the registry is not behind (a login on another node may be
    /// committed but not yet applied here, or a node may still be writing
    /// its sessions into a new registry epoch), so a user is never taken
    /// for offline by a lagging replica.
    pub async fn bound_confirmed(&self, bare: &str) -> Vec<Bound> {
        let found = self.bound(bare);
        if !found.is_empty() || !self.store.has_peers() {
            return found;
        }
        match self.store.registry_barrier().await {
            Ok(()) => self.bound(bare),
            Err(_) => found,
        }
    }

    /// `bare/resource`, wherever it is bound.
    pub fn find(&self, bare: &str, resource: &str) -> Option<At> {
        if let Some(h) = self.handle(bare, resource) {
            return Some(At::Here(h));
        }
        table::remote_one(&self.store, bare, resource).map(|r| At::Node {
            node: r.node,
            session: r.session,
        })
    }

    /// The last available presence of each available resource of `bare`,
    /// here and on other nodes, except the session `except` of this node.
    pub fn presences(&self, bare: &str, except: u64) -> Vec<Element> {
        let mut out: Vec<Element> = self.with_resources(bare, |rs| {
            rs.iter()
                .filter(|r| r.available && r.handle.id != except)
                .filter_map(|r| r.presence.clone())
                .collect()
        });
        out.extend(
            table::remote(&self.store, bare)
                .into_iter()
                .filter(|r| r.info.available)
                .filter_map(|r| {
                    r.info
                        .presence
                        .as_deref()
                        .and_then(crate::stanza::parse_serialised)
                }),
        );
        out
    }

    /// Queues a serialised stanza for `bare/resource` at `at` without
    /// waiting: false when the session has ended or its mailbox is full
    /// (here), or the queue to its node is full or the node is gone.
    pub fn send(&self, bare: &str, resource: &str, at: &At, xml: &Arc<str>) -> bool {
        match at {
            At::Here(h) => h.send_shared(xml),
            At::Node { node, session } => self
                .store
                .deliver(*node, table::envelope(bare, resource, *session, xml))
                .is_ok(),
        }
    }

    /// Sends a serialised stanza and, for another node, waits for its
    /// answer: true only when it reached the session's mailbox.
    pub async fn send_acked(&self, bare: &str, resource: &str, at: &At, xml: &Arc<str>) -> bool {
        match at {
            At::Here(h) => h.send_shared(xml),
            At::Node { node, session } => matches!(
                self.store
                    .deliver_acked(*node, table::envelope(bare, resource, *session, xml))
                    .await,
                Ok(DeliveryResult::Delivered)
            ),
        }
    }

    /// Binds `resource` for `bare`, starting the user's actor with
    /// `start_user` (which returns the actor's id and address) if the user
    /// had no session here, and (again) its blocklist items that can match
    /// service traffic with `load_blocks` (under the entry's lock, so a change
    /// that [`Router::reload_blocks`] applies meanwhile is never lost).
    /// An existing session
    /// with the same resource is returned so the caller can close it with
    /// `<conflict/>` (RFC 6120 §7.7.2.2: the older session is replaced).
    pub fn bind(
        &self,
        bare: &str,
        resource: &str,
        handle: SessionHandle,
        start_user: impl FnOnce() -> (u64, actix::Recipient<ToUser>),
        load_blocks: impl FnOnce() -> Vec<String>,
    ) -> (Option<SessionHandle>, UserHandle, Arc<UserBlocks>) {
        let mut entry = self.users.entry(bare.to_owned()).or_insert_with(|| {
            let (actor_id, actor) = start_user();
            UserEntry {
                actor_id,
                actor: Arc::new(actor),
                resources: Vec::new(),
                blocks: Arc::default(),
                archive_prefs: Arc::default(),
            }
        });
        // Read again at every bind: a session that binds always starts
        // with this replica's list, whatever an earlier reload missed.
        entry.blocks.set(load_blocks());
        let list = &mut entry.resources;
        let old = list
            .iter()
            .position(|r| &*r.resource == resource)
            .map(|i| list.remove(i).handle);
        list.push(Resource {
            resource: resource.into(),
            handle,
            available: false,
            priority: 0,
            presence: None,
            interested: false,
            blocklist: false,
            carbons: false,
        });
        metrics::gauge!("starling_c2s_sessions").increment(1.0);
        if old.is_some() {
            metrics::gauge!("starling_c2s_sessions").decrement(1.0);
        }
        (old, entry.actor.clone(), entry.blocks.clone())
    }

    /// Replaces the service-traffic blocklist items of `bare`'s sessions here
    /// with what `load` reads (under the entry's lock: a later reload
    /// always wins); nothing without a session of `bare` here.
    pub fn reload_blocks(&self, bare: &str, load: impl FnOnce() -> Vec<String>) {
        if let Some(entry) = self.users.get_mut(bare) {
            entry.blocks.set(load());
        }
    }

    /// Removes the session `id`; returns whether it was still bound. The
    /// user's entry stays until its actor lets it go ([`Router::release`]).
    pub fn unbind(&self, bare: &str, id: u64) -> bool {
        let mut removed = false;
        if let Some(mut entry) = self.users.get_mut(bare)
            && let Some(i) = entry.resources.iter().position(|r| r.handle.id == id)
        {
            entry.resources.remove(i);
            removed = true;
        }
        if removed {
            metrics::gauge!("starling_c2s_sessions").decrement(1.0);
        }
        removed
    }

    /// Points session `handle.id` of `bare` at a new handle (the session is
    /// resumed on another connection, XEP-0198): what is sent to it from
    /// now on goes there. False when no such session is bound.
    pub fn replace_handle(&self, bare: &str, handle: SessionHandle) -> bool {
        if let Some(mut entry) = self.users.get_mut(bare)
            && let Some(r) = entry
                .resources
                .iter_mut()
                .find(|r| r.handle.id == handle.id)
        {
            r.handle = handle;
            return true;
        }
        false
    }

    /// Forgets `bare`'s entry if it has no session left and `actor_id`
    /// is still its actor; the user actor calls this when it has finished
    /// with its last session, so a login meanwhile finds the same actor.
    pub fn release(&self, bare: &str, actor_id: u64) -> bool {
        self.users
            .remove_if(bare, |_, e| {
                e.resources.is_empty() && e.actor_id == actor_id
            })
            .is_some()
    }

    /// The service-traffic blocklist items of `bare`'s sessions here, if the
    /// user has a session here.
    pub fn blocks(&self, bare: &str) -> Option<Arc<UserBlocks>> {
        self.users.get(bare).map(|e| e.blocks.clone())
    }

    /// The archiving preferences kept for `bare`, if the user has a
    /// session here.
    pub fn archive_prefs(&self, bare: &str) -> Option<Arc<crate::modules::mam::PrefsCache>> {
        self.users.get(bare).map(|e| e.archive_prefs.clone())
    }

    /// The actor of `bare`, if the user has a session here.
    pub fn user(&self, bare: &str) -> Option<UserHandle> {
        self.users.get(bare).map(|e| e.actor.clone())
    }

    /// Whether a session of `bare` on another node matches `keep` (its
    /// route's info); never with no peers.
    pub fn any_remote(&self, bare: &str, keep: impl Fn(&table::RouteInfo) -> bool) -> bool {
        table::remote(&self.store, bare)
            .iter()
            .any(|r| keep(&r.info))
    }

    /// Whether `bare` has a session on this node (so its account exists:
    /// deleting one closes its sessions everywhere).
    pub fn has_user(&self, bare: &str) -> bool {
        self.users.contains_key(bare)
    }

    /// Changes one resource's state under the map's lock (the user's actor
    /// does, for its own sessions).
    pub fn update(&self, bare: &str, id: u64, f: impl FnOnce(&mut Resource)) {
        if let Some(mut entry) = self.users.get_mut(bare)
            && let Some(r) = entry.resources.iter_mut().find(|r| r.handle.id == id)
        {
            f(r);
        }
    }

    /// A snapshot of the user's resources on this node.
    pub fn resources(&self, bare: &str) -> Vec<Resource> {
        self.users
            .get(bare)
            .map(|e| e.resources.clone())
            .unwrap_or_default()
    }

    /// Runs `f` over the user's resources without copying them.
    pub fn with_resources<T>(&self, bare: &str, f: impl FnOnce(&[Resource]) -> T) -> T {
        match self.users.get(bare) {
            Some(e) => f(&e.resources),
            None => f(&[]),
        }
    }

    pub fn handle(&self, bare: &str, resource: &str) -> Option<SessionHandle> {
        self.with_resources(bare, |rs| {
            rs.iter()
                .find(|r| &*r.resource == resource)
                .map(|r| r.handle.clone())
        })
    }

    /// Ends every session of `bare` with `condition`.
    pub fn close_all(&self, bare: &str, condition: StreamCondition) {
        for r in self.resources(bare) {
            r.handle.close(condition);
        }
    }

    /// Every bound session of users of `domain` in the cluster: this
    /// node's from its map, the others' from this node's replica of the
    /// routing table (a session there shows once it has published its
    /// route: from its first presence or roster request on). It walks
    /// both whole: for administration (XEP-0133), never a stanza's path.
    pub fn sessions_of_domain(&self, domain: &str) -> Vec<DomainSession> {
        let in_domain = |bare: &str| bare.rsplit_once('@').is_some_and(|(_, d)| d == domain);
        let mut out = Vec::new();
        for e in self.users.iter().filter(|e| in_domain(e.key())) {
            out.extend(e.value().resources.iter().map(|r| DomainSession {
                bare: e.key().clone(),
                resource: r.resource.clone(),
                available: r.available,
                presence: r.presence.clone(),
                at: At::Here(r.handle.clone()),
            }));
        }
        for (bare, r) in table::remote_where(&self.store, in_domain) {
            out.push(DomainSession {
                bare,
                resource: r.resource.into(),
                available: r.info.available,
                presence: r
                    .info
                    .presence
                    .as_deref()
                    .and_then(crate::stanza::parse_serialised),
                at: At::Node {
                    node: r.node,
                    session: r.session,
                },
            });
        }
        out
    }

    /// Bare JIDs with sessions on this node.
    pub fn users(&self) -> Vec<String> {
        self.users.iter().map(|e| e.key().clone()).collect()
    }

    /// Number of bound sessions on this node.
    pub fn session_count(&self) -> usize {
        self.users.iter().map(|e| e.value().resources.len()).sum()
    }
}
