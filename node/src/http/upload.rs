//! XEP-0363 HTTP File Upload, the HTTP half: PUT of a slot (checked
//! against its token), GET/HEAD of a stored file (with Range from
//! actix-files), fetching a file that another node of the cluster holds,
//! and expiry. The XMPP half is `crate::modules::upload`.
//!
//! Files live on the disk of the node that took the PUT (`[upload] path`,
//! default `<data_dir>/upload`), named by slot id; their records are in
//! the replicated store. A GET on another node fetches the file from the
//! owner's listener (its URL and certificate fingerprints are in the
//! store, so the fetch pins the owner's certificate) into a local cache,
//! then serves it. Right after a PUT the owner also has one other node
//! (by rendezvous hashing of the slot over the live nodes) fetch a copy, so
//! that a file outlives its owner's death: a GET whose owner is unreachable
//! is served from another node's copy. With `[upload] shared_path`, every
//! node reads the one directory instead.

use crate::modules::upload::{self as m, Claims};
use crate::server::Server;
use crate::storage::upload::{FileMeta, NodeListener};
use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Marks a request between nodes. A GET is answered only from the node's
/// own disk (its files and its copies of others', never fetched on); a
/// POST with the value [`COPY`] asks the node to fetch a copy of the file.
const INTERNAL: &str = "x-starling-internal";
const COPY: &str = "copy";

/// Where this node keeps files (the shared directory when there is one).
pub fn dir(server: &Server) -> PathBuf {
    let cfg = &server.config.upload;
    cfg.shared_path
        .clone()
        .or_else(|| cfg.path.clone())
        .unwrap_or_else(|| server.config.data_dir.join("upload"))
}

fn cache_dir(server: &Server) -> PathBuf {
    dir(server).join(".cache")
}

/// Starts the listener (when `[upload] enabled`) and publishes where it
/// is for the other nodes. Runs inside the actix system.
pub async fn start(server: Arc<Server>) -> anyhow::Result<Option<actix_web::dev::ServerHandle>> {
    use anyhow::Context as _;
    let cfg = &server.config.upload;
    if !cfg.enabled {
        return Ok(None);
    }
    let d = dir(&server);
    std::fs::create_dir_all(d.join(".cache"))
        .with_context(|| format!("creating the upload directory {}", d.display()))?;
    let addr = format!("{}:{}", cfg.bind, cfg.port);
    let data = web::Data::new(server.clone());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let http = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .default_service(web::to(dispatch))
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(2);
    let keys = if cfg.tls {
        crate::net::tls::certified_keys(&server.config)?
    } else {
        Default::default()
    };
    let pins = keys
        .values()
        .filter_map(|k| k.end_entity_cert().ok())
        .map(|c| hex(&sha2::Sha256::digest(c.as_ref())))
        .collect();
    let http = if cfg.tls {
        http.bind_rustls_0_23(&addr, tls_config(&server, keys)?)
    } else {
        http.bind(&addr)
    }
    .with_context(|| format!("upload listener on {addr}"))?;
    let running = http.run();
    let handle = running.handle();
    actix_rt::spawn(running);
    tracing::info!(%addr, tls = cfg.tls, "upload (XEP-0363) listening");
    let s = server.clone();
    actix_rt::spawn(async move { publish_listener(&s, pins).await });
    Ok(Some(handle))
}

/// The URL other nodes fetch from.
fn internal_url(server: &Server) -> String {
    let cfg = &server.config.upload;
    if let Some(u) = &cfg.internal_url {
        return u.trim_end_matches('/').to_owned();
    }
    let adv = server.config.cluster.advertised();
    let host = adv.rsplit_once(':').map_or(adv.as_str(), |(h, _)| h);
    let scheme = if cfg.tls { "https" } else { "http" };
    format!("{scheme}://{host}:{}", cfg.port)
}

