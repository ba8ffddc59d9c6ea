//! Starling's replicated state: an openraft group whose log and state machine
//! live in sled (behind the `kv` seam), reached over tonic between nodes
//! (mutual TLS with a cluster CA when configured).
//!
//! Besides the store itself this crate carries what nodes say to each other:
//! stanza delivery over one stream per peer (`deliver`, `LocalDelivery`),
//! membership (`join`, `leave`, `status`), node leases with failure
//! detection (`ClusterEvents`, `is_healthy`) and the routing-table layout
//! that lets a dead node's routes go in one operation (`routes`). A single
//! node is a cluster of one.
//!
//! It must not touch XMPP or the node: stanzas and session payloads are
//! opaque bytes here, the `node` crate is never imported (it plugs in through
//! `LocalDelivery` and `ClusterEvents`), and no openraft, sled or tonic type
//! appears in the public API. Inside, the module graph has no cycles; the
//! README's layout table lists the modules from the bottom up.

mod access;
mod batcher;
mod bootstrap;
mod codec;
mod config;
mod deliver;
mod delivery;
mod error;
mod events;
mod handle;
pub mod kv;
mod lease;
mod membership;
mod metrics;
mod op;
pub mod pki;
mod raft;
mod registry;
pub mod routes;
mod serve;
mod shared;
mod status;
mod store;
mod transport;

pub use crate::access::{QueuedWrite, StoreStats};
pub use crate::config::{ClusterTls, LeaseConfig, StoreConfig, StoreOptions};
pub use crate::delivery::{DeliveryError, DeliveryResult, Envelope, LocalDelivery};
pub use crate::error::StoreError;
pub use crate::events::{ClusterEvents, EXPIRED as EXPIRED_SPACE, LEASES as LEASE_SPACE};
pub use crate::handle::Store;
pub use crate::op::{Op, OpResult};
pub use crate::registry::{SM_SESSIONS, is_registry_space};
pub use crate::status::{ClusterStatus, MemberStatus, query_status};
