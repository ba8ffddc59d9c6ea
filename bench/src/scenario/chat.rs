//! `chat`: P sender→receiver pairs exchange one-to-one messages at a fixed offered rate
//! (`--rate R` msg/s in total) or at saturation (`--rate 0`: each pair keeps `--window` in flight).
//! Figures: delivered/s, end-to-end latency p50/p99/p999 (HdrHistogram), lost messages (must be 0),
//! server CPU per delivered message.

use crate::client::{Io, Reader};
use crate::common::{Common, MAX_SECS, add_cpu, login_many, now_us, pct_ms};
use crate::frame::{self, Frame};
use crate::procstat::CpuWindow;
use crate::report::Figures;
use anyhow::{Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::{Notify, watch};

#[derive(Args, Clone, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: Common,
    /// Sender→receiver pairs (accounts first_user .. first_user+2P).
    #[arg(long, default_value_t = 50)]
    pub pairs: u64,
    /// Offered messages per second over all pairs; 0 = saturation (closed loop with --window).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Sending time per run, seconds.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Messages in flight per pair at saturation.
    #[arg(long, default_value_t = 16)]
    pub window: u64,
    /// Longest wait for the last messages after sending stops, seconds.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
    /// Clients enable XEP-0198 stream management (with resumption) and
    /// receivers answer every `<r/>` of the server.
    #[arg(long)]
    pub sm: bool,
    /// With --sm: receivers also send `<a/>` unasked after this many stanzas (0: only when asked).
    #[arg(long, default_value_t = 0)]
    pub sm_ack_every: u64,
    /// Receivers log in to this other server's c2s port (same host, accounts
    /// `--user-prefix` N at `--peer-domain`): every message crosses a
    /// server-to-server link (federation).
    #[arg(long)]
    pub peer_port: Option<u16>,
    /// The receivers' domain on the `--peer-port` server.
    #[arg(long, default_value = "peer.test")]
    pub peer_domain: String,
    /// The `--peer-port` server's PID: its CPU is counted with the server's.
    #[arg(long)]
    pub peer_pid: Option<u32>,
}

/// Receive-side state of one pair.
#[derive(Default)]
struct Pair {
    received: AtomicU64,
    notify: Notify,
}

/// Histogram for latencies in µs, 1 µs .. 10 min.
pub fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// `<body>` text "SEQ TS_US xxx...": the send timestamp.
fn stamp(body: &str) -> Option<u64> {
    body.split(' ').nth(1)?.parse().ok()
}

