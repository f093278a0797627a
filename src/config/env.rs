//! Reading a configuration from the environment and `.env` files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::builder::EMPTY_NAME;
use super::{DatabaseConfig, DatabaseConfigBuilder};
use crate::error::{Error, Result};
use crate::status::BackendKind;

/// Upper-cases a database or environment name into the stem of its
/// variable names, as [`DatabaseConfig::from_env`] reads them: `rpa_db` →
/// `RPA_DB`, `SurveyHub` → `SURVEYHUB`, `my-db.main` → `MY_DB_MAIN`. So
/// `rpa_db` in the `development` environment reads
/// `DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING`.
///
/// ```
/// assert_eq!(dbmanager::variable_stem("my-db.main"), "MY_DB_MAIN");
/// ```
pub fn variable_stem(name: &str) -> String {
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
pub(crate) fn env_prefix(environment: &str) -> String {
    format!("{}_GLOBAL_", variable_stem(environment))
}

/// The default pool size: twice the CPU count plus one, between 2 and 32.
///
/// This is the rule of thumb PostgreSQL's wiki and HikariCP give for a pool
/// (`cores × 2 + effective spindles`): a database connection spends part of
/// its time waiting on I/O, so about two per core keep the CPUs busy without
/// queueing work on the server. On a 2-core machine it gives 5, the Python system's
/// default.
pub(crate) fn default_pool_size() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus as u32)
        .saturating_mul(2)
        .saturating_add(1)
        .clamp(2, 32)
}

