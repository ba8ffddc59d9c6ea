//! The registry: built once at start from the modules' declarations, it
//! holds what the hot paths look up — the IQ dispatch table (one hash
//! lookup per IQ), each event's hooks sorted by priority (one slice walk
//! per stanza), disco's feature list and each stage's stream features.
//! Nothing here allocates per stanza. Conflicting declarations (two
//! handlers for one payload, two owners of one key space) are programming
//! errors and stop the server at start.

use super::{
    AccountFeature, AccountIdentity, AccountNodes, Event, Flow, Handler, Hook, HookCtx, IqCtx,
    IqHandler, IqTarget, MODULES, Module, ServerNodes, Stage, StreamFeature,
};
use crate::config::Config;
use crate::stanza::{Condition, StanzaError};
use crate::xml::Element;
use std::collections::{HashMap, HashSet};

pub struct Registry {
    modules: Vec<&'static Module>,
    /// (payload namespace, element name) → its handlers.
    iq: HashMap<(&'static str, &'static str), &'static IqHandler>,
    /// Every namespace some handler answers, to tell an unknown element
    /// of a known namespace from an unknown namespace.
    namespaces: HashSet<&'static str>,
    /// Per [`Event::index`], highest priority first.
    hooks: [Vec<&'static Hook>; Event::ALL.len()],
    /// Sorted, without duplicates.
    features: Vec<&'static str>,
    /// Features of each account's disco#info, in registry order.
    account_features: Vec<&'static AccountFeature>,
    account_identities: Vec<&'static AccountIdentity>,
    account_nodes: Vec<&'static AccountNodes>,
    server_nodes: Vec<&'static ServerNodes>,
    /// The server's XEP-0115 `ver` and its `<c/>` stream feature
    /// (advertised where a module declares
    /// [`caps::SERVER_CAPS_PLACEHOLDER`](super::caps::SERVER_CAPS_PLACEHOLDER)).
    server_ver: String,
    server_caps: String,
    pre_auth: Vec<&'static StreamFeature>,
    post_auth: Vec<&'static StreamFeature>,
}

impl Default for Registry {
    /// The built-in modules ([`MODULES`]).
    fn default() -> Self {
        Registry::new(&[])
    }
}

impl Registry {
    /// The built-in modules followed by `extra` (in that order, which is
    /// the order of stream features and of hooks of equal priority).
    ///
    /// # Panics
    /// When two modules share a name, answer the same IQ payload or own
    /// the same key space.
    pub fn new(extra: &[&'static Module]) -> Registry {
        let modules: Vec<&'static Module> = MODULES.iter().chain(extra).copied().collect();
        let mut iq = HashMap::new();
        let mut namespaces = HashSet::new();
        let mut hooks: [Vec<&'static Hook>; Event::ALL.len()] = Default::default();
        let mut features = Vec::new();
        let mut account_features = Vec::new();
        let mut account_identities = Vec::new();
        let mut account_nodes = Vec::new();
        let mut server_nodes = Vec::new();
        let (mut pre_auth, mut post_auth) = (Vec::new(), Vec::new());
        let mut names = HashSet::new();
        let mut spaces = HashMap::new();
        for m in &modules {
            assert!(names.insert(m.name), "two modules named {:?}", m.name);
            for h in m.iq {
                let clash = iq.insert((h.ns, h.name), h);
                assert!(
                    clash.is_none(),
                    "module {:?}: another module already answers <{} xmlns='{}'/>",
                    m.name,
                    h.name,
                    h.ns
                );
                namespaces.insert(h.ns);
            }
            for h in m.hooks {
                hooks[h.event.index()].push(h);
            }
            features.extend_from_slice(m.features);
            account_features.extend(m.account_features);
            account_identities.extend(m.account_identities);
            account_nodes.extend(m.account_nodes);
            server_nodes.extend(m.server_nodes);
            for f in m.stream_features {
                match f.stage {
                    Stage::PreAuth => pre_auth.push(f),
                    Stage::PostAuth => post_auth.push(f),
                }
            }
            for s in m.spaces {
                if let Some(owner) = spaces.insert(*s, m.name) {
                    panic!(
                        "modules {owner:?} and {:?} both own key space {s:?}",
                        m.name
                    );
                }
            }
        }
        for list in &mut hooks {
            // Stable: equal priorities keep registry order.
            list.sort_by_key(|h| std::cmp::Reverse(h.priority));
        }
        features.sort_unstable();
        features.dedup();
        let server_ver = super::caps::server_ver(&features);
        let server_caps = super::caps::server_caps_xml(&features);
        Registry {
            modules,
            iq,
            namespaces,
            hooks,
            features,
            account_features,
            account_identities,
            account_nodes,
            server_nodes,
            server_ver,
            server_caps,
            pre_auth,
            post_auth,
        }
    }

    /// Every registered module, in registry order.
    pub fn modules(&self) -> &[&'static Module] {
        &self.modules
    }

    /// The compliance list of the registered modules: (name, spec).
    pub fn compliance(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.modules.iter().map(|m| (m.name, m.spec))
    }

    /// The features of the server's disco#info, sorted.
    pub fn disco_features(&self) -> &[&'static str] {
        &self.features
    }

    /// The features of an account's disco#info under `config`.
    pub fn account_features<'a>(
        &'a self,
        config: &'a Config,
    ) -> impl Iterator<Item = &'static str> + 'a {
        self.account_features
            .iter()
            .filter(move |f| f.when.is_none_or(|w| w(config)))
            .map(|f| f.var)
    }

    /// The identities of an account's disco#info besides
    /// `account/registered`: (category, type).
    pub fn account_identities(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.account_identities.iter().map(|i| (i.category, i.kind))
    }

    /// What modules show in disco on accounts besides features.
    pub fn account_nodes(&self) -> &[&'static AccountNodes] {
        &self.account_nodes
    }

    /// What modules show in disco under nodes of a served domain.
    pub fn server_nodes(&self) -> &[&'static ServerNodes] {
        &self.server_nodes
    }

    /// The server's XEP-0115 `ver` (sha-1 of its disco#info).
    pub fn server_ver(&self) -> &str {
        &self.server_ver
    }

    /// The stream features to advertise at `stage` under `config`, in
    /// registry order.
    pub fn stream_features<'a>(
        &'a self,
        stage: Stage,
        config: &'a Config,
    ) -> impl Iterator<Item = &'a str> + 'a {
        let list = match stage {
            Stage::PreAuth => &self.pre_auth,
            Stage::PostAuth => &self.post_auth,
        };
        list.iter()
            .filter(move |f| f.when.is_none_or(|w| w(config)))
            .map(|f| {
                if f.xml == super::caps::SERVER_CAPS_PLACEHOLDER {
                    self.server_caps.as_str()
                } else {
                    f.xml
                }
            })
    }

