//! Snapshots: files under `data_dir/snapshots`, built from and installed into the state machine;
//! and openraft's `RaftStateMachine` impl, which ties apply and snapshots together.
//!
//! # File format (version [`SNAPSHOT_FORMAT`])
//!
//! ```text
//! "RSQLSNAP"  u16 LE format version  bincode SnapshotMeta
//! bincode Record*   (ClusterId? · per table: Table(schema), Row* · Request* · End{records})
//! u32 LE CRC-32 of every byte before it
//! ```
//!
//! The records are logical (schemas, rows, request records), not sled pages: index entries are
//! rebuilt on install, so the file does not depend on the key layout. `End` carries the record
//! count and the checksum follows it, so a truncated, extended or bit-flipped file is refused.
//! Every record is decoded with a size limit ([`MAX_RECORD_BYTES`]): a forged length cannot
//! make the reader allocate more.
//!
//! # Verification before install
//!
//! [`verify`] reads a whole snapshot the way an install does — header, every record (schemas
//! before rows, index entries computable), record count, checksum, nothing after it — without
//! writing anything. The peer service runs it on the chunks of a snapshot as they arrive and
//! hands the last chunk to openraft only when it passes (`service::peer`), so openraft never
//! installs an unverified snapshot: a failed install is a storage error that stops its core.
//! Install itself checks everything again while it fills a fresh generation, and switches to it
//! only at the end, so a snapshot damaged on this node's disk afterwards replaces nothing.
//!
//! Files: `snapshot-<id>.snap` is published (renamed into place after fsync);
//! `build-<id>.part`, `install-<id>.part`, `recv-<n>.part` are in progress. A snapshot id is
//! `<term>-<index>-<counter>` (`0-0-<counter>` before anything was applied); the counter is
//! unique within the dir.

use super::keys;
use super::state_machine::{
    generation_tree_name, index_entries, StateMachine, StoredRow, View, KEY_GENERATION,
};
use super::{decode, encode, sync_dir, Error};
use crate::changeset::{Applied, RequestRecord, TableSchema};
use crate::typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"RSQLSNAP";
/// The snapshot file format this build writes and reads (2: with a CRC-32 trailer).
pub(crate) const SNAPSHOT_FORMAT: u16 = 2;
/// The largest record (a row, a schema, a request record) a snapshot may hold: a row arrived in
/// one log entry, which is bounded by the peer message limit (64 MiB; `raft::network` checks at
/// compile time that the two agree).
pub const MAX_RECORD_BYTES: u64 = 64 << 20;

/// Reads or writes through to `inner`, keeping the CRC-32 of every byte that passes.
struct Crc<T> {
    inner: T,
    hasher: crc32fast::Hasher,
}

impl<T> Crc<T> {
    fn new(inner: T) -> Self {
        Crc { inner, hasher: crc32fast::Hasher::new() }
    }

    fn sum(&self) -> u32 {
        self.hasher.clone().finalize()
    }
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Decodes one bincode value, never allocating more than `limit` bytes for it.
fn decode_from<T: serde::de::DeserializeOwned>(r: &mut impl Read, limit: u64) -> bincode::Result<T> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(limit)
        .deserialize_from(r)
}
/// Writes per sled batch while loading a snapshot.
const LOAD_BATCH: usize = 10_000;

#[derive(Serialize, Deserialize)]
enum Record {
    ClusterId(String),
    Table(TableSchema),
    Row(StoredRow),
    Request { client_id: String, record: RequestRecord },
    End { records: u64 },
}

/// The snapshot directory: naming, publishing, finding the current snapshot.
pub(crate) struct SnapshotDir {
    dir: PathBuf,
    counter: AtomicU64,
    /// Serializes publishing (rename + deleting older files) between a build and an install.
    publish: Mutex<()>,
}

/// Orders snapshots: by last log id, then by the counter in the id.
fn order_key(meta: &SnapshotMeta) -> (Option<LogId>, u64) {
    (meta.last_log_id, id_counter(&meta.snapshot_id))
}

