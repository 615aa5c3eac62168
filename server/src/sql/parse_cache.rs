//! Syntax trees of recently seen statement texts, so that a statement sent again (a prepared
//! point read, the same INSERT with new parameters) is not tokenized and parsed again.
//!
//! A profile of point SELECTs by primary key (`bench --workload get`, 64 clients, 2026-12-06)
//! put sqlparser's tokenizer and parser at about 12 % of a node's CPU, most of the SQL engine's
//! share, with more in the allocator beneath them; binding and running the plan took about 5 %.
//!
//! What is cached is the parse of one [`Piece`](super::limits::Piece)'s text: `?` placeholders
//! already numbered, depth already checked. It depends on nothing but the text: not on the
//! schema, the parameters, the node or the position of the piece in its request (positions
//! matter only in parse errors, which are never cached). So the cache is process-wide, needs no
//! invalidation, and a hit returns exactly the tree a parse would have built.
//!
//! Bounds, as everything fed by clients:
//! - only texts of at most [`MAX_CACHED_TEXT_BYTES`] are kept: a long text is usually a bulk
//!   INSERT with its values inline, never sent twice;
//! - every entry weighs its text plus the estimate `limits::charge_syntax_tree` charges a
//!   request for the tree (1 KiB a token, an overestimate), and the whole cache holds at most
//!   `--parse-cache-bytes` (default [`DEFAULT_BYTES`]; 0 turns it off);
//! - quick_cache's eviction (CLOCK-Pro) admits a text seen once on probation, so a stream of
//!   distinct texts (literals inline) does not push out the statements that come back.
//!
//! A hit charges the request the same estimate a parse would have, so a request's memory
//! accounting does not depend on what other clients sent before it.

use sqlparser::ast::Statement;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Texts longer than this are parsed every time and never kept.
pub const MAX_CACHED_TEXT_BYTES: usize = 2048;

/// The cache's default bound, in estimated bytes of syntax tree plus text.
pub const DEFAULT_BYTES: u64 = 32 << 20;

/// The statements of one piece of text, shared by every request that sends that text, and the
/// bytes a request is charged for them.
#[derive(Clone)]
pub(crate) struct Parsed {
    pub statements: Arc<[Statement]>,
    /// Tokens of the text, whitespace aside: what `limits::charge_tree` charges for.
    pub tokens: usize,
    /// The parameters the text takes (`limits::placeholder_count`), so that checking a
    /// request's parameter count does not tokenize a text the cache holds.
    pub placeholders: usize,
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Box<str>, Parsed> for Weigh {
    fn weight(&self, key: &Box<str>, val: &Parsed) -> u64 {
        // Never zero: a zero-weight entry is never evicted.
        let tree = val.tokens.saturating_mul(super::limits::SYNTAX_TREE_BYTES_PER_TOKEN);
        key.len().saturating_add(tree).max(1) as u64
    }
}

type Cache = quick_cache::sync::Cache<Box<str>, Parsed, Weigh>;

/// A bounded cache of parses with its counters; the process has one ([`configure`]).
pub(crate) struct ParseCache {
    cache: Option<Cache>,
    hits: AtomicU64,
    misses: AtomicU64,
}

static GLOBAL: OnceLock<ParseCache> = OnceLock::new();

/// Sizes the process's cache: `bytes` of estimated trees and texts, 0 for none. Takes effect
/// only before the first statement is parsed (the node calls it at start); returns whether it
/// did.
pub fn configure(bytes: u64) -> bool {
    GLOBAL.set(ParseCache::new(bytes)).is_ok()
}

/// The process's cache.
pub(crate) fn global() -> &'static ParseCache {
    GLOBAL.get_or_init(|| ParseCache::new(DEFAULT_BYTES))
}

/// What the process's cache did since it started, and its size now.
pub fn stats() -> Stats {
    global().stats()
}

