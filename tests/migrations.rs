//! Migrations on real servers: PostgreSQL, MariaDB (from `scripts/test`)
//! and SQLite. Each test has its own migrations folder, history table and
//! object names, so the tests run in parallel on one database per server;
//! a body that holds on several backends runs once per backend
//! (`each_backend!`).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{error_text, Backend};
use dbmanager::migrate::{MigrateOptions, MigrationProblem};
use dbmanager::{DatabaseConfig, DatabaseManager, ErrorKind, Result};

use common::migration::Case;

/// The scripts several tests share.
trait Scripts {
    fn failing_v2(&self);
    fn log_table(&self);
}

impl Scripts for Case {
    /// V1 creates a table; V2 creates another, then fails on a typo.
    fn failing_v2(&self) {
        self.write("V1__ok.sql", "CREATE TABLE {t}_ok (id INTEGER);");
        self.write(
            "V2__half.sql",
            "CREATE TABLE {t}_half (id INTEGER);\nCREATE TABLX oops (id INTEGER);\n",
        );
    }

    fn log_table(&self) {
        self.write(
            "V1__log.sql",
            "CREATE TABLE {t}_log (v VARCHAR(20), at_rank INTEGER);\n",
        );
    }
}

fn versions_apply_in_numeric_order(b: Backend) -> Result<()> {
    let c = Case::new(b, "m");
    c.log_table();
    for v in ["10", "1.1", "2", "1.0.5"] {
        c.write(
            &format!("V{v}__step.sql"),
            &format!("INSERT INTO {{t}}_log (v) VALUES ('{v}');"),
        );
    }
    let db = c.db();
    let report = db.run_migrations()?;
    let order: Vec<String> = report
        .applied
        .iter()
        .filter_map(|s| s.version.clone())
        .collect();
    assert_eq!(order, ["1", "1.0.5", "1.1", "2", "10"], "{b:?}");
    assert_eq!(report.current_version.as_deref(), Some("10"));
    let status = db.migration_status()?;
    assert_eq!(status.current_version.as_deref(), Some("10"));
    assert_eq!(status.applied.len(), 5);
    assert!(status.pending.is_empty() && status.problems.is_empty());
    assert!(status
        .applied
        .iter()
        .all(|a| a.success && a.checksum.is_some()));
    // A second run has nothing to do.
    assert!(db.run_migrations()?.applied.is_empty());
    assert_eq!(c.count(&db, "{t}_log"), 4);
    Ok(())
}
each_backend!(
    versions_apply_in_numeric_order,
    [Postgres, MySql, SqliteFile]
);

fn target_version_then_the_rest(b: Backend) -> Result<()> {
    let c = Case::new(b, "m");
    c.log_table();
    c.write("V2__a.sql", "INSERT INTO {t}_log (v) VALUES ('2');");
    c.write("V3__b.sql", "INSERT INTO {t}_log (v) VALUES ('3');");
    let db = c.db();
    let r = db.migrator().migrate_to("2")?;
    assert_eq!(r.applied.len(), 2, "{b:?}");
    assert_eq!(db.migration_status()?.pending.len(), 1);
    let r = db.run_migrations()?;
    assert_eq!(r.applied.len(), 1);
    assert_eq!(r.current_version.as_deref(), Some("3"));
    Ok(())
}
each_backend!(target_version_then_the_rest, [Postgres, MySql, SqliteFile]);

fn undo_goes_back_with_u_scripts(b: Backend) -> Result<()> {
    let c = Case::new(b, "m");
    c.write("V1__a.sql", "CREATE TABLE {t}_a (id INTEGER);");
    c.write("V2__b.sql", "CREATE TABLE {t}_b (id INTEGER);");
    c.write("V3__c.sql", "CREATE TABLE {t}_c (id INTEGER);");
    c.write("U2__b.sql", "DROP TABLE {t}_b;");
    c.write("U3__c.sql", "DROP TABLE {t}_c;");
    let db = c.db();
    db.run_migrations()?;
    let r = db.migrator().undo("1")?;
    let undone: Vec<String> = r.applied.iter().filter_map(|s| s.version.clone()).collect();
    assert_eq!(undone, ["3", "2"], "{b:?}");
    assert_eq!(r.current_version.as_deref(), Some("1"));
    assert!(!c.exists(&db, "{t}_b") && !c.exists(&db, "{t}_c"));
    assert!(c.exists(&db, "{t}_a"));
    // Undone versions are pending again; without a U1 script, undo to 0 refuses.
    assert_eq!(db.migration_status()?.pending.len(), 2);
    let e = db.migrator().undo("0").expect_err("no U1");
    assert_eq!(e.kind(), ErrorKind::Migration);
    assert!(
        e.to_string().contains("V1__a.sql") && e.to_string().contains("U1__"),
        "{e}"
    );
    assert_eq!(db.run_migrations()?.applied.len(), 2);
    Ok(())
}
each_backend!(undo_goes_back_with_u_scripts, [Postgres, MySql, SqliteFile]);

