//! Prometheus metrics, with the names of the Python system's metrics, every family labelled by
//! `database` (never by SQL text, parameter values or credentials).
//!
//! The names are the ones the Python system's `prometheus_client` exposed, so
//! its dashboards and alerts keep working: a counter it created as
//! `db_query_count` was scraped as `db_query_count_total`, and that is the
//! name here. Every family passes `promtool check metrics` (counters end in
//! `_total`; only histograms have `_count` series).
//!
//! The families live once per process and are registered in this crate's
//! own [`registry()`]; [`register`] adds them to yours. Read them as text
//! with [`metrics_text`], push them to a Pushgateway at the end of a batch job
//! with [`push_metrics`], or (feature `metrics-server`) serve them for
//! scraping with [`serve`].
//!
//! | family | type | labels | what |
//! |---|---|---|---|
//! | `db_pool_size` | gauge | database | connections kept open (`POOL_SIZE`) |
//! | `db_pool_max_size` | gauge | database | `POOL_SIZE + MAX_OVERFLOW` |
//! | `db_pool_usage` | gauge | database | connections checked out now |
//! | `db_pool_idle` | gauge | database | open connections idle in the pool |
//! | `db_pool_waiting` | gauge | database | callers waiting for a connection |
//! | `db_connection_time_seconds` | histogram | database | time to acquire a pooled connection (one found idle and handed out at once counts as 0 s: it is timed by a single clock read) |
//! | `db_pool_timeouts_total` | counter | database | acquisitions that gave up |
//! | `db_connections_created_total` / `_closed_total` / `_broken_total` | counter | database | connection lifecycle |
//! | `db_query_time_seconds` | histogram | database, operation | statement time (`query`, `execute`, `batch`, `begin`, `commit`, `rollback`) |
//! | `db_query_count_total` | counter | database, operation | statements run |
//! | `db_slow_query_count_total` | counter | database | statements over the slow-query threshold |
//! | `db_deadlock_count_total` | counter | database | deadlocks and serialization failures |
//! | `db_connection_errors_total` | counter | database | statements or checkouts that failed to reach the server |
//! | `db_query_timeouts_total` | counter | database | statements that hit their time limit |
//! | `db_query_cancellations_total` | counter | database | cancels the watchdog sent |
//! | `prepared_stmt_cache_size` | gauge | database | statement texts in the translation cache |
//! | `prepared_stmt_execution_time_seconds` / `prepared_stmt_executions_total` | histogram / counter | database | statements run as prepared statements (with parameters) |
//! | `bulk_operation_time_seconds` / `bulk_operation_rows_total` / `bulk_operation_executions_total` | histogram / counters | database, operation | bulk loads (`insert`, `upsert`, `update`, `delete`): whole time, rows affected, loads run |
//! | `query_cache_hits_total` / `query_cache_misses_total` | counter | database | cached queries answered from the query cache / run on the server |
//! | `query_cache_evictions_total` | counter | database | query cache entries dropped to stay within its entry and byte bounds |
//! | `db_transactions_active` | gauge | database | open transactions |
//! | `db_transaction_commits_total` / `_rollbacks_total` | counter | database | finished transactions |
//! | `db_transaction_duration_seconds` | histogram | database | `BEGIN` to `COMMIT`/`ROLLBACK` |
//! | `db_timeout_rate` | gauge | database | share of statements and checkouts that timed out over the last minute |
//! | `db_scaling_level` | gauge | database | 0 normal, 1 mild contention, 2 high load, 3 critical (see [`ScalingLevel`](crate::ScalingLevel)) |
//! | `db_retries_total` | counter | database | operations retried after a transient failure (one per retry) |
//! | `db_circuit_state` | gauge | database | 0 closed, 1 half-open, 2 open (see [`CircuitState`]) |
//! | `db_circuit_transitions_total` | counter | database, state | changes of the circuit breaker's state, by the state entered |

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::{Error, ErrorKind, Result};
use crate::status::CircuitState;

/// The operations statements are counted by (the `operation` label).
pub(crate) const OPERATIONS: [&str; 8] = [
    "query", "execute", "batch", "begin", "commit", "rollback", "script", "copy",
];

/// The operations bulk loads are counted by (the `operation` label).
pub(crate) const BULK_OPERATIONS: [&str; 4] = ["insert", "upsert", "update", "delete"];

/// Latency buckets: 0.5 ms to 60 s, for statements and acquisitions.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// [`BUCKETS`] in nanoseconds, for the statement times kept here.
const BUCKETS_NS: [u64; 16] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// The statement times of one `db_query_time_seconds` series, kept with
/// two relaxed atomic additions per statement (a prometheus histogram takes
/// four, one of them a compare-and-swap loop on the sum) and put in the
/// series when collected ([`add_statement_times`]). The sample count is
/// the sum of the buckets, so the two always agree.
pub(crate) struct Times {
    /// Statements per bucket (not cumulative); the last past the largest bound.
    buckets: [AtomicU64; BUCKETS_NS.len() + 1],
    /// Nanoseconds.
    sum: AtomicU64,
}

