//! Statement execution: DDL and DML into `Change`s on an overlay, SELECT into rows.

use super::bind::{object_name, Binder, Scope};
use super::eval::{coerce, compare_tuples};
use super::expr::Env;
use super::limits::{self, Budget, Meter};
use super::overlay::Overlay;
use super::plan::BExpr;
use super::run::{Rng, Runner};
use super::{parse_piece, Context, Error};
use crate::changeset::{
    Change, Column, DataType, IndexSchema, Key, ReadView, Row, StatementOutcome, StatementResult,
    TableSchema, Value,
};
use sqlparser::ast::{self, SelectItem, Statement};
use std::ops::Bound;

/// Evaluates the requests of one batch in order over an in-memory overlay of `view`.
pub struct Executor<'a> {
    overlay: Overlay<'a>,
    ctx: Context,
    meter: Meter,
    /// `random()`'s source for the whole batch: every call draws the next number.
    rng: Rng,
}

/// What a statement of a request left behind, for the statements after it.
struct RequestState {
    in_txn: bool,
    failed: bool,
    changes: Vec<Change>,
    outcomes: Vec<StatementOutcome>,
}

impl<'a> Executor<'a> {
    pub fn new(view: &'a dyn ReadView, ctx: Context) -> Self {
        Executor { overlay: Overlay::new(view), ctx, meter: Meter::default(), rng: Rng::new(ctx.seed) }
    }

