//! Starling's replicated state: an openraft group whose log and state machine
//! live in sled (behind the `kv` seam), reached over tonic between nodes.
//!
//! A single node is a cluster of one. Callers see only this module's types:
//! no openraft, sled or tonic type appears in the public API.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One operation of a write. A write is a list of operations applied
/// atomically and in order: if any conditional operation fails, nothing of
/// that write is applied and the results say which one failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set `key` to `value`.
    Put { space: String, key: Vec<u8>, value: Vec<u8> },
    /// Set `key` only if it is absent; fails with `OpResult::Exists`.
    Insert { space: String, key: Vec<u8>, value: Vec<u8> },
    /// Remove `key` (no error if absent).
    Delete { space: String, key: Vec<u8> },
    /// Remove every key starting with `prefix`.
    DeletePrefix { space: String, prefix: Vec<u8> },
    /// Store `value` under `prefix ++ u64 big-endian sequence number` (the
    /// sequence grows monotonically per space); fails with `OpResult::Full`
    /// when `max` keys already exist under `prefix`.
    Append { space: String, prefix: Vec<u8>, value: Vec<u8>, max: u64 },
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

/// Handle on the replicated store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    _private: (),
}

impl Store {
    /// Opens (or creates) the store and starts the Raft node. Must be called
    /// on a multi-thread tokio runtime. A fresh single node initialises
    /// itself as a one-member cluster.
    pub async fn open(_cfg: StoreConfig) -> Result<Store, StoreError> {
        todo!()
    }

    /// Replicates and applies one write. Concurrent writes are batched into
    /// one Raft entry. Returns once committed and applied, one result per op.
    pub async fn write(&self, _ops: Vec<Op>) -> Result<Vec<OpResult>, StoreError> {
        todo!()
    }

    /// Reads one key from the local replica.
    pub fn get(&self, _space: &str, _key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        todo!()
    }

    /// All keys and values under `prefix`, in key order, from the local replica.
    pub fn scan_prefix(
        &self,
        _space: &str,
        _prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        todo!()
    }

    /// Number of keys under `prefix` in the local replica.
    pub fn count_prefix(&self, _space: &str, _prefix: &[u8]) -> Result<u64, StoreError> {
        todo!()
    }

    /// Waits until the local replica has applied everything committed
    /// before this call (a linearizable read barrier).
    pub async fn read_barrier(&self) -> Result<(), StoreError> {
        todo!()
    }

    /// Stops Raft and flushes storage.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        todo!()
    }
}
