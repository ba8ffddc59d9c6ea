//! `StoreError`, what every `Store` call fails with, and how storage and
//! openraft errors become one.
//!
//! Must not let a lower type out: callers see three variants carrying
//! strings, never an openraft, sled or tonic error.

use openraft::BasicNode;
use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, RaftError};

use crate::raft::{Node, NodeId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Storage(String),
    #[error("no quorum / not leader: {0}")]
    Unavailable(String),
    #[error("store is shut down")]
    Shutdown,
}

pub(crate) fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

pub(crate) fn leader_error(e: RaftError<u64, CheckIsLeaderError<u64, BasicNode>>) -> StoreError {
    match e {
        RaftError::APIError(e) => StoreError::Unavailable(e.to_string()),
        RaftError::Fatal(f) => fatal(f),
    }
}

pub(crate) fn client_write_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, Node>>,
) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            StoreError::Unavailable(format!("not the leader (leader: {:?})", f.leader_id))
        }
        RaftError::APIError(e) => StoreError::Unavailable(e.to_string()),
        RaftError::Fatal(f) => fatal(f),
    }
}

pub(crate) fn fatal(f: Fatal<NodeId>) -> StoreError {
    match f {
        Fatal::Stopped => StoreError::Shutdown,
        other => StoreError::Storage(other.to_string()),
    }
}
