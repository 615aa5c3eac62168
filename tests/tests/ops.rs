//! Issue 19, operations: the HTTP side port (`/healthz`, `/readyz`, `/metrics`), the gRPC health
//! service (`liveness`, `readiness`) and server reflection on the client port, through real
//! server processes. Metrics are parsed with a Prometheus text parser, readiness follows a real
//! network cut (the harness's fault proxies), and health needs no credentials.

use prometheus_parse::{Scrape, Value as Metric};
use raftsql_client::{Consistency, QueryOptions, Value};
use raftsql_tests::{
    exec, hash_password, http_get, metric as must, metric_value as value, scrape, Cluster, ClusterOptions,
};
use std::time::Duration;
use tokio::time::Instant;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const WAIT: Duration = Duration::from_secs(30);

/// The sum of `metric` over every node with these labels.
async fn total(cluster: &Cluster, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for id in cluster.running() {
        sum += value(&scrape(cluster, id).await, metric, labels).unwrap_or(0.0);
    }
    sum
}

/// A histogram's observation count, if present.
fn histogram_count(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .and_then(|x| match &x.value {
            Metric::Histogram(buckets) => buckets.iter().map(|b| b.count).reduce(f64::max),
            _ => None,
        })
}

/// Node `id`'s gRPC health status of `service`, asked on its real client port without
/// credentials.
async fn grpc_health(cluster: &Cluster, id: u64, service: &str) -> Result<ServingStatus, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.listen(id)))
        .map_err(|e| e.to_string())?
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2));
    let channel = endpoint.connect().await.map_err(|e| format!("node {id}: {e}"))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.into() })
        .await
        .map_err(|s| format!("node {id} health check of {service:?}: {s}"))?;
    Ok(reply.into_inner().status())
}

/// `/readyz` status code, `/readyz` body, and gRPC readiness of node `id`.
async fn readiness(cluster: &Cluster, id: u64) -> (u16, String, Result<ServingStatus, String>) {
    let (code, body) = http_get(cluster.http_addr(id).expect("http"), "/readyz").await.expect("GET /readyz");
    (code, body, grpc_health(cluster, id, "readiness").await)
}

