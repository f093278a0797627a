//! 500 trivial migrations on SQLite: dbmanager against refinery (rusqlite
//! driver) on the same files in the same run, and dbmanager validating 500
//! applied migrations. Prints the times and the ratios, and whether the
//! apply ratio meets its goal (at most 1.0).
//!
//! `cargo bench --bench migrations` (no server needed).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dbmanager::{DatabaseConfig, DatabaseManager};

const MIGRATIONS: usize = 500;
const ROUNDS: usize = 5;
/// Our time over refinery's, at most (issue #13).
const GOAL: f64 = 1.0;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dbm-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}

fn write_migrations(dir: &Path) {
    for i in 1..=MIGRATIONS {
        std::fs::write(
            dir.join(format!("V{i}__create_t{i}.sql")),
            format!("CREATE TABLE t{i} (id INTEGER PRIMARY KEY, name TEXT);\nINSERT INTO t{i} (name) VALUES ('x');\n"),
        )
        .expect("write a migration");
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn dbmanager_run(dir: &Path, round: usize) -> (Duration, Duration) {
    let db_dir = scratch(&format!("dbm-{round}"));
    let db = DatabaseManager::from_config(
        DatabaseConfig::builder("bench")
            .url(format!("sqlite:{}", db_dir.join("app.db").display()))
            .migrations_dir(dir)
            .build()
            .expect("config"),
    )
    .expect("manager");
    // A run holds two connections (the migration lock's and the scripts').
    // refinery is handed an open connection before its timer starts: ours
    // are opened before it too, so that both time the migrations alone.
    {
        let first = db.connection().expect("a connection");
        let second = db.connection().expect("a second connection");
        drop((first, second));
    }
    let start = Instant::now();
    let report = db.run_migrations().expect("migrate");
    let apply = start.elapsed();
    assert_eq!(report.applied.len(), MIGRATIONS);
    let start = Instant::now();
    db.migrator().validate().expect("validate");
    let validate = start.elapsed();
    db.close();
    let _ = std::fs::remove_dir_all(&db_dir);
    (apply, validate)
}

fn refinery_run(dir: &Path, round: usize) -> Duration {
    let db_dir = scratch(&format!("ref-{round}"));
    let mut conn = rusqlite::Connection::open(db_dir.join("app.db")).expect("open");
    // The same settings dbmanager's SQLite connections use.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )
    .expect("pragmas");
    let start = Instant::now();
    let migrations = refinery::load_sql_migrations(dir).expect("load");
    let report = refinery::Runner::new(&migrations)
        .run(&mut conn)
        .expect("refinery migrate");
    let elapsed = start.elapsed();
    assert_eq!(report.applied_migrations().len(), MIGRATIONS);
    drop(conn);
    let _ = std::fs::remove_dir_all(&db_dir);
    elapsed
}

fn main() {
    // `cargo test --benches` runs benches once with --bench absent: keep it quick.
    let rounds = if std::env::args().any(|a| a == "--bench") {
        ROUNDS
    } else {
        1
    };
    let dir = scratch("files");
    write_migrations(&dir);

    let mut dbm = Vec::new();
    let mut validate = Vec::new();
    let mut refinery = Vec::new();
    for round in 0..rounds {
        let (a, v) = dbmanager_run(&dir, round);
        dbm.push(a);
        validate.push(v);
        refinery.push(refinery_run(&dir, round));
    }
    let (dbm, validate, refinery) = (median(dbm), median(validate), median(refinery));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("migrations on SQLite, {MIGRATIONS} trivial migrations, median of {rounds} run(s):");
    println!(
        "  apply     dbmanager {:>9.1} ms ({:.3} ms/migration)",
        ms(dbm),
        ms(dbm) / MIGRATIONS as f64
    );
    println!(
        "  apply     refinery  {:>9.1} ms ({:.3} ms/migration)",
        ms(refinery),
        ms(refinery) / MIGRATIONS as f64
    );
    let ratio = ms(dbm) / ms(refinery);
    println!(
        "  ratio     dbmanager / refinery = {ratio:.2} (goal <= {GOAL:.2}) {}",
        if ratio <= GOAL { "ok" } else { "MISSED" }
    );
    println!(
        "  validate  dbmanager {:>9.1} ms for {MIGRATIONS} applied ({:.1} µs/migration)",
        ms(validate),
        ms(validate) * 1000.0 / MIGRATIONS as f64
    );
    println!(
        "  ratio     validate / apply = {:.3}",
        ms(validate) / ms(dbm)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
