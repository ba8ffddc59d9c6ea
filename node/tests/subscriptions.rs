//! The RFC 6121 subscription state machine (§3 and the tables of Appendix
//! A), driven through the users' own actors (`session::user`) on a real
//! single-node store, no sockets: each user has one session, bound in the
//! router, whose actor is a recorder of what it is sent.

use actix::{Actor, Addr, Context, Handler, Message};
use starling::config::Config;
use starling::router::{Gate, SessionHandle, ToSession, ToUser, UserHandle};
use starling::server::Server;
use starling::session::im;
use starling::storage::{Storage, Subscription};
use starling::xml::Element;
use starling_cluster::{Store, StoreConfig};
use std::sync::{Arc, Mutex};

/// Stands in for a session actor: keeps what it is sent.
struct Recorder(Arc<Mutex<Vec<Arc<str>>>>);

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<ToSession> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: ToSession, _: &mut Context<Self>) {
        if let ToSession::Stanza(xml) = msg {
            self.0.lock().unwrap().push(xml);
        }
    }
}

/// Answered after everything sent before it was handled.
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

impl Handler<Flush> for Recorder {
    type Result = ();
    fn handle(&mut self, _: Flush, _: &mut Context<Self>) {}
}

type Log = Arc<Mutex<Vec<Arc<str>>>>;

/// Binds one session per user, each a recorder, with the users' real
/// actors, on an actix system of its own thread (the test itself runs on a
/// multi-thread tokio runtime, as the store wants).
fn bind_all(server: Arc<Server>, users: Vec<String>) -> Vec<Bound> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let sys = actix::System::new();
        sys.block_on(async move {
            let mut all = Vec::new();
            for bare in users {
                let log = Log::default();
                let recorder = Recorder(log.clone()).start();
                let h = SessionHandle::new(
                    recorder.clone().recipient(),
                    Arc::new(Gate::new(1000, 1 << 24)),
                );
                let id = h.id;
                let (_, user, _) = server.router.bind(
                    &bare,
                    "r",
                    h,
                    || starling::session::user::start(server.clone(), &bare),
                    Vec::new,
                );
                // Available and interested, as after initial presence and
                // a roster get.
                server.router.update(&bare, id, |r| {
                    r.available = true;
                    r.interested = true;
                });
                all.push(Bound {
                    bare,
                    id,
                    recorder,
                    log,
                    user,
                });
            }
            tx.send(all).unwrap();
        });
        sys.run().unwrap();
    });
    rx.recv().unwrap()
}

struct Bound {
    bare: String,
    id: u64,
    recorder: Addr<Recorder>,
    log: Log,
    user: UserHandle,
}

struct World {
    server: Arc<Server>,
    _dir: tempfile::TempDir,
    boxes: Vec<Bound>,
}

impl World {
    async fn new(users: &[&str]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        cfg.check().unwrap();
        let store = Store::open(StoreConfig {
            data_dir: dir.path().join("store"),
            node_id: 1,
            raft_addr: "127.0.0.1:1".into(),
        })
        .await
        .unwrap();
        let storage = Storage::new(store);
        for u in users {
            starling::accounts::create(&storage, &format!("{u}@localhost"), "pw", 4096)
                .await
                .unwrap();
        }
        let tls = starling::net::tls::server_config(&cfg).unwrap();
        let server = Arc::new(Server::new(cfg, storage, tls));
        let boxes = bind_all(
            server.clone(),
            users.iter().map(|u| format!("{u}@localhost")).collect(),
        );
        for b in &boxes {
            let attach = ToUser::Attach {
                session: b.id,
                full: format!("{}/r", b.bare),
            };
            b.user.send(attach).await.unwrap().unwrap();
        }
        World {
            server,
            _dir: dir,
            boxes,
        }
    }

    /// `user`'s client sends a subscription presence of `ptype` to
    /// `contact`; its user actor applies it.
    async fn send(&self, user: &str, ptype: &str, contact: &str) {
        let bare = format!("{user}@localhost");
        let b = self.boxes.iter().find(|b| b.bare == bare).unwrap();
        let el = Element::new("presence", "jabber:client")
            .attr("from", format!("{bare}/r"))
            .attr("to", format!("{contact}@localhost"))
            .attr("type", ptype);
        let msg = ToUser::Presence { session: b.id, el };
        b.user.send(msg).await.unwrap().unwrap();
    }

    /// (subscription, ask, approved) of `contact` in `user`'s roster.
    fn item(&self, user: &str, contact: &str) -> Option<(Subscription, bool, bool)> {
        self.server
            .storage
            .roster_item(
                &format!("{user}@localhost"),
                &format!("{contact}@localhost"),
            )
            .unwrap()
            .map(|i| (i.subscription, i.ask, i.approved))
    }

    fn pending(&self, user: &str, from: &str) -> bool {
        self.server
            .storage
            .has_pending_in(&format!("{user}@localhost"), &format!("{from}@localhost"))
            .unwrap()
    }

