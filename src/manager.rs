//! The public facade: [`DatabaseManager`], [`PooledConnection`] and
//! [`Transaction`]. Every statement method here is one line into the
//! pipeline's choke point.

use std::collections::HashMap;
use std::fmt;
use std::panic::Location;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::de::DeserializeOwned;

use crate::config::{env_stem, DatabaseConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::{DbMetrics, PoolSource};
use crate::pipeline::{Limit, Op, Outcome, Shared};
use crate::pool::Pooled;
use crate::resilience::RetryPolicy;
use crate::sql::{classify_statement, StatementKind};
use crate::status::BackendKind;
use crate::status::{HealthStatus, MigrationSummary, PoolStatus, QueryPlan, StatementStats};
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

fn registry() -> &'static Mutex<HashMap<String, DatabaseManager>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, DatabaseManager>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn outcome_rows(o: Outcome) -> Vec<Row> {
    match o {
        Outcome::Rows(r) => r,
        Outcome::Affected(_) | Outcome::Done => Vec::new(),
    }
}

fn outcome_affected(o: Outcome) -> u64 {
    match o {
        Outcome::Affected(n) => n,
        Outcome::Rows(r) => r.len() as u64,
        Outcome::Done => 0,
    }
}

/// An error for the retry loop: with its kind when it is transient.
fn transient(e: Error) -> (Error, Option<ErrorKind>) {
    let kind = e.is_retryable().then(|| e.kind());
    (e, kind)
}

fn exactly_one(rows: Vec<Row>) -> Result<Row> {
    let mut it = rows.into_iter();
    match (it.next(), it.next()) {
        (Some(row), None) => Ok(row),
        (None, _) => Err(Error::new(ErrorKind::NoRows, "expected exactly one row")),
        (Some(_), Some(_)) => Err(Error::new(
            ErrorKind::TooManyRows,
            "expected exactly one row; use query_opt or execute_query",
        )),
    }
}

fn at_most_one(rows: Vec<Row>) -> Result<Option<Row>> {
    match rows.len() {
        0 => Ok(None),
        1 => Ok(rows.into_iter().next()),
        _ => Err(Error::new(
            ErrorKind::TooManyRows,
            "expected at most one row; use execute_query",
        )),
    }
}

