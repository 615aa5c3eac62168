//! [`check_bank`]: conservation of money across transfers; what it checks is in the parent
//! module's doc.

use super::{field, name_of, operations, Counts, Verdict};
use crate::nemesis::history::{Event, EventType};
use serde_json::Value;
use std::collections::BTreeMap;

/// Checks that every ok read of a bank history shows `accounts` accounts summing to `total`
/// with no negative balance; see the module doc.
pub fn check_bank(events: &[Event], accounts: usize, total: i64) -> Verdict {
    const CHECKER: &str = "bank";
    let ops = match operations(CHECKER, events, &["transfer", "read"]) {
        Ok(ops) => ops,
        Err(v) => return v,
    };
    let counts = Counts::of(&ops);
    let mut errors = Vec::new();
    let mut reads = Vec::new();
    for op in &ops {
        let v = &op.invoke.value;
        if op.invoke.f == "transfer" {
            let from = name_of(field(v, "from"));
            let to = name_of(field(v, "to"));
            if from.is_none() || to.is_none() || !field(v, "amount").is_some_and(Value::is_i64) {
                errors.push(format!("event {}: transfer {v} is not {{from, to, amount}}", op.invoke.index));
            }
            continue;
        }
        let Some(c) = op.completion.filter(|c| c.kind == EventType::Ok) else { continue };
        let Some(balances) = field(&c.value, "balances").and_then(Value::as_object) else {
            errors
                .push(format!("event {}: read returned {}, not {{\"balances\": {{..}}}}", c.index, c.value));
            continue;
        };
        let mut parsed = BTreeMap::new();
        for (account, b) in balances {
            match b.as_i64() {
                Some(b) => {
                    parsed.insert(account.clone(), b);
                }
                None => errors.push(format!("event {}: account {account:?} has balance {b}", c.index)),
            }
        }
        reads.push((op, parsed));
    }
    if !errors.is_empty() {
        return Verdict::malformed(CHECKER, counts.completed(), errors);
    }
    let mut anomalies = Vec::new();
    for (op, balances) in &reads {
        let mut problems = Vec::new();
        if balances.len() != accounts {
            problems.push(format!("{} accounts instead of {accounts}", balances.len()));
        }
        let sum: i128 = balances.values().map(|&b| b as i128).sum();
        if sum != total as i128 {
            problems.push(format!("total {sum} instead of {total}"));
        }
        let negative: Vec<&String> = balances.iter().filter(|(_, &b)| b < 0).map(|(a, _)| a).collect();
        if !negative.is_empty() {
            problems.push(format!("negative balance in {negative:?}"));
        }
        if !problems.is_empty() {
            anomalies.push(format!("read {}: {}; balances {balances:?}", op.span(), problems.join(", ")));
        }
    }
    let summary = format!(
        "{} reads, {} transfers: {counts}; {} read(s) break conservation ({accounts} accounts, total {total})",
        reads.len(),
        ops.iter().filter(|op| op.invoke.f == "transfer").count(),
        anomalies.len()
    );
    Verdict::new(CHECKER, counts.completed(), summary, anomalies)
}
