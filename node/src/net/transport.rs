//! The byte transports a stream runs over (plain TCP before STARTTLS, TLS
//! after it), reduced to what the XML stream needs. The point of the trait
//! is memory: an idle connection must hold no read, write or TLS buffer, so
//! a transport waits for readiness *without* a buffer ([`Transport::readable`])
//! and reads synchronously into a per-thread scratch buffer
//! ([`Transport::try_read`]), handing the bytes on at once.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Size of the per-thread scratch buffer reads go through.
pub const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

/// Runs `f` with this thread's scratch buffer.
pub fn with_scratch<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    SCRATCH_BUF.with(|b| f(&mut b.borrow_mut()))
}

pub trait Transport: Unpin {
    /// Resolves when [`Transport::try_read`] may make progress. Holds no
    /// buffer while it waits.
    fn readable(&self) -> impl Future<Output = io::Result<()>>;

    /// Reads what is available without waiting and hands the (plaintext)
    /// bytes to `sink`, possibly in several calls. Returns the number of
    /// plaintext bytes handed on; `Ok(0)` means the peer closed the stream;
    /// `Err(WouldBlock)` means nothing was available.
    fn try_read(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<usize>;

    /// Writes all of `data` (encrypting it first for TLS) and flushes.
    fn write_all(&mut self, data: &[u8]) -> impl Future<Output = io::Result<()>>;

    /// Closes the sending side (TLS close_notify, then TCP FIN).
    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>>;

    /// The certificate chain the peer presented in a TLS handshake (end
    /// entity first), if any.
    fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        None
    }

    /// `Some` for a TLS connection: the SNI the client sent, if any.
    fn tls_server_name(&self) -> Option<Option<&str>> {
        None
    }
}

impl Transport for TcpStream {
    async fn readable(&self) -> io::Result<()> {
        TcpStream::readable(self).await
    }

    fn try_read(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        with_scratch(|buf| {
            let n = TcpStream::try_read(self, buf)?;
            if n > 0 {
                sink(&buf[..n]);
            }
            Ok(n)
        })
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        AsyncWriteExt::write_all(self, data).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        AsyncWriteExt::shutdown(self).await
    }
}
