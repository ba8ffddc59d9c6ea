//! The XEP-0060 publish-subscribe service of every served domain
//! (`pubsub.<domain>`). It has no actors: its nodes, items, affiliations
//! and subscriptions are records of the replicated store, written with
//! one compare-and-set per node record, so any node of the cluster
//! answers any request. The operations are PEP's ([`crate::modules::pep`]),
//! run for a service whose nodes are owned by the JIDs their
//! affiliations name instead of by one account.

use crate::modules::adhoc::NS_COMMANDS;
use crate::modules::disco::{NS_INFO, NS_ITEMS};
use crate::modules::pep::{self, NS_DATA, NS_OWNER, NS_PUBSUB, Req, Svc};
use crate::modules::{IqReply, IqResult};
use crate::server::Server;
use crate::stanza::{Condition, error_reply, iq_result, split};
use crate::xml::Element;

/// The XEP-0060 §10 features this service implements.
const FEATURES: &[&str] = &[
    "access-authorize",
    "access-open",
    "access-presence",
    "access-roster",
    "access-whitelist",
    "auto-create",
    "config-node",
    "config-node-max",
    "create-and-configure",
    "create-nodes",
    "delete-items",
    "delete-nodes",
    "get-pending",
    "instant-nodes",
    "item-ids",
    "last-published",
    "manage-subscriptions",
    "member-affiliation",
    "meta-data",
    "modify-affiliations",
    "multi-items",
    "multi-subscribe",
    "outcast-affiliation",
    "persistent-items",
    "presence-notifications",
    "publish",
    "publish-only-affiliation",
    "publish-options",
    "publisher-affiliation",
    "purge-nodes",
    "retract-items",
    "retrieve-affiliations",
    "retrieve-default",
    "retrieve-default-sub",
    "retrieve-items",
    "retrieve-subscriptions",
    "rsm",
    "shim",
    "subscribe",
    "subscription-notifications",
    "subscription-options",
];

/// A stanza to a pubsub service: IQ requests are answered here (any
/// node: everything is in the replicated store); a message is an owner's
/// answer to a subscription approval request (XEP-0060 §8.6), or gets
/// `<service-unavailable/>`; presence and answers end here.
pub async fn service_stanza(server: &Server, el: Element) {
    let request = el.name == "iq" && matches!(el.get_attr("type"), Some("get" | "set"));
    if !request {
        if el.name == "message" && el.get_attr("type") != Some("error") {
            message(server, &el).await;
        }
        return;
    }
    let to = el.get_attr("to").unwrap_or_default();
    let Some(parent) = server.services.get(split(to).0).map(|h| h.parent.clone()) else {
        return;
    };
    let from = el.get_attr("from").unwrap_or_default().to_owned();
    let svc = Svc {
        jid: split(to).0,
        generic: Some(&parent),
    };
    let req = Req {
        server,
        svc,
        bare: split(&from).0,
        full: &from,
    };
    let set = el.get_attr("type") == Some("set");
    let payloads: Vec<&Element> = el.elements().collect();
    let result = match payloads.as_slice() {
        [p] => answer(&req, p, set).await,
        _ => Err(Condition::BadRequest.into()),
    };
    let reply = match result {
        Ok(IqReply::Result(payload)) => iq_result(&el, payload),
        Ok(IqReply::Sent) => return,
        Err(e) => match error_reply(&el, &e) {
            Some(r) => r,
            None => return,
        },
    };
    let _ = crate::session::im::deliver_to_full(server, &from, reply);
}

/// A message to the service: an approval form, else `<service-unavailable/>`.
async fn message(server: &Server, el: &Element) {
    let to = el.get_attr("to").unwrap_or_default();
    let Some(parent) = server.services.get(split(to).0).map(|h| h.parent.clone()) else {
        return;
    };
    let form = el.get_child("x", crate::modules::pep::NS_DATA);
    let Some(x) = form else {
        crate::session::im::bounce(server, el, Condition::ServiceUnavailable);
        return;
    };
    let svc = Svc {
        jid: split(to).0,
        generic: Some(&parent),
    };
    let from = el.get_attr("from").unwrap_or_default();
    if let Err(e) = pep::approval(server, svc, from, x).await {
        crate::session::im::bounce_with(server, el, &e);
    }
}

async fn answer(req: &Req<'_>, p: &Element, set: bool) -> IqResult {
    match (p.ns.as_str(), p.name.as_str(), set) {
        (NS_INFO, "query", false) => info(req, p),
        (NS_ITEMS, "query", false) => items(req, p),
        (NS_PUBSUB | NS_OWNER, "pubsub", _) => pep::dispatch(req, p, set).await,
        (NS_COMMANDS, "command", true) => match p.get_attr("node") {
            Some(pep::GET_PENDING) => pep::get_pending(req, p).await,
            Some(_) => Err(Condition::ItemNotFound.into()),
            None => Err(Condition::BadRequest.into()),
        },
        (NS_INFO | NS_ITEMS, "query", true) => Err(Condition::NotAllowed.into()),
        _ => Err(Condition::ServiceUnavailable.into()),
    }
}

