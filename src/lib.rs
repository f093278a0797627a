//! # dbmanager
//!
//! One well-behaved, synchronous door to PostgreSQL, MySQL/MariaDB, SQLite
//! and SQL Server for batch jobs, workflow steps and other blocking code:
//! configuration from environment variables, pooled connections,
//! portable SQL, transactions that cannot be left half done, statement
//! timeouts enforced on the server by one watchdog thread, retries and a
//! circuit breaker, streaming reads ([`RowStream`]) and bulk writes
//! ([`Bulk`]), versioned migrations ([`migrate`]), Prometheus
//! [`metrics`], health checks and plain status reports.
//!
//! ```
//! use dbmanager::{params, DatabaseConfig, DatabaseManager};
//!
//! # fn main() -> dbmanager::Result<()> {
//! // `DatabaseManager::new("rpa_db")` reads DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING etc.;
//! // here the configuration is given in code.
//! let db = DatabaseManager::from_config(
//!     DatabaseConfig::builder("demo").url("sqlite::memory:").build()?,
//! )?;
//! db.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, status TEXT)")?;
//! db.execute("INSERT INTO customers (name, status) VALUES (?, ?)", ("Ada", "active"))?;
//! let rows = db.execute_query(
//!     "SELECT id, name FROM customers WHERE status = :status",
//!     params! { "status" => "active" },
//! )?;
//! assert_eq!(rows[0].get::<String>("name")?, "Ada");
//!
//! db.transaction(|tx| {
//!     tx.execute("UPDATE customers SET status = ? WHERE id = ?", ("vip", 1))?;
//!     Ok::<_, dbmanager::Error>(())
//! })?;
//! println!("{}", dbmanager::serde_json::to_string(&db.pool_status()).unwrap());
//! # Ok(()) }
//! ```
//!
//! ## Cargo features
//!
//! | feature    | adds                                             | default |
//! |------------|--------------------------------------------------|---------|
//! | `postgres` | PostgreSQL (`tokio-postgres` on a private runtime, TLS through rustls) | yes |
//! | `mysql`    | MySQL and MariaDB (`mysql` crate, rustls)         | yes     |
//! | `sqlite`   | SQLite (`rusqlite`, SQLite bundled)               | yes     |
//! | `mssql`    | SQL Server (`tiberius`, TDS 7.3, rustls)          | yes     |
//! | `metrics-server` | a tiny HTTP endpoint for Prometheus to scrape (`metrics::serve`) | no |
//! | `cli`      | the `dbmanager` command-line tool (adds `clap`, and `csv` and `indicatif` for `import`/`export`) | no |
//!
//! Migrations (Flyway-style `V…__….sql` scripts, a `schema_version` history,
//! one migrator at a time): see [`migrate`] and
//! [`DatabaseManager::run_migrations`].
//!
//! A database whose backend is compiled out fails with
//! [`ErrorKind::FeatureDisabled`] naming the feature.

#![warn(missing_docs, rust_2018_idioms, missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod bulk;
mod cache;
mod config;
mod entities;
mod error;
mod health;
mod manager;
pub mod metrics;
pub mod migrate;
mod observe;
mod pipeline;
mod pool;
mod replica;
mod resilience;
mod session;
mod shards;
mod sql;
mod status;
mod stream;
mod topology;
mod value;
mod watchdog;

// The crates whose types cross the API (typed reads and parameters: dates
// and times, UUIDs, decimals, JSON), re-exported so that a program uses the
// very versions dbmanager was built with, without naming them in its own
// Cargo.toml: `dbmanager::chrono::NaiveDate`, `dbmanager::uuid::Uuid`, …
pub use chrono;
pub use rust_decimal;
pub use serde_json;
pub use uuid;

pub use crate::bulk::{Bulk, BulkProgress, BulkReport, Record, DEFAULT_CHUNK_SIZE};
pub use crate::cache::{QueryCacheStats, QueryOptions};
pub use crate::config::{
    variable_stem, DatabaseConfig, DatabaseConfigBuilder, ShardKey, ShardRule, TargetSessionAttrs,
};
pub use crate::entities::{Deletion, Entities, Find, HistoryEntry, Order, TxEntities};
pub use crate::error::{Error, ErrorKind, Result};
pub use crate::manager::DatabaseManager;
pub use crate::replica::{ReplicaHandle, LAG_CACHE};
pub use crate::resilience::RetryPolicy;
pub use crate::session::{PooledConnection, Transaction};
pub use crate::shards::{ShardResults, Shards};
pub use crate::status::{
    BackendKind, CircuitState, ConnectionHolder, Health, HealthStatus, MigrationState,
    MigrationSummary, PoolStatus, QueryPlan, ScalingLevel, StatementStats,
};
pub use crate::stream::{RowStream, TypedRowStream, FETCH_ROWS};
pub use crate::value::{ColumnIndex, FromValue, IntoParams, Params, Row, Value};

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
