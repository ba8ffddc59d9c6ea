//! Services hosted on a subdomain of every served domain (XEP-0045 rooms
//! at `conference.<domain>`, XEP-0363 file upload at `upload.<domain>`,
//! XEP-0060 publish-subscribe at `pubsub.<domain>`):
//! which domains are services ([`Services`], from the configuration), and
//! how a stanza for one gets to where it is handled.
//!
//! A service's entities (a MUC room) each live on exactly one node of the
//! cluster, chosen by rendezvous (highest-random-weight) hashing of the
//! entity's key over the live members ([`owner`]). Every path that routes
//! a stanza (a client's message, presence through its user actor, IQ, and
//! what other nodes hand this one) calls [`route`]; it runs the stanza
//! here when this node is the owner, else it sends it on the node-to-node
//! delivery stream as a service envelope (kind [`KIND_SERVICE`]) and waits
//! for the owner's answer, trying again with the current membership while
//! a dead owner is still counted live (the lease has not lapsed yet). The
//! receiving node checks ownership again ([`from_node`]) and forwards at
//! most [`MAX_HOPS`] times, so nodes whose views of the membership differ
//! for a moment still agree on one place.

pub mod component;
pub mod muc;
pub mod proxy65;
pub mod pubsub;

use crate::config::Config;
use crate::router::At;
use crate::server::Server;
use crate::stanza::{Condition, NS_CLIENT, split};
use crate::xml::Element;
use starling_cluster::{DeliveryResult, Envelope};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Envelope kind of a stanza for a hosted service (see `cluster.proto`).
pub const KIND_SERVICE: u32 = 1;
/// Envelope kind of one stanza for several sessions of the receiving node.
pub const KIND_FANOUT: u32 = 2;
/// Forwards of one service stanza between nodes at most.
pub const MAX_HOPS: u32 = 2;
/// How long a stanza for a service entity waits for an owner that answers
/// (a dead owner stays counted live until its lease lapses).
const OWNER_PATIENCE: Duration = Duration::from_secs(15);

/// What a service domain hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// XEP-0045 multi-user chat.
    Muc,
    /// XEP-0363 HTTP file upload (slots; the files are `http::upload`'s).
    Upload,
    /// XEP-0060 publish-subscribe (nodes in the replicated store).
    Pubsub,
    /// XEP-0065 SOCKS5 bytestreams proxy (its connections are this
    /// node's: [`proxy65`]).
    Proxy65,
    /// A XEP-0114 external component: everything for its domain (and
    /// JIDs at it) goes to its connection ([`component`]).
    Component,
}

/// A service domain: what it hosts and the served domain it belongs to.
#[derive(Clone, Debug)]
pub struct Hosted {
    pub kind: ServiceKind,
    pub parent: String,
    /// Its name in the parent's disco#items and its own identity.
    pub name: String,
}

/// The hosted services of this server, and the state each keeps on this
/// node (the rooms it hosts).
pub struct Services {
    by_domain: HashMap<String, Hosted>,
    pub muc: muc::Rooms,
    /// The component connections of this node.
    pub components: component::Components,
    /// The SOCKS5 connections this node's proxy holds (XEP-0065).
    pub proxy65: proxy65::Proxy,
    /// The server itself (actors of services hold it) and the arbiter
    /// their actors run on; set once at start.
    server: OnceLock<Weak<Server>>,
    arbiters: OnceLock<Arc<Vec<actix_rt::ArbiterHandle>>>,
    /// A hash of the live members last seen by [`owner`], and how often it
    /// changed: an actor started under another membership reloads its
    /// state (it may have run elsewhere meanwhile).
    live_hash: AtomicU64,
    live_epoch: AtomicU64,
}

