//! Streaming reads (`stream`, `stream_as`) on PostgreSQL, MariaDB, an SQLite
//! file and `sqlite::memory:`: many rows, typed rows, a stream in a
//! transaction and on a held guard, a stream dropped half way on a pool of
//! one, a stuck fetch cancelled at its deadline, errors, and metrics.

mod common;

use std::time::Duration;

use common::Backend;
use dbmanager::{ErrorKind, Result, Row};
use serde::Deserialize;

/// The numbers 1 to `n` as column `i`, on every backend (MariaDB stops a
/// recursive query after 1000 rounds unless told otherwise).
fn series(b: Backend, n: u32) -> String {
    let cte = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) SELECT i FROM n"
    );
    match b {
        Backend::MySql => format!("SET STATEMENT max_recursive_iterations = {n} FOR {cte}"),
        _ => cte,
    }
}

fn many_rows(b: Backend) -> Result<()> {
    let db = b.open()?;
    let n = 25_000;
    let mut count = 0u64;
    let mut sum = 0i64;
    for row in db.stream(&series(b, n), ())? {
        sum += row?.get::<i64>("i")?;
        count += 1;
    }
    assert_eq!(count, u64::from(n));
    assert_eq!(sum, i64::from(n) * (i64::from(n) + 1) / 2);

    // In order across every fetch boundary.
    let mut expected = 1i64;
    for row in db.stream(&format!("{} ORDER BY i", series(b, 5_000)), ())? {
        assert_eq!(row?.get::<i64>("i")?, expected);
        expected += 1;
    }
    assert_eq!(expected, 5_001);

    #[derive(Deserialize)]
    struct N {
        i: i64,
    }
    let typed: Vec<N> = db
        .stream_as::<N>(&series(b, 10), ())?
        .collect::<Result<_>>()?;
    assert_eq!(typed.iter().map(|x| x.i).sum::<i64>(), 55);

    // Parameters and portable placeholders work as for any query.
    let rows: Vec<Row> = db
        .stream(
            "SELECT :a AS a, :b AS b",
            dbmanager::params! { "a" => 1, "b" => "x" },
        )?
        .collect::<Result<_>>()?;
    assert_eq!(rows.len(), 1);
    // Nothing held afterwards.
    assert_eq!(db.pool_status().checked_out, 0);
    Ok(())
}
each_backend!(many_rows);

/// A stream dropped after a few rows leaves no dirty connection: on a pool
/// of one, the next checkout works at once, on a guard the next statement
/// too.
fn dropped_half_way(b: Backend) -> Result<()> {
    let db = b.open_with(|c| {
        c.pool_size(1)
            .max_overflow(0)
            .acquire_timeout(Duration::from_secs(10))
    })?;
    for _ in 0..3 {
        let mut s = db.stream(&series(b, 50_000), ())?;
        for _ in 0..10 {
            s.next().expect("a row")?;
        }
        assert_eq!(s.rows_read(), 10);
        assert_eq!(db.pool_status().checked_out, 1);
        drop(s);
        assert_eq!(db.pool_status().checked_out, 0);
        let one: i64 = db.query_one("SELECT 1 AS one", ())?.get("one")?;
        assert_eq!(one, 1);
    }
    let mut conn = db.connection()?;
    {
        let mut s = conn.stream(&series(b, 50_000), ())?;
        s.next().expect("a row")?;
    }
    assert_eq!(conn.query_one("SELECT 2 AS two", ())?.get::<i64>("two")?, 2);
    drop(conn);
    assert_eq!(db.query_one("SELECT 3 AS x", ())?.get::<i64>("x")?, 3);
    Ok(())
}
each_backend!(dropped_half_way);

