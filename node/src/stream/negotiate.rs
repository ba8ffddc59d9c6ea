//! Client stream negotiation (RFC 6120 §4–§7) as a sequence of typed
//! phases: plain TCP (only STARTTLS is possible) → TLS (SASL, optionally
//! XEP-0077 registration) → authenticated (resource binding) → a bound
//! session. A phase is a function that consumes the stream of the previous
//! one, so a stanza handler cannot run on a stream that is not bound.

use super::sasl::{self, NS_SASL2, Profile, SaslOutcome};
use super::xmlstream::{XmlStream, new_id, read_failed};
use crate::auth::SaslFailure;
use crate::modules::fast;
use crate::net::tls_conn::TlsConn;
use crate::net::transport::Transport;
use crate::net::websocket::{self, MaybeTls, WsConn};
use crate::server::Server;
use crate::stanza::StreamCondition;
use crate::stanza::{self, NS_BIND, NS_CLIENT, NS_SASL, NS_TLS};
use crate::xml::{Element, Limits, StreamEvent, StreamHeader};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A connection that passed negotiation: authenticated and bound.
pub struct Bound<S> {
    pub stream: XmlStream<S>,
    pub bare: jid::BareJid,
    pub full: jid::FullJid,
    /// The client said it is inactive (XEP-0352) before binding.
    pub inactive: bool,
    /// Bound by XEP-0386 inside a SASL2 `<authenticate/>`: the session
    /// answers with `<success/>` once it has done what was asked inline.
    pub bind2: Option<Box<Bind2>>,
}

/// What a XEP-0386 bind asked for, for the session to do before it sends
/// SASL2's `<success/>`.
pub struct Bind2 {
    /// `<success>` up to its `<bound/>`: additional data, the full JID, a
    /// failed inline resumption's `<failed/>`.
    pub success_head: String,
    /// XEP-0280 `<enable/>` inside `<bind/>`.
    pub carbons: bool,
    /// XEP-0198 `<enable/>` inside `<bind/>`.
    pub enable_sm: Option<Element>,
}

/// XEP-0386's namespace.
pub const NS_BIND2: &str = "urn:xmpp:bind:0";

/// The longest Bind2 `<tag/>` taken into a resource (a client name, not
/// a resource of its own: XEP-0386 §Resource identifier generation).
const MAX_TAG_CHARS: usize = 64;

/// How negotiation ended: a new session, or an earlier one resumed
/// (XEP-0198) instead of binding.
pub enum Negotiated<S> {
    Bound(Bound<S>),
    /// With SASL2 (XEP-0198 inline), the `<success>` to open before
    /// `<resumed/>`.
    Resumed(
        XmlStream<S>,
        crate::session::c2s::Resumption,
        Option<String>,
    ),
}

/// Decrements the unauthenticated-connection count when dropped.
struct UnauthGuard<'a>(&'a Server, bool);

impl UnauthGuard<'_> {
    fn done(&mut self) {
        if self.1 {
            self.0.unauthenticated.fetch_sub(1, Ordering::Relaxed);
            self.1 = false;
        }
    }
}

impl Drop for UnauthGuard<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

fn limits(server: &Server) -> Limits {
    Limits {
        max_stanza_bytes: server.config.c2s.max_stanza_size,
        max_depth: server.config.c2s.max_depth,
        max_attrs: server.config.c2s.max_attributes,
    }
}

