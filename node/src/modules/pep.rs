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
//! The same code serves the generic XEP-0060 service of every served
//! domain (`pubsub.<domain>`, [`crate::services::pubsub`]): a [`Svc`]
//! names the service (an account, or a service JID with its domain), and
//! a node's owners are then the JIDs its affiliations name. Explicit
//! subscriptions (`user_pep_sub`, with SubIDs and options) and
//! affiliations work on both; on a PEP node they add to the implicit,
//! presence-based ones.
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
use crate::storage::{
    AVATAR_HASH, NodeWrite, PEP_ITEM, PEP_NODE, PEP_SUB, PEP_TEMP, PepChange, PepNode, PepSub,
    RosterItem,
};
use crate::xml::{Element, Limits};
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
pub const NS_DATA: &str = "jabber:x:data";
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
    spec: "XEP-0163, XEP-0060 (also pubsub.<domain>), XEP-0084, XEP-0398, XEP-0223, XEP-0402, XEP-0172",
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
        // XEP-0060 §9: an account that is a virtual pubsub service says so.
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#pubsub-on-a-jid",
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
            var: "http://jabber.org/protocol/pubsub#retrieve-subscriptions",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#rsm",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#shim",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#retrieve-affiliations",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#subscribe",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#subscription-options",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#manage-subscriptions",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#modify-affiliations",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#member-affiliation",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#outcast-affiliation",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#publisher-affiliation",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#publish-only-affiliation",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#multi-subscribe",
            when: None,
        },
        AccountFeature {
            var: "http://jabber.org/protocol/pubsub#retrieve-default-sub",
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
        node_items: disco_node_items,
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
    spaces: &[PEP_NODE, PEP_ITEM, PEP_SUB, PEP_TEMP, AVATAR_HASH],
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
    /// Subscriptions wait for an owner's approval (generic nodes only).
    Authorize,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Presence => "presence",
            Access::Roster => "roster",
            Access::Whitelist => "whitelist",
            Access::Authorize => "authorize",
        }
    }
    fn parse(s: &str) -> Option<Access> {
        Some(match s {
            "open" => Access::Open,
            "presence" => Access::Presence,
            "roster" => Access::Roster,
            "whitelist" => Access::Whitelist,
            "authorize" => Access::Authorize,
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
    /// `pubsub#publish_model` (a PEP node's is always `publishers`).
    pub publish_model: PublishModel,
    /// `pubsub#subscribe`: whether entities may subscribe.
    pub subscribe: bool,
    /// `pubsub#notify_config`: subscribers hear of configuration changes.
    pub notify_config: bool,
    /// `pubsub#notify_sub`: owners hear of subscriptions and unsubscriptions.
    pub notify_sub: bool,
    /// `pubsub#presence_based_delivery`: notifications only to subscribers
    /// that are available (none kept for later).
    pub presence_based_delivery: bool,
    /// `pubsub#item_expire`: items go this many seconds after they were
    /// published (`None`: never).
    pub item_expire: Option<u64>,
    /// Who created the node and when (XEP-0082), for its meta-data.
    pub creator: String,
    pub created: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PublishModel {
    #[default]
    Publishers,
    Subscribers,
    Open,
}

impl PublishModel {
    fn as_str(self) -> &'static str {
        match self {
            PublishModel::Publishers => "publishers",
            PublishModel::Subscribers => "subscribers",
            PublishModel::Open => "open",
        }
    }
}

/// Why a configuration field was refused: a bad value (`<not-acceptable/>`)
/// or an option this service does not offer (`<feature-not-implemented/>`
/// with `<unsupported feature='…'/>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Invalid,
    Unsupported(&'static str),
    /// An access model this service does not offer (§8.1.3).
    AccessModel,
}

impl From<()> for Refused {
    fn from((): ()) -> Self {
        Refused::Invalid
    }
}

impl Refused {
    fn into_error(self) -> StanzaError {
        match self {
            Refused::Invalid => Condition::NotAcceptable.into(),
            Refused::Unsupported(f) => unsupported(f),
            Refused::AccessModel => app(Condition::NotAcceptable, "unsupported-access-model"),
        }
    }
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
            publish_model: PublishModel::Publishers,
            subscribe: true,
            notify_config: false,
            notify_sub: false,
            presence_based_delivery: false,
            item_expire: None,
            creator: String::new(),
            created: String::new(),
        }
    }
}

impl NodeConfig {
    /// A new node's configuration on `svc`: XEP-0163 §5's for PEP, the
    /// XEP-0060 §16.4.4 defaults (open access, as many items as the
    /// service keeps, no last item sent) for a generic service.
    pub fn default_for(svc: Svc<'_>) -> NodeConfig {
        if svc.generic.is_none() {
            return NodeConfig::default();
        }
        NodeConfig {
            access: Access::Open,
            max_items: None,
            send_last: SendLast::Never,
            ..NodeConfig::default()
        }
    }

    /// Whether an item published at `at` (Unix milliseconds; `None`:
    /// before items were stamped) has expired at `now`.
    fn expired(&self, at: Option<u64>, now: u64) -> bool {
        matches!((self.item_expire, at),
            (Some(e), Some(t)) if t.saturating_add(e.saturating_mul(1000)) <= now)
    }

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

    /// Sets one field from a submitted form; `Err` for an unknown field,
    /// a value of the wrong type or an option `svc` does not offer.
    /// `cap`: `[pep] max_items`, the most a node may be set to keep.
    fn set(
        &mut self,
        var: &str,
        values: &[String],
        cap: usize,
        svc: Svc<'_>,
    ) -> Result<(), Refused> {
        let generic = svc.generic.is_some();
        let one = || values.first().map(|v| v.trim()).ok_or(());
        let boolean = || match one()? {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            _ => Err(()),
        };
        match var {
            "pubsub#access_model" => match one()? {
                "authorize" if !generic => return Err(Refused::AccessModel),
                m => self.access = Access::parse(m).ok_or(())?,
            },
            "pubsub#roster_groups_allowed" => self.roster_groups = values.to_vec(),
            "pubsub#max_items" => {
                self.max_items = match one()? {
                    "max" => None,
                    n => {
                        let n: usize = n.parse().map_err(|_| ())?;
                        if n == 0 || n > cap {
                            return Err(Refused::Invalid);
                        }
                        Some(n)
                    }
                }
            }
            "pubsub#persist_items" => self.persist_items = boolean()?,
            "pubsub#send_last_published_item" => {
                self.send_last = SendLast::parse(one()?).ok_or(())?;
                // A generic node sends it on subscription only: it does not
                // follow its subscribers' presence.
                if generic && self.send_last == SendLast::OnSubAndPresence {
                    return Err(Refused::Invalid);
                }
            }
            "pubsub#deliver_notifications" => self.deliver_notifications = boolean()?,
            "pubsub#deliver_payloads" => self.deliver_payloads = boolean()?,
            "pubsub#notify_retract" => self.notify_retract = boolean()?,
            "pubsub#notify_delete" => self.notify_delete = boolean()?,
            "pubsub#notification_type" => {
                let t = one()?;
                if t != "headline" && t != "normal" {
                    return Err(Refused::Invalid);
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
                        _ => return Err(Refused::Invalid),
                    },
                };
            }
            // PEP has one publisher, the owner (XEP-0163 §2.2).
            "pubsub#publish_model" => {
                self.publish_model = match one()? {
                    "publishers" => PublishModel::Publishers,
                    "subscribers" if generic => PublishModel::Subscribers,
                    "open" if generic => PublishModel::Open,
                    _ => return Err(Refused::Invalid),
                }
            }
            "pubsub#subscribe" if generic => self.subscribe = boolean()?,
            "pubsub#node_type" if generic => {
                if one()? != "leaf" {
                    return Err(Refused::Unsupported("collections"));
                }
            }
            // XEP-0248's fields: only "none of that" is taken.
            "pubsub#collection"
            | "pubsub#children"
            | "pubsub#children_association_policy"
            | "pubsub#children_association_whitelist"
            | "pubsub#children_max" => {
                if values.iter().any(|v| !v.trim().is_empty()) {
                    return Err(Refused::Unsupported("collections"));
                }
            }
            // Registered fields that change nothing here: taken, not kept.
            "pubsub#body_xslt" | "pubsub#dataform_xslt" | "pubsub#contact" | "pubsub#language"
                if generic => {}
            "pubsub#itemreply" if generic => {
                if !matches!(one()?, "owner" | "publisher") {
                    return Err(Refused::Invalid);
                }
            }
            // Seconds; 0 or empty: never.
            "pubsub#item_expire" => {
                self.item_expire = match values.first().map(|v| v.trim()) {
                    None | Some("" | "0") => None,
                    Some(v) => Some(v.parse::<u64>().map_err(|_| ())?),
                }
            }
            // What this service never does may be asked not to be done.
            "pubsub#notify_config" if generic => self.notify_config = boolean()?,
            "pubsub#notify_sub" if generic => self.notify_sub = boolean()?,
            "pubsub#presence_based_delivery" if generic => {
                self.presence_based_delivery = boolean()?
            }
            "pubsub#purge_offline" if generic => {
                if boolean()? {
                    return Err(Refused::Invalid);
                }
            }
            _ => return Err(Refused::Invalid),
        }
        Ok(())
    }

    /// The configuration as a data form (`form` or `result`).
    fn form(&self, kind: &str, svc: Svc<'_>) -> Element {
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
        let expire = self.item_expire.map_or_else(String::new, |n| n.to_string());
        let groups: Vec<&str> = self.roster_groups.iter().map(String::as_str).collect();
        let mut x = Element::new("x", NS_DATA)
            .attr("type", kind)
            .child(field("FORM_TYPE", "hidden", &[NODE_CONFIG]))
            .child(options(
                field(
                    "pubsub#access_model",
                    "list-single",
                    &[self.access.as_str()],
                ),
                if svc.generic.is_some() {
                    &["authorize", "open", "presence", "roster", "whitelist"]
                } else {
                    &["open", "presence", "roster", "whitelist"]
                },
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
                if svc.generic.is_some() {
                    &["never", "on_sub"]
                } else {
                    &["never", "on_sub", "on_sub_and_presence"]
                },
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
            .child(field("pubsub#item_expire", "text-single", &[&expire]))
            .child(if svc.generic.is_some() {
                options(
                    field(
                        "pubsub#publish_model",
                        "list-single",
                        &[self.publish_model.as_str()],
                    ),
                    &["publishers", "subscribers", "open"],
                )
            } else {
                options(
                    field("pubsub#publish_model", "list-single", &["publishers"]),
                    &["publishers"],
                )
            });
        if svc.generic.is_some() {
            x = x
                .child(field("pubsub#subscribe", "boolean", &[b(self.subscribe)]))
                .child(field(
                    "pubsub#notify_config",
                    "boolean",
                    &[b(self.notify_config)],
                ))
                .child(field("pubsub#notify_sub", "boolean", &[b(self.notify_sub)]))
                .child(field(
                    "pubsub#presence_based_delivery",
                    "boolean",
                    &[b(self.presence_based_delivery)],
                ))
                .child(options(
                    field("pubsub#node_type", "list-single", &["leaf"]),
                    &["leaf"],
                ));
        }
        x
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

// ------------------------------------------------------------ services

/// A publish-subscribe service: an account's PEP service (XEP-0163) or
/// the generic service of a served domain (`pubsub.<domain>`). Its JID
/// keys its nodes in the store and is where its notifications come from.
#[derive(Clone, Copy, Debug)]
pub struct Svc<'a> {
    pub jid: &'a str,
    /// For a generic service: the served domain it belongs to.
    pub generic: Option<&'a str>,
}

impl<'a> Svc<'a> {
    pub fn pep(owner: &'a str) -> Self {
        Svc {
            jid: owner,
            generic: None,
        }
    }
}

/// A request to a service and who sent it.
pub struct Req<'a> {
    pub server: &'a Server,
    pub svc: Svc<'a>,
    /// The requester's bare and full JIDs.
    pub bare: &'a str,
    pub full: &'a str,
}

/// XEP-0060 §4.1 affiliations, least first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Aff {
    Outcast,
    None,
    Member,
    PublishOnly,
    Publisher,
    Owner,
}

impl Aff {
    fn as_str(self) -> &'static str {
        match self {
            Aff::Outcast => "outcast",
            Aff::None => "none",
            Aff::Member => "member",
            Aff::PublishOnly => "publish-only",
            Aff::Publisher => "publisher",
            Aff::Owner => "owner",
        }
    }
    fn parse(s: &str) -> Option<Aff> {
        Some(match s {
            "outcast" => Aff::Outcast,
            "none" => Aff::None,
            "member" => Aff::Member,
            "publish-only" => Aff::PublishOnly,
            "publisher" => Aff::Publisher,
            "owner" => Aff::Owner,
            _ => return None,
        })
    }
}

fn is_admin(server: &Server, svc: Svc<'_>, who: &str) -> bool {
    svc.generic.is_some() && server.config.pubsub.admins.iter().any(|a| a == who)
}

/// `who`'s affiliation with a node of `svc` (record `rec`): a PEP
/// service's account and a generic service's admins own every node.
fn affiliation(server: &Server, svc: Svc<'_>, rec: &PepNode, who: &str) -> Aff {
    if (svc.generic.is_none() && who == svc.jid) || is_admin(server, svc, who) {
        return Aff::Owner;
    }
    rec.affiliations
        .iter()
        .find(|(j, _)| j == who)
        .and_then(|(_, a)| Aff::parse(a))
        .unwrap_or(Aff::None)
}

/// The owners of a node: whose rosters the `presence` and `roster`
/// access models consult.
fn owners<'a>(svc: Svc<'a>, rec: &'a PepNode) -> impl Iterator<Item = &'a str> {
    let pep = svc.generic.is_none().then_some(svc.jid);
    pep.into_iter().chain(
        rec.affiliations
            .iter()
            .filter(|(_, a)| a == "owner")
            .map(|(j, _)| j.as_str()),
    )
}

/// Whether `who` may create nodes on `svc`: on a PEP service its account;
/// on a generic one as `[pubsub] create` says.
pub fn may_create(server: &Server, svc: Svc<'_>, who: &str) -> bool {
    let Some(parent) = svc.generic else {
        return who == svc.jid;
    };
    if is_admin(server, svc, who) {
        return true;
    }
    let domain = who.rsplit_once('@').map(|(_, d)| d);
    match server.config.pubsub.create {
        crate::config::PubsubCreate::Domain => domain == Some(parent),
        crate::config::PubsubCreate::Server => domain.is_some_and(|d| server.config.serves(d)),
        crate::config::PubsubCreate::Admins => false,
    }
}

// ------------------------------------------------------------ access

