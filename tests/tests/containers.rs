//! Issue 20: the cluster as Docker containers. Separate hosts with their own IPs and DNS names,
//! started from the image `deploy/build-image` makes (FROM scratch) by `deploy/compose.yaml`,
//! and killed, cut off, frozen and replaced — what loopback processes cannot show.
//!
//! Each test brings the compose file up under a project name of its own (`rsqlt<random>`), so
//! its network, containers and volumes carry that label, and takes them down (`down -v`, and
//! every extra container it labeled) when it ends, also on failure. Clients run on the host
//! and reach the nodes through their client ports, published on 127.0.0.1 at ports picked at
//! run time. Every wait has a deadline; every docker command has a time limit.
//!
//! The image is built from the binaries the other tests use (`bin_dir()`, stripped), tagged
//! by their identity so the tests of one run share it. Without a Docker daemon the tests fail
//! when `CI` is set and are skipped, with the reason printed, elsewhere.

use raftsql_client::{Client, Consistency, QueryOptions, Value};
use raftsql_tests::{bin_dir, free_port, SteadyWriter};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(60);
/// Longest any one docker command may take.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// Runs a command with a time limit; its stdout, or why it failed.
fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    let deadline = std::time::Instant::now() + DOCKER_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{shown} took over {DOCKER_TIMEOUT:?}; killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{shown}: {e}")),
        }
    }
    let out = child.wait_with_output().map_err(|e| format!("{shown}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{shown} failed ({}): {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn docker(args: &[&str]) -> Result<String, String> {
    run(Command::new("docker").args(args))
}

/// `docker compose` (v2) or `docker-compose` (v1), whichever this machine has.
fn compose_command() -> Vec<String> {
    if run(Command::new("docker").args(["compose", "version"])).is_ok() {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// Whether the tests can run: a Docker daemon answers. In CI its absence is a failure.
fn docker_ready() -> bool {
    match docker(&["info", "--format", "{{.ServerVersion}}"]) {
        Ok(_) => true,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI needs a Docker daemon for the container tests: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: no Docker daemon answers ({e}); the container tests need one");
            false
        }
    }
}

/// The image for this build's binaries: `raftsql:test-<identity>`, built by deploy/build-image
/// if it is not there yet.
fn image() -> String {
    let identity = ["raftsql-server", "raftsql"]
        .iter()
        .map(|b| {
            let m = std::fs::metadata(bin_dir().join(b)).expect("the binaries are built");
            let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            format!("{}-{}", m.len(), mtime.map(|d| d.as_nanos()).unwrap_or(0))
        })
        .chain(["deploy/image/rootfs.sh", "deploy/image/Dockerfile.scratch"].iter().map(|f| {
            std::fs::read_to_string(repo().join(f)).map(|s| s.len().to_string()).unwrap_or_default()
        }))
        .collect::<Vec<_>>()
        .join("-");
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    identity.hash(&mut h);
    let tag = format!("test-{:016x}", h.finish());
    let image = format!("raftsql:{tag}");
    if docker(&["image", "inspect", &image]).is_err() {
        // Older test images go first: one per build is kept.
        if let Ok(old) = docker(&["images", "-q", "--filter", "label=raftsql.test.image=1"]) {
            for id in old.lines().filter(|l| !l.is_empty()) {
                let _ = docker(&["rmi", "-f", id]);
            }
        }
        let out = run(Command::new(repo().join("deploy/build-image"))
            .arg(&tag)
            .env("RAFTSQL_BIN_DIR", bin_dir())
            .env("RAFTSQL_IMAGE_LABEL", "raftsql.test.image=1"))
        .unwrap_or_else(|e| panic!("building the image: {e}"));
        eprintln!("{out}");
    }
    image
}

/// One test's cluster: deploy/compose.yaml brought up under its own project name.
struct Cluster {
    project: String,
    image: String,
    /// Host ports of the client ports of ordinals 0..5 (compose runs 0..3).
    ports: Vec<u16>,
    compose: Vec<String>,
    /// Containers of the ordinals scaled up beyond the compose file's three.
    extra: std::collections::BTreeMap<usize, String>,
    /// The voters a settled cluster has.
    voters: std::cell::Cell<usize>,
}

impl Cluster {
    /// Brings the three nodes up and waits until they agree on a leader.
    async fn up() -> Cluster {
        let image = image();
        let project = format!("rsqlt{:08x}", rand_u32());
        let c = Cluster {
            project,
            image,
            ports: (0..5).map(|_| free_port()).collect(),
            compose: compose_command(),
            extra: Default::default(),
            voters: std::cell::Cell::new(3),
        };
        c.compose(&["up", "-d"]).unwrap_or_else(|e| panic!("compose up: {e}"));
        c.wait_agreed(&[0, 1, 2], None).await;
        c
    }

    fn compose(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .args(["-p", &self.project, "-f"])
            .arg(repo().join("deploy/compose.yaml"))
            .args(args)
            .env("RAFTSQL_IMAGE", &self.image)
            .env("RUST_LOG", "info,openraft=warn");
        for (i, p) in self.ports.iter().take(3).enumerate() {
            cmd.env(format!("RAFTSQL_PORT_{i}"), p.to_string());
        }
        run(&mut cmd)
    }

    fn addr(&self, ordinal: usize) -> String {
        format!("127.0.0.1:{}", self.ports[ordinal])
    }

    /// The container of pod `ordinal` (its id; compose names differ between v1 and v2).
    fn container(&self, ordinal: usize) -> String {
        match self.extra.get(&ordinal) {
            Some(id) => id.clone(),
            None => self.compose(&["ps", "-q", &format!("raftsql-{ordinal}")]).expect("compose ps"),
        }
    }

    /// Starts pod `ordinal` beyond the compose file's three, as a StatefulSet scaled up
    /// would: the same image and environment, its name, the network, a volume of its own.
    fn scale_up(&mut self, ordinal: usize) {
        let name = format!("raftsql-{ordinal}");
        let id = docker(&[
            "run",
            "-d",
            "--name",
            &format!("{}-{name}", self.project),
            "--hostname",
            &name,
            "--network",
            &self.network(),
            "--network-alias",
            &name,
            "--label",
            &format!("raftsql.test.run={}", self.project),
            "-p",
            &format!("127.0.0.1:{}:7000", self.ports[ordinal]),
            "-e",
            "RAFTSQL_STATEFULSET_REPLICAS=3",
            "-e",
            "RAFTSQL_STATEFULSET_HOST_TEMPLATE={name}",
            "-e",
            "RAFTSQL_FORWARD_WRITES=true",
            "-e",
            "RUST_LOG=info,openraft=warn",
            &self.image,
        ])
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.extra.insert(ordinal, id);
    }

    /// Stops (SIGTERM) and deletes a scaled-up pod and its volume.
    fn scale_down(&mut self, ordinal: usize) {
        let id = self.extra.remove(&ordinal).expect("a scaled-up pod");
        docker(&["stop", "-t", "30", &id]).expect("docker stop");
        docker(&["rm", "-v", &id]).expect("docker rm");
    }

    fn network(&self) -> String {
        format!("{}_raftsql", self.project)
    }

    fn ip(&self, ordinal: usize) -> String {
        docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.container(ordinal),
        ])
        .expect("docker inspect")
    }

    fn logs(&self, ordinal: usize) -> String {
        let c = self.container(ordinal);
        let out = Command::new("docker").args(["logs", "--tail", "40", &c]).output();
        out.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .unwrap_or_default()
    }

    async fn client(&self, ordinals: &[usize]) -> Client {
        Client::connect(ordinals.iter().map(|o| self.addr(*o))).await.expect("a client")
    }

    /// Waits until the nodes `ordinals` answer status, name the same leader (not `not`) with
    /// three voters, and have applied what it had; returns the leader's ordinal.
    async fn wait_agreed(&self, ordinals: &[usize], not: Option<usize>) -> usize {
        let client = self.client(ordinals).await;
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            let mut seen = Vec::new();
            for o in ordinals {
                match client.status(&self.addr(*o)).await {
                    Ok(s) => seen.push(s),
                    Err(e) => last = format!("raftsql-{o}: {e}"),
                }
            }
            if seen.len() == ordinals.len() {
                let leader = seen[0].leader_id;
                let applied = seen.iter().find(|s| s.node_id == leader).map(|s| s.applied_index);
                if leader != 0
                    && Some(leader as usize - 1) != not
                    && seen.iter().all(|s| {
                        s.leader_id == leader
                            && s.members.iter().filter(|m| m.voter).count() == self.voters.get()
                            && Some(s.applied_index) >= applied
                    })
                {
                    return leader as usize - 1;
                }
                last = format!(
                    "{:?}",
                    seen.iter().map(|s| (s.node_id, s.leader_id, s.term)).collect::<Vec<_>>()
                );
            }
            if Instant::now() > deadline {
                let logs: String =
                    ordinals.iter().map(|o| format!("--- raftsql-{o}:\n{}\n", self.logs(*o))).collect();
                panic!("nodes {ordinals:?} did not agree on a leader within {WAIT:?}; last: {last}\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Up, with a table `t` holding rows `0..rows`: the cluster, a client of every node, the
    /// keys acknowledged and the leader's ordinal.
    async fn with_rows(rows: i64) -> (Cluster, Client, Vec<i64>, usize) {
        let c = Cluster::up().await;
        let client = c.client(&[0, 1, 2]).await;
        client.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)", &[]).await.expect("create");
        let want = write(&client, 0, rows).await;
        let leader = c.wait_agreed(&[0, 1, 2], None).await;
        (c, client, want, leader)
    }

    /// Writes rows `from..to` after the fault, then checks that every node holds exactly the
    /// acknowledged rows: none lost, none extra.
    async fn finish(&self, client: &Client, want: &mut Vec<i64>, from: i64, to: i64) {
        want.extend(write(client, from, to).await);
        for o in 0..3 {
            self.wait_rows(o, want).await;
        }
    }

    /// Every row of `t` on pod `ordinal` (a read at ANY pinned to it).
    async fn rows(&self, ordinal: usize) -> Vec<i64> {
        let client = self.client(&[ordinal]).await;
        let opts = QueryOptions { consistency: Consistency::Any, ..Default::default() };
        let r = client.query("SELECT k FROM t ORDER BY k", &[], opts).await.expect("read t");
        r.rows.iter().map(|row| if let Value::Integer(k) = row[0] { k } else { panic!("{row:?}") }).collect()
    }

    /// Waits until pod `ordinal` holds exactly `want` in `t`.
    async fn wait_rows(&self, ordinal: usize, want: &[i64]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.rows(ordinal).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "raftsql-{ordinal} holds {} rows, not the {} acknowledged, after {WAIT:?}",
                got.len(),
                want.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A container on the test's network that only holds an address (the shell waiting on
    /// stdin): taking the address a stopped container had makes its replacement get another.
    fn hold_an_address(&self) -> String {
        docker(&[
            "run",
            "-d",
            "-i",
            "--network",
            &self.network(),
            "--label",
            &format!("raftsql.test.run={}", self.project),
            "--entrypoint",
            "/usr/local/bin/raftsql",
            &self.image,
            "--addr",
            "127.0.0.1:1",
        ])
        .expect("an address holder")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for o in (0..3).chain(self.extra.keys().copied()) {
                eprintln!("--- raftsql-{o} (last lines):\n{}", self.logs(o));
            }
        }
        if let Ok(extra) =
            docker(&["ps", "-aq", "--filter", &format!("label=raftsql.test.run={}", self.project)])
        {
            for id in extra.lines().filter(|l| !l.is_empty()) {
                // -v: the image declares /data a volume, so every container has one.
                let _ = docker(&["rm", "-f", "-v", id]);
            }
        }
        if let Err(e) = self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]) {
            eprintln!("compose down {}: {e}", self.project);
        }
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish() as u32
}

/// Writes rows `from..to` through `client`, retrying each under its request id (so a retry of
/// a write that did commit returns its first outcome) until it is acknowledged or WAIT passes;
/// returns the keys acknowledged.
async fn write(client: &Client, from: i64, to: i64) -> Vec<i64> {
    let client_id = format!("writer-{:08x}", rand_u32());
    let mut acked = Vec::new();
    for (seq, k) in (from..to).enumerate() {
        let deadline = Instant::now() + WAIT;
        let statement = vec![("INSERT INTO t VALUES (?)".to_string(), vec![Value::Integer(k)])];
        loop {
            match client.execute_as(&client_id, seq as u64 + 1, statement.clone(), false).await {
                Ok(r) => {
                    if let Some(Err(e)) = r.results.first() {
                        panic!("insert {k} failed: {e}");
                    }
                    acked.push(k);
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    panic!("insert {k} not acknowledged within {WAIT:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    acked
}

/// 1. Formation: three containers form a cluster from their names and the replica count alone;
///    a client on the host writes through every node and reads from every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_containers_form_a_cluster_by_name_and_serve_through_every_node() {
    if !docker_ready() {
        return;
    }
    let c = Cluster::up().await;
    c.client(&[0]).await.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)", &[]).await.expect("create");
    let mut want = Vec::new();
    for o in 0..3 {
        // Through this node only: followers forward writes (RAFTSQL_FORWARD_WRITES in compose).
        want.extend(write(&c.client(&[o]).await, o as i64 * 10, o as i64 * 10 + 10).await);
    }
    for o in 0..3 {
        c.wait_rows(o, &want).await;
    }
    // STRONG reads are served by the leader: a follower names it, by a name only the cluster's
    // network resolves, so the host's client falls back to the addresses it was given.
    let strong =
        c.client(&[0, 1, 2]).await.query("SELECT count(*) FROM t", &[], QueryOptions::default()).await;
    assert_eq!(strong.expect("a STRONG read").rows, vec![vec![Value::Integer(30)]]);
    // The image's own health check agrees.
    for o in 0..3 {
        docker(&["exec", &c.container(o), "/usr/local/bin/raftsql-server", "probe", "readyz"])
            .unwrap_or_else(|e| panic!("raftsql-{o} is not ready by its health check: {e}"));
    }
}

/// 2. The leader is killed; a new one is elected and writes go on; the old container is
///    recreated on its volume with another IP and rejoins by name, catching up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_comes_back_with_a_new_ip_and_catches_up() {
    if !docker_ready() {
        return;
    }
    let (c, client, mut want, leader) = Cluster::with_rows(20).await;
    let old_ip = c.ip(leader);
    docker(&["kill", &c.container(leader)]).expect("docker kill");
    let others: Vec<usize> = (0..3).filter(|o| *o != leader).collect();
    want.extend(write(&c.client(&others).await, 20, 40).await);
    // The old address is taken meanwhile, so the replacement gets another one.
    c.hold_an_address();
    c.compose(&["rm", "-f", &format!("raftsql-{leader}")]).expect("remove the killed container");
    c.compose(&["up", "-d", "--no-deps", &format!("raftsql-{leader}")]).expect("recreate it");
    let new_ip = c.ip(leader);
    assert_ne!(new_ip, old_ip, "the recreated container kept its IP; the test proves nothing");
    c.wait_agreed(&[0, 1, 2], None).await;
    c.finish(&client, &mut want, 40, 50).await;
}

/// 3. The leader is cut off its network while a client writes: the majority elects a new
///    leader; the isolated old leader acknowledges no write and serves no STRONG read; after
///    reconnecting it follows, and every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_acknowledges_nothing_and_heals_into_a_follower() {
    if !docker_ready() {
        return;
    }
    let (c, client, mut want, leader) = Cluster::with_rows(10).await;
    let old = c.container(leader);
    docker(&["network", "disconnect", &c.network(), &old]).expect("disconnect the leader");
    let others: Vec<usize> = (0..3).filter(|o| *o != leader).collect();
    let majority = c.client(&others).await;
    want.extend(write(&majority, 10, 30).await);
    c.wait_agreed(&others, Some(leader)).await;
    // On the isolated node itself (from inside its container: its published port went with
    // its network): a write and a STRONG read must fail, within the shell's deadline.
    for sql in ["INSERT INTO t VALUES (1000)", "SELECT count(*) FROM t"] {
        let started = Instant::now();
        let out = Command::new("docker")
            .args(["exec", &old, "/usr/local/bin/raftsql", "--addr", "127.0.0.1:7000", "-e", sql])
            .output()
            .expect("docker exec");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "the isolated old leader answered {sql:?}: {text}");
        assert!(
            // TIMEOUT on a write says "may or may not have been applied": indeterminate.
            // TRANSPORT: it pointed the client at a leader it cannot reach either.
            [
                "NOT_LEADER",
                "UNAVAILABLE",
                "INDETERMINATE",
                "TIMEOUT",
                "TRANSPORT",
                "not the leader",
                "no leader"
            ]
            .iter()
            .any(|w| text.contains(w)),
            "{sql:?} on the isolated old leader ended with an unexpected error: {text}"
        );
        assert!(started.elapsed() < Duration::from_secs(30), "{sql:?} took {:?}", started.elapsed());
    }
    docker(&["network", "connect", "--alias", &format!("raftsql-{leader}"), &c.network(), &old])
        .expect("reconnect");
    c.wait_agreed(&[0, 1, 2], Some(leader)).await;
    c.finish(&client, &mut want, 30, 40).await;
}

/// 4. The leader is frozen (`docker pause`) past the election timeout: the others elect a new
///    leader; unpaused, the old one's stale term is fenced and it follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_fenced_when_it_thaws() {
    if !docker_ready() {
        return;
    }
    let (c, client, mut want, leader) = Cluster::with_rows(10).await;
    let term_before = client.status(&c.addr(leader)).await.expect("status").term;
    docker(&["pause", &c.container(leader)]).expect("docker pause");
    let others: Vec<usize> = (0..3).filter(|o| *o != leader).collect();
    want.extend(write(&c.client(&others).await, 10, 30).await);
    c.wait_agreed(&others, Some(leader)).await;
    docker(&["unpause", &c.container(leader)]).expect("docker unpause");
    c.wait_agreed(&[0, 1, 2], Some(leader)).await;
    let s = client.status(&c.addr(leader)).await.expect("status of the thawed node");
    assert!(s.term > term_before, "the thawed node is still in term {} (was {term_before})", s.term);
    c.finish(&client, &mut want, 30, 40).await;
}

