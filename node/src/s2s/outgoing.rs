//! Links this node opens to other domains' servers: one task per (served
//! domain, remote domain), made when something is first sent there and
//! closed after `[s2s] idle_timeout_secs` without traffic. It finds the
//! server (`[s2s] hosts`, DNS SRV, the domain on 5269), encrypts the stream
//! (STARTTLS), proves the served domain with dialback (`<db:result/>`),
//! then writes what its queue holds. It also carries this node's
//! `<db:verify/>` questions to that domain's server (for streams that
//! server opened to us) and their answers.

use super::io::{Conn, Io, ReadError, xml_condition};
use super::{NS_DIALBACK, NS_TLS, header};
use crate::server::Server;
use crate::stanza::{Condition, StreamCondition};
use crate::xml::NS_STREAMS;
use crate::xml::{Element, StreamEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

/// A link's handle in [`super::S2s`]: its two queues.
pub struct Link {
    id: u64,
    stanzas: mpsc::Sender<String>,
    verifies: mpsc::UnboundedSender<Verify>,
}

/// A `<db:verify/>` question for the remote domain's server: is `key`
/// the key it made for the stream `id` it opened to our `local`?
pub struct Verify {
    id: String,
    key: String,
    reply: oneshot::Sender<Verdict>,
}

/// The answer to a [`Verify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Invalid,
    /// The authoritative server could not be reached (XEP-0220 §2.4:
    /// `<remote-server-not-found/>`).
    Unreachable,
}

/// Why a link ended before it could deliver: what its stanzas bounce with.
#[derive(Clone, Copy, Debug)]
enum Failure {
    NotFound,
    Timeout,
    /// The other server said our dialback key is `invalid` (XEP-0220
    /// §2.1.1: what waits returns with `<internal-server-error/>`).
    Invalid,
}

impl Failure {
    fn condition(self) -> Condition {
        match self {
            Failure::NotFound => Condition::RemoteServerNotFound,
            Failure::Timeout => Condition::RemoteServerTimeout,
            Failure::Invalid => Condition::InternalServerError,
        }
    }
}

type Key = (String, String);

/// The link for `key`, started if there is none (none while the server
/// shuts down).
fn link(
    server: &Server,
    key: &Key,
) -> Option<(mpsc::Sender<String>, mpsc::UnboundedSender<Verify>)> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    if let Some(l) = server.s2s.links.get(key) {
        return Some((l.stanzas.clone(), l.verifies.clone()));
    }
    let server = server.services.server()?;
    let entry = server.s2s.links.entry(key.clone()).or_insert_with(|| {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let (stx, srx) = mpsc::channel(server.config.s2s.max_queue);
        let (vtx, vrx) = mpsc::unbounded_channel();
        tokio::spawn(run(server.clone(), key.clone(), id, srx, vrx));
        Link {
            id,
            stanzas: stx,
            verifies: vtx,
        }
    });
    Some((entry.stanzas.clone(), entry.verifies.clone()))
}

/// Queues a serialised stanza (`el` kept only to bounce it) on its link.
pub fn enqueue(server: &Server, key: Key, xml: String, el: Element) {
    let mut xml = xml;
    for _ in 0..2 {
        let Some((tx, _)) = link(server, &key) else {
            break;
        };
        match tx.try_send(xml) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("starling_s2s_bounced_total", "reason" => "queue-full")
                    .increment(1);
                crate::session::im::bounce(server, &el, Condition::ResourceConstraint);
                return;
            }
            // The link ended between the lookup and the send: a new one.
            Err(mpsc::error::TrySendError::Closed(back)) => {
                server
                    .s2s
                    .links
                    .remove_if(&key, |_, l| l.stanzas.is_closed());
                xml = back;
            }
        }
    }
    crate::session::im::bounce(server, &el, Condition::RemoteServerNotFound);
}

/// Asks `remote`'s authoritative server whether `key` is the dialback key
/// of the stream `id` it opened to our `local` (XEP-0220 §2.1.3).
pub async fn verify(
    server: &Arc<Server>,
    local: &str,
    remote: &str,
    id: &str,
    key: &str,
) -> Verdict {
    let k = (local.to_owned(), remote.to_owned());
    let (reply, answer) = oneshot::channel();
    let q = Verify {
        id: id.to_owned(),
        key: key.to_owned(),
        reply,
    };
    let Some((_, tx)) = link(server, &k) else {
        return Verdict::Unreachable;
    };
    if let Err(mpsc::error::SendError(q)) = tx.send(q) {
        server
            .s2s
            .links
            .remove_if(&k, |_, l| l.verifies.is_closed());
        let Some((_, tx)) = link(server, &k) else {
            return Verdict::Unreachable;
        };
        if tx.send(q).is_err() {
            return Verdict::Unreachable;
        }
    }
    let wait = Duration::from_secs(server.config.s2s.connect_timeout_secs + 5);
    match tokio::time::timeout(wait, answer).await {
        Ok(Ok(v)) => v,
        _ => Verdict::Unreachable,
    }
}

