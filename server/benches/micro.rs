//! Micro-benchmarks of the steps every write and read goes through (issue 18), with criterion:
//!
//! - `eval/insert_one_row`: the leader's evaluation of a single-row `INSERT OR REPLACE` (parse,
//!   plan, constraint checks, the row image) over a 10,000-row table, as the sequencer does it;
//! - `eval/point_select`: `SELECT v FROM kv WHERE k = $1` by primary key over the same table;
//! - `changeset/encode_100_rows` and `changeset/decode_100_rows`: a 100-row entry to and from the
//!   bytes the log and AppendEntries carry (`EncodedChangeSet`, with its CRC-32);
//! - `apply/100_rows`: applying such an entry to the real sled state machine (one atomic batch:
//!   rows, request record, applied index). Apply never asks for a flush, but sled writes and
//!   fdatasyncs its buffers at every batch (vendor/sled/PATCHES.md), which this includes.
//!
//! - `store_read/point_select_planned_once` and `store_read/point_select_bound_every_time`: the
//!   same point SELECT over the real sled state machine, as a node reads, with the plan cache
//!   (`sql::plan_cache`) on and off: what binding costs over sled (a schema read and decoded).
//!
//! Run: `cargo bench -p raftsql-server --bench micro` (a few minutes; `-- eval` for one group).
//! The tables evaluated over are in-memory (`sql::MemoryView`), so `eval/*` is the SQL engine's
//! own cost; `benches/lookup.rs` measures lookups in sled at 1,000 and 1,000,000 rows.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use raftsql_server::changeset::{
    Change, ChangeSet, Column, DataType, EncodedChangeSet, RequestEffects, TableSchema, Value,
};
use raftsql_server::sql::{self, Context, Executor, MemoryView};
use raftsql_server::store;
use raftsql_server::typ::{Entry, LogId};
use std::hint::black_box;

const ROWS: i64 = 10_000;
const CTX: Context = Context { now_millis: 0, seed: 1 };

fn schema() -> TableSchema {
    let col = |name: &str, data_type| Column { name: name.into(), data_type, nullable: true, default: None };
    TableSchema {
        name: "kv".into(),
        columns: vec![col("k", DataType::Text), col("v", DataType::Blob)],
        primary_key: vec![0],
        indexes: vec![],
    }
}

fn key(i: i64) -> Value {
    Value::Text(format!("k{i:015}"))
}

fn row_change(i: i64) -> Change {
    Change::Insert { table: "kv".into(), key: vec![key(i)], row: vec![key(i), Value::Blob(vec![7; 100])] }
}

fn table() -> MemoryView {
    let mut view = MemoryView::new();
    view.apply(&Change::CreateTable(schema()));
    for i in 0..ROWS {
        view.apply(&row_change(i));
    }
    view
}

fn hundred_rows() -> ChangeSet {
    ChangeSet::new(vec![RequestEffects {
        request_id: None,
        changes: (0..100).map(row_change).collect(),
        outcomes: vec![],
    }])
}

fn eval(c: &mut Criterion) {
    let view = table();
    let mut g = c.benchmark_group("eval");
    let mut i = 0;
    g.bench_function("insert_one_row", |b| {
        b.iter(|| {
            i = (i + 7919) % ROWS;
            let mut ex = Executor::new(&view, CTX);
            let stmt = vec![(
                "INSERT OR REPLACE INTO kv VALUES ($1, $2)".to_string(),
                vec![key(i), Value::Blob(vec![1; 100])],
            )];
            black_box(ex.execute(&stmt, false).expect("evaluates"))
        })
    });
    g.bench_function("point_select", |b| {
        b.iter(|| {
            i = (i + 7919) % ROWS;
            black_box(sql::query(&view, "SELECT v FROM kv WHERE k = $1", &[key(i)], CTX).expect("answers"))
        })
    });
    g.finish();
}

fn changeset(c: &mut Criterion) {
    let cs = hundred_rows();
    let encoded = EncodedChangeSet::encode(&cs);
    let mut g = c.benchmark_group("changeset");
    g.bench_function("encode_100_rows", |b| b.iter(|| black_box(EncodedChangeSet::encode(black_box(&cs)))));
    g.bench_function("decode_100_rows", |b| b.iter(|| black_box(encoded.decode().expect("decodes"))));
    g.finish();
}

fn apply(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let (_log, mut sm) = fresh_store(&dir);
    let entry = |index: u64, cs: &ChangeSet| Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(EncodedChangeSet::encode(cs)),
    };
    let create = ChangeSet::new(vec![RequestEffects {
        request_id: None,
        changes: vec![Change::CreateTable(schema())],
        outcomes: vec![],
    }]);
    runtime.block_on(sm.apply([entry(1, &create)])).expect("create the table");
    let rows = hundred_rows();
    let mut index = 1;
    c.bench_function("apply/100_rows", |b| {
        b.iter_batched(
            || {
                index += 1;
                entry(index, &rows)
            },
            |e| runtime.block_on(sm.apply([e])).expect("applies"),
            BatchSize::SmallInput,
        )
    });
}

/// A store in `dir` that never flushes on its own (what is measured is the work, not the disk).
fn fresh_store(dir: &tempfile::TempDir) -> (store::LogStore, store::StateMachine) {
    let opts = store::Options {
        data_dir: dir.path().join("data"),
        node_id: 1,
        flush_every: None,
        cache_bytes: store::DEFAULT_CACHE_BYTES,
    };
    store::open(&opts).expect("a fresh store")
}

fn store_read(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let (_log, mut sm) = fresh_store(&dir);
    let entry = |index: u64, changes: Vec<Change>| Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(EncodedChangeSet::encode(&ChangeSet::new(vec![RequestEffects {
            request_id: None,
            changes,
            outcomes: vec![],
        }]))),
    };
    let mut entries = vec![entry(1, vec![Change::CreateTable(schema())])];
    for (n, chunk) in (0..ROWS).collect::<Vec<_>>().chunks(100).enumerate() {
        entries.push(entry(n as u64 + 2, chunk.iter().map(|&i| row_change(i)).collect()));
    }
    runtime.block_on(sm.apply(entries)).expect("load the table");
    let mut g = c.benchmark_group("store_read");
    let mut i = 0;
    for (name, bytes) in
        [("point_select_planned_once", sql::plan_cache::DEFAULT_BYTES), ("point_select_bound_every_time", 0)]
    {
        sql::plan_cache::configure(bytes);
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 7919) % ROWS;
                sm.read(|v| {
                    black_box(
                        sql::query(v, "SELECT v FROM kv WHERE k = $1", &[key(i)], CTX).expect("answers"),
                    )
                })
            })
        });
    }
    sql::plan_cache::configure(sql::plan_cache::DEFAULT_BYTES);
    g.finish();
}

criterion_group!(benches, eval, changeset, apply, store_read);
criterion_main!(benches);
