//! Backup files: [`Client::backup`] saves the stream of `Admin.Backup` (a consistent copy of one
//! node's applied state) to a file, and [`Client::restore`] loads such a file into a cluster
//! through ordinary writes, so every replica gets it through the log.
//!
//! # File format (version [`FORMAT`])
//! ```text
//! "RSQLBKUP"  u16 LE format version
//! frame*      u32 LE length · one BackupChunk (protobuf): header, then per table its
//!             CREATE statements and its rows, then the counts (end)
//! u32 LE      CRC-32 of every byte before it
//! ```
//! The header states the applied index (and term, cluster id, node, time, server version) the
//! copy shows. A file is written as `FILE.part`, fsynced and renamed into place only once the
//! stream ended with its counts, so a failed backup never leaves a file that looks whole.
//!
//! # Restore
//! The whole file is read and checked first (magic, version, every frame's length and
//! decoding, header first, rows after a table, the counts, the checksum, nothing after it);
//! a file that fails is refused before anything is sent, and the cluster is unchanged. Then,
//! if the cluster holds no table (or, with `force`, after dropping every table in one
//! transaction), each table is created with its indexes in one request and its rows loaded in
//! requests of at most [`ROWS_PER_REQUEST`] rows and about [`BYTES_PER_REQUEST`] bytes. Each
//! request has a request id, so a retry after a leader change applies once. A restore stopped
//! half-way (the cluster lost its majority) says how far it got; running it again with `force`
//! starts over. Tables without a PRIMARY KEY get new hidden row ids; the exactly-once records
//! and the cluster id of the source are not carried over.

use crate::{pb, Client, Error, QueryOptions, Value};
use prost::Message;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

const MAGIC: &[u8; 8] = b"RSQLBKUP";
/// The backup file format this build writes and reads.
pub const FORMAT: u16 = 1;
/// The largest frame a file may hold: a chunk of rows, or one row as large as a log entry may
/// carry (64 MiB) with room for its framing.
const MAX_FRAME: u32 = 80 << 20;
/// Rows per restore request at most.
pub const ROWS_PER_REQUEST: usize = 500;
/// Bytes of row data per restore request, about (a larger single row goes alone).
pub const BYTES_PER_REQUEST: usize = 1 << 20;
/// Parameters per INSERT at most (the server's default `--max-params` is 32,766).
const PARAMS_PER_REQUEST: usize = 30_000;
/// The largest row a restore can send: it must fit in one request (16 MiB), with room.
const MAX_ROW_BYTES: usize = 15 << 20;

/// What a backup file holds, as its header and counts say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub applied_index: u64,
    pub applied_term: u64,
    pub cluster_id: String,
    pub node_id: u64,
    pub taken_at_unix_ms: i64,
    pub server_version: String,
    pub tables: u64,
    pub rows: u64,
    /// The file's size.
    pub bytes: u64,
}

/// How far a backup or restore has got, for a progress display.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub tables: u64,
    pub rows: u64,
    /// Known for a restore (from the file); 0 during a backup.
    pub rows_total: u64,
    pub bytes: u64,
}

