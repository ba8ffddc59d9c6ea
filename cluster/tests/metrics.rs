//! The cluster's metrics reach the `metrics` facade. A minimal recorder
//! keeps the last value of each gauge and the count of each histogram.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use starling_cluster::{Op, Store, StoreConfig};

#[derive(Default)]
struct Values(Mutex<HashMap<String, (f64, u64)>>);

struct Handle(Arc<Values>, String);

impl GaugeFn for Handle {
    fn increment(&self, v: f64) {
        self.0
            .0
            .lock()
            .unwrap()
            .entry(self.1.clone())
            .or_default()
            .0 += v;
    }
    fn decrement(&self, v: f64) {
        self.0
            .0
            .lock()
            .unwrap()
            .entry(self.1.clone())
            .or_default()
            .0 -= v;
    }
    fn set(&self, v: f64) {
        self.0
            .0
            .lock()
            .unwrap()
            .entry(self.1.clone())
            .or_default()
            .0 = v;
    }
}

impl HistogramFn for Handle {
    fn record(&self, v: f64) {
        let mut m = self.0.0.lock().unwrap();
        let e = m.entry(self.1.clone()).or_default();
        e.0 = v;
        e.1 += 1;
    }
}

struct TestRecorder(Arc<Values>);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Handle(self.0.clone(), key.name().to_string())))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Handle(self.0.clone(), key.name().to_string())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_metrics_are_reported() {
    let values = Arc::new(Values::default());
    metrics::set_global_recorder(TestRecorder(values.clone())).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig {
        data_dir: dir.path().to_path_buf(),
        node_id: 1,
        raft_addr: "127.0.0.1:0".into(),
    })
    .await
    .unwrap();
    for i in 0..5 {
        store
            .write(vec![Op::Put {
                space: "s".into(),
                key: vec![i],
                value: vec![i],
            }])
            .await
            .unwrap();
    }
    store.read_barrier().await.unwrap();
    store.shutdown().await.unwrap();

    let m = values.0.lock().unwrap();
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("{k} not reported: {m:?}"))
    };
    assert!(get("starling_raft_apply_seconds").1 >= 5);
    assert_eq!(get("starling_raft_writes_per_entry").1, 5);
    assert!(get("starling_raft_term").0 >= 1.0);
    assert!(get("starling_raft_commit_index").0 >= 5.0);
    assert!(get("starling_raft_applied_index").0 >= 5.0);
}
