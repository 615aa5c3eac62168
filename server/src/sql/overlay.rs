//! An in-memory layer of changes over a [`ReadView`]: what a batch has written so far, visible
//! to the statements after it, and discarded or kept as a whole (transactions). With an empty
//! base it is [`MemoryView`], the in-memory store of `sql`'s own tests.

use super::eval::compare_tuples;
use crate::changeset::{Change, IndexIter, Key, ReadError, ReadView, Row, RowIter, TableSchema, Value};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
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
}

fn lower(name: &str) -> String {
    name.to_ascii_lowercase()
}

impl<'a> Overlay<'a> {
    pub fn new(base: &'a dyn ReadView) -> Self {
        Overlay { base, tables: BTreeMap::new(), fresh: HashSet::new(), rows: BTreeMap::new() }
    }

    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::CreateTable(schema) => {
                let name = lower(&schema.name);
                self.fresh.insert(name.clone());
                self.rows.remove(&name);
                self.tables.insert(name, Some(schema.clone()));
            }
            Change::DropTable { table } => {
                let name = lower(table);
                self.fresh.insert(name.clone());
                self.rows.remove(&name);
                self.tables.insert(name, None);
            }
            Change::CreateIndex(index) => {
                if let Ok(Some(mut schema)) = self.table(&index.table) {
                    schema.indexes.push(index.clone());
                    self.tables.insert(lower(&index.table), Some(schema));
                }
            }
            Change::DropIndex { table, index } => {
                if let Ok(Some(mut schema)) = self.table(table) {
                    schema.indexes.retain(|i| !i.name.eq_ignore_ascii_case(index));
                    self.tables.insert(lower(table), Some(schema));
                }
            }
            Change::Insert { table, key, row } | Change::Update { table, key, row } => {
                self.rows.entry(lower(table)).or_default().insert(OrdKey(key.clone()), Some(row.clone()));
            }
            Change::Delete { table, key } => {
                self.rows.entry(lower(table)).or_default().insert(OrdKey(key.clone()), None);
            }
        }
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
        if !self.rows.contains_key(&lower(table))
            && self.base_counts(table)
            && !self.tables.contains_key(&lower(table))
        {
            return self.base.scan_index(table, index, lower_b, upper_b);
        }
        let build = || -> Result<Vec<(Vec<Value>, Key)>, ReadError> {
            let Some(schema) = self.table(table)? else { return Ok(vec![]) };
            let Some(ix) = schema.indexes.iter().find(|i| i.name.eq_ignore_ascii_case(index)) else {
                return Ok(vec![]);
            };
            let mut entries: Vec<(Vec<Value>, Key)> = self
                .merged(table, &Bound::Unbounded, &Bound::Unbounded)?
                .into_iter()
                .map(|(k, r)| (ix.columns.iter().map(|&c| r[c].clone()).collect::<Vec<_>>(), k))
                .filter(|(v, _)| in_range(v, &lower_b, &upper_b))
                .collect();
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

/// An in-memory `ReadView` that applies changes: the store of `sql`'s tests.
#[derive(Clone)]
pub struct MemoryView(Overlay<'static>);

impl Default for MemoryView {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryView {
    pub fn new() -> Self {
        MemoryView(Overlay::new(&EMPTY))
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
}
