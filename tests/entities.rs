//! The entity layer (seed 003) on real servers: the same suite on
//! PostgreSQL, MariaDB and SQLite (a file and in memory), and on the SQL
//! Server peer as far as it goes (it is read-only, so the first save must
//! fail clearly). Every test saves entity kinds of its own (unique names),
//! since other tests share the servers.

mod common;

use std::sync::{Arc, Barrier};

use common::{unique_name, Backend};
use dbmanager::serde_json::{json, Value};
use dbmanager::{DatabaseManager, Deletion, Error, ErrorKind, Find, HistoryEntry, Order, Result};
use serde::{Deserialize, Serialize};

/// A manager of its own on `b`; behind pgbouncer, told so (unnamed
/// statements, as transaction pooling needs).
fn open(b: Backend) -> Result<common::Db> {
    b.open_with(|c| c.pgbouncer(b == Backend::PgBouncer))
}

/// `name` quoted as the backend quotes identifiers.
fn quoted(b: Backend, name: &str) -> String {
    match b.kind() {
        dbmanager::BackendKind::MySql => format!("`{name}`"),
        dbmanager::BackendKind::MsSql => format!("[{name}]"),
        _ => format!("\"{name}\""),
    }
}

/// The handles can be shared across threads like the manager.
#[test]
fn handles_are_send_and_sync() {
    fn shared<T: Send + Sync + Clone>() {}
    shared::<dbmanager::Entities>();
    shared::<Find>();
}

fn kind_name(prefix: &str) -> String {
    unique_name(prefix)
}

fn get(db: &DatabaseManager, kind: &str, id: &str) -> Result<Option<Value>> {
    db.entities().get_entity::<Value>(kind, id)
}

