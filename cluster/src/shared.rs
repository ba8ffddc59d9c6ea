//! `Shared`: what the gRPC services and background tasks share with the
//! `Store` handle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::LeaseConfig;
use crate::delivery::{self, LocalDelivery};
use crate::error::{StoreError, storage};
use crate::events::{self, ClusterEvents};
use crate::kv::{self, Kv, KvTree, SledKv};
use crate::lease;
use crate::raft;
use crate::store::space_tree;
use crate::transport::Transport;

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
    pub hooks: Arc<events::Hooks>,
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
    pub fn lease_space(&self) -> Result<kv::Pairs, StoreError> {
        self.kv
            .tree(&space_tree(events::LEASES))
            .and_then(|t| t.scan_prefix(b""))
            .map_err(storage)
    }

    pub fn is_expired(&self, id: u64) -> bool {
        self.kv
            .tree(&space_tree(events::EXPIRED))
            .and_then(|t| t.get(&events::node_key(id)))
            .is_ok_and(|v| v.is_some())
    }
}
