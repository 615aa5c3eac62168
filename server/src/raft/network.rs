//! The peer transport: openraft's `RaftNetwork` over tonic (design.md §6).
//!
//! - One lazily connected tonic `Channel` per peer address, created once and reused by every
//!   replication stream openraft opens to that peer (openraft calls `new_client` again after
//!   errors; it gets the same channel back). tonic re-resolves the host name on reconnect, so a
//!   pod that comes back under the same DNS name with a new IP is found again.
//! - openraft's messages travel bincode-encoded inside `RaftMessage.payload`; the reply payload
//!   is a bincode `Result<Response, RaftError>` so remote errors keep their type.
//! - Every RPC is bounded by the `hard_ttl` openraft gives in `RPCOption`.
//! - Sizes: an AppendEntries request larger than [`MAX_PEER_MESSAGE`] is never sent; the client
//!   answers `PayloadTooLarge` with a smaller entry count and openraft retries with fewer
//!   entries. Snapshot chunks are bounded by `snapshot_max_chunk_size` (node config). The peer
//!   server accepts messages up to the same limit, so nothing hits tonic's 4 MiB default.
//! - Failures: a peer that cannot be connected to is `Unreachable` (openraft backs off); a
//!   timeout is `Timeout`; any other transport failure is `Network` (openraft retries).

use crate::typ::{NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use raftsql_proto::v1::raft_client::RaftClient;
use raftsql_proto::v1::RaftMessage;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// The largest peer message either side sends or accepts (64 MiB).
pub const MAX_PEER_MESSAGE: usize = 64 << 20;

/// Opens a lazily connected channel to `addr` ("host:port").
pub fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// Creates one [`PeerClient`] per replication stream, sharing one channel per peer.
#[derive(Clone, Default)]
pub struct Network {
    channels: Arc<Mutex<HashMap<(NodeId, String), Channel>>>,
    pub(crate) me: NodeId,
}

impl Network {
    pub fn new(me: NodeId) -> Self {
        Network { channels: Default::default(), me }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let key = (target, node.addr.clone());
        let mut channels = self.channels.lock().expect("channel map lock is never poisoned");
        let channel = match channels.get(&key) {
            Some(c) => Ok(c.clone()),
            None => channel(&node.addr).inspect(|c| {
                channels.insert(key, c.clone());
            }),
        };
        PeerClient {
            me: self.me,
            target,
            addr: node.addr.clone(),
            channel: channel.map_err(|e| e.to_string()),
        }
    }
}

/// The client side of the peer RPCs to one node.
pub struct PeerClient {
    me: NodeId,
    target: NodeId,
    addr: String,
    /// Err when the address could not even be parsed into an endpoint.
    channel: Result<Channel, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, E>>;

impl PeerClient {
    /// Sends one RPC: encode, call with the hard TTL, decode the remote `Result`.
    async fn call<Req, Resp, E>(
        &mut self,
        kind: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = match &self.channel {
            Ok(c) => c.clone(),
            Err(e) => {
                let err =
                    TransportError(format!("bad address {:?} for node {}: {e}", self.addr, self.target));
                return Err(RPCError::Unreachable(Unreachable::new(&err)));
            }
        };
        let payload = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let ttl = option.hard_ttl();
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let mut request = tonic::Request::new(RaftMessage { payload });
        request.set_timeout(ttl);
        let fut = async {
            match kind {
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let timeout =
            || RPCError::Timeout(Timeout { action: kind, id: self.me, target: self.target, timeout: ttl });
        let reply = match tokio::time::timeout(ttl, fut).await {
            Err(_elapsed) => return Err(timeout()),
            Ok(Err(status)) => {
                let err =
                    TransportError(format!("{kind} to node {} at {}: {status}", self.target, self.addr));
                return Err(match status.code() {
                    tonic::Code::DeadlineExceeded => timeout(),
                    tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&err)),
                    _ => RPCError::Network(NetworkError::new(&err)),
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let decoded: Result<Resp, E> =
            bincode::deserialize(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        let n = rpc.entries.len() as u64;
        if n > 1 {
            let size = bincode::serialized_size(&rpc).unwrap_or(u64::MAX);
            if size > MAX_PEER_MESSAGE as u64 {
                // Ask openraft to resend fewer entries, scaled to fit with room to spare.
                let hint = (n * MAX_PEER_MESSAGE as u64 / size / 2).clamp(1, n - 1);
                return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(hint)));
            }
        }
        self.call(RPCTypes::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call(RPCTypes::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call(RPCTypes::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // An unreachable peer is retried at 200 ms, doubling up to 2 s: a restarted node is
        // found again quickly, a dead one costs little.
        openraft::network::Backoff::new((0..).map(|i| Duration::from_millis((200u64 << i.min(4)).min(2000))))
    }
}
