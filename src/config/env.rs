//! Reading a configuration from the environment and `.env` files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::builder::EMPTY_NAME;
use super::DatabaseConfig;
use crate::error::{Error, Result};
use crate::status::BackendKind;

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

/// Where [`DatabaseConfig::from_env`] looks for `.env` files when
/// `DBMANAGER_ENV_DIR` is not set.
pub const DEFAULT_ENV_DIR: &str = "envs";

/// Suffixes of the per-database variables, after `{PREFIX}{NAME}_`.
pub(super) mod var {
    pub(crate) const URL: &str = "CONNECTION_STRING";
    pub(crate) const TYPE: &str = "TYPE";
    pub(crate) const POOL_SIZE: &str = "POOL_SIZE";
    pub(crate) const MAX_OVERFLOW: &str = "MAX_OVERFLOW";
    pub(crate) const TIMEOUT: &str = "TIMEOUT";
    pub(crate) const POOL_TIMEOUT: &str = "POOL_TIMEOUT";
    pub(crate) const CONNECT_TIMEOUT: &str = "CONNECT_TIMEOUT";
    pub(crate) const IDLE_TIMEOUT: &str = "IDLE_TIMEOUT";
    pub(crate) const MAX_LIFETIME: &str = "MAX_LIFETIME";
    pub(crate) const READ_ONLY: &str = "READ_ONLY";
    pub(crate) const LEAK_THRESHOLD: &str = "LEAK_THRESHOLD";
    pub(crate) const SLOW_QUERY_THRESHOLD: &str = "SLOW_QUERY_THRESHOLD";
    pub(crate) const HEALTH_TIMEOUT: &str = "HEALTH_TIMEOUT";
    pub(crate) const DEGRADED_THRESHOLD: &str = "DEGRADED_THRESHOLD";
    pub(crate) const METRICS: &str = "METRICS";
    pub(crate) const MIGRATIONS_DIR: &str = "MIGRATIONS_DIR";
    pub(crate) const MIGRATIONS_TABLE: &str = "MIGRATIONS_TABLE";
    pub(crate) const AUTO_MIGRATE: &str = "AUTO_MIGRATE";
    pub(crate) const RETRY_ATTEMPTS: &str = "RETRY_ATTEMPTS";
    pub(crate) const RETRY_BASE_DELAY: &str = "RETRY_BASE_DELAY";
    pub(crate) const RETRY_MAX_DELAY: &str = "RETRY_MAX_DELAY";
    pub(crate) const RETRY_BUDGET: &str = "RETRY_BUDGET";
    pub(crate) const RETRY_WRITES: &str = "RETRY_WRITES";
    pub(crate) const CIRCUIT_FAILURES: &str = "CIRCUIT_FAILURES";
    pub(crate) const CIRCUIT_WINDOW: &str = "CIRCUIT_WINDOW";
    pub(crate) const CIRCUIT_RECOVERY: &str = "CIRCUIT_RECOVERY";
    pub(crate) const PGBOUNCER: &str = "PGBOUNCER";
    pub(crate) const GLOBAL_TIMEOUT: &str = "DATABASE_TIMEOUT";
    pub(crate) const GLOBAL_POOL_SIZE: &str = "CONNECTION_POOL_SIZE";
}

impl DatabaseConfig {
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

/// Parses a `_TYPE` value (case-insensitive): `postgresql`/`postgres`/`pg`,
/// `mysql`/`mariadb`, `sqlite`/`sqlite3`, `sqlserver`/`mssql`.
fn kind_from_type_name(s: &str) -> Option<BackendKind> {
    match s.trim().to_ascii_lowercase().as_str() {
        "postgresql" | "postgres" | "pg" => Some(BackendKind::Postgres),
        "mysql" | "mariadb" => Some(BackendKind::MySql),
        "sqlite" | "sqlite3" => Some(BackendKind::Sqlite),
        "sqlserver" | "mssql" => Some(BackendKind::MsSql),
        _ => None,
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
        let kind = kind_from_type_name(&t).ok_or_else(|| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::RetryPolicy;
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
        assert_eq!(r.max_attempts(), 5);
        assert_eq!(r.base(), Duration::from_millis(50));
        assert_eq!(r.cap(), Duration::from_secs(2));
        assert_eq!(r.total_budget(), Duration::from_secs(12));
        assert!(r.retries_writes());
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