fn repeatable_scripts_rerun_when_changed(b: Backend) -> Result<()> {
    let c = Case::new(b, "m");
    c.log_table();
    c.write(
        "R__view.sql",
        "DROP VIEW IF EXISTS {t}_v;\nCREATE VIEW {t}_v AS SELECT 1 AS n;\n",
    );
    let db = c.db();
    let r = db.run_migrations()?;
    assert_eq!(r.applied.len(), 2, "{b:?}");
    assert!(
        db.run_migrations()?.applied.is_empty(),
        "unchanged: not re-run"
    );
    c.write(
        "R__view.sql",
        "DROP VIEW IF EXISTS {t}_v;\nCREATE VIEW {t}_v AS SELECT 2 AS n;\n",
    );
    let r = db.run_migrations()?;
    assert_eq!(r.applied.len(), 1);
    assert_eq!(r.applied[0].script, "R__view.sql");
    let n: i64 = db
        .query_one(&format!("SELECT n FROM {}_v", c.t), ())?
        .get("n")?;
    assert_eq!(n, 2);
    // A line-ending change alone is no change.
    c.write(
        "R__view.sql",
        "DROP VIEW IF EXISTS {t}_v;\r\nCREATE VIEW {t}_v AS SELECT 2 AS n;\r\n",
    );
    assert!(db.run_migrations()?.applied.is_empty());
    Ok(())
}
each_backend!(
    repeatable_scripts_rerun_when_changed,
    [Postgres, MySql, SqliteFile]
);

fn baseline_skips_what_is_already_there(b: Backend) -> Result<()> {
    let c = Case::new(b, "m");
    c.write("V1__a.sql", "CREATE TABLE {t}_a (id INTEGER);");
    c.write("V2__b.sql", "CREATE TABLE {t}_b (id INTEGER);");
    c.write("V3__c.sql", "CREATE TABLE {t}_c (id INTEGER);");
    let db = c.db();
    db.execute_batch(&format!(
        "CREATE TABLE {}_a (id INTEGER); CREATE TABLE {}_b (id INTEGER)",
        c.t, c.t
    ))?;
    db.migrator().baseline("2")?;
    let r = db.run_migrations()?;
    let applied: Vec<&str> = r.applied.iter().map(|s| s.script.as_str()).collect();
    assert_eq!(applied, ["V3__c.sql"], "{b:?}");
    let status = db.migration_status()?;
    assert_eq!(status.current_version.as_deref(), Some("3"));
    assert_eq!(
        status.applied[0].kind,
        dbmanager::migrate::MigrationKind::Baseline
    );
    // A second, different baseline is refused.
    assert_eq!(
        db.migrator()
            .baseline("1")
            .expect_err("one baseline")
            .kind(),
        ErrorKind::Migration
    );
    Ok(())
}
each_backend!(
    baseline_skips_what_is_already_there,
    [Postgres, MySql, SqliteFile]
);

fn dry_run_changes_nothing(b: Backend) -> Result<()> {
    let c = Case::new(b, "m");
    c.write("V1__a.sql", "CREATE TABLE {t}_a (id INTEGER);");
    c.write(
        "V2__b.sql",
        "-- dbmanager:no-transaction\nCREATE TABLE {t}_b (id INTEGER);",
    );
    let db = c.db();
    let plan = db.migrator().dry_run()?;
    assert!(!plan.history_table_exists);
    assert_eq!(plan.steps.len(), 2);
    assert!(plan.steps[0]
        .sql
        .contains(&format!("CREATE TABLE {}_a", c.t)));
    assert!(!plan.steps[1].in_transaction);
    assert_eq!(plan.steps[0].in_transaction, b.transactional_ddl(), "{b:?}");
    assert!(!c.exists(&db, "{t}_a"));
    assert!(!c.exists(&db, &c.history), "no history table was created");
    assert_eq!(db.run_migrations()?.applied.len(), 2);
    assert!(db.migrator().dry_run()?.steps.is_empty());
    Ok(())
}
each_backend!(dry_run_changes_nothing, [Postgres, MySql, SqliteFile]);

