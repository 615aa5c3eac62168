//! Issue 17, users and permissions: a cluster started with `--users-file` serves only callers
//! who authenticate, and each only the calls its permissions allow; request ids are kept per
//! user; the file is re-read while the nodes run. Hashes and tokens come from the real
//! `raftsql-server hash-password`.

use raftsql_client::{pb, Client, Credentials, Error, QueryOptions, Value};
use raftsql_tests::{bin_dir, hash_password as hash, Cluster, ClusterOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// A new bearer token and its users-file hash, from `raftsql-server hash-password --token`.
fn token() -> (String, String) {
    let out =
        Command::new(bin_dir().join("raftsql-server")).args(["hash-password", "--token"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text.lines().find_map(|l| l.strip_prefix("token: ")).unwrap().to_string();
    let line = text.lines().find_map(|l| l.strip_prefix("users file: tokens = [\"")).unwrap();
    (token, line.trim_end_matches("\"]").to_string())
}

/// The users the tests use: one per permission (named after it, password `pw-NAME`), `admin`
/// with all of them, `bot` with a bearer token and `read`, `write`.
struct Users {
    path: PathBuf,
    bot_token: String,
}

const PERMISSIONS: [&str; 6] = ["read", "write", "ddl", "admin-status", "admin-membership", "backup"];

fn user_entry(name: &str, password: &str, permissions: &[&str]) -> String {
    let perms: Vec<String> = permissions.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "[[user]]\nname = {name:?}\npassword = {:?}\npermissions = [{}]\n\n",
        hash(password),
        perms.join(", ")
    )
}

fn write_users(dir: &Path) -> Users {
    let mut text = String::new();
    for p in PERMISSIONS {
        text.push_str(&user_entry(p, &format!("pw-{p}"), &[p]));
    }
    text.push_str(&user_entry("admin", "pw-admin", &["all"]));
    // Every permission a restore's statements need, but not `backup`.
    text.push_str(&user_entry("loader", "pw-loader", &["read", "write", "ddl"]));
    let (bot_token, bot_hash) = token();
    text.push_str(&format!(
        "[[user]]\nname = \"bot\"\ntokens = [{bot_hash:?}]\npermissions = [\"read\", \"write\"]\n"
    ));
    let path = dir.join("users.toml");
    std::fs::write(&path, text).unwrap();
    Users { path, bot_token }
}

fn basic(user: &str, password: &str) -> Credentials {
    Credentials::Basic { user: user.into(), password: password.into() }
}

fn admin() -> Credentials {
    basic("admin", "pw-admin")
}

async fn start(users: &Users, extra: &[&str]) -> Cluster {
    let mut extra_args = vec!["--users-file".to_string(), users.path.display().to_string()];
    extra_args.extend(extra.iter().map(|s| s.to_string()));
    let opts = ClusterOptions { extra_args, credentials: Some(admin()), ..Default::default() };
    let cluster = Cluster::start(3, opts).await.expect("cluster starts");
    cluster.wait_for_leader(WAIT).await.expect("leader");
    cluster
}

/// A users file, a cluster started with it (and `extra` flags), admin's client, and table
/// `t (id INTEGER PRIMARY KEY, v TEXT)` created.
async fn setup(extra: &[&str]) -> (tempfile::TempDir, Users, Cluster, Client) {
    let dir = tempfile::tempdir().unwrap();
    let users = write_users(dir.path());
    let cluster = start(&users, extra).await;
    let admin_client = client_as(&cluster, Some(&admin())).await;
    admin_client.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", &[]).await.unwrap();
    (dir, users, cluster, admin_client)
}

async fn client_as(cluster: &Cluster, c: Option<&Credentials>) -> Client {
    let client = Client::connect(cluster.addrs()).await.unwrap().with_deadline(Duration::from_secs(10));
    match c {
        Some(c) => client.with_credentials(c).unwrap(),
        None => client,
    }
}

/// One call on the client port, made through the client library or, for the Admin calls the
/// library does not wrap, through the generated stubs with the same header.
#[derive(Clone, Copy, Debug)]
enum Call {
    Query,
    SelectThroughExecute,
    Insert,
    CreateTable,
    Status,
    Remove,
    Join,
    Snapshot,
    Backup,
    Restore,
}

impl Call {
    const ALL: [Call; 10] = [
        Call::Query,
        Call::SelectThroughExecute,
        Call::Insert,
        Call::CreateTable,
        Call::Status,
        Call::Remove,
        Call::Join,
        Call::Snapshot,
        Call::Backup,
        Call::Restore,
    ];

    /// The one permission that allows the call.
    fn needs(self) -> &'static str {
        match self {
            Call::Query | Call::SelectThroughExecute => "read",
            Call::Insert => "write",
            Call::CreateTable => "ddl",
            Call::Status => "admin-status",
            Call::Remove | Call::Join => "admin-membership",
            Call::Snapshot | Call::Backup => "backup",
            // And `read`, `ddl` and `write`: no single permission is enough.
            Call::Restore => "backup+read+ddl+write",
        }
    }
}

/// The outcome of `call` by `who`: Ok, or the error code. Remove names a node that is not a
/// member (allowed: NOT_FOUND) and Join a node that is not running (allowed: UNAVAILABLE), so
/// neither changes the cluster.
async fn make(cluster: &Cluster, who: &Credentials, call: Call, n: usize) -> Result<(), String> {
    let client = client_as(cluster, Some(who)).await;
    let code = |e: Error| e.code().to_string();
    match call {
        Call::Query => {
            client.query("SELECT count(*) FROM t", &[], QueryOptions::default()).await.map(drop).map_err(code)
        }
        Call::SelectThroughExecute => client.execute("SELECT * FROM t", &[]).await.map(drop).map_err(code),
        Call::Insert => client
            .execute("INSERT INTO t VALUES (?, 'x')", &[Value::Integer(n as i64)])
            .await
            .map(drop)
            .map_err(code),
        Call::CreateTable => {
            client.execute(&format!("CREATE TABLE t{n} (a INTEGER)"), &[]).await.map(drop).map_err(code)
        }
        Call::Status => client.status(cluster.addr(1)).await.map(drop).map_err(code),
        Call::Remove => client.remove_member(99).await.map(drop).map_err(code),
        Call::Backup => {
            let file = cluster.dir().join(format!("backup-{n}.rsqlbak"));
            client.backup(&file, Some(cluster.addr(1)), |_| {}).await.map(drop).map_err(code)
        }
        Call::Restore => {
            // A backup of the cluster as it is, restored over it (`--force`): the tables come back.
            let file = cluster.dir().join(format!("restore-{n}.rsqlbak"));
            let admin = client_as(cluster, Some(&admin())).await;
            admin.backup(&file, Some(cluster.addr(1)), |_| {}).await.expect("a backup to restore");
            client.restore(&file, true, |_| {}).await.map(drop).map_err(code)
        }
        Call::Join | Call::Snapshot => {
            let channel = raw_channel(cluster.addr(1)).await;
            let mut admin = pb::admin_client::AdminClient::new(channel);
            let r = match call {
                Call::Join => {
                    let msg = pb::JoinRequest {
                        node_id: 99,
                        addr: "127.0.0.1:9".into(),
                        as_learner: true,
                        incarnation: 7,
                        peer_addr: String::new(),
                    };
                    admin.join(authorized(msg, who)).await.map(drop)
                }
                _ => admin.snapshot(authorized(pb::SnapshotRequest {}, who)).await.map(drop),
            };
            r.map_err(|s| code(Error::from_status(cluster.addr(1), s)))
        }
    }
}

/// A plain gRPC connection to `addr`, for calls made with the generated stubs.
async fn raw_channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

/// `msg` with the `authorization` header `who` would send.
fn authorized<T>(msg: T, who: &Credentials) -> tonic::Request<T> {
    use base64::Engine as _;
    let mut req = tonic::Request::new(msg);
    let v = match who {
        Credentials::Basic { user, password } => {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )
        }
        Credentials::Bearer(t) => format!("Bearer {t}"),
    };
    req.metadata_mut().insert("authorization", v.parse().unwrap());
    req
}

