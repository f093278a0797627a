//! Migration scripts run as the servers' own clients run them, on real
//! servers: MySQL `DELIMITER` routines, PostgreSQL `COPY … FROM stdin`,
//! SQLite trigger bodies, session state that must not leak from one script
//! to the next, multi-statement no-transaction scripts, jsonb `?`,
//! subfolders, Flyway callbacks, placeholders, and the lock wait bound.
//!
//! SQL Server is not covered here: the test peer (pysqlbridge) is read-only,
//! so it can run no migration; the `GO` splitting is unit-tested.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{manager, unique_name, Backend};
use dbmanager::migrate::{checksum, MigrateOptions, MigrationProblem};
use dbmanager::{DatabaseConfig, DatabaseManager, ErrorKind, Result};

use common::migration::Case;

// ---------------------------------------------------------------- MySQL

#[test]
fn mariadb_delimiter_procedures_triggers_and_events() -> Result<()> {
    let c = Case::new(Backend::MySql, "s");
    c.write(
        "V1__routines.sql",
        "# tables first; a # comment; with semicolons\n\
         CREATE TABLE {t}_n (id INT PRIMARY KEY AUTO_INCREMENT, v INT, note VARCHAR(40));\n\
         DELIMITER //\n\
         CREATE PROCEDURE {t}_add(IN x INT)\n\
         BEGIN\n\
           DECLARE i INT DEFAULT 0;\n\
           WHILE i < x DO\n\
             INSERT INTO {t}_n (v, note) VALUES (i, 'from; the // procedure');\n\
             SET i = i + 1;\n\
           END WHILE;\n\
         END //\n\
         DELIMITER $$\n\
         CREATE TRIGGER {t}_tr BEFORE INSERT ON {t}_n FOR EACH ROW\n\
         BEGIN\n\
           IF NEW.v IS NULL THEN SET NEW.v = -1; END IF;\n\
         END$$\n\
         DELIMITER |\n\
         CREATE EVENT {t}_ev ON SCHEDULE EVERY 1 DAY DISABLE DO\n\
         BEGIN\n\
           DELETE FROM {t}_n WHERE v < -100;\n\
         END |\n\
         DELIMITER ;\n\
         CALL {t}_add(3);\n",
    );
    // Without DELIMITER: the body is one statement, as Flyway reads it.
    c.write(
        "V2__plain_function.sql",
        "CREATE FUNCTION {t}_twice(x INT) RETURNS INT DETERMINISTIC\n\
         BEGIN\n\
           DECLARE y INT;\n\
           SET y = IF(x > 0, x * 2, 0);\n\
           RETURN y;\n\
         END;\n\
         INSERT INTO {t}_n (v, note) VALUES (NULL, 'trigger fills v');\n",
    );
    let db = c.db();
    assert_eq!(db.run_migrations()?.applied.len(), 2);
    assert_eq!(c.scalar::<i64>(&db, "SELECT COUNT(*) AS v FROM {t}_n"), 4);
    assert_eq!(
        c.scalar::<i64>(&db, "SELECT v FROM {t}_n WHERE note = 'trigger fills v'"),
        -1
    );
    assert_eq!(c.scalar::<i64>(&db, "SELECT {t}_twice(21) AS v"), 42);
    let events: i64 = c.scalar(
        &db,
        &format!(
            "SELECT COUNT(*) AS v FROM information_schema.events WHERE event_name = '{}_ev'",
            c.t
        ),
    );
    assert_eq!(events, 1);
    Ok(())
}

#[test]
fn mariadb_use_in_one_script_does_not_reach_the_next() -> Result<()> {
    let c = Case::new(Backend::MySql, "s");
    let admin = manager("admin", &Backend::MySql.admin_url())?;
    let other = unique_name("otherdb");
    let app_db: String = admin
        .query_one("SELECT DATABASE() AS v", ())?
        .get::<Option<String>>("v")?
        .unwrap_or_default();
    let db = c.db();
    let app_user: String = db
        .query_one("SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1) AS v", ())?
        .get("v")?;
    admin.execute_batch(&format!(
        "CREATE DATABASE {other}; GRANT ALL PRIVILEGES ON {other}.* TO '{app_user}'@'%'"
    ))?;
    let _ = app_db;
    c.write(
        "V1__elsewhere.sql",
        &format!("USE {other};\nCREATE TABLE {{t}}_elsewhere (id INT);\n"),
    );
    c.write("V2__here.sql", "CREATE TABLE {t}_here (id INT);\n");
    let result = db.run_migrations();
    let here_in_other: i64 = admin
        .query_one(
            "SELECT COUNT(*) AS v FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            (other.as_str(), format!("{}_here", c.t)),
        )?
        .get("v")?;
    admin.execute_batch(&format!("DROP DATABASE {other}"))?;
    assert_eq!(result?.applied.len(), 2);
    assert_eq!(here_in_other, 0, "V2's table did not land in V1's database");
    assert!(c.exists(&db, "{t}_here"));
    // The history row is in the configured database too.
    assert_eq!(db.migration_status()?.applied.len(), 2);
    Ok(())
}

