//! The state machine: applying log entries to the current generation tree, and reading it.
//!
//! Concurrency: [`Current`] sits behind one `RwLock`. `apply` and the generation switch of a
//! snapshot install take it for writing; [`StateMachine::read`] and snapshot building take it for
//! reading, so a reader sees the state between two applied entries, never inside one.

use super::fault::Fault;
use super::flusher::Flusher;
use super::keys;
use super::snapshot::SnapshotDir;
use super::versions::{Pin, PinnedRange, Versions};
use super::{decode, encode, Error};
use crate::changeset::{
    Applied, Change, ChangeSet, ErrorKind, IndexIter, Key, ReadError, ReadView, RequestRecord, Row, RowIter,
    StatementError, TableSchema, Value, FORMAT_VERSION,
};
use crate::typ::{Entry, LogId, StoredMembership};
use openraft::EntryPayload;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Key of the current-generation pointer in tree `meta`.
pub(crate) const KEY_GENERATION: &[u8] = b"sm_generation";
const NO_INDEX: u64 = u64::MAX;

/// Raw key/value pairs of the state-machine tree.
pub(crate) type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// A row as stored: the key is kept because key encodings are not decoded (see `keys`), and
/// the index of the entry that last wrote the row is kept for optimistic transactions later.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredRow {
    pub key: Key,
    pub row: Row,
    pub written_at: u64,
}

/// The state machine of this node. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct StateMachine {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) db: sled::Db,
    pub(crate) meta: sled::Tree,
    pub(crate) flusher: Arc<Flusher>,
    state: RwLock<Current>,
    applied_index: AtomicU64,
    pub(crate) snapshots: SnapshotDir,
    /// The cluster id once known: it never changes after the first leader's entry set it, and
    /// every receipt and peer message asks for it, so it is read from the tree only until then.
    cluster_id: std::sync::OnceLock<String>,
    /// This data dir's incarnation (see [`crate::typ::Member`]); fixed for its life.
    pub(crate) incarnation: u64,
    /// The first storage failure a read of the state met (see `fault`).
    pub(crate) fault: super::fault::Fault,
    /// Woken whenever apply (or a snapshot's switch) lets go of the state, for reads waiting
    /// on an async worker ([`StateMachine::read_after_apply`]).
    pub(super) released: tokio::sync::Notify,
}

/// The current generation and the applied state, as in memory.
pub(crate) struct Current {
    pub gen: u64,
    pub tree: sled::Tree,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// Old values of this generation kept for pinned reads (see `versions`).
    pub versions: Arc<Versions>,
    /// What [`ReadView::schema_version`] answers for this state: a fresh
    /// [`next_schema_version`] whenever an applied entry writes the catalog or a snapshot
    /// replaces the state.
    pub schema_version: u64,
}

/// A schema version no state machine of this process has used: versions are drawn from one
/// counter, so a plan cached for one node's schema is never taken for another's (tests run
/// several stores in one process).
pub(crate) fn next_schema_version() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn generation_tree_name(gen: u64) -> String {
    format!("sm.{gen}")
}

fn get_meta<T: serde::de::DeserializeOwned>(tree: &sled::Tree, name: &str) -> Result<Option<T>, Error> {
    match tree.get(keys::meta_key(name)).map_err(Error::sled(format!("read {name}")))? {
        Some(v) => Ok(Some(decode(&v, name)?)),
        None => Ok(None),
    }
}

