//! XEP-0059 Result Set Management over a result set held in memory (an
//! ordered list of keys, such as a node's item ids or a service's node
//! ids): the page a `<set/>` request selects, and the `<set/>` that
//! describes it in the answer.

use crate::stanza::{Condition, StanzaError};
use crate::xml::Element;

pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";

/// A parsed `<set/>` request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub max: Option<usize>,
    pub after: Option<String>,
    /// `Some(None)`: an empty `<before/>` (the last page).
    pub before: Option<Option<String>>,
    pub index: Option<usize>,
}

fn bad(text: &str) -> StanzaError {
    StanzaError::with_text(Condition::BadRequest, text)
}

impl Request {
    /// The request in `set`; `<bad-request/>` for a `<max/>` or
    /// `<index/>` that is not a non-negative integer or an empty `<after/>`.
    pub fn parse(set: &Element) -> Result<Request, StanzaError> {
        let mut r = Request::default();
        for c in set.elements().filter(|c| c.ns == NS_RSM) {
            let text = c.text_content();
            match c.name.as_str() {
                "max" => {
                    r.max = Some(
                        text.trim()
                            .parse()
                            .map_err(|_| bad("RSM <max/> is not a non-negative integer"))?,
                    )
                }
                "after" if text.is_empty() => return Err(bad("empty RSM <after/>")),
                "after" => r.after = Some(text),
                "before" if text.is_empty() => r.before = Some(None),
                "before" => r.before = Some(Some(text)),
                "index" => {
                    r.index = Some(
                        text.trim()
                            .parse()
                            .map_err(|_| bad("RSM <index/> is not a non-negative integer"))?,
                    )
                }
                _ => {}
            }
        }
        if r.after.is_some() && r.before.is_some() {
            return Err(bad("RSM <after/> and <before/> together"));
        }
        Ok(r)
    }

    /// The request among `parent`'s children, if any.
    pub fn find(parent: &Element) -> Result<Option<Request>, StanzaError> {
        parent
            .get_child("set", NS_RSM)
            .map(Request::parse)
            .transpose()
    }

    /// The page of `keys` (the whole set, in its order) this request
    /// selects, and the `<set/>` describing it; `<item-not-found/>` for an
    /// `<after/>` or `<before/>` naming no key of the set (XEP-0059 §2.5).
    pub fn page<S: AsRef<str>>(
        &self,
        keys: &[S],
    ) -> Result<(std::ops::Range<usize>, Element), StanzaError> {
        let n = keys.len();
        let pos = |k: &str| {
            keys.iter()
                .position(|x| x.as_ref() == k)
                .ok_or_else(|| StanzaError::from(Condition::ItemNotFound))
        };
        let max = self.max.unwrap_or(usize::MAX);
        let range = if let Some(after) = &self.after {
            let start = pos(after)? + 1;
            start..start.saturating_add(max).min(n)
        } else if let Some(before) = &self.before {
            let end = match before {
                Some(b) => pos(b)?,
                None => n,
            };
            end.saturating_sub(max)..end
        } else {
            let start = self.index.unwrap_or(0).min(n);
            start..start.saturating_add(max).min(n)
        };
        let set = describe(keys, range.clone());
        Ok((range, set))
    }
}

/// The `<set/>` describing the page `range` of `keys` (the whole set).
pub fn describe<S: AsRef<str>>(keys: &[S], range: std::ops::Range<usize>) -> Element {
    let mut set = Element::new("set", NS_RSM);
    if !range.is_empty() {
        set = set
            .child(
                Element::new("first", NS_RSM)
                    .attr("index", range.start.to_string())
                    .text(keys[range.start].as_ref()),
            )
            .child(Element::new("last", NS_RSM).text(keys[range.end - 1].as_ref()));
    }
    set.child(Element::new("count", NS_RSM).text(keys.len().to_string()))
}

/// Pages a list of disco `<item/>`s by `key` (an attribute of each) when
/// `request` (a disco#items `<query/>`) holds a `<set/>`: the page and its
/// `<set/>`, else the list untouched.
pub fn page_items(
    request: &Element,
    items: Vec<Element>,
    key: &str,
) -> Result<(Vec<Element>, Option<Element>), StanzaError> {
    let Some(r) = Request::find(request)? else {
        return Ok((items, None));
    };
    let keys: Vec<&str> = items
        .iter()
        .map(|i| i.get_attr(key).unwrap_or_default())
        .collect();
    let (range, set) = r.page(&keys)?;
    let page = items
        .into_iter()
        .skip(range.start)
        .take(range.len())
        .collect();
    Ok((page, Some(set)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(inner: &str) -> Request {
        let xml = format!("<set xmlns='{NS_RSM}'>{inner}</set>");
        let el = crate::xml::parse_element(xml.as_bytes(), &[], &Default::default()).unwrap();
        Request::parse(&el).unwrap()
    }

    #[test]
    fn pages() {
        let keys = ["a", "b", "c", "d", "e"];
        let r = |inner: &str| req(inner).page(&keys).map(|(r, _)| r);
        assert_eq!(r("<max>2</max>").unwrap(), 0..2);
        assert_eq!(r("<max>2</max><after>b</after>").unwrap(), 2..4);
        assert_eq!(r("<max>2</max><after>d</after>").unwrap(), 4..5);
        assert_eq!(r("<max>2</max><before/>").unwrap(), 3..5);
        assert_eq!(r("<max>2</max><before>b</before>").unwrap(), 0..1);
        assert_eq!(r("<max>2</max><index>3</index>").unwrap(), 3..5);
        assert_eq!(r("<max>0</max>").unwrap(), 0..0);
        assert_eq!(r("<index>9</index>").unwrap(), 5..5);
        assert!(r("<after>zz</after>").is_err());
        let (_, set) = req("<max>2</max><after>a</after>").page(&keys).unwrap();
        let first = set.get_child("first", NS_RSM).unwrap();
        assert_eq!(first.get_attr("index"), Some("1"));
        assert_eq!(first.text_content(), "b");
        assert_eq!(set.get_child("count", NS_RSM).unwrap().text_content(), "5");
    }
}
