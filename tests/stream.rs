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

/// MariaDB's `CONNECTION_ID()` on `db`'s one pooled connection.
fn connection_id(db: &dbmanager::DatabaseManager) -> Result<i64> {
    db.query_one("SELECT CONNECTION_ID() AS id", ())?.get("id")
}

/// MariaDB streams its unbuffered result: 200 000 rows in order, typed
/// rows of several types, and a stream whose whole run is longer than the
/// query timeout (the timeout bounds each fetch, and the server's own
/// statement limit is lifted for it and set again afterwards).
fn mariadb_reads_as_it_goes(b: Backend) -> Result<()> {
    let db = b.open_with(|c| c.pool_size(1).max_overflow(0))?;
    let mut next = 1i64;
    for row in db.stream("SELECT seq AS i FROM seq_1_to_200000 ORDER BY seq", ())? {
        assert_eq!(row?.get::<i64>("i")?, next);
        next += 1;
    }
    assert_eq!(next, 200_001);

    #[derive(Deserialize, Debug, PartialEq)]
    struct Item {
        i: i64,
        name: String,
        half: Option<f64>,
        day: chrono::NaiveDate,
    }
    let items: Vec<Item> = db
        .stream_as::<Item>(
            "SELECT seq AS i, CONCAT('ünï ', seq) AS name, \
             IF(seq % 2 = 0, seq / 2.0e0, NULL) AS half, DATE '2026-01-01' + INTERVAL seq DAY AS day \
             FROM seq_1_to_2500",
            (),
        )?
        .collect::<Result<_>>()?;
    assert_eq!(items.len(), 2500);
    assert_eq!(
        items[1],
        Item {
            i: 2,
            name: "ünï 2".into(),
            half: Some(1.0),
            day: chrono::NaiveDate::from_ymd_opt(2026, 1, 3).unwrap(),
        }
    );
    assert_eq!(items[2498].half, None);

    // Each fetch of 1000 rows waits 0.5 s on the server, 2.5 s in all:
    // more than the 1 s timeout plus the server limit's margin.
    let mut conn = db.connection()?;
    conn.set_timeout(Some(Duration::from_secs(1)));
    let n = conn
        .stream(
            "SELECT seq AS i, IF(seq % 1000 = 500, SLEEP(0.5), 0) AS s FROM seq_1_to_5000",
            (),
        )?
        .collect::<Result<Vec<Row>>>()?
        .len();
    assert_eq!(n, 5000);
    // The server's limit is back for the next statement.
    let e = conn
        .execute_query("SELECT SLEEP(10) AS s", ())
        .expect_err("stopped at the deadline");
    assert_eq!(e.kind(), ErrorKind::QueryTimeout, "{e}");
    conn.set_timeout(None);
    assert_eq!(conn.query_one("SELECT 1 AS one", ())?.get::<i64>("one")?, 1);
    Ok(())
}
each_backend!(mariadb_reads_as_it_goes, [MySql]);

/// A MariaDB stream dropped half way (at once, inside a fetch's batch, at
/// a batch's end) stops its statement on the server and keeps its
/// connection: the same connection serves the next statements, and a
/// later statement is not hit by the stop.
fn mariadb_dropped_half_way_keeps_its_connection(b: Backend) -> Result<()> {
    let db = b.open_with(|c| c.pool_size(1).max_overflow(0))?;
    let id = connection_id(&db)?;
    for read in [0, 10, 1000, 1500] {
        let mut s = db.stream(
            "SELECT seq AS i, REPEAT('x', 200) AS pad FROM seq_1_to_10000000",
            (),
        )?;
        for _ in 0..read {
            s.next().expect("a row")?;
        }
        drop(s);
        let status = db.pool_status();
        assert_eq!(
            (status.checked_out, status.checked_in),
            (0, 1),
            "{status:?}"
        );
        assert_eq!(status.suspected_leaks, 0, "{status:?}");
        assert_eq!(connection_id(&db)?, id, "after {read} rows");
        let slow: i64 = db.query_one("SELECT SLEEP(0.2) AS s", ())?.get("s")?;
        assert_eq!(slow, 0, "not interrupted");
    }
    // In a transaction: its earlier work stays, and it commits.
    let t = common::unique_name("sdrop");
    db.execute_batch(&format!("CREATE TABLE {t} (id INTEGER PRIMARY KEY)"))?;
    db.transaction(|tx| {
        tx.execute(&format!("INSERT INTO {t} (id) VALUES (?)"), (1,))?;
        let mut s = tx.stream(
            "SELECT seq AS i, REPEAT('x', 200) AS pad FROM seq_1_to_1000000",
            (),
        )?;
        s.next().expect("a row")?;
        drop(s);
        tx.execute(&format!("INSERT INTO {t} (id) VALUES (?)"), (2,))?;
        Ok::<_, dbmanager::Error>(())
    })?;
    let n: i64 = db
        .query_one(&format!("SELECT COUNT(*) AS n FROM {t}"), ())?
        .get("n")?;
    assert_eq!(n, 2);
    assert_eq!(db.pool_status().invalid, 0, "{:?}", db.pool_status());
    db.execute_batch(&format!("DROP TABLE {t}"))?;
    Ok(())
}
each_backend!(mariadb_dropped_half_way_keeps_its_connection, [MySql]);

/// A MariaDB fetch stuck after the first rows is cancelled on the server at
/// its deadline (`QueryTimeout`), and an error the server raises after
/// sending rows ends the stream with that error; either way the rows
/// before it arrive and the connection is clean (after the error, the
/// same connection goes on).
fn mariadb_timeout_and_error_mid_stream(b: Backend) -> Result<()> {
    let db = b.open_with(|c| c.pool_size(1).max_overflow(0))?;
    {
        let mut conn = db.connection()?;
        conn.set_timeout(Some(Duration::from_millis(500)));
        let mut rows = 0;
        let mut failure = None;
        for row in conn.stream(
            "SELECT seq AS i, IF(seq = 1500, SLEEP(10), 0) AS s FROM seq_1_to_3000",
            (),
        )? {
            match row {
                Ok(_) => rows += 1,
                Err(e) => failure = Some(e),
            }
        }
        let e = failure.expect("the fetch times out");
        assert_eq!(e.kind(), ErrorKind::QueryTimeout, "{e}");
        assert!((1000..1500).contains(&rows), "{rows}");
        conn.set_timeout(None);
        assert_eq!(conn.query_one("SELECT 1 AS one", ())?.get::<i64>("one")?, 1);
    }
    // Kept or, when the kill's own reply came after the error, replaced.
    assert_eq!(db.pool_status().checked_out, 0);
    let id = connection_id(&db)?;

    let mut rows = 0;
    let mut failure = None;
    for row in db.stream(
        "SELECT a.seq AS i, (SELECT b.seq FROM seq_1_to_2 b WHERE a.seq = 1500 OR b.seq = 1) AS x \
         FROM seq_1_to_3000 a",
        (),
    )? {
        match row {
            Ok(_) => rows += 1,
            Err(e) => failure = Some(e),
        }
    }
    let e = failure.expect("the subquery fails at row 1500");
    assert_eq!(e.db_code(), Some("1242"), "{e}");
    assert_eq!(rows, 1499);
    assert_eq!(db.pool_status().checked_out, 0);
    assert_eq!(connection_id(&db)?, id);
    Ok(())
}
each_backend!(mariadb_timeout_and_error_mid_stream, [MySql]);
