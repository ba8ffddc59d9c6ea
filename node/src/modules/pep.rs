//! XEP-0163 Personal Eventing Protocol: every account is a virtual
//! XEP-0060 publish-subscribe service at its bare JID, with nodes created
//! on first publish, subscriptions implied by presence, and notifications
//! filtered by the recipients' entity capabilities (`<node>+notify`,
//! [`super::caps`]).
//!
//! Nodes and items live in the replicated store (`user_pep_node`: the
//! configuration and item ids of a node; `user_pep_item`: the items), so
//! any node of a cluster answers for any account; each change is one
//! compare-and-set on the node record. Notifications go to the owner's
//! and the contacts' available resources wherever they are bound (from
//! the presence registry, whose last presence of each resource carries
//! its `<c/>`).
//!
//! Payload conventions built on PEP are plain nodes here (OMEMO device
//! lists and bundles, XEP-0402 bookmarks, XEP-0172 nicknames, XEP-0223
//! private storage); the avatar conversions of XEP-0398 and the XEP-0049
//! bookmarks bridge are in [`avatar`] and [`bookmarks`] below.

use super::{
    AccountFeature, AccountIdentity, AccountNodes, Event, Flow, Hook, HookCtx, IqCtx, IqHandler,
    IqReply, IqResult, IqTarget, Module,
};
use crate::server::Server;
use crate::stanza::{Condition, NS_CLIENT, StanzaError};
use crate::storage::{AVATAR_HASH, PEP_ITEM, PEP_NODE, PepChange, PepNode, RosterItem};
use crate::xml::{Element, Limits};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const NS_DATA: &str = "jabber:x:data";
const NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// The longest node id.
const MAX_NODE_BYTES: usize = 1024;
/// Compare-and-set rounds against concurrent writers of one node.
const MAX_ATTEMPTS: usize = 32;

pub const AVATAR_DATA: &str = "urn:xmpp:avatar:data";
pub const AVATAR_METADATA: &str = "urn:xmpp:avatar:metadata";

pub static MODULE: Module = Module {
    name: "pep",
    spec: "XEP-0163, XEP-0060 (PEP subset), XEP-0084, XEP-0398, XEP-0223, XEP-0402, XEP-0172",
    account_features: &[
        AccountFeature {
            var: NS_PUBSUB,
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#access-open",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#access-presence",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#access-roster",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#access-whitelist",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#auto-create",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#auto-subscribe",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#config-node",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#config-node-max",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#create-and-configure",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#create-nodes",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#delete-items",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#delete-nodes",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#filtered-notifications",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#item-ids",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#last-published",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#multi-items",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#persistent-items",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#presence-notifications",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#publish",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#publish-options",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#purge-nodes",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#retract-items",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#retrieve-default",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#retrieve-items",
            when: None,
        },
        AccountFeature {
            var: "urn:xmpp:pep-vcard-conversion:0",
            when: None,
        },
        AccountFeature {
            var: "urn:xmpp:bookmarks-conversion:0",
            when: None,
        },
        AccountFeature {
            var: "urn:xmpp:bookmarks:1#compat",
            when: None,
        },
        AccountFeature {
            var: "urn:xmpp:bookmarks:1#compat-pep",
            when: None,
        },
    ],
    account_identities: &[AccountIdentity {
        category: "pubsub",
        kind: "pep",
    }],
    account_nodes: Some(&AccountNodes {
        items: disco_items,
        info: disco_node_info,
    }),
    iq: &[
        IqHandler {
            ns: NS_PUBSUB,
            name: "pubsub",
            get: Some(handle),
            set: Some(handle),
            no_account: false,
        },
        IqHandler {
            ns: NS_OWNER,
            name: "pubsub",
            get: Some(handle),
            set: Some(handle),
            no_account: false,
        },
    ],
    hooks: &[Hook {
        event: Event::PresenceOut,
        priority: 0,
        handler: avatar::presence_out,
    }],
    config_section: Some("pep"),
    spaces: &[PEP_NODE, PEP_ITEM, AVATAR_HASH],
    ..Module::EMPTY
};

// ------------------------------------------------------------ errors

fn app(condition: Condition, name: &str) -> StanzaError {
    StanzaError::with_app(condition, Element::new(name, NS_ERRORS))
}

fn unsupported(feature: &str) -> StanzaError {
    StanzaError::with_app(
        Condition::FeatureNotImplemented,
        Element::new("unsupported", NS_ERRORS).attr("feature", feature),
    )
}

fn nodeid_required() -> StanzaError {
    app(Condition::BadRequest, "nodeid-required")
}

fn precondition_not_met() -> StanzaError {
    app(Condition::Conflict, "precondition-not-met")
}

// ------------------------------------------------------------ configuration

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Open,
    #[default]
    Presence,
    Roster,
    Whitelist,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Presence => "presence",
            Access::Roster => "roster",
            Access::Whitelist => "whitelist",
        }
    }
    fn parse(s: &str) -> Option<Access> {
        Some(match s {
            "open" => Access::Open,
            "presence" => Access::Presence,
            "roster" => Access::Roster,
            "whitelist" => Access::Whitelist,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SendLast {
    Never,
    OnSub,
    #[default]
    OnSubAndPresence,
}

impl SendLast {
    fn as_str(self) -> &'static str {
        match self {
            SendLast::Never => "never",
            SendLast::OnSub => "on_sub",
            SendLast::OnSubAndPresence => "on_sub_and_presence",
        }
    }
    fn parse(s: &str) -> Option<SendLast> {
        Some(match s {
            "never" => SendLast::Never,
            "on_sub" => SendLast::OnSub,
            "on_sub_and_presence" => SendLast::OnSubAndPresence,
            _ => return None,
        })
    }
}

/// A node's configuration (XEP-0060 §16.4.4 `pubsub#node_config`, the
/// fields PEP uses), with XEP-0163 §5's defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    pub access: Access,
    pub roster_groups: Vec<String>,
    /// `None`: `max` (`[pep] max_items`).
    pub max_items: Option<usize>,
    pub persist_items: bool,
    pub send_last: SendLast,
    pub deliver_notifications: bool,
    pub deliver_payloads: bool,
    pub notify_retract: bool,
    pub notify_delete: bool,
    pub notification_type: String,
    pub title: String,
    pub description: String,
    /// `pubsub#type`: the payload type, as the owner says.
    pub payload_type: String,
    /// `pubsub#max_payload_size`: a node's own limit below
    /// `[pep] max_item_bytes` (`None`: that).
    pub max_payload_size: Option<usize>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            access: Access::Presence,
            roster_groups: Vec::new(),
            max_items: Some(1),
            persist_items: true,
            send_last: SendLast::OnSubAndPresence,
            deliver_notifications: true,
            deliver_payloads: true,
            notify_retract: true,
            notify_delete: true,
            notification_type: "headline".into(),
            title: String::new(),
            description: String::new(),
            payload_type: String::new(),
            max_payload_size: None,
        }
    }
}

impl NodeConfig {
    /// The items the node keeps, `cap` being `[pep] max_items`.
    fn limit(&self, cap: usize) -> usize {
        self.max_items.unwrap_or(cap).min(cap)
    }

