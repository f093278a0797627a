//! The history table's format: one trait, [`Format`], with one
//! implementation per tool whose table we read and write: ours, Flyway
//! (4 and later) and Pyway. The format is detected from the columns of the
//! table found, rows are read into the common [`AppliedMigration`] shape,
//! and new rows are written back in the table's own format, so that the
//! other tool and dbmanager can take turns on one database.
//!
//! | format | recognised by | checksum | version |
//! |---|---|---|---|
//! | ours | `version_rank`, `installed_rank`, `description`, `type`, `script`, `checksum`, `success`, … (`version` nullable) | Flyway's CRC32 over lines, signed | as written, `_` as `.` (`002`, `1.1`) |
//! | Flyway 3 and earlier (`schema_version`) | the same, `version` NOT NULL; `version_rank` kept in version order | Flyway's CRC32 over lines, signed | as written |
//! | Flyway 4+ (`flyway_schema_history`, or `schema_version` of Flyway 4) | the same without `version_rank` | Flyway's CRC32 over lines, signed | as written, `_` as `.` |
//! | Pyway | `version`, `extension`, `name`, `checksum`, `apply_timestamp` | CRC32 of the file's bytes, upper-case hex | two digits a part (`01.01`) |

use crate::error::{Error, ErrorKind, Result};
use crate::status::{AppliedMigration, MigrationKind};
use crate::value::Value;

use super::history::{self, Exec, HistoryDialect, NewRow};
use super::source::{Scripts, Version};

/// The default name of Flyway 5+'s history table: used when the configured
/// table is absent and left at its default name.
pub(crate) const FLYWAY_TABLE: &str = "flyway_schema_history";

/// Other tools' tables that `adopt` imports (and that a run refuses to
/// ignore): refinery's and sqlx's.
pub(crate) const ADOPTABLE: [&str; 2] = ["refinery_schema_history", "_sqlx_migrations"];

/// What differs between history formats.
pub(crate) trait Format: Sync {
    /// The name users know the format by, for messages.
    fn label(&self) -> &'static str;

    /// Reads every row, oldest first.
    fn read(
        &self,
        conn: &mut dyn Exec,
        dialect: &dyn HistoryDialect,
        table: &str,
    ) -> Result<Vec<AppliedMigration>>;

    /// Inserts one row, with bind parameters.
    fn insert(
        &self,
        conn: &mut dyn Exec,
        dialect: &dyn HistoryDialect,
        table: &str,
        row: &NewRow<'_>,
    ) -> Result<()>;

    /// Inserts `rows` in their order, in the caller's transaction.
    fn insert_many(
        &self,
        conn: &mut dyn Exec,
        dialect: &dyn HistoryDialect,
        table: &str,
        rows: &[NewRow<'_>],
    ) -> Result<()> {
        for row in rows {
            self.insert(conn, dialect, table, row)?;
        }
        Ok(())
    }

    /// The checksum this format keeps for a script's text.
    fn checksum(&self, sql: &str) -> i32 {
        super::source::checksum(sql)
    }

    /// A checksum as the format stores it (repair writes it back).
    fn checksum_value(&self, checksum: i32) -> Value {
        Value::from(i64::from(checksum))
    }

    /// A version as the format writes it.
    fn version_text(&self, version: &Version) -> String {
        version.to_string()
    }

    /// Whether the table has a place for a failed script (`success`).
    fn records_failures(&self) -> bool {
        true
    }

    /// Whether the table can hold a row of this kind.
    fn holds(&self, _kind: MigrationKind) -> bool {
        true
    }
}

/// Ours: Flyway's columns with `version_rank`, `version` nullable (for
/// repeatable scripts) and `installed_rank` the key.
pub(crate) struct Ours;

impl Format for Ours {
    fn label(&self) -> &'static str {
        "dbmanager"
    }

    fn read(
        &self,
        conn: &mut dyn Exec,
        dialect: &dyn HistoryDialect,
        table: &str,
    ) -> Result<Vec<AppliedMigration>> {
        history::read(conn, dialect, table)
    }

