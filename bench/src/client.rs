//! One XMPP client session: connect, STARTTLS or direct TLS, SASL, bind, initial presence.
//!
//! Negotiation follows RFC 6120 in order and waits for each answer (no pipelining), so a login
//! costs the server what a well-behaved client's login costs.

use crate::frame::{self, Frame, Framer};
use crate::sasl::{self, Mech, Scram};
use anyhow::{Context, Result, anyhow, bail};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How the client secures the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum TlsMode {
    /// Plain TCP, then `<starttls/>` (RFC 6120 §5).
    Starttls,
    /// TLS from the first byte (XEP-0368 style port).
    Direct,
    /// No TLS at all (only for servers that allow it).
    None,
}

/// What the client needs to reach and log in to one server.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub domain: String,
    pub tls: TlsMode,
    pub mech: Mech,
    pub connector: TlsConnector,
    /// Bound on each login and each wait for an answer.
    pub timeout: Duration,
    /// The peer is a raw echo server, not XMPP: "login" is connect (plus TLS with `Direct`)
    /// and one round trip.
    pub echo: bool,
    /// SO_LINGER 0 on every connection: dropping the session resets the TCP connection (RST)
    /// instead of closing it (FIN), as a failing load balancer does.
    pub zero_linger: bool,
}

/// Why a login was turned down or cut short, where the caller may want to tell the cases apart
/// (carried inside `anyhow::Error`; `storm` counts its errors by these).
#[derive(Debug)]
pub enum Refusal {
    /// `<stream:error/>` with this condition (`policy-violation`, `resource-constraint`, ...).
    Stream { condition: String, raw: String },
    /// SASL `<failure/>` with this condition.
    Sasl { condition: String, raw: String },
    /// The bind answered an error.
    Bind { raw: String },
    /// The server closed the stream or the connection during negotiation without a stream error.
    Closed,
    /// The login did not finish within the target's timeout.
    Timeout(Duration),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Stream { condition, raw } => write!(f, "stream error {condition}: {raw}"),
            Refusal::Sasl { condition, raw } => write!(f, "SASL failure {condition}: {raw}"),
            Refusal::Bind { raw } => write!(f, "bind failed: {raw}"),
            Refusal::Closed => write!(f, "connection closed by server"),
            Refusal::Timeout(d) => write!(f, "login timed out after {d:?}"),
        }
    }
}

impl std::error::Error for Refusal {}

/// The defined condition of a `<stream:error/>` or SASL `<failure/>`: its first child element
/// other than `<text/>` (empty if there is none).
pub fn condition(st: &[u8]) -> String {
    let mut rest = &st[1..];
    while let Some(p) = rest.iter().position(|&c| c == b'<') {
        rest = &rest[p..];
        let n = frame::name(rest);
        if !n.is_empty() && !n.starts_with('/') && n != "text" {
            return n.rsplit(':').next().unwrap_or(n).to_string();
        }
        rest = &rest[1..];
    }
    String::new()
}

fn stream_error(st: &[u8]) -> anyhow::Error {
    Refusal::Stream {
        condition: condition(st),
        raw: String::from_utf8_lossy(st).into_owned(),
    }
    .into()
}

/// A top-level `<stream:error/>` (no stanza of the client namespaces is named `error`).
fn is_stream_error(st: &[u8]) -> bool {
    let n = frame::name(st);
    n == "error" || n.ends_with(":error")
}

/// Anything a session can run over (TCP or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A negotiated session.
pub struct Session {
    pub io: Box<dyn Io>,
    pub framer: Framer,
    /// Full JID the server bound.
    pub jid: String,
}

/// Read the next frame, reading more bytes as needed.
pub async fn read_frame<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    fr: &mut Framer,
) -> Result<Frame> {
    loop {
        if let Some(f) = fr.next_frame() {
            return Ok(f);
        }
        if fr.overflow() {
            bail!("stanza larger than the framer limit");
        }
        if fr.buf.capacity() - fr.buf.len() < 2048 {
            fr.buf.reserve(8192);
        }
        let n = s.read_buf(&mut fr.buf).await?;
        if n == 0 {
            return Err(Refusal::Closed.into());
        }
    }
}

