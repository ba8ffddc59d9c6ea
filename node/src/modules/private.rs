//! XEP-0049 Private XML Storage: per account, keyed by the stored
//! element's name and namespace; only the owner can read or write.

use super::{IqCtx, IqHandler, IqReply, IqResult, Module, own_only};
use crate::stanza::{Condition, NS_CLIENT};
use crate::storage::{PRIVATE, user_key};
use crate::xml::{Element, Limits};
use futures::FutureExt;

pub const NS_PRIVATE: &str = "jabber:iq:private";

pub static MODULE: Module = Module {
    name: "private",
    spec: "XEP-0049",
    features: &[NS_PRIVATE],
    iq: &[IqHandler {
        ns: NS_PRIVATE,
        name: "query",
        get: Some(handle),
        set: Some(handle),
        no_account: false,
    }],
    spaces: &[PRIVATE],
    ..Module::EMPTY
};

fn key(bare: &str, el: &Element) -> Vec<u8> {
    user_key(bare, &format!("{}\u{0}{}", el.ns, el.name))
}

fn handle<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        own_only(ctx)?;
        let children: Vec<&Element> = ctx.payload.elements().collect();
        if children.is_empty() || (!ctx.set && children.len() != 1) {
            return Err(Condition::BadRequest.into());
        }
        for c in &children {
            // XEP-0049 §3: reserved namespaces cannot be stored.
            if c.ns == NS_CLIENT || c.ns == NS_PRIVATE || c.ns.starts_with("jabber:iq:") {
                return Err(Condition::NotAcceptable.into());
            }
        }
        let bare = ctx.origin.bare;
        if ctx.set {
            let ops = children
                .iter()
                .map(|c| starling_cluster::Op::Put {
                    space: PRIVATE.into(),
                    key: key(bare, c),
                    value: c.to_stream_xml(NS_PRIVATE).into_bytes(),
                })
                .collect();
            ctx.server.storage.write(ops).await?;
            return Ok(IqReply::EMPTY);
        }
        let wanted = children[0];
        let scope = [(String::new(), NS_PRIVATE.to_owned())];
        let limits = Limits {
            max_stanza_bytes: usize::MAX,
            ..Default::default()
        };
        let stored = ctx
            .server
            .storage
            .doc(PRIVATE, &key(bare, wanted))?
            .and_then(|x| crate::xml::parse_element(x.as_bytes(), &scope, &limits).ok())
            .unwrap_or_else(|| Element::new(wanted.name.clone(), wanted.ns.clone()));
        Ok(Element::new("query", NS_PRIVATE).child(stored).into())
    }
    .boxed()
}
