//! `raftsql`: the raftsql shell. Interactive on a terminal (line editing, history, meta
//! commands: `.help`); non-interactive with `-e SQL` (repeatable, meta commands too), `-f FILE`
//! or SQL on standard input. `raftsql demo` starts a local cluster and opens the shell on it.

use clap::{Parser, Subcommand};
use raftsql_client::Client;
use raftsql_shell::shell::{Flow, Format, Shell};
use std::io::{IsTerminal, Read};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "raftsql", version, about = "The raftsql shell")]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Cluster addresses, HOST:PORT[,HOST:PORT...]; `https://HOST:PORT` turns TLS on.
    #[arg(long, env = "RAFTSQL_ADDR", value_delimiter = ',', default_value = "127.0.0.1:7001")]
    addr: Vec<String>,
    /// SQL or a meta command (e.g. `.status`) to run; repeatable, run in order.
    #[arg(short = 'e', long = "execute")]
    execute: Vec<String>,
    /// A file of SQL and meta commands to run (after any -e); repeatable.
    #[arg(short = 'f', long = "file")]
    file: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Read consistency: strong, ryw, bounded:DURATION (e.g. bounded:500ms) or any.
    #[arg(long, default_value = "strong", value_parser = raftsql_shell::shell::parse_consistency)]
    consistency: raftsql_client::Consistency,
    /// Session token to read at least as new as (from an earlier `--format json` receipt).
    #[arg(long)]
    token: Option<String>,
    /// User to authenticate as, for a cluster started with --users-file. The password comes
    /// from RAFTSQL_PASSWORD, else it is asked for on the terminal. (A bearer token instead:
    /// RAFTSQL_BEARER_TOKEN.)
    #[arg(long, env = "RAFTSQL_USER")]
    user: Option<String>,
    /// TLS: the CA that signed the nodes' certificates (PEM); turns TLS on. Without it,
    /// `https://` addresses are checked against the system's roots.
    #[arg(long, env = "RAFTSQL_CA", value_name = "PATH")]
    ca: Option<std::path::PathBuf>,
    /// TLS: a client certificate (PEM), for nodes that authenticate users by certificate.
    #[arg(long, env = "RAFTSQL_CERT", value_name = "PATH", requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// TLS: the key of --cert (PEM).
    #[arg(long, env = "RAFTSQL_KEY", value_name = "PATH", requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// TLS: the name the nodes' certificates must carry (default: each address's host).
    #[arg(long, env = "RAFTSQL_SERVER_NAME", value_name = "NAME")]
    server_name: Option<String>,
}