/// Where [`DatabaseConfig::from_env`] looks for `.env` files when
/// `DBMANAGER_ENV_DIR` is not set.
pub(crate) const DEFAULT_ENV_DIR: &str = "envs";

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
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the `.env` file
    /// cannot be read or parsed (its text is never quoted), or naming the
    /// variable that is missing, malformed or out of range (see
    /// [`DatabaseConfigBuilder::build`]) and where it was looked up.
    pub fn from_env(name: &str) -> Result<DatabaseConfig> {
        let process = |k: &str| std::env::var(k).ok();
        let dir = process("DBMANAGER_ENV_DIR").unwrap_or_else(|| DEFAULT_ENV_DIR.to_owned());
        // Absolute, so that a message names the folder it looked in whatever
        // the current folder was.
        let dir = std::path::absolute(&dir).unwrap_or_else(|_| PathBuf::from(&dir));
        let environment = process("ENVIRONMENT").unwrap_or_else(|| "development".to_owned());
        let file = EnvFile::read(&dir.join(format!(".env.{}", environment.to_lowercase())))?;
        if !name.trim().is_empty() {
            let stem = format!("{}{}_", env_prefix(&environment), variable_stem(name));
            let names = std::env::vars_os()
                .filter_map(|(k, _)| k.into_string().ok())
                .chain(file.names());
            for warning in unknown_settings(&stem, names) {
                tracing::warn!(database = name, "{warning}");
            }
        }
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
    /// is missing, malformed or out of range (see
    /// [`DatabaseConfigBuilder::build`]).
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

    /// The names of the file's variables (never their values).
    fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.vars.iter().flat_map(|vars| vars.keys().cloned())
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

/// The suffix of the connection string's variable, `{PREFIX}{NAME}_CONNECTION_STRING`.
const URL: &str = "CONNECTION_STRING";

/// The suffix of the query timeout's variable, also named in timeout errors.
pub(super) const TIMEOUT: &str = "TIMEOUT";

type B = DatabaseConfigBuilder;

/// One setting read from the environment: the variable, how its text is
/// parsed, and the builder method that takes the value.
struct Setting {
    /// The variable is `{PREFIX}{NAME}_{suffix}`.
    suffix: &'static str,
    /// When the database's own variable is unset, `{PREFIX}{global}` is read
    /// (a default for every database of the environment).
    global: Option<&'static str>,
    /// The builder method the value goes to. When
    /// [`build`](DatabaseConfigBuilder::build) refuses the value, it looks
    /// this up to name the variable rather than the method.
    setter: &'static str,
    /// How the text is parsed, and the setter that takes the value.
    parse: Parse,
}

/// How a variable's text is parsed, each with the setter taking the value.
/// Surrounding blanks are ignored; an empty variable counts as unset.
#[derive(Clone, Copy)]
enum Parse {
    /// A backend name: `postgresql`, `mysql`, `sqlite` or `sqlserver` (see
    /// [`kind_from_type_name`]).
    Kind(fn(B, BackendKind) -> B),
    /// A whole number: `5`.
    Count(fn(B, u32) -> B),
    /// A whole number of at least 1; the text says what is wrong with 0.
    CountFromOne(&'static str, fn(B, u32) -> B),
    /// Seconds, fractions allowed: `30`, `0.5`.
    Secs(fn(B, Duration) -> B),
    /// Seconds above zero.
    PositiveSecs(fn(B, Duration) -> B),
    /// Seconds, `0` turning the setting off (`None`).
    SecsOrOff(fn(B, Option<Duration>) -> B),
    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    Flag(fn(B, bool) -> B),
    /// Text, such as a path or a table name.
    Text(fn(B, &str) -> B),
    /// `name=value` pairs separated by commas.
    Pairs(fn(B, &str, &str) -> B),
}

const fn setting(suffix: &'static str, setter: &'static str, parse: Parse) -> Setting {
    Setting {
        suffix,
        global: None,
        setter,
        parse,
    }
}

impl Setting {
    const fn or_global(mut self, global: &'static str) -> Setting {
        self.global = Some(global);
        self
    }
}

use Parse::*;

const ATTEMPTS_FROM_ONE: &str = "it counts the first attempt too, so use 1 for no retry";

/// Every setting read by [`DatabaseConfig::from_env`] besides the connection
/// string, in the order they are read (the first malformed one is reported).
/// A new setting is one row here, its builder method, and its line in the
/// README's table of variables.
#[rustfmt::skip]
const SETTINGS: &[Setting] = &[
    //      {PREFIX}{NAME}_…        builder method, named in build()'s errors     parsed as, and set by
    setting("TYPE",                 "DatabaseConfigBuilder::kind",                 Kind(B::kind)),
    setting("POOL_SIZE",            "DatabaseConfigBuilder::pool_size",            CountFromOne("it must be at least 1", B::pool_size)).or_global("CONNECTION_POOL_SIZE"),
    setting("MAX_OVERFLOW",         "DatabaseConfigBuilder::max_overflow",         Count(B::max_overflow)),
    setting(TIMEOUT,                "DatabaseConfigBuilder::query_timeout",        SecsOrOff(B::query_timeout)).or_global("DATABASE_TIMEOUT"),
    setting("POOL_TIMEOUT",         "DatabaseConfigBuilder::acquire_timeout",      PositiveSecs(B::acquire_timeout)),
    setting("CONNECT_TIMEOUT",      "DatabaseConfigBuilder::connect_timeout",      PositiveSecs(B::connect_timeout)),
    setting("IDLE_TIMEOUT",         "DatabaseConfigBuilder::idle_timeout",         Secs(B::idle_timeout)),
    setting("MAX_LIFETIME",         "DatabaseConfigBuilder::max_lifetime",         SecsOrOff(B::max_lifetime)),
    setting("LEAK_THRESHOLD",       "DatabaseConfigBuilder::leak_threshold",       SecsOrOff(B::leak_threshold)),
    setting("SLOW_QUERY_THRESHOLD", "DatabaseConfigBuilder::slow_query_threshold", SecsOrOff(B::slow_query_threshold)),
    setting("HEALTH_TIMEOUT",       "DatabaseConfigBuilder::health_timeout",       Secs(B::health_timeout)),
    setting("DEGRADED_THRESHOLD",   "DatabaseConfigBuilder::degraded_after",       Secs(B::degraded_after)),
    setting("METRICS",              "DatabaseConfigBuilder::metrics",              Flag(B::metrics)),
    setting("QUERY_CACHE_ENTRIES",  "DatabaseConfigBuilder::query_cache_entries",  Count(B::query_cache_entries)),
    setting("QUERY_CACHE_BYTES",    "DatabaseConfigBuilder::query_cache_bytes",    Count(|b, n| b.query_cache_bytes(n.into()))),
    setting("READ_ONLY",            "DatabaseConfigBuilder::read_only",            Flag(B::read_only)),
    setting("MIGRATIONS_DIR",       "DatabaseConfigBuilder::migrations_dir",       Text(|b, dir| b.migrations_dir(dir))),
    setting("MIGRATIONS_TABLE",     "DatabaseConfigBuilder::history_table",        Text(|b, table| b.history_table(table))),
    setting("AUTO_MIGRATE",         "DatabaseConfigBuilder::auto_migrate",         Flag(B::auto_migrate)),
    setting("MIGRATION_PLACEHOLDERS", "DatabaseConfigBuilder::migration_placeholder", Pairs(|b, n, v| b.migration_placeholder(n, v))),
    setting("MIGRATION_LOCK_WAIT",  "DatabaseConfigBuilder::migration_lock_wait",  SecsOrOff(B::migration_lock_wait)),
    setting("MIGRATIONS_STRICT",    "DatabaseConfigBuilder::migrations_strict",    Flag(B::migrations_strict)),
    setting("RETRY_ATTEMPTS",       "RetryPolicy::attempts",                       CountFromOne(ATTEMPTS_FROM_ONE, |b, n| b.map_retry(|r| r.attempts(n)))),
    setting("RETRY_BASE_DELAY",     "RetryPolicy::base_delay",                     Secs(|b, t| b.map_retry(|r| r.base_delay(t)))),
    setting("RETRY_MAX_DELAY",      "RetryPolicy::max_delay",                      Secs(|b, t| b.map_retry(|r| r.max_delay(t)))),
    setting("RETRY_BUDGET",         "RetryPolicy::budget",                         Secs(|b, t| b.map_retry(|r| r.budget(t)))),
    setting("RETRY_WRITES",         "RetryPolicy::retry_writes",                   Flag(|b, on| b.map_retry(|r| r.retry_writes(on)))),
    setting("CIRCUIT_FAILURES",     "DatabaseConfigBuilder::circuit_failures",     Count(B::circuit_failures)),
    setting("CIRCUIT_WINDOW",       "DatabaseConfigBuilder::circuit_window",       PositiveSecs(B::circuit_window)),
    setting("CIRCUIT_RECOVERY",     "DatabaseConfigBuilder::circuit_recovery",     PositiveSecs(B::circuit_recovery)),
    setting("PGBOUNCER",            "DatabaseConfigBuilder::pgbouncer",            Flag(B::pgbouncer)),
    setting("REPLICA_CONNECTION_STRING", "DatabaseConfigBuilder::replica_url",     Text(|b, url| b.replica_url(url))),
    setting("MAX_REPLICA_LAG",      "DatabaseConfigBuilder::max_replica_lag",      Secs(B::max_replica_lag)),
];

impl Parse {
    /// Parses `text` (the value of `var`) and hands it to the setter.
    ///
    /// # Errors
    ///
    /// What is wrong with the text, naming `var`.
    fn apply(self, b: B, var: &str, text: &str) -> std::result::Result<B, String> {
        let v = text.trim();
        Ok(match self {
            Kind(set) => set(
                b,
                kind_from_type_name(v).ok_or_else(|| {
                    format!("{var} = `{v}` is not a known type; use postgresql, mysql, sqlite or sqlserver")
                })?,
            ),
            Count(set) => set(b, parse_u32(var, v)?),
            CountFromOne(why_not_zero, set) => match parse_u32(var, v)? {
                0 => return Err(format!("{var} = 0; {why_not_zero}")),
                n => set(b, n),
            },
            Secs(set) => set(b, parse_secs(var, v)?),
            PositiveSecs(set) => match parse_secs(var, v)? {
                t if t.is_zero() => {
                    return Err(format!(
                        "{var} = `{v}` must be above zero (seconds, e.g. 30 or 0.5)"
                    ))
                }
                t => set(b, t),
            },
            SecsOrOff(set) => {
                let t = parse_secs(var, v)?;
                set(b, (!t.is_zero()).then_some(t))
            }
            Flag(set) => set(b, parse_bool(var, v)?),
            Text(set) => set(b, v),
            Pairs(set) => {
                let mut b = b;
                for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let (name, value) = pair
                        .split_once('=')
                        .filter(|(name, _)| !name.trim().is_empty())
                        .ok_or_else(|| {
                            format!("{var} = `{v}` is not a list of name=value pairs (`{pair}` is not one); separate them by commas, e.g. schema=app,owner=admin")
                        })?;
                    let name = name.trim();
                    b = set(b, name, value.trim());
                }
                b
            }
        })
    }
}

/// Reads the configuration of `name` through `lookup`; `looked_in` says
/// where `lookup` looks, for messages.
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
    let stem = format!("{prefix}{}_", variable_stem(name));
    let get = |key: String| {
        lookup(&key)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (key, v))
    };

    let (url_var, url) = get(format!("{stem}{URL}")).ok_or_else(|| {
        Error::config(format!(
            "database `{name}` is not configured: set {stem}{URL} (looked in {looked_in})"
        ))
    })?;
    let mut b = DatabaseConfig::builder(name)
        .url(url)
        .read_from(stem.clone(), looked_in);
    b.note_origin("DatabaseConfigBuilder::url", url_var, None);
    for s in SETTINGS {
        let found = get(format!("{stem}{}", s.suffix))
            .or_else(|| s.global.and_then(|g| get(format!("{prefix}{g}"))));
        if let Some((var, text)) = found {
            b = s
                .parse
                .apply(b, &var, &text)
                .map_err(|why| Error::config(format!("{why}; read from {looked_in}")))?;
            // A connection string's text is never kept for messages.
            let shown = (!s.suffix.ends_with(URL)).then(|| text.trim().to_owned());
            b.note_origin(s.setter, var, shown);
        }
    }
    b.build()
}

