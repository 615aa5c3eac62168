//! Tests of the sled store: openraft's conformance suite, apply and reads, exactly-once,
//! snapshots, restart, and data-dir checks.

use super::*;
use crate::changeset::{
    Applied, Change, ChangeSet, Column, DataType, EncodedChangeSet, ErrorKind, IndexSchema, RequestEffects,
    RequestId, StatementResult, TableSchema, Value,
};
use crate::typ::{Entry, LogId, Membership, SnapshotMeta, StorageError, TypeConfig, Vote};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use std::collections::BTreeSet;
use std::ops::Bound::{self, Excluded, Included, Unbounded};
use tempfile::TempDir;
use Value::{Integer as I, Null, Text};

/// `store::open`, for tests that open a dir again right after dropping the store on it: sled's
/// I/O threads can hold the database's file lock for a moment after the last handle is gone
/// (sled's own tests block on the lock for that reason), so `Locked` is retried for up to 10 s.
/// A node process opens its dir once, so the server itself does not retry.
fn open(o: &Options) -> Result<(LogStore, StateMachine), Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match super::open(o) {
            Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            r => return r,
        }
    }
}

fn opts(dir: &Path, node_id: NodeId) -> Options {
    Options {
        data_dir: dir.join("data"),
        node_id,
        flush_every: None,
        cache_bytes: super::DEFAULT_CACHE_BYTES,
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let (log, sm) = open(&opts(dir.path(), 0)).expect("open a fresh store");
        Ok((dir, log, sm))
    }
}

#[test]
fn store_openraft_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn normal(index: u64, cs: ChangeSet) -> Entry {
    Entry { log_id: log_id(index), payload: EntryPayload::Normal(EncodedChangeSet::encode(&cs)) }
}

fn req(changes: Vec<Change>) -> RequestEffects {
    RequestEffects { request_id: None, changes, outcomes: vec![] }
}

fn col(name: &str, data_type: DataType) -> Column {
    Column { name: name.into(), data_type, nullable: true, default: None }
}

/// Table `Users(id INTEGER PRIMARY KEY, name TEXT, age INTEGER)`.
fn users() -> TableSchema {
    TableSchema {
        name: "Users".into(),
        columns: vec![
            col("id", DataType::Integer),
            col("name", DataType::Text),
            col("age", DataType::Integer),
        ],
        primary_key: vec![0],
        indexes: vec![],
    }
}

fn by_age() -> IndexSchema {
    IndexSchema { name: "By_Age".into(), table: "users".into(), columns: vec![2], unique: false }
}

fn user(id: i64, name: &str, age: Value) -> Change {
    Change::Insert { table: "users".into(), key: vec![I(id)], row: vec![I(id), Text(name.into()), age] }
}

async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) -> Vec<Applied> {
    RaftStateMachine::apply(sm, entries).await.expect("apply")
}

fn scan(sm: &StateMachine, lo: Bound<Vec<Value>>, hi: Bound<Vec<Value>>) -> Vec<i64> {
    sm.read(|v| {
        v.scan("USERS", lo, hi)
            .map(|r| match r.expect("scan").0[0] {
                I(i) => i,
                ref other => panic!("key {other:?}"),
            })
            .collect()
    })
}

fn scan_index(
    sm: &StateMachine,
    lo: Bound<Vec<Value>>,
    hi: Bound<Vec<Value>>,
) -> Vec<(Vec<Value>, Vec<Value>)> {
    sm.read(|v| v.scan_index("users", "by_age", lo, hi).map(|r| r.expect("scan_index")).collect())
}

/// Every key/value of the current state-machine generation.
fn dump(sm: &StateMachine) -> Vec<(Vec<u8>, Vec<u8>)> {
    let current = sm.shared.read_state();
    current.tree.iter().map(|kv| kv.expect("iterate")).map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

/// Users 1..=5 with ages 30, NULL, 25, 30, 40, and the index by age.
async fn populated(dir: &Path) -> (LogStore, StateMachine) {
    let (log, mut sm) = open(&opts(dir, 1)).expect("open");
    let cs = ChangeSet::new(vec![req(vec![
        Change::CreateTable(users()),
        user(1, "ann", I(30)),
        user(2, "bob", Null),
        user(3, "cid", I(25)),
        Change::CreateIndex(by_age()),
        user(4, "dan", I(30)),
    ])]);
    let cs2 = ChangeSet::new(vec![req(vec![user(5, "eve", I(40))])]);
    let applied = apply(&mut sm, vec![normal(1, cs), normal(2, cs2)]).await;
    assert_eq!(applied, vec![Applied::default(), Applied::default()]);
    (log, sm)
}

#[tokio::test]
async fn store_apply_then_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, sm) = populated(dir.path()).await;
    assert_eq!(sm.applied_index(), Some(2));
    sm.read(|v| {
        assert_eq!(v.table("USERS").unwrap().unwrap().indexes, vec![by_age()]);
        assert_eq!(v.tables().unwrap().len(), 1);
        assert_eq!(v.get("users", &[I(3)]).unwrap(), Some(vec![I(3), Text("cid".into()), I(25)]));
        assert_eq!(v.get("users", &[Value::Real(3.0)]).unwrap().map(|r| r[0].clone()), Some(I(3)));
        assert_eq!(v.get("users", &[I(9)]).unwrap(), None);
        assert_eq!(v.last_key("Users").unwrap(), Some(vec![I(5)]));
        assert_eq!(v.last_key("nope").unwrap(), None);
    });
    assert_eq!(scan(&sm, Unbounded, Unbounded), vec![1, 2, 3, 4, 5]);
    assert_eq!(scan(&sm, Included(vec![I(2)]), Excluded(vec![I(4)])), vec![2, 3]);
    assert_eq!(scan(&sm, Excluded(vec![I(2)]), Included(vec![I(4)])), vec![3, 4]);
    assert_eq!(scan(&sm, Included(vec![]), Included(vec![])), vec![1, 2, 3, 4, 5]);
    assert_eq!(scan(&sm, Included(vec![I(4)]), Excluded(vec![I(2)])), Vec::<i64>::new(), "empty range");
    assert_eq!(scan(&sm, Excluded(vec![I(3)]), Included(vec![I(3)])), Vec::<i64>::new(), "empty range");
    // Index order: NULL first, then ages, ties by primary key.
    let all = scan_index(&sm, Unbounded, Unbounded);
    let order: Vec<_> = all.iter().map(|(_, k)| k[0].clone()).collect();
    assert_eq!(order, vec![I(2), I(3), I(1), I(4), I(5)]);
    assert_eq!(all[0], (vec![Null], vec![I(2)]));
    // Prefix bounds: Included(30) as upper includes every entry with age 30.
    let upto30 = scan_index(&sm, Excluded(vec![Null]), Included(vec![I(30)]));
    assert_eq!(upto30.iter().map(|(_, k)| k[0].clone()).collect::<Vec<_>>(), vec![I(3), I(1), I(4)]);
    let after30 = scan_index(&sm, Excluded(vec![I(30)]), Unbounded);
    assert_eq!(after30, vec![(vec![I(40)], vec![I(5)])]);
    let exactly30 = scan_index(&sm, Included(vec![Value::Real(30.0)]), Included(vec![I(30)]));
    assert_eq!(exactly30.len(), 2);
}

