//! The `Raft` service: openraft's peer RPCs, bincode inside `RaftMessage.payload`; the status
//! and join calls nodes make of each other (the same as Admin's, without credentials: whoever
//! reaches the peer port can call them, as they can send peer messages, until peer TLS closes
//! that, issue 17); and the client requests members forward to the leader, which are handed to
//! the `Sql` and `Admin` services on the client runtime with the client's own credentials.
//!
//! A payload that does not decode is refused with `InvalidArgument` and never reaches openraft;
//! one that decodes is checked by `raft::peer_check` first (sender, receiver, incarnations,
//! cluster, terms, shape) and refused with `PermissionDenied` and the reason when it fails.
//!
//! Snapshots are verified as they arrive: the chunks of one snapshot stream feed
//! `store::verify_snapshot` on a blocking thread, and the last chunk reaches openraft only when
//! the whole file passed (format, records, count, checksum, header matching the message). A
//! chunk that does not continue a stream seen from offset 0 is refused too, so openraft never
//! installs bytes that were not checked: a failed install stops its core for good.
//! The reply payload is a bincode `Result<Response, RaftError>`, decoded by `raft::network`.

use crate::raft::peer_check::{Envelope, Local, Refused};
use crate::raft::Core;
use crate::typ::{NodeId, TypeConfig};
use bincode::Options;
use openraft::raft::InstallSnapshotRequest;
use raftsql_proto::v1 as pb;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::Arc;

/// Every message is handled on the Raft runtime (`Core::raft_runtime`, see
/// `node::Runtimes`): the gRPC server that received it runs with client work, but decoding,
/// checking and openraft's answer do not wait behind clients.
pub struct PeerService(Arc<Handler>);

struct Handler {
    core: Arc<Core>,
    /// Where forwarded client requests go: the same handlers clients call.
    sql: Arc<super::sql::SqlService>,
    admin: Arc<super::admin::AdminService>,
    /// The snapshot being received and verified, if any (one at a time: a node has one leader).
    incoming: tokio::sync::Mutex<Option<Incoming>>,
}

type Reply = Result<tonic::Response<pb::RaftMessage>, tonic::Status>;

impl PeerService {
    pub fn new(
        core: Arc<Core>,
        sql: Arc<super::sql::SqlService>,
        admin: Arc<super::admin::AdminService>,
    ) -> Self {
        PeerService(Arc::new(Handler { core, sql, admin, incoming: Default::default() }))
    }