    /// The declaration answering `<name xmlns='ns'/>`, if any.
    pub fn iq(&self, ns: &str, name: &str) -> Option<&'static IqHandler> {
        self.iq.get(&(ns, name)).copied()
    }

    /// The handler for an IQ get/set, or the error that answers it: an
    /// unknown namespace is `<service-unavailable/>` (RFC 6120 §8.4), a
    /// known namespace with an unknown element `<feature-not-implemented/>`
    /// (§8.3.3.3), a type the payload does not take `<not-allowed/>`, and
    /// any payload but those declared `no_account` sent to a missing
    /// account `<service-unavailable/>` (RFC 6121 §8.5.1).
    pub fn iq_handler(&self, ctx: &IqCtx<'_>) -> Result<Handler, StanzaError> {
        let (ns, name) = (ctx.payload.ns.as_str(), ctx.payload.name.as_str());
        let no_account = matches!(ctx.target, IqTarget::NoAccount(_));
        let Some(h) = self.iq(ns, name) else {
            if !no_account && self.namespaces.contains(ns) {
                return Err(Condition::FeatureNotImplemented.into());
            }
            return Err(Condition::ServiceUnavailable.into());
        };
        if no_account && !h.no_account {
            return Err(Condition::ServiceUnavailable.into());
        }
        let handler = if ctx.set { h.set } else { h.get };
        handler.ok_or_else(|| Condition::NotAllowed.into())
    }

