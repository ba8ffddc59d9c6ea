//! XMPP over BOSH (XEP-0124, XEP-0206) for web clients that cannot use
//! WebSocket: HTTP long-polling on `[bosh] port` (actix-web), path
//! `[bosh] path` (`/http-bind`).
//!
//! A BOSH session is a c2s stream whose bytes travel in HTTP request and
//! response bodies. [`BoshConn`] is the stream's transport: what clients
//! post (the children of `<body/>`) is queued as the stream's input, with
//! a stream header made up at session creation and at each
//! `xmpp:restart`; what the session writes is cut into top-level elements
//! (as for WebSocket) and queued for the next response. So negotiation,
//! the session actor, stream management and everything else are the ones
//! TCP clients have.
//!
//! Requests are taken in `rid` order (up to `requests` ahead; a repeated
//! `rid` gets its response again, XEP-0124 §14.3). A session created with
//! a `newkey` checks each new request's `key` against it (XEP-0124 §15:
//! the SHA-1 of each key, in hex, is the previous one): a wrong or missing
//! key ends the session with `item-not-found`. One request at a time
//! is held open (`hold` 1) for up to `wait` seconds; a newer request
//! releases it. A session with no request for `inactivity` seconds ends,
//! as a closed TCP connection would.
//!
//! A session lives on the node that created it (it is the state of a
//! connection); its `sid` names that node. A request that another node
//! gets is forwarded to it (over HTTPS pinned to the certificates the node
//! published in the replicated store) and its answer passed back, so a
//! load balancer need not keep a client on one node (it saves a hop if it
//! does).

use crate::net::transport::Transport;
use crate::server::Server;
use crate::xml::{Element, Limits};
use actix_web::{HttpRequest, HttpResponse, web};
use dashmap::DashMap;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
const NS_XBOSH: &str = "urn:xmpp:xbosh";
const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
/// Marks a request forwarded by another node (never forwarded again).
const FORWARDED: &str = "x-starling-bosh-forwarded";

/// Requests a client may have open at once (`hold` + 1).
const REQUESTS: u64 = 2;
/// Responses kept for retransmission (XEP-0124 §14.3).
const KEPT: usize = REQUESTS as usize;

/// This node's BOSH sessions, by `sid`.
static SESSIONS: OnceLock<DashMap<String, Arc<Shared>>> = OnceLock::new();
/// The session arbiters, where sessions are negotiated and run.
static ARBITERS: OnceLock<Arc<Vec<actix_rt::ArbiterHandle>>> = OnceLock::new();

fn sessions() -> &'static DashMap<String, Arc<Shared>> {
    SESSIONS.get_or_init(DashMap::new)
}

/// What one BOSH session shares between its HTTP requests and its stream.
struct Shared {
    sid: String,
    domain: String,
    wait: u64,
    inactivity: u64,
    input: Mutex<Input>,
    input_ready: Notify,
    output: Mutex<Output>,
    output_ready: Notify,
    /// Output taken by a response: a writer waiting for room goes on.
    drained: Notify,
    /// Output bytes queued at most before the session's writes wait (as
    /// on a TCP socket whose reader is slow; the session's write timeout
    /// then ends it).
    max_pending: usize,
    /// Releases the request held open when a newer one arrives.
    release: Notify,
    order: Mutex<Order>,
    order_ready: Notify,
    /// Requests being answered now.
    in_flight: AtomicUsize,
    /// When the last request ended (ms since `EPOCH`).
    idle_since: AtomicU64,
}

#[derive(Default)]
struct Input {
    chunks: VecDeque<Vec<u8>>,
    closed: bool,
}

#[derive(Default)]
struct Output {
    items: Vec<String>,
    bytes: usize,
    /// `id` and `from` of the stream header the session wrote.
    header: Option<(String, String)>,
    terminated: bool,
    stream_error: bool,
}

struct Order {
    /// The `rid` the next request must have.
    next: u64,
    /// The last responses, by `rid`.
    kept: VecDeque<(u64, String)>,
    /// The last key of the session's key sequence (hex), when it was
    /// created with one (XEP-0124 §15).
    key: Option<String>,
}

