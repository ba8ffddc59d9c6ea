//! Node leases and failure detection.
//!
//! Every node renews its lease through Raft every `renew_ms`: a `Put` of
//! `node_lease/<id be>` (a counter), batched with other writes. Every
//! replica notes, with its own clock, when it applied each node's latest
//! renewal. The leader alone judges: a node in the membership (or holding
//! a lease) that has not renewed for `ttl_ms` — counted from the latest of
//! its last renewal, the moment this leader took office and the moment the
//! leader first saw the node — is expired: its routes are dropped from the
//! registry group (`Op::DeleteIndexed` over `routes::ROUTES` /
//! `routes::NODE_ROUTES`), then one durable write removes its lease and
//! records `node_expired/<id be>`.
//! A node that has not renewed for two renewal periods and whose cluster
//! port refuses connections (it crashed) is expired at once (`gone`).
//! Applying the durable write calls [`ClusterEvents::node_expired`] on every
//! replica, the expired node included once it hears of it.
//!
//! A node's own health is whether its last renewal committed within
//! `ttl_ms`: a node on the minority side of a partition cannot commit, so
//! it turns unhealthy (gauge `starling_cluster_healthy`, a log line) and
//! the node refuses logins.
//!
//! Owns `Leases`: the lease timing, this node's `Health`, when each node last
//! renewed (`Hooks`), the node's `ClusterEvents` handler and the leaving
//! flag. Writes only through the batcher (as internal writes) and judges
//! other nodes only while leading; must not touch the routing table except
//! through `routes::drop_node`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::batcher;
use crate::config::LeaseConfig;
use crate::error::{StoreError, storage};
use crate::events::{ClusterEvents, EXPIRED, Event, Hooks, LEASES, key_id, node_key};
use crate::kv::{self, Kv, KvTree};
use crate::op::Op;
use crate::registry::Registry;
use crate::shared::Shared;
use crate::store::space_tree;
use crate::{metrics, routes};

/// This node's lease state, shared by its tasks, the Admin service and the
/// handle. Holding it does not keep a `Store` alive.
pub struct Leases {
    pub shared: Arc<Shared>,
    pub cfg: LeaseConfig,
    pub health: Health,
    pub hooks: Arc<Hooks>,
    /// The node's handler of cluster events; `None` until it registers one.
    pub events: RwLock<Option<Arc<dyn ClusterEvents>>>,
    /// Set by `leave`: lease renewals stop.
    pub leaving: AtomicBool,
    /// Where an expired node's routes are dropped.
    pub registry: Arc<Registry>,
}

impl Leases {
    fn lease_space(&self) -> Result<kv::Pairs, StoreError> {
        self.shared
            .kv
            .tree(&space_tree(LEASES))
            .and_then(|t| t.scan_prefix(b""))
            .map_err(storage)
    }

    fn is_expired(&self, id: u64) -> bool {
        self.shared
            .kv
            .tree(&space_tree(EXPIRED))
            .and_then(|t| t.get(&node_key(id)))
            .is_ok_and(|v| v.is_some())
    }
}

/// This node's view of its own health.
#[derive(Default)]
pub struct Health {
    /// Start of the last renewal that committed.
    last_ok: Mutex<Option<Instant>>,
    healthy: AtomicBool,
}

impl Health {
    pub fn renewed(&self, at: Instant) {
        let mut l = self.last_ok.lock().unwrap_or_else(|e| e.into_inner());
        if l.is_none_or(|p| p < at) {
            *l = Some(at);
        }
    }

