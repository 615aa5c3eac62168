//! Runs bound plans: joins, grouping, sorting, set operations, and reading rows through each
//! level's access path. Expressions are evaluated in [`super::expr`].

use super::eval::{compare, is_true, numeric, real_of, text_of};
use super::expr::Env;
use super::limits::{row_bytes, value_bytes, Meter};
use super::overlay::OrdKey;
use super::plan::{Access, AggFunc, AggSpec, BExpr, Body, Level, Query, SelectPlan, SetOp, Source};
use super::{Context, Error};
use crate::changeset::{DataType, Key, ReadView, Row, Value};
use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

/// The random source of `random()`: splitmix64 from a seed. One lives as long as the
/// [`Executor`](super::Executor) of a batch (seeded by the leader, so each call of a batch draws a
/// new number and the change set is the same however often the batch is evaluated), or as long
/// as one read.
pub struct Rng(Cell<u64>);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(Cell::new(seed | 1))
    }

    /// Seeded by the statement's context, or without one by the clock.
    pub fn for_context(ctx: Option<Context>) -> Self {
        Rng::new(ctx.map_or_else(
            || {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            },
            |c| c.seed,
        ))
    }

    fn next(&self) -> i64 {
        // splitmix64
        let mut z = self.0.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.0.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as i64
    }
}

/// What evaluation needs besides rows: the data, the statement's clock and random source, and
/// the [`Meter`] that bounds its time, its working memory and the rows it examines.
pub struct Runner<'v> {
    pub view: &'v dyn ReadView,
    pub ctx: Option<Context>,
    pub(super) meter: &'v Meter,
    rng: &'v Rng,
    /// The statement's parameters, which its plan reads as [`BExpr::Param`](super::plan::BExpr).
    pub(super) params: &'v [Value],
}

impl<'v> Runner<'v> {
    pub fn new(
        view: &'v dyn ReadView,
        meter: &'v Meter,
        ctx: Option<Context>,
        rng: &'v Rng,
        params: &'v [Value],
    ) -> Self {
        Runner { view, ctx, meter, rng, params }
    }

    pub(super) fn spend(&self) -> Result<(), Error> {
        self.meter.examine()
    }

    /// Reserves room for a text of `bytes` before building it.
    pub(super) fn text(&self, bytes: usize) -> Result<(), Error> {
        self.meter.charge(bytes)?;
        self.meter.ticks(bytes / 64)
    }

    pub(super) fn random(&self) -> i64 {
        self.rng.next()
    }