    /// Takes `changes` as already made, before any request is evaluated: the sequencer passes
    /// the entries it has proposed and not yet seen applied, so a batch is evaluated over the
    /// state its entry will be applied on. Row images are whole, so the result is the same
    /// whether or not the view already holds some of them.
    pub fn assume<'c>(&mut self, changes: impl IntoIterator<Item = &'c Change>) {
        for change in changes {
            self.overlay.apply(change);
        }
        self.overlay.commit();
    }

    /// Evaluates the following requests under `budget` (the sequencer gives each request its
    /// own deadline).
    pub fn set_budget(&mut self, budget: Budget) {
        self.meter = Meter::new(budget);
    }

    /// Evaluates one request: `(sql text, params)` pairs; a text may hold several statements
    /// (params only when it holds exactly one). Returns the changes to replicate and one outcome
    /// per statement (one for a whole text that does not parse). A failed statement contributes
    /// nothing; in a transaction (`transaction`, or BEGIN ... COMMIT) any failure discards every
    /// change of the request.
    ///
    /// Statements are parsed and evaluated one at a time, each undone through the overlay's
    /// undo log if it fails, so a request's cost grows linearly with its statements.
    ///
    /// `Err` is an error that [aborts the request](Error::aborts_request) (deadline,
    /// cancellation, request limits, a storage read): nothing of the request stays in the
    /// overlay and nothing of it may be recorded.
    pub fn execute(
        &mut self,
        statements: &[(String, Vec<Value>)],
        transaction: bool,
    ) -> Result<(Vec<Change>, Vec<StatementOutcome>), Error> {
        let request_mark = self.overlay.mark();
        self.meter.start_request();
        self.meter.check()?;
        let mut st = RequestState { in_txn: transaction, failed: false, changes: vec![], outcomes: vec![] };
        for (sql, params) in statements {
            if let Err(e) = self.text(sql, params, &mut st) {
                self.overlay.rollback(request_mark);
                self.overlay.commit();
                return Err(e);
            }
        }
        if st.failed && st.in_txn {
            self.overlay.rollback(request_mark);
            st.changes.clear();
        }
        self.overlay.commit();
        Ok((st.changes, st.outcomes))
    }

    /// One SQL text of a request. A text that does not parse (or holds several statements and
    /// parameters) fails as a whole, with one outcome and no effect, as if parsed up front.
    fn text(&mut self, sql: &str, params: &[Value], st: &mut RequestState) -> Result<(), Error> {
        let mark = self.overlay.mark();
        let (changes_at, outcomes_at, in_txn_at, failed_at) =
            (st.changes.len(), st.outcomes.len(), st.in_txn, st.failed);
        let mut count = 0usize;
        let mut text_error = None;
        'pieces: for piece in limits::pieces(sql) {
            self.meter.tick()?;
            let stmts = match parse_piece(piece, &self.meter) {
                Ok(s) => s,
                Err(e) => {
                    text_error = Some(e);
                    break;
                }
            };
            for stmt in stmts.iter() {
                count += 1;
                if count > 1 && !params.is_empty() {
                    text_error = Some(Error::Invalid(
                        "parameters were given for a text holding several statements: send each statement \
                         separately"
                            .into(),
                    ));
                    break 'pieces;
                }
                self.one(stmt, params, st)?;
                if let Some(Ok(r)) = st.outcomes.last() {
                    self.meter.keep(r.rows.iter().map(|row| limits::row_bytes(row)).sum())?;
                }
            }
        }
        if count == 0 && text_error.is_none() {
            text_error = Some(Error::Invalid("empty statement".into()));
        }
        let Some(e) = text_error else { return Ok(()) };
        if e.aborts_request() {
            return Err(e);
        }
        self.overlay.rollback(mark);
        st.changes.truncate(changes_at);
        st.outcomes.truncate(outcomes_at);
        st.in_txn = in_txn_at;
        st.failed = failed_at;
        if st.failed && st.in_txn {
            st.outcomes.push(Err(aborted().into()));
        } else {
            st.failed = true;
            st.outcomes.push(Err(e.into()));
        }
        Ok(())
    }

    /// One statement; `Err` only for errors that abort the request.
    fn one(&mut self, stmt: &Statement, params: &[Value], st: &mut RequestState) -> Result<(), Error> {
        if st.failed && st.in_txn {
            st.outcomes.push(Err(aborted().into()));
            return Ok(());
        }
        match stmt {
            Statement::StartTransaction { .. } => {
                st.in_txn = true;
                st.outcomes.push(Ok(StatementResult::default()));
                return Ok(());
            }
            Statement::Commit { .. } => {
                st.outcomes.push(Ok(StatementResult::default()));
                return Ok(());
            }
            Statement::Rollback { .. } => {
                st.failed = true;
                st.outcomes.push(Ok(StatementResult::default()));
                return Ok(());
            }
            _ => {}
        }
        self.meter.start_statement();
        let mut local = Vec::new();
        let before = self.overlay.mark();
        match self.statement(stmt, params, &mut local) {
            Ok(r) => {
                st.changes.extend(local);
                st.outcomes.push(Ok(r));
            }
            Err(e) if e.aborts_request() => return Err(e),
            Err(e) => {
                self.overlay.rollback(before);
                st.failed = true;
                st.outcomes.push(Err(e.into()));
            }
        }
        Ok(())
    }

    fn emit(&mut self, change: Change, out: &mut Vec<Change>) -> Result<(), Error> {
        if matches!(change, Change::Insert { .. } | Change::Update { .. } | Change::Delete { .. }) {
            self.meter.write_row()?;
        }
        self.overlay.apply(&change);
        out.push(change);
        Ok(())
    }

    fn statement(
        &mut self,
        stmt: &Statement,
        params: &[Value],
        out: &mut Vec<Change>,
    ) -> Result<StatementResult, Error> {
        match stmt {
            Statement::CreateTable(ct) => self.create_table(ct, out),
            Statement::Drop { object_type: ast::ObjectType::Table, if_exists, names, .. } => {
                for name in names {
                    let name = object_name(name)?;
                    match self.overlay.table(&name)? {
                        Some(t) => self.emit(Change::DropTable { table: t.name }, out)?,
                        None if *if_exists => {}
                        None => return Err(Error::NoSuchTable(name)),
                    }
                }
                Ok(StatementResult::default())
            }
            Statement::Drop { object_type: ast::ObjectType::Index, if_exists, names, .. } => {
                for name in names {
                    let name = object_name(name)?;
                    match self.find_index(&name)? {
                        Some((table, index)) => self.emit(Change::DropIndex { table, index }, out)?,
                        None if *if_exists => {}
                        None => return Err(Error::NoSuchIndex(name)),
                    }
                }
                Ok(StatementResult::default())
            }
            Statement::CreateIndex(ci) => self.create_index(ci, out),
            Statement::Insert(insert) => self.insert(insert, params, out),
            Statement::Update(update) => self.update(update, params, out),
            Statement::Delete(delete) => self.delete(delete, params, out),
            Statement::Query(q) => run_query(&self.overlay, &self.meter, q, None, params, Some(self.ctx)),
            Statement::Explain { statement, .. } => explain(&self.overlay, statement, params),
            other => Err(Error::Unsupported(format!("statement {}", first_words(&other.to_string())))),
        }
    }

    fn find_index(&self, name: &str) -> Result<Option<(String, String)>, Error> {
        for t in self.overlay.tables()? {
            if let Some(ix) = t.indexes.iter().find(|i| i.name.eq_ignore_ascii_case(name)) {
                return Ok(Some((t.name.clone(), ix.name.clone())));
            }
        }
        Ok(None)
    }

    fn create_index(
        &mut self,
        ci: &ast::CreateIndex,
        out: &mut Vec<Change>,
    ) -> Result<StatementResult, Error> {
        let name = match &ci.name {
            Some(n) => object_name(n)?,
            None => return Err(Error::Invalid("CREATE INDEX needs a name".into())),
        };
        if ci.predicate.is_some() || !ci.include.is_empty() {
            return Err(Error::Unsupported("partial indexes and INCLUDE".into()));
        }
        if name.to_ascii_lowercase().starts_with("autoindex_") {
            return Err(Error::Invalid(format!(
                "index name {name} is reserved: names starting with autoindex_ belong to UNIQUE constraints"
            )));
        }
        let table_name = object_name(&ci.table_name)?;
        let schema =
            self.overlay.table(&table_name)?.ok_or_else(|| Error::NoSuchTable(table_name.clone()))?;
        if self.find_index(&name)?.is_some() || self.overlay.table(&name)?.is_some() {
            return if ci.if_not_exists {
                Ok(StatementResult::default())
            } else {
                Err(Error::Invalid(format!("index {name} already exists")))
            };
        }
        let mut columns = Vec::new();
        for ic in &ci.columns {
            let col = match &ic.column.expr {
                ast::Expr::Identifier(id) => id.value.clone(),
                other => return Err(Error::Unsupported(format!("index on the expression {other}"))),
            };
            let i = schema
                .column_index(&col)
                .ok_or_else(|| Error::NoSuchColumn { table: schema.name.clone(), column: col.clone() })?;
            columns.push(i);
        }
        if ci.unique {
            let mut seen = std::collections::BTreeSet::new();
            for item in self.overlay.scan(&schema.name, Bound::Unbounded, Bound::Unbounded) {
                let (_, row) = item?;
                let values: Vec<Value> = columns.iter().map(|&c| row[c].clone()).collect();
                if values.contains(&Value::Null) {
                    continue;
                }
                if !seen.insert(super::overlay::OrdKey(values)) {
                    return Err(Error::Constraint(format!(
                        "UNIQUE constraint failed: the rows of {} already repeat the values of index {name}",
                        schema.name
                    )));
                }
            }
        }
        self.emit(
            Change::CreateIndex(IndexSchema { name, table: schema.name.clone(), columns, unique: ci.unique }),
            out,
        )?;
        Ok(StatementResult::default())
    }

    fn create_table(
        &mut self,
        ct: &ast::CreateTable,
        out: &mut Vec<Change>,
    ) -> Result<StatementResult, Error> {
        let name = object_name(&ct.name)?;
        if self.overlay.table(&name)?.is_some() {
            return if ct.if_not_exists {
                Ok(StatementResult::default())
            } else {
                Err(Error::TableExists(name))
            };
        }
        if ct.query.is_some() {
            return Err(Error::Unsupported("CREATE TABLE ... AS SELECT".into()));
        }
        if ct.columns.is_empty() {
            return Err(Error::Invalid(format!("table {name:?} has no columns")));
        }
        let mut columns: Vec<Column> = Vec::new();
        let mut primary_key: Vec<usize> = Vec::new();
        let mut unique: Vec<Vec<usize>> = Vec::new();
        for (i, c) in ct.columns.iter().enumerate() {
            if columns.iter().any(|x| x.name.eq_ignore_ascii_case(&c.name.value)) {
                return Err(Error::Invalid(format!("duplicate column name: {}", c.name.value)));
            }
            let mut col = Column {
                name: c.name.value.clone(),
                data_type: data_type(&c.data_type)?,
                nullable: true,
                default: None,
            };
            for opt in &c.options {
                match &opt.option {
                    ast::ColumnOption::Null => {}
                    ast::ColumnOption::NotNull => col.nullable = false,
                    ast::ColumnOption::Default(e) => col.default = Some(e.to_string()),
                    ast::ColumnOption::PrimaryKey(_) => {
                        if !primary_key.is_empty() {
                            return Err(Error::Invalid(format!(
                                "table {name:?} has more than one primary key"
                            )));
                        }
                        primary_key = vec![i];
                    }
                    ast::ColumnOption::Unique(_) => unique.push(vec![i]),
                    other => return Err(Error::Unsupported(format!("column option {other}"))),
                }
            }
            columns.push(col);
        }
        let schema_for_lookup = TableSchema {
            name: name.clone(),
            columns: columns.clone(),
            primary_key: vec![],
            indexes: vec![],
        };
        let positions = |cols: &[ast::IndexColumn]| -> Result<Vec<usize>, Error> {
            cols.iter()
                .map(|ic| {
                    let col = ic.column.expr.to_string();
                    schema_for_lookup
                        .column_index(col.trim_matches('"'))
                        .ok_or_else(|| Error::NoSuchColumn { table: name.clone(), column: col })
                })
                .collect()
        };
        for tc in &ct.constraints {
            match tc {
                ast::TableConstraint::PrimaryKey(pk) => {
                    if !primary_key.is_empty() {
                        return Err(Error::Invalid(format!("table {name:?} has more than one primary key")));
                    }
                    primary_key = positions(&pk.columns)?;
                }
                ast::TableConstraint::Unique(u) => unique.push(positions(&u.columns)?),
                other => return Err(Error::Unsupported(format!("table constraint {other}"))),
            }
        }
        for &i in &primary_key {
            // SQLite lets PK columns hold NULL by accident of history; raftsql does not.
            columns[i].nullable = false;
        }
        let indexes = unique
            .into_iter()
            .enumerate()
            .map(|(n, columns)| IndexSchema {
                name: format!("autoindex_{name}_{}", n + 1),
                table: name.clone(),
                columns,
                unique: true,
            })
            .collect();
        self.emit(Change::CreateTable(TableSchema { name, columns, primary_key, indexes }), out)?;
        Ok(StatementResult::default())
    }

    fn insert(
        &mut self,
        insert: &ast::Insert,
        params: &[Value],
        out: &mut Vec<Change>,
    ) -> Result<StatementResult, Error> {
        #[derive(PartialEq)]
        enum OnConflict {
            Fail,
            Replace,
            Ignore,
        }
        let on_conflict = match (&insert.or, &insert.on, insert.replace_into) {
            (_, _, true) | (Some(ast::SqliteOnConflict::Replace), None, _) => OnConflict::Replace,
            (Some(ast::SqliteOnConflict::Ignore), None, _) => OnConflict::Ignore,
            (None | Some(ast::SqliteOnConflict::Abort | ast::SqliteOnConflict::Fail), None, _) => {
                OnConflict::Fail
            }
            (None, Some(ast::OnInsert::OnConflict(c)), _)
                if matches!(c.action, ast::OnConflictAction::DoNothing) =>
            {
                OnConflict::Ignore
            }
            _ => {
                return Err(Error::Unsupported(
                    "this INSERT conflict clause (use OR REPLACE, OR IGNORE or ON CONFLICT DO NOTHING)"
                        .into(),
                ))
            }
        };
        let table_name = match &insert.table {
            ast::TableObject::TableName(n) => object_name(n)?,
            other => return Err(Error::Unsupported(format!("INSERT INTO {other}"))),
        };
        let schema =
            self.overlay.table(&table_name)?.ok_or_else(|| Error::NoSuchTable(table_name.clone()))?;
        let targets: Vec<usize> = if insert.columns.is_empty() {
            (0..schema.columns.len()).collect()
        } else {
            insert
                .columns
                .iter()
                .map(|c| {
                    let c = object_name(c)?;
                    schema
                        .column_index(&c)
                        .ok_or(Error::NoSuchColumn { table: schema.name.clone(), column: c })
                })
                .collect::<Result<_, _>>()?
        };
        // The source rows, evaluated against the state before this statement.
        let source_rows: Vec<Row> = match &insert.source {
            None => vec![vec![]],
            Some(q) => {
                let binder = Binder::new(&self.overlay, params);
                let bound = binder.query(q)?;
                let runner = Runner::new(&self.overlay, &self.meter, Some(self.ctx), &self.rng, params);
                runner.query(&bound, &Env::EMPTY)?.0
            }
        };
        let returning = self.returning_plan(insert.returning.as_deref(), &schema, params)?;
        let mut affected = 0;
        let mut last_insert_id = None;
        let mut returned = Vec::new();
        for values in source_rows {
            if insert.source.is_some() && values.len() != targets.len() {
                return Err(Error::Invalid(format!(
                    "{} values for {} columns in INSERT INTO {}",
                    values.len(),
                    targets.len(),
                    schema.name
                )));
            }
            let mut given: Vec<Option<Value>> = vec![None; schema.columns.len()];
            for (v, &i) in values.into_iter().zip(&targets) {
                given[i] = Some(v);
            }
            let (key, row) = self.complete_row(&schema, given)?;
            let existing = self.overlay.get(&schema.name, &key)?;
            let mut conflicts = self.unique_conflicts(&schema, &key, &row)?;
            if existing.is_some() || !conflicts.is_empty() {
                match on_conflict {
                    OnConflict::Ignore => continue,
                    OnConflict::Fail => {
                        return Err(match existing {
                            Some(_) => pk_violation(&schema),
                            None => conflicts.remove(0).1,
                        })
                    }
                    OnConflict::Replace => {
                        for (k, _) in conflicts {
                            self.emit(Change::Delete { table: schema.name.clone(), key: k }, out)?;
                        }
                    }
                }
            }
            if let [Value::Integer(id)] = key.as_slice() {
                last_insert_id = Some(*id);
            }
            if let Some(r) = &returning {
                returned.push(self.eval_returning(r, &row, params)?);
            }
            let change = if existing.is_some() {
                Change::Update { table: schema.name.clone(), key, row }
            } else {
                Change::Insert { table: schema.name.clone(), key, row }
            };
            self.emit(change, out)?;
            affected += 1;
        }
        Ok(StatementResult {
            rows_affected: affected,
            last_insert_id,
            columns: returning.map(|r| r.1).unwrap_or_default(),
            rows: returned,
        })
    }

    fn returning_plan(
        &self,
        items: Option<&[SelectItem]>,
        schema: &TableSchema,
        params: &[Value],
    ) -> Result<Option<Returning>, Error> {
        let Some(items) = items else { return Ok(None) };
        let binder = Binder::new(&self.overlay, params);
        let top = Scope::marker(None);
        let scope = Scope::of_table(schema, &top);
        let mut exprs = Vec::new();
        let mut names = Vec::new();
        for item in items {
            match item {
                SelectItem::Wildcard(_) => {
                    for (i, c) in schema.columns.iter().enumerate() {
                        exprs.push(BExpr::Col { depth: 0, index: i });
                        names.push(c.name.clone());
                    }
                }
                SelectItem::UnnamedExpr(e) => {
                    exprs.push(binder.expr(e, &scope)?);
                    names.push(e.to_string());
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    exprs.push(binder.expr(expr, &scope)?);
                    names.push(alias.value.clone());
                }
                other => return Err(Error::Unsupported(format!("RETURNING {other}"))),
            }
        }
        Ok(Some((exprs, names)))
    }

    fn eval_returning(&self, r: &Returning, row: &Row, params: &[Value]) -> Result<Row, Error> {
        let runner = Runner::new(&self.overlay, &self.meter, Some(self.ctx), &self.rng, params);
        let env = Env { row, aggs: &[], outer: Some(&Env::EMPTY) };
        r.0.iter().map(|e| runner.eval(e, &env)).collect()
    }

    /// The rows of `table` matching `selection`, with their keys, through the planner's access
    /// paths.
    fn matching_rows(
        &self,
        schema: &TableSchema,
        selection: Option<&ast::Expr>,
        params: &[Value],
    ) -> Result<Vec<(Key, Row)>, Error> {
        let plan = Binder::new(&self.overlay, params).table_filter(schema, selection)?;
        Runner::new(&self.overlay, &self.meter, Some(self.ctx), &self.rng, params)
            .keyed_rows(&plan, &Env::EMPTY)
    }

    fn update(
        &mut self,
        update: &ast::Update,
        params: &[Value],
        out: &mut Vec<Change>,
    ) -> Result<StatementResult, Error> {
        if update.from.is_some() || !update.table.joins.is_empty() || update.limit.is_some() {
            return Err(Error::Unsupported("UPDATE ... FROM / JOIN / LIMIT".into()));
        }
        let table_name = match &update.table.relation {
            ast::TableFactor::Table { name, .. } => object_name(name)?,
            other => return Err(Error::Unsupported(format!("UPDATE {other}"))),
        };
        let schema =
            self.overlay.table(&table_name)?.ok_or_else(|| Error::NoSuchTable(table_name.clone()))?;
        // SET targets and expressions, bound over the table's row.
        let binder = Binder::new(&self.overlay, params);
        let top = Scope::marker(None);
        let scope = Scope::of_table(&schema, &top);
        let mut sets: Vec<(usize, BExpr)> = Vec::new();
        for a in &update.assignments {
            let names = match &a.target {
                ast::AssignmentTarget::ColumnName(n) => vec![n],
                ast::AssignmentTarget::Tuple(_) => {
                    return Err(Error::Unsupported("UPDATE SET (a, b) = ...".into()))
                }
            };
            let col = object_name(names[0])?;
            let i = schema
                .column_index(&col)
                .ok_or_else(|| Error::NoSuchColumn { table: schema.name.clone(), column: col.clone() })?;
            sets.push((i, binder.expr(&a.value, &scope)?));
        }
        let returning = self.returning_plan(update.returning.as_deref(), &schema, params)?;
        let rows = self.matching_rows(&schema, update.selection.as_ref(), params)?;
        let runner = Runner::new(&self.overlay, &self.meter, Some(self.ctx), &self.rng, params);
        let mut updates = Vec::with_capacity(rows.len());
        for (key, row) in rows {
            let env = Env { row: &row, aggs: &[], outer: Some(&Env::EMPTY) };
            let mut new = row.clone();
            for (i, e) in &sets {
                let v = runner.eval(e, &env)?;
                new[*i] = coerce(v, schema.columns[*i].data_type, &schema.name, &schema.columns[*i].name)?;
            }
            updates.push((key, new));
        }
        let mut returned = Vec::new();
        let affected = updates.len() as u64;
        for (key, row) in updates {
            check_identity(&schema, &row)?;
            for (col, v) in schema.columns.iter().zip(&row) {
                if !col.nullable && *v == Value::Null {
                    return Err(Error::Constraint(format!(
                        "NOT NULL constraint failed: {}.{}",
                        schema.name, col.name
                    )));
                }
            }
            let new_key = schema.key_of(&row).unwrap_or_else(|| key.clone());
            if compare_tuples(&new_key, &key).is_ne() {
                if self.overlay.get(&schema.name, &new_key)?.is_some() {
                    return Err(pk_violation(&schema));
                }
                if let Some((_, e)) = self.unique_conflicts(&schema, &key, &row)?.into_iter().next() {
                    return Err(e);
                }
                self.emit(Change::Delete { table: schema.name.clone(), key }, out)?;
                if let Some(r) = &returning {
                    returned.push(self.eval_returning(r, &row, params)?);
                }
                self.emit(Change::Insert { table: schema.name.clone(), key: new_key, row }, out)?;
            } else {
                if let Some((_, e)) = self.unique_conflicts(&schema, &key, &row)?.into_iter().next() {
                    return Err(e);
                }
                if let Some(r) = &returning {
                    returned.push(self.eval_returning(r, &row, params)?);
                }
                self.emit(Change::Update { table: schema.name.clone(), key, row }, out)?;
            }
        }
        Ok(StatementResult {
            rows_affected: affected,
            columns: returning.map(|r| r.1).unwrap_or_default(),
            rows: returned,
            ..Default::default()
        })
    }

    fn delete(
        &mut self,
        delete: &ast::Delete,
        params: &[Value],
        out: &mut Vec<Change>,
    ) -> Result<StatementResult, Error> {
        if delete.using.is_some() || delete.limit.is_some() || !delete.tables.is_empty() {
            return Err(Error::Unsupported("DELETE ... USING / LIMIT / multiple tables".into()));
        }
        let from = match &delete.from {
            ast::FromTable::WithFromKeyword(v) | ast::FromTable::WithoutKeyword(v) => v,
        };
        let table_name = match from.as_slice() {
            [twj] if twj.joins.is_empty() => match &twj.relation {
                ast::TableFactor::Table { name, .. } => object_name(name)?,
                other => return Err(Error::Unsupported(format!("DELETE FROM {other}"))),
            },
            _ => return Err(Error::Unsupported("DELETE from several tables".into())),
        };
        let schema =
            self.overlay.table(&table_name)?.ok_or_else(|| Error::NoSuchTable(table_name.clone()))?;
        let returning = self.returning_plan(delete.returning.as_deref(), &schema, params)?;
        let rows = self.matching_rows(&schema, delete.selection.as_ref(), params)?;
        let mut returned = Vec::new();
        let affected = rows.len() as u64;
        for (key, row) in rows {
            if let Some(r) = &returning {
                returned.push(self.eval_returning(r, &row, params)?);
            }
            self.emit(Change::Delete { table: schema.name.clone(), key }, out)?;
        }
        Ok(StatementResult {
            rows_affected: affected,
            columns: returning.map(|r| r.1).unwrap_or_default(),
            rows: returned,
            ..Default::default()
        })
    }

    /// Fills defaults, coerces types, checks NOT NULL and assigns the key.
    fn complete_row(&self, schema: &TableSchema, given: Vec<Option<Value>>) -> Result<(Key, Row), Error> {
        let mut row = Vec::with_capacity(given.len());
        for (col, v) in schema.columns.iter().zip(given) {
            let v = match v {
                Some(v) => v,
                None => match &col.default {
                    Some(text) => {
                        let expr = sqlparser::parser::Parser::new(&sqlparser::dialect::SQLiteDialect {})
                            .try_with_sql(text)
                            .and_then(|mut p| p.parse_expr())
                            .map_err(|e| {
                                Error::Invalid(format!("bad DEFAULT of {}.{}: {e}", schema.name, col.name))
                            })?;
                        let top = Scope::marker(None);
                        let bound = Binder::new(&self.overlay, &[]).expr(&expr, &top)?;
                        Runner::new(&self.overlay, &self.meter, Some(self.ctx), &self.rng, &[])
                            .eval(&bound, &Env::EMPTY)?
                    }
                    None => Value::Null,
                },
            };
            row.push(coerce(v, col.data_type, &schema.name, &col.name)?);
        }
        // INTEGER PRIMARY KEY given no value gets the next id, as in SQLite.
        if let [pk] = schema.primary_key.as_slice() {
            if schema.columns[*pk].data_type == DataType::Integer && row[*pk] == Value::Null {
                row[*pk] = Value::Integer(self.next_id(&schema.name)?);
            }
        }
        for (col, v) in schema.columns.iter().zip(&row) {
            if !col.nullable && *v == Value::Null {
                return Err(Error::Constraint(format!(
                    "NOT NULL constraint failed: {}.{}",
                    schema.name, col.name
                )));
            }
        }
        check_identity(schema, &row)?;
        let key = match schema.key_of(&row) {
            Some(k) => k,
            None => vec![Value::Integer(self.next_id(&schema.name)?)],
        };
        Ok((key, row))
    }

    fn next_id(&self, table: &str) -> Result<i64, Error> {
        Ok(match self.overlay.last_key(table)?.as_deref() {
            Some([Value::Integer(i)]) => {
                i.checked_add(1).ok_or_else(|| Error::Constraint("row ids are exhausted".into()))?
            }
            _ => 1,
        })
    }

    /// Rows other than `key` that hold `row`'s values in a unique index, with the error to
    /// report for each.
    fn unique_conflicts(
        &self,
        schema: &TableSchema,
        key: &Key,
        row: &Row,
    ) -> Result<Vec<(Key, Error)>, Error> {
        let mut out = Vec::new();
        for ix in schema.indexes.iter().filter(|i| i.unique) {
            let values: Vec<Value> = ix.columns.iter().map(|&c| row[c].clone()).collect();
            if values.contains(&Value::Null) {
                continue; // NULLs are distinct in UNIQUE constraints
            }
            for entry in self.overlay.scan_index(
                &schema.name,
                &ix.name,
                Bound::Included(values.clone()),
                Bound::Included(values.clone()),
            ) {
                let (_, other) = entry?;
                if compare_tuples(&other, key).is_ne() {
                    let cols: Vec<String> = ix
                        .columns
                        .iter()
                        .map(|&c| format!("{}.{}", schema.name, schema.columns[c].name))
                        .collect();
                    out.push((
                        other,
                        Error::Constraint(format!("UNIQUE constraint failed: {}", cols.join(", "))),
                    ));
                }
            }
        }
        Ok(out)
    }
}

