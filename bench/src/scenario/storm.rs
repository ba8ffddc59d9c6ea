//! `storm`: a reconnect storm, as after a load balancer's failover.
//!
//! N sessions log in (STARTTLS, SASL, bind, initial presence; unmeasured warm-up). Then every
//! client process drops all its connections at once (TCP reset: SO_LINGER 0, no
//! `</stream:stream>`, no TLS close; `--drop fin` closes them instead), and every session
//! reconnects after a delay drawn uniformly from `[0, --jitter-ms)` (a client's back-off) and logs
//! in again with the same account and the same resource (the realistic case: a server that has
//! not yet seen the old connection end must replace it). A failed attempt is retried after a
//! back-off; a `<policy-violation/>` stream error (the server's connection shaping) counts as
//! "shaped" and is retried like any other.
//!
//! Measured from the drop: seconds until 99% and 100% of the sessions are bound again, the best
//! 1-second login rate, connect-to-bound latency of each successful reconnect, failed attempts by
//! kind, and the server's CPU (utime+stime of every `--server-pid`) and context switches (every
//! thread's voluntary + involuntary) from the drop until the last session is bound again, per
//! login. `--timeout-secs` bounds each login and the whole storm: what is not bound by then is
//! reported as not reconnected.
//!
//! Sessions are spread over `--spawn K` child processes (`storm-child`; one process holds at most
//! `MAX_SESSIONS_PER_PROCESS` sockets) and round-robin over the `--port`s (one per cluster node).
//! A child reports each event as one line on its stdout:
//!
//! ```text
//! ready N                          warm-up done, N sessions bound; waits for `go` on stdin
//! b UNIX_US LATENCY_US ATTEMPTS    a session is bound again
//! e KIND                           an attempt failed (the session backs off and retries)
//! g KIND                           a session gave up (attempts or time used up; its last error)
//! done                             every session is bound again or gave up
//! ```
//!
//! Timestamps are wall-clock microseconds: the processes share the machine's clock.

use crate::client::{self, Refusal, Session, Target};
use crate::common::{Common, MAX_SECS, MAX_SESSIONS_PER_PROCESS, login_spread, pct_ms, port_index};
use crate::procstat::{cpu_us, ctx_switches};
use crate::report::Figures;
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Every session binds this resource, before and after the drop.
const RESOURCE: &str = "storm";
/// Attempts per session are capped here whatever `--max-attempts` says.
const MAX_ATTEMPTS: u32 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconnectTo {
    /// The port the session had.
    Same,
    /// The next port in the list (another node of a cluster).
    Next,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DropMode {
    /// TCP reset (SO_LINGER 0), nothing said on the stream.
    Reset,
    /// TCP close (FIN), nothing said on the stream.
    Fin,
}

/// What each client process does at the drop and after it.
#[derive(Args, Clone, Debug)]
pub struct StormOpts {
    /// Each session reconnects after a delay drawn uniformly from [0, JITTER) ms after the drop.
    #[arg(long, default_value_t = 2000)]
    pub jitter_ms: u64,
    /// Where a session reconnects: the port it had, or the next one of the list.
    #[arg(long, value_enum, default_value_t = ReconnectTo::Same)]
    pub reconnect_to: ReconnectTo,
    /// How the connections are dropped.
    #[arg(long = "drop", value_enum, default_value_t = DropMode::Reset)]
    pub drop_mode: DropMode,
    /// Back-off after the n-th failed attempt: uniform in [0.5, 1.5) × RETRY × 2^(n-1) ms
    /// (the doubling stops at 8×).
    #[arg(long, default_value_t = 1000)]
    pub retry_ms: u64,
    /// Attempts per session before it gives up (at most 1000).
    #[arg(long, default_value_t = 20)]
    pub max_attempts: u32,
    /// Seed of the delays and back-offs (default: from the clock; printed in the JSON).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl StormOpts {
    fn child_args(&self, seed: u64) -> Vec<String> {
        let name = |v: Option<clap::builder::PossibleValue>| {
            v.map(|p| p.get_name().to_string()).unwrap_or_default()
        };
        vec![
            "--jitter-ms".into(),
            self.jitter_ms.to_string(),
            "--reconnect-to".into(),
            name(self.reconnect_to.to_possible_value()),
            "--drop".into(),
            name(self.drop_mode.to_possible_value()),
            "--retry-ms".into(),
            self.retry_ms.to_string(),
            "--max-attempts".into(),
            self.max_attempts.to_string(),
            "--seed".into(),
            seed.to_string(),
        ]
    }

    /// The back-off before attempt `n + 1` after `n` failed ones.
    fn backoff(&self, n: u32, rng: &mut StdRng) -> Duration {
        let base = self.retry_ms as f64 * f64::from(1u32 << n.saturating_sub(1).min(3));
        Duration::from_secs_f64(base * rng.random_range(0.5..1.5) / 1000.0)
    }
}

#[derive(Args, Clone, Debug)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub storm: StormOpts,
    /// Sessions (accounts first_user..first_user+sessions).
    #[arg(long, default_value_t = 1000)]
    pub sessions: u64,
    /// Child processes holding the sessions (0: as few as the per-process socket bound allows).
    #[arg(long, default_value_t = 0)]
    pub spawn: u64,
    /// Pause between the end of the warm-up and the drop, seconds (the server settles).
    #[arg(long, default_value_t = 2)]
    pub settle_secs: u64,
}

