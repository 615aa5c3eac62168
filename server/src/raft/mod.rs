//! Raft glue: the peer network, the write sequencer and read routing per consistency level.
//!
//! This layer owns every decision about roles and terms; it calls `sql` to compute results and
//! `store` (through openraft and `StateMachine::read`) to hold data, and never touches sled or
//! parses SQL itself.
//!
//! - [`network`]: openraft's `RaftNetwork` over tonic.
//! - [`sequencer`]: the single task on the leader that evaluates batches of writes into one
//!   `ChangeSet` each, one batch in flight (design.md §3).
//! - [`read`]: serves a query at the level it names (design.md §4).
//! - [`peer_check`]: what every peer message must satisfy before openraft sees it.
//! - [`fail_stop`]: a node whose own store fails stops serving and exits (issue 21).
//!
//! [`Core`] bundles what a running node's services need: the `Raft` handle, the state machine
//! and the sequencer.

pub mod fail_stop;
pub mod handoff;
pub mod membership;
pub mod network;
pub mod peer_check;
pub mod read;
pub mod read_index;
pub mod sequencer;
mod status;

use crate::changeset::StatementOutcome;
use crate::store::StateMachine;
use crate::typ::{NodeId, Raft, RaftMetrics};
use openraft::ServerState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use read::Consistency;

