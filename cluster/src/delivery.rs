//! Stanza delivery between nodes (`starling.cluster.v1.Delivery.Stream`):
//! one long-lived bidirectional stream per ordered pair of nodes.
//!
//! Sending: `Store::deliver` puts an envelope on the peer's bounded queue
//! and returns at once; a full queue is `DeliveryError::Backpressure`, never
//! growth. One task per peer owns the stream: it connects (mutual TLS when
//! configured), keeps at most `WINDOW` envelopes unacknowledged, and
//! reconnects with exponential backoff. Only envelopes whose sender waits
//! for the outcome (`deliver_acked`) are acknowledged: the others (a room's
//! fan-out, most of the traffic) cost no ack frame. Envelopes
//! unacknowledged when a stream breaks, and envelopes queued while the peer
//! is unreachable, fail (`Unavailable`) rather than being retried: a retry
//! could deliver twice, and the caller can fall back (offline storage) on
//! its own terms.
//!
//! Receiving: each envelope goes to the node's [`LocalDelivery`], whose
//! answer travels back in the ack when one is wanted, and is counted there.
//!
//! Owns the delivery contract with the node (`Envelope`, `DeliveryResult`,
//! `DeliveryError`, `LocalDelivery`) and its state (`Hub`). Must not parse
//! stanzas (`Envelope::stanza` is opaque bytes), read or write the key spaces
//! (from Raft it reads only peer addresses and the applied index) or resend
//! an envelope.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use starling_proto::cluster as pb;
use starling_proto::cluster::delivery_client::DeliveryClient;
use starling_proto::cluster::delivery_server::Delivery;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::metrics;
use crate::registry::Registry;
use crate::shared::Shared;

/// A stanza travelling to another node, with the routing the sender
/// resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Full or bare JID the sender resolved.
    pub to: String,
    pub from: String,
    /// The serialized XML element.
    pub stanza: Vec<u8>,
    /// The recipient session the route named (0: any).
    pub session_id: u64,
    /// Non-empty: not a stanza but a request to close that session with
    /// this stream error condition.
    pub close: String,
    /// Set by `send`: the sender's applied log index, which the receiver
    /// reaches before delivering (causal order across nodes).
    pub min_applied: u64,
    /// Set by `send`: the same for the registry group, in the sender's
    /// registry epoch (ignored by a receiver in another epoch).
    pub min_applied_registry: u64,
    pub registry_epoch: u64,
    /// 0: a stanza for one session (or a close); 1: a stanza for a service
    /// hosted in the cluster (a MUC room); 2: one stanza for several local
    /// sessions, `stanza` and `suffix` around the value of its `to`,
    /// `recipients` their full JIDs. The node interprets it.
    pub kind: u32,
    pub recipients: Vec<String>,
    pub suffix: Vec<u8>,
    /// Times a service stanza was forwarded between nodes.
    pub hops: u32,
}

/// What the receiving node did with an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryResult {
    /// Handed to a local session.
    Delivered,
    /// No such session on that node: fall back (other resource, offline
    /// storage).
    NoSession,
    /// The node did not take it (no handler registered, overloaded).
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The queue to that node is full: the node is slow or unreachable.
    #[error("delivery queue to the node is full")]
    Backpressure,
    /// The node is not a member of the cluster.
    #[error("node {0} is not a cluster member")]
    UnknownNode(u64),
    /// The node could not be reached, or the stream broke before the ack.
    #[error("node unavailable: {0}")]
    Unavailable(String),
    #[error("store is shut down")]
    Shutdown,
}

/// Implemented by the node: takes a stanza that another node routed here.
/// Called on the gRPC task of the stream, so it must not block: hand the
/// stanza to a session's mailbox and return.
pub trait LocalDelivery: Send + Sync + 'static {
    fn deliver(&self, env: Envelope) -> DeliveryResult;
}

/// Envelopes sent and not yet acknowledged, per stream.
pub const WINDOW: usize = 256;
/// A receiver acknowledges envelopes whose sender does not wait for them
/// only once per this many (one ack covers every envelope up to its
/// sequence number, as a stream is handled in order): enough for the
/// sender to keep its window, a quarter of it.
const NO_ACK_EVERY: usize = WINDOW / 4;
/// How long `deliver_acked` waits for the ack.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a receiver waits to apply what the sender had applied.
const CAUSAL_WAIT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub struct Outgoing {
    env: Envelope,
    ack: Option<oneshot::Sender<Result<DeliveryResult, DeliveryError>>>,
}

