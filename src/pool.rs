//! The r2d2 pool of backend connections, and the checkout policy around it.
//!
//! - `pool_size` connections are kept (`min_idle`), up to `max_overflow` more
//!   are opened under load and closed after `idle_timeout`.
//! - A checkout never hangs: it is bounded by the acquisition timeout, and a
//!   connection error reported while the caller waits (wrong password, server
//!   down) is returned at once instead of after the full timeout.
//! - A connection idle for longer than `validate_after_idle` is pinged before
//!   it is handed out; fresher ones are not (no extra round trip per query).
//! - A connection the pipeline marked broken is discarded on return.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::backend::{Connection, Connector};
use crate::config::DatabaseConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::status::PoolStatus;

/// A backend connection and what the pool knows of it.
pub(crate) struct Conn {
    pub(crate) backend: Box<dyn Connection>,
    /// Set when the connection must not be reused.
    pub(crate) broken: bool,
    last_used: Instant,
}

/// Counters the pool keeps beside r2d2's state.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) waiting: AtomicU32,
    pub(crate) timeouts: AtomicU64,
    pub(crate) discarded: AtomicU64,
    pub(crate) created: AtomicU64,
    /// The latest connection failure, for waiters to return at once.
    last_connect_error: Mutex<Option<(Instant, Arc<Error>)>>,
}

/// r2d2's view of our backends.
pub(crate) struct Manager {
    connector: Box<dyn Connector>,
    counters: Arc<Counters>,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = Error;

    fn connect(&self) -> Result<Conn> {
        let backend = self.connector.connect()?;
        self.counters.created.fetch_add(1, Ordering::Relaxed);
        Ok(Conn {
            backend,
            broken: false,
            last_used: Instant::now(),
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<()> {
        conn.backend.ping()
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        let broken = conn.broken || conn.backend.is_closed();
        if broken {
            self.counters.discarded.fetch_add(1, Ordering::Relaxed);
        }
        broken
    }
}

/// Records connection failures from r2d2's background threads (no secrets:
/// our errors carry none) so that waiting callers can return them.
#[derive(Debug)]
struct ConnectErrors {
    counters: Arc<Counters>,
    database: Arc<str>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

impl r2d2::HandleError<Error> for ConnectErrors {
    fn handle_error(&self, error: Error) {
        tracing::warn!(database = %self.database, error = %error, "connection attempt failed");
        *self.counters.last_connect_error.lock() = Some((Instant::now(), Arc::new(error)));
    }
}

/// A pooled connection, back to the pool on drop.
pub(crate) type Pooled = r2d2::PooledConnection<Manager>;

/// The pool of one database.
pub(crate) struct Pool {
    inner: r2d2::Pool<Manager>,
    counters: Arc<Counters>,
    database: Arc<str>,
    acquire_timeout: Duration,
    validate_after_idle: Duration,
    pool_size: u32,
    max_overflow: u32,
}

/// How long a waiter sleeps between looks at recorded connection errors.
const WAIT_SLICE: Duration = Duration::from_millis(25);

impl Pool {
    pub(crate) fn new(config: &DatabaseConfig, connector: Box<dyn Connector>) -> Pool {
        let counters = Arc::new(Counters::default());
        let manager = Manager {
            connector,
            counters: Arc::clone(&counters),
        };
        let inner = r2d2::Pool::builder()
            .max_size(config.max_size())
            .min_idle(Some(config.pool_size))
            .idle_timeout(Some(config.idle_timeout).filter(|t| !t.is_zero()))
            .max_lifetime(config.max_lifetime)
            .connection_timeout(config.acquire_timeout)
            .test_on_check_out(false)
            .error_handler(Box::new(ConnectErrors {
                counters: Arc::clone(&counters),
                database: Arc::clone(&config.name),
            }))
            .build_unchecked(manager);
        Pool {
            inner,
            counters,
            database: Arc::clone(&config.name),
            acquire_timeout: config.acquire_timeout,
            validate_after_idle: config.validate_after_idle,
            pool_size: config.pool_size,
            max_overflow: config.max_overflow,
        }
    }

    /// Checks a connection out, bounded by `timeout` (the configured
    /// acquisition timeout when `None`).
    pub(crate) fn get(&self, timeout: Option<Duration>) -> Result<Pooled> {
        let timeout = timeout.unwrap_or(self.acquire_timeout);
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            let mut conn = match self.inner.try_get() {
                Some(c) => c,
                None => self.wait(start, deadline, timeout)?,
            };
            if conn.last_used.elapsed() < self.validate_after_idle {
                return Ok(conn);
            }
            match conn.backend.ping() {
                Ok(()) => {
                    conn.last_used = Instant::now();
                    return Ok(conn);
                }
                Err(e) => {
                    tracing::debug!(database = %self.database, error = %e, "discarding a stale connection");
                    conn.broken = true;
                    drop(conn);
                    if Instant::now() >= deadline {
                        return Err(self.timed_out(timeout));
                    }
                }
            }
        }
    }

    fn wait(&self, start: Instant, deadline: Instant, timeout: Duration) -> Result<Pooled> {
        self.counters.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = scopeguard(|| {
            self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
        });
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.timed_out(timeout));
            }
            if let Ok(conn) = self.inner.get_timeout((deadline - now).min(WAIT_SLICE)) {
                return Ok(conn);
            }
            // No connection yet: if opening one failed since we began to
            // wait, say why now rather than at the deadline.
            let idle_pool_empty = self.inner.state().connections == 0;
            if idle_pool_empty {
                if let Some((at, err)) = &*self.counters.last_connect_error.lock() {
                    if *at >= start {
                        return Err(Error::new(err.kind(), "no connection could be opened")
                            .with_source(Arc::clone(err)));
                    }
                }
            }
        }
    }

    #[cold]
    fn timed_out(&self, timeout: Duration) -> Error {
        self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
        Error::pool_timeout(timeout)
    }

    /// Marks a connection as used now (after a statement).
    pub(crate) fn touch(conn: &mut Conn) {
        conn.last_used = Instant::now();
    }

    pub(crate) fn status(&self, read_only: bool) -> PoolStatus {
        let state = self.inner.state();
        let checked_out = state.connections - state.idle_connections;
        PoolStatus {
            database_name: self.database.to_string(),
            pool_size: self.pool_size,
            max_overflow: self.max_overflow,
            max_size: self.pool_size + self.max_overflow,
            connections: state.connections,
            checked_in: state.idle_connections,
            checked_out,
            overflow: state.connections.saturating_sub(self.pool_size),
            invalid: self.counters.discarded.load(Ordering::Relaxed),
            waiting: self.counters.waiting.load(Ordering::Relaxed),
            timeouts: self.counters.timeouts.load(Ordering::Relaxed),
            connections_created: self.counters.created.load(Ordering::Relaxed),
            read_only,
            timestamp: crate::status::now_rfc3339(),
        }
    }
}

impl std::ops::Deref for Conn {
    type Target = dyn Connection;
    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.backend
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

impl ErrorKind {
    /// True for errors after which the connection cannot be trusted.
    pub(crate) fn breaks_connection(self) -> bool {
        matches!(self, ErrorKind::Connect)
    }
}
