//! MySQL and MariaDB through the `mysql` crate (rustls), pooled with
//! `r2d2_mysql`.
//!
//! Statements run through the binary protocol, so values arrive typed; the
//! driver's per-connection statement cache makes a repeated statement one
//! round trip.
//!
//! The driver bounds only the TCP connect; its name lookup, TLS handshake,
//! login and `init` statements have no limit of their own. A connect
//! therefore runs on a helper thread that the caller stops waiting for at
//! the connect timeout (see [`Dialer`]).

use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql::consts::{CapabilityFlags, ColumnFlags, ColumnType};
use mysql::prelude::Queryable;
use mysql::{Binary, Opts, OptsBuilder, QueryResult};
use r2d2::ManageConnection;
use r2d2_mysql::MySqlConnectionManager;

use super::blocking::SocketHandle;
use super::bulk::wire_size;
use super::{connect_error, BulkPlan, BulkRows, ConnectLimit, Connection, Connector, GatheredRows};
use crate::backend::Canceller;
use crate::config::DatabaseConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::sql::Dialect;
use crate::value::{Columns, Row, Value, Values};

/// What is read at most of a stream closed half way, after its statement
/// was stopped on the server; past that the connection is closed instead.
/// What is still on its way after `KILL QUERY` is what the socket buffers
/// hold: a few megabytes on loopback (about a million small rows, read in
/// some 100 ms), less elsewhere.
const DRAIN_BYTES: usize = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// MySQL's character set number for binary strings.
const BINARY_CHARSET: u16 = 63;

/// Rows a stream reads per fetch at most. Rows come off the socket as they
/// are read, so a small batch costs no round trip; it stays in the CPU's
/// cache while the caller reads it, and its rows' memory is soon reused.
/// Each fetch is one watchdog registration.
const STREAM_ROWS_PER_FETCH: usize = 128;

pub(crate) struct MyConnector {
    manager: MySqlConnectionManager,
    /// For the short-lived connections that send `KILL QUERY`.
    kill_opts: Opts,
    dialer: Arc<Dialer>,
    /// The connection string's database, if it names one.
    database: Option<String>,
}

impl MyConnector {
    pub(crate) fn new(config: &DatabaseConfig) -> Result<Self> {
        let mut url = url::Url::parse(config.url.trim())
            .map_err(|_| Error::config("the MySQL connection string is not a valid URL"))?;
        let target = format!(
            "MySQL at {}:{}",
            url.host_str().unwrap_or("localhost"),
            url.port().unwrap_or(3306)
        );
        // The driver only knows `mysql://`; `mariadb://` and `mysql+driver://` mean the same.
        let rest = url.as_str()[url.scheme().len()..].to_owned();
        url = url::Url::parse(&format!("mysql{rest}"))
            .map_err(|_| Error::config("the MySQL connection string is not a valid URL"))?;
        let opts = Opts::from_url(url.as_str()).map_err(|e| {
            Error::config(format!(
                "the MySQL connection string cannot be used: {}",
                url_error_reason(&e)
            ))
        })?;
        // Affected-row counts are rows matched, not rows changed, as on the
        // other backends (and SQLAlchemy's default): an UPDATE that sets a
        // value it already has still counts its row.
        let database = opts.get_db_name().map(str::to_owned);
        let capabilities = opts.get_additional_capabilities() | CapabilityFlags::CLIENT_FOUND_ROWS;
        let builder = OptsBuilder::from_opts(opts)
            .additional_capabilities(capabilities)
            .tcp_connect_timeout(Some(config.connect_timeout))
            .prefer_socket(false)
            .stmt_cache_size(256);
        // Every read and write of the handshake is bounded too, so that the
        // helper thread of a connect its caller gave up on ends soon after;
        // the session itself has no socket timeouts (the watchdog bounds its
        // statements), so `Dialer::dial` clears them once connected.
        #[cfg(unix)]
        let builder = builder
            .read_timeout(Some(config.connect_timeout))
            .write_timeout(Some(config.connect_timeout));
        // READ_ONLY: every transaction of the session is read-only, so the
        // server refuses the writes the library's check misses (error 1792).
        let builder = if config.read_only {
            builder.init(vec!["SET SESSION TRANSACTION READ ONLY"])
        } else {
            builder
        };
        // A cancel must never wait long on a server that does not answer.
        let kill_opts = Opts::from(
            builder
                .clone()
                .stmt_cache_size(0)
                .read_timeout(Some(config.connect_timeout))
                .write_timeout(Some(config.connect_timeout)),
        );
        Ok(MyConnector {
            manager: MySqlConnectionManager::new(builder),
            kill_opts,
            dialer: Arc::new(Dialer {
                target,
                limit: ConnectLimit::of(config),
                running: AtomicUsize::new(0),
                // The pool opens at most its size at once; a few more for
                // the probe, health checks and cancels.
                most_running: config.max_size() as usize + 8,
            }),
            database,
        })
    }
}

/// Opens connections within the connect limit, all of it: name lookup, TCP,
/// TLS, login and the `init` statements. Each connect runs on a helper
/// thread and the caller stops waiting at the deadline. A helper the caller
/// gave up on ends soon after (every read and write of the handshake is
/// bounded by the connect timeout), and at most `most_running` run at once,
/// so a server that hangs cannot pile up threads: past that, connects fail
/// at once until the earlier ones end.
struct Dialer {
    target: String,
    limit: ConnectLimit,
    /// Helper threads not finished yet.
    running: AtomicUsize,
    most_running: usize,
}

