//! One server-to-server connection's bytes: plain TCP until STARTTLS, then
//! TLS (client side on links we open, server side on streams we accept),
//! read through the bounded stream parser. Links are few (one per remote
//! domain and node), so each keeps its own read buffer.

use crate::stanza::{NS_CLIENT, StreamCondition, stream_error};
use crate::xml::{Limits, StreamEvent, StreamParser, XmlError};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

pub enum Io {
    Plain(TcpStream),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, b),
            Io::Client(s) => Pin::new(s.as_mut()).poll_write(cx, b),
            Io::Server(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    Closed,
    Xml(XmlError),
    Timeout,
}

pub use crate::stream::xmlstream::xml_condition;

pub struct Conn {
    /// `None` only while STARTTLS swaps the transport.
    io: Option<Io>,
    parser: StreamParser,
    limits: Limits,
    buf: Box<[u8]>,
    write_timeout: Duration,
    pub tls: bool,
}

impl Conn {
    pub fn new(io: Io, limits: Limits, tls: bool) -> Self {
        Conn {
            io: Some(io),
            parser: StreamParser::new(limits),
            limits,
            buf: vec![0; 16 * 1024].into_boxed_slice(),
            write_timeout: Duration::from_secs(30),
            tls,
        }
    }

    fn io(&mut self) -> &mut Io {
        self.io
            .as_mut()
            .expect("transport present outside STARTTLS")
    }

    /// The next event, waiting at most until `deadline`.
    pub async fn next(&mut self, deadline: tokio::time::Instant) -> Result<StreamEvent, ReadError> {
        loop {
            if let Some(ev) = self.next_buffered()? {
                return Ok(ev);
            }
            match tokio::time::timeout_at(deadline, self.read_some()).await {
                Err(_) => return Err(ReadError::Timeout),
                Ok(r) => r?,
            }
        }
    }

    /// An event from what was read already.
    pub fn next_buffered(&mut self) -> Result<Option<StreamEvent>, ReadError> {
        let ev = self.parser.next_event().map_err(ReadError::Xml)?;
        if let Some(StreamEvent::Header(_)) = &ev {
            // Stanzas of `jabber:server` are handled (and written back) as
            // the `jabber:client` ones everything else knows.
            self.parser.alias_default_ns(super::NS_SERVER, NS_CLIENT);
        }
        Ok(ev)
    }

    /// Reads once into the parser (cancel-safe: what was read is fed).
    pub async fn read_some(&mut self) -> Result<(), ReadError> {
        let io = self
            .io
            .as_mut()
            .expect("transport present outside STARTTLS");
        let n = io
            .read(&mut self.buf)
            .await
            .map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        self.parser.feed(&self.buf[..n]);
        Ok(())
    }

    pub async fn send(&mut self, data: &str) -> io::Result<()> {
        let timeout = self.write_timeout;
        let io = self.io();
        match tokio::time::timeout(timeout, async {
            io.write_all(data.as_bytes()).await?;
            io.flush().await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer does not read",
            )),
        }
    }

    /// Ends the stream with a stream error (our header was sent) and
    /// closes the connection.
    pub async fn fail(&mut self, condition: StreamCondition, text: Option<&str>) {
        metrics::counter!("starling_s2s_stream_errors_total", "condition" => condition.name())
            .increment(1);
        // The error ends with `</stream:stream>`.
        let _ = self.send(&stream_error(condition, text)).await;
        self.shutdown().await;
    }

    /// Sends `</stream:stream>` and closes.
    pub async fn close(&mut self) {
        let _ = self.send("</stream:stream>").await;
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(io) = self.io.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
        }
    }

    /// Bytes read past the last event (none may be at a TLS upgrade).
    pub fn buffered(&self) -> usize {
        self.parser.buffered()
    }

    /// TLS as the client (a link we opened), then a new stream.
    pub async fn upgrade_client(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<()> {
        let Some(Io::Plain(tcp)) = self.io.take() else {
            return Err(io::Error::other("TLS already"));
        };
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        self.io = Some(Io::Client(Box::new(tls)));
        self.restart();
        Ok(())
    }

    /// TLS as the server (a stream we accepted), then a new stream.
    pub async fn upgrade_server(&mut self, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
        let Some(Io::Plain(tcp)) = self.io.take() else {
            return Err(io::Error::other("TLS already"));
        };
        let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
        self.io = Some(Io::Server(Box::new(tls)));
        self.restart();
        Ok(())
    }

    /// A new stream on the same transport (after SASL success): what was
    /// read past the old one is dropped.
    pub fn restart_stream(&mut self) {
        self.parser = StreamParser::new(self.limits);
    }

    /// The certificates the other end presented in the TLS handshake (end
    /// entity first), on a stream we accepted.
    pub fn peer_certificates(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        match self.io.as_ref()? {
            Io::Server(s) => s.get_ref().1.peer_certificates().map(<[_]>::to_vec),
            _ => None,
        }
    }

    fn restart(&mut self) {
        self.parser = StreamParser::new(self.limits);
        self.tls = true;
    }
}
