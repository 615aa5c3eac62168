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

/// `writers` tasks, each inserting `per_writer` rows into `t` one request at a time (ids
/// `base + writer * 1000 + i`), for at most 60 s; each returns the ids it saw acknowledged.
fn spawn_inserters(
    client: &Client,
    writers: i64,
    per_writer: i64,
    base: i64,
) -> Vec<tokio::task::JoinHandle<Vec<i64>>> {
    let stop_after = tokio::time::Instant::now() + Duration::from_secs(60);
    (0..writers)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..per_writer {
                    if tokio::time::Instant::now() > stop_after {
                        break;
                    }
                    let id = base + w * 1000 + i;
                    let sql = format!("INSERT INTO t VALUES ({id}, 'w{w}', {i}.0)");
                    if let Ok(res) = client.execute(&sql, &[]).await {
                        if matches!(res.results.first(), Some(Ok(_))) {
                            acked.push(id);
                        }
                    }
                }
                acked
            })
        })
        .collect()
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
    // Settled first: the leader answers a write before its applied index shows it (seen once,
    // 3 then 4 with no failed statement in between).
    cluster.assert_converged("t").await.expect("replicas converge");
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
    // Its many chunks were verified as one file before openraft installed it.
    cluster.wait_log(new_id, "received snapshot verified", WAIT).await.expect("the snapshot was verified");

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

/// A leader killed and restarted at once must not resume leading its old term: its log may lack
/// entries a majority of followers committed without it (found by the nemesis's kill-all and
/// kill-random schedules: acknowledged appends lost, replicas diverged). It leads again only
/// by winning an election, in a higher term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_leader_does_not_resume_its_old_term() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let (leader, term) = cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    let client = cluster.client().await;
    create_table(&client).await;
    insert_rows(&client, 0, 100).await;
    // Restarted well inside the followers' election timeout + leader lease (3 s or more).
    cluster.restart(leader).await.expect("restart");
    let s = cluster.status(leader).await.expect("status");
    assert!(
        !(s.role() == raftsql_client::pb::Role::Leader && s.term == term),
        "node {leader} came back leading term {term} without an election: {s:?}"
    );
    let (_, new_term) = cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    assert!(new_term > term, "a new leader needs a new term: {new_term} after {term}");
    insert_rows(&client, 100, 150).await;
    let (rows, _) = cluster.assert_converged("t").await.expect("replicas converge");
    assert_eq!(rows, 150);
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

    let tasks = spawn_inserters(&client, 8, 60, 0);
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
    assert_every_acked_row_once(&cluster, &client, &acked, "").await;
}

/// A leader sends new entries to the followers while its own fsync runs, and counts itself
/// only once that fsync is done (vendor/openraft/PATCHES.md, "A leader replicates beside its
/// own fsync"). With the leader's fsyncs held back (test hook `RAFTSQL_TEST_HOLD_FSYNC`), writes
/// still commit on the two followers' fsyncs and the leader answers them; openraft as released
/// waits for the leader's own fsync before it replicates, and would answer none of them. Killed
/// with its fsync still held, the leader loses nothing acknowledged: a quorum holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_on_the_followers_fsyncs_while_the_leaders_is_held() {
    const HOLD: &str = "RAFTSQL_TEST_HOLD_FSYNC";
    let holds = tempfile::tempdir().expect("a temp dir for the hold files");
    let hold = |id: u64| holds.path().join(format!("hold-fsync-{id}"));
    let opts = ClusterOptions {
        node_env: (1..=3).map(|id| (id, HOLD.to_string(), hold(id).display().to_string())).collect(),
        ..Default::default()
    };
    let mut cluster = Cluster::start(3, opts).await.expect("cluster starts");
    let (leader, term) = cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    let client = cluster.client().await;
    create_table(&client).await;

    std::fs::write(hold(leader), b"").expect("hold the leader's fsyncs");
    let mut acked = Vec::new();
    for id in 0..20i64 {
        let sql = format!("INSERT INTO t (id, name) VALUES ({id}, 'held-{id}')");
        let done = client.execute(&sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(done.receipt.node_id, leader, "the leader whose fsync is held answered");
        assert_eq!(done.results[0].as_ref().expect("inserted").rows_affected, 1);
        acked.push(id);
    }
    assert!(hold(leader).exists(), "every write was acknowledged while the leader's fsync was held");
    assert_eq!(cluster.wait_for_leader(WAIT).await.expect("a leader"), (leader, term), "no election");

    cluster.kill(leader);
    std::fs::remove_file(hold(leader)).expect("release the hold");
    cluster.restart(leader).await.expect("restart the old leader");
    assert_every_acked_row_once(
        &cluster,
        &client,
        &acked,
        "after the leader's kill -9 with its fsync held: ",
    )
    .await;
}

