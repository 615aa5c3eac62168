//! Node configuration, start-up and shutdown (design.md §7).
//!
//! Start-up: open the store (which refuses another node's data dir), start openraft, the
//! sequencer and the gRPC server, then — only on a node that has no Raft state yet —
//! either bootstrap or join:
//! - `--bootstrap "1=h:p,2=h:p,3=h:p"` (or `1=CLIENT/PEER,...` with peer ports): the lowest
//!   listed id initializes the cluster once every listed member answers; the others wait to be
//!   contacted. All members get the same flag.
//! - `--join h:p` (a member's peer address): ask any member to add this node (forwarded to the
//!   leader), which adds it as a
//!   learner, waits until it has caught up (snapshot + log) and promotes it to voter — unless
//!   `--learner` asks it to stay a read replica that never votes.
//!
//! - `--statefulset-replicas N`: StatefulSet identity (`statefulset`): the id and addresses come
//!   from the hostname (`raftsql-2` is node 3), and the node founds the cluster with the other
//!   ordinals below N, or joins it, by itself. One configuration serves every pod.
//!
//! A restart needs only `--id`, `--listen` (and `--peer-listen`) and `--data-dir`: the
//! membership is in the log.
//!
//! Ports: with `--peer-listen`, peers (the `Raft` service) are served on their own listener,
//! by a second tonic server on the Raft runtime, and the client port serves only `Sql` and
//! `Admin`; without it (single-port mode, fine on one host) one port serves all three.
//! `--peer-source-addr IP` binds every connection this node opens to another node (including
//! the join and bootstrap calls here) to that local IP (see `raft::network`).
//! SIGTERM or SIGINT: hand leadership over (a leader), stop accepting, answer the requests in
//! flight for up to [`DRAIN`] (then cut them off), shut openraft down, flush sled, exit 0.
//!
//! Threads ([`Runtimes`]): client work and Raft work run on separate tokio runtimes, and the
//! client runtime's threads run at a lower scheduling priority, so however busy clients keep
//! the CPUs, heartbeats, votes and appends are handled first.
//!
//! Health and metrics: the client port also serves the gRPC health service and server
//! reflection (`service::health`); `--http HOST:PORT` adds a plain HTTP port on the Raft
//! runtime for probes and Prometheus (`service::http`: `/healthz`, `/readyz`, `/metrics`).
//!
//! Settings: flags, then `RAFTSQL_*` environment, then `--config FILE` (TOML; `config_file`).
//!
//! On SIGTERM a leader first hands leadership to its most caught-up voter
//! (`raft::handoff`, at most `--handoff-timeout-ms`), so writes pause for about a round trip
//! instead of an election timeout.

use crate::raft::network::{Network, MAX_PEER_MESSAGE};
use crate::raft::sequencer::Sequencer;
use crate::raft::{Core, CoreParts, Options};
use crate::service::health;
use crate::service::http::Http;
use crate::service::metrics::Metrics;
use crate::service::{admin::AdminService, peer::PeerService, sql::SqlService, sql::MAX_CLIENT_MESSAGE};
use crate::store;
use crate::tls;
use crate::typ::{Member, NodeId, Raft};
use anyhow::{bail, Context};
use openraft::SnapshotPolicy;
use raftsql_proto::v1 as pb;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn, Instrument};

pub mod config_file;
pub mod kube;
mod statefulset;
pub use statefulset::parse_hostname;

