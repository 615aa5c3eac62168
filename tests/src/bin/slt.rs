//! `slt`: runs sqllogictest files (`*.test`, `*.slt`) through raftsql and counts the records
//! that pass. See `raftsql_tests::slt` for the format and the rules.
//!
//!     cargo run --release -p raftsql-tests --bin slt -- ../shared/sqllogictest
//!     cargo run --release -p raftsql-tests --bin slt -- --addr 127.0.0.1:7001,127.0.0.1:7002 tests/slt
//!     cargo run --release -p raftsql-tests --bin slt -- --in-process ../shared/sqllogictest
//!
//! Without `--addr`, every file runs on a fresh local 3-node cluster of real `raftsql-server`
//! processes (built next to this binary first; `RAFTSQL_BIN_DIR` names other binaries). With
//! `--in-process`, on the SQL engine in this process over two storage backends at once
//! (`raftsql_tests::engine`); a disagreement between them fails the run.

use clap::Parser;
use raftsql_tests::slt::{self, RunOptions, Target};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "slt", about = "Run sqllogictest files against raftsql")]
struct Args {
    /// A running cluster ("host:port,host:port,..."); without it, a fresh local cluster per
    /// file. On a shared cluster, files run one at a time and the tables a file created are
    /// dropped after it.
    #[arg(long, value_delimiter = ',', conflicts_with = "in_process")]
    addr: Vec<String>,
    /// Run on the SQL engine in this process, over an in-memory and a sled backend at once,
    /// instead of a cluster.
    #[arg(long)]
    in_process: bool,
    /// Show every failure (not only the first few per file).
    #[arg(long, short)]
    verbose: bool,
    /// Failures shown per file.
    #[arg(long, default_value_t = 5)]
    max_failures_shown: usize,
    /// Exit 0 when at least this percentage of the records run passed (default: all must pass).
    #[arg(long, value_name = "PERCENT")]
    min_pass: Option<f64>,
    /// Files run at once, each on its own cluster (ignored with --addr).
    #[arg(long, short, default_value_t = 1)]
    jobs: usize,
    /// Read queries in flight at once between two statements.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds one record may take before it fails as timed out.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Files, or directories walked for *.test and *.slt files in sorted order.
    #[arg(required = true, value_name = "FILE_OR_DIR")]
    paths: Vec<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let files = match slt::collect_files(&args.paths) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            eprintln!("slt: no *.test or *.slt files under {:?}", args.paths);
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("slt: no such file or directory: {e}");
            return ExitCode::from(2);
        }
    };
    let shown = if args.verbose { usize::MAX } else { args.max_failures_shown };
    let opts = RunOptions {
        record_timeout: Duration::from_secs(args.timeout.max(1)),
        concurrency: args.concurrency.max(1),
        keep_failures: shown.min(100_000),
        truncate: if args.verbose { 4000 } else { 400 },
        ..RunOptions::default()
    };
    let target = if args.in_process {
        Target::InProcess
    } else if args.addr.is_empty() {
        Target::FreshCluster
    } else {
        Target::Addrs(args.addr.clone())
    };
    let run = slt::run_files(&files, &target, &opts, args.jobs, |report| {
        println!("{}", slt::describe(report, shown));
        if args.verbose {
            println!("  ({} run in {:.1} s)", report.run, report.elapsed.as_secs_f64());
        }
    });
    // Ctrl-C drops the run, and with it every cluster it started (their processes are killed).
    let summary = tokio::select! {
        s = run => s,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("slt: interrupted");
            return ExitCode::from(130);
        }
    };
    println!("{}", summary.totals());
    let ok = summary.differences() == 0
        && (summary.failed() == 0 || args.min_pass.is_some_and(|p| summary.pass_rate() >= p));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