#[tokio::test]
async fn store_index_maintenance_across_update_delete_drop() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = populated(dir.path()).await;
    let update =
        Change::Update { table: "users".into(), key: vec![I(1)], row: vec![I(1), Text("ann".into()), I(50)] };
    let delete = Change::Delete { table: "USERS".into(), key: vec![I(4)] };
    apply(&mut sm, vec![normal(3, ChangeSet::new(vec![req(vec![update, delete])]))]).await;
    let ages: Vec<_> = scan_index(&sm, Unbounded, Unbounded);
    assert_eq!(
        ages,
        vec![
            (vec![Null], vec![I(2)]),
            (vec![I(25)], vec![I(3)]),
            (vec![I(40)], vec![I(5)]),
            (vec![I(50)], vec![I(1)])
        ]
    );
    assert_eq!(scan(&sm, Unbounded, Unbounded), vec![1, 2, 3, 5]);

    let drop_index = Change::DropIndex { table: "users".into(), index: "BY_AGE".into() };
    apply(&mut sm, vec![normal(4, ChangeSet::new(vec![req(vec![drop_index])]))]).await;
    assert!(scan_index(&sm, Unbounded, Unbounded).is_empty());
    assert!(sm.read(|v| v.table("users").unwrap().unwrap().indexes.is_empty()));

    // Re-create it over existing rows, then drop the table: nothing of it may remain.
    let recreate = Change::CreateIndex(by_age());
    apply(&mut sm, vec![normal(5, ChangeSet::new(vec![req(vec![recreate])]))]).await;
    assert_eq!(scan_index(&sm, Unbounded, Unbounded).len(), 4);
    let before_table = dump(&sm).len();
    let drop_table = Change::DropTable { table: "Users".into() };
    apply(&mut sm, vec![normal(6, ChangeSet::new(vec![req(vec![drop_table])]))]).await;
    assert!(sm.read(|v| v.table("users").unwrap().is_none() && v.tables().unwrap().is_empty()));
    // Only meta keys are left (last applied; membership is not set in these tests).
    let left = dump(&sm);
    assert!(before_table > left.len());
    assert!(left.iter().all(|(k, _)| k[0] == 0x01), "left: {left:?}");
}

/// Replaces the stored value of `key` with `f(value)` behind the store's back, as damage sled
/// did not catch would: sled seals the new bytes with a checksum of its own, so only raftsql's
/// per-value checksum can tell.
fn damage(sm: &StateMachine, key: &[u8], f: impl FnOnce(&mut Vec<u8>)) {
    let current = sm.shared.read_state();
    let mut v = current.tree.get(key).unwrap().expect("the value to damage").to_vec();
    f(&mut v);
    current.tree.insert(key, v).unwrap();
}

/// Every value raftsql keeps in sled carries a checksum: a damaged row, index entry or schema
/// is a typed error naming the recovery wherever it is read (a point read, a scan, apply, a
/// snapshot build), never a wrong value served or applied over.
#[tokio::test]
async fn store_damaged_values_are_errors_not_data() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = populated(dir.path()).await;
    // Every stored value decodes only with its checksum intact.
    for (k, v) in dump(&sm) {
        assert!(v.len() >= 4, "{k:?}");
        let (body, crc) = v.split_at(v.len() - 4);
        assert_eq!(crc32fast::hash(body).to_le_bytes(), crc, "value of {k:?} without its checksum");
    }
    let row3 = keys::row_key("users", &[I(3)]);
    // "cid" -> "cie": still a well-formed row, so without the checksum it would be served.
    damage(&sm, &row3, |v| {
        let at = v.windows(3).position(|w| w == b"cid").expect("the name in the row image");
        v[at + 2] = b'e';
    });
    let expect_damaged = |e: &dyn std::fmt::Display| {
        let m = e.to_string();
        assert!(m.contains("damaged") && m.contains("--join") && m.contains("new --id"), "{m}");
    };
    sm.read(|v| {
        expect_damaged(&v.get("users", &[I(3)]).unwrap_err());
        assert_eq!(v.get("users", &[I(2)]).unwrap().unwrap()[1], Text("bob".into()), "other rows still read");
        let scanned: Vec<_> = v.scan("users", Unbounded, Unbounded).collect();
        expect_damaged(scanned[2].as_ref().unwrap_err());
        assert!(scanned.iter().all(|r| !matches!(r, Ok((_, row)) if row[1] == Text("cie".into()))));
    });
    // Apply over the damaged row fails as a storage error and changes nothing.
    let before = dump(&sm);
    let update =
        Change::Update { table: "users".into(), key: vec![I(3)], row: vec![I(3), Text("cy".into()), I(26)] };
    let err = RaftStateMachine::apply(&mut sm, vec![normal(3, ChangeSet::new(vec![req(vec![update])]))])
        .await
        .unwrap_err();
    expect_damaged(&err);
    assert_eq!(dump(&sm), before, "a failed apply changed the tree");
    // A snapshot is never built from damaged data.
    let err = sm.get_snapshot_builder().await.build_snapshot().await.unwrap_err();
    expect_damaged(&err);

    // A truncated value, a damaged index entry and a damaged schema are refused the same way.
    let dir2 = tempfile::tempdir().unwrap();
    let (_log2, sm2) = populated(dir2.path()).await;
    damage(&sm2, &keys::row_key("users", &[I(1)]), |v| v.truncate(2));
    let index_key = dump(&sm2)
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| k.starts_with(&keys::index_prefix("users", "by_age")))
        .expect("an index entry");
    damage(&sm2, &index_key, |v| v[0] ^= 0x40);
    sm2.read(|v| {
        expect_damaged(&v.get("users", &[I(1)]).unwrap_err());
        let entries: Vec<_> = v.scan_index("users", "by_age", Unbounded, Unbounded).collect();
        expect_damaged(entries[0].as_ref().unwrap_err());
    });
    damage(&sm2, &keys::catalog_key("users"), |v| v[1] ^= 0x01);
    sm2.read(|v| expect_damaged(&v.table("users").unwrap_err()));
}

/// What a view holds of table `users`: rows, the index by age, the catalog, the last key.
fn view_state(v: &dyn crate::changeset::ReadView) -> String {
    let rows: Vec<_> = v.scan("users", Unbounded, Unbounded).map(|r| r.map(|(_, row)| row)).collect();
    let from3: Vec<_> = v.scan("users", Included(vec![I(3)]), Unbounded).map(|r| r.map(|(k, _)| k)).collect();
    let index: Vec<_> = v.scan_index("users", "by_age", Unbounded, Unbounded).collect();
    let aged30: Vec<_> =
        v.scan_index("users", "by_age", Included(vec![I(30)]), Included(vec![I(30)])).collect();
    let tables: Vec<_> =
        v.tables().map(|t| t.into_iter().map(|t| t.name).collect::<Vec<_>>()).into_iter().collect();
    format!(
        "rows {rows:?}\nfrom 3 {from3:?}\nindex {index:?}\naged 30 {aged30:?}\ntables {tables:?}\n\
         get 1 {:?} get 4 {:?} get 6 {:?}\nlast {:?}",
        v.get("users", &[I(1)]),
        v.get("users", &[I(4)]),
        v.get("users", &[I(6)]),
        v.last_key("users")
    )
}

