//! The cluster's metrics (names `starling_raft_*` for the durable group,
//! `starling_registry_*` for the registry group, `starling_cluster_*`),
//! through the `metrics` facade; the node installs the exporter.
//!
//! The only module that names a metric: others call these functions, never
//! the facade.

use std::time::Duration;

/// Time to apply one batch of committed entries to the state machine.
pub fn apply_seconds(durable: bool, d: Duration) {
    if durable {
        metrics::histogram!("starling_raft_apply_seconds").record(d.as_secs_f64());
    } else {
        metrics::histogram!("starling_registry_apply_seconds").record(d.as_secs_f64());
    }
}

/// Client writes carried by one Raft entry (group commit).
pub fn writes_per_entry(durable: bool, n: usize) {
    if durable {
        metrics::histogram!("starling_raft_writes_per_entry").record(n as f64);
    } else {
        metrics::histogram!("starling_registry_writes_per_entry").record(n as f64);
    }
}

/// A write retried while no leader could take it (an election).
pub fn write_retried(durable: bool) {
    let group = if durable { "durable" } else { "registry" };
    metrics::counter!("starling_raft_write_retries_total", "group" => group).increment(1);
}

pub fn term(t: u64) {
    metrics::gauge!("starling_raft_term").set(t as f64);
}

pub fn commit_index(durable: bool, i: u64) {
    if durable {
        metrics::gauge!("starling_raft_commit_index").set(i as f64);
    } else {
        metrics::gauge!("starling_registry_commit_index").set(i as f64);
    }
}

pub fn applied_index(i: u64) {
    metrics::gauge!("starling_raft_applied_index").set(i as f64);
}

/// Envelopes waiting in the queue to `peer`.
pub fn delivery_queue_depth(peer: u64, n: usize) {
    metrics::gauge!("starling_cluster_delivery_queue_depth", "peer" => peer.to_string())
        .set(n as f64);
}

/// Envelopes from another node (or this one) that this node delivered:
/// counted where they are delivered, whether or not the sender waits for
/// the ack.
pub fn delivered() {
    metrics::counter!("starling_cluster_delivered_total").increment(1);
}

/// Envelopes not delivered, by `kind`: on the sender `backpressure`,
/// `unknown_node`, `unavailable`, `disconnected` (an acked envelope whose
/// stream broke first), `timeout`; on the receiver `no_session`, `refused`.
pub fn delivery_error(kind: &'static str) {
    metrics::counter!("starling_cluster_delivery_errors_total", "kind" => kind).increment(1);
}

/// 1 while this node's lease renewals commit, 0 when it cannot commit.
pub fn healthy(ok: bool) {
    metrics::gauge!("starling_cluster_healthy").set(if ok { 1.0 } else { 0.0 });
}

/// Node expiries this replica applied.
pub fn node_expired() {
    metrics::counter!("starling_cluster_nodes_expired_total").increment(1);
}

/// From proposing a Raft entry (or forwarding it) to its result.
pub fn commit_seconds(durable: bool, d: Duration) {
    if durable {
        metrics::histogram!("starling_raft_commit_seconds").record(d.as_secs_f64());
    } else {
        metrics::histogram!("starling_registry_commit_seconds").record(d.as_secs_f64());
    }
}

pub fn leader_change() {
    metrics::counter!("starling_raft_leader_changes_total").increment(1);
}

/// Size of the last snapshot built or installed.
pub fn snapshot_bytes(n: usize) {
    metrics::gauge!("starling_raft_snapshot_bytes").set(n as f64);
}

/// The registry group's epoch this node serves (0: none yet).
pub fn registry_epoch(e: u64) {
    metrics::gauge!("starling_registry_epoch").set(e as f64);
}

/// Times this node moved to a new registry epoch (re-founded or joined).
pub fn registry_switch() {
    metrics::counter!("starling_registry_switches_total").increment(1);
}

/// A linearizable read asked its followers again: too few had confirmed
/// this leader in time (slow followers, or a leader cut off).
pub fn leadership_reconfirmed() {
    metrics::counter!("starling_raft_leadership_reconfirmed_total").increment(1);
}
