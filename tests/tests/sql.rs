//! Issue 3 across real processes: what the leader evaluates reaches followers only as constants,
//! and indexes are maintained by every replica's apply, so any replica answers through them.

use raftsql_client::Value;
use raftsql_tests::{exec, pinned, Cluster, ClusterOptions};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_random_and_defaults_are_identical_on_every_replica() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    cluster.wait_for_leader(WAIT).await.expect("a leader");
    let client = cluster.client().await;
    exec(
        &client,
        "CREATE TABLE ev (id INTEGER PRIMARY KEY, at TEXT DEFAULT CURRENT_TIMESTAMP, r INTEGER, t TEXT)",
    )
    .await;
    for _ in 0..20 {
        exec(&client, "INSERT INTO ev (r, t) VALUES (random(), now())").await;
    }
    exec(&client, "UPDATE ev SET r = r / 2 + random() % 1000 WHERE id % 2 = 0").await;
    exec(&client, "INSERT INTO ev (r, t) SELECT random(), CURRENT_TIMESTAMP FROM ev WHERE id < 5").await;

    let (rows, _) = cluster.assert_converged("ev").await.expect("replicas hold identical rows");
    assert_eq!(rows, 24);
    // The values really were evaluated (not constant), and defaults were filled in.
    let r = client
        .query("SELECT count(DISTINCT r), count(at), min(t) FROM ev", &[], Default::default())
        .await
        .unwrap();
    assert!(matches!(r.rows[0][0], Value::Integer(n) if n > 20), "{:?}", r.rows);
    assert_eq!(r.rows[0][1], Value::Integer(24));
    assert!(matches!(&r.rows[0][2], Value::Text(t) if t.len() == 19), "{:?}", r.rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_maintains_and_uses_indexes() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    cluster.wait_for_leader(WAIT).await.expect("a leader");
    let client = cluster.client().await;
    exec(&client, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER, s TEXT)").await;
    let values: Vec<String> = (1..=300).map(|i| format!("({i}, {}, 's{i}')", i % 10)).collect();
    exec(&client, &format!("INSERT INTO t VALUES {}", values.join(", "))).await;
    // Built over existing rows, then maintained by inserts, updates and deletes.
    exec(&client, "CREATE INDEX t_v ON t (v)").await;
    exec(&client, "INSERT INTO t VALUES (301, 3, 'new')").await;
    exec(&client, "UPDATE t SET v = 3 WHERE id = 4").await;
    exec(&client, "UPDATE t SET v = 99 WHERE id = 3").await;
    exec(&client, "DELETE FROM t WHERE id = 13").await;
    cluster.assert_converged("t").await.expect("replicas converge");

    let mut expected: Vec<i64> = (1..=300).filter(|i| i % 10 == 3 && *i != 3 && *i != 13).collect();
    expected.extend([4, 301]);
    expected.sort();
    for id in cluster.ids() {
        let plan =
            client.query("EXPLAIN SELECT id FROM t WHERE v = 3", &[], pinned(&cluster, id)).await.unwrap();
        let text = format!("{:?}", plan.rows);
        assert!(text.contains("IndexLookup t USING t_v"), "node {id} plans {text}");
        let r = client
            .query("SELECT id FROM t WHERE v = 3 ORDER BY id", &[], pinned(&cluster, id))
            .await
            .unwrap();
        let got: Vec<i64> = r
            .rows
            .iter()
            .map(|row| match row[0] {
                Value::Integer(i) => i,
                ref other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, expected, "node {id}");
        let r = client
            .query("SELECT count(*) FROM t WHERE v BETWEEN 98 AND 100", &[], pinned(&cluster, id))
            .await
            .unwrap();
        assert_eq!(r.rows, vec![vec![Value::Integer(1)]], "node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_bind_typed_values_through_the_client() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    cluster.wait_for_leader(WAIT).await.expect("a leader");
    let client = cluster.client().await;
    exec(&client, "CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT, score REAL, ok BOOLEAN)").await;
    let res = client
        .execute(
            "INSERT INTO p (id, name, score, ok) VALUES (?, ?, ?, ?) RETURNING id",
            &[
                Value::Integer(1),
                Value::Text("o'neil; DROP TABLE p".into()),
                Value::Real(2.5),
                Value::Boolean(true),
            ],
        )
        .await
        .unwrap();
    let inserted = res.results.into_iter().next().unwrap().expect("insert with parameters");
    assert_eq!(inserted.rows, vec![vec![Value::Integer(1)]]);
    let r = client
        .query(
            "SELECT name, score FROM p WHERE score > $2 AND id = $1",
            &[Value::Integer(1), Value::Real(2.0)],
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.rows, vec![vec![Value::Text("o'neil; DROP TABLE p".into()), Value::Real(2.5)]]);
    // A parameter of the wrong type for its column is a typed error that changes nothing.
    let res = client
        .execute("INSERT INTO p (id, name) VALUES (?, ?)", &[Value::Text("x".into()), Value::Integer(1)])
        .await
        .unwrap();
    let err = res.results.into_iter().next().unwrap().expect_err("a text id is refused");
    assert_eq!(err.code(), "TYPE", "{err}");
    let r = client.query("SELECT count(*) FROM p", &[], Default::default()).await.unwrap();
    assert_eq!(r.rows, vec![vec![Value::Integer(1)]]);
}

/// Seconds since the epoch of a `NOW()` value, `YYYY-MM-DD HH:MM:SS` (days from civil date,
/// Howard Hinnant's algorithm).
fn epoch_secs(t: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| t.get(r).and_then(|s| s.parse::<i64>().ok()).expect(t);
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

/// `--clock-offset-ms` (the clock-skew schedule's way to skew one node, issue 22) shifts that
/// node's NOW() and no other node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_offset_shifts_now_on_that_node_only() {
    let opts = ClusterOptions {
        node_env: vec![(2, "RAFTSQL_CLOCK_OFFSET_MS".into(), "7200000".into())],
        ..Default::default()
    };
    let cluster = Cluster::start(3, opts).await.expect("cluster starts");
    cluster.wait_for_leader(WAIT).await.expect("a leader");
    let client = cluster.client().await;
    let mut now = std::collections::BTreeMap::new();
    for id in 1..=3 {
        let r = client.query("SELECT NOW()", &[], pinned(&cluster, id)).await.unwrap();
        let Value::Text(t) = &r.rows[0][0] else { panic!("NOW() gave {:?}", r.rows) };
        now.insert(id, epoch_secs(t));
    }
    let ahead = now[&2] - now[&1];
    assert!((7190..=7210).contains(&ahead), "node 2 is {ahead} s ahead of node 1: {now:?}");
    assert!((now[&3] - now[&1]).abs() <= 10, "nodes 1 and 3 disagree: {now:?}");
}
