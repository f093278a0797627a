//! The history table and the migration lock, with what differs per backend
//! behind one trait ([`HistoryDialect`]): refinery's drivers/ idea, where a
//! backend overrides only what it does differently.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::MAX_DURATION;
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::Shared;
use crate::session::{PooledConnection, Transaction};
use crate::sql::{quote_identifier, Dialect};
use crate::status::{AppliedMigration, BackendKind, MigrationKind};
use crate::value::{Row, Value};

/// Runs statements on a pooled connection or in a transaction: both go
/// through the pipeline's choke point.
pub(crate) trait Exec {
    fn rows(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>>;
    fn exec(&mut self, sql: &str, params: Vec<Value>) -> Result<u64>;
}

impl Exec for PooledConnection {
    fn rows(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        self.execute_query(sql, params)
    }
    fn exec(&mut self, sql: &str, params: Vec<Value>) -> Result<u64> {
        self.execute(sql, params)
    }
}

impl Exec for Transaction<'_> {
    fn rows(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        self.execute_query(sql, params)
    }
    fn exec(&mut self, sql: &str, params: Vec<Value>) -> Result<u64> {
        self.execute(sql, params)
    }
}

/// The names a lock goes by on each backend, derived from the database and
/// the history table so that two histories in one database do not block
/// each other.
#[derive(Clone, Debug)]
pub(crate) struct LockName {
    /// PostgreSQL advisory lock key: `dbm` in the high 32 bits, a CRC32 of
    /// the history table in the low ones.
    pub(crate) key: i64,
    /// MySQL `GET_LOCK` / SQL Server `sp_getapplock` resource (≤ 64 chars).
    pub(crate) name: String,
    /// SQLite lock table, quoted.
    pub(crate) table: String,
}

impl LockName {
    pub(crate) fn new(history_table: &str, dialect: &dyn HistoryDialect) -> LockName {
        let crc = crc32fast::hash(history_table.as_bytes());
        let key = (0x0064_626d_i64 << 32) | i64::from(crc);
        let mut name = format!("dbmanager.migrate.{history_table}");
        if name.len() > 64 {
            name = format!("dbmanager.migrate.{crc:08x}");
        }
        LockName {
            key,
            name,
            table: dialect.quote(&format!("{history_table}_lock")),
        }
    }
}

/// SQL that differs by backend. The defaults are PostgreSQL's and SQLite's
/// (standard SQL); each backend overrides what it does differently.
pub(crate) trait HistoryDialect: Send + Sync {
    /// The translation dialect (identifier quoting).
    fn dialect(&self) -> Dialect;

    /// Quotes a (possibly `schema.table`) identifier.
    fn quote(&self, ident: &str) -> String {
        quote_identifier(ident, self.dialect())
    }

    /// Whether DDL takes part in transactions, so that a migration and its
    /// history row commit together.
    fn transactional_ddl(&self) -> bool {
        true
    }

