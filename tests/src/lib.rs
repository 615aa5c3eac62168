//! The cluster harness: real `raftsql-server` processes on 127.0.0.1 with ports picked at run
//! time and data in a temp dir, for end-to-end tests.
//!
//! A [`Cluster`] owns its processes: `Drop` kills (SIGKILL) and reaps every one it started and
//! removes the temp dir — unless the test is panicking, in which case the dir (node logs
//! `node-<id>.log`, data dirs) is kept and its path printed (also when `RAFTSQL_KEEP_TEST_DIR` is
//! set). Every wait polls a condition with a
//! deadline; nothing sleeps to synchronize.

pub mod differential;
pub mod engine;
pub mod kube;
pub mod nemesis;
pub mod pki;
pub mod slt;

use raftsql_client::{pb, Client, Consistency, QueryOptions, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::time::Instant;

pub type Result<T> = std::result::Result<T, String>;

/// How a cluster is started.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// `--snapshot-threshold` for every node.
    pub snapshot_threshold: Option<u64>,
    /// More flags for every node.
    pub extra_args: Vec<String>,
    /// More environment variables for every node.
    pub env: Vec<(String, String)>,
    /// Environment variables for one node only: (node id, name, value).
    pub node_env: Vec<(u64, String, String)>,
    /// Run every peer and client link through a [`nemesis::net::Net`] seeded with this value:
    /// nodes advertise the proxy's entry address and bind outgoing peer connections to their
    /// own source IP, so links can be cut, slowed or made lossy one direction at a time.
    pub proxied: Option<u64>,
    /// Credentials the harness's own client (status, checksums, [`Cluster::client`]) sends,
    /// for clusters started with `--users-file`.
    pub credentials: Option<raftsql_client::Credentials>,
    /// Give every node a peer port of its own (`--peer-listen`); when `proxied`, it gets its own
    /// proxy entry on the same links.
    pub peer_ports: bool,
    /// TLS on both ports of every node, from certificates made for the cluster
    /// ([`pki::Pki`], in `<dir>/pki`); implies `peer_ports`. The harness's clients trust the
    /// client CA.
    pub tls: bool,
    /// TLS for the harness's clients when the nodes get their certificates some other way
    /// (through `env`/`node_env`, e.g. from `raftsql-server make-certs`).
    pub client_tls: Option<raftsql_client::Tls>,
    /// Give every node an HTTP side port (`--http`, never proxied): [`Cluster::http_addr`].
    pub http: bool,
}

/// The directory holding the `raftsql-server` and `raftsql` binaries, built once per process so
/// a test never runs a stale binary. `RAFTSQL_BIN_DIR` overrides (and skips the build).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("RAFTSQL_BIN_DIR") {
            return PathBuf::from(dir);
        }
        // current_exe is target/<profile>/deps/<test>-<hash> for a test, target/<profile>/<bin>
        // for a binary of this crate (the slt runner).
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut profile_dir = exe.parent().expect("target/<profile>").to_path_buf();
        if profile_dir.file_name().is_some_and(|n| n == "deps") {
            profile_dir.pop();
        }
        let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // The whole workspace's binaries *and tests*: the same targets, so the same feature
        // set, as the build `cargo nextest run --workspace` made before running this test. The
        // binaries are then already built (a no-op of about a second), where building only
        // `-p raftsql-server -p raftsql-shell` resolved other features and recompiled most of
        // the dependency tree (about 140 s on 2 cores in CI).
        cmd.args(["build", "--quiet", "--workspace", "--bins", "--tests", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build for the server binaries");
        assert!(status.success(), "building raftsql-server and raftsql failed");
        profile_dir
    })
}

pub use raftsql_shell::demo::free_port;

/// Node `id`'s `/metrics`, parsed as Prometheus text (the cluster was started with `http`).
pub async fn scrape(cluster: &Cluster, id: u64) -> prometheus_parse::Scrape {
    let addr = cluster.http_addr(id).expect("started with http");
    let (code, body) = http_get(addr, "/metrics").await.expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("/metrics parses as Prometheus text")
}

/// The value of `metric` with exactly these labels (counters and gauges), if present.
pub fn metric_value(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value as V;
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .and_then(|x| match x.value {
            V::Counter(v) | V::Gauge(v) | V::Untyped(v) => Some(v),
            _ => None,
        })
}