/// The statement methods shared by [`DatabaseManager`] (`&self`),
/// [`PooledConnection`] and [`Transaction`] (`&mut self`). Each type has a
/// private `run(op, sql, params)` into the pipeline.
macro_rules! statement_methods {
    (&mut $s:ident) => { statement_methods!(@with [&mut $s] $s); };
    (&$s:ident) => { statement_methods!(@with [&$s] $s); };
    (@with [$($recv:tt)+] $s:ident) => {
        /// Runs a statement and returns its rows.
        ///
        /// `sql` may use `?` or `:name` placeholders and `[identifier]`
        /// quoting (translated for the backend), or the backend's native
        /// placeholders.
        ///
        /// The statement is limited by the query timeout in force (the
        /// database's `TIMEOUT` setting unless changed): past it, it is
        /// cancelled on the server and the call returns
        /// [`QueryTimeout`](crate::ErrorKind::QueryTimeout).
        ///
        /// # Errors
        ///
        /// Any [`ErrorKind`](crate::ErrorKind): parameters that do not match
        /// the placeholders, the server's error, pool or query timeouts.
        #[track_caller]
        pub fn execute_query($($recv)+, sql: &str, params: impl IntoParams) -> Result<Vec<Row>> {
            $s.run(Op::Query, sql, params.into_params(), Limit::Default).map(outcome_rows)
        }

        /// Runs a statement and returns its rows, cancelling it on the server
        /// if it runs longer than `timeout` (seed 002's
        /// `execute_query_with_timeout`).
        ///
        /// # Errors
        ///
        /// [`QueryTimeout`](crate::ErrorKind::QueryTimeout) past `timeout`,
        /// or as [`execute_query`](Self::execute_query).
        #[track_caller]
        pub fn execute_query_with_timeout($($recv)+, sql: &str, params: impl IntoParams, timeout: Duration) -> Result<Vec<Row>> {
            $s.run(Op::Query, sql, params.into_params(), Limit::Custom(Some(timeout))).map(outcome_rows)
        }

        /// Runs a statement and returns the number of rows it affected.
        ///
        /// # Errors
        ///
        /// As [`execute_query`](Self::execute_query).
        #[track_caller]
        pub fn execute($($recv)+, sql: &str, params: impl IntoParams) -> Result<u64> {
            $s.run(Op::Execute, sql, params.into_params(), Limit::Default).map(outcome_affected)
        }

        /// Runs a statement and returns the number of rows it affected,
        /// cancelling it on the server if it runs longer than `timeout`.
        ///
        /// # Errors
        ///
        /// [`QueryTimeout`](crate::ErrorKind::QueryTimeout) past `timeout`,
        /// or as [`execute_query`](Self::execute_query).
        #[track_caller]
        pub fn execute_with_timeout($($recv)+, sql: &str, params: impl IntoParams, timeout: Duration) -> Result<u64> {
            $s.run(Op::Execute, sql, params.into_params(), Limit::Custom(Some(timeout))).map(outcome_affected)
        }

        /// Runs a script of statements separated by `;`, without parameters.
        ///
        /// # Errors
        ///
        /// As [`execute_query`](Self::execute_query); a script with `?` or
        /// `:name` placeholders is a [`Parameter`](crate::ErrorKind::Parameter) error.
        #[track_caller]
        pub fn execute_batch($($recv)+, sql: &str) -> Result<()> {
            $s.run(Op::Batch, sql, Params::None, Limit::Default).map(drop)
        }

        /// Runs a query that must return exactly one row.
        ///
        /// # Errors
        ///
        /// [`NoRows`](crate::ErrorKind::NoRows) or
        /// [`TooManyRows`](crate::ErrorKind::TooManyRows), or as
        /// [`execute_query`](Self::execute_query).
        #[track_caller]
        pub fn query_one($($recv)+, sql: &str, params: impl IntoParams) -> Result<Row> {
            $s.execute_query(sql, params).and_then(exactly_one)
        }

        /// Runs a query that returns at most one row.
        ///
        /// # Errors
        ///
        /// [`TooManyRows`](crate::ErrorKind::TooManyRows), or as
        /// [`execute_query`](Self::execute_query).
        #[track_caller]
        pub fn query_opt($($recv)+, sql: &str, params: impl IntoParams) -> Result<Option<Row>> {
            $s.execute_query(sql, params).and_then(at_most_one)
        }

        /// Runs a query and deserialises each row into `T` with serde,
        /// matching fields by column name.
        ///
        /// # Errors
        ///
        /// [`Conversion`](crate::ErrorKind::Conversion) when a row does not
        /// fit `T`, or as [`execute_query`](Self::execute_query).
        #[track_caller]
        pub fn query_as<T: DeserializeOwned>($($recv)+, sql: &str, params: impl IntoParams) -> Result<Vec<T>> {
            $s.execute_query(sql, params)?
                .iter()
                .map(Row::deserialize)
                .collect()
        }
    };
}

impl DatabaseManager {
    /// The shared manager for the database called `name`, configured from the
    /// environment (see [`DatabaseConfig::from_env`]).
    ///
    /// The first call for a name creates the manager and its pool; later calls
    /// anywhere in the process return the same one. Names are compared by
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
        let key = env_stem(name.trim());
        let mut map = registry().lock();
        if let Some(existing) = map.get(&key) {
            if !existing.shared.is_closed() {
                return Ok(existing.clone());
            }
        }
        let manager = DatabaseManager::from_config(DatabaseConfig::from_env(name)?)?;
        map.insert(key, manager.clone());
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
        let shared = Arc::new(Shared::new(config)?);
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

    /// Runs a statement on a connection of its own; retried as a whole when
    /// that is safe (see [`RetryPolicy`]).
    #[track_caller]
    fn run(&self, op: Op, sql: &str, params: Params, limit: Limit) -> Result<Outcome> {
        let site = Location::caller();
        let policy = self.retry_policy();
        let repeatable = policy.max_attempts() > 1
            && (policy.retries_writes()
                || (op == Op::Query && classify_statement(sql) == StatementKind::Read));
        if !repeatable {
            return self.shared.run_at(None, op, sql, params, limit, site);
        }
        self.shared.retrying(&policy, op.name(), || {
            self.shared
                .run_at(None, op, sql, params.clone(), limit, site)
                .map_err(transient)
        })
    }

