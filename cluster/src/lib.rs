//! Starling's replicated state: an openraft group whose log and state machine
//! live in sled (behind the `kv` seam), reached over tonic between nodes
//! (mutual TLS with a cluster CA when configured).
//!
//! Besides the store itself this crate carries what nodes say to each other:
//! stanza delivery over one stream per peer (`deliver`, `LocalDelivery`),
//! membership (`join`, `leave`, `status`), node leases with failure
//! detection (`ClusterEvents`, `is_healthy`) and the routing-table layout
//! that lets a dead node's routes go in one operation (`routes`).
//!
//! A single node is a cluster of one. Callers see only this module's types:
//! no openraft, sled or tonic type appears in the public API.

mod batcher;
mod codec;
mod delivery;
pub mod kv;
mod lease;
mod metrics;
pub mod pki;
mod raft;
pub mod routes;
mod status;
mod store;
mod transport;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{BasicNode, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

pub use crate::delivery::{DeliveryError, DeliveryResult, Envelope, LocalDelivery};
pub use crate::lease::{
    ClusterEvents, EXPIRED as EXPIRED_SPACE, LEASES as LEASE_SPACE, LeaseConfig,
};
pub use crate::status::{ClusterStatus, MemberStatus};

use crate::batcher::{Counters, Pending};
use crate::kv::{Kv, KvTree, SledKv};
use crate::store::{LogStore, StateMachine, space_tree};
use crate::transport::Transport;

/// How long a write waits for this replica to apply what the leader
/// committed.
const APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One operation of a write. A write is a list of operations applied
/// atomically and in order: if any conditional operation fails, nothing of
/// that write is applied and the results say which one failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        space: String,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Set `key` only if it is absent; fails with `OpResult::Exists`.
    Insert {
        space: String,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Remove `key` (no error if absent).
    Delete { space: String, key: Vec<u8> },
    /// Remove every key starting with `prefix`.
    DeletePrefix { space: String, prefix: Vec<u8> },
    /// Remove `key` if its value starts with `prefix` (no error
    /// otherwise): "remove it if it is still mine".
    DeleteIf {
        space: String,
        key: Vec<u8>,
        prefix: Vec<u8>,
    },
    /// Go on only if `key` exists and its value starts with `prefix`;
    /// otherwise the write fails with `OpResult::Mismatch`.
    Expect {
        space: String,
        key: Vec<u8>,
        prefix: Vec<u8>,
    },
    /// Drop what an index names: for every key `prefix ++ rest` in space
    /// `index`, remove that index key, and remove key `rest` of `space`
    /// if its value starts with `prefix` (the index entry is only trusted
    /// while the value still names the same owner). See [`routes`].
    DeleteIndexed {
        space: String,
        index: String,
        prefix: Vec<u8>,
    },
    /// Store `value` under `prefix ++ u64 big-endian sequence number` (the
    /// sequence grows monotonically per space); fails with `OpResult::Full`
    /// when `max` keys already exist under `prefix`.
    Append {
        space: String,
        prefix: Vec<u8>,
        value: Vec<u8>,
        max: u64,
    },
    /// Go on only if `key`'s current value equals `value` (`None`: the key is
    /// absent); otherwise the write fails with `OpResult::Mismatch`. The
    /// compare half of a compare-and-set: per-user read-modify-writes put
    /// the version they read here, so two nodes never lose each other's update.
    // Last on purpose: a variant's position is part of the log encoding.
    ExpectValue {
        space: String,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
}

/// What happened to one operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Done,
    /// `Append` stored the value under this sequence number.
    Seq(u64),
    /// `Insert` found the key present: the write was aborted.
    Exists,
    /// `Append` found the quota reached: the write was aborted.
    Full,
    /// `Expect` or `ExpectValue` found another value (or none): the write
    /// was aborted.
    Mismatch,
    /// `DeleteIndexed` removed these `(key, value)` pairs of its space.
    Removed(Vec<(Vec<u8>, Vec<u8>)>),
    /// Not applied because another operation of the same write failed.
    Aborted,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Storage(String),
    #[error("no quorum / not leader: {0}")]
    Unavailable(String),
    #[error("store is shut down")]
    Shutdown,
}

/// How to open the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Directory for the sled database (log and state machine).
    pub data_dir: PathBuf,
    /// This node's Raft id (1 for the embedded default).
    pub node_id: u64,
    /// Address other nodes reach this node's gRPC on (unused for a single node).
    pub raft_addr: String,
}

