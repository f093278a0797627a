//! Through pgbouncer in transaction pooling mode (a server pool smaller than
//! the client threads): the load runs with no prepared-statement error, a
//! session setting never leaks to other clients, and a timeout really
//! cancels the statement on the server (checked in `pg_stat_activity`
//! through a direct connection). A read-only database changes no shared
//! server session and still refuses hidden writes, and the migration lock
//! excludes another migrator.
//!
//! The migration-lock test holds most of pgbouncer's server connections
//! itself: it takes `common::alone()`, the others `common::shared()`.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::fault::Tally;
use common::Backend;
use dbmanager::migrate::MigrateOptions;
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
    let _beside = common::shared();
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
    let _beside = common::shared();
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
    let _beside = common::shared();
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

fn read_only_through_pgbouncer(name: &str) -> Result<DatabaseManager> {
    common::manager_with(name, &Backend::PgBouncer.url(), |b| {
        b.pgbouncer(true).read_only(true).pool_size(2)
    })
}

/// READ_ONLY through pgbouncer sets nothing on the server connections it
/// shares with other clients: their writes work and they see the default.
#[test]
fn a_read_only_database_changes_no_shared_server_session() -> Result<()> {
    let _beside = common::shared();
    let ro = read_only_through_pgbouncer(&common::unique_name("pgb_ro"))?;
    // Opens connections (at connect, a session SET used to go to whichever
    // server connection pgbouncer picked).
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| ro.query_one("SELECT 1 AS one", ()).expect("reads work"));
        }
    });
    let rw = through_pgbouncer(&common::unique_name("pgb_rw"))?;
    let table = common::unique_name("pgb_rw");
    rw.execute_batch(&format!("CREATE TABLE {table} (id INT)"))?;
    std::thread::scope(|s| {
        for t in 0..4 {
            let (rw, table) = (&rw, &table);
            s.spawn(move || {
                for i in 0..10 {
                    let v: String = rw
                        .query_one("SHOW default_transaction_read_only", ())
                        .and_then(|r| r.get(0))
                        .expect("SHOW answers");
                    assert_eq!(v, "off", "the read-only setting leaked to another client");
                    rw.execute(
                        &format!("INSERT INTO {table} (id) VALUES (?)"),
                        (t * 100 + i,),
                    )
                    .expect("another client's write works");
                }
            });
        }
    });
    rw.execute_batch(&format!("DROP TABLE {table}"))?;
    Ok(())
}

/// READ_ONLY through pgbouncer still has the server refuse the writes the
/// library's keyword check cannot see, on whatever server connection a
/// statement lands: each runs in a read-only transaction.
#[test]
fn a_read_only_database_refuses_hidden_writes_through_pgbouncer() -> Result<()> {
    let _beside = common::shared();
    let rw = through_pgbouncer(&common::unique_name("pgb_rw"))?;
    let table = common::unique_name("pgb_hidden");
    rw.execute_batch(&format!(
        "CREATE TABLE {table} (id INT); \
         CREATE FUNCTION {table}_add() RETURNS int LANGUAGE sql AS \
         $$ INSERT INTO {table} (id) VALUES (99) RETURNING 1 $$"
    ))?;
    let ro = read_only_through_pgbouncer(&common::unique_name("pgb_ro"))?;
    let call = format!("SELECT {table}_add() AS one");
    for round in 0..4 {
        // Another client holds the server connection used last, so the
        // statement lands on another one.
        let mut holder = rw.connection()?;
        holder.execute_batch("BEGIN")?;
        holder.execute_query("SELECT 1", ())?;
        let e = ro
            .execute_query(&call, ())
            .expect_err("the hidden write is refused");
        assert_eq!(e.kind(), ErrorKind::ReadOnly, "round {round}: {e}");
        assert_eq!(e.db_code(), Some("25006"), "refused by the server: {e}");
        drop(holder);
    }
    let e = ro
        .transaction(|tx| tx.execute_query(&call, ()))
        .expect_err("refused in a transaction too");
    assert_eq!(e.db_code(), Some("25006"), "{e}");
    // Reads work, alone, in a script and in a transaction.
    let n: i64 = ro
        .query_one(&format!("SELECT COUNT(*) AS n FROM {table}"), ())?
        .get("n")?;
    assert_eq!(n, 0, "nothing was written");
    ro.execute_batch(&format!("SELECT COUNT(*) FROM {table}; SELECT 1"))?;
    let n: i64 = ro.transaction(|tx| tx.query_one("SELECT 2 AS n", ())?.get("n"))?;
    assert_eq!(n, 2);
    // What could leave the read-only transaction is refused before the server.
    for sql in ["COMMIT", "ROLLBACK", "BEGIN"] {
        let e = ro.execute(sql, ()).expect_err(sql);
        assert_eq!(e.kind(), ErrorKind::ReadOnly, "{sql}: {e}");
        assert_eq!(e.db_code(), None, "{sql}: {e}");
    }
    let e = ro
        .execute_batch(&format!("COMMIT; {call}"))
        .expect_err("a script that could leave the transaction");
    assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
    let n: i64 = rw
        .query_one(&format!("SELECT COUNT(*) AS n FROM {table}"), ())?
        .get("n")?;
    assert_eq!(n, 0, "nothing was written");
    rw.execute_batch(&format!("DROP FUNCTION {table}_add(); DROP TABLE {table}"))?;
    Ok(())
}