    fn insert(
        &self,
        conn: &mut dyn Exec,
        dialect: &dyn HistoryDialect,
        table: &str,
        row: &NewRow<'_>,
    ) -> Result<()> {
        history::insert(conn, dialect, table, row)
    }

    fn insert_many(
        &self,
        conn: &mut dyn Exec,
        dialect: &dyn HistoryDialect,
        table: &str,
        rows: &[NewRow<'_>],
    ) -> Result<()> {
        history::insert_many(conn, dialect, table, rows)
    }
}

/// Flyway 3 and earlier: the same columns as ours, but `version` is the
/// key (never NULL: no repeatable scripts) and `version_rank` is the rank
/// in version order, which Flyway 3 shifts when a lower version is applied
/// after a higher one. Flyway 4.0 dropped `version_rank` on its first run.
pub(crate) struct FlywayLegacy;

impl Format for FlywayLegacy {
    fn label(&self) -> &'static str {
        "Flyway 3 and earlier"
    }

    fn read(
        &self,
        conn: &mut dyn Exec,
        dialect: &dyn HistoryDialect,
        table: &str,
    ) -> Result<Vec<AppliedMigration>> {
        history::read(conn, dialect, table)
    }

    fn insert(
        &self,
        conn: &mut dyn Exec,
        dialect: &dyn HistoryDialect,
        table: &str,
        row: &NewRow<'_>,
    ) -> Result<()> {
        let t = dialect.quote(table);
        let version = row.version.as_deref().and_then(|v| Version::parse(v).ok());
        let below = conn
            .rows(&format!("SELECT version FROM {t}"), Vec::new())?
            .iter()
            .filter_map(|r| r.get::<Option<String>>("version").ok().flatten())
            .filter_map(|v| Version::parse(&v).ok())
            .filter(|v| version.as_ref().is_some_and(|new| v < new))
            .count();
        let version_rank = i64::try_from(below).unwrap_or(i64::MAX - 1) + 1;
        conn.exec(
            &format!("UPDATE {t} SET version_rank = version_rank + 1 WHERE version_rank >= ?"),
            vec![Value::from(version_rank)],
        )?;
        let rank = next_rank(conn, &t)?;
        conn.exec(
            &format!(
                "INSERT INTO {t} (version_rank, installed_rank, version, description, type, script, \
                 checksum, installed_by, execution_time, success) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            vec![
                Value::from(version_rank),
                Value::from(rank),
            ]
            .into_iter()
            .chain(history::row_values(row))
            .collect(),
        )
        .map(drop)
    }

    fn holds(&self, kind: MigrationKind) -> bool {
        matches!(kind, MigrationKind::Versioned | MigrationKind::Baseline)
    }
}

/// Flyway 4 and later: no `version_rank`; `installed_rank` is the key.
pub(crate) struct Flyway;

impl Format for Flyway {
    fn label(&self) -> &'static str {
        "Flyway 4+"
    }

    fn read(
        &self,
        conn: &mut dyn Exec,
        dialect: &dyn HistoryDialect,
        table: &str,
    ) -> Result<Vec<AppliedMigration>> {
        history::read(conn, dialect, table)
    }

    fn insert(
        &self,
        conn: &mut dyn Exec,
        dialect: &dyn HistoryDialect,
        table: &str,
        row: &NewRow<'_>,
    ) -> Result<()> {
        let t = dialect.quote(table);
        let rank = next_rank(conn, &t)?;
        conn.exec(
            &format!(
                "INSERT INTO {t} (installed_rank, version, description, type, script, \
                 checksum, installed_by, execution_time, success) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            vec![
                Value::from(rank),
            ]
            .into_iter()
            .chain(history::row_values(row))
            .collect(),
        )
        .map(drop)
    }
}

/// Pyway (PyPI `pyway`): `installed_rank` (serial), `version` (`01.01`),
/// `extension` (`SQL`), `name` (the file name), `checksum` (CRC32 of the
/// file's bytes in upper-case hex) and `apply_timestamp`. It has no place
/// for failures, repeatable scripts or baselines: failures are kept in the
/// journal beside it ([`super::journal`]).
pub(crate) struct Pyway;

