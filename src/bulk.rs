//! Bulk writes: [`Bulk`], a builder for inserting, upserting, updating or
//! deleting many rows on each server's fastest path, in chunks.
//!
//! A bulk load is statements like any other: it passes the pipeline's
//! stages (read-only check, breaker and checkout, the budget, the watchdog,
//! settling, metrics), with the backend's bulk-write stage as the execute
//! of each chunk, and `BEGIN`/`COMMIT` as ordinary transaction statements.
//!
//! | server | insert | upsert, update, delete |
//! |---|---|---|
//! | PostgreSQL | binary `COPY … FROM STDIN` | `COPY` into a temporary table, then one `INSERT … ON CONFLICT`, `UPDATE … FROM` or `DELETE … USING` |
//! | MySQL, MariaDB | multi-row `INSERT` (≤ 1000 rows, under `max_allowed_packet`) | multi-row `INSERT … ON DUPLICATE KEY UPDATE`; `DELETE … WHERE (keys) IN (…)`; one `UPDATE` per row |
//! | SQLite | one prepared `INSERT` run per row, in the transaction | the same with `ON CONFLICT … DO UPDATE`, `UPDATE`, `DELETE` |
//! | SQL Server | TDS bulk load (`INSERT BULK`) | bulk load into a temporary table, then one `MERGE`, `UPDATE … FROM` or `DELETE … FROM` |
//!
//! The SQL Server test server (pysqlbridge) has no bulk load, so the SQL
//! Server writes are not verified against a server here; only their clean
//! refusal is, and the value encoding by unit tests.
//!
//! **Timeouts:** the query timeout in force bounds each chunk, not the
//! whole load. On SQLite, and for MySQL inserts and upserts, a chunk's
//! rows are taken from the input as the backend writes them (never
//! gathered first), so the time the input takes counts against that
//! bound; the other paths gather a chunk before it is timed.

use std::fmt;
use std::panic::Location;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::{BulkKind, BulkPlan, BulkRows};
use crate::error::{Error, Result};
use crate::pipeline::{Limit, Op, Shared};
use crate::pool::Pooled;
use crate::value::{IntoParams, Params, Value};

/// Rows per chunk unless [`Bulk::chunk_size`] says otherwise.
pub const DEFAULT_CHUNK_SIZE: usize = 10_000;

/// What a bulk load did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BulkReport {
    /// Rows taken from the input and written (after [`start_at`](Bulk::start_at)).
    pub rows: u64,
    /// Rows affected as the server counts them (MySQL counts an upserted
    /// row that changed as 2; an update or delete that matched nothing
    /// counts 0).
    pub rows_affected: u64,
    /// Chunks written.
    pub chunks: u64,
    /// The whole load, checkout to last commit.
    pub elapsed: Duration,
    /// The input row the load started at (0 unless resumed).
    pub start_at: u64,
    /// The input row after the last one written: where a later load
    /// would go on.
    pub position: u64,
}

/// How far a load that commits each chunk has come, for its progress
/// callback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BulkProgress {
    /// Chunks committed so far (by this run).
    pub chunks: u64,
    /// The input row after the last one committed: give it to
    /// [`start_at`](Bulk::start_at) to go on from here.
    pub position: u64,
    /// Rows affected so far (by this run).
    pub rows_affected: u64,
    /// Since the load started.
    pub elapsed: Duration,
}

/// A row from any `Serialize` struct (or map), its values matched to the
/// columns by field name: `db.bulk_insert("t", &["id", "name"], people.iter().map(Record))`.
///
/// Values become what serde makes of them: numbers, booleans and text
/// as such, `None` as NULL; dates, times, UUIDs and decimals as text
/// (which the servers read for such columns); nested structs and sequences
/// as JSON.
#[derive(Clone, Copy, Debug)]
pub struct Record<T>(pub T);

