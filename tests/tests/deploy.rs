//! Issue 19, the Kubernetes manifests (deploy/): `deploy/validate.py` checks them offline,
//! against the Kubernetes schemas (the pinned kubernetes-validate, installed into
//! `target/tmp/pydeps` on first use) and against the invariants the cluster relies on. These
//! tests run it on the manifests, on the Secrets `make-certs` writes, and on broken copies, to
//! prove it can fail.
//!
//! They need `python3`: without it they fail under CI (`CI` set) and are skipped elsewhere.

use clap::Parser as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("the repository root")
}

/// Whether python3 runs here. Missing is a failure in CI, where the check must not go unseen.
fn have_python() -> bool {
    match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ if std::env::var_os("CI").is_some() => {
            panic!("python3 is needed to run deploy/validate.py, and CI (CI is set) must have it")
        }
        _ => {
            eprintln!("skipped: python3 is not installed, and deploy/validate.py needs it");
            false
        }
    }
}

/// Runs deploy/validate.py with `args`: whether it passed, and everything it printed.
fn validate(args: &[&std::ffi::OsStr]) -> (bool, String) {
    // Kept between runs, so the packages are downloaded once.
    let pydeps = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pydeps");
    let out = Command::new("python3")
        .arg(repo().join("deploy/validate.py"))
        .arg("--pydeps")
        .arg(&pydeps)
        .args(args)
        .current_dir(repo())
        .output()
        .expect("running python3 deploy/validate.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas_and_keep_their_invariants() {
    if !have_python() {
        return;
    }
    let (passed, out) = validate(&[]);
    assert!(passed, "deploy/validate.py failed:\n{out}");
    assert!(out.lines().any(|l| l.ends_with(" passed, 0 failed")), "no closing count:\n{out}");
}

/// The TLS overlay points the server at the file names `make-certs` really writes (the ones in
/// the Secrets of its secrets.yaml), for every node id.
#[test]
fn tls_overlay_names_the_files_make_certs_writes() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("secrets");
    let args = raftsql_server::certs::MakeCerts::parse_from([
        "make-certs".as_ref(),
        "--out".as_ref(),
        out_dir.as_os_str(),
    ]);
    raftsql_server::certs::make(&args).expect("make-certs writes its files");
    let secrets = out_dir.join("secrets.yaml");
    let (passed, out) = validate(&["--secrets".as_ref(), secrets.as_os_str()]);
    assert!(passed, "deploy/validate.py --secrets failed:\n{out}");
    for var in ["RAFTSQL_TLS_CERT", "RAFTSQL_TLS_KEY", "RAFTSQL_PEER_TLS_KEY", "RAFTSQL_USERS_FILE"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("ok [tls] {var}: Secret "))
                    && l.contains("of --secrets holds")),
            "{var} was not checked against the Secrets:\n{out}"
        );
    }
}

/// Copies `from` (deploy/, a few small files) into `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The checker is able to fail: each broken copy of the manifests fails, naming what broke.
#[test]
fn validate_fails_on_manifests_that_break_an_invariant() {
    if !have_python() {
        return;
    }
    // (file, text, replacement, the FAIL line's start)
    let mutations = [
        ("base/pdb.yaml", "maxUnavailable: 1", "maxUnavailable: 2", "FAIL [base] PodDisruptionBudget maxUnavailable (2)"),
        (
            "base/statefulset.yaml",
            "livenessProbe:\n            httpGet:\n              path: /healthz",
            "livenessProbe:\n            httpGet:\n              path: /readyz",
            "FAIL [base] livenessProbe asks /readyz",
        ),
        (
            "base/service-peers.yaml",
            "publishNotReadyAddresses: true",
            "publishNotReadyAddresses: false",
            "FAIL [base] Service raftsql-peers lacks publishNotReadyAddresses",
        ),
        (
            "base/configmap.yaml",
            "RAFTSQL_STATEFULSET_REPLICAS: \"3\"",
            "RAFTSQL_STATEFULSET_REPLICAS: \"5\"",
            "FAIL [base] RAFTSQL_STATEFULSET_REPLICAS (5) > spec.replicas (3)",
        ),
        (
            "base/statefulset.yaml",
            "  podManagementPolicy: Parallel\n",
            "  podManagementPolicy: Parallel\n  podManagmentPolicy: Parallel\n",
            "FAIL [base] StatefulSet/raftsql does not validate against Kubernetes",
        ),
        (
            "kustomization.yaml",
            "  - tls\n",
            "  - base\n",
            "FAIL the top kustomization.yaml must apply the TLS overlay",
        ),
        (
            "base/rbac.yaml",
            "verbs: [\"get\"]",
            "verbs: [\"get\", \"delete\"]",
            "FAIL [base] the pod must mount its ServiceAccount token",
        ),
        (
            "base/statefulset.yaml",
            "terminationGracePeriodSeconds: 45",
            "terminationGracePeriodSeconds: 30",
            "FAIL [base] terminationGracePeriodSeconds (30) is under 33",
        ),
        (
            "tls/statefulset-patch.yaml",
            "/tls/node-{id}-peer.key",
            "/tls/node-{id}-peer-key.pem",
            "FAIL [tls] RAFTSQL_PEER_TLS_KEY (/tls/node-{id}-peer-key.pem): Secret raftsql-tls of --secrets has no",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let certs = raftsql_server::certs::MakeCerts::parse_from([
        "make-certs".as_ref(),
        "--out".as_ref(),
        dir.path().join("secrets").as_os_str(),
    ]);
    raftsql_server::certs::make(&certs).expect("make-certs writes its files");
    let secrets = dir.path().join("secrets/secrets.yaml");

    // An unchanged copy passes, so each failure below is its mutation's.
    let pristine = dir.path().join("pristine");
    copy_dir(&repo().join("deploy"), &pristine);
    let (passed, out) =
        validate(&["--dir".as_ref(), pristine.as_os_str(), "--secrets".as_ref(), secrets.as_os_str()]);
    assert!(passed, "an unchanged copy of deploy/ fails:\n{out}");

    for (i, (file, text, replacement, expected)) in mutations.iter().enumerate() {
        let copy = dir.path().join(format!("mutation-{i}"));
        copy_dir(&repo().join("deploy"), &copy);
        let path = copy.join(file);
        let original = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            original.matches(text).count(),
            1,
            "{file} must hold {text:?} exactly once for this mutation"
        );
        std::fs::write(&path, original.replace(text, replacement)).unwrap();
        let (passed, out) =
            validate(&["--dir".as_ref(), copy.as_os_str(), "--secrets".as_ref(), secrets.as_os_str()]);
        assert!(!passed, "{file} with {replacement:?} passed deploy/validate.py:\n{out}");
        assert!(
            out.lines().any(|l| l.starts_with(expected)),
            "{file} with {replacement:?} failed, but not with {expected:?}:\n{out}"
        );
    }
}
