//! `Store`, the handle callers hold: what it keeps alive (`Inner`: Raft,
//! sled, the batcher's queue, the lease and delivery parts) and how it stops
//! (`shutdown`, or dropping the last handle).
//!
//! The calls a `Store` offers live with their concern (`bootstrap`,
//! `access`, `membership`, `deliver`, `status`, `serve`); this module keeps
//! only identity and stopping. Nothing below it may hold a `Store`: tasks
//! and services hold `Shared`, `Leases` or `Hub`, so that dropping the last
//! handle stops the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::batcher::{self, Counters};
use crate::delivery::Hub;
use crate::error::{StoreError, storage};
use crate::kv::{Kv, SledKv};
use crate::lease::Leases;
use crate::registry::Registry;
use crate::shared::Shared;
use crate::{metrics, raft};
use starling_proto::cluster::admin_client::AdminClient;
use tonic::transport::Channel;

/// How long a call waits for Raft to reach a state it asked for (started,
/// leader, applied, snapshot built).
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Handle on the replicated store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub shared: Arc<Shared>,
    pub leases: Arc<Leases>,
    pub hub: Arc<Hub>,
    pub registry: Arc<Registry>,
    pub raft: raft::Raft,
    pub kv: SledKv,
    pub writes: batcher::Writes,
    pub counters: Arc<Counters>,
    pub closed: AtomicBool,
    /// The durable leader's admin client for read barriers, by address.
    pub read_index: std::sync::Mutex<Option<(String, AdminClient<Channel>)>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle went away without `shutdown`: stop Raft anyway so
        // the database is released.
        if !self.closed.swap(true, Ordering::SeqCst) {
            let _ = self.shared.stop.send(true);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let raft = self.raft.clone();
                let registry = self.registry.clone();
                rt.spawn(async move {
                    registry.shutdown().await;
                    let _ = raft.shutdown().await;
                });
            }
        }
    }
}

impl Store {
    /// Stops Raft and flushes storage.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let _ = self.inner.shared.stop.send(true);
        metrics::healthy(false);
        self.inner.registry.shutdown().await;
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

    /// The change counter of `space` on this replica (`events::Hooks::
    /// space_version`): for a node-local cache of what the space holds,
    /// valid while the counter does not move. Read it before the space.
    pub fn space_version(&self, space: &str) -> Arc<std::sync::atomic::AtomicU64> {
        self.inner.leases.hooks.space_version(space)
    }
}