/// Every call by every single-permission user: allowed exactly when the user holds the
/// permission the call needs, PERMISSION_DENIED otherwise; `admin` (all) may make every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_permission_allows_exactly_its_calls() {
    let (_dir, users, cluster, admin_client) = setup(&[]).await;

    let mut n = 0;
    let mut table = Vec::new();
    for call in Call::ALL {
        for p in PERMISSIONS.into_iter().chain(["admin"]) {
            n += 1;
            let who = if p == "admin" { admin() } else { basic(p, &format!("pw-{p}")) };
            let got = make(&cluster, &who, call, n).await;
            let allowed = p == "admin" || p == call.needs();
            let ok = match (&got, allowed, call) {
                (
                    Ok(()),
                    true,
                    Call::Query | Call::SelectThroughExecute | Call::Insert | Call::CreateTable,
                ) => true,
                (Ok(()), true, Call::Status | Call::Snapshot | Call::Backup | Call::Restore) => true,
                (Err(c), true, Call::Remove) => c == "NOT_FOUND",
                (Err(c), true, Call::Join) => c == "UNAVAILABLE",
                (Err(c), false, _) => c == "PERMISSION_DENIED",
                _ => false,
            };
            table.push(format!("{call:?} by {p}: {got:?} (allowed: {allowed})"));
            assert!(ok, "{call:?} by {p}: got {got:?}, allowed = {allowed}\n{}", table.join("\n"));
        }
    }
    assert_eq!(table.len(), Call::ALL.len() * 7);

    // A restore needs `backup` besides what its statements need: without it its first write
    // (the DROP of --force) is refused and nothing changes.
    let file = cluster.dir().join("loader.rsqlbak");
    admin_client.backup(&file, None, |_| {}).await.expect("a backup");
    let before =
        admin_client.query("SELECT count(*) FROM sqlite_schema", &[], QueryOptions::default()).await.unwrap();
    let loader = client_as(&cluster, Some(&basic("loader", "pw-loader"))).await;
    let e = loader.restore(&file, true, |_| {}).await.expect_err("loader lacks backup");
    assert!(matches!(e, Error::PermissionDenied { .. }) && e.to_string().contains("backup"), "{e:?}");
    let after =
        admin_client.query("SELECT count(*) FROM sqlite_schema", &[], QueryOptions::default()).await.unwrap();
    assert_eq!(before.rows, after.rows, "a refused restore changed the catalog");

    // The token user: read and write, nothing else.
    let bot = Credentials::Bearer(users.bot_token.clone());
    assert_eq!(make(&cluster, &bot, Call::Insert, 1000).await, Ok(()));
    assert_eq!(make(&cluster, &bot, Call::Query, 1001).await, Ok(()));
    assert_eq!(make(&cluster, &bot, Call::CreateTable, 1002).await, Err("PERMISSION_DENIED".into()));

    // A request that mixes statements needs every permission they need, and nothing of it
    // runs if one is missing.
    let writer = client_as(&cluster, Some(&basic("write", "pw-write"))).await;
    let e = writer
        .execute("INSERT INTO t VALUES (5000, 'mixed'); CREATE TABLE sneaky (a INTEGER)", &[])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
    assert!(e.to_string().contains("ddl"), "{e}");
    let r = admin_client
        .query("SELECT count(*) FROM t WHERE id = 5000", &[], QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(r.rows, vec![vec![Value::Integer(0)]]);

    // Statements are judged as the executor splits them: neither a bracketed identifier that
    // another tokenizer would read past the `;` (`]]`) nor a later statement that does not
    // tokenize hides a DROP.
    let reader = client_as(&cluster, Some(&basic("read", "pw-read"))).await;
    for (client, sql) in [(&reader, "SELECT [a]]; DROP TABLE t; --]"), (&writer, "DROP TABLE t; SELECT 'x")] {
        let e = client.execute(sql, &[]).await.unwrap_err();
        assert!(matches!(e, Error::PermissionDenied { .. }) && e.to_string().contains("ddl"), "{sql}: {e:?}");
    }
    let r = admin_client.query("SELECT count(*) FROM t", &[], QueryOptions::default()).await;
    assert!(r.is_ok(), "table t was dropped: {r:?}");
}

