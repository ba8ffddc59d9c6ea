//! Reading a serialised stanza's start tag without parsing it: what the
//! hot paths that hold only the XML the server wrote (a session's CSI
//! filter, its blocklist filter) need.

/// The attributes of the first start tag of `xml` (the text between the
/// element's name and the first `>`: attribute values as the server writes
/// them are escaped, `>` included).
pub fn start_tag_attrs(xml: &str) -> Option<&str> {
    let tag = xml.strip_prefix('<')?;
    let tag = tag.split_once('>').map_or(tag, |(t, _)| t);
    // Past the element's name.
    Some(tag.split_once(char::is_whitespace)?.1)
}

/// The raw (still escaped) value of attribute `name` among `attrs`, the
/// attributes of a start tag (`name="value"` or `name='value'`).
pub fn raw_attr<'a>(mut attrs: &'a str, name: &str) -> Option<&'a str> {
    loop {
        let (key, rest) = attrs.split_once('=')?;
        let rest = rest.trim_start();
        let quote = rest.chars().next().filter(|q| *q == '"' || *q == '\'')?;
        let (value, after) = rest[1..].split_once(quote)?;
        if key.trim() == name {
            return Some(value);
        }
        attrs = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_attributes_of_the_first_start_tag_only() {
        let xml = r#"<message from='a@b/c' type="chat"><body x='1'>hi</body></message>"#;
        let attrs = start_tag_attrs(xml).unwrap();
        assert_eq!(raw_attr(attrs, "from"), Some("a@b/c"));
        assert_eq!(raw_attr(attrs, "type"), Some("chat"));
        assert_eq!(raw_attr(attrs, "x"), None);
        assert_eq!(start_tag_attrs("<presence/>"), None);
    }
}
