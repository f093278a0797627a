//! The query result cache on real servers: a hit answers without a round
//! trip (the server's row changed behind the cache's back, the cached row
//! stays; the statement metrics do not move), the TTL, the entry and byte
//! bounds (least recently used first), invalidation by table, by key and by
//! a write through the manager, the refusal inside a transaction and on a
//! held connection, and use from many threads.
//!
//! "Behind the cache's back" is a second manager on the same database: it
//! has a cache of its own, so the first one's cache does not hear of its
//! writes. `sqlite::memory:` is one database per manager, so the tests that
//! need a second writer run on the servers and an SQLite file.
//!
//! The SQL Server test server (pysqlbridge) is read-only: there, only the
//! hit/miss test runs, on parameterised `SELECT`s without a table.

mod common;

use std::time::Duration;

use common::Backend;
use dbmanager::{DatabaseManager, ErrorKind, QueryOptions, Result};

/// A table `(id, n)` with a unique name, rows `(1, 'a')` and `(2, 'b')`;
/// dropped at the end.
struct Table<'a> {
    db: &'a DatabaseManager,
    name: String,
}

impl<'a> Table<'a> {
    fn new(db: &'a DatabaseManager) -> Result<Table<'a>> {
        let name = common::unique_name("cache");
        db.execute_batch(&format!(
            "CREATE TABLE {name} (id INTEGER NOT NULL PRIMARY KEY, n VARCHAR(100) NOT NULL)"
        ))?;
        db.execute(
            &format!("INSERT INTO {name} (id, n) VALUES (1, 'a'), (2, 'b')"),
            (),
        )?;
        Ok(Table { db, name })
    }

    /// `sql` with every `{t}` replaced by the table's name.
    fn sql(&self, sql: &str) -> String {
        sql.replace("{t}", &self.name)
    }
}

impl Drop for Table<'_> {
    fn drop(&mut self) {
        let _ = self
            .db
            .execute_batch(&format!("DROP TABLE IF EXISTS {}", self.name));
    }
}

/// The error a transaction closure gives up with.
#[derive(Debug)]
struct Stop;

impl From<dbmanager::Error> for Stop {
    fn from(e: dbmanager::Error) -> Stop {
        panic!("unexpected error: {e}")
    }
}

fn cached() -> QueryOptions {
    QueryOptions::new().cache_ttl(Duration::from_secs(600))
}

/// The statements the database ran on the server (the pipeline's count).
fn statements(db: &DatabaseManager) -> f64 {
    common::fault::metric("db_query_count_total", db.name(), None)
}

/// The `n` of row `id`, read through the cache.
fn n_of(db: &DatabaseManager, t: &Table<'_>, id: i64) -> Result<String> {
    let rows = db.query_with(&t.sql("SELECT n FROM {t} WHERE id = ?"), (id,), &cached())?;
    rows[0].get("n")
}

/// A hit returns the same rows and runs nothing on the server; other values
/// are another key. Counted in the three metrics and the stats.
fn a_hit_runs_nothing_on_the_server(b: Backend) -> Result<()> {
    let db = b.open()?;
    let sql = "SELECT ? AS x, ? AS y";
    let first = db.query_with(sql, (7, "seven"), &cached())?;
    let ran = statements(&db);
    let again = db.query_with(sql, (7, "seven"), &cached())?;
    assert_eq!(first, again);
    assert_eq!(statements(&db), ran, "a hit must not reach the server");
    let other = db.query_with(sql, (8, "eight"), &cached())?;
    assert_eq!(other[0].get::<i64>("x")?, 8);
    assert_eq!(statements(&db), ran + 1.0);
    // Without cache_ttl, the same statement always runs.
    db.query_with(sql, (7, "seven"), &QueryOptions::new())?;
    assert_eq!(statements(&db), ran + 2.0);

    let stats = db.query_cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 2, 2));
    assert!(stats.bytes > 0);
    assert_eq!(
        common::fault::metric("query_cache_hits_total", db.name(), None),
        1.0
    );
    assert_eq!(
        common::fault::metric("query_cache_misses_total", db.name(), None),
        2.0
    );
    assert_eq!(
        common::fault::metric("query_cache_evictions_total", db.name(), None),
        0.0
    );
    Ok(())
}
each_backend!(
    a_hit_runs_nothing_on_the_server,
    [Postgres, MySql, SqliteFile, SqliteMemory, MsSql]
);

