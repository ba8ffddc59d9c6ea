//! A bound client session: one actix actor per connection. Its address
//! (a [`SessionHandle`] in the router) is the only way in: other sessions,
//! other nodes and the server send it typed [`ToSession`] messages. The
//! actor owns the stream through one task in its context that reads the
//! client's stanzas, stamps and checks their addresses, hands them to IM
//! routing or the modules, and writes what the actor's outbox receives.

use super::csi::{ClientState, Csi, NS_CSI};
use super::im::{self, Origin};
use super::outbox::{Control, Outbox, Outgoing};
use super::sm::{self, NS_SM, Sm, TakenOver, Takeover};
use crate::modules::{self, Event, Flow, HookCtx, IqCtx, IqTarget};
use crate::net::transport::Transport;
use crate::router::{Destination, Gate, SessionHandle, ToSession, ToUser, UserHandle};
use crate::server::Server;
use crate::stanza::StreamCondition;
use crate::stanza::{
    Condition, Iq, IqType, Message, Presence, Stanza, StanzaError, error_reply, iq_result,
};
use crate::stream::negotiate::{Bind2, Bound};
use crate::stream::xmlstream::{ReadError, XmlStream, read_failed};
use crate::xml::{Element, StreamEvent};
use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// Why the session loop ended.
enum End {
    /// Already closed (a stream error was sent).
    Done,
    /// The connection broke (closed by the peer, reset, or a write that
    /// failed): a resumable session waits for its client (XEP-0198).
    Lost,
    /// Another connection resumes this session.
    TakenOver(Takeover),
    /// Another node resumes it; its client handled this many stanzas.
    Released(u32),
    /// Close with this stream error.
    Error(StreamCondition),
    /// The client sent `</stream:stream>`: answer in kind.
    ClientClosed,
}

/// The session actor. Its state is what its message handlers need; the
/// stream and the per-stanza state live in the stream task it runs.
pub struct C2s {
    outbox: Arc<Outbox>,
    server: Arc<Server>,
    bare: Arc<str>,
    /// XEP-0352: holds presence back while the client is inactive.
    csi: Csi,
    /// The user's blocklist items that what services (rooms) send is checked against
    /// (XEP-0191 §3.3; shared by the user's sessions on this node).
    blocks: Arc<modules::blocking::UserBlocks>,
}

impl Actor for C2s {
    type Context = Context<Self>;
}

impl Handler<ToSession> for C2s {
    type Result = ();

    fn handle(&mut self, msg: ToSession, _: &mut Context<Self>) {
        match msg {
            ToSession::Stanza(xml) => {
                if self.blocks.drops(&xml) {
                    // From a JID the user blocks (rooms deliver here past
                    // the routing hooks): never written, so its room in
                    // the gate is free.
                    self.outbox.discard(&xml);
                    return;
                }
                let (outbox, server) = (&self.outbox, &self.server);
                self.csi.pass(xml, |xml| queue(outbox, server, xml));
            }
            ToSession::Close(condition) => self.outbox.close(condition),
            ToSession::Release(h) => {
                self.release_held();
                self.outbox.release(h)
            }
            ToSession::Checkpoint => self.outbox.checkpoint(),
        }
    }
}

impl Handler<Takeover> for C2s {
    type Result = ();

    /// Another connection resumes this session: from now on the router
    /// sends to it, and the stream task hands it the session's state.
    /// A session that has ended for good drops the request (its reply
    /// then says so).
    fn handle(&mut self, t: Takeover, _: &mut Context<Self>) {
        let to = t.to.clone();
        if self.outbox.is_ended() || !self.server.router.replace_handle(&self.bare, to) {
            return;
        }
        self.release_held();
        let _ = self.outbox.takeover(t);
    }
}

impl Handler<ClientState> for C2s {
    type Result = ();

    fn handle(&mut self, state: ClientState, _: &mut Context<Self>) {
        let (outbox, server) = (&self.outbox, &self.server);
        self.csi.set(state, |xml| queue(outbox, server, xml));
    }
}

impl C2s {
    /// The session goes on on another connection, which starts active
    /// (XEP-0352 §5.2): what the inactive client's filter held goes into
    /// the outbox, whose content the resuming connection writes.
    fn release_held(&mut self) {
        let (outbox, server) = (&self.outbox, &self.server);
        self.csi
            .set(ClientState::Active, |xml| queue(outbox, server, xml));
    }
}

/// Puts a stanza in the outbox for the stream task to write.
fn queue(outbox: &Outbox, server: &Arc<Server>, xml: Arc<str>) {
    if outbox.push(xml.clone()).is_err() {
        // Sent while the session was ending: it is owed to the user, so it
        // goes where the user can still get it (another resource, offline
        // storage).
        let server = server.clone();
        actix_rt::spawn(async move { im::reroute(&server, &xml).await });
    }
}

struct Session<S> {
    server: Arc<Server>,
    xs: XmlStream<S>,
    bare: String,
    full: String,
    id: u64,
    /// The actor of this session's user on this node.
    user: UserHandle,
    /// Counts the connection until it closes (`net::max_connections`).
    _slot: crate::net::ConnSlot,
    /// The user actor was asked to write this session's route
    /// (`ToUser::Publish`) before a stanza to someone else.
    route_asked: bool,
    /// XEP-0198 state, once the client enabled stream management.
    sm: Option<Sm>,
    /// This connection's entry in the resumable table (`Resumable::remove`
    /// must not remove the one of the connection that resumed it).
    generation: u64,
    /// A stanza was written that no `<r/>` covers yet: ask by then.
    request_at: Option<Instant>,
    /// The session actor's address, for the resumable table.
    addr: actix::Addr<C2s>,
    /// Where the client is in the user's message archive, kept in the
    /// cluster's record of a resumable session (with peers only).
    archive: Option<ArchivePosition>,
    /// Archive writes of messages this session delivered before they
    /// committed (`im::route_message_behind`): with stream management,
    /// the client's `h` counts those messages only once these end
    /// ([`Session::settle`]).
    behind: im::Behind,
}

/// How far a resumable session's client acknowledged the user's message
/// archive, and when that was last written to its record.
struct ArchivePosition {
    /// Nothing at or before this id is owed to the client.
    floor: u64,
    /// The newest archive id written to the client.
    written: u64,
    checkpoint_at: Option<Instant>,
    dirty: bool,
    /// `acked_archive` as last written to the record.
    recorded: u64,
}

impl ArchivePosition {
    fn new(floor: u64) -> Self {
        ArchivePosition {
            floor,
            written: floor,
            checkpoint_at: None,
            dirty: false,
            recorded: floor,
        }
    }
}

/// Tells one connection's entry in the resumable table from another's.
fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Starts the session actor of a bound connection on the current arbiter.
pub fn start<S: Transport + 'static>(
    server: Arc<Server>,
    bound: Bound<S>,
    slot: crate::net::ConnSlot,
) {
    let (bare, full) = (bound.bare.to_string(), bound.full.to_string());
    let start = Start::New(bound.bind2);
    start_with(
        server,
        bound.stream,
        bare,
        full,
        slot,
        start,
        bound.inactive,
    );
}

/// A session resumed from another node's (or a dead node's) record: what
/// the new session continues with.
pub struct Transferred {
    sm: Sm,
    resend: VecDeque<Arc<str>>,
    /// Its last available presence, broadcast again (its contacts may have
    /// been told it went unavailable when its node died).
    presence: Option<String>,
    flags: super::resume::Flags,
    archive: u64,
}

/// How a session started by `start_with` begins.
enum Start {
    /// Newly bound (by XEP-0386 inside SASL2, with what it asked inline).
    New(Option<Box<Bind2>>),
    /// Resumed from another node (with SASL2, the `<success>` to open).
    Transferred(Box<Transferred>, Option<String>),
}

