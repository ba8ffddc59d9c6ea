//! A XEP-0114 component connection: one actix actor per connection, like a
//! client session. Its address (a [`SessionHandle`] in
//! `services::component::Components`, and a route in the registry group)
//! is the only way in; its stream task reads what the component sends,
//! checks the addresses and routes it as stanzas from a server, and writes
//! what its outbox receives.
//!
//! What a component sends routes like a stanza from another server: to
//! local accounts with RFC 6121's rules (`session::im`: messages with
//! offline storage and the archive, subscription presence through the
//! user's roster, presence and IQs to resources), to the server and to an
//! account's bare JID for the modules to answer, and to hosted services
//! and other components. Its `from` must be present and at its own domain,
//! else the stream ends with `<invalid-from/>` (RFC 6120 §4.9.3.9); a
//! stanza without `to` is answered with `<bad-request/>` (the server cannot
//! tell whom it is for; one bad stanza does not cut a gateway's users off).
//!
//! One connection per component domain in the whole cluster: a second is
//! refused with `<conflict/>` (XEP-0114 §3 leaves the choice to the
//! server; keeping the first means a component that reconnects quickly
//! after its node died waits until the dead node's lease lapses).

use super::im::{self, Origin};
use super::outbox::{Outbox, Outgoing};
use crate::modules::{self, IqCtx, IqTarget};
use crate::net::transport::Transport;
use crate::router::{Destination, Gate, SessionHandle, ToSession};
use crate::server::Server;
use crate::stanza::{
    Condition, IqType, NS_CLIENT, PresenceType, StanzaError, StreamCondition, error_reply,
    iq_result, split,
};
use crate::stream::accept::{NS_COMPONENT, Verified};
use crate::stream::xmlstream::{ReadError, XmlStream, read_failed};
use crate::xml::{Element, Node, StreamEvent};
use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// The connection's actor: what other parts of the server send it goes
/// into its outbox, which its stream task writes.
pub struct ComponentConn {
    outbox: Arc<Outbox>,
    server: Arc<Server>,
}

impl Actor for ComponentConn {
    type Context = Context<Self>;
}

impl Handler<ToSession> for ComponentConn {
    type Result = ();

    fn handle(&mut self, msg: ToSession, _: &mut Context<Self>) {
        match msg {
            ToSession::Stanza(xml) => {
                if self.outbox.push(xml.clone()).is_err() {
                    // Sent while the connection was ending: answered as
                    // for a component that is not connected.
                    self.outbox.discard(&xml);
                    if let Some(el) = im::parse_stored(&xml) {
                        crate::services::component::bounce_unreachable(&self.server, &el);
                    }
                }
            }
            ToSession::Close(condition) => self.outbox.close(condition),
            // A component has no stream management.
            ToSession::Release(_) | ToSession::Checkpoint => {}
        }
    }
}

/// Starts the connection's actor on the current arbiter.
pub fn start<S: Transport + 'static>(
    server: Arc<Server>,
    verified: Verified<S>,
    slot: crate::net::ConnSlot,
) {
    ComponentConn::create(move |ctx| {
        let cfg = &server.config.components;
        let gate = Arc::new(Gate::new(cfg.mailbox_size, cfg.mailbox_bytes));
        let outbox = Arc::new(Outbox::new(gate.clone()));
        let handle = SessionHandle::new(ctx.address().recipient(), gate);
        let span = tracing::info_span!("component", domain = %verified.domain);
        let conn = Conn {
            server: server.clone(),
            xs: verified.stream,
            domain: verified.domain,
            handle,
            _slot: slot,
            behind: im::Behind::new(),
        };
        let task = Box::pin(serve(conn, outbox.clone()).instrument(span));
        ctx.spawn(actix::fut::wrap_future::<_, ComponentConn>(task).map(|(), _, ctx| ctx.stop()));
        ComponentConn { outbox, server }
    });
}

/// The stream task's state.
struct Conn<S> {
    server: Arc<Server>,
    xs: XmlStream<S>,
    domain: String,
    handle: SessionHandle,
    _slot: crate::net::ConnSlot,
    /// Archive writes of messages delivered to sessions of this node
    /// before they committed (`im::route_message_behind`): a gateway's
    /// messages share fsyncs instead of waiting for one each.
    behind: im::Behind,
}

/// Why the connection ended.
enum End {
    /// Closed already, or broken.
    Done,
    Error(StreamCondition),
    /// The component sent `</stream:stream>`.
    PeerClosed,
}

