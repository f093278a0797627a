//! Bulk writes and streaming reads against the raw drivers, same server,
//! same process, same run.
//!
//! ```text
//! scripts/bench --bench bulk                 # starts PostgreSQL and MariaDB
//! cargo bench --all-features --bench bulk -- --quick sqlite
//! ```
//!
//! - bulk insert of 100k rows (id, name, score): PostgreSQL vs raw binary
//!   `COPY` (goal ≥ 0.95× the rate), MariaDB vs raw multi-row `INSERT` of
//!   1000 rows (≥ 0.95×), SQLite vs raw prepared statement in one
//!   transaction (≥ 0.90×); each against single-row autocommit `INSERT`s
//!   through dbmanager (≥ 10×);
//! - MariaDB bulk update of 100k rows (multi-row statements joined on the
//!   key) vs single-row autocommit updates through dbmanager (≥ 10×), and
//!   for reference vs the per-row path it replaced, run with the raw
//!   driver (one prepared `UPDATE` per row in one transaction); the
//!   per-row sides are timed on 5k rows and scaled;
//! - streaming 1M rows vs the raw driver's own iteration (≥ 0.9× the rate),
//!   and the growth of the process's peak RSS (`VmHWM`) while streaming
//!   (≤ 50 MB). Both sides read each column into an owned value once: the
//!   raw driver's `get::<String>` copies the text out of the driver, and
//!   dbmanager's row already holds it owned, so the loop moves it out with
//!   `Row::take` (`Row::get` would copy it a second time).
//!
//! Arguments after `--`: `--quick` (100k stream, fewer rounds), `--strict`
//! (exit 1 when a goal is missed), and a filter on the lines' names.
//! PostgreSQL and MariaDB need `DBMANAGER_TEST_POSTGRES_URL` and
//! `DBMANAGER_TEST_MYSQL_URL` (set by `scripts/bench`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use dbmanager::{DatabaseConfig, DatabaseManager};

type BoxError = Box<dyn std::error::Error>;
type Outcome<T> = Result<T, BoxError>;

const BULK_ROWS: usize = 100_000;
/// Single-row autocommit inserts timed (their rate is compared).
const SINGLE_ROWS: usize = 2_000;

struct Settings {
    strict: bool,
    filter: Option<String>,
    rounds: usize,
    stream_rows: usize,
}

fn settings() -> Settings {
    let mut s = Settings {
        strict: false,
        filter: None,
        // Seven alternating rounds, medians: with three, one slow round on
        // the server (a checkpoint, autovacuum) moved a line's ratio by a
        // third from one run to the next.
        rounds: 7,
        stream_rows: 1_000_000,
    };
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => {
                s.rounds = 1;
                s.stream_rows = 100_000;
            }
            "--strict" => s.strict = true,
            a if a.starts_with('-') => {}
            a => s.filter = Some(a.to_lowercase()),
        }
    }
    s
}

/// The process's peak resident set so far, in bytes (`VmHWM`).
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One line of the report; false when its goal is missed.
fn line(name: &str, ours: Duration, raw: Duration, goal: f64, what: &str) -> bool {
    // A rate ratio: raw time / our time.
    let ratio = raw.as_secs_f64() / ours.as_secs_f64();
    let ok = ratio >= goal;
    println!(
        "{name:<44} dbmanager {:>9.1} ms   {what:<22} {:>9.1} ms   rate {ratio:>6.2}x (goal >= {goal:.2}x) {}",
        ours.as_secs_f64() * 1e3,
        raw.as_secs_f64() * 1e3,
        if ok { "ok" } else { "MISSED" }
    );
    ok
}

fn rows(n: usize) -> impl Iterator<Item = (i64, String, f64)> {
    (0..n).map(|i| (i as i64, format!("name {i}"), i as f64 * 0.5))
}