/// Missing, malformed and wrong credentials: UNAUTHENTICATED, typed in the client and plainly
/// printed by the shell, and nothing changes. With the right ones the shell works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_credentials_are_refused() {
    let (_dir, users, cluster, admin_client) = setup(&[]).await;

    let none = client_as(&cluster, None).await;
    for (name, client) in [
        ("no credentials", none),
        ("wrong password", client_as(&cluster, Some(&basic("write", "pw-read"))).await),
        ("unknown user", client_as(&cluster, Some(&basic("mallory", "pw-write"))).await),
        ("empty password", client_as(&cluster, Some(&basic("write", ""))).await),
        ("unknown token", client_as(&cluster, Some(&Credentials::Bearer("rsq_0000".into()))).await),
    ] {
        let e = client.execute("INSERT INTO t VALUES (1, 'x')", &[]).await.unwrap_err();
        assert!(matches!(e, Error::Unauthenticated { .. }), "{name}: {e:?}");
        let e = client.query("SELECT * FROM t", &[], QueryOptions::default()).await.unwrap_err();
        assert!(matches!(e, Error::Unauthenticated { .. }), "{name}: {e:?}");
        let e = client.status(cluster.addr(2)).await.unwrap_err();
        assert!(matches!(e, Error::Unauthenticated { .. }), "{name}: {e:?}");
    }
    // Headers that are not credentials at all.
    let channel = raw_channel(cluster.addr(1)).await;
    let mut sql = pb::sql_client::SqlClient::new(channel);
    for header in
        ["Basic !!!notbase64", "Basic", "Negotiate abc", "basic   ", &format!("Bearer {}", "x".repeat(5000))]
    {
        let mut req = tonic::Request::new(pb::ExecuteRequest {
            statements: vec![pb::Statement { sql: "INSERT INTO t VALUES (2, 'y')".into(), params: vec![] }],
            ..Default::default()
        });
        req.metadata_mut().insert("authorization", header.parse().unwrap());
        let s = sql.execute(req).await.unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{header:?}: {s:?}");
    }
    let r = admin_client.query("SELECT count(*) FROM t", &[], QueryOptions::default()).await.unwrap();
    assert_eq!(r.rows, vec![vec![Value::Integer(0)]], "a refused write changed the table");

    // The shell: a wrong password is one clear line and a failing exit; the right one works.
    let shell = |password: &str| {
        Command::new(bin_dir().join("raftsql"))
            .args([
                "--addr",
                &cluster.addrs().join(","),
                "--user",
                "write",
                "-e",
                "INSERT INTO t VALUES (3, 'z')",
            ])
            .env("RAFTSQL_PASSWORD", password)
            .env("RAFTSQL_HISTORY", "")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = shell("nope");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("error (UNAUTHENTICATED): unknown user or wrong password"), "{stderr}");
    assert!(!stderr.contains("nope"), "the password was printed: {stderr}");
    let out = shell("pw-write");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // --user without a password and no terminal to ask on: a clear refusal before any call.
    let out = Command::new(bin_dir().join("raftsql"))
        .args(["--addr", cluster.addr(1), "--user", "write", "-e", "SELECT 1"])
        .env_remove("RAFTSQL_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RAFTSQL_PASSWORD"));

    // No secret reaches a node's log; failures are logged with the caller's address.
    for id in cluster.ids() {
        let log = std::fs::read_to_string(cluster.log_path(id)).unwrap();
        for secret in ["pw-read", "pw-write", "pw-admin", users.bot_token.as_str(), "$argon2id$"] {
            assert!(!log.contains(secret), "node {id} logged a secret ({secret:?})");
        }
    }
    let logs: String =
        cluster.ids().iter().map(|&id| std::fs::read_to_string(cluster.log_path(id)).unwrap()).collect();
    assert!(
        logs.lines().any(|l| l.contains("client authentication failed") && l.contains("peer=127.0.0.1:")),
        "no node logged a failed authentication with the caller's address"
    );
}

