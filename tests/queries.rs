//! Running SQL, with identical assertions on PostgreSQL, MariaDB, an SQLite
//! file and `sqlite::memory:`: parameters, quoting and rows, batches, every
//! value type, transactions, error classification, a held connection's
//! session, the library's read-only refusal; then PostgreSQL's own syntax.
//!
//! Each test body takes the backend and runs once per backend
//! (`each_backend!`). Every test makes its own table, so the tests run in
//! parallel against one database per server.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use common::Backend;
use dbmanager::{params, DatabaseManager, Error, ErrorKind, Result, Value};
use rust_decimal::Decimal;
use serde::Deserialize;
use uuid::Uuid;

/// A table with a unique name, dropped when the test ends (pass or fail).
struct Table<'a> {
    db: &'a DatabaseManager,
    name: String,
}

impl Table<'_> {
    fn create<'a>(db: &'a DatabaseManager, columns: &str) -> Result<Table<'a>> {
        let name = common::unique_name("t");
        db.execute_batch(&format!("CREATE TABLE [{name}] ({columns})"))?;
        Ok(Table { db, name })
    }

    /// `sql` with every `{t}` replaced by the table's name.
    fn sql(&self, sql: &str) -> String {
        sql.replace("{t}", &self.name)
    }

    fn count(&self) -> Result<i64> {
        self.db
            .query_one(&self.sql("SELECT COUNT(*) AS n FROM [{t}]"), ())?
            .get("n")
    }
}

impl Drop for Table<'_> {
    fn drop(&mut self) {
        let _ = self
            .db
            .execute_batch(&format!("DROP TABLE IF EXISTS [{}]", self.name));
    }
}

/// The items table used by most tests; `order` is a reserved word, quoted
/// portably as `[order]`.
fn items(db: &DatabaseManager) -> Result<Table<'_>> {
    Table::create(
        db,
        "id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(100) NOT NULL UNIQUE, qty INTEGER, [order] INTEGER",
    )
}

fn insert_item(t: &Table<'_>, id: i64, name: &str) -> Result<u64> {
    t.db.execute(
        &t.sql("INSERT INTO [{t}] (id, name, qty, [order]) VALUES (?, ?, ?, ?)"),
        (id, name, 1, id),
    )
}

fn expect_kind<T: std::fmt::Debug>(r: Result<T>, kind: ErrorKind) -> Error {
    match r {
        Ok(v) => panic!("expected a {kind:?} error, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{e} / {e:?}");
            e
        }
    }
}

fn assert_pool_idle(db: &DatabaseManager) {
    let s = db.pool_status();
    assert_eq!(
        s.checked_out, 0,
        "every connection is back in the pool: {s:?}"
    );
}

// ------------------------------------------------------------------ the suite

#[derive(Debug, PartialEq, Deserialize)]
struct Item {
    id: i64,
    name: String,
    qty: Option<i64>,
    order: i32,
}

