//! The `starling.cluster.v1.Admin` gRPC service (membership, status, write
//! forwarding) and the leader's membership changes behind it. Its client
//! side is `admin_client.rs`.
//!
//! A follower's batcher sends its whole batch to the leader's
//! `ForwardWrite`, which proposes it as one entry; the reply carries one
//! result list per write. Membership changes are accepted by the leader only;
//! other nodes answer with the leader's id so the caller can go there.
//!
//! A follower forwards a request once, to the leader; it must not forward a
//! request that reached it forwarded (no ping-pong between stale views).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use starling_proto::cluster::admin_client::AdminClient;
use starling_proto::cluster::admin_server::Admin;
use starling_proto::cluster::{
    JoinReply, JoinRequest, LeaveReply, LeaveRequest, RaftReply, RaftRequest, RegistryJoinRequest,
    StatusReply, StatusRequest,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::codec::{decode, encode};
use crate::error::{StoreError, client_write_error};
use crate::lease::Leases;
use crate::raft::admin_client::{JOIN_TIMEOUT, REGISTRY_JOIN_TIMEOUT};
use crate::raft::{NodeId, Raft, Request as WriteRequest};
use crate::registry::{GROUP_REGISTRY, NOT_IN_EPOCH, Registry};
use crate::shared::Shared;
use crate::status;

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
    /// For the status it reports (lease health).
    pub leases: Arc<Leases>,
    pub registry: Arc<Registry>,
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

/// Metadata marking a request a follower already forwarded to the leader:
/// it is not forwarded again (no ping-pong between stale views).
const FORWARDED: &str = "x-starling-forwarded";

impl AdminService {
    /// `None` when this node leads; otherwise a client to the leader, if
    /// the request may still be forwarded.
    fn leader_client(&self, forwarded: bool) -> Result<Option<AdminClient<Channel>>, StoreError> {
        let m = self.shared.raft.metrics();
        let (leader, addr) = {
            let m = m.borrow();
            let leader = m.current_leader;
            let addr = leader.and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.addr.clone())
            });
            (leader, addr)
        };
        match (leader, addr) {
            (Some(l), _) if l == self.shared.node_id => Ok(None),
            (Some(l), Some(addr)) if !forwarded => {
                let ch = self
                    .shared
                    .transport
                    .channel(&addr)
                    .map_err(|e| StoreError::Unavailable(format!("leader {l}: {e}")))?;
                Ok(Some(AdminClient::new(ch)))
            }
            (Some(l), _) => Err(StoreError::Unavailable(format!(
                "not the leader (leader: {l})"
            ))),
            (None, _) => Err(StoreError::Unavailable("no leader known".into())),
        }
    }
}

fn forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED)
}

fn forward_req<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    r.set_timeout(timeout);
    r
}

#[tonic::async_trait]
impl Admin for AdminService {
    /// Adds the caller as a learner, waits for it to catch up, then makes
    /// it a voter; a follower forwards the request to the leader.
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let fwd = forwarded(&req);
        let req = req.into_inner();
        let res = match self.leader_client(fwd) {
            Ok(None) => add_member(&self.shared.raft, req.node_id, &req.raft_addr).await,
            Ok(Some(mut c)) => match c.join(forward_req(req, JOIN_TIMEOUT)).await {
                Ok(r) => return Ok(r),
                Err(s) => Err(StoreError::Unavailable(format!(
                    "forwarding to the leader: {}",
                    s.message()
                ))),
            },
            Err(e) => Err(e),
        };
        Ok(Response::new(JoinReply {
            ok: res.is_ok(),
            error: res.err().map(|e| e.to_string()).unwrap_or_default(),
            leader_id: self.leader_id(),
        }))
    }

    /// Removes a node from the cluster; a follower forwards the request to
    /// the leader.
    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        let fwd = forwarded(&req);
        let req = req.into_inner();
        let res = match self.leader_client(fwd) {
            Ok(None) => remove_member(&self.shared.raft, req.node_id).await,
            Ok(Some(mut c)) => match c.leave(forward_req(req, JOIN_TIMEOUT)).await {
                Ok(r) => return Ok(r),
                Err(s) => Err(StoreError::Unavailable(format!(
                    "forwarding to the leader: {}",
                    s.message()
                ))),
            },
            Err(e) => Err(e),
        };
        Ok(Response::new(LeaveReply {
            ok: res.is_ok(),
            error: res.err().map(|e| e.to_string()).unwrap_or_default(),
        }))
    }

    /// Adds a member to the registry group of the request's epoch: the
    /// group's leader does; another member forwards once.
    async fn registry_join(
        &self,
        req: Request<RegistryJoinRequest>,
    ) -> Result<Response<JoinReply>, Status> {
        let fwd = forwarded(&req);
        let req = req.into_inner();
        // Only a member of the epoch's group can add one (not a node that
        // is itself still joining it).
        let group = self.registry.active().filter(|g| g.epoch == req.epoch);
        let leader_addr = group.as_ref().and_then(|g| {
            let m = g.raft.metrics();
            let m = m.borrow();
            let l = m.current_leader.filter(|l| *l != g.member)?;
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone())
        });
        let res = match (group, leader_addr) {
            (None, _) => Err(StoreError::Unavailable(format!(
                "{NOT_IN_EPOCH} {}",
                req.epoch
            ))),
            (Some(_), Some(addr)) if !fwd => {
                let ch = self
                    .shared
                    .transport
                    .channel(&addr)
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                // This node is in the epoch: a refusal from the leader it
                // knows (say, one that restarted) must not read as "not in
                // the epoch" to the joining node, which counts those.
                let mut reply = AdminClient::new(ch)
                    .registry_join(forward_req(req, REGISTRY_JOIN_TIMEOUT))
                    .await?;
                let r = reply.get_mut();
                if !r.ok {
                    r.error = format!(
                        "forwarded to the leader at {addr}: {}",
                        r.error.replace(NOT_IN_EPOCH, "leader not in")
                    );
                }
                return Ok(reply);
            }
            (Some(_), _) => {
                self.registry
                    .add_member(req.epoch, req.member_id, req.node_id, &req.raft_addr)
                    .await
            }
        };
        Ok(Response::new(JoinReply {
            ok: res.is_ok(),
            error: res.err().map(|e| e.to_string()).unwrap_or_default(),
            leader_id: 0,
        }))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(status::local(&self.leases).into()))
    }

    async fn read_index(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let group = req.into_inner().group;
        if group != 0 {
            return Err(Status::invalid_argument(format!(
                "read index of group {group}"
            )));
        }
        let reply = match crate::raft::confirm_leadership(&self.shared.raft).await {
            Ok(read) => RaftReply {
                data: read.map_or(0, |l| l.index).to_be_bytes().to_vec(),
                error: String::new(),
            },
            Err(e) => RaftReply {
                data: Vec::new(),
                error: e.to_string(),
            },
        };
        Ok(Response::new(reply))
    }

    async fn forward_write(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let raft = match req.group {
            0 => self.shared.raft.clone(),
            GROUP_REGISTRY => match self.registry.find(req.epoch, None) {
                Some(g) => g.raft.clone(),
                None => {
                    return Ok(Response::new(RaftReply {
                        data: Vec::new(),
                        error: format!("not in registry epoch {}", req.epoch),
                    }));
                }
            },
            g => return Err(Status::invalid_argument(format!("unknown group {g}"))),
        };
        let write: WriteRequest = decode(&req.data).map_err(Status::invalid_argument)?;
        let reply = match raft.client_write(write).await {
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
