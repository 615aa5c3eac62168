//! `raftsql bench`: load through the client library, measured (issue 18; `../shared/bench`).
//!
//! `raftsql [--addr ADDRS] [TLS and credential flags] bench --workload W --clients N
//! --duration SECS [--consistency C] [--rows K] [--value-size B] [--conns C] [--format F]
//! [--local [--tls]]`
//!
//! - Table `bench_kv(k TEXT PRIMARY KEY, v BLOB)`; keys are `k` and 15 digits, uniform over K.
//! - Workloads: `put` (single-row `INSERT OR REPLACE`), `insert` (fresh keys only), `update`
//!   (by primary key), `get` (point SELECT at `--consistency`), `index-get` (point SELECT
//!   through a secondary index), `scan` (100 rows in key order from a random key; ops are rows),
//!   `mixed` (90 % get, 10 % put), `fill` (K rows in 500-row requests; ops are rows). Reads and
//!   updates first load the K rows unless the last key is there (not timed).
//! - `index-get` uses its own table, `bench_ix(k TEXT PRIMARY KEY, n INTEGER NOT NULL, v BLOB)`
//!   with an index on `n` (row i has `n` = i), loaded the same way.
//! - N workers share C clients (`--conns`, default min(N, 8)), each with its own connections;
//!   every worker stops by itself at the deadline, and a request in flight then is bounded by
//!   the client's 10 s deadline.
//! - Latencies of successful operations go into an HDR histogram (µs); failed ones are counted
//!   by error code. `--format json` prints exactly one line on stdout in `../shared/bench`'s
//!   format; text prints a progress line on stderr each second and a summary.
//! - `--local` starts a throwaway 3-node cluster on loopback (as `raftsql demo` does, but with
//!   the server's default settings, not the demo's snapshot every 100 entries, and peers on
//!   their own ports (`--peer-listen`) as deploy/ runs them; with `--tls`, TLS on both ports),
//!   runs, and removes it.

use hdrhistogram::Histogram;
use raftsql_client::{Client, Consistency, QueryOptions, Value};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Put,
    Insert,
    Update,
    Get,
    IndexGet,
    Scan,
    Mixed,
    Fill,
}

/// Rows a `scan` reads per request.
const SCAN_ROWS: u64 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchFormat {
    Text,
    Json,
}

/// Flags of `raftsql bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// Concurrent workers.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds to run (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Read consistency of `get` and `mixed`: strong, ryw, bounded:DURATION or any.
    #[arg(long, default_value = "strong", value_parser = crate::shell::parse_consistency)]
    pub consistency: Consistency,
    /// Keys the workload draws from (and `fill` loads).
    #[arg(long, default_value_t = 100_000)]
    pub rows: u64,
    /// Bytes of each value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Clients (each with its own connections) the workers share; default min(clients, 8).
    #[arg(long)]
    pub conns: Option<usize>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: BenchFormat,
    /// Start a throwaway local 3-node cluster, run against it, remove it.
    #[arg(long)]
    pub local: bool,
    /// With --local: TLS on both ports of the local cluster.
    #[arg(long, requires = "local")]
    pub tls: bool,
}

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub system: &'static str,
    pub workload: String,
    /// The read consistency of `get` and `mixed` ("-" for the others).
    pub consistency: String,
    pub clients: usize,
    pub duration_s: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    #[serde(skip)]
    pub errors_by_code: BTreeMap<&'static str, u64>,
}

const MAX_CLIENTS: usize = 10_000;
const FILL_BATCH: u64 = 500;

/// Latencies in µs, 1 µs to 60 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds that hdrhistogram accepts")
}

fn key(i: u64) -> String {
    format!("k{i:015}")
}

fn value(size: usize, rng: &mut impl Rng) -> Value {
    Value::Blob((0..size).map(|_| rng.gen()).collect())
}