/// Starts a session actor (new, or resumed from another node) on the
/// current arbiter. The session's state is boxed before its task starts,
/// so the long-lived task holds a pointer to it rather than copies of it
/// at every level of `async fn` nesting.
fn start_with<S: Transport + 'static>(
    server: Arc<Server>,
    stream: XmlStream<S>,
    bare: String,
    full: String,
    slot: crate::net::ConnSlot,
    start: Start,
    inactive: bool,
) {
    C2s::create(move |ctx| {
        // The gate bounds what is queued for the socket (in the mailbox
        // and the outbox together): senders are refused at once past it.
        let gate = Arc::new(Gate::new(
            server.config.c2s.mailbox_size,
            server.config.c2s.mailbox_bytes,
        ));
        let outbox = Arc::new(Outbox::new(gate.clone()));
        let handle = SessionHandle::new(ctx.address().recipient(), gate.clone());
        let resource = im::split(&full).1.unwrap_or_default().to_owned();
        let id = handle.id;
        let (old, user, blocks) = server.router.bind(
            &bare,
            &resource,
            handle,
            || super::user::start(server.clone(), &bare),
            || modules::blocking::service_items(&server, &bare),
        );
        if let Some(old) = old {
            // RFC 6120 §7.7.2.2: the new session replaces the old one.
            old.close(StreamCondition::Conflict);
        }
        let span = tracing::info_span!("c2s", jid = %full);
        let actor_bare: Arc<str> = bare.as_str().into();
        let mut s = Box::new(Session {
            server: server.clone(),
            xs: stream,
            bare,
            full,
            id,
            user,
            _slot: slot,
            route_asked: false,
            sm: None,
            generation: next_generation(),
            request_at: None,
            addr: ctx.address(),
            archive: None,
            behind: im::Behind::new(),
        });
        let mut csi = Csi::new(gate, server.config.csi.max_held, &s.full);
        if inactive {
            // Said before binding (XEP-0352 is offered with it).
            csi.set(ClientState::Inactive, |_| {});
        }
        let task = match start {
            Start::New(bind2) => Box::pin(serve(s, outbox.clone(), bind2).instrument(span))
                as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
            Start::Transferred(t, sasl2) => {
                let t = *t;
                s.sm = Some(t.sm);
                s.archive = s
                    .server
                    .storage
                    .store
                    .registry_active()
                    .then(|| ArchivePosition::new(t.archive));
                Box::pin(
                    serve_transferred(s, outbox.clone(), t.resend, t.presence, t.flags, sasl2)
                        .instrument(span),
                )
            }
        };
        ctx.spawn(actix::fut::wrap_future::<_, C2s>(task).map(|(), _, ctx| ctx.stop()));
        C2s {
            outbox,
            server,
            bare: actor_bare,
            csi,
            blocks,
        }
    });
}

/// A resumption ready to run on the new connection (`start_resumed`).
pub enum Resumption {
    /// A session of this node, taken over from its old connection: the
    /// actor's context and address exist already, so the router could
    /// point at it before the old connection let go.
    Local(Box<LocalResumption>),
    /// A session of another node (or of this one before it restarted).
    Transferred {
        bare: String,
        full: String,
        state: Box<Transferred>,
    },
}

pub struct LocalResumption {
    ctx: Context<C2s>,
    outbox: Arc<Outbox>,
    gate: Arc<Gate>,
    handle: crate::router::SessionHandle,
    user: UserHandle,
    bare: String,
    full: String,
    sm: Sm,
    resend: VecDeque<Arc<str>>,
    archive: u64,
}

/// Takes over the session `previd` of `bare` for a client that handled
/// `h` of its stanzas (XEP-0198 §5): on this node from its old connection,
/// else from the cluster's record of it. On failure, the `<failed/>` to
/// send (the client may bind a new session instead).
pub async fn take_over(
    server: &Arc<Server>,
    bare: &str,
    previd: &str,
    h: u32,
) -> Result<Resumption, String> {
    let not_found = || sm::failed_xml("item-not-found", "");
    // Someone else's session is not found either: ids are not secrets
    // worth confirming.
    let entry = match server.resumable.get(previd) {
        Some(e) if &*e.bare == bare => e,
        Some(_) => return Err(not_found()),
        None if server.storage.store.registry_active() => {
            return take_over_elsewhere(server, bare, previd, h).await;
        }
        None => {
            return Err(server
                .resumable
                .ended(previd, bare)
                .map_or_else(not_found, sm::failed_ended_xml));
        }
    };
    if !entry.counts.valid(h) {
        let (sent, _) = entry.counts.get();
        let too_high = sm::too_high_xml(&sm::TooHigh { h, sent });
        // The client lost track of the stream: the old session ends (what
        // it owes goes where XEP-0198 §4 says).
        entry
            .close
            .do_send(ToSession::Close(StreamCondition::UndefinedCondition));
        // §5: the session is over; the `h` tells the client which of its
        // stanzas to send again.
        return Err(sm::failed_with_h(
            "undefined-condition",
            entry.counts.handled(),
            &too_high,
        ));
    }
    let Some(user) = server.router.user(bare) else {
        return Err(not_found());
    };
    let ctx = Context::<C2s>::new();
    let gate = Arc::new(Gate::new(
        server.config.c2s.mailbox_size,
        server.config.c2s.mailbox_bytes,
    ));
    let outbox = Arc::new(Outbox::new(gate.clone()));
    let handle = crate::router::SessionHandle::with_id(
        entry.session,
        ctx.address().recipient(),
        gate.clone(),
    );
    let (reply, taken) = tokio::sync::oneshot::channel();
    let ask = Takeover {
        to: handle.clone(),
        reply,
    };
    // The session ended meanwhile: what it left for a late `<resume/>`.
    let ended = || {
        let h = if server.storage.store.registry_active() {
            super::resume::read(server, previd)
                .filter(|r| r.is_ended() && r.bare == bare)
                .map(|r| r.h_in)
        } else {
            server.resumable.ended(previd, bare)
        };
        h.map_or_else(not_found, sm::failed_ended_xml)
    };
    if entry.takeover.try_send(ask).is_err() {
        return Err(ended());
    }
    let Ok(Some(TakenOver { sm: state, full })) = taken.await else {
        return Err(ended());
    };
    // Checked above against counters that only grow; should the client's
    // `h` still not fit, everything unacknowledged is sent again.
    let archive = state.archive;
    let (sm, resend) = Sm::resumed_or_all(state, h);
    metrics::counter!("starling_sm_resumed_total", "from" => "this_node").increment(1);
    Ok(Resumption::Local(Box::new(LocalResumption {
        ctx,
        outbox,
        gate,
        handle,
        user,
        bare: bare.to_owned(),
        full,
        sm,
        resend,
        archive,
    })))
}

/// Resumes a session this node does not hold, from its record in the
/// registry: its node lets go first if it is alive (`resume::fetch`);
/// what the client had not acknowledged is replayed from the archive.
async fn take_over_elsewhere(
    server: &Arc<Server>,
    bare: &str,
    previd: &str,
    h: u32,
) -> Result<Resumption, String> {
    let Some(rec) = super::resume::fetch(server, bare, previd, h).await else {
        return Err(sm::failed_xml("item-not-found", ""));
    };
    if rec.is_ended() {
        // Ended over this very `h` (its node refused to let it go): as
        // for a session of this node.
        if let Some(sent) = rec.refused_sent
            && !sm::Counts::fits(h, sent)
        {
            let too_high = sm::too_high_xml(&sm::TooHigh { h, sent });
            return Err(sm::failed_with_h(
                "undefined-condition",
                rec.h_in,
                &too_high,
            ));
        }
        return Err(sm::failed_ended_xml(rec.h_in));
    }
    let from = if rec.released {
        "other_node"
    } else {
        "dead_node"
    };
    let mut owed = super::resume::owed(server, &rec, &rec.received(h)).await;
    owed.extend(rec.pending.iter().map(|x| Arc::<str>::from(x.as_str())));
    let state = sm::Detached {
        id: previd.into(),
        max: rec.max,
        h_in: rec.h_in,
        // What the old node sent is not known past its last checkpoint:
        // the client's count is taken as it is, and what is owed is
        // counted on from there.
        sent: h,
        acked: h,
        unacked: owed,
        archive: rec.acked_archive,
    };
    let (sm, resend) = Sm::resumed_or_all(state, h);
    metrics::counter!("starling_sm_resumed_total", "from" => from).increment(1);
    Ok(Resumption::Transferred {
        bare: bare.to_owned(),
        full: rec.full,
        state: Box::new(Transferred {
            sm,
            resend,
            presence: rec.presence,
            flags: rec.flags,
            archive: rec.acked_archive,
        }),
    })
}

