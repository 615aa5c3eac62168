//! A single `raftsql-server` process and the `raftsql` shell: start-up refusals, clean
//! shutdown, and the shell's non-interactive contract against a real cluster.

use raftsql_tests::{bin_dir, free_port, Cluster, ClusterOptions};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn server(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin_dir().join("raftsql-server"));
    cmd.args(args).env("RUST_LOG", "warn").stdin(Stdio::null());
    cmd
}

fn run_to_end(mut cmd: Command) -> Output {
    // These invocations refuse to start, so they end by themselves; the timeout only guards a
    // regression that would make one serve forever.
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn raftsql-server");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(out) => out.expect("wait for raftsql-server"),
        Err(_) => {
            // SAFETY: kill(2) on the pid of the child spawned above, not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("raftsql-server did not exit within {WAIT:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());

    // Node 1 claims the dir, then stops cleanly on SIGTERM.
    let mut child =
        server(&["--id", "1", "--listen", &addr, "--data-dir", data, "--bootstrap", &format!("1={addr}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let client = raftsql_client::Client::connect([addr.clone()]).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // A single-node cluster elects itself.
        if client.status(&addr).await.is_ok_and(|s| s.role() == raftsql_client::pb::Role::Leader) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "node 1 never led its single-node cluster");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = client.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)", &[]).await.unwrap();
    res.results.into_iter().next().unwrap().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "SIGTERM must end the node cleanly, got {status}");

    // Node 2 on node 1's dir: refused with a message that says what to do.
    let out = run_to_end(server(&["--id", "2", "--listen", &addr, "--data-dir", data]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("belongs to node 1, not node 2") && err.contains("--id 1"),
        "unexpected refusal message: {err}"
    );

    // The dir is untouched: node 1 restarts on it alone and still has its table.
    let mut child = server(&["--id", "1", "--listen", &addr, "--data-dir", data])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ok = false;
    while tokio::time::Instant::now() < deadline + WAIT {
        if let Ok(r) = client.query("SELECT * FROM t", &[], Default::default()).await {
            assert!(r.rows.is_empty());
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "node 1 did not serve its table after the refused start");

    // A used data dir whose database is unreadable (sled then opens it empty) or gone: node 1
    // must not come back as itself with an empty log (issue 16), and says how to recover.
    let db_file = dir.path().join("data").join("db").join("db");
    let mut bytes = std::fs::read(&db_file).unwrap();
    bytes[40..42].copy_from_slice(b"XX");
    std::fs::write(&db_file, bytes).unwrap();
    for damage in ["two bytes overwritten", "database removed"] {
        if damage == "database removed" {
            std::fs::remove_dir_all(dir.path().join("data").join("db")).unwrap();
        }
        let out = run_to_end(server(&["--id", "1", "--listen", &addr, "--data-dir", data]));
        assert!(!out.status.success(), "{damage}: node 1 must refuse to start");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("corrupt") && err.contains("under a new --id"), "{damage}: {err}");
        assert!(!err.contains("panicked"), "{damage}: a readable error, not a panic: {err}");
    }
}

#[test]
fn bad_flags_are_refused_with_readable_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    let http = |value: &'static str| {
        let v = if value == "BUSY" { busy.as_str() } else { value };
        vec!["--id", "1", "--listen", addr.as_str(), "--data-dir", data, "--bootstrap", "1=h:1", "--http", v]
    };
    let busy_expect = format!("cannot listen for HTTP (--http) on {busy}: Address already in use");
    for (args, expect) in [
        // The HTTP side port is bound before anything else starts, and a bad value named.
        (http("nonsense"), "cannot listen for HTTP (--http) on nonsense: invalid socket address"),
        (http("127.0.0.1:99999"), "cannot listen for HTTP (--http) on 127.0.0.1:99999: invalid port value"),
        (http("BUSY"), busy_expect.as_str()),
        (vec!["--id", "0", "--listen", &addr, "--data-dir", data], "--id must be at least 1"),
        (
            vec!["--id", "1", "--listen", &addr, "--data-dir", data, "--bootstrap", "2=h:1"],
            "does not list this node",
        ),
        (
            vec!["--id", "1", "--listen", &addr, "--data-dir", data, "--bootstrap", "1=h"],
            "expected HOST:PORT",
        ),
        (vec!["--id", "1", "--listen", "0.0.0.0:1", "--data-dir", data], "--advertise"),
        // An empty data dir with neither --bootstrap nor --join: never "wait to be added", or a
        // node that lost its data would rejoin as its old self (issue 16).
        (
            vec!["--id", "1", "--listen", &addr, "--data-dir", data],
            "neither --bootstrap nor --join was given",
        ),
        (vec!["--id", "1", "--listen", &addr, "--data-dir", "/proc/version"], "not a directory"),
        (vec!["--id", "x", "--listen", &addr, "--data-dir", data], "invalid value"),
        // The lease must stay within half of how long followers refuse other leaders.
        (
            vec!["--id", "1", "--listen", &addr, "--data-dir", data, "--read-lease-ms", "1500"],
            "--read-lease-ms 1500 is above --election-timeout-ms 1000",
        ),
        (
            vec!["--id", "1", "--listen", &addr, "--data-dir", data, "--peer-source-addr", "127.0.0.1:7000"],
            "invalid value '127.0.0.1:7000' for '--peer-source-addr <IP>'",
        ),
    ] {
        let out = run_to_end(server(&args));
        assert!(!out.status.success(), "{args:?} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: expected {expect:?} in: {err}");
    }
}