fn aborted() -> Error {
    Error::Invalid("the transaction was aborted by an earlier error; nothing was applied".into())
}

/// Refuses NaN in the columns that identify a row (primary key, UNIQUE indexes): NaN equals
/// nothing, not even itself, so it cannot identify anything.
fn check_identity(schema: &TableSchema, row: &Row) -> Result<(), Error> {
    let key_cols = schema.primary_key.iter().map(|&c| (c, "the primary key"));
    let unique_cols = schema
        .indexes
        .iter()
        .filter(|i| i.unique)
        .flat_map(|i| i.columns.iter().map(|&c| (c, "a UNIQUE index")));
    for (c, what) in key_cols.chain(unique_cols) {
        if matches!(row.get(c), Some(Value::Real(r)) if r.is_nan()) {
            return Err(Error::Type(format!(
                "cannot store NaN in {}.{}: it is part of {what}, and NaN equals nothing",
                schema.name, schema.columns[c].name
            )));
        }
    }
    Ok(())
}

/// RETURNING expressions over the table's row, and their column names.
type Returning = (Vec<BExpr>, Vec<String>);

fn pk_violation(schema: &TableSchema) -> Error {
    let cols: Vec<String> = if schema.primary_key.is_empty() {
        vec!["rowid".into()]
    } else {
        schema.primary_key.iter().map(|&i| format!("{}.{}", schema.name, schema.columns[i].name)).collect()
    };
    Error::Constraint(format!("UNIQUE constraint failed: {} (primary key)", cols.join(", ")))
}