/// 8. A node started on a data dir written by a newer on-disk format refuses, with a clear
///    error and a non-zero exit, and leaves the files as they were.
#[test]
fn a_data_dir_of_a_newer_format_is_refused_and_left_untouched() {
    if !docker_ready() {
        return;
    }
    let image = image();
    let dir = tempfile::Builder::new().prefix("raftsql-test-").tempdir().expect("a temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    std::fs::write(data.join("node_id"), "1\n").expect("node_id");
    std::fs::write(data.join("incarnation"), "00000000000000aa\n").expect("incarnation");
    std::fs::write(data.join("format"), "999\n").expect("format");
    // The image's user owns /data, as a volume would give it.
    let _ = Command::new("chown").args(["-R", "10001:10001"]).arg(&data).status();
    let before: Vec<(String, String)> = files(&data);
    let out = Command::new("docker")
        .args(["run", "--rm", "--hostname", "raftsql-0", "--label", "raftsql.test.run=format"])
        .args(["-e", "RAFTSQL_STATEFULSET_REPLICAS=3", "-v"])
        .arg(format!("{}:/data", data.display()))
        .arg(&image)
        .output()
        .expect("docker run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a node on a newer format started: {stderr}");
    assert!(stderr.contains("format") && stderr.contains("999"), "the error does not say why: {stderr}");
    assert_eq!(files(&data), before, "the refused data dir was changed");
}

/// Every file under `dir` with its contents.
fn files(dir: &Path) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read_to_string(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    all.sort();
    all
}

/// The registry Dockerfile and the no-registry one describe the same image: their final
/// stages are the same, line for line.
#[test]
fn both_dockerfiles_build_the_same_final_image() {
    let final_stage = |path: &str| {
        let text = std::fs::read_to_string(repo().join(path)).expect(path);
        let start = text.find("\nFROM scratch").unwrap_or_else(|| panic!("{path} has no FROM scratch stage"));
        text[start..]
            .lines()
            .map(|l| l.replace("--from=build ", "").replace("/out/", ""))
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
    };
    assert_eq!(final_stage("deploy/Dockerfile"), final_stage("deploy/image/Dockerfile.scratch"));
}

impl Cluster {
    /// A cluster with an empty table `u` and a steady writer on it through `ordinals`.
    async fn with_writer(&self, ordinals: &[usize]) -> SteadyWriter {
        self.client(&[0, 1, 2]).await.execute("CREATE TABLE u (k INTEGER)", &[]).await.expect("create u");
        SteadyWriter::start(self.client(ordinals).await, "u", 0, Duration::from_millis(20), WAIT)
    }

    /// Every node in `ordinals` holds exactly `acked` in `u`: nothing lost, nothing twice.
    async fn check_steady(&self, ordinals: &[usize], acked: &[i64]) {
        let client = self.client(&[0, 1, 2]).await;
        let barrier =
            client.query("SELECT count(*) FROM u", &[], QueryOptions::default()).await.expect("read");
        assert_eq!(
            barrier.rows,
            vec![vec![Value::Integer(acked.len() as i64)]],
            "rows lost or written twice"
        );
        for &o in ordinals {
            let deadline = Instant::now() + WAIT;
            let opts = QueryOptions { consistency: Consistency::Any, ..Default::default() };
            loop {
                let r = self.client(&[o]).await.query("SELECT k FROM u ORDER BY k", &[], opts.clone()).await;
                let got: Vec<i64> = r
                    .expect("read u")
                    .rows
                    .iter()
                    .map(|row| if let Value::Integer(k) = row[0] { k } else { panic!("{row:?}") })
                    .collect();
                if got == acked {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "raftsql-{o} holds {} rows of u, not the {} acknowledged",
                    got.len(),
                    acked.len()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Waits until Docker's health check (`raftsql-server probe readyz`) calls pod `ordinal`
    /// healthy.
    async fn wait_healthy(&self, ordinal: usize) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let health = docker(&["inspect", "-f", "{{.State.Health.Status}}", &self.container(ordinal)]);
            if health.as_deref() == Ok("healthy") {
                return;
            }
            assert!(Instant::now() < deadline, "raftsql-{ordinal} is not healthy after 90 s: {health:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// 5. Rolling restart under load: each node in turn gets SIGTERM (`compose stop`, grace
///    period) and is started again, the next only once the last is ready; a client writing
///    all along with retries and request ids loses nothing and duplicates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_and_duplicates_nothing() {
    if !docker_ready() {
        return;
    }
    let c = Cluster::up().await;
    let began = Instant::now();
    let writer = c.with_writer(&[0, 1, 2]).await;
    let at = || began.elapsed().as_millis();
    for o in 0..3 {
        let pod = format!("raftsql-{o}");
        eprintln!("rolling restart: stop {pod} at +{} ms", at());
        c.compose(&["stop", "-t", "30", &pod]).expect("compose stop");
        eprintln!("rolling restart: start {pod} at +{} ms", at());
        c.compose(&["start", &pod]).expect("compose start");
        c.wait_healthy(o).await;
        eprintln!("rolling restart: {pod} healthy at +{} ms", at());
    }
    let (acked, longest) = writer.finish().await;
    eprintln!(
        "rolling restart: {} writes acknowledged; longest time without an acknowledgement: {} ms",
        acked.len(),
        longest.as_millis()
    );
    c.wait_agreed(&[0, 1, 2], None).await;
    c.check_steady(&[0, 1, 2], &acked).await;
}

/// 6. A follower's volume is deleted and it starts fresh: refused as its old self, it says
///    what to do; after `.remove`, as the procedure says, it joins again through a snapshot
///    or the log, is promoted, and holds every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_wiped_volume_rejoins_by_the_documented_procedure() {
    if !docker_ready() {
        return;
    }
    let (c, client, mut want, leader) = Cluster::with_rows(20).await;
    let f = (leader + 1) % 3;
    let pod = format!("raftsql-{f}");
    c.compose(&["rm", "-s", "-f", &pod]).expect("stop and remove the follower");
    docker(&["volume", "rm", &format!("{}_data-{f}", c.project)]).expect("delete its volume");
    want.extend(write(&c.client(&[leader]).await, 20, 30).await);
    c.compose(&["up", "-d", "--no-deps", &pod]).expect("start it on a new volume");
    let deadline = Instant::now() + WAIT;
    while !c.logs(f).contains("remove its old self") {
        assert!(Instant::now() < deadline, "raftsql-{f} did not say how to bring it back:\n{}", c.logs(f));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    client.remove_member(f as u64 + 1).await.expect(".remove of the old member");
    c.wait_agreed(&[0, 1, 2], None).await;
    c.finish(&client, &mut want, 30, 40).await;
}

/// 7. Scale 3 → 5 → 3 under writes: new ordinals join as learners and are promoted; scaling
///    down removes the highest ordinals first, then stops them; quorum is never lost (every
///    write is acknowledged within the writer's deadline) and the data stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_three_to_five_and_back_keeps_quorum_and_data() {
    if !docker_ready() {
        return;
    }
    let mut c = Cluster::up().await;
    let writer = c.with_writer(&[0, 1, 2]).await;
    for o in [3, 4] {
        c.scale_up(o);
        c.voters.set(o + 1);
        c.wait_agreed(&(0..=o).collect::<Vec<_>>(), None).await;
    }
    let admin = c.client(&[0, 1, 2]).await;
    for o in [4, 3] {
        admin.remove_member(o as u64 + 1).await.unwrap_or_else(|e| panic!(".remove {}: {e}", o + 1));
        c.scale_down(o);
        c.voters.set(o);
        c.wait_agreed(&(0..o).collect::<Vec<_>>(), None).await;
    }
    let (acked, longest) = writer.finish().await;
    eprintln!(
        "scale 3 -> 5 -> 3: {} writes acknowledged; longest gap {} ms",
        acked.len(),
        longest.as_millis()
    );
    c.check_steady(&[0, 1, 2], &acked).await;
}