/// Times `ours` and `raw` alternately for `rounds` rounds (each preceded by
/// `reset`); medians.
fn compare(
    rounds: usize,
    mut reset: impl FnMut() -> Outcome<()>,
    mut ours: impl FnMut() -> Outcome<()>,
    mut raw: impl FnMut() -> Outcome<()>,
) -> Outcome<(Duration, Duration)> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for side in 0..2 {
            reset()?;
            let t = Instant::now();
            if (side + round) % 2 == 0 {
                ours()?;
                a.push(t.elapsed());
            } else {
                raw()?;
                b.push(t.elapsed());
            }
        }
    }
    Ok((median(a), median(b)))
}

/// Single-row autocommit inserts through dbmanager, scaled to `BULK_ROWS`.
fn single_rows(db: &DatabaseManager, table: &str) -> Outcome<Duration> {
    db.execute(&format!("DELETE FROM {table}"), ())?;
    let sql = format!("INSERT INTO {table} (id, name, score) VALUES (?, ?, ?)");
    let t = Instant::now();
    for (id, name, score) in rows(SINGLE_ROWS) {
        db.execute(&sql, (id, name, score))?;
    }
    Ok(t.elapsed().mul_f64(BULK_ROWS as f64 / SINGLE_ROWS as f64))
}

fn manager(name: &str, url: &str) -> Outcome<DatabaseManager> {
    Ok(DatabaseManager::from_config(
        DatabaseConfig::builder(name)
            .url(url)
            .query_timeout(None)
            .build()?,
    )?)
}

fn postgres_bulk(s: &Settings, url: &str) -> Outcome<bool> {
    use postgres::binary_copy::BinaryCopyInWriter;
    use postgres::types::Type;
    let db = manager("bench_bulk_pg", url)?;
    let t = format!("bench_bulk_{}", std::process::id());
    db.execute_batch(&format!(
        "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id BIGINT PRIMARY KEY, name TEXT, score DOUBLE PRECISION)"
    ))?;
    let mut raw = postgres::Client::connect(url, postgres::NoTls)?;
    let (ours, theirs) = compare(
        s.rounds,
        || Ok(db.execute_batch(&format!("TRUNCATE {t}"))?),
        || {
            db.bulk(&t)
                .chunk_size(BULK_ROWS)
                .insert(&["id", "name", "score"], rows(BULK_ROWS))?;
            Ok(())
        },
        || {
            let mut tx = raw.transaction()?;
            let sink = tx.copy_in(&format!("COPY {t} (id, name, score) FROM STDIN BINARY"))?;
            let mut w = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::TEXT, Type::FLOAT8]);
            for (id, name, score) in rows(BULK_ROWS) {
                w.write(&[&id, &name, &score])?;
            }
            w.finish()?;
            tx.commit()?;
            Ok(())
        },
    )?;
    let single = single_rows(&db, &t)?;
    let a = line(
        "PostgreSQL bulk_insert 100k",
        ours,
        theirs,
        0.95,
        "raw binary COPY",
    );
    let b = line(
        "PostgreSQL bulk_insert vs single-row",
        ours,
        single,
        10.0,
        "single-row autocommit",
    );
    db.execute_batch(&format!("DROP TABLE {t}"))?;
    Ok(a && b)
}

