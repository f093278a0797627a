//! Pool behaviour on real servers: many threads on a small pool, exhaustion,
//! sharing by name, closing, and calls from inside an async runtime.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::Backend;
use dbmanager::{DatabaseManager, ErrorKind, Result};

const THREADS: usize = 32;
const ROUNDS: i64 = 20;

fn many_threads_share_a_small_pool(b: Backend) -> Result<()> {
    let db = b.open_with(|c| {
        c.pool_size(4)
            .max_overflow(0)
            .acquire_timeout(Duration::from_secs(60))
    })?;
    let table = common::unique_name("t");
    db.execute_batch(&format!(
        "CREATE TABLE {table} (thread INTEGER NOT NULL, round INTEGER NOT NULL, PRIMARY KEY (thread, round))"
    ))?;

    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS as i64)
        .map(|thread| {
            let db = db.clone();
            let start = Arc::clone(&start);
            let table = table.clone();
            std::thread::spawn(move || -> Result<i64> {
                start.wait();
                let mut sum = 0;
                for round in 0..ROUNDS {
                    let row = db.query_one("SELECT ? AS n", (thread * 1000 + round,))?;
                    sum += row.get::<i64>("n")?;
                    if round % 4 == 0 {
                        db.transaction(|tx| {
                            tx.execute(
                                &format!("INSERT INTO {table} (thread, round) VALUES (?, ?)"),
                                (thread, round),
                            )
                        })?;
                    } else {
                        db.execute(
                            &format!("INSERT INTO {table} (thread, round) VALUES (:t, :r)"),
                            dbmanager::params! { "t" => thread, "r" => round },
                        )?;
                    }
                    let s = db.pool_status();
                    assert!(s.connections <= 4, "never more than the pool: {s:?}");
                }
                Ok(sum)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().expect("no thread panicked")?;
    }
    let want: i64 = (0..THREADS as i64)
        .map(|t| (0..ROUNDS).map(|r| t * 1000 + r).sum::<i64>())
        .sum();
    assert_eq!(total, want);
    let n: i64 = db
        .query_one(&format!("SELECT COUNT(*) AS n FROM {table}"), ())?
        .get("n")?;
    assert_eq!(n, THREADS as i64 * ROUNDS);

    let s = db.pool_status();
    assert_eq!(s.checked_out, 0, "all idle afterwards: {s:?}");
    assert!(s.connections >= 1 && s.connections <= 4, "{s:?}");
    assert_eq!(s.checked_in, s.connections, "{s:?}");
    assert_eq!(s.timeouts, 0, "{s:?}");
    assert_eq!(s.waiting, 0, "{s:?}");
    assert_eq!((s.pool_size, s.max_overflow, s.max_size), (4, 0, 4));
    db.execute_batch(&format!("DROP TABLE {table}"))?;
    Ok(())
}
each_backend!(
    many_threads_share_a_small_pool,
    [Postgres, MySql, SqliteFile]
);

fn exhaustion_is_a_pool_timeout(b: Backend) -> Result<()> {
    let db = b.open_with(|c| {
        c.pool_size(2)
            .max_overflow(0)
            .acquire_timeout(Duration::from_millis(300))
    })?;
    // Opening them may take longer than the 300 ms under test on a busy
    // machine: wait as long as that takes.
    let first = db.connection_timeout(Duration::from_secs(10))?;
    let second = db.connection_timeout(Duration::from_secs(10))?;
    assert_eq!(db.pool_status().checked_out, 2);

    let started = Instant::now();
    let e = db.connection().expect_err("the pool is exhausted");
    let waited = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::PoolTimeout, "{e}");
    assert!(e.is_pool_exhausted() && e.is_timeout() && e.is_retryable());
    assert!(waited < Duration::from_secs(5), "returned in {waited:?}");
    assert!(
        waited >= Duration::from_millis(250),
        "waited for the timeout: {waited:?}"
    );
    let text = e.to_string();
    assert!(text.contains("POOL_SIZE"), "says what to do: {text}");
    assert_eq!(e.database(), Some(db.name()));

    // A statement on the manager waits for a connection the same way.
    let started = Instant::now();
    let e = db.execute_query("SELECT 1 AS one", ()).unwrap_err();
    assert!(e.is_pool_exhausted(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let s = db.pool_status();
    assert_eq!(
        (s.checked_out, s.connections, s.waiting),
        (2, 2, 0),
        "{s:?}"
    );
    assert!(s.timeouts >= 2, "{s:?}");

    // Returning one makes the next checkout succeed.
    drop(first);
    let mut third = db.connection()?;
    assert_eq!(
        third.query_one("SELECT 1 AS one", ())?.get::<i64>("one")?,
        1
    );
    drop((second, third));
    assert_eq!(db.pool_status().checked_out, 0);
    Ok(())
}
each_backend!(exhaustion_is_a_pool_timeout, [Postgres, MySql, SqliteFile]);

fn close_is_idempotent(b: Backend) -> Result<()> {
    let db = b.open()?;
    let clone = db.clone();
    db.query_one("SELECT 1 AS one", ())?;
    assert!(!db.is_closed());
    assert!(db.close(), "the first close closes");
    assert!(!db.close(), "the second close is a no-op");
    assert!(!clone.close());
    assert!(db.is_closed() && clone.is_closed());

    for e in [
        db.execute_query("SELECT 1 AS one", ()).unwrap_err(),
        clone.execute("SELECT 1 AS one", ()).unwrap_err(),
        db.execute_batch("SELECT 1").unwrap_err(),
        db.connection().unwrap_err(),
        db.begin().unwrap_err(),
        db.transaction(|_| Ok::<_, dbmanager::Error>(()))
            .unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
        assert!(
            e.to_string().contains("DatabaseManager::new"),
            "says what to do: {e}"
        );
    }
    let s = db.pool_status();
    assert_eq!((s.connections, s.checked_out), (0, 0), "{s:?}");
    Ok(())
}
each_backend!(close_is_idempotent, [Postgres, MySql, SqliteFile]);

/// r2d2's checkout variants: `try_connection` never waits and never opens a
/// connection; `connection_timeout` waits as long as asked.
fn checkouts_that_do_not_wait_or_wait_as_asked(b: Backend) -> Result<()> {
    let db = b.open_with(|c| {
        c.pool_size(1)
            .max_overflow(0)
            .acquire_timeout(Duration::from_secs(30))
    })?;
    assert!(
        db.try_connection()?.is_none(),
        "nothing is open yet, and try_connection opens nothing"
    );
    assert_eq!(db.pool_status().connections, 0);
    drop(db.connection()?);
    let mut held = db.try_connection()?.expect("the idle connection");
    held.execute_query("SELECT 1", ())?;
    let started = Instant::now();
    assert!(db.try_connection()?.is_none(), "the only one is held");
    assert!(started.elapsed() < Duration::from_secs(1), "did not wait");

    let started = Instant::now();
    let e = db
        .connection_timeout(Duration::from_millis(200))
        .expect_err("held");
    assert_eq!(e.kind(), ErrorKind::PoolTimeout, "{e}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(10),
        "waited about as asked, not the 30 s acquisition timeout: {waited:?}"
    );
    std::thread::scope(|s| -> Result<()> {
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(held);
        });
        db.connection_timeout(Duration::from_secs(10))?
            .execute_query("SELECT 1", ())?;
        Ok(())
    })
}
each_backend!(
    checkouts_that_do_not_wait_or_wait_as_asked,
    [Postgres, MySql, SqliteFile]
);

/// `DatabaseManager::new` with the same name (however it is spelt) returns
/// the same pool; another name gets another pool.
#[test]
fn new_shares_one_pool_per_name() -> Result<()> {
    let dir = common::TempDir::new("dbmanager-share");
    let stem = common::unique_name("POOLSHARE").to_uppercase();
    let environment = std::env::var("ENVIRONMENT").unwrap_or_else(|_| "development".into());
    let prefix = format!("{}_GLOBAL_", environment.to_uppercase());
    // The tests that set variables give them names no other test uses.
    std::env::set_var(
        format!("{prefix}{stem}_CONNECTION_STRING"),
        dir.sqlite_url("shared.db"),
    );
    std::env::set_var(
        format!("{prefix}{stem}_OTHER_CONNECTION_STRING"),
        dir.sqlite_url("other.db"),
    );

    let name = stem.to_lowercase();
    let a = DatabaseManager::new(&name)?;
    let b = DatabaseManager::new(&name)?;
    assert!(a.same_pool(&b));
    let spelt_differently = DatabaseManager::new(&name.replace('_', "-").to_uppercase())?;
    assert!(a.same_pool(&spelt_differently));
    let other = DatabaseManager::new(&format!("{name}_other"))?;
    assert!(!a.same_pool(&other));

    a.execute_batch("CREATE TABLE shared (x INTEGER)")?;
    b.execute("INSERT INTO shared (x) VALUES (?)", (7,))?;
    let x: i64 = a.query_one("SELECT x FROM shared", ())?.get("x")?;
    assert_eq!(x, 7);
    assert_eq!(
        a.pool_status().connections_created,
        b.pool_status().connections_created
    );

    // Closed, the name is free again: new() opens a fresh pool.
    assert!(a.close());
    assert!(b.is_closed());
    let c = DatabaseManager::new(&name)?;
    assert!(!c.same_pool(&a));
    assert!(!c.is_closed());
    assert_eq!(c.query_one("SELECT x FROM shared", ())?.get::<i64>("x")?, 7);
    c.close();
    other.close();
    Ok(())
}

/// `DatabaseManager::new` of one name runs its auto-migration without
/// holding up `new` of another name; a second caller of the same name
/// waits for it and gets the same manager, and the migration runs once.
/// The migration is held on a PostgreSQL table lock the test owns.
#[test]
fn auto_migration_of_one_name_does_not_hold_up_another() -> Result<()> {
    let t = common::unique_name("gate");
    let pg = Backend::Postgres.url();
    let admin = common::manager(&common::unique_name("gate_admin"), &pg)?;
    admin.execute_batch(&format!(
        "CREATE TABLE {t}_gate (id INTEGER); CREATE TABLE {t}_runs (n INTEGER)"
    ))?;
    let dir = common::TempDir::new("dbmanager-gate");
    std::fs::write(
        dir.path().join("V1__wait_for_the_gate.sql"),
        format!("INSERT INTO {t}_runs (n) SELECT COUNT(*) FROM {t}_gate;\n"),
    )
    .expect("write the migration");

    let environment = std::env::var("ENVIRONMENT").unwrap_or_else(|_| "development".into());
    let prefix = format!("{}_GLOBAL_", environment.to_uppercase());
    let slow = common::unique_name("MIGRATING").to_uppercase();
    let quick = common::unique_name("QUICK").to_uppercase();
    for (var, value) in [
        (format!("{prefix}{slow}_CONNECTION_STRING"), pg.clone()),
        (format!("{prefix}{slow}_AUTO_MIGRATE"), "true".to_owned()),
        (
            format!("{prefix}{slow}_MIGRATIONS_DIR"),
            dir.path().display().to_string(),
        ),
        (
            format!("{prefix}{slow}_MIGRATIONS_TABLE"),
            format!("{t}_hist"),
        ),
        (
            format!("{prefix}{quick}_CONNECTION_STRING"),
            "sqlite::memory:".to_owned(),
        ),
    ] {
        std::env::set_var(var, value);
    }

    // The gate: the migration's SELECT waits for this lock.
    let mut gate = admin.begin()?;
    gate.execute_batch(&format!("LOCK TABLE {t}_gate IN ACCESS EXCLUSIVE MODE"))?;
    let slow_name = slow.to_lowercase();
    let first = {
        let name = slow_name.clone();
        std::thread::spawn(move || DatabaseManager::new(&name))
    };
    // Wait until the migration is blocked on the gate.
    let waiting_sql = format!(
        "SELECT COUNT(*) AS n FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
         WHERE c.relname = '{t}_gate' AND NOT l.granted"
    );
    let started = Instant::now();
    while admin.query_one(&waiting_sql, ())?.get::<i64>("n")? == 0 {
        assert!(
            !first.is_finished(),
            "the migration ended before reaching the gate: {:?}",
            first.join().map(|r| r.map(|_| ()))
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the migration never reached the gate"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = {
        let name = slow_name.clone();
        std::thread::spawn(move || DatabaseManager::new(&name))
    };

    // Another name answers at once, while the migration is held.
    let (tx, rx) = std::sync::mpsc::channel();
    let quick_name = quick.to_lowercase();
    std::thread::spawn(move || {
        let _ = tx.send(DatabaseManager::new(&quick_name));
    });
    let other = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("DatabaseManager::new of another name waited for this name's migration")?;
    assert_eq!(
        other.query_one("SELECT 1 AS one", ())?.get::<i64>("one")?,
        1
    );
    assert!(!first.is_finished(), "the migration is still held");
    assert!(
        !second.is_finished(),
        "the same name waits for the migration in progress"
    );

    // Open the gate: both callers of the name get one manager, migrated once.
    gate.rollback()?;
    let a = first.join().expect("no panic")?;
    let b = second.join().expect("no panic")?;
    assert!(a.same_pool(&b), "one manager for one name");
    let runs: i64 = admin
        .query_one(&format!("SELECT COUNT(*) AS n FROM {t}_runs"), ())?
        .get("n")?;
    assert_eq!(runs, 1, "the migration ran once");

    a.close();
    other.close();
    admin.execute_batch(&format!(
        "DROP TABLE {t}_gate; DROP TABLE {t}_runs; DROP TABLE IF EXISTS {t}_hist"
    ))?;
    Ok(())
}

/// The PostgreSQL client cannot block inside an async runtime: the call
/// returns `AsyncContext` instead of panicking, and dropping a manager
/// there does not panic either.
#[test]
fn postgres_inside_a_tokio_runtime_is_an_error_not_a_panic() -> Result<()> {
    let db = Backend::Postgres.open()?;
    db.query_one("SELECT 1 AS one", ())?; // one idle connection in the pool
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");

    let outcome = catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(async {
            let kinds = [
                db.execute_query("SELECT 1 AS one", ()).map(drop),
                db.execute("SELECT 1", ()).map(drop),
                db.connection().map(drop),
                db.begin().map(drop),
                db.transaction(|_| Ok::<_, dbmanager::Error>(())),
            ]
            .map(|r| r.map_err(|e| (e.kind(), e.to_string())));
            let fresh = Backend::Postgres
                .place()
                .manager("async")
                .and_then(|m| m.execute_query("SELECT 1", ()))
                .map(drop)
                .map_err(|e| (e.kind(), e.to_string()));
            (kinds, fresh)
        })
    }));
    let (kinds, fresh) = outcome.expect("no panic inside the runtime");
    for r in kinds.into_iter().chain([fresh]) {
        let (kind, text) = r.expect_err("refused inside the runtime");
        assert_eq!(kind, ErrorKind::AsyncContext, "{text}");
        assert!(text.contains("spawn_blocking"), "says what to do: {text}");
    }

    // Outside the runtime the same manager works, and its pool is intact.
    assert_eq!(db.query_one("SELECT 1 AS one", ())?.get::<i64>("one")?, 1);
    assert_eq!(db.pool_status().checked_out, 0);

    // Dropping the last handle (and its open connection) inside the runtime.
    let dropped = catch_unwind(AssertUnwindSafe(|| rt.block_on(async move { drop(db) })));
    assert!(
        dropped.is_ok(),
        "dropping inside the runtime does not panic"
    );
    Ok(())
}