    fn decode(raw: &[u8]) -> NodeConfig {
        rmp_serde::from_slice(raw).unwrap_or_default()
    }

    fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("config serialises")
    }

    /// Sets one field from a submitted form; `Err(())` for an unknown
    /// field or a value of the wrong type.
    /// `cap`: `[pep] max_items`, the most a node may be set to keep.
    fn set(&mut self, var: &str, values: &[String], cap: usize) -> Result<(), ()> {
        let one = || values.first().map(|v| v.trim()).ok_or(());
        let boolean = || match one()? {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            _ => Err(()),
        };
        match var {
            "pubsub#access_model" => self.access = Access::parse(one()?).ok_or(())?,
            "pubsub#roster_groups_allowed" => self.roster_groups = values.to_vec(),
            "pubsub#max_items" => {
                self.max_items = match one()? {
                    "max" => None,
                    n => {
                        let n: usize = n.parse().map_err(|_| ())?;
                        if n == 0 || n > cap {
                            return Err(());
                        }
                        Some(n)
                    }
                }
            }
            "pubsub#persist_items" => self.persist_items = boolean()?,
            "pubsub#send_last_published_item" => {
                self.send_last = SendLast::parse(one()?).ok_or(())?
            }
            "pubsub#deliver_notifications" => self.deliver_notifications = boolean()?,
            "pubsub#deliver_payloads" => self.deliver_payloads = boolean()?,
            "pubsub#notify_retract" => self.notify_retract = boolean()?,
            "pubsub#notify_delete" => self.notify_delete = boolean()?,
            "pubsub#notification_type" => {
                let t = one()?;
                if t != "headline" && t != "normal" {
                    return Err(());
                }
                self.notification_type = t.to_owned();
            }
            "pubsub#title" => self.title = values.first().cloned().unwrap_or_default(),
            "pubsub#description" => self.description = values.first().cloned().unwrap_or_default(),
            "pubsub#type" => self.payload_type = values.first().cloned().unwrap_or_default(),
            "pubsub#max_payload_size" => {
                // Empty (as the form shows no limit of the node's own).
                self.max_payload_size = match values.first().map(|v| v.trim()) {
                    None | Some("") => None,
                    Some(v) => match v.parse::<usize>() {
                        Ok(n) if n > 0 => Some(n),
                        _ => return Err(()),
                    },
                };
            }
            // PEP has one publisher, the owner (XEP-0163 §2.2).
            "pubsub#publish_model" => {
                if one()? != "publishers" {
                    return Err(());
                }
            }
            _ => return Err(()),
        }
        Ok(())
    }

    /// The configuration as a data form (`form` or `result`).
    fn form(&self, kind: &str) -> Element {
        fn field(var: &str, ftype: &str, values: &[&str]) -> Element {
            let mut f = Element::new("field", NS_DATA)
                .attr("var", var)
                .attr("type", ftype);
            for v in values {
                f = f.child(Element::new("value", NS_DATA).text(*v));
            }
            f
        }
        fn options(mut f: Element, opts: &[&str]) -> Element {
            for o in opts {
                f = f.child(
                    Element::new("option", NS_DATA).child(Element::new("value", NS_DATA).text(*o)),
                );
            }
            f
        }
        let b = |v: bool| if v { "1" } else { "0" };
        let max = self.max_items.map_or("max".to_owned(), |n| n.to_string());
        let max_payload = self
            .max_payload_size
            .map_or_else(String::new, |n| n.to_string());
        let groups: Vec<&str> = self.roster_groups.iter().map(String::as_str).collect();
        Element::new("x", NS_DATA)
            .attr("type", kind)
            .child(field("FORM_TYPE", "hidden", &[NODE_CONFIG]))
            .child(options(
                field(
                    "pubsub#access_model",
                    "list-single",
                    &[self.access.as_str()],
                ),
                &["open", "presence", "roster", "whitelist"],
            ))
            .child(field("pubsub#roster_groups_allowed", "list-multi", &groups))
            .child(field("pubsub#max_items", "text-single", &[&max]))
            .child(field(
                "pubsub#persist_items",
                "boolean",
                &[b(self.persist_items)],
            ))
            .child(options(
                field(
                    "pubsub#send_last_published_item",
                    "list-single",
                    &[self.send_last.as_str()],
                ),
                &["never", "on_sub", "on_sub_and_presence"],
            ))
            .child(field(
                "pubsub#deliver_notifications",
                "boolean",
                &[b(self.deliver_notifications)],
            ))
            .child(field(
                "pubsub#deliver_payloads",
                "boolean",
                &[b(self.deliver_payloads)],
            ))
            .child(field(
                "pubsub#notify_retract",
                "boolean",
                &[b(self.notify_retract)],
            ))
            .child(field(
                "pubsub#notify_delete",
                "boolean",
                &[b(self.notify_delete)],
            ))
            .child(options(
                field(
                    "pubsub#notification_type",
                    "list-single",
                    &[&self.notification_type],
                ),
                &["headline", "normal"],
            ))
            .child(field("pubsub#title", "text-single", &[&self.title]))
            .child(field(
                "pubsub#description",
                "text-single",
                &[&self.description],
            ))
            .child(field("pubsub#type", "text-single", &[&self.payload_type]))
            .child(field(
                "pubsub#max_payload_size",
                "text-single",
                &[&max_payload],
            ))
            .child(options(
                field("pubsub#publish_model", "list-single", &["publishers"]),
                &["publishers"],
            ))
    }
}

/// The fields of a submitted data form of `form_type`: `Ok(None)` for a
/// cancelled form, `Err` when it is not such a form.
type Fields = Vec<(String, Vec<String>)>;

fn form_fields(x: &Element, form_type: &str) -> Result<Option<Fields>, ()> {
    if !x.is("x", NS_DATA) {
        return Err(());
    }
    match x.get_attr("type") {
        Some("cancel") => return Ok(None),
        Some("submit") | None => {}
        Some(_) => return Err(()),
    }
    let mut fields = Vec::new();
    let mut typed = false;
    for f in x.elements().filter(|e| e.is("field", NS_DATA)) {
        let Some(var) = f.get_attr("var") else {
            return Err(());
        };
        let values: Vec<String> = f
            .elements()
            .filter(|e| e.is("value", NS_DATA))
            .map(|v| v.text_content())
            .collect();
        if var == "FORM_TYPE" {
            if values.first().map(String::as_str) != Some(form_type) {
                return Err(());
            }
            typed = true;
            continue;
        }
        fields.push((var.to_owned(), values));
    }
    if !typed {
        return Err(());
    }
    Ok(Some(fields))
}

// ------------------------------------------------------------ access

