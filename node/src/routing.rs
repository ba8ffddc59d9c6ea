//! Writes to the replicated routing table and presence registry, and
//! what other nodes hand this one.
//!
//! Every bound session has a route in the store (`starling_cluster::routes`,
//! layout and reads in [`crate::router::table`]), written through Raft when
//! it binds (by its user actor), when its presence or roster interest
//! changes, and removed when it ends. Stanzas other nodes route to this
//! node's sessions arrive through [`NodeDelivery`] and go into the session
//! actor's mailbox as they are. What the cluster reports about nodes and
//! dropped routes is turned into presence by `session::cluster_events`.

use crate::router::table::{RouteInfo, owner_prefix, parse_payload, payload};
use crate::server::Server;
use crate::stanza::{NS_CLIENT, StreamCondition};
use crate::storage::LastActivity;
use starling_cluster::routes;
use starling_cluster::{DeliveryResult, Envelope, LocalDelivery, StoreError};
use std::sync::{Arc, Weak};

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
                close: StreamCondition::Conflict.name().into(),
                ..Envelope::default()
            },
        );
    }
    let route = payload(session, &RouteInfo::default());
    server.storage.put_route(bare, resource, &route).await
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
    let owner = owner_prefix(me, session);
    let route = payload(session, info);
    if !server
        .storage
        .update_route(bare, resource, owner, &route)
        .await?
    {
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
/// session of the same resource uses it). The user's last activity, when
/// given, goes in the same write.
pub async fn unbind(
    server: &Server,
    bare: &str,
    resource: &str,
    session: u64,
    index: bool,
    last: Option<LastActivity>,
) -> Result<(), StoreError> {
    let owner = owner_prefix(server.storage.store.node_id(), session);
    server
        .storage
        .remove_route(bare, resource, owner, index, last)
        .await
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
        match server.storage.drop_own_routes().await {
            Ok(_) => return Ok(()),
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, "waiting for a quorum to clear this node's old routes");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Takes the stanzas other nodes route to this node's sessions.
pub struct NodeDelivery(pub Weak<Server>);

impl LocalDelivery for NodeDelivery {
    fn deliver(&self, env: Envelope) -> DeliveryResult {
        let Some(server) = self.0.upgrade() else {
            return DeliveryResult::Refused;
        };
        let (bare, Some(resource)) = crate::stanza::split(&env.to) else {
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
            // Another node asks: `conflict` (the full JID bound there) or
            // whatever else it names; unknown names end the stream as a
            // shutdown would.
            let condition =
                StreamCondition::from_name(&env.close).unwrap_or(StreamCondition::SystemShutdown);
            handle.close(condition);
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
