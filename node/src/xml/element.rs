//! A small owned XML element tree: what one stanza becomes once the
//! framer has found its end. Namespaces are resolved (every element knows
//! its namespace URI), and serialisation writes an `xmlns` only where an
//! element's namespace differs from its parent's, so payloads we do not
//! understand are routed untouched in meaning.

/// A child of an element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

/// An XML element with a resolved namespace.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Element {
    /// Local name (no prefix).
    pub name: String,
    /// Namespace URI.
    pub ns: String,
    /// Attributes in document order, by qualified name (`xml:lang` keeps its
    /// prefix). Namespace declarations are not kept: they are derived.
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn new(name: impl Into<String>, ns: impl Into<String>) -> Self {
        Element {
            name: name.into(),
            ns: ns.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder: adds an attribute.
    pub fn attr(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder: adds a child element.
    pub fn child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: adds a text node.
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    pub fn get_attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn set_attr(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name.to_owned(), value)),
        }
    }

    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let pos = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(pos).1)
    }

    /// Child elements, in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn elements_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// First child element with this name and namespace.
    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(name, ns))
    }

    pub fn get_child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.elements_mut().find(|e| e.is(name, ns))
    }

    pub fn has_child(&self, name: &str, ns: &str) -> bool {
        self.get_child(name, ns).is_some()
    }

    pub fn remove_children(&mut self, name: &str, ns: &str) {
        self.children
            .retain(|n| !matches!(n, Node::Element(e) if e.is(name, ns)));
    }

    /// Concatenated text of the direct text children.
    pub fn text_content(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }

    /// Text of the first child element `name` in `ns`.
    pub fn child_text(&self, name: &str, ns: &str) -> Option<String> {
        self.get_child(name, ns).map(Element::text_content)
    }

    /// Serialises as if the parent's namespace were `parent_ns` (for a
    /// stanza on a client stream, `jabber:client`).
    pub fn write_to(&self, out: &mut String, parent_ns: &str) {
        out.push('<');
        out.push_str(&self.name);
        if self.ns != parent_ns {
            out.push_str(" xmlns=\"");
            escape_into(out, &self.ns, true);
            out.push('"');
        }
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("=\"");
            escape_into(out, v, true);
            out.push('"');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for child in &self.children {
            match child {
                Node::Element(e) => e.write_to(out, &self.ns),
                Node::Text(t) => escape_into(out, t, false),
            }
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }

    /// Serialises with its namespace declared (a standalone document).
    pub fn to_xml(&self) -> String {
        let mut s = String::with_capacity(128);
        self.write_to(&mut s, "");
        s
    }

    /// Serialises for a stream whose default namespace is `stream_ns`.
    pub fn to_stream_xml(&self, stream_ns: &str) -> String {
        let mut s = String::with_capacity(128);
        self.write_to(&mut s, stream_ns);
        s
    }
}

/// Escapes text for element content or (with `attr`) a quoted attribute.
pub fn escape_into(out: &mut String, s: &str, attr: bool) {
    // Runs of bytes that need nothing go in one copy (every byte escaped
    // is ASCII, so the cuts fall on character boundaries).
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'&' => "&amp;",
            b'"' if attr => "&quot;",
            b'\'' if attr => "&apos;",
            b'\r' => "&#xD;",
            b'\n' if attr => "&#xA;",
            b'\t' if attr => "&#x9;",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        out.push_str(esc);
        from = i + 1;
    }
    out.push_str(&s[from..]);
}

/// Escapes a string into a new `String`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s, true);
    out
}

impl std::fmt::Display for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        self.write_to(&mut s, "");
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::escape_into;

    #[test]
    fn escaping_replaces_only_what_it_must_and_keeps_other_characters() {
        let cases = [
            ("", false, ""),
            ("plain é ☃ text", true, "plain é ☃ text"),
            ("a<b>&c", false, "a&lt;b&gt;&amp;c"),
            ("'\"\t\n\r", true, "&apos;&quot;&#x9;&#xA;&#xD;"),
            ("'\"\t\n\r", false, "'\"\t\n&#xD;"),
            ("ü<", false, "ü&lt;"),
            ("<ü", true, "&lt;ü"),
        ];
        for (input, attr, want) in cases {
            let mut out = String::from("x");
            escape_into(&mut out, input, attr);
            assert_eq!(out, format!("x{want}"), "{input:?} attr={attr}");
        }
    }
}
