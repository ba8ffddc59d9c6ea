//! What applying writes tells the rest of the node: lease renewals (when
//! this replica applied them), expiries and bulk route drops; the
//! `ClusterEvents` trait the node implements to hear them; and the key layout
//! of the lease spaces those writes touch (`LEASES`, `EXPIRED`).
//!
//! The state machine reports here while it applies (`Observed`,
//! `Hooks::fire`), so nothing here may call the node or block: events are
//! queued, and `lease` hands them to the node from a task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::op::{Op, OpResult};
use crate::routes;

/// Space of leases: key node id (u64 big-endian), value the node's renewal
/// counter (u64 big-endian).
pub const LEASES: &str = "node_lease";
/// Space of expirations: key node id (u64 big-endian), value the leader's
/// wall clock (ms since the epoch) when it expired the node.
pub const EXPIRED: &str = "node_expired";

/// Implemented by the node: cluster events, called on a task of the
/// store (not while applying), in log order.
pub trait ClusterEvents: Send + Sync + 'static {
    /// Node `node_id` was expired (it stopped renewing its lease): its
    /// routes are already gone from the routing table; tell the contacts
    /// of its users. Called on every node when the expiry applies,
    /// including the expired node itself if it is alive after all (it
    /// should then end its sessions: their routes are gone). May be
    /// called again for an old expiry when a log is replayed at start, so
    /// it must be idempotent.
    fn node_expired(&self, node_id: u64);

    /// Routes were dropped in bulk (`routes::drop_node`: a node expired,
    /// or a restarted node cleared what its previous run left): the users
    /// of those sessions are gone, tell their contacts. Called on every
    /// node after the write applied, like `node_expired`; each node should
    /// tell only its own sessions, so that nobody is told twice.
    fn routes_dropped(&self, routes: Vec<routes::Route>) {
        let _ = routes;
    }

    /// This node became a member of registry epoch `epoch` (the registry
    /// was founded, re-founded, or this node joined it after a restart):
    /// the group holds none of this node's sessions. Write every local
    /// session's route again, then call `Store::registry_ready(epoch)`;
    /// until every live node did, readers wait before taking a user for
    /// offline. Called on a store task: spawn the work, do not block.
    fn registry_reset(&self, epoch: u64) {
        let _ = epoch;
    }
}

/// What the state machine reports to the node, in log order.
pub enum Event {
    Expired(u64),
    RoutesDropped(Vec<routes::Route>),
    RegistryReset(u64),
}

pub fn node_key(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

pub fn key_id(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

enum Seen {
    Renewed(u64),
    Expired(u64),
    RoutesDropped(Vec<routes::Route>),
}

/// What the state machine tells the lease logic as it applies writes.
pub struct Hooks {
    seen: Mutex<HashMap<u64, Instant>>,
    events: mpsc::UnboundedSender<Event>,
    /// Change counters of the key spaces somebody asked to follow
    /// ([`Hooks::space_version`]).
    versions: RwLock<HashMap<String, Arc<AtomicU64>>>,
}

/// Lease and expiry writes found in applied writes, reported after the
/// batch is durable.
#[derive(Default)]
pub struct Observed(Vec<Seen>);

impl Observed {
    /// Notes the lease writes of one applied write.
    pub fn write(&mut self, ops: &[Op], results: &[OpResult]) {
        if results
            .iter()
            .any(|r| matches!(r, OpResult::Aborted | OpResult::Exists | OpResult::Full))
        {
            return;
        }
        for (op, result) in ops.iter().zip(results) {
            if let (Op::DeleteIndexed { space, .. }, OpResult::Removed(removed)) = (op, result)
                && space == routes::ROUTES
                && !removed.is_empty()
            {
                let dropped = removed
                    .iter()
                    .filter_map(|(k, v)| routes::Route::parse(k, v))
                    .collect();
                self.0.push(Seen::RoutesDropped(dropped));
            }
            if let Op::Put { space, key, .. } = op {
                match (space.as_str(), key_id(key)) {
                    (LEASES, Some(id)) => self.0.push(Seen::Renewed(id)),
                    (EXPIRED, Some(id)) => self.0.push(Seen::Expired(id)),
                    _ => {}
                }
            }
        }
    }
}

impl Hooks {
    /// Also returns the receiving end of expiry events (unbounded, but
    /// expiries are rare: one per dead node).
    pub fn new() -> (Arc<Hooks>, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Hooks {
                seen: Mutex::default(),
                events: tx,
                versions: RwLock::default(),
            }),
            rx,
        )
    }

    pub fn fire(&self, observed: Observed) {
        let now = Instant::now();
        for e in observed.0 {
            match e {
                Seen::Renewed(id) => {
                    self.seen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id, now);
                }
                Seen::Expired(id) => {
                    self.seen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    let _ = self.events.send(Event::Expired(id));
                }
                Seen::RoutesDropped(r) => {
                    let _ = self.events.send(Event::RoutesDropped(r));
                }
            }
        }
    }

    /// The change counter of `space` on this replica: it grows after every
    /// applied batch that changed a key of the space (and after a snapshot
    /// was installed), once the change can be read. A cache of what a
    /// space holds stays valid while the counter it was read at does (read
    /// the counter first, then the space).
    pub fn space_version(&self, space: &str) -> Arc<AtomicU64> {
        if let Some(v) = self
            .versions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(space)
        {
            return v.clone();
        }
        self.versions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(space.to_owned())
            .or_default()
            .clone()
    }

    /// The counter of `space` if it is followed (for the state machine,
    /// before it writes a batch that changes the space).
    pub fn followed(&self, space: &str) -> Option<Arc<AtomicU64>> {
        self.versions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(space)
            .cloned()
    }

    /// Every followed space may have changed (a snapshot was installed).
    pub fn all_changed(&self) {
        for v in self
            .versions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            v.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Queues an event that did not come from applying a write.
    pub fn send(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// When this replica last applied a renewal of `id`.
    pub fn last_renewal(&self, id: u64) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied()
    }
}