/// Every node holds the same rows of `t`, among them every id in `acked`, and no id twice.
async fn assert_every_acked_row_once(cluster: &Cluster, client: &Client, acked: &[i64], when: &str) {
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
    assert!(lost.is_empty(), "{when}acknowledged writes lost: {lost:?}");
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

/// The members (id, voter) a node's status lists, sorted by id.
fn members(s: &raftsql_client::pb::StatusResponse) -> Vec<(u64, bool)> {
    let mut m: Vec<(u64, bool)> = s.members.iter().map(|m| (m.id, m.voter)).collect();
    m.sort();
    m
}

/// Waits until node `id` has stepped down from leading (it reports any other role).
async fn wait_not_leading(cluster: &Cluster, id: u64) -> raftsql_client::pb::StatusResponse {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = cluster.status(id).await.expect("status");
        if s.role() != raftsql_client::pb::Role::Leader {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "node {id} still leads: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every remaining node, once it applied what the leader applied, lists exactly `expected`.
async fn assert_members_everywhere(cluster: &Cluster, expected: &[(u64, bool)]) {
    let (rows, _) = cluster.assert_converged("t").await.expect("replicas converge");
    assert!(rows > 0);
    for id in cluster.running() {
        let s = cluster.status(id).await.expect("status");
        assert_eq!(members(&s), expected, "members on node {id}");
    }
}

/// A follower voter and a learner are removed through a request sent to another follower
/// (forwarded to the leader); writes keep committing and the remaining replicas converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_member_removes_a_follower_voter_and_a_learner() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let client = cluster.client().await;
    create_table(&client).await;
    insert_rows(&client, 0, 100).await;
    let voter = cluster.add_node().await.expect("a 4th node joins as a voter");
    let learner = cluster.add_learner().await.expect("a 5th node joins as a learner");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let via = cluster.ids().into_iter().find(|&id| ![leader, voter, learner].contains(&id)).unwrap();
    let through_follower = Client::connect([cluster.addr(via).to_string()]).await.expect("connect");

    let s = through_follower.remove_member(voter).await.expect("the follower voter is removed");
    assert_eq!(s.node_id, leader, "the leader carried it out");
    assert!(!s.members.iter().any(|m| m.id == voter), "{:?}", members(&s));
    cluster.kill(voter); // what the operator does next
    insert_rows(&client, 100, 200).await;

    let s = through_follower.remove_member(learner).await.expect("the learner is removed");
    assert!(!s.members.iter().any(|m| m.id == learner), "{:?}", members(&s));
    cluster.kill(learner);
    insert_rows(&client, 200, 300).await;

    let others: Vec<(u64, bool)> = cluster.running().into_iter().map(|id| (id, true)).collect();
    assert_eq!(others.len(), 3);
    assert_members_everywhere(&cluster, &others).await;
    assert_eq!(count(&client).await, 300);
}

/// Removing the leader: it steps down once the new config commits, the others elect a leader
/// among themselves, and writes continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_member_removes_the_leader_and_the_others_elect_a_new_one() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let (old_leader, old_term) = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let client = cluster.client().await;
    create_table(&client).await;
    insert_rows(&client, 0, 100).await;

    let s = client.remove_member(old_leader).await.expect("the leader is removed");
    assert_eq!(s.node_id, old_leader, "the leader carried out its own removal");
    assert_eq!(members(&s).len(), 2, "{:?}", members(&s));
    assert!(!s.members.iter().any(|m| m.id == old_leader));
    let st = wait_not_leading(&cluster, old_leader).await;
    assert_eq!(st.role(), raftsql_client::pb::Role::Learner, "a removed leader steps down to learner");
    cluster.kill(old_leader);

    let (new_leader, new_term) = cluster.wait_for_leader(WAIT).await.expect("a new leader is elected");
    assert_ne!(new_leader, old_leader);
    assert!(new_term > old_term, "term must grow: {old_term} -> {new_term}");
    insert_rows(&client, 100, 200).await;
    let others: Vec<(u64, bool)> = cluster.running().into_iter().map(|id| (id, true)).collect();
    assert_members_everywhere(&cluster, &others).await;
    assert_eq!(count(&client).await, 200);
}

/// Bad removals get typed errors that say what to do, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_member_refuses_bad_input_with_typed_errors() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let client = cluster.client().await;
    create_table(&client).await;
    insert_rows(&client, 0, 10).await;

    let err = client.remove_member(0).await.expect_err("node 0");
    assert_eq!(err.code(), "INVALID_ARGUMENT", "{err}");
    assert!(err.to_string().contains("node ids start at 1"), "{err}");
    let err = client.remove_member(99).await.expect_err("node 99");
    assert_eq!(err.code(), "NOT_FOUND", "{err}");
    assert!(err.to_string().contains("node 99 is not a member"), "{err}");

    // The shell's `.remove`: a bad id is a usage error; a good one says what to do next.
    let shell = |cmd: String| {
        let out = std::process::Command::new(raftsql_tests::bin_dir().join("raftsql"))
            .arg("--addr")
            .arg(cluster.addrs().join(","))
            .args(["-e", &cmd])
            .output()
            .expect("running the shell");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };
    let (code, text) = shell(".remove x".into());
    assert!(code == Some(1) && text.contains("usage: .remove ID"), "{code:?} {text}");
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let (code, text) = shell(format!(".remove {follower}"));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&format!("removed node {follower}")) && text.contains("new id"), "{text}");
    cluster.kill(follower);
    let err = client.remove_member(follower).await.expect_err("the second removal");
    assert_eq!(err.code(), "NOT_FOUND", "{err}");
    assert!(err.to_string().contains("removed already"), "the error says why: {err}");
    let others: Vec<(u64, bool)> = cluster.running().into_iter().map(|id| (id, true)).collect();
    assert_members_everywhere(&cluster, &others).await;

    // A one-node cluster cannot remove its only voter.
    let single = Cluster::start(1, ClusterOptions::default()).await.expect("one node starts");
    single.wait_for_leader(WAIT).await.expect("it leads");
    let err = single.client().await.remove_member(1).await.expect_err("the last voter");
    assert_eq!(err.code(), "INVALID_ARGUMENT", "{err}");
    assert!(err.to_string().contains("cannot remove its last voter"), "{err}");
    let s = single.status(1).await.expect("status");
    assert_eq!(members(&s), vec![(1, true)]);
}

