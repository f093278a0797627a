//! Work on one checked-out connection: [`PooledConnection`] (a guard that
//! goes back to the pool on drop) and [`Transaction`] (rolled back unless
//! committed), and the statement methods every handle shares. Every
//! statement method is one line into the pipeline's choke point.

use std::fmt;
use std::panic::Location;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::{self, QueryOptions};
use crate::config::MAX_QUERY_TIMEOUT;
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::{Limit, Op, Outcome, Shared};
use crate::pool::Pooled;
use crate::resilience::RetryPolicy;
use crate::sql::Tables;
use crate::value::{Params, Row, Value};

pub(crate) fn outcome_rows(o: Outcome) -> Vec<Row> {
    match o {
        Outcome::Rows(r) => r,
        Outcome::Affected(_) | Outcome::Done => Vec::new(),
    }
}

pub(crate) fn outcome_affected(o: Outcome) -> u64 {
    match o {
        Outcome::Affected(n) => n,
        Outcome::Rows(r) => r.len() as u64,
        Outcome::Done => 0,
    }
}

/// An error for the retry loop: with its kind when it is transient.
pub(crate) fn transient(e: Error) -> (Error, Option<ErrorKind>) {
    let kind = e.is_retryable().then(|| e.kind());
    (e, kind)
}