impl Outgoing {
    fn fail(self, e: DeliveryError, kind: &'static str) {
        metrics::delivery_error(kind);
        if let Some(a) = self.ack {
            let _ = a.send(Err(e));
        }
    }

    fn done(self, r: DeliveryResult) {
        if let Some(a) = self.ack {
            let _ = a.send(Ok(r));
        }
    }
}

/// Counts what the receiving node did with an envelope (on that node).
fn record(r: DeliveryResult) {
    match r {
        DeliveryResult::Delivered => metrics::delivered(),
        DeliveryResult::NoSession => metrics::delivery_error("no_session"),
        DeliveryResult::Refused => metrics::delivery_error("refused"),
    }
}

/// The sending side: one queue and task per peer.
#[derive(Default)]
pub struct Peers {
    queues: std::sync::Mutex<HashMap<u64, mpsc::Sender<Outgoing>>>,
}

/// This node's end of delivery: the node's handler for what arrives and
/// the queues of what leaves. Holding it does not keep a `Store` alive.
pub struct Hub {
    pub shared: Arc<Shared>,
    /// For the registry's applied index (causal order of route changes).
    pub registry: Arc<Registry>,
    /// The node's handler; `None` until it registers one.
    pub local: std::sync::RwLock<Option<Arc<dyn LocalDelivery>>>,
    pub peers: Peers,
    /// Envelopes queued per peer before `send` answers `Backpressure`.
    pub queue: usize,
}

fn result_code(r: DeliveryResult) -> u32 {
    match r {
        DeliveryResult::Delivered => 0,
        DeliveryResult::NoSession => 1,
        DeliveryResult::Refused => 2,
    }
}

fn from_code(delivered: bool, code: u32) -> DeliveryResult {
    match (delivered, code) {
        (true, _) | (_, 0) => DeliveryResult::Delivered,
        (_, 1) => DeliveryResult::NoSession,
        _ => DeliveryResult::Refused,
    }
}

fn peer_addr(shared: &Shared, peer: u64) -> Option<String> {
    shared
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&peer)
        .map(|n| n.addr.clone())
}

fn local(hub: &Hub, env: Envelope) -> DeliveryResult {
    let handler = hub.local.read().unwrap_or_else(|e| e.into_inner()).clone();
    match handler {
        Some(h) => h.deliver(env),
        None => DeliveryResult::Refused,
    }
}

/// Queues `env` for `peer` (or delivers it here when `peer` is this node).
pub fn send(
    hub: &Arc<Hub>,
    peer: u64,
    mut env: Envelope,
    ack: Option<oneshot::Sender<Result<DeliveryResult, DeliveryError>>>,
) -> Result<(), DeliveryError> {
    let shared = &hub.shared;
    if *shared.stop.borrow() {
        return Err(DeliveryError::Shutdown);
    }
    if peer == shared.node_id {
        let r = local(hub, env);
        record(r);
        Outgoing {
            env: Envelope::default(),
            ack,
        }
        .done(r);
        return Ok(());
    }
    env.min_applied = shared
        .raft
        .metrics()
        .borrow()
        .last_applied
        .map_or(0, |l| l.index);
    let registry = hub.registry.active();
    let (registry_epoch, registry_applied) = registry
        .as_ref()
        .map_or((0, 0), |g| (g.epoch, g.applied_index()));
    env.registry_epoch = registry_epoch;
    env.min_applied_registry = registry_applied;
    let tx = {
        let mut queues = hub.peers.queues.lock().unwrap_or_else(|e| e.into_inner());
        match queues.get(&peer) {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                if peer_addr(shared, peer).is_none() {
                    metrics::delivery_error("unknown_node");
                    return Err(DeliveryError::UnknownNode(peer));
                }
                let (tx, rx) = mpsc::channel(hub.queue);
                shared.rt.spawn(run_peer(hub.clone(), peer, rx));
                queues.insert(peer, tx.clone());
                tx
            }
        }
    };
    match tx.try_send(Outgoing { env, ack }) {
        Ok(()) => {
            depth(peer, &tx);
            Ok(())
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics::delivery_error("backpressure");
            Err(DeliveryError::Backpressure)
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            metrics::delivery_error("unavailable");
            Err(DeliveryError::Unavailable("peer task ended".into()))
        }
    }
}

fn depth(peer: u64, tx: &mpsc::Sender<Outgoing>) {
    metrics::delivery_queue_depth(peer, tx.max_capacity() - tx.capacity());
}