fn id_of(entity: &Value) -> String {
    entity["id"]
        .as_str()
        .expect("a saved entity has a text id")
        .to_owned()
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct User {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    name: String,
    age: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<i64>,
}

/// Create, update (a partial save keeps the other fields), history in
/// order, a version read back from the history, typed reads and saves.
fn create_update_and_history(b: Backend) -> Result<()> {
    let db = open(b)?;
    let kind = kind_name("users");
    let e = db.entities();

    let first = e.save_entity(
        &kind,
        &json!({"name": "Ada", "age": 36, "tags": ["math", "engines"]}),
        Some("admin"),
        Some("first"),
    )?;
    let id = id_of(&first);
    assert_eq!(id.len(), 36, "a new id is a UUID: {first}");
    assert_eq!(first["version"], 1);
    assert_eq!(first["name"], "Ada");
    assert_eq!(first["tags"], json!(["math", "engines"]));
    assert_eq!(first["created_by"], "admin");
    assert_eq!(first["updated_by"], "admin");
    assert_eq!(first["deleted_at"], Value::Null);
    assert!(first["created_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    let second = e.save_entity(
        &kind,
        &json!({"id": id, "name": "Ada Lovelace", "status": "premium"}),
        Some("editor"),
        Some("renamed"),
    )?;
    assert_eq!(second["version"], 2);
    assert_eq!(second["name"], "Ada Lovelace");
    assert_eq!(
        second["age"], 36,
        "a partial save keeps the fields it does not name"
    );
    assert_eq!(second["status"], "premium");
    assert_eq!(second["created_by"], "admin");
    assert_eq!(second["updated_by"], "editor");
    assert_eq!(second["created_at"], first["created_at"]);
    assert_eq!(get(&db, &kind, &id)?, Some(second.clone()));

    let history: Vec<HistoryEntry<Value>> = e.get_entity_history(&kind, &id)?;
    let versions: Vec<i64> = history.iter().map(|h| h.version).collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(history[0].comment.as_deref(), Some("first"));
    assert_eq!(history[1].changed_by.as_deref(), Some("editor"));
    assert_eq!(history[1].operation, "save");
    assert_eq!(history[0].entity, first);
    assert_eq!(history[1].entity, second);

    let old: Value = e.get_entity_by_version(&kind, &id, 1)?.expect("version 1");
    assert_eq!(old["name"], "Ada");
    assert_eq!(e.get_entity_by_version::<Value>(&kind, &id, 3)?, None);

    // Bringing version 1 back: saved without its old version number.
    let mut back = old.clone();
    back.as_object_mut().unwrap().remove("version");
    let third = e.save_entity(&kind, &back, None, Some("reverted"))?;
    assert_eq!(third["version"], 3);
    assert_eq!(third["name"], "Ada");

    // Typed saves and reads through serde.
    let typed_kind = kind_name("typed");
    let saved: User = e.save_entity_as(
        &typed_kind,
        &User {
            id: None,
            name: "Grace".into(),
            age: 85,
            version: None,
        },
        None,
        None,
    )?;
    assert_eq!(saved.version, Some(1));
    let read: User = e
        .get_entity(&typed_kind, saved.id.as_deref().unwrap())?
        .expect("saved");
    assert_eq!(read, saved);
    let many = e.save_entities(
        &typed_kind,
        &[
            User {
                id: Some("u-1".into()),
                name: "Linus".into(),
                age: 54,
                version: None,
            },
            User {
                id: Some("u-2".into()),
                name: "Ken".into(),
                age: 81,
                version: None,
            },
        ],
        Some("import"),
        None,
    )?;
    assert_eq!(many.len(), 2);
    let none: Vec<Value> =
        e.save_entities(&kind_name("empty"), &Vec::<Value>::new(), None, None)?;
    assert!(none.is_empty());
    assert_eq!(many[1]["id"], "u-2");
    let users: Vec<User> =
        e.find_entities(&typed_kind, &Find::new().order_by("age", Order::Asc))?;
    let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["Linus", "Ken", "Grace"]);

    // Its statements went through the pipeline like any other: they are
    // in the statement statistics (and so in the metrics).
    let stats = db.statement_stats(100);
    let insert = format!("INSERT INTO {} (", quoted(b, &kind));
    let upserts: u64 = stats
        .iter()
        .filter(|st| st.sql.starts_with(&insert))
        .map(|st| st.calls)
        .sum();
    assert_eq!(upserts, 3, "three saves of {kind}: {stats:#?}");

    // A kind never saved has nothing, and reading it makes no table.
    let never = kind_name("never");
    assert_eq!(get(&db, &never, "x")?, None);
    assert_eq!(e.count_entities(&never, &Find::new())?, 0);
    assert!(e.find_entities::<Value>(&never, &Find::new())?.is_empty());
    assert!(!e.delete_entity(&never, "x", None, Deletion::Soft)?);
    assert!(db
        .execute_query(&format!("SELECT * FROM {never}"), ())
        .is_err());
    Ok(())
}
each_backend!(
    create_update_and_history,
    [Postgres, MySql, SqliteFile, SqliteMemory, PgBouncer]
);

/// A soft delete hides the entity from get, find and count (unless asked),
/// a restore brings it back, both are versions in the history; a permanent
/// delete removes the entity and its history.
fn soft_delete_restore_and_permanent_delete(b: Backend) -> Result<()> {
    let db = open(b)?;
    let kind = kind_name("docs");
    let e = db.entities();
    let a = id_of(&e.save_entity(&kind, &json!({"title": "a"}), None, None)?);
    let bb = id_of(&e.save_entity(&kind, &json!({"title": "b"}), None, None)?);

    assert!(e.delete_entity(&kind, &a, Some("cleaner"), Deletion::Soft)?);
    assert!(
        !e.delete_entity(&kind, &a, None, Deletion::default())?,
        "already deleted"
    );
    assert_eq!(get(&db, &kind, &a)?, None);
    assert_eq!(e.count_entities(&kind, &Find::new())?, 1);
    let titles: Vec<Value> = e.find_entities(&kind, &Find::new())?;
    assert_eq!(titles.len(), 1);
    assert_eq!(titles[0]["title"], "b");

    let all = db.entities().include_deleted();
    let deleted: Value = all.get_entity(&kind, &a)?.expect("visible when asked for");
    assert!(deleted["deleted_at"].is_string());
    assert_eq!(deleted["updated_by"], "cleaner");
    assert_eq!(all.count_entities(&kind, &Find::new())?, 2);
    assert_eq!(
        all.count_entities(&kind, &Find::new().is_not_null("deleted_at"))?,
        1
    );

    assert!(e.restore_entity(&kind, &a, Some("undo"))?);
    assert!(!e.restore_entity(&kind, &a, None)?, "not deleted any more");
    let back = get(&db, &kind, &a)?.expect("restored");
    assert_eq!(back["deleted_at"], Value::Null);
    assert_eq!(back["version"], 3);
    let ops: Vec<String> = e
        .get_entity_history::<Value>(&kind, &a)?
        .into_iter()
        .map(|h| h.operation)
        .collect();
    assert_eq!(ops, ["save", "delete", "restore"]);

    assert!(e.delete_entity(&kind, &bb, None, Deletion::Permanent)?);
    assert!(!e.delete_entity(&kind, &bb, None, Deletion::Permanent)?);
    assert_eq!(all.get_entity::<Value>(&kind, &bb)?, None);
    assert!(e.get_entity_history::<Value>(&kind, &bb)?.is_empty());
    assert_eq!(all.count_entities(&kind, &Find::new())?, 1);
    // The id can be used again, from version 1.
    let again = e.save_entity(&kind, &json!({"id": bb, "title": "b2"}), None, None)?;
    assert_eq!(again["version"], 1);
    Ok(())
}
each_backend!(soft_delete_restore_and_permanent_delete);

/// Every kind of condition, order, limit and offset, and count.
fn find_with_every_condition(b: Backend) -> Result<()> {
    let db = open(b)?;
    let kind = kind_name("people");
    let e = db.entities();
    e.save_entities(
        &kind,
        &[
            json!({"id": "p1", "name": "Ada", "age": 36, "score": 9.5, "active": true, "city": "London"}),
            json!({"id": "p2", "name": "Grace", "age": 85, "score": 7.25, "active": false, "city": "New York"}),
            json!({"id": "p3", "name": "Linus", "age": 54, "score": 8.0, "active": true, "city": null}),
            json!({"id": "p4", "name": "50% off_sale", "age": 1, "score": 1.0, "active": false, "city": "Paris"}),
        ],
        None,
        None,
    )?;
    let ids = |find: Find| -> Result<Vec<String>> {
        Ok(e.find_entities::<Value>(&kind, &find)?
            .iter()
            .map(id_of)
            .collect())
    };
    assert_eq!(ids(Find::new().eq("name", "Grace"))?, ["p2"]);
    assert_eq!(ids(Find::new().ne("name", "Grace"))?, ["p1", "p3", "p4"]);
    assert_eq!(ids(Find::new().lt("age", 36))?, ["p4"]);
    assert_eq!(ids(Find::new().le("age", 36))?, ["p1", "p4"]);
    assert_eq!(ids(Find::new().gt("age", 54))?, ["p2"]);
    assert_eq!(ids(Find::new().ge("age", 54))?, ["p2", "p3"]);
    assert_eq!(
        ids(Find::new().gt("score", 8))?,
        ["p1"],
        "an integer compared with a float field"
    );
    assert_eq!(ids(Find::new().eq("active", true))?, ["p1", "p3"]);
    assert_eq!(
        ids(Find::new().is_in("city", ["Paris", "London"]))?,
        ["p1", "p4"]
    );
    assert_eq!(
        ids(Find::new().is_in("age", Vec::<i64>::new()))?,
        Vec::<String>::new()
    );
    assert_eq!(ids(Find::new().like("name", "%ra%"))?, ["p2"]);
    assert_eq!(ids(Find::new().like("name", "_da"))?, ["p1"]);
    assert_eq!(ids(Find::new().contains("name", "50%"))?, ["p4"]);
    assert_eq!(
        ids(Find::new().contains("name", "f_s"))?,
        ["p4"],
        "`_` is literal in contains"
    );
    assert_eq!(
        ids(Find::new().contains("name", "0%x"))?,
        Vec::<String>::new()
    );
    assert_eq!(ids(Find::new().is_null("city"))?, ["p3"]);
    assert_eq!(ids(Find::new().eq("city", Value::Null))?, ["p3"]);
    assert_eq!(ids(Find::new().is_not_null("city"))?, ["p1", "p2", "p4"]);
    assert_eq!(
        ids(Find::new().ne("city", Value::Null))?,
        ["p1", "p2", "p4"]
    );
    assert_eq!(
        ids(Find::new().eq("version", 1))?.len(),
        4,
        "system fields too"
    );
    // Several conditions all hold; order, limit, offset.
    assert_eq!(ids(Find::new().eq("active", false).gt("age", 10))?, ["p2"]);
    assert_eq!(
        ids(Find::new().order_by("age", Order::Desc).limit(2))?,
        ["p2", "p3"]
    );
    assert_eq!(
        ids(Find::new().order_by("age", Order::Desc).limit(2).offset(1))?,
        ["p3", "p1"]
    );
    assert_eq!(ids(Find::new().offset(3))?, ["p4"]);
    assert_eq!(
        ids(Find::new().order_by("name", Order::Asc).limit(1))?,
        ["p4"]
    );

    assert_eq!(e.count_entities(&kind, &Find::new())?, 4);
    assert_eq!(e.count_entities(&kind, &Find::new().eq("active", true))?, 2);
    assert_eq!(
        e.count_entities(&kind, &Find::new().ge("age", 36).limit(1))?,
        3
    );

    // Conditions are data: an unknown field, a value of the wrong type, or
    // a name that would be SQL is an error, never SQL.
    let err = e
        .find_entities::<Value>(&kind, &Find::new().eq("nope", 1))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Parameter, "{err}");
    assert!(err.to_string().contains("has no field `nope`"), "{err}");
    let err = e
        .find_entities::<Value>(&kind, &Find::new().eq("age", "old"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conversion, "{err}");
    let err = e
        .count_entities(&kind, &Find::new().eq("age = 1 OR 1", 1))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Parameter, "{err}");
    let err = e
        .find_entities::<Value>(
            &kind,
            &Find::new().order_by("age; DROP TABLE x", Order::Asc),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Parameter, "{err}");
    let err = e
        .count_entities(&kind, &Find::new().like("age", "1%"))
        .unwrap_err();
    assert!(err.to_string().contains("text columns only"), "{err}");
    Ok(())
}
each_backend!(find_with_every_condition);

