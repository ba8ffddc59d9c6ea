//! `idle`: hold N sessions and report the server's memory per session (RSS growth / sessions).
//!
//! One process holds at most `MAX_SESSIONS_PER_PROCESS` sockets (the fd limit is 20,000 here), so
//! `--spawn K` splits the sessions over K child processes of this binary (`idle-child`).

use crate::common::{Common, MAX_SECS, MAX_SESSIONS_PER_PROCESS, login_many};
use crate::procstat::{CpuWindow, rss_kib};
use crate::report::Figures;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

#[derive(Args, Clone, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Sessions to hold.
    #[arg(long, default_value_t = 1000)]
    pub sessions: u64,
    /// Split the sessions over K child processes (0: hold them in this process).
    #[arg(long, default_value_t = 0)]
    pub spawn: u64,
    /// Longest wait for the server's RSS to stop growing, seconds.
    #[arg(long, default_value_t = 30)]
    pub plateau_secs: u64,
}

#[derive(Args, Clone, Debug)]
pub struct IdleChildArgs {
    #[command(flatten)]
    pub common: Common,
    /// Sessions this child holds.
    #[arg(long)]
    pub count: u64,
    /// Hold at most this long (the parent closes our stdin earlier).
    #[arg(long, default_value_t = 300)]
    pub hold_secs: u64,
}

pub async fn run(a: IdleArgs) -> Result<()> {
    let c = &a.common;
    c.check_single()?;
    let procs = if a.spawn == 0 { 1 } else { a.spawn };
    if a.sessions.div_ceil(procs) > MAX_SESSIONS_PER_PROCESS {
        bail!(
            "{} sessions need --spawn {} or more (≤{MAX_SESSIONS_PER_PROCESS} per process)",
            a.sessions,
            a.sessions.div_ceil(MAX_SESSIONS_PER_PROCESS)
        );
    }
    if c.server_pid().is_none() {
        eprintln!("idle: no --server-pid, so no memory figures; only login counts");
    }
    c.provision(a.sessions).await?;
    let mut runs = Vec::new();
    for r in 0..c.runs {
        runs.push(one_run(&a, r).await?);
        tokio::time::sleep(Duration::from_secs(3)).await; // let the server release the sessions
    }
    c.finish(
        "idle",
        json!({"sessions": a.sessions, "spawn": a.spawn}),
        &runs,
    )
}

/// Sample RSS each second until it changes by < 0.5% over 3 samples (or the bound).
async fn plateau(pid: u32, max: Duration) -> Result<u64> {
    let until = Instant::now() + max;
    let mut last: Vec<u64> = vec![rss_kib(pid)?];
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        last.push(rss_kib(pid)?);
        if last.len() >= 3 {
            let w = &last[last.len() - 3..];
            let (lo, hi) = (*w.iter().min().unwrap_or(&0), *w.iter().max().unwrap_or(&0));
            if (hi - lo) as f64 <= 0.005 * hi as f64 {
                break;
            }
        }
    }
    Ok(*last.last().unwrap_or(&0))
}

async fn one_run(a: &IdleArgs, run: u32) -> Result<Figures> {
    let c = &a.common;
    let rss0 = match c.server_pid() {
        Some(p) => Some(rss_kib(p)?),
        None => None,
    };
    let cpu = CpuWindow::start(c.server_pid())?;
    let t0 = Instant::now();
    let mut held = Vec::new();
    let mut children = Vec::new();
    let mut ok = 0u64;
    if a.spawn == 0 {
        let t = c.target().await?;
        let users: Vec<u64> = (c.first_user..c.first_user + a.sessions).collect();
        let (sessions, _, _) =
            login_many(c, &t, &users, "idle", true, &format!("idle r{}", run + 1)).await;
        held = sessions.into_iter().flatten().collect();
        ok = held.len() as u64;
    } else {
        let exe = std::env::current_exe()?;
        let per = a.sessions.div_ceil(a.spawn);
        let mut first = c.first_user;
        let mut left = a.sessions;
        while left > 0 {
            let n = per.min(left);
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.arg("idle-child")
                .args(c.child_args(first))
                .arg("--count")
                .arg(n.to_string());
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            children.push(cmd.spawn().context("spawn idle-child")?);
            first += n;
            left -= n;
        }
        for ch in &mut children {
            let out = ch.stdout.take().context("child stdout")?;
            let mut line = String::new();
            let wait = Duration::from_secs(MAX_SECS);
            let _ = tokio::time::timeout(wait, BufReader::new(out).read_line(&mut line)).await;
            ok += line
                .trim()
                .strip_prefix("ready ")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        }
    }
    let login_secs = t0.elapsed().as_secs_f64();
    let cpu = cpu.stop()?;
    let mut f = Figures::default();
    f.add("sessions_held", ok as f64);
    f.add("setup_logins_per_s", ok as f64 / login_secs);
    if let (Some(p), Some(r0)) = (c.server_pid(), rss0) {
        let r1 = plateau(p, Duration::from_secs(a.plateau_secs.clamp(1, MAX_SECS))).await?;
        f.add("server_rss_before_kib", r0 as f64);
        f.add("server_rss_plateau_kib", r1 as f64);
        f.add(
            "server_kib_per_session",
            (r1 as f64 - r0 as f64) / ok.max(1) as f64,
        );
        if let Some(s) = cpu.0 {
            f.add("server_cpu_us_per_login", s as f64 / ok.max(1) as f64);
        }
    }
    for s in held {
        s.close(c.echo).await;
    }
    for mut ch in children {
        drop(ch.stdin.take()); // the child exits when its stdin closes
        if tokio::time::timeout(Duration::from_secs(20), ch.wait())
            .await
            .is_err()
        {
            let _ = ch.kill().await;
        }
    }
    Ok(f)
}

/// Child: log in `count` sessions, print `ready N`, hold them until stdin closes or the bound.
pub async fn child(a: IdleChildArgs) -> Result<()> {
    let c = &a.common;
    let t = c.target().await?;
    let users: Vec<u64> =
        (c.first_user..c.first_user + a.count.min(MAX_SESSIONS_PER_PROCESS)).collect();
    let (sessions, _, _) = login_many(c, &t, &users, "idle", true, "idle-child").await;
    let held: Vec<_> = sessions.into_iter().flatten().collect();
    println!("ready {}", held.len());
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    let hold = Duration::from_secs(a.hold_secs.clamp(1, MAX_SECS));
    let _ = tokio::time::timeout(hold, async {
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    for s in held {
        s.close(c.echo).await;
    }
    Ok(())
}