/// Whether `key` is the one before `last` in a key sequence:
/// hex(SHA-1(key)) = last (XEP-0124 §15.1).
fn key_follows(key: &str, last: &str) -> bool {
    use sha1::Digest;
    let digest = sha1::Sha1::digest(key.as_bytes());
    last.len() == 2 * digest.len()
        && digest.iter().zip(last.as_bytes().chunks(2)).all(|(b, h)| {
            std::str::from_utf8(h)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                == Some(*b)
        })
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The stream's transport.
pub struct BoshConn {
    shared: Arc<Shared>,
    out: Vec<u8>,
}

impl Transport for BoshConn {
    async fn readable(&self) -> io::Result<()> {
        loop {
            let notified = self.shared.input_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let input = self.shared.input.lock().unwrap_or_else(|e| e.into_inner());
                if !input.chunks.is_empty() || input.closed {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    fn try_read(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        let mut input = self.shared.input.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        while let Some(chunk) = input.chunks.pop_front() {
            n += chunk.len();
            sink(&chunk);
        }
        if n > 0 {
            Ok(n)
        } else if input.closed {
            Ok(0)
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        use crate::net::websocket::{Piece, outbound, pieces};
        self.out.extend_from_slice(data);
        let text = std::str::from_utf8(&self.out)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))?;
        let (found, used) = pieces(text);
        if !found.is_empty() {
            let mut out = self.shared.output.lock().unwrap_or_else(|e| e.into_inner());
            for p in &found {
                match p {
                    Piece::Header(tag) => {
                        let attrs = crate::xml::scan::start_tag_attrs(tag).unwrap_or_default();
                        let get = |n| {
                            crate::xml::scan::raw_attr(attrs, n)
                                .unwrap_or_default()
                                .to_owned()
                        };
                        out.header.get_or_insert_with(|| (get("id"), get("from")));
                    }
                    Piece::Close => out.terminated = true,
                    Piece::Element(el) => {
                        if el.starts_with("<stream:error") {
                            out.stream_error = true;
                        }
                        let item = outbound(p);
                        out.bytes += item.len();
                        out.items.push(item);
                    }
                }
            }
            drop(out);
            self.shared.output_ready.notify_waiters();
        }
        if used == self.out.len() {
            self.out.clear();
        } else {
            self.out.drain(..used);
        }
        // Backpressure: wait while the client has not taken enough.
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let out = self.shared.output.lock().unwrap_or_else(|e| e.into_inner());
                if out.bytes <= self.shared.max_pending || out.terminated {
                    return Ok(());
                }
            }
            drained.await;
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.shared
            .output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .terminated = true;
        self.shared.output_ready.notify_waiters();
        Ok(())
    }
}

impl Shared {
    fn push_input(&self, bytes: Vec<u8>) {
        self.input
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .chunks
            .push_back(bytes);
        self.input_ready.notify_waiters();
    }

    /// The client is gone: the stream reads its end, and a write waiting
    /// for room goes on (nobody will take its output).
    fn close_input(&self) {
        self.input.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.input_ready.notify_waiters();
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .terminated = true;
        self.drained.notify_waiters();
    }

    fn header(&self) -> Vec<u8> {
        format!(
            "<stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAMS}' to='{}' version='1.0'>",
            crate::xml::escape(&self.domain)
        )
        .into_bytes()
    }

    /// Waits until there is output, the session ended, a newer request
    /// released this one, or `wait` passed; then takes the output.
    async fn take_output(&self, wait: Duration) -> (Vec<String>, bool, bool) {
        let deadline = tokio::time::Instant::now() + wait;
        let release = self.release.notified();
        tokio::pin!(release);
        release.as_mut().enable();
        loop {
            let ready = self.output_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut out = self.output.lock().unwrap_or_else(|e| e.into_inner());
                if !out.items.is_empty() || out.terminated {
                    out.bytes = 0;
                    let taken = (
                        std::mem::take(&mut out.items),
                        out.terminated,
                        out.stream_error,
                    );
                    drop(out);
                    self.drained.notify_waiters();
                    return taken;
                }
            }
            tokio::select! {
                _ = &mut ready => {}
                _ = &mut release => return (Vec::new(), false, false),
                _ = tokio::time::sleep_until(deadline) => return (Vec::new(), false, false),
            }
        }
    }
}

/// A `<body/>` answer.
fn body(attrs: &[(&str, String)], items: &[String]) -> String {
    let mut s = format!("<body xmlns='{NS_HTTPBIND}' xmlns:stream='{NS_STREAMS}'");
    for (k, v) in attrs {
        s.push(' ');
        s.push_str(k);
        s.push_str("='");
        crate::xml::escape_into(&mut s, v, true);
        s.push('\'');
    }
    if items.is_empty() {
        s.push_str("/>");
        return s;
    }
    s.push('>');
    for i in items {
        s.push_str(i);
    }
    s.push_str("</body>");
    s
}

fn respond(status: actix_web::http::StatusCode, text: String) -> HttpResponse {
    metrics::counter!("starling_bosh_requests_total").increment(1);
    HttpResponse::build(status)
        .insert_header(("Content-Type", "text/xml; charset=utf-8"))
        .insert_header(("Access-Control-Allow-Origin", "*"))
        .insert_header(("Cache-Control", "no-store"))
        .body(text)
}

fn ok(text: String) -> HttpResponse {
    respond(actix_web::http::StatusCode::OK, text)
}

/// XEP-0124 §17: a terminal binding condition.
fn terminate(condition: &str) -> HttpResponse {
    let status = match condition {
        "item-not-found" => actix_web::http::StatusCode::NOT_FOUND,
        "bad-request" => actix_web::http::StatusCode::BAD_REQUEST,
        _ => actix_web::http::StatusCode::OK,
    };
    respond(
        status,
        body(
            &[
                ("type", "terminate".into()),
                ("condition", condition.into()),
            ],
            &[],
        ),
    )
}

/// Starts the listener, when `[bosh] enabled`.
pub async fn start(
    server: Arc<Server>,
    arbiters: Arc<Vec<actix_rt::ArbiterHandle>>,
) -> anyhow::Result<Option<actix_web::dev::ServerHandle>> {
    use anyhow::Context as _;
    let cfg = server.config.bosh.clone();
    if !cfg.enabled {
        return Ok(None);
    }
    let _ = ARBITERS.set(arbiters);
    let addr = format!("{}:{}", server.config.c2s.bind, cfg.port);
    let data = web::Data::new(server.clone());
    let limit = server.config.c2s.max_stanza_size * 4 + 4096;
    let path = cfg.path.clone();
    let http = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(limit))
            .route(&path, web::post().to(request))
            .route(
                &path,
                web::method(actix_web::http::Method::OPTIONS).to(preflight),
            )
            .route(&path, web::get().to(info))
            .route("/.well-known/host-meta", web::get().to(host_meta))
            .route("/.well-known/host-meta.json", web::get().to(host_meta_json))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2);
    let http = if cfg.tls {
        http.bind_rustls_0_23(&addr, rustls::ServerConfig::clone(&server.tls_http))
    } else {
        http.bind(&addr)
    }
    .with_context(|| format!("BOSH listener on {addr}"))?;
    let running = http.run();
    let handle = running.handle();
    actix_rt::spawn(running);
    actix_rt::spawn(sweep());
    let s = server.clone();
    actix_rt::spawn(async move { publish_listener(&s).await });
    tracing::info!(%addr, tls = cfg.tls, path = %cfg.path, "BOSH (XEP-0206) listening");
    Ok(Some(handle))
}