/// A new field adds a column (typed from its value, recorded in the
/// metadata table); a value that does not fit its column is a clear error.
fn a_new_field_adds_a_column(b: Backend) -> Result<()> {
    let db = open(b)?;
    let kind = kind_name("items");
    let e = db.entities();
    let id = id_of(&e.save_entity(&kind, &json!({"sku": "a-1", "qty": 3}), None, None)?);
    let err = db
        .execute_query(&format!("SELECT colour FROM {kind}"), ())
        .unwrap_err();
    assert!(!matches!(err.kind(), ErrorKind::Other), "{err}");

    let saved = e.save_entity(
        &kind,
        &json!({"id": id, "colour": "red", "dims": {"w": 2, "h": 3}, "price": 9.99, "fragile": true}),
        None,
        None,
    )?;
    assert_eq!(saved["qty"], 3);
    assert_eq!(saved["dims"], json!({"w": 2, "h": 3}));
    assert_eq!(saved["fragile"], true);
    let row = db.query_one(&format!("SELECT colour FROM {kind} WHERE id = ?"), (&id,))?;
    assert_eq!(row.get::<String>("colour")?, "red");
    let meta: Vec<(String, String)> = db
        .execute_query(
            &format!("SELECT field_name, field_type FROM {kind}__meta ORDER BY field_name"),
            (),
        )?
        .iter()
        .map(|r| Ok((r.get("field_name")?, r.get("field_type")?)))
        .collect::<Result<_>>()?;
    let expected: Vec<(String, String)> = [
        ("colour", "text"),
        ("dims", "json"),
        ("fragile", "boolean"),
        ("price", "float"),
        ("qty", "integer"),
        ("sku", "text"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(meta, expected);

    // Never retyped: text into the integer column is refused, saying what
    // to do; an integer into the float column is stored as a float.
    let err = e
        .save_entity(&kind, &json!({"id": id, "qty": "three"}), None, None)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conversion, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("field `qty`")
            && text.contains("integer column")
            && text.contains("new field name"),
        "{text}"
    );
    let saved = e.save_entity(&kind, &json!({"id": id, "price": 10}), None, None)?;
    assert_eq!(saved["price"], 10.0);
    assert_eq!(saved["version"], 3, "the refused save changed nothing");
    // A field first seen as null is a text column.
    let saved = e.save_entity(&kind, &json!({"id": id, "note": null}), None, None)?;
    assert_eq!(saved["note"], Value::Null);
    let saved = e.save_entity(&kind, &json!({"id": id, "note": "fine"}), None, None)?;
    assert_eq!(saved["note"], "fine");
    // A name that differs only in case from a field is refused (one column on MySQL and SQLite).
    let err = e
        .save_entity(&kind, &json!({"id": id, "Colour": "blue"}), None, None)
        .unwrap_err();
    assert!(err.to_string().contains("only in case"), "{err}");
    Ok(())
}
each_backend!(a_new_field_adds_a_column);

/// Two managers (two pools, as two processes would have) save the first
/// entities of the same new kind at once, with new fields too: both
/// succeed, and every entity is there.
fn concurrent_creators_of_a_new_kind(b: Backend) -> Result<()> {
    concurrent_creators(b, false)
}
each_backend!(
    concurrent_creators_of_a_new_kind,
    [Postgres, MySql, SqliteFile]
);

/// The schema work of a first save runs outside the save's transaction
/// (DDL), and is retried as the transaction is when it meets a transient
/// failure: here an SQLite file whose write lock another connection holds
/// for longer than SQLite's wait on a locked database (5 s when no query
/// timeout is set; with one, the watchdog ends the wait as a timeout).
#[test]
fn a_busy_database_during_the_first_save_is_waited_out() -> Result<()> {
    let place = Backend::SqliteFile.place();
    let db = place.manager_with("ents_busy", |b| b.query_timeout(None))?;
    db.execute("CREATE TABLE warm (x INTEGER)", ())?;
    let path = place.url().trim_start_matches("sqlite:").to_owned();
    let holder = rusqlite::Connection::open(&path).expect("open the file a second time");
    holder
        .execute_batch("BEGIN IMMEDIATE; INSERT INTO warm VALUES (1);")
        .expect("take the write lock");
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(5300));
        holder
            .execute_batch("COMMIT")
            .expect("release the write lock");
    });
    let kind = kind_name("busy");
    let saved = db
        .entities()
        .save_entity(&kind, &json!({"name": "first"}), None, None);
    release.join().unwrap();
    let saved = saved?;
    assert_eq!(saved["name"], "first");
    assert_eq!(db.entities().count_entities(&kind, &Find::new())?, 1);
    Ok(())
}