/// Errors of the Raft layer: what a request met besides SQL errors, which travel inside
/// statement outcomes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", not_leader_message(*leader_id, leader_addr.as_deref(), *term))]
    NotLeader { leader_id: Option<NodeId>, leader_addr: Option<String>, term: u64 },
    /// The request may or may not have taken effect: its log entry was proposed but leadership
    /// was lost or the commit did not complete in time. Retry with the same request id.
    #[error(
        "outcome unknown: {reason} (term {term}); retry with the same request id, it will not apply twice"
    )]
    Indeterminate { reason: String, leader_id: Option<NodeId>, leader_addr: Option<String>, term: u64 },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// This node has as many requests in flight as it admits (`--max-inflight-requests`):
    /// shed, not queued. Retry after a short pause, here or at another node.
    #[error("overloaded: {0}")]
    Overloaded(String),
    #[error("bad session token: {0}")]
    Token(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// What the request names does not exist (e.g. a node that is not a member).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request is well formed but the cluster is not in a state to take it now (e.g. a
    /// removal that would leave too few reachable voters); the message says what to do.
    #[error("refused: {0}")]
    Precondition(String),
    #[error(transparent)]
    Sql(#[from] crate::sql::Error),
    #[error("storage failure on this node: {0}")]
    Storage(#[from] crate::store::Error),
}

fn not_leader_message(leader_id: Option<NodeId>, addr: Option<&str>, term: u64) -> String {
    match (leader_id, addr) {
        (Some(id), Some(addr)) => format!("not the leader: node {id} ({addr}) leads term {term}"),
        (Some(id), None) => format!("not the leader: node {id} leads term {term}"),
        _ => format!("not the leader, and no leader is known in term {term}: retry shortly"),
    }
}

/// A node's role as clients see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl From<ServerState> for Role {
    fn from(s: ServerState) -> Self {
        match s {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        }
    }
}

/// Where and when a request was served (design.md §3 step 4, §4).
#[derive(Clone, Debug, PartialEq)]
pub struct Receipt {
    pub node_id: NodeId,
    pub role: Role,
    pub term: u64,
    /// Writes: the index of the entry that carried the write. Reads: the applied index the read
    /// was served at.
    pub index: u64,
    pub level: Consistency,
    pub applied_index: u64,
    /// `"{cluster_id}.{index}"`, empty while the cluster id is not known yet.
    pub session_token: String,
}

/// The result of a write request.
#[derive(Debug)]
pub struct WriteReply {
    pub outcomes: Vec<StatementOutcome>,
    pub receipt: Receipt,
}

/// Timeouts and limits of request handling.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long a write may wait for its entry to commit and apply.
    pub write_timeout: Duration,
    /// How long a read may wait for leadership confirmation or apply.
    pub read_timeout: Duration,
    /// How long a READ_YOUR_WRITES read waits for this replica to catch up before it is sent
    /// to the leader.
    pub ryw_wait: Duration,
    /// The largest query result (encoded bytes, estimated) a read may return.
    pub max_result_bytes: usize,
    /// The largest batch the sequencer evaluates into one entry (requests).
    pub max_batch_requests: usize,
    /// Entries the leader may have proposed and not yet applied (`--write-pipeline-depth`):
    /// the next batch is evaluated over them while they replicate. 1 evaluates a batch only
    /// once the previous entry has applied.
    pub write_pipeline_depth: usize,
    /// A follower forwards writes to the leader instead of answering NOT_LEADER.
    pub forward_writes: bool,
    /// Added to this node's wall clock wherever raftsql reads it (`NOW()`, `CURRENT_TIMESTAMP`):
    /// `--clock-offset-ms`, for tests that skew one node's clock. Zero in production.
    pub clock_offset_ms: i64,
    /// How long one read may evaluate (`--query-timeout`); the caller's deadline may cut it
    /// shorter.
    pub query_timeout: Duration,
    /// How long the leader may evaluate one write request (`--write-eval-timeout`).
    pub write_eval_timeout: Duration,
    /// Working memory of one statement, estimated bytes (`--max-query-memory`).
    pub max_query_memory: usize,
    /// Rows one write request may insert, update or delete (`--max-rows-per-request`).
    pub max_rows_per_request: u64,
    /// The largest log entry the sequencer proposes, in encoded bytes (`--max-entry-bytes`).
    pub max_entry_bytes: u64,
    /// The most row changes plus statement results in one log entry (`--max-entry-rows`).
    pub max_entry_rows: u64,
    /// Client requests (Execute and Query) one node serves at once (`--max-inflight-requests`).
    pub max_inflight: usize,
    /// SQL bytes, statements and parameters of one request, checked before evaluation.
    pub request_limits: crate::sql::RequestLimits,
    /// The node's memory for evaluations and unread results (`--max-node-memory`), shared.
    pub memory: std::sync::Arc<crate::sql::MemoryPool>,
    /// Paused while this leader hands leadership over (`handoff`): the sequencer proposes
    /// nothing more and refuses writes with UNAVAILABLE, so the log stops growing. Shared by
    /// every clone.
    pub writes: handoff::WritePause,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            write_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(5),
            ryw_wait: Duration::from_millis(200),
            max_result_bytes: 64 << 20,
            max_batch_requests: 512,
            write_pipeline_depth: 1,
            forward_writes: false,
            clock_offset_ms: 0,
            query_timeout: Duration::from_secs(30),
            write_eval_timeout: Duration::from_secs(5),
            max_query_memory: crate::sql::limits::DEFAULT_MAX_MEMORY,
            max_rows_per_request: 1_000_000,
            max_entry_bytes: 8 << 20,
            max_entry_rows: 1_000_000,
            max_inflight: 512,
            request_limits: crate::sql::RequestLimits::default(),
            memory: crate::sql::MemoryPool::new(crate::sql::limits::DEFAULT_NODE_MEMORY),
            writes: Default::default(),
        }
    }
}