/// Whether `requester` may see a node (its items and metadata) and
/// subscribe to it (XEP-0060 §4.5, §6.1.3, §6.5.9).
fn may_read(
    server: &Server,
    svc: Svc<'_>,
    node: &str,
    rec: &PepNode,
    requester: &str,
    cfg: &NodeConfig,
) -> Result<(), StanzaError> {
    match affiliation(server, svc, rec, requester) {
        Aff::Owner | Aff::Publisher | Aff::Member => return Ok(()),
        Aff::Outcast | Aff::PublishOnly => return Err(Condition::Forbidden.into()),
        Aff::None => {}
    }
    match cfg.access {
        Access::Open => Ok(()),
        Access::Presence => {
            for o in owners(svc, rec) {
                if server
                    .storage
                    .roster_item(o, requester)?
                    .is_some_and(|i| i.subscription.from())
                {
                    return Ok(());
                }
            }
            Err(app(
                Condition::NotAuthorized,
                "presence-subscription-required",
            ))
        }
        Access::Roster => {
            for o in owners(svc, rec) {
                if server
                    .storage
                    .roster_item(o, requester)?
                    .is_some_and(|i| in_groups(&i, cfg))
                {
                    return Ok(());
                }
            }
            Err(app(Condition::NotAuthorized, "not-in-roster-group"))
        }
        Access::Whitelist => Err(app(Condition::NotAllowed, "closed-node")),
        // §6.5.9.3: only approved subscribers (a pending one is not yet).
        Access::Authorize => {
            let approved = server
                .storage
                .pep_service_subs_of_node_bare(svc.jid, node, requester)?
                .iter()
                .any(|s| !s.pending);
            if approved {
                Ok(())
            } else {
                Err(app(Condition::NotAuthorized, "not-subscribed"))
            }
        }
    }
}

/// Whether the requester may publish to a node (XEP-0060 §7.1.3.1 and
/// `pubsub#publish_model`).
fn may_publish(
    req: &Req<'_>,
    node: &str,
    rec: &PepNode,
    cfg: &NodeConfig,
) -> Result<(), StanzaError> {
    let a = affiliation(req.server, req.svc, rec, req.bare);
    let ok = match cfg.publish_model {
        PublishModel::Publishers => a >= Aff::PublishOnly,
        PublishModel::Open => a != Aff::Outcast,
        PublishModel::Subscribers => {
            a >= Aff::PublishOnly
                || (a != Aff::Outcast
                    && req
                        .server
                        .storage
                        .pep_subs(req.svc.jid, node)?
                        .iter()
                        .any(|s| crate::stanza::split(&s.jid).0 == req.bare))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Condition::Forbidden.into())
    }
}

/// The node owner's rights, else `<forbidden/>`.
fn must_own(req: &Req<'_>, rec: &PepNode) -> Result<(), StanzaError> {
    if affiliation(req.server, req.svc, rec, req.bare) == Aff::Owner {
        Ok(())
    } else {
        Err(Condition::Forbidden.into())
    }
}

/// A node that does not exist: `<item-not-found/>` (XEP-0060), except to
/// whom may not touch another account's PEP service at all.
fn no_node(req: &Req<'_>) -> StanzaError {
    if req.svc.generic.is_none() && req.bare != req.svc.jid {
        return Condition::Forbidden.into();
    }
    Condition::ItemNotFound.into()
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
        Access::Whitelist | Access::Authorize => false,
    }
}

// ------------------------------------------------------------ discovery

/// XEP-0060 §5.2: the nodes of `owner` that `requester` may see.
fn disco_items(server: &Server, owner: &str, requester: &str) -> Vec<Element> {
    node_list(server, Svc::pep(owner), requester)
}

/// XEP-0060 §5.2: the nodes of `svc` that `requester` may see.
pub fn node_list(server: &Server, svc: Svc<'_>, requester: &str) -> Vec<Element> {
    let Ok(nodes) = server.storage.pep_nodes(svc.jid) else {
        return Vec::new();
    };
    nodes
        .into_iter()
        .filter_map(|(node, rec)| {
            let cfg = NodeConfig::decode(&rec.config);
            // A node one subscribes to with approval is listed to all
            // (but its outcasts).
            if cfg.access == Access::Authorize {
                if affiliation(server, svc, &rec, requester) == Aff::Outcast {
                    return None;
                }
            } else {
                may_read(server, svc, &node, &rec, requester, &cfg).ok()?;
            }
            let mut item = Element::new("item", super::disco::NS_ITEMS)
                .attr("jid", svc.jid)
                .attr("node", node);
            if !cfg.title.is_empty() {
                item.set_attr("name", cfg.title.as_str());
            }
            Some(item)
        })
        .collect()
}

/// XEP-0060 §5.5: the items of a node as disco items (their ids).
pub fn node_item_list(
    server: &Server,
    svc: Svc<'_>,
    requester: &str,
    node: &str,
) -> Option<Vec<Element>> {
    let (_, rec) = server.storage.pep_node(svc.jid, node).ok()??;
    let cfg = NodeConfig::decode(&rec.config);
    may_read(server, svc, node, &rec, requester, &cfg).ok()?;
    let expired = expired_count(server, svc.jid, node, &rec, &cfg).ok()?;
    Some(
        rec.items[expired..]
            .iter()
            .map(|id| {
                Element::new("item", super::disco::NS_ITEMS)
                    .attr("jid", svc.jid)
                    .attr("name", id.as_str())
            })
            .collect(),
    )
}

fn disco_node_items(
    server: &Server,
    owner: &str,
    requester: &str,
    node: &str,
) -> Option<Vec<Element>> {
    node_item_list(server, Svc::pep(owner), requester, node)
}

fn disco_node_info(
    server: &Server,
    owner: &str,
    requester: &str,
    node: &str,
) -> Option<Vec<Element>> {
    node_info(server, Svc::pep(owner), requester, node)
}

/// XEP-0060 §5.3 and §5.4: a node's identity (a leaf) and its metadata
/// (`pubsub#meta-data`).
pub fn node_info(
    server: &Server,
    svc: Svc<'_>,
    requester: &str,
    node: &str,
) -> Option<Vec<Element>> {
    let (_, rec) = server.storage.pep_node(svc.jid, node).ok()??;
    let cfg = NodeConfig::decode(&rec.config);
    // On a generic service a node's information is public (but to its
    // outcasts): a client looks at it before it asks to subscribe, and
    // must then learn why it may not (XEP-0060 §6.1.3).
    match svc.generic {
        Some(_) => {
            if affiliation(server, svc, &rec, requester) == Aff::Outcast {
                return None;
            }
        }
        None => may_read(server, svc, node, &rec, requester, &cfg).ok()?,
    }
    let info = super::disco::NS_INFO;
    let field = |var: &str, value: &str| {
        Element::new("field", NS_DATA)
            .attr("var", var)
            .child(Element::new("value", NS_DATA).text(value))
    };
    let jids = |var: &str, list: &mut dyn Iterator<Item = &str>| {
        let mut f = Element::new("field", NS_DATA)
            .attr("var", var)
            .attr("type", "jid-multi");
        for j in list {
            f = f.child(Element::new("value", NS_DATA).text(j));
        }
        f
    };
    // §5.4: the configured options, and what is known about the node.
    let mut meta = Element::new("x", NS_DATA).attr("type", "result").child(
        field("FORM_TYPE", "http://jabber.org/protocol/pubsub#meta-data").attr("type", "hidden"),
    );
    for f in cfg.form("result", svc).elements() {
        if f.get_attr("var") == Some("FORM_TYPE") {
            continue;
        }
        let mut f = f.clone();
        f.remove_children("option", NS_DATA);
        meta = meta.child(f);
    }
    meta = meta
        .child(jids("pubsub#owner", &mut owners(svc, &rec)))
        .child(jids(
            "pubsub#publisher",
            &mut rec
                .affiliations
                .iter()
                .filter(|(_, a)| a == "publisher")
                .map(|(j, _)| j.as_str()),
        ))
        .child(field(
            "pubsub#num_subscribers",
            &server
                .storage
                .pep_sub_count(svc.jid, node)
                .unwrap_or_default()
                .to_string(),
        ));
    if !cfg.creator.is_empty() {
        meta = meta
            .child(field("pubsub#creator", &cfg.creator).attr("type", "jid-single"))
            .child(field("pubsub#creation_date", &cfg.created));
    }
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
        // Only the account manages its PEP nodes.
        if ctx.payload.ns == NS_OWNER && owner != ctx.origin.bare {
            return Err(Condition::Forbidden.into());
        }
        let req = Req {
            server: ctx.server,
            svc: Svc::pep(owner),
            bare: ctx.origin.bare,
            full: ctx.origin.full,
        };
        dispatch(&req, ctx.payload, ctx.set).await
    }
    .boxed()
}

