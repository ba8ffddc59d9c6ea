//! Writes to the replicated routing table and presence registry, and
//! what other nodes hand this one.
//!
//! In a cluster every bound session has a route in the registry group
//! (`starling_cluster::routes`, layout and reads in
//! [`crate::router::table`]; Raft in memory, no fsync), written when it
//! binds (by its user actor), when its presence or roster interest changes,
//! and removed when it ends. A node without peers writes none: its router
//! answers from memory. When the node joins a registry epoch (the first
//! peer appeared, it restarted, or the registry was re-founded) it writes
//! all its sessions again (`republish`). Stanzas other nodes route to this
//! node's sessions arrive through [`NodeDelivery`] and go into the session
//! actor's mailbox as they are. What the cluster reports about nodes and
//! dropped routes is turned into presence by `session::cluster_events`.

use crate::router::ToSession;
use crate::router::table::{RouteInfo, owner_prefix, parse_payload, payload};
use crate::server::Server;
use crate::stanza::{NS_CLIENT, StreamCondition};
use crate::storage::LastActivity;
use starling_cluster::routes;
use starling_cluster::{DeliveryResult, Envelope, LocalDelivery, StoreError};
use std::sync::{Arc, Weak};

/// A newly bound session: a session of the same full JID on another node
/// is asked to close with `<conflict/>` (RFC 6120 §7.7.2.2: the new one
/// replaces it). Its own route is written when it is first needed
/// ([`publish`]): usually together with its initial presence, so a login
/// costs one registry write, not two.
pub fn bind(server: &Server, bare: &str, resource: &str) -> Result<(), StoreError> {
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
    Ok(())
}

