//! No password ever appears in an error (any layer of it), a `Debug` print,
//! a status report or a log line.
//!
//! Every test here collects all of that text and searches it for a known,
//! distinctive password, and for the real application password of the test
//! servers (parsed from `DBMANAGER_TEST_*_URL`).

mod common;

use std::time::Duration;

use common::Backend;
use dbmanager::{DatabaseConfig, DatabaseManager, Error, ErrorKind};

const SECRET: &str = "S3cr3t-Pw-9137";

// ------------------------------------------------------- collected outputs

#[derive(Default)]
struct Seen(String);

impl Seen {
    fn error(&mut self, what: &str, e: &Error) {
        self.0
            .push_str(&format!("--- {what}\n{}", common::error_text(e)));
    }

    fn manager(&mut self, db: &DatabaseManager) {
        self.0.push_str(&format!("{db:?}\n{:?}\n", db.config()));
        self.0
            .push_str(&format!("{}\n", db.config().redacted_url()));
        self.0
            .push_str(&serde_json::to_string(&db.pool_status()).unwrap());
        self.0.push('\n');
        // Health reports, statistics and metrics (labels and values).
        self.0
            .push_str(&serde_json::to_string(&db.health_check()).unwrap());
        self.0
            .push_str(&serde_json::to_string(&db.statement_stats(50)).unwrap());
        self.0.push_str(&dbmanager::metrics::metrics_text());
        self.0.push('\n');
    }

    fn text(&mut self, t: impl std::fmt::Display) {
        self.0.push_str(&format!("{t}\n"));
    }

    /// Asserts none of `secrets` is in anything collected or logged.
    fn assert_free_of(&self, secrets: &[&str]) {
        let logged = common::logged();
        for secret in secrets {
            assert!(secret.len() >= 8, "a distinctive secret");
            assert!(
                !self.0.contains(secret),
                "a password leaked into an error, Debug or status:\n{}",
                self.0
            );
            assert!(
                !logged.contains(secret),
                "a password leaked into the logs:\n{logged}"
            );
        }
    }
}

fn config(url: &str) -> DatabaseConfig {
    DatabaseConfig::builder(common::unique_name("secret"))
        .url(url)
        .connect_timeout(Duration::from_secs(3))
        .acquire_timeout(Duration::from_secs(20))
        .build()
        .expect("a valid configuration")
}

/// The first statement's error on a manager for `url`, with everything
/// the manager shows about itself.
fn failing(seen: &mut Seen, what: &str, url: &str) -> Error {
    let cfg = config(url);
    seen.text(format!("{cfg:?}"));
    let db = DatabaseManager::from_config(cfg).expect("a manager");
    let e = db
        .execute_query("SELECT 1 AS one", ())
        .expect_err("the statement fails");
    seen.error(what, &e);
    let e2 = db.connection().expect_err("so does a checkout");
    seen.error(what, &e2);
    seen.manager(&db);
    e
}

/// Bad host, closed port, wrong password and malformed URLs, all carrying
/// `SECRET`.
fn known_password_never_appears(b: Backend) {
    common::logged();
    let real = b.url();
    let mut seen = Seen::default();

    let mut bad_host = url::Url::parse(&common::with_password(&real, SECRET)).unwrap();
    bad_host
        .set_host(Some("dbmanager-no-such-host.invalid"))
        .unwrap();
    let e = failing(&mut seen, "bad host", bad_host.as_str());
    assert!(
        matches!(e.kind(), ErrorKind::Connect | ErrorKind::ConnectTimeout),
        "{e}"
    );

    let mut closed = url::Url::parse(&common::with_password(&real, SECRET)).unwrap();
    closed.set_port(Some(common::closed_port())).unwrap();
    let e = failing(&mut seen, "closed port", closed.as_str());
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");

    // The real user with a wrong password, against the real server.
    let e = failing(
        &mut seen,
        "wrong password",
        &common::with_password(&real, SECRET),
    );
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");

    // Malformed URLs with the password in them: refused by the builder,
    // by from_lookup, or by the backend when the manager is made.
    let scheme = if b == Backend::Postgres {
        "postgresql"
    } else {
        "mysql"
    };
    let malformed = [
        format!("{scheme}://app:{SECRET}@127.0.0.1:notaport/appdb"),
        format!("{scheme}://app:{SECRET}@/appdb"),
        format!("{scheme}://app:{SECRET}@[::1/appdb"),
        format!("{scheme}:app:{SECRET}@127.0.0.1/appdb"),
        format!("{scheme}:app:{SECRET}@127.0.0.1/appdb?ssl=true"),
        format!("{scheme}:/app:{SECRET}@127.0.0.1/appdb"),
        format!("oracle://app:{SECRET}@127.0.0.1/appdb"),
    ];
    for url in &malformed {
        let builder = DatabaseConfig::builder("malformed").url(url);
        seen.text(format!("{builder:?}"));
        let e = builder.build().expect_err("a malformed URL");
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        seen.error("malformed URL (builder)", &e);
        let e = DatabaseConfig::from_lookup("malformed", |k| {
            (k == "DEVELOPMENT_GLOBAL_MALFORMED_CONNECTION_STRING").then(|| url.clone())
        })
        .expect_err("a malformed URL");
        seen.error("malformed URL (from_lookup)", &e);
    }
    // Accepted as URLs, refused by the backend's own parser.
    let refused = match b {
        Backend::Postgres => {
            format!("postgresql://app:{SECRET}@127.0.0.1:5432/appdb?sslmode=bogus")
        }
        Backend::MySql => format!("mysql://app:{SECRET}@127.0.0.1:3306/appdb?bogus_option=1"),
        other => unreachable!("{other:?} does not run this test"),
    };
    let cfg = config(&refused);
    seen.text(format!("{cfg:?}"));
    let e = DatabaseManager::from_config(cfg).expect_err("refused by the backend");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    seen.error("refused by the backend", &e);

    // The password as a query parameter of the URL.
    if b == Backend::Postgres {
        let port = common::closed_port();
        failing(
            &mut seen,
            "password in the query",
            &format!("postgresql://app@127.0.0.1:{port}/appdb?password={SECRET}"),
        );
    }

    assert!(
        seen.0.contains("***"),
        "the redacted URL is shown: {}",
        seen.0
    );
    seen.assert_free_of(&[SECRET]);
}
each_backend!(known_password_never_appears, [Postgres, MySql]);

