//! The Raft log and vote: [`LogStore`], openraft's `RaftLogStorage` on two sled trees.
//!
//! Tree `log`: big-endian u64 index → bincode [`Entry`]. Tree `raft`: `vote`, `committed`,
//! `last_purged` → bincode values. Writes go to sled directly (they are in-memory work for sled);
//! durability comes from the [`Flusher`]: `save_vote` awaits a flush, `append` hands openraft's
//! callback to it.
//!
//! # A restarted leader must win an election again
//! openraft 0.9 restores a node whose stored vote is its own *committed* vote straight to
//! leader, in the same term, without an election (openraft#1511; upstream made it optional in
//! 2026, after 0.9.25). That is only safe if the leader's log lost nothing, but Raft commits an
//! entry once a majority has it on disk, and a majority need not include the leader: a leader
//! killed before its own fsync comes back without entries its followers hold and that clients
//! were told are committed. Resuming the same term, it then proposes different entries under
//! the same (term, index) log ids, which the followers take for the ones they have: replicas
//! diverge and acknowledged writes vanish. The nemesis found exactly this (kill-all and
//! kill-random: G0/G-single-item, acknowledged appends missing). So [`LogStore::read_vote`], which
//! openraft calls only at start-up, hands back this node's own committed vote as uncommitted:
//! the node starts as a follower, and whoever leads next wins a real election in a higher term,
//! where the up-to-date-log rule picks a node that has every committed entry.

use super::flusher::{Done, Flusher};
use super::watermark::Mark;
use super::{decode, encode, Error};
use crate::typ::{Entry, LogId, LogState, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogId, RaftLogReader, StorageIOError};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The two trees as the watermark reads them (see `watermark`), apart from any [`LogStore`]:
/// the flusher needs them before the log store exists.
pub(crate) struct Trees {
    log: sled::Tree,
    raft: sled::Tree,
}

impl Trees {
    pub(crate) fn open(db: &sled::Db) -> Result<Trees, Error> {
        let log = db.open_tree("log").map_err(Error::sled("open the log tree"))?;
        let raft = db.open_tree("raft").map_err(Error::sled("open the raft metadata tree"))?;
        Ok(Trees { log, raft })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Option<T> {
        self.raft.get(key).ok().flatten().and_then(|v| decode(&v, "raft metadata").ok())
    }

    /// What the database holds: the vote's term, and the last log index (or the purge point).
    pub(crate) fn holds(&self) -> Mark {
        let term = self.get::<Vote>(KEY_VOTE).map_or(0, |v| v.leader_id().term);
        let last = self
            .log
            .last()
            .ok()
            .flatten()
            .map_or(0, |(k, _)| u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])));
        let purged = self.get::<LogId>(KEY_LAST_PURGED).map_or(0, |l| l.index);
        Mark { term, index: last.max(purged) }
    }

    /// What a flush starting now makes durable for good: the vote's term, and the log up to the
    /// committed index (entries above it may still be truncated).
    pub(crate) fn durable_bound(&self) -> Mark {
        let holds = self.holds();
        let committed = self.get::<Option<LogId>>(KEY_COMMITTED).flatten().map_or(0, |l| l.index);
        Mark { term: holds.term, index: holds.index.min(committed) }
    }
}

/// The highest log index this node knows to be committed, as openraft last reported it to
/// [`LogStore`] (`save_committed`, called on every commit before the entries are applied).
/// openraft 0.9's metrics publish the applied index but not the committed one; readiness and
/// the metrics need both to tell how far apply trails. Cheap to clone; clones share the value.
#[derive(Clone, Debug, Default)]
pub struct CommittedIndex(Arc<std::sync::atomic::AtomicU64>);

impl CommittedIndex {
    /// The committed index (0 before anything is known committed).
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, index: u64) {
        self.0.store(index, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The Raft log and vote of this node. Cheap to clone; clones share the trees.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// This node's id: its own committed vote is not restored as leadership (see the module doc).
    node_id: u64,
    /// The committed index openraft last reported through `save_committed`.
    committed: CommittedIndex,
    log: sled::Tree,
    raft: sled::Tree,
    flusher: Arc<Flusher>,
}

fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: &Error) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