/// XEP-0060 §5.1: the service's identity and features; §5.3: a node's.
fn info(req: &Req<'_>, q: &Element) -> IqResult {
    // XEP-0050 §2.3: the command node (§8.7's get-pending).
    if q.get_attr("node") == Some(pep::GET_PENDING) {
        return Ok(Element::new("query", NS_INFO)
            .attr("node", pep::GET_PENDING)
            .child(
                Element::new("identity", NS_INFO)
                    .attr("category", "automation")
                    .attr("type", "command-node")
                    .attr("name", "Get pending subscriptions"),
            )
            .child(Element::new("feature", NS_INFO).attr("var", NS_COMMANDS))
            .child(Element::new("feature", NS_INFO).attr("var", NS_DATA))
            .into());
    }
    if let Some(node) = q.get_attr("node") {
        let Some(info) = pep::node_info(req.server, req.svc, req.bare, node) else {
            return Err(Condition::ItemNotFound.into());
        };
        let mut out = Element::new("query", NS_INFO).attr("node", node);
        for el in info {
            out = out.child(el);
        }
        return Ok(out.into());
    }
    let name = req
        .server
        .services
        .get(req.svc.jid)
        .map(|h| h.name.clone())
        .unwrap_or_default();
    let mut out = Element::new("query", NS_INFO)
        .child(
            Element::new("identity", NS_INFO)
                .attr("category", "pubsub")
                .attr("type", "service")
                .attr("name", name),
        )
        .child(Element::new("feature", NS_INFO).attr("var", NS_INFO))
        .child(Element::new("feature", NS_INFO).attr("var", NS_ITEMS))
        .child(Element::new("feature", NS_INFO).attr("var", NS_PUBSUB))
        .child(Element::new("feature", NS_INFO).attr("var", crate::rsm::NS_RSM))
        .child(Element::new("feature", NS_INFO).attr("var", NS_COMMANDS));
    for f in FEATURES {
        out = out.child(Element::new("feature", NS_INFO).attr("var", format!("{NS_PUBSUB}#{f}")));
    }
    Ok(out.into())
}

/// XEP-0060 §5.2: the nodes the requester may see; §5.5: a node's items;
/// either paged with XEP-0059.
fn items(req: &Req<'_>, q: &Element) -> IqResult {
    let mut out = Element::new("query", NS_ITEMS);
    // XEP-0050 §2.2: the service's commands.
    if q.get_attr("node") == Some(NS_COMMANDS) {
        return Ok(out
            .attr("node", NS_COMMANDS)
            .child(
                Element::new("item", NS_ITEMS)
                    .attr("jid", req.svc.jid)
                    .attr("node", pep::GET_PENDING)
                    .attr("name", "Get pending subscriptions"),
            )
            .into());
    }
    let (list, key) = match q.get_attr("node") {
        Some(node) => {
            out.set_attr("node", node);
            let list = pep::node_item_list(req.server, req.svc, req.bare, node)
                .ok_or(Condition::ItemNotFound)?;
            (list, "name")
        }
        None => (pep::node_list(req.server, req.svc, req.bare), "node"),
    };
    // XEP-0059 §1: a long list is paged when the requester asks.
    let (list, set) = crate::rsm::page_items(q, list, key)?;
    for el in list {
        out = out.child(el);
    }
    if let Some(set) = set {
        out = out.child(set);
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::services::{ServiceKind, Services};

    #[test]
    fn a_service_for_every_domain_unless_disabled() {
        let mut cfg = Config {
            domains: vec!["a.example".into(), "b.example".into()],
            ..Default::default()
        };
        cfg.check().unwrap();
        let s = Services::new(&cfg);
        for d in ["a.example", "b.example"] {
            let h = s.get(&format!("pubsub.{d}")).expect("service");
            assert_eq!((h.kind, h.parent.as_str()), (ServiceKind::Pubsub, d));
            assert!(s.of_parent(d).any(|(j, _)| j == format!("pubsub.{d}")));
        }
        assert!(s.get("pubsub.c.example").is_none());
        cfg.pubsub.enabled = false;
        assert!(Services::new(&cfg).get("pubsub.a.example").is_none());
    }

    #[test]
    fn configuration_is_checked() {
        let bad = |f: fn(&mut Config)| {
            let mut cfg = Config::default();
            f(&mut cfg);
            cfg.check().is_err()
        };
        assert!(bad(|c| c.pubsub.subdomain = "a.b".into()));
        assert!(bad(|c| c.pubsub.subdomain = "conference".into()));
        assert!(bad(|c| c.pubsub.max_nodes = 0));
        assert!(bad(|c| c.pubsub.admins = vec!["not a jid@@".into()]));
        let mut cfg = Config::default();
        cfg.pubsub.admins = vec!["Admin@LocalHost".into()];
        cfg.check().unwrap();
        assert_eq!(cfg.pubsub.admins, vec!["admin@localhost".to_owned()]);
    }
}
