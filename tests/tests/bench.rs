//! `raftsql bench` (issue 18's first slice): every workload runs briefly against a real cluster
//! and prints one valid JSON line with no errors; `--local --tls` starts, measures and removes
//! its own cluster. No assertion on speed.

use raftsql_tests::{bin_dir, Cluster, ClusterOptions};
use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin_dir().join("raftsql")).args(args).env("RAFTSQL_HISTORY", "").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{args:?}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("valid JSON");
    for field in [
        "system",
        "workload",
        "clients",
        "duration_s",
        "ops",
        "ops_per_sec",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "errors",
    ] {
        assert!(v.get(field).is_some(), "{field} missing: {v}");
    }
    assert_eq!(v["system"], "raftsql");
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["ops"].as_u64().unwrap() > 0, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_and_prints_one_json_line() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await.expect("cluster starts");
    cluster.wait_for_leader(std::time::Duration::from_secs(30)).await.unwrap();
    let addrs = cluster.addrs().join(",");
    for (workload, consistency) in [
        ("fill", "strong"),
        ("put", "strong"),
        ("insert", "strong"),
        ("update", "strong"),
        ("get", "strong"),
        ("get", "any"),
        ("index-get", "bounded:2s"),
        ("scan", "strong"),
        ("mixed", "ryw"),
    ] {
        let v = bench(&[
            "--addr",
            &addrs,
            "bench",
            "--workload",
            workload,
            "--consistency",
            consistency,
            "--clients",
            "4",
            "--duration",
            "1",
            "--rows",
            "300",
            "--format",
            "json",
        ]);
        assert_eq!(v["workload"], workload, "{v}");
        if workload == "fill" {
            assert_eq!(v["ops"], 300, "fill loads every row: {v}");
        }
    }
    cluster.assert_converged("bench_kv").await.unwrap();
    cluster.assert_converged("bench_ix").await.unwrap();
}

#[test]
fn local_tls_cluster_is_started_measured_and_removed() {
    let before = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("raftsql-bench-"))
        .count();
    let v = bench(&[
        "bench",
        "--local",
        "--tls",
        "--workload",
        "put",
        "--clients",
        "4",
        "--duration",
        "1",
        "--rows",
        "100",
        "--format",
        "json",
    ]);
    assert_eq!(v["workload"], "put");
    let after = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("raftsql-bench-"))
        .count();
    assert_eq!(before, after, "the local cluster's directory is removed");
}