/// Runs a resumed session on its new connection: `<resumed/>`, then what
/// the client had not acknowledged, then as any session.
pub fn start_resumed<S: Transport + 'static>(
    server: Arc<Server>,
    stream: XmlStream<S>,
    r: Resumption,
    sasl2: Option<String>,
    slot: crate::net::ConnSlot,
) {
    let r = match r {
        Resumption::Local(r) => r,
        Resumption::Transferred { bare, full, state } => {
            let start = Start::Transferred(state, sasl2);
            return start_with(server, stream, bare, full, slot, start, false);
        }
    };
    let LocalResumption {
        ctx,
        outbox,
        gate,
        handle,
        user,
        bare,
        full,
        sm,
        resend,
        archive,
    } = *r;
    let span = tracing::info_span!("c2s", jid = %full);
    let actor_bare: Arc<str> = bare.as_str().into();
    let registry = server.storage.store.registry_active();
    // A new stream starts active (XEP-0352): the client says again if not.
    let csi = Csi::new(gate, server.config.csi.max_held, &full);
    let s = Box::new(Session {
        server: server.clone(),
        xs: stream,
        bare,
        full,
        id: handle.id,
        user,
        _slot: slot,
        route_asked: true,
        sm: Some(sm),
        generation: next_generation(),
        request_at: None,
        addr: ctx.address(),
        archive: registry.then(|| ArchivePosition::new(archive)),
        behind: im::Behind::new(),
    });
    let task = serve_resumed(s, outbox.clone(), resend, sasl2).instrument(span);
    let mut ctx = ctx;
    ctx.spawn(actix::fut::wrap_future::<_, C2s>(task).map(|(), _, ctx| ctx.stop()));
    // The resumed session is still bound here: its user's entry has them.
    let blocks = server.router.blocks(&actor_bare).unwrap_or_else(|| {
        let items = modules::blocking::service_items(&server, &actor_bare);
        Arc::new(modules::blocking::UserBlocks::new(items))
    });
    ctx.run(C2s {
        outbox,
        server,
        bare: actor_bare,
        csi,
        blocks,
    });
}

/// The stream task of a session resumed on this node.
async fn serve_resumed<S: Transport>(
    mut s: Box<Session<S>>,
    outbox: Arc<Outbox>,
    resend: VecDeque<Arc<str>>,
    sasl2: Option<String>,
) {
    tracing::info!(resent = resend.len(), "session resumed");
    s.register_resumable();
    let end = match Box::pin(s.resumed(resend, sasl2)).await {
        Ok(()) => s.run(&outbox).await,
        Err(end) => end,
    };
    Box::pin(finish(&mut s, &outbox, end)).await;
    tracing::info!("session ended");
}

/// The stream task of a session resumed from another node: bound here
/// as a new session, its presence restored, then as `serve_resumed`.
async fn serve_transferred<S: Transport>(
    mut s: Box<Session<S>>,
    outbox: Arc<Outbox>,
    resend: VecDeque<Arc<str>>,
    presence: Option<String>,
    flags: super::resume::Flags,
    sasl2: Option<String>,
) {
    tracing::info!(resent = resend.len(), "session resumed from another node");
    let attach = ToUser::Attach {
        session: s.id,
        full: s.full.clone(),
    };
    // The route is in the registry before `<resumed/>`: what other nodes
    // send to the full JID once the client has it (a room's next message,
    // a contact's reply) finds the session here, not on its old node.
    let publish = ToUser::Publish { session: s.id };
    if !matches!(s.user.send(attach).await, Ok(Ok(())))
        || !matches!(s.user.send(publish).await, Ok(Ok(())))
    {
        tracing::error!("could not record the resumed session's route");
    }
    s.register_resumable();
    let end = match Box::pin(s.resumed(resend, sasl2)).await {
        Ok(()) => {
            // What it asked for, then its presence, as its client did.
            let id = s.id;
            let asked = [
                (flags.interested, ToUser::Interested { session: id }),
                (
                    flags.carbons,
                    ToUser::Carbons {
                        session: id,
                        enabled: true,
                    },
                ),
                (flags.blocklist, ToUser::BlocklistRequested { session: id }),
            ];
            for (_, msg) in asked.into_iter().filter(|(on, _)| *on) {
                if !matches!(s.user.send(msg).await, Ok(Ok(()))) {
                    tracing::warn!("could not restore what the resumed session asked for");
                }
            }
            if let Some(el) = presence
                .as_deref()
                .and_then(crate::stanza::parse_serialised)
            {
                let msg = ToUser::Presence { session: s.id, el };
                if !matches!(s.user.send(msg).await, Ok(Ok(()))) {
                    tracing::warn!("could not restore the resumed session's presence");
                }
            }
            s.checkpoint(true).await;
            s.run(&outbox).await
        }
        Err(end) => end,
    };
    Box::pin(finish(&mut s, &outbox, end)).await;
    tracing::info!("session ended");
}

/// The stream task: serves the bound stream to its end.
async fn serve<S: Transport>(
    mut s: Box<Session<S>>,
    outbox: Arc<Outbox>,
    bind2: Option<Box<Bind2>>,
) {
    tracing::info!("session bound");
    let attach = ToUser::Attach {
        session: s.id,
        full: s.full.clone(),
    };
    let end = match s.user.send(attach).await {
        Ok(Ok(())) => match bind2 {
            Some(b) => match Box::pin(s.bound2(*b)).await {
                Ok(()) => s.run(&outbox).await,
                Err(end) => end,
            },
            None => s.run(&outbox).await,
        },
        Ok(Err(_)) | Err(_) => {
            tracing::error!("could not record the session's route");
            End::Error(StreamCondition::InternalServerError)
        }
    };
    Box::pin(finish(&mut s, &outbox, end)).await;
    tracing::info!("session ended");
}

