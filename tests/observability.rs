//! Metrics, health checks, the slow-query log, statement statistics, query
//! plans and the scaling signal, against real servers, read back through
//! real parsers (Prometheus' text format) and a real Pushgateway. A body
//! that holds on several backends runs once per backend (`each_backend!`).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{closed_port, manager_with, unique_name, Backend, TempDir};
use dbmanager::{BackendKind, ErrorKind, Health, MigrationState, Result, ScalingLevel};
use prometheus_parse::{Scrape, Value};

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition text")
}

/// The value of `metric` for `database` (and `operation`, when given).
fn sample(scrape: &Scrape, metric: &str, database: &str, operation: Option<&str>) -> Option<Value> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && s.labels.get("database") == Some(database)
                && operation.map_or(true, |op| s.labels.get("operation") == Some(op))
        })
        .map(|s| s.value.clone())
}

fn number(scrape: &Scrape, metric: &str, database: &str, operation: Option<&str>) -> f64 {
    match sample(scrape, metric, database, operation) {
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => v,
        other => panic!("{metric}{{database={database}}}: {other:?}"),
    }
}

fn bucket(scrape: &Scrape, metric: &str, database: &str, operation: &str, le: f64) -> f64 {
    match sample(scrape, metric, database, Some(operation)) {
        Some(Value::Histogram(counts)) => {
            counts
                .iter()
                .find(|c| (c.less_than - le).abs() < 1e-9)
                .unwrap_or_else(|| panic!("no bucket le={le}"))
                .count
        }
        other => panic!("{metric}: {other:?}"),
    }
}

fn sleep_sql(kind: BackendKind, secs: f64) -> String {
    match kind {
        BackendKind::Postgres => format!("SELECT pg_sleep({secs}), 'sleep-literal-7731'"),
        BackendKind::MySql => format!("SELECT SLEEP({secs}), 'sleep-literal-7731'"),
        // About half a second of counting on this machine kind; only used as "slow".
        _ => "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 3000000) \
              SELECT count(*), 'sleep-literal-7731' FROM c"
            .to_owned(),
    }
}