/// Answers a `<pubsub/>` request (either namespace) to a service.
pub async fn dispatch(req: &Req<'_>, payload: &Element, set: bool) -> IqResult {
    let children: Vec<&Element> = payload.elements().collect();
    // The operation; in the pubsub namespace, `publish-options`,
    // `configure` and `options` only qualify a `publish`, `create` or
    // `subscribe` beside them.
    let op = children.iter().find(|e| {
        e.ns != crate::rsm::NS_RSM
            && (payload.ns == NS_OWNER
                || !matches!(e.name.as_str(), "publish-options" | "configure" | "options"))
    });
    let Some(first) = op.or(children.first()).copied() else {
        return Err(Condition::BadRequest.into());
    };
    if first.ns != payload.ns {
        return Err(Condition::BadRequest.into());
    }
    let sibling = |name: &str| {
        children
            .iter()
            .find(|e| e.is(name, NS_PUBSUB) && !std::ptr::eq(**e, first))
            .copied()
    };
    if payload.ns == NS_OWNER {
        return match (first.name.as_str(), set) {
            ("configure", false) => configure_get(req, first).await,
            ("configure", true) => configure_set(req, first).await,
            ("delete", true) => delete(req, first).await,
            ("purge", true) => purge(req, first).await,
            ("default", false) => Ok(Element::new("pubsub", NS_OWNER)
                .child(
                    Element::new("default", NS_OWNER)
                        .child(NodeConfig::default_for(req.svc).form("form", req.svc)),
                )
                .into()),
            ("subscriptions", false) => owner_subscriptions(req, first).await,
            ("subscriptions", true) => owner_subscriptions_set(req, first).await,
            ("affiliations", false) => owner_affiliations(req, first).await,
            ("affiliations", true) => owner_affiliations_set(req, first).await,
            ("delete" | "purge", false) | ("default", true) => Err(Condition::BadRequest.into()),
            _ => Err(Condition::FeatureNotImplemented.into()),
        };
    }
    let pep = req.svc.generic.is_none();
    match (first.name.as_str(), set) {
        ("publish", true) => {
            let r = publish_in(req, first, sibling("publish-options"), true).await?;
            if pep {
                bookmarks::after_change(req.server, req.svc.jid, first).await;
            }
            Ok(r)
        }
        ("retract", true) => {
            let r = retract_in(req, first).await?;
            if pep {
                bookmarks::after_change(req.server, req.svc.jid, first).await;
            }
            Ok(r)
        }
        ("create", true) => create(req, first, sibling("configure")).await,
        ("items", false) => {
            let rsm = children
                .iter()
                .find(|e| e.is("set", crate::rsm::NS_RSM))
                .map(|s| crate::rsm::Request::parse(s))
                .transpose()?;
            items(req, first, rsm).await
        }
        ("subscribe", true) => subscribe(req, first, sibling("options")).await,
        ("unsubscribe", true) => unsubscribe(req, first).await,
        ("options", false) => options_get(req, first).await,
        ("options", true) => options_set(req, first).await,
        ("subscriptions", false) => my_subscriptions(req, first).await,
        ("affiliations", false) => my_affiliations(req, first).await,
        ("default", false) => default_sub_options(req, first).await,
        ("publish" | "retract" | "create" | "subscribe" | "unsubscribe", false)
        | ("items" | "subscriptions" | "affiliations" | "default", true) => {
            Err(Condition::BadRequest.into())
        }
        _ => Err(Condition::FeatureNotImplemented.into()),
    }
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

/// The attribute of a stored item that says when it was published (Unix
/// milliseconds), for `pubsub#item_expire` and the last item's delay; never
/// shown (see [`stored_item`]).
const STORED_AT: &str = "published";

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A stored item as it is shown, and when it was published.
fn stored_item(xml: &str) -> Option<(Element, Option<u64>)> {
    let mut el = parse_stored(xml)?;
    let at = el.remove_attr(STORED_AT).and_then(|t| t.parse().ok());
    Some((el, at))
}

/// How many of a node's items have expired (`pubsub#item_expire`): they
/// are kept oldest first (a republished id moves to the end), so the
/// expired ones lead, and only they and the first live one are read.
fn expired_count(
    server: &Server,
    jid: &str,
    node: &str,
    rec: &PepNode,
    cfg: &NodeConfig,
) -> Result<usize, StanzaError> {
    if cfg.item_expire.is_none() {
        return Ok(0);
    }
    let now = now_millis();
    let mut n = 0;
    for id in &rec.items {
        let at = server
            .storage
            .pep_item(jid, node, id)?
            .as_deref()
            .and_then(stored_item)
            .and_then(|(_, at)| at);
        if !cfg.expired(at, now) {
            break;
        }
        n += 1;
    }
    Ok(n)
}

fn new_item_id() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// A node record; when the local replica has none, read again after a
/// read barrier (it may have been made through another cluster node a
/// moment ago).
async fn read_node(
    server: &Server,
    jid: &str,
    node: &str,
) -> Result<Option<(Vec<u8>, PepNode)>, StanzaError> {
    if let Some(r) = server.storage.pep_node(jid, node)? {
        return Ok(Some(r));
    }
    if !server.storage.store.has_peers() {
        return Ok(None);
    }
    server.storage.store.read_barrier().await?;
    Ok(server.storage.pep_node(jid, node)?)
}

/// Writes a node change (one compare-and-set); when the record changed
/// since it was read, waits for this replica to catch up before the
/// caller reads it again (a stale replica would fail every retry).
async fn write_node(server: &Server, change: PepChange<'_>) -> Result<bool, StanzaError> {
    if server.storage.pep_write(change).await? {
        return Ok(true);
    }
    if server.storage.store.has_peers() {
        let _ = server.storage.store.read_barrier().await;
    }
    Ok(false)
}

/// A new node past `[pep] max_nodes` (`[pubsub] max_nodes` for a generic
/// service) is refused.
fn too_many_nodes(server: &Server, svc: Svc<'_>) -> Result<(), StanzaError> {
    let max = match svc.generic {
        None => server.config.pep.max_nodes,
        Some(_) => server.config.pubsub.max_nodes,
    };
    if server.storage.pep_node_count(svc.jid)? >= max as u64 {
        let mut e = app(Condition::PolicyViolation, "max-nodes-exceeded");
        e.text = Some("too many nodes".into());
        return Err(e);
    }
    Ok(())
}

/// The record of a node created by `req`: on a generic service its
/// creator owns it.
fn new_record(req: &Req<'_>, cfg: &NodeConfig) -> PepNode {
    let mut rec = PepNode {
        config: cfg.encode(),
        ..PepNode::default()
    };
    if req.svc.generic.is_some() {
        rec.affiliations
            .push((req.bare.to_owned(), Aff::Owner.as_str().to_owned()));
    }
    rec
}

/// Publishes one item to an account's PEP node on its own behalf
/// (XEP-0060 §7.1, with XEP-0163's auto-create and §7.1.5's
/// publish-options); `hooks`: run the avatar conversion.
pub async fn publish(
    server: &Server,
    owner: &str,
    publish: &Element,
    options: Option<&Element>,
    hooks: bool,
) -> IqResult {
    let req = Req {
        server,
        svc: Svc::pep(owner),
        bare: owner,
        full: owner,
    };
    publish_in(&req, publish, options, hooks).await
}

/// XEP-0060 §7.1 on any service.
async fn publish_in(
    req: &Req<'_>,
    publish: &Element,
    options: Option<&Element>,
    hooks: bool,
) -> IqResult {
    let server = req.server;
    let svc = req.svc;
    let node = node_attr(publish)?;
    let cap = server.config.pep.max_items;
    let items: Vec<&Element> = publish
        .elements()
        .filter(|e| e.is("item", NS_PUBSUB))
        .collect();
    let item = match items.as_slice() {
        [] => None,
        [one] => Some(*one),
        _ => return Err(app(Condition::BadRequest, "invalid-payload")),
    };
    let payload = match item.map(|i| i.elements().collect::<Vec<_>>()).as_deref() {
        None | Some([]) => None,
        Some([one]) => Some(*one),
        Some(_) => return Err(app(Condition::BadRequest, "invalid-payload")),
    };
    let id = match item.and_then(|i| i.get_attr("id")) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => new_item_id(),
    };
    let mut stored = Element::new("item", NS_PUBSUB)
        .attr("id", id.as_str())
        .attr(STORED_AT, now_millis().to_string());
    // §7.1.2: a generic service records who published an item (its
    // publisher may retract it whatever its affiliation).
    if svc.generic.is_some() {
        stored.set_attr("publisher", req.bare);
    }
    if let Some(p) = payload {
        stored = stored.child(p.clone());
    }
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
    let mut cfg;
    let mut attempt = 0;
    loop {
        let read = read_node(server, svc.jid, node).await?;
        let (raw, mut rec) = match read {
            Some((raw, rec)) => {
                cfg = NodeConfig::decode(&rec.config);
                may_publish(req, node, &rec, &cfg)?;
                if let Some(fields) = &wanted {
                    // §7.1.5: every option must hold already.
                    let mut want = cfg.clone();
                    for (var, values) in fields {
                        want.set(var, values, cap, svc)
                            .map_err(|_| precondition_not_met())?;
                    }
                    if want != cfg {
                        return Err(precondition_not_met());
                    }
                }
                (Some(raw), rec)
            }
            None => {
                // §7.1.4: auto-create, for whoever may create nodes.
                if !may_create(server, svc, req.bare) {
                    return Err(no_node(req));
                }
                too_many_nodes(server, svc)?;
                cfg = NodeConfig::default_for(svc);
                cfg.creator = req.bare.to_owned();
                cfg.created = crate::stanza::now_stamp();
                if let Some(fields) = &wanted {
                    for (var, values) in fields {
                        cfg.set(var, values, cap, svc)
                            .map_err(|_| precondition_not_met())?;
                    }
                }
                (None, new_record(req, &cfg))
            }
        };
        // §7.1.3.6: what the node's event type asks for.
        if !cfg.persist_items && !cfg.deliver_payloads {
            if item.is_some() {
                return Err(app(Condition::BadRequest, "item-forbidden"));
            }
        } else if item.is_none() {
            return Err(app(Condition::BadRequest, "item-required"));
        } else if cfg.deliver_payloads && payload.is_none() {
            return Err(app(Condition::BadRequest, "payload-required"));
        }
        // The payload's own size (not the stored item's wrapper).
        if let (Some(m), Some(p)) = (cfg.max_payload_size, payload)
            && p.to_stream_xml(NS_PUBSUB).len() > m
        {
            return Err(app(Condition::NotAcceptable, "payload-too-big"));
        }
        // §7.1.3.5: a generic node's `pubsub#type` is its payload namespace.
        if svc.generic.is_some()
            && !cfg.payload_type.is_empty()
            && payload.is_some_and(|p| p.ns != cfg.payload_type)
        {
            return Err(app(Condition::BadRequest, "invalid-payload"));
        }
        rec.config = cfg.encode();
        let mut put = Vec::new();
        let mut remove = Vec::new();
        if cfg.persist_items {
            rec.items.retain(|i| *i != id);
            // Expired items go with the next publish.
            let gone = expired_count(server, svc.jid, node, &rec, &cfg)?;
            remove.extend(rec.items.drain(..gone));
            rec.items.push(id.clone());
            let over = rec.items.len().saturating_sub(cfg.limit(cap));
            remove.extend(rec.items.drain(..over));
            put.push((id.clone(), xml.clone()));
        } else {
            remove.append(&mut rec.items);
        }
        let change = PepChange {
            bare: svc.jid,
            node,
            read: raw,
            write: NodeWrite::Put(rec),
            put,
            remove,
            subs_put: Vec::new(),
            subs_remove: Vec::new(),
        };
        if write_node(server, change).await? {
            break;
        }
        attempt += 1;
        if attempt == MAX_ATTEMPTS {
            return Err(Condition::ResourceConstraint.into());
        }
    }
    metrics::counter!("starling_pep_published_total").increment(1);
    if cfg.deliver_notifications {
        let mut event = Element::new("items", NS_EVENT).attr("node", node);
        if item.is_some() {
            let mut ev_item = Element::new("item", NS_EVENT).attr("id", id.as_str());
            if svc.generic.is_some() {
                ev_item.set_attr("publisher", req.bare);
            }
            if cfg.deliver_payloads
                && let Some(p) = payload
            {
                ev_item = ev_item.child(p.clone());
            }
            event = event.child(ev_item);
        }
        let subs = server.storage.pep_subs(svc.jid, node)?;
        // XEP-0163 §4.3.1.3: who published, for those sharing presence.
        let replyto = (svc.generic.is_none() && req.full.contains('/')).then_some(req.full);
        notify(server, svc, node, &cfg, &subs, event, replyto).await;
    }
    if hooks
        && svc.generic.is_none()
        && node == AVATAR_METADATA
        && let Some(p) = payload
    {
        avatar::metadata_published(server, svc.jid, p).await;
    }
    let mut done = Element::new("publish", NS_PUBSUB).attr("node", node);
    if item.is_some() {
        done = done.child(Element::new("item", NS_PUBSUB).attr("id", id));
    }
    Ok(Element::new("pubsub", NS_PUBSUB).child(done).into())
}

/// XEP-0060 §7.2 on an account's own PEP node.
async fn retract(server: &Server, owner: &str, retract: &Element) -> IqResult {
    let req = Req {
        server,
        svc: Svc::pep(owner),
        bare: owner,
        full: owner,
    };
    retract_in(&req, retract).await
}

/// XEP-0060 §7.2: removes items; notifies when asked to (or, without
/// `notify`, when the node is configured to).
async fn retract_in(req: &Req<'_>, retract: &Element) -> IqResult {
    let server = req.server;
    let svc = req.svc;
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
        let Some((raw, mut rec)) = read_node(server, svc.jid, node).await? else {
            return Err(no_node(req));
        };
        cfg = NodeConfig::decode(&rec.config);
        // §7.2.3.1: publishers and owners retract, and whoever published
        // the items (on an open or subscribers node).
        let aff = affiliation(server, svc, &rec, req.bare);
        if aff == Aff::Outcast || (aff < Aff::PublishOnly && svc.generic.is_none()) {
            return Err(Condition::Forbidden.into());
        }
        // §7.2.3.5: nothing kept, nothing to retract.
        if !cfg.persist_items {
            return Err(unsupported("persistent-items"));
        }
        if ids.iter().any(|id| !rec.items.iter().any(|i| i == id)) {
            return Err(Condition::ItemNotFound.into());
        }
        if aff < Aff::PublishOnly {
            for id in &ids {
                let publisher = server
                    .storage
                    .pep_item(svc.jid, node, id)?
                    .as_deref()
                    .and_then(parse_stored)
                    .and_then(|i| i.get_attr("publisher").map(str::to_owned));
                if publisher.as_deref() != Some(req.bare) {
                    return Err(Condition::Forbidden.into());
                }
            }
        }
        rec.items.retain(|i| !ids.contains(&i.as_str()));
        let change = PepChange {
            bare: svc.jid,
            node,
            read: Some(raw),
            write: NodeWrite::Put(rec),
            put: Vec::new(),
            remove: ids.iter().map(|s| (*s).to_owned()).collect(),
            subs_put: Vec::new(),
            subs_remove: Vec::new(),
        };
        if write_node(server, change).await? {
            break;
        }
        attempt += 1;
        if attempt == MAX_ATTEMPTS {
            return Err(Condition::ResourceConstraint.into());
        }
    }
    if notify_attr.unwrap_or(cfg.notify_retract) && cfg.deliver_notifications {
        let mut event = Element::new("items", NS_EVENT).attr("node", node);
        for id in &ids {
            event = event.child(Element::new("retract", NS_EVENT).attr("id", *id));
        }
        let subs = server.storage.pep_subs(svc.jid, node)?;
        notify(server, svc, node, &cfg, &subs, event, None).await;
    }
    Ok(IqReply::EMPTY)
}

/// XEP-0060 §8.1: a node created explicitly (with an optional
/// configuration); an existing one is `<conflict/>`. Without a node id a
/// generic service makes one up (§8.1.2, instant nodes).
async fn create(req: &Req<'_>, create: &Element, configure: Option<&Element>) -> IqResult {
    let server = req.server;
    let svc = req.svc;
    let instant;
    let node = match create.get_attr("node") {
        Some(n) if !n.is_empty() => node_attr(create)?,
        // §8.1.2: PEP has no instant nodes.
        _ if svc.generic.is_none() => {
            return Err(app(Condition::NotAcceptable, "nodeid-required"));
        }
        _ => {
            instant = new_item_id();
            instant.as_str()
        }
    };
    if !may_create(server, svc, req.bare) {
        return Err(Condition::Forbidden.into());
    }
    too_many_nodes(server, svc)?;
    let mut cfg = NodeConfig::default_for(svc);
    cfg.creator = req.bare.to_owned();
    cfg.created = crate::stanza::now_stamp();
    // §8.1.3: the configuration names no node of its own.
    if configure.is_some_and(|c| c.get_attr("node").is_some()) {
        return Err(Condition::BadRequest.into());
    }
    if let Some(x) = configure.and_then(|c| c.elements().next()) {
        let fields = form_fields(x, NODE_CONFIG).map_err(|()| Condition::NotAcceptable)?;
        for (var, values) in fields.unwrap_or_default() {
            cfg.set(&var, &values, server.config.pep.max_items, svc)
                .map_err(Refused::into_error)?;
        }
    }
    let change = PepChange {
        bare: svc.jid,
        node,
        read: None,
        write: NodeWrite::Put(new_record(req, &cfg)),
        put: Vec::new(),
        remove: Vec::new(),
        subs_put: Vec::new(),
        subs_remove: Vec::new(),
    };
    if !write_node(server, change).await? {
        return Err(Condition::Conflict.into());
    }
    if create.get_attr("node").is_some_and(|n| !n.is_empty()) {
        return Ok(IqReply::EMPTY);
    }
    Ok(Element::new("pubsub", NS_PUBSUB)
        .child(Element::new("create", NS_PUBSUB).attr("node", node))
        .into())
}

/// The most item bytes one items answer carries (beyond its first item).
const ITEMS_PAGE_BYTES: usize = 256 * 1024;

/// XEP-0060 §6.5: all items, the latest `max_items`, or some by id; a
/// page of them with XEP-0059 (§6.5.4), oldest first as always, with the
/// `<set/>` after `<items/>`.
async fn items(req: &Req<'_>, items: &Element, rsm: Option<crate::rsm::Request>) -> IqResult {
    let server = req.server;
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
    let Some((_, rec)) = read_node(server, req.svc.jid, node).await? else {
        return Err(Condition::ItemNotFound.into());
    };
    let cfg = NodeConfig::decode(&rec.config);
    may_read(server, req.svc, node, &rec, req.bare, &cfg)?;
    // §6.5.9.4: a node that keeps nothing has nothing to return.
    if !cfg.persist_items {
        return Err(unsupported("persistent-items"));
    }
    // §6.5.9.1 and .2: a subscriber with several subscriptions names one.
    if affiliation(server, req.svc, &rec, req.bare) < Aff::Publisher {
        let mut mine = server.storage.pep_subs_of(req.svc.jid, node, req.full)?;
        if req.full != req.bare {
            mine.extend(server.storage.pep_subs_of(req.svc.jid, node, req.bare)?);
        }
        match items.get_attr("subid").filter(|s| !s.is_empty()) {
            None if mine.len() > 1 => return Err(app(Condition::BadRequest, "subid-required")),
            Some(id) if !mine.is_empty() && !mine.iter().any(|s| s.subid == id) => {
                return Err(app(Condition::NotAcceptable, "invalid-subid"));
            }
            _ => {}
        }
    }
    let live = &rec.items[expired_count(server, req.svc.jid, node, &rec, &cfg)?..];
    let ids: Vec<&str> = if wanted.is_empty() {
        let n = max.unwrap_or(usize::MAX).min(live.len());
        live[live.len() - n..].iter().map(String::as_str).collect()
    } else {
        // §6.5.9.11: items that do not exist are left out (maybe all).
        wanted
            .into_iter()
            .filter(|w| live.iter().any(|i| i == w))
            .collect()
    };
    let range = match &rsm {
        Some(r) => r.page(&ids)?.0,
        None => 0..ids.len(),
    };
    // §6.5.4: a long answer is cut (at least one item) and says so with
    // a `<set/>`; the rest is paged for with RSM.
    let mut out = Element::new("items", NS_PUBSUB).attr("node", node);
    let mut bytes = 0;
    let mut end = range.start;
    for id in &ids[range.clone()] {
        let Some(xml) = server.storage.pep_item(req.svc.jid, node, id)? else {
            end += 1;
            continue;
        };
        if end > range.start && bytes + xml.len() > ITEMS_PAGE_BYTES {
            break;
        }
        bytes += xml.len();
        end += 1;
        if let Some((item, _)) = stored_item(&xml) {
            out = out.child(item);
        }
    }
    let mut pubsub = Element::new("pubsub", NS_PUBSUB).child(out);
    if rsm.is_some() || end < range.end {
        pubsub = pubsub.child(crate::rsm::describe(&ids, range.start..end));
    }
    Ok(pubsub.into())
}

/// Reads a node the requester must own.
async fn owned_node(req: &Req<'_>, node: &str) -> Result<(Vec<u8>, PepNode), StanzaError> {
    let Some((raw, rec)) = read_node(req.server, req.svc.jid, node).await? else {
        return Err(Condition::ItemNotFound.into());
    };
    must_own(req, &rec)?;
    Ok((raw, rec))
}