/// Whether `requester` may see `owner`'s node (XEP-0060 §4.5, §6.5.9).
fn may_read(
    server: &Server,
    owner: &str,
    requester: &str,
    cfg: &NodeConfig,
) -> Result<(), StanzaError> {
    if owner == requester {
        return Ok(());
    }
    match cfg.access {
        Access::Open => Ok(()),
        Access::Presence => {
            let ok = server
                .storage
                .roster_item(owner, requester)?
                .is_some_and(|i| i.subscription.from());
            if ok {
                Ok(())
            } else {
                Err(app(
                    Condition::NotAuthorized,
                    "presence-subscription-required",
                ))
            }
        }
        Access::Roster => {
            let item = server.storage.roster_item(owner, requester)?;
            if item.is_some_and(|i| in_groups(&i, cfg)) {
                Ok(())
            } else {
                Err(app(Condition::NotAuthorized, "not-in-roster-group"))
            }
        }
        Access::Whitelist => Err(app(Condition::NotAllowed, "closed-node")),
    }
}

fn in_groups(item: &RosterItem, cfg: &NodeConfig) -> bool {
    item.groups.iter().any(|g| cfg.roster_groups.contains(g))
}

/// Whether a contact (an item of the owner's roster) gets notifications
/// of a node with `cfg` (XEP-0163 §4.1: subscriptions follow presence).
fn contact_notified(item: &RosterItem, cfg: &NodeConfig) -> bool {
    if !item.subscription.from() {
        return false;
    }
    match cfg.access {
        Access::Open | Access::Presence => true,
        Access::Roster => in_groups(item, cfg),
        Access::Whitelist => false,
    }
}

// ------------------------------------------------------------ discovery

/// XEP-0060 §5.2: the nodes of `owner` that `requester` may see.
fn disco_items(server: &Server, owner: &str, requester: &str) -> Vec<Element> {
    let Ok(nodes) = server.storage.pep_nodes(owner) else {
        return Vec::new();
    };
    nodes
        .into_iter()
        .filter(|(_, rec)| {
            may_read(server, owner, requester, &NodeConfig::decode(&rec.config)).is_ok()
        })
        .map(|(node, _)| {
            Element::new("item", super::disco::NS_ITEMS)
                .attr("jid", owner)
                .attr("node", node)
        })
        .collect()
}

/// XEP-0060 §5.3 and §5.4: a node's identity (a leaf) and its metadata
/// (`pubsub#meta-data`).
fn disco_node_info(
    server: &Server,
    owner: &str,
    requester: &str,
    node: &str,
) -> Option<Vec<Element>> {
    let (_, rec) = server.storage.pep_node(owner, node).ok()??;
    let cfg = NodeConfig::decode(&rec.config);
    may_read(server, owner, requester, &cfg).ok()?;
    let info = super::disco::NS_INFO;
    let field = |var: &str, value: &str| {
        Element::new("field", NS_DATA)
            .attr("var", var)
            .child(Element::new("value", NS_DATA).text(value))
    };
    let meta = Element::new("x", NS_DATA)
        .attr("type", "result")
        .child(
            field("FORM_TYPE", "http://jabber.org/protocol/pubsub#meta-data")
                .attr("type", "hidden"),
        )
        .child(field("pubsub#title", &cfg.title))
        .child(field("pubsub#description", &cfg.description))
        .child(field("pubsub#type", &cfg.payload_type))
        .child(field("pubsub#access_model", cfg.access.as_str()))
        .child(field("pubsub#owner", owner));
    Some(vec![
        Element::new("identity", info)
            .attr("category", "pubsub")
            .attr("type", "leaf"),
        Element::new("feature", info).attr("var", NS_PUBSUB),
        meta,
    ])
}

// ------------------------------------------------------------ IQ handling

fn handle<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        let owner = match ctx.target {
            IqTarget::Own => ctx.origin.bare,
            IqTarget::Account(b) => b,
            IqTarget::Server(_) | IqTarget::NoAccount(_) => {
                return Err(Condition::ServiceUnavailable.into());
            }
        };
        let is_owner = owner == ctx.origin.bare;
        let children: Vec<&Element> = ctx.payload.elements().collect();
        // The operation; in the pubsub namespace, `publish-options` and
        // `configure` only qualify a `publish` or `create` beside them.
        let op = children.iter().find(|e| {
            ctx.payload.ns == NS_OWNER
                || !matches!(e.name.as_str(), "publish-options" | "configure")
        });
        let Some(first) = op.or(children.first()) else {
            return Err(Condition::BadRequest.into());
        };
        if ctx.payload.ns == NS_OWNER {
            if !is_owner {
                return Err(Condition::Forbidden.into());
            }
            return match (first.name.as_str(), ctx.set) {
                ("configure", false) => configure_get(ctx, owner, first),
                ("configure", true) => configure_set(ctx, owner, first).await,
                ("delete", true) => delete(ctx, owner, first).await,
                ("purge", true) => purge(ctx, owner, first).await,
                ("default", false) => Ok(Element::new("pubsub", NS_OWNER)
                    .child(
                        Element::new("default", NS_OWNER).child(NodeConfig::default().form("form")),
                    )
                    .into()),
                ("affiliations", _) => Err(unsupported("modify-affiliations")),
                ("subscriptions", _) => Err(unsupported("manage-subscriptions")),
                _ => Err(Condition::BadRequest.into()),
            };
        }
        match (first.name.as_str(), ctx.set) {
            ("publish", true) => {
                let options = children.iter().find(|e| e.is("publish-options", NS_PUBSUB));
                if !is_owner {
                    return Err(Condition::Forbidden.into());
                }
                let r = publish(ctx.server, owner, first, options.copied(), true).await?;
                bookmarks::after_change(ctx.server, owner, first).await;
                Ok(r)
            }
            ("retract", true) => {
                if !is_owner {
                    return Err(Condition::Forbidden.into());
                }
                let r = retract(ctx.server, owner, first).await?;
                bookmarks::after_change(ctx.server, owner, first).await;
                Ok(r)
            }
            ("create", true) => {
                if !is_owner {
                    return Err(Condition::Forbidden.into());
                }
                let configure = children.iter().find(|e| e.is("configure", NS_PUBSUB));
                create(ctx, owner, first, configure.copied()).await
            }
            ("items", false) => items(ctx, owner, first),
            ("subscribe" | "unsubscribe", true) => Err(unsupported("subscribe")),
            ("options", _) => Err(unsupported("subscription-options")),
            ("subscriptions", false) => Err(unsupported("retrieve-subscriptions")),
            ("affiliations", false) => Err(unsupported("retrieve-affiliations")),
            ("publish" | "retract" | "create" | "subscribe" | "unsubscribe", false)
            | ("items", true) => Err(Condition::BadRequest.into()),
            _ => Err(Condition::FeatureNotImplemented.into()),
        }
    }
    .boxed()
}

/// The node id of a request, required non-empty.
fn node_attr(el: &Element) -> Result<&str, StanzaError> {
    match el.get_attr("node") {
        Some(n) if !n.is_empty() && n.len() <= MAX_NODE_BYTES => Ok(n),
        Some(n) if !n.is_empty() => Err(Condition::NotAcceptable.into()),
        _ => Err(nodeid_required()),
    }
}

fn parse_stored(xml: &str) -> Option<Element> {
    let scope = [(String::new(), NS_PUBSUB.to_owned())];
    let limits = Limits {
        max_stanza_bytes: usize::MAX,
        ..Default::default()
    };
    crate::xml::parse_element(xml.as_bytes(), &scope, &limits).ok()
}

