//! The catalog as SQL: the statements that recreate a table and its indexes, shown by the
//! `sqlite_schema` table (`SELECT type, name, tbl_name, sql FROM sqlite_schema`), which the
//! shell's `.schema` and `.dump` read.

use crate::changeset::{DataType, IndexSchema, TableSchema};

/// The name of the index that a UNIQUE column or table constraint creates; such indexes are
/// recreated by the CREATE TABLE statement itself.
pub fn is_constraint_index(table: &TableSchema, ix: &IndexSchema) -> bool {
    ix.unique && ix.name.starts_with(&format!("autoindex_{}_", table.name))
}

/// SQLite's keywords (sqlite.org/lang_keywords.html) and the few more our parser reads as
/// values, sorted: a name spelled like one is quoted, so the catalog's SQL parses back (a table
/// created as `"order"` is recreated as `"order"`, not as the keyword).
const KEYWORDS: &[&str] = &[
    "ABORT",
    "ACTION",
    "ADD",
    "AFTER",
    "ALL",
    "ALTER",
    "ALWAYS",
    "ANALYZE",
    "AND",
    "ARRAY",
    "AS",
    "ASC",
    "ATTACH",
    "AUTOINCREMENT",
    "BEFORE",
    "BEGIN",
    "BETWEEN",
    "BY",
    "CASCADE",
    "CASE",
    "CAST",
    "CHECK",
    "COLLATE",
    "COLUMN",
    "COMMIT",
    "CONFLICT",
    "CONSTRAINT",
    "CREATE",
    "CROSS",
    "CURRENT",
    "CURRENT_DATE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "CURRENT_USER",
    "DATABASE",
    "DEFAULT",
    "DEFERRABLE",
    "DEFERRED",
    "DELETE",
    "DESC",
    "DETACH",
    "DISTINCT",
    "DO",
    "DROP",
    "EACH",
    "ELSE",
    "END",
    "ESCAPE",
    "EXCEPT",
    "EXCLUDE",
    "EXCLUSIVE",
    "EXISTS",
    "EXPLAIN",
    "FAIL",
    "FALSE",
    "FILTER",
    "FIRST",
    "FOLLOWING",
    "FOR",
    "FOREIGN",
    "FROM",
    "FULL",
    "GENERATED",
    "GLOB",
    "GROUP",
    "GROUPS",
    "HAVING",
    "IF",
    "IGNORE",
    "IMMEDIATE",
    "IN",
    "INDEX",
    "INDEXED",
    "INITIALLY",
    "INNER",
    "INSERT",
    "INSTEAD",
    "INTERSECT",
    "INTERVAL",
    "INTO",
    "IS",
    "ISNULL",
    "JOIN",
    "KEY",
    "LAST",
    "LEFT",
    "LIKE",
    "LIMIT",
    "LOCALTIME",
    "LOCALTIMESTAMP",
    "MATCH",
    "MATERIALIZED",
    "NATURAL",
    "NO",
    "NOT",
    "NOTHING",
    "NOTNULL",
    "NULL",
    "NULLS",
    "OF",
    "OFFSET",
    "ON",
    "OR",
    "ORDER",
    "OTHERS",
    "OUTER",
    "OVER",
    "PARTITION",
    "PLAN",
    "PRAGMA",
    "PRECEDING",
    "PRIMARY",
    "QUERY",
    "RAISE",
    "RANGE",
    "RECURSIVE",
    "REFERENCES",
    "REGEXP",
    "REINDEX",
    "RELEASE",
    "RENAME",
    "REPLACE",
    "RESTRICT",
    "RETURNING",
    "RIGHT",
    "ROLLBACK",
    "ROW",
    "ROWS",
    "SAVEPOINT",
    "SELECT",
    "SESSION_USER",
    "SET",
    "TABLE",
    "TEMP",
    "TEMPORARY",
    "THEN",
    "TIES",
    "TO",
    "TRANSACTION",
    "TRIGGER",
    "TRIM",
    "TRUE",
    "UNBOUNDED",
    "UNION",
    "UNIQUE",
    "UPDATE",
    "USER",
    "USING",
    "VACUUM",
    "VALUES",
    "VIEW",
    "VIRTUAL",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
    "WITHOUT",
];

/// An identifier, double-quoted unless it is a plain word that is no keyword.
pub fn quote_ident(name: &str) -> String {
    let plain = !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && KEYWORDS.binary_search(&name.to_ascii_uppercase().as_str()).is_err();
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

pub fn create_table_sql(t: &TableSchema) -> String {
    let mut parts: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let ty = match c.data_type {
                DataType::Integer => "INTEGER",
                DataType::Real => "REAL",
                DataType::Text => "TEXT",
                DataType::Blob => "BLOB",
                DataType::Boolean => "BOOLEAN",
            };
            let mut s = format!("{} {ty}", quote_ident(&c.name));
            if !c.nullable {
                s.push_str(" NOT NULL");
            }
            if let Some(d) = &c.default {
                s.push_str(&format!(" DEFAULT {d}"));
            }
            s
        })
        .collect();
    let cols =
        |idx: &[usize]| idx.iter().map(|&i| quote_ident(&t.columns[i].name)).collect::<Vec<_>>().join(", ");
    if !t.primary_key.is_empty() {
        parts.push(format!("PRIMARY KEY ({})", cols(&t.primary_key)));
    }
    for ix in t.indexes.iter().filter(|ix| is_constraint_index(t, ix)) {
        parts.push(format!("UNIQUE ({})", cols(&ix.columns)));
    }
    format!("CREATE TABLE {} ({})", quote_ident(&t.name), parts.join(", "))
}

/// `None` for the indexes the table's own UNIQUE constraints create.
pub fn create_index_sql(t: &TableSchema, ix: &IndexSchema) -> Option<String> {
    if is_constraint_index(t, ix) {
        return None;
    }
    let cols: Vec<String> = ix.columns.iter().map(|&i| quote_ident(&t.columns[i].name)).collect();
    Some(format!(
        "CREATE {}INDEX {} ON {} ({})",
        if ix.unique { "UNIQUE " } else { "" },
        quote_ident(&ix.name),
        quote_ident(&t.name),
        cols.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_keyword_list_is_sorted() {
        assert!(super::KEYWORDS.windows(2).all(|w| w[0] < w[1]), "binary_search needs KEYWORDS sorted");
    }
}
