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
    /// An application-specific condition (RFC 6120 §8.3.4), such as
    /// XEP-0060's `<nodeid-required xmlns='…pubsub#errors'/>`.
    pub app: Option<Box<Element>>,
    /// The error type when a specification names another than the
    /// condition's usual one (XEP-0050 §4.6: `<forbidden/>` is `cancel`).
    pub kind: Option<&'static str>,
    /// What the error reply carries instead of the request's payload
    /// (XEP-0060 §8.9.2.4: only the entries that failed).
    pub payload: Option<Box<Element>>,
}

impl StanzaError {
    pub fn new(condition: Condition) -> Self {
        StanzaError {
            condition,
            text: None,
            app: None,
            kind: None,
            payload: None,
        }
    }

    pub fn with_text(condition: Condition, text: impl Into<String>) -> Self {
        StanzaError {
            condition,
            text: Some(text.into()),
            app: None,
            kind: None,
            payload: None,
        }
    }

    /// A condition with an application-specific condition element.
    pub fn with_app(condition: Condition, app: Element) -> Self {
        StanzaError {
            condition,
            text: None,
            app: Some(Box::new(app)),
            kind: None,
            payload: None,
        }
    }

    /// The error with `payload` in its reply in place of the request's.
    pub fn with_payload(mut self, payload: Element) -> Self {
        self.payload = Some(Box::new(payload));
        self
    }