/// SQLite has no such restriction: it works inside a runtime.
#[test]
fn sqlite_works_inside_a_tokio_runtime() -> Result<()> {
    let db = Backend::SqliteMemory.open()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let one: i64 = rt.block_on(async { db.query_one("SELECT 1 AS one", ())?.get("one") })?;
    assert_eq!(one, 1);
    Ok(())
}

/// The pool's holder record names the latest checkout of a connection:
/// the one connection of the pool, checked out again and again from one
/// place on one thread, then from another place on another thread, then
/// from the first place again, is reported where and by whom it is held.
fn the_holder_is_the_latest_checkout(b: Backend) -> Result<()> {
    // Each look at the holders is a pool timeout; the breaker, which
    // counts those, is off.
    let db = b.open_with(|c| c.pool_size(1).max_overflow(0).circuit_failures(0))?;
    let holder_of = |db: &DatabaseManager| {
        let e = db
            .connection_timeout(Duration::from_millis(50))
            .expect_err("the only connection is held");
        assert_eq!(e.kind(), ErrorKind::PoolTimeout, "{e}");
        let holders = e.pool_holders();
        assert_eq!(holders.len(), 1, "{holders:?}");
        holders[0].clone()
    };
    // One place in the code, checked out from in a loop.
    let here = |db: &DatabaseManager| Ok::<_, dbmanager::Error>((db.connection()?, line!()));
    let me = std::thread::current().name().map(str::to_owned);
    for round in 0..3 {
        for _ in 0..3 {
            drop(here(&db)?);
        }
        let (held, line) = here(&db)?;
        let h = holder_of(&db);
        assert!(
            h.checked_out_at.contains(&format!("tests/pool.rs:{line}:")),
            "round {round}: {h:?}"
        );
        assert_eq!(h.thread, me, "round {round}: {h:?}");
        drop(held);

        // Another place, on another thread.
        std::thread::Builder::new()
            .name(format!("second-holder-{round}"))
            .spawn({
                let db = db.clone();
                move || -> Result<()> {
                    let (held, line) = (db.connection()?, line!());
                    let h = holder_of(&db);
                    assert!(
                        h.checked_out_at.contains(&format!("tests/pool.rs:{line}:")),
                        "{h:?}"
                    );
                    assert_eq!(h.thread, Some(format!("second-holder-{round}")), "{h:?}");
                    drop(held);
                    Ok(())
                }
            })
            .expect("a thread")
            .join()
            .expect("the second holder's thread")?;
    }
    Ok(())
}
each_backend!(the_holder_is_the_latest_checkout, [SqliteFile]);
