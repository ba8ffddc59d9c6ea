//! Starling: a clustered XMPP server. One stanza's path through the
//! modules: `net` (accept) → `stream` (TLS, SASL, bind; `xml` frames and
//! parses) → `session::c2s` (checks and stamps) → `session::im` (RFC 6121
//! delivery) or `modules` (server-side IQ) → `router` → the recipient
//! session's mailbox → its socket. Durable state goes through `storage`
//! to the replicated store of the `starling-cluster` crate.

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod config;
pub mod http;
pub mod metrics;
pub mod modules;
pub mod net;
pub mod router;
pub mod routing;
pub mod rsm;
pub mod run;
pub mod s2s;
pub mod server;
pub mod services;
pub mod session;
pub mod stanza;
pub mod storage;
pub mod stream;
pub mod xml;
