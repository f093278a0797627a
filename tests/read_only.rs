//! Read-only databases, on PostgreSQL, MariaDB and SQLite: writes are
//! refused twice, by the library before they reach the server (a
//! `ReadOnly` error naming the setting), and by the session itself for the
//! writes the library's keyword check cannot see (a function with side
//! effects, `SELECT … INTO`, a `PRAGMA`). Reads keep working.
//!
//! SQL Server's read-only check in the library is tested in `tests/mssql.rs`
//! (the peer there refuses every write anyway, so the session side cannot
//! be told apart).

mod common;

use common::{Backend, Place};
use dbmanager::{DatabaseConfig, DatabaseManager, Error, ErrorKind, Result};

/// A writable manager and a read-only one on the same database, and a
/// fresh table made (with one row) through the writable one.
struct Pair {
    rw: DatabaseManager,
    ro: DatabaseManager,
    table: String,
    _place: Place,
}

impl Pair {
    fn open(b: Backend) -> Result<Pair> {
        let place = b.place();
        let rw = place.manager("rw")?;
        let ro = place.manager_with("ro", |c| c.read_only(true))?;
        let table = common::unique_name("ro_items");
        rw.execute_batch(&format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(50))"
        ))?;
        rw.execute(
            &format!("INSERT INTO {table} (id, name) VALUES (?, ?)"),
            (1, "kept"),
        )?;
        Ok(Pair {
            rw,
            ro,
            table,
            _place: place,
        })
    }

    /// The table's rows as `(id, name)`, read through the writable manager.
    fn rows(&self) -> Result<Vec<(i64, String)>> {
        self.rw
            .execute_query(
                &format!("SELECT id, name FROM {} ORDER BY id", self.table),
                (),
            )?
            .iter()
            .map(|r| Ok((r.get("id")?, r.get("name")?)))
            .collect()
    }

    fn sql(&self, template: &str) -> String {
        template.replace("{t}", &self.table)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self
            .rw
            .execute_batch(&format!("DROP TABLE IF EXISTS {}", self.table));
    }
}

fn expect_read_only<T: std::fmt::Debug>(r: Result<T>, what: &str) -> Error {
    match r {
        Err(e) if e.kind() == ErrorKind::ReadOnly => e,
        other => panic!("{what}: expected a ReadOnly error, got {other:?}"),
    }
}

