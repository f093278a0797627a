//! The journal beside the history (`{history}_journal`): how nothing is
//! applied without a record where a script commits on its own (MySQL and
//! MariaDB, `-- dbmanager:no-transaction` scripts).
//!
//! Before such a script runs, a `running` entry is written on a separate
//! connection. Afterwards its history row is written (on a fresh
//! connection, retried) and the entry removed in the same transaction. When
//! the row cannot be written, the entry becomes `ran`: the next run records
//! it before anything else. A failure the history cannot hold (Pyway's has
//! no `success` column) becomes a `failed` entry. An entry still `running`
//! means the process or its connection ended before the outcome was known:
//! runs stop until it is looked at and `repair` removes it.

use crate::error::Result;
use crate::sql::Dialect;
use crate::status::AppliedMigration;
use crate::value::Value;

use super::history::{kind_of, Exec, HistoryDialect, NewRow};

/// A script started, not yet recorded.
pub(crate) const RUNNING: &str = "running";
/// Ran to the end; its history row could not be written.
pub(crate) const RAN: &str = "ran";
/// Failed, in a history that has no place for failures.
pub(crate) const FAILED: &str = "failed";

/// The journal of one history table.
pub(crate) struct Journal {
    /// The table, unquoted.
    pub(crate) name: String,
    quoted: String,
    dialect: &'static dyn HistoryDialect,
}

/// One entry, with what its history row needs.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) state: String,
    pub(crate) version: Option<String>,
    pub(crate) description: String,
    pub(crate) kind: String,
    pub(crate) script: String,
    pub(crate) checksum: Option<i32>,
    pub(crate) installed_by: String,
    pub(crate) execution_time_ms: i64,
    pub(crate) noted_on: String,
}

impl Entry {
    /// The history row it stands for.
    pub(crate) fn row(&self) -> NewRow<'_> {
        NewRow {
            version: self.version.clone(),
            description: &self.description,
            kind: &self.kind,
            script: &self.script,
            checksum: self.checksum,
            installed_by: &self.installed_by,
            execution_time_ms: self.execution_time_ms,
            success: self.state == RAN,
        }
    }

    /// As an applied (`ran`) or failed (`running`, `failed`) migration.
    pub(crate) fn applied(&self) -> AppliedMigration {
        AppliedMigration {
            installed_rank: 0,
            version: self.version.clone(),
            description: self.description.clone(),
            kind: kind_of(&self.kind, self.version.is_some()),
            script: self.script.clone(),
            checksum: self.checksum,
            installed_by: self.installed_by.clone(),
            installed_on: self.noted_on.clone(),
            execution_time_ms: self.execution_time_ms,
            success: self.state == RAN,
        }
    }
}

impl Journal {
    /// The journal of the configured history table `table`.
    pub(crate) fn new(table: &str, dialect: &'static dyn HistoryDialect) -> Journal {
        let name = format!("{table}_journal");
        Journal {
            quoted: dialect.quote(&name),
            name,
            dialect,
        }
    }

    /// `CREATE TABLE` of the journal, idempotent.
    pub(crate) fn create_sql(&self) -> String {
        let body = format!(
            "CREATE TABLE {} (script VARCHAR(255) NOT NULL, state VARCHAR(10) NOT NULL, \
             version VARCHAR(50), description VARCHAR(200) NOT NULL, type VARCHAR(20) NOT NULL, \
             checksum INTEGER, installed_by VARCHAR(100) NOT NULL, execution_time INTEGER NOT NULL, \
             noted_on VARCHAR(40) NOT NULL)",
            self.quoted
        );
        if self.dialect.dialect() == Dialect::MsSql {
            format!(
                "IF OBJECT_ID(N'{}', N'U') IS NULL\n{body}",
                self.quoted.replace('\'', "''")
            )
        } else {
            body.replacen("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1)
        }
    }

    /// Whether the journal table exists.
    pub(crate) fn exists(&self, conn: &mut dyn Exec) -> Result<bool> {
        self.dialect.table_exists(conn, &self.name)
    }

    /// Every entry, oldest first.
    pub(crate) fn read(&self, conn: &mut dyn Exec) -> Result<Vec<Entry>> {
        let rows = conn.rows(
            &format!(
                "SELECT script, state, version, description, type, checksum, installed_by, \
                 execution_time, noted_on FROM {} ORDER BY noted_on",
                self.quoted
            ),
            Vec::new(),
        )?;
        rows.iter()
            .map(|r| {
                Ok(Entry {
                    script: r.get("script")?,
                    state: r.get("state")?,
                    version: r.get("version")?,
                    description: r.get("description")?,
                    kind: r.get("type")?,
                    checksum: r.get::<Option<i64>>("checksum")?.map(|c| c as i32),
                    installed_by: r.get("installed_by")?,
                    execution_time_ms: r.get("execution_time")?,
                    noted_on: r.get("noted_on")?,
                })
            })
            .collect()
    }

    /// Notes that the script of `row` starts.
    pub(crate) fn start(&self, conn: &mut dyn Exec, row: &NewRow<'_>) -> Result<()> {
        self.clear(conn, row.script)?;
        conn.exec(
            &format!(
                "INSERT INTO {} (script, state, version, description, type, checksum, installed_by, \
                 execution_time, noted_on) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self.quoted
            ),
            vec![
                Value::from(row.script),
                Value::from(RUNNING),
                Value::from(row.version.clone()),
                Value::from(row.description),
                Value::from(row.kind),
                Value::from(row.checksum.map(i64::from)),
                Value::from(row.installed_by),
                Value::from(0_i64),
                Value::from(crate::status::now_rfc3339()),
            ],
        )
        .map(drop)
    }

    /// Sets the state (and run time) of a script's entry.
    pub(crate) fn mark(
        &self,
        conn: &mut dyn Exec,
        script: &str,
        state: &str,
        execution_time_ms: i64,
    ) -> Result<()> {
        conn.exec(
            &format!(
                "UPDATE {} SET state = ?, execution_time = ? WHERE script = ?",
                self.quoted
            ),
            vec![
                Value::from(state),
                Value::from(execution_time_ms),
                Value::from(script),
            ],
        )
        .map(drop)
    }

    /// Removes a script's entry.
    pub(crate) fn clear(&self, conn: &mut dyn Exec, script: &str) -> Result<()> {
        conn.exec(
            &format!("DELETE FROM {} WHERE script = ?", self.quoted),
            vec![Value::from(script)],
        )
        .map(drop)
    }

    /// Removes every entry that is not `ran` (repair); returns their scripts.
    pub(crate) fn clear_unfinished(&self, conn: &mut dyn Exec) -> Result<Vec<String>> {
        let gone: Vec<String> = self
            .read(conn)?
            .into_iter()
            .filter(|e| e.state != RAN)
            .map(|e| e.script)
            .collect();
        conn.exec(
            &format!("DELETE FROM {} WHERE state <> ?", self.quoted),
            vec![Value::from(RAN)],
        )?;
        Ok(gone)
    }
}