/// Request ids are kept per user: the same (client id, seq) from two users are two requests,
/// and neither can replay the other's outcome; a user's own retry still returns its original
/// outcome without a second effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_scoped_to_their_user() {
    let (_dir, users, cluster, admin_client) = setup(&[]).await;
    let bot = client_as(&cluster, Some(&Credentials::Bearer(users.bot_token.clone()))).await;
    let insert = |id: i64| vec![("INSERT INTO t VALUES (?, 'v')".to_string(), vec![Value::Integer(id)])];

    let a = admin_client.execute_as("shared-id", 1, insert(1), false).await.unwrap();
    // Had the bot's request been taken for admin's, it would get admin's outcome and row 2
    // would not exist (checked at the end).
    bot.execute_as("shared-id", 1, insert(2), false).await.unwrap();
    // A user's retry is recognized as its own and answered with the original outcome (run
    // again, inserting id 1 twice would fail with a constraint error).
    let a2 = admin_client.execute_as("shared-id", 1, insert(1), false).await.unwrap();
    assert_eq!(format!("{:?}", a2.results), format!("{:?}", a.results));
    assert!(a2.results[0].is_ok(), "{:?}", a2.results);
    // The bot cannot lock admin's id out by racing ahead with a high sequence number.
    bot.execute_as("shared-id", 1_000, insert(3), false).await.unwrap();
    admin_client.execute_as("shared-id", 2, insert(4), false).await.unwrap();
    let r = admin_client.query("SELECT id FROM t ORDER BY id", &[], QueryOptions::default()).await.unwrap();
    let ids: Vec<Value> = r.rows.into_iter().map(|mut row| row.remove(0)).collect();
    assert_eq!(ids, vec![Value::Integer(1), Value::Integer(2), Value::Integer(3), Value::Integer(4)]);
}

