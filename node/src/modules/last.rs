//! XEP-0012 Last Activity: the server's uptime, and for an account the
//! time since its last resource went offline — only to requesters the
//! account shares presence with (its presence subscribers).

use super::{IqCtx, IqHandler, IqResult, IqTarget, Module};
use crate::stanza::Condition;
use crate::xml::Element;
use futures::FutureExt;

pub const NS_LAST: &str = "jabber:iq:last";

pub static MODULE: Module = Module {
    name: "last",
    spec: "XEP-0012",
    features: &[NS_LAST],
    iq: &[IqHandler {
        ns: NS_LAST,
        name: "query",
        get: Some(handle),
        set: None,
        no_account: false,
    }],
    spaces: &[crate::storage::LAST],
    ..Module::EMPTY
};

fn handle<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        let bare = match ctx.target {
            IqTarget::Server(_) => {
                let secs = ctx.server.started.elapsed().as_secs();
                return Ok(Element::new("query", NS_LAST)
                    .attr("seconds", secs.to_string())
                    .into());
            }
            IqTarget::Own => ctx.origin.bare,
            IqTarget::NoAccount(_) => return Err(Condition::ServiceUnavailable.into()),
            IqTarget::Account(b) => {
                let allowed = ctx
                    .server
                    .storage
                    .roster_item(b, ctx.origin.bare)?
                    .is_some_and(|i| i.subscription.from());
                if !allowed {
                    return Err(Condition::Forbidden.into());
                }
                b
            }
        };
        let online = ctx
            .server
            .router
            .with_resources(bare, |rs| rs.iter().any(|r| r.available));
        if online {
            return Ok(Element::new("query", NS_LAST).attr("seconds", "0").into());
        }
        let Some(last) = ctx.server.storage.last_activity(bare)? else {
            return Err(Condition::ServiceUnavailable.into());
        };
        let secs = (chrono::Utc::now().timestamp() - last.time).max(0);
        let mut q = Element::new("query", NS_LAST).attr("seconds", secs.to_string());
        if !last.status.is_empty() {
            q = q.text(last.status);
        }
        Ok(q.into())
    }
    .boxed()
}
