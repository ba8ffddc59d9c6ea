//! Sessions: the bound client session actor and the RFC 6121 logic it
//! applies on behalf of its user.

pub mod c2s;
pub mod im;
mod outbox;