/// Issue 16: a long read does not hold apply back. A pinned read sees exactly the state at its
/// pin — rows changed, deleted and created since, index entries, the catalog, the last key —
/// while entries are applied under it, and the values kept for it go when it ends.
#[tokio::test]
async fn store_pinned_reads_see_their_state_while_apply_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, sm) = populated(dir.path()).await;
    let before = sm.read(view_state);
    let applier = sm.clone();
    let t2 = TableSchema { name: "t2".into(), ..users() };
    let entries = vec![
        normal(
            3,
            ChangeSet::new(vec![req(vec![
                Change::Update {
                    table: "users".into(),
                    key: vec![I(1)],
                    row: vec![I(1), Text("ann".into()), I(50)],
                },
                Change::Delete { table: "users".into(), key: vec![I(4)] },
                user(6, "fay", I(30)),
                Change::CreateTable(t2),
            ])]),
        ),
        normal(
            4,
            ChangeSet::new(vec![req(vec![
                Change::Update {
                    table: "users".into(),
                    key: vec![I(1)],
                    row: vec![I(1), Text("ann".into()), I(60)],
                },
                Change::Delete { table: "users".into(), key: vec![I(2)] },
                user(9, "ida", I(30)),
            ])]),
        ),
    ];
    let ((seen_before, seen_after, fresh), applied, was_stopped) = sm.read_pinned(|v| {
        let seen_before = view_state(v);
        // Applies under the pinned read: with the state machine's lock held, this would wait
        // for the read, and the read for this, for ever.
        applier.apply_blocking(entries).map_err(|(_, e)| e).expect("apply under a pinned read");
        let fresh = sm.try_read(view_state).expect("nothing holds the lock");
        (seen_before, view_state(v), fresh)
    });
    assert_eq!(applied, Some(2), "the read reports the state it saw");
    assert!(!was_stopped);
    assert_eq!(seen_before, before);
    assert_eq!(seen_after, before, "the pinned read saw entries applied after its pin");
    assert_ne!(fresh, before);
    assert!(fresh.contains("last Ok(Some([Integer(9)]))") && fresh.contains("\"t2\""), "{fresh}");
    assert_eq!(sm.read(view_state), fresh);
    assert_eq!(sm.shared.read_state().versions.held(), (0, 0), "the kept values go with the read");

    // Too much kept for one read: it stops with an error (retry), and apply went on.
    let applier = sm.clone();
    sm.shared.read_state().versions.set_max_bytes(1);
    let (stopped, _, was_stopped) = sm.read_pinned(|v| {
        let cs = ChangeSet::new(vec![req(vec![user(3, "cy", I(26))])]);
        applier.apply_blocking(vec![normal(5, cs)]).map_err(|(_, e)| e).expect("apply");
        v.get("users", &[I(3)])
    });
    let m = stopped.unwrap_err().0;
    assert!(m.contains("stopped") && m.contains("retry"), "{m}");
    assert!(was_stopped, "read_pinned says the read was stopped, so it is answered as a retry");
    assert_eq!(sm.read(|v| v.get("users", &[I(3)])).unwrap().unwrap()[1], Text("cy".into()));
}

/// Issue 18: a read on an async worker that meets an apply waits for it without blocking its
/// thread (this test's runtime has one thread: a blocked read would never let the apply be
/// released), then reads the state the apply left; one that outwaits its patience gets `None`,
/// and its caller moves it to a blocking thread.
#[tokio::test]
// The guard is held across the read's wait on purpose: it stands for a long apply.
#[allow(clippy::await_holding_lock)]
async fn store_a_read_that_meets_an_apply_waits_for_it_on_its_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, sm) = populated(dir.path()).await;
    let row_6 = |v: &dyn crate::changeset::ReadView| v.get("users", &[I(6)]).expect("get").is_some();

    // Something holds the state (as a snapshot's switch does) past the read's patience.
    let held = sm.shared.write_state();
    let waited = std::time::Instant::now();
    assert_eq!(sm.read_after_apply(Duration::from_millis(50), row_6).await, None);
    assert!(waited.elapsed() >= Duration::from_millis(50), "it gave up before its patience ran out");
    drop(held);

    // An apply holds the state until told to go on, then applies entry 3 (user 6).
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let (holding, held) = std::sync::mpsc::channel::<()>();
    let applier = sm.clone();
    let apply = std::thread::spawn(move || {
        let guard = applier.shared.write_state();
        holding.send(()).expect("the test waits");
        wait.recv().expect("the test says go");
        drop(guard);
        let cs = ChangeSet::new(vec![req(vec![user(6, "fay", I(31))])]);
        applier.apply_blocking(vec![normal(3, cs)]).map_err(|(_, e)| e).expect("apply");
    });
    held.recv().expect("the apply holds the state");
    assert_eq!(sm.try_read(row_6), None, "the state is held");
    let (seen, ()) = tokio::join!(sm.read_after_apply(Duration::from_secs(30), row_6), async {
        go.send(()).expect("the apply waits");
    });
    assert_eq!(seen, Some(true), "the read saw the state after the apply, not before it");
    apply.join().expect("the apply thread");
}

fn with_id(client: &str, seq: u64, changes: Vec<Change>, rows_affected: u64) -> RequestEffects {
    RequestEffects {
        request_id: Some(RequestId { client_id: client.into(), seq, digest: [seq as u8; 16] }),
        changes,
        outcomes: vec![Ok(StatementResult { rows_affected, ..Default::default() })],
    }
}

