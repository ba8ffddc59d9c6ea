//! `presence`: N users with rosters (provisioned beforehand, e.g. the peers' `ROSTER=R`
//! provisioning) broadcast presence updates at a fixed total rate.
//! Each user fetches its roster after login; the expected fan-out of an update is the number of its
//! contacts with subscription `both` or `from` that are among the N online users.
//! Figures: presence stanzas delivered/s, fan-out ratio (delivered / expected, should be 1), fan-out
//! latency (update sent → each contact's copy received), server CPU per delivered presence.

use crate::client::{self, Reader};
use crate::common::{Common, MAX_SECS, add_cpu, login_many, now_us, pct_ms};
use crate::frame::{self, Frame};
use crate::procstat::CpuWindow;
use crate::report::Figures;
use crate::scenario::chat::hist;
use anyhow::{Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

#[derive(Args, Clone, Debug)]
pub struct PresenceArgs {
    #[command(flatten)]
    pub common: Common,
    /// Users online (accounts first_user .. first_user+N).
    #[arg(long, default_value_t = 100)]
    pub users: u64,
    /// Presence updates per user per run.
    #[arg(long, default_value_t = 10)]
    pub updates: u64,
    /// Offered presence updates per second over all users.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Pause after login so initial-presence broadcasts settle, seconds.
    #[arg(long, default_value_t = 2)]
    pub settle_secs: u64,
    /// Before measuring, make user i subscribe to users i+1..i+K (mod N) over XMPP, every contact
    /// approving: works on any server, without provisioning rosters (0: use the rosters as they are).
    #[arg(long, default_value_t = 0)]
    pub subscribe: u64,
    /// Longest wait for the last deliveries after sending stops, seconds.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
}

pub async fn run(a: PresenceArgs) -> Result<()> {
    let c = &a.common;
    if c.echo {
        bail!("presence has no meaning against the echo server");
    }
    if a.users == 0 || a.users > crate::common::MAX_SESSIONS_PER_PROCESS || a.rate == 0 {
        bail!(
            "--users must be 1..={} and --rate > 0",
            crate::common::MAX_SESSIONS_PER_PROCESS
        );
    }
    c.provision(a.users).await?;
    let mut runs = Vec::new();
    for r in 0..c.runs {
        runs.push(one_run(&a, r).await?);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let params =
        json!({"users": a.users, "subscribe": a.subscribe, "updates": a.updates, "rate": a.rate});
    c.finish("presence", params, &runs)
}

/// Subscription phase: user i asks for the presence of users i+1..i+k and approves every request
/// it gets, until every request has been answered `subscribed` (or the timeout).
async fn subscribe(
    c: &Common,
    sessions: Vec<client::Session>,
    k: u64,
) -> Result<Vec<client::Session>> {
    let n = sessions.len();
    let k = (k as usize).min(n.saturating_sub(1));
    let jids: Vec<String> = sessions
        .iter()
        .map(|s| client::bare(&s.jid).to_string())
        .collect();
    let answered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    // RFC 6121 §3.1.3: a request reaches only resources that have fetched the roster, so every
    // session fetches its roster before anyone sends a request
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for (u, mut s) in sessions.into_iter().enumerate() {
        let targets: Vec<String> = (1..=k).map(|j| jids[(u + j) % n].clone()).collect();
        let (answered, mut stop, barrier) = (answered.clone(), stop_rx.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            // contacts we already see need no request (servers do not answer a repeated one)
            let items = roster_items(&mut s).await;
            barrier.wait().await; // reached even on error, so the others are not held up
            let have: std::collections::HashSet<String> = items?
                .into_iter()
                .filter(|(_, sub)| sub == "both" || sub == "to")
                .map(|(j, _)| j)
                .collect();
            let targets: Vec<String> = targets.into_iter().filter(|t| !have.contains(t)).collect();
            answered.fetch_add((k - targets.len()) as u64, Ordering::Relaxed);
            let mut out = String::new();
            for t in &targets {
                out += &format!("<presence to='{t}' type='subscribe'/>");
            }
            if !out.is_empty() {
                s.send(&out).await?;
            }
            let mut pending: std::collections::HashSet<String> = targets.into_iter().collect();
            loop {
                let f = tokio::select! {
                    f = client::read_frame(&mut s.io, &mut s.framer) => f?,
                    _ = stop.changed() => break,
                };
                let Frame::Stanza(st) = f else { continue };
                if frame::name(&st) != "presence" {
                    continue;
                }
                let from = frame::attr(&st, "from")
                    .map(client::bare)
                    .unwrap_or("")
                    .to_string();
                match frame::attr(&st, "type") {
                    Some("subscribe") => {
                        s.send(&format!("<presence to='{from}' type='subscribed'/>"))
                            .await?
                    }
                    Some("subscribed") if pending.remove(&from) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            Ok::<_, anyhow::Error>(s)
        }));
    }
    let t0 = Instant::now();
    let want = (n * k) as u64;
    let pb = c.bar(want, "subscribe");
    let until = Instant::now() + Duration::from_secs(c.timeout_secs.clamp(1, MAX_SECS));
    while answered.load(Ordering::Relaxed) < want && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        pb.set_position(answered.load(Ordering::Relaxed));
    }
    pb.finish_and_clear();
    let got = answered.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await; // approvals still in flight
    let _ = stop_tx.send(true);
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    eprintln!(
        "presence: {got} of {want} subscription requests answered in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// Fetch the roster: (bare JID, subscription) of every item.
async fn roster_items(s: &mut client::Session) -> Result<Vec<(String, String)>> {
    tokio::time::timeout(Duration::from_secs(10), roster_items_inner(s))
        .await
        .map_err(|_| anyhow::anyhow!("no roster result within 10 s"))?
}

async fn roster_items_inner(s: &mut client::Session) -> Result<Vec<(String, String)>> {
    s.send("<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>")
        .await?;
    loop {
        let st = match client::read_frame(&mut s.io, &mut s.framer).await? {
            Frame::Stanza(st) => st,
            Frame::StreamOpen => continue,
            Frame::StreamClose => bail!("stream closed while fetching the roster"),
        };
        if frame::name(&st) != "iq" || frame::attr(&st, "id") != Some("roster1") {
            continue;
        }
        let mut out = Vec::new();
        let mut rest = &st[..];
        while let Some(p) = frame::find(rest, b"<item ") {
            rest = &rest[p..];
            let sub = frame::attr(rest, "subscription").unwrap_or("none");
            if let Some(jid) = frame::attr(rest, "jid") {
                out.push((jid.to_string(), sub.to_string()));
            }
            rest = &rest[6..];
        }
        return Ok(out);
    }
}

/// The bare JIDs this user's presence goes to (subscription both/from).
async fn roster(s: &mut client::Session) -> Result<Vec<String>> {
    Ok(roster_items(s)
        .await?
        .into_iter()
        .filter(|(_, sub)| sub == "both" || sub == "from")
        .map(|(j, _)| j)
        .collect())
}

async fn receive(
    mut rd: Reader,
    me: String,
    mut stop: watch::Receiver<bool>,
    got: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
) -> Histogram<u64> {
    let mut h = hist();
    loop {
        let f = tokio::select! {
            f = rd.next() => f,
            _ = stop.changed() => break,
        };
        match f {
            Ok(Frame::Stanza(s)) if frame::name(&s) == "presence" => {
                let from = frame::attr(&s, "from").map(client::bare).unwrap_or("");
                if from == me {
                    continue; // our own broadcast reflected to us
                }
                let ts = frame::child_text(&s, "status")
                    .and_then(|t| t.strip_prefix("pb "))
                    .and_then(|t| t.split(' ').nth(1))
                    .and_then(|t| t.parse::<u64>().ok());
                if let Some(ts) = ts {
                    let now = now_us();
                    let _ = h.record(now.saturating_sub(ts).max(1));
                    last.fetch_max(now, Ordering::Relaxed);
                    got.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Frame::StreamClose) | Err(_) => break,
            Ok(_) => {}
        }
    }
    h
}

async fn one_run(a: &PresenceArgs, run: u32) -> Result<Figures> {
    let c = &a.common;
    let t = c.target().await?;
    let users: Vec<u64> = (c.first_user..c.first_user + a.users).collect();
    let (sessions, _, errs) = login_many(
        c,
        &t,
        &users,
        "presence",
        true,
        &format!("login r{}", run + 1),
    )
    .await;
    if !errs.is_empty() {
        bail!("{} logins failed; first: {}", errs.len(), errs[0]);
    }
    let mut sessions: Vec<_> = sessions.into_iter().flatten().collect();
    if a.subscribe > 0 {
        sessions = subscribe(c, sessions, a.subscribe).await?;
    }
    let mut rosters = Vec::new();
    for s in &mut sessions {
        rosters.push(roster(s).await?);
    }
    let online: std::collections::HashSet<String> = sessions
        .iter()
        .map(|s| client::bare(&s.jid).to_string())
        .collect();
    let fanout: Vec<u64> = rosters
        .iter()
        .map(|r| r.iter().filter(|j| online.contains(j.as_str())).count() as u64)
        .collect();
    let expected = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let got = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let n = a.users;
    let interval = Duration::from_secs_f64(1.0 / a.rate as f64);
    let send_time = interval.mul_f64((a.updates * n) as f64);
    if send_time > Duration::from_secs(MAX_SECS) {
        bail!(
            "{} updates at {}/s exceed the {MAX_SECS} s bound",
            a.updates * n,
            a.rate
        );
    }
    let settle = Duration::from_secs(a.settle_secs.min(60));
    let start = Instant::now() + settle;
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (u, s) in sessions.into_iter().enumerate() {
        let me = client::bare(&s.jid).to_string();
        let (rd, mut w) = s.split();
        receivers.push(tokio::spawn(receive(
            rd,
            me,
            stop_rx.clone(),
            got.clone(),
            last.clone(),
        )));
        let (updates, sent, expected, fan) = (a.updates, sent.clone(), expected.clone(), fanout[u]);
        senders.push(tokio::spawn(async move {
            for j in 0..updates {
                let at = start + interval.mul_f64((j * n + u as u64) as f64);
                tokio::time::sleep_until(at.into()).await;
                let p = format!("<presence><status>pb {j} {}</status></presence>", now_us());
                if w.write_all(p.as_bytes()).await.is_err() || w.flush().await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                expected.fetch_add(fan, Ordering::Relaxed);
            }
            w
        }));
    }
    tokio::time::sleep_until(start.into()).await;
    got.store(0, Ordering::Relaxed);
    let cpu = CpuWindow::start(c.server_pid())?;
    let t_start_us = now_us();
    let pb = c.bar(a.updates * n, &format!("presence r{}", run + 1));
    let mut writers = Vec::new();
    for s in senders {
        writers.push(s.await?);
        pb.set_position(sent.load(Ordering::Relaxed));
    }
    pb.finish_and_clear();
    let total_sent = sent.load(Ordering::Relaxed);
    let expected = expected.load(Ordering::Relaxed);
    let drain_until = Instant::now() + Duration::from_secs(a.drain_secs.clamp(1, MAX_SECS));
    while got.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu.stop()?;
    let delivered = got.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut h = hist();
    for r in receivers {
        h.add(&r.await?)?;
    }
    for mut w in writers {
        let _ = w.write_all(b"</stream:stream>").await;
        let _ = tokio::time::timeout(Duration::from_millis(200), w.shutdown()).await;
    }
    let window_s = (last.load(Ordering::Relaxed).saturating_sub(t_start_us)) as f64 / 1e6;
    let mut f = Figures::default();
    f.add("updates_sent", total_sent as f64);
    f.add(
        "contacts_online_avg",
        fanout.iter().sum::<u64>() as f64 / fanout.len().max(1) as f64,
    );
    f.add("presence_expected", expected as f64);
    f.add("presence_delivered", delivered as f64);
    f.add(
        "fanout_ratio",
        if expected == 0 {
            f64::NAN
        } else {
            delivered as f64 / expected as f64
        },
    );
    f.add(
        "delivered_per_s",
        delivered as f64 / window_s.max(send_time.as_secs_f64()).max(1e-3),
    );
    f.add("fanout_p50_ms", pct_ms(&h, 0.5));
    f.add("fanout_p99_ms", pct_ms(&h, 0.99));
    f.add("fanout_p999_ms", pct_ms(&h, 0.999));
    add_cpu(&mut f, "delivered", delivered, cpu);
    if let Some(s) = cpu.0 {
        f.add(
            "server_cpu_us_per_update",
            s as f64 / total_sent.max(1) as f64,
        );
    }
    Ok(f)
}
