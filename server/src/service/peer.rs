//! The `Raft` service: openraft's peer RPCs, bincode inside `RaftMessage.payload`.
//!
//! A payload that does not decode is refused with `InvalidArgument` and never reaches openraft.
//! The reply payload is a bincode `Result<Response, RaftError>`, decoded by `raft::network`.

use crate::raft::Core;
use raftsql_proto::v1 as pb;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::Arc;

pub struct PeerService {
    pub core: Arc<Core>,
}

fn decode<T: DeserializeOwned>(req: tonic::Request<pb::RaftMessage>, what: &str) -> Result<T, tonic::Status> {
    bincode::deserialize(&req.into_inner().payload)
        .map_err(|e| tonic::Status::invalid_argument(format!("malformed {what} payload: {e}")))
}

fn encode<T: Serialize>(reply: &T) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
    let payload = bincode::serialize(reply).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(pb::RaftMessage { payload }))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for PeerService {
    async fn append_entries(
        &self,
        request: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
        let rpc = decode(request, "AppendEntries")?;
        let reply = self.core.raft.append_entries(rpc).await;
        if let Ok(openraft::raft::AppendEntriesResponse::Success) = reply {
            self.core.touch_leader_contact();
        }
        encode(&reply)
    }

    async fn vote(
        &self,
        request: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
        let rpc = decode(request, "Vote")?;
        encode(&self.core.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
        let rpc = decode(request, "InstallSnapshot")?;
        encode(&self.core.raft.install_snapshot(rpc).await)
    }
}