impl Default for Times {
    fn default() -> Times {
        Times {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

impl Times {
    #[inline]
    fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKETS_NS.partition_point(|b| *b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(ns, Ordering::Relaxed);
    }

    /// (count, sum in seconds, cumulative counts per bound).
    fn read(&self) -> (u64, f64, [u64; BUCKETS_NS.len()]) {
        let mut cumulative = [0u64; BUCKETS_NS.len()];
        let mut n = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            n += b.load(Ordering::Relaxed);
            if let Some(c) = cumulative.get_mut(i) {
                *c = n;
            }
        }
        let sum = self.sum.load(Ordering::Relaxed) as f64 / 1e9;
        (n, sum, cumulative)
    }
}

/// The statement times of one database, per operation.
type OpTimes = [Times; OPERATIONS.len()];

/// What a pool tells the metrics at collection time.
pub(crate) struct PoolSnapshot {
    pub(crate) database: Arc<str>,
    pub(crate) pool_size: u32,
    pub(crate) max_size: u32,
    pub(crate) usage: u32,
    pub(crate) idle: u32,
    pub(crate) waiting: u32,
    pub(crate) statement_cache: usize,
    pub(crate) timeout_rate: f64,
    pub(crate) scaling_level: u8,
    pub(crate) circuit_state: i64,
}

/// A live database whose pool is read when metrics are collected.
pub(crate) trait PoolSource: Send + Sync + 'static {
    /// The pool's state now; `None` once closed.
    fn snapshot(&self) -> Option<PoolSnapshot>;
}

/// Every family, once per process.
struct Families {
    pool_size: IntGaugeVec,
    pool_max_size: IntGaugeVec,
    pool_usage: IntGaugeVec,
    pool_idle: IntGaugeVec,
    pool_waiting: IntGaugeVec,
    stmt_cache_size: IntGaugeVec,
    timeout_rate: prometheus::GaugeVec,
    scaling_level: IntGaugeVec,
    connection_time: HistogramVec,
    pool_timeouts: IntCounterVec,
    connections_created: IntCounterVec,
    connections_closed: IntCounterVec,
    connections_broken: IntCounterVec,
    query_time: HistogramVec,
    query_count: IntCounterVec,
    slow_queries: IntCounterVec,
    deadlocks: IntCounterVec,
    connection_errors: IntCounterVec,
    query_timeouts: IntCounterVec,
    cancellations: IntCounterVec,
    stmt_exec_time: HistogramVec,
    stmt_executions: IntCounterVec,
    bulk_time: HistogramVec,
    bulk_rows: IntCounterVec,
    bulk_executions: IntCounterVec,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    cache_evictions: IntCounterVec,
    tx_active: IntGaugeVec,
    tx_commits: IntCounterVec,
    tx_rollbacks: IntCounterVec,
    tx_duration: HistogramVec,
    retries: IntCounterVec,
    circuit_state: IntGaugeVec,
    circuit_transitions: IntCounterVec,
    replica_fallbacks: IntCounterVec,
    host_connections: IntCounterVec,
    /// Per database: acquisitions of 0 s since the start, added to
    /// `db_connection_time_seconds` when collected (see
    /// [`DbMetrics::acquired_at_once`]).
    at_once: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Per database: the statement times of `db_query_time_seconds` (see
    /// [`Times`]).
    times: Mutex<HashMap<String, Arc<OpTimes>>>,
    /// Live databases, read at collection time.
    sources: Mutex<Vec<Weak<dyn PoolSource>>>,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn gauge(name: &str, help: &str) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), &["database"]).expect("valid metric definition")
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric definition")
}

