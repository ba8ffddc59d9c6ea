//! XMPP over WebSocket (RFC 7395) as one more [`Transport`]: the session
//! and its negotiation run unchanged on top of it.
//!
//! The WebSocket framing (RFC 6455 frames, parsed and formatted with
//! `tungstenite`'s frame codec) carries one XML element per text message,
//! and the stream is opened and closed by `<open/>` and `<close/>` of
//! `urn:ietf:params:xml:ns:xmpp-framing` instead of the stream header and
//! `</stream:stream>`. This transport translates at its edge:
//!
//! - reading: `<open/>` becomes the stream header the parser expects (so a
//!   stream restart after SASL is a new `<open/>`, §3.5), `<close/>`
//!   becomes `</stream:stream>`, every other message is handed on as is;
//!   ping is answered, a close frame ends the stream, a binary message or
//!   an unmasked frame is a protocol error;
//! - writing: what the stream writes is cut into its top-level elements,
//!   each sent as one text message: the stream header becomes `<open/>`,
//!   `</stream:stream>` becomes `<close/>`, `stream:`-prefixed elements
//!   get their namespace declared and stanzas `xmlns='jabber:client'`
//!   (§3.3.3: each message is a complete document), whitespace between
//!   elements is dropped (§3.4: no whitespace keepalives).
//!
//! TLS is the WebSocket's (`wss`), or a proxy's in front of a plain
//! listener: STARTTLS is never offered over WebSocket (§3.8), so a plain
//! listener must only be reachable through a TLS-terminating proxy.

use super::tls_conn::TlsConn;
use super::transport::Transport;
use std::io::{self, Cursor};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
/// The largest HTTP upgrade request read.
const MAX_REQUEST: usize = 8 * 1024;

/// A WebSocket listener's connection below the framing: TLS (`wss`) or
/// plain TCP behind a TLS-terminating proxy.
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsConn>),
}

impl Transport for MaybeTls {
    async fn readable(&self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(t) => Transport::readable(t).await,
            MaybeTls::Tls(t) => t.readable().await,
        }
    }

    fn try_read(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        match self {
            MaybeTls::Plain(t) => Transport::try_read(t, sink),
            MaybeTls::Tls(t) => t.try_read(sink),
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            MaybeTls::Plain(t) => Transport::write_all(t, data).await,
            MaybeTls::Tls(t) => t.write_all(data).await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(t) => Transport::shutdown(t).await,
            MaybeTls::Tls(t) => t.shutdown().await,
        }
    }
}

/// An XMPP stream carried over WebSocket messages.
pub struct WsConn<T> {
    inner: T,
    /// Bytes received that do not make a whole frame yet (empty, with no
    /// allocation, on an idle connection).
    rx: Vec<u8>,
    /// A text message arriving in fragments.
    message: Vec<u8>,
    /// Largest message accepted.
    max_message: usize,
    /// Control frames (pong, the close answer) written with the next write.
    control: Vec<u8>,
    /// Written bytes not yet a whole element.
    out: Vec<u8>,
    /// A close frame came or went: the stream is over.
    closed: bool,
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("websocket: {what}"))
}

impl<T: Transport> WsConn<T> {
    /// Server frames are unmasked (RFC 6455 §5.1).
    fn frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        header
            .format(payload.len() as u64, out)
            .expect("writing to a Vec");
        out.extend_from_slice(payload);
    }

    /// Handles the whole frames in `rx`: text goes through `sink`
    /// (translated); returns the bytes handed on.
    fn frames(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        let mut handed = 0;
        let mut pos = 0;
        while pos < self.rx.len() && !self.closed {
            let mut cur = Cursor::new(&self.rx[pos..]);
            let Some((header, len)) =
                FrameHeader::parse(&mut cur).map_err(|e| protocol_error(&e.to_string()))?
            else {
                break;
            };
            let start = pos + cur.position() as usize;
            let len = usize::try_from(len).map_err(|_| protocol_error("frame too large"))?;
            if len > self.max_message.saturating_add(64) {
                return Err(protocol_error("frame too large"));
            }
            if self.rx.len() - start < len {
                break;
            }
            let Some(mask) = header.mask else {
                return Err(protocol_error("client frames must be masked"));
            };
            let payload = &mut self.rx[start..start + len];
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
            pos = start + len;
            match header.opcode {
                OpCode::Data(Data::Text | Data::Continue) => {
                    if self.message.len() + len > self.max_message {
                        return Err(protocol_error("message too large"));
                    }
                    self.message.extend_from_slice(&self.rx[start..pos]);
                    if header.is_final {
                        let msg = std::mem::take(&mut self.message);
                        handed += inbound(&msg, sink);
                    }
                }
                OpCode::Data(_) => return Err(protocol_error("XMPP is carried in text messages")),
                OpCode::Control(Control::Ping) => {
                    let payload = self.rx[start..pos].to_vec();
                    Self::frame(&mut self.control, OpCode::Control(Control::Pong), &payload);
                }
                OpCode::Control(Control::Pong) => {}
                OpCode::Control(Control::Close) => {
                    Self::frame(&mut self.control, OpCode::Control(Control::Close), &[]);
                    self.closed = true;
                }
                OpCode::Control(_) => return Err(protocol_error("reserved opcode")),
            }
        }
        if pos == self.rx.len() {
            self.rx = Vec::new();
        } else {
            self.rx.drain(..pos);
        }
        Ok(handed)
    }
}

