//! Consistency levels and exactly-once writes against real server processes (issue 4).

use raftsql_client::{Client, Consistency, Error, QueryOptions, Value};
use raftsql_tests::{Cluster, ClusterOptions};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

async fn setup(cluster: &Cluster) -> Client {
    cluster.wait_for_leader(WAIT).await.expect("a leader is elected");
    let client = cluster.client().await;
    let r = client.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)", &[]).await.unwrap();
    r.results.into_iter().next().unwrap().unwrap();
    client
}

fn pinned(cluster: &Cluster, id: u64, consistency: Consistency) -> QueryOptions {
    QueryOptions { consistency, node: Some(cluster.addr(id).to_string()), ..Default::default() }
}

/// Which of `ids` leads in a term after `term`, if one does.
async fn leader_among(cluster: &Cluster, ids: &[u64], term: u64) -> Option<u64> {
    for &id in ids {
        if let Ok(s) = cluster.status(id).await {
            if s.role() == raftsql_client::pb::Role::Leader && s.term > term {
                return Some(id);
            }
        }
    }
    None
}

fn int(r: &raftsql_client::QueryResult) -> Option<i64> {
    match r.rows.first().map(|row| &row[0]) {
        Some(Value::Integer(i)) => Some(*i),
        _ => None,
    }
}

/// A follower paused while the session writes is behind when it resumes (the leader is backing
/// off its replication to it). READ_YOUR_WRITES pinned to it still sees the write — served there
/// once it catches up, or by the leader — every time; ANY pinned to it can miss the write, and
/// the test observes that, so the positive check means something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_on_a_lagging_follower() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let client = setup(&cluster).await;
    let (leader, _) = cluster.wait_for_leader(WAIT).await.unwrap();
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let session = client.session();
    let mut any_missed = 0;
    for round in 1..=5i64 {
        cluster.pause(follower);
        let w = session
            .execute("INSERT INTO kv VALUES ($1, $2)", &[Value::Integer(round), Value::Integer(round * 10)])
            .await;
        w.expect("the write commits on the other two nodes").results.remove(0).expect("insert succeeds");
        cluster.resume(follower);

        let stale = client
            .query(
                "SELECT v FROM kv WHERE k = $1",
                &[Value::Integer(round)],
                pinned(&cluster, follower, Consistency::Any),
            )
            .await;
        if stale.as_ref().is_ok_and(|r| r.rows.is_empty()) {
            any_missed += 1;
        }
        let r = session
            .query(
                "SELECT v FROM kv WHERE k = $1",
                &[Value::Integer(round)],
                pinned(&cluster, follower, Consistency::ReadYourWrites),
            )
            .await
            .expect("read-your-writes read");
        assert_eq!(
            int(&r),
            Some(round * 10),
            "round {round}: the session's own write must be visible (served by node {})",
            r.receipt.node_id
        );
    }
    assert!(
        any_missed > 0,
        "ANY never missed a fresh write on the resumed follower: the test cannot tell RYW from ANY"
    );
}

/// A session reading alternately from both followers while writes go on never sees an older
/// index, nor fewer rows, than it saw before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monotonic_reads_across_followers() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let client = setup(&cluster).await;
    let (leader, _) = cluster.wait_for_leader(WAIT).await.unwrap();
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
    // The session below starts with no token, so its first read may rightly come from a follower
    // that has not applied CREATE TABLE yet (a follower learns of a commit from the next entries
    // or within COMMIT_PIGGYBACK_US): wait until both hold the table, so the reads are about the
    // inserts.
    let created = cluster.status(leader).await.expect("leader status").applied_index;
    for &f in &followers {
        cluster.wait_applied(f, created, WAIT).await.expect("the follower applies CREATE TABLE");
    }
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            for k in 0..60i64 {
                let _ = client.execute("INSERT INTO kv VALUES ($1, $1)", &[Value::Integer(k)]).await;
            }
        })
    };
    let session = client.session();
    let (mut last_index, mut last_rows) = (0, 0);
    for i in 0..60 {
        let node = followers[i % followers.len()];
        let r = session
            .query("SELECT k FROM kv", &[], pinned(&cluster, node, Consistency::ReadYourWrites))
            .await
            .expect("read");
        assert!(
            r.receipt.applied_index >= last_index,
            "read {i} on node {node} went back from index {last_index} to {}",
            r.receipt.applied_index
        );
        assert!(
            r.rows.len() >= last_rows,
            "read {i} on node {node} saw {} rows after {last_rows}",
            r.rows.len()
        );
        (last_index, last_rows) = (r.receipt.applied_index, r.rows.len());
    }
    writer.await.unwrap();
}

