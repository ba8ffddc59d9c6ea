//! XEP-0191 Blocking Command: each account's list of blocked JIDs, kept in
//! the replicated store (`user_blocklist`), and the one rule every path
//! asks before a stanza passes between a user and someone else
//! ([`blocks`]).
//!
//! Where the rule is enforced (whichever node each party is on: the
//! sender's node decides, from its replica of the store):
//! - messages: the `MessageOut` hook (the user's client sends to a JID it
//!   blocks: `<not-acceptable/>` with `<blocked/>`) and the `MessageIn`
//!   hook (from a JID the recipient blocks: `<service-unavailable/>`,
//!   before delivery or offline storage);
//! - presence: the `PresenceOut` hook drops what the user's client directs
//!   at a JID it blocks; `session::im` asks [`either_blocks`] where the
//!   server sends presence between two parties on its own (broadcast to
//!   contacts, probes and their answers, directed presence, subscription
//!   stanzas, stored subscription requests);
//! - IQs: `session::c2s` asks [`refuse_iq`] for every IQ to another
//!   account, full or bare JID (so an IQ the server answers on an
//!   account's behalf, vCard or last activity, is refused too).
//!
//! Pushes go to each resource that requested the blocklist, wherever it
//! is bound: the request is recorded in the session's route
//! (`RouteInfo::blocklist`), as roster interest is, so another node knows
//! it without asking. Pushing to every available or roster-interested
//! resource instead would miss a client that asked for the blocklist
//! before (or without) sending presence, which XEP-0191 §3.3 requires to
//! get them, and send IQs to clients that never asked.

use super::{Event, Flow, Hook, HookCtx, IqCtx, IqHandler, IqReply, IqResult, Module, own_only};
use crate::router::{Destination, ToUser};
use crate::server::Server;
use crate::session::im;
use crate::stanza::{
    Condition, MessageType, NS_CLIENT, StanzaError, error_reply, iq_result, split,
};
use crate::storage::BLOCKLIST;
use crate::xml::scan::{raw_attr, start_tag_attrs};
use crate::xml::{Element, Node};
use futures::FutureExt;
use starling_cluster::{DeliveryResult, Envelope};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

pub const NS_BLOCKING: &str = "urn:xmpp:blocking";
pub const NS_BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";

/// Most items one list holds (a bound on the per-user records and on the
/// work a block or unblock does).
pub const MAX_ITEMS: usize = 1000;

/// Blocking runs before every other hook: a stanza it refuses is neither
/// carbon-copied, archived nor delivered.
const PRIORITY: i32 = 1000;

pub static MODULE: Module = Module {
    name: "blocking",
    spec: "XEP-0191",
    features: &[NS_BLOCKING],
    iq: &[
        IqHandler {
            ns: NS_BLOCKING,
            name: "blocklist",
            get: Some(get),
            set: None,
            no_account: false,
        },
        IqHandler {
            ns: NS_BLOCKING,
            name: "block",
            get: None,
            set: Some(block),
            no_account: false,
        },
        IqHandler {
            ns: NS_BLOCKING,
            name: "unblock",
            get: None,
            set: Some(unblock),
            no_account: false,
        },
    ],
    hooks: &[
        Hook {
            event: Event::MessageOut,
            priority: PRIORITY,
            handler: message_out,
        },
        Hook {
            event: Event::MessageIn,
            priority: PRIORITY,
            handler: message_in,
        },
        Hook {
            event: Event::PresenceOut,
            priority: PRIORITY,
            handler: presence_out,
        },
    ],
    spaces: &[BLOCKLIST],
    ..Module::EMPTY
};

// ------------------------------------------------------------ the rule

