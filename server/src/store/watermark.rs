//! The durable watermark: a lower bound, kept outside sled, on the Raft state sled must hold.
//!
//! sled checksums what it writes, but when it meets a damaged message while recovering its log
//! at start-up it takes it for a torn write and drops it *and everything after it*, silently
//! (sled 0.34.7 `pagecache/iterator.rs`). For Raft that is the worst kind of fault: a node that
//! lost its vote may vote twice in a term, and one that lost committed entries it acknowledged
//! may help elect a leader without them. So after each fsync the flusher records what that fsync
//! made durable — the vote's term and the highest log index that was both committed and on disk
//! — in `data_dir/watermark`, and `store::open` refuses a database that holds less: the node
//! exits with one line naming the data dir and the recovery (remove the node, wipe the dir, join
//! under a new id), instead of serving or voting on lost state.
//!
//! Committed entries are never truncated and the purged prefix is remembered (`last_purged`),
//! so a healthy database never goes below the mark. The mark is written at most once a second
//! (and at once when the vote's term changed), so what it protects lags by about a second; a
//! crash in between loses nothing the mark claims. The file is 20 bytes: term and index (u64 LE)
//! and a CRC-32 of them; a torn or damaged mark is reported and ignored, never trusted.

use super::Error;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) const FILE: &str = "watermark";

/// How often the mark may advance for log progress alone.
const EVERY: Duration = Duration::from_secs(1);

/// What a database must hold: at least this vote term, and log entries (or a purge) up to this
/// index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    pub term: u64,
    pub index: u64,
}

impl Mark {
    fn encode(self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&self.term.to_le_bytes());
        b[8..16].copy_from_slice(&self.index.to_le_bytes());
        let crc = crc32fast::hash(&b[..16]);
        b[16..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Mark> {
        let b: &[u8; 20] = b.try_into().ok()?;
        let crc = u32::from_le_bytes(b[16..].try_into().ok()?);
        (crc32fast::hash(&b[..16]) == crc).then(|| Mark {
            term: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            index: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        })
    }
}

/// Reads the mark of `dir`; None when there is none yet, or it is damaged (reported).
pub(crate) fn read(dir: &Path) -> Result<Option<Mark>, Error> {
    let path = dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let mark = Mark::decode(&bytes);
            if mark.is_none() {
                tracing::warn!(path = %path.display(), "the durable watermark is damaged; it is ignored and rewritten");
            }
            Ok(mark)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::DataDir { path, source }),
    }
}

/// Refuses a database that holds less than the mark (see the module doc).
pub(crate) fn check(dir: &Path, db_path: &Path, holds: Mark) -> Result<(), Error> {
    let Some(mark) = read(dir)? else { return Ok(()) };
    if holds.term < mark.term || holds.index < mark.index {
        return Err(Error::Corrupt {
            path: db_path.to_path_buf(),
            reason: format!(
                "it lost Raft state that was durable: it holds vote term {} and log index {}, but term \
                 {} and index {} were fsynced before (sled drops everything after a damaged record \
                 when it opens; the files were damaged)",
                holds.term, holds.index, mark.term, mark.index
            ),
        });
    }
    Ok(())
}

/// Keeps the mark up to date from the flusher thread.
pub(crate) struct Keeper {
    file: Option<(PathBuf, File)>,
    /// What the database holds now (read from its trees).
    holds: Box<dyn Fn() -> Mark + Send>,
    written: Mark,
    at: Instant,
}

impl Keeper {
    pub(crate) fn new(dir: &Path, holds: Box<dyn Fn() -> Mark + Send>) -> Result<Keeper, Error> {
        let path = dir.join(FILE);
        let written = read(dir)?.unwrap_or_default();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| Error::DataDir { path: path.clone(), source })?;
        Ok(Keeper { file: Some((path, file)), holds, written, at: Instant::now() })
    }

    /// What the flush about to start will make durable.
    pub(crate) fn before_flush(&self) -> Mark {
        if self.file.is_none() {
            return Mark::default();
        }
        (self.holds)()
    }

    /// The flush succeeded: advance the mark to `durable` when it is due.
    pub(crate) fn after_flush(&mut self, durable: Mark) {
        let Some((path, file)) = &self.file else { return };
        let advanced = durable.term > self.written.term || durable.index > self.written.index;
        let due = durable.term > self.written.term || self.at.elapsed() >= EVERY;
        if !(advanced && due) {
            return;
        }
        let mark =
            Mark { term: durable.term.max(self.written.term), index: durable.index.max(self.written.index) };
        match file.write_all_at(&mark.encode(), 0).and_then(|()| file.sync_data()) {
            Ok(()) => {
                self.written = mark;
                self.at = Instant::now();
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not write the durable watermark")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_damage_is_not_trusted() {
        let m = Mark { term: 7, index: 1234 };
        assert_eq!(Mark::decode(&m.encode()), Some(m));
        let mut b = m.encode();
        b[3] ^= 1;
        assert_eq!(Mark::decode(&b), None);
        assert_eq!(Mark::decode(&b[..10]), None);
    }
}
