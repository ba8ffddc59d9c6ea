//! `muc`: group chat (XEP-0045). `--rooms` N rooms with `--occupants` M occupants each; the
//! occupants send `groupchat` messages at `--rate` messages/s in total into the rooms, and every
//! occupant counts every message reflected to it (its own echo included).
//!
//! Setup (unmeasured): the M·N accounts log in (occupant *o* of room *r* is account
//! `first_user + r·M + o`, at port `port_index(account)`: a room's occupants go round-robin over
//! the `--port`s, i.e. over a cluster's nodes). The first occupant of every room joins it
//! (`<presence to='room@service/nick'>` with `<x xmlns='http://jabber.org/protocol/muc'>` and
//! `<history maxstanzas='0'/>`); if the server answers status 201 (new room) it accepts the default
//! configuration (an instant room: an empty `jabber:x:data` submit to `muc#owner`). Then the other
//! occupants join, and the run waits (at most `--join-secs`) until every occupant has seen the
//! presence of every other.
//!
//! Measured: message *k* (k = 0, 1, ...) is due at `start + k/R`; it goes into room `k mod N`
//! from occupant `(k div N) mod M` with "k SEND_US" at the head of its body. Every copy an occupant
//! receives is one delivery, its latency is receive time − send time (same process, monotonic
//! clock). After sending, the run drains (at most `--drain-secs`) until every expected delivery
//! (messages sent into a room × occupants joined to it) has arrived; what is missing is `lost`.
//! Server CPU is utime+stime of every `--server-pid` from the first send to the end of the drain.
//! Finally every occupant leaves (`<presence type='unavailable'/>`) and closes its stream.
//!
//! One process holds at most `MAX_SESSIONS_PER_PROCESS` sockets: above that (or with `--spawn K`)
//! whole rooms are spread over child processes (`muc-child`), so a message's sender and all its
//! receivers share a process and its clock. A child reports on its stdout:
//!
//! ```text
//! ready JSON      joined (JoinStats); waits for `go` on stdin
//! done JSON       sent, drained (RunStats); then leaves when its stdin closes
//! ```

use crate::client::{self, Io, Reader, Session};
use crate::common::{Common, MAX_SECS, MAX_SESSIONS_PER_PROCESS, login_spread, now_us, pct_ms};
use crate::frame::{self, Frame};
use crate::procstat::cpu_us;
use crate::report::Figures;
use crate::scenario::chat::hist;
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::ops::Range;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, WriteHalf};
use tokio::sync::{Semaphore, watch};

const NS_MUC: &str = "http://jabber.org/protocol/muc";
/// Bound on the offered rate and on one room's occupants.
const MAX_RATE: u64 = 1_000_000;

/// What every process of a run needs to know.
#[derive(Args, Clone, Debug)]
pub struct MucOpts {
    /// Rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,
    /// Occupants per room (accounts first_user .. first_user + rooms·occupants).
    #[arg(long, default_value_t = 50)]
    pub occupants: u64,
    /// Groupchat messages per second sent into the rooms in total (deliveries/s = rate × occupants).
    #[arg(long, default_value_t = 20)]
    pub rate: u64,
    /// Sending time per run, seconds.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// MUC service (default: conference.<domain>).
    #[arg(long)]
    pub service: Option<String>,
    /// Longest wait for every occupant to see every other's presence, seconds.
    #[arg(long, default_value_t = 60)]
    pub join_secs: u64,
    /// Longest wait for the last deliveries after sending stops, seconds.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
}

impl MucOpts {
    fn service(&self, c: &Common) -> String {
        self.service
            .clone()
            .unwrap_or_else(|| format!("conference.{}", c.domain))
    }

    fn child_args(&self) -> Vec<String> {
        let mut v = vec![
            "--rooms".into(),
            self.rooms.to_string(),
            "--occupants".into(),
            self.occupants.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "--duration-secs".into(),
            self.duration_secs.to_string(),
            "--size".into(),
            self.size.to_string(),
            "--join-secs".into(),
            self.join_secs.to_string(),
            "--drain-secs".into(),
            self.drain_secs.to_string(),
        ];
        if let Some(s) = &self.service {
            v.extend(["--service".into(), s.clone()]);
        }
        v
    }

    /// Messages sent per run: those due before the end of the sending time.
    fn messages(&self) -> u64 {
        self.rate * self.duration_secs.clamp(1, MAX_SECS)
    }
}

#[derive(Args, Clone, Debug)]
pub struct MucArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub muc: MucOpts,
    /// Spread the rooms over K child processes (0: one process if the sockets fit in it).
    #[arg(long, default_value_t = 0)]
    pub spawn: u64,
    /// Room names are PREFIX<i> (default: new names every run, `b<time>r<run>n`).
    #[arg(long)]
    pub room_prefix: Option<String>,
    /// Only ask the server (disco#items of the domain, as account first_user) whether it lists
    /// the MUC service: exit 0 if it does, 3 if it does not.
    #[arg(long)]
    pub probe: bool,
}

#[derive(Args, Clone, Debug)]
pub struct MucChildArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub muc: MucOpts,
    /// Rooms of this child: FIRST_ROOM .. FIRST_ROOM + ROOM_COUNT.
    #[arg(long)]
    pub first_room: u64,
    #[arg(long)]
    pub room_count: u64,
    #[arg(long)]
    pub room_prefix: String,
}