impl StateMachine {
    pub(crate) fn open(
        db: &sled::Db,
        flusher: Arc<Flusher>,
        snapshot_dir: PathBuf,
        incarnation: u64,
    ) -> Result<Self, Error> {
        let meta = db.open_tree("meta").map_err(Error::sled("open the meta tree"))?;
        let gen = match meta.get(KEY_GENERATION).map_err(Error::sled("read the state-machine generation"))? {
            Some(v) => decode::<u64>(&v, "state-machine generation")?,
            None => {
                meta.insert(KEY_GENERATION, encode(&1u64)?).map_err(Error::sled("write the generation"))?;
                1
            }
        };
        let current_name = generation_tree_name(gen);
        for name in db.tree_names() {
            if name.starts_with(b"sm.") && name != current_name.as_bytes() {
                // Left by a snapshot install that crashed before or after its switch.
                tracing::info!(tree = %String::from_utf8_lossy(&name), "dropping stale state-machine generation");
                db.drop_tree(&name).map_err(Error::sled("drop a stale state-machine generation"))?;
            }
        }
        let tree = db.open_tree(&current_name).map_err(Error::sled("open the state-machine tree"))?;
        let last_applied: Option<LogId> =
            get_meta::<Option<LogId>>(&tree, keys::META_LAST_APPLIED)?.flatten();
        let membership = get_meta(&tree, keys::META_MEMBERSHIP)?.unwrap_or_default();
        let snapshots = SnapshotDir::open(snapshot_dir)?;
        let shared = Shared {
            db: db.clone(),
            meta,
            flusher,
            applied_index: AtomicU64::new(last_applied.map_or(NO_INDEX, |l| l.index)),
            state: RwLock::new(Current {
                gen,
                tree,
                last_applied,
                membership,
                versions: Versions::new(),
                schema_version: next_schema_version(),
            }),
            snapshots,
            cluster_id: std::sync::OnceLock::new(),
            incarnation,
            fault: Default::default(),
            released: tokio::sync::Notify::new(),
        };
        Ok(StateMachine { shared: Arc::new(shared) })
    }

    /// Runs `f` on a consistent view of the applied state: apply does not run meanwhile.
    /// Blocks while an entry is being applied; call it from a blocking thread for long reads.
    /// Do not call other `StateMachine` methods inside `f`: they take the same lock, and a
    /// nested read deadlocks when an apply is waiting for it.
    pub fn read<R>(&self, f: impl FnOnce(&dyn ReadView) -> R) -> R {
        let current = self.shared.read_state();
        f(&View {
            tree: &current.tree,
            pin: None,
            fault: &self.shared.fault,
            schema_version: Some(current.schema_version),
        })
    }

    /// Runs `f` on a consistent view of the applied state without holding apply back: the
    /// state is pinned (`versions`), apply goes on, and `f` sees the state as it was at the
    /// pin. Also returns the applied index it saw, and whether the read was stopped: a pinned
    /// read that may run long stops with a read error if apply had to keep too much for it or a
    /// snapshot replaced the state, which is no fault of the store or the statement (the caller
    /// answers "retry").
    pub fn read_pinned<R>(&self, f: impl FnOnce(&dyn ReadView) -> R) -> (R, Option<u64>, bool) {
        let (tree, pin, applied, schema_version) = {
            let current = self.shared.read_state();
            let applied = current.last_applied.map(|l| l.index);
            let pin = current.versions.pin(applied.map_or(0, |i| i + 1));
            (current.tree.clone(), pin, applied, current.schema_version)
        };
        let view = View {
            tree: &tree,
            pin: Some(&pin),
            fault: &self.shared.fault,
            schema_version: Some(schema_version),
        };
        let result = f(&view);
        (result, applied, pin.stopped())
    }

    /// [`read`](StateMachine::read) if no apply holds or waits for the state now; `None`
    /// otherwise, without waiting (for callers that must not block, e.g. an async worker).
    pub fn try_read<R>(&self, f: impl FnOnce(&dyn ReadView) -> R) -> Option<R> {
        let current = match self.shared.state.try_read() {
            Ok(c) => c,
            Err(std::sync::TryLockError::WouldBlock) => return None,
            Err(std::sync::TryLockError::Poisoned(_)) => {
                panic!("state-machine lock poisoned by a panic during apply")
            }
        };
        Some(f(&View {
            tree: &current.tree,
            pin: None,
            fault: &self.shared.fault,
            schema_version: Some(current.schema_version),
        }))
    }