#[tokio::test]
async fn store_apply_is_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(&opts(dir.path(), 1)).unwrap();
    let mut first = ChangeSet::new(vec![
        req(vec![Change::CreateTable(users())]),
        with_id("c1", 7, vec![user(1, "ann", I(1))], 1),
    ]);
    first.init_cluster_id = Some("cluster-a".into());
    assert_eq!(apply(&mut sm, vec![normal(1, first)]).await, vec![Applied::default()]);
    assert_eq!(sm.cluster_id().unwrap().as_deref(), Some("cluster-a"));

    // A retry of seq 7 (racing its original), an older seq 6, and a new seq from another client.
    let mut retry = ChangeSet::new(vec![
        with_id("c1", 7, vec![user(2, "dup", I(2))], 99),
        with_id("c1", 6, vec![user(3, "old", I(3))], 99),
        with_id("c2", 1, vec![user(4, "new", I(4))], 1),
    ]);
    retry.init_cluster_id = Some("cluster-b".into());
    let applied = apply(&mut sm, vec![normal(2, retry)]).await;
    let dups = &applied[0].duplicates;
    assert_eq!(dups.len(), 2);
    assert_eq!(dups[0], (0, vec![Ok(StatementResult { rows_affected: 1, ..Default::default() })]));
    assert_eq!(dups[1].0, 1);
    let err = dups[1].1[0].as_ref().unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
    assert!(err.message.contains("older"), "{}", err.message);
    assert_eq!(scan(&sm, Unbounded, Unbounded), vec![1, 4]);
    assert_eq!(sm.request_record("c1").unwrap().unwrap().seq, 7);
    assert_eq!(sm.request_record("c2").unwrap().unwrap().seq, 1);
    assert_eq!(sm.request_record("c3").unwrap(), None);
    assert_eq!(sm.cluster_id().unwrap().as_deref(), Some("cluster-a"), "set once");

    // Within one entry, a second copy of the same request is a duplicate of the first.
    let twice = ChangeSet::new(vec![
        with_id("c3", 1, vec![user(5, "x", I(5))], 1),
        with_id("c3", 1, vec![user(6, "y", I(6))], 1),
    ]);
    let applied = apply(&mut sm, vec![normal(3, twice)]).await;
    assert_eq!(applied[0].duplicates.len(), 1);
    assert_eq!(scan(&sm, Unbounded, Unbounded), vec![1, 4, 5]);

    // The same id for another request (another digest) is refused, not answered with the
    // first request's outcome, and changes nothing.
    let mut other = with_id("c3", 1, vec![user(7, "z", I(7))], 1);
    other.request_id.as_mut().unwrap().digest = [0xee; 16];
    let applied = apply(&mut sm, vec![normal(4, ChangeSet::new(vec![other]))]).await;
    let err = applied[0].duplicates[0].1[0].as_ref().unwrap_err();
    assert!(err.message.contains("already used for a different request"), "{}", err.message);
    assert_eq!(scan(&sm, Unbounded, Unbounded), vec![1, 4, 5]);
}

/// The schema version a view shows (what cached plans are keyed by) changes with every entry
/// that writes the catalog and with every installed snapshot, never with rows alone, and no two
/// stores of one process share one.
#[tokio::test]
async fn store_schema_version_changes_with_the_catalog_only() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_la, mut sm) = populated(a.path()).await;
    let version = |sm: &StateMachine| sm.read(|v| v.schema_version()).expect("a store keeps a version");
    let start = version(&sm);
    assert_eq!(sm.try_read(|v| v.schema_version()), Some(Some(start)));
    assert_eq!(sm.read_pinned(|v| v.schema_version()).0, Some(start));

    apply(&mut sm, vec![normal(3, ChangeSet::new(vec![req(vec![user(6, "fay", I(20))])]))]).await;
    assert_eq!(version(&sm), start, "rows alone leave the schema as it was");

    let drop_index = Change::DropIndex { table: "users".into(), index: by_age().name };
    apply(&mut sm, vec![normal(4, ChangeSet::new(vec![req(vec![drop_index])]))]).await;
    let dropped = version(&sm);
    assert_ne!(dropped, start, "an entry that drops an index is a new schema");

    let (_lb, mut other) = open(&opts(b.path(), 2)).unwrap();
    let fresh = version(&other);
    assert!(fresh != start && fresh != dropped, "another store never shares a version");
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let mut recv = other.begin_receiving_snapshot().await.unwrap();
    let mut src = snap.snapshot;
    tokio::io::copy(&mut src, &mut *recv).await.unwrap();
    other.install_snapshot(&snap.meta, recv).await.unwrap();
    let installed = version(&other);
    assert!(installed != fresh && installed != dropped, "an installed snapshot is a new schema");
}

#[tokio::test]
async fn store_snapshot_build_install_gives_identical_state() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_la, mut sm_a) = populated(a.path()).await;
    let members = Membership::new(vec![BTreeSet::from([1, 2, 3])], None);
    let cs = ChangeSet::new(vec![with_id("c1", 1, vec![user(6, "fay", I(20))], 1)]);
    apply(
        &mut sm_a,
        vec![Entry { log_id: log_id(3), payload: EntryPayload::Membership(members) }, normal(4, cs)],
    )
    .await;
    let snap = sm_a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(4)));
    assert_eq!(snap.meta.last_membership.log_id(), &Some(log_id(3)));

    let (_lb, mut sm_b) = open(&opts(b.path(), 2)).unwrap();
    let mut recv = sm_b.begin_receiving_snapshot().await.unwrap();
    let mut src = snap.snapshot;
    tokio::io::copy(&mut src, &mut *recv).await.unwrap();
    sm_b.install_snapshot(&snap.meta, recv).await.unwrap();
    assert_eq!(dump(&sm_a), dump(&sm_b));
    assert_eq!(sm_b.applied_index(), Some(4));
    assert_eq!(RaftStateMachine::applied_state(&mut sm_b).await.unwrap(), sm_a.applied_state());
    assert_eq!(scan_index(&sm_b, Unbounded, Unbounded), scan_index(&sm_a, Unbounded, Unbounded));
    let cur = sm_b.get_current_snapshot().await.unwrap().expect("installed snapshot is current");
    assert_eq!(cur.meta, snap.meta);
    // Only the published snapshot file is left.
    let files: Vec<_> = std::fs::read_dir(b.path().join("data/snapshots")).unwrap().collect();
    assert_eq!(files.len(), 1, "{files:?}");

    // After a restart the state, the generation and the current snapshot are still there.
    let before = dump(&sm_b);
    drop((_lb, sm_b));
    let (_lb, mut sm_b) = open(&opts(b.path(), 2)).unwrap();
    assert_eq!(dump(&sm_b), before);
    assert_eq!(sm_b.get_current_snapshot().await.unwrap().unwrap().meta, snap.meta);
}

/// A snapshot is copied from a pinned state: entries applied while it is being built (here:
/// right after the pin) change neither its contents nor its last log id, and apply did not
/// wait for the copy.
#[tokio::test]
async fn store_snapshot_build_does_not_hold_apply_back() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_la, sm_a) = populated(a.path()).await;
    let at_pin = dump(&sm_a);
    let applier = sm_a.clone();
    let (snap, paused) = snapshot::SnapshotBuilder { sm: sm_a.clone() }
        .build_with(|| {
            let cs = ChangeSet::new(vec![req(vec![
                Change::Update {
                    table: "users".into(),
                    key: vec![I(1)],
                    row: vec![I(1), Text("ann".into()), I(50)],
                },
                Change::Delete { table: "users".into(), key: vec![I(3)] },
                user(7, "gus", I(33)),
            ])]);
            applier.apply_blocking(vec![normal(3, cs)]).map_err(|(_, e)| e).expect("apply during the build");
        })
        .unwrap();
    assert_eq!(paused, Duration::ZERO, "apply never waited for the copy");
    assert_eq!(snap.meta.last_log_id, Some(log_id(2)), "the snapshot is of the pinned state");
    assert_eq!(sm_a.applied_index(), Some(3));
    let (_lb, mut sm_b) = open(&opts(b.path(), 2)).unwrap();
    let mut recv = sm_b.begin_receiving_snapshot().await.unwrap();
    let mut src = snap.snapshot;
    tokio::io::copy(&mut src, &mut *recv).await.unwrap();
    sm_b.install_snapshot(&snap.meta, recv).await.unwrap();
    // Install also records the (here empty) membership, which `populated` never applied.
    let membership = keys::meta_key(keys::META_MEMBERSHIP);
    let installed: Vec<_> = dump(&sm_b).into_iter().filter(|(k, _)| *k != membership).collect();
    assert_eq!(installed, at_pin);
    assert_eq!(sm_a.shared.read_state().versions.held(), (0, 0));
}

