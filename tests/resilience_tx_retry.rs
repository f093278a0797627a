//! Whole transactions are retried on transient conflicts: two threads
//! provoke a serialization failure (PostgreSQL SERIALIZABLE, write skew) or
//! a deadlock (MariaDB, rows locked in opposite orders); with retry on,
//! both closures complete and the final state is consistent.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use common::fault::metric;
use common::Backend;
use dbmanager::{DatabaseManager, ErrorKind, Result, RetryPolicy};

fn manager(url: &str, name: &str) -> Result<DatabaseManager> {
    common::manager_with(name, url, |b| {
        b.pool_size(4).retry(RetryPolicy::default().attempts(5))
    })
}

/// PostgreSQL write skew: each transaction counts the other group's rows
/// and inserts into its own group; under SERIALIZABLE one must fail with
/// 40001 and, retried, sees the other's row.
fn postgres() -> Result<()> {
    let name = common::unique_name("txretry_pg");
    let db = manager(&Backend::Postgres.url(), &name)?;
    let table = common::unique_name("skew");
    db.execute_batch(&format!(
        "CREATE TABLE {table} (grp INT NOT NULL, seen BIGINT NOT NULL)"
    ))?;
    let barrier = Barrier::new(2);
    let attempts = [AtomicU32::new(0), AtomicU32::new(0)];
    std::thread::scope(|s| {
        let runs: Vec<_> = [(1, 2), (2, 1)]
            .into_iter()
            .enumerate()
            .map(|(i, (mine, other))| {
                let (db, barrier, attempts, table) = (&db, &barrier, &attempts, &table);
                s.spawn(move || {
                    db.transaction(|tx| {
                        let n = attempts[i].fetch_add(1, Ordering::SeqCst);
                        tx.execute_batch("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")?;
                        let seen: i64 = tx
                            .query_one(
                                &format!("SELECT COUNT(*) AS c FROM {table} WHERE grp = ?"),
                                (other,),
                            )?
                            .get("c")?;
                        if n == 0 {
                            // Both have read before either writes.
                            barrier.wait();
                        }
                        tx.execute(
                            &format!("INSERT INTO {table} (grp, seen) VALUES (?, ?)"),
                            (mine, seen),
                        )?;
                        Ok::<_, dbmanager::Error>(seen)
                    })
                })
            })
            .collect();
        for r in runs {
            r.join()
                .expect("no panic")
                .expect("both transactions complete");
        }
    });
    let rows = db.execute_query(&format!("SELECT grp, seen FROM {table} ORDER BY grp"), ())?;
    let seen: Vec<i64> = rows.iter().map(|r| r.get("seen")).collect::<Result<_>>()?;
    let tries = [0, 1].map(|i| attempts[i].load(Ordering::SeqCst));
    let retries = metric("db_retries_total", &name, None);
    eprintln!(
        "SCENARIO tx_retry/postgres: both committed; attempts per thread={tries:?} retries={retries} seen={seen:?}"
    );
    assert_eq!(rows.len(), 2, "each transaction inserted exactly one row");
    // Serializable: one of them ran after the other and saw its row.
    assert_eq!(seen.iter().sum::<i64>(), 1, "{seen:?}");
    assert!(tries.iter().sum::<u32>() >= 3, "one was retried: {tries:?}");
    assert!(retries >= 1.0);
    Ok(())
}

/// MariaDB deadlock: each transaction updates one row, waits for the
/// other, then updates the other's row. InnoDB kills one (1213); retried,
/// it completes after the winner, and both rows end up incremented twice.
fn mariadb() -> Result<()> {
    let name = common::unique_name("txretry_my");
    let db = manager(&Backend::MySql.url(), &name)?;
    let table = common::unique_name("dl");
    db.execute_batch(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB; \
         INSERT INTO {table} VALUES (1, 0), (2, 0)"
    ))?;
    let barrier = Barrier::new(2);
    let attempts = [AtomicU32::new(0), AtomicU32::new(0)];
    let errors_seen = AtomicU32::new(0);
    std::thread::scope(|s| {
        let runs: Vec<_> = [(1, 2), (2, 1)]
            .into_iter()
            .enumerate()
            .map(|(i, (first, second))| {
                let (db, barrier, attempts, table, errors_seen) =
                    (&db, &barrier, &attempts, &table, &errors_seen);
                s.spawn(move || {
                    db.transaction(|tx| {
                        let n = attempts[i].fetch_add(1, Ordering::SeqCst);
                        tx.set_timeout(Some(Duration::from_secs(20)));
                        let up = format!("UPDATE {table} SET n = n + 1 WHERE id = ?");
                        tx.execute(&up, (first,))?;
                        if n == 0 {
                            barrier.wait();
                        }
                        tx.execute(&up, (second,)).inspect_err(|e| {
                            if e.kind() == ErrorKind::Conflict {
                                errors_seen.fetch_add(1, Ordering::SeqCst);
                            }
                        })?;
                        Ok::<_, dbmanager::Error>(())
                    })
                })
            })
            .collect();
        for r in runs {
            r.join()
                .expect("no panic")
                .expect("both transactions complete");
        }
    });
    let rows = db.execute_query(&format!("SELECT id, n FROM {table} ORDER BY id"), ())?;
    let n: Vec<i64> = rows.iter().map(|r| r.get("n")).collect::<Result<_>>()?;
    let tries = [0, 1].map(|i| attempts[i].load(Ordering::SeqCst));
    let retries = metric("db_retries_total", &name, None);
    eprintln!(
        "SCENARIO tx_retry/mariadb: both committed; deadlocks={} attempts per thread={tries:?} retries={retries} final={n:?}",
        errors_seen.load(Ordering::SeqCst)
    );
    assert_eq!(n, vec![2, 2], "both increments of both rows, once each");
    assert!(
        errors_seen.load(Ordering::SeqCst) >= 1,
        "a deadlock happened"
    );
    assert!(tries.iter().sum::<u32>() >= 3, "{tries:?}");
    assert!(retries >= 1.0);
    Ok(())
}

