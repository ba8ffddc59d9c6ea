//! Server-side features, one file per RFC section or XEP. Each module
//! declares what it implements and which IQ namespaces it answers as
//! data ([`Module`]); [`MODULES`] registers them, disco only collects what
//! they declare, and [`handle_iq`] dispatches on the payload namespace.
//! Modules see the [`Server`] and the requesting session; they never touch
//! sockets.

pub mod disco;
pub mod last;
pub mod ping;
pub mod private;
pub mod register;
pub mod roster;
pub mod session;
pub mod time;
pub mod vcard;
pub mod version;

use crate::server::Server;
use crate::session::im::Origin;
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

/// Everything a handler gets.
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

/// A result payload (or none), or a stanza error.
pub type IqResult = Result<Option<Element>, StanzaError>;

pub type Handler = for<'a> fn(&'a IqCtx<'a>) -> BoxFuture<'a, IqResult>;

/// A module's declaration.
pub struct Module {
    pub name: &'static str,
    /// The specification it implements, for the compliance list.
    pub spec: &'static str,
    /// Features it adds to the server's disco#info.
    pub features: &'static [&'static str],
    /// IQ payload namespaces it answers.
    pub namespaces: &'static [&'static str],
    pub handle: Option<Handler>,
}

/// Every module of the server. Adding a XEP is adding a file and a line.
pub static MODULES: &[&Module] = &[
    &roster::MODULE,
    &disco::MODULE,
    &ping::MODULE,
    &version::MODULE,
    &time::MODULE,
    &last::MODULE,
    &vcard::MODULE,
    &private::MODULE,
    &register::MODULE,
    &session::MODULE,
    &OFFLINE,
];

/// Offline storage lives in the message path; it only declares itself.
static OFFLINE: Module = Module {
    name: "offline",
    spec: "RFC 6121 §8.5.2.1.1, XEP-0160, XEP-0203",
    features: &["msgoffline", "urn:xmpp:delay"],
    namespaces: &[],
    handle: None,
};

/// Answers an IQ get/set addressed to the server or to an account.
pub async fn handle_iq(ctx: &IqCtx<'_>) -> IqResult {
    let ns = ctx.payload.ns.as_str();
    if matches!(ctx.target, IqTarget::NoAccount(_)) && !disco::MODULE.namespaces.contains(&ns) {
        // RFC 6121 §8.5.1: no such user.
        return Err(Condition::ServiceUnavailable.into());
    }
    for m in MODULES {
        if m.namespaces.contains(&ns)
            && let Some(h) = m.handle
        {
            return h(ctx).await;
        }
    }
    Err(Condition::ServiceUnavailable.into())
}

/// Requires the IQ to address the requester's own account.
pub fn own_only(ctx: &IqCtx<'_>) -> Result<(), StanzaError> {
    match ctx.target {
        IqTarget::Own => Ok(()),
        _ => Err(Condition::Forbidden.into()),
    }
}
