//! Incremental, bounded XML stream parser.
//!
//! Two steps, as in mini-redis: a cheap resumable *framer* walks the bytes
//! once and finds where the stream header, each top-level stanza and the
//! stream end lie, enforcing the limits (stanza size, depth) and RFC 6120
//! §11.1's restrictions (no DTD, comment or processing instruction) before
//! anything is allocated for them; only a complete stanza is then parsed by
//! quick-xml into an [`Element`], with namespaces resolved against the
//! declarations of the stream header.
//!
//! The parser never expands entities other than the five predefined ones
//! and character references: anything else is `<restricted-xml/>`.

use super::element::{Element, Node};
use quick_xml::events::{BytesStart, Event};
use std::borrow::Cow;

pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// Limits that bound what one connection can make the parser hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Maximum size of one stanza in bytes.
    pub max_stanza_bytes: usize,
    /// Maximum element nesting inside a stanza.
    pub max_depth: usize,
    /// Maximum attributes on one element.
    pub max_attrs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 256 * 1024,
            max_depth: 32,
            max_attrs: 64,
        }
    }
}

/// Why the stream cannot go on; each maps to an RFC 6120 §4.9.3 condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XmlError {
    /// Not well-formed XML (the RECOMMENDED specific condition of
    /// RFC 6120 §4.9.3.13).
    NotWellFormed,
    /// A prefix with no namespace declaration (§4.9.3.2).
    BadNamespacePrefix,
    /// Well-formed but not valid XMPP, e.g. a second stream header inside
    /// the stream (§4.9.3.11).
    InvalidXml,
    /// DTD, comment, processing instruction or entity reference (§11.1).
    RestrictedXml,
    /// A limit was exceeded (size, depth, attributes).
    PolicyViolation,
    /// The bytes are not UTF-8 (§11.6).
    UnsupportedEncoding,
    /// The stream element or its namespace is wrong.
    InvalidNamespace,
}

/// The opening `<stream:stream>` tag.
#[derive(Clone, Debug, Default)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
    /// The stream id (a server's answer on a stream we opened).
    pub id: Option<String>,
    /// The default namespace declared on the stream (`jabber:client`).
    pub default_ns: String,
}

/// What the parser found.
#[derive(Debug)]
pub enum StreamEvent {
    Header(StreamHeader),
    Stanza(Element),
    /// `</stream:stream>`
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// Between tags.
    Text,
    /// Saw `<` at `tag_start`, deciding what follows.
    Lt,
    /// Inside a start tag; `Some(q)` while inside a quoted value.
    StartTag(Option<u8>),
    EndTag,
    /// Inside `<![CDATA[ ... ]]>`.
    CData,
    /// Inside the `<?xml ...?>` declaration before the header.
    XmlDecl,
}

/// The framer's state for one stream. Holds only the bytes of an
/// incomplete stanza; an idle stream holds no buffer at all.
pub struct StreamParser {
    limits: Limits,
    buf: Vec<u8>,
    /// Bytes before this offset are consumed (dropped at the next feed).
    start: usize,
    /// Next byte to scan.
    pos: usize,
    state: Scan,
    /// Where the current tag began.
    tag_start: usize,
    /// Where the current top-level stanza began.
    stanza_start: Option<usize>,
    /// 0 before the header, 1 inside the stream, more inside a stanza.
    depth: usize,
    /// Whether the XML declaration may still come (nothing else seen yet).
    at_start: bool,
    /// Namespace declarations of the stream header: (prefix, uri); the
    /// default namespace has prefix "".
    scope: Vec<(String, String)>,
    header_qname: String,
    /// The open elements of the current stanza, outermost first: where
    /// each start tag's name is, relative to `stanza_start`, and its
    /// length (an end tag must name the element it closes).
    open: Vec<(usize, usize)>,
    failed: Option<XmlError>,
    /// Whitespace came between top-level elements since the last
    /// [`StreamParser::take_whitespace`].
    spaced: bool,
}

impl StreamParser {
    pub fn new(limits: Limits) -> Self {
        StreamParser {
            limits,
            buf: Vec::new(),
            start: 0,
            pos: 0,
            state: Scan::Text,
            tag_start: 0,
            stanza_start: None,
            depth: 0,
            at_start: true,
            scope: Vec::new(),
            header_qname: String::new(),
            open: Vec::new(),
            failed: None,
            spaced: false,
        }
    }

