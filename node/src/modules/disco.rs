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
        // A node of the domain (XEP-0050 commands), also asked at the
        // requester's own bare JID: its module answers.
        let domain_node = match (ctx.target, node) {
            (IqTarget::Server(d), Some(n)) => Some((d, d, n)),
            (IqTarget::Own, Some(n)) => ctx
                .origin
                .bare
                .rsplit_once('@')
                .map(|(_, d)| (d, ctx.origin.bare, n)),
            _ => None,
        };
        if ns == NS_ITEMS {
            if let Some((domain, at, n)) = domain_node {
                for m in ctx.server.modules.server_nodes() {
                    if let Some(items) = (m.items)(ctx.server, domain, at, ctx.origin.bare, n) {
                        for item in items {
                            q = q.child(item);
                        }
                        return Ok(q.into());
                    }
                }
            }
            // XEP-0030 §7: a node of the domain that no module has is
            // item-not-found (the caps node names the server: no items).
            if let (IqTarget::Server(_), Some(n)) = (ctx.target, node) {
                if !server_caps_node(ctx, n) {
                    return Err(Condition::ItemNotFound.into());
                }
                return Ok(q.into());
            }
            // A domain lists its services (XEP-0045 rooms at conference.,
            // XEP-0363 upload); an account's items are what modules show
            // the requester (PEP nodes it may see); XEP-0030 §8: none for
            // an account that does not exist, nor anywhere else.
            if let (IqTarget::Server(domain), None) = (ctx.target, node) {
                for (jid, h) in ctx.server.services.of_parent(domain) {
                    let mut item = Element::new("item", NS_ITEMS).attr("jid", jid);
                    // A component names itself (its own disco#info).
                    if !h.name.is_empty() {
                        item.set_attr("name", h.name.as_str());
                    }
                    q = q.child(item);
                }
            }
            let owner = match ctx.target {
                IqTarget::Own => Some(ctx.origin.bare),
                IqTarget::Account(b) => Some(b),
                _ => None,
            };
            // XEP-0060 §5.5: the items of an account's node it may see.
            if let (Some(owner), Some(n)) = (owner, node) {
                for m in ctx.server.modules.account_nodes() {
                    if let Some(list) = (m.node_items)(ctx.server, owner, ctx.origin.bare, n) {
                        let (list, set) = crate::rsm::page_items(ctx.payload, list, "name")?;
                        for item in list {
                            q = q.child(item);
                        }
                        if let Some(set) = set {
                            q = q.child(set);
                        }
                        return Ok(q.into());
                    }
                }
                // XEP-0060 §5.5 / XEP-0030 §7: a node no module has (or
                // that the requester may not see) is item-not-found, for
                // the owner and those it shares presence with; XEP-0030
                // §8: anyone else gets the empty result.
                let sees = match ctx.target {
                    IqTarget::Account(b) => ctx
                        .server
                        .storage
                        .roster_item(b, ctx.origin.bare)?
                        .is_some_and(|i| i.subscription.from()),
                    _ => true,
                };
                if sees {
                    return Err(Condition::ItemNotFound.into());
                }
            }
            if let (Some(owner), None) = (owner, node) {
                let mut list = Vec::new();
                for m in ctx.server.modules.account_nodes() {
                    list.extend((m.items)(ctx.server, owner, ctx.origin.bare));
                }
                // XEP-0059: the nodes paged when the requester asks.
                let (list, set) = crate::rsm::page_items(ctx.payload, list, "node")?;
                for item in list {
                    q = q.child(item);
                }
                if let Some(set) = set {
                    q = q.child(set);
                }
            }
            return Ok(q.into());
        }
        // A node of an account (a PEP node): its module says whether the
        // requester may see it (XEP-0060 access models), presence or not.
        let owner = match ctx.target {
            IqTarget::Own => Some(ctx.origin.bare),
            IqTarget::Account(b) => Some(b),
            _ => None,
        };
        if let (Some(owner), Some(n)) = (owner, node) {
            for m in ctx.server.modules.account_nodes() {
                if let Some(info) = (m.info)(ctx.server, owner, ctx.origin.bare, n) {
                    for el in info {
                        q = q.child(el);
                    }
                    return Ok(q.into());
                }
            }
        }
        if let Some((domain, _, n)) = domain_node {
            for m in ctx.server.modules.server_nodes() {
                if let Some(info) = (m.info)(ctx.server, domain, ctx.origin.bare, n) {
                    for el in info? {
                        q = q.child(el);
                    }
                    return Ok(q.into());
                }
            }
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
        if let Some(n) = node {
            // XEP-0115 §6.2: the server's caps node answers as the server.
            if server_caps_node(ctx, n) && matches!(ctx.target, IqTarget::Server(_)) {
                return Ok(super::caps::server_info(ctx.server, q).into());
            }
            return Err(Condition::ItemNotFound.into());
        }
        match ctx.target {
            IqTarget::Server(domain) => {
                q = super::caps::server_info(ctx.server, q);
                if let Some(form) = contact_form(ctx.server, domain) {
                    q = q.child(form);
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
                for (category, kind) in ctx.server.modules.account_identities() {
                    q = q.child(
                        Element::new("identity", NS_INFO)
                            .attr("category", category)
                            .attr("type", kind),
                    );
                }
                for f in ctx.server.modules.account_features(&ctx.server.config) {
                    q = q.child(Element::new("feature", NS_INFO).attr("var", f));
                }
            }
        }
        Ok(q.into())
    }
    .boxed()
}

