//! Read replicas: a second pool, read-only, whose reads go there while the
//! replica's replay lag is within a bound, and to the primary otherwise.
//!
//! The lag is measured on the replica itself and cached briefly
//! ([`LAG_CACHE`]): PostgreSQL `now() - pg_last_xact_replay_timestamp()`,
//! except that a standby that has replayed all it received
//! (`pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()`) is caught up
//! whatever the age of its last transaction (an idle primary sends none);
//! MariaDB/MySQL `Seconds_Behind_Master` (or `Seconds_Behind_Source`).

use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::manager::DatabaseManager;
use crate::sql::{classify_statement, StatementKind};
use crate::status::{BackendKind, HealthStatus, PoolStatus};
use crate::value::{IntoParams, Params, Row, Value};

/// How long a measured replica lag is trusted before it is measured again.
pub const LAG_CACHE: Duration = Duration::from_millis(250);

/// Pause between two looks at the replica while a read waits for it to
/// replay past a write.
const REPLAY_POLL: Duration = Duration::from_millis(10);

const PG_LAG: &str = "SELECT CASE \
     WHEN NOT pg_is_in_recovery() THEN 0::float8 \
     WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0::float8 \
     ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8, 1e9) END AS lag";

/// A read-only handle on a database's read replicas: see
/// [`DatabaseManager::replica`].
#[derive(Clone, Debug)]
pub struct ReplicaHandle {
    primary: DatabaseManager,
    replica: DatabaseManager,
    max_lag: Duration,
    /// Read-your-writes: the primary's WAL position the replica must have
    /// replayed, and how long a read waits for it.
    after: Option<(String, Duration)>,
}

impl DatabaseManager {
    /// A read-only handle whose reads go to a read replica
    /// (`{PREFIX}{NAME}_REPLICA_CONNECTION_STRING`, one URL or a host list)
    /// while its replay lag is within `{PREFIX}{NAME}_MAX_REPLICA_LAG`, and
    /// to this (the primary) otherwise, counted in
    /// `db_replica_fallback_total`. Writes through it are refused as on a
    /// read-only database. The replicas' pool is made on the first call and
    /// shared by every handle.
    ///
    /// ```no_run
    /// # fn main() -> dbmanager::Result<()> {
    /// let db = dbmanager::DatabaseManager::new("rpa_db")?;
    /// let report = db.replica()?.execute_query("SELECT count(*) AS n FROM orders", ())?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Config`](ErrorKind::Config) when no replica is configured, or as
    /// [`from_config`](Self::from_config) for the replica's configuration.
    pub fn replica(&self) -> Result<ReplicaHandle> {
        let replica = self.replica_manager()?.ok_or_else(|| {
            let var = self
                .config()
                .variable("REPLICA_CONNECTION_STRING")
                .unwrap_or_else(|| "DatabaseConfigBuilder::replica_url".to_owned());
            Error::config(format!(
                "database `{}` has no read replica configured; set {var}",
                self.name()
            ))
        })?;
        Ok(ReplicaHandle {
            primary: self.clone(),
            replica,
            max_lag: self.config().max_replica_lag(),
            after: None,
        })
    }
}

impl ReplicaHandle {
    /// Read-your-writes: a handle whose reads see every write committed on
    /// the primary before this call. Each read waits up to `wait` for the
    /// replica to replay past the primary's WAL position taken now
    /// (`pg_current_wal_lsn()`), then goes to the primary. On MySQL/MariaDB
    /// (no WAL position to compare here) its reads go to the primary.
    ///
    /// # Errors
    ///
    /// The primary's error when its position cannot be read.
    pub fn read_your_writes(&self, wait: Duration) -> Result<ReplicaHandle> {
        let lsn = match self.primary.backend() {
            BackendKind::Postgres => self
                .primary
                .query_one("SELECT pg_current_wal_lsn()::text AS lsn", ())?
                .get::<String>("lsn")?,
            _ => String::new(),
        };
        Ok(ReplicaHandle {
            after: Some((lsn, wait)),
            ..self.clone()
        })
    }

    /// The manager of the replicas' pool (read-only).
    pub fn replica_manager(&self) -> &DatabaseManager {
        &self.replica
    }

    /// The replicas' replay lag, measured now on the server (`None`: it
    /// could not be measured, as when the replica is down).
    pub fn lag(&self) -> Option<Duration> {
        self.measure().map(Duration::from_secs_f64)
    }

    /// The replica pool's status (its `serving_host` and `serving_role`
    /// say which server answers).
    #[must_use]
    pub fn pool_status(&self) -> PoolStatus {
        self.replica.pool_status()
    }

    /// The replica's health report.
    #[must_use]
    pub fn health_check(&self) -> HealthStatus {
        self.replica.health_check()
    }

    /// Runs a read and returns its rows: on a replica within the lag bound,
    /// else on the primary.
    ///
    /// # Errors
    ///
    /// [`ReadOnly`](ErrorKind::ReadOnly) for a statement that writes; else
    /// as [`DatabaseManager::execute_query`].
    #[track_caller]
    pub fn execute_query(&self, sql: &str, params: impl IntoParams) -> Result<Vec<Row>> {
        let params: Params = params.into_params();
        self.target(sql).execute_query(sql, params)
    }

