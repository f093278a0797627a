//! [`DatabaseConfigBuilder`]: settings in code, validated by `build()`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::env::default_pool_size;
use super::url::{host_list, kind_of_url, redact_url, url_asks_pgbouncer, TargetSessionAttrs};
use super::DatabaseConfig;
use crate::error::{Error, Result};
use crate::resilience::{BreakerSettings, RetryPolicy};
use crate::status::BackendKind;

/// The most connections a pool may open: `pool_size + max_overflow`.
const MAX_CONNECTIONS: u32 = 10_000;

/// How long a migration statement waits for another session's lock by default.
const DEFAULT_MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(5);

/// The longest query timeout: 24 days. PostgreSQL's `statement_timeout`,
/// SQL Server's `LOCK_TIMEOUT` and SQLite's busy timeout are milliseconds in
/// a signed 32-bit integer (at most 24.8 days; SQLite's panicked past it).
pub(crate) const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(24 * 86_400);
const QUERY_TIMEOUT_TOO_LONG: &str = "is too long: a query timeout can be at most 24 days \
     (PostgreSQL, SQL Server and SQLite count it in 32-bit milliseconds)";

/// The longest of every other duration: 365 days, so that deadlines computed
/// from them (`now + timeout`) never overflow the clock.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);
/// The history table's default name (Flyway 4's, and the seeds').
pub(crate) const DEFAULT_HISTORY_TABLE: &str = "schema_version";
const DURATION_TOO_LONG: &str = "is too long: it can be at most 365 days";

pub(super) const EMPTY_NAME: &str =
    "the database name is empty; give the logical name of the database (e.g. \"rpa_db\")";

/// The variable a setting was read from, for `build()`'s messages.
#[derive(Clone)]
pub(super) struct Origin {
    /// The builder method the value went to (`DatabaseConfigBuilder::pool_size`).
    setter: &'static str,
    /// The variable (`DEVELOPMENT_GLOBAL_RPA_DB_POOL_SIZE`).
    var: String,
    /// Its text, trimmed; `None` for the connection string, never shown.
    text: Option<String>,
}

/// Builds a [`DatabaseConfig`] in code. Every setting has a default; only the
/// connection string is required. Setters take and return the builder;
/// [`build`](Self::build) checks the whole configuration at once.
///
/// ```
/// use std::time::Duration;
/// use dbmanager::DatabaseConfig;
///
/// # fn main() -> dbmanager::Result<()> {
/// let config = DatabaseConfig::builder("reports")
///     .url("sqlite::memory:")
///     .pool_size(4)
///     .query_timeout(Some(Duration::from_secs(60)))
///     .build()?;
/// assert_eq!(config.max_size(), 4 + 10);
///
/// let refused = DatabaseConfig::builder("reports")
///     .url("sqlite::memory:")
///     .max_lifetime(Some(Duration::ZERO))
///     .build();
/// assert!(refused.unwrap_err().to_string().contains("max_lifetime"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct DatabaseConfigBuilder {
    name: String,
    url: Option<String>,
    kind: Option<BackendKind>,
    pool_size: Option<u32>,
    max_overflow: u32,
    query_timeout: Option<Duration>,
    acquire_timeout: Duration,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_lifetime: Option<Duration>,
    validate_after_idle: Duration,
    leak_threshold: Option<Duration>,
    slow_query_threshold: Option<Duration>,
    health_timeout: Duration,
    degraded_after: Duration,
    metrics: bool,
    query_cache_entries: u32,
    query_cache_bytes: u64,
    read_only: bool,
    migrations_dir: Option<PathBuf>,
    history_table: String,
    auto_migrate: bool,
    migration_placeholders: Vec<(String, String)>,
    migration_lock_wait: Option<Duration>,
    migrations_strict: bool,
    retry: RetryPolicy,
    breaker: BreakerSettings,
    pgbouncer: bool,
    replica_url: Option<String>,
    max_replica_lag: Duration,
    /// Set when read from the environment: the variables' common stem
    /// (`DEVELOPMENT_GLOBAL_RPA_DB_`), where they were looked up, and which
    /// variable set which setting; `build()` names them in its messages.
    var_stem: Option<String>,
    looked_in: Option<String>,
    origins: Vec<Origin>,
}