impl Services {
    pub fn new(config: &Config) -> Self {
        let mut by_domain = HashMap::new();
        let hosted = [
            (
                config.muc.enabled,
                &config.muc.subdomain,
                ServiceKind::Muc,
                config.muc.name.as_str(),
            ),
            (
                config.upload.enabled,
                &config.upload.subdomain,
                ServiceKind::Upload,
                "HTTP File Upload",
            ),
            (
                config.pubsub.enabled,
                &config.pubsub.subdomain,
                ServiceKind::Pubsub,
                config.pubsub.name.as_str(),
            ),
            (
                config.proxy65.enabled,
                &config.proxy65.subdomain,
                ServiceKind::Proxy65,
                "SOCKS5 Bytestreams Service",
            ),
        ];
        for (enabled, subdomain, kind, name) in hosted {
            if !enabled {
                continue;
            }
            for d in &config.domains {
                by_domain.insert(
                    format!("{subdomain}.{d}"),
                    Hosted {
                        kind,
                        parent: d.clone(),
                        name: name.to_owned(),
                    },
                );
            }
        }
        // XEP-0114 components: listed in their parent domain's
        // disco#items (none for one outside the served domains).
        for d in config.components.secrets.keys() {
            by_domain.insert(
                d.clone(),
                Hosted {
                    kind: ServiceKind::Component,
                    parent: config.component_parent(d).unwrap_or_default().to_owned(),
                    name: String::new(),
                },
            );
        }
        Services {
            by_domain,
            muc: muc::Rooms::default(),
            components: component::Components::default(),
            proxy65: proxy65::Proxy::default(),
            server: OnceLock::new(),
            arbiters: OnceLock::new(),
            live_hash: AtomicU64::new(0),
            live_epoch: AtomicU64::new(0),
        }
    }

    /// Gives the services their server and the arbiters their actors run
    /// on (the node's start does, before it serves; until then stanzas for
    /// them are refused and their senders try again).
    pub fn init(&self, server: Weak<Server>, arbiters: Arc<Vec<actix_rt::ArbiterHandle>>) {
        let _ = self.server.set(server);
        if !arbiters.is_empty() {
            let _ = self.arbiters.set(arbiters);
        }
    }

    pub fn server(&self) -> Option<Arc<Server>> {
        self.server.get().and_then(Weak::upgrade)
    }

    /// Changes each time this node sees another set of live members.
    pub fn live_epoch(&self) -> u64 {
        self.live_epoch.load(Ordering::Acquire)
    }

    /// The arbiter the actor of `key` runs on (spread by its hash).
    pub fn arbiter(&self, key: &str) -> Option<&actix_rt::ArbiterHandle> {
        let all = self.arbiters.get()?;
        let i = (score(0, key) % all.len() as u64) as usize;
        all.get(i)
    }

    /// The service at `domain`, if it is one.
    pub fn get(&self, domain: &str) -> Option<&Hosted> {
        if self.by_domain.is_empty() {
            return None;
        }
        self.by_domain.get(domain)
    }

    /// The services of the served domain `parent` (its disco#items).
    pub fn of_parent<'a>(&'a self, parent: &'a str) -> impl Iterator<Item = (&'a str, &'a Hosted)> {
        let mut v: Vec<(&str, &Hosted)> = self
            .by_domain
            .iter()
            .filter(|(_, h)| h.parent == parent)
            .map(|(d, h)| (d.as_str(), h))
            .collect();
        v.sort_by_key(|(d, _)| *d);
        v.into_iter()
    }
}

// ------------------------------------------------------------ placement

/// 64-bit FNV-1a, then a splitmix64 finaliser: stable across builds and
/// nodes (every node must compute the same owner).
fn score(node: u64, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.to_be_bytes().iter().chain(key.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The node among `nodes` that owns `key` (highest random weight); a
/// node leaving moves only the keys it owned.
pub fn owner_among(nodes: &[u64], key: &str) -> Option<u64> {
    nodes.iter().copied().max_by_key(|n| (score(*n, key), *n))
}

/// The live node that owns `key` now (this node alone without peers).
pub fn owner(server: &Server, key: &str) -> u64 {
    let store = &server.storage.store;
    let me = store.node_id();
    if !store.has_peers() {
        return me;
    }
    let mut live = store.live_nodes();
    live.sort_unstable();
    let h = live.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, n| {
        score(*n, "") ^ h.rotate_left(5)
    });
    let s = &server.services;
    if s.live_hash.swap(h, Ordering::AcqRel) != h {
        s.live_epoch.fetch_add(1, Ordering::AcqRel);
    }
    owner_among(&live, key).unwrap_or(me)
}

/// Sends a service stanza to the node that owns its entity now, without
/// waiting (a room that found it is no longer the owner hands on what it
/// got).
pub fn forward(server: &Server, node: u64, el: &Element) {
    let env = Envelope {
        kind: KIND_SERVICE,
        to: el.get_attr("to").unwrap_or_default().to_owned(),
        from: el.get_attr("from").unwrap_or_default().to_owned(),
        stanza: el.to_stream_xml(NS_CLIENT).into_bytes(),
        hops: 1,
        ..Envelope::default()
    };
    if let Err(e) = server.storage.store.deliver(node, env) {
        tracing::debug!(node, error = %e, "service stanza not forwarded");
    }
}

// ------------------------------------------------------------ routing

/// Where a stanza for a service goes: its kind, and the key of the entity
/// that handles it (a room's bare JID), `None` for the service domain
/// itself (answered by any node).
fn entity_of<'a>(server: &Server, to: &'a str) -> Option<(ServiceKind, Option<&'a str>)> {
    let bare = split(to).0;
    match bare.split_once('@') {
        Some((_, domain)) => server.services.get(domain).map(|h| (h.kind, Some(bare))),
        None => server.services.get(bare).map(|h| (h.kind, None)),
    }
}