/// A known sequence of statements, then the exposition text read back.
fn metrics_follow_a_known_sequence(b: Backend) -> Result<()> {
    common::logged();
    let place = b.place();
    let url = place.url();
    let name = unique_name("obs");
    let db = manager_with(&name, url, |c| {
        c.pool_size(3)
            .max_overflow(1)
            .slow_query_threshold(Some(Duration::from_millis(250)))
    })?;
    let kind = db.backend();
    let table = unique_name("obs_t");
    db.execute_batch(&format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY)"))?;
    for _ in 0..5 {
        db.execute_query("SELECT 1", ())?;
    }
    // Two slow ones (over 250 ms).
    if kind == BackendKind::Sqlite {
        // Counting is not sleeping: make sure these really are slow here.
        let started = Instant::now();
        db.execute_query(&sleep_sql(kind, 0.0), ())?;
        assert!(
            started.elapsed() > Duration::from_millis(250),
            "the SQLite statement is too fast to be slow"
        );
        db.execute_query(&sleep_sql(kind, 0.0), ())?;
    } else {
        db.execute_query(&sleep_sql(kind, 0.6), ())?;
        db.execute_query(&sleep_sql(kind, 0.6), ())?;
    }
    // One timeout, well under the slow threshold.
    let err = db
        .execute_query_with_timeout(b.endless_statement(), (), Duration::from_millis(100))
        .expect_err("must time out");
    assert_eq!(err.kind(), ErrorKind::QueryTimeout);
    // One rolled-back transaction with one insert (a closure may run more
    // than once, so it hands its error out of an Option).
    let mut err = Some(err);
    let _ = db.transaction(|tx| {
        tx.execute(&format!("INSERT INTO {table} (id) VALUES (?)"), (1,))?;
        Err::<(), dbmanager::Error>(err.take().expect("one attempt"))
    });

    let text = dbmanager::metrics::metrics_text();
    let m = parse(&text);
    assert_eq!(
        number(&m, "db_query_count_total", &name, Some("query")),
        8.0,
        "{:?}",
        db.statement_stats(20)
    );
    assert_eq!(
        number(&m, "db_query_count_total", &name, Some("execute")),
        1.0
    );
    assert_eq!(
        number(&m, "db_query_count_total", &name, Some("batch")),
        1.0
    );
    assert_eq!(
        number(&m, "db_query_count_total", &name, Some("rollback")),
        1.0
    );
    assert_eq!(number(&m, "db_slow_query_count_total", &name, None), 2.0);
    assert_eq!(number(&m, "db_query_timeouts_total", &name, None), 1.0);
    assert_eq!(number(&m, "db_query_cancellations_total", &name, None), 1.0);
    assert_eq!(
        number(&m, "db_transaction_rollbacks_total", &name, None),
        1.0
    );
    assert_eq!(number(&m, "db_transaction_commits_total", &name, None), 0.0);
    assert_eq!(number(&m, "db_transactions_active", &name, None), 0.0);
    assert_eq!(number(&m, "db_pool_size", &name, None), 3.0);
    assert_eq!(number(&m, "db_pool_max_size", &name, None), 4.0);
    assert_eq!(number(&m, "db_pool_usage", &name, None), 0.0);
    assert!(number(&m, "db_connections_created_total", &name, None) >= 1.0);
    assert_eq!(
        number(&m, "prepared_stmt_executions_total", &name, None),
        9.0
    );
    // Histogram: the five quick ones and the timed-out one under 250 ms, the
    // slow ones above; all eight under 10 s.
    let q = "db_query_time_seconds";
    assert_eq!(bucket(&m, q, &name, "query", 0.25), 6.0, "{text}");
    assert_eq!(bucket(&m, q, &name, "query", 10.0), 8.0);
    // One timeout in ten statements: seed 003 says critical.
    assert_eq!(number(&m, "db_scaling_level", &name, None), 3.0);
    let health = db.health_check();
    assert_eq!(health.scaling, ScalingLevel::Critical);
    assert_eq!(health.status, Health::Degraded, "{health:?}");
    assert!(
        health
            .degraded_reasons
            .iter()
            .any(|r| r.contains("scale horizontally")),
        "{health:?}"
    );

    // Statistics, normalised: the two slow statements are one entry.
    let stats = db.statement_stats(20);
    let slow = stats
        .iter()
        .find(|s| s.calls == 2)
        .expect("the slow statement is listed once, with both calls");
    assert_eq!(slow.calls, 2, "{stats:?}");
    assert!(
        stats.iter().all(|s| !s.sql.contains("sleep-literal-7731")),
        "literals are replaced: {stats:?}"
    );
    assert_eq!(stats[0].sql, slow.sql, "sorted by total time: {stats:?}");

    // The slow-query log names the statement, never its literals.
    let log = common::logged();
    assert!(
        log.contains("slow statement") && log.contains(&name),
        "{log}"
    );
    assert!(
        !log.contains("sleep-literal-7731"),
        "a literal reached the log"
    );
    assert!(!text.contains("sleep-literal-7731"), "SQL reached a metric");
    if let Some(pw) = common::password_of(url) {
        assert!(
            !text.contains(&pw) && !log.contains(&pw),
            "the password leaked"
        );
    }
    db.execute_batch(&format!("DROP TABLE {table}"))?;
    Ok(())
}

each_backend!(
    metrics_follow_a_known_sequence,
    [Postgres, MySql, SqliteFile]
);

/// Every family, by the name it is exposed under: the names the Python
/// system's `prometheus_client` exposed (a counter created as
/// `db_query_count` is scraped as `db_query_count_total`).
const FAMILIES: &[&str] = &[
    "db_pool_size",
    "db_pool_max_size",
    "db_pool_usage",
    "db_pool_idle",
    "db_pool_waiting",
    "db_connection_time_seconds",
    "db_pool_timeouts_total",
    "db_connections_created_total",
    "db_connections_closed_total",
    "db_connections_broken_total",
    "db_query_time_seconds",
    "db_query_count_total",
    "db_slow_query_count_total",
    "db_deadlock_count_total",
    "db_connection_errors_total",
    "db_query_timeouts_total",
    "db_query_cancellations_total",
    "prepared_stmt_cache_size",
    "prepared_stmt_execution_time_seconds",
    "prepared_stmt_executions_total",
    "bulk_operation_time_seconds",
    "bulk_operation_rows_total",
    "bulk_operation_executions_total",
    "query_cache_hits_total",
    "query_cache_misses_total",
    "query_cache_evictions_total",
    "db_transactions_active",
    "db_transaction_commits_total",
    "db_transaction_rollbacks_total",
    "db_transaction_duration_seconds",
    "db_timeout_rate",
    "db_scaling_level",
    "db_replica_fallback_total",
    "db_retries_total",
    "db_circuit_state",
    "db_circuit_transitions_total",
];

