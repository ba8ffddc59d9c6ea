//! XEP-0092 Software Version of the server.

use super::{IqCtx, IqHandler, IqResult, IqTarget, Module};
use crate::stanza::Condition;
use crate::xml::Element;
use futures::FutureExt;

pub const NS_VERSION: &str = "jabber:iq:version";

pub static MODULE: Module = Module {
    name: "version",
    spec: "XEP-0092",
    features: &[NS_VERSION],
    iq: &[IqHandler {
        ns: NS_VERSION,
        name: "query",
        get: Some(handle),
        set: None,
        no_account: false,
    }],
    ..Module::EMPTY
};

fn handle<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        if !matches!(ctx.target, IqTarget::Server(_)) {
            return Err(Condition::ServiceUnavailable.into());
        }
        Ok(Element::new("query", NS_VERSION)
            .child(Element::new("name", NS_VERSION).text("Starling"))
            .child(Element::new("version", NS_VERSION).text(env!("CARGO_PKG_VERSION")))
            .child(Element::new("os", NS_VERSION).text(std::env::consts::OS))
            .into())
    }
    .boxed()
}