/// Working configuration: errors, pool timeouts, Debug of every handle,
/// status and logs never show the real password (nor parameter values in
/// the logs).
fn real_password_never_appears(b: Backend) -> dbmanager::Result<()> {
    common::logged();
    let real = b.url();
    let app_password = common::password_of(&real).expect("the test URL has a password");
    let mut seen = Seen::default();

    let db = common::manager_with(&common::unique_name("secret"), &real, |b| {
        b.pool_size(1)
            .max_overflow(0)
            .acquire_timeout(Duration::from_secs(10))
    })?;
    seen.manager(&db);

    let table = common::unique_name("t");
    db.execute_batch(&format!(
        "CREATE TABLE {table} (id INTEGER PRIMARY KEY, v VARCHAR(40))"
    ))?;
    let param = "ParamValue-5521-visible";
    db.execute(
        &format!("INSERT INTO {table} (id, v) VALUES (?, ?)"),
        (1, param),
    )?;
    let rows = db.execute_query(
        &format!("SELECT v FROM {table} WHERE v = :v"),
        dbmanager::params! { "v" => param },
    )?;
    assert_eq!(rows.len(), 1);

    let e = db.execute_query("SELEC 1", ()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Syntax);
    seen.error("bad SQL", &e);
    let e = db
        .execute(
            &format!("INSERT INTO {table} (id, v) VALUES (?, ?)"),
            (1, "dup"),
        )
        .unwrap_err();
    assert!(e.is_unique_violation(), "{e}");
    seen.error("unique violation", &e);
    let e = db.execute_query("SELECT ? AS a", ()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Parameter);
    seen.error("parameter", &e);

    {
        let mut held = db.connection()?;
        seen.text(format!("{held:?}"));
        let e = db
            .connection_timeout(Duration::from_millis(300))
            .expect_err("the pool of one is exhausted");
        assert!(e.is_pool_exhausted(), "{e}");
        seen.error("pool timeout", &e);
        seen.manager(&db);
        let tx = held.begin()?;
        seen.text(format!("{tx:?}"));
    }
    let tx = db.begin()?;
    seen.text(format!("{tx:?}"));
    drop(tx);
    seen.manager(&db);
    db.execute_batch(&format!("DROP TABLE {table}"))?;
    db.close();
    let e = db.execute_query("SELECT 1", ()).unwrap_err();
    seen.error("closed", &e);
    seen.manager(&db);

    assert!(
        common::logged().contains("dbmanager.statement"),
        "statements are traced"
    );
    seen.assert_free_of(&[&app_password]);
    let logged = common::logged();
    assert!(
        !logged.contains(param),
        "parameter values are not logged:\n{logged}"
    );
    Ok(())
}
each_backend!(real_password_never_appears, [Postgres, MySql]);

