//! The `Raft` service: openraft's peer RPCs, bincode inside `RaftMessage.payload`.
//!
//! A payload that does not decode is refused with `InvalidArgument` and never reaches openraft;
//! one that decodes is checked by `raft::peer_check` first (sender, receiver, cluster, terms,
//! shape) and refused with `PermissionDenied` and the reason when it fails.
//! The reply payload is a bincode `Result<Response, RaftError>`, decoded by `raft::network`.

use crate::raft::peer_check::{Envelope, Local, Refused};
use crate::raft::Core;
use bincode::Options;
use raftsql_proto::v1 as pb;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::Arc;

pub struct PeerService {
    pub core: Arc<Core>,
}

fn decode<T: DeserializeOwned>(
    req: tonic::Request<pb::RaftMessage>,
    what: &str,
) -> Result<(Envelope, T), tonic::Status> {
    let m = req.into_inner();
    let rpc = decode_payload(&m.payload, what)?;
    Ok((Envelope { cluster_id: m.cluster_id, from: m.from, to: m.to }, rpc))
}

/// Decodes a `RaftMessage.payload` (bincode, never reading past the payload itself, so a
/// forged length cannot make it allocate more than was sent); `InvalidArgument` when it does
/// not decode. Public for the fuzz tests (server/tests/fuzz).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8], what: &str) -> Result<T, tonic::Status> {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(payload.len() as u64)
        .deserialize(payload)
        .map_err(|e| tonic::Status::invalid_argument(format!("malformed {what} payload: {e}")))
}

fn refused(r: Refused) -> tonic::Status {
    tracing::warn!(error = %r, "peer message refused");
    tonic::Status::permission_denied(r.to_string())
}

fn encode<T: Serialize>(reply: &T) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
    let payload = bincode::serialize(reply).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(pb::RaftMessage { payload, ..Default::default() }))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for PeerService {
    async fn append_entries(
        &self,
        request: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
        let (env, rpc) = decode(request, "AppendEntries")?;
        Local::of(&self.core).append_entries(&env, &rpc).map_err(refused)?;
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
        let (env, rpc) = decode(request, "Vote")?;
        Local::of(&self.core).vote(&env, &rpc).map_err(refused)?;
        encode(&self.core.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
        let (env, rpc) = decode(request, "InstallSnapshot")?;
        Local::of(&self.core).install_snapshot(&env, &rpc).map_err(refused)?;
        encode(&self.core.raft.install_snapshot(rpc).await)
    }
}