/// Ends the session: after the connection broke, a resumable session
/// first waits for its client to resume it (on another connection, which
/// takes it over). Otherwise it leaves the router, has the user actor tell
/// contacts and remove the route, hands on what was owed to the client
/// (XEP-0198 §4) and closes the stream (boxed by the caller: it runs once).
async fn finish<S: Transport>(s: &mut Session<S>, outbox: &Outbox, end: End) {
    // A release asked for with an `h` beyond what the session sent is
    // refused (XEP-0198 §6): the session ends here, and its tombstone tells
    // the resuming node why.
    let mut refused = None;
    let end = match end {
        End::TakenOver(t) => return s.hand_over(outbox, t, true).await,
        End::Released(h) => match s.refuse_release(h) {
            None => return s.release(outbox, h, true).await,
            Some(sent) => {
                refused = Some(sent);
                End::Error(StreamCondition::UndefinedCondition)
            }
        },
        End::Lost | End::Error(StreamCondition::ConnectionTimeout) if s.resumable() => {
            if let End::Error(condition) = end {
                s.xs.fail(condition, None).await;
            }
            match s.wait_detached(outbox).await {
                Some(Control::Takeover(t)) => return s.hand_over(outbox, t, false).await,
                Some(Control::Released(h)) => match s.refuse_release(h) {
                    None => return s.release(outbox, h, false).await,
                    Some(sent) => {
                        refused = Some(sent);
                        End::Done
                    }
                },
                Some(Control::Close | Control::Checkpoint) | None => End::Done,
            }
        }
        end => end,
    };
    // Resumed just as it ended: the new connection has it.
    if let Some(t) = outbox.take_takeover() {
        return s.hand_over(outbox, t, true).await;
    }
    // The client's `h` counts the messages it sent only once they are in
    // the archive: the last one is the one a late `<resume/>` is told.
    if s.sm.as_ref().is_some_and(|sm| sm.id.is_some()) {
        s.settle().await;
    }
    let server: &Server = &s.server;
    // Leave the router first, so nothing more is queued here, then hand on
    // what was queued but never written: it is owed to the user.
    let owned = server.router.unbind(&s.bare, s.id);
    let leftovers = outbox.end();
    let unacked = match s.sm.take() {
        Some(sm) => {
            if let Some(id) = &sm.id {
                server.resumable.remove(id, s.generation);
                let keep = server.config.sm.ended_retention_secs;
                if server.storage.store.registry_active() {
                    let rec = super::resume::Record::ended(
                        &s.bare,
                        server.storage.store.node_id(),
                        sm.h_in,
                        refused,
                    );
                    super::resume::write_ended(server, id, rec, keep).await;
                } else {
                    let bare: Arc<str> = s.bare.as_str().into();
                    let keep = Duration::from_secs(keep);
                    server.resumable.end(id.clone(), bare, sm.h_in, keep);
                }
            }
            sm.into_unacked()
        }
        None => VecDeque::new(),
    };
    let detach = ToUser::Detach {
        session: s.id,
        owned,
        silent: false,
    };
    if s.user.send(detach).await.is_err() {
        tracing::warn!("the user actor was gone before the session ended");
    }
    if !unacked.is_empty() {
        metrics::counter!("starling_sm_unacked_rerouted_total").increment(unacked.len() as u64);
    }
    for xml in unacked.iter().chain(leftovers.iter()) {
        if owed(xml) {
            im::reroute(server, xml).await;
        }
    }
    match end {
        End::Error(StreamCondition::SeeOtherHost) => match &server.config.cluster.see_other_host {
            Some(host) => s.xs.fail_see_other_host(host).await,
            None => s.xs.fail(StreamCondition::SystemShutdown, None).await,
        },
        End::Error(condition) => s.xs.fail(condition, None).await,
        End::ClientClosed => s.xs.close().await,
        End::Done | End::Lost | End::TakenOver(_) | End::Released(_) => {}
    }
}

/// A stanza that only this full JID's session can take: a groupchat
/// message or a presence (routing it again would drop it).
fn for_this_session(xml: &str) -> bool {
    xml.starts_with("<presence")
        || (xml.starts_with("<message")
            && crate::stanza::parse_serialised(xml)
                .is_some_and(|el| el.get_attr("type") == Some("groupchat")))
}

/// Whether a stanza the client never got is owed to the user elsewhere:
/// not the server's own copies for this session (carbons, archive query
/// results), which mean nothing to another resource or offline storage.
fn owed(xml: &str) -> bool {
    // As `Element::write_to` writes them.
    const COPIES: [&str; 3] = [
        r#"<received xmlns="urn:xmpp:carbons:2""#,
        r#"<sent xmlns="urn:xmpp:carbons:2""#,
        r#"<result xmlns="urn:xmpp:mam:"#,
    ];
    !COPIES.iter().any(|c| xml.contains(c))
}

impl<S: Transport> Session<S> {
    async fn run(&mut self, outbox: &Outbox) -> End {
        let idle = Duration::from_secs(self.server.config.c2s.idle_timeout_secs);
        let keepalive = Duration::from_secs(self.server.config.c2s.keepalive_secs);
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        // One timer for the session's life, moved rather than made anew
        // for every wake-up (a later deadline costs no timer wheel work).
        let timer = tokio::time::sleep_until(last_read + idle);
        tokio::pin!(timer);
        loop {
            // Handle everything already parsed before waiting again.
            loop {
                match self.xs.next_buffered() {
                    Ok(Some(StreamEvent::Stanza(el))) => {
                        // Boxed: handling a stanza awaits deep futures that
                        // must not size the idle session's task.
                        if let Err(end) = Box::pin(self.handle_stanza(el, outbox)).await {
                            return end;
                        }
                    }
                    Ok(Some(StreamEvent::End)) => return End::ClientClosed,
                    Ok(Some(StreamEvent::Header(_))) => {
                        return End::Error(StreamCondition::BadFormat);
                    }
                    Ok(None) => break,
                    Err(e) => return Box::pin(self.read_end(e)).await,
                }
            }
            // One timer per session: the nearest of the idle deadline, the
            // next whitespace keepalive and a due ack request.
            let idle_at = last_read + idle;
            let mut wake_at = idle_at.min(last_write + keepalive);
            if let Some(at) = self.request_at {
                wake_at = wake_at.min(at);
            }
            if let Some(at) = self.checkpoint_due() {
                wake_at = wake_at.min(at);
            }
            if timer.deadline() != wake_at {
                timer.as_mut().reset(wake_at);
            }
            tokio::select! {
                r = self.xs.fill(None) => {
                    match r {
                        Ok(()) => last_read = Instant::now(),
                        Err(e) => return Box::pin(self.read_end(e)).await,
                    }
                }
                msg = outbox.recv() => {
                    if let Err(end) = Box::pin(self.write_msg(msg)).await {
                        return end;
                    }
                    last_write = Instant::now();
                }
                _ = &mut timer => {
                    let now = Instant::now();
                    if now >= idle_at {
                        return End::Error(StreamCondition::ConnectionTimeout);
                    }
                    if self.checkpoint_due().is_some_and(|at| now >= at) {
                        self.checkpoint(false).await;
                        if self.request_at.is_none_or(|at| now < at) {
                            continue;
                        }
                    }
                    let data = if self.request_at.is_some_and(|at| now >= at) {
                        self.request_at = None;
                        if let Some(sm) = &mut self.sm {
                            sm.requested();
                        }
                        sm::REQUEST_XML
                    } else {
                        " "
                    };
                    if Box::pin(self.xs.send_raw(data)).await.is_err() {
                        return End::Lost;
                    }
                    last_write = now;
                }
            }
        }
    }

    /// A read that failed: a broken connection is lost (a resumable
    /// session waits for its client), bad input ends the stream with the
    /// error RFC 6120 names.
    async fn read_end(&mut self, e: ReadError) -> End {
        if matches!(e, ReadError::Closed) {
            return End::Lost;
        }
        read_failed(&mut self.xs, e).await;
        End::Done
    }

    /// Writes a batch of queued stanzas in one write (with an ack request
    /// after them when one is due).
    async fn write_msg(&mut self, msg: Outgoing) -> Result<(), End> {
        match msg {
            Outgoing::Stanzas(batch) => {
                let request = self.count_sent(batch.iter());
                let r = if batch.len() == 1 && !request {
                    self.xs.send_raw(&batch[0]).await
                } else {
                    let mut out = String::with_capacity(
                        batch.iter().map(|x| x.len()).sum::<usize>() + sm::REQUEST_XML.len(),
                    );
                    for xml in &batch {
                        out.push_str(xml);
                    }
                    if request {
                        out.push_str(sm::REQUEST_XML);
                    }
                    self.xs.send_raw(&out).await
                };
                r.map_err(|_| End::Lost)
            }
            Outgoing::Close(condition) => Err(End::Error(condition)),
            Outgoing::Takeover(t) => Err(End::TakenOver(t)),
            Outgoing::Released(h) => Err(End::Released(h)),
            Outgoing::Checkpoint => {
                self.record_again().await;
                Ok(())
            }
        }
    }