fn damaged(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Backup {
        message: format!("{} is not a usable raftsql backup: {why}; nothing was restored", path.display()),
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Backup { message: format!("cannot {what} {}: {e}", path.display()) }
}

/// Writes frames, hashing every byte.
struct Writer {
    w: BufWriter<std::fs::File>,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl Writer {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.crc.update(b);
        self.bytes += b.len() as u64;
        self.w.write_all(b)
    }

    fn frame(&mut self, c: &pb::BackupChunk) -> std::io::Result<()> {
        let body = c.encode_to_vec();
        self.put(&(body.len() as u32).to_le_bytes())?;
        self.put(&body)
    }
}

/// Reads frames, hashing every byte; checks the structure as it goes.
struct Reader<R> {
    r: R,
    crc: crc32fast::Hasher,
    path: PathBuf,
    frames: u64,
}

impl<R: Read> Reader<R> {
    fn open(mut r: R, path: &Path) -> Result<Self, Error> {
        let mut head = [0u8; 10];
        r.read_exact(&mut head).map_err(|e| damaged(path, format!("cannot read its header ({e})")))?;
        if &head[..8] != MAGIC {
            return Err(damaged(path, "it does not start with the backup magic bytes (not a backup file)"));
        }
        let version = u16::from_le_bytes([head[8], head[9]]);
        if version != FORMAT {
            return Err(damaged(
                path,
                format!("it is format v{version}; this raftsql reads v{FORMAT} (use a matching raftsql)"),
            ));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        Ok(Reader { r, crc, path: path.to_path_buf(), frames: 0 })
    }

    fn frame(&mut self) -> Result<pb::BackupChunk, Error> {
        let n = self.frames;
        let mut len = [0u8; 4];
        self.r
            .read_exact(&mut len)
            .map_err(|e| damaged(&self.path, format!("frame {n}: {e} (truncated?)")))?;
        self.crc.update(&len);
        let len = u32::from_le_bytes(len);
        if len > MAX_FRAME {
            return Err(damaged(&self.path, format!("frame {n} claims {len} bytes, more than {MAX_FRAME}")));
        }
        let mut body = Vec::new();
        (&mut self.r)
            .take(len as u64)
            .read_to_end(&mut body)
            .map_err(|e| damaged(&self.path, format!("frame {n}: {e}")))?;
        if body.len() != len as usize {
            return Err(damaged(&self.path, format!("frame {n} is cut short (truncated file)")));
        }
        self.crc.update(&body);
        self.frames += 1;
        pb::BackupChunk::decode(body.as_slice()).map_err(|e| damaged(&self.path, format!("frame {n}: {e}")))
    }

    /// After the end frame: the checksum, then nothing.
    fn finish(mut self) -> Result<(), Error> {
        let mut sum = [0u8; 4];
        self.r
            .read_exact(&mut sum)
            .map_err(|e| damaged(&self.path, format!("its checksum is missing ({e})")))?;
        let (stored, computed) = (u32::from_le_bytes(sum), self.crc.finalize());
        if stored != computed {
            return Err(damaged(
                &self.path,
                format!("checksum mismatch (it says {stored:08x}, its bytes give {computed:08x}): the file was changed or damaged"),
            ));
        }
        let mut extra = [0u8; 1];
        match self.r.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(damaged(&self.path, "bytes follow its checksum")),
            Err(e) => Err(damaged(&self.path, format!("cannot read its end ({e})"))),
        }
    }
}

/// One table of a backup file as a restore loads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub name: String,
    pub create_sql: String,
    pub index_sql: Vec<String>,
    pub columns: Vec<String>,
}

/// Every frame of a checked file, in order: `Table` before its `Rows`.
enum Item {
    Table(Table),
    Rows(Vec<Vec<Value>>),
}

/// Reads a backup file through, checking all of it, handing each table and batch of rows to
/// `each` in order. Returns the header and counts.
fn read_file(path: &Path, mut each: impl FnMut(Item) -> Result<(), Error>) -> Result<Summary, Error> {
    let f = std::fs::File::open(path).map_err(|e| io_error("open", path, e))?;
    let bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut r = Reader::open(BufReader::new(f), path)?;
    use pb::backup_chunk::Item as I;
    let header = match r.frame()?.item {
        Some(I::Header(h)) => h,
        _ => return Err(damaged(path, "its first frame is not the header")),
    };
    let (mut tables, mut rows, mut columns) = (0u64, 0u64, None::<usize>);
    loop {
        match r.frame()?.item {
            Some(I::Table(t)) => {
                if t.name.is_empty() || t.create_sql.is_empty() || t.columns.is_empty() {
                    return Err(damaged(
                        path,
                        format!("table {tables} lacks a name, its SQL or its columns"),
                    ));
                }
                tables += 1;
                columns = Some(t.columns.len());
                each(Item::Table(Table {
                    name: t.name,
                    create_sql: t.create_sql,
                    index_sql: t.index_sql,
                    columns: t.columns,
                }))?;
            }
            Some(I::Rows(batch)) => {
                let Some(width) = columns else {
                    return Err(damaged(path, "it has rows before any table"));
                };
                let mut out = Vec::with_capacity(batch.rows.len());
                for row in batch.rows {
                    if row.values.len() != width {
                        return Err(damaged(
                            path,
                            format!(
                                "a row of table {tables} has {} values for {width} columns",
                                row.values.len()
                            ),
                        ));
                    }
                    out.push(row.values.into_iter().map(Value::from_pb).collect());
                }
                rows += out.len() as u64;
                each(Item::Rows(out))?;
            }
            Some(I::End(end)) => {
                if end.tables != tables || end.rows != rows {
                    return Err(damaged(
                        path,
                        format!(
                            "it says {} tables and {} rows, it holds {tables} and {rows}",
                            end.tables, end.rows
                        ),
                    ));
                }
                break;
            }
            Some(I::Header(_)) => return Err(damaged(path, "a second header")),
            None => return Err(damaged(path, "an empty frame")),
        }
    }
    r.finish()?;
    Ok(Summary {
        applied_index: header.applied_index,
        applied_term: header.applied_term,
        cluster_id: header.cluster_id,
        node_id: header.node_id,
        taken_at_unix_ms: header.taken_at_unix_ms,
        server_version: header.server_version,
        tables,
        rows,
        bytes,
    })
}

