//! Issue 16, peer messages: forged and malformed AppendEntries and Vote requests, sent from an
//! ordinary client to a follower's port, are refused before openraft sees them and change
//! nothing — in particular a heartbeat in term 2^64−1 no longer moves every node to that term
//! and panics the next election (it bricked the cluster for good).

use openraft::raft::VoteRequest;
use openraft::{CommittedLeaderId, LogId, Vote};
use raftsql_client::pb;
use raftsql_server::typ::TypeConfig;
use raftsql_tests::nemesis::byzantine::append;
use raftsql_tests::{Cluster, ClusterOptions};
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// (cluster id, from, to) of a RaftMessage.
type Envelope<'a> = (&'a str, u64, u64);

/// Every member's incarnation, as the membership records it.
fn incarnations(s: &pb::StatusResponse) -> BTreeMap<u64, u64> {
    s.members.iter().map(|m| (m.id, m.incarnation)).collect()
}

/// Sends a forged message whose envelope carries the incarnations the membership records for
/// its sender and receiver (`incs`), unless `wrong_incarnation` names one of them to get wrong.
async fn send(
    addr: &str,
    kind: &str,
    payload: Vec<u8>,
    env: Envelope<'_>,
    incs: &BTreeMap<u64, u64>,
    wrong_incarnation: Option<u64>,
) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut client = pb::raft_client::RaftClient::new(channel);
    let inc = |id: u64| incs.get(&id).copied().unwrap_or(0) ^ u64::from(wrong_incarnation == Some(id));
    let msg = pb::RaftMessage {
        payload,
        cluster_id: env.0.to_string(),
        from: env.1,
        to: env.2,
        from_incarnation: inc(env.1),
        to_incarnation: inc(env.2),
    };
    let reply = match kind {
        "append" => client.append_entries(msg).await,
        _ => client.vote(msg).await,
    };
    reply.expect_err("a forged message must be refused")
}

