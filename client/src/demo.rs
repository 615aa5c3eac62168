//! `raftsql demo`: a local cluster of real `raftsql-server` processes (free ports, a temporary
//! data dir) and a SQL prompt connected to it. Everything is removed on exit.
//!
//! The server binary is looked up next to this executable; when running from a source checkout
//! (`cargo run -p raftsql-client --bin raftsql -- demo`) and it is missing, it is built first
//! with the same profile.
//!
//! Input: SQL statements ended by `;`, or one of the commands `.help`, `.status`,
//! `.demo kill N`, `.demo restart N`, `.quit`. Ctrl-D or Ctrl-C ends the demo.
//! (The full interactive shell — line editing, history, output modes — is issue 5's.)

use crate::shell::{run_text, Format};
use crate::{Client, QueryOptions};
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

struct Node {
    addr: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

struct Demo {
    server: PathBuf,
    nodes: BTreeMap<u64, Node>,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Finds `raftsql-server` beside this executable, building it from the source tree if needed.
fn server_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the raftsql executable")?;
    let dir = exe.parent().context("the raftsql executable has no directory")?;
    let server = dir.join("raftsql-server");
    if server.exists() {
        return Ok(server);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    if !manifest.exists() {
        bail!("raftsql-server was not found next to {}: install it beside raftsql", exe.display());
    }
    eprintln!("building raftsql-server (first run only)...");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--quiet", "-p", "raftsql-server", "--bin", "raftsql-server", "--manifest-path"])
        .arg(&manifest);
    if let Some(target) = dir.parent() {
        cmd.arg("--target-dir").arg(target);
    }
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() || !server.exists() {
        bail!("building raftsql-server failed");
    }
    Ok(server)
}

/// A free TCP port on 127.0.0.1, chosen below the kernel's ephemeral range: a port taken from
/// that range (as `bind(:0)` does) can be grabbed as the source port of some outgoing connection
/// between the moment it is checked here and the moment a server binds it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    if low > 11_000 {
        for _ in 0..200 {
            let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
            let port = 10_000 + (random % (low as u64 - 10_000)) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free port on 127.0.0.1")
}

impl Demo {
    fn spawn(&mut self, id: u64, extra: &[String]) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(&id).with_context(|| format!("there is no node {id}"))?;
        if node.child.is_some() {
            bail!("node {id} is running");
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let child = Command::new(&self.server)
            .arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(&node.addr)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(extra)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.server.display()))?;
        node.child = Some(child);
        Ok(())
    }

    fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(&id).with_context(|| format!("there is no node {id}"))?;
        let mut child = node.child.take().with_context(|| format!("node {id} is not running"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

async fn wait_for_leader(client: &Client, addrs: &[String]) -> anyhow::Result<(u64, u64)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for a in addrs {
            if let Ok(s) = client.status(a).await {
                if s.role() == crate::pb::Role::Leader {
                    return Ok((s.node_id, s.term));
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no leader was elected within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn print_status(client: &Client, demo: &Demo, out: &mut dyn Write) {
    let _ = writeln!(out, "node  address               role       term  applied  leader");
    for (id, node) in &demo.nodes {
        let line = match (&node.child, client.status(&node.addr).await) {
            (None, _) => format!("{id:<5} {:<21} (stopped)", node.addr),
            (Some(_), Ok(s)) => format!(
                "{id:<5} {:<21} {:<10} {:<5} {:<8} {}",
                node.addr,
                s.role().as_str_name().to_ascii_lowercase(),
                s.term,
                s.applied_index,
                s.leader_id
            ),
            (Some(_), Err(e)) => format!("{id:<5} {:<21} unreachable: {e}", node.addr),
        };
        let _ = writeln!(out, "{line}");
    }
}

/// Runs the demo until end of input, `.quit` or Ctrl-C.
pub async fn run(n: u64) -> anyhow::Result<()> {
    if !(1..=9).contains(&n) {
        bail!("--nodes must be between 1 and 9");
    }
    let server = server_binary()?;
    let dir = tempfile::Builder::new().prefix("raftsql-demo-").tempdir()?;
    let mut nodes = BTreeMap::new();
    for id in 1..=n {
        nodes.insert(
            id,
            Node {
                addr: format!("127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(format!("node-{id}")),
                log: dir.path().join(format!("node-{id}.log")),
                child: None,
            },
        );
    }
    let bootstrap: Vec<String> = nodes.iter().map(|(id, n)| format!("{id}={}", n.addr)).collect();
    let mut demo = Demo { server, nodes, _dir: dir };
    let args = vec!["--bootstrap".to_string(), bootstrap.join(",")];
    for id in 1..=n {
        demo.spawn(id, &args)?;
    }
    let addrs: Vec<String> = demo.nodes.values().map(|n| n.addr.clone()).collect();
    let client = Client::connect(&addrs).await?;
    let (leader, term) = wait_for_leader(&client, &addrs).await?;

    let mut out = std::io::stdout();
    writeln!(out, "raftsql demo: {n} nodes on 127.0.0.1, data in {}", demo._dir.path().display())?;
    for (id, node) in &demo.nodes {
        let pid = node.child.as_ref().map_or(0, |c| c.id());
        writeln!(out, "  node {id}: {} (pid {pid})", node.addr)?;
    }
    writeln!(out, "node {leader} leads term {term}. End statements with ';'. Commands: .help .status .demo kill N .demo restart N .quit")?;
    writeln!(out, "Connect another shell with: raftsql --addr {}", addrs.join(","))?;

    let interactive = std::io::stdin().is_terminal();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut buffer = String::new();
    loop {
        if interactive {
            print!("{}", if buffer.is_empty() { "raftsql> " } else { "   ...> " });
            let _ = out.flush();
        }
        let line = tokio::select! {
            l = lines.next_line() => l?,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(line) = line else { break };
        let trimmed = line.trim();
        if buffer.trim().is_empty() && trimmed.starts_with('.') {
            let words: Vec<&str> = trimmed.split_whitespace().collect();
            match words.as_slice() {
                [".quit" | ".exit"] => break,
                [".help"] => {
                    writeln!(out, "SQL ending with ';' | .status | .demo kill N | .demo restart N | .quit")?
                }
                [".status"] => print_status(&client, &demo, &mut out).await,
                [".demo", "kill", id] => {
                    match id.parse().map_err(anyhow::Error::from).and_then(|id| demo.kill(id)) {
                        Ok(()) => writeln!(out, "node {id} killed (SIGKILL)")?,
                        Err(e) => writeln!(out, "error: {e}")?,
                    }
                }
                [".demo", "restart", id] => {
                    match id.parse().map_err(anyhow::Error::from).and_then(|id| demo.spawn(id, &[])) {
                        Ok(()) => writeln!(out, "node {id} restarted")?,
                        Err(e) => writeln!(out, "error: {e}")?,
                    }
                }
                _ => writeln!(out, "unknown command {trimmed:?}: try .help")?,
            }
            continue;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if trimmed.ends_with(';') {
            let text = std::mem::take(&mut buffer);
            run_text(&client, &text, Format::Table, &QueryOptions::default(), &mut out).await;
        }
    }
    if !buffer.trim().is_empty() {
        run_text(&client, &buffer, Format::Table, &QueryOptions::default(), &mut out).await;
    }
    writeln!(out, "stopping the demo cluster")?;
    drop(demo);
    Ok(())
}