#[derive(Args, Clone, Debug)]
pub struct StormChildArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub storm: StormOpts,
    /// Sessions this child holds.
    #[arg(long)]
    pub count: u64,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub async fn run(a: StormArgs) -> Result<()> {
    let c = &a.common;
    if a.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    let procs = if a.spawn == 0 {
        a.sessions.div_ceil(MAX_SESSIONS_PER_PROCESS)
    } else {
        a.spawn.min(a.sessions)
    };
    if a.sessions.div_ceil(procs) > MAX_SESSIONS_PER_PROCESS {
        bail!(
            "{} sessions need --spawn {} or more (≤{MAX_SESSIONS_PER_PROCESS} per process)",
            a.sessions,
            a.sessions.div_ceil(MAX_SESSIONS_PER_PROCESS)
        );
    }
    if a.storm.jitter_ms >= c.timeout_secs.clamp(1, MAX_SECS) * 1000 {
        bail!("--jitter-ms must be shorter than --timeout-secs, which bounds the storm");
    }
    c.targets().await?; // every port resolves to loopback (or --allow-non-loopback)
    if c.server_pids.is_empty() {
        eprintln!("storm: no --server-pid, so no server CPU figures");
    }
    c.provision(a.sessions).await?;
    let seed = a.storm.seed.unwrap_or_else(unix_us);
    let mut runs = Vec::new();
    for r in 0..c.runs {
        runs.push(one_run(&a, procs, seed.wrapping_add(u64::from(r)), r).await?);
        if r + 1 < c.runs {
            tokio::time::sleep(Duration::from_secs(3)).await; // the server lets the sessions go
        }
    }
    let params = json!({
        "sessions": a.sessions, "spawn": procs, "ports": c.ports, "jitter_ms": a.storm.jitter_ms,
        "reconnect_to": a.storm.reconnect_to, "drop": a.storm.drop_mode,
        "retry_ms": a.storm.retry_ms, "max_attempts": a.storm.max_attempts, "seed": seed,
        "timeout_secs": c.timeout_secs, "resource": RESOURCE,
    });
    c.finish("storm", params, &runs)
}

/// CPU (µs) and context switches of each server process, and CPU of the bench's children.
struct Snapshot {
    at: Instant,
    server: Vec<Option<(u64, u64)>>,
    bench_cpu: u64,
}

fn snapshot(server_pids: &[u32], children: &[u32]) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        server: server_pids
            .iter()
            .map(|&p| Some((cpu_us(p).ok()?, ctx_switches(p).ok()?)))
            .collect(),
        bench_cpu: children.iter().filter_map(|&p| cpu_us(p).ok()).sum(),
    }
}

