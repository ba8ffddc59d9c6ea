//! A server TLS connection that holds no buffer while idle, built on rustls'
//! unbuffered API ([`UnbufferedServerConnection`]).
//!
//! Why: a buffered `rustls::ServerConnection` keeps a 4 KiB read buffer for
//! its whole life, and tokio-rustls adds its own; with many idle sessions
//! that is most of a connection's memory (see "Memory per idle TLS session"
//! in the stack notes). Here the caller's buffers are ours:
//!
//! - reading waits on the socket without a buffer, then reads into the
//!   per-thread scratch buffer ([`with_scratch`]), where rustls decrypts the
//!   records in place and the plaintext goes straight to the caller's sink;
//! - only the bytes of an incomplete trailing record stay with the
//!   connection, in a `Vec` that is freed (`Vec::new()`) once empty;
//! - writing encrypts into a temporary `Vec` that lives only as long as the
//!   write.
//!
//! What this module must not do: know anything about XMPP, or keep any other
//! per-connection buffer.
//!
//! Invariant between calls (once [`TlsConn::accept`] has returned): rustls
//! holds no reference into our buffers, i.e. every record it has looked at
//! has been discarded, and the stored partial bytes are ones it has not
//! processed. That is what makes it safe to drive the state machine with an
//! empty input buffer when writing. A peer that breaks it (a post-handshake
//! handshake message fragmented over records) gets an error.

use super::transport::{Transport, with_scratch};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    AppDataRecord, ConnectionState, EncodeError, EncodeTlsData, EncryptError,
    InsufficientSizeError, UnbufferedStatus,
};
use std::io;
use std::mem;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// TLS record header: type, version, length.
const RECORD_HEADER: usize = 5;
/// Largest plaintext fragment (RFC 8446 5.1); rustls splits writes at this.
const MAX_FRAGMENT: usize = 16 * 1024;
/// Per-record encryption overhead, generously rounded (TLS 1.2 AES-GCM
/// needs 29 bytes, TLS 1.3 22). Only a first guess: rustls tells us the
/// exact size when it does not fit.
const RECORD_OVERHEAD: usize = 32;
/// Plaintext encrypted per temporary buffer in [`Transport::write_all`], so a
/// large write to a slow reader does not hold a copy of all of it.
const WRITE_CHUNK: usize = 4 * MAX_FRAGMENT;
/// Bytes reserved per socket read during the handshake.
const HANDSHAKE_READ: usize = 4 * 1024;
/// Most bytes held while handshaking: rustls limits a handshake message to
/// 64 KiB; anything larger is abuse.
const MAX_HANDSHAKE_BUFFER: usize = 96 * 1024;

/// Where the connection stands between calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Just accepted, and `partial` holds bytes the client sent after its
    /// Finished, which rustls has not seen yet (possibly whole records).
    Fresh,
    /// Normal operation; `partial` holds at most one incomplete record.
    Open,
    /// A TLS or socket error happened; rustls' state may refer to buffers
    /// that are gone, so it must not be driven again.
    Failed,
}

/// A server-side TLS connection over a [`TcpStream`].
pub struct TlsConn {
    tcp: TcpStream,
    /// Boxed so moving a `TlsConn` (into a session task, through `async fn`
    /// arguments) copies a few words, not the ~1 KiB of rustls state.
    conn: Box<UnbufferedServerConnection>,
    /// Bytes of an incomplete trailing record; capacity 0 whenever empty.
    partial: Vec<u8>,
    /// TLS bytes rustls asked to send while we were reading (a KeyUpdate
    /// reply, an alert) that the socket would not take without waiting.
    /// Sent before anything else is written. Capacity 0 whenever empty;
    /// in practice always empty.
    unsent: Vec<u8>,
    /// The SNI the client sent, if any (lowercased, as rustls uses it).
    sni: Option<Box<str>>,
    phase: Phase,
}

