//! Bulk writes (`bulk_insert`, `bulk_upsert`, `bulk_update`, `bulk_delete`
//! and the `bulk` builder) on PostgreSQL, MariaDB, an SQLite file and
//! `sqlite::memory:`: every entry point, empty input, chunk boundaries, a
//! constraint error in the middle (all or nothing rolls back; a commit per
//! chunk reports where to resume, and resumes), NULLs and every value type,
//! unicode and names that need quoting, an injection attempt refused, a
//! timeout during a load, serde records, and metrics. The SQL Server test
//! server is read-only: only a clear refusal is checked there.

mod common;

use std::time::Duration;

use chrono::{NaiveDate, NaiveTime, TimeZone, Utc};
use common::Backend;
use dbmanager::{DatabaseManager, ErrorKind, Record, Result, Value};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

/// A table with a unique name, dropped when the test ends.
struct Table<'a> {
    db: &'a DatabaseManager,
    name: String,
}

impl Table<'_> {
    fn create<'a>(db: &'a DatabaseManager, prefix: &str, columns: &str) -> Result<Table<'a>> {
        let name = common::unique_name(prefix);
        db.execute_batch(&format!("CREATE TABLE [{name}] ({columns})"))?;
        Ok(Table { db, name })
    }

    fn count(&self) -> Result<i64> {
        self.db
            .query_one(&format!("SELECT COUNT(*) AS n FROM [{}]", self.name), ())?
            .get("n")
    }

    fn sum(&self, col: &str) -> Result<i64> {
        let v: Option<Decimal> = self
            .db
            .query_one(
                &format!("SELECT SUM([{col}]) AS s FROM [{}]", self.name),
                (),
            )?
            .get("s")?;
        Ok(v.map_or(0, |d| i64::try_from(d).unwrap()))
    }
}

impl Drop for Table<'_> {
    fn drop(&mut self) {
        let _ = self
            .db
            .execute_batch(&format!("DROP TABLE IF EXISTS [{}]", self.name));
    }
}

fn people(db: &DatabaseManager) -> Result<Table<'_>> {
    Table::create(
        db,
        "bulk",
        "id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(60) NOT NULL, score INTEGER",
    )
}

/// Each entry point, across chunk boundaries (2500 rows in chunks of 1000).
fn every_entry_point(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = people(&db)?;
    let rows = (0..2500).map(|i| (i, format!("p{i}"), i % 7));
    let r = db
        .bulk(&t.name)
        .chunk_size(1000)
        .insert(&["id", "name", "score"], rows)?;
    assert_eq!(
        (r.rows, r.rows_affected, r.chunks, r.position),
        (2500, 2500, 3, 2500)
    );
    assert_eq!(t.count()?, 2500);

    // Upsert: ids 2000..3000, half existing, half new; score set to 1.
    let r = db.bulk_upsert(
        &t.name,
        &["id", "name", "score"],
        &["id"],
        (2000..3000).map(|i| vec![Value::I64(i), Value::Text(format!("u{i}")), Value::I64(1)]),
    )?;
    assert_eq!(r.rows, 1000);
    if b != Backend::MySql {
        assert_eq!(r.rows_affected, 1000);
    }
    assert_eq!(t.count()?, 3000);
    let row = db.query_one(
        &format!("SELECT name, score FROM [{}] WHERE id = 2100", t.name),
        (),
    )?;
    assert_eq!(row.get::<String>("name")?, "u2100");

    // Update the score of 0..100 to 100.
    let r = db.bulk_update(
        &t.name,
        &["id", "score"],
        &["id"],
        (0..100).map(|i| (i, 100)),
    )?;
    assert_eq!(r.rows_affected, 100);
    let n: i64 = db
        .query_one(
            &format!("SELECT COUNT(*) AS n FROM [{}] WHERE score = 100", t.name),
            (),
        )?
        .get("n")?;
    assert_eq!(n, 100);

    // Delete 0..500 (and a key that matches nothing).
    let r = db.bulk_delete(&t.name, &["id"], (0..500).chain([99_999]).map(|i| (i,)))?;
    assert_eq!(r.rows_affected, 500);
    assert_eq!(t.count()?, 2500);
    assert_eq!(db.pool_status().checked_out, 0);
    Ok(())
}
each_backend!(every_entry_point);

