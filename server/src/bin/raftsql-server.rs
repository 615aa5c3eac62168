//! `raftsql-server`: loads configuration and logging, then runs one node until SIGTERM.

use clap::Parser;
use raftsql_server::node::{Config, Runtimes};

fn main() -> std::process::ExitCode {
    let cfg = Config::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn,sled=warn,h2=warn,tower=warn,hyper=warn".into()),
        )
        .init();
    let runtimes = match Runtimes::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("raftsql-server: cannot start its threads: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtimes.run(cfg) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("raftsql-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
