//! The query result cache (seed 004): a service on top of the pipeline.
//!
//! A read asks for it per call ([`QueryOptions::cache_ttl`]); a hit returns
//! the rows kept from an earlier run without touching the pool or the
//! server, and a miss runs through the pipeline's choke point like any
//! statement, then keeps its rows for the TTL.
//!
//! - One cache per database (per manager), made on first use, bounded by
//!   entries and by estimated bytes; past either bound the least recently
//!   used entries go (an ordered map of use ticks: O(log n) per lookup).
//! - The key is the SQL text and the parameter values, hashed for the
//!   lookup and compared in full on a hit (a hash collision is a miss, never
//!   someone else's rows). Values are kept in memory only: never logged,
//!   never in a metric or a `Debug`.
//! - Invalidation: a write through the manager (a statement, a committed
//!   transaction) drops the entries of the tables it names
//!   ([`sql::written_tables`]); what the text cannot tell (DDL, `CALL`, a
//!   script, `COMMIT` on a held connection) drops them all. Explicitly by
//!   table or by key. A miss that raced an invalidation is not kept (an
//!   epoch, bumped by every invalidation), so a write never leaves a stale
//!   entry behind. Writes from elsewhere (other processes) are bounded by
//!   the TTL only.
//! - Never inside a transaction or on a held connection: asking for the
//!   cache there is an error (their reads may see uncommitted writes).

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::{Limit, Op, Shared};
use crate::sql::{self, Tables};
use crate::value::{hash_value, Params, Row, Value};

/// Options of one query: a result cache TTL and a timeout (seed 004's
/// `QueryOptions`).
///
/// ```no_run
/// # fn main() -> dbmanager::Result<()> {
/// use std::time::Duration;
/// use dbmanager::{DatabaseManager, QueryOptions};
///
/// let db = DatabaseManager::new("rpa_db")?;
/// let options = QueryOptions::new()
///     .cache_ttl(Duration::from_secs(60))
///     .timeout(Duration::from_secs(5));
/// let rows = db.query_with("SELECT code, label FROM countries", (), &options)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryOptions {
    cache_ttl: Option<Duration>,
    timeout: Option<Duration>,
}

impl QueryOptions {
    /// No cache, the database's query timeout.
    pub fn new() -> QueryOptions {
        QueryOptions::default()
    }

    /// Answer from the query cache when it holds this statement with these
    /// values, kept for at most `ttl`; otherwise run it and keep its rows
    /// for `ttl`. Default: not cached. A zero TTL is not cached.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = Some(ttl);
        self
    }

    /// The statement's time limit, in place of the database's query
    /// timeout (as [`execute_query_with_timeout`](crate::DatabaseManager::execute_query_with_timeout)).
    /// It bounds a run on the server; a cache hit takes no time to bound.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The TTL asked for, if any.
    pub fn ttl(&self) -> Option<Duration> {
        self.cache_ttl
    }

    /// The time limit of a run on the server.
    pub(crate) fn limit(&self) -> Limit {
        match self.timeout {
            Some(t) => Limit::custom(Some(t)),
            None => Limit::DEFAULT,
        }
    }

    /// Whether the call asks for the cache.
    fn caches(&self) -> bool {
        self.cache_ttl.is_some_and(|t| !t.is_zero())
    }

    /// Refuses the cache where it must not be used (a transaction, a held
    /// connection); `where_` names the place for the error.
    pub(crate) fn refuse_cache(&self, shared: &Shared, where_: &str) -> Result<()> {
        if self.cache_ttl.is_none() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Parameter,
            format!(
                "the query cache is not used {where_}: its reads may see writes not yet committed; \
                 run the cached query through the DatabaseManager, or drop cache_ttl from its QueryOptions"
            ),
        )
        .on_database(shared.name()))
    }
}

