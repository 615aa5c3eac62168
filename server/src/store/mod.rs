//! Storage on sled: the Raft log and vote ([`LogStore`]), the state machine ([`StateMachine`],
//! which applies [`ChangeSet`](crate::changeset::ChangeSet)s and serves the
//! [`ReadView`](crate::changeset::ReadView)), and snapshots.
//!
//! # What this module owns, and what it must not do
//!
//! It owns every byte under the data dir: the sled database, the snapshot files and the node-id
//! file. It implements openraft's storage traits and nothing else of Raft: it never decides
//! about roles, terms or membership (it records what openraft hands it), and it never parses or
//! evaluates SQL — applying a `ChangeSet` is mechanical (design.md §2).
//!
//! # Layout
//!
//! ```text
//! data_dir/
//!   node_id               the node id this dir belongs to (text), written once by `open`
//!   watermark             vote term and committed log index that were fsynced: sled must
//!                         hold at least that at start-up (see `watermark`)
//!   incarnation           this dir's incarnation (16 hex digits, random, never 0), written
//!                         once by `open` just before node_id (see `typ::Member`)
//!   db/                   one sled::Db:
//!     tree "log"            big-endian u64 index → bincode Entry
//!     tree "raft"           vote, committed, last_purged → bincode
//!     tree "meta"           sm_generation → u64: which state-machine tree is current
//!     tree "sm.<gen>"       ALL state-machine data, by key prefix (see `keys`)
//!   snapshots/
//!     snapshot-<id>.snap    the current snapshot (header + records, see `snapshot`)
//!     *.part                a snapshot being written or received
//! ```
//!
//! Every value in those trees is bincode followed by the CRC-32 of its bytes (`encode`); a
//! value that fails it is [`Error::Damaged`] wherever it is read, never decoded into wrong data.
//!
//! A read of the state that sled fails (an I/O error) is recorded (`fault`,
//! [`StateMachine::storage_fault`]), so the raft layer can tell this node's disk failing from a
//! pinned read stopped on purpose, and stop the node (`raft::fail_stop`). `fault` also holds the
//! test-only hook [`INJECT_ENV`] that makes such reads fail.
//!
//! Keeping the whole state machine in one tree makes applying an entry one atomic
//! `apply_batch`, and replacing it (snapshot install) one pointer switch: fill `sm.<gen+1>`, flush,
//! switch `sm_generation`, flush, drop the old tree. `open` drops any non-current `sm.*` tree a
//! crash left behind.
//!
//! # openraft's storage contract (v0.9.25, `storage/v2.rs`) and how it is met
//!
//! - "Logs must be consecutive … must NOT leave a hole": `truncate` removes the tail in one
//!   atomic batch; `purge` records `last_purged` first and then removes the head, so a crash
//!   leaves only extra entries at or below `last_purged` (ignored, and removed by `open`).
//! - "All write-IO must be serialized": openraft calls the log store from one task; every
//!   fsync goes through one flusher thread (`flusher.rs`), and a sled flush persists every earlier write
//!   of the whole database, so a later flush never overtakes an earlier write.
//! - `save_vote`: "persisted on disk before returning" — it awaits a flush.
//! - `append(entries, callback)`: writes the entries (readable on return), then the flusher
//!   fsyncs and only then calls the callback; a write error goes to the callback and is
//!   returned. Concurrent appends share one fsync (group fsync).
//! - `install_snapshot`: before returning, the state machine is replaced, the snapshot file is
//!   current and every other snapshot file is deleted.
//!
//! # Durability choice: (b) unflushed applies, flushed snapshots
//!
//! `apply` writes one sled batch per entry and does **not** fsync. `save_committed` is stored
//! (unflushed) and `read_committed` returns it. `build_snapshot` fsyncs the snapshot file *and*
//! flushes sled before it returns the snapshot. Crash argument:
//!
//! 1. sled writes every tree through one log, recovers a prefix of it, and each batch is atomic
//!    (an assumption about sled 0.34.7 that `tests::store_crash_keeps_acknowledged_writes`
//!    checks with SIGKILL), so after a crash the state machine is exactly the state after some
//!    applied entry `a` (its `last_applied` is in the same batch), never a half-applied entry.
//!    The patched sled fdatasyncs only in `Db::flush` (once per flush) and before it reuses a
//!    freed segment, and it looks for torn writes above the last *synced* point, so a power
//!    failure, which may drop unsynced buffers in any order, still leaves a prefix
//!    (vendor/sled/PATCHES.md).
//! 2. Every entry up to the committed index is in the log durably (append fsyncs before the
//!    callback, and nothing is committed before a majority's callbacks). At start-up openraft
//!    re-applies `(a, committed]` from the log (`get_initial_state`); committed entries it does not
//!    know to be committed are applied once the leader says so. Apply is deterministic, so the
//!    re-applied state equals the lost one, request records (exactly-once) included.
//! 3. The log is purged only up to a snapshot's last log id (openraft purges after a snapshot
//!    is built or installed), and a snapshot is reported only after sled was flushed, so the
//!    durable state machine is at or past every purged index: re-applying never needs a purged
//!    entry. Install switches the generation and flushes before the snapshot file is published.
//! 4. A caller that saw an apply finish may, after a crash, briefly see a node whose applied
//!    index is lower; that is the same as a node that is behind, which every read level handles.
//!
//! One fsync per write batch is saved compared to (a) flushed applies: appends are flushed once.
//! `truncate`, `purge` and `save_committed` are not flushed either; the next flush (any append
//! or vote) persists them, and losing them in a crash is harmless (see their docs in `log.rs`).
//!
//! # Invariants
//!
//! `last_purged ≤ snapshot ≤ applied ≤ committed ≤ last_log` (openraft's `log_pointers.md`),
//! where "applied" means durably applied after a crash; an entry is applied at most once per
//! state (`last_applied` is in the entry's own batch).
//!
//! # Known gaps
//!
//! - `CreateIndex` and `DropTable` collect the affected keys in memory inside one batch; a table
//!   with millions of rows makes that one large batch.
//! - Building a snapshot blocks apply (not reads) while the records are copied to the file;
//!   `tests::store_snapshot_pause` measures it: about 0.24 s for 20,000 small rows with one index
//!   in a debug build (~12 µs per row), so a table of millions of rows pauses apply for seconds.
//! - Key encoding makes numerically equal keys equal (`1`, `1.0`, `true`), as SQLite compares them.

