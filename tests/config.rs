//! Bad configuration, through `DatabaseConfig::from_lookup`, the builder and
//! the manager (wrong password, unreachable server). Every message names
//! what is wrong and says what to do.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::Backend;
use dbmanager::{BackendKind, DatabaseConfig, DatabaseManager, Error, ErrorKind, Result};
use proptest::strategy::Strategy;

fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

/// Asserts a Config error whose message contains every one of `parts`.
fn config_error(r: Result<DatabaseConfig>, parts: &[&str]) -> Error {
    let e = r.expect_err("a configuration error");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let text = e.to_string();
    for part in parts {
        assert!(text.contains(part), "`{part}` missing from: {text}");
    }
    e
}

const URL: &str = "postgresql://app:pw@db.example:5432/appdb";

#[test]
fn missing_connection_string_names_the_exact_variable() {
    config_error(
        DatabaseConfig::from_lookup("rpa_db", lookup(&[])),
        &[
            "set DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING",
            "the given lookup",
        ],
    );
    config_error(
        DatabaseConfig::from_lookup("SurveyHub", lookup(&[("ENVIRONMENT", "staging")])),
        &["set STAGING_GLOBAL_SURVEYHUB_CONNECTION_STRING"],
    );
    config_error(
        DatabaseConfig::from_lookup(
            "my-db.main",
            lookup(&[("DEVELOPMENT_GLOBAL_MY_DB_MAIN_CONNECTION_STRING", "   ")]),
        ),
        &["set DEVELOPMENT_GLOBAL_MY_DB_MAIN_CONNECTION_STRING"],
    );
}

#[test]
fn malformed_settings_name_the_variable_and_the_fix() {
    // (variable suffix, value, what the message must also say)
    let cases: &[(&str, &str, &str)] = &[
        ("RPA_DB_POOL_SIZE", "five", "whole number"),
        ("RPA_DB_POOL_SIZE", "-3", "whole number"),
        ("RPA_DB_POOL_SIZE", "0", "at least 1"),
        ("CONNECTION_POOL_SIZE", "many", "whole number"),
        ("RPA_DB_MAX_OVERFLOW", "1.5", "whole number"),
        ("RPA_DB_TIMEOUT", "soon", "e.g. 30"),
        ("RPA_DB_TIMEOUT", "-1", "e.g. 30"),
        ("DATABASE_TIMEOUT", "NaN", "e.g. 30"),
        ("RPA_DB_POOL_TIMEOUT", "1m", "e.g. 30"),
        ("RPA_DB_POOL_TIMEOUT", "0", "above zero"),
        ("RPA_DB_CONNECT_TIMEOUT", "fast", "e.g. 30"),
        ("RPA_DB_CONNECT_TIMEOUT", "0", "above zero"),
        ("RPA_DB_IDLE_TIMEOUT", "never", "e.g. 30"),
        ("RPA_DB_MAX_LIFETIME", "forever", "e.g. 30"),
        ("RPA_DB_READ_ONLY", "maybe", "true or false"),
        (
            "RPA_DB_TYPE",
            "oracle",
            "use postgresql, mysql, sqlite or sqlserver",
        ),
    ];
    for (suffix, value, advice) in cases {
        let var = format!("DEVELOPMENT_GLOBAL_{suffix}");
        config_error(
            DatabaseConfig::from_lookup(
                "rpa_db",
                lookup(&[
                    ("DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING", URL),
                    (&var, value),
                ]),
            ),
            &[&var, advice],
        );
    }
}

#[test]
fn valid_settings_are_read() -> Result<()> {
    let cfg = DatabaseConfig::from_lookup(
        "rpa_db",
        lookup(&[
            ("DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING", URL),
            ("DEVELOPMENT_GLOBAL_RPA_DB_TYPE", "PostgreSQL"),
            ("DEVELOPMENT_GLOBAL_RPA_DB_POOL_SIZE", " 3 "),
            ("DEVELOPMENT_GLOBAL_RPA_DB_POOL_TIMEOUT", "0.5"),
            ("DEVELOPMENT_GLOBAL_RPA_DB_READ_ONLY", "yes"),
        ]),
    )?;
    assert_eq!(cfg.kind(), BackendKind::Postgres);
    assert_eq!(cfg.pool_size(), 3);
    assert_eq!(cfg.acquire_timeout(), Duration::from_millis(500));
    assert!(cfg.read_only());
    Ok(())
}

