//! Raft storage on the key-value seam: the log (`log.rs`), the state
//! machine with its snapshots (`state_machine.rs`) and the meaning of a
//! write (`apply.rs`).
//!
//! Storage only: must not reach the network, the batcher or the handle;
//! what applying reveals goes out through `events`.

// openraft's trait methods fix `StorageError` (224 bytes) as the error type;
// the helpers here return it too rather than boxing and unboxing.
#![allow(clippy::result_large_err)]

pub mod apply;
pub mod filelog;
pub mod log;
pub mod state_machine;
#[cfg(test)]
mod suite;

pub use log::LogStore;
pub use state_machine::{StateMachine, space_tree, with_space_tree};
