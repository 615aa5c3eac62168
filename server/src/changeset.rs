//! The shared vocabulary of raftsql: values, rows, schemas, the replicated log entry
//! ([`ChangeSet`]) and the [`ReadView`] through which SQL reads data.
//!
//! This module imports no other raftsql module; [`Value`] is raftsql-proto's, shared with the
//! client library (the variants' order is part of the log format). Everything here is either replicated (it travels
//! inside Raft log entries and snapshots, so its serde form is a wire format) or a seam between
//! layers.
//!
//! # The log is logical and row-based (design.md §2)
//!
//! A [`ChangeSet`] carries the *effects* of a batch of requests, never their statements: full row
//! images keyed by primary key (or by the hidden row id the leader assigned), DDL with the full
//! schema, and for each request its id and per-statement outcome. Applying it is mechanical and
//! deterministic: every node that applies the same entries holds the same rows, whatever clock,
//! random source or evaluation order the leader had. All validation happened on the leader.
//!
//! Compatibility: every entry carries [`ChangeSet::version`]. A node must be able to apply every
//! version it may find in its log or in a snapshot; new fields are added only as new enum variants
//! or under a new version number.

use serde::{Deserialize, Serialize};
use std::ops::Bound;

/// The format version written into every [`ChangeSet`] this build produces (2: request ids
/// carry the digest of their request). The data dir's own format (`store::DATA_FORMAT`) is
/// separate: data dirs of an older one are refused at start-up (`store::Error::OldFormat`).
pub const FORMAT_VERSION: u16 = 2;

/// A single SQL value, shared with the client library through raftsql-proto (which converts it
/// to and from the protocol's messages). Its bincode bytes are durable, pinned by
/// `tests::value_encodings_are_pinned`.
pub use raftsql_proto::Value;

/// A full row image: one value per column of the table, in column order.
pub type Row = Vec<Value>;

/// A primary-key tuple: the values of the primary-key columns in key order, or
/// `[Value::Integer(rowid)]` for a table without a declared primary key.
pub type Key = Vec<Value>;

/// Declared column types (SQL spellings are mapped onto these by `sql`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    Integer,
    Real,
    Text,
    Blob,
    Boolean,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub data_type: DataType,
    pub nullable: bool,
    /// The DEFAULT expression as SQL text, evaluated by the leader when a row is inserted (so
    /// `CURRENT_TIMESTAMP` reaches followers as a constant inside the row image).
    pub default: Option<String>,
}

/// A secondary index. UNIQUE column constraints are implemented as unique indexes too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexSchema {
    pub name: String,
    pub table: String,
    /// Positions of the indexed columns in the table's column list.
    pub columns: Vec<usize>,
    pub unique: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableSchema {
    pub name: String,
    pub columns: Vec<Column>,
    /// Positions of the primary-key columns, in key order. Empty: the table has no declared
    /// primary key and rows are keyed by a hidden row id the leader assigns.
    pub primary_key: Vec<usize>,
    /// The table's secondary indexes, maintained by apply.
    pub indexes: Vec<IndexSchema>,
}

impl TableSchema {
    /// The position of a column, by case-insensitive name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// The key of `row` under this schema. For tables with a hidden row id the key is not part
    /// of the row, so this returns `None`.
    pub fn key_of(&self, row: &Row) -> Option<Key> {
        if self.primary_key.is_empty() {
            return None;
        }
        Some(self.primary_key.iter().map(|&i| row[i].clone()).collect())
    }
}

/// One effect of a statement. Row changes carry full row images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    CreateTable(TableSchema),
    DropTable {
        table: String,
    },
    /// Adds the index to the table's schema and builds it over the existing rows.
    CreateIndex(IndexSchema),
    DropIndex {
        table: String,
        index: String,
    },
    /// Stores `row` under `key` (no row exists there before, by the leader's validation).
    Insert {
        table: String,
        key: Key,
        row: Row,
    },
    /// Replaces the row stored under `key` with `row`; the row's key is unchanged (a primary-key
    /// change is a `Delete` followed by an `Insert`).
    Update {
        table: String,
        key: Key,
        row: Row,
    },
    Delete {
        table: String,
        key: Key,
    },
}

