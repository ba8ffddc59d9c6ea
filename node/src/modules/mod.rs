//! Server-side features, one file per RFC section or XEP. Each module
//! declares as data ([`Module`]) what it implements: disco features, stream
//! features, the IQ payloads it answers, the message and presence events it
//! hooks, its configuration section and its storage key spaces. [`MODULES`]
//! lists them; a [`Registry`] built once at start precomputes the dispatch
//! tables, so disco, stream negotiation and IQ dispatch know no module by
//! name. Modules see the [`Server`] and the requesting session; they never
//! touch sockets.
//!
//! Adding a XEP is one new file declaring a `static MODULE: Module` and one
//! line in [`MODULES`] (or, in tests, an extra module given to
//! [`Registry::new`]).

pub mod adhoc;
pub mod blocking;
pub mod caps;
pub mod carbons;
pub mod csi;
pub mod disco;
pub mod extdisco;
pub mod fast;
pub mod last;
pub mod mam;
pub mod pep;
pub mod ping;
pub mod presence;
pub mod private;
pub mod push;
pub mod register;
pub mod registry;
pub mod roster;
pub mod sasl2;
pub mod session;
pub mod sm;
pub mod time;
pub mod upload;
pub mod vcard;
pub mod version;

pub use registry::Registry;

use crate::config::Config;
use crate::server::Server;
use crate::session::Origin;
use crate::stanza::{Condition, StanzaError};
use crate::xml::Element;
use futures::future::BoxFuture;

/// Whom an IQ is addressed to, from the requester's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IqTarget<'a> {
    /// A domain served here.
    Server(&'a str),
    /// No `to`, or the requester's own bare JID.
    Own,
    /// Another local account's bare JID (answered on its behalf).
    Account(&'a str),
    /// A bare JID at a local domain with no such account.
    NoAccount(&'a str),
}

/// Everything an IQ handler gets.
pub struct IqCtx<'a> {
    pub server: &'a Server,
    pub origin: &'a Origin<'a>,
    pub target: IqTarget<'a>,
    /// The whole iq, `from` stamped.
    pub iq: &'a Element,
    /// Its single child element.
    pub payload: &'a Element,
    /// `type='set'` (else `get`).
    pub set: bool,
}

/// What a handler did with an IQ it answered without error.
#[derive(Debug)]
pub enum IqReply {
    /// The session answers with a result carrying this payload (or none).
    Result(Option<Element>),
    /// The handler already sent its own reply (e.g. an account removal,
    /// whose result must reach the client before its sessions are closed);
    /// the session sends nothing.
    Sent,
}

impl IqReply {
    /// An empty result.
    pub const EMPTY: IqReply = IqReply::Result(None);
}

impl From<Element> for IqReply {
    fn from(payload: Element) -> Self {
        IqReply::Result(Some(payload))
    }
}

/// A reply, or a stanza error.
pub type IqResult = Result<IqReply, StanzaError>;

/// Answers one IQ payload. Async: most handlers read or write storage.
pub type Handler = for<'a> fn(&'a IqCtx<'a>) -> BoxFuture<'a, IqResult>;

/// An IQ payload a module answers, keyed like Prosody's
/// `iq-get/<ns>:<name>` events: the payload's namespace and element name,
/// with a handler per type. A type with no handler is `<not-allowed/>`.
pub struct IqHandler {
    pub ns: &'static str,
    pub name: &'static str,
    pub get: Option<Handler>,
    pub set: Option<Handler>,
    /// Whether it also answers for a bare JID at a local domain that has
    /// no account; if not, the registry answers `<service-unavailable/>`
    /// for it (RFC 6121 §8.5.1), so no handler can leak whether an
    /// account exists.
    pub no_account: bool,
}

/// When a stream feature is advertised (RFC 6120 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// On the TLS stream before authentication, after the SASL mechanisms.
    PreAuth,
    /// On the authenticated stream, after resource binding.
    PostAuth,
}

/// A stream feature: the element advertised in `<stream:features/>`.
pub struct StreamFeature {
    pub stage: Stage,
    /// The element, exactly as advertised.
    pub xml: &'static str,
    /// Advertised only when this returns true for the configuration;
    /// `None` is always.
    pub when: Option<fn(&Config) -> bool>,
}