#[test]
fn configs_from_the_environment_form_never_show_the_password() {
    common::logged();
    let mut seen = Seen::default();
    for url in [
        format!("postgresql://app:{SECRET}@db.example:5432/appdb?sslmode=require"),
        format!("postgres://app:{SECRET}@db.example/appdb"),
        format!("mariadb://app:{SECRET}@db.example:3306/appdb"),
        format!("mssql://app:{SECRET}@db.example:1433/hub"),
        format!("Server=db.example,1433;Database=hub;User Id=app;Password={SECRET};Encrypt=true"),
        format!("Server=db.example;Database=hub;User Id=app;PWD={SECRET}"),
        format!("Server=tcp:db.example,1433;User Id=app;Password=\"{SECRET};x\";ApplicationIntent=ReadOnly"),
        format!("mssql+pyodbc://app:{SECRET}@db.example:1433/hub?driver=ODBC+Driver+17+for+SQL+Server&TrustServerCertificate=yes&Encrypt=yes"),
    ] {
        let cfg = DatabaseConfig::from_lookup("envform", |k| {
            (k == "DEVELOPMENT_GLOBAL_ENVFORM_CONNECTION_STRING").then(|| url.clone())
        })
        .expect("a valid configuration");
        seen.text(format!("{cfg:?}\n{}", cfg.redacted_url()));
        // A bad setting next to the URL.
        let e = DatabaseConfig::from_lookup("envform", |k| match k {
            "DEVELOPMENT_GLOBAL_ENVFORM_CONNECTION_STRING" => Some(url.clone()),
            "DEVELOPMENT_GLOBAL_ENVFORM_POOL_SIZE" => Some("lots".into()),
            _ => None,
        })
        .unwrap_err();
        seen.error("bad pool size", &e);
    }
    // Two renderings per form, each masking its password once (the quoted
    // password holding a `;` too).
    assert_eq!(seen.0.matches("***").count(), 16, "{}", seen.0);
    seen.assert_free_of(&[SECRET]);
}

/// A Pushgateway URL with credentials: a failed push names the gateway,
/// never the password, in any layer of the error (each `source()` too).
#[test]
fn pushgateway_credentials_never_appear_in_a_failed_push() {
    common::logged();
    let mut seen = Seen::default();
    let port = common::closed_port();
    for url in [
        format!("http://pusher:{SECRET}@127.0.0.1:{port}"),
        format!("http://pusher:{SECRET}@127.0.0.1:{port}/"),
        format!("http://pusher:{SECRET}@dbmanager-no-such-host.invalid:9091"),
        // Percent-encoded in the URL: neither form may show.
        format!("http://pusher:{SECRET}%21x@127.0.0.1:{port}"),
    ] {
        let e = dbmanager::metrics::push_metrics(&url, "secret_job").expect_err("nothing listens");
        assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
        seen.error("failed push", &e);
    }
    assert!(
        seen.0.contains("127.0.0.1"),
        "the gateway is still named: {}",
        seen.0
    );
    seen.assert_free_of(&[SECRET, "S3cr3t-Pw-9137!x"]);
}

/// A statement with a secret written into it (`ALTER ROLE x PASSWORD '…'`
/// style): a pool timeout's holder list and the leak warning show its
/// normalised text (literals as `?`), never the literal.
fn held_statement_literals_never_appear(b: Backend) -> dbmanager::Result<()> {
    common::logged();
    let place = b.place();
    let db = place.manager_with("held_secret", |c| {
        c.pool_size(1)
            .max_overflow(0)
            .acquire_timeout(Duration::from_secs(10))
            .leak_threshold(Some(Duration::from_millis(200)))
    })?;
    let mut seen = Seen::default();
    let mut held = db.connection()?;
    // What `ALTER ROLE x PASSWORD '…'` would leave behind, runnable by the
    // application user on every backend.
    let row = held.query_one(
        &format!("SELECT 'x' AS role_name, '{SECRET}' AS password, 4711 AS n"),
        (),
    )?;
    assert_eq!(row.get::<String>("password")?, SECRET);
    seen.text(format!("{held:?}"));

    // Another caller times out waiting: the error lists the holder.
    let e = db
        .connection_timeout(Duration::from_millis(300))
        .expect_err("the pool of one is held");
    assert!(e.is_pool_exhausted(), "{e}");
    seen.error("pool timeout", &e);
    let holders = e.pool_holders();
    assert_eq!(holders.len(), 1, "{holders:?}");
    let last = holders[0]
        .last_sql
        .as_deref()
        .expect("the last SQL is kept");
    assert!(
        last.starts_with("SELECT ? AS role_name, ? AS password"),
        "the normalised text, literals as `?`: {last}"
    );
    seen.text(format!("{holders:?}"));
    seen.text(serde_json::to_string(holders).unwrap());

    // Held past the leak threshold: the watchdog's sweep warns once.
    let waited = std::time::Instant::now();
    while db.pool_status().suspected_leaks == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "no leak reported"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let logged = common::logged();
    assert!(
        logged.contains("leak threshold") && logged.contains("? AS password"),
        "the leak warning names the normalised statement:\n{logged}"
    );
    seen.manager(&db);
    drop(held);
    seen.assert_free_of(&[SECRET]);
    Ok(())
}
each_backend!(
    held_statement_literals_never_appear,
    [Postgres, MySql, SqliteFile]
);
