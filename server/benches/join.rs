//! Join planning (issue 21): a 30-table equality chain over 10-row tables, the shape of SQLite's
//! own join tests (`FROM t17, t3, t25, … WHERE t3.b = t17.a AND …`), on the engine alone.
//!
//! - `join/chain_30_written_in_order`: `FROM t0, t1, …, t29`, each equality linking a table to
//!   the one before it;
//! - `join/chain_30_shuffled`: the same tables and equalities, both listed in a shuffled order,
//!   so joining in the written order would cross tables no equality links yet;
//! - `join/star_6`: a 1,000-row fact table and five 10-row dimensions, the fact written last and
//!   filtered by a dimension's column.
//!
//! Each table `tI(a INTEGER, b INTEGER, x TEXT)` holds a = 0..9 and a permutation of 0..9 in b,
//! so the chain `tI.b = tI+1.a` has exactly 10 answers. Target (issue 21): under 10 ms for the
//! chain. Run: `cargo bench -p raftsql-server --bench join`.

use criterion::{criterion_group, criterion_main, Criterion};
use raftsql_server::sql::{self, Context, Executor, MemoryView};
use std::hint::black_box;
use std::time::Duration;

const TABLES: usize = 30;
const CTX: Context = Context { now_millis: 0, seed: 1 };

fn run(view: &mut MemoryView, sql: &str) {
    let mut ex = Executor::new(view, CTX);
    let (changes, _) = ex.execute(&[(sql.to_string(), vec![])], false).expect("evaluates");
    changes.iter().for_each(|c| view.apply(c));
}

fn chain_tables() -> MemoryView {
    let mut view = MemoryView::new();
    for t in 0..TABLES {
        run(&mut view, &format!("CREATE TABLE t{t}(a INTEGER, b INTEGER, x TEXT)"));
        let rows: Vec<String> = (0..10).map(|r| format!("({r}, {}, 'x{t}_{r}')", (r * 3 + t) % 10)).collect();
        run(&mut view, &format!("INSERT INTO t{t} VALUES {}", rows.join(", ")));
    }
    run(&mut view, "CREATE TABLE fact(id INTEGER PRIMARY KEY, d1 INTEGER, d2 INTEGER, d3 INTEGER, d4 INTEGER, d5 INTEGER)");
    for chunk in (0..1000).collect::<Vec<i64>>().chunks(250) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!("({i}, {}, {}, {}, {}, {})", i % 10, i / 10 % 10, i / 100, (i * 7) % 10, (i * 3) % 10)
            })
            .collect();
        run(&mut view, &format!("INSERT INTO fact VALUES {}", rows.join(", ")));
    }
    view
}

/// The chain's query, tables and conjuncts listed in the order `order` gives.
fn chain_query(order: impl Fn(usize) -> usize) -> String {
    let from: Vec<String> = (0..TABLES).map(|i| format!("t{}", order(i))).collect();
    let on: Vec<String> = (0..TABLES)
        .map(&order)
        .filter(|&t| t < TABLES - 1)
        .map(|t| format!("t{t}.b = t{}.a", t + 1))
        .collect();
    format!("SELECT t0.x, t{}.x FROM {} WHERE {}", TABLES - 1, from.join(", "), on.join(" AND "))
}

fn rows(view: &MemoryView, sql: &str) -> usize {
    sql::query(view, sql, &[], CTX).expect("answers").rows.len()
}

fn join(c: &mut Criterion) {
    let view = chain_tables();
    let in_order = chain_query(|i| i);
    // 7 is prime to 30, so this visits every table once, each far from its chain neighbours.
    let shuffled = chain_query(|i| (i * 7 + 3) % TABLES);
    let star = "SELECT count(*), sum(f.id) FROM t1 d1, t2 d2, t3 d3, t4 d4, t5 d5, fact f \
                WHERE f.d1 = d1.a AND f.d2 = d2.a AND f.d3 = d3.a AND f.d4 = d4.a AND f.d5 = d5.a \
                AND d1.b = 4";
    for q in [&in_order, &shuffled] {
        assert_eq!(rows(&view, q), 10, "{q}");
    }
    let mut g = c.benchmark_group("join");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    g.bench_function("chain_30_written_in_order", |b| b.iter(|| black_box(rows(&view, &in_order))));
    g.bench_function("chain_30_shuffled", |b| b.iter(|| black_box(rows(&view, &shuffled))));
    g.bench_function("star_6", |b| b.iter(|| black_box(rows(&view, star))));
    g.finish();
}

criterion_group!(benches, join);
criterion_main!(benches);
