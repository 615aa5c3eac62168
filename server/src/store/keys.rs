//! Order-preserving key encoding for the state-machine tree, and the key layout built on it.
//!
//! # Values
//!
//! Each [`Value`] encodes to a tag byte and a body, chosen so that comparing encodings bytewise
//! gives the order the [`ReadView`](crate::changeset::ReadView) contract specifies (SQLite's):
//!
//! | value | tag | body |
//! | --- | --- | --- |
//! | `Null` | `0x10` | — |
//! | `Integer`, `Real`, `Boolean` (as 0/1) | `0x20` | the nearest `f64` in an order-preserving 8-byte form, then the exact remainder `value - that f64` as a sign-flipped big-endian `i16` |
//! | `Text` | `0x30` | the UTF-8 bytes, `0x00` escaped as `0x00 0xFF`, terminated by `0x00 0x00` |
//! | `Blob` | `0x40` | the bytes, escaped and terminated like text |
//!
//! Numbers: rounding to the nearest double is monotone, so a smaller double means a smaller
//! number; equal doubles are told apart by the exact remainder (non-zero only for integers beyond
//! 2^53). Numerically equal values encode identically (`Integer(1)`, `Real(1.0)`,
//! `Boolean(true)`; `-0.0` and `0.0`), which is why keys are never decoded: row and index values
//! keep their own copy of the key (see `state_machine`). NaN sorts below every number.
//!
//! A tuple is the concatenation of its elements' encodings. Every element is self-delimiting and
//! starts with a tag below `0xFF`, so the encoding of a tuple is a byte prefix of the encoding of
//! every tuple that extends it, and `prefix ++ [0xFF]` is greater than all of them: that gives the
//! prefix bounds of the `ReadView` contract ([`lower_bound`], [`upper_bound`]).
//!
//! # Layout of a state-machine generation tree
//!
//! | key | value (bincode) |
//! | --- | --- |
//! | `0x01` meta name (`last_applied`, `membership`, `cluster_id`) | the value |
//! | `0x02` name(table) | `TableSchema` |
//! | `0x03` name(table) tuple(primary key) | `StoredRow` |
//! | `0x04` name(table) name(index) tuple(indexed values) tuple(primary key) | `(values, key)` |
//! | `0x05` client id bytes | `RequestRecord` |
//!
//! `name(x)` is the ASCII-lowercased name, escaped and terminated like text, so `t` is not a
//! prefix of `t2` and names are case-insensitive.

use crate::changeset::Value;
use std::ops::Bound;

const TAG_NULL: u8 = 0x10;
const TAG_NUMBER: u8 = 0x20;
const TAG_TEXT: u8 = 0x30;
const TAG_BLOB: u8 = 0x40;
/// Appended to an encoded tuple prefix: greater than every key that extends the prefix.
const PAST_PREFIX: u8 = 0xFF;

const META: u8 = 0x01;
const CATALOG: u8 = 0x02;
const ROWS: u8 = 0x03;
const INDEX: u8 = 0x04;
const REQUEST: u8 = 0x05;

pub(crate) const META_LAST_APPLIED: &str = "last_applied";
pub(crate) const META_MEMBERSHIP: &str = "membership";
pub(crate) const META_CLUSTER_ID: &str = "cluster_id";

/// Appends the encoding of one value.
pub(crate) fn encode_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(TAG_NULL),
        Value::Integer(i) => encode_integer(out, *i),
        Value::Boolean(b) => encode_integer(out, i64::from(*b)),
        Value::Real(r) => encode_number(out, *r, 0),
        Value::Text(s) => {
            out.push(TAG_TEXT);
            encode_bytes(out, s.as_bytes());
        }
        Value::Blob(b) => {
            out.push(TAG_BLOB);
            encode_bytes(out, b);
        }
    }
}

