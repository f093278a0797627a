//! Histories written by other tools, continued by dbmanager on real
//! servers: Flyway's tables (made here with Flyway's own DDL and rows),
//! real Pyway (installed from PyPI by `scripts/servers.sh`, run as a
//! command) taking turns with dbmanager, an unknown table, and a history
//! write that fails after a MySQL script committed.

mod common;

use std::path::Path;
use std::process::Command;

use common::{error_text, manager_with, required_env, unique_name, Backend, TempDir};
use dbmanager::migrate::checksum;
use dbmanager::Result;

use common::migration::Case;

/// Flyway 4+'s history DDL, as Flyway creates it on each server.
fn flyway_ddl(c: &Case) -> Vec<String> {
    let t = &c.history;
    let q = c.q(t);
    match c.backend {
        Backend::MySql => vec![
            format!(
                "CREATE TABLE {q} (`installed_rank` INT NOT NULL, `version` VARCHAR(50), \
                 `description` VARCHAR(200) NOT NULL, `type` VARCHAR(20) NOT NULL, \
                 `script` VARCHAR(1000) NOT NULL, `checksum` INT, `installed_by` VARCHAR(100) NOT NULL, \
                 `installed_on` TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, `execution_time` INT NOT NULL, \
                 `success` BOOL NOT NULL, CONSTRAINT `{t}_pk` PRIMARY KEY (`installed_rank`)) ENGINE=InnoDB"
            ),
            format!("CREATE INDEX `{t}_s_idx` ON {q} (`success`)"),
        ],
        Backend::Postgres => vec![
            format!(
                "CREATE TABLE {q} (\"installed_rank\" INT NOT NULL, \"version\" VARCHAR(50), \
                 \"description\" VARCHAR(200) NOT NULL, \"type\" VARCHAR(20) NOT NULL, \
                 \"script\" VARCHAR(1000) NOT NULL, \"checksum\" INTEGER, \"installed_by\" VARCHAR(100) NOT NULL, \
                 \"installed_on\" TIMESTAMP NOT NULL DEFAULT now(), \"execution_time\" INTEGER NOT NULL, \
                 \"success\" BOOLEAN NOT NULL)"
            ),
            format!("ALTER TABLE {q} ADD CONSTRAINT \"{t}_pk\" PRIMARY KEY (\"installed_rank\")"),
            format!("CREATE INDEX \"{t}_s_idx\" ON {q} (\"success\")"),
        ],
        _ => vec![
            format!(
                "CREATE TABLE {q} (\"installed_rank\" INT NOT NULL PRIMARY KEY, \"version\" VARCHAR(50), \
                 \"description\" VARCHAR(200) NOT NULL, \"type\" VARCHAR(20) NOT NULL, \
                 \"script\" VARCHAR(1000) NOT NULL, \"checksum\" INT, \"installed_by\" VARCHAR(100) NOT NULL, \
                 \"installed_on\" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')), \
                 \"execution_time\" INT NOT NULL, \"success\" BOOLEAN NOT NULL)"
            ),
            format!("CREATE INDEX \"{t}_s_idx\" ON {q} (\"success\")"),
        ],
    }
}

/// Flyway 3's history DDL (`version_rank`, the version as the key), on
/// PostgreSQL as Flyway 3.2 created it.
fn flyway3_ddl(c: &Case) -> Vec<String> {
    let t = &c.history;
    let q = c.q(t);
    vec![
        format!(
            "CREATE TABLE {q} (\"version_rank\" INT NOT NULL, \"installed_rank\" INT NOT NULL, \
             \"version\" VARCHAR(50) NOT NULL, \"description\" VARCHAR(200) NOT NULL, \
             \"type\" VARCHAR(20) NOT NULL, \"script\" VARCHAR(1000) NOT NULL, \"checksum\" INTEGER, \
             \"installed_by\" VARCHAR(100) NOT NULL, \"installed_on\" TIMESTAMP NOT NULL DEFAULT now(), \
             \"execution_time\" INTEGER NOT NULL, \"success\" BOOLEAN NOT NULL)"
        ),
        format!("ALTER TABLE {q} ADD CONSTRAINT \"{t}_pk\" PRIMARY KEY (\"version\")"),
        format!("CREATE INDEX \"{t}_vr_idx\" ON {q} (\"version_rank\")"),
        format!("CREATE INDEX \"{t}_ir_idx\" ON {q} (\"installed_rank\")"),
        format!("CREATE INDEX \"{t}_s_idx\" ON {q} (\"success\")"),
    ]
}

