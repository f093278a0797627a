//! The r2d2 pool of backend connections, and the checkout policy around it.
//!
//! - Connections open on demand (r2d2 `min_idle = 0`: a one-thread batch job
//!   holds one connection, not `pool_size`). Up to `pool_size` are kept; up to
//!   `max_overflow` more open under load, and each of those is closed when it
//!   is returned with nobody waiting (SQLAlchemy's `QueuePool` semantics).
//!   Any connection idle past `idle_timeout` is closed.
//! - A checkout never hangs: it is bounded by the acquisition timeout. When no
//!   connection is open at all, the caller probes with a connection of its own,
//!   so a wrong password or a server that is down is reported at once rather
//!   than as a pool timeout after the full wait.
//! - A connection idle for longer than `validate_after_idle` is pinged before
//!   it is handed out; fresher ones are not (no extra round trip per query).
//! - A connection the pipeline marked broken is discarded on return.
//! - A connection whose session a statement may have changed (the pipeline
//!   marks it: anything but a plain read, every statement on a held
//!   connection or in a transaction) is reset on return, before anyone else
//!   can check it out; one whose backend has no reset, or whose reset fails,
//!   is closed instead.
//! - Every connection knows who holds it (where it was checked out, by which
//!   thread, its last SQL): a connection held past the leak threshold is
//!   reported once by the watchdog thread's sweep, and a checkout that times
//!   out lists every holder in its error, so the user sees who holds the pool.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::backend::{Canceller, Connection, Connector};
use crate::config::{DatabaseConfig, MAX_DURATION};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::DbMetrics;
use crate::sql::Dialect;
use crate::status::CircuitState;
use crate::status::{ConnectionHolder, PoolStatus};
use crate::watchdog::{Fired, Sweep, Watchdog};

/// Characters of a statement kept for leak reports and pool forensics.
const LAST_SQL_CHARS: usize = 300;

/// A backend connection and what the pool knows of it.
pub(crate) struct Conn {
    pub(crate) backend: Box<dyn Connection>,
    /// Set when the connection must not be reused.
    pub(crate) broken: bool,
    /// Set while a statement runs, from before its deadline is registered
    /// until the pipeline has settled it. A connection returned with it set
    /// (a panic unwound past the pipeline) is in an unknown state: it is
    /// discarded.
    pub(crate) running: bool,
    /// Set when the connection is past its lifetime: closed on return.
    retired: bool,
    /// When it is past its lifetime (worked out once, at connect, so that a
    /// checkout compares two instants rather than measuring an age).
    retire_at: Option<Instant>,
    last_used: Instant,
    counters: Arc<Counters>,
    /// Stops this connection's running statement (the watchdog's handle).
    pub(crate) canceller: Arc<dyn Canceller>,
    /// The server-side statement limit last set on the session; `None` when
    /// unknown (after a rollback, which may have undone it).
    pub(crate) server_timeout: Option<Option<Duration>>,
    /// When the open transaction began, if one is open.
    pub(crate) tx_started: Option<Instant>,
    /// Set when a statement may have changed the session (anything but a
    /// plain read, every statement on a held connection or in a
    /// transaction): the session is reset before anyone else gets it.
    pub(crate) dirty: bool,
    /// What the pipeline learnt of the text of the last statement run here
    /// (its operation's number and whether it may change the session), for
    /// the same statement again.
    pub(crate) memo: Option<(u8, bool)>,
    holder: Arc<Holder>,
    /// The last checkout site and its number (a connection checked out
    /// again and again from the same place, a loop, is not looked up
    /// again).
    site: Option<(&'static Location<'static>, u32)>,
}

/// Who holds a connection, for leak reports and pool forensics.
///
/// Written by the holder's thread under the record's own lock, which no
/// other thread takes but a report (a leak sweep, a checkout that timed
/// out): uncontended, it costs two atomic instructions, less than turning
/// the checkout instant into a number for an atomic, and a report never
/// mixes two holders' fields. The return only clears `out`: a plain store.
struct Holder {
    /// Set while the connection is checked out; stored after `detail`.
    out: AtomicBool,
    leak_reported: AtomicBool,
    detail: Mutex<Detail>,
}