/// Command line of `raftsql-server`; every flag can also come from `RAFTSQL_<FLAG>`.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "raftsql-server", version, about = "A raftsql node: Raft-replicated SQL on sled")]
pub struct Config {
    /// Settings from a TOML file, one key per flag (`listen = "0.0.0.0:7000"`); the command
    /// line and the RAFTSQL_* environment take precedence over it (docs/operations.md).
    #[arg(long, env = "RAFTSQL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id (>= 1), unique in the cluster and fixed for the life of its data dir
    /// (with --statefulset-replicas: the pod ordinal + 1, and optional).
    #[arg(long, env = "RAFTSQL_ID", required_unless_present = "statefulset_replicas")]
    pub id: Option<NodeId>,
    /// Address to listen on for clients (and for peers, unless --peer-listen), HOST:PORT.
    #[arg(long, env = "RAFTSQL_LISTEN")]
    pub listen: String,
    /// Address clients (and, without --peer-listen, other nodes) reach this node at (default:
    /// --listen).
    #[arg(long, env = "RAFTSQL_ADVERTISE")]
    pub advertise: Option<String>,
    /// Address to listen on for other nodes (Raft), HOST:PORT. Without it, peers share the
    /// client port, and whoever reaches that port can send peer messages (docs/security.md).
    #[arg(long, env = "RAFTSQL_PEER_LISTEN")]
    pub peer_listen: Option<String>,
    /// Address other nodes reach this node's peer listener at (default: --peer-listen).
    #[arg(long, env = "RAFTSQL_PEER_ADVERTISE", requires = "peer_listen")]
    pub peer_advertise: Option<String>,
    /// Local IP address every connection to another node is bound to (default: chosen by the
    /// OS). For multi-homed hosts; applies to peers of the same address family.
    #[arg(long, env = "RAFTSQL_PEER_SOURCE_ADDR", value_name = "IP")]
    pub peer_source_addr: Option<std::net::IpAddr>,
    /// Directory holding this node's data (created if missing).
    #[arg(long, env = "RAFTSQL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Initial members "ID=HOST:PORT,..." or, for nodes with peer ports,
    /// "ID=CLIENT_HOST:PORT/PEER_HOST:PORT,..." (first start only; every initial member gets the
    /// same list).
    #[arg(long, env = "RAFTSQL_BOOTSTRAP")]
    pub bootstrap: Option<String>,
    /// Join an existing cluster through any member's peer address, HOST:PORT (first start only).
    #[arg(long, env = "RAFTSQL_JOIN")]
    pub join: Option<String>,
    /// With --join (or a scaled-up StatefulSet pod): stay a learner (a read replica that never
    /// votes and never leads).
    #[arg(long, env = "RAFTSQL_LEARNER")]
    pub learner: bool,
    /// StatefulSet identity: the StatefulSet's initial replica count. The node id comes from
    /// the hostname's ordinal (+ 1), addresses from --statefulset-host-template; on first start
    /// ordinals below the count found the cluster together and higher ones join it
    /// (deploy/README.md). Replaces --id, --advertise, --bootstrap and --join.
    #[arg(long, env = "RAFTSQL_STATEFULSET_REPLICAS", value_name = "N")]
    pub statefulset_replicas: Option<u64>,
    /// With --statefulset-replicas: every pod's host name, `{name}` standing for a pod name such
    /// as raftsql-1 (`{ordinal}` for its number). Ports are those of --listen and --peer-listen.
    #[arg(
        long,
        env = "RAFTSQL_STATEFULSET_HOST_TEMPLATE",
        value_name = "TEMPLATE",
        default_value = "{name}"
    )]
    pub statefulset_host_template: String,
    /// With --statefulset-replicas: this pod's name, NAME-ORDINAL (default: the system's
    /// hostname).
    #[arg(long, env = "RAFTSQL_HOSTNAME")]
    pub hostname: Option<String>,
    /// FOR TESTS ONLY: with --statefulset-replicas, pod names mapped straight to addresses,
    /// "NAME=HOST:PORT[/PEER_HOST:PORT],..." instead of the host template.
    #[arg(long, env = "RAFTSQL_STATEFULSET_TEST_ADDRS", hide = true)]
    pub statefulset_test_addrs: Option<String>,
    /// Build a snapshot (and purge the log behind it) every this many entries.
    #[arg(long, env = "RAFTSQL_SNAPSHOT_THRESHOLD", default_value_t = 10_000)]
    pub snapshot_threshold: u64,
    /// Entries kept behind a snapshot, so briefly lagging followers catch up from the log.
    #[arg(long, env = "RAFTSQL_SNAPSHOT_KEEP_LOGS", default_value_t = 1_000)]
    pub snapshot_keep_logs: u64,
    /// Largest chunk a snapshot is sent in, bytes (bounded by the peer message limit).
    #[arg(long, env = "RAFTSQL_SNAPSHOT_CHUNK_BYTES", default_value_t = 4 << 20)]
    pub snapshot_chunk_bytes: u64,
    /// Leader heartbeat interval, milliseconds.
    #[arg(long, env = "RAFTSQL_HEARTBEAT_MS", default_value_t = 150)]
    pub heartbeat_ms: u64,
    /// Minimum election timeout, milliseconds (the maximum is twice this).
    #[arg(long, env = "RAFTSQL_ELECTION_TIMEOUT_MS", default_value_t = 1_000)]
    pub election_timeout_ms: u64,
    /// How long after a quorum last acknowledged it the leader serves STRONG reads without a
    /// heartbeat round, milliseconds; at most --election-timeout-ms (the default), which is
    /// half of how long followers refuse to elect another leader after hearing from it. Safe
    /// while the nodes' monotonic clocks run at rates less than 2x apart (docs/architecture.md);
    /// 0 = confirm every batch of STRONG reads with a heartbeat round.
    #[arg(long, env = "RAFTSQL_READ_LEASE_MS")]
    pub read_lease_ms: Option<u64>,
    /// Bytes of sled's page cache (rows, indexes and log entries read recently; sled counts it
    /// approximately). sled's own default is 1 GiB.
    #[arg(long, env = "RAFTSQL_CACHE_BYTES", default_value_t = crate::store::DEFAULT_CACHE_BYTES)]
    pub cache_bytes: u64,
    /// Bytes of the cache of parsed statement texts (`sql::parse_cache`): the estimate of their
    /// syntax trees plus the texts; texts over 2 KiB are never kept. 0 = parse every statement.
    #[arg(long, env = "RAFTSQL_PARSE_CACHE_BYTES", default_value_t = crate::sql::parse_cache::DEFAULT_BYTES)]
    pub parse_cache_bytes: u64,
    /// Bytes of bound query plans each thread that runs reads keeps (`sql::plan_cache`), by
    /// estimate; a plan is kept for its text and the schema it was bound against. 0 = bind every
    /// query.
    #[arg(long, env = "RAFTSQL_PLAN_CACHE_BYTES", default_value_t = crate::sql::plan_cache::DEFAULT_BYTES)]
    pub plan_cache_bytes: u64,
    /// sled's background flush interval in ms; 0 = only explicit fsyncs persist anything.
    #[arg(long, env = "RAFTSQL_FLUSH_EVERY_MS", default_value_t = 500)]
    pub flush_every_ms: u64,
    /// Forward writes that reach a follower to the leader (default: answer NOT_LEADER and let
    /// the client library redirect).
    #[arg(long, env = "RAFTSQL_FORWARD_WRITES")]
    pub forward_writes: bool,
    /// Largest query result a read may return, in bytes.
    #[arg(long, env = "RAFTSQL_MAX_RESULT_BYTES", default_value_t = 64 << 20)]
    pub max_result_bytes: usize,
    /// How long one read may evaluate, milliseconds; a caller's shorter gRPC deadline wins.
    /// A read past it (or whose caller went away) is stopped with DEADLINE_EXCEEDED.
    #[arg(long, env = "RAFTSQL_QUERY_TIMEOUT_MS", default_value_t = 30_000)]
    pub query_timeout_ms: u64,
    /// Log entries the leader may have proposed and not yet applied. Above 1, the next batch
    /// of writes is evaluated over the entries in flight while they replicate (a pipelined
    /// write path); the bytes in flight are also bounded, by --max-entry-bytes. 1 (the
    /// default) evaluates a batch once the previous entry has applied, which gathers more
    /// requests per entry: openraft replicates one AppendEntries at a time per follower, so
    /// more entries only pay where evaluating a batch takes long (docs/performance.md).
    #[arg(long, env = "RAFTSQL_WRITE_PIPELINE_DEPTH", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub write_pipeline_depth: u64,
    /// How long the leader may evaluate one write request, milliseconds. A request past it is
    /// answered with DEADLINE_EXCEEDED and nothing of it is proposed.
    #[arg(long, env = "RAFTSQL_WRITE_EVAL_TIMEOUT_MS", default_value_t = 5_000)]
    pub write_eval_timeout_ms: u64,
    /// Working memory one statement may use (rows materialized by scans, joins, sorts,
    /// GROUP BY, DISTINCT, subqueries; strings built), estimated bytes.
    #[arg(long, env = "RAFTSQL_MAX_QUERY_MEMORY", default_value_t = crate::sql::limits::DEFAULT_MAX_MEMORY)]
    pub max_query_memory: usize,
    /// Memory all of this node's evaluations (their working memory, as --max-query-memory
    /// counts it) and the query results waiting for their readers may hold together, estimated
    /// bytes. Past it, requests are refused with RESOURCE_EXHAUSTED until memory is free again.
    #[arg(long, env = "RAFTSQL_MAX_NODE_MEMORY", default_value_t = crate::sql::limits::DEFAULT_NODE_MEMORY)]
    pub max_node_memory: usize,
    /// Bytes of SQL text one request may carry.
    #[arg(long, env = "RAFTSQL_MAX_SQL_BYTES", default_value_t = crate::sql::limits::DEFAULT_MAX_SQL_BYTES)]
    pub max_sql_bytes: usize,
    /// Statements one request may hold.
    #[arg(long, env = "RAFTSQL_MAX_STATEMENTS", default_value_t = crate::sql::limits::DEFAULT_MAX_STATEMENTS)]
    pub max_statements: usize,
    /// Parameters one statement may be given.
    #[arg(long, env = "RAFTSQL_MAX_PARAMS", default_value_t = crate::sql::limits::DEFAULT_MAX_PARAMS)]
    pub max_params: usize,
    /// Rows one write request may insert, update or delete.
    #[arg(long, env = "RAFTSQL_MAX_ROWS_PER_REQUEST", default_value_t = 1_000_000)]
    pub max_rows_per_request: u64,
    /// Largest log entry the leader proposes, in encoded bytes: a write whose changes would
    /// exceed it is refused before it is proposed (a batch of several writes is split instead).
    /// openraft (patched: vendor/openraft/PATCHES.md) gives an AppendEntries carrying entries
    /// the election timeout to arrive, and an entry travels whole, so an entry must cross the
    /// network and reach the follower's disk in that time: 8 MiB needs ~10 MB/s at the default
    /// 1 s; keep it well under what the slowest link carries.
    #[arg(long, env = "RAFTSQL_MAX_ENTRY_BYTES", default_value_t = 8 << 20)]
    pub max_entry_bytes: u64,
    /// Most row changes plus statement results one log entry carries (a single-row INSERT is
    /// two); enforced like --max-entry-bytes. Applying an entry holds reads on every node back
    /// until it is done, so this bounds that pause.
    #[arg(long, env = "RAFTSQL_MAX_ENTRY_ROWS", default_value_t = 1_000_000)]
    pub max_entry_rows: u64,
    /// Client requests (Execute and Query) this node serves at once; more are refused with
    /// RESOURCE_EXHAUSTED and a `retry-after-ms` hint instead of queueing. Peer traffic is not
    /// counted. With --max-sql-bytes this bounds the memory requests can hold.
    #[arg(long, env = "RAFTSQL_MAX_INFLIGHT_REQUESTS", default_value_t = 512)]
    pub max_inflight_requests: usize,
    /// FOR TESTS ONLY: shift this node's wall clock by this many milliseconds (may be negative)
    /// wherever raftsql reads the time of day: `NOW()`/`CURRENT_TIMESTAMP` in writes this node
    /// evaluates as leader and in reads it serves. Timeouts, elections and staleness use
    /// monotonic clocks and are not affected. The nemesis's clock-skew schedule uses it.
    #[arg(long, env = "RAFTSQL_CLOCK_OFFSET_MS", default_value_t = 0, allow_hyphen_values = true)]
    pub clock_offset_ms: i64,
    /// Users who may call this node, with their password hashes, tokens and permissions (TOML;
    /// see docs/security.md). Re-read when it changes. Without it, anyone who reaches the port
    /// may do everything.
    #[arg(long, env = "RAFTSQL_USERS_FILE", value_name = "PATH")]
    pub users_file: Option<PathBuf>,
    /// TLS on the client port: this node's certificate chain (PEM). Re-read when it changes.
    #[arg(long, env = "RAFTSQL_TLS_CERT", value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS on the client port: the private key of --tls-cert (PEM).
    #[arg(long, env = "RAFTSQL_TLS_KEY", value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With --tls-cert: the CA whose client certificates are accepted (optional for clients; a
    /// certificate's first DNS name is the user it authenticates, docs/security.md).
    #[arg(long, env = "RAFTSQL_TLS_CA", value_name = "PATH", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS on the peer port (needs --peer-listen): this node's certificate, whose DNS
    /// names must include `node-<ID>.<DOMAIN>` (--peer-tls-domain). Re-read when it changes.
    #[arg(long, env = "RAFTSQL_PEER_TLS_CERT", value_name = "PATH", requires_all = ["peer_tls_key", "peer_tls_ca", "peer_listen"])]
    pub peer_tls_cert: Option<PathBuf>,
    /// The private key of --peer-tls-cert (PEM).
    #[arg(long, env = "RAFTSQL_PEER_TLS_KEY", value_name = "PATH", requires = "peer_tls_cert")]
    pub peer_tls_key: Option<PathBuf>,
    /// The cluster CA: every node must present a certificate it signed.
    #[arg(long, env = "RAFTSQL_PEER_TLS_CA", value_name = "PATH", requires = "peer_tls_cert")]
    pub peer_tls_ca: Option<PathBuf>,
    /// The domain of node names in peer certificates: node N is `node-N.<DOMAIN>`.
    #[arg(long, env = "RAFTSQL_PEER_TLS_DOMAIN", value_name = "DOMAIN", default_value = "raftsql")]
    pub peer_tls_domain: String,
    /// Address of a plain HTTP port for probes and Prometheus, HOST:PORT: `/healthz`, `/readyz`,
    /// `/metrics`. No TLS and no authentication: reachable only by the probes and the scraper
    /// (docs/security.md). Off without it.
    #[arg(long, env = "RAFTSQL_HTTP", value_name = "HOST:PORT")]
    pub http: Option<String>,
    /// On SIGTERM, a leader first hands leadership to its most caught-up voter (writes pause
    /// for about a round trip instead of an election timeout), for at most this many
    /// milliseconds; 0 = exit without handing over.
    #[arg(long, env = "RAFTSQL_HANDOFF_TIMEOUT_MS", default_value_t = 3_000)]
    pub handoff_timeout_ms: u64,
    /// With --statefulset-replicas: the Kubernetes API a pod asks, on SIGTERM, how many
    /// replicas its StatefulSet wants; when this pod's ordinal is no longer among them (a
    /// scale-down), the node leaves the cluster before it exits. Default:
    /// https://KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT; without it, or without a
    /// ServiceAccount token, a scale-down needs `.remove ID` by hand.
    #[arg(long, env = "RAFTSQL_KUBE_API", value_name = "https://HOST:PORT")]
    pub kube_api: Option<String>,
    /// With --statefulset-replicas: the directory holding the ServiceAccount `token`, `ca.crt`
    /// and `namespace` used for --kube-api.
    #[arg(long, env = "RAFTSQL_KUBE_SA_DIR", default_value = kube::DEFAULT_SA_DIR)]
    pub kube_sa_dir: PathBuf,
    /// Readiness (gRPC health "readiness", `/readyz`) needs the applied index within this many
    /// entries of the committed index, besides a known leader.
    #[arg(long, env = "RAFTSQL_READY_MAX_LAG", default_value_t = 1_000)]
    pub ready_max_lag: u64,
}

