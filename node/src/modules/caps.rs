//! XEP-0115 Entity Capabilities, on the server's side: what the clients'
//! `<c/>` in presence says they support (PEP's `+notify` filtering,
//! XEP-0163 §4.2), and the server's own caps in the stream features.
//!
//! A `ver` is a hash of a disco#info answer, so once verified (§5.1) it
//! names the same features for everyone: verified entries are shared by
//! every user, kept in the replicated store (`caps`) and in a map of this
//! node that any node rebuilds from the store. A presence whose `ver` is
//! in that map costs one map lookup; an unknown one is read from the store
//! once, and, when nobody verified it yet, asked of the client once with a
//! disco#info query (one query in flight per `ver` on a node, whoever else
//! sends it meanwhile). Nothing is written per presence.

use super::{Event, Flow, Hook, HookCtx, Module, Stage, StreamFeature};
use crate::server::Server;
use crate::stanza::NS_CLIENT;
use crate::storage::CAPS;
use crate::xml::Element;
use base64::Engine;
use dashmap::DashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";
const NS_INFO: &str = super::disco::NS_INFO;
const NS_DATA: &str = "jabber:x:data";
/// The `node` of the server's own caps.
pub const SERVER_NODE: &str = "https://github.com/starling-xmpp/starling";

pub static MODULE: Module = Module {
    name: "caps",
    spec: "XEP-0115",
    // §6.3: an entity that supports caps MUST say so in its disco#info
    // (clients, Smack's `areEntityCapsSupportedByServer` among them, look
    // for it before they trust the stream feature).
    features: &[NS_CAPS],
    stream_features: &[StreamFeature {
        stage: Stage::PostAuth,
        // Replaced by the registry with the element carrying this
        // server's `ver` (`server_caps_xml`), which depends on what the
        // modules declare.
        xml: SERVER_CAPS_PLACEHOLDER,
        when: None,
    }],
    hooks: &[Hook {
        event: Event::PresenceOut,
        priority: 10,
        handler: presence_out,
    }],
    spaces: &[CAPS],
    ..Module::EMPTY
};

/// Stands for the server's caps element in [`MODULE`]'s stream features.
pub const SERVER_CAPS_PLACEHOLDER: &str = "<c xmlns='http://jabber.org/protocol/caps'/>";

/// Verified `ver` -> features, rebuilt from the store on demand.
static KNOWN: LazyLock<DashMap<String, Arc<[String]>>> = LazyLock::new(DashMap::new);

/// The longest `ver` worth looking up (a base64 SHA-256 is 44).
const MAX_VER_LEN: usize = 64;

/// The most verified entries kept in memory on a node.
const MAX_KNOWN: usize = 100_000;

/// Queries in flight: `ver` -> who was asked, and when.
static ASKED: LazyLock<DashMap<String, Asked>> = LazyLock::new(DashMap::new);

struct Asked {
    full: String,
    hash: &'static str,
    since: Instant,
    /// Other sessions of this node that presented the same `ver` while
    /// it was asked: they get their last items once it is known.
    waiting: Vec<String>,
}

/// Sessions remembered per query in flight.
const MAX_WAITING: usize = 64;

/// Queries sent per session (full JID) within a window: a client that
/// keeps changing its caps is not asked more than this, so no client can
/// make the shared store grow fast.
static PER_SESSION: LazyLock<DashMap<String, (u32, Instant)>> = LazyLock::new(DashMap::new);
const MAX_PER_SESSION: u32 = 8;
const SESSION_WINDOW: Duration = Duration::from_secs(600);
/// The most features a verified entry may list.
const MAX_FEATURES: usize = 512;

/// A query left unanswered this long may be asked again (of anyone).
const ASK_TIMEOUT: Duration = Duration::from_secs(30);
/// Queries in flight at most on a node.
const MAX_ASKED: usize = 10_000;
const QUERY_ID_PREFIX: &str = "caps:";

/// The hash algorithms a `ver` can be verified with (the XEP-0115 §5.1
/// names of XEP-0300's hashes).
fn algorithm(name: &str) -> Option<&'static str> {
    match name {
        "sha-1" => Some("sha-1"),
        "sha-256" => Some("sha-256"),
        _ => None,
    }
}

/// The `<c/>` of a presence: (hash, ver, node).
fn caps_of(presence: &Element) -> Option<(&str, &str, &str)> {
    let c = presence.get_child("c", NS_CAPS)?;
    Some((
        c.get_attr("hash")?,
        c.get_attr("ver")?,
        c.get_attr("node").unwrap_or_default(),
    ))
}

