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