fn edited_applied_script_fails_validation_but_line_endings_do_not(b: Backend) -> Result<()> {
    let c = Case::new(b, "m");
    c.write(
        "V1__a.sql",
        "CREATE TABLE {t}_a (id INTEGER);\nCREATE TABLE {t}_b (id INTEGER);\n",
    );
    let db = c.db();
    db.run_migrations()?;
    // CRLF instead of LF: the same checksum.
    c.write(
        "V1__a.sql",
        "CREATE TABLE {t}_a (id INTEGER);\r\nCREATE TABLE {t}_b (id INTEGER);\r\n",
    );
    db.migrator().validate()?;
    assert!(db.run_migrations()?.applied.is_empty());
    // A real edit: validation names the file and both checksums.
    let applied = db.migration_status()?.applied[0]
        .checksum
        .expect("a checksum");
    c.write(
        "V1__a.sql",
        "CREATE TABLE {t}_a (id BIGINT);\nCREATE TABLE {t}_b (id INTEGER);\n",
    );
    c.write("V2__b.sql", "CREATE TABLE {t}_c (id INTEGER);");
    let now = dbmanager::migrate::checksum(
        &std::fs::read_to_string(c.sql_dir().join("V1__a.sql")).unwrap_or_default(),
    );
    let e = db.migrator().validate().expect_err("edited");
    let text = e.to_string();
    assert_eq!(e.kind(), ErrorKind::Migration);
    assert!(text.contains("V1__a.sql"), "{text}");
    assert!(
        text.contains(&applied.to_string()) && text.contains(&now.to_string()),
        "{text}"
    );
    let e = db.run_migrations().expect_err("run refuses");
    assert_eq!(e.kind(), ErrorKind::Migration);
    assert!(!c.exists(&db, "{t}_c"), "nothing ran");
    let status = db.migration_status()?;
    assert!(matches!(
        status.problems[0],
        MigrationProblem::ChecksumMismatch { .. }
    ));
    // repair accepts the edit.
    let r = db.migrator().repair()?;
    assert_eq!(r.realigned, ["V1__a.sql"]);
    assert_eq!(db.run_migrations()?.applied.len(), 1);
    // A deleted applied file is a problem too.
    c.remove("V2__b.sql");
    let e = db.migrator().validate().expect_err("missing file");
    assert!(
        e.to_string().contains("V2__b.sql") && e.to_string().contains("missing"),
        "{e}"
    );
    Ok(())
}
each_backend!(
    edited_applied_script_fails_validation_but_line_endings_do_not,
    [Postgres, MySql, SqliteFile]
);

fn failing_migration_leaves_nothing_where_ddl_is_transactional(b: Backend) -> Result<()> {
    let c = Case::new(b, "m");
    c.failing_v2();
    let db = c.db();
    let e = db.run_migrations().expect_err("V2 fails");
    let text = e.to_string();
    assert!(
        text.contains("V2__half.sql") && text.contains("version 2"),
        "{text}"
    );
    assert!(
        text.contains("V1__ok.sql"),
        "names what applied before: {text}"
    );
    let report = e.migration_report().expect("a report");
    assert_eq!(report.applied.len(), 1);
    assert_eq!(report.applied[0].script, "V1__ok.sql");
    if b == Backend::Postgres {
        assert!(text.contains("line 2"), "{text}");
    }
    assert!(!c.exists(&db, "{t}_half"), "{b:?}: nothing of V2 remains");
    let status = db.migration_status()?;
    assert_eq!(status.applied.len(), 1, "no history row for V2");
    assert_eq!(status.pending.len(), 1);
    c.write(
        "V2__half.sql",
        "CREATE TABLE {t}_half (id INTEGER);\nCREATE TABLE {t}_half2 (id INTEGER);\n",
    );
    assert_eq!(db.run_migrations()?.applied.len(), 1);
    assert_eq!(db.migration_status()?.current_version.as_deref(), Some("2"));
    Ok(())
}
each_backend!(
    failing_migration_leaves_nothing_where_ddl_is_transactional,
    [Postgres, SqliteFile]
);

