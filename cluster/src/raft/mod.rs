//! The openraft type configuration of Starling's replicated store (`Request`,
//! `Response`, `TypeConfig` and aliases) and its timing (`config`), with the
//! modules that connect a Raft node to its peers: `network` (outgoing Raft
//! RPCs), `grpc` (the Raft service and the server), `admin` and
//! `admin_client` (membership, status, write forwarding).
//!
//! One Raft entry carries a batch of client writes (group commit): see
//! `batcher.rs`. This file must depend on nothing above `op`: storage, error
//! mapping and the services all build on its types.

pub mod admin;
pub mod admin_client;
pub mod grpc;
pub mod network;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::op::{Op, OpResult};

/// The application data of one Raft entry: the writes of many callers,
/// applied in order, each atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub writes: Vec<Vec<Op>>,
}

/// One result list per write of the entry's [`Request`], and the entry's
/// log index (a follower's read barrier waits until it has applied it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub results: Vec<Vec<OpResult>>,
    pub index: u64,
}

openraft::declare_raft_types!(
    /// Starling's openraft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Which group a batcher (and its forwarded writes, and Raft RPCs) serves:
/// `group` 0 is the durable group; the registry's carries its epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupTag {
    pub group: u32,
    pub epoch: u64,
}

impl GroupTag {
    pub fn durable(self) -> bool {
        self.group == 0
    }
}

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Raft = openraft::Raft<TypeConfig>;

/// Raft timing and compaction. Election timeouts are generous because the
/// machines are small and shared; a single node does not wait for them at
/// start (openraft elects a sole voter at once). Heartbeats also carry the
/// commit index to followers, so every 100 ms bounds how far behind the
/// leader a follower's reads (routes, presence) normally are.
pub fn config() -> openraft::Config {
    openraft::Config {
        cluster_name: "starling".into(),
        heartbeat_interval: 100,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
        max_in_snapshot_log_to_keep: 1000,
        ..Default::default()
    }
}

/// How long a leader keeps asking its followers to confirm its leadership
/// for a linearizable read when too few answered in time.
pub const CONFIRM_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `ensure_linearizable`, asked again (bounded by [`CONFIRM_WAIT`]) when
/// too few followers answered: openraft gives each one a heartbeat
/// interval, which a loaded machine's followers can miss without anything
/// being lost; a leader cut off from its majority still fails, later.
pub async fn confirm_leadership(
    raft: &Raft,
) -> Result<
    Option<LogId>,
    openraft::error::RaftError<NodeId, openraft::error::CheckIsLeaderError<NodeId, Node>>,
> {
    use openraft::error::{CheckIsLeaderError, RaftError};
    let deadline = std::time::Instant::now() + CONFIRM_WAIT;
    loop {
        match raft.ensure_linearizable().await {
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))
                if std::time::Instant::now() < deadline =>
            {
                crate::metrics::leadership_reconfirmed();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e @ RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                tracing::warn!(
                    error = %e,
                    "leadership not confirmed by a majority within {CONFIRM_WAIT:?}: a linearizable read fails"
                );
                return Err(e);
            }
            other => return other,
        }
    }
}
