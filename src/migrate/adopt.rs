//! Reading the histories of refinery (`refinery_schema_history`) and sqlx
//! (`_sqlx_migrations`), which [`Migrator::adopt`](super::Migrator::adopt)
//! imports into ours once.
//!
//! Their checksums are of other kinds than Flyway's CRC32: sqlx keeps the
//! SHA-384 of the file's bytes, which is checked against the file before
//! the row is imported; refinery keeps a SipHash of the name, version and
//! text whose input changed between its releases, so it is not checked.
//! Each imported row gets the CRC32 of the file as it is at adoption, and
//! validation goes on from there.

use sha2::{Digest, Sha384};

use crate::error::{Error, ErrorKind, Result};
use crate::value::Value;

use super::history::{Exec, HistoryDialect};

/// One applied migration of the other tool.
pub(crate) struct Foreign {
    pub(crate) version: i64,
    pub(crate) name: String,
    pub(crate) success: bool,
    /// sqlx's SHA-384 of the file's bytes.
    pub(crate) sha384: Option<Vec<u8>>,
    pub(crate) execution_time_ms: i64,
}

impl Foreign {
    /// `Err` when the file's text is not what sqlx applied.
    pub(crate) fn check(&self, table: &str, script: &str, sql: &str) -> Result<()> {
        let Some(expected) = &self.sha384 else {
            return Ok(());
        };
        if Sha384::digest(sql.as_bytes()).as_slice() == expected.as_slice() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Migration,
            format!(
                "`{script}` is not the text `{table}` recorded for version {} (its SHA-384 differs): \
                 restore the file as it was applied, then adopt again; nothing was imported",
                self.version
            ),
        ))
    }
}

/// Finds refinery's or sqlx's history and reads its rows, oldest first.
pub(crate) fn read_foreign(
    conn: &mut dyn Exec,
    dialect: &dyn HistoryDialect,
) -> Result<(&'static str, Vec<Foreign>)> {
    if dialect.table_exists(conn, "refinery_schema_history")? {
        let rows = conn.rows(
            &format!(
                "SELECT CAST(version AS BIGINT) AS version, name FROM {} ORDER BY version",
                dialect.quote("refinery_schema_history")
            )
            .replace(
                "AS BIGINT",
                if dialect.dialect() == crate::sql::Dialect::MySql {
                    "AS SIGNED"
                } else {
                    "AS BIGINT"
                },
            ),
            Vec::new(),
        )?;
        let rows = rows
            .iter()
            .map(|r| {
                Ok(Foreign {
                    version: r.get("version")?,
                    name: r.get("name")?,
                    success: true,
                    sha384: None,
                    execution_time_ms: 0,
                })
            })
            .collect::<Result<_>>()?;
        return Ok(("refinery_schema_history", rows));
    }
    if dialect.table_exists(conn, "_sqlx_migrations")? {
        let rows = conn.rows(
            &format!(
                "SELECT version, description, success, checksum, execution_time FROM {} ORDER BY version",
                dialect.quote("_sqlx_migrations")
            ),
            Vec::new(),
        )?;
        let rows = rows
            .iter()
            .map(|r| {
                Ok(Foreign {
                    version: r.get("version")?,
                    name: r.get("description")?,
                    success: r.get("success")?,
                    sha384: Some(match r.value("checksum") {
                        Some(Value::Bytes(b)) => b.clone(),
                        _ => r.get::<Vec<u8>>("checksum")?,
                    }),
                    execution_time_ms: r.get::<i64>("execution_time").unwrap_or(0) / 1_000_000,
                })
            })
            .collect::<Result<_>>()?;
        return Ok(("_sqlx_migrations", rows));
    }
    Err(Error::new(
        ErrorKind::Migration,
        "there is no refinery history (`refinery_schema_history`) or sqlx history (`_sqlx_migrations`) \
         here to adopt",
    ))
}
