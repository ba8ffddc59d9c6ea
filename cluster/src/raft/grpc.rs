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
use crate::shared::Shared;

pub struct RaftService {
    raft: Raft,
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
        let rpc = decode(&req.into_inner().data).map_err(Status::invalid_argument)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc = decode(&req.into_inner().data).map_err(Status::invalid_argument)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let rpc = decode(&req.into_inner().data).map_err(Status::invalid_argument)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }
}

/// Serves the Raft, Admin and Delivery services on `addr` until `shutdown`
/// resolves.
pub async fn serve(
    shared: Arc<Shared>,
    leases: Arc<Leases>,
    hub: Arc<Hub>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let raft = shared.raft.clone();
    let admin = AdminServer::new(AdminService {
        shared: shared.clone(),
        leases,
    })
    .max_decoding_message_size(usize::MAX)
    .max_encoding_message_size(usize::MAX);
    let svc = RaftServer::new(RaftService { raft })
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
