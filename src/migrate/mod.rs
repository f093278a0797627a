//! Versioned migrations, Flyway-style: `V{version}__{description}.sql`
//! applied once in version order, `U{version}__…` undo scripts, `R__…`
//! repeatable scripts re-applied when they change, and a history table
//! (default `schema_version`, with Flyway's columns).
//!
//! - Scripts come from `migrations/{database name}/` (configurable), or are
//!   embedded in the binary with [`embed_migrations!`](crate::embed_migrations).
//! - One migrator at a time: an advisory lock per backend (PostgreSQL
//!   `pg_try_advisory_lock`, MySQL `GET_LOCK`, SQLite and PostgreSQL behind
//!   pgbouncer a lock row), held on a dedicated pooled connection by a guard
//!   that releases it on every path.
//! - Applied scripts are validated against their checksum (Flyway's CRC32
//!   over lines, line endings ignored) before anything runs.
//! - Scripts run exactly as written (no portable-SQL translation), cut into
//!   statements as the server's own client would cut them (MySQL
//!   `DELIMITER`, PostgreSQL `COPY … FROM stdin` data, SQL Server `GO`, …),
//!   after Flyway-style `${placeholder}` replacement, each on a session no
//!   earlier script has changed, with a bound on lock waits. Every statement
//!   still goes through the crate's pipeline (pool, timeouts, metrics).
//! - Each script runs in one transaction where DDL is transactional
//!   (PostgreSQL, SQLite), its history row with it when the script cannot
//!   have changed its session; on SQLite consecutive such scripts share
//!   one transaction with their rows (rolled back and run one by one when
//!   it fails). On MySQL/MariaDB, where DDL commits
//!   implicitly, and for scripts whose first line is
//!   `-- dbmanager:no-transaction` or that hold their own `BEGIN`/`COMMIT`,
//!   statements run one by one; a failure after some of them ran is recorded
//!   (`success = false`) and later runs stop until
//!   [`repair`](crate::migrate::Migrator::repair).
//! - Folders are scanned with their subfolders; Flyway callbacks
//!   (`beforeMigrate.sql`, `afterEachMigrate__x.sql`, …) run at their events.
//! - Where a script commits by itself, its history row is written on a fresh
//!   connection (never the script's), retried, with a journal entry
//!   (`{history}_journal`) around the script: a script that ran is never
//!   left unrecorded without the error saying so, and the next run records it.
//! - The history table may be another tool's: Flyway 4+, Flyway 3, Pyway.
//!   Its format is told from its columns and rows are written back in it;
//!   refinery's and sqlx's histories are imported once by
//!   [`adopt`](crate::migrate::Migrator::adopt).
//!
//! ```
//! use dbmanager::{DatabaseConfig, DatabaseManager};
//! # fn main() -> dbmanager::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("dbm-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! std::fs::write(dir.join("V1__Create_customers.sql"), "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);").unwrap();
//! let db = DatabaseManager::from_config(
//!     DatabaseConfig::builder("demo").url("sqlite::memory:").migrations_dir(&dir).build()?,
//! )?;
//! let report = db.run_migrations()?;
//! assert_eq!(report.applied.len(), 1);
//! assert_eq!(db.migration_status()?.current_version.as_deref(), Some("1"));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(()) }
//! ```

mod adopt;
mod format;
mod history;
mod journal;
mod run;
mod source;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use self::source::{checksum, MigrationSource, Version};
pub use crate::status::MigrationKind;
pub use crate::status::{
    AppliedMigration, MigrationPlan, MigrationProblem, MigrationReport, MigrationStatus,
    MigrationStep, PendingMigration, PlannedStep, RepairReport,
};

use self::format::History;
use self::history::{Exec, HistoryDialect, LockGuard, NewRow};
use self::journal::Journal;
use self::run::{Placeholders, Runner, ScriptSession};
use self::source::{Event, Script, Scripts};
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::Shared;
use crate::session::PooledConnection;

/// How far a run goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// Every pending script (the default).
    #[default]
    Latest,
    /// Versioned scripts up to and including this version (repeatable
    /// scripts are then not run).
    Version(Version),
}

/// Options of a migration run. Build with [`MigrateOptions::default`] and
/// the consuming setters.
#[derive(Clone, Debug)]
#[non_exhaustive]
#[must_use]
pub struct MigrateOptions {
    /// How far to go. Default [`Target::Latest`].
    pub target: Target,
    /// How long to wait for another migrator to finish. Default 60 s: long
    /// enough for a sibling process's ordinary migrations, short enough that
    /// a stuck deployment is noticed.
    pub lock_timeout: Duration,
    /// The limit of each script, `None` for none. Default `None`: a schema
    /// change is not cut off half-way by the query timeout meant for
    /// ordinary statements.
    pub statement_timeout: Option<Duration>,
    /// `${name}` placeholder values, on top of the configured ones
    /// ([`DatabaseConfigBuilder::migration_placeholder`](crate::DatabaseConfigBuilder::migration_placeholder)).
    /// Default none.
    pub placeholders: Vec<(String, String)>,
    /// How long a script's statement waits for another session's lock:
    /// `None` takes the configured bound
    /// ([`DatabaseConfigBuilder::migration_lock_wait`](crate::DatabaseConfigBuilder::migration_lock_wait),
    /// default 5 s); `Some(Duration::ZERO)` waits without bound.
    pub lock_wait: Option<Duration>,
    /// How many times a transactional script that gave up waiting for a
    /// lock runs again (it was rolled back whole). Default 2. A script that
    /// runs statement by statement is never run again.
    pub lock_retries: u32,
    /// Refuse `.sql` files that are neither migrations nor callbacks:
    /// `None` takes the configured setting
    /// ([`DatabaseConfigBuilder::migrations_strict`](crate::DatabaseConfigBuilder::migrations_strict),
    /// default off: skipped with a warning).
    pub strict: Option<bool>,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            target: Target::Latest,
            lock_timeout: Duration::from_secs(60),
            statement_timeout: None,
            placeholders: Vec::new(),
            lock_wait: None,
            lock_retries: 2,
            strict: None,
        }
    }
}

impl MigrateOptions {
    /// Sets [`target`](Self::target).
    pub fn target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    /// Sets [`lock_timeout`](Self::lock_timeout).
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Sets [`statement_timeout`](Self::statement_timeout).
    pub fn statement_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Adds (or replaces) the value of the `${name}` placeholder.
    pub fn placeholder(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.placeholders.retain(|(n, _)| *n != name);
        self.placeholders.push((name, value.into()));
        self
    }

