//! Membership over mutual TLS: a fourth node joins through a follower's
//! address, the cluster status (local and over `Admin.Status`) shows it,
//! it leaves again, and a node with a certificate from another CA can
//! neither join nor ask for the status.

mod common;

use common::*;
use starling_cluster::{OpResult, Store, StoreOptions, query_status};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_via_follower_status_leave_and_foreign_ca() {
    let pkidir = tempfile::tempdir().unwrap();
    let ca = Pki::new(&pkidir.path().join("ca"));
    let foreign = Pki::new(&pkidir.path().join("foreign"));
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let opts = |tls| StoreOptions {
        tls: Some(tls),
        lease: fast_lease(),
        write_timeout_ms: 3000,
        ..Default::default()
    };
    let mut nodes: Vec<Node> = Vec::new();
    for (i, dir) in dirs.iter().enumerate().take(3) {
        let id = i as u64 + 1;
        let addr = free_addr();
        let n = Node::start(
            cfg(dir.path(), id, addr),
            opts(ca.node(&format!("n{id}"))),
            addr,
            i == 0,
        )
        .await;
        if i > 0 {
            // Through Admin.Join on the leader.
            n.store.join(&nodes[0].listen.to_string()).await.unwrap();
        }
        nodes.push(n);
    }
    for i in 0..10 {
        nodes[1]
            .store
            .write(vec![put(&format!("k{i}"))])
            .await
            .unwrap();
    }

    // Node 4 joins through a follower (node 2), which forwards to the leader.
    let addr4 = free_addr();
    let n4 = Node::start(
        cfg(dirs[3].path(), 4, addr4),
        opts(ca.node("n4")),
        addr4,
        false,
    )
    .await;
    n4.store.join(&nodes[1].listen.to_string()).await.unwrap();
    assert_eq!(n4.store.count_prefix("s", b"k").unwrap(), 10);
    let r = n4.store.write(vec![put("from4")]).await.unwrap();
    assert_eq!(r, vec![OpResult::Done]);
    eventually("node 4 healthy", 10, || n4.store.is_healthy()).await;

    // The leader's status: four voters, replicated, healthy.
    eventually("leader sees four healthy voters", 10, || {
        let st = nodes[0].store.status();
        st.leader_id == Some(1)
            && st.members.len() == 4
            && st
                .members
                .iter()
                .all(|m| m.voter && m.healthy && m.lag.is_some_and(|l| l < 5))
    })
    .await;
    let st = nodes[0].store.status();
    assert_eq!(st.node_id, 1);
    assert!(st.commit_index >= 11 && st.applied_index <= st.commit_index);
    let m4 = st.members.iter().find(|m| m.node_id == 4).unwrap();
    assert_eq!(m4.addr, addr4.to_string());
    assert!(m4.last_lease_age_ms.is_some_and(|a| a < 1500));
    // Over Admin.Status, from a follower, with a member's certificate.
    let remote = query_status(&nodes[2].listen.to_string(), Some(&ca.node("cli")))
        .await
        .unwrap();
    assert_eq!(remote.node_id, 3);
    assert_eq!(remote.leader_id, Some(1));
    assert_eq!(remote.members.len(), 4);
    assert!(remote.members.iter().all(|m| m.matched_index.is_none()));
    // Health as this follower judges it, by when its replica applied each
    // renewal (its own clock): on a loaded machine a renewal can be late
    // there a moment after the leader saw all four healthy.
    let mut remote = remote;
    let since = std::time::Instant::now();
    while !remote.members.iter().all(|m| m.healthy) {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "the follower never saw four healthy members: {:?}",
            remote.members
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        remote = query_status(&nodes[2].listen.to_string(), Some(&ca.node("cli")))
            .await
            .unwrap();
    }

    // A node of another CA can neither join nor read the status.
    let addr5 = free_addr();
    let stranger =
        Store::open_joining_with(cfg(dirs[4].path(), 5, addr5), opts(foreign.node("n5")))
            .await
            .unwrap();
    let srv = tokio::spawn({
        let s = stranger.clone();
        async move { s.serve_grpc(addr5).await }
    });
    let r = stranger.join(&nodes[1].listen.to_string()).await;
    assert!(r.is_err(), "foreign node joined");
    let r = query_status(&nodes[0].listen.to_string(), Some(&foreign.node("cli"))).await;
    assert!(r.is_err(), "foreign status answered");
    let r = query_status(&nodes[0].listen.to_string(), None).await;
    assert!(r.is_err(), "plaintext status answered");
    assert_eq!(nodes[0].store.status().members.len(), 4);
    stranger.shutdown().await.unwrap();
    let _ = srv.await;

    // Node 4 leaves: removed everywhere, its expiry announced, and the
    // three others go on.
    n4.store.leave().await.unwrap();
    eventually("three members left", 10, || {
        nodes
            .iter()
            .all(|n| n.store.status().members.len() == 3 && n.events.saw(4))
    })
    .await;
    // Its registry member is no longer a voter either (it would count
    // toward the registry group's quorum).
    eventually("node 4 out of the registry group", 15, || {
        nodes.iter().all(|n| {
            let v = n.store.registry_voters();
            !v.is_empty() && !v.contains(&4)
        })
    })
    .await;
    nodes[2]
        .store
        .write(vec![put("after_leave")])
        .await
        .unwrap();
    assert!(n4.store.write(vec![put("x")]).await.is_err());
    let _ = n4.crash().await;

    // The leader leaves too: the two others elect a leader and go on.
    let n1 = nodes.remove(0);
    assert_eq!(n1.store.leader(), Some(1));
    n1.store.leave().await.unwrap();
    eventually("two members, a new leader", 15, || {
        nodes.iter().all(|n| {
            let st = n.store.status();
            st.members.len() == 2 && matches!(st.leader_id, Some(2 | 3))
        })
    })
    .await;
    let r = nodes[0].store.write(vec![put("after_leader_left")]).await;
    assert_eq!(r.unwrap(), vec![OpResult::Done]);
    eventually("node 1's expiry announced", 10, || {
        nodes.iter().all(|n| n.events.saw(1))
    })
    .await;
    eventually("node 1 out of the registry group", 15, || {
        nodes.iter().all(|n| {
            let v = n.store.registry_voters();
            !v.is_empty() && !v.contains(&1)
        })
    })
    .await;
    let _ = n1.crash().await;

    for n in nodes {
        n.crash().await;
    }
}
