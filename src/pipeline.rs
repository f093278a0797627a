//! THE choke point: every statement from every API passes through
//! [`Shared::run_at`], so each cross-cutting concern lives here once. Its
//! stages, each a function of its own, in order:
//!
//! 1. [`refuse_writes`](Shared::refuse_writes): on a read-only database,
//!    a statement the classifier sees writing is refused before any I/O;
//! 2. checkout ([`checkout_within`](Shared::checkout_within)), past the
//!    circuit breaker ([`admit`](Shared::admit)), bounded by the acquisition
//!    timeout; a statement on a held guard or transaction skips both;
//! 3. [`prepare`](Shared::prepare): portable SQL → native SQL (cached per
//!    statement text), values bound in placeholder order;
//! 4. [`budget`](Shared::budget): THE place the timeout in force is worked
//!    out (the statement's own limit or the database's, within a
//!    transaction's deadline);
//! 5. [`execute`](Shared::execute): the deadline registered with the
//!    watchdog (a guard: a panic deregisters it), the server's own limit set
//!    a little above it, the statement run on the backend;
//! 6. [`settle`](Shared::settle): a fired deadline becomes `QueryTimeout`;
//!    the connection's fate (reused only when proven clean); what the
//!    statement showed of the server, told to the breaker
//!    ([`report`](Shared::report), the only other place that touches it);
//! 7. [`account`](Shared::account): metrics, the timeout-rate window,
//!    statement statistics, the slow-statement log and tracing.
//!
//! A connection is marked running from stage 5 until stage 7 is done; one
//! returned to the pool with the mark (a panic unwound through) is
//! discarded. One whose session a statement may have changed is marked
//! dirty, and the pool resets its session before its next borrower.
//!
//! Around it, [`Shared::retrying`] is THE retry loop: callers that may
//! safely repeat a whole operation wrap it there; it never sits inside a
//! transaction.

use std::any::Any;
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::panic::Location;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::backend::{self, Connector};
use crate::config::{DatabaseConfig, MAX_QUERY_TIMEOUT};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::{DbMetrics, PoolSnapshot, PoolSource, OPERATIONS};
use crate::observe::{StatTable, TimeoutWindow, SQL_IN_LOGS};
use crate::pool::{Pool, Pooled};
use crate::resilience::{backoff, jitter_unit, Admit, Breaker, RetryPolicy, Transition};
use crate::sql::{self, Binds, Dialect, Translated};
use crate::status::{CircuitState, PoolStatus, ScalingLevel};
use crate::topology::{self, Serving};
use crate::value::{Params, Row, Value};
use crate::watchdog::{Armed, Fired, Watchdog};

/// How much longer than the client's limit the server's own limit is, so
/// that the watchdog (which says precisely what happened) fires first and
/// the server still stops a statement whose client died.
const SERVER_MARGIN: Duration = Duration::from_secs(1);

/// The time limit of one statement, as its caller asked for it.
/// [`Shared::budget`] turns it into the timeout in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limit {
    /// The statement's own limit: `None` for the database's query timeout,
    /// `Some(None)` for no limit.
    own: Option<Option<Duration>>,
    /// A whole transaction's deadline, and the timeout it came from.
    deadline: Option<(Instant, Duration)>,
}

impl Limit {
    /// The database's configured query timeout.
    pub(crate) const DEFAULT: Limit = Limit {
        own: None,
        deadline: None,
    };

    /// `timeout` in place of the database's query timeout; `None` for none.
    /// Above 24 days it is 24 days, the longest the servers' own limits
    /// count (milliseconds in 32 bits).
    pub(crate) fn custom(timeout: Option<Duration>) -> Limit {
        Limit {
            own: Some(timeout.map(|t| t.min(MAX_QUERY_TIMEOUT))),
            deadline: None,
        }
    }

    /// This limit where it says something, `fallback` where it does not.
    pub(crate) fn or(self, fallback: Limit) -> Limit {
        Limit {
            own: self.own.or(fallback.own),
            deadline: self.deadline.or(fallback.deadline),
        }
    }

    /// This limit, within a whole transaction's `deadline` (set `whole` ago
    /// by a timeout of `whole`).
    pub(crate) fn within(self, deadline: Option<(Instant, Duration)>) -> Limit {
        Limit {
            deadline: deadline.or(self.deadline),
            ..self
        }
    }
}

/// The timeout in force for one statement.
struct Budget {
    timeout: Option<Duration>,
    /// Set when a transaction's deadline, not the statement's own limit,
    /// decided it: the whole transaction's timeout.
    whole: Option<Duration>,
}

/// A statement ready to run: its native text (when it differs from the
/// caller's) and its values in placeholder order.
struct Prepared<'p> {
    translated: Option<Arc<Translated>>,
    values: Cow<'p, [Value]>,
}

impl Prepared<'_> {
    fn native<'a>(&'a self, sql: &'a str) -> &'a str {
        self.translated.as_deref().map_or(sql, |t| t.sql.as_str())
    }
}

/// What the circuit breaker is told: the one vocabulary of
/// [`Shared::report`].
#[derive(Clone, Copy, Debug)]
enum Signal {
    /// The server answered.
    Up,
    /// A connection-level failure: opening a connection failed or timed
    /// out, or a statement's connection had to be cut.
    Down,
    /// The verdict of an open breaker's probe.
    Probed(bool),
}

/// The name of the thread that probes a database while its breaker is open.
const PROBER: &str = "dbmanager-probe";

/// The hint of a `QueryTimeout` that a transaction's deadline decided.
const TRANSACTION_HINT: &str = "give the transaction a longer timeout";

