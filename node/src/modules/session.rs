//! The legacy session establishment IQ (RFC 3921 §3, kept optional by
//! RFC 6121 and draft-cridland-xmpp-session): accepted and answered, a no-op.

use super::{IqCtx, IqResult, Module};
use futures::FutureExt;

pub static MODULE: Module = Module {
    name: "session",
    spec: "RFC 3921 §3 (legacy)",
    features: &[],
    namespaces: &[crate::stanza::NS_SESSION],
    handle: Some(handle),
};

fn handle<'a>(_ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async { Ok(None) }.boxed()
}
