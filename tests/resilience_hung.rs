//! A server that stops answering (SIGSTOP) never hangs its callers.
//!
//! - A private PostgreSQL frozen whole (postmaster and every backend): each
//!   call returns within its own timeout, the circuit breaker opens, calls
//!   then fail at once with `CircuitOpen`; after SIGCONT the breaker closes
//!   through its probe and work resumes.
//! - The shared MariaDB stopped, then one backend of the shared PostgreSQL:
//!   the watchdog's cancel cannot reach them, so after a grace period the
//!   connection's transport is cut and the caller gets `QueryTimeout`; other
//!   deadlines keep firing on schedule meanwhile, and health checks answer
//!   within their own limit.
//! - A server that accepts the TCP connection and then says nothing (a
//!   loopback listener, on each server backend): the first statement, a
//!   health check and concurrent callers all fail within the connect
//!   timeout, with an error that says so and names the setting to raise;
//!   so does one reached by host name (the lookup counts against it).
//!
//! Each test that stops a server takes `common::alone()`, so nothing runs
//! beside it: stopping MariaDB stops the whole shared server, and
//! `health_check_all` touches every manager in the process; neither may
//! disturb another test. The silent-listener tests take `common::shared()`.

mod common;

use std::time::{Duration, Instant};

use common::fault::{metric, PrivateServer, Silent, Stopped, Tally};
use common::{error_text, times_out_within, unique_name, Backend};
use dbmanager::{CircuitState, DatabaseManager, ErrorKind, Health, Result, RetryPolicy};

const QUERY_TIMEOUT: Duration = Duration::from_millis(800);
const RECOVERY: Duration = Duration::from_secs(2);