fn id_counter(id: &str) -> u64 {
    id.rsplit('-').next().and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn write_header(w: &mut impl Write, meta: &SnapshotMeta) -> Result<(), Error> {
    w.write_all(MAGIC).map_err(Error::io("write a snapshot header"))?;
    w.write_all(&SNAPSHOT_FORMAT.to_le_bytes()).map_err(Error::io("write a snapshot header"))?;
    // Plain bincode, as every record: the file's CRC-32 trailer covers the header too.
    bincode::serialize_into(w, meta).map_err(|source| Error::Encode { what: "snapshot header", source })
}

fn read_header(r: &mut impl Read, path: &Path) -> Result<SnapshotMeta, Error> {
    let bad = |reason: String| Error::BadSnapshot { path: path.to_path_buf(), reason };
    let mut magic = [0u8; 10];
    r.read_exact(&mut magic).map_err(|e| bad(format!("cannot read its header: {e}")))?;
    if &magic[..8] != MAGIC {
        return Err(bad("it is not a raftsql snapshot (bad magic bytes)".into()));
    }
    let version = u16::from_le_bytes([magic[8], magic[9]]);
    if version != SNAPSHOT_FORMAT {
        return Err(bad(format!(
            "format v{version}, this build reads v{SNAPSHOT_FORMAT}: upgrade this node"
        )));
    }
    decode_from(r, MAX_RECORD_BYTES).map_err(|e| bad(format!("cannot decode its metadata: {e}")))
}

impl SnapshotDir {
    /// Opens the dir, removes unfinished files and every snapshot but the latest.
    pub(crate) fn open(dir: PathBuf) -> Result<Self, Error> {
        std::fs::create_dir_all(&dir).map_err(|source| Error::DataDir { path: dir.clone(), source })?;
        let sd = SnapshotDir { dir, counter: AtomicU64::new(1), publish: Mutex::new(()) };
        for (path, name) in sd.files()? {
            if name.ends_with(".part") {
                std::fs::remove_file(&path).map_err(Error::io(format!("remove {path:?}")))?;
            }
        }
        let snaps = sd.snapshots();
        let max = snaps.iter().map(|(_, m)| id_counter(&m.snapshot_id)).max().unwrap_or(0);
        sd.counter.store(max + 1, Ordering::Relaxed);
        if let Some((keep, _)) = sd.latest()? {
            for (path, _) in snaps.iter().filter(|(p, _)| *p != keep) {
                std::fs::remove_file(path).map_err(Error::io(format!("remove {path:?}")))?;
            }
        }
        Ok(sd)
    }

    fn files(&self) -> Result<Vec<(PathBuf, String)>, Error> {
        let mut out = Vec::new();
        let list = std::fs::read_dir(&self.dir).map_err(Error::io(format!("list {:?}", self.dir)))?;
        for e in list {
            let e = e.map_err(Error::io(format!("list {:?}", self.dir)))?;
            out.push((e.path(), e.file_name().to_string_lossy().into_owned()));
        }
        Ok(out)
    }

    /// Published snapshots with readable headers.
    fn snapshots(&self) -> Vec<(PathBuf, SnapshotMeta)> {
        let mut out = Vec::new();
        for (path, name) in self.files().unwrap_or_default() {
            if !(name.starts_with("snapshot-") && name.ends_with(".snap")) {
                continue;
            }
            let meta = File::open(&path)
                .map_err(Error::io(format!("open {path:?}")))
                .and_then(|f| read_header(&mut BufReader::new(f), &path));
            match meta {
                Ok(m) => out.push((path, m)),
                Err(e) => tracing::warn!(error = %e, "ignoring an unreadable snapshot file"),
            }
        }
        out
    }

    fn latest(&self) -> Result<Option<(PathBuf, SnapshotMeta)>, Error> {
        Ok(self.snapshots().into_iter().max_by_key(|(_, m)| order_key(m)))
    }

    fn next_id(&self, last: Option<LogId>) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        match last {
            Some(l) => format!("{}-{}-{n}", l.leader_id.term, l.index),
            None => format!("0-0-{n}"),
        }
    }

    fn published_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("snapshot-{id}.snap"))
    }

    /// Renames `part` into place as the snapshot `meta`, then deletes older snapshots (and, when
    /// `installed`, every other snapshot and received file). Returns false if a newer snapshot
    /// was already published (a build that raced an install), in which case `part` is removed.
    fn publish(&self, part: &Path, meta: &SnapshotMeta, installed: bool) -> Result<bool, Error> {
        let _guard = self.publish.lock().expect("snapshot publish lock: no code panics while holding it");
        let path = self.published_path(&meta.snapshot_id);
        let others = self.snapshots();
        if !installed && others.iter().any(|(_, m)| order_key(m) > order_key(meta)) {
            std::fs::remove_file(part).map_err(Error::io(format!("remove {part:?}")))?;
            return Ok(false);
        }
        std::fs::rename(part, &path).map_err(Error::io(format!("publish snapshot {path:?}")))?;
        sync_dir(&self.dir).map_err(Error::io(format!("sync {:?}", self.dir)))?;
        for (p, m) in others {
            if p != path && (installed || order_key(&m) < order_key(meta)) {
                std::fs::remove_file(&p).map_err(Error::io(format!("remove {p:?}")))?;
            }
        }
        if installed {
            for (p, name) in self.files()? {
                if name.starts_with("recv-") {
                    std::fs::remove_file(&p).map_err(Error::io(format!("remove {p:?}")))?;
                }
            }
        }
        Ok(true)
    }

    fn open_snapshot(path: &Path, meta: SnapshotMeta) -> Result<Snapshot, Error> {
        let f = File::open(path).map_err(Error::io(format!("open {path:?}")))?;
        Ok(Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(f)) })
    }
}

