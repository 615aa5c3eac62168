//! An in-memory layer of changes over a [`ReadView`]: what a batch has written so far, visible
//! to the statements after it, and discarded or kept as a whole (transactions). With an empty
//! base it is [`MemoryView`], the in-memory store of `sql`'s own tests.

use super::eval::compare_tuples;
use crate::changeset::{Change, IndexIter, Key, ReadError, ReadView, Row, RowIter, TableSchema, Value};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Bound;

/// A key ordered as the `ReadView` contract orders keys.
#[derive(Clone, Debug)]
pub(crate) struct OrdKey(pub Key);

impl PartialEq for OrdKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for OrdKey {}
impl PartialOrd for OrdKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_tuples(&self.0, &other.0)
    }
}

/// Whether `key` lies within the bounds, with the contract's prefix semantics.
pub(crate) fn in_range(key: &[Value], lower: &Bound<Key>, upper: &Bound<Key>) -> bool {
    let prefix_cmp = |b: &Key| compare_tuples(&key[..b.len().min(key.len())], b);
    let lower_ok = match lower {
        Bound::Unbounded => true,
        Bound::Included(b) => prefix_cmp(b) != Ordering::Less,
        Bound::Excluded(b) => prefix_cmp(b) == Ordering::Greater,
    };
    let upper_ok = match upper {
        Bound::Unbounded => true,
        Bound::Included(b) => prefix_cmp(b) != Ordering::Greater,
        Bound::Excluded(b) => prefix_cmp(b) == Ordering::Less,
    };
    lower_ok && upper_ok
}

struct Empty;

impl ReadView for Empty {
    fn table(&self, _: &str) -> Result<Option<TableSchema>, ReadError> {
        Ok(None)
    }
    fn tables(&self) -> Result<Vec<TableSchema>, ReadError> {
        Ok(vec![])
    }
    fn get(&self, _: &str, _: &[Value]) -> Result<Option<Row>, ReadError> {
        Ok(None)
    }
    fn scan(&self, _: &str, _: Bound<Key>, _: Bound<Key>) -> RowIter<'_> {
        Box::new(std::iter::empty())
    }
    fn scan_index(&self, _: &str, _: &str, _: Bound<Vec<Value>>, _: Bound<Vec<Value>>) -> IndexIter<'_> {
        Box::new(std::iter::empty())
    }
    fn last_key(&self, _: &str) -> Result<Option<Key>, ReadError> {
        Ok(None)
    }
}

static EMPTY: Empty = Empty;

/// Whether `values` lies past the upper bound (so no later entry can be in range).
fn prefix_beyond(values: &[Value], upper: &Bound<Key>) -> bool {
    let cmp = |b: &Key| compare_tuples(&values[..b.len().min(values.len())], b);
    match upper {
        Bound::Unbounded => false,
        Bound::Included(b) => cmp(b) == Ordering::Greater,
        Bound::Excluded(b) => cmp(b) != Ordering::Less,
    }
}

/// Pending index entries of one table: per index, (indexed values, key).
type IndexEntries = BTreeMap<String, BTreeSet<(OrdKey, OrdKey)>>;

/// The inverse of one change to an overlay's maps, so a statement or request that fails is
/// undone in proportion to what it changed — not by copying the whole overlay before every
/// statement, which made a batch of n statements cost n².
#[derive(Clone)]
enum Undo {
    /// `tables[name]` was this (None: absent).
    Table(String, Option<Option<TableSchema>>),
    /// `fresh` held `name` or not.
    Fresh(String, bool),
    /// `rows[name]` was this whole map (None: absent).
    Rows(String, Option<BTreeMap<OrdKey, Option<Row>>>),
    /// `rows[name][key]` was this (None: absent).
    Row(String, OrdKey, Option<Option<Row>>),
    /// `index_entries[name]` was this (None: absent).
    IndexTable(String, Option<IndexEntries>),
    /// `index_entries[table][index]` was this (None: absent).
    IndexSet(String, String, Option<BTreeSet<(OrdKey, OrdKey)>>),
    /// An entry was added to (false) or removed from (true) `index_entries[table][index]`.
    IndexEntry(String, String, (OrdKey, OrdKey), bool),
}