/// The server's row changes behind the cache's back: the cached row stays
/// until the TTL, the key or the table is invalidated.
fn a_hit_does_not_see_the_server(b: Backend) -> Result<()> {
    let db = b.open()?;
    let other = db.place().manager("cache_other")?;
    let t = Table::new(&db)?;
    assert_eq!(n_of(&db, &t, 1)?, "a");
    assert_eq!(n_of(&db, &t, 2)?, "b");
    other.execute(&t.sql("UPDATE {t} SET n = 'A' WHERE id = 1"), ())?;
    other.execute(&t.sql("UPDATE {t} SET n = 'B' WHERE id = 2"), ())?;
    assert_eq!(n_of(&db, &t, 1)?, "a", "served from the cache");

    // By key: only that entry goes.
    let sql = t.sql("SELECT n FROM {t} WHERE id = ?");
    assert!(db.invalidate_query(&sql, (1,)));
    assert!(!db.invalidate_query(&sql, (1,)), "already gone");
    assert_eq!(n_of(&db, &t, 1)?, "A");
    assert_eq!(n_of(&db, &t, 2)?, "b");

    // By table (any spelling of its name): every entry that reads it goes.
    assert_eq!(db.invalidate_tables(&["no_such_table"]), 0);
    assert_eq!(db.invalidate_tables(&[&t.name.to_uppercase()]), 2);
    assert_eq!(n_of(&db, &t, 2)?, "B");

    assert!(db.clear_query_cache() >= 1);
    assert_eq!(db.query_cache_stats().entries, 0);
    Ok(())
}
each_backend!(a_hit_does_not_see_the_server, [Postgres, MySql, SqliteFile]);

/// An entry older than its TTL is not served: the query runs again.
fn the_ttl_expires(b: Backend) -> Result<()> {
    let db = b.open()?;
    let other = db.place().manager("cache_other")?;
    let t = Table::new(&db)?;
    let short = QueryOptions::new().cache_ttl(Duration::from_millis(50));
    let sql = t.sql("SELECT n FROM {t} WHERE id = 1");
    assert_eq!(db.query_with(&sql, (), &short)?[0].get::<String>("n")?, "a");
    other.execute(&t.sql("UPDATE {t} SET n = 'A' WHERE id = 1"), ())?;
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(db.query_with(&sql, (), &short)?[0].get::<String>("n")?, "A");
    assert_eq!(db.query_cache_stats().misses, 2);
    Ok(())
}
each_backend!(the_ttl_expires, [Postgres, MySql, SqliteFile]);

/// Past the entry bound, the least recently used entry goes; a hit counts
/// as a use.
fn the_entry_bound_evicts_the_least_recently_used(b: Backend) -> Result<()> {
    let db = b.open_with(|c| c.query_cache_entries(2))?;
    let q = |v: i64| db.query_with("SELECT ? AS v", (v,), &cached());
    q(1)?;
    q(2)?;
    q(1)?; // 1 is now the most recently used
    q(3)?; // evicts 2
    let stats = db.query_cache_stats();
    assert_eq!((stats.entries, stats.evictions), (2, 1));
    let ran = statements(&db);
    q(1)?;
    q(3)?;
    assert_eq!(statements(&db), ran, "1 and 3 stayed");
    q(2)?;
    assert_eq!(statements(&db), ran + 1.0, "2 was evicted");
    assert_eq!(
        common::fault::metric("query_cache_evictions_total", db.name(), None),
        2.0
    );
    Ok(())
}
each_backend!(the_entry_bound_evicts_the_least_recently_used);