// ---------------------------------------------------------------- PostgreSQL

#[test]
fn postgres_copy_from_stdin_loads_its_data() -> Result<()> {
    let c = Case::new(Backend::Postgres, "s");
    c.write(
        "V1__load.sql",
        "CREATE TABLE {t}_people (id INT, name TEXT, note TEXT);\n\
         COPY {t}_people (id, name, note) FROM stdin;\n\
         1\tAda\tfirst; with a semicolon\n\
         2\tBob\t\\N\n\
         3\tC\\tD\tback\\\\slash and\\nnewline\n\
         \\.\n\
         CREATE TABLE {t}_after (id INT);\n\
         INSERT INTO {t}_after SELECT count(*) FROM {t}_people;\n",
    );
    let db = c.db();
    assert_eq!(db.run_migrations()?.applied.len(), 1);
    assert_eq!(c.scalar::<i64>(&db, "SELECT id AS v FROM {t}_after"), 3);
    let rows = db.execute_query(
        &format!("SELECT id, name, note FROM {}_people ORDER BY id", c.t),
        (),
    )?;
    assert_eq!(rows[0].get::<String>("note")?, "first; with a semicolon");
    assert_eq!(rows[1].get::<Option<String>>("note")?, None);
    assert_eq!(rows[2].get::<String>("name")?, "C\tD");
    assert_eq!(rows[2].get::<String>("note")?, "back\\slash and\nnewline");
    Ok(())
}

#[test]
fn postgres_copy_failure_rolls_the_script_back() -> Result<()> {
    let c = Case::new(Backend::Postgres, "s");
    c.write(
        "V1__bad_load.sql",
        "CREATE TABLE {t}_n (id INT);\nCOPY {t}_n FROM stdin;\n1\nnot a number\n\\.\n",
    );
    let db = c.db();
    let e = db.run_migrations().expect_err("bad data");
    let text = e.to_string();
    assert!(
        text.contains("statement 2 of 2")
            && text.contains("line 2")
            && text.contains("nothing of it remains"),
        "{text}"
    );
    assert!(!c.exists(&db, "{t}_n"));
    Ok(())
}

#[test]
fn postgres_set_role_does_not_reach_the_next_script_or_the_history() -> Result<()> {
    let c = Case::new(Backend::Postgres, "s");
    let admin = manager("admin", &Backend::Postgres.admin_url())?;
    let db = c.db();
    let me: String = db
        .query_one("SELECT CAST(current_user AS TEXT) AS v", ())?
        .get("v")?;
    let role = unique_name("role");
    admin.execute_batch(&format!(
        "CREATE ROLE {role} NOLOGIN; GRANT {role} TO \"{me}\"; GRANT CREATE ON SCHEMA public TO {role}"
    ))?;
    c.write(
        "V1__as_role.sql",
        &format!("SET ROLE {role};\nCREATE TABLE {{t}}_by_role (id INT);\nSET search_path = pg_catalog;\n"),
    );
    c.write("V2__after.sql", "CREATE TABLE {t}_after (id INT);\n");
    let result = db.run_migrations();
    let owners = db.execute_query(
        "SELECT tablename AS t, CAST(tableowner AS TEXT) AS o FROM pg_tables WHERE tablename IN (?, ?) ORDER BY tablename",
        (format!("{}_after", c.t), format!("{}_by_role", c.t)),
    );
    let status = db.migration_status();
    let _ = admin.execute_batch(&format!(
        "DROP TABLE IF EXISTS public.{t}_by_role; DROP OWNED BY {role}; DROP ROLE {role}",
        t = c.t
    ));
    assert_eq!(result?.applied.len(), 2);
    let owners = owners?;
    assert_eq!(owners.len(), 2, "{owners:?}");
    assert_eq!(
        owners[0].get::<String>("o")?,
        me,
        "V2 ran as the migrator, not the role"
    );
    assert_eq!(owners[1].get::<String>("o")?, role);
    for row in status?.applied {
        assert_eq!(row.installed_by, me, "history written as the migrator");
    }
    Ok(())
}