fn families() -> &'static Families {
    static F: OnceLock<Families> = OnceLock::new();
    F.get_or_init(|| {
        let db = &["database"];
        let db_op = &["database", "operation"];
        Families {
            pool_size: gauge("db_pool_size", "Connections the pool keeps open (POOL_SIZE)."),
            pool_max_size: gauge("db_pool_max_size", "Largest number of connections (POOL_SIZE + MAX_OVERFLOW)."),
            pool_usage: gauge("db_pool_usage", "Connections checked out of the pool now."),
            pool_idle: gauge("db_pool_idle", "Open connections idle in the pool."),
            pool_waiting: gauge("db_pool_waiting", "Callers waiting for a pooled connection."),
            stmt_cache_size: gauge("prepared_stmt_cache_size", "Statement texts kept in the translation cache."),
            timeout_rate: prometheus::GaugeVec::new(
                Opts::new("db_timeout_rate", "Share of statements and checkouts that timed out over the last minute."),
                db,
            )
            .expect("valid metric definition"),
            scaling_level: gauge(
                "db_scaling_level",
                "0 normal, 1 mild contention, 2 high load (scale vertically), 3 critical (scale horizontally).",
            ),
            connection_time: histogram("db_connection_time_seconds", "Time spent acquiring a pooled connection.", db),
            pool_timeouts: counter("db_pool_timeouts_total", "Acquisitions that gave up at the pool timeout.", db),
            connections_created: counter("db_connections_created_total", "Connections opened.", db),
            connections_closed: counter("db_connections_closed_total", "Connections closed.", db),
            connections_broken: counter("db_connections_broken_total", "Connections discarded as broken.", db),
            query_time: histogram("db_query_time_seconds", "Time spent executing statements.", db_op),
            query_count: counter("db_query_count_total", "Statements executed.", db_op),
            slow_queries: counter("db_slow_query_count_total", "Statements slower than the slow-query threshold.", db),
            deadlocks: counter("db_deadlock_count_total", "Deadlocks and serialization failures.", db),
            connection_errors: counter("db_connection_errors_total", "Failures to reach the database.", db),
            query_timeouts: counter("db_query_timeouts_total", "Statements that ran past their time limit.", db),
            cancellations: counter("db_query_cancellations_total", "Statements the watchdog cancelled.", db),
            stmt_exec_time: histogram(
                "prepared_stmt_execution_time_seconds",
                "Time spent executing prepared statements.",
                db,
            ),
            stmt_executions: counter("prepared_stmt_executions_total", "Prepared statement executions.", db),
            bulk_time: histogram("bulk_operation_time_seconds", "Time spent on bulk operations.", db_op),
            bulk_rows: counter("bulk_operation_rows_total", "Rows affected by bulk operations.", db_op),
            bulk_executions: counter("bulk_operation_executions_total", "Bulk operations run.", db_op),
            cache_hits: counter("query_cache_hits_total", "Cached queries answered from the query cache.", db),
            cache_misses: counter("query_cache_misses_total", "Cached queries that ran on the server (not cached, or expired).", db),
            cache_evictions: counter(
                "query_cache_evictions_total",
                "Query cache entries dropped to stay within its entry and byte bounds.",
                db,
            ),
            tx_active: gauge("db_transactions_active", "Transactions open now."),
            tx_commits: counter("db_transaction_commits_total", "Transactions committed.", db),
            tx_rollbacks: counter("db_transaction_rollbacks_total", "Transactions rolled back.", db),
            tx_duration: histogram("db_transaction_duration_seconds", "Transactions from BEGIN to COMMIT or ROLLBACK.", db),
            retries: counter("db_retries_total", "Operations retried after a transient failure.", db),
            circuit_state: gauge("db_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open."),
            circuit_transitions: counter(
                "db_circuit_transitions_total",
                "Changes of the circuit breaker's state, by the state entered.",
                &["database", "state"],
            ),
            replica_fallbacks: counter(
                "db_replica_fallback_total",
                "Reads meant for a read replica that went to the primary (no replica within the lag bound).",
                db,
            ),
            host_connections: counter(
                "db_host_connections_created_total",
                "Connections opened, by host of a host list and its role (primary or replica).",
                &["database", "host", "role"],
            ),
            at_once: Mutex::new(HashMap::new()),
            times: Mutex::new(HashMap::new()),
            sources: Mutex::new(Vec::new()),
        }
    })
}

/// The collector registered in a registry: refreshes the pool gauges from
/// the live databases, then yields every family.
struct DbCollector;

impl Families {
    fn all(&self) -> Vec<&dyn Collector> {
        vec![
            &self.pool_size,
            &self.pool_max_size,
            &self.pool_usage,
            &self.pool_idle,
            &self.pool_waiting,
            &self.stmt_cache_size,
            &self.timeout_rate,
            &self.scaling_level,
            &self.connection_time,
            &self.pool_timeouts,
            &self.connections_created,
            &self.connections_closed,
            &self.connections_broken,
            &self.query_time,
            &self.query_count,
            &self.slow_queries,
            &self.deadlocks,
            &self.connection_errors,
            &self.query_timeouts,
            &self.cancellations,
            &self.stmt_exec_time,
            &self.stmt_executions,
            &self.bulk_time,
            &self.bulk_rows,
            &self.bulk_executions,
            &self.cache_hits,
            &self.cache_misses,
            &self.cache_evictions,
            &self.tx_active,
            &self.tx_commits,
            &self.tx_rollbacks,
            &self.tx_duration,
            &self.retries,
            &self.circuit_state,
            &self.circuit_transitions,
            &self.replica_fallbacks,
            &self.host_connections,
        ]
    }

    fn refresh(&self) {
        let sources: Vec<Arc<dyn PoolSource>> = {
            let mut s = self.sources.lock();
            s.retain(|w| w.strong_count() > 0);
            s.iter().filter_map(Weak::upgrade).collect()
        };
        for src in sources {
            let Some(p) = src.snapshot() else { continue };
            let l = [&*p.database];
            self.pool_size.with_label_values(&l).set(p.pool_size.into());
            self.pool_max_size
                .with_label_values(&l)
                .set(p.max_size.into());
            self.pool_usage.with_label_values(&l).set(p.usage.into());
            self.pool_idle.with_label_values(&l).set(p.idle.into());
            self.pool_waiting
                .with_label_values(&l)
                .set(p.waiting.into());
            self.stmt_cache_size
                .with_label_values(&l)
                .set(i64::try_from(p.statement_cache).unwrap_or(i64::MAX));
            self.timeout_rate.with_label_values(&l).set(p.timeout_rate);
            self.scaling_level
                .with_label_values(&l)
                .set(p.scaling_level.into());
            self.circuit_state
                .with_label_values(&l)
                .set(p.circuit_state);
        }
    }
}

