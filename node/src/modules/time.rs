//! XEP-0202 Entity Time of the server.

use super::{IqCtx, IqResult, IqTarget, Module};
use crate::stanza::Condition;
use crate::xml::Element;
use futures::FutureExt;

pub const NS_TIME: &str = "urn:xmpp:time";

pub static MODULE: Module = Module {
    name: "time",
    spec: "XEP-0202",
    features: &[NS_TIME],
    namespaces: &[NS_TIME],
    handle: Some(handle),
};

fn handle<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        if !matches!(ctx.target, IqTarget::Server(_)) {
            return Err(Condition::ServiceUnavailable.into());
        }
        if ctx.set || ctx.payload.name != "time" {
            return Err(Condition::BadRequest.into());
        }
        Ok(Some(
            Element::new("time", NS_TIME)
                .child(Element::new("tzo", NS_TIME).text("+00:00"))
                .child(Element::new("utc", NS_TIME).text(crate::stanza::now_stamp())),
        ))
    }
    .boxed()
}
