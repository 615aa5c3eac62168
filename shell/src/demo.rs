//! `raftsql demo`: a local cluster of real `raftsql-server` processes (free ports, a temporary
//! data dir) and the interactive shell connected to it. Everything is removed on exit: after
//! `.quit`, Ctrl-D, the end of piped input, SIGTERM or SIGHUP, and SIGINT when the input is piped.
//! At an interactive prompt SIGINT is Ctrl-C, which only cancels the input or the running
//! statement (see [`crate::repl::run`]).
//!
//! The server binary is looked up next to this executable; when running from a source checkout
//! (`cargo run -p raftsql-shell --bin raftsql -- demo`) and it is missing, it is built first
//! with the same profile.
//!
//! Demo-only commands: `.demo kill N`, `.demo restart N`, `.demo pause N`, `.demo resume N`,
//! `.demo add`.

use crate::shell::{DemoCommands, Format, Shell};
use anyhow::{bail, Context};
use raftsql_client::{pb, Client};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEMO_HELP: &str = "\
Demo commands:
  .demo kill N               SIGKILL node N
  .demo restart N            start node N again on its data dir
  .demo pause N / resume N   SIGSTOP / SIGCONT node N
  .demo add                  start a new node that joins the cluster (catches up by snapshot)";

/// Demo nodes snapshot often, so a node added with `.demo add` catches up by snapshot.
const SNAPSHOT_ARGS: [&str; 4] = ["--snapshot-threshold", "100", "--snapshot-keep-logs", "10"];

struct Node {
    addr: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

struct Demo {
    server: PathBuf,
    nodes: BTreeMap<u64, Node>,
    dir: Option<tempfile::TempDir>,
    /// `SNAPSHOT_ARGS` for the demo; a bench cluster runs the server's defaults, which is what
    /// a deployment measures (a snapshot every 100 entries copies the whole state that often).
    frequent_snapshots: bool,
}

impl Demo {
    /// Kills (SIGKILL) and reaps every node, then removes the data dir.
    fn shutdown(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The running demo cluster, shared by the shell's `.demo` commands and the signal handlers.
#[derive(Clone)]
pub struct Handle(Arc<Mutex<Demo>>);

impl Handle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Demo> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every node's address, in id order.
    pub fn addrs(&self) -> Vec<String> {
        self.lock().nodes.values().map(|n| n.addr.clone()).collect()
    }

    /// Stops every node and removes every file of the demo; idempotent.
    pub fn shutdown(&self) {
        self.lock().shutdown();
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
    fn spawn(&mut self, id: u64, extra: &[String]) -> anyhow::Result<u32> {
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
            .args(if self.frequent_snapshots { &SNAPSHOT_ARGS[..] } else { &[] })
            .args(extra)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.server.display()))?;
        let pid = child.id();
        node.child = Some(child);
        node.paused = false;
        Ok(pid)
    }

    fn child(&mut self, id: u64) -> anyhow::Result<&mut Node> {
        let node = self.nodes.get_mut(&id).with_context(|| format!("there is no node {id}"))?;
        if node.child.is_none() {
            bail!("node {id} is not running (.demo restart {id} starts it)");
        }
        Ok(node)
    }

    fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.child(id)?;
        let mut child = node.child.take().expect("checked");
        let killed = child.kill();
        child.wait()?;
        killed?;
        node.paused = false;
        Ok(())
    }

    fn signal(&mut self, id: u64, pause: bool) -> anyhow::Result<()> {
        let node = self.child(id)?;
        if node.paused == pause {
            bail!("node {id} is {}", if pause { "already paused" } else { "not paused" });
        }
        let pid = node.child.as_ref().expect("checked").id() as i32;
        // SAFETY: kill(2) on a child process of ours that has not been reaped.
        let rc = unsafe { libc::kill(pid, if pause { libc::SIGSTOP } else { libc::SIGCONT }) };
        if rc != 0 {
            bail!("signalling node {id}: {}", std::io::Error::last_os_error());
        }
        node.paused = pause;
        Ok(())
    }
}

