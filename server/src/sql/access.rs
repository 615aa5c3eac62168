//! Access paths and join order: how each level of a SELECT reads its rows (a key or index lookup
//! or range, or a scan), which earlier levels it is probed from, and in what order the levels
//! are read (docs/sql.md, "Join order").

use super::plan::{clone_expr, cloneable, is_constant, Access, BExpr, Cmp, Level, RangeBound, Source};
use super::Error;

/// Puts a SELECT's levels in the order [`join_order`] picks and gives each its conjuncts, access
/// path and probe; returns the levels in that order and the conjuncts that name no column of
/// the query (checked once, before anything is read).
///
/// Levels keep the slots of the joined row their written position gives, so no column
/// reference changes; `at[l]` is written level l's place in the order, `slot_at[i]` the place
/// of the level that fills slot i. A conjunct goes to the first level in that order where every
/// column it names is bound.
pub(super) fn place(
    levels: Vec<Level>,
    conjuncts: Vec<(BExpr, Option<usize>)>,
) -> Result<(Vec<Level>, Vec<BExpr>), Error> {
    let slot_level: Vec<usize> =
        levels.iter().enumerate().flat_map(|(l, level)| std::iter::repeat_n(l, level.width)).collect();
    let order = join_order(&levels, &conjuncts, &slot_level);
    let mut at = vec![0; levels.len()];
    order.iter().enumerate().for_each(|(place, &l)| at[l] = place);
    let slot_at: Vec<usize> = slot_level.iter().map(|&l| at[l]).collect();
    let mut placed: Vec<(usize, Level)> =
        levels.into_iter().enumerate().map(|(l, level)| (at[l], level)).collect();
    placed.sort_by_key(|(place, _)| *place);
    let mut levels: Vec<Level> = placed.into_iter().map(|(_, level)| level).collect();

    let mut constant_filters = Vec::new();
    for (e, left_on) in conjuncts {
        let left_on = left_on.map(|l| at[l]);
        let cols = e.local_cols();
        let max_level = cols.iter().map(|&i| slot_at[i]).max();
        let min_level = cols.iter().map(|&i| slot_at[i]).min();
        match (left_on, max_level) {
            (Some(l), None) => levels[l].local.push(e),
            (Some(l), Some(m)) if m <= l && min_level == Some(l) => levels[l].local.push(e),
            (Some(l), Some(m)) if m <= l => levels[l].on.push(e),
            (Some(_), Some(_)) => {
                return Err(Error::Invalid("ON clause references tables to its right".into()))
            }
            (None, None) => constant_filters.push(e),
            (None, Some(m)) => {
                if min_level == Some(m) && !levels[m].left {
                    levels[m].local.push(e)
                } else {
                    levels[m].filters.push(e)
                }
            }
        }
    }
    for (l, level) in levels.iter_mut().enumerate() {
        choose_access(level);
        if l > 0 {
            choose_probe(level, l, &slot_at);
        }
    }
    Ok((levels, constant_filters))
}

/// Whether a one-table query sorted ascending by `key` can read its level in that order (the
/// primary key's or an index's), switching a scan to an index-order read where that helps; a
/// LIMIT then stops the read once it has enough rows.
pub(super) fn ordered_read(level: &mut Level, key: &BExpr) -> bool {
    let (BExpr::Col { depth: 0, index: c }, Source::Table { schema, access }) = (key, &mut level.source)
    else {
        return false;
    };
    let first_of = |index: &str| {
        schema.indexes.iter().find(|ix| ix.name.eq_ignore_ascii_case(index)).and_then(|ix| ix.columns.first())
    };
    match access {
        Access::Scan if schema.primary_key.first() == Some(c) => true,
        Access::Scan => match schema.indexes.iter().find(|ix| ix.columns.first() == Some(c)) {
            Some(ix) => {
                *access = Access::IndexOrder { index: ix.name.clone() };
                true
            }
            None => false,
        },
        // A range reads in key order too: `WHERE k >= $1 ORDER BY k LIMIT n` stops after n
        // rows instead of reading the rest of the table and sorting it.
        Access::PkRange { .. } => schema.primary_key.first() == Some(c),
        Access::IndexRange { index, .. } => first_of(index) == Some(c),
        _ => false,
    }
}

/// `col op const` where col is a column of this level (returns the column index within the
/// level, the operator as seen from the column, and the constant).
fn column_vs_constant(e: &BExpr, lo: usize, hi: usize) -> Option<(usize, Cmp, &BExpr)> {
    if let BExpr::Cmp(op, a, b) = e {
        if let BExpr::Col { depth: 0, index } = a.as_ref() {
            if (lo..hi).contains(index) && is_constant(b) {
                return Some((index - lo, *op, b));
            }
        }
        if let BExpr::Col { depth: 0, index } = b.as_ref() {
            if (lo..hi).contains(index) && is_constant(a) {
                return Some((index - lo, op.flip(), a));
            }
        }
    }
    None
}

