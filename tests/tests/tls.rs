//! Issue 17, TLS: mutual TLS between peers with node identities, TLS and client certificates on
//! the client port, and certificates rotated under load. Certificates are made at test time
//! (`raftsql_tests::pki`, rcgen).

use raftsql_client::{pb, Client, Credentials, Error, QueryOptions, Tls};
use raftsql_tests::nemesis::byzantine::append;
use raftsql_tests::pki::{self, Ca, Pair};
use raftsql_tests::{exec, pinned, Cluster, ClusterOptions};
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// A peer-service client of `addr` through TLS that trusts `ca` and presents `identity`
/// (verifying the server as `node-<expect>.raftsql`); `None` for `ca`: plain text.
fn peer_client(
    addr: &str,
    ca: Option<&Path>,
    identity: Option<&Pair>,
    expect: u64,
) -> pb::raft_client::RaftClient<tonic::transport::Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let channel = match ca {
        None => Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy(),
        Some(ca) => {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
                .domain_name(format!("node-{expect}.{}", pki::DOMAIN));
            if let Some(p) = identity {
                tls = tls.identity(Identity::from_pem(
                    std::fs::read(&p.cert).unwrap(),
                    std::fs::read(&p.key).unwrap(),
                ));
            }
            Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap().connect_lazy()
        }
    };
    pb::raft_client::RaftClient::new(channel)
}

/// A call that failed in the transport (TLS refused it), never reaching the peer service.
fn transport_failure(e: tonic::Status) {
    assert!(
        matches!(
            e.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled
        ),
        "{e:?}"
    );
    assert!(e.details().is_empty(), "{e:?}");
}

