//! The `raftsql` shell against real clusters: the non-interactive contract (`-e`, `-f`, stdin,
//! every output format, exit codes, meta commands, `.dump` into an empty cluster), the
//! interactive prompt driven through a pseudo-terminal, and `raftsql demo` under a
//! pseudo-terminal and under signals.

use raftsql_tests::{bin_dir, Cluster, ClusterOptions};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// Runs `raftsql --addr <cluster> ARGS` to its end, with `stdin` piped in when given.
fn shell(addrs: &[String], args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(bin_dir().join("raftsql"));
    cmd.arg("--addr").arg(addrs.join(",")).args(args);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    wait_output(child, WAIT * 2)
}

fn wait_output(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the child this test spawned.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("raftsql did not finish within {limit:?}");
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

const SCHEMA_AND_DATA: &str = "\
CREATE TABLE people (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT UNIQUE,
    score REAL,
    photo BLOB,
    active BOOLEAN
);
CREATE INDEX people_name ON people (name);
CREATE UNIQUE INDEX people_score ON people (score, id);
CREATE TABLE pairs (a INTEGER, b TEXT, PRIMARY KEY (a, b));
CREATE TABLE notes (body TEXT);
INSERT INTO people VALUES
    (1, 'ada', 'ada@example.com', 0.1, x'00ff10', TRUE),
    (2, 'O''Brien; \"quoted\"', NULL, 1e-300, NULL, FALSE),
    (3, 'multi
line -- not a comment', 'x@y', -2.5e300, x'', NULL),
    (9223372036854775807, 'ünïcødé ✓', 'max', 0.30000000000000004, x'deadbeef', TRUE),
    (-7, '', '', 3.0, NULL, NULL);
INSERT INTO pairs VALUES (1, 'a'), (1, 'b'), (-3, 'it''s');
INSERT INTO notes VALUES ('one'), (NULL), ('one');
";

/// `-e`, `-f`, stdin, meta commands and every format against one cluster; exit codes; errors on
/// stderr with the syntax error's position; `.dump` into an empty cluster recreates the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_interactive_contract_formats_meta_commands_and_dump() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    cluster.wait_for_leader(WAIT).await.expect("leader");
    let addrs = cluster.addrs();
    let dir = tempfile::tempdir().unwrap();

    // -f: a file of multi-line statements; `.tables` between them.
    let file = dir.path().join("schema.sql");
    std::fs::write(&file, format!("{SCHEMA_AND_DATA}.tables\n")).unwrap();
    let out = ok(&shell(&addrs, &["-f", file.to_str().unwrap()], None));
    assert!(out.contains("OK, 5 rows affected"), "{out}");
    let tables: Vec<&str> = out.lines().filter(|l| ["notes", "pairs", "people"].contains(l)).collect();
    assert_eq!(tables, ["notes", "pairs", "people"], "{out}");

    // .read runs another file; .timer and .receipts add lines after each result.
    let inner = dir.path().join("inner.sql");
    std::fs::write(&inner, "SELECT count(*) AS n\nFROM notes;\n").unwrap();
    let outer = dir.path().join("outer.sql");
    std::fs::write(&outer, format!(".timer on\n.receipts on\n.read {}\n", inner.display())).unwrap();
    let out = ok(&shell(&addrs, &["-f", outer.to_str().unwrap()], None));
    assert!(out.starts_with("n\n-\n3\n(1 row)\nreceipt: node "), "{out}");
    assert!(out.contains(", level strong\nTime: ") && out.ends_with(" ms\n"), "{out}");

    // Every format, for the same query.
    let q = "SELECT id, name, score, photo FROM people WHERE id IN (1, -7) ORDER BY id";
    let table = ok(&shell(&addrs, &["-e", q], None));
    assert!(table.starts_with("id | name | score | photo\n---+-"), "{table}");
    assert!(table.contains("-7 |      | 3.0   | NULL") && table.contains("(2 rows)"), "{table}");
    let csv = ok(&shell(&addrs, &["--format", "csv", "-e", q], None));
    assert_eq!(csv, "id,name,score,photo\n-7,,3.0,\n1,ada,0.1,\\x00ff10\n");
    let line = ok(&shell(&addrs, &["--format", "line", "-e", q], None));
    assert!(line.starts_with("   id = -7\n name = \n"), "{line}");
    assert!(line.contains("\n\n   id = 1\n name = ada\nscore = 0.1\nphoto = \\x00ff10\n"), "{line}");
    let json = ok(&shell(&addrs, &["--format", "json", "-e", q], None));
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["rows"], serde_json::json!([[-7, "", 3.0, null], [1, "ada", 0.1, "\\x00ff10"]]));
    // CSV quotes what needs quoting.
    let csv = ok(&shell(
        &addrs,
        &["--format", "csv", "-e", "SELECT name FROM people WHERE id IN (2, 3) ORDER BY id"],
        None,
    ));
    assert_eq!(csv, "name\n\"O'Brien; \"\"quoted\"\"\"\n\"multi\nline -- not a comment\"\n");
    // .mode inside a script switches the format.
    let out = ok(&shell(&addrs, &[], Some(".mode csv\nSELECT 1 AS one;\n.mode line\nSELECT 2 AS two;\n")));
    assert_eq!(out, "one\n1\ntwo = 2\n");

    // Exit status: 1 when a statement fails (the error on stderr), the others still run.
    let out =
        shell(&addrs, &[], Some("INSERT INTO pairs VALUES (1, 'a');\nSELECT count(*) AS n FROM pairs;\n"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("error (CONSTRAINT)"), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("3"), "{}", text(&out.stdout));
    // A syntax error points at its position.
    let out = shell(&addrs, &["-e", "SELECT id\nFROM people WHER id = 1"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("error (SYNTAX)"), "{err}");
    let caret_line = err.lines().position(|l| l.starts_with("LINE 2: FROM people WHER id = 1")).expect(&err);
    let caret = err.lines().nth(caret_line + 1).unwrap();
    assert_eq!(caret.find('^'), Some("LINE 2: FROM people WHER ".len()), "{err}");
    // Unknown meta commands and .demo outside a demo fail too.
    let out = shell(&addrs, &["-e", ".nonsense"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown command .nonsense"));
    assert_eq!(shell(&addrs, &["-e", ".demo kill 1"], None).status.code(), Some(1));

    // .schema: CREATE statements, user indexes, never the implicit UNIQUE index.
    let schema = ok(&shell(&addrs, &["-e", ".schema people"], None));
    assert!(schema.starts_with("CREATE TABLE people ("), "{schema}");
    assert!(schema.contains("CREATE INDEX people_name ON people (name);"), "{schema}");
    assert!(schema.contains("CREATE UNIQUE INDEX people_score"), "{schema}");
    assert!(!schema.contains("autoindex") && !schema.contains("pairs"), "{schema}");
    let indexes = ok(&shell(&addrs, &["-e", ".indexes people"], None));
    assert!(indexes.contains("people_name\n") && indexes.contains("people_score\n"), "{indexes}");
    assert_eq!(shell(&addrs, &["-e", ".schema nosuch"], None).status.code(), Some(1));

    // .status (text and JSON), .nodes, .leader.
    let (leader, term) = cluster.wait_for_leader(WAIT).await.unwrap();
    let status = ok(&shell(&addrs, &["-e", ".status"], None));
    assert!(status.contains(&format!("leader:     node {leader} at {}", cluster.addr(leader))), "{status}");
    assert!(
        status.contains("replication (from leader node")
            && status.contains("lag (entries)")
            && status.contains("lag (ms)"),
        "{status}"
    );
    let out = ok(&shell(&addrs, &["--format", "json", "-e", ".status"], None));
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s["leader"]["id"], leader);
    assert!(s["term"].as_u64().unwrap() >= term);
    assert_eq!(s["followers"].as_array().map(|f| f.len()), Some(2), "{s}");
    let nodes = ok(&shell(&addrs, &["-e", ".nodes", "-e", ".leader"], None));
    assert_eq!(nodes.lines().filter(|l| l.ends_with(" yes")).count(), 3, "{nodes}");
    assert!(nodes.contains(&format!("node {leader} at {} leads term", cluster.addr(leader))), "{nodes}");

    // .dump, piped into an empty cluster, recreates identical schema and data.
    let dump = ok(&shell(&addrs, &["-e", ".dump"], None));
    assert!(
        dump.contains("INSERT INTO people VALUES (2, 'O''Brien; \"quoted\"', NULL, 1e-300, NULL, FALSE);"),
        "{dump}"
    );
    assert!(!dump.contains("autoindex"), "{dump}");
    let target = Cluster::start(1, ClusterOptions::default()).await.expect("target cluster starts");
    target.wait_for_leader(WAIT).await.expect("target leader");
    let taddrs = target.addrs();
    ok(&shell(&taddrs, &[], Some(&dump)));
    for q in [
        "SELECT * FROM people ORDER BY id",
        "SELECT * FROM pairs ORDER BY a, b",
        "SELECT body, count(*) FROM notes GROUP BY body ORDER BY body",
        "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name",
    ] {
        let a = ok(&shell(&addrs, &["--format", "json", "-e", q], None));
        let b = ok(&shell(&taddrs, &["--format", "json", "-e", q], None));
        let (a, b): (serde_json::Value, serde_json::Value) =
            (serde_json::from_str(&a).unwrap(), serde_json::from_str(&b).unwrap());
        assert_eq!(a["rows"], b["rows"], "{q}");
    }
    // The dump of the copy is the same text.
    assert_eq!(ok(&shell(&taddrs, &["-e", ".dump"], None)), dump);
    // A single table's dump.
    let pairs = ok(&shell(&addrs, &["-e", ".dump pairs"], None));
    assert!(
        pairs.contains("INSERT INTO pairs VALUES (-3, 'it''s');") && !pairs.contains("people"),
        "{pairs}"
    );
}

// ---- a pseudo-terminal driver ----

/// A process on a pseudo-terminal: what it prints is collected by a reader thread; `expect`
/// waits (with a deadline) for text after what earlier `expect`s consumed.
struct Pty {
    master: std::fs::File,
    child: Child,
    seen: Arc<(Mutex<Vec<u8>>, Condvar)>,
    cursor: usize,
}

impl Pty {
    fn spawn(mut cmd: Command) -> Pty {
        let (mut master, mut slave) = (0, 0);
        let ws = libc::winsize { ws_row: 50, ws_col: 200, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: openpty fills two fds that we then own.
        let rc =
            unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &ws) };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just returned by openpty and are owned by nobody else.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn on a pty");
        drop(slave);
        let master = std::fs::File::from(master);
        let seen = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let (mut reader, seen2) = (master.try_clone().unwrap(), seen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the last process holding the terminal exits.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen2.0.lock().unwrap().extend_from_slice(&buf[..n]);
                seen2.1.notify_all();
            }
        });
        Pty { master, child, seen, cursor: 0 }
    }

    fn send(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).unwrap();
    }

    /// Waits for `needle` after the cursor; returns the text up to and including it.
    fn expect(&mut self, needle: &str) -> String {
        self.expect_within(needle, WAIT)
    }

    fn expect_within(&mut self, needle: &str, limit: Duration) -> String {
        self.try_expect(needle, limit).unwrap_or_else(|tail| {
            panic!("waited {limit:?} for {needle:?}; the terminal shows after the cursor:\n{tail}")
        })
    }

    /// Like `expect_within`, but returns what was seen instead of panicking.
    fn try_expect(&mut self, needle: &str, limit: Duration) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        let mut seen = self.seen.0.lock().unwrap();
        loop {
            let tail = String::from_utf8_lossy(&seen[self.cursor..]).into_owned();
            if let Some(i) = tail.find(needle) {
                let upto = &tail[..i + needle.len()];
                self.cursor += upto.len();
                return Ok(upto.to_string());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(tail);
            }
            seen = self.seen.1.wait_timeout(seen, deadline - now).unwrap().0;
        }
    }

    fn all(&self) -> String {
        String::from_utf8_lossy(&self.seen.0.lock().unwrap()).into_owned()
    }

    /// Waits for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the process did not exit within {limit:?}:\n{}", self.all());
            let seen = self.seen.0.lock().unwrap();
            let _ = self.seen.1.wait_timeout(seen, Duration::from_millis(50)).unwrap();
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: the child this driver spawned, not yet reaped. SIGTERM first so a demo can
            // clean up, then SIGKILL.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20)); // polling the exit, not a wait for it
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn raftsql_cmd(history: &Path) -> Command {
    let mut cmd = Command::new(bin_dir().join("raftsql"));
    cmd.env("RAFTSQL_HISTORY", history).env("TERM", "xterm").env_remove("RAFTSQL_ADDR");
    cmd
}