/// Mutual TLS between nodes: PEM files of the cluster CA and of this
/// node's certificate (SAN `starling-node`, see [`pki`]) and key. Every
/// peer must present a certificate signed by that CA, as server and as
/// client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterTls {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What [`StoreConfig`] leaves out, each with a default: `Store::open` is
/// `Store::open_with(cfg, StoreOptions::default())`.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Mutual TLS between nodes; `None` is plain HTTP/2 (a single node, or
    /// a private network).
    pub tls: Option<ClusterTls>,
    /// Source address of this node's outgoing connections (multi-homed
    /// hosts); `None` lets the system choose.
    pub source_ip: Option<IpAddr>,
    /// Envelopes queued per peer for `Store::deliver` before it answers
    /// `DeliveryError::Backpressure` (default 4096).
    pub delivery_queue: usize,
    /// Lease renewal and failure detection (default: renew every second,
    /// expire after 4 s).
    pub lease: LeaseConfig,
    /// How long a write may wait for its commit before it fails with
    /// `Unavailable` (default 10 s): a node without quorum fails writes
    /// instead of hanging. The write may still commit later.
    pub write_timeout_ms: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            tls: None,
            source_ip: None,
            delivery_queue: 4096,
            lease: LeaseConfig::default(),
            write_timeout_ms: 10_000,
        }
    }
}

/// Handle on the replicated store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// What the gRPC services and background tasks share with the handle.
/// Holding it does not keep a `Store` alive.
pub(crate) struct Shared {
    pub node_id: u64,
    pub raft_addr: String,
    pub raft: raft::Raft,
    pub committed: Arc<AtomicU64>,
    pub transport: Arc<Transport>,
    /// Set once when the store stops; every task and stream watches it.
    pub stop: watch::Sender<bool>,
    pub local: std::sync::RwLock<Option<Arc<dyn LocalDelivery>>>,
    pub peers: delivery::Peers,
    pub delivery_queue: usize,
    pub lease: LeaseConfig,
    pub health: lease::Health,
    pub hooks: Arc<lease::Hooks>,
    pub events: std::sync::RwLock<Option<Arc<dyn ClusterEvents>>>,
    pub write_timeout: Duration,
    pub kv: SledKv,
    /// Set by `leave`: lease renewals stop.
    pub leaving: AtomicBool,
    /// The runtime the store was opened on: tasks started from calls made
    /// on other runtimes (an actix arbiter calling `deliver`) run here.
    pub rt: tokio::runtime::Handle,
}

impl Shared {
    fn lease_space(&self) -> Result<kv::Pairs, StoreError> {
        self.kv
            .tree(&space_tree(lease::LEASES))
            .and_then(|t| t.scan_prefix(b""))
            .map_err(storage)
    }

    fn is_expired(&self, id: u64) -> bool {
        self.kv
            .tree(&space_tree(lease::EXPIRED))
            .and_then(|t| t.get(&lease::node_key(id)))
            .is_ok_and(|v| v.is_some())
    }
}

struct Inner {
    shared: Arc<Shared>,
    raft: raft::Raft,
    kv: SledKv,
    writes: mpsc::Sender<Pending>,
    counters: Arc<Counters>,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle went away without `shutdown`: stop Raft anyway so
        // the database is released.
        if !self.closed.swap(true, Ordering::SeqCst) {
            let _ = self.shared.stop.send(true);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let raft = self.raft.clone();
                rt.spawn(async move {
                    let _ = raft.shutdown().await;
                });
            }
        }
    }
}