fn params_quoting_and_rows(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = items(&db)?;

    // `?` positional.
    let n = db.execute(
        &t.sql("INSERT INTO [{t}] (id, name, qty, [order]) VALUES (?, ?, ?, ?)"),
        (1, "apple", 3, 10),
    )?;
    assert_eq!(n, 1);
    // `:name` named, one name used twice, a NULL.
    let n = db.execute(
        &t.sql("INSERT INTO [{t}] (id, name, qty, [order]) VALUES (:id, :name, :qty, :id)"),
        params! { "id" => 2, "name" => "banana", "qty" => None::<i64> },
    )?;
    assert_eq!(n, 1);
    // Several rows in one statement.
    let n = db.execute(
        &t.sql("INSERT INTO [{t}] (id, name, qty, [order]) VALUES (?, ?, ?, ?), (?, ?, ?, ?)"),
        vec![
            Value::from(3),
            Value::from("cherry"),
            Value::from(7),
            Value::from(30),
            Value::from(4),
            Value::from("damson"),
            Value::from(9),
            Value::from(40),
        ],
    )?;
    assert_eq!(n, 2);

    // Rows and typed getters, by name (any case) and by position.
    let rows = db.execute_query(
        &t.sql("SELECT id, name, qty, [order] FROM [{t}] ORDER BY id"),
        (),
    )?;
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].get::<i64>("id")?, 1);
    assert_eq!(rows[0].get::<String>("name")?, "apple");
    assert_eq!(rows[0].get::<Option<i64>>("qty")?, Some(3));
    assert_eq!(rows[0].get::<i32>("order")?, 10);
    assert_eq!(rows[0].get::<i64>("ID")?, 1);
    assert_eq!(rows[1].get::<String>(1)?, "banana");
    assert_eq!(rows[1].get::<Option<i64>>("qty")?, None);
    assert_eq!(rows[1].get::<i64>("order")?, 2, "`:id` bound twice");
    assert_eq!(rows[1].value("qty"), Some(&Value::Null));
    assert_eq!(
        rows[0].columns().collect::<Vec<_>>(),
        ["id", "name", "qty", "order"]
    );
    expect_kind(rows[1].get::<i64>("qty"), ErrorKind::Conversion);
    expect_kind(rows[0].get::<i64>("nope"), ErrorKind::Parameter);

    // A row serialises as a JSON object, columns in select order.
    assert_eq!(
        serde_json::to_string(&rows[0]).unwrap(),
        r#"{"id":1,"name":"apple","qty":3,"order":10}"#
    );
    assert_eq!(
        serde_json::to_string(&rows[1]).unwrap(),
        r#"{"id":2,"name":"banana","qty":null,"order":2}"#
    );
    assert_eq!(rows[0].to_json(), serde_json::to_value(&rows[0]).unwrap());

    // `[ident]` as an alias too.
    let row = db.query_one(
        &t.sql("SELECT name AS [select] FROM [{t}] WHERE id = :id"),
        params! { "id" => 3 },
    )?;
    assert_eq!(row.get::<String>("select")?, "cherry");

    // query_one / query_opt; NoRows names the database as other errors do.
    let e = db
        .query_one(&t.sql("SELECT id FROM [{t}] WHERE id = ?"), (99,))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoRows, "{e}");
    assert_eq!(e.database(), Some(db.name()), "{e}");
    let held = {
        let mut conn = db.connection()?;
        conn.query_one(&t.sql("SELECT id FROM [{t}] WHERE id = ?"), (99,))
            .unwrap_err()
    };
    assert_eq!(held.database(), Some(db.name()), "{held}");
    expect_kind(
        db.query_one(&t.sql("SELECT id FROM [{t}]"), ()),
        ErrorKind::TooManyRows,
    );
    assert!(db
        .query_opt(&t.sql("SELECT id FROM [{t}] WHERE id = ?"), (99,))?
        .is_none());
    let one = db
        .query_opt(&t.sql("SELECT id FROM [{t}] WHERE name = ?"), ("damson",))?
        .expect("one row");
    assert_eq!(one.get::<i64>("id")?, 4);
    expect_kind(
        db.query_opt(&t.sql("SELECT id FROM [{t}]"), ()),
        ErrorKind::TooManyRows,
    );

    // query_as with serde.
    let got: Vec<Item> = db.query_as(
        &t.sql("SELECT id, name, qty, [order] FROM [{t}] WHERE id <= ? ORDER BY id"),
        (2,),
    )?;
    assert_eq!(
        got,
        [
            Item {
                id: 1,
                name: "apple".into(),
                qty: Some(3),
                order: 10
            },
            Item {
                id: 2,
                name: "banana".into(),
                qty: None,
                order: 2
            },
        ]
    );
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Wrong {
        id: String,
    }
    expect_kind(
        db.query_as::<Wrong>(&t.sql("SELECT id FROM [{t}]"), ()),
        ErrorKind::Conversion,
    );

    // Affected-row counts.
    assert_eq!(
        db.execute(
            &t.sql("UPDATE [{t}] SET qty = qty + 1 WHERE qty IS NOT NULL"),
            ()
        )?,
        3
    );
    assert_eq!(
        db.execute(&t.sql("UPDATE [{t}] SET qty = 0 WHERE id = ?"), (99,))?,
        0
    );
    // Rows matched, not rows changed: setting a value a row already has
    // still counts it (MySQL's default would say 0).
    assert_eq!(
        db.execute(&t.sql("UPDATE [{t}] SET name = name WHERE id <= ?"), (2,))?,
        2
    );
    assert_eq!(
        db.execute(&t.sql("DELETE FROM [{t}] WHERE id IN (?, ?)"), (3, 4))?,
        2
    );
    assert_eq!(t.count()?, 2);
    assert_pool_idle(&db);
    Ok(())
}
each_backend!(params_quoting_and_rows);

fn batch(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = items(&db)?;
    db.execute_batch(&t.sql(
        "INSERT INTO [{t}] (id, name, qty, [order]) VALUES (1, 'one', 1, 1);
         INSERT INTO [{t}] (id, name, qty, [order]) VALUES (2, 'two', 2, 2);",
    ))?;
    assert_eq!(t.count()?, 2);

    let e = expect_kind(
        db.execute_batch(&t.sql("DELETE FROM [{t}] WHERE id = ?")),
        ErrorKind::Parameter,
    );
    assert!(e.to_string().contains("execute_batch"), "{e}");
    let e = expect_kind(
        db.execute_batch(&t.sql("DELETE FROM [{t}] WHERE name = :name")),
        ErrorKind::Parameter,
    );
    assert!(
        e.to_string().contains("??"),
        "says how to write a literal `?`: {e}"
    );
    assert_eq!(t.count()?, 2, "a refused batch runs nothing");

    // Placeholders inside string literals are not placeholders.
    db.execute_batch(
        &t.sql("INSERT INTO [{t}] (id, name, qty, [order]) VALUES (3, 'what? :who [x]', 3, 3)"),
    )?;
    let row = db.query_one(&t.sql("SELECT name FROM [{t}] WHERE id = 3"), ())?;
    assert_eq!(row.get::<String>("name")?, "what? :who [x]");
    assert_pool_idle(&db);
    Ok(())
}
each_backend!(batch);

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
        Backend::SqliteFile | Backend::SqliteMemory => {
            "id INTEGER PRIMARY KEY, v_bool BOOLEAN, v_i64 INTEGER, v_f64 REAL, \
             v_dec DECIMAL(20,4), v_text TEXT, v_bytes BLOB, v_date DATE, v_time TIME, \
             v_ts TIMESTAMP, v_tstz TIMESTAMPTZ, v_uuid UUID, v_json JSON"
        }
        other => unreachable!("{other:?} does not run this suite"),
    }
}

const VALUE_COLUMNS: [&str; 12] = [
    "v_bool", "v_i64", "v_f64", "v_dec", "v_text", "v_bytes", "v_date", "v_time", "v_ts", "v_tstz",
    "v_uuid", "v_json",
];

