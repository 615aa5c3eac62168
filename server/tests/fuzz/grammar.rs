//! Grammar-aware random SQL over the fixed schema of `sql_case` (tables `t1`, `users`,
//! `orders`, `kv`): mostly well-formed statements that reach the planner and the evaluator,
//! with edge values (i64 bounds, overflow, division by zero, NaN and infinities, empty and
//! non-ASCII text, invalid-UTF-8 blobs) and names that do not exist mixed in.

use crate::sql_case::{params_for, Request};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use raftsql_server::changeset::Value;

/// The fixed schema's tables and columns, and one name that does not exist.
pub const TABLES: &[(&str, &[&str])] = &[
    ("t1", &["a", "b", "c", "d", "e"]),
    ("users", &["id", "name", "score", "data", "active", "email"]),
    ("orders", &["user_id", "seq", "amount", "note"]),
    ("kv", &["k", "v"]),
    ("nosuch", &["x"]),
];

/// A column reference is generated as a marker, `\u{1}N\u{2}`, and resolved to the N-th
/// column in scope (modulo their number) by the statement or SELECT that owns it, once its
/// FROM clause is known (`resolve`). So every strategy is built once per run: generating
/// columns from a scope with `prop_flat_map` built a new strategy tree for every case and cost
/// more than evaluating it.
const MARK_OPEN: char = '\u{1}';
const MARK_CLOSE: char = '\u{2}';

/// Replaces the column markers in `sql` by columns of `cols` (by literals when there are none).
fn resolve(sql: &str, cols: &[String]) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(open) = rest.find(MARK_OPEN) {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find(MARK_CLOSE).expect("a marker is closed");
        let n: usize = after[..close].parse().expect("a marker holds a number");
        match cols.len() {
            0 => out.push_str(["1", "NULL", "'x'"][n % 3]),
            len => out.push_str(&cols[n % len]),
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

fn s(x: &str) -> String {
    x.to_string()
}

fn int_literal() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (0i64..50).prop_map(|i| i.to_string()),
        1 => any::<i64>().prop_map(|i| i.to_string()),
        2 => select(vec![
            "0", "-1", "9223372036854775807", "-9223372036854775808", "9223372036854775808",
            "18446744073709551616", "99999999999999999999999", "0x7fffffffffffffff", "0x10",
        ])
        .prop_map(s),
    ]
    .boxed()
}

fn real_literal() -> BoxedStrategy<String> {
    prop_oneof![
        select(vec![
            "0.0", "-0.0", "1.5", "0.1", "1e308", "-1e308", "1e309", "4.9e-324", "1e-400", ".5", "3."
        ])
        .prop_map(s),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
    ]
    .boxed()
}

fn text_literal() -> BoxedStrategy<String> {
    prop_oneof![
        select(vec![
            "''",
            "'abc'",
            "'a''b'",
            "'%'",
            "'_'",
            "'%a%'",
            "'a_c'",
            "'[a-c]*'",
            "'*'",
            "'é✓漢字'",
            "'AbC'",
            "'  pad  '",
            "'\\'",
            "'12'",
            "'1e5'",
            "'-7 apples'",
            "'0x10'",
            "'\u{0}'",
            "'NULL'",
        ])
        .prop_map(s),
        "[a-zA-Z0-9%_*\\[\\]^ é]{0,12}".prop_map(|t| format!("'{t}'")),
    ]
    .boxed()
}

fn literal() -> BoxedStrategy<String> {
    prop_oneof![
        3 => int_literal(),
        2 => real_literal(),
        2 => text_literal(),
        1 => select(vec!["X'00ff'", "x''", "X'C328'", "x'e282'", "x'61'", "X'FFFE'"]).prop_map(s),
        1 => select(vec!["NULL", "TRUE", "FALSE", "CURRENT_TIMESTAMP"]).prop_map(s),
        1 => Just(s("?")),
    ]
    .boxed()
}