/// Identifies a client request for exactly-once execution: a client id and a sequence number
/// that the client increases by one per new request (retries reuse it), with the digest of the
/// request's statements, parameters and transaction flag, computed by the node that took the
/// request. A retry has the same digest; a request id reused for other statements does not, and
/// is refused instead of being answered with the first request's result.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub client_id: String,
    pub seq: u64,
    pub digest: [u8; 16],
}

impl RequestId {
    pub fn new(client_id: String, seq: u64, statements: &[(String, Vec<Value>)], transaction: bool) -> Self {
        RequestId { client_id, seq, digest: request_digest(statements, transaction) }
    }

    /// The error for a request that reuses this id with other statements.
    pub fn reused(&self) -> String {
        format!(
            "request id (client {:?}, seq {}) was already used for a different request: a retry must \
             send the same statements and parameters, and a new request needs the next sequence number",
            self.client_id, self.seq
        )
    }
}

/// MD5 of the bincode encoding of a request's statements and transaction flag: deterministic on
/// every node and version that shares this format (not a security boundary; authentication is).
pub fn request_digest(statements: &[(String, Vec<Value>)], transaction: bool) -> [u8; 16] {
    use md5::Digest;
    struct Hashing(md5::Md5);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Hashing(md5::Md5::new());
    bincode::serialize_into(&mut h, &(statements, transaction)).expect("encoding into a hasher cannot fail");
    h.0.finalize().into()
}

/// What kind of failure a statement met; maps one-to-one onto the client `ErrorCode`s that
/// statement errors can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    Syntax,
    Unsupported,
    Type,
    Constraint,
    NotFound,
    /// Any other deterministic evaluation error (e.g. division by zero where it is an error).
    Invalid,
    /// A limit of evaluation or of the request was reached (expression depth, working memory).
    Limit,
    /// The evaluation was stopped (deadline, cancellation). Never recorded in the log.
    Interrupted,
}

/// A statement's failure, as recorded in the log and returned to the client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatementError {
    pub kind: ErrorKind,
    pub message: String,
    /// 1-based line and column in the statement text, where known (syntax errors).
    pub position: Option<(u32, u32)>,
}

/// A statement's result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatementResult {
    /// Column names of `rows` (empty for statements that return none).
    pub columns: Vec<String>,
    /// Rows returned (SELECT, or RETURNING).
    pub rows: Vec<Row>,
    pub rows_affected: u64,
    /// The key of the last row inserted into a table with an integer key, if any.
    pub last_insert_id: Option<i64>,
}

pub type StatementOutcome = Result<StatementResult, StatementError>;

/// The effects of one client request inside a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestEffects {
    pub request_id: Option<RequestId>,
    /// Row and schema changes, in the order they must be applied.
    pub changes: Vec<Change>,
    /// One outcome per statement, recorded so that a retry gets the original answer.
    pub outcomes: Vec<StatementOutcome>,
}

/// The replicated log entry: the effects of one batch of requests evaluated by the sequencer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeSet {
    pub version: u16,
    /// Set once, by the first leader: the cluster id that session tokens carry.
    pub init_cluster_id: Option<String>,
    pub requests: Vec<RequestEffects>,
}

impl ChangeSet {
    pub fn new(requests: Vec<RequestEffects>) -> Self {
        ChangeSet { version: FORMAT_VERSION, init_cluster_id: None, requests }
    }
}

impl std::fmt::Display for ChangeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let changes: usize = self.requests.iter().map(|r| r.changes.len()).sum();
        write!(f, "ChangeSet(v{}, {} requests, {} changes)", self.version, self.requests.len(), changes)
    }
}

/// A [`ChangeSet`] as the log carries it: encoded once, by the leader that evaluated it, and
/// decoded once per node, by apply. In between — the leader's log, AppendEntries, a follower's
/// log — it is bytes, copied but never walked: the cost of replicating an entry grows with its
/// size, not with its number of rows, so a large entry crosses within openraft's AppendEntries
/// timeout (one heartbeat interval), which decoding 200,000 row changes in the receiver did not.
///
/// Layout: the change set in bincode's compact form (variable-length integers), then the CRC-32
/// of those bytes, little-endian. The checksum is verified by the peer service before openraft
/// sees an entry and again by [`EncodedChangeSet::decode`], so an entry damaged on the wire or
/// on disk is refused or reported, never applied.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedChangeSet(bytes::Bytes);