#[test]
fn postgres_jsonb_question_mark_runs_as_written() -> Result<()> {
    let c = Case::new(Backend::Postgres, "s");
    c.write(
        "V1__json.sql",
        "CREATE TABLE {t}_docs (id INT, data JSONB);\n\
         INSERT INTO {t}_docs VALUES (1, '{\"k\": 1}'), (2, '{\"j\": 2}');\n\
         CREATE VIEW {t}_with_k AS SELECT id FROM {t}_docs WHERE data ? 'k' AND data ?| array['k', 'x'];\n\
         SELECT 1 WHERE '{}'::jsonb ?& array[]::text[];\n",
    );
    let db = c.db();
    assert_eq!(db.run_migrations()?.applied.len(), 1);
    assert_eq!(
        c.scalar::<i64>(&db, "SELECT COUNT(*) AS v FROM {t}_with_k"),
        1
    );
    Ok(())
}

#[test]
fn postgres_no_transaction_script_runs_statement_by_statement() -> Result<()> {
    let c = Case::new(Backend::Postgres, "s");
    c.write(
        "V1__index.sql",
        "-- dbmanager:no-transaction\n\
         CREATE TABLE {t}_big (id INT, v TEXT);\n\
         INSERT INTO {t}_big SELECT g, 'x' FROM generate_series(1, 100) g;\n\
         CREATE INDEX CONCURRENTLY {t}_big_id ON {t}_big (id);\n\
         VACUUM (ANALYZE) {t}_big;\n",
    );
    let db = c.db();
    assert_eq!(db.run_migrations()?.applied.len(), 1);
    let n: i64 = db
        .query_one(
            "SELECT COUNT(*) AS v FROM pg_indexes WHERE indexname = ?",
            (format!("{}_big_id", c.t),),
        )?
        .get("v")?;
    assert_eq!(n, 1);
    // A failure says which statements ran and stay, and is recorded.
    c.write(
        "V2__half.sql",
        "-- dbmanager:no-transaction\n\
         CREATE TABLE {t}_one (id INT);\n\
         CREATE INDEX CONCURRENTLY {t}_one_id ON {t}_one (id);\n\
         \n\
         CREATE TABLX {t}_typo (id INT);\n\
         CREATE TABLE {t}_never (id INT);\n",
    );
    let e = db.run_migrations().expect_err("V2 fails");
    let text = e.to_string();
    assert!(
        text.contains("statement 3 of 4")
            && text.contains("line 5")
            && text.contains("CREATE TABLX")
            && text.contains("statements 1–2 of 4 ran and stay")
            && text.contains("repair"),
        "{text}"
    );
    assert!(!text.contains("nothing of it remains"), "{text}");
    assert!(c.exists(&db, "{t}_one") && !c.exists(&db, "{t}_never"));
    let status = db.migration_status()?;
    assert!(matches!(
        status.problems[0],
        MigrationProblem::Failed { .. }
    ));
    Ok(())
}

#[test]
fn postgres_script_with_its_own_commit_is_told_truthfully() -> Result<()> {
    let c = Case::new(Backend::Postgres, "s");
    c.write(
        "V1__own_tx.sql",
        "CREATE TABLE {t}_a (id INT);\n\
         BEGIN;\n\
         INSERT INTO {t}_a VALUES (1);\n\
         COMMIT;\n\
         BEGIN;\n\
         INSERT INTO {t}_a VALUES (2);\n\
         INSERT INTO {t}_missing VALUES (3);\n\
         COMMIT;\n",
    );
    let db = c.db();
    let e = db.run_migrations().expect_err("fails after a COMMIT");
    let text = e.to_string();
    assert!(!text.contains("nothing of it remains"), "{text}");
    assert!(
        text.contains("statement 7 of 8")
            && text.contains("BEGIN at line 5 on were rolled back")
            && text.contains("statements 1–4 of 8"),
        "{text}"
    );
    assert_eq!(c.scalar::<i64>(&db, "SELECT COUNT(*) AS v FROM {t}_a"), 1);
    Ok(())
}

// ---------------------------------------------------------------- SQLite