/// An update sets the rows whose keys it is given, many rows per statement
/// where the server allows it (MariaDB: up to 1000), and inserts nothing
/// for a key that matches no row. Rows affected are rows matched: a row
/// set to the values it already has counts too (MySQL's
/// `CLIENT_FOUND_ROWS`, as the other servers count).
fn update_matches_without_inserting(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = people(&db)?;
    db.bulk_insert(
        &t.name,
        &["id", "name", "score"],
        (0..2500).map(|i| (i, format!("p{i}"), 1)),
    )?;
    // 2500 rows matching, ten that match nothing, in one chunk: three
    // statements of up to 1000 rows on MariaDB.
    let rows = || {
        (0..2500)
            .chain(10_000..10_010)
            .map(|i| (i, format!("u{i}"), i % 10))
    };
    let update = || {
        db.bulk(&t.name)
            .chunk_size(3000)
            .update(&["id", "name", "score"], &["id"], rows())
    };
    let r = update()?;
    assert_eq!((r.rows, r.rows_affected, r.chunks), (2510, 2500, 1));
    assert_eq!(t.count()?, 2500, "no row inserted");
    assert_eq!(t.sum("score")?, (0..2500).map(|i| i % 10).sum::<i64>());
    let row = db.query_one(
        &format!("SELECT name, score FROM [{}] WHERE id = 1999", t.name),
        (),
    )?;
    assert_eq!(row.get::<String>("name")?, "u1999");
    assert_eq!(row.get::<i64>("score")?, 9);
    // The same values again: every matched row still counts.
    let r = update()?;
    assert_eq!(r.rows_affected, 2500);
    // Only some columns set, keyed on another column: the others keep
    // their values.
    let r = db.bulk_update(
        &t.name,
        &["score", "name"],
        &["name"],
        (0..5).map(|i| (100 + i, format!("u{i}"))),
    )?;
    assert_eq!(r.rows_affected, 5);
    assert_eq!(
        db.query_one(
            &format!("SELECT id, score FROM [{}] WHERE name = 'u3'", t.name),
            ()
        )?
        .get::<i64>("score")?,
        103
    );
    Ok(())
}
each_backend!(update_matches_without_inserting);

/// A key repeated within one load (and within one chunk) is written as
/// the rows would be one by one: the later row wins, for upserts and
/// updates alike, whatever the chunk size. (PostgreSQL's `ON CONFLICT`
/// refuses to touch a row twice in one statement, and its `UPDATE … FROM`
/// picks either row.)
fn a_repeated_key_takes_the_later_row(b: Backend) -> Result<()> {
    let db = b.open_with(|c| c.pgbouncer(b == Backend::PgBouncer))?;
    let t = people(&db)?;
    let cols = ["id", "name", "score"];
    // ids 0..10, each three times in a row run, then id 3 once more.
    let rows = || {
        (0..3)
            .flat_map(|round| (0..10).map(move |i| (i, format!("r{round}-{i}"), round)))
            .chain([(3, "last".to_owned(), 9)])
    };
    for chunk in [1000, 7] {
        let r = db
            .bulk(&t.name)
            .chunk_size(chunk)
            .upsert(&cols, &["id"], rows())?;
        assert_eq!(r.rows, 31);
        assert_eq!(t.count()?, 10, "chunk size {chunk}");
        let name = |id: i64| -> Result<String> {
            db.query_one(
                &format!("SELECT name FROM [{}] WHERE id = ?", t.name),
                (id,),
            )?
            .get("name")
        };
        assert_eq!(name(3)?, "last", "chunk size {chunk}");
        assert_eq!(name(4)?, "r2-4", "chunk size {chunk}");
        assert_eq!(t.sum("score")?, 9 * 2 + 9, "chunk size {chunk}");

        let r = db.bulk(&t.name).chunk_size(chunk).update(
            &cols,
            &["id"],
            rows().map(|(i, n, s)| (i, n, s + 100)),
        )?;
        assert_eq!(r.rows, 31);
        assert_eq!(name(3)?, "last", "chunk size {chunk}");
        assert_eq!(t.sum("score")?, 9 * 102 + 109, "chunk size {chunk}");
        db.execute(&format!("DELETE FROM [{}]", t.name), ())?;
    }
    Ok(())
}
each_backend!(
    a_repeated_key_takes_the_later_row,
    [Postgres, PgBouncer, MySql, SqliteFile, SqliteMemory]
);

fn empty_input(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = people(&db)?;
    let none: Vec<(i64, String, i64)> = Vec::new();
    let r = db.bulk_insert(&t.name, &["id", "name", "score"], none)?;
    assert_eq!((r.rows, r.chunks, r.rows_affected), (0, 0, 0));
    let r = db.bulk_delete(&t.name, &["id"], Vec::<(i64,)>::new())?;
    assert_eq!(r.chunks, 0);
    assert_eq!(t.count()?, 0);
    Ok(())
}
each_backend!(empty_input);

