//! A bound client session: one actix actor per connection. Its address
//! (a [`SessionHandle`] in the router) is the only way in: other sessions,
//! other nodes and the server send it typed [`ToSession`] messages. The
//! actor owns the stream through one task in its context that reads the
//! client's stanzas, stamps and checks their addresses, hands them to IM
//! routing or the modules, and writes what the actor's outbox receives.

use super::csi::{ClientState, Csi, NS_CSI};
use super::im::{self, Origin};
use super::outbox::{Outbox, Outgoing};
use crate::modules::{self, Event, Flow, HookCtx, IqCtx, IqTarget};
use crate::net::transport::Transport;
use crate::router::{Destination, Gate, SessionHandle, ToSession, ToUser, UserHandle};
use crate::server::Server;
use crate::stanza::StreamCondition;
use crate::stanza::{
    Condition, Iq, IqType, Message, Presence, Stanza, StanzaError, error_reply, iq_result,
};
use crate::stream::negotiate::Bound;
use crate::stream::xmlstream::XmlStream;
use crate::stream::xmlstream::read_failed;
use crate::xml::{Element, StreamEvent};
use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// Why the session loop ended.
enum End {
    /// Already closed (stream error sent, or the peer went away).
    Done,
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
    /// XEP-0352: holds presence back while the client is inactive.
    csi: Csi,
}

impl Actor for C2s {
    type Context = Context<Self>;
}

impl Handler<ToSession> for C2s {
    type Result = ();

    fn handle(&mut self, msg: ToSession, _: &mut Context<Self>) {
        match msg {
            ToSession::Stanza(xml) => {
                let (outbox, server) = (&self.outbox, &self.server);
                self.csi.pass(xml, |xml| queue(outbox, server, xml));
            }
            ToSession::Close(condition) => self.outbox.close(condition),
        }
    }
}

impl Handler<ClientState> for C2s {
    type Result = ();

    fn handle(&mut self, state: ClientState, _: &mut Context<Self>) {
        let (outbox, server) = (&self.outbox, &self.server);
        self.csi.set(state, |xml| queue(outbox, server, xml));
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
    /// This session's actor, told the client's state (XEP-0352).
    csi: actix::Recipient<ClientState>,
    /// Counts the connection until it closes (`net::max_connections`).
    _slot: crate::net::ConnSlot,
    /// The user actor was asked to write this session's route
    /// (`ToUser::Publish`) before a stanza to someone else.
    route_asked: bool,
}

/// Starts the session actor of a bound connection on the current arbiter.
/// The session's state is boxed before its task starts, so the long-lived
/// task holds a pointer to it rather than copies of it at every level of
/// `async fn` nesting.
pub fn start<S: Transport + 'static>(
    server: Arc<Server>,
    bound: Bound<S>,
    slot: crate::net::ConnSlot,
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
        let bare = bound.bare.to_string();
        let resource = bound.full.resource().to_string();
        let id = handle.id;
        let (old, user) = server.router.bind(&bare, &resource, handle, || {
            super::user::start(server.clone(), &bare)
        });
        if let Some(old) = old {
            // RFC 6120 §7.7.2.2: the new session replaces the old one.
            old.close(StreamCondition::Conflict);
        }
        let span = tracing::info_span!("c2s", jid = %bound.full);
        let s = Box::new(Session {
            server: server.clone(),
            xs: bound.stream,
            bare,
            full: bound.full.to_string(),
            id,
            user,
            csi: ctx.address().recipient(),
            _slot: slot,
            route_asked: false,
        });
        let csi = Csi::new(gate, server.config.csi.max_held, &s.full);
        let task = serve(s, outbox.clone()).instrument(span);
        ctx.spawn(actix::fut::wrap_future::<_, C2s>(task).map(|(), _, ctx| ctx.stop()));
        C2s {
            outbox,
            server,
            csi,
        }
    });
}

/// The stream task: serves the bound stream to its end.
async fn serve<S: Transport>(mut s: Box<Session<S>>, outbox: Arc<Outbox>) {
    tracing::info!("session bound");
    let attach = ToUser::Attach {
        session: s.id,
        full: s.full.clone(),
    };
    let end = match s.user.send(attach).await {
        Ok(Ok(())) => s.run(&outbox).await,
        Ok(Err(_)) | Err(_) => {
            tracing::error!("could not record the session's route");
            End::Error(StreamCondition::InternalServerError)
        }
    };
    Box::pin(finish(&mut s, &outbox, end)).await;
    tracing::info!("session ended");
}

/// Leaves the router, has the user actor tell contacts and remove the
/// route, re-routes what was still queued and closes the stream (boxed by
/// the caller: it runs once).
async fn finish<S: Transport>(s: &mut Session<S>, outbox: &Outbox, end: End) {
    let server: &Server = &s.server;
    // Leave the router first, so nothing more is queued here, then hand on
    // what was queued but never written: it is owed to the user.
    let owned = server.router.unbind(&s.bare, s.id);
    let leftovers = outbox.end();
    let detach = ToUser::Detach {
        session: s.id,
        owned,
    };
    if s.user.send(detach).await.is_err() {
        tracing::warn!("the user actor was gone before the session ended");
    }
    for xml in leftovers {
        im::reroute(server, &xml).await;
    }
    match end {
        End::Error(StreamCondition::SeeOtherHost) => match &server.config.cluster.see_other_host {
            Some(host) => s.xs.fail_see_other_host(host).await,
            None => s.xs.fail(StreamCondition::SystemShutdown, None).await,
        },
        End::Error(condition) => s.xs.fail(condition, None).await,
        End::ClientClosed => s.xs.close().await,
        End::Done => {}
    }
}