/// With one follower down, removing the other follower would leave two voters of which one
/// answers: neither the removal (a joint change needs both configurations' majorities) nor any
/// later write could commit, and the cluster would hang in a joint configuration. The leader
/// probes the voters that would remain and refuses, naming the unreachable node and `--force`;
/// removing the unreachable node instead works, and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_member_refuses_to_leave_too_few_answering_voters() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let client = cluster.client().await;
    create_table(&client).await;
    insert_rows(&client, 0, 50).await;
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
    let (healthy, down) = (followers[0], followers[1]);
    cluster.kill(down);

    let err = client.remove_member(healthy).await.expect_err("refused");
    assert_eq!(err.code(), "INVALID_ARGUMENT", "{err}");
    let m = err.to_string();
    assert!(
        m.contains("only 1 answer") && m.contains(&format!("node {down} did not")) && m.contains("--force"),
        "the refusal says why and what to do: {m}"
    );
    let out = std::process::Command::new(raftsql_tests::bin_dir().join("raftsql"))
        .arg("--addr")
        .arg(cluster.addr(leader))
        .args(["-e", &format!(".remove {healthy}")])
        .output()
        .expect("running the shell");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"), "{out:?}");
    let s = cluster.status(leader).await.expect("status");
    assert_eq!(members(&s).len(), 3, "nothing changed: {:?}", members(&s));

    let s = client.remove_member(down).await.expect("the unreachable node is removed");
    assert_eq!(members(&s).len(), 2, "{:?}", members(&s));
    insert_rows(&client, 50, 100).await;
    let others: Vec<(u64, bool)> = cluster.running().into_iter().map(|id| (id, true)).collect();
    assert_members_everywhere(&cluster, &others).await;
    assert_eq!(count(&client).await, 100);
}