/// The listener's TLS: the certificates of the c2s listener, chosen by SNI
/// for the domain or one of its service hosts (`upload.<domain>`, the host
/// of `public_url`), which a generated certificate names and a configured
/// one should name too.
fn tls_config(
    server: &Server,
    by_domain: HashMap<String, Arc<CertifiedKey>>,
) -> anyhow::Result<rustls::ServerConfig> {
    let default = by_domain
        .get(&server.config.domains[0])
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no certificate for the first domain"))?;
    // The service hosts of each domain (upload.<domain>, the host of
    // public_url) get that domain's certificate.
    let mut by_name = HashMap::new();
    for (domain, key) in &by_domain {
        for host in crate::net::tls::service_hosts(&server.config, domain) {
            by_name.entry(host).or_insert_with(|| key.clone());
        }
    }
    by_name.extend(by_domain);
    let resolver = ServiceSni { by_name, default };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct ServiceSni {
    /// Each domain and each of its service hosts, lower case.
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for ServiceSni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = hello
            .server_name()
            .and_then(|n| self.by_name.get(&n.to_ascii_lowercase()));
        Some(found.unwrap_or(&self.default).clone())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Records this node's listener in the store (retried while the cluster
/// has no quorum yet).
async fn publish_listener(server: &Server, pins: Vec<String>) {
    let me = NodeListener {
        url: internal_url(server),
        pins,
    };
    for attempt in 0..60u32 {
        match server.storage.put_upload_listener(&me).await {
            Ok(()) => return,
            Err(e) if attempt == 59 => {
                tracing::warn!(error = %e, "could not publish the upload listener; other nodes cannot fetch files stored here");
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
        }
    }
}

fn status(code: StatusCode, text: &str) -> HttpResponse {
    cors(HttpResponse::build(code))
        .content_type("text/plain; charset=utf-8")
        .body(format!("{text}\n"))
}

fn cors(mut b: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    // XEP-0363 §7: web clients upload from another origin.
    b.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "GET, HEAD, PUT, OPTIONS",
        ))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "Authorization, Content-Type",
        ))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "86400"));
    b
}

/// The slot id and (decoded) file name: the last two path segments, so a
/// `public_url` with a path prefix (behind a proxy) works unchanged.
fn slot_and_name(req: &HttpRequest) -> Option<(String, String)> {
    let path = req.uri().path();
    let (rest, name) = path.rsplit_once('/')?;
    let (_, slot) = rest.rsplit_once('/')?;
    // Slot ids are 32 hex digits: anything else is refused before any
    // lookup (no read barrier for a scanner's guesses).
    if slot.len() != 32 || !slot.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .ok()?
        .into_owned();
    Some((slot.to_owned(), name))
}

async fn dispatch(
    req: HttpRequest,
    payload: web::Payload,
    server: web::Data<Arc<Server>>,
) -> HttpResponse {
    let Some((slot, name)) = slot_and_name(&req) else {
        return status(StatusCode::NOT_FOUND, "not found");
    };
    match *req.method() {
        Method::PUT => {
            let resp = put(&req, payload, &server, &slot, &name).await;
            if resp.status() == StatusCode::CREATED {
                actix_web::rt::spawn(copy_elsewhere(server.get_ref().clone(), slot, name));
            }
            resp
        }
        Method::GET | Method::HEAD => get(&req, &server, &slot, &name).await,
        Method::POST if req.headers().get(INTERNAL).is_some_and(|v| v == COPY) => {
            copy_here(&server, &slot, &name).await
        }
        Method::OPTIONS => cors(HttpResponse::NoContent()).finish(),
        _ => cors(HttpResponse::MethodNotAllowed())
            .insert_header((header::ALLOW, "GET, HEAD, PUT, OPTIONS"))
            .finish(),
    }
}