/// Everything a running node's services need: the raft layer's one facade. Its fields are
/// private to `raft/`; `service/` and `node/` use its methods (`Core::new` builds it).
pub struct Core {
    id: NodeId,
    /// The address clients reach this node at.
    addr: String,
    /// The address other nodes reach this node at (`--peer-advertise`; `addr` in single-port
    /// mode).
    peer_addr: String,
    raft: Raft,
    sm: StateMachine,
    /// The committed index openraft last told the log store (its metrics do not publish it).
    committed: crate::store::CommittedIndex,
    sequencer: sequencer::Sequencer,
    /// Batched leadership confirmation for STRONG reads and read-only writes.
    read_index: read_index::ReadIndex,
    options: Options,
    /// When this node last accepted an AppendEntries from a leader, for BOUNDED reads
    /// (milliseconds on this process's monotonic clock, `monotonic_millis`; 0 = never).
    last_leader_contact: Arc<AtomicU64>,
    /// When this node saw its last log index reach each value, for replication lag in time.
    append_times: AppendTimes,
    /// The local IP every connection to another node is bound to (`--peer-source-addr`).
    peer_source: Option<std::net::IpAddr>,
    /// Peer TLS (`--peer-tls-*`), if on: every connection to another node presents this node's
    /// certificate, and every peer message must come with a certificate naming its sender.
    peer_tls: Option<Arc<crate::tls::Tls>>,
    /// Client requests being served now, bounded by `Options::max_inflight` ([`Core::admit`]).
    inflight: Arc<tokio::sync::Semaphore>,
    /// Reads running on the client runtime's blocking threads, bounded by
    /// [`crate::node::MAX_LONG_READS`] so that the sequencer, password checks and backups always
    /// find one of those threads (`read::query`).
    long_reads: Arc<tokio::sync::Semaphore>,
    /// Reads waiting for one of those turns now.
    long_reads_waiting: std::sync::atomic::AtomicUsize,
    /// The runtime client work runs on (see [`crate::node::Runtimes`]): the peer service moves
    /// the client requests other members forward to this node there.
    client_runtime: tokio::runtime::Handle,
    /// The runtime openraft's core, replication and apply run on, apart from client work (see
    /// [`crate::node::Runtimes`]); the peer service handles messages there too.
    raft_runtime: tokio::runtime::Handle,
    /// Tripped when this node's store fails a read: it then serves nothing and exits.
    fail_stop: fail_stop::FailStop,
}

/// What a node's [`Core`] is built from (`node::run` assembles them).
pub struct CoreParts {
    pub id: NodeId,
    pub addr: String,
    pub peer_addr: String,
    pub raft: Raft,
    pub sm: StateMachine,
    pub committed: crate::store::CommittedIndex,
    pub sequencer: sequencer::Sequencer,
    pub read_index: read_index::ReadIndex,
    pub options: Options,
    pub peer_source: Option<std::net::IpAddr>,
    pub peer_tls: Option<Arc<crate::tls::Tls>>,
    pub client_runtime: tokio::runtime::Handle,
    pub raft_runtime: tokio::runtime::Handle,
    /// The same one the sequencer was given.
    pub fail_stop: fail_stop::FailStop,
}