fn every_value_round_trips(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = Table::create(&db, value_columns(b))?;

    let dec: Decimal = "12345.6789".parse().unwrap();
    let date = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    let time = NaiveTime::from_hms_micro_opt(13, 45, 30, 123_456).unwrap();
    let ts = date.and_time(time);
    let tstz = Utc.from_utc_datetime(
        &NaiveDate::from_ymd_opt(2023, 12, 31)
            .unwrap()
            .and_time(time),
    );
    let uuid = Uuid::parse_str("67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap();
    let json = serde_json::json!({"k": [1, 2.5, "x", null, true], "nested": {"a": "b"}});
    let text = "héllo, wörld ✓ 'quoted' \"double\"";
    let bytes = vec![0u8, 1, 2, 127, 128, 254, 255];
    let big = 9_007_199_254_740_993_i64; // 2^53 + 1: not exact as a double

    let sent = vec![
        Value::Bool(true),
        Value::I64(big),
        Value::F64(1234.5625),
        Value::Decimal(dec),
        Value::Text(text.into()),
        Value::Bytes(bytes.clone()),
        Value::Date(date),
        Value::Time(time),
        Value::Timestamp(ts),
        Value::TimestampTz(tstz),
        Value::Uuid(uuid),
        Value::Json(json.clone()),
    ];
    let insert = t.sql(&format!(
        "INSERT INTO [{{t}}] (id, {}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        VALUE_COLUMNS.join(", ")
    ));
    let mut row1 = vec![Value::I64(1)];
    row1.extend(sent.iter().cloned());
    assert_eq!(db.execute(&insert, row1)?, 1);
    let mut row2 = vec![Value::I64(2)];
    row2.extend(std::iter::repeat(Value::Null).take(VALUE_COLUMNS.len()));
    assert_eq!(db.execute(&insert, row2)?, 1);

    let rows = db.execute_query(
        &t.sql(&format!(
            "SELECT id, {} FROM [{{t}}] ORDER BY id",
            VALUE_COLUMNS.join(", ")
        )),
        (),
    )?;
    assert_eq!(rows.len(), 2);
    let r = &rows[0];

    // What comes back as a `Value`, column by column.
    let mut expected = sent.clone();
    if b == Backend::MySql {
        // MariaDB has no time-zone-aware column type: the UTC instant is
        // stored in DATETIME and read back as a naive timestamp (in UTC).
        expected[9] = Value::Timestamp(tstz.naive_utc());
        // MariaDB's UUID and JSON types travel as text on the wire
        // (JSON is LONGTEXT with a json_valid check).
        expected[10] = Value::Text(uuid.to_string());
        expected[11] = r.value("v_json").cloned().unwrap_or(Value::Null);
        match r.value("v_json") {
            Some(Value::Text(s)) => {
                assert_eq!(serde_json::from_str::<serde_json::Value>(s).unwrap(), json)
            }
            other => panic!("MariaDB JSON should arrive as text: {other:?}"),
        }
    }
    for (i, (col, want)) in VALUE_COLUMNS.iter().zip(&expected).enumerate() {
        assert_eq!(r.value(*col), Some(want), "column {col} ({i}) on {b:?}");
    }

    // The typed getters read every column on every backend.
    assert!(r.get::<bool>("v_bool")?);
    assert_eq!(r.get::<i64>("v_i64")?, big);
    assert_eq!(r.get::<f64>("v_f64")?, 1234.5625);
    assert_eq!(r.get::<Decimal>("v_dec")?, dec);
    assert_eq!(r.get::<String>("v_text")?, text);
    assert_eq!(r.get::<Vec<u8>>("v_bytes")?, bytes);
    assert_eq!(r.get::<NaiveDate>("v_date")?, date);
    assert_eq!(r.get::<NaiveTime>("v_time")?, time);
    assert_eq!(r.get::<NaiveDateTime>("v_ts")?, ts);
    assert_eq!(r.get::<DateTime<Utc>>("v_tstz")?, tstz);
    assert_eq!(r.get::<Uuid>("v_uuid")?, uuid);
    assert_eq!(r.get::<serde_json::Value>("v_json")?, json);

    // NULL comes back as NULL in every column, and as None.
    let n = &rows[1];
    for col in VALUE_COLUMNS {
        assert_eq!(n.value(col), Some(&Value::Null), "column {col} on {b:?}");
    }
    assert_eq!(n.get::<Option<bool>>("v_bool")?, None);
    assert_eq!(n.get::<Option<i64>>("v_i64")?, None);
    assert_eq!(n.get::<Option<f64>>("v_f64")?, None);
    assert_eq!(n.get::<Option<Decimal>>("v_dec")?, None);
    assert_eq!(n.get::<Option<String>>("v_text")?, None);
    assert_eq!(n.get::<Option<Vec<u8>>>("v_bytes")?, None);
    assert_eq!(n.get::<Option<NaiveDate>>("v_date")?, None);
    assert_eq!(n.get::<Option<NaiveTime>>("v_time")?, None);
    assert_eq!(n.get::<Option<NaiveDateTime>>("v_ts")?, None);
    assert_eq!(n.get::<Option<DateTime<Utc>>>("v_tstz")?, None);
    assert_eq!(n.get::<Option<Uuid>>("v_uuid")?, None);
    assert_eq!(n.get::<Option<serde_json::Value>>("v_json")?, None);
    expect_kind(n.get::<i64>("v_i64"), ErrorKind::Conversion);

    // Values bound as parameters compare equal to what is stored.
    let found = db.query_one(
        &t.sql(
            "SELECT id FROM [{t}] WHERE v_i64 = ? AND v_dec = ? AND v_date = ? AND v_ts = ? AND v_bytes = ?",
        ),
        (big, dec, date, ts, bytes.clone()),
    )?;
    assert_eq!(found.get::<i64>("id")?, 1);

    // The JSON form of the row.
    let j = serde_json::to_value(r).unwrap();
    assert_eq!(j["id"], 1);
    assert_eq!(j["v_i64"], big);
    assert_eq!(j["v_text"], text);
    assert_eq!(j["v_date"], "2024-02-29");
    assert_eq!(j["v_ts"], "2024-02-29T13:45:30.123456");
    assert_eq!(j["v_uuid"], uuid.to_string());
    assert_eq!(
        serde_json::to_value(n).unwrap()["v_json"],
        serde_json::Value::Null
    );
    Ok(())
}
each_backend!(every_value_round_trips);

/// `query_as` reads a DECIMAL column into an `f64` (or `f32`) field, and
/// still into a `String` or a `rust_decimal::Decimal` field; NULL into an
/// `Option` of each.
fn decimals_deserialise_into_floats_text_and_decimals(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = Table::create(
        &db,
        "id INTEGER PRIMARY KEY, amount DECIMAL(20,4) NOT NULL, maybe DECIMAL(20,4)",
    )?;
    let dec: Decimal = "12345.6789".parse().unwrap();
    let neg: Decimal = "-0.0625".parse().unwrap();
    db.execute(
        &t.sql("INSERT INTO [{t}] (id, amount, maybe) VALUES (?, ?, ?), (?, ?, ?)"),
        (1, dec, neg, 2, neg, None::<Decimal>),
    )?;
    assert!(
        matches!(
            db.query_one(&t.sql("SELECT amount FROM [{t}] WHERE id = 1"), ())?
                .value("amount"),
            Some(Value::Decimal(_))
        ),
        "the column is read as a decimal on {b:?}"
    );
    let select = t.sql("SELECT id, amount, maybe FROM [{t}] ORDER BY id");

    #[derive(Debug, Deserialize, PartialEq)]
    struct AsFloat {
        id: i64,
        amount: f64,
        maybe: Option<f64>,
    }
    let got: Vec<AsFloat> = db.query_as(&select, ())?;
    assert_eq!(
        got,
        [
            AsFloat {
                id: 1,
                amount: 12345.6789,
                maybe: Some(-0.0625)
            },
            AsFloat {
                id: 2,
                amount: -0.0625,
                maybe: None
            },
        ]
    );

    #[derive(Debug, Deserialize, PartialEq)]
    struct AsF32 {
        amount: f32,
    }
    let got: Vec<AsF32> = db.query_as(&select, ())?;
    assert_eq!(got[1], AsF32 { amount: -0.0625 });

    #[derive(Debug, Deserialize, PartialEq)]
    struct AsText {
        amount: String,
        maybe: Option<String>,
    }
    let got: Vec<AsText> = db.query_as(&select, ())?;
    assert_eq!(got[0].amount, "12345.6789");
    let maybe: Decimal = got[0].maybe.as_deref().expect("set").parse().unwrap();
    assert_eq!(maybe, neg);
    assert_eq!(got[1].maybe, None);

    #[derive(Debug, Deserialize, PartialEq)]
    struct AsDecimal {
        amount: Decimal,
        maybe: Option<Decimal>,
    }
    let got: Vec<AsDecimal> = db.query_as(&select, ())?;
    assert_eq!(
        got,
        [
            AsDecimal {
                amount: dec,
                maybe: Some(neg)
            },
            AsDecimal {
                amount: neg,
                maybe: None
            },
        ]
    );

    // A decimal without fraction reads into an integer field too (as
    // `Row::get` does): PostgreSQL's SUM of integers is a NUMERIC.
    #[derive(Debug, Deserialize, PartialEq)]
    struct Total {
        total: i64,
        half: f64,
    }
    let got: Vec<Total> = db.query_as(
        &t.sql("SELECT SUM(id) AS total, SUM(amount) / 2 AS half FROM [{t}] WHERE id = 1"),
        (),
    )?;
    assert_eq!(
        got,
        [Total {
            total: 1,
            half: 6172.83945
        }]
    );

    // The row as JSON is unchanged: decimals as text, no precision lost.
    let rows = db.execute_query(&select, ())?;
    assert_eq!(
        serde_json::to_value(&rows[0]).unwrap()["amount"],
        "12345.6789"
    );
    // A decimal is still no integer or boolean.
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct AsBool {
        amount: bool,
    }
    expect_kind(db.query_as::<AsBool>(&select, ()), ErrorKind::Conversion);
    Ok(())
}
each_backend!(decimals_deserialise_into_floats_text_and_decimals);

#[derive(Debug)]
enum AppError {
    Db(Error),
    Rule,
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Db(e)
    }
}