/// A read-only query (SELECT, VALUES or EXPLAIN) on any replica's view, with the default
/// [`Budget`] (no deadline).
pub fn query(
    view: &dyn ReadView,
    sql: &str,
    params: &[Value],
    ctx: Context,
) -> Result<StatementResult, Error> {
    query_with(view, sql, params, ctx, Budget::default())
}

/// A read-only query under `budget`: its deadline, cancellation flag and memory bound.
pub fn query_with(
    view: &dyn ReadView,
    sql: &str,
    params: &[Value],
    ctx: Context,
    budget: Budget,
) -> Result<StatementResult, Error> {
    let meter = Meter::new(budget);
    meter.check()?;
    // A second statement is refused before anything is parsed: parsing all of them first held
    // every syntax tree at once (~400 bytes per byte of SQL: 75 MiB for 190 KB of SELECTs).
    let mut pieces = limits::pieces(sql);
    let (stmts, text) = match (pieces.next(), pieces.next()) {
        (None, _) => (std::sync::Arc::from([]), ""),
        (Some(piece), None) => (parse_piece(piece, &meter)?, piece.text),
        (Some(_), Some(_)) => return Err(Error::Invalid("a query holds exactly one statement".into())),
    };
    match &*stmts {
        [Statement::Query(q)] => run_query(view, &meter, q, Some(text), params, Some(ctx)),
        [Statement::Explain { statement, .. }] => explain(view, statement, params),
        [] => Err(Error::Invalid("empty query".into())),
        [_] => Err(Error::Invalid(
            "only SELECT, VALUES or EXPLAIN can be sent as a query; send writes with Execute".into(),
        )),
        _ => Err(Error::Invalid("a query holds exactly one statement".into())),
    }
}

/// Runs query `q`; `text`, the text it was parsed from, if its plan may be reused
/// (`plan_cache`).
fn run_query(
    view: &dyn ReadView,
    meter: &Meter,
    q: &ast::Query,
    text: Option<&str>,
    params: &[Value],
    ctx: Option<Context>,
) -> Result<StatementResult, Error> {
    let bound = match text {
        Some(text) => super::plan_cache::plan(view, text, q, params)?,
        None => std::rc::Rc::new(Binder::new(view, params).query(q)?),
    };
    let rng = Rng::for_context(ctx);
    let (rows, columns) = Runner::new(view, meter, ctx, &rng, params).query(&bound, &Env::EMPTY)?;
    Ok(StatementResult { columns, rows, ..Default::default() })
}

/// EXPLAIN: the plan as an indented tree, one line per row.
fn explain(view: &dyn ReadView, statement: &Statement, params: &[Value]) -> Result<StatementResult, Error> {
    let Statement::Query(q) = statement else {
        return Err(Error::Unsupported("EXPLAIN of a statement other than a query".into()));
    };
    let bound = Binder::new(view, params).query(q)?;
    let mut lines = Vec::new();
    super::explain::describe(&bound, 0, &mut lines);
    Ok(StatementResult {
        columns: vec!["plan".into()],
        rows: lines.into_iter().map(|l| vec![Value::Text(l)]).collect(),
        ..Default::default()
    })
}

