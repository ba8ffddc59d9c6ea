//! XEP-0114 external components, seen from routing: which connection
//! serves a component domain (one in the whole cluster), and delivery of a
//! stanza to it, wherever it is.
//!
//! A component is configured (`[components.secrets]`) as a hosted service
//! of kind [`ServiceKind::Component`](super::ServiceKind), so
//! `session::im::destination` names it like any service and every path
//! that routes to a service ends in [`super::route`], which hands it here.
//! The connection itself is a session actor (`session::component`); its
//! [`SessionHandle`] is in [`Components`] on the node it connected to, and
//! the registry group holds `domain -> node, connection`
//! (`starling_cluster::routes::COMPONENTS`) so every node finds it. A
//! stanza for a component of another node travels on the node-to-node
//! delivery stream as an envelope of kind [`KIND_COMPONENT`]. Node leases
//! drop a dead node's component routes with its sessions' routes.
//!
//! A component that is not connected is `<service-unavailable/>` for
//! what needs an answer (RFC 6120 §8.3.3.19: the entity is known here but
//! does not provide the service now; XEP-0114 §3 lets the server answer
//! for the component).

use crate::router::SessionHandle;
use crate::server::Server;
use crate::stanza::{Condition, NS_CLIENT, split};
use crate::xml::Element;
use dashmap::DashMap;
use starling_cluster::{DeliveryResult, Envelope};
use std::sync::Arc;

/// Envelope kind of a stanza for a component connected to the receiving
/// node (see `cluster.proto`).
pub const KIND_COMPONENT: u32 = 4;

/// The component connections of this node, by domain.
#[derive(Default)]
pub struct Components {
    local: DashMap<String, SessionHandle>,
}

impl Components {
    /// Takes `domain` for `handle`; false when a connection of this node
    /// holds it already.
    pub fn attach(&self, domain: &str, handle: SessionHandle) -> bool {
        match self.local.entry(domain.to_owned()) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(v) => {
                v.insert(handle);
                metrics::gauge!("starling_components_connected").increment(1.0);
                true
            }
        }
    }

    /// Lets `domain` go if connection `id` holds it.
    pub fn detach(&self, domain: &str, id: u64) -> bool {
        let gone = self.local.remove_if(domain, |_, h| h.id == id).is_some();
        if gone {
            metrics::gauge!("starling_components_connected").decrement(1.0);
        }
        gone
    }

    /// This node's connection for `domain`.
    pub fn handle(&self, domain: &str) -> Option<SessionHandle> {
        self.local.get(domain).map(|h| h.clone())
    }

    /// The components connected to this node: domain and connection id.
    pub fn connected(&self) -> Vec<(String, u64)> {
        self.local
            .iter()
            .map(|e| (e.key().clone(), e.value().id))
            .collect()
    }
}

/// Whether `domain` is a configured component's.
pub fn is_component(server: &Server, domain: &str) -> bool {
    server
        .services
        .get(domain)
        .is_some_and(|h| h.kind == super::ServiceKind::Component)
}

/// The component domain `to` (a JID) is at, if it is at one.
pub fn domain_of<'a>(server: &Server, to: &'a str) -> Option<&'a str> {
    let bare = split(to).0;
    let domain = bare.rsplit_once('@').map_or(bare, |(_, d)| d);
    is_component(server, domain).then_some(domain)
}

/// Where the component `domain` is connected.
enum Where {
    Here(SessionHandle),
    Node { node: u64, session: u64 },
    Nowhere,
}

fn locate(server: &Server, domain: &str) -> Where {
    if let Some(h) = server.services.components.handle(domain) {
        return Where::Here(h);
    }
    let store = &server.storage.store;
    if !store.has_peers() {
        return Where::Nowhere;
    }
    match server.storage.component_route(domain) {
        Some((node, session)) if node != store.node_id() => Where::Node { node, session },
        _ => Where::Nowhere,
    }
}

fn envelope(el: &Element, session: u64, xml: &str) -> Envelope {
    Envelope {
        kind: KIND_COMPONENT,
        to: el.get_attr("to").unwrap_or_default().to_owned(),
        from: el.get_attr("from").unwrap_or_default().to_owned(),
        session_id: session,
        stanza: xml.as_bytes().to_vec(),
        ..Envelope::default()
    }
}

