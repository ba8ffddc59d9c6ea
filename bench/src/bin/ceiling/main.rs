//! `starling-ceiling`: the replicated store's maximum sustained write rate.
//!
//! Opens a store of 1 or 3 nodes in this process (temporary data directories, Raft over gRPC on
//! loopback, as the cluster crate's tests do), then offers writes open-loop at rising rates: at
//! rate R, write number `s` of a step is due at `t0 + s/R`, and `--writers` tasks take the due
//! writes in turn (writer `k` those with `s ≡ k mod writers`), each with one write in flight.
//! A write is what a login does to the routing table (`routes::put`: the route and its index
//! entry), spread over every node's `Store` handle, so followers forward to the leader as in
//! production. Latency runs from the write's due time, not from when a writer got to it, so a
//! store that falls behind shows in it (no coordinated omission); a writer that slept until the
//! due time starts the clock when it wakes instead (tokio's timer rounds up to the millisecond).
//!
//! Each step reports achieved writes/s, latency p50/p99/max, Raft entries/s and writes per
//! entry (`Store::stats`), approximate bytes per entry and process CPU per write; the run stops
//! at the first step where latency bends (p99 above `--bend-p99` times the first step's) or the
//! store falls behind (achieved below `--min-achieved` of offered, or any error). The last step
//! before it is the ceiling. Every loop is bounded in count and time.

mod probe;

#[path = "../../procstat.rs"]
#[allow(dead_code)] // shared with starling-bench, which uses all of it
mod procstat;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use starling_cluster::{Op, Store, StoreConfig, StoreOptions, routes};

/// Longest a single write may take before it counts as an error (the store's own commit
/// timeout is 10 s).
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest forming the cluster may take (opening, joining, electing).
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the prefill may write for.
const PREFILL_MAX: Duration = Duration::from_secs(60);
/// Caps on what the command line may ask for.
const MAX_NODES: usize = 5;
const MAX_WRITERS: usize = 10_000;
const MAX_STEPS: usize = 64;
const MAX_STEP_SECS: f64 = 120.0;
const MAX_RATE: u64 = 10_000_000;
const MAX_TOTAL_SECS: u64 = 1800;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Group {
    /// `Op::Put`s of the route's sizes into `--space` and `--space`_idx (the durable log).
    Durable,
    /// `routes::put` into the routing-table spaces (`jid_route`, `node_route`): the registry
    /// group once it exists; until then the same durable group.
    Registry,
}

