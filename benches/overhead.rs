//! What dbmanager costs on top of the raw drivers.
//!
//! Each comparison runs dbmanager and the raw driver on the same server in
//! the same process, alternating in rounds (the side that goes first changes
//! every round), and reports the median per-call time of each side, their
//! ratio and difference, and whether the goal is met.
//!
//! ```text
//! scripts/bench --bench overhead                  # starts PostgreSQL and MariaDB
//! cargo bench --all-features --bench overhead -- --quick sqlite
//! ```
//!
//! Arguments after `--`: `--quick` (fewer, shorter rounds), `--strict` (exit
//! with status 1 when a goal is missed), `--calls N` (no calibration: one
//! warm-up and one round of exactly N calls per thread and side, for
//! instruction counts, e.g. `valgrind --tool=callgrind --separate-threads=yes`,
//! where each side's threads are their own files), and an optional filter:
//! only the comparisons whose line contains it (case-insensitive) run.
//!
//! PostgreSQL and MariaDB need `DBMANAGER_TEST_POSTGRES_URL` and
//! `DBMANAGER_TEST_MYSQL_URL` (set by `scripts/bench`); without them those
//! comparisons are skipped with a note.

use std::convert::Infallible;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use dbmanager::{DatabaseConfig, DatabaseManager};

type BoxError = Box<dyn std::error::Error>;
type Outcome<T> = Result<T, BoxError>;

// ------------------------------------------------------------------ settings

struct Settings {
    quick: bool,
    strict: bool,
    filter: Option<String>,
    /// Rounds per comparison; every side runs once per round.
    rounds: usize,
    /// Wall time one side should take in one round (sets the call count).
    round_target: Duration,
    /// A fixed call count (per thread) instead of a calibrated one.
    calls: Option<u64>,
}

impl Settings {
    fn from_args() -> Settings {
        let mut quick = false;
        let mut strict = false;
        let mut filter = None;
        let mut calls = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--calls" => calls = args.next().and_then(|n| n.parse::<u64>().ok()),
                "--quick" => quick = true,
                "--strict" => strict = true,
                "-h" | "--help" => {
                    println!(
                        "usage: cargo bench --all-features --bench overhead -- [--quick] [--strict] [--calls N] [FILTER]\n\
                         (scripts/bench --bench overhead -- … also starts PostgreSQL and MariaDB)"
                    );
                    std::process::exit(0);
                }
                // `cargo bench` passes `--bench`; ignore it and any libtest flag.
                a if a.starts_with('-') => {}
                a => filter = Some(a.to_lowercase()),
            }
        }
        Settings {
            quick,
            strict,
            filter,
            rounds: match (calls, quick) {
                (Some(_), _) => 1,
                (None, true) => 5,
                (None, false) => 15,
            },
            round_target: Duration::from_millis(if quick { 15 } else { 60 }),
            calls: calls.map(|n| n.max(1)),
        }
    }

    fn wants(&self, keys: &[String]) -> bool {
        match &self.filter {
            None => true,
            Some(f) => keys.iter().any(|k| k.to_lowercase().contains(f)),
        }
    }
}

// ------------------------------------------------------------------ harness

/// One contender: runs `n` calls (per thread) and returns the wall time and
/// the total number of calls made.
struct Side<'a> {
    name: &'static str,
    run: Box<dyn FnMut(u64) -> Outcome<(Duration, u64)> + 'a>,
}