/// A 3-node cluster with table `t`: (cluster, leader, a follower, a client).
async fn cluster_with_a_table() -> (Cluster, u64, u64, raftsql_client::Client) {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let client = cluster.client().await;
    raftsql_tests::exec(&client, "CREATE TABLE t (id INTEGER PRIMARY KEY)").await;
    // Every node has applied the table (and the cluster id before it): the forged messages
    // below are built from a follower's status.
    cluster.assert_converged("t").await.expect("the replicas converge");
    let follower = cluster.ids().into_iter().find(|&n| n != leader).expect("three nodes");
    (cluster, leader, follower, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_peer_messages_are_refused_and_change_nothing() {
    let (cluster, leader, follower, _) = cluster_with_a_table().await;
    let before = cluster.status(follower).await.unwrap();
    let (cid, term, last) = (before.cluster_id.clone(), before.term, before.last_log_index);
    assert!(!cid.is_empty());
    let incs = incarnations(&before);
    assert_eq!(incs.len(), 3, "every member has an incarnation: {before:?}");
    assert!(incs.values().all(|&i| i != 0), "{incs:?}");
    let addr = cluster.listen(follower);
    let prev = Some(LogId::new(CommittedLeaderId::new(term, leader), last));

    let cases: Vec<(&str, &str, Vec<u8>, Envelope)> = vec![
        (
            "the brick: a heartbeat in term 2^64-1",
            "append",
            append(u64::MAX, leader, None, &[]),
            (&cid, leader, follower),
        ),
        (
            "a term 2^41 elections ahead",
            "append",
            append(term + (1 << 41), leader, None, &[]),
            (&cid, leader, follower),
        ),
        (
            "addressed to another node",
            "append",
            append(term + 1, leader, prev, &[(term + 1, last + 1)]),
            (&cid, leader, 99),
        ),
        (
            "from another cluster",
            "append",
            append(term + 1, leader, prev, &[(term + 1, last + 1)]),
            ("other", leader, follower),
        ),
        (
            "sender and vote disagree",
            "append",
            append(term + 1, leader, prev, &[(term + 1, last + 1)]),
            (&cid, 7, follower),
        ),
        (
            "entries with a gap",
            "append",
            append(term + 1, leader, prev, &[(term + 1, last + 2)]),
            (&cid, leader, follower),
        ),
        (
            "an entry newer than its leader",
            "append",
            append(term + 1, leader, prev, &[(term + 2, last + 1)]),
            (&cid, leader, follower),
        ),
        ("garbage", "append", vec![0xff; 64], (&cid, leader, follower)),
        (
            "a vote in term 2^64-1",
            "vote",
            bincode::serialize(&VoteRequest { vote: Vote::new(u64::MAX, leader), last_log_id: None })
                .unwrap(),
            (&cid, leader, follower),
        ),
    ];
    for (what, kind, payload, env) in cases {
        let status = send(addr, kind, payload, env, &incs, None).await;
        assert!(
            matches!(status.code(), tonic::Code::PermissionDenied | tonic::Code::InvalidArgument),
            "{what}: {status:?}"
        );
        assert!(!status.message().contains("incarnation"), "{what}: refused for its own reason: {status:?}");
    }
    // A well-formed message between the wrong incarnations: the receiver's data dir is not the
    // one the sender means, or the sender's is not the one the membership admitted.
    for wrong in [follower, leader] {
        let payload = append(term, leader, prev, &[]);
        let status = send(addr, "append", payload, (&cid, leader, follower), &incs, Some(wrong)).await;
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("incarnation"), "{status:?}");
    }
    let after = cluster.status(follower).await.unwrap();
    assert!(after.term < 1 << 20, "{after:?}");
    assert!(after.last_log_index >= last, "{after:?}");

    // The cluster still works, also through an election: the forged term would have panicked it.
    let mut cluster = cluster;
    cluster.kill(leader);
    let (new_leader, new_term) =
        cluster.wait_for_leader(WAIT).await.expect("a new leader after the old one died");
    assert_ne!(new_leader, leader);
    assert!(new_term > term && new_term < 1 << 20, "term {new_term}");
    let client = cluster.client().await;
    let r = client.execute("INSERT INTO t VALUES (1)", &[]).await.expect("a write after the election");
    r.results.into_iter().next().unwrap().unwrap();
    cluster.assert_converged("t").await.expect("the survivors agree");
}

/// InstallSnapshot with garbage, sent as if by the leader, made the follower's Raft core stop
/// while the node kept answering reads from its frozen state. Now the snapshot is verified as it
/// arrives and refused before openraft sees it; and whatever happens to a follower, a read there
/// must see every write that committed before it was asked, or be refused: never a stale answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_snapshot_never_leaves_a_node_serving_stale_reads() {
    use openraft::raft::InstallSnapshotRequest;
    use openraft::{SnapshotMeta, StoredMembership};
    use raftsql_client::{Consistency, QueryOptions, Value};

    let (cluster, leader, follower, client) = cluster_with_a_table().await;
    let s = cluster.status(follower).await.unwrap();
    let rpc: InstallSnapshotRequest<TypeConfig> = InstallSnapshotRequest {
        vote: Vote::new_committed(s.term, leader),
        meta: SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(s.term, leader), s.last_log_index + 5)),
            last_membership: StoredMembership::default(),
            snapshot_id: "forged".into(),
        },
        offset: 0,
        data: vec![0xab; 4096],
        done: true,
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.listen(follower)))
        .unwrap()
        .connect_lazy();
    let incs = incarnations(&s);
    let msg = pb::RaftMessage {
        payload: bincode::serialize(&rpc).unwrap(),
        cluster_id: s.cluster_id.clone(),
        from: leader,
        to: follower,
        from_incarnation: incs[&leader],
        to_incarnation: incs[&follower],
    };
    let status = pb::raft_client::RaftClient::new(channel)
        .install_snapshot(msg)
        .await
        .expect_err("a garbage snapshot is refused before openraft sees it");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("snapshot forged is refused"), "{status:?}");

    let r = client.execute("INSERT INTO t VALUES (1)", &[]).await.expect("the leader still takes writes");
    r.results.into_iter().next().unwrap().unwrap();
    let pinned = QueryOptions {
        consistency: Consistency::Any,
        node: Some(cluster.addr(follower).to_string()),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client.query("SELECT count(*) FROM t", &[], pinned.clone()).await {
            Ok(r) if r.rows == vec![vec![Value::Integer(1)]] => break, // caught up: fine
            Ok(r) => assert!(tokio::time::Instant::now() < deadline, "stale for {WAIT:?}: {:?}", r.rows),
            Err(e) => panic!("the follower's Raft core must keep running and serve: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lost write of issue 16: with follower A down, write Y is acknowledged by the leader and
/// follower B. Then the leader dies and B loses its disk and is started again under its old id.
/// Before incarnations, B's empty log voted for A, A won and Y was gone for good. Now B is a new
/// incarnation: A's vote requests are addressed to B's old one and B refuses them, so A cannot
/// win; B's join under its old id is refused; once the old leader is back, Y is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_data_never_rejoins_as_itself() {
    use raftsql_client::{QueryOptions, Value};

    let (mut cluster, leader, a, client) = cluster_with_a_table().await;
    let b = cluster.ids().into_iter().find(|&n| n != leader && n != a).expect("three nodes");
    let old_b = cluster.status(b).await.unwrap().incarnation;
    cluster.kill(a);
    raftsql_tests::exec(&client, "INSERT INTO t VALUES (42)").await; // Y: acknowledged by leader and B

    cluster.kill(leader);
    cluster.wipe(b).unwrap();
    let a_addr = cluster.addr(a).to_string();
    cluster.start_with(b, &["--join", &a_addr]).await.expect("B starts on an empty data dir");
    let new_b = cluster.status(b).await.unwrap().incarnation;
    assert!(new_b != 0 && new_b != old_b, "a new data dir is a new incarnation: {old_b:x} → {new_b:x}");
    cluster.restart(a).await.expect("A restarts");

    // A campaigns and asks B, which refuses to vote as its old self; A cannot win alone.
    let line = cluster.wait_log(b, "meant for incarnation", WAIT).await.expect("B refuses A's vote request");
    assert!(line.contains("lost its data"), "{line}");
    assert_ne!(cluster.status(a).await.unwrap().role, pb::Role::Leader as i32, "A must not win without Y");

    // The old leader comes back: it and A elect a leader, and Y is there.
    cluster.restart(leader).await.expect("the old leader restarts");
    cluster.wait_for_quorum_leader(WAIT).await.expect("a leader with the old leader back");
    let strong = QueryOptions::default();
    let rows = client.query("SELECT id FROM t", &[], strong).await.expect("a STRONG read").rows;
    assert_eq!(rows, vec![vec![Value::Integer(42)]], "the acknowledged write survived");

    // B's join under its old id is refused with the way out, and B never became a member.
    let line = cluster.wait_log(b, "cannot rejoin as itself", WAIT).await.expect("B's join is refused");
    assert!(line.contains("join under a new --id"), "{line}");
    let status = cluster.status(leader).await.unwrap();
    let recorded = status.members.iter().find(|m| m.id == b).expect("B is still in the membership");
    assert_eq!(recorded.incarnation, old_b, "the membership still names B's lost data dir");
    cluster.kill(b);
    cluster.assert_converged("t").await.expect("the old leader and A agree");
}

/// An ordinary client joined a fake member at `127.0.0.1:9` and one whose address was
/// `not an address at all`: each stayed in the membership and the leader replicated to it
/// forever. Now a join is admitted only if its address is HOST:PORT and the node answering
/// there is the one asking (id and incarnation); a node of another cluster is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_of_nodes_that_are_not_there_are_refused() {
    let (cluster, leader, follower, _client) = cluster_with_a_table().await;
    let before = cluster.status(leader).await.expect("status");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.listen(follower))).unwrap();
    let mut admin = pb::admin_client::AdminClient::new(channel.connect_lazy());
    let join = |node_id: u64, addr: &str, incarnation: u64| pb::JoinRequest {
        node_id,
        addr: addr.into(),
        as_learner: true,
        incarnation,
        peer_addr: String::new(),
    };
    // A port nothing listens on: bind one, note it, let it go.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let other = cluster.ids().into_iter().find(|&n| n != leader && n != follower).unwrap();
    let cases = [
        (join(9, "not an address at all", 1), tonic::Code::InvalidArgument, "not HOST:PORT"),
        (join(9, "bad host!:7000", 1), tonic::Code::InvalidArgument, "not a host name"),
        (join(9, "127.0.0.1:0", 1), tonic::Code::InvalidArgument, "not a port"),
        (join(9, &dead, 1), tonic::Code::Unavailable, "must be running and reachable"),
        // Another member's address, claimed by a node that is not there.
        (
            join(9, cluster.addr(other), 1),
            tonic::Code::InvalidArgument,
            &format!("node {other} (incarnation"),
        ),
    ];
    for (req, code, needle) in cases {
        let what = format!("{} at {:?}", req.node_id, req.addr);
        let s = tokio::time::timeout(WAIT, admin.join(req)).await.expect("an answer").expect_err(&what);
        assert_eq!(s.code(), code, "{what}: {s:?}");
        assert!(s.message().contains(needle), "{what}: {s:?}");
    }
    // The membership is as it was, on every node.
    let ids = |s: &pb::StatusResponse| s.members.iter().map(|m| (m.id, m.addr.clone())).collect::<Vec<_>>();
    for id in cluster.ids() {
        assert_eq!(ids(&cluster.status(id).await.expect("status")), ids(&before), "node {id}");
    }
    // A real node still joins.
    let mut cluster = cluster;
    let new = cluster.add_node().await.expect("a real node joins");
    assert!(cluster.status(leader).await.expect("status").members.iter().any(|m| m.id == new));
}
