//! Three stores in one process talking Raft over real gRPC: membership
//! changes, snapshot transfer to new members and replication of writes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use starling_cluster::{Op, OpResult, Store, StoreConfig};

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn cfg(dir: &Path, id: u64, addr: SocketAddr) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        node_id: id,
        raft_addr: addr.to_string(),
    }
}

fn put(key: &str) -> Op {
    Op::Put {
        space: "s".into(),
        key: key.into(),
        value: b"v".to_vec(),
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_over_grpc() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<_> = (0..3).map(|_| free_addr()).collect();

    let s1 = Store::open(cfg(dirs[0].path(), 1, addrs[0])).await.unwrap();
    tokio::spawn({
        let s = s1.clone();
        let a = addrs[0];
        async move { s.serve_grpc(a).await }
    });
    for i in 0..30 {
        s1.write(vec![put(&format!("before{i:02}"))]).await.unwrap();
    }
    // New members must now catch up from a snapshot, not from the log.
    s1.compact().await.unwrap();

    let mut followers = Vec::new();
    for (i, id) in [(1, 2u64), (2, 3u64)] {
        let s = Store::open_joining(cfg(dirs[i].path(), id, addrs[i]))
            .await
            .unwrap();
        tokio::spawn({
            let s = s.clone();
            let a = addrs[i];
            async move { s.serve_grpc(a).await }
        });
        s1.add_member(id, &addrs[i].to_string()).await.unwrap();
        followers.push(s);
    }

    let r = s1.write(vec![put("after")]).await.unwrap();
    assert_eq!(r, vec![OpResult::Done]);
    for f in &followers {
        eventually("follower applies", || {
            f.get("s", b"after").unwrap().is_some()
        })
        .await;
        assert_eq!(f.count_prefix("s", b"before").unwrap(), 30);
        assert_eq!(f.leader(), Some(1));
    }

    // A follower forwards its writes to the leader (group-committed there).
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let f = followers[i % 2].clone();
            tokio::spawn(async move { f.write(vec![put(&format!("fwd{i:02}"))]).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), vec![OpResult::Done]);
    }
    assert_eq!(s1.count_prefix("s", b"fwd").unwrap(), 50);
    let r = followers[0]
        .write(vec![Op::Insert {
            space: "s".into(),
            key: b"fwd00".to_vec(),
            value: vec![],
        }])
        .await
        .unwrap();
    assert_eq!(r, vec![OpResult::Exists]);
    s1.read_barrier().await.unwrap();
    // A follower's read barrier makes the leader's last write visible.
    s1.write(vec![put("barrier")]).await.unwrap();
    followers[1].read_barrier().await.unwrap();
    assert!(followers[1].get("s", b"barrier").unwrap().is_some());

    // Node 3 leaves; the two others keep committing.
    s1.remove_member(3).await.unwrap();
    s1.write(vec![put("after_leave")]).await.unwrap();
    eventually("node 2 applies after the leave", || {
        followers[0].get("s", b"after_leave").unwrap().is_some()
    })
    .await;

    for f in &followers {
        f.shutdown().await.unwrap();
    }
    s1.shutdown().await.unwrap();
}