    /// Whether whitespace came between top-level elements since the last
    /// call (a SASL2 exchange allows none: XEP-0388 §2.4).
    pub fn take_whitespace(&mut self) -> bool {
        std::mem::take(&mut self.spaced)
    }

    /// True when no partial data is held.
    pub fn is_idle(&self) -> bool {
        self.buffered() == 0
    }

    /// Bytes held for an incomplete stanza.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// A parser for a new stream on the same connection (RFC 6120 §6.4.6:
    /// after SASL success) that keeps what was read but not consumed: a
    /// client may send its new stream header right behind `<auth/>`, in
    /// the same read (Tsung does).
    pub fn restarted(&self) -> Self {
        let mut next = StreamParser::new(self.limits);
        if self.failed.is_none() && self.start < self.buf.len() {
            next.feed(&self.buf[self.start..]);
        }
        next
    }

    /// Reads the stream's stanzas as if its default namespace `from` were
    /// `to` (called after the header): a server-to-server stream's
    /// `jabber:server` stanzas are handled as the `jabber:client` ones
    /// everything else knows, and written back the same way.
    pub fn alias_default_ns(&mut self, from: &str, to: &str) {
        for (prefix, uri) in &mut self.scope {
            if prefix.is_empty() && uri == from {
                *uri = to.to_owned();
            }
        }
    }

