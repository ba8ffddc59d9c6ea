//! The legacy session establishment IQ (RFC 3921 §3, kept optional by
//! RFC 6121 and draft-cridland-xmpp-session): advertised as optional,
//! accepted and answered, a no-op.

use super::{IqCtx, IqHandler, IqReply, IqResult, Module, Stage, StreamFeature};
use crate::stanza::NS_SESSION;
use futures::FutureExt;

pub static MODULE: Module = Module {
    name: "session",
    spec: "RFC 3921 §3 (legacy), draft-cridland-xmpp-session",
    stream_features: &[StreamFeature {
        stage: Stage::PostAuth,
        xml: "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>",
        when: None,
    }],
    iq: &[IqHandler {
        ns: NS_SESSION,
        name: "session",
        get: None,
        set: Some(handle),
        no_account: false,
    }],
    ..Module::EMPTY
};

fn handle<'a>(_ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async { Ok(IqReply::EMPTY) }.boxed()
}