    /// Runs a query with `outer` as its enclosing row; returns its rows and column names.
    #[recursive::recursive]
    pub fn query(&self, q: &Query, outer: &Env) -> Result<(Vec<Row>, Vec<String>), Error> {
        let visible = q.columns.len();
        let offset = match &q.offset {
            Some(e) => count_value(&self.eval(e, outer)?, "OFFSET")?.max(0) as usize,
            None => 0,
        };
        let limit = match &q.limit {
            Some(e) => count_value(&self.eval(e, outer)?, "LIMIT")?,
            None => -1,
        };
        let mut rows = match &q.body {
            Body::Select(s) => {
                // Rows already in the order of the only sort key: read no more than needed.
                let enough =
                    (s.ordered && q.order_by.len() == 1 && limit >= 0).then(|| offset + limit as usize);
                self.select(s, outer, enough)?
            }
            Body::Values(rows) => {
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let row = r.iter().map(|e| self.eval(e, outer)).collect::<Result<Row, _>>()?;
                    self.meter.charge(row_bytes(&row))?;
                    out.push(row);
                }
                out
            }
            Body::Compound { op, all, left, right } => {
                let (l, _) = self.query(left, outer)?;
                let (r, _) = self.query(right, outer)?;
                self.compound(*op, *all, l, r)?
            }
        };
        if !q.order_by.is_empty() {
            sort_rows(&mut rows, &q.order_by, || self.meter.tick())?;
        }
        if offset > 0 {
            rows.drain(..offset.min(rows.len()));
        }
        if limit >= 0 {
            rows.truncate(limit as usize);
        }
        for r in &mut rows {
            r.truncate(visible);
        }
        Ok((rows, q.columns.clone()))
    }

    fn select(&self, s: &SelectPlan, outer: &Env, enough: Option<usize>) -> Result<Vec<Row>, Error> {
        let stop = Cell::new(false);
        for f in &s.constant_filters {
            if !is_true(&self.eval(f, &Env { row: &[], aggs: &[], outer: Some(outer) })?) {
                return self.finish_empty(s, outer);
            }
        }
        // Materialize every level's candidate rows. A one-table query read in the order of its
        // only sort key, with a LIMIT, reads no more rows than it returns: every row passing the
        // level's own conjuncts becomes one output row.
        let cap = match s.levels.as_slice() {
            [only] if only.filters.is_empty() && only.on.is_empty() && !s.aggregate && !s.distinct => enough,
            _ => None,
        };
        let mut sources: Vec<LevelRows> = Vec::with_capacity(s.levels.len());
        for level in &s.levels {
            sources.push(self.level_rows(level, s.width, outer, cap)?);
        }
        let mut out: Vec<Row> = Vec::new();
        if s.aggregate {
            let mut groups: BTreeMap<OrdKey, Group> = BTreeMap::new();
            let mut current = vec![Value::Null; s.width];
            self.join(s, &mut sources, 0, &mut current, outer, &stop, &mut |row: &[Value]| {
                let env = Env { row, aggs: &[], outer: Some(outer) };
                let key: Vec<Value> =
                    s.group_by.iter().map(|g| self.eval(g, &env)).collect::<Result<_, _>>()?;
                let key = OrdKey(key);
                if !groups.contains_key(&key) {
                    self.meter.charge(row_bytes(&key.0) + row_bytes(row) + 64 * s.aggs.len())?;
                }
                let group = groups.entry(key).or_insert_with(|| Group::new(&s.aggs));
                let take_row = group.accumulate(self, &s.aggs, &env)?;
                if take_row || group.row.is_empty() {
                    group.row = row.to_vec();
                }
                Ok(())
            })?;
            if groups.is_empty() && s.group_by.is_empty() {
                groups.insert(OrdKey(vec![]), Group::new(&s.aggs));
            }
            for (_, g) in groups {
                let aggs = g.finish(&s.aggs)?;
                let row = if g.row.is_empty() { vec![Value::Null; s.width] } else { g.row };
                let env = Env { row: &row, aggs: &aggs, outer: Some(outer) };
                if let Some(h) = &s.having {
                    if !is_true(&self.eval(h, &env)?) {
                        continue;
                    }
                }
                out.push(s.projection.iter().map(|p| self.eval(p, &env)).collect::<Result<_, _>>()?);
            }
        } else {
            let mut current = vec![Value::Null; s.width];
            self.join(s, &mut sources, 0, &mut current, outer, &stop, &mut |row: &[Value]| {
                let env = Env { row, aggs: &[], outer: Some(outer) };
                let row: Row = s.projection.iter().map(|p| self.eval(p, &env)).collect::<Result<_, _>>()?;
                self.meter.charge(row_bytes(&row))?;
                out.push(row);
                if enough.is_some_and(|n| out.len() >= n) {
                    stop.set(true);
                }
                Ok(())
            })?;
        }
        if s.distinct {
            let mut seen = BTreeSet::new();
            let mut kept = Vec::with_capacity(out.len());
            for r in out {
                let key = OrdKey(r[..s.visible].to_vec());
                if !seen.contains(&key) {
                    self.meter.charge(row_bytes(&key.0))?;
                    seen.insert(key);
                    kept.push(r);
                }
            }
            out = kept;
        }
        Ok(out)
    }

    /// The result of a query whose constant filter is false: no rows, or for an aggregate
    /// without GROUP BY one row over the empty set.
    fn finish_empty(&self, s: &SelectPlan, outer: &Env) -> Result<Vec<Row>, Error> {
        if !s.aggregate || !s.group_by.is_empty() {
            return Ok(vec![]);
        }
        let g = Group::new(&s.aggs);
        let aggs = g.finish(&s.aggs)?;
        let row = vec![Value::Null; s.width];
        let env = Env { row: &row, aggs: &aggs, outer: Some(outer) };
        if let Some(h) = &s.having {
            if !is_true(&self.eval(h, &env)?) {
                return Ok(vec![]);
            }
        }
        Ok(vec![s.projection.iter().map(|p| self.eval(p, &env)).collect::<Result<_, _>>()?])
    }

    /// Nested-loop join over levels from `l`, calling `emit` with each joined row.
    #[allow(clippy::too_many_arguments)]
    #[recursive::recursive]
    fn join(
        &self,
        s: &SelectPlan,
        sources: &mut [LevelRows],
        l: usize,
        current: &mut Vec<Value>,
        outer: &Env,
        stop: &Cell<bool>,
        emit: &mut dyn FnMut(&[Value]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if l == s.levels.len() {
            return emit(current);
        }
        let level = &s.levels[l];
        let candidates: Vec<usize> = match &level.probe {
            Some((col, e)) => {
                let v = self.eval(e, &Env { row: current, aggs: &[], outer: Some(outer) })?;
                let src = &mut sources[l];
                if src.hash.is_none() {
                    let mut h: HashMap<HashKey, Vec<usize>> = HashMap::new();
                    for (i, r) in src.rows.iter().enumerate() {
                        self.meter.charge(value_bytes(&r[*col]) + 16)?;
                        if let Some(k) = HashKey::of(&r[*col]) {
                            h.entry(k).or_default().push(i);
                        }
                    }
                    src.hash = Some(h);
                }
                match HashKey::of(&v) {
                    Some(k) => src.hash.as_ref().and_then(|h| h.get(&k)).cloned().unwrap_or_default(),
                    None => vec![],
                }
            }
            None => (0..sources[l].rows.len()).collect(),
        };
        let mut matched = false;
        for i in candidates {
            if stop.get() {
                return Ok(());
            }
            self.spend()?;
            let (lo, hi) = (level.offset, level.offset + level.width);
            current[lo..hi].clone_from_slice(&sources[l].rows[i]);
            let env = Env { row: current, aggs: &[], outer: Some(outer) };
            if !self.all(&level.on, &env)? {
                continue;
            }
            matched = true;
            if !self.all(&level.filters, &env)? {
                continue;
            }
            self.join(s, sources, l + 1, current, outer, stop, emit)?;
        }
        if level.left && !matched {
            let (lo, hi) = (level.offset, level.offset + level.width);
            current[lo..hi].iter_mut().for_each(|v| *v = Value::Null);
            let env = Env { row: current, aggs: &[], outer: Some(outer) };
            if self.all(&level.filters, &env)? {
                self.join(s, sources, l + 1, current, outer, stop, emit)?;
            }
        }
        Ok(())
    }

    fn all(&self, filters: &[BExpr], env: &Env) -> Result<bool, Error> {
        for f in filters {
            if !is_true(&self.eval(f, env)?) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The rows (with keys) of a one-table plan that pass its filters: what UPDATE and DELETE
    /// change.
    pub fn keyed_rows(&self, s: &SelectPlan, outer: &Env) -> Result<Vec<(Key, Row)>, Error> {
        let [level] = s.levels.as_slice() else {
            return Err(Error::Invalid("UPDATE and DELETE read one table".into()));
        };
        for f in &s.constant_filters {
            if !is_true(&self.eval(f, &Env { row: &[], aggs: &[], outer: Some(outer) })?) {
                return Ok(vec![]);
            }
        }
        let mut out = Vec::new();
        for (key, row) in self.fetch(level, outer, None)? {
            let env = Env { row: &row, aggs: &[], outer: Some(outer) };
            if self.all(&level.local, &env)? && self.all(&level.filters, &env)? {
                out.push((key, row));
            }
        }
        Ok(out)
    }

    /// A level's rows through its access path, filtered by its local conjuncts; with `cap`, the
    /// first `cap` of them in the access path's order, read no further (ordered paths only).
    fn level_rows(
        &self,
        level: &Level,
        width: usize,
        outer: &Env,
        cap: Option<usize>,
    ) -> Result<LevelRows, Error> {
        let mut scratch = vec![Value::Null; width];
        let (lo, hi) = (level.offset, level.offset + level.width);
        let mut keep = |r: &[Value]| -> Result<bool, Error> {
            if level.local.is_empty() {
                return Ok(true);
            }
            scratch[lo..hi].clone_from_slice(r);
            self.all(&level.local, &Env { row: &scratch, aggs: &[], outer: Some(outer) })
        };
        let capped = cap.map(|max| Cap { keep: &mut keep, max });
        let was_capped = capped.is_some() && level.is_ordered_path();
        let raw = self.fetch(level, outer, capped)?;
        if level.local.is_empty() || was_capped {
            return Ok(LevelRows { rows: raw.into_iter().map(|(_, r)| r).collect(), hash: None });
        }
        let mut rows = Vec::with_capacity(raw.len());
        for (_, r) in raw {
            if keep(&r)? {
                rows.push(r);
            }
        }
        Ok(LevelRows { rows, hash: None })
    }

    /// A level's rows, with their keys, through its access path.
    /// With `cap`, an ordered path (scan, primary-key range, index order or range) returns only
    /// rows `cap.keep` accepts and stops after `cap.max` of them; other paths ignore it.
    fn fetch(&self, level: &Level, outer: &Env, cap: Option<Cap<'_>>) -> Result<Vec<(Key, Row)>, Error> {
        Ok(match &level.source {
            Source::Derived(q) => self.query(q, outer)?.0.into_iter().map(|r| (vec![], r)).collect(),
            Source::Catalog => {
                let mut rows = Vec::new();
                for t in self.view.tables()? {
                    let text = |s: &str| Value::Text(s.to_string());
                    rows.push((
                        vec![],
                        vec![
                            text("table"),
                            text(&t.name),
                            text(&t.name),
                            text(&super::catalog::create_table_sql(&t)),
                        ],
                    ));
                    for ix in &t.indexes {
                        let sql = super::catalog::create_index_sql(&t, ix).map_or(Value::Null, Value::Text);
                        rows.push((vec![], vec![text("index"), text(&ix.name), text(&t.name), sql]));
                    }
                }
                rows
            }
            Source::Table { schema, access } => {
                let konst = |e: &BExpr| self.eval(e, &Env { row: &[], aggs: &[], outer: Some(outer) });
                let key_col = |pos: usize| schema.columns[pos].data_type;
                match access {
                    Access::Scan => self.scan(&schema.name, Bound::Unbounded, Bound::Unbounded, cap)?,
                    Access::PkEq(values) => {
                        let ty = key_col(schema.primary_key[0]);
                        let mut keys: Vec<Value> = Vec::new();
                        for e in values {
                            if let Some(v) = key_value(konst(e)?, ty) {
                                keys.push(v);
                            }
                        }
                        keys.sort_by(compare);
                        keys.dedup_by(|a, b| compare(a, b) == Ordering::Equal);
                        let mut rows = Vec::new();
                        for k in keys {
                            if schema.primary_key.len() == 1 {
                                self.spend()?;
                                if let Some(r) = self.view.get(&schema.name, std::slice::from_ref(&k))? {
                                    self.meter.charge(row_bytes(&r))?;
                                    rows.push((vec![k], r));
                                }
                            } else {
                                rows.extend(self.scan(
                                    &schema.name,
                                    Bound::Included(vec![k.clone()]),
                                    Bound::Included(vec![k]),
                                    None,
                                )?);
                            }
                        }
                        rows
                    }
                    Access::PkRange { lo, hi } => {
                        let ty = key_col(schema.primary_key[0]);
                        let (Some(lo), Some(hi)) = (self.bound(lo, ty, &konst)?, self.bound(hi, ty, &konst)?)
                        else {
                            return Ok(vec![]);
                        };
                        self.scan(&schema.name, lo, hi, cap)?
                    }
                    Access::IndexEq { index, values } => {
                        let ix =
                            schema.indexes.iter().find(|i| &i.name == index).expect("planned index exists");
                        let ty = key_col(ix.columns[0]);
                        let mut keys: Vec<Value> = Vec::new();
                        for e in values {
                            if let Some(v) = key_value(konst(e)?, ty) {
                                keys.push(v);
                            }
                        }
                        keys.sort_by(compare);
                        keys.dedup_by(|a, b| compare(a, b) == Ordering::Equal);
                        let mut rows = Vec::new();
                        for k in keys {
                            self.index_rows(
                                &schema.name,
                                index,
                                Bound::Included(vec![k.clone()]),
                                Bound::Included(vec![k]),
                                &mut rows,
                                None,
                            )?;
                        }
                        rows
                    }
                    Access::IndexOrder { index } => {
                        let mut rows = Vec::new();
                        self.index_rows(
                            &schema.name,
                            index,
                            Bound::Unbounded,
                            Bound::Unbounded,
                            &mut rows,
                            cap,
                        )?;
                        rows
                    }
                    Access::IndexRange { index, lo, hi } => {
                        let ix =
                            schema.indexes.iter().find(|i| &i.name == index).expect("planned index exists");
                        let ty = key_col(ix.columns[0]);
                        let (Some(lo), Some(hi)) = (self.bound(lo, ty, &konst)?, self.bound(hi, ty, &konst)?)
                        else {
                            return Ok(vec![]);
                        };
                        // NULLs sort first: a range with no lower bound starts after them.
                        let lo = match lo {
                            Bound::Unbounded => Bound::Excluded(vec![Value::Null]),
                            b => b,
                        };
                        let mut rows = Vec::new();
                        self.index_rows(&schema.name, index, lo, hi, &mut rows, cap)?;
                        rows
                    }
                }
            }
        })
    }

    /// A range bound from a constant; `None` when the constant is NULL (nothing can match).
    fn bound(
        &self,
        b: &Option<(BExpr, bool)>,
        ty: DataType,
        konst: &dyn Fn(&BExpr) -> Result<Value, Error>,
    ) -> Result<Option<Bound<Key>>, Error> {
        Ok(match b {
            None => Some(Bound::Unbounded),
            Some((e, inclusive)) => match konst(e)? {
                Value::Null => None,
                v => {
                    let v = match (ty, v) {
                        (DataType::Integer | DataType::Real, Value::Text(t)) => {
                            // A text bound on a numeric column: everything numeric is below it.
                            let _ = t;
                            return Ok(Some(Bound::Unbounded));
                        }
                        (_, v) => v,
                    };
                    Some(if *inclusive { Bound::Included(vec![v]) } else { Bound::Excluded(vec![v]) })
                }
            },
        })
    }

    fn scan(
        &self,
        table: &str,
        lo: Bound<Key>,
        hi: Bound<Key>,
        mut cap: Option<Cap<'_>>,
    ) -> Result<Vec<(Key, Row)>, Error> {
        let mut rows = Vec::new();
        for item in self.view.scan(table, lo, hi) {
            self.spend()?;
            let (k, r) = item?;
            if let Some(c) = &mut cap {
                if !(c.keep)(&r)? {
                    continue;
                }
            }
            self.meter.charge(row_bytes(&k) + row_bytes(&r))?;
            rows.push((k, r));
            if cap.as_ref().is_some_and(|c| rows.len() >= c.max) {
                break;
            }
        }
        Ok(rows)
    }

    fn index_rows(
        &self,
        table: &str,
        index: &str,
        lo: Bound<Vec<Value>>,
        hi: Bound<Vec<Value>>,
        out: &mut Vec<(Key, Row)>,
        cap: Option<Cap<'_>>,
    ) -> Result<(), Error> {
        if let Some(c) = cap {
            // In index order, fetching each row as its entry comes, until enough are kept.
            let start = out.len();
            for e in self.view.scan_index(table, index, lo, hi) {
                self.spend()?;
                let (_, k) = e?;
                if let Some(r) = self.view.get(table, &k)? {
                    if (c.keep)(&r)? {
                        self.meter.charge(row_bytes(&k) + row_bytes(&r))?;
                        out.push((k, r));
                        if out.len() - start >= c.max {
                            break;
                        }
                    }
                }
            }
            return Ok(());
        }
        let mut keys: Vec<Key> = Vec::new();
        for e in self.view.scan_index(table, index, lo, hi) {
            let (_, k) = e?;
            self.meter.charge(row_bytes(&k))?;
            keys.push(k);
        }
        for k in keys {
            self.spend()?;
            if let Some(r) = self.view.get(table, &k)? {
                self.meter.charge(row_bytes(&r))?;
                out.push((k, r));
            }
        }
        Ok(())
    }
}

/// How many rows an ordered access path needs to return, and which of them count.
struct Cap<'a> {
    keep: &'a mut dyn FnMut(&[Value]) -> Result<bool, Error>,
    max: usize,
}

struct LevelRows {
    rows: Vec<Row>,
    hash: Option<HashMap<HashKey, Vec<usize>>>,
}

/// A value as a hash key consistent with `compare` equality (integers and integral reals
/// collide on purpose). NULL has none: it equals nothing.
#[derive(Hash, PartialEq, Eq)]
enum HashKey {
    Int(i64),
    Real(u64),
    Text(String),
    Blob(Vec<u8>),
}

impl HashKey {
    fn of(v: &Value) -> Option<HashKey> {
        Some(match v {
            Value::Null => return None,
            Value::Integer(i) => HashKey::Int(*i),
            Value::Boolean(b) => HashKey::Int(*b as i64),
            Value::Real(r) if r.fract() == 0.0 && r.abs() < 9.2e18 => HashKey::Int(*r as i64),
            Value::Real(r) => HashKey::Real(if *r == 0.0 { 0 } else { r.to_bits() }),
            Value::Text(s) => HashKey::Text(s.clone()),
            Value::Blob(b) => HashKey::Blob(b.clone()),
        })
    }
}

/// A lookup value for a key column: integral reals become integers for INTEGER keys; `None`
/// when nothing can match (NULL).
fn key_value(v: Value, ty: DataType) -> Option<Value> {
    match (ty, v) {
        (_, Value::Null) => None,
        (DataType::Integer, Value::Real(r)) if r.fract() == 0.0 && r.abs() < 9.2e18 => {
            Some(Value::Integer(r as i64))
        }
        (DataType::Real, Value::Integer(i)) => Some(Value::Real(i as f64)),
        (_, v) => Some(v),
    }
}

fn count_value(v: &Value, what: &str) -> Result<i64, Error> {
    match numeric(v) {
        Value::Integer(i) => Ok(i),
        Value::Real(r) if r.fract() == 0.0 => Ok(r as i64),
        _ => Err(Error::Type(format!("datatype mismatch: {what} must be an integer"))),
    }
}

impl Runner<'_> {
    /// UNION / INTERSECT / EXCEPT; the sets built are charged to the budget.
    fn compound(&self, op: SetOp, all: bool, left: Vec<Row>, right: Vec<Row>) -> Result<Vec<Row>, Error> {
        let set = |rows: Vec<Row>| -> Result<BTreeSet<OrdKey>, Error> {
            let mut s = BTreeSet::new();
            for r in rows {
                self.meter.tick()?;
                s.insert(OrdKey(r));
            }
            Ok(s)
        };
        Ok(match (op, all) {
            (SetOp::Union, true) => {
                let mut l = left;
                l.extend(right);
                l
            }
            (SetOp::Union, false) => {
                let mut rows = left;
                rows.extend(right);
                set(rows)?.into_iter().map(|k| k.0).collect()
            }
            (SetOp::Intersect, _) => {
                let (l, r) = (set(left)?, set(right)?);
                let mut out = Vec::new();
                for k in l.intersection(&r) {
                    self.meter.charge(row_bytes(&k.0))?;
                    out.push(k.0.clone());
                }
                out
            }
            (SetOp::Except, _) => {
                let (l, r) = (set(left)?, set(right)?);
                let mut out = Vec::new();
                for k in l.difference(&r) {
                    self.meter.charge(row_bytes(&k.0))?;
                    out.push(k.0.clone());
                }
                out
            }
        })
    }
}

