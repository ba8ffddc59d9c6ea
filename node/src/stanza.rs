//! Stanza-level vocabulary: namespaces, stanza errors (RFC 6120 §8.3) and
//! stream errors (§4.9), and the small helpers every handler needs. Pure:
//! no I/O, no routing.

use crate::xml::Element;

pub const NS_CLIENT: &str = "jabber:client";
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const NS_DELAY: &str = "urn:xmpp:delay";
pub const NS_ROSTER: &str = "jabber:iq:roster";

/// The defined conditions of RFC 6120 §8.3.3, each with its default type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    Gone,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RecipientUnavailable,
    Redirect,
    RegistrationRequired,
    RemoteServerNotFound,
    RemoteServerTimeout,
    ResourceConstraint,
    ServiceUnavailable,
    SubscriptionRequired,
    UndefinedCondition,
    UnexpectedRequest,
}

impl Condition {
    pub fn name(self) -> &'static str {
        use Condition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            Gone => "gone",
            InternalServerError => "internal-server-error",
            ItemNotFound => "item-not-found",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            PolicyViolation => "policy-violation",
            RecipientUnavailable => "recipient-unavailable",
            Redirect => "redirect",
            RegistrationRequired => "registration-required",
            RemoteServerNotFound => "remote-server-not-found",
            RemoteServerTimeout => "remote-server-timeout",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
            SubscriptionRequired => "subscription-required",
            UndefinedCondition => "undefined-condition",
            UnexpectedRequest => "unexpected-request",
        }
    }

    /// The error type RFC 6120 §8.3.3 gives for the condition.
    pub fn error_type(self) -> &'static str {
        use Condition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | Redirect => "modify",
            Forbidden | NotAuthorized | RegistrationRequired | SubscriptionRequired => "auth",
            RecipientUnavailable | RemoteServerTimeout | ResourceConstraint | UnexpectedRequest => {
                "wait"
            }
            _ => "cancel",
        }
    }
}

/// A stanza error to return to the sender.
#[derive(Clone, Debug)]
pub struct StanzaError {
    pub condition: Condition,
    pub text: Option<String>,
}

impl StanzaError {
    pub fn new(condition: Condition) -> Self {
        StanzaError {
            condition,
            text: None,
        }
    }

    pub fn with_text(condition: Condition, text: impl Into<String>) -> Self {
        StanzaError {
            condition,
            text: Some(text.into()),
        }
    }

    pub fn to_element(&self) -> Element {
        let mut e = Element::new("error", NS_CLIENT)
            .attr("type", self.condition.error_type())
            .child(Element::new(self.condition.name(), NS_STANZAS));
        if let Some(t) = &self.text {
            e = e.child(
                Element::new("text", NS_STANZAS)
                    .attr("xml:lang", "en")
                    .text(t.clone()),
            );
        }
        e
    }
}

impl From<Condition> for StanzaError {
    fn from(c: Condition) -> Self {
        StanzaError::new(c)
    }
}

impl From<starling_cluster::StoreError> for StanzaError {
    fn from(e: starling_cluster::StoreError) -> Self {
        tracing::error!(error = %e, "storage failure while handling a stanza");
        match e {
            starling_cluster::StoreError::Unavailable(_) => {
                StanzaError::new(Condition::ServiceUnavailable)
            }
            _ => StanzaError::new(Condition::InternalServerError),
        }
    }
}

/// Builds the error reply to `stanza` (RFC 6120 §8.3.1): to and from
/// swapped, type "error", the original payload kept. Returns `None` for a
/// stanza of type "error", which must never be answered with an error.
pub fn error_reply(stanza: &Element, err: &StanzaError) -> Option<Element> {
    if stanza.get_attr("type") == Some("error") {
        return None;
    }
    let mut reply = Element::new(stanza.name.clone(), stanza.ns.clone());
    if let Some(id) = stanza.get_attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(from) = stanza.get_attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(to) = stanza.get_attr("to") {
        reply.set_attr("from", to);
    }
    reply.set_attr("type", "error");
    if stanza.name != "iq" || stanza.get_attr("type") != Some("result") {
        reply.children = stanza.children.clone();
    }
    reply
        .children
        .push(crate::xml::Node::Element(err.to_element()));
    Some(reply)
}

