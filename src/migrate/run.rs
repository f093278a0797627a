//! Running one script, as psql, the mysql client, sqlite3 or sqlcmd would:
//! `${placeholders}` replaced, the text cut into statements by the dialect's
//! own client rules ([`split_script`]), each statement sent exactly as
//! written (no portable-SQL translation), on a session that no earlier script
//! has changed, with a bound on how long a statement waits for another
//! session's lock.
//!
//! A failure says which statement failed (line and text) and, truthfully,
//! what of the script stays: nothing when it ran in a transaction; the
//! statements before it when it ran statement by statement (a
//! `-- dbmanager:no-transaction` script, MySQL, whose DDL commits at once, or
//! a script with its own `BEGIN`/`COMMIT`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::history::Exec;
use super::source::Script;
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::Shared;
use crate::session::{PooledConnection, Transaction};
use crate::sql::{self, Dialect, Statement, StatementKind, TxControl};
use crate::status::BackendKind;

/// Runs a script's statements: a pooled connection (autocommit) or a
/// transaction, both through the pipeline.
trait Native {
    fn native(&mut self, sql: &str) -> Result<()>;
    fn copy(&mut self, sql: &str, data: &str) -> Result<u64>;
}

impl Native for PooledConnection {
    fn native(&mut self, sql: &str) -> Result<()> {
        self.execute_native(sql)
    }
    fn copy(&mut self, sql: &str, data: &str) -> Result<u64> {
        self.copy_in(sql, data)
    }
}

impl Native for Transaction<'_> {
    fn native(&mut self, sql: &str) -> Result<()> {
        self.execute_native(sql)
    }
    fn copy(&mut self, sql: &str, data: &str) -> Result<u64> {
        self.copy_in(sql, data)
    }
}

/// Writes a script's history row on the connection or transaction given.
pub(crate) type RecordFn<'f> = dyn FnMut(&mut dyn Exec) -> Result<()> + 'f;

/// The values of `${name}` placeholders: the configured ones and Flyway's
/// built-in `${flyway:…}` ones.
#[derive(Clone, Debug, Default)]
pub(crate) struct Placeholders {
    /// By lower-cased name.
    values: HashMap<String, String>,
    /// Where a user sets them, for the error of an undefined one.
    setting: String,
}

impl Placeholders {
    /// `configured` (the configuration's, then the options' on top) and the
    /// built-ins; `setting` names where to define more.
    pub(crate) fn new<'a>(
        configured: impl IntoIterator<Item = &'a (String, String)>,
        builtins: &[(&str, String)],
        setting: String,
    ) -> Placeholders {
        let mut values = HashMap::new();
        for (name, value) in configured {
            values.insert(name.to_ascii_lowercase(), value.clone());
        }
        for (name, value) in builtins {
            values.insert(
                format!("flyway:{}", name.to_ascii_lowercase()),
                value.clone(),
            );
        }
        Placeholders { values, setting }
    }

    fn lookup(&self, name: &str, file: &str) -> Option<String> {
        let key = name.to_ascii_lowercase();
        if key == "flyway:filename" {
            return Some(file.rsplit('/').next().unwrap_or(file).to_owned());
        }
        self.values.get(&key).cloned()
    }
}

/// Whether the text uses a built-in placeholder (so the run asks the server
/// for their values).
pub(crate) fn uses_builtins(sql: &str) -> bool {
    sql.contains("${flyway:")
}

/// The built-in placeholders' values that come from the server:
/// `defaultSchema` and `database`.
pub(crate) fn server_builtins(
    conn: &mut PooledConnection,
    kind: BackendKind,
) -> Result<(String, String)> {
    let q = match kind {
        BackendKind::Postgres => {
            "SELECT CAST(current_schema() AS TEXT) AS s, CAST(current_database() AS TEXT) AS d"
        }
        BackendKind::MySql => "SELECT DATABASE() AS s, DATABASE() AS d",
        BackendKind::MsSql => "SELECT SCHEMA_NAME() AS s, DB_NAME() AS d",
        BackendKind::Sqlite => return Ok(("main".to_owned(), "main".to_owned())),
    };
    let row = conn.query_one(q, ())?;
    Ok((
        row.get::<Option<String>>("s")?.unwrap_or_default(),
        row.get::<Option<String>>("d")?.unwrap_or_default(),
    ))
}

/// A script read for running: its statements and whether it holds its own
/// transaction control.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) statements: Vec<Statement>,
    /// A `BEGIN`, `COMMIT` or `ROLLBACK` of its own: it cannot run inside
    /// the migrator's transaction.
    pub(crate) own_transactions: bool,
}

