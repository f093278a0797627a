//! Retry policy, backoff and the circuit breaker: plain logic, no I/O.
//!
//! The pipeline owns the one retry loop and the one breaker per database;
//! this module only decides (how long to wait, whether a call may go
//! through), so that every rule is unit-tested without a server or a real
//! clock.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::status::CircuitState;

/// How an operation is retried when it fails with a transient error
/// ([`Error::is_retryable`](crate::Error::is_retryable)): exponential backoff
/// with full jitter, bounded by a number of attempts and a total time budget.
///
/// Retries are applied only where running the operation again cannot run
/// a statement twice:
///
/// - a statement through [`DatabaseManager`](crate::DatabaseManager) whose
///   failure came before it was sent (no connection could be checked out or
///   opened, the circuit breaker was open);
/// - any statement through it once it may have reached the server (the
///   connection was lost while it ran), but only on a read-only database or
///   with [`retry_writes`](Self::retry_writes): the library cannot tell from
///   the text that a statement only reads (`SELECT nextval('s')` writes);
/// - a whole transaction closure ([`DatabaseManager::transaction`](crate::DatabaseManager::transaction)),
///   re-run from its start on a fresh connection: nothing of it was
///   committed.
///
/// Statements on a connection you hold ([`PooledConnection`](crate::PooledConnection),
/// [`Transaction`](crate::Transaction)) are never retried.
///
/// ```
/// use std::time::Duration;
/// use dbmanager::RetryPolicy;
///
/// let patient = RetryPolicy::default()
///     .attempts(5)
///     .max_delay(Duration::from_secs(2))
///     .budget(Duration::from_secs(20));
/// assert_eq!(patient.attempts, 5);
/// assert_eq!(RetryPolicy::none().attempts, 1);
/// ```
///
/// Each setting is a public field to read and a setter of the same name to
/// build with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[must_use]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry. See
    /// [`attempts`](Self::attempts()).
    pub attempts: u32,
    /// The first retry's largest delay. See [`base_delay`](Self::base_delay()).
    pub base_delay: Duration,
    /// The largest wait between attempts. See [`max_delay`](Self::max_delay()).
    pub max_delay: Duration,
    /// The time after which no retry starts. See [`budget`](Self::budget()).
    pub budget: Duration,
    /// Whether statements that may write are retried outside a
    /// transaction. See [`retry_writes`](Self::retry_writes()).
    pub retry_writes: bool,
}

impl Default for RetryPolicy {
    /// 3 attempts, 100 ms base delay, at most 10 s between attempts, 30 s
    /// in all (the defaults of the Python system's `retry_with_backoff`).
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            budget: Duration::from_secs(30),
            retry_writes: false,
        }
    }
}

impl RetryPolicy {
    /// One attempt: no retry.
    pub fn none() -> Self {
        RetryPolicy::default().attempts(1)
    }

    /// Attempts in all, the first included (at least 1; 1 means no retry).
    /// Default 3.
    pub fn attempts(mut self, n: u32) -> Self {
        self.attempts = n.max(1);
        self
    }

    /// The delay before the first retry is drawn from 0 to this; it doubles
    /// with each retry up to [`max_delay`](Self::max_delay). Default 100 ms.
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }

    /// The most any one wait between attempts may be. Default 10 s.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// No retry starts once this much time has passed since the first
    /// attempt began (waits included). Default 30 s.
    pub fn budget(mut self, d: Duration) -> Self {
        self.budget = d;
        self
    }

    /// Also run a statement again when its connection was lost after it may
    /// have reached the server (outside a transaction). Only for statements
    /// that are safe to run twice (idempotent, or reads): one that the
    /// server ran before the connection was lost would otherwise be applied
    /// twice. Default `false`; a read-only database behaves as if it were
    /// `true`.
    pub fn retry_writes(mut self, on: bool) -> Self {
        self.retry_writes = on;
        self
    }
}