/// The largest number of timestamps (sorted, µs) within any one-second window.
fn best_second(sorted_us: &[u64]) -> usize {
    let mut best = 0;
    let mut j = 0;
    for (i, &t) in sorted_us.iter().enumerate() {
        while j < sorted_us.len() && sorted_us[j] < t + 1_000_000 {
            j += 1;
        }
        best = best.max(j - i);
    }
    best
}

async fn one_run(a: &StormArgs, procs: u64, seed: u64, run: u32) -> Result<Figures> {
    let c = &a.common;
    let say = |m: String| eprintln!("storm r{}: {m}", run + 1);
    let exe = std::env::current_exe()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Option<String>)>();
    let mut children = Vec::new();
    let mut stdins = Vec::new();
    let mut pids = Vec::new();
    let per = a.sessions.div_ceil(procs);
    let (mut first, mut left) = (c.first_user, a.sessions);
    let t0 = Instant::now();
    while left > 0 {
        let n = per.min(left);
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("storm-child")
            .args(c.child_args(first))
            .args(a.storm.child_args(seed))
            .arg("--count")
            .arg(n.to_string());
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut ch = cmd.spawn().context("spawn storm-child")?;
        let i = children.len();
        pids.push(ch.id().unwrap_or(0));
        stdins.push(ch.stdin.take().context("child stdin")?);
        let mut lines = BufReader::new(ch.stdout.take().context("child stdout")?).lines();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send((i, Some(l))).is_err() {
                    return;
                }
            }
            let _ = tx.send((i, None));
        });
        children.push(ch);
        first += n;
        left -= n;
    }
    drop(tx);
    let k = children.len();

    // warm-up: every child logs its sessions in and says `ready N`
    let mut total = 0u64;
    let mut answered = vec![false; k];
    let mut finished = vec![false; k]; // a child that ended (its stdout closed) or said `done`
    let warm_until = t0 + Duration::from_secs(MAX_SECS);
    while answered.iter().any(|x| !x) {
        match tokio::time::timeout_at(warm_until.into(), rx.recv()).await {
            Ok(Some((i, Some(l)))) => {
                if let Some(n) = l.trim().strip_prefix("ready ") {
                    total += n.parse::<u64>().unwrap_or(0);
                    answered[i] = true;
                }
            }
            Ok(Some((i, None))) => (answered[i], finished[i]) = (true, true), // the child ended
            Ok(None) | Err(_) => break,
        }
    }
    let warm_secs = t0.elapsed().as_secs_f64();
    if total == 0 {
        bail!("no session logged in during the warm-up");
    }
    say(format!(
        "{total} of {} sessions bound in {warm_secs:.1} s over {k} process(es) and {} port(s)",
        a.sessions,
        c.ports.len()
    ));
    tokio::time::sleep(Duration::from_secs(a.settle_secs.min(MAX_SECS))).await;

    // the drop
    let s0 = snapshot(&c.server_pids, &pids);
    let drop_unix = unix_us();
    for s in &mut stdins {
        let _ = s.write_all(b"go\n").await;
        let _ = s.flush().await;
    }
    say(format!(
        "dropped; reconnecting within {} ms",
        a.storm.jitter_ms
    ));

    let mut bound_at: Vec<u64> = Vec::with_capacity(total as usize);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut gave_up = 0u64;
    let mut resolved = 0u64;
    let mut end: Option<Snapshot> = None;
    let hard = s0.at + Duration::from_secs(c.timeout_secs.clamp(1, MAX_SECS) + 15);
    while finished.iter().any(|x| !x) {
        let (i, line) = match tokio::time::timeout_at(hard.into(), rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => break,
        };
        let Some(line) = line else {
            finished[i] = true;
            continue;
        };
        let mut w = line.split_whitespace();
        match w.next() {
            Some("b") => {
                let at: u64 = w.next().and_then(|x| x.parse().ok()).unwrap_or(drop_unix);
                let lat: u64 = w.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                bound_at.push(at.saturating_sub(drop_unix));
                let _ = hist.record(lat.max(1));
                resolved += 1;
            }
            Some("e") => {
                *errors
                    .entry(w.next().unwrap_or("other").into())
                    .or_default() += 1
            }
            Some("g") => {
                gave_up += 1;
                resolved += 1;
            }
            Some("done") => finished[i] = true,
            _ => {}
        }
        if resolved >= total && end.is_none() {
            end = Some(snapshot(&c.server_pids, &pids));
        }
    }
    let end = end.unwrap_or_else(|| snapshot(&c.server_pids, &pids));
    for s in stdins {
        drop(s); // a child closes its sessions and exits when its stdin closes
    }
    for mut ch in children {
        if tokio::time::timeout(Duration::from_secs(30), ch.wait())
            .await
            .is_err()
        {
            let _ = ch.kill().await;
        }
    }

    bound_at.sort_unstable();
    let ok = bound_at.len() as u64;
    say(format!(
        "{ok} of {total} bound again, {} failed attempts, {gave_up} gave up",
        errors.values().sum::<u64>()
    ));
    if let Some(&last) = bound_at.last() {
        let mut per_s = vec![0u32; (last / 1_000_000) as usize + 1];
        for &t in &bound_at {
            per_s[(t / 1_000_000) as usize] += 1;
        }
        let v: Vec<String> = per_s.iter().map(u32::to_string).collect();
        say(format!(
            "bound again per second after the drop: {}",
            v.join(" ")
        ));
    }
    let secs_at = |n: u64| -> f64 {
        if n == 0 || n > ok {
            f64::NAN
        } else {
            bound_at[(n - 1) as usize] as f64 / 1e6
        }
    };
    let mut f = Figures::default();
    f.add("sessions", total as f64);
    f.add("secs_to_99pct_bound", secs_at((total * 99).div_ceil(100)));
    f.add("secs_to_100pct_bound", secs_at(total));
    f.add("secs_to_50pct_bound", secs_at(total.div_ceil(2)));
    f.add("peak_logins_per_s", best_second(&bound_at) as f64);
    f.add("login_p50_ms", pct_ms(&hist, 0.5));
    f.add("login_p99_ms", pct_ms(&hist, 0.99));
    f.add(
        "login_max_ms",
        if hist.is_empty() {
            f64::NAN
        } else {
            hist.max() as f64 / 1000.0
        },
    );
    f.add("reconnected", ok as f64);
    f.add("not_reconnected", (total - ok) as f64);
    let errs: u64 = errors.values().sum();
    let shaped = errors.get("shaped").copied().unwrap_or(0);
    f.add("errors", errs as f64);
    f.add("errors_unshaped", (errs - shaped) as f64);
    for kind in ["shaped", "connect_refused", "reset", "closed", "timeout"] {
        f.add(
            &format!("err_{kind}"),
            errors.get(kind).copied().unwrap_or(0) as f64,
        );
    }
    for (kind, n) in &errors {
        if !["shaped", "connect_refused", "reset", "closed", "timeout"].contains(&kind.as_str()) {
            f.add(&format!("err_{kind}"), *n as f64);
        }
    }
    let window_us = end.at.duration_since(s0.at).as_micros().max(1) as f64;
    f.add("window_secs", window_us / 1e6);
    let per_login = |x: f64| if ok == 0 { f64::NAN } else { x / ok as f64 };
    if !c.server_pids.is_empty() {
        let mut cpu = Some(0u64);
        let mut ctx = Some(0u64);
        for (b, e) in s0.server.iter().zip(&end.server) {
            match (b, e) {
                (Some(b), Some(e)) => {
                    cpu = cpu.map(|x| x + e.0.saturating_sub(b.0));
                    ctx = ctx.map(|x| x + e.1.saturating_sub(b.1));
                }
                _ => (cpu, ctx) = (None, None), // a server process is gone
            }
        }
        let cpu = cpu.map_or(f64::NAN, |x| x as f64);
        f.add("server_cpu_us_per_login", per_login(cpu));
        f.add("server_cpu_cores", cpu / window_us);
        f.add(
            "server_ctxsw_per_login",
            per_login(ctx.map_or(f64::NAN, |x| x as f64)),
        );
    }
    f.add(
        "bench_cpu_us_per_login",
        per_login(end.bench_cpu.saturating_sub(s0.bench_cpu) as f64),
    );
    f.add("warmup_logins_per_s", total as f64 / warm_secs);
    f.add("warmup_failed", (a.sessions - total) as f64);
    Ok(f)
}

