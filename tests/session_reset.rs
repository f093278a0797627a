//! A pooled connection's session, changed by one borrower, is put back
//! before the next borrower gets it: temporary tables, `SET ROLE`,
//! `search_path` and other settings, `USE other_db`, a `BEGIN` left open.
//! Each test has a pool of one connection, so that the next borrower gets
//! the same connection (reset in place on PostgreSQL and MariaDB: the same
//! server session; closed and opened anew where a backend has no reset).
//!
//! A plain `SELECT` on a connection of its own never costs a reset.

mod common;

use common::{Backend, Db};
use dbmanager::{BackendKind, DatabaseManager, PooledConnection, Result};

/// A manager whose pool holds one connection.
fn one_connection(b: Backend) -> Result<Db> {
    b.open_with(|c| {
        let c = c.pool_size(1).max_overflow(0);
        if b == Backend::PgBouncer {
            c.pgbouncer(true)
        } else {
            c
        }
    })
}

/// The server's id of the session behind the manager's one connection.
fn session_id(b: Backend, db: &DatabaseManager) -> Result<Option<i64>> {
    match b.kind() {
        BackendKind::Postgres | BackendKind::MySql if b != Backend::PgBouncer => {
            Ok(Some(db.query_one(b.session_id_sql(), ())?.get("id")?))
        }
        _ => Ok(None),
    }
}

/// Changes every kind of session state the backend has, on `conn`, and
/// leaves a transaction open.
fn dirty(b: Backend, conn: &mut PooledConnection, tmp: &str) -> Result<()> {
    match b {
        Backend::Postgres => {
            let me: String = conn
                .query_one("SELECT CAST(current_user AS TEXT) AS u", ())?
                .get("u")?;
            conn.execute_batch(&format!(
                "CREATE TEMP TABLE {tmp} (id INT); SET search_path = pg_catalog; \
                 SET ROLE \"{me}\"; SET application_name = 'leaked'; PREPARE {tmp}_p AS SELECT 1"
            ))?;
            conn.execute_batch("BEGIN")?;
            conn.execute("SELECT 1", ())?;
        }
        Backend::MySql => {
            conn.execute_batch(&format!(
                "CREATE TEMPORARY TABLE {tmp} (id INT); SET @leaked = 1; \
                 SET SESSION sql_mode = 'ANSI_QUOTES'; USE information_schema"
            ))?;
            conn.execute_batch("START TRANSACTION")?;
        }
        Backend::SqliteFile | Backend::SqliteMemory => {
            conn.execute_batch(&format!(
                "CREATE TEMP TABLE {tmp} (id INT); PRAGMA foreign_keys = OFF"
            ))?;
            conn.execute_batch("BEGIN")?;
        }
        Backend::MsSql => {
            conn.execute_batch(&format!("CREATE TABLE #{tmp} (id int)"))?;
            conn.execute_batch("BEGIN TRANSACTION")?;
        }
        Backend::PgBouncer => {
            // Session settings are pgbouncer's to reset; a transaction left
            // open is ours.
            conn.execute_batch("BEGIN")?;
            conn.execute("SELECT 1", ())?;
        }
    }
    Ok(())
}