/// Counts a helper thread as finished when dropped.
struct Running(Arc<Dialer>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Dialer {
    /// Runs `connect` on a helper thread and waits for it at most the
    /// connect timeout. With `clear_timeouts`, the connection's socket
    /// timeouts (the handshake's) are cleared before it is handed over.
    fn dial(
        self: &Arc<Self>,
        clear_timeouts: bool,
        connect: impl FnOnce() -> mysql::Result<mysql::Conn> + Send + 'static,
    ) -> Result<mysql::Conn> {
        let deadline = Instant::now() + self.limit.timeout;
        let earlier = self.running.fetch_add(1, Ordering::AcqRel);
        let running = Running(Arc::clone(self));
        if earlier >= self.most_running {
            return Err(Error::new(
                ErrorKind::ConnectTimeout,
                format!(
                    "{earlier} earlier connects to {} took longer than the connect timeout of {} and have not given up yet, so no other is started; {}",
                    self.target,
                    crate::error::fmt_duration(self.limit.timeout),
                    self.limit.hint()
                ),
            ));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("dbmanager-mysql-connect".into())
            .spawn(move || {
                let _running = running;
                let conn = connect().and_then(|conn| {
                    if clear_timeouts {
                        clear_socket_timeouts(&conn)?;
                    }
                    Ok(conn)
                });
                // When the caller has gone, the connection closes here.
                let _ = tx.send(conn);
            });
        if let Err(e) = spawned {
            return Err(Error::new(
                ErrorKind::Connect,
                "could not start a thread to connect to MySQL",
            )
            .with_source(e));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.failed(e)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(connect_error(
                true,
                &self.target,
                &self.limit,
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the server did not finish the handshake in time",
                ),
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Error::new(
                ErrorKind::Connect,
                format!(
                    "connecting to {} failed: the connect thread panicked",
                    self.target
                ),
            )),
        }
    }

    /// The error of a connect the driver gave up on.
    #[cold]
    fn failed(&self, e: mysql::Error) -> Error {
        match e {
            mysql::Error::MySqlError(_) => classify(e),
            other => {
                let timed_out = matches!(&other, mysql::Error::IoError(io) if matches!(io.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock))
                    || matches!(
                        &other,
                        mysql::Error::DriverError(mysql::DriverError::ConnectTimeout)
                    );
                connect_error(timed_out, &self.target, &self.limit, other)
            }
        }
    }
}

/// Clears a connection's socket timeouts (set for the handshake only).
#[cfg(unix)]
fn clear_socket_timeouts(conn: &mysql::Conn) -> mysql::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: the descriptor is the connection's and stays open while `conn`
    // lives; the stream is never dropped, so it never closes it. Setting a
    // socket option through it is the same call for any socket type.
    let socket =
        std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(conn.as_raw_fd()) });
    socket.set_read_timeout(None)?;
    socket.set_write_timeout(None)?;
    Ok(())
}

/// Without a descriptor to reach, the handshake had no socket timeouts.
#[cfg(not(unix))]
fn clear_socket_timeouts(_conn: &mysql::Conn) -> mysql::Result<()> {
    Ok(())
}

/// The driver's URL error without values (a value may be a secret).
fn url_error_reason(e: &mysql::UrlError) -> String {
    match e {
        mysql::UrlError::UnknownParameter(param) => format!("unknown parameter `{param}`"),
        mysql::UrlError::InvalidValue(param, _) => format!("invalid value for `{param}`"),
        _ => "expected mysql://user:password@host:port/database".to_owned(),
    }
}

impl Connector for MyConnector {
    fn connect(&self) -> Result<Box<dyn Connection>> {
        let manager = self.manager.clone();
        let conn = self.dialer.dial(true, move || manager.connect())?;
        let socket = SocketHandle::of(&conn);
        let cancel_requested = Arc::new(AtomicBool::new(false));
        let canceller: Arc<dyn Canceller> = Arc::new(Kill {
            opts: self.kill_opts.clone(),
            dialer: Arc::clone(&self.dialer),
            id: conn.connection_id(),
            socket: socket.clone(),
            requested: Arc::clone(&cancel_requested),
        });
        Ok(Box::new(MyConnection {
            conn: Some(conn),
            stream: None,
            pending: None,
            cut: false,
            limit: None,
            limit_stale: false,
            canceller,
            socket,
            flavor: None,
            database: self.database.clone(),
            resettable: None,
            max_packet: None,
            cancel_requested,
            last_shape: None,
            statements: Statements::default(),
        }))
    }

    fn dialect(&self) -> Dialect {
        Dialect::MySql
    }
}

struct MyConnection {
    /// `None` only while a stream owns the connection ([`Streaming`]).
    conn: Option<mysql::Conn>,
    /// An unbuffered result being read, with the connection inside.
    stream: Option<Streaming>,
    /// The error that ended a stream after the rows already fetched,
    /// for the stream's next fetch.
    pending: Option<Error>,
    /// The socket was cut (a stream ended half way): the connection is
    /// closed and never reused.
    cut: bool,
    /// The session's statement limit as last asked for.
    limit: Option<Duration>,
    /// The session's limit differs from `limit` (lifted for a stream, or
    /// asked for while one was open): it is set again before the next
    /// statement.
    limit_stale: bool,
    canceller: Arc<dyn Canceller>,
    socket: SocketHandle,
    /// Which server-side limit the server knows, found on first use.
    flavor: Option<Flavor>,
    /// The connection string's database, selected again after a reset.
    database: Option<String>,
    /// Whether the server can reset a session in place, found on first use.
    resettable: Option<bool>,
    /// The session's `max_allowed_packet`, found on first bulk write.
    max_packet: Option<usize>,
    /// The watchdog asked to stop what runs (see [`Kill`]).
    cancel_requested: Arc<AtomicBool>,
    /// The columns of the last result read, reused by the next result
    /// with the same columns (a statement run again).
    last_shape: Option<Arc<Shape>>,
    /// The statements prepared last, run by handle.
    statements: Statements,
}

#[derive(Clone, Copy)]
enum Flavor {
    /// MariaDB: `max_statement_time`, seconds, every statement.
    MariaDb,
    /// MySQL: `max_execution_time`, milliseconds, `SELECT` only.
    MySql,
}

/// Stops a running statement with `KILL QUERY <id>` sent over a short-lived
/// second connection; cuts the socket when the server does not answer.
struct Kill {
    opts: Opts,
    dialer: Arc<Dialer>,
    id: u32,
    socket: SocketHandle,
    /// Set on every cancel: a bulk write sees it between its statements,
    /// where a `KILL QUERY` finds nothing to stop.
    requested: Arc<AtomicBool>,
}

impl Canceller for Kill {
    fn cancel(&self) -> Result<()> {
        self.requested.store(true, Ordering::Relaxed);
        let opts = self.opts.clone();
        let mut conn = self.dialer.dial(false, move || mysql::Conn::new(opts))?;
        conn.query_drop(format!("KILL QUERY {}", self.id))
            .map_err(classify)
    }

    fn abort(&self) -> bool {
        self.socket.cut()
    }
}

