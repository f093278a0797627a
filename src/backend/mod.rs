//! One object-safe trait that every backend implements, one file each.
//!
//! Backends know nothing of the manager, the pool policy or the pipeline:
//! they connect, run a statement in native SQL with already-ordered values,
//! and translate their driver's errors and types.

use std::sync::Arc;
use std::time::Duration;

use crate::config::DatabaseConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::sql::Dialect;
use crate::status::BackendKind;
use crate::value::{Row, Value};

#[cfg(any(feature = "mysql", feature = "sqlite"))]
use bulk::GatheredRows;
pub(crate) use bulk::{BulkKind, BulkPlan, BulkRows};

#[cfg(any(feature = "postgres", feature = "mysql", feature = "mssql"))]
mod blocking;
mod bulk;
#[cfg(feature = "mssql")]
mod mssql;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

/// What the watchdog can do to one connection's running statement.
pub(crate) trait Canceller: Send + Sync + 'static {
    /// Asks the server to stop the statement now running on the connection.
    /// May block (the watchdog runs it on a thread of its own), bounded by the backend's
    /// connect timeout.
    fn cancel(&self) -> Result<()>;

    /// Cuts the connection's transport so that a caller blocked on a server
    /// that does not answer gets an error at once. Must not block. Returns
    /// false when the backend cannot do it.
    fn abort(&self) -> bool {
        false
    }
}

/// Opens connections for one database. Shared by the pool's threads.
pub(crate) trait Connector: Send + Sync + 'static {
    /// Opens one connection, bounded by the connect timeout.
    fn connect(&self) -> Result<Box<dyn Connection>>;

    /// The SQL dialect statements are translated to.
    fn dialect(&self) -> Dialect;

    /// True when the driver's blocking client panics if called on a thread
    /// that drives an async runtime (the `postgres` crate does); the pipeline
    /// refuses such calls with a clear error instead.
    fn refuses_async_context(&self) -> bool {
        false
    }
}

/// One open connection. Statements arrive in native SQL with values in
/// placeholder order.
pub(crate) trait Connection: Send {
    /// Runs a statement and returns its rows.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;

    /// Runs a statement and returns the number of rows it affected.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64>;

    /// Runs a script of statements without parameters.
    fn batch(&mut self, sql: &str) -> Result<()>;

    /// Runs a `COPY … FROM STDIN` statement with `data` as its input (the
    /// COPY protocol), returning the rows it loaded. Only PostgreSQL has it.
    fn copy_in(&mut self, _sql: &str, _data: &[u8]) -> Result<u64> {
        Err(Error::new(
            ErrorKind::Parameter,
            "COPY … FROM STDIN with inline data is PostgreSQL's; this server has no COPY protocol",
        ))
    }

    /// Starts a transaction.
    fn begin(&mut self) -> Result<()> {
        self.batch("BEGIN")
    }

    /// Commits the open transaction.
    fn commit(&mut self) -> Result<()> {
        self.batch("COMMIT")
    }

    /// Rolls the open transaction back.
    fn rollback(&mut self) -> Result<()> {
        self.batch("ROLLBACK")
    }

    /// A cheap round trip proving the connection still works.
    fn ping(&mut self) -> Result<()>;

    /// The handle the watchdog uses to stop this connection's running
    /// statement (made once per connection; cloning it is cheap).
    fn canceller(&self) -> Arc<dyn Canceller>;

    /// Sets the server's own limit on each statement of this session, the
    /// second line of defence behind the watchdog (`None`: no limit). Called
    /// only when the wanted limit differs from the last one set. May be
    /// transactional on the server (PostgreSQL): the caller forgets what it
    /// set when a transaction is rolled back.
    fn set_server_timeout(&mut self, limit: Option<Duration>) -> Result<()>;

    /// True when [`set_server_timeout`](Self::set_server_timeout) lasts only
    /// until the end of the current transaction (or does nothing outside
    /// one), so the caller must not remember it (PostgreSQL behind
    /// pgbouncer, where it is a `SET LOCAL`).
    fn server_timeout_is_local(&self) -> bool {
        false
    }

    /// True when the driver knows the connection is unusable.
    fn is_closed(&self) -> bool;

    /// True when the server closed the connection (or sent something
    /// unasked) while it sat idle, found without a round trip. The pool asks
    /// before handing a connection out, so a statement is never written to
    /// a connection already known dead. Default: cannot tell.
    fn peer_closed(&self) -> bool {
        false
    }

    /// Puts back a session that a statement may have changed (a temporary
    /// table, a role, a search path or current database, a transaction left
    /// open, any `SET`) as a new connection has it, with the settings the
    /// backend makes at connect made again. The pool calls it before a
    /// connection that ran such statements is handed to anyone else, bounded
    /// by the connect timeout; the server-side statement limit is unknown
    /// afterwards. `Ok(false)` when the backend has no reset: the connection
    /// is closed instead (a new one is opened when needed), which is always
    /// correct. An error also closes it.
    fn reset_session(&mut self) -> Result<bool> {
        Ok(false)
    }

    /// Whether `error`, the failure of a statement the watchdog cancelled at
    /// its deadline, proves that the cancel hit that statement, so that no
    /// part of it is left to hit the next one: only then is the connection
    /// reused. By default the server's own "cancelled" error
    /// ([`QueryTimeout`](ErrorKind::QueryTimeout)) proves it.
    fn cancel_confirmed(&self, error: &Error) -> bool {
        error.kind() == ErrorKind::QueryTimeout
    }

    /// The host of a host list this connection went to (`host:port` as
    /// written), when the topology chose it.
    fn host(&self) -> Option<&str> {
        None
    }

