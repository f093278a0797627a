//! Past one server, on real servers: a PostgreSQL primary and its streaming
//! replica (made with `pg_basebackup -R` by `scripts/test`), a private
//! primary/standby pair that a test fails over (stops the primary, promotes
//! the standby), host lists with `target_session_attrs`, and shards over
//! SQLite files and PostgreSQL.
//!
//! MySQL/MariaDB host lists use the same code with the role read from
//! `@@global.read_only`: checked here on the test MariaDB (a primary). No
//! MariaDB replica runs here (one more server per test run), so a MariaDB
//! standby and `Seconds_Behind_Master` are covered by the role table's unit
//! tests in `src/topology.rs` only.

mod common;

use std::time::{Duration, Instant};

use common::fault::PrivateServer;
use common::{Backend, TempDir};
use dbmanager::{DatabaseConfig, DatabaseManager, ErrorKind, Result, ShardRule, Shards};

fn primary_url() -> String {
    common::required_env("DBMANAGER_TEST_POSTGRES_URL")
}

fn replica_url() -> String {
    common::required_env("DBMANAGER_TEST_POSTGRES_REPLICA_URL")
}

fn replica_admin_url() -> String {
    common::required_env("DBMANAGER_TEST_POSTGRES_REPLICA_ADMIN_URL")
}

/// A manager on the test primary with the test replica as its read replica.
fn with_replica(max_lag: Duration) -> Result<DatabaseManager> {
    common::manager_with(&common::unique_name("topo"), &primary_url(), |b| {
        b.replica_url(replica_url()).max_replica_lag(max_lag)
    })
}

fn in_recovery(rows: &dbmanager::Row) -> bool {
    rows.get::<bool>("r").expect("a boolean")
}

/// `host:port` of a single-host URL.
fn host_port(url: &str) -> String {
    let u = url::Url::parse(url).expect("a URL");
    format!(
        "{}:{}",
        u.host_str().expect("a host"),
        u.port().expect("a port")
    )
}

/// `url` with its host replaced by a host list.
fn with_hosts(url: &str, hosts: &[String], query: &str) -> String {
    let u = url::Url::parse(url).expect("a URL");
    format!(
        "postgresql://{}:{}@{}{}?{query}",
        u.username(),
        u.password().expect("a password"),
        hosts.join(","),
        u.path()
    )
}

/// The value of a counter family for `database`, 0 when absent.
fn counter(family: &str, database: &str) -> f64 {
    let text = dbmanager::metrics::metrics_text();
    text.lines()
        .filter(|l| l.starts_with(family) && l.contains(&format!("database=\"{database}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn reads_go_to_the_replica_and_writes_to_the_primary() -> Result<()> {
    let _g = common::shared();
    let db = with_replica(Duration::from_secs(60))?;
    let table = common::unique_name("topo_rw");
    db.execute_batch(&format!("CREATE TABLE {table} (id INT PRIMARY KEY)"))?;
    db.execute(&format!("INSERT INTO {table} (id) VALUES (?)"), (1,))?;

    let replica = db.replica()?;
    assert!(in_recovery(
        &replica.query_one("SELECT pg_is_in_recovery() AS r", ())?
    ));
    assert!(!in_recovery(
        &db.query_one("SELECT pg_is_in_recovery() AS r", ())?
    ));

    // Writes through the replica handle are refused as on a read-only database.
    let e = replica
        .execute(&format!("INSERT INTO {table} (id) VALUES (?)"), (2,))
        .expect_err("a write through the replica handle");
    assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");

    // The replica pool says which server serves it.
    let status = replica.pool_status();
    assert_eq!(
        status.serving_host.as_deref(),
        Some(host_port(&replica_url()).as_str())
    );
    db.execute_batch(&format!("DROP TABLE {table}"))?;
    Ok(())
}

#[test]
fn read_your_writes_sees_the_write() -> Result<()> {
    let _g = common::shared();
    let db = with_replica(Duration::from_secs(60))?;
    let table = common::unique_name("topo_ryw");
    db.execute_batch(&format!("CREATE TABLE {table} (id INT PRIMARY KEY)"))?;
    db.execute(&format!("INSERT INTO {table} (id) VALUES (?)"), (7,))?;
    let after = db.replica()?.read_your_writes(Duration::from_secs(30))?;
    let rows = after.execute_query(&format!("SELECT id FROM {table}"), ())?;
    assert_eq!(rows.len(), 1, "the write is seen through the handle");
    db.execute_batch(&format!("DROP TABLE {table}"))?;
    Ok(())
}

/// Resumes replay on the test replica when dropped, whatever the test did.
struct Resume(DatabaseManager);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = self.0.execute_query("SELECT pg_wal_replay_resume()", ());
    }
}

#[test]
fn a_lag_past_the_bound_sends_reads_to_the_primary_and_counts_them() -> Result<()> {
    let _g = common::alone();
    let db = with_replica(Duration::from_millis(500))?;
    let name = db.name().to_owned();
    let admin = common::manager(&common::unique_name("topo_admin"), &replica_admin_url())?;
    let table = common::unique_name("topo_lag");
    db.execute_batch(&format!("CREATE TABLE {table} (id INT PRIMARY KEY)"))?;
    let replica = db.replica()?;

    // Caught up: the read goes to the replica (waiting for the DDL to replay).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !in_recovery(&replica.query_one("SELECT pg_is_in_recovery() AS r", ())?) {
        assert!(Instant::now() < deadline, "the replica never caught up");
        std::thread::sleep(Duration::from_millis(50));
    }

    let before = counter("db_replica_fallback_total", &name);
    admin.execute_query("SELECT pg_wal_replay_pause()", ())?;
    let _resume = Resume(admin.clone());
    db.execute(&format!("INSERT INTO {table} (id) VALUES (?)"), (1,))?;

    // The replica falls behind: once its lag passes the bound, reads go to
    // the primary (and see the write).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = replica.query_one("SELECT pg_is_in_recovery() AS r", ())?;
        if !in_recovery(&row) {
            break;
        }
        assert!(Instant::now() < deadline, "reads never went to the primary");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(replica.lag().expect("measured") > Duration::from_millis(500));
    let n = replica.execute_query(&format!("SELECT id FROM {table}"), ())?;
    assert_eq!(n.len(), 1, "the fallback read sees the primary's write");
    assert!(counter("db_replica_fallback_total", &name) > before);

    drop(_resume);
    db.execute_batch(&format!("DROP TABLE {table}"))?;
    Ok(())
}

