//! XEP-0065 SOCKS5 Bytestreams proxy at `proxy.<domain>` (`[proxy65]`):
//! file transfers between clients that cannot reach each other directly
//! (Conversations, Gajim and Dino fall back to it).
//!
//! - The service answers disco#info (identity `proxy/bytestreams`) and the
//!   IQ-get for its network address: this node's `[proxy65] host` and
//!   `port` (in a cluster, each node its own).
//! - The SOCKS5 listener (RFC 1928: no authentication, CONNECT with a
//!   domain-name address, the XEP's SHA-1 hex of sid + initiator + target)
//!   parks each connection under its address; a second one with the same
//!   address is its peer, a third is refused.
//! - The initiator's `<activate/>` (to the proxy, from the node it asked
//!   for the address: the same node) joins the two: bytes are copied both
//!   ways until either side closes. `<item-not-found/>` when no connection
//!   has that address, `<not-allowed/>` when only one party is connected.
//!
//! Connections wait at most [`PARKED_FOR`] for activation; at most
//! `max_connections` are open on a node, and each direction of a transfer
//! moves at most `max_bytes_per_second` ([`copy_limited`]).

use crate::server::Server;
use crate::stanza::{Condition, iq_result, split};
use crate::xml::Element;
use dashmap::DashMap;
use sha1::Digest;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const NS_BYTESTREAMS: &str = "http://jabber.org/protocol/bytestreams";
const NS_INFO: &str = crate::modules::disco::NS_INFO;
const NS_ITEMS: &str = crate::modules::disco::NS_ITEMS;

/// How long a connection waits for its activation.
const PARKED_FOR: Duration = Duration::from_secs(120);
/// The SOCKS5 handshake's time.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// This node's parked connections, by SOCKS5 address (the hash).
#[derive(Default)]
pub struct Proxy {
    parked: DashMap<String, Parked>,
    open: Arc<AtomicUsize>,
}

struct Parked {
    since: Instant,
    first: Option<(TcpStream, Slot)>,
    second: Option<(TcpStream, Slot)>,
}

/// Counts an open proxy connection until dropped (with it).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The SOCKS5 address of a bytestream: SHA-1 hex of sid + initiator +
/// target (XEP-0065 §5.3.2).
pub fn address(sid: &str, initiator: &str, target: &str) -> String {
    let mut h = sha1::Sha1::new();
    h.update(sid.as_bytes());
    h.update(initiator.as_bytes());
    h.update(target.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts the SOCKS5 listener (a port that cannot be bound is logged:
/// the node runs without the proxy).
pub async fn start(server: Arc<Server>) {
    let cfg = &server.config.proxy65;
    if !cfg.enabled {
        return;
    }
    let addr = format!("{}:{}", cfg.bind, cfg.port);
    let listener = match crate::net::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "SOCKS5 proxy (XEP-0065) not started");
            return;
        }
    };
    tracing::info!(%addr, "SOCKS5 bytestreams proxy (XEP-0065) listening");
    actix_rt::spawn(sweep(server.clone()));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "proxy65 accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = &server.services.proxy65;
        if proxy.open.load(Ordering::Relaxed) >= server.config.proxy65.max_connections {
            metrics::counter!("starling_proxy65_refused_total", "reason" => "limit").increment(1);
            continue;
        }
        proxy.open.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(proxy.open.clone());
        let _ = tcp.set_nodelay(true);
        let server = server.clone();
        actix_rt::spawn(async move {
            match tokio::time::timeout(HANDSHAKE, handshake(tcp)).await {
                Ok(Ok((tcp, hash, reply))) => park(&server, slot, tcp, hash, &reply),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "SOCKS5 handshake refused");
                    metrics::counter!("starling_proxy65_refused_total", "reason" => "handshake")
                        .increment(1);
                }
                Err(_) => {}
            }
        });
    }
}