/// Ends the sessions of `bare` (only `resource`'s when given) wherever
/// they are bound, with `condition`: this node's through their actors;
/// every other member node is asked to close its own (a close request
/// for the bare or full JID, any session), so a session there that has
/// not published its route yet ends too. Returns how many sessions were
/// known to be closed: this node's and the other nodes' published ones.
pub fn close_everywhere(
    server: &Server,
    bare: &str,
    resource: Option<&str>,
    condition: StreamCondition,
) -> usize {
    let mut n = 0;
    for r in server.router.resources(bare) {
        if resource.is_none_or(|x| *r.resource == *x) {
            r.handle.close(condition);
            n += 1;
        }
    }
    let store = &server.storage.store;
    if !store.has_peers() {
        return n;
    }
    n += crate::router::table::remote(store, bare)
        .iter()
        .filter(|r| resource.is_none_or(|x| x == r.resource))
        .count();
    let to = match resource {
        Some(r) => format!("{bare}/{r}"),
        None => bare.to_owned(),
    };
    let me = store.node_id();
    for m in store.status().members.iter().filter(|m| m.node_id != me) {
        let _ = store.deliver(
            m.node_id,
            Envelope {
                to: to.clone(),
                close: condition.name().into(),
                ..Envelope::default()
            },
        );
    }
    n
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
/// presence, roster interest) from the router to the table: the route
/// itself the first time (`published` false), else an update of it.
pub async fn publish(
    server: &Server,
    bare: &str,
    session: u64,
    published: &mut bool,
) -> Result<(), StoreError> {
    let found = server.router.with_resources(bare, |rs| {
        rs.iter()
            .find(|r| r.handle.id == session)
            .map(|r| (r.resource.clone(), route_info(r)))
    });
    let Some((resource, info)) = found else {
        return Ok(());
    };
    if *published {
        return update(server, bare, &resource, session, &info).await;
    }
    let route = payload(session, &info);
    server.storage.put_route(bare, &resource, &route).await?;
    // Without a registry group nothing was written: the node's sessions
    // are all written when it joins one (`republish`).
    *published = server.storage.store.registry_active();
    Ok(())
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

/// Sessions written per registry write when a node re-publishes them.
const REPUBLISH_BATCH: usize = 256;

/// Writes the route of every session of this node into registry `epoch`
/// (this node just joined it, or founded it: it holds none of them), then
/// marks the node ready there. A session that ended meanwhile has its route
/// removed again, so none is left stale. Gives up when the node moved to
/// another epoch (that one's reset publishes again).
pub async fn republish(server: &Server, epoch: u64) {
    let store = &server.storage.store;
    let me = store.node_id();
    let mut tries = 0u32;
    loop {
        match republish_once(server, me)
            .await
            .and(store.registry_ready(epoch).await)
        {
            Ok(()) => {
                // Resumable sessions' records (XEP-0198) were in the old
                // epoch too: each session writes its own again.
                for e in server.resumable.entries() {
                    e.close.do_send(ToSession::Checkpoint);
                }
                return;
            }
            Err(e) => {
                tries += 1;
                if !store.registry_active() || tries >= 20 {
                    tracing::warn!(epoch, error = %e, "registry: re-publishing sessions failed");
                    return;
                }
                tracing::debug!(epoch, error = %e, "registry: re-publishing again");
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    }
}

async fn republish_once(server: &Server, me: u64) -> Result<(), StoreError> {
    let mut written: Vec<(String, Arc<str>, u64)> = Vec::new();
    let mut ops = Vec::new();
    let mut in_batch = 0;
    for bare in server.router.users() {
        let routes: Vec<(Arc<str>, u64, RouteInfo)> = server.router.with_resources(&bare, |rs| {
            rs.iter()
                .map(|r| (r.resource.clone(), r.handle.id, route_info(r)))
                .collect()
        });
        for (resource, session, info) in routes {
            ops.extend(routes::put(me, &bare, &resource, &payload(session, &info)));
            written.push((bare.clone(), resource, session));
            in_batch += 1;
            if in_batch == REPUBLISH_BATCH {
                server.storage.store.write(std::mem::take(&mut ops)).await?;
                in_batch = 0;
            }
        }
    }
    if !ops.is_empty() {
        server.storage.store.write(ops).await?;
    }
    // This node's components (XEP-0114): a new epoch starts without them.
    // One that connected to another node meanwhile keeps that claim; this
    // connection then yields to it.
    for (domain, id) in server.services.components.connected() {
        if !server.storage.claim_component(&domain, id).await?
            && server.storage.component_route(&domain) != Some((me, id))
            && let Some(h) = server.services.components.handle(&domain)
        {
            h.close(StreamCondition::Conflict);
        }
    }
    // Sessions that ended while their route was being written: their own
    // removal may have come first.
    for (bare, resource, session) in written {
        if server
            .router
            .handle(&bare, &resource)
            .is_none_or(|h| h.id != session)
        {
            let owner = owner_prefix(me, session);
            let index = server.router.handle(&bare, &resource).is_none();
            server
                .storage
                .remove_route(&bare, &resource, owner, index, None)
                .await?;
        }
    }
    Ok(())
}

/// What the registry says of a local session.
fn route_info(r: &crate::router::Resource) -> RouteInfo {
    RouteInfo {
        available: r.available,
        priority: r.priority,
        interested: r.interested,
        blocklist: r.blocklist,
        carbons: r.carbons,
        presence: r.presence.as_ref().map(|p| p.to_stream_xml(NS_CLIENT)),
    }
}

/// Takes the stanzas other nodes route to this node's sessions.
pub struct NodeDelivery(pub Weak<Server>);

impl LocalDelivery for NodeDelivery {
    fn deliver(&self, env: Envelope) -> DeliveryResult {
        let Some(server) = self.0.upgrade() else {
            return DeliveryResult::Refused;
        };
        match env.kind {
            crate::services::KIND_SERVICE => return crate::services::from_node(&server, env),
            crate::services::KIND_FANOUT => {
                return crate::services::fanout_from_node(&server, env);
            }
            crate::services::component::KIND_COMPONENT => {
                return crate::services::component::from_node(&server, env);
            }
            crate::modules::blocking::KIND_BLOCKLIST => {
                return crate::modules::blocking::from_node(&server, &env);
            }
            crate::modules::pep::remote::KIND_PEP_REMOTE => {
                return crate::modules::pep::remote::from_node(&server, &env);
            }
            _ => {}
        }
        let (bare, Some(resource)) = crate::stanza::split(&env.to) else {
            // A close for a bare JID (`routing::close_everywhere`): every
            // session of the user here.
            if !env.close.is_empty() && env.close != crate::session::resume::RELEASE {
                let condition = StreamCondition::from_name(&env.close)
                    .unwrap_or(StreamCondition::SystemShutdown);
                let (bare, _) = crate::stanza::split(&env.to);
                let sessions = server.router.resources(bare);
                for r in &sessions {
                    r.handle.close(condition);
                }
                if !sessions.is_empty() {
                    return DeliveryResult::Delivered;
                }
            }
            return DeliveryResult::NoSession;
        };
        let Some(handle) = server
            .router
            .handle(bare, resource)
            .filter(|h| env.session_id == 0 || h.id == env.session_id)
        else {
            return DeliveryResult::NoSession;
        };
        if env.close == crate::session::resume::RELEASE {
            let h = std::str::from_utf8(&env.stanza)
                .ok()
                .and_then(|h| h.parse().ok());
            return match h {
                Some(h) => {
                    handle.release(h);
                    DeliveryResult::Delivered
                }
                None => DeliveryResult::Refused,
            };
        }
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
