//! Sessions killed by the server in the middle of bulk loads and streams, on
//! PostgreSQL (`pg_terminate_backend`) and MariaDB (`KILL`): nothing is lost
//! or written twice, the error says where to resume, a stream never ends
//! short without an error, and the pool carries on.
//!
//! Each test marks its own sessions (an `application_name` on PostgreSQL, a
//! user of its own on MariaDB), so that it kills nothing of the tests running
//! beside it.

mod common;

use std::time::Duration;

use common::{unique_name, Backend};
use dbmanager::{DatabaseConfig, DatabaseManager, Result};

/// A manager whose sessions the admin connection can find and kill.
struct Marked {
    db: DatabaseManager,
    admin: DatabaseManager,
    backend: Backend,
    mark: String,
}

impl Marked {
    fn new(b: Backend) -> Result<Marked> {
        let mark = unique_name("killme");
        let admin = common::manager(&unique_name("admin"), &b.admin_url())?;
        let mut url = url::Url::parse(&b.url()).expect("a URL");
        match b {
            Backend::Postgres => {
                url.query_pairs_mut().append_pair("application_name", &mark);
            }
            Backend::MySql => {
                let database = url.path().trim_start_matches('/').to_owned();
                admin.execute_batch(&format!(
                    "CREATE USER '{mark}'@'%' IDENTIFIED BY 'pw-{mark}'"
                ))?;
                admin.execute_batch(&format!(
                    "GRANT ALL PRIVILEGES ON `{database}`.* TO '{mark}'@'%'"
                ))?;
                url.set_username(&mark).expect("a user");
                url.set_password(Some(&format!("pw-{mark}")))
                    .expect("a password");
            }
            other => panic!("no sessions to kill on {other:?}"),
        }
        let db = DatabaseManager::from_config(
            DatabaseConfig::builder(unique_name("faults"))
                .url(url.as_str())
                .pool_size(2)
                .max_overflow(0)
                .query_timeout(Some(Duration::from_secs(30)))
                .build()?,
        )?;
        Ok(Marked {
            db,
            admin,
            backend: b,
            mark,
        })
    }

    /// Kills every session of `db`; how many there were.
    fn kill_sessions(&self) -> Result<usize> {
        let ids: Vec<i64> = match self.backend {
            Backend::Postgres => self.admin.execute_query(
                "SELECT pid::bigint AS id FROM pg_stat_activity WHERE application_name = ?",
                (self.mark.as_str(),),
            )?,
            _ => self.admin.execute_query(
                "SELECT ID AS id FROM information_schema.PROCESSLIST WHERE USER = ?",
                (self.mark.as_str(),),
            )?,
        }
        .iter()
        .map(|r| r.get::<i64>("id"))
        .collect::<Result<_>>()?;
        for id in &ids {
            let sql = match self.backend {
                Backend::Postgres => format!("SELECT pg_terminate_backend({id})"),
                _ => format!("KILL {id}"),
            };
            // A session may end by itself meanwhile.
            let _ = self.admin.execute_batch(&sql);
        }
        Ok(ids.len())
    }
}

impl Drop for Marked {
    fn drop(&mut self) {
        if self.backend == Backend::MySql {
            let _ = self
                .admin
                .execute_batch(&format!("DROP USER IF EXISTS '{}'@'%'", self.mark));
        }
    }
}

const ROWS: u64 = 20_000;

fn rows_from(start: u64) -> impl Iterator<Item = (i64, String)> {
    (start..ROWS).map(|i| (i as i64, format!("row {i}")))
}

/// A load committing each chunk loses its session after the third chunk:
/// either the library carries on by itself, or the error gives the row to
/// resume at, and resuming there leaves every row exactly once.
fn killed_mid_load_resumes_exactly(b: Backend) -> Result<()> {
    let m = Marked::new(b)?;
    let table = unique_name("bk");
    m.db.execute_batch(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, name VARCHAR(40) NOT NULL)"
    ))?;
    let mut killed = 0;
    let first =
        m.db.bulk(&table)
            .chunk_size(1000)
            .commit_each_chunk()
            .on_progress(|p| {
                if p.chunks == 3 && killed == 0 {
                    killed = m.kill_sessions().expect("kill the sessions");
                }
            })
            .insert(&["id", "name"], rows_from(0));
    assert!(killed > 0, "the load's session was found and killed");
    match first {
        Ok(report) => {
            eprintln!("the load carried on by itself: {report:?}");
            assert_eq!(report.rows_affected, ROWS, "{report:?}");
        }
        Err(e) => {
            let at = e
                .bulk_position()
                .unwrap_or_else(|| panic!("the error gives the row to resume at: {e}"));
            assert!(
                (3000..ROWS).contains(&at) && at % 1000 == 0,
                "resume at a chunk boundary after the committed ones, not {at}: {e}"
            );
            eprintln!("resuming at row {at} after: {e}");
            let rest =
                m.db.bulk(&table)
                    .chunk_size(1000)
                    .commit_each_chunk()
                    .start_at(at)
                    .insert(&["id", "name"], rows_from(0))?;
            assert_eq!(rest.rows_affected, ROWS - at, "{rest:?}");
        }
    }
    let row = m.db.query_one(
        &format!("SELECT COUNT(*) AS n, SUM(id) AS s FROM {table}"),
        (),
    )?;
    assert_eq!(row.get::<i64>("n")?, ROWS as i64);
    assert_eq!(
        row.get::<i64>("s")?,
        (ROWS * (ROWS - 1) / 2) as i64,
        "every row once"
    );
    m.db.execute_batch(&format!("DROP TABLE {table}"))?;
    Ok(())
}
each_backend!(killed_mid_load_resumes_exactly, [Postgres, MySql]);

/// A stream loses its session after its first rows: it ends with an error
/// (or had every row already), never short and silent, and never hangs;
/// the pool then serves the next statement.
fn killed_mid_stream_never_ends_short(b: Backend) -> Result<()> {
    let m = Marked::new(b)?;
    let n: u64 = 200_000;
    let cte = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) SELECT i FROM n"
    );
    let sql = match b {
        Backend::MySql => format!("SET STATEMENT max_recursive_iterations = {n} FOR {cte}"),
        _ => cte,
    };
    let mut stream = m.db.stream(&sql, ())?;
    let mut seen = 0u64;
    for row in stream.by_ref().take(10) {
        row?;
        seen += 1;
    }
    assert!(m.kill_sessions()? > 0, "the stream's session was killed");
    let mut failed = None;
    for row in stream {
        match row {
            Ok(r) => {
                seen += 1;
                assert_eq!(r.get::<i64>("i")?, seen as i64, "rows in order");
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    match failed {
        Some(e) => {
            let text = e.to_string();
            eprintln!("the stream ended after {seen} rows with: {text}");
            assert!(!text.contains("pw-"), "no password in the error: {text}");
        }
        None => assert_eq!(seen, n, "a stream that ends without an error has every row"),
    }
    let one: i64 = m.db.query_one("SELECT 1 AS one", ())?.get("one")?;
    assert_eq!(one, 1);
    assert_eq!(m.db.pool_status().checked_out, 0);
    Ok(())
}
each_backend!(killed_mid_stream_never_ends_short, [Postgres, MySql]);
