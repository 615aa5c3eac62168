//! Statement execution: DDL and DML into `Change`s on an overlay, SELECT into rows.

use super::eval::{coerce, compare_tuples, eval, is_true, Scope};
use super::overlay::Overlay;
use super::{parse, Context, Error};
use crate::changeset::{
    Change, Column, DataType, IndexSchema, Key, ReadView, Row, StatementOutcome, StatementResult,
    TableSchema, Value,
};
use sqlparser::ast::{self, Expr, SelectItem, SetExpr, Statement, TableFactor};
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
                let mut affected = 0;
                for name in names {
                    let name = object_name(name)?;
                    match self.overlay.table(&name)? {
                        Some(t) => {
                            self.emit(Change::DropTable { table: t.name }, out);
                            affected += 1;
                        }
                        None if *if_exists => {}
                        None => return Err(Error::NoSuchTable(name)),
                    }
                }
                let _ = affected;
                Ok(StatementResult::default())
            }
            Statement::Insert(insert) => self.insert(insert, params, out),
            Statement::Query(q) => run_query(&self.overlay, q, params),
            other => Err(Error::Unsupported(format!("statement {}", first_words(&other.to_string())))),
        }
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
        if insert.or.is_some() || insert.on.is_some() || insert.returning.is_some() {
            return Err(Error::Unsupported("INSERT OR / ON CONFLICT / RETURNING".into()));
        }
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
        let source =
            insert.source.as_ref().ok_or_else(|| Error::Unsupported("INSERT without VALUES".into()))?;
        let SetExpr::Values(values) = source.body.as_ref() else {
            return Err(Error::Unsupported("INSERT ... SELECT".into()));
        };
        let mut next_param = 0;
        let mut affected = 0;
        let mut last_insert_id = None;
        for row_exprs in &values.rows {
            if row_exprs.len() != targets.len() {
                return Err(Error::Invalid(format!(
                    "{} values for {} columns in INSERT INTO {}",
                    row_exprs.len(),
                    targets.len(),
                    schema.name
                )));
            }
            let mut given: Vec<Option<Value>> = vec![None; schema.columns.len()];
            for (expr, &i) in row_exprs.iter().zip(&targets) {
                let scope = Scope { table: None, name: None, row: None, params, ctx: Some(self.ctx) };
                given[i] = Some(eval(expr, &scope, &mut next_param)?);
            }
            let (key, row) = self.complete_row(&schema, given)?;
            if let [Value::Integer(id)] = key.as_slice() {
                last_insert_id = Some(*id);
            }
            if self.overlay.get(&schema.name, &key)?.is_some() {
                let cols: Vec<String> = if schema.primary_key.is_empty() {
                    vec!["rowid".into()]
                } else {
                    schema
                        .primary_key
                        .iter()
                        .map(|&i| format!("{}.{}", schema.name, schema.columns[i].name))
                        .collect()
                };
                return Err(Error::Constraint(format!(
                    "UNIQUE constraint failed: {} (primary key)",
                    cols.join(", ")
                )));
            }
            self.check_unique(&schema, &key, &row)?;
            self.emit(Change::Insert { table: schema.name.clone(), key, row }, out);
            affected += 1;
        }
        Ok(StatementResult { rows_affected: affected, last_insert_id, ..Default::default() })
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
                        let scope =
                            Scope { table: None, name: None, row: None, params: &[], ctx: Some(self.ctx) };
                        eval(&expr, &scope, &mut 0)?
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

    fn check_unique(&self, schema: &TableSchema, key: &Key, row: &Row) -> Result<(), Error> {
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
                    return Err(Error::Constraint(format!("UNIQUE constraint failed: {}", cols.join(", "))));
                }
            }
        }
        Ok(())
    }
}

/// A read-only query (SELECT / VALUES) on any replica's view.
pub fn query(view: &dyn ReadView, sql: &str, params: &[Value]) -> Result<StatementResult, Error> {
    let stmts = parse(sql)?;
    match stmts.as_slice() {
        [Statement::Query(q)] => run_query(view, q, params),
        [] => Err(Error::Invalid("empty query".into())),
        [_] => Err(Error::Invalid(
            "only SELECT or VALUES can be sent as a query; send writes with Execute".into(),
        )),
        _ => Err(Error::Invalid("a query holds exactly one statement".into())),
    }
}