    /// An index on `version_rank` of a history table of ours, so that the
    /// next rank is read from the index rather than by reading every row:
    /// without it, writing n rows reads n²/2. `None` where the table is
    /// named with its schema (the index is then left out) or the server
    /// has no `CREATE INDEX IF NOT EXISTS`.
    fn rank_index(&self, table: &str) -> Option<String> {
        if table.contains('.') {
            return None;
        }
        Some(format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} (version_rank)",
            self.quote(&format!("{table}_vr_idx")),
            self.quote(table)
        ))
    }

    /// Whether an `INSERT … VALUES` may read its own table in a subquery,
    /// so that a history row's ranks are worked out in the statement that
    /// writes it (MySQL refuses it, SQL Server allows no subquery there).
    fn ranks_in_values(&self) -> bool {
        true
    }

    /// `CREATE TABLE` of the history table (Flyway's columns), idempotent.
    fn create_history(&self, table: &str) -> String {
        let t = self.quote(table);
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n\
             \x20   installed_rank INTEGER NOT NULL PRIMARY KEY,\n\
             \x20   version_rank INTEGER,\n\
             \x20   version VARCHAR(50),\n\
             \x20   description VARCHAR(200) NOT NULL,\n\
             \x20   type VARCHAR(20) NOT NULL,\n\
             \x20   script VARCHAR(1000) NOT NULL,\n\
             \x20   checksum INTEGER,\n\
             \x20   installed_by VARCHAR(100) NOT NULL,\n\
             \x20   installed_on {} NOT NULL DEFAULT {},\n\
             \x20   execution_time INTEGER NOT NULL,\n\
             \x20   success {} NOT NULL\n)",
            self.timestamp_type(),
            self.now(),
            self.bool_type()
        )
    }

    /// The column type of `installed_on`.
    fn timestamp_type(&self) -> &'static str {
        "TIMESTAMP"
    }

    /// The current time, as a column default.
    fn now(&self) -> &'static str {
        "CURRENT_TIMESTAMP"
    }

    /// The column type of `success`.
    fn bool_type(&self) -> &'static str {
        "BOOLEAN"
    }

    /// A query with one `?` (the table name, unquoted, without schema) and an
    /// optional schema, returning a row when the table exists.
    fn table_exists(&self, conn: &mut dyn Exec, table: &str) -> Result<bool>;

    /// The database user who installs migrations.
    fn current_user(&self, conn: &mut dyn Exec) -> Result<String>;

    /// The current schema (database on MySQL), as SQL.
    fn current_schema(&self) -> &'static str {
        "current_schema()"
    }

    /// The columns of `table` (lower-case, in order) with whether each is
    /// nullable; empty when there is no such table.
    fn columns(&self, conn: &mut dyn Exec, table: &str) -> Result<Vec<(String, bool)>> {
        let (schema, name) = split(table);
        let rows = conn.rows(
            &format!(
                "SELECT column_name AS c, is_nullable AS n FROM information_schema.columns \
                 WHERE table_schema = COALESCE(?, {}) AND table_name = ? ORDER BY ordinal_position",
                self.current_schema()
            ),
            vec![Value::from(schema.map(str::to_owned)), Value::from(name)],
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let c = r.get::<String>("c").ok()?;
                let n = r.get::<String>("n").unwrap_or_default();
                Some((c.to_ascii_lowercase(), n.eq_ignore_ascii_case("YES")))
            })
            .collect())
    }

    /// Work done once on the lock's connection before trying for it.
    fn prepare_lock(&self, _conn: &mut PooledConnection, _lock: &LockName) -> Result<()> {
        Ok(())
    }

    /// Tries to take the lock, waiting up to `wait` where the backend can
    /// wait by itself. `Ok(false)` when someone else holds it.
    fn try_lock(
        &self,
        conn: &mut PooledConnection,
        lock: &LockName,
        wait: Duration,
    ) -> Result<bool>;

    /// Releases the lock.
    fn unlock(&self, conn: &mut PooledConnection, lock: &LockName) -> Result<()>;

    /// Who holds the lock, where the backend can tell.
    fn holder(&self, conn: &mut PooledConnection, lock: &LockName) -> Result<Option<String>>;
}

fn split(table: &str) -> (Option<&str>, &str) {
    match table.split_once('.') {
        Some((s, t)) => (Some(s), t),
        None => (None, table),
    }
}

fn first_text(rows: &[Row], col: &str) -> Option<String> {
    rows.first()
        .and_then(|r| r.get::<Option<String>>(col).ok().flatten())
}

/// PostgreSQL: session advisory locks, transactional DDL.
pub(crate) struct Postgres;

impl HistoryDialect for Postgres {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn table_exists(&self, conn: &mut dyn Exec, table: &str) -> Result<bool> {
        let rows = conn.rows(
            "SELECT to_regclass(?) IS NOT NULL AS present",
            vec![Value::from(self.quote(table))],
        )?;
        Ok(rows
            .first()
            .is_some_and(|r| r.get::<bool>("present").unwrap_or(false)))
    }

    fn current_user(&self, conn: &mut dyn Exec) -> Result<String> {
        let rows = conn.rows("SELECT CAST(current_user AS TEXT) AS u", Vec::new())?;
        Ok(first_text(&rows, "u").unwrap_or_default())
    }

    fn prepare_lock(&self, conn: &mut PooledConnection, _lock: &LockName) -> Result<()> {
        // A migrator killed in the middle of a long statement: the server
        // notices the closed socket within a second and ends the session,
        // which frees the advisory lock (PostgreSQL 14+; ignored before).
        let _ = conn.execute_batch("SET client_connection_check_interval = '1s'");
        let app = format!("dbmanager migrate (pid {})", std::process::id());
        conn.execute("SELECT set_config('application_name', ?, false)", (app,))
            .map(drop)
    }

    fn try_lock(&self, conn: &mut PooledConnection, lock: &LockName, _: Duration) -> Result<bool> {
        conn.query_one("SELECT pg_try_advisory_lock(?) AS ok", (lock.key,))?
            .get::<bool>("ok")
    }

