//! The query-timeout watchdog against real servers: statements past their
//! limit are cancelled on the server, the caller gets `QueryTimeout`, the
//! connection is reused or replaced, and the pool tells who holds it.
//!
//! PostgreSQL and MariaDB come from `scripts/test` (their URLs in
//! `DBMANAGER_TEST_POSTGRES_URL` / `DBMANAGER_TEST_MYSQL_URL`); SQLite always
//! runs. A body that holds on several backends runs once per backend
//! (`each_backend!`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{unique_name as unique, Backend};
use dbmanager::{DatabaseConfig, DatabaseManager, ErrorKind, Result};

/// Far above any cancel's latency, far below the statements' own length:
/// proves "cancelled", not "finished".
const PROMPT: Duration = Duration::from_secs(5);

fn manager(url: &str, pool_size: u32, timeout: Option<Duration>) -> Result<DatabaseManager> {
    DatabaseManager::from_config(
        DatabaseConfig::builder(unique("timeouts"))
            .url(url)
            .pool_size(pool_size)
            .max_overflow(0)
            .query_timeout(timeout)
            .acquire_timeout(Duration::from_secs(10))
            .build()?,
    )
}

/// Statements of `marker` still running on the server, seen by an admin.
fn running_on_server(db: &DatabaseManager, marker: &str) -> Result<i64> {
    let sql = match db.backend() {
        dbmanager::BackendKind::Postgres => {
            "SELECT count(*) AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE ? AND pid <> pg_backend_pid()"
        }
        _ => "SELECT count(*) AS n FROM information_schema.PROCESSLIST WHERE INFO LIKE ? AND ID <> CONNECTION_ID()",
    };
    db.query_one(sql, (format!("%{marker}%"),))?.get("n")
}

fn statement_is_cancelled_on_the_server(b: Backend) -> Result<()> {
    let (url, marker_sql) = (b.url(), b.endless_statement());
    let db = manager(&url, 2, Some(Duration::from_secs(30)))?;
    let admin = manager(&url, 1, Some(Duration::from_secs(30)))?;
    db.execute_query("SELECT 1", ())?;
    // On a loaded machine the server may take longer than the watchdog's
    // grace to answer the cancel; the watchdog then cuts the connection
    // (and it is rightly discarded). The clean path must show within a few
    // tries, and every try must keep or discard its connection as its
    // outcome says.
    for attempt in 1..=3 {
        let invalid_before = db.pool_status().invalid;
        let started = Instant::now();
        let err = db
            .execute_query_with_timeout(marker_sql, (), Duration::from_millis(300))
            .expect_err("a ten-second statement must not finish within 300 ms");
        let took = started.elapsed();
        assert_eq!(err.kind(), ErrorKind::QueryTimeout, "{err}");
        assert!(err.is_timeout());
        assert!(took < PROMPT, "returned after {took:?}");
        assert!(
            took >= Duration::from_millis(300),
            "returned before its deadline: {took:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("300 ms") && text.contains("cancelled"),
            "{text}"
        );
        assert_eq!(
            running_on_server(&admin, marker_sql)?,
            0,
            "the statement still runs on the server"
        );
        // The pool carries on: the same connection (proven reusable) or a new one.
        let one: i64 = db.query_one("SELECT 1 AS one", ())?.get("one")?;
        assert_eq!(one, 1);
        let status = db.pool_status();
        assert_eq!(status.checked_out, 0);
        let discarded = status.invalid - invalid_before;
        // What the server answered: its own "cancelled" error proves the
        // cancel hit this statement.
        let server_cancelled = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<dbmanager::Error>())
            .is_some_and(|s| s.kind() == ErrorKind::QueryTimeout);
        if server_cancelled {
            assert_eq!(
                discarded, 0,
                "a cleanly cancelled connection is kept: {status:?}"
            );
            return Ok(());
        }
        assert_eq!(
            discarded, 1,
            "a connection cut after a late cancel is discarded: {status:?}"
        );
        eprintln!("attempt {attempt}: the cancel came late and the connection was cut; again");
    }
    panic!("in three tries the server never answered a cancel within the watchdog's grace");
}

each_backend!(statement_is_cancelled_on_the_server, [Postgres, MySql]);

fn sqlite_statement_is_interrupted(b: Backend) -> Result<()> {
    let place = b.place();
    let db = manager(place.url(), 2, None)?;
    common::times_out_within(PROMPT, "an endless statement must be interrupted", || {
        db.execute_query_with_timeout(b.endless_statement(), (), Duration::from_millis(300))
    });
    let one: i64 = db.query_one("SELECT 1 AS one", ())?.get("one")?;
    assert_eq!(one, 1);
    assert_eq!(db.pool_status().invalid, 0);
    Ok(())
}
each_backend!(sqlite_statement_is_interrupted, [SqliteFile, SqliteMemory]);