/// The wait before retry number `retry` (0 for the first retry): "full
/// jitter" (`uniform(0, min(cap, base · 2^retry))`), with `unit` a number in
/// `[0, 1)` (the random draw, passed in so that the function is pure).
pub(crate) fn backoff(retry: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(cap)
        .min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// A number in `[0, 1)` from a per-thread xorshift generator (jitter needs
/// spread, not cryptographic strength).
pub(crate) fn jitter_unit() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let here = &t as *const u64 as u64;
            (t ^ here.rotate_left(32)) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// The breaker's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BreakerSettings {
    /// Connection failures within `window` that open the breaker; 0 turns it off.
    pub(crate) failures: u32,
    pub(crate) window: Duration,
    /// The longest wait between two probes of an open breaker. Probes start
    /// [`FIRST_PROBE`] after it opens and the wait doubles up to this.
    pub(crate) recovery: Duration,
}

/// The wait before an open breaker's first probe.
pub(crate) const FIRST_PROBE: Duration = Duration::from_millis(50);

/// What the breaker says to a caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Go ahead.
    Pass,
    /// Fail fast; the next probe is due in this long (zero: a probe is
    /// running now).
    Reject(Duration),
}

#[derive(Debug)]
enum Inner {
    Closed {
        failures: VecDeque<Instant>,
    },
    /// Down: calls fail fast while a prober checks the server, at
    /// `next_probe`, then waits `interval` (doubling) before the next check.
    Open {
        next_probe: Instant,
        interval: Duration,
        probing: bool,
    },
}

/// One database's circuit breaker: closed → open after `failures`
/// connection-level failures within `window` → closed again as soon as the
/// server answers, to a probe or to any statement.
///
/// While it is open, calls fail at once and one prober (a thread the
/// pipeline runs) checks the server: [`FIRST_PROBE`] after the breaker
/// opened, then after waits that double up to the configured `recovery`.
/// So a restart costs about as long as the server is down, and a server that
/// stays down costs one connection attempt per `recovery`.
///
/// Every method takes the time, so the states are tested with a made-up
/// clock.
#[derive(Debug)]
pub(crate) struct Breaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
    /// Closed with no failure counted: the common case, read without the
    /// lock (a call racing the breaker's opening may still pass, as it
    /// would a moment earlier).
    clean: AtomicBool,
}

/// A change of state, for the caller to log.
pub(crate) type Transition = Option<(CircuitState, CircuitState)>;

