//! Bytes to elements and back: the incremental bounded parser and the
//! element tree. Knows nothing of XMPP beyond the stream wrapper element.

mod element;
mod parser;
pub mod scan;

pub use element::{Element, Node, escape, escape_into};
pub use parser::{
    Limits, NS_STREAMS, StreamEvent, StreamHeader, StreamParser, XmlError, parse_element,
};
