//! One nemesis run: start a proxied cluster, run every workload while a schedule breaks the
//! cluster, heal, then judge.
//!
//! # Life of a run
//! 1. Start N real `raftsql-server` processes whose peer and client links all go through a
//!    [`Net`](super::net::Net) seeded with the run's seed; create the workload tables.
//! 2. For `time`, run the workloads ([`super::workload`]) and the schedule's nemesis side by
//!    side; every fault and heal goes into `history-nemesis.jsonl`.
//! 3. Heal everything (links, paused and stopped nodes) and measure how long until a write
//!    commits again; the workloads run on for two more seconds against the healed cluster.
//! 4. Judge: every checker finds its history valid; the cluster accepted a write within
//!    [`RECOVERY_LIMIT`]; every replica holds identical tables; every acknowledged list append
//!    is present exactly once; the bank still holds its total; each session's key holds at least
//!    its last acknowledged write.
//!
//! The run's temp dir (node logs, data dirs, histories) is kept when it fails, and its path and
//! the seed are printed so the run can be replayed with `--schedule NAME --seed N`.

use super::check::{self, Verdict};
use super::history::Recorder;
use super::workload::{self, Env};
use super::{Schedule, SCHEDULES};
use crate::{Cluster, ClusterOptions};
use raftsql_client::{pb, Client, Consistency, QueryOptions, Value};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// After healing, the cluster must accept a write within this long (several election timeouts
/// of the default 1–2 s, with room for a debug build restarting every node).
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(20);

/// The password of the `nemesis` user in runs with [`RunOptions::users`].
const NEMESIS_PASSWORD: &str = "nemesis-password";

/// How far ahead the clock-skew schedule shifts one node's wall clock, in seconds; applied
/// with the server's test-only `--clock-offset-ms` (as `RAFTSQL_CLOCK_OFFSET_MS`).
const SKEW_SECS: i64 = 7200;

/// The verdict of one run.
#[derive(Debug)]
pub struct Outcome {
    pub schedule: &'static str,
    pub seed: u64,
    pub passed: bool,
    pub verdicts: Vec<Verdict>,
    /// End-state checks that failed, and anything else that makes the run fail.
    pub problems: Vec<String>,
    /// Figures worth printing: operations per workload, faults injected, recovery time.
    pub notes: Vec<String>,
    /// Where the logs and histories were kept (failed runs, or when asked).
    pub kept: Option<PathBuf>,
    /// The flags that replay this run.
    pub replay: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        writeln!(f, "{verdict} {} (seed {})", self.schedule, self.seed)?;
        for v in &self.verdicts {
            let mark = if v.valid { "ok " } else { "BAD" };
            writeln!(f, "  {mark} {:<12} {}", v.checker, v.summary)?;
            for a in &v.anomalies {
                writeln!(f, "        {a}")?;
            }
        }
        for n in &self.notes {
            writeln!(f, "  ·   {n}")?;
        }
        for p in &self.problems {
            writeln!(f, "  BAD {p}")?;
        }
        if let Some(dir) = &self.kept {
            writeln!(f, "  logs, data and histories kept in {}", dir.display())?;
            writeln!(f, "  replay: cargo run -p raftsql-tests --bin nemesis -- {}", self.replay)?;
        }
        Ok(())
    }
}

/// How to run a schedule.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// How long the nemesis runs.
    pub time: Duration,
    pub seed: u64,
    /// Keep the temp dir even when the run passes.
    pub keep: bool,
    /// Make the run wrong on purpose (to see that the checkers catch it).
    pub weaken: Option<Weakening>,
    /// Start the nodes with a users file: every client of the run (workloads, setup, probes,
    /// the byzantine client's SQL) authenticates, as user `nemesis` with every permission.
    pub users: bool,
    /// Start the nodes with TLS on both ports (mutual TLS between peers, through the fault
    /// proxies, which carry the encrypted bytes as they are): every client of the run trusts
    /// the test CA.
    pub tls: bool,
}

impl RunOptions {
    pub fn new(time: Duration, seed: u64) -> RunOptions {
        RunOptions { time, seed, keep: false, weaken: None, users: false, tls: false }
    }
}

