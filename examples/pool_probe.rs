//! Checks a connection out of an in-memory SQLite pool and back N times, for
//! counting what one get+return costs, which load on the machine does not
//! change:
//!
//! ```text
//! cargo build --release --example pool_probe
//! valgrind --tool=callgrind target/release/examples/pool_probe 20000 [r2d2]
//! ```
//!
//! Run it with two counts and divide the difference in instructions by the
//! difference in calls. `r2d2` runs a bare `r2d2::Pool` over a connection
//! that costs nothing, with the settings dbmanager's pool has (the overhead
//! bench's baseline).
use std::convert::Infallible;

use dbmanager::{DatabaseConfig, DatabaseManager};

/// A connection that costs nothing, to count r2d2's own machinery.
struct Trivial;

impl r2d2::ManageConnection for Trivial {
    type Connection = ();
    type Error = Infallible;

    fn connect(&self) -> Result<(), Infallible> {
        Ok(())
    }

    fn is_valid(&self, _: &mut ()) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _: &mut ()) -> bool {
        false
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let mode = args.next().unwrap_or_default();
    let db = DatabaseManager::from_config(
        DatabaseConfig::builder("probe")
            .url("sqlite::memory:")
            .build()?,
    )?;
    if mode == "r2d2" {
        let config = db.config();
        let bare = r2d2::Pool::builder()
            .max_size(config.max_size())
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(config.acquire_timeout())
            .idle_timeout(Some(config.idle_timeout()).filter(|t| !t.is_zero()))
            .max_lifetime(config.max_lifetime())
            .build(Trivial)?;
        for _ in 0..n {
            drop(std::hint::black_box(bare.get()?));
        }
        return Ok(());
    }
    for _ in 0..n {
        drop(std::hint::black_box(db.connection()?));
    }
    Ok(())
}
