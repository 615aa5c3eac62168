//! Bound plans of read queries run before, so that a query sent again (a prepared point read
//! with new parameters) is not bound and planned again (issue 18).
//!
//! # What a plan depends on
//!
//! Binding resolves names against the schema, copies the tables' schemas into the plan,
//! chooses access paths (primary-key gets, index ranges) and folds literals; parameters are
//! bound as slots (`BExpr::Param`) whose values the plan reads when it
//! runs. So a plan is a function of the statement's text and the schema alone, and is kept
//! under exactly that key: the text (which the parse cache already maps to one syntax tree) and
//! the view's [`ReadView::schema_version`], which changes with every applied entry that writes
//! the catalog and every installed snapshot, and is never shared by two stores of one process.
//! A view that keeps no version (the leader's overlay of unapplied changes, the in-memory view)
//! never reuses a plan.
//!
//! Not kept:
//! - plans holding subqueries: an uncorrelated subquery caches its rows in the plan for the
//!   rest of one run (`Sub::cache`), so such a plan is good for one run only;
//! - plans of texts over [`MAX_CACHED_TEXT_BYTES`], as in the parse cache;
//! - failed bindings (the error is built again next time, with the request's own positions).
//!
//! A plan bound with `n` parameters is reused only with at least `n`: with fewer, the query is
//! bound again, so the error names the missing parameter as before.
//!
//! # Where it lives
//!
//! A plan holds `Rc`s and `RefCell`s (subquery results), so it is neither `Send` nor `Sync`, and
//! each thread that runs queries keeps its own cache: a runtime worker that serves point reads
//! inline, a blocking thread that serves long ones. Each is bounded by `--plan-cache-bytes`
//! (default [`DEFAULT_BYTES`], 0 turns it off) of estimated plan size (64 bytes per byte of text
//! plus twice the schemas copied), so a node holds at most that many bytes per thread that reads
//! (the client runtime's 2 workers and up to 64 blocking threads). quick_cache's eviction
//! (CLOCK-Pro) admits a text seen once on probation, so a stream of texts with their literals
//! inline does not push out the statements that come back.
//!
//! # What it saves
//!
//! The binding of a point SELECT by primary key: a schema read and decoded from sled, the
//! name resolution, the access-path choice and their allocations (measured in
//! docs/performance.md, "A plan cache").

use super::bind::Binder;
use super::plan::Query;
use super::Error;
use crate::changeset::{ReadView, Value};
use quick_cache::{unsync, Equivalent, Weighter};
use sqlparser::ast;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Texts longer than this are bound every time and never kept.
pub const MAX_CACHED_TEXT_BYTES: usize = super::parse_cache::MAX_CACHED_TEXT_BYTES;

/// Each thread's default bound, in estimated bytes of plans.
pub const DEFAULT_BYTES: u64 = 1 << 20;

/// Estimated bytes of plan per byte of text (a bound expression per token, each a few dozen
/// bytes with its boxes); an overestimate for the short texts that come back.
const PLAN_BYTES_PER_TEXT_BYTE: u64 = 64;

static BYTES: AtomicU64 = AtomicU64::new(DEFAULT_BYTES);
static HITS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);

/// Sizes every thread's cache: `bytes` of estimated plans, 0 for none. Takes effect on threads
/// that have not run a query yet (the node calls it at start).
pub fn configure(bytes: u64) {
    BYTES.store(bytes, Ordering::Relaxed);
}

/// The process's counters: queries whose plan was found, and queries bound (and kept, if they
/// could be) because it was not. Queries on views that keep no schema version are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
}

pub fn stats() -> Stats {
    Stats { hits: HITS.load(Ordering::Relaxed), misses: MISSES.load(Ordering::Relaxed) }
}

#[derive(Hash, PartialEq, Eq)]
struct Key {
    schema: u64,
    text: Box<str>,
}

/// A [`Key`] to look up without allocating; hashes as the key it matches.
#[derive(Hash)]
struct Lookup<'a> {
    schema: u64,
    text: &'a str,
}