    /// Counts stanzas about to be written (XEP-0198) and keeps them until
    /// acknowledged; returns whether to ask for an ack after them. Counted
    /// before the write: if it fails, they are sent again on resumption.
    fn count_sent<'x>(&mut self, stanzas: impl Iterator<Item = &'x Arc<str>>) -> bool {
        let Some(sm) = &mut self.sm else {
            return false;
        };
        for xml in stanzas {
            // The record lists the archived messages written and not
            // acknowledged; other stanzas need no record of their own.
            if let Some(pos) = &mut self.archive
                && let Some(id) = super::resume::archive_id(xml, &self.bare)
            {
                pos.written = pos.written.max(id);
                pos.dirty = true;
            }
            sm.sent(xml.clone());
        }
        let cfg = &self.server.config.sm;
        if sm.request_due(cfg.request_every, cfg.request_bytes) {
            self.request_at = None;
            return true;
        }
        if self.request_at.is_none() {
            self.request_at = Some(Instant::now() + Duration::from_millis(cfg.request_after_ms));
        }
        false
    }

    /// Writes one stanza the session itself answers with.
    async fn reply(&mut self, el: &Element) -> Result<(), End> {
        if self.sm.is_none() {
            return self.xs.send(el).await.map_err(|_| End::Lost);
        }
        let xml: Arc<str> = el.to_stream_xml(crate::stanza::NS_CLIENT).into();
        let mut batch = VecDeque::with_capacity(1);
        batch.push_back(xml);
        self.write_msg(Outgoing::Stanzas(batch)).await
    }

    /// The error for a message this client sent, which the user's other
    /// carbons-enabled resources see too if they saw the message
    /// (XEP-0280 §6).
    async fn reply_message_error(&mut self, stanza: &Element, err: StanzaError) -> Result<(), End> {
        match error_reply(stanza, &err) {
            Some(mut r) => {
                r.set_attr("to", self.full.as_str());
                modules::carbons::error_received(&self.server, &self.full, stanza, &r);
                self.reply(&r).await
            }
            None => Ok(()),
        }
    }

    async fn reply_error(&mut self, stanza: &Element, err: StanzaError) -> Result<(), End> {
        match error_reply(stanza, &err) {
            Some(mut r) => {
                // The error comes from the server about the stanza; make sure
                // it is addressed to this client.
                r.set_attr("to", self.full.as_str());
                self.reply(&r).await
            }
            None => Ok(()),
        }
    }

    /// Checks and stamps addresses (RFC 6120 §8.1.2), then dispatches;
    /// stream management's elements are not stanzas and are not counted.
    async fn handle_stanza(&mut self, el: Element, outbox: &Outbox) -> Result<(), End> {
        if el.ns == NS_CSI {
            return self.client_state(&el, outbox).await;
        }
        if el.ns == NS_SM {
            return self.handle_sm(el).await;
        }
        let r = self.handle_counted(el).await;
        if let Some(sm) = &mut self.sm {
            sm.handled();
        }
        r
    }

    /// A client state nonza (XEP-0352), for this session's actor, which
    /// owns the filter. §5.1 (in-order processing): what the new state
    /// sends (the presence held while inactive) is written before anything
    /// the client sent after the nonza is answered, so the actor is waited
    /// for and what it queued is written at once.
    async fn client_state(&mut self, el: &Element, outbox: &Outbox) -> Result<(), End> {
        let state = ClientState::of(el).map_err(End::Error)?;
        // Fails only when the actor stopped: the session is ending anyway.
        let _ = self.addr.send(state).await;
        match outbox.take_stanzas() {
            Some(batch) => self.write_msg(Outgoing::Stanzas(batch)).await,
            None => Ok(()),
        }
    }

    async fn handle_counted(&mut self, el: Element) -> Result<(), End> {
        let mut stanza =
            Stanza::try_from(el).map_err(|_| End::Error(StreamCondition::UnsupportedStanzaType))?;
        match &stanza {
            Stanza::Message(_) => {
                crate::hot_counter!("starling_c2s_stanzas_received_total", "kind" => "message")
            }
            Stanza::Presence(_) => {
                crate::hot_counter!("starling_c2s_stanzas_received_total", "kind" => "presence")
            }
            Stanza::Iq(_) => {
                crate::hot_counter!("starling_c2s_stanzas_received_total", "kind" => "iq")
            }
        }
        .increment(1);
        let el = stanza.el_mut();
        if let Some(from) = el.get_attr("from") {
            // A client may only name itself (§8.1.2.1, §4.9.3.9).
            let ok = jid::Jid::new(from)
                .map(|j| j.as_str() == self.full || j.as_str() == self.bare)
                .unwrap_or(false);
            if !ok {
                return Err(End::Error(StreamCondition::InvalidFrom));
            }
        }
        el.set_attr("from", self.full.as_str());
        if el.name == "presence" {
            // Only this session says which nick a room was asked for.
            el.remove_attr(crate::services::muc::REQUESTED_NICK);
        }
        if let Some(to) = el.get_attr("to") {
            match jid::Jid::new(to) {
                Ok(j) => {
                    let normalized = j.to_string();
                    if el.name == "presence" && normalized != to {
                        // The room nick changed under resourceprep: the room
                        // says so with status 210 (XEP-0045 §7.2.3).
                        crate::services::muc::note_requested_nick(&self.server, el, &j);
                    }
                    el.set_attr("to", normalized);
                }
                Err(_) => {
                    let mut orig = el.clone();
                    orig.remove_attr("to");
                    return self
                        .reply_error(&orig, Condition::JidMalformed.into())
                        .await;
                }
            }
        }
        // Someone else may answer this at once, maybe from another node:
        // the session's route must be there first (it is written with the
        // initial presence otherwise). A node without a registry group
        // writes none (and publishes every session when it joins one).
        if !self.route_asked
            && !matches!(stanza, Stanza::Presence(_))
            && self.server.storage.store.registry_active()
            && stanza
                .el_mut()
                .get_attr("to")
                .is_some_and(|to| !self.server.config.domains.iter().any(|d| d == to))
        {
            self.route_asked = true;
            let _ = self.user.send(ToUser::Publish { session: self.id }).await;
        }
        match stanza {
            Stanza::Iq(iq) => self.handle_iq(iq).await,
            Stanza::Message(Message { mut el, .. }) => {
                if el.get_attr("to").is_none() {
                    // §10.3: no 'to' means the sender's own bare JID.
                    el.set_attr("to", self.bare.as_str());
                }
                if self.outbound_hooks(Event::MessageOut, &mut el) == Flow::Handled {
                    return Ok(());
                }
                // With or without stream management: a client without it
                // has no acknowledgement that a commit first would keep
                // true, and would wait for a Raft commit per message. Its
                // writes go to the node's follower: it has no `h` to hold.
                let routed = im::route_message_behind(&self.server, el, &mut self.behind).await;
                if self.sm.is_some() || self.server.archive_followups.busy() {
                    self.prune_behind().await;
                } else {
                    self.server
                        .archive_followups
                        .hand_over(self.behind.drain(..));
                }
                match routed {
                    Ok(()) => Ok(()),
                    Err(b) => {
                        let (e, el) = *b;
                        self.reply_message_error(&el, e).await
                    }
                }
            }
            Stanza::Presence(Presence { mut el, .. }) => {
                if self.outbound_hooks(Event::PresenceOut, &mut el) == Flow::Handled {
                    return Ok(());
                }
                // Errors carry the addresses and id, not the payload
                // (RFC 6120 §8.3.1 makes the payload optional).
                let shell = shell_of(&el);
                // Presence changes the user's online state: its actor
                // applies RFC 6121 to it, one operation at a time.
                let msg = ToUser::Presence {
                    session: self.id,
                    el,
                };
                match self.user.send(msg).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => self.reply_error(&shell, e).await,
                    Err(_) => {
                        self.reply_error(&shell, Condition::InternalServerError.into())
                            .await
                    }
                }
            }
        }
    }

    /// The modules' hooks for a stanza this session sent (the registry
    /// is asked first, so a server without such hooks pays one lookup).
    fn outbound_hooks(&self, event: Event, el: &mut Element) -> Flow {
        let modules = &self.server.modules;
        if !modules.has_hooks(event) {
            return Flow::Pass;
        }
        let ctx = HookCtx {
            server: &self.server,
            user: &self.bare,
            full: Some(&self.full),
        };
        modules.run_hooks(event, &ctx, el)
    }

    async fn handle_iq(&mut self, iq: Iq) -> Result<(), End> {
        let Iq { kind, el } = iq;
        let Some(kind) = kind.filter(|_| el.get_attr("id").is_some()) else {
            return self.reply_error(&el, Condition::BadRequest.into()).await;
        };
        let to = el.get_attr("to").map(str::to_owned);
        let dest = match to.as_deref().map(|t| im::destination(&self.server, t)) {
            None => None,
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => return self.reply_error(&el, e.into()).await,
        };
        // XEP-0191: no IQ passes between the user and a JID either blocks.
        if let Some(refusal) = modules::blocking::refuse_iq(&self.server, &self.bare, &el, dest) {
            return match refusal {
                modules::blocking::Refusal::Drop => Ok(()),
                modules::blocking::Refusal::Reply(error) => self.reply(&error).await,
            };
        }
        // IQs to a hosted service (a MUC room, an occupant) go to it,
        // wherever it runs; it answers.
        if let Some(Destination::Service { kind: service, .. }) = dest {
            // A component (XEP-0114) also gets the answers to its requests.
            if kind.is_request()
                || service == crate::services::ServiceKind::Component
                || to.as_deref().is_some_and(|t| im::split(t).1.is_some())
            {
                crate::services::route(&self.server, el).await;
            }
            return Ok(());
        }
        // IQs to another domain (requests and answers alike) go to its
        // server over federation; a failure comes back as an error reply.
        if let Some(Destination::Remote { .. }) = dest {
            crate::s2s::send(&self.server, el);
            return Ok(());
        }
        // IQs to a full JID go to that session, wherever it is bound.
        if let Some(to) = &to
            && im::split(to).1.is_some()
        {
            return self.route_iq(to, el).await;
        }
        if !kind.is_request() {
            // Answers to the server (e.g. pushes) need nothing more, but
            // for a capabilities query's (XEP-0115): its features, once
            // verified, tell which PEP notifications this client wants;
            // and an app server's to a push notification (XEP-0357),
            // addressed to the account it was published for.
            if let Some(Destination::Account {
                bare,
                resource: None,
                exists: true,
            }) = dest
                && modules::push::answer(&self.server, bare, &self.full, &el).await
            {
                return Ok(());
            }
            modules::caps::answer(&self.server, &self.full, &el).await;
            return Ok(());
        }
        let payloads: Vec<&Element> = el.elements().collect();
        let [payload] = payloads.as_slice() else {
            return self.reply_error(&el, Condition::BadRequest.into()).await;
        };
        let target = match dest {
            None => IqTarget::Own,
            Some(Destination::Account { bare, .. }) if bare == self.bare => IqTarget::Own,
            Some(Destination::Server { domain, .. }) => IqTarget::Server(domain),
            Some(Destination::Account {
                bare, exists: true, ..
            }) => IqTarget::Account(bare),
            Some(Destination::Account { bare, .. }) => IqTarget::NoAccount(bare),
            Some(Destination::Remote { .. }) | Some(Destination::Service { .. }) => return Ok(()),
        };
        let origin = Origin {
            bare: &self.bare,
            full: &self.full,
            session_id: self.id,
        };
        let ctx = IqCtx {
            server: &self.server,
            origin: &origin,
            target,
            iq: &el,
            payload,
            set: kind == IqType::Set,
        };
        let result = modules::handle_iq(&ctx).await;
        crate::hot_counter!("starling_stanzas_routed_total", "kind" => "iq").increment(1);
        match result {
            Ok(modules::IqReply::Sent) => Ok(()),
            Ok(modules::IqReply::Result(payload)) => {
                let mut r = iq_result(&el, payload);
                r.set_attr("to", self.full.as_str());
                self.reply(&r).await
            }
            Err(e) => self.reply_error(&el, e).await,
        }
    }

    /// An IQ to a full JID: delivered to that session, or answered with
    /// `<service-unavailable/>` (RFC 6121 §8.5.3.2.3).
    async fn route_iq(&mut self, to: &str, el: Element) -> Result<(), End> {
        let reply_needed = matches!(el.get_attr("type"), Some("get" | "set"));
        // Waits for another node's answer, as a message to a full JID
        // does: a request to a session that is gone there must still be
        // answered.
        match im::deliver_to_full_acked(&self.server, to, el).await {
            Ok(()) => Ok(()),
            Err(el) if reply_needed => {
                self.reply_error(&el, Condition::ServiceUnavailable.into())
                    .await
            }
            Err(_) => Ok(()),
        }
    }
}