/// Why an [`EncodedChangeSet`] cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum EncodingError {
    #[error("the change set is {len} bytes, too short to hold its checksum")]
    Short { len: usize },
    #[error(
        "the change set fails its checksum (CRC-32 {found:08x}, expected {expected:08x}): it was damaged"
    )]
    Checksum { found: u32, expected: u32 },
    #[error("the change set does not decode: {0}")]
    Decode(String),
}

impl EncodedChangeSet {
    fn options() -> impl bincode::Options {
        use bincode::Options;
        bincode::DefaultOptions::new().with_varint_encoding().reject_trailing_bytes()
    }

    pub fn encode(cs: &ChangeSet) -> Self {
        use bincode::Options;
        // Serializing our own plain data types into a Vec cannot fail.
        let mut bytes = Self::options().serialize(cs).expect("a ChangeSet always serializes");
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        EncodedChangeSet(bytes.into())
    }

    /// The encoded size, checksum included: what the entry costs in the log and on the wire.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks the checksum without decoding (fast: what the peer service does per entry).
    pub fn verify(&self) -> Result<&[u8], EncodingError> {
        let len = self.0.len();
        if len < 4 {
            return Err(EncodingError::Short { len });
        }
        let (body, crc) = self.0.split_at(len - 4);
        let expected = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        let found = crc32fast::hash(body);
        if found != expected {
            return Err(EncodingError::Checksum { found, expected });
        }
        Ok(body)
    }

    pub fn decode(&self) -> Result<ChangeSet, EncodingError> {
        use bincode::Options;
        let body = self.verify()?;
        // The limit keeps a forged length prefix from allocating more than was sent.
        Self::options()
            .with_limit(body.len() as u64)
            .deserialize(body)
            .map_err(|e| EncodingError::Decode(e.to_string()))
    }
}

impl From<&ChangeSet> for EncodedChangeSet {
    fn from(cs: &ChangeSet) -> Self {
        EncodedChangeSet::encode(cs)
    }
}

impl std::fmt::Debug for EncodedChangeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedChangeSet({} bytes)", self.0.len())
    }
}

impl std::fmt::Display for EncodedChangeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChangeSet({} bytes)", self.0.len())
    }
}

impl Serialize for EncodedChangeSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for EncodedChangeSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = EncodedChangeSet;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an encoded change set (bytes)")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(EncodedChangeSet(bytes::Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(EncodedChangeSet(v.into()))
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

/// What the state machine returns for an applied entry. Empty unless apply found a request id
/// already recorded (a retry that raced its original): then its changes were skipped and the
/// originally recorded outcomes are returned instead, by position in `ChangeSet::requests`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub duplicates: Vec<(usize, Vec<StatementOutcome>)>,
}

/// The per-client exactly-once record kept by the state machine: the highest applied sequence
/// number and its outcomes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub seq: u64,
    /// The digest of the request recorded (see [`RequestId`]).
    pub digest: [u8; 16],
    pub outcomes: Vec<StatementOutcome>,
}

/// A failure to read the state (I/O, corruption). Never caused by the request itself.
#[derive(Debug, thiserror::Error)]
#[error("storage read failed: {0}")]
pub struct ReadError(pub String);

/// An ordered stream of `(key, row)` pairs.
pub type RowIter<'a> = Box<dyn Iterator<Item = Result<(Key, Row), ReadError>> + 'a>;
/// An ordered stream of `(indexed values, primary key)` pairs.
pub type IndexIter<'a> = Box<dyn Iterator<Item = Result<(Vec<Value>, Key), ReadError>> + 'a>;