    /// Runs a read that returns exactly one row.
    ///
    /// # Errors
    ///
    /// As [`execute_query`](Self::execute_query), and
    /// [`NoRows`](ErrorKind::NoRows) or [`TooManyRows`](ErrorKind::TooManyRows).
    #[track_caller]
    pub fn query_one(&self, sql: &str, params: impl IntoParams) -> Result<Row> {
        let params: Params = params.into_params();
        self.target(sql).query_one(sql, params)
    }

    /// Runs a read and maps its rows into `T` through serde.
    ///
    /// # Errors
    ///
    /// As [`execute_query`](Self::execute_query), and a mapping error.
    #[track_caller]
    pub fn query_as<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        params: impl IntoParams,
    ) -> Result<Vec<T>> {
        let params: Params = params.into_params();
        self.target(sql).query_as(sql, params)
    }

    /// Refused for a write, as on a read-only database; a statement the
    /// classifier cannot tell runs on the replica, whose session is
    /// read-only.
    ///
    /// # Errors
    ///
    /// [`ReadOnly`](ErrorKind::ReadOnly), or the server's refusal.
    #[track_caller]
    pub fn execute(&self, sql: &str, params: impl IntoParams) -> Result<u64> {
        self.replica.execute(sql, params)
    }

    /// Where `sql` goes: a write or a statement of unknown kind to the
    /// read-only replica pool (which refuses it); a read to the replica
    /// when it qualifies, else to the primary (counted).
    fn target(&self, sql: &str) -> &DatabaseManager {
        if !matches!(classify_statement(sql), StatementKind::Read) {
            return &self.replica;
        }
        let fits = match &self.after {
            Some((lsn, wait)) => self.replayed(lsn, *wait),
            None => self.lag_within_bound(),
        };
        if fits {
            &self.replica
        } else {
            self.primary.count_replica_fallback();
            tracing::debug!(database = %self.primary.name(), "no replica within the bound; reading from the primary");
            &self.primary
        }
    }

    /// Whether the replica's lag, cached for [`LAG_CACHE`], is within the bound.
    fn lag_within_bound(&self) -> bool {
        let now = Instant::now();
        let cache = self.primary.replica_lag_cache();
        let cached = *cache.lock();
        let lag = match cached {
            Some((at, lag)) if now.saturating_duration_since(at) < LAG_CACHE => lag,
            _ => {
                let lag = self.measure();
                *cache.lock() = Some((Instant::now(), lag));
                lag
            }
        };
        lag.is_some_and(|l| l <= self.max_lag.as_secs_f64())
    }

    /// The replica's lag in seconds, measured now; `None` when it cannot be.
    fn measure(&self) -> Option<f64> {
        let measured = match self.replica.backend() {
            BackendKind::Postgres => self
                .replica
                .query_one(PG_LAG, ())
                .and_then(|r| r.get::<f64>("lag")),
            BackendKind::MySql => self.mysql_lag(),
            // SQLite and SQL Server replicas are copies we cannot ask.
            _ => Ok(0.0),
        };
        match measured {
            Ok(l) => Some(l.max(0.0)),
            Err(e) => {
                tracing::debug!(database = %self.primary.name(), error = %e, "the replica's lag could not be measured");
                None
            }
        }
    }

    /// MariaDB/MySQL: `Seconds_Behind_Master` of `SHOW SLAVE STATUS` (0 on
    /// a server that replicates from nobody; `NULL`, replication stopped,
    /// counts as unmeasurable).
    fn mysql_lag(&self) -> Result<f64> {
        let rows = self.replica.execute_query("SHOW SLAVE STATUS", ())?;
        let Some(row) = rows.first() else {
            return Ok(0.0);
        };
        let v = row
            .value("Seconds_Behind_Master")
            .or_else(|| row.value("Seconds_Behind_Source"));
        match v {
            Some(Value::I64(n)) => Ok(*n as f64),
            Some(Value::Text(t)) => t
                .parse()
                .map_err(|_| Error::new(ErrorKind::Other, "Seconds_Behind_Master is not a number")),
            _ => Err(Error::new(
                ErrorKind::Other,
                "replication is not running (Seconds_Behind_Master is NULL)",
            )),
        }
    }

    /// Whether the replica replays past `lsn` within `wait`.
    fn replayed(&self, lsn: &str, wait: Duration) -> bool {
        if lsn.is_empty() {
            return false;
        }
        let deadline = Instant::now() + wait;
        loop {
            let done = self
                .replica
                .query_one(
                    "SELECT COALESCE(pg_last_wal_replay_lsn() >= CAST(? AS pg_lsn), NOT pg_is_in_recovery()) AS done",
                    (lsn,),
                )
                .and_then(|r| r.get::<bool>("done"));
            match done {
                Ok(true) => return true,
                Ok(false) if Instant::now() + REPLAY_POLL < deadline => {
                    std::thread::sleep(REPLAY_POLL);
                }
                _ => return false,
            }
        }
    }
}