fn run_query(view: &dyn ReadView, q: &ast::Query, params: &[Value]) -> Result<StatementResult, Error> {
    if q.with.is_some() || q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
        return Err(Error::Unsupported("WITH, ORDER BY, LIMIT (coming with the full SQL engine)".into()));
    }
    let select = match q.body.as_ref() {
        SetExpr::Select(s) => s,
        SetExpr::Values(v) => {
            let mut rows = Vec::new();
            let mut next_param = 0;
            for r in &v.rows {
                let scope = Scope { table: None, name: None, row: None, params, ctx: None };
                rows.push(r.iter().map(|e| eval(e, &scope, &mut next_param)).collect::<Result<Vec<_>, _>>()?);
            }
            let width = rows.first().map_or(0, |r| r.len());
            return Ok(StatementResult {
                columns: (1..=width).map(|i| format!("column{i}")).collect(),
                rows,
                ..Default::default()
            });
        }
        other => return Err(Error::Unsupported(format!("query {}", first_words(&other.to_string())))),
    };
    if select.distinct.is_some()
        || select.having.is_some()
        || !matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty())
    {
        return Err(Error::Unsupported(
            "DISTINCT, GROUP BY, HAVING (coming with the full SQL engine)".into(),
        ));
    }
    let (schema, alias) = match select.from.as_slice() {
        [] => (None, None),
        [twj] if twj.joins.is_empty() => match &twj.relation {
            TableFactor::Table { name, alias, .. } => {
                let name = object_name(name)?;
                let schema = view.table(&name)?.ok_or(Error::NoSuchTable(name))?;
                (Some(schema), alias.as_ref().map(|a| a.name.value.clone()))
            }
            other => return Err(Error::Unsupported(format!("FROM {other}"))),
        },
        _ => return Err(Error::Unsupported("joins (coming with the full SQL engine)".into())),
    };

    // Output columns.
    let mut columns = Vec::new();
    let mut exprs: Vec<Option<&Expr>> = Vec::new(); // None: a column position for `*`
    let mut star_positions = Vec::new();
    for item in &select.projection {
        match item {
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                let s = schema.as_ref().ok_or_else(|| Error::Invalid("* needs a FROM clause".into()))?;
                for (i, c) in s.columns.iter().enumerate() {
                    columns.push(c.name.clone());
                    exprs.push(None);
                    star_positions.push(Some(i));
                }
            }
            SelectItem::UnnamedExpr(e) => {
                columns.push(match e {
                    Expr::Identifier(id) => id.value.clone(),
                    Expr::CompoundIdentifier(ids) => ids.last().map_or(e.to_string(), |i| i.value.clone()),
                    _ => e.to_string(),
                });
                exprs.push(Some(e));
                star_positions.push(None);
            }
            SelectItem::ExprWithAlias { expr, alias } => {
                columns.push(alias.value.clone());
                exprs.push(Some(expr));
                star_positions.push(None);
            }
            other => return Err(Error::Unsupported(format!("select item {other}"))),
        }
    }

    let project = |row: Option<&Row>| -> Result<Row, Error> {
        let scope = Scope { table: schema.as_ref(), name: alias.as_deref(), row, params, ctx: None };
        let mut next_param = 0;
        exprs
            .iter()
            .zip(&star_positions)
            .map(|(e, star)| match (e, star) {
                (Some(e), _) => eval(e, &scope, &mut next_param),
                (None, Some(i)) => Ok(row.map_or(Value::Null, |r| r[*i].clone())),
                (None, None) => unreachable!("every output column is an expression or a star position"),
            })
            .collect()
    };
    let Some(schema) = schema.as_ref() else {
        return Ok(StatementResult { columns, rows: vec![project(None)?], ..Default::default() });
    };
    let matches = |row: &Row| -> Result<bool, Error> {
        match &select.selection {
            None => Ok(true),
            Some(w) => {
                let scope =
                    Scope { table: Some(schema), name: alias.as_deref(), row: Some(row), params, ctx: None };
                Ok(is_true(&eval(w, &scope, &mut 0)?))
            }
        }
    };
    // Validate the projection and filter once, even on an empty table.
    project(None)?;
    if let Some(w) = &select.selection {
        eval(
            w,
            &Scope { table: Some(schema), name: alias.as_deref(), row: None, params, ctx: None },
            &mut 0,
        )?;
    }

    let mut rows = Vec::new();
    match point_lookup(schema, select.selection.as_ref(), params)? {
        Some(keys) => {
            for key in keys {
                if let Some(row) = view.get(&schema.name, &key)? {
                    if matches(&row)? {
                        rows.push(project(Some(&row))?);
                    }
                }
            }
        }
        None => {
            for item in view.scan(&schema.name, Bound::Unbounded, Bound::Unbounded) {
                let (_, row) = item?;
                if matches(&row)? {
                    rows.push(project(Some(&row))?);
                }
            }
        }
    }
    Ok(StatementResult { columns, rows, ..Default::default() })
}