/// Changes over a base view. Table names are compared case-insensitively.
#[derive(Clone)]
pub(crate) struct Overlay<'a> {
    base: &'a dyn ReadView,
    /// Tables created, altered or dropped (None) here.
    tables: BTreeMap<String, Option<TableSchema>>,
    /// Tables whose base rows no longer count (dropped or created here).
    fresh: HashSet<String>,
    /// Rows written (Some) or deleted (None) here.
    rows: BTreeMap<String, BTreeMap<OrdKey, Option<Row>>>,
    /// Index entries (indexed values, key) of the rows written here, per table and index, kept
    /// as rows change so a lookup costs O(log n) however large the batch.
    index_entries: BTreeMap<String, IndexEntries>,
    /// Inverses of the changes since the last [`commit`](Overlay::commit), when recording.
    undo: Vec<Undo>,
    recording: bool,
}

fn lower(name: &str) -> String {
    name.to_ascii_lowercase()
}

impl<'a> Overlay<'a> {
    pub fn new(base: &'a dyn ReadView) -> Self {
        Overlay {
            base,
            tables: BTreeMap::new(),
            fresh: HashSet::new(),
            rows: BTreeMap::new(),
            index_entries: BTreeMap::new(),
            undo: Vec::new(),
            recording: true,
        }
    }

    /// A point to roll back to.
    pub fn mark(&self) -> usize {
        self.undo.len()
    }

    /// Undoes every change since `mark`.
    pub fn rollback(&mut self, mark: usize) {
        while self.undo.len() > mark {
            let Some(u) = self.undo.pop() else { break };
            match u {
                Undo::Table(name, Some(t)) => {
                    self.tables.insert(name, t);
                }
                Undo::Table(name, None) => {
                    self.tables.remove(&name);
                }
                Undo::Fresh(name, true) => {
                    self.fresh.insert(name);
                }
                Undo::Fresh(name, false) => {
                    self.fresh.remove(&name);
                }
                Undo::Rows(name, Some(m)) => {
                    self.rows.insert(name, m);
                }
                Undo::Rows(name, None) => {
                    self.rows.remove(&name);
                }
                Undo::Row(name, key, prev) => {
                    if let Some(rows) = self.rows.get_mut(&name) {
                        match prev {
                            Some(r) => rows.insert(key, r),
                            None => rows.remove(&key),
                        };
                    }
                }
                Undo::IndexTable(name, Some(m)) => {
                    self.index_entries.insert(name, m);
                }
                Undo::IndexTable(name, None) => {
                    self.index_entries.remove(&name);
                }
                Undo::IndexSet(table, index, prev) => {
                    if let Some(m) = self.index_entries.get_mut(&table) {
                        match prev {
                            Some(set) => m.insert(index, set),
                            None => m.remove(&index),
                        };
                    }
                }
                Undo::IndexEntry(table, index, entry, removed) => {
                    if let Some(set) = self.index_entries.get_mut(&table).and_then(|m| m.get_mut(&index)) {
                        if removed {
                            set.insert(entry);
                        } else {
                            set.remove(&entry);
                        }
                    }
                }
            }
        }
    }

    /// Forgets the undo log: what is applied so far stays.
    pub fn commit(&mut self) {
        self.undo.clear();
    }

    fn record(&mut self, u: impl FnOnce() -> Undo) {
        if self.recording {
            self.undo.push(u());
        }
    }

    fn set_table(&mut self, name: String, t: Option<TableSchema>) {
        let prev = self.tables.insert(name.clone(), t);
        self.record(|| Undo::Table(name, prev));
    }