    statement_methods!(&self);

    /// Runs `statements` in one transaction: all of them or none (seed 002's
    /// `execute_transaction`). Returns each statement's affected-row count.
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
    pub fn connection(&self) -> Result<PooledConnection> {
        Ok(PooledConnection {
            shared: Arc::clone(&self.shared),
            conn: self.shared.checkout()?,
            limit: Limit::Default,
        })
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

    /// The retry loop around whole transactions.
    fn retried_transaction<T, E, F>(
        &self,
        timeout: Option<Duration>,
        site: &'static Location<'static>,
        mut f: F,
    ) -> std::result::Result<T, E>
    where
        F: FnMut(&mut Transaction<'_>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        let policy = self.retry_policy();
        let lift = |e: Error| {
            let (e, kind) = transient(e);
            (E::from(e), kind)
        };
        self.shared.retrying(&policy, "transaction", || {
            let conn = self.shared.checkout_within(None, site).map_err(lift)?;
            let mut tx = Transaction::start(
                Arc::clone(&self.shared),
                TxConn::Owned(Box::new(conn)),
                Limit::Default,
            )
            .map_err(lift)?;
            if let Some(t) = timeout {
                tx.deadline = Some((Instant::now() + t, t));
            }
            tx.run_repeatable(&mut f)
        })
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
            Limit::Default,
        )
    }

    /// A snapshot of the pool (seed 002's `get_pool_status`).
    pub fn pool_status(&self) -> PoolStatus {
        self.shared.pool_status()
    }

    /// Checks the database (seed 002's `health_check`): a connection and
    /// `SELECT 1` within the health-check timeout (5 s by default, see
    /// [`DatabaseConfigBuilder::health_timeout`](crate::DatabaseConfigBuilder::health_timeout)),
    /// whatever the server does; never hangs, never fails: problems are in
    /// the report. [`HealthStatus`] documents when it says `degraded`.
    pub fn health_check(&self) -> HealthStatus {
        let db = self.clone();
        crate::health::check(&self.shared, move || db.migration_summary())
    }

    /// The migration part of a health report: `None` when this database has
    /// no migrations folder (it does not manage its schema here) or its
    /// state cannot be read.
    fn migration_summary(&self) -> Option<MigrationSummary> {
        if !self.config().migrations_dir().is_dir() {
            return None;
        }
        let status = self.migration_status().ok()?;
        Some(MigrationSummary {
            current_version: status.current_version,
            pending_migrations: status
                .pending
                .into_iter()
                .map(|p| p.version.unwrap_or(p.script))
                .collect(),
        })
    }

    /// [`health_check`](Self::health_check) of every live manager in the
    /// process, run side by side (so the whole call takes about one health
    /// timeout at most), in the order the managers were made.
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
        let mut map = registry().lock();
        let key = env_stem(self.name());
        if map
            .get(&key)
            .is_some_and(|m| Arc::ptr_eq(&m.shared, &self.shared))
        {
            map.remove(&key);
        }
        closed
    }

    /// True after [`close`](Self::close).
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// True when `self` and `other` share one pool.
    pub fn same_pool(&self, other: &DatabaseManager) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// A connection checked out of the pool; back to the pool on drop.
pub struct PooledConnection {
    shared: Arc<Shared>,
    conn: Pooled,
    limit: Limit,
}

impl fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConnection")
            .field("database", &self.shared.name())
            .finish_non_exhaustive()
    }
}

impl PooledConnection {
    #[track_caller]
    fn run(&mut self, op: Op, sql: &str, params: Params, limit: Limit) -> Result<Outcome> {
        let limit = if limit == Limit::Default {
            self.limit
        } else {
            limit
        };
        self.shared
            .run(Some(&mut self.conn), op, sql, params, limit)
    }

    statement_methods!(&mut self);

    /// Marks the connection broken: it is closed instead of going back to
    /// the pool (used when its session state is unknown).
    pub(crate) fn discard(&mut self) {
        self.conn.broken = true;
    }