/// A column reference: a marker for a column in scope, now and then one that does not exist.
fn column() -> BoxedStrategy<String> {
    prop_oneof![
        60 => (0usize..64).prop_map(|n| format!("{MARK_OPEN}{n}{MARK_CLOSE}")),
        1 => select(vec!["nocol", "rowid", "t1.a", "users.id", "x.y.z"]).prop_map(s),
    ]
    .boxed()
}

/// Binary operators, the common ones twice as likely (`<<`, `>>` and `IS <expr>` are left to
/// the mutated inputs: sqlparser's SQLite dialect does not parse them).
pub const BINARY: &[&str] = &[
    "+",
    "-",
    "*",
    "/",
    "%",
    "||",
    "=",
    "==",
    "!=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "AND",
    "OR",
    "&",
    "|",
    "IS DISTINCT FROM",
    "IS NOT DISTINCT FROM",
    "+",
    "-",
    "*",
    "/",
    "=",
    "<",
    "AND",
    "OR",
];

const FUNCTIONS: &[(&str, usize)] = &[
    ("abs", 1),
    ("coalesce", 2),
    ("coalesce", 3),
    ("ifnull", 2),
    ("nullif", 2),
    ("length", 1),
    ("upper", 1),
    ("lower", 1),
    ("substr", 2),
    ("substr", 3),
    ("trim", 1),
    ("trim", 2),
    ("ltrim", 1),
    ("rtrim", 2),
    ("replace", 3),
    ("round", 1),
    ("round", 2),
    ("typeof", 1),
    ("min", 2),
    ("max", 3),
    ("instr", 2),
    ("hex", 1),
    ("sign", 1),
    ("random", 0),
    ("now", 0),
    ("abs", 2),
    ("nosuchfn", 1),
];

const AGGREGATES: &[&str] = &[
    "count(*)",
    "count",
    "count(DISTINCT",
    "sum",
    "total",
    "avg",
    "min",
    "max",
    "group_concat",
    "string_agg",
];

const TYPES: &[&str] = &[
    "INTEGER",
    "INT",
    "REAL",
    "TEXT",
    "BLOB",
    "BOOLEAN",
    "NUMERIC",
    "VARCHAR(10)",
    "DOUBLE",
    "BIGINT",
    "NOPE",
];