impl TlsConn {
    /// Performs the server handshake over `tcp` with `config`. Any bytes the
    /// client sent after its Finished in the same read are kept (they are
    /// application data) and handed on by the first [`Transport::try_read`].
    ///
    /// Takes as long as the client does: the caller bounds it with a
    /// timeout. The returned future is a few KiB; box it rather than keeping
    /// it inline in a long-lived task.
    pub async fn accept(tcp: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<TlsConn> {
        let mut tcp = tcp;
        let mut conn = Box::new(UnbufferedServerConnection::new(config).map_err(tls_error)?);
        // Received bytes not yet discarded by rustls.
        let mut incoming: Vec<u8> = Vec::new();
        // Prefix of `incoming` made of whole records rustls may see. It is
        // shown one more record at a time, and only when rustls asks for
        // more, so that it stops exactly at the end of the handshake and
        // never decrypts application data we would have nowhere to put.
        let mut shown = 0;
        let mut out: Vec<u8> = Vec::new();
        let mut sni: Option<Option<Box<str>>> = None;
        loop {
            if sni.is_none() {
                // Before rustls sees (and coalesces in place) the records.
                sni = client_hello_sni(&incoming);
            }
            // Show the incomplete tail too when there is nothing else: rustls
            // cannot process it, but rejects a bad header at once.
            let limit = match record_end(&incoming, shown) {
                Some(_) => shown,
                None => incoming.len(),
            };
            let UnbufferedStatus { discard, state } =
                conn.process_tls_records(&mut incoming[..limit]);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    incoming.drain(..discard);
                    let alert = take_alert(&mut conn, &mut incoming[..limit - discard]);
                    if !alert.is_empty() {
                        let _ = AsyncWriteExt::write_all(&mut tcp, &alert).await;
                    }
                    return Err(tls_error(e));
                }
            };
            let mut need_more = false;
            let mut may_be_done = false;
            match state {
                ConnectionState::EncodeTlsData(mut s) => encode(&mut s, &mut out)?,
                ConnectionState::TransmitTlsData(s) => {
                    s.done();
                    AsyncWriteExt::write_all(&mut tcp, &out).await?;
                    out.clear();
                }
                ConnectionState::BlockedHandshake => need_more = true,
                ConnectionState::WriteTraffic(_) => may_be_done = true,
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS peer closed during the handshake",
                    ));
                }
                // Early data is not enabled, and application data cannot
                // come before the handshake ends.
                _ => return Err(invalid("TLS: unexpected data during the handshake")),
            }
            incoming.drain(..discard);
            debug_assert!(discard <= shown || shown == 0);
            shown = shown.saturating_sub(discard);
            if may_be_done {
                if !conn.is_handshaking() {
                    break;
                }
                need_more = true;
            }
            if need_more {
                if let Some(end) = record_end(&incoming, shown) {
                    shown = end;
                    continue;
                }
                if incoming.len() > MAX_HANDSHAKE_BUFFER {
                    return Err(invalid("TLS: handshake too large"));
                }
                tcp.readable().await?;
                incoming.reserve(HANDSHAKE_READ);
                match tcp.try_read_buf(&mut incoming) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "TLS peer closed during the handshake",
                        ));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if let Some(end) = record_end(&incoming, shown) {
                    shown = end;
                }
            }
        }
        if shown != 0 {
            // rustls still holds part of a handshake message sent along
            // with the Finished: nothing a real client does.
            return Err(invalid("TLS: handshake data after Finished"));
        }
        if !out.is_empty() {
            AsyncWriteExt::write_all(&mut tcp, &out).await?;
        }
        let phase = if incoming.is_empty() {
            Phase::Open
        } else {
            Phase::Fresh
        };
        Ok(TlsConn {
            tcp,
            conn,
            partial: shrunk(&incoming),
            unsent: Vec::new(),
            sni: sni.flatten(),
            phase,
        })
    }

    /// SNI the client sent, if any.
    pub fn server_name(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// The negotiated protocol version.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The ALPN protocol agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Whether [`Transport::try_read`] can make progress without the socket
    /// becoming readable: bytes from the handshake's last read, decrypted
    /// data not yet handed on, the peer's close_notify, or an error to
    /// report.
    fn has_pending(&self) -> bool {
        self.phase != Phase::Open || !self.conn.wants_read()
    }

    fn read_with(&mut self, scratch: &mut [u8], sink: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        if self.phase == Phase::Failed {
            return Err(failed());
        }
        let pending = self.has_pending();
        let mut eof = false;
        let p = self.partial.len();
        // Small partial record: put it in front of the new bytes in the
        // scratch buffer. Large one (a record may exceed the scratch
        // buffer): append the new bytes to it instead.
        let in_scratch = p <= scratch.len() / 2;
        let start = if in_scratch { p } else { 0 };
        if in_scratch {
            scratch[..p].copy_from_slice(&self.partial);
        }
        let n = match self.tcp.try_read(&mut scratch[start..]) {
            Ok(0) => {
                eof = true;
                0
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && pending => 0,
            Err(e) => return Err(e),
        };
        let (delivered, leftover) = if in_scratch {
            let buf = &mut scratch[..p + n];
            let (consumed, delivered) =
                decrypt(&mut self.conn, &self.tcp, &mut self.unsent, buf, sink)?;
            (delivered, shrunk(&buf[consumed..]))
        } else {
            let mut buf = mem::take(&mut self.partial);
            buf.extend_from_slice(&scratch[..n]);
            let (consumed, delivered) =
                decrypt(&mut self.conn, &self.tcp, &mut self.unsent, &mut buf, sink)?;
            (delivered, shrunk(&buf[consumed..]))
        };
        self.phase = Phase::Open;
        // Plaintext is all handed on, so this means close_notify came.
        let closed = !self.conn.wants_read();
        if closed {
            self.partial = Vec::new();
        } else if record_end(&leftover, 0).is_some() {
            // A whole record rustls did not discard: it keeps a fragment of
            // a handshake message in it. See the module docs.
            return Err(invalid("TLS: fragmented post-handshake message"));
        } else {
            self.partial = leftover;
        }
        if delivered > 0 {
            Ok(delivered)
        } else if closed {
            Ok(0)
        } else if eof {
            if self.partial.is_empty() {
                Ok(0)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "TLS: connection closed inside a record",
                ))
            }
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    /// Encrypts `data` (plus anything rustls has queued) onto the end of
    /// `out`.
    fn encrypt(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            // Safe with an empty buffer: see the module docs.
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state.map_err(tls_error)? {
                ConnectionState::EncodeTlsData(mut s) => encode(&mut s, out)?,
                // What was encoded sits in `out`, ahead of the data.
                ConnectionState::TransmitTlsData(s) => s.done(),
                ConnectionState::WriteTraffic(mut s) => {
                    let records = data.len().div_ceil(MAX_FRAGMENT).max(1);
                    let guess = data.len() + records * RECORD_OVERHEAD;
                    return fill(out, guess, |buf| s.encrypt(data, buf), encrypt_size);
                }
                ConnectionState::PeerClosed => {}
                ConnectionState::Closed => return Err(io::ErrorKind::BrokenPipe.into()),
                _ => return Err(invalid("TLS: unexpected state while writing")),
            }
        }
    }

    /// Encrypts a close_notify onto the end of `out`.
    fn close_notify(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state.map_err(tls_error)? {
                ConnectionState::EncodeTlsData(mut s) => encode(&mut s, out)?,
                ConnectionState::TransmitTlsData(s) => s.done(),
                ConnectionState::WriteTraffic(mut s) => {
                    return fill(
                        out,
                        RECORD_HEADER + RECORD_OVERHEAD,
                        |buf| s.queue_close_notify(buf),
                        encrypt_size,
                    );
                }
                ConnectionState::PeerClosed => {}
                ConnectionState::Closed => return Ok(()),
                _ => return Err(invalid("TLS: unexpected state while closing")),
            }
        }
    }

    /// Encrypts into this thread's buffer and writes at once; only what
    /// the socket does not take is kept (in `unsent`) and waited for. A
    /// reader that keeps up costs no allocation and no wait per write.
    async fn write_inner(&mut self, data: &[u8]) -> io::Result<()> {
        self.flush_unsent().await?;
        for chunk in data.chunks(WRITE_CHUNK) {
            ENCRYPTED.with_borrow_mut(|out| {
                out.clear();
                let r = self
                    .encrypt(chunk, out)
                    .and_then(|()| send_now(&self.tcp, &mut self.unsent, out));
                if out.capacity() > ENCRYPTED_KEEP {
                    *out = Vec::new();
                }
                r
            })?;
            self.flush_unsent().await?;
        }
        Ok(())
    }

    /// Waits until the socket took everything in `unsent`, then frees it.
    async fn flush_unsent(&mut self) -> io::Result<()> {
        while !self.unsent.is_empty() {
            self.tcp.writable().await?;
            match self.tcp.try_write(&self.unsent) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.unsent.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if self.unsent.capacity() > 0 {
            self.unsent = Vec::new();
        }
        Ok(())
    }
}

