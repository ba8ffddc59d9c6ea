//! Group commit: concurrent `Store::write` calls become one Raft entry.
//!
//! One task owns the Raft write path. It waits for a first write, takes
//! everything else queued (up to `MAX_WRITES_PER_ENTRY`) and proposes it as
//! one entry; while that entry is being replicated and applied, new writes
//! queue up and form the next entry. A login storm is therefore a handful of
//! fsyncs, not one per login.
//!
//! On a follower the batch goes to the leader's `ForwardWrite` instead.
//!
//! A write may also be queued "behind" ([`Writes::queue`]): its caller
//! does not wait for it (the message archive, whose sender's session counts
//! the message handled once it committed). An entry of such writes only
//! lingers longer for company (`behind_linger`); a waited-for write that
//! comes meanwhile ends the linger. While lingering the batcher sleeps,
//! and queued writes do not wake it one by one.
//!
//! Must not interpret a write (that is `store::apply`) nor wait for this
//! replica to apply it (`access` does): it only batches, proposes or
//! forwards, and hands each caller its results.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};

use crate::error::{StoreError, client_write_error};
use crate::metrics;
use crate::op::{Op, OpResult};
use crate::raft::admin_client::Forwarder;
use crate::raft::{GroupTag, Raft, Request};
use crate::transport::Transport;

pub const MAX_WRITES_PER_ENTRY: usize = 512;
/// Writes waiting for the batcher before callers wait to queue.
pub const WRITE_QUEUE: usize = 16 * 1024;

/// Stop adding writes to an entry once its payload passes this size, so one
/// entry stays cheap to replicate and to apply.
pub const MAX_ENTRY_BYTES: usize = 4 << 20;

pub(crate) fn op_bytes(op: &Op) -> usize {
    match op {
        Op::Put { space, key, value } | Op::Insert { space, key, value } => {
            space.len() + key.len() + value.len()
        }
        Op::Delete { space, key } => space.len() + key.len(),
        Op::DeletePrefix { space, prefix } => space.len() + prefix.len(),
        Op::DeleteIf { space, key, prefix } | Op::Expect { space, key, prefix } => {
            space.len() + key.len() + prefix.len()
        }
        Op::DeleteIndexed {
            space,
            index,
            prefix,
        } => space.len() + index.len() + prefix.len(),
        Op::Append {
            space,
            prefix,
            value,
            ..
        } => space.len() + prefix.len() + value.len() + 8,
        Op::ExpectValue { space, key, value } => {
            space.len() + key.len() + value.as_ref().map_or(0, Vec::len)
        }
        Op::Incr { space, key } | Op::Take { space, key } => space.len() + key.len(),
    }
}

fn write_bytes(ops: &[Op]) -> usize {
    ops.iter().map(op_bytes).sum::<usize>() + 16
}

pub struct Pending {
    pub ops: Vec<Op>,
    /// The write's results and the log index of the entry that carried it.
    pub reply: oneshot::Sender<Result<(Vec<OpResult>, u64), StoreError>>,
    /// The store's own bookkeeping (lease renewals, expiry): not counted
    /// in `StoreStats`.
    pub internal: bool,
    /// Nobody waits for it (`Writes::queue`).
    pub behind: bool,
}

/// What a write's caller gets back: its results and the log index of the
/// entry that carried it.
pub type Reply = oneshot::Receiver<Result<(Vec<OpResult>, u64), StoreError>>;

/// The way into one group's batcher. Cheap to clone.
#[derive(Clone)]
pub struct Writes {
    tx: mpsc::Sender<Pending>,
    linger: Arc<Linger>,
}

/// The batcher's side of [`Writes`].
pub struct Queue {
    rx: mpsc::Receiver<Pending>,
    linger: Arc<Linger>,
}

/// Set while the batcher lingers for queued-behind writes only: a write
/// whose caller waits then wakes it.
#[derive(Default)]
struct Linger {
    behind: std::sync::atomic::AtomicBool,
    wake: Notify,
    /// Writes queued behind and not yet answered.
    in_flight: AtomicU64,
}

pub fn channel() -> (Writes, Queue) {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let linger = Arc::new(Linger::default());
    (
        Writes {
            tx,
            linger: linger.clone(),
        },
        Queue { rx, linger },
    )
}