/// A history Flyway wrote (its DDL, its rows: schema marker, V1, V1.1),
/// continued by dbmanager: migrate writes `002` in Flyway's format, and
/// info and validate agree.
fn flyway_history_is_continued(b: Backend) -> Result<()> {
    let c = Case::new(b, "h");
    let db = c.db();
    for stmt in flyway_ddl(&c) {
        db.execute_batch(&stmt)?;
    }
    let v1 = c.write("V1__create.sql", "CREATE TABLE {t}_a (id INTEGER);\n");
    let v11 = c.write("V1_1__fill.sql", "INSERT INTO {t}_a (id) VALUES (1);\r\n");
    db.execute_batch(&v1)?;
    db.execute_batch(&v11)?;
    let insert = format!(
        "INSERT INTO {} (installed_rank, version, description, type, script, checksum, installed_by, execution_time, success) \
         VALUES (?, ?, ?, ?, ?, ?, 'flyway', 5, ?)",
        c.q(&c.history)
    );
    db.execute(
        &insert,
        (
            1,
            Some("0"),
            "<< Flyway Schema Creation >>",
            "SCHEMA",
            "\"public\"",
            None::<i64>,
            true,
        ),
    )?;
    db.execute(
        &insert,
        (
            2,
            Some("1"),
            "create",
            "SQL",
            "V1__create.sql",
            Some(i64::from(checksum(&v1))),
            true,
        ),
    )?;
    db.execute(
        &insert,
        (
            3,
            Some("1.1"),
            "fill",
            "SQL",
            "V1_1__fill.sql",
            Some(i64::from(checksum(&v11))),
            true,
        ),
    )?;
    c.write("V002__more.sql", "CREATE TABLE {t}_b (id INTEGER);\n");

    db.migrator().validate()?;
    let status = db.migration_status()?;
    assert_eq!(status.pending.len(), 1, "{status:?}");
    let report = db.run_migrations()?;
    assert_eq!(report.applied.len(), 1, "{report:?}");
    assert_eq!(report.current_version.as_deref(), Some("002"));
    assert!(c.exists(&db, "{t}_b"));
    let row = db.query_one(
        &format!(
            "SELECT installed_rank, version, type, checksum, success FROM {} WHERE script = 'V002__more.sql'",
            c.q(&c.history)
        ),
        (),
    )?;
    assert_eq!(row.get::<i64>("installed_rank")?, 4);
    assert_eq!(row.get::<String>("version")?, "002", "kept as written");
    assert_eq!(row.get::<String>("type")?, "SQL");
    assert!(row.get::<Option<i64>>("checksum")?.is_some());
    db.migrator().validate()?;
    let status = db.migration_status()?;
    assert!(
        status.pending.is_empty() && status.problems.is_empty(),
        "{status:?}"
    );
    assert_eq!(status.current_version.as_deref(), Some("002"));
    assert!(db.run_migrations()?.applied.is_empty());
    Ok(())
}
each_backend!(flyway_history_is_continued, [Postgres, MySql, SqliteFile]);