async fn serve<S: Transport>(mut c: Conn<S>, outbox: Arc<Outbox>) {
    let server = c.server.clone();
    let id = c.handle.id;
    // One connection per domain in the cluster: this node's first, then
    // the registry (atomically, so two nodes cannot both take it).
    if !server
        .services
        .components
        .attach(&c.domain, c.handle.clone())
    {
        return refuse(&mut c, StreamCondition::Conflict).await;
    }
    match server.storage.claim_component(&c.domain, id).await {
        Ok(true) => {}
        Ok(false) => {
            server.services.components.detach(&c.domain, id);
            return refuse(&mut c, StreamCondition::Conflict).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not record the component's route");
            server.services.components.detach(&c.domain, id);
            return refuse(&mut c, StreamCondition::InternalServerError).await;
        }
    }
    metrics::counter!("starling_component_handshakes_total", "result" => "ok").increment(1);
    tracing::info!("component connected");
    let end = if c.xs.send_raw("<handshake/>").await.is_err() {
        End::Done
    } else {
        c.run(&outbox).await
    };
    // The archive writes of what it delivered end before it is gone.
    while let Some(write) = c.behind.pop_front() {
        write.await;
    }
    // Leave the routes first, so nothing more is queued here; what was
    // queued and never written gets the answer an absent component gets.
    server.services.components.detach(&c.domain, id);
    let leftovers = outbox.end();
    if let Err(e) = server.storage.release_component(&c.domain, id).await {
        tracing::warn!(error = %e, "could not remove the component's route");
    }
    for xml in leftovers {
        if let Some(el) = im::parse_stored(&xml) {
            crate::services::component::bounce_unreachable(&server, &el);
        }
    }
    match end {
        End::Error(condition) => c.xs.fail(condition, None).await,
        End::PeerClosed => c.xs.close().await,
        End::Done => {}
    }
    tracing::info!("component disconnected");
}

async fn refuse<S: Transport>(c: &mut Conn<S>, condition: StreamCondition) {
    metrics::counter!("starling_component_handshakes_total", "result" => condition.name())
        .increment(1);
    c.xs.fail(condition, None).await;
}

/// Moves an element and its descendants from the component namespace to
/// the client one (what the rest of the server routes).
fn to_client_ns(el: &mut Element) {
    if el.ns == NS_COMPONENT {
        // In place: the longer name's buffer takes the shorter one.
        el.ns.clear();
        el.ns.push_str(NS_CLIENT);
    }
    for c in &mut el.children {
        if let Node::Element(e) = c {
            to_client_ns(e);
        }
    }
}

/// A serialised stanza for the component's stream: one that declares the
/// client namespace on itself (serialised for several recipients) is put
/// in the component's, which its children then inherit.
fn for_component(xml: &str) -> std::borrow::Cow<'_, str> {
    const DECL: &str = " xmlns=\"jabber:client\"";
    let head_end = xml.find(['>', ' ', '/']).unwrap_or(0);
    if xml[head_end..].starts_with(DECL) {
        let mut s = String::with_capacity(xml.len() + 8);
        s.push_str(&xml[..head_end]);
        s.push_str(&xml[head_end + DECL.len()..]);
        std::borrow::Cow::Owned(s)
    } else {
        std::borrow::Cow::Borrowed(xml)
    }
}

impl<S: Transport> Conn<S> {
    async fn run(&mut self, outbox: &Outbox) -> End {
        let keepalive = Duration::from_secs(self.server.config.c2s.keepalive_secs);
        let mut last_write = Instant::now();
        loop {
            loop {
                match self.xs.next_buffered() {
                    Ok(Some(StreamEvent::Stanza(el))) => {
                        if let Err(end) = Box::pin(self.handle(el)).await {
                            return end;
                        }
                    }
                    Ok(Some(StreamEvent::End)) => return End::PeerClosed,
                    Ok(Some(StreamEvent::Header(_))) => {
                        return End::Error(StreamCondition::BadFormat);
                    }
                    Ok(None) => break,
                    Err(e) => return self.read_end(e).await,
                }
            }
            tokio::select! {
                r = self.xs.fill(None) => {
                    if let Err(e) = r {
                        return self.read_end(e).await;
                    }
                }
                msg = outbox.recv() => {
                    match msg {
                        Outgoing::Stanzas(batch) => {
                            let written = if batch.len() == 1 {
                                self.xs.send_raw(&for_component(&batch[0])).await
                            } else {
                                self.write_batch(&batch).await
                            };
                            if written.is_err() {
                                return End::Done;
                            }
                        }
                        Outgoing::Close(condition) => return End::Error(condition),
                        Outgoing::Takeover(_) | Outgoing::Released(_) | Outgoing::Checkpoint => {}
                    }
                    last_write = Instant::now();
                }
                _ = tokio::time::sleep_until(last_write + keepalive) => {
                    // Whitespace keepalive: finds a dead peer.
                    if self.xs.send_raw(" ").await.is_err() {
                        return End::Done;
                    }
                    last_write = Instant::now();
                }
            }
        }
    }