impl Collector for DbCollector {
    fn desc(&self) -> Vec<&Desc> {
        families()
            .all()
            .into_iter()
            .flat_map(|c| c.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let f = families();
        f.refresh();
        let mut out: Vec<MetricFamily> = f.all().into_iter().flat_map(|c| c.collect()).collect();
        add_statement_times(&f.times, &mut out);
        derive_from_query_time(&mut out);
        add_instant_acquisitions(&f.at_once, &mut out);
        out
    }
}

/// Puts the statement times kept in [`Times`] in the series of
/// `db_query_time_seconds` (made, at zero, when each database's metrics were).
fn add_statement_times(times: &Mutex<HashMap<String, Arc<OpTimes>>>, out: &mut [MetricFamily]) {
    let times = times.lock();
    let Some(family) = out.iter_mut().find(|m| m.name() == "db_query_time_seconds") else {
        return;
    };
    for m in family.mut_metric() {
        let label = |name: &str| {
            m.get_label()
                .iter()
                .find(|l| l.name() == name)
                .map(|l| l.value().to_owned())
                .unwrap_or_default()
        };
        let (db, op) = (label("database"), label("operation"));
        let Some(t) = OPERATIONS
            .iter()
            .position(|o| *o == op)
            .and_then(|i| times.get(&db).map(|t| &t[i]))
        else {
            continue;
        };
        let (n, sum, cumulative) = t.read();
        let mut h = m.get_histogram().clone();
        h.set_sample_count(n);
        h.set_sample_sum(sum);
        let buckets = h
            .get_bucket()
            .iter()
            .zip(cumulative)
            .map(|(b, c)| {
                let mut b = b.clone();
                b.set_cumulative_count(c);
                b
            })
            .collect();
        h.set_bucket(buckets);
        m.set_histogram(h);
    }
}

/// Puts the acquisitions of 0 s (a count per database since the start) in
/// `db_connection_time_seconds`: in every bucket and the sample count, as
/// `observe(0.0)` would have.
fn add_instant_acquisitions(
    at_once: &Mutex<HashMap<String, Arc<AtomicU64>>>,
    out: &mut [MetricFamily],
) {
    let counts = at_once.lock();
    let Some(family) = out
        .iter_mut()
        .find(|m| m.name() == "db_connection_time_seconds")
    else {
        return;
    };
    for m in family.mut_metric() {
        let db = m
            .get_label()
            .iter()
            .find(|l| l.name() == "database")
            .map(|l| l.value().to_owned())
            .unwrap_or_default();
        let n = counts.get(&db).map_or(0, |n| n.load(Ordering::Relaxed));
        if n == 0 {
            continue;
        }
        let mut h = m.get_histogram().clone();
        h.set_sample_count(h.get_sample_count() + n);
        let buckets = h
            .get_bucket()
            .iter()
            .map(|b| {
                let mut b = b.clone();
                b.set_cumulative_count(b.cumulative_count() + n);
                b
            })
            .collect();
        h.set_bucket(buckets);
        m.set_histogram(h);
    }
}

/// The families that follow from `db_query_time_seconds`, filled in at
/// collection time so that a statement records one histogram, not two
/// histograms and two counters: `db_query_count_total` is each series'
/// sample count, and the prepared-statement families are the `query` and
/// `execute` series (the statements with parameters, run prepared) merged
/// per database. Exact at every scrape, as if counted one by one.
fn derive_from_query_time(out: &mut [MetricFamily]) {
    use prometheus::proto::{Bucket, Counter, Histogram as ProtoHistogram, LabelPair, Metric};
    let Some(times) = out.iter().find(|m| m.name() == "db_query_time_seconds") else {
        return;
    };
    let label = |m: &Metric, name: &str| -> String {
        m.get_label()
            .iter()
            .find(|l| l.name() == name)
            .map(|l| l.value().to_owned())
            .unwrap_or_default()
    };
    let counter = |labels: Vec<LabelPair>, n: u64| {
        let mut c = Counter::default();
        c.set_value(n as f64);
        let mut m = Metric::from_label(labels);
        m.set_counter(c);
        m
    };
    let counts: Vec<Metric> = times
        .get_metric()
        .iter()
        .map(|m| counter(m.get_label().to_vec(), m.get_histogram().get_sample_count()))
        .collect();
    // Per database: (count, sum, cumulative bucket counts) of query + execute.
    let mut prepared: Vec<(String, u64, f64, Vec<Bucket>)> = Vec::new();
    for m in times.get_metric() {
        if !matches!(label(m, "operation").as_str(), "query" | "execute") {
            continue;
        }
        let db = label(m, "database");
        let h = m.get_histogram();
        let at = match prepared.iter().position(|p| p.0 == db) {
            Some(i) => i,
            None => {
                let zero = h
                    .get_bucket()
                    .iter()
                    .map(|b| {
                        let mut z = Bucket::default();
                        z.set_upper_bound(b.upper_bound());
                        z
                    })
                    .collect();
                prepared.push((db, 0, 0.0, zero));
                prepared.len() - 1
            }
        };
        let p = &mut prepared[at];
        p.1 += h.get_sample_count();
        p.2 += h.get_sample_sum();
        for (sum, b) in p.3.iter_mut().zip(h.get_bucket()) {
            sum.set_cumulative_count(sum.cumulative_count() + b.cumulative_count());
        }
    }
    let db_label = |db: &str| {
        let mut l = LabelPair::default();
        l.set_name("database".to_owned());
        l.set_value(db.to_owned());
        vec![l]
    };
    let prepared_counts: Vec<Metric> = prepared
        .iter()
        .map(|(db, n, _, _)| counter(db_label(db), *n))
        .collect();
    let prepared_times: Vec<Metric> = prepared
        .into_iter()
        .map(|(db, n, sum, buckets)| {
            let mut h = ProtoHistogram::default();
            h.set_sample_count(n);
            h.set_sample_sum(sum);
            h.set_bucket(buckets);
            let mut m = Metric::from_label(db_label(&db));
            m.set_histogram(h);
            m
        })
        .collect();
    for family in out.iter_mut() {
        match family.name() {
            "db_query_count_total" => family.set_metric(counts.clone()),
            "prepared_stmt_executions_total" => family.set_metric(prepared_counts.clone()),
            "prepared_stmt_execution_time_seconds" => family.set_metric(prepared_times.clone()),
            _ => {}
        }
    }
}

/// This crate's own registry, holding every family.
pub fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| {
        let r = Registry::new();
        r.register(Box::new(DbCollector))
            .expect("the families are registered once in a fresh registry");
        r
    })
}

