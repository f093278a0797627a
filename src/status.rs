//! Plain status reports, serialisable with serde.

use std::fmt;

use serde::Serialize;

/// Which database server a configuration talks to.
///
/// Serialises as [`as_str`](Self::as_str) (`"postgresql"`, …), the
/// `database_type` of the health report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
    /// SQLite (a file, or in memory).
    Sqlite,
    /// Microsoft SQL Server.
    MsSql,
}

impl BackendKind {
    /// The name used in reports and `_TYPE` variables: `postgresql`, `mysql`,
    /// `sqlite`, `sqlserver`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Postgres => "postgresql",
            BackendKind::MySql => "mysql",
            BackendKind::Sqlite => "sqlite",
            BackendKind::MsSql => "sqlserver",
        }
    }

    /// The cargo feature that compiles this backend in.
    pub fn feature(self) -> &'static str {
        match self {
            BackendKind::Postgres => "postgres",
            BackendKind::MySql => "mysql",
            BackendKind::Sqlite => "sqlite",
            BackendKind::MsSql => "mssql",
        }
    }
}

impl Serialize for BackendKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of one database's connection pool (the Python system's field names, and more).
///
/// ```json
/// {"database_name":"rpa_db","pool_size":5,"checked_in":4,"checked_out":1,"overflow":0,"invalid":0, "...": "...",
///  "timestamp":"2024-01-15T10:30:00Z"}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The logical database name.
    pub database_name: String,
    /// Connections kept open (`POOL_SIZE`).
    pub pool_size: u32,
    /// Extra connections allowed under load (`MAX_OVERFLOW`).
    pub max_overflow: u32,
    /// `pool_size + max_overflow`.
    pub max_size: u32,
    /// Connections open now.
    pub connections: u32,
    /// Open connections idle in the pool.
    pub checked_in: u32,
    /// Open connections in use.
    pub checked_out: u32,
    /// Open connections beyond `pool_size`.
    pub overflow: u32,
    /// Connections discarded as broken since the pool started.
    pub invalid: u64,
    /// Callers waiting for a connection now.
    pub waiting: u32,
    /// Checkouts that gave up at the acquisition timeout since the pool started.
    pub timeouts: u64,
    /// Connections opened since the pool started.
    pub connections_created: u64,
    /// Connections reported as held past the leak threshold since the pool
    /// started (see [`DatabaseConfigBuilder::leak_threshold`](crate::DatabaseConfigBuilder::leak_threshold)).
    pub suspected_leaks: u64,
    /// Whether the database is configured read-only.
    pub read_only: bool,
    /// The circuit breaker's state (`closed`, `half_open`, `open`).
    pub circuit: CircuitState,
    /// When the snapshot was taken, RFC 3339 in UTC.
    pub timestamp: String,
    /// The host serving new connections (`host:port` as written in the
    /// connection string; the latest one opened), once one was opened.
    pub serving_host: Option<String>,
    /// That host's role: `primary` or `replica`, when the topology asked
    /// (a host list, or a `target_session_attrs` other than `any`).
    pub serving_role: Option<String>,
}

/// Now, as RFC 3339 UTC with a `Z`.
pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Who holds a checked-out connection: listed by a pool-timeout error
/// ([`Error::pool_holders`](crate::Error::pool_holders)) and in leak reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ConnectionHolder {
    /// How long the connection has been out of the pool.
    pub held_for_ms: u64,
    /// Where in the caller's code it was checked out (`file:line:column`).
    pub checked_out_at: String,
    /// The name of the thread that checked it out, if it has one.
    pub thread: Option<String>,
    /// The start of the last statement run on it, normalised as in the
    /// slow-query log: literals written into the SQL shown as `?`, comments
    /// dropped, whitespace collapsed; never parameter values.
    pub last_sql: Option<String>,
    /// Whether a transaction is open on it.
    pub in_transaction: bool,
}

