//! Micro-benchmarks of the per-stanza and per-login hot paths:
//! `cargo bench -p starling --bench hot_paths`.
//!
//! - the stream parser (framing + element building) against raw quick-xml
//!   tokenizing of the same bytes, the limit for any parser built on it;
//! - stanza serialisation;
//! - the router lookup of a bound resource among 10,000 users;
//! - a server-side SCRAM-SHA-256 exchange (the client's salted password
//!   cached, as real clients do) and PLAIN verification (PBKDF2, 4096).

use actix::{Actor, Context, Handler};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use starling::auth::ScramClient;
use starling::auth::scram::{ScramHash, ScramServer, ScramStep, StoredCredentials};
use starling::router::{Gate, Router, SessionHandle, ToSession, ToUser};
use starling::xml::{Element, Limits, StreamEvent, StreamParser};
use std::hint::black_box;

const HEADER: &str = "<stream:stream to='example.org' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

fn messages(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "<message to='juliet@example.org/balcony' id='m{i}' type='chat'><body>Wherefore art thou, Romeo? {i} and some more text to make a hundred bytes.</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        ));
    }
    s
}

fn parser(c: &mut Criterion) {
    let n = 1000;
    let body = messages(n);
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("starling StreamParser, 1000 messages", |b| {
        b.iter(|| {
            let mut p = StreamParser::new(Limits::default());
            p.feed(HEADER.as_bytes());
            let _ = p.next_event().unwrap();
            p.feed(body.as_bytes());
            let mut count = 0;
            while let Some(ev) = p.next_event().unwrap() {
                if let StreamEvent::Stanza(el) = ev {
                    black_box(&el);
                    count += 1;
                }
            }
            assert_eq!(count, n);
        })
    });
    g.bench_function("raw quick-xml tokenizing, same bytes", |b| {
        b.iter(|| {
            let mut r = quick_xml::Reader::from_str(&body);
            let mut events = 0usize;
            loop {
                match r.read_event().unwrap() {
                    quick_xml::events::Event::Eof => break,
                    e => {
                        black_box(&e);
                        events += 1;
                    }
                }
            }
            black_box(events);
        })
    });
    g.finish();
}

fn sample() -> Element {
    Element::new("message", "jabber:client")
        .attr("from", "romeo@example.net/orchard")
        .attr("to", "juliet@example.org/balcony")
        .attr("id", "m1")
        .attr("type", "chat")
        .child(Element::new("body", "jabber:client").text("Wherefore art thou, Romeo? <&>"))
        .child(Element::new(
            "active",
            "http://jabber.org/protocol/chatstates",
        ))
}

fn serialize(c: &mut Criterion) {
    let el = sample();
    c.bench_function("serialize a chat message", |b| {
        b.iter(|| black_box(el.to_stream_xml("jabber:client")))
    });
}

/// Stands in for session and user actors: the router only holds their
/// addresses.
struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<ToSession> for Sink {
    type Result = ();
    fn handle(&mut self, _: ToSession, _: &mut Context<Self>) {}
}

impl Handler<ToUser> for Sink {
    type Result = Result<(), starling::stanza::StanzaError>;
    fn handle(&mut self, _: ToUser, _: &mut Context<Self>) -> Self::Result {
        Ok(())
    }
}

fn router(c: &mut Criterion) {
    // The router reads other nodes' sessions from the store; a cluster of
    // one has none, so the lookup measured is the local map's.
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(starling_cluster::Store::open(
            starling_cluster::StoreConfig {
                data_dir: dir.path().join("store"),
                node_id: 1,
                raft_addr: "127.0.0.1:1".into(),
            },
        ))
        .unwrap();
    let r = Router::new(store);
    let system = actix::System::new();
    system.block_on(async {
        let sink = Sink.start();
        for i in 0..10_000 {
            r.bind(
                &format!("user{i}@example.org"),
                "res",
                SessionHandle::new(
                    sink.clone().recipient(),
                    std::sync::Arc::new(Gate::new(16, 1 << 16)),
                ),
                || (0, sink.clone().recipient()),
                Vec::new,
            );
        }
    });
    c.bench_function("router lookup among 10k users", |b| {
        let mut i = 0u32;
        b.iter(|| {
            i = (i + 7919) % 10_000;
            black_box(r.handle(&format!("user{i}@example.org"), "res"))
        })
    });
}

fn scram(c: &mut Criterion) {
    let creds = StoredCredentials::new("pencil", 4096);
    let stored = creds.get(ScramHash::Sha256).clone();
    // The client's salted password, computed once (clients cache it).
    let salted =
        ScramClient::salted_password(ScramHash::Sha256, "pencil", &stored.salt, stored.iterations);
    c.bench_function("SCRAM-SHA-256 exchange, server side + client proof", |b| {
        b.iter(|| {
            let mut s = ScramServer::new(ScramHash::Sha256);
            let (mut client, first) = ScramClient::start(ScramHash::Sha256, "user", "pencil");
            let user = s.client_first(first.as_bytes()).unwrap();
            black_box(user);
            let server_first = s.server_first(Some(&stored));
            let fin = client
                .client_final_with(&server_first, |_, _| salted.clone())
                .unwrap();
            match s.client_final(fin.as_bytes()).unwrap() {
                ScramStep::Success { .. } => {}
                _ => panic!("not authenticated"),
            }
        })
    });
    c.bench_function("PLAIN verification (PBKDF2-SHA-256, 4096)", |b| {
        b.iter(|| assert!(creds.verify_plain("pencil")))
    });
}

criterion_group!(benches, parser, serialize, router, scram);
criterion_main!(benches);