/// A snapshot of one database's query cache.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct QueryCacheStats {
    /// Results kept now.
    pub entries: usize,
    /// Their estimated size in bytes.
    pub bytes: u64,
    /// The entry bound ([`DatabaseConfigBuilder::query_cache_entries`](crate::DatabaseConfigBuilder::query_cache_entries)).
    pub max_entries: u32,
    /// The byte bound ([`DatabaseConfigBuilder::query_cache_bytes`](crate::DatabaseConfigBuilder::query_cache_bytes)).
    pub max_bytes: u64,
    /// Cached queries answered from the cache.
    pub hits: u64,
    /// Cached queries that ran on the server.
    pub misses: u64,
    /// Entries dropped to stay within the bounds.
    pub evictions: u64,
}

/// One kept result.
struct Entry {
    sql: Box<str>,
    params: Params,
    rows: Vec<Row>,
    tables: Tables,
    expires: Instant,
    bytes: u64,
    /// Its place in the use order.
    tick: u64,
}

#[derive(Default)]
struct Store {
    /// By the hash of (SQL, values).
    map: HashMap<u64, Entry>,
    /// Use tick → hash: the least recently used first.
    order: BTreeMap<u64, u64>,
    tick: u64,
    bytes: u64,
    hits: u64,
    misses: u64,
    evictions: u64,
}

impl Store {
    fn remove(&mut self, hash: u64) -> Option<Entry> {
        let e = self.map.remove(&hash)?;
        self.order.remove(&e.tick);
        self.bytes -= e.bytes;
        Some(e)
    }

    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) -> usize {
        let gone: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, e)| !keep(e))
            .map(|(h, _)| *h)
            .collect();
        for h in &gone {
            self.remove(*h);
        }
        gone.len()
    }
}

/// One database's query cache.
pub(crate) struct QueryCache {
    store: Mutex<Store>,
    keys: std::collections::hash_map::RandomState,
    /// Bumped by every invalidation: a miss that saw it change while it ran
    /// is not kept.
    epoch: AtomicU64,
    max_entries: u32,
    max_bytes: u64,
}

impl QueryCache {
    /// The cache of `shared`'s database, if a cached query made it.
    fn of(shared: &Shared) -> Option<&QueryCache> {
        shared.service_state.get()?.downcast_ref()
    }

    fn of_or_new(shared: &Shared) -> &QueryCache {
        let state = shared.service_state.get_or_init(|| {
            Box::new(QueryCache {
                store: Mutex::new(Store::default()),
                keys: Default::default(),
                epoch: AtomicU64::new(0),
                max_entries: shared.config.query_cache_entries,
                max_bytes: shared.config.query_cache_bytes,
            }) as Box<dyn Any + Send + Sync>
        });
        state
            .downcast_ref()
            .expect("the service state of a database is its query cache")
    }

    fn hash(&self, sql: &str, params: &Params) -> u64 {
        let mut h = self.keys.build_hasher();
        sql.hash(&mut h);
        match params {
            Params::None => 0u8.hash(&mut h),
            Params::Positional(v) => {
                1u8.hash(&mut h);
                v.iter().for_each(|v| hash_value(v, &mut h));
            }
            Params::Named(v) => {
                2u8.hash(&mut h);
                for (name, v) in v {
                    name.hash(&mut h);
                    hash_value(v, &mut h);
                }
            }
        }
        h.finish()
    }

    fn get(&self, hash: u64, sql: &str, params: &Params, now: Instant) -> Option<Vec<Row>> {
        let mut s = self.store.lock();
        let fresh = match s.map.get(&hash) {
            Some(e) if &*e.sql == sql && e.params == *params => e.expires > now,
            _ => {
                s.misses += 1;
                return None;
            }
        };
        if !fresh {
            s.remove(hash);
            s.misses += 1;
            return None;
        }
        s.tick += 1;
        let tick = s.tick;
        let e = s.map.get_mut(&hash)?;
        let old = std::mem::replace(&mut e.tick, tick);
        let rows = e.rows.clone();
        s.order.remove(&old);
        s.order.insert(tick, hash);
        s.hits += 1;
        Some(rows)
    }

