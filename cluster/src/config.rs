//! How a store is opened: `StoreConfig`, `StoreOptions`, `ClusterTls` and
//! `LeaseConfig`, with their defaults.
//!
//! Plain data: must not read files, open sockets or start anything (the TLS
//! files are read by `transport` when the store opens).

use std::net::IpAddr;
use std::path::PathBuf;

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

/// Mutual TLS between nodes: PEM files of the cluster CA and of this
/// node's certificate (SAN `starling-node`, see [`pki`](crate::pki)) and key. Every
/// peer must present a certificate signed by that CA, as server and as
/// client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterTls {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What [`StoreConfig`] leaves out, each with a default: `Store::open` is
/// `Store::open_with(cfg, StoreOptions::default())`.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Mutual TLS between nodes; `None` is plain HTTP/2 (a single node, or
    /// a private network).
    pub tls: Option<ClusterTls>,
    /// Source address of this node's outgoing connections (multi-homed
    /// hosts); `None` lets the system choose.
    pub source_ip: Option<IpAddr>,
    /// Envelopes queued per peer for `Store::deliver` before it answers
    /// `DeliveryError::Backpressure` (default 4096).
    pub delivery_queue: usize,
    /// Lease renewal and failure detection (default: renew every second,
    /// expire after 4 s).
    pub lease: LeaseConfig,
    /// How long a write may wait for its commit before it fails with
    /// `Unavailable` (default 10 s): a node without quorum fails writes
    /// instead of hanging. The write may still commit later.
    pub write_timeout_ms: u64,
    /// Under load (a write arriving within this long of the previous
    /// entry's commit), the durable group waits up to this long for more
    /// writes to share the entry (default 0: never).
    pub write_linger_us: u64,
    /// How long an entry of writes nobody waits for (`Store::write_behind`:
    /// the message archive) waits for more before it is proposed (default
    /// 0: as other writes).
    pub behind_linger_us: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            tls: None,
            source_ip: None,
            delivery_queue: 4096,
            lease: LeaseConfig::default(),
            write_timeout_ms: 10_000,
            write_linger_us: 0,
            behind_linger_us: 0,
        }
    }
}

/// Lease timing. `renew_ms == 0` turns leases off (health is then "a
/// leader is known").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How often this node renews its lease.
    pub renew_ms: u64,
    /// How long without renewal before the leader expires a node, and
    /// before a node that cannot commit calls itself unhealthy.
    pub ttl_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            renew_ms: 1000,
            ttl_ms: 4000,
        }
    }
}