async fn preflight() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Access-Control-Allow-Origin", "*"))
        .insert_header(("Access-Control-Allow-Methods", "GET, POST, OPTIONS"))
        .insert_header(("Access-Control-Allow-Headers", "Content-Type"))
        .insert_header(("Access-Control-Max-Age", "86400"))
        .finish()
}

/// XEP-0156: where web clients find this endpoint (and the WebSocket one,
/// when enabled), for the host they asked.
fn links(req: &HttpRequest, server: &Server) -> Vec<(&'static str, String)> {
    let host: String = req
        .connection_info()
        .host()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        .collect();
    // The host without its port (`[::1]:5281`, `example.net:5281`).
    let name = match host.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            h.to_owned()
        }
        _ => host.clone(),
    };
    let cfg = &server.config;
    let scheme = if cfg.bosh.tls { "https" } else { "http" };
    let mut out = vec![(
        "urn:xmpp:alt-connections:xbosh",
        format!("{scheme}://{name}:{}{}", cfg.bosh.port, cfg.bosh.path),
    )];
    if cfg.websocket.enabled {
        let scheme = if cfg.websocket.tls { "wss" } else { "ws" };
        out.push((
            "urn:xmpp:alt-connections:websocket",
            format!(
                "{scheme}://{name}:{}{}",
                cfg.websocket.port, cfg.websocket.path
            ),
        ));
    }
    out
}