/// A member as `--bootstrap` lists it: its client address and its peer address (the same in
/// single-port mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub addr: String,
    pub peer_addr: String,
}

/// Parses `"1=h:p,2=h:p"` (or `"1=client:p/peer:p,..."`) into ids and addresses.
pub fn parse_members(s: &str) -> anyhow::Result<BTreeMap<NodeId, Listed>> {
    let mut members = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addrs) = part.split_once('=').with_context(|| {
            format!("bad --bootstrap member {part:?}: expected ID=HOST:PORT or ID=CLIENT_HOST:PORT/PEER_HOST:PORT")
        })?;
        let id: NodeId = id.trim().parse().with_context(|| format!("bad node id {id:?} in --bootstrap"))?;
        if id == 0 {
            bail!("node ids start at 1 (--bootstrap lists 0)");
        }
        let (addr, peer_addr) = addrs.split_once('/').unwrap_or((addrs, addrs));
        for a in [addr, peer_addr] {
            if !a.contains(':') {
                bail!("bad address {a:?} for node {id} in --bootstrap: expected HOST:PORT");
            }
        }
        let listed = Listed { addr: addr.trim().to_string(), peer_addr: peer_addr.trim().to_string() };
        if members.insert(id, listed).is_some() {
            bail!("node {id} is listed twice in --bootstrap");
        }
    }
    if members.is_empty() {
        bail!("--bootstrap lists no members");
    }
    Ok(members)
}

/// Runs a node until SIGTERM/SIGINT.
/// How much lower (in nice steps, Linux) the client runtime's threads run than Raft's.
pub const CLIENT_NICE: i32 = 5;

