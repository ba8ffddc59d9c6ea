//! One XML stream over any byte stream: reads events through the bounded
//! parser, writes serialised XML, and ends the stream with a stream error
//! the way RFC 6120 §4.9.1 asks (our header first if not yet sent, then
//! the error, then `</stream:stream>`, then the TCP close).

use crate::net::transport::Transport;
use crate::stanza::{StreamCondition, stream_error};
use crate::xml::{Element, Limits, StreamEvent, StreamParser, XmlError};
use std::time::Duration;
use tokio::time::Instant;

/// Why reading the stream stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the TCP connection (or it broke).
    Closed,
    /// The parser rejected the input; answer with this stream error.
    Xml(XmlError),
    /// No data before the deadline.
    Timeout,
}

impl From<XmlError> for ReadError {
    fn from(e: XmlError) -> Self {
        ReadError::Xml(e)
    }
}

pub struct XmlStream<S> {
    pub io: S,
    parser: StreamParser,
    /// Whether our stream header went out on this stream.
    pub header_sent: bool,
    /// Our domain, for the header sent before an early error.
    pub domain: String,
    write_timeout: Duration,
}

impl<S: Transport> XmlStream<S> {
    pub fn new(io: S, limits: Limits, domain: String, write_timeout: Duration) -> Self {
        XmlStream {
            io,
            parser: StreamParser::new(limits),
            header_sent: false,
            domain,
            write_timeout,
        }
    }

    /// Starts a new stream on the same transport (after SASL success),
    /// keeping bytes the client sent behind the element that ended the
    /// old one. Never used for a TLS upgrade, where such bytes are refused.
    pub fn restart(&mut self) {
        self.parser = self.parser.restarted();
        self.header_sent = false;
    }

    /// Bytes held for an unfinished stanza (must be none at a TLS upgrade).
    pub fn buffered(&self) -> usize {
        self.parser.buffered()
    }

    /// The next event: from what is buffered, else read more. `deadline`
    /// bounds the wait.
    pub async fn next(&mut self, deadline: Option<Instant>) -> Result<StreamEvent, ReadError> {
        loop {
            if let Some(ev) = self.parser.next_event()? {
                return Ok(ev);
            }
            self.fill(deadline).await?;
        }
    }