/// The same inside the writers' own transactions (`tx.entities()`), where
/// the schema work runs under a savepoint (on MySQL on a connection of its
/// own); a writer that loses a race on the server is retried whole by the
/// transaction's retry loop.
fn concurrent_creators_in_transactions(b: Backend) -> Result<()> {
    concurrent_creators(b, true)
}
each_backend!(
    concurrent_creators_in_transactions,
    [Postgres, MySql, SqliteFile]
);

fn concurrent_creators(b: Backend, in_tx: bool) -> Result<()> {
    let place = b.place();
    let one = place.manager("ents_a")?;
    let two = place.manager("ents_b")?;
    for round in 0..3 {
        let kind = kind_name(&format!("race{round}"));
        let start = Arc::new(Barrier::new(4));
        let results: Vec<Result<Value>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    let db = if i % 2 == 0 { one.clone() } else { two.clone() };
                    let (kind, start) = (kind.clone(), Arc::clone(&start));
                    s.spawn(move || {
                        let entity = json!({"writer": i, "shared": "x", format!("own_{i}"): i});
                        start.wait();
                        if in_tx {
                            db.transaction(|tx| {
                                tx.entities().save_entity(&kind, &entity, None, None)
                            })
                        } else {
                            db.entities().save_entity(&kind, &entity, None, None)
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            if let Err(e) = r {
                panic!("round {round}: a concurrent first save failed: {e:?}");
            }
        }
        assert_eq!(one.entities().count_entities(&kind, &Find::new())?, 4);
        let found: Vec<Value> = two
            .entities()
            .find_entities(&kind, &Find::new().order_by("writer", Order::Asc))?;
        for (i, entity) in found.iter().enumerate() {
            assert_eq!(entity["writer"], i as i64);
            assert_eq!(entity[format!("own_{i}")], i as i64, "{entity}");
        }
    }
    Ok(())
}

/// Saving with the version an entity was read at works once; the second
/// writer with the same (now stale) version gets VersionConflict, and the
/// first writer's change stands.
fn a_stale_version_is_refused(b: Backend) -> Result<()> {
    let db = open(b)?;
    let kind = kind_name("accounts");
    let e = db.entities();
    let created = e.save_entity(&kind, &json!({"balance": 100}), None, None)?;
    let id = id_of(&created);
    let mut alice = created.clone();
    let mut bob = created.clone();
    alice["balance"] = json!(150);
    bob["balance"] = json!(50);
    let saved = e.save_entity(&kind, &alice, Some("alice"), None)?;
    assert_eq!(saved["version"], 2);
    let err: Error = e.save_entity(&kind, &bob, Some("bob"), None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::VersionConflict, "{err}");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("version 1")
            && text.contains("current version is 2")
            && text.contains("read it again"),
        "{text}"
    );
    let now = get(&db, &kind, &id)?.unwrap();
    assert_eq!(now["balance"], 150);
    assert_eq!(now["version"], 2);
    assert_eq!(e.get_entity_history::<Value>(&kind, &id)?.len(), 2);
    // Reread and saved with the current version, it goes through.
    let mut retry = now.clone();
    retry["balance"] = json!(100);
    assert_eq!(
        e.save_entity(&kind, &retry, Some("bob"), None)?["version"],
        3
    );
    // A version for an entity that does not exist is refused too.
    let err = e
        .save_entity(
            &kind,
            &json!({"id": "ghost", "version": 4, "balance": 1}),
            None,
            None,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::VersionConflict, "{err}");
    assert_eq!(get(&db, &kind, "ghost")?, None);
    // A soft delete is a version too: a save read before it is stale.
    e.delete_entity(&kind, &id, None, Deletion::Soft)?;
    let err = e.save_entity(&kind, &retry, None, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::VersionConflict, "{err}");
    Ok(())
}
each_backend!(a_stale_version_is_refused);

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Event {
    title: String,
    at: dbmanager::chrono::DateTime<dbmanager::chrono::Utc>,
    day: dbmanager::chrono::NaiveDate,
    note: Option<String>,
    ratio: f64,
    big: i64,
    ok: bool,
}

/// Unicode, nulls, numbers at their limits, booleans, timestamps and
/// nested JSON come back as they were saved.
fn unicode_nulls_numbers_and_timestamps(b: Backend) -> Result<()> {
    use dbmanager::chrono::{NaiveDate, TimeZone, Utc};
    let db = open(b)?;
    let kind = kind_name("events");
    let e = db.entities();
    let event = Event {
        title: "Zoë's café – 日本語 🎉 \"quoted\" 'single' \\ back".into(),
        at: Utc.with_ymd_and_hms(2026, 11, 30, 2, 41, 7).unwrap(),
        day: NaiveDate::from_ymd_opt(1999, 12, 31).unwrap(),
        note: None,
        ratio: -0.125,
        big: i64::MAX,
        ok: false,
    };
    let saved = e.save_entity(&kind, &event, Some("ユーザー"), Some("コメント ✓"))?;
    let id = id_of(&saved);
    let back: Event = e.get_entity(&kind, &id)?.expect("saved");
    assert_eq!(back, event);
    let hist: Vec<HistoryEntry<Event>> = e.get_entity_history(&kind, &id)?;
    assert_eq!(hist[0].entity, event);
    assert_eq!(hist[0].comment.as_deref(), Some("コメント ✓"));
    assert_eq!(hist[0].changed_by.as_deref(), Some("ユーザー"));

    let nested = json!({
        "id": "ünï-1",
        "deep": {"a": [1, 2.5, null, {"b": "ß"}], "e": {}},
        "empty": "",
        "nothing": null,
        "min": i64::MIN,
    });
    let saved = e.save_entity(&kind, &nested, None, None)?;
    assert_eq!(saved["id"], "ünï-1");
    assert_eq!(saved["deep"], nested["deep"]);
    assert_eq!(saved["empty"], "");
    assert_eq!(saved["nothing"], Value::Null);
    assert_eq!(saved["min"], i64::MIN);
    assert_eq!(
        e.find_entities::<Value>(&kind, &Find::new().eq("title", event.title.as_str()))?
            .len(),
        1
    );
    assert_eq!(
        e.count_entities(&kind, &Find::new().contains("title", "日本"))?,
        1
    );
    // Fields of one entity that another lacks read back as null.
    let other = get(&db, &kind, "ünï-1")?.unwrap();
    assert_eq!(other["title"], Value::Null);
    Ok(())
}
each_backend!(unicode_nulls_numbers_and_timestamps);

/// Names that cannot be tables or columns (SQL injection among them) are
/// refused before any statement, with an error saying what a name may be.
fn injection_looking_names_are_refused(b: Backend) -> Result<()> {
    let db = open(b)?;
    let e = db.entities();
    let victim = kind_name("victim");
    e.save_entity(&victim, &json!({"x": 1}), None, None)?;
    for name in [
        format!("{victim}; DROP TABLE {victim}"),
        format!("{victim}\" --"),
        "users`".to_owned(),
        "a b".to_owned(),
        String::new(),
        "x__history".to_owned(),
    ] {
        let err = e
            .save_entity(&name, &json!({"x": 1}), None, None)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Parameter, "{name}: {err}");
        assert!(err.to_string().contains("cannot be a table name"), "{err}");
        let err = e.get_entity::<Value>(&name, "1").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Parameter, "{err}");
    }
    for field in ["x\" = 1; DROP TABLE t; --", "a b", "1st", "x'", "naïve"] {
        let mut entity = serde_json::Map::new();
        entity.insert(field.to_owned(), json!(1));
        let err = e
            .save_entity(&victim, &Value::Object(entity), None, None)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Parameter, "{field}: {err}");
        assert!(err.to_string().contains("cannot be a column name"), "{err}");
    }
    // Not an object, or a bad id: refused too.
    for bad in [json!([1, 2]), json!("x"), json!({"id": {"a": 1}})] {
        let err = e.save_entity(&victim, &bad, None, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Parameter, "{err}");
    }
    // Values are bound, never pasted: SQL in a value is only text.
    let sneaky = "x'); DROP TABLE victim; --";
    let saved = e.save_entity(&victim, &json!({"y": sneaky}), None, None)?;
    assert_eq!(saved["y"], sneaky);
    assert_eq!(e.count_entities(&victim, &Find::new())?, 2);
    assert_eq!(e.count_entities(&victim, &Find::new().eq("y", sneaky))?, 1);
    Ok(())
}
each_backend!(injection_looking_names_are_refused);

