//! SQLite through `rusqlite` (bundled), pooled with `r2d2_sqlite`.
//!
//! Files open in WAL mode with `busy_timeout` set, so readers and one writer
//! work side by side across the pool. `sqlite::memory:` is one in-memory
//! database shared by every connection of the pool (SQLite's `memdb` VFS,
//! which keeps normal locking, unlike shared cache); it lives as long as the
//! manager.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use r2d2::ManageConnection;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{ffi, OpenFlags, ToSql};

use super::{BulkPlan, BulkRows, Connection, Connector, GatheredRows};
use crate::backend::Canceller;
use crate::config::DatabaseConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::sql::Dialect;
use crate::value::{self, Columns, Row, Value};

/// Rows a stream steps per fetch at most: few enough that a batch stays in
/// the CPU's cache (and the allocator's per-thread cache) while the caller
/// reads it; each fetch is one watchdog registration.
const STREAM_ROWS_PER_FETCH: usize = 128;

/// Bytes of text or blob a kept statement lets go of once it has run.
const LARGE_BINDING: usize = 4096;

/// Default wait on a locked database when no query timeout is configured.
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct SqliteConnector {
    manager: SqliteConnectionManager,
    path: String,
    /// Holds an in-memory database open while the manager lives.
    _keeper: Option<Mutex<rusqlite::Connection>>,
    read_only: bool,
}

impl SqliteConnector {
    pub(crate) fn new(config: &DatabaseConfig) -> Result<Self> {
        static MEMORY_DBS: AtomicU64 = AtomicU64::new(0);
        let target = sqlite_target(&config.url)?;
        let busy = config.query_timeout.unwrap_or(DEFAULT_BUSY_TIMEOUT);
        let read_only = config.read_only;
        let (path, memory) = match target {
            Target::Memory => {
                let n = MEMORY_DBS.fetch_add(1, Ordering::Relaxed);
                let uri = format!("file:/dbmanager-{}-{n}?vfs=memdb", std::process::id());
                (uri, true)
            }
            Target::File(path) => (path, false),
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let manager = SqliteConnectionManager::file(&path)
            .with_flags(flags)
            .with_init(move |c| {
                c.busy_timeout(busy)?;
                c.set_prepared_statement_cache_capacity(256);
                if !memory {
                    c.execute_batch("PRAGMA journal_mode = WAL;")?;
                }
                c.execute_batch(session_pragmas(read_only))
            });
        let keeper = if memory {
            let conn = manager.connect().map_err(|e| open_error(&path, e))?;
            Some(Mutex::new(conn))
        } else {
            None
        };
        Ok(SqliteConnector {
            manager,
            path,
            _keeper: keeper,
            read_only: config.read_only,
        })
    }
}

/// The session settings every connection gets at connect, and again when
/// its session is reset. READ_ONLY: SQLite refuses writes
/// (SQLITE_READONLY), after the journal mode is set; the library's check is
/// backed by SQLite's own.
fn session_pragmas(read_only: bool) -> &'static str {
    if read_only {
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA query_only = ON;"
    } else {
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA query_only = OFF;"
    }
}

enum Target {
    Memory,
    File(String),
}

/// `sqlite::memory:`, `sqlite://:memory:` → memory; `sqlite:path`,
/// `sqlite://path`, `sqlite:///abs/path` → a file (query string ignored).
fn sqlite_target(url: &str) -> Result<Target> {
    let rest = url.trim();
    let rest = &rest["sqlite:".len()..];
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let rest = rest.split('?').next().unwrap_or("");
    match rest {
        ":memory:" => Ok(Target::Memory),
        "" => Err(Error::config(
            "the SQLite URL names no file; use sqlite:path/to/file.db or sqlite::memory:",
        )),
        path => Ok(Target::File(path.to_owned())),
    }
}

#[cold]
fn open_error(path: &str, e: rusqlite::Error) -> Error {
    Error::new(
        ErrorKind::Connect,
        format!("cannot open SQLite database {path}; check the path and its folder's permissions"),
    )
    .with_source(e)
}

impl Connector for SqliteConnector {
    fn connect(&self) -> Result<Box<dyn Connection>> {
        let conn = self.manager.connect().map_err(|e| match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::CannotOpen => {
                open_error(&self.path, e)
            }
            _ => classify(e),
        })?;
        let canceller: Arc<dyn Canceller> = Arc::new(Interrupt(conn.get_interrupt_handle()));
        Ok(Box::new(SqliteConnection {
            cursor: None,
            statements: Statements::new(),
            conn,
            schema: 0,
            canceller,
            read_only: self.read_only,
        }))
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
}