/// Registers every dbmanager family in `registry` (yours), so that your own
/// exposition includes them.
///
/// # Errors
///
/// [`ErrorKind::Config`] when `registry` already holds a family of the same
/// name (for example when called twice).
pub fn register(registry: &Registry) -> Result<()> {
    registry.register(Box::new(DbCollector)).map_err(|e| {
        Error::config("the dbmanager metrics cannot be added to this registry (registered twice?)")
            .with_source(e)
    })
}

/// Every dbmanager metric in Prometheus' text exposition format.
pub fn metrics_text() -> String {
    let mut buf = Vec::new();
    // Encoding our own families into memory cannot fail.
    let _ = TextEncoder::new().encode(&registry().gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Pushes every dbmanager metric to a Prometheus Pushgateway, under `job`
/// (replacing what that job pushed before), as a batch job does when it ends.
/// `gateway_url` is the gateway's base URL, `http://host:9091`; HTTPS is not
/// supported by this client. Credentials in it (`http://user:pw@host:9091`)
/// are sent as HTTP basic authentication and never appear in an error (its
/// message, `Debug` or any `source()`).
///
/// # Errors
///
/// [`ErrorKind::Config`] for a malformed URL or job name;
/// [`ErrorKind::Connect`] when the gateway cannot be reached or refuses the
/// metrics.
pub fn push_metrics(gateway_url: &str, job: &str) -> Result<()> {
    let base = url::Url::parse(gateway_url.trim()).map_err(|_| {
        Error::config("the Pushgateway URL is not a valid URL; expected http://host:9091")
    })?;
    if base.scheme() != "http" {
        return Err(Error::config(
            "the Pushgateway URL must use http:// (this client has no TLS); put a TLS proxy in front if needed",
        ));
    }
    if job.is_empty() || job.contains('/') {
        return Err(Error::config(
            "the Pushgateway job name must be non-empty and contain no `/`",
        ));
    }
    let mut target = base.clone();
    target
        .path_segments_mut()
        .map_err(|_| Error::config("the Pushgateway URL cannot take a path"))?
        .pop_if_empty()
        .extend(["metrics", "job", job]);
    let where_ = format!("the Pushgateway at {}", base.host_str().unwrap_or("?"));
    let response = ureq::put(target.as_str())
        .timeout(Duration::from_secs(10))
        .set("Content-Type", "text/plain; version=0.0.4")
        .send_string(&metrics_text());
    match response {
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(code, _)) => Err(Error::new(
            ErrorKind::Connect,
            format!("{where_} refused the metrics with HTTP status {code}"),
        )),
        Err(e) => Err(Error::new(
            ErrorKind::Connect,
            format!("{where_} could not be reached; check the URL and that it runs"),
        )
        .with_source(Redacted::chain(&e, &[&base, &target]))),
    }
}

/// One layer of an error's chain as text, with the credentials of the URLs
/// it may quote taken out (`http://user:***@host:9091/…`): the HTTP client's
/// errors quote the whole request URL, in `Display` and `Debug`.
#[derive(Debug)]
struct Redacted {
    text: String,
    source: Option<Box<Redacted>>,
}

impl Redacted {
    /// `error` and each of its sources, every layer's text redacted of the
    /// credentials in `urls`.
    fn chain(error: &(dyn std::error::Error + 'static), urls: &[&url::Url]) -> Redacted {
        let mut layers = vec![error.to_string()];
        let mut cur = error.source();
        while let Some(e) = cur {
            layers.push(e.to_string());
            cur = e.source();
        }
        let mut swaps: Vec<(String, String)> = Vec::new();
        for url in urls {
            if url.password().is_none() && url.username().is_empty() {
                continue;
            }
            let mut safe = (*url).clone();
            let _ = safe.set_password(Some("***"));
            swaps.push((url.as_str().to_owned(), safe.as_str().to_owned()));
            if let Some(pw) = url.password().filter(|p| !p.is_empty()) {
                swaps.push((pw.to_owned(), "***".to_owned()));
                let decoded = percent_decoded(pw);
                if !decoded.is_empty() && decoded != pw {
                    swaps.push((decoded, "***".to_owned()));
                }
            }
        }
        layers
            .into_iter()
            .rev()
            .fold(None, |source, mut text| {
                for (secret, safe) in &swaps {
                    text = text.replace(secret.as_str(), safe);
                }
                Some(Redacted {
                    text,
                    source: source.map(Box::new),
                })
            })
            .expect("at least the error itself")
    }
}

impl std::fmt::Display for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Redacted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// `%XX` sequences decoded (as in a URL's user info; invalid ones kept).
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A running scrape endpoint; stops when dropped.
#[cfg(feature = "metrics-server")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics-server")))]
#[must_use = "the endpoint stops when the MetricsServer is dropped"]
pub struct MetricsServer {
    addr: std::net::SocketAddr,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(feature = "metrics-server")]
impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "metrics-server")]
impl MetricsServer {
    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

#[cfg(feature = "metrics-server")]
impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves [`metrics_text`] over HTTP at every path of `addr`
/// (`127.0.0.1:9187`, or port 0 for any free port) on a thread of its own,
/// for Prometheus to scrape.
///
/// # Errors
///
/// [`ErrorKind::Config`] when `addr` cannot be listened on.
#[cfg(feature = "metrics-server")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics-server")))]
pub fn serve(addr: impl std::net::ToSocketAddrs) -> Result<MetricsServer> {
    let server = tiny_http::Server::http(addr).map_err(|e| {
        Error::config("cannot listen for metrics scrapes on that address").with_source(e)
    })?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| Error::config("the metrics endpoint must listen on an IP address"))?;
    let server = Arc::new(server);
    let serving = Arc::clone(&server);
    let thread = std::thread::Builder::new()
        .name("dbmanager-metrics".into())
        .spawn(move || {
            for request in serving.incoming_requests() {
                let header = tiny_http::Header::from_bytes(
                    &b"Content-Type"[..],
                    &b"text/plain; version=0.0.4"[..],
                )
                .expect("a valid header");
                let _ = request
                    .respond(tiny_http::Response::from_string(metrics_text()).with_header(header));
            }
        })
        .map_err(|e| {
            Error::new(ErrorKind::Other, "cannot start the metrics thread").with_source(e)
        })?;
    Ok(MetricsServer {
        addr,
        server,
        thread: Some(thread),
    })
}

