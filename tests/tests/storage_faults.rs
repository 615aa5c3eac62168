//! Issue 21, item 6: a node whose own store fails a read stops (fail-stop), and the failure is
//! never an answer that enters the log or an exactly-once record.
//!
//! Each node runs with the test hook `RAFTSQL_TEST_FAIL_READS` (`store::fault`) naming a file of
//! its own; creating that file makes every read of that node's state fail as an I/O error would.
//! Armed on the leader, a write's evaluation fails there: the leader answers UNAVAILABLE with
//! nothing proposed and exits non-zero, the others elect a leader, and the client's retry (same
//! request id) applies once there. Armed on a follower, a read pinned to it is answered
//! UNAVAILABLE saying what happened and what to do, and the follower exits too. Each failed node
//! restarts on its data dir and catches up.

use raftsql_client::{Error, Value};
use raftsql_tests::{exec, pinned, Cluster, ClusterOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const HOOK: &str = "RAFTSQL_TEST_FAIL_READS";

fn trigger(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("fail-reads-{id}"))
}

/// The node exited non-zero, its last line saying what failed and what to do.
async fn exited_naming_the_failure(cluster: &mut Cluster, id: u64) {
    let status = cluster.wait_exit(id, WAIT).await.expect("the node with a failing store exits by itself");
    assert!(!status.success(), "a storage failure must exit non-zero for a supervisor: {status}");
    let log = cluster.log_tail(id);
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("raftsql-server: local storage failed")
            && last.contains(HOOK)
            && last.contains("check the disk")
            && last.contains("restart"),
        "one last line naming the failure and what to do: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// Every node holds `rows` in `t` (the failed attempt left no trace anywhere).
async fn all_hold(cluster: &Cluster, rows: &[(i64, i64)]) {
    let client = cluster.client().await;
    let (count, _) = cluster.assert_converged("t").await.expect("the replicas converge");
    assert_eq!(count, rows.len());
    let want: Vec<Vec<Value>> =
        rows.iter().map(|(k, n)| vec![Value::Integer(*k), Value::Integer(*n)]).collect();
    for id in cluster.running() {
        let got = client.query("SELECT k, n FROM t ORDER BY k", &[], pinned(cluster, id)).await;
        assert_eq!(got.expect("a read pinned to a running node").rows, want, "node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_stops_its_node_and_never_reaches_the_log() {
    let triggers = tempfile::tempdir().expect("a temp dir for the trigger files");
    let opts = ClusterOptions {
        node_env: (1..=3)
            .map(|id| (id, HOOK.to_string(), trigger(triggers.path(), id).display().to_string()))
            .collect(),
        ..Default::default()
    };
    let mut cluster = Cluster::start(3, opts).await.expect("the cluster starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let client = cluster.client().await;
    exec(&client, "CREATE TABLE t (k INTEGER PRIMARY KEY, n INTEGER)").await;
    exec(&client, "INSERT INTO t VALUES (1, 10), (2, 20)").await;
    all_hold(&cluster, &[(1, 10), (2, 20)]).await;

    // A write whose evaluation on the leader meets the failing store. Not idempotent: applied
    // twice, or answered from a record of the failure, it would show.
    std::fs::write(trigger(triggers.path(), leader), b"").expect("arm the leader's hook");
    let write = vec![("UPDATE t SET n = n + 1 WHERE k = 1".to_string(), vec![])];
    let done =
        client.execute_as("fault-test", 1, write.clone(), false).await.expect("the retry succeeds elsewhere");
    let result = done.results[0].as_ref().expect("the statement's own outcome, not the storage failure");
    assert_eq!(result.rows_affected, 1);
    assert_ne!(done.receipt.node_id, leader, "the failed leader answered nothing but UNAVAILABLE");
    exited_naming_the_failure(&mut cluster, leader).await;
    all_hold(&cluster, &[(1, 11), (2, 20)]).await;
    // The exactly-once record holds the success: the same request id is answered from it.
    let again = client.execute_as("fault-test", 1, write, false).await.expect("answered from the record");
    assert_eq!(again.results[0].as_ref().expect("the recorded success").rows_affected, 1);
    all_hold(&cluster, &[(1, 11), (2, 20)]).await;

    // Restarted with its store healthy, it rejoins and catches up from its own log and the leader.
    std::fs::remove_file(trigger(triggers.path(), leader)).expect("disarm");
    cluster.start_stopped().await.expect("the failed node restarts on its data dir");
    exec(&client, "INSERT INTO t VALUES (3, 30)").await;
    all_hold(&cluster, &[(1, 11), (2, 20), (3, 30)]).await;

    // A read on a follower whose store fails: UNAVAILABLE saying what happened and what to do
    // (retryable: an unpinned read goes on to another node), and the follower stops too.
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("three nodes");
    std::fs::write(trigger(triggers.path(), follower), b"").expect("arm the follower's hook");
    match client.query("SELECT k, n FROM t", &[], pinned(&cluster, follower)).await {
        Err(Error::Unavailable { message }) => assert!(
            message.contains(&format!("node {follower} stopped serving"))
                && message.contains("local storage failed")
                && message.contains("retry it at another node")
                && message.contains("check the node's disk"),
            "{message}"
        ),
        other => panic!("a read the store failed must be UNAVAILABLE, got {other:?}"),
    }
    exited_naming_the_failure(&mut cluster, follower).await;
    std::fs::remove_file(trigger(triggers.path(), follower)).expect("disarm");
    cluster.start_stopped().await.expect("the failed follower restarts on its data dir");
    exec(&client, "UPDATE t SET n = n + 1 WHERE k = 3").await;
    all_hold(&cluster, &[(1, 11), (2, 20), (3, 31)]).await;
}