/// How long a leader holds back a heartbeat that would only tell a follower a new committed
/// index, waiting for entries to carry it (`openraft::Config::commit_piggyback_us`, a raftsql
/// patch). Followers learn of a commit at most this much later when no write follows it.
pub const COMMIT_PIGGYBACK_US: u64 = 2_000;

/// The node's two tokio runtimes.
///
/// - `raft` (threads "raft", two workers, the process's own priority): start-up, openraft's
///   core and replication, apply, snapshots, the store's flusher thread (started from it, so it
///   inherits its priority), the watchdog, the handling of every peer message (the peer
///   service moves each one here before decoding it), the readiness watch and the HTTP side
///   port (`--http`), so probes are answered however busy clients keep the other runtime.
/// - `client` (threads "client", one worker per CPU, nice +[`CLIENT_NICE`]): the gRPC server,
///   SQL evaluation for reads and for the sequencer, and result streams. Its threads carry large
///   stacks (`sql::STACK_BYTES`) for evaluation.
///
/// A separate runtime keeps client tasks from delaying Raft's on a shared worker; the lower
/// priority keeps client threads (evaluation runs on blocking threads, several at once) from
/// taking the CPUs from Raft's under load. Both runtimes see the same process; neither is a
/// hard reservation. (Issue 17's separate peer listener will be served from `raft` as well.)
pub struct Runtimes {
    raft: tokio::runtime::Runtime,
    client: tokio::runtime::Runtime,
}

/// Threads the client runtime runs blocking work on (reads and batches longer than the inline
/// slice, reads that met an apply, password checks, backups); more such work waits for one.
/// tokio's default (512) let a thousand clients keep over 400 threads busy on the leader
/// (robustness::a_thousand_clients_are_served_or_shed_and_the_leader_keeps_its_role), each
/// with its stack and allocator heap, on two cores that run two at a time.
pub const MAX_BLOCKING_THREADS: usize = 64;

/// Of the [`MAX_BLOCKING_THREADS`], the most that reads may take at once (`raft::read`); a read
/// that needs a thread beyond them waits for a turn without one. The rest are kept for the
/// sequencer's batches (one at a time), password checks (`service::auth::MAX_VERIFYING`) and
/// backups (one at a time), which would otherwise queue behind reads that run for up to
/// `--query-timeout-ms`.
pub const MAX_LONG_READS: usize = MAX_BLOCKING_THREADS - 16;

impl Runtimes {
    pub fn new() -> std::io::Result<Runtimes> {
        let raft = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("raft")
            .enable_all()
            .build()?;
        let client = tokio::runtime::Builder::new_multi_thread()
            .thread_name("client")
            // SQL parsing, planning and evaluation recurse with the nesting of a statement
            // (bounded by `sql::MAX_NESTING`); large stacks keep the deepest statement we accept
            // far from overflow.
            .thread_stack_size(crate::sql::STACK_BYTES)
            .max_blocking_threads(MAX_BLOCKING_THREADS)
            .on_thread_start(lower_this_threads_priority)
            .enable_all()
            .build()?;
        Ok(Runtimes { raft, client })
    }

    /// Runs the node until SIGTERM/SIGINT or a fatal error, then stops both runtimes.
    pub fn run(self, cfg: Config) -> anyhow::Result<()> {
        let result = self.raft.block_on(run(cfg, self.client.handle().clone()));
        self.client.shutdown_timeout(Duration::from_secs(1));
        self.raft.shutdown_timeout(Duration::from_secs(1));
        result
    }
}

/// Lowers the calling thread's scheduling priority by [`CLIENT_NICE`] (Linux; elsewhere, and if
/// the call fails, the thread keeps its priority: a preference, not a requirement).
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid, getpriority and setpriority act on this thread's own scheduling value and
    // touch no memory of ours; errno is thread-local.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        // -1 is a valid nice value: errno alone tells a failure.
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if *libc::__errno_location() == 0 {
            libc::setpriority(libc::PRIO_PROCESS, tid, (now + CLIENT_NICE).min(19));
        }
    }
}