/// A PUT to a slot: the token must be valid, unexpired and for this slot;
/// Content-Length must be the slot's size and Content-Type its type; a
/// slot takes one upload (409 after).
async fn put(
    req: &HttpRequest,
    mut payload: web::Payload,
    server: &Server,
    slot: &str,
    name: &str,
) -> HttpResponse {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return status(StatusCode::FORBIDDEN, "no upload token");
    };
    let key = match m::secret(server).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "upload key unavailable");
            return status(StatusCode::SERVICE_UNAVAILABLE, "try again later");
        }
    };
    let Some(claims) = Claims::verify(token.trim(), key) else {
        return status(StatusCode::FORBIDDEN, "invalid upload token");
    };
    if claims.slot != slot || claims.filename != name {
        return status(StatusCode::FORBIDDEN, "the token is for another slot");
    }
    let now = chrono::Utc::now().timestamp();
    if claims.expires <= now {
        // The slot existed and is gone for good (a new one is needed).
        return status(StatusCode::GONE, "the upload slot has expired");
    }
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        None => return status(StatusCode::LENGTH_REQUIRED, "Content-Length is required"),
        Some(n) if n > claims.size => {
            return status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Content-Length is larger than the slot's size",
            );
        }
        Some(n) if n != claims.size => {
            return status(
                StatusCode::BAD_REQUEST,
                "Content-Length differs from the slot's size",
            );
        }
        Some(_) => {}
    }
    let sent_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !claims.content_type.is_empty() && m::essence(sent_type) != m::essence(&claims.content_type)
    {
        return status(
            StatusCode::BAD_REQUEST,
            "Content-Type differs from the slot's content-type",
        );
    }
    let content_type = if !claims.content_type.is_empty() {
        claims.content_type.clone()
    } else if m::valid_content_type(sent_type) {
        sent_type.to_owned()
    } else {
        "application/octet-stream".to_owned()
    };
    match server.storage.upload_file(slot) {
        Ok(Some(_)) => return status(StatusCode::CONFLICT, "this slot was already used"),
        Ok(None) => {}
        Err(_) => return status(StatusCode::SERVICE_UNAVAILABLE, "try again later"),
    }
    let quota = server.config.upload.quota_bytes;
    if quota > 0 {
        match m::usage(server, &claims.owner) {
            Ok((used, _)) if used.saturating_add(claims.size) > quota => {
                return status(StatusCode::PAYLOAD_TOO_LARGE, "upload quota reached");
            }
            Ok(_) => {}
            Err(_) => return status(StatusCode::SERVICE_UNAVAILABLE, "try again later"),
        }
    }
    let d = dir(server);
    let part = d.join(format!(".part-{slot}-{}", uuid::Uuid::new_v4().simple()));
    if let Err(resp) = receive(&mut payload, &part, claims.size).await {
        let _ = tokio::fs::remove_file(&part).await;
        return resp;
    }
    let meta = FileMeta {
        owner: claims.owner.clone(),
        filename: claims.filename.clone(),
        size: claims.size,
        content_type,
        created: now,
        node: server.storage.store.node_id(),
        upload: uuid::Uuid::new_v4().simple().to_string(),
    };
    match server.storage.add_upload(slot, &meta).await {
        Ok(true) => {}
        Ok(false) => {
            let _ = tokio::fs::remove_file(&part).await;
            return status(StatusCode::CONFLICT, "this slot was already used");
        }
        Err(e) => {
            tracing::warn!(error = %e, slot, "upload record not written");
            let _ = tokio::fs::remove_file(&part).await;
            return status(StatusCode::SERVICE_UNAVAILABLE, "try again later");
        }
    }
    if let Err(e) = tokio::fs::rename(&part, d.join(slot)).await {
        tracing::error!(error = %e, slot, "could not keep an uploaded file");
        let _ = tokio::fs::remove_file(&part).await;
        let _ = server.storage.remove_upload(slot, &meta.owner).await;
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not store the file",
        );
    }
    metrics::counter!("starling_upload_files_total").increment(1);
    cors(HttpResponse::Created()).finish()
}

/// Writes the body to `part`, refusing more or fewer than `size` bytes.
async fn receive(payload: &mut web::Payload, part: &Path, size: u64) -> Result<(), HttpResponse> {
    let io_error = |e: std::io::Error| {
        tracing::warn!(error = %e, "writing an upload");
        status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not store the file",
        )
    };
    let mut file = tokio::fs::File::create(part).await.map_err(io_error)?;
    let mut got = 0u64;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| status(StatusCode::BAD_REQUEST, "body not received"))?;
        got += chunk.len() as u64;
        if got > size {
            return Err(status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is larger than the slot's size",
            ));
        }
        file.write_all(&chunk).await.map_err(io_error)?;
    }
    if got != size {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "the body is shorter than the slot's size",
        ));
    }
    file.sync_all().await.map_err(io_error)?;
    Ok(())
}

fn expired(server: &Server, meta: &FileMeta, now: i64) -> bool {
    let after = server.config.upload.expire_after_secs;
    after > 0
        && meta
            .created
            .saturating_add(i64::try_from(after).unwrap_or(i64::MAX))
            <= now
}

/// Types a browser shows rather than runs: served `inline`; everything
/// else (HTML, SVG, scripts, ...) as an `attachment`.
fn inline(content_type: &str) -> bool {
    let e = m::essence(content_type);
    (e.starts_with("image/") && e != "image/svg+xml")
        || e.starts_with("audio/")
        || e.starts_with("video/")
        || e == "text/plain"
        || e == "application/pdf"
}