/// Each server's own conflict: write skew on PostgreSQL, a deadlock on
/// MariaDB.
fn conflicting_transactions_are_retried_whole_and_both_complete(b: Backend) -> Result<()> {
    match b {
        Backend::Postgres => postgres(),
        Backend::MySql => mariadb(),
        other => unreachable!("{other:?} does not run this test"),
    }
}
each_backend!(
    conflicting_transactions_are_retried_whole_and_both_complete,
    [Postgres, MySql]
);

/// Without retry the same conflict reaches the caller as a retryable error.
#[test]
fn without_retry_the_conflict_is_reported_retryable() -> Result<()> {
    let db = manager(&Backend::MySql.url(), &common::unique_name("txnoretry"))?;
    let db = db.with_retry(RetryPolicy::none());
    let table = common::unique_name("dl1");
    db.execute_batch(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB; \
         INSERT INTO {table} VALUES (1, 0), (2, 0)"
    ))?;
    let barrier = Barrier::new(2);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let runs: Vec<_> = [(1, 2), (2, 1)]
            .into_iter()
            .map(|(first, second)| {
                let (db, barrier, table) = (&db, &barrier, &table);
                s.spawn(move || {
                    db.transaction(|tx| {
                        let up = format!("UPDATE {table} SET n = n + 1 WHERE id = ?");
                        tx.execute(&up, (first,))?;
                        barrier.wait();
                        tx.execute(&up, (second,))?;
                        Ok(())
                    })
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("no panic"))
            .collect()
    });
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(failed.len(), 1, "{results:?}");
    assert_eq!(failed[0].kind(), ErrorKind::Conflict);
    assert_eq!(failed[0].db_code(), Some("1213"));
    assert!(failed[0].is_retryable());
    Ok(())
}

/// A caller that goes on after a deadlock inside a transaction (it caught
/// the error) must not get half a transaction: MariaDB rolled the whole
/// transaction back, so later statements would commit on their own. They
/// are refused, and the commit returns the deadlock.
#[test]
fn a_transaction_a_deadlock_ended_is_never_committed() -> Result<()> {
    let db = manager(&Backend::MySql.url(), &common::unique_name("txended"))?;
    let table = common::unique_name("dl2");
    db.execute_batch(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB; \
         INSERT INTO {table} VALUES (1, 0), (2, 0)"
    ))?;
    let barrier = Barrier::new(2);
    let outcomes: Vec<(bool, Result<()>)> = std::thread::scope(|s| {
        let runs: Vec<_> = [(1, 2, 10), (2, 1, 20)]
            .into_iter()
            .map(|(first, second, marker)| {
                let (db, barrier, table) = (&db, &barrier, &table);
                s.spawn(move || -> (bool, Result<()>) {
                    let mut tx = match db.begin() {
                        Ok(tx) => tx,
                        Err(e) => return (false, Err(e)),
                    };
                    let up = format!("UPDATE {table} SET n = n + 1 WHERE id = ?");
                    if let Err(e) = tx.execute(&up, (first,)) {
                        return (false, Err(e));
                    }
                    barrier.wait();
                    let victim = tx.execute(&up, (second,)).is_err();
                    // Go on regardless, as a careless caller would.
                    let later = tx.execute(
                        &format!("INSERT INTO {table} (id, n) VALUES (?, 0)"),
                        (marker,),
                    );
                    if victim {
                        let e = later.expect_err("refused after the deadlock");
                        assert_eq!(e.db_code(), Some("1213"), "{e}");
                    }
                    (victim, tx.commit())
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("no panic"))
            .collect()
    });
    let victims: Vec<_> = outcomes.iter().filter(|(v, _)| *v).collect();
    assert_eq!(victims.len(), 1, "one deadlock victim: {outcomes:?}");
    let e = victims[0].1.as_ref().expect_err("not committed");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let winner = outcomes.iter().find(|(v, _)| !*v).expect("a winner");
    assert!(winner.1.is_ok(), "{:?}", winner.1);
    let rows = db.execute_query(&format!("SELECT id FROM {table} ORDER BY id"), ())?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get("id")).collect::<Result<_>>()?;
    assert_eq!(ids.len(), 3, "the winner's marker only: {ids:?}");
    Ok(())
}