struct Detail {
    /// When it was last checked out.
    since: Option<Instant>,
    /// Where it was checked out: an index into [`sites`].
    site: u32,
    /// The thread that checked it out: its number in [`threads`].
    thread: u64,
    /// No statement ran since the checkout: the statement fields are an
    /// earlier holder's.
    fresh: bool,
    /// The start of the last statement as run (literals and all): only
    /// ever shown normalised, by [`Holder::report`].
    last_sql: String,
    /// `last_sql` is a prefix of a longer statement.
    last_sql_cut: bool,
    in_transaction: bool,
}

impl Holder {
    fn new() -> Holder {
        Holder {
            out: AtomicBool::new(false),
            leak_reported: AtomicBool::new(false),
            detail: Mutex::new(Detail {
                since: None,
                site: 0,
                thread: 0,
                fresh: true,
                last_sql: String::new(),
                last_sql_cut: false,
                in_transaction: false,
            }),
        }
    }

    /// When it was checked out, if it is.
    fn since(&self) -> Option<Instant> {
        if !self.out.load(Ordering::Acquire) {
            return None;
        }
        self.detail.lock().since
    }

    /// Who holds the connection, its last statement normalised as in the
    /// slow-query log (literals as `?`): a statement may carry a secret in
    /// its text (`ALTER ROLE x PASSWORD '…'`).
    fn report(&self, now: Instant, dialect: Dialect) -> Option<ConnectionHolder> {
        if !self.out.load(Ordering::Acquire) {
            return None;
        }
        // Copied out, normalised after: a checkout on the holder's thread
        // waits for this lock.
        let (at, site, thread, last) = {
            let d = self.detail.lock();
            let last = (!d.fresh).then(|| (d.last_sql.clone(), d.last_sql_cut, d.in_transaction));
            (d.since?, d.site, d.thread, last)
        };
        let (last_sql, in_transaction) = match last {
            None => (None, false),
            Some((sql, cut, in_transaction)) => {
                let last_sql = (!sql.is_empty()).then(|| {
                    let mut sql = crate::sql::normalise(&sql, dialect, LAST_SQL_CHARS);
                    if cut && !sql.ends_with('…') {
                        sql.push('…');
                    }
                    sql
                });
                (last_sql, in_transaction)
            }
        };
        Some(ConnectionHolder {
            held_for_ms: now.saturating_duration_since(at).as_millis() as u64,
            checked_out_at: site_of(site)
                .map_or_else(|| "<unknown>".to_owned(), ToString::to_string),
            thread: thread_name(thread),
            last_sql,
            in_transaction,
        })
    }
}

/// Every checkout site seen, once each (a site is a place in the code, so
/// the list is as long as the program has places that check out).
fn sites() -> &'static Mutex<Vec<&'static Location<'static>>> {
    static SITES: Mutex<Vec<&'static Location<'static>>> = Mutex::new(Vec::new());
    &SITES
}

/// The number of a checkout site: from this thread's last one when it is
/// the same (the common case: a loop), else from [`sites`].
fn site_number(site: &'static Location<'static>) -> u32 {
    thread_local! {
        static LAST: Cell<Option<(&'static Location<'static>, u32)>> = const { Cell::new(None) };
    }
    LAST.with(|last| {
        if let Some((seen, n)) = last.get() {
            if std::ptr::eq(seen, site) {
                return n;
            }
        }
        let mut all = sites().lock();
        let n = match all
            .iter()
            .position(|s| std::ptr::eq(*s, site) || *s == site)
        {
            Some(i) => i,
            None => {
                all.push(site);
                all.len() - 1
            }
        };
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        last.set(Some((site, n)));
        n
    })
}

fn site_of(n: u32) -> Option<&'static Location<'static>> {
    sites().lock().get(n as usize).copied()
}

/// Threads that checked out a connection and still run, by number, for
/// their names in reports.
fn threads() -> &'static Mutex<HashMap<u64, std::thread::Thread>> {
    static THREADS: OnceLock<Mutex<HashMap<u64, std::thread::Thread>>> = OnceLock::new();
    THREADS.get_or_init(Default::default)
}