/// The one order of values (SQLite's), used by evaluation (comparisons, ORDER BY, DISTINCT,
/// GROUP BY), by the leader's PRIMARY KEY and UNIQUE checks, and — through the key encoding
/// (`store::keys`), whose bytewise order is tested to equal it — by the store. Two values this
/// calls equal are one key, and the other way round.
///
/// NULL, then numbers, then text (bytewise), then blobs. Numbers compare by exact value across
/// types (`Integer(2^53 + 1) > Real(2^53)`, which a conversion to `f64` would call equal;
/// `Boolean` is 0 or 1); `-0.0 == 0.0`; NaN sorts below every other number and equals NaN.
pub fn compare_values(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    use Value::*;
    fn rank(v: &Value) -> u8 {
        match v {
            Null => 0,
            Integer(_) | Real(_) | Boolean(_) => 1,
            Text(_) => 2,
            Blob(_) => 3,
        }
    }
    fn int(v: &Value) -> Option<i64> {
        match v {
            Integer(i) => Some(*i),
            Boolean(b) => Some(i64::from(*b)),
            _ => None,
        }
    }
    /// An integer against a double, exactly.
    fn int_real(i: i64, r: f64) -> Ordering {
        if r.is_nan() {
            return Ordering::Greater;
        }
        let two_63 = 9_223_372_036_854_775_808.0_f64;
        if r >= two_63 {
            return Ordering::Less;
        }
        if r < -two_63 {
            return Ordering::Greater;
        }
        // |r| < 2^63: its integral part fits an i64 exactly, and the fraction decides a tie.
        let t = r.trunc();
        match i.cmp(&(t as i64)) {
            Ordering::Equal => 0.0f64.partial_cmp(&(r - t)).unwrap_or(Ordering::Equal),
            o => o,
        }
    }
    match (a, b) {
        (Text(x), Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Blob(x), Blob(y)) => x.cmp(y),
        (Real(x), Real(y)) => match (x.is_nan(), y.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            _ => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        },
        (Real(x), y) if rank(y) == 1 => int_real(int(y).expect("a number"), *x).reverse(),
        (x, Real(y)) if rank(x) == 1 => int_real(int(x).expect("a number"), *y),
        (x, y) if rank(x) == 1 && rank(y) == 1 => int(x).cmp(&int(y)),
        (x, y) => rank(x).cmp(&rank(y)),
    }
}