/// The `<c/>` of a presence whose hash this server can verify:
/// (algorithm, ver, node).
pub fn presented(presence: &Element) -> Option<(&'static str, &str, &str)> {
    let (hash, ver, node) = caps_of(presence)?;
    Some((algorithm(hash)?, ver, node)).filter(|_| ver.len() <= MAX_VER_LEN)
}

/// The verified features of the client that sent `presence`, if its
/// `<c/>` names a known `ver` (this node's map, else the store).
pub fn features_of(server: &Server, presence: &Element) -> Option<Arc<[String]>> {
    let (hash, ver, _) = caps_of(presence)?;
    if ver.len() > MAX_VER_LEN {
        return None;
    }
    lookup(server, algorithm(hash)?, ver)
}

/// The verified features of `ver` (this node's map, else the store).
pub fn known(server: &Server, hash: &str, ver: &str) -> Option<Arc<[String]>> {
    lookup(server, hash, ver)
}

fn lookup(server: &Server, hash: &str, ver: &str) -> Option<Arc<[String]>> {
    if let Some(f) = KNOWN.get(ver) {
        return Some(f.clone());
    }
    let stored = server.storage.caps(hash, ver).ok().flatten()?;
    let f: Arc<[String]> = stored.into();
    remember(ver, f.clone());
    Some(f)
}

/// Keeps a verified entry in this node's map, up to [`MAX_KNOWN`] of them
/// (past that, entries are read from the store when needed).
fn remember(ver: &str, features: Arc<[String]>) {
    if KNOWN.len() < MAX_KNOWN {
        KNOWN.insert(ver.to_owned(), features);
    }
}

/// Whether `features` has `<node>+notify` (XEP-0163 §4.2).
pub fn wants_notify(features: &[String], node: &str) -> bool {
    features
        .iter()
        .any(|f| f.len() == node.len() + 7 && f.starts_with(node) && f.ends_with("+notify"))
}

/// A client's broadcast presence: an unknown `ver` is looked up in the
/// store, then asked of the client.
fn presence_out(ctx: &HookCtx<'_>, el: &mut Element) -> Flow {
    if el.get_attr("to").is_some() || el.get_attr("type").is_some() {
        return Flow::Pass;
    }
    let Some((hash, ver, node)) = caps_of(el) else {
        return Flow::Pass;
    };
    // A base64 hash of the algorithms above is at most 44 characters.
    let Some(hash) = algorithm(hash).filter(|_| ver.len() <= MAX_VER_LEN) else {
        return Flow::Pass;
    };
    let Some(full) = ctx.full else {
        return Flow::Pass;
    };
    match lookup(ctx.server, hash, ver) {
        Some(features) => changed(ctx.server, ctx.user, full, el, ver, &features),
        None => ask(
            ctx.server,
            crate::s2s::domain_of(ctx.user),
            full,
            hash,
            ver,
            node,
        ),
    }
    Flow::Pass
}

/// A presence with known caps: when the session was available with other
/// caps, the nodes it newly wants get their last items (the initial
/// presence's are sent with its broadcast). One lookup of the session's
/// previous presence.
fn changed(
    server: &Server,
    bare: &str,
    full: &str,
    presence: &Element,
    ver: &str,
    features: &[String],
) {
    let resource = crate::stanza::split(full).1.unwrap_or_default();
    // None: not available before (or the same ver); Some(old features).
    let old: Option<Option<Arc<[String]>>> = server.router.with_resources(bare, |rs| {
        let r = rs
            .iter()
            .find(|r| &*r.resource == resource && r.available)?;
        let before = r.presence.as_ref()?;
        match caps_of(before) {
            Some((_, v, _)) if v == ver => None,
            Some((h, v, _)) => Some(algorithm(h).and_then(|h| lookup(server, h, v))),
            None => Some(None),
        }
    });
    if let Some(old) = old {
        super::pep::caps_changed(server, full, presence, old.as_deref(), features);
    }
}

/// Sends the disco#info query for `ver` to `full` (from the served
/// `domain`; `full` may be a resource of another domain's user), unless
/// one is in flight.
pub fn ask(server: &Server, domain: &str, full: &str, hash: &'static str, ver: &str, node: &str) {
    if let Some(mut a) = ASKED.get_mut(ver)
        && a.since.elapsed() < ASK_TIMEOUT
    {
        if a.full != full && a.waiting.len() < MAX_WAITING && !a.waiting.iter().any(|w| w == full) {
            a.waiting.push(full.to_owned());
        }
        return;
    }
    if !session_may_ask(full) {
        return;
    }
    if ASKED.len() >= MAX_ASKED {
        ASKED.retain(|_, a| a.since.elapsed() < ASK_TIMEOUT);
        if ASKED.len() >= MAX_ASKED {
            return;
        }
    }
    ASKED.insert(
        ver.to_owned(),
        Asked {
            full: full.to_owned(),
            hash,
            since: Instant::now(),
            waiting: Vec::new(),
        },
    );
    let iq = Element::new("iq", NS_CLIENT)
        .attr("type", "get")
        .attr("id", format!("{QUERY_ID_PREFIX}{ver}"))
        .attr("from", domain)
        .attr("to", full)
        .child(Element::new("query", NS_INFO).attr("node", format!("{node}#{ver}")));
    metrics::counter!("starling_caps_queries_total").increment(1);
    let _ = crate::session::im::deliver_to_full(server, full, iq);
}