/// Routes a stanza (`from` stamped, `to` normalised) addressed to a
/// service domain or an entity of it, from any path of this node; errors
/// go back to the sender as stanzas.
pub async fn route(server: &Server, el: Element) {
    let to = el.get_attr("to").unwrap_or_default().to_owned();
    let Some((kind, entity)) = entity_of(server, &to) else {
        crate::session::im::bounce(server, &el, Condition::ServiceUnavailable);
        return;
    };
    crate::hot_counter!("starling_stanzas_routed_total", "kind" => "service").increment(1);
    if kind == ServiceKind::Component {
        let domain = split(&to).0;
        let domain = domain.rsplit_once('@').map_or(domain, |(_, d)| d);
        component::route(server, domain, el).await;
        return;
    }
    let Some(key) = entity else {
        // The service itself: any node answers from the replicated store.
        match kind {
            ServiceKind::Muc => muc::service_stanza(server, el).await,
            ServiceKind::Upload => upload_stanza(server, el).await,
            ServiceKind::Pubsub => pubsub::service_stanza(server, el).await,
            ServiceKind::Proxy65 => proxy65::service_stanza(server, el).await,
            ServiceKind::Component => {}
        }
        return;
    };
    // What any node can answer from the store (a room's archive).
    let el = match kind {
        ServiceKind::Muc => match muc::answer_here(server, el).await {
            Some(el) => el,
            None => return,
        },
        // The upload and pubsub services have no entities.
        ServiceKind::Upload
        | ServiceKind::Pubsub
        | ServiceKind::Proxy65
        | ServiceKind::Component => {
            if el.name != "presence" && !matches!(el.get_attr("type"), Some("error" | "result")) {
                crate::session::im::bounce(server, &el, Condition::ServiceUnavailable);
            }
            return;
        }
    };
    to_owner(server, kind, key, el, 0).await;
}

