//! Instruments the layers below the service update where the work happens — the store's
//! fsyncs, applies and snapshots, the sequencer's batches — and `service::metrics` registers
//! for `/metrics`. Process-wide statics: a process runs one node. Each update is a short lock
//! in prometheus-client's histogram, taken once per fsync, apply call, snapshot or batch,
//! never per row.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::LazyLock;
use std::time::Instant;

/// Each group fsync of the store (the sled flush every acknowledged write waits for): 0.1 ms
/// to about 13 s.
pub static FSYNC_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.0001, 2.0, 18)));
/// Each call that applies committed entries to the state machine (one or more entries).
pub static APPLY_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.0001, 2.0, 18)));
/// Each snapshot this node built: 1 ms to about 9 minutes.
pub static SNAPSHOT_BUILD_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.001, 2.0, 20)));
/// Each snapshot this node installed (received from the leader).
pub static SNAPSHOT_INSTALL_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.001, 2.0, 20)));
/// Write requests the leader's sequencer took in one batch: 1 to 1,024.
pub static BATCH_REQUESTS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(1.0, 2.0, 11)));
/// Entries the leader had in flight when it proposed one more, that one included: 1 to 64
/// (`--write-pipeline-depth`).
pub static PIPELINE_ENTRIES: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(1.0, 2.0, 7)));

/// AppendEntries requests from the leader that passed this node's peer checks, by `carrying`:
/// `entries`, or `none` for a heartbeat, which carries only the leader's term and committed
/// index. A leader holds back a heartbeat that would only announce a commit, so that the next
/// entries carry it (`node::COMMIT_PIGGYBACK_US`): under steady writes, fewer heartbeats than
/// entries.
pub static APPEND_ENTRIES: LazyLock<Family<[(&'static str, &'static str); 1], Counter>> =
    LazyLock::new(Family::default);

/// Counts one AppendEntries request accepted, with entries or without.
pub fn append_entries_received(with_entries: bool) {
    let carrying = if with_entries { "entries" } else { "none" };
    APPEND_ENTRIES.get_or_create(&[("carrying", carrying)]).inc();
}

/// Records the seconds since `started` in `h`.
pub fn since(h: &Histogram, started: Instant) {
    h.observe(started.elapsed().as_secs_f64());
}