/// The prompt through a pseudo-terminal: multi-line input, history recall with the up arrow
/// (also from the history file in a new session), `.mode`, Ctrl-C dropping the typed input and
/// cancelling a statement that hangs, SIGINT at the prompt leaving the shell up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_prompt_through_a_pty() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    cluster.wait_for_leader(WAIT).await.expect("leader");
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history");
    let addrs = cluster.addrs().join(",");

    let mut cmd = raftsql_cmd(&history);
    cmd.args(["--addr", &addrs]);
    let mut pty = Pty::spawn(cmd);
    // A statement over three lines: continuation prompts until the `;`. (Every line is typed
    // after its prompt: like other readline-style editors, the prompt drops unread type-ahead.)
    pty.expect("raftsql> ");
    pty.send("CREATE TABLE t (id INTEGER PRIMARY KEY,\r");
    pty.expect("...> ");
    pty.send("  v TEXT)\r");
    pty.expect("...> ");
    pty.send(";\r");
    pty.expect("OK, 0 rows affected");
    pty.expect("raftsql> ");
    pty.send("INSERT INTO t VALUES (1, 'one'), (2, NULL);\r");
    pty.expect("OK, 2 rows affected");
    pty.expect("raftsql> ");
    pty.send("SELECT * FROM t ORDER BY id;\r");
    pty.expect("2  | NULL");
    pty.expect("(2 rows)");
    // Up arrow recalls the last statement; Enter runs it again.
    pty.expect("raftsql> ");
    pty.send("\x1b[A");
    pty.expect("SELECT * FROM t ORDER BY id;");
    pty.send("\r");
    pty.expect("(2 rows)");
    // .mode csv
    pty.expect("raftsql> ");
    pty.send(".mode csv\r");
    pty.expect("raftsql> ");
    pty.send("SELECT v FROM t WHERE id = 1;\r");
    pty.expect("v\r\none\r\n");
    pty.expect("raftsql> ");
    pty.send(".mode table\r");
    // Ctrl-C drops a half-typed statement: the next one runs alone (else: a syntax error).
    pty.expect("raftsql> ");
    pty.send("SELECT 'never\r");
    pty.expect("...> ");
    pty.send("\x03");
    pty.expect("raftsql> ");
    pty.send("SELECT 40 + 2 AS answer;\r");
    pty.expect("42");
    pty.expect("(1 row)");
    pty.expect("raftsql> ");
    // Ctrl-C cancels a statement that cannot finish: every node is paused.
    let ids = cluster.ids();
    for &id in &ids {
        cluster.pause(id);
    }
    pty.send("SELECT * FROM t;\r");
    pty.expect("SELECT * FROM t;");
    // A Ctrl-C typed before the editor let go of the terminal is read as a key at the next
    // prompt instead of raising SIGINT: send it again until the statement is cancelled.
    let mut cancelled = None;
    for _ in 0..4 {
        pty.send("\x03");
        if let Ok(out) = pty.try_expect("cancelled", Duration::from_secs(2)) {
            cancelled = Some(out);
            break;
        }
    }
    let out = cancelled.unwrap_or_else(|| panic!("Ctrl-C did not cancel the statement:\n{}", pty.all()));
    assert!(!out.contains("(2 rows)"), "{out}");
    for &id in &ids {
        cluster.resume(id);
    }
    pty.expect("raftsql> ");
    // A SIGINT while the prompt is up (what a Ctrl-C typed just after Enter can be) does not
    // end the shell, nor cancel the next statement. It used to end it: a CI run lost the shell
    // to a Ctrl-C that landed as the statement above began.
    // SAFETY: kill(2) on the shell process this test spawned.
    unsafe { libc::kill(pty.child.id() as i32, libc::SIGINT) };
    wait_delivered(pty.child.id(), libc::SIGINT);
    pty.send("SELECT 6 * 7 AS answer;\r");
    pty.expect("42");
    pty.expect("(1 row)");
    pty.expect("raftsql> ");
    pty.send("SELECT count(*) AS n FROM t;\r");
    pty.expect("(1 row)");
    pty.expect("raftsql> ");
    // Ctrl-D leaves.
    pty.send("\x04");
    let status = pty.wait_exit(WAIT);
    assert!(status.success(), "{status}: {}", pty.all());
    assert!(!pty.all().contains("SYNTAX"), "{}", pty.all());

    // The history file outlives the session: a new prompt recalls the last statement.
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.contains("SELECT count(*) AS n FROM t;") && saved.contains(".mode csv"), "{saved}");
    assert!(saved.contains("CREATE TABLE t (id INTEGER PRIMARY KEY,   v TEXT) ;"), "{saved}");
    let mut cmd = raftsql_cmd(&history);
    cmd.args(["--addr", &addrs]);
    let mut pty = Pty::spawn(cmd);
    pty.expect("raftsql> ");
    pty.send("\x1b[A");
    pty.expect("SELECT count(*) AS n FROM t;");
    pty.send("\r");
    pty.expect("2");
    pty.expect("(1 row)");
    pty.expect("raftsql> ");
    pty.send(".quit\r");
    assert!(pty.wait_exit(WAIT).success());
}

