//! Point lookups do not scan: a lookup by primary key or by a secondary index costs about the
//! same on a 1,000,000-row table as on a 1,000-row one.
//!
//! For each table size N (env `RAFTSQL_BENCH_ROWS`, default `1000,1000000`) the bench opens the
//! real sled store (`store::open`) in a temp dir and loads `t (id INTEGER PRIMARY KEY, v INTEGER,
//! s TEXT)` with an index on `v` by applying `ChangeSet`s through `RaftStateMachine::apply`, as
//! openraft does on commit (no log, no Raft, no SQL on the write side): one entry creates the
//! table and the index, then one entry per 10,000 inserted rows. Row `id` (0..N) holds
//! `v = id % (N / 4)`, so every `v` matches 4 rows at every N, and `s = "s{id}"`.
//!
//! It then times single queries through `sql::query` inside `StateMachine::read`, as
//! `raft::read::query` serves a read (minus its blocking-thread hop). Each query shape gets a
//! warm-up on each table, then 5 rounds of up to 2,000 lookups of random keys; the rounds visit
//! every table and shape in turn, so that a burst of load from a neighbour on a shared machine
//! lands on all of them alike rather than on one table's figures. It reports the median (p50) and
//! p99 latency per lookup and the p50 ratio between the largest and the smallest N. A shape that
//! scans gets fewer lookups (at least 3), so that it spends about `BUDGET` per table; the output
//! says how many it made. An unindexed full scan per N is timed for contrast (median of 3).
//!
//! `cargo bench -p raftsql-server --bench lookup` runs it. Run without `--bench` (as `cargo test
//! --all-targets` does), it is a quick smoke test on 1,000 rows.

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use raftsql_server::changeset::{
    Change, ChangeSet, Column, DataType, IndexSchema, RequestEffects, TableSchema, Value,
};
use raftsql_server::store::{self, LogStore, StateMachine};
use raftsql_server::typ::{Entry, LogId};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Rows per `ChangeSet` (one log entry) while loading.
/// Reads' clock and random seed (no query here calls NOW() or RANDOM()).
const CTX: raftsql_server::sql::Context = raftsql_server::sql::Context { now_millis: 0, seed: 1 };
const BATCH_ROWS: i64 = 10_000;
/// Rows each value of `v` matches.
const ROWS_PER_V: i64 = 4;
/// Time a query shape may spend on its measured rounds on one table, when one lookup is slow.
const BUDGET: Duration = Duration::from_secs(3);
/// Full scans timed per table (the median is reported).
const SCAN_RUNS: usize = 3;

/// How much to measure: full for `cargo bench`, a smoke test otherwise.
struct Plan {
    rows: Vec<i64>,
    rounds: usize,
    lookups: usize,
    warmup: usize,
}

impl Plan {
    fn from_env() -> Plan {
        let bench = std::env::args().any(|a| a == "--bench");
        let default_rows = if bench { "1000,1000000" } else { "1000" };
        let spec = std::env::var("RAFTSQL_BENCH_ROWS").unwrap_or_else(|_| default_rows.to_string());
        let rows = spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s.replace('_', "").parse::<i64>() {
                Ok(n) if n >= ROWS_PER_V => n,
                _ => panic!(
                    "RAFTSQL_BENCH_ROWS: {s:?} is not a row count >= {ROWS_PER_V} (e.g. \"1000,1000000\")"
                ),
            })
            .collect::<Vec<_>>();
        assert!(!rows.is_empty(), "RAFTSQL_BENCH_ROWS is empty: give row counts, e.g. \"1000,1000000\"");
        if bench {
            Plan { rows, rounds: 5, lookups: 2_000, warmup: 200 }
        } else {
            Plan { rows, rounds: 1, lookups: 20, warmup: 5 }
        }
    }
}

/// A query shape: SQL with one parameter, and whether it looks up `id` or `v`.
struct Shape {
    label: &'static str,
    sql: &'static str,
    /// Draws from `v`'s values instead of `id`'s.
    by_v: bool,
}

/// Both placeholder spellings, since an engine may plan `?` and `$1` differently (the engine
/// before the planner did: a `?` anywhere in WHERE turned its primary-key shortcut off).
const SHAPES: [Shape; 4] = [
    Shape { label: "pk ?", sql: "SELECT * FROM t WHERE id = ?", by_v: false },
    Shape { label: "pk $1", sql: "SELECT * FROM t WHERE id = $1", by_v: false },
    Shape { label: "index ?", sql: "SELECT * FROM t WHERE v = ?", by_v: true },
    Shape { label: "index $1", sql: "SELECT * FROM t WHERE v = $1", by_v: true },
];
const SCAN_SQL: &str = "SELECT * FROM t WHERE s = 'nope'";