#[test]
fn after_a_failover_writes_go_to_the_promoted_standby_and_errors_between_are_transient(
) -> Result<()> {
    let _g = common::shared();
    let primary = PrivateServer::start(Backend::Postgres);
    let standby = PrivateServer::standby_of(&primary);
    let hosts = [host_port(&primary.url), host_port(&standby.url)];
    let url = with_hosts(&primary.url, &hosts, "target_session_attrs=read-write");
    let db = common::manager_with(&common::unique_name("topo_fo"), &url, |b| {
        b.connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(10))
            .circuit_failures(0)
    })?;
    let table = common::unique_name("topo_fo");
    db.execute_batch(&format!("CREATE TABLE {table} (id INT PRIMARY KEY)"))?;
    db.execute(&format!("INSERT INTO {table} (id) VALUES (?)"), (1,))?;
    let status = db.pool_status();
    assert_eq!(status.serving_host.as_deref(), Some(hosts[0].as_str()));
    assert_eq!(status.serving_role.as_deref(), Some("primary"));

    // Each target_session_attrs picks its server from the same list.
    for (attrs, wants_standby) in [
        ("any", false),
        ("read-write", false),
        ("primary", false),
        ("read-only", true),
        ("standby", true),
        ("prefer-standby", true),
    ] {
        let u = with_hosts(
            &primary.url,
            &hosts,
            &format!("target_session_attrs={attrs}"),
        );
        let m = common::manager(&common::unique_name("topo_tsa"), &u)?;
        assert_eq!(
            in_recovery(&m.query_one("SELECT pg_is_in_recovery() AS r", ())?),
            wants_standby,
            "target_session_attrs={attrs}"
        );
        assert_eq!(m.config().target_session_attrs().to_string(), attrs);
    }
    // prefer-standby with only the primary in the list takes the primary.
    let only_primary = with_hosts(
        &primary.url,
        &hosts[..1],
        "target_session_attrs=prefer-standby",
    );
    let m = common::manager(&common::unique_name("topo_pref"), &only_primary)?;
    assert!(!in_recovery(
        &m.query_one("SELECT pg_is_in_recovery() AS r", ())?
    ));
    // standby with only the primary: a clear, transient error.
    let only_standby_wanted = with_hosts(&primary.url, &hosts[..1], "target_session_attrs=standby");
    let m = common::manager_with(&common::unique_name("topo_sb"), &only_standby_wanted, |b| {
        b.retry(dbmanager::RetryPolicy::none())
    })?;
    let e = m.execute_query("SELECT 1", ()).expect_err("no standby");
    assert!(e.is_retryable(), "{e}");
    assert!(
        e.to_string().contains("target_session_attrs=standby"),
        "{e}"
    );

    // A primary that turns read-only no longer fits read-write: the write
    // fails with a transient error, and its connection is dropped.
    let admin = common::manager(&common::unique_name("topo_fo_admin"), &primary.admin_url)?;
    admin.execute_batch("ALTER SYSTEM SET default_transaction_read_only = on")?;
    admin.execute_query("SELECT pg_reload_conf()", ())?;
    let strict = db.with_retry(dbmanager::RetryPolicy::none());
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let wrote = strict
            .execute(&format!("INSERT INTO {table} (id) VALUES (?)"), (100,))
            .and_then(|_| strict.execute(&format!("DELETE FROM {table} WHERE id = ?"), (100,)));
        match wrote {
            Err(e) => break e,
            Ok(_) => {
                assert!(Instant::now() < deadline, "the reload never took");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert!(refused.is_retryable(), "{refused:?}");
    // Refused on the pooled connection (its server changed role), or, had
    // the pool opened a new one, no host fitting.
    let said = refused.to_string();
    assert!(
        said.contains("no longer the primary") || said.contains("target_session_attrs=read-write"),
        "{said}"
    );
    let broken_before = db.pool_status().invalid;
    assert!(broken_before >= 1 || db.pool_status().connections == 0);
    admin.execute_batch("ALTER SYSTEM RESET default_transaction_read_only")?;
    admin.execute_query("SELECT pg_reload_conf()", ())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = db.execute(&format!("INSERT INTO {table} (id) VALUES (?)"), (101,)) {
        assert!(e.is_retryable(), "{e:?}");
        assert!(Instant::now() < deadline, "writes never came back: {e}");
        std::thread::sleep(Duration::from_millis(50));
    }
    admin.close();

    // Fail over: stop the primary, then promote the standby.
    primary.stop();
    let mut errors = Vec::new();
    for i in 2..4 {
        match db.execute(&format!("INSERT INTO {table} (id) VALUES (?)"), (i,)) {
            Ok(_) => panic!("a write succeeded with the primary stopped"),
            Err(e) => errors.push(e),
        }
    }
    standby.promote();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut id = 10;
    loop {
        match db.execute(&format!("INSERT INTO {table} (id) VALUES (?)"), (id,)) {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no write succeeded after the promotion: {e}"
                );
                errors.push(e);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        id += 1;
    }
    for e in &errors {
        assert!(e.is_retryable(), "an error between is not transient: {e:?}");
    }
    assert!(!errors.is_empty());
    // The same manager, no restart: the promoted standby serves.
    assert!(!in_recovery(
        &db.query_one("SELECT pg_is_in_recovery() AS r", ())?
    ));
    let status = db.pool_status();
    assert_eq!(status.serving_host.as_deref(), Some(hosts[1].as_str()));
    assert_eq!(status.serving_role.as_deref(), Some("primary"));
    let health = db.health_check();
    assert_eq!(health.serving_host.as_deref(), Some(hosts[1].as_str()));
    assert_eq!(health.serving_role.as_deref(), Some("primary"));
    let rows = db.execute_query(&format!("SELECT id FROM {table} ORDER BY id"), ())?;
    assert_eq!(rows.first().map(|r| r.get::<i32>("id").unwrap()), Some(1));
    Ok(())
}

#[test]
fn load_balanced_host_lists_connect_to_one_of_the_hosts() -> Result<()> {
    let _g = common::shared();
    let hosts = [host_port(&primary_url()), host_port(&replica_url())];
    let url = with_hosts(&primary_url(), &hosts, "load_balance_hosts=random");
    for _ in 0..4 {
        let m = common::manager(&common::unique_name("topo_lb"), &url)?;
        m.query_one("SELECT 1 AS one", ())?;
        let serving = m.pool_status().serving_host.expect("a host");
        assert!(hosts.contains(&serving), "{serving}");
    }
    Ok(())
}

#[test]
fn bad_host_list_settings_are_clear_config_errors() {
    let bad = [
        (
            "postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=master",
            "target_session_attrs",
        ),
        (
            "postgresql://u:p@h1:5432,h2:5433/db?load_balance_hosts=sometimes",
            "load_balance_hosts",
        ),
        ("postgresql://u:p@h1:5432,,h2/db", "empty entry"),
    ];
    for (url, says) in bad {
        let e = DatabaseConfig::builder("x")
            .url(url)
            .build()
            .expect_err(url);
        assert_eq!(e.kind(), ErrorKind::Config);
        let m = e.to_string();
        assert!(m.contains(says), "{m}");
        assert!(!m.contains(":p@"), "no password in {m}");
    }
    let e = DatabaseConfig::builder("x")
        .url("postgresql://u:p@h/db")
        .replica_url("mysql://u:p@h/db")
        .build()
        .expect_err("a replica of another backend");
    assert!(e.to_string().contains("same backend"), "{e}");
    // From the environment, the message names the variable.
    let e = DatabaseConfig::from_lookup("x", |k| match k {
        "DEVELOPMENT_GLOBAL_X_CONNECTION_STRING" => {
            Some("postgresql://u:secret@h1,h2/db?target_session_attrs=nope".into())
        }
        _ => None,
    })
    .expect_err("bad attrs");
    let m = e.to_string();
    assert!(m.contains("DEVELOPMENT_GLOBAL_X_CONNECTION_STRING"), "{m}");
    assert!(m.contains("prefer-standby"), "{m}");
    assert!(!m.contains("secret"), "{m}");
}

/// Shards on two SQLite files and the test PostgreSQL.
#[test]
fn keys_reach_only_their_shard_and_a_failing_shard_is_named() -> Result<()> {
    let _g = common::shared();
    let dir = TempDir::new("topo_shards");
    let table = common::unique_name("topo_sh");
    let s0 = common::manager(&common::unique_name("shard_a"), &dir.sqlite_url("a.db"))?;
    let s1 = common::manager(&common::unique_name("shard_b"), &dir.sqlite_url("b.db"))?;
    let s2 = common::manager(&common::unique_name("shard_c"), &primary_url())?;
    for s in [&s0, &s1, &s2] {
        s.execute_batch(&format!("CREATE TABLE {table} (k VARCHAR(40) PRIMARY KEY)"))?;
    }
    let shards = Shards::from_managers("orders", ShardRule::Hash, vec![s0, s1, s2])?
        .with_timeout(Duration::from_secs(20));
    let keys: Vec<String> = (0..30).map(|i| format!("customer-{i}")).collect();
    for k in &keys {
        shards.shard(k)?.execute(
            &format!("INSERT INTO {table} (k) VALUES (?)"),
            (k.as_str(),),
        )?;
    }
    // Each key is on its CRC-32 shard, and on no other.
    for (i, db) in shards.all().iter().enumerate() {
        let rows = db.execute_query(&format!("SELECT k FROM {table}"), ())?;
        let want: Vec<&String> = keys
            .iter()
            .filter(|k| crc32fast::hash(k.as_bytes()) as usize % 3 == i)
            .collect();
        assert_eq!(rows.len(), want.len(), "shard {i}");
    }
    let all = shards.on_all_shards(&format!("SELECT k FROM {table}"), ())?;
    assert_eq!(all.failed().count(), 0);
    assert_eq!(all.rows()?.len(), keys.len());

    // A shard that fails is named; the others' rows are kept apart.
    let gone = format!(
        "postgresql://app:x@127.0.0.1:{}/appdb",
        common::closed_port()
    );
    let broken = common::manager_with(&common::unique_name("shard_gone"), &gone, |b| {
        b.connect_timeout(Duration::from_secs(2))
            .retry(dbmanager::RetryPolicy::none())
    })?;
    let mut managers = shards.all().to_vec();
    managers.push(broken.clone());
    let four = Shards::from_managers("orders", ShardRule::Hash, managers)?;
    let results = four.on_all_shards(&format!("SELECT k FROM {table}"), ())?;
    let failed: Vec<&str> = results.failed().map(|(n, _)| n).collect();
    assert_eq!(failed, vec![broken.name()]);
    let kept: usize = results.ok().map(|(_, rows)| rows.len()).sum();
    assert_eq!(kept, keys.len(), "the other shards' rows are kept");
    let e = results.rows().expect_err("one shard failed");
    assert!(e.to_string().contains(broken.name()), "{e}");

    for db in shards.all() {
        db.execute_batch(&format!("DROP TABLE {table}"))?;
    }
    Ok(())
}

#[test]
fn shard_rules_route_by_range_and_bad_rules_are_clear() -> Result<()> {
    let dir = TempDir::new("topo_range");
    let a = common::manager(&common::unique_name("range_a"), &dir.sqlite_url("a.db"))?;
    let b = common::manager(&common::unique_name("range_b"), &dir.sqlite_url("b.db"))?;
    let shards = Shards::from_managers(
        "events",
        ShardRule::parse("range:1000", 2, "EVENTS_SHARD_RULE")?,
        vec![a.clone(), b.clone()],
    )?;
    assert_eq!(shards.shard(5)?.name(), a.name());
    assert_eq!(shards.shard(1000)?.name(), b.name());
    assert_eq!(
        shards.shard("text").expect_err("text under ranges").kind(),
        ErrorKind::Parameter
    );
    let e = Shards::from_managers("events", ShardRule::Range(vec![1, 2]), vec![a, b])
        .expect_err("bounds and shards disagree");
    assert_eq!(e.kind(), ErrorKind::Config);

    // From the environment: names the variable, says what to write.
    let name = common::unique_name("sharded");
    let stem = format!("DEVELOPMENT_GLOBAL_{}_", dbmanager::variable_stem(&name));
    std::env::set_var(format!("{stem}SHARDS"), "x_0,x_1");
    std::env::set_var(format!("{stem}SHARD_RULE"), "modulo");
    let e = Shards::new(&name).expect_err("a bad rule");
    let m = e.to_string();
    assert!(m.contains(&format!("{stem}SHARD_RULE")), "{m}");
    assert!(m.contains("hash"), "{m}");
    let e = Shards::new(&common::unique_name("unsharded")).expect_err("no shards");
    assert!(e.to_string().contains("_SHARDS"), "{e}");
    Ok(())
}

/// MariaDB host lists: the role comes from `@@global.read_only` (the test
/// MariaDB is writable, so it is a primary).
#[test]
fn mariadb_host_lists_read_the_role_from_read_only() -> Result<()> {
    let _g = common::shared();
    let url = common::required_env("DBMANAGER_TEST_MYSQL_URL");
    let sep = if url.contains('?') { '&' } else { '?' };
    let rw = common::manager(
        &common::unique_name("topo_my_rw"),
        &format!("{url}{sep}target_session_attrs=read-write"),
    )?;
    rw.query_one("SELECT 1 AS one", ())?;
    assert_eq!(rw.pool_status().serving_role.as_deref(), Some("primary"));
    let sb = common::manager_with(
        &common::unique_name("topo_my_sb"),
        &format!("{url}{sep}target_session_attrs=standby"),
        |b| b.retry(dbmanager::RetryPolicy::none()),
    )?;
    let e = sb.query_one("SELECT 1 AS one", ()).expect_err("no standby");
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("a primary"), "{e}");
    Ok(())
}