/// This thread's entry in [`threads`], removed when the thread ends.
struct ThreadEntry(u64);

impl Drop for ThreadEntry {
    fn drop(&mut self) {
        threads().lock().remove(&self.0);
    }
}

thread_local! {
    /// This thread's number once it has one, else 0: a plain thread-local
    /// read on every checkout (no lazy initialisation to check).
    static NUMBER: Cell<u64> = const { Cell::new(0) };
}

/// This thread's number; the first call on a thread registers it.
#[inline]
fn thread_number() -> u64 {
    match NUMBER.with(Cell::get) {
        0 => register_thread(),
        n => n,
    }
}

/// Numbers this thread and enters it in [`threads`], until it ends.
#[cold]
fn register_thread() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static ME: ThreadEntry = {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            threads().lock().insert(n, std::thread::current());
            ThreadEntry(n)
        };
    }
    // A thread being torn down has no number (and no report needs one).
    let n = ME.try_with(|e| e.0).unwrap_or(0);
    NUMBER.with(|c| c.set(n));
    n
}

fn thread_name(n: u64) -> Option<String> {
    threads().lock().get(&n)?.name().map(str::to_owned)
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(started) = self.tx_started.take() {
            // Lost inside a transaction: the server rolls it back.
            self.counters
                .metrics
                .transaction_ended(false, started.elapsed());
        }
        self.counters
            .metrics
            .connection_closed(self.broken || self.backend.is_closed());
    }
}

/// Counters the pool keeps beside r2d2's state.
pub(crate) struct Counters {
    /// The database's metric handles.
    pub(crate) metrics: Arc<DbMetrics>,
    /// Connections open now (r2d2 counts pending ones too).
    open: AtomicU32,
    pub(crate) waiting: AtomicU32,
    pub(crate) timeouts: AtomicU64,
    pub(crate) discarded: AtomicU64,
    pub(crate) created: AtomicU64,
    /// Connections held past the leak threshold, reported since the start.
    pub(crate) leaks: AtomicU64,
    /// Every open connection's holder record.
    holders: Mutex<Vec<Weak<Holder>>>,
    /// The instant `suspect_before` counts from.
    epoch: Instant,
    /// The backend's dialect, to normalise the holders' last SQL.
    dialect: Dialect,
    /// The latest connection failure, for waiters to return at once.
    last_connect_error: Mutex<Option<(Instant, Arc<Error>)>>,
    /// Idle connections last used before this moment are checked before
    /// use: set when one connection failed at the transport level (the
    /// server restarted, or killed its sessions), so that the others, dead
    /// too most likely, do not each fail a caller in turn. In nanoseconds
    /// since `epoch`, plus one; 0 while no failure was seen (one load on
    /// every checkout, no lock).
    suspect_before: AtomicU64,
}

impl Counters {
    /// `at` in nanoseconds since `epoch`, plus one (so that 0 means never).
    #[inline]
    fn stamp(&self, at: Instant) -> u64 {
        // In u64 arithmetic (584 years of nanoseconds), not u128.
        let d = at.saturating_duration_since(self.epoch);
        d.as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()))
            .min(u64::MAX - 1)
            + 1
    }
}

impl Counters {
    /// The holder record of every open connection.
    fn live_holders(&self) -> Vec<Arc<Holder>> {
        self.holders
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }
}

/// r2d2's view of our backends.
pub(crate) struct Manager {
    connector: Arc<dyn Connector>,
    counters: Arc<Counters>,
    pool_size: u32,
    /// Bounds a session reset on return.
    connect_timeout: Duration,
    max_lifetime: Option<Duration>,
}

impl r2d2::ManageConnection for Manager {
    /// Boxed: r2d2 moves its connections in and out of its idle list, and
    /// the pipeline moves a checked-out one a few times; a pointer is
    /// cheaper to move than the whole record.
    type Connection = Box<Conn>;
    type Error = Error;

