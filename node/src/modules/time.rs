//! XEP-0202 Entity Time of the server.

use super::{IqCtx, IqHandler, IqResult, IqTarget, Module};
use crate::stanza::Condition;
use crate::xml::Element;
use futures::FutureExt;

pub const NS_TIME: &str = "urn:xmpp:time";

pub static MODULE: Module = Module {
    name: "time",
    spec: "XEP-0202",
    features: &[NS_TIME],
    iq: &[IqHandler {
        ns: NS_TIME,
        name: "time",
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
        Ok(Element::new("time", NS_TIME)
            .child(Element::new("tzo", NS_TIME).text("+00:00"))
            .child(Element::new("utc", NS_TIME).text(crate::stanza::now_stamp()))
            .into())
    }
    .boxed()
}