/// A forged heartbeat in term 2^64−1 (issue 16's brick) claiming to come from `from`.
fn heartbeat(cluster_id: &str, from: u64, to: u64) -> pb::RaftMessage {
    pb::RaftMessage {
        payload: append(u64::MAX, from, None, &[]),
        cluster_id: cluster_id.to_string(),
        from,
        to,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_peers_refuse_every_other_certificate() {
    let opts =
        ClusterOptions { tls: true, extra_args: vec!["--forward-writes".into()], ..Default::default() };
    let mut cluster = Cluster::start(3, opts).await.expect("a cluster with TLS on both ports starts");
    let (leader, term) = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let client = cluster.client().await;
    exec(&client, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").await;
    exec(&client, "INSERT INTO t VALUES (1, 'one'), (2, 'two')").await;
    cluster.assert_converged("t").await.expect("replicated over mutual TLS");

    let mut ids = cluster.ids().into_iter().filter(|&n| n != leader);
    let (victim, other) = (ids.next().unwrap(), ids.next().unwrap());
    let cluster_id = cluster.status(leader).await.unwrap().cluster_id;
    let pki = cluster.pki().unwrap();
    let vaddr = cluster.peer_addr(victim).to_string();
    let stranger = Ca::new(&pki.dir, "stranger-ca");
    let stranger_cert =
        stranger.issue(&pki.dir, "stranger-node", &[&format!("node-{leader}.raftsql"), "127.0.0.1"], false);
    let other_cert = pki.peer(other);
    let peer_ca = pki.peer_ca.cert.clone();

    // Plain text to the TLS peer port: no gRPC at all.
    let plain =
        peer_client(&vaddr, None, None, victim).append_entries(heartbeat(&cluster_id, leader, victim)).await;
    transport_failure(plain.expect_err("plain text to a TLS port"));
    // TLS without a certificate: the handshake is refused.
    let e = peer_client(&vaddr, Some(&peer_ca), None, victim)
        .append_entries(heartbeat(&cluster_id, leader, victim))
        .await
        .expect_err("no client certificate");
    transport_failure(e);
    // A certificate naming the leader, from another CA: refused in the handshake.
    let e = peer_client(&vaddr, Some(&peer_ca), Some(&stranger_cert), victim)
        .append_entries(heartbeat(&cluster_id, leader, victim))
        .await
        .expect_err("a certificate of another CA");
    transport_failure(e);
    // Node `other`'s real certificate, claiming to be the leader: the handshake passes, the
    // message does not.
    let mut as_other = peer_client(&vaddr, Some(&peer_ca), Some(&other_cert), victim);
    let e = as_other
        .append_entries(heartbeat(&cluster_id, leader, victim))
        .await
        .expect_err("a node speaking for another");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains(&format!("node {other}"))
            && e.message().contains(&format!("speak for node {leader}")),
        "{e:?}"
    );
    let e = as_other.vote(heartbeat(&cluster_id, leader, victim)).await.expect_err("a vote for another");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // ... nor join as a new node under another id.
    let join =
        pb::JoinRequest { node_id: 9, addr: "127.0.0.1:9".into(), incarnation: 7, ..Default::default() };
    let e = as_other.join(join).await.expect_err("a join under another id");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // Nor can an admin (Admin.Join on the client port) add node 9 at an address where node
    // `other` answers: the leader's check of the joiner requires a certificate naming node 9.
    let admin_tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&pki.client_ca.cert).unwrap()));
    let admin_channel = tonic::transport::Endpoint::from_shared(format!("https://{}", cluster.addr(leader)))
        .unwrap()
        .tls_config(admin_tls)
        .unwrap()
        .connect_lazy();
    let join = pb::JoinRequest {
        node_id: 9,
        addr: cluster.addr(other).to_string(),
        peer_addr: cluster.peer_addr(other).to_string(),
        incarnation: 7,
        ..Default::default()
    };
    let e = pb::admin_client::AdminClient::new(admin_channel)
        .join(join)
        .await
        .expect_err("node 9 holds no certificate");
    assert!(e.message().contains("certificate"), "{e:?}");
    // Its own identity is fine: a status call answers.
    assert_eq!(
        as_other.status(pb::StatusRequest {}).await.expect("a node's status call").into_inner().node_id,
        victim
    );

    // The refused handshakes are counted where operators look.
    let fails = cluster.status(victim).await.unwrap().tls_handshake_failures;
    assert!(fails >= 2, "the victim counted {fails} failed handshakes");
    // None of it changed anything: same leader, same term, the data unchanged.
    let (leader_after, term_after) = cluster.wait_for_leader(WAIT).await.unwrap();
    assert_eq!(
        (leader_after, term_after),
        (leader, term),
        "forged peer messages moved the term or the leader"
    );
    cluster.assert_converged("t").await.unwrap();
    let members = cluster.status(leader).await.unwrap().members;
    assert_eq!(members.len(), 3, "{members:?}");

    // A node joins over mutual TLS (its own certificate names its id), and a write forwarded
    // by a follower reaches the leader over the peer port.
    let new = cluster.add_node().await.expect("a TLS node joins");
    let via_follower = cluster.client_for([cluster.addr(victim).to_string()]).await.unwrap();
    exec(&via_follower, "INSERT INTO t VALUES (3, 'three')").await;
    cluster.assert_converged("t").await.unwrap();
    let r = client.query("SELECT COUNT(*) FROM t", &[], pinned(&cluster, new)).await.unwrap();
    assert_eq!(r.rows[0][0], raftsql_client::Value::Integer(3));

    // A node whose certificate names another node does not start.
    let pki = cluster.pki().unwrap();
    let wrong = pki.peer(2);
    let out = std::process::Command::new(raftsql_tests::bin_dir().join("raftsql-server"))
        .args([
            "--id",
            "5",
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:1",
            "--join",
            "127.0.0.1:2",
        ])
        .arg("--data-dir")
        .arg(pki.dir.join("node-5-data"))
        .arg("--peer-tls-cert")
        .arg(&wrong.cert)
        .arg("--peer-tls-key")
        .arg(&wrong.key)
        .arg("--peer-tls-ca")
        .arg(&pki.peer_ca.cert)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("does not name this node") && err.contains("node-5.raftsql"), "{err}");
}

/// A users file: alice may read and write, bob may only read.
fn users_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("users.toml");
    let text = "[[user]]\nname = \"alice\"\npermissions = [\"read\", \"write\", \"ddl\", \"admin-status\"]\n\n\
                [[user]]\nname = \"bob\"\npermissions = [\"read\"]\n\n\
                [[user]]\nname = \"admin\"\ntokens = [\"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"]\npermissions = [\"all\"]\n";
    std::fs::write(&path, text).unwrap();
    path
}

fn with_cert(base: &Tls, pair: &Pair) -> Tls {
    Tls {
        identity: Some((std::fs::read(&pair.cert).unwrap(), std::fs::read(&pair.key).unwrap())),
        ..base.clone()
    }
}