#[test]
fn a_frozen_server_opens_the_breaker_and_a_probe_closes_it() -> Result<()> {
    let _alone = common::alone();
    let server = PrivateServer::start(Backend::Postgres);
    let name = unique_name("hung");
    let db = common::manager_with(&name, &server.url, |b| {
        b.pool_size(4)
            .max_overflow(0)
            .query_timeout(Some(QUERY_TIMEOUT))
            .connect_timeout(Duration::from_secs(1))
            .acquire_timeout(Duration::from_secs(2))
            .health_timeout(Duration::from_secs(2))
            .circuit_failures(3)
            .circuit_window(Duration::from_secs(60))
            .circuit_recovery(RECOVERY)
    })?;
    // Warm the pool with four connections.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| db.execute_query("SELECT pg_sleep(0.2)", ()).map(drop));
        }
    });
    assert_eq!(db.pool_status().circuit, CircuitState::Closed);

    let tally = Tally::default();
    let frozen = Stopped::tree(server.pid());
    let frozen_at = Instant::now();
    // Each call returns within its own limit (plus the watchdog's grace to
    // cut a connection whose cancel cannot get through), never hangs.
    let mut opened_after = None;
    for i in 0..12 {
        let started = Instant::now();
        let r = db.execute_query("SELECT 1", ());
        let took = started.elapsed();
        let e = r.expect_err("a frozen server cannot answer");
        tally.err(&e);
        eprintln!("hung call {i}: {:?} after {took:?}", e.kind());
        assert!(
            took < Duration::from_secs(10),
            "call {i} hung for {took:?}: {e}"
        );
        assert!(
            matches!(
                e.kind(),
                ErrorKind::QueryTimeout
                    | ErrorKind::ConnectTimeout
                    | ErrorKind::PoolTimeout
                    | ErrorKind::Connect
                    | ErrorKind::CircuitOpen
            ),
            "{e}"
        );
        if e.kind() == ErrorKind::CircuitOpen {
            opened_after.get_or_insert(i);
            // Fast: no I/O, no pool wait.
            assert!(took < Duration::from_millis(500), "{took:?}");
            assert!(e.to_string().contains("probe"), "says when: {e}");
            if i >= opened_after.unwrap_or(i) + 2 {
                break;
            }
        }
    }
    let opened_after = opened_after.expect("the breaker opened");
    let status = db.pool_status();
    let health = db.health_check();
    let gauge = metric("db_circuit_state", &name, None);
    eprintln!(
        "breaker open after {opened_after} failed calls ({:.1}s frozen); pool circuit={:?} health={:?} gauge={gauge}",
        common::fault::secs(frozen_at),
        status.circuit,
        health.status
    );
    assert!(opened_after <= 6, "opened after {opened_after} calls");
    assert!(matches!(
        status.circuit,
        CircuitState::Open | CircuitState::HalfOpen
    ));
    assert_ne!(health.status, Health::Healthy, "{health:?}");
    assert!(gauge >= 1.0, "db_circuit_state = {gauge}");

    frozen.resume();
    let resumed = Instant::now();
    // Work resumes without intervention: once the recovery time is up, a
    // probe closes the breaker.
    let mut recovered = None;
    while resumed.elapsed() < Duration::from_secs(30) {
        match db.execute_query("SELECT 1 AS one", ()) {
            Ok(rows) => {
                assert_eq!(rows[0].get::<i64>("one")?, 1);
                recovered = Some(resumed.elapsed());
                break;
            }
            Err(e) => {
                tally.err(&e);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let recovered = recovered.expect("work resumed after SIGCONT");
    let status = db.pool_status();
    tally.report(
        "hung_server/postgres",
        &format!(
            "breaker_opened_after_calls={opened_after} recovery_after_cont={:.2}s \
             circuit_transitions_to_open={} circuit_now={:?} discarded={}",
            recovered.as_secs_f64(),
            metric(
                "db_circuit_transitions_total",
                &name,
                Some("state=\"open\"")
            ),
            status.circuit,
            status.invalid
        ),
    );
    assert_eq!(status.circuit, CircuitState::Closed);
    assert_eq!(metric("db_circuit_state", &name, None), 0.0);
    // Answering again (degraded at most: its statements just timed out).
    let health = db.health_check();
    assert_ne!(health.status, Health::Unhealthy, "{health:?}");
    assert_eq!(health.circuit, CircuitState::Closed);
    // Everything works again, on fresh connections.
    for _ in 0..20 {
        db.execute_query("SELECT 1", ())?;
    }
    assert_eq!(db.pool_status().checked_out, 0);
    Ok(())
}

/// A small pool with short connect and acquire limits on `url`.
fn manager(url: &str) -> Result<DatabaseManager> {
    common::manager_with(&unique_name("hung"), url, |b| {
        b.pool_size(2)
            .max_overflow(0)
            .connect_timeout(Duration::from_secs(2))
            .acquire_timeout(Duration::from_secs(5))
    })
}

/// While `stopped` hangs, a PostgreSQL (or other) statement on another
/// server still times out on schedule: the watchdog is not stalled.
fn other_deadlines_fire(other: &DatabaseManager, sql: &str) -> Result<()> {
    for _ in 0..3 {
        times_out_within(
            Duration::from_secs(3),
            "a long statement elsewhere must still time out",
            || other.execute_query_with_timeout(sql, (), Duration::from_millis(300)),
        );
    }
    Ok(())
}

#[test]
fn hung_servers_do_not_hang_callers() -> Result<()> {
    let _alone = common::alone();
    // --- MariaDB: the whole server stopped.
    let my = manager(&Backend::MySql.url())?;
    let pg = manager(&Backend::Postgres.url())?;
    let sqlite = manager("sqlite::memory:")?;
    my.execute_query("SELECT 1", ())?;
    pg.execute_query("SELECT 1", ())?;
    {
        let _stopped = Stopped::process(Backend::MySql.server_pid());
        std::thread::scope(|s| -> Result<()> {
            let hung = s.spawn(|| {
                let started = Instant::now();
                let r = my.execute_query_with_timeout("SELECT 1", (), Duration::from_millis(300));
                (r, started.elapsed())
            });
            eprintln!("mariadb stopped; checking other deadlines");
            other_deadlines_fire(&pg, Backend::Postgres.endless_statement())?;
            eprintln!("postgres deadlines fired");
            other_deadlines_fire(&sqlite, Backend::SqliteMemory.endless_statement())?;
            eprintln!("sqlite deadlines fired");
            let (r, took) = hung.join().expect("no panic");
            eprintln!("the hung caller returned after {took:?}");
            let err = r.expect_err("a stopped server cannot answer");
            assert_eq!(err.kind(), ErrorKind::QueryTimeout, "{err}");
            assert!(
                took < Duration::from_secs(10),
                "the caller hung for {took:?}"
            );
            Ok(())
        })?;
        // A health check of a stopped server answers within its own limit.
        let my_quick =
            common::manager_with(&unique_name("hung_health"), &Backend::MySql.url(), |b| {
                b.health_timeout(Duration::from_secs(1))
            })?;
        let started = Instant::now();
        let h = my_quick.health_check();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(h.status, dbmanager::Health::Unhealthy, "{h:?}");
        // Every live manager in the process, side by side: about one
        // health timeout in all, not one per database.
        let started = Instant::now();
        let all = DatabaseManager::health_check_all();
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "took {:?}",
            started.elapsed()
        );
        for db in [&my, &pg, &sqlite, &my_quick] {
            assert!(
                all.iter().any(|h| h.database_name == db.name()),
                "{} missing",
                db.name()
            );
        }
        let status = |db: &DatabaseManager| {
            all.iter()
                .find(|h| h.database_name == db.name())
                .map(|h| h.status)
        };
        // PostgreSQL answers (degraded, though: its statements just timed out).
        assert_eq!(status(&pg), Some(dbmanager::Health::Degraded));
        assert_eq!(status(&my_quick), Some(dbmanager::Health::Unhealthy));
    }
    // Resumed: the cut connection was discarded, a new one works.
    let one: i64 = my.query_one("SELECT 1 AS one", ())?.get("one")?;
    assert_eq!(one, 1);
    assert!(
        my.pool_status().invalid >= 1,
        "the cut connection must not be reused"
    );

    // --- PostgreSQL: one backend stopped; the server itself still answers.
    let mut conn = pg.connection()?;
    let pid: i64 = conn
        .query_one("SELECT pg_backend_pid()::int8 AS pid", ())?
        .get("pid")?;
    {
        let _stopped = Stopped::process(pid);
        times_out_within(
            Duration::from_secs(10),
            "a stopped backend cannot answer",
            || conn.execute_query_with_timeout("SELECT 1", (), Duration::from_millis(300)),
        );
        // Other connections of the same server still work and time out on schedule.
        other_deadlines_fire(&pg, Backend::Postgres.endless_statement())?;
    }
    drop(conn);
    let one: i64 = pg.query_one("SELECT 1 AS one", ())?.get("one")?;
    assert_eq!(one, 1);
    Ok(())
}

/// The connect timeout of the silent-server tests, and the slack allowed on
/// top of it before a call counts as hung.
const CONNECT: Duration = Duration::from_secs(1);
const SLACK: Duration = Duration::from_secs(2);
/// The password in the silent-server URLs: no error may show it.
const SECRET: &str = "Silent-Secret-4q7z";

/// A URL of `b`'s kind for a server at `127.0.0.1:port`.
fn url_at(b: Backend, port: u16) -> String {
    match b {
        Backend::Postgres => format!("postgresql://app:{SECRET}@127.0.0.1:{port}/appdb"),
        Backend::MySql => format!("mysql://app:{SECRET}@127.0.0.1:{port}/appdb"),
        Backend::MsSql => format!(
            "mssql://app:{SECRET}@127.0.0.1:{port}/bridge?encrypt=true&trust_server_certificate=true"
        ),
        other => panic!("{other:?} has no server to be silent"),
    }
}

/// Runs `call` on a thread of its own and returns what it returned and how
/// long it took; panics (leaving the thread behind) when it has not
/// returned within `limit`, so a hang fails the test instead of hanging it.
fn returns_within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    call: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let out = call();
        let _ = tx.send((out, started.elapsed()));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what}: no answer within {limit:?}: the call hangs"))
}

