//! `raftsql-server`: loads configuration and logging, then runs one node until SIGTERM.

use clap::Parser;
use raftsql_server::node::{run, Config};

fn main() -> std::process::ExitCode {
    let cfg = Config::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn,sled=warn,h2=warn,tower=warn,hyper=warn".into()),
        )
        .init();
    // SQL parsing, planning and evaluation recurse with the nesting of a statement (bounded by
    // `sql::MAX_NESTING`); large stacks keep the deepest statement we accept far from overflow.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(raftsql_server::sql::STACK_BYTES)
        .build()
        .expect("starting tokio");
    match runtime.block_on(run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("raftsql-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