/// The kind of a failed attempt, as counted in the report (`err_<kind>`).
pub fn classify(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(r) = cause.downcast_ref::<Refusal>() {
            return match r {
                Refusal::Stream { condition, .. } if condition == "policy-violation" => {
                    "shaped".into()
                }
                Refusal::Stream { condition, .. } => format!("stream_{condition}"),
                Refusal::Sasl { condition, .. } => format!("sasl_{condition}"),
                Refusal::Bind { .. } => "bind".into(),
                Refusal::Closed => "closed".into(),
                Refusal::Timeout(_) => "timeout".into(),
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::ConnectionRefused => return "connect_refused".into(),
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                    return "reset".into();
                }
                K::UnexpectedEof => return "closed".into(),
                K::TimedOut => return "timeout".into(),
                K::AddrNotAvailable => return "addr_not_available".into(),
                _ => {}
            }
        }
    }
    let s = format!("{e:#}");
    if s.contains("TLS handshake") {
        "tls".into()
    } else if s.starts_with("connect") {
        "connect_other".into()
    } else {
        "other".into()
    }
}

/// The child's stdout: lines written by one thread, in batches, flushed as soon as written.
#[derive(Clone)]
struct Reporter(std::sync::mpsc::Sender<String>);

impl Reporter {
    fn start() -> (Reporter, std::thread::JoinHandle<()>) {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let h = std::thread::spawn(move || {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            while let Ok(l) = rx.recv() {
                let _ = writeln!(out, "{l}");
                while let Ok(l) = rx.try_recv() {
                    let _ = writeln!(out, "{l}");
                }
                let _ = out.flush();
            }
        });
        (Reporter(tx), h)
    }

