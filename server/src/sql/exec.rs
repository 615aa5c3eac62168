//! Statement execution: DDL and DML into `Change`s on an overlay, SELECT into rows.

use super::eval::{coerce, compare_tuples};
use super::overlay::Overlay;
use super::plan::{object_name, BExpr, Binder, Scope};
use super::run::{Env, Runner};
use super::{parse, Context, Error};
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
}

impl<'a> Executor<'a> {
    pub fn new(view: &'a dyn ReadView, ctx: Context) -> Self {
        Executor { overlay: Overlay::new(view), ctx }
    }

    /// Evaluates one request: `(sql text, params)` pairs; a text may hold several statements
    /// (params only when it holds exactly one). Returns the changes to replicate and one outcome
    /// per statement. A failed statement contributes nothing; in a transaction (`transaction`,
    /// or BEGIN ... COMMIT) any failure discards every change of the request.
    pub fn execute(
        &mut self,
        statements: &[(String, Vec<Value>)],
        transaction: bool,
    ) -> (Vec<Change>, Vec<StatementOutcome>) {
        let mut parsed: Vec<(Result<Statement, Error>, &[Value])> = Vec::new();
        for (sql, params) in statements {
            match parse(sql) {
                Ok(stmts) if stmts.len() > 1 && !params.is_empty() => parsed.push((
                    Err(Error::Invalid(format!(
                        "parameters were given for a text holding {} statements: send each statement separately",
                        stmts.len()
                    ))),
                    params,
                )),
                Ok(stmts) if stmts.is_empty() => parsed.push((Err(Error::Invalid("empty statement".into())), params)),
                Ok(stmts) => parsed.extend(stmts.into_iter().map(|s| (Ok(s), params.as_slice()))),
                Err(e) => parsed.push((Err(e), params)),
            }
        }
        let savepoint = self.overlay.clone();
        let mut in_txn = transaction;
        let mut failed = false;
        let mut changes = Vec::new();
        let mut outcomes = Vec::new();
        for (stmt, params) in parsed {
            if failed && in_txn {
                outcomes.push(Err(Error::Invalid(
                    "the transaction was aborted by an earlier error; nothing was applied".into(),
                )
                .into()));
                continue;
            }
            let stmt = match stmt {
                Ok(s) => s,
                Err(e) => {
                    failed = true;
                    outcomes.push(Err(e.into()));
                    continue;
                }
            };
            match &stmt {
                Statement::StartTransaction { .. } => {
                    in_txn = true;
                    outcomes.push(Ok(StatementResult::default()));
                    continue;
                }
                Statement::Commit { .. } => {
                    outcomes.push(Ok(StatementResult::default()));
                    continue;
                }
                Statement::Rollback { .. } => {
                    failed = true;
                    outcomes.push(Ok(StatementResult::default()));
                    continue;
                }
                _ => {}
            }
            let mut local = Vec::new();
            let before = self.overlay.clone();
            match self.statement(&stmt, params, &mut local) {
                Ok(r) => {
                    changes.extend(local);
                    outcomes.push(Ok(r));
                }
                Err(e) => {
                    self.overlay = before;
                    failed = true;
                    outcomes.push(Err(e.into()));
                }
            }
        }
        if failed && in_txn {
            self.overlay = savepoint;
            changes.clear();
        }
        (changes, outcomes)
    }

    fn emit(&mut self, change: Change, out: &mut Vec<Change>) {
        self.overlay.apply(&change);
        out.push(change);
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
                        Some(t) => self.emit(Change::DropTable { table: t.name }, out),
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
                        Some((table, index)) => self.emit(Change::DropIndex { table, index }, out),
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
            Statement::Query(q) => run_query(&self.overlay, q, params, Some(self.ctx)),
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
        );
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
        self.emit(Change::CreateTable(TableSchema { name, columns, primary_key, indexes }), out);
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
                let runner = Runner::new(&self.overlay, Some(self.ctx));
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
                            self.emit(Change::Delete { table: schema.name.clone(), key: k }, out);
                        }
                    }
                }
            }
            if let [Value::Integer(id)] = key.as_slice() {
                last_insert_id = Some(*id);
            }
            if let Some(r) = &returning {
                returned.push(self.eval_returning(r, &row)?);
            }
            let change = if existing.is_some() {
                Change::Update { table: schema.name.clone(), key, row }
            } else {
                Change::Insert { table: schema.name.clone(), key, row }
            };
            self.emit(change, out);
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

    fn eval_returning(&self, r: &Returning, row: &Row) -> Result<Row, Error> {
        let runner = Runner::new(&self.overlay, Some(self.ctx));
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
        Runner::new(&self.overlay, Some(self.ctx)).keyed_rows(&plan, &Env::EMPTY)
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
        let runner = Runner::new(&self.overlay, Some(self.ctx));
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
                self.emit(Change::Delete { table: schema.name.clone(), key }, out);
                if let Some(r) = &returning {
                    returned.push(self.eval_returning(r, &row)?);
                }
                self.emit(Change::Insert { table: schema.name.clone(), key: new_key, row }, out);
            } else {
                if let Some((_, e)) = self.unique_conflicts(&schema, &key, &row)?.into_iter().next() {
                    return Err(e);
                }
                if let Some(r) = &returning {
                    returned.push(self.eval_returning(r, &row)?);
                }
                self.emit(Change::Update { table: schema.name.clone(), key, row }, out);
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
                returned.push(self.eval_returning(r, &row)?);
            }
            self.emit(Change::Delete { table: schema.name.clone(), key }, out);
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
                        Runner::new(&self.overlay, Some(self.ctx)).eval(&bound, &Env::EMPTY)?
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