struct SqliteConnection {
    /// The open stream's statement and the queries' kept statements.
    /// Declared before `conn`, and dropped first in `Drop` as well: they
    /// must be finalized while the connection is open.
    cursor: Option<Cursor>,
    statements: Statements,
    conn: rusqlite::Connection,
    /// Counts the statements that may have changed the schema on this
    /// connection: a kept statement's columns are read again after one.
    schema: u64,
    canceller: Arc<dyn Canceller>,
    /// `PRAGMA query_only` is on: transactions cannot take the write lock.
    read_only: bool,
}

/// Stops a running statement with `sqlite3_interrupt`; the connection stays
/// usable (the interrupt ends with the statement it stopped).
struct Interrupt(rusqlite::InterruptHandle);

impl Canceller for Interrupt {
    fn cancel(&self) -> Result<()> {
        self.0.interrupt();
        Ok(())
    }
}

impl Connection for SqliteConnection {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let schema = self.schema;
        let raw = self
            .statements
            .get(&self.conn, sql, schema)?
            .ok_or_else(|| Error::parameter("the statement is empty"))?;
        let mut out = Vec::new();
        // The list is made at the first row: none for an empty result.
        let result = raw
            .bind(params)
            .and_then(|()| raw.step(usize::MAX, &mut out, schema).map(drop));
        raw.reset();
        result.map(|()| out)
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        if may_change_schema(sql) {
            // The kept statements' columns are read again.
            self.schema += 1;
        }
        let schema = self.schema;
        let raw = self
            .statements
            .get(&self.conn, sql, schema)?
            .ok_or_else(|| Error::parameter("the statement is empty"))?;
        // A statement that returns rows (RETURNING, PRAGMA) runs to its end.
        let result = raw.bind(params).and_then(|()| raw.run_to_end());
        raw.reset();
        result.map(|()| self.conn.changes())
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        self.schema += 1;
        self.conn.execute_batch(sql).map_err(classify)
    }

    /// SQLite steps the statement as rows are asked for: memory is flat.
    fn open_stream(&mut self, sql: &str, params: &[Value]) -> Result<Option<Vec<Row>>> {
        self.cursor = None;
        self.cursor = Some(Cursor::open(&self.conn, sql, params)?);
        Ok(None)
    }

    fn fetch(&mut self, max: usize, out: &mut Vec<Row>) -> Result<bool> {
        let Some(cursor) = self.cursor.as_mut() else {
            return Ok(false);
        };
        let more = cursor.step(max.min(STREAM_ROWS_PER_FETCH), out);
        if !matches!(more, Ok(true)) {
            self.cursor = None;
        }
        more
    }

    /// Finalizing the statement ends it: the connection is clean.
    fn close_stream(&mut self) -> bool {
        self.cursor = None;
        true
    }

    /// SQLite's fastest path: one prepared statement, its parameters bound
    /// straight from each row's values and stepped once per row.
    fn bulk_write(&mut self, plan: &BulkPlan, rows: &[Vec<Value>]) -> Result<u64> {
        self.bulk_write_rows(plan, &mut GatheredRows(rows.iter()))
    }

    fn bulk_writes_rows_as_they_come(&self, _plan: &BulkPlan) -> bool {
        true
    }

    /// Each row bound and stepped as it comes, so the chunk is never held
    /// in memory. A deadline that fires between two rows
    /// (`sqlite3_interrupt` stops only a running statement) stops the
    /// write before the next row.
    fn bulk_write_rows(&mut self, plan: &BulkPlan, rows: &mut dyn BulkRows) -> Result<u64> {
        let order = plan.bind_order();
        let in_order = order.iter().enumerate().all(|(n, &i)| n == i);
        let mut stmt = self
            .conn
            .prepare_cached(&plan.statement(1))
            .map_err(classify)?;
        let mut affected = 0;
        let mut row = Vec::with_capacity(plan.columns.len());
        let mut k = 0;
        while rows.next_row(&mut row)? {
            let bound = if in_order {
                row.iter()
                    .enumerate()
                    .try_for_each(|(n, v)| stmt.raw_bind_parameter(n + 1, v))
            } else {
                order
                    .iter()
                    .enumerate()
                    .try_for_each(|(n, &i)| stmt.raw_bind_parameter(n + 1, &row[i]))
            };
            if self.conn.is_interrupted() {
                return Err(interrupted());
            }
            match bound.and_then(|()| stmt.raw_execute()) {
                Ok(n) => affected += n as u64,
                Err(e) => return Err(classify(e).with_hint(&format!("at row {k} of the chunk"))),
            }
            k += 1;
        }
        Ok(affected)
    }

    fn begin(&mut self) -> Result<()> {
        // IMMEDIATE takes the write lock up front: a deferred transaction
        // that later writes can fail with SQLITE_BUSY without waiting. A
        // read-only connection never writes (and may not take that lock).
        self.batch(if self.read_only {
            "BEGIN DEFERRED"
        } else {
            "BEGIN IMMEDIATE"
        })
    }

    fn ping(&mut self) -> Result<()> {
        self.conn
            .query_row("SELECT 1", [], |_| Ok(()))
            .map_err(classify)
    }

    fn is_closed(&self) -> bool {
        false
    }

    /// In process, no round trip: a transaction left open is rolled back,
    /// temporary tables, views and triggers are dropped, attached databases
    /// detached and the connect-time settings (`PRAGMA`s) made again.
    fn reset_session(&mut self) -> Result<bool> {
        self.cursor = None;
        let conn = &self.conn;
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK").map_err(classify)?;
        }
        let temps: Vec<(String, String)> = conn
            .prepare_cached(
                "SELECT type, name FROM temp.sqlite_master \
                 WHERE type IN ('table', 'view', 'trigger') AND name NOT LIKE 'sqlite_%'",
            )
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(classify)?;
        for (kind, name) in temps {
            let drop = format!(
                "DROP {} IF EXISTS temp.\"{}\"",
                kind.to_ascii_uppercase(),
                name.replace('"', "\"\"")
            );
            conn.execute_batch(&drop).map_err(classify)?;
        }
        let attached: Vec<String> = conn
            .prepare_cached(
                "SELECT name FROM pragma_database_list WHERE name NOT IN ('main', 'temp')",
            )
            .and_then(|mut s| {
                s.query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(classify)?;
        for name in attached {
            conn.execute("DETACH DATABASE ?1", [&name])
                .map_err(classify)?;
        }
        conn.execute_batch(session_pragmas(self.read_only))
            .map_err(classify)?;
        self.schema += 1;
        Ok(true)
    }

    fn canceller(&self) -> Arc<dyn Canceller> {
        Arc::clone(&self.canceller)
    }

    /// SQLite runs in this process, so the watchdog's interrupt always
    /// reaches it; the server-side limit is the wait on a locked database.
    fn set_server_timeout(&mut self, limit: Option<Duration>) -> Result<()> {
        self.conn
            .busy_timeout(limit.unwrap_or(DEFAULT_BUSY_TIMEOUT))
            .map_err(classify)
    }
}