impl Equivalent<Key> for Lookup<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.schema == key.schema && self.text == &*key.text
    }
}

struct Entry {
    plan: Rc<Query>,
    /// How many parameters the plan reads (one past the highest slot).
    params: usize,
    weight: u64,
}

#[derive(Clone)]
struct Weigh;

impl Weighter<Key, Entry> for Weigh {
    fn weight(&self, _: &Key, entry: &Entry) -> u64 {
        entry.weight
    }
}

type Cache = unsync::Cache<Key, Entry, Weigh>;

thread_local! {
    /// This thread's plans; built on first use with the bound then configured.
    static PLANS: RefCell<Option<Cache>> = const { RefCell::new(None) };
}

/// The plan of query `q`, whose text is `text`, over `view`: the one this thread bound before
/// for the same text and schema version if it holds it, else a new binding (kept if it can be
/// reused; see the module doc).
pub(super) fn plan(
    view: &dyn ReadView,
    text: &str,
    q: &ast::Query,
    params: &[Value],
) -> Result<Rc<Query>, Error> {
    let capacity = BYTES.load(Ordering::Relaxed);
    let schema = match view.schema_version() {
        Some(v) if capacity > 0 && text.len() <= MAX_CACHED_TEXT_BYTES => v,
        _ => return Ok(Rc::new(Binder::new(view, params).query(q)?)),
    };
    let lookup = Lookup { schema, text };
    let found = PLANS.with_borrow(|cache| {
        let entry = cache.as_ref()?.get(&lookup)?;
        (entry.params <= params.len()).then(|| entry.plan.clone())
    });
    if let Some(plan) = found {
        HITS.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        tests::THREAD_HITS.set(tests::THREAD_HITS.get() + 1);
        return Ok(plan);
    }
    MISSES.fetch_add(1, Ordering::Relaxed);
    let binder = Binder::new(view, params);
    let plan = Rc::new(binder.query(q)?);
    if !binder.notes.subqueries.get() {
        // The schemas twice: a plan holds each table's schema, and `*` copies its columns
        // again into the projection and the output names.
        let weight = (text.len() as u64)
            .saturating_mul(PLAN_BYTES_PER_TEXT_BYTE)
            .saturating_add((binder.notes.schema_bytes.get() as u64).saturating_mul(2))
            .max(1);
        let entry = Entry { plan: plan.clone(), params: binder.notes.params.get(), weight };
        PLANS.with_borrow_mut(|cache| {
            // About 4 KiB for a point read of a narrow table.
            let cache = cache.get_or_insert_with(|| {
                Cache::with_weighter((capacity / 4096).max(1) as usize, capacity, Weigh)
            });
            cache.insert(Key { schema, text: text.into() }, entry);
        });
    }
    Ok(plan)
}

#[cfg(test)]
pub(super) mod tests {
    use crate::changeset::Value;
    use crate::sql::{query, Context, Error, Executor, MemoryView};
    use std::cell::Cell;

    thread_local! {
        /// Plans this thread found in its cache (the process's counters are shared by tests
        /// running at once).
        pub(in crate::sql) static THREAD_HITS: Cell<u64> = const { Cell::new(0) };
    }

    const CTX: Context = Context { now_millis: 1_700_000_000_000, seed: 3 };

    /// A [`MemoryView`] that shows a schema version, as the store's views do.
    struct Versioned {
        data: MemoryView,
        version: u64,
    }

    impl Versioned {
        fn new(version: u64) -> Self {
            // Far from the versions the store's tests draw in the same process.
            let mut v = Versioned { data: MemoryView::new(), version: (1 << 62) + version };
            v.data.set_schema_version(Some(v.version));
            v
        }

        /// Runs `sql` as a write and applies its changes; a schema change takes a new version.
        fn run(&mut self, sql: &str) {
            let (changes, outcomes) =
                Executor::new(&self.data, CTX).execute(&[(sql.to_string(), vec![])], false).unwrap();
            assert!(outcomes.iter().all(|o| o.is_ok()), "{sql}: {outcomes:?}");
            for c in &changes {
                self.data.apply(c);
            }
            if sql.starts_with("CREATE") || sql.starts_with("DROP") || sql.starts_with("ALTER") {
                self.version += 1;
                self.data.set_schema_version(Some(self.version));
            }
        }