/// A read-only query (SELECT, VALUES or EXPLAIN) on any replica's view.
pub fn query(
    view: &dyn ReadView,
    sql: &str,
    params: &[Value],
    ctx: Context,
) -> Result<StatementResult, Error> {
    let stmts = parse(sql)?;
    match stmts.as_slice() {
        [Statement::Query(q)] => run_query(view, q, params, Some(ctx)),
        [Statement::Explain { statement, .. }] => explain(view, statement, params),
        [] => Err(Error::Invalid("empty query".into())),
        [_] => Err(Error::Invalid(
            "only SELECT, VALUES or EXPLAIN can be sent as a query; send writes with Execute".into(),
        )),
        _ => Err(Error::Invalid("a query holds exactly one statement".into())),
    }
}

fn run_query(
    view: &dyn ReadView,
    q: &ast::Query,
    params: &[Value],
    ctx: Option<Context>,
) -> Result<StatementResult, Error> {
    let bound = Binder::new(view, params).query(q)?;
    let (rows, columns) = Runner::new(view, ctx).query(&bound, &Env::EMPTY)?;
    Ok(StatementResult { columns, rows, ..Default::default() })
}

/// EXPLAIN: the plan as an indented tree, one line per row.
fn explain(view: &dyn ReadView, statement: &Statement, params: &[Value]) -> Result<StatementResult, Error> {
    let Statement::Query(q) = statement else {
        return Err(Error::Unsupported("EXPLAIN of a statement other than a query".into()));
    };
    let bound = Binder::new(view, params).query(q)?;
    let mut lines = Vec::new();
    super::plan::describe(&bound, 0, &mut lines);
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
        let (changes, outcomes) = Executor::new(&snapshot, CTX).execute(&[(sql.to_string(), vec![])], false);
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
        let (c1, _) = ex.execute(&[("INSERT INTO t (id, name) VALUES (1, 'a')".into(), vec![])], false);
        let (c2, o2) = ex.execute(&[("INSERT INTO t (id, name) VALUES (1, 'again')".into(), vec![])], false);
        assert_eq!(c1.len(), 1);
        assert!(c2.is_empty());
        assert_eq!(o2[0].as_ref().unwrap_err().kind, ErrorKind::Constraint);
    }

    #[test]
    fn transactions_are_all_or_nothing() {
        let v = setup();
        let mut ex = Executor::new(&v, CTX);
        let sql = "BEGIN; INSERT INTO t (id, name) VALUES (1, 'a'); INSERT INTO t (id, name) VALUES (1, 'dup'); COMMIT";
        let (changes, outcomes) = ex.execute(&[(sql.into(), vec![])], false);
        assert!(changes.is_empty());
        assert!(outcomes[1].is_ok() && outcomes[2].is_err() && outcomes[3].is_err());
        // And the overlay forgot the first insert too.
        let (changes, _) = ex.execute(&[("INSERT INTO t (id, name) VALUES (1, 'a')".into(), vec![])], false);
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
        let (changes, o) = Executor::new(&snapshot, CTX).execute(
            &[(
                "INSERT INTO t (id, name) VALUES ($1, $2)".into(),
                vec![Value::Integer(9), Value::Text("p".into())],
            )],
            false,
        );
        assert!(o[0].is_ok(), "{o:?}");
        changes.iter().for_each(|c| v.apply(c));
        let r = query(&v, "SELECT name FROM t WHERE id = ?", &[Value::Integer(9)]).unwrap();
        assert_eq!(r.rows, vec![vec![Value::Text("p".into())]]);
    }
}