/// Runs the node on the current (Raft) runtime; client work goes to `client`.
async fn run(cfg: Config, client: tokio::runtime::Handle) -> anyhow::Result<()> {
    let (cfg, plan) = statefulset::apply(cfg)?;
    let scale_down = match &plan {
        Some(p) => ScaleDown::new(&p.name, &cfg)?,
        None => None,
    };
    let id = cfg.id.context("--id is missing")?;
    if id == 0 {
        bail!("--id must be at least 1");
    }
    // Before anything parses SQL; a process runs one node, and a second configuration (tests
    // that run nodes in one process) keeps the first, which is harmless: parses depend on the
    // text alone.
    crate::sql::parse_cache::configure(cfg.parse_cache_bytes);
    crate::sql::plan_cache::configure(cfg.plan_cache_bytes);
    if let Some(lease) = cfg.read_lease_ms.filter(|l| *l > cfg.election_timeout_ms) {
        bail!(
            "--read-lease-ms {lease} is above --election-timeout-ms {}: followers refuse to elect another \
             leader for twice the election timeout after they last heard from this one, and the lease \
             must stay within half of that to allow for clocks that run at different rates. Lower \
             --read-lease-ms, raise --election-timeout-ms, or give 0 to confirm every STRONG read \
             with a heartbeat round",
            cfg.election_timeout_ms
        );
    }
    if cfg.learner && cfg.join.is_none() && plan.is_none() {
        bail!("--learner applies to a node that joins: give --join HOST:PORT too");
    }
    let members = cfg.bootstrap.as_deref().map(parse_members).transpose()?;
    if let Some(m) = &members {
        if !m.contains_key(&id) {
            bail!("--bootstrap does not list this node's id {}", id);
        }
        if cfg.join.is_some() {
            bail!("--bootstrap and --join exclude each other: a node either founds a cluster or joins one");
        }
    }
    let addr = cfg.advertise.clone().unwrap_or_else(|| cfg.listen.clone());
    if addr.starts_with("0.0.0.0:") || addr.starts_with("[::]:") {
        bail!(
            "--listen {} is a wildcard address: pass --advertise HOST:PORT so peers can reach this node",
            cfg.listen
        );
    }
    let peer_addr = match &cfg.peer_listen {
        None => addr.clone(),
        Some(l) => cfg.peer_advertise.clone().unwrap_or_else(|| l.clone()),
    };
    if peer_addr.starts_with("0.0.0.0:") || peer_addr.starts_with("[::]:") {
        bail!("--peer-listen {peer_addr} is a wildcard address: pass --peer-advertise HOST:PORT so peers can reach this node");
    }
    if cfg.peer_listen.is_some() && peer_addr == addr {
        bail!("--peer-listen must differ from --listen (the peer port is a port of its own)");
    }
    let span = tracing::info_span!("node", node_id = id);
    async move {
        let auth = match &cfg.users_file {
            Some(path) => crate::service::auth::Auth::from_file(path).map_err(anyhow::Error::msg)?,
            None => crate::service::auth::Auth::open(),
        };
        let client_tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => Some(
                tls::Tls::load(
                    tls::Files { cert: cert.clone(), key: key.clone(), ca: cfg.tls_ca.clone() },
                    tls::Port::Client,
                )
                .map_err(|e| anyhow::anyhow!("client TLS: {e}"))?,
            ),
            _ => None,
        };
        let peer_tls = match (&cfg.peer_tls_cert, &cfg.peer_tls_key) {
            (Some(cert), Some(key)) => Some(
                tls::Tls::load(
                    tls::Files { cert: cert.clone(), key: key.clone(), ca: cfg.peer_tls_ca.clone() },
                    tls::Port::Peer { domain: cfg.peer_tls_domain.clone(), node: id },
                )
                .map_err(|e| anyhow::anyhow!("peer TLS: {e}"))?,
            ),
            _ => None,
        };
        for t in client_tls.iter().chain(peer_tls.iter()) {
            t.watch();
        }
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let peer_listener = match &cfg.peer_listen {
            Some(l) => Some(
                tokio::net::TcpListener::bind(l).await.with_context(|| format!("cannot listen for peers on {l}"))?,
            ),
            None => None,
        };
        let http_listener = match &cfg.http {
            Some(h) => Some(
                tokio::net::TcpListener::bind(h)
                    .await
                    .with_context(|| format!("cannot listen for HTTP (--http) on {h}"))?,
            ),
            None => None,
        };
        let flush_every = (cfg.flush_every_ms > 0).then(|| Duration::from_millis(cfg.flush_every_ms));
        let used_before = store::was_claimed(&cfg.data_dir);
        let (log, sm) =
            store::open(&store::Options {
                data_dir: cfg.data_dir.clone(),
                node_id: id,
                flush_every,
                cache_bytes: cfg.cache_bytes,
            })?;
        let has_state = log.has_state()?;
        if !has_state && used_before && members.is_none() && cfg.join.is_none() {
            // (In StatefulSet mode too: a claimed dir with no state is damage, not a new pod.)
            // sled comes up empty on a database it cannot read at all (seen with two bytes
            // overwritten near the start of its file).
            bail!(
                "data dir {} was used by node {} before, but its database holds no Raft state: it \
                 was lost or is corrupt. This node cannot rejoin as itself: remove it (`.remove {}`), \
                 wipe the data dir and join again with --join HOST:PORT under a new --id",
                cfg.data_dir.display(),
                id,
                id
            );
        }
        if !has_state && members.is_none() && cfg.join.is_none() && plan.is_none() {
            // Waiting to be added would let a node whose data dir was lost come back as its old
            // self: its peers would take its empty log for the one it had, and count its votes
            // and acknowledgements (etcd refuses this the same way).
            bail!(
                "data dir {} holds no Raft state and neither --bootstrap nor --join was given. A new \
                 node joins with --join HOST:PORT (any member); a node whose data was lost must be \
                 removed (`.remove {}`) and join again under a new --id; a new cluster starts with \
                 --bootstrap",
                cfg.data_dir.display(),
                id
            );
        }
        let raft_config = openraft::Config {
            cluster_name: "raftsql".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_ms,
            election_timeout_max: cfg.election_timeout_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_threshold.max(1)),
            max_in_snapshot_log_to_keep: cfg.snapshot_keep_logs,
            max_payload_entries: 256,
            // A commit is told to followers by the next entries when they come within 2 ms,
            // not by a heartbeat of its own that the next entries would wait behind
            // (vendor/openraft/PATCHES.md; docs/performance.md, "openraft settings").
            commit_piggyback_us: COMMIT_PIGGYBACK_US,
            snapshot_max_chunk_size: cfg.snapshot_chunk_bytes.clamp(1, (MAX_PEER_MESSAGE / 2) as u64),
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .context("invalid Raft timing configuration")?;
        let committed = log.committed_index();
        let raft = Raft::new(
            id,
            Arc::new(raft_config),
            Network::new(id, cfg.peer_source_addr, sm.clone(), peer_tls.clone()),
            log,
            sm.clone(),
        )
        .await
        .context("starting Raft")?;
        let options = Options {
            max_result_bytes: cfg.max_result_bytes,
            forward_writes: cfg.forward_writes,
            clock_offset_ms: cfg.clock_offset_ms,
            query_timeout: Duration::from_millis(cfg.query_timeout_ms.max(1)),
            write_eval_timeout: Duration::from_millis(cfg.write_eval_timeout_ms.max(1)),
            max_query_memory: cfg.max_query_memory,
            max_rows_per_request: cfg.max_rows_per_request,
            max_entry_bytes: cfg.max_entry_bytes,
            max_entry_rows: cfg.max_entry_rows,
            write_pipeline_depth: cfg.write_pipeline_depth as usize,
            max_inflight: cfg.max_inflight_requests.max(1),
            memory: crate::sql::MemoryPool::new(cfg.max_node_memory),
            request_limits: crate::sql::RequestLimits {
                max_sql_bytes: cfg.max_sql_bytes,
                max_statements: cfg.max_statements,
                max_params: cfg.max_params,
            },
            ..Default::default()
        };
        if cfg.clock_offset_ms != 0 {
            warn!(
                offset_ms = cfg.clock_offset_ms,
                "--clock-offset-ms is set: this node's NOW() is shifted on purpose (a test-only option)"
            );
        }
        if let Some(file) = store::injection_file() {
            warn!(
                file = %file.display(),
                "{} is set: while that file exists, every read of this node's state fails as an I/O \
                 error would, and the node stops (a test-only hook)",
                store::INJECT_ENV
            );
        }
        if let Some(file) = store::hold_fsync_file() {
            warn!(
                file = %file.display(),
                "{} is set: while that file exists, this node's fsyncs wait (a test-only hook)",
                store::HOLD_FSYNC_ENV
            );
        }
        let fail_stop = crate::raft::fail_stop::FailStop::new(id);
        let read_lease = Duration::from_millis(cfg.read_lease_ms.unwrap_or(cfg.election_timeout_ms));
        let read_index = crate::raft::read_index::ReadIndex::new(raft.clone(), options.read_timeout, read_lease);
        let sequencer = {
            let _on_the_client_runtime = client.enter();
            Sequencer::spawn(id, raft.clone(), sm.clone(), read_index.clone(), options.clone(), fail_stop.clone())
        };
        let core = Core::new(CoreParts {
            id,
            addr: addr.clone(),
            peer_addr: peer_addr.clone(),
            raft: raft.clone(),
            sm,
            committed,
            sequencer,
            read_index,
            options,
            peer_source: cfg.peer_source_addr,
            peer_tls: peer_tls.clone(),
            raft_runtime: tokio::runtime::Handle::current(),
            client_runtime: client.clone(),
            fail_stop: fail_stop.clone(),
        });
        crate::watchdog::spawn_probes(raft.clone());
        let _watchdog =
            crate::watchdog::Watchdog::start(Duration::from_secs(1), tokio::runtime::Handle::current())
                .context("starting the watchdog thread")?;
        info!(
            listen = %cfg.listen,
            %addr,
            data_dir = %cfg.data_dir.display(),
            peer_source_addr = ?cfg.peer_source_addr,
            has_state,
            "raftsql node started"
        );

        if !auth.required() {
            warn!(
                listen = %cfg.listen,
                "NO AUTHENTICATION: anyone who can reach {} may read and write every table and change \
                 the membership (Sql, Admin). Fine for local use; elsewhere give --users-file \
                 (docs/security.md)",
                cfg.listen
            );
        }
        match &cfg.peer_listen {
            None => warn!(
                listen = %cfg.listen,
                "SINGLE PORT: peer messages (Raft) are served on the client port {} without \
                 authentication, so whoever reaches it can act as a node. Fine on one host; elsewhere \
                 give --peer-listen and let only the other nodes reach that port (docs/security.md)",
                cfg.listen
            ),
            Some(l) if peer_tls.is_none() => warn!(
                peer_listen = %l,
                "NO PEER TLS: peer messages (Raft) on {l} are not authenticated, so whoever reaches it can \
                 act as a node. Give --peer-tls-cert/--peer-tls-key/--peer-tls-ca, or let only the other \
                 nodes reach that port (docs/security.md)"
            ),
            Some(l) => info!(peer_listen = %l, domain = %cfg.peer_tls_domain, "peer port: mutual TLS, node certificates from --peer-tls-ca"),
        }
        match &client_tls {
            None => warn!(
                listen = %cfg.listen,
                "NO TLS on the client port {}: requests, results and credentials cross the network in \
                 plain text. Give --tls-cert and --tls-key off loopback (docs/security.md)",
                cfg.listen
            ),
            Some(_) => info!(listen = %cfg.listen, client_certificates = cfg.tls_ca.is_some(), "client port: TLS 1.3"),
        }

        if !has_state {
            if let Some(plan) = plan {
                tokio::spawn(statefulset::start(core.clone(), plan, cfg.learner).in_current_span());
            } else if let Some(members) = members {
                tokio::spawn(bootstrap(core.clone(), members).in_current_span());
            } else if let Some(seed) = cfg.join.clone() {
                tokio::spawn(join(core.clone(), vec![seed], cfg.learner, false).in_current_span());
            }
        }

        // Health and metrics: the readiness watch and the HTTP port run here, on the Raft runtime.
        let metrics = Metrics::new(core.clone(), cfg.data_dir.clone());
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        tokio::spawn(
            health::watch(core.clone(), health_reporter, cfg.ready_max_lag, metrics.clone()).in_current_span(),
        );
        if let (Some(listener), Some(h)) = (http_listener, &cfg.http) {
            warn!(
                http = %h,
                "HTTP port {h}: /healthz, /readyz and /metrics in plain text, without authentication. \
                 Let only probes and the metrics scraper reach it (docs/security.md)"
            );
            let state = Arc::new(Http { core: core.clone(), metrics: metrics.clone(), ready_max_lag: cfg.ready_max_lag });
            tokio::spawn(crate::service::http::serve(listener, state).in_current_span());
        }

        let signalled = Arc::new(tokio::sync::Notify::new());
        let sql_service = Arc::new(SqlService { core: core.clone(), auth: auth.clone(), metrics: metrics.clone() });
        let admin_service = Arc::new(AdminService::new(core.clone(), auth.clone()));
        let raft_service = || {
            pb::raft_server::RaftServer::new(PeerService::new(core.clone(), sql_service.clone(), admin_service.clone()))
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE)
        };
        // The peer port, if any: its own server on this (the Raft) runtime. It keeps serving
        // while the client server drains (pending writes still need replicating) and stops
        // just before Raft does.
        let peer_stop = Arc::new(tokio::sync::Notify::new());
        let mut peer_server = peer_listener.map(|l| {
            let stop = peer_stop.clone();
            let router = tonic::transport::Server::builder().add_service(raft_service());
            let stopped = async move { stop.notified().await };
            tokio::spawn(serve(router, l, peer_tls.clone(), stopped).in_current_span())
        });
        let router = tonic::transport::Server::builder()
            .add_service(
                pb::sql_server::SqlServer::from_arc(sql_service.clone())
                    .max_decoding_message_size(MAX_CLIENT_MESSAGE)
                    .max_encoding_message_size(MAX_CLIENT_MESSAGE),
            )
            .add_service(pb::admin_server::AdminServer::from_arc(admin_service.clone()))
            // Health and reflection ask for no credentials: probes and tools hold none.
            .add_service(health_service);
        let router = with_reflection(router, peer_server.is_none())?;
        // Single-port mode: the client port carries the peers too.
        let router = if peer_server.is_none() { router.add_service(raft_service()) } else { router };
        let server = {
            // Client TLS handshakes run on the client runtime, with the rest of client work.
            let _on_the_client_runtime = client.enter();
            let handoff = Duration::from_millis(cfg.handoff_timeout_ms);
            let on_signal = signal_then_drain(signalled.clone(), core.clone(), handoff, scale_down);
            serve(router, listener, client_tls.clone(), on_signal)
        };
        let mut server = client.spawn(server.in_current_span());
        // After the signal the server answers what it has and sends GOAWAY; requests still
        // running after DRAIN (a long read, a stream nobody reads) are cut off, so a node always
        // stops within its grace period.
        let drained = async {
            signalled.notified().await;
            tokio::time::sleep(DRAIN).await;
        };
        let peer_server_ended = async {
            match peer_server.as_mut() {
                Some(task) => task.await,
                None => std::future::pending().await,
            }
        };
        // A Raft core that stopped (a storage failure: a damaged value, a failed write) never
        // recovers in this process, and a node that only answers UNAVAILABLE looks alive to an
        // orchestrator: stop, naming the cause, so the operator (or a restart policy) acts.
        // Watched through the server metrics, which change with the role, the vote or the
        // membership and close when the core ends: the full metrics are sent on every turn of
        // the core's loop, several times per write, and each woke this (the main) thread.
        let core_stopped = async {
            let mut server = raft.server_metrics();
            loop {
                if let Err(fatal) = &raft.metrics().borrow().running_state {
                    return fatal.to_string();
                }
                if server.changed().await.is_err() {
                    return match &raft.metrics().borrow().running_state {
                        Err(fatal) => fatal.to_string(),
                        Ok(()) => "its metrics channel closed".to_string(),
                    };
                }
            }
        };
        let mut fatal = None;
        tokio::select! {
            // This node's store failed a read (`raft::fail_stop`): a leader hands leadership to
            // a caught-up voter (a round trip, at most a second; it proposes nothing meanwhile),
            // else the others elect one after an election timeout; Raft stops, so the node
            // proposes, heartbeats and votes no more; the answers already decided
            // (UNAVAILABLE, saying why) get up to a second to reach their callers; then the
            // node exits non-zero for its supervisor to restart it.
            cause = fail_stop.tripped() => {
                error!(%cause, "local storage failed: shutting down so that the node is restarted");
                hand_off(&core, Duration::from_millis(cfg.handoff_timeout_ms).min(Duration::from_secs(1))).await;
                if let Err(e) = raft.shutdown().await {
                    warn!(error = %e, "Raft did not shut down cleanly");
                }
                let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                while core.inflight_now() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                server.abort();
                fatal = Some(format!(
                    "local storage failed ({cause}): check the disk and the log above, then restart \
                     the node; it recovers from its log and catches up from the others"
                ));
            }
            served = &mut server => served.context("the gRPC server task failed")?.context("gRPC server failed")?,
            stopped = core_stopped => {
                error!(cause = %stopped, "the Raft core stopped: this node cannot go on");
                server.abort();
                fatal = Some(stopped);
            }
            () = drained => {
                warn!(drain = ?DRAIN, "requests were still running after the drain period: cutting them off");
                server.abort();
            }
            ended = peer_server_ended => {
                server.abort();
                ended.context("the peer server task failed")?.context("the peer server failed")?;
                bail!("the peer server stopped on its own");
            }
        }
        if let Some(task) = peer_server {
            peer_stop.notify_one();
            if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
                warn!("the peer server did not stop within 2 s: leaving it behind");
            }
        }

        info!("shutting down");
        if let Err(e) = raft.shutdown().await {
            warn!(error = %e, "Raft did not shut down cleanly");
        }
        let flushed = core.sm().flush().context("flushing the store on shutdown");
        if let Some(cause) = fatal {
            // The store may be what failed: the cause is the line to end with.
            if let Err(e) = flushed {
                warn!(error = %e, "flushing the store on shutdown failed");
            }
            if fail_stop.cause().is_some() {
                bail!("{cause}");
            }
            bail!("the Raft core stopped: {cause}");
        }
        flushed?;
        info!("stopped; data flushed");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Adds gRPC server reflection (both versions tools ask for) to `router`, so grpcurl and the
