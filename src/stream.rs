//! Streaming reads: [`RowStream`], rows read from the server as they are
//! asked for, at flat memory however many come back.
//!
//! A stream is a statement like any other: it passes the pipeline's stages
//! (read-only check, breaker and checkout, translation, the budget, the
//! watchdog, settling, metrics) with the backend's stream stage in place
//! of one execute. Its connection stays checked out inside the stream
//! until the stream is exhausted or dropped.
//!
//! **Timeouts:** the query timeout in force bounds opening the stream and
//! then each fetch of the next batch of rows from the server (up to
//! [`FETCH_ROWS`] rows), not the whole stream: a caller may take its time
//! with each row without the stream timing out, and a fetch stuck on the
//! server is cancelled by the watchdog like any statement.
//!
//! **Dropped half way:** SQLite finalizes its statement (the connection is
//! clean); PostgreSQL's connection, with the rest of the result still on
//! its way, is discarded rather than read to the end; MySQL's statement is
//! stopped on the server (`KILL QUERY`) and only what was already on its
//! way is read, within a bound (past it the connection is closed); SQL
//! Server reads and drops a short remainder, or cancels the request, or
//! else discards the connection; PostgreSQL behind pgbouncer reads the whole
//! result at open and has nothing left to read. No connection goes back to
//! the pool with a result pending.

use std::fmt;
use std::marker::PhantomData;
use std::panic::Location;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{ErrorKind, Result};
use crate::pipeline::{Limit, Op, Shared};
use crate::pool::Pooled;
use crate::session::{PooledConnection, Transaction};
use crate::value::{IntoParams, Row};

/// Rows fetched from the server at a time (one watchdog registration each).
pub const FETCH_ROWS: usize = 1000;

/// The connection a stream reads on: its own, or a guard's or transaction's.
enum Lease<'a> {
    Owned(Box<Pooled>),
    Borrowed(&'a mut Pooled),
}

impl Lease<'_> {
    fn get(&mut self) -> &mut Pooled {
        match self {
            Lease::Owned(c) => c,
            Lease::Borrowed(c) => c,
        }
    }
}

/// The rows of one query, read from the server as they are asked for: an
/// [`Iterator`] of `Result<Row>`. Made by
/// [`DatabaseManager::stream`](crate::DatabaseManager::stream),
/// [`PooledConnection::stream`] and [`Transaction::stream`].
///
/// It holds its connection until the last row is read or it is dropped;
/// after an error it yields nothing more.
///
/// **Timeouts:** the query timeout in force bounds opening the stream and
/// each fetch of up to [`FETCH_ROWS`] rows from the server, not the whole
/// stream: a caller may take its time with each row, and a fetch stuck on
/// the server is cancelled by the watchdog like any statement.
///
/// **Memory:** PostgreSQL, MySQL and SQL Server rows come as the server
/// sends them and SQLite's statement is stepped as rows are asked for, so
/// memory stays flat; PostgreSQL behind pgbouncer reads the whole result
/// when the stream opens.
///
/// **Dropped half way:** no connection goes back to the pool with a result
/// pending: SQLite's statement is finalized; PostgreSQL's connection, the
/// rest of the result still on its way, is discarded rather than read to
/// the end; MySQL's statement is stopped on the server and the little
/// already sent is read (or, past a bound, the connection is closed).
#[must_use = "a stream reads nothing until iterated, and holds its connection until dropped"]
pub struct RowStream<'a> {
    shared: Arc<Shared>,
    /// `None` once finished (an owned connection is back in the pool).
    conn: Option<Lease<'a>>,
    native: String,
    limit: Limit,
    /// Rows fetched and not yet yielded, last first (taken from the end);
    /// its allocation is reused by each fetch.
    buffer: Vec<Row>,
    /// The backend's result is open: more rows may come.
    open: bool,
    start: Instant,
    rows: u64,
    fired: bool,
    failure: Option<ErrorKind>,
}

impl fmt::Debug for RowStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowStream")
            .field("database", self.shared.name())
            .field("rows", &self.rows)
            .field("finished", &self.conn.is_none())
            .finish()
    }
}