async fn configure_get(req: &Req<'_>, configure: &Element) -> IqResult {
    let node = node_attr(configure)?;
    let (_, rec) = owned_node(req, node).await?;
    let cfg = NodeConfig::decode(&rec.config);
    Ok(Element::new("pubsub", NS_OWNER)
        .child(
            Element::new("configure", NS_OWNER)
                .attr("node", node)
                .child(cfg.form("form", req.svc)),
        )
        .into())
}

/// XEP-0060 §8.2.4: a submitted configuration; a field of the wrong type
/// or value is `<not-acceptable/>` (§8.2.5.3) and nothing changes.
async fn configure_set(req: &Req<'_>, configure: &Element) -> IqResult {
    let node = node_attr(configure)?;
    let cap = req.server.config.pep.max_items;
    let Some(x) = configure.elements().next() else {
        return Err(Condition::BadRequest.into());
    };
    let Some(fields) = form_fields(x, NODE_CONFIG).map_err(|()| Condition::NotAcceptable)? else {
        owned_node(req, node).await?;
        return Ok(IqReply::EMPTY);
    };
    for _ in 0..MAX_ATTEMPTS {
        let (raw, mut rec) = owned_node(req, node).await?;
        let mut cfg = NodeConfig::decode(&rec.config);
        for (var, values) in &fields {
            cfg.set(var, values, cap, req.svc)
                .map_err(Refused::into_error)?;
        }
        let mut remove = Vec::new();
        if !cfg.persist_items {
            remove.append(&mut rec.items);
        } else {
            let over = rec.items.len().saturating_sub(cfg.limit(cap));
            remove.extend(rec.items.drain(..over));
        }
        // Subscribers the new access model no longer lets in lose their
        // subscriptions, and are told.
        let subs = req.server.storage.pep_subs(req.svc.jid, node)?;
        let mut lost: std::collections::BTreeSet<String> = Default::default();
        let mut subs_remove = Vec::new();
        for sub in subs.iter().filter(|s| !s.pending) {
            let bare = crate::stanza::split(&sub.jid).0;
            if lost.contains(&sub.jid)
                || may_read(req.server, req.svc, node, &rec, bare, &cfg).is_err()
            {
                lost.insert(sub.jid.clone());
                subs_remove.push((sub.jid.clone(), sub.subid.clone()));
            }
        }
        rec.config = cfg.encode();
        let change = PepChange {
            bare: req.svc.jid,
            node,
            read: Some(raw),
            write: NodeWrite::Put(rec),
            put: Vec::new(),
            remove,
            subs_put: Vec::new(),
            subs_remove,
        };
        if write_node(req.server, change).await? {
            for jid in &lost {
                subscription_changed(req.server, req.svc, node, &cfg, jid, false).await;
            }
            // §8.2.5.4: the new configuration (as a form when payloads
            // are delivered).
            if cfg.notify_config && cfg.deliver_notifications {
                let mut event = Element::new("configuration", NS_EVENT).attr("node", node);
                if cfg.deliver_payloads {
                    let mut x = cfg.form("result", req.svc);
                    for f in x.children.iter_mut() {
                        if let crate::xml::Node::Element(f) = f {
                            f.remove_children("option", NS_DATA);
                        }
                    }
                    event = event.child(x);
                }
                let kept: Vec<PepSub> = subs
                    .into_iter()
                    .filter(|s| !lost.contains(&s.jid))
                    .collect();
                notify(req.server, req.svc, node, &cfg, &kept, event, None).await;
            }
            return Ok(IqReply::EMPTY);
        }
    }
    Err(Condition::ResourceConstraint.into())
}

/// The owners to tell of a subscription change (none unless the node's
/// `pubsub#notify_sub` says so).
fn owners_to_tell(svc: Svc<'_>, rec: &PepNode, cfg: &NodeConfig) -> Vec<String> {
    if !cfg.notify_sub {
        return Vec::new();
    }
    owners(svc, rec).map(str::to_owned).collect()
}

/// A subscription event (XEP-0060 §8.8.4): `jid`'s subscription to
/// `node` is now `subscribed` or `none`; sent to `to`.
fn subscription_event(
    svc: Svc<'_>,
    node: &str,
    cfg: &NodeConfig,
    to: &str,
    jid: &str,
    subscribed: bool,
) -> Element {
    let state = if subscribed { "subscribed" } else { "none" };
    Element::new("message", NS_CLIENT)
        .attr("from", svc.jid)
        .attr("to", to)
        .attr("type", cfg.notification_type.as_str())
        .attr("id", new_item_id())
        .child(
            Element::new("event", NS_EVENT).child(
                Element::new("subscription", NS_EVENT)
                    .attr("node", node)
                    .attr("jid", jid)
                    .attr("subscription", state),
            ),
        )
}

/// `pubsub#notify_sub`: the node's owners hear that `jid` subscribed or
/// unsubscribed (a subscription event, as §8.8.4's).
async fn tell_owners(
    server: &Server,
    svc: Svc<'_>,
    node: &str,
    cfg: &NodeConfig,
    owners: &[String],
    jid: &str,
    subscribed: bool,
) {
    for o in owners {
        let msg = subscription_event(svc, node, cfg, o, jid, subscribed);
        let _ = route_boxed(server, msg).await;
    }
}

/// Tells `jid` its subscription to `node` is now `subscribed` or `none`
/// (XEP-0060 §8.8.4).
async fn subscription_changed(
    server: &Server,
    svc: Svc<'_>,
    node: &str,
    cfg: &NodeConfig,
    jid: &str,
    subscribed: bool,
) {
    let msg = subscription_event(svc, node, cfg, jid, jid, subscribed);
    let _ = route_boxed(server, msg).await;
}

/// XEP-0060 §8.4: the node and its items go; whoever was notified of it
/// learns so.
async fn delete(req: &Req<'_>, delete: &Element) -> IqResult {
    let node = node_attr(delete)?;
    for _ in 0..MAX_ATTEMPTS {
        let (raw, rec) = owned_node(req, node).await?;
        let cfg = NodeConfig::decode(&rec.config);
        // Whoever is subscribed now hears of the deletion.
        let subs = req.server.storage.pep_subs(req.svc.jid, node)?;
        let change = PepChange {
            bare: req.svc.jid,
            node,
            read: Some(raw),
            write: NodeWrite::Delete,
            put: Vec::new(),
            remove: Vec::new(),
            subs_put: Vec::new(),
            subs_remove: Vec::new(),
        };
        if write_node(req.server, change).await? {
            if cfg.notify_delete {
                let mut event = Element::new("delete", NS_EVENT).attr("node", node);
                // §8.4.1: where its subscribers may go instead.
                if let Some(uri) = delete
                    .get_child("redirect", NS_OWNER)
                    .and_then(|r| r.get_attr("uri"))
                {
                    event = event.child(Element::new("redirect", NS_EVENT).attr("uri", uri));
                }
                notify(req.server, req.svc, node, &cfg, &subs, event, None).await;
            }
            return Ok(IqReply::EMPTY);
        }
    }
    Err(Condition::ResourceConstraint.into())
}

/// XEP-0060 §8.5: every item goes, the node stays.
async fn purge(req: &Req<'_>, purge: &Element) -> IqResult {
    let node = node_attr(purge)?;
    for _ in 0..MAX_ATTEMPTS {
        let (raw, mut rec) = owned_node(req, node).await?;
        let cfg = NodeConfig::decode(&rec.config);
        // §8.5.3.3: a node that keeps no items has none to purge.
        if !cfg.persist_items {
            return Err(unsupported("persistent-items"));
        }
        let remove = std::mem::take(&mut rec.items);
        let change = PepChange {
            bare: req.svc.jid,
            node,
            read: Some(raw),
            write: NodeWrite::Put(rec),
            put: Vec::new(),
            remove,
            subs_put: Vec::new(),
            subs_remove: Vec::new(),
        };
        if write_node(req.server, change).await? {
            if cfg.notify_retract || cfg.notify_delete {
                let event = Element::new("purge", NS_EVENT).attr("node", node);
                let subs = req.server.storage.pep_subs(req.svc.jid, node)?;
                notify(req.server, req.svc, node, &cfg, &subs, event, None).await;
            }
            return Ok(IqReply::EMPTY);
        }
    }
    Err(Condition::ResourceConstraint.into())
}

// ------------------------------------------------------------ subscriptions

/// Subscriptions one JID may hold to one node (XEP-0060 §6.1.6).
const MAX_SUBS_PER_JID: usize = 8;
/// Subscriptions to one node.
const MAX_SUBS_PER_NODE: usize = 10_000;
const SUBSCRIBE_OPTIONS: &str = "http://jabber.org/protocol/pubsub#subscribe_options";

/// The `jid` attribute of a subscription request, normalised;
/// `<bad-request/>` with `<invalid-jid/>` when absent or not a JID.
fn jid_attr(el: &Element) -> Result<String, StanzaError> {
    el.get_attr("jid")
        .and_then(|j| jid::Jid::new(j).ok())
        .map(|j| j.to_string())
        .ok_or_else(|| app(Condition::BadRequest, "invalid-jid"))
}

/// The subscription options form (XEP-0060 §6.3): the options offered,
/// and their current values.
fn sub_options_form(deliver: bool, show: &[String], temporary: bool) -> Element {
    let field = |var: &str, ftype: &str, value: &str| {
        Element::new("field", NS_DATA)
            .attr("var", var)
            .attr("type", ftype)
            .child(Element::new("value", NS_DATA).text(value))
    };
    let mut shows = Element::new("field", NS_DATA)
        .attr("var", "pubsub#show-values")
        .attr("type", "list-multi");
    for o in SHOW_VALUES {
        shows = shows
            .child(Element::new("option", NS_DATA).child(Element::new("value", NS_DATA).text(*o)));
    }
    for v in show {
        shows = shows.child(Element::new("value", NS_DATA).text(v.as_str()));
    }
    // XEP-0060 §12.4: `presence` (a temporary subscription), or none.
    let mut expire = Element::new("field", NS_DATA)
        .attr("var", "pubsub#expire")
        .attr("type", "text-single");
    if temporary {
        expire = expire.child(Element::new("value", NS_DATA).text("presence"));
    }
    Element::new("x", NS_DATA)
        .attr("type", "form")
        .child(field("FORM_TYPE", "hidden", SUBSCRIBE_OPTIONS))
        .child(field(
            "pubsub#deliver",
            "boolean",
            if deliver { "1" } else { "0" },
        ))
        .child(field("pubsub#digest", "boolean", "0"))
        .child(field("pubsub#digest_frequency", "text-single", "86400000"))
        .child(expire)
        .child(field("pubsub#include_body", "boolean", "0"))
        .child(shows)
}

/// The presence states `pubsub#show-values` may name.
const SHOW_VALUES: &[&str] = &["away", "chat", "dnd", "online", "xa"];

/// What a submitted subscription options form changes.
#[derive(Debug, Default, PartialEq, Eq)]
struct SubOptions {
    deliver: Option<bool>,
    show_values: Option<Vec<String>>,
    /// `pubsub#expire`: `presence` (true) or none (false).
    temporary: Option<bool>,
}

impl SubOptions {
    /// Applies the options to `sub`; whether anything changed.
    fn apply(self, sub: &mut PepSub) -> bool {
        let before = (sub.deliver, sub.show_values.clone(), sub.temporary);
        if let Some(d) = self.deliver {
            sub.deliver = d;
        }
        if let Some(v) = self.show_values {
            sub.show_values = v;
        }
        if let Some(t) = self.temporary {
            sub.temporary = t;
        }
        before != (sub.deliver, sub.show_values.clone(), sub.temporary)
    }
}

/// A submitted subscription options form: the `pubsub#deliver` and
/// `pubsub#show-values` it asks for (nothing: cancelled or unchanged);
/// `<bad-request/>` with `<invalid-options/>` for what this service does
/// not do.
fn parse_sub_options(x: &Element) -> Result<SubOptions, StanzaError> {
    let invalid = || app(Condition::BadRequest, "invalid-options");
    let Some(fields) = form_fields(x, SUBSCRIBE_OPTIONS).map_err(|()| invalid())? else {
        return Ok(SubOptions::default());
    };
    let mut out = SubOptions::default();
    for (var, values) in fields {
        let v = values.first().map(|v| v.trim()).unwrap_or_default();
        let boolean = match v {
            "1" | "true" => Some(true),
            "0" | "false" => Some(false),
            _ => None,
        };
        match var.as_str() {
            "pubsub#deliver" => out.deliver = Some(boolean.ok_or_else(invalid)?),
            // No digests, no bodies: only their absence may be asked for.
            "pubsub#digest" | "pubsub#include_body" => {
                if boolean.ok_or_else(invalid)? {
                    return Err(invalid());
                }
            }
            "pubsub#digest_frequency" => {
                v.parse::<u64>().map_err(|_| invalid())?;
            }
            // Notifications only to resources showing one of these.
            "pubsub#show-values" => {
                let mut shows: Vec<String> = Vec::new();
                for v in values.iter().map(|v| v.trim()) {
                    if !SHOW_VALUES.contains(&v) {
                        return Err(invalid());
                    }
                    if !shows.iter().any(|s| s == v) {
                        shows.push(v.to_owned());
                    }
                }
                out.show_values = Some(shows);
            }
            // A leaf's items, and no expiry: only what that already is.
            "pubsub#subscription_type" if matches!(v, "" | "items") => {}
            "pubsub#subscription_depth" if matches!(v, "" | "1") => {}
            // XEP-0060 §12.4: a temporary subscription, or none; no
            // leases (a date).
            "pubsub#expire" => {
                out.temporary = Some(match v {
                    "" => false,
                    "presence" => true,
                    _ => return Err(invalid()),
                });
            }
            _ => return Err(invalid()),
        }
    }
    Ok(out)
}

fn subscription_el(ns: &str, node: Option<&str>, s: &PepSub) -> Element {
    let mut el = Element::new("subscription", ns);
    if let Some(n) = node {
        el.set_attr("node", n);
    }
    el.attr("jid", s.jid.as_str())
        .attr(
            "subscription",
            if s.pending { "pending" } else { "subscribed" },
        )
        .attr("subid", s.subid.as_str())
}