async fn host_meta(req: HttpRequest, server: web::Data<Arc<Server>>) -> HttpResponse {
    let mut xml = String::from(
        "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n",
    );
    for (rel, href) in links(&req, &server) {
        xml.push_str(&format!(
            "  <Link rel='{rel}' href='{}'/>\n",
            crate::xml::escape(&href)
        ));
    }
    xml.push_str("</XRD>\n");
    HttpResponse::Ok()
        .insert_header(("Content-Type", "application/xrd+xml"))
        .insert_header(("Access-Control-Allow-Origin", "*"))
        .body(xml)
}

async fn host_meta_json(req: HttpRequest, server: web::Data<Arc<Server>>) -> HttpResponse {
    let links: Vec<serde_json::Value> = links(&req, &server)
        .into_iter()
        .map(|(rel, href)| serde_json::json!({"rel": rel, "href": href}))
        .collect();
    HttpResponse::Ok()
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("Access-Control-Allow-Origin", "*"))
        .body(serde_json::json!({ "links": links }).to_string())
}

async fn info() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Content-Type", "text/plain; charset=utf-8"))
        .body("XMPP over BOSH (XEP-0206): POST <body/> here.\n")
}

/// Ends sessions idle past their `inactivity` (no request in flight).
async fn sweep() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = now_ms();
        let mut gone = Vec::new();
        for s in sessions().iter() {
            let idle = now.saturating_sub(s.idle_since.load(Ordering::Relaxed));
            let ended = s
                .output
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .terminated;
            if s.in_flight.load(Ordering::Relaxed) == 0
                && (idle > s.inactivity * 1000 || (ended && idle > 5_000))
            {
                gone.push(s.sid.clone());
            }
        }
        for sid in gone {
            if let Some((_, s)) = sessions().remove(&sid) {
                // As a TCP connection closing: the session ends (or waits
                // for resumption, XEP-0198).
                s.close_input();
                metrics::gauge!("starling_bosh_sessions").decrement(1.0);
                tracing::debug!(sid, "BOSH session ended: inactivity");
            }
        }
    }
}

/// Marks a request in flight until dropped.
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.idle_since.store(now_ms(), Ordering::Relaxed);
    }
}

async fn request(
    req: HttpRequest,
    payload: web::Bytes,
    server: web::Data<Arc<Server>>,
) -> HttpResponse {
    let limits = Limits {
        max_stanza_bytes: server.config.c2s.max_stanza_size * 4 + 4096,
        max_depth: server.config.c2s.max_depth + 1,
        max_attrs: server.config.c2s.max_attributes,
    };
    let Ok(el) = crate::xml::parse_element(&payload, &[], &limits) else {
        return terminate("bad-request");
    };
    if !el.is("body", NS_HTTPBIND) {
        return terminate("bad-request");
    }
    let Some(rid) = el.get_attr("rid").and_then(|r| r.parse::<u64>().ok()) else {
        return terminate("bad-request");
    };
    match el.get_attr("sid") {
        None => create(&server, &req, &el, rid).await,
        Some(sid) => match sessions().get(sid).map(|s| s.clone()) {
            Some(s) => in_session(&s, &el, rid).await,
            None => match node_of(sid) {
                Some(node)
                    if node != server.storage.store.node_id()
                        && req.headers().get(FORWARDED).is_none() =>
                {
                    forward(&server, node, &payload, el.get_attr("wait")).await
                }
                _ => terminate("item-not-found"),
            },
        },
    }
}