/// The keys a WHERE clause pins down, if it is `pk = v` (ANDed with anything) or `pk IN (...)`
/// on a single-column primary key.
fn point_lookup(
    schema: &TableSchema,
    selection: Option<&Expr>,
    params: &[Value],
) -> Result<Option<Vec<Key>>, Error> {
    let [pk] = schema.primary_key.as_slice() else { return Ok(None) };
    let col = &schema.columns[*pk];
    let is_pk = |e: &Expr| match e {
        Expr::Identifier(id) => id.value.eq_ignore_ascii_case(&col.name),
        Expr::CompoundIdentifier(ids) => {
            ids.last().is_some_and(|id| id.value.eq_ignore_ascii_case(&col.name))
        }
        _ => false,
    };
    let constant = |e: &Expr| -> Option<Value> {
        let scope = Scope { table: None, name: None, row: None, params, ctx: None };
        let v = eval(e, &scope, &mut 0).ok()?;
        coerce(v, col.data_type, &schema.name, &col.name).ok()
    };
    fn find(
        e: &Expr,
        is_pk: &dyn Fn(&Expr) -> bool,
        constant: &dyn Fn(&Expr) -> Option<Value>,
    ) -> Option<Vec<Key>> {
        match e {
            Expr::Nested(inner) => find(inner, is_pk, constant),
            Expr::BinaryOp { left, op: ast::BinaryOperator::Eq, right } => {
                if is_pk(left) {
                    constant(right).map(|v| vec![vec![v]])
                } else if is_pk(right) {
                    constant(left).map(|v| vec![vec![v]])
                } else {
                    None
                }
            }
            Expr::BinaryOp { left, op: ast::BinaryOperator::And, right } => {
                find(left, is_pk, constant).or_else(|| find(right, is_pk, constant))
            }
            Expr::InList { expr, list, negated: false } if is_pk(expr) => {
                list.iter().map(|e| constant(e).map(|v| vec![v])).collect()
            }
            _ => None,
        }
    }
    // A placeholder counter would be shared across the WHERE clause; only `$n` parameters are
    // safe to evaluate out of order, so a `?` anywhere disables the shortcut.
    let Some(sel) = selection else { return Ok(None) };
    if sel.to_string().contains('?') {
        return Ok(None);
    }
    Ok(find(sel, &is_pk, &constant))
}

fn object_name(name: &ast::ObjectName) -> Result<String, Error> {
    match name.0.as_slice() {
        [ast::ObjectNamePart::Identifier(id)] => Ok(id.value.clone()),
        _ => Err(Error::Unsupported(format!("qualified name {name}"))),
    }
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
        assert_eq!(err(&mut v, "UPDATE t SET name = 'x'"), ErrorKind::Unsupported);
        let e = query(&v, "SELEKT 1", &[]).unwrap_err();
        assert!(matches!(e, Error::Parse { line: 1, .. }), "{e:?}");
        assert!(matches!(query(&v, "SELECT nope FROM t", &[]), Err(Error::NoSuchColumn { .. })));
        assert!(matches!(query(&v, "SELECT * FROM nope", &[]), Err(Error::NoSuchTable(_))));
        assert_eq!(query(&v, "SELECT * FROM t", &[]).unwrap().rows.len(), 1);
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