fn put_record(w: &mut impl Write, r: &Record, n: &mut u64) -> Result<(), Error> {
    *n += 1;
    bincode::serialize_into(w, r).map_err(|source| Error::Encode { what: "snapshot record", source })
}

/// A read of the state machine that failed, as a storage error.
fn read_failed(what: &'static str) -> impl Fn(crate::changeset::ReadError) -> Error {
    move |e| Error::Io { context: format!("read {what}"), source: io::Error::other(e.0) }
}

/// Writes the state-machine records `view` shows; returns how many (not counting `End`).
fn write_records(w: &mut impl Write, view: &View<'_>) -> Result<u64, Error> {
    let mut n = 0u64;
    let all = |prefix: Vec<u8>| {
        let hi = super::state_machine::prefix_upper(&prefix);
        view.raw_range(std::ops::Bound::Included(prefix), hi)
    };
    if let Some(v) =
        view.raw_get(&keys::meta_key(keys::META_CLUSTER_ID)).map_err(read_failed("the cluster id"))?
    {
        put_record(w, &Record::ClusterId(decode(&v, "cluster id")?), &mut n)?;
    }
    for kv in all(keys::catalog_prefix()) {
        let (_, v) = kv.map_err(read_failed("the catalog"))?;
        let schema: TableSchema = decode(&v, "table schema")?;
        let rows = keys::rows_prefix(&schema.name);
        put_record(w, &Record::Table(schema), &mut n)?;
        for kv in all(rows) {
            let (_, v) = kv.map_err(read_failed("rows"))?;
            put_record(w, &Record::Row(decode(&v, "row")?), &mut n)?;
        }
    }
    let prefix = keys::requests_prefix();
    for kv in all(prefix.clone()) {
        let (k, v) = kv.map_err(read_failed("request records"))?;
        let client_id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        put_record(w, &Record::Request { client_id, record: decode(&v, "request record")? }, &mut n)?;
    }
    let records = n;
    put_record(w, &Record::End { records }, &mut n)?;
    Ok(records)
}