/// A statement interrupted at its deadline runs again from its start on the
/// same connection (statements are kept prepared per connection): first
/// endless again, then with a bound that ends it, returning its own rows.
fn an_interrupted_statement_runs_again_from_its_start(b: Backend) -> Result<()> {
    let place = b.place();
    let db = manager(place.url(), 1, None)?;
    let sql = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) \
               SELECT COUNT(*) AS n, MAX(i) AS top FROM c";
    for _ in 0..2 {
        let e = db
            .execute_query_with_timeout(sql, (i64::MAX,), Duration::from_millis(200))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::QueryTimeout, "{e}");
    }
    let row = db.query_one(sql, (10,))?;
    assert_eq!(row.get::<i64>("n")?, 10);
    assert_eq!(row.get::<i64>("top")?, 10);
    assert_eq!(db.pool_status().invalid, 0);
    Ok(())
}
each_backend!(
    an_interrupted_statement_runs_again_from_its_start,
    [SqliteFile, SqliteMemory]
);

/// The configured timeout applies to plain calls, and the error names the
/// variable that sets it.
fn the_configured_timeout_applies_and_is_named(b: Backend) -> Result<()> {
    let place = b.place();
    let url = place.url().to_owned();
    let name = unique("cfg");
    let stem = name.to_uppercase();
    let config = DatabaseConfig::from_lookup(&name, |k| match k {
        k if k == format!("DEVELOPMENT_GLOBAL_{stem}_CONNECTION_STRING") => Some(url.clone()),
        k if k == format!("DEVELOPMENT_GLOBAL_{stem}_TIMEOUT") => Some("0.3".to_owned()),
        _ => None,
    })?;
    assert_eq!(config.query_timeout(), Some(Duration::from_millis(300)));
    let db = DatabaseManager::from_config(config)?;
    let err = db
        .execute_query(b.endless_statement(), ())
        .expect_err("must time out");
    assert_eq!(err.kind(), ErrorKind::QueryTimeout, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("DEVELOPMENT_GLOBAL_{stem}_TIMEOUT")),
        "the message should name the variable: {err}"
    );
    // The guard and a transaction take their own limit.
    let mut conn = db.connection()?;
    conn.set_timeout(Some(Duration::from_secs(20)));
    let short = match db.backend() {
        dbmanager::BackendKind::Postgres => "SELECT pg_sleep(0.6)",
        dbmanager::BackendKind::MySql => "SELECT SLEEP(0.6)",
        _ => "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 300000) SELECT count(*) FROM c",
    };
    if db.backend() != dbmanager::BackendKind::Sqlite {
        // 0.6 s > the configured 0.3 s: only the guard's limit lets it finish.
        conn.execute_query(short, ())?;
    }
    conn.set_timeout(Some(Duration::from_millis(200)));
    let err = conn
        .execute_query(b.endless_statement(), ())
        .expect_err("guard limit");
    assert_eq!(err.kind(), ErrorKind::QueryTimeout);
    Ok(())
}
each_backend!(
    the_configured_timeout_applies_and_is_named,
    [Postgres, MySql, SqliteFile]
);

/// A timeout inside a transaction rolls all of it back, and says so.
fn timeout_rolls_back_the_transaction(b: Backend) -> Result<()> {
    let place = b.place();
    let db = manager(place.url(), 2, Some(Duration::from_secs(30)))?;
    let table = unique("tx_timeout");
    db.execute_batch(&format!(
        "CREATE TABLE {table} (id INTEGER PRIMARY KEY, note VARCHAR(20))"
    ))?;
    let long = b.endless_statement();
    // Closure form: the statement's own limit.
    let err = db
        .transaction(|tx| {
            tx.execute(
                &format!("INSERT INTO {table} (id, note) VALUES (?, ?)"),
                (1, "first"),
            )?;
            tx.execute_query_with_timeout(long, (), Duration::from_millis(300))?;
            tx.execute(
                &format!("INSERT INTO {table} (id, note) VALUES (?, ?)"),
                (2, "second"),
            )
        })
        .expect_err("must time out");
    assert_eq!(err.kind(), ErrorKind::QueryTimeout);
    assert!(err.to_string().contains("rolled back"), "{err}");
    // A closure that swallows the timeout still cannot commit the rest.
    let swallowed = db.transaction(|tx| {
        tx.execute(
            &format!("INSERT INTO {table} (id, note) VALUES (?, ?)"),
            (3, "third"),
        )?;
        let _ = tx.execute_query_with_timeout(long, (), Duration::from_millis(300));
        Ok::<_, dbmanager::Error>(())
    });
    assert_eq!(
        swallowed.expect_err("commit after a timeout").kind(),
        ErrorKind::QueryTimeout
    );
    // Whole-transaction deadline.
    let err = db
        .transaction_with_timeout(Duration::from_millis(400), |tx| {
            tx.execute(
                &format!("INSERT INTO {table} (id, note) VALUES (?, ?)"),
                (4, "fourth"),
            )?;
            tx.execute_query(long, ())
        })
        .expect_err("the transaction deadline must fire");
    assert_eq!(err.kind(), ErrorKind::QueryTimeout);
    let n: i64 = db
        .query_one(&format!("SELECT count(*) AS n FROM {table}"), ())?
        .get("n")?;
    assert_eq!(n, 0, "nothing of a timed-out transaction may remain");
    db.execute_batch(&format!("DROP TABLE {table}"))?;
    Ok(())
}