#[test]
fn failing_migration_on_mariadb_is_recorded_until_repair() -> Result<()> {
    let c = Case::new(Backend::MySql, "m");
    c.failing_v2();
    let db = c.db();
    let e = db.run_migrations().expect_err("V2 fails");
    let text = e.to_string();
    assert!(
        text.contains("V2__half.sql") && text.contains("repair"),
        "{text}"
    );
    assert_eq!(e.migration_report().map(|r| r.applied.len()), Some(1));
    assert!(
        c.exists(&db, "{t}_half"),
        "MariaDB committed the first statement"
    );
    let status = db.migration_status()?;
    assert!(status
        .applied
        .iter()
        .any(|a| !a.success && a.script == "V2__half.sql"));
    assert!(matches!(
        status.problems[0],
        MigrationProblem::Failed { .. }
    ));
    // The next run refuses, naming the failed script, until repair.
    let e = db.run_migrations().expect_err("refuses");
    assert_eq!(e.kind(), ErrorKind::Migration);
    assert!(
        e.to_string().contains("V2__half.sql") && e.to_string().contains("repair"),
        "{e}"
    );
    c.write(
        "V2__half.sql",
        "CREATE TABLE IF NOT EXISTS {t}_half (id INTEGER);\nCREATE TABLE {t}_half2 (id INTEGER);\n",
    );
    let r = db.migrator().repair()?;
    assert_eq!(r.removed_failed, ["V2__half.sql"]);
    assert_eq!(db.run_migrations()?.applied.len(), 1);
    let status = db.migration_status()?;
    assert_eq!(status.current_version.as_deref(), Some("2"));
    assert!(status.problems.is_empty());
    Ok(())
}