/// A GET or HEAD of a stored file, from this node's disk, the shared
/// directory, or the owner node (fetched once into the cache).
async fn get(req: &HttpRequest, server: &Server, slot: &str, name: &str) -> HttpResponse {
    let store = &server.storage.store;
    let mut meta = server.storage.upload_file(slot).ok().flatten();
    if meta.is_none() && store.has_peers() && req.headers().get(INTERNAL).is_none() {
        // Uploaded through another node a moment ago: catch up once.
        if store.read_barrier().await.is_ok() {
            meta = server.storage.upload_file(slot).ok().flatten();
        }
    }
    let Some(meta) = meta.filter(|f| f.filename == name) else {
        return status(StatusCode::NOT_FOUND, "no such file");
    };
    if expired(server, &meta, chrono::Utc::now().timestamp()) {
        return status(StatusCode::NOT_FOUND, "no such file");
    }
    let local = server.config.upload.shared_path.is_some() || meta.node == store.node_id();
    let path = if local {
        dir(server).join(slot)
    } else if req.headers().get(INTERNAL).is_some() {
        // Another node asked for a file this node does not own: its copy,
        // if it has a whole one; never a fetch on (no loops).
        match complete_copy(server, slot, &meta).await {
            Some(p) => p,
            None => return status(StatusCode::NOT_FOUND, "not stored on this node"),
        }
    } else {
        match cached(server, slot, &meta).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, slot, node = meta.node, "fetching an upload from its node");
                return status(
                    StatusCode::BAD_GATEWAY,
                    "the node holding the file is unreachable",
                );
            }
        }
    };
    let file = match actix_files::NamedFile::open_async(&path).await {
        Ok(f) => f,
        Err(_) => return status(StatusCode::NOT_FOUND, "no such file"),
    };
    let mime: mime::Mime = meta
        .content_type
        .parse()
        .unwrap_or(mime::APPLICATION_OCTET_STREAM);
    let disposition = ContentDisposition {
        disposition: if inline(&meta.content_type) {
            DispositionType::Inline
        } else {
            DispositionType::Attachment
        },
        parameters: vec![filename_param(&meta.filename)],
    };
    let mut resp = file
        .set_content_type(mime)
        .set_content_disposition(disposition)
        .into_response(req);
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    resp
}

fn filename_param(name: &str) -> DispositionParam {
    if name.is_ascii() && !name.contains(['"', '\\']) {
        DispositionParam::Filename(name.to_owned())
    } else {
        DispositionParam::FilenameExt(header::ExtendedValue {
            charset: header::Charset::Ext("UTF-8".into()),
            language_tag: None,
            value: name.as_bytes().to_vec(),
        })
    }
}

/// This node's copy of a file another node owns, when it is whole.
async fn complete_copy(server: &Server, slot: &str, meta: &FileMeta) -> Option<PathBuf> {
    let path = cache_dir(server).join(slot);
    tokio::fs::metadata(&path)
        .await
        .is_ok_and(|md| md.len() == meta.size)
        .then_some(path)
}

/// The cached copy of a file another node holds, fetched first if need be:
/// from its owner, else (the owner unreachable) from a node that has a
/// copy.
async fn cached(server: &Server, slot: &str, meta: &FileMeta) -> anyhow::Result<PathBuf> {
    if let Some(path) = complete_copy(server, slot, meta).await {
        return Ok(path);
    }
    let store = &server.storage.store;
    let others = store
        .live_nodes()
        .into_iter()
        .filter(|n| *n != meta.node && *n != store.node_id());
    let mut last = anyhow::anyhow!("node {} has no upload listener", meta.node);
    for node in std::iter::once(meta.node).chain(others) {
        let Some(listener) = server.storage.upload_listener(node)? else {
            continue;
        };
        match fetch_from(server, &listener, slot, meta).await {
            Ok(path) => return Ok(path),
            Err(e) => {
                tracing::debug!(error = %e, slot, node, "no copy of an upload from that node");
                last = e.context(format!("node {node}"));
            }
        }
    }
    Err(last)
}

/// Fetches `slot` from one node's listener into the cache.
async fn fetch_from(
    server: &Server,
    listener: &NodeListener,
    slot: &str,
    meta: &FileMeta,
) -> anyhow::Result<PathBuf> {
    let path = cache_dir(server).join(slot);
    tokio::fs::create_dir_all(cache_dir(server)).await?;
    let part = cache_dir(server).join(format!(".part-{slot}-{}", uuid::Uuid::new_v4().simple()));
    // Bounded: a node that stops sending mid-file must not hold the GET
    // forever (at least 1 MiB/s, and 30 s).
    let limit = std::time::Duration::from_secs(30 + meta.size / (1024 * 1024));
    let result = match tokio::time::timeout(limit, fetch(server, listener, slot, meta, &part)).await
    {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("fetch took longer than {limit:?}")),
    };
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!("starling_upload_fetches_total", "result" => outcome).increment(1);
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e);
    }
    tokio::fs::rename(&part, &path).await?;
    Ok(path)
}