fn transactions(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = items(&db)?;

    // Closure: Ok commits.
    let value = db.transaction(|tx| {
        tx.execute(
            &t.sql("INSERT INTO [{t}] (id, name, qty, [order]) VALUES (?, ?, ?, ?)"),
            (1, "kept", 1, 1),
        )?;
        let inside = tx.query_one(&t.sql("SELECT COUNT(*) AS n FROM [{t}]"), ())?;
        inside.get::<i64>("n")
    })?;
    assert_eq!(value, 1);
    assert_eq!(t.count()?, 1);

    // Closure: Err (the caller's own error type) rolls back.
    let r: std::result::Result<(), AppError> = db.transaction(|tx| {
        tx.execute(
            &t.sql("INSERT INTO [{t}] (id, name, qty, [order]) VALUES (?, ?, ?, ?)"),
            (2, "rolled back", 1, 1),
        )?;
        Err(AppError::Rule)
    });
    assert!(matches!(r, Err(AppError::Rule)), "{r:?}");
    assert_eq!(t.count()?, 1, "Err rolled the insert back");

    // Closure: a failing statement's error rolls back what ran before it.
    let r: std::result::Result<(), AppError> = db.transaction(|tx| {
        insert_item_tx(tx, &t, 3, "also rolled back")?;
        tx.execute("SELEC 1", ())?;
        Ok(())
    });
    match r {
        Err(AppError::Db(e)) => assert_eq!(e.kind(), ErrorKind::Syntax, "{e}"),
        other => panic!("expected a syntax error, got {other:?}"),
    }
    assert_eq!(t.count()?, 1);

    // Closure: a panic rolls back, and the panic reaches the caller.
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        let _ = db.transaction(|tx| -> Result<()> {
            insert_item_tx(tx, &t, 4, "panicked")?;
            panic!("boom inside a transaction");
        });
    }));
    assert!(panicked.is_err(), "the panic propagates");
    assert_eq!(t.count()?, 1, "the panic rolled the insert back");
    assert_pool_idle(&db);

    // Guard: dropped without commit rolls back.
    {
        let mut tx = db.begin()?;
        insert_item_tx(&mut tx, &t, 5, "dropped")?;
        let n: i64 = tx
            .query_one(&t.sql("SELECT COUNT(*) AS n FROM [{t}]"), ())?
            .get("n")?;
        assert_eq!(n, 2, "visible inside the transaction");
    }
    assert_eq!(t.count()?, 1, "dropping the guard rolled back");

    // Guard: explicit rollback.
    let mut tx = db.begin()?;
    insert_item_tx(&mut tx, &t, 6, "rolled back explicitly")?;
    tx.rollback()?;
    assert_eq!(t.count()?, 1);

    // Guard: commit.
    let mut tx = db.begin()?;
    insert_item_tx(&mut tx, &t, 7, "committed")?;
    tx.commit()?;
    assert_eq!(t.count()?, 2);

    // A statement fails inside a guard transaction and its error is
    // ignored. PostgreSQL aborts the whole transaction, so commit() must
    // report that nothing was committed (the server itself answers COMMIT
    // with a silent ROLLBACK). MySQL and SQLite keep the transaction going,
    // and the other statements commit.
    let mut tx = db.begin()?;
    insert_item_tx(&mut tx, &t, 20, "before a failed statement")?;
    expect_kind(tx.execute("SELEC 1", ()), ErrorKind::Syntax);
    let committed = tx.commit();
    let kept = db
        .query_opt(&t.sql("SELECT id FROM [{t}] WHERE id = ?"), (20,))?
        .is_some();
    if b == Backend::Postgres {
        let e = committed.expect_err("an aborted transaction does not commit");
        assert_eq!(e.db_code(), Some("25P02"), "{e}");
        assert!(e.to_string().contains("rolled back"), "{e}");
        assert!(!kept);
    } else {
        committed?;
        assert!(kept);
        db.execute(&t.sql("DELETE FROM [{t}] WHERE id = ?"), (20,))?;
    }
    assert_eq!(t.count()?, 2);
    assert_pool_idle(&db);

    // A transaction on a checked-out connection.
    {
        let mut conn = db.connection()?;
        conn.transaction(|tx| insert_item_tx(tx, &t, 8, "on a connection").map(drop))?;
        let mut tx = conn.begin()?;
        insert_item_tx(&mut tx, &t, 9, "dropped on a connection")?;
        drop(tx);
        let n: i64 = conn
            .query_one(&t.sql("SELECT COUNT(*) AS n FROM [{t}]"), ())?
            .get("n")?;
        assert_eq!(n, 3);
    }

    // execute_transaction: all or nothing.
    let insert = t.sql("INSERT INTO [{t}] (id, name, qty, [order]) VALUES (?, ?, ?, ?)");
    let counts = db.execute_transaction(vec![
        (insert.as_str(), (10, "ten", 1, 1)),
        (insert.as_str(), (11, "eleven", 1, 1)),
    ])?;
    assert_eq!(counts, [1, 1]);
    assert_eq!(t.count()?, 5);
    let e = expect_kind(
        db.execute_transaction(vec![
            (insert.as_str(), (12, "twelve", 1, 1)),
            (insert.as_str(), (13, "ten", 1, 1)), // duplicate name
        ]),
        ErrorKind::UniqueViolation,
    );
    assert!(e.is_unique_violation());
    assert_eq!(t.count()?, 5, "the first statement is not visible");
    assert!(db
        .query_opt(&t.sql("SELECT id FROM [{t}] WHERE id = ?"), (12,))?
        .is_none());
    assert_pool_idle(&db);
    Ok(())
}
each_backend!(transactions);