/// Statement texts whose translation is kept per manager.
const TRANSLATION_CACHE: usize = 1024;

/// What a statement is run for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Rows wanted.
    Query,
    /// Affected-row count wanted.
    Execute,
    /// A parameterless script.
    Batch,
    /// Transaction control.
    Begin,
    Commit,
    Rollback,
    /// One statement of a migration script, run exactly as written: no
    /// portable-SQL translation, no parameters.
    Script,
    /// A `COPY … FROM STDIN` with its data (the one parameter), through the
    /// backend's COPY protocol.
    Copy,
}

impl Op {
    /// The `operation` label: [`OPERATIONS`] follows this enum's order.
    pub(crate) fn name(self) -> &'static str {
        OPERATIONS[self as usize]
    }

    /// Whether it opens (`Some(true)`) or ends (`Some(false)`) a transaction.
    fn transaction_effect(self) -> Option<bool> {
        match self {
            Op::Begin => Some(true),
            Op::Commit | Op::Rollback => Some(false),
            _ => None,
        }
    }
}

/// What a statement produced.
pub(crate) enum Outcome {
    Rows(Vec<Row>),
    Affected(u64),
    Done,
}

/// Everything one database's manager shares across threads.
pub(crate) struct Shared {
    /// Itself, for the threads it starts (the breaker's prober).
    me: Weak<Shared>,
    pub(crate) config: DatabaseConfig,
    pool: RwLock<Option<Arc<Pool>>>,
    pub(crate) dialect: Dialect,
    refuses_async: bool,
    translations: Mutex<HashMap<Box<str>, Arc<Translated>, sql::TextHash>>,
    pub(crate) metrics: Arc<DbMetrics>,
    pub(crate) window: TimeoutWindow,
    pub(crate) stats: StatTable,
    pub(crate) breaker: Breaker,
    /// Which host of the host list serves (see `topology`).
    pub(crate) serving: Arc<Serving>,
    /// The read replicas' pool, made on first use of `replica()`.
    pub(crate) replica: std::sync::OnceLock<Arc<Shared>>,
    /// The replicas' replay lag in seconds as last measured, and when
    /// (`None` inside: could not be measured).
    pub(crate) replica_lag: Mutex<Option<(Instant, Option<f64>)>>,
    /// State a service above the pipeline keeps per database (the query
    /// cache), made on first use. Opaque here: the pipeline knows nothing
    /// of what is in it.
    pub(crate) service_state: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl Shared {
    pub(crate) fn new(config: DatabaseConfig) -> Result<Arc<Shared>> {
        let metrics = Arc::new(DbMetrics::new(&config.name, config.metrics));
        let (connector, serving): (Box<dyn Connector>, _) =
            topology::connector(&config, Arc::clone(&metrics))
                .map_err(|e| e.on_database(&config.name))?;
        let dialect = connector.dialect();
        let refuses_async = connector.refuses_async_context();
        let pool = Pool::new(&config, connector, Arc::clone(&metrics));
        Ok(Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            pool: RwLock::new(Some(Arc::new(pool))),
            dialect,
            refuses_async,
            translations: Mutex::new(HashMap::default()),
            metrics,
            window: TimeoutWindow::new(),
            stats: StatTable::new(),
            breaker: Breaker::new(config.breaker),
            serving,
            replica: std::sync::OnceLock::new(),
            replica_lag: Mutex::new(None),
            service_state: OnceLock::new(),
            config,
        }))
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.config.name
    }

    fn pool(&self) -> Result<Arc<Pool>> {
        self.pool
            .read()
            .clone()
            .ok_or_else(|| Error::closed().on_database(self.name()))
    }

    /// Refuses calls from a thread that drives an async runtime when the
    /// backend's blocking client would panic there.
    fn check_context(&self) -> Result<()> {
        if self.refuses_async && tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::new(
                ErrorKind::AsyncContext,
                "this blocking call was made on an async runtime thread; \
                 run it inside tokio::task::spawn_blocking (or a plain thread)",
            )
            .on_database(self.name()));
        }
        Ok(())
    }

    /// Checks a connection out of the pool; the caller's location is
    /// recorded as its holder.
    #[track_caller]
    pub(crate) fn checkout(&self) -> Result<Pooled> {
        self.checkout_within(None, Location::caller())
    }

    /// Checks a connection out within `timeout` (the acquisition timeout
    /// when `None`), recording the wait in metrics. Stage 1 of the choke
    /// point, the circuit breaker, is passed here: every statement that
    /// needs a connection passes by it once.
    #[inline]
    pub(crate) fn checkout_within(
        &self,
        timeout: Option<Duration>,
        site: &'static Location<'static>,
    ) -> Result<Pooled> {
        self.checkout_since(Instant::now(), timeout, site)
            .map(|(conn, _)| conn)
    }

    /// As [`checkout_within`](Self::checkout_within), the wait counted from
    /// `start` (a clock read the caller just made). Also returns when the
    /// connection was had: `start` itself when one was idle and fit at once,
    /// so that a statement run on it needs no clock read of its own.
    #[inline]
    fn checkout_since(
        &self,
        start: Instant,
        timeout: Option<Duration>,
        site: &'static Location<'static>,
    ) -> Result<(Pooled, Instant)> {
        self.check_context()?;
        self.admit()?;
        self.checkout_counted(start, timeout, site)
    }

    /// A connection if one is free now: never waits and never opens one
    /// (`None` then). The breaker is passed as by any checkout.
    pub(crate) fn try_checkout(&self, site: &'static Location<'static>) -> Result<Option<Pooled>> {
        self.check_context()?;
        self.admit()?;
        let conn = self
            .pool()?
            .try_get(Instant::now(), site)
            .map(|(conn, _)| conn);
        if conn.is_some() {
            self.metrics.acquired_at_once();
        }
        Ok(conn)
    }

    /// Checks that the server answers: a connection (past the breaker) and
    /// `SELECT 1`, within `timeout`. The health check and the breaker's
    /// prober both use it, and what it finds is reported to the breaker like
    /// any statement, so a health check that gets an answer closes an open
    /// breaker. `Err((connected, error))`.
    pub(crate) fn probe_server(
        &self,
        timeout: Duration,
        site: &'static Location<'static>,
    ) -> std::result::Result<(), (bool, Error)> {
        let deadline = Instant::now() + timeout;
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        let (mut conn, _) = self
            .checkout_counted(Instant::now(), Some(left()), site)
            .map_err(|e| (false, e))?;
        self.run_at(
            Some(&mut conn),
            Op::Query,
            "SELECT 1",
            Params::None,
            Limit::custom(Some(left())),
            site,
        )
        .map(drop)
        .map_err(|e| (true, e))
    }

    /// Stage 2: the checkout itself, bounded by the acquisition timeout,
    /// the wait counted from `start`; returns when the connection was had.
    fn checkout_counted(
        &self,
        start: Instant,
        timeout: Option<Duration>,
        site: &'static Location<'static>,
    ) -> Result<(Pooled, Instant)> {
        // An idle connection at once, under the read lock (no reference
        // count to take); else wait on a pool of its own, so that a waiter
        // never holds up `close`. Taken at once, it is timed by that one
        // clock read: 0 s (a ping of a connection idle for long is timed).
        let now = match &*self.pool.read() {
            Some(pool) => pool.try_get(start, site),
            None => return Err(Error::closed().on_database(self.name())),
        };
        if let Some((c, now)) = now {
            if now == start {
                self.metrics.acquired_at_once();
            } else {
                self.metrics.acquired(now.saturating_duration_since(start));
            }
            return Ok((c, now));
        }
        match self.pool()?.get(start, timeout, site) {
            Ok((c, now)) => {
                self.metrics.acquired(now.saturating_duration_since(start));
                Ok((c, now))
            }
            Err(e) => {
                let now = Instant::now();
                self.metrics.acquired(now.saturating_duration_since(start));
                if e.kind() == ErrorKind::PoolTimeout {
                    self.metrics.pool_timeout();
                    self.scaling(now, true);
                } else {
                    self.metrics.failure(e.kind());
                }
                if matches!(
                    e.kind(),
                    ErrorKind::Connect | ErrorKind::ConnectTimeout | ErrorKind::PoolTimeout
                ) {
                    self.report(Signal::Down, now);
                }
                Err(e.on_database(self.name()))
            }
        }
    }

    // The circuit breaker, in one place: `admit` asks it, `report` tells it,
    // and nothing else in the crate touches it.

    /// May a call go through? `Err(CircuitOpen)` while the breaker is open.
    fn admit(&self) -> Result<()> {
        match self.breaker.admit_now() {
            Admit::Pass => Ok(()),
            Admit::Reject(next_probe) => {
                Err(Error::circuit_open(next_probe, &self.recovery_hint()).on_database(self.name()))
            }
        }
    }

    /// Tells the breaker what a checkout, a statement or a probe showed of
    /// the server. When that opens the breaker, the prober starts.
    fn report(&self, signal: Signal, at: Instant) {
        if matches!(signal, Signal::Down) && HeldFailures::hold() {
            return;
        }
        let change = match signal {
            Signal::Up => self.breaker.succeeded(),
            Signal::Down => self.breaker.failed(at),
            Signal::Probed(ok) => self.breaker.probed(ok, at),
        };
        self.circuit_changed(change);
        if matches!(change, Some((CircuitState::Closed, CircuitState::Open))) {
            self.start_prober();
        }
    }

    /// Starts the thread that probes the server while the breaker is open,
    /// soon and then less and less often, and stops once it is closed (or
    /// the manager is gone). If the thread cannot start, the breaker closes
    /// again: calls then find out for themselves, more slowly, rather than
    /// failing until a probe that never comes.
    #[cold]
    fn start_prober(&self) {
        let me = self.me.clone();
        let started = std::thread::Builder::new()
            .name(PROBER.into())
            .spawn(move || loop {
                let wait = match me.upgrade() {
                    Some(shared) if !shared.is_closed() => {
                        match shared.breaker.until_probe(Instant::now()) {
                            Some(wait) => wait,
                            None => return,
                        }
                    }
                    _ => return,
                };
                std::thread::sleep(wait);
                let Some(shared) = me.upgrade() else { return };
                let probed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    shared.probe_once();
                }));
                if probed.is_err() {
                    shared.report(Signal::Probed(false), Instant::now());
                }
            });
        if let Err(e) = started {
            tracing::error!(
                database = %self.config.name,
                error = %e,
                "the circuit breaker's prober could not start; closing the breaker"
            );
            self.report(Signal::Up, Instant::now());
        }
    }

    /// One probe of an open breaker, if one is due.
    fn probe_once(&self) {
        if !self.breaker.start_probe(Instant::now()) {
            return;
        }
        let timeout = self.config.health_timeout.min(self.config.connect_timeout);
        let ok = self.probe_server(timeout, Location::caller()).is_ok();
        self.report(Signal::Probed(ok), Instant::now());
    }

    /// What to change to make the breaker probe sooner, for its error.
    fn recovery_hint(&self) -> String {
        let setting = match &self.config.var_stem {
            Some(stem) => format!("{stem}CIRCUIT_RECOVERY"),
            None => "DatabaseConfigBuilder::circuit_recovery".to_owned(),
        };
        format!(
            "{setting} sets the wait between probes, now {}",
            crate::error::fmt_duration(self.breaker.recovery())
        )
    }

    /// The circuit breaker's state now.
    pub(crate) fn circuit_state(&self) -> CircuitState {
        self.breaker.state()
    }

    /// Logs and counts a change of the breaker's state.
    fn circuit_changed(&self, change: Transition) {
        if let Some((from, to)) = change {
            self.metrics.circuit(to);
            match to {
                CircuitState::Open => tracing::warn!(
                    database = %self.config.name,
                    from = ?from,
                    recovery_ms = self.breaker.recovery().as_millis() as u64,
                    "circuit breaker opened: calls fail at once until a probe answers"
                ),
                _ => tracing::info!(
                    database = %self.config.name,
                    from = ?from,
                    to = ?to,
                    "circuit breaker changed state"
                ),
            }
        }
    }

    /// THE retry loop: runs `attempt` until it succeeds, fails with an
    /// error it does not mark transient, or the policy's attempts or time
    /// budget run out; waits with exponential backoff and full jitter in
    /// between, logging and counting each retry.
    ///
    /// `attempt` returns the error with `Some(kind)` when it is transient and
    /// the attempt may be repeated as a whole. Callers decide what is safe to
    /// repeat (a read, a whole transaction); this loop decides only when.
    pub(crate) fn retrying<T, E>(
        &self,
        policy: &RetryPolicy,
        operation: &'static str,
        attempt: impl FnMut() -> std::result::Result<T, (E, Option<ErrorKind>)>,
    ) -> std::result::Result<T, E> {
        self.retrying_since(policy, operation, Instant::now(), attempt)
    }

    /// [`retrying`](Self::retrying), the policy's time budget counted from
    /// `started` (a clock read the caller made, and may hand to its first
    /// attempt).
    pub(crate) fn retrying_since<T, E>(
        &self,
        policy: &RetryPolicy,
        operation: &'static str,
        started: Instant,
        mut attempt: impl FnMut() -> std::result::Result<T, (E, Option<ErrorKind>)>,
    ) -> std::result::Result<T, E> {
        let mut retry: u32 = 0;
        // Connection failures a retry absorbs are not the breaker's business:
        // they are held back and reported only if the operation fails.
        let mut held = HeldFailures::start(self);
        loop {
            let (e, kind) = match attempt() {
                Ok(v) => return Ok(v),
                Err(failed) => failed,
            };
            held.failed = true;
            let Some(kind) = kind else { return Err(e) };
            if retry + 1 >= policy.attempts {
                return Err(e);
            }
            let delay = backoff(retry, policy.base_delay, policy.max_delay, jitter_unit());
            if started.elapsed() + delay > policy.budget {
                return Err(e);
            }
            held.failed = false;
            retry += 1;
            self.metrics.retried();
            tracing::warn!(
                database = %self.config.name,
                operation,
                retry,
                of = policy.attempts - 1,
                kind = ?kind,
                delay_ms = delay.as_millis() as u64,
                "transient failure; retrying"
            );
            std::thread::sleep(delay);
        }
    }

    /// Counts a statement or checkout in the timeout-rate window; logs a
    /// change of scaling level.
    fn scaling(&self, at: Instant, timed_out: bool) {
        if let Some(level) = self.window.record(at, timed_out) {
            self.log_level(level, at);
        }
    }

    /// The scaling level now (logged when it changed).
    pub(crate) fn scaling_level(&self, now: Instant) -> ScalingLevel {
        let (level, changed) = self.window.level(now);
        if changed {
            self.log_level(level, now);
        }
        level
    }

    #[cold]
    fn log_level(&self, level: ScalingLevel, at: Instant) {
        tracing::warn!(
            database = %self.config.name,
            timeout_rate = self.window.rate(at),
            level = ?level,
            "scaling signal changed: {}",
            level.advice()
        );
    }

    /// Everything learnt from one finished statement.
    fn observe(
        &self,
        op: Op,
        native: &str,
        started: Instant,
        elapsed: Duration,
        failure: Option<ErrorKind>,
        fired: bool,
    ) {
        self.metrics.statement(op as usize, elapsed);
        if let Some(kind) = failure {
            self.metrics.failure(kind);
        }
        if fired {
            self.metrics.cancelled();
        }
        self.scaling(started, failure == Some(ErrorKind::QueryTimeout));
        if matches!(op, Op::Query | Op::Execute | Op::Batch) {
            if self.config.metrics {
                self.stats.record(native, elapsed, failure.is_some());
            }
            if self
                .config
                .slow_query_threshold
                .is_some_and(|t| elapsed >= t)
            {
                self.metrics.slow();
                tracing::warn!(
                    database = %self.config.name,
                    elapsed_ms = elapsed.as_millis() as u64,
                    sql = %sql::normalise(native, self.dialect, SQL_IN_LOGS),
                    "slow statement"
                );
            }
        }
    }

    /// THE place a statement's timeout is worked out: its own limit (or the
    /// database's query timeout), cut to what is left of its transaction's
    /// deadline. A deadline already passed is a `QueryTimeout` at once.
    fn budget(&self, limit: Limit, now: Instant) -> Result<Budget> {
        let own = limit.own.unwrap_or(self.config.query_timeout);
        let Some((deadline, whole)) = limit.deadline else {
            return Ok(Budget {
                timeout: own,
                whole: None,
            });
        };
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(Error::query_timeout(whole, TRANSACTION_HINT).on_database(self.name()));
        }
        Ok(match own {
            Some(t) if t <= left => Budget {
                timeout: Some(t),
                whole: None,
            },
            _ => Budget {
                timeout: Some(left),
                whole: Some(whole),
            },
        })
    }

    /// The error of a statement cancelled at its deadline: it says which
    /// setting to change.
    fn timed_out(&self, limit: Limit, budget: &Budget) -> Error {
        if let Some(whole) = budget.whole {
            return Error::query_timeout(whole, TRANSACTION_HINT);
        }
        let hint = match limit.own {
            None => format!(
                "raise {} (or pass a longer timeout to execute_query_with_timeout)",
                self.config.timeout_variable()
            ),
            Some(_) => "pass a longer timeout, or make the statement faster".to_owned(),
        };
        Error::query_timeout(budget.timeout.unwrap_or_default(), &hint)
    }

    /// Runs one statement: THE choke point.
    ///
    /// With `conn` the statement runs on that connection (a guard or a
    /// transaction); without, a connection is checked out for it and
    /// returned afterwards.
    #[track_caller]
    pub(crate) fn run(
        &self,
        conn: Option<&mut Pooled>,
        op: Op,
        sql: &str,
        params: Params,
        limit: Limit,
    ) -> Result<Outcome> {
        self.run_at(conn, op, sql, params, limit, Location::caller())
    }

    /// [`run`](Self::run), with the caller's location given (a connection
    /// checked out here records it as its holder).
    pub(crate) fn run_at(
        &self,
        conn: Option<&mut Pooled>,
        op: Op,
        sql: &str,
        params: Params,
        limit: Limit,
        site: &'static Location<'static>,
    ) -> Result<Outcome> {
        self.run_since(conn, op, sql, &params, limit, site, Instant::now())
    }

    /// [`run_at`](Self::run_at), from `now`, a clock read the caller just
    /// made. Each stage is a function of its own, in the order of the
    /// module docs.
    ///
    /// One clock read starts the checkout's wait, the budget and the
    /// statement's time (a connection idle and fit at once is had at
    /// `now`; one waited for starts the statement when it came), and one
    /// ends the statement: the statement's time includes the few steps of
    /// this function before the backend is called.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_since(
        &self,
        conn: Option<&mut Pooled>,
        op: Op,
        sql: &str,
        params: &Params,
        limit: Limit,
        site: &'static Location<'static>,
        now: Instant,
    ) -> Result<Outcome> {
        self.refuse_writes(op, sql)?;
        let mut owned;
        let (conn, start) = match conn {
            Some(c) => {
                self.check_context()?;
                (c, now)
            }
            None => {
                let (c, had) = self
                    .checkout_since(now, None, site)
                    .map_err(Error::unsent)?;
                owned = c;
                (&mut owned, had)
            }
        };
        let prepared = self.prepare(op, sql, params)?;
        let native = prepared.native(sql);
        let budget = self.budget(limit, start)?;
        // Anything but a plain read on a connection of its own may change
        // the session: the pool resets it before its next borrower. The
        // same statement as the connection's last one is not read again.
        let same = Pool::note(conn, native, op.transaction_effect());
        let dirties = match conn.memo {
            Some((last, dirties)) if same && last == op as u8 => dirties,
            _ => changes_session(op, sql),
        };
        conn.memo = Some((op as u8, dirties));
        conn.dirty |= dirties;

        // Made only when a subscriber wants it: without one, tracing's `log`
        // fallback (which a dependency may turn on) would still record the
        // span's fields on every statement, to drop them.
        let _entered = tracing::enabled!(tracing::Level::DEBUG).then(|| {
            tracing::debug_span!(
                "dbmanager.statement",
                database = %self.config.name,
                operation = op.name(),
            )
            .entered()
        });
        let (result, fired) =
            self.execute(conn, op, native, &prepared.values, budget.timeout, start)?;
        let end = Instant::now();
        let result = self.settle(conn, result, fired, limit, &budget, end);
        self.account(conn, op, native, (start, end), &result, fired);
        // Settled and accounted for: only now is the connection's state
        // known (a panic before this line leaves it marked, and discarded).
        conn.running = false;
        result.map_err(|e| e.on_database(self.name()))
    }

    /// Stages 1 and 3 for a stream or a bulk load, which check out (or
    /// hold) their connection themselves: the read-only refusal, then the
    /// native text and the values in placeholder order.
    pub(crate) fn prepare_stage(
        &self,
        op: Op,
        sql: &str,
        params: Params,
    ) -> Result<(String, Vec<Value>)> {
        self.refuse_writes(op, sql)?;
        let (native, owned) = {
            let prepared = self.prepare(op, sql, &params)?;
            let native = prepared.native(sql).to_owned();
            let owned = match prepared.values {
                Cow::Owned(values) => Some(values),
                Cow::Borrowed(_) => None,
            };
            (native, owned)
        };
        // Borrowed: the caller's own list, in order, taken as it is.
        let values = owned.unwrap_or_else(|| match params {
            Params::Positional(values) => values,
            Params::None | Params::Named(_) => Vec::new(),
        });
        Ok((native, values))
    }

    /// Stages 4 to 6 around an execute stage other than one statement: a
    /// stream's open or fetch, one chunk of a bulk load. The budget, the
    /// watchdog armed (a guard), the server's own limit, `work` on the
    /// backend, then the same settling as any statement (a fired deadline
    /// becomes `QueryTimeout`, the connection's fate, the breaker). Not
    /// accounted: the caller accounts the whole stream or load once, with
    /// [`account_stage`](Self::account_stage). Returns whether the
    /// watchdog fired too.
    pub(crate) fn stage<T>(
        &self,
        conn: &mut Pooled,
        op: Op,
        native: &str,
        limit: Limit,
        work: impl FnOnce(&mut dyn backend::Connection) -> Result<T>,
    ) -> (Result<T>, bool) {
        let budget = match self.budget(limit, Instant::now()) {
            Ok(b) => b,
            Err(e) => return (Err(e), false),
        };
        Pool::note(conn, native, None);
        let dog = match budget.timeout {
            Some(_) => match Watchdog::global() {
                Ok(dog) => Some(dog),
                Err(e) => return (Err(e.on_database(self.name())), false),
            },
            None => None,
        };
        conn.running = true;
        let armed = dog
            .zip(budget.timeout)
            .map(|(dog, t)| dog.arm(Instant::now() + t, &conn.canceller));
        let mut value = None;
        let result = match server_limit(conn, op, budget.timeout) {
            Err(e) => Err(e.unsent()),
            Ok(()) => work(conn.backend.as_mut()).map(|v| {
                value = Some(v);
                Outcome::Done
            }),
        };
        let fired = armed.map_or(Fired::No, Armed::disarm);
        let result = self.settle(conn, result, fired, limit, &budget, Instant::now());
        conn.running = false;
        let result = match (result, value) {
            (Ok(_), Some(v)) => Ok(v),
            (Err(e), _) => Err(e.on_database(self.name())),
            (Ok(_), None) => Err(Error::new(
                ErrorKind::Database,
                "the execute stage returned nothing",
            )),
        };
        (result, fired != Fired::No)
    }

    /// Stage 7 for a whole stream or bulk load, begun at `start`: the
    /// statement metrics, the timeout-rate window, statement statistics and
    /// the slow-statement log, once, as for one statement.
    pub(crate) fn account_stage(
        &self,
        op: Op,
        native: &str,
        start: Instant,
        failure: Option<ErrorKind>,
        fired: bool,
        rows: u64,
    ) {
        let elapsed = start.elapsed();
        self.observe(op, native, start, elapsed, failure, fired);
        tracing::debug!(
            database = %self.config.name,
            operation = op.name(),
            elapsed_us = elapsed.as_micros() as u64,
            rows,
            failed = failure.is_some(),
            "stream or bulk load done"
        );
    }

    /// Stage 3: the native form of the statement and its values in order.
    fn prepare<'p>(&self, op: Op, sql: &str, params: &'p Params) -> Result<Prepared<'p>> {
        if matches!(op, Op::Begin | Op::Commit | Op::Rollback) {
            return Ok(Prepared {
                translated: None,
                values: Cow::Borrowed(&[]),
            });
        }
        if matches!(op, Op::Script | Op::Copy) {
            // Native as written; the values are COPY's data, if any.
            let values =
                sql::bind_ref(&Binds::Native, params).map_err(|e| e.on_database(self.name()))?;
            return Ok(Prepared {
                translated: None,
                values,
            });
        }
        let translated = self.translate(sql)?;
        if translated.is_none() && matches!(params, Params::None) {
            // Nothing to translate or bind (the common `SELECT 1`).
            return Ok(Prepared {
                translated,
                values: Cow::Borrowed(&[]),
            });
        }
        let binds = translated.as_deref().map_or(&Binds::Native, |t| &t.binds);
        if op == Op::Batch && !matches!(binds, Binds::Native) {
            return Err(Error::parameter(
                "execute_batch takes no parameters, but the script has `?` or `:name` placeholders (write `??` for a literal `?`)",
            )
            .on_database(self.name()));
        }
        let values = sql::bind_ref(binds, params).map_err(|e| e.on_database(self.name()))?;
        Ok(Prepared { translated, values })
    }

    /// Stages 4 and 5: registers the deadline with the watchdog, sets the
    /// server's own limit a little above it (second line of defence, only
    /// when it changed), runs the statement and deregisters. The
    /// registration is a guard, so a panic deregisters it too; the
    /// connection stays marked as running until the statement is settled
    /// and accounted for, so the pool discards it if a panic gets past.
    fn execute(
        &self,
        conn: &mut Pooled,
        op: Op,
        native: &str,
        values: &[Value],
        timeout: Option<Duration>,
        start: Instant,
    ) -> Result<(Result<Outcome>, Fired)> {
        let dog = match timeout {
            Some(_) => Some(Watchdog::global().map_err(|e| e.on_database(self.name()))?),
            None => None,
        };
        conn.running = true;
        let armed = dog
            .zip(timeout)
            .map(|(dog, t)| dog.arm(start + t, &conn.canceller));
        // The deadline covers setting the server's own limit too: on a server
        // that stopped answering, that round trip would hang as well.
        let result = match server_limit(conn, op, timeout) {
            Err(e) => Err(e.unsent()),
            Ok(()) => match op {
                Op::Query => conn.backend.query(native, values).map(Outcome::Rows),
                Op::Execute => conn.backend.execute(native, values).map(Outcome::Affected),
                Op::Batch => conn.backend.batch(native).map(|()| Outcome::Done),
                Op::Begin => conn.backend.begin().map(|()| Outcome::Done),
                Op::Commit => conn.backend.commit().map(|()| Outcome::Done),
                Op::Rollback => conn.backend.rollback().map(|()| Outcome::Done),
                Op::Script => conn.backend.batch(native).map(|()| Outcome::Done),
                Op::Copy => {
                    let data = match values.first() {
                        Some(Value::Text(t)) => t.as_bytes(),
                        Some(Value::Bytes(b)) => b.as_slice(),
                        _ => &[],
                    };
                    conn.backend.copy_in(native, data).map(Outcome::Affected)
                }
            },
        };
        let fired = armed.map_or(Fired::No, Armed::disarm);
        Ok((result, fired))
    }

    /// Stages 6 to 8: a fired deadline becomes a `QueryTimeout`, the
    /// connection's fate is decided (reused only when proven clean), and the
    /// circuit breaker hears what the statement showed of the server.
    fn settle(
        &self,
        conn: &mut Pooled,
        result: Result<Outcome>,
        fired: Fired,
        limit: Limit,
        budget: &Budget,
        end: Instant,
    ) -> Result<Outcome> {
        Pool::touch(conn, end);
        let closed = conn.backend.is_closed();
        let reusable = match (&result, fired) {
            // Cancelled at its deadline: reused only when the backend sees
            // in the error that the cancel hit this statement, so that
            // nothing of it is left to hit the next one.
            (Err(e), Fired::Cancelled) => !closed && conn.backend.cancel_confirmed(e),
            (Ok(_), Fired::Cancelled) | (_, Fired::Unfinished) => false,
            (Err(e), Fired::No) => !(closed || e.kind().breaks_connection()),
            (Ok(_), Fired::No) => !closed,
        };
        let result = match result {
            Err(cause) if fired != Fired::No => {
                Err(self.timed_out(limit, budget).with_source(cause))
            }
            other => other,
        };
        if !reusable {
            conn.broken = true;
        }
        if let (Err(e), Fired::No) = (&result, fired) {
            if e.kind() == ErrorKind::Connect {
                // Not a breaker failure by itself: sessions killed on a
                // server that is up look the same. If the server is down,
                // opening the next connection fails, and that counts. The
                // others were most likely lost with it (a restart, killed
                // sessions): check them before use.
                if let Ok(pool) = self.pool() {
                    pool.suspect_idle(end);
                }
            }
        }
        let signal = match (&result, fired) {
            // The cancel could not reach the server and the connection was
            // cut: a connection-level failure.
            (_, Fired::Unfinished) => Some(Signal::Down),
            // A backend whose cancel is a cut (SQL Server) closed it by
            // design: that says nothing of the server.
            (_, Fired::Cancelled) if closed => None,
            (Ok(_), _) => Some(Signal::Up),
            // The server answered with an SQL error: it is up.
            (Err(e), _) if reusable && e.db_code().is_some() => Some(Signal::Up),
            (Err(_), _) => None,
        };
        if let Some(signal) = signal {
            self.report(signal, end);
        }
        if fired != Fired::No {
            tracing::debug!(reused = reusable, "statement cancelled at its deadline");
        }
        result
    }

    /// Everything learnt from one finished statement: transaction and
    /// statement metrics, the timeout-rate window, statement statistics, the
    /// slow-statement log and tracing.
    fn account(
        &self,
        conn: &mut Pooled,
        op: Op,
        native: &str,
        (start, end): (Instant, Instant),
        result: &Result<Outcome>,
        fired: Fired,
    ) {
        let elapsed = end.saturating_duration_since(start);
        match (op, result) {
            (Op::Begin, Ok(_)) => {
                conn.tx_started = Some(start);
                self.metrics.transaction_started();
            }
            (Op::Commit | Op::Rollback, _) => {
                if let Some(began) = conn.tx_started.take() {
                    let committed = op == Op::Commit && result.is_ok();
                    self.metrics.transaction_ended(committed, began.elapsed());
                }
            }
            _ => {}
        }
        let failure = result.as_ref().err().map(Error::kind);
        self.observe(op, native, start, elapsed, failure, fired != Fired::No);
        match result {
            Ok(outcome) => {
                let rows = match outcome {
                    Outcome::Rows(r) => r.len() as u64,
                    Outcome::Affected(n) => *n,
                    Outcome::Done => 0,
                };
                tracing::debug!(
                    elapsed_us = elapsed.as_micros() as u64,
                    rows,
                    "statement done"
                );
            }
            Err(e) => tracing::debug!(
                elapsed_us = elapsed.as_micros() as u64,
                kind = ?e.kind(),
                code = e.db_code(),
                "statement failed"
            ),
        }
    }

    /// On a read-only database, refuses a statement the classifier sees
    /// writing, before it reaches the server. What it cannot tell is left to
    /// the session's own read-only setting, made at connect by each backend.
    fn refuse_writes(&self, op: Op, sql: &str) -> Result<()> {
        if !self.config.read_only
            || !matches!(
                op,
                Op::Query | Op::Execute | Op::Batch | Op::Script | Op::Copy
            )
        {
            return Ok(());
        }
        if let sql::StatementKind::Write(keyword) = sql::classify_statement(sql) {
            let setting = match &self.config.var_stem {
                Some(stem) => format!("{stem}READ_ONLY=true"),
                None => "DatabaseConfigBuilder::read_only(true)".to_owned(),
            };
            return Err(Error::new(
                ErrorKind::ReadOnly,
                format!(
                    "this database is configured read-only ({setting}), so the {keyword} statement was refused before reaching the server; \
                     write through a database configured for writing"
                ),
            )
            .on_database(self.name()));
        }
        Ok(())
    }

    /// The native form of `sql`, or `None` when it has nothing portable to
    /// translate (the common case, which costs one scan and no allocation).
    fn translate(&self, sql: &str) -> Result<Option<Arc<Translated>>> {
        if !sql.bytes().any(|b| matches!(b, b'?' | b':' | b'[')) {
            return Ok(None);
        }
        // The thread's last statement again (a loop): no lock, no hash.
        let again = LAST_TRANSLATION
            .try_with(|last| match &*last.try_borrow().ok()? {
                Some((dialect, text, t)) if *dialect == self.dialect && **text == *sql => {
                    Some(Arc::clone(t))
                }
                _ => None,
            })
            .ok()
            .flatten();
        if again.is_some() {
            return Ok(again);
        }
        let cached = self.translations.lock().get(sql).cloned();
        let t = match cached {
            Some(t) => t,
            None => {
                let t = Arc::new(
                    sql::translate(sql, self.dialect)
                        .map_err(|e| Error::parameter(e.to_string()).on_database(self.name()))?,
                );
                let mut cache = self.translations.lock();
                if cache.len() >= TRANSLATION_CACHE {
                    cache.clear();
                }
                cache.insert(sql.into(), Arc::clone(&t));
                t
            }
        };
        let _ = LAST_TRANSLATION.try_with(|last| {
            if let Ok(mut last) = last.try_borrow_mut() {
                *last = Some((self.dialect, sql.into(), Arc::clone(&t)));
            }
        });
        Ok(Some(t))
    }

    pub(crate) fn translation_cache_len(&self) -> usize {
        self.translations.lock().len()
    }

    pub(crate) fn pool_status(&self) -> PoolStatus {
        let mut status = match &*self.pool.read() {
            Some(pool) => pool.status(self.config.read_only, self.circuit_state()),
            None => Pool::closed_status(&self.config, self.circuit_state()),
        };
        if let Some((host, role)) = self.serving.get() {
            status.serving_host = Some(host);
            status.serving_role = role;
        }
        status
    }

    /// Drops the pool: idle connections close now, checked-out ones when
    /// they are returned. Idempotent.
    pub(crate) fn close(&self) -> bool {
        self.pool.write().take().is_some()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.pool.read().is_none()
    }
}

