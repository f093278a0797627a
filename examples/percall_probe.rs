//! Runs `SELECT 1` on an in-memory SQLite database N times, for counting
//! what one call costs, which load on the machine does not change:
//!
//! ```text
//! cargo build --release --example percall_probe
//! valgrind --tool=callgrind target/release/examples/percall_probe 20000 [raw|nometrics]
//! ```
//!
//! Run it with two counts and divide the difference in instructions by the
//! difference in calls: that is the cost of one call, start-up left out.
//! `raw` runs rusqlite's `prepare_cached` directly (the overhead bench's
//! baseline); `nometrics` turns metrics off; `param` runs `SELECT ? + 1`
//! with one parameter, and `rawparam` the same on rusqlite; `url` runs
//! `SELECT 1` on the database at `DBMANAGER_PROBE_URL` (for counting system
//! calls per call on a server, e.g. with `strace -c -f`).
use dbmanager::{DatabaseConfig, DatabaseManager};
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let mode = args.next().unwrap_or_default();
    let raw = mode == "raw";
    let metrics = mode != "nometrics";
    if mode == "rawparam" {
        let c = rusqlite::Connection::open_in_memory()?;
        for i in 0..n as i64 {
            let v: i64 = c
                .prepare_cached("SELECT ? + 1")?
                .query_row([i], |r| r.get(0))?;
            std::hint::black_box(v);
        }
        return Ok(());
    }
    if raw {
        let c = rusqlite::Connection::open_in_memory()?;
        for _ in 0..n {
            let v: i64 = c.prepare_cached("SELECT 1")?.query_row([], |r| r.get(0))?;
            std::hint::black_box(v);
        }
        return Ok(());
    }
    let url = if mode == "url" {
        std::env::var("DBMANAGER_PROBE_URL")?
    } else {
        "sqlite::memory:".to_owned()
    };
    let db = DatabaseManager::from_config(
        DatabaseConfig::builder("probe")
            .url(&url)
            .metrics(metrics)
            .build()?,
    )?;
    if mode == "param" {
        for i in 0..n as i64 {
            let rows = db.execute_query("SELECT ? + 1", (i,))?;
            let v: i64 = rows.first().ok_or("no row")?.get(0)?;
            std::hint::black_box(v);
        }
        return Ok(());
    }
    for _ in 0..n {
        let rows = db.execute_query("SELECT 1", ())?;
        let v: i64 = rows.first().ok_or("no row")?.get(0)?;
        std::hint::black_box(v);
    }
    Ok(())
}