    /// Presence stanzas of `ptype` that `user`'s session received, cleared.
    async fn received(&self, user: &str, ptype: &str) -> usize {
        let bare = format!("{user}@localhost");
        let b = self.boxes.iter().find(|b| b.bare == bare).unwrap();
        b.recorder.send(Flush).await.unwrap();
        let taken = std::mem::take(&mut *b.log.lock().unwrap());
        taken
            .iter()
            .filter(|x| x.starts_with("<presence") && x.contains(&format!("type=\"{ptype}\"")))
            .count()
    }
}

use Subscription::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_approve_both_ways_then_cancel() {
    let w = World::new(&["a", "b"]).await;
    // §3.1.2: outbound subscribe: none + pending out, routed to the contact.
    w.send("a", "subscribe", "b").await;
    assert_eq!(w.item("a", "b"), Some((None, true, false)));
    assert!(w.pending("b", "a"));
    assert_eq!(w.item("b", "a"), Option::None, "no item before approval");
    assert_eq!(w.received("b", "subscribe").await, 1);
    // §3.1.5: approval: contact gets from, user gets to.
    w.send("b", "subscribed", "a").await;
    assert_eq!(w.item("b", "a"), Some((From, false, false)));
    assert_eq!(w.item("a", "b"), Some((To, false, false)));
    assert!(!w.pending("b", "a"));
    assert_eq!(w.received("a", "subscribed").await, 1);
    // The other direction gives both on each side.
    w.send("b", "subscribe", "a").await;
    assert_eq!(w.item("b", "a"), Some((From, true, false)));
    w.send("a", "subscribed", "b").await;
    assert_eq!(w.item("a", "b"), Some((Both, false, false)));
    assert_eq!(w.item("b", "a"), Some((Both, false, false)));
    // §3.3: a unsubscribes from b: a has from, b has to.
    w.send("a", "unsubscribe", "b").await;
    assert_eq!(w.item("a", "b"), Some((From, false, false)));
    assert_eq!(w.item("b", "a"), Some((To, false, false)));
    // §3.2: a cancels b's subscription: none on both sides.
    w.send("a", "unsubscribed", "b").await;
    assert_eq!(w.item("a", "b"), Some((None, false, false)));
    assert_eq!(w.item("b", "a"), Some((None, false, false)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_approval_and_denial() {
    let w = World::new(&["a", "b", "c"]).await;
    // §3.4: a pre-approves c: not routed, remembered.
    w.send("a", "subscribed", "c").await;
    assert_eq!(w.item("a", "c"), Some((None, false, true)));
    assert_eq!(w.received("c", "subscribed").await, 0);
    // c's request is approved at once.
    w.send("c", "subscribe", "a").await;
    assert_eq!(w.item("a", "c"), Some((From, false, false)));
    assert_eq!(w.item("c", "a"), Some((To, false, false)));
    assert!(!w.pending("a", "c"));
    // §3.2.1: b asks, a denies: the request is gone, b's ask is cleared.
    w.send("b", "subscribe", "a").await;
    assert!(w.pending("a", "b"));
    w.send("a", "unsubscribed", "b").await;
    assert!(!w.pending("a", "b"));
    assert_eq!(w.item("b", "a"), Some((None, false, false)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_and_unsolicited_stanzas_change_nothing() {
    let w = World::new(&["a", "b"]).await;
    // An unsolicited "subscribed" is a pre-approval, never a subscription.
    w.send("b", "subscribed", "a").await;
    assert_eq!(w.item("a", "b"), Option::None);
    // A second subscribe while already subscribed keeps "to".
    w.send("a", "subscribe", "b").await;
    assert_eq!(
        w.item("a", "b"),
        Some((To, false, false)),
        "pre-approved by b"
    );
    w.send("a", "subscribe", "b").await;
    assert_eq!(w.item("a", "b"), Some((To, false, false)));
    assert_eq!(w.item("b", "a"), Some((From, false, false)));
    // Unsubscribed from someone with no subscription is not routed.
    w.received("b", "unsubscribed").await;
    w.send("b", "unsubscribe", "a").await;
    w.send("b", "unsubscribe", "a").await;
    assert_eq!(w.item("b", "a"), Some((From, false, false)));
}

/// The one place that tells what is served here from another domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_of_addresses() {
    use starling::router::Destination;
    let w = World::new(&["a"]).await;
    let dest = |to: &'static str| im::destination(&w.server, to).unwrap();
    assert_eq!(
        dest("localhost"),
        Destination::Server {
            domain: "localhost",
            resource: Option::None
        }
    );
    assert_eq!(
        dest("a@localhost/r"),
        Destination::Account {
            bare: "a@localhost",
            resource: Some("r"),
            exists: true
        }
    );
    assert_eq!(
        dest("nobody@localhost"),
        Destination::Account {
            bare: "nobody@localhost",
            resource: Option::None,
            exists: false
        }
    );
    assert_eq!(
        dest("example.org"),
        Destination::Remote {
            domain: "example.org",
            has_node: false
        }
    );
    assert_eq!(
        dest("x@example.org/r"),
        Destination::Remote {
            domain: "example.org",
            has_node: true
        }
    );
}