/// The forms of a JID an item matches it by, in XEP-0016 §2.1's order
/// (XEP-0191 §6 defers to it): `user@domain/resource`,
/// `user@domain` (any resource), `domain/resource`, `domain` (the domain
/// itself and every JID at it).
fn forms(jid: &str) -> [Option<Cow<'_, str>>; 4] {
    let (bare, resource) = split(jid);
    let (node, domain) = match bare.split_once('@') {
        Some((_, domain)) => (true, domain),
        None => (false, bare),
    };
    [
        resource.map(|_| Cow::Borrowed(jid)),
        node.then_some(Cow::Borrowed(bare)),
        resource
            .filter(|_| node)
            .map(|r| Cow::Owned(format!("{domain}/{r}"))),
        Some(Cow::Borrowed(domain)),
    ]
}

/// Whether the sorted list `items` blocks `jid` (by [`forms`], without
/// allocating: sessions ask it for every stanza a service sends them).
fn list_matches(items: &[String], jid: &str) -> bool {
    let has = |f: &str| items.binary_search_by(|i| i.as_str().cmp(f)).is_ok();
    let (bare, resource) = split(jid);
    let (node, domain) = match bare.split_once('@') {
        Some((_, domain)) => (true, domain),
        None => (false, bare),
    };
    if resource.is_some() && has(jid) || node && has(bare) {
        return true;
    }
    if let Some(r) = resource.filter(|_| node) {
        // `domain/resource`, compared in place.
        let joined = || domain.bytes().chain(std::iter::once(b'/')).chain(r.bytes());
        if items.binary_search_by(|i| i.bytes().cmp(joined())).is_ok() {
            return true;
        }
    }
    has(domain)
}

/// Whether the local account `user` blocks `other` (a normalised full or
/// bare JID, or a domain). The user's own resources are never blocked.
/// Read from this node's replica: for a user with a session here, from
/// the list its router entry keeps while the blocklist space does not
/// change ([`UserBlocks::cached`]: no store read, no allocation); for
/// others, a user who blocks nobody costs one lookup of an absent key. A
/// store failure lets the stanza pass (and is logged).
pub fn blocks(server: &Server, user: &str, other: &str) -> bool {
    if split(other).0 == user {
        return false;
    }
    let storage = &server.storage;
    if let Some(entry) = server.router.blocks(user) {
        // The counter before the list: a change applied in between only
        // makes the next call read again.
        let version = storage.blocklist_version();
        if let Some(hit) = entry.cached(version, other) {
            return hit;
        }
        match read_list(server, user) {
            Ok(items) => {
                let hit = list_matches(&items, other);
                entry.cache(version, items);
                return hit;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read a blocklist; not blocking");
                return false;
            }
        }
    }
    match storage.blocks_anyone(user) {
        Ok(false) => return false,
        Ok(true) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not read a blocklist; not blocking");
            return false;
        }
    }
    forms(other)
        .iter()
        .flatten()
        .any(|f| storage.blocklist_has(user, f).unwrap_or(false))
}

/// `bare`'s whole list from this node's replica, sorted (one lookup of an
/// absent key for most users).
fn read_list(server: &Server, bare: &str) -> Result<Vec<String>, starling_cluster::StoreError> {
    if !server.storage.blocks_anyone(bare)? {
        return Ok(Vec::new());
    }
    server.storage.blocklist(bare)
}

/// Whether a stanza from `from` to `to` (JIDs of any form) must not pass
/// because either party blocks the other: the sender's list refuses what
/// it sends, the recipient's what it gets.
pub fn either_blocks(server: &Server, from: &str, to: &str) -> bool {
    blocks(server, split(from).0, to) || blocks(server, split(to).0, from)
}

// ------------------------------------------------------------ what services send