impl<'a> RowStream<'a> {
    /// Opens a stream on `conn` (or a connection checked out at `site`).
    fn open(
        shared: Arc<Shared>,
        conn: Option<&'a mut Pooled>,
        sql: &str,
        params: crate::value::Params,
        limit: Limit,
        site: &'static Location<'static>,
    ) -> Result<RowStream<'a>> {
        let (native, values) = shared.prepare_stage(Op::Query, sql, params)?;
        let lease = match conn {
            Some(c) => Lease::Borrowed(c),
            None => Lease::Owned(Box::new(shared.checkout_within(None, site)?)),
        };
        let mut stream = RowStream {
            shared,
            conn: Some(lease),
            native,
            limit,
            buffer: Vec::new(),
            open: false,
            start: Instant::now(),
            rows: 0,
            fired: false,
            failure: None,
        };
        let RowStream {
            shared,
            conn,
            native,
            ..
        } = &mut stream;
        let conn = conn.as_mut().expect("set above").get();
        let (opened, fired) = shared.stage(conn, Op::Query, native, limit, |b| {
            b.open_stream(native, &values)
        });
        stream.fired |= fired;
        match opened {
            Ok(Some(mut rows)) => {
                rows.reverse();
                stream.buffer = rows;
            }
            Ok(None) => stream.open = true,
            Err(e) => {
                stream.failure = Some(e.kind());
                return Err(e);
            }
        }
        Ok(stream)
    }

    /// Rows read so far.
    pub fn rows_read(&self) -> u64 {
        self.rows
    }

    /// The next batch from the server into the buffer; `Err` ends the
    /// stream.
    fn refill(&mut self) -> Result<()> {
        let RowStream {
            shared,
            conn,
            native,
            limit,
            buffer,
            ..
        } = self;
        let Some(conn) = conn.as_mut() else {
            self.open = false;
            return Ok(());
        };
        // Empty here (refilled only once drained): the same allocation
        // takes the next batch.
        buffer.clear();
        let (more, fired) = shared.stage(conn.get(), Op::Query, native, *limit, |b| {
            b.fetch(FETCH_ROWS, buffer)
        });
        self.fired |= fired;
        match more {
            Ok(more) => {
                self.open = more;
                self.buffer.reverse();
                Ok(())
            }
            Err(e) => {
                self.open = false;
                self.buffer.clear();
                self.failure = Some(e.kind());
                Err(e)
            }
        }
    }

    /// Ends the stream: an open result is closed (or its connection
    /// marked for discarding), the whole stream is accounted for once, and
    /// an owned connection goes back to the pool.
    fn finish(&mut self) {
        let Some(mut lease) = self.conn.take() else {
            return;
        };
        let conn = lease.get();
        if self.open {
            self.open = false;
            if !conn.backend.close_stream() {
                conn.broken = true;
            }
        }
        self.shared.account_stage(
            Op::Query,
            &self.native,
            self.start,
            self.failure,
            self.fired,
            self.rows,
        );
        self.buffer = Vec::new();
    }

    /// Deserialises each row into `T` with serde, as
    /// [`query_as`](crate::DatabaseManager::query_as) does.
    pub fn typed<T: serde::de::DeserializeOwned>(self) -> TypedRowStream<'a, T> {
        TypedRowStream {
            inner: self,
            _t: PhantomData,
        }
    }
}

impl Iterator for RowStream<'_> {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            if let Some(row) = self.buffer.pop() {
                self.rows += 1;
                return Some(Ok(row));
            }
            if !self.open {
                self.finish();
                return None;
            }
            if let Err(e) = self.refill() {
                self.finish();
                return Some(Err(e));
            }
        }
    }
}

impl Drop for RowStream<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A [`RowStream`] whose rows are deserialised into `T`: an [`Iterator`] of
/// `Result<T>`. Made by `stream_as`.
#[must_use = "a stream reads nothing until iterated, and holds its connection until dropped"]
pub struct TypedRowStream<'a, T> {
    inner: RowStream<'a>,
    _t: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for TypedRowStream<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<T: serde::de::DeserializeOwned> Iterator for TypedRowStream<'_, T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        self.inner
            .next()
            .map(|r| r.and_then(|row| row.deserialize()))
    }
}

/// Opens a stream on a connection of its own (the manager's `stream`).
#[track_caller]
pub(crate) fn stream_owned(
    shared: &Arc<Shared>,
    sql: &str,
    params: impl IntoParams,
) -> Result<RowStream<'static>> {
    RowStream::open(
        Arc::clone(shared),
        None,
        sql,
        params.into_params(),
        Limit::DEFAULT,
        Location::caller(),
    )
}

impl PooledConnection {
    /// Runs a query and returns its rows as a [`RowStream`], read from the
    /// server as they are asked for (flat memory however many rows come).
    /// The guard is borrowed until the stream is dropped.
    ///
    /// # Errors
    ///
    /// As [`execute_query`](Self::execute_query), when the query is opened;
    /// each later fetch may fail the same way (the stream then yields the
    /// error and ends).
    #[track_caller]
    pub fn stream(&mut self, sql: &str, params: impl IntoParams) -> Result<RowStream<'_>> {
        let (shared, conn, limit) = self.stage_parts();
        RowStream::open(
            shared,
            Some(conn),
            sql,
            params.into_params(),
            limit,
            Location::caller(),
        )
    }

    /// [`stream`](Self::stream), each row deserialised into `T` with serde.
    ///
    /// # Errors
    ///
    /// As [`stream`](Self::stream); a row that does not fit `T` is a
    /// [`Conversion`](crate::ErrorKind::Conversion) error in its place.
    #[track_caller]
    pub fn stream_as<T: serde::de::DeserializeOwned>(
        &mut self,
        sql: &str,
        params: impl IntoParams,
    ) -> Result<TypedRowStream<'_, T>> {
        self.stream(sql, params).map(RowStream::typed)
    }
}

impl Transaction<'_> {
    /// Runs a query in this transaction and returns its rows as a
    /// [`RowStream`]; the transaction is borrowed until the stream is
    /// dropped. Limited by the transaction's deadline too.
    ///
    /// # Errors
    ///
    /// As [`execute_query`](Self::execute_query); a transaction that timed
    /// out or ended on the server refuses it.
    #[track_caller]
    pub fn stream(&mut self, sql: &str, params: impl IntoParams) -> Result<RowStream<'_>> {
        let (shared, conn, limit) = self.stage_parts()?;
        RowStream::open(
            shared,
            Some(conn),
            sql,
            params.into_params(),
            limit,
            Location::caller(),
        )
    }

    /// [`stream`](Self::stream), each row deserialised into `T` with serde.
    ///
    /// # Errors
    ///
    /// As [`stream`](Self::stream).
    #[track_caller]
    pub fn stream_as<T: serde::de::DeserializeOwned>(
        &mut self,
        sql: &str,
        params: impl IntoParams,
    ) -> Result<TypedRowStream<'_, T>> {
        self.stream(sql, params).map(RowStream::typed)
    }
}