    pub fn to_element(&self) -> Element {
        let mut e = Element::new("error", NS_CLIENT)
            .attr("type", self.kind.unwrap_or(self.condition.error_type()))
            .child(Element::new(self.condition.name(), NS_STANZAS));
        if let Some(t) = &self.text {
            e = e.child(
                Element::new("text", NS_STANZAS)
                    .attr("xml:lang", "en")
                    .text(t.clone()),
            );
        }
        if let Some(app) = &self.app {
            e = e.child((**app).clone());
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
    if let Some(p) = &err.payload {
        reply.children = vec![crate::xml::Node::Element((**p).clone())];
    } else if stanza.name != "iq" || stanza.get_attr("type") != Some("result") {
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

/// Declares the stream conditions once: the enum, every value, its name.
macro_rules! stream_conditions {
    ($($variant:ident => $name:literal,)*) => {
        /// The stream error conditions of RFC 6120 §4.9.3.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum StreamCondition {
            $($variant,)*
        }

        impl StreamCondition {
            /// Every condition, for lookups by name.
            pub const ALL: &'static [StreamCondition] = &[$(StreamCondition::$variant,)*];

            /// The condition's element name.
            pub fn name(self) -> &'static str {
                match self {
                    $(StreamCondition::$variant => $name,)*
                }
            }
        }
    };
}

stream_conditions! {
    BadFormat => "bad-format",
    BadNamespacePrefix => "bad-namespace-prefix",
    Conflict => "conflict",
    ConnectionTimeout => "connection-timeout",
    HostGone => "host-gone",
    HostUnknown => "host-unknown",
    ImproperAddressing => "improper-addressing",
    InternalServerError => "internal-server-error",
    InvalidFrom => "invalid-from",
    InvalidNamespace => "invalid-namespace",
    InvalidXml => "invalid-xml",
    NotAuthorized => "not-authorized",
    NotWellFormed => "not-well-formed",
    PolicyViolation => "policy-violation",
    RemoteConnectionFailed => "remote-connection-failed",
    Reset => "reset",
    ResourceConstraint => "resource-constraint",
    RestrictedXml => "restricted-xml",
    SeeOtherHost => "see-other-host",
    SystemShutdown => "system-shutdown",
    UndefinedCondition => "undefined-condition",
    UnsupportedEncoding => "unsupported-encoding",
    UnsupportedFeature => "unsupported-feature",
    UnsupportedStanzaType => "unsupported-stanza-type",
    UnsupportedVersion => "unsupported-version",
}

impl StreamCondition {
    /// The condition named `name`, if RFC 6120 defines one.
    pub fn from_name(name: &str) -> Option<StreamCondition> {
        Self::ALL.iter().copied().find(|c| c.name() == name)
    }
}

/// A serialised stream error followed by the stream's end.
pub fn stream_error(condition: StreamCondition, text: Option<&str>) -> String {
    let condition = condition.name();
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
pub fn stream_error_with_content(condition: StreamCondition, content: &str) -> String {
    let condition = condition.name();
    format!(
        "<stream:error><{condition} xmlns='{NS_STREAM_ERRORS}'>{}</{condition}></stream:error></stream:stream>",
        crate::xml::escape(content)
    )
}

/// A stream error with an application-specific condition element after
/// the defined one (RFC 6120 §4.9.4), given serialised.
pub fn stream_error_with_app(condition: StreamCondition, app: &str) -> String {
    let condition = condition.name();
    format!(
        "<stream:error><{condition} xmlns='{NS_STREAM_ERRORS}'/>{app}</stream:error></stream:stream>"
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

/// The type of a message (RFC 6121 §5.2.2); absent or unknown is normal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    Chat,
    Error,
    Groupchat,
    Headline,
    Normal,
}

impl MessageType {
    pub fn of(el: &Element) -> MessageType {
        match el.get_attr("type") {
            Some("chat") => MessageType::Chat,
            Some("groupchat") => MessageType::Groupchat,
            Some("headline") => MessageType::Headline,
            Some("error") => MessageType::Error,
            _ => MessageType::Normal,
        }
    }
}

/// The type of a presence (RFC 6121 §4.7.1); absent means available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceType {
    Available,
    Unavailable,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Probe,
    Error,
}

impl PresenceType {
    /// `None` for a type RFC 6121 does not define (answered with
    /// `<bad-request/>`).
    pub fn of(el: &Element) -> Option<PresenceType> {
        Some(match el.get_attr("type") {
            None => PresenceType::Available,
            Some("unavailable") => PresenceType::Unavailable,
            Some("subscribe") => PresenceType::Subscribe,
            Some("subscribed") => PresenceType::Subscribed,
            Some("unsubscribe") => PresenceType::Unsubscribe,
            Some("unsubscribed") => PresenceType::Unsubscribed,
            Some("probe") => PresenceType::Probe,
            Some("error") => PresenceType::Error,
            Some(_) => return None,
        })
    }

    /// The `type` attribute's value (`None` for available).
    pub fn attr(self) -> Option<&'static str> {
        match self {
            PresenceType::Available => None,
            PresenceType::Unavailable => Some("unavailable"),
            PresenceType::Subscribe => Some("subscribe"),
            PresenceType::Subscribed => Some("subscribed"),
            PresenceType::Unsubscribe => Some("unsubscribe"),
            PresenceType::Unsubscribed => Some("unsubscribed"),
            PresenceType::Probe => Some("probe"),
            PresenceType::Error => Some("error"),
        }
    }
}

/// The type of an IQ (RFC 6120 §8.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IqType {
    Get,
    Set,
    Result,
    Error,
}

impl IqType {
    pub fn of(el: &Element) -> Option<IqType> {
        Some(match el.get_attr("type")? {
            "get" => IqType::Get,
            "set" => IqType::Set,
            "result" => IqType::Result,
            "error" => IqType::Error,
            _ => return None,
        })
    }