/// One user's blocklist as this node's sessions of the user need it, in
/// the router's entry of a user with a session here (shared by those
/// sessions).
///
/// The items that can match what a hosted service sends (a MUC room, an
/// occupant, a pubsub service, the service domain itself), for the
/// sessions to drop it as it reaches them (§3.3: nothing from a blocked
/// JID is delivered). Rooms deliver straight to sessions, past the
/// routing hooks, so the check is where every such stanza passes: the
/// session actor, before its outbox. Loaded with the entry and replaced
/// after every change of the list, on this node and, by an envelope
/// ([`KIND_BLOCKLIST`]), on every other live node. A session whose user
/// blocks nothing at a hosted service reads one atomic flag per stanza:
/// no store read, no parse, no lock.
///
/// And the whole list for [`blocks`], which every message, presence and
/// IQ between the user and another party asks: read when first needed
/// and kept while the change counter of the blocklist space on this
/// replica stays where it was when it was read. A change of any user's
/// list makes it read again; one that no envelope announced (lost on the
/// way) is seen all the same.
#[derive(Debug, Default)]
pub struct UserBlocks {
    any: AtomicBool,
    /// Sorted, as the store keeps the list.
    items: RwLock<Arc<[String]>>,
    /// The whole list and the space's counter it was read at.
    all: RwLock<Option<(u64, Vec<String>)>>,
}

impl UserBlocks {
    pub fn new(items: Vec<String>) -> Self {
        let f = UserBlocks::default();
        f.set(items);
        f
    }

    /// Whether the cached list blocks `jid`, if it was read at `version`.
    pub fn cached(&self, version: u64, jid: &str) -> Option<bool> {
        match &*self.all.read().unwrap_or_else(|e| e.into_inner()) {
            Some((v, items)) if *v == version => {
                Some(!items.is_empty() && list_matches(items, jid))
            }
            _ => None,
        }
    }

    /// Keeps `items` (sorted), read at `version`.
    pub fn cache(&self, version: u64, items: Vec<String>) {
        *self.all.write().unwrap_or_else(|e| e.into_inner()) = Some((version, items));
    }

    /// Replaces the items (sorted).
    pub fn set(&self, items: Vec<String>) {
        let any = !items.is_empty();
        *self.items.write().unwrap_or_else(|e| e.into_inner()) = items.into();
        self.any.store(any, Ordering::Release);
    }

    /// Whether the serialised stanza `xml` comes from a JID an item blocks
    /// (its `from`, read from its start tag only).
    #[inline]
    pub fn drops(&self, xml: &str) -> bool {
        self.any.load(Ordering::Acquire) && self.drops_slow(xml)
    }

    #[cold]
    fn drops_slow(&self, xml: &str) -> bool {
        let Some(tag) = start_tag_attrs(xml) else {
            return false;
        };
        let Some(from) = raw_attr(tag, "from") else {
            return false;
        };
        let from = unescape(from);
        if !list_matches(&self.items.read().unwrap_or_else(|e| e.into_inner()), &from) {
            return false;
        }
        // The server's own answer to what the user sent to the blocked JID
        // (`message_out`: from that JID, with `<blocked/>`) is for the user.
        if raw_attr(tag, "type") == Some("error") && xml.contains(NS_BLOCKING_ERRORS) {
            return false;
        }
        refused("service");
        true
    }
}