/// Deliberate weakenings: a run with one must fail, or the checkers are blind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Weakening {
    /// The register workload reads at `ANY` (any replica's applied state) but is still judged
    /// for linearizability: a partitioned old leader or a lagging follower answers stale values.
    AnyRegisterReads,
}

/// Runs schedule `name` as `opts` say.
pub async fn run(name: &str, opts: &RunOptions) -> Result<Outcome, String> {
    let (time, seed, keep, weaken) = (opts.time, opts.seed, opts.keep, opts.weaken);
    let schedule = SCHEDULES
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("no schedule {name:?}; --list names them"))?;
    let mut rng = StdRng::seed_from_u64(seed);
    // lost-response drops the leader's replies to clients while their requests go through. The
    // proxy drops a whole direction of new connections, and a TLS handshake needs both, so
    // under TLS no request would reach the leader at all: that schedule runs in plain text.
    let tls = opts.tls && schedule.name != "lost-response";
    let mut cluster_opts = ClusterOptions { proxied: Some(seed), tls, ..Default::default() };
    // Lives until the run ends: the nodes re-read it.
    let users_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    if opts.users {
        let path = users_dir.path().join("users.toml");
        let hash = raftsql_server::service::auth::hash_password(NEMESIS_PASSWORD)?;
        let text = format!("[[user]]\nname = \"nemesis\"\npassword = {hash:?}\npermissions = [\"all\"]\n");
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        cluster_opts.extra_args.extend(["--users-file".to_string(), path.display().to_string()]);
        cluster_opts.credentials = Some(raftsql_client::Credentials::Basic {
            user: "nemesis".into(),
            password: NEMESIS_PASSWORD.into(),
        });
    }
    if schedule.unflushed {
        // Only explicit fsyncs persist: what openraft was told is durable must really be.
        cluster_opts.extra_args.extend(["--flush-every-ms".to_string(), "0".to_string()]);
    }
    let skewed = schedule.skewed_clock.then(|| rng.gen_range(1..=schedule.nodes));
    if let Some(node) = skewed {
        let offset_ms = (SKEW_SECS * 1000).to_string();
        cluster_opts.node_env.push((node, "RAFTSQL_CLOCK_OFFSET_MS".to_string(), offset_ms));
    }
    let mut cluster = Cluster::start(schedule.nodes, cluster_opts).await?;
    let result = drive(schedule, &mut cluster, &mut rng, time, seed, skewed, weaken).await;
    let mut outcome = match result {
        Ok(o) => o,
        Err(e) => Outcome {
            schedule: schedule.name,
            seed,
            passed: false,
            verdicts: vec![],
            problems: vec![e],
            notes: vec![],
            kept: None,
            replay: String::new(),
        },
    };
    outcome.replay = format!("--schedule {} --seed {seed} --time {}", schedule.name, time.as_secs());
    if let Some(w) = weaken {
        use clap::ValueEnum;
        if let Some(v) = w.to_possible_value() {
            outcome.replay += &format!(" --weaken {}", v.get_name());
        }
    }
    if opts.users {
        outcome.replay += " --users";
    }
    if opts.tls {
        outcome.replay += " --tls";
        if !tls {
            outcome
                .notes
                .push("TLS off for this schedule: replies cannot be dropped apart from handshakes".into());
        }
    }
    outcome.passed = outcome.problems.is_empty() && outcome.verdicts.iter().all(|v| v.valid);
    if !outcome.passed {
        for f in cluster.dump_stacks() {
            outcome.notes.push(format!("thread stacks: {}", f.display()));
        }
    }
    if !outcome.passed || keep {
        outcome.kept = cluster.keep_dir();
    }
    Ok(outcome)
}