#[test]
fn sqlite_trigger_bodies_are_one_statement() -> Result<()> {
    let c = Case::new(Backend::SqliteFile, "s");
    c.write(
        "V1__trigger.sql",
        "CREATE TABLE {t}_n (id INTEGER PRIMARY KEY, v INTEGER, kind TEXT);\n\
         CREATE TABLE {t}_audit (n_id INTEGER, what TEXT);\n\
         CREATE TRIGGER {t}_tr AFTER INSERT ON {t}_n\n\
         BEGIN\n\
           INSERT INTO {t}_audit VALUES (new.id, 'insert; logged');\n\
           UPDATE {t}_n SET kind = CASE WHEN new.v > 0 THEN 'pos' ELSE 'neg' END WHERE id = new.id;\n\
         END;\n\
         INSERT INTO {t}_n (v) VALUES (5), (-5);\n",
    );
    let db = c.db();
    assert_eq!(db.run_migrations()?.applied.len(), 1);
    assert_eq!(
        c.scalar::<i64>(&db, "SELECT COUNT(*) AS v FROM {t}_audit"),
        2
    );
    assert_eq!(
        c.scalar::<String>(&db, "SELECT kind AS v FROM {t}_n WHERE v < 0"),
        "neg"
    );
    Ok(())
}

// ---------------------------------------------------------------- every backend

fn subfolders_are_scanned_and_duplicates_refused(b: Backend) -> Result<()> {
    let c = Case::new(b, "s");
    c.write("base/V1__create.sql", "CREATE TABLE {t}_a (id INT);\n");
    c.write(
        "later/deeper/V1_1__fill.sql",
        "INSERT INTO {t}_a VALUES (1);\n",
    );
    c.write("V2__top.sql", "INSERT INTO {t}_a VALUES (2);\n");
    let db = c.db();
    let report = db.run_migrations()?;
    let scripts: Vec<&str> = report.applied.iter().map(|s| s.script.as_str()).collect();
    assert_eq!(
        scripts,
        [
            "base/V1__create.sql",
            "later/deeper/V1_1__fill.sql",
            "V2__top.sql"
        ]
    );
    assert_eq!(c.scalar::<i64>(&db, "SELECT COUNT(*) AS v FROM {t}_a"), 2);
    c.write("other/V001_1__again.sql", "SELECT 1;\n");
    let e = db.run_migrations().expect_err("duplicate version");
    let text = e.to_string();
    assert!(
        text.contains("later/deeper/V1_1__fill.sql") && text.contains("other/V001_1__again.sql"),
        "{text}"
    );
    Ok(())
}
each_backend!(
    subfolders_are_scanned_and_duplicates_refused,
    [Postgres, MySql, SqliteFile]
);

fn callbacks_run_at_their_events(b: Backend) -> Result<()> {
    let c = Case::new(b, "s");
    let db = c.db();
    db.execute_batch(&format!(
        "CREATE TABLE {}_log (n INT, what VARCHAR(40))",
        c.t
    ))?;
    let log = |what: &str| {
        format!("INSERT INTO {{t}}_log (n, what) SELECT COALESCE(MAX(n), 0) + 1, '{what}' FROM {{t}}_log;\n")
    };
    c.write("beforeMigrate.sql", &log("beforeMigrate"));
    c.write("callbacks/beforeEachMigrate.sql", &log("beforeEach"));
    c.write("callbacks/afterEachMigrate__log.sql", &log("afterEach"));
    c.write("afterMigrate.sql", &log("afterMigrate"));
    c.write("afterMigrateError.sql", &log("afterMigrateError"));
    c.write("afterEachMigrateError.sql", &log("afterEachError"));
    c.write("beforeValidate.sql", &log("beforeValidate"));
    c.write("V1__one.sql", &log("V1"));
    c.write("V2__two.sql", &log("V2"));
    // Neither a migration nor a callback: skipped with a warning.
    c.write("notes.sql", "this is not SQL at all");
    let order = |db: &DatabaseManager| -> Result<Vec<String>> {
        db.execute_query(&format!("SELECT what FROM {}_log ORDER BY n", c.t), ())?
            .iter()
            .map(|r| r.get::<String>("what"))
            .collect()
    };
    assert_eq!(db.run_migrations()?.applied.len(), 2);
    assert_eq!(
        order(&db)?,
        [
            "beforeMigrate",
            "beforeEach",
            "V1",
            "afterEach",
            "beforeEach",
            "V2",
            "afterEach",
            "afterMigrate"
        ]
    );
    db.execute(&format!("DELETE FROM {}_log", c.t), ())?;
    c.write("V3__bad.sql", "SELEC 1;\n");
    db.run_migrations().expect_err("V3 fails");
    assert_eq!(
        order(&db)?,
        [
            "beforeMigrate",
            "beforeEach",
            "afterEachError",
            "afterMigrateError"
        ]
    );
    db.execute(&format!("DELETE FROM {}_log", c.t), ())?;
    db.migrator().validate()?;
    assert_eq!(order(&db)?, ["beforeValidate"]);
    // Strict: the stray file is refused, named.
    let e = db
        .migrator()
        .options(MigrateOptions::default().strict(true))
        .validate()
        .expect_err("strict");
    assert!(e.to_string().contains("notes.sql"), "{e}");
    Ok(())
}
each_backend!(callbacks_run_at_their_events, [Postgres, MySql, SqliteFile]);