/// The operator's way to bring a machine back: remove it, stop it, wipe its data and join it
/// under a new id; it catches up and the replicas converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_node_is_replaced_by_a_fresh_node_under_a_new_id() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let client = cluster.client().await;
    create_table(&client).await;
    insert_rows(&client, 0, 300).await;

    let removed = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    client.remove_member(removed).await.expect("removed");
    cluster.kill(removed);
    insert_rows(&client, 300, 400).await;
    let fresh = cluster.add_node().await.expect("a fresh node joins under a new id");
    assert_ne!(fresh, removed);
    insert_rows(&client, 400, 500).await;

    let expected: Vec<(u64, bool)> = cluster.running().into_iter().map(|id| (id, true)).collect();
    assert!(expected.contains(&(fresh, true)) && !expected.iter().any(|(id, _)| *id == removed));
    assert_members_everywhere(&cluster, &expected).await;
    assert_eq!(cluster.table_checksum(fresh, "t").await.expect("rows on the fresh node").0, 500);
}

/// The established TCP connections of this host (from /proc/net/tcp): (local, remote, inode).
fn established_tcp() -> Vec<(std::net::SocketAddrV4, std::net::SocketAddrV4, u64)> {
    let parse = |s: &str| {
        let (ip, port) = s.split_once(':').expect("IP:PORT");
        // The kernel prints the network-order address as a native u32.
        let ip = u32::from_str_radix(ip, 16).expect("hex IP").to_ne_bytes();
        std::net::SocketAddrV4::new(ip.into(), u16::from_str_radix(port, 16).expect("hex port"))
    };
    let text = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.get(3) == Some(&"01")).then(|| (parse(f[1]), parse(f[2]), f[9].parse().expect("inode")))
        })
        .collect()
}

/// The socket inodes this test process holds.
fn own_socket_inodes() -> std::collections::HashSet<u64> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| t.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect()
}

/// `--peer-source-addr`: the nodes dial each other from that address. The cluster replicates,
/// joins a node, forwards writes and a removal (all of which work from the source address);
/// then every connection to a node is either from the source address or this test's own, and
/// every follower has the leader's replication connection from the source address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_connections_come_from_the_peer_source_addr() {
    let source = std::net::Ipv4Addr::new(127, 0, 0, 2); // any 127.x address is loopback on Linux
    let opts = ClusterOptions {
        extra_args: vec!["--peer-source-addr".into(), source.to_string(), "--forward-writes".into()],
        ..Default::default()
    };
    let mut cluster = Cluster::start(3, opts).await.expect("cluster starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader");
    create_table(&cluster.client().await).await;
    let joined = cluster.add_node().await.expect("a node joins from the source address");
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let via_follower = Client::connect([cluster.addr(follower).to_string()]).await.expect("connect");
    insert_rows(&via_follower, 0, 100).await; // forwarded by the follower
    via_follower.remove_member(joined).await.expect("a forwarded removal");
    cluster.kill(joined);
    cluster.assert_converged("t").await.expect("replicas converge");

    let ports: std::collections::HashMap<u16, u64> = cluster
        .running()
        .into_iter()
        .map(|id| (cluster.addr(id).rsplit_once(':').unwrap().1.parse().unwrap(), id))
        .collect();
    let mine = own_socket_inodes();
    let to_nodes: Vec<_> =
        established_tcp().into_iter().filter(|(_, remote, _)| ports.contains_key(&remote.port())).collect();
    for (local, remote, inode) in &to_nodes {
        assert!(
            *local.ip() == source || mine.contains(inode),
            "a connection {local} -> {remote} to node {} neither comes from {source} nor from this test",
            ports[&remote.port()]
        );
    }
    // The leader's replication streams stay connected to every follower (the followers'
    // forwarding calls to the leader use a connection each, closed after the call).
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader");
    for (port, id) in ports.iter().filter(|(_, id)| **id != leader) {
        assert!(
            to_nodes.iter().any(|(local, remote, _)| remote.port() == *port && *local.ip() == source),
            "follower {id} has no connection from {source}: {to_nodes:?}"
        );
    }
}