/// Runs the benchmark against `client`'s cluster.
pub async fn run(client: &Client, a: &BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!((1..=MAX_CLIENTS).contains(&a.clients), "--clients must be 1 to {MAX_CLIENTS}");
    anyhow::ensure!(
        a.duration > 0.0 && a.duration <= 86_400.0,
        "--duration must be above 0 and at most a day"
    );
    anyhow::ensure!(a.rows >= 1 && a.rows < 100_000_000_000_000, "--rows must be 1 to 10^14");
    anyhow::ensure!(a.value_size <= 1 << 20, "--value-size must be at most 1 MiB");
    let table = table(a.workload);
    let create = if table == "bench_ix" {
        "CREATE TABLE IF NOT EXISTS bench_ix (k TEXT PRIMARY KEY, n INTEGER NOT NULL, v BLOB); \
         CREATE INDEX IF NOT EXISTS bench_ix_n ON bench_ix (n)"
    } else {
        "CREATE TABLE IF NOT EXISTS bench_kv (k TEXT PRIMARY KEY, v BLOB)"
    };
    let created = client.execute(create, &[]).await.map_err(|e| anyhow::anyhow!("creating {table}: {e}"))?;
    for r in created.results {
        r.map_err(|e| anyhow::anyhow!("creating {table}: {e}"))?;
    }
    if !matches!(a.workload, Workload::Put | Workload::Insert | Workload::Fill) {
        // Loaded means the last key is there (fill writes every key up to it). Not COUNT(*):
        // that reads the whole table, and a 1,000,000-row one exceeds a node's working memory.
        let r = client
            .query(
                &format!("SELECT 1 FROM {table} WHERE k = $1"),
                &[Value::Text(key(a.rows - 1))],
                QueryOptions::default(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("looking for the last key of {table}: {e}"))?;
        let loaded = !r.rows.is_empty();
        if !loaded {
            if a.format == BenchFormat::Text {
                eprintln!("loading {} rows first (not timed)...", a.rows);
            }
            let load = BenchArgs {
                workload: Workload::Fill,
                duration: 3600.0,
                format: BenchFormat::Json,
                ..a.clone()
            };
            measure(client, &load, table).await?;
        }
    }
    measure(client, a, table).await
}

/// The table a workload works on.
fn table(w: Workload) -> &'static str {
    match w {
        Workload::IndexGet => "bench_ix",
        _ => "bench_kv",
    }
}