/// Builds snapshots for openraft; see [`SnapshotBuilder::build_snapshot`].
pub struct SnapshotBuilder {
    pub(crate) sm: StateMachine,
}

impl SnapshotBuilder {
    /// Builds a snapshot; also returns how long apply was blocked.
    pub(crate) fn build_blocking(&self) -> Result<(Snapshot, Duration), Error> {
        self.build_with(|| {})
    }

    /// Copies the records `view` shows into a new `<prefix>-<id>.part` file: header, records,
    /// checksum; returns its path, the record count and the (unsynced) file.
    fn copy(
        &self,
        prefix: &str,
        meta: &SnapshotMeta,
        view: &View<'_>,
    ) -> Result<(PathBuf, u64, File), Error> {
        let part = self.sm.shared.snapshots.dir.join(format!("{prefix}-{}.part", meta.snapshot_id));
        let file = File::create(&part).map_err(Error::io(format!("create {part:?}")))?;
        let mut w = Crc::new(BufWriter::new(file));
        write_header(&mut w, meta)?;
        let records = write_records(&mut w, view)?;
        let sum = w.sum();
        let mut w = w.inner;
        w.write_all(&sum.to_le_bytes()).map_err(Error::io(format!("write {part:?}")))?;
        let file = w
            .into_inner()
            .map_err(|e| Error::Io { context: format!("write {part:?}"), source: e.into_error() })?;
        Ok((part, records, file))
    }

    /// Copies the applied state into a new file of the snapshot format, `<prefix>-<id>.part`
    /// in the snapshot dir: header, records, checksum. The records are copied from a pinned
    /// state (`versions`): apply goes on meanwhile and keeps, for this copy, what it
    /// overwrites. If it had to keep too much (a write storm during a long copy), the copy is
    /// stopped; it is then made again with apply waiting, as a bounded fallback, rather than
    /// failing (a failed build would stop Raft). Returns the file's meta, path, record count,
    /// the (unsynced) file and how long apply waited.
    #[allow(clippy::type_complexity)]
    fn copy_applied(
        &self,
        prefix: &str,
        after_pin: impl FnOnce(),
    ) -> Result<(SnapshotMeta, PathBuf, u64, File, Duration), Error> {
        let shared = &self.sm.shared;
        let dir = &shared.snapshots;
        let (pin, tree, meta) = {
            let current = shared.read_state();
            let meta = SnapshotMeta {
                last_log_id: current.last_applied,
                last_membership: current.membership.clone(),
                snapshot_id: dir.next_id(current.last_applied),
            };
            let pos = current.last_applied.map_or(0, |l| l.index + 1);
            (current.versions.pin(pos), current.tree.clone(), meta)
        };
        after_pin();
        match self.copy(
            prefix,
            &meta,
            &View { tree: &tree, pin: Some(&pin), fault: &shared.fault, schema_version: None },
        ) {
            Ok((part, records, file)) => Ok((meta, part, records, file, Duration::ZERO)),
            Err(e) if pin.stopped() => {
                drop(pin);
                tracing::warn!(error = %e, "a copy of the applied state stopped; copying again with apply waiting");
                let locked = Instant::now();
                let current = shared.read_state();
                let meta = SnapshotMeta {
                    last_log_id: current.last_applied,
                    last_membership: current.membership.clone(),
                    snapshot_id: dir.next_id(current.last_applied),
                };
                let (part, records, file) = self.copy(
                    prefix,
                    &meta,
                    &View { tree: &current.tree, pin: None, fault: &shared.fault, schema_version: None },
                )?;
                Ok((meta, part, records, file, locked.elapsed()))
            }
            Err(e) => Err(e),
        }
    }

