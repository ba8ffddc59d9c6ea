//! XEP-0054 vcard-temp: each account's vCard, readable by anyone, written
//! only by its owner.

use super::{IqCtx, IqResult, IqTarget, Module};
use crate::stanza::{Condition, NS_CLIENT};
use crate::storage::VCARD;
use crate::xml::{Element, Limits};
use futures::FutureExt;

pub const NS_VCARD: &str = "vcard-temp";

pub static MODULE: Module = Module {
    name: "vcard",
    spec: "XEP-0054",
    features: &[NS_VCARD],
    namespaces: &[NS_VCARD],
    handle: Some(handle),
};

fn handle<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        if ctx.payload.name != "vCard" {
            return Err(Condition::BadRequest.into());
        }
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
            return Ok(None);
        }
        let stored = ctx.server.storage.doc(VCARD, bare.as_bytes())?;
        let scope = [(String::new(), NS_CLIENT.to_owned())];
        let limits = Limits {
            max_stanza_bytes: usize::MAX,
            ..Default::default()
        };
        match stored.and_then(|x| crate::xml::parse_element(x.as_bytes(), &scope, &limits).ok()) {
            Some(v) => Ok(Some(v)),
            // §3.1: one's own missing vCard is an empty one.
            None if ctx.target == IqTarget::Own => Ok(Some(Element::new("vCard", NS_VCARD))),
            // §3.3: someone else's is the same error as for no such user,
            // so accounts cannot be discovered this way.
            None => Err(Condition::ServiceUnavailable.into()),
        }
    }
    .boxed()
}