    fn unlock(&self, conn: &mut PooledConnection, lock: &LockName) -> Result<()> {
        let released = conn
            .query_one("SELECT pg_advisory_unlock(?) AS ok", (lock.key,))?
            .get::<bool>("ok")?;
        let _ =
            conn.execute_batch("RESET application_name; RESET client_connection_check_interval");
        if released {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Other,
                "the migration lock was not held at release",
            ))
        }
    }

    fn holder(&self, conn: &mut PooledConnection, lock: &LockName) -> Result<Option<String>> {
        let rows = conn.execute_query(
            "SELECT a.pid AS pid, a.application_name AS app, CAST(a.usename AS TEXT) AS who, \
                    CAST(a.client_addr AS TEXT) AS addr, a.state AS state \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND CAST(l.classid AS BIGINT) = ? AND CAST(l.objid AS BIGINT) = ? AND l.objsubid = 1",
            (lock.key >> 32, lock.key & 0xffff_ffff),
        )?;
        Ok(rows.first().map(|r| {
            format!(
                "PostgreSQL backend pid {} (application_name `{}`, user `{}`, client {}, {})",
                r.get::<i64>("pid").unwrap_or_default(),
                r.get::<Option<String>>("app")
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
                r.get::<Option<String>>("who")
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
                r.get::<Option<String>>("addr")
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "local".into()),
                r.get::<Option<String>>("state")
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
            )
        }))
    }
}

/// MySQL and MariaDB: `GET_LOCK`; DDL commits implicitly.
pub(crate) struct MySql;

impl HistoryDialect for MySql {
    fn dialect(&self) -> Dialect {
        Dialect::MySql
    }

    fn ranks_in_values(&self) -> bool {
        false
    }

    fn rank_index(&self, _table: &str) -> Option<String> {
        None
    }

    fn transactional_ddl(&self) -> bool {
        false
    }

    fn timestamp_type(&self) -> &'static str {
        "TIMESTAMP(3)"
    }

    fn current_schema(&self) -> &'static str {
        "DATABASE()"
    }

    fn now(&self) -> &'static str {
        "CURRENT_TIMESTAMP(3)"
    }

    fn table_exists(&self, conn: &mut dyn Exec, table: &str) -> Result<bool> {
        let (schema, name) = split(table);
        let rows = conn.rows(
            "SELECT COUNT(*) AS n FROM information_schema.tables \
             WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ?",
            vec![Value::from(schema.map(str::to_owned)), Value::from(name)],
        )?;
        Ok(rows
            .first()
            .is_some_and(|r| r.get::<i64>("n").unwrap_or(0) > 0))
    }

    fn current_user(&self, conn: &mut dyn Exec) -> Result<String> {
        let rows = conn.rows("SELECT CURRENT_USER() AS u", Vec::new())?;
        Ok(first_text(&rows, "u").unwrap_or_default())
    }

    fn try_lock(
        &self,
        conn: &mut PooledConnection,
        lock: &LockName,
        wait: Duration,
    ) -> Result<bool> {
        let secs = i64::from(wait >= Duration::from_secs(1));
        let row = conn.query_one("SELECT GET_LOCK(?, ?) AS ok", (lock.name.as_str(), secs))?;
        Ok(row.get::<Option<i64>>("ok")? == Some(1))
    }

    fn unlock(&self, conn: &mut PooledConnection, lock: &LockName) -> Result<()> {
        let row = conn.query_one("SELECT RELEASE_LOCK(?) AS ok", (lock.name.as_str(),))?;
        if row.get::<Option<i64>>("ok")? == Some(1) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Other,
                "the migration lock was not held at release",
            ))
        }
    }

    fn holder(&self, conn: &mut PooledConnection, lock: &LockName) -> Result<Option<String>> {
        let row = conn.query_one("SELECT IS_USED_LOCK(?) AS id", (lock.name.as_str(),))?;
        let Some(id) = row.get::<Option<i64>>("id")? else {
            return Ok(None);
        };
        let who = conn
            .query_opt(
                "SELECT user AS who, host AS host FROM information_schema.processlist WHERE id = ?",
                (id,),
            )
            .ok()
            .flatten()
            .map(|r| {
                format!(
                    ", user `{}` from {}",
                    r.get::<String>("who").unwrap_or_default(),
                    r.get::<String>("host").unwrap_or_default()
                )
            })
            .unwrap_or_default();
        Ok(Some(format!("MySQL connection id {id}{who}")))
    }
}

/// SQLite: a lock row in `{history}_lock`, naming its process; a row left
/// by a process that died on this host is taken over.
pub(crate) struct Sqlite;

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Whether process `pid` on this host is alive (unknown: alive).
fn process_alive(pid: i64) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return true;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

