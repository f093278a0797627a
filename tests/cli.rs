//! The `dbmanager` command-line tool, end to end on SQLite (and a health
//! check on PostgreSQL), configured through the environment exactly as the
//! library reads it.

mod common;

use std::process::{Command, Output, Stdio};

use common::{Backend, TempDir};

fn cli(dir: &TempDir, url: &str, args: &[&str]) -> Output {
    command(dir, url).args(args).output().expect("run the CLI")
}

/// The CLI configured for the database `shop` at `url`, its migrations in
/// `sql/` of `dir`; no `DATABASE_URL` or `DBMANAGER_DATABASE` from the
/// caller's environment.
fn command(dir: &TempDir, url: &str) -> Command {
    std::fs::create_dir_all(dir.path().join("sql")).expect("mkdir");
    let mut c = Command::new(env!("CARGO_BIN_EXE_dbmanager"));
    c.env_remove("DATABASE_URL")
        .env_remove("DBMANAGER_DATABASE")
        .env("ENVIRONMENT", "development")
        .env("DBMANAGER_ENV_DIR", dir.path())
        .env("DEVELOPMENT_GLOBAL_SHOP_CONNECTION_STRING", url)
        .env(
            "DEVELOPMENT_GLOBAL_SHOP_MIGRATIONS_DIR",
            dir.path().join("sql"),
        )
        .env(
            "STAGING_GLOBAL_SHOP_CONNECTION_STRING",
            dir.sqlite_url("staging.db"),
        )
        .env("STAGING_GLOBAL_SHOP_MIGRATIONS_DIR", dir.path().join("sql"));
    c
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn migrate_info_validate_new_on_sqlite() {
    let dir = TempDir::new("cli");
    let url = dir.sqlite_url("shop.db");
    let run = |args: &[&str]| cli(&dir, &url, args);

    // `new` creates the next V file, keeping the padding.
    let o = run(&["--database", "shop", "new", "create", "customers"]);
    assert!(o.status.success(), "{}", text(&o));
    let first = dir.path().join("sql/V001__create_customers.sql");
    assert!(first.exists(), "{}", text(&o));
    std::fs::write(
        &first,
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);\n",
    )
    .expect("write");
    let o = run(&["--database", "shop", "new", "add orders"]);
    assert!(o.status.success(), "{}", text(&o));
    let second = dir.path().join("sql/V002__add_orders.sql");
    std::fs::write(&second, "CREATE TABLE orders (id INTEGER PRIMARY KEY);\n").expect("write");

    // Dry run: the SQL, nothing applied.
    let o = run(&["--database", "shop", "migrate", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("CREATE TABLE customers"),
        "{}",
        text(&o)
    );

    let o = run(&["--database", "shop", "migrate"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("V001__create_customers.sql") && out.contains("version 002"),
        "{out}"
    );
    let o = run(&["--database", "shop", "migrate"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("nothing to do"),
        "{}",
        text(&o)
    );

    // info --json parses.
    let o = run(&["--database", "shop", "info", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("info --json is JSON");
    assert_eq!(v["current_version"], "002", "kept as written");
    assert_eq!(v["applied"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["history_table"], "schema_version");
    // The human table.
    let o = run(&["--database", "shop", "info"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("| Version") && out.contains("Success"),
        "{out}"
    );

    // An edited applied file: validate and info exit non-zero, naming it.
    std::fs::write(
        &first,
        "CREATE TABLE customers (id BIGINT PRIMARY KEY, name TEXT);\n",
    )
    .expect("write");
    let o = run(&["--database", "shop", "validate"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("V001__create_customers.sql") && !err.contains("nothing was run"),
        "{}",
        text(&o)
    );
    let o = run(&["--database", "shop", "info"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = run(&["--database", "shop", "repair"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["--database", "shop", "validate", "--json"]);
    assert!(o.status.success(), "{}", text(&o));

    // --env selects the configuration as the library does.
    let o = run(&[
        "--database",
        "shop",
        "--env",
        "staging",
        "migrate",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["applied"].as_array().map(Vec::len), Some(2));
    assert!(dir.path().join("staging.db").exists());

    // pool and health.
    let o = run(&["--database", "shop", "pool", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("pool --json is JSON");
    assert_eq!(v["database_name"], "shop");
    let o = run(&["--database", "shop", "health"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("healthy"),
        "{}",
        text(&o)
    );
}

#[test]
fn problems_exit_non_zero() {
    let dir = TempDir::new("cli");
    let url = dir.sqlite_url("shop.db");
    // No database given: a usage error, naming the ways to give one.
    let o = cli(&dir, &url, &["info"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--database")
            && err.contains("--url")
            && err.contains("DATABASE_URL")
            && err.contains("DEVELOPMENT_GLOBAL_NAME_CONNECTION_STRING"),
        "{}",
        text(&o)
    );
    // Not configured: names the variable.
    let o = cli(&dir, &url, &["--database", "nowhere", "info"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("DEVELOPMENT_GLOBAL_NOWHERE_CONNECTION_STRING"),
        "{}",
        text(&o)
    );
    // A bad file name, refused by the strict setting (by default it is
    // skipped with a warning, as Flyway does).
    std::fs::create_dir_all(dir.path().join("sql")).expect("mkdir");
    std::fs::write(dir.path().join("sql/V1-first.sql"), "SELECT 1;").expect("write");
    let o = command(&dir, &url)
        .env("DEVELOPMENT_GLOBAL_SHOP_MIGRATIONS_STRICT", "true")
        .args(["--database", "shop", "migrate", "--json"])
        .output()
        .expect("run the CLI");
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("errors are JSON with --json");
    assert!(
        v["error"].as_str().unwrap_or("").contains("V1-first.sql"),
        "{v}"
    );
    // Usage errors: clap's code 2.
    let o = cli(&dir, &url, &["--database", "shop", "frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    // A near miss is answered with the subcommand meant.
    let o = cli(&dir, &url, &["--database", "shop", "migrat"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("'migrate'"),
        "{}",
        text(&o)
    );
}

#[test]
fn health_on_postgres() {
    let dir = TempDir::new("cli");
    let url = Backend::Postgres.url();
    let o = cli(&dir, &url, &["--database", "shop", "health", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["connection"], true);
    assert_eq!(v["database_type"], "postgresql");
    if let Some(pw) = common::password_of(&url) {
        assert!(!text(&o).contains(&pw));
    }
}

#[test]
fn health_of_a_server_that_is_down_exits_non_zero() {
    let dir = TempDir::new("cli");
    let url = format!("postgresql://app:pw@127.0.0.1:{}/db", common::closed_port());
    let o = cli(&dir, &url, &["--database", "shop", "health", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["status"], "unhealthy");
    assert_eq!(v["connection"], false);
}

/// A lock timeout past what a clock can add is clamped, not a panic.
#[test]
fn a_huge_lock_timeout_is_not_a_panic() {
    let dir = TempDir::new("cli_lock");
    let url = dir.sqlite_url("shop.db");
    std::fs::create_dir_all(dir.path().join("sql")).expect("mkdir");
    std::fs::write(
        dir.path().join("sql/V1__t.sql"),
        "CREATE TABLE t (id INTEGER);\n",
    )
    .expect("write");
    let o = cli(
        &dir,
        &url,
        &[
            "--database",
            "shop",
            "migrate",
            "--lock-timeout",
            "18446744073709551615",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("V1__t.sql"), "it ran: {}", text(&o));
}

/// A migration that failed part-way blocks `migrate`: `health` says
/// `unhealthy`, names it, and exits 1.
#[test]
fn health_over_a_failed_migration_exits_non_zero() {
    let dir = TempDir::new("cli_failed");
    let url = dir.sqlite_url("shop.db");
    std::fs::create_dir_all(dir.path().join("sql")).expect("mkdir");
    std::fs::write(
        dir.path().join("sql/V1__half.sql"),
        "-- dbmanager:no-transaction\nCREATE TABLE t (id INTEGER);\nCREATE TABLE t (id INTEGER);\n",
    )
    .expect("write");
    let o = cli(&dir, &url, &["--database", "shop", "migrate"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = cli(&dir, &url, &["--database", "shop", "health", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["status"], "unhealthy", "{v}");
    assert_eq!(v["migration_status"]["state"], "failed", "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("V1__half.sql"),
        "{v}"
    );
    let o = cli(&dir, &url, &["--database", "shop", "health"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

/// `dbmanager … | head -1`: the reader goes away early; the CLI ends
/// quietly, without a panic.
#[test]
fn a_closed_stdout_ends_quietly() {
    let dir = TempDir::new("cli_pipe");
    let url = dir.sqlite_url("shop.db");
    for args in [
        &["--database", "shop", "pool"][..],
        &["--database", "shop", "info", "--json"],
    ] {
        let mut child = command(&dir, &url)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the CLI");
        // Close the read end before the CLI writes anything.
        drop(child.stdout.take());
        let o = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{args:?}: {:?} {stderr}",
            o.status
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
    }
}

/// `--url` and `--migrations-dir` connect without any configuration, as
/// `DATABASE_URL` does when no database is named; `DBMANAGER_DATABASE`
/// names the database when `-d` is left out.
#[test]
fn connects_by_url_or_default_name() {
    let dir = TempDir::new("cli_url");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    std::fs::write(
        elsewhere.join("V1__t.sql"),
        "CREATE TABLE t (id INTEGER);\n",
    )
    .expect("write");
    let url = dir.sqlite_url("by_url.db");
    let migrations_dir = elsewhere.display().to_string();
    let o = cli(
        &dir,
        "sqlite::memory:",
        &[
            "--url",
            &url,
            "--migrations-dir",
            &migrations_dir,
            "migrate",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("V1__t.sql"), "{}", text(&o));

    // DATABASE_URL with migrations/ in the working directory, as sqlx reads it.
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("migrations")).expect("mkdir");
    std::fs::write(
        work.join("migrations/V1__u.sql"),
        "CREATE TABLE u (id INTEGER);\n",
    )
    .expect("write");
    let env_url = dir.sqlite_url("by_env.db");
    let o = command(&dir, "sqlite::memory:")
        .current_dir(&work)
        .env("DATABASE_URL", &env_url)
        .args(["migrate", "--json"])
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["current_version"], "1", "{v}");

    // DBMANAGER_DATABASE names the configured database.
    let shop = dir.sqlite_url("shop.db");
    let o = command(&dir, &shop)
        .env("DBMANAGER_DATABASE", "shop")
        .args(["info", "--json"])
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["database_name"], "shop", "{v}");
}

/// `new` writes files without a connection; `-r` also writes the U file.
#[test]
fn new_needs_no_connection_and_writes_undo_files() {
    let dir = TempDir::new("cli_new");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    // Nothing configured at all: ./migrations.
    let o = command(&dir, "sqlite::memory:")
        .current_dir(&work)
        .args(["new", "-r", "add", "users"])
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        work.join("migrations/V001__add_users.sql").exists(),
        "{}",
        text(&o)
    );
    assert!(
        work.join("migrations/U001__add_users.sql").exists(),
        "{}",
        text(&o)
    );
    // A named database with a folder but no connection string.
    let folder = dir.path().join("inventory_sql");
    let o = command(&dir, "sqlite::memory:")
        .env("DEVELOPMENT_GLOBAL_INVENTORY_MIGRATIONS_DIR", &folder)
        .args([
            "-d",
            "inventory",
            "new",
            "--reversible",
            "--json",
            "add stock",
        ])
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["ok"], true);
    assert!(folder.join("V001__add_stock.sql").exists(), "{}", text(&o));
    assert!(folder.join("U001__add_stock.sql").exists(), "{}", text(&o));
    assert!(
        v["undo"]
            .as_str()
            .unwrap_or("")
            .ends_with("U001__add_stock.sql"),
        "{v}"
    );
}

/// Messages name the CLI's flags and real variable names, not the
/// library's Rust API or placeholders.
#[test]
fn messages_speak_in_flags() {
    let dir = TempDir::new("cli_msgs");
    let url = dir.sqlite_url("shop.db");
    // A missing folder names the variable it was read from and the flag.
    let o = cli(
        &dir,
        &url,
        &[
            "--database",
            "shop",
            "--migrations-dir",
            "/nonexistent/sql",
            "migrate",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("DEVELOPMENT_GLOBAL_SHOP_MIGRATIONS_DIR") && err.contains("--migrations-dir"),
        "{err}"
    );
    assert!(
        !err.contains("{PREFIX}") && !err.contains("{NAME}") && !err.contains("::"),
        "{err}"
    );

    // A busy lock: held by a live process (this one) on another host.
    std::fs::write(
        dir.path().join("sql/V1__t.sql"),
        "CREATE TABLE t (id INTEGER);\n",
    )
    .expect("write");
    {
        let db = common::manager(&common::unique_name("lock"), &url).expect("open");
        db.execute_batch(
            "CREATE TABLE schema_version_lock (id INTEGER PRIMARY KEY CHECK (id = 1), \
             pid INTEGER NOT NULL, host TEXT NOT NULL, owner TEXT NOT NULL, acquired_on TEXT NOT NULL)",
        )
        .expect("lock table");
        db.execute(
            "INSERT INTO schema_version_lock VALUES (1, ?, 'elsewhere', 'a test', '2024-01-01T00:00:00Z')",
            (i64::from(std::process::id()),),
        )
        .expect("lock row");
    }
    let o = cli(
        &dir,
        &url,
        &["--database", "shop", "migrate", "--lock-timeout", "1"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--lock-timeout") && !err.contains("MigrateOptions"),
        "{err}"
    );
}

/// `pool` shows settings, not a live-looking pool; `health` puts the
/// verdict first, rounded; `--json` output says `"ok"`.
#[test]
fn pool_and_health_read_as_people_expect() {
    let dir = TempDir::new("cli_show");
    let url = dir.sqlite_url("shop.db");
    let o = cli(&dir, &url, &["--database", "shop", "pool"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("settings") && out.contains("Pool size"),
        "{out}"
    );
    assert!(
        !out.contains("checked_out") && !out.contains("connections_created"),
        "{out}"
    );
    let o = cli(&dir, &url, &["--database", "shop", "pool", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["live"], false, "{v}");
    assert!(v.get("connections").is_none(), "{v}");
    assert!(v["pool_size"].is_u64(), "{v}");

    let o = cli(&dir, &url, &["--database", "shop", "health"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let first_row = out.lines().nth(3).unwrap_or_default();
    assert!(
        first_row.contains("Status") && first_row.contains("healthy"),
        "{out}"
    );
    assert!(
        !out.contains("null") && !out.contains("response_time_ms"),
        "{out}"
    );
    let ms = out
        .lines()
        .find(|l| l.contains("Response time"))
        .expect("a response time row");
    let digits = ms
        .split('.')
        .nth(1)
        .map_or(0, |d| d.chars().take_while(char::is_ascii_digit).count());
    assert!(digits <= 1, "rounded: {ms}");
    let o = cli(&dir, &url, &["--database", "shop", "health", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["status"], "healthy", "{v}");
    let o = cli(&dir, &url, &["--database", "shop", "validate", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn an_upper_case_sql_extension_is_refused_not_skipped() {
    let dir = TempDir::new("cli-ext");
    let url = dir.sqlite_url("shop.db");
    std::fs::create_dir_all(dir.path().join("sql")).expect("mkdir");
    std::fs::write(
        dir.path().join("sql/V5__create.SQL"),
        "CREATE TABLE t (id INTEGER);\n",
    )
    .expect("write");
    let o = cli(&dir, &url, &["--database", "shop", "migrate"]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("V5__create.SQL") && err.contains("V5__create.sql"),
        "{}",
        text(&o)
    );
}

#[test]
fn an_unknown_database_name_suggests_the_configured_one() {
    let dir = TempDir::new("cli-name");
    let url = dir.sqlite_url("shop.db");
    let o = command(&dir, &url)
        .env(
            "DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING",
            dir.sqlite_url("rpa.db"),
        )
        .args(["-d", "rpadb", "info"])
        .output()
        .expect("run the CLI");
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("did you mean `rpa_db`"), "{}", text(&o));
    // Nothing near: no suggestion.
    let o = cli(&dir, &url, &["-d", "inventory", "info"]);
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("did you mean"),
        "{}",
        text(&o)
    );
}

#[test]
fn the_env_folder_is_named_by_its_full_path() {
    let dir = TempDir::new("cli-envdir");
    let url = dir.sqlite_url("shop.db");
    let o = command(&dir, &url)
        .env_remove("DBMANAGER_ENV_DIR")
        .current_dir(dir.path())
        .args(["-d", "nothere", "info"])
        .output()
        .expect("run the CLI");
    assert!(!o.status.success(), "{}", text(&o));
    let full = dir.path().join("envs").join(".env.development");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&*full.to_string_lossy()),
        "{}",
        text(&o)
    );
}

#[test]
fn help_lists_variables_examples_and_exit_codes() {
    let dir = TempDir::new("cli-help");
    let o = cli(&dir, "sqlite::memory:", &["--help"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for part in [
        "Environment variables",
        "_CONNECTION_STRING",
        "DATABASE_URL",
        "DBMANAGER_ENV_DIR",
        "Examples:",
        "migrate --dry-run",
        "Exit codes:",
        "2  a usage error",
    ] {
        assert!(out.contains(part), "no {part:?} in:\n{}", text(&o));
    }
}

#[test]
fn version_names_the_compiled_backends() {
    let dir = TempDir::new("cli-version");
    let o = cli(&dir, "sqlite::memory:", &["--version"]);
    assert!(o.status.success(), "{}", text(&o));
    // The tests build with --all-features.
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!(
            "dbmanager {} (postgres, mysql, sqlite, mssql)",
            env!("CARGO_PKG_VERSION")
        ),
        "{}",
        text(&o)
    );
}

/// The library's warnings reach the person at the terminal: a misspelt
/// setting is named on stderr with the right spelling (its value is not
/// printed), and `DBMANAGER_LOG=off` silences it.
#[test]
fn warnings_about_settings_reach_stderr() {
    let dir = TempDir::new("cli-warn");
    let url = dir.sqlite_url("shop.db");
    let o = command(&dir, &url)
        .env("DEVELOPMENT_GLOBAL_SHOP_POOLSIZE", "3")
        .args(["--database", "shop", "info"])
        .output()
        .expect("run the CLI");
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("DEVELOPMENT_GLOBAL_SHOP_POOLSIZE")
            && err.contains("DEVELOPMENT_GLOBAL_SHOP_POOL_SIZE"),
        "{}",
        text(&o)
    );
    let o = command(&dir, &url)
        .env("DEVELOPMENT_GLOBAL_SHOP_POOLSIZE", "3")
        .env("DBMANAGER_LOG", "off")
        .args(["--database", "shop", "info"])
        .output()
        .expect("run the CLI");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("POOLSIZE"),
        "{}",
        text(&o)
    );
}

/// `completions` prints a script for the shell without any database.
#[test]
fn completions_need_no_database() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef dbmanager")] {
        let o = Command::new(env!("CARGO_BIN_EXE_dbmanager"))
            .env_remove("DATABASE_URL")
            .env_remove("DBMANAGER_DATABASE")
            .args(["completions", shell])
            .output()
            .expect("run the CLI");
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(marker), "{shell}: {}", text(&o));
        assert!(out.contains("migrate"), "{shell}: {}", text(&o));
    }
    let o = Command::new(env!("CARGO_BIN_EXE_dbmanager"))
        .args(["completions", "no-such-shell"])
        .output()
        .expect("run the CLI");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// `import` loads a CSV file (header row = columns, empty field = NULL) and
/// `export` writes a query's rows back as CSV; a malformed file or a
/// constraint error imports nothing, and says so.
#[test]
fn import_and_export_csv() {
    let dir = TempDir::new("cli");
    let url = dir.sqlite_url("shop.db");
    let run = |args: &[&str]| cli(&dir, &url, args);
    let db = common::manager(&common::unique_name("cli_bulk"), &url).expect("manager");
    db.execute_batch(
        "CREATE TABLE \"order lines\" (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER)",
    )
    .expect("create");
    let mut csv = String::from("id,name,qty\n");
    for i in 0..2500 {
        let qty = if i % 2 == 0 {
            i.to_string()
        } else {
            String::new()
        };
        csv.push_str(&format!("{i},\"ünï, \"\"{i}\"\"\",{qty}\n"));
    }
    let file = dir.path().join("lines.csv");
    std::fs::write(&file, &csv).expect("write csv");
    let file = file.to_str().expect("utf-8 path");

    let o = run(&[
        "-d",
        "shop",
        "import",
        "order lines",
        file,
        "--chunk-size",
        "1000",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("imported 2500 rows"),
        "{}",
        text(&o)
    );

    let o = run(&[
        "-d",
        "shop",
        "export",
        "SELECT id, name, qty FROM \"order lines\" ORDER BY id",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), csv);

    // Again: every id exists, nothing is imported, and the error says why.
    let o = run(&["-d", "shop", "import", "order lines", file]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("rolled back"),
        "{}",
        text(&o)
    );

    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "id,name,qty\n5000,a,1\n5001,b\n").expect("write csv");
    let o = run(&["-d", "shop", "import", "order lines", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not valid CSV"),
        "{}",
        text(&o)
    );
    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "").expect("write csv");
    let o = run(&[
        "-d",
        "shop",
        "import",
        "order lines",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("has no header row"),
        "{}",
        text(&o)
    );
    let n: i64 = db
        .query_one("SELECT COUNT(*) AS n FROM \"order lines\"", ())
        .expect("count")
        .get("n")
        .expect("n");
    assert_eq!(n, 2500);
}

/// A second migrator says once, on stderr, that it waits for the lock and
/// who holds it, then gives up with the lock's error.
#[test]
fn a_waiting_migrator_says_so_once() {
    let dir = TempDir::new("cli-lock");
    let url = Backend::Postgres.url();
    let table = common::unique_name("hist");
    std::fs::create_dir_all(dir.path().join("sql")).expect("mkdir");
    std::fs::write(dir.path().join("sql/V1__slow.sql"), "SELECT pg_sleep(5);\n").expect("write");
    let first = command(&dir, &url)
        .env("DEVELOPMENT_GLOBAL_SHOP_MIGRATIONS_TABLE", &table)
        .args(["--database", "shop", "migrate"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the first migrator");
    // The first one holds the lock once it has made the history table.
    let db = common::manager(&common::unique_name("cli_lock"), &url).expect("manager");
    let made = (0..300).any(|_| {
        let found = db
            .query_one(
                &format!("SELECT to_regclass('{table}') IS NOT NULL AS t"),
                (),
            )
            .and_then(|r| r.get::<bool>("t"))
            .unwrap_or(false);
        if !found {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        found
    });
    assert!(made, "the first migrator made its history table");
    let o = command(&dir, &url)
        .env("DEVELOPMENT_GLOBAL_SHOP_MIGRATIONS_TABLE", &table)
        .args(["--database", "shop", "migrate", "--lock-timeout", "1"])
        .output()
        .expect("run the second migrator");
    let first = first.wait_with_output().expect("the first migrator ends");
    assert!(first.status.success(), "the first migrator applied V1");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("waiting up to").count(),
        1,
        "said once: {}",
        text(&o)
    );
    assert!(err.contains(&table), "{}", text(&o));
    assert!(err.contains("--lock-timeout"), "{}", text(&o));
}
