//! Opening a store: sled, the Raft node (initialising a fresh cluster of
//! one, or waiting to be added), the write batcher and the background tasks
//! (lease renewal and monitoring, metrics). The only place that builds
//! `Shared`, `Leases`, `Hub` and the handle's `Inner`.
//!
//! Must not serve gRPC or join a cluster by itself: the caller does that
//! through `serve` and `membership` once it holds the handle.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::{BasicNode, ServerState};
use tokio::sync::watch;

use crate::batcher::{self, Counters};
use crate::config::{StoreConfig, StoreOptions};
use crate::delivery::Hub;
use crate::error::{StoreError, fatal, leader_error, storage};
use crate::handle::{Inner, START_TIMEOUT, Store};
use crate::kv::SledKv;
use crate::lease::Leases;
use crate::registry::Registry;
use crate::shared::Shared;
use crate::store::{LogStore, StateMachine};
use crate::transport::Transport;
use crate::{delivery, events, lease, metrics, raft, registry};

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
        if cfg.node_id == 0 || cfg.node_id > registry::MAX_NODE_ID {
            return Err(StoreError::Storage(format!(
                "node id {} out of range (1 to {})",
                cfg.node_id,
                registry::MAX_NODE_ID
            )));
        }
        let transport = Arc::new(Transport::new(opts.tls.as_ref(), opts.source_ip)?);
        std::fs::create_dir_all(&cfg.data_dir).map_err(storage)?;
        let kv = open_kv(&cfg.data_dir).await?;
        let log =
            LogStore::with_files(kv.clone(), &cfg.data_dir.join("raft-log")).map_err(storage)?;
        let committed = log.committed_index();
        let sole = log.sole_member();
        let (hooks, expired_rx) = events::Hooks::new();
        let sm = StateMachine::new(kv.clone())
            .map_err(storage)?
            .with_hooks(hooks.clone());
        let config = Arc::new(raft::config().validate().map_err(storage)?);
        let raft = raft::Raft::new(
            cfg.node_id,
            config,
            raft::network::Network::new(transport.clone(), raft::GroupTag::default()),
            log,
            sm,
        )
        .await
        .map_err(storage)?;

        let initialized = raft.is_initialized().await.map_err(fatal)?;
        if !initialized && init_alone {
            let members = BTreeMap::from([(cfg.node_id, BasicNode::new(&cfg.raft_addr))]);
            raft.initialize(members).await.map_err(storage)?;
        }
        let mut alone = false;
        if initialized || init_alone {
            alone = Store::await_start(&raft, cfg.node_id).await?;
        }

        let (tx, rx) = batcher::channel();
        let counters = Arc::new(Counters::default());
        tokio::spawn(batcher::run(
            raft.clone(),
            transport.clone(),
            rx,
            counters.clone(),
            Duration::from_millis(opts.write_timeout_ms.max(1)),
            Duration::from_micros(opts.write_linger_us),
            Duration::from_micros(opts.behind_linger_us),
            raft::GroupTag::default(),
        ));
        tokio::spawn(report_metrics(raft.clone(), sole));
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            node_id: cfg.node_id,
            raft_addr: cfg.raft_addr.clone(),
            raft: raft.clone(),
            committed: committed.clone(),
            transport,
            stop,
            write_timeout: Duration::from_millis(opts.write_timeout_ms.max(1)),
            kv: kv.clone(),
            rt: tokio::runtime::Handle::current(),
        });
        let registry = Arc::new(Registry::new(
            shared.clone(),
            hooks.clone(),
            tx.clone(),
            opts.lease,
        ));
        let leases = Arc::new(Leases {
            shared: shared.clone(),
            cfg: opts.lease,
            health: lease::Health::default(),
            hooks,
            events: std::sync::RwLock::new(None),
            leaving: AtomicBool::new(false),
            registry: registry.clone(),
        });
        let hub = Arc::new(Hub {
            shared: shared.clone(),
            registry: registry.clone(),
            local: std::sync::RwLock::new(None),
            peers: delivery::Peers::default(),
            queue: opts.delivery_queue.max(1),
        });
        if alone {
            // The sole voter commits on its own: healthy from the start.
            leases.health.renewed(std::time::Instant::now());
        }
        if opts.lease.renew_ms > 0 {
            tokio::spawn(lease::renew(leases.clone(), tx.clone()));
        }
        tokio::spawn(lease::monitor(leases.clone(), tx.clone(), expired_rx));
        tokio::spawn(registry::supervise(registry.clone()));
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                leases,
                hub,
                registry,
                raft,
                kv,
                writes: tx,
                counters,
                closed: AtomicBool::new(false),
                read_index: std::sync::Mutex::new(None),
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
}

/// Mirrors openraft's metrics into gauges until Raft stops, at most
/// every `METRICS_EVERY`: they change several times per entry, and a wake
/// per change would cost every write a thread hand-off. Also tells the
/// log (`sole`) whether this node is the group's only member, voter or
/// learner (how it syncs appends, `LogStore::append`; either way is
/// durable, so lagging a membership change by `METRICS_EVERY` is harmless).
///
/// A group's only member that leads it turns Raft's ticker off: with no
/// one to send heartbeats to and nobody to elect, it would only wake the
/// store runtime (and these metrics) several times a second on an idle
/// server. It is turned on again as soon as the membership has another
/// node (a learner being added) or this node stops leading.
async fn report_metrics(raft: raft::Raft, sole: Arc<AtomicBool>) {
    let mut rx = raft.metrics();
    let mut leader = None;
    let mut ticking = true;
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
            let members = m.membership_config.membership();
            let alone = members.nodes().count() == 1 && members.get_node(&m.id).is_some();
            sole.store(alone, Ordering::Relaxed);
            let tick = !(alone && m.current_leader == Some(m.id));
            if tick != ticking {
                raft.runtime_config().tick(tick);
                ticking = tick;
            }
        }
        if rx.changed().await.is_err() {
            break;
        }
        tokio::time::sleep(METRICS_EVERY).await;
    }
}

const METRICS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