/// Picks the access path of a table level from its local conjuncts.
pub(super) fn choose_access(level: &mut Level) {
    let Source::Table { schema, access } = &mut level.source else { return };
    let (lo, hi) = (level.offset, level.offset + level.width);
    let pk_first = schema.primary_key.first().copied();
    let usable = |c: usize| -> Option<(String, bool)> {
        if Some(c) == pk_first {
            return Some((String::new(), true));
        }
        schema.indexes.iter().find(|ix| ix.columns.first() == Some(&c)).map(|ix| (ix.name.clone(), ix.unique))
    };
    // (score, access): lower is better.
    let mut best: Option<(u8, Access)> = None;
    let consider = |score: u8, a: Access, best: &mut Option<(u8, Access)>| {
        if best.as_ref().is_none_or(|(s, _)| score < *s) {
            *best = Some((score, a));
        }
    };
    let mut ranges: std::collections::BTreeMap<usize, (RangeBound, RangeBound)> = Default::default();
    for e in &level.local {
        match e {
            BExpr::InList(x, list, false) => {
                if let BExpr::Col { depth: 0, index } = x.as_ref() {
                    if (lo..hi).contains(index) && list.iter().all(|v| is_constant(v) && cloneable(v)) {
                        if let Some((ix, unique)) = usable(index - lo) {
                            let values: Vec<BExpr> = list.iter().map(clone_expr).collect();
                            let a = if ix.is_empty() {
                                Access::PkEq(values)
                            } else {
                                Access::IndexEq { index: ix, values }
                            };
                            consider(if unique { 1 } else { 3 }, a, &mut best);
                        }
                    }
                }
            }
            BExpr::Between(x, a, b, false) => {
                if let BExpr::Col { depth: 0, index } = x.as_ref() {
                    if (lo..hi).contains(index)
                        && is_constant(a)
                        && is_constant(b)
                        && cloneable(a)
                        && cloneable(b)
                    {
                        let r = ranges.entry(index - lo).or_default();
                        r.0 = Some((clone_expr(a), true));
                        r.1 = Some((clone_expr(b), true));
                    }
                }
            }
            _ => {
                if let Some((c, op, v)) = column_vs_constant(e, lo, hi) {
                    if !cloneable(v) {
                        continue;
                    }
                    match op {
                        Cmp::Eq => {
                            if let Some((ix, unique)) = usable(c) {
                                let values = vec![clone_expr(v)];
                                let a = if ix.is_empty() {
                                    Access::PkEq(values)
                                } else {
                                    Access::IndexEq { index: ix, values }
                                };
                                consider(if unique { 0 } else { 2 }, a, &mut best);
                            }
                        }
                        Cmp::Gt | Cmp::Ge => {
                            ranges.entry(c).or_default().0 = Some((clone_expr(v), op == Cmp::Ge));
                        }
                        Cmp::Lt | Cmp::Le => {
                            ranges.entry(c).or_default().1 = Some((clone_expr(v), op == Cmp::Le));
                        }
                        Cmp::Ne => {}
                    }
                }
            }
        }
    }
    for (c, (lo_b, hi_b)) in ranges {
        if let Some((ix, _)) = usable(c) {
            let a = if ix.is_empty() {
                Access::PkRange { lo: lo_b, hi: hi_b }
            } else {
                Access::IndexRange { index: ix, lo: lo_b, hi: hi_b }
            };
            consider(5, a, &mut best);
        }
    }
    if let Some((_, a)) = best {
        *access = a;
    }
}

/// An equality between a column of this level (read at place `at` of the join order) and an
/// expression over levels read before it only.
fn choose_probe(level: &mut Level, at: usize, slot_at: &[usize]) {
    let (lo, hi) = (level.offset, level.offset + level.width);
    let candidates = if level.left { &level.on } else { &level.filters };
    let found = candidates.iter().find_map(|e| probe_of(e, lo..hi, |i| slot_at[i] < at));
    if let Some((index, other)) = found {
        level.probe = Some((index - lo, clone_expr(other)));
    }
}