    /// Sets [`lock_wait`](Self::lock_wait).
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = Some(wait);
        self
    }

    /// Sets [`lock_retries`](Self::lock_retries).
    pub fn lock_retries(mut self, retries: u32) -> Self {
        self.lock_retries = retries;
        self
    }

    /// Sets [`strict`](Self::strict).
    pub fn strict(mut self, on: bool) -> Self {
        self.strict = Some(on);
        self
    }
}

/// Runs migration operations on one database with a given source and
/// options. [`DatabaseManager::migrator`](crate::DatabaseManager::migrator)
/// makes one with the configured folder:
///
/// ```no_run
/// # fn main() -> dbmanager::Result<()> {
/// let db = dbmanager::DatabaseManager::new("rpa_db")?;
/// db.migrator().validate()?;
/// let report = db.migrator().migrate_to("2.1")?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use = "a Migrator does nothing until one of its operations is called"]
pub struct Migrator {
    shared: Arc<Shared>,
    source: MigrationSource,
    options: MigrateOptions,
}

impl fmt::Debug for Migrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migrator")
            .field("database", self.shared.name())
            .field("source", &self.source)
            .field("options", &self.options)
            .finish()
    }
}

const BASELINE_SCRIPT: &str = "<< Baseline >>";

impl Migrator {
    /// A migrator for the database behind `shared`.
    pub(crate) fn new(shared: Arc<Shared>, source: MigrationSource) -> Migrator {
        Migrator {
            shared,
            source,
            options: MigrateOptions::default(),
        }
    }

    /// Applies pending versioned migrations up to and including `version`
    /// (and no repeatable scripts past it); the same as [`run`](Self::run)
    /// with [`Target::Version`].
    ///
    /// # Errors
    ///
    /// [`Migration`](ErrorKind::Migration) when `version` is not a version;
    /// otherwise as [`run`](Self::run).
    pub fn migrate_to(&self, version: &str) -> Result<MigrationReport> {
        let v = Version::parse(version).map_err(|e| e.on_database(self.shared.name()))?;
        let options = self.options.clone().target(Target::Version(v));
        self.clone().options(options).run()
    }

    /// Uses `source` instead of the configured folder (for embedded scripts).
    pub fn source(mut self, source: MigrationSource) -> Self {
        self.source = source;
        self
    }

    /// Uses these options.
    pub fn options(mut self, options: MigrateOptions) -> Self {
        self.options = options;
        self
    }

    /// The source scripts are read from.
    pub fn migration_source(&self) -> &MigrationSource {
        &self.source
    }

    fn table(&self) -> &str {
        self.shared.config.history_table()
    }