fn insert_item_tx(
    tx: &mut dbmanager::Transaction<'_>,
    t: &Table<'_>,
    id: i64,
    name: &str,
) -> Result<u64> {
    tx.execute(
        &t.sql("INSERT INTO [{t}] (id, name, qty, [order]) VALUES (?, ?, ?, ?)"),
        (id, name, 1, id),
    )
}

fn errors_are_classified(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = items(&db)?;
    insert_item(&t, 1, "one")?;

    // Unique column.
    let e = expect_kind(insert_item(&t, 2, "one"), ErrorKind::UniqueViolation);
    assert!(e.is_unique_violation());
    assert!(!e.is_retryable());
    assert_eq!(e.database(), Some(db.name()));
    let want = match b {
        Backend::Postgres => "23505",
        Backend::MySql => "1062",
        Backend::SqliteFile | Backend::SqliteMemory => "SQLITE_CONSTRAINT_UNIQUE",
        other => unreachable!("{other:?} does not run this suite"),
    };
    assert_eq!(e.db_code(), Some(want), "{e}");
    // Primary key.
    let e = expect_kind(insert_item(&t, 1, "uno"), ErrorKind::UniqueViolation);
    let want = match b {
        Backend::Postgres => "23505",
        Backend::MySql => "1062",
        Backend::SqliteFile | Backend::SqliteMemory => "SQLITE_CONSTRAINT_PRIMARYKEY",
        other => unreachable!("{other:?} does not run this suite"),
    };
    assert_eq!(e.db_code(), Some(want), "{e}");
    // Another constraint: NOT NULL.
    let e = expect_kind(
        db.execute(
            &t.sql("INSERT INTO [{t}] (id, name) VALUES (?, ?)"),
            (5, None::<String>),
        ),
        ErrorKind::Constraint,
    );
    assert!(!e.is_unique_violation());
    assert!(e.db_code().is_some(), "{e:?}");

    // Syntax errors and unknown objects.
    let e = expect_kind(db.execute_query("SELEC 1", ()), ErrorKind::Syntax);
    assert!(e.db_code().is_some(), "{e:?}");
    expect_kind(
        db.execute_query("SELECT * FROM dbmanager_no_such_table", ()),
        ErrorKind::Syntax,
    );
    expect_kind(
        db.execute_batch("CREATE TABLEX y (a INTEGER)"),
        ErrorKind::Syntax,
    );

    // Parameters that do not match the placeholders.
    let e = expect_kind(
        db.execute_query("SELECT ? AS a, ? AS b", (1,)),
        ErrorKind::Parameter,
    );
    assert!(e.to_string().contains("2 `?` placeholders"), "{e}");
    expect_kind(
        db.execute_query("SELECT ? AS a", (1, 2)),
        ErrorKind::Parameter,
    );
    expect_kind(
        db.execute_query("SELECT :a AS a, :b AS b", params! { "a" => 1 }),
        ErrorKind::Parameter,
    );
    expect_kind(
        db.execute_query("SELECT :a AS a", (1,)),
        ErrorKind::Parameter,
    );
    expect_kind(
        db.execute_query("SELECT ? AS a, :b AS b", (1, 2)),
        ErrorKind::Parameter,
    );

    // Nothing above leaked a connection or broke the pool.
    assert_eq!(t.count()?, 1);
    assert_pool_idle(&db);
    Ok(())
}
each_backend!(errors_are_classified);

