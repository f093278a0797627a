//! The public facade: [`DatabaseManager`], one per database name in the
//! process, and the registry that shares it. Statements run through the
//! pipeline's choke point; work on one connection is in [`crate::session`].

use std::collections::HashMap;
use std::fmt;
use std::panic::Location;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::bulk::{Bulk, BulkReport};
use crate::cache::{self, QueryCacheStats, QueryOptions};
use crate::config::{variable_stem, DatabaseConfig};
use crate::entities::Entities;
use crate::error::{Error, Result};
use crate::metrics::{DbMetrics, PoolSource};
use crate::migrate::{MigrationSource, Migrator};
use crate::pipeline::{Limit, Op, Outcome, Shared};
use crate::resilience::RetryPolicy;
use crate::session::{
    outcome_rows, retried_transaction, statement_methods, PooledConnection, Transaction, TxConn,
};
use crate::status::{
    BackendKind, HealthStatus, MigrationReport, MigrationState, MigrationStatus, MigrationSummary,
    PoolStatus, QueryPlan, StatementStats,
};
use crate::stream::{RowStream, TypedRowStream};
use crate::value::{IntoParams, Params, Row};

/// The one door to one database: a pool of connections and everything that
/// runs on them.
///
/// Cheap to clone (an `Arc`), `Send + Sync`; use it from as many threads as
/// you like. [`DatabaseManager::new`] returns the same manager (one pool) for
/// the same name anywhere in the process.
#[derive(Clone)]
pub struct DatabaseManager {
    shared: Arc<Shared>,
    /// This handle's retry policy, in place of the configured one.
    retry: Option<RetryPolicy>,
}

impl fmt::Debug for DatabaseManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseManager")
            .field("config", &self.shared.config)
            .field("closed", &self.shared.is_closed())
            .field("retry", &self.retry_policy())
            .finish()
    }
}

/// Every live manager in the process, for [`DatabaseManager::health_check_all`].
fn every_manager() -> &'static Mutex<Vec<Weak<Shared>>> {
    static ALL: OnceLock<Mutex<Vec<Weak<Shared>>>> = OnceLock::new();
    ALL.get_or_init(Default::default)
}

/// One name's place in the registry: its manager, once made. Its own lock
/// is held while the manager is made (auto-migration included), so callers
/// of that name wait for the one manager while other names go on.
type Slot = Arc<Mutex<Option<DatabaseManager>>>;

/// The slot of every name [`DatabaseManager::new`] was asked for. The map's
/// lock is only held to find a slot, never while a manager is made.
fn registry() -> &'static Mutex<HashMap<String, Slot>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

impl DatabaseManager {
    /// The shared manager for the database called `name`, configured from the
    /// environment (see [`DatabaseConfig::from_env`]).
    ///
    /// The first call for a name creates the manager and its pool; later calls
    /// anywhere in the process return the same one (a call made while the
    /// first is still creating it, auto-migration included, waits for it;
    /// calls for other names do not). Names are compared by
    /// their variable stem (`rpa_db` and `RPA_DB` are one database). No
    /// connection is opened here: the first statement opens it, and reports
    /// a wrong password or an unreachable server.
    ///
    /// # Errors
    ///
    /// [`Config`](crate::ErrorKind::Config) naming the missing or malformed
    /// variable; [`FeatureDisabled`](crate::ErrorKind::FeatureDisabled) when
    /// the backend was compiled out; with `{PREFIX}{NAME}_AUTO_MIGRATE=true`,
    /// any error of [`run_migrations`](Self::run_migrations).
    pub fn new(name: &str) -> Result<DatabaseManager> {
        let key = variable_stem(name.trim());
        let slot = Arc::clone(registry().lock().entry(key).or_default());
        let mut held = slot.lock();
        if let Some(existing) = &*held {
            if !existing.shared.is_closed() {
                return Ok(existing.clone());
            }
        }
        let manager = DatabaseManager::from_config(DatabaseConfig::from_env(name)?)?;
        *held = Some(manager.clone());
        Ok(manager)
    }

