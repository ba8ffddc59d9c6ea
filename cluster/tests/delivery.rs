//! Stanza delivery between two nodes over the mTLS delivery stream:
//! acks carry the receiver's answer, a hung receiver (its traffic held by a
//! paused proxy) makes the sender's bounded queue answer `Backpressure`
//! instead of growing, and a stopped receiver fails deliveries instead of
//! holding them.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use starling_cluster::{
    DeliveryError, DeliveryResult, Envelope, LocalDelivery, Store, StoreOptions,
};

#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<Envelope>>,
}

impl LocalDelivery for Receiver {
    fn deliver(&self, env: Envelope) -> DeliveryResult {
        let r = if env.to.starts_with("alice@") {
            DeliveryResult::Delivered
        } else {
            DeliveryResult::NoSession
        };
        self.got.lock().unwrap().push(env);
        r
    }
}

fn env(to: &str, n: usize) -> Envelope {
    Envelope {
        to: to.into(),
        from: "bob@example.com/x".into(),
        stanza: format!("<message id='{n}'/>").into_bytes(),
        session_id: 7,
        close: String::new(),
        min_applied: 0,
        min_applied_registry: 0,
        registry_epoch: 0,
        ..Envelope::default()
    }
}

const QUEUE: usize = 64;
const WINDOW: usize = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_with_acks_and_backpressure() {
    let values = Arc::new(common::recorder::Values::default());
    metrics::set_global_recorder(common::recorder::TestRecorder(values.clone())).unwrap();
    let pkidir = tempfile::tempdir().unwrap();
    let ca = Pki::new(pkidir.path());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<_> = (0..2).map(|_| free_addr()).collect();
    // Node 1 reaches node 2 through a proxy that can hold its traffic.
    let net = Arc::new(common::proxy::Net::default());
    let via = net.proxy(2, addrs[1]).await;
    let opts = |name: &str| StoreOptions {
        tls: Some(ca.node(name)),
        delivery_queue: QUEUE,
        ..Default::default()
    };
    let s1 = Store::open_with(cfg(dirs[0].path(), 1, addrs[0]), opts("n1"))
        .await
        .unwrap();
    let s2 = Store::open_joining_with(cfg(dirs[1].path(), 2, via), opts("n2"))
        .await
        .unwrap();
    let mut servers = Vec::new();
    for (s, a) in [(&s1, addrs[0]), (&s2, addrs[1])] {
        let s = s.clone();
        servers.push(tokio::spawn(async move { s.serve_grpc(a).await }));
    }
    s1.add_member(2, &via.to_string()).await.unwrap();
    let rx = Arc::new(Receiver::default());
    s2.set_local_delivery(rx.clone());

    // Acks carry the receiver's answer.
    let r = s1.deliver_acked(2, env("alice@example.com/a", 0)).await;
    assert_eq!(r, Ok(DeliveryResult::Delivered));
    let r = s1.deliver_acked(2, env("carol@example.com/a", 1)).await;
    assert_eq!(r, Ok(DeliveryResult::NoSession));
    // No handler on node 1: refused. Unknown node: an error at once.
    let r = s2.deliver_acked(1, env("alice@example.com/a", 2)).await;
    assert_eq!(r, Ok(DeliveryResult::Refused));
    assert_eq!(
        s1.deliver(9, env("alice@example.com/a", 3)),
        Err(DeliveryError::UnknownNode(9))
    );
    // From a thread outside any runtime (as from another executor).
    let r = std::thread::spawn({
        let s1 = s1.clone();
        move || {
            s1.deliver(2, env("alice@example.com/a", 90)).unwrap();
            futures::executor::block_on(s1.deliver_acked(2, env("alice@example.com/a", 91)))
        }
    })
    .join()
    .unwrap();
    assert_eq!(r, Ok(DeliveryResult::Delivered));
    eventually("both delivered", 10, || rx.got.lock().unwrap().len() == 4).await;
    rx.got.lock().unwrap().drain(2..);
    // Fire and forget, in order; they are acknowledged only now and then,
    // so a window's worth of them (and more) must not stall the stream.
    let n = 3 * WINDOW + 7;
    let until = Instant::now() + Duration::from_secs(10);
    for i in 0..n {
        loop {
            match s1.deliver(2, env("alice@example.com/a", 100 + i)) {
                Ok(()) => break,
                Err(DeliveryError::Backpressure) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => panic!("envelope {i} of {n}: {e}"),
            }
        }
    }
    eventually("fire-and-forget delivered", 10, || {
        rx.got.lock().unwrap().len() == 2 + n
    })
    .await;
    {
        let got = rx.got.lock().unwrap();
        let ids: Vec<_> = got[2..]
            .iter()
            .map(|e| String::from_utf8(e.stanza.clone()).unwrap())
            .collect();
        let want: Vec<_> = (0..n)
            .map(|i| format!("<message id='{}'/>", 100 + i))
            .collect();
        assert_eq!(ids, want);
        assert_eq!(got[2].session_id, 7);
    }
    // An acked envelope after them still gets its own answer.
    let r = s1.deliver_acked(2, env("alice@example.com/a", 4)).await;
    assert_eq!(r, Ok(DeliveryResult::Delivered));
    rx.got.lock().unwrap().clear();

    // A hung receiver: nothing gets through, no acks come back, at most
    // WINDOW are in flight and then the bounded queue refuses. (Resumed
    // well within the streams' 1 s + 3 s keep-alive.)
    net.pause();
    let mut accepted = 0usize;
    let mut refused = false;
    for i in 0..10_000 {
        match s1.deliver(2, env("alice@example.com/a", 1000 + i)) {
            Ok(()) => accepted += 1,
            Err(DeliveryError::Backpressure) => {
                refused = true;
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        if i % 32 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert!(refused, "queue never filled");
    assert!(
        accepted <= QUEUE + WINDOW + 1,
        "accepted {accepted}: the sender buffers beyond its bounds"
    );
    // Still full while stalled.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let depth = values.get("starling_cluster_delivery_queue_depth{peer=2}");
    assert_eq!(depth, Some((QUEUE as f64, 0)));
    assert!(
        values
            .get("starling_cluster_delivery_errors_total{kind=backpressure}")
            .is_some_and(|v| v.0 >= 1.0)
    );
    assert_eq!(
        s1.deliver(2, env("alice@example.com/a", 99_999)),
        Err(DeliveryError::Backpressure)
    );
    net.resume();
    eventually("backlog delivered", 10, || {
        rx.got.lock().unwrap().len() == accepted
    })
    .await;
    let r = s1.deliver_acked(2, env("alice@example.com/a", 5)).await;
    assert_eq!(r, Ok(DeliveryResult::Delivered));
    assert_eq!(
        values.get("starling_cluster_delivery_queue_depth{peer=2}"),
        Some((0.0, 0))
    );
    assert!(
        values
            .get("starling_cluster_delivered_total")
            .is_some_and(|v| v.0 >= 52.0)
    );

    // The receiver goes away: deliveries fail promptly instead of queueing.
    s2.shutdown().await.unwrap();
    let start = Instant::now();
    let r = s1.deliver_acked(2, env("alice@example.com/a", 6)).await;
    assert!(matches!(r, Err(DeliveryError::Unavailable(_))), "got {r:?}");
    assert!(start.elapsed() < Duration::from_secs(8));

    s1.shutdown().await.unwrap();
    net.stop();
    for t in servers {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
}
