//! What the cluster reports, turned into what this node's sessions see:
//! when routes are dropped in bulk (a node's lease lapsed, or a restarted
//! node cleared what its previous run left), every node tells its own
//! sessions of the contacts that those users went unavailable; when the
//! cluster gave up on this node, the sessions whose routes went end; when
//! the node joins a registry epoch, it writes its sessions there again.

use crate::router::At;
use crate::router::table::{owner_prefix, parse_payload};
use crate::server::Server;
use crate::session::im;
use crate::stanza::NS_CLIENT;
use crate::stanza::StreamCondition;
use crate::storage::Subscription;
use crate::xml::Element;
use starling_cluster::ClusterEvents;
use starling_cluster::routes::{self, Route};
use std::sync::Weak;

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
        // Without a registry group now, nothing says which sessions were
        // written after the expiry: all end.
        let registry = store.registry_active();
        let mut ended = 0;
        for bare in server.router.users() {
            for r in server.router.resources(&bare) {
                let owned = registry
                    && store
                        .get(routes::ROUTES, &routes::route_key(&bare, &r.resource))
                        .ok()
                        .flatten()
                        .is_some_and(|v| v.starts_with(&owner_prefix(me, r.handle.id)));
                if !owned {
                    r.handle.close(StreamCondition::SystemShutdown);
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

    fn registry_reset(&self, epoch: u64) {
        let Some(server) = self.0.upgrade() else {
            return;
        };
        tokio::spawn(async move { crate::routing::republish(&server, epoch).await });
    }

    fn routes_dropped(&self, dropped: Vec<Route>) {
        let Some(server) = self.0.upgrade() else {
            return;
        };
        let mut notified = 0u64;
        let mut gone: Vec<String> = Vec::new();
        for r in dropped {
            let Some((old, info)) = parse_payload(&r.payload) else {
                continue;
            };
            // Every node with the service looks (not only those running
            // rooms now): a room that moves here meanwhile must know which
            // occupants are held (below).
            if server.config.muc.enabled && server.router.find(&r.bare, &r.resource).is_none() {
                gone.push(format!("{}/{}", r.bare, r.resource));
            }
            if !info.available {
                continue;
            }
            // The full JID is bound again (its client reconnected at once):
            // the new session's presence already went out and stands; an
            // unavailable for the old one, arriving after it, would undo it.
            let rebound = match server.router.find(&r.bare, &r.resource) {
                Some(At::Here(h)) => r.node_id != server.storage.store.node_id() || h.id != old,
                Some(At::Node { node, session }) => node != r.node_id || session != old,
                None => false,
            };
            if rebound {
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
        if gone.is_empty() {
            return;
        }
        // Rooms running here let those sessions' occupants go, unless a
        // session was resumed on another node (XEP-0198) and its new route
        // is committed but not yet applied here: decided on a caught-up
        // registry replica (bounded wait; only when a node was lost).
        //
        // A session that may still be resumed (its stream management record
        // is live) is held instead, for its resumption window, as a session
        // whose connection broke is on a live node: its occupants stay, and
        // it is let go only if no route for it appeared by the window's end.
        // Without that hold there was a race: the dead node led the registry
        // group, so the route the resuming node writes waited for the next
        // leader together with this drop, and when the drop was committed
        // first the rooms let a session go that its client had resumed
        // already (`<resumed/>` is sent before the route is written), and the
        // occupant was seen leaving, and got none of the room's messages.
        tokio::spawn(async move {
            // Held first (a room that reloads meanwhile keeps them), then
            // looked at on a caught-up replica.
            let mut windows = crate::session::resume::resumable(&server, &gone);
            let rooms = &server.services.muc;
            let now = tokio::time::Instant::now();
            let until = |secs: u32| now + std::time::Duration::from_secs(u64::from(secs));
            for (full, secs) in &windows {
                rooms.hold(full, until(*secs).into_std());
            }
            if let Err(e) = server.storage.store.registry_barrier().await {
                tracing::debug!(error = %e, "registry barrier before letting occupants go");
            }
            let mut at_once = Vec::new();
            for full in gone {
                if routed(&server, &full) {
                    // Resumed elsewhere already: stays.
                    if windows.remove(&full).is_some() {
                        rooms.unhold(&full);
                    }
                } else if !windows.contains_key(&full) {
                    at_once.push(full);
                }
            }
            rooms.sessions_gone(at_once);
            if windows.is_empty() {
                return;
            }
            let mut held: Vec<(tokio::time::Instant, String)> = windows
                .into_iter()
                .map(|(full, secs)| (until(secs), full))
                .collect();
            tracing::info!(
                sessions = held.len(),
                "sessions of a lost node may be resumed: their rooms keep them meanwhile"
            );
            held.sort();
            for (until, full) in held {
                tokio::time::sleep_until(until).await;
                if let Err(e) = server.storage.store.registry_barrier().await {
                    tracing::debug!(error = %e, "registry barrier before letting occupants go");
                }
                rooms.unhold(&full);
                if !routed(&server, &full) {
                    rooms.sessions_gone(vec![full]);
                }
            }
        });
    }
}

/// Whether the full JID `full` has a route (here or on another node).
fn routed(server: &Server, full: &str) -> bool {
    let (bare, resource) = full.split_once('/').unwrap_or((full, ""));
    server.router.find(bare, resource).is_some()
}