/// Tuples in [`compare_values`] order, element by element; a prefix sorts first.
pub fn compare_tuples(a: &[Value], b: &[Value]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = compare_values(x, y);
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

/// Read access to the applied state, as the SQL layer sees it.
///
/// Implemented by the sled store (a consistent view: apply does not run while a view is in use)
/// and by an in-memory map for `sql`'s own tests.
///
/// Ordering: keys and index entries are ordered as SQLite orders values: NULL, then numbers
/// (integers and reals compared numerically), then text (bytewise), then blobs; tuples compare
/// element by element. Range bounds are tuples that may be shorter than the key: a bound on a
/// prefix covers every key that extends it (`Included(p)` as an upper bound includes all keys
/// starting with `p`; `Excluded(p)` as a lower bound skips them all).
pub trait ReadView {
    /// The schema of a table (case-insensitive name), or `None`.
    fn table(&self, name: &str) -> Result<Option<TableSchema>, ReadError>;
    /// All tables, ordered by name.
    fn tables(&self) -> Result<Vec<TableSchema>, ReadError>;
    /// The row stored under `key`.
    fn get(&self, table: &str, key: &[Value]) -> Result<Option<Row>, ReadError>;
    /// Rows with keys in the range, in key order.
    fn scan(&self, table: &str, lower: Bound<Key>, upper: Bound<Key>) -> RowIter<'_>;
    /// Entries of an index with indexed values in the range, in index order.
    fn scan_index(
        &self,
        table: &str,
        index: &str,
        lower: Bound<Vec<Value>>,
        upper: Bound<Vec<Value>>,
    ) -> IndexIter<'_>;
    /// The highest key of a table, for assigning the next hidden row id.
    fn last_key(&self, table: &str) -> Result<Option<Key>, ReadError>;
    /// A number naming the schema this view shows: it changes whenever the schema may have
    /// (a table or index created, altered or dropped, a snapshot installed), and no two views
    /// of different schemas in one process share it, so that what was derived from one view's
    /// schema (a bound plan) may be reused for another view with the same number. `None` when
    /// the view does not keep one: then nothing derived from its schema is reused.
    fn schema_version(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Value`'s bytes are durable: in log entries (the compact form) and in request digests
    /// (the fixed-width form of `request_digest`). Pinned, so that moving or changing the type
    /// cannot change them unnoticed.
    #[test]
    fn value_encodings_are_pinned() {
        use bincode::Options;
        let values = [
            Value::Null,
            Value::Integer(-2),
            Value::Integer(300),
            Value::Real(1.5),
            Value::Text("é".into()),
            Value::Blob(vec![0, 255]),
            Value::Boolean(true),
        ];
        let hex = |b: Vec<u8>| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let compact: Vec<String> =
            values.iter().map(|v| hex(EncodedChangeSet::options().serialize(v).unwrap())).collect();
        let fixed: Vec<String> = values.iter().map(|v| hex(bincode::serialize(v).unwrap())).collect();
        let want_compact = ["00", "0103", "01fb5802", "02000000000000f83f", "0302c3a9", "040200ff", "0501"];
        assert_eq!(compact, want_compact, "compact");
        let want_fixed = [
            "00000000",
            "01000000feffffffffffffff",
            "010000002c01000000000000",
            "02000000000000000000f83f",
            "030000000200000000000000c3a9",
            "04000000020000000000000000ff",
            "0500000001",
        ];
        assert_eq!(fixed, want_fixed, "fixed");
    }

    fn sample() -> ChangeSet {
        let insert = |i: i64| Change::Insert {
            table: "t".into(),
            key: vec![Value::Integer(i)],
            row: vec![Value::Integer(i), Value::Text("x".into()), Value::Real(f64::MIN), Value::Null],
        };
        let ok = StatementResult { rows_affected: 1, last_insert_id: Some(i64::MAX), ..Default::default() };
        let mut cs = ChangeSet::new(vec![RequestEffects {
            request_id: Some(RequestId { client_id: "c".into(), seq: u64::MAX, digest: [7; 16] }),
            changes: (-2..3).map(insert).collect(),
            outcomes: vec![
                Ok(ok),
                Err(StatementError { kind: ErrorKind::Type, message: "m".into(), position: Some((1, 2)) }),
            ],
        }]);
        cs.init_cluster_id = Some("cluster".into());
        cs
    }

    #[test]
    fn an_encoded_change_set_round_trips_through_the_log_and_the_wire() {
        let cs = sample();
        let encoded = EncodedChangeSet::encode(&cs);
        assert_eq!(encoded.decode().unwrap(), cs);
        // As openraft stores and sends it (fixed-width bincode around our bytes).
        let wire = bincode::serialize(&encoded).unwrap();
        assert_eq!(wire.len(), 8 + encoded.len(), "the bytes are carried as bytes");
        let back: EncodedChangeSet = bincode::deserialize(&wire).unwrap();
        assert_eq!(back, encoded);
        assert_eq!(back.decode().unwrap(), cs);
    }

    #[test]
    fn damaged_or_forged_change_sets_are_refused_not_decoded() {
        let encoded = EncodedChangeSet::encode(&sample());
        let bytes = encoded.0.to_vec();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            let e = EncodedChangeSet(b.into()).decode().unwrap_err();
            assert!(matches!(e, EncodingError::Checksum { .. }), "byte {i}: {e}");
        }
        assert!(matches!(EncodedChangeSet(vec![1, 2].into()).decode(), Err(EncodingError::Short { len: 2 })));
        // Garbage under a valid checksum (a bug or a malicious member, not damage) is a typed
        // error too, and a forged length allocates nothing beyond what was sent.
        let mut garbage = vec![0u8, 0, 0xfc, 0xff, 0xff, 0xff, 0xff];
        garbage.extend_from_slice(&crc32fast::hash(&garbage).to_le_bytes());
        assert!(matches!(EncodedChangeSet(garbage.into()).decode(), Err(EncodingError::Decode(_))));
    }
}