/// like work without the .proto files: it lists the services the client port serves (`Raft`
/// only in single-port mode) and describes their messages.
fn with_reflection(
    router: tonic::transport::server::Router,
    single_port: bool,
) -> anyhow::Result<tonic::transport::server::Router> {
    let mut names = vec!["raftsql.v1.Sql", "raftsql.v1.Admin", "grpc.health.v1.Health"];
    if single_port {
        names.push("raftsql.v1.Raft");
    }
    let builder = || {
        let b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(raftsql_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        names.iter().fold(b, |b, n| b.with_service_name(*n))
    };
    let v1 = builder()
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .build_v1()
        .context("building the reflection service")?;
    let v1alpha = builder()
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
        .build_v1alpha()
        .context("building the reflection service")?;
    Ok(router.add_service(v1).add_service(v1alpha))
}

/// Serves `router` on `listener` until `stop`, through TLS when `tls` is given.
fn serve(
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tls::Tls>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>> {
    match tls {
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(tls::incoming(listener, tls), stop)),
        // Nagle off: a small reply (a row, a heartbeat ack) must not wait for the peer's delayed
        // ACK. Serving from a plain listener stream would silently keep it on.
        None => Box::pin(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop,
        )),
    }
}

/// How long a stopping node keeps serving the requests it has before cutting them off.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Resolves at SIGTERM or SIGINT, after telling `signalled` and, on a leader, handing
/// leadership over (bounded by `handoff`; zero: not at all). The client port keeps serving
/// meanwhile: writes are refused UNAVAILABLE and retried by clients, and reach the new leader.
async fn signal_then_drain(
    signalled: Arc<tokio::sync::Notify>,
    core: Arc<Core>,
    handoff: Duration,
    scale_down: Option<ScaleDown>,
) {
    shutdown_signal().await;
    signalled.notify_one();
    let leaving = match &scale_down {
        Some(s) => s.scaled_away().await,
        None => false,
    };
    hand_off(&core, handoff).await;
    if leaving {
        leave(&core).await;
    }
}