/// A thread's last translation: its dialect, the statement, the result.
type LastTranslation = (Dialect, Box<str>, Arc<Translated>);

thread_local! {
    /// The last statement this thread translated, by dialect (a
    /// translation depends on nothing else).
    static LAST_TRANSLATION: RefCell<Option<LastTranslation>> = const { RefCell::new(None) };

    /// Connection failures held back by the retry loop running on this
    /// thread; `None` outside one.
    static HELD: Cell<Option<u32>> = const { Cell::new(None) };
}

/// Holds back the breaker's connection failures during a retry loop: when
/// the loop ends in success they were absorbed and are forgotten; when it
/// ends in failure (or a panic), they are reported then.
struct HeldFailures<'a> {
    shared: &'a Shared,
    outer: Option<u32>,
    /// Whether the operation has failed for good (set until a retry starts).
    failed: bool,
}

impl<'a> HeldFailures<'a> {
    fn start(shared: &'a Shared) -> HeldFailures<'a> {
        HeldFailures {
            shared,
            outer: HELD.with(|h| h.replace(Some(0))),
            failed: false,
        }
    }

    /// Counts a failure if a retry loop runs on this thread.
    fn hold() -> bool {
        HELD.with(|h| match h.get() {
            Some(n) => {
                h.set(Some(n.saturating_add(1)));
                true
            }
            None => false,
        })
    }
}

impl Drop for HeldFailures<'_> {
    fn drop(&mut self) {
        let held = HELD.with(|h| h.replace(self.outer)).unwrap_or(0);
        if self.failed || std::thread::panicking() {
            let now = Instant::now();
            for _ in 0..held {
                self.shared.report(Signal::Down, now);
            }
        }
    }
}

