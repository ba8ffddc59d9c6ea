//! Instant messaging semantics of RFC 6121 for one user's sessions:
//! message delivery (§8.5), presence broadcast and probes (§4), directed
//! presence, the subscription state machine (§3) and offline storage.
//!
//! Functions here decide *who* gets a stanza and change roster state; they
//! hand stanzas to the router and never touch a socket.

use crate::modules::blocking::{blocks, either_blocks};
use crate::modules::{Event, Flow, HookCtx};
use crate::router::{At, Bound, Destination, Offer};
use crate::routing;
use crate::server::Server;
use crate::stanza::{
    Condition, MessageType, NS_CLIENT, NS_DELAY, NS_ROSTER, PresenceType, StanzaError, error_reply,
};
use crate::storage::{Committed, LastActivity, RosterItem, Subscription};
use crate::xml::Element;
use starling_cluster::StoreError;
use std::collections::HashSet;
use std::sync::Arc;

/// XEP-0334 message processing hints.
const NS_HINTS: &str = "urn:xmpp:hints";

pub use super::Origin;

/// Per-session presence state that must outlive single stanzas.
#[derive(Default)]
pub struct PresenceState {
    /// Sent initial presence and not yet unavailable.
    pub available: bool,
    /// Full or bare JIDs that received directed available presence
    /// (RFC 6121 §4.6): they get our unavailable presence too.
    pub directed: HashSet<String>,
    /// The session is ending: the last-activity record is left here to be
    /// recorded when its route is removed.
    pub ending: bool,
    /// The session's route is in the registry (written at the first of its
    /// initial presence, roster request, first other stanza, or a second
    /// after bind: `routing::publish`).
    pub published: bool,
    pub last_activity: Option<LastActivity>,
    /// Initial presence with a non-negative priority was just sent: the
    /// stored offline messages are owed to this session. Whoever applied
    /// the presence hands them on ([`flush_offline`]) without holding up
    /// anything the session waits for.
    pub flush_offline: bool,
}

pub use crate::stanza::split;

fn domain_of(bare: &str) -> &str {
    bare.rsplit_once('@').map(|(_, d)| d).unwrap_or(bare)
}

/// Where the normalised address `to` points: a domain served here, an
/// account of one (and whether it exists), or another domain.
pub fn destination<'a>(server: &Server, to: &'a str) -> Result<Destination<'a>, StoreError> {
    let (bare, resource) = split(to);
    let domain = bare.rsplit_once('@').map_or(bare, |(_, d)| d);
    if let Some(h) = server.services.get(domain) {
        return Ok(Destination::Service {
            domain,
            kind: h.kind,
            node: bare.rsplit_once('@').map(|(n, _)| n),
            resource,
        });
    }
    Ok(match bare.split_once('@') {
        None if server.is_local(bare) => Destination::Server {
            domain: bare,
            resource,
        },
        None => Destination::Remote {
            domain: bare,
            has_node: false,
        },
        Some((_, domain)) if !server.is_local(domain) => Destination::Remote {
            domain,
            has_node: true,
        },
        Some(_) => Destination::Account {
            bare,
            resource,
            // A user with a session here exists (no store read per stanza).
            exists: server.router.has_user(bare) || server.storage.account_exists(bare)?,
        },
    })
}

/// Sends an error reply for `stanza` to its sender, wherever it is.
pub fn bounce(server: &Server, stanza: &Element, condition: Condition) {
    bounce_with(server, stanza, &StanzaError::new(condition));
}

/// Sends the error reply `err` for `stanza` to its sender.
pub fn bounce_with(server: &Server, stanza: &Element, err: &StanzaError) {
    if let Some(reply) = error_reply(stanza, err)
        && let Some(to) = reply.get_attr("to").map(str::to_owned)
    {
        if stanza.name == "message" {
            crate::modules::carbons::error_received(server, &to, stanza, &reply);
        }
        let _ = deliver_to_full(server, &to, reply);
    }
}

/// Delivers to one full JID, wherever it is bound (without waiting for
/// another node's answer); hands the stanza back when no such session is
/// known.
pub fn deliver_to_full(server: &Server, full: &str, el: Element) -> Result<(), Element> {
    let (bare, Some(res)) = split(full) else {
        return to_component(server, full, el);
    };
    match server.router.find(bare, res) {
        Some(at) => {
            let xml: std::sync::Arc<str> = el.to_stream_xml(NS_CLIENT).into();
            if server.router.send(bare, res, &at, &xml) {
                Ok(())
            } else {
                Err(el)
            }
        }
        None => to_component(server, full, el),
    }
}

/// A stanza for a JID no session has: the component it is at, if any
/// (XEP-0114), gets it; one at another domain goes over federation
/// (looked at only once no session was found, so the path to sessions
/// pays nothing for components or federation).
fn to_component(server: &Server, to: &str, el: Element) -> Result<(), Element> {
    match crate::services::component::domain_of(server, to) {
        Some(domain) if crate::services::component::send(server, domain, &el) => Ok(()),
        None if crate::s2s::is_remote(server, to) => {
            crate::s2s::send(server, el);
            Ok(())
        }
        _ => Err(el),
    }
}

/// Delivers to one full JID and waits until it reached the session's
/// mailbox (another node answers); hands the stanza back otherwise.
pub async fn deliver_to_full_acked(
    server: &Server,
    full: &str,
    el: Element,
) -> Result<(), Element> {
    let (bare, Some(res)) = split(full) else {
        return component_acked(server, full, el).await;
    };
    let Some(at) = server.router.find(bare, res) else {
        return component_acked(server, full, el).await;
    };
    let xml: std::sync::Arc<str> = el.to_stream_xml(NS_CLIENT).into();
    if server.router.send_acked(bare, res, &at, &xml).await {
        Ok(())
    } else {
        Err(el)
    }
}

/// As [`to_component`], waiting for another node's answer (federation
/// answers later, with an error if the stanza cannot be delivered).
async fn component_acked(server: &Server, to: &str, el: Element) -> Result<(), Element> {
    match crate::services::component::domain_of(server, to) {
        Some(domain) => crate::services::component::deliver(server, domain, el).await,
        None if crate::s2s::is_remote(server, to) => {
            crate::s2s::send(server, el);
            Ok(())
        }
        None => Err(el),
    }
}

// ---------------------------------------------------------------- messages

/// A stanza that could not be delivered, with the error its sender gets
/// (boxed: the error path must not make every result large).
pub type Bounce = Box<(StanzaError, Element)>;

fn bounce_of(condition: Condition, el: Element) -> Result<(), Bounce> {
    Err(Box::new((condition.into(), el)))
}