    /// [`try_read`](StateMachine::try_read), but an apply that holds or waits for the state is
    /// waited for without blocking the thread, for up to `patience` (then `None`): an apply takes
    /// microseconds to milliseconds, less than the two thread switches of moving the read to a
    /// blocking thread and back cost.
    pub async fn read_after_apply<R>(
        &self,
        patience: std::time::Duration,
        f: impl FnOnce(&dyn ReadView) -> R,
    ) -> Option<R> {
        let mut f = Some(f);
        // `try_read` calls its closure only when it got the state: `f` is taken once.
        if let Some(r) = self.try_read(|view| f.take().map(|f| f(view))) {
            return r;
        }
        let until = tokio::time::Instant::now() + patience;
        loop {
            // Registered before the attempt, so a release between the two is not missed.
            let released = self.shared.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(r) = self.try_read(|view| f.take().map(|f| f(view))) {
                return r;
            }
            tokio::time::timeout_at(until, released).await.ok()?;
        }
    }

    /// This data dir's incarnation: a random id it got when it was created, never 0.
    pub fn incarnation(&self) -> u64 {
        self.shared.incarnation
    }

    /// The first storage failure (sled's, or the test hook's) a read of the state met since the
    /// store was opened, if any: a read error is then this node's disk failing, not a pinned
    /// read stopped on purpose (`fault`).
    pub fn storage_fault(&self) -> Option<String> {
        self.shared.fault.get()
    }

    /// The cluster id, once the first leader's entry set it.
    pub fn cluster_id(&self) -> Result<Option<String>, Error> {
        if let Some(id) = self.shared.cluster_id.get() {
            return Ok(Some(id.clone()));
        }
        let id: Option<String> = get_meta(&self.shared.read_state().tree, keys::META_CLUSTER_ID)?;
        Ok(id.map(|id| self.shared.cluster_id.get_or_init(|| id).clone()))
    }

    /// The exactly-once record of a client: its highest applied sequence number and outcomes.
    pub fn request_record(&self, client_id: &str) -> Result<Option<RequestRecord>, Error> {
        let current = self.shared.read_state();
        match current.tree.get(keys::request_key(client_id)).map_err(Error::sled("read a request record"))? {
            Some(v) => Ok(Some(decode(&v, "request record")?)),
            None => Ok(None),
        }
    }

    /// The index of the last applied entry (from memory; never blocks).
    /// Makes every write so far durable (one fsync through the flusher), e.g. at shutdown.
    pub fn flush(&self) -> Result<(), Error> {
        self.shared.flusher.flush_blocking().map_err(Error::io("flush the store"))
    }

    pub fn applied_index(&self) -> Option<u64> {
        match self.shared.applied_index.load(Ordering::Acquire) {
            NO_INDEX => None,
            i => Some(i),
        }
    }

    pub(crate) fn applied_state(&self) -> (Option<LogId>, StoredMembership) {
        let current = self.shared.read_state();
        (current.last_applied, current.membership.clone())
    }

    /// Applies entries, one atomic sled batch each (not flushed: see the module doc of `store`).
    /// On failure, returns the log id of the entry that failed.
    pub(crate) fn apply_blocking(&self, entries: Vec<Entry>) -> ApplyResult {
        let _busy = crate::watchdog::APPLY.enter(entries.first().map_or(0, |e| e.log_id.index));
        let current = self.shared.write_state();
        self.apply_holding(current, entries)
    }

    /// Applies `entries` here and now if no read holds the state; otherwise gives them back
    /// untouched (the caller then applies them on a blocking thread,
    /// where waiting for the lock harms nobody).
    pub(crate) fn try_apply_now(&self, entries: Vec<Entry>) -> Result<ApplyResult, Vec<Entry>> {
        let _busy = crate::watchdog::APPLY.enter(entries.first().map_or(0, |e| e.log_id.index));
        match self.shared.state.try_write() {
            Ok(current) => Ok(self.apply_holding(current, entries)),
            // Held (or poisoned, which `apply_blocking` reports as every other caller does).
            Err(_) => Err(entries),
        }
    }