/// A received message, translated for the XML parser.
fn inbound(msg: &[u8], sink: &mut dyn FnMut(&[u8])) -> usize {
    let text = std::str::from_utf8(msg).unwrap_or_default();
    let trimmed = text.trim_start();
    let framing = |name: &str| {
        trimmed
            .strip_prefix('<')
            .and_then(|t| t.strip_prefix(name))
            .is_some_and(|rest| {
                rest.starts_with(|c: char| c.is_whitespace() || c == '/' || c == '>')
                    && crate::xml::scan::start_tag_attrs(trimmed)
                        .and_then(|a| crate::xml::scan::raw_attr(a, "xmlns"))
                        == Some(NS_FRAMING)
            })
    };
    if framing("open") {
        let attrs = crate::xml::scan::start_tag_attrs(trimmed).unwrap_or_default();
        let mut h = String::from(
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'",
        );
        for name in ["to", "from", "version", "xml:lang", "id"] {
            if let Some(v) = crate::xml::scan::raw_attr(attrs, name) {
                push_attr(&mut h, name, v);
            }
        }
        h.push('>');
        sink(h.as_bytes());
        h.len()
    } else if framing("close") {
        sink(b"</stream:stream>");
        16
    } else {
        // Anything else is parsed as it is (invalid XML is the parser's
        // stream error, as on TCP).
        sink(msg);
        msg.len()
    }
}

/// ` name="value"` with a raw (escaped) value from either kind of quotes.
fn push_attr(out: &mut String, name: &str, raw: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    out.push_str(&raw.replace('"', "&quot;"));
    out.push('"');
}

/// One top-level piece of what the server writes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    Header(&'a str),
    Close,
    Element(&'a str),
}

/// Cuts the complete top-level pieces off the front of `out` (server
/// output: escaped text, no comments or CDATA); returns them and the bytes
/// they took.
pub(crate) fn pieces(out: &str) -> (Vec<Piece<'_>>, usize) {
    let mut found = Vec::new();
    let mut pos = 0;
    let mut depth = 0usize;
    let mut start = 0;
    let b = out.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        let Some(end) = out[i..].find('>').map(|e| i + e) else {
            break;
        };
        let tag = &out[i..=end];
        if depth == 0 {
            start = i;
        }
        if tag.starts_with("<?") {
            // The XML declaration before the stream header.
        } else if tag == "</stream:stream>" && depth == 0 {
            found.push(Piece::Close);
            pos = end + 1;
        } else if tag.starts_with("<stream:stream") && depth == 0 {
            found.push(Piece::Header(tag));
            pos = end + 1;
        } else if tag.starts_with("</") {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                found.push(Piece::Element(&out[start..=end]));
                pos = end + 1;
            }
        } else if tag.ends_with("/>") {
            if depth == 0 {
                found.push(Piece::Element(tag));
                pos = end + 1;
            }
        } else {
            depth += 1;
        }
        i = end + 1;
    }
    // Whitespace between elements (a keepalive) is not sent (§3.4).
    if depth == 0 && !out[pos..].contains('<') {
        pos = out.len();
    }
    (found, pos)
}

/// A piece as one WebSocket message (§3.3).
pub(crate) fn outbound(piece: &Piece<'_>) -> String {
    match piece {
        Piece::Header(tag) => {
            let attrs = crate::xml::scan::start_tag_attrs(tag).unwrap_or_default();
            let mut open = format!("<open xmlns=\"{NS_FRAMING}\"");
            for name in ["from", "to", "id", "version", "xml:lang"] {
                if let Some(v) = crate::xml::scan::raw_attr(attrs, name) {
                    push_attr(&mut open, name, v);
                }
            }
            open.push_str("/>");
            open
        }
        Piece::Close => format!("<close xmlns=\"{NS_FRAMING}\"/>"),
        Piece::Element(el) => {
            let name_end = el[1..]
                .find(|c: char| c.is_whitespace() || c == '/' || c == '>')
                .map_or(el.len(), |n| n + 1);
            let name = &el[1..name_end];
            let decl = if name.starts_with("stream:") {
                format!(" xmlns:stream=\"{NS_STREAMS}\"")
            } else if crate::xml::scan::start_tag_attrs(el)
                .and_then(|a| crate::xml::scan::raw_attr(a, "xmlns"))
                .is_none()
            {
                " xmlns=\"jabber:client\"".to_owned()
            } else {
                String::new()
            };
            let mut s = String::with_capacity(el.len() + decl.len());
            s.push_str(&el[..name_end]);
            s.push_str(&decl);
            s.push_str(&el[name_end..]);
            s
        }
    }
}