/// The path of `promtool`, which `scripts/test` installs (Debian's package
/// `prometheus`) and exports; without it the test fails, never skips.
fn promtool() -> String {
    let path = common::required_env("DBMANAGER_TEST_PROMTOOL");
    assert!(
        std::path::Path::new(&path).is_file(),
        "DBMANAGER_TEST_PROMTOOL={path} is not a file: run the tests with `scripts/test` \
         (it installs promtool, Debian's package `prometheus`, and exports its path)"
    );
    path
}

/// `promtool check metrics` on `text`: its verdict and what it printed.
fn promtool_check(text: &str) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (run the tests with `scripts/test`, which installs it)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(text.as_bytes())
        .expect("promtool reads the text");
    drop(stdin);
    let out = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && said.trim().is_empty(), said)
}

/// A known sequence on each backend (statements, a slow one, a timeout and
/// its cancel, a committed and a rolled-back transaction, a pool timeout, a
/// database that cannot be reached), then the whole exposition: every
/// family has samples for each database, and `promtool check metrics`
/// finds nothing to say about it.
#[test]
fn promtool_accepts_the_full_exposition() -> Result<()> {
    let promtool = promtool();
    let mut names = Vec::new();
    for b in [Backend::Postgres, Backend::MySql, Backend::SqliteFile] {
        let place = b.place();
        let name = unique_name("lint");
        let db = manager_with(&name, place.url(), |c| {
            c.pool_size(1)
                .max_overflow(0)
                .acquire_timeout(Duration::from_secs(10))
                .slow_query_threshold(Some(Duration::from_millis(20)))
        })?;
        let kind = db.backend();
        let table = unique_name("lint_t");
        db.execute_batch(&format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY)"))?;
        db.execute(&format!("INSERT INTO {table} (id) VALUES (?)"), (1,))?;
        db.execute_query(&format!("SELECT id FROM {table} WHERE id = ?"), (1,))?;
        // Over the 20 ms threshold (on SQLite a short count, not the half
        // second of `sleep_sql`, to leave the CPU to the tests beside it).
        let slow = match kind {
            BackendKind::Sqlite => {
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                                    LIMIT 400000) SELECT count(*) FROM c"
                    .to_owned()
            }
            _ => sleep_sql(kind, 0.05),
        };
        db.execute_query(&slow, ())?;
        let err = db
            .execute_query_with_timeout(b.endless_statement(), (), Duration::from_millis(100))
            .expect_err("must time out");
        assert_eq!(err.kind(), ErrorKind::QueryTimeout, "{err}");
        db.transaction(|tx| {
            tx.execute(&format!("INSERT INTO {table} (id) VALUES (?)"), (2,))
                .map(drop)
        })?;
        let _ = db.transaction(|tx| {
            tx.execute(&format!("INSERT INTO {table} (id) VALUES (?)"), (3,))?;
            Err::<(), dbmanager::Error>(tx.execute_batch("SELEC 1").expect_err("not SQL"))
        });
        {
            let _held = db.connection()?;
            let err = db
                .connection_timeout(Duration::from_millis(200))
                .expect_err("the pool of one is held");
            assert_eq!(err.kind(), ErrorKind::PoolTimeout, "{err}");
        }
        db.execute_batch(&format!("DROP TABLE {table}"))?;
        names.push((name, db, place));
    }
    // A database nothing answers for.
    let down = unique_name("lint_down");
    let down_db = manager_with(
        &down,
        &format!("postgresql://app:pw@127.0.0.1:{}/db", closed_port()),
        |c| c.connect_timeout(Duration::from_secs(2)),
    )?;
    assert!(down_db.execute_query("SELECT 1", ()).is_err());

    let text = dbmanager::metrics::metrics_text();
    let m = parse(&text);
    for (name, _, _) in &names {
        for family in FAMILIES {
            assert!(
                m.samples
                    .iter()
                    .any(|s| s.metric == *family && s.labels.get("database") == Some(name)),
                "no sample of {family} for {name}:\n{text}"
            );
        }
        assert!(number(&m, "db_query_count_total", name, Some("query")) >= 3.0);
        assert!(number(&m, "db_slow_query_count_total", name, None) >= 1.0);
        assert_eq!(number(&m, "db_query_timeouts_total", name, None), 1.0);
        assert_eq!(number(&m, "db_pool_timeouts_total", name, None), 1.0);
        assert_eq!(number(&m, "db_transaction_commits_total", name, None), 1.0);
        assert!(number(&m, "db_transaction_rollbacks_total", name, None) >= 1.0);
    }
    assert!(
        number(&m, "db_connection_errors_total", &down, None) >= 1.0,
        "{text}"
    );
    // No family of the exposition is missing from the list above.
    let exposed: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let listed: BTreeSet<&str> = FAMILIES.iter().copied().collect();
    assert_eq!(exposed, listed, "the exposed families");

    let (clean, said) = promtool_check(&text);
    assert!(
        clean,
        "`{promtool} check metrics` rejects the exposition:\n{said}\n--- the text:\n{text}"
    );
    // And it does catch what it is here to catch.
    let (clean, said) = promtool_check(
        "# HELP db_query_count Statements.\n# TYPE db_query_count counter\ndb_query_count 1\n",
    );
    assert!(!clean && said.contains("_total"), "{said}");
    Ok(())
}

