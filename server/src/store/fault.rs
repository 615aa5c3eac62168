//! Storage failures met while reading the state machine, kept so the layer above can tell them
//! from the other reasons a read stops (issue 21, item 6).
//!
//! A [`crate::changeset::ReadError`] says only that a read of the state failed. Two kinds reach
//! it: sled failing (an I/O error, sled's own corruption report) and a pinned read stopped on
//! purpose (`versions`: apply kept too much for it, or a snapshot replaced the state), which a
//! retry cures. A [`View`](super::state_machine::View) records the first of the first kind here
//! ([`Fault::record`]); `raft` asks [`StateMachine::storage_fault`](super::StateMachine::storage_fault)
//! after a read error and, when one is recorded, stops the node instead of answering as if the
//! node were healthy (`raft::fail_stop`). A value that fails its own checksum (`store::decode`)
//! is not recorded: that damage is persistent, a restart cannot cure it, and it is answered as
//! INTERNAL naming the recovery (docs/architecture.md, "A damaged value in the database").
//!
//! # The test hook
//! With [`INJECT_ENV`] set to a file path, every read of the state machine's rows, indexes and
//! schemas through a `View` fails as an I/O error would, and is recorded, for as long as that
//! file exists. Only the cluster tests set it (tests/tests/storage_faults.rs): a node started
//! with it logs a warning at start-up. It can make reads fail, never change what is stored or
//! what a read returns.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The environment variable of the test hook: a file path; while the file exists, every state
/// machine read of this node fails as an I/O error.
pub const INJECT_ENV: &str = "RAFTSQL_TEST_FAIL_READS";

/// The first storage failure a read met, if any; set once, never cleared (the node stops).
#[derive(Default)]
pub(crate) struct Fault(OnceLock<String>);

impl Fault {
    /// Records `cause` unless a failure is recorded already, and returns it for the read's error.
    pub(crate) fn record(&self, cause: String) -> String {
        let _ = self.0.set(cause.clone());
        cause
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.0.get().cloned()
    }
}

/// The environment variable of the fsync-holding test hook: a file path; while the file exists,
/// this node's flusher does not start an fsync.
pub const HOLD_FSYNC_ENV: &str = "RAFTSQL_TEST_HOLD_FSYNC";

/// The trigger file of the fsync-holding hook, read from [`HOLD_FSYNC_ENV`] once per process.
pub fn hold_fsync_file() -> Option<&'static PathBuf> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| env_file(HOLD_FSYNC_ENV)).as_ref()
}

/// Waits while the fsync-holding hook is armed and its file exists (on the flusher's thread).
pub(crate) fn hold_fsync() {
    if let Some(file) = hold_fsync_file() {
        while file.exists() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// The trigger file of the test hook, read from [`INJECT_ENV`] once per process.
pub fn injection_file() -> Option<&'static PathBuf> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| env_file(INJECT_ENV)).as_ref()
}

/// The file a test hook's environment variable names, if it is set and not empty.
fn env_file(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The failure the test hook injects into this read, if it is armed and its file exists.
pub(crate) fn injected() -> Option<String> {
    let file = injection_file()?;
    file.exists().then(|| {
        format!(
            "I/O error reading the state machine (injected by the test hook {INJECT_ENV}: {} exists)",
            file.display()
        )
    })
}
