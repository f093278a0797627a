//! The main job on an embedded default: no server, no configuration.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! With `DEVELOPMENT_GLOBAL_QUICKSTART_CONNECTION_STRING` set (in the
//! environment or `envs/.env.development`), the same code runs against that
//! database instead; otherwise it uses an SQLite file in the system's temp
//! folder.

use dbmanager::{params, DatabaseConfig, DatabaseManager, ErrorKind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = match DatabaseManager::new("quickstart") {
        Ok(db) => db,
        Err(e) if e.kind() == ErrorKind::Config => {
            let path = std::env::temp_dir().join("dbmanager-quickstart-v2.db");
            println!(
                "not configured ({e});\nusing the embedded default: SQLite at {}",
                path.display()
            );
            DatabaseManager::from_config(
                DatabaseConfig::builder("quickstart")
                    .url(format!("sqlite:{}", path.display()))
                    // The folder next to Cargo.toml, wherever this runs from.
                    .migrations_dir(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/migrations/quickstart"
                    ))
                    .build()?,
            )?
        }
        Err(e) => return Err(e.into()),
    };
    println!("database `{}` on {}", db.name(), db.backend());

    // Portable SQL: `[name]` quoting and `?` / `:name` placeholders become
    // each backend's native form.
    // The schema comes from migrations/quickstart/V1__…, V2__… (seed 002's
    // layout); a second run finds nothing to do.
    let report = db.run_migrations()?;
    println!(
        "migrations: {} applied, now at version {}",
        report.applied.len(),
        report.current_version.as_deref().unwrap_or("none")
    );
    db.execute_batch("DELETE FROM orders; DELETE FROM customers;")?;
    for (id, name, status) in [
        (1, "Ada", "active"),
        (2, "Grace", "active"),
        (3, "Linus", "paused"),
    ] {
        db.execute(
            "INSERT INTO customers (id, [name], status) VALUES (?, ?, ?)",
            (id, name, status),
        )?;
    }

    let active = db.execute_query(
        "SELECT id, [name] FROM customers WHERE status = :status ORDER BY id",
        params! { "status" => "active" },
    )?;
    println!("active customers: {}", serde_json::to_string(&active)?);

    // All or nothing: the order and the counter move together.
    db.transaction(|tx| {
        tx.execute(
            "INSERT INTO orders (id, customer_id, amount) VALUES (?, ?, ?)",
            (1, 1, 100),
        )?;
        tx.execute(
            "UPDATE customers SET orders = orders + 1 WHERE id = ?",
            (1,),
        )?;
        Ok::<_, dbmanager::Error>(())
    })?;

    // A failing transaction leaves nothing behind.
    let failed = db.transaction(|tx| {
        tx.execute(
            "INSERT INTO orders (id, customer_id, amount) VALUES (?, ?, ?)",
            (2, 2, 50),
        )?;
        tx.execute(
            "INSERT INTO orders (id, customer_id, amount) VALUES (?, ?, ?)",
            (3, 99, 10),
        )?;
        Ok::<_, dbmanager::Error>(())
    });
    let err = failed.expect_err("customer 99 does not exist");
    println!("rolled back: {err}");

    let orders: i64 = db
        .query_one("SELECT count(*) AS n FROM orders", ())?
        .get("n")?;
    println!("orders stored: {orders}");

    #[derive(serde::Deserialize)]
    struct Customer {
        id: i64,
        name: String,
        orders: i64,
    }
    let customers: Vec<Customer> =
        db.query_as("SELECT id, [name], orders FROM customers ORDER BY id", ())?;
    for c in &customers {
        println!("customer {}: {} ({} orders)", c.id, c.name, c.orders);
    }

    println!(
        "pool status: {}",
        serde_json::to_string_pretty(&db.pool_status())?
    );
    db.close();
    Ok(())
}
