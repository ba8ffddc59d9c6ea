//! Streams other servers open to this node (RFC 6120 §4 with `jabber:server`,
//! XEP-0220 as the receiving and as the authoritative server).

use super::io::{Conn, Io, ReadError, xml_condition};
use super::outgoing::{self, Verdict};
use super::{NS_DIALBACK, NS_DIALBACK_FEATURE, NS_SERVER, NS_TLS, domain_of, header};
use crate::server::Server;
use crate::stanza::{Condition, StreamCondition};
use crate::xml::NS_STREAMS;
use crate::xml::{Element, StreamEvent};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Binds `[s2s] port` and accepts streams on it. A port that cannot be
/// bound is logged: the node serves its clients and its outgoing links
/// without it.
pub async fn start(server: Arc<Server>) {
    let cfg = &server.config.s2s;
    if !cfg.enabled {
        return;
    }
    actix_rt::spawn(sweep_contacts(server.clone()));
    for (port, direct_tls) in [(cfg.port, false), (cfg.tls_port, true)] {
        if port == 0 {
            continue;
        }
        let addr = format!("{}:{}", cfg.bind, port);
        match crate::net::bind(&addr).await {
            Ok(l) => {
                tracing::info!(%addr, direct_tls, "s2s listening");
                actix_rt::spawn(accept_loop(server.clone(), l, direct_tls));
            }
            Err(e) => {
                tracing::error!(%addr, direct_tls, error = %e, "s2s listener not started: no incoming federation on it");
            }
        }
    }
}

/// Forgets, every minute, the remote contacts of users no longer
/// available anywhere (`contacts`).
async fn sweep_contacts(server: Arc<Server>) {
    let mut tick = tokio::time::interval(super::contacts::SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        (server.s2s.contacts).sweep(|owner| server.router.bound(owner).iter().any(|b| b.available));
    }
}

