//! Issue 2's multi-process scenarios: real `raftsql-server` processes on 127.0.0.1, run-time
//! ports, temp dirs. Every scenario ends by comparing every node's table contents.

use raftsql_client::{Client, QueryOptions, Value};
use raftsql_tests::{Cluster, ClusterOptions};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Inserts rows `from..to` into `t` through the client, in multi-row statements of 50.
async fn insert_rows(client: &Client, from: i64, to: i64) {
    let mut i = from;
    while i < to {
        let end = (i + 50).min(to);
        let values: Vec<String> = (i..end).map(|k| format!("({k}, 'row-{k}', {}.5)", k * 3)).collect();
        let sql = format!("INSERT INTO t (id, name, score) VALUES {}", values.join(", "));
        let res = client.execute(&sql, &[]).await.unwrap_or_else(|e| panic!("insert {i}..{end}: {e}"));
        let r = res.results.into_iter().next().expect("one statement, one result");
        assert_eq!(r.unwrap_or_else(|e| panic!("insert {i}..{end}: {e}")).rows_affected, (end - i) as u64);
        i = end;
    }
}

async fn create_table(client: &Client) {
    let res = client
        .execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL)", &[])
        .await
        .expect("create table");
    res.results.into_iter().next().unwrap().expect("create table succeeds");
}

async fn leader_applied(c: &Cluster) -> u64 {
    let (id, _) = c.wait_for_leader(WAIT).await.expect("a leader");
    c.status(id).await.expect("leader status").applied_index
}