/// Rows 0..3000 where row 1500 repeats id 10 (a unique violation in chunk 2).
fn with_duplicate() -> impl Iterator<Item = (i64, String, i64)> {
    (0..3000).map(|i| {
        let id = if i == 1500 { 10 } else { i };
        (id, format!("secret-{i}"), 0)
    })
}

fn constraint_error_in_the_middle(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = people(&db)?;
    let cols = ["id", "name", "score"];

    // All or nothing: nothing stays.
    let e = db
        .bulk(&t.name)
        .chunk_size(1000)
        .insert(&cols, with_duplicate())
        .expect_err("duplicate key");
    assert!(e.is_unique_violation(), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("chunk 2 (input rows 1000 to 1999)"), "{msg}");
    if matches!(b, Backend::SqliteFile | Backend::SqliteMemory) {
        // One row per step: SQLite names the row within the chunk.
        assert!(msg.contains("at row 500 of the chunk"), "{msg}");
    }
    assert!(msg.contains("rolled back"), "{msg}");
    assert!(!msg.contains("secret-5"), "another row's value in {msg}");
    assert_eq!(e.bulk_position(), Some(0));
    assert_eq!(t.count()?, 0);

    // A commit per chunk: chunk 1 stays, the error says where to resume.
    let mut seen = Vec::new();
    let e = db
        .bulk(&t.name)
        .chunk_size(1000)
        .commit_each_chunk()
        .on_progress(|p| seen.push(p.position))
        .insert(&cols, with_duplicate())
        .expect_err("duplicate key");
    assert_eq!(seen, [1000]);
    assert_eq!(e.bulk_position(), Some(1000));
    assert!(e.to_string().contains("start_at(1000)"), "{e}");
    assert_eq!(t.count()?, 1000);

    // Resumed with the input fixed, from where it stopped.
    let fixed = (0..3000).map(|i| (i, format!("n{i}"), 0));
    let r = db
        .bulk(&t.name)
        .chunk_size(1000)
        .commit_each_chunk()
        .start_at(e.bulk_position().unwrap())
        .insert(&cols, fixed)?;
    assert_eq!(
        (r.start_at, r.rows, r.chunks, r.position),
        (1000, 2000, 2, 3000)
    );
    assert_eq!(t.count()?, 3000);
    assert_eq!(db.pool_status().checked_out, 0);
    Ok(())
}
each_backend!(constraint_error_in_the_middle);

/// A row whose values do not match the columns is named, and nothing stays.
fn bad_row_is_named(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = people(&db)?;
    let rows = (0..10).map(|i| {
        if i == 7 {
            vec![Value::I64(i)]
        } else {
            vec![Value::I64(i), Value::Text("x".into()), Value::Null]
        }
    });
    let e = db
        .bulk_insert(&t.name, &["id", "name", "score"], rows)
        .expect_err("short row");
    assert_eq!(e.kind(), ErrorKind::Parameter);
    assert!(e.to_string().contains("input row 7 has 1 values"), "{e}");
    assert_eq!(t.count()?, 0);
    Ok(())
}
each_backend!(bad_row_is_named);

/// Column types per backend for the value round trip.
fn value_columns(b: Backend) -> &'static str {
    match b {
        Backend::Postgres => {
            "id INTEGER PRIMARY KEY, v_bool BOOLEAN, v_i64 BIGINT, v_f64 DOUBLE PRECISION, \
             v_dec NUMERIC(20,4), v_text TEXT, v_bytes BYTEA, v_date DATE, v_time TIME, \
             v_ts TIMESTAMP, v_tstz TIMESTAMPTZ, v_uuid UUID, v_json JSONB"
        }
        Backend::MySql => {
            "id INTEGER PRIMARY KEY, v_bool BOOLEAN, v_i64 BIGINT, v_f64 DOUBLE, \
             v_dec DECIMAL(20,4), v_text TEXT, v_bytes VARBINARY(64), v_date DATE, v_time TIME(6), \
             v_ts DATETIME(6), v_tstz DATETIME(6), v_uuid UUID, v_json JSON"
        }
        _ => {
            "id INTEGER PRIMARY KEY, v_bool BOOLEAN, v_i64 INTEGER, v_f64 REAL, \
             v_dec DECIMAL(20,4), v_text TEXT, v_bytes BLOB, v_date DATE, v_time TIME, \
             v_ts TIMESTAMP, v_tstz TIMESTAMPTZ, v_uuid UUID, v_json JSON"
        }
    }
}