impl Pyway {
    /// The description of a file name (`V01_02__add_orders.sql` → `add orders`).
    fn description(name: &str) -> String {
        let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
        stem.split_once("__")
            .map_or(stem, |(_, d)| d)
            .replace('_', " ")
    }
}

impl Format for Pyway {
    fn label(&self) -> &'static str {
        "Pyway"
    }

    fn read(
        &self,
        conn: &mut dyn Exec,
        dialect: &dyn HistoryDialect,
        table: &str,
    ) -> Result<Vec<AppliedMigration>> {
        let rows = conn.rows(
            &format!(
                "SELECT installed_rank, version, name, checksum, apply_timestamp FROM {} \
                 ORDER BY installed_rank",
                dialect.quote(table)
            ),
            Vec::new(),
        )?;
        rows.iter()
            .map(|r| {
                let name: String = r.get("name")?;
                let checksum = r
                    .get::<Option<String>>("checksum")?
                    .and_then(|c| u32::from_str_radix(c.trim(), 16).ok())
                    .map(|c| c as i32);
                Ok(AppliedMigration {
                    installed_rank: r.get("installed_rank")?,
                    version: r.get("version")?,
                    description: Pyway::description(&name),
                    kind: MigrationKind::Versioned,
                    script: name,
                    checksum,
                    installed_by: String::new(),
                    installed_on: r
                        .get::<Option<String>>("apply_timestamp")
                        .ok()
                        .flatten()
                        .unwrap_or_default(),
                    execution_time_ms: 0,
                    success: true,
                })
            })
            .collect()
    }

    fn insert(
        &self,
        conn: &mut dyn Exec,
        dialect: &dyn HistoryDialect,
        table: &str,
        row: &NewRow<'_>,
    ) -> Result<()> {
        let extension = row
            .script
            .rsplit_once('.')
            .map_or("SQL".to_owned(), |(_, e)| e.to_ascii_uppercase());
        conn.exec(
            &format!(
                "INSERT INTO {} (version, extension, name, checksum) VALUES (?, ?, ?, ?)",
                dialect.quote(table)
            ),
            vec![
                Value::from(row.version.clone().unwrap_or_default()),
                Value::from(extension),
                Value::from(truncate(row.script, 125)),
                Value::from(
                    row.checksum
                        .map(|c| format!("{:X}", c as u32))
                        .unwrap_or_default(),
                ),
            ],
        )
        .map(drop)
    }

    fn checksum(&self, sql: &str) -> i32 {
        crc32fast::hash(sql.as_bytes()) as i32
    }

    fn checksum_value(&self, checksum: i32) -> Value {
        Value::from(format!("{:X}", checksum as u32))
    }

    fn version_text(&self, version: &Version) -> String {
        version
            .parts()
            .iter()
            .map(|p| format!("{p:02}"))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn records_failures(&self) -> bool {
        false
    }

    fn holds(&self, kind: MigrationKind) -> bool {
        kind == MigrationKind::Versioned
    }
}

