//! The cluster's metrics reach the `metrics` facade. A minimal recorder
//! keeps the last value of each gauge and the count of each histogram.

mod common;

use std::sync::Arc;

use common::recorder::{TestRecorder, Values};
use starling_cluster::{
    DeliveryError, DeliveryResult, Envelope, LocalDelivery, Op, Store, StoreConfig,
};

struct Sink;

impl LocalDelivery for Sink {
    fn deliver(&self, _: Envelope) -> DeliveryResult {
        DeliveryResult::Delivered
    }
}

fn env() -> Envelope {
    Envelope {
        to: "a@b/c".into(),
        from: "d@e/f".into(),
        stanza: b"<message/>".to_vec(),
        session_id: 1,
        close: String::new(),
        min_applied: 0,
        min_applied_registry: 0,
        registry_epoch: 0,
        ..Envelope::default()
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
    // Delivery to this node itself, refused without a handler, then taken.
    assert_eq!(
        store.deliver_acked(1, env()).await,
        Ok(DeliveryResult::Refused)
    );
    assert_eq!(store.deliver(7, env()), Err(DeliveryError::UnknownNode(7)));
    store.set_local_delivery(Arc::new(Sink));
    assert_eq!(
        store.deliver_acked(1, env()).await,
        Ok(DeliveryResult::Delivered)
    );
    assert!(store.is_healthy());
    // The health gauge is refreshed twice a second.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(values.get("starling_cluster_healthy"), Some((1.0, 0)));
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
    assert!(get("starling_raft_commit_seconds").1 >= 5);
    assert!(get("starling_raft_leader_changes_total").0 >= 1.0);
    assert_eq!(get("starling_cluster_delivered_total").0, 1.0);
    assert_eq!(
        get("starling_cluster_delivery_errors_total{kind=refused}").0,
        1.0
    );
    assert_eq!(
        get("starling_cluster_delivery_errors_total{kind=unknown_node}").0,
        1.0
    );
    assert_eq!(get("starling_cluster_healthy").0, 0.0, "0 once shut down");
}