/// XEP-0198 on the session's side.
impl<S: Transport> Session<S> {
    /// `<enable/>`, `<r/>`, `<a/>` (and what may not come on a bound stream).
    async fn handle_sm(&mut self, el: Element) -> Result<(), End> {
        match el.name.as_str() {
            "enable" => {
                let (reply, enabled) = self.enable_sm(&el);
                self.send_nonza(&reply).await?;
                if enabled {
                    self.after_enable().await;
                }
                Ok(())
            }
            "r" => {
                if self.sm.is_none() {
                    return self
                        .send_nonza(&sm::failed_xml("unexpected-request", ""))
                        .await;
                }
                self.settle().await;
                let a = sm::ack_xml(self.sm.as_ref().map_or(0, |sm| sm.h_in));
                self.send_nonza(&a).await
            }
            "a" => {
                let Some(sm) = &mut self.sm else {
                    return self
                        .send_nonza(&sm::failed_xml("unexpected-request", ""))
                        .await;
                };
                let Some(h) = sm::parse_h(el.get_attr("h")) else {
                    // Not a number within 0..2^32: not valid XEP-0198.
                    return Err(End::Error(StreamCondition::InvalidXml));
                };
                match sm.ack(h) {
                    Ok(()) => {
                        if sm.unacked().next().is_none() {
                            self.request_at = None;
                        }
                        self.after_ack().await;
                        Ok(())
                    }
                    Err(too_high) => {
                        // §4: the stream ends; the stanzas stay owed.
                        let condition = StreamCondition::UndefinedCondition;
                        let error = crate::stanza::stream_error_with_app(
                            condition,
                            &sm::too_high_xml(&too_high),
                        );
                        self.xs.fail_with(condition, &error).await;
                        Err(End::Done)
                    }
                }
            }
            // Resumption is instead of binding, not on a bound stream.
            "resume" => {
                self.send_nonza(&sm::failed_xml("unexpected-request", ""))
                    .await
            }
            _ => Err(End::Error(StreamCondition::UnsupportedStanzaType)),
        }
    }

    /// XEP-0198 `<enable/>` (on the stream, or inside a XEP-0386 bind):
    /// the `<enabled/>` or `<failed/>` to answer with, and whether it was
    /// enabled (then `after_enable` runs once the answer is written).
    fn enable_sm(&mut self, el: &Element) -> (String, bool) {
        if !self.server.config.sm.enabled {
            return (sm::failed_xml("feature-not-implemented", ""), false);
        }
        if self.sm.is_some() {
            return (sm::failed_xml("unexpected-request", ""), false);
        }
        let ours = self.server.config.sm.resume_timeout_secs;
        // §5: 'resume' (and an id) only if the session can be
        // resumed: not with a resumption time of 0.
        let resume = matches!(el.get_attr("resume"), Some("true" | "1")) && ours > 0;
        let max = sm::parse_h(el.get_attr("max"))
            .filter(|m| *m > 0)
            .map_or(ours, |m| m.min(ours));
        let id = resume.then(|| sm::new_id(self.server.storage.store.node_id()));
        let enabled = match &id {
            Some(id) => format!("<enabled xmlns='{NS_SM}' id='{id}' resume='true' max='{max}'/>"),
            None => format!("<enabled xmlns='{NS_SM}'/>"),
        };
        self.sm = Some(Sm::new(id, max));
        metrics::counter!("starling_sm_enabled_total", "resume" => if resume { "true" } else { "false" })
            .increment(1);
        (enabled, true)
    }