impl Group {
    fn name(self) -> &'static str {
        match self {
            Group::Durable => "durable",
            Group::Registry => "registry",
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "starling-ceiling",
    version,
    about = "Maximum sustained write rate of Starling's replicated store, 1 or 3 nodes in one process"
)]
struct Args {
    /// Nodes in the store (all in this process, Raft over gRPC on loopback).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Which key spaces the writes go to: `durable` (`--space`) or `registry` (the routing table).
    #[arg(long, value_enum, default_value_t = Group::Durable)]
    group: Group,
    /// The key space of `--group durable` (its index entries go to SPACE_idx).
    #[arg(long, default_value = "bench_durable")]
    space: String,
    /// Offered rates, writes/s, one step each, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2000,5000,10000,20000,50000,100000,200000"
    )]
    rates: Vec<u64>,
    /// Length of each measured step.
    #[arg(long, default_value_t = 5.0)]
    step_secs: f64,
    /// Unmeasured warm-up at the first rate before the first step (0: none).
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Write every key once before the steps, as fast as the writers go (closed loop), so the
    /// steps overwrite a store of constant size (every snapshot as big as the last). `false`:
    /// the steps grow the store from empty.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    prefill: bool,
    /// A step that bends on p99 alone is run again this many times; it counts as bent only if
    /// every repeat bends too (a single stall, e.g. a snapshot, is not a knee).
    #[arg(long, default_value_t = 1)]
    confirm: u32,
    /// Concurrent writer tasks (each has one write in flight), spread over the nodes.
    #[arg(long, default_value_t = 256)]
    writers: usize,
    /// Bytes of session payload in each route (the route's value is 8 bytes of node id more).
    #[arg(long, default_value_t = 200)]
    value_bytes: usize,
    /// Distinct bare JIDs written (`userN@DOMAIN/res`), cycled through.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Domain of the bare JIDs.
    #[arg(long, default_value = "example.com")]
    domain: String,
    /// Latency bends when a step's p99 exceeds this many times the first step's.
    #[arg(long, default_value_t = 10.0)]
    bend_p99: f64,
    /// The store falls behind when a step achieves less than this fraction of its offered rate.
    #[arg(long, default_value_t = 0.9)]
    min_achieved: f64,
    /// Run every step even after the bend (still bounded by --max-secs).
    #[arg(long)]
    no_stop: bool,
    /// Start no step that would end later than this after the start.
    #[arg(long, default_value_t = 110)]
    max_secs: u64,
    /// Worker threads of the runtime the stores run on (tokio's blocking pool is extra).
    #[arg(long, default_value_t = 2)]
    store_threads: usize,
    /// Worker threads of the writers' runtime.
    #[arg(long, default_value_t = 1)]
    bench_threads: usize,
    /// Parent of the temporary data directories (default: the system's temp directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also write the steps and the ceiling as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Args {
    fn check(&self) -> Result<()> {
        if !(1..=MAX_NODES).contains(&self.nodes) {
            bail!("--nodes must be 1..={MAX_NODES}");
        }
        if !(1..=MAX_WRITERS).contains(&self.writers) {
            bail!("--writers must be 1..={MAX_WRITERS}");
        }
        if self.rates.is_empty() || self.rates.len() > MAX_STEPS {
            bail!("--rates takes 1..={MAX_STEPS} rates");
        }
        if self.rates.iter().any(|r| !(1..=MAX_RATE).contains(r)) {
            bail!("every rate must be 1..={MAX_RATE} writes/s");
        }
        if !(0.1..=MAX_STEP_SECS).contains(&self.step_secs)
            || !(0.0..=MAX_STEP_SECS).contains(&self.warmup_secs)
        {
            bail!("--step-secs must be 0.1..={MAX_STEP_SECS}, --warmup-secs 0..={MAX_STEP_SECS}");
        }
        if self.max_secs > MAX_TOTAL_SECS {
            bail!("--max-secs must be at most {MAX_TOTAL_SECS}");
        }
        if self.users == 0 || self.value_bytes > 1 << 20 {
            bail!("--users must be positive and --value-bytes at most 1 MiB");
        }
        if self.group == Group::Durable
            && [routes::ROUTES, routes::NODE_ROUTES].contains(&self.space.as_str())
        {
            bail!(
                "--space {} is a routing-table space: use --group registry",
                self.space
            );
        }
        if self.group == Group::Registry && self.nodes < 2 {
            bail!(
                "a node without peers runs no registry group (its routes stay in memory): \
                 use --nodes 3 with --group registry"
            );
        }
        if self.confirm > 3 {
            bail!("--confirm must be 0..=3");
        }
        if !(1..=64).contains(&self.store_threads) || !(1..=64).contains(&self.bench_threads) {
            bail!("--store-threads and --bench-threads must be 1..=64");
        }
        Ok(())
    }
}

/// What the writers share: the nodes' handles and how to build a write.
struct Load {
    stores: Vec<Store>,
    probe: Arc<probe::Probe>,
    group: Group,
    space: String,
    index_space: String,
    payload: Vec<u8>,
    users: u64,
    domain: String,
}

impl Load {
    /// The ops of write number `n` (over the whole run) from the node `node_id`: the route of
    /// `user{n mod users}@domain/res` and its index entry, in the chosen spaces.
    fn ops(&self, n: u64, node_id: u64) -> Vec<Op> {
        let bare = format!("user{}@{}", n % self.users, self.domain);
        let ops = routes::put(node_id, &bare, "res", &self.payload);
        match self.group {
            Group::Registry => ops,
            Group::Durable => ops.into_iter().map(|op| self.to_durable(op)).collect(),
        }
    }

    fn to_durable(&self, op: Op) -> Op {
        match op {
            Op::Put { space, key, value } => Op::Put {
                space: if space == routes::ROUTES {
                    self.space.clone()
                } else {
                    self.index_space.clone()
                },
                key,
                value,
            },
            other => other,
        }
    }
}

/// Bytes a write adds to a Raft entry, counted as the store's batcher counts them (space, key
/// and value of each op, 16 per write); MessagePack adds a few bytes per field on top.
fn write_bytes(ops: &[Op]) -> u64 {
    let op = |o: &Op| match o {
        Op::Put { space, key, value } => space.len() + key.len() + value.len(),
        _ => 0,
    };
    (ops.iter().map(op).sum::<usize>() + 16) as u64
}

