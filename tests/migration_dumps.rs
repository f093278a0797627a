//! Dumps written by the servers' own tools run as migrations: `pg_dump`
//! (with its `\restrict` lines, `COPY … FROM stdin` data, dollar-quoted and
//! `BEGIN ATOMIC` bodies), `mariadb-dump` (with `/*!…*/` code comments,
//! `LOCK TABLES`, and triggers, routines and events under `DELIMITER ;;`) and
//! sqlite3's `.dump` (with its own `BEGIN TRANSACTION … COMMIT`). The copy a
//! migration makes dumps exactly as the original does.
//!
//! The servers come from `scripts/test`; the dump tools are PostgreSQL's and
//! MariaDB's own clients (installed with the servers) and the `sqlite3` shell.

use std::path::Path;
use std::process::Command;

mod common;

use common::migration::Case;
use common::{fault::servers_sh, manager, unique_name, Backend};
use dbmanager::{DatabaseManager, Result};

/// Runs a dump tool; its output, or a panic with its error.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} cannot start: {e}"));
    assert!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("a dump in UTF-8")
}

/// A dump without what differs between two dumps of equal databases: the
/// tools' versions and dates, and pg_dump's random `\restrict` keys.
fn comparable(dump: &str) -> String {
    dump.lines()
        .filter(|l| {
            !l.starts_with("-- Dumped")
                && !l.starts_with("\\restrict")
                && !l.starts_with("\\unrestrict")
                && !l.starts_with("-- Dump completed")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `url` with its database (the path) replaced.
fn with_database(url: &str, database: &str) -> String {
    let mut u = url::Url::parse(url).expect("a URL");
    u.set_path(&format!("/{database}"));
    u.to_string()
}

/// Applies `dump` as `V1__dump.sql` to the database at `url`, then drops the
/// history tables, so that only what the dump made is left.
fn migrate_dump(case: &Case, url: &str, dump: &str) -> Result<()> {
    std::fs::write(case.sql_dir().join("V1__dump.sql"), dump).expect("write the dump");
    let db = DatabaseManager::from_config(case.config().url(url).build()?)?;
    let report = db.run_migrations()?;
    assert_eq!(report.applied.len(), 1, "{report:?}");
    let h = &case.history;
    for table in [format!("{h}_journal"), format!("{h}_lock"), h.clone()] {
        db.execute_batch(&format!("DROP TABLE IF EXISTS {}", case.q(&table)))?;
    }
    Ok(())
}

/// Two fresh databases on `b`'s server, made by its admin and dropped after
/// `body`, whatever it returns.
struct Pair {
    admin_url: String,
    src: String,
    dst: String,
    src_url: String,
    dst_url: String,
}

fn with_two_databases(b: Backend, body: impl FnOnce(&Pair) -> Result<()>) -> Result<()> {
    let admin_url = b.admin_url();
    let admin = manager("dumps", &admin_url)?;
    let (src, dst) = (unique_name("dsrc"), unique_name("ddst"));
    for d in [&src, &dst] {
        admin.execute_batch(&format!("CREATE DATABASE {d}"))?;
    }
    let pair = Pair {
        src_url: with_database(&admin_url, &src),
        dst_url: with_database(&admin_url, &dst),
        admin_url,
        src,
        dst,
    };
    let outcome = body(&pair);
    let force = if b == Backend::Postgres {
        " WITH (FORCE)"
    } else {
        ""
    };
    for d in [&pair.src, &pair.dst] {
        admin.execute_batch(&format!("DROP DATABASE IF EXISTS {d}{force}"))?;
    }
    outcome
}

#[test]
fn a_pg_dump_runs_as_a_migration() -> Result<()> {
    let case = Case::new(Backend::Postgres, "pgdump");
    with_two_databases(
        Backend::Postgres,
        |Pair {
             src_url, dst_url, ..
         }| {
            manager("dsrc", src_url)?.execute_batch(
            r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE SEQUENCE extra_seq START 100;
CREATE TABLE person (id serial PRIMARY KEY, name text NOT NULL, m mood, n posint, data jsonb,
  tags text[], born date, full_name text GENERATED ALWAYS AS (upper(name)) STORED, note text);
COMMENT ON TABLE person IS 'People; with a ''quote'' and a semicolon;';
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.note := coalesce(NEW.note, 'touched; ok');
  RETURN NEW;
END $$;
CREATE FUNCTION add(a integer, b integer) RETURNS integer LANGUAGE sql IMMUTABLE RETURN a + b;
CREATE PROCEDURE p2() LANGUAGE sql BEGIN ATOMIC INSERT INTO person (name) VALUES ('atomic'); END;
CREATE TRIGGER person_touch BEFORE INSERT ON person FOR EACH ROW EXECUTE FUNCTION touch();
CREATE VIEW adults AS SELECT id, name FROM person WHERE data ?? 'adult';
CREATE INDEX person_data ON person USING gin (data);
INSERT INTO person (name, m, n, data, tags, born, note) VALUES
  ('ann', 'happy', 3, '{"adult": true, "x": "tab\there"}', '{a,"b c"}', '2000-01-02', E'line1\nline2\\back'),
  ('bob', NULL, NULL, NULL, NULL, NULL, NULL),
  (E'semi;colon\t', 'sad', 1, '[1,2]', '{}', NULL, '$$dollar$$ and \. dot');
CALL p2();
CREATE TABLE "Odd Name" ("Col ""q""" int);
INSERT INTO "Odd Name" VALUES (1), (NULL);
"#,
        )?;
            let bin = servers_sh("_dbm_pg_bin", &[]);
            let pg_dump = Path::new(bin.trim()).join("pg_dump");
            let pg_dump = pg_dump.to_str().expect("a path");
            let dump =
                |url: &str| run(pg_dump, &["--no-owner", "--no-privileges", "--dbname", url]);
            let original = dump(src_url);
            assert!(original.contains("FROM stdin;"), "a dump with COPY data");
            migrate_dump(&case, dst_url, &original)?;
            assert_eq!(comparable(&dump(dst_url)), comparable(&original));
            Ok(())
        },
    )
}

#[test]
fn a_mariadb_dump_runs_as_a_migration() -> Result<()> {
    let case = Case::new(Backend::MySql, "mydump");
    with_two_databases(Backend::MySql, |pair| {
        let Pair {
            admin_url,
            src,
            dst,
            src_url,
            dst_url,
        } = pair;
        let source = manager("dsrc", src_url)?;
        for statement in [
            "CREATE TABLE person (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL, \
             note TEXT, data JSON, amount DECIMAL(10,2), born DATE, flag TINYINT(1), raw BLOB, \
             `odd ``name``` INT) DEFAULT CHARSET=utf8mb4",
            "CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(200))",
            "CREATE TRIGGER person_ai AFTER INSERT ON person FOR EACH ROW BEGIN \
             IF NEW.note IS NULL THEN INSERT INTO audit (what) VALUES (CONCAT('no note; ', NEW.name)); \
             END IF; END",
            "CREATE PROCEDURE add_person(IN n VARCHAR(100)) BEGIN \
             DECLARE c INT DEFAULT 0; INSERT INTO person (name) VALUES (n); \
             SELECT COUNT(*) INTO c FROM person; END",
            "CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2",
            "CREATE VIEW named AS SELECT id, name FROM person WHERE name <> ''",
            "CREATE EVENT tidy ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' \
             DO DELETE FROM audit WHERE what LIKE 'x;%'",
            "INSERT INTO person (name, note, data, amount, born, flag, raw, `odd ``name```) VALUES \
             ('ann', 'it''s; \"quoted\"\\n\\ttabbed', '{\"a\": [1, 2]}', 12.50, '2000-01-02', 1, X'00FF0A', 7), \
             ('bób ✓', NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
            "CALL add_person('carl; DELIMITER //')",
        ] {
            source.execute_batch(statement)?;
        }
        let url = url::Url::parse(admin_url).expect("a URL");
        let password = url.password().unwrap_or_default().to_owned();
        let port = url.port().unwrap_or(3306).to_string();
        let dump = |database: &str| {
            run(
                "mariadb-dump",
                &[
                    "--no-defaults",
                    "--protocol=TCP",
                    "-h",
                    url.host_str().unwrap_or("127.0.0.1"),
                    "-P",
                    &port,
                    "-u",
                    url.username(),
                    &format!("-p{password}"),
                    "--routines",
                    "--triggers",
                    "--events",
                    "--skip-dump-date",
                    // Binary strings as hex literals: a migration file is text.
                    "--hex-blob",
                    database,
                ],
            )
        };
        let original = dump(src);
        assert!(original.contains("DELIMITER ;;"), "a dump with DELIMITER");
        migrate_dump(&case, dst_url, &original)?;
        assert_eq!(
            comparable(&dump(dst)).replace(dst.as_str(), "DB"),
            comparable(&original).replace(src.as_str(), "DB")
        );
        Ok(())
    })
}

#[test]
fn a_sqlite3_dump_runs_as_a_migration() -> Result<()> {
    let case = Case::new(Backend::SqliteFile, "ltdump");
    let (src, dst) = (
        case.dir.path().join("src.db"),
        case.dir.path().join("dst.db"),
    );
    let (src, dst) = (src.to_str().expect("a path"), dst.to_str().expect("a path"));
    run(
        "sqlite3",
        &[
            src,
            "CREATE TABLE person (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, note TEXT, raw BLOB, score REAL);\
             CREATE TABLE audit (what TEXT);\
             CREATE TRIGGER person_ai AFTER INSERT ON person BEGIN INSERT INTO audit VALUES ('added; ' || NEW.name); END;\
             CREATE VIEW named AS SELECT id, name FROM person;\
             CREATE INDEX person_name ON person (name);\
             INSERT INTO person (name, note, raw, score) VALUES ('ann', 'it''s; a\nline', X'00FF', 1.5), ('bób ✓', NULL, NULL, NULL);",
        ],
    );
    let original = run("sqlite3", &[src, ".dump"]);
    assert!(original.contains("BEGIN TRANSACTION;"), "{original}");
    migrate_dump(&case, &format!("sqlite:{dst}"), &original)?;
    assert_eq!(run("sqlite3", &[dst, ".dump"]), original);
    Ok(())
}

/// A dump with raw binary bytes (`mariadb-dump` without `--hex-blob`) is
/// refused before anything runs, with what to do.
#[test]
fn a_file_that_is_not_utf8_is_refused_with_a_hint() -> Result<()> {
    let case = Case::new(Backend::SqliteFile, "bin");
    std::fs::write(
        case.sql_dir().join("V1__blob.sql"),
        b"CREATE TABLE b (x BLOB);\nINSERT INTO b VALUES ('\xff\xfe');\n",
    )
    .expect("write");
    let err = case.db().run_migrations().expect_err("not UTF-8");
    let text = err.to_string();
    assert!(
        text.contains("V1__blob.sql") && text.contains("not UTF-8") && text.contains("--hex-blob"),
        "{text}"
    );
    assert!(!case.exists(&case.db(), "b"), "nothing ran");
    Ok(())
}