/// A leader paused beyond the election timeout is deposed; a new value is written under the new
/// leader; when the old leader resumes, a STRONG read sent to it never returns the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_reads_never_come_from_a_deposed_leader() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let client = setup(&cluster).await;
    client.execute("INSERT INTO kv VALUES (1, 100)", &[]).await.unwrap().results.remove(0).unwrap();
    let (old, old_term) = cluster.wait_for_leader(WAIT).await.unwrap();
    cluster.pause(old);
    // The other two elect a leader among themselves.
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != old).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    let new_leader = loop {
        if let Some(id) = leader_among(&cluster, &others, old_term).await {
            break id;
        }
        assert!(tokio::time::Instant::now() < deadline, "no new leader while node {old} is paused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let to_new = Client::connect([cluster.addr(new_leader).to_string()]).await.unwrap();
    to_new.execute("INSERT INTO kv VALUES (2, 200)", &[]).await.unwrap().results.remove(0).unwrap();
    cluster.resume(old);
    for _ in 0..20 {
        match client
            .query("SELECT v FROM kv WHERE k = 2", &[], pinned(&cluster, old, Consistency::Strong))
            .await
        {
            Ok(r) => assert_eq!(
                int(&r),
                Some(200),
                "a STRONG read returned a state without the new leader's write (node {})",
                r.receipt.node_id
            ),
            Err(e) => assert!(
                matches!(e, Error::NotLeader { .. } | Error::Unavailable { .. } | Error::Timeout { .. }),
                "{e}"
            ),
        }
    }
}

/// A committed write whose response is lost (the leader is killed right after it answered, and
/// the client retries the same request id at the new leader) has exactly one effect, and the
/// retry returns the original outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_applies_once_across_a_leader_change() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let client = setup(&cluster).await;
    client.execute("CREATE TABLE log (msg TEXT)", &[]).await.unwrap().results.remove(0).unwrap();
    let stmt = || vec![("INSERT INTO log VALUES ('once')".to_string(), vec![])];
    let first = client.execute_as("app-42", 1, stmt(), false).await.expect("write");
    let first_id = first.results[0].as_ref().unwrap().last_insert_id;
    let (leader, _) = cluster.wait_for_leader(WAIT).await.unwrap();
    cluster.kill(leader);
    cluster.wait_for_leader(WAIT).await.expect("a new leader");
    let retry = client.execute_as("app-42", 1, stmt(), false).await.expect("retry");
    assert_eq!(
        retry.results[0].as_ref().unwrap().last_insert_id,
        first_id,
        "the retry returns the original outcome"
    );
    let retry_again = client.execute_as("app-42", 1, stmt(), false).await.expect("retry");
    assert_eq!(retry_again.results[0].as_ref().unwrap().rows_affected, 1);
    let r = client.query("SELECT msg FROM log", &[], QueryOptions::default()).await.unwrap();
    assert_eq!(r.rows.len(), 1, "one effect, however often it is retried");
    // The next sequence number is a new request; an older one is refused, not re-applied.
    client.execute_as("app-42", 2, stmt(), false).await.expect("next request").results.remove(0).unwrap();
    let old = client.execute_as("app-42", 1, stmt(), false).await.expect_err("seq 1 is older than 2");
    assert_eq!(old.code(), "INVALID_ARGUMENT", "{old}");
    assert_eq!(
        client.query("SELECT msg FROM log", &[], QueryOptions::default()).await.unwrap().rows.len(),
        2
    );
}