each_backend!(
    timeout_rolls_back_the_transaction,
    [Postgres, MySql, SqliteFile]
);

/// Many short statements with short limits: none is cancelled by mistake.
fn no_spurious_cancels_among_200_threads(b: Backend) -> Result<()> {
    let (threads, each) = (200, 20);
    let place = b.place();
    let db = manager(place.url(), 8, None)?;
    let failures = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..each {
                    // The limit covers the statement only, not the wait for a connection.
                    if db
                        .execute_query_with_timeout("SELECT 1", (), Duration::from_secs(2))
                        .is_err()
                    {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "spurious cancellations"
    );
    let status = db.pool_status();
    assert_eq!((status.checked_out, status.invalid), (0, 0), "{status:?}");
    Ok(())
}

each_backend!(
    no_spurious_cancels_among_200_threads,
    [Postgres, MySql, SqliteFile]
);

/// Runs `f`, then returns what `tracing` printed (the subscriber is
/// global: the watchdog thread logs leaks).
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    common::logged();
    let out = f();
    (out, common::logged())
}

#[test]
fn a_connection_held_too_long_is_reported_with_its_checkout_site() -> Result<()> {
    let place = Backend::SqliteFile.place();
    let ((), log) = logged(|| {
        let db = DatabaseManager::from_config(
            DatabaseConfig::builder(unique("leaky"))
                .url(place.url())
                .leak_threshold(Some(Duration::from_millis(300)))
                .build()
                .unwrap(),
        )
        .unwrap();
        let mut conn = db.connection().unwrap();
        conn.execute_query("SELECT 42 AS leaked_marker", ())
            .unwrap();
        let waited = Instant::now();
        while db.pool_status().suspected_leaks == 0 {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "no leak reported"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(
            db.pool_status().suspected_leaks,
            1,
            "reported once, not again"
        );
        drop(conn);
    });
    assert!(log.contains("leak threshold"), "{log}");
    assert!(
        log.contains("tests/timeouts.rs:"),
        "the checkout site is named: {log}"
    );
    assert!(
        log.contains("SELECT ? AS leaked_marker"),
        "the last SQL is named, normalised (literals as `?`): {log}"
    );
    Ok(())
}

fn pool_timeout_lists_who_holds_the_pool(b: Backend) -> Result<()> {
    let place = b.place();
    let url = place.url();
    let db = DatabaseManager::from_config(
        DatabaseConfig::builder(unique("exhausted"))
            .url(url)
            .pool_size(2)
            .max_overflow(0)
            .acquire_timeout(Duration::from_secs(10))
            .build()?,
    )?;
    let mut a = db.connection()?;
    a.execute_query("SELECT 1 AS holder_a", ())?;
    let holder = std::thread::Builder::new()
        .name("holder-thread".into())
        .spawn({
            let db = db.clone();
            move || {
                let tx = db.begin().unwrap();
                std::thread::sleep(Duration::from_secs(2));
                drop(tx);
            }
        })
        .unwrap();
    let waited = Instant::now();
    while db.pool_status().checked_out < 2 {
        assert!(waited.elapsed() < PROMPT);
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let err = db
        .connection_timeout(Duration::from_millis(300))
        .expect_err("the pool is exhausted");
    assert!(err.is_pool_exhausted(), "{err}");
    assert!(started.elapsed() < PROMPT);
    let holders = err.pool_holders();
    assert_eq!(holders.len(), 2, "{holders:?}");
    assert!(
        holders
            .iter()
            .all(|h| h.checked_out_at.contains("tests/timeouts.rs:")),
        "{holders:?}"
    );
    assert!(holders
        .iter()
        .any(|h| h.thread.as_deref() == Some("holder-thread") && h.in_transaction));
    assert!(holders
        .iter()
        .any(|h| h.last_sql.as_deref() == Some("SELECT ? AS holder_a") && !h.in_transaction));
    assert!(err.to_string().contains("tests/timeouts.rs:"), "{err}");
    a.execute_query("SELECT 1", ())?;
    drop(a);
    holder.join().unwrap();
    Ok(())
}
each_backend!(
    pool_timeout_lists_who_holds_the_pool,
    [Postgres, MySql, SqliteFile]
);

/// The server enforces a limit too, a little above the client's, so a
/// statement dies even if the client process does; a longer per-call limit
/// raises it for that call.
#[test]
fn the_server_enforces_a_second_limit() -> Result<()> {
    let pg = manager(&Backend::Postgres.url(), 1, Some(Duration::from_secs(2)))?;
    let mut conn = pg.connection()?;
    let shown: String = conn.query_one("SHOW statement_timeout", ())?.get(0)?;
    assert_eq!(shown, "3s", "2 s client limit + 1 s margin");
    let shown: String =
        conn.execute_query_with_timeout("SHOW statement_timeout", (), Duration::from_secs(10))?[0]
            .get(0)?;
    assert_eq!(shown, "11s");
    conn.set_timeout(None);
    let shown: String = conn.query_one("SHOW statement_timeout", ())?.get(0)?;
    assert_eq!(shown, "0", "no limit on the client, none on the server");
    // A limit set inside a rolled-back transaction is undone by the server;
    // the next statement sets it again.
    conn.set_timeout(Some(Duration::from_secs(2)));
    {
        let tx = conn.begin()?;
        drop(tx);
    }
    let mut tx = conn.begin()?;
    tx.execute_query_with_timeout("SELECT 1", (), Duration::from_secs(7))?;
    tx.rollback()?;
    // The rollback put the server back at 3 s; asking for 7 s again must set it.
    let shown: String =
        conn.execute_query_with_timeout("SHOW statement_timeout", (), Duration::from_secs(7))?[0]
            .get(0)?;
    assert_eq!(shown, "8s");
    drop(conn);

    let my = manager(&Backend::MySql.url(), 1, Some(Duration::from_secs(2)))?;
    let limit: f64 = my
        .query_one("SELECT @@max_statement_time AS t", ())?
        .get("t")?;
    assert!((limit - 3.0).abs() < 1e-9, "{limit}");
    Ok(())
}

/// A subscriber that panics on the pipeline's "statement cancelled" event,
/// which is logged between the deadline's registration and the moment the
/// statement is settled: a stand-in for any panic in that stretch.
struct PanicOnCancel;

impl tracing::Subscriber for PanicOnCancel {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        if m.0.contains("cancelled at its deadline") {
            panic!("a panic between arm and settle");
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A panic after a statement's deadline was registered and before it was
/// settled leaves nothing behind: the connection it ran on is discarded,
/// not handed to the next caller in an unknown state.
#[test]
fn a_panic_between_arm_and_settle_discards_the_connection() -> Result<()> {
    let b = Backend::SqliteFile;
    let db = b.open_with(|c| c.pool_size(1).max_overflow(0))?;
    db.execute_query("SELECT 1", ())?;
    assert_eq!(db.pool_status().invalid, 0);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tracing::subscriber::with_default(PanicOnCancel, || {
            db.execute_query_with_timeout(b.endless_statement(), (), Duration::from_millis(50))
        })
    }));
    assert!(unwound.is_err(), "the subscriber panicked");
    let s = db.pool_status();
    assert_eq!((s.invalid, s.checked_out), (1, 0), "discarded: {s:?}");
    // The next caller gets a fresh connection that works.
    db.execute_query("SELECT 1", ())?;
    Ok(())
}

/// Timeouts past what a clock can add (`Duration::MAX`, as a caller may
/// write for "no limit to speak of") are clamped, never a panic.
#[test]
fn huge_timeouts_are_clamped_not_a_panic() -> Result<()> {
    let db = Backend::SqliteFile.open()?;
    let forever = Duration::MAX;
    db.execute_query_with_timeout("SELECT 1", (), forever)?;
    db.execute_with_timeout("CREATE TABLE t (id INTEGER)", (), forever)?;
    db.transaction_with_timeout(forever, |tx| tx.execute("INSERT INTO t VALUES (1)", ()))?;
    let mut conn = db.connection_timeout(forever)?;
    conn.set_timeout(Some(forever));
    conn.execute_query("SELECT 1", ())?;
    conn.transaction_with_timeout(forever, |tx| tx.execute("INSERT INTO t VALUES (2)", ()))?;
    drop(conn);
    let report = db
        .migrator()
        .source(dbmanager::migrate::MigrationSource::embedded(&[(
            "V1__one.sql",
            "CREATE TABLE one (id INTEGER)",
        )]))
        .options(
            dbmanager::migrate::MigrateOptions::default()
                .lock_timeout(forever)
                .statement_timeout(Some(forever)),
        )
        .run()?;
    assert_eq!(report.applied.len(), 1);
    Ok(())
}