/// Waits until node `id` is ready (`want`) or not, by both `/readyz` and gRPC readiness; checks
/// on every poll that liveness stays up meanwhile.
async fn wait_ready(cluster: &Cluster, id: u64, want: bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (http, body, grpc) = readiness(cluster, id).await;
        let grpc_ready = grpc.as_ref().is_ok_and(|s| *s == ServingStatus::Serving);
        if (http == 200) == want && grpc_ready == want {
            if !want {
                assert_eq!(http, 503, "{body}");
                assert!(body.starts_with("not ready: "), "{body}");
                assert_eq!(grpc, Ok(ServingStatus::NotServing));
            }
            return;
        }
        let (alive, text) =
            http_get(cluster.http_addr(id).expect("http"), "/healthz").await.expect("/healthz");
        assert_eq!((alive, text.as_str()), (200, "ok\n"), "node {id} liveness over HTTP");
        for service in ["", "liveness"] {
            assert_eq!(grpc_health(cluster, id, service).await, Ok(ServingStatus::Serving), "{service:?}");
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not become {} within {WAIT:?}: /readyz {http} {body:?}, gRPC {grpc:?}",
            if want { "ready" } else { "not ready" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/metrics` parses as Prometheus text, names the node's Raft state as the status call does,
/// and its counters move with the work done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_work_done() {
    let cluster =
        Cluster::start(3, ClusterOptions { http: true, ..Default::default() }).await.expect("starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("leader");
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("3 nodes");
    let writes_before = total(&cluster, "raftsql_writes_total", &[("code", "OK")]).await;
    let any_before =
        must(&scrape(&cluster, follower).await, "raftsql_reads_total", &[("code", "OK"), ("level", "ANY")]);
    let strong_before = total(&cluster, "raftsql_reads_total", &[("code", "OK"), ("level", "STRONG")]).await;

    let client = cluster.client().await;
    exec(&client, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)").await;
    for i in 0..20 {
        exec(&client, &format!("INSERT INTO kv VALUES ({i}, 'v{i}')")).await;
    }
    let strong =
        client.query("SELECT COUNT(*) FROM kv", &[], QueryOptions::default()).await.expect("STRONG read");
    assert_eq!(strong.rows.len(), 1);
    // The same text three times: parsed once, then found in the leader's parse cache.
    for k in 0..3 {
        let r = client
            .query("SELECT v FROM kv WHERE k = ?", &[Value::Integer(k)], QueryOptions::default())
            .await
            .expect("STRONG read");
        assert_eq!(r.rows, vec![vec![Value::Text(format!("v{k}"))]]);
    }
    let (rows, _) = cluster.assert_converged("kv").await.expect("replicas converge");
    assert_eq!(rows, 20);
    let pinned = raftsql_tests::pinned(&cluster, follower);
    assert_eq!(pinned.consistency, Consistency::Any);
    client.query("SELECT * FROM kv", &[], pinned).await.expect("ANY read on a follower");

    // Every acknowledged write was counted OK where it was answered (a retry may add more).
    let writes_after = total(&cluster, "raftsql_writes_total", &[("code", "OK")]).await;
    assert!(writes_after >= writes_before + 21.0, "{writes_before} -> {writes_after}");
    let strong_after = total(&cluster, "raftsql_reads_total", &[("code", "OK"), ("level", "STRONG")]).await;
    assert!(strong_after > strong_before, "{strong_before} -> {strong_after}");
    let f = scrape(&cluster, follower).await;
    let any_after = must(&f, "raftsql_reads_total", &[("code", "OK"), ("level", "ANY")]);
    assert!(any_after >= any_before + 1.0, "{any_before} -> {any_after}");
    let any_reads =
        histogram_count(&f, "raftsql_read_duration_seconds", &[("level", "ANY")]).expect("histogram");
    assert!(any_reads >= 1.0, "{any_reads}");

    // The Raft gauges say what the status call says; nothing is being written now, so the
    // applied index read between two status calls must equal theirs.
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("leader");
    let l = scrape(&cluster, leader).await;
    assert_eq!(must(&l, "raftsql_role", &[("role", "leader")]), 1.0);
    assert_eq!(must(&l, "raftsql_role", &[("role", "follower")]), 0.0);
    assert!(histogram_count(&l, "raftsql_write_duration_seconds", &[]).expect("histogram") >= 1.0);
    // The STRONG read's confirmation, by the lease or a heartbeat round; no reads run now.
    let st = cluster.status(leader).await.expect("status");
    let rounds = must(&l, "raftsql_read_index_rounds_total", &[]);
    assert!(rounds >= 1.0 && rounds == st.read_index_rounds as f64, "{rounds} rounds, status: {st:?}");
    let leased = must(&l, "raftsql_read_lease_rounds_total", &[]);
    assert!(
        leased <= rounds && leased == st.read_lease_rounds as f64,
        "{leased} by the lease, status: {st:?}"
    );
    // The CREATE, the 20 INSERTs (literals inline) and the SELECTs were each parsed once; the
    // repeated SELECT was then found parsed.
    let hits = total(&cluster, "raftsql_parse_cache_hits_total", &[]).await;
    let misses = total(&cluster, "raftsql_parse_cache_misses_total", &[]).await;
    assert!(hits >= 2.0 && misses >= 22.0, "parse cache: {hits} hits, {misses} misses");
    assert!(must(&l, "raftsql_parse_cache_bytes", &[]) > 0.0);
    // The sequencer took the 21 writes in batches: at least one, at most one per write.
    let batches = histogram_count(&l, "raftsql_sequencer_batch_requests", &[]).expect("batch histogram");
    assert!((1.0..=writes_after).contains(&batches), "{batches} batches for {writes_after} writes");
    for id in cluster.ids() {
        let before = cluster.status(id).await.expect("status");
        let s = scrape(&cluster, id).await;
        let after = cluster.status(id).await.expect("status");
        assert_eq!(before.applied_index, after.applied_index, "node {id} is quiet");
        assert_eq!(must(&s, "raftsql_applied_index", &[]), after.applied_index as f64, "node {id}");
        assert_eq!(must(&s, "raftsql_committed_index", &[]), after.committed_index as f64, "node {id}");
        assert_eq!(must(&s, "raftsql_last_log_index", &[]), after.last_log_index as f64, "node {id}");
        assert_eq!(must(&s, "raftsql_current_term", &[]), after.term as f64, "node {id}");
        assert_eq!(must(&s, "raftsql_leader_id", &[]), after.leader_id as f64, "node {id}");
        assert_eq!(must(&s, "raftsql_node_id", &[]), id as f64);
        assert!(must(&s, "raftsql_data_dir_bytes", &[]) > 0.0, "node {id}");
        // Every node fsynced and applied the entries it was sent; none built or installed a
        // snapshot (the threshold is far off), and the histograms say so rather than vanish.
        for h in ["raftsql_fsync_duration_seconds", "raftsql_apply_duration_seconds"] {
            assert!(histogram_count(&s, h, &[]).expect(h) >= 1.0, "node {id}: {h}");
        }
        for h in ["raftsql_snapshot_build_duration_seconds", "raftsql_snapshot_install_duration_seconds"] {
            assert_eq!(histogram_count(&s, h, &[]), Some(0.0), "node {id}: {h}");
        }
        assert_eq!(must(&s, "raftsql_inflight_requests", &[]), 0.0, "node {id}");
        assert!(must(&s, "raftsql_term_changes_total", &[]) >= 1.0, "node {id} saw the first election");
        assert!(must(&s, "raftsql_leader_changes_total", &[]) >= 1.0, "node {id} learned of a leader");
        assert_eq!(value(&s, "raftsql_auth_failures_total", &[]), Some(0.0));
        assert_eq!(value(&s, "raftsql_tls_handshake_failures_total", &[]), Some(0.0));
        if id != leader {
            // The writes reached this follower in AppendEntries that carried entries.
            let carried = must(&s, "raftsql_append_entries_received_total", &[("carrying", "entries")]);
            assert!(carried >= 1.0, "node {id}: {carried} AppendEntries with entries");
            let matched = must(&l, "raftsql_follower_matched_index", &[("follower", &id.to_string())]);
            assert!(matched <= after.last_log_index as f64, "node {id}");
            let lag = must(&l, "raftsql_follower_lag_entries", &[("follower", &id.to_string())]);
            assert!(lag >= 0.0);
            let lag_seconds = must(&l, "raftsql_follower_lag_seconds", &[("follower", &id.to_string())]);
            assert!(
                lag_seconds >= 0.0 && (lag > 0.0 || lag_seconds == 0.0),
                "{lag} entries, {lag_seconds} s"
            );
            assert_eq!(
                value(&s, "raftsql_follower_lag_entries", &[]),
                None,
                "only the leader reports followers"
            );
        }
    }
    // A write refused for its SQL is still an answered request: OK at the request level; a
    // request-level refusal carries its code.
    let bad = client.execute("INSERT INTO kv VALUES (1, 'dup')", &[]).await.expect("answered");
    assert!(bad.results[0].is_err(), "duplicate key");
    let writes_ok = total(&cluster, "raftsql_writes_total", &[("code", "OK")]).await;
    assert!(writes_ok > writes_after, "{writes_after} -> {writes_ok}");
    client.query("SELECT * FROM missing", &[], QueryOptions::default()).await.expect_err("no such table");
    let missing = total(&cluster, "raftsql_reads_total", &[("code", "NOT_FOUND"), ("level", "STRONG")]).await;
    assert!(missing >= 1.0, "a refused read is counted by its code");
}

/// Every node of a healthy cluster is live and ready, over HTTP and gRPC; a follower cut off
/// from the others loses readiness (no leader) but stays live, and is ready again once healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_a_cut_and_liveness_does_not() {
    let opts = ClusterOptions { http: true, proxied: Some(19), ..Default::default() };
    let cluster = Cluster::start(3, opts).await.expect("starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("leader");
    for id in cluster.ids() {
        wait_ready(&cluster, id, true).await;
        let (code, body) = http_get(cluster.http_addr(id).unwrap(), "/healthz").await.unwrap();
        assert_eq!((code, body.as_str()), (200, "ok\n"));
        let (code, _) = http_get(cluster.http_addr(id).unwrap(), "/nothing-here").await.unwrap();
        assert_eq!(code, 404);
        for service in ["", "liveness", "readiness"] {
            assert_eq!(grpc_health(&cluster, id, service).await, Ok(ServingStatus::Serving), "{service:?}");
        }
    }

    let cut = cluster.ids().into_iter().find(|&id| id != leader).expect("3 nodes");
    let net = cluster.net().expect("proxied");
    net.isolate(cut);
    wait_ready(&cluster, cut, false).await;
    let (_, body, _) = readiness(&cluster, cut).await;
    assert!(body.contains("no leader is known"), "{body}");
    // Caught up with all it knows: ready if the leader condition is dropped.
    let (code, body) = http_get(cluster.http_addr(cut).unwrap(), "/readyz?noleader").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    // The two others keep a leader between them and stay ready.
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != cut).collect();
    for &id in &others {
        wait_ready(&cluster, id, true).await;
    }

    net.heal_all();
    for id in cluster.ids() {
        wait_ready(&cluster, id, true).await;
    }

    // The leader cut off from both followers keeps its role (openraft 0.9 does not step down)
    // but can commit nothing: it turns not ready, while the other two elect a leader.
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("leader");
    net.isolate(leader);
    wait_ready(&cluster, leader, false).await;
    let (_, body, _) = readiness(&cluster, leader).await;
    eprintln!("the isolated leader's /readyz: {body}");
    assert!(body.contains("has not heard from a quorum") || body.contains("no leader is known"), "{body}");
    net.heal_all();
    for id in cluster.ids() {
        wait_ready(&cluster, id, true).await;
    }
}

/// With `--users-file`, health (HTTP and gRPC) and reflection answer callers without
/// credentials, while Sql still refuses them (and `/metrics` counts the refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_need_no_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[[user]]\nname = \"admin\"\npassword = {:?}\npermissions = [\"all\"]\n",
            hash_password("pw")
        ),
    )
    .unwrap();
    let opts = ClusterOptions {
        http: true,
        extra_args: vec!["--users-file".into(), users.display().to_string()],
        credentials: Some(raftsql_client::Credentials::Basic { user: "admin".into(), password: "pw".into() }),
        ..Default::default()
    };
    let cluster = Cluster::start(3, opts).await.expect("starts");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("leader");
    for id in cluster.ids() {
        wait_ready(&cluster, id, true).await;
    }

    // Sql without credentials: refused, and counted.
    let anonymous = raftsql_client::Client::connect([cluster.listen(leader).to_string()]).await.unwrap();
    let err = anonymous.execute("SELECT 1", &[]).await.expect_err("no credentials");
    assert!(err.to_string().contains("requires authentication"), "{err}");
    let s = scrape(&cluster, leader).await;
    assert!(must(&s, "raftsql_auth_failures_total", &[]) >= 1.0);
    assert!(value(&s, "raftsql_writes_total", &[("code", "UNAUTHENTICATED")]).is_some_and(|v| v >= 1.0));

    // Reflection without credentials lists the client port's services and describes them.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.listen(leader)))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut reflection = ServerReflectionClient::new(channel);
    let asks = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("raftsql.v1.Sql".into()),
    ];
    let requests = asks.map(|m| ServerReflectionRequest { host: String::new(), message_request: Some(m) });
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .expect("reflection answers without credentials")
        .into_inner();
    let mut services = Vec::new();
    let mut described = false;
    while let Some(a) = answers.message().await.expect("reflection stream") {
        match a.message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                services.extend(l.service.into_iter().map(|s| s.name))
            }
            Some(MessageResponse::FileDescriptorResponse(f)) => {
                described = !f.file_descriptor_proto.is_empty()
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }
    for name in ["raftsql.v1.Sql", "raftsql.v1.Admin", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == name), "{name} not in {services:?}");
    }
    assert!(described, "raftsql.v1.Sql's file descriptor was not sent");
}