impl HistoryDialect for Sqlite {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn table_exists(&self, conn: &mut dyn Exec, table: &str) -> Result<bool> {
        let (_, name) = split(table);
        let rows = conn.rows(
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = ?",
            vec![Value::from(name)],
        )?;
        Ok(rows
            .first()
            .is_some_and(|r| r.get::<i64>("n").unwrap_or(0) > 0))
    }

    fn columns(&self, conn: &mut dyn Exec, table: &str) -> Result<Vec<(String, bool)>> {
        let (_, name) = split(table);
        let rows = conn.rows(
            "SELECT name AS c, \"notnull\" AS nn FROM pragma_table_info(?) ORDER BY cid",
            vec![Value::from(name)],
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let c = r.get::<String>("c").ok()?;
                Some((c.to_ascii_lowercase(), r.get::<i64>("nn").unwrap_or(0) == 0))
            })
            .collect())
    }

    fn current_user(&self, _conn: &mut dyn Exec) -> Result<String> {
        Ok(std::env::var("USER")
            .or_else(|_| std::env::var("USERNAME"))
            .unwrap_or_else(|_| "sqlite".to_owned()))
    }

    fn prepare_lock(&self, conn: &mut PooledConnection, lock: &LockName) -> Result<()> {
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY CHECK (id = 1), \
             pid INTEGER NOT NULL, host TEXT NOT NULL, owner TEXT NOT NULL, acquired_on TEXT NOT NULL)",
            lock.table
        ))
    }

    fn try_lock(&self, conn: &mut PooledConnection, lock: &LockName, _: Duration) -> Result<bool> {
        let host = host_name();
        let pid = i64::from(std::process::id());
        let owner = format!(
            "pid {pid} on {host}, thread `{}`",
            std::thread::current().name().unwrap_or("unnamed")
        );
        let insert = format!(
            "INSERT INTO {} (id, pid, host, owner, acquired_on) VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            lock.table
        );
        let now = crate::status::now_rfc3339();
        if conn.execute(&insert, (pid, host.as_str(), owner.as_str(), now.as_str()))? == 1 {
            return Ok(true);
        }
        // Held: by a process of this host that has died? Then take it over.
        let row = conn.query_opt(
            &format!("SELECT pid, host FROM {} WHERE id = 1", lock.table),
            (),
        )?;
        if let Some(row) = row {
            let (their_pid, their_host) = (row.get::<i64>("pid")?, row.get::<String>("host")?);
            if their_host == host && their_pid != pid && !process_alive(their_pid) {
                tracing::warn!(
                    pid = their_pid,
                    "taking over a migration lock left by a process that died"
                );
                conn.execute(
                    &format!(
                        "DELETE FROM {} WHERE id = 1 AND pid = ? AND host = ?",
                        lock.table
                    ),
                    (their_pid, their_host.as_str()),
                )?;
                return Ok(conn
                    .execute(&insert, (pid, host.as_str(), owner.as_str(), now.as_str()))?
                    == 1);
            }
        }
        Ok(false)
    }

    fn unlock(&self, conn: &mut PooledConnection, lock: &LockName) -> Result<()> {
        let n = conn.execute(
            &format!(
                "DELETE FROM {} WHERE id = 1 AND pid = ? AND host = ?",
                lock.table
            ),
            (i64::from(std::process::id()), host_name()),
        )?;
        if n == 1 {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Other,
                "the migration lock row was gone at release",
            ))
        }
    }

    fn holder(&self, conn: &mut PooledConnection, lock: &LockName) -> Result<Option<String>> {
        let row = conn.query_opt(
            &format!("SELECT owner, acquired_on FROM {} WHERE id = 1", lock.table),
            (),
        )?;
        Ok(row.map(|r| {
            format!(
                "{} (since {}; if that process is gone, delete the row of {})",
                r.get::<String>("owner").unwrap_or_default(),
                r.get::<String>("acquired_on").unwrap_or_default(),
                lock.table
            )
        }))
    }
}

/// PostgreSQL behind pgbouncer (transaction pooling). pgbouncer hands each
/// transaction (each statement outside one) to whichever server connection
/// is free, and shares those among its clients: a session advisory lock
/// would stay with one server session, taken again by any client that
/// lands there (it is re-entrant) and released only if the unlock lands
/// there too; session settings would reach other clients. A transaction
/// lock (`pg_advisory_xact_lock`) lasts one transaction, not a run of
/// scripts each committed on its own (some outside any transaction). So
/// the lock is a row of `{history}_lock`, as on SQLite: taken by an
/// `INSERT` that only one migrator's can make, released by its `DELETE`,
/// each committed at once, whatever server connection runs it. A row left
/// by a process that died on this host is taken over; one left from
/// another host is named in the `LockTimeout` error, with how to remove it.
pub(crate) struct PgBouncer;