/// Copies of one request sent at once, while other writers keep entries in flight (the
/// pipelined write path evaluates over them): one copy is evaluated and applied, the others
/// wait for it and share its answer; an older sequence number of the same client sent
/// meanwhile is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_request_sent_at_once_apply_once_while_entries_are_in_flight() {
    let options =
        ClusterOptions { extra_args: vec!["--write-pipeline-depth=4".into()], ..Default::default() };
    let cluster = Cluster::start(3, options).await.expect("cluster starts");
    let client = setup(&cluster).await;
    client.execute("INSERT INTO kv VALUES (1, 0), (2, 0)", &[]).await.unwrap().results.remove(0).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..16 {
        let (client, stop) = (client.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            for _ in 0..2_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                client.execute("UPDATE kv SET v = v + 1 WHERE k = 2", &[]).await.expect("load write");
            }
        }));
    }
    let bump = || vec![("UPDATE kv SET v = v + 1 WHERE k = 1".to_string(), vec![])];
    for seq in 1..=20u64 {
        let copies: Vec<_> = (0..6)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.execute_as("twin", seq, bump(), false).await })
            })
            .collect();
        for c in copies {
            let r = c.await.unwrap().unwrap_or_else(|e| panic!("copy of request {seq}: {e}"));
            assert_eq!(r.results[0].as_ref().expect("the update succeeds").rows_affected, 1);
        }
        if seq > 1 {
            let old = client.execute_as("twin", seq - 1, bump(), false).await;
            assert_eq!(old.expect_err("an older request").code(), "INVALID_ARGUMENT");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let r = client.query("SELECT v FROM kv WHERE k = 1", &[], QueryOptions::default()).await.unwrap();
    assert_eq!(int(&r), Some(20), "each request applied once, however many copies");
    cluster.assert_converged("kv").await.expect("replicas converge");
}

/// Bad session tokens get typed TOKEN errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_session_tokens_are_typed_errors() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let client = setup(&cluster).await;
    let session = client.session();
    session.execute("INSERT INTO kv VALUES (1, 1)", &[]).await.unwrap();
    let token = session.token().expect("writes return a session token");
    let (cluster_id, index) = token.rsplit_once('.').unwrap();
    let (leader, _) = cluster.wait_for_leader(WAIT).await.unwrap();
    let future = format!("{cluster_id}.{}", index.parse::<u64>().unwrap() + 1_000_000);
    for bad in ["not-a-token", "othercluster.1", future.as_str()] {
        let opts = QueryOptions {
            session_token: Some(bad.to_string()),
            ..pinned(&cluster, leader, Consistency::ReadYourWrites)
        };
        let err = client.query("SELECT * FROM kv", &[], opts).await.expect_err(bad);
        assert_eq!(err.code(), "TOKEN", "{bad}: {err}");
    }
}

/// `min_replicas`: a write returns once k nodes applied it; with a follower paused, asking for
/// all three times out with a typed error that says how many applied it, and the write is
/// committed all the same; asking for more nodes than exist is refused up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_replicas_waits_for_k_nodes_or_says_how_many() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let client = setup(&cluster).await;
    let all = client.with_min_replicas(3);
    all.execute("INSERT INTO kv VALUES (1, 1)", &[]).await.expect("3 of 3").results.remove(0).unwrap();
    for id in cluster.ids() {
        let r = client
            .query("SELECT v FROM kv WHERE k = 1", &[], pinned(&cluster, id, Consistency::Any))
            .await
            .unwrap();
        assert_eq!(int(&r), Some(1), "node {id} had applied the write when it was acknowledged");
    }
    let (leader, _) = cluster.wait_for_leader(WAIT).await.unwrap();
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    cluster.pause(follower);
    let err = all.execute("INSERT INTO kv VALUES (2, 2)", &[]).await.expect_err("3 of 3 cannot apply it");
    assert_eq!(err.code(), "TIMEOUT", "{err}");
    assert!(err.to_string().contains("only 2 of the 3"), "{err}");
    client
        .with_min_replicas(2)
        .execute("INSERT INTO kv VALUES (3, 3)", &[])
        .await
        .expect("2 of 3")
        .results
        .remove(0)
        .unwrap();
    cluster.resume(follower);
    let r = client.query("SELECT k FROM kv", &[], QueryOptions::default()).await.unwrap();
    assert_eq!(r.rows.len(), 3, "the timed-out write was committed all the same");
    let err = client
        .with_min_replicas(4)
        .execute("INSERT INTO kv VALUES (4, 4)", &[])
        .await
        .expect_err("4 > 3 members");
    assert_eq!(err.code(), "INVALID_ARGUMENT", "{err}");
    // ...refused before anything was proposed: the row was not inserted (issue 16: it was).
    let r = client.query("SELECT k FROM kv WHERE k = 4", &[], QueryOptions::default()).await.unwrap();
    assert!(r.rows.is_empty(), "min_replicas 4 was refused after the write was applied");
}