/// Whether a message is routed for the first time, from a client, or
/// again by the server (it was queued for a session that ended). Only the
/// first pass archives it (XEP-0313) and strips client-made stanza-ids: a
/// message routed again carries the stanza-id the archive gave it, which
/// nothing a client sends can claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    First,
    Again,
}

/// Routes a message a client sent, `from` stamped and `to` normalised
/// (RFC 6121 §8.5). On failure the message comes back with the error its
/// sender should get, so the hot path never copies a stanza.
pub async fn route_message(server: &Server, el: Element) -> Result<(), Bounce> {
    route(server, el, Pass::First, None).await
}

/// The archive writes a client's session let go behind the messages it
/// delivered ([`route_message_behind`]); with stream management
/// (XEP-0198) it counts each message handled (its client's `h`) once its
/// write ended.
pub type Behind = std::collections::VecDeque<futures::future::BoxFuture<'static, ()>>;

/// Most archive writes one connection lets go behind its deliveries.
pub const MAX_BEHIND: usize = 1024;

/// Drops the writes of `behind` already ended, and waits for the oldest
/// while more than [`MAX_BEHIND`] are in flight (a sender that never asks
/// for acks).
pub async fn prune_behind(behind: &mut Behind) {
    use futures::FutureExt;
    while let Some(write) = behind.front_mut() {
        if write.now_or_never().is_none() {
            break;
        }
        behind.pop_front();
    }
    while behind.len() > MAX_BEHIND {
        if let Some(write) = behind.pop_front() {
            write.await;
        }
    }
}

/// [`route_message`] for a client's session. A message whose every copy
/// goes to sessions of this node is delivered before its archive write
/// commits; the write goes on `behind`. Those sessions share the sender's
/// fate: if the node dies before the write commits, the sender's client
/// never had the message acknowledged (with stream management, XEP-0198,
/// it sends it again when it resumes; without, nothing acknowledges a
/// message). A message for another node or offline storage is archived
/// first, as always: its recipient outlives this node.
pub async fn route_message_behind(
    server: &Arc<Server>,
    el: Element,
    behind: &mut Behind,
) -> Result<(), Bounce> {
    route(server, el, Pass::First, Some((server, behind))).await
}

/// Where a message's archive write (if any) goes before the message is
/// delivered: committed first, or queued behind it.
struct Archiving<'a> {
    prepared: Option<crate::modules::mam::Prepared>,
    behind: Option<(&'a Arc<Server>, &'a mut Behind)>,
}

impl Archiving<'_> {
    /// Before delivering `el` to sessions that are all on this node
    /// (`here`) or not.
    async fn before(
        &mut self,
        server: &Server,
        el: &mut Element,
        here: bool,
    ) -> Result<(), StoreError> {
        let Some(prepared) = self.prepared.take() else {
            return Ok(());
        };
        match &mut self.behind {
            Some((server, behind))
                if here && !crate::modules::carbons::copied_elsewhere(server, el) =>
            {
                behind.push_back(prepared.queue(server));
                Ok(())
            }
            _ => prepared.commit(server, el).await,
        }
    }
}

async fn route(
    server: &Server,
    el: Element,
    pass: Pass,
    behind: Option<(&Arc<Server>, &mut Behind)>,
) -> Result<(), Bounce> {
    let to = el.get_attr("to").unwrap_or_default().to_owned();
    let mtype = MessageType::of(&el);
    let (bare, resource) = match destination(server, &to) {
        Ok(Destination::Account {
            bare,
            resource,
            exists: true,
        }) => (bare, resource),
        // §8.5.1: no such account.
        Ok(Destination::Account { exists: false, .. }) => {
            return match mtype {
                MessageType::Error | MessageType::Headline | MessageType::Groupchat => Ok(()),
                _ => bounce_of(Condition::ServiceUnavailable, el),
            };
        }
        // To a server: errors end there; hosted ones take no messages
        // (yet), others are not reachable (no federation yet).
        Ok(
            Destination::Server { .. }
            | Destination::Remote {
                has_node: false, ..
            },
        ) if mtype == MessageType::Error => {
            return Ok(());
        }
        Ok(Destination::Service {
            kind: crate::services::ServiceKind::Component,
            domain,
            ..
        }) if pass == Pass::First => {
            // XEP-0313: the sender's copy, as for a message to a user
            // (behind the delivery to a component connected here).
            let mut el = el;
            let prepared = match crate::modules::mam::prepare_sent(server, &mut el) {
                Ok(p) => p,
                Err(e) => return Err(Box::new((e.into(), el))),
            };
            let here = server.services.components.handle(domain).is_some();
            let mut archiving = Archiving { prepared, behind };
            if let Err(e) = archiving.before(server, &mut el, here).await {
                return Err(Box::new((e.into(), el)));
            }
            crate::services::route(server, el).await;
            return Ok(());
        }
        Ok(Destination::Service { .. }) => {
            crate::services::route(server, el).await;
            return Ok(());
        }
        Ok(Destination::Server { .. }) => return bounce_of(Condition::ServiceUnavailable, el),
        Ok(Destination::Remote { .. }) if server.config.s2s.enabled => {
            return route_remote(server, el, pass).await;
        }
        Ok(Destination::Remote { .. }) => return bounce_of(Condition::RemoteServerNotFound, el),
        Err(e) => return Err(Box::new((e.into(), el))),
    };
    crate::hot_counter!("starling_stanzas_routed_total", "kind" => "message").increment(1);
    let mut el = el;
    if server.modules.has_hooks(Event::MessageIn) {
        let ctx = HookCtx {
            server,
            user: bare,
            full: resource.is_some().then_some(to.as_str()),
        };
        if server.modules.run_hooks(Event::MessageIn, &ctx, &mut el) == Flow::Handled {
            return Ok(());
        }
    }
    // Archived (durably) before anyone can receive it, offline storage
    // included (or, for a session counting it, before its sender's client
    // has it acknowledged: `route_message_behind`); it carries its
    // stanza-id from here on.
    let mut archiving = Archiving {
        prepared: None,
        behind,
    };
    if pass == Pass::First {
        match crate::modules::mam::prepare(server, &mut el, bare) {
            Ok(p) => archiving.prepared = p,
            Err(e) => return Err(Box::new((e.into(), el))),
        }
    }
    if let Some(res) = resource {
        // §8.5.3: full JID.
        let el = match server.router.find(bare, res) {
            Some(at) => {
                let here = matches!(at, At::Here(_));
                if let Err(e) = archiving.before(server, &mut el, here).await {
                    return Err(Box::new((e.into(), el)));
                }
                let xml: std::sync::Arc<str> = el.to_stream_xml(NS_CLIENT).into();
                if server.router.send_acked(bare, res, &at, &xml).await {
                    if pass == Pass::First {
                        crate::modules::carbons::received(server, bare, &el, [res]);
                    }
                    return Ok(());
                }
                el
            }
            None => el,
        };
        return match mtype {
            MessageType::Chat => deliver_to_bare(server, bare, mtype, el, pass, archiving).await,
            MessageType::Error | MessageType::Headline => {
                let mut el = el;
                match archiving.before(server, &mut el, false).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(Box::new((e.into(), el))),
                }
            }
            _ => {
                // Refused: nothing archived, and no id claimed.
                let mut el = el;
                if let Some(p) = archiving.prepared.take() {
                    p.discard(&mut el);
                }
                bounce_of(Condition::ServiceUnavailable, el)
            }
        };
    }
    deliver_to_bare(server, bare, mtype, el, pass, archiving).await
}