impl<S: Transport> Session<S> {
    async fn run(&mut self, outbox: &Outbox) -> End {
        let idle = Duration::from_secs(self.server.config.c2s.idle_timeout_secs);
        let keepalive = Duration::from_secs(self.server.config.c2s.keepalive_secs);
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        loop {
            // Handle everything already parsed before waiting again.
            loop {
                match self.xs.next_buffered() {
                    Ok(Some(StreamEvent::Stanza(el))) => {
                        // Boxed: handling a stanza awaits deep futures that
                        // must not size the idle session's task.
                        if let Err(end) = Box::pin(self.handle_stanza(el)).await {
                            return end;
                        }
                    }
                    Ok(Some(StreamEvent::End)) => return End::ClientClosed,
                    Ok(Some(StreamEvent::Header(_))) => {
                        return End::Error(StreamCondition::BadFormat);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        Box::pin(read_failed(&mut self.xs, e)).await;
                        return End::Done;
                    }
                }
            }
            // One timer per session: the nearer of the idle deadline and
            // the next whitespace keepalive.
            let idle_at = last_read + idle;
            let wake_at = idle_at.min(last_write + keepalive);
            tokio::select! {
                r = self.xs.fill(None) => {
                    match r {
                        Ok(()) => last_read = Instant::now(),
                        Err(e) => {
                            Box::pin(read_failed(&mut self.xs, e)).await;
                            return End::Done;
                        }
                    }
                }
                msg = outbox.recv() => {
                    if let Err(end) = Box::pin(self.write_msg(msg)).await {
                        return end;
                    }
                    last_write = Instant::now();
                }
                _ = tokio::time::sleep_until(wake_at) => {
                    if Instant::now() >= idle_at {
                        return End::Error(StreamCondition::ConnectionTimeout);
                    }
                    if Box::pin(self.xs.send_raw(" ")).await.is_err() {
                        return End::Done;
                    }
                    last_write = Instant::now();
                }
            }
        }
    }

    /// Writes a batch of queued stanzas in one write.
    async fn write_msg(&mut self, msg: Outgoing) -> Result<(), End> {
        match msg {
            Outgoing::Stanzas(batch) => {
                let r = if batch.len() == 1 {
                    self.xs.send_raw(&batch[0]).await
                } else {
                    let mut out = String::with_capacity(batch.iter().map(|x| x.len()).sum());
                    for xml in &batch {
                        out.push_str(xml);
                    }
                    self.xs.send_raw(&out).await
                };
                r.map_err(|_| End::Done)
            }
            Outgoing::Close(condition) => Err(End::Error(condition)),
        }
    }

    async fn reply(&mut self, el: &Element) -> Result<(), End> {
        self.xs.send(el).await.map_err(|_| End::Done)
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

    /// Checks and stamps addresses (RFC 6120 §8.1.2), then dispatches.
    async fn handle_stanza(&mut self, el: Element) -> Result<(), End> {
        // A client state nonza (XEP-0352) is for this session's actor.
        if el.ns == NS_CSI {
            self.csi.do_send(ClientState::of(&el).map_err(End::Error)?);
            return Ok(());
        }
        let mut stanza =
            Stanza::try_from(el).map_err(|_| End::Error(StreamCondition::UnsupportedStanzaType))?;
        let kind = match &stanza {
            Stanza::Message(_) => "message",
            Stanza::Presence(_) => "presence",
            Stanza::Iq(_) => "iq",
        };
        metrics::counter!("starling_c2s_stanzas_received_total", "kind" => kind).increment(1);
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
        if let Some(to) = el.get_attr("to") {
            match jid::Jid::new(to) {
                Ok(j) => {
                    let normalized = j.to_string();
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
                match im::route_message(&self.server, el).await {
                    Ok(()) => Ok(()),
                    Err(b) => {
                        let (e, el) = *b;
                        self.reply_error(&el, e).await
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
        // IQs to a full JID go to that session, wherever it is bound.
        if let Some(to) = &to
            && im::split(to).1.is_some()
        {
            return match dest {
                Some(Destination::Remote { .. }) => {
                    self.reply_error(&el, Condition::RemoteServerNotFound.into())
                        .await
                }
                _ => self.route_iq(to, el).await,
            };
        }
        if !kind.is_request() {
            // Answers to the server (e.g. pushes) need nothing more.
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
            Some(Destination::Remote { .. }) => {
                return self
                    .reply_error(&el, Condition::RemoteServerNotFound.into())
                    .await;
            }
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
        metrics::counter!("starling_stanzas_routed_total", "kind" => "iq").increment(1);
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

/// The stanza without its payload.
fn shell_of(el: &Element) -> Element {
    Element {
        name: el.name.clone(),
        ns: el.ns.clone(),
        attrs: el.attrs.clone(),
        children: Vec::new(),
    }
}
