//! Incremental framing of an XMPP stream into its header, top-level stanzas and its close.
//!
//! A load generator needs to know where a stanza ends, not what it means, so this is a
//! byte scanner that tracks element depth (quotes respected) rather than a full XML parser;
//! the few fields the scenarios read are pulled out with the helpers below.

/// One unit read from the stream.
#[derive(Debug)]
pub enum Frame {
    /// `<stream:stream ...>` (the opening tag only).
    StreamOpen,
    /// A complete top-level element, e.g. `<message ...>...</message>`.
    Stanza(Vec<u8>),
    /// `</stream:stream>`.
    StreamClose,
}

/// Bytes received but not yet framed, plus the scanner state.
pub struct Framer {
    /// Unconsumed input; `tokio::io::AsyncReadExt::read_buf` appends to it.
    pub buf: Vec<u8>,
    scan: usize,
    depth: u32,
    stanza_start: usize,
    tag_start: Option<usize>,
    quote: u8,
    /// Refuse to buffer a stanza larger than this (bounds memory on a misbehaving peer).
    max: usize,
}

impl Framer {
    /// A framer expecting a stream header first.
    pub fn new() -> Self {
        Framer {
            buf: Vec::with_capacity(4096),
            scan: 0,
            depth: 0,
            stanza_start: 0,
            tag_start: None,
            quote: 0,
            max: 1 << 20,
        }
    }

    /// A framer for a peer that sends bare elements without a stream header (the echo server).
    pub fn in_stream() -> Self {
        let mut f = Framer::new();
        f.depth = 1;
        f
    }

    /// Stream restart (after STARTTLS or SASL): the next element is a new stream header.
    pub fn restart(&mut self) {
        self.scan = 0;
        self.depth = 0;
        self.tag_start = None;
        self.quote = 0;
    }

    /// Whether the unconsumed input has grown past the limit.
    pub fn overflow(&self) -> bool {
        self.buf.len() > self.max
    }

    /// The next complete frame, if the buffer holds one.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let mut i = self.scan;
        while i < self.buf.len() {
            let c = self.buf[i];
            if let Some(ts) = self.tag_start {
                if self.quote != 0 {
                    if c == self.quote {
                        self.quote = 0;
                    }
                } else if c == b'\'' || c == b'"' {
                    self.quote = c;
                } else if c == b'>' {
                    self.tag_start = None;
                    let tag = &self.buf[ts..=i];
                    if let Some(f) = self.on_tag(ts, i, tag[1], tag[tag.len() - 2]) {
                        return Some(f);
                    }
                    i = self.scan;
                    continue;
                }
            } else if c == b'<' {
                self.tag_start = Some(i);
            }
            i += 1;
        }
        self.scan = i;
        if self.tag_start.is_none() && self.depth <= 1 {
            // only whitespace keepalives so far: drop them
            self.buf.clear();
            self.scan = 0;
        }
        None
    }

    /// A tag `buf[ts..=end]` closed; `first` is the byte after `<`, `last` the byte before `>`.
    fn on_tag(&mut self, ts: usize, end: usize, first: u8, last: u8) -> Option<Frame> {
        self.scan = end + 1;
        if first == b'?' || first == b'!' {
            return None; // XML declaration
        }
        if first == b'/' {
            self.depth = self.depth.saturating_sub(1);
            return match self.depth {
                0 => {
                    self.consume(end + 1);
                    Some(Frame::StreamClose)
                }
                1 => Some(self.take_stanza(end + 1)),
                _ => None,
            };
        }
        if last == b'/' {
            if self.depth == 1 {
                self.stanza_start = ts;
                return Some(self.take_stanza(end + 1));
            }
            return None;
        }
        self.depth += 1;
        match self.depth {
            1 => {
                self.consume(end + 1);
                Some(Frame::StreamOpen)
            }
            2 => {
                self.stanza_start = ts;
                None
            }
            _ => None,
        }
    }

    fn take_stanza(&mut self, end: usize) -> Frame {
        let s = self.buf[self.stanza_start..end].to_vec();
        self.consume(end);
        Frame::Stanza(s)
    }

    fn consume(&mut self, end: usize) {
        self.buf.drain(..end);
        self.scan = 0;
        self.stanza_start = 0;
    }
}