fn new_item_id() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// A new node past `[pep] max_nodes` is refused.
fn too_many_nodes(server: &Server, owner: &str) -> Result<(), StanzaError> {
    if server.storage.pep_node_count(owner)? >= server.config.pep.max_nodes as u64 {
        return Err(StanzaError::with_text(
            Condition::PolicyViolation,
            "too many PEP nodes",
        ));
    }
    Ok(())
}

/// Publishes one item (XEP-0060 §7.1, with XEP-0163's auto-create and
/// §7.1.5's publish-options); `hooks`: run the avatar conversion.
pub async fn publish(
    server: &Server,
    owner: &str,
    publish: &Element,
    options: Option<&Element>,
    hooks: bool,
) -> IqResult {
    let node = node_attr(publish)?;
    let cap = server.config.pep.max_items;
    let items: Vec<&Element> = publish
        .elements()
        .filter(|e| e.is("item", NS_PUBSUB))
        .collect();
    let item = match items.as_slice() {
        [] => return Err(app(Condition::BadRequest, "item-required")),
        [one] => *one,
        _ => return Err(app(Condition::BadRequest, "invalid-payload")),
    };
    let payloads: Vec<&Element> = item.elements().collect();
    let payload = match payloads.as_slice() {
        [] => return Err(app(Condition::BadRequest, "payload-required")),
        [one] => *one,
        _ => return Err(app(Condition::BadRequest, "invalid-payload")),
    };
    let id = match item.get_attr("id") {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => new_item_id(),
    };
    let stored = Element::new("item", NS_PUBSUB)
        .attr("id", id.as_str())
        .child(payload.clone());
    let xml = stored.to_stream_xml(NS_PUBSUB);
    if xml.len() > server.config.pep.max_item_bytes {
        return Err(app(Condition::NotAcceptable, "payload-too-big"));
    }
    let wanted: Option<Fields> = match options {
        None => None,
        Some(o) => {
            let Some(x) = o.elements().next() else {
                return Err(Condition::BadRequest.into());
            };
            form_fields(x, PUBLISH_OPTIONS).map_err(|()| Condition::BadRequest)?
        }
    };
    let mut cfg = NodeConfig::default();
    for attempt in 0..MAX_ATTEMPTS {
        let read = server.storage.pep_node(owner, node)?;
        let (raw, mut rec) = match read {
            Some((raw, rec)) => {
                cfg = NodeConfig::decode(&rec.config);
                if let Some(fields) = &wanted {
                    // §7.1.5: every option must hold already.
                    let mut want = cfg.clone();
                    for (var, values) in fields {
                        want.set(var, values, cap)
                            .map_err(|()| precondition_not_met())?;
                    }
                    if want != cfg {
                        return Err(precondition_not_met());
                    }
                }
                (Some(raw), rec)
            }
            None => {
                too_many_nodes(server, owner)?;
                cfg = NodeConfig::default();
                if let Some(fields) = &wanted {
                    for (var, values) in fields {
                        cfg.set(var, values, cap)
                            .map_err(|()| precondition_not_met())?;
                    }
                }
                (None, PepNode::default())
            }
        };
        if cfg.max_payload_size.is_some_and(|m| xml.len() > m) {
            return Err(app(Condition::NotAcceptable, "payload-too-big"));
        }
        rec.config = cfg.encode();
        let mut put = Vec::new();
        let mut remove = Vec::new();
        if cfg.persist_items {
            rec.items.retain(|i| *i != id);
            rec.items.push(id.clone());
            let over = rec.items.len().saturating_sub(cfg.limit(cap));
            remove.extend(rec.items.drain(..over));
            put.push((id.clone(), xml.clone()));
        } else {
            remove.append(&mut rec.items);
        }
        let change = PepChange {
            bare: owner,
            node,
            read: raw,
            write: Some(rec),
            put,
            remove,
        };
        if server.storage.pep_write(change).await? {
            break;
        }
        if attempt + 1 == MAX_ATTEMPTS {
            return Err(Condition::ResourceConstraint.into());
        }
    }
    metrics::counter!("starling_pep_published_total").increment(1);
    if cfg.deliver_notifications {
        let mut ev_item = Element::new("item", NS_EVENT).attr("id", id.as_str());
        if cfg.deliver_payloads {
            ev_item = ev_item.child(payload.clone());
        }
        let event = Element::new("items", NS_EVENT)
            .attr("node", node)
            .child(ev_item);
        notify(server, owner, node, &cfg, event);
    }
    if hooks && node == AVATAR_METADATA {
        avatar::metadata_published(server, owner, payload).await;
    }
    Ok(Element::new("pubsub", NS_PUBSUB)
        .child(
            Element::new("publish", NS_PUBSUB)
                .attr("node", node)
                .child(Element::new("item", NS_PUBSUB).attr("id", id)),
        )
        .into())
}

/// XEP-0060 §7.2: removes items; notifies when asked to (or, without
/// `notify`, when the node is configured to).
async fn retract(server: &Server, owner: &str, retract: &Element) -> IqResult {
    let node = node_attr(retract)?;
    let ids: Vec<&str> = retract
        .elements()
        .filter(|e| e.is("item", NS_PUBSUB))
        .map(|e| e.get_attr("id").unwrap_or_default())
        .collect();
    if ids.is_empty() || ids.iter().any(|i| i.is_empty()) {
        return Err(app(Condition::BadRequest, "item-required"));
    }
    let notify_attr = retract.get_attr("notify").map(|v| v == "true" || v == "1");
    let mut cfg;
    let mut attempt = 0;
    loop {
        let Some((raw, mut rec)) = server.storage.pep_node(owner, node)? else {
            return Err(Condition::ItemNotFound.into());
        };
        cfg = NodeConfig::decode(&rec.config);
        if ids.iter().any(|id| !rec.items.iter().any(|i| i == id)) {
            return Err(Condition::ItemNotFound.into());
        }
        rec.items.retain(|i| !ids.contains(&i.as_str()));
        let change = PepChange {
            bare: owner,
            node,
            read: Some(raw),
            write: Some(rec),
            put: Vec::new(),
            remove: ids.iter().map(|s| (*s).to_owned()).collect(),
        };
        if server.storage.pep_write(change).await? {
            break;
        }
        attempt += 1;
        if attempt == MAX_ATTEMPTS {
            return Err(Condition::ResourceConstraint.into());
        }
    }
    if notify_attr.unwrap_or(cfg.notify_retract) {
        let mut event = Element::new("items", NS_EVENT).attr("node", node);
        for id in &ids {
            event = event.child(Element::new("retract", NS_EVENT).attr("id", *id));
        }
        notify(server, owner, node, &cfg, event);
    }
    Ok(IqReply::EMPTY)
}

