//! Issue 19: a StatefulSet simulated on loopback. Pods `raftsql-0..` are `raftsql-server`
//! processes started exactly as the manifests start them — configuration from the environment
//! only, the node id and addresses from the pod's name — with the one test-only difference that
//! `RAFTSQL_STATEFULSET_TEST_ADDRS` maps each pod name to its own 127.0.0.1 ports instead of
//! DNS. They form a cluster with no other input, scale up and down, and a pod whose volume was
//! lost is brought back by the documented procedure.

use raftsql_client::{Client, Consistency, QueryOptions, Value};
use raftsql_tests::kube::FakeKube;
use raftsql_tests::{bin_dir, free_port};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(60);

/// One StatefulSet on loopback: its pods' processes, their volumes (data dirs) and logs.
struct StatefulSet {
    dir: Option<tempfile::TempDir>,
    replicas: u64,
    /// Client, peer and HTTP address of every ordinal that may run.
    addrs: BTreeMap<u64, (String, String, String)>,
    pods: BTreeMap<u64, Child>,
    /// The Kubernetes API the pods ask at SIGTERM whether they are being scaled away.
    kube: Option<FakeKube>,
}

impl StatefulSet {
    /// A set whose pods start with `RAFTSQL_STATEFULSET_REPLICAS=replicas`; ports for up to
    /// `max` ordinals.
    fn new(replicas: u64, max: u64) -> StatefulSet {
        let dir = tempfile::Builder::new().prefix("raftsql-test-").tempdir().expect("a temp dir");
        let port = || format!("127.0.0.1:{}", free_port());
        let addrs = (0..max).map(|o| (o, (port(), port(), port()))).collect();
        StatefulSet { dir: Some(dir), replicas, addrs, pods: BTreeMap::new(), kube: None }
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("kept until drop").path()
    }

    fn volume(&self, ordinal: u64) -> PathBuf {
        self.dir().join(format!("data-raftsql-{ordinal}"))
    }

    fn log(&self, ordinal: u64) -> PathBuf {
        self.dir().join(format!("raftsql-{ordinal}.log"))
    }

    fn client_addr(&self, ordinal: u64) -> &str {
        &self.addrs[&ordinal].0
    }