/// One database's metric handles, resolved once (no label lookup per
/// statement).
pub(crate) struct DbMetrics {
    database: Box<str>,
    on: bool,
    /// Shared by the managers of one database name, as the series are.
    query_time: Arc<OpTimes>,
    slow_queries: IntCounter,
    deadlocks: IntCounter,
    connection_errors: IntCounter,
    query_timeouts: IntCounter,
    cancellations: IntCounter,
    connection_time: Histogram,
    /// Acquisitions of 0 s since the start, added to `connection_time` when
    /// collected (shared by the managers of one database name, as the
    /// labelled series is).
    at_once: Arc<AtomicU64>,
    pool_timeouts: IntCounter,
    connections_created: IntCounter,
    connections_closed: IntCounter,
    connections_broken: IntCounter,
    tx_active: IntGauge,
    tx_commits: IntCounter,
    tx_rollbacks: IntCounter,
    tx_duration: Histogram,
    retries: IntCounter,
    circuit_state: IntGauge,
    circuit_transitions: [IntCounter; 3],
    bulk_time: [Histogram; 4],
    bulk_rows: [IntCounter; 4],
    bulk_executions: [IntCounter; 4],
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    cache_evictions: IntCounter,
}

impl DbMetrics {
    /// Handles for `database`; with `on == false` nothing is recorded.
    pub(crate) fn new(database: &str, on: bool) -> DbMetrics {
        let f = families();
        let l = [database];
        let op = |v: &HistogramVec, i: usize| v.with_label_values(&[database, OPERATIONS[i]]);
        let opc = |v: &IntCounterVec, i: usize| v.with_label_values(&[database, OPERATIONS[i]]);
        // Exposed at zero, like the other families.
        f.replica_fallbacks.with_label_values(&l);
        let m = DbMetrics {
            database: database.into(),
            on,
            query_time: Arc::clone(f.times.lock().entry(database.to_owned()).or_default()),
            slow_queries: f.slow_queries.with_label_values(&l),
            deadlocks: f.deadlocks.with_label_values(&l),
            connection_errors: f.connection_errors.with_label_values(&l),
            query_timeouts: f.query_timeouts.with_label_values(&l),
            cancellations: f.cancellations.with_label_values(&l),
            connection_time: f.connection_time.with_label_values(&l),
            at_once: Arc::clone(f.at_once.lock().entry(database.to_owned()).or_default()),
            pool_timeouts: f.pool_timeouts.with_label_values(&l),
            connections_created: f.connections_created.with_label_values(&l),
            connections_closed: f.connections_closed.with_label_values(&l),
            connections_broken: f.connections_broken.with_label_values(&l),
            tx_active: f.tx_active.with_label_values(&l),
            tx_commits: f.tx_commits.with_label_values(&l),
            tx_rollbacks: f.tx_rollbacks.with_label_values(&l),
            tx_duration: f.tx_duration.with_label_values(&l),
            retries: f.retries.with_label_values(&l),
            circuit_state: f.circuit_state.with_label_values(&l),
            circuit_transitions: ["closed", "half_open", "open"]
                .map(|state| f.circuit_transitions.with_label_values(&[database, state])),
            bulk_time: BULK_OPERATIONS.map(|o| f.bulk_time.with_label_values(&[database, o])),
            bulk_rows: BULK_OPERATIONS.map(|o| f.bulk_rows.with_label_values(&[database, o])),
            bulk_executions: BULK_OPERATIONS
                .map(|o| f.bulk_executions.with_label_values(&[database, o])),
            cache_hits: f.cache_hits.with_label_values(&l),
            cache_misses: f.cache_misses.with_label_values(&l),
            cache_evictions: f.cache_evictions.with_label_values(&l),
        };
        // Derived at collection time from the query time histogram; made
        // here so that the families list each database (at zero) anyway.
        for i in 0..OPERATIONS.len() {
            op(&f.query_time, i);
            opc(&f.query_count, i);
        }
        f.stmt_exec_time.with_label_values(&l);
        f.stmt_executions.with_label_values(&l);
        m
    }

