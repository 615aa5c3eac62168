//! The peer transport: openraft's `RaftNetwork` over tonic (design.md §6).
//!
//! - One lazily connected tonic `Channel` per peer address, created once and reused by every
//!   replication stream openraft opens to that peer (openraft calls `new_client` again after
//!   errors; it gets the same channel back). tonic re-resolves the host name on reconnect, so a
//!   pod that comes back under the same DNS name with a new IP is found again.
//! - openraft's messages travel bincode-encoded inside `RaftMessage.payload`, in an envelope
//!   naming this node and its incarnation, the target node and the incarnation the membership
//!   records for it, and this node's cluster id, which the receiver checks
//!   ([`super::peer_check`]); the reply payload is a bincode `Result<Response, RaftError>` so
//!   remote errors keep their type. A refused message comes back as `PermissionDenied` and is
//!   treated as an unreachable peer here (openraft backs off and retries; the receiver's log
//!   says why).
//! - Every RPC is bounded by the `hard_ttl` openraft gives in `RPCOption`.
//! - Sizes: an AppendEntries request of several entries larger than [`MAX_APPEND_BYTES`] is
//!   never sent; the client answers `PayloadTooLarge` with a smaller entry count and openraft
//!   retries with fewer entries, so batches are sized in bytes to what the link carries
//!   within openraft's AppendEntries timeout (the election timeout for a request with entries:
//!   vendor/openraft/PATCHES.md). (One entry is always sent whole; the leader bounds entries in size.) Snapshot chunks are bounded by `snapshot_max_chunk_size` (node config). The peer
//!   server accepts messages up to the same limit, so nothing hits tonic's 4 MiB default.
//! - Failures: a peer that cannot be connected to is `Unreachable` (openraft backs off); a
//!   timeout is `Timeout`; any other transport failure is `Network` (openraft retries).
//! - Source address (`--peer-source-addr IP`): every connection this node opens to another
//!   node — replication here, and the join, bootstrap, write-forwarding, remove-forwarding and
//!   `min_replicas` status calls elsewhere — goes through [`channel()`] and is bound to that local
//!   IP, so a multi-homed host picks the interface its peers see (and a test proxy can tell
//!   nodes apart by source IP). It applies to peers of its own family only: an IPv4 source
//!   address is not used to reach an IPv6 peer, and vice versa. An address that cannot be bound
//!   (not assigned to this host) shows as a connect failure naming the peer, in the log and in
//!   the error a forwarded request returns; the node itself starts normally.

