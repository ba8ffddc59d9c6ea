//! The recommended layout of the routing table, so that a node's routes
//! can be dropped in one operation when it dies (`Op::DeleteIndexed`,
//! used by lease expiry).
//!
//! - space `jid_route`, key `bare \0 resource`, value
//!   `node_id (u64 big-endian) ++ payload` (the node's own encoding of the
//!   session: session id, priority, ...). All resources of a bare JID are
//!   `scan_prefix("jid_route", bare \0)`.
//! - space `node_route`, key `node_id (u64 big-endian) ++ bare \0
//!   resource`, value empty: the index of each node's routes. The node id
//!   is fixed-width, so no separator follows it.
//!
//! A resource that moves to another node is simply put again: the route's
//! value then names the new node and the old node's stale index entry no
//! longer owns it (`DeleteIndexed` checks the value's prefix).
//!
//! Only layout and the ops that keep it: it must not read or write the store
//! (callers pass these ops to `Store::write`).

use crate::op::Op;

pub const ROUTES: &str = "jid_route";
pub const NODE_ROUTES: &str = "node_route";

/// `bare \0 resource`.
pub fn route_key(bare: &str, resource: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bare.len() + 1 + resource.len());
    k.extend_from_slice(bare.as_bytes());
    k.push(0);
    k.extend_from_slice(resource.as_bytes());
    k
}

/// The prefix of every route of `bare`.
pub fn bare_prefix(bare: &str) -> Vec<u8> {
    let mut k = bare.as_bytes().to_vec();
    k.push(0);
    k
}

/// `node_id ++ payload`.
pub fn route_value(node_id: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = node_id.to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// The node and payload of a stored route value.
pub fn parse_route_value(v: &[u8]) -> Option<(u64, &[u8])> {
    let (id, payload) = v.split_at_checked(8)?;
    Some((u64::from_be_bytes(id.try_into().ok()?), payload))
}

fn index_key(node_id: u64, bare: &str, resource: &str) -> Vec<u8> {
    let mut k = node_id.to_be_bytes().to_vec();
    k.extend_from_slice(&route_key(bare, resource));
    k
}

/// The ops that set the route of `bare/resource` to `node_id` (with its
/// index entry); put them in one write with whatever else a login does.
pub fn put(node_id: u64, bare: &str, resource: &str, payload: &[u8]) -> Vec<Op> {
    vec![
        Op::Put {
            space: ROUTES.into(),
            key: route_key(bare, resource),
            value: route_value(node_id, payload),
        },
        Op::Put {
            space: NODE_ROUTES.into(),
            key: index_key(node_id, bare, resource),
            value: Vec::new(),
        },
    ]
}

/// The ops that remove the route of `bare/resource` held by `node_id`.
/// (Unconditional: call it from the node that owns the session.)
pub fn delete(node_id: u64, bare: &str, resource: &str) -> Vec<Op> {
    vec![
        Op::Delete {
            space: ROUTES.into(),
            key: route_key(bare, resource),
        },
        Op::Delete {
            space: NODE_ROUTES.into(),
            key: index_key(node_id, bare, resource),
        },
    ]
}

/// One route as stored: `bare/resource` is bound on `node_id`, with the
/// owning node's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub bare: String,
    pub resource: String,
    pub node_id: u64,
    pub payload: Vec<u8>,
}

impl Route {
    /// A route from its key and value in `ROUTES`.
    pub fn parse(key: &[u8], value: &[u8]) -> Option<Route> {
        let sep = key.iter().position(|b| *b == 0)?;
        let (node_id, payload) = parse_route_value(value)?;
        Some(Route {
            bare: String::from_utf8(key[..sep].to_vec()).ok()?,
            resource: String::from_utf8(key[sep + 1..].to_vec()).ok()?,
            node_id,
            payload: payload.to_vec(),
        })
    }
}

/// The op that removes only `node_id`'s index entry for `bare/resource`
/// (when the route itself is removed conditionally, `Op::DeleteIf`).
pub fn delete_index(node_id: u64, bare: &str, resource: &str) -> Op {
    Op::Delete {
        space: NODE_ROUTES.into(),
        key: index_key(node_id, bare, resource),
    }
}

/// The op that drops every route `node_id` still owns.
pub fn drop_node(node_id: u64) -> Op {
    Op::DeleteIndexed {
        space: ROUTES.into(),
        index: NODE_ROUTES.into(),
        prefix: node_id.to_be_bytes().to_vec(),
    }
}

/// Space (registry group): XEP-0114 component domain -> `node_id ++
/// session id` of the one connection that serves it in the cluster.
pub const COMPONENTS: &str = "component_route";
/// Space (registry group): `node_id ++ domain` -> empty, the index of
/// each node's components (dropped with its routes).
pub const NODE_COMPONENTS: &str = "node_component";

fn component_index_key(node_id: u64, domain: &str) -> Vec<u8> {
    let mut k = node_id.to_be_bytes().to_vec();
    k.extend_from_slice(domain.as_bytes());
    k
}

/// `node_id ++ session`: the value of a component's route, and the prefix
/// that says a route is still that connection's.
pub fn component_value(node_id: u64, session: u64) -> Vec<u8> {
    let mut v = node_id.to_be_bytes().to_vec();
    v.extend_from_slice(&session.to_be_bytes());
    v
}

/// The node and session of a stored component route.
pub fn parse_component_value(v: &[u8]) -> Option<(u64, u64)> {
    let (node, session) = v.split_at_checked(8)?;
    Some((
        u64::from_be_bytes(node.try_into().ok()?),
        u64::from_be_bytes(session.try_into().ok()?),
    ))
}

/// The ops that claim `domain` for a component connection: the write
/// fails with `OpResult::Exists` while another connection holds it.
pub fn claim_component(node_id: u64, domain: &str, session: u64) -> Vec<Op> {
    vec![
        Op::Insert {
            space: COMPONENTS.into(),
            key: domain.as_bytes().to_vec(),
            value: component_value(node_id, session),
        },
        Op::Put {
            space: NODE_COMPONENTS.into(),
            key: component_index_key(node_id, domain),
            value: Vec::new(),
        },
    ]
}

/// The ops that let `domain` go if this connection still holds it.
pub fn release_component(node_id: u64, domain: &str, session: u64) -> Vec<Op> {
    vec![
        Op::DeleteIf {
            space: COMPONENTS.into(),
            key: domain.as_bytes().to_vec(),
            prefix: component_value(node_id, session),
        },
        Op::Delete {
            space: NODE_COMPONENTS.into(),
            key: component_index_key(node_id, domain),
        },
    ]
}

/// The ops that drop every route (sessions and components) `node_id`
/// still owns: when it dies or restarts.
pub fn drop_node_all(node_id: u64) -> Vec<Op> {
    vec![
        drop_node(node_id),
        Op::DeleteIndexed {
            space: COMPONENTS.into(),
            index: NODE_COMPONENTS.into(),
            prefix: node_id.to_be_bytes().to_vec(),
        },
    ]
}
