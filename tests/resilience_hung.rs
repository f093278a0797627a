//! A hung server (SIGSTOP of a private PostgreSQL's postmaster and every
//! backend): each call returns within its own timeout, the circuit breaker
//! opens, calls then fail at once with `CircuitOpen`; after SIGCONT the
//! breaker closes through its probe and work resumes.
//!
//! A private server, and one test in the file: nothing else is frozen.

mod common;

use std::time::{Duration, Instant};

use common::fault::{metric, Frozen, PrivateServer, Tally};
use dbmanager::{CircuitState, ErrorKind, Health, Result};

const QUERY_TIMEOUT: Duration = Duration::from_millis(800);
const RECOVERY: Duration = Duration::from_secs(2);

#[test]
fn a_frozen_server_opens_the_breaker_and_a_probe_closes_it() -> Result<()> {
    let server = PrivateServer::start("postgres");
    let name = common::unique_name("hung");
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
    let frozen = Frozen::tree(server.pid());
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