        fn rows(&self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, Error> {
            query(&self.data, sql, params, CTX).map(|r| r.rows)
        }
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn hits() -> u64 {
        THREAD_HITS.get()
    }

    /// This thread's cache: estimated bytes and plans held.
    fn held() -> (u64, usize) {
        super::PLANS.with_borrow(|c| c.as_ref().map_or((0, 0), |c| (c.weight(), c.len())))
    }

    /// A client that sends ever new texts (values inline) cannot grow a thread's plans past
    /// the bound, and the texts that come back stay.
    #[test]
    fn a_stream_of_new_texts_stays_within_the_bound() {
        let mut v = Versioned::new(400);
        v.run("CREATE TABLE w (id INTEGER PRIMARY KEY, a TEXT, b TEXT, c TEXT, d TEXT, e TEXT)");
        v.run("INSERT INTO w VALUES (1, 'a', 'b', 'c', 'd', 'e')");
        let again = "SELECT a FROM w WHERE id = $1";
        for i in 0..5_000 {
            if i % 10 == 0 {
                assert_eq!(v.rows(again, &[Value::Integer(1)]).unwrap(), vec![vec![text("a")]]);
            }
            let inline = format!("SELECT *, {i} FROM w WHERE id = {i} OR b = 'value {i}'");
            assert_eq!(v.rows(&inline, &[]).unwrap().len(), usize::from(i == 1));
        }
        let (bytes, plans) = held();
        assert!(bytes <= super::DEFAULT_BYTES, "{bytes} estimated bytes held");
        assert!((100..1_000).contains(&plans), "{plans} plans held: the cache filled up to its bound");
        let before = hits();
        v.rows(again, &[Value::Integer(1)]).unwrap();
        assert_eq!(hits(), before + 1, "the text sent again and again was pushed out");
    }

    /// A plan is bound once per text and schema: later runs read their own parameters, and a
    /// new schema (the same names, the columns moved, an index added) binds it again.
    #[test]
    fn a_plan_runs_again_with_new_parameters_and_is_bound_again_for_a_new_schema() {
        let mut v = Versioned::new(1);
        v.run("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER)");
        v.run("INSERT INTO kv VALUES ('a', 1), ('b', 2), ('c', 3)");
        let get = "SELECT v FROM kv WHERE k = $1";
        let before = hits();
        assert_eq!(v.rows(get, &[text("a")]).unwrap(), vec![vec![Value::Integer(1)]]);
        assert_eq!(v.rows(get, &[text("b")]).unwrap(), vec![vec![Value::Integer(2)]]);
        assert_eq!(v.rows(get, &[text("zz")]).unwrap(), Vec::<Vec<Value>>::new());
        assert_eq!(hits() - before, 2, "bound once, then found twice");

        // Rows change, the schema does not: the plan is still good and sees the new rows.
        v.run("UPDATE kv SET v = 20 WHERE k = 'b'");
        assert_eq!(v.rows(get, &[text("b")]).unwrap(), vec![vec![Value::Integer(20)]]);
        assert_eq!(hits() - before, 3);

        // The same names over another layout: `v` is now the third column.
        v.run("DROP TABLE kv");
        v.run("CREATE TABLE kv (k TEXT PRIMARY KEY, note TEXT, v INTEGER)");
        v.run("INSERT INTO kv VALUES ('a', 'x', 100)");
        assert_eq!(v.rows(get, &[text("a")]).unwrap(), vec![vec![Value::Integer(100)]]);
        assert_eq!(hits() - before, 3, "a new schema binds the text again");
        v.run("CREATE INDEX kv_v ON kv (v)");
        let by_v = "SELECT k FROM kv WHERE v = $1";
        assert_eq!(v.rows(by_v, &[Value::Integer(100)]).unwrap(), vec![vec![text("a")]]);
        assert_eq!(v.rows(by_v, &[Value::Integer(7)]).unwrap(), Vec::<Vec<Value>>::new());
        assert_eq!(hits() - before, 4);
    }

    /// What binding did with a parameter's value it now does when the plan runs: a text
    /// compared with a numeric column is taken as the number it spells, every time.
    #[test]
    fn a_reused_plan_gives_each_run_its_own_parameters_as_binding_did() {
        let mut v = Versioned::new(100);
        v.run("CREATE TABLE n (id INTEGER PRIMARY KEY, s TEXT)");
        v.run("INSERT INTO n VALUES (5, 'five'), (6, 'six')");
        let by_id = "SELECT s FROM n WHERE id = $1";
        for (p, want) in
            [(text("5"), "five"), (Value::Integer(6), "six"), (text("6"), "six"), (Value::Real(5.0), "five")]
        {
            assert_eq!(v.rows(by_id, std::slice::from_ref(&p)).unwrap(), vec![vec![text(want)]], "{p:?}");
        }
        assert_eq!(v.rows(by_id, &[text("5x")]).unwrap(), Vec::<Vec<Value>>::new());
        let sum = "SELECT $1 + 1, -$1, $2 || 'z'";
        assert_eq!(
            v.rows(sum, &[Value::Integer(1), text("a")]).unwrap(),
            vec![vec![Value::Integer(2), Value::Integer(-1), text("az")]]
        );
        assert_eq!(
            v.rows(sum, &[Value::Real(0.5), Value::Null]).unwrap(),
            vec![vec![Value::Real(1.5), Value::Real(-0.5), Value::Null]]
        );
        // Fewer parameters than the plan reads: bound again, so the error is binding's own.
        let e = v.rows(sum, &[Value::Integer(1)]).unwrap_err();
        assert!(e.to_string().contains("parameter $2 has no value: 1 given"), "{e}");
        assert_eq!(v.rows(sum, &[Value::Integer(2), text("b")]).unwrap()[0][0], Value::Integer(3));
    }

    /// An uncorrelated subquery keeps its rows in the plan for one run, so a plan holding one is
    /// never reused: a second run sees rows written since.
    #[test]
    fn a_plan_with_a_subquery_is_bound_for_every_run() {
        let mut v = Versioned::new(200);
        v.run("CREATE TABLE s (id INTEGER PRIMARY KEY, x INTEGER)");
        v.run("INSERT INTO s VALUES (1, 10)");
        let q = "SELECT id FROM s WHERE x = (SELECT max(x) FROM s)";
        let before = hits();
        assert_eq!(v.rows(q, &[]).unwrap(), vec![vec![Value::Integer(1)]]);
        v.run("INSERT INTO s VALUES (2, 20)");
        assert_eq!(v.rows(q, &[]).unwrap(), vec![vec![Value::Integer(2)]]);
        let max = "SELECT (SELECT max(x) FROM s) + $1";
        assert_eq!(v.rows(max, &[Value::Integer(1)]).unwrap(), vec![vec![Value::Integer(21)]]);
        v.run("INSERT INTO s VALUES (3, 30)");
        assert_eq!(v.rows(max, &[Value::Integer(1)]).unwrap(), vec![vec![Value::Integer(31)]]);
        assert_eq!(hits(), before, "nothing with a subquery was reused");
    }

    /// A view that keeps no schema version (the leader's overlay, the in-memory view) never
    /// reuses a plan, and a failed binding is not kept.
    #[test]
    fn nothing_is_reused_without_a_schema_version_or_after_an_error() {
        let mut v = Versioned::new(300);
        v.run("CREATE TABLE e (id INTEGER PRIMARY KEY)");
        let mut unversioned = v.data.clone();
        unversioned.set_schema_version(None);
        let before = hits();
        for _ in 0..2 {
            let e = v.rows("SELECT nope FROM e", &[]).unwrap_err();
            assert!(e.to_string().contains("nope"), "{e}");
            assert!(query(&unversioned, "SELECT id FROM e", &[], CTX).is_ok());
        }
        assert_eq!(hits(), before);
    }
}
