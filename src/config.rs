//! Configuration: plain data, read from the environment and `.env` files or
//! built in code.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::resilience::{BreakerSettings, RetryPolicy};

/// Which database server a configuration talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
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

    /// Parses a `_TYPE` value (case-insensitive): `postgresql`/`postgres`/`pg`,
    /// `mysql`/`mariadb`, `sqlite`/`sqlite3`, `sqlserver`/`mssql`.
    fn from_type_name(s: &str) -> Option<BackendKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "postgresql" | "postgres" | "pg" => Some(BackendKind::Postgres),
            "mysql" | "mariadb" => Some(BackendKind::MySql),
            "sqlite" | "sqlite3" => Some(BackendKind::Sqlite),
            "sqlserver" | "mssql" => Some(BackendKind::MsSql),
            _ => None,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Infers the backend from a connection string, without ever echoing it.
///
/// Accepted: `postgresql://`, `postgres://`, `mysql://`, `mariadb://`,
/// `sqlite:` (`sqlite::memory:`, `sqlite:path`, `sqlite:///abs/path`),
/// `mssql://`, `sqlserver://`, SQLAlchemy's `dialect+driver://` forms
/// (`mssql+pyodbc://`, `postgresql+psycopg2://`), and the ADO.NET form
/// (`Server=host,1433;Database=…;User Id=…;Password=…`) for SQL Server.
pub(crate) fn kind_of_url(url: &str) -> std::result::Result<BackendKind, String> {
    let trimmed = url.trim();
    if trimmed.is_empty() {
        return Err("it is empty".into());
    }
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("sqlite:") {
        return Ok(BackendKind::Sqlite);
    }
    if !trimmed.contains("://") && trimmed.contains('=') {
        let looks_ado = lower
            .split(';')
            .filter_map(|part| part.split_once('='))
            .any(|(k, _)| {
                matches!(
                    k.trim(),
                    "server" | "data source" | "address" | "addr" | "network address"
                )
            });
        return if looks_ado {
            Ok(BackendKind::MsSql)
        } else {
            Err("it is neither a URL nor an ADO.NET `Server=…;` string".into())
        };
    }
    let parsed = url::Url::parse(trimmed).map_err(|e| format!("it is not a valid URL ({e})"))?;
    let scheme = parsed.scheme();
    let dialect = scheme.split('+').next().unwrap_or(scheme);
    let kind = match dialect {
        "postgresql" | "postgres" => BackendKind::Postgres,
        "mysql" | "mariadb" => BackendKind::MySql,
        "mssql" | "sqlserver" => BackendKind::MsSql,
        other => {
            return Err(format!(
                "its scheme `{other}` is not one of postgresql, postgres, mysql, mariadb, sqlite, mssql, sqlserver"
            ))
        }
    };
    if parsed.host_str().map_or(true, str::is_empty) {
        return Err("it names no host".into());
    }
    Ok(kind)
}

/// The connection string with any password replaced by `***`, for logs and
/// `Debug`.
pub(crate) fn redact_url(url: &str) -> String {
    let trimmed = url.trim();
    if trimmed.to_ascii_lowercase().starts_with("sqlite:") {
        return trimmed.to_owned();
    }
    if !trimmed.contains("://") {
        // ADO.NET: redact the value of every password-like key.
        return trimmed
            .split(';')
            .map(|part| match part.split_once('=') {
                Some((k, _))
                    if matches!(k.trim().to_ascii_lowercase().as_str(), "password" | "pwd") =>
                {
                    format!("{}=***", k)
                }
                Some((k, _))
                    if k.trim()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '_') =>
                {
                    part.to_owned()
                }
                // Not `key=value`: a malformed string (`mysql:user:pw@host`,
                // a URL without `//`) may hold a password anywhere in it.
                _ if part.trim().is_empty() => part.to_owned(),
                _ => "***".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(";");
    }
    match url::Url::parse(trimmed) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let secret = matches!(
                        k.to_ascii_lowercase().as_str(),
                        "password" | "pwd" | "sslpassword"
                    );
                    // pyodbc's `odbc_connect=` carries a whole ODBC string.
                    let lower = v.to_ascii_lowercase();
                    let nested = lower.contains("pwd=") || lower.contains("password=");
                    let value = if secret {
                        "***".into()
                    } else if nested {
                        redact_url(&v)
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), value)
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "<unparseable connection string>".into(),
    }
}

/// Upper-cases a database name into its variable stem: `rpa_db` → `RPA_DB`,
/// `SurveyHub` → `SURVEYHUB`, `my-db.main` → `MY_DB_MAIN`.
pub fn env_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The variable prefix for an environment: `development` → `DEVELOPMENT_GLOBAL_`.
pub fn env_prefix(environment: &str) -> String {
    format!("{}_GLOBAL_", env_stem(environment))
}

/// The default pool size: twice the CPU count plus one, between 2 and 32.
///
/// This is the rule of thumb PostgreSQL's wiki and HikariCP give for a pool
/// (`cores × 2 + effective spindles`): a database connection spends part of
/// its time waiting on I/O, so about two per core keep the CPUs busy without
/// queueing work on the server. On a 2-core machine it gives 5, the seeds'
/// default.
pub fn default_pool_size() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus as u32)
        .saturating_mul(2)
        .saturating_add(1)
        .clamp(2, 32)
}

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
    pub(crate) read_only: bool,
    pub(crate) migrations_dir: PathBuf,
    pub(crate) history_table: String,
    pub(crate) auto_migrate: bool,
    pub(crate) retry: RetryPolicy,
    pub(crate) breaker: BreakerSettings,
    pub(crate) pgbouncer: bool,
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
            .field("read_only", &self.read_only)
            .field("migrations_dir", &self.migrations_dir)
            .field("history_table", &self.history_table)
            .field("auto_migrate", &self.auto_migrate)
            .field("retry", &self.retry)
            .field("breaker", &self.breaker)
            .field("pgbouncer", &self.pgbouncer)
            .finish()
    }
}

