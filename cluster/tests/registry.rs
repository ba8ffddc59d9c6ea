//! The registry group: nodes found and join it as peers appear, a
//! restarted node joins under a new member id (its previous routes go), and
//! when a majority of its members restarted it is re-founded under a new
//! epoch that every node joins.

mod common;

use common::*;
use starling_cluster::{StoreOptions, routes};
use std::time::Instant;

fn opts(ca: &Pki, id: u64) -> StoreOptions {
    StoreOptions {
        tls: Some(ca.node(&format!("n{id}"))),
        lease: fast_lease(),
        write_timeout_ms: 3000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn founded_joined_rejoined_and_refounded() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,starling_cluster=info,openraft=error".into()),
        )
        .with_test_writer()
        .try_init();
    let pkidir = tempfile::tempdir().unwrap();
    let ca = Pki::new(&pkidir.path().join("ca"));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Node> = Vec::new();
    let started = Instant::now();
    for (i, dir) in dirs.iter().enumerate() {
        let id = i as u64 + 1;
        let addr = free_addr();
        let n = Node::start(cfg(dir.path(), id, addr), opts(&ca, id), addr, i == 0).await;
        if i > 0 {
            n.store.join(&nodes[0].listen.to_string()).await.unwrap();
        }
        nodes.push(n);
    }
    // A single node runs none; with peers, all are in one within seconds.
    eventually("all in the registry", 10, || {
        nodes.iter().all(|n| n.store.registry_active())
    })
    .await;
    eprintln!("registry formed {:?} after start", started.elapsed());
    assert!(started.elapsed().as_secs() < 8, "{:?}", started.elapsed());

    // Each node is told to publish its sessions, and says it did.
    for n in &nodes {
        eventually("reset heard", 5, || n.events.2.lock().unwrap().contains(&1)).await;
        n.store.registry_ready(1).await.unwrap();
    }
    // A route written through one node is read on every node.
    nodes[1]
        .store
        .write(routes::put(1, "a@example.com", "r", b"p"))
        .await
        .unwrap();
    for n in &nodes {
        n.store.registry_barrier().await.unwrap();
        eventually("route replicated", 5, || {
            n.store
                .get(routes::ROUTES, &routes::route_key("a@example.com", "r"))
                .unwrap()
                .is_some()
        })
        .await;
    }
    // Registry spaces and durable spaces do not mix in one write.
    let mut mixed = routes::put(2, "b@example.com", "r", b"p");
    mixed.push(put("durable"));
    assert!(nodes[0].store.write(mixed).await.is_err());

    // Node 2 crashes with a route and comes back at once: it joins the same
    // epoch under a new member id, and the route its previous run left is
    // dropped (every node is told).
    nodes[1]
        .store
        .write(routes::put(2, "old@example.com", "r", b"p"))
        .await
        .unwrap();
    let n2 = nodes.remove(1);
    let (c2, o2, l2) = n2.crash().await;
    let n2 = Node::start(c2, o2, l2, false).await;
    eventually("node 2 back in the registry", 10, || {
        n2.store.registry_active()
    })
    .await;
    assert_eq!(n2.store.registry_epoch(), 1);
    nodes.insert(1, n2);
    for n in [&nodes[0], &nodes[2]] {
        eventually("old route dropped", 10, || {
            n.events
                .1
                .lock()
                .unwrap()
                .iter()
                .any(|r| r.bare == "old@example.com")
        })
        .await;
        assert!(
            n.store
                .get(routes::ROUTES, &routes::route_key("old@example.com", "r"))
                .unwrap()
                .is_none()
        );
    }
    // Routes of the surviving node are still there.
    assert!(
        nodes[0]
            .store
            .get(routes::ROUTES, &routes::route_key("a@example.com", "r"))
            .unwrap()
            .is_some()
    );

    // A majority (nodes 2 and 3) crashes and restarts: the group lost its
    // quorum; it is re-founded as epoch 2, every node joins it, and node
    // 1's old copy of the other nodes' routes is reported as dropped.
    nodes[0]
        .store
        .write(routes::put(3, "gone@example.com", "r", b"p"))
        .await
        .unwrap();
    let n3 = nodes.pop().unwrap();
    let n2 = nodes.pop().unwrap();
    let (c3, o3, l3) = n3.crash().await;
    let (c2, o2, l2) = n2.crash().await;
    let n2 = Node::start(c2, o2, l2, false).await;
    let n3 = Node::start(c3, o3, l3, false).await;
    nodes.push(n2);
    nodes.push(n3);
    eventually("epoch 2 everywhere", 30, || {
        nodes.iter().all(|n| n.store.registry_epoch() == 2)
    })
    .await;
    for n in &nodes {
        eventually("reset 2 heard", 5, || {
            n.events.2.lock().unwrap().contains(&2)
        })
        .await;
        n.store.registry_ready(2).await.unwrap();
    }
    eventually("routes of the dead sessions reported", 10, || {
        nodes[0]
            .events
            .1
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.bare == "gone@example.com")
    })
    .await;
    // The new epoch starts empty: what the nodes publish again is all it has.
    assert!(
        nodes[1]
            .store
            .get(routes::ROUTES, &routes::route_key("a@example.com", "r"))
            .unwrap()
            .is_none()
    );
    nodes[0]
        .store
        .write(routes::put(1, "new@example.com", "r", b"p"))
        .await
        .unwrap();
    for n in &nodes {
        n.store.registry_barrier().await.unwrap();
        assert!(
            n.store
                .get(routes::ROUTES, &routes::route_key("new@example.com", "r"))
                .unwrap()
                .is_some()
        );
    }
}