fn to_params(params: &[Value]) -> mysql::Params {
    if params.is_empty() {
        mysql::Params::Empty
    } else {
        mysql::Params::Positional(params.iter().map(to_mysql).collect())
    }
}

impl Connection for MyConnection {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.idle()?;
        let conn = self.conn.as_mut().ok_or_else(closed)?;
        let statement = self.statements.get_or_prepare(conn, sql)?;
        let mut result = conn
            .exec_iter(statement, to_params(params))
            .map_err(classify)?;
        let mut out = Vec::new();
        // The first result set is the statement's; later ones (procedures) are drained.
        if let Some(set) = result.iter() {
            let shape = Shape::reuse(&mut self.last_shape, &set.columns());
            for row in set {
                out.push(shape.row(row.map_err(classify)?)?);
            }
        }
        while let Some(set) = result.iter() {
            for row in set {
                row.map_err(classify)?;
            }
        }
        Ok(out)
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let (conn, statement) = self.prepared(sql)?;
        conn.exec_drop(statement, to_params(params))
            .map_err(classify)?;
        Ok(conn.affected_rows())
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        // Every result set is read: `query_drop` would drop the error of a
        // later statement of a multi-statement script.
        let mut result = self.idle()?.query_iter(sql).map_err(classify)?;
        while let Some(set) = result.iter() {
            for row in set {
                row.map_err(classify)?;
            }
        }
        Ok(())
    }

    fn ping(&mut self) -> Result<()> {
        self.idle()?.ping().map_err(classify)
    }

    fn is_closed(&self) -> bool {
        self.cut
    }

    fn peer_closed(&self) -> bool {
        self.socket.peer_closed()
    }

    /// `COM_RESET_CONNECTION` (`Conn::reset`): the server rolls back a
    /// transaction left open, drops temporary tables, releases `GET_LOCK`
    /// and table locks, and sets every session variable back to its global
    /// value (the read-only setting and the statement limit too); the driver
    /// empties its statement cache (the server dropped them) and runs the
    /// connect-time `init` statements again (our READ_ONLY setting, and any
    /// others made at connect). The current database is not part of that
    /// reset (measured on MariaDB 10.11), so the connection string's is
    /// selected again.
    /// Servers too old for it get `COM_CHANGE_USER`, which runs no `init`:
    /// those connections are closed instead.
    fn reset_session(&mut self) -> Result<bool> {
        if !self.has_reset_connection()? {
            return Ok(false);
        }
        let database = self.database.clone();
        // The session's variables are the global ones again.
        self.max_packet = None;
        // The server drops the session's statements.
        self.statements.clear();
        let conn = self.idle()?;
        conn.reset().map_err(classify)?;
        if let Some(db) = database.as_deref() {
            // COM_INIT_DB: one round trip, as asking which one is current would be.
            conn.select_db(db).map_err(classify)?;
        }
        Ok(true)
    }

    /// Only the server's own report that `KILL QUERY` stopped the statement
    /// (1317, ER_QUERY_INTERRUPTED) proves the cancel hit it. The server's
    /// statement limit (3024, 1969 on MariaDB) ends it a second after the
    /// deadline, when our `KILL QUERY` may not have arrived yet: the kill
    /// could then stop whatever the connection runs next.
    fn cancel_confirmed(&self, error: &Error) -> bool {
        error.db_code() == Some("1317")
    }

    fn canceller(&self) -> Arc<dyn Canceller> {
        Arc::clone(&self.canceller)
    }

    /// While a stream is open nothing can be sent: the limit is set before
    /// the next statement instead.
    fn set_server_timeout(&mut self, limit: Option<Duration>) -> Result<()> {
        self.limit = limit;
        if self.stream.is_some() {
            self.limit_stale = true;
            return Ok(());
        }
        self.send_limit(limit)
    }

    /// The binary protocol's unbuffered result: rows are read from the
    /// socket as [`fetch`](Connection::fetch) asks for them.
    ///
    /// The server's own statement limit (`max_statement_time`,
    /// `max_execution_time`) bounds a whole statement, while a stream's
    /// timeout bounds each fetch: it is lifted for the stream (the watchdog
    /// still bounds every fetch) and set again before the next statement.
    fn open_stream(&mut self, sql: &str, params: &[Value]) -> Result<Option<Vec<Row>>> {
        self.pending = None;
        // Prepared before the limit is lifted: a connection readied for a
        // statement gets its limit back.
        let statement = self.prepared(sql)?.1.clone();
        if self.limit.is_some() {
            self.send_limit(None)?;
        }
        let conn = self.conn.take().ok_or_else(closed)?;
        match OpenResult::open(conn, &statement, to_params(params)) {
            Ok(mut open) => {
                let shape = Shape::reuse(&mut self.last_shape, &open.result().columns());
                self.stream = Some(Streaming { open, shape });
                Ok(None)
            }
            Err((conn, e)) => {
                self.conn = Some(conn);
                Err(classify(e))
            }
        }
    }

    fn fetch(&mut self, max: usize, out: &mut Vec<Row>) -> Result<bool> {
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(false);
        };
        let result = stream.open.result();
        let mut failure = None;
        for _ in 0..max.min(STREAM_ROWS_PER_FETCH) {
            match result.next() {
                Some(Ok(row)) => match stream.shape.row(row) {
                    Ok(row) => out.push(row),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                },
                // The server's error ended the result: the session is
                // clean (a `KILL QUERY` at a deadline ends it so too).
                // The rows before it are handed out first, and the error
                // at the next fetch, unless it is the cancel's, which
                // belongs to this fetch's deadline.
                Some(Err(e)) => {
                    self.end_stream();
                    let e = classify(e);
                    if out.is_empty() || e.db_code() == Some("1317") {
                        return Err(e);
                    }
                    self.pending = Some(e);
                    return Ok(true);
                }
                None => {
                    self.end_stream();
                    return Ok(false);
                }
            }
        }
        match failure {
            // A row that could not be read: the rest of the result is
            // still on its way.
            Some(e) => {
                self.close_stream();
                Err(e)
            }
            None => Ok(true),
        }
    }

    /// Multi-row statements, each sized to fit the server's
    /// `max_allowed_packet`: a larger one would be refused, and the
    /// connection closed. Updates join the target to their rows as a
    /// derived table (`UPDATE t JOIN (SELECT … UNION ALL SELECT …) ON keys`),
    /// so a key that matches nothing inserts nothing; deletes match their
    /// keys with `IN (…)`.
    /// A row the server would refuse whatever the statement (it would
    /// close the connection too) is an error before anything is sent.
    fn bulk_write(&mut self, plan: &BulkPlan, rows: &[Vec<Value>]) -> Result<u64> {
        if plan.binds_rows_as_given() {
            return self.bulk_write_rows(plan, &mut GatheredRows(rows.iter()));
        }
        // A cancel of an earlier statement says nothing of this one.
        self.cancel_requested.store(false, Ordering::Relaxed);
        let budget = self.statement_budget()?;
        let packet = self.max_packet.unwrap_or(MAX_PAYLOAD);
        if let Some(i) = rows.iter().position(|r| {
            let sizes = r.iter().map(wire_size);
            too_large(sizes.clone().sum(), sizes, packet)
        }) {
            let bytes: usize = rows[i].iter().map(wire_size).sum();
            return Err(too_large_error(i, bytes, packet));
        }
        if let Some((i, len)) = plan.key_too_long(rows) {
            return Err(Error::parameter(format!(
                "the chunk's row {i} (counting from 0) has a text key of {len} bytes; a MySQL bulk update matches text keys of up to 65535 bytes (the server cuts longer ones short); update that row with execute"
            )));
        }
        // Updates go run by run, each run's keys distinct, so that a key
        // repeated in the chunk takes its later row.
        plan.write_in_runs(rows, &mut |run, _| {
            plan.run_statements_within(run, budget, &mut |sql, params| {
                self.not_cancelled()?;
                self.execute(sql, params)
            })
        })
    }

    fn bulk_writes_rows_as_they_come(&self, plan: &BulkPlan) -> bool {
        plan.binds_rows_as_given()
    }

    /// Multi-row inserts and upserts built as the rows come: each row's
    /// values are moved into the driver's (no copy of text or bytes), and a
    /// statement is sent when it holds the most rows one may take, or when
    /// the next row would take it past the server's `max_allowed_packet`.
    /// Statements of the same size are prepared once (the driver's cache
    /// keeps them between chunks) and run by handle. A row the server
    /// would refuse whatever the statement is an error before it is sent.
    fn bulk_write_rows(&mut self, plan: &BulkPlan, rows: &mut dyn BulkRows) -> Result<u64> {
        if !plan.binds_rows_as_given() {
            let mut all = Vec::new();
            let mut row = Vec::new();
            while rows.next_row(&mut row)? {
                all.push(std::mem::take(&mut row));
            }
            return self.bulk_write(plan, &all);
        }
        // A cancel of an earlier statement says nothing of this one.
        self.cancel_requested.store(false, Ordering::Relaxed);
        let budget = self.statement_budget()?;
        let packet = self.max_packet.unwrap_or(MAX_PAYLOAD);
        let cap = plan.max_rows_per_statement();
        let width = plan.columns.len();
        let mut batch = Batch {
            params: Vec::with_capacity(cap * width),
            rows: 0,
            bytes: 0,
            statement: None,
        };
        let mut affected = 0;
        let mut row = Vec::with_capacity(width);
        let mut i = 0;
        while rows.next_row(&mut row)? {
            let sizes = row.iter().map(wire_size);
            let bytes: usize = sizes.clone().sum();
            if too_large(bytes, sizes, packet) {
                return Err(too_large_error(i, bytes, packet));
            }
            if batch.rows == cap || (batch.rows > 0 && batch.bytes + bytes > budget) {
                self.not_cancelled()?;
                affected += self.send(&mut batch, plan, cap * width)?;
            }
            batch.params.extend(row.drain(..).map(into_mysql));
            batch.rows += 1;
            batch.bytes += bytes;
            i += 1;
        }
        if batch.rows > 0 {
            self.not_cancelled()?;
            affected += self.send(&mut batch, plan, 0)?;
        }
        Ok(affected)
    }

    /// The rest of the result may be any size, so it is not read as it
    /// is: the statement is stopped on the server with `KILL QUERY` (as at
    /// a deadline), and only what was already on its way is read, up to
    /// its end or the server's "interrupted" error. A `KILL QUERY` that
    /// finds the statement done does not touch the next one (measured on
    /// MariaDB 10.11), so either way the session is clean. When the kill
    /// cannot be sent, or the rest does not end within [`DRAIN_BYTES`] and
    /// [`DRAIN_TIME`], the
    /// socket is cut and the connection closed instead.
    fn close_stream(&mut self) -> bool {
        self.pending = None;
        let Some(stream) = self.stream.as_mut() else {
            return true;
        };
        if self.canceller.cancel().is_ok() {
            let result = stream.open.result();
            let until = Instant::now() + DRAIN_TIME;
            let mut bytes = 0;
            while bytes < DRAIN_BYTES && Instant::now() < until {
                match result.next() {
                    Some(Ok(row)) => bytes += row_size(&row),
                    Some(Err(mysql::Error::MySqlError(e))) if e.code == 1317 => {
                        self.end_stream();
                        return true;
                    }
                    Some(Err(_)) => break,
                    None => {
                        self.end_stream();
                        return true;
                    }
                }
            }
        }
        self.cut = true;
        self.socket.cut();
        // With the socket cut, the driver's drain of the result fails at once.
        self.end_stream();
        false
    }
}