impl<T: Transport> Transport for WsConn<T> {
    async fn readable(&self) -> io::Result<()> {
        self.inner.readable().await
    }

    fn try_read(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        if self.closed {
            return Ok(0);
        }
        let rx = &mut self.rx;
        let n = self.inner.try_read(&mut |b| rx.extend_from_slice(b));
        let handed = self.frames(sink)?;
        match n {
            _ if handed > 0 => Ok(handed),
            _ if self.closed => Ok(0),
            Ok(0) => Ok(0),
            Ok(_) => Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(e),
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(data);
        let mut buf = std::mem::take(&mut self.control);
        let text = std::str::from_utf8(&self.out).map_err(|_| protocol_error("not UTF-8"))?;
        let (found, used) = pieces(text);
        for p in &found {
            let msg = outbound(p);
            Self::frame(&mut buf, OpCode::Data(Data::Text), msg.as_bytes());
            if *p == Piece::Close {
                Self::frame(&mut buf, OpCode::Control(Control::Close), &[]);
                self.closed = true;
            }
        }
        if used == self.out.len() {
            self.out = Vec::new();
        } else {
            self.out.drain(..used);
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.inner.write_all(&buf).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        if !self.control.is_empty() {
            let buf = std::mem::take(&mut self.control);
            let _ = self.inner.write_all(&buf).await;
        }
        self.inner.shutdown().await
    }
}

/// Why an upgrade request was refused, with its HTTP status.
fn refuse(status: &str, why: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\nSec-WebSocket-Version: 13\r\n\r\n{why}",
        why.len()
    )
    .into_bytes()
}

/// Reads the HTTP upgrade request on `inner` and answers it (RFC 6455 §4.2,
/// RFC 7395 §3.1: the `xmpp` subprotocol is required); `None` when the
/// request was refused or the connection ended first.
pub async fn accept<T: Transport>(
    mut inner: T,
    path: &str,
    deadline: Instant,
    max_message: usize,
) -> Option<WsConn<T>> {
    let mut req = Vec::new();
    let head_len = loop {
        if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if req.len() > MAX_REQUEST {
            let _ = inner
                .write_all(&refuse("431 Request Header Fields Too Large", "too large"))
                .await;
            return None;
        }
        match inner.try_read(&mut |b| req.extend_from_slice(b)) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match tokio::time::timeout_at(deadline, inner.readable()).await {
                    Ok(Ok(())) => {}
                    _ => return None,
                }
            }
            Err(_) => return None,
        }
    };
    let answer = match upgrade(&req[..head_len], path) {
        Ok(key) => format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n",
            tungstenite::handshake::derive_accept_key(key.as_bytes())
        )
        .into_bytes(),
        Err(refusal) => {
            if !refusal.starts_with(b"HTTP/1.1 200") {
                metrics::counter!("starling_websocket_refused_total").increment(1);
            }
            let _ = inner.write_all(&refusal).await;
            let _ = inner.shutdown().await;
            return None;
        }
    };
    inner.write_all(&answer).await.ok()?;
    metrics::counter!("starling_websocket_connections_total").increment(1);
    let rest = req.split_off(head_len);
    Some(WsConn {
        inner,
        rx: rest,
        message: Vec::new(),
        max_message,
        control: Vec::new(),
        out: Vec::new(),
        closed: false,
    })
}