/// A feature of every account's disco#info (XEP-0030 on a user's bare
/// JID), such as the archive an account hosts (XEP-0313 §7).
pub struct AccountFeature {
    pub var: &'static str,
    /// Advertised only when this returns true for the configuration;
    /// `None` is always.
    pub when: Option<fn(&Config) -> bool>,
}

/// An identity of every account's disco#info besides
/// `account/registered`, such as `pubsub/pep` (XEP-0163 §6.1).
pub struct AccountIdentity {
    pub category: &'static str,
    pub kind: &'static str,
}

/// What a module shows in disco on an account's bare JID besides features
/// and identities: the account's items (XEP-0030 §4.1, such as PEP nodes,
/// XEP-0060 §5.2) and the info of one of its nodes (XEP-0060 §5.3).
pub struct AccountNodes {
    /// The `<item/>`s `requester` may see.
    pub items: fn(&Server, owner: &str, requester: &str) -> Vec<Element>,
    /// The `<item/>`s of `node`, if the module has such a node that
    /// `requester` may see.
    pub node_items: fn(&Server, owner: &str, requester: &str, node: &str) -> Option<Vec<Element>>,
    /// The identities and features of `node`, if the module has such a
    /// node that `requester` may see.
    pub info: fn(&Server, owner: &str, requester: &str, node: &str) -> Option<Vec<Element>>,
}

/// What a module shows in disco under a node of a served domain (such as
/// XEP-0050's command list and command nodes). The node is addressed at
/// the domain, or, as some clients do, at the requester's own bare JID;
/// `at` is the JID addressed, for the items' `jid`.
pub struct ServerNodes {
    /// The `<item/>`s of `node` for `requester`, if the module has such a
    /// node.
    pub items:
        fn(&Server, domain: &str, at: &str, requester: &str, node: &str) -> Option<Vec<Element>>,
    /// The identities and features of `node` (or the error that answers
    /// `requester`), if the module has such a node.
    pub info: fn(&Server, domain: &str, requester: &str, node: &str) -> Option<NodeInfo>,
}

/// The identities and features of a node, or the error that answers the
/// requester.
pub type NodeInfo = Result<Vec<Element>, StanzaError>;

/// A point in a stanza's path where modules can look at it, change it or
/// take it over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A message a local session sent, before it is routed (carbons of
    /// sent messages, blocking of the recipient, archiving).
    MessageOut,
    /// A message for a local account, after routing and before delivery
    /// to its sessions or offline storage (blocking of the sender,
    /// carbons, archiving, client state indication).
    MessageIn,
    /// A presence a local session sent, before it is routed or broadcast.
    PresenceOut,
    /// A presence for a local account, before delivery to its sessions.
    PresenceIn,
}

impl Event {
    pub const ALL: [Event; 4] = [
        Event::MessageOut,
        Event::MessageIn,
        Event::PresenceOut,
        Event::PresenceIn,
    ];

    /// Position in [`Event::ALL`], for the registry's per-event tables.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// What a hook did with a stanza (Prosody's event handlers return a value
/// to stop the chain, or nothing to let it go on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on: the next hook, then the normal path.
    Pass,
    /// The hook took the stanza over (answered, dropped or queued it): no
    /// further hook runs and the caller does nothing more with it.
    Handled,
}

/// What a hook gets besides the stanza.
pub struct HookCtx<'a> {
    pub server: &'a Server,
    /// The local account the event belongs to: the sender for `*Out`
    /// events, the recipient for `*In` events.
    pub user: &'a str,
    /// That account's session the event concerns, when one does (the
    /// sending session, or the one resource a stanza is delivered to).
    pub full: Option<&'a str>,
}