/// XEP-0060 §6.1: a new subscription (several per JID may exist, each
/// with its own SubID, §6.1.6).
async fn subscribe(req: &Req<'_>, sub: &Element, options: Option<&Element>) -> IqResult {
    let server = req.server;
    let node = node_attr(sub)?;
    let jid = jid_attr(sub)?;
    // §6.1.3.1: one subscribes oneself.
    if crate::stanza::split(&jid).0 != req.bare {
        return Err(app(Condition::BadRequest, "invalid-jid"));
    }
    // §6.3.7: the options name neither node nor JID of their own.
    if options.is_some_and(|o| o.get_attr("node").is_some() || o.get_attr("jid").is_some()) {
        return Err(Condition::BadRequest.into());
    }
    let opts = match options.and_then(|o| o.elements().next()) {
        Some(x) => parse_sub_options(x)?,
        None => SubOptions::default(),
    };
    let deliver = opts.deliver.unwrap_or(true);
    let show_values = opts.show_values.unwrap_or_default();
    let temporary = opts.temporary.unwrap_or(false);
    let subid = new_item_id();
    for _ in 0..MAX_ATTEMPTS {
        let Some((raw, rec)) = read_node(server, req.svc.jid, node).await? else {
            return Err(Condition::ItemNotFound.into());
        };
        let cfg = NodeConfig::decode(&rec.config);
        if !cfg.subscribe {
            return Err(unsupported("subscribe"));
        }
        // §6.1.4: on an `authorize` node the subscription of whoever is not
        // affiliated waits for an owner's approval; a second request
        // meanwhile is §6.1.3.7's error.
        let aff = affiliation(server, req.svc, &rec, req.bare);
        let pending = cfg.access == Access::Authorize && aff == Aff::None;
        if pending {
            let mine = server
                .storage
                .pep_service_subs_of_node_bare(req.svc.jid, node, req.bare)?;
            if mine.iter().any(|s| s.pending) {
                return Err(app(Condition::NotAuthorized, "pending-subscription"));
            }
        } else if cfg.access != Access::Authorize || aff == Aff::Outcast {
            may_read(server, req.svc, node, &rec, req.bare, &cfg)?;
        }
        if server.storage.pep_subs_of(req.svc.jid, node, &jid)?.len() >= MAX_SUBS_PER_JID
            || server.storage.pep_sub_count(req.svc.jid, node)? >= MAX_SUBS_PER_NODE as u64
        {
            // §6.1.3.9.
            return Err(app(Condition::PolicyViolation, "too-many-subscriptions"));
        }
        let new = PepSub {
            jid: jid.clone(),
            subid: subid.clone(),
            deliver,
            pending,
            show_values: show_values.clone(),
            temporary,
        };
        let approvers: Vec<String> = if pending {
            owners(req.svc, &rec).map(str::to_owned).collect()
        } else {
            Vec::new()
        };
        let last = rec.items.last().cloned();
        let to_tell = owners_to_tell(req.svc, &rec, &cfg);
        // The node record stays as it is: the change only needs it to.
        let change = PepChange {
            bare: req.svc.jid,
            node,
            read: Some(raw),
            write: NodeWrite::Keep,
            put: Vec::new(),
            remove: Vec::new(),
            subs_put: vec![new.clone()],
            subs_remove: Vec::new(),
        };
        if write_node(server, change).await? {
            for owner in &approvers {
                ask_approval(server, req.svc, node, &new, owner).await;
            }
            // §6.1.7: the last item, if the node sends it.
            if cfg.send_last != SendLast::Never
                && cfg.deliver_notifications
                && deliver
                && !pending
                && let Some(last) = last
            {
                send_last_to(server, req.svc, node, &cfg, &last, &jid).await;
            }
            if !pending {
                tell_owners(server, req.svc, node, &cfg, &to_tell, &jid, true).await;
            }
            // §6.1.5: options may be configured, and need not be.
            let mut sub_el = subscription_el(NS_PUBSUB, Some(node), &new);
            if !pending {
                sub_el = sub_el.child(Element::new("subscribe-options", NS_PUBSUB));
            }
            let mut out = Element::new("pubsub", NS_PUBSUB).child(sub_el);
            // §6.3.7: the options in effect, when some were given.
            if options.is_some() {
                let mut x = sub_options_form(deliver, &show_values, temporary);
                x.set_attr("type", "result");
                out = out.child(Element::new("options", NS_PUBSUB).child(x));
            }
            return Ok(out.into());
        }
    }
    Err(Condition::ResourceConstraint.into())
}

const SUBSCRIBE_AUTHORIZATION: &str = "http://jabber.org/protocol/pubsub#subscribe_authorization";

/// XEP-0060 §8.6: asks an owner to approve a pending subscription (a
/// data form in a message; the answer is [`approval`]).
async fn ask_approval(server: &Server, svc: Svc<'_>, node: &str, sub: &PepSub, owner: &str) {
    let field = |var: &str, ftype: &str, value: &str| {
        Element::new("field", NS_DATA)
            .attr("var", var)
            .attr("type", ftype)
            .child(Element::new("value", NS_DATA).text(value))
    };
    let form = Element::new("x", NS_DATA)
        .attr("type", "form")
        .child(Element::new("title", NS_DATA).text("PubSub subscriber request"))
        .child(field("FORM_TYPE", "hidden", SUBSCRIBE_AUTHORIZATION))
        .child(field("pubsub#node", "text-single", node))
        .child(field("pubsub#subscriber_jid", "jid-single", &sub.jid))
        .child(field("pubsub#subid", "hidden", &sub.subid))
        .child(field("pubsub#allow", "boolean", "false"));
    let msg = Element::new("message", NS_CLIENT)
        .attr("from", svc.jid)
        .attr("to", owner)
        .attr("id", new_item_id())
        .child(form);
    let _ = route_boxed(server, msg).await;
}

/// An owner's answer to [`ask_approval`] (a submitted form in a message
/// from `from`): the pending subscription becomes one, or goes; the
/// subscriber is told (§8.6). `Err` for what is not such an answer, or
/// not the owner's to give.
pub async fn approval(
    server: &Server,
    svc: Svc<'_>,
    from: &str,
    x: &Element,
) -> Result<(), StanzaError> {
    let Some(fields) = form_fields(x, SUBSCRIBE_AUTHORIZATION)
        .map_err(|()| StanzaError::from(Condition::BadRequest))?
    else {
        // Cancelled: it stays pending.
        return Ok(());
    };
    let value = |var: &str| {
        fields
            .iter()
            .find(|(v, _)| v == var)
            .and_then(|(_, vals)| vals.first())
            .map(|v| v.trim().to_owned())
    };
    let (Some(node), Some(jid), Some(allow)) = (
        value("pubsub#node"),
        value("pubsub#subscriber_jid").and_then(|j| jid::Jid::new(&j).ok()),
        value("pubsub#allow"),
    ) else {
        return Err(Condition::BadRequest.into());
    };
    let jid = jid.to_string();
    let allow = match allow.as_str() {
        "1" | "true" => true,
        "0" | "false" => false,
        _ => return Err(Condition::BadRequest.into()),
    };
    let subid = value("pubsub#subid");
    let req = Req {
        server,
        svc,
        bare: crate::stanza::split(from).0,
        full: from,
    };
    for _ in 0..MAX_ATTEMPTS {
        let (raw, rec) = owned_node(&req, &node).await?;
        let cfg = NodeConfig::decode(&rec.config);
        let pending: Vec<PepSub> = server
            .storage
            .pep_subs_of(svc.jid, &node, &jid)?
            .into_iter()
            .filter(|s| s.pending && subid.as_deref().is_none_or(|id| id == s.subid))
            .collect();
        if pending.is_empty() {
            return Err(app(Condition::UnexpectedRequest, "not-subscribed"));
        }
        let (subs_put, subs_remove) = if allow {
            let approved = pending
                .into_iter()
                .map(|s| PepSub {
                    pending: false,
                    ..s
                })
                .collect();
            (approved, Vec::new())
        } else {
            (
                Vec::new(),
                pending.into_iter().map(|s| (s.jid, s.subid)).collect(),
            )
        };
        let change = PepChange {
            bare: svc.jid,
            node: &node,
            read: Some(raw),
            write: NodeWrite::Keep,
            put: Vec::new(),
            remove: Vec::new(),
            subs_put,
            subs_remove,
        };
        if write_node(server, change).await? {
            subscription_changed(server, svc, &node, &cfg, &jid, allow).await;
            return Ok(());
        }
    }
    Err(Condition::ResourceConstraint.into())
}

/// The XEP-0050 command of XEP-0060 §8.7.
pub const GET_PENDING: &str = "http://jabber.org/protocol/pubsub#get-pending";

/// XEP-0060 §8.7 (`get-pending`, an XEP-0050 command of a generic
/// service): executed, a form listing the requester's nodes with pending
/// subscriptions; submitted with one of them, an approval request (§8.6)
/// for each of its pending subscriptions, sent to the requester. Nothing
/// is kept between the two steps (the form names the node), so any node
/// of a cluster answers either.
pub async fn get_pending(req: &Req<'_>, cmd: &Element) -> IqResult {
    use crate::modules::adhoc::NS_COMMANDS;
    let sessionid = cmd
        .get_attr("sessionid")
        .filter(|s| !s.is_empty())
        .map_or_else(
            || format!("pubsub-get-pending:{}", new_item_id()),
            str::to_owned,
        );
    let answer = |status: &str| {
        Element::new("command", NS_COMMANDS)
            .attr("node", GET_PENDING)
            .attr("sessionid", sessionid.as_str())
            .attr("status", status)
    };
    if cmd.get_attr("action") == Some("cancel") {
        return Ok(answer("canceled").into());
    }
    let submitted = cmd
        .get_child("x", NS_DATA)
        .filter(|x| x.get_attr("type") == Some("submit"));
    let Some(x) = submitted else {
        // The nodes the requester owns that have pending subscriptions.
        let mut owns_any = false;
        let mut field = Element::new("field", NS_DATA)
            .attr("var", "pubsub#node")
            .attr("type", "list-single");
        for (node, rec) in req.server.storage.pep_nodes(req.svc.jid)? {
            if affiliation(req.server, req.svc, &rec, req.bare) != Aff::Owner {
                continue;
            }
            owns_any = true;
            let subs = req.server.storage.pep_subs(req.svc.jid, &node)?;
            if subs.iter().any(|s| s.pending) {
                field = field.child(
                    Element::new("option", NS_DATA)
                        .child(Element::new("value", NS_DATA).text(node.as_str())),
                );
            }
        }
        // §8.7.3.3: whoever owns no node approves nothing.
        if !owns_any {
            return Err(Condition::Forbidden.into());
        }
        let form = Element::new("x", NS_DATA)
            .attr("type", "form")
            .child(
                Element::new("field", NS_DATA)
                    .attr("var", "FORM_TYPE")
                    .attr("type", "hidden")
                    .child(Element::new("value", NS_DATA).text(SUBSCRIBE_AUTHORIZATION)),
            )
            .child(field);
        return Ok(answer("executing")
            .child(
                Element::new("actions", NS_COMMANDS)
                    .attr("execute", "complete")
                    .child(Element::new("complete", NS_COMMANDS)),
            )
            .child(form)
            .into());
    };
    let node = x
        .elements()
        .find(|f| f.is("field", NS_DATA) && f.get_attr("var") == Some("pubsub#node"))
        .and_then(|f| f.get_child("value", NS_DATA))
        .map(|v| v.text_content())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| StanzaError::from(Condition::BadRequest))?;
    let Some((_, rec)) = read_node(req.server, req.svc.jid, &node).await? else {
        return Err(Condition::ItemNotFound.into());
    };
    must_own(req, &rec)?;
    for sub in req
        .server
        .storage
        .pep_subs(req.svc.jid, &node)?
        .iter()
        .filter(|s| s.pending)
    {
        ask_approval(req.server, req.svc, &node, sub, req.full).await;
    }
    Ok(answer("completed").into())
}

/// The subscription a request names among `jid`'s (`mine`, XEP-0060
/// §6.2.3), or the error the XEP names.
fn pick_sub(mut mine: Vec<PepSub>, subid: Option<&str>) -> Result<PepSub, StanzaError> {
    if mine.is_empty() {
        return Err(app(Condition::UnexpectedRequest, "not-subscribed"));
    }
    match subid.filter(|s| !s.is_empty()) {
        Some(id) => mine
            .into_iter()
            .find(|s| s.subid == id)
            .ok_or_else(|| app(Condition::NotAcceptable, "invalid-subid")),
        None if mine.len() > 1 => Err(app(Condition::BadRequest, "subid-required")),
        None => Ok(mine.swap_remove(0)),
    }
}

/// May the requester act on `jid`'s subscriptions: its own, or as the
/// node's owner.
fn may_act_for(req: &Req<'_>, rec: &PepNode, jid: &str) -> Result<(), StanzaError> {
    if crate::stanza::split(jid).0 == req.bare {
        return Ok(());
    }
    must_own(req, rec)
}

/// XEP-0060 §6.2.
async fn unsubscribe(req: &Req<'_>, unsub: &Element) -> IqResult {
    let node = node_attr(unsub)?;
    let jid = jid_attr(unsub)?;
    for _ in 0..MAX_ATTEMPTS {
        let Some((raw, rec)) = read_node(req.server, req.svc.jid, node).await? else {
            return Err(Condition::ItemNotFound.into());
        };
        may_act_for(req, &rec, &jid)?;
        let mine = req.server.storage.pep_subs_of(req.svc.jid, node, &jid)?;
        let gone = pick_sub(mine, unsub.get_attr("subid"))?;
        let cfg = NodeConfig::decode(&rec.config);
        let to_tell = owners_to_tell(req.svc, &rec, &cfg);
        let change = PepChange::unsubscribe(req.svc.jid, node, Some(raw), gone.jid, gone.subid);
        if write_node(req.server, change).await? {
            tell_owners(req.server, req.svc, node, &cfg, &to_tell, &jid, false).await;
            return Ok(IqReply::EMPTY);
        }
    }
    Err(Condition::ResourceConstraint.into())
}

/// XEP-0060 §6.3.2: a subscription's options.
async fn options_get(req: &Req<'_>, opts: &Element) -> IqResult {
    let node = node_attr(opts)?;
    let Some(jid) = opts.get_attr("jid") else {
        return Err(app(Condition::BadRequest, "jid-required"));
    };
    let jid = jid::Jid::new(jid)
        .map_err(|_| app(Condition::BadRequest, "invalid-jid"))?
        .to_string();
    let Some((_, rec)) = read_node(req.server, req.svc.jid, node).await? else {
        return Err(Condition::ItemNotFound.into());
    };
    may_act_for(req, &rec, &jid)?;
    let mine = req.server.storage.pep_subs_of(req.svc.jid, node, &jid)?;
    let s = pick_sub(mine, opts.get_attr("subid"))?;
    Ok(Element::new("pubsub", NS_PUBSUB)
        .child(
            Element::new("options", NS_PUBSUB)
                .attr("node", node)
                .attr("jid", jid.as_str())
                .attr("subid", s.subid.as_str())
                .child(sub_options_form(s.deliver, &s.show_values, s.temporary)),
        )
        .into())
}

