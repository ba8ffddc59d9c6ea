//! A `metrics` recorder that keeps the few store metrics the ceiling explains itself with: how
//! long a Raft entry takes to commit, how long applying takes, and when snapshots are built.
//! Every other metric is a no-op handle, so the probe costs the store next to nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// From proposing (or forwarding) an entry to its result, seconds, per entry (every node's
/// batcher).
pub const COMMIT: &str = "starling_raft_commit_seconds";
/// Applying one batch of committed entries, seconds (every node).
pub const APPLY: &str = "starling_raft_apply_seconds";
/// Set once per snapshot built or installed, to its size in bytes (every node).
pub const SNAPSHOT: &str = "starling_raft_snapshot_bytes";

const WATCHED: [&str; 3] = [COMMIT, APPLY, SNAPSHOT];

/// Sum, count and last value of a watched metric.
#[derive(Clone, Copy, Debug, Default)]
pub struct Acc {
    pub sum: f64,
    pub count: u64,
    pub last: f64,
}

impl Acc {
    /// What happened between `before` and `self`.
    pub fn since(&self, before: &Acc) -> Acc {
        Acc {
            sum: self.sum - before.sum,
            count: self.count - before.count,
            last: self.last,
        }
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.sum / self.count as f64
        }
    }
}

#[derive(Default)]
pub struct Probe(Mutex<HashMap<&'static str, Acc>>);

impl Probe {
    pub fn get(&self, name: &str) -> Acc {
        self.lock().get(name).copied().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Acc>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, name: &'static str, v: f64) {
        let mut m = self.lock();
        let a = m.entry(name).or_default();
        a.sum += v;
        a.count += 1;
        a.last = v;
    }
}

struct Handle(Arc<Probe>, &'static str);

impl HistogramFn for Handle {
    fn record(&self, v: f64) {
        self.0.record(self.1, v);
    }
}

impl GaugeFn for Handle {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, v: f64) {
        self.0.record(self.1, v);
    }
}

pub struct ProbeRecorder(pub Arc<Probe>);

impl ProbeRecorder {
    fn watched(key: &Key) -> Option<&'static str> {
        WATCHED.into_iter().find(|n| *n == key.name())
    }
}

impl Recorder for ProbeRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        match Self::watched(key) {
            Some(n) => Gauge::from_arc(Arc::new(Handle(self.0.clone(), n))),
            None => Gauge::noop(),
        }
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        match Self::watched(key) {
            Some(n) => Histogram::from_arc(Arc::new(Handle(self.0.clone(), n))),
            None => Histogram::noop(),
        }
    }
}

/// Installs the probe as the process's recorder (once).
pub fn install() -> anyhow::Result<Arc<Probe>> {
    let probe = Arc::new(Probe::default());
    metrics::set_global_recorder(ProbeRecorder(probe.clone()))
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
    Ok(probe)
}
