//! XEP-0049 Private XML Storage: per account, keyed by the stored
//! element's name and namespace; only the owner can read or write.

use super::pep::bookmarks;
use super::{IqCtx, IqHandler, IqReply, IqResult, Module, own_only};
use crate::stanza::{Condition, NS_CLIENT};
use crate::storage::PRIVATE;
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

/// What a fragment is stored under: its namespace and element name.
fn name_ns(el: &Element) -> String {
    format!("{}\u{0}{}", el.ns, el.name)
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
            // XEP-0048 §3 via XEP-0223: bookmarks live in PEP, where
            // clients that use PEP find the same list.
            for c in children.iter().filter(|c| bookmarks::bridged(c)) {
                bookmarks::store(ctx.server, bare, c).await?;
            }
            let fragments = children
                .iter()
                .filter(|c| !bookmarks::bridged(c))
                .map(|c| (name_ns(c), c.to_stream_xml(NS_PRIVATE)))
                .collect();
            ctx.server.storage.put_private(bare, fragments).await?;
            return Ok(IqReply::EMPTY);
        }
        let wanted = children[0];
        if bookmarks::bridged(wanted)
            && let Some(stored) = bookmarks::load(ctx.server, bare)?
        {
            return Ok(Element::new("query", NS_PRIVATE).child(stored).into());
        }
        let scope = [(String::new(), NS_PRIVATE.to_owned())];
        let limits = Limits {
            max_stanza_bytes: usize::MAX,
            ..Default::default()
        };
        let stored = ctx
            .server
            .storage
            .private(bare, &name_ns(wanted))?
            .and_then(|x| crate::xml::parse_element(x.as_bytes(), &scope, &limits).ok())
            .unwrap_or_else(|| Element::new(wanted.name.clone(), wanted.ns.clone()));
        Ok(Element::new("query", NS_PRIVATE).child(stored).into())
    }
    .boxed()
}