impl Drop for MyConnection {
    fn drop(&mut self) {
        if self.stream.is_some() {
            // Never read the rest of a result on the way out.
            self.socket.cut();
        }
    }
}

impl MyConnection {
    /// The connection, ready for a statement, and `sql` prepared on it.
    fn prepared(&mut self, sql: &str) -> Result<(&mut mysql::Conn, &mysql::Statement)> {
        self.idle()?;
        let conn = self.conn.as_mut().ok_or_else(closed)?;
        let statement = self.statements.get_or_prepare(conn, sql)?;
        Ok((conn, statement))
    }

    /// The connection, ready for a statement: an open stream is ended (its
    /// rest read; the pipeline closes streams before anything else runs, so
    /// this is only a safety net) and the session's statement limit put
    /// back as last asked for.
    fn idle(&mut self) -> Result<&mut mysql::Conn> {
        if self.stream.is_some() {
            self.end_stream();
        }
        if self.limit_stale {
            self.send_limit(self.limit)?;
        }
        self.conn.as_mut().ok_or_else(closed)
    }

    /// An error when the watchdog cancelled the bulk write while no
    /// statement of it ran (its `KILL QUERY` stopped nothing, or is still
    /// on its way): the next statement is not sent. The pipeline reports
    /// the timeout, and does not reuse the connection, which a late
    /// `KILL QUERY` could hit.
    fn not_cancelled(&self) -> Result<()> {
        if self.cancel_requested.load(Ordering::Relaxed) {
            return Err(Error::new(
                ErrorKind::Database,
                "the bulk write was cancelled between two of its statements",
            ));
        }
        Ok(())
    }

