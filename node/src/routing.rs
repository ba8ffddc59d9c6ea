//! The replicated routing table and presence registry, and delivery to
//! sessions on other nodes.
//!
//! Every bound session has a route in the store (`starling_cluster::routes`:
//! `bare \0 resource` -> node id ++ payload), written through Raft when it
//! binds, when its presence or roster interest changes, and removed when
//! it ends. The payload is the session id followed by [`RouteInfo`] in
//! MessagePack: what RFC 6121 delivery needs to know about a resource on
//! another node (availability, priority, last presence, roster interest).
//!
//! The local [`Router`](crate::router::Router) stays the fast path: a node
//! looks at the table only when the cluster has other members, reading its
//! own replica (no network). Stanzas for a session on another node go over
//! that node's delivery stream already serialised; the receiving node
//! pushes them into the session's mailbox as they are ([`NodeDelivery`]).
//!
//! When routes are dropped in bulk (a node's lease lapsed, or a restarted
//! node clears what its previous run left), every node tells its own
//! sessions that those users went unavailable ([`NodeEvents`]).

use crate::server::Server;
use crate::session::im;
use crate::stanza::NS_CLIENT;
use crate::storage::Subscription;
use crate::xml::Element;
use serde::{Deserialize, Serialize};
use starling_cluster::routes::{self, Route};
use starling_cluster::{
    ClusterEvents, DeliveryResult, Envelope, LocalDelivery, Op, OpResult, StoreError,
};
use std::sync::{Arc, Weak};

/// What the routing table knows of a session besides its node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// Sent initial presence and not yet unavailable.
    pub available: bool,
    pub priority: i32,
    /// Asked for the roster (gets roster pushes).
    pub interested: bool,
    /// The last available presence it broadcast, serialised.
    pub presence: Option<String>,
}

/// A session bound on another node.
#[derive(Clone, Debug)]
pub struct RemoteResource {
    pub node: u64,
    pub resource: String,
    pub session: u64,
    pub info: RouteInfo,
}

impl RemoteResource {
    /// Its last available presence, if it is available.
    pub fn presence(&self) -> Option<Element> {
        if !self.info.available {
            return None;
        }
        self.info.presence.as_deref().and_then(im::parse_stored)
    }
}

/// `session id ++ info`.
fn payload(session: u64, info: &RouteInfo) -> Vec<u8> {
    let mut p = session.to_be_bytes().to_vec();
    p.extend(rmp_serde::to_vec_named(info).expect("route info serialises"));
    p
}

fn parse_payload(p: &[u8]) -> Option<(u64, RouteInfo)> {
    let (id, rest) = p.split_at_checked(8)?;
    let session = u64::from_be_bytes(id.try_into().ok()?);
    Some((session, rmp_serde::from_slice(rest).ok()?))
}

/// The prefix of the stored value of a route this session owns.
fn owner_prefix(node: u64, session: u64) -> Vec<u8> {
    let mut p = node.to_be_bytes().to_vec();
    p.extend_from_slice(&session.to_be_bytes());
    p
}

/// Records a newly bound session. A session of the same full JID on
/// another node is asked to close with `<conflict/>` (RFC 6120 §7.7.2.2:
/// the new one replaces it).
pub async fn bind(
    server: &Server,
    bare: &str,
    resource: &str,
    session: u64,
) -> Result<(), StoreError> {
    let store = &server.storage.store;
    let me = store.node_id();
    if store.has_peers()
        && let Some(v) = store.get(routes::ROUTES, &routes::route_key(bare, resource))?
        && let Some((node, p)) = routes::parse_route_value(&v)
        && node != me
        && let Some((old, _)) = parse_payload(p)
    {
        let _ = store.deliver(
            node,
            Envelope {
                to: format!("{bare}/{resource}"),
                session_id: old,
                close: "conflict".into(),
                ..Envelope::default()
            },
        );
    }
    let ops = routes::put(me, bare, resource, &payload(session, &RouteInfo::default()));
    server.storage.write(ops).await.map(drop)
}