/// Negotiates one accepted TCP connection up to a bound session, which
/// the caller then serves; `None` when the connection ended before that.
pub async fn serve_connection(
    server: Arc<Server>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
) -> Option<Negotiated<TlsConn>> {
    let _ = tcp.set_nodelay(true);
    metrics::counter!("starling_c2s_connections_total").increment(1);
    let n = server.unauthenticated.fetch_add(1, Ordering::Relaxed);
    let mut guard = UnauthGuard(&server, true);
    let deadline = Instant::now() + Duration::from_secs(server.config.c2s.handshake_timeout_secs);
    let write_timeout = Duration::from_secs(server.config.c2s.write_timeout_secs);
    let default_domain = server.config.domains[0].clone();
    if n >= server.config.c2s.max_unauthenticated {
        let mut xs = XmlStream::new(tcp, limits(&server), default_domain, write_timeout);
        xs.fail(
            StreamCondition::ResourceConstraint,
            Some("too many connections"),
        )
        .await;
        return None;
    }
    if !server.shaper.admit_address(peer.ip()) {
        // Over this address's connection rate (`c2s.connect_rate_per_ip`).
        // A direct TLS connection has no stream to say it on before the
        // handshake this is meant to spare: it is closed.
        if !direct_tls {
            let mut xs = XmlStream::new(tcp, limits(&server), default_domain, write_timeout);
            let text = Some("too many new connections from your address; retry later");
            xs.fail(StreamCondition::PolicyViolation, text).await;
        }
        return None;
    }
    let tls = if direct_tls {
        // Boxed: short-lived futures must not size the long-lived task.
        match tokio::time::timeout_at(deadline, Box::pin(TlsConn::accept(tcp, server.tls.clone())))
            .await
        {
            Ok(Ok(tls)) => tls,
            _ => return None,
        }
    } else {
        let mut xs = XmlStream::new(tcp, limits(&server), default_domain.clone(), write_timeout);
        Box::pin(plain_phase(&server, &mut xs, deadline)).await?;
        match tokio::time::timeout_at(
            deadline,
            Box::pin(TlsConn::accept(xs.io, server.tls.clone())),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            _ => return None,
        }
    };
    let xs = XmlStream::new(tls, limits(&server), default_domain, write_timeout);
    let ip = peer.ip().to_string();
    let negotiated = Box::pin(secure_phases(&server, xs, &ip, deadline)).await?;
    guard.done();
    Some(negotiated)
}