    /// Once `<enabled/>` is written: a resumable session is listed (and,
    /// in a cluster, recorded).
    async fn after_enable(&mut self) {
        if !self.resumable() {
            return;
        }
        self.register_resumable();
        if self.server.storage.store.registry_active() {
            // Nothing archived before now is owed to this session.
            let floor = crate::modules::mam::last_id(&self.server.storage, &self.bare)
                .ok()
                .flatten()
                .unwrap_or(0);
            self.archive = Some(ArchivePosition::new(floor));
            self.checkpoint(true).await;
        }
    }

    /// XEP-0386: the session is bound (its route recorded); what the bind
    /// asked inline is done, then SASL2's `<success/>` with `<bound/>`
    /// and the bound stream's features (XEP-0388: no restart). Initial
    /// presence is the client's to send.
    async fn bound2(&mut self, b: Bind2) -> Result<(), End> {
        im::clear_archived_offline(&self.server, self.bare.as_str()).await;
        if b.carbons {
            let msg = ToUser::Carbons {
                session: self.id,
                enabled: true,
            };
            if !matches!(self.user.send(msg).await, Ok(Ok(()))) {
                return Err(End::Error(StreamCondition::InternalServerError));
            }
        }
        let mut out = b.success_head;
        out.push_str("<bound xmlns='urn:xmpp:bind:0'>");
        if let Some(md) = modules::mam::bind2_metadata(&self.server, &self.bare) {
            md.write_to(&mut out, "");
        }
        let mut enabled = false;
        if let Some(el) = &b.enable_sm {
            let (reply, on) = self.enable_sm(el);
            out.push_str(&reply);
            enabled = on;
        }
        out.push_str("</bound></success><stream:features>");
        for f in self
            .server
            .modules
            .stream_features(modules::Stage::PostAuth, &self.server.config)
        {
            out.push_str(f);
        }
        out.push_str("</stream:features>");
        self.send_nonza(&out).await?;
        if enabled {
            self.after_enable().await;
        }
        Ok(())
    }

    async fn send_nonza(&mut self, xml: &str) -> Result<(), End> {
        self.xs.send_raw(xml).await.map_err(|_| End::Lost)
    }

    /// Whether a lost connection leaves this session waiting for its client.
    fn resumable(&self) -> bool {
        self.sm
            .as_ref()
            .is_some_and(|sm| sm.id.is_some() && sm.max > 0)
    }

    /// Lists the session in the node's resumable table.
    fn register_resumable(&mut self) {
        let addr = &self.addr;
        let Some(sm) = &self.sm else { return };
        let Some(id) = &sm.id else { return };
        self.server.resumable.insert(
            id.clone(),
            sm::Entry {
                bare: self.bare.as_str().into(),
                session: self.id,
                generation: self.generation,
                counts: sm.counts(),
                takeover: addr.clone().recipient(),
                close: addr.clone().recipient(),
            },
        );
    }