/// Owns the stream to `peer` until the store stops or the peer leaves the
/// membership.
async fn run_peer(hub: Arc<Hub>, peer: u64, mut rx: mpsc::Receiver<Outgoing>) {
    let shared = &hub.shared;
    let mut stop = shared.stop.subscribe();
    let mut backoff = BACKOFF_MIN;
    // An envelope that came during a backoff and made this task try again
    // at once: it goes first on the new stream, or fails if there is none.
    let mut held: Option<Outgoing> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        let Some(addr) = peer_addr(shared, peer) else {
            break;
        };
        let attempt = tokio::time::Instant::now();
        let res = session(shared, peer, &addr, &mut rx, &mut stop, &mut held).await;
        if let Some(o) = held.take() {
            o.fail(
                DeliveryError::Unavailable(format!("node {peer} unreachable")),
                "unavailable",
            );
        }
        match res {
            Ok(()) => break, // stopped
            Err(Connected(true, e)) => {
                tracing::info!(peer, error = %e, "delivery stream to node broke; reconnecting");
                backoff = BACKOFF_MIN;
            }
            Err(Connected(false, e)) => {
                tracing::debug!(peer, error = %e, "cannot open delivery stream to node");
            }
        }
        // Unreachable for now: what is queued, and what comes during the
        // backoff, fails at once so senders can fall back; but an envelope
        // that comes once BACKOFF_MIN has passed since the last attempt is
        // held and tried on a new connection at once (a restarted node is
        // reached as soon as it listens, not after the backoff).
        let until = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                item = rx.recv() => match item {
                    Some(o) if attempt.elapsed() >= BACKOFF_MIN => {
                        held = Some(o);
                        break;
                    }
                    Some(o) => o.fail(DeliveryError::Unavailable(format!("node {peer} unreachable")), "unavailable"),
                    None => return,
                },
                _ = stop.wait_for(|s| *s) => break,
            }
            metrics::delivery_queue_depth(peer, rx.len());
        }
        if held.is_some() {
            continue;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    hub.peers
        .queues
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&peer);
    rx.close();
    let stopped = *stop.borrow();
    while let Some(o) = rx.recv().await {
        if stopped {
            o.fail(DeliveryError::Shutdown, "unavailable");
        } else {
            o.fail(DeliveryError::UnknownNode(peer), "unknown_node");
        }
    }
    metrics::delivery_queue_depth(peer, 0);
}

/// Why a stream ended: whether it had been established, and the error.
struct Connected(bool, String);

async fn session(
    shared: &Shared,
    peer: u64,
    addr: &str,
    rx: &mut mpsc::Receiver<Outgoing>,
    stop: &mut watch::Receiver<bool>,
    held: &mut Option<Outgoing>,
) -> Result<(), Connected> {
    let ep = shared
        .transport
        .endpoint(addr)
        .map_err(|e| Connected(false, e))?;
    let channel = ep
        .connect()
        .await
        .map_err(|e| Connected(false, format!("{e:?}")))?;
    let (out_tx, out_rx) = mpsc::channel::<pb::Envelope>(WINDOW);
    let outbound =
        futures::stream::unfold(
            out_rx,
            |mut rx| async move { rx.recv().await.map(|e| (e, rx)) },
        );
    let mut acks = tokio::time::timeout(
        crate::transport::CONNECT_TIMEOUT * 2,
        DeliveryClient::new(channel).stream(Request::new(outbound)),
    )
    .await
    .map_err(|_| Connected(false, "no answer to the stream request".into()))?
    .map_err(|s| Connected(false, s.to_string()))?
    .into_inner();
    tracing::debug!(peer, addr, "delivery stream open");

    let mut inflight: HashMap<u64, Outgoing> = HashMap::new();
    // Sequence numbers of envelopes nobody waits for, not yet covered by an
    // ack: they count against the window too.
    let mut unwaited: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    let mut seq = 0u64;
    let end = loop {
        tokio::select! {
            // A slot on the outbound stream first, then the envelope: one
            // taken from the queue always has somewhere to go. (Cancel
            // safe: `held` is taken only once the slot is there, and the
            // future then completes in the same poll.)
            next = async {
                let slot = out_tx.reserve().await;
                let item = match held.take() { Some(o) => Some(o), None => rx.recv().await };
                (slot, item)
            }, if inflight.len() + unwaited.len() < WINDOW => {
                let (slot, item) = next;
                let Some(o) = item else { break Ok(()) };
                let Ok(slot) = slot else {
                    o.fail(DeliveryError::Unavailable("stream closed".into()), "disconnected");
                    break Err(Connected(true, "outbound stream closed".into()));
                };
                metrics::delivery_queue_depth(peer, rx.len());
                seq += 1;
                let Outgoing { env, ack } = o;
                let msg = pb::Envelope {
                    seq,
                    to: env.to,
                    from: env.from,
                    stanza: env.stanza,
                    session_id: env.session_id,
                    close: env.close,
                    min_applied: env.min_applied,
                    min_applied_registry: env.min_applied_registry,
                    registry_epoch: env.registry_epoch,
                    kind: env.kind,
                    recipients: env.recipients,
                    suffix: env.suffix,
                    hops: env.hops,
                    no_ack: ack.is_none(),
                };
                slot.send(msg);
                // Only a sender that waits for the outcome is told it.
                match ack {
                    Some(ack) => {
                        inflight.insert(seq, Outgoing { env: Envelope::default(), ack: Some(ack) });
                    }
                    None => unwaited.push_back(seq),
                }
            }
            ack = acks.message() => match ack {
                Ok(Some(a)) => {
                    if let Some(o) = inflight.remove(&a.seq) {
                        o.done(from_code(a.delivered, a.result));
                    }
                    // The receiver handles a stream in order: everything
                    // up to this one is done.
                    while unwaited.front().is_some_and(|s| *s <= a.seq) {
                        unwaited.pop_front();
                    }
                }
                Ok(None) => break Err(Connected(true, "stream ended".into())),
                Err(s) => break Err(Connected(true, s.to_string())),
            },
            _ = stop.wait_for(|s| *s) => break Ok(()),
        }
    };
    for (_, o) in inflight.drain() {
        o.fail(
            DeliveryError::Unavailable(format!("stream to node {peer} broke before the ack")),
            "disconnected",
        );
    }
    end
}