/// Negotiates one accepted WebSocket connection (RFC 7395): TLS unless the
/// listener is plain (behind a TLS-terminating proxy), the HTTP upgrade,
/// then the same phases as a TLS stream (no STARTTLS over WebSocket).
pub async fn serve_websocket(
    server: Arc<Server>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<Negotiated<WsConn<MaybeTls>>> {
    let _ = tcp.set_nodelay(true);
    metrics::counter!("starling_c2s_connections_total").increment(1);
    let n = server.unauthenticated.fetch_add(1, Ordering::Relaxed);
    let mut guard = UnauthGuard(&server, true);
    // No stream to say it on yet: over the limits the connection is closed.
    if n >= server.config.c2s.max_unauthenticated || !server.shaper.admit_address(peer.ip()) {
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(server.config.c2s.handshake_timeout_secs);
    let write_timeout = Duration::from_secs(server.config.c2s.write_timeout_secs);
    let cfg = &server.config.websocket;
    let io = if cfg.tls {
        let tls = TlsConn::accept(tcp, server.tls_http.clone());
        let tls = tokio::time::timeout_at(deadline, Box::pin(tls));
        MaybeTls::Tls(Box::new(tls.await.ok()?.ok()?))
    } else {
        MaybeTls::Plain(tcp)
    };
    let max = server.config.c2s.max_stanza_size;
    let ws = Box::pin(websocket::accept(io, &cfg.path, deadline, max)).await?;
    let default_domain = server.config.domains[0].clone();
    let xs = XmlStream::new(ws, limits(&server), default_domain, write_timeout);
    let ip = peer.ip().to_string();
    let negotiated = Box::pin(secure_phases(&server, xs, &ip, deadline)).await?;
    guard.done();
    Some(negotiated)
}

/// Negotiates one BOSH session (XEP-0206): its transport carries what the
/// client posts as a stream (TLS, if any, is the HTTP listener's), so the
/// same phases as a TLS stream follow.
pub async fn serve_bosh(
    server: Arc<Server>,
    conn: crate::http::bosh::BoshConn,
    ip: String,
) -> Option<Negotiated<crate::http::bosh::BoshConn>> {
    metrics::counter!("starling_c2s_connections_total").increment(1);
    let n = server.unauthenticated.fetch_add(1, Ordering::Relaxed);
    let mut guard = UnauthGuard(&server, true);
    let deadline = Instant::now() + Duration::from_secs(server.config.c2s.handshake_timeout_secs);
    let write_timeout = Duration::from_secs(server.config.c2s.write_timeout_secs);
    let default_domain = server.config.domains[0].clone();
    let mut xs = XmlStream::new(conn, limits(&server), default_domain, write_timeout);
    if n >= server.config.c2s.max_unauthenticated
        || ip.parse().is_ok_and(|a| !server.shaper.admit_address(a))
    {
        xs.fail(
            StreamCondition::PolicyViolation,
            Some("too many connections"),
        )
        .await;
        return None;
    }
    let negotiated = Box::pin(secure_phases(&server, xs, &ip, deadline)).await?;
    guard.done();
    Some(negotiated)
}

/// Reads and checks a stream header, answers with ours; `None` when the
/// stream was ended with an error.
async fn open_stream<S: Transport>(
    server: &Server,
    xs: &mut XmlStream<S>,
    deadline: Instant,
    required_domain: Option<&str>,
) -> Option<StreamHeader> {
    let header = match xs.next(Some(deadline)).await {
        Ok(StreamEvent::Header(h)) => h,
        Ok(_) => {
            xs.fail(StreamCondition::BadFormat, None).await;
            return None;
        }
        Err(e) => {
            read_failed(xs, e).await;
            return None;
        }
    };
    // The domain the client asked for; an unknown one is host-unknown.
    let domain = match header.to.as_deref().map(jid::BareJid::new) {
        Some(Ok(j)) if j.node().is_none() && server.is_local(j.domain().as_str()) => {
            j.domain().as_str().to_owned()
        }
        None => required_domain
            .map(str::to_owned)
            .unwrap_or_else(|| server.config.domains[0].clone()),
        _ => {
            xs.fail(StreamCondition::HostUnknown, None).await;
            return None;
        }
    };
    if required_domain.is_some_and(|d| d != domain) {
        xs.fail(
            StreamCondition::HostUnknown,
            Some("the domain changed after a stream restart"),
        )
        .await;
        return None;
    }
    xs.domain = domain;
    let from = header.from.clone();
    if let Err(e) = xs.send_header(from.as_deref(), &new_id()).await {
        tracing::debug!(error = %e, "writing the stream header failed");
        return None;
    }
    if header.default_ns != NS_CLIENT {
        xs.fail(StreamCondition::InvalidNamespace, None).await;
        return None;
    }
    match header.version.as_deref().map(|v| v.split_once('.')) {
        Some(Some(("1", minor))) if minor.parse::<u32>().is_ok() => {}
        _ => {
            xs.fail(StreamCondition::UnsupportedVersion, None).await;
            return None;
        }
    }
    Some(header)
}

/// Plain TCP: the only way forward is STARTTLS (required, RFC 6120 §5.3.1).
async fn plain_phase(
    server: &Server,
    xs: &mut XmlStream<TcpStream>,
    deadline: Instant,
) -> Option<()> {
    open_stream(server, xs, deadline, None).await?;
    let features = "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>";
    xs.send_raw(features).await.ok()?;
    loop {
        let el = next_element(xs, deadline).await?;
        if el.is("starttls", NS_TLS) {
            if xs.buffered() > 0 {
                // Data pipelined after <starttls/> would bypass TLS.
                xs.fail(StreamCondition::PolicyViolation, None).await;
                return None;
            }
            xs.send_raw("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await
                .ok()?;
            return Some(());
        } else if el.is("auth", NS_SASL) {
            // PLAIN (or anything) before TLS: RFC 6120 §6.4.5.
            xs.send_raw("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><encryption-required/></failure>")
                .await
                .ok()?;
        } else if let Some(failed) = sm_before_auth(&el) {
            xs.send_raw(&failed).await.ok()?;
        } else {
            unexpected_element(xs, &el).await;
            return None;
        }
    }
}

/// The next top-level element during negotiation; `None` once the stream
/// has ended (closed by the client, or ended here with the right error).
async fn next_element<S: Transport>(xs: &mut XmlStream<S>, deadline: Instant) -> Option<Element> {
    match xs.next(Some(deadline)).await {
        Ok(StreamEvent::Stanza(el)) => Some(el),
        Ok(StreamEvent::End) => {
            xs.close().await;
            None
        }
        Ok(StreamEvent::Header(_)) => {
            xs.fail(StreamCondition::BadFormat, None).await;
            None
        }
        Err(e) => {
            read_failed(xs, e).await;
            None
        }
    }
}

/// An IQ with no 'to', or addressed to the stream's domain (or, once known,
/// to the client's own bare JID): the server itself answers it.
fn is_iq_to_server(el: &Element, domain: &str, own: Option<&jid::BareJid>) -> bool {
    el.is("iq", NS_CLIENT)
        && el.get_attr("to").is_none_or(|to| {
            to.eq_ignore_ascii_case(domain)
                || own.is_some_and(|b| to.eq_ignore_ascii_case(b.as_str()))
        })
}

/// XEP-0198 §3: stream management is negotiated only after authentication
/// (and binding), and "the server SHALL enforce this order and return a
/// `<failed/>` element": an `<enable/>` or `<resume/>` before SASL gets
/// `<failed/>` with `<unexpected-request/>`, and the stream goes on.
fn sm_before_auth(el: &Element) -> Option<String> {
    (el.ns == crate::session::sm::NS_SM && matches!(el.name.as_str(), "enable" | "resume"))
        .then(|| crate::session::sm::failed_xml("unexpected-request", ""))
}

/// A stanza where negotiation expects something else.
async fn unexpected_element<S: Transport>(xs: &mut XmlStream<S>, el: &Element) {
    let condition =
        if el.ns == NS_CLIENT && matches!(el.name.as_str(), "message" | "presence" | "iq") {
            StreamCondition::NotAuthorized
        } else if el.ns == NS_CLIENT {
            StreamCondition::UnsupportedStanzaType
        } else {
            StreamCondition::PolicyViolation
        };
    xs.fail(condition, None).await;
}

/// How XEP-0388's stream feature starts (`modules::sasl2`).
const SASL2_HEAD: &str = "<authentication xmlns='urn:xmpp:sasl:2'>";

/// TLS is up: SASL (and registration), then binding.
async fn secure_phases<S: Transport>(
    server: &Arc<Server>,
    mut xs: XmlStream<S>,
    ip: &str,
    deadline: Instant,
) -> Option<Negotiated<S>> {
    open_stream(server, &mut xs, deadline, None).await?;
    let domain = xs.domain.clone();
    // XEP-0178: EXTERNAL for a certificate of the client CAs naming
    // accounts of the domain.
    let external = match (&server.client_trust, xs.io.peer_certificates()) {
        (Some(trust), Some(chain)) => trust.jids(chain, &domain),
        _ => Vec::new(),
    };
    const EXTERNAL: &str = "<mechanism>EXTERNAL</mechanism>";
    // XEP-0484: tokens bound to this TLS channel where its certificate
    // defines a `tls-server-end-point`.
    let end_point = xs
        .io
        .tls_server_name()
        .and_then(|sni| server.end_points.get(sni));
    let mut features =
        String::from("<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
    if !external.is_empty() {
        features.push_str(EXTERNAL);
    }
    for m in sasl::MECHANISMS {
        features.push_str("<mechanism>");
        features.push_str(m);
        features.push_str("</mechanism>");
    }
    features.push_str("</mechanisms>");
    for f in server
        .modules
        .stream_features(crate::modules::Stage::PreAuth, &server.config)
    {
        match f.strip_prefix(SASL2_HEAD) {
            // SASL2 lists the same mechanisms.
            Some(rest) => {
                features.push_str(SASL2_HEAD);
                if !external.is_empty() {
                    features.push_str(EXTERNAL);
                }
                match (end_point, rest.split_once(fast::MECHANISMS_NONE)) {
                    (Some(_), Some((head, tail))) => {
                        features.push_str(head);
                        features.push_str(fast::MECHANISMS_ENDP);
                        features.push_str(tail);
                    }
                    _ => features.push_str(rest),
                }
            }
            None => features.push_str(f),
        }
    }
    features.push_str("</stream:features>");
    xs.send_raw(&features).await.ok()?;

    let mut failures = 0;
    let mut sasl2 = None;
    let bare = loop {
        let el = next_element(&mut xs, deadline).await?;
        let profile = if el.is("auth", NS_SASL) {
            Profile::Legacy
        } else if el.is("authenticate", NS_SASL2) {
            if let Err((failure, text)) = check_inline(&el, end_point) {
                // Refused before any credential is looked at: no
                // failure counted against the account.
                let msg = format!(
                    "<failure xmlns='{NS_SASL2}'><{} xmlns='{NS_SASL}'/><text>{text}</text></failure>",
                    failure.condition()
                );
                xs.send_raw(&msg).await.ok()?;
                continue;
            }
            Profile::Sasl2
        } else {
            Profile::Legacy
        };
        if el.is("auth", NS_SASL) || profile == Profile::Sasl2 {
            let exchange = sasl::Exchange {
                domain: &domain,
                ip,
                deadline,
                profile,
                external: &external,
                end_point,
            };
            match sasl::authenticate(server, &mut xs, &el, exchange).await {
                SaslOutcome::Success(bare, additional, rotate) => {
                    if profile == Profile::Sasl2 {
                        sasl2 = Some((el, additional, rotate));
                    }
                    break bare;
                }
                SaslOutcome::Failure => {
                    failures += 1;
                    if failures >= 5 {
                        // RFC 6120 §6.4.5: too many retries.
                        xs.fail(
                            StreamCondition::PolicyViolation,
                            Some("too many failed attempts"),
                        )
                        .await;
                        return None;
                    }
                }
                SaslOutcome::StreamEnded => return None,
            }
        } else if el.is("iq", NS_CLIENT)
            && el
                .elements()
                .any(|c| c.ns == crate::modules::register::NS_REGISTER)
        {
            let reply = crate::modules::register::pre_auth(server, &domain, &el).await;
            xs.send(&reply).await.ok()?;
        } else if let Some(failed) = sm_before_auth(&el) {
            xs.send_raw(&failed).await.ok()?;
        } else if is_iq_to_server(&el, &domain, None) && !el.has_child("bind", NS_BIND) {
            // RFC 6120 §7.1 closes the stream only for stanzas to other
            // entities: an IQ to the server itself (or with no 'to') is
            // refused with a stanza error and the stream goes on. Binding
            // (stream negotiation, §4.9.3.12) and stanzas to anyone else
            // still end it with <not-authorized/>.
            if el
                .get_attr("type")
                .is_some_and(|t| t == "get" || t == "set")
                && let Some(r) = stanza::error_reply(&el, &stanza::Condition::NotAuthorized.into())
            {
                xs.send(&r).await.ok()?;
            }
        } else {
            unexpected_element(&mut xs, &el).await;
            return None;
        }
    };

    let mut features = String::new();
    if let Some((auth, additional, rotate)) = sasl2 {
        // XEP-0388: no stream restart. What was asked inline is done now,
        // resumption first (XEP-0386 §Performing the bind).
        let mut head = format!("<success xmlns='{NS_SASL2}'>");
        if let Some(data) = additional {
            head.push_str("<additional-data>");
            head.push_str(&crate::auth::encode_b64(&data));
            head.push_str("</additional-data>");
        }
        if let Some(token) = fast_tokens(server, &bare, &auth, rotate).await {
            head.push_str(&token);
        }
        let mut failed = String::new();
        if let Some(el) = auth.get_child("resume", crate::session::sm::NS_SM) {
            match resume(server, &bare, el).await {
                Ok(r) => return Some(Negotiated::Resumed(xs, r, Some(head))),
                Err(f) => failed = f,
            }
        }
        if let Some(bind) = auth.get_child("bind", NS_BIND2) {
            let full = match bind2_resource(&bare, &auth, bind) {
                Some(full) => full,
                None => {
                    // Checked before authenticating; never here.
                    xs.fail(StreamCondition::InternalServerError, None).await;
                    return None;
                }
            };
            head.push_str("<authorization-identifier>");
            head.push_str(&crate::xml::escape(full.as_str()));
            head.push_str("</authorization-identifier>");
            head.push_str(&failed);
            let mut inactive = false;
            let mut carbons = false;
            let mut enable_sm = None;
            for c in bind.elements() {
                if c.is("enable", crate::modules::carbons::NS_CARBONS) {
                    carbons = true;
                } else if c.is("enable", crate::session::sm::NS_SM) {
                    enable_sm = Some(c.clone());
                } else if c.ns == crate::session::csi::NS_CSI {
                    inactive = c.name == "inactive";
                }
            }
            metrics::counter!("starling_bind2_total").increment(1);
            return Some(Negotiated::Bound(Bound {
                stream: xs,
                bare,
                full,
                inactive,
                bind2: Some(Box::new(Bind2 {
                    success_head: head,
                    carbons,
                    enable_sm,
                })),
            }));
        }
        // Authenticated, not bound: legacy binding follows on this stream.
        head.push_str("<authorization-identifier>");
        head.push_str(&crate::xml::escape(bare.as_str()));
        head.push_str("</authorization-identifier>");
        head.push_str(&failed);
        head.push_str("</success>");
        features = head;
    } else {
        // Authenticated: a new stream, then resource binding (RFC 6120 §7).
        xs.restart();
        open_stream(server, &mut xs, deadline, Some(&domain)).await?;
    }
    // Binding is core (RFC 6120 §7); the rest is what the modules declare.
    features.push_str("<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>");
    for f in server
        .modules
        .stream_features(crate::modules::Stage::PostAuth, &server.config)
    {
        features.push_str(f);
    }
    features.push_str("</stream:features>");
    xs.send_raw(&features).await.ok()?;
    let mut inactive = false;
    loop {
        let el = next_element(&mut xs, deadline).await?;
        // XEP-0352 is offered with binding: a client state said before
        // binding is the state of the session about to be bound (no
        // answer, as ever; an unknown element of it ends the stream).
        if el.ns == crate::session::csi::NS_CSI {
            use crate::session::csi::ClientState;
            match ClientState::of(&el) {
                Ok(state) => inactive = state == ClientState::Inactive,
                Err(condition) => {
                    xs.fail(condition, None).await;
                    return None;
                }
            }
            continue;
        }
        if el.ns == crate::session::sm::NS_SM {
            match resume(server, &bare, &el).await {
                Ok(r) => return Some(Negotiated::Resumed(xs, r, None)),
                Err(failed) => {
                    xs.send_raw(&failed).await.ok()?;
                    continue;
                }
            }
        }
        // RFC 6120 §7.1: before binding, a stanza to an entity other than
        // the server or the client's own account closes the stream.
        if !el.is("iq", NS_CLIENT) || !is_iq_to_server(&el, &domain, Some(&bare)) {
            unexpected_element(&mut xs, &el).await;
            return None;
        }
        let Some(bind) = el.get_child("bind", NS_BIND) else {
            // Anything but binding before a resource is bound.
            let reply = stanza::error_reply(&el, &stanza::Condition::NotAuthorized.into());
            if let Some(r) = reply {
                xs.send(&r).await.ok()?;
            }
            continue;
        };
        if el.get_attr("type") != Some("set") {
            if let Some(r) = stanza::error_reply(&el, &stanza::Condition::BadRequest.into()) {
                xs.send(&r).await.ok()?;
            }
            continue;
        }
        let requested = bind
            .child_text("resource", NS_BIND)
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty());
        let resource = requested.unwrap_or_else(|| format!("starling-{}", &new_id()[..12]));
        let full = match bare.with_resource_str(&resource) {
            Ok(f) => f,
            Err(_) => {
                if let Some(r) = stanza::error_reply(&el, &stanza::Condition::BadRequest.into()) {
                    xs.send(&r).await.ok()?;
                }
                continue;
            }
        };
        let mut reply = Element::new("iq", NS_CLIENT).attr("type", "result");
        if let Some(id) = el.get_attr("id") {
            reply.set_attr("id", id);
        }
        let reply = reply.child(
            Element::new("bind", NS_BIND)
                .child(Element::new("jid", NS_BIND).text(full.to_string())),
        );
        xs.send(&reply).await.ok()?;
        return Some(Negotiated::Bound(Bound {
            stream: xs,
            bare,
            full,
            inactive,
            bind2: None,
        }));
    }
}

/// A stream management element before binding: only `<resume/>` may come
/// here (XEP-0198 §5); `<enable/>` and the rest are `<unexpected-request/>`
/// until a resource is bound (§3). `Err` is the `<failed/>` to send.
async fn resume(
    server: &Arc<Server>,
    bare: &jid::BareJid,
    el: &Element,
) -> Result<crate::session::c2s::Resumption, String> {
    use crate::session::sm;
    if el.name != "resume" {
        return Err(sm::failed_xml("unexpected-request", ""));
    }
    // §5: a server that does not support resumption (none offered with a
    // resumption time of 0) says so.
    if !server.config.sm.enabled || server.config.sm.resume_timeout_secs == 0 {
        return Err(sm::failed_xml("feature-not-implemented", ""));
    }
    let (Some(previd), Some(h)) = (el.get_attr("previd"), sm::parse_h(el.get_attr("h"))) else {
        return Err(sm::failed_xml("bad-request", ""));
    };
    crate::session::c2s::take_over(server, bare.as_str(), previd, h).await
}

/// Checks what a SASL2 `<authenticate/>` asks to do inline before it is
/// run (`end_point`: the channel binding XEP-0484 tokens may use); `Err`
/// is the failure's condition and `<text/>`.
fn check_inline(
    auth: &Element,
    end_point: Option<&[u8]>,
) -> Result<(), (SaslFailure, &'static str)> {
    const MALFORMED: SaslFailure = SaslFailure::MalformedRequest;
    if let Some(tag) = auth
        .get_child("bind", NS_BIND2)
        .and_then(|bind| bind.child_text("tag", NS_BIND2))
    {
        if tag.chars().count() > MAX_TAG_CHARS {
            return Err((MALFORMED, "the bind tag is too long"));
        }
        // The tag must make a valid resourcepart (RFC 7622 §3.4).
        if tag.is_empty() || jid::ResourcePart::new(&tag).is_err() {
            return Err((MALFORMED, "the bind tag is not valid in a resource"));
        }
    }
    if let Some(ua) = auth.get_child("user-agent", NS_SASL2)
        && ua.get_attr("id").is_some_and(|id| id.len() > 128)
    {
        return Err((MALFORMED, "the user-agent id is too long"));
    }
    if let Some(req) = auth.get_child("request-token", fast::NS_FAST) {
        // §Client performs initial authentication: one the server offered.
        let offered = req
            .get_attr("mechanism")
            .is_some_and(|m| fast::binding(m, end_point).is_some());
        if !offered {
            return Err((SaslFailure::InvalidMechanism, "no such FAST mechanism"));
        }
        // XEP-0484 §Business Rules: tokens are per client.
        if fast::user_agent_id(auth).is_none() {
            return Err((MALFORMED, "a FAST token needs a user-agent id"));
        }
    }
    Ok(())
}

/// XEP-0484 after a SASL2 success: `<fast invalidate='true'/>` drops the
/// client's token; a `<request-token/>`, or a token login due for
/// rotation (not invalidating), gets a new `<token/>`.
async fn fast_tokens(
    server: &Server,
    bare: &jid::BareJid,
    auth: &Element,
    rotate: bool,
) -> Option<String> {
    let ua = fast::user_agent_id(auth)?;
    let used = auth.get_attr("mechanism").unwrap_or("");
    let with_token = fast::is_mechanism(used);
    let invalidate = with_token
        && auth
            .get_child("fast", fast::NS_FAST)
            .and_then(|f| f.get_attr("invalidate"))
            .is_some_and(|v| v == "true" || v == "1");
    if invalidate {
        fast::invalidate(server, bare.as_str(), ua).await;
    }
    // Checked before authenticating: a mechanism offered here.
    let requested = auth
        .get_child("request-token", fast::NS_FAST)
        .and_then(|r| r.get_attr("mechanism"));
    match requested {
        Some(m) => return fast::issue(server, bare.as_str(), ua, m).await,
        None if rotate && !invalidate => return fast::issue(server, bare.as_str(), ua, used).await,
        None => {}
    }
    None
}

/// The resource XEP-0386 binds: `tag/unique`, the unique part chosen by
/// the server. With a SASL2 user-agent id it is stable for that id (a
/// digest of account and id, which it does not reveal), so a client that
/// reconnects gets its resource back and replaces its old session; else
/// random.
fn bind2_resource(bare: &jid::BareJid, auth: &Element, bind: &Element) -> Option<jid::FullJid> {
    use sha2::{Digest, Sha256};
    let unique = match auth
        .get_child("user-agent", NS_SASL2)
        .and_then(|ua| ua.get_attr("id"))
        .filter(|id| !id.is_empty())
    {
        Some(id) => {
            let mut h = Sha256::new();
            h.update(b"starling-bind2\0");
            h.update(bare.as_str().as_bytes());
            h.update(b"\0");
            h.update(id.as_bytes());
            let d = h.finalize();
            d[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        }
        None => new_id()[..12].to_owned(),
    };
    let resource = match bind.child_text("tag", NS_BIND2) {
        Some(tag) => format!("{tag}/{unique}"),
        None => unique,
    };
    bare.with_resource_str(&resource).ok()
}
