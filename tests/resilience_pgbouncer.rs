//! Through pgbouncer in transaction pooling mode (a server pool smaller than
//! the client threads): the load runs with no prepared-statement error, a
//! session setting never leaks to other clients, and a timeout really
//! cancels the statement on the server (checked in `pg_stat_activity`
//! through a direct connection).

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::fault::Tally;
use common::Backend;
use dbmanager::{DatabaseManager, ErrorKind, Result};

fn admin() -> Result<DatabaseManager> {
    common::manager(
        &common::unique_name("pgb_admin"),
        &Backend::Postgres.admin_url(),
    )
}

fn through_pgbouncer(name: &str) -> Result<DatabaseManager> {
    common::manager_with(name, &Backend::PgBouncer.url(), |b| {
        b.pgbouncer(true)
            .pool_size(8)
            .max_overflow(0)
            .acquire_timeout(Duration::from_secs(60))
    })
}

const THREADS: usize = 64;
const CYCLES: i64 = 100;

#[test]
fn load_through_pgbouncer_has_no_prepared_statement_errors() -> Result<()> {
    let db = through_pgbouncer(&common::unique_name("pgb_load"))?;
    let table = common::unique_name("pgb");
    db.execute_batch(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, thread INT NOT NULL, payload TEXT NOT NULL, \
         amount NUMERIC(10, 2), at TIMESTAMPTZ, raw BYTEA, flag BOOLEAN)"
    ))?;
    let tally = Arc::new(Tally::default());
    let start = Arc::new(Barrier::new(THREADS));
    let prepared_errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let began = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS as i64 {
            let (db, tally, start, table, prepared_errors) =
                (&db, &tally, &start, &table, &prepared_errors);
            s.spawn(move || {
                start.wait();
                for i in 0..CYCLES {
                    let id = t * 1_000_000 + i;
                    let results: [Result<()>; 3] = [
                        db.execute(
                            &format!(
                                "INSERT INTO {table} (id, thread, payload, amount, at, raw, flag) \
                                 VALUES (?, ?, ?, ?, ?, ?, ?)"
                            ),
                            (
                                id,
                                t,
                                format!("row {id}"),
                                "12.50",
                                chrono::Utc::now(),
                                vec![0u8, 1, 255],
                                i % 2 == 0,
                            ),
                        )
                        .map(drop),
                        db.query_one(
                            &format!(
                                "SELECT payload, amount, raw, flag FROM {table} WHERE id = :id"
                            ),
                            dbmanager::params! { "id" => id },
                        )
                        .and_then(|r| {
                            assert_eq!(r.get::<String>("payload")?, format!("row {id}"));
                            assert_eq!(r.get::<Vec<u8>>("raw")?, vec![0u8, 1, 255]);
                            assert_eq!(r.get::<bool>("flag")?, i % 2 == 0);
                            Ok(())
                        }),
                        db.transaction(|tx| {
                            tx.execute(
                                &format!(
                                    "UPDATE {table} SET payload = payload || '!' WHERE id = ?"
                                ),
                                (id,),
                            )?;
                            let n: i64 = tx
                                .query_one(
                                    &format!("SELECT COUNT(*) AS n FROM {table} WHERE thread = ?"),
                                    (t,),
                                )?
                                .get("n")?;
                            assert_eq!(n, i + 1);
                            Ok::<_, dbmanager::Error>(())
                        }),
                    ];
                    for r in results {
                        match r {
                            Ok(()) => tally.ok(),
                            Err(e) => {
                                if e.to_string().contains("prepared statement") {
                                    prepared_errors
                                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                eprintln!("pgbouncer load: {e}");
                                tally.err(&e);
                            }
                        }
                    }
                }
            });
        }
    });
    let n: i64 = db
        .query_one(
            &format!("SELECT COUNT(*) AS n FROM {table} WHERE payload LIKE 'row %!'"),
            (),
        )?
        .get("n")?;
    tally.report(
        "pgbouncer/load",
        &format!(
            "client_threads={THREADS} pgbouncer_server_pool=4 prepared_statement_errors={} rows={n} took={:.1}s",
            prepared_errors.load(std::sync::atomic::Ordering::Relaxed),
            began.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(tally.error_count(), 0);
    assert_eq!(n, THREADS as i64 * CYCLES, "every row written and updated");
    assert_eq!(db.pool_status().checked_out, 0);
    db.execute_batch(&format!("DROP TABLE {table}"))?;
    Ok(())
}

#[test]
fn a_timeout_through_pgbouncer_cancels_on_the_server_and_leaks_no_setting() -> Result<()> {
    let db = through_pgbouncer(&common::unique_name("pgb_cancel"))?;
    let admin = admin()?;
    let marker = common::unique_name("pgb_marker");
    let sql = format!("SELECT pg_sleep(30) /* {marker} */");
    let active = || -> Result<i64> {
        admin
            .query_one(
                "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE ?",
                (format!("%{marker}%"),),
            )?
            .get("n")
    };
    for (label, limit) in [("statement", None), ("transaction", Some(()))] {
        let started = Instant::now();
        let err = match limit {
            None => db
                .execute_query_with_timeout(&sql, (), Duration::from_millis(500))
                .expect_err("times out"),
            Some(()) => db
                .transaction_with_timeout(Duration::from_millis(500), |tx| {
                    tx.execute_query(&sql, ()).map(drop)
                })
                .expect_err("times out"),
        };
        assert_eq!(err.kind(), ErrorKind::QueryTimeout, "{err}");
        let returned = started.elapsed();
        // The server stops the statement: gone from pg_stat_activity soon.
        let mut gone = None;
        while started.elapsed() < Duration::from_secs(10) {
            if active()? == 0 {
                gone = Some(started.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "SCENARIO pgbouncer/cancel ({label}): QueryTimeout after {:.2}s; server-side statement gone after {:.2}s",
            returned.as_secs_f64(),
            gone.map_or(f64::NAN, |g| g.as_secs_f64())
        );
        assert!(gone.is_some(), "the statement still runs on the server");
    }
    // Through pgbouncer the library never set a session statement_timeout:
    // every server connection, whoever gets it, still has the default.
    let other = common::manager_with(
        &common::unique_name("pgb_other"),
        &Backend::PgBouncer.url(),
        |b| b.pgbouncer(true).query_timeout(None),
    )?;
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..10 {
                    let v: String = other
                        .query_one("SHOW statement_timeout", ())
                        .and_then(|r| r.get("statement_timeout"))
                        .expect("SHOW answers");
                    assert_eq!(v, "0", "a session setting leaked through pgbouncer");
                }
            });
        }
    });
    // And the connection that timed out is not reused in an unknown state.
    let one: i64 = db.query_one("SELECT 1 AS one", ())?.get("one")?;
    assert_eq!(one, 1);
    Ok(())
}

/// `pgbouncer=true` in the URL turns the mode on too (and is not sent to
/// the server as a startup parameter).
#[test]
fn the_url_option_turns_pgbouncer_mode_on() -> Result<()> {
    let url = format!("{}?pgbouncer=true", Backend::PgBouncer.url());
    let db = common::manager(&common::unique_name("pgb_url"), &url)?;
    assert!(db.config().pgbouncer());
    assert!(!db
        .config()
        .redacted_url()
        .contains(&common::password_of(&url).unwrap()));
    let n: i64 = db.query_one("SELECT ?::int8 + 1 AS n", (41,))?.get("n")?;
    assert_eq!(n, 42);
    Ok(())
}
