//! sqllogictest: the project's own files (tests/slt/, all must pass) and SQLite's corpus
//! (../shared/sqllogictest, at least 99% of the records run must pass), judged by
//! `raftsql_tests::slt`.
//!
//! - In process, all of them: the SQL engine over an in-memory and a sled backend at once
//!   (`raftsql_tests::engine`), where any disagreement between the backends fails the test.
//!   The whole corpus takes seconds.
//! - Through real 3-node clusters, a representative subset: the project's files and the
//!   corpus's `select1.test`, `evidence/` and `index/delete/` (statements through the
//!   sequencer, index maintenance through replication and apply, reads through the service
//!   and the client library), each file on a fresh cluster.

use raftsql_tests::slt::{self, RunOptions, Summary, Target};
use std::path::{Path, PathBuf};

async fn run(paths: &[PathBuf], target: Target) -> Summary {
    let files = slt::collect_files(paths)
        .unwrap_or_else(|e| panic!("cannot read the sqllogictest files {paths:?}: {e}"));
    assert!(!files.is_empty(), "no *.test or *.slt files under {paths:?}");
    let summary = slt::run_files(&files, &target, &RunOptions::default(), 1, |report| {
        println!("{}", slt::describe(report, 3));
    })
    .await;
    println!("{}", summary.totals());
    assert_eq!(summary.differences(), 0, "the engine's two backends disagreed; see above");
    assert!(summary.run() > 0);
    summary
}

fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("slt")
}

/// `RAFTSQL_SLT_CORPUS`, else `<workspace>/../shared/sqllogictest`.
fn corpus_dir() -> PathBuf {
    let dir = match std::env::var_os("RAFTSQL_SLT_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/sqllogictest"),
    };
    assert!(dir.is_dir(), "the corpus is not at {} (set RAFTSQL_SLT_CORPUS)", dir.display());
    dir
}

fn assert_corpus_rate(summary: &Summary) {
    assert!(
        summary.pass_rate() >= 99.0,
        "{:.2}% of the corpus's records passed, 99% required: {} passed, {} failed",
        summary.pass_rate(),
        summary.passed(),
        summary.failed()
    );
}

#[tokio::test]
async fn project_slt_files_all_pass_in_process_on_both_backends() {
    let summary = run(&[project_dir()], Target::InProcess).await;
    assert_eq!(summary.failed(), 0, "every record of tests/slt must pass; see the failures above");
}

#[tokio::test]
async fn sqlite_corpus_passes_99_percent_in_process_on_both_backends() {
    let summary = run(&[corpus_dir()], Target::InProcess).await;
    assert_corpus_rate(&summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_slt_files_all_pass_through_a_cluster() {
    let summary = run(&[project_dir()], Target::FreshCluster).await;
    assert_eq!(summary.failed(), 0, "every record of tests/slt must pass; see the failures above");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_of_the_sqlite_corpus_passes_through_a_cluster() {
    let dir = corpus_dir();
    let sample = [dir.join("select1.test"), dir.join("evidence"), dir.join("index/delete")];
    let summary = run(&sample, Target::FreshCluster).await;
    assert_corpus_rate(&summary);
}