    /// A new manager (with its own pool) for an explicit configuration. It is
    /// not shared through [`DatabaseManager::new`].
    ///
    /// With [`auto_migrate`](DatabaseConfig::auto_migrate) on
    /// (`{PREFIX}{NAME}_AUTO_MIGRATE=true`), pending migrations are applied
    /// here, before the manager is returned.
    ///
    /// # Errors
    ///
    /// [`FeatureDisabled`](crate::ErrorKind::FeatureDisabled) when the
    /// backend was compiled out; [`Config`](crate::ErrorKind::Config) when
    /// the backend's driver rejects the connection string; with auto-migrate
    /// on, any error of [`run_migrations`](Self::run_migrations).
    pub fn from_config(config: DatabaseConfig) -> Result<DatabaseManager> {
        let auto = config.auto_migrate;
        let shared = Shared::new(config)?;
        let weak: Weak<dyn PoolSource> = Arc::downgrade(&shared) as Weak<Shared>;
        DbMetrics::watch(weak);
        {
            let mut all = every_manager().lock();
            all.retain(|w| w.strong_count() > 0);
            all.push(Arc::downgrade(&shared));
        }
        let manager = DatabaseManager {
            shared,
            retry: None,
        };
        if auto {
            manager.run_migrations()?;
        }
        Ok(manager)
    }

    /// The logical database name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// The backend.
    pub fn backend(&self) -> BackendKind {
        self.shared.config.kind
    }

    /// The configuration (its `Debug` hides the password).
    pub fn config(&self) -> &DatabaseConfig {
        &self.shared.config
    }

    /// A handle on the same pool (and breaker, metrics, everything) whose
    /// calls retry with `policy` instead of the configured one
    /// ([`DatabaseConfigBuilder::retry`](crate::DatabaseConfigBuilder::retry)).
    ///
    /// ```no_run
    /// # fn main() -> dbmanager::Result<()> {
    /// use dbmanager::{DatabaseManager, RetryPolicy};
    ///
    /// let db = DatabaseManager::new("rpa_db")?;
    /// // This import is safe to repeat: let its upserts be retried too.
    /// let patient = db.with_retry(RetryPolicy::default().attempts(5).retry_writes(true));
    /// patient.execute("INSERT INTO seen (id) VALUES (?) ON CONFLICT DO NOTHING", (7,))?;
    /// // And never retry this one.
    /// db.with_retry(RetryPolicy::none()).execute_query("SELECT 1", ())?;
    /// # Ok(()) }
    /// ```
    pub fn with_retry(&self, policy: RetryPolicy) -> DatabaseManager {
        DatabaseManager {
            shared: Arc::clone(&self.shared),
            retry: Some(policy),
        }
    }

