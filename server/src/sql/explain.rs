//! EXPLAIN: a bound query's plan as an indented tree of text lines, in the order the levels
//! are read (golden transcripts in `tests/golden/explain.out`).

use super::plan::*;

/// `n` and the noun, plural unless n is 1: "1 term", "2 terms".
fn counted(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// EXPLAIN: the plan as an indented tree.
#[recursive::recursive]
pub fn describe(q: &Query, indent: usize, out: &mut Vec<String>) {
    let pad = "  ".repeat(indent);
    let mut depth = indent;
    if q.limit.is_some() || q.offset.is_some() {
        out.push(format!("{pad}Limit"));
        depth += 1;
    }
    if !q.order_by.is_empty() {
        let keys: Vec<String> = q
            .order_by
            .iter()
            .map(|(k, desc)| format!("#{}{}", k + 1, if *desc { " DESC" } else { "" }))
            .collect();
        out.push(format!("{}Sort [{}]", "  ".repeat(depth), keys.join(", ")));
        depth += 1;
    }
    let pad = "  ".repeat(depth);
    match &q.body {
        Body::Values(rows) => out.push(format!("{pad}Values ({} rows)", rows.len())),
        Body::Compound { op, all, left, right } => {
            out.push(format!("{pad}{op:?}{}", if *all { " ALL" } else { "" }));
            describe(left, depth + 1, out);
            describe(right, depth + 1, out);
        }
        Body::Select(s) => {
            let mut d = depth;
            let line =
                |d: usize, text: String, out: &mut Vec<String>| out.push(format!("{}{text}", "  ".repeat(d)));
            if s.distinct {
                line(d, "Distinct".into(), out);
                d += 1;
            }
            line(d, format!("Project [{}]", q.columns.join(", ")), out);
            d += 1;
            if s.aggregate {
                line(
                    d,
                    format!(
                        "Aggregate ({}, {})",
                        counted(s.group_by.len(), "group key"),
                        counted(s.aggs.len(), "aggregate")
                    ),
                    out,
                );
                d += 1;
            }
            if !s.constant_filters.is_empty() {
                line(d, format!("Filter (constant, {})", counted(s.constant_filters.len(), "term")), out);
                d += 1;
            }
            if s.levels.len() > 1 {
                line(d, "NestedLoopJoin".into(), out);
                d += 1;
            }
            for level in &s.levels {
                let mut text = match &level.source {
                    Source::Table { schema, access } => {
                        let (how, detail) = match access {
                            Access::Scan => ("Scan", String::new()),
                            Access::PkEq(v) => {
                                ("PrimaryKeyLookup", format!(" ({})", counted(v.len(), "key")))
                            }
                            Access::PkRange { .. } => ("PrimaryKeyRange", String::new()),
                            Access::IndexEq { index, values } => {
                                ("IndexLookup", format!(" USING {index} ({})", counted(values.len(), "key")))
                            }
                            Access::IndexRange { index, .. } => ("IndexRange", format!(" USING {index}")),
                            Access::IndexOrder { index } => {
                                ("IndexScan", format!(" USING {index} (ordered)"))
                            }
                        };
                        if level.alias.eq_ignore_ascii_case(&schema.name) {
                            format!("{how} {}{detail}", schema.name)
                        } else {
                            format!("{how} {} AS {}{detail}", schema.name, level.alias)
                        }
                    }
                    Source::Derived(_) => format!("Subquery AS {}", level.alias),
                    Source::Catalog => format!("Catalog AS {}", level.alias),
                };
                if level.left {
                    text = format!("LeftJoin {text}");
                }
                if level.probe.is_some() {
                    text.push_str(" (hash probe)");
                }
                let filters = level.local.len() + level.on.len() + level.filters.len();
                if filters > 0 {
                    text.push_str(&format!(" filter: {}", counted(filters, "term")));
                }
                line(d, text, out);
                if let Source::Derived(sub) = &level.source {
                    describe(sub, d + 1, out);
                }
            }
        }
    }
}
