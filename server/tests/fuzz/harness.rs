//! Runs a generator for N cases in chunks, each chunk a proptest runner with its own seed: a
//! failing case is shrunk, printed and counted as a finding, and the run goes on with the next
//! chunk, so a long run reports every finding it meets, not only the first. A watchdog aborts
//! the process, naming the case, if one case runs far past every deadline (a hang).

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Cases per chunk: a finding ends its chunk, not the run.
const CHUNK: u64 = 5_000;

/// A case still running after this long is a hang: every case runs under a `Budget` deadline
/// of a few seconds.
const HANG: Duration = Duration::from_secs(60);

/// Cases to run: `RAFTSQL_FUZZ_CASES`, else `ci_default`.
fn cases(ci_default: u64) -> u64 {
    match std::env::var("RAFTSQL_FUZZ_CASES") {
        Ok(v) => {
            v.replace('_', "").parse().unwrap_or_else(|_| panic!("RAFTSQL_FUZZ_CASES={v} is not a number"))
        }
        Err(_) => ci_default,
    }
}

/// The first chunk's seed: `RAFTSQL_FUZZ_SEED`, else a fixed one so CI runs are repeatable.
fn seed() -> u64 {
    match std::env::var("RAFTSQL_FUZZ_SEED") {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("RAFTSQL_FUZZ_SEED={v} is not a number")),
        Err(_) => 16,
    }
}

/// Times the watchdog found the whole process stopped or starved (it slept over 5 s): time
/// that passed then was no case's, so wall-clock checks spanning it prove nothing.
static PAUSES: AtomicU64 = AtomicU64::new(0);

/// How many pauses the watchdog has seen: a check that measures wall time compares this before
/// and after ([`crate::sql_case`]'s deadline check).
pub fn pauses() -> u64 {
    PAUSES.load(Ordering::SeqCst)
}

/// What the case running now is, for the watchdog's message (set by the checks).
static CURRENT: Mutex<String> = Mutex::new(String::new());
/// When the case running now started, in milliseconds since the run started (0: none).
static STARTED_MS: AtomicU64 = AtomicU64::new(0);

/// Names the case about to run, for the watchdog.
pub fn current(what: impl FnOnce() -> String) {
    if let Ok(mut c) = CURRENT.lock() {
        *c = what();
    }
}

/// Runs `test` over `ci_default` (or `RAFTSQL_FUZZ_CASES`) values of `strategy` and panics if
/// any failed, after printing `<name>: N inputs, F findings, T s`.
pub fn run<S>(
    name: &str,
    ci_default: u64,
    strategy: impl FnOnce() -> S + Send,
    test: impl Fn(S::Value) -> Result<(), TestCaseError> + Send,
) where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let findings = run_quietly(name, cases(ci_default), strategy, test);
    assert_eq!(findings, 0, "{name}: {findings} findings, printed above");
}