    /// Sets the limit for this guard's later statements (and its
    /// transactions' statements): `Some(d)`, or `None` for no limit, in place
    /// of the database's configured query timeout.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.limit = Limit::Custom(timeout);
    }

    /// Runs `f` in a transaction on this connection; see
    /// [`DatabaseManager::transaction`].
    ///
    /// # Errors
    ///
    /// `f`'s error (after rollback), or the error of `BEGIN` or `COMMIT`.
    pub fn transaction<T, E, F>(&mut self, f: F) -> std::result::Result<T, E>
    where
        F: FnOnce(&mut Transaction<'_>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        let tx = self.begin()?;
        tx.run_closure(f)
    }

    /// As [`DatabaseManager::transaction_with_timeout`], on this connection.
    ///
    /// # Errors
    ///
    /// As [`transaction`](Self::transaction); `QueryTimeout` after rollback
    /// when the deadline passed.
    pub fn transaction_with_timeout<T, E, F>(
        &mut self,
        timeout: Duration,
        f: F,
    ) -> std::result::Result<T, E>
    where
        F: FnOnce(&mut Transaction<'_>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        self.begin()?.with_deadline(timeout).run_closure(f)
    }

    /// Starts a transaction on this connection; dropping it unfinished rolls
    /// it back.
    ///
    /// # Errors
    ///
    /// The error of `BEGIN`.
    pub fn begin(&mut self) -> Result<Transaction<'_>> {
        let limit = self.limit;
        Transaction::start(
            Arc::clone(&self.shared),
            TxConn::Borrowed(&mut self.conn),
            limit,
        )
    }
}

enum TxConn<'a> {
    Owned(Box<Pooled>),
    Borrowed(&'a mut Pooled),
}

impl TxConn<'_> {
    fn get(&mut self) -> &mut Pooled {
        match self {
            TxConn::Owned(c) => c,
            TxConn::Borrowed(c) => c,
        }
    }
}

/// An open transaction. [`commit`](Self::commit) it; dropping it otherwise
/// (an early `?`, a panic) rolls it back.
pub struct Transaction<'a> {
    shared: Arc<Shared>,
    conn: TxConn<'a>,
    finished: bool,
    /// The limit of each statement.
    limit: Limit,
    /// The whole transaction's deadline, and the timeout it came from.
    deadline: Option<(Instant, Duration)>,
    /// Set when a timeout rolled the transaction back.
    timed_out: bool,
    /// The first transient error a statement of the transaction met: the
    /// whole transaction may be retried when the closure then fails.
    transient: Option<ErrorKind>,
}

impl fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("database", &self.shared.name())
            .field("finished", &self.finished)
            .finish()
    }
}

impl<'a> Transaction<'a> {
    fn start(shared: Arc<Shared>, mut conn: TxConn<'a>, limit: Limit) -> Result<Transaction<'a>> {
        shared.run(Some(conn.get()), Op::Begin, "", Params::None, limit)?;
        Ok(Transaction {
            shared,
            conn,
            finished: false,
            limit,
            deadline: None,
            timed_out: false,
            transient: None,
        })
    }

    /// Every statement of the transaction, and its commit, come here: the
    /// transaction's deadline narrows each statement's limit, and a timeout
    /// rolls the whole transaction back at once (on MySQL a cancelled
    /// statement does not end the transaction, so committing the rest would
    /// otherwise be possible).
    #[track_caller]
    fn run(&mut self, op: Op, sql: &str, params: Params, limit: Limit) -> Result<Outcome> {
        if self.timed_out {
            return Err(Error::new(
                ErrorKind::QueryTimeout,
                "the transaction was rolled back when a statement timed out; start a new transaction",
            )
            .on_database(self.shared.name()));
        }
        let limit = if limit == Limit::Default {
            self.limit
        } else {
            limit
        };
        let limit = match self.deadline {
            None => limit,
            Some((deadline, whole)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let e = Error::query_timeout(whole, "give the transaction a longer timeout")
                        .on_database(self.shared.name());
                    return Err(self.abandon(e));
                }
                let own = match limit {
                    Limit::Default => self.shared.config.query_timeout,
                    Limit::Custom(t) => t,
                };
                Limit::Custom(Some(own.map_or(left, |t| t.min(left))))
            }
        };
        match self
            .shared
            .run(Some(self.conn.get()), op, sql, params, limit)
        {
            Err(e) if e.kind() == ErrorKind::QueryTimeout && op != Op::Rollback => {
                Err(self.abandon(e))
            }
            Err(e) => {
                if e.is_retryable() && self.transient.is_none() {
                    self.transient = Some(e.kind());
                }
                Err(e)
            }
            ok => ok,
        }
    }