/// Where [`DatabaseConfig::from_env`] looks for `.env` files when
/// `DBMANAGER_ENV_DIR` is not set.
pub const DEFAULT_ENV_DIR: &str = "envs";

/// Suffixes of the per-database variables, after `{PREFIX}{NAME}_`.
mod var {
    pub const URL: &str = "CONNECTION_STRING";
    pub const TYPE: &str = "TYPE";
    pub const POOL_SIZE: &str = "POOL_SIZE";
    pub const MAX_OVERFLOW: &str = "MAX_OVERFLOW";
    pub const TIMEOUT: &str = "TIMEOUT";
    pub const POOL_TIMEOUT: &str = "POOL_TIMEOUT";
    pub const CONNECT_TIMEOUT: &str = "CONNECT_TIMEOUT";
    pub const IDLE_TIMEOUT: &str = "IDLE_TIMEOUT";
    pub const MAX_LIFETIME: &str = "MAX_LIFETIME";
    pub const READ_ONLY: &str = "READ_ONLY";
    pub const LEAK_THRESHOLD: &str = "LEAK_THRESHOLD";
    pub const SLOW_QUERY_THRESHOLD: &str = "SLOW_QUERY_THRESHOLD";
    pub const HEALTH_TIMEOUT: &str = "HEALTH_TIMEOUT";
    pub const DEGRADED_THRESHOLD: &str = "DEGRADED_THRESHOLD";
    pub const METRICS: &str = "METRICS";
    pub const MIGRATIONS_DIR: &str = "MIGRATIONS_DIR";
    pub const MIGRATIONS_TABLE: &str = "MIGRATIONS_TABLE";
    pub const AUTO_MIGRATE: &str = "AUTO_MIGRATE";
    pub const RETRY_ATTEMPTS: &str = "RETRY_ATTEMPTS";
    pub const RETRY_BASE_DELAY: &str = "RETRY_BASE_DELAY";
    pub const RETRY_MAX_DELAY: &str = "RETRY_MAX_DELAY";
    pub const RETRY_BUDGET: &str = "RETRY_BUDGET";
    pub const RETRY_WRITES: &str = "RETRY_WRITES";
    pub const CIRCUIT_FAILURES: &str = "CIRCUIT_FAILURES";
    pub const CIRCUIT_WINDOW: &str = "CIRCUIT_WINDOW";
    pub const CIRCUIT_RECOVERY: &str = "CIRCUIT_RECOVERY";
    pub const PGBOUNCER: &str = "PGBOUNCER";
    pub const GLOBAL_TIMEOUT: &str = "DATABASE_TIMEOUT";
    pub const GLOBAL_POOL_SIZE: &str = "CONNECTION_POOL_SIZE";
}

impl DatabaseConfig {
    /// Starts a configuration for the database called `name` in code.
    pub fn builder(name: impl Into<String>) -> DatabaseConfigBuilder {
        DatabaseConfigBuilder::new(name.into())
    }

    /// Reads the configuration of `name` from the process environment and the
    /// `.env.{environment}` file.
    ///
    /// The environment is `ENVIRONMENT` (default `development`); the file is
    /// `{DBMANAGER_ENV_DIR or envs}/.env.{environment}`, parsed with a real
    /// dotenv parser; variables set in the process win over the file. See the
    /// README for every variable.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the variable that
    /// is missing or malformed and the file that was consulted.
    pub fn from_env(name: &str) -> Result<DatabaseConfig> {
        let process = |k: &str| std::env::var(k).ok();
        let dir = process("DBMANAGER_ENV_DIR").unwrap_or_else(|| DEFAULT_ENV_DIR.to_owned());
        let environment = process("ENVIRONMENT").unwrap_or_else(|| "development".to_owned());
        let file =
            EnvFile::read(&Path::new(&dir).join(format!(".env.{}", environment.to_lowercase())))?;
        from_sources(
            name,
            |k| process(k).or_else(|| file.get(k)),
            &file.describe(),
        )
    }