/// `raftsql bench`: against `client`'s cluster, or a throwaway local one.
async fn bench(client: Client, b: &raftsql_shell::bench::BenchArgs) -> ExitCode {
    use raftsql_shell::bench::{self, BenchFormat};
    let local = if b.local {
        match raftsql_shell::demo::start_local(3, b.tls).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("raftsql bench: cannot start the local cluster: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let client = local.as_ref().map_or(client, |(_, c)| c.clone());
    let result = bench::run(&client, b).await;
    if let Some((handle, _)) = &local {
        handle.shutdown();
    }
    match result {
        Ok(r) => {
            match b.format {
                BenchFormat::Json => println!("{}", r.json()),
                BenchFormat::Text => println!("{}", r.text()),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("raftsql bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Shows progress on standard error when it is a terminal, at most five times a second.
struct Meter {
    on: bool,
    last: std::time::Instant,
    shown: bool,
}

impl Meter {
    fn new() -> Meter {
        Meter { on: std::io::stderr().is_terminal(), last: std::time::Instant::now(), shown: false }
    }

    fn show(&mut self, line: impl FnOnce() -> String) {
        if self.on && self.last.elapsed() >= std::time::Duration::from_millis(200) {
            self.last = std::time::Instant::now();
            self.shown = true;
            eprint!("\r{}\x1b[K", line());
        }
    }

    fn done(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// `raftsql backup FILE`.
async fn backup(client: Client, file: &std::path::Path, from: Option<&str>) -> ExitCode {
    let mut meter = Meter::new();
    let started = std::time::Instant::now();
    let r = client
        .backup(file, from, |p| {
            meter.show(|| format!("backup: {} tables, {} rows, {}", p.tables, p.rows, mib(p.bytes)))
        })
        .await;
    meter.done();
    match r {
        Ok(s) => {
            println!(
                "backup: {} tables, {} rows at applied index {} (term {}) of node {} -> {} ({}, {:.1} s)",
                s.tables,
                s.rows,
                s.applied_index,
                s.applied_term,
                s.node_id,
                file.display(),
                mib(s.bytes),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("raftsql backup: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `raftsql restore FILE`.
async fn restore(client: Client, file: &std::path::Path, force: bool) -> ExitCode {
    let mut meter = Meter::new();
    let started = std::time::Instant::now();
    let r = client
        .restore(file, force, |p| {
            meter.show(|| {
                let pct = if p.rows_total == 0 { 100.0 } else { p.rows as f64 * 100.0 / p.rows_total as f64 };
                format!("restore: {} tables, {} of {} rows ({pct:.0}%)", p.tables, p.rows, p.rows_total)
            })
        })
        .await;
    meter.done();
    match r {
        Ok(s) => {
            println!(
                "restore: {} tables, {} rows from {} (applied index {} of node {} in cluster {}) ({:.1} s)",
                s.tables,
                s.rows,
                file.display(),
                s.applied_index,
                s.node_id,
                if s.cluster_id.is_empty() { "?" } else { &s.cluster_id },
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("raftsql restore: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The TLS the flags ask for, if any.
fn tls(args: &Args) -> Result<Option<raftsql_client::Tls>, raftsql_client::Error> {
    if args.ca.is_none() && args.cert.is_none() && args.server_name.is_none() {
        return Ok(None);
    }
    raftsql_client::Tls::from_files(
        args.ca.as_deref(),
        args.cert.as_deref(),
        args.key.as_deref(),
        args.server_name.clone(),
    )
    .map(Some)
}

/// The credentials the environment and flags give, if any.
fn credentials(args: &Args) -> Result<Option<raftsql_client::Credentials>, String> {
    use raftsql_client::Credentials;
    let bearer = std::env::var("RAFTSQL_BEARER_TOKEN").ok().filter(|t| !t.is_empty());
    match (&args.user, bearer) {
        (Some(_), Some(_)) => {
            Err("give either --user (RAFTSQL_USER) or RAFTSQL_BEARER_TOKEN, not both".into())
        }
        (None, Some(token)) => Ok(Some(Credentials::Bearer(token))),
        (None, None) => Ok(None),
        (Some(user), None) => {
            let password = match std::env::var("RAFTSQL_PASSWORD") {
                Ok(p) => p,
                Err(_) if std::io::stdin().is_terminal() => {
                    rpassword::prompt_password(format!("password for {user}: "))
                        .map_err(|e| format!("cannot read the password: {e}"))?
                }
                Err(_) => {
                    return Err(format!(
                        "--user {user} needs a password: set RAFTSQL_PASSWORD (standard input is not a terminal to ask on)"
                    ))
                }
            };
            Ok(Some(Credentials::Basic { user: user.clone(), password }))
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Measure throughput and latency of a workload (docs/benchmarks.md).
    Bench(raftsql_shell::bench::BenchArgs),
    /// Save a consistent copy of the cluster (one applied index) to FILE, writes going on
    /// meanwhile. The copy is the leader's unless --from names a node.
    Backup {
        file: std::path::PathBuf,
        /// Take the copy from this node (HOST:PORT) instead of the leader.
        #[arg(long, value_name = "HOST:PORT")]
        from: Option<String>,
    },
    /// Load a backup FILE into an empty cluster through the log (every replica gets it). The
    /// whole file is checked before anything is sent.
    Restore {
        file: std::path::PathBuf,
        /// Drop every table the cluster holds first.
        #[arg(long)]
        force: bool,
    },
    /// Start a local cluster of real server processes and the shell connected to it.
    Demo {
        /// How many nodes (1 to 9).
        #[arg(long, default_value_t = 3)]
        nodes: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(&Cmd::Demo { nodes }) = args.command.as_ref() {
        return match raftsql_shell::demo::run(nodes, args.format).await {
            Ok(0) => ExitCode::SUCCESS,
            Ok(_) => ExitCode::from(1),
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
    let client = match tls(&args) {
        Ok(None) => client,
        Ok(Some(t)) => client.with_tls(&t),
        Err(e) => {
            eprintln!("raftsql: {e}");
            return ExitCode::from(2);
        }
    };
    let client = match credentials(&args) {
        Ok(None) => client,
        Ok(Some(c)) => match client.with_credentials(&c) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("raftsql: {e}");
                return ExitCode::from(2);
            }
        },
        Err(e) => {
            eprintln!("raftsql: {e}");
            return ExitCode::from(2);
        }
    };
    match &args.command {
        Some(Cmd::Bench(b)) => return bench(client, b).await,
        Some(Cmd::Backup { file, from }) => return backup(client, file, from.as_deref()).await,
        Some(Cmd::Restore { file, force }) => return restore(client, file, *force).await,
        _ => {}
    }
    let mut shell = Shell::new(client.clone(), args.format);
    shell.consistency = args.consistency;
    if let Some(t) = &args.token {
        shell.session = client.session_from(t);
    }
    if !args.execute.is_empty() || !args.file.is_empty() {
        for text in &args.execute {
            if shell.run_arg(text).await == Flow::Quit {
                return exit(&shell);
            }
        }
        for path in &args.file {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("raftsql: cannot read {path}: {e}");
                    return ExitCode::from(2);
                }
            };
            if shell.run_script(&text).await == Flow::Quit {
                break;
            }
        }
    } else if std::io::stdin().is_terminal() {
        println!(
            "raftsql {} connected to {}. End SQL with ';'; .help for commands, Ctrl-D to exit.",
            env!("CARGO_PKG_VERSION"),
            args.addr.join(",")
        );
        if let Err(e) = raftsql_shell::repl::run(&mut shell).await {
            eprintln!("raftsql: {e}");
            return ExitCode::from(2);
        }
    } else {
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            eprintln!("raftsql: reading standard input: {e}");
            return ExitCode::from(2);
        }
        shell.run_script(&s).await;
    }
    exit(&shell)
}

fn exit(shell: &Shell) -> ExitCode {
    if shell.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