/// Runs `el` at the owner of `key`: here, or on the owner's node (acked;
/// tried again with the current membership until one answers).
async fn to_owner(server: &Server, kind: ServiceKind, key: &str, el: Element, hops: u32) {
    let store = &server.storage.store;
    let me = store.node_id();
    let mut xml: Option<Vec<u8>> = None;
    let since = Instant::now();
    loop {
        let node = owner(server, key);
        if (node == me || hops >= MAX_HOPS) && server.services.arbiters.get().is_some() {
            local(server, kind, key, el);
            return;
        }
        if node == me {
            if since.elapsed() >= OWNER_PATIENCE {
                crate::session::im::bounce(server, &el, Condition::ServiceUnavailable);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // Not ours (any more): an actor left here from an earlier
        // membership goes, so it cannot answer with stale state later.
        match kind {
            ServiceKind::Muc => server.services.muc.stop(key),
            ServiceKind::Upload
            | ServiceKind::Pubsub
            | ServiceKind::Proxy65
            | ServiceKind::Component => {}
        }
        let stanza = xml
            .get_or_insert_with(|| el.to_stream_xml(NS_CLIENT).into_bytes())
            .clone();
        let env = Envelope {
            kind: KIND_SERVICE,
            to: el.get_attr("to").unwrap_or_default().to_owned(),
            from: el.get_attr("from").unwrap_or_default().to_owned(),
            stanza,
            hops: hops + 1,
            ..Envelope::default()
        };
        match store.deliver_acked(node, env).await {
            Ok(DeliveryResult::Delivered) => return,
            r => {
                tracing::debug!(node, key, result = ?r, "service owner did not take a stanza");
                if since.elapsed() >= OWNER_PATIENCE {
                    crate::session::im::bounce(server, &el, Condition::RemoteServerTimeout);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Hands a stanza to the service's actor on this node; false when the
/// node does not run actors yet (it is starting).
fn local(server: &Server, kind: ServiceKind, key: &str, el: Element) -> bool {
    match kind {
        ServiceKind::Muc => server.services.muc.deliver(server, key, el),
        // No entities: nothing is ever sent to one.
        ServiceKind::Upload
        | ServiceKind::Pubsub
        | ServiceKind::Proxy65
        | ServiceKind::Component => false,
    }
}

/// A service envelope from another node: run here if this node owns the
/// entity, else forward it once more (non-blocking: called on the
/// delivery stream's task).
pub fn from_node(server: &Server, env: Envelope) -> DeliveryResult {
    let Ok(xml) = std::str::from_utf8(&env.stanza) else {
        return DeliveryResult::Refused;
    };
    let Some(el) = crate::stanza::parse_serialised(xml) else {
        return DeliveryResult::Refused;
    };
    let to = el.get_attr("to").unwrap_or_default().to_owned();
    let Some((kind, Some(key))) = entity_of(server, &to) else {
        return DeliveryResult::Refused;
    };
    let node = owner(server, key);
    let me = server.storage.store.node_id();
    if node == me || env.hops >= MAX_HOPS {
        return if local(server, kind, key, el) {
            DeliveryResult::Delivered
        } else {
            DeliveryResult::Refused
        };
    }
    match kind {
        ServiceKind::Muc => server.services.muc.stop(key),
        ServiceKind::Upload
        | ServiceKind::Pubsub
        | ServiceKind::Proxy65
        | ServiceKind::Component => {}
    }
    let fwd = Envelope {
        hops: env.hops + 1,
        ..env
    };
    match server.storage.store.deliver(node, fwd) {
        Ok(()) => DeliveryResult::Delivered,
        Err(_) => DeliveryResult::Refused,
    }
}

/// A stanza serialised once for many recipients: the text before and
/// after the value of its `to` attribute.
pub struct Spliced {
    pub prefix: Arc<str>,
    pub suffix: Arc<str>,
}

impl Spliced {
    /// `el` without a `to`, serialised with its namespace declared so the
    /// parts before and after `to` can be put around each recipient.
    pub fn of(el: &Element) -> Spliced {
        use crate::xml::{Node, escape_into};
        let mut prefix = String::with_capacity(el.name.len() + el.ns.len() + 20);
        prefix.push('<');
        prefix.push_str(&el.name);
        prefix.push_str(" xmlns=\"");
        escape_into(&mut prefix, &el.ns, true);
        prefix.push_str("\" to=\"");
        let mut suffix = String::with_capacity(256);
        suffix.push('"');
        for (k, v) in el.attrs.iter().filter(|(k, _)| k != "to") {
            suffix.push(' ');
            suffix.push_str(k);
            suffix.push_str("=\"");
            escape_into(&mut suffix, v, true);
            suffix.push('"');
        }
        if el.children.is_empty() {
            suffix.push_str("/>");
        } else {
            suffix.push('>');
            for c in &el.children {
                match c {
                    Node::Element(e) => e.write_to(&mut suffix, &el.ns),
                    Node::Text(t) => escape_into(&mut suffix, t, false),
                }
            }
            suffix.push_str("</");
            suffix.push_str(&el.name);
            suffix.push('>');
        }
        Spliced {
            prefix: prefix.into(),
            suffix: suffix.into(),
        }
    }

    /// The stanza addressed to `to` (a normalised JID).
    pub fn to(&self, to: &str) -> Arc<str> {
        let mut s = String::with_capacity(self.prefix.len() + to.len() + self.suffix.len() + 8);
        s.push_str(&self.prefix);
        crate::xml::escape_into(&mut s, to, true);
        s.push_str(&self.suffix);
        s.into()
    }

    /// The stanza without a `to` (what an archive keeps).
    pub fn without_to(&self) -> String {
        let head = self.prefix.strip_suffix(" to=\"").unwrap_or(&self.prefix);
        let tail = self.suffix.strip_prefix('"').unwrap_or(&self.suffix);
        let mut s = String::with_capacity(head.len() + tail.len());
        s.push_str(head);
        s.push_str(tail);
        s
    }
}

/// A fan-out envelope from another node: one stanza for several of this
/// node's sessions (`stanza`/`suffix` around each recipient's JID).
pub fn fanout_from_node(server: &Server, env: Envelope) -> DeliveryResult {
    let (Ok(prefix), Ok(suffix)) = (
        std::str::from_utf8(&env.stanza),
        std::str::from_utf8(&env.suffix),
    ) else {
        return DeliveryResult::Refused;
    };
    let mut any = false;
    for to in &env.recipients {
        let (bare, Some(res)) = split(to) else {
            continue;
        };
        let mut s = String::with_capacity(prefix.len() + to.len() + suffix.len() + 8);
        s.push_str(prefix);
        crate::xml::escape_into(&mut s, to, true);
        s.push_str(suffix);
        let xml: Arc<str> = s.into();
        let here = server
            .router
            .handle(bare, res)
            .is_some_and(|h| h.send_shared(&xml));
        // Not (or no longer) here: the session may have resumed on another
        // node (XEP-0198) since the room looked it up; the router knows.
        any |= here
            || match server.router.find(bare, res) {
                Some(at @ At::Node { .. }) => server.router.send(bare, res, &at, &xml),
                _ => false,
            };
    }
    if any || env.recipients.is_empty() {
        DeliveryResult::Delivered
    } else {
        DeliveryResult::NoSession
    }
}

/// A stanza to an upload service (`upload.<domain>`): IQ requests are
/// answered here (any node: slots and quotas are in the replicated store);
/// a message gets `<service-unavailable/>`; presence and answers end here.
async fn upload_stanza(server: &Server, el: Element) {
    let request = el.name == "iq" && matches!(el.get_attr("type"), Some("get" | "set"));
    if !request {
        if el.name == "message" && el.get_attr("type") != Some("error") {
            crate::session::im::bounce(server, &el, Condition::ServiceUnavailable);
        }
        return;
    }
    let to = el.get_attr("to").unwrap_or_default();
    let Some(parent) = server.services.get(split(to).0).map(|h| h.parent.clone()) else {
        return;
    };
    let from = el.get_attr("from").unwrap_or_default().to_owned();
    let reply = crate::modules::upload::handle_iq(server, split(&from).0, &parent, &el).await;
    let _ = crate::session::im::deliver_to_full(server, &from, reply);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_keys_of_a_node_that_goes() {
        let all = [1u64, 2, 3];
        let mut moved = 0;
        for i in 0..300 {
            let key = format!("room{i}@conference.localhost");
            let before = owner_among(&all, &key).unwrap();
            let after = owner_among(&[1, 3], &key).unwrap();
            if before != 2 {
                assert_eq!(before, after, "{key} moved though its owner stayed");
            } else {
                moved += 1;
            }
        }
        // Roughly a third each.
        assert!((60..=140).contains(&moved), "{moved}");
    }

    #[test]
    fn spliced_puts_the_recipient_in_and_keeps_the_rest() {
        let el = Element::new("message", NS_CLIENT)
            .attr("from", "r@c/n")
            .attr("to", "old@x")
            .attr("type", "groupchat")
            .child(Element::new("body", NS_CLIENT).text("a<b"));
        let s = Spliced::of(&el);
        assert_eq!(
            &*s.to("u@d/\"r"),
            "<message xmlns=\"jabber:client\" to=\"u@d/&quot;r\" from=\"r@c/n\" type=\"groupchat\"><body>a&lt;b</body></message>"
        );
        assert_eq!(
            s.without_to(),
            "<message xmlns=\"jabber:client\" from=\"r@c/n\" type=\"groupchat\"><body>a&lt;b</body></message>"
        );
    }
}