    fn apply_holding(&self, mut current: RwLockWriteGuard<'_, Current>, entries: Vec<Entry>) -> ApplyResult {
        let result = {
            let mut out = Vec::with_capacity(entries.len());
            let mut failed = None;
            for entry in entries {
                let log_id = entry.log_id;
                tracing::trace!(%log_id, "apply");
                match apply_entry(&mut current, &entry) {
                    Ok(applied) => out.push(applied),
                    Err(e) => {
                        failed = Some((log_id, e));
                        break;
                    }
                }
                self.shared.applied_index.store(log_id.index, Ordering::Release);
            }
            failed.map_or(Ok(out), Err)
        };
        drop(current);
        self.shared.released.notify_waiters();
        result
    }
}

/// What applying a batch gives: each entry's outcome, or the log id of the entry that failed.
pub(crate) type ApplyResult = Result<Vec<Applied>, (LogId, Error)>;

fn apply_entry(current: &mut Current, entry: &Entry) -> Result<Applied, Error> {
    let log_id = entry.log_id;
    let mut txn = Txn::new(&current.tree);
    let mut applied = Applied::default();
    let mut membership = None;
    match &entry.payload {
        EntryPayload::Blank => {}
        EntryPayload::Normal(encoded) => {
            let cs = encoded
                .decode()
                .map_err(|e| Error::InvalidEntry { log_id: log_id.to_string(), reason: e.to_string() })?;
            applied = apply_changeset(&mut txn, &cs, log_id)?
        }
        EntryPayload::Membership(m) => membership = Some(StoredMembership::new(Some(log_id), m.clone())),
    }
    txn.put(keys::meta_key(keys::META_LAST_APPLIED), encode(&Some(log_id))?);
    if let Some(m) = &membership {
        txn.put(keys::meta_key(keys::META_MEMBERSHIP), encode(m)?);
    }
    if current.versions.has_pins() {
        // A pinned read may still need what this entry overwrites.
        let mut olds = Vec::with_capacity(txn.writes.len());
        for k in txn.writes.keys() {
            olds.push((
                k.clone(),
                current.tree.get(k).map_err(Error::sled("read a value before changing it"))?,
            ));
        }
        current.versions.save(log_id.index, olds);
    }
    let catalog_written = txn.catalog_written;
    let batch = txn.into_batch();
    current.tree.apply_batch(batch).map_err(Error::sled("apply an entry"))?;
    current.last_applied = Some(log_id);
    if catalog_written {
        current.schema_version = next_schema_version();
    }
    if let Some(m) = membership {
        current.membership = m;
    }
    Ok(applied)
}

impl Shared {
    pub(crate) fn read_state(&self) -> RwLockReadGuard<'_, Current> {
        // A panic while applying leaves a state we cannot trust; propagating it is right.
        self.state.read().expect("state-machine lock poisoned by a panic during apply")
    }

    pub(crate) fn write_state(&self) -> RwLockWriteGuard<'_, Current> {
        self.state.write().expect("state-machine lock poisoned by a panic during apply")
    }

    pub(crate) fn set_applied_index(&self, last_applied: Option<LogId>) {
        self.applied_index.store(last_applied.map_or(NO_INDEX, |l| l.index), Ordering::Release);
    }
}

/// The writes of one entry, readable before they are applied (a later change in the same entry
/// sees an earlier one).
struct Txn<'a> {
    tree: &'a sled::Tree,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Table schemas read so far in this entry, by catalog key: every row change needs its
    /// table's, and an entry of many rows would otherwise read and decode it once per row.
    /// Emptied by any write to the catalog.
    schemas: std::cell::RefCell<std::collections::HashMap<Vec<u8>, Option<Arc<TableSchema>>>>,
    /// Whether this entry writes the catalog (a new schema version once applied).
    catalog_written: bool,
}