fn shell(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(bin_dir().join("raftsql"));
    cmd.arg("--addr").arg(cluster.addrs().join(",")).args(args);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_json_contract_and_exit_codes() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    cluster.wait_for_leader(WAIT).await.expect("leader");

    let out = shell(
        &cluster,
        &[
            "--format",
            "json",
            "-e",
            "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER, r REAL, b BLOB)",
            "-e",
            "INSERT INTO kv VALUES ('a', 1, 0.5, x'ff00'), ('b', NULL, NULL, NULL); SELECT * FROM kv WHERE k = 'a'",
        ],
        None,
    );
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "one JSON object per statement: {lines:?}");
    assert_eq!(lines[1]["rows_affected"], 2);
    assert_eq!(lines[2]["columns"], serde_json::json!(["k", "v", "r", "b"]));
    assert_eq!(lines[2]["rows"], serde_json::json!([["a", 1, 0.5, "\\xff00"]]));
    let receipt = &lines[1]["receipt"];
    assert!(receipt["node"].as_u64().unwrap() >= 1 && receipt["term"].as_u64().unwrap() >= 1);
    assert!(receipt["index"].as_u64().unwrap() > lines[0]["receipt"]["index"].as_u64().unwrap());

    // A failing statement: error object, message on stderr, exit status 1; the others still run.
    let out = shell(
        &cluster,
        &["--format", "json"],
        Some("INSERT INTO kv VALUES ('a', 2, 0, NULL);\nSELECT v FROM kv WHERE k = 'a';"),
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["error"]["code"], "CONSTRAINT");
    assert_eq!(lines[1]["rows"], serde_json::json!([[1]]), "the duplicate changed nothing");
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNIQUE constraint failed"));

    // Table format for people.
    let out = shell(&cluster, &["-e", "SELECT k, v FROM kv WHERE k = 'b'"], None);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("k | v") && text.contains("b | NULL") && text.contains("(1 row)"), "{text}");
}