impl<T: Serialize> IntoParams for Record<T> {
    fn into_params(self) -> Params {
        match serde_json::to_value(&self.0) {
            Ok(serde_json::Value::Object(map)) => {
                Params::Named(map.into_iter().map(|(k, v)| (k, from_json(v))).collect())
            }
            // Not a struct or map: no column can match it; the load says so.
            _ => Params::Named(Vec::new()),
        }
    }
}

fn from_json(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::I64(i),
            None => n.as_f64().map_or(Value::Null, Value::F64),
        },
        J::String(s) => Value::Text(s),
        other => Value::Json(other),
    }
}

/// A load's progress callback.
type Progress<'a> = Option<Box<dyn FnMut(&BulkProgress) + 'a>>;

/// Whether a load is one transaction or one per chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Commit {
    AllOrNothing,
    EachChunk,
}

/// A bulk load being set up: made by
/// [`DatabaseManager::bulk`](crate::DatabaseManager::bulk), run by
/// [`insert`](Self::insert), [`upsert`](Self::upsert),
/// [`update`](Self::update) or [`delete`](Self::delete).
///
/// ```
/// # fn main() -> dbmanager::Result<()> {
/// # let db = dbmanager::DatabaseManager::from_config(
/// #     dbmanager::DatabaseConfig::builder("bulk_doc").url("sqlite::memory:").build()?)?;
/// db.execute_batch("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")?;
/// let rows = (0..25_000).map(|i| (i, format!("person {i}")));
/// let report = db
///     .bulk("people")
///     .chunk_size(10_000)
///     .commit_each_chunk()
///     .on_progress(|p| println!("{} rows committed", p.position))
///     .insert(&["id", "name"], rows)?;
/// assert_eq!((report.rows, report.chunks), (25_000, 3));
/// # Ok(()) }
/// ```
#[must_use = "a bulk load does nothing until insert, upsert, update or delete runs it"]
pub struct Bulk<'a> {
    shared: Arc<Shared>,
    /// A guard's or transaction's connection (`None`: one of its own).
    conn: Option<&'a mut Pooled>,
    /// The load runs inside the caller's transaction: no `BEGIN`/`COMMIT`
    /// of its own.
    in_transaction: bool,
    /// Why the borrowed connection cannot be used (a transaction that
    /// timed out or ended), reported when the load runs.
    refused: Option<Error>,
    table: String,
    chunk_size: usize,
    commit: Commit,
    start_at: u64,
    limit: Limit,
    progress: Progress<'a>,
    site: &'static Location<'static>,
}

impl fmt::Debug for Bulk<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulk")
            .field("database", self.shared.name())
            .field("table", &self.table)
            .field("chunk_size", &self.chunk_size)
            .field("commit", &self.commit)
            .field("start_at", &self.start_at)
            .finish_non_exhaustive()
    }
}