impl<'a> Side<'a> {
    /// A single-threaded side: `n` calls of `call`.
    fn serial(name: &'static str, mut call: impl FnMut() -> Outcome<()> + 'a) -> Side<'a> {
        Side {
            name,
            run: Box::new(move |n| {
                let start = Instant::now();
                for _ in 0..n {
                    call()?;
                }
                Ok((start.elapsed(), n))
            }),
        }
    }

    /// `threads` threads making `n` calls each, started together; the time
    /// is from their common start until the last one finished.
    fn threaded<F>(name: &'static str, threads: usize, call: F) -> Side<'a>
    where
        F: Fn() -> Outcome<()> + Sync + 'a,
    {
        Side {
            name,
            run: Box::new(move |n| {
                let start_line = Barrier::new(threads + 1);
                let finish_line = Barrier::new(threads + 1);
                std::thread::scope(|s| {
                    let workers: Vec<_> = (0..threads)
                        .map(|_| {
                            s.spawn(|| {
                                start_line.wait();
                                let mut result = Ok(());
                                for _ in 0..n {
                                    if let Err(e) = call() {
                                        result = Err(e.to_string());
                                        break;
                                    }
                                }
                                finish_line.wait();
                                result
                            })
                        })
                        .collect();
                    start_line.wait();
                    let start = Instant::now();
                    finish_line.wait();
                    let elapsed = start.elapsed();
                    for w in workers {
                        w.join().map_err(|_| "a bench thread panicked")??;
                    }
                    Ok((elapsed, n * threads as u64))
                })
            }),
        }
    }
}

/// Per-call times (ns) of one side, one per round.
struct Samples {
    name: &'static str,
    per_call_ns: Vec<f64>,
}

impl Samples {
    fn median(&self) -> f64 {
        median(&self.per_call_ns)
    }
}

fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let pos = q * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// The call count that makes one round of the first side take about
/// `round_target`: double n until one batch takes a while, then size the
/// rounds from its time per n (per thread for threaded sides).
fn calibrate(settings: &Settings, sides: &mut [Side<'_>]) -> Outcome<u64> {
    let probe = settings.round_target / 8;
    let mut n = 1u64;
    let seconds_per_n = loop {
        let (t, _) = (sides[0].run)(n)?;
        if t >= probe || n >= 1 << 24 {
            break t.as_secs_f64() / n as f64;
        }
        n *= 2;
    };
    Ok(
        ((settings.round_target.as_secs_f64() / seconds_per_n.max(1e-12)) as u64)
            .clamp(20, 5_000_000),
    )
}

struct Measured {
    sides: Vec<Samples>,
}

/// Calibrates the call count on the first side (unless it is fixed), warms
/// every side up, then runs the rounds, rotating which side goes first.
fn measure(settings: &Settings, mut sides: Vec<Side<'_>>) -> Outcome<Measured> {
    let n = match settings.calls {
        Some(n) => n,
        None => calibrate(settings, &mut sides)?,
    };
    // Warm-up: one full batch of every side.
    for side in &mut sides {
        (side.run)(n)?;
    }
    let k = sides.len();
    let mut samples: Vec<Samples> = sides
        .iter()
        .map(|s| Samples {
            name: s.name,
            per_call_ns: Vec::with_capacity(settings.rounds),
        })
        .collect();
    for round in 0..settings.rounds {
        for j in 0..k {
            let i = (j + round) % k;
            let (t, calls) = (sides[i].run)(n)?;
            samples[i]
                .per_call_ns
                .push(t.as_nanos() as f64 / calls as f64);
        }
    }
    Ok(Measured { sides: samples })
}

// ------------------------------------------------------------------ report

#[derive(Clone, Copy)]
enum Goal {
    /// dbmanager / raw must not exceed this.
    Ratio(f64),
    /// dbmanager − raw must not exceed this many nanoseconds per call.
    ExtraNs(f64),
    /// Printed for scale only.
    Scale,
}

struct Report {
    lines: usize,
    met: usize,
    missed: Vec<String>,
}

fn fmt_ns(ns: f64) -> String {
    let a = ns.abs();
    if a >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1_000_000.0)
    } else if a >= 10_000.0 {
        format!("{:.1} µs", ns / 1000.0)
    } else if a >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn fmt_signed_ns(ns: f64) -> String {
    if ns >= 0.0 {
        format!("+{}", fmt_ns(ns))
    } else {
        format!("-{}", fmt_ns(-ns))
    }
}