/// An attribute value as written by `xml::escape_into`, unescaped (a
/// JID rarely holds anything escaped: then it is borrowed).
fn unescape(v: &str) -> Cow<'_, str> {
    if !v.contains('&') {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else {
            break;
        };
        let entity = &rest[1..end];
        let c = match entity {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Whether an item (any of the four forms) is at a hosted service (MUC,
/// pubsub, upload): only those can match what a service sends straight
/// to sessions (a room's fan-out, a pubsub notification to a full JID).
fn at_service(server: &Server, item: &str) -> bool {
    let bare = split(item).0;
    let domain = bare.split_once('@').map_or(bare, |(_, d)| d);
    server.services.get(domain).is_some()
}

/// `bare`'s items at hosted services, from this node's replica (for
/// most users one lookup of an absent key). A store failure leaves none
/// (and is logged), as [`blocks`] lets a stanza pass.
pub fn service_items(server: &Server, bare: &str) -> Vec<String> {
    let read = || -> Result<Vec<String>, starling_cluster::StoreError> {
        if !server.storage.blocks_anyone(bare)? {
            return Ok(Vec::new());
        }
        let mut items = server.storage.blocklist(bare)?;
        items.retain(|i| at_service(server, i));
        Ok(items)
    };
    read().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not read a blocklist; not filtering service traffic");
        Vec::new()
    })
}

/// Envelope kind: `to` is a bare JID whose blocklist changed; the node
/// reloads the [`UserBlocks`] of its sessions of that user. The
/// envelope carries the sender's applied index, so the receiver's replica
/// has the change by the time it reads.
pub const KIND_BLOCKLIST: u32 = 3;

/// After a change of `bare`'s list: this node's sessions of the user
/// filter by the new list at once (before the change is answered), and
/// every other live node is told to reload (each one that has a session
/// of the user does). Every node, not only those the routing table names:
/// a session bound a moment ago may not have written its route yet, and a
/// change is rare enough for a few small envelopes.
fn refresh_service_blocks(server: &Server, bare: &str) {
    server
        .router
        .reload_blocks(bare, || service_items(server, bare));
    let store = &server.storage.store;
    if !store.has_peers() {
        return;
    }
    let me = store.node_id();
    for node in store.live_nodes().into_iter().filter(|n| *n != me) {
        let env = Envelope {
            kind: KIND_BLOCKLIST,
            to: bare.to_owned(),
            ..Envelope::default()
        };
        if let Err(e) = server.storage.store.deliver(node, env) {
            tracing::warn!(node, error = %e, "could not tell a node of a blocklist change");
        }
    }
}

/// A [`KIND_BLOCKLIST`] envelope from another node.
pub fn from_node(server: &Server, env: &Envelope) -> DeliveryResult {
    let bare = split(&env.to).0;
    if !server.router.has_user(bare) {
        return DeliveryResult::NoSession;
    }
    server
        .router
        .reload_blocks(bare, || service_items(server, bare));
    DeliveryResult::Delivered
}

/// What becomes of an IQ that [`refuse_iq`] stops.
pub enum Refusal {
    /// A result or error: dropped without a word.
    Drop,
    /// A request: this error goes back to the user's session.
    Reply(Element),
}

/// Stops an IQ the user's session sends to another account or its
/// resource, or to a hosted service or its entity (a MUC room or
/// occupant) (`dest`), when either blocks the other (XEP-0191 §3.3): to a
/// JID the user blocks, `<not-acceptable/>` with `<blocked/>`; from a JID
/// the addressee blocks, `<service-unavailable/>` (as though the account
/// were offline). Results and errors are dropped either way.
pub fn refuse_iq(
    server: &Server,
    user: &str,
    iq: &Element,
    dest: Option<Destination<'_>>,
) -> Option<Refusal> {
    let to = iq.get_attr("to")?;
    let addressee = match dest? {
        Destination::Account { bare, exists, .. } if bare != user => exists.then_some(bare),
        // A hosted service (a room, an occupant): only the user's own
        // list applies (a room keeps none).
        Destination::Remote { has_node: true, .. } | Destination::Service { .. } => None,
        _ => return None,
    };
    let request = matches!(iq.get_attr("type"), Some("get" | "set"));
    let error = if blocks(server, user, to) {
        blocked_error(iq)
    } else if let (Some(bare), Some(from)) = (addressee, iq.get_attr("from"))
        && blocks(server, bare, from)
    {
        error_reply(iq, &Condition::ServiceUnavailable.into())
    } else {
        return None;
    };
    refused("iq");
    Some(match error {
        Some(e) if request => Refusal::Reply(e),
        _ => Refusal::Drop,
    })
}

/// The error for a stanza the user sent to a JID it blocks (§3.3, as in
/// its example): `<error type='cancel'>` with `<not-acceptable/>` and
/// `<blocked xmlns='urn:xmpp:blocking:errors'/>`.
fn blocked_error(stanza: &Element) -> Option<Element> {
    let mut reply = error_reply(stanza, &Condition::NotAcceptable.into())?;
    if let Some(error) = reply
        .elements_mut()
        .filter(|e| e.is("error", NS_CLIENT))
        .last()
    {
        error.set_attr("type", "cancel");
        let blocked = Element::new("blocked", NS_BLOCKING_ERRORS);
        error.children.push(Node::Element(blocked));
    }
    Some(reply)
}

fn refused(kind: &'static str) {
    metrics::counter!("starling_blocking_refused_total", "kind" => kind).increment(1);
}

// ------------------------------------------------------------ hooks

/// A message the user's client sends to a JID it blocks goes no further;
/// the client learns why (an error message is dropped quietly).
fn message_out(ctx: &HookCtx<'_>, el: &mut Element) -> Flow {
    let Some(to) = el.get_attr("to") else {
        return Flow::Pass;
    };
    if !blocks(ctx.server, ctx.user, to) {
        return Flow::Pass;
    }
    refused("message");
    if let Some(reply) = blocked_error(el)
        && let Some(sender) = el.get_attr("from")
    {
        let _ = im::deliver_to_full(ctx.server, sender, reply);
    }
    Flow::Handled
}

/// A message from a JID the recipient blocks is neither delivered nor
/// stored offline; its sender gets `<service-unavailable/>`, as from an
/// account with nobody online (error, groupchat and headline messages are
/// dropped: none of them is answered with an error).
fn message_in(ctx: &HookCtx<'_>, el: &mut Element) -> Flow {
    let Some(from) = el.get_attr("from") else {
        return Flow::Pass;
    };
    if !blocks(ctx.server, ctx.user, from) {
        return Flow::Pass;
    }
    refused("message");
    match MessageType::of(el) {
        MessageType::Error | MessageType::Groupchat | MessageType::Headline => {}
        _ => im::bounce(ctx.server, el, Condition::ServiceUnavailable),
    }
    Flow::Handled
}

/// Presence the user's client addresses to a JID it blocks (directed,
/// subscription stanzas, probes) is dropped without an error.
fn presence_out(ctx: &HookCtx<'_>, el: &mut Element) -> Flow {
    match el.get_attr("to") {
        Some(to) if blocks(ctx.server, ctx.user, to) => {
            refused("presence");
            Flow::Handled
        }
        _ => Flow::Pass,
    }
}

// ------------------------------------------------------------ the IQs

/// §3.2: the list; from now on the session gets the pushes.
fn get<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        own_only(ctx)?;
        let server = ctx.server;
        let bare = ctx.origin.bare;
        let id = ctx.origin.session_id;
        let newly = server.router.with_resources(bare, |rs| {
            rs.iter().any(|r| r.handle.id == id && !r.blocklist)
        });
        if newly && let Some(user) = server.router.user(bare) {
            // Recorded in the session's route too, so pushes reach it
            // from any node.
            user.send(ToUser::BlocklistRequested { session: id })
                .await
                .map_err(|_| StanzaError::from(Condition::InternalServerError))??;
        }
        let mut list = Element::new("blocklist", NS_BLOCKING);
        for jid in server.storage.blocklist(bare)? {
            list = list.child(item(&jid));
        }
        Ok(list.into())
    }
    .boxed()
}