/// An expression (its columns as markers); `depth` > 0 allows subqueries (each one level
/// shallower, their own columns resolved inside them).
pub fn expr(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![3 => literal(), 3 => column()];
    leaf.prop_recursive(3, 16, 3, move |inner| {
        let mut options: Vec<(u32, BoxedStrategy<String>)> = vec![
            (
                8,
                (inner.clone(), select(BINARY), inner.clone(), any::<bool>())
                    .prop_map(
                        |(a, op, b, paren)| {
                            if paren {
                                format!("({a} {op} {b})")
                            } else {
                                format!("{a} {op} {b}")
                            }
                        },
                    )
                    .boxed(),
            ),
            (
                2,
                (select(vec!["-", "+", "NOT ", "~"]), inner.clone())
                    .prop_map(|(op, a)| format!("{op}({a})"))
                    .boxed(),
            ),
            (
                2,
                (inner.clone(), select(vec![" IS NULL", " IS NOT NULL", " IS TRUE", " IS NOT FALSE"]))
                    .prop_map(|(a, op)| format!("{a}{op}"))
                    .boxed(),
            ),
            (
                2,
                (inner.clone(), any::<bool>(), inner.clone(), inner.clone())
                    .prop_map(|(a, not, lo, hi)| {
                        format!("{a} {}BETWEEN {lo} AND {hi}", if not { "NOT " } else { "" })
                    })
                    .boxed(),
            ),
            (
                2,
                (inner.clone(), any::<bool>(), vec(inner.clone(), 0..4))
                    .prop_map(|(a, not, list)| {
                        format!("{a} {}IN ({})", if not { "NOT " } else { "" }, list.join(", "))
                    })
                    .boxed(),
            ),
            (
                3,
                (
                    option::of(inner.clone()),
                    vec((inner.clone(), inner.clone()), 1..4),
                    option::of(inner.clone()),
                )
                    .prop_map(|(base, whens, otherwise)| {
                        let mut c = s("CASE");
                        if let Some(b) = base {
                            c += &format!(" {b}");
                        }
                        for (w, t) in whens {
                            c += &format!(" WHEN {w} THEN {t}");
                        }
                        if let Some(e) = otherwise {
                            c += &format!(" ELSE {e}");
                        }
                        c + " END"
                    })
                    .boxed(),
            ),
            (2, (inner.clone(), select(TYPES)).prop_map(|(a, t)| format!("CAST({a} AS {t})")).boxed()),
            (
                3,
                (
                    inner.clone(),
                    select(vec!["LIKE", "NOT LIKE", "GLOB", "LIKE"]),
                    prop_oneof![text_literal(), inner.clone()],
                    option::of(select(vec!["'\\'", "'x'", "'%'", "''", "'ab'"])),
                )
                    .prop_map(|(a, op, pat, esc)| match esc {
                        Some(e) if op.contains("LIKE") => format!("{a} {op} {pat} ESCAPE {e}"),
                        _ => format!("{a} {op} {pat}"),
                    })
                    .boxed(),
            ),
            (
                3,
                (select(FUNCTIONS), vec(inner.clone(), 0..4))
                    .prop_map(|((name, n), args)| {
                        let args: Vec<String> = args.into_iter().cycle().take(n).collect();
                        let args = if args.len() < n { vec![s("1"); n] } else { args };
                        format!("{name}({})", args.join(", "))
                    })
                    .boxed(),
            ),
            (2, (select(AGGREGATES), inner.clone()).prop_map(|(f, a)| aggregate(f, &a)).boxed()),
            (
                1,
                (inner.clone(), select(vec!["NOCASE", "BINARY", "RTRIM"]))
                    .prop_map(|(a, c)| format!("{a} COLLATE {c}"))
                    .boxed(),
            ),
        ];
        if depth > 0 {
            let sub = select_stmt(depth - 1);
            options.push((1, sub.clone().prop_map(|q| format!("({q})")).boxed()));
            options.push((
                1,
                (any::<bool>(), sub.clone())
                    .prop_map(|(not, q)| format!("{}EXISTS ({q})", if not { "NOT " } else { "" }))
                    .boxed(),
            ));
            options.push((1, (inner.clone(), sub).prop_map(|(a, q)| format!("{a} IN ({q})")).boxed()));
        }
        // Most composite expressions in parentheses: unparenthesized postfix and infix forms
        // chain in ways the parser refuses, and a case that stops at the parser tests little.
        (proptest::strategy::Union::new_weighted(options), 0..8u8).prop_map(|(e, bare)| {
            if bare == 0 {
                e
            } else {
                format!("({e})")
            }
        })
    })
    .boxed()
}

fn aggregate(f: &str, arg: &str) -> String {
    match f {
        "count(*)" => s(f),
        "count(DISTINCT" => format!("count(DISTINCT {arg})"),
        "group_concat" | "string_agg" => format!("{f}({arg}, '|')"),
        _ => format!("{f}({arg})"),
    }
}