fn encode_integer(out: &mut Vec<u8>, i: i64) {
    let approx = i as f64;
    // `approx` is integer-valued and |approx| <= 2^63, so it converts to i128 exactly; the
    // remainder of rounding an i64 to a double is at most 2^10 in magnitude.
    let remainder = i128::from(i) - approx as i128;
    encode_number(out, approx, remainder as i16);
}

fn encode_number(out: &mut Vec<u8>, approx: f64, remainder: i16) {
    out.push(TAG_NUMBER);
    let bits = if approx.is_nan() {
        0
    } else {
        // Adding 0.0 turns -0.0 into 0.0, so equal numbers encode equally.
        let bits = (approx + 0.0).to_bits();
        if bits >> 63 == 1 {
            !bits
        } else {
            bits | (1 << 63)
        }
    };
    out.extend_from_slice(&bits.to_be_bytes());
    out.extend_from_slice(&((remainder as u16) ^ 0x8000).to_be_bytes());
}

fn encode_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0x00 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x00]);
}

/// Appends the encoding of a tuple.
pub(crate) fn encode_tuple(out: &mut Vec<u8>, values: &[Value]) {
    for v in values {
        encode_value(out, v);
    }
}

fn encode_name(out: &mut Vec<u8>, name: &str) {
    encode_bytes(out, name.to_ascii_lowercase().as_bytes());
}

/// The lookup form of a table or index name.
pub(crate) fn lookup_name(name: &str) -> String {
    name.to_ascii_lowercase()
}

pub(crate) fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}

/// Whether `key` is a table schema's (the catalog's), without building the prefix.
pub(crate) fn is_catalog_key(key: &[u8]) -> bool {
    key.first() == Some(&CATALOG)
}

pub(crate) fn catalog_prefix() -> Vec<u8> {
    vec![CATALOG]
}

pub(crate) fn catalog_key(table: &str) -> Vec<u8> {
    let mut k = catalog_prefix();
    encode_name(&mut k, table);
    k
}

pub(crate) fn rows_prefix(table: &str) -> Vec<u8> {
    let mut k = vec![ROWS];
    encode_name(&mut k, table);
    k
}

pub(crate) fn row_key(table: &str, key: &[Value]) -> Vec<u8> {
    let mut k = rows_prefix(table);
    encode_tuple(&mut k, key);
    k
}

/// The prefix of every index entry of a table (all its indexes).
pub(crate) fn table_indexes_prefix(table: &str) -> Vec<u8> {
    let mut k = vec![INDEX];
    encode_name(&mut k, table);
    k
}

pub(crate) fn index_prefix(table: &str, index: &str) -> Vec<u8> {
    let mut k = table_indexes_prefix(table);
    encode_name(&mut k, index);
    k
}

pub(crate) fn index_key(table: &str, index: &str, values: &[Value], key: &[Value]) -> Vec<u8> {
    let mut k = index_prefix(table, index);
    encode_tuple(&mut k, values);
    encode_tuple(&mut k, key);
    k
}

pub(crate) fn requests_prefix() -> Vec<u8> {
    vec![REQUEST]
}

pub(crate) fn request_key(client_id: &str) -> Vec<u8> {
    let mut k = requests_prefix();
    k.extend_from_slice(client_id.as_bytes());
    k
}

/// The sled lower bound for tuples under `prefix` (a table's rows or an index) bounded by `b`.
pub(crate) fn lower_bound(prefix: &[u8], b: Bound<&[Value]>) -> Bound<Vec<u8>> {
    let mut k = prefix.to_vec();
    match b {
        Bound::Unbounded => Bound::Included(k),
        Bound::Included(t) => {
            encode_tuple(&mut k, t);
            Bound::Included(k)
        }
        Bound::Excluded(t) => {
            // Skip every key that extends `t`.
            encode_tuple(&mut k, t);
            k.push(PAST_PREFIX);
            Bound::Included(k)
        }
    }
}