impl ParseCache {
    /// A cache of at most `bytes` (0: keeps nothing).
    pub(crate) fn new(bytes: u64) -> ParseCache {
        // About 8 KiB of estimate for a point statement.
        let items = (bytes / 8192).clamp(16, 1 << 20) as usize;
        let cache = (bytes > 0).then(|| Cache::with_weighter(items, bytes, Weigh));
        ParseCache { cache, hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    /// The cached parse of `text`, counting a hit or a miss.
    pub(crate) fn get(&self, text: &str) -> Option<Parsed> {
        let cache = self.cache.as_ref()?;
        if text.len() > MAX_CACHED_TEXT_BYTES {
            return None;
        }
        let found = cache.get(text);
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// How many parameters `text` takes, if its parse is kept; counts neither a hit nor a miss
    /// (the parse that follows does).
    pub(crate) fn placeholders(&self, text: &str) -> Option<usize> {
        let cache = self.cache.as_ref()?;
        if text.len() > MAX_CACHED_TEXT_BYTES {
            return None;
        }
        cache.peek(text).map(|p| p.placeholders)
    }

    /// Keeps the parse of `text`, if the text is short enough to keep.
    pub(crate) fn put(&self, text: &str, parsed: Parsed) {
        if let Some(cache) = &self.cache {
            if text.len() <= MAX_CACHED_TEXT_BYTES {
                cache.insert(text.into(), parsed);
            }
        }
    }

    /// The counters and the size now.
    pub(crate) fn stats(&self) -> Stats {
        let (entries, bytes) = self.cache.as_ref().map(|c| (c.len() as u64, c.weight())).unwrap_or_default();
        Stats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries,
            bytes,
        }
    }
}

/// What a cache did since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Statement texts found parsed.
    pub hits: u64,
    /// Texts short enough to keep that had to be parsed.
    pub misses: u64,
    /// Entries held now.
    pub entries: u64,
    /// Their weight: texts plus estimated trees, in bytes.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::limits::{self, Budget, Meter};
    use crate::sql::{parse_piece_with, Error};

    fn parse(cache: &ParseCache, text: &str) -> Result<Arc<[Statement]>, Error> {
        let meter = Meter::new(Budget::default());
        let piece = limits::pieces(text).next().expect("a statement");
        parse_piece_with(cache, piece, &meter)
    }

    #[test]
    fn a_text_sent_again_gets_the_tree_a_parse_builds_with_its_placeholders_numbered() {
        let cache = ParseCache::new(DEFAULT_BYTES);
        let off = ParseCache::new(0);
        let text = "SELECT v FROM kv WHERE k = ? AND v > ? ORDER BY k";
        let first = parse(&cache, text).unwrap();
        let again = parse(&cache, text).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the second parse must come from the cache");
        assert_eq!(*again, *parse(&off, text).unwrap(), "a hit must be the tree a parse builds");
        assert!(again[0].to_string().contains("k = ?1 AND v > ?2"), "{}", again[0]);
        assert_eq!(cache.placeholders(text), Some(2), "the parameters it takes are kept with it");
        assert_eq!(cache.placeholders("SELECT $3"), None, "a text not parsed yet");
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1));
        assert!(s.bytes >= (text.len() + 14 * limits::SYNTAX_TREE_BYTES_PER_TOKEN) as u64, "{s:?}");
        assert_eq!(off.stats(), Stats::default(), "a cache of 0 bytes keeps and counts nothing");
    }

    #[test]
    fn parse_errors_are_not_kept_and_keep_their_position_in_the_request() {
        let cache = ParseCache::new(DEFAULT_BYTES);
        let meter = Meter::new(Budget::default());
        for request in ["SELEC 1", "SELECT 1;\n  SELEC 1"] {
            for _ in 0..2 {
                let piece = limits::pieces(request).last().unwrap();
                let e = parse_piece_with(&cache, piece, &meter).unwrap_err();
                let Error::Parse { line, column, .. } = e else { panic!("{e:?}") };
                let want = if request.starts_with("SELEC ") { (1, 1) } else { (2, 3) };
                assert_eq!((line, column), want, "{request:?}");
            }
        }
        assert_eq!(cache.stats().entries, 0, "no failed parse is kept");
    }

    #[test]
    fn a_hit_is_charged_like_a_parse_so_a_small_budget_refuses_it_too() {
        let cache = ParseCache::new(DEFAULT_BYTES);
        let text = "SELECT a, b, c, d, e, f FROM t WHERE a = 1";
        parse(&cache, text).unwrap();
        let tight = Budget { max_memory: 4 * limits::SYNTAX_TREE_BYTES_PER_TOKEN, ..Budget::default() };
        let piece = limits::pieces(text).next().unwrap();
        let e = parse_piece_with(&cache, piece, &Meter::new(tight)).unwrap_err();
        assert!(matches!(e, Error::Limit(_)), "{e:?}");
        assert_eq!(cache.stats().hits, 1);
    }

    #[test]
    fn long_texts_are_not_kept_and_distinct_texts_stay_within_the_bound() {
        let cache = ParseCache::new(1 << 20);
        let long = format!("SELECT 1 WHERE 'x' <> '{}'", "y".repeat(MAX_CACHED_TEXT_BYTES));
        parse(&cache, &long).unwrap();
        parse(&cache, &long).unwrap();
        assert_eq!(cache.stats(), Stats::default(), "a text over the limit is neither kept nor counted");
        // Literals inline: every text new. 5,000 of them at ~12 KiB of estimate each would be
        // ~60 MiB unbounded.
        for i in 0..5_000 {
            parse(&cache, &format!("SELECT v, k FROM kv WHERE k = {i} AND v = 'value {i}'")).unwrap();
        }
        let s = cache.stats();
        assert!(s.bytes <= 1 << 20, "{s:?}");
        assert!(s.entries > 0 && s.entries < 5_000, "{s:?}");
        // A text that keeps coming back stays while new ones pass through.
        let hot = "SELECT v FROM kv WHERE k = ?";
        for i in 0..5_000 {
            parse(&cache, hot).unwrap();
            parse(&cache, &format!("SELECT v FROM kv WHERE k = {i} AND v <> 'other {i}'")).unwrap();
        }
        let before = cache.stats().hits;
        parse(&cache, hot).unwrap();
        assert_eq!(cache.stats().hits, before + 1, "the text sent again and again was evicted");
    }
}