    /// Keeps a result unless an invalidation came since `epoch`; returns
    /// the entries evicted to make room.
    fn put(&self, hash: u64, entry: Entry, epoch: u64) -> u64 {
        if entry.bytes > self.max_bytes {
            return 0;
        }
        let mut s = self.store.lock();
        // Under the lock: an invalidation bumps the epoch before it takes
        // the lock, so either it is seen here or it runs after and drops
        // this entry itself.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return 0;
        }
        s.remove(hash);
        s.tick += 1;
        let tick = s.tick;
        s.bytes += entry.bytes;
        s.order.insert(tick, hash);
        s.map.insert(hash, Entry { tick, ..entry });
        let mut evicted = 0;
        while s.map.len() > self.max_entries as usize || s.bytes > self.max_bytes {
            let Some((_, oldest)) = s.order.pop_first() else {
                break;
            };
            if let Some(e) = s.map.remove(&oldest) {
                s.bytes -= e.bytes;
            }
            evicted += 1;
        }
        s.evictions += evicted;
        evicted
    }

    fn invalidate(&self, keep: impl FnMut(&Entry) -> bool) -> usize {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.store.lock().retain(keep)
    }

    fn invalidate_tables(&self, tables: &Tables) -> usize {
        match tables {
            Tables::All => self.invalidate(|_| false),
            Tables::Named(names) if names.is_empty() => 0,
            Tables::Named(names) => self.invalidate(|e| match &e.tables {
                Tables::All => false,
                Tables::Named(read) => !read.iter().any(|t| names.contains(t)),
            }),
        }
    }

    fn stats(&self) -> QueryCacheStats {
        let s = self.store.lock();
        QueryCacheStats {
            entries: s.map.len(),
            bytes: s.bytes,
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            hits: s.hits,
            misses: s.misses,
            evictions: s.evictions,
        }
    }
}

/// Runs a read with `options`: from the cache when it asks for it and the
/// cache holds a fresh result, else through `run` (the pipeline), keeping
/// the rows when it asked for the cache.
///
/// # Errors
///
/// `Parameter` when the cache is asked for a statement that may write;
/// otherwise `run`'s error.
pub(crate) fn query(
    shared: &Shared,
    sql: &str,
    params: Params,
    options: &QueryOptions,
    run: impl FnOnce(Params) -> Result<Vec<Row>>,
) -> Result<Vec<Row>> {
    let Some(ttl) = options.cache_ttl.filter(|_| options.caches()) else {
        return run(params);
    };
    if shared.config.query_cache_entries == 0 {
        return run(params);
    }
    if sql::classify_statement(sql) != sql::StatementKind::Read {
        return Err(Error::new(
            ErrorKind::Parameter,
            "only reads are cached, and this statement may write (or the library cannot tell); \
             run it without cache_ttl",
        )
        .on_database(shared.name()));
    }
    let cache = QueryCache::of_or_new(shared);
    let hash = cache.hash(sql, &params);
    let now = Instant::now();
    if let Some(rows) = cache.get(hash, sql, &params, now) {
        shared.metrics.cache_lookup(true);
        return Ok(rows);
    }
    shared.metrics.cache_lookup(false);
    let epoch = cache.epoch.load(Ordering::Acquire);
    let rows = run(params.clone())?;
    let entry = Entry {
        bytes: estimate(sql, &rows),
        sql: sql.into(),
        params,
        rows: rows.clone(),
        tables: sql::read_tables(sql),
        expires: Instant::now() + ttl,
        tick: 0,
    };
    let evicted = cache.put(hash, entry, epoch);
    shared.metrics.cache_evicted(evicted);
    Ok(rows)
}

/// What a statement that ran through the manager (not in a transaction)
/// may have changed: the entries of its tables go.
pub(crate) fn after_statement(shared: &Shared, op: Op, sql: &str) {
    let Some(cache) = QueryCache::of(shared) else {
        return;
    };
    match op {
        Op::Query | Op::Execute | Op::Batch | Op::Script | Op::Copy => {
            cache.invalidate_tables(&sql::written_tables(sql));
        }
        Op::Begin | Op::Commit | Op::Rollback => {}
    }
}