    /// Reads the configuration of `name` through `lookup`, which maps a
    /// variable name to its value. [`from_env`](Self::from_env) is this over
    /// the process environment and the `.env` file; tests pass a map.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the variable that
    /// is missing or malformed.
    pub fn from_lookup(
        name: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<DatabaseConfig> {
        from_sources(name, lookup, "the given lookup")
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

    /// The migration history table. Default `schema_version` (seed 002's).
    pub fn history_table(&self) -> &str {
        &self.history_table
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

    /// Where the query timeout is set, for error messages.
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

    pub(crate) fn timeout_variable(&self) -> String {
        match &self.var_stem {
            Some(stem) => format!("{stem}{}", var::TIMEOUT),
            None => "the query timeout (DatabaseConfigBuilder::query_timeout)".to_owned(),
        }
    }
}

/// A `.env` file, read once; absent is not an error (the variables may all be
/// in the process environment).
struct EnvFile {
    path: PathBuf,
    vars: Option<HashMap<String, String>>,
}

impl EnvFile {
    fn read(path: &Path) -> Result<EnvFile> {
        if !path.exists() {
            return Ok(EnvFile {
                path: path.to_owned(),
                vars: None,
            });
        }
        let iter = dotenvy::from_path_iter(path).map_err(|e| {
            Error::config(format!(
                "cannot read {}: {}",
                path.display(),
                dotenv_reason(&e)
            ))
        })?;
        let mut vars = HashMap::new();
        for item in iter {
            let (k, v) = item.map_err(|e| {
                Error::config(format!(
                    "{} is malformed: {}",
                    path.display(),
                    dotenv_reason(&e)
                ))
            })?;
            vars.insert(k, v);
        }
        Ok(EnvFile {
            path: path.to_owned(),
            vars: Some(vars),
        })
    }

    fn get(&self, key: &str) -> Option<String> {
        self.vars.as_ref()?.get(key).cloned()
    }

    fn describe(&self) -> String {
        match self.vars {
            Some(_) => format!("the environment and {}", self.path.display()),
            None => format!("the environment ({} does not exist)", self.path.display()),
        }
    }
}

/// A dotenv error without the offending line's text, which may hold a secret.
fn dotenv_reason(e: &dotenvy::Error) -> String {
    match e {
        dotenvy::Error::LineParse(_, index) => {
            format!("a line cannot be parsed (at character {index}); expected KEY=VALUE")
        }
        dotenvy::Error::Io(io) => io.to_string(),
        _ => "it cannot be parsed".to_owned(),
    }
}

fn from_sources(
    name: &str,
    lookup: impl Fn(&str) -> Option<String>,
    looked_in: &str,
) -> Result<DatabaseConfig> {
    if name.trim().is_empty() {
        return Err(Error::config(EMPTY_NAME));
    }
    let environment = lookup("ENVIRONMENT").unwrap_or_else(|| "development".to_owned());
    let prefix = env_prefix(&environment);
    let stem = format!("{prefix}{}_", env_stem(name));
    let var = |suffix: &str| format!("{stem}{suffix}");
    let get = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());

    let url_var = var(var::URL);
    let url = get(&url_var).ok_or_else(|| {
        Error::config(format!(
            "database `{name}` is not configured: set {url_var} (looked in {looked_in})"
        ))
    })?;

    let mut b = DatabaseConfig::builder(name).url(url);
    b.url_source = Some(url_var);
    b.var_stem = Some(stem.clone());
    if let Some(t) = get(&var(var::TYPE)) {
        let kind = BackendKind::from_type_name(&t).ok_or_else(|| {
            Error::config(format!(
                "{} = `{t}` is not a known type; use postgresql, mysql, sqlite or sqlserver",
                var(var::TYPE)
            ))
        })?;
        b = b.kind(kind);
        b.kind_source = Some(var(var::TYPE));
    }
    let global_size = format!("{prefix}{}", var::GLOBAL_POOL_SIZE);
    if let Some((key, v)) = first(&get, &[var(var::POOL_SIZE), global_size]) {
        let n = parse_u32(&key, &v)?;
        if n == 0 {
            return Err(Error::config(format!("{key} = 0; it must be at least 1")));
        }
        b = b.pool_size(n);
    }
    if let Some(v) = get(&var(var::MAX_OVERFLOW)) {
        b = b.max_overflow(parse_u32(&var(var::MAX_OVERFLOW), &v)?);
    }
    let global_timeout = format!("{prefix}{}", var::GLOBAL_TIMEOUT);
    if let Some((key, v)) = first(&get, &[var(var::TIMEOUT), global_timeout]) {
        let secs = parse_secs(&key, &v)?;
        b = b.query_timeout((!secs.is_zero()).then_some(secs));
    }
    if let Some(v) = get(&var(var::POOL_TIMEOUT)) {
        b = b.acquire_timeout(parse_positive_secs(&var(var::POOL_TIMEOUT), &v)?);
    }
    if let Some(v) = get(&var(var::CONNECT_TIMEOUT)) {
        b = b.connect_timeout(parse_positive_secs(&var(var::CONNECT_TIMEOUT), &v)?);
    }
    if let Some(v) = get(&var(var::IDLE_TIMEOUT)) {
        b = b.idle_timeout(parse_secs(&var(var::IDLE_TIMEOUT), &v)?);
    }
    if let Some(v) = get(&var(var::MAX_LIFETIME)) {
        let secs = parse_secs(&var(var::MAX_LIFETIME), &v)?;
        b = b.max_lifetime((!secs.is_zero()).then_some(secs));
    }
    if let Some(v) = get(&var(var::LEAK_THRESHOLD)) {
        let secs = parse_secs(&var(var::LEAK_THRESHOLD), &v)?;
        b = b.leak_threshold((!secs.is_zero()).then_some(secs));
    }
    if let Some(v) = get(&var(var::SLOW_QUERY_THRESHOLD)) {
        let secs = parse_secs(&var(var::SLOW_QUERY_THRESHOLD), &v)?;
        b = b.slow_query_threshold((!secs.is_zero()).then_some(secs));
    }
    if let Some(v) = get(&var(var::HEALTH_TIMEOUT)) {
        b = b.health_timeout(parse_secs(&var(var::HEALTH_TIMEOUT), &v)?);
    }
    if let Some(v) = get(&var(var::DEGRADED_THRESHOLD)) {
        b = b.degraded_after(parse_secs(&var(var::DEGRADED_THRESHOLD), &v)?);
    }
    if let Some(v) = get(&var(var::METRICS)) {
        b = b.metrics(parse_bool(&var(var::METRICS), &v)?);
    }
    if let Some(v) = get(&var(var::READ_ONLY)) {
        b = b.read_only(parse_bool(&var(var::READ_ONLY), &v)?);
    }
    if let Some(v) = get(&var(var::MIGRATIONS_DIR)) {
        b = b.migrations_dir(v.trim());
    }
    if let Some(v) = get(&var(var::MIGRATIONS_TABLE)) {
        b = b.history_table(v.trim());
        b.table_source = Some(var(var::MIGRATIONS_TABLE));
    }
    if let Some(v) = get(&var(var::AUTO_MIGRATE)) {
        b = b.auto_migrate(parse_bool(&var(var::AUTO_MIGRATE), &v)?);
    }
    let mut retry = b.retry;
    if let Some(v) = get(&var(var::RETRY_ATTEMPTS)) {
        let n = parse_u32(&var(var::RETRY_ATTEMPTS), &v)?;
        if n == 0 {
            return Err(Error::config(format!(
                "{} = 0; it counts the first attempt too, so use 1 for no retry",
                var(var::RETRY_ATTEMPTS)
            )));
        }
        retry = retry.attempts(n);
    }
    if let Some(v) = get(&var(var::RETRY_BASE_DELAY)) {
        retry = retry.base_delay(parse_secs(&var(var::RETRY_BASE_DELAY), &v)?);
    }
    if let Some(v) = get(&var(var::RETRY_MAX_DELAY)) {
        retry = retry.max_delay(parse_secs(&var(var::RETRY_MAX_DELAY), &v)?);
    }
    if let Some(v) = get(&var(var::RETRY_BUDGET)) {
        retry = retry.budget(parse_secs(&var(var::RETRY_BUDGET), &v)?);
    }
    if let Some(v) = get(&var(var::RETRY_WRITES)) {
        retry = retry.retry_writes(parse_bool(&var(var::RETRY_WRITES), &v)?);
    }
    b = b.retry(retry);
    if let Some(v) = get(&var(var::CIRCUIT_FAILURES)) {
        b = b.circuit_failures(parse_u32(&var(var::CIRCUIT_FAILURES), &v)?);
    }
    if let Some(v) = get(&var(var::CIRCUIT_WINDOW)) {
        b = b.circuit_window(parse_positive_secs(&var(var::CIRCUIT_WINDOW), &v)?);
    }
    if let Some(v) = get(&var(var::CIRCUIT_RECOVERY)) {
        b = b.circuit_recovery(parse_positive_secs(&var(var::CIRCUIT_RECOVERY), &v)?);
    }
    if let Some(v) = get(&var(var::PGBOUNCER)) {
        b = b.pgbouncer(parse_bool(&var(var::PGBOUNCER), &v)?);
    }
    b.build()
}

/// `pgbouncer=true` (or `1`, `yes`, `on`) in a URL's query.
fn url_asks_pgbouncer(url: &str) -> bool {
    url::Url::parse(url.trim()).is_ok_and(|u| {
        u.query_pairs().any(|(k, v)| {
            k.eq_ignore_ascii_case("pgbouncer")
                && matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        })
    })
}

const EMPTY_NAME: &str =
    "the database name is empty; give the logical name of the database (e.g. \"rpa_db\")";

/// Like [`parse_secs`], for settings where zero makes no sense.
fn parse_positive_secs(key: &str, v: &str) -> Result<Duration> {
    let secs = parse_secs(key, v)?;
    if secs.is_zero() {
        return Err(Error::config(format!(
            "{key} = `{}` must be above zero (seconds, e.g. 30 or 0.5)",
            v.trim()
        )));
    }
    Ok(secs)
}

fn first(get: &impl Fn(&str) -> Option<String>, keys: &[String]) -> Option<(String, String)> {
    keys.iter().find_map(|k| get(k).map(|v| (k.clone(), v)))
}

fn parse_u32(key: &str, v: &str) -> Result<u32> {
    v.trim().parse().map_err(|_| {
        Error::config(format!(
            "{key} = `{}` is not a whole number; use one such as 5",
            v.trim()
        ))
    })
}

fn parse_secs(key: &str, v: &str) -> Result<Duration> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            Error::config(format!(
                "{key} = `{}` is not a number of seconds (e.g. 30 or 0.5)",
                v.trim()
            ))
        })
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(Error::config(format!(
            "{key} = `{other}` is not a boolean; use true or false"
        ))),
    }
}