/// A FROM clause and the columns it brings into scope.
fn from_clause(depth: u32) -> BoxedStrategy<(String, Vec<String>)> {
    let table = table_index();
    let joins = vec(
        (
            table.clone(),
            select(vec![
                ", ",
                " JOIN ",
                " LEFT JOIN ",
                " CROSS JOIN ",
                " INNER JOIN ",
                " JOIN ",
                " LEFT JOIN ",
                " RIGHT JOIN ",
            ]),
        ),
        0..3,
    );
    let mut options = vec![(table, joins, vec(expr(0), 3))
        .prop_map(|(first, joins, ons)| {
            let mut names: Vec<(String, usize)> = vec![(format!("t{first}x"), first)];
            names.extend(joins.iter().enumerate().map(|(i, (t, _))| (format!("j{i}"), *t)));
            let cols: Vec<String> = names
                .iter()
                .flat_map(|(alias, t)| {
                    let (_, cs) = TABLES[*t];
                    cs.iter().flat_map(move |c| [format!("{alias}.{c}"), c.to_string()])
                })
                .collect();
            let mut f = format!("{} AS t{first}x", TABLES[first].0);
            for (i, ((t, kind), on)) in joins.iter().zip(ons).enumerate() {
                f += &format!("{kind}{} AS j{i}", TABLES[*t].0);
                if kind.trim() != "," && kind.trim() != "CROSS JOIN" {
                    f += &format!(" ON {on}");
                }
            }
            (f, cols)
        })
        .boxed()];
    if depth > 0 {
        options.push(
            select_stmt(depth - 1)
                .prop_map(|q| (format!("({q}) AS sub"), vec![s("sub.a"), s("a"), s("sub.x")]))
                .boxed(),
        );
        options.push(
            Just((
                s("(VALUES (1, 'a'), (2, NULL), (NULL, 'c')) AS v"),
                vec![s("column1"), s("column2"), s("v.column1")],
            ))
            .boxed(),
        );
    }
    proptest::strategy::Union::new(options).boxed()
}

/// A SELECT (or a compound of two), `depth` levels of subqueries deep at most.
pub fn select_stmt(depth: u32) -> BoxedStrategy<String> {
    prop_oneof![
        8 => simple_select(depth, true),
        1 => (simple_select(depth, false), select(vec!["UNION", "UNION ALL", "INTERSECT", "EXCEPT"]), simple_select(depth, true))
            .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
    ]
    .boxed()
}

/// One SELECT; `tail`: with ORDER BY and LIMIT (not on the left of a compound).
fn simple_select(depth: u32, tail: bool) -> BoxedStrategy<String> {
    prop_oneof![
        1 => vec(expr(0), 1..4).prop_map(|items| resolve(&format!("SELECT {}", items.join(", ")), &[])),
        6 => {
            let e = expr(depth);
            let item = prop_oneof![
                6 => (e.clone(), option::of(select(vec!["x", "y", "a", "\"odd name\""]))).prop_map(|(e, alias)| match alias {
                    Some(a) => format!("{e} AS {a}"),
                    None => e,
                }),
                1 => Just(s("*")),
                1 => select(vec!["t0x.*", "j0.*", "sub.*", "nosuch.*"]).prop_map(s),
            ];
            (
                from_clause(depth),
                any::<bool>(),
                vec(item, 1..4),
                option::of(e.clone()),
                option::of((vec(e.clone(), 1..3), option::of(e.clone()))),
                option::of(vec((e.clone(), select(vec!["", " ASC", " DESC", " NULLS FIRST", " DESC NULLS LAST"])), 1..3)),
                option::of((int_literal(), option::of(prop_oneof![int_literal(), e.clone()]))),
            )
        }
        .prop_map(move |((from, cols), distinct, items, filter, group, order, limit)| {
            let mut q = format!("SELECT {}{} FROM {from}", if distinct { "DISTINCT " } else { "" }, items.join(", "));
            if let Some(w) = filter {
                q += &format!(" WHERE {w}");
            }
            if let Some((by, having)) = group {
                q += &format!(" GROUP BY {}", by.join(", "));
                if let Some(h) = having {
                    q += &format!(" HAVING {h}");
                }
            }
            if let Some(order) = order.filter(|_| tail) {
                let terms: Vec<String> = order.into_iter().map(|(e, dir)| format!("{e}{dir}")).collect();
                q += &format!(" ORDER BY {}", terms.join(", "));
            }
            if let Some((n, offset)) = limit.filter(|_| tail) {
                q += &format!(" LIMIT {n}");
                if let Some(o) = offset {
                    q += &format!(" OFFSET {o}");
                }
            }
            resolve(&q, &cols)
        }),
    ]
    .boxed()
}

fn table_index() -> BoxedStrategy<usize> {
    prop_oneof![40 => 0..TABLES.len() - 1, 1 => Just(TABLES.len() - 1)].boxed()
}