    /// Opens a stream of the rows of `sql`: the execute stage of a
    /// [`RowStream`](crate::RowStream). A backend that reads rows as they
    /// come keeps the open result inside the connection and returns
    /// `Ok(None)`; the rows are then read with [`fetch`](Self::fetch) until
    /// it says there are no more, and [`close_stream`](Self::close_stream)
    /// ends it. By default the whole result is read at once and returned
    /// (memory is then not flat).
    fn open_stream(&mut self, sql: &str, params: &[Value]) -> Result<Option<Vec<Row>>> {
        self.query(sql, params).map(Some)
    }

    /// Reads up to `max` rows of the open stream into `out`; `Ok(false)`
    /// once the result is exhausted (the stream is then closed).
    fn fetch(&mut self, max: usize, out: &mut Vec<Row>) -> Result<bool> {
        let _ = (max, out);
        Ok(false)
    }

    /// Ends an open stream before its last row. `true` when the
    /// connection is clean afterwards; `false` when it must be discarded
    /// (the rest of the result would otherwise reach the next statement).
    fn close_stream(&mut self) -> bool {
        true
    }

    /// Writes one chunk of a bulk operation: the execute stage of a bulk
    /// load. Returns the rows affected. By default, statements built for
    /// the dialect ([`BulkPlan::run_statements`]); backends override it
    /// with their server's fastest path.
    fn bulk_write(&mut self, plan: &BulkPlan, rows: &[Vec<Value>]) -> Result<u64> {
        plan.run_statements(rows, &mut |sql, params| self.execute(sql, params))
    }

    /// Whether [`bulk_write_rows`](Self::bulk_write_rows) writes `plan`'s
    /// rows as they come, so that a load need not gather its chunks first.
    fn bulk_writes_rows_as_they_come(&self, plan: &BulkPlan) -> bool {
        let _ = plan;
        false
    }

    /// Writes one chunk of a bulk operation whose rows come one at a time
    /// from the caller's input, for backends that
    /// [write them as they come](Self::bulk_writes_rows_as_they_come);
    /// returns the rows affected. An error from `rows` (a row that does
    /// not fit the columns) is returned as it is. By default the chunk is
    /// gathered and given to [`bulk_write`](Self::bulk_write).
    fn bulk_write_rows(&mut self, plan: &BulkPlan, rows: &mut dyn BulkRows) -> Result<u64> {
        let all = bulk::gather(rows)?;
        self.bulk_write(plan, &all)
    }
}

/// Makes the connector for a configuration, or says which feature is missing.
pub(crate) fn connector(config: &DatabaseConfig) -> Result<Box<dyn Connector>> {
    match config.kind {
        #[cfg(feature = "postgres")]
        BackendKind::Postgres => Ok(Box::new(postgres::PgConnector::new(config)?)),
        #[cfg(feature = "mysql")]
        BackendKind::MySql => Ok(Box::new(mysql::MyConnector::new(config)?)),
        #[cfg(feature = "sqlite")]
        BackendKind::Sqlite => Ok(Box::new(sqlite::SqliteConnector::new(config)?)),
        #[cfg(feature = "mssql")]
        BackendKind::MsSql => Ok(Box::new(mssql::MsConnector::new(config)?)),
        #[allow(unreachable_patterns)]
        kind => Err(Error::new(
            ErrorKind::FeatureDisabled,
            format!(
                "this build of dbmanager has no {kind} support; enable the cargo feature `{}`",
                kind.feature()
            ),
        )),
    }
}

/// How long one connect may take, all of it (name resolution, TCP, TLS,
/// login, session setup), and the setting that changes it, for the error
/// when it was not enough.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "mssql"))]
#[derive(Clone, Debug)]
pub(crate) struct ConnectLimit {
    pub(crate) timeout: Duration,
    setting: Arc<str>,
}

#[cfg(any(feature = "postgres", feature = "mysql", feature = "mssql"))]
impl ConnectLimit {
    pub(crate) fn of(config: &DatabaseConfig) -> ConnectLimit {
        let setting = config
            .variable("CONNECT_TIMEOUT")
            .unwrap_or_else(|| "DatabaseConfigBuilder::connect_timeout".to_owned());
        ConnectLimit {
            timeout: config.connect_timeout,
            setting: setting.into(),
        }
    }

    /// What to change when the limit is too short.
    pub(crate) fn hint(&self) -> String {
        format!("if the server is only slow, raise {}", self.setting)
    }

    /// Resolving `host` (for a connect to `target`) did not finish in time.
    #[cfg(any(feature = "postgres", feature = "mssql"))]
    #[cold]
    pub(crate) fn resolve_timed_out(&self, host: &str, target: &str) -> Error {
        Error::new(
            ErrorKind::ConnectTimeout,
            format!(
                "resolving the host name `{host}` of {target} took longer than the connect timeout of {}; check the DNS servers (or connect by IP address), and if they are only slow, raise {}",
                crate::error::fmt_duration(self.timeout),
                self.setting
            ),
        )
    }
}

/// Classifies a transport-level failure while connecting.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "mssql"))]
#[cold]
pub(crate) fn connect_error(
    io_timed_out: bool,
    target: &str,
    limit: &ConnectLimit,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    if io_timed_out {
        Error::new(
            ErrorKind::ConnectTimeout,
            format!(
                "connecting to {target} took longer than the connect timeout of {}: the server (or a proxy in front of it) did not answer in time; {}",
                crate::error::fmt_duration(limit.timeout),
                limit.hint()
            ),
        )
        .with_source(source)
    } else {
        Error::new(
            ErrorKind::Connect,
            format!("could not connect to {target}; check that the server is running and the host and port are right"),
        )
        .with_source(source)
    }
}