impl Breaker {
    pub(crate) fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            inner: Mutex::new(Inner::Closed {
                failures: VecDeque::new(),
            }),
            clean: AtomicBool::new(true),
        }
    }

    /// [`admit`](Self::admit) now; no lock and no clock read while the
    /// breaker is closed and clean.
    #[inline]
    pub(crate) fn admit_now(&self) -> Admit {
        if !self.enabled() || self.clean.load(Ordering::Relaxed) {
            return Admit::Pass;
        }
        self.admit(Instant::now())
    }

    pub(crate) fn enabled(&self) -> bool {
        self.settings.failures > 0
    }

    /// The longest wait between probes.
    pub(crate) fn recovery(&self) -> Duration {
        self.settings.recovery
    }

    /// The state now: half-open while a probe is checking the server.
    pub(crate) fn state(&self) -> CircuitState {
        match &*self.inner.lock() {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::Open { probing: true, .. } => CircuitState::HalfOpen,
            Inner::Open { .. } => CircuitState::Open,
        }
    }

    /// May a call go through now?
    pub(crate) fn admit(&self, now: Instant) -> Admit {
        if !self.enabled() {
            return Admit::Pass;
        }
        match &*self.inner.lock() {
            Inner::Closed { .. } => Admit::Pass,
            Inner::Open { probing: true, .. } => Admit::Reject(Duration::ZERO),
            Inner::Open { next_probe, .. } => {
                Admit::Reject(next_probe.saturating_duration_since(now))
            }
        }
    }

    /// A call reached the database and it answered: the failure count
    /// starts again, and an open breaker closes.
    pub(crate) fn succeeded(&self) -> Transition {
        if !self.enabled() || self.clean.load(Ordering::Relaxed) {
            return None;
        }
        let mut inner = self.inner.lock();
        let was = match &*inner {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::Open { probing: true, .. } => CircuitState::HalfOpen,
            Inner::Open { .. } => CircuitState::Open,
        };
        *inner = Inner::Closed {
            failures: VecDeque::new(),
        };
        self.clean.store(true, Ordering::Relaxed);
        (was != CircuitState::Closed).then_some((was, CircuitState::Closed))
    }

    /// A connection-level failure (opening a connection failed, a connect or
    /// pool timeout, a statement whose connection had to be cut). Ignored
    /// while open: the prober decides when it closes.
    pub(crate) fn failed(&self, now: Instant) -> Transition {
        if !self.enabled() {
            return None;
        }
        let mut inner = self.inner.lock();
        let Inner::Closed { failures } = &mut *inner else {
            return None;
        };
        self.clean.store(false, Ordering::Relaxed);
        failures.push_back(now);
        while failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.settings.window)
        {
            failures.pop_front();
        }
        if failures.len() < self.settings.failures as usize {
            return None;
        }
        *inner = Inner::Open {
            next_probe: now + FIRST_PROBE,
            interval: FIRST_PROBE,
            probing: false,
        };
        Some((CircuitState::Closed, CircuitState::Open))
    }

    /// For the prober: how long until the next probe is due; `None` once the
    /// breaker is closed (the prober's work is done).
    pub(crate) fn until_probe(&self, now: Instant) -> Option<Duration> {
        match &*self.inner.lock() {
            Inner::Closed { .. } => None,
            Inner::Open { next_probe, .. } => Some(next_probe.saturating_duration_since(now)),
        }
    }

    /// For the prober: starts a probe if one is due; false when none is.
    pub(crate) fn start_probe(&self, now: Instant) -> (bool, Transition) {
        match &mut *self.inner.lock() {
            Inner::Open {
                next_probe,
                probing,
                ..
            } if !*probing && now >= *next_probe => {
                *probing = true;
                (true, Some((CircuitState::Open, CircuitState::HalfOpen)))
            }
            _ => (false, None),
        }
    }

    /// The probe's verdict: closed when the server answered; otherwise the
    /// wait before the next probe doubles, up to `recovery`.
    pub(crate) fn probed(&self, ok: bool, now: Instant) -> Transition {
        if ok {
            return self.succeeded();
        }
        let mut inner = self.inner.lock();
        let Inner::Open {
            next_probe,
            interval,
            probing,
        } = &mut *inner
        else {
            return None;
        };
        *interval = (*interval * 2).min(self.settings.recovery.max(FIRST_PROBE));
        *next_probe = now + *interval;
        let was_probing = std::mem::replace(probing, false);
        was_probing.then_some((CircuitState::HalfOpen, CircuitState::Open))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_below_it() {
        let base = 100 * MS;
        let cap = 1000 * MS;
        // The ceiling (unit just under 1) doubles: 100, 200, 400, 800, then the cap.
        let top = |n| backoff(n, base, cap, 0.999_999);
        assert!(top(0) <= 100 * MS && top(0) >= 99 * MS);
        assert!(top(1) <= 200 * MS && top(1) >= 199 * MS);
        assert!(top(3) <= 800 * MS && top(3) >= 799 * MS);
        assert!(top(4) <= cap && top(4) >= 999 * MS);
        assert!(top(200) <= cap, "no overflow for huge retry numbers");
        // Full jitter: anything from zero up.
        assert_eq!(backoff(3, base, cap, 0.0), Duration::ZERO);
        assert_eq!(backoff(1, base, cap, 0.5), 100 * MS);
        // Out-of-range draws are clamped.
        assert!(backoff(0, base, cap, 7.0) <= base);
        assert_eq!(backoff(0, base, cap, -1.0), Duration::ZERO);
    }

    #[test]
    fn jitter_stays_in_the_unit_interval_and_spreads() {
        let draws: Vec<f64> = (0..1000).map(|_| jitter_unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(draws.iter().any(|u| *u < 0.25) && draws.iter().any(|u| *u > 0.75));
    }

    #[test]
    fn policy_builder_keeps_at_least_one_attempt() {
        assert_eq!(RetryPolicy::default().attempts, 3);
        assert_eq!(RetryPolicy::default().attempts(0).attempts, 1);
        assert!(!RetryPolicy::default().retry_writes);
        assert!(RetryPolicy::none().retry_writes(true).retry_writes);
    }

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failures: 3,
            window: Duration::from_secs(10),
            recovery: Duration::from_millis(400),
        })
    }

    #[test]
    fn opens_after_n_failures_within_the_window() {
        let b = breaker();
        let t0 = Instant::now();
        assert_eq!(b.failed(t0), None);
        assert_eq!(b.failed(t0 + MS), None);
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(
            b.failed(t0 + 2 * MS),
            Some((CircuitState::Closed, CircuitState::Open))
        );
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit(t0 + 2 * MS), Admit::Reject(FIRST_PROBE));
        // More failures while open change nothing.
        assert_eq!(b.failed(t0 + 3 * MS), None);
    }

    #[test]
    fn old_failures_and_successes_reset_the_count() {
        let b = breaker();
        let t0 = Instant::now();
        b.failed(t0);
        b.failed(t0 + MS);
        // The first two fall out of the 10 s window.
        assert_eq!(b.failed(t0 + Duration::from_secs(11)), None);
        assert_eq!(b.state(), CircuitState::Closed);
        b.failed(t0 + Duration::from_secs(12));
        assert_eq!(b.succeeded(), None);
        assert_eq!(b.failed(t0 + Duration::from_secs(13)), None);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn probes_come_soon_then_back_off_up_to_the_recovery_time() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.failed(t0);
        }
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..6 {
            let wait = b.until_probe(now).expect("open");
            waits.push(wait.as_millis());
            now += wait;
            assert_eq!(
                b.start_probe(now),
                (true, Some((CircuitState::Open, CircuitState::HalfOpen)))
            );
            assert_eq!(b.state(), CircuitState::HalfOpen);
            // While the probe runs, calls fail fast and no second probe starts.
            assert_eq!(b.admit(now), Admit::Reject(Duration::ZERO));
            assert!(!b.start_probe(now).0);
            assert_eq!(
                b.probed(false, now),
                Some((CircuitState::HalfOpen, CircuitState::Open))
            );
        }
        assert_eq!(waits, [50, 100, 200, 400, 400, 400]);
        now += b.until_probe(now).expect("open");
        assert!(b.start_probe(now).0);
        assert_eq!(
            b.probed(true, now),
            Some((CircuitState::HalfOpen, CircuitState::Closed))
        );
        assert_eq!(b.until_probe(now), None, "the prober stops");
        assert_eq!(b.admit(now), Admit::Pass);
        // Closed again with a fresh count.
        assert_eq!(b.failed(now), None);
    }

    #[test]
    fn any_answer_closes_an_open_breaker() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.failed(t0);
        }
        assert_eq!(
            b.succeeded(),
            Some((CircuitState::Open, CircuitState::Closed))
        );
        assert_eq!(b.admit(t0), Admit::Pass);
    }

    #[test]
    fn zero_failures_turns_it_off() {
        let b = Breaker::new(BreakerSettings {
            failures: 0,
            window: Duration::from_secs(1),
            recovery: Duration::from_secs(1),
        });
        let t0 = Instant::now();
        for i in 0..100 {
            assert_eq!(b.failed(t0 + i * MS), None);
        }
        assert_eq!(b.admit(t0), Admit::Pass);
        assert_eq!(b.gauge_state(), 0);
    }

    impl Breaker {
        fn gauge_state(&self) -> i64 {
            self.state().as_gauge()
        }
    }
}