fn table_cols(t: usize) -> Vec<String> {
    TABLES[t].1.iter().map(|c| c.to_string()).collect()
}

fn insert() -> BoxedStrategy<String> {
    // VALUES rows (cut to the width named), a SELECT, or neither: DEFAULT VALUES.
    let source = prop_oneof![
        6 => vec(vec(expr(0), 6), 1..4).prop_map(|rows| (Some(rows), None)),
        2 => select_stmt(1).prop_map(|q| (None, Some(q))),
        1 => Just((None, None)),
    ];
    (
        table_index(),
        select(vec!["INSERT", "INSERT OR REPLACE", "INSERT OR IGNORE", "REPLACE"]),
        any::<u8>(),
        source,
        option::of(expr(0)),
    )
        .prop_map(|(t, verb, mask, (rows, query), returning)| {
            let cols = table_cols(t);
            // The named columns: a subset of the table's by `mask`, or none.
            let named: Vec<&String> =
                cols.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1).map(|(_, c)| c).collect();
            let width = if named.is_empty() { cols.len() } else { named.len() };
            let source = match (rows, query) {
                (_, Some(q)) => q,
                (Some(rows), None) => {
                    let rows: Vec<String> =
                        rows.iter().map(|r| format!("({})", r[..width.min(r.len())].join(", "))).collect();
                    resolve(&format!("VALUES {}", rows.join(", ")), &[])
                }
                (None, None) => s("DEFAULT VALUES"),
            };
            let mut q = format!("{verb} INTO {}", TABLES[t].0);
            if !named.is_empty() {
                q += &format!(" ({})", named.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "));
            }
            q += &format!(" {source}");
            if let Some(r) = returning {
                q += &format!(" RETURNING {r}");
            }
            resolve(&q, &cols)
        })
        .boxed()
}

fn update() -> BoxedStrategy<String> {
    (table_index(), vec((0usize..8, expr(1)), 1..3), option::of(expr(1)), option::of(expr(0)))
        .prop_map(|(t, sets, filter, returning)| {
            let cols = table_cols(t);
            let sets: Vec<String> =
                sets.into_iter().map(|(c, e)| format!("{} = {e}", cols[c % cols.len()])).collect();
            let mut q = format!("UPDATE {} SET {}", TABLES[t].0, sets.join(", "));
            if let Some(w) = filter {
                q += &format!(" WHERE {w}");
            }
            if let Some(r) = returning {
                q += &format!(" RETURNING {r}");
            }
            resolve(&q, &cols)
        })
        .boxed()
}

fn delete() -> BoxedStrategy<String> {
    (table_index(), option::of(expr(1)))
        .prop_map(|(t, filter)| match filter {
            Some(w) => resolve(&format!("DELETE FROM {} WHERE {w}", TABLES[t].0), &table_cols(t)),
            None => format!("DELETE FROM {}", TABLES[t].0),
        })
        .boxed()
}

