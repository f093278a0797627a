//! Shards on SQLite files: runs with no server and no configuration.
//!
//! ```text
//! cargo run --example shards
//! ```
//!
//! Three SQLite files in the system's temp folder are three shards; each
//! customer's orders live on the shard its key hashes to (CRC-32 of the
//! key's bytes, modulo 3), and a read over every shard gathers the counts,
//! shard by shard. With configuration instead of code, the same routing is
//! `Shards::new("orders")` over `{PREFIX}ORDERS_SHARDS=orders_0,orders_1,orders_2`
//! (and `{PREFIX}ORDERS_SHARD_RULE=hash`), each shard configured as usual.

use std::time::Duration;

use dbmanager::{DatabaseConfig, DatabaseManager, ShardRule, Shards};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("dbmanager-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut managers = Vec::new();
    for i in 0..3 {
        let path = dir.join(format!("orders_{i}.db"));
        let db = DatabaseManager::from_config(
            DatabaseConfig::builder(format!("orders_{i}"))
                .url(format!("sqlite:{}", path.display()))
                .build()?,
        )?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS orders (customer TEXT NOT NULL, amount INTEGER NOT NULL)",
        )?;
        managers.push(db);
    }
    let orders = Shards::from_managers("orders", ShardRule::Hash, managers)?
        .with_timeout(Duration::from_secs(5));

    for (customer, amount) in [
        ("ada", 30),
        ("grace", 12),
        ("linus", 7),
        ("ada", 5),
        ("ken", 99),
    ] {
        let shard = orders.shard(customer)?;
        shard.execute(
            "INSERT INTO orders (customer, amount) VALUES (?, ?)",
            (customer, amount),
        )?;
        println!("{customer:>6} -> {}", shard.name());
    }

    // One read on every shard, each within the time limit; results apart.
    let all = orders.on_all_shards(
        "SELECT count(*) AS n, COALESCE(sum(amount), 0) AS total FROM orders",
        (),
    )?;
    for (shard, rows) in all.ok() {
        let row = &rows[0];
        println!(
            "{shard}: {} orders, {} in total",
            row.get::<i64>("n")?,
            row.get::<i64>("total")?
        );
    }
    for (shard, error) in all.failed() {
        println!("{shard} failed: {error}");
    }
    for db in orders.all() {
        db.close();
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
