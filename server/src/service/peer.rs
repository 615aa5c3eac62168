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
    let rpc = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(m.payload.len() as u64)
        .deserialize(&m.payload)
        .map_err(|e| tonic::Status::invalid_argument(format!("malformed {what} payload: {e}")))?;
    let env = Envelope {
        cluster_id: m.cluster_id,
        from: m.from,
        to: m.to,
        from_incarnation: m.from_incarnation,
        to_incarnation: m.to_incarnation,
    };
    Ok((env, rpc))
}

fn refused(r: Refused) -> tonic::Status {
    // One line a second at most: a refused sender retries at its heartbeat rate, for as long as
    // the operator takes to act.
    static LAST: std::sync::Mutex<Option<(std::time::Instant, u64)>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    match last.as_mut() {
        Some((at, suppressed)) if at.elapsed() < std::time::Duration::from_secs(1) => *suppressed += 1,
        _ => {
            let suppressed = last.map_or(0, |(_, n)| n);
            tracing::warn!(error = %r, suppressed, "peer message refused");
            *last = Some((std::time::Instant::now(), 0));
        }
    }
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
