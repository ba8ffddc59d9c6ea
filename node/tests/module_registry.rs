//! Adding a feature is adding a module: this file declares one that no
//! source file knows of — a disco feature, a post-auth stream feature, an
//! IQ payload and message hooks — hands it to the registry as an extra,
//! and checks that disco, stream negotiation, IQ dispatch and the hook
//! chain all pick it up.

use futures::FutureExt;
use futures::future::BoxFuture;
use starling::config::Config;
use starling::modules::{
    self, Event, Flow, Hook, HookCtx, IqCtx, IqHandler, IqReply, IqResult, IqTarget, Module,
    Registry, Stage, StreamFeature,
};
use starling::server::Server;
use starling::session::im::Origin;
use starling::stanza::{Condition, NS_CLIENT};
use starling::storage::Storage;
use starling::xml::Element;
use starling_cluster::{Store, StoreConfig};

const NS_ECHO: &str = "urn:example:starling:echo";
const ECHO_FEATURE: &str = "<echo xmlns='urn:example:starling:echo'/>";

/// The whole feature: one static.
static ECHO: Module = Module {
    name: "echo",
    spec: "urn:example:starling:echo (a test module)",
    features: &[NS_ECHO],
    stream_features: &[StreamFeature {
        stage: Stage::PostAuth,
        xml: ECHO_FEATURE,
        when: None,
    }],
    iq: &[IqHandler {
        ns: NS_ECHO,
        name: "echo",
        get: Some(echo),
        set: None,
        no_account: false,
    }],
    hooks: &[
        Hook {
            event: Event::MessageOut,
            priority: -5,
            handler: last_word,
        },
        Hook {
            event: Event::MessageOut,
            priority: 20,
            handler: first,
        },
        Hook {
            event: Event::MessageOut,
            priority: 0,
            handler: drop_if_asked,
        },
    ],
    ..Module::EMPTY
};

/// Answers with the payload's text, reversed.
fn echo<'a>(ctx: &'a IqCtx<'a>) -> BoxFuture<'a, IqResult> {
    async move {
        let text: String = ctx.payload.text_content().chars().rev().collect();
        Ok(IqReply::from(Element::new("echo", NS_ECHO).text(text)))
    }
    .boxed()
}

fn stamp(el: &mut Element, who: &str) {
    let seen = el.get_attr("seen").unwrap_or("").to_owned();
    el.set_attr("seen", format!("{seen}{who};"));
}

fn first(_: &HookCtx<'_>, el: &mut Element) -> Flow {
    stamp(el, "first");
    Flow::Pass
}

/// Takes over (drops) messages that carry `<drop xmlns='…echo'/>`.
fn drop_if_asked(_: &HookCtx<'_>, el: &mut Element) -> Flow {
    stamp(el, "drop?");
    if el.has_child("drop", NS_ECHO) {
        Flow::Handled
    } else {
        Flow::Pass
    }
}

fn last_word(_: &HookCtx<'_>, el: &mut Element) -> Flow {
    stamp(el, "last");
    Flow::Pass
}

async fn server(dir: &std::path::Path, modules: Registry) -> Server {
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    cfg.check().unwrap();
    let store = Store::open(StoreConfig {
        data_dir: dir.join("store"),
        node_id: 1,
        raft_addr: "127.0.0.1:1".into(),
    })
    .await
    .unwrap();
    let tls = starling::net::tls::server_config(&cfg).unwrap();
    Server::with_modules(cfg, Storage::new(store), tls, modules)
}

/// Sends `<payload/>` in an iq of `kind` from a@localhost/r to `target`
/// through the server's IQ dispatch.
async fn iq(server: &Server, target: IqTarget<'_>, kind: &str, payload: Element) -> IqResult {
    let origin = Origin {
        bare: "a@localhost",
        full: "a@localhost/r",
        session_id: 1,
    };
    let el = Element::new("iq", NS_CLIENT)
        .attr("type", kind)
        .attr("id", "1")
        .attr("from", origin.full)
        .child(payload);
    let payload = el.elements().next().unwrap();
    let ctx = IqCtx {
        server,
        origin: &origin,
        target,
        iq: &el,
        payload,
        set: kind == "set",
    };
    modules::handle_iq(&ctx).await
}

fn condition(r: IqResult) -> Condition {
    match r {
        Err(e) => e.condition,
        Ok(r) => panic!("expected an error, got {r:?}"),
    }
}