fn data_type(t: &ast::DataType) -> Result<DataType, Error> {
    let name = t.to_string().to_ascii_uppercase();
    let base = name.split('(').next().unwrap_or("").trim();
    Ok(match base {
        "INT" | "INTEGER" | "BIGINT" | "SMALLINT" | "TINYINT" | "INT2" | "INT4" | "INT8" | "MEDIUMINT" => {
            DataType::Integer
        }
        "REAL" | "FLOAT" | "DOUBLE" | "DOUBLE PRECISION" | "NUMERIC" | "DECIMAL" | "FLOAT4" | "FLOAT8" => {
            DataType::Real
        }
        "TEXT" | "VARCHAR" | "CHAR" | "CHARACTER" | "STRING" | "CHARACTER VARYING" | "NVARCHAR" | "CLOB" => {
            DataType::Text
        }
        "BLOB" | "BYTEA" | "BINARY" | "VARBINARY" => DataType::Blob,
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        _ => return Err(Error::Unsupported(format!("column type {name}"))),
    })
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changeset::ErrorKind;
    use crate::sql::MemoryView;

    const CTX: Context = Context { now_millis: 1_700_000_000_000, seed: 7 };

    fn query(view: &dyn ReadView, sql: &str, params: &[Value]) -> Result<StatementResult, Error> {
        super::query(view, sql, params, CTX)
    }

    fn run(view: &mut MemoryView, sql: &str) -> (Vec<Change>, Vec<StatementOutcome>) {
        let snapshot = view.clone();
        let (changes, outcomes) =
            Executor::new(&snapshot, CTX).execute(&[(sql.to_string(), vec![])], false).unwrap();
        for c in &changes {
            view.apply(c);
        }
        (changes, outcomes)
    }

    fn ok(view: &mut MemoryView, sql: &str) -> StatementResult {
        let (_, mut o) = run(view, sql);
        o.remove(0).unwrap_or_else(|e| panic!("{sql}: {e:?}"))
    }

    fn err(view: &mut MemoryView, sql: &str) -> ErrorKind {
        let (changes, mut o) = run(view, sql);
        assert!(changes.is_empty(), "{sql}: a failed statement must change nothing");
        o.remove(0).expect_err(sql).kind
    }

    fn setup() -> MemoryView {
        let mut v = MemoryView::new();
        ok(&mut v, "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL, email TEXT UNIQUE, at TEXT DEFAULT CURRENT_TIMESTAMP)");
        v
    }

    /// random() draws a new number at every call of a statement and of a request, as SQLite's
    /// does, wherever it is called from (VALUES, SELECT, SET, RETURNING); the sequence is fixed by
    /// the leader's seed, so the change set is the same however often it is evaluated.
    #[test]
    fn random_differs_at_every_call_of_a_request() {
        let mut v = MemoryView::new();
        ok(&mut v, "CREATE TABLE r (id INTEGER PRIMARY KEY, x INTEGER)");
        let sql = "INSERT INTO r VALUES (1, random()), (2, random()); INSERT INTO r VALUES (3, random()); \
                   INSERT INTO r SELECT id + 10, random() FROM r; UPDATE r SET x = random() WHERE id > 10 RETURNING random()";
        let (changes, outcomes) = run(&mut v, sql);
        assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
        let returned: Vec<Value> =
            outcomes[3].as_ref().map(|r| r.rows.iter().map(|r| r[0].clone()).collect()).unwrap_or_default();
        let rows = query(&v, "SELECT x FROM r", &[]).expect("reads").rows;
        let mut all: Vec<Value> = rows.into_iter().map(|r| r[0].clone()).chain(returned).collect();
        let n = all.len();
        all.sort_by(crate::changeset::compare_values);
        all.dedup();
        assert_eq!(all.len(), n, "a random() value came twice: {all:?}");
        let mut w = MemoryView::new();
        ok(&mut w, "CREATE TABLE r (id INTEGER PRIMARY KEY, x INTEGER)");
        assert_eq!(run(&mut w, sql).0, changes, "the same seed gives the same change set");

        // A DEFAULT is evaluated per row, each time drawing anew.
        ok(&mut v, "CREATE TABLE d (id INTEGER PRIMARY KEY, x INTEGER DEFAULT (random()))");
        ok(&mut v, "INSERT INTO d (id) VALUES (1), (2), (3)");
        let rows = query(&v, "SELECT count(DISTINCT x), count(x) FROM d", &[]).expect("reads").rows;
        assert_eq!(rows, [[Value::Integer(3), Value::Integer(3)]]);
    }

    #[test]
    fn insert_then_select() {
        let mut v = setup();
        assert_eq!(
            ok(&mut v, "INSERT INTO t (id, name, score) VALUES (1, 'a', 1.5), (2, 'b', 2)").rows_affected,
            2
        );
        let r = query(&v, "SELECT * FROM t WHERE id = 2", &[]).unwrap();
        assert_eq!(r.columns, ["id", "name", "score", "email", "at"]);
        assert_eq!(
            r.rows,
            vec![vec![
                Value::Integer(2),
                Value::Text("b".into()),
                Value::Real(2.0),
                Value::Null,
                Value::Text("2023-11-14 22:13:20".into())
            ]]
        );
        let r = query(&v, "SELECT name, score * 2 AS double FROM t WHERE score > 1.6", &[]).unwrap();
        assert_eq!(r.columns, ["name", "double"]);
        assert_eq!(r.rows, vec![vec![Value::Text("b".into()), Value::Real(4.0)]]);
        // An omitted INTEGER PRIMARY KEY gets the next id.
        assert_eq!(ok(&mut v, "INSERT INTO t (name) VALUES ('c')").last_insert_id, Some(3));
    }

    #[test]
    fn statements_of_a_batch_see_each_other() {
        let v = setup();
        let mut ex = Executor::new(&v, CTX);
        let (c1, _) =
            ex.execute(&[("INSERT INTO t (id, name) VALUES (1, 'a')".into(), vec![])], false).unwrap();
        let (c2, o2) =
            ex.execute(&[("INSERT INTO t (id, name) VALUES (1, 'again')".into(), vec![])], false).unwrap();
        assert_eq!(c1.len(), 1);
        assert!(c2.is_empty());
        assert_eq!(o2[0].as_ref().unwrap_err().kind, ErrorKind::Constraint);
    }

    /// One value order everywhere: the leader's key checks call `0.0` and `-0.0` one key, as
    /// the store's key encoding does (the second INSERT used to pass the check and overwrite
    /// the first row in sled).
    #[test]
    fn zero_and_negative_zero_are_one_key() {
        let v = setup();
        let mut ex = Executor::new(&v, CTX);
        let sql =
            "CREATE TABLE r (k REAL PRIMARY KEY); INSERT INTO r VALUES (0.0); INSERT INTO r VALUES (-0.0)";
        let (changes, outcomes) = ex.execute(&[(sql.into(), vec![])], false).unwrap();
        assert_eq!(changes.len(), 2, "the table and one row: {changes:?}");
        assert!(matches!(&outcomes[2], Err(e) if e.kind == ErrorKind::Constraint), "{outcomes:?}");
    }

    #[test]
    fn transactions_are_all_or_nothing() {
        let v = setup();
        let mut ex = Executor::new(&v, CTX);
        let sql = "BEGIN; INSERT INTO t (id, name) VALUES (1, 'a'); INSERT INTO t (id, name) VALUES (1, 'dup'); COMMIT";
        let (changes, outcomes) = ex.execute(&[(sql.into(), vec![])], false).unwrap();
        assert!(changes.is_empty());
        assert!(outcomes[1].is_ok() && outcomes[2].is_err() && outcomes[3].is_err());
        // And the overlay forgot the first insert too.
        let (changes, _) =
            ex.execute(&[("INSERT INTO t (id, name) VALUES (1, 'a')".into(), vec![])], false).unwrap();
        assert_eq!(changes.len(), 1);
    }

    #[test]
    fn bad_input_is_typed_and_changes_nothing() {
        let mut v = setup();
        ok(&mut v, "INSERT INTO t (id, name, email) VALUES (1, 'a', 'x@y')");
        assert_eq!(err(&mut v, "INSERT INTO nope VALUES (1)"), ErrorKind::NotFound);
        assert_eq!(err(&mut v, "INSERT INTO t (id, emial) VALUES (2, 'x')"), ErrorKind::NotFound);
        assert_eq!(err(&mut v, "INSERT INTO t (id, name) VALUES ('abc', 'x')"), ErrorKind::Type);
        assert_eq!(err(&mut v, "INSERT INTO t (id, name) VALUES (1, 'dup')"), ErrorKind::Constraint);
        assert_eq!(err(&mut v, "INSERT INTO t (id) VALUES (5)"), ErrorKind::Constraint);
        assert_eq!(
            err(&mut v, "INSERT INTO t (id, name, email) VALUES (6, 'b', 'x@y')"),
            ErrorKind::Constraint
        );
        assert_eq!(err(&mut v, "INSERT INTO t VALUES ("), ErrorKind::Syntax);
        assert_eq!(err(&mut v, "CREATE TABLE t (a INT)"), ErrorKind::Constraint);
        assert_eq!(err(&mut v, "CREATE TABLE u (a WIDGET)"), ErrorKind::Unsupported);
        assert_eq!(err(&mut v, "CREATE VIEW v AS SELECT 1"), ErrorKind::Unsupported);
        assert_eq!(err(&mut v, "UPDATE t SET name = NULL"), ErrorKind::Constraint);
        assert_eq!(err(&mut v, "UPDATE t SET id = 'x'"), ErrorKind::Type);
        assert_eq!(err(&mut v, "DROP INDEX nope"), ErrorKind::NotFound);
        assert_eq!(err(&mut v, "SELECT nope FROM t"), ErrorKind::NotFound);
        let e = query(&v, "SELEKT 1", &[]).unwrap_err();
        assert!(matches!(e, Error::Parse { line: 1, .. }), "{e:?}");
        assert!(matches!(query(&v, "SELECT nope FROM t", &[]), Err(Error::NoSuchColumnName(_))));
        assert!(matches!(query(&v, "SELECT t.nope FROM t", &[]), Err(Error::NoSuchColumn { .. })));
        assert!(matches!(query(&v, "SELECT * FROM nope", &[]), Err(Error::NoSuchTable(_))));
        assert_eq!(query(&v, "SELECT * FROM t", &[]).unwrap().rows.len(), 1);
    }

    #[test]
    fn bare_placeholders_bind_in_text_order() {
        let mut v = setup();
        ok(&mut v, "INSERT INTO t (id, name, score) VALUES (1, 'a', 1.0), (2, 'b', 2.0), (3, 'c', 3.0)");
        // The planner binds WHERE before the projection; `?` still numbers left to right.
        let r = query(
            &v,
            "SELECT name || ? FROM t WHERE score > ? AND id < ? ORDER BY id",
            &[Value::Text("!".into()), Value::Real(1.5), Value::Integer(3)],
        )
        .unwrap();
        assert_eq!(r.rows, vec![vec![Value::Text("b!".into())]]);
        assert!(matches!(query(&v, "SELECT ? + ?", &[Value::Integer(1)]), Err(Error::Invalid(_))));
    }

    #[test]
    fn updates_and_deletes_use_keys_and_indexes() {
        let mut v = setup();
        ok(&mut v, "CREATE INDEX t_score ON t (score)");
        ok(&mut v, "INSERT INTO t (id, name, score) VALUES (1, 'a', 1.0), (2, 'b', 2.0), (3, 'c', 3.0)");
        let r =
            ok(&mut v, "UPDATE t SET id = id + 10, name = upper(name) WHERE score >= 2 RETURNING id, name");
        assert_eq!(r.rows_affected, 2);
        assert_eq!(r.rows.len(), 2);
        let plan = query(&v, "EXPLAIN SELECT * FROM t WHERE score = 3.0", &[]).unwrap();
        assert!(format!("{:?}", plan.rows).contains("IndexLookup t USING t_score"), "{:?}", plan.rows);
        let r = query(&v, "SELECT id, name FROM t WHERE score = 3 ORDER BY id", &[]).unwrap();
        assert_eq!(r.rows, vec![vec![Value::Integer(13), Value::Text("C".into())]]);
        assert_eq!(ok(&mut v, "DELETE FROM t WHERE score < 2.5").rows_affected, 2);
        let r = query(&v, "SELECT count(*), sum(id) FROM t", &[]).unwrap();
        assert_eq!(r.rows, vec![vec![Value::Integer(1), Value::Integer(13)]]);
        // A unique index refuses duplicates; OR REPLACE removes the conflicting row.
        ok(&mut v, "CREATE UNIQUE INDEX t_name ON t (name)");
        assert_eq!(err(&mut v, "INSERT INTO t (id, name) VALUES (20, 'C')"), ErrorKind::Constraint);
        ok(&mut v, "INSERT OR REPLACE INTO t (id, name) VALUES (20, 'C')");
        let r = query(&v, "SELECT id FROM t", &[]).unwrap();
        assert_eq!(r.rows, vec![vec![Value::Integer(20)]]);
        ok(&mut v, "INSERT INTO t (id, name) VALUES (21, 'C') ON CONFLICT DO NOTHING");
        assert_eq!(query(&v, "SELECT count(*) FROM t", &[]).unwrap().rows[0][0], Value::Integer(1));
    }

    #[test]
    fn order_by_an_indexed_column_reads_the_index_in_order() {
        let mut v = MemoryView::new();
        ok(&mut v, "CREATE TABLE o (id INTEGER PRIMARY KEY, v INTEGER)");
        ok(&mut v, "CREATE INDEX o_v ON o (v)");
        ok(&mut v, "INSERT INTO o VALUES (1, 30), (2, NULL), (3, 10), (4, 20), (5, 10)");
        let plan = query(&v, "EXPLAIN SELECT v FROM o ORDER BY v LIMIT 3", &[]).unwrap();
        assert!(format!("{:?}", plan.rows).contains("IndexScan o USING o_v (ordered)"), "{:?}", plan.rows);
        let ints = |r: StatementResult| -> Vec<Vec<Option<i64>>> {
            r.rows
                .into_iter()
                .map(|row| {
                    row.into_iter().map(|v| if let Value::Integer(i) = v { Some(i) } else { None }).collect()
                })
                .collect()
        };
        let r = query(&v, "SELECT id, v FROM o ORDER BY v LIMIT 3", &[]).unwrap();
        assert_eq!(ints(r), vec![vec![Some(2), None], vec![Some(3), Some(10)], vec![Some(5), Some(10)]]);
        let r = query(&v, "SELECT id FROM o ORDER BY v DESC, id LIMIT 2", &[]).unwrap();
        assert_eq!(ints(r), vec![vec![Some(1)], vec![Some(4)]]);
        let r = query(&v, "SELECT id FROM o ORDER BY v LIMIT 2 OFFSET 2", &[]).unwrap();
        assert_eq!(ints(r), vec![vec![Some(5)], vec![Some(4)]]);
    }

    #[test]
    fn the_catalog_recreates_tables_and_indexes() {
        let mut v = MemoryView::new();
        ok(&mut v, "CREATE TABLE \"odd name\" (id INT, tag VARCHAR(5) UNIQUE NOT NULL DEFAULT 'x', w DOUBLE, PRIMARY KEY (id))");
        ok(&mut v, "CREATE UNIQUE INDEX by_w ON \"odd name\" (w, tag)");
        let r = query(&v, "SELECT type, name, sql FROM sqlite_schema ORDER BY type DESC, name", &[]).unwrap();
        let text = |v: &Value| match v {
            Value::Text(s) => s.clone(),
            Value::Null => "NULL".into(),
            other => format!("{other:?}"),
        };
        let rows: Vec<Vec<String>> = r.rows.iter().map(|row| row.iter().map(text).collect()).collect();
        assert_eq!(rows.len(), 3, "{rows:?}");
        let create = &rows[0][2];
        assert_eq!(
            create,
            "CREATE TABLE \"odd name\" (id INTEGER NOT NULL, tag TEXT NOT NULL DEFAULT 'x', w REAL, PRIMARY KEY (id), UNIQUE (tag))"
        );
        // Replaying the catalog's SQL on an empty database recreates the same schema.
        let mut fresh = MemoryView::new();
        for row in &rows {
            if row[2] != "NULL" {
                ok(&mut fresh, &row[2]);
            }
        }
        assert_eq!(fresh.tables().unwrap(), v.tables().unwrap());
        assert!(matches!(err(&mut v, "DELETE FROM sqlite_schema"), ErrorKind::NotFound));
        assert!(matches!(err(&mut v, "CREATE INDEX autoindex_x ON \"odd name\" (w)"), ErrorKind::Invalid));
    }

    #[test]
    fn the_catalog_quotes_names_spelled_like_keywords() {
        // Every word the parser knows as a keyword, as a table, column and index name: the
        // catalog's SQL (which `.dump` and backups replay) must recreate the same schema.
        let mut v = MemoryView::new();
        for k in sqlparser::keywords::ALL_KEYWORDS {
            let k = k.to_ascii_lowercase();
            ok(
                &mut v,
                &format!("CREATE TABLE \"{k}\" (\"{k}\" INTEGER, \"_{k}\" TEXT, PRIMARY KEY (\"{k}\"))"),
            );
            ok(&mut v, &format!("CREATE INDEX \"{k}_\" ON \"{k}\" (\"_{k}\", \"{k}\")"));
        }
        let r = query(&v, "SELECT sql FROM sqlite_schema ORDER BY type DESC", &[]).unwrap();
        let mut fresh = MemoryView::new();
        let mut failed = Vec::new();
        for row in &r.rows {
            let Value::Text(sql) = &row[0] else { panic!("{row:?}") };
            if let Some(Err(e)) = run(&mut fresh, sql).1.pop() {
                failed.push(format!("{sql}: {}", e.message));
            }
        }
        assert!(failed.is_empty(), "{} statements do not parse back:\n{}", failed.len(), failed.join("\n"));
        assert_eq!(fresh.tables().unwrap(), v.tables().unwrap());
    }

    #[test]
    fn leader_side_functions_are_constants_in_the_changes() {
        let mut v = MemoryView::new();
        ok(&mut v, "CREATE TABLE e (id INTEGER PRIMARY KEY, r INTEGER, at TEXT)");
        let (changes, o) = run(&mut v, "INSERT INTO e (r, at) VALUES (random(), now())");
        assert!(o[0].is_ok(), "{o:?}");
        let Change::Insert { row, .. } = &changes[0] else { panic!("{changes:?}") };
        assert!(matches!(row[1], Value::Integer(_)));
        assert_eq!(row[2], Value::Text("2023-11-14 22:13:20".into()));
    }

    #[test]
    fn tables_without_primary_key_get_hidden_row_ids() {
        let mut v = MemoryView::new();
        ok(&mut v, "CREATE TABLE log (msg TEXT)");
        let (changes, _) = run(&mut v, "INSERT INTO log VALUES ('a'), ('b')");
        let keys: Vec<&Key> = changes
            .iter()
            .map(|c| match c {
                Change::Insert { key, .. } => key,
                _ => panic!(),
            })
            .collect();
        assert_eq!(keys, [&vec![Value::Integer(1)], &vec![Value::Integer(2)]]);
    }

    #[test]
    fn parameters_bind() {
        let mut v = setup();
        let snapshot = v.clone();
        let (changes, o) = Executor::new(&snapshot, CTX)
            .execute(
                &[(
                    "INSERT INTO t (id, name) VALUES ($1, $2)".into(),
                    vec![Value::Integer(9), Value::Text("p".into())],
                )],
                false,
            )
            .unwrap();
        assert!(o[0].is_ok(), "{o:?}");
        changes.iter().for_each(|c| v.apply(c));
        let r = query(&v, "SELECT name FROM t WHERE id = ?", &[Value::Integer(9)]).unwrap();
        assert_eq!(r.rows, vec![vec![Value::Text("p".into())]]);
    }
}