/// Sets the server's own statement limit a little above the client's
/// (second line of defence), when it differs from what the session has.
/// Transaction control statements leave it as it is.
fn server_limit(conn: &mut Pooled, op: Op, timeout: Option<Duration>) -> Result<()> {
    let wanted = timeout.map(|t| t + SERVER_MARGIN);
    if matches!(op, Op::Begin | Op::Commit | Op::Rollback) || conn.server_timeout == Some(wanted) {
        return Ok(());
    }
    conn.server_timeout = None;
    conn.backend.set_server_timeout(wanted)?;
    if !conn.backend.server_timeout_is_local() {
        conn.server_timeout = Some(wanted);
    }
    Ok(())
}

/// Whether a statement may change its session, so that the pool resets the
/// session before the connection's next borrower: scripts, and statements
/// that are neither plain reads nor plain row changes (`SET`, `USE`, a
/// manual `BEGIN`, `CREATE TEMP TABLE`, any DDL, anything the classifier
/// cannot read). Reads and `INSERT`/`UPDATE`/`DELETE` cost no reset, and
/// neither do the transactions this library begins and ends. Functions with
/// session side effects called from a `SELECT` (`set_config`, session
/// advisory locks) are not seen.
fn changes_session(op: Op, sql: &str) -> bool {
    match op {
        Op::Begin | Op::Commit | Op::Rollback | Op::Copy => false,
        Op::Batch => true,
        Op::Query | Op::Execute | Op::Script => match sql::classify_statement(sql) {
            sql::StatementKind::Read => false,
            sql::StatementKind::Write(keyword) => !matches!(
                keyword.as_str(),
                "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "REPLACE" | "UPSERT"
            ),
            _ => true,
        },
    }
}

impl PoolSource for Shared {
    fn snapshot(&self) -> Option<PoolSnapshot> {
        if self.is_closed() {
            return None;
        }
        let p = self.pool_status();
        let now = Instant::now();
        let level = self.scaling_level(now);
        Some(PoolSnapshot {
            database: Arc::clone(&self.config.name),
            pool_size: p.pool_size,
            max_size: p.max_size,
            usage: p.checked_out,
            idle: p.checked_in,
            waiting: p.waiting,
            statement_cache: self.translation_cache_len(),
            timeout_rate: self.window.rate(now),
            scaling_level: level as u8,
            circuit_state: self.circuit_state().as_gauge(),
        })
    }
}
