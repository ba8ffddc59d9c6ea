//! This node's reading of the replicated routing table: which sessions of
//! a user are bound on other nodes, with what RFC 6121 delivery needs to
//! know about each (availability, priority, roster interest, last
//! presence), and the envelope that carries a stanza to one of them.
//!
//! The layout of a route (`starling_cluster::routes`: `bare \0 resource`
//! -> node id ++ payload) is the cluster crate's; the payload is the
//! session id followed by [`RouteInfo`] in MessagePack. Reads come from
//! the local replica; writes go through `crate::routing`.

use serde::{Deserialize, Serialize};
use starling_cluster::routes::{self, Route};
use starling_cluster::{Envelope, Store};

/// What the routing table knows of a session besides its node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// Sent initial presence and not yet unavailable.
    pub available: bool,
    pub priority: i32,
    /// Asked for the roster (gets roster pushes).
    pub interested: bool,
    /// Asked for the blocklist (gets XEP-0191 pushes); absent in routes
    /// written before blocking existed.
    #[serde(default)]
    pub blocklist: bool,
    /// The last available presence it broadcast, serialised.
    pub presence: Option<String>,
    /// Enabled message carbons (XEP-0280). Absent in routes written
    /// before carbons existed.
    #[serde(default)]
    pub carbons: bool,
}

/// A session bound on another node.
#[derive(Clone, Debug)]
pub struct RemoteResource {
    pub node: u64,
    pub resource: String,
    pub session: u64,
    pub info: RouteInfo,
}

/// `session id ++ info`.
pub fn payload(session: u64, info: &RouteInfo) -> Vec<u8> {
    let mut p = session.to_be_bytes().to_vec();
    p.extend(rmp_serde::to_vec_named(info).expect("route info serialises"));
    p
}

pub fn parse_payload(p: &[u8]) -> Option<(u64, RouteInfo)> {
    let (id, rest) = p.split_at_checked(8)?;
    let session = u64::from_be_bytes(id.try_into().ok()?);
    Some((session, rmp_serde::from_slice(rest).ok()?))
}

/// The prefix of the stored value of a route this session owns.
pub fn owner_prefix(node: u64, session: u64) -> Vec<u8> {
    let mut p = node.to_be_bytes().to_vec();
    p.extend_from_slice(&session.to_be_bytes());
    p
}

/// The sessions of `bare` on other nodes, from this node's replica (empty
/// while the cluster has no other member).
pub fn remote(store: &Store, bare: &str) -> Vec<RemoteResource> {
    if !store.has_peers() {
        return Vec::new();
    }
    let me = store.node_id();
    let Ok(pairs) = store.scan_prefix(routes::ROUTES, &routes::bare_prefix(bare)) else {
        return Vec::new();
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| {
            let r = Route::parse(&k, &v)?;
            if r.node_id == me {
                return None;
            }
            let (session, info) = parse_payload(&r.payload)?;
            Some(RemoteResource {
                node: r.node_id,
                resource: r.resource,
                session,
                info,
            })
        })
        .collect()
}

/// Every session bound on another node of a user `keep` accepts, from
/// this node's replica, with the user's bare JID. A walk of the whole
/// table: for administration, never on a stanza's path.
pub fn remote_where(store: &Store, keep: impl Fn(&str) -> bool) -> Vec<(String, RemoteResource)> {
    if !store.has_peers() {
        return Vec::new();
    }
    let me = store.node_id();
    let Ok(pairs) = store.scan_prefix(routes::ROUTES, b"") else {
        return Vec::new();
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| {
            let r = Route::parse(&k, &v)?;
            if r.node_id == me || !keep(&r.bare) {
                return None;
            }
            let (session, info) = parse_payload(&r.payload)?;
            Some((
                r.bare,
                RemoteResource {
                    node: r.node_id,
                    resource: r.resource,
                    session,
                    info,
                },
            ))
        })
        .collect()
}

/// The session of `bare/resource` if it is bound on another node.
pub fn remote_one(store: &Store, bare: &str, resource: &str) -> Option<RemoteResource> {
    if !store.has_peers() {
        return None;
    }
    let v = store
        .get(routes::ROUTES, &routes::route_key(bare, resource))
        .ok()??;
    let (node, p) = routes::parse_route_value(&v)?;
    if node == store.node_id() {
        return None;
    }
    let (session, info) = parse_payload(p)?;
    Some(RemoteResource {
        node,
        resource: resource.to_owned(),
        session,
        info,
    })
}

/// The envelope carrying a serialised stanza to `bare/resource`'s
/// session `session` on another node.
pub fn envelope(bare: &str, resource: &str, session: u64, xml: &str) -> Envelope {
    Envelope {
        to: format!("{bare}/{resource}"),
        session_id: session,
        stanza: xml.as_bytes().to_vec(),
        ..Envelope::default()
    }
}