impl Report {
    fn new() -> Report {
        Report {
            lines: 0,
            met: 0,
            missed: Vec::new(),
        }
    }

    /// Prints one line comparing `other` against `base` (both in `m`).
    fn line(
        &mut self,
        backend: &str,
        what: &str,
        m: &Measured,
        base: usize,
        other: usize,
        goal: Goal,
    ) {
        let (b, o) = (&m.sides[base], &m.sides[other]);
        let (bm, om) = (b.median(), o.median());
        let ratio = om / bm;
        let diff = om - bm;
        // Per-round ratios of the paired runs: their spread shows the noise.
        let paired: Vec<f64> = o
            .per_call_ns
            .iter()
            .zip(&b.per_call_ns)
            .map(|(x, y)| x / y)
            .collect();
        let spread = format!(
            "[rounds {:.2}–{:.2}x]",
            quantile(&paired, 0.25),
            quantile(&paired, 0.75)
        );
        let (goal_text, verdict) = match goal {
            Goal::Ratio(g) => (format!("goal <= {g:.2}x"), Some(ratio <= g)),
            Goal::ExtraNs(g) => (format!("goal <= +{}", fmt_ns(g)), Some(diff <= g)),
            Goal::Scale => ("(for scale)".to_owned(), None),
        };
        let verdict_text = match verdict {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "",
        };
        println!(
            "{backend:<9}{what:<44}{:<4}{:>10}   {:<14}{:>10}   ratio {ratio:>5.2}x ({:>9})   {goal_text:<16}{verdict_text:<7}{spread}",
            b.name,
            fmt_ns(bm),
            o.name,
            fmt_ns(om),
            fmt_signed_ns(diff),
        );
        if let Some(ok) = verdict {
            self.lines += 1;
            if ok {
                self.met += 1;
            } else {
                self.missed.push(format!("{backend} {what}"));
            }
        }
    }
}

fn skipped(backend: &str, var: &str) {
    println!(
        "{backend:<9}skipped: {var} is not set; run `scripts/bench --bench overhead` \
         (it starts throwaway PostgreSQL and MariaDB servers and sets it)"
    );
}

fn failed(backend: &str, what: &str, e: &BoxError) {
    println!("{backend:<9}{what}: FAILED: {e}");
}

// ------------------------------------------------------------------ dbmanager

fn manager(
    name: &str,
    url: &str,
    pool_size: Option<u32>,
    max_overflow: Option<u32>,
) -> Outcome<DatabaseManager> {
    manager_with(name, url, pool_size, max_overflow, |b| b)
}

/// As [`manager`], with more settings applied to the builder.
fn manager_with(
    name: &str,
    url: &str,
    pool_size: Option<u32>,
    max_overflow: Option<u32>,
    more: impl FnOnce(dbmanager::DatabaseConfigBuilder) -> dbmanager::DatabaseConfigBuilder,
) -> Outcome<DatabaseManager> {
    let mut b = more(DatabaseConfig::builder(name).url(url));
    if let Some(n) = pool_size {
        b = b.pool_size(n);
    }
    if let Some(n) = max_overflow {
        b = b.max_overflow(n);
    }
    let db = DatabaseManager::from_config(b.build()?)?;
    // Warm: the pool opens connections on demand, so check out `pool_size`
    // of them at once (each opens one) and return them: they stay open, as
    // the pool keeps up to `pool_size`. Then run the statement a few times.
    let want = db.config().pool_size();
    let held = (0..want)
        .map(|_| db.connection())
        .collect::<Result<Vec<_>, _>>()?;
    drop(held);
    let open = db.pool_status().connections;
    if open < want {
        return Err(format!("the {name} pool kept {open} of {want} connections").into());
    }
    for _ in 0..100 {
        db.execute_query("SELECT 1", ())?;
    }
    Ok(db)
}