async fn count(client: &Client) -> i64 {
    let r = client.query("SELECT * FROM t", &[], QueryOptions::default()).await.expect("strong read");
    r.rows.len() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_1000_rows_identically() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    let client = cluster.client().await;
    create_table(&client).await;
    insert_rows(&client, 0, 1000).await;

    // A point read by primary key returns the row image written.
    let r = client
        .query("SELECT id, name, score FROM t WHERE id = 777", &[], QueryOptions::default())
        .await
        .expect("point read");
    assert_eq!(r.rows, vec![vec![Value::Integer(777), Value::Text("row-777".into()), Value::Real(2331.5)]]);

    let (rows, _) = cluster.assert_converged("t").await.expect("replicas converge");
    assert_eq!(rows, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_changes_nothing() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    let client = cluster.client().await;
    create_table(&client).await;
    insert_rows(&client, 0, 10).await;
    let before = leader_applied(&cluster).await;
    for (sql, code) in [
        ("INSERT INTO nope VALUES (1)", "NotFound"),
        ("INSERT INTO t (id, emial) VALUES (1, 'x')", "NotFound"),
        ("INSERT INTO t VALUES ('abc', 'x', 1.0)", "Type"),
        ("INSERT INTO t VALUES (5, 'dup', 1.0)", "Constraint"),
        ("INSERT INTO t (id) VALUES (99)", "Constraint"),
        ("INSERT INTO t VALUES (", "Syntax"),
        ("SELEKT * FROM t", "Syntax"),
    ] {
        let res = client.execute(sql, &[]).await.expect("the request itself is answered");
        let err = res.results.into_iter().next().unwrap().expect_err(sql);
        let shown = format!("{err:?}");
        assert!(shown.starts_with(code), "{sql}: expected a {code} error, got {shown}");
    }
    // Nothing was proposed for the failed statements and nothing changed.
    assert_eq!(leader_applied(&cluster).await, before, "failed statements must not reach the log");
    assert_eq!(count(&client).await, 10);
    let (rows, _) = cluster.assert_converged("t").await.expect("replicas converge");
    assert_eq!(rows, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_new_leader_keeps_every_acknowledged_row() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let (old_leader, old_term) = cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    let client = cluster.client().await;
    create_table(&client).await;
    insert_rows(&client, 0, 300).await;

    cluster.kill(old_leader);
    let (new_leader, new_term) = cluster.wait_for_leader(WAIT).await.expect("a new leader is elected");
    assert_ne!(new_leader, old_leader);
    assert!(new_term > old_term, "term must grow: {old_term} -> {new_term}");

    assert_eq!(count(&client).await, 300, "every acknowledged row survives the leader's death");
    insert_rows(&client, 300, 400).await;
    assert_eq!(count(&client).await, 400);

    cluster.restart(old_leader).await.expect("old leader restarts");
    let (rows, _) = cluster.assert_converged("t").await.expect("replicas converge");
    assert_eq!(rows, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_follower_catches_up_from_its_log() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    let client = cluster.client().await;
    create_table(&client).await;
    insert_rows(&client, 0, 100).await;

    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    cluster.kill(follower);
    insert_rows(&client, 100, 600).await;
    cluster.restart(follower).await.expect("follower restarts");

    let (rows, _) = cluster.assert_converged("t").await.expect("replicas converge");
    assert_eq!(rows, 600);
    // The default snapshot threshold was never reached: it caught up from the log.
    let st = cluster.status(follower).await.expect("status");
    assert_eq!(st.snapshot_index, 0, "no snapshot was needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_node_joins_after_purge_and_catches_up_by_snapshot() {
    let opts = ClusterOptions {
        snapshot_threshold: Some(20),
        // Small chunks: the snapshot (about 100 KB) travels in many InstallSnapshot messages.
        extra_args: vec![
            "--snapshot-keep-logs".into(),
            "0".into(),
            "--snapshot-chunk-bytes".into(),
            "8192".into(),
        ],
        ..Default::default()
    };
    let mut cluster = Cluster::start(3, opts).await.expect("cluster starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    let client = cluster.client().await;
    create_table(&client).await;
    insert_rows(&client, 0, 2000).await; // 40 entries: past the threshold
    let mut purged = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while purged == 0 && tokio::time::Instant::now() < deadline {
        purged = cluster.status(leader).await.expect("status").purged_index;
        if purged == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(purged > 0, "the leader purged its log behind a snapshot");

    let new_id = cluster.add_node().await.expect("a 4th node joins");
    let st = cluster.status(new_id).await.expect("status of the new node");
    assert!(
        st.snapshot_index > 0,
        "the new node was caught up by a snapshot (snapshot index {})",
        st.snapshot_index
    );
    assert!(st.members.iter().any(|m| m.id == new_id && m.voter), "the new node is a voter");

    // It serves the same rows.
    let pinned = QueryOptions {
        consistency: raftsql_client::Consistency::Any,
        node: Some(cluster.addr(new_id).to_string()),
        ..Default::default()
    };
    let r =
        client.query("SELECT name FROM t WHERE id = 1999", &[], pinned).await.expect("read on the new node");
    assert_eq!(r.rows, vec![vec![Value::Text("row-1999".into())]]);
    let (rows, _) = cluster.assert_converged("t").await.expect("replicas converge");
    assert_eq!(rows, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_restarted_at_once_come_back_with_all_data() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    let client = cluster.client().await;
    create_table(&client).await;
    insert_rows(&client, 0, 500).await;

    for id in cluster.ids() {
        cluster.kill(id);
    }
    for id in cluster.ids() {
        cluster.restart(id).await.expect("restart");
    }
    cluster.wait_for_leader(WAIT).await.expect("a leader is elected after a full restart");
    assert_eq!(count(&client).await, 500);
    insert_rows(&client, 500, 550).await;
    let (rows, _) = cluster.assert_converged("t").await.expect("replicas converge");
    assert_eq!(rows, 550);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_sent_to_followers_are_redirected() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    create_table(&cluster.client().await).await;
    for id in cluster.ids().into_iter().filter(|&id| id != leader) {
        // A client that only knows one follower still writes, through the NotLeader redirect.
        let client = Client::connect([cluster.addr(id).to_string()]).await.expect("connect");
        let res = client.execute(&format!("INSERT INTO t VALUES ({id}, 'via-{id}', 0.0)"), &[]).await;
        let res = res.unwrap_or_else(|e| panic!("write through follower {id}: {e}"));
        assert_eq!(res.receipt.node_id, leader, "the leader wrote it");
    }
    let (rows, _) = cluster.assert_converged("t").await.expect("replicas converge");
    assert_eq!(rows, 2);
}

/// Concurrent writers while the leader is killed with SIGKILL: every write that was
/// acknowledged is present afterwards on every node; writes reported indeterminate may or may
/// not be, but never twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_of_the_leader_under_load() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    let client = cluster.client().await;
    create_table(&client).await;

    const WRITERS: i64 = 8;
    const PER_WRITER: i64 = 60;
    let stop_after = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PER_WRITER {
                if tokio::time::Instant::now() > stop_after {
                    break;
                }
                let id = w * 1000 + i;
                let sql = format!("INSERT INTO t VALUES ({id}, 'w{w}', {i}.0)");
                if let Ok(res) = client.execute(&sql, &[]).await {
                    if matches!(res.results.first(), Some(Ok(_))) {
                        acked.push(id);
                    }
                }
            }
            acked
        }));
    }
    // Kill the leader once some writes are through.
    let deadline = tokio::time::Instant::now() + WAIT;
    while count(&client).await < 40 {
        assert!(tokio::time::Instant::now() < deadline, "writes did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill(leader);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("writer task"));
    }
    assert!(acked.len() > 40, "most writes succeed across the failover ({} acked)", acked.len());
    cluster.restart(leader).await.expect("restart the old leader");
    let (rows, _) = cluster.assert_converged("t").await.expect("replicas converge");
    let r = client.query("SELECT id FROM t", &[], QueryOptions::default()).await.expect("read");
    let present: std::collections::HashSet<i64> = r
        .rows
        .iter()
        .map(|row| match row[0] {
            Value::Integer(i) => i,
            ref v => panic!("id {v:?}"),
        })
        .collect();
    let lost: Vec<_> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert_eq!(present.len(), rows, "no row twice");
}

/// A row far larger than tonic's 4 MiB default message limit replicates to every node; a
/// request over the server's 16 MiB limit is refused with a readable error and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rows_replicate_and_oversized_requests_are_refused() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    let client = cluster.client().await;
    create_table(&client).await;

    let big = "x".repeat(6 << 20);
    let res = client
        .execute("INSERT INTO t VALUES ($1, $2, 0.0)", &[Value::Integer(1), Value::Text(big.clone())])
        .await
        .expect("a 6 MiB row is accepted");
    res.results.into_iter().next().unwrap().expect("insert succeeds");
    let (rows, _) = cluster.assert_converged("t").await.expect("the large row reaches every node");
    assert_eq!(rows, 1);

    let huge = "y".repeat(17 << 20);
    let err = client
        .execute("INSERT INTO t VALUES ($1, $2, 0.0)", &[Value::Integer(2), Value::Text(huge)])
        .await
        .expect_err("a 17 MiB request is refused");
    assert_eq!(err.code(), "INVALID_ARGUMENT", "{err}");
    assert!(err.to_string().contains("too large"), "the error says why: {err}");
    assert_eq!(count(&client).await, 1, "nothing changed");
}

/// The leader reports each follower's lag in entries and in time; a paused follower's time lag
/// grows, and both return to 0 once it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_reports_follower_lag_in_entries_and_milliseconds() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let client = cluster.client().await;
    create_table(&client).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    cluster.pause(follower);
    insert_rows(&client, 0, 100).await;
    let lag_of = |s: &raftsql_client::pb::StatusResponse| {
        s.followers.iter().find(|f| f.id == follower).map(|f| (f.lag, f.lag_millis))
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut first = None;
    loop {
        let s = cluster.status(leader).await.expect("leader status");
        match (first, lag_of(&s)) {
            (None, Some((lag, ms))) if lag > 0 && ms > 0 => first = Some(ms),
            (Some(f), Some((lag, ms))) if lag > 0 && ms > f => break,
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "lag never grew: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.resume(follower);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = cluster.status(leader).await.expect("leader status");
        if lag_of(&s) == Some((0, 0)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the follower never caught up: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