/// The users file is re-read while the nodes run: a user added works on every node without a
/// restart, a permission taken away is refused, and a broken file keeps the last good users.
/// Writes sent to a follower with `--forward-writes` are checked for the original caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_file_is_reloaded_and_forwarded_writes_keep_their_caller() {
    let (dir, users, cluster, admin_client) = setup(&["--forward-writes"]).await;
    let (leader, _) = cluster.wait_for_leader(WAIT).await.unwrap();
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();

    // Forwarded by a follower: allowed for a writer, refused for a reader, scoped as the writer.
    let write = |c: &Credentials| {
        let c = c.clone();
        let addr = cluster.addr(follower).to_string();
        async move {
            let channel = raw_channel(&addr).await;
            let msg = pb::ExecuteRequest {
                statements: vec![pb::Statement {
                    sql: "INSERT INTO t VALUES (NULL, 'fwd')".into(),
                    params: vec![],
                }],
                request_id: Some(pb::RequestId { client_id: "fwd".into(), seq: 1 }),
                ..Default::default()
            };
            pb::sql_client::SqlClient::new(channel).execute(authorized(msg, &c)).await
        }
    };
    let ok = write(&basic("write", "pw-write")).await.expect("a writer's write forwarded by a follower");
    assert_eq!(ok.get_ref().receipt.as_ref().unwrap().node_id, leader, "it was not forwarded");
    let s = write(&basic("read", "pw-read")).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    // The same id from another user is another request (scoped on the leader, after forwarding).
    write(&admin()).await.expect("admin's own request 'fwd'/1");
    let r = admin_client
        .query("SELECT count(*) FROM t WHERE v = 'fwd'", &[], QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(r.rows, vec![vec![Value::Integer(2)]]);

    // A new user, and `read` taken from the `read` user.
    let mut text = std::fs::read_to_string(&users.path).unwrap();
    text = text.replace("permissions = [\"read\"]", "permissions = [\"write\"]");
    text.push_str(&user_entry("carol", "pw-carol", &["read"]));
    // Replaced whole, as Kubernetes swaps a Secret's files: no node reads half a file.
    let tmp = dir.path().join("users.toml.new");
    std::fs::write(&tmp, &text).unwrap();
    std::fs::rename(&tmp, &users.path).unwrap();
    let carol = basic("carol", "pw-carol");
    for id in cluster.ids() {
        let opts = QueryOptions {
            node: Some(cluster.addr(id).to_string()),
            consistency: raftsql_client::Consistency::Any,
            ..Default::default()
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let r = client_as(&cluster, Some(&carol))
                .await
                .query("SELECT count(*) FROM t", &[], opts.clone())
                .await;
            match r {
                Ok(_) => break,
                Err(Error::Unauthenticated { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("carol on node {id}: {e:?}"),
            }
        }
    }
    // Every node has re-read the file (carol works everywhere), so the change holds everywhere.
    let e = client_as(&cluster, Some(&basic("read", "pw-read")))
        .await
        .query("SELECT 1", &[], QueryOptions::default())
        .await;
    let e = match e {
        Err(e) => e,
        Ok(_) => panic!("the read user kept its read permission after the file took it away"),
    };
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");

    // A broken file: reported in the log, and the users loaded before still work.
    std::fs::write(&users.path, "[[user]\nname = ").unwrap();
    cluster.wait_log(1, "keeping the users loaded before", WAIT).await.unwrap();
    client_as(&cluster, Some(&carol)).await.query("SELECT 1", &[], QueryOptions::default()).await.unwrap();
}

/// Bootstrap, join and the replica count of `min_replicas` go through the peer service, so a
/// cluster with a users file forms, grows and counts replicas with no credentials given to the
/// nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_users_forms_and_grows() {
    let dir = tempfile::tempdir().unwrap();
    let users = write_users(dir.path());
    let mut cluster = start(&users, &[]).await;
    let admin_client = client_as(&cluster, Some(&admin())).await;
    admin_client.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)", &[]).await.unwrap();
    admin_client.execute("INSERT INTO t VALUES (1), (2)", &[]).await.unwrap();
    let id = cluster.add_node().await.expect("a node joins a cluster with users");
    let (rows, _) = cluster.table_checksum(id, "t").await.unwrap();
    assert_eq!(rows, 2);
    // min_replicas: the leader asks the others how far they applied (it used Admin.Status,
    // which a users file closes to nodes; it timed out).
    let all = client_as(&cluster, Some(&admin())).await.with_min_replicas(4);
    all.execute("INSERT INTO t VALUES (3)", &[]).await.expect("applied by all four nodes");
}