/// `SELECT 1` through dbmanager, reading the value as a user would.
fn dbm_select_one(db: &DatabaseManager) -> Outcome<()> {
    let rows = db.execute_query("SELECT 1", ())?;
    let v: i64 = rows.first().ok_or("no row")?.get(0)?;
    black_box(v);
    Ok(())
}

// ------------------------------------------------------------------ PostgreSQL

const PG_MAIN: &str = "SELECT 1 (prepared, 1 thread)";
const PG_NAIVE: &str = "SELECT 1 via r2d2_postgres defaults";

fn postgres(settings: &Settings, report: &mut Report) {
    const VAR: &str = "DBMANAGER_TEST_POSTGRES_URL";
    let keys = [
        format!("postgres {PG_MAIN}"),
        format!("postgres {PG_NAIVE}"),
    ];
    if !settings.wants(&keys) {
        return;
    }
    let Ok(url) = std::env::var(VAR) else {
        skipped("postgres", VAR);
        return;
    };
    if let Err(e) = postgres_select_one(settings, report, &url) {
        failed("postgres", PG_MAIN, &e);
    }
}

fn postgres_select_one(settings: &Settings, report: &mut Report, url: &str) -> Outcome<()> {
    use postgres::{Client, NoTls};

    let mut raw = Client::connect(url, NoTls)?;
    let stmt = raw.prepare("SELECT 1")?;
    let db = manager("bench_pg", url, None, None)?;
    let naive = r2d2::Pool::new(r2d2_postgres::PostgresConnectionManager::new(
        url.parse()?,
        NoTls,
    ))?;

    let m = measure(
        settings,
        vec![
            Side::serial("raw", || {
                let rows = raw.query(&stmt, &[])?;
                let v: i32 = rows.first().ok_or("no row")?.try_get(0)?;
                black_box(v);
                Ok(())
            }),
            Side::serial("dbmanager", || dbm_select_one(&db)),
            Side::serial("r2d2_postgres", || {
                let mut c = naive.get()?;
                let rows = c.query("SELECT 1", &[])?;
                let v: i32 = rows.first().ok_or("no row")?.try_get(0)?;
                black_box(v);
                Ok(())
            }),
        ],
    )?;
    report.line("postgres", PG_MAIN, &m, 0, 1, Goal::Ratio(1.05));
    report.line("postgres", PG_NAIVE, &m, 0, 2, Goal::Scale);
    db.close();
    Ok(())
}

// ------------------------------------------------------------------ MariaDB

const MY_MAIN: &str = "SELECT 1 (statement cache, 1 thread)";

fn mariadb(settings: &Settings, report: &mut Report) {
    const VAR: &str = "DBMANAGER_TEST_MYSQL_URL";
    if !settings.wants(&[format!("mariadb {MY_MAIN}")]) {
        return;
    }
    let Ok(url) = std::env::var(VAR) else {
        skipped("mariadb", VAR);
        return;
    };
    if let Err(e) = mariadb_select_one(settings, report, &url) {
        failed("mariadb", MY_MAIN, &e);
    }
}

fn mariadb_select_one(settings: &Settings, report: &mut Report, url: &str) -> Outcome<()> {
    use mysql::prelude::Queryable;

    // Same transport as dbmanager: TCP (the driver would otherwise switch to
    // the server's unix socket on loopback).
    let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(url)?).prefer_socket(false);
    let mut raw = mysql::Conn::new(opts)?;
    let db = manager("bench_my", url, None, None)?;

    let m = measure(
        settings,
        vec![
            Side::serial("raw", || {
                let rows: Vec<mysql::Row> = raw.exec("SELECT 1", ())?;
                let v: i64 = rows.first().ok_or("no row")?.get(0).ok_or("no value")?;
                black_box(v);
                Ok(())
            }),
            Side::serial("dbmanager", || dbm_select_one(&db)),
        ],
    )?;
    report.line("mariadb", MY_MAIN, &m, 0, 1, Goal::Ratio(1.05));
    db.close();
    Ok(())
}