impl Drop for SqliteConnection {
    fn drop(&mut self) {
        self.cursor = None;
        self.statements.clear();
    }
}

/// A statement prepared through SQLite's C API, with its parameter count
/// and its result's column names and declared types; finalized when
/// dropped. Unlike rusqlite's `Statement`, it borrows nothing, so it can
/// live from one call to the next: the connection finalizes its statements
/// before it closes.
struct Raw {
    db: *mut ffi::sqlite3,
    stmt: *mut ffi::sqlite3_stmt,
    params: usize,
    columns: Columns,
    decls: Vec<Decl>,
    /// The connection's schema generation the columns were read in.
    described: u64,
    /// How often SQLite had prepared the statement again (for a schema
    /// another connection changed) when the columns were read.
    reprepared: i32,
    /// A long text or blob is bound: let go of it at reset.
    holds_large: bool,
}

// SAFETY: the statement is used only by the connection that owns it
// (through `&mut`), and an SQLite connection opened NO_MUTEX may move
// between threads as long as it is used by one at a time, as rusqlite's
// `Connection: Send` relies on too.
unsafe impl Send for Raw {}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: `stmt` came from sqlite3_prepare_v3 and is finalized once.
        unsafe {
            ffi::sqlite3_finalize(self.stmt);
        }
    }
}