async fn try_exec(client: &Client, sql: &str) -> Result<(), Error> {
    client.with_deadline(Duration::from_secs(3)).execute(sql, &[]).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_use_tls_and_certificates_name_users() {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let opts = ClusterOptions {
        tls: true,
        // Token "test" (sha256 above): the harness's own calls.
        credentials: Some(Credentials::Bearer("test".into())),
        extra_args: vec!["--users-file".into(), users.display().to_string(), "--forward-writes".into()],
        ..Default::default()
    };
    let cluster = Cluster::start(3, opts).await.expect("a TLS cluster with users starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.unwrap();
    let follower = cluster.ids().into_iter().find(|&n| n != leader).unwrap();
    let pki = cluster.pki().unwrap();
    let good = pki.client_tls();
    let addrs = cluster.addrs();

    // alice's certificate: she writes without a password, also through a follower that
    // forwards her write to the leader.
    let alice = Client::connect(&addrs).await.unwrap().with_tls(&with_cert(&good, &pki.user("alice")));
    alice
        .execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", &[])
        .await
        .expect("alice creates a table");
    alice.execute("INSERT INTO t VALUES (1, 'a')", &[]).await.expect("alice writes");
    let alice_via_follower = Client::connect([cluster.addr(follower)])
        .await
        .unwrap()
        .with_tls(&with_cert(&good, &pki.user("alice")));
    try_exec(&alice_via_follower, "INSERT INTO t VALUES (2, 'b')").await.expect("alice's write forwarded");
    // bob may read, not write.
    let bob = Client::connect(&addrs).await.unwrap().with_tls(&with_cert(&good, &pki.user("bob")));
    let r = bob.query("SELECT COUNT(*) FROM t", &[], QueryOptions::default()).await.expect("bob reads");
    assert_eq!(r.rows[0][0], raftsql_client::Value::Integer(2));
    let e = try_exec(&bob, "INSERT INTO t VALUES (3, 'c')").await.expect_err("bob may not write");
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
    // A valid certificate for a user the file does not list.
    let mallory = Client::connect(&addrs).await.unwrap().with_tls(&with_cert(&good, &pki.user("mallory")));
    let e = try_exec(&mallory, "INSERT INTO t VALUES (3, 'c')").await.expect_err("an unknown user");
    assert!(matches!(e, Error::Unauthenticated { .. }), "{e:?}");
    assert!(e.to_string().contains("users file"), "{e}");
    // No certificate and no credentials: TLS alone does not authenticate.
    let anonymous = Client::connect(&addrs).await.unwrap().with_tls(&good);
    let e = try_exec(&anonymous, "INSERT INTO t VALUES (3, 'c')").await.expect_err("no credentials");
    assert!(matches!(e, Error::Unauthenticated { .. }), "{e:?}");

    let failures: u64 = {
        let mut n = 0;
        for id in cluster.ids() {
            n += cluster.status(id).await.unwrap().auth_failures;
        }
        n
    };
    assert!(failures >= 2, "mallory's and the anonymous refusals are counted: {failures}");
    // Certificates the server must refuse: expired, or from another CA.
    let expired = pki.client_ca.issue(&pki.dir, "alice-expired", &["alice"], true);
    let stranger = Ca::new(&pki.dir, "stranger-client-ca");
    let foreign = stranger.issue(&pki.dir, "alice-foreign", &["alice"], false);
    for (what, pair) in [("expired", &expired), ("foreign", &foreign)] {
        let c = Client::connect(&addrs).await.unwrap().with_tls(&with_cert(&good, pair));
        let e = try_exec(&c, "INSERT INTO t VALUES (3, 'c')").await.expect_err(what);
        assert!(matches!(e, Error::Transport { .. } | Error::Timeout { .. }), "{what}: {e:?}");
        eprintln!("{what}: {e}");
    }

    // Clients that must not get through: the wrong CA, and plain text to the TLS port.
    let wrong_ca = Tls { ca: Some(std::fs::read(&stranger.cert).unwrap()), ..Default::default() };
    let c = Client::connect(&addrs)
        .await
        .unwrap()
        .with_tls(&wrong_ca)
        .with_credentials(&Credentials::Bearer("test".into()))
        .unwrap();
    let e = c
        .with_deadline(Duration::from_secs(3))
        .query("SELECT 1", &[], QueryOptions::default())
        .await
        .expect_err("wrong CA");
    assert!(e.to_string().to_lowercase().contains("certificate"), "the error names the certificate: {e}");
    let plain =
        Client::connect(&addrs).await.unwrap().with_credentials(&Credentials::Bearer("test".into())).unwrap();
    let e = plain
        .with_deadline(Duration::from_secs(3))
        .query("SELECT 1", &[], QueryOptions::default())
        .await
        .expect_err("plain text");
    assert!(matches!(e, Error::Transport { .. } | Error::Timeout { .. }), "{e:?}");

    // The shell: --ca and --cert/--key, and a clear error with the wrong CA.
    let alice_pair = pki.user("alice");
    let shell = |ca: &Path| {
        std::process::Command::new(raftsql_tests::bin_dir().join("raftsql"))
            .args(["--addr", cluster.addr(leader), "-e", "SELECT v FROM t WHERE id = 1"])
            .arg("--ca")
            .arg(ca)
            .arg("--cert")
            .arg(&alice_pair.cert)
            .arg("--key")
            .arg(&alice_pair.key)
            .env("RAFTSQL_HISTORY", "")
            .output()
            .unwrap()
    };
    let out = shell(&pki.client_ca.cert);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains('a'), "{text} {}", String::from_utf8_lossy(&out.stderr));
    let out = shell(&stranger.cert);
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!out.status.success() && err.contains("certificate"), "{err}");
    cluster.assert_converged("t").await.unwrap();
}