/// With `--forward-writes`, a follower passes writes on to the leader itself: a client that
/// knows only that follower never sees NOT_LEADER (it keeps writing to the follower).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_writes_when_asked_to() {
    let opts = ClusterOptions { extra_args: vec!["--forward-writes".into()], ..Default::default() };
    let cluster = Cluster::start(3, opts).await.expect("cluster starts");
    setup(&cluster).await;
    let (leader, _) = cluster.wait_for_leader(WAIT).await.unwrap();
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let via = Client::connect([cluster.addr(follower).to_string()]).await.unwrap();
    for k in 0..5 {
        let r = via
            .execute("INSERT INTO kv VALUES ($1, $1)", &[Value::Integer(k)])
            .await
            .expect("forwarded write");
        assert_eq!(r.receipt.node_id, leader, "the leader applied it");
    }
    assert_eq!(
        via.cached_leader().as_deref(),
        Some(cluster.addr(follower)),
        "no redirect reached the client"
    );
    let (rows, _) = cluster.assert_converged("kv").await.unwrap();
    assert_eq!(rows, 5);
}

/// A learner is a read replica: it serves reads (read-your-writes included), redirects writes,
/// and never votes or leads, even when the leader dies. Clients may name nodes by DNS name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learners_serve_reads_but_never_write_vote_or_lead() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    setup(&cluster).await;
    let learner = cluster.add_learner().await.expect("a learner joins");
    let st = cluster.status(learner).await.unwrap();
    assert!(st.members.iter().any(|m| m.id == learner && !m.voter), "{:?}", st.members);
    assert_eq!(st.role(), raftsql_client::pb::Role::Learner);

    // By DNS name: "localhost:PORT".
    let port = cluster.addr(learner).rsplit(':').next().unwrap().to_string();
    let via_learner = Client::connect([format!("localhost:{port}")]).await.unwrap();
    let session = via_learner.session();
    let w = session
        .execute("INSERT INTO kv VALUES (1, 11)", &[])
        .await
        .expect("write via a learner is redirected");
    assert_ne!(w.receipt.node_id, learner, "the learner never applies a write as leader");
    let opts = QueryOptions {
        consistency: Consistency::ReadYourWrites,
        node: Some(format!("localhost:{port}")),
        ..Default::default()
    };
    let r = session.query("SELECT v FROM kv WHERE k = 1", &[], opts).await.expect("read on the learner");
    assert_eq!(int(&r), Some(11));

    let (leader, term) = cluster.wait_for_leader(WAIT).await.unwrap();
    cluster.kill(leader);
    let (new_leader, new_term) = cluster.wait_for_leader(WAIT).await.expect("the voters elect a leader");
    assert!(new_leader != learner && new_term > term, "node {new_leader} leads term {new_term}");
    assert_eq!(cluster.status(learner).await.unwrap().role(), raftsql_client::pb::Role::Learner);
}