impl<'a> Bulk<'a> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        table: &str,
        site: &'static Location<'static>,
    ) -> Bulk<'a> {
        Bulk {
            shared,
            conn: None,
            in_transaction: false,
            refused: None,
            table: table.to_owned(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            commit: Commit::AllOrNothing,
            start_at: 0,
            limit: Limit::DEFAULT,
            progress: None,
            site,
        }
    }

    /// A load on a guard's connection, or inside a transaction
    /// (`in_transaction`: its statements are part of it, committed or
    /// rolled back with it).
    pub(crate) fn on(
        shared: Arc<Shared>,
        table: &str,
        parts: Result<(&'a mut Pooled, Limit)>,
        in_transaction: bool,
        site: &'static Location<'static>,
    ) -> Bulk<'a> {
        let mut bulk = Bulk::new(shared, table, site);
        bulk.in_transaction = in_transaction;
        match parts {
            Ok((conn, limit)) => {
                bulk.conn = Some(conn);
                bulk.limit = limit;
            }
            Err(e) => bulk.refused = Some(e),
        }
        bulk
    }

    /// Rows per chunk (default [`DEFAULT_CHUNK_SIZE`]; 0 counts as 1).
    /// Each chunk is one execute on the server, bounded by the query
    /// timeout.
    pub fn chunk_size(mut self, rows: usize) -> Self {
        self.chunk_size = rows.max(1);
        self
    }

    /// Commits after each chunk instead of once at the end (the default is
    /// all or nothing: one transaction). A load that fails then keeps the
    /// chunks before the failing one, and its error says where to resume
    /// ([`Error::bulk_position`](crate::Error::bulk_position)).
    pub fn commit_each_chunk(mut self) -> Self {
        self.commit = Commit::EachChunk;
        self
    }

    /// Skips the first `row` rows of the input: resumes a load that
    /// committed that far (see [`BulkProgress::position`]).
    pub fn start_at(mut self, row: u64) -> Self {
        self.start_at = row;
        self
    }

    /// Bounds each chunk by `timeout` (`None`: no limit) in place of the
    /// database's query timeout.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limit = Limit::custom(timeout);
        self
    }

    /// Called after each committed chunk when committing each chunk (and
    /// once at the end of an all-or-nothing load).
    pub fn on_progress(mut self, f: impl FnMut(&BulkProgress) + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Inserts `rows`, each carrying the values of `columns` in order
    /// (tuples, `Vec<Value>`, [`Record`] of a `Serialize` struct, or a map
    /// by column name).
    ///
    /// # Errors
    ///
    /// [`Parameter`](crate::ErrorKind::Parameter) for a table or column name
    /// that is empty or holds a quote, `;` or a control character, or a row
    /// whose values do not match the columns (naming the row); the server's
    /// error (a constraint, a type) naming the chunk and its rows;
    /// [`ReadOnly`](crate::ErrorKind::ReadOnly) on a read-only database;
    /// pool and query timeouts. All or nothing unless
    /// [`commit_each_chunk`](Self::commit_each_chunk).
    pub fn insert<R: IntoParams>(
        self,
        columns: &[&str],
        rows: impl IntoIterator<Item = R>,
    ) -> Result<BulkReport> {
        self.run(BulkKind::Insert, columns, &[], rows)
    }

    /// Inserts `rows`, or updates the existing row with the same
    /// `key_columns` (which must be a primary key or unique, and among
    /// `columns`). A key given twice is written as row after row would
    /// write it: the later row wins, in one chunk or across chunks, on
    /// every server.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub fn upsert<R: IntoParams>(
        self,
        columns: &[&str],
        key_columns: &[&str],
        rows: impl IntoIterator<Item = R>,
    ) -> Result<BulkReport> {
        self.run(BulkKind::Upsert, columns, key_columns, rows)
    }

    /// Sets the other `columns` of the rows matched by `key_columns` (which
    /// must be among `columns`). A NULL key matches nothing. A key given
    /// twice: the later row wins, as for [`upsert`](Self::upsert).
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub fn update<R: IntoParams>(
        self,
        columns: &[&str],
        key_columns: &[&str],
        rows: impl IntoIterator<Item = R>,
    ) -> Result<BulkReport> {
        self.run(BulkKind::Update, columns, key_columns, rows)
    }

    /// Deletes the rows whose `key_columns` match `keys` (each carrying the
    /// key values in order).
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub fn delete<R: IntoParams>(
        self,
        key_columns: &[&str],
        keys: impl IntoIterator<Item = R>,
    ) -> Result<BulkReport> {
        self.run(BulkKind::Delete, key_columns, key_columns, keys)
    }

    fn run<R: IntoParams>(
        mut self,
        kind: BulkKind,
        columns: &[&str],
        keys: &[&str],
        rows: impl IntoIterator<Item = R>,
    ) -> Result<BulkReport> {
        let name = Arc::clone(self.shared.name());
        let plan = BulkPlan::new(kind, self.shared.dialect, &self.table, columns, keys)
            .map_err(|e| e.on_database(&name))?;
        let keyword = match kind {
            BulkKind::Insert | BulkKind::Upsert => "INSERT",
            BulkKind::Update => "UPDATE",
            BulkKind::Delete => "DELETE",
        };
        self.shared
            .prepare_stage(Op::Execute, keyword, Params::None)?;
        if let Some(e) = self.refused.take() {
            return Err(e);
        }
        if self.in_transaction && self.commit == Commit::EachChunk {
            return Err(Error::parameter(
                "commit_each_chunk cannot be used inside a transaction, which commits as a whole; \
                 run the load on the manager (db.bulk) to commit each chunk",
            )
            .on_database(&name));
        }
        let label = format!(
            "{keyword} {} ({}) /* bulk {} */",
            plan.table,
            plan.column_list(),
            kind.name()
        );
        let start = Instant::now();
        let mut owned;
        let conn = match self.conn.take() {
            Some(c) => c,
            None => {
                owned = self.shared.checkout_within(None, self.site)?;
                &mut owned
            }
        };
        // PostgreSQL's upserts, updates and deletes make a temporary table.
        conn.dirty |= plan.changes_session();
        let mut load = Load {
            shared: &self.shared,
            conn,
            outer: self.in_transaction,
            plan: &plan,
            label: &label,
            limit: self.limit,
            in_tx: false,
            fired: false,
        };
        let mut report = BulkReport {
            start_at: self.start_at,
            position: self.start_at,
            ..BulkReport::default()
        };
        let result = load.all(
            rows,
            self.chunk_size,
            self.commit,
            &mut report,
            &mut self.progress,
            start,
        );
        let fired = load.fired;
        report.elapsed = start.elapsed();
        let failure = result.as_ref().err().map(Error::kind);
        self.shared.account_stage(
            Op::Execute,
            &label,
            start,
            failure,
            fired,
            report.rows_affected,
        );
        // The query cache's entries of the table go, as after any write.
        crate::cache::after_statement(
            &self.shared,
            Op::Execute,
            &format!("DELETE FROM {} WHERE 1 = 0", plan.table),
        );
        let committed = match (&result, self.commit) {
            (Ok(()), _) | (Err(_), Commit::EachChunk) => report.rows_affected,
            (Err(_), Commit::AllOrNothing) => 0,
        };
        self.shared
            .metrics
            .bulk(kind as usize, report.elapsed, committed);
        result.map(|()| report)
    }
}