/// A snapshot is verified before anything is installed: every damaged copy of a good file is
/// refused by `verify` and by install, and install of a damaged copy replaces nothing.
#[tokio::test]
async fn store_snapshot_damage_is_detected_before_install() {
    use tokio::io::AsyncReadExt;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_la, mut sm_a) = populated(a.path()).await;
    let members = Membership::new(vec![BTreeSet::from([1, 2, 3])], None);
    apply(&mut sm_a, vec![Entry { log_id: log_id(3), payload: EntryPayload::Membership(members) }]).await;
    let mut snap = sm_a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let mut good = Vec::new();
    snap.snapshot.read_to_end(&mut good).await.unwrap();
    let records = snapshot::verify(&good[..], Some(&snap.meta)).expect("a built snapshot verifies");
    assert!(records > 3, "{records}");

    let mut flipped = good.clone();
    let mid = good.len() / 2;
    flipped[mid] ^= 0x04;
    let mut forged_len = good.clone();
    // The first record's first bytes after the header: make a length field enormous.
    let header = 10 + bincode::serialized_size(&snap.meta).unwrap() as usize;
    forged_len[header + 4..header + 12].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut other_meta = snap.meta.clone();
    other_meta.last_log_id = Some(log_id(99));
    let damaged: Vec<(&str, Vec<u8>, &SnapshotMeta)> = vec![
        ("a flipped bit", flipped, &snap.meta),
        ("truncated", good[..good.len() - 3].to_vec(), &snap.meta),
        ("no checksum", good[..good.len() - 4].to_vec(), &snap.meta),
        ("a byte appended", [good.clone(), vec![0]].concat(), &snap.meta),
        ("a forged length", forged_len, &snap.meta),
        ("garbage", vec![0xab; 4096], &snap.meta),
        ("empty", vec![], &snap.meta),
        ("another snapshot's header", good.clone(), &other_meta),
    ];
    let (_lb, mut sm_b) = open(&opts(b.path(), 2)).unwrap();
    let before = dump(&sm_b);
    for (what, bytes, meta) in damaged {
        let err = snapshot::verify(&bytes[..], Some(meta)).expect_err(what);
        assert!(matches!(err, Error::BadSnapshot { .. }), "{what}: {err}");
        let mut recv = sm_b.begin_receiving_snapshot().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut *recv, &bytes).await.unwrap();
        sm_b.install_snapshot(meta, recv).await.expect_err(what);
        assert_eq!(dump(&sm_b), before, "{what}: nothing replaced");
        assert_eq!(sm_b.applied_index(), None, "{what}");
    }
    let mut recv = sm_b.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut *recv, &good).await.unwrap();
    sm_b.install_snapshot(&snap.meta, recv).await.expect("the good copy installs");
    assert_eq!(dump(&sm_b), dump(&sm_a));
}

/// sled drops every record after a damaged one when it opens, silently; the watermark turns
/// that into a refusal to start. Simulated here by removing fsynced entries and the vote behind
/// the store's back, as such a recovery would.
#[tokio::test]
async fn store_refuses_a_database_that_lost_fsynced_raft_state() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open(&opts(dir.path(), 1)).unwrap();
        let entries: Vec<Entry> =
            (1..=5).map(|i| Entry { log_id: log_id(i), payload: EntryPayload::Blank }).collect();
        log.blocking_append(entries).await.unwrap();
        log.save_committed(Some(log_id(4))).await.unwrap();
        // A new term: the mark is written with the flush that makes the vote durable.
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
    }
    let mark = watermark::read(&dir.path().join("data")).unwrap().expect("a mark was written");
    assert_eq!(mark, watermark::Mark { term: 3, index: 4 }, "committed and durable, not beyond");
    assert!(open(&opts(dir.path(), 1)).is_ok(), "a healthy database passes");

    // Entry 5 was never committed: losing it (a truncation) is legal.
    let lose = |keys: &[&[u8]], tree: &str| {
        let db = sled::open(dir.path().join("data/db")).unwrap();
        let t = db.open_tree(tree).unwrap();
        for k in keys {
            t.remove(k).unwrap();
        }
        db.flush().unwrap();
    };
    lose(&[&5u64.to_be_bytes()], "log");
    assert!(open(&opts(dir.path(), 1)).is_ok(), "an uncommitted entry may go");
    lose(&[&4u64.to_be_bytes()], "log");
    let err = open(&opts(dir.path(), 1)).err().expect("a committed entry lost");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("lost Raft state that was durable") && text.contains("under a new --id"), "{text}");
    // The vote too.
    let db = sled::open(dir.path().join("data/db")).unwrap();
    db.open_tree("log")
        .unwrap()
        .insert(
            4u64.to_be_bytes(),
            encode(&Entry { log_id: log_id(4), payload: EntryPayload::Blank }).unwrap(),
        )
        .unwrap();
    db.open_tree("raft").unwrap().insert(b"vote", encode(&Vote::new(2, 1)).unwrap()).unwrap();
    db.flush().unwrap();
    drop(db);
    let err = open(&opts(dir.path(), 1)).err().expect("a vote lost");
    assert!(err.to_string().contains("vote term 2"), "{err}");
}

#[tokio::test]
async fn store_reopen_keeps_vote_log_and_applied_state() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new(3, 1);
    {
        let (mut log, mut sm) = open(&opts(dir.path(), 1)).unwrap();
        assert!(!log.has_state().unwrap());
        log.save_vote(&vote).await.unwrap();
        let cs = ChangeSet::new(vec![req(vec![Change::CreateTable(users()), user(1, "ann", I(1))])]);
        let entries = vec![Entry { log_id: log_id(1), payload: EntryPayload::Blank }, normal(2, cs)];
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_committed(Some(log_id(2))).await.unwrap();
        apply(&mut sm, entries).await;
        assert!(log.has_state().unwrap());
    }
    let (mut log, mut sm) = open(&opts(dir.path(), 1)).unwrap();
    assert!(log.has_state().unwrap());
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (None, Some(log_id(2))));
    assert_eq!(log.try_get_log_entries(1..3).await.unwrap().len(), 2);
    assert_eq!(sm.applied_index(), Some(2));
    assert_eq!(RaftStateMachine::applied_state(&mut sm).await.unwrap().0, Some(log_id(2)));
    assert_eq!(scan(&sm, Unbounded, Unbounded), vec![1]);

    // Purge and truncate keep the log without holes, across a reopen too.
    log.blocking_append((3..=6).map(|i| Entry { log_id: log_id(i), payload: EntryPayload::Blank }))
        .await
        .unwrap();
    log.purge(log_id(2)).await.unwrap();
    log.truncate(log_id(5)).await.unwrap();
    drop((log, sm));
    let (mut log, _sm) = open(&opts(dir.path(), 1)).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(2)), Some(log_id(4))));
    let idx: Vec<u64> =
        log.try_get_log_entries(0..100).await.unwrap().iter().map(|e| e.log_id.index).collect();
    assert_eq!(idx, vec![3, 4]);
}