/// A message to another domain: the sender's archive keeps its copy
/// (durably, before it leaves), then it goes over federation, which
/// bounces it if the remote server cannot be reached.
async fn route_remote(server: &Server, mut el: Element, pass: Pass) -> Result<(), Bounce> {
    crate::hot_counter!("starling_stanzas_routed_total", "kind" => "message").increment(1);
    if pass == Pass::First {
        match crate::modules::mam::prepare_sent(server, &mut el) {
            Ok(Some(p)) => {
                if let Err(e) = p.commit(server, &mut el).await {
                    return Err(Box::new((e.into(), el)));
                }
            }
            Ok(None) => {}
            Err(e) => return Err(Box::new((e.into(), el))),
        }
    }
    crate::s2s::send(server, el);
    Ok(())
}

/// A stanza that was queued for a session that ended before writing it:
/// messages are routed again (to another resource, or offline storage);
/// a request (IQ get or set) gets the `<service-unavailable/>` it would
/// have got a moment later (RFC 6121 §8.5.3.2.3), so its sender is not
/// left waiting; presence to the gone session is dropped.
pub async fn reroute(server: &Server, xml: &str) {
    if xml.starts_with("<message") {
        let Some(mut el) = parse_stored(xml) else {
            return;
        };
        delay_stamp(&mut el, xml);
        if let Err(b) = route(server, el, Pass::Again, None).await {
            bounce_with(server, &b.1, &b.0);
        }
    } else if xml.starts_with("<iq")
        && let Some(el) = parse_stored(xml)
        && matches!(el.get_attr("type"), Some("get" | "set"))
    {
        bounce(server, &el, Condition::ServiceUnavailable);
    }
}

/// XEP-0198 §4: a message that failed to reach its client and goes
/// elsewhere (another resource, offline storage) carries a XEP-0203
/// `<delay/>` with the time it was first delivered: its archive id's, else
/// now. One of the server's it already carries (offline storage's) is kept.
fn delay_stamp(el: &mut Element, xml: &str) {
    let Some(to) = el.get_attr("to") else {
        return;
    };
    let bare = split(to).0;
    if has_delay_from(el, domain_of(bare)) {
        return;
    }
    let stamp = super::resume::archive_id(xml, bare)
        .map_or_else(crate::stanza::now_stamp, crate::modules::mam::stamp);
    let delay = Element::new("delay", NS_DELAY)
        .attr("from", domain_of(bare))
        .attr("stamp", stamp);
    el.children.push(crate::xml::Node::Element(delay));
}

fn has_delay_from(el: &Element, from: &str) -> bool {
    el.elements()
        .any(|c| c.is("delay", NS_DELAY) && c.get_attr("from") == Some(from))
}

/// Parses a stanza the server serialised itself (offline store, mailbox,
/// routing table).
pub fn parse_stored(xml: &str) -> Option<Element> {
    crate::stanza::parse_serialised(xml)
}

/// §8.5.2: a message to a bare JID of an existing local account.
async fn deliver_to_bare(
    server: &Server,
    bare: &str,
    mtype: MessageType,
    mut el: Element,
    pass: Pass,
    mut archiving: Archiving<'_>,
) -> Result<(), Bounce> {
    match mtype {
        MessageType::Error => return Ok(()),
        MessageType::Groupchat => return bounce_of(Condition::ServiceUnavailable, el),
        _ => {}
    }
    // Eligible resources (available, non-negative priority), wherever
    // they are bound; confirmed before the user is taken for offline.
    let mut eligible = server.router.bound_confirmed(bare).await;
    eligible.retain(|b| b.available && b.priority >= 0);
    let max = eligible.iter().map(|b| b.priority).max();
    // Headlines go to every eligible resource, the rest to those of the
    // highest priority (§8.5.2.1.1).
    let headline = mtype == MessageType::Headline;
    eligible.retain(|b| headline || Some(b.priority) == max);
    let here = !eligible.is_empty() && eligible.iter().all(|b| matches!(b.at, At::Here(_)));
    if let Err(e) = archiving.before(server, &mut el, here).await {
        return Err(Box::new((e.into(), el)));
    }
    // Serialised once, shared by every recipient.
    let mut delivered = false;
    if !eligible.is_empty() {
        let xml: std::sync::Arc<str> = el.to_stream_xml(NS_CLIENT).into();
        for b in &eligible {
            delivered |= server
                .router
                .send_acked(bare, &b.resource, &b.at, &xml)
                .await;
        }
    }
    // XEP-0280: copies for the user's other resources, whether the message
    // reached one or waits offline. Once: a message routed again (its
    // session ended before its client had it) was copied on its first
    // pass, and the resources that got a copy then must not get another.
    if pass == Pass::First {
        crate::modules::carbons::received(server, bare, &el, eligible.iter().map(|b| &*b.resource));
    }
    // XEP-0334 §4.4: a headline with `<store/>` waits offline too.
    if delivered || (headline && !el.has_child("store", NS_HINTS)) {
        return Ok(());
    }
    store_offline(server, bare, el).await
}