    /// Adds a live database whose pool gauges are read at collection time.
    pub(crate) fn watch(source: Weak<dyn PoolSource>) {
        families().sources.lock().push(source);
    }

    /// A statement ended: `op` indexes [`OPERATIONS`]. One histogram
    /// records it ([`Times`]); the statement counts and the
    /// prepared-statement families are derived from it when collected
    /// ([`derive_from_query_time`]).
    #[inline]
    pub(crate) fn statement(&self, op: usize, elapsed: Duration) {
        if self.on {
            if let Some(t) = self.query_time.get(op) {
                t.observe(elapsed);
            }
        }
    }

    /// The statement failed with this kind of error.
    #[cold]
    pub(crate) fn failure(&self, kind: ErrorKind) {
        if !self.on {
            return;
        }
        match kind {
            ErrorKind::Conflict => self.deadlocks.inc(),
            ErrorKind::Connect | ErrorKind::ConnectTimeout | ErrorKind::Auth => {
                self.connection_errors.inc()
            }
            ErrorKind::QueryTimeout => self.query_timeouts.inc(),
            _ => {}
        }
    }

    /// A bulk load ended: `op` indexes [`BULK_OPERATIONS`].
    pub(crate) fn bulk(&self, op: usize, elapsed: Duration, rows: u64) {
        if !self.on {
            return;
        }
        if let (Some(t), Some(r), Some(n)) = (
            self.bulk_time.get(op),
            self.bulk_rows.get(op),
            self.bulk_executions.get(op),
        ) {
            t.observe(elapsed.as_secs_f64());
            r.inc_by(rows);
            n.inc();
        }
    }

    /// An operation is about to be retried.
    pub(crate) fn retried(&self) {
        if self.on {
            self.retries.inc();
        }
    }

    /// The circuit breaker entered `state`.
    pub(crate) fn circuit(&self, state: CircuitState) {
        if self.on {
            let g = state.as_gauge();
            self.circuit_state.set(g);
            if let Some(c) = usize::try_from(g)
                .ok()
                .and_then(|i| self.circuit_transitions.get(i))
            {
                c.inc();
            }
        }
    }

    pub(crate) fn slow(&self) {
        if self.on {
            self.slow_queries.inc();
        }
    }

    pub(crate) fn cancelled(&self) {
        if self.on {
            self.cancellations.inc();
        }
    }