/// An iq result for `iq`, with an optional payload.
pub fn iq_result(iq: &Element, payload: Option<Element>) -> Element {
    let mut r = Element::new("iq", NS_CLIENT).attr("type", "result");
    if let Some(id) = iq.get_attr("id") {
        r.set_attr("id", id);
    }
    if let Some(from) = iq.get_attr("from") {
        r.set_attr("to", from);
    }
    if let Some(to) = iq.get_attr("to") {
        r.set_attr("from", to);
    }
    if let Some(p) = payload {
        r = r.child(p);
    }
    r
}

/// The stream error element for `condition` (RFC 6120 §4.9.3).
pub fn stream_error(condition: &str, text: Option<&str>) -> String {
    let mut s = format!("<stream:error><{condition} xmlns='{NS_STREAM_ERRORS}'/>");
    if let Some(t) = text {
        s.push_str(&format!(
            "<text xmlns='{NS_STREAM_ERRORS}' xml:lang='en'>{}</text>",
            crate::xml::escape(t)
        ));
    }
    s.push_str("</stream:error></stream:stream>");
    s
}

/// A stream error whose condition element carries character data (as
/// `<see-other-host/>` carries the host to reconnect to).
pub fn stream_error_with_content(condition: &str, content: &str) -> String {
    format!(
        "<stream:error><{condition} xmlns='{NS_STREAM_ERRORS}'>{}</{condition}></stream:error></stream:stream>",
        crate::xml::escape(content)
    )
}

/// A JID parsed and normalised (RFC 7622 via the `jid` crate).
pub fn parse_jid(s: &str) -> Result<jid::Jid, StanzaError> {
    jid::Jid::new(s).map_err(|_| StanzaError::new(Condition::JidMalformed))
}

/// The current time as XEP-0082 DateTime (UTC).
pub fn now_stamp() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Parses a stanza the server serialised itself (offline store, mailbox,
/// routing table): trusted input, so no size limit.
pub fn parse_serialised(xml: &str) -> Option<Element> {
    let scope = [(String::new(), NS_CLIENT.to_owned())];
    let limits = crate::xml::Limits {
        max_stanza_bytes: usize::MAX,
        ..Default::default()
    };
    crate::xml::parse_element(xml.as_bytes(), &scope, &limits).ok()
}

/// Splits a normalised JID string into (bare, resource).
pub fn split(jid: &str) -> (&str, Option<&str>) {
    match jid.split_once('/') {
        Some((b, r)) => (b, Some(r)),
        None => (jid, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_swaps_addresses_and_keeps_payload() {
        let msg = Element::new("message", NS_CLIENT)
            .attr("from", "a@x/r")
            .attr("to", "b@x")
            .attr("id", "1")
            .child(Element::new("body", NS_CLIENT).text("hi"));
        let r = error_reply(&msg, &Condition::ServiceUnavailable.into()).unwrap();
        assert_eq!(r.get_attr("to"), Some("a@x/r"));
        assert_eq!(r.get_attr("from"), Some("b@x"));
        assert_eq!(r.get_attr("type"), Some("error"));
        let e = r.get_child("error", NS_CLIENT).unwrap();
        assert_eq!(e.get_attr("type"), Some("cancel"));
        assert!(e.has_child("service-unavailable", NS_STANZAS));
        assert!(r.has_child("body", NS_CLIENT));
        let mut err = msg.clone();
        err.set_attr("type", "error");
        assert!(error_reply(&err, &Condition::BadRequest.into()).is_none());
    }
}
