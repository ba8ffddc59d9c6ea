//! The write language: `Op`, one operation of an atomic write, and
//! `OpResult`, what became of it.

use serde::{Deserialize, Serialize};

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
    /// while the value still names the same owner). See [`routes`](crate::routes).
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