/// Requests the client library would never send are refused with typed errors: an unknown
/// consistency level, BOUNDED without a staleness, a malformed request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_typed_errors() {
    use raftsql_client::pb;
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    setup(&cluster).await;
    let (leader, _) = cluster.wait_for_leader(WAIT).await.unwrap();
    let addr = cluster.addr(leader).to_string();
    let mut raw = pb::sql_client::SqlClient::connect(format!("http://{addr}")).await.unwrap();
    let query = |consistency: i32, max_staleness_ms: u64| pb::QueryRequest {
        sql: "SELECT * FROM kv".into(),
        consistency,
        max_staleness_ms,
        ..Default::default()
    };
    for (req, what) in [
        (query(99, 0), "unknown consistency level"),
        (query(pb::Consistency::Bounded as i32, 0), "max_staleness_ms"),
    ] {
        let status = raw.query(req).await.expect_err(what);
        let err = raftsql_client::Error::from_status(&addr, status);
        assert_eq!(err.code(), "INVALID_ARGUMENT", "{err}");
        assert!(err.to_string().contains(what), "{err}");
    }
    for (id, what) in [
        (pb::RequestId { client_id: String::new(), seq: 1 }, "client_id"),
        (pb::RequestId { client_id: "x".repeat(65), seq: 1 }, "client_id"),
        (pb::RequestId { client_id: "c".into(), seq: 0 }, "seq"),
    ] {
        let req = pb::ExecuteRequest {
            statements: vec![pb::Statement { sql: "INSERT INTO kv VALUES (5, 5)".into(), params: vec![] }],
            request_id: Some(id),
            ..Default::default()
        };
        let err = raftsql_client::Error::from_status(&addr, raw.execute(req).await.expect_err(what));
        assert_eq!(err.code(), "INVALID_ARGUMENT", "{err}");
        assert!(err.to_string().contains(what), "{err}");
    }
    let r = cluster.client().await.query("SELECT * FROM kv", &[], QueryOptions::default()).await.unwrap();
    assert!(r.rows.is_empty(), "nothing was applied");
}

/// The README's "client library in ten lines", run for real against a cluster (the doc test
/// only compiles it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_client_example_runs() -> Result<(), Error> {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    cluster.wait_for_leader(WAIT).await.expect("leader");
    let addrs = cluster.addrs();
    // From here on, the README's lines (with this cluster's addresses).
    let client = Client::connect([addrs[0].as_str(), addrs[1].as_str(), addrs[2].as_str()]).await?;
    let session = client.session(); // tracks the session token for you
    session.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)", &[]).await?;
    session.execute("INSERT INTO users VALUES ($1, $2)", &[Value::Integer(1), "ada".into()]).await?;
    let ryw = QueryOptions { consistency: Consistency::ReadYourWrites, ..Default::default() };
    let r = session.query("SELECT name FROM users WHERE id = 1", &[], ryw).await?; // any caught-up node
    let token = session.token(); // hand it to another process: client.session_from(&token)
    let safe = client.with_min_replicas(3); // writes return once all three nodes applied them
    assert_eq!(r.rows, vec![vec![Value::Text("ada".into())]]);
    let other = client.session_from(&token.expect("a token after a write"));
    let r = other
        .query(
            "SELECT name FROM users",
            &[],
            QueryOptions { consistency: Consistency::ReadYourWrites, ..Default::default() },
        )
        .await?;
    assert_eq!(r.rows.len(), 1);
    safe.execute("INSERT INTO users VALUES (2, 'grace')", &[]).await?.results.remove(0)?;
    Ok(())
}