/// `{PREFIX}{NAME}_SHARDS`: the shard databases, comma-separated.
const SHARDS: &str = "SHARDS";
/// `{PREFIX}{NAME}_SHARD_RULE`: `hash` (default) or `range:B1,B2,…`.
const SHARD_RULE: &str = "SHARD_RULE";
/// `{PREFIX}{NAME}_SHARD_TIMEOUT`: seconds each shard's read may take in a
/// read over every shard.
const SHARD_TIMEOUT: &str = "SHARD_TIMEOUT";

/// What the environment says of the sharded database `name`: its shard
/// databases (each configured as usual), the rule, and the time limit of
/// each shard's part of a read over every shard.
///
/// # Errors
///
/// [`Config`](crate::ErrorKind::Config) naming the variable that is
/// missing or malformed.
pub(crate) fn shard_settings(
    name: &str,
) -> Result<(Vec<String>, super::ShardRule, Option<Duration>)> {
    let process = |k: &str| std::env::var(k).ok();
    let dir = process("DBMANAGER_ENV_DIR").unwrap_or_else(|| DEFAULT_ENV_DIR.to_owned());
    let dir = std::path::absolute(&dir).unwrap_or_else(|_| PathBuf::from(&dir));
    let environment = process("ENVIRONMENT").unwrap_or_else(|| "development".to_owned());
    let file = EnvFile::read(&dir.join(format!(".env.{}", environment.to_lowercase())))?;
    let get = |k: &str| {
        process(k)
            .or_else(|| file.get(k))
            .filter(|v| !v.trim().is_empty())
    };
    let stem = format!("{}{}_", env_prefix(&environment), variable_stem(name));
    let var = format!("{stem}{SHARDS}");
    let list = get(&var).ok_or_else(|| {
        Error::config(format!(
            "database `{name}` has no shards: set {var} to the shard databases, e.g. {name}_0,{name}_1 (looked in {})",
            file.describe()
        ))
    })?;
    let names: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
    if names.iter().any(String::is_empty) {
        return Err(Error::config(format!(
            "{var} has an empty shard name; write the shard databases comma-separated, e.g. {name}_0,{name}_1"
        )));
    }
    let rule_var = format!("{stem}{SHARD_RULE}");
    let rule =
        super::ShardRule::parse(&get(&rule_var).unwrap_or_default(), names.len(), &rule_var)?;
    let t_var = format!("{stem}{SHARD_TIMEOUT}");
    let timeout = match get(&t_var) {
        Some(t) => Some(parse_secs(&t_var, t.trim()).map_err(Error::config)?),
        None => None,
    };
    Ok((names, rule, timeout))
}