/// `e` as `column = other`, the column in `slots`, `other` over columns `earlier` accepts only:
/// an equality a hash probe can serve. Returns the column's slot and `other`.
fn probe_of(
    e: &BExpr,
    slots: std::ops::Range<usize>,
    earlier: impl Fn(usize) -> bool,
) -> Option<(usize, &BExpr)> {
    let BExpr::Cmp(Cmp::Eq, a, b) = e else { return None };
    [(a, b), (b, a)].into_iter().find_map(|(col, other)| match col.as_ref() {
        BExpr::Col { depth: 0, index } if slots.contains(index) && cloneable(other) => {
            let cols = other.local_cols();
            (!cols.is_empty() && cols.iter().all(|&i| earlier(i))).then_some((*index, other.as_ref()))
        }
        _ => None,
    })
}

/// The order to read a SELECT's levels in, as written levels' indices.
///
/// A LEFT JOIN level stays where it is written (the levels before it stay before it, those
/// after it after), so each run of inner-joined levels between them is ordered on its own:
/// first the level with the fewest estimated rows, then repeatedly the cheapest level an
/// equality links to those already placed (read through a hash probe on it), and only when no
/// such link remains the cheapest unlinked one (a cross product no order avoids). Ties keep the
/// written order, so a join written along its chain is read as written. `conjuncts` are the
/// WHERE and ON conjuncts (`Some(level)` for a LEFT JOIN's ON); `slot_level[i]` is the written
/// level that fills slot i of the joined row.
fn join_order(levels: &[Level], conjuncts: &[(BExpr, Option<usize>)], slot_level: &[usize]) -> Vec<usize> {
    let inner: Vec<&BExpr> = conjuncts.iter().filter(|(_, left)| left.is_none()).map(|(e, _)| e).collect();
    let estimates: Vec<f64> =
        (0..levels.len()).map(|l| estimate_rows(&levels[l], l, &inner, slot_level)).collect();
    let mut order = Vec::with_capacity(levels.len());
    let mut placed = vec![false; levels.len()];
    let mut start = 0;
    while start < levels.len() {
        if levels[start].left {
            order.push(start);
            placed[start] = true;
            start += 1;
            continue;
        }
        let end = (start..levels.len()).find(|&l| levels[l].left).unwrap_or(levels.len());
        for _ in start..end {
            let linked = |c: usize| {
                let level = &levels[c];
                let slots = level.offset..level.offset + level.width;
                inner.iter().any(|e| probe_of(e, slots.clone(), |i| placed[slot_level[i]]).is_some())
            };
            let cheapest = |candidates: &mut dyn Iterator<Item = usize>| {
                candidates.min_by(|&x, &y| estimates[x].total_cmp(&estimates[y]).then(x.cmp(&y)))
            };
            let unplaced = || (start..end).filter(|&c| !placed[c]);
            let next = cheapest(&mut unplaced().filter(|&c| linked(c)))
                .or_else(|| cheapest(&mut unplaced()))
                .unwrap_or(start);
            order.push(next);
            placed[next] = true;
        }
        start = end;
    }
    order
}

/// A rough count of the rows written level `l` yields after its own conjuncts, for ordering
/// joins only: with no table statistics, an equality on a unique key counts 1, on an index
/// 10, a table or subquery 1,000, and every other conjunct on the level alone halves it.
fn estimate_rows(level: &Level, l: usize, inner: &[&BExpr], slot_level: &[usize]) -> f64 {
    let base = match &level.source {
        Source::Catalog => 100.0,
        Source::Table { .. } | Source::Derived(_) => 1000.0,
    };
    let (lo, hi) = (level.offset, level.offset + level.width);
    let mut rows: f64 = base;
    for e in inner {
        let cols = e.local_cols();
        if cols.is_empty() || !cols.iter().all(|&i| slot_level[i] == l) {
            continue;
        }
        // Whether an equality on column c is a lookup: of one row (`unique`), or of a few.
        let keyed = |c: usize, unique: bool| match &level.source {
            Source::Table { schema, .. } if unique => {
                schema.primary_key == [c] || schema.indexes.iter().any(|ix| ix.unique && ix.columns == [c])
            }
            Source::Table { schema, .. } => {
                schema.primary_key.first() == Some(&c)
                    || schema.indexes.iter().any(|ix| ix.columns.first() == Some(&c))
            }
            _ => false,
        };
        let looked_up = match (e, column_vs_constant(e, lo, hi)) {
            (_, Some((c, Cmp::Eq, _))) if keyed(c, true) => 1.0,
            (_, Some((c, Cmp::Eq, _))) if keyed(c, false) => 10.0,
            (BExpr::InList(x, list, false), _) => match x.as_ref() {
                BExpr::Col { depth: 0, index } if keyed(index - lo, true) => list.len() as f64,
                BExpr::Col { depth: 0, index } if keyed(index - lo, false) => 10.0 * list.len() as f64,
                _ => rows / 2.0,
            },
            _ => rows / 2.0,
        };
        rows = rows.min(looked_up);
    }
    rows.max(1.0)
}