/// Read frames until a stanza arrives; errors on stream close and on a stream error.
async fn read_stanza<S: AsyncRead + Unpin + ?Sized>(s: &mut S, fr: &mut Framer) -> Result<Vec<u8>> {
    loop {
        match read_frame(s, fr).await? {
            Frame::Stanza(st) if is_stream_error(&st) => return Err(stream_error(&st)),
            Frame::Stanza(st) => return Ok(st),
            Frame::StreamOpen => continue,
            Frame::StreamClose => return Err(Refusal::Closed.into()),
        }
    }
}

/// Send a stream header and return the `<stream:features/>` that follows.
async fn open_stream<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    fr: &mut Framer,
    domain: &str,
) -> Result<Vec<u8>> {
    fr.restart();
    let hdr = format!(
        "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xml:lang='en' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    );
    s.write_all(hdr.as_bytes()).await?;
    s.flush().await?;
    loop {
        match read_frame(s, fr).await? {
            Frame::StreamOpen => continue,
            Frame::StreamClose => return Err(Refusal::Closed.into()),
            Frame::Stanza(st) => {
                if frame::name(&st).ends_with("features") {
                    return Ok(st);
                }
                if is_stream_error(&st) {
                    return Err(stream_error(&st));
                }
            }
        }
    }
}

fn mechanisms(features: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = features;
    while let Some(p) = frame::find(rest, b"<mechanism>") {
        rest = &rest[p..];
        if let Some(t) = frame::child_text(rest, "mechanism") {
            out.push(t.trim().to_string());
        }
        rest = &rest[11..];
    }
    out
}

async fn send<S: AsyncWrite + Unpin + ?Sized>(s: &mut S, data: &str) -> Result<()> {
    s.write_all(data.as_bytes()).await?;
    s.flush().await?;
    Ok(())
}

async fn authenticate<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    fr: &mut Framer,
    features: &[u8],
    mech: Mech,
    user: &str,
    pass: &str,
) -> Result<()> {
    const NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
    let m = mech.choose(&mechanisms(features))?;
    let mut scram = None;
    let initial = match m {
        Mech::Plain => sasl::plain(user, pass),
        _ => {
            let (st, first) = Scram::start(m, user, pass);
            scram = Some(st);
            first
        }
    };
    send(
        s,
        &format!(
            "<auth xmlns='{NS}' mechanism='{}'>{initial}</auth>",
            m.name()
        ),
    )
    .await?;
    let mut answered = false;
    loop {
        let st = read_stanza(s, fr).await?;
        match frame::name(&st) {
            "challenge" => {
                let text = frame::child_text(&st, "challenge").unwrap_or("");
                let sc = scram
                    .as_mut()
                    .ok_or_else(|| anyhow!("challenge for PLAIN"))?;
                if !answered {
                    let resp = sc.respond(text)?;
                    answered = true;
                    send(s, &format!("<response xmlns='{NS}'>{resp}</response>")).await?;
                } else {
                    // server-final sent as a challenge (RFC 6120 allows it): verify, empty response
                    sc.verify(text)?;
                    send(s, &format!("<response xmlns='{NS}'/>")).await?;
                }
            }
            "success" => {
                if let Some(sc) = &scram {
                    let text = frame::child_text(&st, "success").unwrap_or("");
                    if !text.is_empty() {
                        sc.verify(text)?;
                    }
                }
                return Ok(());
            }
            "failure" => {
                return Err(anyhow::Error::new(Refusal::Sasl {
                    condition: condition(&st),
                    raw: String::from_utf8_lossy(&st).into_owned(),
                })
                .context(format!("SASL {} for {user}", m.name())));
            }
            _ => {}
        }
    }
}

async fn bind<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    fr: &mut Framer,
    features: &[u8],
    resource: &str,
) -> Result<String> {
    send(
        s,
        &format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{resource}</resource></bind></iq>"
        ),
    )
    .await?;
    let jid = loop {
        let st = read_stanza(s, fr).await?;
        if frame::name(&st) == "iq" && frame::attr(&st, "id") == Some("bind1") {
            if frame::attr(&st, "type") != Some("result") {
                return Err(Refusal::Bind {
                    raw: String::from_utf8_lossy(&st).into_owned(),
                }
                .into());
            }
            break frame::child_text(&st, "jid")
                .unwrap_or_default()
                .to_string();
        }
    };
    // RFC 3921 session establishment, only where the server still requires it
    if frame::contains(features, "urn:ietf:params:xml:ns:xmpp-session")
        && !frame::contains(features, "<optional")
    {
        send(
            s,
            "<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
        )
        .await?;
        loop {
            let st = read_stanza(s, fr).await?;
            if frame::name(&st) == "iq" && frame::attr(&st, "id") == Some("sess1") {
                break;
            }
        }
    }
    Ok(jid)
}

