//! Server CPU of one replicated write on a single node, entry by entry:
//! `cargo run --release -p starling-cluster --example write_cost -- [rounds] [gap_ms] [batch]`.
//! Each round is `batch` concurrent writes (one Raft entry), each one `Put`
//! of 600 bytes, awaited before the next round, with `gap_ms` of idleness
//! between rounds (as writes arrive at a low rate); prints the process CPU
//! per write and the share of each thread. `THREADS` sets the store
//! runtime's workers (default 2; a node on up to two cores runs 1).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use starling_cluster::{Op, Store, StoreConfig};

fn switches(p: &std::path::Path) -> u64 {
    std::fs::read_to_string(p.join("status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ctxt_switches"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn threads() -> BTreeMap<String, (u64, u64)> {
    let mut m = BTreeMap::new();
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = t.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split(' ').next().and_then(|v| v.parse::<u64>().ok()))
            .unwrap_or(0);
        let e = m
            .entry(format!(
                "{}#{}",
                comm.trim(),
                t.file_name().to_string_lossy()
            ))
            .or_insert((0, 0));
        e.0 += ns;
        e.1 += switches(&p);
    }
    m
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(500);
    let gap = Duration::from_millis(args.next().and_then(|v| v.parse().ok()).unwrap_or(20));
    let batch: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
        )
        .thread_name("starling-store")
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = rt
        .block_on(Store::open(StoreConfig {
            data_dir: dir.path().to_path_buf(),
            node_id: 1,
            raft_addr: "127.0.0.1:0".into(),
        }))
        .unwrap();
    let value = vec![b'x'; 600];
    let write = |i: u64| {
        let writes = (0..batch).map(|j| {
            let op = Op::Put {
                space: "archive".into(),
                key: (i * batch + j).to_be_bytes().to_vec(),
                value: value.clone(),
            };
            store.write(vec![op])
        });
        for r in rt.block_on(futures::future::join_all(writes)) {
            r.unwrap();
        }
    };
    for i in 0..50 {
        write(i);
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = threads();
    let start = Instant::now();
    for i in 0..n {
        write(1000 + i);
        std::thread::sleep(gap);
    }
    let wall = start.elapsed();
    let after = threads();
    let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (k, v) in &after {
        let b = before.get(k).copied().unwrap_or((0, 0));
        let name = k.split('#').next().unwrap_or_default().to_owned();
        let e = by_name.entry(name).or_insert((0, 0));
        e.0 += v.0 - b.0;
        e.1 += v.1 - b.1;
    }
    let total: u64 = by_name.values().map(|v| v.0).sum();
    let n = n * batch;
    println!(
        "{n} writes in entries of {batch}, {gap:?} apart, {:.1} s: {:.1} µs CPU per write",
        wall.as_secs_f64(),
        total as f64 / n as f64 / 1e3
    );
    for (k, (ns, sw)) in by_name {
        println!(
            "  {k:<20} {:8.1} µs {:6.1} switches",
            ns as f64 / n as f64 / 1e3,
            sw as f64 / n as f64
        );
    }
}
