//! `differential`: raftsql's SQL engine against SQLite on generated schemas, data and queries,
//! with the TLP and NoREC oracles (see `raftsql_tests::differential`). A long local run:
//!
//!     cargo run --release -p raftsql-tests --bin differential -- --queries 1000000 --seed 7
//!
//! Prints a progress line every 100,000 queries, then the findings and the closing line
//! `N compared, N findings`; exits 1 if there were findings.

use clap::Parser;
use raftsql_tests::differential::{self, Options};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "differential", about = "Compare raftsql's SQL engine with SQLite on generated queries")]
struct Args {
    /// The first world's seed; each chunk of 100,000 queries takes the next.
    #[arg(long, default_value_t = 21)]
    seed: u64,
    /// Queries to compare with SQLite (the TLP and NoREC checks come on top).
    #[arg(long, default_value_t = 100_000)]
    queries: u64,
    /// Stop after this many seconds even if fewer queries ran.
    #[arg(long, default_value_t = 3_600)]
    time: u64,
    /// Queries per generated world (schema and data).
    #[arg(long, default_value_t = 40)]
    per_world: u64,
    /// Findings printed in full (all are counted).
    #[arg(long, default_value_t = 20)]
    show: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let deadline = std::time::Instant::now() + Duration::from_secs(args.time);
    let (mut compared, mut findings, mut checks, mut backend) = (0u64, 0u64, 0u64, 0u64);
    let mut unsupported = std::collections::BTreeMap::<String, u64>::new();
    let mut shown = 0;
    let mut chunk = 0;
    while compared < args.queries && std::time::Instant::now() < deadline {
        let opts = Options {
            seed: args.seed.wrapping_add(chunk),
            queries: (args.queries - compared).min(100_000),
            time: deadline.saturating_duration_since(std::time::Instant::now()),
            queries_per_world: args.per_world.max(1),
            keep: args.show.saturating_sub(shown),
        };
        let report = match differential::run(&opts) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("differential: {e}");
                return ExitCode::from(2);
            }
        };
        for f in &report.findings {
            println!("{f}");
        }
        shown += report.findings.len();
        compared += report.compared;
        findings += report.finding_count;
        checks += report.oracle_checks;
        backend += report.backend_differences;
        for (k, n) in &report.unsupported {
            *unsupported.entry(k.clone()).or_default() += n;
        }
        eprintln!("seed {}: {}", opts.seed, report.line());
        chunk += 1;
    }
    for (what, n) in &unsupported {
        println!("unsupported {n}×: {what}");
    }
    println!(
        "{compared} queries compared with SQLite, {checks} TLP/NoREC checks, {findings} findings, {backend} backend differences"
    );
    if findings == 0 && backend == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