/// Asserts that the next borrower sees none of what [`dirty`] did.
fn assert_clean(b: Backend, db: &DatabaseManager, tmp: &str) -> Result<()> {
    let mut conn = db.connection()?;
    match b {
        Backend::Postgres | Backend::PgBouncer => {
            // SAVEPOINT is refused outside a transaction block (25P01).
            let e = conn
                .execute_batch("SAVEPOINT probe")
                .expect_err("a transaction left open reached the next borrower");
            assert_eq!(e.db_code(), Some("25P01"), "{b:?}: {e}");
            if b == Backend::Postgres {
                let path: String = conn.query_one("SHOW search_path", ())?.get(0)?;
                assert_eq!(path, "\"$user\", public", "search_path leaked");
                let role: String = conn.query_one("SHOW role", ())?.get(0)?;
                assert_eq!(role, "none", "SET ROLE leaked");
                let app: String = conn.query_one("SHOW application_name", ())?.get(0)?;
                assert_ne!(app, "leaked", "a setting leaked");
                let gone: bool = conn
                    .query_one(
                        "SELECT to_regclass(?) IS NULL AS gone",
                        (format!("pg_temp.{tmp}"),),
                    )?
                    .get("gone")?;
                assert!(gone, "a temporary table leaked");
                let prepared: i64 = conn
                    .query_one(
                        "SELECT COUNT(*) AS n FROM pg_prepared_statements WHERE from_sql",
                        (),
                    )?
                    .get("n")?;
                assert_eq!(prepared, 0, "a PREPAREd statement leaked");
            }
        }
        Backend::MySql => {
            let row = conn.query_one(
                "SELECT DATABASE() AS db, @leaked AS leaked, @@in_transaction AS tx, \
                 @@SESSION.sql_mode = @@GLOBAL.sql_mode AS default_mode",
                (),
            )?;
            assert_eq!(
                row.get::<Option<String>>("db")?.as_deref(),
                Some("appdb"),
                "USE leaked"
            );
            assert_eq!(
                row.get::<Option<i64>>("leaked")?,
                None,
                "a user variable leaked"
            );
            assert_eq!(row.get::<i64>("tx")?, 0, "a transaction left open leaked");
            assert!(row.get::<bool>("default_mode")?, "sql_mode leaked");
            let e = conn
                .execute_query(&format!("SELECT COUNT(*) FROM {tmp}"), ())
                .expect_err("the temporary table is gone");
            assert_eq!(e.db_code(), Some("1146"), "{e}");
        }
        Backend::SqliteFile | Backend::SqliteMemory => {
            let fk: i64 = conn.query_one("PRAGMA foreign_keys", ())?.get(0)?;
            assert_eq!(fk, 1, "a PRAGMA leaked");
            let n: i64 = conn
                .query_one(
                    "SELECT COUNT(*) AS n FROM temp.sqlite_master WHERE name = ?",
                    (tmp,),
                )?
                .get("n")?;
            assert_eq!(n, 0, "a temporary table leaked");
            conn.execute_batch("BEGIN; ROLLBACK")
                .expect("no transaction is open (SQLite refuses a nested BEGIN)");
        }
        Backend::MsSql => {
            let n: i64 = conn.query_one("SELECT @@TRANCOUNT AS n", ())?.get("n")?;
            assert_eq!(n, 0, "a transaction left open leaked");
            conn.execute_query(&format!("SELECT COUNT(*) AS n FROM #{tmp}"), ())
                .expect_err("the temporary table is gone");
        }
    }
    Ok(())
}

/// Session state made through a held connection (a guard), and a
/// transaction it left open, do not reach the next borrower of the same
/// pooled connection.
fn a_guards_session_state_does_not_reach_the_next_borrower(b: Backend) -> Result<()> {
    let _guard = (b == Backend::MsSql).then(common::shared);
    let db = one_connection(b)?;
    let tmp = common::unique_name("tmp");
    let before = session_id(b, &db)?;
    {
        let mut conn = db.connection()?;
        dirty(b, &mut conn, &tmp)?;
    }
    assert_clean(b, &db, &tmp)?;
    // Reset in place where the backend can: the same server session.
    assert_eq!(
        session_id(b, &db)?,
        before,
        "the session was reset, not replaced"
    );
    assert_eq!(db.pool_status().checked_out, 0);
    Ok(())
}

each_backend!(
    a_guards_session_state_does_not_reach_the_next_borrower,
    [Postgres, MySql, SqliteFile, SqliteMemory, MsSql, PgBouncer]
);

