//! XEP-0054 vcard-temp: each account's vCard, readable by anyone, written
//! only by its owner.

use super::{IqCtx, IqHandler, IqReply, IqResult, IqTarget, Module};
use crate::stanza::{Condition, NS_CLIENT};
use crate::storage::VCARD;
use crate::xml::{Element, Limits};
use futures::FutureExt;

pub const NS_VCARD: &str = "vcard-temp";

pub static MODULE: Module = Module {
    name: "vcard",
    spec: "XEP-0054",
    features: &[NS_VCARD],
    iq: &[IqHandler {
        ns: NS_VCARD,
        name: "vCard",
        get: Some(handle),
        set: Some(handle),
        no_account: false,
    }],
    spaces: &[VCARD],
    ..Module::EMPTY
};

fn handle<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        let bare = match ctx.target {
            IqTarget::Own => ctx.origin.bare,
            IqTarget::Account(b) if !ctx.set => b,
            IqTarget::Account(_) => return Err(Condition::Forbidden.into()),
            IqTarget::Server(_) | IqTarget::NoAccount(_) => {
                return Err(Condition::ServiceUnavailable.into());
            }
        };
        if ctx.set {
            let xml = ctx.payload.to_stream_xml(NS_CLIENT);
            ctx.server
                .storage
                .put_doc(VCARD, bare.as_bytes().to_vec(), xml)
                .await?;
            // XEP-0398: the PHOTO becomes the PEP avatar.
            super::pep::avatar::vcard_set(ctx.server, bare, ctx.payload).await;
            return Ok(IqReply::EMPTY);
        }
        let stored = ctx.server.storage.doc(VCARD, bare.as_bytes())?;
        let scope = [(String::new(), NS_CLIENT.to_owned())];
        let limits = Limits {
            max_stanza_bytes: usize::MAX,
            ..Default::default()
        };
        match stored.and_then(|x| crate::xml::parse_element(x.as_bytes(), &scope, &limits).ok()) {
            Some(v) => Ok(v.into()),
            // §3.1: one's own missing vCard is an empty one.
            None if ctx.target == IqTarget::Own => Ok(Element::new("vCard", NS_VCARD).into()),
            // §3.3: someone else's is the same error as for no such user,
            // so accounts cannot be discovered this way.
            None => Err(Condition::ServiceUnavailable.into()),
        }
    }
    .boxed()
}