/// Past the byte bound, the least recently used entries go; a result
/// larger than the whole bound is not kept at all.
fn the_byte_bound_evicts_and_skips_what_cannot_fit(b: Backend) -> Result<()> {
    let db = b.open_with(|c| c.query_cache_bytes(30_000))?;
    let big = |id: i64, len: usize| {
        db.query_with("SELECT ? AS id, ? AS pad", (id, "x".repeat(len)), &cached())
    };
    big(1, 10_000)?;
    big(2, 10_000)?;
    assert_eq!(db.query_cache_stats().entries, 2);
    big(3, 10_000)?; // 3 × 10 KB of values, the keys and the rows: over 30 KB
    let stats = db.query_cache_stats();
    assert_eq!((stats.entries, stats.evictions), (2, 1));
    assert!(stats.bytes <= 30_000, "{stats:?}");
    let ran = statements(&db);
    big(1, 10_000)?;
    assert_eq!(statements(&db), ran + 1.0, "1 was the least recently used");

    big(4, 40_000)?;
    let stats = db.query_cache_stats();
    assert!(stats.bytes <= 30_000, "{stats:?}");
    let ran = statements(&db);
    big(4, 40_000)?;
    assert_eq!(statements(&db), ran + 1.0, "too big to keep");
    Ok(())
}
each_backend!(the_byte_bound_evicts_and_skips_what_cannot_fit);

/// A write through the manager drops the entries of the tables it names:
/// a statement, a committed transaction, a held connection; a write to
/// another table leaves them.
fn a_write_through_the_manager_invalidates(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = Table::new(&db)?;
    let u = Table::new(&db)?;
    assert_eq!(n_of(&db, &t, 1)?, "a");

    db.execute(&u.sql("UPDATE {t} SET n = 'z' WHERE id = 1"), ())?;
    let ran = statements(&db);
    assert_eq!(n_of(&db, &t, 1)?, "a");
    assert_eq!(statements(&db), ran, "another table's write leaves it");

    db.execute(&t.sql("UPDATE {t} SET n = 'A1' WHERE id = 1"), ())?;
    assert_eq!(n_of(&db, &t, 1)?, "A1");

    db.transaction(|tx| {
        tx.execute(&t.sql("UPDATE {t} SET n = 'A2' WHERE id = 1"), ())?;
        Ok::<_, dbmanager::Error>(())
    })?;
    assert_eq!(n_of(&db, &t, 1)?, "A2");

    // A rolled-back transaction changed nothing: the entry stays.
    let _ = db.transaction(|tx| {
        tx.execute(&t.sql("UPDATE {t} SET n = 'never' WHERE id = 1"), ())?;
        Err::<(), _>(Stop)
    });
    let ran = statements(&db);
    assert_eq!(n_of(&db, &t, 1)?, "A2");
    assert_eq!(statements(&db), ran);

    {
        let mut conn = db.connection()?;
        conn.execute(&t.sql("UPDATE {t} SET n = 'A3' WHERE id = 1"), ())?;
    }
    assert_eq!(n_of(&db, &t, 1)?, "A3");

    // DDL, which the cache cannot place, drops everything.
    assert_eq!(n_of(&db, &t, 2)?, "b");
    let extra = common::unique_name("cache_ddl");
    db.execute_batch(&format!("CREATE TABLE {extra} (id INTEGER)"))?;
    db.execute_batch(&format!("DROP TABLE {extra}"))?;
    assert_eq!(db.query_cache_stats().entries, 0);
    Ok(())
}
each_backend!(a_write_through_the_manager_invalidates);