    /// A connection was taken at once (idle in the pool, no ping): an
    /// acquisition of 0 s, counted with one atomic add and put in the
    /// histogram when collected ([`add_instant_acquisitions`]).
    #[inline]
    pub(crate) fn acquired_at_once(&self) {
        if self.on {
            self.at_once.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn acquired(&self, elapsed: Duration) {
        if self.on {
            self.connection_time.observe(elapsed.as_secs_f64());
        }
    }

    /// A read meant for a replica went to the primary.
    pub(crate) fn replica_fallback(&self) {
        if self.on {
            families()
                .replica_fallbacks
                .with_label_values(&[&self.database])
                .inc();
        }
    }

    /// A connection was opened to `host` (of a host list), a server in
    /// `role` (`primary` or `replica`).
    pub(crate) fn host_connected(&self, host: &str, role: &str) {
        if self.on {
            families()
                .host_connections
                .with_label_values(&[&self.database, host, role])
                .inc();
        }
    }

    pub(crate) fn pool_timeout(&self) {
        if self.on {
            self.pool_timeouts.inc();
        }
    }

    pub(crate) fn connection_created(&self) {
        if self.on {
            self.connections_created.inc();
        }
    }

    pub(crate) fn connection_closed(&self, broken: bool) {
        if self.on {
            self.connections_closed.inc();
            if broken {
                self.connections_broken.inc();
            }
        }
    }

    pub(crate) fn transaction_started(&self) {
        if self.on {
            self.tx_active.inc();
        }
    }

    /// A cached query was answered from the query cache (`hit`) or ran on
    /// the server.
    pub(crate) fn cache_lookup(&self, hit: bool) {
        if self.on {
            if hit {
                self.cache_hits.inc();
            } else {
                self.cache_misses.inc();
            }
        }
    }

    /// `n` query cache entries were dropped to stay within its bounds.
    pub(crate) fn cache_evicted(&self, n: u64) {
        if self.on && n > 0 {
            self.cache_evictions.inc_by(n);
        }
    }

    /// A transaction ended (committed or not) after `lasted`.
    pub(crate) fn transaction_ended(&self, committed: bool, lasted: Duration) {
        if !self.on {
            return;
        }
        self.tx_active.dec();
        if committed {
            self.tx_commits.inc();
        } else {
            self.tx_rollbacks.inc();
        }
        self.tx_duration.observe(lasted.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_register_once_per_registry_and_encode() -> Result<()> {
        let m = DbMetrics::new("unit_db", true);
        m.statement(0, Duration::from_millis(3));
        let text = metrics_text();
        assert!(
            text.contains("db_query_count_total{database=\"unit_db\",operation=\"query\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE db_query_time_seconds histogram"));
        let mine = Registry::new();
        register(&mine)?;
        assert_eq!(
            register(&mine).expect_err("twice").kind(),
            ErrorKind::Config
        );
        assert!(mine
            .gather()
            .iter()
            .any(|f| f.name() == "db_query_count_total"));
        Ok(())
    }

    #[test]
    fn derived_families_count_as_if_recorded_one_by_one() {
        let m = DbMetrics::new("unit_db_derived", true);
        m.statement(0, Duration::from_millis(3));
        m.statement(1, Duration::from_millis(2));
        m.statement(2, Duration::from_millis(1));
        for _ in 0..3 {
            m.acquired_at_once();
        }
        m.acquired(Duration::from_millis(20));
        let text = metrics_text();
        for line in [
            "db_query_count_total{database=\"unit_db_derived\",operation=\"execute\"} 1",
            "db_query_count_total{database=\"unit_db_derived\",operation=\"batch\"} 1",
            "prepared_stmt_executions_total{database=\"unit_db_derived\"} 2",
            "prepared_stmt_execution_time_seconds_count{database=\"unit_db_derived\"} 2",
            "prepared_stmt_execution_time_seconds_bucket{database=\"unit_db_derived\",le=\"0.0025\"} 1",
            "db_connection_time_seconds_count{database=\"unit_db_derived\"} 4",
            "db_connection_time_seconds_bucket{database=\"unit_db_derived\",le=\"0.0005\"} 3",
            "db_connection_time_seconds_bucket{database=\"unit_db_derived\",le=\"+Inf\"} 4",
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn statement_times_fall_in_the_buckets_a_histogram_would_use() {
        for (ns, secs) in BUCKETS_NS.iter().zip(BUCKETS) {
            assert_eq!(*ns, (secs * 1e9).round() as u64);
        }
        let m = DbMetrics::new("unit_db_times", true);
        // On a bound (counted in it, as `le` says), just past it, past all.
        m.statement(0, Duration::from_millis(1));
        m.statement(0, Duration::from_nanos(1_000_001));
        m.statement(0, Duration::from_secs(61));
        // A second manager of the same database adds to the same series.
        DbMetrics::new("unit_db_times", true).statement(0, Duration::from_millis(1));
        let text = metrics_text();
        for line in [
            "db_query_time_seconds_bucket{database=\"unit_db_times\",operation=\"query\",le=\"0.0005\"} 0",
            "db_query_time_seconds_bucket{database=\"unit_db_times\",operation=\"query\",le=\"0.001\"} 2",
            "db_query_time_seconds_bucket{database=\"unit_db_times\",operation=\"query\",le=\"0.0025\"} 3",
            "db_query_time_seconds_bucket{database=\"unit_db_times\",operation=\"query\",le=\"60\"} 3",
            "db_query_time_seconds_bucket{database=\"unit_db_times\",operation=\"query\",le=\"+Inf\"} 4",
            "db_query_time_seconds_sum{database=\"unit_db_times\",operation=\"query\"} 61.003000001",
            "db_query_time_seconds_count{database=\"unit_db_times\",operation=\"query\"} 4",
            "db_query_time_seconds_count{database=\"unit_db_times\",operation=\"execute\"} 0",
            "db_query_count_total{database=\"unit_db_times\",operation=\"query\"} 4",
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn metrics_off_records_nothing() {
        let m = DbMetrics::new("unit_db_off", false);
        m.statement(1, Duration::from_millis(3));
        m.failure(ErrorKind::QueryTimeout);
        let text = metrics_text();
        assert!(
            !text.contains("unit_db_off\",operation=\"execute\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decoded("a%21b%2"), "a!b%2");
        assert_eq!(percent_decoded("%+1x%zz"), "%+1x%zz");
    }

    #[test]
    fn push_rejects_bad_targets_before_any_io() {
        for (url, job) in [
            ("not a url", "j"),
            ("https://gw:9091", "j"),
            ("http://gw:9091", ""),
            ("http://gw:9091", "a/b"),
        ] {
            assert_eq!(
                push_metrics(url, job).expect_err(url).kind(),
                ErrorKind::Config
            );
        }
    }
}