/// Keeps a message for later with a XEP-0203 delay stamp; a full store is
/// `<service-unavailable/>` (RFC 6121 §8.5.2.1.1).
async fn store_offline(server: &Server, bare: &str, mut el: Element) -> Result<(), Bounce> {
    // Only messages worth keeping: with a body or other payload, and not
    // chat states alone (XEP-0160 §3: stale by the time they would be
    // delivered), unless a XEP-0334 `<store/>` asks for it.
    if el.children.is_empty() || (only_chat_states(&el) && !el.has_child("store", NS_HINTS)) {
        return Ok(());
    }
    // XEP-0334 §4.2: `<no-store/>` forbids keeping it even for a while;
    // not stored, it is undeliverable (RFC 6121 §8.5.2.2.1). A headline
    // is never answered with an error.
    if el.has_child("no-store", NS_HINTS) {
        return match MessageType::of(&el) {
            MessageType::Headline => Ok(()),
            _ => bounce_of(Condition::ServiceUnavailable, el),
        };
    }
    // The server's delay once: a message routed again has it already.
    let stamped = !has_delay_from(&el, domain_of(bare));
    if stamped {
        el.children.push(crate::xml::Node::Element(
            Element::new("delay", NS_DELAY)
                .attr("from", domain_of(bare))
                .attr("stamp", crate::stanza::now_stamp())
                .text("Offline Storage"),
        ));
    }
    let xml = el.to_stream_xml(NS_CLIENT);
    let stored = server
        .storage
        .store_offline(bare, &xml, server.config.offline.max_messages)
        .await;
    if stamped {
        el.children.pop();
    }
    match stored {
        Ok(Some(key)) => {
            metrics::counter!("starling_offline_stored_total").increment(1);
            recheck_offline(server, bare, vec![(key, xml)]).await;
            // XEP-0357: the user's app servers hear of it.
            crate::modules::push::offline(server, bare, &el).await;
            Ok(())
        }
        Ok(None) => {
            metrics::counter!("starling_offline_quota_full_total").increment(1);
            let err = StanzaError::with_text(
                Condition::ServiceUnavailable,
                "the recipient's offline storage is full",
            );
            Err(Box::new((err, el)))
        }
        Err(e) => Err(Box::new((e.into(), el))),
    }
}

/// Whether a message carries XEP-0085 chat states and nothing else but
/// metadata (thread, hints, ids, delay).
fn only_chat_states(el: &Element) -> bool {
    const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
    let mut states = false;
    for c in el.elements() {
        match c.ns.as_str() {
            NS_CHATSTATES => states = true,
            NS_HINTS | NS_DELAY | "urn:xmpp:sid:0" => {}
            NS_CLIENT if c.name == "thread" => {}
            _ => return false,
        }
    }
    states
}

/// Times a message stored while its user came online is taken back out
/// for them ([`recheck_offline`]) before it is left stored.
const RECHECKS: usize = 3;

/// The user's available resources of the highest non-negative priority
/// (where a message to the bare JID goes, §8.5.2.1.1), as the router sees
/// them now: in a cluster after the registry's read barrier, so that an
/// initial presence committed anywhere before this call is seen.
async fn available_now(server: &Server, bare: &str) -> Vec<Bound> {
    if server.storage.store.has_peers()
        && let Err(e) = server.storage.store.registry_barrier().await
    {
        tracing::debug!(error = %e, "registry barrier failed; rechecking with what this node has");
    }
    let mut found = server.router.bound(bare);
    found.retain(|b| b.available && b.priority >= 0);
    let max = found.iter().map(|b| b.priority).max();
    found.retain(|b| Some(b.priority) == max);
    found
}

/// Closes the window between "no available resource" and the store write
/// (RFC 6121 §8.5.2.2 / XEP-0160: stored messages go out when the user
/// sends initial presence). A session flushes the store after it became
/// available; a message stored after that flush read the store would wait
/// for the next login. So the sender, its message stored (`stored`), looks
/// again: if the user now has an available resource, it takes the message
/// back out (an atomic claim: whichever of this and a flush takes it
/// delivers it, exactly once) and delivers it there. Carbons were sent
/// when it was first routed.
///
/// Why no message is missed: the session marks itself available (in this
/// node's router, and in the registry with a Raft write) before its flush
/// reads the store, after a read barrier in a cluster
/// ([`flush_offline`]); the sender writes the store, then reads the
/// availability (after the registry's barrier in a cluster). Of two
/// linearizable writes each followed by a read of the other's, at least
/// one read sees the other's write.
async fn recheck_offline(server: &Server, bare: &str, mut stored: Vec<(Vec<u8>, String)>) {
    // Sessions that refused it (ending, or full): not tried again.
    let mut refused: Vec<(bool, u64, u64)> = Vec::new();
    for _ in 0..RECHECKS {
        let mut targets = available_now(server, bare).await;
        targets.retain(|b| !refused.contains(&session_of(&b.at)));
        if targets.is_empty() {
            return;
        }
        let Some(claimed) = claim(server, stored).await else {
            return;
        };
        if claimed.is_empty() {
            // A flush took it.
            return;
        }
        metrics::counter!("starling_offline_rechecked_total").increment(claimed.len() as u64);
        let mut left = Vec::new();
        for (key, xml) in claimed {
            let xml: Arc<str> = xml.into();
            let mut delivered = false;
            for b in &targets {
                delivered |= server
                    .router
                    .send_acked(bare, &b.resource, &b.at, &xml)
                    .await;
            }
            if !delivered {
                left.push((key, xml.to_string()));
            }
        }
        if left.is_empty() {
            return;
        }
        refused.extend(targets.iter().map(|b| session_of(&b.at)));
        if let Err(e) = server.storage.restore_offline(&left).await {
            tracing::error!(error = %e, "could not put undelivered messages back into offline storage");
            return;
        }
        stored = left;
    }
}

/// Which session `at` is: (on this node, node, session id).
fn session_of(at: &At) -> (bool, u64, u64) {
    match at {
        At::Here(h) => (true, 0, h.id),
        At::Node { node, session } => (false, *node, *session),
    }
}

/// Takes the stored messages `stored` (keys and what was read under them)
/// out of offline storage for delivery: those no one else took first.
/// When the write fails it may still have applied (its reply lost), so
/// what was read is put back: a message may then come twice, but is not
/// lost.
async fn claim(server: &Server, stored: Vec<(Vec<u8>, String)>) -> Option<Vec<(Vec<u8>, String)>> {
    let keys = stored.iter().map(|(k, _)| k.clone()).collect();
    match server.storage.take_offline(keys).await {
        Ok(claimed) => Some(claimed),
        Err(e) => {
            tracing::warn!(error = %e, "could not claim offline messages; putting them back");
            if let Err(e) = server.storage.restore_offline(&stored).await {
                tracing::error!(error = %e, "could not put offline messages back");
            }
            None
        }
    }
}

/// XEP-0386 §3.2: a Bind 2 bind clears the user's offline messages
/// "without sending them (as they will be provided by MAM)". Only those
/// the user's archive holds (a stanza-id by the account): what was stored
/// without being archived (a headline, a message the archive preferences
/// kept out) would be lost otherwise, and still comes with initial
/// presence.
pub async fn clear_archived_offline(server: &Server, bare: &str) {
    let Ok(stored) = server.storage.offline(bare) else {
        return;
    };
    let archived: Vec<Vec<u8>> = stored
        .into_iter()
        .filter(|(_, xml)| {
            parse_stored(xml).is_some_and(|el| {
                el.elements().any(|c| {
                    c.is("stanza-id", crate::modules::mam::NS_SID)
                        && c.get_attr("by")
                            .is_some_and(|by| by.eq_ignore_ascii_case(bare))
                })
            })
        })
        .map(|(k, _)| k)
        .collect();
    if archived.is_empty() {
        return;
    }
    match server.storage.take_offline(archived).await {
        Ok(taken) => {
            metrics::counter!("starling_offline_cleared_by_bind2_total")
                .increment(taken.len() as u64);
        }
        Err(e) => tracing::warn!(error = %e, "could not clear archived offline messages"),
    }
}

