//! Server-to-server federation (RFC 6120 §3–§5, §13.7; XEP-0220 dialback,
//! XEP-0185 keys; XEP-0288-free: one direction per TCP connection).
//!
//! - **Outgoing links** (`outgoing`): one per (served domain, remote
//!   domain) pair on each node that has something for it, made on demand:
//!   the remote server is found through `[s2s] hosts`, then DNS
//!   (`_xmpp-server._tcp` SRV records, else the domain on port 5269); the
//!   stream is encrypted with STARTTLS and authorised with dialback. What
//!   is sent meanwhile waits in the link's bounded queue; if the link
//!   cannot be made, it bounces with `<remote-server-not-found/>` or
//!   `<remote-server-timeout/>` (RFC 6120 §8.3.3.15–16).
//! - **Incoming streams** (`incoming`): on `[s2s] port`, STARTTLS offered
//!   (required by default), then dialback: a `<db:result/>` is checked by
//!   asking the originating domain's authoritative server over this node's
//!   outgoing link to it (`<db:verify/>`). Stanzas are taken only for the
//!   domain pairs the stream authorised, `from` and `to` checked
//!   (`<invalid-from/>`, `<host-unknown/>`), and handed to the same
//!   routing as a local client's (`deliver`).
//! - **In a cluster** every node opens its own links (several links
//!   between two domains are allowed) and accepts streams; the dialback
//!   secret is shared through the replicated store, so any node answers a
//!   `<db:verify/>` for a key another node made. Nothing else is shared:
//!   a link is the state of one connection, and the presence remote
//!   servers send is remembered (for PEP, `contacts`) by the node that
//!   took it; a publish asks every node to notify from what it knows.
//!
//! Authentication: SASL EXTERNAL (XEP-0178) when the initiating server's
//! certificate was issued for its domain by a CA we trust (`certs`), else
//! dialback. A receiving server's certificate is not verified (self-signed
//! ones are the rule between small servers): TLS gives privacy, SASL or
//! dialback the domain's authentication, as with Prosody's and ejabberd's
//! default settings.

mod certs;
pub mod contacts;
mod deliver;
mod dns;
mod incoming;
mod io;
mod outgoing;

use crate::server::Server;
use crate::stanza::{Condition, NS_CLIENT};
use crate::xml::Element;
use dashmap::DashMap;
use hmac::{KeyInit, Mac};
use sha2::Digest;
use starling_cluster::StoreError;
use std::sync::Arc;

pub use incoming::start as start_listener;

pub const NS_SERVER: &str = "jabber:server";
pub const NS_DIALBACK: &str = "jabber:server:dialback";
/// XEP-0220 §2.4 stream feature (with `<errors/>`: errors are reported).
pub const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";

/// This node's federation state: its outgoing links and the dialback key.
#[derive(Default)]
pub struct S2s {
    /// Outgoing links by (served domain, remote domain).
    links: DashMap<(String, String), outgoing::Link>,
    secret: tokio::sync::OnceCell<Vec<u8>>,
    /// TLS of links, by served domain (its certificate presented) and
    /// whether for direct TLS.
    client_tls: DashMap<(String, bool), Arc<rustls::ClientConfig>>,
    /// TLS of accepted streams (the other server's certificate asked
    /// for): after STARTTLS, and direct (XEP-0368).
    server_tls: std::sync::OnceLock<Arc<rustls::ServerConfig>>,
    server_direct_tls: std::sync::OnceLock<Arc<rustls::ServerConfig>>,
    /// The served domains' certificates and keys.
    keys: std::sync::OnceLock<std::collections::HashMap<String, Arc<rustls::sign::CertifiedKey>>>,
    /// The CAs other servers' certificates are checked against.
    trust: std::sync::OnceLock<certs::Trust>,
    resolver: std::sync::OnceLock<Option<hickory_resolver::TokioResolver>>,
    /// Other domains' users available to local ones, as their servers
    /// told this node (for PEP).
    pub contacts: contacts::Contacts,
}

impl S2s {
    /// The certificate of the served domain `local` (a service's: its
    /// domain's).
    fn certified_key(
        &self,
        server: &Server,
        local: &str,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let keys = self.keys.get_or_init(|| {
            crate::net::tls::certified_keys(&server.config).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no certificates to present to other servers");
                Default::default()
            })
        });
        keys.get(local)
            .or_else(|| {
                server
                    .config
                    .domains
                    .iter()
                    .find(|d| local.ends_with(&format!(".{d}")))
                    .and_then(|d| keys.get(d))
            })
            .cloned()
    }

    fn trust(&self, server: &Server) -> &certs::Trust {
        self.trust
            .get_or_init(|| certs::Trust::load(&server.config.s2s))
    }
}

/// The stream limits of c2s, for server streams too.
fn limits(server: &Server) -> crate::xml::Limits {
    crate::xml::Limits {
        max_stanza_bytes: server.config.c2s.max_stanza_size,
        max_depth: server.config.c2s.max_depth,
        max_attrs: server.config.c2s.max_attributes,
    }
}