/// Write-path counters since `open` (diagnostics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Raft entries proposed by the write batcher.
    pub raft_entries: u64,
    /// `Store::write` calls carried by those entries.
    pub writes: u64,
}

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

fn leader_error(e: RaftError<u64, CheckIsLeaderError<u64, BasicNode>>) -> StoreError {
    match e {
        RaftError::APIError(e) => StoreError::Unavailable(e.to_string()),
        RaftError::Fatal(f) => batcher::fatal(f),
    }
}

/// Opens sled, waiting a little if a previous owner (an instance being shut
/// down, or a process still exiting) holds its lock.
async fn open_kv(dir: &Path) -> Result<SledKv, StoreError> {
    let mut tries = 0;
    loop {
        match SledKv::open(dir) {
            Ok(kv) => return Ok(kv),
            Err(e) if tries < 100 && e.0.contains("lock") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(storage(e)),
        }
    }
}

const WRITE_QUEUE: usize = 16 * 1024;
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Store {
    /// Opens (or creates) the store and starts the Raft node. Must be called
    /// on a multi-thread tokio runtime. A fresh single node initialises
    /// itself as a one-member cluster.
    pub async fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        Store::start(cfg, StoreOptions::default(), true).await
    }

    /// `open` with options (TLS, leases, delivery).
    pub async fn open_with(cfg: StoreConfig, opts: StoreOptions) -> Result<Store, StoreError> {
        Store::start(cfg, opts, true).await
    }

    /// `open_joining` with options (TLS, leases, delivery).
    pub async fn open_joining_with(
        cfg: StoreConfig,
        opts: StoreOptions,
    ) -> Result<Store, StoreError> {
        Store::start(cfg, opts, false).await
    }

    /// Opens the store of a node that joins an existing cluster: a fresh
    /// node does not initialise itself but waits until a member adds it
    /// (`add_member` on the leader). A node that already belongs to a
    /// cluster restarts as with `open`.
    pub async fn open_joining(cfg: StoreConfig) -> Result<Store, StoreError> {
        Store::start(cfg, StoreOptions::default(), false).await
    }

    async fn start(
        cfg: StoreConfig,
        opts: StoreOptions,
        init_alone: bool,
    ) -> Result<Store, StoreError> {
        let transport = Arc::new(Transport::new(opts.tls.as_ref(), opts.source_ip)?);
        std::fs::create_dir_all(&cfg.data_dir).map_err(storage)?;
        let kv = open_kv(&cfg.data_dir).await?;
        let log = LogStore::new(kv.clone()).map_err(storage)?;
        let committed = log.committed_index();
        let (hooks, expired_rx) = lease::Hooks::new();
        let sm = StateMachine::new(kv.clone())
            .map_err(storage)?
            .with_hooks(hooks.clone());
        let config = Arc::new(raft::config().validate().map_err(storage)?);
        let raft = raft::Raft::new(
            cfg.node_id,
            config,
            raft::network::Network {
                transport: transport.clone(),
            },
            log,
            sm,
        )
        .await
        .map_err(storage)?;

        let initialized = raft.is_initialized().await.map_err(batcher::fatal)?;
        if !initialized && init_alone {
            let members = BTreeMap::from([(cfg.node_id, BasicNode::new(&cfg.raft_addr))]);
            raft.initialize(members).await.map_err(storage)?;
        }
        let mut alone = false;
        if initialized || init_alone {
            alone = Store::await_start(&raft, cfg.node_id).await?;
        }

        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let counters = Arc::new(Counters::default());
        tokio::spawn(batcher::run(
            raft.clone(),
            transport.clone(),
            rx,
            counters.clone(),
            Duration::from_millis(opts.write_timeout_ms.max(1)),
        ));
        tokio::spawn(report_metrics(raft.clone()));
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            node_id: cfg.node_id,
            raft_addr: cfg.raft_addr.clone(),
            raft: raft.clone(),
            committed: committed.clone(),
            transport,
            stop,
            local: std::sync::RwLock::new(None),
            peers: delivery::Peers::default(),
            delivery_queue: opts.delivery_queue.max(1),
            lease: opts.lease,
            health: lease::Health::default(),
            hooks,
            events: std::sync::RwLock::new(None),
            write_timeout: Duration::from_millis(opts.write_timeout_ms.max(1)),
            kv: kv.clone(),
            leaving: AtomicBool::new(false),
            rt: tokio::runtime::Handle::current(),
        });
        if alone {
            // The sole voter commits on its own: healthy from the start.
            shared.health.renewed(std::time::Instant::now());
        }
        if opts.lease.renew_ms > 0 {
            tokio::spawn(lease::renew(shared.clone(), tx.clone()));
        }
        tokio::spawn(lease::monitor(shared.clone(), tx.clone(), expired_rx));
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                raft,
                kv,
                writes: tx,
                counters,
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Waits until the membership is loaded; a cluster of one also waits
    /// to be leader and to have applied its whole durable log before it
    /// serves reads (and says so).
    async fn await_start(raft: &raft::Raft, node_id: u64) -> Result<bool, StoreError> {
        let m = raft
            .wait(Some(START_TIMEOUT))
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .voter_ids()
                        .next()
                        .is_some()
                },
                "membership loaded",
            )
            .await
            .map_err(storage)?;
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        if voters == [node_id] {
            raft.wait(Some(START_TIMEOUT))
                .state(ServerState::Leader, "sole voter becomes leader")
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            raft.ensure_linearizable().await.map_err(leader_error)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Adds a node to the cluster as a voter: first as a learner that
    /// catches up over gRPC, then into the voting membership. Call it on
    /// the leader; the new node must already serve gRPC on `raft_addr`.
    pub async fn add_member(&self, node_id: u64, raft_addr: &str) -> Result<(), StoreError> {
        raft::admin::add_member(&self.inner.raft, node_id, raft_addr).await
    }

    /// Removes a node from the cluster. Call it on the leader.
    pub async fn remove_member(&self, node_id: u64) -> Result<(), StoreError> {
        raft::admin::remove_member(&self.inner.raft, node_id).await
    }

    /// Joins the cluster that the member at `seed_addr` (any member; a
    /// follower forwards to the leader) belongs to: this node is added as
    /// a learner, catches up, and becomes a voter before this returns.
    /// Open the store with `open_joining[_with]` and serve gRPC first (the
    /// leader must reach this node at its `raft_addr`).
    pub async fn join(&self, seed_addr: &str) -> Result<(), StoreError> {
        let s = &self.inner.shared;
        raft::admin::join(&s.transport, seed_addr, s.node_id, &s.raft_addr).await?;
        // Learn the new membership before returning.
        self.inner
            .raft
            .wait(Some(START_TIMEOUT))
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .voter_ids()
                        .any(|v| v == s.node_id)
                },
                "joined as a voter",
            )
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        // The membership is known once appended; reads should also see
        // everything committed before the join returned.
        self.read_barrier().await
    }

    /// Leaves the cluster for good: expires this node (its routes go and
    /// every node's `ClusterEvents::node_expired` runs), has the leader
    /// remove it from the membership, then shuts down. End local sessions
    /// first.
    pub async fn leave(&self) -> Result<(), StoreError> {
        let s = &self.inner.shared;
        let (leader, members) = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            let members: Vec<(u64, String)> = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect();
            (m.current_leader, members)
        };
        if members.iter().all(|(id, _)| *id == s.node_id) {
            return Err(StoreError::Unavailable(
                "the only member cannot leave its cluster".into(),
            ));
        }
        s.leaving.store(true, Ordering::SeqCst);
        if let Err(e) = self.write_internal(lease::expire_ops(s.node_id)).await {
            s.leaving.store(false, Ordering::SeqCst);
            return Err(e);
        }
        if leader == Some(s.node_id) {
            raft::admin::remove_member(&self.inner.raft, s.node_id).await?;
        } else {
            // Through any other member: a follower forwards to the leader.
            let mut last = StoreError::Unavailable("no other member".into());
            let mut done = false;
            let order = members
                .iter()
                .filter(|(id, _)| *id != s.node_id)
                .map(|(id, a)| (Some(*id) != leader, a));
            let mut order: Vec<_> = order.collect();
            order.sort();
            for (_, addr) in order {
                match raft::admin::leave(&s.transport, addr, s.node_id).await {
                    Ok(()) => {
                        done = true;
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            if !done {
                return Err(last);
            }
        }
        self.shutdown().await
    }

    /// Removes another member that is gone for good (its machine or disk
    /// was lost) from the membership: its routes are dropped (contacts
    /// are told, as on expiry) and the leader removes it. A node that can
    /// still run should `leave` instead.
    pub async fn remove_node(&self, node_id: u64) -> Result<(), StoreError> {
        let s = &self.inner.shared;
        if node_id == s.node_id {
            return Err(StoreError::Unavailable(
                "a node removes itself with leave".into(),
            ));
        }
        let (leader, leader_addr) = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            let addr = m
                .current_leader
                .and_then(|l| m.membership_config.membership().get_node(&l))
                .map(|n| n.addr.clone());
            (m.current_leader, addr)
        };
        self.write_internal(lease::expire_ops(node_id)).await?;
        match (leader, leader_addr) {
            (Some(l), _) if l == s.node_id => {
                raft::admin::remove_member(&self.inner.raft, node_id).await
            }
            (_, Some(addr)) => raft::admin::leave(&s.transport, &addr, node_id).await,
            _ => Err(StoreError::Unavailable("no leader known".into())),
        }
    }

    /// This node's view of the cluster (replication state on the leader
    /// only). Also served as `Admin.Status`; see [`query_status`].
    pub fn status(&self) -> ClusterStatus {
        status::local(&self.inner.shared)
    }

    async fn write_internal(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.submit(ops, true).await.map(|_| ())
    }

    /// Queues `ops` for the batcher and waits for the applied result.
    async fn submit(
        &self,
        ops: Vec<Op>,
        internal: bool,
    ) -> Result<(Vec<OpResult>, u64), StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Shutdown);
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .writes
            .send(Pending {
                ops,
                reply,
                internal,
            })
            .await
            .map_err(|_| StoreError::Shutdown)?;
        rx.await.map_err(|_| StoreError::Shutdown)?
    }

    /// The current leader's node id, as far as this node knows.
    pub fn leader(&self) -> Option<u64> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// The index of the last log entry this replica has applied.
    pub fn applied_index(&self) -> u64 {
        self.inner
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// Replicates and applies one write. Concurrent writes are batched into
    /// one Raft entry. Returns once committed and applied, one result per op.
    pub async fn write(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, StoreError> {
        Ok(self.write_at(ops).await?.0)
    }

    /// `write`, also returning the log index of the entry that carried it.
    /// Returns once this replica has applied it too, so that reads here
    /// after a write see it (read-your-writes on a follower, whose writes
    /// the leader commits before this replica hears of the commit).
    async fn write_at(&self, ops: Vec<Op>) -> Result<(Vec<OpResult>, u64), StoreError> {
        let (results, index) = self.submit(ops, false).await?;
        if self.applied_index() < index {
            let waited = self
                .inner
                .raft
                .wait(Some(APPLY_WAIT))
                .applied_index_at_least(Some(index), "a write applied locally")
                .await;
            if let Err(e) = waited {
                // Committed all the same: only this replica lags.
                tracing::warn!(index, error = %e, "write committed but not yet applied here");
            }
        }
        Ok((results, index))
    }

    fn space(&self, space: &str) -> Result<kv::SledTree, StoreError> {
        self.inner.kv.tree(&space_tree(space)).map_err(storage)
    }

    /// Reads one key from the local replica.
    pub fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.space(space)?.get(key).map_err(storage)
    }

    /// All keys and values under `prefix`, in key order, from the local replica.
    #[allow(clippy::type_complexity)] // the signature is the fixed public API
    pub fn scan_prefix(
        &self,
        space: &str,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.space(space)?.scan_prefix(prefix).map_err(storage)
    }

    /// Number of keys under `prefix` in the local replica.
    pub fn count_prefix(&self, space: &str, prefix: &[u8]) -> Result<u64, StoreError> {
        self.space(space)?.count_prefix(prefix).map_err(storage)
    }

    /// Waits until the local replica has applied everything committed
    /// before this call (a linearizable read barrier).
    pub async fn read_barrier(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Shutdown);
        }
        let raft = &self.inner.raft;
        match raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                // A follower: an empty write through the leader marks a
                // point at or after every write committed before this
                // call; once applied here, reads see all of them. It rides
                // in a batch with other writes, so it rarely costs an fsync
                // of its own.
                let (_, index) = self.write_at(Vec::new()).await?;
                raft.wait(Some(START_TIMEOUT))
                    .applied_index_at_least(Some(index), "read barrier")
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Ok(())
            }
            Err(e) => Err(leader_error(e)),
        }
    }

    /// Stops Raft and flushes storage.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let _ = self.inner.shared.stop.send(true);
        metrics::healthy(false);
        self.inner.raft.shutdown().await.map_err(storage)?;
        let kv = self.inner.kv.clone();
        tokio::task::spawn_blocking(move || kv.flush())
            .await
            .map_err(storage)?
            .map_err(storage)
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> u64 {
        self.inner.shared.node_id
    }

    /// Whether this node is a voting member of the cluster it knows (false
    /// for a fresh joining node, or one whose join never completed, or one
    /// that left). Right after `open` the Raft core may not have reported
    /// the stored membership yet: this waits up to `within` for it.
    pub async fn is_voter(&self, within: Duration) -> bool {
        let me = self.inner.shared.node_id;
        self.inner
            .raft
            .wait(Some(within))
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .voter_ids()
                        .any(|id| id == me)
                },
                "this node among the voters",
            )
            .await
            .is_ok()
    }

    /// Whether the cluster has members besides this node (from the latest
    /// membership this node knows): only then can a user have sessions
    /// elsewhere.
    pub fn has_peers(&self) -> bool {
        let me = self.inner.shared.node_id;
        self.inner
            .shared
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .any(|(id, _)| *id != me)
    }

    /// Whether this node can commit: its last lease renewal committed
    /// within the lease TTL (with leases off: a leader is known). A node
    /// on the minority side of a partition turns unhealthy within the TTL;
    /// the node should then refuse logins.
    pub fn is_healthy(&self) -> bool {
        !self.inner.closed.load(Ordering::SeqCst) && lease::check_health(&self.inner.shared)
    }

    /// Registers the node's handler of cluster events (node expiry),
    /// replacing any earlier one. Register it right after `open`.
    pub fn set_cluster_events(&self, handler: Arc<dyn ClusterEvents>) {
        *self
            .inner
            .shared
            .events
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(handler);
    }

    /// Registers the node's handler for stanzas other nodes route here
    /// (replacing any earlier one). Until then they are refused.
    pub fn set_local_delivery(&self, handler: Arc<dyn LocalDelivery>) {
        *self
            .inner
            .shared
            .local
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(handler);
    }

    /// Sends `env` to node `node_id` over its delivery stream without
    /// waiting (callable from any thread or runtime): `Ok` means queued.
    /// A full queue to that node is `Backpressure` at once. Whether it was delivered is only counted
    /// (`starling_cluster_delivered_total`); use `deliver_acked` to know.
    pub fn deliver(&self, node_id: u64, env: Envelope) -> Result<(), DeliveryError> {
        delivery::send(&self.inner.shared, node_id, env, None)
    }

    /// Sends `env` to node `node_id` and waits for that node's answer, so
    /// the caller can fall back (offline storage) when it was not
    /// delivered. Queueing fails as `deliver` does; a stream that breaks
    /// before the ack, or no ack within 10 s, is `Unavailable`. The future
    /// may be awaited on any executor.
    pub async fn deliver_acked(
        &self,
        node_id: u64,
        env: Envelope,
    ) -> Result<DeliveryResult, DeliveryError> {
        let (tx, rx) = oneshot::channel();
        delivery::send(&self.inner.shared, node_id, env, Some(tx))?;
        // The timer runs on the store's runtime: callers may be anywhere.
        let wait = self
            .inner
            .shared
            .rt
            .spawn(async move { tokio::time::timeout(delivery::ACK_TIMEOUT, rx).await });
        match wait.await.map_err(|_| DeliveryError::Shutdown)? {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(DeliveryError::Shutdown),
            Err(_) => {
                metrics::delivery_error("timeout");
                Err(DeliveryError::Unavailable(format!(
                    "no ack from node {node_id}"
                )))
            }
        }
    }

    /// Write-path counters since `open`: how many Raft entries carried how
    /// many writes.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            raft_entries: self.inner.counters.entries.load(Ordering::Relaxed),
            writes: self.inner.counters.writes.load(Ordering::Relaxed),
        }
    }

    /// Builds a snapshot of the state machine now and purges the log it
    /// covers. Raft also does this by itself every 10 000 entries.
    pub async fn compact(&self) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        let applied = raft.metrics().borrow().last_applied;
        let Some(applied) = applied else {
            return Ok(());
        };
        raft.trigger().snapshot().await.map_err(batcher::fatal)?;
        raft.wait(Some(START_TIMEOUT))
            .snapshot(applied, "snapshot built")
            .await
            .or_else(|_| {
                // A later entry may have been included: accept any snapshot
                // at or past `applied`.
                let snap = raft.metrics().borrow().snapshot;
                if snap.is_some_and(|s| s.index >= applied.index) {
                    Ok(raft.metrics().borrow().clone())
                } else {
                    Err(StoreError::Storage("snapshot not built in time".into()))
                }
            })?;
        raft.trigger()
            .purge_log(applied.index)
            .await
            .map_err(batcher::fatal)?;
        raft.wait(Some(START_TIMEOUT))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= applied.index),
                "log purged",
            )
            .await
            .map_err(storage)?;
        Ok(())
    }

    /// Serves this node's cluster gRPC (the Raft and Admin services of
    /// `starling.cluster.v1`; mutual TLS when the options carry
    /// [`ClusterTls`]) on `addr` until the store shuts down.
    pub async fn serve_grpc(&self, addr: SocketAddr) -> Result<(), StoreError> {
        let mut stop = self.inner.shared.stop.subscribe();
        let signal = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        raft::grpc::serve(self.inner.shared.clone(), addr, signal)
            .await
            .map_err(|e| StoreError::Unavailable(format!("raft gRPC on {addr}: {e}")))
    }
}

/// Asks the node whose cluster gRPC is at `addr` for its view of the
/// cluster (`starling cluster status --addr`). With the cluster's TLS
/// files when it uses mutual TLS (a node certificate of the cluster CA).
pub async fn query_status(
    addr: &str,
    tls: Option<&ClusterTls>,
) -> Result<ClusterStatus, StoreError> {
    let transport = Transport::new(tls, None)?;
    Ok(raft::admin::status(&transport, addr).await?.into())
}

/// Mirrors openraft's metrics into gauges until Raft stops.
async fn report_metrics(raft: raft::Raft) {
    let mut rx = raft.metrics();
    drop(raft);
    let mut leader = None;
    loop {
        {
            let m = rx.borrow_and_update();
            if m.current_leader != leader {
                if m.current_leader.is_some() {
                    metrics::leader_change();
                }
                leader = m.current_leader;
            }
            metrics::term(m.current_term);
            if let Some(a) = m.last_applied {
                metrics::applied_index(a.index);
            }
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
}