    /// [`build_blocking`](Self::build_blocking), running `after_pin` once the state to copy is
    /// pinned (tests apply entries there).
    pub(crate) fn build_with(&self, after_pin: impl FnOnce()) -> Result<(Snapshot, Duration), Error> {
        let shared = &self.sm.shared;
        let dir = &shared.snapshots;
        let started = Instant::now();
        let _busy = crate::watchdog::SNAPSHOT_BUILD.enter(self.sm.applied_index().unwrap_or(0));
        let (meta, part, records, file, paused) = self.copy_applied("build", after_pin)?;
        file.sync_all().map_err(Error::io(format!("fsync {part:?}")))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        // Durability choice (b): the state machine must be durable up to the snapshot before
        // the snapshot is reported, because openraft purges the log up to it next.
        shared.flusher.flush_blocking().map_err(Error::io("flush the state machine"))?;
        let path = dir.published_path(&meta.snapshot_id);
        if !dir.publish(&part, &meta, false)? {
            tracing::info!(id = %meta.snapshot_id, "a newer snapshot was installed meanwhile; this one is discarded");
            // Hand openraft the newer one; it keeps whichever is latest.
            if let Some((p, m)) = dir.latest()? {
                return Ok((SnapshotDir::open_snapshot(&p, m)?, paused));
            }
        }
        tracing::info!(
            id = %meta.snapshot_id, last_log_id = ?meta.last_log_id, records, bytes,
            apply_paused_ms = paused.as_millis() as u64, total_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        Ok((SnapshotDir::open_snapshot(&path, meta)?, paused))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// Copies the applied state into a new snapshot file from a pinned state (apply goes on),
    /// fsyncs it, flushes sled, publishes it and deletes older snapshots.
    #[tracing::instrument(level = "trace", skip(self))]
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let b = SnapshotBuilder { sm: self.sm.clone() };
        let r = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let r = b.build_blocking().map(|(s, _)| s);
            crate::stats::since(&crate::stats::SNAPSHOT_BUILD_SECONDS, started);
            r
        })
        .await;
        flatten(r).map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)).into())
    }
}

/// A consistent copy of the applied state for a backup ([`StateMachine::export`]): a file of
/// the snapshot format in the snapshot dir, `backup-<id>.part`, removed when this is dropped
/// (and by `SnapshotDir::open` after a crash). Copying to a file first means a slow reader of
/// the backup holds a file, not a pin that apply must keep old values for.
pub struct Export {
    path: PathBuf,
    /// The applied log id (and membership) the copy shows.
    pub meta: SnapshotMeta,
    /// Records in the copy (tables, rows, and what a backup leaves out).
    pub records: u64,
    pub bytes: u64,
}

/// What a backup carries of the state: schemas and row images, table by table. The cluster id
/// and the exactly-once records belong to the cluster they were made in and stay out; hidden
/// row ids are not part of a row image.
#[derive(Debug)]
pub enum ExportItem {
    Table(TableSchema),
    Row(crate::changeset::Row),
}

impl Export {
    /// Reads the copy back, checking it as an install would (count, checksum), and hands each
    /// table and row to `each`, rows after their table. Stops at the first error of `each`.
    pub fn read(&self, mut each: impl FnMut(ExportItem) -> Result<(), Error>) -> Result<(), Error> {
        let f = File::open(&self.path).map_err(Error::io(format!("open {:?}", self.path)))?;
        let mut r = Crc::new(BufReader::new(f));
        read_header(&mut r, &self.path)?;
        read_records(&mut r, &self.path, |record, _| match record {
            Record::Table(schema) => each(ExportItem::Table(schema)),
            Record::Row(stored) => each(ExportItem::Row(stored.row)),
            Record::ClusterId(_) | Record::Request { .. } | Record::End { .. } => Ok(()),
        })
        .map(drop)
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = ?self.path, error = %e, "could not remove a backup's copy of the state");
        }
    }
}

impl StateMachine {
    /// Copies the applied state for a backup, apply going on meanwhile. Blocking (it copies
    /// every row): run it off the async runtime.
    pub fn export(&self) -> Result<Export, Error> {
        let b = SnapshotBuilder { sm: self.clone() };
        let (meta, path, records, file, _) = b.copy_applied("backup", || {})?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        drop(file);
        Ok(Export { path, meta, records, bytes })
    }
}