fn mariadb_bulk(s: &Settings, url: &str) -> Outcome<bool> {
    let db = manager("bench_bulk_my", url)?;
    let t = format!("bench_bulk_{}", std::process::id());
    db.execute_batch(&format!(
        "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id BIGINT PRIMARY KEY, name TEXT, score DOUBLE)"
    ))?;
    let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(url)?).prefer_socket(false);
    let mut raw = mysql::Conn::new(opts)?;
    let (ours, theirs) = compare(
        s.rounds,
        || Ok(db.execute_batch(&format!("TRUNCATE TABLE {t}"))?),
        || {
            db.bulk(&t)
                .chunk_size(BULK_ROWS)
                .insert(&["id", "name", "score"], rows(BULK_ROWS))?;
            Ok(())
        },
        || raw_mysql_insert(&mut raw, &t, false),
    )?;
    // The same with the statement run by its prepared handle (the driver
    // then does not read its text for each execution): shown, no goal.
    let (ours_again, by_handle) = compare(
        s.rounds,
        || Ok(db.execute_batch(&format!("TRUNCATE TABLE {t}"))?),
        || {
            db.bulk(&t)
                .chunk_size(BULK_ROWS)
                .insert(&["id", "name", "score"], rows(BULK_ROWS))?;
            Ok(())
        },
        || raw_mysql_insert(&mut raw, &t, true),
    )?;
    let single = single_rows(&db, &t)?;
    let a = line(
        "MariaDB bulk_insert 100k",
        ours,
        theirs,
        0.95,
        "raw multi-row INSERT",
    );
    line(
        "MariaDB bulk_insert (info only)",
        ours_again,
        by_handle,
        0.0,
        "raw INSERT by handle",
    );
    let b = line(
        "MariaDB bulk_insert vs single-row",
        ours,
        single,
        10.0,
        "single-row autocommit",
    );
    let c = mariadb_update(s, &db, &mut raw, &t)?;
    db.execute_batch(&format!("DROP TABLE {t}"))?;
    Ok(a && b && c)
}

/// Rows one per-row update pass times (scaled to `BULK_ROWS`).
const PER_ROW_UPDATES: usize = 5_000;

/// `bulk_update` of `BULK_ROWS` rows (multi-row statements joined on the
/// key) against single-row autocommit updates through dbmanager and the
/// per-row path it replaced, run with the raw driver: one prepared
/// `UPDATE … WHERE id = ?` per row, all in one transaction. For reference
/// only: the goals are the inserts' (the server's own work of updating
/// each row bounds an update's gain). Each round sets other values,
/// so that every row changes.
fn mariadb_update(
    s: &Settings,
    db: &DatabaseManager,
    raw: &mut mysql::Conn,
    t: &str,
) -> Outcome<bool> {
    use mysql::prelude::Queryable;
    let cols = ["id", "name", "score"];
    db.execute_batch(&format!("TRUNCATE TABLE {t}"))?;
    db.bulk(t)
        .chunk_size(BULK_ROWS)
        .insert(&cols, rows(BULK_ROWS))?;
    let updated = |n: usize, round: usize| {
        rows(n).map(move |(id, name, score)| (id, format!("{name} {round}"), score + round as f64))
    };
    let scaled = |d: Duration| d.mul_f64(BULK_ROWS as f64 / PER_ROW_UPDATES as f64);
    let (mut ours, mut per_row, mut single) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..s.rounds {
        let start = Instant::now();
        let r = db.bulk(t).chunk_size(BULK_ROWS).update(
            &cols,
            &["id"],
            updated(BULK_ROWS, 3 * round + 1),
        )?;
        ours.push(start.elapsed());
        if r.rows_affected != BULK_ROWS as u64 {
            return Err(format!("bulk_update matched {} rows", r.rows_affected).into());
        }
        let start = Instant::now();
        let mut tx = raw.start_transaction(mysql::TxOpts::default())?;
        let stmt = tx.prep(format!("UPDATE {t} SET name = ?, score = ? WHERE id = ?"))?;
        for (id, name, score) in updated(PER_ROW_UPDATES, 3 * round + 2) {
            tx.exec_drop(&stmt, (name, score, id))?;
        }
        tx.commit()?;
        per_row.push(scaled(start.elapsed()));
        let sql = format!("UPDATE {t} SET name = ?, score = ? WHERE id = ?");
        let start = Instant::now();
        for (id, name, score) in updated(PER_ROW_UPDATES, 3 * round + 3) {
            db.execute(&sql, (name, score, id))?;
        }
        single.push(scaled(start.elapsed()));
    }
    let ours = median(ours);
    line(
        "MariaDB bulk_update 100k (info only)",
        ours,
        median(per_row),
        0.0,
        "raw per-row UPDATE (tx)",
    );
    Ok(line(
        "MariaDB bulk_update vs single-row (info)",
        ours,
        median(single),
        0.0,
        "single-row autocommit",
    ))
}

