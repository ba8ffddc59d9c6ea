//! The `starling.cluster.v1.Raft` gRPC service: decodes openraft requests,
//! hands them to the local Raft node and encodes its `Result` back; and
//! `serve`, the one server that carries it with the Admin and Delivery
//! services (built by `transport`, so with the cluster's TLS).
//!
//! Must not interpret what it carries: Raft decides, the codec encodes.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;
use starling_proto::cluster::admin_server::AdminServer;
use starling_proto::cluster::delivery_server::DeliveryServer;
use starling_proto::cluster::raft_server::{Raft as RaftRpc, RaftServer};
use starling_proto::cluster::{RaftReply, RaftRequest};
use tonic::{Request, Response, Status};

use crate::codec::{decode, encode};
use crate::delivery::{DeliveryService, Hub};
use crate::lease::Leases;
use crate::raft::Raft;
use crate::raft::admin::AdminService;
use crate::registry::{GROUP_REGISTRY, Registry};
use crate::shared::Shared;

pub struct RaftService {
    raft: Raft,
    registry: Arc<Registry>,
}

impl RaftService {
    /// The Raft node a request is for: the durable group's, or the
    /// registry member it names in the epoch it names (a member restarted
    /// under a new id does not answer for its predecessor).
    fn target(&self, req: &RaftRequest) -> Result<Raft, Status> {
        match req.group {
            0 => Ok(self.raft.clone()),
            GROUP_REGISTRY => self
                .registry
                .find(req.epoch, Some(req.target))
                .map(|g| g.raft.clone())
                .ok_or_else(|| {
                    tracing::debug!(
                        epoch = req.epoch,
                        target = req.target,
                        node = self.registry.shared.node_id,
                        have = ?self.registry.members(),
                        "registry RPC for a member this node is not"
                    );
                    Status::unavailable("no such registry member here")
                }),
            g => Err(Status::invalid_argument(format!("unknown group {g}"))),
        }
    }
}

fn reply<T: Serialize>(res: &T) -> Result<Response<RaftReply>, Status> {
    let data = encode(res).map_err(Status::internal)?;
    Ok(Response::new(RaftReply {
        data,
        error: String::new(),
    }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let raft = self.target(&req)?;
        let rpc = decode(&req.data).map_err(Status::invalid_argument)?;
        reply(&raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let raft = self.target(&req)?;
        let rpc = decode(&req.data).map_err(Status::invalid_argument)?;
        reply(&raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let raft = self.target(&req)?;
        let rpc = decode(&req.data).map_err(Status::invalid_argument)?;
        reply(&raft.install_snapshot(rpc).await)
    }
}

/// Serves the Raft, Admin and Delivery services on `addr` until `shutdown`
/// resolves.
pub async fn serve(
    shared: Arc<Shared>,
    leases: Arc<Leases>,
    hub: Arc<Hub>,
    registry: Arc<Registry>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let raft = shared.raft.clone();
    let admin = AdminServer::new(AdminService {
        shared: shared.clone(),
        leases,
        registry: registry.clone(),
    })
    .max_decoding_message_size(usize::MAX)
    .max_encoding_message_size(usize::MAX);
    let svc = RaftServer::new(RaftService { raft, registry })
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    shared
        .transport
        .server()?
        .add_service(svc)
        .add_service(admin)
        .add_service(DeliveryServer::new(DeliveryService { hub }))
        .serve_with_shutdown(addr, shutdown)
        .await
}