/// The tables a statement of a transaction may change, added to `written`
/// (for [`after_commit`]). Nothing is kept while the database has no cache.
pub(crate) fn note_write(shared: &Shared, op: Op, sql: &str, written: &mut Option<Tables>) {
    if QueryCache::of(shared).is_none()
        || !matches!(
            op,
            Op::Query | Op::Execute | Op::Batch | Op::Script | Op::Copy
        )
    {
        return;
    }
    *written = Some(match (written.take(), sql::written_tables(sql)) {
        (Some(Tables::All), _) | (_, Tables::All) => Tables::All,
        (None, t) => t,
        (Some(Tables::Named(mut a)), Tables::Named(b)) => {
            a.extend(b);
            a.sort_unstable();
            a.dedup();
            Tables::Named(a)
        }
    });
}

/// A transaction that wrote `written` committed: their entries go.
pub(crate) fn after_commit(shared: &Shared, written: Option<Tables>) {
    if let (Some(cache), Some(t)) = (QueryCache::of(shared), written) {
        cache.invalidate_tables(&t);
    }
}

/// Drops the entries that read any of `tables`; returns how many.
pub(crate) fn invalidate_tables(shared: &Shared, tables: &[&str]) -> usize {
    let Some(cache) = QueryCache::of(shared) else {
        return 0;
    };
    let names = tables.iter().map(|t| table_key(t)).collect();
    cache.invalidate_tables(&Tables::Named(names))
}

/// Drops the entry of one statement with its values; true if there was one.
pub(crate) fn invalidate_query(shared: &Shared, sql: &str, params: &Params) -> bool {
    let Some(cache) = QueryCache::of(shared) else {
        return false;
    };
    let hash = cache.hash(sql, params);
    cache.epoch.fetch_add(1, Ordering::AcqRel);
    let mut s = cache.store.lock();
    match s.map.get(&hash) {
        Some(e) if &*e.sql == sql && e.params == *params => s.remove(hash).is_some(),
        _ => false,
    }
}

/// Drops every entry; returns how many.
pub(crate) fn clear(shared: &Shared) -> usize {
    QueryCache::of(shared).map_or(0, |c| c.invalidate(|_| false))
}

/// A snapshot of the cache (empty, with its bounds, before first use).
pub(crate) fn stats(shared: &Shared) -> QueryCacheStats {
    match QueryCache::of(shared) {
        Some(c) => c.stats(),
        None => QueryCacheStats {
            max_entries: shared.config.query_cache_entries,
            max_bytes: shared.config.query_cache_bytes,
            ..QueryCacheStats::default()
        },
    }
}

/// A table name as the cache keys it: the last part of a qualified name,
/// unquoted, lower-cased (as [`sql::read_tables`] gives them).
fn table_key(name: &str) -> String {
    let last = name.trim().rsplit('.').next().unwrap_or_default();
    last.trim_matches(|c| matches!(c, '"' | '`' | '[' | ']'))
        .to_lowercase()
}

/// The estimated memory of a kept result: the rows, their values and what
/// the values point to, the column names once, and the SQL.
fn estimate(sql: &str, rows: &[Row]) -> u64 {
    let mut bytes = (sql.len() + std::mem::size_of::<Entry>()) as u64;
    if let Some(first) = rows.first() {
        bytes += first.columns().map(|c| c.len() as u64 + 16).sum::<u64>();
    }
    for row in rows {
        bytes += std::mem::size_of::<Row>() as u64;
        for v in row.values() {
            bytes += std::mem::size_of::<Value>() as u64
                + match v {
                    Value::Text(s) => s.len() as u64,
                    Value::Bytes(b) => b.len() as u64,
                    Value::Json(j) => j.to_string().len() as u64 * 2,
                    _ => 0,
                };
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keys_match_what_the_scanner_gives() {
        assert_eq!(table_key("Customers"), "customers");
        assert_eq!(table_key("app.\"Orders\""), "orders");
        assert_eq!(table_key("[dbo].[Lines]"), "lines");
    }

    #[test]
    fn options_build_and_refuse_a_zero_ttl() {
        let o = QueryOptions::new().cache_ttl(Duration::ZERO);
        assert!(!o.caches());
        let o = QueryOptions::new()
            .cache_ttl(Duration::from_secs(1))
            .timeout(Duration::from_secs(2));
        assert!(o.caches());
        assert_eq!(o.ttl(), Some(Duration::from_secs(1)));
        assert_eq!(o.limit(), Limit::custom(Some(Duration::from_secs(2))));
    }
}
