//! Issue 19: `raftsql backup` and `raftsql restore` through real server processes and the real
//! shell binary: a backup taken under writes restores into a fresh cluster with the same catalog
//! and contents on every replica, at one applied index; a damaged, truncated or foreign file is
//! refused before anything is sent, and a cluster that holds tables is not touched without
//! `--force`.

use raftsql_client::{pb, Client, Consistency, QueryOptions, Value};
use raftsql_tests::{bin_dir, Cluster, ClusterOptions, SteadyWriter};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Runs `raftsql --addr <addrs> ARGS` to its end (killed after two minutes).
fn shell(addrs: &[String], args: &[&str]) -> Output {
    let child = Command::new(bin_dir().join("raftsql"))
        .arg("--addr")
        .arg(addrs.join(","))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start raftsql");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(out) => out.expect("raftsql's output"),
        Err(_) => {
            // SAFETY: kill(2) on the child this test spawned.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("raftsql {args:?} did not finish within two minutes");
        }
    }
}

fn text(o: &Output) -> String {
    format!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

async fn exec(c: &Client, sql: &str, params: Vec<Value>) {
    let r = c.execute_batch(vec![(sql.to_string(), params)], false).await.expect(sql);
    if let Some(Err(e)) = r.results.first() {
        panic!("{sql}: {e}");
    }
}

/// The catalog as `sqlite_schema` shows it, sorted.
async fn catalog(c: &Client) -> Vec<Vec<Value>> {
    let strong = QueryOptions { consistency: Consistency::Strong, ..Default::default() };
    let mut rows = c
        .query("SELECT type, name, tbl_name, sql FROM sqlite_schema", &[], strong)
        .await
        .expect("read the catalog")
        .rows;
    rows.sort_by_key(|r| format!("{r:?}"));
    rows
}

/// A schema with what a restore must carry: a composite key of keyword names, a table without
/// a PRIMARY KEY, a UNIQUE constraint, an index, defaults, every value type and extremes.
async fn fill(c: &Client) {
    exec(
        c,
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE, \
         score REAL DEFAULT 1.5, photo BLOB, active BOOLEAN)",
        vec![],
    )
    .await;
    exec(c, "CREATE INDEX by_name ON people (name, score)", vec![]).await;
    exec(c, "CREATE TABLE \"order\" (\"key\" TEXT, \"select\" INTEGER, note TEXT, PRIMARY KEY (\"key\", \"select\"))", vec![]).await;
    exec(c, "CREATE TABLE log (msg TEXT, at INTEGER)", vec![]).await;
    exec(c, "CREATE TABLE t (k INTEGER)", vec![]).await;
    for chunk in 0..6i64 {
        let mut sql = String::from("INSERT INTO people VALUES ");
        let mut params = Vec::new();
        for i in chunk * 500..(chunk + 1) * 500 {
            if i > chunk * 500 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, ?, ?, ?, ?)");
            let id = match i {
                0 => i64::MIN,
                1 => i64::MAX,
                _ => i,
            };
            params.extend([
                Value::Integer(id),
                Value::Text(format!("näme {i} \u{1F600} '\"")),
                if i % 7 == 0 { Value::Null } else { Value::Text(format!("p{i}@example.com")) },
                Value::Real(i as f64 * -0.25),
                if i % 3 == 0 { Value::Null } else { Value::Blob(vec![(i % 256) as u8; (i % 50) as usize]) },
                Value::Boolean(i % 2 == 0),
            ]);
        }
        exec(c, &sql, params).await;
    }
    for i in 0..200i64 {
        exec(
            c,
            "INSERT INTO \"order\" VALUES (?, ?, ?)",
            vec![Value::Text(format!("k{}", i % 20)), Value::Integer(i), Value::Null],
        )
        .await;
    }
    for i in 0..50i64 {
        exec(c, "INSERT INTO log VALUES (?, ?)", vec![Value::Text(format!("line {i}")), Value::Integer(i)])
            .await;
    }
}