/// One loaded table in its own store.
struct Table {
    n: i64,
    sm: StateMachine,
    _log: LogStore,
    /// Last, so that the directory is removed after the store handles above are dropped.
    _dir: TempDir,
}

/// The plan for one shape on one table, and its samples.
struct Run {
    rounds: usize,
    lookups: usize,
    samples: Vec<Duration>,
}

impl Run {
    /// The latency at quantile `q` (the samples must be sorted).
    fn at(&self, q: f64) -> Duration {
        self.samples[((self.samples.len() - 1) as f64 * q).round() as usize]
    }
}

/// splitmix64: a fixed, dependency-free random source, so every run draws the same keys.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: i64) -> i64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as i64
    }
}

fn main() {
    let plan = Plan::from_env();
    let started = Instant::now();
    println!(
        "lookup bench: N = {:?}; {} rounds of up to {} lookups per query shape and table (a scanning \
         shape gets fewer, ~{:?} per table)\n",
        plan.rows, plan.rounds, plan.lookups, BUDGET
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for RaftStateMachine::apply");
    let tables: Vec<Table> = plan.rows.iter().map(|&n| open_and_load(&runtime, n)).collect();

    let mut rng = Rng(0x5EED);
    let mut runs: Vec<Vec<Run>> = tables
        .iter()
        .map(|table| SHAPES.iter().map(|shape| calibrate(&plan, table, shape, &mut rng)).collect())
        .collect();
    for round in 0..plan.rounds {
        for (table, table_runs) in tables.iter().zip(&mut runs) {
            for (shape, run) in SHAPES.iter().zip(table_runs.iter_mut()) {
                if round < run.rounds {
                    for _ in 0..run.lookups {
                        run.samples.push(lookup(table, shape, &mut rng));
                    }
                }
            }
        }
    }

    for (table, table_runs) in tables.iter().zip(&mut runs) {
        println!("\nN = {}:", table.n);
        println!("  {:<10} {:<32} {:>8} {:>12} {:>12}", "shape", "sql", "lookups", "p50 µs", "p99 µs");
        for (shape, run) in SHAPES.iter().zip(table_runs.iter_mut()) {
            run.samples.sort();
            let (p50, p99) = (micros(run.at(0.5)), micros(run.at(0.99)));
            println!(
                "  {:<10} {:<32} {:>8} {p50:>12.1} {p99:>12.1}",
                shape.label,
                shape.sql,
                run.samples.len()
            );
        }
        let scan = full_scan(table);
        println!("  {:<10} {SCAN_SQL:<32} {SCAN_RUNS:>8} {:>12.1} (median)", "full scan", micros(scan));
    }
    summarize(&tables, &runs);
    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
}

/// Opens a fresh store in a temp dir and loads a table of `n` rows into it.
fn open_and_load(runtime: &tokio::runtime::Runtime, n: i64) -> Table {
    let dir = tempfile::tempdir().expect("create a temp dir for the store");
    let opts = store::Options {
        data_dir: dir.path().join("data"),
        node_id: 1,
        flush_every: None,
        cache_bytes: store::DEFAULT_CACHE_BYTES,
    };
    let (log, mut sm) = store::open(&opts).expect("open a fresh store");
    let started = Instant::now();
    let entries = load(runtime, &mut sm, n);
    let took = started.elapsed().as_secs_f64();
    println!(
        "N = {n}: loaded in {took:.2} s ({entries} entries, {:.0} rows/s; apply only: no log append, no fsync)",
        n as f64 / took
    );
    Table { n, sm, _log: log, _dir: dir }
}

fn col(name: &str, data_type: DataType) -> Column {
    Column { name: name.into(), data_type, nullable: true, default: None }
}

fn entry(index: u64, changes: Vec<Change>) -> Entry {
    let cs = ChangeSet::new(vec![RequestEffects { request_id: None, changes, outcomes: vec![] }]);
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal((&cs).into()),
    }
}

/// Applies the table, its index and `n` rows; returns how many entries that took.
fn load(runtime: &tokio::runtime::Runtime, sm: &mut StateMachine, n: i64) -> u64 {
    let schema = TableSchema {
        name: "t".into(),
        columns: vec![col("id", DataType::Integer), col("v", DataType::Integer), col("s", DataType::Text)],
        primary_key: vec![0],
        indexes: vec![],
    };
    let index = IndexSchema { name: "t_v".into(), table: "t".into(), columns: vec![1], unique: false };
    // The index comes before the rows: apply then maintains it row by row. Created after them, it
    // is built inside one entry that holds every index entry in memory (store's known gaps): on
    // 200,000 rows that one entry took ~4-5 s and peak memory went from ~340 MB to ~1.1 GB.
    let mut entries = vec![entry(1, vec![Change::CreateTable(schema), Change::CreateIndex(index)])];
    let v_values = n / ROWS_PER_V;
    let mut next = 0;
    while next < n {
        let end = (next + BATCH_ROWS).min(n);
        let changes = (next..end)
            .map(|id| Change::Insert {
                table: "t".into(),
                key: vec![Value::Integer(id)],
                row: vec![Value::Integer(id), Value::Integer(id % v_values), Value::Text(format!("s{id}"))],
            })
            .collect();
        entries.push(entry(entries.len() as u64 + 1, changes));
        next = end;
    }
    let count = entries.len() as u64;
    // One entry per apply call, as openraft hands over a committed entry at a time under load.
    for e in entries {
        runtime.block_on(RaftStateMachine::apply(sm, vec![e])).expect("apply a load entry");
    }
    count
}