/// A connection of a host list keeps the server's own paths: a migration's
/// inline `COPY … FROM stdin` (the COPY protocol), a bulk load and a stream
/// work as on a single host.
#[test]
fn host_list_connections_keep_copy_streams_and_bulk() -> Result<()> {
    let primary = primary_url();
    let hosts = [
        format!("127.0.0.1:{}", common::closed_port()),
        host_port(&primary),
    ];
    let url = with_hosts(&primary, &hosts, "target_session_attrs=read-write");
    let dir = TempDir::new("topo-copy");
    let t = common::unique_name("hl");
    std::fs::write(
        dir.path().join("V1__copy.sql"),
        format!("CREATE TABLE {t} (id INTEGER PRIMARY KEY, n TEXT);\nCOPY {t} (id, n) FROM stdin;\n1\tone\n2\t\\N\n\\.\n"),
    )
    .expect("write the script");
    let db = common::manager_with(&common::unique_name("hl"), &url, |b| {
        b.connect_timeout(Duration::from_secs(5))
            .migrations_dir(dir.path())
            .history_table(common::unique_name("hist"))
    })?;
    db.run_migrations()?;
    let report = db.bulk_insert(&t, &["id", "n"], [(3, "three"), (4, "four")])?;
    assert_eq!(report.rows_affected, 2);
    let ids: Vec<i64> = db
        .stream(&format!("SELECT id FROM {t} ORDER BY id"), ())?
        .map(|r| r.and_then(|r| r.get::<i64>("id")))
        .collect::<Result<_>>()?;
    assert_eq!(ids, [1, 2, 3, 4]);
    assert_eq!(
        db.pool_status().serving_host.as_deref(),
        Some(hosts[1].as_str())
    );
    db.execute_batch(&format!("DROP TABLE {t}"))?;
    Ok(())
}
