//! A server restarted in the middle of a load (a private PostgreSQL and a
//! private MariaDB, one at a time): errors only for calls made while it was down, each
//! classified retryable; after it returns every thread recovers without
//! intervention and the pool refills.
//!
//! Reads go through the retried read path and writes through whole
//! transactions (retried), as a job that wants to ride out a restart would
//! write them. The breaker is off here (this scenario is about retries and
//! the pool; `resilience_hung` covers the breaker).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::fault::{metric, PrivateServer, Tally};
use common::Backend;
use dbmanager::{ErrorKind, Result, RetryPolicy};

const THREADS: usize = 8;
const DOWN_FOR: Duration = Duration::from_secs(3);

fn a_restart_mid_load_is_ridden_out(b: Backend) -> Result<()> {
    // One server at a time, as the timings below assume.
    let _alone = common::alone();
    let kind = b.name();
    let server = PrivateServer::start(b);
    let name = common::unique_name("restart");
    let db = common::manager_with(&name, &server.url, |b| {
        b.pool_size(4)
            .max_overflow(0)
            .connect_timeout(Duration::from_secs(2))
            .acquire_timeout(Duration::from_secs(5))
            .query_timeout(Some(Duration::from_secs(5)))
            .circuit_failures(0)
            .retry(
                RetryPolicy::default()
                    .attempts(4)
                    .base_delay(Duration::from_millis(100))
                    .max_delay(Duration::from_millis(500)),
            )
    })?;
    let table = common::unique_name("rs");
    db.execute_batch(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, thread INT NOT NULL)"
    ))?;

    let tally = Tally::default();
    let stop = AtomicBool::new(false);
    // (began, ended, kind) of every failed call; when the server went down
    // and came back.
    let failures: Mutex<Vec<(Instant, ErrorKind, bool)>> = Mutex::new(Vec::new());
    let window: Mutex<(Option<Instant>, Option<Instant>)> = Mutex::new((None, None));
    let first_ok_after_up: Mutex<Vec<Option<Duration>>> = Mutex::new(vec![None; THREADS]);
    let written: Mutex<Vec<i64>> = Mutex::new(Vec::new());

    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (db, tally, stop, failures, window, first_ok, written, table) = (
                &db,
                &tally,
                &stop,
                &failures,
                &window,
                &first_ok_after_up,
                &written,
                &table,
            );
            s.spawn(move || {
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    let id = t as i64 * 1_000_000 + i;
                    let r = if i % 2 == 0 {
                        db.transaction(|tx| {
                            tx.execute(
                                &format!("INSERT INTO {table} (id, thread) VALUES (?, ?)"),
                                (id, t as i64),
                            )
                        })
                        .map(|_| written.lock().unwrap().push(id))
                    } else {
                        db.query_one(
                            &format!("SELECT COUNT(*) AS n FROM {table} WHERE thread = ?"),
                            (t as i64,),
                        )
                        .map(drop)
                    };
                    i += 1;
                    match r {
                        Ok(()) => {
                            tally.ok();
                            if let (_, Some(up)) = *window.lock().unwrap() {
                                let mut f = first_ok.lock().unwrap();
                                if f[t].is_none() {
                                    f[t] = Some(Instant::now().saturating_duration_since(up));
                                }
                            }
                        }
                        Err(e) => {
                            tally.err(&e);
                            failures
                                .lock()
                                .unwrap()
                                .push((began, e.kind(), e.is_retryable()));
                            // A caller that rides out an outage waits a little.
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(1));
        window.lock().unwrap().0 = Some(Instant::now());
        server.stop();
        let down_at = Instant::now();
        std::thread::sleep(DOWN_FOR);
        server.start_again();
        window.lock().unwrap().1 = Some(Instant::now());
        eprintln!(
            "{kind}: down {:.1}s, back up",
            down_at.elapsed().as_secs_f64()
        );
        // Run on until every thread has had a success since, or 30 s.
        let up = Instant::now();
        while up.elapsed() < Duration::from_secs(30)
            && first_ok_after_up
                .lock()
                .unwrap()
                .iter()
                .any(Option::is_none)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
    });

    // The pool refills: four callers at once get four live connections.
    let refill = Instant::now();
    let mut guards = Vec::new();
    for _ in 0..4 {
        let mut c = db.connection()?;
        c.execute_query("SELECT 1", ())?;
        guards.push(c);
    }
    let refilled = (db.pool_status().connections, refill.elapsed());
    drop(guards);

    let (down, up) = *window.lock().unwrap();
    let (down, up) = (down.expect("went down"), up.expect("came back"));
    let failures = failures.into_inner().unwrap();
    let recoveries = first_ok_after_up.into_inner().unwrap();
    let slowest = recoveries.iter().flatten().max().copied();
    tally.report(
        &format!("restart/{kind}"),
        &format!(
            "down_for={:.1}s retries={} slowest_thread_recovery_after_up={:.2}s pool_refilled_to={} in {:.2}s",
            DOWN_FOR.as_secs_f64(),
            metric("db_retries_total", &name, None),
            slowest.unwrap_or_default().as_secs_f64(),
            refilled.0,
            refilled.1.as_secs_f64()
        ),
    );
    for (began, kind, retryable) in &failures {
        assert!(
            *began < up,
            "a call that began {:?} after the server was back failed ({kind:?})",
            began.saturating_duration_since(up)
        );
        // Calls in flight when it went down may have begun just before.
        assert!(
            *began + Duration::from_secs(10) > down,
            "failure long before the restart"
        );
        assert!(*retryable, "{kind:?} is classified retryable");
    }
    assert!(
        recoveries.iter().all(Option::is_some),
        "every thread recovered: {recoveries:?}"
    );
    // Every committed write is there (a commit cut by the shutdown may
    // have landed too: its caller was told the outcome is unknown).
    let written = written.into_inner().unwrap();
    let ids: std::collections::HashSet<i64> = db
        .execute_query(&format!("SELECT id FROM {table}"), ())?
        .iter()
        .map(|r| r.get::<i64>("id"))
        .collect::<Result<_>>()?;
    assert!(
        written.iter().all(|id| ids.contains(id)),
        "every committed row survived the restart"
    );
    assert_eq!(refilled.0, 4, "the pool refilled after the restart");
    assert_eq!(db.pool_status().checked_out, 0);
    Ok(())
}
each_backend!(a_restart_mid_load_is_ridden_out, [Postgres, MySql]);