/// Runs `n` cases of the strategy `make` builds and returns the number of findings. The cases
/// run on a thread with the stack the server gives SQL evaluation (`sql::STACK_BYTES`): a stack
/// overflow aborts the process, which the run reports as a crash.
pub fn run_quietly<S>(
    name: &str,
    n: u64,
    make: impl FnOnce() -> S + Send,
    test: impl Fn(S::Value) -> Result<(), TestCaseError> + Send,
) -> u64
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name(format!("fuzz {name}"))
            .stack_size(raftsql_server::sql::STACK_BYTES)
            .spawn_scoped(s, || run_here(name, n, make(), test))
            .expect("spawn the fuzzing thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn run_here<S>(name: &str, n: u64, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) -> u64
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let epoch = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let watchdog = {
        let done = done.clone();
        let name = name.to_string();
        std::thread::spawn(move || watch(&name, epoch, &done))
    };
    install_quiet_hook();
    // `RAFTSQL_FUZZ_CHUNK` starts at a later chunk: a finding's report names its chunk, so
    // `RAFTSQL_FUZZ_CHUNK=<chunk> RAFTSQL_FUZZ_CASES=5000` (with its seed) replays it.
    let first: u64 = std::env::var("RAFTSQL_FUZZ_CHUNK").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let (mut tried, mut findings, mut chunk) = (0u64, 0u64, first);
    while tried < n {
        let cases = CHUNK.min(n - tried);
        let config = Config {
            cases: cases as u32,
            failure_persistence: None,
            max_shrink_iters: 2_000,
            max_shrink_time: 60_000,
            ..Config::default()
        };
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed().to_le_bytes());
        key[8..16].copy_from_slice(&chunk.to_le_bytes());
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
        // Cases run, and the number of the first that failed (shrinking runs more after it).
        let calls = Cell::new(0u64);
        let first_failure = Cell::new(None::<u64>);
        let result = runner.run(&strategy, |v| {
            calls.set(calls.get() + 1);
            STARTED_MS.store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
            QUIET.with(|q| q.set(true));
            let caught = std::panic::catch_unwind(AssertUnwindSafe(|| test(v)));
            QUIET.with(|q| q.set(false));
            let r = match caught {
                Ok(r) => r,
                Err(panic) => Err(TestCaseError::fail(format!(
                    "panicked at {}: {}",
                    PANICKED_AT.with(|p| p.borrow().clone()),
                    panic_message(&*panic)
                ))),
            };
            STARTED_MS.store(0, Ordering::Relaxed);
            if r.is_err() && first_failure.get().is_none() {
                first_failure.set(Some(calls.get()));
            }
            r
        });
        STARTED_MS.store(0, Ordering::Relaxed);
        match result {
            Ok(()) => tried += cases,
            Err(TestError::Fail(reason, value)) => {
                tried += first_failure.get().unwrap_or(1);
                findings += 1;
                eprintln!(
                    "{name}: FINDING (seed {}, chunk {chunk}): {reason}\n  minimal input: {value:#?}",
                    seed()
                );
            }
            Err(TestError::Abort(reason)) => panic!("{name}: the runner gave up: {reason}"),
        }
        chunk += 1;
        if n >= 100_000 && chunk.is_multiple_of(20) {
            eprintln!("{name}: {tried} inputs, {findings} findings, {:.0} s", epoch.elapsed().as_secs_f64());
        }
    }
    done.store(1, Ordering::Relaxed);
    watchdog.join().expect("the watchdog thread");
    eprintln!("{name}: {tried} inputs, {findings} findings, {:.1} s", epoch.elapsed().as_secs_f64());
    findings
}

/// Aborts the process if one case runs longer than [`HANG`]: a hang is a finding too, and a
/// stuck run would report nothing.
fn watch(name: &str, epoch: Instant, done: &AtomicU64) {
    let mut woke = Instant::now();
    while done.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(200));
        let started = STARTED_MS.load(Ordering::Relaxed);
        let slept = std::mem::replace(&mut woke, Instant::now()).elapsed();
        if started == 0 {
            continue;
        }
        if slept > Duration::from_secs(5) {
            PAUSES.fetch_add(1, Ordering::SeqCst);
            // The whole process was stopped (SIGSTOP, a suspended machine) or starved: that
            // time was not the case's. Its clock starts again (a case that finished meanwhile
            // has moved STARTED_MS on, and keeps its own value). Seen: a lane paused for a CI
            // run reported a 24-minute "hang", and another a query that "ran" 26 minutes.
            let now = epoch.elapsed().as_millis() as u64 + 1;
            let _ = STARTED_MS.compare_exchange(started, now, Ordering::Relaxed, Ordering::Relaxed);
            continue;
        }
        let running = epoch.elapsed().saturating_sub(Duration::from_millis(started - 1));
        if running > HANG && STARTED_MS.load(Ordering::Relaxed) == started {
            let what = CURRENT.lock().map(|c| c.clone()).unwrap_or_default();
            eprintln!("{name}: FINDING: a case has run for {running:?} (a hang); aborting. The case: {what}");
            std::process::abort();
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// Where the last quiet panic happened.
    static PANICKED_AT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A panic inside a case is caught and reported as a finding with its message: the default
/// hook would print it again for every step of shrinking. Everywhere else the hook prints.
fn install_quiet_hook() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
                let _ = PANICKED_AT.try_with(|p| p.replace(at));
            } else {
                previous(info)
            }
        }));
    });
}