/// One group of an aggregate query.
struct Group {
    row: Vec<Value>,
    /// One accumulator per aggregate, with the values already seen for DISTINCT ones.
    accs: Vec<(Acc, Option<BTreeSet<OrdKey>>)>,
}

enum Acc {
    Count(i64),
    /// sum(), total() and avg() (`n` values seen), summed as SQLite 3.43+ sums them.
    Sum(Sum),
    Extreme(Option<Value>),
    Concat(Option<String>),
}

impl Group {
    fn new(specs: &[AggSpec]) -> Group {
        let accs = specs
            .iter()
            .map(|s| {
                let acc = match s.func {
                    AggFunc::CountStar | AggFunc::Count => Acc::Count(0),
                    AggFunc::Sum | AggFunc::Total | AggFunc::Avg => Acc::Sum(Sum::default()),
                    AggFunc::Min | AggFunc::Max => Acc::Extreme(None),
                    AggFunc::GroupConcat => Acc::Concat(None),
                };
                (acc, s.distinct.then(BTreeSet::new))
            })
            .collect();
        Group { row: vec![], accs }
    }

    /// Adds a row; returns true when a lone MIN/MAX found a new extreme (SQLite then takes bare
    /// columns from that row).
    fn accumulate(&mut self, r: &Runner, specs: &[AggSpec], env: &Env) -> Result<bool, Error> {
        let mut extreme_row = false;
        let lone_extreme = specs.len() == 1 && matches!(specs[0].func, AggFunc::Min | AggFunc::Max);
        for (spec, (acc, seen)) in specs.iter().zip(self.accs.iter_mut()) {
            if spec.func == AggFunc::CountStar {
                if let Acc::Count(n) = acc {
                    *n += 1;
                }
                continue;
            }
            let v = match &spec.arg {
                Some(a) => r.eval(a, env)?,
                None => Value::Null,
            };
            if matches!(v, Value::Null) {
                continue;
            }
            if let Some(seen) = seen {
                let key = OrdKey(vec![v.clone()]);
                if seen.contains(&key) {
                    continue;
                }
                r.meter.charge(value_bytes(&v) + 24)?;
                seen.insert(key);
            }
            match (spec.func, acc) {
                (AggFunc::Count, Acc::Count(n)) => *n += 1,
                (AggFunc::Sum | AggFunc::Total | AggFunc::Avg, Acc::Sum(sum)) => sum.add(&numeric(&v)),
                (AggFunc::Min, Acc::Extreme(best)) => {
                    if best.as_ref().is_none_or(|b| compare(&v, b) == Ordering::Less) {
                        *best = Some(v);
                        extreme_row = lone_extreme;
                    }
                }
                (AggFunc::Max, Acc::Extreme(best)) => {
                    if best.as_ref().is_none_or(|b| compare(&v, b) == Ordering::Greater) {
                        *best = Some(v);
                        extreme_row = lone_extreme;
                    }
                }
                (AggFunc::GroupConcat, Acc::Concat(s)) => {
                    let sep = match &spec.separator {
                        Some(e) => text_of(&r.eval(e, env)?),
                        None => ",".into(),
                    };
                    let piece = text_of(&v);
                    r.text(sep.len() + piece.len())?;
                    match s {
                        Some(s) => {
                            s.push_str(&sep);
                            s.push_str(&piece);
                        }
                        None => *s = Some(piece),
                    }
                }
                _ => unreachable!("accumulators match their functions"),
            }
        }
        Ok(extreme_row)
    }