fn session_may_ask(full: &str) -> bool {
    if PER_SESSION.len() >= MAX_ASKED {
        PER_SESSION.retain(|_, (_, since)| since.elapsed() < SESSION_WINDOW);
    }
    let mut e = PER_SESSION
        .entry(full.to_owned())
        .or_insert((0, Instant::now()));
    if e.1.elapsed() >= SESSION_WINDOW {
        *e = (0, Instant::now());
    }
    e.0 += 1;
    e.0 <= MAX_PER_SESSION
}

/// An IQ result or error a client (`from`, a full JID) sent to the
/// server: the answer to a caps query is verified and, when its hash
/// matches, remembered for everyone, and the sessions that presented it
/// get the last PEP items they want. Returns the features learned.
pub async fn answer(server: &Server, from: &str, el: &Element) -> Option<Arc<[String]>> {
    let ver = el.get_attr("id")?.strip_prefix(QUERY_ID_PREFIX)?;
    let (_, asked) = ASKED.remove_if(ver, |_, a| a.full == from)?;
    if el.get_attr("type") != Some("result") {
        return None;
    }
    let query = el.get_child("query", NS_INFO)?;
    let Some(computed) = ver_of(query, asked.hash) else {
        metrics::counter!("starling_caps_rejected_total").increment(1);
        return None;
    };
    if computed != ver {
        tracing::debug!(ver, computed, "caps hash does not match its disco#info");
        metrics::counter!("starling_caps_rejected_total").increment(1);
        return None;
    }
    let features: Vec<String> = query
        .elements()
        .filter(|e| e.is("feature", NS_INFO))
        .filter_map(|e| e.get_attr("var").map(str::to_owned))
        .collect();
    if features.len() > MAX_FEATURES {
        return None;
    }
    let shared: Arc<[String]> = features.clone().into();
    remember(ver, shared.clone());
    // Stored before the session handles its next stanza, so whatever the
    // client does next finds the features on every node.
    if let Err(e) = server.storage.put_caps(asked.hash, ver, &features).await {
        tracing::debug!(error = %e, "could not store verified caps");
    }
    for full in std::iter::once(from).chain(asked.waiting.iter().map(String::as_str)) {
        // A session that has moved on to other caps meanwhile wants what
        // those say (its presence with them was handled then), not these.
        if presents(server, full, ver) {
            super::pep::caps_learned(server, full, &shared);
        } else if crate::s2s::is_remote(server, full) {
            super::pep::remote::caps_learned(server, full, ver, &shared);
        }
    }
    Some(shared)
}

/// Whether `full` is available with `ver` in its current presence.
fn presents(server: &Server, full: &str, ver: &str) -> bool {
    let (bare, Some(resource)) = crate::stanza::split(full) else {
        return false;
    };
    server.router.with_resources(bare, |rs| {
        rs.iter().any(|r| {
            &*r.resource == resource
                && r.available
                && r.presence
                    .as_ref()
                    .and_then(caps_of)
                    .is_some_and(|(_, v, _)| v == ver)
        })
    })
}

/// A form field of a disco#info answer: its var and sorted values.
type Field<'a> = (&'a str, Vec<String>);