    /// Drops the archive writes already ended, and waits for the oldest
    /// while too many are in flight.
    async fn prune_behind(&mut self) {
        im::prune_behind(&mut self.behind).await;
    }

    /// Writes several queued stanzas in one write.
    async fn write_batch(
        &mut self,
        batch: &std::collections::VecDeque<Arc<str>>,
    ) -> std::io::Result<()> {
        let mut out = String::with_capacity(batch.iter().map(|x| x.len()).sum::<usize>());
        for xml in batch {
            out.push_str(&for_component(xml));
        }
        self.xs.send_raw(&out).await
    }

    async fn read_end(&mut self, e: ReadError) -> End {
        if matches!(e, ReadError::Closed) {
            return End::Done;
        }
        read_failed(&mut self.xs, e).await;
        End::Done
    }

    /// Writes a reply to the component at once.
    async fn reply(&mut self, el: &Element) -> Result<(), End> {
        let xml = el.to_stream_xml(NS_CLIENT);
        self.xs.send_raw(&xml).await.map_err(|_| End::Done)
    }

    async fn reply_error(&mut self, stanza: &Element, err: StanzaError) -> Result<(), End> {
        match error_reply(stanza, &err) {
            Some(r) => self.reply(&r).await,
            None => Ok(()),
        }
    }

    /// Checks the addresses of one stanza and routes it.
    async fn handle(&mut self, mut el: Element) -> Result<(), End> {
        if el.ns != NS_COMPONENT && el.ns != NS_CLIENT
            || !matches!(el.name.as_str(), "message" | "presence" | "iq")
        {
            return Err(End::Error(StreamCondition::UnsupportedStanzaType));
        }
        to_client_ns(&mut el);
        let kind = match el.name.as_str() {
            "message" => "message",
            "presence" => "presence",
            _ => "iq",
        };
        metrics::counter!("starling_component_stanzas_received_total", "kind" => kind).increment(1);
        // RFC 6120 §8.1.2.1 / XEP-0114: the component names itself, at
        // its own domain.
        let from = match el.get_attr("from").map(jid::Jid::new) {
            Some(Ok(j)) if j.domain().as_str() == self.domain => j.to_string(),
            _ => return Err(End::Error(StreamCondition::InvalidFrom)),
        };
        let Some(to) = el.get_attr("to") else {
            el.set_attr("from", from.as_str());
            let err =
                StanzaError::with_text(Condition::BadRequest, "a component's stanza needs a 'to'");
            return self.reply_error(&el, err).await;
        };
        let to = jid::Jid::new(to).map(|j| j.to_string());
        el.set_attr("from", from.as_str());
        match to {
            Ok(to) => el.set_attr("to", to),
            Err(_) => {
                let mut orig = el.clone();
                orig.remove_attr("to");
                return self
                    .reply_error(&orig, Condition::JidMalformed.into())
                    .await;
            }
        }
        match kind {
            "message" => self.message(el).await,
            "presence" => self.presence(el, &from).await,
            _ => self.iq(el, &from).await,
        }
    }

    async fn message(&mut self, el: Element) -> Result<(), End> {
        let server = self.server.clone();
        let routed = im::route_message_behind(&server, el, &mut self.behind).await;
        self.prune_behind().await;
        match routed {
            Ok(()) => Ok(()),
            Err(b) => {
                let (err, el) = *b;
                self.reply_error(&el, err).await
            }
        }
    }