/// Raw multi-row `INSERT`s of 1000 rows in one transaction, the rows
/// taken as they come and each value moved into the driver's; the
/// statement given as text (the driver's statement cache prepares it
/// once) or, with `by_handle`, prepared once and run by its handle.
fn raw_mysql_insert(raw: &mut mysql::Conn, t: &str, by_handle: bool) -> Outcome<()> {
    use mysql::prelude::Queryable;
    let mut tx = raw.start_transaction(mysql::TxOpts::default())?;
    let statement = |n: usize| {
        let mut sql = format!("INSERT INTO {t} (id, name, score) VALUES (?, ?, ?)");
        sql.push_str(&", (?, ?, ?)".repeat(n - 1));
        sql
    };
    let text = statement(1000);
    let handle = if by_handle {
        Some(tx.prep(&text)?)
    } else {
        None
    };
    let mut params: Vec<mysql::Value> = Vec::with_capacity(3000);
    for (id, name, score) in rows(BULK_ROWS) {
        params.push(id.into());
        params.push(name.into());
        params.push(score.into());
        if params.len() == 3000 {
            let batch = std::mem::replace(&mut params, Vec::with_capacity(3000));
            match &handle {
                Some(h) => tx.exec_drop(h, batch)?,
                None => tx.exec_drop(&text, batch)?,
            }
        }
    }
    if !params.is_empty() {
        tx.exec_drop(statement(params.len() / 3), params)?;
    }
    tx.commit()?;
    Ok(())
}

fn sqlite_bulk(s: &Settings) -> Outcome<bool> {
    let dir = std::env::temp_dir().join(format!("dbmanager-bench-bulk-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("bench.db");
    let db = manager("bench_bulk_sqlite", &format!("sqlite:{}", path.display()))?;
    db.execute_batch(
        "CREATE TABLE ours (id INTEGER PRIMARY KEY, name TEXT, score REAL); \
         CREATE TABLE raw (id INTEGER PRIMARY KEY, name TEXT, score REAL)",
    )?;
    let mut raw = rusqlite::Connection::open(&path)?;
    raw.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    let (ours, theirs) = compare(
        s.rounds,
        || Ok(db.execute_batch("DELETE FROM ours; DELETE FROM raw")?),
        || {
            db.bulk("ours")
                .chunk_size(BULK_ROWS)
                .insert(&["id", "name", "score"], rows(BULK_ROWS))?;
            Ok(())
        },
        || {
            let tx = raw.transaction()?;
            {
                let mut st = tx.prepare("INSERT INTO raw (id, name, score) VALUES (?1, ?2, ?3)")?;
                for (id, name, score) in rows(BULK_ROWS) {
                    st.execute(rusqlite::params![id, name, score])?;
                }
            }
            tx.commit()?;
            Ok(())
        },
    )?;
    let single = single_rows(&db, "ours")?;
    let a = line(
        "SQLite bulk_insert 100k",
        ours,
        theirs,
        0.90,
        "raw prepared in tx",
    );
    let b = line(
        "SQLite bulk_insert vs single-row",
        ours,
        single,
        10.0,
        "single-row autocommit",
    );
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(a && b)
}

/// CPU time this thread has used so far (zero where it cannot be read).
fn thread_cpu() -> Duration {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid place for the result.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        }
    }
    Duration::ZERO
}