fn flatten<T>(r: Result<Result<T, Error>, tokio::task::JoinError>) -> Result<T, Error> {
    r.unwrap_or_else(|e| Err(Error::Io { context: "run a storage task".into(), source: io::Error::other(e) }))
}

/// Reads a snapshot's records after its header, checks the record count and the checksum
/// (`r` has hashed every byte since the start of the file) and that nothing follows it, and
/// hands each record with its table's schema to `each`. Returns the record count.
fn read_records<R: Read>(
    r: &mut Crc<R>,
    path: &Path,
    mut each: impl FnMut(Record, Option<&TableSchema>) -> Result<(), Error>,
) -> Result<u64, Error> {
    let bad = |reason: String| Error::BadSnapshot { path: path.to_path_buf(), reason };
    let mut table: Option<TableSchema> = None;
    let mut n = 0u64;
    loop {
        let record: Record =
            decode_from(&mut *r, MAX_RECORD_BYTES).map_err(|e| bad(format!("record {n}: {e}")))?;
        match record {
            Record::End { records } if records == n => break,
            Record::End { records } => return Err(bad(format!("it says {records} records, it holds {n}"))),
            Record::Table(schema) => {
                each(Record::Table(schema.clone()), None)?;
                table = Some(schema);
            }
            Record::Row(_) if table.is_none() => {
                return Err(bad(format!("record {n}: a row before any table")))
            }
            record => each(record, table.as_ref())?,
        }
        n += 1;
    }
    let sum = r.sum();
    let mut trailer = [0u8; 4];
    r.inner.read_exact(&mut trailer).map_err(|e| bad(format!("its checksum is missing: {e}")))?;
    let stored = u32::from_le_bytes(trailer);
    if stored != sum {
        return Err(bad(format!("checksum mismatch: it says {stored:08x}, its bytes give {sum:08x}")));
    }
    let mut extra = [0u8; 1];
    match r.inner.read(&mut extra) {
        Ok(0) => Ok(n),
        Ok(_) => Err(bad("bytes follow its checksum".into())),
        Err(e) => Err(bad(format!("cannot read its end: {e}"))),
    }
}

/// Loads the records of a snapshot file into `tree` (empty), index entries included.
fn load_records<R: Read>(r: &mut Crc<R>, tree: &sled::Tree, path: &Path) -> Result<u64, Error> {
    let bad = |reason: String| Error::BadSnapshot { path: path.to_path_buf(), reason };
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    let n = read_records(r, path, |record, table| {
        match record {
            Record::End { .. } => {}
            Record::ClusterId(id) => batch.insert(keys::meta_key(keys::META_CLUSTER_ID), encode(&id)?),
            Record::Table(schema) => batch.insert(keys::catalog_key(&schema.name), encode(&schema)?),
            Record::Row(stored) => {
                let schema = table.expect("read_records refuses a row before any table");
                for (k, v) in index_entries(schema, &stored.key, &stored.row).map_err(bad)? {
                    batch.insert(k, v);
                    pending += 1;
                }
                batch.insert(keys::row_key(&schema.name, &stored.key), encode(&stored)?);
            }
            Record::Request { client_id, record } => {
                batch.insert(keys::request_key(&client_id), encode(&record)?)
            }
        }
        pending += 1;
        if pending >= LOAD_BATCH {
            tree.apply_batch(std::mem::take(&mut batch)).map_err(Error::sled("load a snapshot"))?;
            pending = 0;
        }
        Ok(())
    })?;
    tree.apply_batch(batch).map_err(Error::sled("load a snapshot"))?;
    Ok(n)
}

