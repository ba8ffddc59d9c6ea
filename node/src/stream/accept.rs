//! The XEP-0114 accept protocol up to the handshake: a component opens a
//! stream in `jabber:component:accept` to its own domain, the server
//! answers with a stream id, and the component proves the shared secret
//! with `<handshake>` = lowercase hex SHA-1(stream id ++ secret).
//!
//! Knows streams and secrets, not routing: the caller (`net`) hands a
//! verified stream to `session::component`, which claims the domain in the
//! cluster and only then answers `<handshake/>` (or `<conflict/>`).
//!
//! Errors (RFC 6120 §4.9.3, as XEP-0114 §3 names them): a stream in
//! another namespace is `<invalid-namespace/>`, a domain with no secret
//! configured `<host-unknown/>`, a wrong or missing handshake
//! `<not-authorized/>`, bad XML `<not-well-formed/>` (the parser's).

use super::xmlstream::{XmlStream, read_failed};
use crate::net::transport::Transport;
use crate::server::Server;
use crate::stanza::StreamCondition;
use crate::xml::{Limits, StreamEvent};
use sha1::{Digest, Sha1};
use std::time::Duration;
use tokio::time::Instant;

/// The component stream's namespace (XEP-0114 §2).
pub const NS_COMPONENT: &str = "jabber:component:accept";

/// A component stream whose handshake was verified, not yet answered.
pub struct Verified<S> {
    pub stream: XmlStream<S>,
    /// The component's domain (normalised).
    pub domain: String,
}

/// Our stream header for a component stream (`from` its domain).
fn header(from: &str, id: &str) -> String {
    let mut h = String::with_capacity(200);
    h.push_str("<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='");
    h.push_str(NS_COMPONENT);
    h.push_str("' id='");
    h.push_str(id);
    h.push_str("' from='");
    crate::xml::escape_into(&mut h, from, true);
    h.push_str("'>");
    h
}

/// The handshake value a component with `secret` must send on stream `id`.
pub fn handshake_digest(id: &str, secret: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(id.as_bytes());
    hasher.update(secret.as_bytes());
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(40);
    for b in digest.iter() {
        hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    hex
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn limits(server: &Server) -> Limits {
    Limits {
        max_stanza_bytes: server.config.c2s.max_stanza_size,
        max_depth: server.config.c2s.max_depth,
        max_attrs: server.config.c2s.max_attributes,
    }
}

/// Reads the component's header and handshake; `None` when the stream
/// ended (with the stream error sent).
pub async fn negotiate<S: Transport>(server: &Server, io: S, ip: &str) -> Option<Verified<S>> {
    let cfg = &server.config;
    let domain = cfg.domains.first().cloned().unwrap_or_default();
    let write_timeout = Duration::from_secs(cfg.c2s.write_timeout_secs);
    let mut xs = XmlStream::new(io, limits(server), domain, write_timeout);
    let deadline = Instant::now() + Duration::from_secs(cfg.c2s.handshake_timeout_secs);
    let fail = |result: &'static str| {
        metrics::counter!("starling_component_handshakes_total", "result" => result).increment(1);
    };
    let h = match xs.next(Some(deadline)).await {
        Ok(StreamEvent::Header(h)) => h,
        Ok(_) => {
            fail("bad-stream");
            xs.fail(StreamCondition::NotWellFormed, None).await;
            return None;
        }
        Err(e) => {
            fail("bad-stream");
            read_failed(&mut xs, e).await;
            return None;
        }
    };
    let id = super::new_id();
    let to =
        h.to.as_deref()
            .and_then(|t| jid::BareJid::new(t).ok())
            .filter(|j| j.node().is_none())
            .map(|j| j.domain().as_str().to_owned());
    let from = to.as_deref().unwrap_or(xs.domain.as_str()).to_owned();
    if xs.send_raw(&header(&from, &id)).await.is_err() {
        return None;
    }
    xs.header_sent = true;
    if h.default_ns != NS_COMPONENT {
        fail("invalid-namespace");
        xs.fail(StreamCondition::InvalidNamespace, None).await;
        return None;
    }
    let Some((domain, secret)) = to.and_then(|d| cfg.components.secrets.get_key_value(&d)) else {
        fail("host-unknown");
        xs.fail(StreamCondition::HostUnknown, None).await;
        return None;
    };
    let el = match xs.next(Some(deadline)).await {
        Ok(StreamEvent::Stanza(el)) => el,
        Ok(StreamEvent::End) => {
            xs.close().await;
            return None;
        }
        Ok(StreamEvent::Header(_)) => {
            fail("bad-stream");
            xs.fail(StreamCondition::BadFormat, None).await;
            return None;
        }
        Err(e) => {
            fail("bad-stream");
            read_failed(&mut xs, e).await;
            return None;
        }
    };
    let expected = handshake_digest(&id, secret);
    let given = el.text_content();
    let ok = el.is("handshake", NS_COMPONENT)
        && same(
            given.trim().to_ascii_lowercase().as_bytes(),
            expected.as_bytes(),
        );
    if !ok {
        fail("not-authorized");
        tracing::info!(component = %domain, ip, "component handshake refused");
        // Guessing the secret is slowed down as guessing a password is
        // (`[auth]` failure delays, by address and by component).
        let key = format!("component:{domain}");
        server.throttle.record_failure(ip, Some(&key));
        tokio::time::sleep(server.throttle.failure_delay(ip, Some(&key))).await;
        xs.fail(StreamCondition::NotAuthorized, None).await;
        return None;
    }
    Some(Verified {
        stream: xs,
        domain: domain.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_is_lowercase_hex_sha1_of_id_and_secret() {
        // SHA-1("3BF96D32" ++ "secret"), the stream id of XEP-0114 §3.
        assert_eq!(
            handshake_digest("3BF96D32", "secret"),
            "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136"
        );
        let d = handshake_digest("3BF96D32", "secret");
        assert!(same(d.as_bytes(), d.as_bytes()));
        assert!(!same(d.as_bytes(), &d.as_bytes()[1..]));
        assert!(!same(b"ab", b"ac"));
    }
}