/// A read-only database refuses saves, deletes and restores (the
/// pipeline's own read-only check), and still reads.
fn read_only_database_refuses_saves(b: Backend) -> Result<()> {
    let place = b.place();
    let rw = place.manager("ents_rw")?;
    let ro = place.manager_with("ents_ro", |c| c.read_only(true))?;
    let kind = kind_name("ro");
    let id = id_of(
        &rw.entities()
            .save_entity(&kind, &json!({"a": 1}), None, None)?,
    );

    let fresh = kind_name("ro_new");
    for (what, err) in [
        (
            "a new kind",
            ro.entities()
                .save_entity(&fresh, &json!({"a": 1}), None, None)
                .unwrap_err(),
        ),
        (
            "a new field",
            ro.entities()
                .save_entity(&kind, &json!({"id": id, "b": 2}), None, None)
                .unwrap_err(),
        ),
        (
            "an update",
            ro.entities()
                .save_entity(&kind, &json!({"id": id, "a": 2}), None, None)
                .unwrap_err(),
        ),
    ] {
        assert_eq!(err.kind(), ErrorKind::ReadOnly, "{what}: {err}");
    }
    let err = ro
        .entities()
        .delete_entity(&kind, &id, None, Deletion::Soft)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ReadOnly, "{err}");
    let entity: Value = ro.entities().get_entity(&kind, &id)?.expect("reads work");
    assert_eq!(entity["a"], 1);
    assert_eq!(entity["version"], 1);
    assert_eq!(ro.entities().count_entities(&kind, &Find::new())?, 1);
    Ok(())
}
each_backend!(
    read_only_database_refuses_saves,
    [Postgres, MySql, SqliteFile]
);

