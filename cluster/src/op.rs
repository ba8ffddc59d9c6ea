//! The write language: `Op`, one operation of an atomic write, and
//! `OpResult`, what became of it.
//!
//! What an op does is `store::apply`; this module must not evaluate
//! anything. Both types are in the Raft log: read `Op`'s doc before changing
//! either.

use serde::{Deserialize, Serialize};

/// One operation of a write. A write is a list of operations applied
/// atomically and in order: if any conditional operation fails, nothing of
/// that write is applied and the results say which one failed.
///
/// Ops are in the Raft log (MessagePack through `codec`): a variant is
/// written by its name and its fields by position, so a variant must not
/// be renamed nor its fields reordered; new variants go at the end. Byte
/// fields are written as MessagePack binaries (`serde_bytes`: one copy,
/// not a call per byte); entries written before, with those fields as
/// arrays of integers, still decode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        space: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Set `key` only if it is absent; fails with `OpResult::Exists`
    /// (unless it holds exactly `value`: the same insert again, `Done`, so
    /// that a write retried after a lost reply is harmless).
    Insert {
        space: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove `key` (no error if absent).
    Delete {
        space: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Remove every key starting with `prefix`.
    DeletePrefix {
        space: String,
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
    },
    /// Remove `key` if its value starts with `prefix` (no error
    /// otherwise): "remove it if it is still mine".
    DeleteIf {
        space: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
    },
    /// Go on only if `key` exists and its value starts with `prefix`;
    /// otherwise the write fails with `OpResult::Mismatch`.
    Expect {
        space: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
    },
    /// Drop what an index names: for every key `prefix ++ rest` in space
    /// `index`, remove that index key, and remove key `rest` of `space`
    /// if its value starts with `prefix` (the index entry is only trusted
    /// while the value still names the same owner). See [`routes`](crate::routes).
    DeleteIndexed {
        space: String,
        index: String,
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
    },
    /// Store `value` under `prefix ++ u64 big-endian sequence number` (the
    /// sequence grows monotonically per space); fails with `OpResult::Full`
    /// when `max` keys already exist under `prefix`.
    Append {
        space: String,
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        max: u64,
    },
    /// Go on only if `key`'s current value equals `value` (`None`: the key is
    /// absent); otherwise the write fails with `OpResult::Mismatch`. The
    /// compare half of a compare-and-set: per-user read-modify-writes put
    /// the version they read here, so two nodes never lose each other's update.
    ExpectValue {
        space: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
    },
    /// Add one to the counter at `key` (a u64, big-endian; absent: 0) and
    /// store it: `OpResult::Seq(new value)`. A version that concurrent
    /// writes each bump in log order, without reading it first (so they
    /// need not conflict on it).
    Incr {
        space: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Remove `key` and say what it held: `OpResult::Removed` with the one
    /// `(key, value)` pair, or with none when the key was absent. An
    /// atomic claim: of several writers taking the same key, exactly one
    /// gets its value (an offline message delivered once by whichever
    /// flush takes it). Not idempotent: a retry would find it gone.
    Take {
        space: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

impl Op {
    /// A set or a removal of one key whatever it held: applying it again
    /// on any state between before and after it ends in the same state
    /// (the state machine writes a batch of only these without a journal).
    pub fn is_blind(&self) -> bool {
        matches!(self, Op::Put { .. } | Op::Delete { .. })
    }
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
    /// `DeleteIndexed` or `Take` removed these `(key, value)` pairs of its space.
    Removed(Vec<(Vec<u8>, Vec<u8>)>),
    /// Not applied because another operation of the same write failed.
    Aborted,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The bytes each variant is written as now, and the bytes it had in
    /// logs written before byte fields became MessagePack binaries: a
    /// change here means logs already written no longer decode.
    #[test]
    fn log_encoding_is_stable() {
        let s = || "s".to_string();
        let k = || b"k".to_vec();
        let p = || b"p".to_vec();
        let v = || b"v".to_vec();
        let ops = [
            (
                Op::Put {
                    space: s(),
                    key: k(),
                    value: v(),
                },
                "81a350757493a173916b9176",
                "81a350757493a173c4016bc40176",
            ),
            (
                Op::Insert {
                    space: s(),
                    key: k(),
                    value: v(),
                },
                "81a6496e7365727493a173916b9176",
                "81a6496e7365727493a173c4016bc40176",
            ),
            (
                Op::Delete {
                    space: s(),
                    key: k(),
                },
                "81a644656c65746592a173916b",
                "81a644656c65746592a173c4016b",
            ),
            (
                Op::DeletePrefix {
                    space: s(),
                    prefix: p(),
                },
                "81ac44656c65746550726566697892a1739170",
                "81ac44656c65746550726566697892a173c40170",
            ),
            (
                Op::DeleteIf {
                    space: s(),
                    key: k(),
                    prefix: p(),
                },
                "81a844656c657465496693a173916b9170",
                "81a844656c657465496693a173c4016bc40170",
            ),
            (
                Op::Expect {
                    space: s(),
                    key: k(),
                    prefix: p(),
                },
                "81a645787065637493a173916b9170",
                "81a645787065637493a173c4016bc40170",
            ),
            (
                Op::DeleteIndexed {
                    space: s(),
                    index: "i".into(),
                    prefix: p(),
                },
                "81ad44656c657465496e646578656493a173a1699170",
                "81ad44656c657465496e646578656493a173a169c40170",
            ),
            (
                Op::Append {
                    space: s(),
                    prefix: p(),
                    value: v(),
                    max: 3,
                },
                "81a6417070656e6494a1739170917603",
                "81a6417070656e6494a173c40170c4017603",
            ),
            (
                Op::ExpectValue {
                    space: s(),
                    key: k(),
                    value: None,
                },
                "81ab45787065637456616c756593a173916bc0",
                "81ab45787065637456616c756593a173c4016bc0",
            ),
            (
                Op::ExpectValue {
                    space: s(),
                    key: k(),
                    value: Some(v()),
                },
                "81ab45787065637456616c756593a173916b9176",
                "81ab45787065637456616c756593a173c4016bc40176",
            ),
            (
                Op::Incr {
                    space: s(),
                    key: k(),
                },
                "81a4496e637292a173916b",
                "81a4496e637292a173c4016b",
            ),
            (
                Op::Take {
                    space: s(),
                    key: k(),
                },
                "81a454616b6592a173916b",
                "81a454616b6592a173c4016b",
            ),
        ];
        let unhex = |h: &str| -> Vec<u8> {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        };
        for (op, legacy, current) in ops {
            assert_eq!(hex(&encode(&op).unwrap()), current, "{op:?}");
            assert_eq!(decode::<Op>(&unhex(current)).unwrap(), op);
            assert_eq!(decode::<Op>(&unhex(legacy)).unwrap(), op, "legacy {op:?}");
        }
        let results = [
            (OpResult::Done, "a4446f6e65"),
            (OpResult::Seq(7), "81a353657107"),
            (OpResult::Exists, "a6457869737473"),
            (OpResult::Full, "a446756c6c"),
            (OpResult::Mismatch, "a84d69736d61746368"),
            (
                OpResult::Removed(vec![(k(), v())]),
                "81a752656d6f7665649192916b9176",
            ),
            (OpResult::Aborted, "a741626f72746564"),
        ];
        for (r, bytes) in results {
            assert_eq!(hex(&encode(&r).unwrap()), bytes, "{r:?}");
        }
    }
}