    /// Whether any module hooks `event` (a caller may skip building the
    /// context when none does).
    pub fn has_hooks(&self, event: Event) -> bool {
        !self.hooks[event.index()].is_empty()
    }

    /// Runs `event`'s hooks on `el`, highest priority first, until one
    /// says [`Flow::Handled`]; [`Flow::Pass`] when all passed (or there
    /// are none), and the caller goes on with the (possibly changed)
    /// stanza.
    pub fn run_hooks(&self, event: Event, ctx: &HookCtx<'_>, el: &mut Element) -> Flow {
        for h in &self.hooks[event.index()] {
            if (h.handler)(ctx, el) == Flow::Handled {
                return Flow::Handled;
            }
        }
        Flow::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Server;
    use crate::storage::Storage;
    use crate::xml::Element;

    async fn server(dir: &std::path::Path) -> Server {
        let mut cfg = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        cfg.check().unwrap();
        let store = starling_cluster::Store::open(starling_cluster::StoreConfig {
            data_dir: dir.join("store"),
            node_id: 1,
            raft_addr: "127.0.0.1:1".into(),
        })
        .await
        .unwrap();
        let tls = crate::net::tls::server_config(&cfg).unwrap();
        Server::new(cfg, Storage::new(store), tls)
    }

    /// Each hook marks the stanza with its name, so the order they ran in
    /// is the order of the marks.
    fn mark(el: &mut Element, name: &str) {
        el.children
            .push(crate::xml::Node::Element(Element::new(name, "urn:test")));
    }
    fn low(_: &HookCtx<'_>, el: &mut Element) -> Flow {
        mark(el, "low");
        Flow::Pass
    }
    fn high(_: &HookCtx<'_>, el: &mut Element) -> Flow {
        mark(el, "high");
        Flow::Pass
    }
    fn middle(_: &HookCtx<'_>, el: &mut Element) -> Flow {
        mark(el, "middle");
        Flow::Pass
    }
    fn middle_again(_: &HookCtx<'_>, el: &mut Element) -> Flow {
        mark(el, "middle-again");
        Flow::Pass
    }
    fn stop(_: &HookCtx<'_>, el: &mut Element) -> Flow {
        mark(el, "stop");
        Flow::Handled
    }

    static FIRST: Module = Module {
        name: "test-first",
        spec: "none",
        hooks: &[
            Hook {
                event: Event::MessageIn,
                priority: -10,
                handler: low,
            },
            Hook {
                event: Event::MessageIn,
                priority: 5,
                handler: middle,
            },
            Hook {
                event: Event::PresenceIn,
                priority: 0,
                handler: low,
            },
            Hook {
                event: Event::PresenceIn,
                priority: 1,
                handler: stop,
            },
        ],
        ..Module::EMPTY
    };
    static SECOND: Module = Module {
        name: "test-second",
        spec: "none",
        hooks: &[
            Hook {
                event: Event::MessageIn,
                priority: 100,
                handler: high,
            },
            Hook {
                event: Event::MessageIn,
                priority: 5,
                handler: middle_again,
            },
        ],
        ..Module::EMPTY
    };

    fn marks(el: &Element) -> Vec<&str> {
        el.elements().map(|e| e.name.as_str()).collect()
    }

    #[tokio::test]
    async fn hooks_run_by_priority_until_handled() {
        let dir = tempfile::tempdir().unwrap();
        let server = server(dir.path()).await;
        let reg = Registry::new(&[&FIRST, &SECOND]);
        let ctx = HookCtx {
            server: &server,
            user: "a@localhost",
            full: None,
        };

        // Higher first; equal priorities in registry order; all pass.
        let mut msg = Element::new("message", crate::stanza::NS_CLIENT);
        assert_eq!(reg.run_hooks(Event::MessageIn, &ctx, &mut msg), Flow::Pass);
        assert_eq!(marks(&msg), ["high", "middle", "middle-again", "low"]);

        // A handled stanza goes no further down the chain.
        let mut pres = Element::new("presence", crate::stanza::NS_CLIENT);
        assert_eq!(
            reg.run_hooks(Event::PresenceIn, &ctx, &mut pres),
            Flow::Handled
        );
        assert_eq!(marks(&pres), ["stop"]);

        // Only built-in hooks, none of which applies to an unaddressed
        // message (carbons: from no session): pass, untouched.
        let mut out = Element::new("message", crate::stanza::NS_CLIENT);
        assert_eq!(reg.run_hooks(Event::MessageOut, &ctx, &mut out), Flow::Pass);
        assert!(out.children.is_empty());
    }

    #[test]
    fn built_in_modules_register_without_conflict() {
        let reg = Registry::default();
        assert_eq!(reg.modules().len(), MODULES.len());
        assert!(reg.iq(crate::modules::roster::NS_ROSTER, "query").is_some());
        assert!(reg.iq(crate::modules::roster::NS_ROSTER, "item").is_none());
        let f = reg.disco_features();
        assert!(f.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
        assert!(f.contains(&crate::modules::disco::NS_INFO));
    }

    #[test]
    fn stream_features_keep_the_advertised_xml() {
        let reg = Registry::default();
        let mut cfg = Config::default();
        let post: String = reg.stream_features(Stage::PostAuth, &cfg).collect();
        let caps = crate::modules::caps::server_caps_xml(reg.disco_features());
        let post = post.replace(&caps, "<caps/>");
        assert_eq!(
            post,
            "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>\
             <sm xmlns='urn:xmpp:sm:3'/>\
             <sub xmlns='urn:xmpp:features:pre-approval'/>\
             <ver xmlns='urn:xmpp:features:rosterver'/>\
             <csi xmlns='urn:xmpp:csi:0'/>\
             <caps/>"
        );
        cfg.sm.enabled = false;
        let post: String = reg.stream_features(Stage::PostAuth, &cfg).collect();
        assert!(!post.contains("urn:xmpp:sm:3"), "not offered when disabled");
        cfg.registration.enabled = false;
        // XEP-0388's feature only (one variant per configuration).
        let pre: Vec<&str> = reg.stream_features(Stage::PreAuth, &cfg).collect();
        assert_eq!(pre.len(), 1);
        assert!(pre[0].starts_with("<authentication xmlns='urn:xmpp:sasl:2'>"));
        cfg.registration.enabled = true;
        let pre: String = reg.stream_features(Stage::PreAuth, &cfg).collect();
        assert!(
            pre.starts_with(
                "<register xmlns='http://jabber.org/features/iq-register'/><authentication "
            ),
            "{pre}"
        );
    }

    #[test]
    #[should_panic(expected = "already answers")]
    fn two_handlers_for_one_payload_are_refused() {
        static AGAIN: Module = Module {
            name: "roster-again",
            spec: "none",
            iq: &[IqHandler {
                ns: crate::modules::roster::NS_ROSTER,
                name: "query",
                get: None,
                set: None,
                no_account: false,
            }],
            ..Module::EMPTY
        };
        Registry::new(&[&AGAIN]);
    }

    #[test]
    #[should_panic(expected = "both own key space")]
    fn two_owners_of_one_space_are_refused() {
        static AGAIN: Module = Module {
            name: "vcard-again",
            spec: "none",
            spaces: &[crate::storage::VCARD],
            ..Module::EMPTY
        };
        Registry::new(&[&AGAIN]);
    }

    #[test]
    fn every_module_names_its_spec() {
        let list = crate::modules::compliance();
        assert_eq!(list.len(), MODULES.len());
        for (name, spec) in list {
            assert!(!name.is_empty(), "a module without a name");
            assert!(!spec.trim().is_empty(), "module {name:?} names no spec");
        }
    }

    #[test]
    fn config_sections_exist() {
        let cfg = serde_json::to_value(Config::default()).unwrap();
        for m in MODULES {
            if let Some(s) = m.config_section {
                assert!(
                    cfg.get(s).is_some_and(|v| v.is_object() || v.is_array()),
                    "module {:?} reads a config section {s:?} that does not exist",
                    m.name
                );
            }
        }
    }
}