/// Whether `to` (a JID, normalised) is at a domain neither served here
/// nor hosted as a service: federation's business.
pub fn is_remote(server: &Server, to: &str) -> bool {
    let domain = domain_of(to);
    !server.is_local(domain) && server.services.get(domain).is_none()
}

/// Whether `[s2s] blocked_domains` / `allowed_domains` let federation
/// talk to `domain` (a listed domain covers its subdomains).
pub fn permitted(server: &Server, domain: &str) -> bool {
    let cfg = &server.config.s2s;
    !listed(&cfg.blocked_domains, domain)
        && (cfg.allowed_domains.is_empty() || listed(&cfg.allowed_domains, domain))
}

/// Whether `domain` is one of `list` or a subdomain of one.
fn listed(list: &[String], domain: &str) -> bool {
    list.iter().any(|d| {
        domain == d
            || domain
                .strip_suffix(d.as_str())
                .is_some_and(|p| p.ends_with('.'))
    })
}

/// The domain part of a JID.
pub fn domain_of(jid: &str) -> &str {
    let bare = jid.split_once('/').map_or(jid, |(b, _)| b);
    bare.rsplit_once('@').map_or(bare, |(_, d)| d)
}

/// Sends `el` (its `from` at a served domain or service of one, its `to`
/// at a remote domain) over the link from that domain to the remote one.
/// With federation off, or a `from` this server cannot speak for, it
/// bounces at once with `<remote-server-not-found/>`.
pub fn send(server: &Server, el: Element) {
    let from_domain = el.get_attr("from").map(domain_of).unwrap_or_default();
    let to_domain = el.get_attr("to").map(domain_of).unwrap_or_default();
    let speaks = server.is_local(from_domain) || server.services.get(from_domain).is_some();
    if !server.config.s2s.enabled || !speaks || to_domain.is_empty() {
        crate::session::im::bounce(server, &el, Condition::RemoteServerNotFound);
        return;
    }
    if !permitted(server, to_domain) {
        metrics::counter!("starling_s2s_bounced_total", "reason" => "policy").increment(1);
        crate::session::im::bounce(server, &el, Condition::Forbidden);
        return;
    }
    let key = (from_domain.to_owned(), to_domain.to_owned());
    let xml = el.to_stream_xml(NS_CLIENT);
    outgoing::enqueue(server, key, xml, el);
}

/// The dialback key (XEP-0185 §2): HMAC-SHA256 keyed with the SHA-256 of
/// the secret (in hex, as the XEP's example computes it), over
/// "receiving originating stream-id", in hex.
pub fn dialback_key(secret: &[u8], receiving: &str, originating: &str, stream_id: &str) -> String {
    let k = hex(&sha2::Sha256::digest(secret));
    let mut m =
        <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(k.as_bytes()).expect("any key size");
    m.update(receiving.as_bytes());
    m.update(b" ");
    m.update(originating.as_bytes());
    m.update(b" ");
    m.update(stream_id.as_bytes());
    hex(&m.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The cluster's dialback secret: `[s2s] secret`, else the replicated one.
async fn secret(server: &Server) -> Result<&[u8], StoreError> {
    server
        .s2s
        .secret
        .get_or_try_init(|| async {
            match &server.config.s2s.secret {
                Some(s) => Ok(s.as_bytes().to_vec()),
                None => server.storage.dialback_secret().await,
            }
        })
        .await
        .map(Vec::as_slice)
}

/// Whether two keys are equal, in time independent of where they differ.
fn same_key(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Our stream header on a server-to-server stream.
fn header(from: Option<&str>, to: Option<&str>, id: Option<&str>, version: bool) -> String {
    let mut h = String::with_capacity(256);
    h.push_str("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'");
    for (name, value) in [("from", from), ("to", to), ("id", id)] {
        if let Some(v) = value {
            h.push(' ');
            h.push_str(name);
            h.push_str("='");
            crate::xml::escape_into(&mut h, v, true);
            h.push('\'');
        }
    }
    if version {
        h.push_str(" version='1.0'");
    }
    h.push('>');
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialback_key_matches_xep_0185_example() {
        // XEP-0185 §3's example.
        assert_eq!(
            dialback_key(
                b"s3cr3tf0rd14lb4ck",
                "xmpp.example.com",
                "example.org",
                "D60000229F"
            ),
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
        );
    }

    #[test]
    fn a_listed_domain_covers_its_subdomains_only() {
        let list = vec!["spam.example".to_owned()];
        assert!(listed(&list, "spam.example"));
        assert!(listed(&list, "muc.spam.example"));
        assert!(!listed(&list, "notspam.example"));
        assert!(!listed(&list, "example"));
        assert!(!listed(&[], "spam.example"));
    }

    #[test]
    fn domains_of_jids() {
        assert_eq!(domain_of("a@b.example/r@x"), "b.example");
        assert_eq!(domain_of("b.example"), "b.example");
        assert_eq!(domain_of("b.example/r"), "b.example");
    }
}