/// The README's first command: `raftsql demo` starts real nodes, runs SQL from its input,
/// survives `.demo kill` of the leader, and leaves no process or directory behind.
#[test]
fn demo_runs_sql_survives_a_kill_and_cleans_up() {
    let mut child = Command::new(bin_dir().join("raftsql"))
        .arg("demo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        // The demo's first leader is node 1 or another; kill whichever: SQL must keep working.
        stdin
            .write_all(
                b"CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);\nINSERT INTO t VALUES (1, 'one'),\n (2, 'two');\n\
                  .demo kill 1\n.demo kill 2\n.demo restart 2\nINSERT INTO t VALUES (3, 'three');\nSELECT * FROM t;\n.quit\n",
            )
            .unwrap();
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the demo process this test spawned.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("raftsql demo did not finish within 90 s");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("3  | three") && stdout.contains("(3 rows)"), "{stdout}");
    // Nothing left behind: the node pids are gone and the data dir is removed.
    let dir = stdout.lines().find_map(|l| l.split("data in ").nth(1)).expect("the demo prints its data dir");
    assert!(!std::path::Path::new(dir.trim()).exists(), "{dir} was left behind");
    for pid in stdout.lines().filter_map(|l| l.split("(pid ").nth(1)).map(|p| p.trim_end_matches(')')) {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "server pid {pid} still runs");
    }
}

/// Causality across shell invocations: the token printed by a write, passed with `--token` to a
/// read at `--consistency ryw` on a single follower, makes that read see the write; bad levels
/// are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_carries_session_tokens_between_invocations() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("leader");
    let out = shell(
        &cluster,
        &[
            "--format",
            "json",
            "-e",
            "CREATE TABLE t (k INTEGER PRIMARY KEY)",
            "-e",
            "INSERT INTO t VALUES (7)",
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().lines().last().unwrap()).unwrap();
    let token = last["receipt"]["token"].as_str().expect("a token in the receipt").to_string();
    assert!(token.contains('.'), "{token}");
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let out = Command::new(bin_dir().join("raftsql"))
        .args([
            "--addr",
            cluster.addr(follower),
            "--consistency",
            "ryw",
            "--token",
            &token,
            "--format",
            "json",
            "-e",
            "SELECT k FROM t",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"], serde_json::json!([[7]]));
    for bad in ["eventual", "bounded:-5s"] {
        let out = Command::new(bin_dir().join("raftsql"))
            .args(["--consistency", bad, "-e", "SELECT 1"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad} must be refused");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("consistency"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `--config FILE` fills in what the command line and the environment leave unset: a flag wins
/// over the file, a variable wins over the file, and the rest comes from it. A key that is no
/// setting is refused, naming the file and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_fills_in_what_flags_and_environment_leave_unset() {
    let dir = tempfile::tempdir().unwrap();
    let (file_listen, flag_listen) =
        (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let (file_http, env_http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let config = dir.path().join("raftsql.toml");
    std::fs::write(
        &config,
        format!(
            "id = 1\nlisten = \"{file_listen}\"\ndata-dir = \"{}\"\nbootstrap = \"1={flag_listen}\"\nhttp = \"{file_http}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut cmd = server(&["--config", config.to_str().unwrap(), "--listen", &flag_listen]);
    cmd.env("RAFTSQL_HTTP", &env_http).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().expect("start raftsql-server");
    let deadline = tokio::time::Instant::now() + WAIT;
    let answered = loop {
        if let Ok((200, _)) = raftsql_tests::http_get(&env_http, "/healthz").await {
            break true;
        }
        if tokio::time::Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let client = raftsql_client::Client::connect([flag_listen.as_str()]).await.unwrap();
    let status = client.status(&flag_listen).await;
    let file_ports_taken =
        [&file_listen, &file_http].map(|a| std::net::TcpStream::connect(a.as_str()).is_ok());
    let _ = child.kill();
    let _ = child.wait();
    assert!(answered, "the HTTP port of RAFTSQL_HTTP ({env_http}) never answered");
    assert_eq!(
        status.expect("the node answers at the --listen of the command line").node_id,
        1,
        "id from the file"
    );
    assert_eq!(
        file_ports_taken,
        [false, false],
        "the file's listen and http lost to the flag and the variable"
    );

    std::fs::write(&config, "id = 1\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let out = run_to_end(server(&["--config", config.to_str().unwrap()]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("raftsql.toml") && stderr.contains("\"lisen\" is not a setting"), "{stderr}");
}