    /// Sends `batch` (see [`Batch::send`]).
    fn send(&mut self, batch: &mut Batch, plan: &BulkPlan, next: usize) -> Result<u64> {
        self.idle()?;
        let conn = self.conn.as_mut().ok_or_else(closed)?;
        batch.send(conn, &mut self.statements, plan, next)
    }

    /// Ends the open stream (if any) and takes its connection back.
    fn end_stream(&mut self) {
        if let Some(stream) = self.stream.take() {
            self.conn = Some(stream.open.into_conn());
        }
    }

    /// Bytes of values one statement may carry: the session's
    /// `max_allowed_packet` (read once per connection; a session cannot
    /// change it), and at most one protocol packet (16 MiB), past which the
    /// driver sends each value as a packet of its own, far slower. A
    /// sixteenth and a few bytes per row are left for the packet's header
    /// and null bitmap.
    fn statement_budget(&mut self) -> Result<usize> {
        let packet = match self.max_packet {
            Some(p) => p,
            None => {
                let p: Option<u64> = self
                    .idle()?
                    .query_first("SELECT @@SESSION.max_allowed_packet")
                    .map_err(classify)?;
                // 1 KiB is the least the server allows.
                let p = p.map_or(MAX_PAYLOAD, |p| usize::try_from(p).unwrap_or(MAX_PAYLOAD));
                self.max_packet = Some(p);
                p
            }
        };
        let packet = packet.min(MAX_PAYLOAD);
        Ok((packet - packet / 16).saturating_sub(64))
    }

    /// Sets the session's statement limit on the server.
    fn send_limit(&mut self, limit: Option<Duration>) -> Result<()> {
        let conn = self.conn.as_mut().ok_or_else(closed)?;
        let flavor = match self.flavor {
            Some(f) => f,
            None => {
                let version: Option<String> =
                    conn.query_first("SELECT VERSION()").map_err(classify)?;
                let f = if version.is_some_and(|v| v.contains("MariaDB")) {
                    Flavor::MariaDb
                } else {
                    Flavor::MySql
                };
                self.flavor = Some(f);
                f
            }
        };
        let sql = match flavor {
            Flavor::MariaDb => format!(
                "SET SESSION max_statement_time = {:.3}",
                limit.map_or(0.0, |d| d.as_secs_f64())
            ),
            Flavor::MySql => format!(
                "SET SESSION max_execution_time = {}",
                limit.map_or(0, |d| d.as_millis().min(u128::from(u32::MAX)))
            ),
        };
        conn.query_drop(sql).map_err(classify)?;
        self.limit_stale = limit != self.limit;
        Ok(())
    }

    /// Whether the server knows `COM_RESET_CONNECTION` (MySQL 5.7.4+,
    /// MariaDB 10.2.7+), found on first use. MariaDB 10 announces itself as
    /// 5.5.5 in the handshake: its version is asked then.
    fn has_reset_connection(&mut self) -> Result<bool> {
        if let Some(known) = self.resettable {
            return Ok(known);
        }
        let handshake = self.idle()?.server_version();
        let known = if handshake == (5, 5, 5) {
            let version: Option<String> = self
                .idle()?
                .query_first("SELECT VERSION()")
                .map_err(classify)?;
            let numbers: Vec<u16> = version
                .as_deref()
                .unwrap_or_default()
                .split(|c: char| !c.is_ascii_digit())
                .take(3)
                .map(|n| n.parse().unwrap_or(0))
                .collect();
            numbers.as_slice() >= [10, 2, 7].as_slice()
        } else {
            handshake > (5, 7, 3)
        };
        self.resettable = Some(known);
        Ok(known)
    }
}

/// About how many bytes a row took on the wire.
fn row_size(row: &mysql::Row) -> usize {
    (0..row.len())
        .map(|i| match row.as_ref(i) {
            Some(mysql::Value::Bytes(b)) => b.len() + 1,
            _ => 8,
        })
        .sum()
}

/// The largest payload of one protocol packet; a larger statement is sent
/// by the driver as one packet per value (`COM_STMT_SEND_LONG_DATA`).
const MAX_PAYLOAD: usize = (1 << 24) - 1;

/// Whether the server refuses the row in any statement: a row sent in one
/// packet must fit `max_allowed_packet`; one larger than a protocol packet
/// goes a value at a time, and then each value must fit.
/// `total` is the sum of `sizes`, the row's values' [`wire_size`]s.
fn too_large(total: usize, mut sizes: impl Iterator<Item = usize>, packet: usize) -> bool {
    const SLACK: usize = 1024;
    if total <= MAX_PAYLOAD {
        total + SLACK > packet
    } else {
        sizes.any(|v| v + SLACK > packet)
    }
}

/// The error for row `i` of a chunk, `bytes` long, that no statement
/// could carry.
#[cold]
fn too_large_error(i: usize, bytes: usize, packet: usize) -> Error {
    Error::parameter(format!(
        "the chunk's row {i} (counting from 0) takes about {bytes} bytes, more than the server's max_allowed_packet of {packet} bytes allows in one statement; raise max_allowed_packet on the server (SET GLOBAL, or its configuration file), or write the value in parts"
    ))
}

/// Statements most recently prepared through the driver, by their text, so
/// that a statement run again goes by its handle: the driver's own lookup
/// by text parses the text for named parameters and hashes it on every
/// run, more work than the rest of a one-row `SELECT`.
///
/// They are the last few statements prepared on the connection, each
/// prepared after those before it, so all of them are among the most
/// recently used of the driver's cache (of 256) and none has been pushed
/// out of it and closed on the server. That holds only while every
/// statement is prepared here: a statement prepared otherwise (a bulk
/// write's) empties this first, and so does a session reset (the server
/// drops every statement).
#[derive(Default)]
struct Statements {
    kept: Vec<(Box<str>, mysql::Statement)>,
    /// Where the next one goes once all places are taken: the oldest.
    next: usize,
}