/// One message for each variable under the database's `stem`
/// (`DEVELOPMENT_GLOBAL_RPA_DB_`) that is not a setting, with the closest
/// setting when one is near (`POOLSIZE` → `POOL_SIZE`). Only names are
/// given and quoted: a value never reaches a message.
///
/// A variable that ends in `_{setting}` is taken to belong to another
/// database whose name starts with this one (`RPA_DB_OLD_POOL_SIZE` for
/// `rpa_db_old`), and is not reported.
pub(crate) fn unknown_settings(stem: &str, names: impl Iterator<Item = String>) -> Vec<String> {
    let suffixes: Vec<&str> = [URL, SHARDS, SHARD_RULE, SHARD_TIMEOUT]
        .into_iter()
        .chain(SETTINGS.iter().map(|s| s.suffix))
        .collect();
    let mut seen: Vec<String> = Vec::new();
    for var in names {
        let Some(rest) = var.strip_prefix(stem) else {
            continue;
        };
        if rest.is_empty()
            || suffixes.contains(&rest)
            || suffixes.iter().any(|s| rest.ends_with(&format!("_{s}")))
            || seen.contains(&var)
        {
            continue;
        }
        seen.push(var);
    }
    seen.sort();
    seen.iter()
        .map(|var| {
            let rest = &var[stem.len()..];
            let closest = suffixes
                .iter()
                .map(|s| (strsim::levenshtein(rest, s), *s))
                .min()
                .filter(|(d, s)| *d <= 2.max(s.len() / 3));
            match closest {
                Some((_, s)) => {
                    format!("{var} is not a setting and is ignored; did you mean `{stem}{s}`?")
                }
                None => format!(
                    "{var} is not a setting and is ignored (the settings are listed in the README)"
                ),
            }
        })
        .collect()
}