thread_local! {
    /// Where each write is encrypted before it goes to the socket.
    static ENCRYPTED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The most a thread keeps of its encryption buffer between writes.
const ENCRYPTED_KEEP: usize = 2 * WRITE_CHUNK;

impl Transport for TlsConn {
    fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    fn tls_server_name(&self) -> Option<Option<&str>> {
        Some(self.server_name())
    }

    async fn readable(&self) -> io::Result<()> {
        if self.has_pending() {
            return Ok(());
        }
        self.tcp.readable().await
    }

    fn try_read(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        let result = with_scratch(|scratch| self.read_with(scratch, sink));
        if let Err(e) = &result
            && e.kind() != io::ErrorKind::WouldBlock
        {
            self.fail();
        }
        result
    }

    /// Not cancel-safe: if the future is dropped midway the peer may have
    /// received part of a record, so the connection can only be dropped.
    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        if self.phase == Phase::Failed {
            return Err(failed());
        }
        let result = self.write_inner(data).await;
        if result.is_err() {
            self.fail();
        }
        result
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        if self.phase != Phase::Failed {
            let mut out = mem::take(&mut self.unsent);
            let closing = self.close_notify(&mut out);
            if !out.is_empty() {
                AsyncWriteExt::write_all(&mut self.tcp, &out).await?;
            }
            if let Err(e) = closing {
                self.fail();
                let _ = AsyncWriteExt::shutdown(&mut self.tcp).await;
                return Err(e);
            }
        }
        AsyncWriteExt::shutdown(&mut self.tcp).await
    }
}

