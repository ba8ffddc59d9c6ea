//! `Shared`: the context every task and gRPC service of this node runs in:
//! its identity, the Raft handle, the transport, sled, the stop signal and
//! the runtime.
//!
//! It must stay below the parts that use it: delivery, lease and status
//! state does not go here (`delivery::Hub` and `lease::Leases` own theirs),
//! and holding it must not keep a `Store` alive.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::watch;

use crate::kv::SledKv;
use crate::raft;
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
    pub write_timeout: Duration,
    pub kv: SledKv,
    /// The runtime the store was opened on: tasks started from calls made
    /// on other runtimes (an actix arbiter calling `deliver`) run here.
    pub rt: tokio::runtime::Handle,
}

impl Shared {
    /// Whether the durable membership this node knows has other nodes.
    pub fn has_peers(&self) -> bool {
        let me = self.node_id;
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .any(|(id, _)| *id != me)
    }

    /// The durable membership's nodes and their cluster addresses.
    pub fn members(&self) -> Vec<(u64, String)> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }
}