/// Queues `el` (addressed to a component's domain or a JID at it) for the
/// component without waiting for another node's answer; false when it is
/// not connected (or cannot take more now).
pub fn send(server: &Server, domain: &str, el: &Element) -> bool {
    let sent = match locate(server, domain) {
        Where::Here(h) => h.send_shared(&el.to_stream_xml(NS_CLIENT).into()),
        Where::Node { node, session } => {
            let xml = el.to_stream_xml(NS_CLIENT);
            server
                .storage
                .store
                .deliver(node, envelope(el, session, &xml))
                .is_ok()
        }
        Where::Nowhere => false,
    };
    if sent {
        crate::hot_counter!("starling_component_stanzas_sent_total").increment(1);
    }
    sent
}

/// Queues a stanza serialised for `to` (a JID at a component) without
/// waiting; false when `to` is at no connected component. For senders that
/// serialise once for many recipients (a room's fan-out).
pub fn send_serialised(server: &Server, to: &str, xml: &Arc<str>) -> bool {
    let Some(domain) = domain_of(server, to) else {
        return false;
    };
    let sent = match locate(server, domain) {
        Where::Here(h) => h.send_shared(xml),
        Where::Node { node, session } => {
            let env = Envelope {
                kind: KIND_COMPONENT,
                to: to.to_owned(),
                session_id: session,
                stanza: xml.as_bytes().to_vec(),
                ..Envelope::default()
            };
            server.storage.store.deliver(node, env).is_ok()
        }
        Where::Nowhere => false,
    };
    if sent {
        crate::hot_counter!("starling_component_stanzas_sent_total").increment(1);
    }
    sent
}

/// Delivers `el` to its component and, for another node, waits for its
/// answer; hands the stanza back when the component is not connected.
pub async fn deliver(server: &Server, domain: &str, el: Element) -> Result<(), Element> {
    let mut at = locate(server, domain);
    let store = &server.storage.store;
    if matches!(at, Where::Nowhere) && store.has_peers() {
        // Not taken for gone on a lagging replica: a component that just
        // connected to another node may not be applied here yet.
        if store.registry_barrier().await.is_ok() {
            at = locate(server, domain);
        }
    }
    let sent = match at {
        Where::Here(h) => h.send_shared(&el.to_stream_xml(NS_CLIENT).into()),
        Where::Node { node, session } => {
            let xml = el.to_stream_xml(NS_CLIENT);
            matches!(
                server
                    .storage
                    .store
                    .deliver_acked(node, envelope(&el, session, &xml))
                    .await,
                Ok(DeliveryResult::Delivered)
            )
        }
        Where::Nowhere => false,
    };
    if sent {
        crate::hot_counter!("starling_component_stanzas_sent_total").increment(1);
        Ok(())
    } else {
        Err(el)
    }
}

/// Routes a stanza for a component (from `services::route`): delivered,
/// or, when the component is not connected, a message or request is
/// answered with `<service-unavailable/>`; presence and answers are
/// dropped (nobody waits for them).
pub async fn route(server: &Server, domain: &str, el: Element) {
    if let Err(el) = deliver(server, domain, el).await {
        bounce_unreachable(server, &el);
    }
}

/// The answer for a stanza its component did not get.
pub fn bounce_unreachable(server: &Server, el: &Element) {
    let answer = match el.name.as_str() {
        "message" => true,
        "iq" => matches!(el.get_attr("type"), Some("get" | "set")),
        _ => false,
    };
    if answer {
        metrics::counter!("starling_component_unavailable_total").increment(1);
        crate::session::im::bounce(server, el, Condition::ServiceUnavailable);
    }
}

/// A component envelope from another node: into the component's
/// connection if it is still the one named.
pub fn from_node(server: &Server, env: Envelope) -> DeliveryResult {
    let bare = split(&env.to).0;
    let domain = bare.rsplit_once('@').map_or(bare, |(_, d)| d);
    let Some(h) = server
        .services
        .components
        .handle(domain)
        .filter(|h| env.session_id == 0 || h.id == env.session_id)
    else {
        return DeliveryResult::NoSession;
    };
    let Ok(xml) = String::from_utf8(env.stanza) else {
        return DeliveryResult::Refused;
    };
    if h.send_shared(&Arc::from(xml)) {
        crate::hot_counter!("starling_component_stanzas_sent_total").increment(1);
        DeliveryResult::Delivered
    } else {
        DeliveryResult::NoSession
    }
}