fn next_rank(conn: &mut dyn Exec, quoted: &str) -> Result<i64> {
    let rows = conn.rows(
        &format!("SELECT COALESCE(MAX(installed_rank), 0) + 1 AS ir FROM {quoted}"),
        Vec::new(),
    )?;
    Ok(rows
        .first()
        .and_then(|r| r.get::<i64>("ir").ok())
        .unwrap_or(1))
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

const OURS_COLUMNS: [&str; 11] = [
    "installed_rank",
    "version_rank",
    "version",
    "description",
    "type",
    "script",
    "checksum",
    "installed_by",
    "installed_on",
    "execution_time",
    "success",
];
const PYWAY_COLUMNS: [&str; 6] = [
    "installed_rank",
    "version",
    "extension",
    "name",
    "checksum",
    "apply_timestamp",
];

/// The formats understood, for the message about an unknown table.
const UNDERSTOOD: &str = "dbmanager's (installed_rank, version_rank, version, description, type, \
     script, checksum, installed_by, installed_on, execution_time, success); Flyway 3's (the same, with \
     version NOT NULL); Flyway 4+'s (the same without version_rank); Pyway's (installed_rank, version, \
     extension, name, checksum, apply_timestamp)";

/// Which format a table with these columns is in.
pub(crate) fn detect(table: &str, columns: &[(String, bool)]) -> Result<&'static dyn Format> {
    let has = |c: &str| columns.iter().any(|(n, _)| n == c);
    if OURS_COLUMNS.iter().all(|c| has(c)) {
        let version_nullable = columns.iter().any(|(n, null)| n == "version" && *null);
        return Ok(if version_nullable {
            &Ours
        } else {
            &FlywayLegacy
        });
    }
    if OURS_COLUMNS
        .iter()
        .filter(|c| **c != "version_rank")
        .all(|c| has(c))
    {
        return Ok(&Flyway);
    }
    if PYWAY_COLUMNS.iter().all(|c| has(c)) {
        return Ok(&Pyway);
    }
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    let adopt = if ADOPTABLE.contains(&table) {
        "; to take over this history, run `dbmanager adopt` (Migrator::adopt), which imports its rows into ours"
    } else {
        ""
    };
    Err(Error::new(
        ErrorKind::Migration,
        format!(
            "the history table `{table}` has columns ({}), which is no history format dbmanager understands; \
             it reads and writes {UNDERSTOOD}{adopt}. Point the history table setting \
             ({{ENV}}_GLOBAL_{{NAME}}_MIGRATIONS_TABLE, or DatabaseConfigBuilder::history_table) at the right table",
            names.join(", ")
        ),
    ))
}

/// A history table found (or created) and its format.
pub(crate) struct History {
    /// The table, as configured (or Flyway 5+'s default name when that was found instead).
    pub(crate) table: String,
    pub(crate) format: &'static dyn Format,
    pub(crate) dialect: &'static dyn HistoryDialect,
}

impl History {
    /// The history under `table`, `None` when there is no such table.
    pub(crate) fn find(
        conn: &mut dyn Exec,
        dialect: &'static dyn HistoryDialect,
        table: &str,
    ) -> Result<Option<History>> {
        // The backend's own existence check first (the one the rest of the
        // migrator has always used), then the columns of a table that is there.
        if !dialect.table_exists(conn, table)? {
            return Ok(None);
        }
        let columns = dialect.columns(conn, table)?;
        Ok(Some(History {
            table: table.to_owned(),
            format: detect(table, &columns)?,
            dialect,
        }))
    }

    /// The history under `table`; when that is absent and `table` is the
    /// default name, Flyway 5+'s `flyway_schema_history`. `None` when
    /// there is neither. Then, still at the default name, a history of
    /// refinery or sqlx is an error that says to adopt it (a table named
    /// in the configuration is taken at its word).
    pub(crate) fn find_or_other(
        conn: &mut dyn Exec,
        dialect: &'static dyn HistoryDialect,
        table: &str,
        default_name: bool,
    ) -> Result<Option<History>> {
        if let Some(h) = History::find(conn, dialect, table)? {
            return Ok(Some(h));
        }
        if !default_name {
            return Ok(None);
        }
        if let Some(h) = History::find(conn, dialect, FLYWAY_TABLE)? {
            tracing::info!(
                table = FLYWAY_TABLE,
                "no `{table}` table; continuing Flyway's history in `{FLYWAY_TABLE}`"
            );
            return Ok(Some(h));
        }
        for other in ADOPTABLE {
            if dialect.table_exists(conn, other)? {
                return Err(Error::new(
                    ErrorKind::Migration,
                    format!(
                        "there is no history table `{table}`, but `{other}` holds another tool's history; \
                         run `dbmanager adopt` (Migrator::adopt) to import it first, so that applied \
                         scripts are not run again"
                    ),
                ));
            }
        }
        Ok(None)
    }

    /// Reads every row, oldest first.
    pub(crate) fn read(&self, conn: &mut dyn Exec) -> Result<Vec<AppliedMigration>> {
        self.format.read(conn, self.dialect, &self.table)
    }