/// A connect that could not finish: says what timed out, which setting
/// to raise, and never the password.
fn assert_connect_timed_out(e: &dbmanager::Error, what: &str) {
    let text = e.to_string();
    assert_eq!(e.kind(), ErrorKind::ConnectTimeout, "{what}: {text}");
    assert!(
        text.contains("connect timeout"),
        "{what}, says what: {text}"
    );
    assert!(
        text.contains("DatabaseConfigBuilder::connect_timeout"),
        "{what}, names the setting: {text}"
    );
    assert!(!error_text(e).contains(SECRET), "{what}: password shown");
}

/// A server that accepts connections and never answers: every way in
/// fails within the connect timeout (no retries, and a breaker that does
/// not open, so that each call really connects).
fn silent_server_fails_within_the_connect_timeout(b: Backend) -> Result<()> {
    let _shared = common::shared();
    let silent = Silent::start();
    let db = common::manager_with(&unique_name("silent"), &url_at(b, silent.port()), |c| {
        c.pool_size(2)
            .max_overflow(0)
            .connect_timeout(CONNECT)
            .acquire_timeout(Duration::from_secs(30))
            .health_timeout(Duration::from_secs(30))
            .retry(RetryPolicy::none())
            .circuit_failures(1000)
    })?;
    let within = CONNECT + SLACK;

    // The first statement.
    let first = db.clone();
    let (r, took) = returns_within(within, "the first statement", move || {
        first.execute_query("SELECT 1", ())
    });
    let e = r.expect_err("a silent server cannot answer");
    eprintln!("{}: first statement failed after {took:?}: {e}", b.name());
    assert_connect_timed_out(&e, "the first statement");
    assert!(silent.accepted() >= 1, "the listener was reached");

    // A health check, with a health timeout far longer than the connect timeout.
    let checked = db.clone();
    let (h, took) = returns_within(within, "health_check", move || checked.health_check());
    eprintln!("{}: health check after {took:?}: {h:?}", b.name());
    assert_eq!(h.status, Health::Unhealthy, "{h:?}");
    let why = h.error.clone().unwrap_or_default();
    assert!(why.contains("connect timeout"), "says why: {why}");
    assert!(!why.contains(SECRET), "password shown: {why}");

    // Concurrent callers on a cold pool: each returns in about one connect timeout.
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            let started = Instant::now();
            std::thread::spawn(move || {
                let r = db.execute_query("SELECT 1", ());
                let _ = tx.send((r, started.elapsed()));
            });
            rx
        })
        .collect();
    let deadline = Instant::now() + within;
    for (i, rx) in callers.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let (r, took) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("concurrent caller {i}: no answer within {within:?}"));
        let e = r.expect_err("a silent server cannot answer");
        eprintln!(
            "{}: concurrent caller {i} failed after {took:?}: {e}",
            b.name()
        );
        assert_connect_timed_out(&e, &format!("concurrent caller {i}"));
    }
    Ok(())
}
each_backend!(
    silent_server_fails_within_the_connect_timeout,
    [Postgres, MySql, MsSql]
);

