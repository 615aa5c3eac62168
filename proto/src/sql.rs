//! What a SQL text does, judged from its tokens before anything parses it: the one decision
//! "is this text a read?" shared by the server (permissions, `service::sql`), the shell (send
//! as a query or as a write) and the sqllogictest runner.
//!
//! The scanner splits statements where the server's executor does (`sql::limits::pieces` in
//! raftsql-server): at a `;` outside `'...'` strings (`''` inside), identifiers quoted by `"` or
//! `` ` `` (doubled inside), `[...]` (closed by the first `]`: SQLite has no escape there),
//! `--` comments to the end of the line and `/* */` comments, which do not nest. Within a
//! statement, its first token decides, as sqlparser's SQLite dialect reads words. Where a text
//! could be read two ways it takes the one that does more: a text that does not scan (an
//! unterminated string, identifier or comment) writes, and so does anything it does not
//! recognize.

// The crate allows every clippy lint for its generated code; this module is written by hand.
#![warn(clippy::all)]

/// What the statements of one text do, as far as permissions go (docs/security.md): read rows,
/// change rows, change the schema. A statement is counted for everything it might do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// SELECT, VALUES, EXPLAIN, a WITH query; also what INSERT ... SELECT and UPDATE or DELETE
    /// with WHERE read, which the write permission covers (documented).
    pub reads: bool,
    /// INSERT, UPDATE, DELETE, REPLACE, and anything not recognized.
    pub writes: bool,
    /// CREATE, DROP, ALTER.
    pub ddl: bool,
}

impl Effects {
    pub fn union(self, o: Effects) -> Effects {
        Effects { reads: self.reads || o.reads, writes: self.writes || o.writes, ddl: self.ddl || o.ddl }
    }

    /// Reads and nothing else: a text that may be sent as a query.
    pub fn is_read_only(self) -> bool {
        self.reads && !self.writes && !self.ddl
    }
}

/// True when `sql` reads and does nothing else (SELECT, VALUES, EXPLAIN, a WITH query, each
/// possibly in parentheses); false for empty text, for anything that writes or changes the
/// schema, and for a text that does not scan. What [`effects`] says, in one word.
pub fn is_read_only(sql: &str) -> bool {
    effects(sql).is_read_only()
}

/// The first keyword of a statement, as far as [`effects`] tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum First {
    Read,
    With,
    Ddl,
    Transaction,
    Other,
}

fn first_of(word: &str) -> First {
    const READ: [&str; 3] = ["SELECT", "VALUES", "EXPLAIN"];
    const DDL: [&str; 3] = ["CREATE", "DROP", "ALTER"];
    const TRANSACTION: [&str; 6] = ["BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"];
    let is = |list: &[&str]| list.iter().any(|k| word.eq_ignore_ascii_case(k));
    if is(&READ) {
        First::Read
    } else if word.eq_ignore_ascii_case("WITH") {
        First::With
    } else if is(&DDL) {
        First::Ddl
    } else if is(&TRANSACTION) {
        First::Transaction
    } else {
        First::Other
    }
}

fn is_dml(word: &str) -> bool {
    ["INSERT", "UPDATE", "DELETE", "REPLACE"].iter().any(|k| word.eq_ignore_ascii_case(k))
}

/// A word starts as sqlparser's SQLite dialect says (ASCII letters, `_`, U+007F to U+FFFF) and
/// goes on with those and ASCII digits.
fn word_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || ('\u{007f}'..='\u{ffff}').contains(&c)
}

fn word_part(c: char) -> bool {
    word_start(c) || c.is_ascii_digit()
}