// ------------------------------------------------------------------ SQLite

const SQ_MAIN: &str = "SELECT 1 (in memory, prepare_cached, 1 thread)";
const SQ_NAIVE: &str = "SELECT 1 via r2d2_sqlite defaults";
const SQ_POOLED: &str = "SELECT 1 via bare r2d2, no checkout test";
const SQ_OVER_POOLED: &str = "SELECT 1, dbmanager vs bare r2d2 + prepare_cached";

fn sqlite(settings: &Settings, report: &mut Report) {
    let keys = [
        format!("sqlite {SQ_MAIN}"),
        format!("sqlite {SQ_NAIVE}"),
        format!("sqlite {SQ_POOLED}"),
        format!("sqlite {SQ_OVER_POOLED}"),
    ];
    if !settings.wants(&keys) {
        return;
    }
    if let Err(e) = sqlite_select_one(settings, report) {
        failed("sqlite", SQ_MAIN, &e);
    }
}

fn sqlite_select_one(settings: &Settings, report: &mut Report) -> Outcome<()> {
    let raw = rusqlite::Connection::open_in_memory()?;
    let db = manager("bench_sqlite", "sqlite::memory:", None, None)?;
    let naive = r2d2::Pool::new(r2d2_sqlite::SqliteConnectionManager::memory())?;
    // What any pooled design pays at least: r2d2's own get and return
    // (with our pool's settings: no test on checkout, warmed), around the
    // raw side's cached statement.
    let pooled = r2d2::Pool::builder()
        .max_size(4)
        .min_idle(Some(0))
        .test_on_check_out(false)
        .build(r2d2_sqlite::SqliteConnectionManager::memory())?;

    let m = measure(
        settings,
        vec![
            Side::serial("raw", || {
                let v: i64 = raw
                    .prepare_cached("SELECT 1")?
                    .query_row([], |r| r.get(0))?;
                black_box(v);
                Ok(())
            }),
            Side::serial("dbmanager", || dbm_select_one(&db)),
            Side::serial("r2d2_sqlite", || {
                let c = naive.get()?;
                let v: i64 = c.query_row("SELECT 1", [], |r| r.get(0))?;
                black_box(v);
                Ok(())
            }),
            Side::serial("bare r2d2", || {
                let c = pooled.get()?;
                let v: i64 = c.prepare_cached("SELECT 1")?.query_row([], |r| r.get(0))?;
                black_box(v);
                Ok(())
            }),
        ],
    )?;
    report.line("sqlite", SQ_MAIN, &m, 0, 1, Goal::ExtraNs(300.0));
    report.line("sqlite", SQ_NAIVE, &m, 0, 2, Goal::Scale);
    report.line("sqlite", SQ_POOLED, &m, 0, 3, Goal::Scale);
    report.line("sqlite", SQ_OVER_POOLED, &m, 3, 1, Goal::Scale);
    db.close();
    Ok(())
}

// ------------------------------------------------------------------ pool

/// A connection that costs nothing, to time r2d2's own machinery.
struct Trivial;

impl r2d2::ManageConnection for Trivial {
    type Connection = ();
    type Error = Infallible;

    fn connect(&self) -> Result<(), Infallible> {
        Ok(())
    }

    fn is_valid(&self, _: &mut ()) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _: &mut ()) -> bool {
        false
    }
}

fn pool_what(threads: usize) -> String {
    format!(
        "get+return, {threads} thread{}, pool of 4",
        if threads == 1 { "" } else { "s" }
    )
}

fn pool(settings: &Settings, report: &mut Report) {
    let all = [1, 2, 8];
    let wanted: Vec<usize> = all
        .into_iter()
        .filter(|t| settings.wants(&[format!("pool {}", pool_what(*t))]))
        .collect();
    if wanted.is_empty() {
        return;
    }
    if let Err(e) = pool_get_return(settings, report, &wanted) {
        failed("pool", "get+return", &e);
    }
}