/// XEP-0060 §8.1: a node created explicitly (with an optional
/// configuration); an existing one is `<conflict/>`.
async fn create(
    ctx: &IqCtx<'_>,
    owner: &str,
    create: &Element,
    configure: Option<&Element>,
) -> IqResult {
    let node = match create.get_attr("node") {
        Some(n) if !n.is_empty() => node_attr(create)?,
        // §8.1.2: PEP has no instant nodes.
        _ => return Err(app(Condition::NotAcceptable, "nodeid-required")),
    };
    too_many_nodes(ctx.server, owner)?;
    let mut cfg = NodeConfig::default();
    if let Some(c) = configure.filter(|c| c.is("configure", NS_PUBSUB))
        && let Some(x) = c.elements().next()
    {
        let fields = form_fields(x, NODE_CONFIG).map_err(|()| Condition::NotAcceptable)?;
        for (var, values) in fields.unwrap_or_default() {
            cfg.set(&var, &values, ctx.server.config.pep.max_items)
                .map_err(|()| Condition::NotAcceptable)?;
        }
    }
    let rec = PepNode {
        config: cfg.encode(),
        items: Vec::new(),
    };
    let change = PepChange {
        bare: owner,
        node,
        read: None,
        write: Some(rec),
        put: Vec::new(),
        remove: Vec::new(),
    };
    if !ctx.server.storage.pep_write(change).await? {
        return Err(Condition::Conflict.into());
    }
    Ok(IqReply::EMPTY)
}

/// XEP-0060 §6.5: all items, the latest `max_items`, or some by id.
fn items(ctx: &IqCtx<'_>, owner: &str, items: &Element) -> IqResult {
    let node = node_attr(items)?;
    let max = match items.get_attr("max_items") {
        None => None,
        Some(m) => Some(
            m.parse::<usize>()
                .map_err(|_| StanzaError::from(Condition::BadRequest))?,
        ),
    };
    let wanted: Vec<&str> = items
        .elements()
        .filter(|e| e.is("item", NS_PUBSUB))
        .filter_map(|e| e.get_attr("id"))
        .collect();
    let Some((_, rec)) = ctx.server.storage.pep_node(owner, node)? else {
        return Err(Condition::ItemNotFound.into());
    };
    let cfg = NodeConfig::decode(&rec.config);
    may_read(ctx.server, owner, ctx.origin.bare, &cfg)?;
    let ids: Vec<&str> = if wanted.is_empty() {
        let n = max.unwrap_or(usize::MAX).min(rec.items.len());
        rec.items[rec.items.len() - n..]
            .iter()
            .map(String::as_str)
            .collect()
    } else {
        let found: Vec<&str> = wanted
            .into_iter()
            .filter(|w| rec.items.iter().any(|i| i == w))
            .collect();
        if found.is_empty() {
            return Err(Condition::ItemNotFound.into());
        }
        found
    };
    let mut out = Element::new("items", NS_PUBSUB).attr("node", node);
    for id in ids {
        if let Some(item) = ctx
            .server
            .storage
            .pep_item(owner, node, id)?
            .as_deref()
            .and_then(parse_stored)
        {
            out = out.child(item);
        }
    }
    Ok(Element::new("pubsub", NS_PUBSUB).child(out).into())
}

fn configure_get(ctx: &IqCtx<'_>, owner: &str, configure: &Element) -> IqResult {
    let node = node_attr(configure)?;
    let Some((_, rec)) = ctx.server.storage.pep_node(owner, node)? else {
        return Err(Condition::ItemNotFound.into());
    };
    let cfg = NodeConfig::decode(&rec.config);
    Ok(Element::new("pubsub", NS_OWNER)
        .child(
            Element::new("configure", NS_OWNER)
                .attr("node", node)
                .child(cfg.form("form")),
        )
        .into())
}

/// XEP-0060 §8.2.4: a submitted configuration; a field of the wrong type
/// or value is `<not-acceptable/>` (§8.2.5.3) and nothing changes.
async fn configure_set(ctx: &IqCtx<'_>, owner: &str, configure: &Element) -> IqResult {
    let node = node_attr(configure)?;
    let cap = ctx.server.config.pep.max_items;
    let Some(x) = configure.elements().next() else {
        return Err(Condition::BadRequest.into());
    };
    let Some(fields) = form_fields(x, NODE_CONFIG).map_err(|()| Condition::NotAcceptable)? else {
        return Ok(IqReply::EMPTY);
    };
    for _ in 0..MAX_ATTEMPTS {
        let Some((raw, mut rec)) = ctx.server.storage.pep_node(owner, node)? else {
            return Err(Condition::ItemNotFound.into());
        };
        let mut cfg = NodeConfig::decode(&rec.config);
        for (var, values) in &fields {
            cfg.set(var, values, cap)
                .map_err(|()| Condition::NotAcceptable)?;
        }
        let mut remove = Vec::new();
        if !cfg.persist_items {
            remove.append(&mut rec.items);
        } else {
            let over = rec.items.len().saturating_sub(cfg.limit(cap));
            remove.extend(rec.items.drain(..over));
        }
        rec.config = cfg.encode();
        let change = PepChange {
            bare: owner,
            node,
            read: Some(raw),
            write: Some(rec),
            put: Vec::new(),
            remove,
        };
        if ctx.server.storage.pep_write(change).await? {
            return Ok(IqReply::EMPTY);
        }
    }
    Err(Condition::ResourceConstraint.into())
}

/// XEP-0060 §8.4: the node and its items go; whoever was notified of it
/// learns so.
async fn delete(ctx: &IqCtx<'_>, owner: &str, delete: &Element) -> IqResult {
    let node = node_attr(delete)?;
    for _ in 0..MAX_ATTEMPTS {
        let Some((raw, rec)) = ctx.server.storage.pep_node(owner, node)? else {
            return Err(Condition::ItemNotFound.into());
        };
        let cfg = NodeConfig::decode(&rec.config);
        let change = PepChange {
            bare: owner,
            node,
            read: Some(raw),
            write: None,
            put: Vec::new(),
            remove: Vec::new(),
        };
        if ctx.server.storage.pep_write(change).await? {
            if cfg.notify_delete {
                let event = Element::new("delete", NS_EVENT).attr("node", node);
                notify(ctx.server, owner, node, &cfg, event);
            }
            return Ok(IqReply::EMPTY);
        }
    }
    Err(Condition::ResourceConstraint.into())
}

/// XEP-0060 §8.5: every item goes, the node stays.
async fn purge(ctx: &IqCtx<'_>, owner: &str, purge: &Element) -> IqResult {
    let node = node_attr(purge)?;
    for _ in 0..MAX_ATTEMPTS {
        let Some((raw, mut rec)) = ctx.server.storage.pep_node(owner, node)? else {
            return Err(Condition::ItemNotFound.into());
        };
        let cfg = NodeConfig::decode(&rec.config);
        let remove = std::mem::take(&mut rec.items);
        let change = PepChange {
            bare: owner,
            node,
            read: Some(raw),
            write: Some(rec),
            put: Vec::new(),
            remove,
        };
        if ctx.server.storage.pep_write(change).await? {
            if cfg.notify_retract || cfg.notify_delete {
                let event = Element::new("purge", NS_EVENT).attr("node", node);
                notify(ctx.server, owner, node, &cfg, event);
            }
            return Ok(IqReply::EMPTY);
        }
    }
    Err(Condition::ResourceConstraint.into())
}