async fn negotiate_after_tls<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    fr: &mut Framer,
    t: &Target,
    user: &str,
    pass: &str,
    resource: &str,
) -> Result<String> {
    let features = open_stream(s, fr, &t.domain).await?;
    authenticate(s, fr, &features, t.mech, user, pass).await?;
    let features = open_stream(s, fr, &t.domain).await?;
    bind(s, fr, &features, resource).await
}

async fn tls_wrap(t: &Target, tcp: TcpStream) -> Result<Box<dyn Io>> {
    let name = rustls::pki_types::ServerName::try_from(t.domain.clone())?;
    let tls = t
        .connector
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    Ok(Box::new(tls))
}

/// Log in: returns the bound session (initial presence not yet sent) and the connect-to-bound time.
pub async fn login(
    t: &Target,
    user: &str,
    pass: &str,
    resource: &str,
) -> Result<(Session, Duration)> {
    let t0 = Instant::now();
    let fut = async {
        let tcp = TcpStream::connect(t.addr).await.context("connect")?;
        tcp.set_nodelay(true)?;
        if t.zero_linger {
            tcp.set_zero_linger()?;
        }
        if t.echo {
            let mut io: Box<dyn Io> = match t.tls {
                TlsMode::Direct => tls_wrap(t, tcp).await?,
                _ => Box::new(tcp),
            };
            let mut fr = Framer::in_stream();
            send(&mut io, "<ping/>").await?;
            read_stanza(&mut io, &mut fr).await?;
            return Ok(Session {
                io,
                framer: fr,
                jid: format!("{user}@{}/{resource}", t.domain),
            });
        }
        let mut fr = Framer::new();
        let mut io: Box<dyn Io> = match t.tls {
            TlsMode::Direct => tls_wrap(t, tcp).await?,
            TlsMode::None => Box::new(tcp),
            TlsMode::Starttls => {
                let mut tcp = tcp;
                let features = open_stream(&mut tcp, &mut fr, &t.domain).await?;
                if !frame::contains(&features, "urn:ietf:params:xml:ns:xmpp-tls") {
                    bail!("server does not offer STARTTLS");
                }
                send(
                    &mut tcp,
                    "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
                )
                .await?;
                let st = read_stanza(&mut tcp, &mut fr).await?;
                if frame::name(&st) != "proceed" {
                    bail!("STARTTLS refused: {}", String::from_utf8_lossy(&st));
                }
                tls_wrap(t, tcp).await?
            }
        };
        let jid = negotiate_after_tls(&mut io, &mut fr, t, user, pass, resource).await?;
        Ok::<_, anyhow::Error>(Session {
            io,
            framer: fr,
            jid,
        })
    };
    let s = tokio::time::timeout(t.timeout, fut)
        .await
        .map_err(|_| anyhow::Error::new(Refusal::Timeout(t.timeout)).context(user.to_string()))??;
    Ok((s, t0.elapsed()))
}

impl Session {
    /// Send raw XML.
    pub async fn send(&mut self, data: &str) -> Result<()> {
        send(&mut self.io, data).await
    }

    /// Send the initial presence (no-op against the echo server).
    pub async fn initial_presence(&mut self, echo: bool) -> Result<()> {
        if echo {
            Ok(())
        } else {
            self.send("<presence/>").await
        }
    }

    /// Close the stream politely without waiting for the server's close.
    pub async fn close(mut self, echo: bool) {
        if !echo {
            let _ = send(&mut self.io, "</stream:stream>").await;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), self.io.shutdown()).await;
    }

    /// Split into a reader (with the framer) and a writer.
    pub fn split(self) -> (Reader, WriteHalf<Box<dyn Io>>) {
        let (r, w) = tokio::io::split(self.io);
        (
            Reader {
                io: r,
                framer: self.framer,
            },
            w,
        )
    }
}

/// The read side of a split session.
pub struct Reader {
    pub io: ReadHalf<Box<dyn Io>>,
    pub framer: Framer,
}

impl Reader {
    /// Next frame.
    pub async fn next(&mut self) -> Result<Frame> {
        read_frame(&mut self.io, &mut self.framer).await
    }
}

/// The bare JID part of a full JID.
pub fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}