use crate::store::StateMachine;
use crate::tls::Tls;
use crate::typ::{Member, NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use raftsql_proto::channel::{self, Channel};
use raftsql_proto::v1::raft_client::RaftClient;
use raftsql_proto::v1::RaftMessage;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The largest peer message either side sends or accepts (64 MiB).
pub const MAX_PEER_MESSAGE: usize = 64 << 20;

// A row arrives in one entry of one peer message, so a snapshot record can be as large.
const _: () = assert!(MAX_PEER_MESSAGE as u64 <= crate::store::MAX_RECORD_BYTES);

/// The most bytes of entries one AppendEntries carries when it holds more than one entry.
/// openraft (as patched here: vendor/openraft/PATCHES.md) gives an AppendEntries with entries
/// the election timeout (1 s) before it gives up and retries, so a batch must be small enough
/// to cross the network, be decoded and be appended in that time (4 MiB is ~30 ms at 1 Gbit/s,
/// 0.4 s at 10 MB/s); a batch over it is resent as several smaller ones.
pub const MAX_APPEND_BYTES: usize = 4 << 20;

/// Opens a lazily connected channel to the node at `addr` ("host:port"), from the local IP
/// `source` if given. Every node-to-node connection is made through here: HTTP/2 driven by the
/// caller's task ([`raftsql_proto::channel`]), pinged every 10 s and dropped when a ping goes 5 s
/// unanswered. With peer TLS (`tls`), each connection presents this node's certificate and
/// verifies the server as node `expect` — or, when `None`, as any node the peer CA vouches for
/// (see [`crate::tls`]); the configuration is read at each connect, so a rotated certificate is
/// used from then on.
pub fn channel(
    addr: &str,
    source: Option<IpAddr>,
    tls: Option<&Arc<Tls>>,
    expect: Option<NodeId>,
) -> Result<Channel, String> {
    let options = channel::Options {
        connect_timeout: CONNECT_TIMEOUT,
        keep_alive: Some((Duration::from_secs(10), Duration::from_secs(5))),
        local_addr: source,
    };
    let Some(tls) = tls.cloned() else { return Channel::lazy(addr, options) };
    let target = addr.to_string();
    let connector: channel::Connector = Arc::new(move || {
        let (tls, addr) = (tls.clone(), target.clone());
        Box::pin(async move {
            use std::io::Error;
            let config = tls.client_config().ok_or_else(|| Error::other("peer TLS has no client side"))?;
            let stream = crate::tls::connect(&addr, source, config, expect, tls.peer_domain()).await?;
            Ok(Box::new(stream) as Box<dyn channel::Io>)
        })
    });
    Channel::with_connector(addr, options, connector)
}

/// How long connecting to another node (TCP, and TLS when on) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub use raftsql_proto::status_text;

/// Creates one [`PeerClient`] per replication stream, sharing one channel per peer.
#[derive(Clone)]
pub struct Network {
    channels: Arc<Mutex<HashMap<(NodeId, String), Channel>>>,
    pub(crate) me: NodeId,
    /// The local IP every peer connection is bound to (`--peer-source-addr`).
    source: Option<IpAddr>,
    cluster: ClusterId,
    /// Peer TLS (`--peer-tls-*`), if on.
    tls: Option<Arc<Tls>>,
}

impl Network {
    pub fn new(me: NodeId, source: Option<IpAddr>, sm: StateMachine, tls: Option<Arc<Tls>>) -> Self {
        let cluster = ClusterId { sm };
        Network { channels: Default::default(), me, source, cluster, tls }
    }
}

/// This node's cluster id for the envelope of every peer message (empty until known).
#[derive(Clone)]
struct ClusterId {
    sm: StateMachine,
}

impl ClusterId {
    fn get(&self) -> String {
        self.sm.cluster_id().ok().flatten().unwrap_or_default()
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        // Peers are dialled at their peer address (the client address in single-port mode).
        let key = (target, node.peer_addr.clone());
        let mut channels = self.channels.lock().expect("channel map lock is never poisoned");
        let channel = match channels.get(&key) {
            Some(c) => Ok(c.clone()),
            None => channel(&node.peer_addr, self.source, self.tls.as_ref(), Some(target)).inspect(|c| {
                channels.insert(key, c.clone());
            }),
        };
        PeerClient {
            me: self.me,
            cluster: self.cluster.clone(),
            target,
            target_incarnation: node.incarnation,
            addr: node.peer_addr.clone(),
            channel,
        }
    }
}

/// The client side of the peer RPCs to one node.
pub struct PeerClient {
    me: NodeId,
    cluster: ClusterId,
    target: NodeId,
    /// The target's incarnation as the membership that made this client records it.
    target_incarnation: u64,
    addr: String,
    /// Err when the address could not even be parsed into an endpoint.
    channel: Result<Channel, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

type RpcResult<T, E> = Result<T, RPCError<NodeId, Member, E>>;

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
        let mut request = tonic::Request::new(RaftMessage {
            payload,
            cluster_id: self.cluster.get(),
            from: self.me,
            to: self.target,
            from_incarnation: self.cluster.sm.incarnation(),
            to_incarnation: self.target_incarnation,
        });
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
                let err = TransportError(format!(
                    "{kind} to node {} at {}: {}",
                    self.target,
                    self.addr,
                    status_text(&status)
                ));
                return Err(match status.code() {
                    tonic::Code::DeadlineExceeded => timeout(),
                    // A refused message (peer_check) will be refused again until an operator
                    // acts: back off as from a dead peer instead of resending at once (which
                    // openraft does after a plain network error, ~1000 times a second).
                    tonic::Code::Unavailable | tonic::Code::PermissionDenied => {
                        RPCError::Unreachable(Unreachable::new(&err))
                    }
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
            if size > MAX_APPEND_BYTES as u64 {
                // Ask openraft to resend fewer entries, scaled to fit with room to spare.
                let hint = (n * MAX_APPEND_BYTES as u64 / size / 2).clamp(1, n - 1);
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

#[cfg(test)]
mod tests {
    use super::*;
    use raftsql_proto::v1::admin_client::AdminClient;
    use raftsql_proto::v1::StatusRequest;

    /// Opens a real tonic connection through [`channel`] to a bare TCP listener and returns the
    /// address the listener saw the connection come from.
    async fn dial_and_accept(source: Option<IpAddr>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let channel = channel(&addr, source, None, None).unwrap();
        // The listener speaks no HTTP/2, so the call itself never succeeds; it only has to dial.
        let call = tokio::spawn(async move {
            let mut req = tonic::Request::new(StatusRequest {});
            req.set_timeout(Duration::from_secs(5));
            let _ = AdminClient::new(channel).status(req).await;
        });
        let (_stream, peer) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the channel connects within 5 s")
            .unwrap();
        call.abort();
        peer
    }

    #[tokio::test]
    async fn peer_connections_come_from_the_source_address() {
        // Linux routes all of 127.0.0.0/8 to loopback, so any 127.x address can be bound.
        let source: IpAddr = "127.0.0.3".parse().unwrap();
        assert_eq!(dial_and_accept(Some(source)).await.ip(), source);
        let default = dial_and_accept(None).await;
        assert_eq!(default.ip(), "127.0.0.1".parse::<IpAddr>().unwrap(), "no source: the OS picks");
    }

    #[tokio::test]
    async fn an_unbindable_source_address_is_a_readable_connect_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // TEST-NET-1 (RFC 5737): assigned to no host, so binding it fails.
        let channel = channel(&addr, Some("192.0.2.1".parse().unwrap()), None, None).unwrap();
        let mut req = tonic::Request::new(StatusRequest {});
        req.set_timeout(Duration::from_secs(5));
        let status = AdminClient::new(channel).status(req).await.expect_err("cannot bind 192.0.2.1");
        assert_eq!(status.code(), tonic::Code::Unavailable, "a connect failure: {status:?}");
        let text = status_text(&status);
        assert!(
            text.contains("bind") && text.contains("Cannot assign requested address"),
            "the error names the step and the OS's reason: {text}"
        );
    }
}