#[test]
fn type_must_agree_with_the_url() {
    config_error(
        DatabaseConfig::from_lookup(
            "rpa_db",
            lookup(&[
                ("DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING", URL),
                ("DEVELOPMENT_GLOBAL_RPA_DB_TYPE", "mysql"),
            ]),
        ),
        &[
            "DEVELOPMENT_GLOBAL_RPA_DB_TYPE says mysql",
            "DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING is a postgresql URL",
            "make them agree",
        ],
    );
    config_error(
        DatabaseConfig::builder("rpa_db")
            .url("sqlite::memory:")
            .kind(BackendKind::MySql)
            .build(),
        &["says mysql", "sqlite URL", "make them agree"],
    );
}

#[test]
fn bad_urls_name_the_variable_and_the_expected_form() {
    let cases: &[(&str, &str)] = &[
        ("oracle://app:pw@db.example/orcl", "not one of postgresql"),
        (
            "postgresql://app:pw@db.example:notaport/appdb",
            "postgresql://user:password@host",
        ),
        ("postgresql:///appdb", "postgresql://user:password@host"),
        ("just some words", "postgresql://user:password@host"),
        ("k=v;x=y", "postgresql://user:password@host"),
    ];
    for (url, advice) in cases {
        config_error(
            DatabaseConfig::from_lookup(
                "rpa_db",
                lookup(&[("DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING", url)]),
            ),
            &[
                "DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING cannot be used",
                advice,
            ],
        );
        config_error(
            DatabaseConfig::builder("rpa_db").url(*url).build(),
            &["the connection string cannot be used", advice],
        );
    }
}

#[test]
fn builder_errors_say_what_to_do() {
    config_error(
        DatabaseConfig::builder("x").build(),
        &["call .url(…) on the builder"],
    );
    config_error(
        DatabaseConfig::builder("  ").url("sqlite::memory:").build(),
        &["database name is empty", "give"],
    );
    config_error(
        DatabaseConfig::builder("x").url(URL).pool_size(0).build(),
        &["at least 1"],
    );
    config_error(
        DatabaseConfig::builder("x")
            .url(URL)
            .acquire_timeout(Duration::ZERO)
            .build(),
        &["above zero"],
    );
    config_error(
        DatabaseConfig::builder("x")
            .url(URL)
            .connect_timeout(Duration::ZERO)
            .build(),
        &["above zero"],
    );
    config_error(
        DatabaseConfig::builder("x")
            .url(URL)
            .pool_size(9_000)
            .max_overflow(2_000)
            .build(),
        &["exceeds 10000"],
    );
}