/// The error of a transaction closure that gives up on purpose.
#[derive(Debug)]
enum Abort {
    Changed,
    #[allow(dead_code)] // read by Debug only
    Db(Error),
}

impl From<Error> for Abort {
    fn from(e: Error) -> Abort {
        Abort::Db(e)
    }
}

/// `tx.entities()` works inside the caller's transaction: it rolls back
/// with it, commits with it, and sees the transaction's own statements.
fn tx_entities_roll_back_with_the_transaction(b: Backend) -> Result<()> {
    let db = open(b)?;
    let kind = kind_name("orders");
    // A new kind inside a transaction that rolls back.
    let result: std::result::Result<(), Abort> = db.transaction(|tx| {
        let saved =
            tx.entities()
                .save_entity(&kind, &json!({"id": "o1", "total": 5}), None, None)?;
        assert_eq!(saved["version"], 1);
        let seen: Option<Value> = tx.entities().get_entity(&kind, "o1")?;
        assert!(seen.is_some(), "the transaction sees its own save");
        Err(Abort::Changed)
    });
    assert!(matches!(result, Err(Abort::Changed)), "{result:?}");
    assert_eq!(
        get(&db, &kind, "o1")?,
        None,
        "rolled back with the transaction"
    );

    // Committed with the transaction, beside a plain statement of it.
    db.transaction(|tx| {
        let saved = tx.entities().save_entity(
            &kind,
            &json!({"id": "o2", "total": 7}),
            Some("web"),
            None,
        )?;
        tx.execute(
            &format!("UPDATE {kind} SET total = total + 1 WHERE id = ?"),
            (saved["id"].as_str(),),
        )?;
        let count = tx.entities().count_entities(&kind, &Find::new())?;
        assert_eq!(count, 1);
        Ok::<_, Error>(())
    })?;
    assert_eq!(get(&db, &kind, "o2")?.unwrap()["total"], 8);

    // An existing kind, a new field, then a rollback: nothing of it stays
    // but (on MySQL, which commits DDL) the empty column.
    let mut tx = db.begin()?;
    tx.entities()
        .save_entity(&kind, &json!({"id": "o2", "gift": true}), None, None)?;
    tx.entities()
        .delete_entity(&kind, "o2", None, Deletion::Soft)?;
    tx.rollback()?;
    let after = get(&db, &kind, "o2")?.expect("the delete was rolled back");
    assert_eq!(after["version"], 1);
    assert!(after.get("gift").map_or(true, Value::is_null), "{after}");
    // And the kind still takes that field afterwards.
    let saved = db
        .entities()
        .save_entity(&kind, &json!({"id": "o2", "gift": true}), None, None)?;
    assert_eq!(saved["gift"], true);
    Ok(())
}
each_backend!(
    tx_entities_roll_back_with_the_transaction,
    [Postgres, MySql, SqliteFile, SqliteMemory, PgBouncer]
);

