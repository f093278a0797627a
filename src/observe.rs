//! What the pipeline learns from each statement beyond metrics: the
//! sliding timeout-rate window behind the scaling signal, and per-statement
//! time statistics. Both are fed from the choke point only.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::sql::{self, Dialect, TextHash};
use crate::status::{ScalingLevel, StatementStats};

/// Seconds in the sliding window.
const WINDOW_SECS: u64 = 60;

/// Distinct statement texts tracked before new ones are no longer counted.
const STATS_CAPACITY: usize = 2048;

/// Characters of normalised SQL kept in logs and statistics.
pub(crate) const SQL_IN_LOGS: usize = 300;

struct Bucket {
    /// The second this bucket counts (`u64::MAX`: never used).
    sec: AtomicU64,
    calls: AtomicU64,
    timeouts: AtomicU64,
}

/// Calls and timeouts over the last minute, per second, lock-free.
pub(crate) struct TimeoutWindow {
    born: Instant,
    buckets: [Bucket; WINDOW_SECS as usize],
    level: AtomicU8,
}

impl TimeoutWindow {
    pub(crate) fn new() -> TimeoutWindow {
        TimeoutWindow {
            born: Instant::now(),
            buckets: std::array::from_fn(|_| Bucket {
                sec: AtomicU64::new(u64::MAX),
                calls: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
            }),
            level: AtomicU8::new(ScalingLevel::Normal as u8),
        }
    }

    fn sec(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.born).as_secs()
    }

    /// Counts one statement or checkout at `at`; `timed_out` when it hit a
    /// limit. Returns the new level when a timeout changed it.
    #[inline]
    pub(crate) fn record(&self, at: Instant, timed_out: bool) -> Option<ScalingLevel> {
        let sec = self.sec(at);
        let b = &self.buckets[(sec % WINDOW_SECS) as usize];
        let seen = b.sec.load(Ordering::Relaxed);
        if seen != sec
            && b.sec
                .compare_exchange(seen, sec, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            b.calls.store(0, Ordering::Relaxed);
            b.timeouts.store(0, Ordering::Relaxed);
        }
        b.calls.fetch_add(1, Ordering::Relaxed);
        if timed_out {
            b.timeouts.fetch_add(1, Ordering::Relaxed);
            return self.level_changed(at);
        }
        None
    }

    /// The share of calls that timed out over the last minute.
    pub(crate) fn rate(&self, now: Instant) -> f64 {
        let now = self.sec(now);
        let (mut calls, mut timeouts) = (0u64, 0u64);
        for b in &self.buckets {
            let sec = b.sec.load(Ordering::Relaxed);
            if sec != u64::MAX && now.saturating_sub(sec) < WINDOW_SECS {
                calls += b.calls.load(Ordering::Relaxed);
                timeouts += b.timeouts.load(Ordering::Relaxed);
            }
        }
        if calls == 0 {
            0.0
        } else {
            timeouts as f64 / calls as f64
        }
    }

    /// The level now, and whether it differs from the last one seen.
    pub(crate) fn level(&self, now: Instant) -> (ScalingLevel, bool) {
        let level = ScalingLevel::from_rate(self.rate(now));
        let before = self.level.swap(level as u8, Ordering::Relaxed);
        (level, before != level as u8)
    }

    fn level_changed(&self, now: Instant) -> Option<ScalingLevel> {
        let (level, changed) = self.level(now);
        changed.then_some(level)
    }
}

#[derive(Default)]
struct Stat {
    calls: u64,
    errors: u64,
    total: Duration,
    max: Duration,
}

/// One statement text's timings: atomics, so that a thread that holds
/// the cell adds to it without the table's lock.
#[derive(Default)]
struct StatCell {
    calls: AtomicU64,
    errors: AtomicU64,
    /// Nanoseconds.
    total: AtomicU64,
    /// Nanoseconds.
    max: AtomicU64,
}

impl StatCell {
    fn add(&self, elapsed: Duration, failed: bool) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.total.fetch_add(ns, Ordering::Relaxed);
        if ns > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(ns, Ordering::Relaxed);
        }
    }

    fn read(&self) -> Stat {
        Stat {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            total: Duration::from_nanos(self.total.load(Ordering::Relaxed)),
            max: Duration::from_nanos(self.max.load(Ordering::Relaxed)),
        }
    }
}

/// Per-statement-text timings, merged by normalised SQL when read.
///
/// Each thread remembers the cell of the last text it recorded (a batch
/// job runs the same statement in a loop): the same text again costs a
/// comparison and a few atomic additions, not the table's lock and a hash.
pub(crate) struct StatTable {
    /// Tells tables apart in the threads' memory of their last cell.
    id: u64,
    map: Mutex<HashMap<Box<str>, Arc<StatCell>, TextHash>>,
}

