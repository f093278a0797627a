//! Where retries apply (any call whose failure came before the statement
//! was sent, whole transactions; a statement that may have run only when
//! asked; never on a held connection) and how the breaker answers, against
//! a port nothing listens on, a proxy that refuses connections and a real
//! server.

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
fn failures_before_the_statement_was_sent_are_retried_for_every_call() -> Result<()> {
    let name = common::unique_name("rules");
    let db = unreachable(&name, 0)?;
    let retries = || metric("db_retries_total", &name, None);

    let e = db
        .execute_query("SELECT 1", ())
        .expect_err("nothing listens");
    assert_eq!(e.kind(), ErrorKind::Connect);
    assert!(e.is_retryable());
    assert_eq!(retries(), 2.0, "a read: 3 attempts");

    // No connection could be opened, so the statement never reached a
    // server: running it again cannot run it twice, even a write.
    db.execute("INSERT INTO t VALUES (1)", ())
        .expect_err("nothing listens");
    assert_eq!(retries(), 4.0, "a write that was never sent: retried");

    db.transaction(|tx| tx.execute("INSERT INTO t VALUES (1)", ()))
        .expect_err("nothing listens");
    assert_eq!(retries(), 6.0, "a whole transaction: retried");

    db.with_retry(RetryPolicy::none())
        .execute_query("SELECT 1", ())
        .expect_err("nothing listens");
    assert_eq!(retries(), 6.0, "no retry when told so");
    assert_eq!(db.retry_policy(), db.config().retry_policy());
    Ok(())
}

/// Runs `sql` (a statement that increments the sequence `seq`, then sleeps)
/// and kills its session from another connection while it sleeps, after the
/// increment. Returns the call's result and the sequence's last value.
fn killed_after_the_increment(
    db: &DatabaseManager,
    admin: &DatabaseManager,
    seq: &str,
) -> (Result<Vec<dbmanager::Row>>, i64) {
    let sql = format!("SELECT nextval('{seq}') AS v, pg_sleep(2) AS slept");
    let (result, ()) = std::thread::scope(|s| {
        let call = s.spawn(|| db.execute_query(&sql, ()));
        let waited = Instant::now();
        loop {
            let found = admin
                .query_opt(
                    "SELECT pid::int8 AS pid FROM pg_stat_activity \
                     WHERE query LIKE ? AND state = 'active' AND pid <> pg_backend_pid()",
                    (format!("%nextval('{seq}')%"),),
                )
                .expect("pg_stat_activity");
            if let Some(row) = found {
                let pid: i64 = row.get("pid").expect("pid");
                std::thread::sleep(Duration::from_millis(300));
                admin
                    .query_one("SELECT pg_terminate_backend(?::int4) AS ok", (pid,))
                    .expect("terminate");
                break;
            }
            assert!(waited.elapsed() < Duration::from_secs(10), "never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        (call.join().expect("caller"), ())
    });
    let last: i64 = admin
        .query_one(&format!("SELECT last_value FROM {seq}"), ())
        .and_then(|r| r.get("last_value"))
        .expect("last_value");
    (result, last)
}

#[test]
fn a_statement_that_may_have_run_is_not_run_again_unless_asked() -> Result<()> {
    let _alone = common::alone();
    let name = common::unique_name("rules_nextval");
    let db = common::manager(&name, &common::Backend::Postgres.url())?;
    let admin = common::manager(
        &common::unique_name("rules_nextval_admin"),
        &common::Backend::Postgres.admin_url(),
    )?;
    let seq = common::unique_name("seq");
    db.execute_batch(&format!("CREATE SEQUENCE {seq}"))?;

    // With the default policy (3 attempts), a SELECT that wrote is not run
    // again when its connection is lost after it ran: one increment, and a
    // clear, retryable error for the caller to decide on.
    let (result, last) = killed_after_the_increment(&db, &admin, &seq);
    let e = result.expect_err("the session was killed");
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    assert!(e.is_retryable());
    assert_eq!(last, 1, "exactly one increment");
    assert_eq!(metric("db_retries_total", &name, None), 0.0);

    // Asked for, it is run again.
    let eager = db.with_retry(RetryPolicy::default().retry_writes(true));
    let (result, last) = killed_after_the_increment(&eager, &admin, &seq);
    let rows = result.expect("run again on a new connection");
    assert_eq!(rows[0].get::<i64>("v")?, 3);
    assert_eq!(last, 3, "the second run incremented again, as asked");
    db.execute_batch(&format!("DROP SEQUENCE {seq}"))?;
    Ok(())
}

#[test]
fn failures_a_retry_absorbed_do_not_open_the_breaker() -> Result<()> {
    let name = common::unique_name("rules_absorbed");
    let url = common::Backend::Postgres.url();
    let target: std::net::SocketAddr = {
        let u = url::Url::parse(&url).expect("test URL");
        format!(
            "{}:{}",
            u.host_str().expect("host"),
            u.port().expect("port")
        )
        .parse()
        .expect("address")
    };
    let proxy = common::fault::Proxy::start(target);
    let mut through = url::Url::parse(&url).expect("test URL");
    through.set_port(Some(proxy.port())).expect("port");
    let db = common::manager_with(&name, through.as_str(), |b| {
        b.circuit_failures(2).retry(
            RetryPolicy::default()
                .attempts(3)
                .base_delay(Duration::from_millis(20)),
        )
    })?;
    // Two connections refused, the third let through: the read succeeds on
    // its third attempt, and the two failures it rode out are not counted.
    proxy.refuse_next(2);
    db.execute_query("SELECT 1", ())?;
    assert_eq!(metric("db_retries_total", &name, None), 2.0);
    assert_eq!(db.pool_status().circuit, CircuitState::Closed);
    assert_eq!(
        metric(
            "db_circuit_transitions_total",
            &name,
            Some("state=\"open\"")
        ),
        0.0
    );
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
    assert!(e.is_retryable(), "transient for the caller");
    let text = e.to_string();
    assert!(
        text.contains("probed again in") || text.contains("a probe is checking it now"),
        "{text}"
    );
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
