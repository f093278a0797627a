//! Hosts and their roles, below the pool: which server of a host list a new
//! connection goes to, and whether a pooled one still fits.
//!
//! A connection string may name several hosts in libpq's form
//! (`postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write`,
//! also taken for MySQL/MariaDB). Each new connection tries the hosts in
//! order (or in a fresh random order with `load_balance_hosts=random`), each
//! bounded by the connect timeout, and asks the server its role: PostgreSQL
//! `pg_is_in_recovery()` and the session default of
//! `default_transaction_read_only`, MySQL/MariaDB `@@global.read_only`
//! (which stands for both). The first server whose role fits
//! `target_session_attrs` (libpq's meanings) serves the connection; with
//! `prefer-standby` and no standby answering, the first server that
//! answered does.
//!
//! A connection remembers its host and role. When the pool checks a
//! connection that sat idle (or one that may have been lost), the check asks
//! the role again: a connection whose server no longer fits (a standby
//! promoted under a `standby` list, a primary demoted under `read-write`)
//! fails the check and is discarded, never reused. So failover is the
//! topology's: after the primary stops and a standby is promoted, the old
//! connections die with their server, and the next connection finds the new
//! primary, with no restart and nothing asked of callers.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::backend::{self, Canceller, Connection, Connector};
use crate::config::{host_list, DatabaseConfig, TargetSessionAttrs};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::DbMetrics;
use crate::sql::Dialect;
use crate::status::BackendKind;
use crate::value::{Row, Value};

/// What a server said of its role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Role {
    /// A standby (PostgreSQL in recovery; MySQL/MariaDB `@@read_only` on).
    pub(crate) in_recovery: bool,
    /// Sessions default to read-only.
    pub(crate) read_only: bool,
}

impl Role {
    /// `primary` or `replica`, as the metrics' `role` label and the reports
    /// say it.
    pub(crate) fn label(self) -> &'static str {
        if self.in_recovery {
            "replica"
        } else {
            "primary"
        }
    }
}

/// The statement that asks a server its role, per backend.
fn role_sql(kind: BackendKind) -> Option<&'static str> {
    match kind {
        // `reset_val`: the session's default before any `SET` of ours (a
        // READ_ONLY database sets it on at connect).
        BackendKind::Postgres => Some(
            "SELECT pg_is_in_recovery() AS in_recovery, \
             (SELECT reset_val FROM pg_settings WHERE name = 'default_transaction_read_only') = 'on' AS read_only",
        ),
        BackendKind::MySql => Some(
            "SELECT @@global.read_only AS in_recovery, @@global.read_only AS read_only",
        ),
        _ => None,
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::I64(i)) => *i != 0,
        Some(Value::Text(t)) => matches!(t.as_str(), "1" | "on" | "ON" | "true" | "t"),
        _ => false,
    }
}

/// Asks the server on `conn` its role.
fn ask_role(conn: &mut dyn Connection, kind: BackendKind) -> Result<Role> {
    let Some(sql) = role_sql(kind) else {
        return Ok(Role {
            in_recovery: false,
            read_only: false,
        });
    };
    let rows: Vec<Row> = conn.query(sql, &[])?;
    let row = rows
        .first()
        .ok_or_else(|| Error::new(ErrorKind::Connect, "the server did not say its role"))?;
    Ok(Role {
        in_recovery: truthy(row.value(0)),
        read_only: truthy(row.value(1)),
    })
}

/// Which host serves, for the pool status and the health report: the host
/// of the connection opened last, and its role.
#[derive(Default, Debug)]
pub(crate) struct Serving {
    now: Mutex<Option<(Arc<str>, Option<&'static str>)>>,
}

impl Serving {
    /// The host (`host:port` as written in the URL) and its role
    /// (`primary`, `replica`), once a connection was opened.
    pub(crate) fn get(&self) -> Option<(String, Option<String>)> {
        self.now
            .lock()
            .as_ref()
            .map(|(h, r)| (h.to_string(), r.map(str::to_owned)))
    }

