//! XEP-0363 HTTP File Upload, the XMPP half: the `upload.<domain>` service
//! of every served domain (its disco#info with the XEP-0128 form giving
//! `max-file-size`) and slot requests. A slot is stateless until its PUT:
//! the PUT URL carries a token, HMAC-SHA256 over the slot's id, owner,
//! file name, size, type and expiry under a key every node shares (from
//! `[upload] secret` or the replicated store), so any node takes the PUT.
//! The HTTP half (PUT, GET, expiry, fetching from another node) is
//! `crate::http::upload`.
//!
//! What is stored, and where: `crate::storage::upload`.

use super::Module;
use super::disco::{NS_INFO, NS_ITEMS};
use crate::server::Server;
use crate::stanza::{Condition, NS_CLIENT, StanzaError, error_reply, iq_result};
use crate::storage::upload::{FILES, META, USER_FILES};
use crate::xml::Element;
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use starling_cluster::StoreError;

pub const NS_UPLOAD: &str = "urn:xmpp:http:upload:0";
const NS_DATA: &str = "jabber:x:data";

pub static MODULE: Module = Module {
    name: "upload",
    spec: "XEP-0363",
    config_section: Some("upload"),
    spaces: &[FILES, USER_FILES, META],
    ..Module::EMPTY
};

/// Per-server state: the shared key, read once, and each user's slot
/// requests in the current minute.
#[derive(Default)]
pub struct State {
    secret: tokio::sync::OnceCell<Vec<u8>>,
    requests: dashmap::DashMap<String, (std::time::Instant, u32)>,
}

/// The rate window of `[upload] slots_per_minute`.
const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

impl State {
    /// Counts a slot request of `bare`; `Err(seconds)` until the window
    /// that has reached `limit` ends.
    fn take(&self, bare: &str, limit: u32) -> Result<(), u64> {
        if limit == 0 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        if self.requests.len() > 10_000 {
            self.requests.retain(|_, (start, _)| now - *start < WINDOW);
        }
        let mut e = self.requests.entry(bare.to_owned()).or_insert((now, 0));
        if now - e.0 >= WINDOW {
            *e = (now, 0);
        }
        if e.1 >= limit {
            return Err((WINDOW - (now - e.0)).as_secs() + 1);
        }
        e.1 += 1;
        Ok(())
    }
}

/// What a PUT token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub slot: String,
    pub owner: String,
    pub filename: String,
    pub size: u64,
    /// Empty: the client gave none.
    pub content_type: String,
    pub expires: i64,
}

impl Claims {
    fn encode(&self) -> String {
        // Fields cannot contain a newline: names and types are checked.
        format!(
            "v1\n{}\n{}\n{}\n{}\n{}\n{}",
            self.slot, self.owner, self.filename, self.size, self.content_type, self.expires
        )
    }

    fn decode(s: &str) -> Option<Claims> {
        let mut it = s.split('\n');
        if it.next()? != "v1" {
            return None;
        }
        let c = Claims {
            slot: it.next()?.to_owned(),
            owner: it.next()?.to_owned(),
            filename: it.next()?.to_owned(),
            size: it.next()?.parse().ok()?,
            content_type: it.next()?.to_owned(),
            expires: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(c)
    }

    /// `base64url(claims) . base64url(HMAC-SHA256(key, claims))`.
    pub fn sign(&self, key: &[u8]) -> String {
        let text = self.encode();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}", b64.encode(&text), b64.encode(mac(key, &text)))
    }

    /// The claims of a token made with `key`, if its MAC is right.
    pub fn verify(token: &str, key: &[u8]) -> Option<Claims> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (text, tag) = token.split_once('.')?;
        let text = String::from_utf8(b64.decode(text).ok()?).ok()?;
        let tag = b64.decode(tag).ok()?;
        let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).ok()?;
        m.update(text.as_bytes());
        m.verify_slice(&tag).ok()?;
        Claims::decode(&text)
    }
}