/// A joining node becomes a voter only once it holds the log the leader had when it was added.
/// openraft's own check lets a learner lag by up to 5,000 entries, and a raftsql entry holds up
/// to 8 MiB: joining a 1,000,000-row cluster, the new node was a voter 25 ms after it started,
/// holding nothing. Here the log is 12 entries of 4 MB; the test watches the leader's membership
/// closely and, the moment the new node is listed as a voter, reads the new node's last log index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_is_promoted_only_once_it_holds_the_log() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    let client = cluster.client().await.with_deadline(Duration::from_secs(60));
    client
        .execute("CREATE TABLE big (id INTEGER PRIMARY KEY, b BLOB)", &[])
        .await
        .unwrap()
        .results
        .remove(0)
        .unwrap();
    for i in 0..12i64 {
        let blob = Value::Blob(vec![(i % 251) as u8; 4 << 20]);
        let r = client.execute("INSERT INTO big VALUES ($1, $2)", &[Value::Integer(i), blob]).await;
        r.expect("a 4 MB row commits").results.remove(0).expect("insert succeeds");
    }
    let target = cluster.status(leader).await.expect("leader status").last_log_index;
    let leader_addr = cluster.addr(leader).to_string();
    let joiner = tokio::spawn(async move {
        let id = cluster.add_node().await.expect("a 4th node joins");
        (cluster, id)
    });
    // A handle of its own, so the leader can be watched while the join runs.
    let watcher = Client::connect([leader_addr.clone()]).await.expect("a client");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let (id, seen) = loop {
        assert!(tokio::time::Instant::now() < deadline, "node 4 never became a voter");
        if let Ok(st) = watcher.status(&leader_addr).await {
            if let Some(m) = st.members.iter().find(|m| m.id == 4 && m.voter) {
                let new = watcher.status(&m.addr).await.expect("status of the new node");
                break (m.id, new.last_log_index);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        seen >= target,
        "node {id} was a voter while its log ended at {seen}, short of the {target} entries the leader held"
    );
    let (cluster, joined) = joiner.await.expect("the join task");
    assert_eq!(joined, id);
    let pinned = QueryOptions {
        consistency: raftsql_client::Consistency::Any,
        node: Some(cluster.addr(id).to_string()),
        ..Default::default()
    };
    let r =
        client.query("SELECT count(*), sum(length(b)) FROM big", &[], pinned).await.expect("read on node 4");
    assert_eq!(r.rows, vec![vec![Value::Integer(12), Value::Integer(12 << 22)]]);
}

/// The pipelined write path (issue 18): the leader evaluates a batch over the entries it has
/// proposed and not yet applied. Concurrent read-modify-write transactions on one row must
/// each see every write before them: each increments a counter and inserts the value it read
/// as a primary key, so two evaluated over the same state would collide and fail. The leader's
/// metrics must show entries proposed while others were in flight, or this proves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_modify_writes_evaluated_over_entries_in_flight_lose_no_update() {
    let options = ClusterOptions {
        http: true,
        extra_args: vec!["--write-pipeline-depth=4".into()],
        ..Default::default()
    };
    let cluster = Cluster::start(3, options).await.expect("cluster starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    let client = cluster.client().await;
    for sql in [
        "CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
        "CREATE TABLE seen (v INTEGER PRIMARY KEY, w INTEGER NOT NULL)",
        "CREATE INDEX seen_w ON seen (w)",
        "INSERT INTO counter VALUES (1, 0)",
    ] {
        let res = client.execute(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        res.results.into_iter().next().unwrap().unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    const WRITERS: i64 = 32;
    const PER_WRITER: i64 = 25;
    let stop_after = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = 0i64;
            for _ in 0..PER_WRITER {
                if tokio::time::Instant::now() > stop_after {
                    break;
                }
                let statements = vec![
                    ("UPDATE counter SET n = n + 1 WHERE id = 1".to_string(), vec![]),
                    (format!("INSERT INTO seen (v, w) SELECT n, {w} FROM counter WHERE id = 1"), vec![]),
                ];
                let res = client
                    .execute_batch(statements, true)
                    .await
                    .unwrap_or_else(|e| panic!("writer {w}: {e}"));
                for r in res.results {
                    r.unwrap_or_else(|e| panic!("writer {w}: a statement failed: {e} (a stale evaluation?)"));
                }
                acked += 1;
            }
            acked
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.expect("writer task");
    }
    assert!(acked > 0);

    let r = client.query("SELECT n FROM counter", &[], QueryOptions::default()).await.expect("read");
    assert_eq!(r.rows, vec![vec![Value::Integer(acked)]], "one increment per acknowledged write");
    let r = client
        .query("SELECT count(*), min(v), max(v) FROM seen", &[], QueryOptions::default())
        .await
        .expect("read");
    assert_eq!(r.rows, vec![vec![Value::Integer(acked), Value::Integer(1), Value::Integer(acked)]]);
    cluster.assert_converged("seen").await.expect("replicas converge");
    cluster.assert_converged("counter").await.expect("replicas converge");

    // Entries were proposed while others were in flight.
    let addr = cluster.http_addr(leader).expect("http port");
    let (code, body) = raftsql_tests::http_get(addr, "/metrics").await.expect("GET /metrics");
    assert_eq!(code, 200);
    let sample = |prefix: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} missing from /metrics"))
    };
    let alone = sample("raftsql_sequencer_entries_in_flight_bucket{le=\"1\"}");
    let all = sample("raftsql_sequencer_entries_in_flight_count");
    assert!(all > alone, "no entry was proposed while another was in flight ({all} entries)");
}

