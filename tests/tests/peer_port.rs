//! Issue 17, the peer port: nodes started with `--peer-listen` carry Raft only there, and the
//! client port serves Sql and Admin only; a cluster so configured forms, replicates, elects,
//! grows and waits for replicas over its peer ports.

use raftsql_client::pb;
use raftsql_tests::nemesis::byzantine::append;
use raftsql_tests::{exec, Cluster, ClusterOptions};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy()
}

/// A forged heartbeat in term 2^64−1 (issue 16's brick) from `from` to `to`, sent to `addr`.
async fn forged_heartbeat(addr: &str, cluster_id: &str, from: u64, to: u64) -> tonic::Status {
    let msg = pb::RaftMessage {
        payload: append(u64::MAX, from, None, &[]),
        cluster_id: cluster_id.to_string(),
        from,
        to,
        ..Default::default()
    };
    pb::raft_client::RaftClient::new(channel(addr)).append_entries(msg).await.expect_err("a forged heartbeat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_talk_only_on_the_peer_port() {
    let opts = ClusterOptions {
        peer_ports: true,
        extra_args: vec!["--forward-writes".into()],
        ..Default::default()
    };
    let mut cluster = Cluster::start(3, opts).await.expect("a cluster with peer ports starts");
    let (leader, term) = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let client = cluster.client().await;
    exec(&client, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").await;
    exec(&client, "INSERT INTO t VALUES (1, 'one'), (2, 'two')").await;
    cluster.assert_converged("t").await.expect("replicated over the peer ports");

    // The membership knows both addresses of every member; redirects name the client one.
    let s = cluster.status(leader).await.unwrap();
    assert_eq!(s.peer_addr, cluster.peer_addr(leader));
    for m in &s.members {
        assert_eq!((m.addr.as_str(), m.peer_addr.as_str()), (cluster.addr(m.id), cluster.peer_addr(m.id)));
        assert_ne!(m.addr, m.peer_addr);
    }
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let fs = cluster.status(follower).await.unwrap();
    assert_eq!(fs.leader_addr, cluster.addr(leader));
    // The shell shows both.
    let out = std::process::Command::new(raftsql_tests::bin_dir().join("raftsql"))
        .args(["--addr", cluster.addr(follower), "-e", ".status"])
        .env("RAFTSQL_HISTORY", "")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let shown = format!("{leader}={} (peers: {})", cluster.addr(leader), cluster.peer_addr(leader));
    assert!(text.contains(&shown), "{text}");

    // A write sent to a follower (--forward-writes) reaches the leader over the peer port, and
    // so does a removal (of a node that is not a member: NOT_FOUND from the leader).
    let write = pb::ExecuteRequest {
        statements: vec![pb::Statement {
            sql: "INSERT INTO t VALUES (10, 'via a follower')".into(),
            params: vec![],
        }],
        ..Default::default()
    };
    let r = pb::sql_client::SqlClient::new(channel(cluster.addr(follower))).execute(write).await.unwrap();
    assert_eq!(r.get_ref().receipt.as_ref().unwrap().node_id, leader, "not forwarded to the leader");
    let s = pb::admin_client::AdminClient::new(channel(cluster.addr(follower)))
        .remove(pb::RemoveRequest { node_id: 42, force: false })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}");
    assert!(s.message().contains("node 42 is not a member"), "{s:?}");

    // The client port serves no Raft: issue 16's forged heartbeat, a status and a join asked
    // as a node would, all UNIMPLEMENTED there. On the peer port the heartbeat meets the peer
    // checks as before.
    let caddr = cluster.addr(follower).to_string();
    let paddr = cluster.peer_addr(follower).to_string();
    let s = forged_heartbeat(&caddr, &fs.cluster_id, leader, follower).await;
    assert_eq!(s.code(), tonic::Code::Unimplemented, "{s:?}");
    let s = forged_heartbeat(&paddr, &fs.cluster_id, leader, follower).await;
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    let mut raft_on_client_port = pb::raft_client::RaftClient::new(channel(&caddr));
    let s = raft_on_client_port.status(pb::StatusRequest {}).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unimplemented, "{s:?}");
    let join =
        pb::JoinRequest { node_id: 9, addr: "127.0.0.1:9".into(), incarnation: 1, ..Default::default() };
    let s = raft_on_client_port.join(join).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unimplemented, "{s:?}");
    // ... and the peer port serves no clients.
    let s = pb::sql_client::SqlClient::new(channel(&paddr))
        .query(pb::QueryRequest { sql: "SELECT * FROM t".into(), ..Default::default() })
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unimplemented, "{s:?}");
    let s =
        pb::admin_client::AdminClient::new(channel(&paddr)).status(pb::StatusRequest {}).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unimplemented, "{s:?}");
    let after = cluster.status(follower).await.unwrap();
    assert!(after.term < 1 << 32, "the forged term reached the follower: {}", after.term);

    // Every node warned at start about what its ports expose.
    for id in cluster.ids() {
        cluster.wait_log(id, "NO PEER TLS: peer messages (Raft) on", WAIT).await.unwrap();
    }

    // A node joins through a member's peer port and catches up; a write waits for all four.
    let new = cluster.add_node().await.expect("a node joins over the peer port");
    let (rows, _) = cluster.table_checksum(new, "t").await.unwrap();
    assert_eq!(rows, 3);
    let all_four = cluster.client().await.with_min_replicas(4);
    all_four.execute("INSERT INTO t VALUES (3, 'three')", &[]).await.expect("applied by all four");

    // The leader dies: the others elect a new one over their peer ports.
    cluster.kill(leader);
    let (new_leader, new_term) = cluster.wait_for_leader(WAIT).await.expect("a new leader");
    assert!(new_leader != leader && new_term > term);
    exec(&cluster.client().await, "INSERT INTO t VALUES (4, 'four')").await;
    cluster.assert_converged("t").await.expect("the survivors agree");
}

/// Bad peer-port flags are refused at start with a readable error; single-port mode warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_port_flags_are_checked_and_single_port_mode_warns() {
    let cluster = Cluster::start(1, ClusterOptions::default()).await.expect("a single-port node");
    cluster
        .wait_log(1, "SINGLE PORT: peer messages (Raft) are served on the client port", WAIT)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = raftsql_tests::bin_dir().join("raftsql-server");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&server)
            .args(["--id", "1", "--data-dir"])
            .arg(dir.path().join("d"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--listen", "127.0.0.1:1", "--peer-listen", "127.0.0.1:1", "--bootstrap", "1=127.0.0.1:1"]);
    assert!(e.contains("--peer-listen must differ from --listen"), "{e}");
    let e = run(&["--listen", "127.0.0.1:1", "--peer-listen", "0.0.0.0:2", "--bootstrap", "1=127.0.0.1:1"]);
    assert!(e.contains("wildcard") && e.contains("--peer-advertise"), "{e}");
    let e = run(&["--listen", "127.0.0.1:1", "--peer-advertise", "127.0.0.1:2"]);
    assert!(e.contains("--peer-listen"), "{e}");
    let e = run(&["--listen", "127.0.0.1:1", "--bootstrap", "1=127.0.0.1:1/nope"]);
    assert!(e.contains("bad address \"nope\" for node 1"), "{e}");
}
