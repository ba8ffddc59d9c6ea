//! openraft's outgoing RPCs over tonic: one lazily connected channel per
//! target address, shared by every client openraft makes for it. Requests
//! and replies are this crate's codec bytes inside the
//! `starling.cluster.v1.Raft` messages; a reply carries the remote openraft
//! `Result`, so remote Raft errors come back typed.
//!
//! It only carries what openraft sends: which RPC goes where, and when, is
//! openraft's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use starling_proto::cluster::RaftRequest;
use starling_proto::cluster::raft_client::RaftClient;
use tonic::transport::Channel;

use crate::codec::{decode, encode};
use crate::raft::{GroupTag, Node, NodeId, TypeConfig};
use crate::transport::Transport;

/// Creates a [`Connection`] per target.
#[derive(Clone)]
pub struct Network {
    transport: Arc<Transport>,
    /// The group (and registry epoch) this Raft node belongs to.
    tag: GroupTag,
    /// One channel (one HTTP/2 connection) per peer address. openraft asks
    /// for a new client per replication stream, and per target for every
    /// election and every leadership check, i.e. every linearizable read:
    /// a new channel each time would be a new TCP and TLS handshake per
    /// follower per read.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Network {
    pub fn new(transport: Arc<Transport>, tag: GroupTag) -> Self {
        Network {
            transport,
            tag,
            channels: Arc::default(),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = self.transport.channel(addr)?;
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Connection {
        Connection {
            target,
            addr: node.addr.clone(),
            client: None,
            network: self.clone(),
        }
    }
}

pub struct Connection {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
    network: Network,
}

#[derive(Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

fn net_err<E: std::error::Error>(
    msg: impl ToString,
) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(msg.to_string())))
}

impl Connection {
    fn client(&mut self) -> Result<RaftClient<Channel>, String> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let channel = self.network.channel(&self.addr)?;
        let c = RaftClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        self.client = Some(c.clone());
        Ok(c)
    }

    async fn call<Q, P, E>(
        &mut self,
        method: Method,
        req: &Q,
        option: &RPCOption,
    ) -> Result<P, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Q: Serialize,
        P: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = encode(req).map_err(net_err)?;
        let mut client = self.client().map_err(net_err)?;
        let mut request = tonic::Request::new(RaftRequest {
            data,
            group: self.network.tag.group,
            epoch: self.network.tag.epoch,
            target: self.target,
        });
        request.set_timeout(option.hard_ttl());
        let reply = match method {
            Method::AppendEntries => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                return Err(match status.code() {
                    tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
                    _ => RPCError::Network(NetworkError::new(&status)),
                });
            }
        };
        if !reply.error.is_empty() {
            return Err(net_err(reply.error));
        }
        let res: Result<P, RaftError<NodeId, E>> = decode(&reply.data).map_err(net_err)?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(Method::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Method::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(Method::Vote, &rpc, &option).await
    }
}