/// Through pgbouncer a second migrator waits for the first one, even when
/// its statements land on the server connection the first one used: the
/// lock is not a session's (pgbouncer shares server sessions among
/// clients). pgbouncer's pool for the test user has four server
/// connections; three are held here, so that both migrators share the
/// fourth.
#[test]
fn the_migration_lock_excludes_another_migrator_through_pgbouncer() -> Result<()> {
    let _alone = common::alone();
    let admin = admin()?;
    let dir = common::TempDir::new("dbmanager-pgb-migrations");
    let history = common::unique_name("pgb_history");
    let table = common::unique_name("pgb_migrated");
    let marker = common::unique_name("pgb_migrating");
    for v in 1..=3 {
        std::fs::write(
            dir.path().join(format!("V{v}__step_{v}.sql")),
            format!("SELECT pg_sleep(1) /* {marker} */; CREATE TABLE {table}_{v} (id INT);"),
        )
        .expect("write a migration");
    }
    let migrator = |prefix: &str| {
        common::manager_with(
            &common::unique_name(prefix),
            &Backend::PgBouncer.url(),
            |b| {
                b.pgbouncer(true)
                    .pool_size(2)
                    .migrations_dir(dir.path())
                    .history_table(&history)
            },
        )
    };
    let (a, b) = (migrator("pgb_mig_a")?, migrator("pgb_mig_b")?);
    let pinner = common::manager_with(
        &common::unique_name("pgb_pin"),
        &Backend::PgBouncer.url(),
        |b| b.pgbouncer(true).pool_size(3).max_overflow(0),
    )?;
    let mut pins = Vec::new();
    for _ in 0..3 {
        let mut pin = pinner.connection()?;
        pin.execute_batch("BEGIN")?;
        pin.execute_query("SELECT 1", ())?;
        pins.push(pin);
    }
    let running = || -> Result<i64> {
        admin
            .query_one(
                "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE query LIKE ? AND pid <> pg_backend_pid()",
                (format!("%{marker}%"),),
            )?
            .get("n")
    };
    let outcome = std::thread::scope(|s| -> Result<()> {
        let first = s.spawn(|| a.migrator().run());
        let started = Instant::now();
        while running()? == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the first migrator never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let second = b
            .migrator()
            .options(MigrateOptions::default().lock_timeout(Duration::from_millis(500)))
            .run();
        let report = first.join().expect("no panic")?;
        assert_eq!(report.applied.len(), 3, "{report:?}");
        match second {
            Err(e) => assert_eq!(e.kind(), ErrorKind::LockTimeout, "{e}"),
            Ok(r) => panic!("the second migrator ran beside the first: {r:?}"),
        }
        Ok(())
    });
    drop(pins);
    // Released: the second migrator now finds nothing to do.
    let after = b.migrator().run();
    let mut cleanup =
        format!("DROP TABLE IF EXISTS {history}; DROP TABLE IF EXISTS {history}_lock;");
    for v in 1..=3 {
        cleanup.push_str(&format!(" DROP TABLE IF EXISTS {table}_{v};"));
    }
    admin.execute_batch(&cleanup)?;
    outcome?;
    assert_eq!(after?.applied.len(), 0);
    Ok(())
}