    fn connect(&self) -> Result<Box<Conn>> {
        let backend = self.connector.connect().map_err(advise)?;
        self.counters.created.fetch_add(1, Ordering::Relaxed);
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        self.counters.metrics.connection_created();
        let born = Instant::now();
        let holder = Arc::new(Holder::new());
        {
            let mut all = self.counters.holders.lock();
            all.retain(|h| h.strong_count() > 0);
            all.push(Arc::downgrade(&holder));
        }
        Ok(Box::new(Conn {
            canceller: backend.canceller(),
            backend,
            broken: false,
            running: false,
            retired: false,
            retire_at: self.max_lifetime.and_then(|l| born.checked_add(l)),
            last_used: born,
            counters: Arc::clone(&self.counters),
            // A new session has no statement limit.
            server_timeout: Some(None),
            tx_started: None,
            dirty: false,
            memo: None,
            holder,
            site: None,
        }))
    }

    fn is_valid(&self, conn: &mut Box<Conn>) -> Result<()> {
        conn.backend.ping()
    }

    /// Called by r2d2 on every return: broken connections are discarded, and
    /// so is an overflow connection nobody is waiting for. A session that a
    /// statement may have changed is reset here, before anyone else can
    /// check it out (and so that a transaction left open does not hold its
    /// locks while the connection sits idle); one whose reset failed or
    /// that cannot be reset is closed.
    fn has_broken(&self, conn: &mut Box<Conn>) -> bool {
        conn.holder.out.store(false, Ordering::Release);
        // The common case first, in a few loads: a clean connection of the
        // pool's own size back from a plain read.
        let marked = conn.broken | conn.running | conn.retired | conn.dirty;
        let plain = !marked
            && self.counters.open.load(Ordering::Relaxed) <= self.pool_size
            && !conn.backend.is_closed();
        !plain && self.unfit(conn)
    }
}