/// The connect timeout bounds the handshake only: on a real server, a
/// statement that runs longer than it still finishes, and one cut at its
/// own deadline is cancelled as usual.
fn the_connect_limit_does_not_limit_statements(b: Backend) -> Result<()> {
    let _shared = common::shared();
    let db = b.open_with(|c| c.connect_timeout(CONNECT).retry(RetryPolicy::none()))?;
    let sleep = match b {
        Backend::Postgres => "SELECT pg_sleep(2.5)",
        Backend::MySql => "SELECT SLEEP(2.5)",
        other => panic!("no sleep on {other:?}"),
    };
    db.execute_query(sleep, ())?;
    times_out_within(
        Duration::from_secs(5),
        "a statement past its own deadline",
        || db.execute_query_with_timeout(b.endless_statement(), (), Duration::from_millis(500)),
    );
    // The session was cancelled, not lost.
    assert_eq!(db.query_one("SELECT 1 AS one", ())?.get::<i64>("one")?, 1);
    Ok(())
}
each_backend!(
    the_connect_limit_does_not_limit_statements,
    [Postgres, MySql]
);

/// A host name goes through the bounded lookup: `localhost` reaches the
/// real server, and a silent one still fails within the connect timeout.
fn host_names_are_resolved_within_the_connect_limit(b: Backend) -> Result<()> {
    let _shared = common::shared();
    let by_name = b.url().replacen("@127.0.0.1:", "@localhost:", 1);
    assert_ne!(by_name, b.url(), "the test URL names 127.0.0.1");
    let db = common::manager_with(&unique_name("by_name"), &by_name, |c| {
        c.connect_timeout(Duration::from_secs(5))
    })?;
    assert_eq!(db.query_one("SELECT 1 AS one", ())?.get::<i64>("one")?, 1);

    let silent = Silent::start();
    let url = url_at(b, silent.port()).replacen("@127.0.0.1:", "@localhost:", 1);
    let db = common::manager_with(&unique_name("silent_name"), &url, |c| {
        c.connect_timeout(CONNECT).retry(RetryPolicy::none())
    })?;
    let (r, took) = returns_within(CONNECT + SLACK, "a silent server by name", move || {
        db.execute_query("SELECT 1", ())
    });
    let e = r.expect_err("a silent server cannot answer");
    eprintln!("{}: by name, failed after {took:?}: {e}", b.name());
    assert_connect_timed_out(&e, "a silent server by name");
    Ok(())
}
each_backend!(
    host_names_are_resolved_within_the_connect_limit,
    [Postgres, MySql, MsSql]
);
