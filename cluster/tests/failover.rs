//! Three nodes over mutual TLS lose their leader to a crash: a new leader
//! is elected, writes continue, the dead node's lease expires (its routes
//! go, `node_expired` fires on the survivors), and the dead node, restarted
//! from its data directory, catches up.

mod common;

use std::time::Instant;

use common::*;
use starling_cluster::{
    DeliveryError, DeliveryResult, Envelope, LocalDelivery, OpResult, StoreOptions, routes,
};

struct Accept;

impl LocalDelivery for Accept {
    fn deliver(&self, _: Envelope) -> DeliveryResult {
        DeliveryResult::Delivered
    }
}

fn env() -> Envelope {
    Envelope {
        to: "alice@example.com/phone".into(),
        from: "bob@example.com/pc".into(),
        stanza: b"<message><body>hi</body></message>".to_vec(),
        session_id: 1,
        close: String::new(),
        min_applied: 0,
        min_applied_registry: 0,
        registry_epoch: 0,
        ..Envelope::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_failover_expiry_and_restart() {
    let pkidir = tempfile::tempdir().unwrap();
    let ca = Pki::new(pkidir.path());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Node> = Vec::new();
    for (i, dir) in dirs.iter().enumerate().take(3) {
        let id = i as u64 + 1;
        let addr = free_addr();
        let opts = StoreOptions {
            tls: Some(ca.node(&format!("n{id}"))),
            lease: fast_lease(),
            write_timeout_ms: 3000,
            ..Default::default()
        };
        let n = Node::start(cfg(dir.path(), id, addr), opts, addr, i == 0).await;
        if i > 0 {
            nodes[0]
                .store
                .add_member(id, &addr.to_string())
                .await
                .unwrap();
        }
        nodes.push(n);
    }
    let n1 = nodes.remove(0);
    let (n2, n3) = (&nodes[0], &nodes[1]);

    // Routes live in the registry group, which the nodes found and join
    // once they have peers.
    eventually("all in the registry", 15, || {
        [&n1, n2, n3].iter().all(|n| n.store.registry_active())
    })
    .await;
    // Routes held by node 1 and node 2.
    let mut ops = routes::put(1, "alice@example.com", "phone", b"s1");
    ops.extend(routes::put(2, "bob@example.com", "pc", b"s2"));
    n2.store.write(ops).await.unwrap();
    eventually("all healthy", 10, || {
        [&n1, n2, n3].iter().all(|n| n.store.is_healthy())
    })
    .await;
    assert_eq!(leader_of(&[&n1, n2, n3]), Some(1));
    n1.store.set_local_delivery(std::sync::Arc::new(Accept));
    assert_eq!(
        n2.store.deliver_acked(1, env()).await,
        Ok(DeliveryResult::Delivered)
    );

    // The leader crashes.
    let crashed_at = Instant::now();
    let (c1, o1, l1) = n1.crash().await;
    eventually("a new leader", 10, || {
        matches!(leader_of(&[n2, n3]), Some(2 | 3))
    })
    .await;
    let elected = crashed_at.elapsed();
    let r = n3.store.write(vec![put("after_crash")]).await.unwrap();
    assert_eq!(r, vec![OpResult::Done]);
    // Its delivery stream broke: deliveries fail (the sender falls back).
    let r = n2.store.deliver_acked(1, env()).await;
    assert!(matches!(r, Err(DeliveryError::Unavailable(_))), "got {r:?}");

    // Its lease expires: its routes go and both survivors hear of it.
    eventually("node_expired(1) on the survivors", 15, || {
        n2.events.saw(1) && n3.events.saw(1)
    })
    .await;
    let expired = crashed_at.elapsed();
    for n in [n2, n3] {
        eventually("routes of node 1 dropped", 5, || {
            n.store
                .scan_prefix(routes::ROUTES, &routes::bare_prefix("alice@example.com"))
                .unwrap()
                .is_empty()
        })
        .await;
        assert_eq!(
            n.store
                .scan_prefix(routes::ROUTES, &routes::bare_prefix("bob@example.com"))
                .unwrap()
                .len(),
            1
        );
        assert!(!n.events.saw(2) && !n.events.saw(3));
        // The node is told which sessions went, to tell their contacts.
        let dropped = n.events.1.lock().unwrap().clone();
        assert_eq!(
            dropped,
            vec![routes::Route {
                bare: "alice@example.com".into(),
                resource: "phone".into(),
                node_id: 1,
                payload: b"s1".to_vec(),
            }]
        );
        // The election may have kept the survivors from committing a
        // renewal for a moment (the expiry can now come right after it).
        eventually("survivor healthy", 10, || n.store.is_healthy()).await;
    }
    for i in 0..20 {
        n2.store
            .write(vec![put(&format!("while_down{i:02}"))])
            .await
            .unwrap();
    }

    // Node 1 comes back from its data directory and catches up.
    let n1 = Node::start(c1, o1, l1, true).await;
    eventually("restarted node catches up", 15, || {
        n1.store.count_prefix("s", b"while_down").unwrap() == 20
    })
    .await;
    assert!(n1.store.get("s", b"after_crash").unwrap().is_some());
    eventually("restarted node healthy", 10, || n1.store.is_healthy()).await;
    // Node 2's delivery stream to it reconnects (after backoff).
    n1.store.set_local_delivery(std::sync::Arc::new(Accept));
    let start = Instant::now();
    loop {
        match n2.store.deliver_acked(1, env()).await {
            Ok(r) => {
                assert_eq!(r, DeliveryResult::Delivered);
                break;
            }
            Err(e) => assert!(start.elapsed().as_secs() < 10, "no reconnect: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eventually("it learns it was expired", 10, || n1.events.saw(1)).await;
    // It renews again: the leader no longer counts it as expired.
    n1.store.write(vec![put("back")]).await.unwrap();
    eprintln!("new leader after {elected:?}, node 1 expired after {expired:?}");

    for n in [n1].into_iter().chain(nodes) {
        n.crash().await;
    }
}
