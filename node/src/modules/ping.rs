//! XEP-0199 XMPP Ping: the server answers pings addressed to it.

use super::{IqCtx, IqHandler, IqReply, IqResult, IqTarget, Module};
use crate::stanza::Condition;
use futures::FutureExt;

pub const NS_PING: &str = "urn:xmpp:ping";

pub static MODULE: Module = Module {
    name: "ping",
    spec: "XEP-0199",
    features: &[NS_PING],
    iq: &[IqHandler {
        ns: NS_PING,
        name: "ping",
        get: Some(handle),
        set: None,
        no_account: false,
    }],
    ..Module::EMPTY
};

fn handle<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        match ctx.target {
            IqTarget::Server(_) | IqTarget::Own => Ok(IqReply::EMPTY),
            IqTarget::Account(_) | IqTarget::NoAccount(_) => {
                Err(Condition::ServiceUnavailable.into())
            }
        }
    }
    .boxed()
}