/// XEP-0157: the domain's contact addresses as a XEP-0128 extension form
/// (`http://jabber.org/network/serverinfo`); `None` when none is set. Not
/// part of the server's caps `ver` (which its node answers without it).
fn contact_form(server: &crate::server::Server, domain: &str) -> Option<Element> {
    const NS_DATA: &str = "jabber:x:data";
    let c = &server.config.contact;
    let admins: Vec<String> = if c.admin.is_empty() {
        server
            .config
            .admin
            .admins
            .iter()
            .filter(|a| crate::s2s::domain_of(a) == domain)
            .chain(
                server
                    .config
                    .admin
                    .domains
                    .get(domain)
                    .into_iter()
                    .flatten(),
            )
            .map(|a| format!("xmpp:{a}"))
            .collect()
    } else {
        c.admin.clone()
    };
    let fields = [
        ("abuse-addresses", &c.abuse),
        ("admin-addresses", &admins),
        ("feedback-addresses", &c.feedback),
        ("sales-addresses", &c.sales),
        ("security-addresses", &c.security),
        ("status-addresses", &c.status),
        ("support-addresses", &c.support),
    ];
    if fields.iter().all(|(_, v)| v.is_empty()) {
        return None;
    }
    let mut x = Element::new("x", NS_DATA).attr("type", "result").child(
        Element::new("field", NS_DATA)
            .attr("var", "FORM_TYPE")
            .attr("type", "hidden")
            .child(Element::new("value", NS_DATA).text("http://jabber.org/network/serverinfo")),
    );
    for (var, values) in fields {
        if values.is_empty() {
            continue;
        }
        let mut f = Element::new("field", NS_DATA)
            .attr("var", var)
            .attr("type", "list-multi");
        for v in values {
            f = f.child(Element::new("value", NS_DATA).text(v.replace("{domain}", domain)));
        }
        x = x.child(f);
    }
    Some(x)
}

/// Whether `n` is the server's XEP-0115 caps node (`node#ver`).
fn server_caps_node(ctx: &IqCtx<'_>, n: &str) -> bool {
    n.strip_prefix(super::caps::SERVER_NODE)
        .and_then(|r| r.strip_prefix('#'))
        .is_some_and(|v| v == ctx.server.modules.server_ver())
}