async fn run(
    server: Arc<Server>,
    key: Key,
    id: u64,
    mut stanzas: mpsc::Receiver<String>,
    mut verifies: mpsc::UnboundedReceiver<Verify>,
) {
    let (local, remote) = (&key.0, &key.1);
    metrics::gauge!("starling_s2s_links", "direction" => "out").increment(1.0);
    let mut pending: HashMap<String, Vec<oneshot::Sender<Verdict>>> = HashMap::new();
    let failure = match connect(&server, local, remote).await {
        Ok(conn) => {
            tracing::info!(%local, %remote, "s2s link up to its stream");
            let authorized = conn.authorized;
            let mut link = Running {
                server: &server,
                local,
                remote,
                conn,
                pending: &mut pending,
                authorized,
            };
            link.serve(&mut stanzas, &mut verifies).await
        }
        Err(f) => Some(f),
    };
    server.s2s.links.remove_if(&key, |_, l| l.id == id);
    metrics::gauge!("starling_s2s_links", "direction" => "out").decrement(1.0);
    for (_, replies) in pending.drain() {
        for r in replies {
            let _ = r.send(Verdict::Unreachable);
        }
    }
    // What is left bounces: with the failure's condition, or (a link that
    // worked and closed) as not found.
    stanzas.close();
    verifies.close();
    let mut bounced = 0u64;
    while let Ok(xml) = stanzas.try_recv() {
        let Some(el) = crate::session::im::parse_stored(&xml) else {
            continue;
        };
        match failure {
            // A link that worked and closed (idle, or the peer closed it)
            // as this was queued: on a new link.
            None => enqueue(&server, key.clone(), xml, el),
            Some(f) => {
                crate::session::im::bounce(&server, &el, f.condition());
                bounced += 1;
            }
        }
    }
    while let Ok(v) = verifies.try_recv() {
        let _ = v.reply.send(Verdict::Unreachable);
    }
    if bounced > 0 {
        metrics::counter!("starling_s2s_bounced_total", "reason" => "link-failed")
            .increment(bounced);
        tracing::info!(%local, %remote, bounced, ?failure, "s2s link failed; its stanzas bounced");
    }
}