    fn dialect(&self) -> &'static dyn HistoryDialect {
        history::dialect_for(self.shared.config.kind, self.shared.config.pgbouncer)
    }

    fn name(&self) -> Arc<str> {
        Arc::clone(self.shared.name())
    }

    /// A connection of its own, for reading the history.
    #[track_caller]
    fn connection(&self) -> Result<PooledConnection> {
        Ok(PooledConnection::new(
            Arc::clone(&self.shared),
            self.shared.checkout()?,
        ))
    }

    fn refuse_read_only(&self, what: &str) -> Result<()> {
        if self.shared.config.read_only() {
            let var = self
                .shared
                .config
                .variable("READ_ONLY")
                .unwrap_or_else(|| "read_only(false) on the builder".to_owned());
            return Err(Error::new(
                ErrorKind::ReadOnly,
                format!("the database is configured read-only, so it refuses to {what}; set {var} to false to allow it"),
            )
            .on_database(&self.name()));
        }
        Ok(())
    }

    fn load(&self) -> Result<Scripts> {
        let strict = self
            .options
            .strict
            .unwrap_or(self.shared.config.migrations_strict);
        self.source.load(strict).map_err(|e| {
            // Name the variable the folder was read from, when it was.
            let e = match self.shared.config.variable("MIGRATIONS_DIR") {
                Some(var) => e.replace_in_message(
                    source::MIGRATIONS_DIR_SETTING,
                    &format!("{var} (or {})", source::MIGRATIONS_DIR_SETTING),
                ),
                None => e,
            };
            e.on_database(&self.name())
        })
    }

    /// Refuses at once, saying what to set, a run whose scripts would wait
    /// for a second connection that the pool can never give: one holds the
    /// migration lock, scripts run on another (so that nothing they change
    /// reaches the lock's session or the history rows written on it).
    fn refuse_single_connection(&self) -> Result<()> {
        let config = &self.shared.config;
        let most = config.pool_size().saturating_add(config.max_overflow());
        if most >= 2 {
            return Ok(());
        }
        let (size, overflow) = match (
            config.variable("POOL_SIZE"),
            config.variable("MAX_OVERFLOW"),
        ) {
            (Some(size), Some(overflow)) => (size, overflow),
            _ => (
                "DatabaseConfigBuilder::pool_size".to_owned(),
                "DatabaseConfigBuilder::max_overflow".to_owned(),
            ),
        };
        Err(Error::new(
            ErrorKind::Config,
            format!(
                "running migrations needs two connections at once (one holds the migration lock, \
                 the other runs the scripts), but this pool opens at most {most} \
                 (pool size {}, max overflow {}); set {size} to 2 or more, or {overflow} to 1 or more; \
                 nothing was applied",
                config.pool_size(),
                config.max_overflow()
            ),
        )
        .on_database(&self.name()))
    }

    /// Takes the migration lock; its connection runs with the statement
    /// timeout of migrations.
    fn acquire_lock(&self) -> Result<LockGuard> {
        let mut guard = LockGuard::acquire(
            &self.shared,
            self.dialect(),
            self.table(),
            self.options.lock_timeout,
        )?;
        guard.conn().set_timeout(self.options.statement_timeout);
        Ok(guard)
    }

    /// Takes the lock, finds the history (creating ours when there is
    /// none) and makes sure its journal exists.
    fn lock(&self) -> Result<(LockGuard, History)> {
        let dialect = self.dialect();
        let mut guard = self.acquire_lock()?;
        let conn = guard.conn();
        let history = match self.find_history(conn)? {
            Some(h) => h,
            None => {
                history::create(conn, dialect, self.table())?;
                History {
                    table: self.table().to_owned(),
                    format: &format::Ours,
                    dialect,
                }
            }
        };
        conn.execute_batch(&self.journal().create_sql())?;
        Ok((guard, history))
    }

    /// The history table and its format, `None` when there is none.
    fn find_history(&self, conn: &mut dyn Exec) -> Result<Option<History>> {
        History::find_or_other(
            conn,
            self.dialect(),
            self.table(),
            self.table() == crate::config::DEFAULT_HISTORY_TABLE,
        )
        .map_err(|e| e.on_database(&self.name()))
    }

    fn journal(&self) -> Journal {
        Journal::new(self.table(), self.dialect())
    }

    /// The history's rows, then the journal's entries (scripts that ran
    /// but are not recorded yet, and failures the history cannot hold).
    fn applied(&self, conn: &mut dyn Exec, history: &History) -> Result<Vec<AppliedMigration>> {
        let mut applied = history.read(conn)?;
        let journal = self.journal();
        if journal.exists(conn)? {
            applied.extend(journal.read(conn)?.iter().map(journal::Entry::applied));
        }
        Ok(applied)
    }

    /// Runs `f` on the lock's connection, which no script runs on (scripts
    /// have a session of their own, see [`Runner`]), so a script's `SET
    /// ROLE` or `USE` never reaches it; on a fresh connection from the pool
    /// when that one has died.
    fn on_fresh<T>(
        &self,
        lock_conn: &mut PooledConnection,
        mut f: impl FnMut(&mut PooledConnection) -> Result<T>,
    ) -> Result<T> {
        match f(lock_conn) {
            Err(e) if e.kind() == ErrorKind::Connect => {
                tracing::warn!(error = %e, "the migration lock's connection failed; writing the history on a fresh one");
                let mut conn = self.connection()?;
                conn.set_timeout(Some(RECORD_TIMEOUT));
                f(&mut conn)
            }
            result => result,
        }
    }

    /// Records a script's outcome: THE one place a history row of a script
    /// is written outside the script's own transaction. On a connection
    /// no script has run on ([`on_fresh`](Self::on_fresh)), in one transaction with the removal of its journal
    /// entry (and, for a repeatable script, of its older rows), tried
    /// [`RECORD_ATTEMPTS`] times. A failure the history has no place for
    /// stays in the journal.
    fn record(
        &self,
        lock_conn: &mut PooledConnection,
        history: &History,
        row: &NewRow<'_>,
    ) -> Result<()> {
        let journal = self.journal();
        let mut last = None;
        for attempt in 0..RECORD_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(RECORD_PAUSE * attempt);
            }
            let result = self.on_fresh(lock_conn, |c| {
                c.transaction(|tx| {
                    if !row.success && !history.format.records_failures() {
                        return journal.mark(
                            tx,
                            row.script,
                            journal::FAILED,
                            row.execution_time_ms,
                        );
                    }
                    if row.success && row.kind_of() == MigrationKind::Repeatable {
                        delete_repeatable(tx, history.dialect, &history.table, row.description)?;
                    }
                    history.insert(tx, row)?;
                    journal.clear(tx, row.script)
                })
            });
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, script = row.script, attempt = attempt + 1, "writing a history row failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::new(ErrorKind::Migration, "no attempt was made")))
    }

    /// The error of a script that ran but whose history row could not be
    /// written.
    fn not_recorded(
        &self,
        cause: Error,
        row: &NewRow<'_>,
        history: &History,
        noted: bool,
    ) -> Error {
        let journal = self.journal();
        let next = if noted {
            format!(
                "it is noted as `ran` in `{}`, so the next run records it before running anything \
                 else: fix what stops the write (the cause is below) and run migrate again; do not run \
                 the script again by hand",
                journal.name
            )
        } else {
            format!(
                "it stays noted as `running` in `{}`, so later runs stop on it: once the database \
                 is reachable, check that its changes are there, then add its row to `{}` yourself \
                 (version {}, script `{}`, checksum {}) and remove its entry from `{}`",
                journal.name,
                history.table,
                row.version.as_deref().unwrap_or("none"),
                row.script,
                row.checksum.map_or("none".to_owned(), |c| c.to_string()),
                journal.name
            )
        };
        Error::new(
            ErrorKind::Migration,
            format!(
                "`{}` RAN and its changes are committed, but it was NOT recorded in the history \
                 table `{}` ({} attempts on fresh connections failed: {}); {next}",
                row.script,
                history.table,
                RECORD_ATTEMPTS,
                cause.message()
            ),
        )
        .with_source(cause)
        .on_database(&self.name())
    }

    /// Records the scripts of earlier runs that ran but could not be
    /// recorded then (journal entries `ran`).
    fn settle_journal(&self, conn: &mut PooledConnection, history: &History) -> Result<()> {
        let journal = self.journal();
        for entry in journal.read(conn)? {
            if entry.state != journal::RAN {
                continue;
            }
            tracing::info!(script = %entry.script, "recording a script that ran in an earlier run but was not recorded then");
            let row = entry.row();
            self.record(conn, history, &row)
                .map_err(|e| self.not_recorded(e, &row, history, true))?;
        }
        Ok(())
    }

    /// Applies every pending script (up to the target), after validating
    /// the applied ones. Returns what was applied; an empty report when
    /// there was nothing to do.
    ///
    /// # Errors
    ///
    /// [`ReadOnly`](ErrorKind::ReadOnly) before touching the server on a
    /// read-only database; [`Migration`](ErrorKind::Migration) for a bad
    /// file name, a duplicate version, an edited applied script or a failed
    /// migration awaiting repair; [`LockTimeout`](ErrorKind::LockTimeout)
    /// when another migrator holds the lock; the server's error for a
    /// failing script, naming the file and carrying what was applied before
    /// it ([`Error::migration_report`]).
    pub fn run(&self) -> Result<MigrationReport> {
        self.refuse_read_only("run migrations")?;
        let mut scripts = self.load()?;
        let dialect = self.dialect();
        let (mut guard, history) = self.lock()?;
        let conn = guard.conn();
        history.adapt(&mut scripts);
        self.settle_journal(conn, &history)?;
        let applied = self.applied(conn, &history)?;
        self.check(&scripts, &applied, true)?;
        let plan = pending(&scripts, &applied, &self.options.target);
        if !plan.is_empty() || scripts.callbacks.values().any(|c| !c.is_empty()) {
            self.refuse_single_connection()?;
        }
        let user = dialect.current_user(conn)?;
        let callbacks = |e: Event| scripts.callbacks.get(&e).map_or(&[][..], Vec::as_slice);
        let mut runner = self.runner(
            conn,
            &user,
            plan.iter()
                .copied()
                .chain(scripts.callbacks.values().flatten()),
        )?;
        let mut report = MigrationReport {
            database_name: self.shared.name().to_string(),
            applied: Vec::new(),
            current_version: current_version(&applied),
        };
        // Scripts share transactions where the backend allows it
        // ([`Runner::batch`]) and no callback runs between them.
        let batching = callbacks(Event::BeforeEachMigrate).is_empty()
            && callbacks(Event::AfterEachMigrate).is_empty();
        let result = (|| {
            runner.callbacks(callbacks(Event::BeforeMigrate))?;
            let mut at = 0;
            // The scripts of a batch that was rolled back run one by one.
            let mut one_by_one_until = 0;
            while at < plan.len() {
                if batching && at >= one_by_one_until {
                    match self.apply_batch(&history, &mut runner, &plan[at..], &user) {
                        Ok(steps) if !steps.is_empty() => {
                            at += steps.len();
                            for step in steps {
                                report.current_version = step.version.clone();
                                report.applied.push(step);
                            }
                            continue;
                        }
                        Ok(_) => {}
                        Err(n) => one_by_one_until = at + n,
                    }
                }
                let script = plan[at];
                at += 1;
                runner.callbacks(callbacks(Event::BeforeEachMigrate))?;
                let step = match self.apply(conn, &history, &mut runner, script, &user) {
                    Ok(step) => step,
                    Err(e) => {
                        runner.error_callbacks(callbacks(Event::AfterEachMigrateError));
                        return Err(match e {
                            StepError::Failed(e) => self.failure(e, script, &report),
                            StepError::NotRecorded(e) => e.with_report(report.clone()),
                        });
                    }
                };
                if script.kind == MigrationKind::Versioned {
                    report.current_version = step.version.clone();
                }
                report.applied.push(step);
                runner.callbacks(callbacks(Event::AfterEachMigrate))?;
            }
            if !report.applied.is_empty() {
                runner.callbacks(callbacks(Event::AfterMigrateApplied))?;
            }
            runner.callbacks(callbacks(Event::AfterMigrate))
        })();
        if let Err(e) = result {
            runner.error_callbacks(callbacks(Event::AfterMigrateError));
            return Err(e);
        }
        Ok(report)
    }

    /// What runs scripts for one operation: a session of their own (not
    /// the lock's), and the placeholders, with the built-in ones asked of
    /// the server only when one of `scripts` uses them.
    fn runner<'s>(
        &self,
        conn: &mut PooledConnection,
        user: &str,
        scripts: impl Iterator<Item = &'s Script>,
    ) -> Result<Runner> {
        let config = &self.shared.config;
        let mut builtins = vec![
            ("user", user.to_owned()),
            (
                "timestamp",
                crate::status::now_rfc3339()
                    .get(..19)
                    .unwrap_or_default()
                    .replace('T', " "),
            ),
        ];
        let mut scripts = scripts;
        if scripts.any(|s| run::uses_builtins(&s.sql)) {
            let (schema, database) = run::server_builtins(conn, config.kind)?;
            builtins.push(("defaultSchema", schema));
            builtins.push(("database", database));
        }
        let setting = config
            .variable("MIGRATION_PLACEHOLDERS")
            .unwrap_or_else(|| "DatabaseConfigBuilder::migration_placeholder".to_owned());
        let placeholders = Placeholders::new(
            config
                .migration_placeholders
                .iter()
                .chain(&self.options.placeholders),
            &builtins,
            setting,
        );
        let lock_wait = match self.options.lock_wait {
            Some(w) if w.is_zero() => None,
            Some(w) => Some(w),
            None => config.migration_lock_wait,
        };
        let session = ScriptSession::new(
            Arc::clone(&self.shared),
            lock_wait,
            self.options.statement_timeout,
        );
        Ok(Runner::new(
            session,
            placeholders,
            self.dialect().transactional_ddl(),
            self.options.lock_retries,
        ))
    }

    /// Applies the first pending versioned scripts in one transaction
    /// with their history rows, where [`Runner::batch`] can: their steps,
    /// none when the first script cannot share a transaction. `Err` with
    /// the number of scripts taken when the transaction failed and was
    /// rolled back: they are then applied one by one, which reports the
    /// failure as it is.
    fn apply_batch(
        &self,
        history: &History,
        runner: &mut Runner,
        plan: &[&Script],
        user: &str,
    ) -> std::result::Result<Vec<MigrationStep>, usize> {
        let fits = |s: &Script| {
            s.kind == MigrationKind::Versioned && history.check_holds(s.kind, &s.script).is_ok()
        };
        let record = |tx: &mut dyn Exec, done: &[(&Script, i64)]| {
            let rows: Vec<NewRow<'_>> = done
                .iter()
                .map(|(script, ms)| NewRow {
                    version: history.version_text(script.version.as_ref()),
                    description: &script.description,
                    kind: "SQL",
                    script: &script.script,
                    checksum: Some(script.checksum),
                    installed_by: user,
                    execution_time_ms: *ms,
                    success: true,
                })
                .collect();
            history.insert_many(tx, &rows)
        };
        let done = match runner.batch(plan, fits, record) {
            Ok(done) => done,
            Err((n, e)) => {
                tracing::info!(
                    database = %self.name(),
                    error = %e,
                    "{n} migration scripts run in one transaction failed and were rolled back; they run again one by one"
                );
                return Err(n);
            }
        };
        Ok(done
            .into_iter()
            .map(|(script, ms)| {
                tracing::info!(database = %self.name(), "applied {} in {ms} ms", script.script);
                MigrationStep {
                    kind: script.kind,
                    version: history.version_text(script.version.as_ref()),
                    description: script.description.clone(),
                    script: script.script.clone(),
                    execution_time_ms: ms,
                }
            })
            .collect())
    }

    /// Runs one script on the runner's session, then writes its history
    /// row; a failure that may have left part of it applied is recorded.
    fn apply(
        &self,
        conn: &mut PooledConnection,
        history: &History,
        runner: &mut Runner,
        script: &Script,
        user: &str,
    ) -> std::result::Result<MigrationStep, StepError> {
        let dialect = self.dialect();
        let version = history.version_text(script.version.as_ref());
        let row = |ms: i64, success: bool| NewRow {
            version: version.clone(),
            description: &script.description,
            kind: "SQL",
            script: &script.script,
            checksum: Some(script.checksum),
            installed_by: user,
            execution_time_ms: ms,
            success,
        };
        history
            .check_holds(script.kind, &script.script)
            .map_err(StepError::Failed)?;
        tracing::info!(database = %self.name(), "applying {}", script.script);
        let start = Instant::now();
        let elapsed =
            |start: Instant| i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
        // A script that may commit by itself (no transactional DDL, no
        // transaction asked for, or its own BEGIN/COMMIT): note that it
        // starts, so that a run that cannot record it (or dies) does not go
        // unnoticed.
        let parsed = runner.parse(script).map_err(StepError::Failed)?;
        let journal =
            (!dialect.transactional_ddl() || script.no_transaction || parsed.own_transactions)
                .then(|| self.journal());
        if let Some(journal) = &journal {
            self.on_fresh(conn, |c| journal.start(c, &row(0, true)))
                .map_err(StepError::Failed)?;
        }
        // Where the script runs in one transaction and cannot have changed
        // its session, its row commits with it, or neither does.
        let mut in_transaction = |tx: &mut dyn Exec| -> Result<()> {
            if script.kind == MigrationKind::Repeatable {
                delete_repeatable(tx, dialect, &history.table, &script.description)?;
            }
            history.insert(tx, &row(elapsed(start), true))
        };
        match runner.execute_recording(script, &parsed, Some(&mut in_transaction)) {
            Ok(true) => {
                if let Some(journal) = &journal {
                    let _ = self.on_fresh(conn, |c| journal.clear(c, &script.script));
                }
            }
            Ok(false) => {
                let ms = elapsed(start);
                let done = row(ms, true);
                if let Err(e) = self.record(conn, history, &done) {
                    let noted = journal.as_ref().is_some_and(|journal| {
                        self.on_fresh(conn, |c| journal.mark(c, &script.script, journal::RAN, ms))
                            .is_ok()
                    });
                    return Err(StepError::NotRecorded(
                        self.not_recorded(e, &done, history, noted),
                    ));
                }
            }
            Err(failure) => {
                if failure.left_changes {
                    // Part of it stays: record the failure, so that later
                    // runs stop until it is repaired.
                    if let Err(record) = self.record(conn, history, &row(elapsed(start), false)) {
                        tracing::warn!(error = %record, "could not record the failed migration; its journal entry stops later runs");
                    }
                } else if let Some(journal) = &journal {
                    // Nothing of it stays: it never started, as far as
                    // later runs are concerned.
                    let _ = self.on_fresh(conn, |c| journal.clear(c, &script.script));
                }
                return Err(StepError::Failed(failure.error));
            }
        }
        tracing::info!(
            database = %self.name(),
            "applied {} in {}",
            script.script,
            crate::error::fmt_duration(start.elapsed())
        );
        Ok(MigrationStep {
            kind: script.kind,
            version,
            description: script.description.clone(),
            script: script.script.clone(),
            execution_time_ms: elapsed(start),
        })
    }

    /// Wraps a failing script's error: names the file and version, where in
    /// it the server stopped, and what was applied before it.
    fn failure(&self, cause: Error, script: &Script, report: &MigrationReport) -> Error {
        let kind = cause.kind();
        let code = cause.db_code().map(str::to_owned);
        let mut message = format!(
            "`{}`{} failed: {}",
            script.script,
            script
                .version_text()
                .map(|v| format!(" (version {v})"))
                .unwrap_or_default(),
            cause.message()
        );
        if report.applied.is_empty() {
            message.push_str("; nothing was applied before it in this run");
        } else {
            let names: Vec<&str> = report.applied.iter().map(|s| s.script.as_str()).collect();
            message.push_str(&format!(
                "; applied before it in this run: {}",
                names.join(", ")
            ));
        }
        let mut e = Error::new(kind, message)
            .with_source(cause)
            .with_report(report.clone());
        if let Some(code) = code {
            e = e.with_code(code);
        }
        e.on_database(&self.name())
    }

    /// Finds what stops a run: failed rows, edited or missing applied scripts.
    fn problems(&self, scripts: &Scripts, applied: &[AppliedMigration]) -> Vec<MigrationProblem> {
        let mut problems = Vec::new();
        for row in applied {
            if !row.success {
                problems.push(MigrationProblem::Failed {
                    version: row.version.clone(),
                    script: row.script.clone(),
                });
                continue;
            }
            if !matches!(
                row.kind,
                MigrationKind::Versioned | MigrationKind::Repeatable
            ) {
                continue;
            }
            let Some(version) = row.version.as_deref().and_then(|v| Version::parse(v).ok()) else {
                continue; // repeatable: a change means "apply again"
            };
            match scripts
                .versioned
                .iter()
                .find(|s| s.version.as_ref() == Some(&version))
            {
                None => problems.push(MigrationProblem::MissingFile {
                    version: version.to_string(),
                    script: row.script.clone(),
                }),
                Some(s) if row.checksum.is_some_and(|c| c != s.checksum) => {
                    problems.push(MigrationProblem::ChecksumMismatch {
                        version: version.to_string(),
                        script: s.script.clone(),
                        applied: row.checksum.unwrap_or_default(),
                        file: s.checksum,
                    })
                }
                Some(_) => {}
            }
        }
        problems
    }

    /// `Err` listing the problems; `before_running`: the check stands
    /// before a run, which it stopped.
    fn check(
        &self,
        scripts: &Scripts,
        applied: &[AppliedMigration],
        before_running: bool,
    ) -> Result<()> {
        let problems = self.problems(scripts, applied);
        if problems.is_empty() {
            return Ok(());
        }
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        Err(Error::new(
            ErrorKind::Migration,
            format!(
                "validation failed{} ({} problem{}): {}",
                if before_running {
                    ", nothing was run"
                } else {
                    ""
                },
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                text.join("; ")
            ),
        )
        .on_database(&self.name()))
    }

    /// Whether the history table exists (read without the lock).
    pub(crate) fn history_exists(&self) -> Result<bool> {
        let mut conn = self.connection()?;
        Ok(self.find_history(&mut conn)?.is_some())
    }

    /// Reads the history without taking the lock or creating the table,
    /// and gives `scripts` the checksums of its format.
    fn read_history(
        &self,
        scripts: &mut Scripts,
    ) -> Result<(Option<String>, Vec<AppliedMigration>)> {
        let mut conn = self.connection()?;
        let Some(history) = self.find_history(&mut conn)? else {
            return Ok((None, Vec::new()));
        };
        history.adapt(scripts);
        let applied = self.applied(&mut conn, &history)?;
        Ok((Some(history.table), applied))
    }

    /// Where the database stands: history, pending scripts, problems.
    /// Changes nothing (works on read-only databases).
    ///
    /// # Errors
    ///
    /// [`Migration`](ErrorKind::Migration) for unreadable or badly named
    /// scripts; connection and server errors.
    pub fn status(&self) -> Result<MigrationStatus> {
        let mut scripts = self.load()?;
        let callbacks = std::mem::take(&mut scripts.callbacks);
        let events = [Event::BeforeInfo, Event::AfterInfo, Event::AfterInfoError];
        self.around(&callbacks, events, || self.status_of(&mut scripts))
    }

    fn status_of(&self, scripts: &mut Scripts) -> Result<MigrationStatus> {
        let (table, applied) = self.read_history(scripts)?;
        let scripts = &*scripts;
        let problems = self.problems(scripts, &applied);
        let pending = pending(scripts, &applied, &Target::Latest)
            .into_iter()
            .map(|s| PendingMigration {
                version: s.version_text(),
                description: s.description.clone(),
                script: s.script.clone(),
                checksum: s.checksum,
                kind: s.kind,
            })
            .collect();
        Ok(MigrationStatus {
            database_name: self.shared.name().to_string(),
            history_table: table.unwrap_or_else(|| self.table().to_owned()),
            current_version: current_version(&applied),
            applied,
            pending,
            problems,
            timestamp: crate::status::now_rfc3339(),
        })
    }

    /// Checks applied scripts against the files (checksums, missing files,
    /// failed migrations) without running anything.
    ///
    /// # Errors
    ///
    /// [`Migration`](ErrorKind::Migration) listing every problem, each
    /// naming the file (and both checksums for an edited one).
    pub fn validate(&self) -> Result<()> {
        let mut scripts = self.load()?;
        let callbacks = std::mem::take(&mut scripts.callbacks);
        let events = [
            Event::BeforeValidate,
            Event::AfterValidate,
            Event::AfterValidateError,
        ];
        self.around(&callbacks, events, || {
            let (_, applied) = self.read_history(&mut scripts)?;
            self.check(&scripts, &applied, false)
        })
    }

    /// Runs `f` between the callbacks of `[before, after, after error]`,
    /// when there are any (and the database is not read-only: callbacks
    /// are scripts, which may write).
    fn around<T>(
        &self,
        callbacks: &std::collections::BTreeMap<Event, Vec<Script>>,
        [before, after, error]: [Event; 3],
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let of = |e: Event| callbacks.get(&e).map_or(&[][..], Vec::as_slice);
        if self.shared.config.read_only()
            || [before, after, error].iter().all(|e| of(*e).is_empty())
        {
            return f();
        }
        let mut conn = self.connection()?;
        let user = self.dialect().current_user(&mut conn)?;
        let all = [before, after, error].into_iter().flat_map(of);
        let mut runner = self.runner(&mut conn, &user, all)?;
        drop(conn);
        runner.callbacks(of(before))?;
        match f() {
            Ok(value) => {
                runner.callbacks(of(after))?;
                Ok(value)
            }
            Err(e) => {
                runner.error_callbacks(of(error));
                Err(e)
            }
        }
    }

    /// The plan of a run, with each script's SQL, without changing anything
    /// (no lock, no history table created).
    ///
    /// # Errors
    ///
    /// As [`status`](Self::status).
    pub fn dry_run(&self) -> Result<MigrationPlan> {
        let mut scripts = self.load()?;
        let (table, applied) = self.read_history(&mut scripts)?;
        let exists = table.is_some();
        let problems = self.problems(&scripts, &applied);
        let transactional = self.dialect().transactional_ddl();
        let steps = pending(&scripts, &applied, &self.options.target)
            .into_iter()
            .map(|s| PlannedStep {
                kind: s.kind,
                version: s.version_text(),
                description: s.description.clone(),
                script: s.script.clone(),
                in_transaction: transactional
                    && !s.no_transaction
                    && !run::holds_own_transactions(&s.sql, self.shared.dialect),
                sql: s.sql.clone(),
            })
            .collect();
        Ok(MigrationPlan {
            database_name: self.shared.name().to_string(),
            history_table_exists: exists,
            steps,
            problems,
        })
    }

    /// Marks an existing database as being at `version`: scripts up to it
    /// are taken as applied, later ones will run.
    ///
    /// # Errors
    ///
    /// [`ReadOnly`](ErrorKind::ReadOnly); [`Migration`](ErrorKind::Migration)
    /// when migrations were already applied or a different baseline exists,
    /// or `version` is not a version.
    pub fn baseline(&self, version: &str) -> Result<MigrationReport> {
        self.refuse_read_only("baseline")?;
        let version = Version::parse(version).map_err(|e| e.on_database(&self.name()))?;
        let dialect = self.dialect();
        let (mut guard, history) = self.lock()?;
        let conn = guard.conn();
        let applied = self.applied(conn, &history)?;
        if let Some(b) = applied.iter().find(|r| r.kind == MigrationKind::Baseline) {
            if b.version
                .as_deref()
                .and_then(|v| Version::parse(v).ok())
                .as_ref()
                == Some(&version)
            {
                return Ok(self.empty_report(&applied));
            }
            return Err(Error::new(
                ErrorKind::Migration,
                format!(
                    "the database already has a baseline at version {}; a database has one baseline",
                    b.version.as_deref().unwrap_or("?")
                ),
            )
            .on_database(&self.name()));
        }
        if let Some(r) = applied
            .iter()
            .find(|r| r.kind == MigrationKind::Versioned && r.version.is_some())
        {
            return Err(Error::new(
                ErrorKind::Migration,
                format!(
                    "migrations were already applied here (`{}` first); baseline is for a database that has none yet",
                    r.script
                ),
            )
            .on_database(&self.name()));
        }
        let user = dialect.current_user(conn)?;
        history
            .insert(
                conn,
                &NewRow {
                    version: history.version_text(Some(&version)),
                    description: BASELINE_SCRIPT,
                    kind: "BASELINE",
                    script: BASELINE_SCRIPT,
                    checksum: None,
                    installed_by: &user,
                    execution_time_ms: 0,
                    success: true,
                },
            )
            .map_err(|e| e.on_database(&self.name()))?;
        Ok(MigrationReport {
            database_name: self.shared.name().to_string(),
            applied: vec![MigrationStep {
                kind: MigrationKind::Baseline,
                version: Some(version.to_string()),
                description: BASELINE_SCRIPT.to_owned(),
                script: BASELINE_SCRIPT.to_owned(),
                execution_time_ms: 0,
            }],
            current_version: Some(version.to_string()),
        })
    }

    /// Takes over refinery's (`refinery_schema_history`) or sqlx's
    /// (`_sqlx_migrations`) history in one step: each of its applied
    /// versions is matched with the `V{version}__….sql` file of that
    /// version and recorded in our history table, with the file's checksum,
    /// so that `migrate` goes on after them and `validate` checks them. The
    /// other table is left as it was. sqlx's SHA-384 checksums are checked
    /// against the files first; refinery's are not comparable and are not
    /// checked. The report lists the imported scripts.
    ///
    /// # Errors
    ///
    /// [`ReadOnly`](ErrorKind::ReadOnly); [`Migration`](ErrorKind::Migration)
    /// when there is no such history, ours already has rows, a version has
    /// no file, a file differs from what sqlx applied, or sqlx recorded a
    /// failure; lock, connection and server errors. Nothing is imported
    /// unless everything is.
    pub fn adopt(&self) -> Result<MigrationReport> {
        self.refuse_read_only("adopt another tool's migration history")?;
        let name = self.name();
        let mut scripts = self.load()?;
        let dialect = self.dialect();
        let mut guard = self.acquire_lock()?;
        let conn = guard.conn();
        let (source, rows) =
            adopt::read_foreign(conn, dialect).map_err(|e| e.on_database(&name))?;
        let history = match History::find(conn, dialect, self.table())? {
            Some(h) => {
                if !h.read(conn)?.is_empty() {
                    return Err(Error::new(
                        ErrorKind::Migration,
                        format!(
                            "the history table `{}` already has rows; adopt is for a database whose history \
                             is still only in `{source}`",
                            h.table
                        ),
                    )
                    .on_database(&name));
                }
                h
            }
            None => {
                history::create(conn, dialect, self.table())?;
                History {
                    table: self.table().to_owned(),
                    format: &format::Ours,
                    dialect,
                }
            }
        };
        history.adapt(&mut scripts);
        let user = dialect.current_user(conn)?;
        let mut report = self.empty_report(&[]);
        let mut picked = Vec::new();
        for row in &rows {
            if !row.success {
                return Err(Error::new(
                    ErrorKind::Migration,
                    format!(
                        "`{source}` records version {} (`{}`) as failed; fix it with the tool that ran it, \
                         then adopt; nothing was imported",
                        row.version, row.name
                    ),
                )
                .on_database(&name));
            }
            let wanted = Version::parse(&row.version.to_string())?;
            let Some(script) = scripts
                .versioned
                .iter()
                .find(|s| s.version.as_ref() == Some(&wanted))
            else {
                return Err(Error::new(
                    ErrorKind::Migration,
                    format!(
                        "`{source}` records version {} (`{}`), but no V{}__….sql file has that version; \
                         add or rename the file (sqlx's `{{version}}_{{description}}.sql` becomes \
                         `V{{version}}__{{description}}.sql`); nothing was imported",
                        row.version, row.name, row.version
                    ),
                )
                .on_database(&name));
            };
            row.check(source, &script.script, &script.sql)
                .map_err(|e| e.on_database(&name))?;
            picked.push((script, row.execution_time_ms));
        }
        conn.transaction(|tx| {
            for (script, ms) in &picked {
                history.insert(
                    tx,
                    &NewRow {
                        version: history.version_text(script.version.as_ref()),
                        description: &script.description,
                        kind: "SQL",
                        script: &script.script,
                        checksum: Some(script.checksum),
                        installed_by: &user,
                        execution_time_ms: *ms,
                        success: true,
                    },
                )?;
            }
            Ok::<_, Error>(())
        })?;
        for (script, ms) in picked {
            report.current_version = history.version_text(script.version.as_ref());
            report.applied.push(MigrationStep {
                kind: MigrationKind::Versioned,
                version: report.current_version.clone(),
                description: script.description.clone(),
                script: script.script.clone(),
                execution_time_ms: ms,
            });
        }
        Ok(report)
    }

    fn empty_report(&self, applied: &[AppliedMigration]) -> MigrationReport {
        MigrationReport {
            database_name: self.shared.name().to_string(),
            applied: Vec::new(),
            current_version: current_version(applied),
        }
    }

    /// Removes failed rows from the history and sets the recorded checksum
    /// of each applied script that changed to the file's (Flyway's repair:
    /// for an edit known to be harmless, such as whitespace or comments).
    ///
    /// # Errors
    ///
    /// [`ReadOnly`](ErrorKind::ReadOnly); lock, connection and server errors.
    pub fn repair(&self) -> Result<RepairReport> {
        self.refuse_read_only("repair the migration history")?;
        let mut scripts = self.load()?;
        let callbacks = std::mem::take(&mut scripts.callbacks);
        let events = [
            Event::BeforeRepair,
            Event::AfterRepair,
            Event::AfterRepairError,
        ];
        self.around(&callbacks, events, || self.repair_of(scripts))
    }

    fn repair_of(&self, mut scripts: Scripts) -> Result<RepairReport> {
        let dialect = self.dialect();
        let (mut guard, history) = self.lock()?;
        let table = dialect.quote(&history.table);
        let conn = guard.conn();
        history.adapt(&mut scripts);
        let applied = history.read(conn)?;
        let mut report = RepairReport::default();
        let journal = self.journal();
        conn.transaction(|tx| {
            report.removed_failed.extend(journal.clear_unfinished(tx)?);
            for row in &applied {
                if !row.success {
                    tx.execute(
                        &format!("DELETE FROM {table} WHERE installed_rank = ?"),
                        (row.installed_rank,),
                    )?;
                    report.removed_failed.push(row.script.clone());
                    continue;
                }
                if !matches!(
                    row.kind,
                    MigrationKind::Versioned | MigrationKind::Repeatable
                ) {
                    continue;
                }
                let Some(v) = row.version.as_deref().and_then(|v| Version::parse(v).ok()) else {
                    continue;
                };
                if let Some(s) = scripts
                    .versioned
                    .iter()
                    .find(|s| s.version.as_ref() == Some(&v))
                {
                    if row.checksum != Some(s.checksum) {
                        tx.execute(
                            &format!("UPDATE {table} SET checksum = ? WHERE installed_rank = ?"),
                            (
                                history.format.checksum_value(s.checksum),
                                row.installed_rank,
                            ),
                        )?;
                        report.realigned.push(s.script.clone());
                    }
                }
            }
            Ok::<_, Error>(())
        })?;
        Ok(report)
    }

    /// Undoes applied versions above `to_version`, newest first, with their
    /// `U{version}__…` scripts; each undone version is removed from the
    /// history (and becomes pending again).
    ///
    /// # Errors
    ///
    /// [`ReadOnly`](ErrorKind::ReadOnly); [`Migration`](ErrorKind::Migration)
    /// when an undo script is missing (checked before anything runs) or
    /// validation fails; a failing undo script's error, as for
    /// [`run`](Self::run).
    pub fn undo(&self, to_version: &str) -> Result<MigrationReport> {
        self.refuse_read_only("undo migrations")?;
        let to = Version::parse(to_version).map_err(|e| e.on_database(&self.name()))?;
        let mut scripts = self.load()?;
        let dialect = self.dialect();
        let (mut guard, history) = self.lock()?;
        let table = dialect.quote(&history.table);
        let conn = guard.conn();
        history.adapt(&mut scripts);
        let applied = self.applied(conn, &history)?;
        self.check(&scripts, &applied, true)?;
        let mut targets: Vec<(Version, &AppliedMigration)> = applied
            .iter()
            .filter(|r| r.kind == MigrationKind::Versioned && r.success)
            .filter_map(|r| Some((Version::parse(r.version.as_deref()?).ok()?, r)))
            .filter(|(v, _)| *v > to)
            .collect();
        targets.sort_by(|a, b| b.0.cmp(&a.0));
        let mut undo_scripts = Vec::new();
        for (v, row) in &targets {
            let Some(u) = scripts.undo.get(v) else {
                return Err(Error::new(
                    ErrorKind::Migration,
                    format!(
                        "cannot undo version {v} (`{}`): there is no U{v}__….sql script; nothing was undone",
                        row.script
                    ),
                )
                .on_database(&self.name()));
            };
            undo_scripts.push((u, row.installed_rank));
        }
        if !undo_scripts.is_empty() || scripts.callbacks.values().any(|c| !c.is_empty()) {
            self.refuse_single_connection()?;
        }
        let mut report = self.empty_report(&applied);
        let user = dialect.current_user(conn)?;
        let callbacks = |e: Event| scripts.callbacks.get(&e).map_or(&[][..], Vec::as_slice);
        let mut runner = self.runner(
            conn,
            &user,
            undo_scripts
                .iter()
                .map(|(u, _)| *u)
                .chain(scripts.callbacks.values().flatten()),
        )?;
        let result = (|| {
            runner.callbacks(callbacks(Event::BeforeUndo))?;
            for (u, rank) in undo_scripts {
                let start = Instant::now();
                runner.callbacks(callbacks(Event::BeforeEachUndo))?;
                let delete = format!("DELETE FROM {table} WHERE installed_rank = ?");
                if let Err(e) = runner
                    .execute(u)
                    .map_err(|f| f.error)
                    .and_then(|()| conn.execute(&delete, (rank,)).map(drop))
                {
                    runner.error_callbacks(callbacks(Event::AfterEachUndoError));
                    return Err(self.failure(e, u, &report));
                }
                report.applied.push(MigrationStep {
                    kind: MigrationKind::Undo,
                    version: u.version_text(),
                    description: u.description.clone(),
                    script: u.script.clone(),
                    execution_time_ms: i64::try_from(start.elapsed().as_millis())
                        .unwrap_or(i64::MAX),
                });
                runner.callbacks(callbacks(Event::AfterEachUndo))?;
            }
            runner.callbacks(callbacks(Event::AfterUndo))
        })();
        if let Err(e) = result {
            runner.error_callbacks(callbacks(Event::AfterUndoError));
            return Err(e);
        }
        let after = self.applied(conn, &history)?;
        report.current_version = current_version(&after);
        Ok(report)
    }
}