mod fault;
mod flusher;
mod keys;
mod log;
mod snapshot;
mod state_machine;
#[cfg(test)]
mod tests;
mod versions;
mod watermark;

pub use fault::{hold_fsync_file, injection_file, HOLD_FSYNC_ENV, INJECT_ENV};
pub use log::{CommittedIndex, LogStore};
pub use snapshot::{verify as verify_snapshot, Export, ExportItem, SnapshotBuilder, MAX_RECORD_BYTES};
pub use state_machine::StateMachine;

use crate::typ::NodeId;
use flusher::Flusher;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where and how to open a node's storage.
#[derive(Clone, Debug)]
pub struct Options {
    pub data_dir: PathBuf,
    pub node_id: NodeId,
    /// sled's background flush; None = only explicit fsyncs persist (used by crash tests)
    pub flush_every: Option<Duration>,
    /// sled's page cache, bytes (`--cache-bytes`; [`DEFAULT_CACHE_BYTES`]).
    pub cache_bytes: u64,
}

/// sled's own default is 1 GiB, more than a small pod has.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// A storage failure, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("data dir {path:?} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("data dir {path:?} is not usable: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "data dir {path:?} belongs to node {found}, not node {expected}: start with --id {found}, \
         or point --data-dir at an empty directory"
    )]
    WrongNode { path: PathBuf, found: NodeId, expected: NodeId },
    #[error(
        "data dir {path:?} was written by an earlier raftsql in on-disk format {found}, which this \
         version (format {DATA_FORMAT}) cannot read: wipe it and join the node again with --join \
         HOST:PORT under a new --id (or bootstrap a new cluster)"
    )]
    OldFormat { path: PathBuf, found: u32 },
    #[error(
        "data dir {path:?} was written by a newer raftsql in on-disk format {found}; this version \
         reads format {DATA_FORMAT}: run the newer raftsql-server on it"
    )]
    NewerFormat { path: PathBuf, found: u32 },
    #[error("data dir {path:?} is locked: another raftsql-server may be running on it")]
    Locked {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error(
        "the database in {path:?} is corrupt ({reason}): this node cannot start on it. Recovery: \
         remove the node from the cluster (`.remove ID` through any member), wipe its data dir, and \
         join again with --join HOST:PORT under a new --id; the others hold the data"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("could not {context}: {source}")]
    Sled {
        context: String,
        #[source]
        source: sled::Error,
    },
    #[error("could not {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A stored value fails its checksum (`decode`): the database on this node is damaged.
    #[error(
        "a stored {what} on this node is damaged ({reason}); nothing was served from it. Recovery: \
         remove the node from the cluster (`.remove ID` through any member), wipe its data dir, and \
         join again with --join HOST:PORT under a new --id; the others hold the data"
    )]
    Damaged { what: String, reason: String },
    #[error("stored {what} is corrupt: {source}")]
    Decode {
        what: String,
        #[source]
        source: bincode::Error,
    },
    #[error("could not encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: bincode::Error,
    },
    #[error("log entry {log_id} cannot be applied: {reason}")]
    InvalidEntry { log_id: String, reason: String },
    #[error("snapshot {path:?} is unusable: {reason}")]
    BadSnapshot { path: PathBuf, reason: String },
}

