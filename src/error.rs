//! The one error type of the crate.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::status::{ConnectionHolder, MigrationReport};

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// What went wrong, coarsely: the thing callers branch on.
///
/// Finer detail (the server's own code) is in [`Error::db_code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A setting is missing or malformed. The message names the variable.
    Config,
    /// The backend needed for this database was compiled out (a cargo feature is off).
    FeatureDisabled,
    /// The server could not be reached or the connection was lost.
    Connect,
    /// The server refused the credentials.
    Auth,
    /// No pooled connection became free within the acquisition timeout.
    PoolTimeout,
    /// Establishing a new connection took longer than the connect timeout.
    ConnectTimeout,
    /// A statement ran longer than its timeout and was cancelled.
    QueryTimeout,
    /// The statement is not valid SQL for the server (or uses an unknown object).
    Syntax,
    /// A unique or primary-key constraint was violated.
    UniqueViolation,
    /// Another integrity constraint (foreign key, not-null, check) was violated.
    Constraint,
    /// The user lacks a privilege the statement needs.
    Permission,
    /// A transient conflict: deadlock, serialization failure, lock wait timeout.
    /// Retrying the whole transaction may succeed.
    Conflict,
    /// An entity was saved with a `version` that is no longer its current
    /// one: someone saved (or deleted) it since it was read. Not transient:
    /// read the entity again, apply the change to it, and save that.
    VersionConflict,
    /// Parameters do not match the statement's placeholders.
    Parameter,
    /// A value could not be converted between Rust and the database.
    Conversion,
    /// `query_one` found no row.
    NoRows,
    /// `query_one` found more than one row.
    TooManyRows,
    /// A write or migration was attempted on a database configured read-only.
    ReadOnly,
    /// The call was made on a thread that drives an async runtime, where this
    /// backend's blocking client cannot run.
    AsyncContext,
    /// The database's circuit breaker is open: recent calls could not reach
    /// it, so this call failed at once, without waiting or any I/O. The
    /// message says when the next probe is due.
    CircuitOpen,
    /// The manager was closed with [`DatabaseManager::close`](crate::DatabaseManager::close).
    Closed,
    /// Any other error reported by the database server.
    Database,
    /// A migration problem: a badly named or duplicate script, an applied
    /// script that was edited, a failed migration awaiting `repair`, a
    /// missing undo script. The message names the file and what to do.
    Migration,
    /// The migration lock stayed busy past its timeout; the message names
    /// the holder where the backend can tell.
    LockTimeout,
    /// A failure inside the library or a driver that fits no other kind.
    Other,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::Config => "configuration error",
            ErrorKind::FeatureDisabled => "backend not compiled in",
            ErrorKind::Connect => "connection failed",
            ErrorKind::Auth => "authentication failed",
            ErrorKind::PoolTimeout => "timed out waiting for a pooled connection",
            ErrorKind::ConnectTimeout => "timed out connecting",
            ErrorKind::QueryTimeout => "query timed out",
            ErrorKind::Syntax => "invalid statement",
            ErrorKind::UniqueViolation => "unique constraint violated",
            ErrorKind::Constraint => "constraint violated",
            ErrorKind::Permission => "permission denied",
            ErrorKind::Conflict => "transaction conflict",
            ErrorKind::VersionConflict => "stale version",
            ErrorKind::Parameter => "parameter error",
            ErrorKind::Conversion => "value conversion error",
            ErrorKind::NoRows => "query returned no rows",
            ErrorKind::TooManyRows => "query returned more than one row",
            ErrorKind::ReadOnly => "database is read-only",
            ErrorKind::AsyncContext => "called from an async runtime",
            ErrorKind::CircuitOpen => "circuit breaker open",
            ErrorKind::Closed => "database manager closed",
            ErrorKind::Database => "database error",
            ErrorKind::Migration => "migration error",
            ErrorKind::LockTimeout => "migration lock busy",
            ErrorKind::Other => "error",
        }
    }
}

struct Inner {
    kind: ErrorKind,
    database: Option<Arc<str>>,
    message: String,
    db_code: Option<String>,
    source: Option<Source>,
    holders: Vec<ConnectionHolder>,
    report: Option<Box<MigrationReport>>,
    /// The failure happened before the statement was sent: running it again
    /// cannot run it twice.
    unsent: bool,
    /// Where a failed bulk load would go on from.
    bulk_position: Option<u64>,
}

