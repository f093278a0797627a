//! Shards: a map from key to managers, each an ordinary manager. The rule
//! ([`ShardRule`]) and the shard databases are configuration
//! (`{PREFIX}{NAME}_SHARDS`, `{PREFIX}{NAME}_SHARD_RULE`); a statement for
//! one key reaches only that key's shard.

use std::fmt;
use std::time::Duration;

use crate::config::{shard_settings, ShardKey, ShardRule};
use crate::error::{Error, ErrorKind, Result};
use crate::manager::DatabaseManager;
use crate::value::{IntoParams, Params, Row};

/// The shard databases of one logical database, and the rule that routes a
/// key to one of them.
///
/// ```no_run
/// # fn main() -> dbmanager::Result<()> {
/// // DEVELOPMENT_GLOBAL_ORDERS_SHARDS=orders_0,orders_1
/// // DEVELOPMENT_GLOBAL_ORDERS_0_CONNECTION_STRING=…  (each shard as usual)
/// let orders = dbmanager::Shards::new("orders")?;
/// orders.shard("customer-7")?.execute("INSERT INTO orders (customer) VALUES (?)", ("customer-7",))?;
/// let all = orders.on_all_shards("SELECT count(*) AS n FROM orders", ())?;
/// for (shard, rows) in all.ok() { println!("{shard}: {rows:?}"); }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Shards {
    name: String,
    rule: ShardRule,
    shards: Vec<DatabaseManager>,
    /// Each shard's part of [`on_all_shards`](Self::on_all_shards) is
    /// limited to this (`None`: each shard's own query timeout).
    timeout: Option<Duration>,
}

impl fmt::Debug for Shards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shards")
            .field("name", &self.name)
            .field("rule", &self.rule)
            .field("shards", &self.names())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Shards {
    /// The shards of `name` as the environment configures them:
    /// `{PREFIX}{NAME}_SHARDS` (the shard databases, comma-separated, each
    /// configured as usual and shared through [`DatabaseManager::new`]),
    /// `{PREFIX}{NAME}_SHARD_RULE` (`hash`, the default, or
    /// `range:B1,B2,…`) and `{PREFIX}{NAME}_SHARD_TIMEOUT` (seconds each
    /// shard's part of a read over every shard may take).
    ///
    /// # Errors
    ///
    /// [`Config`](ErrorKind::Config) naming the missing or malformed
    /// variable, or any shard's configuration error.
    pub fn new(name: &str) -> Result<Shards> {
        let (names, rule, timeout) = shard_settings(name)?;
        let shards = names
            .iter()
            .map(|n| DatabaseManager::new(n))
            .collect::<Result<Vec<_>>>()?;
        Ok(Shards {
            name: name.to_owned(),
            rule,
            shards,
            timeout,
        })
    }

    /// Shards given in code: `shards` in order (a key's index under `rule`
    /// picks one).
    ///
    /// # Errors
    ///
    /// [`Config`](ErrorKind::Config) for no shards, or a range rule whose
    /// bounds do not number one fewer than the shards.
    pub fn from_managers(
        name: &str,
        rule: ShardRule,
        shards: Vec<DatabaseManager>,
    ) -> Result<Shards> {
        if shards.is_empty() {
            return Err(Error::config(format!(
                "sharded database `{name}` has no shards; give at least one"
            )));
        }
        if let ShardRule::Range(bounds) = &rule {
            if bounds.len() + 1 != shards.len() {
                return Err(Error::config(format!(
                    "sharded database `{name}`: a range rule with {} bounds needs {} shards, not {}",
                    bounds.len(),
                    bounds.len() + 1,
                    shards.len()
                )));
            }
        }
        Ok(Shards {
            name: name.to_owned(),
            rule,
            shards,
            timeout: None,
        })
    }

    /// The same shards, with each shard's part of
    /// [`on_all_shards`](Self::on_all_shards) limited to `timeout`.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Shards {
        self.timeout = Some(timeout);
        self
    }

    /// The logical name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rule.
    pub fn rule(&self) -> &ShardRule {
        &self.rule
    }

    /// The shard databases' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.shards.iter().map(DatabaseManager::name).collect()
    }

    /// Every shard's manager, in order.
    pub fn all(&self) -> &[DatabaseManager] {
        &self.shards
    }

    /// The manager of `key`'s shard: every statement for that key goes
    /// there, and nowhere else.
    ///
    /// # Errors
    ///
    /// [`Parameter`](ErrorKind::Parameter) for a text key under a range rule.
    pub fn shard<'k>(&self, key: impl Into<ShardKey<'k>>) -> Result<&DatabaseManager> {
        let i = self.rule.shard_of(key.into(), self.shards.len())?;
        Ok(&self.shards[i])
    }

    /// Runs a read on every shard at once, each within the shard timeout,
    /// and returns each shard's rows or error apart: never merged silently.
    ///
    /// # Errors
    ///
    /// None of its own: each shard's failure is in the result. Use
    /// [`ShardResults::rows`] for all rows or the first failure (naming the
    /// shard).
    pub fn on_all_shards(&self, sql: &str, params: impl IntoParams) -> Result<ShardResults> {
        let params: Params = params.into_params();
        let results = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .shards
                .iter()
                .map(|db| {
                    let params = params.clone();
                    s.spawn(move || match self.timeout {
                        Some(t) => db.execute_query_with_timeout(sql, params, t),
                        None => db.execute_query(sql, params),
                    })
                })
                .collect();
            handles
                .into_iter()
                .zip(&self.shards)
                .map(|(h, db)| {
                    let r = h.join().unwrap_or_else(|_| {
                        Err(Error::new(ErrorKind::Other, "the shard's read panicked"))
                    });
                    (db.name().to_owned(), r)
                })
                .collect()
        });
        Ok(ShardResults { results })
    }
}

/// Each shard's rows, or its error, in shard order.
#[derive(Debug)]
pub struct ShardResults {
    results: Vec<(String, Result<Vec<Row>>)>,
}

impl ShardResults {
    /// Every shard's outcome, in shard order: `(shard name, rows or error)`.
    pub fn each(&self) -> &[(String, Result<Vec<Row>>)] {
        &self.results
    }

    /// The shards that answered, with their rows.
    pub fn ok(&self) -> impl Iterator<Item = (&str, &[Row])> {
        self.results
            .iter()
            .filter_map(|(n, r)| r.as_ref().ok().map(|rows| (n.as_str(), rows.as_slice())))
    }

    /// The shards that failed, with their errors.
    pub fn failed(&self) -> impl Iterator<Item = (&str, &Error)> {
        self.results
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| (n.as_str(), e)))
    }

    /// Every row of every shard, in shard order, when every shard answered.
    ///
    /// # Errors
    ///
    /// The first failed shard's error, its message naming every failed
    /// shard; the rows of the others stay in [`ok`](Self::ok).
    pub fn rows(self) -> Result<Vec<Row>> {
        let failed: Vec<&str> = self.failed().map(|(n, _)| n).collect();
        if !failed.is_empty() {
            let list = failed.join(", ");
            let (shard, first) = self
                .results
                .iter()
                .find_map(|(n, r)| r.as_ref().err().map(|e| (n, e)))
                .expect("a failed shard");
            return Err(Error::new(
                first.kind(),
                format!(
                    "{} of {} shards failed ({list}); the first, `{shard}`: {first}",
                    failed.len(),
                    self.results.len()
                ),
            ));
        }
        Ok(self
            .results
            .into_iter()
            .flat_map(|(_, r)| r.unwrap_or_default())
            .collect())
    }
}