/// As a new user runs it: only the connection string is set, every other
/// setting keeps its default (retries, circuit breaker, timeouts). Eight
/// threads run `SELECT 1` while PostgreSQL restarts (a fast shutdown, about
/// a second down). Calls fail only while it is down: none that begins a
/// second after it accepts connections again.
#[test]
fn a_restart_with_default_settings_costs_only_the_downtime() -> Result<()> {
    let _alone = common::alone();
    let server = PrivateServer::start(Backend::Postgres);
    let name = common::unique_name("restart_defaults");
    let key = format!(
        "DEVELOPMENT_GLOBAL_{}_CONNECTION_STRING",
        name.to_uppercase()
    );
    let url = server.url.clone();
    let config =
        dbmanager::DatabaseConfig::from_lookup(&name, |k| (k == key).then(|| url.clone()))?;
    let db = dbmanager::DatabaseManager::from_config(config)?;
    db.execute_query("SELECT 1", ())?;

    let stop = AtomicBool::new(false);
    let failures: Mutex<Vec<(Instant, Instant, ErrorKind)>> = Mutex::new(Vec::new());
    let calls = std::sync::atomic::AtomicU64::new(0);
    let (down, up) = std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    calls.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = db.execute_query("SELECT 1", ()) {
                        failures
                            .lock()
                            .unwrap()
                            .push((began, Instant::now(), e.kind()));
                        // A job that rides out an outage waits a little.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(1));
        let down = Instant::now();
        server.stop();
        std::thread::sleep(Duration::from_millis(500));
        server.start_again();
        let up = Instant::now();
        std::thread::sleep(Duration::from_secs(4));
        stop.store(true, Ordering::Relaxed);
        (down, up)
    });

    let failures = failures.into_inner().unwrap();
    let mut per_second = vec![0u32; 1 + (Instant::now() - down).as_secs() as usize];
    for (began, _, _) in &failures {
        per_second[began.saturating_duration_since(down).as_secs() as usize] += 1;
    }
    let late: Vec<_> = failures
        .iter()
        .filter(|(began, _, _)| *began >= up + Duration::from_secs(1))
        .map(|(began, _, kind)| (began.saturating_duration_since(up), *kind))
        .collect();
    eprintln!(
        "restart_defaults: down for {:.2} s, {} calls, {} errors; errors per second from the stop: {per_second:?}; \
         circuit now {:?}",
        (up - down).as_secs_f64(),
        calls.load(Ordering::Relaxed),
        failures.len(),
        db.pool_status().circuit,
    );
    assert!(
        late.is_empty(),
        "calls that began a second or more after the server was back failed: {late:?}"
    );
    for (_, _, kind) in &failures {
        let transient = matches!(
            kind,
            ErrorKind::Connect
                | ErrorKind::ConnectTimeout
                | ErrorKind::PoolTimeout
                | ErrorKind::CircuitOpen
        );
        assert!(transient, "{kind:?} while the server restarted");
    }
    Ok(())
}