#[test]
fn health_reports_seed_002s_shape() -> Result<()> {
    let dir = TempDir::new("health");
    let db = manager_with(&unique_name("health"), &dir.sqlite_url("h.db"), |b| b)?;
    let h = db.health_check();
    assert_eq!(h.status, Health::Healthy, "{h:?}");
    assert!(h.connection && h.query_test && h.error.is_none());
    let json = serde_json::to_value(&h).expect("serialisable");
    let obj = json.as_object().expect("an object");
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let seed: BTreeSet<&str> = [
        "database_name",
        "database_type",
        "status",
        "connection",
        "query_test",
        "migration_status",
        "error",
        "response_time_ms",
        "timestamp",
    ]
    .into();
    assert!(
        seed.is_subset(&keys),
        "missing seed keys: {:?}",
        seed.difference(&keys).collect::<Vec<_>>()
    );
    let extra: BTreeSet<&str> = [
        "pool_saturation",
        "read_only",
        "scaling",
        "degraded_reasons",
        "circuit",
        "serving_host",
        "serving_role",
    ]
    .into();
    assert_eq!(
        keys,
        seed.union(&extra).copied().collect(),
        "only documented keys"
    );
    assert_eq!(obj["status"], "healthy");
    assert_eq!(obj["circuit"], "closed");
    assert_eq!(obj["database_type"], "sqlite");
    assert!(obj["connection"].is_boolean() && obj["query_test"].is_boolean());
    assert!(obj["response_time_ms"].is_f64());
    assert!(obj["error"].is_null());
    let ms = obj["migration_status"].as_object().expect("an object");
    assert!(ms.contains_key("current_version") && ms["pending_migrations"].is_array());
    let ts = obj["timestamp"].as_str().expect("a string");
    assert!(
        chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'),
        "{ts}"
    );
    Ok(())
}

#[test]
fn health_is_unhealthy_when_nothing_answers_and_never_hangs() -> Result<()> {
    let url = format!("postgresql://app:pw@127.0.0.1:{}/db", closed_port());
    let db = manager_with(&unique_name("down"), &url, |b| {
        b.health_timeout(Duration::from_secs(2))
    })?;
    let started = Instant::now();
    let h = db.health_check();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(h.status, Health::Unhealthy);
    assert!(!h.connection && !h.query_test);
    assert!(
        h.error.as_deref().is_some_and(|e| e.contains("connect")),
        "{h:?}"
    );
    Ok(())
}