/// An error from dbmanager.
///
/// `Display` prints one line: the database, what failed and what to do about
/// it. The underlying cause (a driver or I/O error) is returned by
/// [`source()`](std::error::Error::source) and is not repeated in the message,
/// so reporters that walk the chain (`anyhow`'s `{:#}`) print each layer once.
///
/// No error ever contains a password, and dbmanager never puts a parameter
/// value into one. The server's own message is kept as it is, and servers
/// sometimes quote the offending value in it (PostgreSQL's detail
/// `Key (email)=(…) already exists`, MariaDB's `Duplicate entry '…'`): log
/// errors accordingly where values are sensitive.
pub struct Error(Box<Inner>);

impl Error {
    #[cold]
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error(Box::new(Inner {
            kind,
            database: None,
            message: message.into(),
            db_code: None,
            source: None,
            holders: Vec::new(),
            report: None,
            unsent: false,
            bulk_position: None,
        }))
    }

    /// Marks a failure that happened before the statement reached the
    /// server (a checkout, a connect, a session setting before it).
    #[cold]
    pub(crate) fn unsent(mut self) -> Error {
        self.0.unsent = true;
        self
    }

    /// Whether the failure provably happened before the statement was sent.
    pub(crate) fn was_unsent(&self) -> bool {
        self.0.unsent
    }

    #[cold]
    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Config, message)
    }

    #[cold]
    pub(crate) fn parameter(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Parameter, message)
    }

    #[cold]
    pub(crate) fn conversion(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Conversion, message)
    }

    #[cold]
    pub(crate) fn pool_timeout(waited: Duration, holders: Vec<ConnectionHolder>) -> Error {
        let held = match holders.first() {
            None => String::new(),
            Some(h) => format!(
                "; {} connection{} held, the longest for {} (checked out at {}{}{})",
                holders.len(),
                if holders.len() == 1 { " is" } else { "s are" },
                fmt_duration(Duration::from_millis(h.held_for_ms)),
                h.checked_out_at,
                h.thread
                    .as_deref()
                    .map(|t| format!(" on thread `{t}`"))
                    .unwrap_or_default(),
                if h.in_transaction {
                    ", in a transaction"
                } else {
                    ""
                },
            ),
        };
        let mut e = Error::new(
            ErrorKind::PoolTimeout,
            format!(
                "no connection became free within the acquisition timeout of {}{held}; \
                 raise POOL_SIZE/MAX_OVERFLOW or the acquisition timeout, or return connections sooner \
                 (Error::pool_holders lists every holder)",
                fmt_duration(waited)
            ),
        );
        e.0.holders = holders;
        e
    }

    #[cold]
    pub(crate) fn query_timeout(limit: Duration, hint: &str) -> Error {
        Error::new(
            ErrorKind::QueryTimeout,
            format!(
                "the statement ran longer than its timeout of {} and was cancelled; {hint}",
                fmt_duration(limit)
            ),
        )
    }

    #[cold]
    pub(crate) fn circuit_open(probe_in: Duration, recovery_hint: &str) -> Error {
        let when = if probe_in.is_zero() {
            "a probe is checking it now".to_owned()
        } else {
            format!("it will be probed again in {}", fmt_duration(probe_in))
        };
        Error::new(
            ErrorKind::CircuitOpen,
            format!(
                "the database was unreachable on recent calls, so this call failed at once; \
                 {when}; check that the server is up and reachable ({recovery_hint})"
            ),
        )
    }

    #[cold]
    pub(crate) fn closed() -> Error {
        Error::new(
            ErrorKind::Closed,
            "the manager was closed; create a new one with DatabaseManager::new",
        )
    }

    /// Attaches the underlying cause.
    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Error {
        self.0.source = Some(Arc::from(source.into()));
        self
    }

    /// Appends what to do about it to the message.
    pub(crate) fn with_hint(mut self, hint: &str) -> Error {
        self.0.message.push_str("; ");
        self.0.message.push_str(hint);
        self
    }

    /// Replaces `from` with `to` in the message.
    pub(crate) fn replace_in_message(mut self, from: &str, to: &str) -> Error {
        self.0.message = self.0.message.replace(from, to);
        self
    }

    /// A copy sharing the same cause, for an error reported to several callers.
    pub(crate) fn duplicate(&self) -> Error {
        Error(Box::new(Inner {
            kind: self.0.kind,
            database: self.0.database.clone(),
            message: self.0.message.clone(),
            db_code: self.0.db_code.clone(),
            source: self.0.source.clone(),
            holders: self.0.holders.clone(),
            report: self.0.report.clone(),
            unsent: self.0.unsent,
            bulk_position: self.0.bulk_position,
        }))
    }

    /// Attaches what a migration run completed before it failed.
    pub(crate) fn with_report(mut self, report: MigrationReport) -> Error {
        self.0.report = Some(Box::new(report));
        self
    }

    /// Attaches where a failed bulk load would go on from.
    pub(crate) fn with_bulk_position(mut self, position: Option<u64>) -> Error {
        self.0.bulk_position = position;
        self
    }

    /// The message without the kind and database, for wrapping.
    pub(crate) fn message(&self) -> &str {
        &self.0.message
    }

    /// Attaches the server's own error code.
    pub(crate) fn with_code(mut self, code: impl Into<String>) -> Error {
        self.0.db_code = Some(code.into());
        self
    }

    /// Names the database the error happened on, unless already named.
    pub(crate) fn on_database(mut self, name: &Arc<str>) -> Error {
        if self.0.database.is_none() {
            self.0.database = Some(Arc::clone(name));
        }
        self
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The logical name of the database (`rpa_db`), when the error concerns one.
    pub fn database(&self) -> Option<&str> {
        self.0.database.as_deref()
    }

    /// The server's own error code: the SQLSTATE on PostgreSQL (`"23505"`),
    /// the error number on MySQL/MariaDB (`"1062"`) and SQL Server, the
    /// extended result code name on SQLite (`"SQLITE_CONSTRAINT_UNIQUE"`).
    pub fn db_code(&self) -> Option<&str> {
        self.0.db_code.as_deref()
    }

    /// For a [`PoolTimeout`](ErrorKind::PoolTimeout): every connection that
    /// was checked out when the wait gave up, longest held first, with where
    /// it was checked out, by which thread and its last SQL. Empty otherwise.
    pub fn pool_holders(&self) -> &[ConnectionHolder] {
        &self.0.holders
    }

    /// For an error of a migration run: what completed before it failed
    /// (the failed script was not applied, or is recorded as failed on
    /// backends without transactional DDL).
    pub fn migration_report(&self) -> Option<&MigrationReport> {
        self.0.report.as_deref()
    }

    /// For an error of a bulk load: the input row a new run should start
    /// at ([`Bulk::start_at`](crate::Bulk::start_at)) to go on where this
    /// one stopped. With a commit per chunk, the row after the last
    /// committed chunk; all or nothing, the row this run started at.
    pub fn bulk_position(&self) -> Option<u64> {
        self.0.bulk_position
    }

    /// True for every timeout: query, pool acquisition and connect.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.0.kind,
            ErrorKind::QueryTimeout | ErrorKind::PoolTimeout | ErrorKind::ConnectTimeout
        )
    }

    /// True when no pooled connection became free in time.
    pub fn is_pool_exhausted(&self) -> bool {
        self.0.kind == ErrorKind::PoolTimeout
    }

    /// True when a unique or primary-key constraint was violated.
    pub fn is_unique_violation(&self) -> bool {
        self.0.kind == ErrorKind::UniqueViolation
    }

    /// True when trying the same operation again (a read, or a whole
    /// transaction from its start) may succeed: the error is transient. A
    /// job runner deciding whether to run a failed step again should ask
    /// this.
    ///
    /// Transient, by each server's own codes: the connection was refused,
    /// reset or closed, the server is shutting down or starting
    /// ([`Connect`](ErrorKind::Connect): PostgreSQL class 08, 57P01–57P03,
    /// 53300; MySQL 1040, 1053, 2006, 2013; SQL Server 40613, 40197, …),
    /// connect and pool timeouts, conflicts
    /// ([`Conflict`](ErrorKind::Conflict): PostgreSQL 40001 serialization
    /// failure and 40P01 deadlock, MySQL 1213 deadlock and 1205 lock wait
    /// timeout, SQL Server 1205 deadlock victim, SQLite busy), and
    /// [`CircuitOpen`](ErrorKind::CircuitOpen): the database was found
    /// unreachable, and the breaker closes as soon as a probe gets an answer.
    ///
    /// Permanent: syntax, constraint, permission and authentication errors;
    /// also a query timeout (the statement would most likely time out
    /// again).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.0.kind,
            ErrorKind::Connect
                | ErrorKind::PoolTimeout
                | ErrorKind::ConnectTimeout
                | ErrorKind::Conflict
                | ErrorKind::CircuitOpen
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(db) = &self.0.database {
            write!(f, "database `{db}`: ")?;
        }
        f.write_str(self.0.kind.describe())?;
        if !self.0.message.is_empty() {
            write!(f, ": {}", self.0.message)?;
        }
        if let Some(code) = &self.0.db_code {
            write!(f, " (code {code})")?;
        }
        Ok(())
    }
}