/// A thread's last cell: its table's id, its text, the cell.
type LastCell = Option<(u64, Box<str>, Arc<StatCell>)>;

thread_local! {
    static LAST_CELL: RefCell<LastCell> = const { RefCell::new(None) };
}

impl StatTable {
    pub(crate) fn new() -> StatTable {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        StatTable {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            map: Mutex::new(HashMap::default()),
        }
    }

    #[inline]
    pub(crate) fn record(&self, sql: &str, elapsed: Duration, failed: bool) {
        let recorded = LAST_CELL.try_with(|last| {
            let Ok(mut last) = last.try_borrow_mut() else {
                return false;
            };
            if let Some((id, text, cell)) = &*last {
                if *id == self.id && **text == *sql {
                    cell.add(elapsed, failed);
                    return true;
                }
            }
            if let Some(cell) = self.cell(sql) {
                cell.add(elapsed, failed);
                *last = Some((self.id, sql.into(), cell));
            }
            true
        });
        if !matches!(recorded, Ok(true)) {
            // A thread being torn down: straight to the table.
            if let Some(cell) = self.cell(sql) {
                cell.add(elapsed, failed);
            }
        }
    }

    /// The cell of `sql`, made if the table has room; `None` when full.
    fn cell(&self, sql: &str) -> Option<Arc<StatCell>> {
        let mut map = self.map.lock();
        if let Some(cell) = map.get(sql) {
            return Some(Arc::clone(cell));
        }
        if map.len() >= STATS_CAPACITY {
            return None;
        }
        Some(Arc::clone(map.entry(sql.into()).or_default()))
    }

    /// The `top` statements by total time, normalised for `dialect`.
    pub(crate) fn top(&self, dialect: Dialect, top: usize) -> Vec<StatementStats> {
        let mut merged: HashMap<String, Stat> = HashMap::new();
        for (sql, cell) in self.map.lock().iter() {
            let s = cell.read();
            let m = merged
                .entry(sql::normalise(sql, dialect, SQL_IN_LOGS))
                .or_default();
            m.calls += s.calls;
            m.errors += s.errors;
            m.total += s.total;
            m.max = m.max.max(s.max);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut out: Vec<StatementStats> = merged
            .into_iter()
            .map(|(sql, s)| StatementStats {
                sql,
                calls: s.calls,
                errors: s.errors,
                total_ms: ms(s.total),
                mean_ms: ms(s.total) / s.calls.max(1) as f64,
                max_ms: ms(s.max),
            })
            .collect();
        out.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        out.truncate(top);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_reads_the_documented_levels() {
        let w = TimeoutWindow::new();
        let now = Instant::now();
        for _ in 0..999 {
            assert_eq!(w.record(now, false), None);
        }
        assert_eq!(w.level(now).0, ScalingLevel::Normal);
        // 1 in 1000: mild contention (the change is reported once).
        assert_eq!(w.record(now, true), Some(ScalingLevel::MildContention));
        assert!((w.rate(now) - 0.001).abs() < 1e-12);
        for _ in 0..20 {
            w.record(now, true);
        }
        assert_eq!(w.level(now).0, ScalingLevel::HighLoad);
        for _ in 0..60 {
            w.record(now, true);
        }
        assert_eq!(w.level(now).0, ScalingLevel::Critical);
        // A minute later the old seconds no longer count.
        assert_eq!(w.rate(now + Duration::from_secs(61)), 0.0);
        assert_eq!(
            w.level(now + Duration::from_secs(61)),
            (ScalingLevel::Normal, true)
        );
    }

    #[test]
    fn stats_merge_statements_that_differ_only_in_literals() {
        let t = StatTable::new();
        t.record(
            "SELECT * FROM t WHERE id = 1",
            Duration::from_millis(10),
            false,
        );
        t.record(
            "SELECT *  FROM t WHERE id = 2",
            Duration::from_millis(30),
            true,
        );
        t.record("SELECT 1", Duration::from_millis(1), false);
        // Another table on the same thread, then the first again: each
        // counts only its own.
        let other = StatTable::new();
        other.record("SELECT 1", Duration::from_millis(5), false);
        t.record("SELECT 1", Duration::from_millis(1), false);
        let one = t.top(Dialect::Postgres, 10);
        let one = one.iter().find(|s| s.sql == "SELECT ?").map(|s| s.calls);
        assert_eq!(one, Some(2));
        assert_eq!(other.top(Dialect::Postgres, 10)[0].calls, 1);
        let top = t.top(Dialect::Postgres, 10);
        assert_eq!(top[0].sql, "SELECT * FROM t WHERE id = ?");
        assert_eq!((top[0].calls, top[0].errors), (2, 1));
        assert!((top[0].mean_ms - 20.0).abs() < 1e-9 && (top[0].max_ms - 30.0).abs() < 1e-9);
        assert_eq!(t.top(Dialect::Postgres, 1).len(), 1);
    }
}