    /// Runs a forwarded client request's handler on the client runtime, marked forwarded so the
    /// leader never forwards it again.
    async fn on_client_runtime<T, R, F, Fut>(
        &self,
        mut request: tonic::Request<T>,
        handle: F,
    ) -> Result<R, tonic::Status>
    where
        F: FnOnce(Arc<Handler>, tonic::Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<R, tonic::Status>> + Send + 'static,
        R: Send + 'static,
    {
        check_peer(&self.0.core, &request, None)?;
        request.metadata_mut().insert(super::FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        // The connection is the forwarding node's: its certificate names a node, not the
        // client. The client's user comes from the forwarder's word, which counts only when
        // that node proved who it is (peer TLS).
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        if let Some(info) = request.extensions_mut().remove::<TlsConnectInfo<TcpConnectInfo>>() {
            request.extensions_mut().insert(info.get_ref().clone());
        }
        let vouched = request.metadata_mut().remove(super::auth::CERT_USER_HEADER);
        if let Some(user) = vouched.filter(|_| self.0.core.peer_tls().is_some()) {
            if let Ok(user) = user.to_str() {
                request.extensions_mut().insert(super::auth::CertUser(user.to_string()));
            }
        }
        let task = handle(self.0.clone(), request);
        match self.0.core.client_runtime().spawn(task).await {
            Ok(reply) => reply,
            Err(e) => Err(tonic::Status::unavailable(format!("this node is shutting down ({e}): retry"))),
        }
    }

    async fn on_raft_runtime<F, Fut>(&self, handle: F) -> Reply
    where
        F: FnOnce(Arc<Handler>) -> Fut,
        Fut: std::future::Future<Output = Reply> + Send + 'static,
    {
        let task = handle(self.0.clone());
        match self.0.core.raft_runtime().spawn(task).await {
            Ok(reply) => reply,
            Err(e) => Err(tonic::Status::unavailable(format!("this node is shutting down ({e}): retry"))),
        }
    }
}

impl Handler {
    /// Feeds a snapshot chunk to the verifier of its stream; on the last chunk, waits for the
    /// verdict. Err: the chunk must not reach openraft.
    async fn verify_chunk(
        &self,
        env: &Envelope,
        rpc: &InstallSnapshotRequest<TypeConfig>,
    ) -> Result<(), Refused> {
        let refuse = |reason: String| Refused { me: self.core.id(), reason };
        let id = &rpc.meta.snapshot_id;
        let mut incoming = self.incoming.lock().await;
        if rpc.offset == 0 {
            // A new stream replaces any unfinished one (its verifier sees the end and stops).
            *incoming = Some(Incoming::start(env.from, rpc));
        }
        let Some(stream) = incoming.as_mut().filter(|s| s.from == env.from && s.snapshot_id == *id) else {
            return Err(refuse(format!(
                "snapshot chunk at offset {} of {id} from node {} does not continue a snapshot this \
                 node received from its start",
                rpc.offset, env.from
            )));
        };
        let len = rpc.data.len() as u64;
        if rpc.offset == stream.next_offset {
            let fed = rpc.data.is_empty() || stream.tx.send(rpc.data.clone()).await.is_ok();
            stream.next_offset += len;
            stream.last = Some((rpc.offset, len));
            if !fed {
                // The verifier stopped early: it found something wrong.
                let stream = incoming.take().expect("matched above");
                let e = stream.verdict().await.err().unwrap_or_else(|| "it goes on after its end".into());
                return Err(refuse(format!("snapshot {id} is refused: {e}")));
            }
        } else if stream.last != Some((rpc.offset, len)) {
            // (A resend of the last chunk, after a lost reply, was fed already and passes.)
            return Err(refuse(format!(
                "snapshot chunk at offset {} of {id} does not follow the {} bytes received",
                rpc.offset, stream.next_offset
            )));
        }
        if rpc.done {
            let stream = incoming.take().expect("matched above");
            let records =
                stream.verdict().await.map_err(|e| refuse(format!("snapshot {id} is refused: {e}")))?;
            tracing::info!(snapshot_id = %id, from = env.from, records, "received snapshot verified");
        }
        Ok(())
    }
}

/// One snapshot stream being received: its chunks go to a verifier on a blocking thread.
struct Incoming {
    from: NodeId,
    snapshot_id: String,
    next_offset: u64,
    /// Offset and length of the last chunk fed.
    last: Option<(u64, u64)>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    verdict: tokio::task::JoinHandle<Result<u64, crate::store::Error>>,
}

impl Incoming {
    fn start(from: NodeId, rpc: &InstallSnapshotRequest<TypeConfig>) -> Incoming {
        // Two chunks in flight at most: the verifier keeps up with the network or slows it.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let meta = rpc.meta.clone();
        let verdict = tokio::task::spawn_blocking(move || {
            crate::store::verify_snapshot(ChunkReader { rx, buf: Vec::new(), pos: 0 }, Some(&meta))
        });
        Incoming { from, snapshot_id: rpc.meta.snapshot_id.clone(), next_offset: 0, last: None, tx, verdict }
    }

    /// Ends the stream and waits for the verifier's answer.
    async fn verdict(self) -> Result<u64, String> {
        drop(self.tx);
        match self.verdict.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("its verifier failed: {e}")),
        }
    }
}

/// Reads the chunks of a snapshot stream as one byte stream (end: the sender was dropped).
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => (self.buf, self.pos) = (chunk, 0),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// With peer TLS on, the caller's certificate (verified against the peer CA in the handshake)
/// must name node `claimed`, or, when `None`, some node: a certificate of node 2 cannot speak
/// as node 3, and a client certificate from the same CA speaks for no node.
fn check_peer<T>(core: &Core, req: &tonic::Request<T>, claimed: Option<NodeId>) -> Result<(), tonic::Status> {
    let Some(tls) = &core.peer_tls() else { return Ok(()) };
    let certs = req.peer_certs().unwrap_or_default();
    let ok = match claimed {
        Some(id) => tls.peer_is(&certs, id),
        None => tls.peer_node(&certs).is_some(),
    };
    if ok {
        return Ok(());
    }
    let who = match tls.peer_node(&certs) {
        Some(id) => format!("the certificate of node {id}"),
        None if certs.is_empty() => "a caller without a certificate".to_string(),
        None => "a certificate that names no node".to_string(),
    };
    let what = match claimed {
        Some(id) => format!("speak for node {id}"),
        None => "call the peer service".to_string(),
    };
    Err(refused(Refused {
        me: core.id(),
        reason: format!(
            "{who} (from {}) may not {what}",
            req.remote_addr().map_or_else(|| "an unknown address".to_string(), |a| a.to_string())
        ),
    }))
}

fn decode<T: DeserializeOwned>(
    core: &Core,
    req: tonic::Request<pb::RaftMessage>,
    what: &str,
) -> Result<(Envelope, T), tonic::Status> {
    check_peer(core, &req, Some(req.get_ref().from))?;
    let m = req.into_inner();
    let rpc = decode_payload(&m.payload, what)?;
    let env = Envelope {
        cluster_id: m.cluster_id,
        from: m.from,
        to: m.to,
        from_incarnation: m.from_incarnation,
        to_incarnation: m.to_incarnation,
    };
    Ok((env, rpc))
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
    // One line a second at most: a refused sender retries at its heartbeat rate, for as long as
    // the operator takes to act.
    static LAST: crate::throttle::LogThrottle = crate::throttle::LogThrottle::new();
    if let Some(suppressed) = LAST.allow() {
        tracing::warn!(error = %r, suppressed, "peer message refused");
    }
    tonic::Status::permission_denied(r.to_string())
}