impl Writes {
    /// Queues `ops` and waits for their results and the log index of the
    /// entry that carried them.
    pub async fn submit(
        &self,
        ops: Vec<Op>,
        internal: bool,
    ) -> Result<(Vec<OpResult>, u64), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending {
                ops,
                reply,
                internal,
                behind: false,
            })
            .await
            .map_err(|_| StoreError::Shutdown)?;
        if self.linger.behind.load(Ordering::Acquire) {
            self.linger.wake.notify_one();
        }
        rx.await.map_err(|_| StoreError::Shutdown)?
    }

    /// Whether writes queued behind are not answered yet.
    pub fn behind_in_flight(&self) -> bool {
        self.linger.in_flight.load(Ordering::Acquire) > 0
    }

    /// Queues `ops` now, without waiting: they are proposed whether or not
    /// the reply is awaited. A full queue gives the ops back.
    pub fn queue(&self, ops: Vec<Op>) -> Result<Reply, Vec<Op>> {
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            ops,
            reply,
            internal: false,
            behind: true,
        };
        match self.tx.try_send(pending) {
            Ok(()) => {
                self.linger.in_flight.fetch_add(1, Ordering::AcqRel);
                Ok(rx)
            }
            Err(mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p)) => {
                Err(p.ops)
            }
        }
    }
}

/// Counters for diagnostics and tests.
#[derive(Default)]
pub struct Counters {
    pub entries: AtomicU64,
    pub writes: AtomicU64,
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    raft: Raft,
    transport: Arc<Transport>,
    queue: Queue,
    counters: Arc<Counters>,
    timeout: Duration,
    linger: Duration,
    behind_linger: Duration,
    tag: GroupTag,
) {
    let Queue {
        mut rx,
        linger: lingering,
    } = queue;
    let durable = tag.durable();
    let mut forwarder = Forwarder::new(transport, timeout, tag);
    // When the last entry was committed: a write that comes soon after it
    // finds the group busy, and lingers for company.
    let mut last_commit: Option<Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut bytes = write_bytes(&first.ops);
        let mut behind = first.behind;
        let mut batch = vec![first];
        let busy = last_commit.is_some_and(|at| at.elapsed() < linger);
        let opened = tokio::time::Instant::now();
        loop {
            while batch.len() < MAX_WRITES_PER_ENTRY && bytes < MAX_ENTRY_BYTES {
                match rx.try_recv() {
                    Ok(p) => {
                        bytes += write_bytes(&p.ops);
                        behind &= p.behind;
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            if batch.len() >= MAX_WRITES_PER_ENTRY || bytes >= MAX_ENTRY_BYTES {
                break;
            }
            let wait = match (behind, busy) {
                (true, _) => behind_linger.max(linger),
                (false, true) => linger,
                (false, false) => Duration::ZERO,
            };
            let until = opened + wait;
            if tokio::time::Instant::now() >= until {
                break;
            }
            // Asleep, not waiting on the queue: writes arriving meanwhile
            // are taken when it ends, without a wake-up each. Only a
            // waited-for write ends a linger for writes queued behind.
            lingering.behind.store(behind, Ordering::Release);
            if behind {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = lingering.wake.notified() => {}
                }
            } else {
                tokio::time::sleep_until(until).await;
            }
            lingering.behind.store(false, Ordering::Release);
        }
        let external = batch.iter().filter(|p| !p.internal).count();
        let behind_writes = batch.iter().filter(|p| p.behind).count() as u64;
        let (writes, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.ops, p.reply)).unzip();
        let n = writes.len();
        metrics::writes_per_entry(durable, n);
        if external > 0 {
            counters.entries.fetch_add(1, Ordering::Relaxed);
            counters
                .writes
                .fetch_add(external as u64, Ordering::Relaxed);
        }
        let request = Request { writes };
        let started = Instant::now();
        // While a new leader is being elected (the old one died or left)
        // the write waits for it, bounded (`retryable`: never applied twice
        // where that would change anything).
        let mut request = Some(request);
        let outcome = loop {
            let Some(req) = request.take() else {
                break Err(StoreError::Unavailable("write lost its request".into()));
            };
            let attempt = match leader(&raft) {
                Leader::Elsewhere(addr) => {
                    let r = forwarder.forward(&addr, &req).await;
                    request = Some(req);
                    r
                }
                Leader::Unknown if started.elapsed() < LEADER_WAIT => {
                    request = Some(req);
                    Err(StoreError::Unavailable("no leader known".into()))
                }
                // This node leads (or none is known, for too long: openraft
                // answers). A leader that steps down meanwhile fails the
                // write; with peers, an idempotent one is kept to retry
                // through the next leader.
                Leader::Me | Leader::Unknown => {
                    let keep = (has_peers(&raft) && idempotent(&req)).then(|| req.clone());
                    let r = tokio::time::timeout(timeout, raft.client_write(req));
                    let r = match r.await {
                        Ok(r) => r.map(|r| r.data).map_err(client_write_error),
                        Err(_) => Err(StoreError::Unavailable(
                            "write not committed in time (no quorum?)".into(),
                        )),
                    };
                    request = keep;
                    r
                }
            };
            match (attempt, &request) {
                (Err(e), Some(req)) if retryable(&e, req) && started.elapsed() < LEADER_WAIT => {
                    metrics::write_retried(durable);
                    tokio::time::sleep(RETRY_EVERY).await;
                }
                (other, _) => break other,
            }
        };
        if outcome.is_ok() {
            metrics::commit_seconds(durable, started.elapsed());
        }
        last_commit = Some(Instant::now());
        match outcome {
            Ok(resp) => {
                let mut results = resp.results.into_iter();
                for reply in replies {
                    let r = results
                        .next()
                        .map(|r| (r, resp.index))
                        .ok_or_else(|| StoreError::Storage("missing result for a write".into()));
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(clone_err(&e)));
                }
            }
        }
        lingering
            .in_flight
            .fetch_sub(behind_writes, Ordering::AcqRel);
    }
}