    async fn presence(&mut self, mut el: Element, from: &str) -> Result<(), End> {
        let server = self.server.clone();
        let to = el.get_attr("to").unwrap_or_default().to_owned();
        let Some(ptype) = PresenceType::of(&el) else {
            return self.reply_error(&el, Condition::BadRequest.into()).await;
        };
        let dest = match im::destination(&server, &to) {
            Ok(d) => d,
            Err(e) => return self.reply_error(&el, e.into()).await,
        };
        match dest {
            Destination::Account { bare, .. } => {
                use PresenceType::*;
                match ptype {
                    Subscribe | Subscribed | Unsubscribe | Unsubscribed => {
                        // Subscription stanzas carry bare JIDs (RFC 6121 §3).
                        let from_bare = split(from).0.to_owned();
                        el.set_attr("from", from_bare.as_str());
                        el.set_attr("to", bare);
                        let t = ptype.attr().unwrap_or_default();
                        if let Err(e) =
                            im::deliver_subscription(&server, &from_bare, bare, t, el.clone()).await
                        {
                            return self.reply_error(&el, e).await;
                        }
                    }
                    Probe => {
                        if let Err(e) = im::probe(&server, split(from).0, from, bare) {
                            return self.reply_error(&el, e).await;
                        }
                    }
                    Available | Unavailable | Error => im::send_presence_to(&server, &to, el),
                }
                Ok(())
            }
            Destination::Service { .. } => {
                crate::services::route(&server, el).await;
                Ok(())
            }
            // To another domain: over federation.
            Destination::Remote { .. } => {
                crate::s2s::send(&server, el);
                Ok(())
            }
            // To a served domain: nothing to do.
            Destination::Server { .. } => Ok(()),
        }
    }

    async fn iq(&mut self, el: Element, from: &str) -> Result<(), End> {
        let server = self.server.clone();
        let Some(kind) = IqType::of(&el).filter(|_| el.get_attr("id").is_some()) else {
            return self.reply_error(&el, Condition::BadRequest.into()).await;
        };
        let to = el.get_attr("to").unwrap_or_default().to_owned();
        let dest = match im::destination(&server, &to) {
            Ok(d) => d,
            Err(e) => return self.reply_error(&el, e.into()).await,
        };
        let target = match dest {
            Destination::Service { .. } => {
                crate::services::route(&server, el).await;
                return Ok(());
            }
            Destination::Remote { .. } => {
                // Over federation; a failure comes back as an error reply.
                crate::s2s::send(&server, el);
                return Ok(());
            }
            Destination::Account {
                resource: Some(_), ..
            } => {
                // To a resource, wherever it is bound (RFC 6121 §8.5.3).
                return match im::deliver_to_full_acked(&server, &to, el).await {
                    Ok(()) => Ok(()),
                    Err(el) if kind.is_request() => {
                        self.reply_error(&el, Condition::ServiceUnavailable.into())
                            .await
                    }
                    Err(_) => Ok(()),
                };
            }
            Destination::Server { domain, .. } => IqTarget::Server(domain),
            Destination::Account {
                bare, exists: true, ..
            } => IqTarget::Account(bare),
            Destination::Account { bare, .. } => IqTarget::NoAccount(bare),
        };
        if !kind.is_request() {
            // An answer to the server or an account: nothing waits for it,
            // but for an app server's (this component, XEP-0357) to a push
            // notification: an error disables that registration.
            if let IqTarget::Account(bare) = target {
                modules::push::answer(&server, bare, from, &el).await;
            }
            return Ok(());
        }
        let payloads: Vec<&Element> = el.elements().collect();
        let [payload] = payloads.as_slice() else {
            return self.reply_error(&el, Condition::BadRequest.into()).await;
        };
        let origin = Origin {
            bare: split(from).0,
            full: from,
            session_id: 0,
        };
        let ctx = IqCtx {
            server: &server,
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
            Ok(modules::IqReply::Result(payload)) => self.reply(&iq_result(&el, payload)).await,
            Err(e) => self.reply_error(&el, e).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stanza_declaring_the_client_namespace_takes_the_stream_s() {
        assert_eq!(
            for_component(r#"<message xmlns="jabber:client" to="a@b"><body>x</body></message>"#),
            r#"<message to="a@b"><body>x</body></message>"#
        );
        assert_eq!(
            for_component(r#"<presence to="a@b"/>"#),
            r#"<presence to="a@b"/>"#
        );
        assert_eq!(for_component(r#"<iq xmlns="jabber:client"/>"#), r#"<iq/>"#);
    }

    #[test]
    fn component_namespace_becomes_the_client_one() {
        let mut el = Element::new("message", NS_COMPONENT)
            .child(Element::new("body", NS_COMPONENT).text("x"))
            .child(Element::new("x", "urn:other"));
        to_client_ns(&mut el);
        assert!(el.is("message", NS_CLIENT));
        assert_eq!(el.child_text("body", NS_CLIENT).as_deref(), Some("x"));
        assert!(el.elements().any(|c| c.is("x", "urn:other")));
    }
}
