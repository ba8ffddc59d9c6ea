//! Stanza delivery between two nodes over the mTLS delivery stream:
//! acks carry the receiver's answer, a stalled receiver makes the sender's
//! bounded queue answer `Backpressure` instead of growing, and a stopped
//! receiver fails deliveries instead of holding them.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use starling_cluster::{
    DeliveryError, DeliveryResult, Envelope, LocalDelivery, Store, StoreOptions,
};

#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<Envelope>>,
    stall: AtomicBool,
    gate: (Mutex<bool>, Condvar),
}

impl Receiver {
    fn release(&self) {
        self.stall.store(false, Ordering::SeqCst);
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }
}

impl LocalDelivery for Receiver {
    fn deliver(&self, env: Envelope) -> DeliveryResult {
        if self.stall.load(Ordering::SeqCst) {
            // A stalled node: blocks (bounded) until released.
            let g = self.gate.0.lock().unwrap();
            let _ = self
                .gate
                .1
                .wait_timeout_while(g, Duration::from_secs(15), |open| !*open)
                .unwrap();
        }
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
    }
}

const QUEUE: usize = 64;
const WINDOW: usize = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivery_with_acks_and_backpressure() {
    let pkidir = tempfile::tempdir().unwrap();
    let ca = Pki::new(pkidir.path());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<_> = (0..2).map(|_| free_addr()).collect();
    let opts = |name: &str| StoreOptions {
        tls: Some(ca.node(name)),
        delivery_queue: QUEUE,
        ..Default::default()
    };
    let s1 = Store::open_with(cfg(dirs[0].path(), 1, addrs[0]), opts("n1"))
        .await
        .unwrap();
    let s2 = Store::open_joining_with(cfg(dirs[1].path(), 2, addrs[1]), opts("n2"))
        .await
        .unwrap();
    let mut servers = Vec::new();
    for (s, a) in [(&s1, addrs[0]), (&s2, addrs[1])] {
        let s = s.clone();
        servers.push(tokio::spawn(async move { s.serve_grpc(a).await }));
    }
    s1.add_member(2, &addrs[1].to_string()).await.unwrap();
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
    // Fire and forget, in order.
    for i in 0..50 {
        s1.deliver(2, env("alice@example.com/a", 100 + i)).unwrap();
    }
    eventually("50 delivered", 10, || rx.got.lock().unwrap().len() == 52).await;
    {
        let got = rx.got.lock().unwrap();
        let ids: Vec<_> = got[2..]
            .iter()
            .map(|e| String::from_utf8(e.stanza.clone()).unwrap())
            .collect();
        let want: Vec<_> = (0..50)
            .map(|i| format!("<message id='{}'/>", 100 + i))
            .collect();
        assert_eq!(ids, want);
        assert_eq!(got[2].session_id, 7);
    }

    // A stalled receiver: no acks come back, at most WINDOW are in flight
    // and then the bounded queue refuses.
    rx.stall.store(true, Ordering::SeqCst);
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
    assert_eq!(
        s1.deliver(2, env("alice@example.com/a", 99_999)),
        Err(DeliveryError::Backpressure)
    );
    rx.release();
    eventually("backlog delivered", 10, || {
        rx.got.lock().unwrap().len() == 52 + accepted
    })
    .await;
    let r = s1.deliver_acked(2, env("alice@example.com/a", 5)).await;
    assert_eq!(r, Ok(DeliveryResult::Delivered));

    // The receiver goes away: deliveries fail promptly instead of queueing.
    s2.shutdown().await.unwrap();
    let start = Instant::now();
    let r = s1.deliver_acked(2, env("alice@example.com/a", 6)).await;
    assert!(matches!(r, Err(DeliveryError::Unavailable(_))), "got {r:?}");
    assert!(start.elapsed() < Duration::from_secs(8));

    s1.shutdown().await.unwrap();
    for t in servers {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
}