/// Bounded evaluation (issue 16): inputs that used to crash or stall a node.
#[cfg(test)]
mod bounds {
    use super::*;
    use crate::changeset::ErrorKind;
    use crate::sql::MemoryView;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    const CTX: Context = Context { now_millis: 1_700_000_000_000, seed: 7 };

    fn table(rows: usize) -> MemoryView {
        let mut v = MemoryView::new();
        let sql = "CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT)".to_string();
        let (c, _) = Executor::new(&v.clone(), CTX).execute(&[(sql, vec![])], false).unwrap();
        c.iter().for_each(|c| v.apply(c));
        if rows > 0 {
            let values: Vec<String> = (0..rows).map(|i| format!("({i}, 'row {i}')")).collect();
            let sql = format!("INSERT INTO t VALUES {}", values.join(","));
            let (c, o) = Executor::new(&v.clone(), CTX).execute(&[(sql, vec![])], false).unwrap();
            assert!(o[0].is_ok(), "{o:?}");
            c.iter().for_each(|c| v.apply(c));
        }
        v
    }

    /// Runs `f` on a thread with an ordinary 2 MiB stack, as a stack overflow there aborts the
    /// whole test process instead of failing one test.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new().stack_size(2 << 20).spawn(f).unwrap().join().unwrap()
    }

    fn shapes() -> Vec<(&'static str, String)> {
        let n = 50_000;
        vec![
            ("+ chain", format!("SELECT {}", vec!["1"; n].join("+"))),
            ("|| chain", format!("SELECT {}", vec!["'a'"; n].join("||"))),
            ("AND chain", format!("SELECT {}", vec!["1"; n].join(" AND "))),
            ("OR chain", format!("SELECT {}", vec!["1"; n].join(" OR "))),
            ("= chain", format!("SELECT {}", vec!["1"; n].join(" = "))),
            ("IS NULL chain", format!("SELECT 1{}", " IS NULL".repeat(n))),
            ("nested parentheses", format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n))),
            ("nested CASE", format!("SELECT {}1{}", "CASE WHEN 1 THEN ".repeat(n), " END".repeat(n))),
            ("nested NOT", format!("SELECT {}1", "NOT ".repeat(n))),
            ("nested minus", format!("SELECT {}1", "- ".repeat(n))),
            ("nested function", format!("SELECT {}1{}", "abs(".repeat(n), ")".repeat(n))),
            ("nested subquery", format!("SELECT {}1{}", "(SELECT ".repeat(n), ")".repeat(n))),
            ("flat CASE", format!("SELECT CASE {} END", "WHEN 0 THEN 1 ".repeat(n))),
            (
                "IN list",
                format!(
                    "SELECT 7 IN ({})",
                    (0..100_000).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
                ),
            ),
        ]
    }

    /// Every shape gives a typed error or the right answer through `query` and the `Executor`,
    /// on a 2 MiB stack — never a crash.
    #[test]
    fn huge_expressions_fail_typed_on_a_small_stack() {
        on_small_stack(|| {
            let v = table(0);
            for (name, sql) in shapes() {
                let started = Instant::now();
                let read = query(&v, &sql, &[], CTX);
                let (_, outcomes) = Executor::new(&v, CTX).execute(&[(sql.clone(), vec![])], false).unwrap();
                let write = outcomes.into_iter().next().unwrap();
                match name {
                    "flat CASE" => assert_eq!(read.unwrap().rows, vec![vec![Value::Null]], "{name}"),
                    "IN list" => assert_eq!(read.unwrap().rows, vec![vec![Value::Integer(1)]], "{name}"),
                    _ => {
                        let e = read.expect_err(name);
                        assert!(matches!(e, Error::Limit(_) | Error::Parse { .. }), "{name}: {e:?}");
                        let kind = write.expect_err(name).kind;
                        assert!(matches!(kind, ErrorKind::Limit | ErrorKind::Syntax), "{name}: {kind:?}");
                        if let Error::Limit(m) = e {
                            assert!(m.contains("1000"), "{name}: the message names the limit: {m}");
                        }
                    }
                }
                eprintln!("{name}: {:?}", started.elapsed());
            }
            // Right below the limit, chains still evaluate.
            let sql = format!("SELECT {}", vec!["1"; 400].join("+"));
            assert_eq!(query(&v, &sql, &[], CTX).unwrap().rows, vec![vec![Value::Integer(400)]]);
        });
    }

    /// 20,000 single-row INSERTs in one request: quadratic bookkeeping made this take minutes.
    #[test]
    fn a_batch_of_twenty_thousand_inserts_is_linear() {
        let v = table(0);
        let n = 20_000;
        let sql: String = (0..n).map(|i| format!("INSERT INTO t VALUES ({i}, 'x{i}');")).collect();
        let started = Instant::now();
        let (changes, outcomes) = Executor::new(&v, CTX).execute(&[(sql, vec![])], false).unwrap();
        eprintln!("{n} INSERTs evaluated in {:?}", started.elapsed());
        assert_eq!(changes.len(), n);
        assert_eq!(outcomes.len(), n);
        assert!(outcomes.iter().all(|o| o.is_ok()));
        // A failure in the middle undoes only its own statement.
        let sql: String = (0..n).map(|i| format!("INSERT INTO t VALUES ({}, 'y');", i % (n / 2))).collect();
        let (changes, outcomes) = Executor::new(&v, CTX).execute(&[(sql, vec![])], false).unwrap();
        assert_eq!(changes.len(), n / 2);
        assert_eq!(outcomes.iter().filter(|o| o.is_err()).count(), n / 2);
    }

    fn budget() -> Budget {
        Budget::default()
    }

    /// Found by fuzzing: a request of 20 SELECTs, each within --max-query-memory, held the limit
    /// 20 times over (the results wait for the request's end). The results a request holds now
    /// count against the limit together: past it the request is refused whole, and what stays
    /// within it still runs.
    #[test]
    fn the_results_a_request_holds_count_against_the_memory_limit_together() {
        let v = table(2_000);
        let mut b = budget();
        b.max_memory = 1 << 20;
        let one: usize = query_with(&v, "SELECT * FROM t", &[], CTX, b.clone())
            .unwrap()
            .rows
            .iter()
            .map(|r| limits::row_bytes(r))
            .sum();
        assert!(one > 100 << 10 && one < 300 << 10, "one SELECT's result is {one} bytes");
        let selects = |n: usize| vec![("SELECT * FROM t".to_string(), vec![]); n];
        let mut ex = Executor::new(&v, CTX);
        ex.set_budget(b.clone());
        let (_, outcomes) = ex.execute(&selects(3), false).expect("three results fit");
        assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
        ex.set_budget(b.clone());
        match ex.execute(&selects(20), false) {
            Err(Error::RequestTooLarge(m)) => assert!(m.contains("--max-query-memory"), "{m}"),
            Ok((_, outcomes)) => {
                // A statement may hit the limit first (its own working memory on top of what
                // the request holds): then it fails, and what succeeded fits.
                let held: usize = outcomes
                    .iter()
                    .filter_map(|o| o.as_ref().ok())
                    .flat_map(|r| r.rows.iter().map(|row| limits::row_bytes(row)))
                    .sum();
                assert!(outcomes.iter().any(|o| o.is_err()) && held <= b.max_memory, "held {held} bytes");
            }
            Err(e) => panic!("{e:?}"),
        }
        // The next request starts from nothing held.
        ex.set_budget(b);
        assert!(ex.execute(&selects(3), false).unwrap().1.iter().all(|o| o.is_ok()));
    }

    /// A found by fuzzing: 600 KB of `ORDER BY 1,1,…` held 470 MB while it was parsed, none of
    /// it charged. A statement's syntax tree is now charged per token before it is built, and a
    /// statement whose tree alone exceeds --max-query-memory is refused unparsed, in a query
    /// and in a write, while the same shapes at a sensible size still run.
    #[test]
    fn a_statement_too_long_to_parse_within_the_budget_is_refused() {
        let v = table(3);
        let mut b = budget();
        b.max_memory = 4 << 20;
        let terms = |n: usize| vec!["1"; n].join(",");
        let long = format!("SELECT id FROM t ORDER BY {}", terms(10_000));
        let e = query_with(&v, &long, &[], CTX, b.clone()).unwrap_err();
        assert!(
            matches!(&e, Error::Limit(m) if m.contains("--max-query-memory") && m.contains("too long")),
            "{e:?}"
        );
        let short = format!("SELECT id FROM t ORDER BY {}", terms(100));
        assert_eq!(query_with(&v, &short, &[], CTX, b.clone()).unwrap().rows.len(), 3);
        let mut ex = Executor::new(&v, CTX);
        ex.set_budget(b);
        let insert = format!(
            "INSERT INTO t VALUES {}",
            (0..5_000).map(|i| format!("({i}, 'x')")).collect::<Vec<_>>().join(",")
        );
        let e = ex.execute(&[(insert, vec![])], false).map(|(_, o)| o);
        assert!(matches!(&e, Ok(o) if matches!(&o[0], Err(se) if se.message.contains("too long"))), "{e:?}");
    }

    const CROSS: &str = "SELECT count(*) FROM t a, t b, t c";

    #[test]
    fn a_deadline_or_a_cancellation_stops_a_query() {
        let v = table(300);
        let b = Budget::with_timeout(Duration::from_millis(50), "--query-timeout-ms (50ms)");
        let started = Instant::now();
        let e = query_with(&v, CROSS, &[], CTX, b).unwrap_err();
        assert!(matches!(&e, Error::Interrupted(m) if m.contains("--query-timeout-ms")), "{e:?}");
        assert!(e.aborts_request());
        eprintln!("stopped after {:?}", started.elapsed());
        let b = budget();
        b.cancel.store(true, Ordering::Relaxed);
        let e = query_with(&v, "SELECT count(*) FROM t a, t b", &[], CTX, b).unwrap_err();
        assert!(matches!(e, Error::Interrupted(_)), "{e:?}");
        // A LIKE over a long text is checked too.
        let b = Budget::with_timeout(Duration::ZERO, "x");
        let sql = format!("SELECT '{}' LIKE '{}b'", "a".repeat(20_000), "%a".repeat(5_000));
        assert!(matches!(query_with(&v, &sql, &[], CTX, b), Err(Error::Interrupted(_))));
    }

    /// The pathological LIKE of the issue answers at once.
    #[test]
    fn the_pathological_like_answers() {
        let v = table(0);
        let sql = format!("SELECT '{}' LIKE '{}%c', 'aXc' GLOB 'a[A-Z]c'", "a".repeat(64), "%a".repeat(30));
        let r = query(&v, &sql, &[], CTX).unwrap();
        assert_eq!(r.rows, vec![vec![Value::Integer(0), Value::Integer(1)]]);
    }

    #[test]
    fn working_memory_is_refused_before_it_is_allocated() {
        let v = table(2_000);
        let mut b = budget();
        b.max_memory = 1 << 20;
        let e = query_with(&v, "SELECT a.s, b.s FROM t a, t b", &[], CTX, b.clone()).unwrap_err();
        assert!(matches!(&e, Error::Limit(m) if m.contains("--max-query-memory")), "{e:?}");
        let e = query_with(&v, "SELECT DISTINCT a.s || b.s FROM t a, t b", &[], CTX, b.clone()).unwrap_err();
        assert!(matches!(e, Error::Limit(_)), "{e:?}");
        // Strings: a doubling chain hits the budget before it is built.
        let sql = "SELECT replace(replace(replace(replace(replace(zeroblob, 'A', 'AAAAAAAAAAAAAAAA'), 'A', \
                   'AAAAAAAAAAAAAAAA'), 'A', 'AAAAAAAAAAAAAAAA'), 'A', 'AAAAAAAAAAAAAAAA'), 'A', 'AAAAAAAAAAAAAAAA') \
                   FROM (SELECT 'AAAA' AS zeroblob)";
        let e = query_with(&v, sql, &[], CTX, b.clone()).unwrap_err();
        assert!(matches!(e, Error::Limit(_)), "{e:?}");
        let e = query_with(&v, "SELECT group_concat(a.s || b.s) FROM t a, t b", &[], CTX, b).unwrap_err();
        assert!(matches!(e, Error::Limit(_)), "{e:?}");
        // Within the budget the same query shapes answer.
        let r =
            query(&v, "SELECT count(*) FROM (SELECT DISTINCT a.id FROM t a, t b WHERE b.id < 3)", &[], CTX);
        assert_eq!(r.unwrap().rows, vec![vec![Value::Integer(2_000)]]);
    }

    /// `WHERE k >= x ORDER BY k LIMIT n` on the primary key or an indexed column reads n rows
    /// from x on, in key order, and stops (found by `raftsql bench --workload scan`: at 1,000,000
    /// rows it read the rest of the table and sorted it, about a second per 100 rows). Under a
    /// working-memory budget far below the table's size, that read is refused; the ordered one
    /// answers, with the same rows as the unoptimized shapes give.
    #[test]
    fn an_ordered_range_with_a_limit_reads_only_what_it_returns() {
        let mut v = table(20_000);
        let sql = "CREATE INDEX t_s ON t (s)".to_string();
        let (c, o) = Executor::new(&v.clone(), CTX).execute(&[(sql, vec![])], false).unwrap();
        assert!(o[0].is_ok(), "{o:?}");
        c.iter().for_each(|c| v.apply(c));
        let mut small = budget();
        small.max_memory = 64 << 10;
        let ids = |r: StatementResult| -> Vec<Value> { r.rows.into_iter().map(|r| r[0].clone()).collect() };
        for (sql, param, want) in [
            (
                "SELECT id, s FROM t WHERE id >= $1 ORDER BY id LIMIT 3",
                Value::Integer(100),
                vec![100, 101, 102],
            ),
            ("SELECT id FROM t WHERE id > $1 ORDER BY id LIMIT 2 OFFSET 1", Value::Integer(5), vec![7, 8]),
            // Text order: 'row 100' < 'row 1000' < 'row 10000' < 'row 10001'.
            (
                "SELECT id FROM t WHERE s >= $1 ORDER BY s LIMIT 4",
                Value::Text("row 100".into()),
                vec![100, 1000, 10000, 10001],
            ),
        ] {
            let r = query_with(&v, sql, std::slice::from_ref(&param), CTX, small.clone())
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            assert_eq!(ids(r), want.into_iter().map(Value::Integer).collect::<Vec<_>>(), "{sql}");
        }
        // Descending is not read in order: it still sorts, so the small budget refuses it.
        let e = query_with(&v, "SELECT id, s FROM t WHERE id >= 0 ORDER BY id DESC LIMIT 3", &[], CTX, small)
            .unwrap_err();
        assert!(matches!(e, Error::Limit(_)), "{e:?}");
    }

    /// Errors that are not properties of a statement end the request with nothing kept.
    #[test]
    fn request_level_errors_leave_nothing_behind() {
        let v = table(0);
        let mut ex = Executor::new(&v, CTX);
        let mut b = budget();
        b.max_rows_written = 10;
        ex.set_budget(b);
        let sql: String = (0..20).map(|i| format!("INSERT INTO t VALUES ({i}, 'x');")).collect();
        let e = ex.execute(&[(sql, vec![])], false).unwrap_err();
        assert!(matches!(&e, Error::RequestTooLarge(m) if m.contains("--max-rows-per-request")), "{e:?}");
        let (changes, outcomes) =
            ex.execute(&[("INSERT INTO t VALUES (0, 'x')".into(), vec![])], false).unwrap();
        assert_eq!(changes.len(), 1, "the stopped request left no row behind: {outcomes:?}");
        // Stopped by the deadline: the same.
        let b = Budget::with_timeout(Duration::ZERO, "--write-eval-timeout-ms (0ns)");
        ex.set_budget(b);
        let sql = "INSERT INTO t VALUES (1, 'x'); INSERT INTO t SELECT a.id + 100, 'y' FROM t a";
        assert!(matches!(ex.execute(&[(sql.into(), vec![])], false), Err(Error::Interrupted(_))));
        ex.set_budget(budget());
        let (changes, _) = ex.execute(&[("INSERT INTO t VALUES (1, 'x')".into(), vec![])], false).unwrap();
        assert_eq!(changes.len(), 1);
    }

    #[test]
    fn nan_cannot_identify_a_row() {
        let mut v = MemoryView::new();
        let create = "CREATE TABLE r (k REAL PRIMARY KEY, u REAL UNIQUE)".to_string();
        let (c, _) = Executor::new(&v.clone(), CTX).execute(&[(create, vec![])], false).unwrap();
        c.iter().for_each(|c| v.apply(c));
        let nan = Value::Real(f64::NAN);
        for (sql, params) in [
            ("INSERT INTO r VALUES (?, 1)", vec![nan.clone()]),
            ("INSERT INTO r VALUES (1, ?)", vec![nan.clone()]),
            ("INSERT INTO r VALUES (1e308 * 10 - 1e308 * 10, 1)", vec![]),
        ] {
            let (changes, o) = Executor::new(&v, CTX).execute(&[(sql.into(), params)], false).unwrap();
            assert!(changes.is_empty(), "{sql}");
            let e = o[0].as_ref().unwrap_err();
            assert!(e.kind == ErrorKind::Type && e.message.contains("NaN"), "{sql}: {e:?}");
        }
    }
}