/// Connects and sets up the stream up to dialback: the stream id the
/// remote server gave, on an encrypted stream (unless TLS is optional and
/// not offered).
async fn connect(server: &Arc<Server>, local: &str, remote: &str) -> Result<Open, Failure> {
    let cfg = &server.config.s2s;
    let deadline = Instant::now() + Duration::from_secs(cfg.connect_timeout_secs);
    let attempt = async {
        let (tcp, direct_tls) = tcp_connect(server, remote).await?;
        let limits = super::limits(server);
        let io = if direct_tls {
            // XEP-0368: TLS first, then the stream.
            let name = rustls::pki_types::ServerName::try_from(remote.to_owned())
                .map_err(|_| Failure::NotFound)?;
            let tls = tokio_rustls::TlsConnector::from(client_tls(server, local, true))
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    tracing::info!(%remote, error = %e, "s2s direct TLS handshake failed");
                    Failure::NotFound
                })?;
            Io::Client(Box::new(tls))
        } else {
            Io::Plain(tcp)
        };
        let tls = if direct_tls { "direct" } else { "starttls" };
        metrics::counter!("starling_s2s_connections_total", "direction" => "out", "tls" => tls)
            .increment(1);
        let mut conn = Conn::new(io, limits, direct_tls);
        let mut stream_id = open(&mut conn, local, remote, deadline).await?;
        if !conn.tls {
            match stream_id
                .1
                .as_ref()
                .and_then(|f| f.get_child("starttls", NS_TLS))
            {
                Some(_) => {
                    conn.send(&format!("<starttls xmlns='{NS_TLS}'/>"))
                        .await
                        .map_err(|_| Failure::NotFound)?;
                    match conn.next(deadline).await {
                        Ok(StreamEvent::Stanza(p)) if p.is("proceed", NS_TLS) => {}
                        _ => return Err(Failure::NotFound),
                    }
                    if conn.buffered() > 0 {
                        return Err(Failure::NotFound);
                    }
                    let name = rustls::pki_types::ServerName::try_from(remote.to_owned())
                        .map_err(|_| Failure::NotFound)?;
                    conn.upgrade_client(client_tls(server, local, false), name)
                        .await
                        .map_err(|e| {
                            tracing::info!(%remote, error = %e, "s2s TLS handshake failed");
                            Failure::NotFound
                        })?;
                    stream_id = open(&mut conn, local, remote, deadline).await?;
                }
                None if cfg.require_tls => {
                    tracing::info!(%remote, "s2s peer offers no STARTTLS; [s2s] require_tls refuses it");
                    conn.fail(StreamCondition::PolicyViolation, Some("TLS is required"))
                        .await;
                    return Err(Failure::NotFound);
                }
                None => {}
            }
        }
        // XEP-0178: SASL EXTERNAL with the domain's certificate when the
        // other server offers it; dialback otherwise (or when it fails).
        let mut authorized = false;
        let offers_external = stream_id.1.as_ref().is_some_and(|f| {
            f.get_child("mechanisms", NS_SASL).is_some_and(|m| {
                m.elements()
                    .any(|e| e.name == "mechanism" && e.text_content().trim() == "EXTERNAL")
            })
        });
        if conn.tls && offers_external && server.config.s2s.sasl_external {
            use base64::Engine;
            let authzid = base64::engine::general_purpose::STANDARD.encode(local);
            conn.send(&format!(
                "<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>{authzid}</auth>"
            ))
            .await
            .map_err(|_| Failure::NotFound)?;
            match conn.next(deadline).await {
                Ok(StreamEvent::Stanza(r)) if r.is("success", NS_SASL) => {
                    metrics::counter!("starling_s2s_sasl_external_total", "direction" => "out", "result" => "success").increment(1);
                    tracing::info!(%local, %remote, "s2s link authorised (SASL EXTERNAL)");
                    conn.restart_stream();
                    stream_id = open(&mut conn, local, remote, deadline).await?;
                    authorized = true;
                }
                Ok(StreamEvent::Stanza(r)) if r.is("failure", NS_SASL) => {
                    let condition = r.elements().next().map(|c| c.name.clone());
                    metrics::counter!("starling_s2s_sasl_external_total", "direction" => "out", "result" => "failure").increment(1);
                    tracing::info!(%local, %remote, ?condition, "s2s SASL EXTERNAL refused; dialback");
                }
                Err(ReadError::Timeout) => return Err(Failure::Timeout),
                _ => return Err(Failure::NotFound),
            }
        }
        Ok(Open {
            conn,
            stream_id: stream_id.0,
            deadline,
            authorized,
        })
    };
    match tokio::time::timeout_at(deadline, attempt).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    }
}

/// A stream set up to the point of dialback.
struct Open {
    conn: Conn,
    stream_id: String,
    deadline: Instant,
    /// Authenticated with SASL EXTERNAL: no dialback.
    authorized: bool,
}

/// Sends our header and reads the peer's and its features (none from a
/// pre-1.0 server): the stream id and the features.
async fn open(
    conn: &mut Conn,
    local: &str,
    remote: &str,
    deadline: Instant,
) -> Result<(String, Option<Element>), Failure> {
    conn.send(&header(Some(local), Some(remote), None, true))
        .await
        .map_err(|_| Failure::NotFound)?;
    let h = match conn.next(deadline).await {
        Ok(StreamEvent::Header(h)) => h,
        Ok(_) => return Err(Failure::NotFound),
        Err(ReadError::Timeout) => return Err(Failure::Timeout),
        Err(_) => return Err(Failure::NotFound),
    };
    let Some(id) = h.id.clone().filter(|i| !i.is_empty()) else {
        // Dialback needs the stream id.
        return Err(Failure::NotFound);
    };
    if h.version.as_deref() != Some("1.0") {
        return Ok((id, None));
    }
    match conn.next(deadline).await {
        Ok(StreamEvent::Stanza(f)) if f.is("features", NS_STREAMS) => Ok((id, Some(f))),
        Ok(StreamEvent::Stanza(e)) if e.is("error", NS_STREAMS) => {
            tracing::info!(%remote, error = %crate::xml::Element::to_stream_xml(&e, ""), "s2s peer refused the stream");
            Err(Failure::NotFound)
        }
        Err(ReadError::Timeout) => Err(Failure::Timeout),
        _ => Err(Failure::NotFound),
    }
}

