//! A leader cut off from its peers (through pausable proxies) notices it
//! cannot commit: it turns unhealthy and its writes fail instead of
//! diverging; the majority elects a new leader, keeps writing and expires
//! it; after healing it follows the new leader and has no trace of the
//! write it could not commit.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{Net, node_ip};
use common::*;
use starling_cluster::{OpResult, StoreError, StoreOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_turns_unhealthy_and_does_not_diverge() {
    let pkidir = tempfile::tempdir().unwrap();
    let ca = Pki::new(pkidir.path());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let net = Arc::new(Net::default());
    let mut nodes: Vec<Node> = Vec::new();
    for (i, dir) in dirs.iter().enumerate().take(3) {
        let id = i as u64 + 1;
        let listen = free_addr();
        let advertised = net.proxy(id, listen).await;
        let opts = StoreOptions {
            tls: Some(ca.node(&format!("n{id}"))),
            lease: fast_lease(),
            write_timeout_ms: 2500,
            source_ip: Some(node_ip(id)),
            ..Default::default()
        };
        let n = Node::start(cfg(dir.path(), id, advertised), opts, listen, i == 0).await;
        if i > 0 {
            nodes[0]
                .store
                .add_member(id, &advertised.to_string())
                .await
                .unwrap();
        }
        nodes.push(n);
    }
    nodes[2].store.write(vec![put("before")]).await.unwrap();
    eventually("all healthy", 10, || {
        nodes.iter().all(|n| n.store.is_healthy())
    })
    .await;
    let refs: Vec<&Node> = nodes.iter().collect();
    assert_eq!(leader_of(&refs), Some(1));

    net.partition(1);
    let cut_at = Instant::now();
    // The minority leader's write fails (times out) rather than hanging.
    let r = nodes[0].store.write(vec![put("minority")]).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "got {r:?}");
    assert!(cut_at.elapsed() < Duration::from_secs(6));
    eventually("cut-off node unhealthy", 10, || {
        !nodes[0].store.is_healthy()
    })
    .await;
    let unhealthy = cut_at.elapsed();

    // The majority goes on.
    eventually("majority elects a leader", 10, || {
        matches!(leader_of(&[&nodes[1], &nodes[2]]), Some(2 | 3))
    })
    .await;
    let r = nodes[1].store.write(vec![put("majority")]).await.unwrap();
    assert_eq!(r, vec![OpResult::Done]);
    eventually("majority expires node 1", 10, || {
        nodes[1].events.saw(1) && nodes[2].events.saw(1)
    })
    .await;
    assert!(nodes[1].store.is_healthy() && nodes[2].store.is_healthy());
    assert!(!nodes[0].store.is_healthy());

    net.heal();
    eventually("healed node follows the new leader", 15, || {
        nodes[0].store.get("s", b"majority").unwrap().is_some()
    })
    .await;
    eventually("healed node healthy again", 10, || {
        nodes[0].store.is_healthy()
    })
    .await;
    nodes[0].store.read_barrier().await.unwrap();
    for n in &nodes {
        n.store.read_barrier().await.unwrap();
        assert!(
            n.store.get("s", b"minority").unwrap().is_none(),
            "node {} has the uncommitted write",
            n.id
        );
    }
    eprintln!("unhealthy {unhealthy:?} after the cut");

    for n in nodes {
        n.crash().await;
    }
    net.stop();
}
