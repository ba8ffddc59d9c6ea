//! The one byte encoding of everything this crate stores or sends: log
//! entries, votes, snapshots and Raft RPCs (MessagePack through serde).
//! Keeping it in one place lets the format change in one place.
//!
//! It knows none of the types it encodes; the rule that keeps bytes already
//! written decodable lives with the types (see `Op`).

use serde::Serialize;
use serde::de::DeserializeOwned;

pub fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec(v).map_err(|e| format!("encode: {e}"))
}

/// [`encode`] into a buffer made with room for `size_hint` bytes (a large
/// Raft entry then takes one allocation, not a series of doublings).
pub fn encode_sized<T: Serialize + ?Sized>(v: &T, size_hint: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(size_hint);
    rmp_serde::encode::write(&mut out, v).map_err(|e| format!("encode: {e}"))?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(b).map_err(|e| format!("decode: {e}"))
}