/// How a script's step went wrong.
enum StepError {
    /// The script failed (or could not start).
    Failed(Error),
    /// The script ran; its history row could not be written.
    NotRecorded(Error),
}

/// How many times a history row is tried, each on a fresh connection.
const RECORD_ATTEMPTS: u32 = 3;
/// The pause before the second attempt (the third waits twice as long).
const RECORD_PAUSE: Duration = Duration::from_millis(250);
/// The statement limit of a history write.
const RECORD_TIMEOUT: Duration = Duration::from_secs(30);

fn delete_repeatable(
    conn: &mut dyn Exec,
    dialect: &dyn HistoryDialect,
    table: &str,
    description: &str,
) -> Result<()> {
    conn.exec(
        &format!(
            "DELETE FROM {} WHERE version IS NULL AND type = 'SQL' AND description = ? AND success = ?",
            dialect.quote(table)
        ),
        vec![description.into(), true.into()],
    )
    .map(drop)
}

/// The highest successfully applied or baselined version.
fn current_version(applied: &[AppliedMigration]) -> Option<String> {
    applied
        .iter()
        .filter(|r| r.success)
        .filter_map(|r| Version::parse(r.version.as_deref()?).ok())
        .max()
        .map(|v| v.to_string())
}

/// What a run would apply, in order: versioned scripts not yet applied
/// (above any baseline, up to the target), then repeatable scripts that are
/// new or changed.
fn pending<'s>(
    scripts: &'s Scripts,
    applied: &[AppliedMigration],
    target: &Target,
) -> Vec<&'s Script> {
    let done: Vec<Version> = applied
        .iter()
        .filter(|r| r.kind == MigrationKind::Versioned)
        .filter_map(|r| Version::parse(r.version.as_deref()?).ok())
        .collect();
    let baseline = applied
        .iter()
        .filter(|r| r.kind == MigrationKind::Baseline)
        .filter_map(|r| Version::parse(r.version.as_deref()?).ok())
        .max();
    let mut out: Vec<&Script> = scripts
        .versioned
        .iter()
        .filter(|s| {
            let v = s.version.as_ref();
            v.is_some_and(|v| !done.contains(v))
                && baseline.as_ref().map_or(true, |b| v.is_some_and(|v| v > b))
                && match target {
                    Target::Latest => true,
                    Target::Version(t) => v.is_some_and(|v| v <= t),
                }
        })
        .collect();
    if *target == Target::Latest {
        for s in &scripts.repeatable {
            let last = applied.iter().rev().find(|r| {
                r.version.is_none()
                    && r.kind == MigrationKind::Repeatable
                    && r.success
                    && r.description == s.description
            });
            if last.map_or(true, |r| r.checksum != Some(s.checksum)) {
                out.push(s);
            }
        }
    }
    out
}

/// The line of `sql` at the server's "(at character N)" (PostgreSQL).
fn position_line(message: &str, sql: &str) -> Option<usize> {
    let rest = &message[message.find("(at character ")? + "(at character ".len()..];
    let n: usize = rest[..rest.find(')')?].parse().ok()?;
    let upto: String = sql.chars().take(n.saturating_sub(1)).collect();
    Some(upto.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_becomes_a_line() {
        let sql = "CREATE TABLE a (id INT);\nSELEC 1;\n";
        assert_eq!(
            position_line("syntax error at or near \"SELEC\" (at character 26)", sql),
            Some(2)
        );
        assert_eq!(position_line("no position", sql), None);
    }
}