fn mac(key: &[u8], text: &str) -> Vec<u8> {
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("any key size");
    m.update(text.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// The JID of `domain`'s upload service.
pub fn service_jid(server: &Server, domain: &str) -> String {
    format!("{}.{domain}", server.config.upload.subdomain)
}

/// The shared key of upload tokens: `[upload] secret`, else one random key
/// made by the first node that needs it and kept in the replicated store.
pub async fn secret(server: &Server) -> Result<&[u8], StoreError> {
    server
        .upload
        .secret
        .get_or_try_init(|| load_secret(server))
        .await
        .map(Vec::as_slice)
}

async fn load_secret(server: &Server) -> Result<Vec<u8>, StoreError> {
    match &server.config.upload.secret {
        Some(s) => Ok(s.as_bytes().to_vec()),
        None => server.storage.upload_secret().await,
    }
}

/// Bytes `bare` keeps stored, and the oldest of their files' upload time
/// (when files expire: it says when room is made).
pub fn usage(server: &Server, bare: &str) -> Result<(u64, Option<i64>), StoreError> {
    let mut total = 0u64;
    let mut oldest: Option<i64> = None;
    for (slot, size) in server.storage.upload_usage(bare)? {
        total = total.saturating_add(size);
        if server.config.upload.expire_after_secs > 0
            && let Some(meta) = server.storage.upload_file(&slot)?
        {
            oldest = Some(oldest.map_or(meta.created, |o| o.min(meta.created)));
        }
    }
    Ok((total, oldest))
}

/// Whether `name` can be a file name: not empty, at most 255 bytes, not
/// `.` or `..`, no path separator, NUL or other control character.
pub fn valid_filename(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && !name.starts_with("..")
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

/// Whether `t` is a media type `type/subtype` of RFC 6838 token characters
/// (parameters allowed after `;`).
pub fn valid_content_type(t: &str) -> bool {
    let essence = t.split(';').next().unwrap_or("").trim();
    let tok = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    t.len() <= 255
        && !t.chars().any(char::is_control)
        && essence
            .split_once('/')
            .is_some_and(|(a, b)| tok(a) && tok(b))
}

/// The media type without parameters, lower case.
pub fn essence(t: &str) -> String {
    t.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn type_allowed(allowed: &[String], t: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let e = essence(t);
    allowed.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        match a.strip_suffix("/*") {
            Some(family) => e.split_once('/').is_some_and(|(f, _)| f == family),
            None => a == e,
        }
    })
}

/// The base of URLs handed out for `domain`, without a trailing slash.
pub fn public_base(server: &Server, domain: &str) -> String {
    let cfg = &server.config.upload;
    match &cfg.public_url {
        Some(u) => u
            .replace("{domain}", domain)
            .trim_end_matches('/')
            .to_owned(),
        None => {
            let scheme = if cfg.tls { "https" } else { "http" };
            if domain.contains('.') {
                format!("{scheme}://{}.{domain}:{}", cfg.subdomain, cfg.port)
            } else {
                // A single-label domain (`localhost`): its subdomains
                // resolve nowhere (no DNS, not /etc/hosts), the domain does.
                format!("{scheme}://{domain}:{}", cfg.port)
            }
        }
    }
}

const FORM_TYPE: &str = NS_UPLOAD;

/// Answers an IQ request (get or set) a local user sent to `domain`'s
/// upload service: the whole reply (result or error), addressed back.
pub async fn handle_iq(server: &Server, bare: &str, domain: &str, iq: &Element) -> Element {
    let set = iq.get_attr("type") == Some("set");
    let payloads: Vec<&Element> = iq.elements().collect();
    let result = match payloads.as_slice() {
        [p] => answer(server, bare, domain, p, set).await,
        _ => Err(Refusal::plain(Condition::BadRequest)),
    };
    match result {
        Ok(payload) => iq_result(iq, Some(payload)),
        Err(r) => {
            let mut reply = error_reply(iq, &r.error).unwrap_or_else(|| iq_result(iq, None));
            if let Some(app) = r.app
                && let Some(err) = reply.get_child_mut("error", NS_CLIENT)
            {
                err.children.push(crate::xml::Node::Element(app));
            }
            reply
        }
    }
}

/// A stanza error with an application-specific condition (XEP-0363 §5).
struct Refusal {
    error: StanzaError,
    app: Option<Element>,
}

impl Refusal {
    fn plain(c: Condition) -> Self {
        Refusal {
            error: c.into(),
            app: None,
        }
    }
    fn text(c: Condition, text: impl Into<String>) -> Self {
        Refusal {
            error: StanzaError::with_text(c, text),
            app: None,
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal {
            error: e.into(),
            app: None,
        }
    }
}

async fn answer(
    server: &Server,
    bare: &str,
    domain: &str,
    p: &Element,
    set: bool,
) -> Result<Element, Refusal> {
    match (p.ns.as_str(), p.name.as_str(), set) {
        (NS_INFO, "query", false) => {
            if p.get_attr("node").is_some() {
                return Err(Refusal::plain(Condition::ItemNotFound));
            }
            Ok(info(server))
        }
        (NS_ITEMS, "query", false) => {
            if p.get_attr("node").is_some() {
                return Err(Refusal::plain(Condition::ItemNotFound));
            }
            Ok(Element::new("query", NS_ITEMS))
        }
        (NS_UPLOAD, "request", false) => request(server, bare, domain, p).await,
        (NS_INFO | NS_ITEMS, "query", true) | (NS_UPLOAD, "request", true) => {
            Err(Refusal::plain(Condition::NotAllowed))
        }
        (NS_UPLOAD, _, _) => Err(Refusal::plain(Condition::FeatureNotImplemented)),
        _ => Err(Refusal::plain(Condition::ServiceUnavailable)),
    }
}

/// disco#info of the service: identity `store/file`, the upload feature
/// and the XEP-0128 form with `max-file-size` (XEP-0363 §3).
fn info(server: &Server) -> Element {
    let field = |var: &str, value: String| {
        Element::new("field", NS_DATA)
            .attr("var", var)
            .child(Element::new("value", NS_DATA).text(value))
    };
    let form = Element::new("x", NS_DATA)
        .attr("type", "result")
        .child(field("FORM_TYPE", FORM_TYPE.to_owned()).attr("type", "hidden"))
        .child(field(
            "max-file-size",
            server.config.upload.max_file_size.to_string(),
        ));
    Element::new("query", NS_INFO)
        .child(
            Element::new("identity", NS_INFO)
                .attr("category", "store")
                .attr("type", "file")
                .attr("name", "HTTP File Upload"),
        )
        .child(Element::new("feature", NS_INFO).attr("var", NS_INFO))
        .child(Element::new("feature", NS_INFO).attr("var", NS_UPLOAD))
        .child(form)
}

/// A slot request (XEP-0363 §4).
async fn request(
    server: &Server,
    bare: &str,
    domain: &str,
    p: &Element,
) -> Result<Element, Refusal> {
    let cfg = &server.config.upload;
    // Both attributes are required (XEP-0363 §4): without one the request
    // is malformed (bad-request); a name this service will not store
    // (a path, `..`, control characters) is a request it understands but
    // refuses (RFC 6120 §8.3.3.9 not-acceptable).
    let Some(filename) = p.get_attr("filename") else {
        return Err(Refusal::text(Condition::BadRequest, "filename is required"));
    };
    if !valid_filename(filename) {
        return Err(Refusal::text(
            Condition::NotAcceptable,
            "The file name must be a plain name: no path, no control characters",
        ));
    }
    let size_attr = p.get_attr("size").map(str::trim).unwrap_or("");
    let size: u64 = match size_attr.parse::<u64>() {
        Ok(n) => n,
        // A size beyond any u64 is still a size: too large.
        Err(_) if !size_attr.is_empty() && size_attr.bytes().all(|b| b.is_ascii_digit()) => {
            u64::MAX
        }
        Err(_) => {
            return Err(Refusal::text(
                Condition::BadRequest,
                "size must be a non-negative integer",
            ));
        }
    };
    let content_type = p.get_attr("content-type").unwrap_or("");
    if !content_type.is_empty() && !valid_content_type(content_type) {
        return Err(Refusal::text(
            Condition::BadRequest,
            "content-type is not a media type",
        ));
    }
    if size > cfg.max_file_size {
        return Err(Refusal {
            error: StanzaError::with_text(
                Condition::NotAcceptable,
                format!(
                    "File too large. The maximum file size is {} bytes",
                    cfg.max_file_size
                ),
            ),
            app: Some(Element::new("file-too-large", NS_UPLOAD).child(
                Element::new("max-file-size", NS_UPLOAD).text(cfg.max_file_size.to_string()),
            )),
        });
    }
    if !content_type.is_empty() && !type_allowed(&cfg.allowed_types, content_type) {
        return Err(Refusal::text(
            Condition::NotAcceptable,
            "Files of this content type are not accepted",
        ));
    }
    if cfg.quota_bytes > 0 {
        let (used, oldest) = usage(server, bare)?;
        if used.saturating_add(size) > cfg.quota_bytes {
            // XEP-0363 §5: a quota is resource-constraint, with when to
            // try again: when the oldest file expires and frees its bytes.
            let retry = oldest
                .filter(|_| cfg.expire_after_secs > 0)
                .and_then(|o| {
                    let at = o.saturating_add(i64::try_from(cfg.expire_after_secs).ok()?);
                    chrono::DateTime::from_timestamp(at, 0)
                })
                .map(|t| {
                    Element::new("retry", NS_UPLOAD)
                        .attr("stamp", t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                });
            return Err(Refusal {
                error: StanzaError::with_text(
                    Condition::ResourceConstraint,
                    format!(
                        "Quota reached. You can only keep {} bytes of files; {used} are in use",
                        cfg.quota_bytes
                    ),
                ),
                app: retry,
            });
        }
    }
    if let Err(wait) = server.upload.take(bare, cfg.slots_per_minute) {
        let at = chrono::Utc::now() + chrono::Duration::seconds(i64::try_from(wait).unwrap_or(60));
        return Err(Refusal {
            error: StanzaError::with_text(
                Condition::ResourceConstraint,
                format!(
                    "Quota reached. You can only request {} upload slots a minute",
                    cfg.slots_per_minute
                ),
            ),
            app: Some(
                Element::new("retry", NS_UPLOAD)
                    .attr("stamp", at.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
            ),
        });
    }
    let key = secret(server).await?;
    let claims = Claims {
        slot: uuid::Uuid::new_v4().simple().to_string(),
        owner: bare.to_owned(),
        filename: filename.to_owned(),
        size,
        content_type: content_type.to_owned(),
        expires: chrono::Utc::now().timestamp()
            + i64::try_from(cfg.slot_lifetime_secs).unwrap_or(i64::MAX / 2),
    };
    let url = format!(
        "{}/{}/{}",
        public_base(server, domain),
        claims.slot,
        percent_encoding::utf8_percent_encode(filename, PATH_SEGMENT)
    );
    let token = claims.sign(key);
    let header = |name: &str, value: String| {
        Element::new("header", NS_UPLOAD)
            .attr("name", name)
            .text(value)
    };
    Ok(Element::new("slot", NS_UPLOAD)
        .child(
            Element::new("put", NS_UPLOAD)
                .attr("url", url.clone())
                .child(header("Authorization", format!("Bearer {token}"))),
        )
        .child(Element::new("get", NS_UPLOAD).attr("url", url)))
}

/// What is escaped in a URL path segment (everything but RFC 3986
/// unreserved characters).
pub const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_resist_tampering() {
        let c = Claims {
            slot: "abc".into(),
            owner: "a@b".into(),
            filename: "x y.txt".into(),
            size: 42,
            content_type: "text/plain".into(),
            expires: 1_700_000_000,
        };
        let t = c.sign(b"k1k1k1k1k1k1k1k1");
        assert_eq!(Claims::verify(&t, b"k1k1k1k1k1k1k1k1"), Some(c.clone()));
        assert_eq!(Claims::verify(&t, b"other-key-other-"), None);
        let mut forged = c;
        forged.size = 43;
        let (_, tag) = t.split_once('.').unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let tampered = format!("{}.{tag}", b64.encode(forged.encode()));
        assert_eq!(Claims::verify(&tampered, b"k1k1k1k1k1k1k1k1"), None);
    }

    async fn server(dir: &std::path::Path, enabled: bool) -> Server {
        let mut cfg = crate::config::Config {
            data_dir: dir.to_path_buf(),
            domains: vec!["a.example".into(), "b.example".into()],
            ..Default::default()
        };
        cfg.upload.enabled = enabled;
        cfg.check().unwrap();
        let store = starling_cluster::Store::open(starling_cluster::StoreConfig {
            data_dir: dir.join("store"),
            node_id: 1,
            raft_addr: "127.0.0.1:1".into(),
        })
        .await
        .unwrap();
        let tls = crate::net::tls::server_config(&cfg).unwrap();
        Server::new(cfg, crate::storage::Storage::new(store), tls)
    }

    #[tokio::test]
    async fn the_service_of_every_domain_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let s = server(dir.path(), true).await;
        use crate::services::ServiceKind;
        let upload = |s: &Server, d: &str| {
            s.services
                .get(d)
                .filter(|h| h.kind == ServiceKind::Upload)
                .map(|h| h.parent.clone())
        };
        assert_eq!(upload(&s, "upload.a.example").as_deref(), Some("a.example"));
        assert_eq!(upload(&s, "upload.b.example").as_deref(), Some("b.example"));
        for not in [
            "a.example",
            "upload.c.example",
            "files.a.example",
            "upload.a.example.evil",
            "uploada.example",
            "upload.",
            "",
        ] {
            assert_eq!(upload(&s, not), None, "{not:?}");
        }
        assert_eq!(
            s.services
                .of_parent("a.example")
                .filter(|(_, h)| h.kind == ServiceKind::Upload)
                .count(),
            1
        );
        // The shared key is made once and then the same.
        let k1 = secret(&s).await.unwrap().to_vec();
        assert_eq!(s.storage.upload_secret().await.unwrap(), k1);
        assert_eq!(k1.len(), 32);
        assert_eq!(usage(&s, "u@a.example").unwrap(), (0, None));
        s.storage.store.shutdown().await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let off = server(dir.path(), false).await;
        assert!(off.services.get("upload.a.example").is_none());
        off.storage.store.shutdown().await.unwrap();
    }

    #[test]
    fn file_names_and_types() {
        for bad in [
            "", ".", "..", "../x", "a/b", "a\\b", "a\0b", "a\nb", "..hidden",
        ] {
            assert!(!valid_filename(bad), "{bad:?}");
        }
        for good in ["a.txt", "ünïcode €.pdf", "a..b", ".profile"] {
            assert!(valid_filename(good), "{good:?}");
        }
        assert!(valid_content_type("image/png"));
        assert!(valid_content_type("text/plain; charset=utf-8"));
        assert!(!valid_content_type("image"));
        assert!(!valid_content_type("a/b\nc"));
        assert!(type_allowed(&["image/*".into()], "image/png"));
        assert!(!type_allowed(&["image/*".into()], "text/html"));
    }
}