/// Sends the stored messages to a session that became available with a
/// non-negative priority.
/// Runs on its own (the user actor spawns it): it waits for the client to
/// read when the backlog is larger than the session's bound, and the
/// session must not be waiting for it meanwhile.
///
/// The messages are claimed (taken out of the store, one write) before
/// they are handed on, so that of several flushes (resources logging in at
/// once, on any nodes) and senders rechecking ([`recheck_offline`]) exactly
/// one delivers each message. What cannot be handed on goes back.
pub async fn flush_offline(server: &Server, origin: &Origin<'_>) {
    // In a cluster, a message another node stored a moment ago, after
    // taking the user for offline, may not be applied here yet; that node
    // may not see this session available either (the registry is another
    // group). Reading after a barrier, this flush sees every message whose
    // store committed before it, and the sender of any later one sees this
    // session available.
    if server.storage.store.has_peers()
        && let Err(e) = server.storage.store.read_barrier().await
    {
        tracing::debug!(error = %e, "read barrier failed; flushing what this replica has");
    }
    let Ok(stored) = server.storage.offline(origin.bare) else {
        return;
    };
    if stored.is_empty() {
        return;
    }
    let Some(handle) = split(origin.full)
        .1
        .and_then(|r| server.router.handle(origin.bare, r))
    else {
        return;
    };
    let Some(msgs) = claim(server, stored).await else {
        return;
    };
    // Stored serialised: handed on as they are, without parsing. A backlog
    // larger than the session's bound goes out as the client reads it (the
    // session is not closed for it); what is not handed on within the write
    // timeout is stored again for the next time.
    let patience = std::time::Duration::from_secs(server.config.c2s.write_timeout_secs);
    // XEP-0191: nothing from a JID the user blocks is delivered, also what
    // was stored before the block (looked at only if the user blocks anyone).
    let blocking = server.storage.blocks_anyone(origin.bare).unwrap_or(false);
    let mut left = Vec::new();
    let mut msgs = msgs.into_iter();
    'messages: for (key, xml) in msgs.by_ref() {
        if blocking
            && parse_stored(&xml)
                .and_then(|el| el.get_attr("from").map(|f| blocks(server, origin.bare, f)))
                .unwrap_or(false)
        {
            continue;
        }
        let xml: Arc<str> = xml.into();
        let since = std::time::Instant::now();
        loop {
            match handle.offer(&xml) {
                Offer::Queued => break,
                Offer::Full if since.elapsed() < patience => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Offer::Ended | Offer::Full => {
                    left.push((key, xml.to_string()));
                    break 'messages;
                }
            }
        }
    }
    left.extend(msgs);
    if let Err(e) = server.storage.restore_offline(&left).await {
        tracing::error!(error = %e, "could not put undelivered offline messages back");
    }
}

// ---------------------------------------------------------------- presence

/// Handles a presence stanza from a client (RFC 6121 §3, §4).
pub async fn presence(
    server: &Server,
    origin: &Origin<'_>,
    state: &mut PresenceState,
    el: Element,
) -> Result<(), StanzaError> {
    use PresenceType::*;
    let Some(ptype) = PresenceType::of(&el) else {
        return Err(Condition::BadRequest.into());
    };
    let to = el.get_attr("to").map(str::to_owned);
    match (ptype, to) {
        (Subscribe | Subscribed | Unsubscribe | Unsubscribed, Some(to)) => {
            let contact = split(&to).0.to_owned();
            let t = ptype.attr().unwrap_or_default();
            subscription_out(server, origin, t, &contact, el).await
        }
        (Subscribe | Subscribed | Unsubscribe | Unsubscribed, None) => {
            Err(Condition::BadRequest.into())
        }
        (Probe, Some(to)) => {
            probe(server, origin.bare, origin.full, split(&to).0)?;
            Ok(())
        }
        (Probe, None) => Ok(()),
        (Available | Unavailable, None) => broadcast(server, origin, state, el).await,
        (Available | Unavailable | Error, Some(to)) => {
            directed(server, origin, state, ptype, &to, el).await;
            Ok(())
        }
        // A presence error to nobody: nothing to do.
        (Error, None) => Ok(()),
    }
}

/// Priority of an available presence (RFC 6121 §4.7.2.3), 0 by default.
fn priority_of(el: &Element) -> i32 {
    el.child_text("priority", NS_CLIENT)
        .and_then(|p| p.trim().parse::<i8>().ok())
        .map(i32::from)
        .unwrap_or(0)
}

/// Available or unavailable broadcast (no `to`).
async fn broadcast(
    server: &Server,
    origin: &Origin<'_>,
    state: &mut PresenceState,
    el: Element,
) -> Result<(), StanzaError> {
    let available = el.get_attr("type").is_none();
    let initial = available && !state.available;
    let priority = priority_of(&el);
    let stored = available.then(|| el.clone());
    server.router.update(origin.bare, origin.session_id, |r| {
        r.available = available;
        r.priority = priority;
        r.presence = stored;
    });
    // The presence registry: other nodes route and answer probes from it.
    routing::publish(server, origin.bare, origin.session_id, &mut state.published).await?;
    // Who gets it is read from the registry: right after this node joined
    // it (or it was re-founded), wait until every node published there.
    if server.storage.store.has_peers()
        && let Err(e) = server.storage.store.registry_settled().await
    {
        tracing::debug!(error = %e, "registry not settled; broadcasting to what it has");
    }
    crate::hot_counter!("starling_stanzas_routed_total", "kind" => "presence").increment(1);
    let roster = server.storage.roster(origin.bare)?;
    // To every contact with a subscription from us (their available resources).
    for item in roster.iter().filter(|i| i.subscription.from()) {
        if !either_blocks(server, origin.full, &item.jid) {
            send_to_available(server, &item.jid, &el);
        }
    }
    // To the user's own other available resources (and back to itself).
    send_to_available(server, origin.bare, &el);
    if !available {
        // XEP-0060 §12.4: its temporary pubsub subscriptions end.
        crate::modules::pep::presence_ended(server, origin.bare, origin.full).await;
        for target in state.directed.drain() {
            if !roster
                .iter()
                .any(|i| i.subscription.from() && i.jid == split(&target).0)
            {
                let mut copy = el.clone();
                copy.set_attr("to", target.as_str());
                if matches!(
                    destination(server, &target),
                    Ok(Destination::Service { .. })
                ) {
                    crate::services::route(server, copy).await;
                } else {
                    send_presence_to(server, &target, copy);
                }
            }
        }
        state.available = false;
        if let Some(last) = last_activity(server, origin.bare, &el) {
            if state.ending {
                state.last_activity = Some(last);
            } else {
                server.storage.record_last_activity(origin.bare, last);
            }
        }
        return Ok(());
    }
    state.available = true;
    if initial {
        // Probe: current presence of every contact we are subscribed to.
        for item in roster.iter().filter(|i| i.subscription.to()) {
            probe(server, origin.bare, origin.full, &item.jid)?;
        }
        // Presence of the user's other resources.
        for p in available_presences(server, origin.bare, origin.session_id) {
            let _ = deliver_to_full(server, origin.full, with_to(p, origin.full));
        }
        // Pending subscription requests (RFC 6121 §3.1.3).
        if let Ok(pending) = server.storage.pending_in(origin.bare)
            && let Some(h) = split(origin.full)
                .1
                .and_then(|r| server.router.handle(origin.bare, r))
        {
            for (contact, xml) in pending {
                if !either_blocks(server, &contact, origin.bare) {
                    h.send_shared(&xml.into());
                }
            }
        }
        if priority >= 0 {
            state.flush_offline = true;
        }
        // XEP-0163 §4.3.4: the last items this session is interested in.
        crate::modules::pep::initial_presence(server, origin.bare, origin.full, &roster, &el);
    }
    Ok(())
}