    pub fn last_ok(&self) -> Option<Instant> {
        *self.last_ok.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Recomputes health; logs and reports a change.
    fn update(&self, node_id: u64, ok: bool) {
        let was = self.healthy.swap(ok, Ordering::SeqCst);
        metrics::healthy(ok);
        if was != ok {
            if ok {
                tracing::info!(node_id, "cluster: this node commits again (healthy)");
            } else {
                tracing::warn!(
                    node_id,
                    "cluster: this node cannot commit (no quorum?): unhealthy, refusing logins"
                );
            }
        }
    }
}

/// Computes health now.
pub fn check_health(leases: &Leases) -> bool {
    let shared = &leases.shared;
    if *shared.stop.borrow() {
        return false;
    }
    if leases.cfg.renew_ms == 0 {
        return shared.raft.metrics().borrow().current_leader.is_some();
    }
    let ttl = Duration::from_millis(leases.cfg.ttl_ms);
    leases.health.last_ok().is_some_and(|t| t.elapsed() < ttl)
}

async fn internal_write(
    writes: &batcher::Writes,
    ops: Vec<Op>,
    timeout: Duration,
) -> Result<(), StoreError> {
    match tokio::time::timeout(timeout, writes.submit(ops, true)).await {
        Ok(r) => r.map(drop),
        Err(_) => Err(StoreError::Unavailable("lease write timed out".into())),
    }
}

/// Renews this node's lease until the store stops.
pub async fn renew(leases: Arc<Leases>, writes: batcher::Writes) {
    let shared = &leases.shared;
    let cfg = leases.cfg;
    let mut stop = shared.stop.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.renew_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Monotonic across restarts: continue from the replica's last value.
    let mut counter = shared
        .kv
        .tree(&space_tree(LEASES))
        .and_then(|t| t.get(&node_key(shared.node_id)))
        .ok()
        .flatten()
        .and_then(|v| key_id(&v))
        .unwrap_or(0);
    let ttl = Duration::from_millis(cfg.ttl_ms);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // Not yet a member (a joining node): nothing to renew.
        if !is_member(shared) || leases.leaving.load(Ordering::SeqCst) {
            continue;
        }
        // A cluster of one commits by itself: no write needed (and no
        // fsync a second on an idle server).
        if alone(shared) {
            leases.health.renewed(Instant::now());
            continue;
        }
        counter += 1;
        let started = Instant::now();
        let op = Op::Put {
            space: LEASES.into(),
            key: node_key(shared.node_id),
            value: counter.to_be_bytes().to_vec(),
        };
        let res = tokio::select! {
            r = internal_write(&writes, vec![op], ttl) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match res {
            Ok(()) => leases.health.renewed(started),
            Err(StoreError::Shutdown) => return,
            Err(e) => tracing::debug!(error = %e, "lease renewal failed"),
        }
    }
}

fn alone(shared: &Shared) -> bool {
    let m = shared.raft.metrics();
    let m = m.borrow();
    let membership = m.membership_config.membership();
    m.current_leader == Some(shared.node_id)
        && membership.nodes().count() == 1
        && membership.get_node(&shared.node_id).is_some()
}

fn is_member(shared: &Shared) -> bool {
    let m = shared.raft.metrics();
    let m = m.borrow();
    m.membership_config
        .membership()
        .get_node(&shared.node_id)
        .is_some()
}

/// Watches this node's health and, while it leads, the others' leases.
pub async fn monitor(
    leases: Arc<Leases>,
    writes: batcher::Writes,
    events: mpsc::UnboundedReceiver<Event>,
) {
    tokio::spawn(dispatch(leases.clone(), events));
    let shared = &leases.shared;
    let cfg = leases.cfg;
    let ttl = Duration::from_millis(cfg.ttl_ms);
    let period = Duration::from_millis((cfg.renew_ms / 2).clamp(50, 500));
    let mut stop = shared.stop.subscribe();
    let mut leader_since: Option<Instant> = None;
    let mut first_seen: HashMap<u64, Instant> = HashMap::new();
    let expiring: Arc<Mutex<HashSet<u64>>> = Arc::default();
    // A cluster of one has no other lease to watch, and its health is its
    // own renewal's (`renew`): it waits for its membership or state to
    // change instead of waking every period.
    let mut server = shared.raft.server_metrics();
    leases.health.update(shared.node_id, check_health(&leases));
    loop {
        let solo = alone(shared);
        tokio::select! {
            _ = tokio::time::sleep(period), if !solo => {}
            changed = server.changed(), if solo => {
                if changed.is_err() {
                    break;
                }
            }
            _ = stop.wait_for(|s| *s) => break,
        }
        leases.health.update(shared.node_id, check_health(&leases));

        let (leading, members) = {
            let m = shared.raft.metrics();
            let m = m.borrow();
            let leading = m.current_leader == Some(shared.node_id)
                && m.state == openraft::ServerState::Leader;
            let members: Vec<u64> = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect();
            (leading, members)
        };
        if !leading {
            leader_since = None;
            first_seen.clear();
            continue;
        }
        let now = Instant::now();
        let since = *leader_since.get_or_insert(now);
        let Ok(held) = leases.lease_space() else {
            continue;
        };
        let holders: HashSet<u64> = held.iter().filter_map(|(k, _)| key_id(k)).collect();
        let mut candidates: HashSet<u64> = members.into_iter().collect();
        candidates.extend(holders.iter().copied());
        candidates.remove(&shared.node_id);
        first_seen.retain(|id, _| candidates.contains(id));
        for id in candidates {
            let seen = *first_seen.entry(id).or_insert(now);
            let last = [Some(since), Some(seen), leases.hooks.last_renewal(id)]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(now);
            // Already expired and not back since.
            if !holders.contains(&id) && leases.is_expired(id) {
                continue;
            }
            if now.duration_since(last) < ttl && !gone(&leases, id, now).await {
                continue;
            }
            if !expiring
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id)
            {
                continue;
            }
            tracing::warn!(
                node_id = id,
                silent_ms = now.duration_since(last).as_millis() as u64,
                "cluster: node stopped renewing its lease; expiring it"
            );
            let writes = writes.clone();
            let expiring = expiring.clone();
            let timeout = shared.write_timeout;
            let registry = leases.registry.clone();
            tokio::spawn(async move {
                if let Err(e) = expire(&registry, &writes, id, timeout).await {
                    tracing::warn!(node_id = id, error = %e, "expiring a node failed");
                }
                expiring
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            });
        }
    }
    leases.health.update(shared.node_id, false);
}