    /// Appends bytes read from the connection.
    pub fn feed(&mut self, data: &[u8]) {
        // Drop what earlier events consumed, once per read rather than
        // once per stanza (a burst of N stanzas would otherwise move the
        // rest of the buffer N times).
        if self.start > 0 {
            let start = self.start;
            self.buf.drain(..start);
            self.pos -= start;
            self.tag_start = self.tag_start.saturating_sub(start);
            if let Some(s) = self.stanza_start.as_mut() {
                *s -= start;
            }
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Returns the next complete event, `Ok(None)` when more bytes are
    /// needed. After an error the stream must be closed.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, XmlError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let r = self.scan();
        if let Err(e) = r {
            self.failed = Some(e);
            self.buf = Vec::new();
        }
        r
    }

    fn consume(&mut self, end: usize) {
        if end >= self.buf.len() {
            // Give the memory back: an idle stream holds no buffer.
            self.buf = Vec::new();
            self.start = 0;
            self.pos = 0;
            self.tag_start = 0;
        } else {
            self.start = end;
        }
    }

    fn scan(&mut self) -> Result<Option<StreamEvent>, XmlError> {
        loop {
            // Bound what an unfinished stanza (or header) may hold.
            let held_from = self
                .stanza_start
                .unwrap_or(self.tag_start.min(self.pos))
                .max(self.start);
            if self.buf.len().saturating_sub(held_from) > self.limits.max_stanza_bytes {
                return Err(XmlError::PolicyViolation);
            }
            if self.pos >= self.buf.len() {
                if self.state == Scan::Text && self.stanza_start.is_none() && self.depth <= 1 {
                    // Whitespace between stanzas: drop it.
                    let end = self.buf.len();
                    self.consume(end);
                }
                return Ok(None);
            }
            let b = self.buf[self.pos];
            if b == 0 && self.depth == 0 {
                // NUL before the header: UTF-16 or UTF-32 (§11.6).
                return Err(XmlError::UnsupportedEncoding);
            }
            match self.state {
                Scan::Text => {
                    if b == b'<' {
                        self.tag_start = self.pos;
                        self.state = Scan::Lt;
                    } else if self.depth == 0 && (b == 0 || b >= 0x80) {
                        // A byte-order mark or UTF-16/32 text: not UTF-8 (§11.6).
                        return Err(XmlError::UnsupportedEncoding);
                    } else if self.depth <= 1 && !matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
                        // Character data outside any stanza.
                        return Err(XmlError::NotWellFormed);
                    } else if self.depth == 1 {
                        self.spaced = true;
                    }
                    self.pos += 1;
                }
                Scan::Lt => {
                    match b {
                        b'/' => {
                            self.state = Scan::EndTag;
                            self.pos += 1;
                        }
                        b'?' => {
                            if self.at_start && self.depth == 0 {
                                self.state = Scan::XmlDecl;
                                self.pos += 1;
                            } else {
                                return Err(XmlError::RestrictedXml);
                            }
                        }
                        b'!' => {
                            // Need enough bytes to tell CDATA from the rest.
                            let rest = &self.buf[self.pos..];
                            const CDATA: &[u8] = b"![CDATA[";
                            let n = rest.len().min(CDATA.len());
                            if rest[..n] != CDATA[..n] {
                                // Comment, DOCTYPE, or other declaration.
                                return Err(XmlError::RestrictedXml);
                            }
                            if n < CDATA.len() {
                                return Ok(None);
                            }
                            if self.depth < 2 {
                                return Err(XmlError::NotWellFormed);
                            }
                            self.pos += CDATA.len();
                            self.state = Scan::CData;
                        }
                        _ => {
                            self.state = Scan::StartTag(None);
                            if self.depth == 1 {
                                self.stanza_start = Some(self.tag_start);
                            }
                            self.pos += 1;
                        }
                    }
                    self.at_start = false;
                }
                Scan::XmlDecl => {
                    if b == b'>' && self.buf[self.pos - 1] == b'?' {
                        let decl = &self.buf[self.tag_start..=self.pos];
                        if !decl.starts_with(b"<?xml ") && !decl.starts_with(b"<?xml?") {
                            return Err(XmlError::RestrictedXml);
                        }
                        let Ok(decl) = std::str::from_utf8(decl) else {
                            return Err(XmlError::UnsupportedEncoding);
                        };
                        if declared_encoding(decl).is_some_and(|e| !e.eq_ignore_ascii_case("utf-8"))
                        {
                            return Err(XmlError::UnsupportedEncoding);
                        }
                        self.state = Scan::Text;
                        self.pos += 1;
                        let end = self.pos;
                        self.consume(end);
                        continue;
                    }
                    self.pos += 1;
                }
                Scan::CData => {
                    if b == b'>' && self.pos >= 2 && &self.buf[self.pos - 2..self.pos] == b"]]" {
                        self.state = Scan::Text;
                    }
                    self.pos += 1;
                }
                Scan::StartTag(quote) => {
                    self.pos += 1;
                    // A value's closing quote is followed by whitespace or
                    // the tag's end: anything else is not well-formed, known
                    // at once (a header missing a quote must not wait for
                    // a `>` that would end its value).
                    if quote.is_none()
                        && matches!(self.buf[self.pos - 2], b'"' | b'\'')
                        && !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'/' | b'>')
                    {
                        return Err(XmlError::NotWellFormed);
                    }
                    match (quote, b) {
                        (Some(q), c) if c == q => self.state = Scan::StartTag(None),
                        (Some(_), b'<') => return Err(XmlError::NotWellFormed),
                        (Some(_), _) => {}
                        (None, b'"' | b'\'') => self.state = Scan::StartTag(Some(b)),
                        (None, b'<') => return Err(XmlError::NotWellFormed),
                        (None, b'>') => {
                            self.state = Scan::Text;
                            let empty = self.buf[self.pos - 2] == b'/';
                            if let Some(ev) = self.start_tag_done(empty)? {
                                return Ok(Some(ev));
                            }
                        }
                        (None, _) => {}
                    }
                }
                Scan::EndTag => {
                    self.pos += 1;
                    if b == b'>' {
                        self.state = Scan::Text;
                        if let Some(ev) = self.end_tag_done()? {
                            return Ok(Some(ev));
                        }
                    } else if b == b'<' {
                        return Err(XmlError::NotWellFormed);
                    }
                }
            }
        }
    }

    fn start_tag_done(&mut self, empty: bool) -> Result<Option<StreamEvent>, XmlError> {
        if self.depth == 0 {
            if empty {
                return Err(XmlError::NotWellFormed);
            }
            let end = self.pos;
            let header = self.parse_header(self.tag_start, end)?;
            self.depth = 1;
            self.consume(end);
            return Ok(Some(StreamEvent::Header(header)));
        }
        if self.depth == 1 && !empty {
            // A second stream header inside the stream is never a stanza.
            let tag = &self.buf[self.tag_start + 1..self.pos];
            let name_len = tag
                .iter()
                .position(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'>' | b'/'))
                .unwrap_or(tag.len());
            if tag[..name_len] == *self.header_qname.as_bytes() {
                return Err(XmlError::InvalidXml);
            }
        }
        if empty {
            if self.depth == 1 {
                return self.stanza_done().map(Some);
            }
            return Ok(None);
        }
        let stanza_start = self.stanza_start.unwrap_or(self.tag_start);
        let name_len = self.buf[self.tag_start + 1..self.pos]
            .iter()
            .position(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'>' | b'/'))
            .unwrap_or(0);
        self.open
            .push((self.tag_start + 1 - stanza_start, name_len));
        self.depth += 1;
        if self.depth > self.limits.max_depth + 1 {
            return Err(XmlError::PolicyViolation);
        }
        Ok(None)
    }

    fn end_tag_done(&mut self) -> Result<Option<StreamEvent>, XmlError> {
        match self.depth {
            0 => Err(XmlError::NotWellFormed),
            1 => {
                let name = &self.buf[self.tag_start + 2..self.pos - 1];
                let name = name.trim_ascii_end();
                if name != self.header_qname.as_bytes() {
                    return Err(XmlError::NotWellFormed);
                }
                self.depth = 0;
                let end = self.pos;
                self.consume(end);
                Ok(Some(StreamEvent::End))
            }
            depth => {
                // XML 1.0 §3 (element type match): the end tag names the
                // element it closes.
                let (at, len) = self.open.pop().ok_or(XmlError::NotWellFormed)?;
                let at = self.stanza_start.unwrap_or(self.tag_start) + at;
                let name = self.buf[self.tag_start + 2..self.pos - 1].trim_ascii_end();
                if name != &self.buf[at..at + len] {
                    return Err(XmlError::NotWellFormed);
                }
                self.depth -= 1;
                if depth == 2 {
                    if self.open.capacity() > 16 {
                        // A deeply nested stanza does not leave its stack.
                        self.open = Vec::new();
                    }
                    return self.stanza_done().map(Some);
                }
                Ok(None)
            }
        }
    }

    fn stanza_done(&mut self) -> Result<StreamEvent, XmlError> {
        let start = self.stanza_start.take().unwrap_or(self.tag_start);
        let end = self.pos;
        let el = parse_element(&self.buf[start..end], &self.scope, &self.limits)?;
        self.consume(end);
        Ok(StreamEvent::Stanza(el))
    }

    fn parse_header(&mut self, start: usize, end: usize) -> Result<StreamHeader, XmlError> {
        let text = std::str::from_utf8(&self.buf[start..end])
            .map_err(|_| XmlError::UnsupportedEncoding)?;
        let mut reader = quick_xml::Reader::from_str(text);
        let tag = match reader.read_event() {
            Ok(Event::Start(t)) => t,
            _ => return Err(XmlError::NotWellFormed),
        };
        let qname = tag.name().as_ref().to_owned();
        let mut header = StreamHeader::default();
        let mut scope = Vec::new();
        for attr in tag.attributes() {
            let attr = attr.map_err(|_| XmlError::NotWellFormed)?;
            let key: &str = attr.key.as_ref();
            let value = attr_value(&attr)?.into_owned();
            match key {
                "xmlns" => scope.push((String::new(), value)),
                k if k.starts_with("xmlns:") => scope.push((k[6..].to_owned(), value)),
                "to" => header.to = Some(value),
                "from" => header.from = Some(value),
                "version" => header.version = Some(value),
                "id" => header.id = Some(value),
                "xml:lang" => header.lang = Some(value),
                _ => {}
            }
        }
        let (prefix, local) = split_qname(&qname);
        let ns = lookup(&scope, prefix);
        if local != "stream" || ns.is_none() {
            return Err(XmlError::InvalidNamespace);
        }
        if ns == Some(NS_STREAMS) && prefix != "stream" {
            // RFC 6120 §4.8.5 and the example of §4.9.3.2.
            return Err(XmlError::BadNamespacePrefix);
        }
        if ns != Some(NS_STREAMS) {
            return Err(XmlError::InvalidNamespace);
        }
        header.default_ns = lookup(&scope, "").unwrap_or("").to_owned();
        self.scope = scope;
        self.header_qname = qname;
        Ok(header)
    }
}