    /// Limits the whole transaction to `timeout` from now.
    fn with_deadline(mut self, timeout: Duration) -> Self {
        self.deadline = Some((Instant::now() + timeout, timeout));
        self
    }

    /// Rolls back after a timeout; later statements and commit fail.
    #[cold]
    fn abandon(&mut self, e: Error) -> Error {
        self.timed_out = true;
        self.finished = true;
        match self.rollback_now() {
            Ok(()) => e.with_hint("the transaction was rolled back"),
            Err(_) => e.with_hint("the transaction was abandoned and its connection discarded"),
        }
    }

    statement_methods!(&mut self);

    /// Sets the limit for this transaction's later statements: `Some(d)`, or
    /// `None` for no limit, in place of the database's configured query
    /// timeout.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.limit = Limit::Custom(timeout);
    }

    /// Commits the transaction.
    ///
    /// # Errors
    ///
    /// The server's error; the transaction is over either way.
    pub fn commit(mut self) -> Result<()> {
        let result = self
            .run(Op::Commit, "", Params::None, Limit::Default)
            .map(drop);
        self.finished = true;
        result
    }

    /// Rolls the transaction back.
    ///
    /// # Errors
    ///
    /// The server's error; the connection is then discarded, not reused.
    pub fn rollback(mut self) -> Result<()> {
        self.finished = true;
        self.rollback_now()
    }

    fn rollback_now(&mut self) -> Result<()> {
        let result = self
            .shared
            .run(
                Some(self.conn.get()),
                Op::Rollback,
                "",
                Params::None,
                self.limit,
            )
            .map(drop);
        // The rollback may have undone a server-side limit set in the transaction.
        self.conn.get().server_timeout = None;
        if result.is_err() {
            // A connection whose transaction state is unknown is never reused.
            self.conn.get().broken = true;
        }
        result
    }

    /// Runs `f` and commits, for the retry loop: the error comes with the
    /// transient kind that makes the whole transaction worth running again.
    /// Only errors the server reported before anything was committed count:
    /// a statement's transient error, or a conflict at `COMMIT` (the server
    /// rolled back); never a commit whose connection was lost.
    fn run_repeatable<T, E, F>(
        mut self,
        f: &mut F,
    ) -> std::result::Result<T, (E, Option<ErrorKind>)>
    where
        F: FnMut(&mut Transaction<'_>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        match f(&mut self) {
            Ok(value) => {
                let result = self
                    .run(Op::Commit, "", Params::None, Limit::Default)
                    .map(drop);
                self.finished = true;
                match result {
                    Ok(()) => Ok(value),
                    Err(e) => {
                        let kind = (e.kind() == ErrorKind::Conflict).then_some(e.kind());
                        Err((E::from(e), kind))
                    }
                }
            }
            Err(e) => {
                if !self.finished {
                    self.finished = true;
                    if let Err(rb) = self.rollback_now() {
                        tracing::warn!(database = %self.shared.name(), error = %rb, "rollback failed; the connection is discarded");
                    }
                }
                Err((e, self.transient))
            }
        }
    }

    fn run_closure<T, E, F>(mut self, f: F) -> std::result::Result<T, E>
    where
        F: FnOnce(&mut Transaction<'_>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        match f(&mut self) {
            Ok(value) => {
                self.commit()?;
                Ok(value)
            }
            Err(e) => {
                if !self.finished {
                    self.finished = true;
                    if let Err(rb) = self.rollback_now() {
                        tracing::warn!(database = %self.shared.name(), error = %rb, "rollback failed; the connection is discarded");
                    }
                }
                Err(e)
            }
        }
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.finished {
            if std::thread::panicking() {
                tracing::warn!(database = %self.shared.name(), "rolling back a transaction after a panic");
            }
            let _ = self.rollback_now();
        }
    }
}