/// Flyway 3's `schema_version` (with `version_rank`, the version as the
/// key) is continued too, its version ranks kept in version order.
fn flyway3_history_is_continued(b: Backend) -> Result<()> {
    let c = Case::new(b, "h");
    let db = c.db();
    for stmt in flyway3_ddl(&c) {
        db.execute_batch(&stmt)?;
    }
    let v1 = c.write("V1__create.sql", "CREATE TABLE {t}_a (id INTEGER);\n");
    db.execute_batch(&v1)?;
    db.execute(
        &format!(
            "INSERT INTO {} (version_rank, installed_rank, version, description, type, script, checksum, \
             installed_by, execution_time, success) VALUES (1, 1, '1', 'create', 'SQL', 'V1__create.sql', ?, 'flyway', 3, ?)",
            c.q(&c.history)
        ),
        (i64::from(checksum(&v1)), true),
    )?;
    let v3 = c.write("V3__third.sql", "SELECT 1;\n");
    db.execute(
        &format!(
            "INSERT INTO {} (version_rank, installed_rank, version, description, type, script, checksum, \
             installed_by, execution_time, success) VALUES (2, 2, '3', 'third', 'SQL', 'V3__third.sql', ?, 'flyway', 3, ?)",
            c.q(&c.history)
        ),
        (i64::from(checksum(&v3)), true),
    )?;
    // V2 comes after V3 (out of order): Flyway 3 ranks versions in order.
    c.write("V2__more.sql", "CREATE TABLE {t}_b (id INTEGER);\n");
    let report = db.run_migrations()?;
    assert_eq!(report.applied.len(), 1, "{report:?}");
    let rows = db.execute_query(
        &format!(
            "SELECT version, version_rank, installed_rank FROM {} ORDER BY version_rank",
            c.q(&c.history)
        ),
        (),
    )?;
    let ranks: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| {
            Ok((
                r.get("version")?,
                r.get("version_rank")?,
                r.get("installed_rank")?,
            ))
        })
        .collect::<Result<_>>()?;
    assert_eq!(
        ranks,
        [
            ("1".to_owned(), 1, 1),
            ("2".to_owned(), 2, 3),
            ("3".to_owned(), 3, 2)
        ]
    );
    db.migrator().validate()?;
    // A repeatable script has no place in a table keyed by version.
    c.write("R__view.sql", "SELECT 1;\n");
    let e = db.run_migrations().expect_err("no place for it");
    let text = error_text(&e);
    assert!(
        text.contains("R__view.sql") && text.contains("Flyway 3"),
        "{text}"
    );
    Ok(())
}
each_backend!(flyway3_history_is_continued, [Postgres]);

/// A table of another kind under the configured name: an error that names
/// its columns and the formats understood, never a raw SQL error.
fn unknown_table_is_explained(b: Backend) -> Result<()> {
    let c = Case::new(b, "h");
    let db = c.db();
    db.execute_batch(&format!(
        "CREATE TABLE {} (id INTEGER, label VARCHAR(20))",
        c.q(&c.history)
    ))?;
    c.write("V1__create.sql", "CREATE TABLE {t}_a (id INTEGER);\n");
    for e in [
        db.run_migrations().expect_err("an unknown table"),
        db.migrator().validate().expect_err("an unknown table"),
        db.migration_status().expect_err("an unknown table"),
    ] {
        let text = error_text(&e);
        assert!(
            text.contains(&c.history)
                && text.contains("(id, label)")
                && text.contains("Flyway 4+")
                && text.contains("Pyway"),
            "{text}"
        );
    }
    assert!(!c.exists(&db, "{t}_a"), "nothing ran");
    Ok(())
}
each_backend!(unknown_table_is_explained, [Postgres, MySql, SqliteFile]);

/// With the history table left at its default name and absent, Flyway 5+'s
/// `flyway_schema_history` is found and continued. (SQLite file: the
/// default names are shared by every test on a server database.)
#[test]
fn flyway_default_table_is_found() -> Result<()> {
    let c = Case::new(Backend::SqliteFile, "h");
    let db = manager_with("x", c.place.url(), |b| b.migrations_dir(c.sql_dir()))?;
    let flyway = Case {
        history: "flyway_schema_history".to_owned(),
        ..Case::new(Backend::SqliteFile, "h")
    };
    for stmt in flyway_ddl(&flyway) {
        db.execute_batch(&stmt)?;
    }
    let v1 = c.write("V1__create.sql", "CREATE TABLE {t}_a (id INTEGER);\n");
    db.execute_batch(&v1)?;
    db.execute(
        "INSERT INTO flyway_schema_history (installed_rank, version, description, type, script, checksum, \
         installed_by, execution_time, success) VALUES (1, '1', 'create', 'SQL', 'V1__create.sql', ?, 'flyway', 1, ?)",
        (i64::from(checksum(&v1)), true),
    )?;
    c.write("V2__more.sql", "CREATE TABLE {t}_b (id INTEGER);\n");
    let report = db.run_migrations()?;
    assert_eq!(report.applied.len(), 1, "{report:?}");
    let n = db
        .query_one("SELECT COUNT(*) AS n FROM flyway_schema_history", ())?
        .get::<i64>("n")?;
    assert_eq!(n, 2);
    assert!(
        !c.exists(&db, "schema_version"),
        "no second history was made"
    );
    assert_eq!(
        db.migration_status()?.history_table,
        "flyway_schema_history"
    );
    Ok(())
}