/// The `encoding` pseudo-attribute of an XML declaration.
fn declared_encoding(decl: &str) -> Option<&str> {
    let rest = &decl[decl.find("encoding")? + "encoding".len()..];
    let rest = rest.trim_start().strip_prefix('=')?.trim_start();
    let quote = rest.chars().next()?;
    let rest = &rest[1..];
    Some(&rest[..rest.find(quote)?])
}

fn split_qname(q: &str) -> (&str, &str) {
    match q.split_once(':') {
        Some((p, l)) => (p, l),
        None => ("", q),
    }
}

fn lookup<'a, S: AsRef<str>>(scope: &'a [(S, S)], prefix: &str) -> Option<&'a str> {
    if prefix == "xml" {
        return Some(NS_XML);
    }
    scope
        .iter()
        .rev()
        .find(|(p, _)| p.as_ref() == prefix)
        .map(|(_, u)| u.as_ref())
}

/// Namespace declarations in scope while parsing one stanza: the stream
/// header's are borrowed, the stanza's own are added on top.
type Scope<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// Parses one complete element with quick-xml, resolving namespaces
/// against `outer` (the stream header's declarations).
pub fn parse_element(
    bytes: &[u8],
    outer: &[(String, String)],
    limits: &Limits,
) -> Result<Element, XmlError> {
    let text = std::str::from_utf8(bytes).map_err(|_| XmlError::UnsupportedEncoding)?;
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut scope: Scope<'_> = outer
        .iter()
        .map(|(p, u)| (Cow::Borrowed(p.as_str()), Cow::Borrowed(u.as_str())))
        .collect();
    // For each open element: the element and how long `scope` was before it.
    let mut stack: Vec<(Element, usize)> = Vec::new();
    loop {
        let ev = reader.read_event().map_err(|_| XmlError::NotWellFormed)?;
        match ev {
            Event::Start(t) => {
                let mark = scope.len();
                let el = open_element(&t, &mut scope, limits)?;
                stack.push((el, mark));
            }
            Event::Empty(t) => {
                let mark = scope.len();
                let el = open_element(&t, &mut scope, limits)?;
                scope.truncate(mark);
                match stack.last_mut() {
                    Some((parent, _)) => parent.children.push(Node::Element(el)),
                    None => return finish(el, &mut reader),
                }
            }
            Event::End(_) => {
                let (el, mark) = stack.pop().ok_or(XmlError::NotWellFormed)?;
                scope.truncate(mark);
                match stack.last_mut() {
                    Some((parent, _)) => parent.children.push(Node::Element(el)),
                    None => return finish(el, &mut reader),
                }
            }
            Event::Text(t) => {
                let s = t.xml10_content();
                push_text(&mut stack, &s)?;
            }
            Event::CData(t) => {
                push_text(&mut stack, &t)?;
            }
            Event::GeneralRef(r) => {
                let name = r.into_inner();
                let c = resolve_ref(&name)?;
                let mut tmp = [0u8; 4];
                push_text(&mut stack, c.encode_utf8(&mut tmp))?;
            }
            Event::Comment(_) | Event::PI(_) | Event::DocType(_) | Event::Decl(_) => {
                return Err(XmlError::RestrictedXml);
            }
            Event::Eof => return Err(XmlError::NotWellFormed),
        }
    }
}