    /// As [`XmlStream::next`] inside an exchange where nothing may come
    /// between the elements (XEP-0388 §2.4: "Clients MUST NOT send
    /// whitespace", and the server disconnects them): whitespace since
    /// [`XmlStream::forget_whitespace`] is a policy violation.
    pub async fn next_unspaced(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<StreamEvent, ReadError> {
        loop {
            let ev = self.parser.next_event()?;
            if self.parser.take_whitespace() {
                return Err(ReadError::Xml(XmlError::PolicyViolation));
            }
            if let Some(ev) = ev {
                return Ok(ev);
            }
            self.fill(deadline).await?;
        }
    }

    /// Starts an exchange read with [`XmlStream::next_unspaced`]: the
    /// whitespace read before it is allowed.
    pub fn forget_whitespace(&mut self) {
        self.parser.take_whitespace();
    }

    /// The next event from what is already buffered, without reading.
    pub fn next_buffered(&mut self) -> Result<Option<StreamEvent>, ReadError> {
        Ok(self.parser.next_event()?)
    }

    /// Reads what the transport has into the parser, waiting (without a
    /// buffer) until something arrives or `deadline` passes.
    pub async fn fill(&mut self, deadline: Option<Instant>) -> Result<(), ReadError> {
        loop {
            let parser = &mut self.parser;
            match self.io.try_read(&mut |bytes| parser.feed(bytes)) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(n) => {
                    crate::hot_counter!("starling_c2s_bytes_received_total").increment(n as u64);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(ReadError::Closed),
            }
            let ready = self.io.readable();
            match deadline {
                Some(d) => tokio::time::timeout_at(d, ready)
                    .await
                    .map_err(|_| ReadError::Timeout)?,
                None => ready.await,
            }
            .map_err(|_| ReadError::Closed)?;
        }
    }

    /// Writes and flushes, giving up after the write timeout (a client that
    /// does not read cannot make us buffer without limit).
    pub async fn send_raw(&mut self, data: &str) -> std::io::Result<()> {
        match tokio::time::timeout(self.write_timeout, self.io.write_all(data.as_bytes())).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client does not read",
            )),
        }
    }

    pub async fn send(&mut self, el: &Element) -> std::io::Result<()> {
        let s = el.to_stream_xml(crate::stanza::NS_CLIENT);
        self.send_raw(&s).await
    }

    /// Sends our stream header in reply to the client's.
    pub async fn send_header(&mut self, to: Option<&str>, id: &str) -> std::io::Result<()> {
        let mut h = String::with_capacity(256);
        h.push_str("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' xml:lang='en' id='");
        h.push_str(id);
        h.push_str("' from='");
        crate::xml::escape_into(&mut h, &self.domain, true);
        h.push('\'');
        if let Some(to) = to {
            h.push_str(" to='");
            crate::xml::escape_into(&mut h, to, true);
            h.push('\'');
        }
        h.push('>');
        self.header_sent = true;
        self.send_raw(&h).await
    }

    /// Ends the stream with a stream error and closes the connection.
    pub async fn fail(&mut self, condition: StreamCondition, text: Option<&str>) {
        self.fail_with(condition, &stream_error(condition, text))
            .await;
    }

    /// Ends the stream with `<see-other-host/>` naming `host` (RFC 6120
    /// §4.9.3.19): the client reconnects there.
    pub async fn fail_see_other_host(&mut self, host: &str) {
        let condition = StreamCondition::SeeOtherHost;
        let error = crate::stanza::stream_error_with_content(condition, host);
        self.fail_with(condition, &error).await;
    }

    /// Sends the serialised stream error `error` (of `condition`) and ends
    /// the stream.
    pub async fn fail_with(&mut self, condition: StreamCondition, error: &str) {
        metrics::counter!("starling_c2s_stream_errors_total", "condition" => condition.name())
            .increment(1);
        if !self.header_sent {
            let _ = self.send_header(None, &new_id()).await;
        }
        let _ = self.send_raw(error).await;
        self.linger().await;
    }

    /// Closes the stream cleanly (answering the client's `</stream:stream>`).
    pub async fn close(&mut self) {
        let _ = self.send_raw("</stream:stream>").await;
        self.linger().await;
    }

    /// Ends our side, then reads and discards what the client still sends
    /// until it closes (at most a second and 1 MiB): closing a socket with
    /// unread input makes the kernel send a reset, which can destroy the
    /// stream error before the client has read it.
    async fn linger(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut budget: usize = 1 << 20;
        while budget > 0 {
            match self.io.try_read(&mut |_| {}) {
                Ok(0) => return,
                Ok(n) => budget = budget.saturating_sub(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    match tokio::time::timeout_at(deadline, self.io.readable()).await {
                        Ok(Ok(())) => {}
                        _ => return,
                    }
                }
                Err(_) => return,
            }
        }
    }
}

/// The stream error RFC 6120 names for what the parser refused.
pub fn xml_condition(e: XmlError) -> StreamCondition {
    match e {
        XmlError::NotWellFormed => StreamCondition::NotWellFormed,
        XmlError::BadNamespacePrefix => StreamCondition::BadNamespacePrefix,
        XmlError::InvalidXml => StreamCondition::InvalidXml,
        XmlError::RestrictedXml => StreamCondition::RestrictedXml,
        XmlError::PolicyViolation => StreamCondition::PolicyViolation,
        XmlError::UnsupportedEncoding => StreamCondition::UnsupportedEncoding,
        XmlError::InvalidNamespace => StreamCondition::InvalidNamespace,
    }
}

/// Maps a read failure to its stream error.
pub async fn read_failed<S: Transport>(xs: &mut XmlStream<S>, e: ReadError) {
    match e {
        ReadError::Closed => {}
        ReadError::Xml(x) => xs.fail(xml_condition(x), None).await,
        ReadError::Timeout => xs.fail(StreamCondition::ConnectionTimeout, None).await,
    }
}

/// A fresh stream id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
