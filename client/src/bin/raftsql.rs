//! `raftsql`: the raftsql shell. Non-interactive for now (`-e SQL`, repeatable, or SQL on
//! stdin), plus `raftsql demo`, a local cluster with a SQL prompt.

use clap::{Parser, Subcommand};
use raftsql_client::shell::{run_text, Format};
use raftsql_client::{Client, QueryOptions};
use std::io::{IsTerminal, Read};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "raftsql", version, about = "The raftsql shell")]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Cluster addresses, HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "RAFTSQL_ADDR", value_delimiter = ',', default_value = "127.0.0.1:7001")]
    addr: Vec<String>,
    /// SQL to run (repeatable); without -e, SQL is read from standard input.
    #[arg(short = 'e', long = "execute")]
    execute: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Read consistency: strong, ryw, bounded:DURATION (e.g. bounded:500ms) or any.
    #[arg(long, default_value = "strong", value_parser = raftsql_client::shell::parse_consistency)]
    consistency: raftsql_client::Consistency,
    /// Session token to read at least as new as (from an earlier `--format json` receipt).
    #[arg(long)]
    token: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a local cluster of real server processes and a SQL prompt connected to it.
    Demo {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Cmd::Demo { nodes }) = args.command {
        return match raftsql_client::demo::run(nodes).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("raftsql demo: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let client = match Client::connect(&args.addr).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("raftsql: {e}");
            return ExitCode::from(2);
        }
    };
    let texts = if args.execute.is_empty() {
        if std::io::stdin().is_terminal() {
            eprintln!("raftsql: give SQL with -e, or pipe it on standard input (or try `raftsql demo`)");
            return ExitCode::from(2);
        }
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            eprintln!("raftsql: reading standard input: {e}");
            return ExitCode::from(2);
        }
        vec![s]
    } else {
        args.execute
    };
    let opts =
        QueryOptions { consistency: args.consistency, session_token: args.token, ..Default::default() };
    let mut failed = 0;
    let mut out = std::io::stdout();
    for text in &texts {
        failed += run_text(&client, text, args.format, &opts, &mut out).await;
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
