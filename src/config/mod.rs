//! Configuration: plain data, read from the environment and `.env` files or
//! built in code.
//!
//! - [`DatabaseConfig`] (here): the settings of one database, plain data.
//! - `builder`: [`DatabaseConfigBuilder`], and the validation in `build()`.
//! - `env`: the variable names, the `.env` reader and the table of settings
//!   read from the environment.
//! - `url`: connection strings: which backend, and how they are redacted.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::resilience::{BreakerSettings, RetryPolicy};
use crate::status::BackendKind;

mod builder;
mod env;
mod shard;
mod url;

use self::url::redact_url;
pub use builder::DatabaseConfigBuilder;
pub(crate) use builder::{DEFAULT_HISTORY_TABLE, MAX_DURATION, MAX_QUERY_TIMEOUT};
pub(crate) use env::shard_settings;
pub use env::variable_stem;
pub use shard::{ShardKey, ShardRule};
pub(crate) use url::host_list;
pub use url::TargetSessionAttrs;

/// Settings of one database. Plain data; build it with
/// [`DatabaseConfig::builder`], or read it with [`DatabaseConfig::from_env`].
///
/// `Debug` prints the connection string with its password replaced by `***`.
#[derive(Clone)]
pub struct DatabaseConfig {
    pub(crate) name: Arc<str>,
    pub(crate) kind: BackendKind,
    pub(crate) url: String,
    pub(crate) pool_size: u32,
    pub(crate) max_overflow: u32,
    pub(crate) query_timeout: Option<Duration>,
    pub(crate) acquire_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) validate_after_idle: Duration,
    pub(crate) leak_threshold: Option<Duration>,
    pub(crate) slow_query_threshold: Option<Duration>,
    pub(crate) health_timeout: Duration,
    pub(crate) degraded_after: Duration,
    pub(crate) metrics: bool,
    pub(crate) query_cache_entries: u32,
    pub(crate) query_cache_bytes: u64,
    pub(crate) read_only: bool,
    pub(crate) migrations_dir: PathBuf,
    pub(crate) history_table: String,
    pub(crate) auto_migrate: bool,
    pub(crate) migration_placeholders: Vec<(String, String)>,
    pub(crate) migration_lock_wait: Option<Duration>,
    pub(crate) migrations_strict: bool,
    pub(crate) retry: RetryPolicy,
    pub(crate) breaker: BreakerSettings,
    pub(crate) pgbouncer: bool,
    /// The read replicas' connection string (one host or a host list).
    pub(crate) replica_url: Option<String>,
    /// Replay lag past which a replica's reads go to the primary.
    pub(crate) max_replica_lag: Duration,
    /// `DEVELOPMENT_GLOBAL_RPA_DB_` when read from the environment, for messages.
    pub(crate) var_stem: Option<String>,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("max_overflow", &self.max_overflow)
            .field("query_timeout", &self.query_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("validate_after_idle", &self.validate_after_idle)
            .field("leak_threshold", &self.leak_threshold)
            .field("slow_query_threshold", &self.slow_query_threshold)
            .field("health_timeout", &self.health_timeout)
            .field("degraded_after", &self.degraded_after)
            .field("metrics", &self.metrics)
            .field("query_cache_entries", &self.query_cache_entries)
            .field("query_cache_bytes", &self.query_cache_bytes)
            .field("read_only", &self.read_only)
            .field("migrations_dir", &self.migrations_dir)
            .field("history_table", &self.history_table)
            .field("auto_migrate", &self.auto_migrate)
            .field("retry", &self.retry)
            .field("breaker", &self.breaker)
            .field("pgbouncer", &self.pgbouncer)
            .field("replica_url", &self.replica_url.as_deref().map(redact_url))
            .field("max_replica_lag", &self.max_replica_lag)
            .finish()
    }
}

impl DatabaseConfig {
    /// Starts a configuration for the database called `name` in code.
    pub fn builder(name: impl Into<String>) -> DatabaseConfigBuilder {
        DatabaseConfigBuilder::new(name.into())
    }

    /// The logical database name (`rpa_db`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The connection string with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Connections kept open in the pool once opened (they open on demand).
    pub fn pool_size(&self) -> u32 {
        self.pool_size
    }

    /// Connections opened beyond `pool_size` under load, closed again on return.
    pub fn max_overflow(&self) -> u32 {
        self.max_overflow
    }

    /// Largest number of connections: `pool_size + max_overflow`.
    pub fn max_size(&self) -> u32 {
        self.pool_size + self.max_overflow
    }

    /// Default limit on each statement (`None`: no limit).
    pub fn query_timeout(&self) -> Option<Duration> {
        self.query_timeout
    }