fn encode<T: Serialize>(reply: &T) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
    let payload = bincode::serialize(reply).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(pb::RaftMessage { payload, ..Default::default() }))
}

impl Handler {
    async fn append_entries(&self, request: tonic::Request<pb::RaftMessage>) -> Reply {
        let (env, rpc) = decode(&self.core, request, "AppendEntries")?;
        Local::of(&self.core).append_entries(&env, &rpc).map_err(refused)?;
        crate::stats::append_entries_received(!rpc.entries.is_empty());
        encode(&self.core.append_entries(rpc).await)
    }

    async fn vote(&self, request: tonic::Request<pb::RaftMessage>) -> Reply {
        let (env, rpc) = decode(&self.core, request, "Vote")?;
        Local::of(&self.core).vote(&env, &rpc).map_err(refused)?;
        encode(&self.core.vote(rpc).await)
    }

    async fn install_snapshot(&self, request: tonic::Request<pb::RaftMessage>) -> Reply {
        let (env, rpc) = decode(&self.core, request, "InstallSnapshot")?;
        Local::of(&self.core).install_snapshot(&env, &rpc).map_err(refused)?;
        self.verify_chunk(&env, &rpc).await.map_err(refused)?;
        encode(&self.core.install_snapshot(rpc).await)
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for PeerService {
    async fn append_entries(&self, request: tonic::Request<pb::RaftMessage>) -> Reply {
        self.on_raft_runtime(|h| async move { h.append_entries(request).await }).await
    }

    async fn vote(&self, request: tonic::Request<pb::RaftMessage>) -> Reply {
        self.on_raft_runtime(|h| async move { h.vote(request).await }).await
    }

    async fn install_snapshot(&self, request: tonic::Request<pb::RaftMessage>) -> Reply {
        self.on_raft_runtime(|h| async move { h.install_snapshot(request).await }).await
    }

    async fn status(
        &self,
        request: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::StatusResponse>, tonic::Status> {
        check_peer(&self.0.core, &request, None)?;
        Ok(tonic::Response::new(super::admin::status(&self.0.core)))
    }

    async fn leave(
        &self,
        request: tonic::Request<pb::LeaveRequest>,
    ) -> Result<tonic::Response<pb::RemoveResponse>, tonic::Status> {
        // A node leaves only as itself, also when it forwards its own request to the leader:
        // with peer TLS, the certificate must name the node that leaves.
        let was_forwarded = request.metadata().contains_key(super::FORWARDED);
        check_peer(&self.0.core, &request, Some(request.get_ref().node_id))?;
        super::admin::leave(&self.0.core, request.into_inner(), was_forwarded).await
    }

    async fn join(
        &self,
        request: tonic::Request<pb::JoinRequest>,
    ) -> Result<tonic::Response<pb::JoinResponse>, tonic::Status> {
        // A node joins as itself: with peer TLS, its certificate must name the id it asks for. A
        // join a member forwards to the leader comes with that member's certificate; the member
        // checked the joiner (or the admin's permission, for Admin.Join) already.
        let was_forwarded = request.metadata().contains_key(super::FORWARDED);
        let joiner = (!was_forwarded).then_some(request.get_ref().node_id);
        check_peer(&self.0.core, &request, joiner)?;
        super::admin::join(&self.0.core, request.into_inner(), was_forwarded).await
    }

    async fn forward_execute(
        &self,
        request: tonic::Request<pb::ExecuteRequest>,
    ) -> Result<tonic::Response<pb::ExecuteResponse>, tonic::Status> {
        use pb::sql_server::Sql;
        self.on_client_runtime(request, |h, r| async move { h.sql.execute(r).await }).await
    }

    async fn forward_remove(
        &self,
        request: tonic::Request<pb::RemoveRequest>,
    ) -> Result<tonic::Response<pb::RemoveResponse>, tonic::Status> {
        use pb::admin_server::Admin;
        self.on_client_runtime(request, |h, r| async move { h.admin.remove(r).await }).await
    }

    async fn timeout_now(
        &self,
        request: tonic::Request<pb::TimeoutNowRequest>,
    ) -> Result<tonic::Response<pb::TimeoutNowResponse>, tonic::Status> {
        // With peer TLS, the certificate must name the leader the request claims to come from.
        let from = request.get_ref().from;
        check_peer(&self.0.core, &request, Some(from))?;
        crate::raft::handoff::on_timeout_now(&self.0.core, request.get_ref())
            .await
            .map_err(|e| tonic::Status::failed_precondition(e.to_string()))?;
        Ok(tonic::Response::new(pb::TimeoutNowResponse {}))
    }
}