async fn drive(
    schedule: &'static Schedule,
    cluster: &mut Cluster,
    rng: &mut StdRng,
    time: Duration,
    seed: u64,
    skewed: Option<u64>,
    weaken: Option<Weakening>,
) -> Result<Outcome, String> {
    let mut notes = Vec::new();
    let mut problems = Vec::new();
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let admin = cluster.client_for(cluster.listens()).await?;
    admin.execute(workload::SETUP, &[]).await.map_err(|e| format!("creating the tables: {e}"))?;
    admin.execute(&workload::bank_setup(), &[]).await.map_err(|e| format!("opening the bank: {e}"))?;
    admin
        .execute("CREATE TABLE probe (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)", &[])
        .await
        .map_err(|e| e.to_string())?;

    let dir = cluster.dir().to_path_buf();
    let rec =
        |name: &str| Recorder::create(&dir.join(format!("history-{name}.jsonl"))).map_err(|e| e.to_string());
    let (la, reg, bank, sess, nem) =
        (rec("list-append")?, rec("register")?, rec("bank")?, rec("sessions")?, rec("nemesis")?);

    let workers_until = Instant::now() + time + Duration::from_secs(2);
    let client = cluster.client().await.with_deadline(workload::OP_DEADLINE);
    let register_reads = match weaken {
        Some(Weakening::AnyRegisterReads) => {
            notes.push("weakened on purpose: register reads at ANY".into());
            Consistency::Any
        }
        None => Consistency::Strong,
    };
    let env = Env { client, addrs: cluster.addrs(), deadline: workers_until, seed, register_reads };
    let mut tasks = Vec::new();
    let la_values = Arc::new(AtomicI64::new(1));
    let reg_values = Arc::new(AtomicI64::new(1));
    for w in 0..4 {
        tasks.push(tokio::spawn(workload::list_append(env.clone(), la.clone(), w, la_values.clone())));
    }
    for w in 0..3 {
        tasks.push(tokio::spawn(workload::register(env.clone(), reg.clone(), w, reg_values.clone())));
    }
    for w in 0..2 {
        tasks.push(tokio::spawn(workload::bank(env.clone(), bank.clone(), w)));
    }
    for s in 0..3 {
        tasks.push(tokio::spawn(workload::sessions(env.clone(), sess.clone(), s)));
    }
    let clock = skewed.map(|_| tokio::spawn(workload::clock_rows(env.clone(), 0)));

    // The nemesis, for `time`.
    let nemesis_until = Instant::now() + time;
    let mut faults = Faults {
        nem: nem.clone(),
        paused: Vec::new(),
        count: 0,
        probes: Probes::default(),
        skewed,
        byzantine: Default::default(),
    };
    let nemesis_result = nemesis(schedule, cluster, rng, nemesis_until, &mut faults).await;
    if let Err(e) = &nemesis_result {
        problems.push(format!("the nemesis could not carry out its schedule: {e}"));
    }

    // Heal everything and time the recovery.
    let healed_at = Instant::now();
    heal(cluster, &mut faults).await?;
    let probe = cluster.client().await.with_deadline(Duration::from_secs(2));
    let recovered = loop {
        if probe.execute("INSERT INTO probe (v) VALUES (-1)", &[]).await.is_ok() {
            break Some(healed_at.elapsed());
        }
        if healed_at.elapsed() > RECOVERY_LIMIT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    match recovered {
        Some(t) => {
            let term = match cluster.leader_now(&[]).await {
                Some(l) => cluster.status(l).await.map(|s| s.term).unwrap_or(0),
                None => 0,
            };
            notes.push(format!(
                "{} faults; {term} terms; a write committed {:.1} s after healing",
                faults.count,
                t.as_secs_f64()
            ))
        }
        None => problems.push(format!("no write committed within {RECOVERY_LIMIT:?} of healing")),
    }
    for t in tasks {
        t.await.map_err(|e| format!("a workload task failed: {e}"))?;
    }
    let clock_rows = match clock {
        Some(t) => Some(t.await.map_err(|e| format!("the clock workload failed: {e}"))?),
        None => None,
    };
    for r in [&la, &reg, &bank, &sess, &nem] {
        r.flush();
    }

    // Convergence: identical tables on every replica.
    for table in ["la", "reg", "bank", "sess", "clock", "probe"] {
        match cluster.assert_converged(table).await {
            Ok((rows, sum)) => {
                if table == "clock" && clock_rows.is_some() {
                    notes.push(format!(
                        "clock: {rows} NOW() rows identical on every replica (checksum {sum})"
                    ));
                }
            }
            Err(e) => problems.push(e),
        }
    }
    if let (Some(node), Some(rows)) = (skewed, clock_rows) {
        notes.push(format!(
            "node {node} ran with its clock shifted by +{SKEW_SECS} s; {rows} clock rows written"
        ));
        let unskewed = cluster.ids().into_iter().find(|&n| n != node).unwrap_or(node);
        match skewed_rows(cluster, &admin, cluster.listen(unskewed)).await {
            Ok(0) => problems.push(format!(
                "no NOW() value came from node {node}'s shifted clock: it never led while clock rows \
                 were written, so the run proved nothing (run it longer)"
            )),
            Ok(n) => notes.push(format!(
                "{n} NOW() values came from the shifted clock (written while node {node} led)"
            )),
            Err(e) => problems.push(e),
        }
    }

    // What the nodes' watchdogs saw (a stall is a finding to read in that node's log).
    for id in cluster.running() {
        if let Ok(s) = cluster.status(id).await {
            if s.watchdog_stalls > 0 {
                notes.push(format!(
                    "node {id}'s watchdog saw {} stall(s); now stalled: {:?} (its log has the dump)",
                    s.watchdog_stalls, s.stalled
                ));
            }
        }
    }

    // End state against the histories.
    let la_events = la.events();
    problems.extend(final_lists(&admin, &la_events).await?);
    problems.extend(final_bank(&admin).await?);
    problems.extend(final_sessions(&admin, &sess.events()).await?);
    if schedule.name == "lost-response" {
        notes.push(format!(
            "lost responses: {} probe writes answered indeterminate, {} of them committed before their retry, each applied once",
            faults.probes.indeterminate, faults.probes.committed_unseen
        ));
        problems.extend(faults.probes.problems.iter().cloned());
        if faults.probes.committed_unseen == 0 {
            problems.push("no probe write committed while its response was lost: the schedule did not exercise its fault".into());
        }
    }

    if schedule.name == "byzantine-client" {
        let t = &faults.byzantine;
        notes.push(t.note());
        problems.extend(t.problems.iter().cloned());
        if t.peer_refused == 0 || t.sql_answered == 0 {
            problems.push(
                "the byzantine client sent nothing that was judged: the schedule proved nothing".into(),
            );
        }
    }

    let verdicts = vec![
        check::check_list_append(&la_events),
        check::check_register(&reg.events()),
        check::check_bank(&bank.events(), workload::BANK_ACCOUNTS, workload::BANK_TOTAL),
        check::check_sessions(&sess.events()),
    ];
    Ok(Outcome {
        schedule: schedule.name,
        seed,
        passed: false,
        verdicts,
        problems,
        notes,
        kept: None,
        replay: String::new(),
    })
}

/// The nemesis's state between its steps.
struct Faults {
    nem: Recorder,
    paused: Vec<u64>,
    count: u64,
    probes: Probes,
    /// The node with the shifted clock (clock-skew only).
    skewed: Option<u64>,
    /// What the byzantine client saw (byzantine-client only).
    byzantine: super::byzantine::Tally,
}

#[derive(Default)]
struct Probes {
    seq: u64,
    indeterminate: u64,
    committed_unseen: u64,
    problems: Vec<String>,
}

impl Faults {
    fn log(&mut self, what: &str, detail: serde_json::Value) {
        if what != "heal" {
            self.count += 1;
        }
        self.nem.record(super::history::EventType::Info, 0, what, detail, None);
    }
}

fn net(cluster: &Cluster) -> &super::net::Net {
    cluster.net().expect("nemesis clusters are proxied")
}

/// Heals every fault: links, paused processes, stopped processes.
async fn heal(cluster: &mut Cluster, faults: &mut Faults) -> Result<(), String> {
    net(cluster).heal_all();
    for id in std::mem::take(&mut faults.paused) {
        cluster.resume(id);
    }
    cluster.start_stopped().await?;
    faults.log("heal", json!(null));
    Ok(())
}

/// Sleeps a random time in `range` (milliseconds), but not past `until`. Returns false once
/// `until` has passed.
async fn hold(rng: &mut StdRng, range: std::ops::Range<u64>, until: Instant) -> bool {
    let d = Duration::from_millis(rng.gen_range(range));
    let end = (Instant::now() + d).min(until);
    tokio::time::sleep_until(end).await;
    Instant::now() < until
}

/// A leader, found among the nodes not paused; a follower-bias pick when none is known.
async fn leader_or_any(cluster: &Cluster, rng: &mut StdRng, paused: &[u64]) -> u64 {
    match cluster.leader_now(paused).await {
        Some(l) => l,
        None => {
            let ids: Vec<u64> = cluster.running().into_iter().filter(|id| !paused.contains(id)).collect();
            *ids.choose(rng).unwrap_or(&1)
        }
    }
}

/// Breaks and heals the cluster until `until`, as `schedule` says.
async fn nemesis(
    schedule: &Schedule,
    cluster: &mut Cluster,
    rng: &mut StdRng,
    until: Instant,
    f: &mut Faults,
) -> Result<(), String> {
    // Let the workloads start on a healthy cluster.
    if !hold(rng, 1_000..1_500, until).await {
        return Ok(());
    }
    while Instant::now() < until {
        let ids = cluster.ids();
        let leader = leader_or_any(cluster, rng, &f.paused).await;
        let others: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
        match schedule.name {
            "isolate-leader" => {
                net(cluster).isolate(leader);
                f.log("isolate", json!({"node": leader}));
            }
            "partition-majority-minority" => {
                // Alternate: the leader on the minority side, then on the majority side.
                let mut rest = others.clone();
                rest.shuffle(rng);
                let minority_size = ids.len() / 2;
                let leader_in_minority = f.count.is_multiple_of(2);
                let (mut side, other): (Vec<u64>, Vec<u64>) = if leader_in_minority {
                    (rest[..minority_size - 1].to_vec(), rest[minority_size - 1..].to_vec())
                } else {
                    (
                        rest[..ids.len() - minority_size - 1].to_vec(),
                        rest[ids.len() - minority_size - 1..].to_vec(),
                    )
                };
                side.push(leader);
                net(cluster).partition(&[side.clone(), other.clone()]);
                f.log("partition", json!({"with_leader": side, "without": other}));
            }
            "one-way-leader-deaf" => {
                for &o in &others {
                    net(cluster).cut(o, leader);
                }
                f.log("cut-one-way", json!({"deaf": leader, "unheard": others}));
            }
            "majorities-ring" => {
                let mut ring = ids.clone();
                ring.shuffle(rng);
                let n = ring.len();
                let mut cuts = Vec::new();
                for i in 0..n {
                    for j in i + 1..n {
                        let adjacent = j == i + 1 || (i == 0 && j == n - 1);
                        if !adjacent {
                            net(cluster).cut_both(ring[i], ring[j]);
                            cuts.push((ring[i], ring[j]));
                        }
                    }
                }
                f.log("majorities-ring", json!({"ring": ring, "cut": cuts}));
            }
            "kill-random" => {
                let victim = if rng.gen_bool(0.6) { leader } else { *ids.choose(rng).unwrap_or(&leader) };
                cluster.kill(victim);
                f.log("kill", json!({"node": victim, "leader": leader}));
            }
            "kill-all" => {
                cluster.kill_all();
                f.log("kill-all", json!({"nodes": ids}));
            }
            "kill-majority" => {
                let mut victims = vec![leader];
                let mut rest = others.clone();
                rest.shuffle(rng);
                victims.extend(rest.into_iter().take(ids.len() / 2));
                for &v in &victims {
                    cluster.kill(v);
                }
                f.log("kill-majority", json!({"nodes": victims}));
            }
            "pause-leader" => {
                cluster.pause(leader);
                f.paused.push(leader);
                f.log("pause", json!({"node": leader}));
            }
            "membership-under-partition" => {
                // Cut a follower off, add a voter while the partition holds, then remove the
                // isolated follower (wiping it; its id is never reused), and heal.
                let Some(&victim) = others.choose(rng) else { break };
                net(cluster).isolate(victim);
                f.log("isolate", json!({"node": victim}));
                let added = cluster
                    .add_node()
                    .await
                    .map_err(|e| format!("adding a voter during a partition: {e}"))?;
                f.log("add-voter", json!({"node": added}));
                let admin = cluster.client_for(cluster.listens()).await?;
                remove_member(&admin, victim).await?;
                cluster.forget(victim);
                f.log("remove-voter", json!({"node": victim, "wiped": true}));
                hold(rng, 500..1_000, until).await;
                heal(cluster, f).await?;
                hold(rng, 1_000..2_000, until).await;
                continue;
            }
            "lossy-node" => {
                let victim = *ids.choose(rng).unwrap_or(&leader);
                net(cluster).set_loss(victim, 0.3);
                f.log("loss", json!({"node": victim, "share": 0.3}));
            }
            "slow-follower" => {
                let Some(&victim) = others.choose(rng) else { break };
                let d = Duration::from_millis(rng.gen_range(150..400));
                net(cluster).set_latency(leader, victim, d);
                net(cluster).set_latency(victim, leader, d);
                f.log("latency", json!({"between": [leader, victim], "ms": d.as_millis() as u64}));
            }
            "lost-response" => {
                net(cluster).cut(leader, super::net::CLIENT);
                f.log("cut-replies", json!({"from": leader}));
                lost_response_probe(cluster, leader, f).await;
            }
            "clock-skew" => {
                let skewed = f.skewed.ok_or("clock-skew runs without a shifted node")?;
                net(cluster).isolate(leader);
                f.log("isolate", json!({"node": leader}));
                if leader != skewed {
                    make_leader(cluster, skewed, leader, until, f).await;
                }
            }
            "rolling-restart" => {
                let mut order = ids.clone();
                order.shuffle(rng);
                for id in order {
                    if Instant::now() > until {
                        break;
                    }
                    let led = cluster.leader_now(&[]).await == Some(id);
                    let status = cluster.terminate(id, Duration::from_secs(30)).await?;
                    if !status.success() {
                        return Err(format!("node {id} exited with {status} after SIGTERM"));
                    }
                    f.log("sigterm", json!({"node": id, "was_leader": led}));
                    cluster.start_with(id, &[]).await?;
                    let leader = cluster.wait_for_quorum_leader(Duration::from_secs(30)).await?;
                    let applied = cluster.status(leader).await?.applied_index;
                    cluster.wait_applied(id, applied, Duration::from_secs(30)).await?;
                    f.log("restarted", json!({"node": id, "caught_up_to": applied}));
                }
                hold(rng, 1_000..2_000, until).await;
                continue;
            }
            "byzantine-client" => {
                let d = Duration::from_millis(rng.gen_range(schedule.fault_ms.0..schedule.fault_ms.1));
                f.log("byzantine", json!({"ms": d.as_millis() as u64}));
                let client = cluster.client_for(cluster.listens()).await?;
                let end = (Instant::now() + d).min(until);
                super::byzantine::burst(cluster, &client, rng, end, &mut f.byzantine).await;
                hold(rng, 1_500..3_000, until).await;
                continue;
            }
            other => return Err(format!("schedule {other} has no nemesis")),
        }
        hold(rng, schedule.fault_ms.0..schedule.fault_ms.1, until).await;
        heal(cluster, f).await?;
        hold(rng, 1_500..3_000, until).await;
    }
    Ok(())
}

/// Makes `target` lead while `cut` (the old leader) is isolated, whatever the seed, so the
/// clock-skew schedule always has its shifted node lead part of the time. Waits for the new
/// leader; if it is not `target`, waits until it has committed an entry of its term (so `target`,
/// the only other node that acknowledged it, holds that entry) and moves the isolation to it
/// without healing it in between: `cut` never saw the new term's entries, so `target` has the only
/// log up to date enough to win the next election, and waits for it to. Gives up quietly at a
/// deadline: this is a fault, not an assertion.
async fn make_leader(cluster: &Cluster, target: u64, cut: u64, until: Instant, f: &mut Faults) {
    let deadline = (Instant::now() + Duration::from_secs(15)).min(until);
    let mut new_leader = None;
    while Instant::now() < deadline {
        match cluster.leader_now(&[]).await {
            Some(l) if l == target => return,
            Some(l) if l != cut => {
                new_leader = Some(l);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let Some(l) = new_leader else { return };
    let Ok(first) = cluster.status(l).await.map(|s| s.last_log_index) else { return };
    while Instant::now() < deadline {
        match cluster.status(l).await {
            Ok(s) if s.committed_index >= first => {
                // Cut `l` off before letting `cut` back in: `cut` must not see an entry of
                // the new term, or it could win instead of `target`.
                net(cluster).isolate(l);
                for other in cluster.ids().into_iter().filter(|&n| n != l && n != cut) {
                    net(cluster).heal(cut, other);
                }
                f.log("isolate", json!({"node": l, "healed": cut, "so_that_leads": target}));
                // `cut` may campaign in the same term as `target` and split the vote (it cannot
                // win, its log is behind, but it keeps `target` waiting for another timeout):
                // hold the isolation until `target` leads, or the deadline, so the fault's
                // window is spent with `target` leading rather than electing.
                while Instant::now() < deadline {
                    if cluster.leader_now(&[]).await == Some(target) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                return;
            }
            Ok(s) if s.role() != pb::Role::Leader => return,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn remove_member(admin: &Client, id: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.remove_member(id).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == "NOT_FOUND" => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(format!("removing node {id}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// With the leader's replies to clients cut: a non-idempotent insert must come back
/// indeterminate, may commit anyway, and its retry under the same request id must not apply it
/// a second time.
async fn lost_response_probe(cluster: &Cluster, leader: u64, f: &mut Faults) {
    f.probes.seq += 1;
    let seq = f.probes.seq;
    let client_id = "nemesis-probe";
    let v = seq as i64 * 1_000_000;
    let statements = || vec![("INSERT INTO probe (v) VALUES (?)".to_string(), vec![Value::Integer(v)])];
    // Pinned to the leader: the reply is what gets lost, not the request.
    let Ok(to_leader) = cluster.client_for([cluster.addr(leader).to_string()]).await else { return };
    let to_leader = to_leader.with_deadline(Duration::from_secs(2));
    match to_leader.execute_as(client_id, seq, statements(), false).await {
        Ok(_) => {
            // The reply got through (the leader changed, or the request was queued behind the
            // cut); nothing to learn from this probe.
            return;
        }
        Err(e) if workload::definite(&e) => {
            f.probes.problems.push(format!("probe {seq}: a lost reply came back as a definite failure: {e}"));
            return;
        }
        Err(_) => f.probes.indeterminate += 1,
    }
    // Heal, then look before retrying.
    net(cluster).heal_all();
    let Ok(admin) = cluster.client_for(cluster.listens()).await else { return };
    let count = |admin: Client| async move {
        let opts = QueryOptions { consistency: Consistency::Strong, ..Default::default() };
        admin
            .query("SELECT COUNT(*) FROM probe WHERE v = ?", &[Value::Integer(v)], opts)
            .await
            .ok()
            .and_then(|r| r.rows.first().and_then(|row| row.first()).cloned())
    };
    let before = count(admin.clone()).await;
    if before == Some(Value::Integer(1)) {
        f.probes.committed_unseen += 1;
    }
    let retried =
        admin.with_deadline(Duration::from_secs(10)).execute_as(client_id, seq, statements(), false).await;
    let after = count(admin.clone()).await;
    match (retried, after) {
        (Ok(_), Some(Value::Integer(1))) => {}
        (r, a) => f.probes.problems.push(format!(
            "probe {seq}: after the retry under the same request id: {r:?}; rows with v = {v}: {a:?} (want exactly 1)"
        )),
    }
}

/// Rows of `clock` whose NOW() is at least an hour ahead of the clock of `unskewed`, a node
/// whose clock is right (`SELECT NOW()` at `ANY` runs on the node asked, so asking any node
/// could ask the shifted one).
async fn skewed_rows(cluster: &Cluster, admin: &Client, unskewed: &str) -> Result<usize, String> {
    let opts = QueryOptions { consistency: Consistency::Strong, ..Default::default() };
    let r = admin.query("SELECT node_time FROM clock", &[], opts).await.map_err(|e| e.to_string())?;
    let right = cluster.client_for([unskewed.to_string()]).await?;
    let now = right
        .query("SELECT NOW()", &[], QueryOptions { consistency: Consistency::Any, ..Default::default() })
        .await
        .map_err(|e| e.to_string())?;
    let now = match now.rows.first().and_then(|r| r.first()) {
        Some(Value::Text(t)) => t.clone(),
        other => return Err(format!("NOW() returned {other:?}")),
    };
    // Timestamps are ISO-8601 text: comparing the hour field is enough to tell a 2 h shift.
    let hour = |t: &str| t.get(0..13).map(str::to_string);
    Ok(r.rows
        .iter()
        .filter(|row| matches!(row.first(), Some(Value::Text(t)) if hour(t) > hour(&now)))
        .count())
}

/// Every acknowledged append is in its key's final list exactly once; no append that failed
/// is; an indeterminate one is there at most once.
async fn final_lists(admin: &Client, events: &[super::history::Event]) -> Result<Vec<String>, String> {
    use super::history::EventType;
    let opts = QueryOptions { consistency: Consistency::Strong, ..Default::default() };
    let r =
        admin.query("SELECT k, v FROM la", &[], opts).await.map_err(|e| format!("final read of la: {e}"))?;
    let mut lists: HashMap<i64, Vec<i64>> = HashMap::new();
    for row in &r.rows {
        if let (Some(Value::Integer(k)), Some(Value::Text(v))) = (row.first(), row.get(1)) {
            lists.insert(*k, v.split_whitespace().filter_map(|t| t.parse().ok()).collect());
        }
    }
    let mut counts: HashMap<(i64, i64), usize> = HashMap::new();
    for (k, list) in &lists {
        for v in list {
            *counts.entry((*k, *v)).or_default() += 1;
        }
    }
    let mut problems = Vec::new();
    let mut ok = 0;
    for e in events.iter().filter(|e| e.kind != EventType::Invoke) {
        let Some(mops) = e.value.as_array() else { continue };
        for m in mops.iter().filter(|m| m[0] == "append") {
            let (Some(k), Some(v)) = (m[1].as_i64(), m[2].as_i64()) else { continue };
            let n = counts.get(&(k, v)).copied().unwrap_or(0);
            let bad = match e.kind {
                EventType::Ok => {
                    ok += 1;
                    n != 1
                }
                EventType::Fail => n != 0,
                _ => n > 1,
            };
            if bad && problems.len() < 20 {
                problems.push(format!(
                    "append of {v} to key {k} completed {:?} (event {}) but is in the final list {n} times",
                    e.kind, e.index
                ));
            }
        }
    }
    if ok == 0 {
        problems.push("no list append was acknowledged during the whole run".into());
    }
    Ok(problems)
}

/// A `STRONG` read of two integer columns as a map.
async fn int_pairs(admin: &Client, sql: &str) -> Result<BTreeMap<i64, i64>, String> {
    let opts = QueryOptions { consistency: Consistency::Strong, ..Default::default() };
    let r = admin.query(sql, &[], opts).await.map_err(|e| format!("final read {sql:?}: {e}"))?;
    Ok(r.rows
        .iter()
        .filter_map(|row| match (row.first(), row.get(1)) {
            (Some(Value::Integer(a)), Some(Value::Integer(b))) => Some((*a, *b)),
            _ => None,
        })
        .collect())
}

async fn final_bank(admin: &Client) -> Result<Vec<String>, String> {
    let bals = int_pairs(admin, "SELECT id, bal FROM bank").await?;
    let total: i64 = bals.values().sum();
    let mut problems = Vec::new();
    if bals.len() != workload::BANK_ACCOUNTS || total != workload::BANK_TOTAL || bals.values().any(|b| *b < 0)
    {
        problems.push(format!(
            "final balances {bals:?} (total {total}, want {} over {} accounts, none negative)",
            workload::BANK_TOTAL,
            workload::BANK_ACCOUNTS
        ));
    }
    Ok(problems)
}

async fn final_sessions(admin: &Client, events: &[super::history::Event]) -> Result<Vec<String>, String> {
    use super::history::EventType;
    let finals = int_pairs(admin, "SELECT k, v FROM sess").await?;
    let mut last_ok: HashMap<i64, i64> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == EventType::Ok && e.f == "write") {
        if let (Some(k), Some(v)) = (e.value["key"].as_i64(), e.value["value"].as_i64()) {
            let slot = last_ok.entry(k).or_insert(v);
            *slot = (*slot).max(v);
        }
    }
    let mut problems = Vec::new();
    for (k, v) in last_ok {
        let got = finals.get(&k).copied();
        if got.is_none_or(|g| g < v) {
            problems.push(format!("session key {k}: acknowledged write of {v}, final value {got:?}"));
        }
    }
    Ok(problems)
}
