//! Fuzzing the front ends a client or a peer can reach (issue 16): generated and mutated SQL
//! through parse → plan → evaluate on a small in-memory database, and random and mutated bytes
//! through the gRPC request decoders and the checks behind them.
//!
//! Coverage-guided fuzzing (cargo-fuzz) needs a nightly toolchain; these are `proptest`
//! generators instead, run as ordinary tests. Every case must end in `Ok` or a typed error:
//! a panic, a stack overflow, a case that outlives its deadline or holds far more memory than
//! its budget allows is a finding. See docs/testing.md, "Fuzzing".
//!
//! - CI runs a bounded number of cases per generator (a fixed seed, so a run is repeatable).
//! - A long local run: `RAFTSQL_FUZZ_CASES=2000000 cargo test --release -p raftsql-server
//!   --test fuzz -- --nocapture --test-threads 1` (`RAFTSQL_FUZZ_SEED` picks another seed);
//!   each generator closes with `<name>: N inputs, F findings, T s`.

mod alloc;
mod decoders;
mod grammar;
mod harness;
mod mutate;
mod sql_case;

use proptest::prelude::*;

/// Generated statements over the fixed schema: SELECT with joins, grouping, subqueries, CASE,
/// CAST, LIKE/GLOB, functions and edge-value arithmetic; DML, DDL, transactions; parameters of
/// every type.
#[test]
fn fuzz_sql_generated() {
    harness::run("sql generated", 1000, grammar::request, |req| sql_case::check(&req));
    eprintln!("sql generated: statement outcomes: {}", sql_case::outcomes());
}

/// Valid statements (built in, SQLite's sqllogictest select files, generated ones) with their
/// tokens and characters mutated, deep nesting and long operator chains spliced in.
#[test]
fn fuzz_sql_mutated() {
    harness::run("sql mutated", 2000, mutate::request, |req| sql_case::check(&req));
    eprintln!("sql mutated: statement outcomes: {}", sql_case::outcomes());
}

/// Random and mutated bytes as every client request message, then the service's checks and,
/// when they pass, evaluation.
#[test]
fn fuzz_client_request_decoders() {
    harness::run("client request decoders", 2000, decoders::client_input, decoders::check_client);
}

/// Random and mutated bytes as peer payloads (AppendEntries, Vote, InstallSnapshot) through
/// the peer service's decoder and `raft::peer_check`.
#[test]
fn fuzz_peer_message_decoders() {
    harness::run("peer message decoders", 5000, decoders::peer_input, decoders::check_peer);
}

/// The harness reports a failing case as a finding: a panic inside a case is caught, shrunk
/// and counted, not lost.
#[test]
fn the_harness_counts_a_panic_as_a_finding() {
    let findings = harness::run_quietly("self test", 50, any::<u8>, |b| {
        assert!(b < 200, "a planted finding");
        Ok(())
    });
    assert!(findings >= 1, "the planted panic was not found");
}