impl Error {
    /// `map_err` helper: a sled failure while doing `context`.
    pub(crate) fn sled(context: impl Into<String>) -> impl FnOnce(sled::Error) -> Error {
        let context = context.into();
        move |source| Error::Sled { context, source }
    }

    /// `map_err` helper: an I/O failure while doing `context`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// Encodes a value as stored in sled: bincode, then the CRC-32 of those bytes (little-endian).
///
/// Every value raftsql keeps in sled goes through here — log entries, the vote, row images,
/// index entries, the catalog, request records, the applied state — so [`decode`] can tell a
/// damaged value from a good one. sled checksums its own pages too, but a value that was
/// damaged before sled sealed it, or that sled's recovery hands back wrongly, would otherwise be
/// decoded into wrong data and served (issue 16: "never wrong data served").
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    let mut bytes = bincode::serialize(value)
        .map_err(|source| Error::Encode { what: std::any::type_name::<T>(), source })?;
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    Ok(bytes)
}

/// Decodes what [`encode`] wrote, checking its checksum first: a damaged value is
/// [`Error::Damaged`], never a wrong value.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Error> {
    let Some(split) = bytes.len().checked_sub(4) else {
        return Err(damaged(what, format!("it is {} bytes, too short to hold its checksum", bytes.len())));
    };
    let (body, crc) = bytes.split_at(split);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(damaged(what, format!("its checksum says {stored:08x}, its bytes give {computed:08x}")));
    }
    bincode::deserialize(body).map_err(|source| Error::Decode { what: what.to_string(), source })
}

fn damaged(what: &str, reason: String) -> Error {
    let e = Error::Damaged { what: what.to_string(), reason };
    tracing::error!("{e}");
    e
}

const NODE_ID_FILE: &str = "node_id";
const INCARNATION_FILE: &str = "incarnation";
const FORMAT_FILE: &str = "format";

/// The on-disk format of a data dir, in its `format` file (written when the dir is created).
/// 3: log entries hold their change set encoded once ([`crate::changeset::EncodedChangeSet`]).
/// 4: a member (`typ::Member`, in membership entries, the vote's store and snapshots) carries
/// its peer address.
/// 5: every value in sled carries a CRC-32 of its encoding (`encode`).
/// Dirs of an earlier format (2 had no `format` file; 1 no incarnation either) are refused at
/// start with [`Error::OldFormat`].
pub const DATA_FORMAT: u32 = 5;

/// Opens (creating if needed) the node's storage in `opts.data_dir`: one sled database shared
/// by the log store and the state machine.
pub fn open(opts: &Options) -> Result<(LogStore, StateMachine), Error> {
    let dir = &opts.data_dir;
    prepare_dir(dir)?;
    let incarnation = claim_for_node(dir, opts.node_id)?;

    let db_path = dir.join("db");
    let config = sled::Config::new()
        .path(&db_path)
        .flush_every_ms(opts.flush_every.map(|d| (d.as_millis() as u64).max(1)))
        .cache_capacity(opts.cache_bytes);
    // sled panics on some damaged files (a truncated or bit-flipped one: "tried to serialize
    // Uninitialized"); that is a corrupt data dir like any other, not a crash with a backtrace.
    let opened = {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        // The config is dropped if it panics: nothing half-built is used afterwards.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        std::panic::set_hook(hook);
        r
    };
    let db = match opened {
        Ok(r) => r.map_err(|e| match e {
            sled::Error::Corruption { .. } => Error::Corrupt { path: db_path.clone(), reason: e.to_string() },
            // sled reports a held file lock only as an I/O error with this text (0.34.7 config.rs).
            sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
                Error::Locked { path: dir.clone(), source: e }
            }
            sled::Error::Io(io) => Error::DataDir { path: db_path.clone(), source: io },
            e => Error::Sled { context: format!("open the sled database in {db_path:?}"), source: e },
        })?,
        Err(panic) => {
            let reason =
                crate::panic_message(&*panic).unwrap_or_else(|| "sled panicked while reading it".into());
            return Err(Error::Corrupt { path: db_path, reason });
        }
    };
    // A database that lost Raft state it had fsynced is refused (see `watermark`).
    let trees = log::Trees::open(&db)?;
    watermark::check(dir, &db_path, trees.holds())?;
    let keeper = watermark::Keeper::new(dir, Box::new(move || trees.durable_bound()))?;
    let flusher =
        Arc::new(Flusher::start(db.clone(), keeper).map_err(Error::io("start the flusher thread"))?);
    let log = LogStore::open(&db, opts.node_id, flusher.clone())?;
    let sm = StateMachine::open(&db, flusher, dir.join("snapshots"), incarnation)?;
    tracing::info!(
        data_dir = %dir.display(),
        node_id = opts.node_id,
        incarnation = %crate::typ::Incarnation(incarnation),
        applied = ?sm.applied_index(),
        "storage opened"
    );
    Ok((log, sm))
}