/// One load running on its connection.
struct Load<'s> {
    shared: &'s Arc<Shared>,
    conn: &'s mut Pooled,
    plan: &'s BulkPlan,
    label: &'s str,
    limit: Limit,
    /// Inside the caller's transaction: no `BEGIN`/`COMMIT`/`ROLLBACK` here.
    outer: bool,
    in_tx: bool,
    fired: bool,
}

impl Load<'_> {
    fn all<R: IntoParams>(
        &mut self,
        rows: impl IntoIterator<Item = R>,
        chunk_size: usize,
        commit: Commit,
        report: &mut BulkReport,
        progress: &mut Progress<'_>,
        start: Instant,
    ) -> Result<()> {
        let width = self.plan.columns.len();
        let names: Vec<String> = self.plan.columns.iter().map(|c| unquote(c)).collect();
        let skip = usize::try_from(report.start_at).unwrap_or(usize::MAX);
        let mut input = rows.into_iter().enumerate().skip(skip).peekable();
        let plan = self.plan;
        // Backends that write rows as they come are given them so, through
        // one reused row buffer; for the others a chunk is gathered before
        // it is timed, so that the time the input takes is not the
        // statement's.
        let as_they_come = self.conn.backend.bulk_writes_rows_as_they_come(plan);
        let mut gathered: Vec<Vec<Value>> = Vec::new();
        while input.peek().is_some() {
            let first = report.position;
            let chunk_no = report.chunks + 1;
            if !as_they_come {
                gathered.clear();
                for (index, row) in input.by_ref().take(chunk_size) {
                    let mut values = Vec::with_capacity(width);
                    row_values(row, &mut values, width, &names, index as u64)
                        .map_err(|e| self.fail(e, None, commit, report))?;
                    gathered.push(values);
                }
            }
            if !self.in_tx && !self.outer {
                self.statement(Op::Begin)
                    .map_err(|e| self.fail(e, None, commit, report))?;
                self.in_tx = true;
            }
            let mut chunk = ChunkRows {
                input: &mut input,
                left: if as_they_come { chunk_size } else { 0 },
                taken: gathered.len() as u64,
                width,
                names: &names,
            };
            let (written, fired) =
                self.shared
                    .stage(self.conn, Op::Execute, self.label, self.limit, |b| {
                        if as_they_come {
                            b.bulk_write_rows(plan, &mut chunk)
                        } else {
                            b.bulk_write(plan, &gathered)
                        }
                    });
            let taken = chunk.taken;
            self.fired |= fired;
            let n = match written {
                Ok(n) => n,
                Err(e) => {
                    // The chunk's rows not yet taken are counted (not
                    // converted), so that the error names the whole chunk.
                    let left = chunk.left;
                    let last = first + taken + input.by_ref().take(left).count() as u64 - 1;
                    return Err(self.fail(e, Some((chunk_no, first, last)), commit, report));
                }
            };
            report.rows_affected += n;
            report.rows += taken;
            report.chunks = chunk_no;
            report.position = first + taken;
            if commit == Commit::EachChunk {
                self.commit().map_err(|e| {
                    self.fail(
                        e,
                        Some((chunk_no, first, report.position - 1)),
                        commit,
                        report,
                    )
                })?;
                if let Some(f) = progress.as_mut() {
                    f(&progress_of(report, start));
                }
            }
        }
        if self.in_tx {
            let last = report.position.saturating_sub(1);
            self.commit().map_err(|e| {
                self.fail(
                    e,
                    Some((report.chunks, report.start_at, last)),
                    commit,
                    report,
                )
            })?;
        }
        if commit == Commit::AllOrNothing {
            if let Some(f) = progress.as_mut() {
                f(&progress_of(report, start));
            }
        }
        Ok(())
    }

    /// `BEGIN`, `COMMIT` or `ROLLBACK` through the pipeline, as any
    /// transaction's.
    fn statement(&mut self, op: Op) -> Result<()> {
        self.shared
            .run(Some(self.conn), op, "", Params::None, self.limit)
            .map(drop)
    }

    fn commit(&mut self) -> Result<()> {
        self.in_tx = false;
        let result = self.statement(Op::Commit);
        if result.is_err() {
            self.rollback();
        }
        result
    }

    /// Rolls back an open transaction; a connection whose rollback failed
    /// is discarded.
    fn rollback(&mut self) {
        self.in_tx = false;
        if self.statement(Op::Rollback).is_err() {
            self.conn.broken = true;
        }
    }

    /// The error of a failed load: rolled back, naming the chunk and its
    /// rows (never other rows' values), and where a resumed load would
    /// start.
    #[cold]
    fn fail(
        &mut self,
        e: Error,
        chunk: Option<(u64, u64, u64)>,
        commit: Commit,
        report: &BulkReport,
    ) -> Error {
        if !self.outer && (self.in_tx || self.conn.tx_started.is_some()) {
            self.rollback();
        }
        let what = format!("bulk {} into {}", self.plan.kind.name(), self.plan.table);
        let at = match chunk {
            Some((n, first, last)) => {
                format!("{what} failed in chunk {n} (input rows {first} to {last})")
            }
            None => format!("{what} failed"),
        };
        let outcome = match commit {
            Commit::AllOrNothing if self.outer => {
                "the transaction it ran in decides what stays: roll it back".to_owned()
            }
            Commit::AllOrNothing => {
                "nothing was written: the whole load was rolled back".to_owned()
            }
            Commit::EachChunk if report.position > report.start_at => format!(
                "the rows before input row {p} are committed; run the load again with start_at({p}) to go on from there",
                p = report.position
            ),
            Commit::EachChunk => format!(
                "no chunk of this run was committed; start_at({}) runs it again",
                report.position
            ),
        };
        let resume = match commit {
            Commit::EachChunk => Some(report.position),
            Commit::AllOrNothing => Some(report.start_at),
        };
        e.with_hint(&format!("{at}; {outcome}"))
            .with_bulk_position(resume)
    }
}