/// Right after a PUT: one other live node fetches a copy, so the file
/// outlives this node. The nodes are tried in rendezvous order of the slot;
/// a node that just started may not know the others live yet (it has seen
/// none of their lease renewals), so it asks again for a few seconds. Best
/// effort: a failure leaves the file on its owner alone, as before.
async fn copy_elsewhere(server: Arc<Server>, slot: String, name: String) {
    let store = &server.storage.store;
    if server.config.upload.shared_path.is_some() || !store.has_peers() {
        return;
    }
    let me = store.node_id();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = anyhow::anyhow!("no other node is live");
    loop {
        let mut others: Vec<u64> = store
            .live_nodes()
            .into_iter()
            .filter(|n| *n != me)
            .collect();
        while let Some(node) = crate::services::owner_among(&others, &slot) {
            others.retain(|n| *n != node);
            match copy_to(&server, node, &slot, &name).await {
                Ok(()) => {
                    metrics::counter!("starling_upload_copies_total", "result" => "ok")
                        .increment(1);
                    return;
                }
                Err(e) => last = e.context(format!("node {node}")),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    metrics::counter!("starling_upload_copies_total", "result" => "error").increment(1);
    tracing::warn!(error = %last, slot, "an upload was not copied to another node");
}

/// Asks `node` to fetch a copy of the file (`copy_here` there).
async fn copy_to(server: &Server, node: u64, slot: &str, name: &str) -> anyhow::Result<()> {
    let listener = server
        .storage
        .upload_listener(node)?
        .ok_or_else(|| anyhow::anyhow!("no upload listener"))?;
    let path = file_path(slot, name);
    let (resp, _conn) = node_request(server, &listener, hyper::Method::POST, &path, COPY).await?;
    if resp.status() != hyper::StatusCode::NO_CONTENT {
        anyhow::bail!("answered {}", resp.status());
    }
    Ok(())
}

/// Another node (the owner, right after a PUT) asks this one to keep a
/// copy: fetched into the cache, then 204.
async fn copy_here(server: &Server, slot: &str, name: &str) -> HttpResponse {
    let store = &server.storage.store;
    let mut meta = server.storage.upload_file(slot).ok().flatten();
    if meta.is_none() && store.read_barrier().await.is_ok() {
        meta = server.storage.upload_file(slot).ok().flatten();
    }
    let Some(meta) = meta.filter(|f| f.filename == name) else {
        return status(StatusCode::NOT_FOUND, "no such file");
    };
    if meta.node == store.node_id() || server.config.upload.shared_path.is_some() {
        return HttpResponse::NoContent().finish();
    }
    match cached(server, slot, &meta).await {
        Ok(_) => HttpResponse::NoContent().finish(),
        Err(e) => {
            tracing::debug!(error = %e, slot, "no copy of an upload made");
            status(StatusCode::BAD_GATEWAY, "the file could not be fetched")
        }
    }
}

/// The request path of a file on a node's listener.
fn file_path(slot: &str, name: &str) -> String {
    format!(
        "/{slot}/{}",
        percent_encoding::utf8_percent_encode(name, m::PATH_SEGMENT)
    )
}

/// GETs `slot` from a node's listener into `part` (exactly `meta.size`
/// bytes).
async fn fetch(
    server: &Server,
    listener: &NodeListener,
    slot: &str,
    meta: &FileMeta,
    part: &Path,
) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let path = file_path(slot, &meta.filename);
    let (resp, _conn) = node_request(server, listener, hyper::Method::GET, &path, "1").await?;
    if resp.status() != hyper::StatusCode::OK {
        anyhow::bail!("node answered {}", resp.status());
    }
    let size = meta.size;
    let mut body = resp.into_body();
    let mut file = tokio::fs::File::create(part).await?;
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            got += data.len() as u64;
            if got > size {
                anyhow::bail!("node sent more than the file's size");
            }
            file.write_all(&data).await?;
        }
    }
    if got != size {
        anyhow::bail!("node sent {got} of {size} bytes");
    }
    file.flush().await?;
    Ok(())
}