// ---------------------------------------------------------------------------------------------
// The pure parts: who is where, who sends what when, what arrived.

/// Account number of occupant `o` of room `r`.
pub fn account(first_user: u64, occupants: u64, r: u64, o: u64) -> u64 {
    first_user + r * occupants + o
}

/// The nick of an account in every room.
fn nick(account: u64) -> String {
    format!("u{account}")
}

/// The occupant index of a room's `from` (`room@service/u<account>`), given the room's bare JID
/// and its first account; None for anything else (the room itself, another room, a stranger).
pub fn occupant_of(from: &str, room: &str, first: u64, occupants: u64) -> Option<u64> {
    let rest = from.strip_prefix(room)?.strip_prefix('/')?;
    let a: u64 = rest.strip_prefix('u')?.parse().ok()?;
    let o = a.checked_sub(first)?;
    (o < occupants).then_some(o)
}

/// The rooms of process `p` of `procs`: contiguous blocks, sizes differing by at most one.
pub fn rooms_of(p: u64, procs: u64, rooms: u64) -> Range<u64> {
    let (q, r) = (rooms / procs, rooms % procs);
    let start = p * q + p.min(r);
    start..start + q + u64::from(p < r)
}

/// Room and occupant that send message `k`: rooms in turn, and within a room its occupants in turn
/// (what [`sends_of`] inverts; the tests hold them to each other).
#[cfg(test)]
pub fn slot(k: u64, rooms: u64, occupants: u64) -> (u64, u64) {
    (k % rooms, (k / rooms) % occupants)
}

/// The messages occupant `o` of room `r` sends out of `total`, in order (inverse of [`slot`]).
pub fn sends_of(
    r: u64,
    o: u64,
    rooms: u64,
    occupants: u64,
    total: u64,
) -> impl Iterator<Item = u64> {
    let first = r + rooms * o;
    let step = rooms * occupants;
    (first..total).step_by(step as usize)
}

/// When message `k` is due, from the start of sending.
pub fn due(k: u64, rate: u64) -> Duration {
    Duration::from_nanos(k.saturating_mul(1_000_000_000) / rate.max(1))
}

/// The send stamp of a bench body: "K SEND_US ...".
pub fn stamp(body: &str) -> Option<(u64, u64)> {
    let mut it = body.split(' ');
    let k = it.next()?.parse().ok()?;
    let ts = it.next()?.parse().ok()?;
    Some((k, ts))
}

/// Deliveries owed: for every room, messages sent into it × occupants joined to it.
pub fn expected(sent: &[u64], joined: &[u64]) -> u64 {
    sent.iter().zip(joined).map(|(s, j)| s * j).sum()
}

/// A histogram as (value, count) pairs, and back: how children hand theirs to the parent.
fn hist_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

fn hist_from(pairs: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = hist();
    for &(v, n) in pairs {
        let _ = h.record_n(v.max(1), n);
    }
    h
}

// ---------------------------------------------------------------------------------------------
// One process's rooms.

/// What one process reports after the joins.
#[derive(Serialize, Deserialize, Default, Debug)]
struct JoinStats {
    occupants: u64,
    joined: u64,
    created: u64,
    rooms_complete: u64,
    /// From the first join presence until every occupant saw every other (or the bound), µs.
    join_all_us: u64,
    /// Join presence → own presence (status 110), µs.
    join_lat: Vec<(u64, u64)>,
    first_error: Option<String>,
}