/// Whether `dir` was claimed by a node before (its node-id file exists): a used data dir, as
/// opposed to a new one, whatever its database holds now.
pub fn was_claimed(dir: &Path) -> bool {
    dir.join(NODE_ID_FILE).exists()
}

fn prepare_dir(dir: &Path) -> Result<(), Error> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => return Err(Error::NotADirectory { path: dir.to_path_buf() }),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .map_err(|source| Error::DataDir { path: dir.to_path_buf(), source })?;
        }
        Err(source) => return Err(Error::DataDir { path: dir.to_path_buf(), source }),
    }
    // Fail early, with the dir's name, if it is not writable.
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"").map_err(|source| Error::DataDir { path: dir.to_path_buf(), source })?;
    std::fs::remove_file(&probe).map_err(|source| Error::DataDir { path: dir.to_path_buf(), source })?;
    Ok(())
}

/// Checks the node-id file and reads the incarnation, or — on a new data dir — writes both
/// (atomically, durably; the incarnation first, so a dir with a node-id file always has one).
fn claim_for_node(dir: &Path, node_id: NodeId) -> Result<u64, Error> {
    let path = dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found: NodeId = text.trim().parse().map_err(|e| Error::DataDir {
                path: path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, format!("not a node id ({e}): {text:?}")),
            })?;
            if found != node_id {
                return Err(Error::WrongNode { path: dir.to_path_buf(), found, expected: node_id });
            }
            check_format(dir)?;
            read_incarnation(dir)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let incarnation = loop {
                let i: u64 = rand::random();
                if i != 0 {
                    break i;
                }
            };
            let data_dir = |source| Error::DataDir { path: dir.to_path_buf(), source };
            write_durably(&dir.join(FORMAT_FILE), format!("{DATA_FORMAT}\n").as_bytes()).map_err(data_dir)?;
            write_durably(&dir.join(INCARNATION_FILE), format!("{:016x}\n", incarnation).as_bytes())
                .map_err(data_dir)?;
            write_durably(&path, format!("{node_id}\n").as_bytes()).map_err(data_dir)?;
            Ok(incarnation)
        }
        Err(source) => Err(Error::DataDir { path, source }),
    }
}

fn check_format(dir: &Path) -> Result<(), Error> {
    let path = dir.join(FORMAT_FILE);
    let found = match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(v) => v,
            Err(_) => {
                return Err(Error::Corrupt {
                    path,
                    reason: format!("not a format number: {:?}", text.trim()),
                })
            }
        },
        // Format 2 dirs had an incarnation file and no format file; format 1, neither.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if dir.join(INCARNATION_FILE).exists() {
                2
            } else {
                1
            }
        }
        Err(source) => return Err(Error::DataDir { path, source }),
    };
    match found {
        DATA_FORMAT => Ok(()),
        f if f < DATA_FORMAT => Err(Error::OldFormat { path: dir.to_path_buf(), found: f }),
        f => Err(Error::NewerFormat { path: dir.to_path_buf(), found: f }),
    }
}

fn read_incarnation(dir: &Path) -> Result<u64, Error> {
    let path = dir.join(INCARNATION_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::OldFormat { path: dir.to_path_buf(), found: 1 })
        }
        Err(source) => return Err(Error::DataDir { path, source }),
    };
    match u64::from_str_radix(text.trim(), 16) {
        Ok(i) if i != 0 => Ok(i),
        _ => Err(Error::Corrupt { path, reason: format!("not an incarnation id: {:?}", text.trim()) }),
    }
}

/// Writes a small file via a temp file, fsync and rename, then fsyncs the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let part = path.with_extension("part");
    let mut f = std::fs::File::create(&part)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&part, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