    fn set_fresh(&mut self, name: String) {
        let inserted = self.fresh.insert(name.clone());
        self.record(|| Undo::Fresh(name, !inserted));
    }

    fn take_rows(&mut self, name: &str) {
        let prev = self.rows.remove(name);
        if prev.is_some() {
            self.record(|| Undo::Rows(name.to_string(), prev));
        }
        let prev = self.index_entries.remove(name);
        if prev.is_some() {
            self.record(|| Undo::IndexTable(name.to_string(), prev));
        }
    }

    fn index_set(&mut self, table: &str, index: &str) -> &mut BTreeSet<(OrdKey, OrdKey)> {
        if !self.index_entries.contains_key(table) {
            self.index_entries.insert(table.to_string(), BTreeMap::new());
            self.record(|| Undo::IndexTable(table.to_string(), None));
        }
        if !self.index_entries.get(table).is_some_and(|m| m.contains_key(index)) {
            if let Some(m) = self.index_entries.get_mut(table) {
                m.insert(index.to_string(), BTreeSet::new());
            }
            self.record(|| Undo::IndexSet(table.to_string(), index.to_string(), None));
        }
        self.index_entries.entry(table.to_string()).or_default().entry(index.to_string()).or_default()
    }

    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::CreateTable(schema) => {
                let name = lower(&schema.name);
                self.set_fresh(name.clone());
                self.take_rows(&name);
                self.set_table(name, Some(schema.clone()));
            }
            Change::DropTable { table } => {
                let name = lower(table);
                self.set_fresh(name.clone());
                self.take_rows(&name);
                self.set_table(name, None);
            }
            Change::CreateIndex(index) => {
                if let Ok(Some(mut schema)) = self.table(&index.table) {
                    schema.indexes.push(index.clone());
                    let name = lower(&index.table);
                    let mut entries = BTreeSet::new();
                    for (k, r) in self.rows.get(&name).into_iter().flatten() {
                        if let Some(r) = r {
                            entries.insert((
                                OrdKey(index.columns.iter().map(|&c| r[c].clone()).collect()),
                                k.clone(),
                            ));
                        }
                    }
                    let ix = lower(&index.name);
                    let set = self.index_set(&name, &ix);
                    let prev = std::mem::replace(set, entries);
                    self.record(|| Undo::IndexSet(name.clone(), ix, Some(prev)));
                    self.set_table(name, Some(schema));
                }
            }
            Change::DropIndex { table, index } => {
                if let Ok(Some(mut schema)) = self.table(table) {
                    schema.indexes.retain(|i| !i.name.eq_ignore_ascii_case(index));
                    let (t, ix) = (lower(table), lower(index));
                    if let Some(prev) = self.index_entries.get_mut(&t).and_then(|m| m.remove(&ix)) {
                        self.record(|| Undo::IndexSet(t.clone(), ix, Some(prev)));
                    }
                    self.set_table(t, Some(schema));
                }
            }
            Change::Insert { table, key, row } | Change::Update { table, key, row } => {
                self.put_row(table, key, Some(row.clone()));
            }
            Change::Delete { table, key } => self.put_row(table, key, None),
        }
    }

    /// Records a row version and keeps the pending index entries in step.
    fn put_row(&mut self, table: &str, key: &Key, row: Option<Row>) {
        let name = lower(table);
        let key = OrdKey(key.clone());
        let schema = self.table(table).ok().flatten();
        let old = self.rows.get(&name).and_then(|rows| rows.get(&key)).cloned().flatten();
        if let Some(schema) = schema {
            for ix in &schema.indexes {
                let ix_name = lower(&ix.name);
                if let Some(old) = &old {
                    let entry = (OrdKey(ix.columns.iter().map(|&c| old[c].clone()).collect()), key.clone());
                    if self.index_set(&name, &ix_name).remove(&entry) {
                        self.record(|| Undo::IndexEntry(name.clone(), ix_name.clone(), entry, true));
                    }
                }
                if let Some(new) = &row {
                    let entry = (OrdKey(ix.columns.iter().map(|&c| new[c].clone()).collect()), key.clone());
                    if self.index_set(&name, &ix_name).insert(entry.clone()) {
                        self.record(|| Undo::IndexEntry(name.clone(), ix_name.clone(), entry, false));
                    }
                }
            }
        }
        if !self.rows.contains_key(&name) {
            self.rows.insert(name.clone(), BTreeMap::new());
            self.record(|| Undo::Rows(name.clone(), None));
        }
        let prev = self.rows.entry(name.clone()).or_default().insert(key.clone(), row);
        self.record(|| Undo::Row(name, key, prev));
    }

    fn base_counts(&self, table: &str) -> bool {
        !self.fresh.contains(&lower(table))
    }

    /// Every row of a table in key order, merged.
    fn merged(
        &self,
        table: &str,
        lower_b: &Bound<Key>,
        upper_b: &Bound<Key>,
    ) -> Result<Vec<(Key, Row)>, ReadError> {
        let mut out: BTreeMap<OrdKey, Row> = BTreeMap::new();
        if self.base_counts(table) {
            for item in self.base.scan(table, lower_b.clone(), upper_b.clone()) {
                let (k, r) = item?;
                out.insert(OrdKey(k), r);
            }
        }
        if let Some(rows) = self.rows.get(&lower(table)) {
            for (k, r) in rows {
                if !in_range(&k.0, lower_b, upper_b) {
                    continue;
                }
                match r {
                    Some(r) => out.insert(k.clone(), r.clone()),
                    None => out.remove(k),
                };
            }
        }
        Ok(out.into_iter().map(|(k, r)| (k.0, r)).collect())
    }
}