pub async fn run(a: ChatArgs) -> Result<()> {
    let c = &a.common;
    if a.pairs == 0 || a.pairs * 2 > crate::common::MAX_SESSIONS_PER_PROCESS {
        bail!(
            "--pairs must be 1..={}",
            crate::common::MAX_SESSIONS_PER_PROCESS / 2
        );
    }
    c.provision(a.pairs * 2).await?;
    let mut runs = Vec::new();
    for r in 0..c.runs {
        runs.push(one_run(&a, r).await?);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let params = json!({"pairs": a.pairs, "rate": a.rate, "size": a.size,
                        "duration_secs": a.duration_secs, "window": a.window,
                        "sm": a.sm, "sm_ack_every": a.sm_ack_every});
    let name = if a.rate == 0 {
        "chat-saturation"
    } else {
        "chat"
    };
    c.finish(name, params, &runs)
}

/// XEP-0198 on the receiving side: counts stanzas and acks them on the
/// writer it was given.
struct Acker {
    w: WriteHalf<Box<dyn Io>>,
    /// Stanzas count from the server's `<enabled/>` on (what it wrote
    /// before that, e.g. the reflected presence, is not counted).
    enabled: bool,
    handled: u32,
    every: u64,
}

impl Acker {
    async fn ack(&mut self) {
        let a = format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", self.handled);
        let _ = self.w.write_all(a.as_bytes()).await;
    }

    /// One frame read: counts it if it is a stanza, answers `<r/>`.
    async fn saw(&mut self, s: &[u8]) {
        match frame::name(s) {
            "enabled" => self.enabled = true,
            "message" | "presence" | "iq" if self.enabled => {
                self.handled = self.handled.wrapping_add(1);
                if self.every > 0 && u64::from(self.handled) % self.every == 0 {
                    self.ack().await;
                }
            }
            "r" => self.ack().await,
            _ => {}
        }
    }
}

/// Read frames until `stop`, recording message latencies (and acking them
/// with `acker`, under --sm).
async fn receive(
    mut rd: Reader,
    pair: Arc<Pair>,
    mut stop: watch::Receiver<bool>,
    last: Arc<AtomicU64>,
    mut acker: Option<Acker>,
) -> (Histogram<u64>, u64, Option<WriteHalf<Box<dyn Io>>>) {
    let mut h = hist();
    let mut errors = 0;
    loop {
        let f = tokio::select! {
            f = rd.next() => f,
            _ = stop.changed() => break,
        };
        if let (Some(a), Ok(Frame::Stanza(s))) = (&mut acker, &f) {
            a.saw(s).await;
        }
        match f {
            Ok(Frame::Stanza(s)) if frame::name(&s) == "message" => {
                if frame::attr(&s, "type") == Some("error") {
                    errors += 1;
                    continue;
                }
                if let Some(ts) = frame::child_text(&s, "body").and_then(stamp) {
                    let now = now_us();
                    let _ = h.record(now.saturating_sub(ts).max(1));
                    last.fetch_max(now, Ordering::Relaxed);
                    pair.received.fetch_add(1, Ordering::Relaxed);
                    pair.notify.notify_one();
                }
            }
            Ok(Frame::StreamClose) | Err(_) => break,
            Ok(_) => {}
        }
    }
    (h, errors, acker.map(|a| a.w))
}

/// Drain and drop everything a sender's own connection receives.
async fn discard(mut rd: Reader, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            f = rd.next() => if f.is_err() { break },
            _ = stop.changed() => break,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn send(
    mut w: WriteHalf<Box<dyn Io>>,
    to: String,
    a: ChatArgs,
    idx: u64,
    start: Instant,
    end: Instant,
    pair: Arc<Pair>,
    sent: Arc<AtomicU64>,
) -> WriteHalf<Box<dyn Io>> {
    let pad = "x".repeat(a.size);
    let interval = if a.rate > 0 {
        Duration::from_secs_f64(a.pairs as f64 / a.rate as f64)
    } else {
        Duration::ZERO
    };
    let offset = interval.mul_f64(idx as f64 / a.pairs as f64);
    let max_msgs = if a.rate > 0 {
        a.rate * a.duration_secs / a.pairs + 1
    } else {
        10_000_000
    };
    for k in 0..max_msgs {
        if a.rate > 0 {
            let at = start + offset + interval.mul_f64(k as f64);
            if at >= end {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
        } else {
            while k.saturating_sub(pair.received.load(Ordering::Relaxed)) >= a.window.max(1) {
                if Instant::now() >= end {
                    return w;
                }
                let _ =
                    tokio::time::timeout(Duration::from_millis(50), pair.notify.notified()).await;
            }
            if Instant::now() >= end {
                break;
            }
        }
        let head = format!("{k} {} ", now_us());
        let body = if head.len() < a.size {
            format!("{head}{}", &pad[head.len()..])
        } else {
            head
        };
        let msg = format!("<message to='{to}' type='chat' id='m{k}'><body>{body}</body></message>");
        if w.write_all(msg.as_bytes()).await.is_err() || w.flush().await.is_err() {
            break;
        }
        sent.fetch_add(1, Ordering::Relaxed);
    }
    w
}

async fn one_run(a: &ChatArgs, run: u32) -> Result<Figures> {
    let c = &a.common;
    let t = c.target().await?;
    let per_pair = if c.echo { 1 } else { 2 };
    let mut sessions: Vec<_> = match a.peer_port.filter(|_| !c.echo) {
        None => {
            let users: Vec<u64> = (c.first_user..c.first_user + a.pairs * per_pair).collect();
            let (sessions, _, errs) =
                login_many(c, &t, &users, "chat", true, &format!("login r{}", run + 1)).await;
            if !errs.is_empty() {
                bail!("{} logins failed; first: {}", errs.len(), errs[0]);
            }
            sessions.into_iter().flatten().collect()
        }
        Some(port) => {
            // Senders here, receivers (the same account numbers) on the peer.
            let users: Vec<u64> = (c.first_user..c.first_user + a.pairs).collect();
            let mut pc = c.clone();
            pc.ports = vec![port];
            pc.domain = a.peer_domain.clone();
            pc.provision = None;
            let pt = pc.target().await?;
            let label = format!("login r{}", run + 1);
            let (senders, _, errs) = login_many(c, &t, &users, "chat", true, &label).await;
            let (receivers, _, errs2) = login_many(&pc, &pt, &users, "chat", true, &label).await;
            if let Some(e) = errs.iter().chain(&errs2).next() {
                bail!("{} logins failed; first: {e}", errs.len() + errs2.len());
            }
            senders
                .into_iter()
                .flatten()
                .zip(receivers.into_iter().flatten())
                .flat_map(|(s, r)| [s, r])
                .collect()
        }
    };
    if a.sm && !c.echo {
        for s in &mut sessions {
            s.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
                .await?;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // let presence broadcasts settle
    let (stop_tx, stop_rx) = watch::channel(false);
    let last = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let dur = Duration::from_secs(a.duration_secs.clamp(1, MAX_SECS));
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + dur;
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let mut keep = Vec::new();
    let mut pairs = Vec::new();
    for i in 0..a.pairs as usize {
        let pair = Arc::new(Pair::default());
        pairs.push(pair.clone());
        let (to, w, rd, acker) = if c.echo {
            let s = sessions.remove(0);
            let jid = s.jid.clone();
            let (rd, w) = s.split();
            (jid, w, rd, None)
        } else {
            let sender = sessions.remove(0);
            let receiver = sessions.remove(0);
            let to = receiver.jid.clone();
            let (srd, w) = sender.split();
            let (rrd, rw) = receiver.split();
            let acker = if a.sm {
                Some(Acker {
                    w: rw,
                    enabled: false,
                    handled: 0,
                    every: a.sm_ack_every,
                })
            } else {
                keep.push(rw);
                None
            };
            tokio::spawn(discard(srd, stop_rx.clone()));
            (to, w, rrd, acker)
        };
        receivers.push(tokio::spawn(receive(
            rd,
            pair.clone(),
            stop_rx.clone(),
            last.clone(),
            acker,
        )));
        senders.push(tokio::spawn(send(
            w,
            to,
            a.clone(),
            i as u64,
            start,
            end,
            pair,
            sent.clone(),
        )));
    }
    let pb = c.bar(dur.as_secs(), &format!("chat r{}", run + 1));
    tokio::time::sleep_until(start.into()).await;
    let cpu = CpuWindow::start(c.server_pid())?;
    let peer_cpu = CpuWindow::start(a.peer_pid)?;
    let t_start_us = now_us();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        pb.set_position(start.elapsed().as_secs());
    }
    pb.finish_and_clear();
    let mut writers = Vec::new();
    for s in senders {
        writers.push(s.await?);
    }
    let total_sent = sent.load(Ordering::Relaxed);
    let drain_until = Instant::now() + Duration::from_secs(a.drain_secs.clamp(1, MAX_SECS));
    let received = || {
        pairs
            .iter()
            .map(|p| p.received.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    while received() < total_sent && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (server, me, wall) = cpu.stop()?;
    // Both servers of a federated run count.
    let server = match (server, peer_cpu.stop()?.0) {
        (Some(a), Some(b)) => Some(a + b),
        (s, _) => s,
    };
    let cpu = (server, me, wall);
    let total_recv = received();
    let _ = stop_tx.send(true);
    let mut h = hist();
    let mut errors = 0;
    for r in receivers {
        let (hh, e, w) = r.await?;
        h.add(&hh)?;
        errors += e;
        keep.extend(w);
    }
    for mut w in writers.into_iter().chain(keep) {
        let _ = w
            .write_all(if c.echo { b"" } else { b"</stream:stream>" })
            .await;
        let _ = tokio::time::timeout(Duration::from_millis(200), w.shutdown()).await;
    }
    let window_s = (last.load(Ordering::Relaxed).saturating_sub(t_start_us)) as f64 / 1e6;
    let mut f = Figures::default();
    f.add(
        "offered_per_s",
        if a.rate > 0 { a.rate as f64 } else { f64::NAN },
    );
    f.add(
        "delivered_per_s",
        total_recv as f64 / window_s.max(dur.as_secs_f64()),
    );
    f.add("latency_p50_ms", pct_ms(&h, 0.5));
    f.add("latency_p99_ms", pct_ms(&h, 0.99));
    f.add("latency_p999_ms", pct_ms(&h, 0.999));
    f.add(
        "latency_max_ms",
        if h.is_empty() {
            f64::NAN
        } else {
            h.max() as f64 / 1000.0
        },
    );
    add_cpu(&mut f, "msg", total_recv, cpu);
    f.add("sent", total_sent as f64);
    f.add("lost", total_sent.saturating_sub(total_recv) as f64);
    f.add("error_replies", errors as f64);
    if total_sent > total_recv {
        eprintln!(
            "chat: {} of {total_sent} messages not delivered within the drain time",
            total_sent - total_recv
        );
    }
    Ok(f)
}