/// XEP-0060 §6.3.5: new options for a subscription.
async fn options_set(req: &Req<'_>, opts: &Element) -> IqResult {
    let node = node_attr(opts)?;
    let Some(jid) = opts.get_attr("jid") else {
        return Err(app(Condition::BadRequest, "jid-required"));
    };
    let jid = jid::Jid::new(jid)
        .map_err(|_| app(Condition::BadRequest, "invalid-jid"))?
        .to_string();
    let Some(x) = opts.elements().next() else {
        return Err(app(Condition::BadRequest, "invalid-options"));
    };
    let wanted = parse_sub_options(x)?;
    for _ in 0..MAX_ATTEMPTS {
        let Some((raw, rec)) = read_node(req.server, req.svc.jid, node).await? else {
            return Err(Condition::ItemNotFound.into());
        };
        may_act_for(req, &rec, &jid)?;
        let mine = req.server.storage.pep_subs_of(req.svc.jid, node, &jid)?;
        let mut sub = pick_sub(mine, opts.get_attr("subid"))?;
        let change = SubOptions {
            deliver: wanted.deliver,
            show_values: wanted.show_values.clone(),
            temporary: wanted.temporary,
        };
        if !change.apply(&mut sub) {
            return Ok(IqReply::EMPTY);
        }
        let change = PepChange {
            bare: req.svc.jid,
            node,
            read: Some(raw),
            write: NodeWrite::Keep,
            put: Vec::new(),
            remove: Vec::new(),
            subs_put: vec![sub],
            subs_remove: Vec::new(),
        };
        if write_node(req.server, change).await? {
            return Ok(IqReply::EMPTY);
        }
    }
    Err(Condition::ResourceConstraint.into())
}

/// XEP-0060 §6.4: the default subscription options, of the service or
/// of one (existing) node.
async fn default_sub_options(req: &Req<'_>, el: &Element) -> IqResult {
    let mut out = Element::new("default", NS_PUBSUB);
    if let Some(node) = el.get_attr("node").filter(|n| !n.is_empty()) {
        if read_node(req.server, req.svc.jid, node).await?.is_none() {
            return Err(Condition::ItemNotFound.into());
        }
        out.set_attr("node", node);
    }
    let mut x = sub_options_form(true, &[], false);
    x.set_attr("type", "result");
    Ok(Element::new("pubsub", NS_PUBSUB).child(out.child(x)).into())
}

/// The nodes a listing covers: one (which must exist) or all.
async fn nodes_of(req: &Req<'_>, el: &Element) -> Result<Vec<(String, PepNode)>, StanzaError> {
    match el.get_attr("node").filter(|n| !n.is_empty()) {
        Some(n) => match read_node(req.server, req.svc.jid, n).await? {
            Some((_, rec)) => Ok(vec![(n.to_owned(), rec)]),
            None => Err(Condition::ItemNotFound.into()),
        },
        None => Ok(req.server.storage.pep_nodes(req.svc.jid)?),
    }
}

/// XEP-0060 §5.6: the requester's subscriptions.
async fn my_subscriptions(req: &Req<'_>, el: &Element) -> IqResult {
    let mut out = Element::new("subscriptions", NS_PUBSUB);
    if let Some(n) = el.get_attr("node").filter(|n| !n.is_empty()) {
        out.set_attr("node", n);
    }
    let subs: Vec<(String, PepSub)> = match el.get_attr("node").filter(|n| !n.is_empty()) {
        Some(n) => {
            if read_node(req.server, req.svc.jid, n).await?.is_none() {
                return Err(Condition::ItemNotFound.into());
            }
            let all = req.server.storage.pep_subs(req.svc.jid, n)?;
            all.into_iter().map(|s| (n.to_owned(), s)).collect()
        }
        None => req.server.storage.pep_service_subs(req.svc.jid)?,
    };
    for (node, s) in subs
        .iter()
        .filter(|(_, s)| crate::stanza::split(&s.jid).0 == req.bare)
    {
        out = out.child(subscription_el(NS_PUBSUB, Some(node), s));
    }
    Ok(Element::new("pubsub", NS_PUBSUB).child(out).into())
}

/// XEP-0060 §5.7: the requester's affiliations.
async fn my_affiliations(req: &Req<'_>, el: &Element) -> IqResult {
    let mut out = Element::new("affiliations", NS_PUBSUB);
    if let Some(n) = el.get_attr("node").filter(|n| !n.is_empty()) {
        out.set_attr("node", n);
    }
    for (node, rec) in nodes_of(req, el).await? {
        let a = affiliation(req.server, req.svc, &rec, req.bare);
        if a != Aff::None {
            out = out.child(
                Element::new("affiliation", NS_PUBSUB)
                    .attr("node", node)
                    .attr("affiliation", a.as_str()),
            );
        }
    }
    Ok(Element::new("pubsub", NS_PUBSUB).child(out).into())
}

/// XEP-0060 §8.8.1: every subscription to a node, for its owner.
async fn owner_subscriptions(req: &Req<'_>, el: &Element) -> IqResult {
    let node = node_attr(el)?;
    owned_node(req, node).await?;
    let mut out = Element::new("subscriptions", NS_OWNER).attr("node", node);
    for s in &req.server.storage.pep_subs(req.svc.jid, node)? {
        out = out.child(subscription_el(NS_OWNER, None, s));
    }
    Ok(Element::new("pubsub", NS_OWNER).child(out).into())
}

/// XEP-0060 §8.8.2: the owner adds (`subscribed`) or removes (`none`)
/// subscriptions; an entry without `subscription` changes nothing. The
/// valid entries take effect; any other (a bad JID or state) makes the
/// answer `<not-acceptable/>` (§8.8.2.4). Each entity whose subscription
/// changed is told (§8.8.4).
async fn owner_subscriptions_set(req: &Req<'_>, el: &Element) -> IqResult {
    let node = node_attr(el)?;
    let mut changes = Vec::new();
    // The entries refused (the JID as given).
    let mut invalid: Vec<String> = Vec::new();
    for s in el.elements().filter(|e| e.is("subscription", NS_OWNER)) {
        let given = s.get_attr("jid").unwrap_or_default();
        let state = match s.get_attr("subscription") {
            None => continue,
            Some("subscribed") => true,
            Some("none") => false,
            Some(_) => {
                invalid.push(given.to_owned());
                continue;
            }
        };
        match jid_attr(s) {
            Ok(jid) => changes.push((jid, state, s.get_attr("subid").map(str::to_owned))),
            Err(_) => invalid.push(given.to_owned()),
        }
    }
    for _ in 0..MAX_ATTEMPTS {
        let (raw, rec) = owned_node(req, node).await?;
        let cfg = NodeConfig::decode(&rec.config);
        let mut count = req.server.storage.pep_sub_count(req.svc.jid, node)?;
        let mut changed: Vec<(String, bool)> = Vec::new();
        let mut subs_put = Vec::new();
        let mut subs_remove = Vec::new();
        for (jid, subscribed, subid) in &changes {
            let mine = req.server.storage.pep_subs_of(req.svc.jid, node, jid)?;
            let has = !mine.is_empty() || subs_put.iter().any(|s: &PepSub| &s.jid == jid);
            if *subscribed && mine.iter().any(|s| s.pending) {
                // §8.8.2: approving a pending subscription.
                subs_put.extend(mine.iter().filter(|s| s.pending).map(|s| PepSub {
                    pending: false,
                    ..s.clone()
                }));
                changed.push((jid.clone(), true));
            } else if *subscribed && !has {
                if count >= MAX_SUBS_PER_NODE as u64 {
                    return Err(Condition::PolicyViolation.into());
                }
                count += 1;
                subs_put.push(PepSub {
                    jid: jid.clone(),
                    subid: new_item_id(),
                    deliver: true,
                    ..PepSub::default()
                });
                changed.push((jid.clone(), true));
            } else if !subscribed && !mine.is_empty() {
                let going: Vec<&PepSub> = mine
                    .iter()
                    .filter(|s| subid.as_deref().is_none_or(|id| id == s.subid))
                    .collect();
                if going.len() == mine.len() {
                    changed.push((jid.clone(), false));
                }
                subs_remove.extend(going.into_iter().map(|s| (s.jid.clone(), s.subid.clone())));
            }
        }
        let change = PepChange {
            bare: req.svc.jid,
            node,
            read: Some(raw),
            write: NodeWrite::Keep,
            put: Vec::new(),
            remove: Vec::new(),
            subs_put,
            subs_remove,
        };
        if write_node(req.server, change).await? {
            for (jid, subscribed) in changed {
                subscription_changed(req.server, req.svc, node, &cfg, &jid, subscribed).await;
            }
            if invalid.is_empty() {
                return Ok(IqReply::EMPTY);
            }
            // §8.8.2.4: the refused entries, with the state they keep.
            let mut list = Element::new("subscriptions", NS_OWNER).attr("node", node);
            for given in &invalid {
                let subs = match jid::Jid::new(given) {
                    Ok(j) => req
                        .server
                        .storage
                        .pep_subs_of(req.svc.jid, node, &j.to_string())?,
                    Err(_) => Vec::new(),
                };
                let state = match subs.first() {
                    None => "none",
                    Some(s) if s.pending => "pending",
                    Some(_) => "subscribed",
                };
                list = list.child(
                    Element::new("subscription", NS_OWNER)
                        .attr("jid", given.as_str())
                        .attr("subscription", state),
                );
            }
            return Err(StanzaError::from(Condition::NotAcceptable)
                .with_payload(Element::new("pubsub", NS_OWNER).child(list)));
        }
    }
    Err(Condition::ResourceConstraint.into())
}

/// XEP-0060 §8.9.1: a node's affiliations, for its owner.
async fn owner_affiliations(req: &Req<'_>, el: &Element) -> IqResult {
    let node = node_attr(el)?;
    let (_, rec) = owned_node(req, node).await?;
    let mut out = Element::new("affiliations", NS_OWNER).attr("node", node);
    if req.svc.generic.is_none() {
        out = out.child(
            Element::new("affiliation", NS_OWNER)
                .attr("jid", req.svc.jid)
                .attr("affiliation", "owner"),
        );
    }
    for (jid, a) in &rec.affiliations {
        out = out.child(
            Element::new("affiliation", NS_OWNER)
                .attr("jid", jid.as_str())
                .attr("affiliation", a.as_str()),
        );
    }
    Ok(Element::new("pubsub", NS_OWNER).child(out).into())
}

/// XEP-0060 §8.9.2: the owner changes affiliations (`none` removes one;
/// an outcast loses its subscriptions); an entry without `affiliation`
/// changes nothing, one entity named twice is `<bad-request/>`. The valid
/// entries take effect; one that is not (an unknown affiliation or JID,
/// the last owner leaving, a PEP node's account) makes the answer
/// `<not-acceptable/>` (§8.9.2.4).
async fn owner_affiliations_set(req: &Req<'_>, el: &Element) -> IqResult {
    let node = node_attr(el)?;
    let mut changes: Vec<(String, Aff)> = Vec::new();
    // The entries refused (the JID as given, or normalised).
    let mut invalid: Vec<String> = Vec::new();
    for a in el.elements().filter(|e| e.is("affiliation", NS_OWNER)) {
        let Some(name) = a.get_attr("affiliation") else {
            continue;
        };
        let given = a.get_attr("jid").unwrap_or_default();
        let jid = jid::Jid::new(given).ok().map(|j| j.to_bare().to_string());
        let (Some(jid), Some(aff)) = (jid, Aff::parse(name)) else {
            invalid.push(given.to_owned());
            continue;
        };
        if changes.iter().any(|(j, _)| *j == jid) {
            return Err(Condition::BadRequest.into());
        }
        if req.svc.generic.is_none() && (aff == Aff::Owner || jid == req.svc.jid) {
            invalid.push(jid);
            continue;
        }
        changes.push((jid, aff));
    }
    for _ in 0..MAX_ATTEMPTS {
        let (raw, mut rec) = owned_node(req, node).await?;
        let cfg = NodeConfig::decode(&rec.config);
        let mut refused = invalid.clone();
        let mut subs_remove = Vec::new();
        let mut subs_put = Vec::new();
        // Subscribers to tell: subscribed (approved) or not (cancelled).
        let mut told: Vec<(String, bool)> = Vec::new();
        for (jid, aff) in &changes {
            let before = rec.affiliations.clone();
            rec.affiliations.retain(|(j, _)| j != jid);
            if *aff != Aff::None {
                rec.affiliations
                    .push((jid.clone(), aff.as_str().to_owned()));
            }
            if req.svc.generic.is_some() && owners(req.svc, &rec).next().is_none() {
                rec.affiliations = before;
                refused.push(jid.clone());
                continue;
            }
            let theirs = || -> Result<Vec<PepSub>, StanzaError> {
                Ok(req
                    .server
                    .storage
                    .pep_subs(req.svc.jid, node)?
                    .into_iter()
                    .filter(|s| crate::stanza::split(&s.jid).0 == jid)
                    .collect())
            };
            if *aff == Aff::Outcast {
                // An outcast's subscriptions (and requests) end, told so.
                for s in theirs()? {
                    if !told.iter().any(|(j, _)| *j == s.jid) {
                        told.push((s.jid.clone(), false));
                    }
                    subs_remove.push((s.jid, s.subid));
                }
            } else if *aff >= Aff::Member {
                // §8.7: a pending request of a new member, publisher or
                // owner is approved.
                for s in theirs()?.into_iter().filter(|s| s.pending) {
                    told.push((s.jid.clone(), true));
                    subs_put.push(PepSub {
                        pending: false,
                        ..s
                    });
                }
            }
        }
        // §8.9.2.4: the refused entries, with the affiliations they keep.
        let refusal = (!refused.is_empty()).then(|| {
            let mut list = Element::new("affiliations", NS_OWNER).attr("node", node);
            for j in &refused {
                list = list.child(
                    Element::new("affiliation", NS_OWNER)
                        .attr("jid", j.as_str())
                        .attr(
                            "affiliation",
                            affiliation(req.server, req.svc, &rec, j).as_str(),
                        ),
                );
            }
            StanzaError::from(Condition::NotAcceptable)
                .with_payload(Element::new("pubsub", NS_OWNER).child(list))
        });
        let change = PepChange {
            bare: req.svc.jid,
            node,
            read: Some(raw),
            write: NodeWrite::Put(rec),
            put: Vec::new(),
            remove: Vec::new(),
            subs_put,
            subs_remove,
        };
        if write_node(req.server, change).await? {
            for (jid, subscribed) in &told {
                subscription_changed(req.server, req.svc, node, &cfg, jid, *subscribed).await;
            }
            if let Some(e) = refusal {
                return Err(e);
            }
            return Ok(IqReply::EMPTY);
        }
    }
    Err(Condition::ResourceConstraint.into())
}