fn concurrent_migrators_apply_each_version_once(b: Backend) -> Result<()> {
    let c = Case::new(b, "m");
    c.log_table();
    for v in 2..=6 {
        c.write(
            &format!("V{v}__step.sql"),
            &format!("INSERT INTO {{t}}_log (v) VALUES ('{v}');"),
        );
    }
    let results: Vec<Result<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let config = c.config().pool_size(1).max_overflow(1).build();
                s.spawn(move || {
                    let db = DatabaseManager::from_config(config?)?;
                    let migrator = db
                        .migrator()
                        .options(MigrateOptions::default().lock_timeout(Duration::from_secs(60)));
                    migrator.run().map(|r| r.applied.len())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    let mut total = 0;
    for r in results {
        total += r.inspect_err(|e| eprintln!("{b:?}: {}", error_text(e)))?;
    }
    assert_eq!(total, 6, "{b:?}: each version applied once in all");
    let db = c.db();
    assert_eq!(c.count(&db, "{t}_log"), 5);
    assert_eq!(db.migration_status()?.applied.len(), 6);
    Ok(())
}
each_backend!(
    concurrent_migrators_apply_each_version_once,
    [Postgres, MySql, SqliteFile]
);

fn cli(c: &Case, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbmanager"));
    cmd.args(["--database", "mig"])
        .args(args)
        .env("ENVIRONMENT", "development")
        .env("DBMANAGER_ENV_DIR", c.dir.path())
        .env("DEVELOPMENT_GLOBAL_MIG_CONNECTION_STRING", c.url())
        .env("DEVELOPMENT_GLOBAL_MIG_MIGRATIONS_DIR", c.sql_dir())
        .env("DEVELOPMENT_GLOBAL_MIG_MIGRATIONS_TABLE", &c.history)
        .env_remove("DEVELOPMENT_GLOBAL_MIG_AUTO_MIGRATE");
    cmd
}

fn concurrent_processes_apply_each_version_once(b: Backend) -> Result<()> {
    let c = Case::new(b, "m");
    c.log_table();
    for v in 2..=4 {
        c.write(
            &format!("V{v}__step.sql"),
            &format!("INSERT INTO {{t}}_log (v) VALUES ('{v}');"),
        );
    }
    let children: Vec<_> = (0..4)
        .map(|_| {
            cli(&c, &["migrate"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn the CLI")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{b:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let db = c.db();
    assert_eq!(c.count(&db, "{t}_log"), 3, "{b:?}");
    assert_eq!(db.migration_status()?.applied.len(), 4);
    Ok(())
}
each_backend!(
    concurrent_processes_apply_each_version_once,
    [Postgres, MySql, SqliteFile]
);

/// A child process killed and reaped on every path.
struct Reaped(std::process::Child);

impl Reaped {
    /// SIGKILL: no destructor runs in the child.
    fn kill9(mut self) {
        self.0.kill().expect("kill -9");
        self.0.wait().expect("reap");
    }
}

/// `dbmanager migrate` for `c`, running in a child process.
fn migrate_in_background(c: &Case) -> Reaped {
    Reaped(
        cli(c, &["migrate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the CLI"),
    )
}

/// Polls `done` until it says yes, failing the test after 20 s.
fn wait_until(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while !done()? {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn killed_migrator_frees_the_lock() -> Result<()> {
    let c = Case::new(Backend::Postgres, "m");
    c.write("V1__a.sql", "CREATE TABLE {t}_a (id INTEGER);");
    c.write(
        "V2__slow.sql",
        "CREATE TABLE {t}_slow (id INTEGER);\nSELECT pg_sleep(30);\n",
    );
    let child = migrate_in_background(&c);
    let db = c.db();
    // Wait until it sleeps inside V2 (holding the lock).
    wait_until("the child reaches V2", || {
        let sleeping: i64 = db
            .query_one(
                "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()",
                (),
            )?
            .get("n")?;
        Ok(sleeping > 0)
    })?;
    child.kill9();
    c.write(
        "V2__slow.sql",
        "CREATE TABLE {t}_slow (id INTEGER);\nSELECT pg_sleep(0.1);\n",
    );
    let started = Instant::now();
    let r = db
        .migrator()
        .options(MigrateOptions::default().lock_timeout(Duration::from_secs(20)))
        .run()?;
    assert_eq!(
        r.applied.len(),
        1,
        "V1 was applied by the child; V2 left nothing"
    );
    assert_eq!(r.applied[0].script, "V2__slow.sql");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the lock was freed promptly"
    );
    Ok(())
}

/// A second migrator waiting on a busy lock gives up at its timeout with an
/// error naming the holder as the backend can tell it.
fn busy_lock_times_out_naming_the_holder(b: Backend) -> Result<()> {
    let (slow, names): (&str, &[&str]) = match b {
        Backend::Postgres => ("SELECT pg_sleep(3);", &["pid", "dbmanager migrate"]),
        Backend::MySql => ("SELECT SLEEP(3);", &["MySQL connection id"]),
        other => unreachable!("{other:?} does not run this test"),
    };
    let c = Case::new(b, "m");
    c.write("V1__slow.sql", slow);
    let db = c.db();
    let other = c.db();
    std::thread::scope(|s| {
        let h = s.spawn(|| db.run_migrations());
        std::thread::sleep(Duration::from_millis(800));
        let e = other
            .migrator()
            .options(MigrateOptions::default().lock_timeout(Duration::from_millis(300)))
            .run()
            .expect_err("busy");
        assert_eq!(e.kind(), ErrorKind::LockTimeout);
        let text = e.to_string();
        assert!(names.iter().all(|n| text.contains(n)), "{text}");
        h.join().expect("no panic").map(drop)
    })
}
each_backend!(busy_lock_times_out_naming_the_holder, [Postgres, MySql]);

#[test]
fn bad_names_duplicates_empty_and_missing_folders() -> Result<()> {
    let c = Case::new(Backend::SqliteFile, "m");
    let db = c.db();
    // Empty folder: nothing to do.
    let r = db.run_migrations()?;
    assert!(r.applied.is_empty() && r.current_version.is_none());
    // Bad name: skipped with a warning by default (as Flyway does); the
    // strict setting refuses it, naming the file and the pattern.
    c.write("V1_create.sql", "SELECT 1;");
    assert!(db.run_migrations()?.applied.is_empty());
    let e = db
        .migrator()
        .options(MigrateOptions::default().strict(true))
        .run()
        .expect_err("bad name");
    assert_eq!(e.kind(), ErrorKind::Migration);
    assert!(
        e.to_string().contains("V1_create.sql")
            && e.to_string().contains("V{version}__{description}.sql"),
        "{e}"
    );
    c.remove("V1_create.sql");
    // Duplicate versions.
    c.write("V1__a.sql", "SELECT 1;");
    c.write("V001__b.sql", "SELECT 1;");
    let e = db.run_migrations().expect_err("duplicate");
    assert!(
        e.to_string().contains("V1__a.sql") && e.to_string().contains("V001__b.sql"),
        "{e}"
    );
    // Other files are ignored.
    c.remove("V001__b.sql");
    std::fs::write(c.sql_dir().join("README.md"), "notes").expect("write");
    assert_eq!(db.run_migrations()?.applied.len(), 1);
    // A missing folder: an error naming it and the setting (configured in
    // code: the builder's method; no placeholder left unfilled).
    let missing = c.dir.path().join("nope");
    let db2 = DatabaseManager::from_config(c.config().migrations_dir(&missing).build()?)?;
    let e = db2.run_migrations().expect_err("missing");
    let text = e.to_string();
    assert!(
        text.contains("nope") && text.contains("DatabaseConfigBuilder::migrations_dir"),
        "{e}"
    );
    assert!(
        !text.contains("{PREFIX}") && !text.contains("{NAME}"),
        "{e}"
    );
    Ok(())
}

#[test]
fn read_only_refuses_before_touching_the_server() -> Result<()> {
    let c = Case::new(Backend::SqliteFile, "m");
    c.write("V1__a.sql", "CREATE TABLE {t}_a (id INTEGER);");
    // A server that does not exist: ReadOnly proves nothing was attempted.
    let url = format!(
        "postgresql://u:secretpw@127.0.0.1:{}/db",
        common::closed_port()
    );
    let db = DatabaseManager::from_config(c.config().url(url).read_only(true).build()?)?;
    for e in [
        db.run_migrations().expect_err("read-only"),
        db.migrator()
            .migrate_to("1")
            .map(drop)
            .expect_err("read-only"),
        db.migrator()
            .baseline("1")
            .map(drop)
            .expect_err("read-only"),
        db.migrator().repair().map(drop).expect_err("read-only"),
        db.migrator().undo("0").map(drop).expect_err("read-only"),
    ] {
        assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
        assert!(!error_text(&e).contains("secretpw"));
    }
    Ok(())
}

#[test]
fn history_table_name_is_validated() {
    let e = DatabaseConfig::builder("x")
        .url("sqlite::memory:")
        .history_table("h; DROP TABLE users")
        .build()
        .expect_err("not an identifier");
    assert_eq!(e.kind(), ErrorKind::Config);
    let e = DatabaseConfig::from_lookup("rpa_db", |k| match k {
        "DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING" => Some("sqlite::memory:".into()),
        "DEVELOPMENT_GLOBAL_RPA_DB_MIGRATIONS_TABLE" => Some("a.b.c".into()),
        _ => None,
    })
    .expect_err("not an identifier");
    assert!(
        e.to_string()
            .contains("DEVELOPMENT_GLOBAL_RPA_DB_MIGRATIONS_TABLE"),
        "{e}"
    );
}

#[test]
fn auto_migrate_on_start() -> Result<()> {
    let c = Case::new(Backend::SqliteFile, "m");
    c.write("V1__a.sql", "CREATE TABLE {t}_a (id INTEGER);");
    let db = DatabaseManager::from_config(c.config().auto_migrate(true).build()?)?;
    assert!(c.exists(&db, "{t}_a"));
    let cfg = DatabaseConfig::from_lookup("rpa_db", |k| match k {
        "DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING" => Some("sqlite::memory:".into()),
        "DEVELOPMENT_GLOBAL_RPA_DB_AUTO_MIGRATE" => Some("true".into()),
        _ => None,
    })?;
    assert!(cfg.auto_migrate());
    assert_eq!(
        cfg.migrations_dir(),
        std::path::Path::new("migrations/rpa_db")
    );
    Ok(())
}

#[test]
fn embedded_scripts_need_no_folder() -> Result<()> {
    static EMBEDDED: [(&str, &str); 2] = [
        ("V1__a.sql", "CREATE TABLE emb_a (id INTEGER);"),
        ("V2__b.sql", "CREATE TABLE emb_b (id INTEGER);"),
    ];
    let db = DatabaseManager::from_config(
        DatabaseConfig::builder("emb")
            .url("sqlite::memory:")
            .build()?,
    )?;
    let migrator = db
        .migrator()
        .source(dbmanager::migrate::MigrationSource::embedded(&EMBEDDED));
    assert_eq!(migrator.run()?.applied.len(), 2);
    assert_eq!(migrator.status()?.current_version.as_deref(), Some("2"));
    let fresh = DatabaseManager::from_config(
        DatabaseConfig::builder("emb2")
            .url("sqlite::memory:")
            .build()?,
    )?;
    let quick = fresh.migrator().source(dbmanager::embed_migrations!(
        "migrations/quickstart",
        ["V1__Create_customers.sql", "V2__Add_orders.sql"]
    ));
    assert_eq!(quick.dry_run()?.steps.len(), 2);
    Ok(())
}

#[test]
fn no_transaction_scripts_run_outside_a_transaction() -> Result<()> {
    // CREATE INDEX CONCURRENTLY fails inside a transaction block.
    let c = Case::new(Backend::Postgres, "m");
    c.write("V1__a.sql", "CREATE TABLE {t}_a (id INTEGER);");
    c.write(
        "V2__index.sql",
        "-- dbmanager:no-transaction\nCREATE INDEX CONCURRENTLY {t}_a_id ON {t}_a (id);\n",
    );
    let db = c.db();
    assert_eq!(db.run_migrations()?.applied.len(), 2);
    let n: i64 = db
        .query_one(
            "SELECT COUNT(*) AS n FROM pg_indexes WHERE indexname = ?",
            (format!("{}_a_id", c.t),),
        )?
        .get("n")?;
    assert_eq!(n, 1);
    Ok(())
}

#[test]
fn sqlite_lock_left_by_a_killed_process_is_taken_over() -> Result<()> {
    let c = Case::new(Backend::SqliteFile, "m");
    c.write("V1__a.sql", "CREATE TABLE {t}_a (id INTEGER);");
    // V1 applied first, so that one history row and the lock row say the
    // child is inside V2 (scripts run together would commit together).
    let db = c.db();
    assert_eq!(db.run_migrations()?.applied.len(), 1);
    c.write(
        "V2__slow.sql",
        "CREATE TABLE {t}_big AS WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 300000000) SELECT x FROM n;",
    );
    let child = migrate_in_background(&c);
    // V1 committed and the lock row still there: the child is inside V2.
    wait_until("the child reaches V2", || {
        let lock = format!("{}_lock", c.history);
        Ok(c.exists(&db, &c.history)
            && c.count(&db, &c.history) == 1
            && c.exists(&db, &lock)
            && c.count(&db, &lock) == 1)
    })?;
    std::thread::sleep(Duration::from_millis(200));
    child.kill9();
    assert_eq!(
        c.count(&db, &format!("{}_lock", c.history)),
        1,
        "the dead process's row is left"
    );
    c.write("V2__slow.sql", "CREATE TABLE {t}_big (x INTEGER);");
    let r = db
        .migrator()
        .options(MigrateOptions::default().lock_timeout(Duration::from_secs(10)))
        .run()?;
    assert_eq!(r.applied.len(), 1);
    assert_eq!(r.applied[0].script, "V2__slow.sql");
    assert_eq!(c.count(&db, &format!("{}_lock", c.history)), 0, "released");
    Ok(())
}

/// On SQLite, scripts that run in a transaction share one with their
/// history rows: V4–V8 below. When a row cannot be written (a trigger
/// refuses version 6), the shared transaction is rolled back and the
/// scripts run again one by one: V4 and V5 are applied and recorded, V6 is
/// reported and nothing of it stays (no table without a row), V7 and V8
/// do not run.
#[test]
fn scripts_sharing_a_transaction_commit_with_their_rows_or_not_at_all() -> Result<()> {
    let c = Case::new(Backend::SqliteFile, "m");
    for v in 1..=3 {
        c.write(
            &format!("V{v}__t{v}.sql"),
            &format!("CREATE TABLE {{t}}_{v} (id INTEGER);\nINSERT INTO {{t}}_{v} VALUES ({v});\n"),
        );
    }
    let db = c.db();
    assert_eq!(db.run_migrations()?.applied.len(), 3);
    db.execute_batch(&format!(
        "CREATE TRIGGER {t}_no6 BEFORE INSERT ON {h} WHEN NEW.version = '6' \
         BEGIN SELECT RAISE(ABORT, 'version 6 refused by a trigger'); END",
        t = c.t,
        h = c.q(&c.history)
    ))?;
    for v in 4..=8 {
        c.write(
            &format!("V{v}__t{v}.sql"),
            &format!("CREATE TABLE {{t}}_{v} (id INTEGER);\nINSERT INTO {{t}}_{v} VALUES ({v});\n"),
        );
    }
    let e = db.run_migrations().expect_err("the row of V6 is refused");
    let text = e.to_string();
    assert!(
        text.contains("V6__t6.sql") && text.contains("refused by a trigger"),
        "{text}"
    );
    let report = e.migration_report().expect("a report");
    let applied: Vec<&str> = report.applied.iter().map(|s| s.script.as_str()).collect();
    assert_eq!(applied, ["V4__t4.sql", "V5__t5.sql"]);
    for v in 1..=8 {
        assert_eq!(
            c.exists(&db, &format!("{{t}}_{v}")),
            v <= 5,
            "table of V{v}: {text}"
        );
    }
    let status = db.migration_status()?;
    let recorded: Vec<&str> = status.applied.iter().map(|r| r.script.as_str()).collect();
    assert_eq!(
        recorded,
        [
            "V1__t1.sql",
            "V2__t2.sql",
            "V3__t3.sql",
            "V4__t4.sql",
            "V5__t5.sql"
        ]
    );
    assert!(status.applied.iter().all(|r| r.success));
    assert_eq!(status.pending.len(), 3);
    Ok(())
}

/// More scripts than one shared transaction takes: every one applied once,
/// recorded in version order with consecutive ranks, and a failing one
/// among them named with its statement and line while those before it
/// stay applied.
#[test]
fn many_scripts_are_recorded_in_order_and_a_failure_among_them_is_located() -> Result<()> {
    let c = Case::new(Backend::SqliteFile, "m");
    for v in 1..=250 {
        let sql = if v == 180 {
            "CREATE TABLE {t}_180 (id INTEGER);\nINSERT INTO {t}_nope VALUES (1);\n".to_owned()
        } else {
            format!("CREATE TABLE {{t}}_{v} (id INTEGER);\nINSERT INTO {{t}}_{v} VALUES ({v});\n")
        };
        c.write(&format!("V{v}__t{v}.sql"), &sql);
    }
    let db = c.db();
    let e = db.run_migrations().expect_err("V180 fails");
    let text = e.to_string();
    assert!(
        text.contains("V180__t180.sql")
            && text.contains("statement 2 of 2 (line 2")
            && text.contains("nothing of it remains"),
        "{text}"
    );
    assert_eq!(e.migration_report().expect("a report").applied.len(), 179);
    assert!(!c.exists(&db, "{t}_180"));
    let ranks: Vec<(i64, i64, String)> = db
        .execute_query(
            &format!(
                "SELECT installed_rank, version_rank, version FROM {} ORDER BY installed_rank",
                c.q(&c.history)
            ),
            (),
        )?
        .iter()
        .map(|r| {
            Ok((
                r.get::<i64>("installed_rank")?,
                r.get::<i64>("version_rank")?,
                r.get::<String>("version")?,
            ))
        })
        .collect::<Result<_>>()?;
    let expected: Vec<(i64, i64, String)> = (1..=179).map(|v| (v, v, v.to_string())).collect();
    assert_eq!(ranks, expected);
    c.write(
        "V180__t180.sql",
        "CREATE TABLE {t}_180 (id INTEGER);\nINSERT INTO {t}_180 VALUES (1);\n",
    );
    assert_eq!(db.run_migrations()?.applied.len(), 71);
    db.migrator().validate()?;
    assert_eq!(c.count(&db, &c.history), 250);
    Ok(())
}