/// A node that led before it stopped does not come back as leader (openraft 0.9 would resume
/// the same term without an election, with a log that may lack entries its followers
/// committed): its own committed vote reads back uncommitted; anyone else's stays as it was.
#[tokio::test]
async fn store_restart_does_not_restore_leadership() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open(&opts(dir.path(), 1)).unwrap();
        log.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
    }
    let (mut log, _sm) = open(&opts(dir.path(), 1)).unwrap();
    let vote = log.read_vote().await.unwrap().expect("the vote survives");
    assert_eq!(vote, Vote::new(4, 1), "same term, still voted for itself, not committed");
    assert!(!vote.is_committed());

    let other = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open(&opts(other.path(), 2)).unwrap();
        log.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
    }
    let (mut log, _sm) = open(&opts(other.path(), 2)).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new_committed(4, 1)));
}

#[test]
fn store_refuses_a_data_dir_of_another_node() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&opts(dir.path(), 2)).unwrap());
    let err = open(&opts(dir.path(), 3)).err().expect("node 3 must be refused");
    let path = dir.path().join("data");
    assert_eq!(
        err.to_string(),
        format!(
            "data dir {path:?} belongs to node 2, not node 3: start with --id 2, or point --data-dir at an empty directory"
        )
    );
    assert!(open(&opts(dir.path(), 2)).is_ok());
}

#[test]
fn store_gives_each_data_dir_its_own_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(&opts(dir.path(), 2)).unwrap().1.incarnation();
    assert_ne!(first, 0);
    assert_eq!(open(&opts(dir.path(), 2)).unwrap().1.incarnation(), first, "fixed for the dir's life");
    let other = tempfile::tempdir().unwrap();
    assert_ne!(open(&opts(other.path(), 2)).unwrap().1.incarnation(), first, "a new dir, a new one");

    // A dir from before incarnations, and a damaged incarnation file, are refused readably.
    let file = dir.path().join("data").join(INCARNATION_FILE);
    std::fs::write(&file, b"zz\n").unwrap();
    let err = open(&opts(dir.path(), 2)).err().expect("a damaged incarnation file");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    std::fs::write(&file, format!("{first:016x}\n")).unwrap();
    assert_eq!(open(&opts(dir.path(), 2)).unwrap().1.incarnation(), first);
    // Format 2 (no format file: its log entries hold structured change sets), format 1 (no
    // incarnation either), and a format from the future.
    let format = dir.path().join("data").join(FORMAT_FILE);
    std::fs::remove_file(&format).unwrap();
    let err = open(&opts(dir.path(), 2)).err().expect("a format 2 data dir");
    assert!(matches!(err, Error::OldFormat { found: 2, .. }), "{err}");
    assert!(err.to_string().contains("under a new --id"), "{err}");
    std::fs::remove_file(&file).unwrap();
    let err = open(&opts(dir.path(), 2)).err().expect("a format 1 data dir");
    assert!(matches!(err, Error::OldFormat { found: 1, .. }), "{err}");
    // Format 3: members had no peer address.
    std::fs::write(&format, b"3\n").unwrap();
    let err = open(&opts(dir.path(), 2)).err().expect("a format 3 data dir");
    assert!(matches!(err, Error::OldFormat { found: 3, .. }), "{err}");
    std::fs::write(&format, format!("{}\n", DATA_FORMAT + 1)).unwrap();
    let err = open(&opts(dir.path(), 2)).err().expect("a newer data dir");
    assert!(matches!(err, Error::NewerFormat { found, .. } if found == DATA_FORMAT + 1), "{err}");
}

#[test]
fn store_refuses_unusable_data_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, b"x").unwrap();
    let err = open(&opts(dir.path(), 1)).err().expect("a file is not a data dir");
    assert!(matches!(err, Error::NotADirectory { .. }), "{err}");

    let other = tempfile::tempdir().unwrap();
    let _held = open(&opts(other.path(), 1)).unwrap();
    let err = open(&opts(other.path(), 1)).err().expect("a locked data dir");
    assert!(err.to_string().contains("another raftsql-server may be running on it"), "{err}");
}

/// Measures how long building a snapshot blocks apply, for the module doc.
#[tokio::test]
async fn store_snapshot_pause() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(&opts(dir.path(), 1)).unwrap();
    let n = 20_000;
    let mut changes = vec![Change::CreateTable(users()), Change::CreateIndex(by_age())];
    changes.extend((0..n).map(|i| user(i, "someone", I(i % 90))));
    apply(&mut sm, vec![normal(1, ChangeSet::new(vec![req(changes)]))]).await;
    let started = std::time::Instant::now();
    let (snap, paused) = snapshot::SnapshotBuilder { sm: sm.clone() }.build_blocking().unwrap();
    let took = started.elapsed();
    eprintln!("snapshot of {n} rows: apply blocked {paused:?}, {took:?} in total");
    assert_eq!(snap.meta.last_log_id, Some(log_id(1)));
}

const CRASH_CHILD_ENV: &str = "RAFTSQL_STORE_CRASH_CHILD_DIR";

/// The writer half of `store_crash_keeps_acknowledged_writes`: runs only in the child process.
/// Appends and applies entry i (inserting row i), printing `acked i` once the append callback
/// said it is durable; then waits to be killed.
#[test]
fn store_crash_child() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut log, mut sm) = open(&opts(Path::new(&dir), 1)).unwrap();
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        let cs = ChangeSet::new(vec![req(vec![Change::CreateTable(users())])]);
        log.blocking_append([normal(1, cs.clone())]).await.unwrap();
        apply(&mut sm, vec![normal(1, cs)]).await;
        for i in 2.. {
            let entry = normal(i, ChangeSet::new(vec![req(vec![user(i as i64, "x", I(i as i64))])]));
            log.blocking_append([entry.clone()]).await.unwrap();
            println!("acked {i}");
            apply(&mut sm, vec![entry]).await;
        }
    });
}

