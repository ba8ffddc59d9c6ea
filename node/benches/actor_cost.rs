//! What one actix actor costs in heap bytes, the way Starling uses one: a
//! session actor (`session::c2s::C2s`: a `Context` with its mailbox set to
//! the session's capacity, one task spawned in the context for the stream,
//! a `Recipient` in the router behind an `Arc`) and a user actor (a plain
//! `Context`, no spawned task). The stream task's own state is not counted:
//! it existed before the session was an actor (a boxed future on the
//! arbiter) and is measured by `bench/compare.sh idle`.
//!
//! `cargo bench -p starling --bench actor_cost` prints bytes per actor,
//! counted by a global allocator that tracks live bytes.

use actix::{Actor, AsyncContext, Context, Handler, Message, Recipient};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[derive(Message)]
#[rtype(result = "()")]
struct Msg(#[allow(dead_code)] Arc<str>);

/// Shaped like the session actor: two pointers of state.
struct Session(#[allow(dead_code)] Arc<()>, #[allow(dead_code)] Arc<()>);

impl Actor for Session {
    type Context = Context<Self>;
}

impl Handler<Msg> for Session {
    type Result = ();
    fn handle(&mut self, _: Msg, _: &mut Context<Self>) {}
}

/// Shaped like a user actor with nothing online yet.
struct User;

impl Actor for User {
    type Context = Context<Self>;
}

impl Handler<Msg> for User {
    type Result = ();
    fn handle(&mut self, _: Msg, _: &mut Context<Self>) {}
}

const N: isize = 20_000;

fn main() {
    let sys = actix::System::new();
    sys.block_on(async {
        let shared = Arc::new(());
        let mut handles: Vec<Arc<Recipient<Msg>>> = Vec::with_capacity(N as usize);
        let after_vec = LIVE.load(Ordering::Relaxed);
        for _ in 0..N {
            let s = shared.clone();
            let addr = Session::create(move |ctx| {
                ctx.set_mailbox_capacity(1024);
                // The stream task: a future that never ends (its own size
                // excluded: an empty async block).
                ctx.spawn(actix::fut::wrap_future::<_, Session>(
                    futures::future::pending::<()>(),
                ));
                Session(s.clone(), s)
            });
            handles.push(Arc::new(addr.recipient()));
        }
        tokio::task::yield_now().await;
        let sessions = LIVE.load(Ordering::Relaxed) - after_vec;
        let mut users = Vec::with_capacity(N as usize);
        let after_vec = LIVE.load(Ordering::Relaxed);
        for _ in 0..N {
            users.push(User.start());
        }
        tokio::task::yield_now().await;
        let user_bytes = LIVE.load(Ordering::Relaxed) - after_vec;
        println!(
            "session actor: {} bytes of heap each (context, mailbox, spawned-task box, \
             Arc<Recipient> in the router), over {N}",
            sessions / N
        );
        println!(
            "user actor (empty): {} bytes of heap each, over {N}",
            user_bytes / N
        );
        drop(handles);
        drop(users);
    });
}