impl Raw {
    /// Prepares the one statement `sql` holds; `None` when it holds none
    /// (empty, or only a comment). `persistent` tells SQLite the statement
    /// will be kept and reused.
    fn prepare(
        conn: &rusqlite::Connection,
        sql: &str,
        persistent: bool,
        generation: u64,
    ) -> Result<Option<Raw>> {
        use std::os::raw::{c_char, c_int};
        let len = c_int::try_from(sql.len())
            .map_err(|_| Error::parameter("the statement is longer than SQLite accepts"))?;
        // SAFETY: the handle is used only while `conn` is borrowed here, and
        // by the statement, which the connection finalizes before it closes.
        let db = unsafe { conn.handle() };
        let mut stmt = std::ptr::null_mut();
        let mut tail: *const c_char = std::ptr::null();
        let flags = if persistent {
            ffi::SQLITE_PREPARE_PERSISTENT
        } else {
            0
        };
        // SAFETY: `sql` is valid for `len` bytes; out-pointers are valid.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(db, sql.as_ptr().cast(), len, flags, &mut stmt, &mut tail)
        };
        if rc != ffi::SQLITE_OK {
            return Err(last_error(db, rc));
        }
        if stmt.is_null() {
            return Ok(None);
        }
        // SAFETY: `stmt` is a valid prepared statement from here on, owned
        // (and finalized) by `raw`.
        let mut raw = Raw {
            db,
            stmt,
            params: unsafe { ffi::sqlite3_bind_parameter_count(stmt) } as usize,
            columns: Vec::new().into(),
            decls: Vec::new(),
            described: generation,
            reprepared: 0,
            holds_large: false,
        };
        let used = (tail as usize).saturating_sub(sql.as_ptr() as usize);
        let rest = sql.get(used..).unwrap_or("");
        if !rest.trim().is_empty() && Raw::prepare(conn, rest, false, generation)?.is_some() {
            return Err(Error::parameter(
                "more than one statement was given; use execute_batch for scripts",
            ));
        }
        raw.describe(generation);
        Ok(Some(raw))
    }

    /// Reads the result's column names and declared types.
    fn describe(&mut self, generation: u64) {
        // SAFETY (all calls): `stmt` is valid; indexes are in range.
        let count = unsafe { ffi::sqlite3_column_count(self.stmt) };
        let mut names = Vec::with_capacity(count as usize);
        self.decls.clear();
        for i in 0..count {
            let name = unsafe { c_str(ffi::sqlite3_column_name(self.stmt, i)) };
            names.push(Arc::<str>::from(name.unwrap_or_default()));
            let decl = unsafe { c_str(ffi::sqlite3_column_decltype(self.stmt, i)) };
            self.decls.push(Decl::of(decl.as_deref()));
        }
        self.columns = names.into();
        self.described = generation;
        self.reprepared = self.reprepared_count();
    }

    fn reprepared_count(&self) -> i32 {
        // SAFETY: `stmt` is valid; the counter is only read.
        unsafe { ffi::sqlite3_stmt_status(self.stmt, ffi::SQLITE_STMTSTATUS_REPREPARE, 0) }
    }

    /// Reads the columns again when the schema changed on this connection
    /// since they were read, or SQLite prepared the statement again for a
    /// schema another connection changed.
    #[inline]
    fn refresh(&mut self, generation: u64) {
        if self.described != generation || self.reprepared_count() != self.reprepared {
            self.describe(generation);
        }
    }

    /// Binds `params` in order, after checking their number.
    fn bind(&mut self, params: &[Value]) -> Result<()> {
        use std::os::raw::c_int;
        if self.params != params.len() {
            return Err(Error::parameter(format!(
                "the statement has {} placeholders but {} values were given",
                self.params,
                params.len()
            )));
        }
        for (i, v) in params.iter().enumerate() {
            let n = i as c_int + 1;
            let out = v.to_sql().map_err(classify)?;
            let r = match &out {
                ToSqlOutput::Borrowed(r) => *r,
                ToSqlOutput::Owned(o) => ValueRef::from(o),
                _ => ValueRef::Null,
            };
            if let ValueRef::Text(b) | ValueRef::Blob(b) = r {
                self.holds_large |= b.len() > LARGE_BINDING;
            }
            // SAFETY: `stmt` is valid and `n` is within its parameters;
            // text and blobs are copied by SQLite (SQLITE_TRANSIENT).
            let rc = unsafe {
                match r {
                    ValueRef::Null => ffi::sqlite3_bind_null(self.stmt, n),
                    ValueRef::Integer(x) => ffi::sqlite3_bind_int64(self.stmt, n, x),
                    ValueRef::Real(x) => ffi::sqlite3_bind_double(self.stmt, n, x),
                    ValueRef::Text(t) => ffi::sqlite3_bind_text(
                        self.stmt,
                        n,
                        t.as_ptr().cast(),
                        t.len() as c_int,
                        ffi::SQLITE_TRANSIENT(),
                    ),
                    ValueRef::Blob(b) => ffi::sqlite3_bind_blob(
                        self.stmt,
                        n,
                        b.as_ptr().cast(),
                        b.len() as c_int,
                        ffi::SQLITE_TRANSIENT(),
                    ),
                }
            };
            if rc != ffi::SQLITE_OK {
                return Err(last_error(self.db, rc));
            }
        }
        Ok(())
    }

    /// Steps up to `max` rows into `out`; `Ok(false)` when done. The
    /// columns are checked at the first row, after SQLite had its chance to
    /// prepare the statement again for a changed schema.
    #[inline]
    fn step(&mut self, max: usize, out: &mut Vec<Row>, generation: u64) -> Result<bool> {
        for n in 0..max {
            // SAFETY: `stmt` is valid until `self` drops.
            let rc = unsafe { ffi::sqlite3_step(self.stmt) };
            if rc != ffi::SQLITE_ROW {
                return match rc {
                    ffi::SQLITE_DONE => Ok(false),
                    _ => Err(last_error(self.db, rc)),
                };
            }
            if n == 0 {
                self.refresh(generation);
                if out.capacity() == 0 {
                    // Room for the usual few rows, made at once.
                    *out = Vec::with_capacity(4);
                }
            }
            // A narrow row's values are gathered in the row itself.
            let mut values = value::Values::new();
            values.reserve_exact(self.decls.len());
            for (i, &decl) in self.decls.iter().enumerate() {
                values.push(self.column(i as std::os::raw::c_int, decl));
            }
            out.push(Row::new(Arc::clone(&self.columns), values));
        }
        Ok(true)
    }

    /// Steps to the end, reading no row.
    fn run_to_end(&mut self) -> Result<()> {
        loop {
            // SAFETY: `stmt` is valid until `self` drops.
            match unsafe { ffi::sqlite3_step(self.stmt) } {
                ffi::SQLITE_ROW => {}
                ffi::SQLITE_DONE => return Ok(()),
                rc => return Err(last_error(self.db, rc)),
            }
        }
    }

    /// Column `i` of the current row, read as its declared type says.
    #[inline]
    fn column(&self, i: std::os::raw::c_int, decl: Decl) -> Value {
        // SAFETY: a row is current (`step` returned SQLITE_ROW) and `i` is
        // below the column count; the slices are copied by `read` before
        // the next step.
        let v = unsafe {
            match ffi::sqlite3_column_type(self.stmt, i) {
                ffi::SQLITE_INTEGER => ValueRef::Integer(ffi::sqlite3_column_int64(self.stmt, i)),
                ffi::SQLITE_FLOAT => ValueRef::Real(ffi::sqlite3_column_double(self.stmt, i)),
                ffi::SQLITE_TEXT => {
                    // Text first, then its length (as SQLite advises).
                    let p = ffi::sqlite3_column_text(self.stmt, i);
                    let n = ffi::sqlite3_column_bytes(self.stmt, i) as usize;
                    ValueRef::Text(raw_slice(p, n))
                }
                ffi::SQLITE_BLOB => {
                    let p = ffi::sqlite3_column_blob(self.stmt, i);
                    let n = ffi::sqlite3_column_bytes(self.stmt, i) as usize;
                    ValueRef::Blob(raw_slice(p.cast(), n))
                }
                _ => ValueRef::Null,
            }
        };
        read(v, decl)
    }

    /// Ends a run of the statement so that it can run again and holds no
    /// read lock; a long text or blob bound is let go (the next run binds
    /// every parameter again anyway).
    #[inline]
    fn reset(&mut self) {
        // SAFETY: `stmt` is valid. The error sqlite3_reset returns is the
        // run's own, already reported by `step`.
        unsafe {
            ffi::sqlite3_reset(self.stmt);
            if self.holds_large {
                ffi::sqlite3_clear_bindings(self.stmt);
                self.holds_large = false;
            }
        }
    }
}