fn parse_u32(var: &str, v: &str) -> std::result::Result<u32, String> {
    v.parse()
        .map_err(|_| format!("{var} = `{v}` is not a whole number; use one such as 5"))
}

fn parse_secs(var: &str, v: &str) -> std::result::Result<Duration, String> {
    let secs = v
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| format!("{var} = `{v}` is not a number of seconds (e.g. 30 or 0.5)"))?;
    // Past what a Duration holds is past every bound, which `build()`
    // reports naming the variable.
    Ok(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}

fn parse_bool(var: &str, v: &str) -> std::result::Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!(
            "{var} = `{other}` is not a boolean; use true or false"
        )),
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
    fn unknown_variables_under_the_prefix_are_named_with_the_closest_setting() {
        let names = [
            "DEVELOPMENT_GLOBAL_RPA_DB_POOLSIZE",
            "DEVELOPMENT_GLOBAL_RPA_DB_POOL_SIZE",
            "DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING",
            "DEVELOPMENT_GLOBAL_RPA_DB_OLD_POOL_SIZE",
            "DEVELOPMENT_GLOBAL_RPA_DB_ZZZZZZZZZZZZZZ",
            "DEVELOPMENT_GLOBAL_OTHER_POOLSIZE",
        ]
        .map(String::from);
        let w = unknown_settings("DEVELOPMENT_GLOBAL_RPA_DB_", names.into_iter());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("DEVELOPMENT_GLOBAL_RPA_DB_POOLSIZE")
                && w[0].contains("did you mean `DEVELOPMENT_GLOBAL_RPA_DB_POOL_SIZE`"),
            "{w:?}"
        );
        assert!(
            w[1].contains("RPA_DB_ZZZZZZZZZZZZZZ") && !w[1].contains("did you mean"),
            "{w:?}"
        );
    }

    #[test]
    fn names_become_variable_stems() {
        assert_eq!(variable_stem("rpa_db"), "RPA_DB");
        assert_eq!(variable_stem("SurveyHub"), "SURVEYHUB");
        assert_eq!(variable_stem("my-db.main"), "MY_DB_MAIN");
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

        // Defaults: the Python system's numbers, but the breaker's recovery.
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
            (5, Duration::from_secs(60), Duration::from_millis(500))
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
    fn reads_the_observability_and_migration_variables() -> Result<()> {
        let cfg = DatabaseConfig::from_lookup(
            "rpa_db",
            lookup(&[
                (
                    "DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING",
                    "sqlite::memory:",
                ),
                ("DEVELOPMENT_GLOBAL_RPA_DB_LEAK_THRESHOLD", "0"),
                ("DEVELOPMENT_GLOBAL_RPA_DB_SLOW_QUERY_THRESHOLD", "0.25"),
                ("DEVELOPMENT_GLOBAL_RPA_DB_HEALTH_TIMEOUT", "3"),
                ("DEVELOPMENT_GLOBAL_RPA_DB_DEGRADED_THRESHOLD", "0.5"),
                ("DEVELOPMENT_GLOBAL_RPA_DB_METRICS", "off"),
                ("DEVELOPMENT_GLOBAL_RPA_DB_MIGRATIONS_DIR", " db/rpa "),
                ("DEVELOPMENT_GLOBAL_RPA_DB_MIGRATIONS_TABLE", "ops.history"),
                ("DEVELOPMENT_GLOBAL_RPA_DB_AUTO_MIGRATE", "1"),
            ]),
        )?;
        assert_eq!(cfg.leak_threshold(), None);
        assert_eq!(cfg.slow_query_threshold(), Some(Duration::from_millis(250)));
        assert_eq!(cfg.health_timeout(), Duration::from_secs(3));
        assert_eq!(cfg.degraded_after(), Duration::from_millis(500));
        assert!(!cfg.metrics());
        assert_eq!(cfg.migrations_dir(), Path::new("db/rpa"));
        assert_eq!(cfg.history_table(), "ops.history");
        assert!(cfg.auto_migrate());
        Ok(())
    }

    #[test]
    fn every_setting_names_its_variable_and_where_it_was_read() {
        let mut suffixes = std::collections::HashSet::new();
        for s in SETTINGS {
            assert!(
                suffixes.insert(s.suffix),
                "{} is in the table twice",
                s.suffix
            );
            let bad = match s.parse {
                Kind(_) => "oracle",
                Count(_) | CountFromOne(..) => "many",
                Secs(_) | PositiveSecs(_) | SecsOrOff(_) => "soon",
                Flag(_) => "maybe",
                Pairs(_) => "novalue",
                Text(_) => continue,
            };
            let var = format!("DEVELOPMENT_GLOBAL_X_{}", s.suffix);
            let e = DatabaseConfig::from_lookup(
                "x",
                lookup(&[
                    ("DEVELOPMENT_GLOBAL_X_CONNECTION_STRING", "sqlite::memory:"),
                    (&var, bad),
                ]),
            )
            .unwrap_err();
            let text = e.to_string();
            assert!(text.contains(&format!("{var} = `{bad}` is not")), "{text}");
            assert!(text.ends_with("; read from the given lookup"), "{text}");
        }
    }

    #[test]
    fn migration_settings() -> Result<()> {
        let cfg = DatabaseConfig::from_lookup(
            "x",
            lookup(&[
                ("DEVELOPMENT_GLOBAL_X_CONNECTION_STRING", "sqlite::memory:"),
                (
                    "DEVELOPMENT_GLOBAL_X_MIGRATION_PLACEHOLDERS",
                    " schema = app , owner=a=b,",
                ),
                ("DEVELOPMENT_GLOBAL_X_MIGRATION_LOCK_WAIT", "0"),
                ("DEVELOPMENT_GLOBAL_X_MIGRATIONS_STRICT", "true"),
            ]),
        )?;
        assert_eq!(
            cfg.migration_placeholders(),
            [
                ("schema".to_owned(), "app".to_owned()),
                ("owner".to_owned(), "a=b".to_owned())
            ]
        );
        assert_eq!(cfg.migration_lock_wait(), None);
        assert!(cfg.migrations_strict());
        let dflt = DatabaseConfig::builder("y")
            .url("sqlite::memory:")
            .build()?;
        assert_eq!(dflt.migration_lock_wait(), Some(Duration::from_secs(5)));
        assert!(!dflt.migrations_strict());
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