/// kill -9 a writer, then check the crash argument of the module doc: every acknowledged entry
/// is in the log, the log has no hole, and the state machine is exactly some applied prefix.
#[tokio::test]
async fn store_crash_keeps_acknowledged_writes() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["store::tests::store_crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = 0;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(i) = line.unwrap().strip_prefix("acked ") {
            acked = i.parse().unwrap();
            if acked >= 300 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no flush
    child.wait().unwrap();
    assert!(acked >= 300, "the child stopped early");

    let (mut log, mut sm) = open(&opts(dir.path(), 1)).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
    let last = log.get_log_state().await.unwrap().last_log_id.unwrap().index;
    assert!(last >= acked, "acknowledged {acked}, log ends at {last}");
    let idx: Vec<u64> = log.try_get_log_entries(..).await.unwrap().iter().map(|e| e.log_id.index).collect();
    assert_eq!(idx, (1..=last).collect::<Vec<_>>(), "no hole");
    let applied = sm.applied_index().unwrap_or(0);
    assert!(applied <= last);
    let want: Vec<i64> = (2..=applied as i64).collect();
    assert_eq!(scan(&sm, Unbounded, Unbounded), want, "state machine is the prefix up to {applied}");
    // What openraft does at start-up: re-apply the rest from the log.
    let rest = log.try_get_log_entries(applied + 1..=last).await.unwrap();
    apply(&mut sm, rest).await;
    assert_eq!(scan(&sm, Unbounded, Unbounded), (2..=last as i64).collect::<Vec<_>>());
    eprintln!("crash: acknowledged {acked}, log ends at {last}, applied {applied}");
}

/// Issue 23: sled 0.34.7 deadlocked when it truncated its file (a free segment at the end)
/// while every thread of its pool waited for the segment accountant that the truncation's
/// waiter held (vendor/sled/PATCHES.md). This load — a few hot keys rewritten in batches of
/// varying size by six threads, half of them fsyncing after every batch, as the log, vote and
/// state machine do — deadlocked the unpatched crate within about 5 s, every time. Passes when
/// every writer keeps making progress for the whole run.
#[test]
fn sled_truncation_never_waits_for_the_pool() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    const RUN: Duration = Duration::from_secs(8);
    const STALL: Duration = Duration::from_secs(4);
    let dir = tempfile::tempdir().expect("create a temp dir");
    let db = sled::Config::new().path(dir.path()).flush_every_ms(Some(500)).open().expect("open sled");
    let stop = Arc::new(AtomicBool::new(false));
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..6).map(|_| AtomicU64::new(0)).collect());
    let writers: Vec<_> = (0..6u64)
        .map(|w| {
            let (db, stop, progress) = (db.clone(), stop.clone(), progress.clone());
            std::thread::spawn(move || {
                let tree = db.open_tree(format!("t{}", w % 3)).expect("open a tree");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut batch = sled::Batch::default();
                    for j in 0..(1 + i % 8) {
                        let value = vec![(i % 251) as u8; 100 + ((i * 7919) % 3000) as usize];
                        batch.insert(&(w * 100 + (i + j) % 10).to_be_bytes(), value);
                    }
                    tree.apply_batch(batch).expect("apply a batch");
                    if w % 2 == 0 {
                        db.flush().expect("flush");
                    }
                    i += 1;
                    progress[w as usize].store(i, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut last: Vec<(u64, Instant)> = vec![(0, started); 6];
    while started.elapsed() < RUN {
        std::thread::sleep(Duration::from_millis(100));
        for (w, (count, since)) in last.iter_mut().enumerate() {
            let now = progress[w].load(Ordering::Relaxed);
            if now != *count {
                (*count, *since) = (now, Instant::now());
            }
            // A deadlocked writer cannot be joined: fail and let the process end with it.
            assert!(
                since.elapsed() < STALL,
                "writer {w} made no progress for {STALL:?} after {now} batches: sled is deadlocked"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("a writer panicked");
    }
    assert!(last.iter().all(|(count, _)| *count > 0));
}

/// An appended entry is reported durable only after an fdatasync of sled's log file, and a
/// large entry, which sled keeps in a blob file of its own, only after that file and its
/// directory were fsynced (vendor/sled/PATCHES.md: sled 0.34.7 used sync_file_range, which
/// flushes neither the drive's cache nor the file's size, and never synced blob files, so
/// acknowledged writes could be lost to a power failure though never to a kill -9).
/// nextest runs each test in its own process, so the counters see this test's store alone.
#[tokio::test]
async fn store_append_fdatasyncs_the_log_and_blob_files() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = open(&opts(dir.path(), 1)).unwrap();
    let (log_syncs, blob_syncs) =
        (sled::RAFTSQL_LOG_SYNCS.load(Relaxed), sled::RAFTSQL_BLOB_SYNCS.load(Relaxed));
    let small = ChangeSet::new(vec![req(vec![Change::CreateTable(users())])]);
    log.blocking_append([normal(1, small)]).await.unwrap();
    assert!(
        sled::RAFTSQL_LOG_SYNCS.load(Relaxed) > log_syncs,
        "an append returned before an fdatasync of the log"
    );

    // 1 MiB in one row: far over sled's inline limit, so it goes to a blob file.
    let big = user(2, &"x".repeat(1 << 20), Null);
    let log_syncs = sled::RAFTSQL_LOG_SYNCS.load(Relaxed);
    log.blocking_append([normal(2, ChangeSet::new(vec![req(vec![big])]))]).await.unwrap();
    assert!(sled::RAFTSQL_BLOB_SYNCS.load(Relaxed) > blob_syncs, "a blob file was never fsynced");
    assert!(
        sled::RAFTSQL_LOG_SYNCS.load(Relaxed) > log_syncs,
        "an append returned before an fdatasync of the log"
    );
}

/// sled's buffer writes are no longer synced one by one (vendor/sled/PATCHES.md): applying
/// entries costs no fdatasync however many buffers they fill, and one flush (one log append)
/// costs exactly one, however many buffers it covers. nextest runs each test in its own
/// process, so the counter sees this test's store alone.
#[tokio::test]
async fn store_apply_costs_no_fdatasync_and_an_append_costs_one() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut sm) = open(&opts(dir.path(), 1)).unwrap();
    apply(&mut sm, vec![normal(1, ChangeSet::new(vec![req(vec![Change::CreateTable(users())])]))]).await;
    let before = sled::RAFTSQL_LOG_SYNCS.load(Relaxed);
    // 20 entries of 100 rows with 2 KiB names: about 4 MB, several of sled's 512 KiB buffers.
    let name = "n".repeat(2048);
    let entries = (0..20i64)
        .map(|e| {
            normal(
                2 + e as u64,
                ChangeSet::new(vec![req((0..100).map(|r| user(e * 100 + r, &name, I(r))).collect())]),
            )
        })
        .collect();
    apply(&mut sm, entries).await;
    assert_eq!(sled::RAFTSQL_LOG_SYNCS.load(Relaxed), before, "apply fdatasynced the log");

    let small = ChangeSet::new(vec![req(vec![user(1_000_000, "x", Null)])]);
    log.blocking_append([normal(22, small)]).await.unwrap();
    assert_eq!(sled::RAFTSQL_LOG_SYNCS.load(Relaxed), before + 1, "one append, one fdatasync");
    assert_eq!(scan(&sm, Bound::Unbounded, Bound::Unbounded).len(), 2_000);
}

/// A segment that sled freed (its live pages moved elsewhere) is reused only after an
/// fdatasync, since the writes that moved those pages are no longer synced one by one; and the
/// store reads back what was written last after churning through many reused segments.
#[test]
fn sled_reuses_a_freed_segment_only_after_an_fdatasync() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().expect("create a temp dir");
    let path = dir.path().join("db");
    let value = |round: u32, key: u32| format!("{round:08}-{key:08}-{}", "v".repeat(1000)).into_bytes();
    const KEYS: u32 = 200;
    let rounds = {
        let db = sled::Config::new().path(&path).open().expect("open sled");
        let mut round = 0;
        // 200 KiB of live data rewritten until sled has reused a segment, at most 400 times
        // (80 MB, about 160 segments of 512 KiB).
        while sled::RAFTSQL_REUSE_SYNCS.load(Relaxed) == 0 && round < 400 {
            round += 1;
            for key in 0..KEYS {
                db.insert(key.to_be_bytes(), value(round, key)).expect("insert");
            }
            db.flush().expect("flush");
        }
        assert!(sled::RAFTSQL_REUSE_SYNCS.load(Relaxed) > 0, "no segment was reused in {round} rounds");
        // More churn after the first reuse, so that reused segments are read back below.
        for _ in 0..20 {
            round += 1;
            for key in 0..KEYS {
                db.insert(key.to_be_bytes(), value(round, key)).expect("insert");
            }
            db.flush().expect("flush");
        }
        round
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match sled::Config::new().path(&path).open() {
            Ok(db) => break db,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("reopen sled: {e}"),
        }
    };
    for key in 0..KEYS {
        let got = db.get(key.to_be_bytes()).expect("get").expect("every key is there");
        assert_eq!(&*got, &value(rounds, key)[..], "key {key} after {rounds} rounds");
    }
}

/// Voluntary context switches of this process's sled pool threads (`sled-io-*`) so far.
fn sled_pool_switches() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("read /proc/self/task").flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("sled-io") {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// A task queued on sled's thread pool wakes one pool thread, not all seven of them (sled woke
/// every idle thread per task: about 25 context switches per replicated write per node;
/// vendor/sled/PATCHES.md, "One pool thread woken per task").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_pool_task_wakes_one_pool_thread() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut sm) = open(&opts(dir.path(), 1)).unwrap();
    apply(&mut sm, vec![normal(1, ChangeSet::new(vec![req(vec![Change::CreateTable(users())])]))]).await;
    let (tasks_before, switches_before) = (sled::RAFTSQL_POOL_TASKS.load(Relaxed), sled_pool_switches());
    let started = std::time::Instant::now();
    for i in 0..300i64 {
        let entry = ChangeSet::new(vec![req(vec![user(10 + i, "x", Null)])]);
        log.blocking_append([normal(2 + i as u64, entry.clone())]).await.unwrap();
        apply(&mut sm, vec![normal(2 + i as u64, entry)]).await;
    }
    let tasks = sled::RAFTSQL_POOL_TASKS.load(Relaxed) - tasks_before;
    let switches = sled_pool_switches() - switches_before;
    // Every idle pool thread also wakes once a second (its wait's timeout), and a woken thread
    // may block briefly on sled's locks; woken all at once, seven threads switched about seven
    // times per task.
    let idle = 7 * (started.elapsed().as_secs() + 1);
    assert!(tasks >= 300, "300 appends and applies queued only {tasks} pool tasks");
    assert!(switches <= 3 * tasks + idle, "{switches} switches of the pool threads for {tasks} tasks");
}

/// A one-entry append — every append at low concurrency — queues nothing on sled's thread pool:
/// it is a single `insert`, where an `apply_batch` rolls sled's I/O buffer and hands the sealed
/// buffer to a pool thread before the flush may cover it. Appends of several entries still go in
/// one batch, and every entry reads back.
#[tokio::test]
async fn a_one_entry_append_queues_no_sled_pool_task() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = open(&opts(dir.path(), 1)).unwrap();
    let entry = |i: u64| normal(i, ChangeSet::new(vec![req(vec![user(i as i64, "x", Null)])]));
    log.blocking_append([entry(1)]).await.unwrap();
    let before = sled::RAFTSQL_POOL_TASKS.load(Relaxed);
    for i in 2..=101 {
        log.blocking_append([entry(i)]).await.unwrap();
    }
    let one_by_one = sled::RAFTSQL_POOL_TASKS.load(Relaxed) - before;
    // Well under one task per append (a full 512 KiB buffer would still be written by a pool
    // thread; 100 small entries fill none). As batches, the 100 appends queued 100.
    assert!(one_by_one < 10, "100 one-entry appends queued {one_by_one} sled pool tasks");
    let before = sled::RAFTSQL_POOL_TASKS.load(Relaxed);
    log.blocking_append((102..=111).map(entry)).await.unwrap();
    assert!(sled::RAFTSQL_POOL_TASKS.load(Relaxed) > before, "a ten-entry append was not one sled batch");
    let indexes: Vec<u64> =
        log.try_get_log_entries(..).await.unwrap().iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, (1..=111).collect::<Vec<u64>>());
}