/// Rotation as a Kubernetes operator does it, while clients write: a new CA is added to the
/// trusted bundles, every node certificate is re-issued by it, then the old CA is dropped. A
/// node restarted at the end trusts only the new CA, so the other nodes reach it only if they
/// picked up their new certificates without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_while_clients_write() {
    let mut cluster =
        Cluster::start(3, ClusterOptions { tls: true, ..Default::default() }).await.expect("starts");
    cluster.wait_for_leader(WAIT).await.unwrap();
    let setup = cluster.client().await;
    exec(&setup, "CREATE TABLE t (id INTEGER PRIMARY KEY, w INTEGER)").await;
    let (dir, old_peer_ca, old_client_ca) = {
        let pki = cluster.pki().unwrap();
        (
            pki.dir.clone(),
            std::fs::read_to_string(&pki.peer_ca.cert).unwrap(),
            std::fs::read_to_string(&pki.client_ca.cert).unwrap(),
        )
    };
    let new_peer = Ca::new(&dir, "peer-ca-2");
    let new_client = Ca::new(&dir, "client-ca-2");
    let new_peer_pem = std::fs::read_to_string(&new_peer.cert).unwrap();
    let new_client_pem = std::fs::read_to_string(&new_client.cert).unwrap();
    // The writers trust both client CAs throughout, as clients would during a rotation.
    let both =
        Tls { ca: Some(format!("{old_client_ca}{new_client_pem}").into_bytes()), ..Default::default() };
    let writers_client = Client::connect(cluster.addrs()).await.unwrap().with_tls(&both);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3i64 {
        let (c, stop) = (writers_client.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            // Bounded in count and time (the rotation takes a few seconds).
            for i in 0..5_000i64 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let id = w * 1_000_000 + i;
                c.execute("INSERT INTO t VALUES ($1, $2)", &[id.into(), w.into()])
                    .await
                    .map_err(|e| format!("writer {w}, row {id}: {e}"))?;
                acked.push(id);
            }
            Ok::<_, String>(acked)
        }));
    }
    let replace = |path: &Path, text: &str| {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    };
    let ids = cluster.ids();
    let reloads = |cluster: &Cluster| -> usize {
        ids.iter()
            .map(|&id| {
                std::fs::read_to_string(cluster.log_path(id))
                    .unwrap_or_default()
                    .matches("TLS files changed")
                    .count()
            })
            .min()
            .unwrap_or(0)
    };
    let wait_reloads = |cluster: &Cluster, n: usize| {
        let deadline = Instant::now() + WAIT;
        while reloads(cluster) < n {
            assert!(
                Instant::now() < deadline,
                "the nodes did not reload their TLS files ({} of {n})",
                reloads(cluster)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (peer_ca_path, client_ca_path) = (dir.join("peer-ca.pem"), dir.join("client-ca.pem"));
    // 1. Trust both CAs (both ports of every node reload: 2 per node).
    replace(&peer_ca_path, &format!("{old_peer_ca}{new_peer_pem}"));
    replace(&client_ca_path, &format!("{old_client_ca}{new_client_pem}"));
    wait_reloads(&cluster, 2);
    // 2. New node certificates from the new CAs.
    for &id in &ids {
        new_peer.issue(
            &dir,
            &format!("node-{id}-peer"),
            &[&format!("node-{id}.raftsql"), "localhost", "127.0.0.1"],
            false,
        );
        new_client.issue(&dir, &format!("node-{id}-client"), &["localhost", "127.0.0.1"], false);
    }
    wait_reloads(&cluster, 4);
    // 3. Drop the old CAs.
    replace(&peer_ca_path, &new_peer_pem);
    replace(&client_ca_path, &new_client_pem);
    wait_reloads(&cluster, 6);
    // A fresh client that trusts only the new CA reaches every node.
    let only_new = Tls { ca: Some(new_client_pem.clone().into_bytes()), ..Default::default() };
    let fresh = Client::connect(cluster.addrs()).await.unwrap().with_tls(&only_new);
    for &id in &ids {
        fresh
            .query("SELECT COUNT(*) FROM t", &[], pinned(&cluster, id))
            .await
            .expect("the new certificate is served");
    }
    // Restart a follower: it trusts only the new peer CA now.
    let (leader, _) = cluster.wait_for_leader(WAIT).await.unwrap();
    let follower = *ids.iter().find(|&&n| n != leader).unwrap();
    cluster.set_client_tls(only_new.clone()).await;
    cluster.kill(follower);
    cluster.start_stopped().await.expect("the follower restarts with the new certificates");
    // Let the writers go on a little past the restart, then stop them.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap().expect("no write failed during the rotation"));
    }
    assert!(acked.len() > 10, "the writers wrote during the rotation ({} rows)", acked.len());
    cluster
        .assert_converged("t")
        .await
        .expect("the restarted follower caught up over the rotated peer certificates");
    let r = fresh.query("SELECT COUNT(*) FROM t", &[], pinned(&cluster, follower)).await.unwrap();
    assert_eq!(
        r.rows[0][0],
        raftsql_client::Value::Integer(acked.len() as i64),
        "every acknowledged write is there"
    );
}

/// `raftsql-server make-certs` makes what a deployment needs, and a cluster runs on it: nodes
/// configured through the `RAFTSQL_*` variables, the admin token, a user's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_certs_output_runs_a_cluster() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("deploy");
    let make = |extra: &[&str]| {
        std::process::Command::new(raftsql_tests::bin_dir().join("raftsql-server"))
            .args(["make-certs", "--replicas", "3", "--host", "127.0.0.1", "--user", "alice", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    // The documented script, then the subcommand it runs.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/make-secrets.sh");
    let o = std::process::Command::new("bash")
        .arg(&script)
        .arg(&out)
        .args(["--replicas", "3", "--host", "127.0.0.1", "--user", "alice"])
        .env("RAFTSQL_SERVER", raftsql_tests::bin_dir().join("raftsql-server"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("kubectl apply -f"),
        "the script says what to do next"
    );
    // A CA is never overwritten; --renew re-issues from it.
    let o = make(&[]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("never overwritten"));
    let ca_before = std::fs::read(out.join("ca/peer-ca.pem")).unwrap();
    let cert_before = std::fs::read(out.join("tls/node-1-peer.pem")).unwrap();
    let o = make(&["--renew"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(out.join("ca/peer-ca.pem")).unwrap(), ca_before);
    assert_ne!(std::fs::read(out.join("tls/node-1-peer.pem")).unwrap(), cert_before);
    use std::os::unix::fs::PermissionsExt;
    for secret in [
        "ca/peer-ca.key",
        "tls/node-1-peer.key",
        "users.toml",
        "admin.token",
        "admin.password",
        "users/alice.key",
    ] {
        let mode = std::fs::metadata(out.join(secret)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{secret} is readable by others");
    }
    // The Secrets carry every tls/ file and never a CA key.
    let yaml = std::fs::read_to_string(out.join("secrets.yaml")).unwrap();
    assert!(yaml.contains("name: raftsql-tls") && yaml.contains("name: raftsql-users"), "{yaml}");
    assert!(!yaml.contains("ca.key"), "a CA key is in the Secrets");
    for entry in std::fs::read_dir(out.join("tls")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let line = yaml.lines().find(|l| l.trim_start().starts_with(&format!("{name}:"))).expect(&name);
        let b64 = line.split_once(": ").unwrap().1;
        let decoded = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(decoded, std::fs::read(&path).unwrap(), "{name} in secrets.yaml");
    }

    let tls = out.join("tls");
    let f = |name: String| tls.join(name).display().to_string();
    let mut node_env = Vec::new();
    for id in 1..=3u64 {
        for (var, file) in [
            ("RAFTSQL_TLS_CERT", format!("node-{id}-client.pem")),
            ("RAFTSQL_TLS_KEY", format!("node-{id}-client.key")),
            ("RAFTSQL_TLS_CA", "client-ca.pem".to_string()),
            ("RAFTSQL_PEER_TLS_CERT", format!("node-{id}-peer.pem")),
            ("RAFTSQL_PEER_TLS_KEY", format!("node-{id}-peer.key")),
            ("RAFTSQL_PEER_TLS_CA", "peer-ca.pem".to_string()),
        ] {
            node_env.push((id, var.to_string(), f(file)));
        }
    }
    let token = std::fs::read_to_string(out.join("admin.token")).unwrap().trim().to_string();
    let ca = std::fs::read(tls.join("client-ca.pem")).unwrap();
    let opts = ClusterOptions {
        peer_ports: true,
        node_env,
        env: vec![("RAFTSQL_USERS_FILE".into(), out.join("users.toml").display().to_string())],
        credentials: Some(Credentials::Bearer(token)),
        client_tls: Some(Tls { ca: Some(ca.clone()), ..Default::default() }),
        ..Default::default()
    };
    let cluster = Cluster::start(3, opts).await.expect("a cluster on make-certs' output starts");
    cluster.wait_for_leader(WAIT).await.unwrap();
    let admin = cluster.client().await;
    exec(&admin, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").await;
    let alice_pair = Pair { cert: out.join("users/alice.pem"), key: out.join("users/alice.key") };
    let alice = Client::connect(cluster.addrs())
        .await
        .unwrap()
        .with_tls(&with_cert(&Tls { ca: Some(ca), ..Default::default() }, &alice_pair));
    alice.execute("INSERT INTO t VALUES (1, 'alice')", &[]).await.expect("alice writes with her certificate");
    let e = try_exec(&alice, "DROP TABLE t").await.expect_err("alice has read and write, not ddl");
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
    // admin logs in with its password too (a shell inside a pod, where no token can reach).
    let password = std::fs::read_to_string(out.join("admin.password")).unwrap().trim().to_string();
    let by_password = Client::connect(cluster.addrs())
        .await
        .unwrap()
        .with_tls(&Tls { ca: Some(std::fs::read(tls.join("client-ca.pem")).unwrap()), ..Default::default() })
        .with_credentials(&Credentials::Basic { user: "admin".into(), password })
        .unwrap();
    exec(&by_password, "CREATE TABLE by_password (id INTEGER PRIMARY KEY)").await;
    cluster.assert_converged("t").await.unwrap();
    for id in cluster.ids() {
        cluster.wait_log(id, "peer port: mutual TLS", WAIT).await.unwrap();
    }
}

/// A server that accepts connections and never answers (a black hole, or a network that
/// swallows the replies) cannot hold a client past its deadline, with TLS (the handshake never
/// completes) or without. tonic applies a call's timeout only once its connection is ready, so
/// the client library bounds each attempt itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_cannot_hold_a_client() {
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hole.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        // Bounded: the two clients below open a handful of connections.
        while kept.len() < 64 {
            match hole.accept().await {
                Ok((s, _)) => kept.push(s),
                Err(_) => break,
            }
        }
        kept
    });
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let tls = Tls { ca: Some(std::fs::read(&ca.cert).unwrap()), ..Default::default() };
    for (what, client) in [
        ("tls", Client::connect([addr.as_str()]).await.unwrap().with_tls(&tls)),
        ("plain", Client::connect([addr.as_str()]).await.unwrap()),
    ] {
        let client = client.with_deadline(Duration::from_secs(1));
        let started = Instant::now();
        let call = client.execute("INSERT INTO t VALUES (1)", &[]);
        let e = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .unwrap_or_else(|_| panic!("{what}: the call was still waiting after 30 s"))
            .expect_err("nothing answers");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "{what}: the call took {took:?}: {e}");
        assert!(matches!(e, Error::Timeout { .. } | Error::Transport { .. }), "{what}: {e:?}");
    }
    held.abort();
}