// ------------------------------------------------------------ notifications

/// The full JIDs (with their presence) that get `owner`'s notifications
/// for `node`: the owner's available resources and those of the contacts
/// the node's access model lets in, each only with `<node>+notify` in its
/// caps (XEP-0163 §4.2, §4.3.1).
fn recipients(server: &Server, owner: &str, node: &str, cfg: &NodeConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |presence: Element| {
        let Some(from) = presence.get_attr("from") else {
            return;
        };
        if super::caps::features_of(server, &presence)
            .is_some_and(|f| super::caps::wants_notify(&f, node))
        {
            out.push(from.to_owned());
        }
    };
    for p in server.router.presences(owner, 0) {
        add(p);
    }
    if cfg.access == Access::Whitelist {
        return out;
    }
    let Ok(roster) = server.storage.roster(owner) else {
        return out;
    };
    for item in roster.iter().filter(|i| contact_notified(i, cfg)) {
        if super::blocking::either_blocks(server, owner, &item.jid) {
            continue;
        }
        for p in server.router.presences(&item.jid, 0) {
            add(p);
        }
    }
    out
}

/// Sends `event` (the child of `<event/>`) from `owner`'s bare JID to
/// every interested resource, wherever bound.
fn notify(server: &Server, owner: &str, node: &str, cfg: &NodeConfig, event: Element) {
    let to = recipients(server, owner, node, cfg);
    if to.is_empty() {
        return;
    }
    let msg = Element::new("message", NS_CLIENT)
        .attr("from", owner)
        .attr("type", cfg.notification_type.as_str())
        .child(Element::new("event", NS_EVENT).child(event));
    for full in to {
        let mut m = msg.clone();
        m.set_attr("to", full.as_str());
        m.set_attr("id", new_item_id());
        metrics::counter!("starling_pep_notifications_total").increment(1);
        let _ = crate::session::im::deliver_to_full(server, &full, m);
    }
}

/// XEP-0163 §4.3.4: the last item of each node `full` is interested in
/// (per `features`), of its own account and of every contact whose
/// presence it receives (`roster`, its own).
pub fn send_last_items(
    server: &Server,
    bare: &str,
    full: &str,
    roster: &[RosterItem],
    features: &[String],
    only: &dyn Fn(&str) -> bool,
) {
    let owners = std::iter::once(bare).chain(
        roster
            .iter()
            .filter(|i| i.subscription.to())
            .map(|i| i.jid.as_str()),
    );
    for owner in owners {
        last_items_of(server, owner, bare, full, features, only);
    }
}

/// The last item of each of `owner`'s nodes that `full` (of `bare`) is
/// interested in and may see.
fn last_items_of(
    server: &Server,
    owner: &str,
    bare: &str,
    full: &str,
    features: &[String],
    only: &dyn Fn(&str) -> bool,
) {
    if owner != bare && super::blocking::either_blocks(server, owner, full) {
        return;
    }
    let Ok(nodes) = server.storage.pep_nodes(owner) else {
        return;
    };
    for (node, rec) in nodes {
        if !super::caps::wants_notify(features, &node) || !only(&node) {
            continue;
        }
        let Some(last) = rec.items.last() else {
            continue;
        };
        let cfg = NodeConfig::decode(&rec.config);
        if cfg.send_last != SendLast::OnSubAndPresence
            || !cfg.deliver_notifications
            || may_read(server, owner, bare, &cfg).is_err()
        {
            continue;
        }
        let Some(mut item) = server
            .storage
            .pep_item(owner, &node, last)
            .ok()
            .flatten()
            .as_deref()
            .and_then(parse_stored)
        else {
            continue;
        };
        item.ns = NS_EVENT.to_owned();
        if !cfg.deliver_payloads {
            item.children.clear();
        }
        let msg = Element::new("message", NS_CLIENT)
            .attr("from", owner)
            .attr("to", full)
            .attr("type", cfg.notification_type.as_str())
            .attr("id", new_item_id())
            .child(
                Element::new("event", NS_EVENT).child(
                    Element::new("items", NS_EVENT)
                        .attr("node", node.as_str())
                        .child(item),
                ),
            )
            .child(
                Element::new("delay", crate::stanza::NS_DELAY)
                    .attr("from", owner)
                    .attr("stamp", crate::stanza::now_stamp()),
            );
        let _ = crate::session::im::deliver_to_full(server, full, msg);
    }
}

/// A session's initial presence: it gets the last items it is interested
/// in, if its caps are known (else when they are, [`caps_learned`]).
pub fn initial_presence(
    server: &Server,
    bare: &str,
    full: &str,
    roster: &[RosterItem],
    presence: &Element,
) {
    if let Some(features) = super::caps::features_of(server, presence) {
        send_last_items(server, bare, full, roster, &features, &|_| true);
    }
}

/// `owner` approved `contact`'s subscription (XEP-0163 §4.3.4: the
/// implicit subscription starts): the contact's available resources get
/// the last items they are interested in.
pub fn subscription_started(server: &Server, owner: &str, contact: &str) {
    for p in server.router.presences(contact, 0) {
        let Some(full) = p.get_attr("from") else {
            continue;
        };
        if let Some(features) = super::caps::features_of(server, &p) {
            last_items_of(server, owner, contact, full, &features, &|_| true);
        }
    }
}

/// An available session changed its caps from `old` to the known
/// `features`: it gets the last items of the nodes it newly wants
/// (XEP-0163 §4.3.4, "+notify appears").
pub fn caps_changed(server: &Server, full: &str, old: Option<&[String]>, features: &[String]) {
    let (bare, _) = crate::stanza::split(full);
    let new_interest = |node: &str| old.is_none_or(|o| !super::caps::wants_notify(o, node));
    if let Ok(roster) = server.storage.roster(bare) {
        send_last_items(server, bare, full, &roster, features, &new_interest);
    }
}

/// The caps of `full` were just verified: its `+notify` interests are
/// known now, so it gets the last items (when it is available).
pub fn caps_learned(server: &Server, full: &str, features: &[String]) {
    let (bare, Some(res)) = crate::stanza::split(full) else {
        return;
    };
    let available = server.router.with_resources(bare, |rs| {
        rs.iter().any(|r| &*r.resource == res && r.available)
    });
    if !available {
        return;
    }
    if let Ok(roster) = server.storage.roster(bare) {
        send_last_items(server, bare, full, &roster, features, &|_| true);
    }
}

// ------------------------------------------------------------ XEP-0398

pub mod avatar {
    //! XEP-0398: a PEP avatar (XEP-0084) becomes the vCard's PHOTO and
    //! the XEP-0153 hash in the user's presence; a vCard PHOTO becomes
    //! the PEP avatar.

    use super::*;
    use base64::Engine;

    const NS_VCARD_UPDATE: &str = "vcard-temp:x:update";
    const NS_VCARD: &str = super::super::vcard::NS_VCARD;