/// The same through the manager's own calls, each on a connection checked
/// out for it: a script's settings and a `BEGIN` left open by one call do
/// not reach the next call; and a write after it is committed, not left in
/// the other call's transaction.
fn a_scripts_session_state_does_not_reach_the_next_call(b: Backend) -> Result<()> {
    let db = one_connection(b)?;
    let table = common::unique_name("reset");
    db.execute_batch(&format!("CREATE TABLE {table} (id INT)"))?;
    match b.kind() {
        BackendKind::Postgres if b == Backend::Postgres => {
            db.execute_batch("SET search_path = pg_catalog")?;
            let path: String = db.query_one("SHOW search_path", ())?.get(0)?;
            assert_eq!(path, "\"$user\", public", "search_path leaked");
        }
        BackendKind::MySql => {
            db.execute_batch("SET @leaked = 1")?;
            let v: Option<i64> = db.query_one("SELECT @leaked AS v", ())?.get("v")?;
            assert_eq!(v, None, "a user variable leaked");
        }
        BackendKind::Sqlite => {
            db.execute_batch("PRAGMA foreign_keys = OFF")?;
            let fk: i64 = db.query_one("PRAGMA foreign_keys", ())?.get(0)?;
            assert_eq!(fk, 1, "a PRAGMA leaked");
        }
        _ => {}
    }
    let begin = if b.kind() == BackendKind::MySql {
        "START TRANSACTION"
    } else {
        "BEGIN"
    };
    db.execute_batch(begin)?;
    db.execute(&format!("INSERT INTO {table} (id) VALUES (1)"), ())?;
    // Seen from another connection: committed, not held in an open transaction.
    let other = db.place().manager_with("reset_other", |c| {
        if b == Backend::PgBouncer {
            c.pgbouncer(true)
        } else {
            c
        }
    })?;
    if b != Backend::SqliteMemory {
        let n: i64 = other
            .query_one(&format!("SELECT COUNT(*) AS n FROM {table}"), ())?
            .get("n")?;
        assert_eq!(
            n, 1,
            "the insert ran in a transaction another call left open"
        );
    }
    db.execute_batch(&format!("DROP TABLE {table}"))?;
    Ok(())
}

each_backend!(
    a_scripts_session_state_does_not_reach_the_next_call,
    [Postgres, MySql, SqliteFile, SqliteMemory, PgBouncer]
);

/// A plain read on a connection of its own costs no reset: a `SELECT`
/// that changes a setting (which the statement classifier cannot see) is
/// kept by the session, proof that no reset ran after it; a script is reset.
#[test]
fn a_plain_select_costs_no_reset() -> Result<()> {
    let db = one_connection(Backend::Postgres)?;
    db.query_one(
        "SELECT set_config('application_name', 'kept_by_a_read', false) AS v",
        (),
    )?;
    let app: String = db.query_one("SHOW application_name", ())?.get(0)?;
    assert_eq!(app, "kept_by_a_read", "a plain read paid for a reset");
    db.execute_batch("SET application_name = 'set_by_a_script'")?;
    let app: String = db.query_one("SHOW application_name", ())?.get(0)?;
    assert_ne!(app, "set_by_a_script", "a script's setting leaked");
    Ok(())
}

/// What the backend sets at connect (READ_ONLY's session setting) is set
/// again by the reset: the server still refuses writes the library's own
/// check cannot see.
fn read_only_survives_the_reset(b: Backend) -> Result<()> {
    let db = b.open_with(|c| c.pool_size(1).max_overflow(0).read_only(true))?;
    {
        let mut conn = db.connection()?;
        match b.kind() {
            BackendKind::Postgres => {
                conn.execute_batch("SET default_transaction_read_only = off")?
            }
            BackendKind::MySql => conn.execute_batch("SET SESSION TRANSACTION READ WRITE")?,
            _ => conn.execute_batch("PRAGMA query_only = OFF")?,
        }
    }
    let on = match b.kind() {
        BackendKind::Postgres => {
            db.query_one("SHOW default_transaction_read_only", ())?
                .get::<String>(0)?
                == "on"
        }
        BackendKind::MySql => db
            .query_one("SELECT @@tx_read_only AS v", ())?
            .get::<bool>("v")?,
        _ => db.query_one("PRAGMA query_only", ())?.get::<bool>(0)?,
    };
    assert!(on, "{b:?}: the read-only session setting was lost");
    Ok(())
}

each_backend!(read_only_survives_the_reset, [Postgres, MySql, SqliteFile]);