    /// The retry policy of this handle's calls.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry.unwrap_or(self.shared.config.retry)
    }

    /// The entity layer on this database (seed 003): save, read, find,
    /// count, version and soft-delete JSON objects or serde structs, with
    /// tables made and widened as needed. Each call runs in a transaction
    /// of its own, retried as [`transaction`](Self::transaction) is; for
    /// work inside a transaction of yours use [`Transaction::entities`].
    pub fn entities(&self) -> Entities {
        Entities::new(Arc::clone(&self.shared), self.retry_policy())
    }

    /// Runs a statement on a connection of its own, again after a transient
    /// failure when that cannot run it twice: the failure came before the
    /// statement was sent (a checkout, a connect, an open breaker), or the
    /// caller said a second run is harmless (a read-only database, or
    /// [`RetryPolicy::retry_writes`]). A statement's text is no proof:
    /// `SELECT nextval('s')` writes.
    ///
    /// What the statement may have changed drops its tables' cached reads.
    #[track_caller]
    fn run(&self, op: Op, sql: &str, params: Params, limit: Limit) -> Result<Outcome> {
        let result = self.run_retried(op, sql, params, limit, Location::caller());
        cache::after_statement(&self.shared, op, sql);
        result
    }

    fn run_retried(
        &self,
        op: Op,
        sql: &str,
        params: Params,
        limit: Limit,
        site: &'static Location<'static>,
    ) -> Result<Outcome> {
        let policy = self.retry_policy();
        // One clock read starts the retry budget, the checkout's wait and
        // the first attempt's statement time.
        let now = Instant::now();
        if policy.attempts <= 1 {
            return self
                .shared
                .run_since(None, op, sql, &params, limit, site, now);
        }
        let harmless = policy.retry_writes || self.shared.config.read_only;
        let mut first = Some(now);
        self.shared.retrying_since(&policy, op.name(), now, || {
            let at = first.take().unwrap_or_else(Instant::now);
            self.shared
                .run_since(None, op, sql, &params, limit, site, at)
                .map_err(|e| {
                    let again = e.is_retryable() && (harmless || e.was_unsent());
                    let kind = again.then(|| e.kind());
                    (e, kind)
                })
        })
    }

    /// A query with options: from the query cache when they ask for it.
    #[track_caller]
    fn run_with(&self, sql: &str, params: Params, options: &QueryOptions) -> Result<Vec<Row>> {
        let site = Location::caller();
        cache::query(&self.shared, sql, params, options, |params| {
            self.run_retried(Op::Query, sql, params, options.limit(), site)
                .map(outcome_rows)
        })
    }

    statement_methods!(&self);

    /// Runs a query and returns its rows as a [`RowStream`], read from the
    /// server as they are asked for: memory stays flat however many rows
    /// come back. The stream holds a connection of its own until it is
    /// exhausted or dropped. The query timeout bounds opening it and each
    /// fetch of up to [`FETCH_ROWS`](crate::FETCH_ROWS) rows, not the whole
    /// stream. Not retried.
    ///
    /// ```
    /// # fn main() -> dbmanager::Result<()> {
    /// # let db = dbmanager::DatabaseManager::from_config(
    /// #     dbmanager::DatabaseConfig::builder("stream_doc").url("sqlite::memory:").build()?)?;
    /// for row in db.stream("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) SELECT i FROM n", ())? {
    ///     let i: i64 = row?.get("i")?;
    ///     assert!(i >= 1);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`execute_query`](Self::execute_query), when the query is opened;
    /// a later fetch may fail the same way (the stream then yields the
    /// error and ends).
    #[track_caller]
    pub fn stream(&self, sql: &str, params: impl IntoParams) -> Result<RowStream<'static>> {
        crate::stream::stream_owned(&self.shared, sql, params)
    }

    /// A bulk load into `table` (which may be `schema.table`), to set up
    /// (chunk size, a commit per chunk, where to start, progress) and run;
    /// see [`Bulk`].
    #[track_caller]
    pub fn bulk(&self, table: &str) -> Bulk<'static> {
        Bulk::new(Arc::clone(&self.shared), table, Location::caller())
    }

    /// Inserts `rows` into `table` on the server's fastest path, all or
    /// nothing, in chunks of [`DEFAULT_CHUNK_SIZE`](crate::DEFAULT_CHUNK_SIZE); see [`Bulk::insert`].
    ///
    /// # Errors
    ///
    /// As [`Bulk::insert`].
    #[track_caller]
    pub fn bulk_insert<R: IntoParams>(
        &self,
        table: &str,
        columns: &[&str],
        rows: impl IntoIterator<Item = R>,
    ) -> Result<BulkReport> {
        self.bulk(table).insert(columns, rows)
    }

    /// Inserts or updates `rows` by `key_columns`; see [`Bulk::upsert`].
    ///
    /// # Errors
    ///
    /// As [`Bulk::insert`].
    #[track_caller]
    pub fn bulk_upsert<R: IntoParams>(
        &self,
        table: &str,
        columns: &[&str],
        key_columns: &[&str],
        rows: impl IntoIterator<Item = R>,
    ) -> Result<BulkReport> {
        self.bulk(table).upsert(columns, key_columns, rows)
    }

    /// Updates the rows matched by `key_columns`; see [`Bulk::update`].
    ///
    /// # Errors
    ///
    /// As [`Bulk::insert`].
    #[track_caller]
    pub fn bulk_update<R: IntoParams>(
        &self,
        table: &str,
        columns: &[&str],
        key_columns: &[&str],
        rows: impl IntoIterator<Item = R>,
    ) -> Result<BulkReport> {
        self.bulk(table).update(columns, key_columns, rows)
    }

    /// Deletes the rows whose `key_columns` match `keys`; see
    /// [`Bulk::delete`].
    ///
    /// # Errors
    ///
    /// As [`Bulk::insert`].
    #[track_caller]
    pub fn bulk_delete<R: IntoParams>(
        &self,
        table: &str,
        key_columns: &[&str],
        keys: impl IntoIterator<Item = R>,
    ) -> Result<BulkReport> {
        self.bulk(table).delete(key_columns, keys)
    }

    /// [`stream`](Self::stream), each row deserialised into `T` with serde
    /// (matching fields by column name, as [`query_as`](Self::query_as)).
    ///
    /// # Errors
    ///
    /// As [`stream`](Self::stream); a row that does not fit `T` is a
    /// [`Conversion`](crate::ErrorKind::Conversion) error in its place.
    #[track_caller]
    pub fn stream_as<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        params: impl IntoParams,
    ) -> Result<TypedRowStream<'static, T>> {
        self.stream(sql, params).map(RowStream::typed)
    }

    /// Drops the query cache's entries that read any of `tables` (names as
    /// in SQL, any case, schema-qualified or not: `customers`,
    /// `app."Customers"`); returns how many went. For writes the library
    /// does not see (another process, a trigger, a view's base table).
    pub fn invalidate_tables(&self, tables: &[&str]) -> usize {
        cache::invalidate_tables(&self.shared, tables)
    }

    /// Drops the query cache's entry for `sql` with `params`, if it holds
    /// one; returns whether it did.
    pub fn invalidate_query(&self, sql: &str, params: impl IntoParams) -> bool {
        cache::invalidate_query(&self.shared, sql, &params.into_params())
    }

    /// Drops every entry of this database's query cache; returns how many
    /// went.
    pub fn clear_query_cache(&self) -> usize {
        cache::clear(&self.shared)
    }

    /// A snapshot of this database's query cache: entries, bytes, bounds,
    /// hits, misses and evictions.
    #[must_use]
    pub fn query_cache_stats(&self) -> QueryCacheStats {
        cache::stats(&self.shared)
    }

    /// Runs `statements` in one transaction: all of them or none. Returns
    /// each statement's affected-row count.
    ///
    /// # Errors
    ///
    /// The first failing statement's error, after the transaction was rolled
    /// back.
    #[track_caller]
    pub fn execute_transaction<S, P>(
        &self,
        statements: impl IntoIterator<Item = (S, P)>,
    ) -> Result<Vec<u64>>
    where
        S: AsRef<str>,
        P: IntoParams,
    {
        let statements: Vec<(S, Params)> = statements
            .into_iter()
            .map(|(sql, params)| (sql, params.into_params()))
            .collect();
        self.transaction(|tx| {
            statements
                .iter()
                .map(|(sql, params)| tx.execute(sql.as_ref(), params))
                .collect()
        })
    }

    /// Checks a connection out of the pool for several statements in a row.
    /// It goes back to the pool when the guard is dropped.
    ///
    /// # Errors
    ///
    /// [`PoolTimeout`](crate::ErrorKind::PoolTimeout) when none became free
    /// within the acquisition timeout; the connection error when none could
    /// be opened; [`Closed`](crate::ErrorKind::Closed) after [`close`](Self::close).
    #[track_caller]
    #[inline]
    pub fn connection(&self) -> Result<PooledConnection> {
        Ok(PooledConnection::new(
            Arc::clone(&self.shared),
            self.shared.checkout()?,
        ))
    }

    /// A connection if one is idle in the pool now, `None` otherwise: never
    /// waits and never opens a connection (r2d2's `try_get`).
    ///
    /// # Errors
    ///
    /// [`CircuitOpen`](crate::ErrorKind::CircuitOpen) while the breaker is
    /// open; [`Closed`](crate::ErrorKind::Closed) after [`close`](Self::close).
    #[track_caller]
    pub fn try_connection(&self) -> Result<Option<PooledConnection>> {
        let conn = self.shared.try_checkout(Location::caller())?;
        Ok(conn.map(|c| PooledConnection::new(Arc::clone(&self.shared), c)))
    }

    /// As [`connection`](Self::connection), waiting at most `timeout` for a
    /// connection instead of the configured acquisition timeout.
    ///
    /// # Errors
    ///
    /// [`PoolTimeout`](crate::ErrorKind::PoolTimeout) when none became free
    /// within `timeout`; otherwise as [`connection`](Self::connection).
    #[track_caller]
    pub fn connection_timeout(&self, timeout: Duration) -> Result<PooledConnection> {
        let conn = self
            .shared
            .checkout_within(Some(timeout), Location::caller())?;
        Ok(PooledConnection::new(Arc::clone(&self.shared), conn))
    }

    /// Runs `f` in a transaction on one pooled connection: committed when `f`
    /// returns `Ok`, rolled back when it returns `Err` or panics.
    ///
    /// ```no_run
    /// # fn main() -> dbmanager::Result<()> {
    /// let db = dbmanager::DatabaseManager::new("rpa_db")?;
    /// db.transaction(|tx| {
    ///     tx.execute("INSERT INTO orders (customer_id, amount) VALUES (?, ?)", (1, 100))?;
    ///     tx.execute("UPDATE customers SET orders = orders + 1 WHERE id = ?", (1,))?;
    ///     Ok(())
    /// })?;
    /// # Ok(()) }
    /// ```
    ///
    /// When the transaction fails with a transient error (a deadlock, a
    /// serialization failure, a lost connection: [`Error::is_retryable`]) it
    /// is rolled back and `f` runs again from the start, on a fresh
    /// connection, as the retry policy allows ([`RetryPolicy`]; 3 attempts by
    /// default). So `f` may run more than once: keep side effects other than
    /// its statements out of it, or make them repeatable. A commit whose
    /// connection was lost is never retried (whether it committed is unknown).
    ///
    /// # Errors
    ///
    /// `f`'s error (after rollback), or the error of `BEGIN` or `COMMIT`;
    /// for a transient error, the last attempt's.
    #[track_caller]
    pub fn transaction<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        F: FnMut(&mut Transaction<'_>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        self.retried_transaction(None, Location::caller(), f)
    }

    /// The retry loop around whole transactions, with this handle's policy.
    fn retried_transaction<T, E, F>(
        &self,
        timeout: Option<Duration>,
        site: &'static Location<'static>,
        f: F,
    ) -> std::result::Result<T, E>
    where
        F: FnMut(&mut Transaction<'_>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        retried_transaction(&self.shared, &self.retry_policy(), timeout, site, f)
    }

    /// As [`transaction`](Self::transaction), with a deadline for the whole
    /// transaction: each statement is limited to what is left of `timeout`
    /// (or its own timeout, if shorter), and once it has passed the
    /// transaction is rolled back and the call returns
    /// [`QueryTimeout`](crate::ErrorKind::QueryTimeout).
    ///
    /// # Errors
    ///
    /// As [`transaction`](Self::transaction); `QueryTimeout` after rollback
    /// when the deadline passed.
    #[track_caller]
    pub fn transaction_with_timeout<T, E, F>(
        &self,
        timeout: Duration,
        f: F,
    ) -> std::result::Result<T, E>
    where
        F: FnMut(&mut Transaction<'_>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        self.retried_transaction(Some(timeout), Location::caller(), f)
    }

    /// Starts a transaction on a connection of its own. It must be finished
    /// with [`Transaction::commit`]; dropping it rolls it back.
    ///
    /// # Errors
    ///
    /// As [`connection`](Self::connection), or the error of `BEGIN`.
    #[track_caller]
    pub fn begin(&self) -> Result<Transaction<'static>> {
        let conn = self.shared.checkout()?;
        Transaction::start(
            Arc::clone(&self.shared),
            TxConn::Owned(Box::new(conn)),
            Limit::DEFAULT,
        )
    }

    /// The manager of the read replicas' pool (made once, on first use),
    /// or `None` when no replica is configured.
    ///
    /// # Errors
    ///
    /// As [`from_config`](Self::from_config) for the replica's configuration.
    pub(crate) fn replica_manager(&self) -> Result<Option<DatabaseManager>> {
        let Some(mut config) = self.shared.config.replica_config() else {
            return Ok(None);
        };
        if let Some(shared) = self.shared.replica.get() {
            return Ok(Some(DatabaseManager {
                shared: Arc::clone(shared),
                retry: self.retry,
            }));
        }
        // Its own name, so that its metrics and pool gauges are its own.
        config.name = format!("{}_replica", self.shared.config.name).into();
        let made = DatabaseManager::from_config(config)?;
        let shared = self.shared.replica.get_or_init(|| Arc::clone(&made.shared));
        Ok(Some(DatabaseManager {
            shared: Arc::clone(shared),
            retry: self.retry,
        }))
    }

    /// The replicas' lag as last measured, and when.
    pub(crate) fn replica_lag_cache(&self) -> &Mutex<Option<(std::time::Instant, Option<f64>)>> {
        &self.shared.replica_lag
    }

    /// Counts a read meant for a replica that went to this primary.
    pub(crate) fn count_replica_fallback(&self) {
        self.shared.metrics.replica_fallback();
    }

    /// A snapshot of the pool (`get_pool_status` in the Python system).
    #[must_use]
    pub fn pool_status(&self) -> PoolStatus {
        self.shared.pool_status()
    }

    /// Checks the database: a connection and
    /// `SELECT 1` within the health-check timeout (5 s by default, see
    /// [`DatabaseConfigBuilder::health_timeout`](crate::DatabaseConfigBuilder::health_timeout)),
    /// whatever the server does; never hangs, never fails: problems are in
    /// the report. [`HealthStatus`] documents when it says `degraded`.
    #[must_use]
    pub fn health_check(&self) -> HealthStatus {
        let db = self.clone();
        crate::health::check(&self.shared, move || db.migration_summary())
    }

    /// The migration part of a health report. Without a migrations folder
    /// the database is `not_managed` when it has no history table either,
    /// else `unknown`; failed or mismatched migrations make it `failed`.
    fn migration_summary(&self) -> MigrationSummary {
        let dir = self.config().migrations_dir();
        if !dir.is_dir() {
            return match self.migrator().history_exists() {
                Ok(false) => MigrationSummary {
                    state: MigrationState::NotManaged,
                    ..MigrationSummary::default()
                },
                Ok(true) => MigrationSummary::unknown(Some(format!(
                    "the database has a migration history, but the migrations folder {} \
                     does not exist",
                    dir.display()
                ))),
                Err(e) => MigrationSummary::unknown(Some(e.to_string())),
            };
        }
        let status = match self.migration_status() {
            Ok(status) => status,
            Err(e) => return MigrationSummary::unknown(Some(e.to_string())),
        };
        let state = if !status.problems.is_empty() {
            MigrationState::Failed
        } else if !status.pending.is_empty() {
            MigrationState::Pending
        } else {
            MigrationState::Ok
        };
        MigrationSummary {
            state,
            current_version: status.current_version,
            pending_migrations: status
                .pending
                .into_iter()
                .map(|p| p.version.unwrap_or(p.script))
                .collect(),
            problems: status.problems.iter().map(ToString::to_string).collect(),
        }
    }

    /// A [`Migrator`] for this database: the configured folder
    /// (`migrations/{name}` unless set) and default
    /// [`MigrateOptions`](crate::migrate::MigrateOptions). Every migration
    /// operation (validate, baseline, repair, undo, dry run, migrate to a
    /// version) is a method of the migrator.
    pub fn migrator(&self) -> Migrator {
        Migrator::new(
            Arc::clone(&self.shared),
            MigrationSource::directory(self.config().migrations_dir()),
        )
    }

    /// Applies pending migrations from the configured folder; the same as
    /// `self.migrator().run()` ([`Migrator::run`]).
    ///
    /// # Errors
    ///
    /// As [`Migrator::run`].
    pub fn run_migrations(&self) -> Result<MigrationReport> {
        self.migrator().run()
    }

    /// Where the database's migrations stand; the same as
    /// `self.migrator().status()` ([`Migrator::status`]).
    ///
    /// # Errors
    ///
    /// As [`Migrator::status`].
    pub fn migration_status(&self) -> Result<MigrationStatus> {
        self.migrator().status()
    }

    /// [`health_check`](Self::health_check) of every live manager in the
    /// process, run side by side (so the whole call takes about one health
    /// timeout at most), in the order the managers were made.
    #[must_use]
    pub fn health_check_all() -> Vec<HealthStatus> {
        let all: Vec<DatabaseManager> = every_manager()
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|s| !s.is_closed())
            .map(|shared| DatabaseManager {
                shared,
                retry: None,
            })
            .collect();
        std::thread::scope(|s| {
            let checks: Vec<_> = all.iter().map(|db| s.spawn(|| db.health_check())).collect();
            checks.into_iter().filter_map(|c| c.join().ok()).collect()
        })
    }

    /// Time statistics of the `top` statements by total time since the
    /// manager started (SQL normalised: literals replaced by `?`), for
    /// finding what to optimise. Empty when metrics are off.
    #[must_use]
    pub fn statement_stats(&self, top: usize) -> Vec<StatementStats> {
        self.shared.stats.top(self.shared.dialect, top)
    }

    /// The backend's plan for `sql` (PostgreSQL `EXPLAIN (FORMAT JSON)`,
    /// MariaDB/MySQL `EXPLAIN FORMAT=JSON`, SQLite `EXPLAIN QUERY PLAN`),
    /// without running the statement.
    ///
    /// # Errors
    ///
    /// As [`execute_query`](Self::execute_query);
    /// [`FeatureDisabled`](crate::ErrorKind::FeatureDisabled) for SQL Server.
    #[track_caller]
    pub fn explain(&self, sql: &str, params: impl IntoParams) -> Result<QueryPlan> {
        crate::health::explain(&self.shared, sql, params.into_params())
    }

    /// Closes the manager: its pool is dropped (idle connections close now,
    /// checked-out ones when returned) and later calls fail with
    /// [`Closed`](crate::ErrorKind::Closed). The next
    /// [`DatabaseManager::new`] for the name makes a fresh manager.
    /// Idempotent: returns `true` the first time.
    pub fn close(&self) -> bool {
        let closed = self.shared.close();
        let slot = registry().lock().get(&variable_stem(self.name())).cloned();
        // A slot busy making a manager is not waited for (that may be this
        // thread, closing from inside a migration): `new` replaces a closed
        // manager anyway; this only lets go of it sooner.
        if let Some(mut held) = slot.as_ref().and_then(|s| s.try_lock()) {
            if held
                .as_ref()
                .is_some_and(|m| Arc::ptr_eq(&m.shared, &self.shared))
            {
                *held = None;
            }
        }
        closed
    }

    /// True after [`close`](Self::close).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// True when `self` and `other` share one pool.
    #[must_use]
    pub fn same_pool(&self, other: &DatabaseManager) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}
