//! Where retries apply (reads and whole transactions; writes only when
//! asked; never on a held connection) and how the breaker answers, against
//! a port nothing listens on and a real server.

mod common;

use std::time::{Duration, Instant};

use common::fault::metric;
use dbmanager::{CircuitState, DatabaseManager, ErrorKind, Result, RetryPolicy};

fn unreachable(name: &str, failures: u32) -> Result<DatabaseManager> {
    let url = format!(
        "postgresql://app:pw@127.0.0.1:{}/appdb",
        common::closed_port()
    );
    common::manager_with(name, &url, |b| {
        b.connect_timeout(Duration::from_secs(2))
            .circuit_failures(failures)
            .circuit_recovery(Duration::from_secs(60))
            .retry(
                RetryPolicy::default()
                    .attempts(3)
                    .base_delay(Duration::from_millis(10)),
            )
    })
}

#[test]
fn reads_and_transactions_retry_writes_only_when_asked() -> Result<()> {
    let name = common::unique_name("rules");
    let db = unreachable(&name, 0)?;
    let retries = || metric("db_retries_total", &name, None);

    let e = db
        .execute_query("SELECT 1", ())
        .expect_err("nothing listens");
    assert_eq!(e.kind(), ErrorKind::Connect);
    assert!(e.is_retryable());
    assert_eq!(retries(), 2.0, "a read: 3 attempts");

    db.execute("INSERT INTO t VALUES (1)", ())
        .expect_err("nothing listens");
    db.execute_query("INSERT INTO t VALUES (1) RETURNING id", ())
        .expect_err("nothing listens");
    assert_eq!(retries(), 2.0, "writes outside a transaction: not retried");

    db.transaction(|tx| tx.execute("INSERT INTO t VALUES (1)", ()))
        .expect_err("nothing listens");
    assert_eq!(retries(), 4.0, "a whole transaction: retried");

    db.with_retry(RetryPolicy::none().retry_writes(true).attempts(2))
        .execute("INSERT INTO t VALUES (1)", ())
        .expect_err("nothing listens");
    assert_eq!(retries(), 5.0, "writes when asked");

    db.with_retry(RetryPolicy::none())
        .execute_query("SELECT 1", ())
        .expect_err("nothing listens");
    assert_eq!(retries(), 5.0, "no retry when told so");
    assert_eq!(db.retry_policy(), db.config().retry_policy());
    Ok(())
}

#[test]
fn statements_on_a_held_connection_are_never_retried() -> Result<()> {
    let name = common::unique_name("rules_held");
    let db = common::manager(&name, &common::Backend::Postgres.url())?;
    let mut conn = db.connection()?;
    // Kill this session from another: the next statement on it fails once,
    // and is not retried (its session state is gone).
    let pid: i64 = conn
        .query_one("SELECT pg_backend_pid()::int8 AS pid", ())?
        .get("pid")?;
    let admin = common::manager(
        &common::unique_name("rules_admin"),
        &common::Backend::Postgres.admin_url(),
    )?;
    admin.query_one("SELECT pg_terminate_backend(?::int4) AS ok", (pid,))?;
    std::thread::sleep(Duration::from_millis(100));
    let e = conn
        .execute_query("SELECT 1", ())
        .expect_err("session killed");
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    assert_eq!(metric("db_retries_total", &name, None), 0.0);
    drop(conn);
    // The manager's own reads go on (on a new connection).
    db.execute_query("SELECT 1", ())?;
    Ok(())
}

#[test]
fn an_open_breaker_fails_fast_and_says_when_it_probes() -> Result<()> {
    let name = common::unique_name("rules_breaker");
    let db = unreachable(&name, 3)?;
    // Three attempts of one read open it.
    let e = db
        .execute_query("SELECT 1", ())
        .expect_err("nothing listens");
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    assert_eq!(db.pool_status().circuit, CircuitState::Open);
    let started = Instant::now();
    let e = db.execute_query("SELECT 1", ()).expect_err("open");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(e.kind(), ErrorKind::CircuitOpen);
    assert!(!e.is_retryable());
    let text = e.to_string();
    assert!(text.contains("probed again in"), "{text}");
    assert!(
        text.contains("circuit_recovery"),
        "says what sets it: {text}"
    );
    assert!(!text.contains("pw@"), "no password: {text}");
    let h = db.health_check();
    assert_eq!(h.status, dbmanager::Health::Unhealthy);
    assert_eq!(h.circuit, CircuitState::Open);
    assert_eq!(metric("db_circuit_state", &name, None), 2.0);
    assert_eq!(
        metric(
            "db_circuit_transitions_total",
            &name,
            Some("state=\"open\"")
        ),
        1.0
    );
    Ok(())
}