/// Runs one lookup of `shape` for a random key and checks the answer; returns its latency.
fn lookup(table: &Table, shape: &Shape, rng: &mut Rng) -> Duration {
    let (n, v_values) = (table.n, table.n / ROWS_PER_V);
    let key = if shape.by_v { rng.below(v_values) } else { rng.below(n) };
    let params = [Value::Integer(key)];
    let t = Instant::now();
    let result = table.sm.read(|view| raftsql_server::sql::query(view, shape.sql, &params, CTX));
    let took = t.elapsed();
    let result = result.unwrap_or_else(|e| panic!("{} with {key}: {e}", shape.sql));
    // Rows with `v = key` are ids key, key + v_values, … below n.
    let expected = if shape.by_v { ((n - 1 - key) / v_values + 1) as usize } else { 1 };
    assert_eq!(result.rows.len(), expected, "{} with {key}: {:?}", shape.sql, result.rows);
    let column = usize::from(shape.by_v);
    assert!(result.rows.iter().all(|r| r[column] == Value::Integer(key)), "{} with {key}", shape.sql);
    black_box(result);
    took
}

/// Warms `shape` up on `table` and decides its rounds: `plan.rounds` rounds of as many lookups as
/// a round's share of `BUDGET` pays for (at most `plan.lookups`); a scanning shape (one lookup
/// slower than that share) gets one lookup in each of 3 to `plan.rounds` rounds.
fn calibrate(plan: &Plan, table: &Table, shape: &Shape, rng: &mut Rng) -> Run {
    let warm_start = Instant::now();
    let mut warm = 0;
    while warm < plan.warmup && (warm == 0 || warm_start.elapsed() < Duration::from_millis(300)) {
        lookup(table, shape, rng);
        warm += 1;
    }
    let per_lookup = (warm_start.elapsed() / warm as u32).max(Duration::from_nanos(1));
    let per_round = BUDGET / plan.rounds as u32;
    let (rounds, lookups) = if per_lookup >= per_round {
        let affordable = (BUDGET.as_nanos() / per_lookup.as_nanos()) as usize;
        (affordable.clamp(plan.rounds.min(3), plan.rounds), 1)
    } else {
        (plan.rounds, ((per_round.as_nanos() / per_lookup.as_nanos()) as usize).min(plan.lookups))
    };
    Run { rounds, lookups, samples: Vec::with_capacity(rounds * lookups) }
}

/// The median time of `SCAN_RUNS` runs of `SCAN_SQL`, which matches no row.
fn full_scan(table: &Table) -> Duration {
    let mut times: Vec<Duration> = (0..SCAN_RUNS)
        .map(|_| {
            let t = Instant::now();
            let result = table.sm.read(|view| raftsql_server::sql::query(view, SCAN_SQL, &[], CTX));
            let took = t.elapsed();
            let result = result.unwrap_or_else(|e| panic!("{SCAN_SQL}: {e}"));
            assert!(result.rows.is_empty(), "{SCAN_SQL} found rows");
            took
        })
        .collect();
    times.sort();
    times[SCAN_RUNS / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The p50 ratio of the largest table to the smallest, per shape.
fn summarize(tables: &[Table], runs: &[Vec<Run>]) {
    let by_size = |i: &usize| tables[*i].n;
    let (Some(small), Some(large)) =
        ((0..tables.len()).min_by_key(by_size), (0..tables.len()).max_by_key(by_size))
    else {
        return;
    };
    if tables[small].n == tables[large].n {
        return;
    }
    println!(
        "\np50 ratio N = {} / N = {} (about 1: the lookup does not scan; a scan grows with N):",
        tables[large].n, tables[small].n
    );
    for (i, shape) in SHAPES.iter().enumerate() {
        let ratio = runs[large][i].at(0.5).as_secs_f64() / runs[small][i].at(0.5).as_secs_f64();
        println!("  {:<10} {:<32} {:>8.2}x", shape.label, shape.sql, ratio);
    }
}