/// §3.3: one or more JIDs to block.
fn block<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        own_only(ctx)?;
        let jids = items(ctx.payload)?;
        if jids.is_empty() {
            return Err(StanzaError::with_text(
                Condition::BadRequest,
                "no item to block",
            ));
        }
        change(ctx, Change::Block(jids)).await
    }
    .boxed()
}

/// §3.4, §3.5: some JIDs to unblock, or (no item) all of them.
fn unblock<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        own_only(ctx)?;
        let jids = items(ctx.payload)?;
        let change_ = if jids.is_empty() {
            Change::UnblockAll
        } else {
            Change::Unblock(jids)
        };
        change(ctx, change_).await
    }
    .boxed()
}

fn item(jid: &str) -> Element {
    Element::new("item", NS_BLOCKING).attr("jid", jid)
}

/// The JIDs of a block or unblock request, normalised, sorted and without
/// duplicates. An item without a JID is `<bad-request/>`, an invalid JID
/// `<jid-malformed/>`: the whole request is refused, nothing applied.
fn items(payload: &Element) -> Result<Vec<String>, StanzaError> {
    let mut jids = Vec::new();
    for i in payload.elements().filter(|e| e.is("item", NS_BLOCKING)) {
        let raw = i.get_attr("jid").ok_or_else(|| {
            StanzaError::with_text(Condition::BadRequest, "an item without a jid")
        })?;
        let jid = jid::Jid::new(raw).map_err(|_| Condition::JidMalformed)?;
        jids.push(jid.to_string());
        if jids.len() > MAX_ITEMS {
            return Err(too_many());
        }
    }
    jids.sort_unstable();
    jids.dedup();
    Ok(jids)
}

