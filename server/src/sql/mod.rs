//! SQL: parse (sqlparser) → plan → evaluate on a `ReadView` into changes and results.