/// Checks a whole snapshot as an install would, writing nothing (see the module doc): the
/// header (which must describe `expected` when given), every record, the count, the checksum.
/// Returns the record count.
pub fn verify(r: impl Read, expected: Option<&SnapshotMeta>) -> Result<u64, Error> {
    let path = Path::new("<received snapshot>");
    let bad = |reason: String| Error::BadSnapshot { path: path.to_path_buf(), reason };
    let mut r = Crc::new(BufReader::new(r));
    let found = read_header(&mut r, path)?;
    if let Some(meta) = expected {
        if found.last_log_id != meta.last_log_id || found.last_membership != meta.last_membership {
            return Err(bad(format!("its header says {found}, the message says {meta}")));
        }
    }
    read_records(&mut r, path, |record, table| match (record, table) {
        (Record::Row(stored), Some(schema)) => {
            index_entries(schema, &stored.key, &stored.row).map(drop).map_err(bad)
        }
        _ => Ok(()),
    })
}

impl StateMachine {
    fn install_blocking(&self, meta: &SnapshotMeta, mut source: File) -> Result<(), Error> {
        let shared = &self.shared;
        let dir = &shared.snapshots;
        let started = Instant::now();
        let _busy = crate::watchdog::SNAPSHOT_INSTALL.enter(meta.last_log_id.map_or(0, |l| l.index));
        let part = dir.dir.join(format!("install-{}.part", meta.snapshot_id));
        // Check the header, then copy the file into our dir (it may be another node's file).
        source.seek(SeekFrom::Start(0)).map_err(Error::io("seek the received snapshot"))?;
        let found = read_header(&mut BufReader::new(&mut source), &part)?;
        if found.last_log_id != meta.last_log_id || found.last_membership != meta.last_membership {
            return Err(Error::BadSnapshot {
                path: part,
                reason: format!("its header says {found}, openraft says {meta}"),
            });
        }
        source.seek(SeekFrom::Start(0)).map_err(Error::io("seek the received snapshot"))?;
        let mut copy = File::create(&part).map_err(Error::io(format!("create {part:?}")))?;
        let bytes = io::copy(&mut source, &mut copy).map_err(Error::io(format!("write {part:?}")))?;
        copy.sync_all().map_err(Error::io(format!("fsync {part:?}")))?;
        drop(copy);

        // Fill a fresh generation; readers keep using the current one meanwhile.
        let old_gen = shared.read_state().gen;
        let gen = old_gen + 1;
        let name = generation_tree_name(gen);
        shared.db.drop_tree(&name).map_err(Error::sled("drop a stale generation"))?;
        let tree = shared.db.open_tree(&name).map_err(Error::sled("create a state-machine generation"))?;
        let mut r = Crc::new(BufReader::new(File::open(&part).map_err(Error::io(format!("open {part:?}")))?));
        read_header(&mut r, &part)?;
        let records = load_records(&mut r, &tree, &part)?;
        tree.insert(keys::meta_key(keys::META_LAST_APPLIED), encode(&meta.last_log_id)?)
            .map_err(Error::sled("write last applied"))?;
        tree.insert(keys::meta_key(keys::META_MEMBERSHIP), encode(&meta.last_membership)?)
            .map_err(Error::sled("write the membership"))?;
        shared.flusher.flush_blocking().map_err(Error::io("flush the new state-machine generation"))?;

        // The switch: one durable pointer write, under the write lock.
        let old_tree = {
            let mut current = shared.write_state();
            shared
                .meta
                .insert(KEY_GENERATION, encode(&gen)?)
                .map_err(Error::sled("switch the generation"))?;
            shared.flusher.flush_blocking().map_err(Error::io("persist the generation switch"))?;
            let old = std::mem::replace(&mut current.tree, tree);
            // Reads pinned on the old generation stop at their next access (they would read
            // a dropped tree); new ones pin the new generation.
            let old_versions = std::mem::replace(&mut current.versions, super::versions::Versions::new());
            old_versions
                .retire("the read was stopped: a snapshot replaced this node's state while it ran; retry it");
            current.gen = gen;
            current.schema_version = super::state_machine::next_schema_version();
            current.last_applied = meta.last_log_id;
            current.membership = meta.last_membership.clone();
            shared.set_applied_index(meta.last_log_id);
            old
        };
        shared.released.notify_waiters();
        drop(old_tree);
        shared.db.drop_tree(generation_tree_name(old_gen)).map_err(Error::sled("drop the old generation"))?;
        dir.publish(&part, meta, true)?;
        tracing::info!(
            id = %meta.snapshot_id, last_log_id = ?meta.last_log_id, records, bytes,
            total_ms = started.elapsed().as_millis() as u64, "snapshot installed"
        );
        Ok(())
    }
}