struct Running<'a> {
    server: &'a Arc<Server>,
    local: &'a str,
    remote: &'a str,
    conn: Open,
    pending: &'a mut HashMap<String, Vec<oneshot::Sender<Verdict>>>,
    authorized: bool,
}

impl Running<'_> {
    /// Dialback, then the link's life. `None` if it closed after working.
    async fn serve(
        &mut self,
        stanzas: &mut mpsc::Receiver<String>,
        verifies: &mut mpsc::UnboundedReceiver<Verify>,
    ) -> Option<Failure> {
        if !self.authorized
            && let Some(f) = self.dialback().await
        {
            return Some(f);
        }
        let idle = Duration::from_secs(self.server.config.s2s.idle_timeout_secs.max(1));
        let until = if self.authorized {
            Instant::now() + idle
        } else {
            self.conn.deadline
        };
        self.run_loop(stanzas, verifies, idle, until).await
    }

    /// Sends our `<db:result/>`; its answer comes in the link's loop.
    async fn dialback(&mut self) -> Option<Failure> {
        let key = match super::secret(self.server).await {
            Ok(s) => super::dialback_key(s, self.remote, self.local, &self.conn.stream_id),
            Err(e) => {
                tracing::warn!(error = %e, "no dialback secret; s2s link not authorised");
                self.conn.conn.close().await;
                return Some(Failure::NotFound);
            }
        };
        let result = format!(
            "<db:result from='{}' to='{}'>{key}</db:result>",
            attr(self.local),
            attr(self.remote)
        );
        if self.conn.conn.send(&result).await.is_err() {
            return Some(Failure::NotFound);
        }
        None
    }

    /// The link's life, once set up.
    async fn run_loop(
        &mut self,
        stanzas: &mut mpsc::Receiver<String>,
        verifies: &mut mpsc::UnboundedReceiver<Verify>,
        idle: Duration,
        mut until: Instant,
    ) -> Option<Failure> {
        loop {
            // What was read already, before waiting for more.
            loop {
                match self.conn.conn.next_buffered() {
                    Ok(Some(ev)) => {
                        if let Some(end) = self.event(ev).await {
                            return end;
                        }
                        if self.authorized {
                            until = Instant::now() + idle;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return self.read_failed(e).await,
                }
            }
            tokio::select! {
                r = self.conn.conn.read_some() => {
                    if let Err(e) = r {
                        return self.read_failed(e).await;
                    }
                }
                Some(xml) = stanzas.recv(), if self.authorized => {
                    if self.conn.conn.send(&xml).await.is_err() {
                        tracing::info!(local = %self.local, remote = %self.remote, "s2s link write failed");
                        return None;
                    }
                    metrics::counter!("starling_s2s_stanzas_total", "direction" => "out").increment(1);
                    until = Instant::now() + idle;
                }
                Some(v) = verifies.recv() => {
                    let q = format!(
                        "<db:verify from='{}' to='{}' id='{}'>{}</db:verify>",
                        attr(self.local), attr(self.remote), attr(&v.id), attr(&v.key)
                    );
                    self.pending.entry(v.id).or_default().push(v.reply);
                    if self.conn.conn.send(&q).await.is_err() {
                        return (!self.authorized).then_some(Failure::NotFound);
                    }
                }
                _ = tokio::time::sleep_until(until) => {
                    if !self.authorized {
                        self.conn.conn.close().await;
                        return Some(Failure::Timeout);
                    }
                    if self.pending.is_empty() && stanzas.is_empty() {
                        tracing::debug!(local = %self.local, remote = %self.remote, "s2s link idle: closed");
                        self.conn.conn.close().await;
                        return None;
                    }
                    until = Instant::now() + idle;
                }
            }
        }
    }

    async fn read_failed(&mut self, e: ReadError) -> Option<Failure> {
        match e {
            ReadError::Xml(x) => self.conn.conn.fail(xml_condition(x), None).await,
            ReadError::Timeout | ReadError::Closed => {}
        }
        (!self.authorized).then_some(Failure::NotFound)
    }

    /// One event from the remote server; `Some` ends the link.
    async fn event(&mut self, ev: StreamEvent) -> Option<Option<Failure>> {
        let el = match ev {
            StreamEvent::Stanza(el) => el,
            StreamEvent::End => {
                self.conn.conn.close().await;
                return Some((!self.authorized).then_some(Failure::NotFound));
            }
            StreamEvent::Header(_) => {
                self.conn
                    .conn
                    .fail(StreamCondition::NotWellFormed, None)
                    .await;
                return Some((!self.authorized).then_some(Failure::NotFound));
            }
        };
        if el.is("error", NS_STREAMS) {
            tracing::info!(local = %self.local, remote = %self.remote, error = %el.to_stream_xml(""), "s2s link ended by a stream error");
            self.conn.conn.close().await;
            return Some((!self.authorized).then_some(Failure::NotFound));
        }
        if el.is("result", NS_DIALBACK) && !self.authorized {
            match el.get_attr("type") {
                Some("valid") => {
                    self.authorized = true;
                    metrics::counter!("starling_s2s_dialback_total", "direction" => "out", "result" => "valid").increment(1);
                    tracing::info!(local = %self.local, remote = %self.remote, "s2s link authorised (dialback)");
                }
                t => {
                    metrics::counter!("starling_s2s_dialback_total", "direction" => "out", "result" => "refused").increment(1);
                    tracing::info!(local = %self.local, remote = %self.remote, r#type = ?t, "s2s dialback refused");
                    self.conn.conn.close().await;
                    // XEP-0220 §2.1.1: `invalid` returns what waits with
                    // `<internal-server-error/>`, an error with
                    // `<remote-server-timeout/>`.
                    let f = match t {
                        Some("invalid") => Failure::Invalid,
                        Some("error") => Failure::Timeout,
                        _ => Failure::NotFound,
                    };
                    return Some(Some(f));
                }
            }
        } else if el.is("verify", NS_DIALBACK) {
            let verdict = match el.get_attr("type") {
                Some("valid") => Verdict::Valid,
                Some("invalid") => Verdict::Invalid,
                _ => Verdict::Unreachable,
            };
            if let Some(id) = el.get_attr("id")
                && let Some(replies) = self.pending.remove(id)
            {
                for r in replies {
                    let _ = r.send(verdict);
                }
            }
        }
        // Anything else on a stream we opened is not for us to act on.
        None
    }
}

fn attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    crate::xml::escape_into(&mut out, s, true);
    out
}

/// A TCP connection to `remote`'s server (`[s2s] hosts`, else DNS), and
/// whether TLS comes first on it (XEP-0368).
async fn tcp_connect(
    server: &Server,
    remote: &str,
) -> Result<(tokio::net::TcpStream, bool), Failure> {
    let cfg = &server.config.s2s;
    let mut targets: Vec<super::dns::Target> = Vec::new();
    if let Some(addr) = cfg.hosts.get(remote) {
        let (direct_tls, addr) = match addr.strip_prefix("tls://") {
            Some(a) => (true, a),
            None => (false, addr.as_str()),
        };
        if let Some((h, p)) = addr.rsplit_once(':')
            && let Ok(port) = p.parse()
        {
            targets.push(super::dns::Target {
                host: h.trim_matches(['[', ']']).to_owned(),
                port,
                direct_tls,
            });
        }
    } else if cfg.dns {
        targets = super::dns::targets(server, remote).await;
    }
    if targets.is_empty() {
        tracing::debug!(%remote, "no address for the remote domain's server");
        return Err(Failure::NotFound);
    }
    for super::dns::Target {
        host,
        port,
        direct_tls,
    } in targets
    {
        let Ok(addrs) = tokio::net::lookup_host((host.as_str(), port)).await else {
            continue;
        };
        for a in addrs {
            // One address that drops SYNs must leave time for the next.
            let attempt =
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(a));
            match attempt.await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok((s, direct_tls));
                }
                Ok(Err(e)) => tracing::debug!(%remote, addr = %a, error = %e, "s2s connect failed"),
                Err(_) => tracing::debug!(%remote, addr = %a, "s2s connect timed out"),
            }
        }
    }
    Err(Failure::NotFound)
}

/// TLS as a client of other servers, for the served domain `local`: its
/// certificate presented (SASL EXTERNAL); the other server's is not
/// checked (the domain is proved by SASL or dialback), handshake
/// signatures are.
/// `direct`: for XEP-0368 direct TLS (ALPN `xmpp-server`).
fn client_tls(server: &Server, local: &str, direct: bool) -> Arc<rustls::ClientConfig> {
    let key = (local.to_owned(), direct);
    if let Some(c) = server.s2s.client_tls.get(&key) {
        return c.clone();
    }
    let mut c =
        super::certs::client_config(server, local).expect("ring supports the default versions");
    if direct {
        let mut d = rustls::ClientConfig::clone(&c);
        d.alpn_protocols = vec![b"xmpp-server".to_vec()];
        c = Arc::new(d);
    }
    server.s2s.client_tls.insert(key, c.clone());
    c
}
