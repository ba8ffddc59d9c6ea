//! `login`: connect → TLS → SASL → bind → initial presence → close, at a fixed concurrency.
//! Figures: logins/s, connect-to-bound latency p50/p99, server CPU per login.

use crate::client;
use crate::common::{Common, MAX_SECS, add_cpu, login_many, pct_ms};
use crate::procstat::CpuWindow;
use crate::report::Figures;
use anyhow::Result;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(Args, Clone, Debug)]
pub struct LoginArgs {
    #[command(flatten)]
    pub common: Common,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 20)]
    pub concurrency: u64,
    /// Logins per run.
    #[arg(long, default_value_t = 2000)]
    pub logins: u64,
    /// Accounts cycled through (first_user..first_user+users).
    #[arg(long, default_value_t = 500)]
    pub users: u64,
    /// Skip the unmeasured warm-up login of each account.
    #[arg(long)]
    pub no_warmup: bool,
    /// Stop a run after this many seconds even if logins remain.
    #[arg(long, default_value_t = 60)]
    pub max_secs: u64,
}

pub async fn run(a: LoginArgs) -> Result<()> {
    let c = &a.common;
    let t = c.target().await?;
    c.provision(a.users).await?;
    if !a.no_warmup {
        // one unmeasured login per account: fills the bench's salted-password cache (so the
        // client spends no PBKDF2 in the measured window) and the server's account caches
        let users: Vec<u64> = (c.first_user..c.first_user + a.users).collect();
        let (sessions, _, _) = login_many(c, &t, &users, "warmup", false, "warm-up").await;
        for s in sessions.into_iter().flatten() {
            s.close(t.echo).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut runs = Vec::new();
    for r in 0..c.runs {
        let f = one_run(&a, &t, r).await?;
        runs.push(f);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let params = json!({"concurrency": a.concurrency, "logins": a.logins, "users": a.users});
    c.finish("login", params, &runs)
}

async fn one_run(a: &LoginArgs, t: &Arc<client::Target>, run: u32) -> Result<Figures> {
    let c = &a.common;
    let users = a.users.max(1);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        600_000_000,
        3,
    )?));
    let deadline = Instant::now() + Duration::from_secs(a.max_secs.clamp(1, MAX_SECS));
    let pb = c.bar(a.logins, &format!("login r{}", run + 1));
    let cpu = CpuWindow::start(c.server_pid())?;
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency.clamp(1, 5000) {
        let (t, next, errors, hist, pb, c) = (
            t.clone(),
            next.clone(),
            errors.clone(),
            hist.clone(),
            pb.clone(),
            c.clone(),
        );
        let logins = a.logins;
        set.spawn(async move {
            let mut local =
                Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= logins || Instant::now() >= deadline {
                    break;
                }
                let u = c.first_user + k % users;
                let res = format!("login{k}");
                match client::login(&t, &c.user(u), &c.pass(u), &res).await {
                    Ok((mut s, d)) => {
                        let _ = local.record(d.as_micros().max(1) as u64);
                        let _ = s.initial_presence(t.echo).await;
                        s.close(t.echo).await;
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("login error: {e:#}");
                        }
                    }
                }
                pb.inc(1);
            }
            hist.lock().await.add(&local).expect("same bounds");
        });
    }
    while set.join_next().await.is_some() {}
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu.stop()?;
    pb.finish_and_clear();
    let h = hist.lock().await;
    let ok = h.len();
    let mut f = Figures::default();
    f.add("logins_per_s", ok as f64 / elapsed);
    f.add("login_p50_ms", pct_ms(&h, 0.5));
    f.add("login_p99_ms", pct_ms(&h, 0.99));
    add_cpu(&mut f, "login", ok, cpu);
    f.add("logins_ok", ok as f64);
    f.add("errors", errors.load(Ordering::Relaxed) as f64);
    Ok(f)
}