/// The node a `sid` was made on (`<node id in hex>-<random>`).
fn node_of(sid: &str) -> Option<u64> {
    u64::from_str_radix(sid.split_once('-')?.0, 16).ok()
}

/// Where this node's listener is, for other nodes (its HTTPS certificates
/// pinned by their SHA-256).
async fn publish_listener(server: &Server) {
    use sha2::Digest;
    let cfg = &server.config.bosh;
    let adv = server.config.cluster.advertised();
    let host = adv.rsplit_once(':').map_or(adv.as_str(), |(h, _)| h);
    let scheme = if cfg.tls { "https" } else { "http" };
    let pins = if cfg.tls {
        crate::net::tls::certified_keys(&server.config)
            .unwrap_or_default()
            .values()
            .filter_map(|k| k.end_entity_cert().ok())
            .map(|c| {
                sha2::Sha256::digest(c.as_ref())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect()
    } else {
        Vec::new()
    };
    let me = crate::storage::upload::NodeListener {
        url: format!("{scheme}://{host}:{}{}", cfg.port, cfg.path),
        pins,
    };
    for attempt in 0..60u32 {
        match server.storage.put_bosh_listener(&me).await {
            Ok(()) => return,
            Err(e) if attempt == 59 => {
                tracing::warn!(error = %e, "could not publish the BOSH listener; other nodes cannot forward to it");
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Passes a request for a session of `node` on to it, and its answer back.
async fn forward(server: &Server, node: u64, body: &[u8], wait: Option<&str>) -> HttpResponse {
    let Ok(Some(listener)) = server.storage.bosh_listener(node) else {
        return terminate("item-not-found");
    };
    let wait = wait
        .and_then(|w| w.parse::<u64>().ok())
        .unwrap_or(server.config.bosh.max_wait_secs)
        .min(server.config.bosh.max_wait_secs);
    let limit = Duration::from_secs(wait + 10);
    match tokio::time::timeout(limit, post(server, &listener, body)).await {
        Ok(Ok((status, text))) => {
            metrics::counter!("starling_bosh_forwarded_total").increment(1);
            respond(
                actix_web::http::StatusCode::from_u16(status)
                    .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY),
                text,
            )
        }
        Ok(Err(e)) => {
            tracing::debug!(node, error = %e, "BOSH request not forwarded");
            terminate("remote-connection-failed")
        }
        Err(_) => terminate("remote-connection-failed"),
    }
}

/// POSTs `body` to another node's listener (HTTPS pinned to its
/// certificates): the status and the answer's text.
async fn post(
    server: &Server,
    listener: &crate::storage::upload::NodeListener,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    use hyper_util::rt::TokioIo;
    let url: hyper::Uri = listener.url.parse()?;
    let https = url.scheme_str() == Some("https");
    let host = url
        .host()
        .ok_or_else(|| anyhow::anyhow!("no host in {}", listener.url))?
        .to_owned();
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = url.path().to_owned();
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await??;
    let body = body.to_vec();
    if https {
        let config = crate::net::tls::client_config(Some(listener.pins.clone()))?;
        let sni = rustls::pki_types::ServerName::try_from(server.config.domains[0].clone())?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(sni, tcp)
            .await?;
        exchange(TokioIo::new(tls), &host, &path, body).await
    } else {
        exchange(TokioIo::new(tcp), &host, &path, body).await
    }
}

async fn exchange<I>(io: I, host: &str, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, String)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "text/xml; charset=utf-8")
        .header(FORWARDED, "1")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok((status, String::from_utf8(bytes.to_vec())?))
}

/// The payload of a request body, as stream input.
fn payload_of(el: &Element) -> Vec<u8> {
    let mut out = String::new();
    for child in el.elements() {
        out.push_str(&child.to_stream_xml("jabber:client"));
    }
    out.into_bytes()
}

fn attr_local<'a>(el: &'a Element, local: &str) -> Option<&'a str> {
    el.attrs
        .iter()
        .find(|(k, _)| k.rsplit(':').next() == Some(local) && k.contains(':'))
        .map(|(_, v)| v.as_str())
}

/// Session creation (XEP-0124 §7, XEP-0206 §4).
async fn create(server: &Arc<Server>, req: &HttpRequest, el: &Element, rid: u64) -> HttpResponse {
    let cfg = &server.config.bosh;
    let Some(to) = el
        .get_attr("to")
        .and_then(|t| jid::BareJid::new(t).ok())
        .filter(|j| j.node().is_none() && server.is_local(j.domain().as_str()))
        .map(|j| j.domain().as_str().to_owned())
    else {
        return terminate("host-unknown");
    };
    if sessions().len() >= cfg.max_sessions {
        return terminate("remote-connection-failed");
    }
    let wait = el
        .get_attr("wait")
        .and_then(|w| w.parse::<u64>().ok())
        .unwrap_or(cfg.max_wait_secs)
        .clamp(1, cfg.max_wait_secs);
    // The node's id first: any node can tell where the session lives.
    let sid = {
        let bytes: [u8; 16] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("{:x}-{hex}", server.storage.store.node_id())
    };
    let shared = Arc::new(Shared {
        sid: sid.clone(),
        domain: to.clone(),
        wait,
        inactivity: cfg.inactivity_secs,
        input: Mutex::default(),
        input_ready: Notify::new(),
        output: Mutex::default(),
        output_ready: Notify::new(),
        drained: Notify::new(),
        max_pending: server.config.c2s.mailbox_bytes.max(64 * 1024),
        release: Notify::new(),
        order: Mutex::new(Order {
            next: rid.wrapping_add(1),
            kept: VecDeque::new(),
            key: el.get_attr("newkey").map(str::to_owned),
        }),
        order_ready: Notify::new(),
        in_flight: AtomicUsize::new(1),
        idle_since: AtomicU64::new(now_ms()),
    });
    let _flight = InFlight(&shared);
    shared.push_input(shared.header());
    sessions().insert(sid.clone(), shared.clone());
    metrics::gauge!("starling_bosh_sessions").increment(1.0);
    let ip = req
        .peer_addr()
        .map_or_else(|| "0.0.0.0".to_owned(), |a| a.ip().to_string());
    let conn = BoshConn {
        shared: shared.clone(),
        out: Vec::new(),
    };
    let Some(arbiters) = ARBITERS.get() else {
        return terminate("internal-server-error");
    };
    crate::net::spawn_bosh(server.clone(), arbiters, conn, ip);
    // The answer carries the stream's header and features.
    let hs = Duration::from_secs(server.config.c2s.handshake_timeout_secs.max(1));
    let deadline = tokio::time::Instant::now() + hs;
    let mut items = Vec::new();
    loop {
        let (got, ended, _) = shared
            .take_output(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await;
        items.extend(got);
        let header = shared
            .output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .header
            .clone();
        if ended
            || (header.is_some() && !items.is_empty())
            || tokio::time::Instant::now() >= deadline
        {
            let header = header.filter(|_| !ended);
            let Some((id, from)) = header else {
                // Refused at once (a stream error), or no answer in time.
                if sessions().remove(&sid).is_some() {
                    metrics::gauge!("starling_bosh_sessions").decrement(1.0);
                }
                shared.close_input();
                if ended {
                    return ok(body(
                        &[
                            ("type", "terminate".into()),
                            ("condition", "remote-stream-error".into()),
                        ],
                        &items,
                    ));
                }
                return terminate("remote-connection-failed");
            };
            let attrs = [
                ("sid", sid.clone()),
                ("wait", wait.to_string()),
                ("requests", REQUESTS.to_string()),
                ("hold", "1".into()),
                ("inactivity", cfg.inactivity_secs.to_string()),
                ("polling", "2".into()),
                ("ver", "1.11".into()),
                ("from", if from.is_empty() { to.clone() } else { from }),
                ("authid", id),
                ("xmpp:version", "1.0".into()),
                ("xmlns:xmpp", NS_XBOSH.into()),
                ("xmpp:restartlogic", "true".into()),
            ];
            let text = body(&attrs, &items);
            shared
                .order
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .kept
                .push_back((rid, text.clone()));
            return ok(text);
        }
    }
}

/// A request of an existing session.
async fn in_session(s: &Arc<Shared>, el: &Element, rid: u64) -> HttpResponse {
    s.in_flight.fetch_add(1, Ordering::Relaxed);
    let _flight = InFlight(s);
    // In `rid` order: a request that overtook an earlier one waits for it.
    let wait_order = tokio::time::Instant::now() + Duration::from_secs(s.wait + 5);
    loop {
        let ready = s.order_ready.notified();
        tokio::pin!(ready);
        ready.as_mut().enable();
        {
            let mut order = s.order.lock().unwrap_or_else(|e| e.into_inner());
            if rid < order.next {
                // A retransmission (§14.3): answered again, its key not
                // checked again (the sequence has moved on).
                return match order.kept.iter().find(|(r, _)| *r == rid) {
                    Some((_, text)) => ok(text.clone()),
                    None => terminate("item-not-found"),
                };
            }
            if rid > order.next + REQUESTS {
                return terminate("item-not-found");
            }
            if rid == order.next {
                if let Some(last) = &order.key {
                    let Some(key) = el.get_attr("key").filter(|k| key_follows(k, last)) else {
                        // §15.3: a wrong key ends the session, its payload
                        // unread.
                        drop(order);
                        end(s);
                        return terminate("item-not-found");
                    };
                    order.key = Some(el.get_attr("newkey").unwrap_or(key).to_owned());
                }
                break;
            }
        }
        tokio::select! {
            _ = &mut ready => {}
            _ = tokio::time::sleep_until(wait_order) => return terminate("item-not-found"),
        }
    }
    {
        let mut order = s.order.lock().unwrap_or_else(|e| e.into_inner());
        order.next = rid + 1;
    }
    s.order_ready.notify_waiters();
    // The held request (if any) answers now.
    s.release.notify_waiters();
    let input = payload_of(el);
    if !input.is_empty() {
        s.push_input(input);
    }
    if el.get_attr("type") == Some("terminate") {
        end(s);
        let text = body(&[("type", "terminate".into())], &[]);
        keep(s, rid, &text);
        return ok(text);
    }
    if attr_local(el, "restart") == Some("true") {
        s.push_input(s.header());
    }
    let (items, ended, stream_error) = s.take_output(Duration::from_secs(s.wait)).await;
    let text = if ended {
        let mut attrs = vec![("type", "terminate".to_owned())];
        if stream_error {
            attrs.push(("condition", "remote-stream-error".into()));
        }
        body(&attrs, &items)
    } else {
        body(&[], &items)
    };
    keep(s, rid, &text);
    ok(text)
}

/// Ends the session as a client's `terminate` does: the stream is closed
/// and the `sid` forgotten.
fn end(s: &Shared) {
    s.push_input(b"</stream:stream>".to_vec());
    s.close_input();
    if sessions().remove(&s.sid).is_some() {
        metrics::gauge!("starling_bosh_sessions").decrement(1.0);
    }
}

fn keep(s: &Shared, rid: u64, text: &str) {
    let mut order = s.order.lock().unwrap_or_else(|e| e.into_inner());
    order.kept.push_back((rid, text.to_owned()));
    while order.kept.len() > KEPT {
        order.kept.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_declare_the_stream_prefix_and_escape_attributes() {
        assert_eq!(
            body(
                &[("type", "terminate".into()), ("condition", "a'b".into())],
                &[]
            ),
            format!(
                "<body xmlns='{NS_HTTPBIND}' xmlns:stream='{NS_STREAMS}' type='terminate' condition='a&apos;b'/>"
            )
        );
        assert_eq!(
            body(&[], &["<message xmlns=\"jabber:client\"/>".into()]),
            format!(
                "<body xmlns='{NS_HTTPBIND}' xmlns:stream='{NS_STREAMS}'><message xmlns=\"jabber:client\"/></body>"
            )
        );
    }
}