impl TlsConn {
    fn fail(&mut self) {
        self.phase = Phase::Failed;
        self.partial = Vec::new();
        self.unsent = Vec::new();
    }
}

/// Runs rustls over `buf` (which starts with every byte it has not
/// discarded), handing plaintext to `sink` and sending what it asks to send,
/// until it needs more input. Returns the bytes to discard from the front of
/// `buf` and the plaintext bytes handed on.
fn decrypt(
    conn: &mut UnbufferedServerConnection,
    tcp: &TcpStream,
    unsent: &mut Vec<u8>,
    buf: &mut [u8],
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<(usize, usize)> {
    let mut consumed = 0;
    let mut delivered = 0;
    let mut out = Vec::new();
    loop {
        let UnbufferedStatus { mut discard, state } =
            conn.process_tls_records(&mut buf[consumed..]);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                consumed += discard;
                let alert = take_alert(conn, &mut buf[consumed..]);
                let _ = send_now(tcp, unsent, &alert);
                return Err(tls_error(e));
            }
        };
        let mut stop = false;
        match state {
            ConnectionState::ReadTraffic(mut s) => {
                while let Some(record) = s.next_record() {
                    let AppDataRecord {
                        discard: more,
                        payload,
                    } = record.map_err(tls_error)?;
                    discard += more;
                    delivered += payload.len();
                    sink(payload);
                }
            }
            // A KeyUpdate reply, a ticket, an alert: send it, go on.
            ConnectionState::EncodeTlsData(mut s) => encode(&mut s, &mut out)?,
            ConnectionState::TransmitTlsData(s) => {
                s.done();
                send_now(tcp, unsent, &out)?;
                out.clear();
            }
            // Reported by the caller through `wants_read()`, which stays
            // false from now on (the state itself comes only once).
            ConnectionState::PeerClosed => {}
            ConnectionState::Closed | ConnectionState::WriteTraffic(_) => stop = true,
            ConnectionState::BlockedHandshake => stop = true,
            _ => return Err(invalid("TLS: unexpected state while reading")),
        }
        consumed += discard;
        if stop {
            break;
        }
    }
    if !out.is_empty() {
        send_now(tcp, unsent, &out)?;
    }
    Ok((consumed, delivered))
}

/// Writes `bytes` without waiting; what the socket does not take now (or
/// everything, if older bytes are still waiting) goes to `unsent`.
fn send_now(tcp: &TcpStream, unsent: &mut Vec<u8>, mut bytes: &[u8]) -> io::Result<()> {
    while unsent.is_empty() && !bytes.is_empty() {
        match tcp.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    unsent.extend_from_slice(bytes);
    Ok(())
}

/// After an error, collects the alert rustls queued for the peer. Only
/// drives rustls while it has something queued, which it hands out before
/// touching `buf` again.
fn take_alert(conn: &mut UnbufferedServerConnection, buf: &mut [u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.wants_write() {
        let UnbufferedStatus { state, .. } = conn.process_tls_records(buf);
        match state {
            Ok(ConnectionState::EncodeTlsData(mut s)) => {
                if encode(&mut s, &mut out).is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    out
}

/// Appends the handshake (or alert) record rustls has ready to `out`.
fn encode(
    state: &mut EncodeTlsData<'_, ServerConnectionData>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    fill(
        out,
        0,
        |buf| state.encode(buf),
        |e| match e {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Ok(*required_size)
            }
            other => Err(io::Error::other(other.to_string())),
        },
    )
}

fn encrypt_size(e: &EncryptError) -> io::Result<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Ok(*required_size)
        }
        other => Err(io::Error::other(other.to_string())),
    }
}