    /// Inserts one row in the table's format.
    pub(crate) fn insert(&self, conn: &mut dyn Exec, row: &NewRow<'_>) -> Result<()> {
        self.check_holds(row.kind_of(), row.script)?;
        self.format.insert(conn, self.dialect, &self.table, row)
    }

    /// Inserts `rows` in their order (in one transaction the caller
    /// holds: their ranks are worked out together).
    pub(crate) fn insert_many(&self, conn: &mut dyn Exec, rows: &[NewRow<'_>]) -> Result<()> {
        for row in rows {
            self.check_holds(row.kind_of(), row.script)?;
        }
        self.format
            .insert_many(conn, self.dialect, &self.table, rows)
    }

    /// `Err` when the table has no place for a row of this kind.
    pub(crate) fn check_holds(&self, kind: MigrationKind, script: &str) -> Result<()> {
        if self.format.holds(kind) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Migration,
            format!(
                "the {} history `{}` has no place for `{script}` (it holds versioned scripts only); \
                 move it out of the migrations folder, or use a history table of dbmanager's",
                self.format.label(),
                self.table,
            ),
        ))
    }

    /// Sets each script's checksum to this format's, so that validation
    /// compares in the format's own terms.
    pub(crate) fn adapt(&self, scripts: &mut Scripts) {
        let all = scripts
            .versioned
            .iter_mut()
            .chain(scripts.repeatable.iter_mut())
            .chain(scripts.undo.values_mut());
        for s in all {
            s.checksum = self.format.checksum(&s.sql);
        }
    }

    /// The version text this format writes.
    pub(crate) fn version_text(&self, version: Option<&Version>) -> Option<String> {
        version.map(|v| self.format.version_text(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<(String, bool)> {
        names.iter().map(|n| ((*n).to_owned(), true)).collect()
    }

    #[test]
    fn formats_are_told_by_their_columns() {
        assert_eq!(
            detect("schema_version", &cols(&OURS_COLUMNS))
                .map(|f| f.label())
                .ok(),
            Some(Ours.label())
        );
        let legacy: Vec<(String, bool)> = OURS_COLUMNS
            .iter()
            .map(|c| ((*c).to_owned(), *c != "version"))
            .collect();
        assert_eq!(
            detect("schema_version", &legacy).map(|f| f.label()).ok(),
            Some(FlywayLegacy.label())
        );
        let flyway: Vec<&str> = OURS_COLUMNS
            .iter()
            .copied()
            .filter(|c| *c != "version_rank")
            .collect();
        assert_eq!(
            detect("flyway_schema_history", &cols(&flyway))
                .map(|f| f.label())
                .ok(),
            Some("Flyway 4+")
        );
        assert_eq!(
            detect("schema_version", &cols(&PYWAY_COLUMNS))
                .map(|f| f.label())
                .ok(),
            Some("Pyway")
        );
        let e = detect("schema_version", &cols(&["id", "name"]))
            .err()
            .expect("unknown");
        let text = e.to_string();
        assert!(
            text.contains("(id, name)") && text.contains("Pyway") && text.contains("Flyway 4+"),
            "{text}"
        );
        let e = detect("_sqlx_migrations", &cols(&["version", "description"]))
            .err()
            .expect("unknown");
        assert!(e.to_string().contains("dbmanager adopt"), "{e}");
    }

    #[test]
    fn pyway_terms() -> Result<()> {
        let v = Version::parse("1_2")?;
        assert_eq!(Pyway.version_text(&v), "01.02");
        assert_eq!(Flyway.version_text(&Version::parse("002")?), "002");
        let text = "CREATE TABLE t (id INT);\r\n";
        assert_eq!(
            Pyway.checksum(text),
            crc32fast::hash(text.as_bytes()) as i32
        );
        assert_eq!(Pyway.checksum_value(-1), Value::from("FFFFFFFF".to_owned()));
        assert_eq!(Pyway::description("V01_02__add_orders.sql"), "add orders");
        Ok(())
    }
}