fn placeholders_come_from_configuration_and_options(b: Backend) -> Result<()> {
    let c = Case::new(b, "s");
    let raw = "-- by ${flyway:user} in ${flyway:database}, file ${flyway:filename}\n\
               CREATE TABLE ${prefix}_${table} (id INT, who VARCHAR(100), file VARCHAR(100), at VARCHAR(40), schema_name VARCHAR(100));\n\
               INSERT INTO ${prefix}_${table} VALUES (1, '${flyway:user}', '${flyway:filename}', '${flyway:timestamp}', '${flyway:defaultSchema}');\n";
    c.write("V1__placeholders.sql", raw);
    let db = c.db_with(|b| b.migration_placeholder("prefix", &c.t));
    let report = db
        .migrator()
        .options(MigrateOptions::default().placeholder("table", "things"))
        .run()?;
    assert_eq!(report.applied.len(), 1);
    let row = db.query_one(
        &format!("SELECT who, file, at, schema_name FROM {}_things", c.t),
        (),
    )?;
    assert!(!row.get::<String>("who")?.is_empty());
    assert_eq!(row.get::<String>("file")?, "V1__placeholders.sql");
    assert_eq!(row.get::<String>("at")?.len(), 19);
    assert!(!row.get::<String>("schema_name")?.is_empty());
    // The checksum is the raw file's, as Flyway's.
    let status = db.migration_status()?;
    assert_eq!(
        status.applied[0].checksum,
        Some(checksum(&raw.replace("{t}", &c.t)))
    );
    // An undefined one: named, with its file and line, before anything runs.
    c.write("V2__undefined.sql", "SELECT 1;\nSELECT '${nope}';\n");
    let e = db.run_migrations().expect_err("undefined placeholder");
    assert_eq!(e.kind(), ErrorKind::Migration);
    let text = e.to_string();
    assert!(
        text.contains("${nope}") && text.contains("V2__undefined.sql") && text.contains("line 2"),
        "{text}"
    );
    assert!(
        db.migration_status()?.problems.is_empty(),
        "nothing recorded"
    );
    Ok(())
}
each_backend!(
    placeholders_come_from_configuration_and_options,
    [Postgres, MySql, SqliteFile]
);