fn ddl() -> BoxedStrategy<String> {
    let name = select(vec!["t_new", "users", "t1", "\"odd name\"", "kv2"]);
    let column_def = (
        select(vec!["id", "a", "b", "name", "v", "\"sp ace\""]),
        select(TYPES),
        select(vec![
            "",
            " NOT NULL",
            " PRIMARY KEY",
            " UNIQUE",
            " DEFAULT 7",
            " DEFAULT 'x'",
            " DEFAULT (1 + 1)",
            " DEFAULT CURRENT_TIMESTAMP",
            " NOT NULL DEFAULT NULL",
        ]),
    )
        .prop_map(|(n, t, c)| format!("{n} {t}{c}"));
    prop_oneof![
        3 => (any::<bool>(), name.clone(), vec(column_def, 1..4), option::of(select(vec!["PRIMARY KEY (id)", "PRIMARY KEY (a, b)", "UNIQUE (v)", "PRIMARY KEY (nocol)"])))
            .prop_map(|(if_not, n, cols, constraint)| {
                let mut body = cols.join(", ");
                if let Some(c) = constraint {
                    body += &format!(", {c}");
                }
                format!("CREATE TABLE {}{n} ({body})", if if_not { "IF NOT EXISTS " } else { "" })
            }),
        1 => (name.clone(), select_stmt(0)).prop_map(|(n, q)| format!("CREATE TABLE {n} AS {q}")),
        3 => (any::<bool>(), select(vec!["ix_new", "users_name", "orders_amount"]), table_index())
            .prop_flat_map(|(unique, ix, t)| (Just(unique), Just(ix), Just(t), proptest::sample::subsequence(TABLES[t].1.to_vec(), 0..=TABLES[t].1.len().min(2))))
            .prop_map(|(unique, ix, t, cols)| {
                format!("CREATE {}INDEX {ix} ON {} ({})", if unique { "UNIQUE " } else { "" }, TABLES[t].0, cols.join(", "))
            }),
        2 => (any::<bool>(), name).prop_map(|(if_exists, n)| format!("DROP TABLE {}{n}", if if_exists { "IF EXISTS " } else { "" })),
        2 => (any::<bool>(), select(vec!["ix_new", "users_name", "orders_amount", "nosuch"]))
            .prop_map(|(if_exists, n)| format!("DROP INDEX {}{n}", if if_exists { "IF EXISTS " } else { "" })),
    ]
    .boxed()
}

/// One statement of any kind.
pub fn statement() -> BoxedStrategy<String> {
    prop_oneof![
        8 => select_stmt(1),
        1 => select_stmt(1).prop_map(|q| format!("EXPLAIN {q}")),
        3 => insert(),
        2 => update(),
        2 => delete(),
        2 => ddl(),
        1 => select(vec!["BEGIN", "COMMIT", "ROLLBACK", "BEGIN TRANSACTION"]).prop_map(s),
    ]
    .boxed()
}

/// A request: one to four statements, each its own text with its parameters, or all in one
/// text; now and then as a transaction, now and then with a wrong number of parameters.
pub fn request() -> BoxedStrategy<Request> {
    (vec(statement(), 1..5), any::<bool>(), 0u8..6, vec(value(), 0..4), 0u8..10)
        .prop_map(|(stmts, joined, transaction, spare, wrong)| {
            let transaction = transaction == 0;
            let mut extra = spare.into_iter().cycle();
            let texts = if joined && stmts.len() > 1 {
                vec![(stmts.join("; "), vec![])]
            } else {
                stmts
                    .into_iter()
                    .map(|sql| {
                        let mut params = params_for(&sql, &mut extra);
                        if wrong == 0 {
                            params.pop();
                        } else if wrong == 1 {
                            params.push(Value::Integer(1));
                        }
                        (sql, params)
                    })
                    .collect()
            };
            Request { texts, transaction }
        })
        .boxed()
}

/// A parameter value of any type, edge values weighted up.
pub fn value() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(Value::Null),
        3 => prop_oneof![
            any::<i64>(),
            select(vec![0, 1, -1, i64::MAX, i64::MIN, i64::MAX - 1, 1 << 53]),
            -5i64..40,
        ]
        .prop_map(Value::Integer),
        3 => prop_oneof![
            any::<f64>(),
            select(vec![f64::NAN, -f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, f64::MIN_POSITIVE, 5e-324, f64::MAX, 9.223372036854776e18]),
        ]
        .prop_map(Value::Real),
        2 => prop_oneof![any::<String>(), "[a-z%_]{0,6}", Just(s("é✓漢字\u{0}\u{feff}"))].prop_map(Value::Text),
        2 => prop_oneof![
            vec(any::<u8>(), 0..12),
            Just(vec![0xff, 0xfe, 0xc3]),
            Just(vec![0xc3, 0x28]),
            Just(vec![]),
        ]
        .prop_map(Value::Blob),
        1 => any::<bool>().prop_map(Value::Boolean),
    ]
    .boxed()
}