#[test]
fn health_is_degraded_under_the_documented_conditions() -> Result<()> {
    let dir = TempDir::new("degraded");
    // Slow: any answer is over a zero threshold.
    let slow = manager_with(&unique_name("slow"), &dir.sqlite_url("a.db"), |b| {
        b.degraded_after(Duration::ZERO)
    })?;
    let h = slow.health_check();
    assert_eq!(h.status, Health::Degraded);
    assert!(
        h.degraded_reasons.iter().any(|r| r.starts_with("slow")),
        "{h:?}"
    );
    // Saturated: the only connection is held, and freed while the check waits.
    let full = manager_with(&unique_name("full"), &dir.sqlite_url("b.db"), |b| {
        b.pool_size(1).max_overflow(0)
    })?;
    let held = full.connection()?;
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
    });
    let h = full.health_check();
    releaser.join().unwrap();
    assert_eq!(h.status, Health::Degraded, "{h:?}");
    assert!(
        h.degraded_reasons.iter().any(|r| r.contains("saturated")),
        "{h:?}"
    );
    assert!((h.pool_saturation - 1.0).abs() < 1e-9);
    // `health_check_all` is tested in resilience_hung.rs: it runs a statement on
    // every manager in the process, which would disturb the exact counts here.
    Ok(())
}

#[test]
fn metrics_reach_a_real_pushgateway() -> Result<()> {
    let gateway = common::required_env("DBMANAGER_TEST_PUSHGATEWAY_URL");
    let name = unique_name("pushed");
    let db = manager_with(&name, "sqlite::memory:", |b| b)?;
    for _ in 0..3 {
        db.execute_query("SELECT 1", ())?;
    }
    let job = unique_name("batch_job");
    dbmanager::metrics::push_metrics(&gateway, &job)?;
    // A gateway that has been pushed to for a while serves more than
    // `into_string`'s 10 MB limit.
    let mut body = String::new();
    std::io::Read::read_to_string(
        &mut ureq::get(&format!("{gateway}/metrics"))
            .call()
            .expect("the gateway answers")
            .into_reader(),
        &mut body,
    )
    .expect("text");
    let m = parse(&body);
    let pushed = m
        .samples
        .iter()
        .find(|s| {
            s.metric == "db_query_count_total"
                && s.labels.get("database") == Some(name.as_str())
                && s.labels.get("operation") == Some("query")
                && s.labels.get("job") == Some(job.as_str())
        })
        .expect("the pushed metric is on the gateway");
    assert_eq!(pushed.value, Value::Counter(3.0));
    // A gateway that is not there: a clear error, no hang.
    let err =
        dbmanager::metrics::push_metrics(&format!("http://127.0.0.1:{}", closed_port()), &job)
            .expect_err("nothing listens");
    assert_eq!(err.kind(), ErrorKind::Connect);
    Ok(())
}

#[cfg(feature = "metrics-server")]
#[test]
fn the_scrape_endpoint_serves_the_exposition_text() -> Result<()> {
    let name = unique_name("scraped");
    let db = manager_with(&name, "sqlite::memory:", |b| b)?;
    db.execute_query("SELECT 1", ())?;
    let server = dbmanager::metrics::serve("127.0.0.1:0")?;
    let body = ureq::get(&format!("http://{}/metrics", server.local_addr()))
        .call()
        .expect("the endpoint answers")
        .into_string()
        .expect("text");
    assert_eq!(
        number(&parse(&body), "db_query_count_total", &name, Some("query")),
        1.0
    );
    drop(server);
    Ok(())
}

fn query_plans(b: Backend) -> Result<()> {
    let db = b.open()?;
    let table = unique_name("plan_t");
    db.execute_batch(&format!(
        "CREATE TABLE {table} (id INTEGER PRIMARY KEY, v INTEGER)"
    ))?;
    let plan = db.explain(&format!("SELECT v FROM {table} WHERE id = ?"), (1,))?;
    let text = plan.plan.to_string();
    match db.backend() {
        BackendKind::Postgres => assert!(plan.plan[0]["Plan"]["Node Type"].is_string(), "{text}"),
        BackendKind::MySql => assert!(plan.plan["query_block"].is_object(), "{text}"),
        _ => assert!(
            plan.raw.contains("SEARCH") || plan.raw.contains("SCAN"),
            "{}",
            plan.raw
        ),
    }
    // Nothing was run: the table is still empty and a bad statement is an error.
    assert!(db.explain("SELECT FROM WHERE", ()).is_err());
    db.execute_batch(&format!("DROP TABLE {table}"))?;
    Ok(())
}

each_backend!(query_plans, [Postgres, MySql, SqliteFile]);

