//! `raftsql-server`: loads configuration and logging, then runs one node until SIGTERM.
//! `raftsql-server hash-password [--token]` prints what a users file lists, and
//! `raftsql-server make-certs --out DIR` makes a deployment's certificates (docs/security.md).
//! `raftsql-server probe [readyz|healthz]` asks this host's `--http` port, for container health
//! checks in an image that has no shell and no curl (deploy/compose.yaml).

use clap::Parser;
use raftsql_server::node::{Config, Runtimes};
use raftsql_server::service::auth;
use std::io::{BufRead, IsTerminal};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("hash-password") {
        return hash_password(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some("make-certs") {
        let a = raftsql_server::certs::MakeCerts::parse_from(&args[1..]);
        return match raftsql_server::certs::make(&a) {
            Ok(report) => {
                println!("{report}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("raftsql-server make-certs: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if args.get(1).map(String::as_str) == Some("probe") {
        return probe(&args[2..]);
    }
    // The --config file fills in what the command line and the environment leave unset.
    if let Err(e) = raftsql_server::node::config_file::load(&args) {
        eprintln!("raftsql-server: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let cfg = Config::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file or a collector gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
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

const HASH_USAGE: &str =
    "usage: raftsql-server hash-password          (reads the password from stdin, or asks)\n       \
                          raftsql-server hash-password --token  (makes a new bearer token)";

/// Prints an argon2id hash of a password read from stdin (one line; asked for, without echo,
/// on a terminal), or a new bearer token and its hash.
fn hash_password(args: &[String]) -> std::process::ExitCode {
    match args {
        [] => {}
        [flag] if flag == "--token" => {
            let (token, line) = auth::new_token();
            println!("token: {token}");
            println!("users file: tokens = [\"{line}\"]");
            eprintln!(
                "Give the token to the client (RAFTSQL_BEARER_TOKEN); only its hash goes in the users file."
            );
            return std::process::ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{HASH_USAGE}");
            return std::process::ExitCode::from(2);
        }
    }
    let password = if std::io::stdin().is_terminal() {
        let ask = |prompt| rpassword::prompt_password(prompt);
        match ask("password: ").and_then(|p| Ok((p, ask("again: ")?))) {
            Ok((a, b)) if a == b => a,
            Ok(_) => {
                eprintln!("raftsql-server: the two passwords differ");
                return std::process::ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("raftsql-server: cannot read the password: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!("raftsql-server: cannot read the password from stdin: {e}");
            return std::process::ExitCode::FAILURE;
        }
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.is_empty() {
        eprintln!("raftsql-server: the password is empty");
        return std::process::ExitCode::FAILURE;
    }
    match auth::hash_password(&password) {
        Ok(h) => {
            println!("{h}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("raftsql-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

const PROBE_USAGE: &str =
    "usage: raftsql-server probe [readyz|healthz]   (asks the --http port, RAFTSQL_HTTP, on this host)";

/// `GET /readyz` (or `/healthz`) on this host's HTTP port: exit 0 on 200, else 1 with the
/// answer or the failure on stderr. The port is `RAFTSQL_HTTP`'s, the one the node was
/// configured with in the same environment (a wildcard host is asked on 127.0.0.1).
fn probe(args: &[String]) -> std::process::ExitCode {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    use std::time::Duration;
    let path = match args {
        [] => "/readyz",
        [what] if what == "readyz" => "/readyz",
        [what] if what == "healthz" => "/healthz",
        _ => {
            eprintln!("{PROBE_USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let Ok(http) = std::env::var("RAFTSQL_HTTP") else {
        eprintln!("raftsql-server probe: RAFTSQL_HTTP is not set, so there is no HTTP port to ask");
        return std::process::ExitCode::from(2);
    };
    let Some((host, port)) = http.rsplit_once(':') else {
        eprintln!("raftsql-server probe: RAFTSQL_HTTP={http:?} is not HOST:PORT");
        return std::process::ExitCode::from(2);
    };
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "[::]" => "[::1]",
        h => h,
    };
    let timeout = Duration::from_secs(2);
    let answer = (|| -> std::io::Result<String> {
        let addr = format!("{host}:{port}")
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{host}:{port} resolves to nothing")))?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
        let mut reply = String::new();
        // The answers are one line: a bound keeps a wrong port from feeding us forever.
        stream.take(64 << 10).read_to_string(&mut reply)?;
        Ok(reply)
    })();
    match answer {
        Ok(reply) if reply.starts_with("HTTP/1.1 200") => std::process::ExitCode::SUCCESS,
        Ok(reply) => {
            let status = reply.lines().next().unwrap_or_default();
            let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
            eprintln!("raftsql-server probe: {path} answered {status}: {body}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("raftsql-server probe: cannot ask {host}:{port}{path}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