impl fmt::Debug for DatabaseConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfigBuilder")
            .field("name", &self.name)
            .field("url", &self.url.as_deref().map(redact_url))
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl DatabaseConfigBuilder {
    pub(super) fn new(name: String) -> Self {
        DatabaseConfigBuilder {
            name,
            url: None,
            kind: None,
            pool_size: None,
            max_overflow: 10,
            query_timeout: Some(Duration::from_secs(30)),
            acquire_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Some(Duration::from_secs(1800)),
            validate_after_idle: Duration::from_secs(30),
            leak_threshold: Some(Duration::from_secs(300)),
            slow_query_threshold: Some(Duration::from_secs(2)),
            health_timeout: Duration::from_secs(5),
            degraded_after: Duration::from_secs(1),
            metrics: true,
            query_cache_entries: 1000,
            query_cache_bytes: 64 << 20,
            read_only: false,
            migrations_dir: None,
            history_table: crate::config::DEFAULT_HISTORY_TABLE.to_owned(),
            auto_migrate: false,
            migration_placeholders: Vec::new(),
            migration_lock_wait: Some(DEFAULT_MIGRATION_LOCK_WAIT),
            migrations_strict: false,
            retry: RetryPolicy::default(),
            breaker: BreakerSettings {
                failures: 5,
                window: Duration::from_secs(60),
                recovery: Duration::from_millis(500),
            },
            pgbouncer: false,
            replica_url: None,
            max_replica_lag: Duration::from_secs(5),
            var_stem: None,
            looked_in: None,
            origins: Vec::new(),
        }
    }

    /// Marks the settings as read from the environment: variables named
    /// `{stem}…`, looked up in `looked_in`.
    pub(super) fn read_from(mut self, stem: String, looked_in: &str) -> Self {
        self.var_stem = Some(stem);
        self.looked_in = Some(looked_in.to_owned());
        self
    }

    /// Records that `var`, holding `text`, set what `setter` sets.
    pub(super) fn note_origin(&mut self, setter: &'static str, var: String, text: Option<String>) {
        self.origins.push(Origin { setter, var, text });
    }

    /// Changes the retry policy.
    pub(super) fn map_retry(mut self, change: impl FnOnce(RetryPolicy) -> RetryPolicy) -> Self {
        self.retry = change(self.retry);
        self
    }

    /// The variable that set what `setter` sets, if one did.
    fn origin(&self, setter: &str) -> Option<&Origin> {
        self.origins.iter().rev().find(|o| o.setter == setter)
    }

    /// The connection string (required; `{PREFIX}{NAME}_CONNECTION_STRING`).
    /// See the README for the accepted forms. [`build`](Self::build) refuses
    /// one that names no known backend or no host.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The backend, when it should not be inferred from the URL
    /// (`{PREFIX}{NAME}_TYPE`). Default: inferred; when set, it must agree
    /// with the URL.
    pub fn kind(mut self, kind: BackendKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Connections kept open in the pool (`{PREFIX}{NAME}_POOL_SIZE`, else
    /// `{PREFIX}CONNECTION_POOL_SIZE`). Default: twice the CPU count plus one, between
    /// 2 and 32 (5 on 2 cores; the rule of thumb of PostgreSQL's wiki). At
    /// least 1; `pool_size + max_overflow` at most 10 000.
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = Some(n);
        self
    }

    /// Extra connections opened under load, each closed when returned with
    /// nobody waiting (`{PREFIX}{NAME}_MAX_OVERFLOW`). Default 10 (SQLAlchemy's
    /// default, which the Python system used).
    pub fn max_overflow(mut self, n: u32) -> Self {
        self.max_overflow = n;
        self
    }

    /// Default limit on each statement; `None` (or zero) for no limit
    /// (`{PREFIX}{NAME}_TIMEOUT`, else `{PREFIX}DATABASE_TIMEOUT`, in
    /// seconds, `0` for none). Default 30 s, the Python system's `DATABASE_TIMEOUT`.
    ///
    /// At most 24 days: PostgreSQL's `statement_timeout`, SQL Server's
    /// `LOCK_TIMEOUT` and SQLite's busy timeout count milliseconds in 32 bits.
    pub fn query_timeout(mut self, t: Option<Duration>) -> Self {
        self.query_timeout = t;
        self
    }

    /// How long a caller waits for a pooled connection before
    /// [`ErrorKind::PoolTimeout`](crate::ErrorKind::PoolTimeout)
    /// (`{PREFIX}{NAME}_POOL_TIMEOUT`). Default 30 s (SQLAlchemy's
    /// `pool_timeout`). Above zero, at most 365 days.
    pub fn acquire_timeout(mut self, t: Duration) -> Self {
        self.acquire_timeout = t;
        self
    }

    /// How long establishing one connection may take
    /// (`{PREFIX}{NAME}_CONNECT_TIMEOUT`). Default 10 s. Above zero, at most
    /// 365 days.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// How long any connection may sit idle in the pool before it is closed
    /// (connections beyond `pool_size` are closed as soon as they are
    /// returned with nobody waiting; `{PREFIX}{NAME}_IDLE_TIMEOUT`); zero
    /// keeps idle connections open. Default 10 min. At most 365 days.
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// Age after which a connection is replaced; `None` for never
    /// (`{PREFIX}{NAME}_MAX_LIFETIME`, `0` for never). Default 30 min
    /// (the Python system's SQLAlchemy `pool_recycle`), well under typical server
    /// and firewall idle limits. `Some` must be above zero, at most 365 days.
    pub fn max_lifetime(mut self, t: Option<Duration>) -> Self {
        self.max_lifetime = t;
        self
    }

    /// A connection idle for longer than this is checked with a cheap ping
    /// before it is handed out; fresher ones are handed out without a round
    /// trip (as HikariCP does); zero checks every one. Default 30 s. At
    /// most 365 days.
    pub fn validate_after_idle(mut self, t: Duration) -> Self {
        self.validate_after_idle = t;
        self
    }

    /// A connection held out of the pool for longer than this is reported
    /// once as a suspected leak (a `tracing` warning naming where it was
    /// checked out, and a count in [`PoolStatus`](crate::PoolStatus)); `None`
    /// (or zero) turns the report off (`{PREFIX}{NAME}_LEAK_THRESHOLD`, `0`
    /// for off). Default 5 min: longer than any statement under the default
    /// 30 s timeout, short enough to be noticed in a batch job. At most 365
    /// days.
    pub fn leak_threshold(mut self, t: Option<Duration>) -> Self {
        self.leak_threshold = t;
        self
    }

    /// Statements slower than this are logged once at `warn` (normalised
    /// SQL, never parameter values) and counted in `db_slow_query_count_total`;
    /// `None` (or zero) turns that off (`{PREFIX}{NAME}_SLOW_QUERY_THRESHOLD`,
    /// `0` for off). Default 2 s: well above an OLTP statement, well under
    /// the 30 s query timeout. At most 365 days.
    pub fn slow_query_threshold(mut self, t: Option<Duration>) -> Self {
        self.slow_query_threshold = t;
        self
    }

    /// The time limit of a whole health check (waiting for a connection and
    /// `SELECT 1`); past it the database is reported `unhealthy`
    /// (`{PREFIX}{NAME}_HEALTH_TIMEOUT`). Default 5 s: a health check must
    /// answer well inside a typical probe's timeout. Above zero, at most 365
    /// days.
    pub fn health_timeout(mut self, t: Duration) -> Self {
        self.health_timeout = t;
        self
    }

    /// A health check that answers but takes longer than this reports
    /// `degraded` (`{PREFIX}{NAME}_DEGRADED_THRESHOLD`). Default 1 s. At most
    /// 365 days.
    pub fn degraded_after(mut self, t: Duration) -> Self {
        self.degraded_after = t;
        self
    }

    /// The most results the query cache keeps for this database
    /// (`{PREFIX}{NAME}_QUERY_CACHE_ENTRIES`); past it the least recently
    /// used go. Default 1000 (seed 004's size). 0 turns caching off: a query
    /// asking for the cache then runs on the server every time.
    pub fn query_cache_entries(mut self, n: u32) -> Self {
        self.query_cache_entries = n;
        self
    }

    /// The most bytes of rows (estimated from the values' sizes) the query
    /// cache keeps for this database (`{PREFIX}{NAME}_QUERY_CACHE_BYTES`);
    /// past it the least recently used go, and a single result larger than
    /// this is not cached. Default 64 MiB: a batch job's working set of
    /// lookups, not a copy of the database.
    pub fn query_cache_bytes(mut self, n: u64) -> Self {
        self.query_cache_bytes = n;
        self
    }

    /// Record Prometheus metrics for this database (`{PREFIX}{NAME}_METRICS`).
    /// Default `true` (the cost is a few atomic operations per statement).
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// Refuse writes and migrations (`{PREFIX}{NAME}_READ_ONLY`). Default
    /// `false`.
    pub fn read_only(mut self, on: bool) -> Self {
        self.read_only = on;
        self
    }

    /// The folder migrations are read from (`{PREFIX}{NAME}_MIGRATIONS_DIR`).
    /// Default `migrations/{database name}`, relative to the working
    /// directory, as the Python system laid them out.
    pub fn migrations_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.migrations_dir = Some(dir.into());
        self
    }

    /// The migration history table (`{PREFIX}{NAME}_MIGRATIONS_TABLE`):
    /// a plain identifier, optionally `schema.table`. Default
    /// `schema_version`, the Python system's table (and Flyway's old default).
    pub fn history_table(mut self, table: impl Into<String>) -> Self {
        self.history_table = table.into();
        self
    }

    /// Run migrations when [`DatabaseManager::new`](crate::DatabaseManager::new)
    /// creates the manager (`{PREFIX}{NAME}_AUTO_MIGRATE`). Default `false`:
    /// a schema change should be a decision, not a side effect of starting.
    pub fn auto_migrate(mut self, on: bool) -> Self {
        self.auto_migrate = on;
        self
    }

    /// A value for the `${name}` placeholder of migration scripts
    /// (`{PREFIX}{NAME}_MIGRATION_PLACEHOLDERS`, `name=value` pairs separated
    /// by commas). Default none; the built-in `${flyway:…}` ones always exist.
    pub fn migration_placeholder(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        let name = name.into();
        self.migration_placeholders.retain(|(n, _)| *n != name);
        self.migration_placeholders.push((name, value.into()));
        self
    }

    /// How long a migration statement waits for a lock held by another
    /// session before it gives up (`{PREFIX}{NAME}_MIGRATION_LOCK_WAIT`,
    /// seconds, `0` for no bound): PostgreSQL `lock_timeout`, MySQL and
    /// MariaDB `lock_wait_timeout` and `innodb_lock_wait_timeout`, SQL Server
    /// `LOCK_TIMEOUT`. Default 5 s: DDL queued behind a long transaction
    /// blocks every reader queued behind it, so waiting long takes a site
    /// down; a few seconds ride out ordinary short transactions.
    pub fn migration_lock_wait(mut self, wait: Option<Duration>) -> Self {
        self.migration_lock_wait = wait.filter(|w| !w.is_zero());
        self
    }

    /// Refuse a `.sql` file in the migrations folder that is neither a
    /// migration nor a callback (`{PREFIX}{NAME}_MIGRATIONS_STRICT`). Default
    /// `false`: such a file is skipped with a warning, as Flyway does.
    pub fn migrations_strict(mut self, on: bool) -> Self {
        self.migrations_strict = on;
        self
    }

    /// How transient failures are retried (see [`RetryPolicy`]; per call,
    /// [`DatabaseManager::with_retry`](crate::DatabaseManager::with_retry)).
    /// Default [`RetryPolicy::default`]: 3 attempts, 100 ms base delay, 10 s
    /// cap, 30 s budget; a statement that may have reached the server is not
    /// run again unless `retry_writes` is set (the Python system's
    /// `retry_with_backoff` timings). Variables `{PREFIX}{NAME}_RETRY_ATTEMPTS`,
    /// `…_RETRY_BASE_DELAY`, `…_RETRY_MAX_DELAY`, `…_RETRY_BUDGET` (seconds),
    /// `…_RETRY_WRITES`. Its delays and budget are at most 365 days each.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Connection-level failures (failing to open a connection, connect and
    /// pool timeouts, statements whose connection had to be cut because the
    /// server stopped answering) within
    /// [`circuit_window`](Self::circuit_window) that open the circuit
    /// breaker, after which calls fail at once with
    /// [`CircuitOpen`](crate::ErrorKind::CircuitOpen) instead of each waiting
    /// for its own timeout; 0 turns the breaker off. SQL errors never count.
    /// `{PREFIX}{NAME}_CIRCUIT_FAILURES`. Default 5 (the Python system's
    /// `failure_threshold`). Failures that a retry absorbed do not count.
    pub fn circuit_failures(mut self, n: u32) -> Self {
        self.breaker.failures = n;
        self
    }

    /// The window in which [`circuit_failures`](Self::circuit_failures) are
    /// counted (a call that reaches the server resets the count;
    /// `{PREFIX}{NAME}_CIRCUIT_WINDOW`). Default 60 s (the Python system's
    /// `window_size`). Above zero while the breaker is on, at most 365 days.
    pub fn circuit_window(mut self, t: Duration) -> Self {
        self.breaker.window = t;
        self
    }

    /// The longest wait between two probes of an open breaker
    /// (`{PREFIX}{NAME}_CIRCUIT_RECOVERY`, seconds, fractions allowed).
    /// While the breaker is open, calls fail at once and a background prober
    /// checks the database with the health-check query (`SELECT 1`): 50 ms
    /// after it opened, then after waits that double up to this. Any answer,
    /// to the prober, a health check or a statement, closes the breaker.
    /// Default 500 ms: a restart costs little more than the time the server
    /// is down, and a server that stays down costs two connection attempts a
    /// second. Above zero while the breaker is on, at most 365 days.
    pub fn circuit_recovery(mut self, t: Duration) -> Self {
        self.breaker.recovery = t;
        self
    }

    /// The read replicas' connection string: one URL or a libpq host list
    /// (`{PREFIX}{NAME}_REPLICA_CONNECTION_STRING`). Reads of
    /// [`DatabaseManager::replica`](crate::DatabaseManager::replica) go there
    /// while the replica's replay lag is within
    /// [`max_replica_lag`](Self::max_replica_lag).
    pub fn replica_url(mut self, url: impl Into<String>) -> Self {
        self.replica_url = Some(url.into());
        self
    }

    /// Replay lag past which reads of [`DatabaseManager::replica`](crate::DatabaseManager::replica)
    /// go to the primary instead (`{PREFIX}{NAME}_MAX_REPLICA_LAG`, seconds;
    /// default 5 s). The lag is measured on the replica and cached briefly.
    pub fn max_replica_lag(mut self, lag: Duration) -> Self {
        self.max_replica_lag = lag;
        self
    }

    /// The PostgreSQL server is reached through pgbouncer in transaction
    /// pooling mode, where each transaction (each statement outside one) may
    /// run on another server connection, shared with other clients. So no
    /// session state is relied on or set: statements are sent unnamed (no
    /// named prepared statements, which another server connection would not
    /// know); statement limits are set with `SET LOCAL` inside transactions
    /// only (outside one the watchdog alone limits a statement); with
    /// `read_only`, each statement outside a transaction runs in a
    /// `BEGIN READ ONLY` transaction of its own and transactions begin
    /// `READ ONLY` (statements that end a transaction, and scripts that are
    /// not plain reads, are refused); the migration lock is a row of a lock
    /// table, not a session advisory lock; and a pooled connection given
    /// back inside a transaction is rolled back (server sessions are
    /// pgbouncer's to reset). A timed-out statement is cancelled with
    /// PostgreSQL's own cancel request, sent to pgbouncer, which forwards
    /// it; the request's connection is kept open until pgbouncer closes it
    /// (pgbouncer 1.18 drops a cancel request whose client left before it
    /// was forwarded). Also set by `pgbouncer=true` in the connection
    /// string's query, and by `{PREFIX}{NAME}_PGBOUNCER`. Default `false`:
    /// only the user knows a pooler sits in between.
    pub fn pgbouncer(mut self, on: bool) -> Self {
        self.pgbouncer = on;
        self
    }

    /// Validates and builds the configuration. Nothing connects yet.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config), naming the setting
    /// (or, for a configuration read from the environment, the variable and
    /// its value), when:
    ///
    /// - the name is empty, or no connection string was given;
    /// - the connection string names no known backend or no host, or
    ///   disagrees with [`kind`](Self::kind);
    /// - the pool size is 0, or the pool size plus overflow exceeds 10 000;
    /// - a timeout that must be above zero is zero (acquisition, connect,
    ///   health check, `max_lifetime(Some(…))`, and the circuit-breaker
    ///   window and recovery while the breaker is on);
    /// - the query timeout is longer than 24 days, or any other duration
    ///   (retry delays and budget included) longer than 365 days;
    /// - the history table is not a plain table name.
    pub fn build(mut self) -> Result<DatabaseConfig> {
        let name = self.name.trim().to_owned();
        if name.is_empty() {
            return Err(Error::config(EMPTY_NAME));
        }
        let url = self.url.take().ok_or_else(|| {
            Error::config(format!(
                "no connection string for database `{name}`: call .url(…) on the builder"
            ))
        })?;
        let kind = self.check_kind(&url)?;
        let pool_size = self.pool_size.unwrap_or_else(default_pool_size);
        self.check_sizes(&name, pool_size)?;
        self.check_durations()?;
        self.check_history_table()?;
        self.check_hosts(&url, kind)?;
        let migrations_dir = self
            .migrations_dir
            .unwrap_or_else(|| Path::new("migrations").join(&name));
        let pgbouncer = self.pgbouncer || url_asks_pgbouncer(&url);
        Ok(DatabaseConfig {
            name: Arc::from(name),
            kind,
            url,
            pool_size,
            max_overflow: self.max_overflow,
            query_timeout: self.query_timeout.filter(|t| !t.is_zero()),
            acquire_timeout: self.acquire_timeout,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            max_lifetime: self.max_lifetime,
            validate_after_idle: self.validate_after_idle,
            leak_threshold: self.leak_threshold.filter(|t| !t.is_zero()),
            slow_query_threshold: self.slow_query_threshold.filter(|t| !t.is_zero()),
            health_timeout: self.health_timeout,
            degraded_after: self.degraded_after,
            metrics: self.metrics,
            query_cache_entries: self.query_cache_entries,
            query_cache_bytes: self.query_cache_bytes,
            read_only: self.read_only,
            migrations_dir,
            history_table: self.history_table,
            auto_migrate: self.auto_migrate,
            migration_placeholders: self.migration_placeholders,
            migration_lock_wait: self.migration_lock_wait,
            migrations_strict: self.migrations_strict,
            retry: self.retry,
            breaker: self.breaker,
            pgbouncer,
            replica_url: self.replica_url,
            max_replica_lag: self.max_replica_lag,
            var_stem: self.var_stem,
        })
    }

    /// The backend `url` names, which must agree with [`kind`](Self::kind).
    fn check_kind(&self, url: &str) -> Result<BackendKind> {
        let url_label = self
            .origin("DatabaseConfigBuilder::url")
            .map_or("the connection string", |o| &o.var);
        let inferred = kind_of_url(url).map_err(|why| {
            Error::config(format!(
                "{url_label} cannot be used: {why}; expected a URL such as \
                     postgresql://user:password@host:5432/database, \
                     mysql://user:password@host:3306/database or sqlite:path/to/file.db"
            ))
        })?;
        match self.kind {
            Some(k) if k != inferred => {
                let kind_label = self
                    .origin("DatabaseConfigBuilder::kind")
                    .map_or("the configured type", |o| &o.var);
                Err(Error::config(format!(
                    "{kind_label} says {k} but {url_label} is a {inferred} URL; make them agree"
                )))
            }
            _ => Ok(inferred),
        }
    }

    /// The host lists of the connection string and the replica's: known
    /// `target_session_attrs` and `load_balance_hosts` values, a replica of
    /// the same backend, host lists only where a backend takes them.
    fn check_hosts(&self, url: &str, kind: BackendKind) -> Result<()> {
        let url_label = self
            .origin("DatabaseConfigBuilder::url")
            .map_or("the connection string", |o| &o.var)
            .to_owned();
        let replica_label = self
            .origin("DatabaseConfigBuilder::replica_url")
            .map_or("the replica connection string", |o| &o.var)
            .to_owned();
        let mut lists = vec![(url_label, url.to_owned())];
        if let Some(r) = &self.replica_url {
            let rkind = kind_of_url(r)
                .map_err(|why| Error::config(format!("{replica_label} cannot be used: {why}")))?;
            if rkind != kind {
                return Err(Error::config(format!(
                    "{replica_label} is a {rkind} URL but the database is {kind}; a replica must be of the same backend"
                )));
            }
            lists.push((replica_label, r.clone()));
        }
        for (label, u) in lists {
            let hosts = host_list(&u)
                .map_err(|why| Error::config(format!("{label} cannot be used: {why}")))?;
            if let Some(h) = hosts {
                let multi = h.hosts.len() > 1 || h.attrs != TargetSessionAttrs::Any;
                if multi && !matches!(kind, BackendKind::Postgres | BackendKind::MySql) {
                    return Err(Error::config(format!(
                        "{label} cannot be used: host lists and target_session_attrs are for PostgreSQL and MySQL/MariaDB only"
                    )));
                }
            }
        }
        if self.max_replica_lag > MAX_DURATION {
            return Err(self.refuse(
                "DatabaseConfigBuilder::max_replica_lag",
                &format!("{:?}", self.max_replica_lag),
                DURATION_TOO_LONG,
            ));
        }
        Ok(())
    }

    fn check_sizes(&self, name: &str, pool_size: u32) -> Result<()> {
        if pool_size == 0 {
            return Err(self.refuse(
                "DatabaseConfigBuilder::pool_size",
                "0",
                "must be at least 1",
            ));
        }
        if pool_size.saturating_add(self.max_overflow) > MAX_CONNECTIONS {
            return Err(Error::config(format!(
                "pool size {pool_size} + max overflow {} for `{name}` exceeds {MAX_CONNECTIONS} connections",
                self.max_overflow
            )));
        }
        Ok(())
    }

    /// Zero where zero means nothing, and lengths past what the servers'
    /// settings and the clock arithmetic of deadlines can hold.
    fn check_durations(&self) -> Result<()> {
        let (b, r) = (&self.breaker, &self.retry);
        // (value to check, as the call gave it)
        let plain = |d: Duration| (Some(d), format!("{d:?}"));
        let opt = |d: Option<Duration>| (d, format!("{d:?}"));
        #[rustfmt::skip]
        let bounded = [
            ("DatabaseConfigBuilder::query_timeout",        opt(self.query_timeout),          MAX_QUERY_TIMEOUT, QUERY_TIMEOUT_TOO_LONG),
            ("DatabaseConfigBuilder::acquire_timeout",      plain(self.acquire_timeout),      MAX_DURATION,      DURATION_TOO_LONG),
            ("DatabaseConfigBuilder::connect_timeout",      plain(self.connect_timeout),      MAX_DURATION,      DURATION_TOO_LONG),
            ("DatabaseConfigBuilder::idle_timeout",         plain(self.idle_timeout),         MAX_DURATION,      DURATION_TOO_LONG),
            ("DatabaseConfigBuilder::max_lifetime",         opt(self.max_lifetime),           MAX_DURATION,      DURATION_TOO_LONG),
            ("DatabaseConfigBuilder::validate_after_idle",  plain(self.validate_after_idle),  MAX_DURATION,      DURATION_TOO_LONG),
            ("DatabaseConfigBuilder::leak_threshold",       opt(self.leak_threshold),         MAX_DURATION,      DURATION_TOO_LONG),
            ("DatabaseConfigBuilder::slow_query_threshold", opt(self.slow_query_threshold),   MAX_DURATION,      DURATION_TOO_LONG),
            ("DatabaseConfigBuilder::health_timeout",       plain(self.health_timeout),       MAX_DURATION,      DURATION_TOO_LONG),
            ("DatabaseConfigBuilder::degraded_after",       plain(self.degraded_after),       MAX_DURATION,      DURATION_TOO_LONG),
            ("DatabaseConfigBuilder::circuit_window",       plain(b.window),                  MAX_DURATION,      DURATION_TOO_LONG),
            ("DatabaseConfigBuilder::circuit_recovery",     plain(b.recovery),                MAX_DURATION,      DURATION_TOO_LONG),
            ("RetryPolicy::base_delay",                     plain(r.base_delay),                  MAX_DURATION,      DURATION_TOO_LONG),
            ("RetryPolicy::max_delay",                      plain(r.max_delay),                   MAX_DURATION,      DURATION_TOO_LONG),
            ("RetryPolicy::budget",                         plain(r.budget),          MAX_DURATION,      DURATION_TOO_LONG),
        ];
        for (setter, (value, shown), max, too_long) in bounded {
            if value.is_some_and(|v| v > max) {
                return Err(self.refuse(setter, &shown, too_long));
            }
        }
        for (setter, value) in [
            (
                "DatabaseConfigBuilder::acquire_timeout",
                self.acquire_timeout,
            ),
            (
                "DatabaseConfigBuilder::connect_timeout",
                self.connect_timeout,
            ),
            ("DatabaseConfigBuilder::health_timeout", self.health_timeout),
        ] {
            if value.is_zero() {
                return Err(self.refuse(setter, &format!("{value:?}"), "must be above zero"));
            }
        }
        if self.max_lifetime == Some(Duration::ZERO) {
            return Err(self.refuse(
                "DatabaseConfigBuilder::max_lifetime",
                "Some(0ns)",
                "must be above zero; use None to keep connections whatever their age",
            ));
        }
        if b.failures > 0 {
            for (setter, value) in [
                ("DatabaseConfigBuilder::circuit_window", b.window),
                ("DatabaseConfigBuilder::circuit_recovery", b.recovery),
            ] {
                if value.is_zero() {
                    return Err(self.refuse(
                        setter,
                        &format!("{value:?}"),
                        "must be above zero (or set the circuit-breaker failure count to 0 \
                         to turn the breaker off)",
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_history_table(&self) -> Result<()> {
        if crate::sql::is_plain_identifier(&self.history_table) {
            return Ok(());
        }
        let label = self
            .origin("DatabaseConfigBuilder::history_table")
            .map_or("the migration history table", |o| &o.var);
        Err(Error::config(format!(
            "{label} = `{}` is not a plain table name; use letters, digits and `_` \
             (starting with a letter or `_`), optionally `schema.table`, at most 63 characters",
            self.history_table
        )))
    }

    /// Refuses the value `setter` was given, saying `problem`: names the
    /// variable, its text and where it was read when it came from the
    /// environment, else the call (`DatabaseConfigBuilder::pool_size(0)`).
    fn refuse(&self, setter: &'static str, shown: &str, problem: impl fmt::Display) -> Error {
        Error::config(match self.origin(setter) {
            Some(o) => format!(
                "{} = `{}` {problem}; read from {}",
                o.var,
                o.text.as_deref().unwrap_or("…"),
                self.looked_in.as_deref().unwrap_or("the environment")
            ),
            None => format!("{setter}({shown}) for `{}` {problem}", self.name.trim()),
        })
    }
}