/// Appends what `write` produces to `out`, trying `guess` bytes of room first
/// and then the size rustls asks for.
fn fill<E>(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    required: impl Fn(&E) -> io::Result<usize>,
) -> io::Result<()> {
    let used = out.len();
    let mut room = guess;
    loop {
        out.resize(used + room, 0);
        match write(&mut out[used..]) {
            Ok(n) => {
                out.truncate(used + n);
                return Ok(());
            }
            Err(e) => {
                let need = required(&e)?;
                if need <= room {
                    out.truncate(used);
                    return Err(io::Error::other("TLS: output size not settled"));
                }
                room = need;
            }
        }
    }
}

/// If `buf[from..]` starts with a whole TLS record, where it ends.
fn record_end(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    if rest.len() < RECORD_HEADER {
        return None;
    }
    let end = from + RECORD_HEADER + usize::from(u16::from_be_bytes([rest[3], rest[4]]));
    (end <= buf.len()).then_some(end)
}

/// A copy of `bytes` with no spare capacity (none at all when empty).
fn shrunk(bytes: &[u8]) -> Vec<u8> {
    if bytes.is_empty() {
        Vec::new()
    } else {
        bytes.to_vec()
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn failed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "TLS connection already failed")
}

/// Finds the SNI in the ClientHello at the start of `buf` (raw records, as
/// received). `None` while more bytes are needed; `Some(None)` when the hello
/// has no usable host name (or is not a hello: rustls will say so).
///
/// rustls keeps the SNI of an unbuffered server connection to itself, so we
/// read it the way rustls does: a DNS name, lowercased; an IP address is
/// ignored.
fn client_hello_sni(buf: &[u8]) -> Option<Option<Box<str>>> {
    const HANDSHAKE: u8 = 22;
    const CLIENT_HELLO: u8 = 1;
    // The handshake message may span records: gather their payloads.
    let mut message: Vec<u8> = Vec::new();
    let mut at = 0;
    loop {
        let end = record_end(buf, at)?;
        if buf[at] != HANDSHAKE {
            return Some(None);
        }
        message.extend_from_slice(&buf[at + RECORD_HEADER..end]);
        at = end;
        if message.len() >= 4 {
            if message[0] != CLIENT_HELLO {
                return Some(None);
            }
            let len = usize::from(message[1]) << 16
                | usize::from(message[2]) << 8
                | usize::from(message[3]);
            if message.len() >= 4 + len {
                return Some(hello_host_name(&message[4..4 + len]));
            }
            if len > MAX_HANDSHAKE_BUFFER {
                return Some(None);
            }
        }
    }
}

/// The host name in a ClientHello body (RFC 8446 4.1.2, RFC 6066 3).
fn hello_host_name(body: &[u8]) -> Option<Box<str>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    let n = r.u8()?;
    r.take(n)?; // legacy_session_id
    let n = r.u16()?;
    r.take(n)?; // cipher_suites
    let n = r.u8()?;
    r.take(n)?; // legacy_compression_methods
    let n = r.u16()?;
    let mut extensions = Reader(r.take(n)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let n = extensions.u16()?;
        let data = extensions.take(n)?;
        if kind != 0 {
            continue;
        }
        let mut data = Reader(data);
        let n = data.u16()?;
        // rustls reads only the first entry, which must be a host name.
        let mut names = Reader(data.take(n)?);
        if names.u8()? != 0 {
            return None;
        }
        let n = names.u16()?;
        let name = names.take(n)?;
        return match rustls::pki_types::ServerName::try_from(name).ok()? {
            rustls::pki_types::ServerName::DnsName(dns) => {
                Some(dns.to_lowercase_owned().as_ref().into())
            }
            _ => None,
        };
    }
    None
}