/// How many [`Statements`] are kept: a few statements run in turn.
const STATEMENTS_KEPT: usize = 4;

impl Statements {
    fn get_or_prepare(&mut self, conn: &mut mysql::Conn, sql: &str) -> Result<&mysql::Statement> {
        let i = match self.kept.iter().position(|(text, _)| **text == *sql) {
            Some(i) => i,
            None => {
                let statement = conn.prep(sql).map_err(classify)?;
                let entry = (Box::from(sql), statement);
                if self.kept.len() < STATEMENTS_KEPT {
                    self.kept.push(entry);
                    self.kept.len() - 1
                } else {
                    let i = self.next;
                    self.kept[i] = entry;
                    self.next = (i + 1) % STATEMENTS_KEPT;
                    i
                }
            }
        };
        Ok(&self.kept[i].1)
    }

    fn clear(&mut self) {
        self.kept.clear();
        self.next = 0;
    }
}

/// The rows of the next multi-row statement of a bulk write, as the
/// driver's values.
struct Batch {
    params: Vec<mysql::Value>,
    rows: usize,
    /// Their [`wire_size`]s, summed.
    bytes: usize,
    /// The last statement prepared, and its rows: statements of one size
    /// are run by handle, without the driver reading their text again
    /// (which for 1000 rows costs more than converting their values).
    /// Held for one chunk only; nothing else is prepared on the connection
    /// meanwhile, so the driver's cache keeps it open.
    statement: Option<(usize, mysql::Statement)>,
}

impl Batch {
    /// Sends the statement with the rows gathered (leaving room for
    /// `next` values in the next); returns the rows affected.
    fn send(
        &mut self,
        conn: &mut mysql::Conn,
        statements: &mut Statements,
        plan: &BulkPlan,
        next: usize,
    ) -> Result<u64> {
        let rows = self.rows;
        let statement = match &self.statement {
            Some((n, statement)) if *n == rows => statement.clone(),
            _ => {
                // Prepared past the statements kept by text, which it could
                // push out of the driver's cache.
                statements.clear();
                let statement = conn.prep(plan.statement(rows)).map_err(classify)?;
                self.statement = Some((rows, statement.clone()));
                statement
            }
        };
        let params = std::mem::replace(&mut self.params, Vec::with_capacity(next));
        self.rows = 0;
        self.bytes = 0;
        conn.exec_drop(&statement, mysql::Params::Positional(params))
            .map_err(classify)?;
        Ok(conn.affected_rows())
    }
}

/// A connection that a stream has ended half way (its socket cut) or
/// that is otherwise gone.
#[cold]
fn closed() -> Error {
    Error::new(
        ErrorKind::Connect,
        "the MySQL connection was closed after a stream ended half way",
    )
}

/// What a result's columns say about reading its values.
type Meta = (ColumnType, ColumnFlags, u16, u32);

/// The columns of one result: their names (shared by its rows) and how to
/// read each value.
struct Shape {
    meta: Vec<Meta>,
    names: Columns,
}

fn meta(c: &mysql::Column) -> Meta {
    (
        c.column_type(),
        c.flags(),
        c.character_set(),
        c.column_length(),
    )
}

impl Shape {
    /// The shape of `columns`: `last`'s when its columns are the same (a
    /// statement run again; no allocation then), else a new one, kept in
    /// `last` for the next result.
    fn reuse(last: &mut Option<Arc<Shape>>, columns: &mysql::SetColumns<'_>) -> Arc<Shape> {
        let cols = columns.as_ref();
        match last {
            Some(shape) if shape.fits(cols) => Arc::clone(shape),
            _ => Arc::clone(last.insert(Arc::new(Shape::of(cols)))),
        }
    }

    /// Whether `cols` are this shape's columns: the same names, types,
    /// flags, character sets and lengths, in the same order.
    fn fits(&self, cols: &[mysql::Column]) -> bool {
        self.meta.len() == cols.len()
            && cols
                .iter()
                .zip(self.meta.iter().zip(self.names.iter()))
                .all(|(c, (m, name))| meta(c) == *m && c.name_ref() == name.as_bytes())
    }

    fn of(cols: &[mysql::Column]) -> Shape {
        Shape {
            meta: cols.iter().map(meta).collect(),
            names: cols
                .iter()
                .map(|c| Arc::<str>::from(c.name_str().as_ref()))
                .collect::<Vec<_>>()
                .into(),
        }
    }

    fn row(&self, row: mysql::Row) -> Result<Row> {
        // Gathered in the row itself when it is narrow: no allocation
        // besides the driver's.
        let mut values = Values::with_capacity(self.meta.len());
        for (v, m) in row.unwrap_raw().into_iter().zip(&self.meta) {
            values.push(read(v.unwrap_or(mysql::Value::NULL), *m)?);
        }
        Ok(Row::new(Arc::clone(&self.names), values))
    }
}

/// A stream being read: the open result, owning its connection, and its
/// columns.
struct Streaming {
    open: OpenResult,
    shape: Arc<Shape>,
}

/// The driver's unbuffered result, which borrows its `Conn`, kept together
/// with that `Conn` so that it can stay open between fetches, inside this
/// connection, across calls.
///
/// Why `unsafe` rather than a crate: the driver's `QueryResult` needs the
/// connection *mutably* (`ConnMut::Mut`), and offers no way to give an
/// owned connection back; self-referential crates hand out shared borrows
/// of the owner, or need a proc macro. What is done here is the usual
/// pattern, and all of it sits in this type:
///
/// - The `Conn` lives in its own heap allocation, reached only through the
///   raw pointer `conn` (never through a `Box` or a reference that a move
///   or a `&mut self` could invalidate), so moving an `OpenResult` moves
///   neither the `Conn` nor the borrow of it.
/// - The result's lifetimes are widened to `'static` once, when it is made,
///   and never handed out: callers get it only through `&mut self`, with
///   the borrow of `self`, so it cannot outlive the `Conn`.
/// - The result is always dropped first (its drop may still read from the
///   connection), then the `Conn`: in `Drop` and in `into_conn`, the only
///   two ways the pair ends.
struct OpenResult {
    result: ManuallyDrop<QueryResult<'static, 'static, 'static, Binary>>,
    conn: NonNull<mysql::Conn>,
}