/// The element name of a stanza (`message`, `iq`, `stream:features`, ...).
pub fn name(s: &[u8]) -> &str {
    let end = s[1..]
        .iter()
        .position(|&c| {
            c == b' ' || c == b'>' || c == b'/' || c == b'\t' || c == b'\n' || c == b'\r'
        })
        .map_or(s.len(), |p| p + 1);
    std::str::from_utf8(&s[1..end]).unwrap_or("")
}

/// An attribute of the stanza's own (first) tag.
pub fn attr<'a>(s: &'a [u8], key: &str) -> Option<&'a str> {
    let head_end = head_end(s);
    let head = &s[..head_end];
    let k = key.as_bytes();
    let mut i = 0;
    while i + k.len() + 2 < head.len() {
        if head[i..].starts_with(k)
            && i > 0
            && head[i - 1].is_ascii_whitespace()
            && head[i + k.len()] == b'='
        {
            let q = head[i + k.len() + 1];
            let v0 = i + k.len() + 2;
            let v1 = head[v0..].iter().position(|&c| c == q)? + v0;
            return std::str::from_utf8(&head[v0..v1]).ok();
        }
        i += 1;
    }
    None
}

/// Index one past the end of the stanza's first tag, quotes respected.
fn head_end(s: &[u8]) -> usize {
    let mut q = 0u8;
    for (i, &c) in s.iter().enumerate() {
        if q != 0 {
            if c == q {
                q = 0;
            }
        } else if c == b'\'' || c == b'"' {
            q = c;
        } else if c == b'>' {
            return i + 1;
        }
    }
    s.len()
}

/// The text of the first `<tag>` child anywhere in the stanza (no entity decoding).
pub fn child_text<'a>(s: &'a [u8], tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}");
    let start = find(s, open.as_bytes())?;
    let after = start + open.len();
    let c = *s.get(after)?;
    if c != b'>' && c != b' ' && c != b'/' {
        return None;
    }
    let gt = s[after..].iter().position(|&c| c == b'>')? + after;
    if s[gt - 1] == b'/' {
        return Some("");
    }
    let close = format!("</{tag}>");
    let end = find(&s[gt + 1..], close.as_bytes())? + gt + 1;
    std::str::from_utf8(&s[gt + 1..end]).ok()
}

/// Byte substring search.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether the stanza contains `needle` anywhere.
pub fn contains(hay: &[u8], needle: &str) -> bool {
    find(hay, needle.as_bytes()).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[&[u8]]) -> Vec<String> {
        let mut f = Framer::new();
        let mut out = Vec::new();
        for chunk in input {
            f.buf.extend_from_slice(chunk);
            while let Some(fr) = f.next_frame() {
                out.push(match fr {
                    Frame::StreamOpen => "OPEN".to_string(),
                    Frame::StreamClose => "CLOSE".to_string(),
                    Frame::Stanza(s) => String::from_utf8(s).unwrap(),
                });
            }
        }
        out
    }

    #[test]
    fn frames_split_input() {
        let got = frames(&[
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' id='a>b'>",
            b"<stream:features><starttls xmlns='x'/></stream:fea",
            b"tures> <message to='a'><body>1 2</body></message><proceed/>",
            b"</stream:stream>",
        ]);
        assert_eq!(
            got,
            vec![
                "OPEN",
                "<stream:features><starttls xmlns='x'/></stream:features>",
                "<message to='a'><body>1 2</body></message>",
                "<proceed/>",
                "CLOSE"
            ]
        );
    }

    #[test]
    fn field_helpers() {
        let s = b"<iq type='result' id=\"b1\"><bind xmlns='x'><jid>u@d/r</jid></bind></iq>";
        assert_eq!(name(s), "iq");
        assert_eq!(attr(s, "type"), Some("result"));
        assert_eq!(attr(s, "id"), Some("b1"));
        assert_eq!(attr(s, "xmlns"), None);
        assert_eq!(child_text(s, "jid"), Some("u@d/r"));
        assert_eq!(
            child_text(b"<presence><status/></presence>", "status"),
            Some("")
        );
    }

    #[test]
    fn echo_mode_has_no_header() {
        let mut f = Framer::in_stream();
        f.buf.extend_from_slice(b"<m><body>x</body></m><m/>");
        assert!(matches!(f.next_frame(), Some(Frame::Stanza(_))));
        assert!(matches!(f.next_frame(), Some(Frame::Stanza(_))));
        assert!(f.next_frame().is_none());
    }
}