/// A stream's statement: one prepared for it alone, stepped from one
/// fetch to the next, finalized when the stream ends.
struct Cursor(Raw);

impl Cursor {
    fn open(conn: &rusqlite::Connection, sql: &str, params: &[Value]) -> Result<Cursor> {
        let mut raw = Raw::prepare(conn, sql, false, 0)?
            .ok_or_else(|| Error::parameter("the statement to stream is empty"))?;
        raw.bind(params)?;
        Ok(Cursor(raw))
    }

    /// Steps up to `max` rows into `out`; `Ok(false)` when done.
    fn step(&mut self, max: usize, out: &mut Vec<Row>) -> Result<bool> {
        out.reserve(max);
        let generation = self.0.described;
        self.0.step(max, out, generation)
    }
}

/// The statements a connection's queries ran, prepared once and kept, by
/// text: a query run again costs a hash and a comparison, not a parse and
/// a plan, nor rusqlite's cache churn (out of its LRU and back per call).
/// Bounded; past the bound the least recently used is finalized.
struct Statements {
    list: Vec<(Box<str>, Raw, u64)>,
    index: std::collections::HashMap<Box<str>, usize, crate::sql::TextHash>,
    /// The entry used last (a batch job runs one statement in a loop).
    last: usize,
    clock: u64,
}