fn finish(el: Element, reader: &mut quick_xml::Reader<&[u8]>) -> Result<Element, XmlError> {
    match reader.read_event() {
        Ok(Event::Eof) => Ok(el),
        _ => Err(XmlError::NotWellFormed),
    }
}

fn push_text(stack: &mut [(Element, usize)], s: &str) -> Result<(), XmlError> {
    let Some((el, _)) = stack.last_mut() else {
        return if s.trim().is_empty() {
            Ok(())
        } else {
            Err(XmlError::NotWellFormed)
        };
    };
    if s.chars().any(is_forbidden_char) {
        return Err(XmlError::NotWellFormed);
    }
    if let Some(Node::Text(t)) = el.children.last_mut() {
        t.push_str(s);
    } else {
        el.children.push(Node::Text(s.to_owned()));
    }
    Ok(())
}

/// Characters XML 1.0 does not allow in a document.
fn is_forbidden_char(c: char) -> bool {
    let c = c as u32;
    (c < 0x20 && c != 0x9 && c != 0xA && c != 0xD) || c == 0xFFFE || c == 0xFFFF
}

/// The five predefined entities and character references; any other
/// entity reference is restricted XML (RFC 6120 §11.1).
fn resolve_ref(name: &str) -> Result<char, XmlError> {
    let c = match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        n if n.starts_with("#x") => u32::from_str_radix(&n[2..], 16)
            .ok()
            .and_then(char::from_u32)
            .ok_or(XmlError::NotWellFormed)?,
        n if n.starts_with('#') => n[1..]
            .parse::<u32>()
            .ok()
            .and_then(char::from_u32)
            .ok_or(XmlError::NotWellFormed)?,
        _ => return Err(XmlError::RestrictedXml),
    };
    if is_forbidden_char(c) {
        return Err(XmlError::NotWellFormed);
    }
    Ok(c)
}