    /// Adds the avatar hash (XEP-0153) to a broadcast available presence:
    /// one lookup of a small, usually absent, key.
    pub fn presence_out(ctx: &HookCtx<'_>, el: &mut Element) -> Flow {
        if el.get_attr("to").is_some() || el.get_attr("type").is_some() {
            return Flow::Pass;
        }
        let Ok(Some(hash)) = ctx.server.storage.avatar_hash(ctx.user) else {
            return Flow::Pass;
        };
        el.remove_children("x", NS_VCARD_UPDATE);
        el.children.push(crate::xml::Node::Element(
            Element::new("x", NS_VCARD_UPDATE)
                .child(Element::new("photo", NS_VCARD_UPDATE).text(hash)),
        ));
        Flow::Pass
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn sha1_hex(data: &[u8]) -> String {
        use sha1::Digest;
        hex(&sha1::Sha1::digest(data))
    }

    fn read_vcard(server: &Server, bare: &str) -> Element {
        let scope = [(String::new(), NS_CLIENT.to_owned())];
        let limits = Limits {
            max_stanza_bytes: usize::MAX,
            ..Default::default()
        };
        server
            .storage
            .doc(crate::storage::VCARD, bare.as_bytes())
            .ok()
            .flatten()
            .and_then(|x| crate::xml::parse_element(x.as_bytes(), &scope, &limits).ok())
            .unwrap_or_else(|| Element::new("vCard", NS_VCARD))
    }

    /// The metadata node got an item: the vCard's PHOTO follows it.
    pub async fn metadata_published(server: &Server, owner: &str, metadata: &Element) {
        // §3: the info that points at the data node (no url).
        let info = metadata
            .elements()
            .find(|e| e.is("info", AVATAR_METADATA) && e.get_attr("url").is_none());
        let mut vcard = read_vcard(server, owner);
        vcard.remove_children("PHOTO", NS_VCARD);
        let hash = match info {
            Some(info) => {
                let Some(id) = info.get_attr("id") else {
                    return;
                };
                let Some(data) = server
                    .storage
                    .pep_item(owner, AVATAR_DATA, id)
                    .ok()
                    .flatten()
                    .as_deref()
                    .and_then(parse_stored)
                else {
                    return;
                };
                let b64: String = data
                    .get_child("data", AVATAR_DATA)
                    .map(|d| d.text_content())
                    .unwrap_or_default()
                    .split_ascii_whitespace()
                    .collect();
                let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&b64) else {
                    return;
                };
                // §3: the id is the SHA-1 of the image.
                if sha1_hex(&bytes) != id.to_ascii_lowercase() {
                    return;
                }
                let mime = info.get_attr("type").unwrap_or("image/png");
                vcard.children.push(crate::xml::Node::Element(
                    Element::new("PHOTO", NS_VCARD)
                        .child(Element::new("TYPE", NS_VCARD).text(mime))
                        .child(Element::new("BINVAL", NS_VCARD).text(b64)),
                ));
                Some(id.to_ascii_lowercase())
            }
            None => None,
        };
        let xml = vcard.to_stream_xml(NS_CLIENT);
        if let Err(e) = server
            .storage
            .put_doc(crate::storage::VCARD, owner.as_bytes().to_vec(), xml)
            .await
        {
            tracing::debug!(error = %e, "could not update the vCard from the PEP avatar");
            return;
        }
        let _ = server.storage.set_avatar_hash(owner, hash.as_deref()).await;
    }

    /// A vCard was stored by its owner: its PHOTO becomes the PEP avatar
    /// (data, then metadata), or its absence removes it.
    pub async fn vcard_set(server: &Server, owner: &str, vcard: &Element) {
        let photo = vcard.get_child("PHOTO", NS_VCARD);
        let current = server.storage.avatar_hash(owner).ok().flatten();
        let Some(photo) = photo else {
            if current.is_some() {
                let _ = server.storage.set_avatar_hash(owner, None).await;
                let publish = Element::new("publish", NS_PUBSUB)
                    .attr("node", AVATAR_METADATA)
                    .child(
                        Element::new("item", NS_PUBSUB)
                            .attr("id", "current")
                            .child(Element::new("metadata", AVATAR_METADATA)),
                    );
                let _ = super::publish(server, owner, &publish, None, false).await;
            }
            return;
        };
        let b64: String = photo
            .child_text("BINVAL", NS_VCARD)
            .unwrap_or_default()
            .split_ascii_whitespace()
            .collect();
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&b64) else {
            return;
        };
        if bytes.is_empty() {
            return;
        }
        let hash = sha1_hex(&bytes);
        if current.as_deref() == Some(hash.as_str()) {
            return;
        }
        let mime = photo
            .child_text("TYPE", NS_VCARD)
            .unwrap_or_else(|| "image/png".into());
        let data = Element::new("publish", NS_PUBSUB)
            .attr("node", AVATAR_DATA)
            .child(
                Element::new("item", NS_PUBSUB)
                    .attr("id", hash.as_str())
                    .child(Element::new("data", AVATAR_DATA).text(b64)),
            );
        if super::publish(server, owner, &data, None, false)
            .await
            .is_err()
        {
            return;
        }
        let meta = Element::new("publish", NS_PUBSUB)
            .attr("node", AVATAR_METADATA)
            .child(
                Element::new("item", NS_PUBSUB)
                    .attr("id", hash.as_str())
                    .child(
                        Element::new("metadata", AVATAR_METADATA).child(
                            Element::new("info", AVATAR_METADATA)
                                .attr("id", hash.as_str())
                                .attr("bytes", bytes.len().to_string())
                                .attr("type", mime),
                        ),
                    ),
            );
        if super::publish(server, owner, &meta, None, false)
            .await
            .is_ok()
        {
            let _ = server.storage.set_avatar_hash(owner, Some(&hash)).await;
        }
    }
}

// ------------------------------------------------------------ XEP-0049 bridge

pub mod bookmarks {
    //! XEP-0048 bookmarks kept through XEP-0049 private storage live in
    //! the PEP node `storage:bookmarks` (XEP-0223, as XEP-0048 §3 says
    //! servers should), so clients of either kind see the same list.

    use super::*;

    pub const NS_BOOKMARKS: &str = "storage:bookmarks";

    /// Whether private storage of `el` goes to PEP instead.
    pub fn bridged(el: &Element) -> bool {
        el.is("storage", NS_BOOKMARKS)
    }

    /// Publish-options (XEP-0060 §7.1.5) with these fields.
    fn publish_options(fields: &[(&str, &str)]) -> Element {
        let field = |var: &str, v: &str| {
            Element::new("field", NS_DATA)
                .attr("var", var)
                .child(Element::new("value", NS_DATA).text(v))
        };
        let mut x = Element::new("x", NS_DATA).attr("type", "submit").child(
            Element::new("field", NS_DATA)
                .attr("var", "FORM_TYPE")
                .attr("type", "hidden")
                .child(Element::new("value", NS_DATA).text(PUBLISH_OPTIONS)),
        );
        for (var, v) in fields {
            x = x.child(field(var, v));
        }
        Element::new("publish-options", NS_PUBSUB).child(x)
    }