fn pool_get_return(settings: &Settings, report: &mut Report, threads: &[usize]) -> Outcome<()> {
    let db = manager("bench_pool", "sqlite::memory:", Some(4), Some(0))?;
    // The bare pool runs with the r2d2 settings dbmanager's pool has: no
    // test on checkout and no idle minimum to top up (r2d2's defaults call
    // `is_valid` on every checkout and look at the idle count on every
    // one), the same timeouts, warmed to the same four connections.
    let config = db.config();
    let bare = r2d2::Pool::builder()
        .max_size(4)
        .min_idle(Some(0))
        .test_on_check_out(false)
        .connection_timeout(config.acquire_timeout())
        .idle_timeout(Some(config.idle_timeout()).filter(|t| !t.is_zero()))
        .max_lifetime(config.max_lifetime())
        .build(Trivial)?;
    let warm = (0..4).map(|_| bare.get()).collect::<Result<Vec<_>, _>>()?;
    drop(warm);
    for &t in threads {
        let m = measure(
            settings,
            vec![
                Side::threaded("raw", t, || {
                    black_box(bare.get()?);
                    Ok(())
                }),
                Side::threaded("dbmanager", t, || {
                    drop(black_box(db.connection()?));
                    Ok(())
                }),
            ],
        )?;
        report.line("pool", &pool_what(t), &m, 0, 1, Goal::Ratio(1.2));
    }
    db.close();
    Ok(())
}

// ------------------------------------------------------------------ watchdog and metrics

/// One setting switched on and off on two managers of the same database.
struct Toggle {
    /// Report prefix and filter key.
    key: &'static str,
    /// The line's text.
    what: &'static str,
    off: fn(dbmanager::DatabaseConfigBuilder) -> dbmanager::DatabaseConfigBuilder,
    on: fn(dbmanager::DatabaseConfigBuilder) -> dbmanager::DatabaseConfigBuilder,
}

const WATCHDOG: Toggle = Toggle {
    key: "watchdog",
    what: "SELECT 1, watchdog armed vs not",
    // Metrics off on both sides: this compares the watchdog alone.
    off: |b| b.query_timeout(None).metrics(false),
    on: |b| {
        b.query_timeout(Some(Duration::from_secs(30)))
            .metrics(false)
    },
};

const METRICS: Toggle = Toggle {
    key: "metrics",
    what: "SELECT 1, metrics on vs off",
    off: |b| b.query_timeout(None).metrics(false),
    on: |b| b.query_timeout(None).metrics(true),
};

fn toggles(settings: &Settings, report: &mut Report) {
    for t in [&WATCHDOG, &METRICS] {
        for (backend, var, goal) in [
            (
                "postgres",
                Some("DBMANAGER_TEST_POSTGRES_URL"),
                Goal::Ratio(1.02),
            ),
            (
                "mariadb",
                Some("DBMANAGER_TEST_MYSQL_URL"),
                Goal::Ratio(1.02),
            ),
            (
                "sqlite",
                None,
                Goal::ExtraNs(if t.key == "watchdog" { 300.0 } else { 50.0 }),
            ),
        ] {
            let label = format!("{}/{backend}", t.key);
            if !settings.wants(&[format!("{label} {}", t.what)]) {
                continue;
            }
            let url = match var {
                None => "sqlite::memory:".to_owned(),
                Some(v) => match std::env::var(v) {
                    Ok(u) => u,
                    Err(_) => {
                        skipped(&label, v);
                        continue;
                    }
                },
            };
            let threads: &[usize] = if backend == "sqlite" {
                &[1, 2, 8]
            } else {
                &[1]
            };
            if let Err(e) = toggle(settings, report, t, &label, &url, threads, goal) {
                failed(&label, t.what, &e);
            }
        }
    }
    if settings.wants(&["watchdog/postgres precision".to_owned()]) {
        match std::env::var("DBMANAGER_TEST_POSTGRES_URL") {
            Ok(url) => {
                if let Err(e) = precision(&url) {
                    failed("watchdog", "precision", &e);
                }
            }
            Err(_) => skipped("watchdog", "DBMANAGER_TEST_POSTGRES_URL"),
        }
    }
}