impl Statements {
    /// Statements kept per connection, as rusqlite's cache is set to.
    const CAPACITY: usize = 256;

    fn new() -> Statements {
        Statements {
            list: Vec::new(),
            index: Default::default(),
            last: usize::MAX,
            clock: 0,
        }
    }

    /// The prepared statement of `sql`, prepared now if it is not kept;
    /// `None` when `sql` holds no statement.
    #[inline]
    fn get(
        &mut self,
        conn: &rusqlite::Connection,
        sql: &str,
        generation: u64,
    ) -> Result<Option<&mut Raw>> {
        self.clock += 1;
        let at = match self.list.get(self.last) {
            Some((text, _, _)) if **text == *sql => self.last,
            _ => match self.index.get(sql) {
                Some(&i) => i,
                None => match Raw::prepare(conn, sql, true, generation)? {
                    None => return Ok(None),
                    Some(raw) => self.insert(sql, raw),
                },
            },
        };
        self.last = at;
        let (_, raw, used) = &mut self.list[at];
        *used = self.clock;
        Ok(Some(raw))
    }

    #[cold]
    fn insert(&mut self, sql: &str, raw: Raw) -> usize {
        if self.list.len() >= Self::CAPACITY {
            let oldest = (0..self.list.len())
                .min_by_key(|&i| self.list[i].2)
                .unwrap_or(0);
            let (text, _, _) = self.list.swap_remove(oldest);
            self.index.remove(&text);
            if let Some((moved, _, _)) = self.list.get(oldest) {
                self.index.insert(moved.clone(), oldest);
            }
        }
        self.list.push((sql.into(), raw, self.clock));
        self.index.insert(sql.into(), self.list.len() - 1);
        self.list.len() - 1
    }

    /// Finalizes every statement kept.
    fn clear(&mut self) {
        self.list.clear();
        self.index.clear();
        self.last = usize::MAX;
    }
}

