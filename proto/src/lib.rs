//! Generated protobuf and gRPC code for Starling's node-to-node services:
//! Raft transport, stanza delivery and membership. Nothing else lives here.
#![allow(clippy::all)]

pub mod cluster {
    tonic::include_proto!("starling.cluster.v1");
}