#[test]
fn health_reports_the_migration_state_and_pending_scripts_degrade_it() -> Result<()> {
    let dir = TempDir::new("health_mig");
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).expect("a folder");
    std::fs::write(
        scripts.join("V1__first.sql"),
        "CREATE TABLE a (id INTEGER);",
    )
    .expect("write");
    let db = manager_with(&unique_name("health_mig"), &dir.sqlite_url("m.db"), |b| {
        b.migrations_dir(&scripts)
    })?;
    db.run_migrations()?;
    let h = db.health_check();
    assert_eq!(h.status, Health::Healthy, "{h:?}");
    assert_eq!(h.migration_status.current_version.as_deref(), Some("1"));
    assert!(h.migration_status.pending_migrations.is_empty());
    std::fs::write(
        scripts.join("V2__second.sql"),
        "CREATE TABLE b (id INTEGER);",
    )
    .expect("write");
    let h = db.health_check();
    assert_eq!(h.status, Health::Degraded, "{h:?}");
    assert_eq!(h.migration_status.pending_migrations, vec!["2".to_owned()]);
    assert!(
        h.degraded_reasons.iter().any(|r| r.contains("pending")),
        "{h:?}"
    );
    Ok(())
}

/// A no-transaction script that failed part-way is recorded as failed and
/// blocks `migrate`: health is never `healthy` over it.
fn health_is_unhealthy_over_a_failed_migration(b: Backend) -> Result<()> {
    let dir = TempDir::new("health_failed");
    let place = b.place();
    let t = unique_name("hf");
    std::fs::write(
        dir.path().join("V1__first.sql"),
        format!("CREATE TABLE {t}_a (id INTEGER);"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("V2__half.sql"),
        format!(
            "-- dbmanager:no-transaction\nCREATE TABLE {t}_b (id INTEGER);\nCREATE TABLE {t}_b (id INTEGER);\n"
        ),
    )
    .expect("write");
    // A history table of its own: servers are shared by the tests.
    let db = place.manager_with("health_failed", |c| {
        c.migrations_dir(dir.path())
            .history_table(format!("{t}_history"))
    })?;
    db.run_migrations().expect_err("V2 fails part-way");
    let h = db.health_check();
    let cleanup = db.execute_batch(&format!(
        "DROP TABLE {t}_a; DROP TABLE {t}_b; DROP TABLE {t}_history"
    ));
    assert_eq!(h.status, Health::Unhealthy, "{h:?}");
    assert_eq!(h.migration_status.state, MigrationState::Failed, "{h:?}");
    assert!(
        h.error
            .as_deref()
            .is_some_and(|e| e.contains("V2__half.sql")),
        "{h:?}"
    );
    assert!(
        h.degraded_reasons
            .iter()
            .any(|r| r.contains("V2__half.sql")),
        "{h:?}"
    );
    let json = serde_json::to_value(&h).expect("serialisable");
    assert_eq!(json["status"], "unhealthy");
    assert_eq!(json["migration_status"]["state"], "failed");
    cleanup?;
    Ok(())
}
each_backend!(
    health_is_unhealthy_over_a_failed_migration,
    [SqliteFile, MySql]
);

#[test]
fn health_says_unknown_when_the_migration_state_cannot_be_read() -> Result<()> {
    // The server is down: unknown, not an empty "nothing pending".
    let url = format!("postgresql://app:pw@127.0.0.1:{}/db", closed_port());
    let down = manager_with(&unique_name("mig_down"), &url, |b| {
        b.health_timeout(Duration::from_secs(2))
    })?;
    let h = down.health_check();
    assert_eq!(h.status, Health::Unhealthy);
    assert_eq!(h.migration_status.state, MigrationState::Unknown, "{h:?}");
    let json = serde_json::to_value(&h).expect("serialisable");
    assert_eq!(json["migration_status"]["state"], "unknown");

    // Migrations were applied, but the folder is missing now: unknown, and
    // said so.
    let dir = TempDir::new("mig_nofolder");
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).expect("a folder");
    std::fs::write(scripts.join("V1__a.sql"), "CREATE TABLE a (id INTEGER);").expect("write");
    manager_with(&unique_name("mig_applied"), &dir.sqlite_url("n.db"), |b| {
        b.migrations_dir(&scripts)
    })?
    .run_migrations()?;
    let missing = dir.path().join("not_there");
    let db = manager_with(&unique_name("mig_nofolder"), &dir.sqlite_url("n.db"), |b| {
        b.migrations_dir(&missing)
    })?;
    let h = db.health_check();
    assert_eq!(h.migration_status.state, MigrationState::Unknown, "{h:?}");
    assert_eq!(h.status, Health::Degraded, "{h:?}");
    assert!(
        h.degraded_reasons
            .iter()
            .any(|r| r.contains("unknown") && r.contains("not_there")),
        "{h:?}"
    );

    // No folder and no history: not managed here, and healthy.
    let plain = manager_with(&unique_name("mig_plain"), &dir.sqlite_url("p.db"), |b| {
        b.migrations_dir(&missing)
    })?;
    let h = plain.health_check();
    assert_eq!(h.status, Health::Healthy, "{h:?}");
    assert_eq!(h.migration_status.state, MigrationState::NotManaged);

    // Applied and up to date: ok.
    let managed = manager_with(&unique_name("mig_ok"), &dir.sqlite_url("o.db"), |b| {
        b.migrations_dir(&scripts)
    })?;
    managed.run_migrations()?;
    let h = managed.health_check();
    assert_eq!(h.status, Health::Healthy, "{h:?}");
    assert_eq!(h.migration_status.state, MigrationState::Ok);
    Ok(())
}