impl HistoryDialect for PgBouncer {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn table_exists(&self, conn: &mut dyn Exec, table: &str) -> Result<bool> {
        Postgres.table_exists(conn, table)
    }

    fn current_user(&self, conn: &mut dyn Exec) -> Result<String> {
        Postgres.current_user(conn)
    }

    fn prepare_lock(&self, conn: &mut PooledConnection, lock: &LockName) -> Result<()> {
        match Sqlite.prepare_lock(conn, lock) {
            // Two migrators creating the table at once: one of them loses
            // the race on the catalog's unique index; the table is there.
            Err(e) if e.kind() == ErrorKind::UniqueViolation => Ok(()),
            other => other,
        }
    }

    fn try_lock(
        &self,
        conn: &mut PooledConnection,
        lock: &LockName,
        wait: Duration,
    ) -> Result<bool> {
        Sqlite.try_lock(conn, lock, wait)
    }

    fn unlock(&self, conn: &mut PooledConnection, lock: &LockName) -> Result<()> {
        Sqlite.unlock(conn, lock)
    }

    fn holder(&self, conn: &mut PooledConnection, lock: &LockName) -> Result<Option<String>> {
        Sqlite.holder(conn, lock)
    }
}

/// SQL Server: `sp_getapplock`. The backend does not exist yet; the SQL text
/// is here (and unit-tested) so that it lands with the backend.
pub(crate) struct MsSql;

impl MsSql {
    /// Takes the session lock; the result code is ≥ 0 on success.
    pub(crate) const LOCK_SQL: &'static str = "DECLARE @r INT; \
         EXEC @r = sp_getapplock @Resource = ?, @LockMode = 'Exclusive', @LockOwner = 'Session', @LockTimeout = ?; \
         SELECT @r AS ok";
    pub(crate) const UNLOCK_SQL: &'static str = "DECLARE @r INT; \
         EXEC @r = sp_releaseapplock @Resource = ?, @LockOwner = 'Session'; SELECT @r AS ok";
}

impl HistoryDialect for MsSql {
    fn dialect(&self) -> Dialect {
        Dialect::MsSql
    }

    fn ranks_in_values(&self) -> bool {
        false
    }

    fn rank_index(&self, _table: &str) -> Option<String> {
        None
    }

    fn create_history(&self, table: &str) -> String {
        let t = self.quote(table);
        let generic = Postgres
            .create_history(table)
            .replace(&Postgres.quote(table), &t);
        let body = generic
            .replace("CREATE TABLE IF NOT EXISTS", "CREATE TABLE")
            .replace("CURRENT_TIMESTAMP", self.now())
            .replace(" TIMESTAMP ", &format!(" {} ", self.timestamp_type()))
            .replace("BOOLEAN", self.bool_type());
        format!(
            "IF OBJECT_ID(N'{}', N'U') IS NULL\n{body}",
            t.replace('\'', "''")
        )
    }

    fn timestamp_type(&self) -> &'static str {
        "DATETIME2"
    }

    fn now(&self) -> &'static str {
        "SYSUTCDATETIME()"
    }

    fn bool_type(&self) -> &'static str {
        "BIT"
    }

    fn table_exists(&self, conn: &mut dyn Exec, table: &str) -> Result<bool> {
        let rows = conn.rows(
            "SELECT CASE WHEN OBJECT_ID(?, N'U') IS NULL THEN 0 ELSE 1 END AS present",
            vec![Value::from(self.quote(table))],
        )?;
        Ok(rows
            .first()
            .is_some_and(|r| r.get::<i64>("present").unwrap_or(0) == 1))
    }

    fn current_schema(&self) -> &'static str {
        "SCHEMA_NAME()"
    }

    fn current_user(&self, conn: &mut dyn Exec) -> Result<String> {
        let rows = conn.rows("SELECT SUSER_SNAME() AS u", Vec::new())?;
        Ok(first_text(&rows, "u").unwrap_or_default())
    }

    fn try_lock(
        &self,
        conn: &mut PooledConnection,
        lock: &LockName,
        wait: Duration,
    ) -> Result<bool> {
        let ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        let row = conn.query_one(MsSql::LOCK_SQL, (lock.name.as_str(), ms))?;
        Ok(row.get::<i64>("ok")? >= 0)
    }

    fn unlock(&self, conn: &mut PooledConnection, lock: &LockName) -> Result<()> {
        conn.query_one(MsSql::UNLOCK_SQL, (lock.name.as_str(),))
            .map(drop)
    }

    fn holder(&self, _conn: &mut PooledConnection, _lock: &LockName) -> Result<Option<String>> {
        Ok(None)
    }
}