/// Streams `n` rows with dbmanager and with the raw driver; the peak RSS
/// growth is measured around dbmanager's first stream.
fn stream_line(
    name: &str,
    rounds: usize,
    mut ours: impl FnMut() -> Outcome<u64>,
    mut raw: impl FnMut() -> Outcome<u64>,
) -> Outcome<bool> {
    let before = peak_rss();
    ours()?;
    let growth = peak_rss().saturating_sub(before);
    let (mut cpu_ours, mut cpu_raw) = (Vec::new(), Vec::new());
    let (t_ours, t_raw) = compare(
        rounds,
        || Ok(()),
        || {
            let c = thread_cpu();
            ours()?;
            cpu_ours.push(thread_cpu().saturating_sub(c));
            Ok(())
        },
        || {
            let c = thread_cpu();
            raw()?;
            cpu_raw.push(thread_cpu().saturating_sub(c));
            Ok(())
        },
    )?;
    let a = line(name, t_ours, t_raw, 0.9, "raw driver iteration");
    // The work on this side of the socket, which the load of other
    // processes hardly changes (for SQLite, all of it). Not a goal.
    let (c_ours, c_raw) = (median(cpu_ours), median(cpu_raw));
    if !c_ours.is_zero() {
        println!(
            "{:<44} dbmanager {:>9.1} ms   {:<22} {:>9.1} ms   rate {:>6.2}x (for reference)",
            format!("{name}: client CPU"),
            c_ours.as_secs_f64() * 1e3,
            "raw driver iteration",
            c_raw.as_secs_f64() * 1e3,
            c_raw.as_secs_f64() / c_ours.as_secs_f64(),
        );
    }
    let mb = growth as f64 / 1e6;
    let b = mb <= 50.0;
    println!(
        "{:<44} peak RSS growth {mb:.1} MB (goal <= 50 MB) {}",
        format!("{name}: memory"),
        if b { "ok" } else { "MISSED" }
    );
    Ok(a && b)
}

fn postgres_stream(s: &Settings, url: &str) -> Outcome<bool> {
    let db = manager("bench_stream_pg", url)?;
    let n = s.stream_rows;
    let sql = format!("SELECT i::int8 AS id, 'name ' || i AS name FROM generate_series(1, {n}) i");
    let mut raw = postgres::Client::connect(url, postgres::NoTls)?;
    stream_line(
        &format!("PostgreSQL stream {}k rows", n / 1000),
        s.rounds,
        || {
            let mut sum = 0u64;
            for row in db.stream(&sql, ())? {
                let mut row = row?;
                sum += row.get::<i64>(0)? as u64 + row.take::<String>(1)?.len() as u64;
            }
            Ok(sum)
        },
        || {
            use postgres::fallible_iterator::FallibleIterator;
            let mut it = raw.query_raw(sql.as_str(), std::iter::empty::<i64>())?;
            let mut sum = 0u64;
            while let Some(row) = it.next()? {
                sum += row.get::<_, i64>(0) as u64 + row.get::<_, String>(1).len() as u64;
            }
            Ok(sum)
        },
    )
}

fn sqlite_stream(s: &Settings) -> Outcome<bool> {
    let db = manager("bench_stream_sqlite", "sqlite::memory:")?;
    let n = s.stream_rows;
    let sql = format!(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n}) \
         SELECT i AS id, 'name ' || i AS name FROM c"
    );
    let raw = rusqlite::Connection::open_in_memory()?;
    stream_line(
        &format!("SQLite stream {}k rows", n / 1000),
        s.rounds,
        || {
            let mut sum = 0u64;
            for row in db.stream(&sql, ())? {
                let mut row = row?;
                sum += row.get::<i64>(0)? as u64 + row.take::<String>(1)?.len() as u64;
            }
            Ok(sum)
        },
        || {
            let mut st = raw.prepare(&sql)?;
            let mut rows = st.query([])?;
            let mut sum = 0u64;
            while let Some(row) = rows.next()? {
                sum += row.get::<_, i64>(0)? as u64 + row.get::<_, String>(1)?.len() as u64;
            }
            Ok(sum)
        },
    )
}