    /// XEP-0223's options for private data.
    fn options() -> Element {
        publish_options(&[
            ("pubsub#persist_items", "true"),
            ("pubsub#access_model", "whitelist"),
            ("pubsub#send_last_published_item", "never"),
        ])
    }

    pub const NS_BOOKMARKS2: &str = "urn:xmpp:bookmarks:1";

    /// The options XEP-0402 §3 publishes with.
    fn options2() -> Element {
        publish_options(&[
            ("pubsub#persist_items", "true"),
            ("pubsub#max_items", "max"),
            ("pubsub#send_last_published_item", "never"),
            ("pubsub#access_model", "whitelist"),
        ])
    }

    /// The payloads of a node's items, by id, oldest first.
    fn payloads(server: &Server, owner: &str, node: &str) -> Vec<(String, Element)> {
        let Ok(Some((_, rec))) = server.storage.pep_node(owner, node) else {
            return Vec::new();
        };
        rec.items
            .iter()
            .filter_map(|id| {
                let item = server.storage.pep_item(owner, node, id).ok()??;
                let payload = parse_stored(&item)?.elements().next()?.clone();
                Some((id.clone(), payload))
            })
            .collect()
    }

    /// A client changed one of the two bookmark stores through PEP (a
    /// publish or retract of `op`): the other follows (XEP-0402 §5,
    /// `#compat` and `#compat-pep`).
    pub async fn after_change(server: &Server, owner: &str, op: &Element) {
        match op.get_attr("node") {
            Some(NS_BOOKMARKS2) => to_legacy(server, owner).await,
            Some(NS_BOOKMARKS) if op.name == "publish" => {
                if let Some(storage) = load(server, owner).ok().flatten() {
                    from_legacy(server, owner, &storage).await;
                }
            }
            _ => {}
        }
    }

    /// The XEP-0402 items, cast into one `storage:bookmarks` item.
    async fn to_legacy(server: &Server, owner: &str) {
        let mut storage = Element::new("storage", NS_BOOKMARKS);
        for (jid, conf) in payloads(server, owner, NS_BOOKMARKS2) {
            if !conf.is("conference", NS_BOOKMARKS2) {
                continue;
            }
            let mut c = Element::new("conference", NS_BOOKMARKS).attr("jid", jid);
            for a in ["name", "autojoin"] {
                if let Some(v) = conf.get_attr(a) {
                    c.set_attr(a, v);
                }
            }
            for child in ["nick", "password"] {
                if let Some(t) = conf.child_text(child, NS_BOOKMARKS2) {
                    c = c.child(Element::new(child, NS_BOOKMARKS).text(t));
                }
            }
            storage = storage.child(c);
        }
        if let Err(e) = write_legacy(server, owner, &storage).await {
            tracing::debug!(condition = ?e.condition, "could not convert bookmarks to XEP-0048");
        }
    }

    /// A `storage:bookmarks` list, cast into XEP-0402 items: changed ones
    /// published, missing ones retracted (with notifications).
    async fn from_legacy(server: &Server, owner: &str, storage: &Element) {
        let current = payloads(server, owner, NS_BOOKMARKS2);
        let mut listed = Vec::new();
        for c in storage
            .elements()
            .filter(|e| e.is("conference", NS_BOOKMARKS))
        {
            let Some(jid) = c.get_attr("jid").filter(|j| !j.is_empty()) else {
                continue;
            };
            listed.push(jid.to_owned());
            let old = current.iter().find(|(id, _)| id == jid).map(|(_, p)| p);
            let mut conf = Element::new("conference", NS_BOOKMARKS2);
            for a in ["name", "autojoin"] {
                if let Some(v) = c.get_attr(a) {
                    conf.set_attr(a, v);
                }
            }
            for child in ["nick", "password"] {
                if let Some(t) = c.child_text(child, NS_BOOKMARKS) {
                    conf = conf.child(Element::new(child, NS_BOOKMARKS2).text(t));
                }
            }
            // §3: what only XEP-0402 clients know is kept.
            if let Some(ext) = old.and_then(|o| o.get_child("extensions", NS_BOOKMARKS2)) {
                conf = conf.child(ext.clone());
            }
            if old == Some(&conf) {
                continue;
            }
            let publish = Element::new("publish", NS_PUBSUB)
                .attr("node", NS_BOOKMARKS2)
                .child(Element::new("item", NS_PUBSUB).attr("id", jid).child(conf));
            if let Err(e) = super::publish(server, owner, &publish, Some(&options2()), false).await
            {
                tracing::debug!(condition = ?e.condition, "could not convert a bookmark to XEP-0402");
                return;
            }
        }
        let gone: Vec<&String> = current
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !listed.contains(id))
            .collect();
        if gone.is_empty() {
            return;
        }
        let mut retract = Element::new("retract", NS_PUBSUB)
            .attr("node", NS_BOOKMARKS2)
            .attr("notify", "true");
        for id in gone {
            retract = retract.child(Element::new("item", NS_PUBSUB).attr("id", id.as_str()));
        }
        let _ = super::retract(server, owner, &retract).await;
    }

    /// A private-storage set of `<storage xmlns='storage:bookmarks'/>`.
    pub async fn store(server: &Server, owner: &str, storage: &Element) -> Result<(), StanzaError> {
        write_legacy(server, owner, storage).await?;
        from_legacy(server, owner, storage).await;
        Ok(())
    }

    /// Publishes the `storage:bookmarks` item.
    async fn write_legacy(
        server: &Server,
        owner: &str,
        storage: &Element,
    ) -> Result<(), StanzaError> {
        let publish = Element::new("publish", NS_PUBSUB)
            .attr("node", NS_BOOKMARKS)
            .child(
                Element::new("item", NS_PUBSUB)
                    .attr("id", "current")
                    .child(storage.clone()),
            );
        // The node may have been made with other options (a client's):
        // what matters is that the list stays private.
        match super::publish(server, owner, &publish, Some(&options()), false).await {
            Ok(_) => Ok(()),
            Err(e) if e.condition == Condition::Conflict => {
                let private =
                    server
                        .storage
                        .pep_node(owner, NS_BOOKMARKS)?
                        .is_some_and(|(_, n)| {
                            NodeConfig::decode(&n.config).access == Access::Whitelist
                        });
                if !private {
                    return Err(e);
                }
                super::publish(server, owner, &publish, None, false)
                    .await
                    .map(drop)
            }
            Err(e) => Err(e),
        }
    }

    /// A private-storage get: the latest item of the PEP node, if any.
    pub fn load(server: &Server, owner: &str) -> Result<Option<Element>, StanzaError> {
        let Some((_, rec)) = server.storage.pep_node(owner, NS_BOOKMARKS)? else {
            return Ok(None);
        };
        let Some(last) = rec.items.last() else {
            return Ok(None);
        };
        Ok(server
            .storage
            .pep_item(owner, NS_BOOKMARKS, last)?
            .as_deref()
            .and_then(parse_stored)
            .and_then(|item| item.get_child("storage", NS_BOOKMARKS).cloned()))
    }
}