impl<'a> Txn<'a> {
    fn new(tree: &'a sled::Tree) -> Self {
        Txn { tree, writes: BTreeMap::new(), schemas: Default::default(), catalog_written: false }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        Ok(self.tree.get(key).map_err(Error::sled("read the state machine"))?.map(|v| v.to_vec()))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.forget_schema(&key);
        self.writes.insert(key, Some(value));
    }

    fn remove(&mut self, key: Vec<u8>) {
        self.forget_schema(&key);
        self.writes.insert(key, None);
    }

    fn forget_schema(&mut self, key: &[u8]) {
        if keys::is_catalog_key(key) {
            self.schemas.get_mut().clear();
            self.catalog_written = true;
        }
    }

    /// Every live key/value under `prefix`, this entry's writes included, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<KeyValues, Error> {
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for kv in self.tree.scan_prefix(prefix) {
            let (k, v) = kv.map_err(Error::sled("scan the state machine"))?;
            merged.insert(k.to_vec(), Some(v.to_vec()));
        }
        for (k, v) in self.writes.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)) {
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect())
    }

    fn into_batch(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (k, v) in self.writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        batch
    }

    fn schema(&self, table: &str) -> Result<Option<Arc<TableSchema>>, Error> {
        let key = keys::catalog_key(table);
        if let Some(known) = self.schemas.borrow().get(&key) {
            return Ok(known.clone());
        }
        let schema = match self.get(&key)? {
            Some(v) => Some(Arc::new(decode::<TableSchema>(&v, "table schema")?)),
            None => None,
        };
        self.schemas.borrow_mut().insert(key, schema.clone());
        Ok(schema)
    }
}

/// The index entries (key, value) of one row under every index of `schema`.
pub(crate) fn index_entries(schema: &TableSchema, key: &Key, row: &Row) -> Result<KeyValues, String> {
    let mut out = Vec::with_capacity(schema.indexes.len());
    for ix in &schema.indexes {
        let mut values = Vec::with_capacity(ix.columns.len());
        for &c in &ix.columns {
            let v = row.get(c).ok_or_else(|| {
                format!(
                    "index {:?} names column {c}, but a row of {:?} has {} values",
                    ix.name,
                    schema.name,
                    row.len()
                )
            })?;
            values.push(v.clone());
        }
        let k = keys::index_key(&schema.name, &ix.name, &values, key);
        out.push((k, encode(&(values, key)).map_err(|e| e.to_string())?));
    }
    Ok(out)
}

fn apply_changeset(txn: &mut Txn<'_>, cs: &ChangeSet, log_id: LogId) -> Result<Applied, Error> {
    let invalid = |reason: String| Error::InvalidEntry { log_id: log_id.to_string(), reason };
    if cs.version > FORMAT_VERSION {
        return Err(invalid(format!(
            "it was written in change-set format v{}, this build reads up to v{FORMAT_VERSION}: upgrade this node",
            cs.version
        )));
    }
    if let Some(id) = &cs.init_cluster_id {
        let key = keys::meta_key(keys::META_CLUSTER_ID);
        if txn.get(&key)?.is_none() {
            txn.put(key, encode(id)?);
        }
    }
    let mut applied = Applied::default();
    for (position, req) in cs.requests.iter().enumerate() {
        if let Some(rid) = &req.request_id {
            let rkey = keys::request_key(&rid.client_id);
            if let Some(v) = txn.get(&rkey)? {
                let rec: RequestRecord = decode(&v, "request record")?;
                if rec.seq == rid.seq && rec.digest != rid.digest {
                    // Two different requests under one id raced through a leader change.
                    let err =
                        StatementError { kind: ErrorKind::Invalid, message: rid.reused(), position: None };
                    applied.duplicates.push((position, vec![Err(err)]));
                    continue;
                }
                if rec.seq == rid.seq {
                    applied.duplicates.push((position, rec.outcomes));
                    continue;
                }
                if rec.seq > rid.seq {
                    let message = format!(
                        "request {} of client {:?} is older than the client's last applied request {}",
                        rid.seq, rid.client_id, rec.seq
                    );
                    let err = StatementError { kind: ErrorKind::Invalid, message, position: None };
                    applied.duplicates.push((position, vec![Err(err)]));
                    continue;
                }
            }
        }
        for change in &req.changes {
            apply_change(txn, change, log_id.index).map_err(|e| match e {
                ChangeError::Invalid(reason) => invalid(reason),
                ChangeError::Storage(e) => e,
            })?;
        }
        if let Some(rid) = &req.request_id {
            let rec = RequestRecord { seq: rid.seq, digest: rid.digest, outcomes: req.outcomes.clone() };
            txn.put(keys::request_key(&rid.client_id), encode(&rec)?);
        }
    }
    Ok(applied)
}

