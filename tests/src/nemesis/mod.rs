//! Fault injection with history checking (issue 7, design.md §10; how to run and what each
//! schedule proves: docs/testing.md).
//!
//! - [`net`]: loopback TCP proxies that carry every peer and client link, so a schedule can cut
//!   a link in one or both directions, slow it or make it lossy, and heal it.
//! - [`history`]: the JSON-lines history each workload records (invoke / ok / fail / info).
//! - [`workload`]: list-append, register, bank and session clients that record histories.
//! - [`byzantine`]: the byzantine-client schedule's forged peer messages and pathological SQL.
//! - [`check`]: the checkers that decide, from a history alone, whether it is consistent.
//! - [`run`]: one run of a schedule: cluster, workloads, nemesis, heal, verdict.

pub mod byzantine;
pub mod check;
pub mod history;
pub mod net;
pub mod run;
pub mod workload;

/// A nemesis schedule: what breaks, how long each fault holds, and on what cluster.
#[derive(Debug)]
pub struct Schedule {
    pub name: &'static str,
    /// What the schedule does and what passing it proves.
    pub about: &'static str,
    pub nodes: u64,
    /// Run the nodes with sled's background flush off: only explicit fsyncs persist.
    pub unflushed: bool,
    /// One node (picked by the seed) runs with its wall clock two hours ahead.
    pub skewed_clock: bool,
    /// How long each fault holds, in milliseconds (a random value in this range). Faults meant
    /// to depose a leader hold at least 4.5 s: followers elect only after the election timeout
    /// (1–2 s) and openraft's leader lease (2 s) have both passed.
    pub fault_ms: (u64, u64),
}

const fn schedule(name: &'static str, nodes: u64, fault_ms: (u64, u64), about: &'static str) -> Schedule {
    Schedule { name, about, nodes, unflushed: false, skewed_clock: false, fault_ms }
}

/// Every schedule, in the order `--list` prints them and CI runs them.
pub const SCHEDULES: &[Schedule] = &[
    schedule("isolate-leader", 3, (4_500, 7_000),
        "cut the leader off from every peer (clients still reach it); a new leader is elected on the other side and the old one must not acknowledge anything"),
    schedule("partition-majority-minority", 5, (4_500, 7_000),
        "split 5 nodes 2|3, alternately with the leader on the minority side and on the majority side"),
    schedule("one-way-leader-deaf", 3, (4_500, 7_000),
        "the leader's messages reach its followers but nothing comes back (one-way partition): it cannot commit, the followers must not lose anything when they elect another"),
    schedule("majorities-ring", 5, (4_500, 7_000),
        "each of 5 nodes hears only its two ring neighbours: every node sees a majority, but no two see the same one"),
    schedule("kill-random", 3, (1_000, 3_000),
        "kill -9 a node (60% the leader) and restart it from its data dir"),
    Schedule { unflushed: true, ..schedule("kill-all", 3, (500, 1_500),
        "kill -9 every node at once and restart them all, with sled's background flush off: every acknowledged write must have been fsynced") },
    Schedule { unflushed: true, ..schedule("kill-majority", 3, (500, 1_500),
        "kill -9 a majority at once (always the leader), background flush off, restart: acknowledged writes survive on what was fsynced") },
    schedule("pause-leader", 3, (4_500, 6_500),
        "SIGSTOP the leader beyond the election timeout, then SIGCONT it: a deposed leader that wakes up must not serve stale reads or acknowledge writes"),
    schedule("membership-under-partition", 3, (1_000, 2_000),
        "isolate a follower, add a new voter while the partition holds, remove the isolated follower, wipe it (its id is never reused), heal"),
    schedule("lossy-node", 3, (3_000, 5_000),
        "30% of the connections to and from one node are refused or reset"),
    schedule("slow-follower", 3, (3_000, 5_000),
        "150–400 ms of latency each way between the leader and one follower"),
    schedule("lost-response", 3, (1_000, 2_000),
        "the leader's replies to clients are dropped: a committed write must come back indeterminate, and its retry under the same request id must not apply it twice"),
    Schedule { skewed_clock: true, ..schedule("clock-skew", 3, (4_500, 7_000),
        "one node's wall clock runs two hours ahead (--clock-offset-ms) and leads part of the run: NOW() values in rows, some from the shifted clock, are identical on every replica") },
    schedule("rolling-restart", 3, (1_000, 2_000),
        "a rolling upgrade: SIGTERM every node in turn (a leader hands leadership over first) and start it again, the next only once it has caught up; nothing acknowledged is lost, nothing applies twice"),
    schedule("byzantine-client", 3, (3_000, 5_000),
        "a client sends forged and malformed peer messages (terms near 2^64, wrong incarnations or cluster, garbage payloads and snapshots) and pathological SQL (huge expressions, backtracking LIKE, cross joins, 40,000 parameters, reused request ids) to every node: each is refused with a typed error and nothing else changes"),
];