fn same_connection_keeps_session(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = items(&db)?;
    let mut conn = db.connection()?;
    for i in 0..20 {
        conn.execute(
            &t.sql("INSERT INTO [{t}] (id, name, qty, [order]) VALUES (?, ?, ?, ?)"),
            (i, format!("n{i}"), i, i),
        )?;
    }
    let total: i64 = conn
        .query_one(&t.sql("SELECT SUM(qty) AS s FROM [{t}]"), ())?
        .get("s")?;
    assert_eq!(total, (0..20).sum::<i64>());
    assert_eq!(db.pool_status().checked_out, 1);
    drop(conn);
    assert_pool_idle(&db);
    if b.is_sqlite() {
        // The in-memory database is shared by every connection of the pool.
        let other = db.connection()?;
        drop(other);
        assert_eq!(t.count()?, 20);
    }
    Ok(())
}
each_backend!(same_connection_keeps_session);

/// READ_ONLY: every write is refused; reads work.
fn read_only_refuses_writes(b: Backend) -> Result<()> {
    let db = b.open()?;
    let ro = db.place().manager_with("ro", |c| c.read_only(true))?;
    assert!(ro.pool_status().read_only);
    if b == Backend::SqliteMemory {
        // Another manager means another in-memory database: nothing to read.
        expect_kind(
            ro.execute_batch("CREATE TABLE x (a INTEGER)"),
            ErrorKind::ReadOnly,
        );
        return Ok(());
    }
    let t = items(&db)?;
    insert_item(&t, 1, "one")?;

    let n: i64 = ro
        .query_one(&t.sql("SELECT COUNT(*) AS n FROM [{t}]"), ())?
        .get("n")?;
    assert_eq!(n, 1, "reads work");
    let insert = t.sql("INSERT INTO [{t}] (id, name, qty, [order]) VALUES (?, ?, ?, ?)");
    let e = expect_kind(ro.execute(&insert, (2, "two", 1, 1)), ErrorKind::ReadOnly);
    // Refused by the library before reaching the server (the session-level
    // refusal behind it is tested in read_only.rs).
    assert!(e.db_code().is_none(), "{e:?}");
    expect_kind(
        ro.execute(&t.sql("UPDATE [{t}] SET qty = 5"), ()),
        ErrorKind::ReadOnly,
    );
    expect_kind(
        ro.execute(&t.sql("DELETE FROM [{t}]"), ()),
        ErrorKind::ReadOnly,
    );
    let e = ro
        .transaction(|tx| tx.execute(&insert, (3, "three", 1, 1)))
        .expect_err("refused in a transaction too");
    assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
    assert_eq!(t.count()?, 1, "nothing was written");
    assert_pool_idle(&ro);
    Ok(())
}
each_backend!(read_only_refuses_writes);

// ------------------------------------------------------- PostgreSQL only

/// `::` casts, `??` (jsonb's `?` operators), native `$1` and dollar-quoted
/// bodies pass through the portable-SQL translation untouched.
#[test]
fn postgres_casts_and_jsonb_operators_pass_through() -> Result<()> {
    let db = Backend::Postgres.open()?;
    let row = db.query_one(
        "SELECT '{\"a\":1}'::jsonb ?? 'a' AS has_a, '{\"a\":1}'::jsonb ?? 'b' AS has_b, \
                '{\"a\":1}'::jsonb ??| array['x','a'] AS any_of, ?::int + 1 AS n, '12'::text AS t",
        (41,),
    )?;
    assert!(row.get::<bool>("has_a")?);
    assert!(!row.get::<bool>("has_b")?);
    assert!(row.get::<bool>("any_of")?);
    assert_eq!(row.get::<i64>("n")?, 42);
    assert_eq!(row.get::<String>("t")?, "12");

    let row = db.query_one(
        "SELECT :v::int * 2 AS n, :v::text AS s",
        params! { "v" => "21" },
    )?;
    assert_eq!(row.get::<i64>("n")?, 42);
    assert_eq!(row.get::<String>("s")?, "21");

    // Native placeholders pass through, and a count mismatch is a Parameter error.
    let row = db.query_one("SELECT $1::int AS n", (5,))?;
    assert_eq!(row.get::<i64>("n")?, 5);
    expect_kind(
        db.query_one("SELECT $1::int AS a, $2::int AS b", (5,)),
        ErrorKind::Parameter,
    );

    // `?` inside a dollar-quoted body is not a placeholder.
    db.execute_batch("DO $$ BEGIN PERFORM 1 WHERE '?' = '?' AND 1 = 1; END $$")?;
    db.execute_batch("DO $body$ BEGIN PERFORM '[x] :y ?'; END $body$")?;
    assert_pool_idle(&db);
    Ok(())
}

