//! Streams N rows of `(id, name)` from an in-memory SQLite database, for
//! counting what a streamed row costs, which load on the machine does not
//! change:
//!
//! ```text
//! cargo build --release --example stream_probe
//! valgrind --tool=callgrind target/release/examples/stream_probe 100000 [raw]
//! ```
//!
//! Run it with two counts and divide the difference in instructions by the
//! difference in rows. `raw` steps rusqlite's own statement (the bulk
//! bench's baseline); otherwise the rows come through `DatabaseManager::stream`.
use dbmanager::{DatabaseConfig, DatabaseManager};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let raw = args.next().is_some_and(|m| m == "raw");
    let sql = format!(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n}) \
         SELECT i AS id, 'name ' || i AS name FROM c"
    );
    let mut sum = 0u64;
    if raw {
        let c = rusqlite::Connection::open_in_memory()?;
        let mut st = c.prepare(&sql)?;
        let mut rows = st.query([])?;
        while let Some(row) = rows.next()? {
            sum += row.get::<_, i64>(0)? as u64 + row.get::<_, String>(1)?.len() as u64;
        }
    } else {
        let db = DatabaseManager::from_config(
            DatabaseConfig::builder("probe")
                .url("sqlite::memory:")
                .build()?,
        )?;
        for row in db.stream(&sql, ())? {
            let mut row = row?;
            sum += row.get::<i64>(0)? as u64 + row.take::<String>(1)?.len() as u64;
        }
    }
    println!("{sum}");
    Ok(())
}