impl ReadView for Overlay<'_> {
    fn table(&self, name: &str) -> Result<Option<TableSchema>, ReadError> {
        match self.tables.get(&lower(name)) {
            Some(t) => Ok(t.clone()),
            None => self.base.table(name),
        }
    }

    fn tables(&self) -> Result<Vec<TableSchema>, ReadError> {
        let mut all: BTreeMap<String, TableSchema> =
            self.base.tables()?.into_iter().map(|t| (lower(&t.name), t)).collect();
        for (name, t) in &self.tables {
            match t {
                Some(t) => all.insert(name.clone(), t.clone()),
                None => all.remove(name),
            };
        }
        Ok(all.into_values().collect())
    }

    fn get(&self, table: &str, key: &[Value]) -> Result<Option<Row>, ReadError> {
        if let Some(r) = self.rows.get(&lower(table)).and_then(|rows| rows.get(&OrdKey(key.to_vec()))) {
            return Ok(r.clone());
        }
        if self.base_counts(table) {
            self.base.get(table, key)
        } else {
            Ok(None)
        }
    }

    fn scan(&self, table: &str, lower_b: Bound<Key>, upper_b: Bound<Key>) -> RowIter<'_> {
        if !self.rows.contains_key(&lower(table)) && self.base_counts(table) {
            return self.base.scan(table, lower_b, upper_b);
        }
        match self.merged(table, &lower_b, &upper_b) {
            Ok(rows) => Box::new(rows.into_iter().map(Ok)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn scan_index(
        &self,
        table: &str,
        index: &str,
        lower_b: Bound<Vec<Value>>,
        upper_b: Bound<Vec<Value>>,
    ) -> IndexIter<'_> {
        let name = lower(table);
        if !self.rows.contains_key(&name) && self.base_counts(table) && !self.tables.contains_key(&name) {
            return self.base.scan_index(table, index, lower_b, upper_b);
        }
        let build = || -> Result<Vec<(Vec<Value>, Key)>, ReadError> {
            let Some(schema) = self.table(table)? else { return Ok(vec![]) };
            let Some(ix) = schema.indexes.iter().find(|i| i.name.eq_ignore_ascii_case(index)) else {
                return Ok(vec![]);
            };
            let pending = self.rows.get(&name);
            let mut entries: Vec<(Vec<Value>, Key)> = Vec::new();
            if self.base_counts(table) {
                let base_has_index = self
                    .base
                    .table(table)?
                    .is_some_and(|t| t.indexes.iter().any(|i| i.name.eq_ignore_ascii_case(index)));
                if base_has_index {
                    // Base entries, except rows this overlay rewrote or deleted.
                    for e in self.base.scan_index(table, index, lower_b.clone(), upper_b.clone()) {
                        let (values, key) = e?;
                        if pending.is_none_or(|p| !p.contains_key(&OrdKey(key.clone()))) {
                            entries.push((values, key));
                        }
                    }
                } else {
                    // The index was created in this batch: index the base rows now.
                    for item in self.base.scan(table, Bound::Unbounded, Bound::Unbounded) {
                        let (key, row) = item?;
                        if pending.is_none_or(|p| !p.contains_key(&OrdKey(key.clone()))) {
                            let values: Vec<Value> = ix.columns.iter().map(|&c| row[c].clone()).collect();
                            if in_range(&values, &lower_b, &upper_b) {
                                entries.push((values, key));
                            }
                        }
                    }
                }
            }
            if let Some(set) = self.index_entries.get(&name).and_then(|m| m.get(&lower(&ix.name))) {
                let start = match &lower_b {
                    Bound::Included(v) | Bound::Excluded(v) => {
                        Bound::Included((OrdKey(v.clone()), OrdKey(vec![])))
                    }
                    Bound::Unbounded => Bound::Unbounded,
                };
                for (values, key) in set.range((start, Bound::Unbounded)) {
                    if !in_range(&values.0, &lower_b, &upper_b) {
                        if prefix_beyond(&values.0, &upper_b) {
                            break;
                        }
                        continue;
                    }
                    entries.push((values.0.clone(), key.0.clone()));
                }
            }
            entries.sort_by(|a, b| compare_tuples(&a.0, &b.0).then_with(|| compare_tuples(&a.1, &b.1)));
            Ok(entries)
        };
        match build() {
            Ok(v) => Box::new(v.into_iter().map(Ok)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn last_key(&self, table: &str) -> Result<Option<Key>, ReadError> {
        let base = if self.base_counts(table) { self.base.last_key(table)? } else { None };
        let local = self
            .rows
            .get(&lower(table))
            .and_then(|rows| rows.iter().rev().find(|(_, r)| r.is_some()).map(|(k, _)| k.0.clone()));
        Ok(match (base, local) {
            (Some(a), Some(b)) => Some(if compare_tuples(&a, &b) == Ordering::Less { b } else { a }),
            (a, b) => a.or(b),
        })
    }
}

/// An in-memory `ReadView` that applies changes: the store of `sql`'s tests. It shows no
/// schema version unless given one ([`MemoryView::set_schema_version`]), so plans bound over it
/// are not reused.
#[derive(Clone)]
pub struct MemoryView(Overlay<'static>, Option<u64>);

impl Default for MemoryView {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryView {
    pub fn new() -> Self {
        MemoryView(Overlay { recording: false, ..Overlay::new(&EMPTY) }, None)
    }

    /// What [`ReadView::schema_version`] answers from now on; the caller keeps it true (a new
    /// number after every schema change), as a store does.
    pub fn set_schema_version(&mut self, version: Option<u64>) {
        self.1 = version;
    }

    pub fn apply(&mut self, change: &Change) {
        self.0.apply(change)
    }
}

impl ReadView for MemoryView {
    fn table(&self, name: &str) -> Result<Option<TableSchema>, ReadError> {
        self.0.table(name)
    }
    fn tables(&self) -> Result<Vec<TableSchema>, ReadError> {
        self.0.tables()
    }
    fn get(&self, table: &str, key: &[Value]) -> Result<Option<Row>, ReadError> {
        self.0.get(table, key)
    }
    fn scan(&self, table: &str, lower: Bound<Key>, upper: Bound<Key>) -> RowIter<'_> {
        self.0.scan(table, lower, upper)
    }
    fn scan_index(
        &self,
        table: &str,
        index: &str,
        lower: Bound<Vec<Value>>,
        upper: Bound<Vec<Value>>,
    ) -> IndexIter<'_> {
        self.0.scan_index(table, index, lower, upper)
    }
    fn last_key(&self, table: &str) -> Result<Option<Key>, ReadError> {
        self.0.last_key(table)
    }
    fn schema_version(&self) -> Option<u64> {
        self.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changeset::{Column, DataType, IndexSchema};

    fn int(i: i64) -> Value {
        Value::Integer(i)
    }

    fn entries(view: &dyn ReadView, lo: Bound<Vec<Value>>, hi: Bound<Vec<Value>>) -> Vec<(i64, i64)> {
        view.scan_index("t", "t_v", lo, hi)
            .map(|e| {
                let (v, k) = e.unwrap();
                match (&v[0], &k[0]) {
                    (Value::Integer(v), Value::Integer(k)) => (*v, *k),
                    other => panic!("{other:?}"),
                }
            })
            .collect()
    }

    /// Pending rows are indexed as they change, merged with the base's entries in order, and a
    /// base entry whose row this overlay rewrote or deleted is hidden.
    #[test]
    fn index_scans_merge_pending_and_base_entries() {
        let mut base = MemoryView::new();
        let col = |name: &str| Column {
            name: name.into(),
            data_type: DataType::Integer,
            nullable: true,
            default: None,
        };
        base.apply(&Change::CreateTable(TableSchema {
            name: "t".into(),
            columns: vec![col("id"), col("v")],
            primary_key: vec![0],
            indexes: vec![IndexSchema {
                name: "t_v".into(),
                table: "t".into(),
                columns: vec![1],
                unique: false,
            }],
        }));
        for (k, v) in [(1, 10), (2, 20), (3, 30)] {
            base.apply(&Change::Insert { table: "t".into(), key: vec![int(k)], row: vec![int(k), int(v)] });
        }
        let mut o = Overlay::new(&base);
        o.apply(&Change::Insert { table: "t".into(), key: vec![int(4)], row: vec![int(4), int(15)] });
        o.apply(&Change::Update { table: "t".into(), key: vec![int(2)], row: vec![int(2), int(35)] });
        o.apply(&Change::Delete { table: "t".into(), key: vec![int(3)] });
        o.apply(&Change::Update { table: "t".into(), key: vec![int(4)], row: vec![int(4), int(16)] });
        assert_eq!(entries(&o, Bound::Unbounded, Bound::Unbounded), [(10, 1), (16, 4), (35, 2)]);
        assert_eq!(entries(&o, Bound::Excluded(vec![int(10)]), Bound::Unbounded), [(16, 4), (35, 2)]);
        assert_eq!(entries(&o, Bound::Included(vec![int(16)]), Bound::Included(vec![int(16)])), [(16, 4)]);
        assert_eq!(entries(&o, Bound::Unbounded, Bound::Excluded(vec![int(35)])), [(10, 1), (16, 4)]);
        assert!(entries(&o, Bound::Included(vec![int(20)]), Bound::Included(vec![int(30)])).is_empty());
        // An index created inside the batch covers base and pending rows alike.
        o.apply(&Change::CreateIndex(IndexSchema {
            name: "t_v2".into(),
            table: "t".into(),
            columns: vec![1],
            unique: false,
        }));
        let all: Vec<_> =
            o.scan_index("t", "t_v2", Bound::Unbounded, Bound::Unbounded).map(|e| e.unwrap().1).collect();
        assert_eq!(all, [vec![int(1)], vec![int(4)], vec![int(2)]]);
    }
}