async fn wait_for_leader(client: &Client, addrs: &[String]) -> anyhow::Result<(u64, u64)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for a in addrs {
            if let Ok(s) = client.status(a).await {
                if s.role() == pb::Role::Leader {
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

impl DemoCommands for Handle {
    fn help(&self) -> &'static str {
        DEMO_HELP
    }

    fn addrs(&self) -> Vec<String> {
        Handle::addrs(self)
    }

    fn run<'a>(
        &'a self,
        shell: &'a mut Shell,
        args: &'a [&'a str],
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>> {
        Box::pin(command(self, shell, args))
    }
}

/// Runs a `.demo` command for the shell.
async fn command(handle: &Handle, shell: &mut Shell, args: &[&str]) -> Result<(), String> {
    let id = || -> Result<u64, String> {
        args.get(1).and_then(|a| a.parse().ok()).ok_or_else(|| format!("usage: .demo {} N", args[0]))
    };
    let msg = match args.first().copied() {
        Some("kill") => {
            let id = id()?;
            handle.lock().kill(id).map_err(|e| e.to_string())?;
            format!("node {id} killed (SIGKILL)")
        }
        Some("restart" | "start") => {
            let id = id()?;
            let pid = handle.lock().spawn(id, &[]).map_err(|e| e.to_string())?;
            format!("node {id} restarted (pid {pid})")
        }
        Some("pause" | "stop") => {
            let id = id()?;
            handle.lock().signal(id, true).map_err(|e| e.to_string())?;
            format!("node {id} paused (SIGSTOP)")
        }
        Some("resume" | "cont") => {
            let id = id()?;
            handle.lock().signal(id, false).map_err(|e| e.to_string())?;
            format!("node {id} resumed (SIGCONT)")
        }
        Some("add") => add(shell, handle).await?,
        _ => return Err(format!("usage:\n{DEMO_HELP}")),
    };
    let _ = writeln!(shell.out, "{msg}");
    Ok(())
}

/// Starts a new node that joins through the leader, and waits until it caught up.
async fn add(shell: &mut Shell, handle: &Handle) -> Result<String, String> {
    // Right after a kill, pause or resume there may be no leader for an election's time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let leader = loop {
        match shell.leader_status().await {
            Ok(l) => break l,
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let (id, addr, pid) = {
        let mut demo = handle.lock();
        let id = demo.nodes.keys().max().copied().unwrap_or(0) + 1;
        let dir = demo.dir.as_ref().map(|d| d.path().to_path_buf()).ok_or("the demo has stopped")?;
        let addr = format!("127.0.0.1:{}", free_port());
        demo.nodes.insert(
            id,
            Node {
                addr: addr.clone(),
                data_dir: dir.join(format!("node-{id}")),
                log: dir.join(format!("node-{id}.log")),
                child: None,
                paused: false,
            },
        );
        let pid = demo.spawn(id, &["--join".to_string(), leader.addr.clone()]).map_err(|e| e.to_string())?;
        (id, addr, pid)
    };
    let _ = writeln!(
        shell.out,
        "node {id} starting at {addr} (pid {pid}), joining through node {}...",
        leader.node_id
    );
    let _ = shell.out.flush();
    let target = leader.committed_index;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = shell.client.status(&addr).await {
            if s.applied_index >= target && s.members.iter().any(|m| m.id == id) {
                return Ok(format!(
                    "node {id} joined as a {}: applied index {}, snapshot index {} (it caught up {})",
                    if s.members.iter().any(|m| m.id == id && m.voter) { "voter" } else { "learner" },
                    s.applied_index,
                    s.snapshot_index,
                    if s.snapshot_index > 0 { "from a snapshot" } else { "from the log" }
                ));
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("node {id} did not catch up within 30 s; see .nodes"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a throwaway local cluster of `n` nodes (for `raftsql bench --local`), peers on their
/// own ports as in production: with `tls`, TLS on both ports, from certificates `raftsql-server make-certs` makes in the
/// cluster's directory. Returns the cluster (removed on drop or `shutdown`) and a client of it
/// once a leader is elected.
pub async fn start_local(n: u64, tls: bool) -> anyhow::Result<(Handle, Client)> {
    if !(1..=9).contains(&n) {
        bail!("a local cluster has 1 to 9 nodes");
    }
    let server = server_binary()?;
    let dir = tempfile::Builder::new().prefix("raftsql-bench-").tempdir()?;
    let mut nodes = BTreeMap::new();
    let mut listed = Vec::new();
    let mut per_node: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let certs = dir.path().join("certs");
    if tls {
        let out = Command::new(&server)
            .args(["make-certs", "--host", "127.0.0.1", "--replicas", &n.to_string(), "--out"])
            .arg(&certs)
            .output()
            .context("running raftsql-server make-certs")?;
        if !out.status.success() {
            bail!("raftsql-server make-certs failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    for id in 1..=n {
        let addr = format!("127.0.0.1:{}", free_port());
        // Peers on their own port, as deploy/ runs them: Raft traffic is then served on the
        // node's Raft runtime, not its client runtime (node.rs), which measured 2-10 % faster
        // for writes (docs/performance.md).
        let peer = format!("127.0.0.1:{}", free_port());
        listed.push(format!("{id}={addr}/{peer}"));
        let mut args = vec!["--peer-listen".to_string(), peer];
        if tls {
            let f = |name: String| certs.join("tls").join(name).display().to_string();
            args.extend([
                "--tls-cert".into(),
                f(format!("node-{id}-client.pem")),
                "--tls-key".into(),
                f(format!("node-{id}-client.key")),
                "--peer-tls-cert".into(),
                f(format!("node-{id}-peer.pem")),
                "--peer-tls-key".into(),
                f(format!("node-{id}-peer.key")),
                "--peer-tls-ca".into(),
                f("peer-ca.pem".into()),
            ]);
        }
        per_node.insert(id, args);
        let node = Node {
            addr,
            data_dir: dir.path().join(format!("node-{id}")),
            log: dir.path().join(format!("node-{id}.log")),
            child: None,
            paused: false,
        };
        nodes.insert(id, node);
    }
    let demo = Demo { server, nodes, dir: Some(dir), frequent_snapshots: false };
    let handle = Handle(Arc::new(Mutex::new(demo)));
    let bootstrap = listed.join(",");
    for (id, mut args) in per_node {
        args.extend(["--bootstrap".to_string(), bootstrap.clone()]);
        handle.lock().spawn(id, &args)?;
    }
    let addrs = handle.addrs();
    let mut client = Client::connect(&addrs).await?;
    if tls {
        let ca = std::fs::read(certs.join("tls").join("client-ca.pem")).context("reading the local CA")?;
        client = client.with_tls(&raftsql_client::Tls { ca: Some(ca), ..Default::default() });
    }
    wait_for_leader(&client, &addrs).await?;
    Ok((handle, client))
}

/// Runs the demo until `.quit`, end of input, or a signal; returns how many statements and
/// commands failed.
pub async fn run(n: u64, format: Format) -> anyhow::Result<usize> {
    if !(1..=9).contains(&n) {
        bail!("--nodes must be between 1 and 9");
    }
    let server = server_binary()?;
    let dir = tempfile::Builder::new().prefix("raftsql-demo-").tempdir()?;
    let dir_path = dir.path().to_path_buf();
    let mut nodes = BTreeMap::new();
    for id in 1..=n {
        nodes.insert(
            id,
            Node {
                addr: format!("127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(format!("node-{id}")),
                log: dir.path().join(format!("node-{id}.log")),
                child: None,
                paused: false,
            },
        );
    }
    let bootstrap: Vec<String> = nodes.iter().map(|(id, n)| format!("{id}={}", n.addr)).collect();
    let handle =
        Handle(Arc::new(Mutex::new(Demo { server, nodes, dir: Some(dir), frequent_snapshots: true })));
    // From here on, every way out removes the cluster: signals here, the rest below (and Drop).
    let interactive = std::io::stdin().is_terminal();
    install_signal_handlers(handle.clone(), !interactive)?;
    let result = run_cluster(n, &handle, bootstrap, format, interactive, &dir_path).await;
    println!("stopping the demo cluster");
    handle.shutdown();
    result
}

fn install_signal_handlers(handle: Handle, sigint_too: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut kinds = vec![(SignalKind::terminate(), 143), (SignalKind::hangup(), 129)];
    if sigint_too {
        kinds.push((SignalKind::interrupt(), 130));
    }
    for (kind, code) in kinds {
        let mut s = signal(kind)?;
        let handle = handle.clone();
        tokio::spawn(async move {
            if s.recv().await.is_some() {
                crate::repl::restore_terminal();
                eprintln!("\nraftsql demo: signal received, stopping the demo cluster");
                handle.shutdown();
                std::process::exit(code);
            }
        });
    }
    Ok(())
}

async fn run_cluster(
    n: u64,
    handle: &Handle,
    bootstrap: Vec<String>,
    format: Format,
    interactive: bool,
    dir: &Path,
) -> anyhow::Result<usize> {
    let args = vec!["--bootstrap".to_string(), bootstrap.join(",")];
    let mut pids = Vec::new();
    for id in 1..=n {
        pids.push(handle.lock().spawn(id, &args)?);
    }
    let addrs = handle.addrs();
    let client = Client::connect(&addrs).await?;
    let (leader, term) = wait_for_leader(&client, &addrs).await?;

    let mut out = std::io::stdout();
    writeln!(out, "raftsql demo: {n} nodes on 127.0.0.1, data in {}", dir.display())?;
    for ((id, addr), pid) in (1..=n).zip(&addrs).zip(&pids) {
        writeln!(out, "  node {id}: {addr} (pid {pid})")?;
    }
    writeln!(out, "node {leader} leads term {term}.")?;
    writeln!(out, "Connect another shell with: raftsql --addr {}", addrs.join(","))?;
    writeln!(
        out,
        "End SQL statements with ';'. Try .help, .status, .nodes, .demo kill {leader}, .demo add; .quit or Ctrl-D ends the demo."
    )?;
    out.flush()?;

    let mut shell = Shell::new(client, format);
    shell.demo = Some(Arc::new(handle.clone()));
    if interactive {
        crate::repl::run(&mut shell).await?;
    } else {
        let mut text = String::new();
        tokio::task::block_in_place(|| std::io::stdin().read_to_string(&mut text))?;
        shell.run_script(&text).await;
    }
    Ok(shell.failed)
}