#[test]
fn sql_server_is_configured_and_connects_on_demand() -> Result<()> {
    let url = format!("mssql://app:pw@127.0.0.1:{}/hub", common::closed_port());
    let cfg = DatabaseConfig::builder("hub").url(url).build()?;
    assert_eq!(cfg.kind(), BackendKind::MsSql);
    let db = DatabaseManager::from_config(cfg)?;
    let e = db.execute_query("SELECT 1", ()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    assert!(e.to_string().contains("SQL Server"), "{e}");
    Ok(())
}

// ------------------------------------------------------- through the manager

/// The acquisition timeout is long, so an error that arrives quickly was
/// reported at once rather than after waiting for the pool.
const LONG_WAIT: Duration = Duration::from_secs(30);
const AT_ONCE: Duration = Duration::from_secs(10);

fn first_statement_error(url: &str) -> (Error, Duration) {
    let db = common::manager_with(&common::unique_name("cfg"), url, |b| {
        b.acquire_timeout(LONG_WAIT)
            .connect_timeout(Duration::from_secs(5))
    })
    .expect("the configuration itself is valid");
    let started = Instant::now();
    let e = db
        .execute_query("SELECT 1 AS one", ())
        .expect_err("the first statement fails");
    let took = started.elapsed();
    // A second attempt fails the same way (nothing is left half open), or
    // at once when the first one's retries opened the circuit breaker.
    let again = db.execute_query("SELECT 1 AS one", ()).unwrap_err();
    assert!(
        again.kind() == e.kind() || again.kind() == ErrorKind::CircuitOpen,
        "{again}"
    );
    assert_eq!(db.pool_status().checked_out, 0);
    (e, took)
}

fn wrong_password_is_auth_at_once(b: Backend) {
    let code = match b {
        Backend::Postgres => "28P01",
        Backend::MySql => "1045",
        other => unreachable!("{other:?} does not run this test"),
    };
    let (e, took) = first_statement_error(&common::with_password(&b.url(), "not-the-password"));
    assert_eq!(e.kind(), ErrorKind::Auth, "{e} / {e:?}");
    assert!(!e.is_retryable());
    assert!(
        took < AT_ONCE,
        "reported at once, not after the pool timeout: {took:?}"
    );
    assert_eq!(e.db_code(), Some(code), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("password"), "says what to check: {text}");
}

each_backend!(wrong_password_is_auth_at_once, [Postgres, MySql]);

fn closed_port_is_connect(b: Backend) {
    let mut parsed = url::Url::parse(&b.url()).unwrap();
    parsed.set_port(Some(common::closed_port())).unwrap();
    let (e, took) = first_statement_error(parsed.as_str());
    assert_eq!(e.kind(), ErrorKind::Connect, "{e} / {e:?}");
    assert!(e.is_retryable());
    assert!(took < AT_ONCE, "reported at once: {took:?}");
    let text = e.to_string();
    assert!(
        text.contains("check that the server is running"),
        "says what to do: {text}"
    );
}

each_backend!(closed_port_is_connect, [Postgres, MySql]);

#[test]
fn sqlite_unopenable_file_is_connect() {
    let dir = common::TempDir::new("dbmanager-cfg");
    let url = format!(
        "sqlite:{}",
        dir.path().join("no-such-folder").join("x.db").display()
    );
    let (e, took) = first_statement_error(&url);
    assert_eq!(e.kind(), ErrorKind::Connect, "{e} / {e:?}");
    assert!(took < AT_ONCE, "{took:?}");
    assert!(e.to_string().contains("check"), "says what to do: {e}");
}

#[test]
fn postgres_unknown_database_says_so() {
    let mut parsed = url::Url::parse(&Backend::Postgres.url()).unwrap();
    parsed.set_path("/dbmanager_no_such_database");
    let (e, took) = first_statement_error(parsed.as_str());
    assert!(took < AT_ONCE, "{took:?}");
    assert_eq!(e.db_code(), Some("3D000"), "{e:?}");
    assert!(e.to_string().contains("dbmanager_no_such_database"), "{e}");
}

// ------------------------------------------------ passwords never leak

/// The characters random passwords are drawn from: letters, digits and
/// everything that means something in a URL or an ADO.NET string.
fn password_chars() -> Vec<char> {
    let mut chars: Vec<char> = ('a'..='z').chain('A'..='Z').chain('0'..='9').collect();
    chars.extend([
        ';', '"', '\'', '{', '}', '@', ':', '/', '%', '=', '#', '?', '&', '+', '\\', 'é',
    ]);
    chars
}

/// How the password is written into the connection string.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// `scheme://u:{password}@host…`, pasted as it is (not percent-encoded).
    UrlPasted,
    /// `scheme://u:{percent-encoded password}@host…`.
    UrlEncoded,
    /// `…;Password={password};…`.
    AdoBare,
    /// `…;Password="{password, `"` doubled}";…`.
    AdoDoubleQuoted,
    /// `…;Password='{password, `'` doubled}';…`.
    AdoSingleQuoted,
    /// `…;Password={{password, `}` doubled}};…`.
    AdoBraced,
}

