//! The user actor: one per bare JID with a session on this node.
//!
//! It owns the user's online state on this node (each session's presence
//! state: availability, directed presence, the last-activity record of an
//! ending session) and is where RFC 6121's presence rules run for what the
//! user's clients send: broadcast and probes (§4), directed presence
//! (§4.6), outbound subscription stanzas (§3), roster interest (§2.1.6) and
//! the unavailable presence when a session ends. Its mailbox serialises these operations for the
//! user on this node (each runs to its end before the next starts), so no
//! lock guards them; durable per-user records are written compare-and-set
//! (`Storage::update_user`), so another node acting for the same user
//! never loses an update.
//!
//! The router keeps a view of the user's bound resources (availability,
//! priority, last presence) for delivery to read without asking the actor.
//!
//! Later XEPs add their per-user state here (carbons, CSI, blocking, stream
//! management, PEP subscriptions).

use super::im::{self, Origin, PresenceState};
use crate::router::ToUser;
use crate::server::Server;
use crate::stanza::StanzaError;
use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler, WrapFuture,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct User {
    /// Tells this actor from a later one of the same user in the router.
    id: u64,
    server: Arc<Server>,
    bare: Arc<str>,
    /// The user's sessions on this node (usually one or two).
    sessions: Vec<SessionState>,
}

struct SessionState {
    session: u64,
    full: Arc<str>,
    presence: PresenceState,
}

impl Actor for User {
    type Context = Context<Self>;
}

/// Starts the actor of `bare` on the current arbiter; returns its id and
/// address for the router.
pub fn start(server: Arc<Server>, bare: &str) -> (u64, actix::Recipient<ToUser>) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let user = User {
        id,
        server,
        bare: bare.into(),
        sessions: Vec::new(),
    };
    (id, user.start().recipient())
}

type Reply = AtomicResponse<User, Result<(), StanzaError>>;

/// A session that sends neither presence nor anything else is written to
/// the registry this long after bind.
const PUBLISH_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

fn done(r: Result<(), StanzaError>) -> Reply {
    AtomicResponse::new(Box::pin(actix::fut::ready(r)))
}

impl Handler<ToUser> for User {
    type Result = Reply;