fn toggle(
    settings: &Settings,
    report: &mut Report,
    t: &Toggle,
    label: &str,
    url: &str,
    threads: &[usize],
    goal: Goal,
) -> Outcome<()> {
    let off = manager_with(&format!("bench_{label}_off"), url, Some(8), Some(0), t.off)?;
    let on = manager_with(&format!("bench_{label}_on"), url, Some(8), Some(0), t.on)?;
    for &n in threads {
        let sides = if n == 1 {
            vec![
                Side::serial("off", || dbm_select_one(&off)),
                Side::serial("on", || dbm_select_one(&on)),
            ]
        } else {
            vec![
                Side::threaded("off", n, || dbm_select_one(&off)),
                Side::threaded("on", n, || dbm_select_one(&on)),
            ]
        };
        let m = measure(settings, sides)?;
        let what = format!("{}, {n} thread{}", t.what, if n == 1 { "" } else { "s" });
        report.line(
            label,
            &what,
            &m,
            0,
            1,
            if n == 1 { goal } else { Goal::Scale },
        );
    }
    off.close();
    on.close();
    Ok(())
}

/// How long after a 100 ms limit the caller of `pg_sleep(1)` gets control
/// back, over 100 cancelled calls.
fn precision(url: &str) -> Outcome<()> {
    let db = manager("bench_precision", url, Some(1), Some(0))?;
    let limit = Duration::from_millis(100);
    let mut ms = Vec::with_capacity(100);
    for _ in 0..100 {
        let started = Instant::now();
        match db.execute_with_timeout("SELECT pg_sleep(1)", (), limit) {
            Err(e) if e.kind() == dbmanager::ErrorKind::QueryTimeout => {
                ms.push(started.elapsed().as_secs_f64() * 1e3)
            }
            Err(e) => return Err(e.into()),
            Ok(_) => return Err("pg_sleep(1) finished within its 100 ms limit".into()),
        }
    }
    let p99 = quantile(&ms, 0.99);
    println!(
        "{:<9}{:<44}p50 {:.1} ms, p99 {p99:.1} ms, max {:.1} ms   goal p99 <= 120 ms   {}   (connections discarded: {})",
        "watchdog",
        "100 x pg_sleep(1) with a 100 ms limit",
        quantile(&ms, 0.5),
        ms.iter().copied().fold(0.0, f64::max),
        if p99 <= 120.0 { "ok" } else { "MISSED" },
        db.pool_status().invalid
    );
    db.close();
    Ok(())
}

// ------------------------------------------------------------------ main

fn main() -> ExitCode {
    let settings = Settings::from_args();
    let started = Instant::now();
    println!(
        "dbmanager overhead: {} rounds per comparison, each side ~{} ms per round, sides alternated; \
         times are medians per call over rounds (threaded: wall time / calls across all threads){}",
        settings.rounds,
        settings.round_target.as_millis(),
        if settings.quick { " [--quick]" } else { "" }
    );
    println!(
        "raw = the driver used directly (postgres/mysql: prepared or cached statement; pool: bare r2d2::Pool over a no-op connection)\n"
    );
    let mut report = Report::new();
    postgres(&settings, &mut report);
    mariadb(&settings, &mut report);
    sqlite(&settings, &mut report);
    pool(&settings, &mut report);
    toggles(&settings, &mut report);

    println!(
        "\n{} of {} goals met in {:.1} s",
        report.met,
        report.lines,
        started.elapsed().as_secs_f64()
    );
    for m in &report.missed {
        println!("missed: {m}");
    }
    if let Some(f) = &settings.filter {
        if report.lines == 0 {
            println!("(no comparison matched the filter `{f}`)");
        }
    }
    if settings.strict && !report.missed.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