/// Why a change could not be applied: an invalid entry, or a storage failure.
enum ChangeError {
    Invalid(String),
    Storage(Error),
}

impl From<Error> for ChangeError {
    fn from(e: Error) -> Self {
        ChangeError::Storage(e)
    }
}

fn must_schema(txn: &Txn<'_>, table: &str) -> Result<Arc<TableSchema>, ChangeError> {
    txn.schema(table)?.ok_or_else(|| ChangeError::Invalid(format!("table {table:?} does not exist")))
}

/// Removes the index entries of the row stored under `key_bytes`, if any. The old row is read
/// and its checksum checked even for a table without indexes: a node never applies a change
/// over a row it cannot read, it stops and names the damage (issue 16;
/// `robustness::a_damaged_row_is_refused_and_stops_its_node_with_the_recovery`).
fn remove_row_indexes(txn: &mut Txn<'_>, schema: &TableSchema, key_bytes: &[u8]) -> Result<(), ChangeError> {
    if let Some(old) = txn.get(key_bytes)? {
        let old: StoredRow = decode(&old, "row")?;
        for (k, _) in index_entries(schema, &old.key, &old.row).map_err(ChangeError::Invalid)? {
            txn.remove(k);
        }
    }
    Ok(())
}

fn apply_change(txn: &mut Txn<'_>, change: &Change, index: u64) -> Result<(), ChangeError> {
    match change {
        Change::CreateTable(schema) => {
            txn.put(keys::catalog_key(&schema.name), encode(schema)?);
        }
        Change::DropTable { table } => {
            txn.remove(keys::catalog_key(table));
            for prefix in [keys::rows_prefix(table), keys::table_indexes_prefix(table)] {
                for (k, _) in txn.scan_prefix(&prefix)? {
                    txn.remove(k);
                }
            }
        }
        Change::CreateIndex(ix) => {
            let mut schema = (*must_schema(txn, &ix.table)?).clone();
            let lname = keys::lookup_name(&ix.name);
            schema.indexes.retain(|i| keys::lookup_name(&i.name) != lname);
            schema.indexes.push(ix.clone());
            let only = TableSchema { indexes: vec![ix.clone()], ..schema.clone() };
            for (_, v) in txn.scan_prefix(&keys::rows_prefix(&ix.table))? {
                let stored: StoredRow = decode(&v, "row")?;
                for (k, v) in index_entries(&only, &stored.key, &stored.row).map_err(ChangeError::Invalid)? {
                    txn.put(k, v);
                }
            }
            txn.put(keys::catalog_key(&schema.name), encode(&schema)?);
        }
        Change::DropIndex { table, index } => {
            let mut schema = (*must_schema(txn, table)?).clone();
            let lname = keys::lookup_name(index);
            schema.indexes.retain(|i| keys::lookup_name(&i.name) != lname);
            for (k, _) in txn.scan_prefix(&keys::index_prefix(table, index))? {
                txn.remove(k);
            }
            txn.put(keys::catalog_key(&schema.name), encode(&schema)?);
        }
        Change::Insert { table, key, row } | Change::Update { table, key, row } => {
            let schema = must_schema(txn, table)?;
            if row.len() != schema.columns.len() {
                return Err(ChangeError::Invalid(format!(
                    "a row for {table:?} has {} values, the table has {} columns",
                    row.len(),
                    schema.columns.len()
                )));
            }
            let rk = keys::row_key(table, key);
            remove_row_indexes(txn, &schema, &rk)?;
            for (k, v) in index_entries(&schema, key, row).map_err(ChangeError::Invalid)? {
                txn.put(k, v);
            }
            let stored = StoredRow { key: key.clone(), row: row.clone(), written_at: index };
            txn.put(rk, encode(&stored)?);
        }
        Change::Delete { table, key } => {
            let schema = must_schema(txn, table)?;
            let rk = keys::row_key(table, key);
            remove_row_indexes(txn, &schema, &rk)?;
            txn.remove(rk);
        }
    }
    Ok(())
}