async fn accept_loop(server: Arc<Server>, listener: tokio::net::TcpListener, direct_tls: bool) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                actix_rt::spawn(serve(server.clone(), tcp, peer, direct_tls));
            }
            Err(e) => {
                tracing::warn!(error = %e, "s2s accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A dialback check's outcome, back to the stream that asked.
struct Checked {
    remote: String,
    local: String,
    verdict: Verdict,
}

struct Stream {
    server: Arc<Server>,
    conn: Conn,
    /// The id of the current stream (the dialback key covers it).
    id: String,
    /// (remote domain, served domain) pairs dialback authorised.
    authorized: HashSet<(String, String)>,
    checks: mpsc::UnboundedSender<Checked>,
    /// Dialback checks in flight.
    checking: usize,
    /// The served domain the current stream is to.
    local: String,
    /// The domain the other server's certificate was verified for (SASL
    /// EXTERNAL is offered), and whether it authenticated with it.
    external: Option<String>,
    sasl_done: bool,
    /// SASL attempts on this stream (RFC 6120 §6.4.5: a few, then the
    /// stream ends).
    sasl_failures: u8,
}

/// Dialback checks one stream may have in flight.
const MAX_CHECKS: usize = 16;
/// Failed SASL attempts before the stream ends.
const MAX_SASL_FAILURES: u8 = 3;
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

async fn serve(
    server: Arc<Server>,
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    direct_tls: bool,
) {
    let io = if direct_tls {
        // XEP-0368: TLS first, within the handshake time.
        let hs = Duration::from_secs(server.config.c2s.handshake_timeout_secs.max(1));
        let acceptor = tokio_rustls::TlsAcceptor::from(direct_tls_config(&server));
        match tokio::time::timeout(hs, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => Io::Server(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "s2s direct TLS handshake failed");
                return;
            }
            Err(_) => return,
        }
    } else {
        Io::Plain(tcp)
    };
    let tls = if direct_tls { "direct" } else { "starttls" };
    metrics::counter!("starling_s2s_connections_total", "direction" => "in", "tls" => tls)
        .increment(1);
    metrics::gauge!("starling_s2s_links", "direction" => "in").increment(1.0);
    let limits = super::limits(&server);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut s = Stream {
        server,
        conn: Conn::new(io, limits, direct_tls),
        id: String::new(),
        authorized: HashSet::new(),
        checks: tx,
        checking: 0,
        local: String::new(),
        external: None,
        sasl_done: false,
        sasl_failures: 0,
    };
    s.run(&mut rx).await;
    tracing::debug!(%peer, authorized = s.authorized.len(), "s2s stream ended");
    metrics::gauge!("starling_s2s_links", "direction" => "in").decrement(1.0);
}

/// What ends a stream, or restarts it (after STARTTLS).
enum Next {
    Restart,
    End,
}

impl Stream {
    async fn run(&mut self, checks: &mut mpsc::UnboundedReceiver<Checked>) {
        let hs = Duration::from_secs(self.server.config.c2s.handshake_timeout_secs.max(1));
        loop {
            if !self.open(Instant::now() + hs).await {
                return;
            }
            match self.stanzas(checks).await {
                Next::Restart => continue,
                Next::End => return,
            }
        }
    }

    /// Reads the peer's header and answers it with ours and the features.
    async fn open(&mut self, deadline: Instant) -> bool {
        let h = match self.conn.next(deadline).await {
            Ok(StreamEvent::Header(h)) => h,
            Ok(_) => {
                self.header_then_fail(None, StreamCondition::NotWellFormed)
                    .await;
                return false;
            }
            Err(e) => {
                if let ReadError::Xml(x) = e {
                    self.header_then_fail(None, xml_condition(x)).await;
                }
                return false;
            }
        };
        let to = h.to.as_deref().and_then(normal_domain);
        if h.default_ns != NS_SERVER {
            self.header_then_fail(to.as_deref(), StreamCondition::InvalidNamespace)
                .await;
            return false;
        }
        // §4.7.2: `to` names a domain served here (or a service of one).
        let Some(to) = to.filter(|d| self.serves(d)) else {
            self.header_then_fail(None, StreamCondition::HostUnknown)
                .await;
            return false;
        };
        self.id = crate::stream::xmlstream::new_id();
        let from = h.from.as_deref().and_then(normal_domain);
        let v1 = h.version.as_deref().is_some_and(|v| v.starts_with("1."));
        let mut out = header(Some(&to), from.as_deref(), Some(&self.id), v1);
        self.local.clone_from(&to);
        // XEP-0178: EXTERNAL when the certificate a trusted CA issued is
        // for the domain the header claims.
        self.external = None;
        if v1
            && self.conn.tls
            && !self.sasl_done
            && self.server.config.s2s.sasl_external
            && let Some(from) = from.as_deref()
            && !self.serves(from)
            && super::permitted(&self.server, from)
            && let Some(chain) = self.conn.peer_certificates()
            && self.server.s2s.trust(&self.server).verify(&chain, from)
        {
            self.external = Some(from.to_owned());
        }
        if v1 {
            out.push_str("<stream:features>");
            if self.external.is_some() {
                out.push_str("<mechanisms xmlns='");
                out.push_str(NS_SASL);
                out.push_str("'><mechanism>EXTERNAL</mechanism></mechanisms>");
            }
            if !self.conn.tls {
                out.push_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
                if self.server.config.s2s.require_tls {
                    out.push_str("<required/>");
                }
                out.push_str("</starttls>");
            }
            if self.conn.tls || !self.server.config.s2s.require_tls {
                out.push_str("<dialback xmlns='");
                out.push_str(NS_DIALBACK_FEATURE);
                out.push_str("'><errors/></dialback>");
            }
            out.push_str("</stream:features>");
        }
        self.conn.send(&out).await.is_ok()
    }

    async fn header_then_fail(&mut self, from: Option<&str>, condition: StreamCondition) {
        let h = header(from, None, Some(&crate::stream::xmlstream::new_id()), true);
        let _ = self.conn.send(&h).await;
        self.conn.fail(condition, None).await;
    }

    fn serves(&self, domain: &str) -> bool {
        self.server.is_local(domain) || self.server.services.get(domain).is_some()
    }

    async fn stanzas(&mut self, checks: &mut mpsc::UnboundedReceiver<Checked>) -> Next {
        let idle = Duration::from_secs(self.server.config.s2s.idle_timeout_secs.max(1));
        // Until a domain pair is authorised, the stream has the handshake
        // time (plus the time a dialback check may take); then it may idle.
        let handshake = Duration::from_secs(
            self.server.config.c2s.handshake_timeout_secs.max(1)
                + self.server.config.s2s.connect_timeout_secs
                + 5,
        );
        let opened = Instant::now();
        loop {
            loop {
                match self.conn.next_buffered() {
                    Ok(Some(ev)) => {
                        if let Some(next) = self.event(ev).await {
                            return next;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return self.read_failed(e).await,
                }
            }
            tokio::select! {
                r = self.conn.read_some() => {
                    if let Err(e) = r {
                        return self.read_failed(e).await;
                    }
                }
                Some(c) = checks.recv() => {
                    if let Some(next) = self.checked(c).await {
                        return next;
                    }
                }
                _ = tokio::time::sleep(idle), if !self.authorized.is_empty() => {
                    self.conn.fail(StreamCondition::ConnectionTimeout, None).await;
                    return Next::End;
                }
                _ = tokio::time::sleep_until(opened + handshake), if self.authorized.is_empty() => {
                    self.conn.fail(StreamCondition::ConnectionTimeout, None).await;
                    return Next::End;
                }
            }
        }
    }

    async fn read_failed(&mut self, e: ReadError) -> Next {
        if let ReadError::Xml(x) = e {
            self.conn.fail(xml_condition(x), None).await;
        }
        Next::End
    }

    async fn event(&mut self, ev: StreamEvent) -> Option<Next> {
        let el = match ev {
            StreamEvent::End => {
                self.conn.close().await;
                return Some(Next::End);
            }
            StreamEvent::Header(_) => {
                self.conn.fail(StreamCondition::NotWellFormed, None).await;
                return Some(Next::End);
            }
            StreamEvent::Stanza(el) => el,
        };
        if el.is("starttls", NS_TLS) {
            return Some(self.starttls().await);
        }
        if el.is("auth", NS_SASL) {
            return self.auth(&el).await;
        }
        if el.is("result", NS_DIALBACK) {
            self.db_result(el).await;
            return None;
        }
        if el.is("verify", NS_DIALBACK) {
            self.db_verify(el).await;
            return None;
        }
        if el.is("error", NS_STREAMS) {
            self.conn.close().await;
            return Some(Next::End);
        }
        if !matches!(el.name.as_str(), "message" | "presence" | "iq")
            || el.ns != crate::stanza::NS_CLIENT
        {
            self.conn
                .fail(StreamCondition::UnsupportedStanzaType, None)
                .await;
            return Some(Next::End);
        }
        self.stanza(el).await
    }

    async fn starttls(&mut self) -> Next {
        if self.conn.tls {
            // RFC 6120 §5.4.3.1: once only.
            self.conn.fail(StreamCondition::PolicyViolation, None).await;
            return Next::End;
        }
        if self
            .conn
            .send("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
            .is_err()
            || self.conn.buffered() > 0
        {
            return Next::End;
        }
        match self.conn.upgrade_server(server_tls(&self.server)).await {
            Ok(()) => Next::Restart,
            Err(e) => {
                tracing::debug!(error = %e, "s2s TLS handshake failed");
                Next::End
            }
        }
    }

    /// `<auth mechanism='EXTERNAL'/>` (RFC 6120 §6.4, XEP-0178 §3): the
    /// domain the certificate was verified for, as the authorization
    /// identity (`=`, or that domain in base64); then a new stream.
    async fn auth(&mut self, el: &Element) -> Option<Next> {
        let outcome = match (&self.external, el.get_attr("mechanism")) {
            _ if self.sasl_done => Err("aborted"),
            (Some(domain), Some("EXTERNAL")) => {
                let text = el.text_content();
                let text = text.trim();
                if text.is_empty() || text == "=" {
                    Ok(domain.clone())
                } else {
                    use base64::Engine;
                    match base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                    {
                        None => Err("incorrect-encoding"),
                        Some(z) if normal_domain(z.trim_end()).as_ref() == Some(domain) => {
                            Ok(domain.clone())
                        }
                        Some(_) => Err("invalid-authzid"),
                    }
                }
            }
            // Not offered (no certificate a trusted CA issued for the
            // domain), or another mechanism.
            _ => Err("invalid-mechanism"),
        };
        match outcome {
            Ok(remote) => {
                if self
                    .conn
                    .send("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
                    .await
                    .is_err()
                {
                    return Some(Next::End);
                }
                metrics::counter!("starling_s2s_sasl_external_total", "direction" => "in", "result" => "success").increment(1);
                tracing::info!(%remote, local = %self.local, "s2s stream authorised (SASL EXTERNAL)");
                self.authorized.insert((remote, self.local.clone()));
                self.sasl_done = true;
                self.conn.restart_stream();
                Some(Next::Restart)
            }
            Err(condition) => {
                metrics::counter!("starling_s2s_sasl_external_total", "direction" => "in", "result" => condition).increment(1);
                let f = format!(
                    "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{condition}/></failure>"
                );
                if self.conn.send(&f).await.is_err() {
                    return Some(Next::End);
                }
                self.sasl_failures += 1;
                if self.sasl_failures >= MAX_SASL_FAILURES {
                    self.conn.fail(StreamCondition::PolicyViolation, None).await;
                    return Some(Next::End);
                }
                None
            }
        }
    }

    /// `<db:result/>` with a key: the remote server asks to send as its
    /// domain; its authoritative server is asked (XEP-0220 §2.1.2).
    async fn db_result(&mut self, el: Element) {
        let from = el.get_attr("from").and_then(normal_domain);
        let to = el.get_attr("to").and_then(normal_domain);
        let (Some(remote), Some(local)) = (from, to) else {
            self.conn
                .fail(StreamCondition::ImproperAddressing, None)
                .await;
            return;
        };
        if !self.serves(&local) {
            return self
                .result_error(&local, &remote, Condition::ItemNotFound)
                .await;
        }
        if self.server.is_local(&remote) || self.serves(&remote) {
            // A server claiming to be this one.
            return self
                .result_error(&local, &remote, Condition::NotAuthorized)
                .await;
        }
        if self.server.config.s2s.require_tls && !self.conn.tls {
            return self
                .result_error(&local, &remote, Condition::PolicyViolation)
                .await;
        }
        if !super::permitted(&self.server, &remote) {
            // `[s2s] blocked_domains` / `allowed_domains`.
            return self
                .result_error(&local, &remote, Condition::Forbidden)
                .await;
        }
        let key = el.text_content().trim().to_owned();
        if key.is_empty() {
            return self
                .result_error(&local, &remote, Condition::BadRequest)
                .await;
        }
        if self.authorized.contains(&(remote.clone(), local.clone())) {
            return self.send_result(&local, &remote, "valid").await;
        }
        if self.checking >= MAX_CHECKS {
            // Each check makes a link to the claimed domain: a stream may
            // not make many at once.
            return self
                .result_error(&local, &remote, Condition::ResourceConstraint)
                .await;
        }
        self.checking += 1;
        let server = self.server.clone();
        let id = self.id.clone();
        let tx = self.checks.clone();
        tokio::spawn(async move {
            let verdict = outgoing::verify(&server, &local, &remote, &id, &key).await;
            let _ = tx.send(Checked {
                remote,
                local,
                verdict,
            });
        });
    }

    /// A dialback check's outcome; `Some` ends the stream.
    async fn checked(&mut self, c: Checked) -> Option<Next> {
        self.checking = self.checking.saturating_sub(1);
        let result = match c.verdict {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::Unreachable => {
                metrics::counter!("starling_s2s_dialback_total", "direction" => "in", "result" => "unreachable").increment(1);
                self.result_error(&c.local, &c.remote, Condition::RemoteServerNotFound)
                    .await;
                return None;
            }
        };
        metrics::counter!("starling_s2s_dialback_total", "direction" => "in", "result" => result)
            .increment(1);
        if c.verdict == Verdict::Invalid {
            tracing::warn!(remote = %c.remote, local = %c.local, "s2s dialback key refused by the domain's server: a spoofing attempt");
            if self.authorized.is_empty() {
                // XEP-0220 §2.2.1: `invalid`, and the stream is closed.
                self.send_result(&c.local, &c.remote, result).await;
                self.conn.close().await;
                return Some(Next::End);
            }
            // Other domain pairs use this stream: a dialback error keeps
            // them (§2.1.2).
            self.result_error(&c.local, &c.remote, Condition::Forbidden)
                .await;
            return None;
        }
        tracing::info!(remote = %c.remote, local = %c.local, "s2s stream authorised (dialback)");
        self.authorized.insert((c.remote.clone(), c.local.clone()));
        self.send_result(&c.local, &c.remote, result).await;
        None
    }

    async fn send_result(&mut self, local: &str, remote: &str, t: &str) {
        let r = dialback_xml("result", local, remote, None, t, None);
        let _ = self.conn.send(&r).await;
    }

    /// XEP-0220 §2.4: `<db:result type='error'/>` with the condition.
    async fn result_error(&mut self, local: &str, remote: &str, condition: Condition) {
        let r = dialback_xml("result", local, remote, None, "error", Some(condition));
        let _ = self.conn.send(&r).await;
    }

    /// `<db:verify/>`: another server asks whether a key is one we made
    /// for a stream we (any node) opened to it (XEP-0220 §2.1.4).
    async fn db_verify(&mut self, el: Element) {
        let from = el.get_attr("from").and_then(normal_domain);
        let to = el.get_attr("to").and_then(normal_domain);
        let id = el.get_attr("id").map(str::to_owned);
        let (Some(receiving), Some(local), Some(id)) = (from, to, id) else {
            self.conn
                .fail(StreamCondition::ImproperAddressing, None)
                .await;
            return;
        };
        let answer = if !self.serves(&local) {
            dialback_xml(
                "verify",
                &local,
                &receiving,
                Some(&id),
                "error",
                Some(Condition::ItemNotFound),
            )
        } else {
            let valid = match super::secret(&self.server).await {
                Ok(secret) => super::same_key(
                    &super::dialback_key(secret, &receiving, &local, &id),
                    el.text_content().trim(),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "no dialback secret to check a key with");
                    false
                }
            };
            let t = if valid { "valid" } else { "invalid" };
            dialback_xml("verify", &local, &receiving, Some(&id), t, None)
        };
        let _ = self.conn.send(&answer).await;
    }

    /// A stanza: accepted only for a domain pair this stream authorised
    /// (RFC 6120 §13.7.1.3, XEP-0220 §2.1.2), then routed like a client's.
    async fn stanza(&mut self, mut el: Element) -> Option<Next> {
        let from = el.get_attr("from").map(jid::Jid::new);
        let to = el.get_attr("to").map(jid::Jid::new);
        let (Some(from), Some(to)) = (from, to) else {
            self.conn
                .fail(StreamCondition::ImproperAddressing, None)
                .await;
            return Some(Next::End);
        };
        let Ok(from) = from else {
            self.conn.fail(StreamCondition::InvalidFrom, None).await;
            return Some(Next::End);
        };
        let from = from.to_string();
        let Ok(to) = to else {
            // Addressed to nothing that can exist: the sender hears so,
            // from the served domain its stream is authorised for.
            let local = self
                .authorized
                .iter()
                .find(|(r, _)| r == domain_of(&from))
                .map(|(_, l)| l.clone());
            if let Some(local) = local {
                el.set_attr("from", from.as_str());
                el.set_attr("to", local.as_str());
                if let Some(reply) =
                    crate::stanza::error_reply(&el, &Condition::JidMalformed.into())
                {
                    super::send(&self.server, reply);
                }
            }
            return None;
        };
        let to = to.to_string();
        let pair = (domain_of(&from).to_owned(), domain_of(&to).to_owned());
        if !self.authorized.contains(&pair) {
            // RFC 6120 §4.9.3.6, §4.9.3.10: a `to` not served here, or a
            // `from` this stream was not authorised for.
            let condition = if self.serves(&pair.1) {
                StreamCondition::InvalidFrom
            } else {
                StreamCondition::HostUnknown
            };
            self.conn.fail(condition, None).await;
            return Some(Next::End);
        }
        el.set_attr("from", from.as_str());
        el.set_attr("to", to.as_str());
        metrics::counter!("starling_s2s_stanzas_total", "direction" => "in").increment(1);
        super::deliver::incoming(&self.server, el).await;
        None
    }
}

/// A dialback element (`db:result` or `db:verify`, `type` and `id` when
/// given), with a XEP-0220 §2.4 error child for `type='error'`.
fn dialback_xml(
    name: &str,
    from: &str,
    to: &str,
    id: Option<&str>,
    t: &str,
    error: Option<Condition>,
) -> String {
    use crate::xml::escape_into;
    let mut s = String::with_capacity(160);
    s.push_str("<db:");
    s.push_str(name);
    for (k, v) in [
        ("from", Some(from)),
        ("to", Some(to)),
        ("id", id),
        ("type", Some(t)),
    ] {
        if let Some(v) = v {
            s.push(' ');
            s.push_str(k);
            s.push_str("='");
            escape_into(&mut s, v, true);
            s.push('\'');
        }
    }
    match error {
        None => s.push_str("/>"),
        Some(c) => {
            s.push_str("><error type='");
            s.push_str(c.error_type());
            s.push_str("'><");
            s.push_str(c.name());
            s.push_str(" xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:");
            s.push_str(name);
            s.push('>');
        }
    }
    s
}

/// A domain from a header or dialback attribute, normalised; none if it
/// is not a bare domain.
fn normal_domain(s: &str) -> Option<String> {
    let j = jid::BareJid::new(s).ok()?;
    j.node().is_none().then(|| j.domain().as_str().to_owned())
}

/// As [`server_tls`], for direct TLS: ALPN `xmpp-server` (XEP-0368).
fn direct_tls_config(server: &Server) -> Arc<rustls::ServerConfig> {
    server
        .s2s
        .server_direct_tls
        .get_or_init(|| {
            let mut c = rustls::ServerConfig::clone(&server_tls(server));
            c.alpn_protocols = vec![b"xmpp-server".to_vec()];
            Arc::new(c)
        })
        .clone()
}

/// The domains' certificates for other servers, theirs asked for (no
/// ALPN: STARTTLS).
fn server_tls(server: &Server) -> Arc<rustls::ServerConfig> {
    server
        .s2s
        .server_tls
        .get_or_init(|| super::certs::server_config(server))
        .clone()
}