/// Builds a [`DatabaseConfig`] in code. Every setting has a default; only the
/// connection string is required.
#[derive(Clone)]
pub struct DatabaseConfigBuilder {
    name: String,
    url: Option<String>,
    url_source: Option<String>,
    kind: Option<BackendKind>,
    kind_source: Option<String>,
    pool_size: Option<u32>,
    max_overflow: u32,
    query_timeout: Option<Duration>,
    acquire_timeout: Duration,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_lifetime: Option<Duration>,
    validate_after_idle: Duration,
    leak_threshold: Option<Duration>,
    slow_query_threshold: Option<Duration>,
    health_timeout: Duration,
    degraded_after: Duration,
    metrics: bool,
    read_only: bool,
    migrations_dir: Option<PathBuf>,
    history_table: String,
    table_source: Option<String>,
    auto_migrate: bool,
    retry: RetryPolicy,
    breaker: BreakerSettings,
    pgbouncer: bool,
    var_stem: Option<String>,
}

impl fmt::Debug for DatabaseConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfigBuilder")
            .field("name", &self.name)
            .field("url", &self.url.as_deref().map(redact_url))
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl DatabaseConfigBuilder {
    fn new(name: String) -> Self {
        DatabaseConfigBuilder {
            name,
            url: None,
            url_source: None,
            kind: None,
            kind_source: None,
            pool_size: None,
            max_overflow: 10,
            query_timeout: Some(Duration::from_secs(30)),
            acquire_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Some(Duration::from_secs(1800)),
            validate_after_idle: Duration::from_secs(30),
            leak_threshold: Some(Duration::from_secs(300)),
            slow_query_threshold: Some(Duration::from_secs(2)),
            health_timeout: Duration::from_secs(5),
            degraded_after: Duration::from_secs(1),
            metrics: true,
            read_only: false,
            migrations_dir: None,
            history_table: "schema_version".to_owned(),
            table_source: None,
            auto_migrate: false,
            retry: RetryPolicy::default(),
            breaker: BreakerSettings {
                failures: 5,
                window: Duration::from_secs(60),
                recovery: Duration::from_secs(30),
            },
            pgbouncer: false,
            var_stem: None,
        }
    }

    /// The connection string (required). See the README for the accepted forms.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The backend, when it should not be inferred from the URL (it must agree
    /// with the URL).
    pub fn kind(mut self, kind: BackendKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Connections kept open in the pool. Default: [`default_pool_size`].
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = Some(n);
        self
    }

    /// Extra connections opened under load, each closed when returned with
    /// nobody waiting. Default 10
    /// (the seeds' SQLAlchemy default).
    pub fn max_overflow(mut self, n: u32) -> Self {
        self.max_overflow = n;
        self
    }

    /// Default limit on each statement; `None` for no limit. Default 30 s, the
    /// seeds' `DATABASE_TIMEOUT`.
    pub fn query_timeout(mut self, t: Option<Duration>) -> Self {
        self.query_timeout = t;
        self
    }

    /// How long a caller waits for a pooled connection before
    /// [`ErrorKind::PoolTimeout`](crate::ErrorKind::PoolTimeout). Default 30 s
    /// (SQLAlchemy's `pool_timeout`).
    pub fn acquire_timeout(mut self, t: Duration) -> Self {
        self.acquire_timeout = t;
        self
    }

    /// How long establishing one connection may take. Default 10 s.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// How long any connection may sit idle in the pool before it is closed
    /// (connections beyond `pool_size` are closed as soon as they are
    /// returned with nobody waiting). Default 10 min.
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// Age after which a connection is replaced; `None` for never. Default
    /// 30 min (SQLAlchemy's `pool_recycle` in the seeds), well under typical
    /// server and firewall idle limits.
    pub fn max_lifetime(mut self, t: Option<Duration>) -> Self {
        self.max_lifetime = t;
        self
    }

    /// A connection idle for longer than this is checked with a cheap ping
    /// before it is handed out; fresher ones are handed out without a round
    /// trip (as HikariCP does). Default 30 s.
    pub fn validate_after_idle(mut self, t: Duration) -> Self {
        self.validate_after_idle = t;
        self
    }

    /// A connection held out of the pool for longer than this is reported
    /// once as a suspected leak (a `tracing` warning naming where it was
    /// checked out, and a count in [`PoolStatus`](crate::PoolStatus)); `None`
    /// turns the report off. Default 5 min: longer than any statement under
    /// the default 30 s timeout, short enough to be noticed in a batch job.
    pub fn leak_threshold(mut self, t: Option<Duration>) -> Self {
        self.leak_threshold = t;
        self
    }

    /// Statements slower than this are logged once at `warn` (normalised
    /// SQL, never parameter values) and counted in `db_slow_query_count`;
    /// `None` turns that off. Default 2 s: well above an OLTP statement,
    /// well under the 30 s query timeout.
    pub fn slow_query_threshold(mut self, t: Option<Duration>) -> Self {
        self.slow_query_threshold = t;
        self
    }

    /// The time limit of a whole health check (waiting for a connection and
    /// `SELECT 1`); past it the database is reported `unhealthy`. Default 5 s:
    /// a health check must answer well inside a typical probe's timeout.
    pub fn health_timeout(mut self, t: Duration) -> Self {
        self.health_timeout = t;
        self
    }

    /// A health check that answers but takes longer than this reports
    /// `degraded`. Default 1 s.
    pub fn degraded_after(mut self, t: Duration) -> Self {
        self.degraded_after = t;
        self
    }

    /// Record Prometheus metrics for this database. Default `true` (the
    /// cost is a few atomic operations per statement).
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// Refuse writes and migrations. Default `false`.
    pub fn read_only(mut self, on: bool) -> Self {
        self.read_only = on;
        self
    }

    /// The folder migrations are read from (`{PREFIX}{NAME}_MIGRATIONS_DIR`).
    /// Default `migrations/{database name}`, relative to the working
    /// directory, as in seed 002.
    pub fn migrations_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.migrations_dir = Some(dir.into());
        self
    }

    /// The migration history table (`{PREFIX}{NAME}_MIGRATIONS_TABLE`):
    /// a plain identifier, optionally `schema.table`. Default
    /// `schema_version`, the table of seed 002 (and Flyway's old default).
    pub fn history_table(mut self, table: impl Into<String>) -> Self {
        self.history_table = table.into();
        self
    }

    /// Run migrations when [`DatabaseManager::new`](crate::DatabaseManager::new)
    /// creates the manager (`{PREFIX}{NAME}_AUTO_MIGRATE`). Default `false`:
    /// a schema change should be a decision, not a side effect of starting.
    pub fn auto_migrate(mut self, on: bool) -> Self {
        self.auto_migrate = on;
        self
    }

    /// How transient failures are retried (see [`RetryPolicy`]; per call,
    /// [`DatabaseManager::with_retry`](crate::DatabaseManager::with_retry)).
    /// Default [`RetryPolicy::default`]: 3 attempts, 100 ms base delay, 10 s
    /// cap, 30 s budget, reads and whole transactions only (seed 003's
    /// `retry_with_backoff`). Variables `RETRY_ATTEMPTS`, `RETRY_BASE_DELAY`,
    /// `RETRY_MAX_DELAY`, `RETRY_BUDGET` (seconds), `RETRY_WRITES`.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Connection-level failures (failing to open a connection, connect and
    /// pool timeouts, statements whose connection had to be cut because the
    /// server stopped answering) within
    /// [`circuit_window`](Self::circuit_window) that open the circuit
    /// breaker, after which calls fail at once with
    /// [`CircuitOpen`](crate::ErrorKind::CircuitOpen) instead of each waiting
    /// for its own timeout; 0 turns the breaker off. SQL errors never count.
    /// Default 5 (seed 003's `failure_threshold`).
    pub fn circuit_failures(mut self, n: u32) -> Self {
        self.breaker.failures = n;
        self
    }

    /// The window in which [`circuit_failures`](Self::circuit_failures) are
    /// counted (a call that reaches the server resets the count). Default
    /// 60 s (seed 003's `window_size`).
    pub fn circuit_window(mut self, t: Duration) -> Self {
        self.breaker.window = t;
        self
    }

    /// How long an open breaker fails calls before it lets one call probe
    /// the database with the health-check query (`SELECT 1`): an answer
    /// closes it, a failure opens it for this long again. Default 30 s (seed
    /// 003's `recovery_timeout`): long enough for a restart, short enough
    /// that a batch job resumes soon after.
    pub fn circuit_recovery(mut self, t: Duration) -> Self {
        self.breaker.recovery = t;
        self
    }

    /// The PostgreSQL server is reached through pgbouncer in transaction
    /// pooling mode, where each transaction (each statement outside one) may
    /// run on another server connection, shared with other clients. So no
    /// session state is relied on or set: statements are sent unnamed (no
    /// named prepared statements, which another server connection would not
    /// know); statement limits are set with `SET LOCAL` inside transactions
    /// only (outside one the watchdog alone limits a statement); with
    /// `read_only`, each statement outside a transaction runs in a
    /// `BEGIN READ ONLY` transaction of its own and transactions begin
    /// `READ ONLY` (statements that end a transaction, and scripts that are
    /// not plain reads, are refused); the migration lock is a row of a lock
    /// table, not a session advisory lock; and a pooled connection given
    /// back inside a transaction is rolled back (server sessions are
    /// pgbouncer's to reset). A timed-out statement is cancelled with
    /// PostgreSQL's own cancel request, sent to pgbouncer, which forwards
    /// it; the request's connection is kept open until pgbouncer closes it
    /// (pgbouncer 1.18 drops a cancel request whose client left before it
    /// was forwarded). Also set by `pgbouncer=true` in the connection
    /// string's query. Default `false`: only the user knows a pooler sits in
    /// between.
    pub fn pgbouncer(mut self, on: bool) -> Self {
        self.pgbouncer = on;
        self
    }

    /// Validates and builds the configuration.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the URL is missing
    /// or malformed, disagrees with the kind, or a size or timeout is out of
    /// range.
    pub fn build(self) -> Result<DatabaseConfig> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err(Error::config(EMPTY_NAME));
        }
        let url_label = self
            .url_source
            .clone()
            .unwrap_or_else(|| "the connection string".to_owned());
        let url = self.url.ok_or_else(|| {
            Error::config(format!(
                "no connection string for database `{name}`: call .url(…) on the builder"
            ))
        })?;
        let inferred = kind_of_url(&url).map_err(|why| {
            Error::config(format!(
                "{url_label} cannot be used: {why}; expected a URL such as \
                     postgresql://user:password@host:5432/database, \
                     mysql://user:password@host:3306/database or sqlite:path/to/file.db"
            ))
        })?;
        if let Some(k) = self.kind {
            if k != inferred {
                let kind_label = self.kind_source.as_deref().unwrap_or("the configured type");
                return Err(Error::config(format!(
                    "{kind_label} says {k} but {url_label} is a {inferred} URL; make them agree"
                )));
            }
        }
        let pool_size = self.pool_size.unwrap_or_else(default_pool_size);
        if pool_size == 0 {
            return Err(Error::config(format!(
                "pool size for `{name}` is 0; it must be at least 1"
            )));
        }
        if pool_size.saturating_add(self.max_overflow) > 10_000 {
            return Err(Error::config(format!(
                "pool size + max overflow for `{name}` exceeds 10000"
            )));
        }
        if self.acquire_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::config(format!(
                "the acquisition and connect timeouts of `{name}` must be above zero"
            )));
        }
        if self.breaker.failures > 0
            && (self.breaker.window.is_zero() || self.breaker.recovery.is_zero())
        {
            return Err(Error::config(format!(
                "the circuit-breaker window and recovery time of `{name}` must be above zero \
                 (or set the failure count to 0 to turn the breaker off)"
            )));
        }
        if self.health_timeout.is_zero() {
            return Err(Error::config(format!(
                "the health-check timeout of `{name}` must be above zero"
            )));
        }
        if !crate::sql::is_plain_identifier(&self.history_table) {
            let label = self
                .table_source
                .clone()
                .unwrap_or_else(|| "the migration history table".to_owned());
            return Err(Error::config(format!(
                "{label} = `{}` is not a plain table name; use letters, digits and `_` \
                 (starting with a letter or `_`), optionally `schema.table`, at most 63 characters",
                self.history_table
            )));
        }
        let migrations_dir = self
            .migrations_dir
            .unwrap_or_else(|| Path::new("migrations").join(name));
        let pgbouncer = self.pgbouncer || url_asks_pgbouncer(&url);
        Ok(DatabaseConfig {
            name: Arc::from(name),
            kind: inferred,
            url,
            pool_size,
            max_overflow: self.max_overflow,
            query_timeout: self.query_timeout.filter(|t| !t.is_zero()),
            acquire_timeout: self.acquire_timeout,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            max_lifetime: self.max_lifetime,
            validate_after_idle: self.validate_after_idle,
            leak_threshold: self.leak_threshold.filter(|t| !t.is_zero()),
            slow_query_threshold: self.slow_query_threshold.filter(|t| !t.is_zero()),
            health_timeout: self.health_timeout,
            degraded_after: self.degraded_after,
            metrics: self.metrics,
            read_only: self.read_only,
            migrations_dir,
            history_table: self.history_table,
            auto_migrate: self.auto_migrate,
            retry: self.retry,
            breaker: self.breaker,
            pgbouncer,
            var_stem: self.var_stem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn names_become_variable_stems() {
        assert_eq!(env_stem("rpa_db"), "RPA_DB");
        assert_eq!(env_stem("SurveyHub"), "SURVEYHUB");
        assert_eq!(env_stem("my-db.main"), "MY_DB_MAIN");
        assert_eq!(env_prefix("development"), "DEVELOPMENT_GLOBAL_");
    }

    #[test]
    fn reads_every_variable() -> Result<()> {
        let cfg = DatabaseConfig::from_lookup(
            "rpa_db",
            lookup(&[
                ("ENVIRONMENT", "staging"),
                (
                    "STAGING_GLOBAL_RPA_DB_CONNECTION_STRING",
                    "postgresql://u:pw@h:5432/d",
                ),
                ("STAGING_GLOBAL_RPA_DB_TYPE", "postgresql"),
                ("STAGING_GLOBAL_RPA_DB_POOL_SIZE", "7"),
                ("STAGING_GLOBAL_RPA_DB_MAX_OVERFLOW", "3"),
                ("STAGING_GLOBAL_RPA_DB_TIMEOUT", "2.5"),
                ("STAGING_GLOBAL_RPA_DB_POOL_TIMEOUT", "4"),
                ("STAGING_GLOBAL_RPA_DB_CONNECT_TIMEOUT", "5"),
                ("STAGING_GLOBAL_RPA_DB_IDLE_TIMEOUT", "60"),
                ("STAGING_GLOBAL_RPA_DB_MAX_LIFETIME", "0"),
                ("STAGING_GLOBAL_RPA_DB_READ_ONLY", "true"),
            ]),
        )?;
        assert_eq!(cfg.kind(), BackendKind::Postgres);
        assert_eq!(
            (cfg.pool_size(), cfg.max_overflow(), cfg.max_size()),
            (7, 3, 10)
        );
        assert_eq!(cfg.query_timeout(), Some(Duration::from_millis(2500)));
        assert_eq!(cfg.acquire_timeout(), Duration::from_secs(4));
        assert_eq!(cfg.connect_timeout(), Duration::from_secs(5));
        assert_eq!(cfg.idle_timeout(), Duration::from_secs(60));
        assert_eq!(cfg.max_lifetime(), None);
        assert!(cfg.read_only());
        Ok(())
    }

    #[test]
    fn reads_the_resilience_variables() -> Result<()> {
        let cfg = DatabaseConfig::from_lookup(
            "rpa_db",
            lookup(&[
                (
                    "DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING",
                    "postgresql://u:pw@h:5432/d",
                ),
                ("DEVELOPMENT_GLOBAL_RPA_DB_RETRY_ATTEMPTS", "5"),
                ("DEVELOPMENT_GLOBAL_RPA_DB_RETRY_BASE_DELAY", "0.05"),
                ("DEVELOPMENT_GLOBAL_RPA_DB_RETRY_MAX_DELAY", "2"),
                ("DEVELOPMENT_GLOBAL_RPA_DB_RETRY_BUDGET", "12"),
                ("DEVELOPMENT_GLOBAL_RPA_DB_RETRY_WRITES", "true"),
                ("DEVELOPMENT_GLOBAL_RPA_DB_CIRCUIT_FAILURES", "0"),
                ("DEVELOPMENT_GLOBAL_RPA_DB_CIRCUIT_WINDOW", "10"),
                ("DEVELOPMENT_GLOBAL_RPA_DB_CIRCUIT_RECOVERY", "3"),
                ("DEVELOPMENT_GLOBAL_RPA_DB_PGBOUNCER", "yes"),
            ]),
        )?;
        let r = cfg.retry_policy();
        assert_eq!(r.attempts, 5);
        assert_eq!(r.base_delay, Duration::from_millis(50));
        assert_eq!(r.max_delay, Duration::from_secs(2));
        assert_eq!(r.budget, Duration::from_secs(12));
        assert!(r.retry_writes);
        assert_eq!(cfg.circuit_failures(), 0);
        assert_eq!(cfg.circuit_window(), Duration::from_secs(10));
        assert_eq!(cfg.circuit_recovery(), Duration::from_secs(3));
        assert!(cfg.pgbouncer());

        // Defaults: the seeds' numbers.
        let d = DatabaseConfig::builder("d")
            .url("sqlite::memory:")
            .build()?;
        assert_eq!(d.retry_policy(), RetryPolicy::default());
        assert_eq!(
            (
                d.circuit_failures(),
                d.circuit_window(),
                d.circuit_recovery()
            ),
            (5, Duration::from_secs(60), Duration::from_secs(30))
        );
        assert!(!d.pgbouncer());
        let u = DatabaseConfig::builder("u")
            .url("postgresql://u:pw@h/d?pgbouncer=true")
            .build()?;
        assert!(u.pgbouncer());

        let e = DatabaseConfig::from_lookup(
            "rpa_db",
            lookup(&[
                (
                    "DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING",
                    "sqlite::memory:",
                ),
                ("DEVELOPMENT_GLOBAL_RPA_DB_RETRY_ATTEMPTS", "0"),
            ]),
        )
        .expect_err("zero attempts");
        assert!(
            e.to_string()
                .contains("DEVELOPMENT_GLOBAL_RPA_DB_RETRY_ATTEMPTS"),
            "{e}"
        );
        let e = DatabaseConfig::from_lookup(
            "rpa_db",
            lookup(&[
                (
                    "DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING",
                    "sqlite::memory:",
                ),
                ("DEVELOPMENT_GLOBAL_RPA_DB_CIRCUIT_RECOVERY", "soon"),
            ]),
        )
        .expect_err("not a number");
        assert!(
            e.to_string()
                .contains("DEVELOPMENT_GLOBAL_RPA_DB_CIRCUIT_RECOVERY"),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn globals_apply_when_the_database_sets_nothing() -> Result<()> {
        let cfg = DatabaseConfig::from_lookup(
            "rpa_db",
            lookup(&[
                (
                    "DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING",
                    "sqlite::memory:",
                ),
                ("DEVELOPMENT_GLOBAL_DATABASE_TIMEOUT", "12"),
                ("DEVELOPMENT_GLOBAL_CONNECTION_POOL_SIZE", "3"),
            ]),
        )?;
        assert_eq!(cfg.pool_size(), 3);
        assert_eq!(cfg.query_timeout(), Some(Duration::from_secs(12)));
        let cfg = DatabaseConfig::from_lookup(
            "rpa_db",
            lookup(&[
                (
                    "DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING",
                    "sqlite::memory:",
                ),
                ("DEVELOPMENT_GLOBAL_RPA_DB_TIMEOUT", "0"),
                ("DEVELOPMENT_GLOBAL_DATABASE_TIMEOUT", "12"),
            ]),
        )?;
        assert_eq!(
            cfg.query_timeout(),
            None,
            "per-database 0 disables and wins"
        );
        assert_eq!(cfg.pool_size(), default_pool_size());
        Ok(())
    }

    #[test]
    fn missing_url_names_the_variable() {
        let e = DatabaseConfig::from_lookup("SurveyHub", lookup(&[])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(
            e.to_string()
                .contains("set DEVELOPMENT_GLOBAL_SURVEYHUB_CONNECTION_STRING"),
            "{e}"
        );
    }

    #[test]
    fn malformed_values_name_the_variable_without_secrets() {
        let cases: &[(&str, &str, &str)] = &[
            ("X_POOL_SIZE", "five", "DEVELOPMENT_GLOBAL_X_POOL_SIZE"),
            ("X_MAX_OVERFLOW", "-1", "DEVELOPMENT_GLOBAL_X_MAX_OVERFLOW"),
            ("X_TIMEOUT", "soon", "DEVELOPMENT_GLOBAL_X_TIMEOUT"),
            ("X_READ_ONLY", "maybe", "DEVELOPMENT_GLOBAL_X_READ_ONLY"),
            ("X_TYPE", "oracle", "DEVELOPMENT_GLOBAL_X_TYPE"),
            ("X_TYPE", "mysql", "DEVELOPMENT_GLOBAL_X_TYPE"),
            (
                "X_POOL_SIZE",
                "0",
                "DEVELOPMENT_GLOBAL_X_POOL_SIZE = 0; it must be at least 1",
            ),
        ];
        for (suffix, value, expect) in cases {
            let key = format!("DEVELOPMENT_GLOBAL_{suffix}");
            let e = DatabaseConfig::from_lookup(
                "x",
                lookup(&[
                    (
                        "DEVELOPMENT_GLOBAL_X_CONNECTION_STRING",
                        "postgresql://u:hunter2@h/d",
                    ),
                    (&key, value),
                ]),
            )
            .unwrap_err();
            let text = format!("{e} {e:?}");
            assert!(text.contains(expect), "{suffix}={value}: {text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn urls_infer_the_backend() {
        let ok = [
            ("postgresql://u:p@h/d", BackendKind::Postgres),
            ("postgres://h/d", BackendKind::Postgres),
            ("postgresql+psycopg2://u@h/d", BackendKind::Postgres),
            ("mysql://u:p@h:3306/d", BackendKind::MySql),
            ("mariadb://u:p@h/d", BackendKind::MySql),
            ("sqlite::memory:", BackendKind::Sqlite),
            ("sqlite:data/app.db", BackendKind::Sqlite),
            ("sqlite:///tmp/app.db", BackendKind::Sqlite),
            ("mssql://u:p@h:1433/d", BackendKind::MsSql),
            ("sqlserver://h/d", BackendKind::MsSql),
            (
                "mssql+pyodbc://user:pass@server:1433/survey_hub?driver=ODBC+Driver+17+for+SQL+Server",
                BackendKind::MsSql,
            ),
            (
                "Server=tcp:db.example,1433;Database=hub;User Id=app;Password=p;Encrypt=true",
                BackendKind::MsSql,
            ),
        ];
        for (url, kind) in ok {
            assert_eq!(kind_of_url(url), Ok(kind), "{url}");
        }
        for bad in [
            "",
            "   ",
            "oracle://u:secretpw@h/d",
            "postgresql://",
            "just words",
            "k=v;x=y",
            "postgresql://u:secretpw@:5432/d",
        ] {
            let e = kind_of_url(bad).unwrap_err();
            assert!(!e.contains("secretpw"), "{e}");
        }
    }

    #[test]
    fn redaction_hides_passwords_in_every_form() {
        for url in [
            "postgresql://app:s3cr%21t@h:5432/d?sslmode=require",
            "mysql://app:s3cr%21t@h/d",
            "postgresql://h/d?user=app&password=s3cr%21t",
            "Server=h,1433;User Id=app;Password=s3cr%21t;Encrypt=true",
            "Server=h;PWD=s3cr%21t",
            "Server=tcp:h,1433;User Id=app;Password=\"s3cr;t\";Encrypt=true",
            "Server=h;Password='s3cr;t'",
            "Server=h;Password={s3cr}};t}",
            "mssql+pyodbc://u:s3cret@h:1433/d?TrustServerCertificate=yes&Encrypt=yes",
            "mssql+pyodbc://h/?odbc_connect=DRIVER%3D%7BODBC%7D%3BSERVER%3Dh%3BUID%3Du%3BPWD%3Ds3cret",
        ] {
            let r = redact_url(url);
            assert!(!r.contains("s3cr"), "{url} -> {r}");
            assert!(r.contains("***"), "{url} -> {r}");
        }
        let cfg = DatabaseConfig::builder("a")
            .url("postgresql://app:topsecret@h/d")
            .build()
            .unwrap();
        let dbg = format!(
            "{cfg:?} {:?}",
            DatabaseConfig::builder("a").url("mysql://u:topsecret@h/d")
        );
        assert!(!dbg.contains("topsecret"), "{dbg}");
    }

    #[test]
    fn env_file_is_read_and_process_env_wins() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("dbm-envtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".env.development");
        std::fs::write(
            &path,
            "# comment\nDEVELOPMENT_GLOBAL_A_CONNECTION_STRING=\"sqlite::memory:\"\nDEVELOPMENT_GLOBAL_A_POOL_SIZE=4\n",
        )
        .unwrap();
        let file = EnvFile::read(&path)?;
        let process = lookup(&[("DEVELOPMENT_GLOBAL_A_POOL_SIZE", "9")]);
        let cfg = from_sources(
            "a",
            |k| process(k).or_else(|| file.get(k)),
            &file.describe(),
        )?;
        assert_eq!(cfg.kind(), BackendKind::Sqlite);
        assert_eq!(cfg.pool_size(), 9);

        std::fs::write(
            &path,
            "DEVELOPMENT_GLOBAL_A_CONNECTION_STRING='unterminated-secret\n",
        )
        .unwrap();
        let e = EnvFile::read(&path)
            .err()
            .expect("malformed file is an error");
        assert!(e.to_string().contains(".env.development"), "{e}");
        assert!(!e.to_string().contains("unterminated-secret"), "{e}");

        let missing = EnvFile::read(&dir.join(".env.nope"))?;
        let e = from_sources("a", |k| missing.get(k), &missing.describe()).unwrap_err();
        assert!(e.to_string().contains(".env.nope does not exist"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}