/// The dialect of a backend (PostgreSQL behind pgbouncer has its own lock):
/// the one place that matches on the kind.
pub(crate) fn dialect_for(kind: BackendKind, pgbouncer: bool) -> &'static dyn HistoryDialect {
    match kind {
        BackendKind::Postgres if pgbouncer => &PgBouncer,
        BackendKind::Postgres => &Postgres,
        BackendKind::MySql => &MySql,
        BackendKind::Sqlite => &Sqlite,
        BackendKind::MsSql => &MsSql,
    }
}

/// The migration lock, held on a dedicated pooled connection and released in
/// `Drop` on every path (an early `?`, a panic). A connection whose release
/// failed is discarded, so a lock can never outlive it in the pool.
pub(crate) struct LockGuard {
    conn: PooledConnection,
    dialect: &'static dyn HistoryDialect,
    name: LockName,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name.name)
            .finish()
    }
}

impl LockGuard {
    /// Takes the lock, waiting up to `timeout`.
    pub(crate) fn acquire(
        shared: &Arc<Shared>,
        dialect: &'static dyn HistoryDialect,
        table: &str,
        timeout: Duration,
    ) -> Result<LockGuard> {
        let name = LockName::new(table, dialect);
        let mut conn = PooledConnection::new(Arc::clone(shared), shared.checkout()?);
        conn.set_timeout(Some(Duration::from_secs(10)));
        dialect.prepare_lock(&mut conn, &name)?;
        let timeout = timeout.min(MAX_DURATION);
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(10);
        let mut told = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if dialect.try_lock(&mut conn, &name, left.min(Duration::from_secs(1)))? {
                return Ok(LockGuard {
                    conn,
                    dialect,
                    name,
                });
            }
            if Instant::now() >= deadline {
                let holder = dialect.holder(&mut conn, &name).ok().flatten();
                return Err(Error::new(
                    ErrorKind::LockTimeout,
                    format!(
                        "another migrator holds the migration lock of `{table}` and did not release it within {}{}; \
                         wait for it to finish, or raise MigrateOptions::lock_timeout",
                        crate::error::fmt_duration(timeout),
                        holder.map(|h| format!(" (held by {h})")).unwrap_or_default()
                    ),
                )
                .on_database(shared.name()));
            }
            if !told {
                // Once, so that a person at a terminal knows why nothing
                // happens (the CLI shows warnings on stderr).
                told = true;
                let holder = dialect.holder(&mut conn, &name).ok().flatten();
                tracing::warn!(
                    database = %shared.name(),
                    "waiting up to {} for the migration lock of `{table}`{}",
                    crate::error::fmt_duration(left),
                    holder.map(|h| format!(", held by {h}")).unwrap_or_default()
                );
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// The connection the migrations run on.
    pub(crate) fn conn(&mut self) -> &mut PooledConnection {
        &mut self.conn
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::warn!("releasing the migration lock after a panic");
        }
        self.conn.set_timeout(Some(Duration::from_secs(10)));
        if let Err(e) = self.dialect.unlock(&mut self.conn, &self.name) {
            tracing::warn!(error = %e, "releasing the migration lock failed; its connection is discarded");
            self.conn.discard();
        }
    }
}

/// Reads the history, oldest first.
pub(crate) fn read(
    conn: &mut dyn Exec,
    dialect: &dyn HistoryDialect,
    table: &str,
) -> Result<Vec<AppliedMigration>> {
    let rows = conn.rows(
        &format!(
            "SELECT installed_rank, version, description, type, script, checksum, installed_by, \
             installed_on, execution_time, success FROM {} ORDER BY installed_rank",
            dialect.quote(table)
        ),
        Vec::new(),
    )?;
    rows.iter()
        .map(|r| {
            Ok(AppliedMigration {
                installed_rank: r.get("installed_rank")?,
                version: r.get("version")?,
                description: r.get("description")?,
                kind: kind_of(
                    &r.get::<String>("type")?,
                    r.get::<Option<String>>("version")?.is_some(),
                ),
                script: r.get("script")?,
                checksum: r.get::<Option<i64>>("checksum")?.map(|c| c as i32),
                installed_by: r.get("installed_by")?,
                installed_on: r.get::<Option<String>>("installed_on")?.unwrap_or_default(),
                execution_time_ms: r.get("execution_time")?,
                success: r.get("success")?,
            })
        })
        .collect()
}

/// What a history row's `type` says, as Flyway writes it: `SQL` (or another
/// script type: `JDBC`, `SCRIPT`, …) with a version is a versioned
/// migration and without one a repeatable script; `BASELINE` (and
/// `SQL_BASELINE`, …) a baseline marker; `UNDO_SQL` (and `DELETE`, which
/// removes a version) an undo.
pub(crate) fn kind_of(history_type: &str, versioned: bool) -> MigrationKind {
    let t = history_type.trim().to_ascii_uppercase();
    // INIT: Flyway 3's baseline; SCHEMA: Flyway's "schemas created" marker.
    if t.ends_with("BASELINE") || t == "INIT" || t == "SCHEMA" {
        MigrationKind::Baseline
    } else if t.starts_with("UNDO") || t == "DELETE" {
        MigrationKind::Undo
    } else if versioned {
        MigrationKind::Versioned
    } else {
        MigrationKind::Repeatable
    }
}

/// Creates a history table of ours (and its rank index, where the server
/// has one), if there is none.
///
/// # Errors
///
/// The server's.
pub(crate) fn create(
    conn: &mut PooledConnection,
    dialect: &dyn HistoryDialect,
    table: &str,
) -> Result<()> {
    conn.execute_batch(&dialect.create_history(table))?;
    if let Some(index) = dialect.rank_index(table) {
        conn.execute_batch(&index)?;
    }
    Ok(())
}

/// One history row to insert.
pub(crate) struct NewRow<'a> {
    pub(crate) version: Option<String>,
    pub(crate) description: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) script: &'a str,
    pub(crate) checksum: Option<i32>,
    pub(crate) installed_by: &'a str,
    pub(crate) execution_time_ms: i64,
    pub(crate) success: bool,
}