    fn finish(&self, specs: &[AggSpec]) -> Result<Vec<Value>, Error> {
        specs
            .iter()
            .zip(&self.accs)
            .map(|(spec, (acc, _))| {
                Ok(match (spec.func, acc) {
                    (_, Acc::Count(n)) => Value::Integer(*n),
                    (AggFunc::Total, Acc::Sum(sum)) => Value::Real(sum.real()),
                    (AggFunc::Avg, Acc::Sum(sum)) if sum.n == 0 => Value::Null,
                    (AggFunc::Avg, Acc::Sum(sum)) => Value::Real(sum.real() / sum.n as f64),
                    (_, Acc::Sum(sum)) if sum.n == 0 => Value::Null,
                    (_, Acc::Sum(sum)) if sum.overflow => {
                        return Err(Error::Invalid(
                            "integer overflow in SUM(): use TOTAL() for a real sum".into(),
                        ))
                    }
                    (_, Acc::Sum(sum)) => match sum.compensated {
                        Some(_) => Value::Real(sum.real()),
                        None => Value::Integer(sum.int),
                    },
                    (_, Acc::Extreme(v)) => v.clone().unwrap_or(Value::Null),
                    (_, Acc::Concat(s)) => s.clone().map_or(Value::Null, Value::Text),
                })
            })
            .collect()
    }
}

