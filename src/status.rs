//! Plain status reports, serialisable with serde.

use serde::Serialize;

/// A snapshot of one database's connection pool (seed field names, and more).
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
    /// When the snapshot was taken, RFC 3339 in UTC.
    pub timestamp: String,
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
    /// The start of the last statement run on it (SQL text only, never
    /// parameter values).
    pub last_sql: Option<String>,
    /// Whether a transaction is open on it.
    pub in_transaction: bool,
}