/// Records a session's new presence or roster interest, if the route is
/// still this session's (a newer session elsewhere may have taken it).
pub async fn update(
    server: &Server,
    bare: &str,
    resource: &str,
    session: u64,
    info: &RouteInfo,
) -> Result<(), StoreError> {
    let me = server.storage.store.node_id();
    let key = routes::route_key(bare, resource);
    let ops = vec![
        Op::Expect {
            space: routes::ROUTES.into(),
            key: key.clone(),
            prefix: owner_prefix(me, session),
        },
        Op::Put {
            space: routes::ROUTES.into(),
            key,
            value: routes::route_value(me, &payload(session, info)),
        },
    ];
    if let Some(OpResult::Mismatch) = server.storage.write(ops).await?.first() {
        tracing::debug!("route taken over by a newer session; not updated");
    }
    Ok(())
}

/// Writes a local session's current state (availability, priority, last
/// presence, roster interest) from the router to the table.
pub async fn publish(server: &Server, bare: &str, session: u64) -> Result<(), StoreError> {
    let found = server.router.with_resources(bare, |rs| {
        rs.iter().find(|r| r.handle.id == session).map(|r| {
            let info = RouteInfo {
                available: r.available,
                priority: r.priority,
                interested: r.interested,
                presence: r.presence.as_ref().map(|p| p.to_stream_xml(NS_CLIENT)),
            };
            (r.resource.clone(), info)
        })
    });
    match found {
        Some((resource, info)) => update(server, bare, &resource, session, &info).await,
        None => Ok(()),
    }
}

/// Removes an ended session's route if it still owns it; `index` also
/// removes this node's index entry for the full JID (when no newer local
/// session of the same resource uses it). `extra` goes in the same write.
pub async fn unbind(
    server: &Server,
    bare: &str,
    resource: &str,
    session: u64,
    index: bool,
    extra: Option<Op>,
) -> Result<(), StoreError> {
    let me = server.storage.store.node_id();
    let mut ops: Vec<Op> = extra.into_iter().collect();
    ops.push(Op::DeleteIf {
        space: routes::ROUTES.into(),
        key: routes::route_key(bare, resource),
        prefix: owner_prefix(me, session),
    });
    if index {
        ops.push(routes::delete_index(me, bare, resource));
    }
    server.storage.write(ops).await.map(drop)
}