/// `db_connection_time_seconds` after a run of checkouts: every checkout
/// counted once, the ones that found an idle connection at once at 0 s, and
/// one that had to wait for the only connection counted with its wait (as
/// r2d2 timed it), not as one taken at once.
fn acquisitions_are_counted_exactly(b: Backend) -> Result<()> {
    let place = b.place();
    let name = unique_name("acq");
    let db = manager_with(&name, place.url(), |c| {
        c.pool_size(1)
            .max_overflow(0)
            .acquire_timeout(Duration::from_secs(30))
    })?;
    // Opens the connection (a checkout that waited for the open).
    db.execute_query("SELECT 1", ())?;
    let before = acquisitions(&name);

    for _ in 0..50 {
        drop(db.connection()?);
    }
    let held = db.connection()?;
    let waited = std::thread::scope(|s| -> Result<Duration> {
        let started = Instant::now();
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(600));
            drop(held);
        });
        let conn = db.connection()?;
        let waited = started.elapsed();
        drop(conn);
        Ok(waited)
    })?;

    let after = acquisitions(&name);
    let new = |le: f64| after.at(le) - before.at(le);
    assert_eq!(after.count - before.count, 52.0, "every checkout, once");
    assert_eq!(
        new(0.0005),
        51.0,
        "the 51 taken at once count as 0 s, the one that waited does not"
    );
    // The wait was at least the time the holder slept after the waiter
    // began (600 ms, less the holder thread's start, far under 350 ms).
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert_eq!(new(0.25), 51.0, "the wait counted with its length");
    assert_eq!(new(60.0), 52.0);
    Ok(())
}
each_backend!(acquisitions_are_counted_exactly, [Postgres, SqliteFile]);

/// One database's `db_connection_time_seconds`: its count and buckets.
struct Acquisitions {
    count: f64,
    buckets: Vec<(f64, f64)>,
}

impl Acquisitions {
    fn at(&self, le: f64) -> f64 {
        if self.buckets.is_empty() {
            return 0.0;
        }
        self.buckets
            .iter()
            .find(|(l, _)| (l - le).abs() < 1e-9)
            .unwrap_or_else(|| panic!("no bucket le={le}"))
            .1
    }
}

fn acquisitions(database: &str) -> Acquisitions {
    let m = parse(&dbmanager::metrics::metrics_text());
    let count = m
        .samples
        .iter()
        .find(|s| {
            s.metric == "db_connection_time_seconds_count"
                && s.labels.get("database") == Some(database)
        })
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        });
    match sample(&m, "db_connection_time_seconds", database, None) {
        Some(Value::Histogram(counts)) => Acquisitions {
            count: count.unwrap_or_else(|| counts.iter().map(|c| c.count).fold(0.0, f64::max)),
            buckets: counts.iter().map(|c| (c.less_than, c.count)).collect(),
        },
        // Nothing recorded yet for this database.
        None => Acquisitions {
            count: 0.0,
            buckets: Vec::new(),
        },
        other => panic!("db_connection_time_seconds{{database={database}}}: {other:?}"),
    }
}