/// A running sum as SQLite (3.43 and later) keeps it: exact in integers while every value is an
/// integer and the sum fits, else a Kahan–Babuška–Neumaier compensated sum of reals, so the
/// order of the rows and the size of the terms change the last bits as little as they can.
#[derive(Clone, Debug, Default)]
struct Sum {
    int: i64,
    /// The sum and its running error, once a real was added or the integers overflowed.
    compensated: Option<(f64, f64)>,
    /// The integers overflowed: an error for sum(), not for total() or avg().
    overflow: bool,
    /// Values added (NULLs are not).
    n: i64,
}

impl Sum {
    fn add(&mut self, v: &Value) {
        self.n += 1;
        match (v, self.compensated.as_mut()) {
            (Value::Integer(i), None) => match self.int.checked_add(*i) {
                Some(s) => self.int = s,
                None => {
                    self.overflow = true;
                    let mut c = Sum::split(self.int);
                    Sum::step_int(&mut c, *i);
                    self.compensated = Some(c);
                }
            },
            (Value::Integer(i), Some(c)) => Sum::step_int(c, *i),
            (x, c) => {
                let c = match c {
                    Some(c) => c,
                    None => self.compensated.insert(Sum::split(self.int)),
                };
                Sum::step(c, real_of(x));
            }
        }
    }