fn read_only_refuses_writes(b: Backend) -> Result<()> {
    let p = Pair::open(b)?;
    let before = p.rows()?;
    assert_eq!(before, [(1, "kept".to_owned())]);
    assert!(p.ro.pool_status().read_only);
    assert!(!p.rw.pool_status().read_only);

    // Refused by the library: the error names the setting and the keyword,
    // and nothing reached the server.
    let statements = [
        "INSERT INTO {t} (id, name) VALUES (2, 'new')",
        "UPDATE {t} SET name = 'changed'",
        "DELETE FROM {t}",
        "/* a comment first */ CREATE TABLE {t}_copy (id INT)",
        "-- a line comment\n  DROP TABLE {t}",
        "WITH x AS (SELECT 2 AS id) INSERT INTO {t} (id, name) SELECT id, 'cte' FROM x",
        "SELECT 1; DELETE FROM {t}",
        "TRUNCATE TABLE {t}",
    ];
    for sql in statements {
        let sql = p.sql(sql);
        let e = expect_read_only(p.ro.execute(&sql, ()), &sql);
        assert!(e.to_string().contains("read-only"), "{e}");
        assert!(
            e.to_string().contains("read_only(true)"),
            "names the setting: {e}"
        );
        assert_eq!(e.db_code(), None, "refused before the server: {e}");
    }
    let e = expect_read_only(
        p.ro.execute_batch(&p.sql("INSERT INTO {t} (id, name) VALUES (3, 'batch')")),
        "batch",
    );
    assert!(e.to_string().contains("INSERT"), "{e}");
    expect_read_only(
        p.ro.transaction(|tx| tx.execute(&p.sql("DELETE FROM {t} WHERE id = ?"), (1,))),
        "in a transaction",
    );
    assert_eq!(p.rows()?, before, "the table is unchanged");

    // Reads still work, alone and in a transaction.
    let n: i64 =
        p.ro.query_one(&p.sql("SELECT COUNT(*) AS n FROM {t}"), ())?
            .get("n")?;
    assert_eq!(n, 1);
    let name: String = p.ro.transaction(|tx| {
        tx.query_one(&p.sql("SELECT name FROM {t} WHERE id = ?"), (1,))?
            .get("name")
    })?;
    assert_eq!(name, "kept");
    let rows = p.ro.execute_query(
        &p.sql("WITH x AS (SELECT id FROM {t}) SELECT COUNT(*) AS n FROM x"),
        (),
    )?;
    assert_eq!(rows[0].get::<i64>("n")?, 1);

    // Writes the keyword check cannot see are refused by the session.
    match b {
        Backend::Postgres => {
            p.rw.execute_batch(&p.sql(
                "CREATE FUNCTION {t}_add() RETURNS int LANGUAGE sql AS \
                 $$ INSERT INTO {t} (id, name) VALUES (99, 'slipped') RETURNING 1 $$",
            ))?;
            let e = expect_read_only(
                p.ro.execute_query(&p.sql("SELECT {t}_add() AS one"), ()),
                "a function with side effects",
            );
            assert_eq!(e.db_code(), Some("25006"), "refused by the server: {e}");
            let e = expect_read_only(
                p.ro.execute(&p.sql("SELECT * INTO {t}_copy FROM {t}"), ()),
                "SELECT INTO",
            );
            assert_eq!(e.db_code(), Some("25006"), "{e}");
            p.rw.execute_batch(&p.sql("DROP FUNCTION {t}_add()"))?;
        }
        Backend::MySql => {
            p.rw.execute_batch(&p.sql(
                "CREATE FUNCTION {t}_add() RETURNS INT MODIFIES SQL DATA \
                 BEGIN INSERT INTO {t} (id, name) VALUES (99, 'slipped'); RETURN 1; END",
            ))?;
            let e = expect_read_only(
                p.ro.execute_query(&p.sql("SELECT {t}_add() AS one"), ()),
                "a function with side effects",
            );
            assert_eq!(e.db_code(), Some("1792"), "refused by the server: {e}");
            p.rw.execute_batch(&p.sql("DROP FUNCTION {t}_add"))?;
        }
        Backend::SqliteFile => {
            let e = expect_read_only(
                p.ro.execute("PRAGMA user_version = 7", ()),
                "a PRAGMA that writes the file",
            );
            assert!(e.db_code().is_some(), "refused by SQLite: {e}");
            let v: i64 = p.rw.query_one("PRAGMA user_version", ())?.get(0)?;
            assert_eq!(v, 0);
        }
        other => unreachable!("{other:?} does not run this test"),
    }
    assert_eq!(p.rows()?, before, "the table is unchanged");
    Ok(())
}

each_backend!(read_only_refuses_writes, [Postgres, MySql, SqliteFile]);

#[test]
fn the_environment_variable_turns_it_on_and_is_named() -> Result<()> {
    let dir = common::TempDir::new("dbmanager-ro-env");
    let url = dir.sqlite_url("env.db");
    let rw = common::manager(&common::unique_name("rw"), &url)?;
    rw.execute_batch("CREATE TABLE t (id INT)")?;
    let cfg = DatabaseConfig::from_lookup("reports", |k| match k {
        "DEVELOPMENT_GLOBAL_REPORTS_CONNECTION_STRING" => Some(url.clone()),
        "DEVELOPMENT_GLOBAL_REPORTS_READ_ONLY" => Some("true".into()),
        _ => None,
    })?;
    assert!(cfg.read_only());
    let ro = DatabaseManager::from_config(cfg)?;
    let e = expect_read_only(ro.execute("INSERT INTO t VALUES (1)", ()), "insert");
    assert!(
        e.to_string()
            .contains("DEVELOPMENT_GLOBAL_REPORTS_READ_ONLY=true"),
        "{e}"
    );
    let n: i64 = ro.query_one("SELECT COUNT(*) AS n FROM t", ())?.get("n")?;
    assert_eq!(n, 0);
    Ok(())
}