/// What a StatefulSet pod needs to tell a scale-down from a restart at SIGTERM (`node::kube`).
struct ScaleDown {
    set: String,
    ordinal: u64,
    api: kube::Api,
}

/// How long the StatefulSet's replica count is waited for at SIGTERM.
const KUBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a node leaving at SIGTERM keeps asking the leader to remove it.
const LEAVE_BUDGET: Duration = Duration::from_secs(12);

impl ScaleDown {
    fn new(pod: &str, cfg: &Config) -> anyhow::Result<Option<ScaleDown>> {
        let (set, ordinal) = parse_hostname(pod)?;
        match kube::Api::from_env(cfg.kube_api.as_deref(), &cfg.kube_sa_dir) {
            Ok(Some(api)) => {
                info!(statefulset = %set, ?api, "a scale-down past this pod removes this node from the cluster at SIGTERM");
                Ok(Some(ScaleDown { set, ordinal, api }))
            }
            Ok(None) => {
                info!(
                    sa_dir = %cfg.kube_sa_dir.display(),
                    "no Kubernetes API or ServiceAccount token: a scale-down past this pod leaves it a member; \
                     remove it by hand (`.remove ID`, deploy/README.md)"
                );
                Ok(None)
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot use the Kubernetes API: a scale-down past this pod leaves it a member; remove it by hand");
                Ok(None)
            }
        }
    }

    /// Whether the StatefulSet now wants fewer replicas than this pod's ordinal needs. When
    /// that cannot be told, the answer is no: staying a member is always safe, a wrong removal
    /// is not.
    async fn scaled_away(&self) -> bool {
        match self.api.statefulset_replicas(&self.set, KUBE_TIMEOUT).await {
            Ok(replicas) if replicas <= self.ordinal => {
                info!(
                    statefulset = %self.set, replicas, ordinal = self.ordinal,
                    "the StatefulSet was scaled down past this pod: leaving the cluster before exiting"
                );
                true
            }
            Ok(replicas) => {
                info!(statefulset = %self.set, replicas, ordinal = self.ordinal, "a restart, not a scale-down: staying a member");
                false
            }
            Err(e) => {
                warn!(
                    error = %format!("{e:#}"),
                    "cannot tell a scale-down from a restart: staying a member (if the StatefulSet was scaled \
                     down, remove this node by hand)"
                );
                false
            }
        }
    }
}