/// The applied index the shell's summary line names.
fn applied_index(out: &Output) -> u64 {
    let s = String::from_utf8_lossy(&out.stdout);
    let after = s.split("applied index ").nth(1).unwrap_or_else(|| panic!("no applied index in {s}"));
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_restores_into_a_fresh_cluster_on_every_replica() {
    let src = Cluster::start(3, ClusterOptions::default()).await.expect("source cluster");
    let client = src.client().await;
    fill(&client).await;
    let strong = QueryOptions { consistency: Consistency::Strong, ..Default::default() };
    let writer = SteadyWriter::start(src.client().await, "t", 0, Duration::from_millis(2), WAIT);
    // Some rows in before the backup starts.
    let deadline = tokio::time::Instant::now() + WAIT;
    let before = loop {
        let r = client.query("SELECT COUNT(*) FROM t", &[], strong.clone()).await.expect("count");
        let n = match r.rows[0][0] {
            Value::Integer(n) => n,
            ref v => panic!("{v:?}"),
        };
        if n >= 20 {
            break (n, r.receipt.applied_index);
        }
        assert!(tokio::time::Instant::now() < deadline, "the writer wrote nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("src.rsqlbak");
    let out = shell(&src.addrs(), &["backup", file.to_str().unwrap()]);
    assert!(out.status.success(), "backup failed: {}", text(&out));
    let (acked, _) = writer.finish().await;
    let index = applied_index(&out);
    assert!(index >= before.1, "the backup (index {index}) is older than a read before it ({})", before.1);
    assert!(!dir.path().join("src.rsqlbak.part").exists(), "the .part file stayed");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));

    let dst = Cluster::start(3, ClusterOptions::default()).await.expect("target cluster");
    let out = shell(&dst.addrs(), &["restore", file.to_str().unwrap()]);
    assert!(out.status.success(), "restore failed: {}", text(&out));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let target = dst.client().await;
    assert_eq!(catalog(&target).await, catalog(&client).await, "the catalogs differ");
    for table in ["people", "\"order\"", "log"] {
        let restored = dst.assert_converged(table).await.expect("every target replica holds the same");
        let source = src.assert_converged(table).await.expect("source");
        assert_eq!(restored, source, "{table} differs after the restore");
    }
    // The writer's table, at one applied index: a prefix of what it wrote, with every row
    // acknowledged before the backup began, and nothing it did not write.
    dst.assert_converged("t").await.expect("t converges");
    let r = target.query("SELECT k FROM t ORDER BY k", &[], strong.clone()).await.expect("read t");
    let ks: Vec<i64> =
        r.rows.iter().map(|row| if let Value::Integer(k) = row[0] { k } else { panic!() }).collect();
    assert!(
        ks.len() as i64 >= before.0,
        "restored {} rows of t, {} were there before the backup",
        ks.len(),
        before.0
    );
    assert!(ks.iter().enumerate().all(|(i, &k)| k == i as i64), "t is not a prefix of the writes: {ks:?}");
    assert!(ks.len() <= acked.len() + 1, "t holds rows never written");
    // The restored cluster takes writes, and the restored UNIQUE and key constraints hold.
    let r = target.execute("INSERT INTO people (id, name, email) VALUES (5, 'x', NULL)", &[]).await.unwrap();
    assert!(matches!(r.results[0], Err(raftsql_client::Error::Constraint { .. })), "{:?}", r.results);
    let r = target
        .execute("INSERT INTO people (id, name, email) VALUES (-5, 'x', 'p8@example.com')", &[])
        .await
        .unwrap();
    assert!(matches!(r.results[0], Err(raftsql_client::Error::Constraint { .. })), "{:?}", r.results);
    exec(&target, "INSERT INTO log (msg) VALUES ('after')", vec![]).await;
}

/// Flips one byte at `at` of a copy of `file`.
fn flipped(file: &Path, to: &Path, at: usize) {
    let mut b = std::fs::read(file).unwrap();
    b[at] ^= 0x40;
    std::fs::write(to, b).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_or_a_cluster_with_tables_is_refused_and_left_unchanged() {
    let src = Cluster::start(1, ClusterOptions::default()).await.expect("source");
    let client = src.client().await;
    fill(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.rsqlbak");
    let summary = client.backup(&good, None, |_| {}).await.expect("backup through the library");
    assert_eq!((summary.tables, summary.rows), (4, 3_250));
    assert_eq!(raftsql_client::backup::verify(&good).expect("verify"), summary);
    let len = std::fs::metadata(&good).unwrap().len() as usize;

    // One backup at a time per node: another one, while a reader holds the first stream
    // without reading it, is refused (and leaves no file); the slot is free again once that
    // reader goes away.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", src.addr(1)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let held =
        pb::admin_client::AdminClient::new(channel).backup(pb::BackupRequest {}).await.expect("a stream");
    let second = dir.path().join("second.rsqlbak");
    let e = client.backup(&second, Some(src.addr(1)), |_| {}).await.unwrap_err();
    assert_eq!(e.code(), "RESOURCE_EXHAUSTED", "{e}");
    assert!(e.to_string().contains("a backup is already running"), "{e}");
    assert!(!second.exists() && !dir.path().join("second.rsqlbak.part").exists());
    drop(held);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client.backup(&second, Some(src.addr(1)), |_| {}).await {
            Ok(s) => {
                assert_eq!(s.rows, summary.rows);
                break;
            }
            Err(e) if e.code() == "RESOURCE_EXHAUSTED" && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the slot was not freed: {e}"),
        }
    }

    let dst = Cluster::start(1, ClusterOptions::default()).await.expect("target");
    let target = dst.client().await;
    exec(&target, "CREATE TABLE keep (k INTEGER PRIMARY KEY)", vec![]).await;
    exec(&target, "INSERT INTO keep VALUES (42)", vec![]).await;
    let before = catalog(&target).await;

    let bad = |name: &str| dir.path().join(name);
    flipped(&good, &bad("middle.bak"), len / 2);
    flipped(&good, &bad("magic.bak"), 0);
    flipped(&good, &bad("checksum.bak"), len - 1);
    let b = std::fs::read(&good).unwrap();
    std::fs::write(bad("half.bak"), &b[..len / 2]).unwrap();
    std::fs::write(bad("short.bak"), &b[..len - 3]).unwrap();
    std::fs::write(bad("empty.bak"), b"").unwrap();
    let mut longer = b.clone();
    longer.extend_from_slice(b"more");
    std::fs::write(bad("longer.bak"), longer).unwrap();
    let mut version = b.clone();
    version[8] = 9;
    std::fs::write(bad("version.bak"), version).unwrap();
    for (name, expect) in [
        ("middle.bak", ""),
        ("magic.bak", "magic"),
        ("checksum.bak", "checksum"),
        ("half.bak", ""),
        ("short.bak", ""),
        ("empty.bak", "header"),
        ("longer.bak", ""),
        ("version.bak", "format v"),
        ("missing.bak", "cannot open"),
    ] {
        let out = shell(&dst.addrs(), &["restore", "--force", bad(name).to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was restored: {}", text(&out));
        assert!(err.contains(expect), "{name}: {err}");
        if name != "missing.bak" {
            assert!(
                err.contains("not a usable raftsql backup") && err.contains("nothing was restored"),
                "{name}: {err}"
            );
        }
        assert_eq!(catalog(&target).await, before, "{name} changed the target");
    }
    // A good file into a cluster that holds a table: refused without --force, untouched.
    let out = shell(&dst.addrs(), &["restore", good.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds 1 table(s) (keep)"),
        "{}",
        text(&out)
    );
    assert_eq!(catalog(&target).await, before);
    // With --force it replaces them.
    let out = shell(&dst.addrs(), &["restore", "--force", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(catalog(&target).await, catalog(&client).await);
    for table in ["people", "\"order\"", "log", "t"] {
        assert_eq!(
            dst.assert_converged(table).await.unwrap(),
            src.assert_converged(table).await.unwrap(),
            "{table}"
        );
    }
}
