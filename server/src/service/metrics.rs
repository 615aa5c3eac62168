//! Prometheus metrics (design.md §9, issue 19), served as Prometheus text (format 0.0.4) at
//! `/metrics` on the HTTP side port (`service::http`); docs/operations.md lists every one.
//!
//! Two kinds, both in one registry with the `raftsql_` prefix (prometheus-client):
//! - **counted where the work happens** ([`Metrics`]): client writes and reads by outcome code
//!   (and level), their latency, and the elections this node saw. The request path pays atomic
//!   increments only for the common outcome: the `OK` counters are taken out of their label
//!   families once, at start; an error outcome looks its counter up in the family (a read
//!   lock), and each latency histogram takes its own short lock (prometheus-client's).
//! - **read at scrape time** (`NodeCollector`): everything the node already keeps — openraft's
//!   metrics (role, term, leader, log indexes, each follower's matched index), the committed
//!   index the log store is told, the in-flight request semaphore, the failed authentications
//!   and TLS handshakes the status call reports, and the bytes of the data dir (a bounded walk,
//!   [`dir_bytes`]). Nothing is copied into instruments ahead of a scrape, so the values are as
//!   fresh as the scrape and cost nothing between scrapes.
//!
//! A scrape runs on a blocking thread ([`Metrics::render`] walks the data dir).
//!
//! - **updated by the layers below** (`crate::stats`): fsync, apply and snapshot durations and
//!   the sequencer's batch sizes, histograms the store and the sequencer update once per
//!   fsync, apply call, snapshot or batch.
//!
//! Not measured: bytes replicated per follower, and the outcome of a query's stream after its
//! first page (a reader that stops reading is counted `OK`).

use crate::raft::{Consistency, Core};
use crate::typ::RaftMetrics;
use openraft::ServerState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use prost::Message;
use raftsql_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The outcome label of a successful request.
pub const OK: &str = "OK";
/// Consistency levels as the `level` label names them, in [`level_slot`] order.
const LEVELS: [&str; 4] = ["STRONG", "READ_YOUR_WRITES", "BOUNDED", "ANY"];
/// At most this many files and directories are visited to size the data dir.
pub const MAX_DIR_ENTRIES: usize = 10_000;
/// ... and no deeper than this below it.
const MAX_DIR_DEPTH: usize = 4;

type CodeLabel = [(&'static str, &'static str); 1];
type ReadLabels = [(&'static str, &'static str); 2];
type HistogramFamily = Family<CodeLabel, Histogram, fn() -> Histogram>;

/// Latency buckets: 0.5 ms to about 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The node's metrics: the registry and the instruments the request path updates.
pub struct Metrics {
    registry: Registry,
    writes: Family<CodeLabel, Counter>,
    writes_ok: Counter,
    reads: Family<ReadLabels, Counter>,
    reads_ok: [Counter; 4],
    write_seconds: Histogram,
    read_seconds: [Histogram; 4],
    term_changes: Counter,
    leader_changes: Counter,
    /// The term and the last known leader at the previous metrics change ([`Metrics::saw_raft`]).
    seen: Mutex<Option<(u64, Option<u64>)>>,
}