/// BOUNDED reads: a follower in touch with the leader serves them within the bound; a follower
/// that has not heard from the leader (paused, then asked at once on resume with a tiny bound)
/// refuses at once with a typed error rather than answering stale data or hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_reads_are_served_within_the_bound_or_refused() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let client = setup(&cluster).await;
    let mut written = client.execute("INSERT INTO kv VALUES (1, 1)", &[]).await.unwrap();
    written.results.remove(0).unwrap();
    let (leader, _) = cluster.wait_for_leader(WAIT).await.unwrap();
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    // A follower in touch may answer from state up to the bound old: before it has applied the
    // table, "no such table" would be a right answer. Wait until it holds the write.
    cluster.wait_applied(follower, written.receipt.applied_index, WAIT).await.unwrap();
    let bounded = |ms| pinned(&cluster, follower, Consistency::Bounded(Duration::from_millis(ms)));
    let r = client.query("SELECT v FROM kv", &[], bounded(5_000)).await.expect("a fresh follower serves it");
    assert_eq!(r.receipt.node_id, follower);
    cluster.pause(follower);
    // Paused past the election timeout's worth of heartbeats.
    let deadline = tokio::time::Instant::now() + WAIT;
    while cluster
        .status(leader)
        .await
        .map(|s| s.followers.iter().any(|f| f.id == follower && f.lag == 0))
        .unwrap_or(true)
    {
        client.execute("INSERT INTO kv VALUES (2, 2)", &[]).await.ok();
        assert!(tokio::time::Instant::now() < deadline, "the paused follower never fell behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // let its last contact age past 100 ms
    cluster.resume(follower);
    let started = tokio::time::Instant::now();
    match client.query("SELECT v FROM kv", &[], bounded(100)).await {
        Err(e) => {
            assert_eq!(e.code(), "UNAVAILABLE", "{e}");
            eprintln!("refused as too stale: {e}");
        }
        // A heartbeat may reach it first: then it is within the bound again, legitimately.
        Ok(r) => assert_eq!(r.receipt.node_id, follower),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "a pinned BOUNDED read answers at once");
}

/// STRONG reads share leadership confirmations (batched ReadIndex, issue 18) without giving up
/// linearizability: while one writer keeps incrementing a counter, waves of 64 concurrent STRONG
/// reads each see at least the value acknowledged before they were sent, and the nodes ran far
/// fewer confirmation rounds than they served reads. Heartbeat rounds only (`--read-lease-ms
/// 0`): lease rounds take no round trip, so they are shorter and batch fewer reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_reads_share_confirmation_rounds_and_stay_linearizable() {
    concurrent_strong_reads_under_writes(false).await;
}

/// The same waves of STRONG reads under writes, confirmed by the leader lease: the read index
/// the lease gives is the leader's committed index, and every read still sees every
/// acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_reads_by_the_lease_stay_linearizable_under_writes() {
    concurrent_strong_reads_under_writes(true).await;
}

async fn concurrent_strong_reads_under_writes(lease: bool) {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::Arc;
    let extra_args = if lease { vec![] } else { vec!["--read-lease-ms".into(), "0".into()] };
    let cluster =
        Cluster::start(3, ClusterOptions { extra_args, ..Default::default() }).await.expect("cluster starts");
    let client = setup(&cluster).await;
    client.execute("INSERT INTO kv VALUES (1, 0)", &[]).await.unwrap().results.remove(0).unwrap();
    let totals = |statuses: Vec<raftsql_client::pb::StatusResponse>| {
        statuses.iter().fold((0, 0, 0), |(r, n, l), s| {
            (r + s.read_index_reads, n + s.read_index_rounds, l + s.read_lease_rounds)
        })
    };
    let mut before = Vec::new();
    for id in cluster.ids() {
        before.push(cluster.status(id).await.expect("status"));
    }
    let (reads_before, rounds_before, leased_before) = totals(before);

    let acked = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            // Bounded: stops when the readers are done, or after 2,000 increments.
            for n in 1..=2000i64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = client.execute("UPDATE kv SET v = $1 WHERE k = 1", &[Value::Integer(n)]).await;
                r.expect("the update commits").results.remove(0).expect("update succeeds");
                acked.store(n, Ordering::SeqCst);
            }
        })
    };
    let waves = 8;
    for wave in 0..waves {
        let reads = (0..64).map(|_| {
            let (client, acked) = (client.clone(), acked.clone());
            async move {
                let floor = acked.load(Ordering::SeqCst);
                let r = client
                    .query("SELECT v FROM kv WHERE k = 1", &[], QueryOptions::default())
                    .await
                    .expect("STRONG read");
                let seen = int(&r).expect("the row exists");
                assert!(
                    seen >= floor,
                    "wave {wave}: a STRONG read saw {seen}, but {floor} was acknowledged before it \
                     was sent (served by node {} at index {})",
                    r.receipt.node_id,
                    r.receipt.applied_index
                );
            }
        });
        futures::future::join_all(reads).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer task");

    let mut after = Vec::new();
    for id in cluster.ids() {
        after.push(cluster.status(id).await.expect("status"));
    }
    let (reads_after, rounds_after, leased_after) = totals(after);
    let (reads, rounds, leased) =
        (reads_after - reads_before, rounds_after - rounds_before, leased_after - leased_before);
    eprintln!("{reads} linearizable reads, {rounds} confirmation rounds, {leased} of them by the lease");
    assert!(
        reads >= waves * 64,
        "the nodes counted {reads} linearizable reads, expected at least {}",
        waves * 64
    );
    if lease {
        assert!(leased >= 1, "no round was answered by the lease");
    } else {
        assert_eq!(leased, 0);
        assert!(
            rounds * 2 < reads,
            "{reads} linearizable reads took {rounds} confirmation rounds: concurrent reads are not sharing rounds"
        );
    }
}