impl Manager {
    /// Whether a connection coming back must be closed, when it is not
    /// plainly fit (see `has_broken`); a dirty one is reset here.
    #[cold]
    #[inline(never)]
    fn unfit(&self, conn: &mut Conn) -> bool {
        if conn.broken || conn.running || conn.backend.is_closed() {
            self.counters.discarded.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        if conn.retired {
            return true;
        }
        if self.counters.open.load(Ordering::Relaxed) > self.pool_size
            && self.counters.waiting.load(Ordering::Relaxed) == 0
        {
            return true;
        }
        conn.dirty && !self.reset(conn)
    }

    /// Resets a session that a statement may have changed; false when it
    /// must be closed instead.
    fn reset(&self, conn: &mut Conn) -> bool {
        conn.dirty = false;
        // The reset may have undone the server-side statement limit.
        conn.server_timeout = None;
        match bounded(conn, self.connect_timeout, |c| c.reset_session()) {
            Ok(true) => true,
            // The backend has no reset: closing the session is the reset.
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(error = %e, "resetting a session before its reuse failed; the connection is discarded");
                self.counters.discarded.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Runs `f` on a connection bounded by `limit` through the watchdog: a
/// server that stopped answering must not hang the caller. A call that
/// raced its deadline counts as failed.
fn bounded<T>(
    conn: &mut Conn,
    limit: Duration,
    f: impl FnOnce(&mut dyn Connection) -> Result<T>,
) -> Result<T> {
    let dog = Watchdog::global()?;
    let armed = dog.arm(Instant::now() + limit, &conn.canceller);
    let result = f(&mut *conn.backend);
    match (armed.disarm(), result) {
        (Fired::No, r) => r,
        (_, Ok(_)) => {
            // Answered just as the cancel went out: not worth the doubt.
            conn.broken = true;
            Err(Error::new(
                ErrorKind::Connect,
                "the connection check raced its deadline",
            ))
        }
        (_, Err(e)) => Err(e),
    }
}

/// Records connection failures from r2d2's background threads (no secrets:
/// our errors carry none) so that waiting callers can return them.
/// Adds what to do to a connect error whose own message (the server's)
/// does not say it.
#[cold]
fn advise(e: Error) -> Error {
    match e.kind() {
        ErrorKind::Auth => e.with_hint("check the user name and password in the connection string"),
        _ => e,
    }
}

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

thread_local! {
    /// How long this thread's last wait for a connection took, as r2d2
    /// timed it (its checkout event comes on the thread that waited, just
    /// before the connection is handed over).
    static WAITED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// Hands r2d2's timing of a wait to the thread that waited.
#[derive(Debug)]
struct Waits;

impl r2d2::HandleEvent for Waits {
    fn handle_checkout(&self, event: r2d2::event::CheckoutEvent) {
        WAITED.with(|w| w.set(event.duration()));
    }
}

/// A pooled connection, back to the pool on drop.
pub(crate) type Pooled = r2d2::PooledConnection<Manager>;

/// The pool of one database.
pub(crate) struct Pool {
    inner: r2d2::Pool<Manager>,
    connector: Arc<dyn Connector>,
    probe_lock: Mutex<()>,
    counters: Arc<Counters>,
    database: Arc<str>,
    acquire_timeout: Duration,
    connect_timeout: Duration,
    validate_after_idle: Duration,
    pool_size: u32,
    max_overflow: u32,
    /// Registered (weakly) with the watchdog's sweep while the pool lives.
    _leak_watch: Option<Arc<LeakWatch>>,
}

/// Reports connections held past the threshold, once each.
struct LeakWatch {
    counters: Arc<Counters>,
    database: Arc<str>,
    threshold: Duration,
}

impl Sweep for LeakWatch {
    fn sweep(&self, now: Instant) {
        for h in self.counters.live_holders() {
            let overdue = h
                .since()
                .is_some_and(|at| now.saturating_duration_since(at) >= self.threshold);
            if overdue && !h.leak_reported.swap(true, Ordering::Relaxed) {
                self.counters.leaks.fetch_add(1, Ordering::Relaxed);
                if let Some(r) = h.report(now, self.counters.dialect) {
                    tracing::warn!(
                        database = %self.database,
                        held_for_ms = r.held_for_ms,
                        checked_out_at = %r.checked_out_at,
                        thread = r.thread.as_deref().unwrap_or("<unnamed>"),
                        in_transaction = r.in_transaction,
                        last_sql = r.last_sql.as_deref().unwrap_or(""),
                        "a connection has been held out of the pool longer than the leak threshold of {}; \
                         is a guard or transaction kept alive by mistake?",
                        crate::error::fmt_duration(self.threshold)
                    );
                }
            }
        }
    }
}

impl Pool {
    pub(crate) fn new(
        config: &DatabaseConfig,
        connector: Box<dyn Connector>,
        metrics: Arc<DbMetrics>,
    ) -> Pool {
        let connector: Arc<dyn Connector> = Arc::from(connector);
        let counters = Arc::new(Counters {
            metrics,
            open: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            timeouts: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            created: AtomicU64::new(0),
            leaks: AtomicU64::new(0),
            holders: Mutex::new(Vec::new()),
            epoch: Instant::now(),
            dialect: connector.dialect(),
            last_connect_error: Mutex::new(None),
            suspect_before: AtomicU64::new(0),
        });
        let manager = Manager {
            connector: Arc::clone(&connector),
            counters: Arc::clone(&counters),
            pool_size: config.pool_size,
            connect_timeout: config.connect_timeout,
            max_lifetime: config.max_lifetime,
        };
        let inner = r2d2::Pool::builder()
            .max_size(config.max_size())
            .min_idle(Some(0))
            .idle_timeout(Some(config.idle_timeout).filter(|t| !t.is_zero()))
            .max_lifetime(config.max_lifetime)
            .connection_timeout(config.acquire_timeout)
            .test_on_check_out(false)
            .event_handler(Box::new(Waits))
            .error_handler(Box::new(ConnectErrors {
                counters: Arc::clone(&counters),
                database: Arc::clone(&config.name),
            }))
            .build_unchecked(manager);
        let leak_watch = config.leak_threshold.and_then(|threshold| {
            let watch = Arc::new(LeakWatch {
                counters: Arc::clone(&counters),
                database: Arc::clone(&config.name),
                threshold,
            });
            match Watchdog::global() {
                Ok(dog) => {
                    let weak: Weak<dyn Sweep> = Arc::downgrade(&watch) as Weak<LeakWatch>;
                    dog.add_sweeper(weak);
                    Some(watch)
                }
                Err(e) => {
                    tracing::warn!(database = %config.name, error = %e, "leak detection is off");
                    None
                }
            }
        });
        Pool {
            _leak_watch: leak_watch,
            inner,
            connector,
            probe_lock: Mutex::new(()),
            counters,
            database: Arc::clone(&config.name),
            acquire_timeout: config.acquire_timeout,
            connect_timeout: config.connect_timeout,
            validate_after_idle: config.validate_after_idle,
            pool_size: config.pool_size,
            max_overflow: config.max_overflow,
        }
    }

    /// Checks a connection out, bounded by `timeout` (the configured
    /// acquisition timeout when `None`), and records `site` as its holder.
    ///
    /// `start` is when the caller began to wait; the checkout time is
    /// returned beside the connection: `start` plus the wait as r2d2 timed
    /// it (no clock read of ours serves the idle check, the holder record
    /// and the caller's metrics). Called when [`try_get`](Self::try_get)
    /// found none idle.
    pub(crate) fn get(
        &self,
        start: Instant,
        timeout: Option<Duration>,
        site: &'static Location<'static>,
    ) -> Result<(Pooled, Instant)> {
        let (mut conn, now) = self.get_conn(start, timeout)?;
        Self::hold(&mut conn, now, site);
        Ok((conn, now))
    }

    /// Records who holds a connection just handed out, under its record's
    /// lock (uncontended: only the holder's statements and a report take
    /// it).
    #[inline]
    fn hold(conn: &mut Conn, now: Instant, site: &'static Location<'static>) {
        let site = match conn.site {
            Some((seen, n)) if std::ptr::eq(seen, site) => n,
            _ => {
                let n = site_number(site);
                conn.site = Some((site, n));
                n
            }
        };
        let thread = thread_number();
        let h = &conn.holder;
        let mut d = h.detail.lock();
        d.since = Some(now);
        d.site = site;
        d.thread = thread;
        d.fresh = true;
        drop(d);
        h.leak_reported.store(false, Ordering::Relaxed);
        h.out.store(true, Ordering::Release);
    }

    /// Waits for a connection (the caller found none idle), vets it, and
    /// waits again for another while the one had was unfit.
    fn get_conn(&self, start: Instant, timeout: Option<Duration>) -> Result<(Pooled, Instant)> {
        let timeout = timeout.unwrap_or(self.acquire_timeout).min(MAX_DURATION);
        let deadline = start + timeout;
        let mut began = start;
        loop {
            let (mut conn, now) = self.wait(began, deadline, timeout)?;
            if let Some(now) = self.vet(&mut conn, now) {
                return Ok((conn, now));
            }
            // Unfit: back to r2d2, which discards it.
            drop(conn);
            began = Instant::now();
            if began >= deadline {
                return Err(self.timed_out(timeout));
            }
        }
    }

    /// An idle connection if one is free now, without waiting and without
    /// opening one; `None` otherwise.
    /// `now` is the clock read the caller already made (a connection that
    /// needs no ping is vetted and recorded as taken then).
    ///
    /// Always inlined: the hot path of every checkout, whose result (the
    /// pooled connection) would otherwise be copied out of it.
    #[inline(always)]
    pub(crate) fn try_get(
        &self,
        now: Instant,
        site: &'static Location<'static>,
    ) -> Option<(Pooled, Instant)> {
        let mut conn = self.inner.try_get()?;
        // Unfit, it goes back to r2d2 (which discards it) when dropped here.
        let now = self.vet(&mut conn, now)?;
        Self::hold(&mut conn, now, site);
        Some((conn, now))
    }

    /// Checks a connection taken from the pool before it is handed out: one
    /// past its lifetime is closed (r2d2 reaps old connections only every
    /// 30 s), one that sat idle long enough or may have been lost is pinged.
    /// Returns when it was found fit (`now`, or after a ping the time the
    /// ping ended); `None` when it was not fit, marked to be discarded.
    ///
    /// Always inlined: in the common case (used recently, before its
    /// lifetime, no connection lost of late) it is a few comparisons and
    /// the backend's look at its socket.
    #[inline(always)]
    fn vet(&self, conn: &mut Conn, now: Instant) -> Option<Instant> {
        // Fresh: used less than `validate_after_idle` ago (an addition and a
        // comparison, cheaper than measuring the idle time).
        let fresh = conn
            .last_used
            .checked_add(self.validate_after_idle)
            .map_or(true, |until| now < until);
        if fresh
            && conn.retire_at.map_or(true, |at| now < at)
            && self.counters.suspect_before.load(Ordering::Relaxed) == 0
        {
            if conn.backend.peer_closed() {
                self.closed_by_peer(conn);
                return None;
            }
            return Some(now);
        }
        self.vet_closer(conn, now)
    }

    /// [`vet`](Self::vet) for a connection past its lifetime, or idle for
    /// long, or idle since before a connection was lost.
    #[cold]
    #[inline(never)]
    fn vet_closer(&self, conn: &mut Conn, now: Instant) -> Option<Instant> {
        if conn.retire_at.is_some_and(|at| now >= at) {
            conn.retired = true;
            return None;
        }
        let suspect = match self.counters.suspect_before.load(Ordering::Relaxed) {
            0 => false,
            before => self.counters.stamp(conn.last_used) < before,
        };
        let fresh = conn
            .last_used
            .checked_add(self.validate_after_idle)
            .map_or(true, |until| now < until);
        if !suspect && fresh {
            if conn.backend.peer_closed() {
                self.closed_by_peer(conn);
                return None;
            }
            return Some(now);
        }
        self.vet_by_ping(conn)
    }

    /// Marks a connection its server closed while it sat idle (killed or
    /// reset): found before anything was written to it, so no statement
    /// fails on it.
    #[cold]
    fn closed_by_peer(&self, conn: &mut Conn) {
        tracing::debug!(database = %self.database, "discarding a connection its server closed");
        conn.broken = true;
    }

    /// Pings a connection that sat idle or may have been lost: when the
    /// ping ended if it answered, else `None` (marked to be discarded).
    #[cold]
    #[inline(never)]
    fn vet_by_ping(&self, conn: &mut Conn) -> Option<Instant> {
        match self.ping(conn) {
            Ok(()) => {
                let now = Instant::now();
                conn.last_used = now;
                Some(now)
            }
            Err(e) => {
                tracing::debug!(database = %self.database, host = conn.backend.host(), error = %e, "discarding a stale connection");
                conn.broken = true;
                None
            }
        }
    }

    /// Pings a connection that sat idle, bounded by the connect timeout
    /// through the watchdog: a server that stopped answering must not hang
    /// the checkout.
    fn ping(&self, conn: &mut Conn) -> Result<()> {
        bounded(conn, self.connect_timeout, |c| c.ping())
    }

    /// Waits until `deadline` for a connection, the wait beginning at
    /// `began` (a clock read made just before). Returns it with when it was
    /// had: `began` plus the wait as r2d2 timed it, so that a wait costs no
    /// clock read of ours (r2d2 reads the clock around it anyway).
    fn wait(
        &self,
        mut began: Instant,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(Pooled, Instant)> {
        self.counters.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = scopeguard(|| {
            self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
        });
        if self.counters.open.load(Ordering::Relaxed) == 0 {
            self.probe(deadline)?;
            began = Instant::now();
        }
        let left = deadline.saturating_duration_since(began);
        if left.is_zero() {
            return Err(self.timed_out(timeout));
        }
        let conn = self
            .inner
            .get_timeout(left)
            .map_err(|_| self.timed_out(timeout))?;
        let waited = WAITED.with(Cell::get);
        Ok((conn, began.checked_add(waited).unwrap_or(began)))
    }

    /// With no connection open (a cold start, or every connection lost), one
    /// caller at a time opens a connection itself: if that fails, the caller
    /// gets the real error (wrong password, server down) now rather than a
    /// pool timeout later. Others wait for the probe and share its verdict.
    fn probe(&self, deadline: Instant) -> Result<()> {
        let asked = Instant::now();
        let Some(_probing) = self.probe_lock.try_lock_until(deadline) else {
            return Ok(());
        };
        if let Some((at, err)) = &*self.counters.last_connect_error.lock() {
            if *at >= asked {
                return Err(err.duplicate());
            }
        }
        if self.inner.state().connections > 0 {
            return Ok(());
        }
        match self.connector.connect().map_err(advise) {
            Ok(_) => Ok(()),
            Err(e) => {
                *self.counters.last_connect_error.lock() =
                    Some((Instant::now(), Arc::new(e.duplicate())));
                Err(e)
            }
        }
    }

    #[cold]
    fn timed_out(&self, timeout: Duration) -> Error {
        self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
        Error::pool_timeout(timeout, self.holders())
    }

    /// Every checked-out connection's holder, longest held first.
    pub(crate) fn holders(&self) -> Vec<ConnectionHolder> {
        let now = Instant::now();
        let all = self.counters.live_holders();
        let mut out: Vec<ConnectionHolder> = all
            .iter()
            .filter_map(|h| h.report(now, self.counters.dialect))
            .collect();
        out.sort_by_key(|h| std::cmp::Reverse(h.held_for_ms));
        out
    }

    /// A pooled connection failed at the transport level at `at`: every
    /// connection idle since before then is checked before its next use.
    pub(crate) fn suspect_idle(&self, at: Instant) {
        self.counters
            .suspect_before
            .fetch_max(self.counters.stamp(at), Ordering::Relaxed);
    }

    /// Records the statement a connection is about to run.
    /// Returns whether it is the statement the connection ran last (the
    /// same text), so that what was learnt of that one may be reused.
    pub(crate) fn note(conn: &mut Conn, sql: &str, transaction: Option<bool>) -> bool {
        let mut h = conn.holder.detail.lock();
        if h.fresh {
            h.fresh = false;
            h.in_transaction = false;
        }
        let mut same = false;
        if !h.last_sql_cut && h.last_sql == sql {
            // The same statement again (a loop): nothing to cut, trim or
            // copy. (The text kept is trimmed and short, so the statement
            // is kept as it is.)
            same = !sql.is_empty();
        } else if !sql.is_empty() {
            let end = sql
                .char_indices()
                .nth(LAST_SQL_CHARS)
                .map_or(sql.len(), |(i, _)| i);
            let kept = sql[..end].trim();
            let cut = end < sql.len();
            // The same statement again (a loop): nothing to copy.
            same = !cut && !h.last_sql_cut && h.last_sql == kept && kept.len() == sql.len();
            if !same {
                h.last_sql.clear();
                h.last_sql.push_str(kept);
                h.last_sql_cut = cut;
            }
        }
        if let Some(t) = transaction {
            h.in_transaction = t;
        }
        drop(h);
        same
    }

    /// Marks a connection as used at `at` (the end of a statement).
    #[inline]
    pub(crate) fn touch(conn: &mut Conn, at: Instant) {
        conn.last_used = at;
    }

    /// The status of a pool that was closed: no connections, the
    /// configured sizes.
    pub(crate) fn closed_status(config: &DatabaseConfig, circuit: CircuitState) -> PoolStatus {
        PoolStatus {
            database_name: config.name.to_string(),
            pool_size: config.pool_size,
            max_overflow: config.max_overflow,
            max_size: config.max_size(),
            connections: 0,
            checked_in: 0,
            checked_out: 0,
            overflow: 0,
            invalid: 0,
            waiting: 0,
            timeouts: 0,
            connections_created: 0,
            suspected_leaks: 0,
            read_only: config.read_only,
            circuit,
            timestamp: crate::status::now_rfc3339(),
            serving_host: None,
            serving_role: None,
        }
    }

    /// A snapshot of the pool now.
    pub(crate) fn status(&self, read_only: bool, circuit: CircuitState) -> PoolStatus {
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
            suspected_leaks: self.counters.leaks.load(Ordering::Relaxed),
            read_only,
            circuit,
            timestamp: crate::status::now_rfc3339(),
            serving_host: None,
            serving_role: None,
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