#[tokio::test]
async fn an_extra_module_adds_its_feature_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), Registry::new(&[&ECHO])).await;

    // Disco lists it, through the disco module's own answer.
    let info = Element::new("query", "http://jabber.org/protocol/disco#info");
    let Ok(IqReply::Result(Some(q))) = iq(&s, IqTarget::Server("localhost"), "get", info).await
    else {
        panic!("no disco#info result");
    };
    let vars: Vec<&str> = q
        .elements()
        .filter(|f| f.name == "feature")
        .filter_map(|f| f.get_attr("var"))
        .collect();
    assert!(vars.contains(&NS_ECHO), "{vars:?}");
    assert!(s.modules.disco_features().contains(&NS_ECHO));

    // The authenticated stream advertises it after the built-in ones.
    let post: Vec<&str> = s
        .modules
        .stream_features(Stage::PostAuth, &s.config)
        .collect();
    assert_eq!(post.last(), Some(&ECHO_FEATURE), "{post:?}");
    assert_eq!(
        post.len(),
        7,
        "session, sm, sub, ver, csi, caps, echo: {post:?}"
    );
    // The server's caps (XEP-0115) hash its disco#info, the extra feature included.
    assert!(post[5].contains(s.modules.server_ver()), "{post:?}");
    assert!(
        !s.modules
            .stream_features(Stage::PreAuth, &s.config)
            .any(|f| f == ECHO_FEATURE)
    );

    // Its IQ dispatches to it.
    let r = iq(
        &s,
        IqTarget::Server("localhost"),
        "get",
        Element::new("echo", NS_ECHO).text("abc"),
    )
    .await;
    let Ok(IqReply::Result(Some(answer))) = r else {
        panic!("no echo: {r:?}");
    };
    assert!(answer.is("echo", NS_ECHO));
    assert_eq!(answer.text_content(), "cba");
    // A type it does not take, an element of its namespace it does not
    // know, a missing account: the registry answers.
    let set = Element::new("echo", NS_ECHO);
    assert_eq!(
        condition(iq(&s, IqTarget::Own, "set", set).await),
        Condition::NotAllowed
    );
    let other = Element::new("other", NS_ECHO);
    assert_eq!(
        condition(iq(&s, IqTarget::Own, "get", other).await),
        Condition::FeatureNotImplemented
    );
    let nobody = IqTarget::NoAccount("nobody@localhost");
    assert_eq!(
        condition(iq(&s, nobody, "get", Element::new("echo", NS_ECHO)).await),
        Condition::ServiceUnavailable
    );

    // Its hooks run highest priority first; Handled stops the chain.
    let ctx = HookCtx {
        server: &s,
        user: "a@localhost",
        full: Some("a@localhost/r"),
    };
    let mut msg = Element::new("message", NS_CLIENT).attr("to", "b@localhost");
    assert_eq!(
        s.modules.run_hooks(Event::MessageOut, &ctx, &mut msg),
        Flow::Pass
    );
    assert_eq!(msg.get_attr("seen"), Some("first;drop?;last;"));
    let mut dropped = Element::new("message", NS_CLIENT).child(Element::new("drop", NS_ECHO));
    assert_eq!(
        s.modules.run_hooks(Event::MessageOut, &ctx, &mut dropped),
        Flow::Handled
    );
    assert_eq!(dropped.get_attr("seen"), Some("first;drop?;"));
    assert!(
        s.modules.has_hooks(Event::MessageIn),
        "blocking hooks it (built in)"
    );

    // It is on the compliance list of this registry.
    assert!(s.modules.compliance().any(|(n, _)| n == "echo"));
}

#[tokio::test]
async fn without_the_module_nothing_of_it_exists() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), Registry::default()).await;
    assert!(!s.modules.disco_features().contains(&NS_ECHO));
    assert!(
        !s.modules
            .stream_features(Stage::PostAuth, &s.config)
            .any(|f| f == ECHO_FEATURE)
    );
    let r = iq(&s, IqTarget::Own, "get", Element::new("echo", NS_ECHO)).await;
    assert_eq!(condition(r), Condition::ServiceUnavailable);
    // Its hooks are not run: a message it would mark passes unmarked.
    let ctx = HookCtx {
        server: &s,
        user: "a@localhost",
        full: Some("a@localhost/r"),
    };
    let mut msg = Element::new("message", NS_CLIENT).attr("to", "b@localhost");
    assert_eq!(
        s.modules.run_hooks(Event::MessageOut, &ctx, &mut msg),
        Flow::Pass
    );
    assert_eq!(msg.get_attr("seen"), None);
}