/// THE retry loop around whole transactions: `f` runs in a transaction on
/// a connection of its own, and again from the start, on a fresh
/// connection, after a transient failure, as `policy` allows.
pub(crate) fn retried_transaction<T, E, F>(
    shared: &Arc<Shared>,
    policy: &RetryPolicy,
    timeout: Option<Duration>,
    site: &'static Location<'static>,
    mut f: F,
) -> std::result::Result<T, E>
where
    F: FnMut(&mut Transaction<'_>) -> std::result::Result<T, E>,
    E: From<Error>,
{
    let lift = |e: Error| {
        let (e, kind) = transient(e);
        (E::from(e), kind)
    };
    shared.retrying(policy, "transaction", || {
        let conn = shared.checkout_within(None, site).map_err(lift)?;
        let mut tx = Transaction::start(
            Arc::clone(shared),
            TxConn::Owned(Box::new(conn)),
            Limit::DEFAULT,
        )
        .map_err(lift)?;
        if let Some(t) = timeout {
            tx = tx.with_deadline(t);
        }
        tx.run_repeatable(&mut f)
    })
}

pub(crate) fn exactly_one(rows: Vec<Row>) -> Result<Row> {
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

pub(crate) fn at_most_one(rows: Vec<Row>) -> Result<Option<Row>> {
    match rows.len() {
        0 => Ok(None),
        1 => Ok(rows.into_iter().next()),
        _ => Err(Error::new(
            ErrorKind::TooManyRows,
            "expected at most one row; use execute_query",
        )),
    }
}

/// The methods for migration scripts shared by [`PooledConnection`] and
/// [`Transaction`], through their private `run`.
macro_rules! native_methods {
    () => {
        /// Runs one statement exactly as written (no portable-SQL translation,
        /// no parameters): a migration script's.
        #[track_caller]
        pub(crate) fn execute_native(&mut self, sql: &str) -> Result<()> {
            self.run(Op::Script, sql, Params::None, Limit::DEFAULT)
                .map(drop)
        }

        /// Runs `COPY … FROM STDIN` with `data` as its input; the rows loaded.
        #[track_caller]
        pub(crate) fn copy_in(&mut self, sql: &str, data: &str) -> Result<u64> {
            self.run(
                Op::Copy,
                sql,
                Params::Positional(vec![Value::from(data)]),
                Limit::DEFAULT,
            )
            .map(outcome_affected)
        }
    };
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
        pub fn execute_query($($recv)+, sql: &str, params: impl $crate::value::IntoParams) -> $crate::error::Result<Vec<$crate::value::Row>> {
            $s.run($crate::pipeline::Op::Query, sql, params.into_params(), $crate::pipeline::Limit::DEFAULT).map($crate::session::outcome_rows)
        }

        /// Runs a statement and returns its rows, cancelling it on the server
        /// if it runs longer than `timeout`.
        ///
        /// # Errors
        ///
        /// [`QueryTimeout`](crate::ErrorKind::QueryTimeout) past `timeout`,
        /// or as [`execute_query`](Self::execute_query).
        #[track_caller]
        pub fn execute_query_with_timeout($($recv)+, sql: &str, params: impl $crate::value::IntoParams, timeout: std::time::Duration) -> $crate::error::Result<Vec<$crate::value::Row>> {
            $s.run($crate::pipeline::Op::Query, sql, params.into_params(), $crate::pipeline::Limit::custom(Some(timeout))).map($crate::session::outcome_rows)
        }

        /// Runs a query with [`QueryOptions`](crate::QueryOptions): a timeout
        /// of its own and, through a [`DatabaseManager`](crate::DatabaseManager)
        /// only, the query result cache.
        ///
        /// # Errors
        ///
        /// [`Parameter`](crate::ErrorKind::Parameter) when the options ask
        /// for the cache inside a transaction or on a held connection, or
        /// for a statement that may write; otherwise as
        /// [`execute_query_with_timeout`](Self::execute_query_with_timeout).
        #[track_caller]
        pub fn query_with($($recv)+, sql: &str, params: impl $crate::value::IntoParams, options: &$crate::cache::QueryOptions) -> $crate::error::Result<Vec<$crate::value::Row>> {
            $s.run_with(sql, params.into_params(), options)
        }

        /// Runs a statement and returns the number of rows it affected.
        ///
        /// # Errors
        ///
        /// As [`execute_query`](Self::execute_query).
        #[track_caller]
        pub fn execute($($recv)+, sql: &str, params: impl $crate::value::IntoParams) -> $crate::error::Result<u64> {
            $s.run($crate::pipeline::Op::Execute, sql, params.into_params(), $crate::pipeline::Limit::DEFAULT).map($crate::session::outcome_affected)
        }

        /// Runs a statement and returns the number of rows it affected,
        /// cancelling it on the server if it runs longer than `timeout`.
        ///
        /// # Errors
        ///
        /// [`QueryTimeout`](crate::ErrorKind::QueryTimeout) past `timeout`,
        /// or as [`execute_query`](Self::execute_query).
        #[track_caller]
        pub fn execute_with_timeout($($recv)+, sql: &str, params: impl $crate::value::IntoParams, timeout: std::time::Duration) -> $crate::error::Result<u64> {
            $s.run($crate::pipeline::Op::Execute, sql, params.into_params(), $crate::pipeline::Limit::custom(Some(timeout))).map($crate::session::outcome_affected)
        }

        /// Runs a script of statements separated by `;`, without parameters.
        ///
        /// # Errors
        ///
        /// As [`execute_query`](Self::execute_query); a script with `?` or
        /// `:name` placeholders is a [`Parameter`](crate::ErrorKind::Parameter) error.
        #[track_caller]
        pub fn execute_batch($($recv)+, sql: &str) -> $crate::error::Result<()> {
            $s.run($crate::pipeline::Op::Batch, sql, $crate::value::Params::None, $crate::pipeline::Limit::DEFAULT).map(drop)
        }

        /// Runs a query that must return exactly one row.
        ///
        /// # Errors
        ///
        /// [`NoRows`](crate::ErrorKind::NoRows) or
        /// [`TooManyRows`](crate::ErrorKind::TooManyRows), or as
        /// [`execute_query`](Self::execute_query).
        #[track_caller]
        pub fn query_one($($recv)+, sql: &str, params: impl $crate::value::IntoParams) -> $crate::error::Result<$crate::value::Row> {
            let rows = $s.execute_query(sql, params)?;
            $crate::session::exactly_one(rows).map_err(|e| e.on_database($s.shared.name()))
        }

        /// Runs a query that returns at most one row.
        ///
        /// # Errors
        ///
        /// [`TooManyRows`](crate::ErrorKind::TooManyRows), or as
        /// [`execute_query`](Self::execute_query).
        #[track_caller]
        pub fn query_opt($($recv)+, sql: &str, params: impl $crate::value::IntoParams) -> $crate::error::Result<Option<$crate::value::Row>> {
            let rows = $s.execute_query(sql, params)?;
            $crate::session::at_most_one(rows).map_err(|e| e.on_database($s.shared.name()))
        }

        /// Runs a query and deserialises each row into `T` with serde,
        /// matching fields by column name.
        ///
        /// # Errors
        ///
        /// [`Conversion`](crate::ErrorKind::Conversion) when a row does not
        /// fit `T`, or as [`execute_query`](Self::execute_query).
        #[track_caller]
        pub fn query_as<T: serde::de::DeserializeOwned>($($recv)+, sql: &str, params: impl $crate::value::IntoParams) -> $crate::error::Result<Vec<T>> {
            $s.execute_query(sql, params)?
                .iter()
                .map($crate::value::Row::deserialize)
                .collect()
        }
    };
}
pub(crate) use statement_methods;

/// A connection checked out of the pool; back to the pool on drop.
#[must_use = "the connection goes back to the pool as soon as it is dropped"]
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
    /// Wraps a connection checked out of `shared`'s pool.
    pub(crate) fn new(shared: Arc<Shared>, conn: Pooled) -> PooledConnection {
        PooledConnection {
            shared,
            conn,
            limit: Limit::DEFAULT,
        }
    }

    #[track_caller]
    fn run(&mut self, op: Op, sql: &str, params: Params, limit: Limit) -> Result<Outcome> {
        let result = self
            .shared
            .run(Some(&mut self.conn), op, sql, params, limit.or(self.limit));
        // A held connection may be inside a transaction begun by hand: its
        // writes drop cached reads at once, and its `COMMIT` (text the
        // cache cannot place) drops them all.
        cache::after_statement(&self.shared, op, sql);
        result
    }

    /// A query with options; never from the cache (a held connection may be
    /// inside a transaction begun by hand).
    #[track_caller]
    fn run_with(&mut self, sql: &str, params: Params, options: &QueryOptions) -> Result<Vec<Row>> {
        options.refuse_cache(&self.shared, "on a held connection")?;
        self.run(Op::Query, sql, params, options.limit())
            .map(outcome_rows)
    }

    statement_methods!(&mut self);

    /// What a stream or bulk load on this guard runs with: the manager's
    /// shared state, the connection and the guard's limit.
    pub(crate) fn stage_parts(&mut self) -> (Arc<Shared>, &mut Pooled, Limit) {
        (Arc::clone(&self.shared), &mut self.conn, self.limit)
    }

    native_methods!();

    /// Marks the connection broken: it is closed instead of going back to
    /// the pool (used when its session state is unknown).
    pub(crate) fn discard(&mut self) {
        self.conn.broken = true;
    }

    /// Sets the limit for this guard's later statements (and its
    /// transactions' statements): `Some(d)`, or `None` for no limit, in place
    /// of the database's configured query timeout.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.limit = Limit::custom(timeout);
    }

    /// Runs `f` in a transaction on this connection; see
    /// [`DatabaseManager::transaction`](crate::DatabaseManager::transaction).
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

    /// As [`DatabaseManager::transaction_with_timeout`](crate::DatabaseManager::transaction_with_timeout),
    /// on this connection.
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

