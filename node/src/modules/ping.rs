//! XEP-0199 XMPP Ping: the server answers pings addressed to it.

use super::{IqCtx, IqResult, IqTarget, Module};
use crate::stanza::Condition;
use futures::FutureExt;

pub const NS_PING: &str = "urn:xmpp:ping";

pub static MODULE: Module = Module {
    name: "ping",
    spec: "XEP-0199",
    features: &[NS_PING],
    namespaces: &[NS_PING],
    handle: Some(handle),
};

fn handle<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        if ctx.set || ctx.payload.name != "ping" {
            return Err(Condition::BadRequest.into());
        }
        match ctx.target {
            IqTarget::Server(_) | IqTarget::Own => Ok(None),
            IqTarget::Account(_) | IqTarget::NoAccount(_) => {
                Err(Condition::ServiceUnavailable.into())
            }
        }
    }
    .boxed()
}