/// How a database is doing, with the keys of the Python system's `health_check`, plus
/// the pool's saturation and the scaling signal.
///
/// ```json
/// {"database_name":"rpa_db","database_type":"postgresql","status":"healthy","connection":true,
///  "query_test":true,"migration_status":{"state":"ok","current_version":"3","pending_migrations":[],"problems":[]},
///  "error":null,"response_time_ms":1.9,"timestamp":"2024-01-15T10:30:00.000Z", "...": "..."}
/// ```
///
/// `status` is `unhealthy` when no connection could be had or `SELECT 1`
/// failed (within the health check's own timeout), the circuit breaker
/// is open, or migrations are blocked (a migration failed part-way, or an
/// applied script was changed or removed: [`MigrationState::Failed`],
/// named in `error` and `degraded_reasons`); `degraded` when the breaker is
/// half-open (probing), or when it answered but one of these holds: the
/// answer took longer than the degraded threshold, the pool is saturated
/// (every connection in use, or callers waiting), migrations are pending,
/// the migration state could not be read ([`MigrationState::Unknown`]), or
/// the timeout rate of the last minute is at [`ScalingLevel::HighLoad`] or
/// worse; else `healthy`. `degraded_reasons` says which.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthStatus {
    /// The logical database name.
    pub database_name: String,
    /// `postgresql`, `mysql`, `sqlite` or `sqlserver`.
    pub database_type: BackendKind,
    /// The verdict.
    pub status: Health,
    /// A connection could be had from the pool.
    pub connection: bool,
    /// `SELECT 1` answered.
    pub query_test: bool,
    /// The migration state.
    pub migration_status: MigrationSummary,
    /// What failed, when something did (never a password).
    pub error: Option<String>,
    /// How long the check took, in milliseconds.
    pub response_time_ms: f64,
    /// When the check ran, RFC 3339 in UTC.
    pub timestamp: String,
    /// Connections in use over the most the pool may open, 0 to 1.
    pub pool_saturation: f64,
    /// Whether the database is configured read-only.
    pub read_only: bool,
    /// The timeout rate of the last minute, as a level.
    pub scaling: ScalingLevel,
    /// Why the status is `degraded`, or `unhealthy` over blocked
    /// migrations (empty otherwise).
    pub degraded_reasons: Vec<String>,
    /// The circuit breaker's state after the check.
    pub circuit: CircuitState,
    /// The host serving new connections, as in [`PoolStatus::serving_host`].
    pub serving_host: Option<String>,
    /// That host's role (`primary`, `replica`), as in [`PoolStatus::serving_role`].
    pub serving_role: Option<String>,
}

/// The verdict of a health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Health {
    /// Answering promptly, nothing pending.
    Healthy,
    /// Answering, but slow, saturated, behind on migrations or timing out.
    Degraded,
    /// Not answering.
    Unhealthy,
}

/// The migration part of a health report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MigrationSummary {
    /// Where the migrations stand, in a word.
    pub state: MigrationState,
    /// The version applied last, if any.
    pub current_version: Option<String>,
    /// Versions found but not yet applied.
    pub pending_migrations: Vec<String>,
    /// What stops migrations from running (state `failed`: each
    /// [`MigrationProblem`]), or why the state could not be read (state
    /// `unknown`); empty otherwise.
    pub problems: Vec<String>,
}

impl MigrationSummary {
    /// A summary whose state could not be read, saying why (`None`: the
    /// database did not answer, which the health report says already).
    pub(crate) fn unknown(why: Option<String>) -> MigrationSummary {
        MigrationSummary {
            state: MigrationState::Unknown,
            problems: why.into_iter().collect(),
            ..MigrationSummary::default()
        }
    }
}

/// Where a database's migrations stand, as a health report says it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MigrationState {
    /// Every script is applied and nothing stands in the way.
    Ok,
    /// Scripts wait to be applied (the report is `degraded`).
    Pending,
    /// A migration failed part-way, or an applied script was changed or
    /// removed: migrations refuse to run until it is fixed (the report is
    /// `unhealthy`).
    Failed,
    /// The state could not be read: the database did not answer, its
    /// history could not be read, or it has a history but the migrations
    /// folder is missing.
    #[default]
    Unknown,
    /// This database has no migrations folder and no history table: its
    /// schema is not managed here.
    NotManaged,
}