impl Core {
    /// Builds the facade and starts following the log's growth (replication lag in time).
    pub fn new(p: CoreParts) -> Arc<Core> {
        let max_inflight = p.options.max_inflight.max(1);
        let core = Arc::new(Core {
            id: p.id,
            addr: p.addr,
            peer_addr: p.peer_addr,
            raft: p.raft,
            sm: p.sm,
            committed: p.committed,
            sequencer: p.sequencer,
            read_index: p.read_index,
            options: p.options,
            last_leader_contact: Default::default(),
            append_times: Default::default(),
            peer_source: p.peer_source,
            peer_tls: p.peer_tls,
            inflight: Arc::new(tokio::sync::Semaphore::new(max_inflight)),
            long_reads: Arc::new(tokio::sync::Semaphore::new(crate::node::MAX_LONG_READS)),
            long_reads_waiting: Default::default(),
            client_runtime: p.client_runtime,
            raft_runtime: p.raft_runtime,
            fail_stop: p.fail_stop,
        });
        core.append_times.follow(core.raft.clone());
        core
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address clients reach this node at.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The address other nodes reach this node at.
    pub fn peer_addr(&self) -> &str {
        &self.peer_addr
    }

    pub fn sm(&self) -> &StateMachine {
        &self.sm
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The committed index openraft last told the log store (its metrics do not publish it).
    pub fn committed_index(&self) -> u64 {
        self.committed.get()
    }

    /// STRONG reads served by batched confirmation, and the confirmation rounds they took.
    pub fn read_index_stats(&self) -> (u64, u64, u64) {
        (self.read_index.reads(), self.read_index.rounds(), self.read_index.leased())
    }

    /// Milliseconds since the log reached `matched + 1`, while it is at `last`: a follower's lag
    /// in time.
    pub fn lag_millis(&self, matched: u64, last: u64) -> u64 {
        self.append_times.lag_millis(matched, last)
    }

    /// Submits a write to the sequencer and waits for its outcome.
    pub async fn write(&self, request: sequencer::WriteRequest) -> Result<WriteReply, Error> {
        self.sequencer.write(request).await
    }

    /// Client requests being served now.
    pub fn inflight_now(&self) -> usize {
        self.options.max_inflight.saturating_sub(self.inflight.available_permits())
    }

    /// Reads running on blocking threads now, and reads waiting for a turn to
    /// (`node::MAX_LONG_READS`).
    pub fn long_reads_now(&self) -> (usize, usize) {
        let running = crate::node::MAX_LONG_READS.saturating_sub(self.long_reads.available_permits());
        (running, self.long_reads_waiting.load(Ordering::Relaxed))
    }

    /// Peer TLS, if on.
    pub fn peer_tls(&self) -> Option<&Arc<crate::tls::Tls>> {
        self.peer_tls.as_ref()
    }

    /// The runtime client work runs on ([`crate::node::Runtimes`]).
    pub fn client_runtime(&self) -> &tokio::runtime::Handle {
        &self.client_runtime
    }

    /// The runtime openraft and peer messages run on ([`crate::node::Runtimes`]).
    pub fn raft_runtime(&self) -> &tokio::runtime::Handle {
        &self.raft_runtime
    }

    /// Founds the cluster with `members` (openraft's `initialize`).
    pub async fn initialize(
        &self,
        members: std::collections::BTreeMap<NodeId, crate::typ::Member>,
    ) -> Result<
        (),
        openraft::error::RaftError<NodeId, openraft::error::InitializeError<NodeId, crate::typ::Member>>,
    > {
        self.raft.initialize(members).await
    }
}

/// The pause suggested to a client whose request was shed (`retry-after-ms` in the reply).
pub const RETRY_AFTER_MS: u64 = 100;

/// When the local log reached each index (sampled from openraft's metrics), bounded to the most
/// recent `CAPACITY` samples: how long ago the oldest entry a follower lacks was appended is its
/// lag in time, as PostgreSQL's `pg_stat_replication` reports it.
#[derive(Clone, Default)]
pub struct AppendTimes(Arc<std::sync::Mutex<std::collections::VecDeque<(u64, std::time::Instant)>>>);

impl AppendTimes {
    const CAPACITY: usize = 4096;

    /// Records that the log reached `index` now (ignored unless it grew).
    pub fn record(&self, index: u64) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.back().is_some_and(|(i, _)| *i >= index) {
            if q.back().is_some_and(|(i, _)| *i > index) {
                q.clear(); // the log was truncated (a new leader): start over
            } else {
                return;
            }
        }
        q.push_back((index, std::time::Instant::now()));
        if q.len() > Self::CAPACITY {
            q.pop_front();
        }
    }

    /// Milliseconds since the first index after `matched` was appended; 0 when `matched` is at
    /// least `last`. With no sample that old, the oldest sample is used (a lower bound).
    pub fn lag_millis(&self, matched: u64, last: u64) -> u64 {
        if matched >= last {
            return 0;
        }
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = q.iter().find(|(i, _)| *i > matched).or(q.front()).map(|(_, t)| *t);
        at.map_or(0, |t| t.elapsed().as_millis() as u64)
    }

    /// Samples the log's growth for as long as Raft runs.
    pub fn follow(&self, raft: Raft) {
        let times = self.clone();
        tokio::spawn(async move {
            // The data metrics change only when a value in them does; the full metrics are
            // sent on every turn of the core's loop.
            let mut rx = raft.data_metrics();
            loop {
                let last = rx.borrow_and_update().last_log.map(|l| l.index);
                if let Some(i) = last {
                    times.record(i);
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

impl Core {
    /// A copy of openraft's metrics (membership, replication and all: it allocates). Per
    /// request, read what is needed through [`Core::with_metrics`] instead.
    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// `f` of openraft's current metrics, without copying them. `f` runs under the metrics'
    /// read lock, which openraft's core waits for to publish: keep it short.
    pub fn with_metrics<R>(&self, f: impl FnOnce(&RaftMetrics) -> R) -> R {
        f(&self.raft.metrics().borrow())
    }

    /// A lazily connected channel to another node at `addr`, from this node's peer source
    /// address ([`network::channel`]).
    pub fn peer_channel(&self, addr: &str) -> Result<raftsql_proto::channel::Channel, String> {
        network::channel(addr, self.peer_source, self.peer_tls.as_ref(), None)
    }

    /// Asks the node at `addr` for its status (`Raft.Status`, the peer service: nodes hold no
    /// client credentials), within `timeout`; `Err` says why nothing usable answered. With peer
    /// TLS and `expect`, the node must present a certificate naming node `expect`.
    pub async fn status_of(
        &self,
        addr: &str,
        timeout: Duration,
        expect: Option<NodeId>,
    ) -> Result<raftsql_proto::v1::StatusResponse, String> {
        use raftsql_proto::v1 as pb;
        let channel = network::channel(addr, self.peer_source, self.peer_tls.as_ref(), expect)
            .map_err(|e| format!("{addr:?} cannot be dialed: {e}"))?;
        let mut client = pb::raft_client::RaftClient::new(channel);
        let mut req = tonic::Request::new(pb::StatusRequest {});
        req.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.status(req)).await {
            Err(_) => Err(format!("nothing answered at {addr} within {timeout:?}")),
            Ok(Err(s)) => {
                Err(format!("{addr} did not answer a status call: {}", crate::raft::network::status_text(&s)))
            }
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    /// Where other nodes reach member `id` (its peer address), if it is a member.
    pub fn peer_addr_of(&self, id: NodeId) -> Option<String> {
        self.metrics().membership_config.membership().get_node(&id).map(|n| n.peer_addr.clone())
    }

    /// Whether this node leads now, by its server state: the one test of it for everything
    /// that must run on the leader (membership changes, forwarding). Not `current_leader ==
    /// self`: a leader that removed itself keeps its vote, and so names itself leader, after
    /// it stepped down.
    pub fn is_leader(&self) -> bool {
        self.with_metrics(|m| m.state == openraft::ServerState::Leader)
    }

    /// The NotLeader error as this node knows it now.
    pub fn not_leader(&self) -> Error {
        let m = self.metrics();
        let leader_addr = m
            .current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
        Error::NotLeader { leader_id: m.current_leader, leader_addr, term: m.current_term }
    }

    /// Admits one client request, or sheds it when `Options::max_inflight` are being served
    /// already: beyond that, requests would only queue, hold memory and time out, and a queue
    /// of thousands starves heartbeats and apply of the CPU. The permit is held until the
    /// request's answer has been produced.
    pub fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        self.inflight.clone().try_acquire_owned().map_err(|_| {
            Error::Overloaded(format!(
                "node {} is serving {} requests already (--max-inflight-requests): retry in about {} ms, \
                 or at another node",
                self.id, self.options.max_inflight, RETRY_AFTER_MS
            ))
        })
    }

    /// Refuses `min_replicas = k` when the cluster has fewer than `k` members, before anything
    /// is proposed (it used to be refused only after the write had been applied).
    pub fn check_min_replicas(&self, k: usize) -> Result<(), Error> {
        let members = self.metrics().membership_config.membership().nodes().count();
        if k > members {
            return Err(Error::InvalidArgument(format!(
                "min_replicas {k} is more than the {members} members of the cluster; nothing was applied"
            )));
        }
        Ok(())
    }

    /// A node whose Raft core has stopped (a storage failure shuts it down to prevent further
    /// damage) must not keep answering from its frozen state as if it were a replica.
    /// A node whose store failed (`fail_stop`) serves nothing either, from the moment it knows:
    /// also when the failure was met where no request was waiting on it (a backup's copy).
    pub fn ensure_running(&self) -> Result<(), Error> {
        if let Some(cause) = self.sm.storage_fault() {
            return Err(self.fail_stop.trip(&cause));
        }
        if let Some(e) = self.fail_stop.error() {
            return Err(e);
        }
        match &self.raft.metrics().borrow().running_state {
            Ok(()) => Ok(()),
            Err(fatal) => Err(Error::Unavailable(format!(
                "node {}'s Raft core has stopped ({fatal}): it serves nothing until it is restarted; \
                 read its log for the cause",
                self.id
            ))),
        }
    }

    /// `e`, unless it is this node's storage failing: then the node stops serving and exits
    /// ([`fail_stop`]), and the caller is answered `UNAVAILABLE` saying so.
    pub fn storage_checked(&self, e: Error) -> Error {
        self.fail_stop.check(e, self.sm.storage_fault())
    }

    /// This node's fail-stop: why its store failed, once it has.
    pub fn fail_stop(&self) -> &fail_stop::FailStop {
        &self.fail_stop
    }

    /// Waits until `k` nodes (this one included) report `index` applied, polling the other
    /// members' status (at their peer addresses); returns how many did, or, after `timeout`, a `Timeout` that says so.
    pub async fn wait_replicas(&self, index: u64, k: usize, timeout: Duration) -> Result<usize, Error> {
        let members: Vec<(NodeId, String)> = {
            let m = self.metrics();
            m.membership_config.membership().nodes().map(|(id, n)| (*id, n.peer_addr.clone())).collect()
        };
        if k > members.len() {
            return Err(Error::InvalidArgument(format!(
                "min_replicas {k} is more than the {} members of the cluster",
                members.len()
            )));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut done: std::collections::BTreeSet<NodeId> = std::collections::BTreeSet::new();
        loop {
            if self.sm.applied_index().unwrap_or(0) >= index {
                done.insert(self.id);
            }
            let pending: Vec<&(NodeId, String)> =
                members.iter().filter(|(id, _)| !done.contains(id) && *id != self.id).collect();
            for (id, addr) in pending {
                // The peer service: nodes hold no client credentials (--users-file).
                let Ok(channel) = self.peer_channel(addr) else { continue };
                let mut client = raftsql_proto::v1::raft_client::RaftClient::new(channel);
                let mut req = tonic::Request::new(raftsql_proto::v1::StatusRequest {});
                req.set_timeout(Duration::from_millis(500));
                if client.status(req).await.is_ok_and(|s| s.into_inner().applied_index >= index) {
                    done.insert(*id);
                }
            }
            if done.len() >= k {
                return Ok(done.len());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "the write (index {index}) is committed, but only {} of the {k} requested nodes applied it \
                     within {timeout:?}",
                    done.len(),
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Which of `nodes` (id, peer address) answer a status call within `timeout` now; this
    /// node counts without asking.
    pub async fn answering(&self, nodes: &[(NodeId, String)], timeout: Duration) -> Vec<NodeId> {
        let probes = nodes.iter().map(|(id, addr)| async move {
            if *id == self.id {
                return Some(*id);
            }
            let channel = self.peer_channel(addr).ok()?;
            let mut client = raftsql_proto::v1::raft_client::RaftClient::new(channel);
            let mut req = tonic::Request::new(raftsql_proto::v1::StatusRequest {});
            req.set_timeout(timeout);
            let ok = tokio::time::timeout(timeout, client.status(req)).await.is_ok_and(|r| r.is_ok());
            ok.then_some(*id)
        });
        futures::future::join_all(probes).await.into_iter().flatten().collect()
    }

    /// The longest a leader may go without hearing from a quorum and still count as ready:
    /// two maximal election timeouts (by then the followers have elected another leader).
    pub fn quorum_ack_limit_ms(&self) -> u64 {
        2 * self.raft.config().election_timeout_max
    }

    /// openraft's metrics as they change (readiness, `/metrics`).
    pub fn metrics_watch(&self) -> tokio::sync::watch::Receiver<RaftMetrics> {
        self.raft.metrics()
    }

    /// Hands a peer's AppendEntries (checked by `peer_check`) to openraft; an accepted one
    /// counts as contact with the leader (BOUNDED reads).
    pub async fn append_entries(
        &self,
        rpc: openraft::raft::AppendEntriesRequest<crate::typ::TypeConfig>,
    ) -> Result<openraft::raft::AppendEntriesResponse<NodeId>, openraft::error::RaftError<NodeId>> {
        let reply = self.raft.append_entries(rpc).await;
        if let Ok(openraft::raft::AppendEntriesResponse::Success) = reply {
            self.touch_leader_contact();
        }
        reply
    }

    /// Hands a peer's vote request (checked by `peer_check`) to openraft.
    pub async fn vote(
        &self,
        rpc: openraft::raft::VoteRequest<NodeId>,
    ) -> Result<openraft::raft::VoteResponse<NodeId>, openraft::error::RaftError<NodeId>> {
        self.raft.vote(rpc).await
    }

    /// Hands a snapshot chunk (checked by `peer_check`, and verified whole before the last one
    /// passes) to openraft.
    pub async fn install_snapshot(
        &self,
        rpc: openraft::raft::InstallSnapshotRequest<crate::typ::TypeConfig>,
    ) -> Result<
        openraft::raft::InstallSnapshotResponse<NodeId>,
        openraft::error::RaftError<NodeId, openraft::error::InstallSnapshotError>,
    > {
        self.raft.install_snapshot(rpc).await
    }

    /// Builds a snapshot now (which purges the log behind it) and returns its index, waiting at
    /// most `timeout` for it.
    pub async fn snapshot_now(&self, timeout: Duration) -> Result<u64, Error> {
        let applied = self.metrics().last_applied.map(|l| l.index);
        self.raft.trigger().snapshot().await.map_err(|e| Error::Unavailable(e.to_string()))?;
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.snapshot.map(|s| s.index) >= applied, "snapshot built")
            .await
            .map_err(|e| Error::Timeout(format!("snapshot not built: {e}")))?;
        Ok(m.snapshot.map_or(0, |l| l.index))
    }

    /// Records that a leader's AppendEntries was accepted just now.
    pub fn touch_leader_contact(&self) {
        self.last_leader_contact.store(monotonic_millis(), Ordering::Relaxed);
    }

    pub fn receipt(&self, index: u64, level: Consistency) -> Receipt {
        let (state, term) = self.with_metrics(|m| (m.state, m.current_term));
        Receipt {
            node_id: self.id,
            role: state.into(),
            term,
            index,
            level,
            // The state machine's own applied index: openraft's metrics trail it, and a read is
            // served at (and its token names) the state machine's index.
            applied_index: self.sm.applied_index().unwrap_or(0).max(index),
            session_token: session_token(&self.sm, index),
        }
    }
}

/// The session token of `index` in this node's cluster (empty before the cluster id is known).
pub(crate) fn session_token(sm: &StateMachine, index: u64) -> String {
    match sm.cluster_id() {
        Ok(Some(cluster_id)) => read::SessionToken::encode(&cluster_id, index),
        _ => String::new(),
    }
}

/// This node's wall clock in unix milliseconds, shifted by `offset_ms` (`--clock-offset-ms`):
/// the one place raftsql reads the time of day. Staleness and timeouts use monotonic clocks.
pub(crate) fn wall_clock_millis(offset_ms: i64) -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    now.saturating_add(offset_ms)
}

/// Milliseconds since this process first asked, never 0 and never going back: wall-clock
/// steps (NTP, an operator, a skewed node) do not change how stale a replica looks.
pub(crate) fn monotonic_millis() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| std::time::Instant::now() - Duration::from_millis(1));
    start.elapsed().as_millis() as u64
}

#[cfg(test)]
mod append_times_tests {
    use super::AppendTimes;

    #[test]
    fn lag_is_the_age_of_the_oldest_missing_entry() {
        let t = AppendTimes::default();
        assert_eq!(t.lag_millis(0, 0), 0);
        t.record(1);
        std::thread::sleep(std::time::Duration::from_millis(30));
        t.record(2);
        t.record(2); // no growth, no new sample
        assert_eq!(t.lag_millis(2, 2), 0, "caught up");
        let behind_two = t.lag_millis(0, 2);
        let behind_one = t.lag_millis(1, 2);
        assert!(behind_two >= 30, "{behind_two}");
        assert!(behind_one < behind_two, "{behind_one} vs {behind_two}");
        // A shorter log (truncated under a new leader) starts the samples over.
        t.record(1);
        assert!(t.lag_millis(0, 1) < 30);
    }
}
