//! The `starling.cluster.v1.Admin` gRPC service (membership, status, write
//! forwarding) and its client side, write forwarding to the leader.
//!
//! A follower's batcher sends its whole batch to the leader's
//! `ForwardWrite`, which proposes it as one entry; the reply carries one
//! result list per write. Membership changes are accepted by the leader only;
//! other nodes answer with the leader's id so the caller can go there.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use starling_proto::cluster::admin_client::AdminClient;
use starling_proto::cluster::admin_server::Admin;
use starling_proto::cluster::{
    JoinReply, JoinRequest, LeaveReply, LeaveRequest, NodeStatus, RaftReply, RaftRequest,
    StatusReply, StatusRequest,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::batcher::client_write_error;
use crate::codec::{decode, encode};
use crate::raft::{NodeId, Raft, Request as WriteRequest, Response as WriteResponse};
use crate::transport::Transport;
use crate::{Shared, StoreError};

/// Adds `node_id` as a learner, waits for it to catch up, then makes it a
/// voter. Leader only.
pub async fn add_member(raft: &Raft, node_id: NodeId, raft_addr: &str) -> Result<(), StoreError> {
    raft.add_learner(node_id, BasicNode::new(raft_addr), true)
        .await
        .map_err(client_write_error)?;
    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
        .await
        .map_err(client_write_error)?;
    Ok(())
}

/// Removes `node_id` from the voters and the cluster. Leader only.
pub async fn remove_member(raft: &Raft, node_id: NodeId) -> Result<(), StoreError> {
    raft.change_membership(
        ChangeMembers::RemoveVoters(BTreeSet::from([node_id])),
        false,
    )
    .await
    .map_err(client_write_error)?;
    Ok(())
}

pub struct AdminService {
    pub shared: Arc<Shared>,
}

impl AdminService {
    fn leader_id(&self) -> u64 {
        self.shared
            .raft
            .metrics()
            .borrow()
            .current_leader
            .unwrap_or(0)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let req = req.into_inner();
        let res = add_member(&self.shared.raft, req.node_id, &req.raft_addr).await;
        Ok(Response::new(JoinReply {
            ok: res.is_ok(),
            error: res.err().map(|e| e.to_string()).unwrap_or_default(),
            leader_id: self.leader_id(),
        }))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        let res = remove_member(&self.shared.raft, req.into_inner().node_id).await;
        Ok(Response::new(LeaveReply {
            ok: res.is_ok(),
            error: res.err().map(|e| e.to_string()).unwrap_or_default(),
        }))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let m = self.shared.raft.metrics().borrow().clone();
        let matched = |id: &NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map_or(0, |l| l.index)
        };
        let members = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| NodeStatus {
                node_id: *id,
                addr: node.addr.clone(),
                matched_index: matched(id),
                sessions: 0,
            })
            .collect();
        Ok(Response::new(StatusReply {
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            commit_index: self.shared.committed.load(Ordering::Relaxed),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members,
        }))
    }

    async fn forward_write(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let write: WriteRequest =
            decode(&req.into_inner().data).map_err(Status::invalid_argument)?;
        let reply = match self.shared.raft.client_write(write).await {
            Ok(resp) => RaftReply {
                data: encode(&resp.data).map_err(Status::internal)?,
                error: String::new(),
            },
            Err(e) => RaftReply {
                data: Vec::new(),
                error: client_write_error(e).to_string(),
            },
        };
        Ok(Response::new(reply))
    }
}

/// Admin clients by address, for forwarding writes.
pub struct Forwarder {
    transport: Arc<Transport>,
    timeout: Duration,
    clients: HashMap<String, AdminClient<Channel>>,
}

impl Forwarder {
    pub fn new(transport: Arc<Transport>, timeout: Duration) -> Self {
        Forwarder {
            transport,
            timeout,
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
        let mut req = Request::new(RaftRequest { data });
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
