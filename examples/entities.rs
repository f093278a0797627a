//! The entity layer on an embedded default: no server, no schema to write.
//!
//! ```text
//! cargo run --example entities
//! ```
//!
//! With `DEVELOPMENT_GLOBAL_ENTITIES_DEMO_CONNECTION_STRING` set (in the
//! environment or `envs/.env.development`), the same code runs against that
//! database instead; otherwise it uses an SQLite file in the system's temp
//! folder (made fresh on each run).

use dbmanager::serde_json::{json, Value};
use dbmanager::{DatabaseConfig, DatabaseManager, Deletion, ErrorKind, Find, Order};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct User {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    name: String,
    age: i64,
    #[serde(default)]
    department: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<i64>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = match DatabaseManager::new("entities_demo") {
        Ok(db) => db,
        Err(e) if e.kind() == ErrorKind::Config => {
            let path = std::env::temp_dir().join("dbmanager-entities-demo.db");
            let _ = std::fs::remove_file(&path);
            println!(
                "not configured; using the embedded default: SQLite at {}",
                path.display()
            );
            DatabaseManager::from_config(
                DatabaseConfig::builder("entities_demo")
                    .url(format!("sqlite:{}", path.display()))
                    .build()?,
            )?
        }
        Err(e) => return Err(e.into()),
    };
    let users = db.entities();

    // The first save makes the tables `users`, `users__history` and
    // `users__meta`; each field gets a column typed from its value.
    let saved = users.save_entities(
        "users",
        &[
            json!({"name": "Phil", "age": 30}),
            json!({"name": "Karen", "surname": "Brown", "age": 25, "preferences": {"theme": "dark"}}),
        ],
        Some("importer"),
        Some("first import"),
    )?;
    let uid = saved[0]["id"].as_str().unwrap_or_default().to_owned();
    println!(
        "saved: {}",
        dbmanager::serde_json::to_string_pretty(&saved)?
    );

    // A partial save updates the fields it names; a new field adds a column.
    users.save_entity(
        "users",
        &json!({"id": uid, "name": "Bob", "age": 24, "department": "Engineering"}),
        Some("admin"),
        Some("moved to engineering"),
    )?;

    // Typed reads through serde.
    let bob: User = users.get_entity("users", &uid)?.expect("just saved");
    println!("typed: {bob:?}");

    // Conditions are data, never SQL text.
    let engineers: Vec<User> = users.find_entities(
        "users",
        &Find::new()
            .eq("department", "Engineering")
            .ge("age", 18)
            .order_by("name", Order::Asc)
            .limit(10),
    )?;
    println!("engineers: {}", engineers.len());

    // Every version is kept.
    for h in users.get_entity_history::<Value>("users", &uid)? {
        println!(
            "version {} ({}, by {:?}, {:?}): name = {}",
            h.version, h.operation, h.changed_by, h.comment, h.entity["name"]
        );
    }

    // Saving with a stale version is refused, not an overwrite.
    let mut stale = users
        .get_entity_by_version::<Value>("users", &uid, 1)?
        .expect("version 1");
    stale["age"] = json!(99);
    match users.save_entity("users", &stale, None, None) {
        Err(e) if e.kind() == ErrorKind::VersionConflict => println!("refused: {e}"),
        other => println!("unexpected: {other:?}"),
    }
    // To bring version 1 back, save it without its old version number.
    if let Some(fields) = stale.as_object_mut() {
        fields.remove("version");
        fields.insert("age".into(), json!(30));
    }
    let restored = users.save_entity("users", &stale, Some("admin"), Some("back to version 1"))?;
    println!(
        "restored as version {}: {}",
        restored["version"], restored["name"]
    );

    // Soft delete hides; restore brings back.
    users.delete_entity("users", &uid, Some("admin"), Deletion::Soft)?;
    println!(
        "after delete: {} visible, {} in all",
        users.count_entities("users", &Find::new())?,
        users
            .clone()
            .include_deleted()
            .count_entities("users", &Find::new())?
    );
    users.restore_entity("users", &uid, Some("admin"))?;

    // Inside a transaction of yours: all or nothing with your statements.
    db.transaction(|tx| {
        let order = tx.entities().save_entity(
            "orders",
            &json!({"user": uid, "total": 12.5}),
            None,
            None,
        )?;
        tx.execute(
            "UPDATE orders SET total = total * 2 WHERE id = ?",
            (order["id"].as_str(),),
        )?;
        Ok::<_, dbmanager::Error>(())
    })?;
    let orders: Vec<Value> = users.find_entities("orders", &Find::new())?;
    println!("orders: {}", dbmanager::serde_json::to_string(&orders)?);
    db.close();
    Ok(())
}