/// Whether node `id` is certainly gone, before its lease runs out: it has
/// not renewed for two renewal periods (as this replica saw) and its
/// cluster port refuses connections, i.e. no process listens there (it
/// crashed; a partitioned or overloaded node times out instead of
/// refusing). Its sessions died with it, so its contacts can be told at
/// once rather than after a full TTL counted from this leader's election.
async fn gone(leases: &Leases, id: u64, now: Instant) -> bool {
    let shared = &leases.shared;
    let quiet = Duration::from_millis(2 * leases.cfg.renew_ms);
    let Some(last) = leases.hooks.last_renewal(id) else {
        return false;
    };
    if now.duration_since(last) < quiet {
        return false;
    }
    let addr = {
        let m = shared.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    };
    let Some(addr) = addr else { return false };
    matches!(
        tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr.as_str())
        )
        .await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// The durable write that expires node `id`: its lease and a record.
pub fn expire_ops(id: u64) -> Vec<Op> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    vec![
        Op::Delete {
            space: LEASES.into(),
            key: node_key(id),
        },
        Op::Put {
            space: EXPIRED.into(),
            key: node_key(id),
            value: now_ms.to_be_bytes().to_vec(),
        },
    ]
}

/// Expires node `id`: first its routes go from the registry (so that
/// `routes_dropped` is reported before `node_expired`), then its lease,
/// with a record, from the durable group. Without an active registry (a
/// cluster re-founding it) the routes are left to the new epoch, which
/// the dead node does not publish in.
pub async fn expire(
    registry: &Registry,
    writes: &batcher::Writes,
    id: u64,
    timeout: Duration,
) -> Result<(), StoreError> {
    drop_routes(registry, id, timeout).await?;
    internal_write(writes, expire_ops(id), timeout).await
}

/// Drops node `id`'s routes from the active registry group, following
/// the registry to a new epoch.
///
/// The race this closes: the group written to can be replaced while the
/// write is pending (a node founds the next epoch because the group lost
/// its quorum, e.g. the member of a node that just left was one of two;
/// this node joins that epoch, and `Registry::activate` shuts the old
/// group's Raft down). The pending write then fails with the old Raft's
/// `Fatal::Stopped` (`StoreError::Shutdown`, or the same text from the
/// group's leader when forwarded), though this store runs on: a leader's
/// `leave` failed with `Shutdown` before expiring itself or leaving the
/// membership. The drop is idempotent, so it is written again to the
/// group now active (where the node's routes exist only if it published
/// them again), within the same `timeout`.
async fn drop_routes(registry: &Registry, id: u64, timeout: Duration) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut group = registry.active();
    while let Some(g) = group {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Err(e) = internal_write(&g.writes, routes::drop_node_all(id), left).await else {
            return Ok(());
        };
        if registry.stopping() {
            return Err(StoreError::Shutdown);
        }
        group = registry
            .active()
            .filter(|now| (now.epoch, now.member) != (g.epoch, g.member));
        match &group {
            Some(now) if tokio::time::Instant::now() < deadline => tracing::debug!(
                node_id = id,
                from = g.epoch,
                to = now.epoch,
                error = %e,
                "registry replaced while dropping a node's routes; again in the new group"
            ),
            _ => return Err(e),
        }
    }
    // Without an active registry (a cluster re-founding it) the routes are
    // left to the new epoch, which the dead node does not publish in.
    Ok(())
}

/// Calls the node's `ClusterEvents` for each applied expiry and bulk
/// route drop.
async fn dispatch(leases: Arc<Leases>, mut events: mpsc::UnboundedReceiver<Event>) {
    let mut stop = leases.shared.stop.subscribe();
    loop {
        let event = tokio::select! {
            e = events.recv() => match e { Some(e) => e, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        let handler = leases
            .events
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match event {
            Event::Expired(id) => {
                metrics::node_expired();
                if let Some(h) = handler {
                    h.node_expired(id);
                }
            }
            Event::RoutesDropped(routes) => {
                if let Some(h) = handler {
                    h.routes_dropped(routes);
                }
            }
            Event::RegistryReset(epoch) => {
                if let Some(h) = handler {
                    h.registry_reset(epoch);
                }
            }
        }
    }
}