fn progress_of(report: &BulkReport, start: Instant) -> BulkProgress {
    BulkProgress {
        chunks: report.chunks,
        position: report.position,
        rows_affected: report.rows_affected,
        elapsed: start.elapsed(),
    }
}

/// A quoted identifier's plain name, to match named values.
fn unquote(quoted: &str) -> String {
    let inner = &quoted[1..quoted.len() - 1];
    let close = &quoted[quoted.len() - 1..];
    inner.replace(&format!("{close}{close}"), close)
}

/// One chunk's rows, taken from the input as the backend asks for them.
struct ChunkRows<'a, I> {
    input: &'a mut I,
    /// Rows the chunk may still take.
    left: usize,
    /// Rows taken so far.
    taken: u64,
    width: usize,
    names: &'a [String],
}

impl<I, R> BulkRows for ChunkRows<'_, I>
where
    I: Iterator<Item = (usize, R)>,
    R: IntoParams,
{
    fn next_row(&mut self, row: &mut Vec<Value>) -> Result<bool> {
        if self.left == 0 {
            return Ok(false);
        }
        let Some((index, input)) = self.input.next() else {
            self.left = 0;
            return Ok(false);
        };
        self.left -= 1;
        self.taken += 1;
        row_values(input, row, self.width, self.names, index as u64)?;
        Ok(true)
    }
}