fn with_to(mut el: Element, to: &str) -> Element {
    el.set_attr("to", to);
    el
}

/// The last available presence of each available resource of `bare`,
/// wherever bound, except this node's session `except`.
fn available_presences(server: &Server, bare: &str, except: u64) -> Vec<Element> {
    server.router.presences(bare, except)
}

/// Which resources of a user a stanza goes to.
#[derive(Clone, Copy)]
enum Want {
    Available,
    AvailableOrInterested,
}

impl Want {
    fn wants(self, available: bool, interested: bool) -> bool {
        match self {
            Want::Available => available,
            Want::AvailableOrInterested => available || interested,
        }
    }
}

/// Sends `el` to every available resource of `bare`.
/// The stanza keeps the address it was sent to: a broadcast or a
/// subscription stanza reaches each resource addressed to the bare JID, as
/// in the examples of RFC 6121 §3 and §4.
fn send_to_available(server: &Server, bare: &str, el: &Element) {
    send_to(server, bare, el, Want::Available);
}

/// This node's sessions of `bare` that `want` selects.
fn local_targets(server: &Server, bare: &str, want: Want) -> Vec<crate::router::SessionHandle> {
    server.router.with_resources(bare, |rs| {
        rs.iter()
            .filter(|r| want.wants(r.available, r.interested))
            .map(|r| r.handle.clone())
            .collect()
    })
}

/// As `send_to_available`, to this node's sessions only (each node tells
/// its own); returns how many got it.
pub fn send_to_local_available(server: &Server, bare: &str, el: &Element) -> usize {
    let targets = local_targets(server, bare, Want::Available);
    if targets.is_empty() {
        return 0;
    }
    let xml = addressed_to(el, bare);
    targets.iter().filter(|h| h.send_shared(&xml)).count()
}

/// `el` serialised, addressed to `bare` unless it already names one of
/// its resources.
fn addressed_to(el: &Element, bare: &str) -> std::sync::Arc<str> {
    if el.get_attr("to").is_none_or(|to| split(to).0 != bare) {
        let mut el = el.clone();
        el.set_attr("to", bare);
        el.to_stream_xml(NS_CLIENT).into()
    } else {
        el.to_stream_xml(NS_CLIENT).into()
    }
}

/// Sends `el` to the resources of `bare` that `want` selects, wherever
/// they are bound.
fn send_to(server: &Server, bare: &str, el: &Element, want: Want) {
    let mut targets = server.router.bound(bare);
    if targets.is_empty() {
        // A contact at a component (XEP-0114) gets presence there; one at
        // another domain from its server (RFC 6121 §4.4.2).
        let addressed = el.get_attr("to").is_some_and(|to| split(to).0 == bare);
        if let Some(domain) = crate::services::component::domain_of(server, bare) {
            if addressed {
                crate::services::component::send(server, domain, el);
            } else {
                let mut el = el.clone();
                el.set_attr("to", bare);
                crate::services::component::send(server, domain, &el);
            }
        } else if crate::s2s::is_remote(server, bare) {
            let mut el = el.clone();
            if !addressed {
                el.set_attr("to", bare);
            }
            crate::s2s::send(server, el);
        }
        return;
    }
    targets.retain(|b| want.wants(b.available, b.interested));
    if targets.is_empty() {
        return;
    }
    let xml = addressed_to(el, bare);
    for b in &targets {
        server.router.send(bare, &b.resource, &b.at, &xml);
    }
}

/// Presence to a bare JID goes to its available resources; to a full JID
/// to that resource only.
pub(crate) fn send_presence_to(server: &Server, to: &str, el: Element) {
    // XEP-0191: none between a user and a JID either of them blocks.
    if el
        .get_attr("from")
        .is_some_and(|from| either_blocks(server, from, to))
    {
        return;
    }
    match split(to) {
        (bare, None) => send_to_available(server, bare, &el),
        (_, Some(_)) => {
            let _ = deliver_to_full(server, to, el);
        }
    }
}

/// Presence from another domain's contact (available, unavailable,
/// error) to a local user or one of its resources.
pub fn presence_in(server: &Server, to: &str, el: Element) {
    send_presence_to(server, to, el);
}

/// Answers a probe from `prober` for `contact`'s presence, if the contact
/// has approved the prober (RFC 6121 §4.3.2).
pub fn probe(
    server: &Server,
    prober_bare: &str,
    prober_full: &str,
    contact: &str,
) -> Result<(), StanzaError> {
    if let Some(domain) = crate::services::component::domain_of(server, contact) {
        if either_blocks(server, prober_full, contact) {
            return Ok(());
        }
        // XEP-0114: the component answers for its JIDs itself.
        let el = Element::new("presence", NS_CLIENT)
            .attr("from", prober_bare)
            .attr("to", contact)
            .attr("type", "probe");
        crate::services::component::send(server, domain, &el);
        return Ok(());
    }
    match destination(server, contact)? {
        Destination::Account { .. } => {}
        // Another domain's contact: its server answers (RFC 6121 §4.3.1:
        // a probe comes from the bare JID).
        Destination::Remote { has_node: true, .. } if server.config.s2s.enabled => {
            if !either_blocks(server, prober_full, contact) {
                let probe = Element::new("presence", NS_CLIENT)
                    .attr("from", prober_bare)
                    .attr("to", contact)
                    .attr("type", "probe");
                crate::s2s::send(server, probe);
            }
            return Ok(());
        }
        _ => return Ok(()),
    }
    if either_blocks(server, prober_full, contact) {
        return Ok(());
    }
    let approved = server
        .storage
        .roster_item(contact, prober_bare)?
        .is_some_and(|i| i.subscription.from());
    if !approved && contact != prober_bare {
        return Ok(());
    }
    for p in available_presences(server, contact, 0) {
        let _ = deliver_to_full(server, prober_full, with_to(p, prober_full));
    }
    Ok(())
}