/// Waits until `sig`, sent to process `pid` with kill(2), is no longer pending: a thread of the
/// process has taken it (its handler ran, or is running).
fn wait_delivered(pid: u32, sig: i32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let pending = status
            .lines()
            .find_map(|l| l.strip_prefix("ShdPnd:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .expect("ShdPnd in /proc/PID/status");
        if pending & (1 << (sig - 1)) == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "signal {sig} still pending for {pid} after {WAIT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Pids printed by the demo ("(pid N)") and its data dir ("data in DIR").
fn demo_info(out: &str) -> (PathBuf, Vec<i32>) {
    let dir = out.lines().find_map(|l| l.split("data in ").nth(1)).expect("the demo prints its data dir");
    let pids = out
        .lines()
        .filter_map(|l| l.split("(pid ").nth(1))
        .filter_map(|p| p.split(')').next()?.parse().ok())
        .collect();
    (PathBuf::from(dir.trim()), pids)
}

/// `raftsql-server` processes whose command line names a path under `dir`.
fn servers_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("raftsql-server") && cmdline.contains(&needle) {
            found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

fn assert_cleaned_up(dir: &Path, pids: &[i32]) {
    assert!(!dir.exists(), "{} was left behind", dir.display());
    for pid in pids {
        // A zombie is gone for our purposes, but the demo reaps its children: no /proc entry.
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "server pid {pid} still exists");
    }
    assert_eq!(servers_under(dir), Vec::<String>::new(), "server processes left behind");
}

/// The README's first command under a pseudo-terminal: create data, kill the leader, the data
/// is still readable and writable, `.quit`; nothing is left behind.
#[test]
fn demo_under_a_pty_survives_killing_the_leader_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = raftsql_cmd(&dir.path().join("history"));
    cmd.arg("demo");
    let mut pty = Pty::spawn(cmd);
    let banner = pty.expect("raftsql> ");
    let (data_dir, pids) = demo_info(&banner);
    assert_eq!(pids.len(), 3, "{banner}");
    assert!(data_dir.exists());
    let leader: u64 = banner
        .lines()
        .find_map(|l| l.strip_prefix("node ")?.split_once(" leads term")?.0.parse().ok())
        .expect(&banner);

    pty.send("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);\r");
    pty.expect("OK, 0 rows affected");
    pty.expect("raftsql> ");
    pty.send("INSERT INTO t VALUES (1, 'one'),\r");
    pty.expect("...> ");
    pty.send("(2, 'two');\r");
    pty.expect("OK, 2 rows affected");
    pty.expect("raftsql> ");
    pty.send(&format!(".demo kill {leader}\r"));
    pty.expect(&format!("node {leader} killed (SIGKILL)"));
    pty.expect("raftsql> ");
    pty.send("SELECT * FROM t ORDER BY id;\r");
    pty.expect("2  | two");
    pty.expect("(2 rows)");
    pty.expect("raftsql> ");
    pty.send("INSERT INTO t VALUES (3, 'three');\r");
    pty.expect("OK, 1 row affected");
    pty.expect("raftsql> ");
    pty.send(".status\r");
    let status = pty.expect("raftsql> ");
    assert!(status.contains("replication (from leader node"), "{status}");
    assert!(!status.contains(&format!("leader:     node {leader} ")), "{status}");
    pty.send(&format!(".demo restart {leader}\r"));
    pty.expect(&format!("node {leader} restarted"));
    pty.expect("raftsql> ");
    pty.send(".nodes\r");
    pty.expect("reachable");
    pty.expect("raftsql> ");
    pty.send("SELECT count(*) AS n FROM t;\r");
    pty.expect("3");
    pty.expect("(1 row)");
    pty.expect("raftsql> ");
    pty.send(".quit\r");
    let status = pty.wait_exit(WAIT);
    assert!(status.success(), "{status}: {}", pty.all());
    assert_cleaned_up(&data_dir, &pids);
}

/// SIGTERM or SIGINT to a demo (here with piped input still open) stops every server and
/// removes its directory; so does the end of its input.
#[test]
fn demo_cleans_up_on_signals_and_end_of_input() {
    for signal in [Some(libc::SIGTERM), Some(libc::SIGINT), None] {
        let mut child = Command::new(bin_dir().join("raftsql"))
            .args(["demo", "--nodes", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        while !banner.contains("Connect another shell") {
            let mut line = String::new();
            let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
            assert!(n > 0, "the demo ended before its banner: {banner}");
            banner.push_str(&line);
        }
        let (data_dir, pids) = demo_info(&banner);
        assert_eq!(pids.len(), 1);
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"CREATE TABLE t (id INTEGER PRIMARY KEY);\n").unwrap();
        match signal {
            // SAFETY: kill(2) on the demo process this test spawned.
            Some(sig) => unsafe {
                libc::kill(child.id() as i32, sig);
            },
            None => drop(stdin),
        }
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(WAIT) {
            Ok(s) => s.unwrap(),
            Err(_) => {
                // SAFETY: kill(2) on the demo process this test spawned.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("the demo did not exit after {signal:?}");
            }
        };
        match signal {
            Some(sig) => assert_eq!(status.code(), Some(128 + sig), "{signal:?}"),
            None => assert!(status.success()),
        }
        assert_cleaned_up(&data_dir, &pids);
    }
}

/// Every `raftsql>` line of the README's tour, fed to `raftsql demo`: all of them succeed, and
/// the rows survive the kill.
#[test]
fn readme_tour_runs_in_the_demo() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let tour: String =
        readme.lines().filter_map(|l| l.strip_prefix("    raftsql> ")).map(|l| format!("{l}\n")).collect();
    assert!(tour.contains(".demo kill 1") && tour.contains(".status"), "{tour}");
    let mut child = Command::new(bin_dir().join("raftsql"))
        .arg("demo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(tour.as_bytes()).unwrap();
    let out = wait_output(child, Duration::from_secs(120));
    let stdout = ok(&out);
    assert!(text(&out.stderr).trim().is_empty(), "{}", text(&out.stderr));
    assert!(stdout.contains("receipt: node ") && stdout.contains("level read_your_writes"), "{stdout}");
    assert!(stdout.contains("INSERT INTO users VALUES (3, 'barbara');"), "{stdout}");
    assert!(stdout.contains("INSERT INTO users VALUES (2, 'grace');"), "{stdout}");
    let (dir, pids) = demo_info(&stdout);
    assert_cleaned_up(&dir, &pids);
}

/// `raftsql demo --nodes 5`: a paused node falls behind (its lag shows in `.status`), catches up
/// when resumed, and `.demo add` brings in a sixth node that catches up from a snapshot.
#[test]
fn demo_of_five_pauses_resumes_and_adds_a_node() {
    let mut script = String::from("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);\n");
    for i in 0..110 {
        script.push_str(&format!("INSERT INTO t VALUES ({i}, 'row {i}');\n"));
    }
    script.push_str(
        ".demo pause 5\nINSERT INTO t VALUES (1000, 'while 5 sleeps');\n.status\n.demo resume 5\n\
         .demo add\n.nodes\nSELECT count(*) AS n FROM t;\n.quit\n",
    );
    let mut child = Command::new(bin_dir().join("raftsql"))
        .args(["demo", "--nodes", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = wait_output(child, Duration::from_secs(180));
    let stdout = ok(&out);
    // Five nodes at the start, the sixth from `.demo add`.
    let (dir, pids) = demo_info(&stdout);
    assert_eq!(pids.len(), 6, "{stdout}");
    // The paused node's row in the leader's replication table shows a lag, in entries and ms.
    let (lag, _lag_ms): (u64, u64) = stdout
        .lines()
        .skip_while(|l| !l.starts_with("replication (from leader"))
        .find_map(|l| {
            let cols: Vec<&str> = l.trim_start().strip_prefix("5 ")?.split_whitespace().collect();
            Some((cols.get(2)?.parse().ok()?, cols.get(3)?.parse().ok()?))
        })
        .unwrap_or_else(|| panic!("no replication row for node 5:\n{stdout}"));
    assert!(lag >= 1, "{stdout}");
    assert!(stdout.contains("node 6 joined as a ") && stdout.contains("from a snapshot"), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.ends_with(" yes")).count(), 6, "{stdout}");
    assert!(stdout.contains("\n111\n(1 row)"), "{stdout}");
    assert_cleaned_up(&dir, &pids);
}
