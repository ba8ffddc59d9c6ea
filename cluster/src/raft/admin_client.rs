//! The client side of `starling.cluster.v1.Admin`: asking a member to add
//! or remove a node, asking a node for its status, and forwarding a
//! follower's batch of writes to the leader (`ForwardWrite`). Every call
//! goes through the `Transport`, so it carries the cluster's TLS.
//!
//! Must not retry a forwarded write: a lost reply may hide a write that was
//! applied.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use starling_proto::cluster::admin_client::AdminClient;
use starling_proto::cluster::{
    JoinRequest, LeaveRequest, RaftRequest, RegistryJoinRequest, StatusReply, StatusRequest,
};
use tonic::Request;
use tonic::transport::Channel;

use crate::codec::{decode, encode};
use crate::error::StoreError;
use crate::raft::{GroupTag, NodeId, Request as WriteRequest, Response as WriteResponse};
use crate::transport::Transport;

/// Adding a member waits for it to catch up.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Admin clients by address, for forwarding writes.
pub struct Forwarder {
    transport: Arc<Transport>,
    timeout: Duration,
    tag: GroupTag,
    clients: HashMap<String, AdminClient<Channel>>,
}

impl Forwarder {
    pub fn new(transport: Arc<Transport>, timeout: Duration, tag: GroupTag) -> Self {
        Forwarder {
            transport,
            timeout,
            tag,
            clients: HashMap::new(),
        }
    }

    fn client(&mut self, addr: &str) -> Result<AdminClient<Channel>, StoreError> {
        if let Some(c) = self.clients.get(addr) {
            return Ok(c.clone());
        }
        let channel = self
            .transport
            .channel(addr)
            .map_err(|e| StoreError::Unavailable(format!("leader address {e}")))?;
        let c = AdminClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        self.clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Has the leader at `addr` propose `write`. Not retried: a lost reply
    /// may hide a write that was applied.
    pub async fn forward(
        &mut self,
        addr: &str,
        write: &WriteRequest,
    ) -> Result<WriteResponse, StoreError> {
        let data = encode(write).map_err(StoreError::Storage)?;
        let mut client = self.client(addr)?;
        let mut req = Request::new(RaftRequest {
            data,
            group: self.tag.group,
            epoch: self.tag.epoch,
            target: 0,
        });
        req.set_timeout(self.timeout);
        let reply = tokio::time::timeout(self.timeout, client.forward_write(req))
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!("forwarding to leader {addr}: timed out"))
            })?
            .map_err(|s| {
                StoreError::Unavailable(format!("forwarding to leader {addr}: {}", s.message()))
            })?
            .into_inner();
        if !reply.error.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "leader {addr}: {}",
                reply.error
            )));
        }
        decode(&reply.data).map_err(StoreError::Storage)
    }
}

fn unavailable(what: &str, addr: &str) -> impl Fn(tonic::Status) -> StoreError {
    move |s| StoreError::Unavailable(format!("{what} at {addr}: {}", s.message()))
}

/// Asks the member at `seed` (any member) to add this node.
pub async fn join(
    transport: &Transport,
    seed: &str,
    node_id: NodeId,
    raft_addr: &str,
) -> Result<(), StoreError> {
    let ch = transport.channel(seed).map_err(StoreError::Unavailable)?;
    let mut req = Request::new(JoinRequest {
        node_id,
        raft_addr: raft_addr.to_string(),
        c2s_addr: String::new(),
    });
    req.set_timeout(JOIN_TIMEOUT);
    let r = AdminClient::new(ch)
        .join(req)
        .await
        .map_err(unavailable("join", seed))?
        .into_inner();
    if r.ok {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "join refused: {}",
            r.error
        )))
    }
}

/// Asks the node at `addr` to add member `member` (of node `node_id`, at
/// `raft_addr`) to the registry group of `epoch` (it forwards to the
/// group's leader).
pub async fn registry_join(
    transport: &Transport,
    addr: &str,
    epoch: u64,
    member: u64,
    node_id: NodeId,
    raft_addr: &str,
) -> Result<(), StoreError> {
    let ch = transport.channel(addr).map_err(StoreError::Unavailable)?;
    let mut req = Request::new(RegistryJoinRequest {
        epoch,
        member_id: member,
        raft_addr: raft_addr.to_string(),
        node_id,
    });
    req.set_timeout(REGISTRY_JOIN_TIMEOUT);
    let r = AdminClient::new(ch)
        .registry_join(req)
        .await
        .map_err(unavailable("registry join", addr))?
        .into_inner();
    if r.ok {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "registry join refused: {}",
            r.error
        )))
    }
}

/// Joining the registry: its state is memory, catching up is quick.
pub const REGISTRY_JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the member at `addr` to remove `node_id`.
pub async fn leave(transport: &Transport, addr: &str, node_id: NodeId) -> Result<(), StoreError> {
    let ch = transport.channel(addr).map_err(StoreError::Unavailable)?;
    let mut req = Request::new(LeaveRequest { node_id });
    req.set_timeout(JOIN_TIMEOUT);
    let r = AdminClient::new(ch)
        .leave(req)
        .await
        .map_err(unavailable("leave", addr))?
        .into_inner();
    if r.ok {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "leave refused: {}",
            r.error
        )))
    }
}

/// The durable group's read index from its leader (`client`, at `addr`):
/// the commit index it had once it confirmed it still leads.
pub async fn read_index(
    client: &mut AdminClient<Channel>,
    addr: &str,
    timeout: Duration,
) -> Result<u64, StoreError> {
    let mut req = Request::new(RaftRequest {
        data: Vec::new(),
        group: 0,
        epoch: 0,
        target: 0,
    });
    req.set_timeout(timeout);
    let reply = tokio::time::timeout(timeout, client.read_index(req))
        .await
        .map_err(|_| StoreError::Unavailable(format!("read index at {addr}: timed out")))?
        .map_err(unavailable("read index", addr))?
        .into_inner();
    if !reply.error.is_empty() {
        return Err(StoreError::Unavailable(format!(
            "read index at {addr}: {}",
            reply.error
        )));
    }
    <[u8; 8]>::try_from(reply.data.as_slice())
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Unavailable(format!("read index at {addr}: malformed reply")))
}

/// The status the node at `addr` reports.
pub async fn status(transport: &Transport, addr: &str) -> Result<StatusReply, StoreError> {
    let ch = transport.channel(addr).map_err(StoreError::Unavailable)?;
    let mut req = Request::new(StatusRequest {});
    req.set_timeout(Duration::from_secs(5));
    Ok(AdminClient::new(ch)
        .status(req)
        .await
        .map_err(unavailable("status", addr))?
        .into_inner())
}