/// Puts the values of input row `index` in column order in `out`
/// (emptied first).
fn row_values(
    row: impl IntoParams,
    out: &mut Vec<Value>,
    width: usize,
    names: &[String],
    index: u64,
) -> Result<()> {
    out.clear();
    match row.append_params(out) {
        None if out.len() == width => Ok(()),
        None => Err(Error::parameter(format!(
            "input row {index} has {} values but {width} columns were given; give each row one value per column, in order",
            out.len()
        ))),
        Some(Params::Positional(values)) if values.len() == width => {
            out.extend(values);
            Ok(())
        }
        Some(Params::Positional(values)) => Err(Error::parameter(format!(
            "input row {index} has {} values but {width} columns were given; give each row one value per column, in order",
            values.len()
        ))),
        Some(Params::Named(mut pairs)) => {
            for name in names {
                let i = pairs.iter().position(|(k, _)| k == name).ok_or_else(|| {
                    Error::parameter(format!(
                        "input row {index} has no value named {name:?}; give each row a field for every column"
                    ))
                })?;
                out.push(pairs.swap_remove(i).1);
            }
            Ok(())
        }
        Some(Params::None) => Err(Error::parameter(format!(
            "input row {index} is empty; give each row one value per column"
        ))),
    }
}

impl crate::PooledConnection {
    /// A bulk load on this guard's connection; see [`Bulk`]. All or
    /// nothing by default, as on the manager.
    #[track_caller]
    pub fn bulk(&mut self, table: &str) -> Bulk<'_> {
        let (shared, conn, limit) = self.stage_parts();
        Bulk::on(shared, table, Ok((conn, limit)), false, Location::caller())
    }
}

impl crate::Transaction<'_> {
    /// A bulk load inside this transaction; see [`Bulk`]. Its rows commit
    /// or roll back with the transaction; [`Bulk::commit_each_chunk`] is
    /// refused. Each chunk is bounded by the transaction's deadline too.
    #[track_caller]
    pub fn bulk(&mut self, table: &str) -> Bulk<'_> {
        let shared = Arc::clone(self.shared());
        let parts = self.stage_parts().map(|(_, conn, limit)| (conn, limit));
        Bulk::on(shared, table, parts, true, Location::caller())
    }
}