/// A held lock and a reader queued behind the migration's DDL: the
/// migration gives up within its bound (naming the holder), and the reader
/// gets through while the holder's transaction is still open.
fn lock_wait_is_bounded_and_readers_pass(b: Backend) -> Result<()> {
    let c = Case::new(b, "s");
    c.write(
        "V1__hot.sql",
        "CREATE TABLE {t}_hot (id INT);\nINSERT INTO {t}_hot VALUES (1);\n",
    );
    let db = c.db();
    db.run_migrations()?;
    c.write("V2__alter.sql", "ALTER TABLE {t}_hot ADD COLUMN x INT;\n");
    let mut holder = db.connection()?;
    let mut tx = holder.begin()?;
    let holder_id: i64 = tx
        .query_one(
            if b == Backend::Postgres {
                "SELECT CAST(pg_backend_pid() AS BIGINT) AS v"
            } else {
                "SELECT CAST(CONNECTION_ID() AS SIGNED) AS v"
            },
            (),
        )?
        .get("v")?;
    // A writer's transaction: a row lock (MySQL lists it in innodb_trx).
    tx.execute_query(
        &format!(
            "SELECT * FROM {}_hot{}",
            c.t,
            if b == Backend::Postgres {
                " FOR SHARE"
            } else {
                " LOCK IN SHARE MODE"
            }
        ),
        (),
    )?;
    let (send, done) = mpsc::channel();
    let migrator = db.migrator().options(
        MigrateOptions::default()
            .lock_wait(Duration::from_secs(1))
            .lock_retries(1),
    );
    let worker = std::thread::spawn(move || {
        let _ = send.send(migrator.run());
    });
    // Wait until the ALTER waits for the lock.
    let waiting_sql = if b == Backend::Postgres {
        "SELECT COUNT(*) AS v FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE ?"
    } else {
        "SELECT COUNT(*) AS v FROM information_schema.processlist WHERE state LIKE '%lock%' AND info LIKE ?"
    };
    let started = Instant::now();
    loop {
        let n: i64 = db
            .query_one(waiting_sql, (format!("ALTER TABLE {}_hot%", c.t),))?
            .get("v")?;
        if n > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the ALTER never waited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A reader queued behind the ALTER gets through once it gives up.
    let reader = db.execute_query_with_timeout(
        &format!("SELECT COUNT(*) AS n FROM {}_hot", c.t),
        (),
        Duration::from_secs(60),
    );
    assert!(
        reader.is_ok(),
        "the reader was not blocked for good: {reader:?}"
    );
    // The holder's transaction is still open: the reader did not wait for it.
    tx.execute_query("SELECT 1 AS one", ())?;
    let result = done.recv().expect("the migration thread reports");
    worker.join().expect("no panic");
    tx.rollback()?;
    drop(holder);
    let e = result.expect_err("the migration gave up");
    assert_eq!(e.kind(), ErrorKind::LockTimeout, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("2 attempts") && text.contains("V2__alter.sql"),
        "{text}"
    );
    // PostgreSQL names the holder. MySQL lists open transactions only to a
    // user with the PROCESS privilege, which the test user lacks: the
    // message then says so.
    if b == Backend::Postgres {
        assert!(text.contains(&format!("pid {holder_id} ")), "{text}");
    } else {
        assert!(
            text.contains(&format!("connection id {holder_id} "))
                || text.contains("PROCESS privilege"),
            "{text}"
        );
    }
    // Nothing was applied or recorded: the next run, unblocked, applies it.
    assert_eq!(db.run_migrations()?.applied.len(), 1);
    Ok(())
}
each_backend!(lock_wait_is_bounded_and_readers_pass, [Postgres, MySql]);

// ------------------------------------------- statements sent together

/// A transactional script's statements may reach the server together; a
/// failure still names its statement and line (with the server's own
/// error for it), and nothing of the script stays or is recorded.
fn a_failing_statement_is_named_when_statements_go_together(b: Backend) -> Result<()> {
    let c = Case::new(b, "s");
    c.write(
        "V1__ok.sql",
        "CREATE TABLE {t}_a (id INT, note TEXT) -- a comment that ends the line\n;\n\
         INSERT INTO {t}_a VALUES (1, 'semi; colon -- not a comment');\n\
         /* a block comment */ INSERT INTO {t}_a VALUES (2, 'two');\n",
    );
    c.write(
        "V2__bad.sql",
        "CREATE TABLE {t}_b (id INT);\n\
         INSERT INTO {t}_b VALUES (1);\n\
         INSERT INTO {t}_b\n  VALUES (2);\n\
         INSERT INTO {t}_missing VALUES (3);\n\
         INSERT INTO {t}_b VALUES (4);\n",
    );
    let db = c.db();
    let e = db.run_migrations().expect_err("V2 fails");
    let text = e.to_string();
    assert!(
        text.contains("V2__bad.sql")
            && text.contains("statement 4 of 5")
            && text.contains("line 5")
            && text.contains("_missing")
            && text.contains("nothing of it remains"),
        "{text}"
    );
    let report = e.migration_report().expect("a report");
    assert_eq!(report.applied.len(), 1, "{report:?}");
    assert_eq!(c.scalar::<i64>(&db, "SELECT COUNT(*) AS v FROM {t}_a"), 2);
    assert_eq!(
        c.scalar::<String>(&db, "SELECT note AS v FROM {t}_a WHERE id = 1"),
        "semi; colon -- not a comment"
    );
    assert!(!c.exists(&db, "{t}_b"), "V2 was rolled back whole");
    let status = db.migration_status()?;
    assert_eq!(status.current_version.as_deref(), Some("1"), "{status:?}");
    // Fixed, it runs; nothing was recorded of the failed attempt.
    c.write(
        "V2__bad.sql",
        "CREATE TABLE {t}_b (id INT);\nINSERT INTO {t}_b VALUES (1);\n",
    );
    assert_eq!(db.run_migrations()?.applied.len(), 1);
    assert_eq!(c.scalar::<i64>(&db, "SELECT COUNT(*) AS v FROM {t}_b"), 1);
    db.migrator().validate()?;
    Ok(())
}
each_backend!(
    a_failing_statement_is_named_when_statements_go_together,
    [Postgres, SqliteFile]
);

/// A syntax error in a statement sent with others: PostgreSQL's position
/// still gives the line within the script.
#[test]
fn postgres_syntax_error_line_among_statements_sent_together() -> Result<()> {
    let c = Case::new(Backend::Postgres, "s");
    c.write(
        "V1__typo.sql",
        "CREATE TABLE {t}_a (id INT);\n\
         SELECT id\n  FROM {t}_a\n  WHERE id = = 1;\n\
         CREATE TABLE {t}_b (id INT);\n",
    );
    let db = c.db();
    let text = db.run_migrations().expect_err("a typo").to_string();
    assert!(
        text.contains("statement 2 of 3") && text.contains("line 4"),
        "{text}"
    );
    assert!(!c.exists(&db, "{t}_a"));
    Ok(())
}

// ------------------------------------------------------ pool of one

/// A run needs two connections (the lock's and the scripts'): a pool that
/// can never open two refuses at once, naming the variables to set, and
/// applies nothing; with nothing to apply it runs as before; with two it
/// applies.
fn a_pool_of_one_is_refused_at_once_naming_the_setting(b: Backend) -> Result<()> {
    let c = Case::new(b, "s");
    c.write("V1__a.sql", "CREATE TABLE {t}_a (id INT);\n");
    let name = unique_name("one");
    let stem = format!("DEVELOPMENT_GLOBAL_{}_", name.to_ascii_uppercase());
    let vars: Vec<(String, String)> = vec![
        (format!("{stem}CONNECTION_STRING"), c.place.url().to_owned()),
        (format!("{stem}POOL_SIZE"), "1".to_owned()),
        (format!("{stem}MAX_OVERFLOW"), "0".to_owned()),
        // A run that waited for a second connection would fail after this
        // with the pool's own error, which the kind check tells apart.
        (format!("{stem}POOL_TIMEOUT"), "20".to_owned()),
        (
            format!("{stem}MIGRATIONS_DIR"),
            c.sql_dir().display().to_string(),
        ),
        (format!("{stem}MIGRATIONS_TABLE"), c.history.clone()),
    ];
    let config = DatabaseConfig::from_lookup(&name, move |k| {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })?;
    let db = DatabaseManager::from_config(config)?;
    let e = db.run_migrations().expect_err("a pool of one");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("two connections")
            && text.contains(&format!("{stem}POOL_SIZE"))
            && text.contains(&format!("{stem}MAX_OVERFLOW"))
            && text.contains("nothing was applied"),
        "{text}"
    );
    assert!(!c.exists(&db, "{t}_a"));
    // The connection the lock held is back: the pool serves others.
    assert_eq!(db.query_one("SELECT 1 AS v", ())?.get::<i64>("v")?, 1);
    db.close();

    // Built in code, the message names the builder's methods.
    let db = c.db_with(|b| {
        b.pool_size(1)
            .max_overflow(0)
            .acquire_timeout(Duration::from_secs(20))
    });
    let text = db.run_migrations().expect_err("a pool of one").to_string();
    assert!(
        text.contains("DatabaseConfigBuilder::pool_size")
            && text.contains("DatabaseConfigBuilder::max_overflow"),
        "{text}"
    );
    db.close();

    // Applied with room for two; then, with nothing to apply, a pool of
    // one runs (and validates) as before.
    let db = c.db_with(|b| b.pool_size(1).max_overflow(1));
    assert_eq!(db.run_migrations()?.applied.len(), 1);
    db.close();
    let db = c.db_with(|b| b.pool_size(1).max_overflow(0));
    assert!(db.run_migrations()?.applied.is_empty());
    db.close();
    Ok(())
}
each_backend!(
    a_pool_of_one_is_refused_at_once_naming_the_setting,
    [Postgres, SqliteFile]
);
