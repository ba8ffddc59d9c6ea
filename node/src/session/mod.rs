//! Sessions: the bound client session actor (`c2s`), the actor of each
//! user with a session on this node (`user`), and the RFC 6121 logic they
//! apply (`im`).

pub mod c2s;
pub mod cluster_events;
pub mod component;
pub mod csi;
pub mod im;
mod outbox;
pub mod resume;
pub mod sm;
pub mod user;

/// Who is sending, as the session knows itself.
pub struct Origin<'a> {
    pub bare: &'a str,
    pub full: &'a str,
    pub session_id: u64,
}