    fn line(&self, l: String) {
        let _ = self.0.send(l);
    }
}

/// Child: log in `count` sessions, say `ready N`, wait for `go`, drop them all, reconnect each
/// after its delay, report every event, then hold the sessions until stdin closes.
pub async fn child(a: StormChildArgs) -> Result<()> {
    let c = &a.common;
    let o = a.storm.clone();
    let zero_linger = o.drop_mode == DropMode::Reset;
    let targets: Vec<Arc<Target>> = c
        .targets()
        .await?
        .into_iter()
        .map(|t| {
            Arc::new(Target {
                zero_linger,
                ..(*t).clone()
            })
        })
        .collect();
    let users: Vec<u64> =
        (c.first_user..c.first_user + a.count.min(MAX_SESSIONS_PER_PROCESS)).collect();
    let (sessions, _, _) = login_spread(c, &targets, &users, RESOURCE, true, "storm-child").await;
    let held: Vec<(u64, Session)> = users
        .iter()
        .zip(sessions)
        .filter_map(|(&u, s)| Some((u, s?)))
        .collect();
    let (out, writer) = Reporter::start();
    out.line(format!("ready {}", held.len()));

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let hold = Duration::from_secs(MAX_SECS);
    let go = tokio::time::timeout(hold, stdin.next_line()).await;
    if !matches!(&go, Ok(Ok(Some(l))) if l.trim() == "go") {
        drop(out);
        let _ = writer.join();
        return Ok(()); // the parent went away: the sessions just close
    }
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs(c.timeout_secs.clamp(1, MAX_SECS));
    let accounts: Vec<u64> = held.iter().map(|(u, _)| *u).collect();
    // All at once: each socket is closed without a word (and reset with SO_LINGER 0).
    drop(held);

    let mut rng = StdRng::seed_from_u64(
        o.seed.unwrap_or(0) ^ c.first_user.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let first_of_kind = Arc::new(Mutex::new(HashSet::new()));
    let n = targets.len();
    let mut set = tokio::task::JoinSet::new();
    for u in accounts {
        let delay = Duration::from_micros(rng.random_range(0..o.jitter_ms.max(1) * 1000));
        let i = port_index(u, n);
        let t = match o.reconnect_to {
            ReconnectTo::Same => targets[i].clone(),
            ReconnectTo::Next => targets[(i + 1) % n].clone(),
        };
        let job = Reconnect {
            t,
            user: c.user(u),
            pass: c.pass(u),
            at: start + delay,
            deadline,
            opts: o.clone(),
            rng: StdRng::seed_from_u64(rng.random()),
            out: out.clone(),
            first_of_kind: first_of_kind.clone(),
        };
        set.spawn(job.run());
    }
    let mut kept = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(Some(s)) = r {
            kept.push(s);
        }
    }
    out.line("done".into());
    drop(out);
    let _ = writer.join();

    let _ = tokio::time::timeout(hold, async {
        while let Ok(Some(_)) = stdin.next_line().await {}
    })
    .await;
    let mut closing = tokio::task::JoinSet::new();
    for s in kept {
        let echo = c.echo;
        closing.spawn(async move { s.close(echo).await });
    }
    while closing.join_next().await.is_some() {}
    Ok(())
}