    fn handle(&mut self, msg: ToUser, ctx: &mut Context<Self>) -> Reply {
        let server = self.server.clone();
        let bare = self.bare.clone();
        match msg {
            ToUser::Attach { session, full } => {
                let full: Arc<str> = full.into();
                self.sessions.push(SessionState {
                    session,
                    full: full.clone(),
                    presence: PresenceState::default(),
                });
                // The route is written with the session's initial presence
                // (one write), or before the first other stanza it sends,
                // or after PUBLISH_AFTER if it sends neither: a session is
                // reachable from other nodes by then, whatever it does.
                // Without a registry group (no peers) nothing is written,
                // and joining one writes every session (`republish`).
                if server.storage.store.registry_active() {
                    ctx.run_later(PUBLISH_AFTER, move |_, ctx| {
                        ctx.notify(ToUser::Publish { session });
                    });
                }
                let resource = im::split(&full).1.unwrap_or_default();
                done(crate::routing::bind(&server, &bare, resource).map_err(StanzaError::from))
            }
            ToUser::Publish { session } => {
                let Some(s) = self.sessions.iter_mut().find(|s| s.session == session) else {
                    return done(Ok(()));
                };
                if s.presence.published {
                    return done(Ok(()));
                }
                self.publish(session)
            }
            ToUser::Presence { session, el } => {
                let Some(s) = self.sessions.iter_mut().find(|s| s.session == session) else {
                    return done(Ok(()));
                };
                let mut presence = std::mem::take(&mut s.presence);
                let full = s.full.clone();
                AtomicResponse::new(Box::pin(
                    async move {
                        let origin = Origin {
                            bare: &bare,
                            full: &full,
                            session_id: session,
                        };
                        let r = im::presence(&server, &origin, &mut presence, el).await;
                        (presence, r)
                    }
                    .into_actor(self)
                    .map(move |(mut presence, r), act, _| {
                        if std::mem::take(&mut presence.flush_offline) {
                            act.spawn_offline_flush(session);
                        }
                        if let Some(s) = act.sessions.iter_mut().find(|s| s.session == session) {
                            s.presence = presence;
                        }
                        r
                    }),
                ))
            }
            ToUser::Interested { session } => {
                self.server
                    .router
                    .update(&bare, session, |r| r.interested = true);
                self.publish(session)
            }
            ToUser::Carbons { session, enabled } => {
                self.server
                    .router
                    .update(&bare, session, |r| r.carbons = enabled);
                self.publish(session)
            }
            ToUser::BlocklistRequested { session } => {
                self.server
                    .router
                    .update(&bare, session, |r| r.blocklist = true);
                self.publish(session)
            }
            ToUser::Blocked { items } => {
                for s in &mut self.sessions {
                    let directed = &mut s.presence.directed;
                    crate::modules::blocking::end_directed(&server, &s.full, directed, &items);
                }
                done(Ok(()))
            }
            ToUser::Detach {
                session,
                owned,
                silent,
            } => {
                let Some(i) = self.sessions.iter().position(|s| s.session == session) else {
                    self.release(ctx);
                    return done(Ok(()));
                };
                let SessionState {
                    full, mut presence, ..
                } = self.sessions.swap_remove(i);
                AtomicResponse::new(Box::pin(
                    async move {
                        let origin = Origin {
                            bare: &bare,
                            full: &full,
                            session_id: session,
                        };
                        if !silent {
                            im::session_ended(&server, &origin, &mut presence).await;
                        }
                        let resource = im::split(&full).1.unwrap_or_default();
                        let last = presence.last_activity.take();
                        if let Err(e) =
                            crate::routing::unbind(&server, &bare, resource, session, owned, last)
                                .await
                        {
                            // Left for the node's lease expiry or its next
                            // start to clear.
                            tracing::warn!(error = %e, "could not remove the session's route");
                        }
                        Ok(())
                    }
                    .into_actor(self)
                    .map(|r, act, ctx| {
                        act.release(ctx);
                        r
                    }),
                ))
            }
        }
    }
}

impl User {
    /// Writes `session`'s route (or its update) as this actor's next
    /// operation.
    fn publish(&mut self, session: u64) -> Reply {
        let Some(s) = self.sessions.iter().find(|s| s.session == session) else {
            return done(Ok(()));
        };
        let mut published = s.presence.published;
        let (server, bare) = (self.server.clone(), self.bare.clone());
        AtomicResponse::new(Box::pin(
            async move {
                let r = crate::routing::publish(&server, &bare, session, &mut published).await;
                (published, r)
            }
            .into_actor(self)
            .map(move |(published, r), act, _| {
                if let Some(s) = act.sessions.iter_mut().find(|s| s.session == session) {
                    s.presence.published = published;
                }
                r.map_err(StanzaError::from)
            }),
        ))
    }

    /// Hands the stored offline messages to `session` as a task of its own:
    /// a large backlog goes out as the client reads it, and the session
    /// (which may be waiting for this actor) must not wait for that.
    fn spawn_offline_flush(&self, session: u64) {
        let Some(s) = self.sessions.iter().find(|s| s.session == session) else {
            return;
        };
        let (server, bare, full) = (self.server.clone(), self.bare.clone(), s.full.clone());
        actix_rt::spawn(async move {
            let origin = Origin {
                bare: &bare,
                full: &full,
                session_id: session,
            };
            im::flush_offline(&server, &origin).await;
        });
    }

    /// With no session left, leaves the router and stops (unless a session
    /// bound meanwhile: then this actor goes on serving it).
    fn release(&mut self, ctx: &mut Context<Self>) {
        if self.sessions.is_empty() && self.server.router.release(&self.bare, self.id) {
            ctx.stop();
        }
    }
}