/// Replaces placeholders and splits `script` for `dialect`.
///
/// # Errors
///
/// [`Migration`](ErrorKind::Migration) naming the file and line of an
/// undefined placeholder or a malformed client command.
pub(crate) fn parse(
    script: &Script,
    dialect: Dialect,
    placeholders: &Placeholders,
) -> Result<Parsed> {
    let at = |e: sql::ScriptError, what: &str| {
        Error::new(
            ErrorKind::Migration,
            format!("`{}` line {}: {}{what}", script.script, e.line, e.message),
        )
    };
    let text = sql::replace_placeholders(&script.sql, |name| {
        placeholders.lookup(name, &script.script)
    })
    .map_err(|e| {
        at(
            e,
            &format!(
                "; define it in {} (or MigrateOptions::placeholder), or remove it from the script",
                placeholders.setting
            ),
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let statements = sql::split_script(text, dialect).map_err(|e| at(e, ""))?;
    let own_transactions = statements.iter().any(|s| s.control != TxControl::None);
    Ok(Parsed {
        statements,
        own_transactions,
    })
}

/// Whether a script holds its own `BEGIN`/`COMMIT`/`ROLLBACK` (read as
/// written, placeholders not replaced), so that it runs outside the
/// migrator's transaction.
pub(crate) fn holds_own_transactions(sql: &str, dialect: Dialect) -> bool {
    sql::split_script(sql, dialect).is_ok_and(|st| st.iter().any(|s| s.control != TxControl::None))
}

/// How a script runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// In one transaction of the migrator's: all or nothing.
    Transaction,
    /// Statement by statement, each committed as it ends (or as the
    /// script's own transaction control says).
    Autocommit,
}

/// Why a script failed, and whether something of it may stay.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    /// Statements before the failing one may have been committed.
    pub(crate) left_changes: bool,
    /// The script's statements were sent together and failed: which one
    /// failed is not known yet ([`ScriptSession::locate`]).
    joined: bool,
}

impl Failure {
    /// A failure that names what failed.
    pub(crate) fn new(error: Error, left_changes: bool) -> Failure {
        Failure {
            error,
            left_changes,
            joined: false,
        }
    }
}

/// The session scripts run on: a pooled connection of its own (never the
/// lock's, whose session holds the migration lock), swapped for a fresh one
/// whenever a script may have changed it, so that each script starts as on
/// a new connection (no `SET ROLE`, `USE`, `search_path` left by an earlier
/// one). The pool resets a swapped-out session before anyone else gets it.
pub(crate) struct ScriptSession {
    shared: Arc<Shared>,
    conn: Option<PooledConnection>,
    /// The next script needs a fresh session.
    stale: bool,
    /// The script runs statement by statement, even where its statements
    /// could be sent together.
    one_by_one: bool,
    lock_wait: Option<Duration>,
    statement_timeout: Option<Duration>,
}

impl ScriptSession {
    pub(crate) fn new(
        shared: Arc<Shared>,
        lock_wait: Option<Duration>,
        statement_timeout: Option<Duration>,
    ) -> ScriptSession {
        ScriptSession {
            shared,
            conn: None,
            stale: true,
            one_by_one: false,
            lock_wait,
            statement_timeout,
        }
    }

    /// The session for the next script: a fresh one when the last script
    /// may have changed it, with the lock wait bound set.
    fn clean(&mut self) -> Result<&mut PooledConnection> {
        if self.stale || self.conn.is_none() {
            // Back to the pool first (which resets it), then a new checkout.
            self.conn = None;
            let mut conn = PooledConnection::new(Arc::clone(&self.shared), self.shared.checkout()?);
            conn.set_timeout(self.statement_timeout);
            let (kind, pgbouncer) = (self.shared.config.kind, self.shared.config.pgbouncer);
            if kind == BackendKind::Postgres && !pgbouncer {
                // A migrator killed in the middle of a long statement: the
                // server notices the closed socket within a second and ends
                // the session (PostgreSQL 14+; refused before, and then the
                // statement runs to its end).
                let _ = conn.execute_native("SET client_connection_check_interval = '1s'");
            }
            if let Some(sql) = lock_wait_sql(kind, pgbouncer, self.lock_wait) {
                conn.execute_native(&sql)?;
            }
            self.conn = Some(conn);
            self.stale = false;
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Other, "no script session"))
    }

    /// Runs `f` in one transaction on a clean session: committed when `f`
    /// succeeds, rolled back (and the session replaced before the next
    /// script) when it fails.
    fn batch(&mut self, f: impl FnOnce(&mut Transaction<'_>) -> Result<()>) -> Result<()> {
        let result = self.clean()?.transaction(f);
        if result.is_err() {
            self.stale = true;
        }
        result
    }

    /// Runs a parsed script in `mode`, running it again up to
    /// `lock_retries` times when a statement gave up waiting for a lock and
    /// nothing of the script stayed (it ran in a transaction, or the first
    /// statement gave up); never a script that may have partly run.
    pub(crate) fn run(
        &mut self,
        script: &Script,
        parsed: &Parsed,
        mode: Mode,
        lock_retries: u32,
        mut record: Option<&mut RecordFn<'_>>,
    ) -> std::result::Result<bool, Failure> {
        let mut attempt = 0;
        self.one_by_one = false;
        loop {
            let mut failure = match self.run_once(script, parsed, mode, record.as_deref_mut()) {
                Ok(()) => return Ok(record.is_some()),
                Err(f) => f,
            };
            self.stale = true;
            let lock_timeout = is_lock_timeout(&failure.error);
            if failure.joined && !(lock_timeout && attempt < lock_retries) {
                failure.error = self.locate(failure.error, script, parsed);
                failure.joined = false;
            }
            if !lock_timeout {
                return Err(failure);
            }
            // Its attempts to come run statement by statement, so that the
            // last one's error names the statement that waited.
            self.one_by_one = true;
            let blockers = self.blockers();
            // Run again only what left nothing behind: a transaction that
            // was rolled back, or a script whose first statement gave up.
            if !failure.left_changes && attempt < lock_retries {
                attempt += 1;
                tracing::warn!(
                    script = %script.script,
                    attempt,
                    blockers = %blockers.as_deref().unwrap_or_else(|why| why),
                    "a migration statement gave up waiting for a lock; the script was rolled back and runs again"
                );
                std::thread::sleep(Duration::from_millis(500) * attempt);
                continue;
            }
            let tried = if attempt > 0 {
                format!(" ({} attempts)", attempt + 1)
            } else {
                String::new()
            };
            let who = match blockers {
                Ok(b) => format!(
                    "; sessions holding locks in open transactions (the likely blockers): {b}"
                ),
                Err(why) => format!("; the blocking session could not be named: {why}"),
            };
            let Failure {
                error,
                left_changes,
                ..
            } = failure;
            let code = error.db_code().map(str::to_owned);
            let setting = self
                .shared
                .config
                .variable("MIGRATION_LOCK_WAIT")
                .unwrap_or_else(|| "DatabaseConfigBuilder::migration_lock_wait".to_owned());
            let mut e = Error::new(
                ErrorKind::LockTimeout,
                format!(
                    "{}{tried}{who}; end those transactions (or wait until they end) and run again, or raise {setting} (or MigrateOptions::lock_wait)",
                    // The file is not at fault.
                    error.message().replace(": fix the file and run again", "")
                ),
            )
            .with_source(error);
            if let Some(code) = code {
                e = e.with_code(code);
            }
            return Err(Failure::new(e, left_changes));
        }
    }

    fn run_once(
        &mut self,
        script: &Script,
        parsed: &Parsed,
        mode: Mode,
        record: Option<&mut RecordFn<'_>>,
    ) -> std::result::Result<(), Failure> {
        let dialect = self.shared.dialect;
        let kind = self.shared.config.kind;
        let bound = self.bound();
        // Sent together only where no statement has a time limit of its
        // own, and not again after a lock wait gave up.
        let joined = match mode {
            Mode::Transaction if self.statement_timeout.is_none() && !self.one_by_one => {
                joined(kind, &parsed.statements, &bound)
            }
            _ => None,
        };
        let conn = self.clean().map_err(|error| Failure::new(error, false))?;
        let mut ran = 0usize;
        let mut changed = false;
        // Set when the joined statements, not the history row or the
        // commit, failed: which of them failed is then found by running
        // them again one by one in a transaction that is rolled back.
        let mut joined_failed = false;
        let result = match mode {
            Mode::Transaction => conn.transaction(|tx| {
                match &joined {
                    Some(text) => {
                        changed = parsed.statements.iter().any(may_change_session);
                        tx.execute_native(text)
                            .inspect_err(|_| joined_failed = true)?;
                        ran = parsed.statements.len();
                    }
                    None => run_statements(tx, &parsed.statements, &bound, &mut ran, &mut changed)?,
                }
                match record {
                    Some(record) => record(tx),
                    None => Ok(()),
                }
            }),
            Mode::Autocommit => {
                run_statements(conn, &parsed.statements, &bound, &mut ran, &mut changed)
            }
        };
        if changed {
            self.stale = true;
        }
        let Err(cause) = result else {
            return Ok(());
        };
        self.stale = true;
        if joined_failed {
            // Rolled back whole.
            return Err(Failure {
                error: cause,
                left_changes: false,
                joined: true,
            });
        }
        let left_changes = mode == Mode::Autocommit && ran > 0;
        Err(Failure::new(
            describe(cause, script, &parsed.statements, ran, mode, kind, dialect),
            left_changes,
        ))
    }

    /// The statements that lift the lock wait bound for one statement and
    /// put it back.
    fn bound(&self) -> Bound {
        let kind = self.shared.config.kind;
        Bound {
            lift: lock_wait_sql(kind, self.shared.config.pgbouncer, Some(Duration::ZERO))
                .filter(|_| self.lock_wait.is_some() && kind == BackendKind::Postgres),
            restore: lock_wait_sql(kind, self.shared.config.pgbouncer, self.lock_wait),
        }
    }

    /// The error of a script whose statements, sent together in its
    /// transaction, failed with `cause` (and were rolled back): the
    /// statements run again one by one on a fresh session, in a transaction
    /// that is always rolled back, and the first that fails is named, with
    /// its own error, as when they are sent one by one. When none fails
    /// again (a lock wait or a deadlock that has passed, a lost
    /// connection), `cause` is told as it is, with what stays. After a lock
    /// wait gave up, the statement that waits again names itself (waiting
    /// at most the bound once more).
    fn locate(&mut self, cause: Error, script: &Script, parsed: &Parsed) -> Error {
        let bound = &self.bound();
        let kind = self.shared.config.kind;
        let dialect = self.shared.dialect;
        let unlocated = |cause: Error| {
            let message = format!(
                "its statements were sent together and failed: {}; {}",
                cause.message(),
                remains(
                    &parsed.statements,
                    0,
                    Mode::Transaction,
                    kind,
                    &script.script
                )
            );
            let code = cause.db_code().map(str::to_owned);
            let mut e = Error::new(cause.kind(), message).with_source(cause);
            if let Some(code) = code {
                e = e.with_code(code);
            }
            e
        };
        let conn = match self.clean() {
            Ok(conn) => conn,
            Err(_) => return unlocated(cause),
        };
        let mut ran = 0usize;
        let mut changed = false;
        let again = match conn.begin() {
            Ok(mut tx) => {
                let again =
                    run_statements(&mut tx, &parsed.statements, bound, &mut ran, &mut changed);
                let _ = tx.rollback();
                again
            }
            Err(e) => Err(e),
        };
        // The statements ran on this session again: the next script gets a
        // fresh one.
        self.stale = true;
        match again {
            Err(e) if ran < parsed.statements.len() && e.db_code().is_some() => describe(
                e,
                script,
                &parsed.statements,
                ran,
                Mode::Transaction,
                kind,
                dialect,
            ),
            _ => unlocated(cause),
        }
    }

    /// Sessions that hold locks in open transactions, named with what they
    /// run: asked after a lock timeout, on the script's session. `Err` says
    /// why they cannot be named.
    fn blockers(&mut self) -> std::result::Result<String, String> {
        let kind = self.shared.config.kind;
        let sql = blockers_sql(kind).ok_or("this backend cannot list them")?;
        let conn = self.clean().map_err(|e| e.to_string())?;
        let rows = conn.execute_query(sql, ()).map_err(|e| {
            if kind == BackendKind::MySql {
                format!(
                    "listing open transactions needs the PROCESS privilege ({})",
                    e.message()
                )
            } else {
                e.message().to_owned()
            }
        })?;
        let named: Vec<String> = rows
            .iter()
            .map(|r| {
                let text = |c: &str| {
                    r.get::<Option<String>>(c)
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                };
                let query: String = text("query")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                format!(
                    "{} {} (application `{}`, {}, last statement `{}`)",
                    if kind == BackendKind::Postgres {
                        "pid"
                    } else {
                        "connection id"
                    },
                    r.get::<i64>("id").unwrap_or_default(),
                    text("app"),
                    text("state"),
                    query.chars().take(120).collect::<String>()
                )
            })
            .collect();
        if named.is_empty() {
            Err("no other session holds locks in an open transaction now".to_owned())
        } else {
            Ok(named.join("; "))
        }
    }
}

/// Everything a run needs to run scripts: the session, the placeholders,
/// and whether DDL is transactional on the backend.
pub(crate) struct Runner {
    pub(crate) session: ScriptSession,
    pub(crate) placeholders: Placeholders,
    transactional_ddl: bool,
    lock_retries: u32,
}

impl Runner {
    pub(crate) fn new(
        session: ScriptSession,
        placeholders: Placeholders,
        transactional_ddl: bool,
        lock_retries: u32,
    ) -> Runner {
        Runner {
            session,
            placeholders,
            transactional_ddl,
            lock_retries,
        }
    }

    /// How `script` runs: in a transaction where DDL is transactional,
    /// unless it says `-- dbmanager:no-transaction` or holds its own
    /// transaction control.
    pub(crate) fn mode(&self, script: &Script, parsed: &Parsed) -> Mode {
        mode(self.transactional_ddl, script, parsed)
    }

    /// Parses and runs one script.
    pub(crate) fn execute(&mut self, script: &Script) -> std::result::Result<(), Failure> {
        let parsed = self
            .parse(script)
            .map_err(|error| Failure::new(error, false))?;
        self.execute_recording(script, &parsed, None).map(drop)
    }

    /// Replaces a script's placeholders and splits it into statements.
    ///
    /// # Errors
    ///
    /// As [`parse`].
    pub(crate) fn parse(&self, script: &Script) -> Result<Parsed> {
        parse(script, self.session.shared.dialect, &self.placeholders)
    }

    /// Runs one parsed script; `record` writes its history row inside
    /// the script's transaction when the script runs in one and none of its
    /// statements can change the session (so the row is written by the
    /// migrator, as a clean session has it, and commits with the script:
    /// one transaction per script). `Ok(true)` when it did.
    pub(crate) fn execute_recording(
        &mut self,
        script: &Script,
        parsed: &Parsed,
        record: Option<&mut RecordFn<'_>>,
    ) -> std::result::Result<bool, Failure> {
        let mode = self.mode(script, parsed);
        let record = record.filter(|_| {
            mode == Mode::Transaction && !parsed.statements.iter().any(may_change_session)
        });
        self.session
            .run(script, parsed, mode, self.lock_retries, record)
    }

    /// Runs the first of `scripts` that can share one transaction
    /// (SQLite, where one transaction holds the database's write lock
    /// whatever it changes: scripts that run in a transaction, cannot
    /// change their session and for which `fits` holds; at most
    /// [`BATCH_SCRIPTS`], and no more once [`BATCH_TIME`] has passed) in
    /// one transaction, then `record` in it with each script run and its
    /// time in ms (their history rows), and commits: the scripts and
    /// their rows commit together, or nothing does. One commit for many
    /// scripts, and the history rows written after the last schema change
    /// (which makes the server compile a statement again).
    ///
    /// `Ok` with the scripts run, none when the first cannot share a
    /// transaction. `Err` with the number of scripts taken and the error
    /// when the transaction failed: it was rolled back, nothing of them
    /// remains, and they are to run one by one (which names what fails).
    pub(crate) fn batch<'s>(
        &mut self,
        scripts: &[&'s Script],
        fits: impl Fn(&Script) -> bool,
        record: impl FnOnce(&mut dyn Exec, &[(&'s Script, i64)]) -> Result<()>,
    ) -> std::result::Result<Vec<(&'s Script, i64)>, (usize, Error)> {
        let kind = self.session.shared.config.kind;
        if kind != BackendKind::Sqlite
            || !self.transactional_ddl
            || self.session.statement_timeout.is_some()
        {
            return Ok(Vec::new());
        }
        // Parsed as they come: the first before the transaction opens
        // (none opens for a script that cannot share it), each next one
        // in it, the batch ending before one that cannot share it.
        let Runner {
            session,
            placeholders,
            transactional_ddl,
            ..
        } = self;
        let (dialect, transactional_ddl) = (session.shared.dialect, *transactional_ddl);
        let shares = |script: &Script| {
            if !fits(script) {
                return None;
            }
            let parsed = parse(script, dialect, placeholders).ok()?;
            (mode(transactional_ddl, script, &parsed) == Mode::Transaction
                && !parsed.statements.iter().any(may_change_session))
            .then_some(parsed)
        };
        let Some(first) = scripts.first().and_then(|s| shares(s)) else {
            return Ok(Vec::new());
        };
        let bound = session.bound();
        let began = std::time::Instant::now();
        let mut done = Vec::with_capacity(scripts.len().min(BATCH_SCRIPTS));
        let mut taken = 0;
        let mut next = Some(first);
        let result = session.batch(|tx| {
            for &script in scripts.iter().take(BATCH_SCRIPTS) {
                let parsed = match next.take() {
                    Some(parsed) => parsed,
                    None => match shares(script) {
                        Some(parsed) => parsed,
                        None => break,
                    },
                };
                taken += 1;
                let start = std::time::Instant::now();
                match joined(kind, &parsed.statements, &bound) {
                    Some(text) => tx.execute_native(&text)?,
                    None => {
                        let (mut ran, mut changed) = (0, false);
                        run_statements(tx, &parsed.statements, &bound, &mut ran, &mut changed)?;
                    }
                }
                done.push((script, millis(start.elapsed())));
                if began.elapsed() >= BATCH_TIME {
                    break;
                }
            }
            record(tx, &done)
        });
        match result {
            Ok(()) => Ok(done),
            Err(e) => Err((taken.max(1), e)),
        }
    }

    /// Runs the callbacks of one event, in file-name order; the first
    /// failure stops them, named with its file.
    pub(crate) fn callbacks(&mut self, scripts: &[Script]) -> Result<()> {
        for cb in scripts {
            self.execute(cb).map_err(|f| {
                let e = f.error;
                Error::new(
                    e.kind(),
                    format!("callback `{}` failed: {}", cb.script, e.message()),
                )
                .with_source(e)
            })?;
        }
        Ok(())
    }

    /// Runs the callbacks of an error event: their own failures are only
    /// logged, the first error is the one to report.
    pub(crate) fn error_callbacks(&mut self, scripts: &[Script]) {
        for cb in scripts {
            if let Err(f) = self.execute(cb) {
                tracing::warn!(callback = %cb.script, error = %f.error, "an error callback failed");
            }
        }
    }
}

/// How `script` runs where DDL is (or is not) transactional: see
/// [`Runner::mode`].
fn mode(transactional_ddl: bool, script: &Script, parsed: &Parsed) -> Mode {
    if transactional_ddl && !script.no_transaction && !parsed.own_transactions {
        Mode::Transaction
    } else {
        Mode::Autocommit
    }
}

/// The most scripts one transaction holds ([`Runner::batch`]).
const BATCH_SCRIPTS: usize = 100;
/// A batch takes no further script once it has run this long, so that
/// another writer waits for the write lock about this much longer than
/// the last script alone would make it wait.
const BATCH_TIME: Duration = Duration::from_millis(200);

/// A duration in whole milliseconds, as the history keeps it.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The statement that bounds a session's lock waits.
fn lock_wait_sql(kind: BackendKind, pgbouncer: bool, wait: Option<Duration>) -> Option<String> {
    let wait = wait?;
    let ms = wait.as_millis().clamp(1, i32::MAX as u128);
    match kind {
        // Behind pgbouncer a session SET would reach other clients.
        BackendKind::Postgres if pgbouncer => None,
        BackendKind::Postgres => Some(format!(
            "SET lock_timeout = {}",
            if wait.is_zero() { 0 } else { ms }
        )),
        BackendKind::MySql => {
            let secs = wait.as_secs().max(1);
            Some(format!(
                "SET SESSION lock_wait_timeout = {secs}, SESSION innodb_lock_wait_timeout = {secs}"
            ))
        }
        BackendKind::MsSql => Some(format!("SET LOCK_TIMEOUT {ms}")),
        // SQLite waits on its busy timeout, set at connect.
        BackendKind::Sqlite => None,
    }
}

/// The query naming sessions that hold locks in an open transaction, oldest
/// first (`id`, `app`, `state`, `query`).
fn blockers_sql(kind: BackendKind) -> Option<&'static str> {
    match kind {
        BackendKind::Postgres => Some(
            "SELECT CAST(a.pid AS BIGINT) AS id, a.application_name AS app, a.state AS state, a.query AS query \
             FROM pg_stat_activity a \
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL \
               AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted AND l.locktype = 'relation') \
             ORDER BY a.xact_start LIMIT 5",
        ),
        BackendKind::MySql => Some(
            "SELECT CAST(p.id AS SIGNED) AS id, CONCAT(p.user, '@', p.host) AS app, \
                    CONCAT(p.command, ' for ', p.time, ' s, transaction since ', t.trx_started) AS state, \
                    COALESCE(p.info, t.trx_query) AS query \
             FROM information_schema.innodb_trx t \
             JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id \
             WHERE p.id <> CONNECTION_ID() ORDER BY t.trx_started LIMIT 5",
        ),
        _ => None,
    }
}

/// Whether the server gave up waiting for a lock: PostgreSQL 55P03,
/// MySQL/MariaDB 1205, SQL Server 1222.
fn is_lock_timeout(e: &Error) -> bool {
    matches!(e.db_code(), Some("55P03" | "1205" | "1222"))
}

/// Runs `statements` one by one, counting those that ran; `changed` is set
/// when one may have changed the session.
fn run_statements(
    conn: &mut dyn Native,
    statements: &[Statement],
    bound: &Bound,
    ran: &mut usize,
    changed: &mut bool,
) -> Result<()> {
    for st in statements {
        *changed |= may_change_session(st);
        let lift = bound.lift.as_deref().filter(|_| blocks_no_one(st));
        if let Some(lift) = lift {
            conn.native(lift)?;
        }
        for _ in 0..st.repeat.max(1) {
            match &st.copy_data {
                Some(data) => conn.copy(&st.sql, data).map(drop)?,
                None => conn.native(&st.sql)?,
            }
        }
        if let (Some(_), Some(restore)) = (lift, bound.restore.as_deref()) {
            conn.native(restore)?;
        }
        *ran += 1;
    }
    Ok(())
}

/// A transactional script's statements as one text, sent to the server in
/// one round trip, where the server runs such a text statement by statement
/// in the transaction it is in and stops at the first error (PostgreSQL's
/// simple query protocol, SQLite): `None` for one statement alone, for a
/// `COPY` with data, a repeated batch, transaction control of the script's
/// own, or a statement whose lock wait bound is lifted. Each statement ends
/// on a line of its own, so that a comment at its end cannot swallow the
/// `;` that ends it.
fn joined(kind: BackendKind, statements: &[Statement], bound: &Bound) -> Option<String> {
    if !matches!(kind, BackendKind::Postgres | BackendKind::Sqlite) || statements.len() < 2 {
        return None;
    }
    let plain = statements.iter().all(|st| {
        st.copy_data.is_none()
            && st.repeat <= 1
            && st.control == TxControl::None
            && !(bound.lift.is_some() && blocks_no_one(st))
    });
    if !plain {
        return None;
    }
    let mut text = String::with_capacity(statements.iter().map(|s| s.sql.len() + 3).sum());
    for st in statements {
        text.push_str(&st.sql);
        text.push_str("\n;\n");
    }
    Some(text)
}

/// The statements that lift the lock wait bound for one statement and put
/// it back (PostgreSQL).
struct Bound {
    lift: Option<String>,
    restore: Option<String>,
}

/// Statements whose long waits block no one, so the lock wait bound is
/// lifted for them: PostgreSQL's `… CONCURRENTLY` waits for every older
/// transaction, holding only a lock that readers and writers pass.
fn blocks_no_one(st: &Statement) -> bool {
    st.sql.to_ascii_lowercase().contains("concurrently")
}

/// Whether a statement may leave its session different from a new one
/// (`SET`, `USE`, a role, a temporary table, …), so that the next script
/// needs a fresh session. Plain DDL and row changes do not.
fn may_change_session(st: &Statement) -> bool {
    if st.copy_data.is_some() {
        return false;
    }
    let lower = st.sql.to_ascii_lowercase();
    if lower.contains("set_config") || lower.contains("temp") {
        return true;
    }
    match sql::classify_statement(&st.sql) {
        StatementKind::Read => false,
        StatementKind::Write(k) => !matches!(
            k.as_str(),
            "INSERT"
                | "UPDATE"
                | "DELETE"
                | "MERGE"
                | "REPLACE"
                | "UPSERT"
                | "CREATE"
                | "ALTER"
                | "DROP"
                | "TRUNCATE"
                | "GRANT"
                | "REVOKE"
                | "RENAME"
                | "COMMENT"
        ),
        StatementKind::Unknown => true,
    }
}

/// The error of a failed script: which statement (number, line, text)
/// failed, the server's message, and what of the script stays.
fn describe(
    cause: Error,
    script: &Script,
    statements: &[Statement],
    ran: usize,
    mode: Mode,
    kind: BackendKind,
    _dialect: Dialect,
) -> Error {
    let total = statements.len();
    let Some(st) = statements.get(ran) else {
        return cause;
    };
    let line = super::position_line(cause.message(), &st.sql).map_or(st.line, |l| st.line + l - 1);
    let mut message = format!(
        "statement {} of {total} (line {line}: `{}`) failed: {}",
        ran + 1,
        st.shortened(80),
        cause.message()
    );
    message.push_str("; ");
    message.push_str(&remains(statements, ran, mode, kind, &script.script));
    let code = cause.db_code().map(str::to_owned);
    let mut e = Error::new(cause.kind(), message).with_source(cause);
    if let Some(code) = code {
        e = e.with_code(code);
    }
    e
}

/// What of a script stays after statement `ran` (from 0) failed: only what
/// is true.
fn remains(
    statements: &[Statement],
    ran: usize,
    mode: Mode,
    kind: BackendKind,
    file: &str,
) -> String {
    let total = statements.len();
    if mode == Mode::Transaction {
        return "it ran in a transaction, so nothing of it remains: fix the file and run again"
            .to_owned();
    }
    // The script's own transaction still open at the failure.
    let open_since = statements[..ran]
        .iter()
        .fold(None, |open, s| match s.control {
            TxControl::Begin => Some(s.line),
            TxControl::Commit | TxControl::Rollback => None,
            TxControl::None => open,
        });
    let mysql_ddl = if kind == BackendKind::MySql {
        " (MySQL commits DDL at once, so DDL among them stays even inside a transaction)"
    } else {
        ""
    };
    let mut text = match (ran, open_since) {
        (0, _) => {
            return "no statement of it ran before this one, so nothing of it remains: fix the file and run again"
                .to_owned()
        }
        (n, None) => format!(
            "statement{} 1{} of {total} ran and stay{}",
            if n == 1 { "" } else { "s" },
            if n == 1 { String::new() } else { format!("–{n}") },
            if n == 1 { "s" } else { "" },
        ),
        (_, Some(begin)) => {
            let before = statements[..ran].iter().filter(|s| s.line < begin).count();
            format!(
                "the statements from its own BEGIN at line {begin} on were rolled back{mysql_ddl}; {}",
                if before == 0 {
                    "none before that BEGIN ran".to_owned()
                } else {
                    format!("statements 1–{before} of {total}, before that BEGIN, ran and stay")
                }
            )
        }
    };
    if kind == BackendKind::MySql && open_since.is_none() && ran > 0 {
        text.push_str(mysql_ddl);
    }
    text.push_str(&format!(
        "; the failure is recorded: finish or undo `{file}` by hand, then run repair"
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(sql: &str, line: usize, control: TxControl) -> Statement {
        Statement {
            sql: sql.to_owned(),
            line,
            copy_data: None,
            repeat: 1,
            control,
        }
    }

    #[test]
    fn remains_says_only_what_is_true() {
        let s = [
            st("CREATE TABLE a (x INT)", 1, TxControl::None),
            st("BEGIN", 2, TxControl::Begin),
            st("INSERT INTO a VALUES (1)", 3, TxControl::None),
            st("COMMIT", 4, TxControl::Commit),
            st("BEGIN", 5, TxControl::Begin),
            st("INSERT INTO b VALUES (1)", 6, TxControl::None),
        ];
        let t = remains(&s, 0, Mode::Transaction, BackendKind::Postgres, "V1__x.sql");
        assert!(t.contains("nothing of it remains"), "{t}");
        let t = remains(&s, 0, Mode::Autocommit, BackendKind::Postgres, "V1__x.sql");
        assert!(
            t.contains("no statement of it ran") && !t.contains("repair"),
            "{t}"
        );
        let t = remains(&s, 4, Mode::Autocommit, BackendKind::Postgres, "V1__x.sql");
        assert!(t.contains("statements 1–4 of 6 ran and stay"), "{t}");
        let t = remains(&s, 5, Mode::Autocommit, BackendKind::Postgres, "V1__x.sql");
        assert!(
            t.contains("BEGIN at line 5 on were rolled back") && t.contains("statements 1–4 of 6"),
            "{t}"
        );
        assert!(!t.contains("MySQL"), "{t}");
        let t = remains(&s, 1, Mode::Autocommit, BackendKind::MySql, "V1__x.sql");
        assert!(
            t.contains("statement 1 of 6 ran and stays") && t.contains("MySQL commits DDL"),
            "{t}"
        );
    }

    #[test]
    fn plain_transactional_statements_are_joined() {
        let none = Bound {
            lift: None,
            restore: None,
        };
        let s = [
            st("CREATE TABLE a (x INT) -- note", 1, TxControl::None),
            st("INSERT INTO a VALUES (1)", 2, TxControl::None),
        ];
        assert_eq!(
            joined(BackendKind::Sqlite, &s, &none).as_deref(),
            Some("CREATE TABLE a (x INT) -- note\n;\nINSERT INTO a VALUES (1)\n;\n")
        );
        assert!(joined(BackendKind::Postgres, &s, &none).is_some());
        // Not where a batch is a unit of its own, or sent apart anyway.
        assert_eq!(joined(BackendKind::MsSql, &s, &none), None);
        assert_eq!(joined(BackendKind::MySql, &s, &none), None);
        assert_eq!(joined(BackendKind::Sqlite, &s[..1], &none), None);
        let mut copy = s.clone();
        copy[1].copy_data = Some("1\n".to_owned());
        assert_eq!(joined(BackendKind::Postgres, &copy, &none), None);
        let mut own = s.clone();
        own[0].control = TxControl::Begin;
        assert_eq!(joined(BackendKind::Postgres, &own, &none), None);
        let lifted = Bound {
            lift: Some("SET lock_timeout = 0".to_owned()),
            restore: None,
        };
        let concurrently = [
            st("CREATE INDEX CONCURRENTLY i ON a (x)", 1, TxControl::None),
            st("SELECT 1", 2, TxControl::None),
        ];
        assert!(joined(BackendKind::Postgres, &concurrently, &none).is_some());
        assert_eq!(joined(BackendKind::Postgres, &concurrently, &lifted), None);
    }

    #[test]
    fn session_changes_are_seen() {
        for (sql, changes) in [
            ("CREATE TABLE a (x INT)", false),
            ("INSERT INTO a VALUES (1)", false),
            ("SELECT 1", false),
            ("SET ROLE app", true),
            ("USE other", true),
            ("SET search_path = x", true),
            ("SELECT set_config('search_path', 'x', false)", true),
            ("CREATE TEMP TABLE t (x INT)", true),
            ("CALL p()", true),
        ] {
            assert_eq!(
                may_change_session(&st(sql, 1, TxControl::None)),
                changes,
                "{sql}"
            );
        }
    }

    #[test]
    fn lock_wait_statements() {
        let five = Some(Duration::from_secs(5));
        assert_eq!(
            lock_wait_sql(BackendKind::Postgres, false, five).as_deref(),
            Some("SET lock_timeout = 5000")
        );
        assert_eq!(lock_wait_sql(BackendKind::Postgres, true, five), None);
        assert!(lock_wait_sql(BackendKind::MySql, false, five)
            .is_some_and(|s| s.contains("lock_wait_timeout = 5")
                && s.contains("innodb_lock_wait_timeout = 5")));
        assert_eq!(
            lock_wait_sql(BackendKind::MsSql, false, five).as_deref(),
            Some("SET LOCK_TIMEOUT 5000")
        );
        assert_eq!(lock_wait_sql(BackendKind::Postgres, false, None), None);
    }

    #[test]
    fn placeholders_lookup() {
        let p = Placeholders::new(
            &[("Schema".to_owned(), "app".to_owned())],
            &[("user", "me".to_owned())],
            "X".to_owned(),
        );
        assert_eq!(p.lookup("schema", "a/V1__x.sql").as_deref(), Some("app"));
        assert_eq!(p.lookup("flyway:user", "V1__x.sql").as_deref(), Some("me"));
        assert_eq!(
            p.lookup("flyway:filename", "a/V1__x.sql").as_deref(),
            Some("V1__x.sql")
        );
        assert_eq!(p.lookup("nope", "V1__x.sql"), None);
    }
}
