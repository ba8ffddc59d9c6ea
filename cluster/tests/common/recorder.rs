//! A minimal `metrics` recorder for tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// Per metric (`name{label=value}`): last value (gauges, histograms) or
/// total (counters), and the number of histogram records.
#[derive(Default)]
pub struct Values(pub Mutex<HashMap<String, (f64, u64)>>);

impl Values {
    pub fn get(&self, k: &str) -> Option<(f64, u64)> {
        self.0.lock().unwrap().get(k).copied()
    }
}

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

impl CounterFn for Handle {
    fn increment(&self, v: u64) {
        self.0
            .0
            .lock()
            .unwrap()
            .entry(self.1.clone())
            .or_default()
            .0 += v as f64;
    }
    fn absolute(&self, v: u64) {
        self.0
            .0
            .lock()
            .unwrap()
            .entry(self.1.clone())
            .or_default()
            .0 = v as f64;
    }
}

/// `name` or `name{label=value,...}`.
fn name(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    if labels.is_empty() {
        key.name().to_string()
    } else {
        format!("{}{{{}}}", key.name(), labels.join(","))
    }
}

pub struct TestRecorder(pub Arc<Values>);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Handle(self.0.clone(), name(key))))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Handle(self.0.clone(), name(key))))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Handle(self.0.clone(), name(key))))
    }
}