/// A reading of the timeout rate (statement timeouts and pool
/// timeouts over all statements and checkouts in the last minute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ScalingLevel {
    /// Under 0.1 %: normal load, no action needed.
    Normal,
    /// 0.1 % to 1 %: mild contention; review slow queries.
    MildContention,
    /// 1 % to 5 %: high load; scale vertically (a bigger database or app server).
    HighLoad,
    /// Over 5 %: critical pressure; scale horizontally (more app servers and pools).
    Critical,
}

impl ScalingLevel {
    /// The level for a timeout rate between 0 and 1.
    pub fn from_rate(rate: f64) -> ScalingLevel {
        if rate > 0.05 {
            ScalingLevel::Critical
        } else if rate >= 0.01 {
            ScalingLevel::HighLoad
        } else if rate >= 0.001 {
            ScalingLevel::MildContention
        } else {
            ScalingLevel::Normal
        }
    }

    /// What to do about it, in a few words.
    pub fn advice(self) -> &'static str {
        match self {
            ScalingLevel::Normal => "normal load; no action needed",
            ScalingLevel::MildContention => "mild contention; review slow queries",
            ScalingLevel::HighLoad => {
                "high load; scale vertically (bigger database or app servers)"
            }
            ScalingLevel::Critical => "critical pressure; scale horizontally (add app servers)",
        }
    }
}

/// Time statistics of one statement (normalised: literals replaced by `?`,
/// whitespace collapsed), from [`DatabaseManager::statement_stats`](crate::DatabaseManager::statement_stats).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StatementStats {
    /// The normalised SQL.
    pub sql: String,
    /// Times it ran.
    pub calls: u64,
    /// Of which failed.
    pub errors: u64,
    /// Total time, milliseconds.
    pub total_ms: f64,
    /// Mean time, milliseconds.
    pub mean_ms: f64,
    /// Longest time, milliseconds.
    pub max_ms: f64,
}

/// A query plan from [`DatabaseManager::explain`](crate::DatabaseManager::explain).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct QueryPlan {
    /// The backend that made it.
    pub database_type: BackendKind,
    /// The plan as JSON where the backend gives JSON (PostgreSQL, MariaDB);
    /// for SQLite, an array of `{id, parent, detail}` rows.
    pub plan: serde_json::Value,
    /// The plan as the backend printed it.
    pub raw: String,
}

/// One row of the migration history table (Flyway's columns).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AppliedMigration {
    /// Order of installation, from 1.
    pub installed_rank: i64,
    /// The version (`1.1`), `None` for repeatable scripts.
    pub version: Option<String>,
    /// The description from the file name, underscores as spaces.
    pub description: String,
    /// A versioned or repeatable script, a baseline marker or an undo, as
    /// read from the history's `type` column.
    #[serde(rename = "type")]
    pub kind: MigrationKind,
    /// The file name.
    pub script: String,
    /// Flyway's CRC32 of the script, as applied.
    pub checksum: Option<i32>,
    /// The database user who applied it.
    pub installed_by: String,
    /// When, as the database reports it.
    pub installed_on: String,
    /// How long it ran, in milliseconds.
    pub execution_time_ms: i64,
    /// False when it failed (on a backend without transactional DDL); the
    /// next run stops until `repair`.
    pub success: bool,
}

/// A script not yet applied (or a repeatable one whose checksum changed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PendingMigration {
    /// The version, `None` for repeatable scripts.
    pub version: Option<String>,
    /// The description from the file name.
    pub description: String,
    /// The file name.
    pub script: String,
    /// Flyway's CRC32 of the file.
    pub checksum: i32,
    /// `versioned` or `repeatable`.
    pub kind: MigrationKind,
}

/// Something that stops migrations from running until it is fixed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MigrationProblem {
    /// An applied script was edited after it was applied.
    ChecksumMismatch {
        /// The version.
        version: String,
        /// The file name.
        script: String,
        /// The checksum recorded when it was applied.
        applied: i32,
        /// The file's checksum now.
        file: i32,
    },
    /// An applied version has no file any more.
    MissingFile {
        /// The version.
        version: String,
        /// The file name recorded when it was applied.
        script: String,
    },
    /// A migration failed part-way on a backend without transactional DDL.
    Failed {
        /// The version, `None` for a repeatable script.
        version: Option<String>,
        /// The file name.
        script: String,
    },
}