/// The `pyway` command: `DBMANAGER_TEST_PYWAY` (exported by
/// `scripts/servers.sh`'s `dbm_need_pyway`), or the venv it installs in the
/// cache folder when that exists.
fn pyway_bin() -> String {
    if std::env::var("DBMANAGER_TEST_PYWAY").is_err() {
        let cache = std::env::var("DBM_CACHE_DIR").ok().or_else(|| {
            std::env::var("XDG_CACHE_HOME")
                .ok()
                .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.cache")))
                .map(|c| format!("{c}/dbmanager"))
        });
        if let Some(cache) = cache {
            let bin = format!("{cache}/pyway-0.3.33/bin/pyway");
            if Path::new(&bin).exists() {
                return bin;
            }
        }
    }
    required_env("DBMANAGER_TEST_PYWAY")
}

/// Runs the real Pyway (from the test venv) with the case's settings.
fn pyway(c: &Case, folder: &Path, cmd: &str) -> (bool, String) {
    let bin = pyway_bin();
    let url = url::Url::parse(c.place.url()).expect("a URL");
    let password = common::password_of(c.place.url()).unwrap_or_default();
    let out = Command::new(bin)
        .arg(cmd)
        .current_dir(folder.parent().expect("a parent"))
        .env(
            "PYWAY_TYPE",
            if c.backend == Backend::MySql {
                "mysql"
            } else {
                "postgres"
            },
        )
        .env("PYWAY_TABLE", &c.history)
        .env("PYWAY_DATABASE_HOST", url.host_str().unwrap_or("127.0.0.1"))
        .env(
            "PYWAY_DATABASE_PORT",
            url.port().map(|p| p.to_string()).unwrap_or_default(),
        )
        .env("PYWAY_DATABASE_NAME", url.path().trim_start_matches('/'))
        .env("PYWAY_DATABASE_USERNAME", url.username())
        .env("PYWAY_DATABASE_PASSWORD", password)
        .env("PYWAY_DATABASE_MIGRATION_DIR", folder)
        .output()
        .expect("pyway runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = text.contains("Traceback") || text.contains("FAILED") || text.contains("Error");
    (out.status.success() && !failed, text)
}

/// Pyway and dbmanager take turns on one database: each applies only what
/// the other has not, and each validates what the other wrote.
fn pyway_and_dbmanager_take_turns(b: Backend) -> Result<()> {
    let c = Case::new(b, "h");
    let folder = c.sql_dir();
    let db = c.db();
    c.write("V01_01__create.sql", "CREATE TABLE {t}_a (id INTEGER);\n");
    let (ok, out) = pyway(&c, &folder, "migrate");
    assert!(ok, "pyway migrate V01_01: {out}");
    assert!(c.exists(&db, "{t}_a"));

    // dbmanager reads Pyway's table and applies the next one, in Pyway's terms.
    db.migrator().validate()?;
    c.write(
        "V01_02__add_orders.sql",
        "CREATE TABLE {t}_b (id INTEGER);\r\nINSERT INTO {t}_b (id) VALUES (1);\r\n",
    );
    let report = db.run_migrations()?;
    assert_eq!(report.applied.len(), 1, "{report:?}");
    assert_eq!(report.current_version.as_deref(), Some("01.02"));
    let row = db.query_one(
        &format!(
            "SELECT version, extension, name, checksum FROM {} WHERE name = 'V01_02__add_orders.sql'",
            c.q(&c.history)
        ),
        (),
    )?;
    assert_eq!(row.get::<String>("version")?, "01.02");
    assert_eq!(row.get::<String>("extension")?, "SQL");

    // Pyway accepts what dbmanager wrote, and goes on from there.
    let (ok, out) = pyway(&c, &folder, "validate");
    assert!(ok, "pyway validate: {out}");
    let (ok, out) = pyway(&c, &folder, "info");
    assert!(
        ok && out.contains("V01_02__add_orders.sql"),
        "pyway info: {out}"
    );
    c.write("V01_03__more.sql", "CREATE TABLE {t}_c (id INTEGER);\n");
    let (ok, out) = pyway(&c, &folder, "migrate");
    assert!(ok, "pyway migrate V01_03: {out}");
    assert!(c.exists(&db, "{t}_c"));

    // And dbmanager after Pyway again.
    db.migrator().validate()?;
    let status = db.migration_status()?;
    assert_eq!(status.applied.len(), 3, "{status:?}");
    assert!(
        status.pending.is_empty() && status.problems.is_empty(),
        "{status:?}"
    );
    assert_eq!(status.current_version.as_deref(), Some("01.03"));
    assert!(db.run_migrations()?.applied.is_empty());

    // An edited file is caught by both, each in its own terms.
    c.write(
        "V01_02__add_orders.sql",
        "CREATE TABLE {t}_b (id BIGINT);\n",
    );
    let e = db.migrator().validate().expect_err("an edited script");
    assert!(error_text(&e).contains("V01_02__add_orders.sql"), "{e}");
    let (ok, out) = pyway(&c, &folder, "validate");
    assert!(!ok, "pyway validate after an edit: {out}");
    Ok(())
}
each_backend!(pyway_and_dbmanager_take_turns, [Postgres, MySql]);

/// On MariaDB a script commits by itself; when its history row cannot be
/// written (a trigger refuses it), the error says that it ran and was not
/// recorded, later runs do not run it again, and the first run after the
/// fault is gone records it.
#[test]
fn history_write_failure_after_a_committed_script() -> Result<()> {
    let c = Case::new(Backend::MySql, "h");
    let db = c.db();
    c.write("V1__create.sql", "CREATE TABLE {t}_a (id INTEGER);\n");
    db.run_migrations()?;
    let trigger = unique_name("frozen");
    db.execute_batch(&format!(
        "CREATE TRIGGER `{trigger}` BEFORE INSERT ON {} FOR EACH ROW \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the history is frozen'",
        c.q(&c.history)
    ))?;
    c.write("V2__second.sql", "CREATE TABLE {t}_b (id INTEGER);\n");
    let e = db.run_migrations().expect_err("the record fails");
    let text = error_text(&e);
    assert!(
        text.contains("V2__second.sql") && text.contains("RAN") && text.contains("NOT recorded"),
        "{text}"
    );
    assert!(text.contains("the history is frozen"), "{text}");
    assert!(c.exists(&db, "{t}_b"), "the script ran");

    // Still frozen: the next run knows V2 ran, tries to record it again,
    // and does not run it again.
    let e = db.run_migrations().expect_err("still frozen");
    let text = error_text(&e);
    assert!(
        text.contains("NOT recorded") && !text.contains("already exists"),
        "{text}"
    );
    let status = db.migration_status()?;
    assert!(
        status.pending.is_empty(),
        "V2 counts as applied: {status:?}"
    );

    db.execute_batch(&format!("DROP TRIGGER `{trigger}`"))?;
    c.write("V3__third.sql", "CREATE TABLE {t}_c (id INTEGER);\n");
    let report = db.run_migrations()?;
    let applied: Vec<&str> = report.applied.iter().map(|s| s.script.as_str()).collect();
    assert_eq!(applied, ["V3__third.sql"]);
    let rows = db.execute_query(
        &format!(
            "SELECT script, success FROM {} ORDER BY installed_rank",
            c.q(&c.history)
        ),
        (),
    )?;
    let scripts: Vec<String> = rows
        .iter()
        .map(|r| r.get::<String>("script"))
        .collect::<Result<_>>()?;
    assert_eq!(
        scripts,
        ["V1__create.sql", "V2__second.sql", "V3__third.sql"]
    );
    db.migrator().validate()?;
    let status = db.migration_status()?;
    assert!(
        status.problems.is_empty() && status.pending.is_empty(),
        "{status:?}"
    );
    Ok(())
}

/// `V002` is stored as `002`, as Flyway writes it; order stays numeric.
fn versions_are_kept_as_written(b: Backend) -> Result<()> {
    let c = Case::new(b, "h");
    c.write("V002__b.sql", "CREATE TABLE {t}_b (id INTEGER);\n");
    c.write("V10__c.sql", "CREATE TABLE {t}_c (id INTEGER);\n");
    c.write("V1_1__a.sql", "CREATE TABLE {t}_a (id INTEGER);\n");
    let db = c.db();
    let report = db.run_migrations()?;
    let versions: Vec<String> = report
        .applied
        .iter()
        .filter_map(|s| s.version.clone())
        .collect();
    assert_eq!(versions, ["1.1", "002", "10"]);
    let rows = db.execute_query(
        &format!(
            "SELECT version FROM {} ORDER BY installed_rank",
            c.q(&c.history)
        ),
        (),
    )?;
    let stored: Vec<String> = rows
        .iter()
        .map(|r| r.get::<String>("version"))
        .collect::<Result<_>>()?;
    assert_eq!(stored, ["1.1", "002", "10"]);
    assert!(db.run_migrations()?.applied.is_empty());
    db.migrator().validate()?;
    Ok(())
}
each_backend!(versions_are_kept_as_written, [Postgres, MySql, SqliteFile]);

/// refinery's history (written by the real refinery, on SQLite) is adopted
/// in one step; migrate goes on after it, and validate checks the adopted
/// files. Before adoption, a run at the default history name refuses to
/// ignore refinery's table.
#[test]
fn refinery_history_is_adopted() -> Result<()> {
    let c = Case::new(Backend::SqliteFile, "h");
    let dir = TempDir::new("refinery");
    let url = dir.sqlite_url("app.db");
    c.write("V1__create.sql", "CREATE TABLE {t}_a (id INTEGER);\n");
    c.write("V2__fill.sql", "INSERT INTO {t}_a (id) VALUES (1);\n");
    {
        let mut conn = rusqlite::Connection::open(dir.path().join("app.db")).expect("open");
        let migrations = refinery::load_sql_migrations(c.sql_dir()).expect("refinery loads");
        let report = refinery::Runner::new(&migrations)
            .run(&mut conn)
            .expect("refinery migrates");
        assert_eq!(report.applied_migrations().len(), 2);
    }
    let db = manager_with("x", &url, |b| b.migrations_dir(c.sql_dir()))?;
    c.write("V3__more.sql", "CREATE TABLE {t}_b (id INTEGER);\n");
    let e = db
        .run_migrations()
        .expect_err("refinery's history is not ignored");
    assert!(error_text(&e).contains("dbmanager adopt"), "{e}");
    let report = db.migrator().adopt()?;
    let adopted: Vec<&str> = report.applied.iter().map(|s| s.script.as_str()).collect();
    assert_eq!(adopted, ["V1__create.sql", "V2__fill.sql"]);
    let report = db.run_migrations()?;
    let applied: Vec<&str> = report.applied.iter().map(|s| s.script.as_str()).collect();
    assert_eq!(applied, ["V3__more.sql"]);
    db.migrator().validate()?;
    c.write("V1__create.sql", "CREATE TABLE {t}_a (id BIGINT);\n");
    assert!(
        db.migrator().validate().is_err(),
        "an edit after adoption is caught"
    );
    assert!(db.migrator().adopt().is_err(), "adopting twice is refused");
    Ok(())
}

/// sqlx's history is adopted after its SHA-384 checksums are checked
/// against the files.
#[test]
fn sqlx_history_is_adopted() -> Result<()> {
    use sha2::Digest;
    let c = Case::new(Backend::SqliteFile, "h");
    let db = manager_with("x", c.place.url(), |b| b.migrations_dir(c.sql_dir()))?;
    db.execute_batch(
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
         installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, \
         checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)",
    )?;
    let v1 = c.write(
        "V20240101000000__create.sql",
        "CREATE TABLE {t}_a (id INTEGER);\n",
    );
    db.execute_batch(&v1)?;
    let sum = sha2::Sha384::digest(v1.as_bytes()).to_vec();
    db.execute(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (20240101000000, 'create', ?, ?, 2000000)",
        (true, sum),
    )?;
    // A file that differs from what sqlx applied is refused.
    c.write(
        "V20240101000000__create.sql",
        "CREATE TABLE {t}_a (id BIGINT);\n",
    );
    let e = db.migrator().adopt().expect_err("an edited file");
    assert!(error_text(&e).contains("SHA-384"), "{e}");
    c.write(
        "V20240101000000__create.sql",
        "CREATE TABLE {t}_a (id INTEGER);\n",
    );
    let report = db.migrator().adopt()?;
    assert_eq!(report.current_version.as_deref(), Some("20240101000000"));
    assert!(db.run_migrations()?.applied.is_empty());
    db.migrator().validate()?;
    Ok(())
}