/// Batches of entries up to this many encoded bytes are applied on the calling worker when the
/// state is free (`RaftStateMachine::apply`); larger ones on a blocking thread.
const INLINE_APPLY_BYTES: usize = 16 * 1024;

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    #[tracing::instrument(level = "trace", skip(self))]
    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(StateMachine::applied_state(self))
    }

    #[tracing::instrument(level = "trace", skip(self, entries))]
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let started = std::time::Instant::now();
        let size: usize = entries
            .iter()
            .map(|e| match &e.payload {
                openraft::EntryPayload::Normal(encoded) => encoded.len(),
                _ => 64,
            })
            .sum();
        // A small batch (a few requests' rows) is applied on this worker when the state is free
        // at once: tens of microseconds, less than handing it to a blocking thread and back
        // costs, on the path of every write's answer.
        let entries = if size <= INLINE_APPLY_BYTES {
            match self.try_apply_now(entries) {
                Ok(r) => {
                    crate::stats::since(&crate::stats::APPLY_SECONDS, started);
                    return r.map_err(|(log_id, e)| StorageIOError::apply(log_id, AnyError::new(&e)).into());
                }
                Err(entries) => entries,
            }
        } else {
            entries
        };
        let sm = self.clone();
        // Large entries (an index build, a table drop) must not stall a tokio worker, nor may
        // waiting for a read that holds the state.
        let apply = move || {
            let r = sm.apply_blocking(entries);
            crate::stats::since(&crate::stats::APPLY_SECONDS, started);
            r
        };
        match tokio::task::spawn_blocking(apply).await {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err((log_id, e))) => Err(StorageIOError::apply(log_id, AnyError::new(&e)).into()),
            Err(e) => {
                Err(StorageIOError::new(ErrorSubject::StateMachine, ErrorVerb::Write, AnyError::new(&e))
                    .into())
            }
        }
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { sm: self.clone() }
    }

    #[tracing::instrument(level = "trace", skip(self))]
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let dir = &self.shared.snapshots;
        let path = dir.dir.join(format!("recv-{}.part", dir.counter.fetch_add(1, Ordering::Relaxed)));
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await;
        let f = f.map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
        Ok(Box::new(f))
    }

    /// Replaces the whole state machine with the snapshot (generation switch), publishes it and
    /// deletes every other snapshot file, before returning.
    #[tracing::instrument(level = "trace", skip(self, snapshot))]
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        use tokio::io::AsyncWriteExt;
        let to_storage = |e: Error| -> StorageError {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)).into()
        };
        snapshot
            .flush()
            .await
            .map_err(|e| to_storage(Error::io("finish writing the received snapshot")(e)))?;
        let file = snapshot.into_std().await;
        let (sm, m) = (self.clone(), meta.clone());
        let r = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let r = sm.install_blocking(&m, file);
            crate::stats::since(&crate::stats::SNAPSHOT_INSTALL_SECONDS, started);
            r
        })
        .await;
        flatten(r).map_err(to_storage)
    }

    #[tracing::instrument(level = "trace", skip(self))]
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let sm = self.clone();
        let r = tokio::task::spawn_blocking(move || match sm.shared.snapshots.latest()? {
            Some((path, meta)) => SnapshotDir::open_snapshot(&path, meta).map(Some),
            None => Ok(None),
        })
        .await;
        flatten(r).map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)).into())
    }
}
