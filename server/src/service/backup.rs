//! `Admin.Backup`: a consistent copy of this node's applied state, streamed as the SQL that
//! recreates each table and its row images.
//!
//! # How
//! 1. The applied state is copied into a file of the snapshot format in the snapshot dir
//!    (`StateMachine::export`, from a pinned view: apply goes on, and the copy shows exactly one
//!    applied index, which the header states).
//! 2. A blocking task reads that file back (checking its count and checksum as an install would)
//!    and sends the header, each table (`CREATE TABLE` and `CREATE INDEX` as `sqlite_schema`
//!    shows them, so a backup survives any change of the storage format) followed by its rows in
//!    chunks of about [`CHUNK_BYTES`], then the counts.
//!
//! A slow reader therefore holds a file, never the state machine or apply. Bounds: one backup at
//! a time per node (another gets RESOURCE_EXHAUSTED), and a reader that takes no chunk within
//! `--query-timeout-ms` loses its stream (the file is removed with it). What a backup leaves
//! out: the cluster id and the exactly-once records (they belong to the cluster that made them),
//! and hidden row ids (a table without a PRIMARY KEY gets new ones when restored).
//!
//! The client library turns the stream into a file with a versioned header and a checksum, and
//! loads such a file through ordinary writes (`client/src/backup.rs`).

use super::status_from;
use crate::raft::{Core, Error};
use crate::sql::catalog::{create_index_sql, create_table_sql};
use crate::store::ExportItem;
use raftsql_proto::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;

/// Rows are sent in chunks of about this many bytes (a single larger row goes alone).
pub const CHUNK_BYTES: usize = 1 << 20;

pub type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, tonic::Status>> + Send>>;

fn chunk(item: pb::backup_chunk::Item) -> pb::BackupChunk {
    pb::BackupChunk { item: Some(item) }
}

/// About how many bytes `row` takes encoded.
fn row_bytes(row: &[crate::changeset::Value]) -> usize {
    use crate::changeset::Value;
    row.iter()
        .map(|v| match v {
            Value::Text(s) => s.len() + 4,
            Value::Blob(b) => b.len() + 4,
            _ => 11,
        })
        .sum::<usize>()
        + 4
}

/// Starts a backup of `core`'s applied state; `slot` is the node's one backup slot, held until
/// the stream ends.
pub async fn start(
    core: &Arc<Core>,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<BackupStream, tonic::Status> {
    let sm = core.sm().clone();
    let started = std::time::Instant::now();
    let export = tokio::task::spawn_blocking(move || sm.export())
        .await
        .map_err(|e| status_from(Error::Unavailable(format!("the backup copy failed: {e}"))))?
        .map_err(|e| status_from(Error::Unavailable(format!("the backup copy failed: {e}"))))?;
    let applied = export.meta.last_log_id;
    tracing::info!(
        node_id = core.id(), applied = ?applied, records = export.records, bytes = export.bytes,
        copy_ms = started.elapsed().as_millis() as u64, "backup: state copied; streaming it"
    );
    let header = pb::BackupHeader {
        applied_index: applied.map_or(0, |l| l.index),
        applied_term: applied.map_or(0, |l| l.leader_id.term),
        cluster_id: core.sm().cluster_id().map_err(|e| status_from(e.into()))?.unwrap_or_default(),
        node_id: core.id(),
        taken_at_unix_ms: crate::raft::wall_clock_millis(0),
        server_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let idle = core.options().query_timeout;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::BackupChunk, tonic::Status>>(2);
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        // Err(()) when the reader went away or took no chunk in time: stop reading.
        let send = |c: Result<pb::BackupChunk, tonic::Status>| -> Result<(), ()> {
            match handle.block_on(tokio::time::timeout(idle, tx.send(c))) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(()),
                Err(_) => {
                    tracing::warn!(
                        ?idle,
                        "backup: the reader took no chunk within --query-timeout-ms; stopped"
                    );
                    Err(())
                }
            }
        };
        let (mut tables, mut rows) = (0u64, 0u64);
        let mut pending: Vec<pb::Row> = Vec::new();
        let mut pending_bytes = 0usize;
        // Set when a send failed: the reader went away, nothing more to tell it.
        let gone = std::cell::Cell::new(false);
        let flush = |pending: &mut Vec<pb::Row>, pending_bytes: &mut usize| -> Result<(), ()> {
            *pending_bytes = 0;
            if pending.is_empty() {
                return Ok(());
            }
            send(Ok(chunk(pb::backup_chunk::Item::Rows(pb::BackupRows { rows: std::mem::take(pending) }))))
        };
        let stop = || {
            gone.set(true);
            crate::store::Error::Io {
                context: "send a backup chunk".into(),
                source: std::io::Error::other("the reader went away"),
            }
        };
        if send(Ok(chunk(pb::backup_chunk::Item::Header(header)))).is_err() {
            return;
        }
        let read = export.read(|item| {
            match item {
                ExportItem::Table(schema) => {
                    flush(&mut pending, &mut pending_bytes).map_err(|_| stop())?;
                    tables += 1;
                    let table = pb::BackupTable {
                        name: schema.name.clone(),
                        create_sql: create_table_sql(&schema),
                        index_sql: schema
                            .indexes
                            .iter()
                            .filter_map(|ix| create_index_sql(&schema, ix))
                            .collect(),
                        columns: schema.columns.iter().map(|c| c.name.clone()).collect(),
                    };
                    send(Ok(chunk(pb::backup_chunk::Item::Table(table)))).map_err(|_| stop())?;
                }
                ExportItem::Row(row) => {
                    rows += 1;
                    pending_bytes += row_bytes(&row);
                    pending.push(super::row_to_pb(&row));
                    if pending_bytes >= CHUNK_BYTES {
                        flush(&mut pending, &mut pending_bytes).map_err(|_| stop())?;
                    }
                }
            }
            Ok(())
        });
        let end = match read {
            Ok(()) => flush(&mut pending, &mut pending_bytes)
                .and_then(|()| send(Ok(chunk(pb::backup_chunk::Item::End(pb::BackupEnd { tables, rows }))))),
            Err(_) if gone.get() => Err(()),
            Err(e) => {
                tracing::error!(error = %e, "backup: reading the copy back failed");
                send(Err(status_from(Error::Unavailable(format!(
                    "the backup failed while reading its copy: {e}"
                )))))
            }
        };
        match end {
            Ok(()) => {
                tracing::info!(tables, rows, total_ms = started.elapsed().as_millis() as u64, "backup: sent")
            }
            Err(()) => tracing::info!(tables, rows, "backup: the reader went away; stopped"),
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}