/// RFC 1928 with XEP-0065's profile: the address the client asked for,
/// and the success reply to send it once it is parked.
async fn handshake(mut tcp: TcpStream) -> std::io::Result<(TcpStream, String, Vec<u8>)> {
    use std::io::{Error, ErrorKind};
    let bad = |what: &str| Error::new(ErrorKind::InvalidData, what.to_owned());
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(bad("not SOCKS5"));
    }
    let mut methods = vec![0u8; head[1] as usize];
    tcp.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        // No acceptable method (§3).
        tcp.write_all(&[5, 0xff]).await?;
        return Err(bad("no 'no authentication' method"));
    }
    tcp.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    tcp.read_exact(&mut req).await?;
    if req[0] != 5 {
        return Err(bad("not SOCKS5"));
    }
    // Reply codes (§6): 7 command not supported, 8 address type not
    // supported.
    let refuse = |code: u8| [5, code, 0, 1, 0, 0, 0, 0, 0, 0];
    if req[1] != 1 {
        tcp.write_all(&refuse(7)).await?;
        return Err(bad("not CONNECT"));
    }
    if req[3] != 3 {
        tcp.write_all(&refuse(8)).await?;
        return Err(bad("not a domain-name address"));
    }
    let mut len = [0u8; 1];
    tcp.read_exact(&mut len).await?;
    let mut host = vec![0u8; len[0] as usize];
    tcp.read_exact(&mut host).await?;
    let mut port = [0u8; 2];
    tcp.read_exact(&mut port).await?;
    let host = String::from_utf8(host).map_err(|_| bad("address not UTF-8"))?;
    if host.len() != 40 || !host.bytes().all(|b| b.is_ascii_hexdigit()) {
        tcp.write_all(&refuse(4)).await?;
        return Err(bad("address is not a SHA-1 hex"));
    }
    let host = host.to_ascii_lowercase();
    // Succeeded, bound to the address asked for (XEP-0065 §5.3.2).
    let mut ok = vec![5, 0, 0, 3, len[0]];
    ok.extend_from_slice(host.as_bytes());
    ok.extend_from_slice(&[0, 0]);
    Ok((tcp, host, ok))
}

/// Parks a connection under its address, as the first or second party,
/// and tells it so: the reply is written (a fresh socket takes its few
/// bytes at once) under the entry's lock, so an activation that follows
/// it always finds the connection.
fn park(server: &Server, slot: Slot, tcp: TcpStream, hash: String, reply: &[u8]) {
    let proxy = &server.services.proxy65;
    let mut entry = proxy.parked.entry(hash).or_insert_with(|| Parked {
        since: Instant::now(),
        first: None,
        second: None,
    });
    if entry.second.is_some() {
        // One target per bytestream (§8.1): a third is closed.
        metrics::counter!("starling_proxy65_refused_total", "reason" => "third").increment(1);
        return;
    }
    if tcp.try_write(reply).ok() != Some(reply.len()) {
        return;
    }
    if entry.first.is_none() {
        entry.first = Some((tcp, slot));
    } else {
        entry.second = Some((tcp, slot));
    }
}

/// Drops connections parked too long.
async fn sweep(server: Arc<Server>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        // Their slots go with them.
        (server.services.proxy65)
            .parked
            .retain(|_, p| p.since.elapsed() < PARKED_FOR);
    }
}

/// A stanza to the proxy service.
pub async fn service_stanza(server: &Server, el: Element) {
    let request = el.name == "iq" && matches!(el.get_attr("type"), Some("get" | "set"));
    if !request {
        if el.name == "message" && el.get_attr("type") != Some("error") {
            crate::session::im::bounce(server, &el, Condition::ServiceUnavailable);
        }
        return;
    }
    let from = el.get_attr("from").unwrap_or_default().to_owned();
    let reply = match answer(server, &el).await {
        Ok(payload) => iq_result(&el, payload),
        Err(c) => match crate::stanza::error_reply(&el, &c.into()) {
            Some(r) => r,
            None => return,
        },
    };
    let _ = crate::session::im::deliver_to_full(server, &from, reply);
}

async fn answer(server: &Server, iq: &Element) -> Result<Option<Element>, Condition> {
    let set = iq.get_attr("type") == Some("set");
    let payloads: Vec<&Element> = iq.elements().collect();
    let [p] = payloads.as_slice() else {
        return Err(Condition::BadRequest);
    };
    let to = iq.get_attr("to").unwrap_or_default();
    match (p.ns.as_str(), p.name.as_str(), set) {
        (NS_INFO, "query", false) if p.get_attr("node").is_none() => Ok(Some(
            Element::new("query", NS_INFO)
                .child(
                    Element::new("identity", NS_INFO)
                        .attr("category", "proxy")
                        .attr("type", "bytestreams")
                        .attr("name", "SOCKS5 Bytestreams Service"),
                )
                .child(Element::new("feature", NS_INFO).attr("var", NS_INFO))
                .child(Element::new("feature", NS_INFO).attr("var", NS_BYTESTREAMS)),
        )),
        (NS_ITEMS, "query", false) if p.get_attr("node").is_none() => {
            Ok(Some(Element::new("query", NS_ITEMS)))
        }
        (NS_INFO | NS_ITEMS, "query", false) => Err(Condition::ItemNotFound),
        (NS_BYTESTREAMS, "query", false) => {
            let cfg = &server.config.proxy65;
            let parent = server
                .services
                .get(split(to).0)
                .map(|h| h.parent.clone())
                .unwrap_or_default();
            let host = cfg.host.clone().unwrap_or(parent);
            Ok(Some(
                Element::new("query", NS_BYTESTREAMS).child(
                    Element::new("streamhost", NS_BYTESTREAMS)
                        .attr("jid", split(to).0)
                        .attr("host", host)
                        .attr("port", cfg.port.to_string()),
                ),
            ))
        }
        (NS_BYTESTREAMS, "query", true) => activate(server, iq, p).map(|()| None),
        (NS_INFO | NS_ITEMS | NS_BYTESTREAMS, _, _) => Err(Condition::BadRequest),
        _ => Err(Condition::ServiceUnavailable),
    }
}