/// The SQL Server peer (pysqlbridge) serves CSV files read-only: it cannot
/// make tables, so the first save fails, clearly and at once, and reads of
/// a kind never saved find nothing or fail clearly. The SQL written for SQL
/// Server (MERGE upsert, OFFSET/FETCH, savepoints as SAVE TRANSACTION) is
/// checked as text in the crate's unit tests only.
fn sql_server_peer_refuses_the_first_save(b: Backend) -> Result<()> {
    let db = open(b)?;
    let kind = kind_name("mssql");
    let err = db
        .entities()
        .save_entity(&kind, &json!({"a": 1}), None, None)
        .unwrap_err();
    assert_ne!(err.kind(), ErrorKind::Other, "{err:?}");
    assert_eq!(err.database(), Some(db.name()), "{err}");
    // The peer's own words: "CREATE is not supported: this server reads
    // its sources and never writes to them".
    let text = err.to_string();
    assert!(text.contains("CREATE is not supported"), "{text}");
    eprintln!("first save on the SQL Server peer: {text}");
    // Reading a kind never saved asks the catalog (sys.columns), finds
    // nothing, and says so without an error.
    assert_eq!(get(&db, &kind, "x")?, None);
    assert_eq!(db.entities().count_entities(&kind, &Find::new())?, 0);
    Ok(())
}
each_backend!(sql_server_peer_refuses_the_first_save, [MsSql]);
