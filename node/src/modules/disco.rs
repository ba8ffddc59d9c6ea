//! XEP-0030 Service Discovery. Knows no module by name: the server's
//! features are what the registered modules declare.

use super::{IqCtx, IqResult, IqTarget, MODULES, Module};
use crate::stanza::Condition;
use crate::xml::Element;
use futures::FutureExt;

pub const NS_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_ITEMS: &str = "http://jabber.org/protocol/disco#items";

pub static MODULE: Module = Module {
    name: "disco",
    spec: "XEP-0030",
    features: &[NS_INFO, NS_ITEMS],
    namespaces: &[NS_INFO, NS_ITEMS],
    handle: Some(handle),
};

fn handle<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        if ctx.set {
            return Err(Condition::NotAllowed.into());
        }
        if ctx.payload.name != "query" {
            return Err(Condition::BadRequest.into());
        }
        let node = ctx.payload.get_attr("node");
        if node.is_some() {
            return Err(Condition::ItemNotFound.into());
        }
        let ns = ctx.payload.ns.as_str();
        let mut q = Element::new("query", ns);
        if ns == NS_ITEMS {
            return Ok(Some(q));
        }
        match ctx.target {
            IqTarget::Server(_) => {
                q = q.child(
                    Element::new("identity", NS_INFO)
                        .attr("category", "server")
                        .attr("type", "im")
                        .attr("name", "Starling"),
                );
                let mut features: Vec<&str> =
                    MODULES.iter().flat_map(|m| m.features).copied().collect();
                features.sort_unstable();
                features.dedup();
                for f in features {
                    q = q.child(Element::new("feature", NS_INFO).attr("var", f));
                }
            }
            IqTarget::Own | IqTarget::Account(_) => {
                q = q
                    .child(
                        Element::new("identity", NS_INFO)
                            .attr("category", "account")
                            .attr("type", "registered"),
                    )
                    .child(Element::new("feature", NS_INFO).attr("var", NS_INFO));
            }
        }
        Ok(Some(q))
    }
    .boxed()
}
