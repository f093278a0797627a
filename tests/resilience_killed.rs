//! Connections killed server-side (`pg_terminate_backend` on every pool
//! connection, `KILL` on MariaDB): reads with retry see no error, and the
//! pool replaces the dead connections.
//!
//! Only this test's own connections are killed (found by their server ids),
//! so the shared servers stay usable; one backend at a time all the same.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::fault::{metric, Tally};
use common::Backend;
use dbmanager::{DatabaseManager, Result};

const POOL: u32 = 8;
const THREADS: usize = 8;
const READS: usize = 50;

/// The server id of every pool connection: all of them checked out at once.
fn pool_ids(db: &DatabaseManager, id_sql: &str) -> Result<Vec<i64>> {
    let mut guards = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..POOL {
        let mut c = db.connection()?;
        ids.push(c.query_one(id_sql, ())?.get::<i64>("id")?);
        guards.push(c);
    }
    Ok(ids)
}

/// Kills the session `id` of this backend's server, as its superuser.
fn kill(b: Backend, admin: &DatabaseManager, id: i64) -> Result<()> {
    match b {
        Backend::Postgres => {
            let r = admin.query_one("SELECT pg_terminate_backend(?::int4) AS ok", (id,))?;
            assert!(r.get::<bool>("ok")?, "terminated {id}");
            Ok(())
        }
        Backend::MySql => admin.execute(&format!("KILL {id}"), ()).map(drop),
        other => unreachable!("{other:?} does not run this test"),
    }
}

fn killed_connections_are_replaced_and_reads_retry(b: Backend) -> Result<()> {
    let _alone = common::alone();
    let (label, id_sql) = (b.name(), b.session_id_sql());
    let name = common::unique_name("killed");
    let db = common::manager_with(&name, &b.url(), |c| {
        c.pool_size(POOL)
            .max_overflow(0)
            .acquire_timeout(Duration::from_secs(30))
    })?;
    let admin = common::manager(&common::unique_name("killer"), &b.admin_url())?;
    let ids = pool_ids(&db, id_sql)?;
    let created_before = db.pool_status().connections_created;
    assert_eq!(created_before, u64::from(POOL));
    for id in &ids {
        kill(b, &admin, *id)?;
    }
    // The kills take effect on the server at once, but make sure.
    std::thread::sleep(Duration::from_millis(200));

    let tally = Arc::new(Tally::default());
    let start = Arc::new(Barrier::new(THREADS));
    let began = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let (db, tally, start) = (&db, &tally, &start);
            s.spawn(move || {
                start.wait();
                for i in 0..READS {
                    match db.query_one("SELECT ? + 1 AS n", (i as i64,)) {
                        Ok(r) => {
                            assert_eq!(r.get::<i64>("n").unwrap(), i as i64 + 1);
                            tally.ok();
                        }
                        Err(e) => {
                            eprintln!("{label}: {e}");
                            tally.err(&e);
                        }
                    }
                }
            });
        }
    });
    let after = pool_ids(&db, id_sql)?;
    let status = db.pool_status();
    tally.report(
        &format!("killed/{label}"),
        &format!(
            "killed={} retries={} connections_created_after={} discarded={} took={:.2}s",
            ids.len(),
            metric("db_retries_total", &name, None),
            status.connections_created - created_before,
            status.invalid,
            began.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(
        tally.error_count(),
        0,
        "{label}: reads with retry see no error"
    );
    assert!(
        after.iter().all(|id| !ids.contains(id)),
        "{label}: every killed connection was replaced: before {ids:?}, after {after:?}"
    );
    assert!(status.connections_created - created_before >= u64::from(POOL));
    assert_eq!(status.checked_out, 0);
    Ok(())
}
each_backend!(
    killed_connections_are_replaced_and_reads_retry,
    [Postgres, MySql]
);

/// A connection killed while it sat idle is never handed out: the checkout
/// finds it dead before anything is written to it (with a ping when it sat
/// idle past `validate_after_idle`, else with a look at its socket) and
/// hands out a new one. The statement runs on a held guard, so no retry
/// could hide a dead connection handed out.
fn a_connection_killed_while_idle_is_not_handed_out(b: Backend) -> Result<()> {
    let _alone = common::alone();
    let (label, id_sql) = (b.name(), b.session_id_sql());
    let admin = common::manager(&common::unique_name("killer"), &b.admin_url())?;
    for validate in [Duration::ZERO, Duration::from_secs(30)] {
        let db = common::manager_with(&common::unique_name("idle_killed"), &b.url(), |c| {
            c.pool_size(1).max_overflow(0).validate_after_idle(validate)
        })?;
        let first = db.connection()?.query_one(id_sql, ())?.get::<i64>("id")?;
        kill(b, &admin, first)?;
        // The kill takes effect on the server at once, but make sure.
        std::thread::sleep(Duration::from_millis(200));
        let mut conn = db.connection()?;
        let second = conn.query_one(id_sql, ())?.get::<i64>("id")?;
        assert_ne!(
            second, first,
            "{label}, validate after {validate:?}: a new connection"
        );
        drop(conn);
        let status = db.pool_status();
        assert_eq!(
            status.invalid, 1,
            "{label}, validate after {validate:?}: the dead one was discarded"
        );
        assert_eq!(
            status.connections_created, 2,
            "{label}, validate after {validate:?}"
        );
        assert_eq!(
            status.connections, 1,
            "{label}, validate after {validate:?}"
        );
    }
    Ok(())
}
each_backend!(
    a_connection_killed_while_idle_is_not_handed_out,
    [Postgres, MySql]
);

/// A connection past its maximum lifetime is replaced, not handed out.
#[test]
fn max_lifetime_recycles_connections() -> Result<()> {
    let db = common::manager_with(
        &common::unique_name("lifetime"),
        &Backend::Postgres.url(),
        |b| {
            b.pool_size(1)
                .max_overflow(0)
                .max_lifetime(Some(Duration::from_millis(700)))
        },
    )?;
    let pid = |db: &DatabaseManager| -> Result<i64> {
        db.query_one("SELECT pg_backend_pid()::int8 AS id", ())?
            .get("id")
    };
    let first = pid(&db)?;
    assert_eq!(pid(&db)?, first, "young: reused");
    std::thread::sleep(Duration::from_millis(900));
    let second = pid(&db)?;
    assert_ne!(second, first, "past its lifetime: replaced");
    let status = db.pool_status();
    assert_eq!(status.connections_created, 2);
    assert_eq!(status.invalid, 0, "retired, not counted as broken");
    assert_eq!(status.connections, 1);
    Ok(())
}