/// XEP-0156: where web clients find the endpoint, for the host they
/// asked (a proxy in front of a plain listener serves it as `wss` too).
fn host_meta(host: &str, path: &str, json: bool) -> Vec<u8> {
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        .collect();
    let href = format!("wss://{host}{path}");
    let (kind, body) = if json {
        (
            "application/json",
            format!(
                "{{\"links\":[{{\"rel\":\"urn:xmpp:alt-connections:websocket\",\"href\":\"{href}\"}}]}}"
            ),
        )
    } else {
        (
            "application/xrd+xml",
            format!(
                "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n  <Link rel='urn:xmpp:alt-connections:websocket' href='{href}'/>\n</XRD>\n"
            ),
        )
    };
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Checks an upgrade request; its `Sec-WebSocket-Key`, or the refusal.
fn upgrade(head: &[u8], path: &str) -> Result<String, Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Request::new(&mut headers);
    match r.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(refuse("400 Bad Request", "malformed request")),
    }
    if r.method != Some("GET") {
        return Err(refuse("405 Method Not Allowed", "GET only"));
    }
    let header = |name: &str| {
        r.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect::<Vec<_>>()
            .join(",")
    };
    let asked = r
        .path
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default();
    if let Some(json) = match asked {
        "/.well-known/host-meta" => Some(false),
        "/.well-known/host-meta.json" => Some(true),
        _ => None,
    } {
        return Err(host_meta(&header("host"), path, json));
    }
    if asked != path {
        return Err(refuse("404 Not Found", "no such endpoint"));
    }
    let tokens = |v: String| -> Vec<String> {
        v.split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    };
    if !tokens(header("upgrade")).iter().any(|t| t == "websocket")
        || !tokens(header("connection")).iter().any(|t| t == "upgrade")
    {
        return Err(refuse(
            "426 Upgrade Required",
            "a WebSocket upgrade is required",
        ));
    }
    if header("sec-websocket-version").trim() != "13" {
        return Err(refuse("426 Upgrade Required", "WebSocket version 13 only"));
    }
    let key = header("sec-websocket-key");
    if key.trim().is_empty() {
        return Err(refuse("400 Bad Request", "no Sec-WebSocket-Key"));
    }
    if !tokens(header("sec-websocket-protocol"))
        .iter()
        .any(|t| t == "xmpp")
    {
        return Err(refuse(
            "400 Bad Request",
            "the xmpp subprotocol is required (RFC 7395)",
        ));
    }
    Ok(key.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_into_elements_and_framed_as_rfc_7395_says() {
        let out = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' xml:lang='en' id='abc' from='localhost'>\
                   <stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>\
                   <message to='a@b/c'><body>1 &gt; 0</body></message> <presence/><iq type='result' id='x'/>\
                   </stream:stream><message><bo";
        let (found, used) = pieces(out);
        let msgs: Vec<String> = found.iter().map(outbound).collect();
        assert_eq!(
            msgs,
            vec![
                format!(
                    "<open xmlns=\"{NS_FRAMING}\" from=\"localhost\" id=\"abc\" version=\"1.0\" xml:lang=\"en\"/>"
                ),
                format!(
                    "<stream:features xmlns:stream=\"{NS_STREAMS}\"><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>"
                ),
                "<message xmlns=\"jabber:client\" to='a@b/c'><body>1 &gt; 0</body></message>"
                    .to_owned(),
                "<presence xmlns=\"jabber:client\"/>".to_owned(),
                "<iq xmlns=\"jabber:client\" type='result' id='x'/>".to_owned(),
                format!("<close xmlns=\"{NS_FRAMING}\"/>"),
            ]
        );
        assert_eq!(&out[used..], "<message><bo", "the incomplete element waits");
    }

    #[test]
    fn open_and_close_become_the_stream_header_and_its_end() {
        let mut got = Vec::new();
        inbound(
            format!("<open xmlns='{NS_FRAMING}' to='localhost' version='1.0'/>").as_bytes(),
            &mut |b| got.extend_from_slice(b),
        );
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to=\"localhost\" version=\"1.0\">"
        );
        let mut got = Vec::new();
        inbound(
            format!("<close xmlns=\"{NS_FRAMING}\" />").as_bytes(),
            &mut |b| got.extend_from_slice(b),
        );
        assert_eq!(got, b"</stream:stream>");
        let mut got = Vec::new();
        inbound(b"<opener xmlns='x'/>", &mut |b| got.extend_from_slice(b));
        assert_eq!(got, b"<opener xmlns='x'/>");
    }

    #[test]
    fn upgrade_requests_are_checked() {
        let ok = b"GET /xmpp-websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, xmpp\r\n\r\n";
        assert_eq!(
            upgrade(ok, "/xmpp-websocket").unwrap(),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert!(upgrade(ok, "/other").is_err());
        let meta = b"GET /.well-known/host-meta.json HTTP/1.1\r\nHost: chat.example:5280\r\n\r\n";
        let answer = String::from_utf8(upgrade(meta, "/xmpp-websocket").unwrap_err()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains("\"href\":\"wss://chat.example:5280/xmpp-websocket\""),
            "{answer}"
        );
        let no_xmpp = String::from_utf8_lossy(ok).replace("chat, xmpp", "chat");
        let refusal = upgrade(no_xmpp.as_bytes(), "/xmpp-websocket").unwrap_err();
        assert!(refusal.starts_with(b"HTTP/1.1 400"));
    }
}
