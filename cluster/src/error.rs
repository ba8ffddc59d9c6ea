//! `StoreError`, what every `Store` call fails with, and the helpers that
//! turn lower errors into it.

use openraft::BasicNode;
use openraft::error::{CheckIsLeaderError, RaftError};

use crate::batcher;

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
        RaftError::Fatal(f) => batcher::fatal(f),
    }
}