/// Inside a transaction or on a held connection, asking for the cache is
/// an error (their reads may see uncommitted writes); so is caching a
/// statement that may write. Options without the cache work everywhere.
fn refused_where_reads_may_be_uncommitted(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = Table::new(&db)?;
    let sql = t.sql("SELECT n FROM {t} WHERE id = 1");
    let plain = QueryOptions::new().timeout(Duration::from_secs(30));
    db.transaction(|tx| {
        let e = tx.query_with(&sql, (), &cached()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Parameter);
        assert!(e.to_string().contains("inside a transaction"), "{e}");
        assert_eq!(tx.query_with(&sql, (), &plain)?.len(), 1);
        Ok::<_, dbmanager::Error>(())
    })?;
    let mut conn = db.connection()?;
    let e = conn.query_with(&sql, (), &cached()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Parameter);
    assert_eq!(conn.query_with(&sql, (), &plain)?.len(), 1);
    drop(conn);

    let e = db
        .query_with(&t.sql("DELETE FROM {t} WHERE id = 2"), (), &cached())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Parameter);
    assert!(e.to_string().contains("only reads are cached"), "{e}");
    assert_eq!(
        db.query_one(&t.sql("SELECT COUNT(*) AS c FROM {t}"), ())?
            .get::<i64>("c")?,
        2,
        "the refused statement did not run"
    );
    assert_eq!(db.query_cache_stats().entries, 0);
    Ok(())
}
each_backend!(refused_where_reads_may_be_uncommitted);

/// Many threads read through one cache while one writes through the
/// manager: every read returns a value the row has held, and once the
/// writer is done every reader sees its last write.
fn shared_by_threads(b: Backend) -> Result<()> {
    let db = b.open_with(|c| c.pool_size(4).query_cache_entries(3))?;
    let t = Table::new(&db)?;
    let writes = 20;
    std::thread::scope(|s| -> Result<()> {
        let readers: Vec<_> = (0..6)
            .map(|i| {
                let db = &db;
                let t = &t;
                s.spawn(move || -> Result<()> {
                    for k in 0..40 {
                        let id = 1 + (i + k) % 2;
                        let n = n_of(db, t, id)?;
                        let ok = n == "a" || n == "b" || n.starts_with('w');
                        assert!(ok, "read {n:?}");
                        // Other keys, to make the entry bound evict.
                        db.query_with("SELECT ? AS v", (k % 4,), &cached())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in 0..writes {
            db.execute(
                &t.sql("UPDATE {t} SET n = ? WHERE id = 1"),
                (format!("w{w}"),),
            )?;
        }
        for r in readers {
            r.join().expect("reader thread")?;
        }
        Ok(())
    })?;
    assert_eq!(n_of(&db, &t, 1)?, format!("w{}", writes - 1));
    let stats = db.query_cache_stats();
    assert!(stats.entries <= 3, "{stats:?}");
    assert_eq!(stats.hits + stats.misses, 6 * 40 * 2 + 1);
    Ok(())
}
each_backend!(shared_by_threads);

/// A bulk load is a write like any other: the cached reads of its table go.
fn a_bulk_load_invalidates_its_table(b: Backend) -> Result<()> {
    let db = b.open()?;
    let t = Table::new(&db)?;
    let count = t.sql("SELECT COUNT(*) AS c FROM {t}");
    let read =
        |db: &DatabaseManager| -> Result<i64> { db.query_with(&count, (), &cached())?[0].get("c") };
    assert_eq!(read(&db)?, 2);
    assert_eq!(read(&db)?, 2, "served from the cache");
    db.bulk_insert(&t.name, &["id", "n"], [(3, "c"), (4, "d")])?;
    assert_eq!(read(&db)?, 4, "the load dropped the cached count");
    db.bulk_delete(&t.name, &["id"], [(4,)])?;
    assert_eq!(read(&db)?, 3, "and so did the delete");
    Ok(())
}
each_backend!(
    a_bulk_load_invalidates_its_table,
    [Postgres, MySql, SqliteFile]
);