/// Inputs the fuzz tests (server/tests/fuzz, docs/testing.md "Fuzzing") found failing, each
/// reduced to the statement that shows it.
#[cfg(test)]
mod fuzz_findings {
    use super::*;
    use crate::sql::MemoryView;

    const CTX: Context = Context { now_millis: 1_700_000_000_000, seed: 7 };

    fn one(sql: &str) -> Result<Vec<Row>, Error> {
        query(&MemoryView::new(), sql, &[], CTX).map(|r| r.rows)
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    /// A query of many statements parsed all of them before refusing the text, holding every
    /// syntax tree at once: 190 KB of SELECTs held 75 MiB (a 4 MiB request, within
    /// `--max-sql-bytes`, would hold gigabytes). Now the second statement is refused unparsed.
    #[test]
    fn a_query_of_several_statements_is_refused_before_parsing_them() {
        for sql in ["SELECT 1; SELECT (", "SELECT 1; SELECT 2", &"SELECT (SELECT (SELECT 1));".repeat(5_000)]
        {
            let e = one(sql).unwrap_err();
            assert!(matches!(&e, Error::Invalid(m) if m.contains("exactly one statement")), "{e:?}");
        }
        assert_eq!(one("SELECT 1;").unwrap(), [[Value::Integer(1)]]);
        assert!(matches!(one(" ; "), Err(Error::Invalid(m)) if m.contains("empty")));
    }

    /// `substr` with a start and a length near i64's bounds overflowed `len + start - 1`
    /// (a panic in a debug build, a wrapped, wrong answer in release).
    #[test]
    fn substr_with_extreme_arguments_does_not_overflow() {
        let big = "-4611686018427387915";
        assert_eq!(one(&format!("SELECT substr('abc', {big}, {big})")).unwrap(), [[text("")]]);
        // As SQLite: the start moves to 1 and takes the length with it (i64::MAX + i64::MIN + 3).
        assert_eq!(
            one("SELECT substr('abc', -9223372036854775808, 9223372036854775807)").unwrap(),
            [[text("ab")]]
        );
        assert_eq!(
            one("SELECT substr('abc', 9223372036854775807, 9223372036854775807)").unwrap(),
            [[text("")]]
        );
        assert_eq!(one("SELECT substr('abc', 2, -9223372036854775808)").unwrap(), [[text("a")]]);
        assert_eq!(one("SELECT substr('abc', 0, -9223372036854775808)").unwrap(), [[text("")]]);
        assert_eq!(one("SELECT substr('abcdef', -2, 9223372036854775807)").unwrap(), [[text("ef")]]);
    }
}

/// A storage read that fails is not a SQL answer (issue 21): it stops the whole request with
/// [`Error::Read`], which [`Error::aborts_request`] says is not deterministic, so it is never
/// recorded as a statement's outcome; the sequencer proposes nothing of such a request (see
/// `raft::sequencer`). When the store recorded the failure as its own (sled failed, not a
/// pinned read stopped on purpose), the node answers UNAVAILABLE and stops (`raft::fail_stop`;
/// tests/tests/storage_faults.rs).
#[cfg(test)]
mod read_errors {
    use super::*;
    use crate::changeset::{IndexIter, Key, ReadError, ReadView, Row, RowIter, TableSchema};
    use crate::sql::MemoryView;
    use std::ops::Bound;