/// An account is deleted: its affiliations and subscriptions on the
/// nodes of every domain's pubsub service go, and so do the nodes it alone
/// owned (a later account of that name must not inherit them). One
/// compare-and-set per node it appears in.
pub async fn forget_account(
    storage: &crate::storage::Storage,
    config: &crate::config::Config,
    bare: &str,
) -> Result<(), starling_cluster::StoreError> {
    if !config.pubsub.enabled {
        return Ok(());
    }
    for domain in &config.domains {
        let svc = format!("{}.{domain}", config.pubsub.subdomain);
        // Its subscriptions: plain deletes (no node record depends on them).
        let subs: Vec<(String, PepSub)> = storage
            .pep_service_subs(&svc)?
            .into_iter()
            .filter(|(_, s)| crate::stanza::split(&s.jid).0 == bare)
            .collect();
        for (node, sub) in subs {
            let read = storage.pep_node(&svc, &node)?.map(|(raw, _)| raw);
            let change = PepChange::unsubscribe(&svc, &node, read, sub.jid, sub.subid);
            let _ = storage.pep_write(change).await?;
        }
        // Its affiliations, and the nodes it alone owned.
        for (node, _) in storage.pep_nodes(&svc)? {
            for _ in 0..MAX_ATTEMPTS {
                let Some((raw, mut rec)) = storage.pep_node(&svc, &node)? else {
                    break;
                };
                if !rec.affiliations.iter().any(|(j, _)| j == bare) {
                    break;
                }
                rec.affiliations.retain(|(j, _)| j != bare);
                let orphan = !rec.affiliations.iter().any(|(_, a)| a == "owner");
                let change = PepChange {
                    bare: &svc,
                    node: &node,
                    read: Some(raw),
                    write: if orphan {
                        NodeWrite::Delete
                    } else {
                        NodeWrite::Put(rec)
                    },
                    put: Vec::new(),
                    remove: Vec::new(),
                    subs_put: Vec::new(),
                    subs_remove: Vec::new(),
                };
                if storage.pep_write(change).await? {
                    break;
                }
                // Changed meanwhile (maybe through another node): read again
                // once this replica has caught up.
                if storage.store.has_peers() {
                    storage.store.read_barrier().await?;
                }
            }
        }
    }
    Ok(())
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
        if non_negative(&presence)
            && super::caps::features_of(server, &presence)
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

/// Whether an available presence has a non-negative priority: only such
/// resources get PEP notifications and last items (XEP-0163 §4.3.1,
/// §4.3.2).
pub(crate) fn non_negative(presence: &Element) -> bool {
    presence
        .elements()
        .find(|e| e.name == "priority")
        .and_then(|p| p.text_content().trim().parse::<i8>().ok())
        .is_none_or(|p| p >= 0)
}

/// Sends `event` (the child of `<event/>`) from the service's JID to
/// whoever gets the node's notifications, wherever bound: the explicit
/// subscribers (once per JID, with their SubIDs as SHIM headers when
/// they hold several, XEP-0060 §12.? / §7.1.2.2) and, on a PEP service,
/// the interested resources of the owner and its contacts. `replyto`: the
/// publishing resource, named to those (and only those) who share the
/// owner's presence in an XEP-0033 `replyto` address (XEP-0163 §4.3.1.3).
async fn notify(
    server: &Server,
    svc: Svc<'_>,
    node: &str,
    cfg: &NodeConfig,
    subs: &[PepSub],
    event: Element,
    replyto: Option<&str>,
) {
    let mut implicit = match svc.generic {
        None => recipients(server, svc.jid, node, cfg),
        Some(_) => Vec::new(),
    };
    // Contacts on other domains: those whose presence this node took,
    // and (below) every other node's.
    let federated = svc.generic.is_none() && server.config.s2s.enabled;
    if federated {
        let remote = remote::recipients_here(server, svc.jid, node, cfg);
        metrics::counter!("starling_pep_remote_notifications_total").increment(remote.len() as u64);
        implicit.extend(remote);
    }
    let tell_nodes = federated && server.storage.store.has_peers();
    // A temporary subscription whose JID is gone (its node died before
    // it could end it, [`presence_ended`]) gets nothing.
    let live: Vec<&PepSub> = subs
        .iter()
        .filter(|s| s.deliver && !s.pending && (!s.temporary || available(server, &s.jid)))
        .collect();
    if implicit.is_empty() && live.is_empty() && !tell_nodes {
        return;
    }
    let msg = Element::new("message", NS_CLIENT)
        .attr("from", svc.jid)
        .attr("type", cfg.notification_type.as_str())
        .child(Element::new("event", NS_EVENT).child(event));
    let shared = match replyto {
        Some(publisher) => &msg.clone().child(
            Element::new("addresses", NS_ADDRESS).child(
                Element::new("address", NS_ADDRESS)
                    .attr("type", "replyto")
                    .attr("jid", publisher),
            ),
        ),
        None => &msg,
    };
    if tell_nodes {
        remote::tell_nodes(server, svc.jid, node, cfg, shared);
    }
    for full in &implicit {
        let mut m = shared.clone();
        m.set_attr("to", full.as_str());
        m.set_attr("id", new_item_id());
        metrics::counter!("starling_pep_notifications_total").increment(1);
        let _ = crate::session::im::deliver_to_full(server, full, m);
    }
    // One notification per subscribed JID, with its SubIDs (§6.1.6).
    let mut order: Vec<&str> = Vec::new();
    let mut by_jid: std::collections::HashMap<&str, Vec<&PepSub>> =
        std::collections::HashMap::new();
    for s in live {
        by_jid
            .entry(s.jid.as_str())
            .or_insert_with(|| {
                order.push(&s.jid);
                Vec::new()
            })
            .push(s);
    }
    let notes = order.into_iter().flat_map(|jid| {
        // Already notified through presence (PEP).
        if implicit
            .iter()
            .any(|f| f == jid || crate::stanza::split(f).0 == jid)
        {
            return Vec::new();
        }
        if cfg.presence_based_delivery && !available(server, jid) {
            return Vec::new();
        }
        // XEP-0163 §4.3.2: none to a subscriber the owner blocks (or
        // that blocks the owner), XEP-0191.
        if svc.generic.is_none() && super::blocking::either_blocks(server, svc.jid, jid) {
            return Vec::new();
        }
        let mine = &by_jid[jid];
        // `pubsub#show-values`: only the resources showing one of them,
        // unless a subscription of this JID has no such filter.
        let targets = if mine.iter().any(|s| s.show_values.is_empty()) {
            vec![jid.to_owned()]
        } else {
            showing(server, jid, mine)
        };
        targets
            .into_iter()
            .map(|to| {
                let mut m = msg.clone();
                m.set_attr("to", to);
                m.set_attr("id", new_item_id());
                if mine.len() > 1 {
                    let mut headers = Element::new("headers", NS_SHIM);
                    for s in mine {
                        headers = headers.child(
                            Element::new("header", NS_SHIM)
                                .attr("name", "SubID")
                                .text(s.subid.as_str()),
                        );
                    }
                    m = m.child(headers);
                }
                m
            })
            .collect()
    });
    // Sent before the request is answered (so one publisher's events
    // arrive in order), several at a time: each may wait for another
    // cluster node's acknowledgement.
    futures::stream::iter(notes)
        .for_each_concurrent(NOTIFY_CONCURRENCY, |m| async move {
            metrics::counter!("starling_pep_notifications_total").increment(1);
            if let Err(e) = route_boxed(server, m).await {
                tracing::debug!(condition = ?e.0.condition, "pubsub notification not delivered");
            }
        })
        .await;
}

/// Whether `jid` (a bare JID: any of its resources) is available now,
/// wherever bound.
/// The available resources of `jid` (itself, if a full JID) whose
/// presence shows a state one of `subs` names (`online`: no `<show/>`).
fn showing(server: &Server, jid: &str, subs: &[&PepSub]) -> Vec<String> {
    let (bare, res) = crate::stanza::split(jid);
    server
        .router
        .presences(bare, 0)
        .iter()
        .filter_map(|p| {
            let from = p.get_attr("from")?;
            if res.is_some() && from != jid {
                return None;
            }
            let show = p
                .elements()
                .find(|e| e.name == "show")
                .map(|e| e.text_content());
            let show = show
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .unwrap_or("online");
            subs.iter()
                .any(|s| s.show_values.iter().any(|v| v == show))
                .then(|| from.to_owned())
        })
        .collect()
}

fn available(server: &Server, jid: &str) -> bool {
    let (bare, res) = crate::stanza::split(jid);
    server
        .router
        .presences(bare, 0)
        .iter()
        .any(|p| res.is_none() || p.get_attr("from") == Some(jid))
}

/// Notifications of one event in flight at once.
const NOTIFY_CONCURRENCY: usize = 32;

const NS_SHIM: &str = "http://jabber.org/protocol/shim";
const NS_ADDRESS: &str = "http://jabber.org/protocol/address";

/// Routes a notification like a message a client sent (to a bare JID:
/// its available resources), boxed: routing can reach a pubsub service,
/// whose requests notify.
fn route_boxed(
    server: &Server,
    m: Element,
) -> futures::future::BoxFuture<'_, Result<(), crate::session::im::Bounce>> {
    crate::session::im::route_message(server, m).boxed()
}

/// The notification of item `id` of `node` (of the service `from`), sent
/// after the fact (XEP-0203 delay): the last item a subscriber or a newly
/// interested session gets. `None` if the item is gone.
fn last_item_message(
    server: &Server,
    from: &str,
    node: &str,
    cfg: &NodeConfig,
    id: &str,
    to: &str,
) -> Option<Element> {
    let (mut item, at) = server
        .storage
        .pep_item(from, node, id)
        .ok()
        .flatten()
        .as_deref()
        .and_then(stored_item)?;
    if cfg.expired(at, now_millis()) {
        return None;
    }
    // XEP-0203: when it was published, if known.
    let stamp = at
        .and_then(|t| chrono::DateTime::from_timestamp_millis(i64::try_from(t).ok()?))
        .map_or_else(crate::stanza::now_stamp, |d| {
            d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
        });
    item.ns = NS_EVENT.to_owned();
    if !cfg.deliver_payloads {
        item.children.clear();
    }
    Some(
        Element::new("message", NS_CLIENT)
            .attr("from", from)
            .attr("to", to)
            .attr("type", cfg.notification_type.as_str())
            .attr("id", new_item_id())
            .child(
                Element::new("event", NS_EVENT).child(
                    Element::new("items", NS_EVENT)
                        .attr("node", node)
                        .child(item),
                ),
            )
            .child(
                Element::new("delay", crate::stanza::NS_DELAY)
                    .attr("from", from)
                    .attr("stamp", stamp),
            ),
    )
}

/// XEP-0060 §6.1.7: the last item of a node, to a new subscriber.
async fn send_last_to(
    server: &Server,
    svc: Svc<'_>,
    node: &str,
    cfg: &NodeConfig,
    id: &str,
    to: &str,
) {
    if let Some(msg) = last_item_message(server, svc.jid, node, cfg, id, to) {
        let _ = route_boxed(server, msg).await;
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
            || may_read(server, Svc::pep(owner), &node, &rec, bare, &cfg).is_err()
        {
            continue;
        }
        if let Some(msg) = last_item_message(server, owner, &node, &cfg, last, full) {
            let _ = crate::session::im::deliver_to_full(server, full, msg);
        }
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
    if !non_negative(presence) {
        return;
    }
    if let Some(features) = super::caps::features_of(server, presence) {
        send_last_items(server, bare, full, roster, &features, &|_| true);
    }
}

/// A session of `bare` (`full`) went unavailable: its temporary
/// subscriptions end (XEP-0060 §12.4), and those of the bare JID when no
/// resource is left available. One read of a usually empty prefix.
pub async fn presence_ended(server: &Server, bare: &str, full: &str) {
    let temps = match server.storage.pep_temp_subs(bare) {
        Ok(t) if !t.is_empty() => t,
        _ => return,
    };
    let bare_gone = server.router.presences(bare, 0).is_empty();
    let mut dangling = Vec::new();
    for t in temps {
        let (service, node, jid, subid) = &t;
        if jid != full && !(bare_gone && jid == bare) {
            continue;
        }
        match end_subscription(server, service, node, jid, subid).await {
            Ok(true) => {}
            Ok(false) => dangling.push(t),
            Err(e) => {
                tracing::debug!(condition = ?e.condition, node, "temporary subscription not ended")
            }
        }
    }
    if !dangling.is_empty()
        && let Err(e) = server.storage.pep_temp_forget(&dangling).await
    {
        tracing::debug!(error = %e, "temporary subscription index not cleaned");
    }
}

/// Removes one subscription; `false` if it (or its node) is gone already.
async fn end_subscription(
    server: &Server,
    service: &str,
    node: &str,
    jid: &str,
    subid: &str,
) -> Result<bool, StanzaError> {
    for _ in 0..MAX_ATTEMPTS {
        let Some((raw, _)) = read_node(server, service, node).await? else {
            return Ok(false);
        };
        if !server
            .storage
            .pep_subs_of(service, node, jid)?
            .iter()
            .any(|s| s.subid == subid)
        {
            return Ok(false);
        }
        let change =
            PepChange::unsubscribe(service, node, Some(raw), jid.to_owned(), subid.to_owned());
        if write_node(server, change).await? {
            return Ok(true);
        }
    }
    Err(Condition::ResourceConstraint.into())
}

/// `owner` approved `contact`'s subscription (XEP-0163 §4.3.4: the
/// implicit subscription starts): the contact's available resources get
/// the last items they are interested in.
pub fn subscription_started(server: &Server, owner: &str, contact: &str) {
    remote::subscription_started(server, owner, contact);
    for p in server.router.presences(contact, 0) {
        let Some(full) = p.get_attr("from") else {
            continue;
        };
        if !non_negative(&p) {
            continue;
        }
        if let Some(features) = super::caps::features_of(server, &p) {
            last_items_of(server, owner, contact, full, &features, &|_| true);
        }
    }
}

/// An available session changed its caps from `old` to the known
/// `features` (in its new `presence`): it gets the last items of the
/// nodes it newly wants (XEP-0163 §4.3.4, "+notify appears"), unless its
/// priority is negative.
pub fn caps_changed(
    server: &Server,
    full: &str,
    presence: &Element,
    old: Option<&[String]>,
    features: &[String],
) {
    let (bare, _) = crate::stanza::split(full);
    let new_interest = |node: &str| old.is_none_or(|o| !super::caps::wants_notify(o, node));
    if !non_negative(presence) {
        return;
    }
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
        rs.iter().any(|r| {
            &*r.resource == res && r.available && r.presence.as_ref().is_some_and(non_negative)
        })
    });
    if !available {
        return;
    }
    if let Ok(roster) = server.storage.roster(bare) {
        send_last_items(server, bare, full, &roster, features, &|_| true);
    }
}

// ------------------------------------------------------------ federation

pub mod remote {
    //! PEP for contacts on other domains (XEP-0163 §4.3 across
    //! federation). A remote contact's available resources and caps are
    //! known from the presence its server sends the owner
    //! (`s2s::contacts`, kept by the node that took it):
    //! - on a publish, the node that handles it notifies the ones it
    //!   knows and tells every other node ([`KIND_PEP_REMOTE`]) to
    //!   notify the ones they know;
    //! - a new or changed available presence gets the last items the
    //!   resource newly wants, once its caps are known (asked of it over
    //!   federation when no one verified them yet);
    //! - an approved subscription (§4.3.4) gets them too.
    //!
    //! As for local contacts: only contacts with a subscription `from` or
    //! `both` whose caps have `<node>+notify` and whose priority is not
    //! negative, within the node's access model, neither side blocking.