/// Directed presence (RFC 6121 §4.6). To a hosted service (a MUC room)
/// it is tracked like any other, so the room sees the session go.
async fn directed(
    server: &Server,
    origin: &Origin<'_>,
    state: &mut PresenceState,
    ptype: PresenceType,
    to: &str,
    el: Element,
) {
    let service = match destination(server, to) {
        Ok(Destination::Remote { has_node: true, .. }) if !server.config.s2s.enabled => {
            bounce(server, &el, Condition::RemoteServerNotFound);
            return;
        }
        Ok(Destination::Service { .. }) => true,
        _ => false,
    };
    match ptype {
        PresenceType::Available => {
            state.directed.insert(to.to_owned());
        }
        PresenceType::Unavailable | PresenceType::Error => {
            state.directed.remove(to);
        }
        _ => {}
    }
    if service {
        // The service (a room, maybe on another node) answers this
        // session at once: its route must be in the registry first.
        if !state.published
            && let Err(e) =
                routing::publish(server, origin.bare, origin.session_id, &mut state.published).await
        {
            tracing::debug!(error = %e, "route not published before presence to a service");
        }
        crate::services::route(server, el).await;
        return;
    }
    send_presence_to(server, to, el);
}

/// The time and status of the last unavailable presence (XEP-0012 for
/// offline users), when the user's last available resource goes.
fn last_activity(server: &Server, bare: &str, el: &Element) -> Option<LastActivity> {
    if server.router.bound(bare).iter().any(|b| b.available) {
        return None;
    }
    Some(LastActivity {
        time: chrono::Utc::now().timestamp(),
        status: el.child_text("status", NS_CLIENT).unwrap_or_default(),
    })
}

/// The session ended: unavailable to everyone who saw it available.
pub async fn session_ended(server: &Server, origin: &Origin<'_>, state: &mut PresenceState) {
    state.ending = true;
    if state.available {
        let el = Element::new("presence", NS_CLIENT)
            .attr("from", origin.full)
            .attr("type", "unavailable");
        let _ = broadcast(server, origin, state, el).await;
    } else {
        // Never available: its temporary subscriptions end all the same.
        crate::modules::pep::presence_ended(server, origin.bare, origin.full).await;
    }
}

// ------------------------------------------------------------ subscriptions

/// Unavailable presence from each of `user`'s available resources to
/// `contact` (who may no longer see them).
pub fn unavailable_to(server: &Server, user: &str, contact: &str) {
    let available = server
        .router
        .bound(user)
        .into_iter()
        .filter(|b| b.available);
    for Bound { resource: res, .. } in available {
        let un = Element::new("presence", NS_CLIENT)
            .attr("from", format!("{user}/{res}"))
            .attr("type", "unavailable");
        send_presence_to(server, contact, un);
    }
}

/// The `<item/>` of a roster result or push.
pub fn item_element(item: &RosterItem, removed: bool) -> Element {
    let mut e = Element::new("item", NS_ROSTER).attr("jid", item.jid.as_str());
    if removed {
        return e.attr("subscription", "remove");
    }
    if let Some(n) = &item.name {
        e.set_attr("name", n.as_str());
    }
    e.set_attr("subscription", item.subscription.as_str());
    if item.ask {
        e.set_attr("ask", "subscribe");
    }
    if item.approved {
        e.set_attr("approved", "true");
    }
    for g in &item.groups {
        e = e.child(Element::new("group", NS_ROSTER).text(g.as_str()));
    }
    e
}

/// Pushes a roster item change to every interested resource of `bare`
/// (RFC 6121 §2.1.6).
pub fn roster_push(server: &Server, bare: &str, item: &RosterItem, removed: bool, ver: u64) {
    for b in server
        .router
        .bound(bare)
        .into_iter()
        .filter(|b| b.interested)
    {
        let push = Element::new("iq", NS_CLIENT)
            .attr("type", "set")
            .attr("id", format!("push-{}", &crate::stream::new_id()[..10]))
            .attr("to", format!("{bare}/{}", b.resource))
            .child(
                Element::new("query", NS_ROSTER)
                    .attr("ver", ver.to_string())
                    .child(item_element(item, removed)),
            );
        let xml: std::sync::Arc<str> = push.to_stream_xml(NS_CLIENT).into();
        server.router.send(bare, &b.resource, &b.at, &xml);
    }
}

/// Pushes the roster change a committed transaction made, if it made one.
pub fn push_committed(
    server: &Server,
    bare: &str,
    item: Option<&RosterItem>,
    removed: bool,
    committed: Committed,
) {
    if let (Some(item), Some(ver)) = (item, committed.roster_ver) {
        roster_push(server, bare, item, removed, ver);
    }
}

