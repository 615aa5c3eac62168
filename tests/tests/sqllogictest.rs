//! sqllogictest through real clusters: the project's own files (tests/slt/, all must pass) and
//! SQLite's corpus (../shared/sqllogictest, at least 99% of the records run must pass). Each
//! file runs on a fresh 3-node cluster; see `raftsql_tests::slt`.

use raftsql_tests::slt::{self, RunOptions, Summary, Target};
use std::path::{Path, PathBuf};

async fn run_dir(dir: &Path) -> Summary {
    let files = slt::collect_files(&[dir.to_path_buf()])
        .unwrap_or_else(|e| panic!("cannot read the sqllogictest files in {}: {e}", dir.display()));
    assert!(!files.is_empty(), "no *.test or *.slt files under {}", dir.display());
    let summary = slt::run_files(&files, &Target::FreshCluster, &RunOptions::default(), 1, |report| {
        println!("{}", slt::describe(report, 3));
    })
    .await;
    println!("{}", summary.totals());
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_slt_files_all_pass() {
    let summary = run_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("slt")).await;
    assert_eq!(summary.failed(), 0, "every record of tests/slt must pass; see the failures above");
    assert!(summary.run() > 0);
}

/// `RAFTSQL_SLT_CORPUS`, else `<workspace>/../shared/sqllogictest`.
fn corpus_dir() -> PathBuf {
    match std::env::var_os("RAFTSQL_SLT_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/sqllogictest"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_corpus_passes_99_percent() {
    let dir = corpus_dir();
    assert!(dir.is_dir(), "the corpus is not at {} (set RAFTSQL_SLT_CORPUS)", dir.display());
    let summary = run_dir(&dir).await;
    assert!(
        summary.pass_rate() >= 99.0,
        "{:.2}% of the corpus's records passed, 99% required: {} passed, {} failed",
        summary.pass_rate(),
        summary.passed(),
        summary.failed()
    );
}