    const CTX: Context = Context { now_millis: 1_700_000_000_000, seed: 7 };

    /// The catalog reads; every read of table `t`'s rows or indexes fails, as a damaged page
    /// or a failing disk would.
    struct Failing(MemoryView);

    fn injected() -> ReadError {
        ReadError("injected: an I/O error reading the database".into())
    }

    impl ReadView for Failing {
        fn table(&self, name: &str) -> Result<Option<TableSchema>, ReadError> {
            self.0.table(name)
        }
        fn tables(&self) -> Result<Vec<TableSchema>, ReadError> {
            self.0.tables()
        }
        fn get(&self, table: &str, key: &[Value]) -> Result<Option<Row>, ReadError> {
            if table.eq_ignore_ascii_case("t") {
                return Err(injected());
            }
            self.0.get(table, key)
        }
        fn scan(&self, table: &str, lower: Bound<Key>, upper: Bound<Key>) -> RowIter<'_> {
            if table.eq_ignore_ascii_case("t") {
                return Box::new(std::iter::once(Err(injected())));
            }
            self.0.scan(table, lower, upper)
        }
        fn scan_index(
            &self,
            table: &str,
            index: &str,
            lower: Bound<Vec<Value>>,
            upper: Bound<Vec<Value>>,
        ) -> IndexIter<'_> {
            if table.eq_ignore_ascii_case("t") {
                return Box::new(std::iter::once(Err(injected())));
            }
            self.0.scan_index(table, index, lower, upper)
        }
        fn last_key(&self, table: &str) -> Result<Option<Key>, ReadError> {
            if table.eq_ignore_ascii_case("t") {
                return Err(injected());
            }
            self.0.last_key(table)
        }
    }

    fn failing() -> Failing {
        let mut v = MemoryView::new();
        for sql in [
            "CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT UNIQUE)",
            "CREATE INDEX t_s ON t (s)",
            "CREATE TABLE u (id INTEGER PRIMARY KEY)",
            "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
        ] {
            let (c, o) = Executor::new(&v.clone(), CTX).execute(&[(sql.to_string(), vec![])], false).unwrap();
            assert!(o.iter().all(|o| o.is_ok()), "{sql}: {o:?}");
            c.iter().for_each(|c| v.apply(c));
        }
        Failing(v)
    }

    #[test]
    fn a_failed_read_stops_the_request_and_is_never_an_outcome() {
        let view = failing();
        for (texts, transaction) in [
            (vec!["SELECT * FROM t"], false),
            (vec!["SELECT s FROM t WHERE s = 'a'"], false),
            (vec!["INSERT INTO t VALUES (3, 'c')"], false),
            (vec!["INSERT INTO t (s) VALUES ('c')"], false),
            (vec!["UPDATE t SET s = 'z' WHERE id = 1"], false),
            (vec!["DELETE FROM t"], false),
            (vec!["CREATE UNIQUE INDEX t_s2 ON t (s)"], false),
            // The statements before it succeeded; the request still ends with the error alone.
            (vec!["INSERT INTO u VALUES (1)", "SELECT count(*) FROM t"], false),
            (vec!["INSERT INTO u VALUES (1); SELECT count(*) FROM t"], false),
            (vec!["INSERT INTO u VALUES (1)", "DELETE FROM t WHERE id = 2"], true),
        ] {
            let texts: Vec<(String, Vec<Value>)> = texts.iter().map(|s| (s.to_string(), vec![])).collect();
            match Executor::new(&view, CTX).execute(&texts, transaction) {
                Err(e @ Error::Read(_)) => {
                    assert!(e.aborts_request(), "{e:?}");
                    assert!(e.to_string().contains("injected"), "{e}");
                }
                other => panic!("{texts:?}: a read error must stop the request, got {other:?}"),
            }
        }
        let e = query(&view, "SELECT count(*) FROM t", &[], CTX).unwrap_err();
        assert!(matches!(e, Error::Read(_)) && e.aborts_request(), "{e:?}");
        // The other tables still answer.
        assert!(query(&view, "SELECT count(*) FROM u", &[], CTX).is_ok());
    }
}