    use super::*;
    use crate::s2s::contacts::{Remote, Seen};
    use starling_cluster::{DeliveryResult, Envelope};

    /// Envelope kind: a PEP notification of the owner `to` for node
    /// `from`; the stanza is the node's configuration (length-prefixed)
    /// followed by the notification without its `to`.
    pub const KIND_PEP_REMOTE: u32 = 5;

    /// Presence from another domain's `from` to the local `to` (a
    /// resource or the bare JID): available (`true`) or not.
    pub fn presence(server: &Server, to: &str, from: &str, el: &Element, available: bool) {
        let owner = crate::stanza::split(to).0;
        let contacts = &server.s2s.contacts;
        if !available {
            contacts.unavailable(owner, from);
            return;
        }
        let (contact, Some(_)) = crate::stanza::split(from) else {
            return;
        };
        // A new one only from a roster contact of an available owner: a
        // server cannot fill this node's memory with made-up resources.
        if !contacts.has(owner, from)
            && (!server.router.bound(owner).iter().any(|b| b.available)
                || !matches!(server.storage.roster_item(owner, contact), Ok(Some(_))))
        {
            return;
        }
        let caps = super::super::caps::presented(el);
        let remote = Remote {
            full: from.to_owned(),
            caps: caps.map(|(h, v, _)| (h, v.to_owned())),
            non_negative: non_negative(el),
        };
        let old = match contacts.available(owner, remote) {
            Seen::Same => return,
            Seen::New => None,
            Seen::Changed(old) => old,
        };
        let Some((hash, ver, caps_node)) = caps else {
            return;
        };
        // Asked whether or not the contact is approved yet: it may be
        // soon, and then its interests must be known.
        let Some(features) = super::super::caps::known(server, hash, ver) else {
            let domain = crate::s2s::domain_of(owner);
            super::super::caps::ask(server, domain, from, hash, ver, caps_node);
            return;
        };
        if !non_negative(el) || !approved(server, owner, contact) {
            return;
        }
        let old = old.and_then(|(h, v)| super::super::caps::known(server, h, &v));
        let new_interest = |node: &str| {
            old.as_deref()
                .is_none_or(|o| !super::super::caps::wants_notify(o, node))
        };
        last_items_of(server, owner, contact, from, &features, &new_interest);
    }

    /// Whether `owner` approved `contact`'s subscription.
    fn approved(server: &Server, owner: &str, contact: &str) -> bool {
        server
            .storage
            .roster_item(owner, contact)
            .ok()
            .flatten()
            .is_some_and(|i| i.subscription.from())
    }

    /// The caps `ver` of the remote resource `full` were just verified:
    /// the owners it is available to send it the last items it wants.
    pub fn caps_learned(server: &Server, full: &str, ver: &str, features: &[String]) {
        let contact = crate::stanza::split(full).0;
        for owner in server.s2s.contacts.owners_of(full, ver) {
            let wanted = server
                .s2s
                .contacts
                .of(&owner)
                .iter()
                .any(|r| r.full == full && r.non_negative);
            if wanted && approved(server, &owner, contact) {
                last_items_of(server, &owner, contact, full, features, &|_| true);
            }
        }
    }

    /// `owner` approved `contact` (of another domain): its resources
    /// known here get the last items they want (§4.3.4).
    pub fn subscription_started(server: &Server, owner: &str, contact: &str) {
        for r in server.s2s.contacts.of(owner) {
            if crate::stanza::split(&r.full).0 != contact || !r.non_negative {
                continue;
            }
            let Some(features) = r
                .caps
                .as_ref()
                .and_then(|(h, v)| super::super::caps::known(server, h, v))
            else {
                continue;
            };
            last_items_of(server, owner, contact, &r.full, &features, &|_| true);
        }
    }

    /// The remote resources known on this node that get `owner`'s
    /// notifications for `node`.
    pub fn recipients_here(
        server: &Server,
        owner: &str,
        node: &str,
        cfg: &NodeConfig,
    ) -> Vec<String> {
        let known = server.s2s.contacts.of(owner);
        if known.is_empty() || cfg.access == Access::Whitelist {
            return Vec::new();
        }
        let Ok(roster) = server.storage.roster(owner) else {
            return Vec::new();
        };
        known
            .into_iter()
            .filter(|r| {
                let contact = crate::stanza::split(&r.full).0;
                r.non_negative
                    && roster
                        .iter()
                        .any(|i| i.jid == contact && contact_notified(i, cfg))
                    && r.caps.as_ref().is_some_and(|(h, v)| {
                        super::super::caps::known(server, h, v)
                            .is_some_and(|f| super::super::caps::wants_notify(&f, node))
                    })
                    && !super::super::blocking::either_blocks(server, owner, &r.full)
            })
            .map(|r| r.full)
            .collect()
    }

    /// Asks every other live node to notify the remote contacts it knows
    /// of `owner` with `msg` (a notification without `to`).
    pub fn tell_nodes(server: &Server, owner: &str, node: &str, cfg: &NodeConfig, msg: &Element) {
        let store = &server.storage.store;
        let config = cfg.encode();
        let xml = msg.to_stream_xml(NS_CLIENT);
        let mut payload = Vec::with_capacity(4 + config.len() + xml.len());
        payload.extend_from_slice(&u32::try_from(config.len()).unwrap_or(0).to_le_bytes());
        payload.extend_from_slice(&config);
        payload.extend_from_slice(xml.as_bytes());
        let me = store.node_id();
        for peer in store.live_nodes().into_iter().filter(|n| *n != me) {
            let env = Envelope {
                kind: KIND_PEP_REMOTE,
                to: owner.to_owned(),
                from: node.to_owned(),
                stanza: payload.clone(),
                ..Envelope::default()
            };
            if let Err(e) = store.deliver(peer, env) {
                tracing::debug!(peer, error = %e, "could not ask a node to notify remote contacts");
            }
        }
    }

    /// A [`KIND_PEP_REMOTE`] envelope from another node.
    pub fn from_node(server: &Server, env: &Envelope) -> DeliveryResult {
        let owner = env.to.as_str();
        let node = env.from.as_str();
        let Some((len, rest)) = env.stanza.split_first_chunk::<4>() else {
            return DeliveryResult::Refused;
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return DeliveryResult::Refused;
        }
        let (config, xml) = rest.split_at(len);
        let cfg = NodeConfig::decode(config);
        let targets = recipients_here(server, owner, node, &cfg);
        if targets.is_empty() {
            return DeliveryResult::Delivered;
        }
        let scope = [(String::new(), NS_CLIENT.to_owned())];
        let limits = Limits {
            max_stanza_bytes: usize::MAX,
            ..Default::default()
        };
        let Ok(msg) = crate::xml::parse_element(xml, &scope, &limits) else {
            return DeliveryResult::Refused;
        };
        for full in targets {
            let mut m = msg.clone();
            m.set_attr("to", full.as_str());
            m.set_attr("id", new_item_id());
            metrics::counter!("starling_pep_notifications_total").increment(1);
            metrics::counter!("starling_pep_remote_notifications_total").increment(1);
            crate::s2s::send(server, m);
        }
        DeliveryResult::Delivered
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

#[cfg(test)]
mod tests {
    use super::*;

    const GENERIC: Svc<'static> = Svc {
        jid: "pubsub.a.example",
        generic: Some("a.example"),
    };

    fn set(cfg: &mut NodeConfig, svc: Svc<'_>, var: &str, v: &str) -> Result<(), Refused> {
        cfg.set(var, &[v.to_owned()], 1000, svc)
    }

    #[test]
    fn generic_nodes_take_more_options_than_pep_nodes() {
        let pep = Svc::pep("u@a.example");
        let mut p = NodeConfig::default_for(pep);
        let mut g = NodeConfig::default_for(GENERIC);
        assert_eq!(p.access, Access::Presence);
        assert_eq!(
            (g.access, g.max_items, g.send_last),
            (Access::Open, None, SendLast::Never)
        );
        assert_eq!(
            set(&mut p, pep, "pubsub#publish_model", "open"),
            Err(Refused::Invalid)
        );
        assert_eq!(set(&mut g, GENERIC, "pubsub#publish_model", "open"), Ok(()));
        assert_eq!(g.publish_model, PublishModel::Open);
        assert_eq!(
            set(&mut p, pep, "pubsub#subscribe", "0"),
            Err(Refused::Invalid)
        );
        assert_eq!(set(&mut g, GENERIC, "pubsub#subscribe", "0"), Ok(()));
        assert!(!g.subscribe);
        assert_eq!(
            set(&mut g, GENERIC, "pubsub#access_model", "authorize"),
            Ok(())
        );
        assert_eq!(g.access, Access::Authorize);
        assert_eq!(
            set(&mut p, pep, "pubsub#access_model", "authorize"),
            Err(Refused::AccessModel)
        );
        assert_eq!(set(&mut g, GENERIC, "pubsub#item_expire", "0"), Ok(()));
        assert_eq!(g.item_expire, None);
        assert_eq!(set(&mut g, GENERIC, "pubsub#item_expire", "60"), Ok(()));
        assert_eq!(g.item_expire, Some(60));
        assert_eq!(set(&mut p, pep, "pubsub#item_expire", "60"), Ok(()));
        assert_eq!(
            set(&mut g, GENERIC, "pubsub#item_expire", "-1"),
            Err(Refused::Invalid)
        );
        let now = 100_000;
        assert!(g.expired(Some(40_000), now) && !g.expired(Some(40_001), now));
        assert!(!g.expired(None, now));
        assert_eq!(
            set(&mut p, pep, "pubsub#body_xslt", "x"),
            Err(Refused::Invalid)
        );
        assert_eq!(
            set(&mut g, GENERIC, "pubsub#node_type", "collection"),
            Err(Refused::Unsupported("collections"))
        );
        assert_eq!(
            set(&mut g, GENERIC, "pubsub#purge_offline", "1"),
            Err(Refused::Invalid)
        );
        assert_eq!(set(&mut g, GENERIC, "pubsub#purge_offline", "0"), Ok(()));
        assert_eq!(
            set(&mut g, GENERIC, "pubsub#presence_based_delivery", "1"),
            Ok(())
        );
        assert_eq!(set(&mut g, GENERIC, "pubsub#notify_sub", "1"), Ok(()));
        assert!(g.notify_sub);
        assert_eq!(
            set(&mut p, pep, "pubsub#notify_config", "1"),
            Err(Refused::Invalid)
        );
        // The form shows what may be set.
        let vars: Vec<String> = g
            .form("form", GENERIC)
            .elements()
            .filter_map(|f| f.get_attr("var").map(str::to_owned))
            .collect();
        assert!(vars.iter().any(|v| v == "pubsub#node_type"));
        let vars: Vec<String> = p
            .form("form", pep)
            .elements()
            .filter_map(|f| f.get_attr("var").map(str::to_owned))
            .collect();
        assert!(!vars.iter().any(|v| v == "pubsub#node_type"));
    }

    #[test]
    fn affiliations_order_and_names() {
        for a in [
            Aff::Outcast,
            Aff::None,
            Aff::Member,
            Aff::PublishOnly,
            Aff::Publisher,
            Aff::Owner,
        ] {
            assert_eq!(Aff::parse(a.as_str()), Some(a));
        }
        assert!(Aff::Outcast < Aff::None && Aff::PublishOnly < Aff::Publisher);
        assert_eq!(Aff::parse("king"), None);
    }

    #[test]
    fn picking_a_subscription_names_the_xep_errors() {
        let sub = |jid: &str, id: &str| PepSub {
            jid: jid.into(),
            subid: id.into(),
            deliver: true,
            ..PepSub::default()
        };
        let two = || vec![sub("a@x", "1"), sub("a@x", "2")];
        let app_of = |e: StanzaError| (e.condition, e.app.map(|a| a.name.clone()));
        assert_eq!(
            app_of(pick_sub(two(), None).unwrap_err()),
            (Condition::BadRequest, Some("subid-required".into()))
        );
        assert_eq!(
            app_of(pick_sub(two(), Some("9")).unwrap_err()),
            (Condition::NotAcceptable, Some("invalid-subid".into()))
        );
        assert_eq!(
            app_of(pick_sub(Vec::new(), None).unwrap_err()),
            (Condition::UnexpectedRequest, Some("not-subscribed".into()))
        );
        assert_eq!(pick_sub(two(), Some("2")).unwrap().subid, "2");
        assert_eq!(pick_sub(vec![sub("b@x/r", "3")], None).unwrap().subid, "3");
        // An empty SubID is none.
        assert_eq!(
            pick_sub(vec![sub("b@x/r", "3")], Some("")).unwrap().subid,
            "3"
        );
    }

    #[test]
    fn subscription_options_forms() {
        let form = |fields: &[(&str, &str)]| {
            let mut x = Element::new("x", NS_DATA).attr("type", "submit").child(
                Element::new("field", NS_DATA)
                    .attr("var", "FORM_TYPE")
                    .child(Element::new("value", NS_DATA).text(SUBSCRIBE_OPTIONS)),
            );
            for (k, v) in fields {
                x = x.child(
                    Element::new("field", NS_DATA)
                        .attr("var", *k)
                        .child(Element::new("value", NS_DATA).text(*v)),
                );
            }
            x
        };
        assert_eq!(
            parse_sub_options(&form(&[("pubsub#deliver", "0")])).unwrap(),
            SubOptions {
                deliver: Some(false),
                show_values: None,
                temporary: None
            }
        );
        assert_eq!(
            parse_sub_options(&form(&[("pubsub#digest_frequency", "2")])).unwrap(),
            SubOptions::default()
        );
        assert_eq!(
            parse_sub_options(&form(&[("pubsub#show-values", "dnd")]))
                .unwrap()
                .show_values,
            Some(vec!["dnd".to_owned()])
        );
        assert!(parse_sub_options(&form(&[("pubsub#show-values", "busy")])).is_err());
        for bad in [
            ("pubsub#deliver", "maybe"),
            ("pubsub#digest", "1"),
            ("pubsub#include_body", "true"),
            ("pubsub#digest_frequency", "-1"),
            ("pubsub#unknown", "1"),
        ] {
            assert!(parse_sub_options(&form(&[bad])).is_err(), "{bad:?}");
        }
        // The form offered parses as submitted.
        let mut offered = sub_options_form(true, &["away".to_owned()], true);
        offered.set_attr("type", "submit");
        assert_eq!(
            parse_sub_options(&offered).unwrap(),
            SubOptions {
                deliver: Some(true),
                show_values: Some(vec!["away".to_owned()]),
                temporary: Some(true)
            }
        );
        assert_eq!(
            parse_sub_options(&form(&[("pubsub#expire", "")]))
                .unwrap()
                .temporary,
            Some(false)
        );
        assert!(parse_sub_options(&form(&[("pubsub#expire", "2030-01-01T00:00:00Z")])).is_err());
    }
}