/// Apply does not fsync (store's durability choice (b)): after `kill -9` a node's state machine
/// may be behind what it had applied, and recovery re-applies from the log, which is purged
/// only below a snapshot taken after a flush. Here sled never flushes on its own
/// (`--flush-every-ms=0`), snapshots and purges come every 20 entries, and every node is
/// killed at once under concurrent writes, twice: every acknowledged write must be there
/// after each restart, once, on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_kill_9_of_all_nodes_with_unflushed_applies() {
    let options = ClusterOptions {
        snapshot_threshold: Some(20),
        extra_args: vec!["--flush-every-ms=0".into(), "--snapshot-keep-logs=5".into()],
        ..Default::default()
    };
    let mut cluster = Cluster::start(3, options).await.expect("cluster starts");
    cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    let client = cluster.client().await;
    create_table(&client).await;
    let mut acked: Vec<i64> = Vec::new();
    for round in 0..2i64 {
        let tasks = spawn_inserters(&client, 8, 40, round * 100_000);
        for t in tasks {
            acked.extend(t.await.expect("writer task"));
        }
        assert!(acked.len() as i64 >= (round + 1) * 300, "most writes succeed ({} acked)", acked.len());
        for id in cluster.ids() {
            cluster.kill(id);
        }
        for id in cluster.ids() {
            cluster.restart(id).await.expect("restart");
        }
        cluster.wait_for_leader(WAIT).await.expect("a leader after the restart");
        assert_every_acked_row_once(&cluster, &client, &acked, &format!("round {round}: ")).await;
    }
}

/// A follower applies the last write of a burst without waiting for the next write: after one
/// INSERT and nothing else, every node reaches the leader's applied index (and an ANY read
/// pinned to a follower sees the row). The leader holds back a heartbeat that would only carry a
/// new commit index, hoping the next entries carry it (vendor/openraft/PATCHES.md); when none
/// come, the heartbeat must still go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_apply_the_last_write_without_a_next_one() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let client = cluster.client().await;
    create_table(&client).await;
    client.execute("INSERT INTO t VALUES (1, 'only', 1.0)", &[]).await.expect("insert");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let index = cluster.status(leader).await.expect("leader status").applied_index;
    for id in cluster.ids() {
        cluster.wait_applied(id, index, Duration::from_secs(10)).await.unwrap_or_else(|e| {
            panic!("{e}; the last write must reach every replica without another one after it")
        });
    }
    for id in cluster.ids().into_iter().filter(|&id| id != leader) {
        let r = client
            .query("SELECT id FROM t", &[], raftsql_tests::pinned(&cluster, id))
            .await
            .expect("ANY read on a follower");
        assert_eq!(r.rows, vec![vec![Value::Integer(1)]], "node {id} serves the write");
    }
}