/// The leader lease (issue 18). With reads only, the leader confirms STRONG reads by its lease,
/// without heartbeat rounds. Cut off from both followers, it stops serving them before the
/// other two can elect a leader and commit: once the new leader has acknowledged a write, a
/// STRONG read sent to the old one never returns the old value. (A lease as long as the
/// followers' would fail here: the old leader would still serve when the new one commits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_reads_use_the_lease_and_an_isolated_leader_stops_before_a_new_one_commits() {
    let opts = ClusterOptions { proxied: Some(31), ..Default::default() };
    let cluster = Cluster::start(3, opts).await.expect("cluster starts");
    let client = setup(&cluster).await;
    client.execute("INSERT INTO kv VALUES (1, 100)", &[]).await.unwrap().results.remove(0).unwrap();
    let (old, old_term) = cluster.wait_for_leader(WAIT).await.unwrap();
    let before = cluster.status(old).await.expect("status");
    for _ in 0..20 {
        let r = client.query("SELECT v FROM kv WHERE k = 1", &[], pinned(&cluster, old, Consistency::Strong));
        assert_eq!(int(&r.await.expect("a STRONG read on the leader")), Some(100));
    }
    let after = cluster.status(old).await.expect("status");
    let (rounds, leased) = (
        after.read_index_rounds - before.read_index_rounds,
        after.read_lease_rounds - before.read_lease_rounds,
    );
    eprintln!("20 STRONG reads: {rounds} confirmations, {leased} of them by the lease");
    assert!(leased >= 1 && leased <= rounds, "{leased} of {rounds} confirmations by the lease");

    cluster.net().expect("proxied").isolate(old);
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != old).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    // Reads keep going to the isolated leader while the others elect; the value may be the old
    // one only until the new leader's write is acknowledged.
    let mut served_while_isolated = 0;
    let new_leader = loop {
        if let Ok(r) = client
            .query("SELECT v FROM kv WHERE k = 1", &[], pinned(&cluster, old, Consistency::Strong))
            .await
        {
            assert_eq!(int(&r), Some(100));
            served_while_isolated += u32::from(r.receipt.node_id == old);
        }
        if let Some(id) = leader_among(&cluster, &others, old_term).await {
            break id;
        }
        assert!(tokio::time::Instant::now() < deadline, "no new leader while node {old} is cut off");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("the isolated leader served {served_while_isolated} STRONG reads before node {new_leader} led");
    let to_new = Client::connect([cluster.addr(new_leader).to_string()]).await.unwrap();
    let w = to_new.execute("UPDATE kv SET v = 200 WHERE k = 1", &[]).await;
    w.expect("the new leader commits").results.remove(0).expect("update succeeds");
    for _ in 0..20 {
        match client
            .query("SELECT v FROM kv WHERE k = 1", &[], pinned(&cluster, old, Consistency::Strong))
            .await
        {
            // Redirected to the new leader: the new value.
            Ok(r) if r.receipt.node_id != old => assert_eq!(int(&r), Some(200)),
            Ok(r) => panic!(
                "the cut-off leader served a STRONG read after node {new_leader} committed: {:?}",
                int(&r)
            ),
            Err(e) => assert!(
                matches!(e, Error::NotLeader { .. } | Error::Unavailable { .. } | Error::Timeout { .. }),
                "{e}"
            ),
        }
    }
    cluster.net().expect("proxied").heal_all();
}