/// `<activate/>` (XEP-0065 §6.3.5): joins the two parked connections.
fn activate(server: &Server, iq: &Element, q: &Element) -> Result<(), Condition> {
    let sid = q.get_attr("sid").filter(|s| !s.is_empty());
    let target = q
        .elements()
        .find(|e| e.name == "activate")
        .map(|e| e.text_content().trim().to_owned());
    let (Some(sid), Some(target)) = (sid, target) else {
        return Err(Condition::BadRequest);
    };
    let Ok(target) = jid::Jid::new(&target) else {
        return Err(Condition::JidMalformed);
    };
    let initiator = iq.get_attr("from").unwrap_or_default();
    let hash = address(sid, initiator, &target.to_string());
    let proxy = &server.services.proxy65;
    let parked = {
        let Some(mut p) = proxy.parked.get_mut(&hash) else {
            return Err(Condition::ItemNotFound);
        };
        if p.second.is_none() {
            return Err(Condition::NotAllowed);
        }
        (p.first.take(), p.second.take())
    };
    proxy.parked.remove(&hash);
    let (Some((mut a, slot_a)), Some((mut b, slot_b))) = parked else {
        return Err(Condition::InternalServerError);
    };
    metrics::counter!("starling_proxy65_activated_total").increment(1);
    let limit = server.config.proxy65.max_bytes_per_second;
    actix_rt::spawn(async move {
        let moved = if limit == 0 {
            tokio::io::copy_bidirectional(&mut a, &mut b).await
        } else {
            let ((ar, mut aw), (br, mut bw)) = (a.split(), b.split());
            tokio::try_join!(
                copy_limited(ar, &mut bw, limit),
                copy_limited(br, &mut aw, limit)
            )
        };
        if let Ok((x, y)) = moved {
            metrics::counter!("starling_proxy65_bytes_total").increment(x + y);
        }
        drop((slot_a, slot_b));
    });
    Ok(())
}

/// Copies `from` to `to` until `from` ends (then shuts `to`'s sending
/// side), at most `rate` bytes a second on average: after each read it
/// sleeps until the bytes moved so far are due.
async fn copy_limited<R, W>(mut from: R, to: &mut W, rate: u64) -> std::io::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let started = tokio::time::Instant::now();
    let mut buf = vec![0u8; (rate as usize).clamp(512, 16 * 1024)];
    let mut moved: u64 = 0;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(moved);
        }
        to.write_all(&buf[..n]).await?;
        moved += n as u64;
        let due = started + Duration::from_secs_f64(moved as f64 / rate as f64);
        tokio::time::sleep_until(due).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limit holds on average (10 KiB at 4 KiB/s: 2.5 s of virtual
    /// time, the paused clock moving only when everything sleeps), and
    /// every byte arrives.
    #[tokio::test(start_paused = true)]
    async fn limited_copies_keep_to_the_rate() {
        let data: Vec<u8> = (0..10_240u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        let start = tokio::time::Instant::now();
        let n = copy_limited(&data[..], &mut out, 4096).await.unwrap();
        assert_eq!(n, 10_240);
        assert_eq!(out, data);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(2400), "{took:?}");
        assert!(took <= Duration::from_millis(2600), "{took:?}");
    }

    #[test]
    fn address_is_the_sha1_hex_of_sid_initiator_target() {
        // SHA-1("abc") (FIPS 180 test vector), the three parts concatenated.
        assert_eq!(
            address("a", "b", "c"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_ne!(
            address("s", "i@d/r", "t@d/r"),
            address("s", "t@d/r", "i@d/r")
        );
    }
}