// SAFETY: an `OpenResult` owns its `Conn` and the only borrow of it, as a
// `(Conn, QueryResult)` pair would; both are `Send`, and nothing else can
// reach the pointer.
unsafe impl Send for OpenResult {}

impl OpenResult {
    /// Runs `statement` (prepared on `conn`) and keeps its result
    /// open. On failure the connection comes back with the error.
    #[allow(clippy::result_large_err)]
    fn open(
        conn: mysql::Conn,
        statement: &mysql::Statement,
        params: mysql::Params,
    ) -> std::result::Result<OpenResult, (mysql::Conn, mysql::Error)> {
        let conn = NonNull::from(Box::leak(Box::new(conn)));
        // SAFETY: `conn` is a live allocation of ours; the borrow made here
        // is the only one while the result lives (see the type's docs).
        let opened = unsafe { &mut *conn.as_ptr() }.exec_iter(statement, params);
        match opened {
            Ok(result) => {
                // SAFETY: only lifetimes change; the result is kept no
                // longer than the allocation it borrows (dropped first).
                let result = unsafe {
                    std::mem::transmute::<
                        QueryResult<'_, '_, '_, Binary>,
                        QueryResult<'static, 'static, 'static, Binary>,
                    >(result)
                };
                Ok(OpenResult {
                    result: ManuallyDrop::new(result),
                    conn,
                })
            }
            Err(e) => {
                // SAFETY: the failed call's borrow has ended; the allocation
                // is ours and freed once, here.
                let conn = unsafe { Box::from_raw(conn.as_ptr()) };
                Err((*conn, e))
            }
        }
    }

    /// The open result, for as long as `self` is borrowed.
    fn result(&mut self) -> &mut QueryResult<'static, 'static, 'static, Binary> {
        &mut self.result
    }

    /// Ends the result (the driver reads what is left of it) and gives the
    /// connection back.
    fn into_conn(self) -> mysql::Conn {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so the result and the allocation
        // are each released once, here, the result first.
        unsafe {
            ManuallyDrop::drop(&mut this.result);
            *Box::from_raw(this.conn.as_ptr())
        }
    }
}

impl Drop for OpenResult {
    fn drop(&mut self) {
        // SAFETY: as in `into_conn`: the result first, then the allocation
        // it borrowed, each once.
        unsafe {
            ManuallyDrop::drop(&mut self.result);
            drop(Box::from_raw(self.conn.as_ptr()));
        }
    }
}

fn to_mysql(v: &Value) -> mysql::Value {
    use chrono::{Datelike, Timelike};
    use mysql::Value as M;
    match v {
        Value::Null => M::NULL,
        Value::Bool(b) => M::Int(i64::from(*b)),
        Value::I64(i) => M::Int(*i),
        Value::F64(f) => M::Double(*f),
        Value::Decimal(d) => M::Bytes(d.to_string().into_bytes()),
        Value::Text(s) => M::Bytes(s.clone().into_bytes()),
        Value::Bytes(b) => M::Bytes(b.clone()),
        Value::Date(d) => M::Date(d.year() as u16, d.month() as u8, d.day() as u8, 0, 0, 0, 0),
        Value::Time(t) => M::Time(
            false,
            0,
            t.hour() as u8,
            t.minute() as u8,
            t.second() as u8,
            t.nanosecond() / 1000,
        ),
        Value::Timestamp(t) => datetime(t),
        Value::TimestampTz(t) => datetime(&t.naive_utc()),
        Value::Uuid(u) => M::Bytes(u.to_string().into_bytes()),
        Value::Json(j) => M::Bytes(j.to_string().into_bytes()),
    }
}

/// [`to_mysql`], moving text and bytes instead of copying them.
fn into_mysql(v: Value) -> mysql::Value {
    match v {
        Value::Null => mysql::Value::NULL,
        Value::I64(i) => mysql::Value::Int(i),
        Value::F64(f) => mysql::Value::Double(f),
        Value::Text(s) => mysql::Value::Bytes(s.into_bytes()),
        Value::Bytes(b) => mysql::Value::Bytes(b),
        other => to_mysql(&other),
    }
}

fn datetime(t: &chrono::NaiveDateTime) -> mysql::Value {
    use chrono::{Datelike, Timelike};
    mysql::Value::Date(
        t.year() as u16,
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
        t.nanosecond() / 1000,
    )
}

/// Reads a value by its column's type. `TINYINT(1)` (MariaDB's `BOOLEAN`)
/// reads as a bool, as JDBC does.
fn read(
    v: mysql::Value,
    (ty, _flags, charset, len): (ColumnType, ColumnFlags, u16, u32),
) -> Result<Value> {
    use chrono::{NaiveDate, NaiveTime};
    use mysql::Value as M;
    Ok(match v {
        M::NULL => Value::Null,
        M::Int(i) if ty == ColumnType::MYSQL_TYPE_TINY && len == 1 => Value::Bool(i != 0),
        M::Int(i) => Value::I64(i),
        M::UInt(u) => i64::try_from(u)
            .map(Value::I64)
            .unwrap_or_else(|_| Value::Decimal(rust_decimal::Decimal::from(u))),
        M::Float(f) => Value::F64(f.into()),
        M::Double(f) => Value::F64(f),
        M::Date(y, mo, d, h, mi, s, us) => {
            let date = NaiveDate::from_ymd_opt(y.into(), mo.into(), d.into());
            match (ty, date) {
                (ColumnType::MYSQL_TYPE_DATE, Some(date)) => Value::Date(date),
                (_, Some(date)) => {
                    match NaiveTime::from_hms_micro_opt(h.into(), mi.into(), s.into(), us) {
                        Some(t) => Value::Timestamp(date.and_time(t)),
                        None => return Err(Error::conversion("MySQL returned an invalid time")),
                    }
                }
                // Zero dates ('0000-00-00') have no calendar value.
                (_, None) => Value::Null,
            }
        }
        M::Time(neg, days, h, mi, s, us) => {
            match (
                neg,
                days,
                NaiveTime::from_hms_micro_opt(h.into(), mi.into(), s.into(), us),
            ) {
                (false, 0, Some(t)) => Value::Time(t),
                _ => {
                    let sign = if neg { "-" } else { "" };
                    let hours = u64::from(days) * 24 + u64::from(h);
                    Value::Text(format!("{sign}{hours:02}:{mi:02}:{s:02}.{us:06}"))
                }
            }
        }
        M::Bytes(b) => match ty {
            ColumnType::MYSQL_TYPE_DECIMAL | ColumnType::MYSQL_TYPE_NEWDECIMAL => {
                let s = String::from_utf8_lossy(&b);
                s.parse().map(Value::Decimal).map_err(|_| {
                    Error::conversion(format!("MySQL returned an unreadable decimal `{s}`"))
                })?
            }
            ColumnType::MYSQL_TYPE_JSON => serde_json::from_slice(&b)
                .map(Value::Json)
                .unwrap_or_else(|_| Value::Text(String::from_utf8_lossy(&b).into_owned())),
            ColumnType::MYSQL_TYPE_BIT => Value::Bytes(b),
            _ if charset == BINARY_CHARSET => Value::Bytes(b),
            _ => match String::from_utf8(b) {
                Ok(s) => Value::Text(s),
                Err(e) => Value::Bytes(e.into_bytes()),
            },
        },
    })
}