/// A list past [`MAX_ITEMS`]: a local policy (RFC 6120 §8.3.3.12).
fn too_many() -> StanzaError {
    StanzaError::with_text(
        Condition::PolicyViolation,
        format!("a blocklist holds at most {MAX_ITEMS} items"),
    )
}

enum Change {
    Block(Vec<String>),
    Unblock(Vec<String>),
    UnblockAll,
}

/// Applies a change to the user's list (compare-and-set: a change through
/// another node meanwhile is never lost), answers, pushes it to every
/// resource that requested the list, and tells the contacts it concerns.
async fn change(ctx: &IqCtx<'_>, change: Change) -> IqResult {
    let server = ctx.server;
    let bare = ctx.origin.bare;
    let ((old, new), _) = server
        .storage
        .update_user(bare, |txn| {
            let old = txn.blocklist()?;
            let mut new = old.clone();
            match &change {
                Change::Block(jids) => {
                    new.extend(jids.iter().cloned());
                    new.sort_unstable();
                    new.dedup();
                    if new.len() > MAX_ITEMS {
                        return Err(too_many().into());
                    }
                }
                Change::Unblock(jids) => new.retain(|j| jids.binary_search(j).is_err()),
                Change::UnblockAll => new.clear(),
            }
            txn.save_blocklist(&old, &new);
            Ok((old, new))
        })
        .await?;
    // Room traffic stops (or flows again) before the change is answered.
    refresh_service_blocks(server, bare);
    // The result goes out first, then the pushes (the requesting session
    // gets one too if it requested the list).
    let _ = im::deliver_to_full(server, ctx.origin.full, iq_result(ctx.iq, None));
    let pushed = match &change {
        Change::Block(jids) => jids
            .iter()
            .fold(Element::new("block", NS_BLOCKING), |e, j| e.child(item(j))),
        Change::Unblock(jids) => jids
            .iter()
            .fold(Element::new("unblock", NS_BLOCKING), |e, j| {
                e.child(item(j))
            }),
        Change::UnblockAll => Element::new("unblock", NS_BLOCKING),
    };
    push(server, bare, pushed);
    if let Err(e) = tell_contacts(server, bare, &old, &new) {
        tracing::warn!(error = %e, "could not tell contacts of a blocklist change");
    }
    if let Change::Block(jids) = &change
        && let Some(user) = server.router.user(bare)
    {
        // Directed presence is the user actor's state (of this node's
        // sessions only: a session on another node keeps its own).
        user.do_send(ToUser::Blocked {
            items: jids.clone(),
        });
    }
    Ok(IqReply::Sent)
}

/// Unavailable presence from the session `full` to each JID it sent
/// directed presence to (RFC 6121 §4.6) that `items` (sorted) now blocks,
/// resource by resource, and forgets them: the user's actor calls this for
/// its sessions after a block (§3.3). A roster contact is told by
/// [`tell_contacts`] already; a second unavailable changes nothing.
pub fn end_directed(
    server: &Server,
    full: &str,
    directed: &mut std::collections::HashSet<String>,
    items: &[String],
) {
    let unavailable = |to: &str| {
        Element::new("presence", NS_CLIENT)
            .attr("from", full)
            .attr("to", to)
            .attr("type", "unavailable")
    };
    directed.retain(|target| {
        let (target_bare, resource) = split(target);
        if resource.is_some() {
            if !list_matches(items, target) {
                return true;
            }
            let _ = im::deliver_to_full(server, target, unavailable(target));
            return false;
        }
        // To a bare JID: each available resource an item blocks; the JID
        // stays directed to unless the item blocks all of them.
        for r in server.router.bound(target_bare) {
            let to = format!("{target_bare}/{}", r.resource);
            if r.available && list_matches(items, &to) {
                let _ = im::deliver_to_full(server, &to, unavailable(&to));
            }
        }
        !list_matches(items, target)
    });
}

