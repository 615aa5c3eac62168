//! `nemesis`: runs fault-injection schedules against a fresh local cluster and checks the
//! histories. See `raftsql_tests::nemesis` and docs/testing.md.
//!
//!     cargo run -p raftsql-tests --bin nemesis -- --list
//!     cargo run -p raftsql-tests --bin nemesis -- --schedule isolate-leader --time 120 --seed 7
//!     cargo run --release -p raftsql-tests --bin nemesis -- --all --long
//!
//! Each run prints its verdict; the last line is `N passed, N failed` (one per schedule run).
//! The exit status is 0 only when every run passed. A failed run keeps its logs, data dirs and
//! histories and prints the command that replays it.

use clap::Parser;
use raftsql_tests::nemesis::{run, SCHEDULES};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "nemesis", about = "Fault-injection runs against raftsql, judged by history checkers")]
struct Args {
    /// Print every schedule with what it proves, and exit.
    #[arg(long)]
    list: bool,
    /// Schedules to run (repeat the flag, or separate by commas).
    #[arg(long, value_delimiter = ',')]
    schedule: Vec<String>,
    /// Run every schedule.
    #[arg(long)]
    all: bool,
    /// Seconds of faults per run.
    #[arg(long, default_value_t = 30)]
    time: u64,
    /// Soak: 600 s per run unless --time says otherwise.
    #[arg(long)]
    long: bool,
    /// Seed of the run (workload choices, fault choices, proxies' randomness).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runs per schedule, with seeds seed, seed+1, ...
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Keep every run's logs and histories, not only the failed ones'.
    #[arg(long)]
    keep: bool,
    /// Make the run wrong on purpose, to see what a caught anomaly looks like.
    #[arg(long, value_enum)]
    weaken: Option<run::Weakening>,
    /// Start the nodes with a users file; every client authenticates.
    #[arg(long)]
    users: bool,
    /// Start the nodes with TLS on both ports (mutual TLS and peer ports between nodes).
    #[arg(long)]
    tls: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        for s in SCHEDULES {
            println!("{:<28} {} nodes  {}", s.name, s.nodes, s.about);
        }
        return ExitCode::SUCCESS;
    }
    let names: Vec<String> =
        if args.all { SCHEDULES.iter().map(|s| s.name.to_string()).collect() } else { args.schedule.clone() };
    if names.is_empty() {
        eprintln!("nemesis: name a --schedule (see --list) or pass --all");
        return ExitCode::from(2);
    }
    if let Some(bad) = names.iter().find(|n| !SCHEDULES.iter().any(|s| s.name == n.as_str())) {
        eprintln!("nemesis: no schedule {bad:?}; --list names them");
        return ExitCode::from(2);
    }
    let secs = if args.long && args.time == 30 { 600 } else { args.time.max(1) };
    let (mut passed, mut failed) = (0, 0);
    let work = async {
        for name in &names {
            for i in 0..args.runs.max(1) {
                let seed = args.seed + i;
                let opts = run::RunOptions {
                    time: Duration::from_secs(secs),
                    seed,
                    keep: args.keep,
                    weaken: args.weaken,
                    users: args.users,
                    tls: args.tls,
                };
                match run::run(name, &opts).await {
                    Ok(outcome) => {
                        print!("{outcome}");
                        if outcome.passed {
                            passed += 1;
                        } else {
                            failed += 1;
                        }
                    }
                    Err(e) => {
                        println!("FAIL {name} (seed {seed}): {e}");
                        failed += 1;
                    }
                }
            }
        }
    };
    // Ctrl-C drops the run, and with it the cluster it started (its processes are killed).
    tokio::select! {
        _ = work => {}
        _ = tokio::signal::ctrl_c() => {
            eprintln!("nemesis: interrupted");
            return ExitCode::from(130);
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