impl NewRow<'_> {
    /// What kind of script the row records.
    pub(crate) fn kind_of(&self) -> MigrationKind {
        kind_of(self.kind, self.version.is_some())
    }
}

/// Inserts a history row with bind parameters; the ranks are computed in
/// the same statement's transaction, under the migration lock.
pub(crate) fn insert(
    conn: &mut dyn Exec,
    dialect: &dyn HistoryDialect,
    table: &str,
    row: &NewRow<'_>,
) -> Result<()> {
    let t = dialect.quote(table);
    if dialect.ranks_in_values() {
        let version_rank = if row.version.is_some() {
            format!("(SELECT COALESCE(MAX(version_rank), 0) + 1 FROM {t})")
        } else {
            "NULL".to_owned()
        };
        return conn
            .exec(
                &format!(
                    "INSERT INTO {t} (installed_rank, version_rank, version, description, type, script, \
                     checksum, installed_by, execution_time, success) VALUES \
                     ((SELECT COALESCE(MAX(installed_rank), 0) + 1 FROM {t}), {version_rank}, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                row_values(row).into(),
            )
            .map(drop);
    }
    let next = conn.rows(
        &format!(
            "SELECT COALESCE(MAX(installed_rank), 0) + 1 AS ir, \
             COALESCE(MAX(version_rank), 0) + 1 AS vr FROM {t}"
        ),
        Vec::new(),
    )?;
    let (ir, vr) = next
        .first()
        .map(|r| {
            (
                r.get::<i64>("ir").unwrap_or(1),
                r.get::<i64>("vr").unwrap_or(1),
            )
        })
        .unwrap_or((1, 1));
    conn.exec(
        &format!(
            "INSERT INTO {t} (installed_rank, version_rank, version, description, type, script, \
             checksum, installed_by, execution_time, success) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ),
        vec![
            Value::from(ir),
            if row.version.is_some() {
                Value::from(vr)
            } else {
                Value::Null
            },
        ]
        .into_iter()
        .chain(row_values(row))
        .collect(),
    )
    .map(drop)
}

/// The most rows one `INSERT` of [`insert_many`] writes (10 parameters a
/// row, below every server's limit).
const ROWS_PER_INSERT: usize = 50;

/// Inserts history rows of ours in their order, in the caller's
/// transaction under the migration lock: the ranks read once, then
/// multi-row `INSERT`s of up to [`ROWS_PER_INSERT`] rows with bind
/// parameters, ranked as [`insert`] would rank them one by one.
pub(crate) fn insert_many(
    conn: &mut dyn Exec,
    dialect: &dyn HistoryDialect,
    table: &str,
    rows: &[NewRow<'_>],
) -> Result<()> {
    if rows.len() < 2 {
        return rows
            .iter()
            .try_for_each(|row| insert(conn, dialect, table, row));
    }
    let t = dialect.quote(table);
    let last = conn.rows(
        &format!(
            "SELECT COALESCE(MAX(installed_rank), 0) AS ir, COALESCE(MAX(version_rank), 0) AS vr FROM {t}"
        ),
        Vec::new(),
    )?;
    let (mut ir, mut vr) = last
        .first()
        .map(|r| {
            (
                r.get::<i64>("ir").unwrap_or(0),
                r.get::<i64>("vr").unwrap_or(0),
            )
        })
        .unwrap_or((0, 0));
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut sql = format!(
            "INSERT INTO {t} (installed_rank, version_rank, version, description, type, script, \
             checksum, installed_by, execution_time, success) VALUES "
        );
        let mut values = Vec::with_capacity(chunk.len() * 10);
        for (i, row) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
            ir += 1;
            values.push(Value::from(ir));
            values.push(if row.version.is_some() {
                vr += 1;
                Value::from(vr)
            } else {
                Value::Null
            });
            values.extend(row_values(row));
        }
        conn.exec(&sql, values)?;
    }
    Ok(())
}

/// The values of the columns Flyway's formats and ours share, in their
/// order: version, description, type, script, checksum, installed_by,
/// execution_time, success (texts cut to their columns' widths).
pub(crate) fn row_values(row: &NewRow<'_>) -> [Value; 8] {
    [
        Value::from(row.version.clone()),
        Value::from(truncate(row.description, 200)),
        Value::from(row.kind),
        Value::from(truncate(row.script, 1000)),
        Value::from(row.checksum.map(i64::from)),
        Value::from(truncate(row.installed_by, 100)),
        Value::from(row.execution_time_ms),
        Value::from(row.success),
    ]
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_ddl_per_dialect() {
        let pg = Postgres.create_history("schema_version");
        assert!(
            pg.starts_with("CREATE TABLE IF NOT EXISTS \"schema_version\" ("),
            "{pg}"
        );
        assert!(pg.contains("installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP"));
        assert!(pg.contains("success BOOLEAN NOT NULL"));
        let my = MySql.create_history("app.schema_version");
        assert!(
            my.starts_with("CREATE TABLE IF NOT EXISTS `app`.`schema_version` ("),
            "{my}"
        );
        assert!(my.contains("TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)"));
        let lite = Sqlite.create_history("h");
        assert!(lite.contains("\"h\""));
        for col in [
            "installed_rank",
            "version_rank",
            "version",
            "description",
            "type",
            "script",
            "checksum",
            "installed_by",
            "installed_on",
            "execution_time",
            "success",
        ] {
            assert!(pg.contains(&format!("    {col} ")), "{col}");
        }
    }

    #[test]
    fn sql_server_text() {
        let ms = MsSql.create_history("dbo.schema_version");
        assert!(
            ms.starts_with("IF OBJECT_ID(N'[dbo].[schema_version]', N'U') IS NULL\nCREATE TABLE [dbo].[schema_version] ("),
            "{ms}"
        );
        assert!(
            ms.contains("installed_on DATETIME2 NOT NULL DEFAULT SYSUTCDATETIME()"),
            "{ms}"
        );
        assert!(ms.contains("success BIT NOT NULL"), "{ms}");
        assert!(!ms.contains("IF NOT EXISTS"));
        assert!(MsSql::LOCK_SQL.contains("sp_getapplock @Resource = ?, @LockMode = 'Exclusive', @LockOwner = 'Session', @LockTimeout = ?"));
        assert!(MsSql::UNLOCK_SQL.contains("sp_releaseapplock @Resource = ?"));
        // The placeholders become @P1, @P2 for SQL Server.
        let t = crate::sql::translate(MsSql::LOCK_SQL, Dialect::MsSql).expect("translates");
        assert!(
            t.sql.contains("@Resource = @P1") && t.sql.contains("@LockTimeout = @P2"),
            "{}",
            t.sql
        );
    }

    #[test]
    fn lock_names_are_short_and_distinct() {
        let a = LockName::new("schema_version", &Postgres);
        let b = LockName::new("other_history", &Postgres);
        assert_ne!(a.key, b.key);
        assert_eq!(a.key >> 32, 0x0064_626d);
        let long = LockName::new(&"x".repeat(63), &MySql);
        assert!(long.name.len() <= 64);
        assert_eq!(LockName::new("h", &Sqlite).table, "\"h_lock\"");
    }
}