/// The [`Effects`] of every statement in `sql`. Statements are split at `;` outside strings,
/// quoted identifiers and comments, and judged by their first token; a WITH statement that
/// holds INSERT, UPDATE, DELETE or REPLACE also writes. Text that does not scan counts as a
/// write (evaluation then rejects it with its syntax error).
pub fn effects(sql: &str) -> Effects {
    let mut all = Effects::default();
    let mut first: Option<First> = None;
    let mut dml_inside = false;
    let mut finish = |first: Option<First>, dml_inside: bool| {
        let e = match first {
            None | Some(First::Transaction) => Effects::default(),
            Some(First::Read) => Effects { reads: true, ..Default::default() },
            Some(First::With) => Effects { reads: true, writes: dml_inside, ddl: false },
            Some(First::Ddl) => Effects { ddl: true, ..Default::default() },
            Some(First::Other) => Effects { writes: true, ..Default::default() },
        };
        all = all.union(e);
    };
    let unscannable = Effects { writes: true, ..Default::default() };
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                let Some(end) =
                    (i + 2..chars.len().saturating_sub(1)).find(|&j| chars[j] == '*' && chars[j + 1] == '/')
                else {
                    return unscannable;
                };
                i = end + 2;
            }
            '\'' | '"' | '`' | '[' => {
                let close = if c == '[' { ']' } else { c };
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return unscannable,
                        Some(&d) if d == close && c != '[' && chars.get(j + 1) == Some(&close) => j += 2,
                        Some(&d) if d == close => break,
                        Some(_) => j += 1,
                    }
                }
                // A string or a quoted identifier: never a keyword.
                first.get_or_insert(First::Other);
                i = j + 1;
            }
            ';' => {
                finish(first.take(), dml_inside);
                dml_inside = false;
                i += 1;
            }
            '(' if first.is_none() => {
                first = Some(First::Read); // "(SELECT ...)"
                i += 1;
            }
            c if word_start(c) => {
                let start = i;
                while i < chars.len() && word_part(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                match first {
                    None => first = Some(first_of(&word)),
                    Some(_) => dml_inside |= is_dml(&word),
                }
            }
            _ => {
                first.get_or_insert(First::Other);
                i += 1;
            }
        }
    }
    finish(first, dml_inside);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_are_judged_per_statement_and_on_the_safe_side() {
        let e = |reads, writes, ddl| Effects { reads, writes, ddl };
        for (sql, want) in [
            ("SELECT 1", e(true, false, false)),
            ("  -- note\n/* c */ select * from t;", e(true, false, false)),
            ("(SELECT 1)", e(true, false, false)),
            ("VALUES (1); EXPLAIN SELECT 1", e(true, false, false)),
            ("WITH x AS (SELECT 1) SELECT * FROM x", e(true, false, false)),
            ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", e(true, true, false)),
            ("INSERT INTO t VALUES (';CREATE TABLE')", e(false, true, false)),
            ("UPDATE t SET a = 1; DELETE FROM t", e(false, true, false)),
            ("REPLACE INTO t VALUES (1)", e(false, true, false)),
            ("CREATE TABLE t (a INT)", e(false, false, true)),
            ("BEGIN; DROP TABLE t; COMMIT", e(false, false, true)),
            ("ALTER TABLE t ADD COLUMN b", e(false, false, true)),
            ("BEGIN; COMMIT;", e(false, false, false)),
            ("", e(false, false, false)),
            ("frobnicate the table", e(false, true, false)),
            ("42", e(false, true, false)),
            ("SELECT 'unterminated", e(false, true, false)),
            ("SELECT 1; CREATE TABLE u (a); INSERT INTO u VALUES (1)", e(true, true, true)),
        ] {
            assert_eq!(effects(sql), want, "{sql:?}");
        }
    }

    #[test]
    fn reads_are_told_from_everything_else() {
        for sql in [
            "SELECT 1",
            "select 1",
            "  \n\tSELECT 1",
            "-- a comment; with a semicolon\nSELECT 1",
            "/* INSERT; */ SELECT 1",
            "( ( select 1 ) )",
            "(VALUES (1))",
            "values(1)",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "with recursive c(n) as (values(1) union all select n+1 from c where n<3) select n from c",
            "EXPLAIN SELECT * FROM t",
            "explain query plan select 1",
            "SELECT 1; SELECT 2;",
            "SELECT 'a;INSERT' FROM \"x;DROP\" JOIN [y;DELETE] JOIN `z;UPDATE`",
            "SELECT 'it''s; DELETE'",
            "SELECT 1 -- ; DROP TABLE t",
            "SELECT 1 /* ; DROP TABLE t */",
            "SELECT \"a\"\"; DROP\" FROM t",
            "SELECT [a;b] FROM t",
            "SELECT 1;;",
        ] {
            assert!(is_read_only(sql), "{sql:?} reads");
        }
        for sql in [
            "",
            "   ",
            "-- only a comment",
            ";",
            "BEGIN; COMMIT",
            "INSERT INTO t VALUES (1)",
            "insert into t select * from u",
            "SELECTED 1",
            "SELECT 1; INSERT INTO t VALUES (1)",
            "SELECT 1; DROP TABLE t",
            "CREATE TABLE t (a)",
            "WITH x AS (SELECT 1) DELETE FROM t",
            "with x as (select 1) update t set a = 1",
            "DELETE FROM t RETURNING *",
            "SELECT 'unterminated",
            "SELECT \"unterminated",
            "SELECT [unterminated",
            "SELECT 1 /* unterminated",
            "SELECT 'a'' ; DROP TABLE t",
            // `]]` ends the identifier, then `;` ends the statement, as the executor splits it.
            "SELECT [a]]; DROP TABLE t; --]",
            "'SELECT 1'",
            "\"SELECT\" 1",
            "42",
            "?",
        ] {
            assert!(!is_read_only(sql), "{sql:?} is not only a read");
        }
    }

    #[test]
    fn a_word_is_a_keyword_only_when_whole_and_unquoted() {
        assert!(!is_read_only("SELECT1"));
        assert_eq!(effects("[SELECT] 1"), Effects { writes: true, ..Default::default() });
        assert_eq!(
            effects("WITH x AS (SELECT inserted FROM t) SELECT * FROM x"),
            Effects { reads: true, ..Default::default() }
        );
        // Unicode letters continue a word, as in sqlparser's SQLite dialect.
        assert!(is_read_only("WITH x AS (SELECT 1) SELECT INSERTé FROM x"));
        assert!(!is_read_only("WITH x AS (SELECT 1) INSERT INTO t SELECT é FROM x"));
    }
}