/// Within one entry, a row change sees the schema as the entry's earlier changes left it: apply
/// keeps each table's schema for the rest of the entry, and forgets it at any catalog write.
#[tokio::test]
async fn store_one_entry_changing_schema_and_rows_keeps_indexes_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = populated(dir.path()).await;
    // The index is dropped between two row changes: the second may not write an entry for it.
    let drop_index = Change::DropIndex { table: "users".into(), index: "by_age".into() };
    let cs =
        ChangeSet::new(vec![req(vec![user(1, "ann", I(31))]), req(vec![drop_index, user(2, "bob", I(20))])]);
    apply(&mut sm, vec![normal(3, cs)]).await;
    let index_keys = crate::store::keys::table_indexes_prefix("users");
    let left: Vec<_> = dump(&sm).into_iter().filter(|(k, _)| k.starts_with(&index_keys)).collect();
    assert!(left.is_empty(), "index entries after DROP INDEX: {left:?}");
    // The index is created between two row changes: the second must update its entry.
    let cs = ChangeSet::new(vec![
        req(vec![user(3, "cid", I(26))]),
        req(vec![Change::CreateIndex(by_age()), user(4, "dan", I(33))]),
        req(vec![Change::Delete { table: "users".into(), key: vec![I(5)] }]),
    ]);
    apply(&mut sm, vec![normal(4, cs)]).await;
    assert_eq!(
        scan_index(&sm, Unbounded, Unbounded),
        vec![
            (vec![I(20)], vec![I(2)]),
            (vec![I(26)], vec![I(3)]),
            (vec![I(31)], vec![I(1)]),
            (vec![I(33)], vec![I(4)])
        ]
    );
    assert_eq!(scan(&sm, Unbounded, Unbounded), vec![1, 2, 3, 4]);
}