/// Whether a statement run by `execute` may change the schema: anything
/// but a plain `INSERT`, `UPDATE`, `DELETE` or `REPLACE` (a statement that
/// starts with a comment or `WITH` counts as one that may).
fn may_change_schema(sql: &str) -> bool {
    let word = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    !["INSERT", "UPDATE", "DELETE", "REPLACE"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

/// The bytes at `p` (empty when null).
///
/// # Safety
///
/// `p` is null or valid for `n` bytes for the returned lifetime.
unsafe fn raw_slice<'a>(p: *const u8, n: usize) -> &'a [u8] {
    if p.is_null() || n == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(p, n)
    }
}

/// A C string from SQLite as text (`None` when null).
///
/// # Safety
///
/// `p` is null or a NUL-terminated string.
unsafe fn c_str(p: *const std::os::raw::c_char) -> Option<String> {
    (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
}

/// The error SQLite reports for `db` after a call returned `rc`.
#[cold]
fn last_error(db: *mut ffi::sqlite3, rc: std::os::raw::c_int) -> Error {
    // SAFETY: `db` is an open connection.
    let (extended, message) = unsafe {
        (
            ffi::sqlite3_extended_errcode(db),
            c_str(ffi::sqlite3_errmsg(db)),
        )
    };
    let code = if extended & 0xff == rc & 0xff {
        extended
    } else {
        rc
    };
    classify(rusqlite::Error::SqliteFailure(
        ffi::Error::new(code),
        message,
    ))
}

/// What a column's declared type says its values mean (SQLite stores only
/// integer, real, text and blob).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Decl {
    Plain,
    Bool,
    Decimal,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Uuid,
    Json,
}

impl Decl {
    fn of(decl: Option<&str>) -> Decl {
        let Some(d) = decl else { return Decl::Plain };
        let d = d.to_ascii_uppercase();
        if d.starts_with("BOOL") {
            Decl::Bool
        } else if d.starts_with("DECIMAL") || d.starts_with("NUMERIC") {
            Decl::Decimal
        } else if d.starts_with("TIMESTAMPTZ") || d.contains("WITH TIME ZONE") {
            Decl::TimestampTz
        } else if d.starts_with("TIMESTAMP") || d.starts_with("DATETIME") {
            Decl::Timestamp
        } else if d == "DATE" {
            Decl::Date
        } else if d.starts_with("TIME") {
            Decl::Time
        } else if d == "UUID" {
            Decl::Uuid
        } else if d.starts_with("JSON") {
            Decl::Json
        } else {
            Decl::Plain
        }
    }
}

/// Reads a stored value, interpreting text and integers by declared type
/// where the text parses; anything that does not parse stays as stored.
fn read(v: ValueRef<'_>, decl: Decl) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => match decl {
            Decl::Bool => Value::Bool(i != 0),
            Decl::Decimal => Value::Decimal(i.into()),
            _ => Value::I64(i),
        },
        ValueRef::Real(f) => match decl {
            Decl::Decimal => {
                rust_decimal::Decimal::try_from(f).map_or(Value::F64(f), Value::Decimal)
            }
            _ => Value::F64(f),
        },
        ValueRef::Text(bytes) => {
            // Plain text, the common case, straight to its value.
            if matches!(decl, Decl::Plain | Decl::Bool) {
                if let Ok(s) = std::str::from_utf8(bytes) {
                    return Value::Text(s.to_owned());
                }
            }
            // Valid UTF-8 (the rule) is checked at full speed; only
            // invalid bytes take the lossy path.
            let s = std::str::from_utf8(bytes).map_or_else(
                |_| String::from_utf8_lossy(bytes),
                std::borrow::Cow::Borrowed,
            );
            let parsed = match decl {
                Decl::Plain | Decl::Bool => None,
                Decl::Decimal => s.trim().parse().ok().map(Value::Decimal),
                Decl::Date => value::parse_date(&s).map(Value::Date),
                Decl::Time => value::parse_time(&s).map(Value::Time),
                Decl::Timestamp => value::parse_timestamp(&s).map(Value::Timestamp),
                Decl::TimestampTz => value::parse_timestamptz(&s).map(Value::TimestampTz),
                Decl::Uuid => uuid::Uuid::parse_str(&s).ok().map(Value::Uuid),
                Decl::Json => serde_json::from_str(&s).ok().map(Value::Json),
            };
            parsed.unwrap_or_else(|| Value::Text(s.into_owned()))
        }
        ValueRef::Blob(b) => match decl {
            Decl::Uuid => {
                uuid::Uuid::from_slice(b).map_or_else(|_| Value::Bytes(b.to_vec()), Value::Uuid)
            }
            _ => Value::Bytes(b.to_vec()),
        },
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::Value as S;
        Ok(match self {
            Value::Null => ToSqlOutput::Owned(S::Null),
            Value::Bool(b) => ToSqlOutput::Owned(S::Integer(i64::from(*b))),
            Value::I64(i) => ToSqlOutput::Owned(S::Integer(*i)),
            Value::F64(f) => ToSqlOutput::Owned(S::Real(*f)),
            Value::Decimal(d) => ToSqlOutput::Owned(S::Text(d.to_string())),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            Value::Date(d) => ToSqlOutput::Owned(S::Text(d.format("%Y-%m-%d").to_string())),
            Value::Time(t) => ToSqlOutput::Owned(S::Text(t.format("%H:%M:%S%.f").to_string())),
            Value::Timestamp(t) => {
                ToSqlOutput::Owned(S::Text(t.format("%Y-%m-%d %H:%M:%S%.f").to_string()))
            }
            Value::TimestampTz(t) => {
                ToSqlOutput::Owned(S::Text(t.format("%Y-%m-%d %H:%M:%S%.f+00:00").to_string()))
            }
            Value::Uuid(u) => ToSqlOutput::Owned(S::Text(u.to_string())),
            Value::Json(j) => ToSqlOutput::Owned(S::Text(j.to_string())),
        })
    }
}

/// The error of a statement stopped by `sqlite3_interrupt`.
#[cold]
fn interrupted() -> Error {
    classify(rusqlite::Error::SqliteFailure(
        ffi::Error::new(ffi::SQLITE_INTERRUPT),
        None,
    ))
}