async fn measure(client: &Client, a: &BenchArgs, table: &'static str) -> anyhow::Result<Report> {
    let conns = a.conns.unwrap_or(a.clients.min(8)).clamp(1, a.clients);
    let clients: Vec<Client> = (0..conns).map(|_| client.with_own_connections()).collect();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let next_fill = Arc::new(AtomicU64::new(0));
    let next_insert = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(a.duration);
    let progress = (a.format == BenchFormat::Text).then(|| {
        let (done, failed) = (done.clone(), failed.clone());
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprint!(
                    "\r{:>6.1}s  {:>8} ops/s  {} errors   ",
                    started.elapsed().as_secs_f64(),
                    now - last,
                    failed.load(Ordering::Relaxed)
                );
                last = now;
            }
        })
    });
    let mut workers = Vec::new();
    for w in 0..a.clients {
        let c = clients[w % conns].clone();
        let a = a.clone();
        let (done, failed, next_fill, next_insert) =
            (done.clone(), failed.clone(), next_fill.clone(), next_insert.clone());
        workers.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
            let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
            let read = QueryOptions { consistency: a.consistency, ..Default::default() };
            while Instant::now() < deadline {
                let t = Instant::now();
                let (result, n) = match a.workload {
                    Workload::Fill => {
                        let first = next_fill.fetch_add(FILL_BATCH, Ordering::Relaxed);
                        if first >= a.rows {
                            break;
                        }
                        let last = (first + FILL_BATCH).min(a.rows);
                        let mut sql = format!("INSERT OR REPLACE INTO {table} VALUES ");
                        let mut params = Vec::new();
                        for (j, i) in (first..last).enumerate() {
                            if j > 0 {
                                sql.push_str(", ");
                            }
                            params.push(Value::Text(key(i)));
                            if table == "bench_ix" {
                                sql.push_str(&format!("(${}, ${}, ${})", 3 * j + 1, 3 * j + 2, 3 * j + 3));
                                params.push(Value::Integer(i as i64));
                            } else {
                                sql.push_str(&format!("(${}, ${})", 2 * j + 1, 2 * j + 2));
                            }
                            params.push(value(a.value_size, &mut rng));
                        }
                        (c.execute(&sql, &params).await.map(|_| ()), last - first)
                    }
                    Workload::Put => {
                        let params =
                            [Value::Text(key(rng.gen_range(0..a.rows))), value(a.value_size, &mut rng)];
                        (
                            c.execute("INSERT OR REPLACE INTO bench_kv VALUES ($1, $2)", &params)
                                .await
                                .map(|_| ()),
                            1,
                        )
                    }
                    Workload::Insert => {
                        // Fresh keys above the K drawn from, counted across workers.
                        let i = 100_000_000_000_000 + next_insert.fetch_add(1, Ordering::Relaxed);
                        let params = [
                            Value::Text(format!("i{:015}", i % 1_000_000_000_000_000)),
                            value(a.value_size, &mut rng),
                        ];
                        (c.execute("INSERT INTO bench_kv VALUES ($1, $2)", &params).await.map(|_| ()), 1)
                    }
                    Workload::Update => {
                        let params =
                            [Value::Text(key(rng.gen_range(0..a.rows))), value(a.value_size, &mut rng)];
                        (c.execute("UPDATE bench_kv SET v = $2 WHERE k = $1", &params).await.map(|_| ()), 1)
                    }
                    Workload::Get => {
                        let params = [Value::Text(key(rng.gen_range(0..a.rows)))];
                        (
                            c.query("SELECT v FROM bench_kv WHERE k = $1", &params, read.clone())
                                .await
                                .map(|_| ()),
                            1,
                        )
                    }
                    Workload::IndexGet => {
                        let params = [Value::Integer(rng.gen_range(0..a.rows) as i64)];
                        (
                            c.query("SELECT v FROM bench_ix WHERE n = $1", &params, read.clone())
                                .await
                                .map(|_| ()),
                            1,
                        )
                    }
                    Workload::Scan => {
                        let params = [Value::Text(key(rng.gen_range(0..a.rows)))];
                        let sql =
                            format!("SELECT k, v FROM bench_kv WHERE k >= $1 ORDER BY k LIMIT {SCAN_ROWS}");
                        match c.query(&sql, &params, read.clone()).await {
                            Ok(r) => (Ok(()), r.rows.len() as u64),
                            Err(e) => (Err(e), 0),
                        }
                    }
                    Workload::Mixed => {
                        let k = Value::Text(key(rng.gen_range(0..a.rows)));
                        if rng.gen_range(0..10) == 0 {
                            let params = [k, value(a.value_size, &mut rng)];
                            (
                                c.execute("INSERT OR REPLACE INTO bench_kv VALUES ($1, $2)", &params)
                                    .await
                                    .map(|_| ()),
                                1,
                            )
                        } else {
                            (
                                c.query("SELECT v FROM bench_kv WHERE k = $1", &[k], read.clone())
                                    .await
                                    .map(|_| ()),
                                1,
                            )
                        }
                    }
                };
                match result {
                    Ok(()) => {
                        let _ = hist.record((t.elapsed().as_micros() as u64).clamp(1, 60_000_000));
                        done.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        *errors.entry(e.code()).or_default() += 1;
                        failed.fetch_add(1, Ordering::Relaxed);
                        // A shedding node asked for a pause: honour it (within the run), as a
                        // well-behaved client would, rather than hammer it.
                        if let raftsql_client::Error::ResourceExhausted { retry_after: Some(pause), .. } = e {
                            let left = deadline.saturating_duration_since(Instant::now());
                            tokio::time::sleep(pause.min(left)).await;
                        }
                    }
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = histogram();
    let mut errors_by_code: BTreeMap<&'static str, u64> = BTreeMap::new();
    for w in workers {
        let (h, e) = w.await.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
        hist.add(&h).map_err(|e| anyhow::anyhow!("merging histograms: {e}"))?;
        for (code, n) in e {
            *errors_by_code.entry(code).or_default() += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let ops = done.load(Ordering::Relaxed);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let consistency = match a.workload {
        Workload::Get | Workload::IndexGet | Workload::Scan | Workload::Mixed => {
            format!("{:?}", a.consistency).to_lowercase()
        }
        _ => "-".to_string(),
    };
    Ok(Report {
        system: "raftsql",
        workload: clap::ValueEnum::to_possible_value(&a.workload)
            .map_or_else(|| format!("{:?}", a.workload), |v| v.get_name().to_string()),
        consistency,
        clients: a.clients,
        duration_s: (elapsed * 1000.0).round() / 1000.0,
        ops,
        ops_per_sec: (ops as f64 / elapsed * 10.0).round() / 10.0,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: hist.max() as f64 / 1000.0,
        errors: errors_by_code.values().sum(),
        errors_by_code,
    })
}

impl Report {
    /// The one JSON line of `--format json`.
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a report serializes")
    }

    /// The readable summary of `--format text`.
    pub fn text(&self) -> String {
        let mut s = format!(
            "{} ({}) with {} clients for {:.1} s: {} ops, {:.1} ops/s\nlatency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}\nerrors: {}",
            self.workload,
            self.consistency,
            self.clients,
            self.duration_s,
            self.ops,
            self.ops_per_sec,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
            self.errors
        );
        for (code, n) in &self.errors_by_code {
            s.push_str(&format!("\n  {code}: {n}"));
        }
        s
    }
}
