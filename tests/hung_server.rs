//! A server that stops answering (SIGSTOP) must not hang the caller: the
//! watchdog's cancel cannot reach it, so after a grace period the
//! connection's transport is cut and the caller gets `QueryTimeout`; other
//! deadlines keep firing on schedule meanwhile.
//!
//! One test in this file, so nothing runs beside it: stopping MariaDB stops
//! the whole server, and `health_check_all` touches every manager in the
//! process; neither may disturb other tests.

use std::time::{Duration, Instant};

mod common;

use common::{mysql_url, postgres_url, unique_name as unique, Stopped};
use dbmanager::{DatabaseConfig, DatabaseManager, ErrorKind, Result};

fn manager(url: &str) -> Result<DatabaseManager> {
    DatabaseManager::from_config(
        DatabaseConfig::builder(unique("hung"))
            .url(url)
            .pool_size(2)
            .max_overflow(0)
            .connect_timeout(Duration::from_secs(2))
            .acquire_timeout(Duration::from_secs(5))
            .build()?,
    )
}

/// While `stopped` hangs, a PostgreSQL (or other) statement on another
/// server still times out on schedule: the watchdog is not stalled.
fn other_deadlines_fire(other: &DatabaseManager, sql: &str) -> Result<()> {
    for _ in 0..3 {
        let started = Instant::now();
        let err = other
            .execute_query_with_timeout(sql, (), Duration::from_millis(300))
            .expect_err("a long statement elsewhere must still time out");
        assert_eq!(err.kind(), ErrorKind::QueryTimeout, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    }
    Ok(())
}

#[test]
fn hung_servers_do_not_hang_callers() -> Result<()> {
    // --- MariaDB: the whole server stopped.
    let my = manager(&mysql_url())?;
    let pg = manager(&postgres_url())?;
    let sqlite = manager("sqlite::memory:")?;
    my.execute_query("SELECT 1", ())?;
    pg.execute_query("SELECT 1", ())?;
    {
        let _stopped =
            Stopped::new(std::env::var("DBMANAGER_TEST_MYSQL_PID").expect("run with scripts/test"));
        std::thread::scope(|s| -> Result<()> {
            let hung = s.spawn(|| {
                let started = Instant::now();
                let r = my.execute_query_with_timeout("SELECT 1", (), Duration::from_millis(300));
                (r, started.elapsed())
            });
            eprintln!("mariadb stopped; checking other deadlines");
            other_deadlines_fire(&pg, "SELECT pg_sleep(10)")?;
            eprintln!("postgres deadlines fired");
            other_deadlines_fire(
                &sqlite,
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
            )?;
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
        let my_quick = DatabaseManager::from_config(
            DatabaseConfig::builder(unique("hung_health"))
                .url(mysql_url())
                .health_timeout(Duration::from_secs(1))
                .build()?,
        )?;
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
        let _stopped = Stopped::new(pid);
        let started = Instant::now();
        let err = conn
            .execute_query_with_timeout("SELECT 1", (), Duration::from_millis(300))
            .expect_err("a stopped backend cannot answer");
        assert_eq!(err.kind(), ErrorKind::QueryTimeout, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the caller hung for {:?}",
            started.elapsed()
        );
        // Other connections of the same server still work and time out on schedule.
        other_deadlines_fire(&pg, "SELECT pg_sleep(10)")?;
    }
    drop(conn);
    let one: i64 = pg.query_one("SELECT 1 AS one", ())?.get("one")?;
    assert_eq!(one, 1);
    Ok(())
}