/// Maps a `mysql` error to ours by error number; the server's message
/// becomes ours (it never contains a password).
#[cold]
fn classify(e: mysql::Error) -> Error {
    match e {
        mysql::Error::MySqlError(ref server) => {
            let kind = match server.code {
                1062 | 1586 => ErrorKind::UniqueViolation,
                1048 | 1364 | 1451 | 1452 | 1216 | 1217 | 3819 | 4025 => ErrorKind::Constraint,
                1045 | 1044 | 1698 => ErrorKind::Auth,
                1142 | 1143 | 1227 | 1370 => ErrorKind::Permission,
                1064 | 1146 | 1054 | 1049 | 1109 | 1149 | 1305 => ErrorKind::Syntax,
                1213 | 1205 | 1614 => ErrorKind::Conflict,
                1317 | 3024 | 1969 => ErrorKind::QueryTimeout,
                1290 | 1792 | 1836 => ErrorKind::ReadOnly,
                1040 | 1053 | 1077 | 1081 | 1152 | 1184 | 1927 | 2006 | 2013 => ErrorKind::Connect,
                1264 | 1265 | 1292 | 1366 | 1406 | 1411 => ErrorKind::Conversion,
                _ => ErrorKind::Database,
            };
            let e = Error::new(kind, server.message.clone()).with_code(server.code.to_string());
            match server.code {
                1049 => e.with_hint(
                    "the server has no database of that name: create it (`CREATE DATABASE \
                     name;` as a user allowed to) or fix the database name at the end of the \
                     connection string",
                ),
                // What an ordinary user gets for a database that does not
                // exist as well as for one it may not use.
                1044 => e.with_hint(
                    "the user may not use that database, or it does not exist: check the \
                     database name at the end of the connection string, create the database, \
                     or have an administrator `GRANT ALL ON name.* TO` this user",
                ),
                _ => e,
            }
        }
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) => {
            Error::new(ErrorKind::Connect, "the connection to MySQL was lost").with_source(e)
        }
        mysql::Error::DriverError(mysql::DriverError::MismatchedStmtParams(expected, given)) => {
            Error::parameter(format!(
                "the statement has {expected} placeholders but {given} values were given"
            ))
        }
        mysql::Error::DriverError(mysql::DriverError::ConnectTimeout) => {
            Error::new(ErrorKind::ConnectTimeout, "connecting to MySQL timed out").with_source(e)
        }
        mysql::Error::FromValueError(_) | mysql::Error::FromRowError(_) => {
            Error::conversion("a value read from MySQL could not be converted")
        }
        other => Error::new(ErrorKind::Database, "MySQL client error").with_source(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> Error {
        classify(mysql::Error::MySqlError(mysql::MySqlError {
            state: "HY000".into(),
            message: "m".into(),
            code,
        }))
    }

    /// A connect the caller gave up on keeps its helper thread until the
    /// driver gives up too; past `most_running` such threads, connects fail
    /// at once instead of starting more.
    #[test]
    fn hung_connects_are_abandoned_at_the_deadline_and_capped() {
        let config = crate::config::DatabaseConfig::builder("capped")
            .url("mysql://u:p@127.0.0.1:1/app")
            .connect_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let dialer = Arc::new(Dialer {
            target: "MySQL at 127.0.0.1:1".to_owned(),
            limit: ConnectLimit::of(&config),
            running: AtomicUsize::new(0),
            most_running: 1,
        });
        let (release, released) = std::sync::mpsc::channel::<()>();
        let started = Instant::now();
        let e = dialer
            .dial(false, move || {
                let _ = released.recv();
                Err(mysql::Error::DriverError(
                    mysql::DriverError::ConnectTimeout,
                ))
            })
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(e.kind(), ErrorKind::ConnectTimeout, "{e}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(e.to_string().contains("connect timeout of 200 ms"), "{e}");

        // The hung helper still runs: the next connect is refused at once.
        let started = Instant::now();
        let e = dialer
            .dial(false, || panic!("not started past the cap"))
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(e.kind(), ErrorKind::ConnectTimeout, "{e}");
        assert!(e.to_string().contains("1 earlier connects"), "{e}");
        assert!(
            e.to_string()
                .contains("DatabaseConfigBuilder::connect_timeout"),
            "{e}"
        );

        // Once it ends, connects start again.
        release.send(()).unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while dialer.running.load(Ordering::Acquire) > 0 {
            assert!(Instant::now() < until, "the helper never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        let e = dialer
            .dial(false, || {
                Err(mysql::Error::DriverError(
                    mysql::DriverError::ConnectTimeout,
                ))
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectTimeout, "{e}");
        assert!(e.to_string().contains("took longer"), "{e}");
    }

    #[test]
    fn server_codes_are_transient_or_permanent() {
        // 1213 deadlock, 1205 lock wait timeout, 1053 server shutdown,
        // 1040 too many connections, 2006/2013 server gone / lost.
        for code in [1213, 1205, 1053, 1040, 2006, 2013] {
            assert!(server(code).is_retryable(), "{code}");
        }
        // Syntax, duplicate key, foreign key, access denied, no privilege, killed.
        for code in [1064, 1062, 1452, 1045, 1142, 1317] {
            assert!(!server(code).is_retryable(), "{code}");
        }
        let io = classify(mysql::Error::IoError(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )));
        assert_eq!(io.kind(), ErrorKind::Connect);
        assert!(io.is_retryable());
    }
}