/// A [`ReadView`] over one generation tree: valid while the state lock is held, or, with a
/// `pin`, as the tree was at the pin.
pub(crate) struct View<'a> {
    pub tree: &'a sled::Tree,
    pub pin: Option<&'a Pin>,
    /// Where a failure of sled itself is recorded (see `fault`).
    pub fault: &'a Fault,
    /// [`Current::schema_version`] as of this view; `None` for views that never bind a query
    /// (snapshot building).
    pub schema_version: Option<u64>,
}

fn read_err(e: impl std::fmt::Display) -> ReadError {
    ReadError(e.to_string())
}

/// Raw key/value pairs of a range, from sled or as at a pin.
pub(crate) type RawIter<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, sled::IVec), ReadError>> + 'a>;

impl<'a> View<'a> {
    /// A failure of sled itself (an I/O error, its own corruption report): recorded, so the
    /// node stops rather than answer as if healthy (`fault`).
    fn failed(fault: &Fault, e: impl std::fmt::Display) -> ReadError {
        ReadError(fault.record(format!("sled: {e}")))
    }

    /// The failure the test hook injects, recorded as a real one would be (`fault`).
    fn injected(&self) -> Option<ReadError> {
        super::fault::injected().map(|cause| ReadError(self.fault.record(cause)))
    }

    pub(crate) fn raw_get(&self, key: &[u8]) -> Result<Option<sled::IVec>, ReadError> {
        if let Some(e) = self.injected() {
            return Err(e);
        }
        let fault = self.fault;
        match self.pin {
            None => self.tree.get(key).map_err(|e| Self::failed(fault, e)),
            Some(pin) => {
                pin.access(|| Ok(pin.resolve(key, self.tree.get(key).map_err(|e| Self::failed(fault, e))?)))
            }
        }
    }

    pub(crate) fn raw_range(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> RawIter<'a> {
        if let Some(e) = self.injected() {
            return Box::new(std::iter::once(Err(e)));
        }
        let fault = self.fault;
        let sled = self.tree.range::<Vec<u8>, _>((lo.clone(), hi.clone()));
        match self.pin {
            None => Box::new(
                sled.map(move |kv| kv.map(|(k, v)| (k.to_vec(), v)).map_err(|e| Self::failed(fault, e))),
            ),
            Some(pin) => {
                Box::new(PinnedRange { pin, sled, peeked: None, sled_done: false, lo, hi, pos: None, fault })
            }
        }
    }