const FORMS: [Form; 6] = [
    Form::UrlPasted,
    Form::UrlEncoded,
    Form::AdoBare,
    Form::AdoDoubleQuoted,
    Form::AdoSingleQuoted,
    Form::AdoBraced,
];

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A connection string holding `password` as `form` says, and the text
/// around it (`before`, `after`): the password as written sits in between.
fn connection_string(form: Form, password: &str, variant: usize) -> (String, String, String) {
    let url = |written: String| {
        let scheme = ["postgresql", "mysql", "mssql"][variant % 3];
        let query = ["", "?sslmode=require", "?application_name=job"][variant / 3 % 3];
        (
            format!("{scheme}://u:"),
            written,
            format!("@db.example:5432/appdb{query}"),
        )
    };
    let ado = |written: String| {
        let key = ["Password", "PWD", "pwd"][variant % 3];
        let tail = [
            "",
            ";Encrypt=true",
            ";TrustServerCertificate=yes;Database=hub",
        ][variant / 3 % 3];
        (
            format!("Server=tcp:db.example,1433;User Id=app;{key}="),
            written,
            tail.to_owned(),
        )
    };
    let (before, written, after) = match form {
        Form::UrlPasted => url(password.to_owned()),
        Form::UrlEncoded => url(percent_encode(password)),
        Form::AdoBare => ado(password.to_owned()),
        Form::AdoDoubleQuoted => ado(format!("\"{}\"", password.replace('"', "\"\""))),
        Form::AdoSingleQuoted => ado(format!("'{}'", password.replace('\'', "''"))),
        Form::AdoBraced => ado(format!("{{{}}}", password.replace('}', "}}"))),
    };
    (format!("{before}{written}{after}"), before, after)
}

/// Everything the crate shows about a configuration made from `url`:
/// `Debug` of the builder, then `Debug` and `redacted_url()` of the built
/// configuration or `Display` and `Debug` of every error in the chain; the
/// same through `from_lookup`.
fn everything_shown(url: &str) -> String {
    fn chain(out: &mut String, e: &Error) {
        out.push_str(&format!("{e}\n{e:?}\n"));
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            out.push_str(&format!("{s}\n{s:?}\n"));
            source = s.source();
        }
    }
    let mut out = String::new();
    let builder = DatabaseConfig::builder("leak").url(url);
    out.push_str(&format!("{builder:?}\n"));
    let from_env = DatabaseConfig::from_lookup("leak", |k| {
        (k == "DEVELOPMENT_GLOBAL_LEAK_CONNECTION_STRING").then(|| url.to_owned())
    });
    for built in [builder.build(), from_env] {
        match built {
            Ok(cfg) => out.push_str(&format!("{cfg:?}\n{}\n", cfg.redacted_url())),
            Err(e) => chain(&mut out, &e),
        }
    }
    out
}

/// What the crate shows for the same forms with passwords made of a
/// character no password here holds: any text in it is the crate's own (or
/// the rest of the connection string's).
struct CrateText {
    /// Every distinct line shown.
    text: String,
    /// Every 4-character window of `text`, to rule most tails out quickly.
    windows: std::collections::HashSet<String>,
}

impl CrateText {
    fn get() -> &'static CrateText {
        static TEXT: std::sync::OnceLock<CrateText> = std::sync::OnceLock::new();
        TEXT.get_or_init(|| {
            let mut lines = std::collections::BTreeSet::new();
            for form in FORMS {
                for variant in 0..9 {
                    for password in ["☃☃☃☃☃☃", "☃/☃@☃#☃?☃:☃", "☃;☃=☃\"☃'☃{☃}☃", "☃%☃\\☃&☃+☃:☃☃"]
                    {
                        let (url, _, _) = connection_string(form, password, variant);
                        lines.extend(everything_shown(&url).lines().map(str::to_owned));
                    }
                }
            }
            let text = lines.into_iter().collect::<Vec<_>>().join("\n");
            let chars: Vec<char> = text.chars().collect();
            let windows = chars.windows(4).map(|w| w.iter().collect()).collect();
            CrateText { text, windows }
        })
    }

    fn contains(&self, s: &str) -> bool {
        let head: String = s.chars().take(4).collect();
        self.windows.contains(&head) && self.text.contains(s)
    }
}