impl JoinStats {
    fn merge(&mut self, o: JoinStats) {
        self.occupants += o.occupants;
        self.joined += o.joined;
        self.created += o.created;
        self.rooms_complete += o.rooms_complete;
        self.join_all_us = self.join_all_us.max(o.join_all_us);
        self.join_lat.extend(o.join_lat);
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// What one process reports after sending and draining.
#[derive(Serialize, Deserialize, Default, Debug)]
struct RunStats {
    sent: u64,
    expected: u64,
    received: u64,
    /// Error stanzas received (a refused message, a kicked occupant, ...).
    errors: u64,
    /// From the start of sending to the last delivery, µs.
    window_us: u64,
    /// This process's CPU over the same span, µs.
    cpu_us: u64,
    lat: Vec<(u64, u64)>,
}

impl RunStats {
    fn merge(&mut self, o: RunStats) {
        self.sent += o.sent;
        self.expected += o.expected;
        self.received += o.received;
        self.errors += o.errors;
        self.window_us = self.window_us.max(o.window_us);
        self.cpu_us += o.cpu_us;
        self.lat.extend(o.lat);
    }
}

/// The receive side of one occupant, shared with its reader task.
#[derive(Default)]
struct Occ {
    /// Distinct occupants of the room whose presence it has seen (itself included).
    seen: AtomicU32,
    received: AtomicU64,
}

type Writer = WriteHalf<Box<dyn Io>>;

struct Room {
    jid: String,
    /// Account of occupant 0.
    first: u64,
    occs: Vec<Arc<Occ>>,
    /// Occupants whose join succeeded, with their writer (taken by the senders while they run).
    writers: Vec<(u64, Writer)>,
    joined: u64,
    sent: Arc<AtomicU64>,
}

struct Worker {
    o: MucOpts,
    /// Index of the first room in the run.
    first_room: u64,
    rooms: Vec<Room>,
    readers: Vec<tokio::task::JoinHandle<Histogram<u64>>>,
    stop: watch::Sender<bool>,
    last: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

/// Send the join presence and read until our own presence comes back (status 110), creating the
/// room as an instant room if the server says 201. Marks the occupants whose presence arrives
/// meanwhile. Returns the join latency and whether the room was created.
async fn join(
    s: &mut Session,
    room: &str,
    my_nick: &str,
    first: u64,
    m: u64,
    seen: &mut [bool],
) -> Result<(Duration, bool)> {
    let t0 = Instant::now();
    s.send(&format!(
        "<presence to='{room}/{my_nick}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>"
    ))
    .await?;
    let mut took = None;
    loop {
        let st = match client::read_frame(&mut s.io, &mut s.framer).await? {
            Frame::Stanza(st) => st,
            Frame::StreamOpen => continue,
            Frame::StreamClose => bail!("stream closed while joining {room}"),
        };
        let from = frame::attr(&st, "from").unwrap_or("");
        match frame::name(&st) {
            "presence" if from == room || from.starts_with(&format!("{room}/")) => {
                if frame::attr(&st, "type") == Some("error") {
                    bail!("join of {room} refused: {}", error_condition(&st));
                }
                if let Some(o) = occupant_of(from, room, first, m) {
                    seen[o as usize] = true;
                }
                if took.is_none() && has_status(&st, "110") {
                    took = Some(t0.elapsed());
                    if !has_status(&st, "201") {
                        return Ok((t0.elapsed(), false));
                    }
                    // XEP-0045 §10.1.2: accept the default configuration (an instant room)
                    s.send(&format!(
                        "<iq type='set' to='{room}' id='cfg1'><query xmlns='{NS_MUC}#owner'>\
                         <x xmlns='jabber:x:data' type='submit'/></query></iq>"
                    ))
                    .await?;
                }
            }
            "iq" if took.is_some() && frame::attr(&st, "id") == Some("cfg1") => {
                if frame::attr(&st, "type") != Some("result") {
                    bail!("instant room {room} refused: {}", error_condition(&st));
                }
                return Ok((took.unwrap_or_default(), true));
            }
            "message" | "presence" | "iq" if frame::attr(&st, "type") == Some("error") => {
                bail!("error while joining {room}: {}", error_condition(&st));
            }
            _ => {}
        }
    }
}

/// Whether a MUC presence carries `<status code='CODE'/>`.
pub fn has_status(st: &[u8], code: &str) -> bool {
    let mut rest = st;
    while let Some(p) = frame::find(rest, b"<status") {
        rest = &rest[p..];
        if frame::attr(rest, "code") == Some(code) {
            return true;
        }
        rest = &rest[7..];
    }
    false
}

/// The defined condition inside a stanza's `<error/>` (the stanza itself if there is none).
fn error_condition(st: &[u8]) -> String {
    frame::find(st, b"<error")
        .map(|p| client::condition(&st[p..]))
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| String::from_utf8_lossy(st).into_owned())
}

/// Read until stopped: keep marking presences, count and time groupchat deliveries.
#[allow(clippy::too_many_arguments)]
async fn receive(
    mut rd: Reader,
    room: String,
    first: u64,
    m: u64,
    mut seen: Vec<bool>,
    occ: Arc<Occ>,
    mut stop: watch::Receiver<bool>,
    last: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) -> Histogram<u64> {
    let mut h = hist();
    loop {
        let f = tokio::select! {
            f = rd.next() => f,
            _ = stop.changed() => break,
        };
        let st = match f {
            Ok(Frame::Stanza(st)) => st,
            Ok(Frame::StreamOpen) => continue,
            Ok(Frame::StreamClose) | Err(_) => break,
        };
        let ty = frame::attr(&st, "type");
        match frame::name(&st) {
            "message" if ty == Some("groupchat") => {
                let Some((_, ts)) = frame::child_text(&st, "body").and_then(stamp) else {
                    continue; // the subject, or a message that is not ours
                };
                let now = now_us();
                let _ = h.record(now.saturating_sub(ts).max(1));
                last.fetch_max(now, Ordering::Relaxed);
                occ.received.fetch_add(1, Ordering::Relaxed);
            }
            "presence" if ty.is_none() => {
                let from = frame::attr(&st, "from").unwrap_or("");
                if let Some(o) = occupant_of(from, &room, first, m)
                    && !std::mem::replace(&mut seen[o as usize], true)
                {
                    occ.seen.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ if ty == Some("error") => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    h
}

/// One joined occupant: its writer, its reader task, join latency, whether it created the room.
type Joined = (
    Writer,
    tokio::task::JoinHandle<Histogram<u64>>,
    Duration,
    bool,
);

impl Worker {
    /// Log in the occupants of `rooms`, create and join the rooms, wait until everyone sees everyone.
    async fn setup(
        c: &Common,
        o: &MucOpts,
        rooms: Range<u64>,
        prefix: &str,
    ) -> Result<(Worker, JoinStats)> {
        let m = o.occupants;
        let service = o.service(c);
        let targets = c.targets().await?;
        let users: Vec<u64> = (rooms.start * m..rooms.end * m)
            .map(|i| c.first_user + i)
            .collect();
        let (sessions, _, errs) = login_spread(c, &targets, &users, "muc", true, "login").await;
        let mut st = JoinStats {
            occupants: users.len() as u64,
            first_error: errs.first().cloned(),
            ..JoinStats::default()
        };
        let (stop, stop_rx) = watch::channel(false);
        let mut w = Worker {
            o: o.clone(),
            first_room: rooms.start,
            rooms: Vec::new(),
            readers: Vec::new(),
            stop,
            last: Arc::new(AtomicU64::new(0)),
            errors: Arc::new(AtomicU64::new(0)),
        };
        let tmo = Duration::from_secs(c.timeout_secs.clamp(1, MAX_SECS));
        let sem = Arc::new(Semaphore::new(c.login_concurrency.max(1)));
        let t_join = Instant::now();
        // one task per room: occupant 0 first (it creates the room), then the others at once
        let mut tasks = Vec::new();
        let mut sessions = sessions.into_iter();
        for r in rooms {
            let jid = format!("{prefix}{r}@{service}");
            let first = account(c.first_user, m, r, 0);
            let occs: Vec<Arc<Occ>> = (0..m).map(|_| Arc::new(Occ::default())).collect();
            let ss: Vec<Option<Session>> = sessions.by_ref().take(m as usize).collect();
            let (stop_rx, last, errors) = (stop_rx.clone(), w.last.clone(), w.errors.clone());
            let (sem, room, occs2) = (sem.clone(), jid.clone(), occs.clone());
            let one = move |o: u64, s: Option<Session>| {
                let (sem, room, occ) = (sem.clone(), room.clone(), occs2[o as usize].clone());
                let (stop_rx, last, errors) = (stop_rx.clone(), last.clone(), errors.clone());
                async move {
                    let mut s = s.ok_or_else(|| anyhow!("not logged in"))?;
                    let _permit = sem.acquire_owned().await?;
                    let mut seen = vec![false; m as usize];
                    let (took, created) = tokio::time::timeout(
                        tmo,
                        join(&mut s, &room, &nick(first + o), first, m, &mut seen),
                    )
                    .await
                    .map_err(|_| anyhow!("no answer to the join of {room} within {tmo:?}"))??;
                    let n = seen.iter().filter(|&&b| b).count() as u32;
                    occ.seen.store(n, Ordering::Relaxed);
                    let (rd, wr) = s.split();
                    let h = tokio::spawn(receive(
                        rd, room, first, m, seen, occ, stop_rx, last, errors,
                    ));
                    Ok::<Joined, anyhow::Error>((wr, h, took, created))
                }
            };
            tasks.push((
                jid,
                first,
                occs,
                tokio::spawn(async move {
                    let mut out: Vec<(u64, Result<Joined>)> = Vec::new();
                    let mut ss = ss.into_iter().enumerate();
                    if let Some((_, s0)) = ss.next() {
                        let r0 = one(0, s0).await;
                        let ok = r0.is_ok();
                        out.push((0, r0));
                        if ok {
                            let mut set = tokio::task::JoinSet::new();
                            for (o, s) in ss {
                                let f = one(o as u64, s);
                                set.spawn(async move { (o as u64, f.await) });
                            }
                            while let Some(r) = set.join_next().await {
                                match r {
                                    Ok(x) => out.push(x),
                                    Err(e) => out.push((u64::MAX, Err(e.into()))),
                                }
                            }
                        }
                    }
                    out
                }),
            ));
        }
        let mut join_h = hist();
        for (jid, first, occs, task) in tasks {
            let mut room = Room {
                jid,
                first,
                occs,
                writers: Vec::new(),
                joined: 0,
                sent: Arc::new(AtomicU64::new(0)),
            };
            for (o, r) in task.await? {
                match r {
                    Ok((wr, h, took, created)) => {
                        let _ = join_h.record((took.as_micros() as u64).max(1));
                        st.created += u64::from(created);
                        room.writers.push((o, wr));
                        w.readers.push(h);
                    }
                    Err(e) => {
                        st.first_error.get_or_insert(format!("{e:#}"));
                    }
                }
            }
            room.joined = room.writers.len() as u64;
            st.joined += room.joined;
            w.rooms.push(room);
        }
        // everyone sees everyone: each joined occupant has the presence of every joined one
        let until = t_join + Duration::from_secs(o.join_secs.clamp(1, MAX_SECS));
        let empty = w.rooms.iter().filter(|r| r.joined == 0).count() as u64; // never complete
        loop {
            st.rooms_complete = w.rooms_complete();
            if st.rooms_complete + empty == w.rooms.len() as u64 || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        st.join_all_us = t_join.elapsed().as_micros() as u64;
        st.join_lat = hist_pairs(&join_h);
        Ok((w, st))
    }

    fn rooms_complete(&self) -> u64 {
        self.rooms
            .iter()
            .filter(|r| {
                r.joined > 0
                    && r.writers.iter().all(|(o, _)| {
                        u64::from(r.occs[*o as usize].seen.load(Ordering::Relaxed)) >= r.joined
                    })
            })
            .count() as u64
    }

    /// Send this process's messages from `start` on, drain, and report.
    async fn run(&mut self, start: Instant) -> Result<RunStats> {
        let o = self.o.clone();
        let total = o.messages();
        let cpu0 = cpu_us(std::process::id())?;
        let t0_us = now_us() + start.saturating_duration_since(Instant::now()).as_micros() as u64;
        let pad: Arc<str> = "x".repeat(o.size).into();
        let mut senders = Vec::new();
        for (i, room) in self.rooms.iter_mut().enumerate() {
            let r = self.first_room + i as u64;
            for (occ, mut w) in room.writers.drain(..) {
                let ks: Vec<u64> = sends_of(r, occ, o.rooms, o.occupants, total).collect();
                let (to, sent, pad, rate) =
                    (room.jid.clone(), room.sent.clone(), pad.clone(), o.rate);
                senders.push(tokio::spawn(async move {
                    let mut msg = String::with_capacity(pad.len() + to.len() + 96);
                    for k in ks {
                        tokio::time::sleep_until((start + due(k, rate)).into()).await;
                        use std::fmt::Write as _;
                        msg.clear();
                        let _ = write!(msg, "<message to='{to}' type='groupchat' id='g{k}'><body>");
                        let head = msg.len();
                        let _ = write!(msg, "{k} {} ", now_us());
                        let used = msg.len() - head;
                        msg.push_str(pad.get(used..).unwrap_or(""));
                        msg.push_str("</body></message>");
                        if w.write_all(msg.as_bytes()).await.is_err() || w.flush().await.is_err() {
                            break;
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    (i, occ, w)
                }));
            }
        }
        for s in senders {
            let (i, occ, w) = s.await?;
            self.rooms[i].writers.push((occ, w));
        }
        let sent: Vec<u64> = self
            .rooms
            .iter()
            .map(|r| r.sent.load(Ordering::Relaxed))
            .collect();
        let joined: Vec<u64> = self.rooms.iter().map(|r| r.joined).collect();
        let expected = expected(&sent, &joined);
        let received = || {
            self.rooms
                .iter()
                .flat_map(|r| r.occs.iter())
                .map(|o| o.received.load(Ordering::Relaxed))
                .sum::<u64>()
        };
        let drain_until = Instant::now() + Duration::from_secs(o.drain_secs.clamp(1, MAX_SECS));
        while received() < expected && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cpu = cpu_us(std::process::id())?.saturating_sub(cpu0);
        let received = received();
        let _ = self.stop.send(true);
        let mut h = hist();
        for r in self.readers.drain(..) {
            h.add(&r.await?)?;
        }
        Ok(RunStats {
            sent: sent.iter().sum(),
            expected,
            received,
            errors: self.errors.load(Ordering::Relaxed),
            window_us: self.last.load(Ordering::Relaxed).saturating_sub(t0_us),
            cpu_us: cpu,
            lat: hist_pairs(&h),
        })
    }

    /// Every occupant leaves its room and closes its stream.
    async fn leave(mut self) {
        let _ = self.stop.send(true);
        for room in &mut self.rooms {
            for (o, mut w) in room.writers.drain(..) {
                let bye = format!(
                    "<presence to='{}/{}' type='unavailable'/></stream:stream>",
                    room.jid,
                    nick(room.first + o)
                );
                let _ = w.write_all(bye.as_bytes()).await;
                let _ = tokio::time::timeout(Duration::from_millis(200), w.shutdown()).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run: one process, or rooms spread over child processes.

fn check(a: &MucOpts) -> Result<()> {
    if a.rooms == 0 || a.occupants == 0 || a.occupants > MAX_SESSIONS_PER_PROCESS {
        bail!("--rooms must be ≥ 1 and --occupants 1..={MAX_SESSIONS_PER_PROCESS}");
    }
    if a.rate == 0 || a.rate > MAX_RATE {
        bail!("--rate must be 1..={MAX_RATE}");
    }
    if a.rooms.saturating_mul(a.occupants) > 50 * MAX_SESSIONS_PER_PROCESS {
        bail!("at most {} occupants in all", 50 * MAX_SESSIONS_PER_PROCESS);
    }
    Ok(())
}

/// Processes needed: whole rooms per process, at most `MAX_SESSIONS_PER_PROCESS` sockets each.
pub fn procs_for(rooms: u64, occupants: u64, spawn: u64) -> Result<u64> {
    let per = (MAX_SESSIONS_PER_PROCESS / occupants.max(1)).max(1); // rooms per process
    let need = rooms.div_ceil(per);
    let procs = if spawn == 0 { need } else { spawn.min(rooms) };
    if procs < need {
        bail!(
            "{rooms} rooms of {occupants} need --spawn {need} or more (≤{MAX_SESSIONS_PER_PROCESS} sockets per process)"
        );
    }
    Ok(procs)
}

pub async fn run(a: MucArgs) -> Result<()> {
    let c = &a.common;
    if c.echo {
        bail!("muc has no meaning against the echo server");
    }
    if a.probe {
        let listed = probe(c, &a.muc.service(c)).await?;
        println!(
            "muc service {}: {}",
            a.muc.service(c),
            if listed { "listed" } else { "not listed" }
        );
        std::process::exit(if listed { 0 } else { 3 });
    }
    check(&a.muc)?;
    let procs = procs_for(a.muc.rooms, a.muc.occupants, a.spawn)?;
    c.targets().await?; // every port resolves to loopback (or --allow-non-loopback)
    c.provision(a.muc.rooms * a.muc.occupants).await?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() % 1_000_000);
    let mut runs = Vec::new();
    for r in 0..c.runs {
        let prefix = match &a.room_prefix {
            Some(p) => p.clone(),
            None => format!("b{stamp}r{r}n"),
        };
        runs.push(one_run(&a, procs, &prefix).await?);
        if r + 1 < c.runs {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let params = json!({"rooms": a.muc.rooms, "occupants": a.muc.occupants, "rate": a.muc.rate,
        "duration_secs": a.muc.duration_secs, "size": a.muc.size, "service": a.muc.service(c),
        "ports": c.ports, "spawn": procs});
    c.finish("muc", params, &runs)
}

/// Server CPU (utime+stime) of every `--server-pid`, added up.
fn servers_cpu(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut t = 0;
    for &p in pids {
        t += cpu_us(p)?;
    }
    Ok(Some(t))
}

async fn one_run(a: &MucArgs, procs: u64, prefix: &str) -> Result<Figures> {
    let c = &a.common;
    let o = &a.muc;
    let (js, rs, server_cpu, wall) = if procs == 1 {
        let (mut w, js) = Worker::setup(c, o, 0..o.rooms, prefix).await?;
        if js.joined == 0 {
            w.leave().await;
            bail!(
                "no occupant joined; first error: {}",
                js.first_error.unwrap_or_default()
            );
        }
        let s0 = servers_cpu(&c.server_pids)?;
        let t0 = Instant::now();
        let rs = w.run(Instant::now() + Duration::from_millis(100)).await;
        let (s1, wall) = (servers_cpu(&c.server_pids)?, t0.elapsed());
        w.leave().await;
        (js, rs?, s0.zip(s1).map(|(a, b)| b.saturating_sub(a)), wall)
    } else {
        spawned(a, procs, prefix).await?
    };
    if js.joined == 0 {
        bail!(
            "no occupant joined; first error: {}",
            js.first_error.unwrap_or_default()
        );
    }
    if js.joined < js.occupants {
        eprintln!(
            "muc: {} of {} occupants joined; first error: {}",
            js.joined,
            js.occupants,
            js.first_error.as_deref().unwrap_or("-")
        );
    }
    if rs.received < rs.expected {
        eprintln!(
            "muc: {} of {} deliveries missing after the drain",
            rs.expected - rs.received,
            rs.expected
        );
    }
    let jh = hist_from(&js.join_lat);
    let h = hist_from(&rs.lat);
    let dur = Duration::from_secs(o.duration_secs.clamp(1, MAX_SECS));
    let window = (rs.window_us as f64 / 1e6).max(dur.as_secs_f64());
    let mut f = Figures::default();
    f.add("rooms", o.rooms as f64);
    f.add("occupants_joined", js.joined as f64);
    f.add("rooms_created", js.created as f64);
    f.add("rooms_complete", js.rooms_complete as f64);
    f.add("join_p50_ms", pct_ms(&jh, 0.5));
    f.add("join_p99_ms", pct_ms(&jh, 0.99));
    f.add("join_all_s", js.join_all_us as f64 / 1e6);
    f.add("offered_msgs_per_s", o.rate as f64);
    f.add("sent", rs.sent as f64);
    f.add("deliveries_expected", rs.expected as f64);
    f.add("delivered", rs.received as f64);
    f.add("delivered_per_s", rs.received as f64 / window);
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
    f.add("lost", rs.expected.saturating_sub(rs.received) as f64);
    // copies beyond those owed (a duplicate, or an occupant the bench did not count as joined)
    f.add("excess", rs.received.saturating_sub(rs.expected) as f64);
    f.add("error_stanzas", rs.errors as f64);
    let per = |x: u64, n: u64| {
        if n == 0 {
            f64::NAN
        } else {
            x as f64 / n as f64
        }
    };
    let wall_us = wall.as_micros().max(1) as f64;
    if let Some(s) = server_cpu {
        f.add("server_cpu_us_per_delivery", per(s, rs.received));
        f.add("server_cpu_us_per_msg", per(s, rs.sent));
        f.add("server_cpu_cores", s as f64 / wall_us);
    }
    f.add("bench_cpu_us_per_delivery", per(rs.cpu_us, rs.received));
    f.add("bench_cpu_cores", rs.cpu_us as f64 / wall_us);
    Ok(f)
}

/// Spread the rooms over `procs` children; (join stats, run stats, server CPU, wall time).
async fn spawned(
    a: &MucArgs,
    procs: u64,
    prefix: &str,
) -> Result<(JoinStats, RunStats, Option<u64>, Duration)> {
    let c = &a.common;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for p in 0..procs {
        let rooms = rooms_of(p, procs, a.muc.rooms);
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("muc-child")
            .args(c.child_args(c.first_user))
            .args(a.muc.child_args())
            .args(["--first-room", &rooms.start.to_string()])
            .args(["--room-count", &(rooms.end - rooms.start).to_string()])
            .args(["--room-prefix", prefix])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut ch = cmd.spawn().context("spawn muc-child")?;
        let out = BufReader::new(ch.stdout.take().context("child stdout")?).lines();
        children.push((ch, out));
    }
    async fn line(
        out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
        tag: &str,
        wait: Duration,
    ) -> Result<String> {
        let l = tokio::time::timeout(wait, out.next_line())
            .await
            .map_err(|_| anyhow!("a child sent no `{tag}` within {wait:?}"))??
            .ok_or_else(|| anyhow!("a child exited before `{tag}` (see its errors above)"))?;
        l.strip_prefix(tag)
            .map(|s| s.trim().to_string())
            .ok_or_else(|| anyhow!("a child said {l:?}, not `{tag}`"))
    }
    let mut js = JoinStats::default();
    let setup_wait = Duration::from_secs(MAX_SECS);
    for (_, out) in &mut children {
        js.merge(serde_json::from_str(
            &line(out, "ready", setup_wait).await?,
        )?);
    }
    let s0 = servers_cpu(&c.server_pids)?;
    let t0 = Instant::now();
    for (ch, _) in &mut children {
        let stdin = ch.stdin.as_mut().context("child stdin")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
    }
    let run_wait = Duration::from_secs(
        a.muc.duration_secs.clamp(1, MAX_SECS) + a.muc.drain_secs.clamp(1, MAX_SECS) + 30,
    );
    let mut rs = RunStats::default();
    for (_, out) in &mut children {
        rs.merge(serde_json::from_str(&line(out, "done", run_wait).await?)?);
    }
    let (s1, wall) = (servers_cpu(&c.server_pids)?, t0.elapsed());
    for (mut ch, _) in children {
        drop(ch.stdin.take()); // the child leaves its rooms and exits
        if tokio::time::timeout(Duration::from_secs(30), ch.wait())
            .await
            .is_err()
        {
            let _ = ch.kill().await;
        }
    }
    Ok((js, rs, s0.zip(s1).map(|(a, b)| b.saturating_sub(a)), wall))
}

/// Child: join its rooms, print `ready`, send on `go`, print `done`, leave when stdin closes.
pub async fn child(a: MucChildArgs) -> Result<()> {
    let c = &a.common;
    check(&a.muc)?;
    let rooms = a.first_room..a.first_room + a.room_count;
    if (rooms.end - rooms.start) * a.muc.occupants > MAX_SESSIONS_PER_PROCESS {
        bail!("too many occupants for one process");
    }
    let (mut w, js) = Worker::setup(c, &a.muc, rooms, &a.room_prefix).await?;
    println!("ready {}", serde_json::to_string(&js)?);
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let go = tokio::time::timeout(Duration::from_secs(MAX_SECS), stdin.next_line()).await;
    if !matches!(go, Ok(Ok(Some(ref l))) if l == "go") {
        w.leave().await;
        return Ok(());
    }
    let rs = w.run(Instant::now() + Duration::from_millis(100)).await?;
    println!("done {}", serde_json::to_string(&rs)?);
    let _ = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(_)) = stdin.next_line().await {}
    })
    .await;
    w.leave().await;
    Ok(())
}

/// Whether disco#items of the domain lists the MUC service (one login, account first_user).
async fn probe(c: &Common, service: &str) -> Result<bool> {
    let t = c.targets().await?.remove(0);
    let (mut s, _) =
        client::login(&t, &c.user(c.first_user), &c.pass(c.first_user), "probe").await?;
    s.send(&format!(
        "<iq type='get' id='items1' to='{}'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        c.domain
    ))
    .await?;
    let found = tokio::time::timeout(
        Duration::from_secs(c.timeout_secs.clamp(1, MAX_SECS)),
        async {
            loop {
                let st = match client::read_frame(&mut s.io, &mut s.framer).await? {
                    Frame::Stanza(st) => st,
                    Frame::StreamOpen => continue,
                    Frame::StreamClose => bail!("stream closed before the disco#items result"),
                };
                if frame::name(&st) == "iq" && frame::attr(&st, "id") == Some("items1") {
                    return Ok::<_, anyhow::Error>(disco_lists(&st, service));
                }
            }
        },
    )
    .await
    .map_err(|_| anyhow!("no disco#items result"))??;
    s.close(false).await;
    Ok(found)
}

/// Whether a disco#items result has an `<item jid='SERVICE'/>`.
pub fn disco_lists(st: &[u8], service: &str) -> bool {
    let mut rest = st;
    while let Some(p) = frame::find(rest, b"<item") {
        rest = &rest[p..];
        if frame::attr(rest, "jid") == Some(service) {
            return true;
        }
        rest = &rest[5..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_split_into_contiguous_blocks() {
        let blocks: Vec<_> = (0..3).map(|p| rooms_of(p, 3, 10)).collect();
        assert_eq!(blocks, vec![0..4, 4..7, 7..10]);
        assert_eq!(rooms_of(0, 1, 10), 0..10);
        // more processes than rooms cannot happen (procs ≤ rooms), but blocks stay in range
        assert_eq!(rooms_of(1, 2, 1), 1..1);
    }

    #[test]
    fn processes_hold_whole_rooms_within_the_socket_bound() {
        assert_eq!(procs_for(10, 50, 0).unwrap(), 1);
        // 19,000 sockets per process: 380 rooms of 50
        assert_eq!(procs_for(381, 50, 0).unwrap(), 2);
        assert_eq!(procs_for(2, 15_000, 0).unwrap(), 2);
        assert_eq!(procs_for(10, 50, 3).unwrap(), 3);
        assert_eq!(
            procs_for(2, 50, 5).unwrap(),
            2,
            "never more processes than rooms"
        );
        assert!(procs_for(3, 15_000, 2).is_err());
    }

    #[test]
    fn occupants_spread_over_ports_round_robin() {
        use crate::common::port_index;
        // 3 nodes, rooms of 5: every room has occupants on every node
        for r in 0..4 {
            let ports: std::collections::BTreeSet<usize> =
                (0..5).map(|o| port_index(account(1, 5, r, o), 3)).collect();
            assert_eq!(ports.len(), 3, "room {r}");
        }
        assert_eq!(account(1, 50, 0, 0), 1);
        assert_eq!(account(1, 50, 2, 3), 104);
    }

    #[test]
    fn every_message_has_one_sender_and_the_schedule_is_the_rate() {
        let (n, m, total) = (3, 4, 40);
        let mut seen = vec![0; total as usize];
        for r in 0..n {
            for o in 0..m {
                for k in sends_of(r, o, n, m, total) {
                    assert_eq!(slot(k, n, m), (r, o));
                    seen[k as usize] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
        // rooms take turns, so each room gets rate / rooms
        assert_eq!(
            (0..6).map(|k| slot(k, 3, 4).0).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2]
        );
        assert_eq!(due(0, 20), Duration::ZERO);
        assert_eq!(due(20, 20), Duration::from_secs(1));
        assert_eq!(due(3, 1000), Duration::from_millis(3));
        let o = MucOpts {
            rooms: 10,
            occupants: 50,
            rate: 20,
            duration_secs: 10,
            size: 100,
            service: None,
            join_secs: 1,
            drain_secs: 1,
        };
        assert_eq!(o.messages(), 200);
    }

    #[test]
    fn latency_accounting() {
        assert_eq!(stamp("17 123456 xxxx"), Some((17, 123456)));
        assert_eq!(stamp("17 123456 "), Some((17, 123456)));
        assert_eq!(stamp("hello world"), None);
        assert_eq!(stamp(""), None);
        // 2 rooms: 5 messages to a room of 3 joined, 4 to a room of 2
        assert_eq!(expected(&[5, 4], &[3, 2]), 23);
        // histograms survive the trip from a child to the parent
        let mut h = hist();
        for v in [1, 250, 250, 1_000, 2_000_000] {
            h.record(v).unwrap();
        }
        let back = hist_from(&hist_pairs(&h));
        assert_eq!(back.len(), 5);
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(back.max(), h.max());
        let mut a = RunStats {
            sent: 2,
            expected: 6,
            received: 5,
            lat: hist_pairs(&h),
            ..RunStats::default()
        };
        a.merge(RunStats {
            sent: 1,
            expected: 3,
            received: 3,
            window_us: 9,
            lat: vec![(7, 2)],
            ..RunStats::default()
        });
        assert_eq!((a.sent, a.expected, a.received, a.window_us), (3, 9, 8, 9));
        assert_eq!(hist_from(&a.lat).len(), 7);
    }

    #[test]
    fn occupants_are_told_apart_by_nick() {
        let room = "b1r0n2@conference.perf.test";
        assert_eq!(
            occupant_of("b1r0n2@conference.perf.test/u104", room, 101, 50),
            Some(3)
        );
        assert_eq!(
            occupant_of("b1r0n2@conference.perf.test/u100", room, 101, 50),
            None
        );
        assert_eq!(
            occupant_of("b1r0n2@conference.perf.test/u151", room, 101, 50),
            None
        );
        assert_eq!(
            occupant_of("b1r0n2@conference.perf.test", room, 101, 50),
            None
        );
        assert_eq!(
            occupant_of("b1r0n23@conference.perf.test/u104", room, 101, 50),
            None
        );
        assert_eq!(
            occupant_of("b1r0n2@conference.perf.test/x104", room, 101, 50),
            None
        );
    }

    #[test]
    fn muc_stanza_helpers() {
        let own = b"<presence from='r@c/u1'><x xmlns='http://jabber.org/protocol/muc#user'>\
            <item affiliation='owner' role='moderator'/><status code='110'/><status code=\"201\"/></x></presence>";
        assert!(has_status(own, "110"));
        assert!(has_status(own, "201"));
        assert!(!has_status(own, "100"));
        let err = b"<presence type='error' from='r@c/u1'><error type='cancel'>\
            <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>";
        assert_eq!(error_condition(err), "item-not-found");
        let items = b"<iq type='result' id='items1'><query xmlns='http://jabber.org/protocol/disco#items'>\
            <item jid='pubsub.perf.test'/><item jid=\"conference.perf.test\" name='Chatrooms'/></query></iq>";
        assert!(disco_lists(items, "conference.perf.test"));
        assert!(!disco_lists(items, "conference.other.test"));
        assert!(!disco_lists(
            b"<iq type='result' id='items1'><query/></iq>",
            "conference.perf.test"
        ));
    }
}