    /// Starts pod `ordinal` the way the StatefulSet's pod template does: environment only.
    fn start(&mut self, ordinal: u64) {
        let map: Vec<String> =
            self.addrs.iter().map(|(o, (c, p, _))| format!("raftsql-{o}={c}/{p}")).collect();
        let (client, peer, http) = &self.addrs[&ordinal];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log(ordinal)).expect("log");
        let mut cmd = Command::new(bin_dir().join("raftsql-server"));
        cmd.env_clear();
        if let Some(k) = &self.kube {
            cmd.env("RAFTSQL_KUBE_API", &k.url).env("RAFTSQL_KUBE_SA_DIR", &k.sa_dir);
        }
        let child = cmd
            .env("RAFTSQL_STATEFULSET_REPLICAS", self.replicas.to_string())
            .env("RAFTSQL_HOSTNAME", format!("raftsql-{ordinal}"))
            .env("RAFTSQL_STATEFULSET_TEST_ADDRS", map.join(","))
            .env("RAFTSQL_LISTEN", client)
            .env("RAFTSQL_PEER_LISTEN", peer)
            .env("RAFTSQL_HTTP", http)
            .env("RAFTSQL_DATA_DIR", self.volume(ordinal))
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start raftsql-server");
        self.pods.insert(ordinal, child);
    }

    /// SIGKILLs pod `ordinal` (a pod deleted with no grace) and reaps it.
    fn kill(&mut self, ordinal: u64) {
        if let Some(mut c) = self.pods.remove(&ordinal) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs pod `ordinal` and waits for it to exit (a scale-down or rolling restart).
    async fn stop(&mut self, ordinal: u64) {
        let mut c = self.pods.remove(&ordinal).expect("a running pod");
        // SAFETY: kill(2) on the pid of a child we started and have not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                assert!(status.success(), "raftsql-{ordinal} exited with {status} after SIGTERM");
                return;
            }
            assert!(Instant::now() < deadline, "raftsql-{ordinal} did not exit within {WAIT:?} of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self, ordinal: u64) -> String {
        std::fs::read_to_string(self.log(ordinal)).unwrap_or_default()
    }

    fn alive(&mut self, ordinal: u64) {
        if let Some(c) = self.pods.get_mut(&ordinal) {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("raftsql-{ordinal} exited ({status}); its log:\n{}", self.log_text(ordinal));
            }
        }
    }

    async fn client(&self) -> Client {
        let addrs: Vec<String> = self.pods.keys().map(|o| self.client_addr(*o).to_string()).collect();
        Client::connect(addrs).await.expect("a client")
    }

    /// Waits until every running pod reports the same leader and exactly `voters` as voting
    /// members (and no learner), and has applied what the leader had; returns the leader's id.
    async fn wait_members(&mut self, voters: &[u64]) -> u64 {
        let deadline = Instant::now() + WAIT;
        let client = self.client().await;
        let mut last = String::new();
        loop {
            let ordinals: Vec<u64> = self.pods.keys().copied().collect();
            for o in &ordinals {
                self.alive(*o);
            }
            let mut seen = Vec::new();
            for o in &ordinals {
                match client.status(self.client_addr(*o)).await {
                    Ok(s) => seen.push(s),
                    Err(e) => last = format!("raftsql-{o}: {e}"),
                }
            }
            if seen.len() == ordinals.len() {
                let leader = seen[0].leader_id;
                let want: Vec<(u64, bool)> = voters.iter().map(|v| (*v, true)).collect();
                let applied = seen.iter().find(|s| s.node_id == leader).map(|s| s.applied_index);
                let agree = leader != 0
                    && seen.iter().all(|s| {
                        let mut members: Vec<(u64, bool)> =
                            s.members.iter().map(|m| (m.id, m.voter)).collect();
                        members.sort();
                        s.leader_id == leader && members == want && Some(s.applied_index) >= applied
                    });
                if agree {
                    return leader;
                }
                last = format!(
                    "{:?}",
                    seen.iter()
                        .map(|s| (
                            s.node_id,
                            s.leader_id,
                            s.applied_index,
                            s.members.iter().map(|m| (m.id, m.voter)).collect::<Vec<_>>()
                        ))
                        .collect::<Vec<_>>()
                );
            }
            if Instant::now() > deadline {
                let logs: String = ordinals
                    .iter()
                    .map(|o| format!("--- raftsql-{o}:\n{}\n", tail(&self.log_text(*o))))
                    .collect();
                panic!(
                    "the pods did not agree on voters {voters:?} within {WAIT:?}; last seen: {last}\n{logs}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every row of `t` as pod `ordinal` holds it (a read at ANY pinned to it).
    /// The rows of `t` on one pod (at ANY), once it holds `n` of them: a follower applies an
    /// acknowledged write up to a heartbeat after the leader, so a read right after the write
    /// may not see it yet. At the deadline, what it holds then (the caller's assert says more).
    async fn rows(&self, ordinal: u64, n: usize) -> Vec<Vec<Value>> {
        let deadline = Instant::now() + WAIT;
        let opts = QueryOptions { consistency: Consistency::Any, ..Default::default() };
        loop {
            let read = match Client::connect([self.client_addr(ordinal)]).await {
                Ok(client) => client.query("SELECT k, v FROM t ORDER BY k", &[], opts.clone()).await,
                Err(e) => Err(e),
            };
            match read {
                Ok(r) if r.rows.len() == n || Instant::now() >= deadline => return r.rows,
                Err(e) if Instant::now() >= deadline => panic!("raftsql-{ordinal}: read t: {e}"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn wait_log(&self, ordinal: u64, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log_text(ordinal).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "raftsql-{ordinal}'s log did not show {needle:?} within {WAIT:?}:\n{}",
                tail(&self.log_text(ordinal))
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for StatefulSet {
    fn drop(&mut self) {
        let ordinals: Vec<u64> = self.pods.keys().copied().collect();
        for o in ordinals {
            self.kill(o);
        }
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!("pod logs and volumes kept in {}", dir.keep().display());
            }
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

async fn write(client: &Client, from: i64, to: i64) {
    for k in from..to {
        client
            .execute("INSERT INTO t VALUES (?, ?)", &[Value::Integer(k), Value::Text(format!("row {k}"))])
            .await
            .unwrap_or_else(|e| panic!("insert {k}: {e}"));
    }
}

/// Three pods started with the same environment form a cluster by their names alone; a fourth
/// ordinal joins and is promoted; scaling down (the API's replica count lowered, then SIGTERM,
/// as the StatefulSet controller does) makes it leave the cluster by itself, while a restart
/// does not; a pod that lost its volume is refused as its old self, says what to do, and joins
/// by itself once that is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_forms_by_name_scales_and_takes_back_a_pod_that_lost_its_volume() {
    let mut set = StatefulSet::new(3, 4);
    set.kube = Some(FakeKube::start(set.dir(), "raftsql", 3).await);
    // Parallel pod management: all three at once.
    for o in 0..3 {
        set.start(o);
    }
    set.wait_members(&[1, 2, 3]).await;
    let client = set.client().await;
    client.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)", &[]).await.expect("create");
    write(&client, 0, 20).await;
    for o in 0..3 {
        assert_eq!(set.rows(o, 20).await.len(), 20, "raftsql-{o} after the first writes");
    }

    // Scale to 4: ordinal 3 is not a founder, so it joins, is caught up and promoted.
    set.kube.as_ref().unwrap().set_replicas(4);
    set.start(3);
    set.wait_members(&[1, 2, 3, 4]).await;
    assert!(set.log_text(3).contains("joined the cluster"), "{}", tail(&set.log_text(3)));
    write(&client, 20, 30).await;
    set.wait_members(&[1, 2, 3, 4]).await;
    assert_eq!(set.rows(3, 30).await.len(), 30, "the scaled-up pod holds every row");

    // Scale back to 3: the controller lowers the count, then SIGTERMs the highest ordinal,
    // which asks the API, sees it is being scaled away and leaves before it exits.
    set.kube.as_ref().unwrap().set_replicas(3);
    set.stop(3).await;
    let log = set.log_text(3);
    assert!(log.contains("scaled down past this pod") && log.contains("left the cluster"), "{}", tail(&log));
    std::fs::remove_dir_all(set.volume(3)).expect("delete raftsql-3's volume");
    set.wait_members(&[1, 2, 3]).await;

    // raftsql-1 loses its volume and comes back: refused as its old self, it says what to do.
    set.kill(1);
    std::fs::remove_dir_all(set.volume(1)).expect("wipe raftsql-1's volume");
    write(&client, 30, 40).await;
    set.start(1);
    set.wait_log(1, "remove its old self").await;
    let stale = Client::connect([set.client_addr(1)]).await.expect("a client");
    let any = QueryOptions { consistency: Consistency::Any, ..Default::default() };
    match stale.query("SELECT k FROM t", &[], any).await {
        Ok(r) => assert!(r.rows.is_empty(), "a refused pod served rows: {:?}", r.rows),
        Err(e) => assert!(e.to_string().contains("t"), "{e}"),
    }
    // The documented procedure: remove node 2 through any member; the pod then joins by itself.
    client.remove_member(2).await.expect("remove node 2");
    set.wait_members(&[1, 2, 3]).await;
    write(&client, 40, 45).await;
    set.wait_members(&[1, 2, 3]).await;
    let want = set.rows(0, 45).await;
    assert_eq!(want.len(), 45);
    for o in [1, 2] {
        assert_eq!(set.rows(o, 45).await, want, "raftsql-{o} after the recovery");
    }

    // A restart keeps its identity and data: nothing is founded or joined again, and the pod
    // stays a member (the API still wants 3).
    set.stop(2).await;
    assert!(set.log_text(2).contains("a restart, not a scale-down"), "{}", tail(&set.log_text(2)));
    set.start(2);
    set.wait_members(&[1, 2, 3]).await;
    assert_eq!(set.rows(2, 45).await, want, "raftsql-2 after a restart");

    // When the API cannot say (here: 403, a missing RBAC rule), a pod stays a member even if
    // it was being scaled away: a wrong removal is worse than a manual one.
    set.kube.as_ref().unwrap().set_replicas(2);
    set.kube.as_ref().unwrap().set_forbidden(true);
    set.stop(2).await;
    assert!(
        set.log_text(2).contains("cannot tell a scale-down from a restart"),
        "{}",
        tail(&set.log_text(2))
    );
    set.start(2);
    set.wait_members(&[1, 2, 3]).await;
}

/// The entrypoint's mistakes are refused at start with the reason: a hostname without an
/// ordinal, an --id that contradicts it.
#[test]
fn a_pod_without_an_ordinal_in_its_name_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let run = |host: &str, extra: &[(&str, &str)]| {
        let out = Command::new(bin_dir().join("raftsql-server"))
            .env_clear()
            .env("RAFTSQL_STATEFULSET_REPLICAS", "3")
            .env("RAFTSQL_HOSTNAME", host)
            .env("RAFTSQL_LISTEN", "127.0.0.1:0")
            .env("RAFTSQL_DATA_DIR", dir.path())
            .envs(extra.iter().copied())
            .output()
            .expect("run raftsql-server");
        assert!(!out.status.success(), "{host} must be refused");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run("database", &[]);
    assert!(e.contains("NAME-ORDINAL"), "{e}");
    let e = run("raftsql-1", &[("RAFTSQL_ID", "7")]);
    assert!(e.contains("contradicts"), "{e}");
    assert!(!dir.path().join("node_id").exists(), "a refused start must not claim the data dir");
}