/// [`metric_value`], which must be present.
pub fn metric(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(s, metric, labels).unwrap_or_else(|| panic!("{metric}{labels:?} is missing"))
}

/// `GET path` on `addr` over plain HTTP/1.1 (the nodes' `--http` port): the status code and
/// the body, or why nothing usable answered within 5 s.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("GET {path} at {addr}: no answer within 5 s"))?
        .map_err(|e| format!("GET {path} at {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path} at {addr}: no HTTP answer: {text:?}"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET {path} at {addr}: bad status line in {head:?}"))?;
    Ok((code, body.to_string()))
}

/// An argon2id hash of `password` for a users file, from the real `raftsql-server
/// hash-password`.
pub fn hash_password(password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(bin_dir().join("raftsql-server"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running raftsql-server hash-password");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(format!("{password}\n").as_bytes())
        .expect("writing the password");
    let out = child.wait_with_output().expect("waiting for hash-password");
    assert!(out.status.success(), "hash-password failed");
    let h = String::from_utf8(out.stdout).expect("hash-password prints UTF-8").trim().to_string();
    assert!(h.starts_with("$argon2id$"), "{h}");
    h
}

/// Executes `sql` and panics, naming it, if the request or any statement fails.
pub async fn exec(client: &Client, sql: &str) {
    let res = client.execute(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    for r in res.results {
        r.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Query options that read node `id`'s own replica at `ANY`.
pub fn pinned(cluster: &Cluster, id: u64) -> QueryOptions {
    QueryOptions {
        consistency: Consistency::Any,
        node: Some(cluster.addr(id).to_string()),
        ..Default::default()
    }
}

struct Node {
    /// Where clients and peers reach the node: the proxy's entry address when proxied.
    addr: String,
    /// Where the node really listens; the harness's own status and checksum calls go here, so
    /// they work whatever the network faults.
    listen: String,
    /// The node's own peer port (`--peer-listen`), if it has one.
    peer: Option<String>,
    /// Where other nodes reach its peer port: the proxy's peer entry when proxied.
    peer_addr: Option<String>,
    /// Its HTTP side port (`--http`), if it has one.
    http: Option<String>,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A client of `addrs` with the options' credentials (and TLS, when the cluster has it).
async fn connect(
    addrs: impl IntoIterator<Item = String>,
    opts: &ClusterOptions,
    tls: Option<&raftsql_client::Tls>,
) -> Result<Client> {
    let client = Client::connect(addrs).await.map_err(|e| e.to_string())?;
    let client = match tls {
        Some(t) => client.with_tls(t),
        None => client,
    };
    match &opts.credentials {
        Some(c) => client.with_credentials(c).map_err(|e| e.to_string()),
        None => Ok(client),
    }
}

/// A client writing rows `first..` of a one-column integer table one after another, each
/// retried under its request id until acknowledged (or `patience` passes: a panic, the cluster
/// lost its quorum), pausing `pace` between rows, until [`SteadyWriter::finish`]; at most
/// 20,000 rows whatever happens. It reports the rows acknowledged and the longest time between
/// two acknowledgements (what a client saw of a fault), and prints each pause over 500 ms.
pub struct SteadyWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<i64>, Duration)>,
}

impl SteadyWriter {
    pub fn start(
        client: Client,
        table: &str,
        first: i64,
        pace: Duration,
        patience: Duration,
    ) -> SteadyWriter {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        static WRITERS: AtomicU64 = AtomicU64::new(0);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let client_id = format!("steady-{}-{}", std::process::id(), WRITERS.fetch_add(1, Ordering::Relaxed));
        let sql = format!("INSERT INTO {table} VALUES (?)");
        let task = tokio::spawn(async move {
            let (mut acked, mut longest, mut last) = (Vec::new(), Duration::ZERO, Instant::now());
            let began = last;
            for (seq, k) in (first..first + 20_000).enumerate() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let statement = vec![(sql.clone(), vec![Value::Integer(k)])];
                let deadline = Instant::now() + patience;
                loop {
                    match client.execute_as(&client_id, seq as u64 + 1, statement.clone(), false).await {
                        Ok(r) => {
                            if let Some(Err(e)) = r.results.first() {
                                panic!("row {k} failed: {e}");
                            }
                            break;
                        }
                        Err(e) if Instant::now() > deadline => {
                            panic!("row {k} was not acknowledged within {patience:?}: {e}")
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                acked.push(k);
                if last.elapsed() > Duration::from_millis(500) {
                    eprintln!(
                        "writer: {} ms without an acknowledgement, ending at +{} ms",
                        last.elapsed().as_millis(),
                        began.elapsed().as_millis()
                    );
                }
                longest = longest.max(last.elapsed());
                last = Instant::now();
                tokio::time::sleep(pace).await;
            }
            (acked, longest)
        });
        SteadyWriter { stop, task }
    }

    /// Stops after the row in flight is acknowledged; the rows acknowledged and the longest
    /// pause.
    pub async fn finish(self) -> (Vec<i64>, Duration) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("the steady writer")
    }
}

/// A running set of nodes.
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    nodes: BTreeMap<u64, Node>,
    opts: ClusterOptions,
    /// Talks to the nodes' real listen addresses (never through the proxies).
    client: Client,
    net: Option<nemesis::net::Net>,
    /// The cluster's certificates, when started with `tls`.
    pki: Option<pki::Pki>,
    /// Each node's TLS flags, issued at its first start.
    tls_args: BTreeMap<u64, Vec<String>>,
    /// How the harness's clients reach a TLS cluster (trusting the client CA).
    client_tls: Option<raftsql_client::Tls>,
    /// The highest id this cluster has forgotten: ids are never reused.
    retired: u64,
}

impl Cluster {
    /// Starts `n` nodes that bootstrap a cluster; returns once every node answers status.
    /// If a node loses its port to another process before binding it, the whole start is
    /// retried on fresh ports.
    pub async fn start(n: u64, opts: ClusterOptions) -> Result<Cluster> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(n, opts.clone()).await {
                Err(e) if attempt < 3 && e.contains("Address already in use") => continue,
                other => return other,
            }
        }
    }

    async fn try_start(n: u64, mut opts: ClusterOptions) -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("raftsql-test-").tempdir().map_err(|e| e.to_string())?;
        opts.peer_ports |= opts.tls;
        let pki = opts.tls.then(|| pki::Pki::new(&dir.path().join("pki")));
        let net = opts.proxied.map(nemesis::net::Net::new);
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            nodes.insert(id, Node::new(dir.path(), id, net.as_ref(), &opts).await?);
        }
        let bootstrap: Vec<String> = nodes
            .iter()
            .map(|(id, node)| match &node.peer_addr {
                Some(peer) => format!("{id}={}/{peer}", node.addr),
                None => format!("{id}={}", node.addr),
            })
            .collect();
        let client_tls = pki.as_ref().map(|p| p.client_tls()).or_else(|| opts.client_tls.clone());
        let client = connect(nodes.values().map(|n| n.listen.clone()), &opts, client_tls.as_ref()).await?;
        let mut cluster = Cluster {
            dir: Some(dir),
            nodes,
            opts,
            client,
            net,
            pki,
            tls_args: BTreeMap::new(),
            client_tls,
            retired: 0,
        };
        let bootstrap = bootstrap.join(",");
        for id in 1..=n {
            cluster.spawn(id, &["--bootstrap", &bootstrap])?;
        }
        for id in 1..=n {
            cluster.wait_answering(id).await?;
        }
        Ok(cluster)
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the dir is kept until drop").path()
    }

    /// Ids of every node this cluster knows (running or not).
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of the nodes whose process runs.
    pub fn running(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.child.is_some()).map(|(id, _)| *id).collect()
    }

    pub fn addr(&self, id: u64) -> &str {
        &self.nodes[&id].addr
    }

    /// Node `id`'s own peer listen address (not through a proxy), if it has a peer port.
    pub fn peer_listen(&self, id: u64) -> Option<&str> {
        self.nodes.get(&id)?.peer.as_deref()
    }

    /// Node `id`'s HTTP side port (`--http`), when the cluster was started with `http`.
    pub fn http_addr(&self, id: u64) -> Option<&str> {
        self.nodes.get(&id)?.http.as_deref()
    }

    /// Where other nodes reach node `id`: its peer port, or its address in single-port mode.
    pub fn peer_addr(&self, id: u64) -> &str {
        let node = &self.nodes[&id];
        node.peer_addr.as_deref().unwrap_or(&node.addr)
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.addr.clone()).collect()
    }

    /// Node `id`'s own listen address (not through a proxy).
    pub fn listen(&self, id: u64) -> &str {
        &self.nodes[&id].listen
    }

    /// The nodes' real listen addresses (the same as [`Cluster::addrs`] unless proxied).
    pub fn listens(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.listen.clone()).collect()
    }

    /// Kills node `id`, deletes its data dir and stops tracking it (after it was removed from
    /// the membership): its id is never handed out again. Its log stays in the dir.
    pub fn forget(&mut self, id: u64) {
        self.kill(id);
        if let Some(node) = self.nodes.remove(&id) {
            let _ = std::fs::remove_dir_all(&node.data_dir);
        }
        if let Some(net) = &self.net {
            net.remove_node(id);
        }
        self.retired = self.retired.max(id);
    }

    /// SIGKILLs every running node at once (as close together as the harness can).
    pub fn kill_all(&mut self) {
        for id in self.running() {
            self.signal(id, libc::SIGKILL);
        }
        for id in self.ids() {
            self.kill(id);
        }
    }

    /// Starts every node that is not running (with only its id, addresses and data dir).
    pub async fn start_stopped(&mut self) -> Result<()> {
        let stopped: Vec<u64> =
            self.nodes.iter().filter(|(_, n)| n.child.is_none()).map(|(id, _)| *id).collect();
        for &id in &stopped {
            self.spawn(id, &[])?;
        }
        for id in stopped {
            self.wait_answering(id).await?;
        }
        Ok(())
    }

    /// Whether node `id`'s process runs.
    pub fn is_running(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.child.is_some())
    }

    /// The path of node `id`'s log file.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.nodes[&id].log.clone()
    }

    /// A client over every node's address.
    pub async fn client(&self) -> Client {
        connect(self.addrs(), &self.opts, self.client_tls.as_ref()).await.expect("addresses are valid")
    }

    /// The fault-injecting network, when the cluster was started with `proxied`.
    /// A client of `addrs` that sends the cluster's credentials ([`ClusterOptions::credentials`]).
    pub async fn client_for(&self, addrs: impl IntoIterator<Item = String>) -> Result<Client> {
        connect(addrs, &self.opts, self.client_tls.as_ref()).await
    }

    /// Makes the harness's clients reach the nodes with `tls` from now on (after a rotation).
    pub async fn set_client_tls(&mut self, tls: raftsql_client::Tls) {
        self.client_tls = Some(tls);
        self.client =
            connect(self.listens(), &self.opts, self.client_tls.as_ref()).await.expect("valid addresses");
    }

    /// The cluster's certificates, when it was started with `tls`.
    pub fn pki(&self) -> Option<&pki::Pki> {
        self.pki.as_ref()
    }

    pub fn net(&self) -> Option<&nemesis::net::Net> {
        self.net.as_ref()
    }

    /// Writes every running node's thread stacks to `node-N.stacks` next to its log, when gdb
    /// is installed (a failed nemesis run does this before its processes are killed, so a node
    /// that hangs can be read afterwards). Returns the files written.
    pub fn dump_stacks(&self) -> Vec<PathBuf> {
        let mut written = Vec::new();
        for (id, node) in &self.nodes {
            let Some(child) = node.child.as_ref() else { continue };
            let out = node.log.with_extension("stacks");
            let gdb = Command::new("gdb")
                .args(["-p", &child.id().to_string(), "-batch", "-nx", "-ex", "thread apply all bt"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output();
            if let Ok(o) = gdb {
                if std::fs::write(&out, &o.stdout).is_ok() {
                    written.push(out);
                }
            } else {
                eprintln!("node {id}: no stacks (gdb is not installed)");
                break;
            }
        }
        written
    }

    /// Keeps the temp dir (logs, data, histories) after the cluster is dropped; returns its path.
    pub fn keep_dir(&mut self) -> Option<PathBuf> {
        self.dir.take().map(|d| d.keep())
    }

    fn spawn(&mut self, id: u64, extra: &[&str]) -> Result<()> {
        let server = bin_dir().join("raftsql-server");
        if let (Some(pki), false) = (&self.pki, self.tls_args.contains_key(&id)) {
            self.tls_args.insert(id, pki.node_args(id));
        }
        let tls_args = self.tls_args.get(&id).cloned().unwrap_or_default();
        let node = self.nodes.get_mut(&id).ok_or_else(|| format!("no node {id}"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&server);
        cmd.arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(&node.listen)
            .arg("--advertise")
            .arg(&node.addr)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(node.peer.iter().flat_map(|p| ["--peer-listen", p.as_str()]))
            .args(node.peer_addr.iter().flat_map(|p| ["--peer-advertise", p.as_str()]))
            .args(node.http.iter().flat_map(|h| ["--http", h.as_str()]))
            .args(extra)
            .args(&tls_args)
            .args(&self.opts.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RAFTSQL_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .envs(self.opts.env.iter().cloned())
            .envs(self.opts.node_env.iter().filter(|(n, _, _)| *n == id).map(|(_, k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        if let Some(t) = self.opts.snapshot_threshold {
            cmd.arg("--snapshot-threshold").arg(t.to_string());
        }
        if self.net.is_some() {
            cmd.arg("--peer-source-addr").arg(nemesis::net::source_ip(id).to_string());
        }
        let child = cmd.spawn().map_err(|e| format!("starting {}: {e}", server.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// The last lines of a node's log, for error messages.
    pub fn log_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn check_alive(&mut self, id: u64) -> Result<()> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| format!("no node {id}"))?;
        if let Some(child) = node.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                return Err(format!("node {id} exited ({status}); its log ends:\n{}", self.log_tail(id)));
            }
        }
        Ok(())
    }

    async fn wait_answering(&mut self, id: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.check_alive(id)?;
            if self.client.status(&self.nodes[&id].listen).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node {id} did not answer within 30 s; its log ends:\n{}",
                    self.log_tail(id)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A node's status.
    pub async fn status(&self, id: u64) -> Result<pb::StatusResponse> {
        self.client.status(&self.nodes[&id].listen).await.map_err(|e| format!("status of node {id}: {e}"))
    }

    /// The node that says it leads the highest term, among the running nodes not listed in
    /// `skip` (paused ones, whose status calls would only time out), if any does and a majority
    /// of the nodes asked name it as leader.
    pub async fn leader_now(&self, skip: &[u64]) -> Option<u64> {
        let ids: Vec<u64> = self.running().into_iter().filter(|id| !skip.contains(id)).collect();
        let mut seen = Vec::new();
        for id in &ids {
            if let Ok(s) = self.status(*id).await {
                seen.push((*id, s.leader_id, s.term, s.role()));
            }
        }
        let (leader, _) = seen
            .iter()
            .filter(|(_, _, _, role)| *role == pb::Role::Leader)
            .map(|(id, _, term, _)| (*id, *term))
            .max_by_key(|(_, term)| *term)?;
        let votes = seen.iter().filter(|(_, l, _, _)| *l == leader).count();
        (votes * 2 > ids.len()).then_some(leader)
    }

    /// Waits until a node leads with a majority of the members naming it (partitioned or
    /// stopped nodes may disagree).
    pub async fn wait_for_quorum_leader(&self, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader_now(&[]).await {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                return Err(format!("no leader named by a majority within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running node names the same leader, which says it leads that term.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<(u64, u64)> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let mut seen = Vec::new();
            for id in self.running() {
                match self.status(id).await {
                    Ok(s) => seen.push((id, s.leader_id, s.term, s.role())),
                    Err(e) => last = e,
                }
            }
            if seen.len() == self.running().len() {
                let (_, leader, _, _) = seen[0];
                let agreed = leader != 0 && seen.iter().all(|(_, l, _, _)| *l == leader);
                if agreed {
                    if let Some((_, _, term, _)) =
                        seen.iter().find(|(id, _, _, role)| *id == leader && *role == pb::Role::Leader)
                    {
                        return Ok((leader, *term));
                    }
                }
                last = format!("{seen:?}");
            }
            if Instant::now() > deadline {
                return Err(format!("no agreed leader within {timeout:?}; last seen: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = self.status(id).await {
                if s.applied_index >= index {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("node {id} did not apply index {index} within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A running node's resident memory (VmRSS), in bytes.
    pub fn rss_bytes(&self, id: u64) -> Option<u64> {
        self.proc_status(id, "VmRSS:").map(|kb| kb * 1024)
    }

    /// A running node's thread count.
    pub fn threads(&self, id: u64) -> Option<u64> {
        self.proc_status(id, "Threads:")
    }

    /// The number of field `name` (with its colon) in a running node's /proc/PID/status.
    fn proc_status(&self, id: u64, name: &str) -> Option<u64> {
        let pid = self.nodes.get(&id)?.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
    }

    /// SIGKILL a node and reap it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, id: u64, sig: i32) {
        if let Some(child) = self.nodes.get(&id).and_then(|n| n.child.as_ref()) {
            // SAFETY: kill(2) on the pid of a child this harness started and has not reaped.
            unsafe {
                libc::kill(child.id() as i32, sig);
            }
        }
    }

    /// Node `id`'s data dir.
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.nodes[&id].data_dir
    }

    /// Waits up to `timeout` for node `id` to exit on its own; past it, SIGKILLs it and fails.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.nodes.get_mut(&id).and_then(|n| n.child.as_mut());
            let Some(child) = child else { return Err(format!("node {id} is not running")) };
            if let Some(status) = child.try_wait().map_err(|e| format!("waiting for node {id}: {e}"))? {
                self.nodes.get_mut(&id).expect("found above").child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill(id);
                return Err(format!("node {id} did not exit within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM a node and wait up to `timeout` for it to exit; past it, SIGKILL it and fail.
    pub async fn terminate(&mut self, id: u64, timeout: Duration) -> Result<std::process::ExitStatus> {
        self.signal(id, libc::SIGTERM);
        self.wait_exit(id, timeout).await.map_err(|e| format!("after SIGTERM: {e}"))
    }

    /// SIGSTOP a node.
    pub fn pause(&self, id: u64) {
        self.signal(id, libc::SIGSTOP);
    }

    /// SIGCONT a paused node.
    pub fn resume(&self, id: u64) {
        self.signal(id, libc::SIGCONT);
    }

    /// Restarts a node with only its id, listen address and data dir.
    pub async fn restart(&mut self, id: u64) -> Result<()> {
        self.kill(id);
        self.spawn(id, &[])?;
        self.wait_answering(id).await
    }

    /// Starts a stopped node with `extra` flags besides its id, listen address and data dir
    /// (e.g. `--join` after [`Cluster::wipe`]); returns once it answers status.
    pub async fn start_with(&mut self, id: u64, extra: &[&str]) -> Result<()> {
        self.kill(id);
        self.spawn(id, extra)?;
        self.wait_answering(id).await
    }

    /// SIGKILLs a node and deletes its data dir: a machine that lost its disk.
    pub fn wipe(&mut self, id: u64) -> Result<()> {
        self.kill(id);
        let dir = &self.nodes.get(&id).ok_or_else(|| format!("no node {id}"))?.data_dir;
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("wiping {}: {e}", dir.display()))
            }
            _ => Ok(()),
        }
    }

    /// Waits until node `id`'s log contains `needle`; returns the matching line.
    pub async fn wait_log(&self, id: u64, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node {id}'s log did not show {needle:?} within {timeout:?}; it ends:\n{}",
                    self.log_tail(id)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Adds a node that joins through a running member; returns once it is a voter that has
    /// applied everything the leader had applied when it joined.
    pub async fn add_node(&mut self) -> Result<u64> {
        self.add(false).await
    }

    /// Adds a learner (read replica); returns once it is a member that has caught up.
    pub async fn add_learner(&mut self) -> Result<u64> {
        self.add(true).await
    }

    async fn add(&mut self, learner: bool) -> Result<u64> {
        let id = self.nodes.keys().max().copied().unwrap_or(0).max(self.retired) + 1;
        let node = Node::new(self.dir(), id, self.net.as_ref(), &self.opts).await?;
        self.nodes.insert(id, node);
        let leader = self.wait_for_quorum_leader(Duration::from_secs(30)).await?;
        let seed = self.peer_addr(leader).to_string();
        let mut args = vec!["--join", seed.as_str()];
        if learner {
            args.push("--learner");
        }
        self.spawn(id, &args)?;
        self.wait_answering(id).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_alive(id)?;
            let leader = self.wait_for_quorum_leader(Duration::from_secs(30)).await?;
            let ls = self.status(leader).await?;
            if ls.members.iter().any(|m| m.id == id && m.voter != learner) {
                self.wait_applied(id, ls.applied_index, Duration::from_secs(30)).await?;
                self.client = connect(self.listens(), &self.opts, self.client_tls.as_ref()).await?;
                return Ok(id);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node {id} did not become a member within 60 s; its log ends:\n{}",
                    self.log_tail(id)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every row of `table` on node `id` (a read at ANY pinned to it): row count and a checksum
    /// over the rows sorted by their rendering.
    pub async fn table_checksum(&self, id: u64, table: &str) -> Result<(usize, String)> {
        let opts = QueryOptions {
            consistency: Consistency::Any,
            node: Some(self.nodes[&id].listen.clone()),
            ..Default::default()
        };
        let r = self
            .client
            .query(&format!("SELECT * FROM {table}"), &[], opts)
            .await
            .map_err(|e| format!("reading {table} on node {id}: {e}"))?;
        let mut lines: Vec<String> = r.rows.iter().map(|row| render(row)).collect();
        lines.sort();
        Ok((lines.len(), fnv(&lines.join("\n"))))
    }

    /// Waits until every running node has applied what the leader applied, then checks that
    /// they hold identical contents of `table`. Returns (rows, checksum).
    ///
    /// What the leader applied is read from a STRONG read's receipt (its state machine's own
    /// index, which every acknowledged write has reached), not only from its status: openraft
    /// updates the status's applied index just after the client's answer, so right after a
    /// write the status may still name the entry before it.
    pub async fn assert_converged(&self, table: &str) -> Result<(usize, String)> {
        let (leader, _) = self.wait_for_leader(Duration::from_secs(30)).await?;
        let strong = QueryOptions { consistency: Consistency::Strong, ..Default::default() };
        let barrier =
            self.client.query("SELECT 1", &[], strong).await.map_err(|e| format!("a STRONG read: {e}"))?;
        let target = self.status(leader).await?.applied_index.max(barrier.receipt.applied_index);
        for id in self.running() {
            self.wait_applied(id, target, Duration::from_secs(30)).await?;
        }
        let mut sums = Vec::new();
        for id in self.running() {
            sums.push((id, self.table_checksum(id, table).await?));
        }
        let first = sums[0].1.clone();
        if sums.iter().any(|(_, s)| *s != first) {
            return Err(format!("replicas diverge on {table}: {sums:?}"));
        }
        Ok(first)
    }
}

impl Node {
    async fn new(
        dir: &Path,
        id: u64,
        net: Option<&nemesis::net::Net>,
        opts: &ClusterOptions,
    ) -> Result<Node> {
        let listen = format!("127.0.0.1:{}", free_port());
        let peer = opts.peer_ports.then(|| format!("127.0.0.1:{}", free_port()));
        let http = opts.http.then(|| format!("127.0.0.1:{}", free_port()));
        let (addr, peer_addr) = match net {
            Some(net) => {
                let upstream = listen.parse().map_err(|e| format!("{listen}: {e}"))?;
                let entry =
                    net.register(id, upstream).await.map_err(|e| format!("proxy for node {id}: {e}"))?;
                let peer_entry = match &peer {
                    Some(p) => {
                        let upstream = p.parse().map_err(|e| format!("{p}: {e}"))?;
                        let e = net.register_peer(id, upstream).await;
                        Some(e.map_err(|e| format!("peer proxy for node {id}: {e}"))?.to_string())
                    }
                    None => None,
                };
                (entry.to_string(), peer_entry)
            }
            None => (listen.clone(), peer.clone()),
        };
        Ok(Node {
            addr,
            listen,
            peer,
            peer_addr,
            http,
            data_dir: dir.join(format!("node-{id}")),
            log: dir.join(format!("node-{id}.log")),
            child: None,
        })
    }
}

fn render(row: &[Value]) -> String {
    row.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join("|")
}

/// FNV-1a, 64-bit: stable across processes and builds.
fn fnv(s: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in self.ids() {
            self.resume(id);
            self.kill(id);
        }
        if std::thread::panicking() || std::env::var_os("RAFTSQL_KEEP_TEST_DIR").is_some() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("cluster logs and data kept in {}", kept.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_bindable() {
        let a = free_port();
        let b = free_port();
        assert!(a > 0 && b > 0);
        std::net::TcpListener::bind(("127.0.0.1", a)).expect("a free port can be bound");
    }

    #[test]
    fn checksums_are_stable() {
        assert_eq!(fnv(""), "cbf29ce484222325");
        assert_eq!(render(&[Value::Integer(1), Value::Null]), "Integer(1)|Null");
    }
}