/// The sled upper bound for tuples under `prefix` bounded by `b`.
pub(crate) fn upper_bound(prefix: &[u8], b: Bound<&[Value]>) -> Bound<Vec<u8>> {
    let mut k = prefix.to_vec();
    match b {
        Bound::Unbounded => {
            k.push(PAST_PREFIX);
            Bound::Excluded(k)
        }
        Bound::Included(t) => {
            // Include every key that extends `t`.
            encode_tuple(&mut k, t);
            k.push(PAST_PREFIX);
            Bound::Excluded(k)
        }
        Bound::Excluded(t) => {
            encode_tuple(&mut k, t);
            Bound::Excluded(k)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    use crate::changeset::{compare_tuples as cmp_tuples, compare_values as cmp_values};

    fn enc(t: &[Value]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_tuple(&mut out, t);
        out
    }

    fn values() -> Vec<Value> {
        use Value::*;
        vec![
            Null,
            Integer(i64::MIN),
            Integer(i64::MIN + 1),
            Integer(-(1 << 53) - 1),
            Real(-1e300),
            Real(f64::NEG_INFINITY),
            Integer(-2),
            Real(-1.5),
            Integer(-1),
            Real(-1.0),
            Real(-0.0),
            Integer(0),
            Real(0.0),
            Boolean(false),
            Real(0.25),
            Integer(1),
            Real(1.0),
            Boolean(true),
            Real(1.5),
            Integer(2),
            Integer(1 << 53),
            Integer((1 << 53) + 1),
            Real(9007199254740992.0),
            Real(9007199254740994.0),
            Integer(i64::MAX - 1),
            Integer(i64::MAX),
            Real((1u64 << 63) as f64),
            Real(1e300),
            Real(f64::INFINITY),
            Real(f64::NAN),
            Text(String::new()),
            Text("\0".into()),
            Text("a".into()),
            Text("a\0".into()),
            Text("a\0b".into()),
            Text("ab".into()),
            Text("b".into()),
            Text("é".into()),
            Blob(vec![]),
            Blob(vec![0]),
            Blob(vec![0, 0]),
            Blob(vec![0, 1]),
            Blob(vec![1]),
            Blob(vec![0xFF, 0xFF]),
        ]
    }

    #[test]
    fn keys_value_order_matches_readview_order() {
        let vs = values();
        for a in &vs {
            for b in &vs {
                let want = cmp_values(a, b);
                let got = enc(std::slice::from_ref(a)).cmp(&enc(std::slice::from_ref(b)));
                assert_eq!(got, want, "{a:?} vs {b:?}");
            }
        }
    }

    fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let edge_reals = prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(f64::NAN),
            Just(-f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MIN_POSITIVE),
            Just(9_007_199_254_740_992.0),
            Just(9_223_372_036_854_775_808.0),
            Just(-9_223_372_036_854_775_808.0),
        ];
        let near = prop_oneof![
            Just(i64::MIN),
            Just(i64::MAX),
            (-(1i64 << 54)..(1i64 << 54)),
            ((1i64 << 53) - 4..(1i64 << 53) + 4),
            (i64::MAX - 4..=i64::MAX),
        ];
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            near.clone().prop_map(Value::Integer),
            // Reals that equal an integer, or nearly: where int/real comparison is delicate.
            near.prop_map(|i| Value::Real(i as f64)),
            any::<f64>().prop_map(Value::Real),
            edge_reals.prop_map(Value::Real),
            any::<bool>().prop_map(Value::Boolean),
            "[a\\x00é]{0,3}".prop_map(Value::Text),
            proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(0xFF)], 0..3)
                .prop_map(Value::Blob),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        /// The key encoding's bytewise order is the one order of values, for every pair.
        #[test]
        fn keys_encoding_order_is_the_value_order(a in any_value(), b in any_value()) {
            let got = enc(std::slice::from_ref(&a)).cmp(&enc(std::slice::from_ref(&b)));
            proptest::prop_assert_eq!(got, cmp_values(&a, &b), "{:?} vs {:?}", a, b);
        }

        #[test]
        fn keys_tuple_encoding_order_is_the_tuple_order(
            a in proptest::collection::vec(any_value(), 0..3),
            b in proptest::collection::vec(any_value(), 0..3),
        ) {
            proptest::prop_assert_eq!(enc(&a).cmp(&enc(&b)), cmp_tuples(&a, &b), "{:?} vs {:?}", a, b);
        }
    }

    #[test]
    fn keys_tuple_order_matches_readview_order() {
        let vs = values();
        let mut tuples: Vec<Vec<Value>> = vec![vec![]];
        for (i, a) in vs.iter().enumerate().step_by(3) {
            tuples.push(vec![a.clone()]);
            for b in vs.iter().skip(i % 5).step_by(4) {
                tuples.push(vec![a.clone(), b.clone()]);
            }
        }
        for a in &tuples {
            for b in &tuples {
                assert_eq!(enc(a).cmp(&enc(b)), cmp_tuples(a, b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn keys_prefix_bounds_follow_the_contract() {
        use Value::*;
        let vs = values();
        let prefix = rows_prefix("T");
        let keys: Vec<Vec<Value>> =
            vs.iter().flat_map(|a| vs.iter().step_by(5).map(move |b| vec![a.clone(), b.clone()])).collect();
        let bounds: Vec<Vec<Value>> = vec![
            vec![Integer(1)],
            vec![Real(1.0)],
            vec![Text("a".into())],
            vec![Text("a".into()), Null],
            vec![Null],
            vec![Blob(vec![0])],
        ];
        let within = |k: &[u8], lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>| {
            let above = match lo {
                Bound::Included(l) => k >= l.as_slice(),
                Bound::Excluded(l) => k > l.as_slice(),
                Bound::Unbounded => true,
            };
            let below = match hi {
                Bound::Included(h) => k <= h.as_slice(),
                Bound::Excluded(h) => k < h.as_slice(),
                Bound::Unbounded => true,
            };
            above && below
        };
        for p in &bounds {
            // The contract: compare the key's first |p| elements with p.
            for key in &keys {
                let head = &key[..p.len().min(key.len())];
                let o = cmp_tuples(head, p);
                let mut k = prefix.clone();
                encode_tuple(&mut k, key);
                let cases = [
                    (Bound::Included(p.as_slice()), Bound::Unbounded, o != Ordering::Less),
                    (Bound::Excluded(p.as_slice()), Bound::Unbounded, o == Ordering::Greater),
                    (Bound::Unbounded, Bound::Included(p.as_slice()), o != Ordering::Greater),
                    (Bound::Unbounded, Bound::Excluded(p.as_slice()), o == Ordering::Less),
                ];
                for (lo, hi, want) in cases {
                    let (l, h) = (lower_bound(&prefix, lo), upper_bound(&prefix, hi));
                    assert_eq!(within(&k, &l, &h), want, "key {key:?}, bounds {lo:?} {hi:?}");
                }
            }
        }
        // Nothing of another table falls inside a table's unbounded range.
        let (l, h) = (lower_bound(&prefix, Bound::Unbounded), upper_bound(&prefix, Bound::Unbounded));
        for other in ["t2", "", "s", "u"] {
            let k = row_key(other, &[Integer(1)]);
            assert!(!within(&k, &l, &h), "{other}");
        }
        assert!(within(&row_key("t", &[Integer(1)]), &l, &h));
    }

    #[test]
    fn keys_names_are_case_insensitive_and_delimited() {
        assert_eq!(catalog_key("Users"), catalog_key("USERS"));
        assert!(!index_prefix("t", "i").starts_with(&index_prefix("t", "i2")));
        assert!(!index_prefix("t2", "i").starts_with(&table_indexes_prefix("t")));
        assert!(index_prefix("T", "I").starts_with(&table_indexes_prefix("t")));
    }
}