fn in_a_transaction(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = common::unique_name("st");
    db.execute_batch(&format!(
        "CREATE TABLE {t} (id INTEGER PRIMARY KEY, name VARCHAR(40))"
    ))?;
    let result = db.transaction(|tx| {
        tx.execute(
            &format!("INSERT INTO {t} (id, name) VALUES (?, ?)"),
            (1, "ünï ✓"),
        )?;
        tx.execute(
            &format!("INSERT INTO {t} (id, name) VALUES (?, ?)"),
            (2, "b"),
        )?;
        let names: Vec<String> = tx
            .stream(&format!("SELECT name FROM {t} ORDER BY id"), ())?
            .map(|r| r.and_then(|r| r.get::<String>("name")))
            .collect::<Result<_>>()?;
        assert_eq!(names, ["ünï ✓", "b"]);
        Ok::<_, dbmanager::Error>(())
    });
    db.execute_batch(&format!("DROP TABLE {t}"))?;
    result
}
each_backend!(in_a_transaction);

/// A stream whose query runs past its deadline fails with `QueryTimeout`
/// (at open or at the first fetch, as the server sends its first rows),
/// cancelled on the server; the guard is usable afterwards.
fn stuck_fetch_times_out(b: Backend) -> Result<()> {
    let db = b.open()?;
    let mut conn = db.connection()?;
    conn.set_timeout(Some(Duration::from_millis(300)));
    let got: Result<Vec<Row>> = conn
        .stream(b.endless_statement(), ())
        .and_then(|s| s.collect());
    let e = got.expect_err("the statement runs ten seconds");
    assert_eq!(e.kind(), ErrorKind::QueryTimeout, "{e}");
    conn.set_timeout(None);
    assert_eq!(conn.query_one("SELECT 1 AS one", ())?.get::<i64>("one")?, 1);
    Ok(())
}
each_backend!(stuck_fetch_times_out);

fn errors_are_clear(b: Backend) -> Result<()> {
    let db = b.open()?;
    let e = db
        .stream("SELECT * FROM no_such_table_here", ())
        .and_then(|s| s.collect::<Result<Vec<Row>>>())
        .expect_err("no such table");
    assert!(e.db_code().is_some(), "{e}");

    #[derive(Debug, Deserialize)]
    struct Wrong {
        #[allow(dead_code)]
        missing: String,
    }
    let first = db
        .stream_as::<Wrong>(&series(b, 3), ())?
        .next()
        .expect("an item");
    assert_eq!(
        first.expect_err("no such field").kind(),
        ErrorKind::Conversion
    );
    assert_eq!(db.pool_status().checked_out, 0);
    Ok(())
}
each_backend!(errors_are_clear);

/// Text that is not UTF-8 (SQLite stores what it is given) reads with
/// replacement characters, as in `execute_query`, rather than failing.
fn invalid_utf8_text(b: Backend) -> Result<()> {
    let db = b.open()?;
    let sql = "SELECT CAST(x'66ff6f' AS TEXT) AS t, 'ünï ✓' AS u";
    let streamed: Vec<Row> = db.stream(sql, ())?.collect::<Result<_>>()?;
    let queried = db.query_one(sql, ())?;
    assert_eq!(streamed[0].get::<String>("t")?, "f\u{fffd}o");
    assert_eq!(streamed[0].get::<String>("u")?, "ünï ✓");
    assert_eq!(streamed[0].values(), queried.values());
    Ok(())
}
each_backend!(invalid_utf8_text, [SqliteFile, SqliteMemory]);

fn counted_in_metrics(b: Backend) -> Result<()> {
    let db = b.open()?;
    let before = common::fault::metric(
        "db_query_count_total",
        db.name(),
        Some("operation=\"query\""),
    );
    let n = db.stream(&series(b, 3000), ())?.count();
    assert_eq!(n, 3000);
    let after = common::fault::metric(
        "db_query_count_total",
        db.name(),
        Some("operation=\"query\""),
    );
    assert_eq!(after - before, 1.0, "a stream is one statement");
    Ok(())
}
each_backend!(counted_in_metrics);

/// The SQL Server test server: a stream reads its table.
fn sql_server_streams(b: Backend) -> Result<()> {
    let db = b.open()?;
    let rows: Vec<Row> = db
        .stream("SELECT * FROM people", ())?
        .collect::<Result<_>>()?;
    assert!(!rows.is_empty());
    Ok(())
}
each_backend!(sql_server_streams, [MsSql]);