impl LogStore {
    pub(crate) fn open(db: &sled::Db, node_id: u64, flusher: Arc<Flusher>) -> Result<LogStore, Error> {
        let log = db.open_tree("log").map_err(Error::sled("open the log tree"))?;
        let raft = db.open_tree("raft").map_err(Error::sled("open the raft metadata tree"))?;
        let committed = CommittedIndex::default();
        let store = LogStore { inner: Arc::new(Inner { node_id, committed, log, raft, flusher }) };
        if let Some(c) = store.meta::<Option<LogId>>(KEY_COMMITTED)?.flatten() {
            store.inner.committed.set(c.index);
        }
        // A purge that crashed half-way left entries at or below `last_purged`: finish it.
        if let Some(purged) = store.last_purged()? {
            store.remove_upto(purged.index)?;
        }
        Ok(store)
    }

    /// This node's own committed vote, as read at start-up, becomes the uncommitted vote of the
    /// same term: it still voted for itself in that term (so it grants no other vote there), but
    /// it is no longer the leader until an election says so. See the module doc.
    fn not_restored_as_leader(&self, vote: Vote) -> Vote {
        if vote.is_committed() && vote.leader_id().voted_for() == Some(self.inner.node_id) {
            tracing::info!(
                term = vote.leader_id().term,
                "this node led before it stopped; it starts as a follower and must win an election to lead again"
            );
            Vote::new(vote.leader_id().term, self.inner.node_id)
        } else {
            vote
        }
    }

    /// A handle on the committed index this store is told about (see [`CommittedIndex`]).
    pub fn committed_index(&self) -> CommittedIndex {
        self.inner.committed.clone()
    }

    /// A vote or any log entry exists: the node was initialized or joined a cluster before.
    pub fn has_state(&self) -> Result<bool, Error> {
        Ok(self.meta::<Vote>(KEY_VOTE)?.is_some()
            || self.last_purged()?.is_some()
            || !self.inner.log.is_empty())
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, Error> {
        let what = String::from_utf8_lossy(key);
        match self.inner.raft.get(key).map_err(Error::sled(format!("read the {what}")))? {
            Some(v) => Ok(Some(decode(&v, &what)?)),
            None => Ok(None),
        }
    }

    fn set_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), Error> {
        let what = String::from_utf8_lossy(key);
        self.inner.raft.insert(key, encode(value)?).map_err(Error::sled(format!("write the {what}")))?;
        Ok(())
    }

    fn last_purged(&self) -> Result<Option<LogId>, Error> {
        self.meta(KEY_LAST_PURGED)
    }