/// Big-endian reader over a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        Some(usize::from(self.take(1)?[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;

    const CERT_DIR_ENV: &str = "STARLING_TLS_CONN_TEST_DIR";

    /// The server's configuration as `net::tls` builds it, with generated
    /// self-signed certificates for two domains, and those certificates.
    fn server_setup() -> &'static (Arc<rustls::ServerConfig>, Vec<CertificateDer<'static>>) {
        static SETUP: OnceLock<(Arc<rustls::ServerConfig>, Vec<CertificateDer<'static>>)> =
            OnceLock::new();
        SETUP.get_or_init(|| {
            // A child process (see `rss_clients`) shares its parent's.
            let dir = std::env::var_os(CERT_DIR_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    std::env::temp_dir().join(format!("starling-tls-conn-{}", std::process::id()))
                });
            let cfg = crate::config::Config {
                domains: vec!["localhost".into(), "example.org".into()],
                data_dir: dir.clone(),
                ..Default::default()
            };
            let server = crate::net::tls::server_config(&cfg).expect("server config");
            use rustls::pki_types::pem::PemObject;
            let certs = ["localhost", "example.org"]
                .iter()
                .map(|d| {
                    CertificateDer::from_pem_file(dir.join("certs").join(format!("{d}.crt")))
                        .expect("generated certificate")
                })
                .collect();
            (server, certs)
        })
    }

    fn server_config() -> Arc<rustls::ServerConfig> {
        server_setup().0.clone()
    }

    /// Accepts exactly the server's self-signed certificates.
    #[derive(Debug)]
    struct Pinned {
        certs: Vec<CertificateDer<'static>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    }

    impl ServerCertVerifier for Pinned {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            if self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General("unknown certificate".into()))
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    fn client_config(versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Pinned {
            certs: server_setup().1.clone(),
            provider: provider.clone(),
        };
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
        Arc::new(cfg)
    }

    async fn listener() -> (TcpListener, std::net::SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (l, addr)
    }

    async fn connect(
        addr: std::net::SocketAddr,
        versions: &[&'static SupportedProtocolVersion],
        name: &'static str,
    ) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        TlsConnector::from(client_config(versions))
            .connect(ServerName::try_from(name).unwrap(), tcp)
            .await
            .expect("client handshake")
    }

    /// Reads once (after waiting), collecting the plaintext.
    async fn read_some(conn: &mut TlsConn) -> io::Result<Vec<u8>> {
        loop {
            conn.readable().await?;
            let mut got = Vec::new();
            match conn.try_read(&mut |b: &[u8]| got.extend_from_slice(b)) {
                Ok(n) => {
                    assert_eq!(n, got.len());
                    return Ok(got);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Echoes everything back until the peer's close_notify (`Ok(0)`).
    async fn echo(mut conn: TlsConn) -> io::Result<TlsConn> {
        loop {
            let got = read_some(&mut conn).await?;
            if got.is_empty() {
                return Ok(conn);
            }
            conn.write_all(&got).await?;
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    /// Handshake, small and 1 MiB echoes, a 300 KiB server write, and
    /// close_notify both ways, over `versions`.
    async fn exchange(
        versions: &[&'static SupportedProtocolVersion],
        expect: rustls::ProtocolVersion,
    ) {
        let (l, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut conn = TlsConn::accept(tcp, server_config()).await.expect("accept");
            assert_eq!(conn.server_name(), Some("example.org"));
            assert_eq!(conn.protocol_version(), Some(expect));
            assert_eq!(conn.alpn_protocol(), Some(&b"xmpp-client"[..]));
            // Server speaks first: one big write, split into records.
            conn.write_all(&pattern(300 * 1024, 7)).await.unwrap();
            let mut conn = echo(conn).await.expect("echo");
            // Nothing kept after a full exchange.
            assert_eq!(conn.partial.capacity(), 0);
            assert_eq!(conn.unsent.capacity(), 0);
            conn.shutdown().await.unwrap();
        });

        let client = connect(addr, versions, "Example.ORG").await;
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut first = vec![0; 300 * 1024];
        rd.read_exact(&mut first).await.unwrap();
        assert!(first == pattern(300 * 1024, 7));

        wr.write_all(b"hello").await.unwrap();
        let mut small = [0; 5];
        rd.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"hello");

        let big = pattern(1024 * 1024, 3);
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            wr.write_all(&sent).await.unwrap();
            wr.flush().await.unwrap();
            wr
        });
        let mut back = vec![0; big.len()];
        rd.read_exact(&mut back).await.unwrap();
        assert!(back == big, "1 MiB echo differs");
        let mut wr = writer.await.unwrap();
        // close_notify: the server sees Ok(0), then closes its side.
        wr.shutdown().await.unwrap();
        let mut rest = Vec::new();
        rd.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn tls13_exchange() {
        exchange(&[&rustls::version::TLS13], rustls::ProtocolVersion::TLSv1_3).await;
    }

    #[tokio::test]
    async fn tls12_exchange() {
        exchange(&[&rustls::version::TLS12], rustls::ProtocolVersion::TLSv1_2).await;
    }

    #[tokio::test]
    async fn sni_absent_and_default_domain() {
        let (l, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let conn = TlsConn::accept(tcp, server_config()).await.expect("accept");
            assert_eq!(conn.server_name(), None);
            echo(conn).await.unwrap();
        });
        // An IP address is not sent as SNI.
        let mut client = connect(addr, &[&rustls::version::TLS13], "127.0.0.1").await;
        client.write_all(b"x").await.unwrap();
        let mut b = [0; 1];
        client.read_exact(&mut b).await.unwrap();
        client.shutdown().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn key_update_is_answered() {
        let (l, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let conn = TlsConn::accept(tcp, server_config()).await.unwrap();
            echo(conn).await.unwrap();
        });
        let mut client = connect(addr, &[&rustls::version::TLS13], "localhost").await;
        for round in 0..3u8 {
            // Asks the server to update its keys too.
            client.get_mut().1.refresh_traffic_keys().unwrap();
            let msg = pattern(20_000, round);
            client.write_all(&msg).await.unwrap();
            let mut back = vec![0; msg.len()];
            client.read_exact(&mut back).await.unwrap();
            assert!(back == msg);
        }
        client.shutdown().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn garbage_fails_fast() {
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"[..],
            // A plausible handshake record holding nonsense.
            &[22, 3, 1, 0, 8, 1, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef][..],
            // <stream:stream where a ClientHello should be.
            &b"<?xml version='1.0'?><stream:stream to='localhost'>"[..],
        ] {
            let (l, addr) = listener().await;
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (tcp, _) = l.accept().await.unwrap();
            AsyncWriteExt::write_all(&mut client, garbage)
                .await
                .unwrap();
            let result = tokio::time::timeout(
                Duration::from_secs(2),
                TlsConn::accept(tcp, server_config()),
            )
            .await
            .expect("no hang on garbage");
            assert!(result.is_err());
        }
    }

    #[tokio::test]
    async fn client_gone_mid_handshake() {
        let (l, addr) = listener().await;
        let client = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = l.accept().await.unwrap();
        drop(client);
        let err = TlsConn::accept(tcp, server_config()).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// A rustls client that writes before the handshake ends sends its data
    /// right behind its Finished, in one segment: the server must keep it.
    #[tokio::test]
    async fn data_pipelined_after_handshake_is_kept() {
        let (l, addr) = listener().await;
        let cfg = client_config(&[&rustls::version::TLS13]);
        let client = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut sock = std::net::TcpStream::connect(addr).unwrap();
            let mut c =
                rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap())
                    .unwrap();
            c.writer()
                .write_all(b"<stream:stream to='localhost'>")
                .unwrap();
            while c.is_handshaking() {
                c.complete_io(&mut sock).unwrap();
            }
            while c.wants_write() {
                c.write_tls(&mut sock).unwrap();
            }
            let mut stream = rustls::Stream::new(&mut c, &mut sock);
            let mut back = [0; 30];
            stream.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"<stream:stream to='localhost'>");
            c.send_close_notify();
            c.write_tls(&mut sock).unwrap();
        });
        let (tcp, _) = l.accept().await.unwrap();
        let mut conn = TlsConn::accept(tcp, server_config()).await.unwrap();
        // The bytes came in the handshake's last read.
        assert_eq!(conn.phase, Phase::Fresh);
        assert!(!conn.partial.is_empty());
        // ...so there is something to read without the socket.
        tokio::time::timeout(Duration::from_millis(1), conn.readable())
            .await
            .expect("readable at once")
            .unwrap();
        let got = read_some(&mut conn).await.unwrap();
        assert_eq!(got, b"<stream:stream to='localhost'>");
        conn.write_all(&got).await.unwrap();
        let conn = echo(conn).await.unwrap();
        assert_eq!(conn.partial.capacity(), 0);
        client.join().unwrap();
    }

    /// Records cut at every possible point still come out whole.
    #[tokio::test]
    async fn records_split_across_reads() {
        let (l, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let conn = TlsConn::accept(tcp, server_config()).await.unwrap();
            echo(conn).await.unwrap();
        });
        // Encrypt with a buffered client, then send the TLS bytes in odd
        // slices with pauses, so reads end inside records and headers.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut client = TlsConnector::from(client_config(&[&rustls::version::TLS13]))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let msg = pattern(40_000, 9);
        {
            let (sock, c) = client.get_mut();
            use std::io::Write;
            c.writer().write_all(&msg).unwrap();
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            for (i, piece) in wire.chunks(997).enumerate() {
                let (a, b) = piece.split_at(piece.len().min(3 + i % 5));
                AsyncWriteExt::write_all(sock, a).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
                AsyncWriteExt::write_all(sock, b).await.unwrap();
            }
        }
        let mut back = vec![0; msg.len()];
        client.read_exact(&mut back).await.unwrap();
        assert!(back == msg);
        client.shutdown().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn idle_connection_holds_no_buffer() {
        let size = std::mem::size_of::<TlsConn>();
        println!("size_of::<TlsConn>() = {size} bytes");
        assert!(size <= 128, "TlsConn grew to {size} bytes");

        let (l, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut conn = TlsConn::accept(tcp, server_config()).await.unwrap();
            let mut echoed = 0;
            while echoed < 50_000 {
                let got = read_some(&mut conn).await.unwrap();
                conn.write_all(&got).await.unwrap();
                echoed += got.len();
            }
            conn
        });
        let mut client = connect(addr, &[&rustls::version::TLS13], "localhost").await;
        client.write_all(&pattern(50_000, 1)).await.unwrap();
        let mut back = vec![0; 50_000];
        client.read_exact(&mut back).await.unwrap();
        let conn = server.await.unwrap();
        assert!(back == pattern(50_000, 1));
        assert_eq!(conn.partial.capacity(), 0);
        assert_eq!(conn.unsent.capacity(), 0);
        assert_eq!(conn.phase, Phase::Open);
    }

    #[test]
    fn sni_parsing() {
        // No records yet, or half a record: need more.
        assert!(client_hello_sni(&[]).is_none());
        assert!(client_hello_sni(&[22, 3, 1, 0, 10, 1]).is_none());
        // Not a handshake record.
        assert_eq!(client_hello_sni(&[23, 3, 3, 0, 1, 0]), Some(None));
        assert_eq!(record_end(&[22, 3, 1, 0, 2, 1, 2, 9], 0), Some(7));
        assert_eq!(record_end(&[22, 3, 1, 0, 3, 1, 2], 0), None);
    }

    fn rss_kib() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4
    }

    /// Client side of `rss_per_idle_connection`, run in a child process so
    /// its memory is not counted: opens `STARLING_RSS_N` connections to
    /// `STARLING_RSS_ADDR`, one small exchange each, then holds them until
    /// stdin closes.
    #[tokio::test]
    #[ignore]
    async fn rss_clients() {
        let Ok(addr) = std::env::var("STARLING_RSS_ADDR") else {
            return;
        };
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        let n: usize = std::env::var("STARLING_RSS_N").unwrap().parse().unwrap();
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            let mut c = connect(addr, &[&rustls::version::TLS13], "localhost").await;
            c.write_all(b"<presence/>").await.unwrap();
            let mut b = [0; 11];
            c.read_exact(&mut b).await.unwrap();
            held.push(c);
        }
        let mut stdin = tokio::io::stdin();
        let mut sink = Vec::new();
        let _ = stdin.read_to_end(&mut sink).await;
        drop(held);
    }

    /// Server RSS growth per idle TLS connection: each connection is a task
    /// (boxed handshake, then waiting on `readable()`), as in the server.
    /// Run by hand:
    /// `cargo test -p starling --release rss_per_idle_connection -- --ignored --nocapture`
    #[tokio::test]
    #[ignore]
    async fn rss_per_idle_connection() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        const WARM: usize = 200;
        const N: usize = 2000;
        let (l, addr) = listener().await;
        let config = server_config();
        let cert_dir =
            std::env::temp_dir().join(format!("starling-tls-conn-{}", std::process::id()));
        let done = Arc::new(AtomicUsize::new(0));
        let counter = done.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                let config = config.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut conn = Box::pin(TlsConn::accept(tcp, config)).await.unwrap();
                    let got = read_some(&mut conn).await.unwrap();
                    conn.write_all(&got).await.unwrap();
                    counter.fetch_add(1, Ordering::SeqCst);
                    while !read_some(&mut conn).await.unwrap_or_default().is_empty() {}
                });
            }
        });
        let spawn_clients = |n: usize| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "net::tls_conn::tests::rss_clients",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                ])
                .env("STARLING_RSS_ADDR", addr.to_string())
                .env("STARLING_RSS_N", n.to_string())
                .env(CERT_DIR_ENV, &cert_dir)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let wait_for = |target: usize| {
            let done = done.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
                while done.load(Ordering::SeqCst) < target {
                    assert!(tokio::time::Instant::now() < deadline, "clients stalled");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // Let the tasks settle into readable().
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        };
        let mut warm = spawn_clients(WARM);
        wait_for(WARM).await;
        let before = rss_kib();
        let mut main = spawn_clients(N);
        wait_for(WARM + N).await;
        let after = rss_kib();
        let per = (after - before) as f64 / N as f64;
        println!(
            "size_of::<TlsConn>() = {} B; RSS {before} KiB -> {after} KiB for {N} idle TLS connections: {per:.2} KiB per connection",
            std::mem::size_of::<TlsConn>()
        );
        for child in [&mut warm, &mut main] {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}