#[cfg(test)]
mod tests {
    use crate::sql::bind::Binder;
    use crate::sql::plan::Body;
    use crate::sql::{Context, Executor, MemoryView};
    use sqlparser::ast;

    fn view(ddl: &[&str]) -> MemoryView {
        let mut view = MemoryView::new();
        for sql in ddl {
            let mut ex = Executor::new(&view, Context { now_millis: 0, seed: 1 });
            let (changes, _) = ex.execute(&[(sql.to_string(), vec![])], false).expect("evaluates");
            changes.iter().for_each(|c| view.apply(c));
        }
        view
    }

    /// The aliases of a SELECT's levels in the order they are read, and whether each probes.
    fn read_order(view: &MemoryView, sql: &str) -> Vec<(String, bool)> {
        let dialect = sqlparser::dialect::SQLiteDialect {};
        let stmt = sqlparser::parser::Parser::parse_sql(&dialect, sql).expect("parses").remove(0);
        let ast::Statement::Query(q) = stmt else { panic!("not a query: {sql}") };
        let query = Binder::new(view, &[]).query(&q).expect("binds");
        let Body::Select(s) = query.body else { panic!("not a SELECT: {sql}") };
        s.levels.iter().map(|l| (l.alias.clone(), l.probe.is_some())).collect()
    }

    fn names(order: &[(String, bool)]) -> Vec<&str> {
        order.iter().map(|(a, _)| a.as_str()).collect()
    }

    #[test]
    fn join_order_follows_equalities_from_the_cheapest_level() {
        let v = view(&[
            "CREATE TABLE a(x INTEGER, y INTEGER)",
            "CREATE TABLE b(x INTEGER, y INTEGER)",
            "CREATE TABLE c(x INTEGER, y INTEGER)",
            "CREATE TABLE k(id INTEGER PRIMARY KEY, y INTEGER)",
        ]);
        // Written along the chain: read as written, every later level probed.
        let order = read_order(&v, "SELECT * FROM a, b, c WHERE a.y = b.x AND b.y = c.x");
        assert_eq!(order, [("a".into(), false), ("b".into(), true), ("c".into(), true)]);
        // Written so that a, c would cross: c is linked to b only, so b comes before it.
        let order = read_order(&v, "SELECT * FROM a, c, b WHERE b.y = c.x AND a.y = b.x");
        assert_eq!(order, [("a".into(), false), ("b".into(), true), ("c".into(), true)]);
        // A key lookup written last is read first; the rest follow its links.
        let order = read_order(&v, "SELECT * FROM a, b, k WHERE a.y = b.x AND b.y = k.y AND k.id = 3");
        assert_eq!(names(&order), ["k", "b", "a"]);
        assert!(order[1].1 && order[2].1, "{order:?}");
        // A level with its own filter is cheaper than one without.
        let order = read_order(&v, "SELECT * FROM a, b WHERE a.y = b.x AND b.y > 2");
        assert_eq!(names(&order), ["b", "a"]);
        // No equality at all: a cross product, in the written order.
        let order = read_order(&v, "SELECT * FROM a, b, c");
        assert_eq!(order, [("a".into(), false), ("b".into(), false), ("c".into(), false)]);
    }

    #[test]
    fn a_left_join_is_a_barrier_to_join_order() {
        let v = view(&[
            "CREATE TABLE a(x INTEGER, y INTEGER)",
            "CREATE TABLE b(x INTEGER, y INTEGER)",
            "CREATE TABLE k(id INTEGER PRIMARY KEY, y INTEGER)",
        ]);
        // k is the cheapest, but it is joined after the LEFT JOIN: it stays after it.
        let order = read_order(&v, "SELECT * FROM a LEFT JOIN b ON b.x = a.y, k WHERE k.id = 1");
        assert_eq!(names(&order), ["a", "b", "k"]);
        // Before the LEFT JOIN, the run of inner levels is ordered; b's ON names only a.
        let order = read_order(&v, "SELECT * FROM a, k LEFT JOIN b ON b.x = a.y WHERE k.id = a.x");
        assert_eq!(names(&order), ["a", "k", "b"]);
        let order =
            read_order(&v, "SELECT * FROM a, k LEFT JOIN b ON b.x = k.y WHERE k.id = 1 AND a.x = k.y");
        assert_eq!(names(&order), ["k", "a", "b"]);
        assert!(order[2].1, "the LEFT JOIN level still probes: {order:?}");
    }
}
