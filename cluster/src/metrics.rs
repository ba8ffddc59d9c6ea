//! The cluster's metrics (names `starling_raft_*`), through the `metrics`
//! facade; the node installs the exporter.

use std::time::Duration;

/// Time to apply one batch of committed entries to the state machine.
pub fn apply_seconds(d: Duration) {
    metrics::histogram!("starling_raft_apply_seconds").record(d.as_secs_f64());
}

/// Client writes carried by one Raft entry (group commit).
pub fn writes_per_entry(n: usize) {
    metrics::histogram!("starling_raft_writes_per_entry").record(n as f64);
}

pub fn term(t: u64) {
    metrics::gauge!("starling_raft_term").set(t as f64);
}

pub fn commit_index(i: u64) {
    metrics::gauge!("starling_raft_commit_index").set(i as f64);
}

pub fn applied_index(i: u64) {
    metrics::gauge!("starling_raft_applied_index").set(i as f64);
}

/// Envelopes waiting in the queue to `peer`.
pub fn delivery_queue_depth(peer: u64, n: usize) {
    metrics::gauge!("starling_cluster_delivery_queue_depth", "peer" => peer.to_string())
        .set(n as f64);
}

/// Envelopes another node acknowledged as delivered.
pub fn delivered() {
    metrics::counter!("starling_cluster_delivered_total").increment(1);
}

/// Envelopes not delivered, by `kind`: `backpressure`, `unknown_node`,
/// `unavailable`, `disconnected`, `timeout`, `no_session`, `refused`.
pub fn delivery_error(kind: &'static str) {
    metrics::counter!("starling_cluster_delivery_errors_total", "kind" => kind).increment(1);
}