/// An attribute value, unescaped and normalised; an entity other than the
/// predefined ones is restricted XML.
fn attr_value<'a>(
    attr: &quick_xml::events::attributes::Attribute<'a>,
) -> Result<std::borrow::Cow<'a, str>, XmlError> {
    attr.normalized_value(quick_xml::XmlVersion::Implicit1_0)
        .map_err(|e| match e {
            quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(..)) => {
                XmlError::RestrictedXml
            }
            _ => XmlError::NotWellFormed,
        })
}

fn open_element<'a>(
    t: &BytesStart<'_>,
    scope: &mut Scope<'a>,
    limits: &Limits,
) -> Result<Element, XmlError> {
    let qname_owned = t.name();
    let qname: &str = qname_owned.as_ref();
    let mut attrs = Vec::new();
    for (count, attr) in t.attributes().enumerate() {
        if count >= limits.max_attrs {
            return Err(XmlError::PolicyViolation);
        }
        let attr = attr.map_err(|_| XmlError::NotWellFormed)?;
        let key: &str = attr.key.as_ref();
        let value = attr_value(&attr)?;
        if value.chars().any(is_forbidden_char) {
            return Err(XmlError::NotWellFormed);
        }
        if key == "xmlns" {
            scope.push((Cow::Borrowed(""), Cow::Owned(value.into_owned())));
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            if value.is_empty() {
                return Err(XmlError::NotWellFormed);
            }
            scope.push((Cow::Owned(p.to_owned()), Cow::Owned(value.into_owned())));
        } else {
            attrs.push((key.to_owned(), value.into_owned()));
        }
    }
    // Prefixed attributes must use a declared prefix.
    for (k, _) in &attrs {
        if let Some((p, _)) = k.split_once(':')
            && lookup(scope, p).is_none()
        {
            return Err(XmlError::NotWellFormed);
        }
    }
    let (prefix, local) = split_qname(qname);
    let ns = lookup(scope, prefix).ok_or(XmlError::NotWellFormed)?;
    // Keep declarations that prefixed attributes need when re-serialised.
    for (p, u) in scope.iter() {
        if !p.is_empty()
            && attrs
                .iter()
                .any(|(k, _)| k.split_once(':').is_some_and(|(ap, _)| ap == p))
        {
            let decl = format!("xmlns:{p}");
            if !attrs.iter().any(|(k, _)| *k == decl) {
                attrs.push((decl, u.to_string()));
            }
        }
    }
    Ok(Element {
        name: local.to_owned(),
        ns: ns.to_owned(),
        attrs,
        children: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

    fn parser() -> StreamParser {
        StreamParser::new(Limits::default())
    }

    fn events(p: &mut StreamParser, data: &[u8]) -> Result<Vec<StreamEvent>, XmlError> {
        p.feed(data);
        let mut out = Vec::new();
        while let Some(e) = p.next_event()? {
            out.push(e);
        }
        Ok(out)
    }

    /// A closing quote followed by a name: the value ended early (a
    /// header missing a quote, as one compliance checker sends it), known
    /// before any `>` comes.
    #[test]
    fn attribute_value_running_into_a_name_fails_at_once() {
        let mut p = parser();
        let r = events(
            &mut p,
            b"<?xml version='1.0'?><stream:stream to='a' xmlns='jabber:client xmlns:stream='http://etherx.jabber.org/streams'",
        );
        assert!(matches!(r, Err(XmlError::NotWellFormed)), "{r:?}");
        let mut p = parser();
        events(&mut p, HEADER.as_bytes()).unwrap();
        assert!(matches!(
            events(&mut p, b"<message a='1'b='2'"),
            Err(XmlError::NotWellFormed)
        ));
        let mut p = parser();
        events(&mut p, HEADER.as_bytes()).unwrap();
        let ok = events(&mut p, b"<message a='1'\tb=\"2\"/><iq a='x'\n/>").unwrap();
        assert_eq!(ok.len(), 2);
    }

    /// What a SASL2 exchange checks: whitespace between stanzas, not the
    /// text inside one.
    #[test]
    fn whitespace_between_stanzas_is_noticed() {
        let mut p = parser();
        events(&mut p, HEADER.as_bytes()).unwrap();
        p.take_whitespace();
        events(&mut p, b"<message><body> x \n</body></message>").unwrap();
        assert!(!p.take_whitespace(), "text inside a stanza");
        events(&mut p, b"\n<presence/>").unwrap();
        assert!(p.take_whitespace(), "before a stanza");
        events(&mut p, b"<iq/> ").unwrap();
        assert!(p.take_whitespace(), "after one, alone in its read");
        assert!(!p.take_whitespace(), "taken");
    }

    #[test]
    fn header_and_stanzas_byte_by_byte() {
        let mut p = parser();
        let doc = format!(
            "{HEADER} <message to='a@b'><body>x &amp; &#x41;<![CDATA[<y>]]></body><x xmlns='urn:q' a='1'/></message>\n<presence/></stream:stream>"
        );
        let mut evs = Vec::new();
        for b in doc.as_bytes() {
            evs.extend(events(&mut p, std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(evs.len(), 4);
        match &evs[0] {
            StreamEvent::Header(h) => {
                assert_eq!(h.to.as_deref(), Some("localhost"));
                assert_eq!(h.default_ns, "jabber:client");
            }
            e => panic!("{e:?}"),
        }
        match &evs[1] {
            StreamEvent::Stanza(m) => {
                assert!(m.is("message", "jabber:client"));
                assert_eq!(m.child_text("body", "jabber:client").unwrap(), "x & A<y>");
                let x = m.get_child("x", "urn:q").unwrap();
                assert_eq!(x.get_attr("a"), Some("1"));
                assert_eq!(
                    m.to_stream_xml("jabber:client"),
                    "<message to=\"a@b\"><body>x &amp; A&lt;y&gt;</body><x xmlns=\"urn:q\" a=\"1\"/></message>"
                );
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(&evs[2], StreamEvent::Stanza(p) if p.name == "presence"));
        assert!(matches!(evs[3], StreamEvent::End));
        assert!(p.is_idle());
    }

    #[test]
    fn prefixed_payload_resolves() {
        let mut p = parser();
        events(&mut p, HEADER.as_bytes()).unwrap();
        let evs = events(
            &mut p,
            b"<iq type='get' id='1'><q:query xmlns:q='jabber:iq:roster'/></iq>",
        )
        .unwrap();
        let StreamEvent::Stanza(iq) = &evs[0] else {
            panic!()
        };
        assert!(iq.has_child("query", "jabber:iq:roster"));
    }

    fn first_error(data: &str) -> XmlError {
        let mut p = parser();
        events(&mut p, data.as_bytes()).unwrap_err()
    }

    #[test]
    fn restricted_xml() {
        assert_eq!(
            first_error("<!DOCTYPE x [<!ENTITY a 'b'>]>"),
            XmlError::RestrictedXml
        );
        assert_eq!(
            first_error(&format!("{HEADER}<!-- c -->")),
            XmlError::RestrictedXml
        );
        assert_eq!(
            first_error(&format!("{HEADER}<?pi x?>")),
            XmlError::RestrictedXml
        );
        assert_eq!(
            first_error(&format!("{HEADER}<message><body>&ent;</body></message>")),
            XmlError::RestrictedXml
        );
    }

    #[test]
    fn malformed() {
        assert_eq!(
            first_error(&format!("{HEADER}<message></presence>")),
            XmlError::NotWellFormed
        );
        assert_eq!(
            first_error(&format!("{HEADER}hello")),
            XmlError::NotWellFormed
        );
        assert_eq!(
            first_error(&format!("{HEADER}<message a='1' a='2'/>")),
            XmlError::NotWellFormed
        );
        assert_eq!(
            first_error(&format!("{HEADER}<x:message/>")),
            XmlError::NotWellFormed
        );
        let second = HEADER.trim_start_matches("<?xml version='1.0'?>");
        assert_eq!(
            first_error(&format!("{HEADER}{second}")),
            XmlError::InvalidXml
        );
    }

    #[test]
    fn invalid_utf8() {
        let mut p = parser();
        events(&mut p, HEADER.as_bytes()).unwrap();
        let e = events(&mut p, b"<message><body>\xff\xfe</body></message>").unwrap_err();
        assert_eq!(e, XmlError::UnsupportedEncoding);
    }

    #[test]
    fn an_end_tag_must_close_the_element_it_names() {
        // `</message>` closes <body>: not well-formed at once, not a
        // stanza that waits for one more end tag.
        let mut p = parser();
        events(&mut p, HEADER.as_bytes()).unwrap();
        let e = events(&mut p, b"<message><body>x</message>").unwrap_err();
        assert_eq!(e, XmlError::NotWellFormed);
        let mut p = parser();
        events(&mut p, HEADER.as_bytes()).unwrap();
        let evs = events(&mut p, b"<a:m xmlns:a='jabber:client'><b><b/></b ></a:m>").unwrap();
        assert!(matches!(evs[..], [StreamEvent::Stanza(_)]));
    }

    #[test]
    fn other_encodings() {
        let utf16: Vec<u8> = HEADER
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        let mut p = parser();
        assert_eq!(
            events(&mut p, &[0xFF, 0xFE]).unwrap_err(),
            XmlError::UnsupportedEncoding
        );
        let mut p = parser();
        assert_eq!(
            events(&mut p, &utf16).unwrap_err(),
            XmlError::UnsupportedEncoding
        );
        assert_eq!(
            first_error("<?xml version='1.0' encoding='UTF-16'?><stream:stream>"),
            XmlError::UnsupportedEncoding
        );
        let mut p = parser();
        let ok = HEADER.replace("version='1.0'?>", "version='1.0' encoding=\"utf-8\"?>");
        assert!(matches!(
            events(&mut p, ok.as_bytes()).unwrap()[0],
            StreamEvent::Header(_)
        ));
    }

    #[test]
    fn wrong_stream_namespace() {
        assert_eq!(
            first_error("<stream:stream xmlns:stream='urn:wrong' xmlns='jabber:client'>"),
            XmlError::InvalidNamespace
        );
        assert_eq!(
            first_error("<stream xmlns='jabber:client'>"),
            XmlError::InvalidNamespace
        );
    }

    #[test]
    fn limits() {
        let mut p = StreamParser::new(Limits {
            max_stanza_bytes: 1000,
            ..Limits::default()
        });
        events(&mut p, HEADER.as_bytes()).unwrap();
        let big = format!("<message><body>{}</body></message>", "a".repeat(2000));
        assert_eq!(
            events(&mut p, big.as_bytes()).unwrap_err(),
            XmlError::PolicyViolation
        );

        let deep = format!("{HEADER}{}", "<a>".repeat(100));
        assert_eq!(first_error(&deep), XmlError::PolicyViolation);

        let attrs: String = (0..100).map(|i| format!(" a{i}='1'")).collect();
        assert_eq!(
            first_error(&format!("{HEADER}<message{attrs}/>")),
            XmlError::PolicyViolation
        );
    }
}