/// Fails when `shown` holds the password, or a tail of it (4 characters or
/// more) that neither the rest of the connection string nor the crate's own
/// text explains.
fn assert_hidden(password: &str, written: &[&str], before: &str, after: &str, shown: &str) {
    let elsewhere = format!("{before}\u{0}{after}");
    for secret in std::iter::once(password).chain(written.iter().copied()) {
        assert!(!shown.contains(secret), "`{secret}` shown in:\n{shown}");
        let chars: Vec<(usize, char)> = secret.char_indices().collect();
        for (start, _) in chars.iter().rev().skip(3) {
            let tail = &secret[*start..];
            if !elsewhere.contains(tail) && !CrateText::get().contains(tail) {
                assert!(
                    !shown.contains(tail),
                    "`{tail}` of `{secret}` shown in:\n{shown}"
                );
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        cases: 512,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    })]

    #[test]
    fn random_passwords_never_show(
        password in proptest::collection::vec(proptest::sample::select(password_chars()), 6..24)
            .prop_map(|v| v.into_iter().collect::<String>()),
        form in proptest::sample::select(FORMS.to_vec()),
        variant in 0usize..9,
    ) {
        let (url, before, after) = connection_string(form, &password, variant);
        let written = &url[before.len()..url.len() - after.len()];
        let shown = everything_shown(&url);
        assert_hidden(&password, &[written], &before, &after, &shown);
    }
}

#[test]
fn passwords_holding_separators_never_show() {
    // The two cases found by the generated test above, kept as examples.
    for (url, password) in [
        (
            "Server=h;User Id=u;Password=\"Ab3;xY=9\";Encrypt=true",
            "Ab3;xY=9",
        ),
        (
            "Server=h;User Id=u;Password={Ab3;x}}Y=9};Encrypt=true",
            "Ab3;x}}Y=9",
        ),
        ("Server=h;User Id=u;Password=Ab3;xY=9", "Ab3;xY=9"),
        ("postgresql://u:Qx7@&''#:&\\#@host:1/db", "Qx7@&''#:&\\#"),
        ("postgresql://u:12/ab@host:1/db", "12/ab"),
        ("mysql://u:pw?x@host/db", "pw?x"),
    ] {
        let shown = everything_shown(url);
        let (before, after) = url.split_once(password).unwrap();
        assert_hidden(password, &[], before, after, &shown);
    }
}

// -------------------------------------------- settings that would panic later

#[test]
fn durations_that_would_panic_later_are_config_errors() {
    let huge = Duration::from_secs(u64::MAX);
    let cases: Vec<(&str, dbmanager::DatabaseConfigBuilder)> = vec![
        (
            "max_lifetime",
            DatabaseConfig::builder("x").max_lifetime(Some(Duration::ZERO)),
        ),
        (
            "query_timeout",
            DatabaseConfig::builder("x").query_timeout(Some(huge)),
        ),
        (
            "query_timeout",
            DatabaseConfig::builder("x").query_timeout(Some(Duration::from_secs(30 * 86_400))),
        ),
        (
            "acquire_timeout",
            DatabaseConfig::builder("x").acquire_timeout(Duration::MAX),
        ),
        (
            "connect_timeout",
            DatabaseConfig::builder("x").connect_timeout(huge),
        ),
        (
            "idle_timeout",
            DatabaseConfig::builder("x").idle_timeout(huge),
        ),
        (
            "max_lifetime",
            DatabaseConfig::builder("x").max_lifetime(Some(huge)),
        ),
        (
            "validate_after_idle",
            DatabaseConfig::builder("x").validate_after_idle(huge),
        ),
        (
            "leak_threshold",
            DatabaseConfig::builder("x").leak_threshold(Some(huge)),
        ),
        (
            "slow_query_threshold",
            DatabaseConfig::builder("x").slow_query_threshold(Some(huge)),
        ),
        (
            "health_timeout",
            DatabaseConfig::builder("x").health_timeout(huge),
        ),
        (
            "degraded_after",
            DatabaseConfig::builder("x").degraded_after(huge),
        ),
        (
            "circuit_window",
            DatabaseConfig::builder("x").circuit_window(huge),
        ),
        (
            "circuit_recovery",
            DatabaseConfig::builder("x").circuit_recovery(huge),
        ),
        (
            "max_delay",
            DatabaseConfig::builder("x").retry(dbmanager::RetryPolicy::default().max_delay(huge)),
        ),
        (
            "base_delay",
            DatabaseConfig::builder("x").retry(dbmanager::RetryPolicy::default().base_delay(huge)),
        ),
        (
            "budget",
            DatabaseConfig::builder("x").retry(dbmanager::RetryPolicy::default().budget(huge)),
        ),
    ];
    for (setter, builder) in cases {
        for url in ["sqlite::memory:", URL] {
            config_error(builder.clone().url(url).build(), &[setter, "`x`"]);
        }
    }
    // The bounds themselves are accepted.
    DatabaseConfig::builder("x")
        .url("sqlite::memory:")
        .query_timeout(Some(Duration::from_secs(24 * 86_400)))
        .acquire_timeout(Duration::from_secs(365 * 86_400))
        .connect_timeout(Duration::from_secs(365 * 86_400))
        .max_lifetime(Some(Duration::from_nanos(1)))
        .build()
        .expect("the largest values allowed");
}