    /// The connection is gone: waits up to `max` seconds for a resumption
    /// (stanzas keep queueing in the outbox, within its bounds). `None`
    /// when the session is to end (timed out, closed, or replaced).
    async fn wait_detached(&mut self, outbox: &Outbox) -> Option<Control> {
        let max = self.sm.as_ref().map_or(0, |sm| sm.max);
        tracing::debug!(max, "connection lost; waiting for resumption");
        metrics::gauge!("starling_sm_detached_sessions").increment(1.0);
        let deadline = Instant::now() + Duration::from_secs(u64::from(max));
        // XEP-0357: with a push registration of this resource, what its
        // client never had (unacknowledged, or queued since) is notified.
        let full = self.full.clone();
        let resource = im::split(&full).1.unwrap_or_default();
        let mut push = modules::push::has_registration(&self.server, &self.bare, resource)
            .then(PushWatch::default);
        if let Some(w) = &mut push {
            let owed: Vec<Arc<str>> = self
                .sm
                .as_ref()
                .map(|sm| sm.unacked().cloned().collect())
                .unwrap_or_default();
            let queued = outbox.peek();
            w.seen = queued.len();
            w.notify(
                &self.server,
                &self.bare,
                resource,
                owed.iter().chain(&queued),
            )
            .await;
        }
        let r = loop {
            tokio::select! {
                c = outbox.control_or_queued(push.as_ref().map(|w| w.seen)) => match c {
                    Ok(Control::Checkpoint) => self.record_again().await,
                    Ok(c) => break Some(c),
                    Err(new) => {
                        if let Some(w) = &mut push {
                            w.seen += new.len();
                            w.notify(&self.server, &self.bare, resource, new.iter()).await;
                        }
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    metrics::counter!("starling_sm_timed_out_total").increment(1);
                    break None;
                }
            }
        };
        metrics::gauge!("starling_sm_detached_sessions").decrement(1.0);
        r
    }

    /// Gives the session to the connection that resumes it: what was
    /// queued goes with it, the old connection (if still open) is closed.
    async fn hand_over(&mut self, outbox: &Outbox, t: Takeover, connected: bool) {
        self.settle().await;
        let pending = outbox.end();
        let Some(sm) = self.sm.take() else { return };
        if let Some(id) = &sm.id {
            self.server.resumable.remove(id, self.generation);
        }
        let archive = self.acked_archive(&sm);
        if let Some(state) = sm.detach(pending, archive) {
            let _ = t.reply.send(Some(TakenOver {
                sm: state,
                full: self.full.clone(),
            }));
        }
        if connected {
            self.xs
                .fail(
                    StreamCondition::Conflict,
                    Some("resumed on another connection"),
                )
                .await;
        }
    }

    /// How far the client acknowledged the user's archive (0 without a
    /// record).
    fn acked_archive(&self, sm: &Sm) -> u64 {
        self.archive.as_ref().map_or(0, |pos| {
            super::resume::acked_position(sm.unacked(), &self.bare, pos.written).max(pos.floor)
        })
    }

    /// When a checkpoint left pending by `CHECKPOINT_EVERY` is due.
    fn checkpoint_due(&self) -> Option<Instant> {
        let pos = self.archive.as_ref().filter(|p| p.dirty)?;
        Some(pos.checkpoint_at? + super::resume::CHECKPOINT_EVERY)
    }

    /// Writes the session's record (`resume::Record`) if it changed and
    /// the last write is old enough (or `force`).
    /// Writes the record again (the node joined a new registry epoch, which
    /// starts empty); a session that enabled resumption while the node had
    /// no peers starts keeping one.
    async fn record_again(&mut self) {
        let Some(sm) = &self.sm else { return };
        if sm.id.is_none() || !self.server.storage.store.registry_active() {
            return;
        }
        if self.archive.is_none() {
            // Nothing before the oldest unacknowledged archived message is
            // owed; without one, nothing archived before now.
            let newest = crate::modules::mam::last_id(&self.server.storage, &self.bare)
                .ok()
                .flatten()
                .unwrap_or(0);
            let floor = super::resume::acked_position(sm.unacked(), &self.bare, newest);
            self.archive = Some(ArchivePosition::new(floor));
        }
        self.checkpoint(true).await;
    }

    /// After an ack: the record is written again only when the client's
    /// position in the archive moved (acks that cover only presence, IQ
    /// results and the like write nothing: an idle user's presence traffic
    /// costs no registry writes).
    async fn after_ack(&mut self) {
        let (Some(sm), Some(pos)) = (&self.sm, &self.archive) else {
            return;
        };
        if self.acked_archive(sm) != pos.recorded {
            if let Some(pos) = &mut self.archive {
                pos.dirty = true;
            }
            self.checkpoint(false).await;
        }
    }

    /// Waits for the archive writes of the messages delivered ahead of
    /// them (`behind`), so that the `h` about to be reported or recorded
    /// counts only messages in the archive.
    async fn settle(&mut self) {
        while let Some(write) = self.behind.pop_front() {
            write.await;
        }
    }

    /// Drops the writes already ended, and waits for the oldest while too
    /// many are in flight (a client that never asks for acks).
    async fn prune_behind(&mut self) {
        im::prune_behind(&mut self.behind).await;
    }

    async fn checkpoint(&mut self, force: bool) {
        let Some(sm) = &self.sm else { return };
        let Some(id) = sm.id.clone() else { return };
        let Some(pos) = &self.archive else { return };
        if !force
            && pos
                .checkpoint_at
                .is_some_and(|at| at.elapsed() < super::resume::CHECKPOINT_EVERY)
        {
            return;
        }
        // The record's `h` counts only what is in the archive.
        self.settle().await;
        let Some(sm) = &self.sm else { return };
        let rec = self.record(sm, false);
        if let Some(pos) = &mut self.archive {
            pos.recorded = rec.acked_archive;
            pos.dirty = false;
            pos.checkpoint_at = Some(Instant::now());
        }
        if let Err(e) = super::resume::write(&self.server, &id, &rec).await {
            tracing::debug!(error = %e, "could not write the stream management record");
        }
    }

    fn record(&self, sm: &Sm, released: bool) -> super::resume::Record {
        self.record_with(sm, released, self.presence())
    }

    /// The session's last available presence, serialised, and what it asked for.
    fn presence(&self) -> (Option<String>, super::resume::Flags) {
        self.server.router.with_resources(&self.bare, |rs| {
            let Some(r) = rs.iter().find(|r| r.handle.id == self.id) else {
                return (None, Default::default());
            };
            let presence = r
                .presence
                .as_ref()
                .map(|p| p.to_stream_xml(crate::stanza::NS_CLIENT));
            let flags = super::resume::Flags {
                interested: r.interested,
                carbons: r.carbons,
                blocklist: r.blocklist,
            };
            (presence, flags)
        })
    }

    fn record_with(
        &self,
        sm: &Sm,
        released: bool,
        (presence, flags): (Option<String>, super::resume::Flags),
    ) -> super::resume::Record {
        let unacked = sm
            .unacked()
            .take(super::resume::MAX_LISTED)
            .map(|x| super::resume::archive_id(x, &self.bare).unwrap_or(0))
            .collect();
        super::resume::Record {
            bare: self.bare.clone(),
            full: self.full.clone(),
            node: self.server.storage.store.node_id(),
            session: self.id,
            max: sm.max,
            h_in: sm.h_in,
            acked_archive: self.acked_archive(sm),
            presence,
            released,
            acked_h: sm.acked(),
            unacked,
            flags,
            pending: Vec::new(),
            ended_until: 0,
            refused_sent: None,
        }
    }

    /// `Some(sent)` when a client that reports `h` claims more than the
    /// session sent: it is not let go (the resuming node fails the
    /// resumption, as this node would).
    fn refuse_release(&self, h: u32) -> Option<u32> {
        let counts = self.sm.as_ref()?.counts();
        (!counts.valid(h)).then(|| counts.get().0)
    }

    /// Lets the session go to another node, whose client handled `h` of
    /// its stanzas: records exactly how far the client got in the archive
    /// (the new node replays the rest from there), hands on what the
    /// archive does not hold (XEP-0198 §4), and leaves without telling
    /// anyone it went unavailable.
    async fn release(&mut self, outbox: &Outbox, h: u32, connected: bool) {
        self.settle().await;
        // What this node delivered ahead of its archive write, to this
        // session too, is in the archive the new node replays from.
        self.server.storage.store.sync_behind().await;
        let server = self.server.clone();
        let presence = self.presence();
        let owned = server.router.unbind(&self.bare, self.id);
        let pending = outbox.end();
        let Some(mut sm) = self.sm.take() else { return };
        let _ = sm.ack(h);
        for xml in pending {
            sm.sent(xml);
        }
        let id = sm.id.clone().unwrap_or_default();
        server.resumable.remove(&id, self.generation);
        let mut rec = self.record_with(&sm, true, presence);
        // What the client does not have and the archive does not hold:
        // messages route again from here; what is for this full JID only
        // (a room's groupchat and presence) goes in the record, for the
        // node that resumes the session to send.
        let mut reroute = Vec::new();
        for xml in sm.into_unacked() {
            if !owed(&xml) || super::resume::archive_id(&xml, &self.bare).is_some() {
                continue;
            }
            if for_this_session(&xml) {
                rec.pending.push(xml.to_string());
            } else {
                reroute.push(xml);
            }
        }
        if let Err(e) = super::resume::write(&server, &id, &rec).await {
            tracing::warn!(error = %e, "could not record the released session");
        }
        let detach = ToUser::Detach {
            session: self.id,
            owned,
            silent: true,
        };
        if self.user.send(detach).await.is_err() {
            tracing::warn!("the user actor was gone before the session was released");
        }
        for xml in reroute {
            im::reroute(&server, &xml).await;
        }
        metrics::counter!("starling_sm_released_total").increment(1);
        if connected {
            self.xs
                .fail(StreamCondition::Conflict, Some("resumed on another node"))
                .await;
        }
    }

    /// Tells the client its session is back and writes what it had not
    /// acknowledged (counted again).
    /// With SASL2 (XEP-0198 §SASL2 inline resumption), `<resumed/>` is
    /// inside `<success/>`, after the full JID, and the stream's features
    /// follow (XEP-0388: no restart).
    async fn resumed(
        &mut self,
        resend: VecDeque<Arc<str>>,
        sasl2: Option<String>,
    ) -> Result<(), End> {
        let Some(sm) = &self.sm else { return Ok(()) };
        let resumed = format!(
            "<resumed xmlns='{NS_SM}' previd='{}' h='{}'/>",
            sm.id.as_deref().unwrap_or_default(),
            sm.h_in
        );
        match sasl2 {
            None => self.send_nonza(&resumed).await?,
            Some(mut out) => {
                out.push_str("<authorization-identifier>");
                out.push_str(&crate::xml::escape(&self.full));
                out.push_str("</authorization-identifier>");
                out.push_str(&resumed);
                out.push_str("</success><stream:features/>");
                self.send_nonza(&out).await?;
            }
        }
        if resend.is_empty() {
            return Ok(());
        }
        self.write_msg(Outgoing::Stanzas(resend)).await
    }
}

/// The stanza without its payload.
fn shell_of(el: &Element) -> Element {
    Element {
        name: el.name.clone(),
        ns: el.ns.clone(),
        attrs: el.attrs.clone(),
        children: Vec::new(),
    }
}

/// What a session waiting for resumption has notified its client's app
/// servers of (XEP-0357).
#[derive(Default)]
struct PushWatch {
    /// Stanzas of the outbox already looked at.
    seen: usize,
    /// Important stanzas owed to the client so far.
    count: u64,
}

impl PushWatch {
    /// Notifies if any of `stanzas` is important.
    async fn notify<'a>(
        &mut self,
        server: &Server,
        bare: &str,
        resource: &str,
        stanzas: impl Iterator<Item = &'a Arc<str>>,
    ) {
        let mut last = None;
        for el in stanzas.filter_map(|xml| im::parse_stored(xml)) {
            if modules::push::important(&el) {
                self.count += 1;
                last = Some(el);
            }
        }
        if let Some(last) = last {
            modules::push::detached(server, bare, resource, self.count, &last).await;
        }
    }
}