impl Metrics {
    /// The registry for `core`, whose data lives in `data_dir`.
    pub fn new(core: Arc<Core>, data_dir: PathBuf) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("raftsql");
        let writes = Family::<CodeLabel, Counter>::default();
        registry.register(
            "writes",
            "Client write requests (Execute) this node answered, by outcome: OK or the error code",
            writes.clone(),
        );
        let reads = Family::<ReadLabels, Counter>::default();
        registry.register(
            "reads",
            "Client read requests (Query) this node answered, by outcome code and consistency level",
            reads.clone(),
        );
        let write_seconds = latency_histogram();
        registry.register_with_unit(
            "write_duration",
            "Time from receiving a write request to answering it (any outcome)",
            Unit::Seconds,
            write_seconds.clone(),
        );
        let read_family: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "read_duration",
            "Time from receiving a read request to its first page of rows (any outcome), by level",
            Unit::Seconds,
            read_family.clone(),
        );
        let term_changes = Counter::default();
        registry.register(
            "term_changes",
            "Times this node saw its Raft term change (elections, won or not, by anyone)",
            term_changes.clone(),
        );
        let leader_changes = Counter::default();
        registry.register(
            "leader_changes",
            "Times this node learned of a leader other than the last one it knew",
            leader_changes.clone(),
        );
        let stats = [
            (
                "fsync_duration",
                "Each group fsync of the store, which every acknowledged write waits for",
                &crate::stats::FSYNC_SECONDS,
            ),
            (
                "apply_duration",
                "Each application of committed entries (one or more) to the state machine",
                &crate::stats::APPLY_SECONDS,
            ),
            (
                "snapshot_build_duration",
                "Each snapshot this node built (the count is the builds)",
                &crate::stats::SNAPSHOT_BUILD_SECONDS,
            ),
            (
                "snapshot_install_duration",
                "Each snapshot this node installed from the leader (the count is the installs)",
                &crate::stats::SNAPSHOT_INSTALL_SECONDS,
            ),
        ];
        for (name, help, histogram) in stats {
            registry.register_with_unit(name, help, Unit::Seconds, (*histogram).clone());
        }
        registry.register(
            "sequencer_batch_requests",
            "Write requests the leader's sequencer took together in one batch",
            crate::stats::BATCH_REQUESTS.clone(),
        );
        registry.register(
            "sequencer_entries_in_flight",
            "Log entries the leader had proposed and not yet applied when it proposed one more, that one included",
            crate::stats::PIPELINE_ENTRIES.clone(),
        );
        registry.register(
            "append_entries_received",
            "AppendEntries requests from the leader that passed the peer checks, by whether they carried entries (`none`: a heartbeat)",
            crate::stats::APPEND_ENTRIES.clone(),
        );
        registry.register_collector(Box::new(NodeCollector { core, data_dir }));
        let writes_ok = writes.get_or_create_owned(&[("code", OK)]);
        let reads_ok = LEVELS.map(|level| reads.get_or_create_owned(&[("code", OK), ("level", level)]));
        let read_seconds = LEVELS.map(|level| read_family.get_or_create_owned(&[("level", level)]));
        Arc::new(Metrics {
            registry,
            writes,
            writes_ok,
            reads,
            reads_ok,
            write_seconds,
            read_seconds,
            term_changes,
            leader_changes,
            seen: Mutex::new(None),
        })
    }

    /// Records a write request answered with outcome `code` after `took`.
    pub fn write_done(&self, code: &'static str, took: Duration) {
        if code == OK {
            self.writes_ok.inc();
        } else {
            self.writes.get_or_create(&[("code", code)]).inc();
        }
        self.write_seconds.observe(took.as_secs_f64());
    }

    /// Records a read request at `level` (the level it asked for) answered with `code` after
    /// `took`.
    pub fn read_done(&self, level: Consistency, code: &'static str, took: Duration) {
        let slot = level_slot(level);
        if code == OK {
            self.reads_ok[slot].inc();
        } else {
            self.reads.get_or_create(&[("code", code), ("level", LEVELS[slot])]).inc();
        }
        self.read_seconds[slot].observe(took.as_secs_f64());
    }

    /// Counts term and leader changes; called on every change of openraft's metrics (by
    /// `health::watch`, the one caller). The first call only sets the baseline.
    pub fn saw_raft(&self, m: &RaftMetrics) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((term, leader)) = *seen {
            if m.current_term != term {
                self.term_changes.inc();
            }
            if m.current_leader.is_some() && m.current_leader != leader {
                self.leader_changes.inc();
            }
        }
        let leader = m.current_leader.or(seen.and_then(|(_, l)| l));
        *seen = Some((m.current_term, leader));
    }

    /// Every metric as Prometheus text (format 0.0.4). Blocking: it walks the data dir.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String fails only if an encoder does, and ours do not.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        text
    }
}

/// The Content-Type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

fn level_slot(level: Consistency) -> usize {
    match level {
        Consistency::Strong => 0,
        Consistency::ReadYourWrites => 1,
        Consistency::Bounded(_) => 2,
        Consistency::Any => 3,
    }
}

/// The outcome label of a request's answer: `OK`, the raftsql error code it carries
/// (`NOT_LEADER`, `CONSTRAINT`, ...), or else its gRPC code's name.
pub fn outcome<T>(result: &Result<T, tonic::Status>) -> &'static str {
    let status = match result {
        Ok(_) => return OK,
        Err(s) => s,
    };
    if let Ok(e) = pb::Error::decode(status.details()) {
        match pb::ErrorCode::try_from(e.code) {
            Ok(pb::ErrorCode::Unspecified) | Err(_) => {}
            Ok(code) => return code.as_str_name(),
        }
    }
    grpc_code_name(status.code())
}

fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Bytes the files under `dir` take on disk (allocated blocks), visiting at most
/// [`MAX_DIR_ENTRIES`] entries no deeper than `MAX_DIR_DEPTH`, following no symlinks: a
/// lower bound if the dir is larger than that, never a long scrape.
pub fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut visited = 0;
    let mut pending = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            visited += 1;
            if visited > MAX_DIR_ENTRIES {
                return total;
            }
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            if meta.is_dir() && depth < MAX_DIR_DEPTH {
                pending.push((entry.path(), depth + 1));
            } else if meta.is_file() {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

/// The values read at scrape time (see the module doc).
struct NodeCollector {
    core: Arc<Core>,
    data_dir: PathBuf,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector").field("node", &self.core.id()).finish()
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn index(i: Option<u64>) -> i64 {
    i.unwrap_or(0) as i64
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let core = &self.core;
        let m: RaftMetrics = core.metrics();
        {
            let mut role = e.encode_descriptor(
                "role",
                "1 for the Raft role this node has now, 0 for the others",
                None,
                MetricType::Gauge,
            )?;
            for (name, state) in [
                ("leader", ServerState::Leader),
                ("follower", ServerState::Follower),
                ("candidate", ServerState::Candidate),
                ("learner", ServerState::Learner),
                ("shutdown", ServerState::Shutdown),
            ] {
                let v = ConstGauge::new(i64::from(m.state == state));
                v.encode(role.encode_family(&[("role", name)])?)?;
            }
        }
        gauge(&mut e, "node_id", "This node's id", core.id() as i64)?;
        gauge(&mut e, "current_term", "The Raft term this node is in", m.current_term as i64)?;
        gauge(&mut e, "leader_id", "The leader this node knows of (0: none)", index(m.current_leader))?;
        let applied = m.last_applied.map(|l| l.index);
        gauge(&mut e, "last_log_index", "The last index in this node's log", index(m.last_log_index))?;
        let committed = core.committed_index().max(applied.unwrap_or(0));
        gauge(&mut e, "committed_index", "The highest index this node knows committed", committed as i64)?;
        gauge(
            &mut e,
            "applied_index",
            "The last index applied to this node's state machine",
            index(applied),
        )?;
        gauge(
            &mut e,
            "snapshot_index",
            "The last index in this node's snapshot",
            index(m.snapshot.map(|l| l.index)),
        )?;
        gauge(
            &mut e,
            "purged_index",
            "The last index purged from this node's log",
            index(m.purged.map(|l| l.index)),
        )?;
        let membership = m.membership_config.membership();
        let voters = membership.voter_ids().count();
        let members = membership.nodes().count();
        gauge(&mut e, "voters", "Voting members in the membership this node knows", voters as i64)?;
        gauge(
            &mut e,
            "learners",
            "Non-voting members (learners) this node knows",
            (members - voters) as i64,
        )?;
        if let Some(replication) = &m.replication {
            let last = m.last_log_index.unwrap_or(0);
            let followers: Vec<(String, u64)> = replication
                .iter()
                .filter(|(id, _)| **id != core.id())
                .map(|(id, matched)| (id.to_string(), matched.map_or(0, |l| l.index)))
                .collect();
            let mut matched_e = e.encode_descriptor(
                "follower_matched_index",
                "On the leader: the last index each follower is known to hold",
                None,
                MetricType::Gauge,
            )?;
            for (id, matched) in &followers {
                ConstGauge::new(*matched as i64)
                    .encode(matched_e.encode_family(&[("follower", id.as_str())])?)?;
            }
            let mut lag_e = e.encode_descriptor(
                "follower_lag_entries",
                "On the leader: entries of its log each follower does not hold yet",
                None,
                MetricType::Gauge,
            )?;
            for (id, matched) in &followers {
                let lag = last.saturating_sub(*matched) as i64;
                ConstGauge::new(lag).encode(lag_e.encode_family(&[("follower", id.as_str())])?)?;
            }
            let mut lag_s = e.encode_descriptor(
                "follower_lag",
                "On the leader: how long ago it appended the oldest entry each follower does not hold yet (0: caught up)",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for (id, matched) in &followers {
                let seconds = core.lag_millis(*matched, last) as f64 / 1000.0;
                ConstGauge::new(seconds).encode(lag_s.encode_family(&[("follower", id.as_str())])?)?;
            }
        }
        if let Some(ms) = m.millis_since_quorum_ack {
            let v = ConstGauge::new(ms as f64 / 1000.0);
            v.encode(e.encode_descriptor(
                "quorum_ack_age_seconds",
                "On the leader: time since a quorum last acknowledged it",
                None,
                MetricType::Gauge,
            )?)?;
        }
        let inflight = core.inflight_now();
        gauge(
            &mut e,
            "inflight_requests",
            "Client requests (Execute, Query) being served now",
            inflight as i64,
        )?;
        gauge(
            &mut e,
            "inflight_requests_limit",
            "Client requests this node serves at once (--max-inflight-requests)",
            core.options().max_inflight as i64,
        )?;
        let (running, waiting) = core.long_reads_now();
        gauge(
            &mut e,
            "long_reads",
            "Reads running on blocking threads now (those that outran their inline slice)",
            running as i64,
        )?;
        gauge(
            &mut e,
            "long_reads_waiting",
            "Reads waiting for a turn on a blocking thread (all turns are taken)",
            waiting as i64,
        )?;
        gauge(
            &mut e,
            "long_reads_limit",
            "Reads that may run on blocking threads at once (node::MAX_LONG_READS)",
            crate::node::MAX_LONG_READS as i64,
        )?;
        gauge(
            &mut e,
            "data_dir_bytes",
            "Bytes the files in the data dir take on disk (at most 10,000 entries counted)",
            dir_bytes(&self.data_dir) as i64,
        )?;
        counter(&mut e, "auth_failures", "Failed client authentications", super::auth::total_failures())?;
        counter(
            &mut e,
            "tls_handshake_failures",
            "Failed or timed-out TLS handshakes on either port",
            crate::tls::handshake_failures(),
        )?;
        counter(
            &mut e,
            "watchdog_stalls",
            "Times the watchdog saw an activity (fsync, apply, the Raft core, ...) stuck past its limit",
            crate::watchdog::stalls(),
        )?;
        let (reads, rounds, leased) = core.read_index_stats();
        counter(&mut e, "read_index_rounds", "Leadership confirmation rounds run for STRONG reads", rounds)?;
        counter(
            &mut e,
            "read_lease_rounds",
            "Of those rounds, the ones the leader lease answered without heartbeats",
            leased,
        )?;
        counter(&mut e, "read_index_reads", "STRONG reads served through those rounds", reads)?;
        let parses = crate::sql::parse_cache::stats();
        counter(
            &mut e,
            "parse_cache_hits",
            "Statement texts found already parsed (--parse-cache-bytes)",
            parses.hits,
        )?;
        counter(
            &mut e,
            "parse_cache_misses",
            "Statement texts short enough to keep that had to be parsed",
            parses.misses,
        )?;
        gauge(
            &mut e,
            "parse_cache_bytes",
            "Estimated bytes of the parsed statements kept (syntax trees and texts)",
            parses.bytes as i64,
        )?;
        let plans = crate::sql::plan_cache::stats();
        counter(
            &mut e,
            "plan_cache_hits",
            "Queries whose plan this node had bound before for the same text and schema (--plan-cache-bytes)",
            plans.hits,
        )?;
        counter(
            &mut e,
            "plan_cache_misses",
            "Queries that could have reused a plan and had to be bound",
            plans.misses,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_name_the_raftsql_code_or_the_grpc_code() {
        let ok: Result<(), tonic::Status> = Ok(());
        assert_eq!(outcome(&ok), OK);
        let not_leader = super::super::status_from(crate::raft::Error::NotLeader {
            leader_id: Some(2),
            leader_addr: None,
            term: 3,
        });
        assert_eq!(outcome::<()>(&Err(not_leader)), "NOT_LEADER");
        assert_eq!(outcome::<()>(&Err(tonic::Status::unauthenticated("x"))), "UNAUTHENTICATED");
    }

    #[test]
    fn dir_bytes_counts_files_below_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 10_000]).unwrap();
        assert!(dir_bytes(dir.path()) >= 10_000, "{}", dir_bytes(dir.path()));
        assert_eq!(dir_bytes(&dir.path().join("missing")), 0);
    }
}