/// A hook handler. Synchronous on purpose: it runs for every message or
/// presence that passes its event, and a future per hook per stanza would
/// cost an allocation each; a hook that needs to write (archive) starts
/// the write and returns.
pub type HookFn = fn(&HookCtx<'_>, &mut Element) -> Flow;

/// A handler for one event, run in priority order (higher first; equal
/// priorities in registry order).
pub struct Hook {
    pub event: Event,
    pub priority: i32,
    pub handler: HookFn,
}

/// A module's declaration.
pub struct Module {
    pub name: &'static str,
    /// The specification it implements, for the compliance list.
    pub spec: &'static str,
    /// Features it adds to the server's disco#info.
    pub features: &'static [&'static str],
    /// Features it adds to each account's disco#info.
    pub account_features: &'static [AccountFeature],
    /// Identities it adds to each account's disco#info.
    pub account_identities: &'static [AccountIdentity],
    /// Disco items and node info it adds on each account.
    pub account_nodes: Option<&'static AccountNodes>,
    /// Disco nodes it answers on each served domain.
    pub server_nodes: Option<&'static ServerNodes>,
    /// Stream features it advertises, in order.
    pub stream_features: &'static [StreamFeature],
    /// IQ payloads it answers.
    pub iq: &'static [IqHandler],
    /// Message and presence events it hooks.
    pub hooks: &'static [Hook],
    /// The section of the configuration file it reads, if any.
    pub config_section: Option<&'static str>,
    /// The storage key spaces it owns (see `storage`).
    pub spaces: &'static [&'static str],
}

impl Module {
    /// A module that declares nothing yet: the base for `..Module::EMPTY`.
    pub const EMPTY: Module = Module {
        name: "",
        spec: "",
        features: &[],
        account_features: &[],
        account_identities: &[],
        account_nodes: None,
        server_nodes: None,
        stream_features: &[],
        iq: &[],
        hooks: &[],
        config_section: None,
        spaces: &[],
    };
}

/// Every module of the server. Adding a XEP is adding a file and a line.
/// Stream features are advertised in this order.
pub static MODULES: &[&Module] = &[
    &session::MODULE,
    &sm::MODULE,
    &presence::MODULE,
    &roster::MODULE,
    &disco::MODULE,
    &ping::MODULE,
    &version::MODULE,
    &time::MODULE,
    &last::MODULE,
    &vcard::MODULE,
    &private::MODULE,
    &register::MODULE,
    &blocking::MODULE,
    &carbons::MODULE,
    &csi::MODULE,
    &OFFLINE,
    &push::MODULE,
    &sasl2::MODULE,
    &fast::MODULE,
    &mam::MODULE,
    &MUC,
    &upload::MODULE,
    &extdisco::MODULE,
    &caps::MODULE,
    &pep::MODULE,
    &adhoc::MODULE,
];

/// Multi-user chat is a hosted service (`crate::services::muc`), routed to
/// its own domain rather than answered here; it declares itself for the
/// compliance list, its configuration section and its key spaces.
static MUC: Module = Module {
    name: "muc",
    spec: "XEP-0045, XEP-0421, XEP-0410, XEP-0249 (passed through), XEP-0313 on rooms",
    config_section: Some("muc"),
    spaces: &[crate::storage::MUC_ROOMS, crate::storage::MUC_OCCUPANTS],
    ..Module::EMPTY
};

/// Offline storage lives in the message path; it only declares itself.
static OFFLINE: Module = Module {
    name: "offline",
    spec: "RFC 6121 §8.5.2.1.1, XEP-0160, XEP-0203",
    features: &["msgoffline", "urn:xmpp:delay"],
    config_section: Some("offline"),
    spaces: &[crate::storage::OFFLINE],
    ..Module::EMPTY
};

/// The compliance list: each built-in module and the specification it
/// implements (as ejabberd's `-protocol` attributes make its DOAP file).
pub fn compliance() -> Vec<(&'static str, &'static str)> {
    MODULES.iter().map(|m| (m.name, m.spec)).collect()
}

/// Answers an IQ get/set addressed to the server or to an account.
pub async fn handle_iq(ctx: &IqCtx<'_>) -> IqResult {
    match ctx.server.modules.iq_handler(ctx) {
        Ok(h) => h(ctx).await,
        Err(e) => Err(e),
    }
}

/// Requires the IQ to address the requester's own account.
pub fn own_only(ctx: &IqCtx<'_>) -> Result<(), StanzaError> {
    match ctx.target {
        IqTarget::Own => Ok(()),
        _ => Err(Condition::Forbidden.into()),
    }
}