/// Maps a rusqlite error to ours, with SQLite's extended result code.
/// The name of an SQLite result code (`SQLITE_CONSTRAINT_UNIQUE`), as the
/// SQLite documentation spells it; unnamed extended codes fall back to the
/// number.
fn code_name(extended: std::os::raw::c_int) -> String {
    macro_rules! names {
        ($code:expr; $($name:ident),* $(,)?) => {
            match $code {
                $(ffi::$name => Some(stringify!($name)),)*
                _ => None,
            }
        };
    }
    let extended_name = names!(extended;
        SQLITE_CONSTRAINT_CHECK, SQLITE_CONSTRAINT_COMMITHOOK, SQLITE_CONSTRAINT_FOREIGNKEY,
        SQLITE_CONSTRAINT_FUNCTION, SQLITE_CONSTRAINT_NOTNULL, SQLITE_CONSTRAINT_PRIMARYKEY,
        SQLITE_CONSTRAINT_TRIGGER, SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_VTAB,
        SQLITE_CONSTRAINT_ROWID, SQLITE_CONSTRAINT_DATATYPE, SQLITE_BUSY_SNAPSHOT,
        SQLITE_BUSY_TIMEOUT, SQLITE_READONLY_DBMOVED, SQLITE_READONLY_DIRECTORY,
    );
    if let Some(name) = extended_name {
        return name.to_owned();
    }
    let primary = names!(extended;
        SQLITE_ERROR, SQLITE_INTERNAL, SQLITE_PERM, SQLITE_ABORT, SQLITE_BUSY, SQLITE_LOCKED,
        SQLITE_NOMEM, SQLITE_READONLY, SQLITE_INTERRUPT, SQLITE_IOERR, SQLITE_CORRUPT,
        SQLITE_NOTFOUND, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_PROTOCOL, SQLITE_EMPTY,
        SQLITE_SCHEMA, SQLITE_TOOBIG, SQLITE_CONSTRAINT, SQLITE_MISMATCH, SQLITE_MISUSE,
        SQLITE_NOLFS, SQLITE_AUTH, SQLITE_FORMAT, SQLITE_RANGE, SQLITE_NOTADB,
    );
    primary.map_or_else(|| extended.to_string(), str::to_owned)
}

#[cold]
fn classify(e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as C;
    match &e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            let kind = match f.code {
                C::ConstraintViolation
                    if f.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE
                        || f.extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
                {
                    ErrorKind::UniqueViolation
                }
                C::ConstraintViolation => ErrorKind::Constraint,
                C::DatabaseBusy | C::DatabaseLocked => ErrorKind::Conflict,
                C::ReadOnly => ErrorKind::ReadOnly,
                C::OperationInterrupted => ErrorKind::QueryTimeout,
                C::PermissionDenied | C::AuthorizationForStatementDenied => ErrorKind::Permission,
                C::CannotOpen | C::NotADatabase | C::DatabaseCorrupt => ErrorKind::Connect,
                C::TypeMismatch | C::TooBig => ErrorKind::Conversion,
                C::ParameterOutOfRange => ErrorKind::Parameter,
                C::Unknown => ErrorKind::Syntax,
                _ => ErrorKind::Database,
            };
            let message = msg.clone().unwrap_or_else(|| f.to_string());
            Error::new(kind, message).with_code(code_name(f.extended_code))
        }
        rusqlite::Error::SqlInputError {
            error, msg, offset, ..
        } => Error::new(ErrorKind::Syntax, format!("{msg} (at byte {offset})"))
            .with_code(code_name(error.extended_code)),
        rusqlite::Error::InvalidParameterCount(given, expected) => Error::parameter(format!(
            "the statement has {expected} placeholders but {given} values were given"
        )),
        rusqlite::Error::InvalidParameterName(_) => {
            Error::parameter("a named parameter does not match the statement")
        }
        rusqlite::Error::MultipleStatement => {
            Error::parameter("more than one statement was given; use execute_batch for scripts")
        }
        rusqlite::Error::Utf8Error(..) | rusqlite::Error::FromSqlConversionFailure(..) => {
            Error::conversion("a value read from SQLite could not be converted").with_source(e)
        }
        _ => Error::new(ErrorKind::Database, "SQLite reported an error").with_source(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_writes_leave_the_schema_alone() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "  update t SET a = 1",
            "Delete FROM t",
            "REPLACE INTO t VALUES (1)",
        ] {
            assert!(!may_change_schema(sql), "{sql}");
        }
        for sql in [
            "CREATE TABLE t (a INTEGER)",
            "ALTER TABLE t ADD b INTEGER",
            "DROP TABLE t",
            "-- a comment\nINSERT INTO t VALUES (1)",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "INSERTX",
            "",
        ] {
            assert!(may_change_schema(sql), "{sql}");
        }
    }

    #[test]
    fn url_forms() {
        assert!(matches!(
            sqlite_target("sqlite::memory:"),
            Ok(Target::Memory)
        ));
        assert!(matches!(
            sqlite_target("sqlite://:memory:"),
            Ok(Target::Memory)
        ));
        assert!(matches!(sqlite_target("sqlite:a/b.db"), Ok(Target::File(p)) if p == "a/b.db"));
        assert!(
            matches!(sqlite_target("sqlite:///tmp/x.db"), Ok(Target::File(p)) if p == "/tmp/x.db")
        );
        assert!(
            matches!(sqlite_target("sqlite://rel.db?mode=rwc"), Ok(Target::File(p)) if p == "rel.db")
        );
        assert!(sqlite_target("sqlite:").is_err());
    }
}