    /// How long a caller waits for a pooled connection.
    pub fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }

    /// How long establishing one connection may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// How long a connection may sit idle in the pool before it is closed.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Age after which a connection is closed and replaced.
    pub fn max_lifetime(&self) -> Option<Duration> {
        self.max_lifetime
    }

    /// Idle time after which a connection is checked before it is handed out.
    pub fn validate_after_idle(&self) -> Duration {
        self.validate_after_idle
    }

    /// How long a connection may be held out of the pool before it is
    /// reported as a suspected leak (`None`: never reported).
    pub fn leak_threshold(&self) -> Option<Duration> {
        self.leak_threshold
    }

    /// Statements slower than this are logged and counted as slow (`None`: never).
    pub fn slow_query_threshold(&self) -> Option<Duration> {
        self.slow_query_threshold
    }

    /// The most entries the query cache keeps (0: caching off).
    pub fn query_cache_entries(&self) -> u32 {
        self.query_cache_entries
    }

    /// The most bytes (estimated) of rows the query cache keeps.
    pub fn query_cache_bytes(&self) -> u64 {
        self.query_cache_bytes
    }

    /// The whole health check's time limit.
    pub fn health_timeout(&self) -> Duration {
        self.health_timeout
    }

    /// A health check slower than this reports `degraded`.
    pub fn degraded_after(&self) -> Duration {
        self.degraded_after
    }

    /// Whether Prometheus metrics are recorded for this database.
    pub fn metrics(&self) -> bool {
        self.metrics
    }

    /// Whether writes and migrations are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The folder versioned migrations are read from. Default
    /// `migrations/{database name}`, relative to the working directory.
    pub fn migrations_dir(&self) -> &Path {
        &self.migrations_dir
    }

    /// The migration history table. Default `schema_version`.
    pub fn history_table(&self) -> &str {
        &self.history_table
    }

    /// The configured values of migration `${placeholders}`.
    pub fn migration_placeholders(&self) -> &[(String, String)] {
        &self.migration_placeholders
    }

    /// How long a migration statement waits for another session's lock
    /// (`None`: no bound). Default 5 s.
    pub fn migration_lock_wait(&self) -> Option<Duration> {
        self.migration_lock_wait
    }

    /// Whether a `.sql` file that is neither a migration nor a callback is
    /// refused. Default `false` (skipped with a warning).
    pub fn migrations_strict(&self) -> bool {
        self.migrations_strict
    }

    /// Whether [`DatabaseManager::new`](crate::DatabaseManager::new) runs
    /// migrations when it creates the manager. Default `false`.
    pub fn auto_migrate(&self) -> bool {
        self.auto_migrate
    }

    /// Where a migration setting is read from, for error messages.
    pub(crate) fn variable(&self, suffix: &str) -> Option<String> {
        self.var_stem.as_ref().map(|stem| format!("{stem}{suffix}"))
    }

    /// How transient failures are retried by default.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Connection failures that open the circuit breaker (0: off).
    pub fn circuit_failures(&self) -> u32 {
        self.breaker.failures
    }

    /// The window in which circuit-breaker failures are counted.
    pub fn circuit_window(&self) -> Duration {
        self.breaker.window
    }

    /// How long an open circuit breaker waits before probing.
    pub fn circuit_recovery(&self) -> Duration {
        self.breaker.recovery
    }

    /// Whether PostgreSQL is reached through pgbouncer (transaction pooling).
    pub fn pgbouncer(&self) -> bool {
        self.pgbouncer
    }

    /// The read replicas' connection string with its password replaced by
    /// `***`, when one is configured.
    pub fn redacted_replica_url(&self) -> Option<String> {
        self.replica_url.as_deref().map(redact_url)
    }

    /// Replay lag past which a replica's reads go to the primary
    /// (`{PREFIX}{NAME}_MAX_REPLICA_LAG`; default 5 s).
    pub fn max_replica_lag(&self) -> Duration {
        self.max_replica_lag
    }

    /// Which servers of the connection string's host list a session may use
    /// (`target_session_attrs` in the URL; default `any`).
    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        host_list(&self.url)
            .ok()
            .flatten()
            .map_or(TargetSessionAttrs::Any, |h| h.attrs)
    }

    /// The configuration of the read replicas: this one with the replica
    /// URL, read-only, named `{name}` still (its metrics carry the same
    /// `database` label). `None` without a replica URL.
    pub(crate) fn replica_config(&self) -> Option<DatabaseConfig> {
        let url = self.replica_url.clone()?;
        let mut c = self.clone();
        c.url = url;
        c.read_only = true;
        c.replica_url = None;
        c.auto_migrate = false;
        Some(c)
    }

    /// Where the query timeout is set, for error messages.
    pub(crate) fn timeout_variable(&self) -> String {
        match &self.var_stem {
            Some(stem) => format!("{stem}{}", env::TIMEOUT),
            None => "the query timeout (DatabaseConfigBuilder::query_timeout)".to_owned(),
        }
    }
}