/// How long a write waits for a leader (an election after the leader
/// died takes one to a few seconds: timeouts of 1-2 s, split votes).
const LEADER_WAIT: Duration = Duration::from_secs(5);
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// Whether a failed write may be tried again: when it certainly never
/// reached a leader (none was known, or the connection to it could not
/// even be made: it died), always; when it may have (the leader stepped
/// down or died while answering), only if applying it twice changes
/// nothing (`idempotent`). A timeout is not retried.
fn retryable(e: &StoreError, request: &Request) -> bool {
    let StoreError::Unavailable(m) = e else {
        return false;
    };
    let never_sent = m.contains("no leader known")
        || m.contains("connect error")
        || m.contains("Connection refused");
    let timed_out = m.contains("timed out") || m.contains("in time");
    never_sent || (!timed_out && idempotent(request))
}

/// Whether applying the writes a second time leaves the same state: sets,
/// deletes, inserts (the same one again is `Done`) and conditions do (a
/// repeated condition fails and its caller reads again); `Append`,
/// `Incr` and `Take` (whose second run finds nothing to take) do not.
fn idempotent(request: &Request) -> bool {
    request
        .writes
        .iter()
        .flatten()
        .all(|op| !matches!(op, Op::Append { .. } | Op::Incr { .. } | Op::Take { .. }))
}

/// Whether the group has other voters (a leader can then lose its place).
fn has_peers(raft: &Raft) -> bool {
    let m = raft.metrics();
    let m = m.borrow();
    m.membership_config
        .membership()
        .voter_ids()
        .nth(1)
        .is_some()
}

/// Who leads, as this replica knows.
enum Leader {
    Me,
    /// Another node, at this address.
    Elsewhere(String),
    Unknown,
}

fn leader(raft: &Raft) -> Leader {
    let m = raft.metrics();
    let m = m.borrow();
    let Some(leader) = m.current_leader else {
        return Leader::Unknown;
    };
    if leader == m.id {
        return Leader::Me;
    }
    match m.membership_config.membership().get_node(&leader) {
        Some(n) => Leader::Elsewhere(n.addr.clone()),
        None => Leader::Unknown,
    }
}

fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Storage(s) => StoreError::Storage(s.clone()),
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
        StoreError::Shutdown => StoreError::Shutdown,
    }
}