/// A MariaDB script whose connection is killed while it runs: the failure
/// row is written on a fresh connection (not the dead one), so the next run
/// stops on it until `repair`.
#[test]
fn failure_of_a_killed_script_is_recorded() -> Result<()> {
    let c = Case::new(Backend::MySql, "h");
    let db = c.db();
    c.write("V1__create.sql", "CREATE TABLE {t}_a (id INTEGER);\n");
    db.run_migrations()?;
    c.write(
        "V2__slow.sql",
        "CREATE TABLE {t}_k (id INTEGER);\nDO SLEEP(30) + LENGTH('{t}_k');\n",
    );
    let admin = common::manager("admin", &Backend::MySql.admin_url())?;
    let marker = format!("{}_k", c.t);
    let killer = std::thread::spawn(move || -> Result<bool> {
        for _ in 0..600 {
            let rows = admin.execute_query(
                "SELECT id FROM information_schema.processlist WHERE info LIKE ? AND id <> CONNECTION_ID()",
                (format!("%SLEEP%{marker}%"),),
            )?;
            if let Some(r) = rows.first() {
                admin.execute_batch(&format!("KILL CONNECTION {}", r.get::<i64>("id")?))?;
                return Ok(true);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(false)
    });
    let e = db.run_migrations().expect_err("its connection was killed");
    assert!(
        killer.join().expect("the killer")?,
        "the script was seen running"
    );
    assert!(error_text(&e).contains("V2__slow.sql"), "{e}");
    let row = db.query_one(
        &format!(
            "SELECT success FROM {} WHERE script = 'V2__slow.sql'",
            c.q(&c.history)
        ),
        (),
    )?;
    assert!(!row.get::<bool>("success")?, "the failure is recorded");
    let e = db.run_migrations().expect_err("stops on the failure");
    assert!(error_text(&e).contains("repair"), "{e}");
    let report = db.migrator().repair()?;
    assert_eq!(report.removed_failed, ["V2__slow.sql"]);
    Ok(())
}

/// A PostgreSQL script that changes its session (`SET ROLE`, `SET
/// search_path`) inside its transaction: its history row is still written
/// as the migrating user, in the history table, with the script.
#[test]
fn session_changes_do_not_reach_the_history_row() -> Result<()> {
    let c = Case::new(Backend::Postgres, "h");
    let admin = common::manager("admin", &Backend::Postgres.admin_url())?;
    let role = format!("{}_r", c.t);
    let app = url::Url::parse(c.place.url())
        .expect("a URL")
        .username()
        .to_owned();
    admin.execute_batch(&format!(
        "CREATE ROLE {role}; GRANT {role} TO {app}; GRANT CREATE, USAGE ON SCHEMA public TO {role}"
    ))?;
    c.write(
        "V1__as_role.sql",
        &format!("SET ROLE {role};\nCREATE TABLE public.{{t}}_a (id INTEGER);\n"),
    );
    c.write(
        "V2__elsewhere.sql",
        "CREATE SCHEMA {t}_s;\nSET search_path TO {t}_s;\nCREATE TABLE {t}_b (id INTEGER);\n",
    );
    let db = c.db();
    let result = db.run_migrations();
    let _ = admin.execute_batch(&format!(
        "DROP TABLE IF EXISTS public.{t}_a; DROP SCHEMA IF EXISTS {t}_s CASCADE; \
         REVOKE ALL ON SCHEMA public FROM {role}; DROP ROLE IF EXISTS {role}",
        t = c.t
    ));
    let report = result?;
    assert_eq!(report.applied.len(), 2, "{report:?}");
    let rows = db.execute_query(
        &format!(
            "SELECT installed_by FROM {} ORDER BY installed_rank",
            c.q(&c.history)
        ),
        (),
    )?;
    let by: Vec<String> = rows
        .iter()
        .map(|r| r.get("installed_by"))
        .collect::<Result<_>>()?;
    assert_eq!(by, [app.clone(), app]);
    Ok(())
}
