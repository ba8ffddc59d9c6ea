//! XEP-0030 Service Discovery. Knows no module by name: the server's
//! features are what the registered modules declare.

use super::{IqCtx, IqHandler, IqResult, IqTarget, Module};
use crate::stanza::Condition;
use crate::xml::Element;
use futures::FutureExt;

pub const NS_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_ITEMS: &str = "http://jabber.org/protocol/disco#items";

pub static MODULE: Module = Module {
    name: "disco",
    spec: "XEP-0030",
    features: &[NS_INFO, NS_ITEMS],
    // Disco answers for missing accounts itself (XEP-0030 §8): items are
    // empty, info is service-unavailable.
    iq: &[
        IqHandler {
            ns: NS_INFO,
            name: "query",
            get: Some(handle),
            set: None,
            no_account: true,
        },
        IqHandler {
            ns: NS_ITEMS,
            name: "query",
            get: Some(handle),
            set: None,
            no_account: true,
        },
    ],
    ..Module::EMPTY
};

fn handle<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        let ns = ctx.payload.ns.as_str();
        let node = ctx.payload.get_attr("node");
        let mut q = Element::new("query", ns);
        if let Some(n) = node {
            q.set_attr("node", n);
        }
        if ns == NS_ITEMS {
            // A domain lists its services (XEP-0363 upload); an account has
            // no items (XEP-0030 §8, also one that does not exist or does
            // not share its presence with the requester).
            if let (IqTarget::Server(domain), None) = (ctx.target, node)
                && let Some(item) = super::upload::disco_items(ctx.server, domain)
            {
                q = q.child(item);
            }
            return Ok(q.into());
        }
        // XEP-0030 §8: info about an account needs its presence (or is
        // the requester's own); an unknown account is service-unavailable.
        match ctx.target {
            IqTarget::NoAccount(_) => return Err(Condition::ServiceUnavailable.into()),
            IqTarget::Account(b) => {
                let shares = ctx
                    .server
                    .storage
                    .roster_item(b, ctx.origin.bare)?
                    .is_some_and(|i| i.subscription.from());
                if !shares {
                    return Err(Condition::ServiceUnavailable.into());
                }
            }
            _ => {}
        }
        if node.is_some() {
            return Err(Condition::ItemNotFound.into());
        }
        match ctx.target {
            IqTarget::Server(_) => {
                q = q.child(
                    Element::new("identity", NS_INFO)
                        .attr("category", "server")
                        .attr("type", "im")
                        .attr("name", "Starling"),
                );
                for &f in ctx.server.modules.disco_features() {
                    q = q.child(Element::new("feature", NS_INFO).attr("var", f));
                }
            }
            IqTarget::Own | IqTarget::Account(_) | IqTarget::NoAccount(_) => {
                q = q
                    .child(
                        Element::new("identity", NS_INFO)
                            .attr("category", "account")
                            .attr("type", "registered"),
                    )
                    .child(Element::new("feature", NS_INFO).attr("var", NS_INFO));
                for f in ctx.server.modules.account_features(&ctx.server.config) {
                    q = q.child(Element::new("feature", NS_INFO).attr("var", f));
                }
            }
        }
        Ok(q.into())
    }
    .boxed()
}
