//! The `Store` API on a single node: reads and writes, conditional aborts
//! (compare-and-set among them), `Append` quotas, durability across restarts
//! and group commit.

use std::path::Path;
use std::time::Duration;

use starling_cluster::{Op, OpResult, Store, StoreConfig};

fn cfg(dir: &Path) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        node_id: 1,
        raft_addr: "127.0.0.1:0".into(),
    }
}

fn put(space: &str, key: &str, value: &str) -> Op {
    Op::Put {
        space: space.into(),
        key: key.into(),
        value: value.into(),
    }
}

fn insert(space: &str, key: &str, value: &str) -> Op {
    Op::Insert {
        space: space.into(),
        key: key.into(),
        value: value.into(),
    }
}

fn append(prefix: &str, value: &str, max: u64) -> Op {
    Op::Append {
        space: "offline".into(),
        prefix: prefix.into(),
        value: value.into(),
        max,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_then_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    let r = store
        .write(vec![
            put("roster", "alice/bob", "both"),
            put("roster", "alice/carol", "to"),
            put("roster", "bob/alice", "both"),
            put("vcard", "alice", "<vCard/>"),
        ])
        .await
        .unwrap();
    assert_eq!(r, vec![OpResult::Done; 4]);
    assert_eq!(
        store.get("vcard", b"alice").unwrap(),
        Some(b"<vCard/>".to_vec())
    );
    assert_eq!(store.get("vcard", b"bob").unwrap(), None);
    assert_eq!(store.count_prefix("roster", b"alice/").unwrap(), 2);
    let alice = store.scan_prefix("roster", b"alice/").unwrap();
    assert_eq!(
        alice,
        vec![
            (b"alice/bob".to_vec(), b"both".to_vec()),
            (b"alice/carol".to_vec(), b"to".to_vec())
        ]
    );

    let r = store
        .write(vec![
            Op::Delete {
                space: "vcard".into(),
                key: b"alice".to_vec(),
            },
            Op::DeletePrefix {
                space: "roster".into(),
                prefix: b"alice/".to_vec(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(r, vec![OpResult::Done; 2]);
    assert_eq!(store.get("vcard", b"alice").unwrap(), None);
    assert_eq!(store.count_prefix("roster", b"").unwrap(), 1);
    store.read_barrier().await.unwrap();
    store.shutdown().await.unwrap();
    assert!(matches!(
        store.write(vec![put("a", "b", "c")]).await,
        Err(starling_cluster::StoreError::Shutdown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_insert_aborts_the_whole_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    let r = store
        .write(vec![insert("accounts", "alice", "v1")])
        .await
        .unwrap();
    assert_eq!(r, vec![OpResult::Done]);

    let r = store
        .write(vec![
            put("accounts", "bob", "x"),
            append("alice/", "hello", 10),
            insert("accounts", "alice", "v2"),
            put("accounts", "carol", "y"),
        ])
        .await
        .unwrap();
    assert_eq!(
        r,
        vec![
            OpResult::Aborted,
            OpResult::Aborted,
            OpResult::Exists,
            OpResult::Aborted
        ]
    );
    assert_eq!(
        store.get("accounts", b"alice").unwrap(),
        Some(b"v1".to_vec())
    );
    assert_eq!(store.get("accounts", b"bob").unwrap(), None);
    assert_eq!(store.get("accounts", b"carol").unwrap(), None);
    assert_eq!(store.count_prefix("offline", b"").unwrap(), 0);

    // Insert then Insert of the same key inside one write also conflicts.
    let r = store
        .write(vec![
            insert("accounts", "dave", "1"),
            insert("accounts", "dave", "2"),
        ])
        .await
        .unwrap();
    assert_eq!(r, vec![OpResult::Aborted, OpResult::Exists]);
    assert_eq!(store.get("accounts", b"dave").unwrap(), None);
    store.shutdown().await.unwrap();
}

fn expect_value(space: &str, key: &str, value: Option<&str>) -> Op {
    Op::ExpectValue {
        space: space.into(),
        key: key.into(),
        value: value.map(Into::into),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_value_is_a_compare_and_set() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();

    // Created only if still absent.
    let r = store
        .write(vec![
            expect_value("roster", "alice", None),
            put("roster", "alice", "v1"),
        ])
        .await
        .unwrap();
    assert_eq!(r, vec![OpResult::Done, OpResult::Done]);

    // Updated from the version read.
    let r = store
        .write(vec![
            expect_value("roster", "alice", Some("v1")),
            put("roster", "alice", "v2"),
        ])
        .await
        .unwrap();
    assert_eq!(r, vec![OpResult::Done, OpResult::Done]);

    // A stale version: nothing of the write applies.
    let r = store
        .write(vec![
            put("roster", "bob", "x"),
            expect_value("roster", "alice", Some("v1")),
            put("roster", "alice", "lost update"),
        ])
        .await
        .unwrap();
    assert_eq!(
        r,
        vec![OpResult::Aborted, OpResult::Mismatch, OpResult::Aborted]
    );
    assert_eq!(store.get("roster", b"alice").unwrap(), Some(b"v2".to_vec()));
    assert_eq!(store.get("roster", b"bob").unwrap(), None);

    // Absence expected, but the key is there.
    let r = store
        .write(vec![
            expect_value("roster", "alice", None),
            put("roster", "alice", "v1 again"),
        ])
        .await
        .unwrap();
    assert_eq!(r, vec![OpResult::Mismatch, OpResult::Aborted]);
    assert_eq!(store.get("roster", b"alice").unwrap(), Some(b"v2".to_vec()));
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_respects_quota_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    let mut seqs = Vec::new();
    for i in 0..3 {
        let r = store
            .write(vec![append("alice/", &format!("m{i}"), 3)])
            .await
            .unwrap();
        match r[..] {
            [OpResult::Seq(s)] => seqs.push(s),
            ref other => panic!("unexpected {other:?}"),
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let r = store.write(vec![append("alice/", "m3", 3)]).await.unwrap();
    assert_eq!(r, vec![OpResult::Full]);
    // Another prefix has its own quota but shares the space's sequence.
    let r = store.write(vec![append("bob/", "x", 3)]).await.unwrap();
    assert_eq!(r, vec![OpResult::Seq(seqs[2] + 1)]);

    let msgs = store.scan_prefix("offline", b"alice/").unwrap();
    assert_eq!(msgs.len(), 3);
    let mut key = b"alice/".to_vec();
    key.extend_from_slice(&seqs[0].to_be_bytes());
    assert_eq!(msgs[0], (key, b"m0".to_vec()));

    // Emptying the queue frees the quota; sequence numbers never repeat.
    store
        .write(vec![Op::DeletePrefix {
            space: "offline".into(),
            prefix: b"alice/".to_vec(),
        }])
        .await
        .unwrap();
    let r = store
        .write(vec![append("alice/", "again", 3)])
        .await
        .unwrap();
    assert_eq!(r, vec![OpResult::Seq(seqs[2] + 2)]);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_data_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(cfg(dir.path())).await.unwrap();
        store.write(vec![put("s", "k", "v")]).await.unwrap();
        store.write(vec![append("q/", "1", 10)]).await.unwrap();
        store.shutdown().await.unwrap();
    }
    {
        let store = Store::open(cfg(dir.path())).await.unwrap();
        assert_eq!(store.get("s", b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(
            store.write(vec![append("q/", "2", 10)]).await.unwrap(),
            vec![OpResult::Seq(2)]
        );
        store.write(vec![put("s", "k2", "v2")]).await.unwrap();
        // Dropped without shutdown: the next open must still succeed.
        drop(store);
    }
    let store = Store::open(cfg(dir.path())).await.unwrap();
    assert_eq!(store.get("s", b"k2").unwrap(), Some(b"v2".to_vec()));
    assert_eq!(store.count_prefix("offline", b"q/").unwrap(), 2);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_then_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(cfg(dir.path())).await.unwrap();
        for i in 0..50 {
            store
                .write(vec![put("s", &format!("k{i:02}"), "v")])
                .await
                .unwrap();
        }
        store.compact().await.unwrap();
        for i in 50..60 {
            store
                .write(vec![put("s", &format!("k{i:02}"), "v")])
                .await
                .unwrap();
        }
        store.shutdown().await.unwrap();
    }
    let store = Store::open(cfg(dir.path())).await.unwrap();
    assert_eq!(store.count_prefix("s", b"k").unwrap(), 60);
    store.write(vec![put("s", "after", "v")]).await.unwrap();
    assert_eq!(store.count_prefix("s", b"").unwrap(), 61);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_batched() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    let before = store.stats();
    const N: usize = 400;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move {
                s.write(vec![
                    insert("sessions", &format!("user{i}"), "node1"),
                    append(&format!("user{i}/"), "hi", 5),
                ])
                .await
            })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r[0], OpResult::Done);
        assert!(matches!(r[1], OpResult::Seq(_)));
    }
    let after = store.stats();
    let writes = after.writes - before.writes;
    let entries = after.raft_entries - before.raft_entries;
    assert_eq!(writes, N as u64);
    assert!(
        entries < writes / 4,
        "{entries} entries for {writes} writes"
    );
    assert_eq!(store.count_prefix("sessions", b"user").unwrap(), N as u64);
    store.shutdown().await.unwrap();
}

/// The child half of `acknowledged_write_survives_kill`: writes, reports
/// each acknowledgement on stdout, then waits to be killed.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var("STARLING_CLUSTER_CHILD_DIR") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(cfg(Path::new(&dir))).await.unwrap();
        for i in 0..20 {
            store
                .write(vec![put("s", &format!("k{i}"), "v")])
                .await
                .unwrap();
            println!("ACK {i}");
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_write_survives_kill() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env("STARLING_CLUSTER_CHILD_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut acked = 0;
    for line in out.lines() {
        let line = line.unwrap();
        if line.contains("ACK ") {
            acked += 1;
            if acked == 20 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    child.wait().unwrap();
    assert_eq!(acked, 20);
    let store = Store::open(cfg(dir.path())).await.unwrap();
    for i in 0..20 {
        assert_eq!(
            store.get("s", format!("k{i}").as_bytes()).unwrap(),
            Some(b"v".to_vec()),
            "k{i}"
        );
    }
    store.shutdown().await.unwrap();
}

/// A login storm: many concurrent small writes. Prints throughput and how
/// many writes each Raft entry carried. `cargo test -- --ignored storm`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn storm() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    const TASKS: usize = 500;
    const PER_TASK: usize = 40;
    let start = std::time::Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let s = store.clone();
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    s.write(vec![put("sessions", &format!("u{t}/r{i}"), "node1")])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let st = store.stats();
    println!(
        "{} writes in {secs:.2}s = {:.0}/s, {} entries, {:.1} writes/entry",
        st.writes,
        st.writes as f64 / secs,
        st.raft_entries,
        st.writes as f64 / st.raft_entries as f64
    );
    store.shutdown().await.unwrap();
}

/// `scan_range` reads a bounded page of an ordered range, from either end,
/// and `count_range` counts it: a user's newest messages out of many cost
/// one page, and keys of a neighbouring prefix never leak in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_range_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    let key = |user: &str, n: u64| {
        let mut k = format!("{user}\0").into_bytes();
        k.extend_from_slice(&n.to_be_bytes());
        k
    };
    let mut ops = Vec::new();
    for n in 0..1000u64 {
        ops.push(Op::Put {
            space: "archive".into(),
            key: key("alice", n),
            value: n.to_string().into_bytes(),
        });
    }
    ops.push(Op::Put {
        space: "archive".into(),
        key: key("alicf", 0),
        value: b"other".to_vec(),
    });
    store.write(ops).await.unwrap();
    let (lo, hi) = (key("alice", 0), key("alice", u64::MAX));
    let values = |pairs: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<String> {
        pairs
            .into_iter()
            .map(|(_, v)| String::from_utf8(v).unwrap())
            .collect()
    };
    let newest = store.scan_range("archive", &lo, &hi, true, 3).unwrap();
    assert_eq!(values(newest), ["999", "998", "997"]);
    let oldest = store.scan_range("archive", &lo, &hi, false, 2).unwrap();
    assert_eq!(values(oldest), ["0", "1"]);
    // A window in the middle; the end is exclusive.
    let mid = store
        .scan_range("archive", &key("alice", 500), &key("alice", 503), false, 10)
        .unwrap();
    assert_eq!(values(mid), ["500", "501", "502"]);
    let mid_rev = store
        .scan_range("archive", &key("alice", 500), &key("alice", 503), true, 2)
        .unwrap();
    assert_eq!(values(mid_rev), ["502", "501"]);
    assert_eq!(store.count_range("archive", &lo, &hi).unwrap(), 1000);
    assert_eq!(
        store
            .count_range("archive", &key("alice", 10), &key("alice", 20))
            .unwrap(),
        10
    );
    // Empty and inverted ranges, and a limit of zero.
    assert!(
        store
            .scan_range("archive", &hi, &lo, false, 5)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .scan_range("archive", &lo, &hi, false, 0)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.count_range("archive", &hi, &lo).unwrap(), 0);
    assert!(
        store
            .scan_range("nothing", &lo, &hi, true, 5)
            .unwrap()
            .is_empty()
    );
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_space_counts_its_changes() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path())).await.unwrap();
    let blocks = store.space_version("blocks");
    let v0 = blocks.load(Ordering::Acquire);
    // Another space, and a write that aborts, leave it where it was.
    store.write(vec![put("vcard", "alice", "x")]).await.unwrap();
    store
        .write(vec![insert("vcard", "alice", "y")])
        .await
        .unwrap();
    assert_eq!(blocks.load(Ordering::Acquire), v0);
    let r = store
        .write(vec![
            insert("vcard", "bob", "z"),
            insert("blocks", "alice", ""),
        ])
        .await
        .unwrap();
    assert_eq!(r, vec![OpResult::Done; 2]);
    // Moved by the time the write is answered, and what it counts is readable.
    let v1 = blocks.load(Ordering::Acquire);
    assert!(v1 > v0);
    assert_eq!(store.get("blocks", b"alice").unwrap(), Some(Vec::new()));
    // The same counter for every caller; a removal counts too.
    let again = store.space_version("blocks");
    store
        .write(vec![Op::DeletePrefix {
            space: "blocks".into(),
            prefix: b"alice".to_vec(),
        }])
        .await
        .unwrap();
    assert!(again.load(Ordering::Acquire) > v1);
    assert_eq!(
        blocks.load(Ordering::Acquire),
        again.load(Ordering::Acquire)
    );
    store.shutdown().await.unwrap();
}