/// Checks a whole backup file without sending anything; returns what it holds.
pub fn verify(path: &Path) -> Result<Summary, Error> {
    read_file(path, |_| Ok(()))
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Text(s) => s.len() + 8,
        Value::Blob(b) => b.len() + 8,
        _ => 16,
    }
}

/// How long a backup may take to start streaming, in multiples of the client's deadline (10 min
/// at the default 10 s): the node copies its whole applied state before the first chunk.
const OPEN_DEADLINES: u32 = 60;
/// How long the stream may then go without a chunk, in multiples of the client's deadline (60 s
/// at the default): the node sends chunks of about 1 MiB as fast as it reads them.
const IDLE_DEADLINES: u32 = 6;

impl Client {
    /// Saves a consistent copy of the cluster's state to `path`: the leader's applied state
    /// (found with a STRONG read first), or `from`'s if given. Writes go on meanwhile. The file
    /// appears only once complete (see the module doc); `progress` is called after each chunk.
    /// A node that does not start streaming within 60 of the client's deadlines, or then sends
    /// nothing for 6 of them, fails the backup with UNAVAILABLE (no file is left).
    pub async fn backup(
        &self,
        path: &Path,
        from: Option<&str>,
        mut progress: impl FnMut(&Progress),
    ) -> Result<Summary, Error> {
        let addr = match from {
            Some(a) => a.to_string(),
            None => {
                // A STRONG read goes to the leader and teaches the client where it is.
                let opts = QueryOptions { consistency: crate::Consistency::Strong, ..Default::default() };
                self.query("SELECT 1", &[], opts).await?;
                self.cached_leader().unwrap_or_else(|| self.addrs()[0].clone())
            }
        };
        let mut client = pb::admin_client::AdminClient::new(self.channel(&addr)?)
            .max_decoding_message_size(MAX_FRAME as usize);
        let stalled = |what: &str, bound: Duration| {
            Error::Unavailable {
            message: format!("the backup from {addr} {what} within {bound:?}: is the node overloaded or cut off? no file was written"),
        }
        };
        let open = self.deadline() * OPEN_DEADLINES;
        let mut stream = tokio::time::timeout(open, client.backup(self.request(pb::BackupRequest {})))
            .await
            .map_err(|_| stalled("did not start", open))?
            .map_err(|s| Error::from_status(&addr, s))?
            .into_inner();
        let idle = self.deadline() * IDLE_DEADLINES;
        let part = PathBuf::from(format!("{}.part", path.display()));
        let file = std::fs::File::create(&part).map_err(|e| io_error("create", &part, e))?;
        let mut w = Writer { w: BufWriter::new(file), crc: crc32fast::Hasher::new(), bytes: 0 };
        let result = async {
            w.put(MAGIC)
                .and_then(|()| w.put(&FORMAT.to_le_bytes()))
                .map_err(|e| io_error("write", &part, e))?;
            let mut p = Progress::default();
            let mut summary = None;
            let mut header = None;
            while let Some(chunk) = tokio::time::timeout(idle, stream.message())
                .await
                .map_err(|_| stalled("sent nothing", idle))?
                .map_err(|s| Error::from_status(&addr, s))?
            {
                w.frame(&chunk).map_err(|e| io_error("write", &part, e))?;
                use pb::backup_chunk::Item as I;
                match chunk.item {
                    Some(I::Header(h)) => header = Some(h),
                    Some(I::Table(_)) => p.tables += 1,
                    Some(I::Rows(r)) => p.rows += r.rows.len() as u64,
                    Some(I::End(end)) => {
                        let h = header.take().unwrap_or_default();
                        summary = Some(Summary {
                            applied_index: h.applied_index,
                            applied_term: h.applied_term,
                            cluster_id: h.cluster_id,
                            node_id: h.node_id,
                            taken_at_unix_ms: h.taken_at_unix_ms,
                            server_version: h.server_version,
                            tables: end.tables,
                            rows: end.rows,
                            bytes: 0,
                        });
                    }
                    None => {}
                }
                p.bytes = w.bytes;
                progress(&p);
            }
            let Some(mut summary) = summary else {
                return Err(Error::Unavailable {
                    message: format!(
                        "the backup stream from {addr} ended before its end: no file was written"
                    ),
                });
            };
            let sum = w.crc.clone().finalize();
            w.w.write_all(&sum.to_le_bytes()).map_err(|e| io_error("write", &part, e))?;
            summary.bytes = w.bytes + 4;
            let file = w.w.into_inner().map_err(|e| io_error("write", &part, e.into_error()))?;
            file.sync_all().map_err(|e| io_error("fsync", &part, e))?;
            Ok(summary)
        }
        .await;
        match result {
            Ok(summary) => {
                std::fs::rename(&part, path)
                    .map_err(|e| io_error("rename the finished backup to", path, e))?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    if let Ok(d) = std::fs::File::open(dir) {
                        let _ = d.sync_all();
                    }
                }
                Ok(summary)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                Err(e)
            }
        }
    }

    /// Loads the backup file at `path` into this cluster (see the module doc): the file is
    /// checked whole first; the cluster must hold no table unless `force`, which drops every
    /// table first. `progress` is called after each request.
    pub async fn restore(
        &self,
        path: &Path,
        force: bool,
        mut progress: impl FnMut(&Progress),
    ) -> Result<Summary, Error> {
        let checked = path.to_path_buf();
        let summary = tokio::task::spawn_blocking(move || verify(&checked))
            .await
            .map_err(|e| Error::Internal { message: format!("checking the backup file failed: {e}") })??;
        let opts = QueryOptions { consistency: crate::Consistency::Strong, ..Default::default() };
        let existing = self.query("SELECT name FROM sqlite_schema WHERE type = 'table'", &[], opts).await?;
        let names: Vec<String> = existing
            .rows
            .iter()
            .filter_map(|r| match r.first() {
                Some(Value::Text(s)) => Some(s.clone()),
                _ => None,
            })
            .collect();
        if !names.is_empty() && !force {
            let mut shown = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if names.len() > 5 {
                shown.push_str(", …");
            }
            return Err(Error::Backup {
                message: format!(
                    "the cluster already holds {} table(s) ({shown}): restore loads into an empty cluster; \
                     nothing was changed. Use --force to drop every table first",
                    names.len()
                ),
            });
        }
        if !names.is_empty() {
            let drops = names.iter().map(|n| (format!("DROP TABLE {}", quote(n)), vec![])).collect();
            self.execute_restoring(drops, true)
                .await
                .and_then(|r| first_error(r, "dropping the existing tables"))?;
        }
        let mut p = Progress { rows_total: summary.rows, ..Default::default() };
        progress(&p);
        // The file is read a second time to load it; requests are sent as it is read.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Item, Error>>(4);
        let reading = path.to_path_buf();
        let reader = tokio::task::spawn_blocking(move || {
            let r = read_file(&reading, |item| {
                tx.blocking_send(Ok(item)).map_err(|_| Error::Internal { message: "restore stopped".into() })
            });
            if let Err(e) = r {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let mut table: Option<Table> = None;
        let mut pending: Vec<Vec<Value>> = Vec::new();
        let mut pending_bytes = 0usize;
        let stopped = |table: &Option<Table>, p: &Progress, e: Error| -> Error {
            let at = table
                .as_ref()
                .map_or("before the first table".to_string(), |t| format!("in table {}", t.name));
            Error::Backup {
                message: format!(
                    "restore stopped {at} after {} of {} rows: {e}. The cluster holds part of the backup: \
                     run the restore again with --force to start over",
                    p.rows, p.rows_total
                ),
            }
        };
        while let Some(item) = rx.recv().await {
            let item = item.map_err(|e| stopped(&table, &p, e))?;
            match item {
                Item::Table(t) => {
                    if let Some(prev) = &table {
                        self.insert_rows(prev, &mut pending, &mut pending_bytes, &mut p)
                            .await
                            .map_err(|e| stopped(&table, &p, e))?;
                        progress(&p);
                    }
                    let mut statements = vec![(t.create_sql.clone(), vec![])];
                    statements.extend(t.index_sql.iter().map(|s| (s.clone(), vec![])));
                    let created = self.execute_restoring(statements, true).await;
                    created
                        .and_then(|r| first_error(r, "creating the table"))
                        .map_err(|e| stopped(&Some(t.clone()), &p, e))?;
                    p.tables += 1;
                    table = Some(t);
                    progress(&p);
                }
                Item::Rows(rows) => {
                    let t = table.as_ref().expect("read_file checks rows follow a table");
                    let per_request = ROWS_PER_REQUEST.min((PARAMS_PER_REQUEST / t.columns.len()).max(1));
                    for row in rows {
                        let size: usize = row.iter().map(value_bytes).sum();
                        if size > MAX_ROW_BYTES {
                            return Err(stopped(
                                &table,
                                &p,
                                Error::Backup {
                                    message: format!(
                                        "a row of {size} bytes is larger than one request may carry ({MAX_ROW_BYTES})"
                                    ),
                                },
                            ));
                        }
                        if !pending.is_empty()
                            && (pending.len() >= per_request || pending_bytes + size > BYTES_PER_REQUEST)
                        {
                            self.insert_rows(t, &mut pending, &mut pending_bytes, &mut p)
                                .await
                                .map_err(|e| stopped(&table, &p, e))?;
                            progress(&p);
                        }
                        pending_bytes += size;
                        pending.push(row);
                    }
                }
            }
        }
        if let Some(t) = &table {
            self.insert_rows(t, &mut pending, &mut pending_bytes, &mut p)
                .await
                .map_err(|e| stopped(&table, &p, e))?;
            progress(&p);
        }
        reader
            .await
            .map_err(|e| Error::Internal { message: format!("reading the backup file failed: {e}") })?;
        if p.rows != summary.rows || p.tables != summary.tables {
            return Err(stopped(
                &table,
                &p,
                Error::Backup { message: "the file changed while it was loaded".into() },
            ));
        }
        Ok(summary)
    }

    /// Sends `rows` of table `t` as one INSERT request and empties it.
    async fn insert_rows(
        &self,
        t: &Table,
        rows: &mut Vec<Vec<Value>>,
        bytes: &mut usize,
        p: &mut Progress,
    ) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let cols = t.columns.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
        let one = format!("({})", vec!["?"; t.columns.len()].join(", "));
        let sql =
            format!("INSERT INTO {} ({cols}) VALUES {}", quote(&t.name), vec![one; rows.len()].join(", "));
        let n = rows.len() as u64;
        let params: Vec<Value> = rows.drain(..).flatten().collect();
        self.execute_restoring(vec![(sql, params)], true)
            .await
            .and_then(|r| first_error(r, "loading rows"))?;
        p.rows += n;
        p.bytes += *bytes as u64;
        *bytes = 0;
        Ok(())
    }
}

/// The first failed statement of a request, as its error.
fn first_error(r: crate::ExecuteResult, doing: &str) -> Result<(), Error> {
    match r.results.into_iter().find_map(|s| s.err()) {
        Some(e) => Err(Error::Backup { message: format!("{doing}: {e}") }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A well-formed file of `tables` tables of `rows` rows each, as `Client::backup` writes it.
    fn file(tables: usize, rows: usize) -> Vec<u8> {
        let mut body = Vec::new();
        let mut frame = |c: pb::BackupChunk| {
            let b = c.encode_to_vec();
            body.extend_from_slice(&(b.len() as u32).to_le_bytes());
            body.extend_from_slice(&b);
        };
        use pb::backup_chunk::Item as I;
        let chunk = |item| pb::BackupChunk { item: Some(item) };
        frame(chunk(I::Header(pb::BackupHeader { applied_index: 7, node_id: 1, ..Default::default() })));
        for t in 0..tables {
            frame(chunk(I::Table(pb::BackupTable {
                name: format!("t{t}"),
                create_sql: format!("CREATE TABLE t{t} (a INTEGER, b TEXT)"),
                index_sql: vec![],
                columns: vec!["a".into(), "b".into()],
            })));
            let row = |i: usize| pb::Row {
                values: vec![Value::Integer(i as i64).to_pb(), Value::Text(format!("r{i}")).to_pb()],
            };
            frame(chunk(I::Rows(pb::BackupRows { rows: (0..rows).map(row).collect() })));
        }
        frame(chunk(I::End(pb::BackupEnd { tables: tables as u64, rows: (tables * rows) as u64 })));
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(&body);
        let sum = crc32fast::hash(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// A node that accepts the connection and never answers cannot hold a backup: it fails
    /// within its bound (60 deadlines of 50 ms here) and leaves no file.
    #[tokio::test]
    async fn a_backup_from_a_node_that_never_answers_fails_in_bounded_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let client = Client::connect([addr.as_str()]).await.unwrap().with_deadline(Duration::from_millis(50));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.rsqlbak");
        let started = std::time::Instant::now();
        let e = client.backup(&path, Some(&addr), |_| {}).await.expect_err("nobody answers");
        assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        assert!(e.to_string().contains("did not start"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file, no .part");
        hold.abort();
    }

    fn verify_bytes(bytes: &[u8]) -> Result<Summary, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.rsqlbak");
        std::fs::write(&path, bytes).unwrap();
        verify(&path)
    }

    #[test]
    fn a_well_formed_file_verifies_with_its_counts() {
        let s = verify_bytes(&file(3, 4)).expect("a good file");
        assert_eq!((s.applied_index, s.node_id, s.tables, s.rows), (7, 1, 3, 12));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        /// Any change to a good file — bytes flipped, cut, inserted, or a forged frame length —
        /// is refused with a typed `Backup` error saying nothing was restored: never a panic, a
        /// hang or an allocation beyond the frame limit.
        #[test]
        fn a_changed_file_is_refused_never_read_wrong(
            tables in 0usize..4,
            rows in 0usize..5,
            edits in proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..4), 1..4),
        ) {
            let good = file(tables, rows);
            let mut bad = good.clone();
            for (at, byte, how) in edits {
                let at = at as usize % bad.len().max(1);
                match how {
                    0 if !bad.is_empty() => bad[at] ^= byte.max(1),
                    0 => bad.push(byte),
                    1 => bad.truncate(at),
                    2 => bad.insert(at, byte),
                    _ if bad.len() >= 14 => {
                        // A frame length claiming up to 4 GiB.
                        let at = 10 + at % (bad.len() - 13);
                        bad[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
                    }
                    _ => bad.clear(),
                }
            }
            prop_assume!(bad != good);
            match verify_bytes(&bad) {
                Err(Error::Backup { message }) => {
                    prop_assert!(message.contains("not a usable raftsql backup"), "{}", message)
                }
                other => prop_assert!(false, "a changed file gave {:?}", other),
            }
        }
    }
}