    fn range(&self, prefix: &[u8], lower: Bound<&[Value]>, upper: Bound<&[Value]>) -> RawIter<'a> {
        self.raw_range(keys::lower_bound(prefix, lower), keys::upper_bound(prefix, upper))
    }

    /// The last value of a range (at the pin, if any).
    fn raw_last(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> Result<Option<sled::IVec>, ReadError> {
        if let Some(e) = self.injected() {
            return Err(e);
        }
        let fault = self.fault;
        let mut sled = self.tree.range::<Vec<u8>, _>((lo.clone(), hi.clone()));
        let Some(pin) = self.pin else {
            return sled
                .next_back()
                .transpose()
                .map(|kv| kv.map(|(_, v)| v))
                .map_err(|e| Self::failed(fault, e));
        };
        pin.access(|| {
            // sled's last key that existed at the pin, then the last changed one, whichever is
            // later.
            let mut from_sled = None;
            while let Some(kv) = sled.next_back() {
                let (k, v) = kv.map_err(|e| Self::failed(fault, e))?;
                if let Some(v) = pin.resolve(&k, Some(v)) {
                    from_sled = Some((k.to_vec(), v));
                    break;
                }
            }
            let changed = pin.last_changed(lo.as_ref().map(Vec::as_slice), hi.as_ref().map(Vec::as_slice));
            Ok(match (from_sled, changed) {
                (Some(a), Some(b)) => Some(if a.0 >= b.0 { a.1 } else { b.1 }),
                (a, b) => a.or(b).map(|(_, v)| v),
            })
        })
    }
}

/// The upper bound of the keys that start with `prefix`.
pub(crate) fn prefix_upper(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

fn bound_slice(b: &Bound<Vec<Value>>) -> Bound<&[Value]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl ReadView for View<'_> {
    fn table(&self, name: &str) -> Result<Option<TableSchema>, ReadError> {
        match self.raw_get(&keys::catalog_key(name))? {
            Some(v) => Ok(Some(decode(&v, "table schema").map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn tables(&self) -> Result<Vec<TableSchema>, ReadError> {
        let prefix = keys::catalog_prefix();
        let mut out = Vec::new();
        for kv in self.raw_range(Bound::Included(prefix.to_vec()), prefix_upper(&prefix)) {
            let (_, v) = kv?;
            out.push(decode(&v, "table schema").map_err(read_err)?);
        }
        Ok(out)
    }

    fn get(&self, table: &str, key: &[Value]) -> Result<Option<Row>, ReadError> {
        match self.raw_get(&keys::row_key(table, key))? {
            Some(v) => Ok(Some(decode::<StoredRow>(&v, "row").map_err(read_err)?.row)),
            None => Ok(None),
        }
    }

    fn scan(&self, table: &str, lower: Bound<Key>, upper: Bound<Key>) -> RowIter<'_> {
        let iter = self.range(&keys::rows_prefix(table), bound_slice(&lower), bound_slice(&upper));
        Box::new(iter.map(|kv| {
            let (_, v) = kv?;
            let stored: StoredRow = decode(&v, "row").map_err(read_err)?;
            Ok((stored.key, stored.row))
        }))
    }

    fn scan_index(
        &self,
        table: &str,
        index: &str,
        lower: Bound<Vec<Value>>,
        upper: Bound<Vec<Value>>,
    ) -> IndexIter<'_> {
        let iter = self.range(&keys::index_prefix(table, index), bound_slice(&lower), bound_slice(&upper));
        Box::new(iter.map(|kv| {
            let (_, v) = kv?;
            decode::<(Vec<Value>, Key)>(&v, "index entry").map_err(read_err)
        }))
    }

    fn last_key(&self, table: &str) -> Result<Option<Key>, ReadError> {
        let prefix = keys::rows_prefix(table);
        let lo = keys::lower_bound(&prefix, Bound::Unbounded);
        let hi = keys::upper_bound(&prefix, Bound::Unbounded);
        match self.raw_last(lo, hi)? {
            Some(v) => Ok(Some(decode::<StoredRow>(&v, "row").map_err(read_err)?.key)),
            None => Ok(None),
        }
    }

    fn schema_version(&self) -> Option<u64> {
        self.schema_version
    }
}