    /// A request, which must be answered (get or set).
    pub fn is_request(self) -> bool {
        matches!(self, IqType::Get | IqType::Set)
    }
}

/// A `<message/>` of the client namespace, with its type.
#[derive(Debug)]
pub struct Message {
    pub kind: MessageType,
    pub el: Element,
}

/// A `<presence/>` of the client namespace, with its type (`None`: a type
/// RFC 6121 does not define).
#[derive(Debug)]
pub struct Presence {
    pub kind: Option<PresenceType>,
    pub el: Element,
}

/// An `<iq/>` of the client namespace, with its type (`None`: missing or
/// not one of the four, a `<bad-request/>`).
#[derive(Debug)]
pub struct Iq {
    pub kind: Option<IqType>,
    pub el: Element,
}

/// One of the three stanzas; anything else in a client stream is
/// `<unsupported-stanza-type/>` (RFC 6120 §4.9.3.22).
#[derive(Debug)]
pub enum Stanza {
    Message(Message),
    Presence(Presence),
    Iq(Iq),
}

impl Stanza {
    /// The element, whichever kind it is.
    pub fn el_mut(&mut self) -> &mut Element {
        match self {
            Stanza::Message(m) => &mut m.el,
            Stanza::Presence(p) => &mut p.el,
            Stanza::Iq(i) => &mut i.el,
        }
    }
}

fn is_client(el: &Element, name: &str) -> bool {
    el.name == name && el.ns == NS_CLIENT
}

/// Each conversion hands the element back when it is not of that kind, so
/// the next kind can be tried without a copy.
macro_rules! stanza_from_element {
    ($ty:ident, $name:literal, $kind:expr) => {
        impl TryFrom<Element> for $ty {
            type Error = Element;
            fn try_from(el: Element) -> Result<Self, Element> {
                if !is_client(&el, $name) {
                    return Err(el);
                }
                Ok($ty {
                    kind: $kind(&el),
                    el,
                })
            }
        }
    };
}

stanza_from_element!(Message, "message", MessageType::of);
stanza_from_element!(Presence, "presence", PresenceType::of);
stanza_from_element!(Iq, "iq", IqType::of);

impl TryFrom<Element> for Stanza {
    type Error = Element;
    fn try_from(el: Element) -> Result<Self, Element> {
        let el = match Message::try_from(el) {
            Ok(m) => return Ok(Stanza::Message(m)),
            Err(el) => el,
        };
        let el = match Presence::try_from(el) {
            Ok(p) => return Ok(Stanza::Presence(p)),
            Err(el) => el,
        };
        Iq::try_from(el).map(Stanza::Iq)
    }
}

#[cfg(test)]
mod tests {
    fn parse(xml: &str) -> Element {
        parse_serialised(xml).expect("test XML parses")
    }

    #[test]
    fn stanzas_from_rfc_examples() {
        // RFC 6121 §5.2.2 example, §4.2.1, §3.1.1; RFC 6120 §8.2.3.
        let m = parse(
            "<message to='juliet@example.com' type='chat'><body>Art thou not Romeo?</body></message>",
        );
        assert!(matches!(
            Stanza::try_from(m),
            Ok(Stanza::Message(Message {
                kind: MessageType::Chat,
                ..
            }))
        ));
        let m = parse("<message to='juliet@example.com' type='bogus'><body>x</body></message>");
        assert!(matches!(
            Stanza::try_from(m),
            Ok(Stanza::Message(Message {
                kind: MessageType::Normal,
                ..
            }))
        ));
        let p = parse("<presence/>");
        assert!(matches!(
            Stanza::try_from(p),
            Ok(Stanza::Presence(Presence {
                kind: Some(PresenceType::Available),
                ..
            }))
        ));
        let p = parse("<presence id='xk3h1v69' to='juliet@example.com' type='subscribe'/>");
        let Ok(Stanza::Presence(p)) = Stanza::try_from(p) else {
            panic!()
        };
        assert_eq!(p.kind, Some(PresenceType::Subscribe));
        assert_eq!(
            PresenceType::of(&parse("<presence type='invisible'/>")),
            None
        );
        let iq = parse("<iq id='rr82a1z7' type='get'><query xmlns='jabber:iq:roster'/></iq>");
        let Ok(Stanza::Iq(iq)) = Stanza::try_from(iq) else {
            panic!()
        };
        assert_eq!(iq.kind, Some(IqType::Get));
        assert!(iq.kind.unwrap().is_request());
        assert_eq!(IqType::of(&parse("<iq id='a'/>")), None);
    }

    #[test]
    fn a_mismatch_hands_the_element_back() {
        let el = Element::new("foo", "urn:example");
        let back = Stanza::try_from(el).unwrap_err();
        assert_eq!(back.name, "foo");
        // Right name, wrong namespace.
        let el = Element::new("message", "jabber:server");
        assert!(Message::try_from(el).is_err());
    }

    #[test]
    fn stream_conditions_round_trip_by_name() {
        for &c in super::StreamCondition::ALL {
            assert_eq!(super::StreamCondition::from_name(c.name()), Some(c));
        }
        assert_eq!(super::StreamCondition::from_name("no-such-condition"), None);
    }

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
