//! Load: many threads of mixed statements on a small pool, per backend
//! (PostgreSQL, MariaDB, an SQLite file): no error, no leaked connection,
//! every row written read back.
//!
//! One test per backend, taking the file's lock so that they run one after
//! another: three loads of 64 threads side by side would only measure the
//! machine.
//!
//! `DBMANAGER_LOAD_STATEMENTS` sets the statements per thread (default
//! 2,000: about 40 s per backend in a debug build on two cores).

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::fault::Tally;
use common::Backend;
use dbmanager::{DatabaseManager, Result};

const THREADS: usize = 64;
const POOL: u32 = 8;
const DEFAULT_STATEMENTS: u64 = 2_000;

fn statements_per_thread() -> u64 {
    std::env::var("DBMANAGER_LOAD_STATEMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_STATEMENTS)
}

/// Runs the mixed load on `db`; returns the report line's numbers.
fn load(label: &'static str, db: &DatabaseManager) -> Result<()> {
    let per_thread = statements_per_thread();
    let table = common::unique_name("load");
    db.execute_batch(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, thread INTEGER NOT NULL, payload VARCHAR(64) NOT NULL, hits INTEGER NOT NULL)"
    ))?;
    db.execute_batch(&format!("CREATE INDEX {table}_thread ON {table} (thread)"))?;
    let tally = Arc::new(Tally::default());
    let start = Arc::new(Barrier::new(THREADS));
    let began = Instant::now();
    let handles: Vec<_> = (0..THREADS as i64)
        .map(|t| {
            let (db, tally, start, table) =
                (db.clone(), tally.clone(), start.clone(), table.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut written = 0i64;
                let mut done = 0u64;
                let mut cycle = 0u64;
                while done < per_thread {
                    // A cycle of five statements: insert, read back, update,
                    // a two-statement transaction, an aggregate.
                    let id = t * 1_000_000 + written;
                    let step = cycle % 5;
                    cycle += 1;
                    let r: Result<()> = match step {
                        0 => db
                            .execute(
                                &format!(
                                    "INSERT INTO {table} (id, thread, payload, hits) VALUES (?, ?, ?, 0)"
                                ),
                                (id, t, format!("row {id}")),
                            )
                            .map(|n| {
                                assert_eq!(n, 1);
                                written += 1;
                            }),
                        1 => db
                            .query_one(
                                &format!("SELECT payload FROM {table} WHERE id = ?"),
                                (id - 1,),
                            )
                            .and_then(|r| r.get::<String>("payload"))
                            .map(|p| assert_eq!(p, format!("row {}", id - 1))),
                        2 => db
                            .execute(
                                &format!("UPDATE {table} SET hits = hits + 1 WHERE id = ?"),
                                (id - 1,),
                            )
                            .map(|n| assert_eq!(n, 1)),
                        3 => db.transaction(|tx| {
                            tx.execute(
                                &format!(
                                    "INSERT INTO {table} (id, thread, payload, hits) VALUES (?, ?, ?, 1)"
                                ),
                                (id, t, format!("row {id}")),
                            )?;
                            let n: i64 = tx
                                .query_one(
                                    &format!(
                                        "SELECT COUNT(*) AS n FROM {table} WHERE thread = ?"
                                    ),
                                    (t,),
                                )?
                                .get("n")?;
                            assert_eq!(n, written + 1);
                            Ok::<_, dbmanager::Error>(())
                        })
                        .map(|()| written += 1),
                        _ => db
                            .query_one(
                                &format!(
                                    "SELECT COUNT(*) AS n, SUM(hits) AS h FROM {table} WHERE thread = ?"
                                ),
                                (t,),
                            )
                            .and_then(|r| r.get::<i64>("n"))
                            .map(|n| assert_eq!(n, written)),
                    };
                    match r {
                        Ok(()) => tally.ok(),
                        Err(e) => {
                            eprintln!("{label} thread {t}: {e}");
                            tally.err(&e);
                        }
                    }
                    done += if step == 3 { 2 } else { 1 };
                }
                written
            })
        })
        .collect();
    let mut expected = 0i64;
    for h in handles {
        expected += h.join().expect("no thread panicked");
    }
    let took = began.elapsed();

    // Every row written is read back, with its content.
    let rows = db.execute_query(
        &format!("SELECT id, thread, payload FROM {table} ORDER BY id"),
        (),
    )?;
    assert_eq!(rows.len() as i64, expected, "{label}: rows written vs read");
    for r in &rows {
        let id: i64 = r.get("id")?;
        assert_eq!(r.get::<String>("payload")?, format!("row {id}"));
        assert_eq!(r.get::<i64>("thread")?, id / 1_000_000);
    }
    let pool = db.pool_status();
    tally.report(
        &format!("load/{label}"),
        &format!(
            "threads={THREADS} statements_per_thread={per_thread} pool={POOL} rows={expected} \
             took={:.1}s rate={:.0}/s checked_out_at_end={} connections_created={}",
            took.as_secs_f64(),
            tally.requests.load(std::sync::atomic::Ordering::Relaxed) as f64 / took.as_secs_f64(),
            pool.checked_out,
            pool.connections_created
        ),
    );
    assert_eq!(tally.error_count(), 0, "{label}: no errors under load");
    assert_eq!(
        pool.checked_out, 0,
        "{label}: every connection back in the pool"
    );
    assert_eq!(pool.waiting, 0);
    db.execute_batch(&format!("DROP TABLE {table}"))?;
    Ok(())
}

fn sixty_four_threads_of_mixed_statements_on_a_pool_of_eight(b: Backend) -> Result<()> {
    let _alone = common::alone();
    let db = b.open_with(|c| {
        c.pool_size(POOL)
            .max_overflow(0)
            .acquire_timeout(Duration::from_secs(120))
            .slow_query_threshold(None)
    })?;
    load(b.name(), &db)
}
each_backend!(
    sixty_four_threads_of_mixed_statements_on_a_pool_of_eight,
    [Postgres, MySql, SqliteFile]
);