/// Drops every route this node left from an earlier run (it crashed, or
/// was stopped before its sessions' routes were removed): the contacts of
/// those users are told they went unavailable. Run at start, before the
/// listeners.
pub async fn clear_own_routes(server: &Server) -> Result<(), StoreError> {
    let store = &server.storage.store;
    let me = store.node_id();
    if store.count_prefix(routes::NODE_ROUTES, &me.to_be_bytes())? == 0 {
        return Ok(());
    }
    // Before any session binds here (the drop takes every route naming
    // this node), so wait for a quorum: a whole cluster restarting comes
    // up node by node.
    loop {
        match server.storage.write(vec![routes::drop_node(me)]).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, "waiting for a quorum to clear this node's old routes");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The sessions of `bare` on other nodes, from this node's replica (empty
/// while the cluster has no other member).
pub fn remote(server: &Server, bare: &str) -> Vec<RemoteResource> {
    let store = &server.storage.store;
    if !store.has_peers() {
        return Vec::new();
    }
    let me = store.node_id();
    let Ok(pairs) = store.scan_prefix(routes::ROUTES, &routes::bare_prefix(bare)) else {
        return Vec::new();
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| {
            let r = Route::parse(&k, &v)?;
            if r.node_id == me {
                return None;
            }
            let (session, info) = parse_payload(&r.payload)?;
            Some(RemoteResource {
                node: r.node_id,
                resource: r.resource,
                session,
                info,
            })
        })
        .collect()
}

/// The session of `bare/resource` if it is bound on another node.
pub fn remote_one(server: &Server, bare: &str, resource: &str) -> Option<RemoteResource> {
    let store = &server.storage.store;
    if !store.has_peers() {
        return None;
    }
    let v = store
        .get(routes::ROUTES, &routes::route_key(bare, resource))
        .ok()??;
    let (node, p) = routes::parse_route_value(&v)?;
    if node == store.node_id() {
        return None;
    }
    let (session, info) = parse_payload(p)?;
    Some(RemoteResource {
        node,
        resource: resource.to_owned(),
        session,
        info,
    })
}

fn envelope(bare: &str, r: &RemoteResource, xml: &str) -> Envelope {
    Envelope {
        to: format!("{bare}/{}", r.resource),
        session_id: r.session,
        stanza: xml.as_bytes().to_vec(),
        ..Envelope::default()
    }
}

/// Queues a serialised stanza for a remote session without waiting for
/// its answer: false when the queue to that node is full or it is gone.
pub fn send(server: &Server, bare: &str, r: &RemoteResource, xml: &str) -> bool {
    server
        .storage
        .store
        .deliver(r.node, envelope(bare, r, xml))
        .is_ok()
}

/// Sends a serialised stanza to a remote session and waits for that
/// node's answer: true only when it reached the session's mailbox.
pub async fn send_acked(server: &Server, bare: &str, r: &RemoteResource, xml: &str) -> bool {
    matches!(
        server
            .storage
            .store
            .deliver_acked(r.node, envelope(bare, r, xml))
            .await,
        Ok(DeliveryResult::Delivered)
    )
}

/// Takes the stanzas other nodes route to this node's sessions.
pub struct NodeDelivery(pub Weak<Server>);

impl LocalDelivery for NodeDelivery {
    fn deliver(&self, env: Envelope) -> DeliveryResult {
        let Some(server) = self.0.upgrade() else {
            return DeliveryResult::Refused;
        };
        let (bare, Some(resource)) = im::split(&env.to) else {
            return DeliveryResult::NoSession;
        };
        let Some(handle) = server
            .router
            .handle(bare, resource)
            .filter(|h| env.session_id == 0 || h.id == env.session_id)
        else {
            return DeliveryResult::NoSession;
        };
        if !env.close.is_empty() {
            handle.close(if env.close == "conflict" {
                "conflict"
            } else {
                "system-shutdown"
            });
            return DeliveryResult::Delivered;
        }
        let Ok(xml) = String::from_utf8(env.stanza) else {
            return DeliveryResult::Refused;
        };
        if handle.send_shared(&Arc::from(xml)) {
            DeliveryResult::Delivered
        } else {
            DeliveryResult::NoSession
        }
    }
}

/// Turns cluster events into presence for this node's sessions.
pub struct NodeEvents(pub Weak<Server>);

impl ClusterEvents for NodeEvents {
    fn node_expired(&self, node_id: u64) {
        let Some(server) = self.0.upgrade() else {
            return;
        };
        let store = &server.storage.store;
        let me = store.node_id();
        if node_id != me {
            return;
        }
        // The cluster gave up on this node (it was cut off, or stopped for
        // a moment): the routes of its sessions are gone, so those sessions
        // must end; their clients reconnect, through the load balancer, to
        // a node that can serve them. Sessions bound since (their routes
        // were written after the expiry) stay.
        let mut ended = 0;
        for bare in server.router.users() {
            for r in server.router.resources(&bare) {
                let owned = store
                    .get(routes::ROUTES, &routes::route_key(&bare, &r.resource))
                    .ok()
                    .flatten()
                    .is_some_and(|v| v.starts_with(&owner_prefix(me, r.handle.id)));
                if !owned {
                    r.handle.close("system-shutdown");
                    ended += 1;
                }
            }
        }
        if ended > 0 {
            tracing::warn!(
                sessions = ended,
                "this node was expired by the cluster; ended its sessions"
            );
        }
    }

    fn routes_dropped(&self, dropped: Vec<Route>) {
        let Some(server) = self.0.upgrade() else {
            return;
        };
        let mut notified = 0u64;
        for r in dropped {
            let Some((_, info)) = parse_payload(&r.payload) else {
                continue;
            };
            if !info.available {
                continue;
            }
            let unavailable = Element::new("presence", NS_CLIENT)
                .attr("from", format!("{}/{}", r.bare, r.resource))
                .attr("type", "unavailable");
            // The user's contacts with a subscription from the user, and
            // the user's own other resources, on this node only: every
            // node does the same for its own sessions.
            let roster = server.storage.roster(&r.bare).unwrap_or_default();
            let contacts = roster
                .iter()
                .filter(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
                .map(|i| i.jid.as_str());
            for bare in contacts.chain(std::iter::once(r.bare.as_str())) {
                notified += im::send_to_local_available(&server, bare, &unavailable) as u64;
            }
        }
        if notified > 0 {
            tracing::info!(
                notified,
                "told contacts that users of a lost node went unavailable"
            );
        }
    }
}