/// Sends `payload` in an IQ set to every resource of `bare` that requested
/// the blocklist, wherever it is bound (§3.3, §3.4, §3.5).
fn push(server: &Server, bare: &str, payload: Element) {
    for b in server
        .router
        .bound(bare)
        .into_iter()
        .filter(|b| b.blocklist)
    {
        let iq = Element::new("iq", NS_CLIENT)
            .attr("type", "set")
            .attr("id", format!("block-{}", &crate::stream::new_id()[..10]))
            .attr("to", format!("{bare}/{}", b.resource))
            .child(payload.clone());
        let xml: std::sync::Arc<str> = iq.to_stream_xml(NS_CLIENT).into();
        server.router.send(bare, &b.resource, &b.at, &xml);
    }
}

/// The presence a list change owes the user's contacts that receive the
/// user's presence (subscription from), resource by resource: one now
/// blocked sees each available resource of the user go unavailable
/// (§3.3); one no longer blocked gets the user's current presence (§3.4).
/// (Directed presence outside the roster is not followed here.)
fn tell_contacts(
    server: &Server,
    bare: &str,
    old: &[String],
    new: &[String],
) -> Result<(), starling_cluster::StoreError> {
    let mine: Vec<Element> = server.router.presences(bare, 0);
    if mine.is_empty() {
        return Ok(());
    }
    for contact in server.storage.roster(bare)? {
        if !contact.subscription.from() {
            continue;
        }
        for r in server.router.bound(&contact.jid) {
            if !r.available {
                continue;
            }
            let full = format!("{}/{}", contact.jid, r.resource);
            let (was, is) = (list_matches(old, &full), list_matches(new, &full));
            if was == is {
                continue;
            }
            for p in &mine {
                let Some(from) = p.get_attr("from") else {
                    continue;
                };
                // Nor does a contact who blocks the user hear of it.
                if blocks(server, &contact.jid, from) {
                    continue;
                }
                let el = if is {
                    Element::new("presence", NS_CLIENT)
                        .attr("from", from)
                        .attr("type", "unavailable")
                } else {
                    p.clone()
                };
                let _ = im::deliver_to_full(server, &full, el.attr("to", full.as_str()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn items_match_by_the_four_forms_of_xep_0016() {
        let full = list(&["romeo@montague.net/orchard"]);
        assert!(list_matches(&full, "romeo@montague.net/orchard"));
        assert!(!list_matches(&full, "romeo@montague.net/garden"));
        assert!(!list_matches(&full, "romeo@montague.net"));

        let bare = list(&["romeo@montague.net"]);
        assert!(list_matches(&bare, "romeo@montague.net/orchard"));
        assert!(list_matches(&bare, "romeo@montague.net"));
        assert!(!list_matches(&bare, "juliet@montague.net"));

        let domain_res = list(&["montague.net/orchard"]);
        assert!(list_matches(&domain_res, "montague.net/orchard"));
        assert!(list_matches(&domain_res, "romeo@montague.net/orchard"));
        assert!(!list_matches(&domain_res, "romeo@montague.net"));
        assert!(!list_matches(&domain_res, "montague.net"));

        let among = list(&[
            "a",
            "montague.net/orc",
            "montague.net/orchard",
            "montague.net/orchard2",
            "montague.net0",
            "z@z",
        ]);
        assert!(list_matches(&among, "romeo@montague.net/orchard"));
        assert!(list_matches(&among, "romeo@montague.net/orc"));
        assert!(!list_matches(&among, "romeo@montague.net/orch"));
        assert!(!list_matches(&among, "romeo@montague.net/orchard3"));

        let domain = list(&["montague.net"]);
        assert!(list_matches(&domain, "montague.net"));
        assert!(list_matches(&domain, "romeo@montague.net/orchard"));
        assert!(list_matches(&domain, "montague.net/orchard"));
        assert!(!list_matches(&domain, "romeo@capulet.com"));
        assert!(!list_matches(&domain, "evil.montague.net"));
    }

    #[test]
    fn room_traffic_is_matched_by_the_from_of_its_start_tag() {
        let f = UserBlocks::default();
        let gc = |from: &str| {
            format!(
                "<message xmlns=\"jabber:client\" to=\"u@x/r\" from=\"{from}\" \
                 type=\"groupchat\" id=\"1\"><body>hi</body></message>"
            )
        };
        assert!(
            !f.drops(&gc("room@muc.x/loud")),
            "no items: nothing dropped"
        );
        f.set(list(&["other@muc.x", "room@muc.x/l'o&d"]));
        assert!(
            f.drops(&gc("room@muc.x/l&apos;o&amp;d")),
            "escaped in the stanza"
        );
        assert!(!f.drops(&gc("room@muc.x/loud")));
        assert!(f.drops(&gc("other@muc.x/anyone")));
        assert!(f.drops(&gc("other@muc.x")));
        assert!(f.drops("<presence from='other@muc.x/n' to='u@x/r'><x xmlns='a'/></presence>"));
        assert!(!f.drops("<presence to='u@x/r'/>"), "no from");
        assert!(
            !f.drops("<message from=\"room@muc.x/a\"><body from=\"other@muc.x\"/></message>"),
            "only the start tag counts"
        );
        let answer = format!(
            "<message xmlns=\"jabber:client\" from=\"other@muc.x\" to=\"u@x/r\" \
             type=\"error\"><error type=\"cancel\"><not-acceptable \
             xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\"/><blocked xmlns=\"{NS_BLOCKING_ERRORS}\"/>\
             </error></message>"
        );
        assert!(
            !f.drops(&answer),
            "the refusal of what the user sent is the user's"
        );
        f.set(Vec::new());
        assert!(!f.drops(&gc("other@muc.x/anyone")));
    }

    #[test]
    fn attribute_values_are_unescaped() {
        assert_eq!(unescape("a@b/c"), "a@b/c");
        assert_eq!(unescape("&lt;&gt;&amp;&quot;&apos;&#xA;&#65;"), "<>&\"'\nA");
        assert_eq!(unescape("a&b;c&"), "a&b;c&");
    }

    #[test]
    fn items_are_normalised_deduplicated_and_checked() {
        let payload = Element::new("block", NS_BLOCKING)
            .child(item("Romeo@Montague.NET/orchard"))
            .child(item("romeo@montague.net/orchard"))
            .child(item("montague.net"));
        assert_eq!(
            items(&payload).unwrap(),
            vec!["montague.net", "romeo@montague.net/orchard"]
        );
        let bad = Element::new("block", NS_BLOCKING).child(item("a@b@c"));
        assert_eq!(items(&bad).unwrap_err().condition, Condition::JidMalformed);
        let no_jid = Element::new("block", NS_BLOCKING).child(Element::new("item", NS_BLOCKING));
        assert_eq!(items(&no_jid).unwrap_err().condition, Condition::BadRequest);
    }

    #[test]
    fn the_blocked_error_carries_its_application_condition() {
        let msg = Element::new("message", NS_CLIENT)
            .attr("from", "juliet@capulet.com/balcony")
            .attr("to", "romeo@montague.net")
            .attr("id", "m1");
        let reply = blocked_error(&msg).unwrap();
        assert_eq!(reply.get_attr("type"), Some("error"));
        assert_eq!(reply.get_attr("to"), Some("juliet@capulet.com/balcony"));
        let error = reply.elements().find(|e| e.is("error", NS_CLIENT)).unwrap();
        assert_eq!(error.get_attr("type"), Some("cancel"));
        assert!(error.elements().any(|e| e.name == "not-acceptable"));
        assert!(
            error
                .elements()
                .any(|e| e.is("blocked", NS_BLOCKING_ERRORS))
        );
    }
}