fn mariadb_stream(s: &Settings, url: &str) -> Outcome<bool> {
    use mysql::prelude::Queryable;
    let db = manager("bench_stream_my", url)?;
    let n = s.stream_rows;
    let sql = format!(
        "SET STATEMENT max_recursive_iterations = {n} FOR \
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n}) \
         SELECT i AS id, CONCAT('name ', i) AS name FROM c"
    );
    let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(url)?).prefer_socket(false);
    let raw = std::cell::RefCell::new(mysql::Conn::new(opts)?);
    let ours = || {
        let mut sum = 0u64;
        for row in db.stream(&sql, ())? {
            let mut row = row?;
            sum += row.get::<i64>(0)? as u64 + row.take::<String>(1)?.len() as u64;
        }
        Ok(sum)
    };
    // What a user of the driver writes for a query without parameters:
    // the text protocol.
    let ok = stream_line(
        &format!("MariaDB stream {}k rows", n / 1000),
        s.rounds,
        ours,
        || {
            let mut sum = 0u64;
            for row in raw.borrow_mut().query_iter(sql.as_str())? {
                let row = row?;
                let (id, name): (i64, String) = mysql::from_row(row);
                sum += id as u64 + name.len() as u64;
            }
            Ok(sum)
        },
    )?;
    // For reference: the driver on the binary protocol (a prepared
    // statement), as dbmanager reads every stream. Not a goal.
    let (t_ours, t_raw) = compare(
        s.rounds,
        || Ok(()),
        || ours().map(drop),
        || {
            let mut sum = 0u64;
            for row in raw.borrow_mut().exec_iter(sql.as_str(), ())? {
                let row = row?;
                let (id, name): (i64, String) = mysql::from_row(row);
                sum += id as u64 + name.len() as u64;
            }
            std::hint::black_box(sum);
            Ok(())
        },
    )?;
    line(
        "MariaDB stream (reference: raw prepared)",
        t_ours,
        t_raw,
        0.9,
        "raw exec_iter (binary)",
    );
    Ok(ok)
}

fn main() -> ExitCode {
    let s = settings();
    let pg = std::env::var("DBMANAGER_TEST_POSTGRES_URL").ok();
    let my = std::env::var("DBMANAGER_TEST_MYSQL_URL").ok();
    let wants = |name: &str| {
        s.filter
            .as_ref()
            .map_or(true, |f| name.contains(f.as_str()))
    };
    let mut all_ok = true;
    let mut run = |name: &str, r: Outcome<bool>| match r {
        Ok(ok) => all_ok &= ok,
        Err(e) => {
            println!("{name}: failed: {e}");
            all_ok = false;
        }
    };
    // Streams first, before the bulk loads raise the peak RSS: each
    // measures the growth of the peak RSS.
    if wants("sqlite stream") {
        run("sqlite stream", sqlite_stream(&s));
    }
    match &pg {
        Some(url) if wants("postgresql stream") => {
            run("postgresql stream", postgres_stream(&s, url))
        }
        None => println!("PostgreSQL: DBMANAGER_TEST_POSTGRES_URL not set; skipped"),
        _ => {}
    }
    match &my {
        Some(url) if wants("mariadb stream") => run("mariadb stream", mariadb_stream(&s, url)),
        None => println!("MariaDB: DBMANAGER_TEST_MYSQL_URL not set; skipped"),
        _ => {}
    }
    if wants("sqlite bulk") {
        run("sqlite bulk", sqlite_bulk(&s));
    }
    if let Some(url) = &pg {
        if wants("postgresql bulk") {
            run("postgresql bulk", postgres_bulk(&s, url));
        }
    }
    if let Some(url) = &my {
        if wants("mariadb bulk") {
            run("mariadb bulk", mariadb_bulk(&s, url));
        }
    }
    if s.strict && !all_ok {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