const VALUE_COLUMNS: [&str; 13] = [
    "id", "v_bool", "v_i64", "v_f64", "v_dec", "v_text", "v_bytes", "v_date", "v_time", "v_ts",
    "v_tstz", "v_uuid", "v_json",
];

fn nulls_and_every_value_type(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = Table::create(&db, "bulkv", value_columns(b))?;
    let date = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    let time = NaiveTime::from_hms_micro_opt(13, 45, 30, 123_456).unwrap();
    let tstz = Utc.from_utc_datetime(&date.and_time(time));
    let uuid = Uuid::parse_str("67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap();
    let json = serde_json::json!({"k": [1, "ünï ✓"]});
    let dec: Decimal = "12345.6789".parse().unwrap();
    let full = vec![
        Value::I64(1),
        Value::Bool(true),
        Value::I64(9_007_199_254_740_993),
        Value::F64(1234.5625),
        Value::Decimal(dec),
        Value::Text("héllo ✓ 'q' \"d\" \\ ;--".into()),
        Value::Bytes(vec![0, 1, 127, 128, 255]),
        Value::Date(date),
        Value::Time(time),
        Value::Timestamp(date.and_time(time)),
        Value::TimestampTz(tstz),
        Value::Uuid(uuid),
        Value::Json(json.clone()),
    ];
    let mut nulls = vec![Value::I64(2)];
    nulls.extend(std::iter::repeat(Value::Null).take(VALUE_COLUMNS.len() - 1));
    db.bulk_insert(&t.name, &VALUE_COLUMNS, vec![full.clone(), nulls])?;
    // Every type as given, and every column but the key NULL.
    let full_row = |r: &dbmanager::Row| -> Result<()> {
        assert!(r.get::<bool>("v_bool")?);
        assert_eq!(r.get::<i64>("v_i64")?, 9_007_199_254_740_993);
        assert_eq!(r.get::<f64>("v_f64")?, 1234.5625);
        assert_eq!(r.get::<Decimal>("v_dec")?, dec);
        assert_eq!(r.get::<String>("v_text")?, "héllo ✓ 'q' \"d\" \\ ;--");
        assert_eq!(r.get::<Vec<u8>>("v_bytes")?, vec![0, 1, 127, 128, 255]);
        assert_eq!(r.get::<NaiveDate>("v_date")?, date);
        assert_eq!(r.get::<NaiveTime>("v_time")?, time);
        assert_eq!(r.get::<chrono::NaiveDateTime>("v_ts")?, date.and_time(time));
        assert_eq!(r.get::<Uuid>("v_uuid")?, uuid);
        let j: serde_json::Value = match r.value("v_json") {
            Some(Value::Text(s)) => serde_json::from_str(s).unwrap(),
            _ => r.get("v_json")?,
        };
        assert_eq!(j, json);
        Ok(())
    };
    let null_row = |r: &dbmanager::Row| {
        for col in &VALUE_COLUMNS[1..] {
            assert_eq!(r.value(*col), Some(&Value::Null), "{col} on {b:?}");
        }
    };

    let rows = db
        .stream(&format!("SELECT * FROM [{}] ORDER BY id", t.name), ())?
        .collect::<Result<Vec<_>>>()?;
    assert_eq!(rows.len(), 2);
    full_row(&rows[0])?;
    null_row(&rows[1]);

    // An update swaps them: every type set, and every column set to NULL
    // (MySQL: through the derived table the rows are joined as).
    let mut full_2 = full.clone();
    full_2[0] = Value::I64(2);
    let mut nulls_1 = vec![Value::I64(1)];
    nulls_1.extend(std::iter::repeat(Value::Null).take(VALUE_COLUMNS.len() - 1));
    let r = db.bulk_update(&t.name, &VALUE_COLUMNS, &["id"], vec![nulls_1, full_2])?;
    assert_eq!(r.rows_affected, 2);
    let rows = db.execute_query(&format!("SELECT * FROM [{}] ORDER BY id", t.name), ())?;
    null_row(&rows[0]);
    full_row(&rows[1])?;
    Ok(())
}
each_backend!(nulls_and_every_value_type);

/// Names that need quoting (a space, a reserved word, mixed case, unicode)
/// work; a name that tries to end the statement is refused, and nothing
/// reaches the server.
fn quoted_names_and_injection(b: Backend) -> Result<()> {
    let db = b.open()?;
    let name = format!("{} Ünï Order", common::unique_name("bulk"));
    db.execute_batch(&format!(
        "CREATE TABLE [{name}] ([select] INTEGER PRIMARY KEY, [Mixed Case] VARCHAR(20), [ñame] VARCHAR(20))"
    ))?;
    let r = db.bulk_upsert(
        &name,
        &["select", "Mixed Case", "ñame"],
        &["select"],
        [(1, "a", "ü"), (2, "b", "✓")],
    );
    let check = db.query_one(
        &format!("SELECT [ñame] FROM [{name}] WHERE [select] = 2"),
        (),
    );
    for bad in [
        "x\"; DROP TABLE y; --",
        "a;b",
        "x`y",
        "t]; DROP TABLE y",
        "new\nline",
        "",
    ] {
        let e = db
            .bulk_insert(bad, &["id"], [(1,)])
            .expect_err("refused table name");
        assert_eq!(e.kind(), ErrorKind::Parameter, "{bad:?}: {e}");
        let e = db
            .bulk_insert(&name, &["select", bad], [(1, 2)])
            .expect_err("refused column name");
        assert_eq!(e.kind(), ErrorKind::Parameter, "{bad:?}: {e}");
    }
    let e = db
        .bulk_update(&name, &["select", "ñame"], &["nope"], [(1, "x")])
        .expect_err("key not among the columns");
    assert!(e.to_string().contains("not among the columns"), "{e}");
    db.execute_batch(&format!("DROP TABLE [{name}]"))?;
    assert_eq!(r?.rows_affected, 2);
    assert_eq!(check?.get::<String>("ñame")?, "✓");
    Ok(())
}
each_backend!(quoted_names_and_injection);

#[derive(Serialize)]
struct Person {
    id: i64,
    name: String,
    score: Option<i64>,
    ignored: bool,
}

fn serde_records(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = people(&db)?;
    let list: Vec<Person> = (0..50)
        .map(|i| Person {
            id: i,
            name: format!("r{i}"),
            score: (i % 2 == 0).then_some(i),
            ignored: true,
        })
        .collect();
    let r = db.bulk_insert(&t.name, &["id", "name", "score"], list.iter().map(Record))?;
    assert_eq!(r.rows, 50);
    assert_eq!(t.sum("score")?, (0..50).filter(|i| i % 2 == 0).sum::<i64>());
    Ok(())
}
each_backend!(serde_records);

/// A chunk that runs past its deadline is cancelled on the server; the
/// load is rolled back, and the pool's one connection is clean for the
/// next caller (nothing left running, no transaction open).
/// Deletes by a composite key across a chunk boundary: a key given twice,
/// a NULL key and a key that matches nothing delete nothing more.
fn delete_by_composite_key(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = Table::create(
        &db,
        "bulkdel",
        "a INTEGER NOT NULL, b VARCHAR(20) NOT NULL, v INTEGER, PRIMARY KEY (a, b)",
    )?;
    db.bulk_insert(
        &t.name,
        &["a", "b", "v"],
        (0..3000).map(|i| (i / 2, format!("k{}", i % 2), i)),
    )?;
    let key = |a: Value, b: &str| vec![a, Value::Text(b.into())];
    let keys = (0..1200).map(|i| key(Value::I64(i), "k0")).chain([
        key(Value::I64(5), "k0"),
        key(Value::Null, "k1"),
        vec![Value::I64(7), Value::Null],
        key(Value::I64(99_999), "k1"),
    ]);
    let r = db
        .bulk(&t.name)
        .chunk_size(1000)
        .delete(&["a", "b"], keys)?;
    assert_eq!((r.rows, r.rows_affected, r.chunks), (1204, 1200, 2));
    assert_eq!(t.count()?, 1800);
    let n: i64 = db
        .query_one(
            &format!("SELECT COUNT(*) AS n FROM [{}] WHERE b = 'k1'", t.name),
            (),
        )?
        .get("n")?;
    assert_eq!(n, 1500);
    Ok(())
}
each_backend!(delete_by_composite_key);

/// A chunk's deadline counts the time its input takes: an input that
/// gives its rows slowly is stopped at the deadline, between statements
/// (where the server has nothing to cancel), and nothing stays.
fn deadline_while_the_input_is_slow(b: Backend) -> Result<()> {
    let db = b.open_with(|c| c.pool_size(1).max_overflow(0))?;
    let t = people(&db)?;
    let slow = (0..1000).map(|i| {
        std::thread::sleep(Duration::from_millis(2));
        (i, "x", 0)
    });
    let e = db
        .bulk(&t.name)
        .timeout(Some(Duration::from_millis(300)))
        .insert(&["id", "name", "score"], slow)
        .expect_err("the input takes 2 s, the deadline is 300 ms");
    assert_eq!(e.kind(), ErrorKind::QueryTimeout, "{e}");
    assert_eq!(t.count()?, 0);
    assert_eq!(db.pool_status().checked_out, 0);
    Ok(())
}
each_backend!(
    deadline_while_the_input_is_slow,
    [Postgres, MySql, SqliteFile, SqliteMemory]
);

/// An input row with the wrong number of values, in the middle of a chunk
/// the server is already receiving: the load stops with an error naming
/// that input row, nothing stays, and the connection is clean for the
/// next load.
fn a_ragged_row_in_the_middle_of_a_chunk(b: Backend) -> Result<()> {
    let db = b.open_with(|c| c.pool_size(1).max_overflow(0))?;
    let t = people(&db)?;
    let rows = (0..2000).map(|i| {
        let mut row = vec![Value::I64(i), Value::Text(format!("p{i}")), Value::I64(1)];
        if i == 1234 {
            row.pop();
        }
        row
    });
    let e = db
        .bulk_insert(&t.name, &["id", "name", "score"], rows)
        .expect_err("row 1234 has two values");
    let text = e.to_string();
    assert_eq!(e.kind(), ErrorKind::Parameter, "{text}");
    assert!(text.contains("input row 1234 has 2 values"), "{text}");
    assert_eq!(e.bulk_position(), Some(0), "{text}");
    assert_eq!(t.count()?, 0);
    let r = db.bulk_insert(
        &t.name,
        &["id", "name", "score"],
        (0..10).map(|i| (i, "ok", 2)),
    )?;
    assert_eq!(r.rows_affected, 10);
    assert_eq!(t.sum("score")?, 20);
    assert_eq!(db.pool_status().checked_out, 0);
    Ok(())
}
each_backend!(a_ragged_row_in_the_middle_of_a_chunk);

fn timeout_during_a_load(b: Backend) -> Result<()> {
    let db = b.open_with(|c| c.pool_size(1).max_overflow(0))?;
    let t = people(&db)?;
    let trigger = common::unique_name("slow");
    match b {
        Backend::Postgres => db.execute_batch(&format!(
            "CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END $$; \
             CREATE TRIGGER {trigger} BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {trigger}()",
            t = t.name
        ))?,
        Backend::MySql => db.execute_batch(&format!(
            "CREATE TRIGGER {trigger} BEFORE INSERT ON {t} FOR EACH ROW SET @slept = SLEEP(0.05)",
            t = t.name
        ))?,
        _ => unreachable!(),
    }
    let e = db
        .bulk(&t.name)
        .timeout(Some(Duration::from_millis(400)))
        .insert(&["id", "name", "score"], (0..1000).map(|i| (i, "x", 0)))
        .expect_err("each row sleeps 50 ms");
    assert_eq!(e.kind(), ErrorKind::QueryTimeout, "{e}");
    assert_eq!(t.count()?, 0);
    // The one connection is clean: a statement in a new transaction works,
    // and no statement of ours still runs on the server.
    db.transaction(|tx| {
        tx.execute(&format!("DELETE FROM [{}]", t.name), ())
            .map(drop)
    })?;
    // This table's only: other tests load tables of their own meanwhile.
    let running: i64 = match b {
        Backend::Postgres => db.query_one(
            "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'COPY%' AND strpos(query, ?) > 0 AND pid <> pg_backend_pid()",
            (t.name.as_str(),),
        )?,
        _ => db.query_one(
            "SELECT COUNT(*) AS n FROM information_schema.processlist WHERE info LIKE CONCAT('INSERT%', ?, '%') AND id <> CONNECTION_ID()",
            (t.name.as_str(),),
        )?,
    }
    .get("n")?;
    assert_eq!(running, 0);
    if b == Backend::Postgres {
        db.execute_batch(&format!(
            "DROP TABLE [{}]; DROP FUNCTION {trigger}()",
            t.name
        ))?;
    }
    Ok(())
}
each_backend!(timeout_during_a_load, [Postgres, MySql]);

fn metrics_present(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = people(&db)?;
    db.bulk_insert(
        &t.name,
        &["id", "name", "score"],
        (0..10).map(|i| (i, "m", i)),
    )?;
    db.bulk_delete(&t.name, &["id"], [(1,), (2,)])?;
    let m = |family: &str, op: &str| {
        common::fault::metric(family, db.name(), Some(&format!("operation=\"{op}\"")))
    };
    assert_eq!(m("bulk_operation_executions_total", "insert"), 1.0);
    assert_eq!(m("bulk_operation_rows_total", "insert"), 10.0);
    assert_eq!(m("bulk_operation_rows_total", "delete"), 2.0);
    assert_eq!(m("bulk_operation_time_seconds_count", "delete"), 1.0);
    assert_eq!(m("bulk_operation_executions_total", "upsert"), 0.0);
    Ok(())
}
each_backend!(metrics_present);

/// The SQL Server test server (pysqlbridge) is read-only: a bulk insert
/// into its table fails with the server's error, at once, and leaves the
/// pool clean. Writes to a real SQL Server are not verified here.
fn sql_server_refuses_cleanly(b: Backend) -> Result<()> {
    let db = b.open()?;
    let e = db
        .bulk_insert("people", &["id", "name"], [(100, "x"), (101, "y")])
        .expect_err("read-only server");
    assert!(e.database().is_some(), "{e}");
    assert!(e.to_string().contains("chunk 1"), "{e}");
    assert_eq!(db.pool_status().checked_out, 0);
    let n: i64 = db
        .query_one("SELECT COUNT(*) AS n FROM people", ())?
        .get("n")?;
    assert!(n > 0);
    Ok(())
}
each_backend!(sql_server_refuses_cleanly, [MsSql]);

/// A load inside a transaction is part of it: rolled back with it,
/// committed with it; a commit per chunk is refused there. On a guard it
/// runs as on the manager.
fn inside_a_transaction_and_on_a_guard(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = people(&db)?;
    let cols = ["id", "name", "score"];
    let _ = db.transaction(|tx| {
        let r = tx
            .bulk(&t.name)
            .chunk_size(100)
            .insert(&cols, (0..250).map(|i| (i, "tx", 0)))?;
        assert_eq!(r.chunks, 3);
        let n: i64 = tx
            .query_one(&format!("SELECT COUNT(*) AS n FROM [{}]", t.name), ())?
            .get("n")?;
        assert_eq!(n, 250);
        // Any error rolls the whole transaction back, the load with it.
        tx.execute("SELECT * FROM no_such_table_in_bulk_tests", ())
            .map(drop)
    });
    assert_eq!(t.count()?, 0);
    db.transaction(|tx| {
        let e = tx
            .bulk(&t.name)
            .commit_each_chunk()
            .insert(&cols, [(1, "x", 0)])
            .expect_err("refused in a transaction");
        assert_eq!(e.kind(), ErrorKind::Parameter);
        tx.bulk(&t.name)
            .insert(&cols, (0..10).map(|i| (i, "tx", 0)))?;
        Ok::<_, dbmanager::Error>(())
    })?;
    assert_eq!(t.count()?, 10);
    let mut conn = db.connection()?;
    conn.bulk(&t.name).delete(&["id"], (0..5).map(|i| (i,)))?;
    drop(conn);
    assert_eq!(t.count()?, 5);
    Ok(())
}
each_backend!(inside_a_transaction_and_on_a_guard);

/// MariaDB: rows far larger in total than the server's `max_allowed_packet`
/// (16 MiB here) and than one statement can carry go in as many multi-row
/// statements as needed, each sized to fit, with no row lost, doubled or
/// cut at a statement's boundary. A row that alone exceeds the packet size
/// is a clear error naming it, and the pool stays usable.
fn rows_larger_than_a_packet(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = Table::create(&db, "big", "id INTEGER PRIMARY KEY, body LONGTEXT NOT NULL")?;
    let packet: i64 = db
        .query_one("SELECT @@max_allowed_packet AS p", ())?
        .get("p")?;
    // Sizes from 1 KiB to 3 MiB, so statements hold from one row to many.
    let size = |id: i64| -> usize {
        match id % 5 {
            0 => 3 << 20,
            1 => 1 << 10,
            2 => 700 << 10,
            3 => 2 << 20,
            _ => 64 << 10,
        }
    };
    let body = |id: i64| -> String {
        let unit = format!("<{id:06}>");
        let mut s = unit.repeat(size(id) / unit.len() + 1);
        s.truncate(size(id));
        s
    };
    let ids = 0..40_i64;
    let total: usize = ids.clone().map(size).sum();
    assert!(total as i64 > 2 * packet, "{total} bytes against {packet}");
    let r = db.bulk_insert(&t.name, &["id", "body"], ids.clone().map(|i| (i, body(i))))?;
    assert_eq!((r.rows, r.rows_affected), (40, 40));
    let rows = db.execute_query(
        &format!(
            "SELECT id, LENGTH(body) AS n, LEFT(body, 8) AS head, RIGHT(body, 8) AS tail FROM [{}] ORDER BY id",
            t.name
        ),
        (),
    )?;
    assert_eq!(rows.len(), 40);
    for (row, id) in rows.iter().zip(ids) {
        let want = body(id);
        assert_eq!(row.get::<i64>("id")?, id);
        assert_eq!(row.get::<i64>("n")? as usize, want.len(), "row {id}");
        assert_eq!(row.get::<String>("head")?, want[..8], "row {id}");
        assert_eq!(
            row.get::<String>("tail")?,
            want[want.len() - 8..],
            "row {id}"
        );
    }

    // Upserts are sized the same way.
    let r = db.bulk_upsert(
        &t.name,
        &["id", "body"],
        &["id"],
        (0..10_i64).map(|i| (i, body(i + 1))),
    )?;
    assert_eq!(r.rows, 10);
    let n: i64 = db
        .query_one(
            &format!("SELECT LENGTH(body) AS n FROM [{}] WHERE id = 4", t.name),
            (),
        )?
        .get("n")?;
    assert_eq!(n as usize, size(5));

    // Updates too (a derived table of large rows on MariaDB).
    let r = db.bulk_update(
        &t.name,
        &["id", "body"],
        &["id"],
        (10..20_i64).map(|i| (i, body(i + 1))),
    )?;
    assert_eq!(r.rows_affected, 10);
    let lengths: Vec<i64> = db
        .execute_query(
            &format!(
                "SELECT LENGTH(body) AS n FROM [{}] WHERE id BETWEEN 10 AND 19 ORDER BY id",
                t.name
            ),
            (),
        )?
        .iter()
        .map(|r| r.get("n"))
        .collect::<Result<_>>()?;
    let want: Vec<i64> = (10..20).map(|i| size(i + 1) as i64).collect();
    assert_eq!(lengths, want);

    // One value larger than the packet: refused by the server, named.
    let huge = "x".repeat(packet as usize + 1024);
    let e = db
        .bulk_insert(
            &t.name,
            &["id", "body"],
            [(100_i64, "small".to_owned()), (101, huge)],
        )
        .expect_err("larger than max_allowed_packet");
    assert_eq!(e.kind(), ErrorKind::Parameter, "{e}");
    assert!(e.to_string().contains("the chunk's row 1 "), "{e}");
    assert!(e.to_string().contains("max_allowed_packet"), "{e}");
    assert_eq!(t.count()?, 40, "all or nothing");
    assert_eq!(db.query_one("SELECT 1 AS one", ())?.get::<i64>("one")?, 1);
    assert_eq!(db.pool_status().checked_out, 0);
    Ok(())
}
each_backend!(rows_larger_than_a_packet, [MySql]);

/// MariaDB: a bulk write prepares one statement per statement size, and
/// past the driver's statement cache (256 a connection) each pushes an
/// older statement out, closing it on the server. A statement run before
/// the writes, on the same connection, runs again after them.
fn statements_run_again_after_many_bulk_statement_sizes(b: Backend) -> Result<()> {
    let db = b.open_with(|c| c.pool_size(1).max_overflow(0))?;
    let t = people(&db)?;
    let probe = format!("SELECT COUNT(*) AS n FROM [{}] WHERE id >= ?", t.name);
    assert_eq!(db.query_one(&probe, (0,))?.get::<i64>("n")?, 0);
    let mut next = 0_i64;
    // Each chunk is one statement of its own size.
    for size in 1..=300_i64 {
        let rows = (next..next + size).map(|i| (i, format!("p{i}"), i % 7));
        db.bulk(&t.name)
            .chunk_size(size as usize)
            .insert(&["id", "name", "score"], rows)?;
        next += size;
    }
    assert_eq!(db.query_one(&probe, (0,))?.get::<i64>("n")?, next);
    assert_eq!(db.query_one(&probe, (next - 5,))?.get::<i64>("n")?, 5);
    let streamed: Vec<i64> = db
        .stream(&probe, (10,))?
        .map(|r| r?.get::<i64>("n"))
        .collect::<Result<_>>()?;
    assert_eq!(streamed, [next - 10]);
    Ok(())
}
each_backend!(
    statements_run_again_after_many_bulk_statement_sizes,
    [MySql]
);