/// Sends a request marked [`INTERNAL`] (with `internal` as its value) to a
/// node's listener, over TLS pinned to the certificates it published;
/// returns the response and the connection, closed when dropped (keep it
/// until the body is read).
async fn node_request(
    server: &Server,
    listener: &NodeListener,
    method: hyper::Method,
    path: &str,
    internal: &'static str,
) -> anyhow::Result<(hyper::Response<hyper::body::Incoming>, Conn)> {
    use hyper::client::conn::http1::handshake;
    use hyper_util::rt::TokioIo;
    let base: hyper::Uri = listener.url.parse()?;
    let https = base.scheme_str() == Some("https");
    let host = base
        .host()
        .ok_or_else(|| anyhow::anyhow!("no host in {}", listener.url))?
        .to_owned();
    let port = base.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await??;
    type Body = http_body_util::Empty<hyper::body::Bytes>;
    let (mut sender, driver) = if https {
        let config = pinned_client(&listener.pins)?;
        let sni = rustls::pki_types::ServerName::try_from(server.config.domains[0].clone())?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(sni, tcp)
            .await?;
        let (sender, conn) = handshake::<_, Body>(TokioIo::new(tls)).await?;
        (sender, Conn(tokio::spawn(async move { drop(conn.await) })))
    } else {
        let (sender, conn) = handshake::<_, Body>(TokioIo::new(tcp)).await?;
        (sender, Conn(tokio::spawn(async move { drop(conn.await) })))
    };
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host)
        .header(INTERNAL, internal)
        .body(Body::new())?;
    Ok((sender.send_request(req).await?, driver))
}

/// The task driving a connection to another node's listener: aborted when
/// dropped, so that no early return leaves it behind.
struct Conn(tokio::task::JoinHandle<()>);

impl Drop for Conn {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TLS client that accepts exactly the certificates whose SHA-256 is
/// pinned (published by the owner node through the replicated store).
fn pinned_client(pins: &[String]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    crate::net::tls::client_config(Some(pins.to_vec()))
}

/// Deletes expired files, and those of deleted accounts, every
/// `cleanup_interval_secs`: each node its own files (record, bytes,
/// quota), the leader the records of files whose node has not done so for
/// two intervals (a node gone for good); every
/// node drops cached copies and unfinished uploads that are stale.
pub async fn run_cleanup(server: Arc<Server>) {
    let cfg = &server.config.upload;
    if !cfg.enabled {
        return;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(cfg.cleanup_interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match cleanup(&server, chrono::Utc::now().timestamp()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "upload expiry pass"),
            Err(e) => tracing::warn!(error = %e, "upload expiry pass stopped; next interval"),
        }
    }
}

/// One expiry pass; returns how many files' records were deleted.
pub async fn cleanup(server: &Server, now: i64) -> anyhow::Result<usize> {
    let store = &server.storage.store;
    let me = store.node_id();
    let leader = store.leader() == Some(me);
    let shared = server.config.upload.shared_path.is_some();
    let grace = 2 * i64::try_from(server.config.upload.cleanup_interval_secs).unwrap_or(0);
    let mut deleted = 0;
    for (slot, meta) in server.storage.upload_files()? {
        // Expired, or its owner's account was deleted (checked only for a
        // file older than two intervals: a replica that lags behind the
        // account's creation must not take a new account for a deleted one).
        let old = now - meta.created > grace;
        let owner_gone = old && !server.storage.account_exists(&meta.owner)?;
        let gone = owner_gone || expired(server, &meta, now);
        if !gone {
            continue;
        }
        let mine = if shared { leader } else { meta.node == me };
        let orphan = leader
            && (expired(server, &meta, now - grace)
                || owner_gone && now - meta.created > 2 * grace);
        if !(mine || orphan) {
            continue;
        }
        server.storage.remove_upload(&slot, &meta.owner).await?;
        if mine {
            let _ = tokio::fs::remove_file(dir(server).join(&slot)).await;
        }
        deleted += 1;
    }
    // Cached copies of files gone or expired, and unfinished uploads.
    for d in [cache_dir(server), dir(server)] {
        let Ok(mut entries) = tokio::fs::read_dir(&d).await else {
            continue;
        };
        while let Ok(Some(e)) = entries.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale_part = name.starts_with(".part-")
                && e.metadata()
                    .await
                    .ok()
                    .and_then(|md| md.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 3600);
            let stale_copy = d == cache_dir(server)
                && !name.starts_with('.')
                && server
                    .storage
                    .upload_file(&name)?
                    .is_none_or(|f| expired(server, &f, now));
            if stale_part || stale_copy {
                let _ = tokio::fs::remove_file(e.path()).await;
            }
        }
    }
    Ok(deleted)
}