/// The receiving side of `Delivery.Stream`.
pub struct DeliveryService {
    pub hub: Arc<Hub>,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::Ack, Status>> + Send>>;

#[tonic::async_trait]
impl Delivery for DeliveryService {
    type StreamStream = AckStream;

    async fn stream(
        &self,
        req: Request<Streaming<pb::Envelope>>,
    ) -> Result<Response<AckStream>, Status> {
        let mut inbound = req.into_inner();
        let hub = self.hub.clone();
        let (tx, rx) = mpsc::channel::<pb::Ack>(WINDOW);
        tokio::spawn(async move {
            let shared = &hub.shared;
            let mut stop = shared.stop.subscribe();
            // Envelopes nobody waits for, handled since the last ack.
            let mut unacked = 0usize;
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = stop.wait_for(|s| *s) => break,
                };
                let Ok(Some(e)) = msg else { break };
                if e.min_applied > 0 {
                    // Causal order: what the sender had applied first.
                    // Bounded: a lagging replica delays, never drops.
                    let _ = shared
                        .raft
                        .wait(Some(CAUSAL_WAIT))
                        .applied_index_at_least(Some(e.min_applied), "the sender's state")
                        .await;
                }
                if e.min_applied_registry > 0
                    && let Some(g) = hub
                        .registry
                        .active()
                        .filter(|g| g.epoch == e.registry_epoch)
                {
                    let _ = g
                        .raft
                        .wait(Some(CAUSAL_WAIT))
                        .applied_index_at_least(
                            Some(e.min_applied_registry),
                            "the sender's registry state",
                        )
                        .await;
                }
                let (seq, no_ack) = (e.seq, e.no_ack);
                let r = local(
                    &hub,
                    Envelope {
                        to: e.to,
                        from: e.from,
                        stanza: e.stanza,
                        session_id: e.session_id,
                        close: e.close,
                        min_applied: e.min_applied,
                        min_applied_registry: e.min_applied_registry,
                        registry_epoch: e.registry_epoch,
                        kind: e.kind,
                        recipients: e.recipients,
                        suffix: e.suffix,
                        hops: e.hops,
                    },
                );
                record(r);
                if no_ack {
                    unacked += 1;
                    if unacked < NO_ACK_EVERY {
                        continue;
                    }
                }
                unacked = 0;
                let ack = pb::Ack {
                    seq,
                    delivered: r == DeliveryResult::Delivered,
                    result: result_code(r),
                };
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
        });
        let out =
            futures::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|a| (Ok(a), rx)) },
            );
        Ok(Response::new(Box::pin(out)))
    }
}