    fn remove_upto(&self, index: u64) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for k in self.inner.log.range(..=log_key(index)).keys() {
            batch.remove(k.map_err(Error::sled("read the log"))?);
        }
        self.inner.log.apply_batch(batch).map_err(Error::sled("purge the log"))
    }

    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, Error> {
        let lo = range.0.map(log_key);
        let hi = range.1.map(log_key);
        let mut out = Vec::new();
        for kv in self.inner.log.range::<[u8; 8], _>((lo, hi)) {
            let (_, v) = kv.map_err(Error::sled("read the log"))?;
            out.push(decode::<Entry>(&v, "log entry")?);
        }
        Ok(out)
    }

    /// Writes entries to the log tree, atomically: all or none of them after a crash.
    ///
    /// One entry — every append at low concurrency — is a single `insert`, which sled makes
    /// atomic by itself; more are one `apply_batch`. A batch makes sled roll its I/O buffer
    /// before and after it reserves the batch's manifest (`pin_log`), and each buffer so sealed
    /// is written by one of sled's I/O threads before the flush may cover it: a one-entry batch
    /// added a thread hand-off or two to every replication round on every node.
    fn write_entries(&self, entries: impl IntoIterator<Item = Entry>) -> Result<Option<LogId>, Error> {
        let mut encoded = Vec::new();
        let mut last = None;
        let mut busy = None;
        for e in entries {
            busy.get_or_insert_with(|| crate::watchdog::LOG_APPEND.enter(e.log_id.index));
            encoded.push((log_key(e.log_id.index), encode(&e)?));
            last = Some(e.log_id);
        }
        let single = if encoded.len() == 1 { encoded.pop() } else { None };
        if let Some((key, value)) = single {
            self.inner.log.insert(key, value).map_err(Error::sled("append to the log"))?;
        } else {
            let mut batch = sled::Batch::default();
            for (key, value) in encoded {
                batch.insert(&key, value);
            }
            self.inner.log.apply_batch(batch).map_err(Error::sled("append to the log"))?;
        }
        Ok(last)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    #[tracing::instrument(level = "trace", skip(self))]
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        self.entries(range).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    #[tracing::instrument(level = "trace", skip(self))]
    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        let read = |e: Error| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e);
        let last_purged_log_id = self.last_purged().map_err(read)?;
        let last = match self.inner.log.last().map_err(Error::sled("read the log")).map_err(read)? {
            Some((_, v)) => Some(*decode::<Entry>(&v, "log entry").map_err(read)?.get_log_id()),
            None => None,
        };
        let last_log_id = std::cmp::max(last, last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    #[tracing::instrument(level = "trace", skip(self))]
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let write = |e: Error| io_err(ErrorSubject::Vote, ErrorVerb::Write, &e);
        self.set_meta(KEY_VOTE, vote).map_err(write)?;
        self.inner
            .flusher
            .flush()
            .await
            .map_err(|e| write(Error::Io { context: "persist the vote".into(), source: e }))
    }

    #[tracing::instrument(level = "trace", skip(self))]
    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let vote: Option<Vote> =
            self.meta(KEY_VOTE).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, &e))?;
        Ok(vote.map(|v| self.not_restored_as_leader(v)))
    }

    /// Not flushed: losing it only means re-applying fewer entries at start-up (see `store`).
    #[tracing::instrument(level = "trace", skip(self))]
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.set_meta(KEY_COMMITTED, &committed)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        self.inner.committed.set(committed.map_or(0, |l| l.index));
        Ok(())
    }

    #[tracing::instrument(level = "trace", skip(self))]
    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> =
            self.meta(KEY_COMMITTED).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, &e))?;
        Ok(committed.flatten())
    }

    #[tracing::instrument(level = "trace", skip(self, entries, callback))]
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        match self.write_entries(entries) {
            Ok(last) => {
                tracing::trace!(last = ?last, "appended; waiting for fsync");
                // The entries are readable now; the callback fires once they are on disk.
                self.inner.flusher.flush_then(Done::Log(callback));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))
            }
        }
    }

    /// Removes entries from `log_id.index` on, in one atomic batch (no hole). Not flushed: if it
    /// is lost in a crash, the node simply still holds uncommitted entries it was told to drop,
    /// as if the request had never arrived; the next `append`'s fsync persists it.
    #[tracing::instrument(level = "trace", skip(self))]
    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let run = || -> Result<(), Error> {
            let mut batch = sled::Batch::default();
            for k in self.inner.log.range(log_key(log_id.index)..).keys() {
                batch.remove(k.map_err(Error::sled("read the log"))?);
            }
            self.inner.log.apply_batch(batch).map_err(Error::sled("truncate the log"))
        };
        run().map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }

    /// Records `last_purged` first, then removes the entries up to it in one batch: a crash in
    /// between leaves entries at or below `last_purged`, which readers ignore and `open` removes;
    /// never a hole. Not flushed (a purge lost in a crash leaves extra entries, harmless).
    #[tracing::instrument(level = "trace", skip(self))]
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let run = || -> Result<(), Error> {
            self.set_meta(KEY_LAST_PURGED, &log_id)?;
            self.remove_upto(log_id.index)
        };
        run().map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }
}