/// Asks the leader (after a hand-off, the new one) to remove this node, until it does or
/// [`LEAVE_BUDGET`] passes.
async fn leave(core: &Arc<Core>) {
    let deadline = tokio::time::Instant::now() + LEAVE_BUDGET;
    let req = raftsql_proto::v1::LeaveRequest { node_id: core.id(), incarnation: core.sm().incarnation() };
    loop {
        match crate::service::admin::leave(core, req, false).await {
            Ok(_) => {
                info!("left the cluster: this node is no longer a member");
                return;
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                info!("this node is no longer a member");
                return;
            }
            Err(s) if !worth_retrying(&s) => {
                warn!(
                    error = %s.message(),
                    "the cluster refuses to remove this node: remove node {} by hand once that is resolved",
                    core.id()
                );
                return;
            }
            Err(s) if tokio::time::Instant::now() >= deadline => {
                warn!(
                    error = %s.message(),
                    "could not leave the cluster within {LEAVE_BUDGET:?}: remove node {} by hand (`.remove {}`)",
                    core.id(),
                    core.id()
                );
                return;
            }
            Err(s) => {
                tracing::debug!(error = %s.message(), "leaving: retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Whether a refused leave may succeed on a retry: no leader yet, leadership moving, a
/// timeout. Not a refusal by the rules (the last voter, too few voters left, another
/// incarnation).
fn worth_retrying(s: &tonic::Status) -> bool {
    use prost::Message;
    use tonic::Code;
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::ResourceExhausted => true,
        Code::FailedPrecondition => raftsql_proto::v1::Error::decode(s.details())
            .is_ok_and(|e| e.code() == raftsql_proto::v1::ErrorCode::NotLeader),
        _ => false,
    }
}

/// A leader's hand-off at SIGTERM (`raft::handoff`), unless turned off or there is nobody to
/// hand over to.
async fn hand_off(core: &Arc<Core>, handoff: Duration) {
    let m = core.metrics();
    let voters = m.membership_config.membership().voter_ids().count();
    if handoff.is_zero() || m.current_leader != Some(core.id()) || voters < 2 {
        return;
    }
    let started = std::time::Instant::now();
    match crate::raft::handoff::transfer(core, None, handoff).await {
        Ok((leader, term)) => {
            info!(
                leader,
                term,
                took_ms = started.elapsed().as_millis() as u64,
                "leadership handed over before shutdown"
            )
        }
        Err(e) => {
            warn!(error = %e, "could not hand leadership over; shutting down anyway (the others elect a leader after the election timeout)")
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}

/// On the lowest listed id: initialize once every listed member answers, recording each
/// member's incarnation as it reports it. A member that already belongs to a cluster means this
/// node lost its data dir (or the list is wrong): it refuses to found a second cluster.
async fn bootstrap(core: Arc<Core>, members: BTreeMap<NodeId, Listed>) {
    let id = core.id();
    let first = *members.keys().next().expect("parse_members rejects an empty list");
    if id != first {
        info!(initializer = first, "waiting for node {first} to initialize the cluster");
        return;
    }
    let mut logged = false;
    let nodes = loop {
        let mut missing = Vec::new();
        let mut nodes = BTreeMap::from([(
            id,
            Member::with_peer(core.addr().to_string(), core.peer_addr().to_string(), core.sm().incarnation()),
        )]);
        for (&m, listed) in members.iter().filter(|(&m, _)| m != id) {
            let addr = &listed.peer_addr;
            match status_of(&core, addr).await {
                None => missing.push(m),
                Some(s) if s.node_id != m => {
                    error!(
                        node = m,
                        %addr,
                        answered = s.node_id,
                        "--bootstrap lists node {m} at {addr}, but node {} answers there: fix the \
                         list and restart; the cluster is not initialized",
                        s.node_id
                    );
                    return;
                }
                Some(s) if !s.members.is_empty() || !s.cluster_id.is_empty() => {
                    error!(
                        node = m,
                        cluster_id = %s.cluster_id,
                        "node {m} already belongs to a cluster, so this node is not founding one: \
                         its own data dir was lost or it was started with --bootstrap by mistake. \
                         To bring it back, remove node {id} through any member (`.remove {id}`), \
                         wipe its data dir and join with --join HOST:PORT under a new --id"
                    );
                    return;
                }
                Some(s) => {
                    nodes.insert(m, Member::with_peer(listed.addr.clone(), addr.clone(), s.incarnation));
                }
            }
        }
        if missing.is_empty() {
            break nodes;
        }
        if !logged {
            info!(?missing, "waiting for every bootstrap member to answer before initializing");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    match core.initialize(nodes).await {
        Ok(()) => info!("cluster initialized"),
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {
            info!("cluster was already initialized")
        }
        Err(e) => error!(error = %e, "initializing the cluster failed"),
    }
}

async fn status_of(core: &Core, addr: &str) -> Option<pb::StatusResponse> {
    let s = core.status_of(addr, Duration::from_secs(1), None).await.ok()?;
    // A node too old to report an incarnation cannot be admitted under one.
    (s.incarnation != 0).then_some(s)
}

/// Asks `seed` (any member's peer address) once to add this node.
async fn join_once(core: &Core, seed: &str, as_learner: bool) -> Result<(), tonic::Status> {
    let channel = core.peer_channel(seed).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = pb::raft_client::RaftClient::new(channel);
    client
        .join(pb::JoinRequest {
            node_id: core.id(),
            addr: core.addr().to_string(),
            as_learner,
            incarnation: core.sm().incarnation(),
            peer_addr: core.peer_addr().to_string(),
        })
        .await
        .map(|_| ())
}

/// Asks `seeds` (members' peer addresses, tried in turn) to add this node until one does. A
/// refusal ends it, unless `keep_asking` (StatefulSet identity): there the usual refusal is this
/// pod's old self, still a member, which the operator removes (the log says how), and the pod
/// must then join with no restart, so it asks again, slowly.
async fn join(core: Arc<Core>, seeds: Vec<String>, as_learner: bool, keep_asking: bool) {
    let mut delay = Duration::from_millis(200);
    for turn in 0usize.. {
        let m = core.metrics();
        let membership = m.membership_config.membership();
        if membership.voter_ids().any(|v| v == core.id())
            || (as_learner && membership.get_node(&core.id()).is_some())
        {
            // Admitted while an answer was lost, or contacted by the founder. (A learner still
            // to be promoted asks again: joining again resumes the wait.)
            return;
        }
        let seed = &seeds[turn % seeds.len()];
        match join_once(&core, seed, as_learner).await {
            Ok(()) => {
                info!(%seed, as_learner, "joined the cluster");
                return;
            }
            Err(s) if s.code() == tonic::Code::InvalidArgument && !keep_asking => {
                error!(%seed, error = %s.message(), "the cluster refused this node; fix the configuration and restart");
                return;
            }
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                error!(
                    %seed,
                    error = %s.message(),
                    "the cluster refused this node. If this pod lost its volume, remove its old self \
                     through any member (`raftsql -e \".remove {}\"`): this node then joins by itself. \
                     Asking again in 10 s",
                    core.id()
                );
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Err(s) => {
                let error = crate::raft::network::status_text(&s);
                warn!(%seed, %error, "join attempt failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leave_is_retried_only_when_a_retry_may_succeed() {
        use crate::raft::Error;
        use crate::service::status_from;
        let not_leader = Error::NotLeader { leader_id: None, leader_addr: None, term: 3 };
        assert!(worth_retrying(&status_from(not_leader)));
        assert!(worth_retrying(&status_from(Error::Unavailable("no leader".into()))));
        assert!(worth_retrying(&status_from(Error::Timeout("slow".into()))));
        // The rules' refusals are final: the last voter, too few voters left, another incarnation.
        assert!(!worth_retrying(&status_from(Error::InvalidArgument("the only voter".into()))));
        assert!(!worth_retrying(&status_from(Error::Precondition("too few answer".into()))));
        assert!(!worth_retrying(&status_from(Error::NotFound("gone".into()))));
    }

    #[test]
    fn bootstrap_members_parse_and_reject_bad_input() {
        let m = parse_members("1=127.0.0.1:7001, 2=127.0.0.1:7002,3=h:3/h:4").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[&2], Listed { addr: "127.0.0.1:7002".into(), peer_addr: "127.0.0.1:7002".into() });
        assert_eq!(m[&3], Listed { addr: "h:3".into(), peer_addr: "h:4".into() });
        for bad in ["", "1", "x=h:1", "0=h:1", "1=h", "1=h:1,1=h:2", "1=h:1/h", "1=h/h:2", "1=h:1/"] {
            assert!(parse_members(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