/// The XEP-0115 §5.1 verification string of a disco#info answer, hashed
/// with `hash` and base64-encoded; `None` when the answer is not one a
/// `ver` may name (§5.4: duplicate identities, features or form types,
/// or a form type that is not a hidden field).
pub fn ver_of(query: &Element, hash: &str) -> Option<String> {
    let mut identities: Vec<(&str, &str, &str, &str)> = query
        .elements()
        .filter(|e| e.is("identity", NS_INFO))
        .map(|e| {
            (
                e.get_attr("category").unwrap_or_default(),
                e.get_attr("type").unwrap_or_default(),
                e.get_attr("xml:lang").unwrap_or_default(),
                e.get_attr("name").unwrap_or_default(),
            )
        })
        .collect();
    identities.sort_unstable();
    if identities.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    let mut features: Vec<&str> = query
        .elements()
        .filter(|e| e.is("feature", NS_INFO))
        .filter_map(|e| e.get_attr("var"))
        .collect();
    features.sort_unstable();
    if features.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    let mut forms: Vec<(String, Vec<Field<'_>>)> = Vec::new();
    for x in query.elements().filter(|e| e.is("x", NS_DATA)) {
        let mut form_type = None;
        let mut fields = Vec::new();
        for f in x.elements().filter(|e| e.is("field", NS_DATA)) {
            let var = f.get_attr("var").unwrap_or_default();
            let mut values: Vec<String> = f
                .elements()
                .filter(|e| e.is("value", NS_DATA))
                .map(|v| v.text_content())
                .collect();
            if var == "FORM_TYPE" {
                if f.get_attr("type").is_some_and(|t| t != "hidden") {
                    return None;
                }
                form_type = values.pop();
            } else {
                values.sort_unstable();
                fields.push((var, values));
            }
        }
        // §5.4: a form without a FORM_TYPE is ignored.
        let Some(form_type) = form_type else { continue };
        fields.sort_by(|a, b| a.0.cmp(b.0));
        forms.push((form_type, fields));
    }
    forms.sort_by(|a, b| a.0.cmp(&b.0));
    if forms.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    let mut s = String::new();
    for (category, kind, lang, name) in identities {
        for part in [category, "/", kind, "/", lang, "/", name, "<"] {
            s.push_str(part);
        }
    }
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    for (form_type, fields) in forms {
        s.push_str(&form_type);
        s.push('<');
        for (var, values) in fields {
            s.push_str(var);
            s.push('<');
            for v in values {
                s.push_str(&v);
                s.push('<');
            }
        }
    }
    let digest: Vec<u8> = match hash {
        "sha-1" => {
            use sha1::Digest;
            sha1::Sha1::digest(s.as_bytes()).to_vec()
        }
        "sha-256" => {
            use sha2::Digest;
            sha2::Sha256::digest(s.as_bytes()).to_vec()
        }
        _ => return None,
    };
    Some(base64::engine::general_purpose::STANDARD.encode(digest))
}

/// The server's own disco#info (identity and features), as disco answers
/// it for the domain and for `SERVER_NODE#ver`.
pub fn server_info(server: &Server, q: Element) -> Element {
    server_info_of(server.modules.disco_features(), q)
}

fn server_info_of(features: &[&str], mut q: Element) -> Element {
    q = q.child(
        Element::new("identity", NS_INFO)
            .attr("category", "server")
            .attr("type", "im")
            .attr("name", "Starling"),
    );
    for &f in features {
        q = q.child(Element::new("feature", NS_INFO).attr("var", f));
    }
    q
}

/// The server's `ver` (sha-1) for a feature list.
pub fn server_ver(features: &[&str]) -> String {
    let q = server_info_of(features, Element::new("query", NS_INFO));
    ver_of(&q, "sha-1").unwrap_or_default()
}

/// The `<c/>` stream feature for a feature list.
pub fn server_caps_xml(features: &[&str]) -> String {
    format!(
        "<c xmlns='{NS_CAPS}' hash='sha-1' node='{SERVER_NODE}' ver='{}'/>",
        server_ver(features)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        let scope = [(String::new(), NS_CLIENT.to_owned())];
        crate::xml::parse_element(xml.as_bytes(), &scope, &Default::default()).unwrap()
    }

    /// XEP-0115 §5.2's simple example.
    #[test]
    fn simple_example() {
        let q = parse(
            "<query xmlns='http://jabber.org/protocol/disco#info' node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='>\
             <identity category='client' name='Exodus 0.9.1' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/></query>",
        );
        assert_eq!(
            ver_of(&q, "sha-1").as_deref(),
            Some("QgayPKawpkPSDYmwT/WM94uAlu0=")
        );
    }

    /// XEP-0115 §5.3's complex example (identities in two languages and
    /// an extended form).
    #[test]
    fn complex_example() {
        let q = parse(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
             <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/>\
             <x xmlns='jabber:x:data' type='result'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
             <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
             <field var='os'><value>Mac</value></field>\
             <field var='os_version'><value>10.5.1</value></field>\
             <field var='software'><value>Psi</value></field>\
             <field var='software_version'><value>0.11</value></field>\
             </x></query>",
        );
        assert_eq!(
            ver_of(&q, "sha-1").as_deref(),
            Some("q07IKJEyjvHSyhy//CH0CxmKi8w=")
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let q = parse(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='client' type='pc'/>\
             <feature var='a'/><feature var='a'/></query>",
        );
        assert_eq!(ver_of(&q, "sha-1"), None);
    }

    #[test]
    fn notify_filter() {
        let f = vec!["urn:x+notify".to_owned(), "urn:y".to_owned()];
        assert!(wants_notify(&f, "urn:x"));
        assert!(!wants_notify(&f, "urn:y"));
        assert!(!wants_notify(&f, "urn:"));
    }
}