/// One session's way back after the drop.
struct Reconnect {
    t: Arc<Target>,
    user: String,
    pass: String,
    at: tokio::time::Instant,
    deadline: tokio::time::Instant,
    opts: StormOpts,
    rng: StdRng,
    out: Reporter,
    first_of_kind: Arc<Mutex<HashSet<String>>>,
}

impl Reconnect {
    async fn run(mut self) -> Option<Session> {
        tokio::time::sleep_until(self.at).await;
        let mut last = "deadline".to_string();
        for attempt in 1..=self.opts.max_attempts.clamp(1, MAX_ATTEMPTS) {
            let login = client::login(&self.t, &self.user, &self.pass, RESOURCE);
            match tokio::time::timeout_at(self.deadline, login).await {
                Ok(Ok((mut s, d))) => {
                    let at = unix_us();
                    let _ = s.initial_presence(self.t.echo).await;
                    self.out.line(format!("b {at} {} {attempt}", d.as_micros()));
                    return Some(s);
                }
                Ok(Err(e)) => {
                    last = classify(&e);
                    if self
                        .first_of_kind
                        .lock()
                        .expect("kinds")
                        .insert(last.clone())
                    {
                        eprintln!("storm-child: first '{last}' error: {e:#}");
                    }
                    self.out.line(format!("e {last}"));
                }
                Err(_) => {
                    last = "deadline".into();
                    break;
                }
            }
            let next = tokio::time::Instant::now() + self.opts.backoff(attempt, &mut self.rng);
            if next >= self.deadline {
                break;
            }
            tokio::time::sleep_until(next).await;
        }
        self.out.line(format!("g {last}"));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_second_window() {
        assert_eq!(best_second(&[]), 0);
        assert_eq!(best_second(&[5]), 1);
        let t = [0, 100, 999_999, 1_000_000, 1_500_000, 1_600_000, 1_700_000];
        assert_eq!(best_second(&t), 5); // from 0.999999 s: five before 1.999999 s
    }

    #[test]
    fn classify_kinds() {
        let shaped = anyhow::Error::new(Refusal::Stream {
            condition: "policy-violation".into(),
            raw: String::new(),
        })
        .context("user1");
        assert_eq!(classify(&shaped), "shaped");
        let rc = anyhow::Error::new(Refusal::Stream {
            condition: "resource-constraint".into(),
            raw: String::new(),
        });
        assert_eq!(classify(&rc), "stream_resource-constraint");
        let refused =
            anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
                .context("connect");
        assert_eq!(classify(&refused), "connect_refused");
        let reset = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
            .context("TLS handshake");
        assert_eq!(classify(&reset), "reset");
        assert_eq!(classify(&anyhow::anyhow!("TLS handshake")), "tls");
    }

    #[test]
    fn backoff_doubles_then_stops() {
        let o = StormOpts {
            jitter_ms: 0,
            reconnect_to: ReconnectTo::Same,
            drop_mode: DropMode::Reset,
            retry_ms: 1000,
            max_attempts: 5,
            seed: None,
        };
        let mut rng = StdRng::seed_from_u64(1);
        for (n, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)] {
            let d = o.backoff(n, &mut rng).as_secs_f64();
            assert!(d >= 0.5 * base && d < 1.5 * base, "attempt {n}: {d}");
        }
    }
}