/// The connection a transaction runs on: its own, or a guard's.
pub(crate) enum TxConn<'a> {
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
#[must_use = "a Transaction dropped without commit() is rolled back"]
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
    /// The first error that ended the transaction on the server (a deadlock
    /// victim is rolled back whole on MySQL and SQL Server; a lost connection
    /// takes its transaction with it). Such a transaction is never
    /// committed: later statements would have run outside it.
    ended: Option<Error>,
    /// The tables its statements may have changed, whose cached reads go
    /// when it commits (`None` while it wrote nothing or the database has
    /// no query cache).
    written: Option<Tables>,
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
    pub(crate) fn start(
        shared: Arc<Shared>,
        mut conn: TxConn<'a>,
        limit: Limit,
    ) -> Result<Transaction<'a>> {
        shared.run(Some(conn.get()), Op::Begin, "", Params::None, limit)?;
        Ok(Transaction {
            shared,
            conn,
            finished: false,
            limit,
            deadline: None,
            timed_out: false,
            transient: None,
            ended: None,
            written: None,
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
        if let (Some(ended), false) = (&self.ended, matches!(op, Op::Commit | Op::Rollback)) {
            return Err(ended.duplicate().with_hint(
                "the transaction already ended on the server with this error, so this statement was not run; \
                 roll back and start a new transaction",
            ));
        }
        let limit = limit.or(self.limit).within(self.deadline);
        cache::note_write(&self.shared, op, sql, &mut self.written);
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
                let ends = matches!(
                    e.kind(),
                    ErrorKind::Conflict | ErrorKind::Connect | ErrorKind::ConnectTimeout
                );
                if ends && self.ended.is_none() && !matches!(op, Op::Commit | Op::Rollback) {
                    self.ended = Some(e.duplicate());
                }
                Err(e)
            }
            ok => ok,
        }
    }

    /// Commits, unless a statement's error ended the transaction on the
    /// server: then it is rolled back and that error returned. A commit that
    /// fails is followed by a rollback, so the connection never goes back to
    /// the pool inside a transaction (if that fails too, it is discarded).
    fn commit_now(&mut self) -> Result<()> {
        self.finished = true;
        if let Some(e) = self.ended.take() {
            let _ = self.rollback_now();
            return Err(e.with_hint(
                "the transaction was rolled back, not committed: this error ended it on the server, \
                 so statements after it would not have been part of it",
            ));
        }
        let result = self
            .run(Op::Commit, "", Params::None, Limit::DEFAULT)
            .map(drop);
        // Even a failed commit may have committed (a lost connection).
        cache::after_commit(&self.shared, self.written.take());
        if result.is_err() {
            let _ = self.rollback_now();
        }
        result
    }

    /// Limits the whole transaction to `timeout` from now.
    pub(crate) fn with_deadline(mut self, timeout: Duration) -> Self {
        let timeout = timeout.min(MAX_QUERY_TIMEOUT);
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

    /// A query with options; never from the cache (a transaction's reads
    /// may see its own uncommitted writes).
    #[track_caller]
    fn run_with(&mut self, sql: &str, params: Params, options: &QueryOptions) -> Result<Vec<Row>> {
        options.refuse_cache(&self.shared, "inside a transaction")?;
        self.run(Op::Query, sql, params, options.limit())
            .map(outcome_rows)
    }

    statement_methods!(&mut self);

    /// What the transaction runs on (its database's shared state).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// What a stream or bulk load in this transaction runs with: the
    /// manager's shared state, the connection and the limit of each
    /// statement within the transaction's deadline. A transaction that
    /// timed out or ended on the server refuses, as for any statement.
    pub(crate) fn stage_parts(&mut self) -> Result<(Arc<Shared>, &mut Pooled, Limit)> {
        if self.timed_out {
            return Err(Error::new(
                ErrorKind::QueryTimeout,
                "the transaction was rolled back when a statement timed out; start a new transaction",
            )
            .on_database(self.shared.name()));
        }
        if let Some(ended) = &self.ended {
            return Err(ended.duplicate().with_hint(
                "the transaction already ended on the server with this error, so this statement was not run; \
                 roll back and start a new transaction",
            ));
        }
        let limit = Limit::DEFAULT.or(self.limit).within(self.deadline);
        Ok((Arc::clone(&self.shared), self.conn.get(), limit))
    }

    native_methods!();

    /// Sets the limit for this transaction's later statements: `Some(d)`, or
    /// `None` for no limit, in place of the database's configured query
    /// timeout.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.limit = Limit::custom(timeout);
    }

    /// Commits the transaction.
    ///
    /// # Errors
    ///
    /// The server's error; the transaction is over either way. If a
    /// statement of the transaction failed with an error that ends a
    /// transaction on the server (a deadlock, a lost connection), nothing is
    /// committed: the transaction is rolled back and that error returned,
    /// even when the caller went on after it.
    pub fn commit(mut self) -> Result<()> {
        self.commit_now()
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
    pub(crate) fn run_repeatable<T, E, F>(
        mut self,
        f: &mut F,
    ) -> std::result::Result<T, (E, Option<ErrorKind>)>
    where
        F: FnMut(&mut Transaction<'_>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        match f(&mut self) {
            Ok(value) => {
                let result = self.commit_now();
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