/// A value bound to a PostgreSQL placeholder of another type is converted
/// when that is exact, and refused as a Parameter error otherwise: it is
/// never written in a binary format the server would misread, and the
/// connection survives.
#[test]
fn postgres_parameters_of_another_type_are_converted_or_refused() -> Result<()> {
    let db = Backend::Postgres.open()?;
    let t = Table::create(
        &db,
        "id INTEGER PRIMARY KEY, big BIGINT, small INTEGER, f DOUBLE PRECISION, \
         d DATE, ts TIMESTAMP, tz TIMESTAMPTZ, txt TEXT",
    )?;
    let date = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    let midnight = date.and_time(NaiveTime::MIN);
    let converted: [(&str, Value, Value); 8] = [
        ("big", Value::from("12345678"), Value::I64(12_345_678)),
        ("big", Value::F64(3.0), Value::I64(3)),
        ("small", Value::from(" 42 "), Value::I64(42)),
        ("f", Value::I64(2), Value::F64(2.0)),
        ("f", Value::from("2.5"), Value::F64(2.5)),
        (
            "tz",
            Value::Date(date),
            Value::TimestampTz(midnight.and_utc()),
        ),
        (
            "ts",
            Value::from("2024-02-29 00:00:00"),
            Value::Timestamp(midnight),
        ),
        ("txt", Value::Bytes(b"abc".to_vec()), Value::from("abc")),
    ];
    for (i, (col, sent, back)) in converted.into_iter().enumerate() {
        let id = i as i64 + 1;
        db.execute(
            &t.sql(&format!("INSERT INTO [{{t}}] (id, {col}) VALUES (?, ?)")),
            (id, sent.clone()),
        )?;
        let row = db.query_one(
            &t.sql(&format!("SELECT {col} FROM [{{t}}] WHERE id = ?")),
            (id,),
        )?;
        assert_eq!(row.value(col), Some(&back), "{sent:?} into {col}");
    }
    let refused: [(&str, Value); 8] = [
        ("big", Value::F64(2.5)),
        ("big", Value::Date(date)),
        ("big", Value::Bytes(vec![0, 0, 0, 0, 0, 0, 0, 7])),
        ("big", Value::from("12abc")),
        ("ts", Value::I64(1_700_000_000)),
        ("d", Value::Timestamp(midnight)),
        ("small", Value::Uuid(Uuid::nil())),
        ("f", Value::Json(serde_json::json!(1.5))),
    ];
    for (col, sent) in refused {
        let e = expect_kind(
            db.execute(
                &t.sql(&format!("INSERT INTO [{{t}}] (id, {col}) VALUES (?, ?)")),
                (100, sent.clone()),
            ),
            ErrorKind::Parameter,
        );
        assert!(
            !e.to_string().contains("12abc"),
            "no value in the message: {e}"
        );
    }
    assert_eq!(t.count()?, 8, "nothing refused was stored");
    let s = db.pool_status();
    assert_eq!(
        (s.invalid, s.checked_out),
        (0, 0),
        "no connection was broken: {s:?}"
    );
    Ok(())
}

/// A COMMIT that fails and leaves the transaction open (SQLite keeps it open
/// after a deferred foreign-key violation) is followed by a rollback: the
/// connection never goes back to the pool inside a transaction.
#[test]
fn a_failed_commit_leaves_no_transaction_open() -> Result<()> {
    let db = Backend::SqliteFile.open_with(|c| c.pool_size(1).max_overflow(0))?;
    db.execute_batch(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY); \
         CREATE TABLE child (id INTEGER PRIMARY KEY, \
           parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)",
    )?;
    let mut tx = db.begin()?;
    tx.execute("INSERT INTO child (id, parent) VALUES (1, 42)", ())?;
    let e = tx
        .commit()
        .expect_err("the deferred foreign key fails at commit");
    assert_eq!(e.kind(), ErrorKind::Constraint, "{e}");
    // The same (only) connection starts and commits a new transaction.
    db.transaction(|tx| tx.execute("INSERT INTO parent (id) VALUES (1)", ()))?;
    let n: i64 = db
        .query_one("SELECT COUNT(*) AS n FROM child", ())?
        .get("n")?;
    assert_eq!(n, 0, "the failed transaction's row is gone");
    let n: i64 = db
        .query_one("SELECT COUNT(*) AS n FROM parent", ())?
        .get("n")?;
    assert_eq!(n, 1);
    Ok(())
}

/// A database missing on the server says how to create it.
#[test]
fn a_missing_database_says_to_create_it() {
    // MySQL answers a user without rights on every database 1044 (access
    // denied) rather than 1049 (unknown database): the admin user sees 1049.
    for var in [
        "DBMANAGER_TEST_POSTGRES_URL",
        "DBMANAGER_TEST_MYSQL_ADMIN_URL",
    ] {
        let mut url = url::Url::parse(&common::required_env(var)).expect("a URL");
        url.set_path("/dbmanager_no_such_database");
        let e = common::manager_with("missing", url.as_str(), |b| {
            b.connect_timeout(std::time::Duration::from_secs(5))
        })
        .and_then(|db| db.execute_query("SELECT 1", ()))
        .expect_err("no such database");
        let text = format!("{e:?}");
        assert!(text.contains("CREATE DATABASE"), "{var}: {text}");
    }
}