/// An outbound subscription stanza from the user (RFC 6121 §3.1.2,
/// §3.2.2, §3.3.2, §3.1.5 for approvals and pre-approval).
pub async fn subscription_out(
    server: &Server,
    origin: &Origin<'_>,
    ptype: &str,
    contact: &str,
    mut el: Element,
) -> Result<(), StanzaError> {
    // Outbound subscription stanzas carry the bare JID (§3.1.2).
    el.set_attr("from", origin.bare);
    el.set_attr("to", contact);
    if contact == origin.bare {
        return Ok(());
    }
    let ((route, saved), committed) = server
        .storage
        .update_user(origin.bare, |txn| {
            let existing = txn.roster_item(contact)?;
            let mut item = existing.clone().unwrap_or_else(|| RosterItem {
                jid: contact.to_owned(),
                ..Default::default()
            });
            let mut route = true;
            match ptype {
                "subscribe" => {
                    if !item.subscription.to() {
                        item.ask = true;
                    }
                }
                "unsubscribe" => {
                    item.subscription = Subscription::with(false, item.subscription.from());
                    item.ask = false;
                }
                "subscribed" => {
                    if txn.has_pending_in(contact)? {
                        item.subscription = Subscription::with(item.subscription.to(), true);
                        item.approved = false;
                        txn.set_pending_in(contact, None);
                    } else if !item.subscription.from() {
                        // Pre-approval (§3.4): remember, do not route.
                        item.approved = true;
                        route = false;
                    } else {
                        route = false;
                    }
                }
                "unsubscribed" => {
                    let had_pending = txn.has_pending_in(contact)?;
                    if had_pending {
                        txn.set_pending_in(contact, None);
                    }
                    route = had_pending || item.subscription.from() || item.approved;
                    item.subscription = Subscription::with(item.subscription.to(), false);
                    item.approved = false;
                }
                _ => unreachable!(),
            }
            let changed = existing.as_ref() != Some(&item);
            let worth_keeping = existing.is_some()
                || item.subscription != Subscription::None
                || item.ask
                || item.approved;
            let saved = changed && worth_keeping;
            if saved {
                txn.save_item(&item, false)?;
            }
            Ok((route, saved.then_some(item)))
        })
        .await?;
    push_committed(server, origin.bare, saved.as_ref(), false, committed);
    if !route {
        return Ok(());
    }
    if ptype == "unsubscribed" {
        // §3.2.2: the contact sees us go unavailable.
        unavailable_to(server, origin.bare, contact);
    }
    deliver_subscription(server, origin.bare, contact, ptype, el).await?;
    if ptype == "subscribed" {
        // §3.1.5: the contact gets our current presence.
        for p in available_presences(server, origin.bare, 0) {
            send_presence_to(server, contact, p);
        }
        // XEP-0163 §4.3.4: and the last items of our PEP nodes.
        crate::modules::pep::subscription_started(server, origin.bare, contact);
    }
    Ok(())
}

/// The inbound half: `user` receives a subscription stanza from `from`.
pub async fn deliver_subscription(
    server: &Server,
    from: &str,
    user: &str,
    ptype: &str,
    el: Element,
) -> Result<(), StanzaError> {
    match destination(server, user)? {
        Destination::Account { exists: true, .. } => {}
        // To another domain's user: its server applies it (§3.1.3).
        Destination::Remote { has_node: true, .. } => {
            if !either_blocks(server, from, user) {
                crate::s2s::send(server, el);
            }
            return Ok(());
        }
        // XEP-0114: a component keeps its own subscription state.
        Destination::Service {
            domain,
            kind: crate::services::ServiceKind::Component,
            ..
        } => {
            crate::services::component::send(server, domain, &el);
            return Ok(());
        }
        // §8.5.1: subscription stanzas to no such user are ignored.
        _ => return Ok(()),
    }
    // XEP-0191: dropped without a word, and without changing any state.
    if either_blocks(server, from, user) {
        return Ok(());
    }
    metrics::counter!("starling_stanzas_routed_total", "kind" => "subscription").increment(1);
    subscription_in_simple(server, from, user, ptype, el).await
}

/// What an inbound subscription stanza leads to, decided on the user's
/// roster state as committed.
enum Inbound {
    /// Nothing for the user to see.
    Nothing,
    /// Show the stanza to the user (and push the saved item, if any).
    Deliver,
    /// The user approved already: answer `subscribed` on the user's behalf
    /// (and, when a pre-approval was used, send the user's presence).
    AutoApprove { presence: bool },
}

/// Applies an inbound subscription stanza at `user` (RFC 6121 §3.1.3,
/// §3.1.6, §3.2.3, §3.3.3).
async fn subscription_in_simple(
    server: &Server,
    from: &str,
    user: &str,
    ptype: &str,
    el: Element,
) -> Result<(), StanzaError> {
    // Kept until the user answers (survives restarts), serialised once.
    let request = (ptype == "subscribe").then(|| el.to_stream_xml(NS_CLIENT));
    let ((outcome, saved), committed) = server
        .storage
        .update_user(user, |txn| {
            let existing = txn.roster_item(from)?;
            let mut item = existing.clone().unwrap_or_else(|| RosterItem {
                jid: from.to_owned(),
                ..Default::default()
            });
            let mut outcome = Inbound::Nothing;
            let mut save = false;
            match ptype {
                "subscribe" if item.subscription.from() => {
                    outcome = Inbound::AutoApprove { presence: false };
                }
                "subscribe" if item.approved => {
                    item.approved = false;
                    item.subscription = Subscription::with(item.subscription.to(), true);
                    save = true;
                    outcome = Inbound::AutoApprove { presence: true };
                }
                "subscribe" => {
                    txn.set_pending_in(from, request.clone());
                    outcome = Inbound::Deliver;
                }
                "subscribed" if item.ask => {
                    item.ask = false;
                    item.subscription = Subscription::with(true, item.subscription.from());
                    save = true;
                    outcome = Inbound::Deliver;
                }
                // The contact's server answering a repeated request (§3.1.3):
                // nothing changes, but the user learns the request is granted.
                "subscribed" if item.subscription.to() => outcome = Inbound::Deliver,
                "unsubscribe" => {
                    if txn.has_pending_in(from)? {
                        txn.set_pending_in(from, None);
                    }
                    if item.subscription.from() {
                        item.subscription = Subscription::with(item.subscription.to(), false);
                        save = true;
                        outcome = Inbound::Deliver;
                    }
                }
                "unsubscribed" if item.subscription.to() || item.ask => {
                    item.subscription = Subscription::with(false, item.subscription.from());
                    item.ask = false;
                    save = existing.is_some();
                    outcome = Inbound::Deliver;
                }
                _ => {}
            }
            if save {
                txn.save_item(&item, false)?;
            }
            Ok((outcome, save.then_some(item)))
        })
        .await?;
    match outcome {
        Inbound::AutoApprove { presence } => {
            push_committed(server, user, saved.as_ref(), false, committed);
            let reply = Element::new("presence", NS_CLIENT)
                .attr("from", user)
                .attr("to", from)
                .attr("type", "subscribed");
            Box::pin(subscription_in_simple(
                server,
                user,
                from,
                "subscribed",
                reply,
            ))
            .await?;
            if presence {
                for p in available_presences(server, user, 0) {
                    send_presence_to(server, from, p);
                }
                crate::modules::pep::subscription_started(server, user, from);
            }
        }
        Inbound::Deliver => {
            // §3.1.6: the presence reaches the user before the roster push.
            // A request goes to available resources (§3.1.3); the outcome
            // of one to interested resources too (§3.1.6, §3.2.3, §3.3.3).
            if ptype == "subscribe" {
                send_to(server, user, &el, Want::Available);
            } else {
                send_to(server, user, &el, Want::AvailableOrInterested);
            }
            push_committed(server, user, saved.as_ref(), false, committed);
            if ptype == "unsubscribe" {
                // §3.3.3: the unsubscriber sees the user go unavailable.
                unavailable_to(server, user, from);
            }
        }
        Inbound::Nothing => {}
    }
    Ok(())
}