    /// The sum as a real.
    fn real(&self) -> f64 {
        match self.compensated {
            None => self.int as f64,
            Some((sum, err)) if err.is_finite() => sum + err,
            Some((sum, _)) => sum,
        }
    }

    /// An integer as a compensated sum: above 2^52 in size, its low 14 bits go in the error
    /// term so that none is lost.
    fn split(i: i64) -> (f64, f64) {
        if i <= -4_503_599_627_370_496 || i >= 4_503_599_627_370_496 {
            let small = i % 16_384;
            ((i - small) as f64, small as f64)
        } else {
            (i as f64, 0.0)
        }
    }

    fn step_int(c: &mut (f64, f64), i: i64) {
        let (big, small) = Sum::split(i);
        Sum::step(c, big);
        if small != 0.0 {
            Sum::step(c, small);
        }
    }

    fn step(c: &mut (f64, f64), r: f64) {
        let (s, err) = *c;
        let t = s + r;
        let err = if s.abs() > r.abs() { err + ((s - t) + r) } else { err + ((r - t) + s) };
        *c = (t, err);
    }
}

/// Sorts `rows` by `order_by` (column, descending), calling `tick` once per comparison until it
/// fails; its first error is returned once the sort is done. A comparison cannot fail, and the
/// sort still runs to its end with real comparisons after the budget is spent: a comparator that
/// changed its answers midway (as "equal from now on" did) is not a total order, which Rust's
/// sort detects and panics on (a fuzz finding: a deadline reached inside ORDER BY).
fn sort_rows(
    rows: &mut [Row],
    order_by: &[(usize, bool)],
    mut tick: impl FnMut() -> Result<(), Error>,
) -> Result<(), Error> {
    let mut stopped = None;
    rows.sort_by(|a, b| {
        if stopped.is_none() {
            if let Err(e) = tick() {
                stopped = Some(e);
            }
        }
        for &(k, desc) in order_by {
            let o = compare(&a[k], &b[k]);
            if o != Ordering::Equal {
                return if desc { o.reverse() } else { o };
            }
        }
        Ordering::Equal
    });
    stopped.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fuzz finding (seed 20261210, chunk 54): a query's deadline reached inside its ORDER BY
    /// made every later comparison "equal", and Rust's sort panicked ("user-provided comparison
    /// function does not correctly implement a total order"). The budget error is returned, and
    /// the rows still come out sorted.
    #[test]
    fn a_sort_stopped_by_its_budget_returns_the_error_without_panicking() {
        // Pseudo-random values with ties and NULLs, sorted on two keys, one descending.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random_rows = || -> Vec<Row> {
            (0..5_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let a = if x.is_multiple_of(11) { Value::Null } else { Value::Integer((x % 97) as i64) };
                    vec![a, Value::Real((x >> 8) as f64 / 7.0)]
                })
                .collect()
        };
        let mut rows = vec![];
        for stop_after in [0, 1, 100, 2_000] {
            rows = random_rows();
            let mut calls = 0;
            let r = sort_rows(&mut rows, &[(0, false), (1, true)], || {
                calls += 1;
                if calls > stop_after {
                    Err(Error::Interrupted("the test's budget".into()))
                } else {
                    Ok(())
                }
            });
            assert!(matches!(r, Err(Error::Interrupted(_))), "{r:?}");
            assert!(rows.windows(2).all(|w| {
                compare(&w[0][0], &w[1][0]).then_with(|| compare(&w[1][1], &w[0][1])) != Ordering::Greater
            }));
        }
        assert!(sort_rows(&mut rows, &[(0, false)], || Ok(())).is_ok());
    }
}