/// The ordinary MySQL user, who gets 1044 (access denied to the database)
/// for a database that does not exist, is told both possible causes.
#[test]
fn a_database_the_user_may_not_use_says_what_to_check() {
    let mut url =
        url::Url::parse(&common::required_env("DBMANAGER_TEST_MYSQL_URL")).expect("a URL");
    url.set_path("/dbmanager_no_such_database");
    let e = common::manager_with("denied", url.as_str(), |b| {
        b.connect_timeout(std::time::Duration::from_secs(5))
    })
    .and_then(|db| db.execute_query("SELECT 1", ()))
    .expect_err("no such database for this user");
    assert_eq!(e.db_code(), Some("1044"), "{e:?}");
    let text = format!("{e:?}");
    assert!(text.contains("GRANT"), "{text}");
    assert!(text.contains("create the database"), "{text}");
}

/// Statements are kept prepared per connection: a kept `SELECT *` still
/// shows the columns of the table as it is when another connection added
/// one, or this one made the table again with other names; a statement
/// that failed runs again; many distinct statements (past any cache's
/// bound) each return their own result.
fn kept_statements_follow_schema_changes(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = Table::create(&db, "id INTEGER NOT NULL PRIMARY KEY, x INTEGER")?;
    db.execute(&t.sql("INSERT INTO [{t}] (id, x) VALUES (1, 10)"), ())?;
    let mut a = db.connection()?;
    let star = t.sql("SELECT * FROM [{t}]");
    let names = |r: &dbmanager::Row| r.columns().map(str::to_owned).collect::<Vec<_>>();
    let row = a.query_one(&star, ())?;
    assert_eq!(names(&row), ["id", "x"]);

    // Another connection adds a column.
    let mut other = db.connection()?;
    other.execute_batch(&t.sql("ALTER TABLE [{t}] ADD y INTEGER"))?;
    drop(other);
    let row = a.query_one(&star, ())?;
    assert_eq!(names(&row), ["id", "x", "y"]);
    assert_eq!(row.get::<i64>("x")?, 10);
    assert_eq!(row.get::<Option<i64>>("y")?, None);

    // This connection makes the table again: same count, other names.
    a.execute_batch(&t.sql("DROP TABLE [{t}]"))?;
    a.execute_batch(&t.sql("CREATE TABLE [{t}] (p INTEGER, q VARCHAR(10), r INTEGER)"))?;
    a.execute(
        &t.sql("INSERT INTO [{t}] (p, q, r) VALUES (2, 'two', 3)"),
        (),
    )?;
    let row = a.query_one(&star, ())?;
    assert_eq!(names(&row), ["p", "q", "r"]);
    assert_eq!(row.get::<String>("q")?, "two");

    // Another connection makes it again: same count and types, other names.
    let mut other = db.connection()?;
    other.execute_batch(&t.sql("DROP TABLE [{t}]"))?;
    other.execute_batch(&t.sql("CREATE TABLE [{t}] (p2 INTEGER, q2 VARCHAR(10), r2 INTEGER)"))?;
    other.execute(
        &t.sql("INSERT INTO [{t}] (p2, q2, r2) VALUES (4, 'four', 5)"),
        (),
    )?;
    drop(other);
    let row = a.query_one(&star, ())?;
    assert_eq!(names(&row), ["p2", "q2", "r2"]);
    assert_eq!(row.get::<String>("q2")?, "four");

    // 300 distinct statements, then the first ones again.
    for round in 0..2 {
        for i in 0..300_i64 {
            let v: i64 = a
                .query_one(&format!("SELECT ? + {i} AS v"), (round,))?
                .get("v")?;
            assert_eq!(v, round + i);
        }
    }

    if b.is_sqlite() {
        // A statement that fails while stepping runs again, cleanly.
        let sql = "SELECT json(?) AS j";
        let e = a.query_one(sql, ("{not json",)).unwrap_err();
        assert!(e.to_string().contains("malformed JSON"), "{e}");
        let j: String = a.query_one(sql, ("{\"k\":1}",))?.get("j")?;
        assert_eq!(j, "{\"k\":1}");
        // No statement at all, or two, is a clear error.
        let e = expect_kind(a.execute_query("  -- nothing", ()), ErrorKind::Parameter);
        assert!(e.to_string().contains("empty"), "{e}");
        let e = expect_kind(
            a.execute_query("SELECT 1; SELECT 2", ()),
            ErrorKind::Parameter,
        );
        assert!(e.to_string().contains("execute_batch"), "{e}");
    }
    drop(a);
    assert_pool_idle(&db);
    Ok(())
}
each_backend!(kept_statements_follow_schema_changes);

/// PostgreSQL: a session's prepared statements dropped under the pool
/// (`DEALLOCATE ALL`, `DISCARD ALL` run by the program) are prepared again;
/// inside a transaction, which the server aborts then, the error says to
/// run it again, and the next transaction works.
#[test]
fn postgres_statements_deallocated_under_a_connection_are_prepared_again() -> Result<()> {
    let db = Backend::Postgres.open()?;
    let mut c = db.connection()?;
    let one = |c: &mut dbmanager::PooledConnection| -> Result<i64> {
        c.query_one("SELECT 41 + 1 AS v", ())?.get("v")
    };
    assert_eq!(one(&mut c)?, 42);
    c.execute_batch("DEALLOCATE ALL")?;
    assert_eq!(one(&mut c)?, 42);
    c.execute_batch("DISCARD ALL")?;
    assert_eq!(one(&mut c)?, 42);

    c.execute_batch("DEALLOCATE ALL")?;
    let e = c
        .transaction(|tx| tx.query_one("SELECT 41 + 1 AS v", ()))
        .unwrap_err();
    assert_eq!(e.db_code(), Some("26000"), "{e}");
    assert!(e.to_string().contains("run it again"), "{e}");
    let v: i64 = c
        .transaction(|tx| tx.query_one("SELECT 41 + 1 AS v", ()))?
        .get("v")?;
    assert_eq!(v, 42);
    Ok(())
}