fn micros(d: Duration) -> u32 {
    d.as_micros().clamp(1, u32::MAX as u128) as u32
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// What one writer task did in a step.
struct Tally {
    /// Latency from due time (or wake-up, see `writer`) to completion, µs (kept raw: a
    /// histogram per writer would cost more memory than the samples).
    lat: Vec<u32>,
    /// Latency from the call to completion, µs (the store's own service time).
    svc: Vec<u32>,
    done: u64,
    done_in_window: u64,
    errors: u64,
    /// Writes due in the step that the writer had not started a step's length after its end.
    missed: u64,
    bytes: u64,
    first_error: Option<String>,
}

/// Writer `k` of `w`: takes writes `k, k+w, k+2w, ...` of the step, each at its due time
/// `t0 + s/rate`, for those due before the step ends at `end`. A writer that is behind goes on
/// with the writes already due after `end`, until `give_up`; what it has not started by then is
/// `missed`, and each missed write's latency is recorded as `give_up - due` (a lower bound), so
/// that a stall near the end of a step still shows. Bounded: at most `rate·secs/w + 1` writes,
/// each within `WRITE_TIMEOUT`.
#[allow(clippy::too_many_arguments)] // one writer's schedule, spelt out
async fn writer(
    load: Arc<Load>,
    k: u64,
    w: u64,
    base: u64,
    rate: u64,
    t0: Instant,
    end: Instant,
    give_up: Instant,
) -> Tally {
    let store = &load.stores[k as usize % load.stores.len()];
    let node_id = store.node_id();
    let mut t = Tally {
        lat: Vec::new(),
        svc: Vec::new(),
        done: 0,
        done_in_window: 0,
        errors: 0,
        missed: 0,
        bytes: 0,
        first_error: None,
    };
    let mut s = k;
    loop {
        let due = t0 + Duration::from_secs_f64(s as f64 / rate as f64);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if now >= give_up {
            // Still behind well after the step: what is left is counted, not sent.
            let mut m = s;
            loop {
                let due = t0 + Duration::from_secs_f64(m as f64 / rate as f64);
                if due >= end {
                    break;
                }
                t.missed += 1;
                t.lat.push(micros(now - due));
                m += w;
            }
            break;
        }
        let slept = due > now;
        if slept {
            tokio::time::sleep_until(due.into()).await;
        }
        let ops = load.ops(base + s, node_id);
        t.bytes += write_bytes(&ops);
        let sent = Instant::now();
        // A writer that was waiting for the due time starts the clock when it wakes (the timer's
        // millisecond rounding is the bench's, not the store's); one that was behind starts it
        // at the due time, so the wait for the previous write counts.
        let from = if slept { sent } else { due };
        let r = tokio::time::timeout(WRITE_TIMEOUT, store.write(ops)).await;
        let finished = Instant::now();
        match r {
            Ok(Ok(_)) => {
                t.done += 1;
                if finished <= end {
                    t.done_in_window += 1;
                }
                t.lat.push(micros(finished - from));
                t.svc.push(micros(finished - sent));
            }
            Ok(Err(e)) => {
                t.errors += 1;
                t.first_error.get_or_insert_with(|| e.to_string());
            }
            Err(_) => {
                t.errors += 1;
                t.first_error
                    .get_or_insert_with(|| "write timed out".into());
            }
        }
        s += w;
    }
    t
}

/// CPU of this process and of the writers' runtime, µs.
struct Cpu {
    total: u64,
    bench: u64,
    /// Context switches (voluntary and not) of each live thread, by thread id.
    switches: HashMap<u32, u64>,
}

impl Cpu {
    /// Context switches since `before`, over the threads alive now (a thread that exited in
    /// between takes its switches with it).
    fn switches_since(&self, before: &Cpu) -> u64 {
        self.switches
            .iter()
            .map(|(tid, n)| n.saturating_sub(before.switches.get(tid).copied().unwrap_or(0)))
            .sum()
    }
}

/// Voluntary plus involuntary context switches of one thread (`/proc/self/task/TID/status`).
fn switches(status: &str) -> u64 {
    status
        .lines()
        .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// utime+stime of the whole process (exited threads included) and of the threads named
/// `bench*` (the writers' runtime) plus the main thread; the rest is the stores (their runtime,
/// tokio's blocking pool, sled's threads). Also every live thread's context switches.
fn cpu() -> Result<Cpu> {
    let pid = std::process::id();
    let total = procstat::cpu_us(pid)?;
    let mut bench = 0;
    let mut switched = HashMap::new();
    for e in std::fs::read_dir("/proc/self/task")? {
        let e = e?;
        let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
            continue; // the thread exited
        };
        let (Some(open), Some(close)) = (s.find('('), s.rfind(')')) else {
            continue;
        };
        let comm = &s[open + 1..close];
        let tid: u32 = s[..open].trim().parse().unwrap_or(0);
        if let Ok(status) = std::fs::read_to_string(e.path().join("status")) {
            switched.insert(tid, switches(&status));
        }
        if !(comm.starts_with("bench") || tid == pid) {
            continue;
        }
        let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        bench += ticks * 1_000_000 / procstat::clk_tck();
    }
    Ok(Cpu {
        total,
        bench,
        switches: switched,
    })
}

/// Figures of one step.
#[derive(Debug, Clone)]
struct Step {
    offered: u64,
    secs: f64,
    achieved: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    svc_p99_ms: f64,
    done: u64,
    errors: u64,
    missed: u64,
    entries_per_s: f64,
    writes_per_entry: f64,
    log_entries_per_s: f64,
    bytes_per_write: f64,
    bytes_per_entry: f64,
    cpu_us_per_write: f64,
    store_cpu_us_per_write: f64,
    cpu_cores: f64,
    /// Context switches of the process's threads per write (see `Cpu::switches_since`).
    switches_per_write: f64,
    /// Mean time from proposing (or forwarding) an entry to its result, ms.
    commit_ms: f64,
    /// Mean time to apply a batch of committed entries, ms (every node).
    apply_ms: f64,
    /// Snapshots built during the step (every node), and the size of the last one.
    snapshots: u64,
    snapshot_bytes: f64,
    first_error: Option<String>,
    /// Why the step does not count as sustained (see `bend`).
    bent: Option<String>,
    /// 1, or 2.. for a repeat of a step that bent on p99 alone (`--confirm`).
    attempt: u32,
}

impl Step {
    fn json(&self) -> Value {
        json!({
            "offered_per_s": self.offered,
            "secs": self.secs,
            "achieved_per_s": self.achieved,
            "latency_p50_ms": self.p50_ms,
            "latency_p99_ms": self.p99_ms,
            "latency_max_ms": self.max_ms,
            "service_p99_ms": self.svc_p99_ms,
            "writes_done": self.done,
            "errors": self.errors,
            "missed": self.missed,
            "raft_entries_per_s": self.entries_per_s,
            "writes_per_entry": self.writes_per_entry,
            "log_entries_per_s": self.log_entries_per_s,
            "bytes_per_write": self.bytes_per_write,
            "bytes_per_entry": self.bytes_per_entry,
            "cpu_us_per_write": self.cpu_us_per_write,
            "store_cpu_us_per_write": self.store_cpu_us_per_write,
            "cpu_cores": self.cpu_cores,
            "context_switches_per_write": self.switches_per_write,
            "commit_ms": self.commit_ms,
            "apply_ms": self.apply_ms,
            "snapshots": self.snapshots,
            "snapshot_bytes": self.snapshot_bytes,
            "first_error": self.first_error,
            "bent": self.bent,
            "attempt": self.attempt,
        })
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Runs one step at `rate` for `secs`; `base` numbers its writes after the previous steps'.
async fn step(load: &Arc<Load>, writers: usize, rate: u64, secs: f64, base: u64) -> Result<Step> {
    let leader = &load.stores[0];
    let stats0: Vec<_> = load.stores.iter().map(Store::stats).collect();
    let applied0 = leader.applied_index();
    let probes = [probe::COMMIT, probe::APPLY, probe::SNAPSHOT];
    let probe0 = probes.map(|n| load.probe.get(n));
    let cpu0 = cpu()?;
    // Start a little ahead so every writer is waiting when the first write is due.
    let t0 = Instant::now() + Duration::from_millis(20);
    let end = t0 + Duration::from_secs_f64(secs);
    let give_up = end + Duration::from_secs_f64(secs.max(1.0));
    let w = writers as u64;
    let mut set = tokio::task::JoinSet::new();
    for k in 0..w {
        set.spawn(writer(load.clone(), k, w, base, rate, t0, end, give_up));
    }
    let mut lat = hist();
    let mut svc = hist();
    let (mut done, mut in_window, mut errors, mut missed, mut bytes) = (0, 0, 0, 0, 0);
    let mut first_error = None;
    // Every writer stops starting writes at `give_up` and each write is bounded.
    let deadline = give_up + WRITE_TIMEOUT + Duration::from_secs(5);
    loop {
        let next = tokio::time::timeout_at(deadline.into(), set.join_next()).await;
        let t = match next {
            Ok(Some(r)) => r.context("writer task")?,
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                bail!("writers still busy {WRITE_TIMEOUT:?} after the step ended");
            }
        };
        for &v in &t.lat {
            lat.saturating_record(u64::from(v));
        }
        for &v in &t.svc {
            svc.saturating_record(u64::from(v));
        }
        done += t.done;
        in_window += t.done_in_window;
        errors += t.errors;
        missed += t.missed;
        bytes += t.bytes;
        if first_error.is_none() {
            first_error = t.first_error;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = cpu()?;
    let entries: u64 = load
        .stores
        .iter()
        .zip(&stats0)
        .map(|(s, s0)| s.stats().raft_entries - s0.raft_entries)
        .sum();
    let counted: u64 = load
        .stores
        .iter()
        .zip(&stats0)
        .map(|(s, s0)| s.stats().writes - s0.writes)
        .sum();
    let log_entries = leader.applied_index().saturating_sub(applied0);
    let [commit, apply, snap] = probes.map(|n| load.probe.get(n));
    let [commit, apply, snap] = [
        commit.since(&probe0[0]),
        apply.since(&probe0[1]),
        snap.since(&probe0[2]),
    ];
    let per_write = |v: u64| {
        if done == 0 {
            f64::NAN
        } else {
            v as f64 / done as f64
        }
    };
    let writes_per_entry = if entries == 0 {
        f64::NAN
    } else {
        counted as f64 / entries as f64
    };
    let bytes_per_write = per_write(bytes);
    Ok(Step {
        offered: rate,
        secs,
        achieved: in_window as f64 / secs,
        p50_ms: ms(lat.value_at_quantile(0.5)),
        p99_ms: ms(lat.value_at_quantile(0.99)),
        max_ms: ms(lat.max()),
        svc_p99_ms: ms(svc.value_at_quantile(0.99)),
        done,
        errors,
        missed,
        entries_per_s: entries as f64 / wall,
        writes_per_entry,
        log_entries_per_s: log_entries as f64 / wall,
        bytes_per_write,
        bytes_per_entry: bytes_per_write * writes_per_entry,
        cpu_us_per_write: per_write(cpu1.total - cpu0.total),
        store_cpu_us_per_write: per_write(
            (cpu1.total - cpu0.total).saturating_sub(cpu1.bench.saturating_sub(cpu0.bench)),
        ),
        cpu_cores: (cpu1.total - cpu0.total) as f64 / 1e6 / wall,
        switches_per_write: per_write(cpu1.switches_since(&cpu0)),
        commit_ms: commit.mean() * 1000.0,
        apply_ms: apply.mean() * 1000.0,
        snapshots: snap.count,
        snapshot_bytes: if snap.count == 0 { f64::NAN } else { snap.last },
        first_error,
        bent: None,
        attempt: 1,
    })
}

/// Why a step does not count as sustained, if it does not: errors, the store falling behind
/// (achieved below `--min-achieved` of offered), or latency bending (p99 above `--bend-p99`
/// times the first step's). The flag says the p99 bend was the only reason.
fn bend(s: &Step, first_p99_ms: f64, a: &Args) -> Option<(bool, String)> {
    if s.errors > 0 {
        let first = s.first_error.as_deref().unwrap_or("?");
        return Some((false, format!("{} errors ({first})", s.errors)));
    }
    if s.achieved < a.min_achieved * s.offered as f64 {
        let pct = a.min_achieved * 100.0;
        return Some((false, format!("achieved < {pct:.0}% of offered")));
    }
    if s.p99_ms > a.bend_p99 * first_p99_ms {
        return Some((
            true,
            format!(
                "p99 > {}x the first step's {} ms{}",
                a.bend_p99,
                fmt(first_p99_ms),
                if s.snapshots > 0 {
                    " (a snapshot was built in the step)"
                } else {
                    ""
                }
            ),
        ));
    }
    None
}

/// Writes every key once, closed loop (each writer issues its next write as soon as the last
/// one is done), before the measured steps. Bounded by `PREFILL_MAX` and `WRITE_TIMEOUT`.
async fn prefill(load: &Arc<Load>, writers: usize) -> Result<()> {
    let users = load.users;
    let w = (writers as u64).min(users);
    let stats0: Vec<_> = load.stores.iter().map(Store::stats).collect();
    let cpu0 = cpu()?;
    let t0 = Instant::now();
    let deadline = t0 + PREFILL_MAX;
    let mut set = tokio::task::JoinSet::new();
    for k in 0..w {
        let load = load.clone();
        set.spawn(async move {
            let store = &load.stores[k as usize % load.stores.len()];
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut s = k;
            while s < load.users && Instant::now() < deadline {
                let ops = load.ops(s, store.node_id());
                match tokio::time::timeout(WRITE_TIMEOUT, store.write(ops)).await {
                    Ok(Ok(_)) => ok += 1,
                    _ => errors += 1,
                }
                s += w;
            }
            (ok, errors)
        });
    }
    let (mut ok, mut errors) = (0, 0);
    let end = deadline + WRITE_TIMEOUT + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(end.into(), set.join_next()).await {
            Ok(Some(r)) => {
                let (o, e) = r.context("prefill task")?;
                ok += o;
                errors += e;
            }
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                bail!("prefill writers still busy at its deadline");
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu()?;
    let (mut entries, mut writes) = (0, 0);
    for (s, s0) in load.stores.iter().zip(&stats0) {
        entries += s.stats().raft_entries - s0.raft_entries;
        writes += s.stats().writes - s0.writes;
    }
    println!(
        "prefill: {ok} of {users} keys in {secs:.1} s, closed loop with {w} writers: {:.0} writes/s, \
         {} writes/entry, {} us CPU/write, {errors} errors",
        ok as f64 / secs,
        fmt(writes as f64 / entries.max(1) as f64),
        fmt((cpu1.total - cpu0.total) as f64 / ok.max(1) as f64),
    );
    if errors > 0 {
        bail!("{errors} prefill writes failed");
    }
    Ok(())
}

fn free_addr() -> Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Forms the store on the current runtime: node 1 opens alone (and leads), the others open
/// joining and node 1 adds them, as `cluster/tests/three_nodes.rs` does. Every node serves its
/// cluster gRPC on a loopback port when there is more than one.
async fn form(dir: &Path, nodes: usize) -> Result<Vec<Store>> {
    let mut stores: Vec<Store> = Vec::new();
    for i in 0..nodes {
        let id = i as u64 + 1;
        let addr = free_addr()?;
        let cfg = StoreConfig {
            data_dir: dir.join(format!("n{id}")),
            node_id: id,
            raft_addr: addr.to_string(),
        };
        let store = if i == 0 {
            Store::open_with(cfg, StoreOptions::default()).await
        } else {
            Store::open_joining_with(cfg, StoreOptions::default()).await
        }
        .with_context(|| format!("opening node {id}"))?;
        if nodes > 1 {
            tokio::spawn({
                let s = store.clone();
                async move { s.serve_grpc(addr).await }
            });
        }
        if i > 0 {
            stores[0]
                .add_member(id, &addr.to_string())
                .await
                .with_context(|| format!("adding node {id}"))?;
        }
        stores.push(store);
    }
    let t = Instant::now();
    while !stores.iter().all(|s| s.leader() == Some(1)) {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the nodes do not agree on node 1 as leader");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Routes go to the registry group, which the nodes found and join once
    // they have peers.
    if nodes > 1 {
        for s in &stores {
            if !s.registry_wait(Duration::from_secs(30)).await {
                bail!("node {} did not join the registry group", s.node_id());
            }
        }
    }
    Ok(stores)
}

/// Removes the data directories when the run ends, however it ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

const COLUMNS: [(&str, usize); 19] = [
    ("offered", 8),
    ("achieved", 8),
    ("p50 ms", 7),
    ("p99 ms", 7),
    ("max ms", 7),
    ("svc p99", 7),
    ("errors", 6),
    ("missed", 7),
    ("entries/s", 9),
    ("w/entry", 7),
    ("B/entry", 7),
    ("commit", 6),
    ("apply", 6),
    ("snaps", 5),
    ("us/w", 6),
    ("store", 6),
    ("cores", 5),
    ("cs/w", 5),
    ("verdict", 0),
];

fn line(cells: &[String]) -> String {
    let mut out = String::new();
    for ((_, w), c) in COLUMNS.iter().zip(cells) {
        if *w == 0 {
            out += &format!(" {c}");
        } else {
            out += &format!(" {c:>w$}");
        }
    }
    out
}

fn header() -> String {
    line(&COLUMNS.map(|(n, _)| n.to_string()))
}

fn row(s: &Step) -> String {
    let verdict = match (&s.bent, s.attempt) {
        (None, 1) => "ok".to_string(),
        (None, n) => format!("ok (repeat {n})"),
        (Some(w), 1) => format!("BENT: {w}"),
        (Some(w), n) => format!("BENT (repeat {n}): {w}"),
    };
    line(&[
        s.offered.to_string(),
        fmt(s.achieved),
        fmt(s.p50_ms),
        fmt(s.p99_ms),
        fmt(s.max_ms),
        fmt(s.svc_p99_ms),
        s.errors.to_string(),
        s.missed.to_string(),
        fmt(s.entries_per_s),
        fmt(s.writes_per_entry),
        fmt(s.bytes_per_entry),
        fmt(s.commit_ms),
        fmt(s.apply_ms),
        s.snapshots.to_string(),
        fmt(s.cpu_us_per_write),
        fmt(s.store_cpu_us_per_write),
        fmt(s.cpu_cores),
        fmt(s.switches_per_write),
        verdict,
    ])
}

async fn run(a: Args, probe: Arc<probe::Probe>, store_rt: tokio::runtime::Handle) -> Result<()> {
    let started = Instant::now();
    let parent = a.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = TempDir(parent.join(format!("starling-ceiling-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
    let nodes = a.nodes;
    let path = dir.0.clone();
    let stores = tokio::time::timeout(
        FORM_TIMEOUT,
        store_rt.spawn(async move { form(&path, nodes).await }),
    )
    .await
    .context("forming the store timed out")???;
    let load = Arc::new(Load {
        stores: stores.clone(),
        probe,
        group: a.group,
        space: a.space.clone(),
        index_space: format!("{}_idx", a.space),
        payload: vec![b'p'; a.value_bytes],
        users: a.users,
        domain: a.domain.clone(),
    });
    let spaces = match a.group {
        Group::Durable => format!("{}, {}", load.space, load.index_space),
        Group::Registry => format!("{}, {}", routes::ROUTES, routes::NODE_ROUTES),
    };
    println!(
        "starling-ceiling: {} node(s), group {} (spaces {spaces}), {} writers, {} B payload, \
         {} users, {} s steps, data in {}",
        a.nodes,
        a.group.name(),
        a.writers,
        a.value_bytes,
        a.users,
        a.step_secs,
        parent.display()
    );
    let result = measure(&a, &load, started).await;
    // Stop the stores on their runtime, bounded, whatever the measurement gave.
    let stop = store_rt.spawn(async move {
        for s in stores.iter().rev() {
            let _ = s.shutdown().await;
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(30), stop).await;
    drop(load);
    let steps = result?;

    // The ceiling: the last step that held before the first one that bent (a repeat that held
    // overrides the bent run it repeats).
    let mut ceiling: Option<&Step> = None;
    let mut bent: Option<&Step> = None;
    for (i, s) in steps.iter().enumerate() {
        let repeated = steps.get(i + 1).is_some_and(|n| n.attempt > 1);
        match &s.bent {
            None => ceiling = Some(s),
            Some(_) if repeated => {}
            Some(_) => {
                bent = Some(s);
                break;
            }
        }
    }
    // The rate ceiling: the last step, in order, that achieved its rate without errors, before
    // the first that did not (latency aside: snapshot stalls and a shared machine's hiccups move
    // p99, not the rate the store keeps up with).
    let mut rate_ceiling: Option<&Step> = None;
    for s in &steps {
        if s.errors > 0 || s.achieved < a.min_achieved * s.offered as f64 {
            break;
        }
        rate_ceiling = Some(s);
    }
    let who = format!("{} node(s), {}", a.nodes, a.group.name());
    let summary = match (ceiling, bent) {
        (Some(c), Some(b)) => format!(
            "ceiling: {who}: {} writes/s sustained (achieved {:.0}/s, p99 {} ms, {} writes/entry, \
             {} us CPU/write); bends at {}/s ({:.0}/s achieved, p99 {} ms): {}",
            c.offered,
            c.achieved,
            fmt(c.p99_ms),
            fmt(c.writes_per_entry),
            fmt(c.cpu_us_per_write),
            b.offered,
            b.achieved,
            fmt(b.p99_ms),
            b.bent.as_deref().unwrap_or("?")
        ),
        (Some(c), None) => format!(
            "ceiling: {who}: at least {} writes/s (achieved {:.0}/s, p99 {} ms): no step bent, \
             offer more",
            c.offered,
            c.achieved,
            fmt(c.p99_ms)
        ),
        (None, Some(b)) => format!(
            "ceiling: {who}: below the first rate, {}/s already bends: {}",
            b.offered,
            b.bent.as_deref().unwrap_or("?")
        ),
        (None, None) => format!("ceiling: {who}: no step ran"),
    };
    let summary = match rate_ceiling {
        Some(r) if ceiling.is_none_or(|c| c.offered != r.offered) => format!(
            "{summary}; the rate alone holds to {}{}/s (p50 {} ms, svc p99 {} ms)",
            if std::ptr::eq(r, steps.last().unwrap_or(r)) {
                "at least "
            } else {
                ""
            },
            r.offered,
            fmt(r.p50_ms),
            fmt(r.svc_p99_ms)
        ),
        _ => summary,
    };
    println!("{summary}");
    if let Some(path) = &a.json {
        let doc = json!({
            "bench": "ceiling",
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "params": {
                "nodes": a.nodes,
                "group": a.group.name(),
                "spaces": spaces,
                "writers": a.writers,
                "value_bytes": a.value_bytes,
                "users": a.users,
                "prefill": a.prefill,
                "step_secs": a.step_secs,
                "warmup_secs": a.warmup_secs,
                "rates": a.rates,
                "bend_p99": a.bend_p99,
                "min_achieved": a.min_achieved,
                "confirm": a.confirm,
                "store_threads": a.store_threads,
                "bench_threads": a.bench_threads,
                "data_dir": parent.display().to_string(),
            },
            "steps": steps.iter().map(Step::json).collect::<Vec<_>>(),
            "ceiling_per_s": ceiling.map(|c| c.offered),
            "ceiling_step": ceiling.map(Step::json),
            "bent_at_per_s": bent.map(|b| b.offered),
            "bend_reason": bent.and_then(|b| b.bent.clone()),
            "rate_ceiling_per_s": rate_ceiling.map(|r| r.offered),
            "summary": summary,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Prefill, warm-up, then the steps in order until one bends (and its repeats bend too),
/// `--max-secs` is reached or the rates run out. Returns every step run, repeats included.
async fn measure(a: &Args, load: &Arc<Load>, started: Instant) -> Result<Vec<Step>> {
    let budget = Duration::from_secs(a.max_secs);
    if a.prefill {
        prefill(load, a.writers).await?;
    }
    // Write numbers go on from step to step (keys cycle through `--users`).
    let mut base = if a.prefill { a.users } else { 0 };
    if a.warmup_secs > 0.0 {
        let w = step(load, a.writers, a.rates[0], a.warmup_secs, base).await?;
        base += (a.rates[0] as f64 * a.warmup_secs).ceil() as u64;
        println!(
            "warm-up: {}/s for {} s: achieved {:.0}/s, p99 {} ms",
            a.rates[0],
            a.warmup_secs,
            w.achieved,
            fmt(w.p99_ms)
        );
    }
    println!("{}", header());
    let mut steps: Vec<Step> = Vec::new();
    'rates: for &rate in &a.rates {
        for attempt in 1..=a.confirm + 1 {
            if started.elapsed() + Duration::from_secs_f64(a.step_secs) > budget {
                println!("(stopping: --max-secs {} reached)", a.max_secs);
                break 'rates;
            }
            let mut s = step(load, a.writers, rate, a.step_secs, base).await?;
            base += (rate as f64 * a.step_secs).ceil() as u64;
            s.attempt = attempt;
            let first_p99 = steps.first().map_or(s.p99_ms, |f| f.p99_ms);
            let why = bend(&s, first_p99, a);
            let p99_only = why.as_ref().is_some_and(|(p, _)| *p);
            s.bent = why.map(|(_, w)| w);
            println!("{}", row(&s));
            let held = s.bent.is_none();
            steps.push(s);
            // Let the batcher and the flusher go idle between steps.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if held {
                continue 'rates;
            }
            if !p99_only {
                break;
            }
        }
        if !a.no_stop {
            break;
        }
    }
    Ok(steps)
}

fn main() -> ExitCode {
    let a = Args::parse();
    if let Err(e) = a.check() {
        eprintln!("starling-ceiling: {e:#}");
        return ExitCode::FAILURE;
    }
    let probe = match probe::install() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("starling-ceiling: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = |threads: usize, name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()
    };
    // Two runtimes, so that the writers' CPU (threads `bench`) can be told from the stores'.
    let (store_rt, bench_rt) = match (rt(a.store_threads, "store"), rt(a.bench_threads, "bench")) {
        (Ok(s), Ok(b)) => (s, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("starling-ceiling: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = bench_rt.block_on(run(a, probe, store_rt.handle().clone()));
    bench_rt.shutdown_timeout(Duration::from_secs(2));
    store_rt.shutdown_timeout(Duration::from_secs(5));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starling-ceiling: {e:#}");
            ExitCode::FAILURE
        }
    }
}