    fn set(&self, host: &Arc<str>, role: Option<&'static str>) {
        *self.now.lock() = Some((Arc::clone(host), role));
    }
}

/// One host of a list: its name as written and its own connector.
struct Host {
    name: Arc<str>,
    connector: Box<dyn Connector>,
}

/// Opens connections across a host list, choosing the server by role.
struct HostsConnector {
    hosts: Vec<Host>,
    attrs: TargetSessionAttrs,
    random: bool,
    kind: BackendKind,
    dialect: Dialect,
    refuses_async: bool,
    serving: Arc<Serving>,
    metrics: Arc<DbMetrics>,
}

/// The connector for `config`: its backend's own for a single host with no
/// role wanted (no extra round trip), else one that walks the host list.
/// Also the record of which host serves.
///
/// # Errors
///
/// As [`backend::connector`]; [`Config`](ErrorKind::Config) for a
/// malformed host list (the builder has checked it already).
pub(crate) fn connector(
    config: &DatabaseConfig,
    metrics: Arc<DbMetrics>,
) -> Result<(Box<dyn Connector>, Arc<Serving>)> {
    let serving = Arc::new(Serving::default());
    let list = host_list(&config.url).map_err(Error::config)?;
    let list = match list {
        Some(l)
            if role_sql(config.kind).is_some()
                && (l.hosts.len() > 1 || l.attrs != TargetSessionAttrs::Any || l.random) =>
        {
            l
        }
        other => {
            if let Some(l) = other {
                if let Some(h) = l.hosts.first() {
                    // One host, no role asked: its role is not known.
                    serving.set(&Arc::from(h.as_str()), None);
                }
            }
            return Ok((backend::connector(config)?, serving));
        }
    };
    let mut hosts = Vec::with_capacity(list.hosts.len());
    for (name, url) in list.hosts.iter().zip(&list.urls) {
        let mut one = config.clone();
        one.url = url.clone();
        hosts.push(Host {
            name: Arc::from(name.as_str()),
            connector: backend::connector(&one)?,
        });
    }
    let dialect = hosts[0].connector.dialect();
    let refuses_async = hosts[0].connector.refuses_async_context();
    Ok((
        Box::new(HostsConnector {
            hosts,
            attrs: list.attrs,
            random: list.random,
            kind: config.kind,
            dialect,
            refuses_async,
            serving: Arc::clone(&serving),
            metrics,
        }),
        serving,
    ))
}

/// A random order of `0..n` (load balancing; not cryptographic).
fn shuffled(n: usize) -> Vec<usize> {
    use std::hash::{BuildHasher, Hasher};
    let mut order: Vec<usize> = (0..n).collect();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let mut state = h.finish() | 1;
    for i in (1..n).rev() {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

impl HostsConnector {
    fn wrap(&self, i: usize, conn: Box<dyn Connection>, role: Role) -> Box<dyn Connection> {
        let host = &self.hosts[i].name;
        self.serving.set(host, Some(role.label()));
        self.metrics.host_connected(host, role.label());
        Box::new(HostConnection {
            inner: conn,
            host: Arc::clone(host),
            attrs: self.attrs,
            kind: self.kind,
            unfit: false,
        })
    }
}

impl Connector for HostsConnector {
    fn connect(&self) -> Result<Box<dyn Connection>> {
        let order = if self.random {
            shuffled(self.hosts.len())
        } else {
            (0..self.hosts.len()).collect()
        };
        let mut why: Vec<String> = Vec::new();
        let mut last_error: Option<Error> = None;
        // `prefer-standby`: the first server that answered, kept for when
        // no standby does.
        let mut fallback: Option<(usize, Box<dyn Connection>, Role)> = None;
        for &i in &order {
            let host = &self.hosts[i];
            let mut conn = match host.connector.connect() {
                Ok(c) => c,
                Err(e) => {
                    // A wrong password is the same on every host: say it now.
                    if matches!(e.kind(), ErrorKind::Auth) {
                        return Err(e);
                    }
                    why.push(format!("{}: {e}", host.name));
                    last_error = Some(e);
                    continue;
                }
            };
            let role = match ask_role(&mut *conn, self.kind) {
                Ok(r) => r,
                Err(e) => {
                    why.push(format!("{}: its role could not be read", host.name));
                    last_error = Some(e);
                    continue;
                }
            };
            if self.attrs.fits(role.in_recovery, role.read_only) {
                return Ok(self.wrap(i, conn, role));
            }
            why.push(format!(
                "{}: a {}{}",
                host.name,
                role.label(),
                if role.read_only && !role.in_recovery {
                    " (read-only)"
                } else {
                    ""
                }
            ));
            if self.attrs.fits_fallback() && fallback.is_none() {
                fallback = Some((i, conn, role));
            }
        }
        if let Some((i, conn, role)) = fallback {
            return Ok(self.wrap(i, conn, role));
        }
        // No host fits now; during a failover one will soon: transient.
        let mut err = Error::new(
            ErrorKind::Connect,
            format!(
                "none of the {} hosts is a server that fits target_session_attrs={} ({}); \
                 during a failover this passes once a standby is promoted, else check the host list",
                self.hosts.len(),
                self.attrs,
                why.join("; ")
            ),
        );
        if let Some(e) = last_error {
            err = err.with_source(e);
        }
        Err(err)
    }

    fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn refuses_async_context(&self) -> bool {
        self.refuses_async
    }
}

/// A connection of a host list: remembers its host, and its check asks the
/// server's role again.
struct HostConnection {
    inner: Box<dyn Connection>,
    host: Arc<str>,
    attrs: TargetSessionAttrs,
    kind: BackendKind,
    /// Set when the server refused a write as read-only under a list that
    /// wants a writable server: its role changed (a demoted primary), so
    /// the connection is closed rather than reused.
    unfit: bool,
}

impl HostConnection {
    /// A read-only refusal from a server that was chosen as writable means
    /// its role changed under us: a transient error (the next connection
    /// finds the new primary), and this connection is not reused.
    fn settle<T>(&mut self, r: Result<T>) -> Result<T> {
        match r {
            Err(e)
                if e.kind() == ErrorKind::ReadOnly
                    && e.db_code().is_some()
                    && matches!(
                        self.attrs,
                        TargetSessionAttrs::ReadWrite | TargetSessionAttrs::Primary
                    ) =>
            {
                // A session the caller made read-only is not a role change:
                // ask the server (one round trip, on this error only).
                let role = ask_role(&mut *self.inner, self.kind);
                if role.is_ok_and(|r| self.attrs.fits(r.in_recovery, r.read_only)) {
                    return Err(e);
                }
                self.unfit = true;
                Err(Error::new(
                    ErrorKind::Connect,
                    format!(
                        "the server at {} refused a write as read-only: it is no longer the primary \
                         (target_session_attrs={}); the connection is dropped and the next one looks for the new primary",
                        self.host, self.attrs
                    ),
                )
                .with_source(e))
            }
            other => other,
        }
    }
}

impl Connection for HostConnection {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let r = self.inner.query(sql, params);
        self.settle(r)
    }
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let r = self.inner.execute(sql, params);
        self.settle(r)
    }
    fn batch(&mut self, sql: &str) -> Result<()> {
        let r = self.inner.batch(sql);
        self.settle(r)
    }
    fn begin(&mut self) -> Result<()> {
        self.inner.begin()
    }
    fn commit(&mut self) -> Result<()> {
        self.inner.commit()
    }
    fn rollback(&mut self) -> Result<()> {
        self.inner.rollback()
    }
    /// The pool's check of an idle (or suspect) connection: the server must
    /// still be there and still fit.
    fn ping(&mut self) -> Result<()> {
        if self.attrs == TargetSessionAttrs::Any {
            return self.inner.ping();
        }
        let role = ask_role(&mut *self.inner, self.kind)?;
        if self.attrs.fits(role.in_recovery, role.read_only) || self.attrs.fits_fallback() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Connect,
            format!(
                "the server at {} is now a {} and no longer fits target_session_attrs={}; the connection is dropped",
                self.host,
                role.label(),
                self.attrs
            ),
        ))
    }
    fn canceller(&self) -> Arc<dyn Canceller> {
        self.inner.canceller()
    }
    fn set_server_timeout(&mut self, limit: Option<Duration>) -> Result<()> {
        self.inner.set_server_timeout(limit)
    }
    fn server_timeout_is_local(&self) -> bool {
        self.inner.server_timeout_is_local()
    }
    fn is_closed(&self) -> bool {
        self.unfit || self.inner.is_closed()
    }
    fn peer_closed(&self) -> bool {
        self.inner.peer_closed()
    }
    fn reset_session(&mut self) -> Result<bool> {
        self.inner.reset_session()
    }
    fn cancel_confirmed(&self, error: &Error) -> bool {
        self.inner.cancel_confirmed(error)
    }
    fn host(&self) -> Option<&str> {
        Some(&self.host)
    }
    // The server's own paths (COPY, portal streams, bulk loads) stay the
    // inner connection's.
    fn copy_in(&mut self, sql: &str, data: &[u8]) -> Result<u64> {
        let r = self.inner.copy_in(sql, data);
        self.settle(r)
    }
    fn open_stream(&mut self, sql: &str, params: &[Value]) -> Result<Option<Vec<Row>>> {
        let r = self.inner.open_stream(sql, params);
        self.settle(r)
    }
    fn fetch(&mut self, max: usize, out: &mut Vec<Row>) -> Result<bool> {
        let r = self.inner.fetch(max, out);
        self.settle(r)
    }
    fn close_stream(&mut self) -> bool {
        self.inner.close_stream()
    }
    fn bulk_write(&mut self, plan: &backend::BulkPlan, rows: &[Vec<Value>]) -> Result<u64> {
        let r = self.inner.bulk_write(plan, rows);
        self.settle(r)
    }
    fn bulk_writes_rows_as_they_come(&self, plan: &backend::BulkPlan) -> bool {
        self.inner.bulk_writes_rows_as_they_come(plan)
    }
    fn bulk_write_rows(
        &mut self,
        plan: &backend::BulkPlan,
        rows: &mut dyn backend::BulkRows,
    ) -> Result<u64> {
        let r = self.inner.bulk_write_rows(plan, rows);
        self.settle(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_fit_as_libpq_says() {
        use TargetSessionAttrs::*;
        // (attrs, primary rw, primary read-only, standby)
        let table = [
            (Any, true, true, true),
            (ReadWrite, true, false, false),
            (ReadOnly, false, true, true),
            (Primary, true, true, false),
            (Standby, false, false, true),
            (PreferStandby, false, false, true),
        ];
        for (a, rw, ro, sb) in table {
            assert_eq!(a.fits(false, false), rw, "{a} on a primary");
            assert_eq!(a.fits(false, true), ro, "{a} on a read-only primary");
            assert_eq!(a.fits(true, true), sb, "{a} on a standby");
        }
        assert!(PreferStandby.fits_fallback());
        assert!(!Standby.fits_fallback());
    }

    #[test]
    fn shuffles_are_permutations() {
        for n in 0..6 {
            let mut o = shuffled(n);
            o.sort_unstable();
            assert_eq!(o, (0..n).collect::<Vec<_>>());
        }
    }
}