#[test]
fn huge_values_in_the_environment_name_the_variable() {
    // Every setting read as seconds, far too large: SQLite's busy timeout
    // (from TIMEOUT) panicked above 2^31 ms, the others overflowed `Instant`.
    for suffix in [
        "RPA_DB_TIMEOUT",
        "DATABASE_TIMEOUT",
        "RPA_DB_POOL_TIMEOUT",
        "RPA_DB_CONNECT_TIMEOUT",
        "RPA_DB_IDLE_TIMEOUT",
        "RPA_DB_MAX_LIFETIME",
        "RPA_DB_LEAK_THRESHOLD",
        "RPA_DB_SLOW_QUERY_THRESHOLD",
        "RPA_DB_HEALTH_TIMEOUT",
        "RPA_DB_DEGRADED_THRESHOLD",
        "RPA_DB_RETRY_BASE_DELAY",
        "RPA_DB_RETRY_MAX_DELAY",
        "RPA_DB_RETRY_BUDGET",
        "RPA_DB_CIRCUIT_WINDOW",
        "RPA_DB_CIRCUIT_RECOVERY",
    ] {
        let var = format!("DEVELOPMENT_GLOBAL_{suffix}");
        for value in ["99999999", "1e300"] {
            config_error(
                DatabaseConfig::from_lookup(
                    "rpa_db",
                    lookup(&[
                        (
                            "DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING",
                            "sqlite::memory:",
                        ),
                        (&var, value),
                    ]),
                ),
                &[&format!("{var} = `{value}`"), "at most"],
            );
        }
    }
    // 25 days: too long for a query timeout, fine for the others.
    config_error(
        DatabaseConfig::from_lookup(
            "rpa_db",
            lookup(&[
                (
                    "DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING",
                    "sqlite::memory:",
                ),
                ("DEVELOPMENT_GLOBAL_RPA_DB_TIMEOUT", "2160000"),
            ]),
        ),
        &[
            "DEVELOPMENT_GLOBAL_RPA_DB_TIMEOUT = `2160000`",
            "at most 24 days",
        ],
    );
    let cfg = DatabaseConfig::from_lookup(
        "rpa_db",
        lookup(&[
            (
                "DEVELOPMENT_GLOBAL_RPA_DB_CONNECTION_STRING",
                "sqlite::memory:",
            ),
            ("DEVELOPMENT_GLOBAL_RPA_DB_POOL_TIMEOUT", "2160000"),
        ]),
    )
    .expect("25 days is a long but valid acquisition timeout");
    assert_eq!(cfg.acquire_timeout(), Duration::from_secs(2_160_000));
}