/// `{:?}` reads like `Display` followed by the chain of causes, as
/// `anyhow` prints it, so that `fn main() -> dbmanager::Result<()>` reports
/// a failure readably:
///
/// ```text
/// database `rpa_db`: connection failed: could not reach 127.0.0.1:5432
///
/// Caused by:
///     0: Connection refused (os error 111)
/// ```
///
/// `{:#?}` prints the structured form (kind, database, message, server
/// code, cause, pool holders, migration report).
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            write!(f, "{self}")?;
            let mut cause = self.source();
            if cause.is_some() {
                f.write_str("\n\nCaused by:")?;
            }
            let mut n = 0;
            while let Some(c) = cause {
                write!(f, "\n    {n}: {c}")?;
                n += 1;
                cause = c.source();
            }
            return Ok(());
        }
        f.debug_struct("Error")
            .field("kind", &self.0.kind)
            .field("database", &self.0.database)
            .field("message", &self.0.message)
            .field("db_code", &self.0.db_code)
            .field("source", &self.0.source)
            .field("holders", &self.0.holders)
            .field("migration_report", &self.0.report)
            .finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Formats a duration for people: `250 ms`, `30 s`, `1.5 s`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_prints_one_layer_and_source_is_separate() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::new(ErrorKind::Connect, "could not reach 127.0.0.1:1")
            .with_source(io)
            .on_database(&Arc::from("rpa_db"));
        let text = err.to_string();
        assert_eq!(
            text,
            "database `rpa_db`: connection failed: could not reach 127.0.0.1:1"
        );
        assert!(!text.contains("refused"));
        assert_eq!(
            err.source().map(|s| s.to_string()).as_deref(),
            Some("refused")
        );
        assert!(err.is_retryable());
    }

    #[test]
    fn debug_reads_like_display_with_its_causes() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = Error::new(ErrorKind::Other, "the driver gave up").with_source(inner);
        let err = Error::new(ErrorKind::Connect, "could not reach 127.0.0.1:1")
            .with_source(outer)
            .on_database(&Arc::from("rpa_db"));
        assert_eq!(
            format!("{err:?}"),
            "database `rpa_db`: connection failed: could not reach 127.0.0.1:1\n\n\
             Caused by:\n    0: error: the driver gave up\n    1: refused"
        );
        let plain = Error::config("no connection string for `x`");
        assert_eq!(format!("{plain:?}"), plain.to_string());
        // The structured form stays under `{:#?}`.
        let structured = format!("{err:#?}");
        assert!(
            structured.starts_with("Error {") && structured.contains("kind: Connect"),
            "{structured}"
        );
        // `fn main() -> Result<()>` prints `Error: {:?}`.
        assert!(!format!("{plain:?}").contains("kind:"));
    }

    #[test]
    fn predicates_follow_kind() {
        assert!(Error::pool_timeout(Duration::from_millis(250), Vec::new()).is_pool_exhausted());
        assert!(Error::pool_timeout(Duration::from_millis(250), Vec::new()).is_timeout());
        assert!(!Error::new(ErrorKind::Syntax, "").is_retryable());
        assert!(Error::new(ErrorKind::UniqueViolation, "").is_unique_violation());
        assert!(!Error::new(ErrorKind::QueryTimeout, "").is_retryable());
    }

    #[test]
    fn transient_and_permanent_kinds() {
        for k in [
            ErrorKind::Connect,
            ErrorKind::ConnectTimeout,
            ErrorKind::PoolTimeout,
            ErrorKind::Conflict,
            ErrorKind::CircuitOpen,
        ] {
            assert!(Error::new(k, "").is_retryable(), "{k:?}");
        }
        for k in [
            ErrorKind::Syntax,
            ErrorKind::UniqueViolation,
            ErrorKind::Constraint,
            ErrorKind::Permission,
            ErrorKind::Auth,
            ErrorKind::QueryTimeout,
            ErrorKind::Parameter,
            ErrorKind::ReadOnly,
            ErrorKind::Config,
            ErrorKind::VersionConflict,
        ] {
            assert!(!Error::new(k, "").is_retryable(), "{k:?}");
        }
        let e = Error::circuit_open(Duration::from_secs(12), "x");
        assert_eq!(e.kind(), ErrorKind::CircuitOpen);
        assert!(e.to_string().contains("probed again in 12 s"), "{e}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(fmt_duration(Duration::from_secs(30)), "30 s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5 s");
    }
}