impl std::fmt::Display for MigrationProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrationProblem::ChecksumMismatch { version, script, applied, file } => write!(
                f,
                "`{script}` (version {version}) was changed after it was applied: checksum {applied} \
                 when applied, {file} now; restore the file, or run `repair` to accept the change"
            ),
            MigrationProblem::MissingFile { version, script } => write!(
                f,
                "version {version} (`{script}`) was applied but its file is missing; restore it"
            ),
            MigrationProblem::Failed { version, script } => write!(
                f,
                "`{script}`{} failed part-way and may have left changes behind; clean up by hand, \
                 then run `repair` (which removes the failed row) and migrate again",
                version.as_deref().map(|v| format!(" (version {v})")).unwrap_or_default()
            ),
        }
    }
}

/// Where a database's migrations stand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MigrationStatus {
    /// The logical database name.
    pub database_name: String,
    /// The history table.
    pub history_table: String,
    /// The highest successfully applied (or baselined) version.
    pub current_version: Option<String>,
    /// The history, oldest first.
    pub applied: Vec<AppliedMigration>,
    /// What a run would apply, in order.
    pub pending: Vec<PendingMigration>,
    /// What must be fixed before migrations run.
    pub problems: Vec<MigrationProblem>,
    /// When the report was made, RFC 3339 in UTC.
    pub timestamp: String,
}

/// One script run by a migration operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MigrationStep {
    /// `versioned`, `repeatable`, `undo` or `baseline`.
    pub kind: MigrationKind,
    /// The version, `None` for a repeatable script.
    pub version: Option<String>,
    /// The description from the file name.
    pub description: String,
    /// The file name.
    pub script: String,
    /// How long it ran, in milliseconds.
    pub execution_time_ms: i64,
}

/// What a migration operation did (refinery's `Report`); also attached to
/// the error of a failed run ([`Error::migration_report`](crate::Error::migration_report)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The logical database name.
    pub database_name: String,
    /// The scripts that completed, in order.
    pub applied: Vec<MigrationStep>,
    /// The version in force afterwards.
    pub current_version: Option<String>,
}

/// One step of a dry run's plan, with the SQL it would run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PlannedStep {
    /// `versioned`, `repeatable` or `undo`.
    pub kind: MigrationKind,
    /// The version, `None` for a repeatable script.
    pub version: Option<String>,
    /// The description from the file name.
    pub description: String,
    /// The file name.
    pub script: String,
    /// Whether it would run in a transaction together with its history row.
    pub in_transaction: bool,
    /// The script's SQL.
    pub sql: String,
}

/// What [`dry_run`](crate::migrate::Migrator::dry_run) found: the plan, and
/// what would stop it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MigrationPlan {
    /// The logical database name.
    pub database_name: String,
    /// Whether the history table exists yet (a run would create it).
    pub history_table_exists: bool,
    /// The scripts a run would apply, in order.
    pub steps: Vec<PlannedStep>,
    /// Problems that would stop the run.
    pub problems: Vec<MigrationProblem>,
}

/// What [`repair`](crate::migrate::Migrator::repair) changed in the history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RepairReport {
    /// Failed rows removed (file names).
    pub removed_failed: Vec<String>,
    /// Applied scripts whose recorded checksum was set to the file's (file names).
    pub realigned: Vec<String>,
}

/// The state of a database's circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls go through; connection failures are counted.
    Closed,
    /// The recovery time has passed: the next call probes the database with
    /// the health-check query; until it answers, other calls still fail fast.
    HalfOpen,
    /// The database is considered down: calls fail at once with
    /// [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen), without I/O.
    Open,
}

impl CircuitState {
    /// The value of the `db_circuit_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

/// What a script does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MigrationKind {
    /// `V{version}__…`: applied once, in version order.
    Versioned,
    /// `U{version}__…`: undoes the versioned migration of the same version.
    Undo,
    /// `R__…`: re-applied whenever its checksum changes, after the versioned ones.
    Repeatable,
    /// A baseline marker in the history (no script).
    Baseline,
}

impl fmt::Display for MigrationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MigrationKind::Versioned => "versioned",
            MigrationKind::Undo => "undo",
            MigrationKind::Repeatable => "repeatable",
            MigrationKind::Baseline => "baseline",
        })
    }
}
