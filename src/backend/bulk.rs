//! One bulk write, checked and quoted for a dialect, and the statements
//! every backend can run for it. Backends with a faster path (PostgreSQL's
//! binary `COPY`) override [`Connection::bulk_write`](super::Connection::bulk_write);
//! the rest run [`BulkPlan::run_statements`].

use crate::error::{Error, Result};
use crate::sql::{quote_identifier, Dialect};
use crate::value::{hash_value, Value};

/// What a bulk operation does to each row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BulkKind {
    Insert,
    Upsert,
    Update,
    Delete,
}

impl BulkKind {
    /// The `operation` label of the bulk metrics.
    pub(crate) fn name(self) -> &'static str {
        match self {
            BulkKind::Insert => "insert",
            BulkKind::Upsert => "upsert",
            BulkKind::Update => "update",
            BulkKind::Delete => "delete",
        }
    }
}

/// Parameters one statement may carry, per dialect (PostgreSQL and MySQL
/// count them in 16 bits, SQL Server allows 2100, SQLite 32766 since 3.32).
fn max_params(dialect: Dialect) -> usize {
    match dialect {
        Dialect::Postgres | Dialect::MySql => 65_535,
        Dialect::Sqlite => 32_766,
        Dialect::MsSql => 2_000,
    }
}

/// Rows in one multi-row `INSERT`: at most this many, whatever the
/// parameter limit allows.
const ROWS_PER_STATEMENT: usize = 1000;

/// Bytes of values in one multi-row statement where the server names no
/// limit of its own (MySQL sizes its statements from the server's
/// `max_allowed_packet` instead, see
/// [`run_statements_within`](BulkPlan::run_statements_within)).
const BYTES_PER_STATEMENT: usize = 4 << 20;

/// The rows of one chunk as they come from the caller's input. Backends
/// that can write rows as they come take them one at a time, into one
/// reused buffer, so a chunk is never held in memory whole.
pub(crate) trait BulkRows {
    /// Puts the next row's values, in column order, in `row` (emptied
    /// first); `Ok(false)` when the chunk has no more rows. An error names
    /// the input row that does not fit the columns.
    fn next_row(&mut self, row: &mut Vec<Value>) -> Result<bool>;
}

/// Takes every row of `rows` (a chunk), for backends that write a chunk
/// gathered.
pub(crate) fn gather(rows: &mut dyn BulkRows) -> Result<Vec<Vec<Value>>> {
    let mut all = Vec::new();
    let mut row = Vec::new();
    while rows.next_row(&mut row)? {
        all.push(std::mem::take(&mut row));
    }
    Ok(all)
}

/// A chunk already gathered, given row by row.
pub(crate) struct GatheredRows<'a>(pub(crate) std::slice::Iter<'a, Vec<Value>>);

impl BulkRows for GatheredRows<'_> {
    fn next_row(&mut self, row: &mut Vec<Value>) -> Result<bool> {
        row.clear();
        match self.0.next() {
            Some(values) => {
                row.extend_from_slice(values);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Runs one statement of a bulk write with its rows; returns the rows
/// affected.
pub(crate) type StatementRunner<'a> = dyn FnMut(&str, &[Vec<Value>]) -> Result<u64> + 'a;

/// Writes one run of rows (see [`BulkPlan::write_in_runs`]) given the
/// index of its first row in the chunk; returns the rows affected.
pub(crate) type RunWriter<'a> = dyn FnMut(&[Vec<Value>], usize) -> Result<u64> + 'a;

/// One bulk operation's target, its columns quoted and checked.
#[derive(Clone, Debug)]
pub(crate) struct BulkPlan {
    pub(crate) kind: BulkKind,
    pub(crate) dialect: Dialect,
    /// The table, quoted (`"schema"."table"`).
    pub(crate) table: String,
    /// The columns each row carries, in order, quoted.
    pub(crate) columns: Vec<String>,
    /// Which of `columns` are the key (upsert, update, delete).
    pub(crate) keys: Vec<usize>,
}

/// Checks one name given for a table or a column: never spliced as text,
/// always quoted, and refused when it holds what no sane name holds (a
/// quote character, `;`, a control character), so that an injection
/// attempt is an error, not a strange name.
pub(crate) fn check_name(name: &str, what: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::parameter(format!(
            "the {what} name {} {why}; give the plain name of an existing {what} (it is quoted for you)",
            shown(name)
        )))
    };
    if name.trim().is_empty() {
        return bad("is empty");
    }
    if name.len() > 128 {
        return bad("is longer than 128 bytes");
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || matches!(c, '"' | '`' | '[' | ']' | ';' | '\''))
    {
        return bad(&format!(
            "contains {c:?}, which no table or column name here may hold"
        ));
    }
    Ok(())
}

/// A name as shown in an error: at most 40 characters.
fn shown(name: &str) -> String {
    let cut: String = name.chars().take(40).collect();
    if cut.len() < name.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

impl BulkPlan {
    /// Checks and quotes the names of one bulk operation. `table` may be
    /// `schema.table`; `keys` must be among `columns` (for a delete the
    /// columns are the keys).
    pub(crate) fn new(
        kind: BulkKind,
        dialect: Dialect,
        table: &str,
        columns: &[&str],
        keys: &[&str],
    ) -> Result<BulkPlan> {
        for part in table.split('.') {
            check_name(part, "table")?;
        }
        if columns.is_empty() {
            return Err(Error::parameter(
                "a bulk operation needs at least one column; list the columns each row carries",
            ));
        }
        for (i, c) in columns.iter().enumerate() {
            check_name(c, "column")?;
            if columns[..i].contains(c) {
                return Err(Error::parameter(format!(
                    "the column {} is listed twice; list each column once",
                    shown(c)
                )));
            }
        }
        let needs_keys = !matches!(kind, BulkKind::Insert);
        if needs_keys && keys.is_empty() {
            return Err(Error::parameter(format!(
                "a bulk {} needs key columns to match rows by; give the primary key (or a unique key) columns",
                kind.name()
            )));
        }
        let mut key_index = Vec::with_capacity(keys.len());
        for k in keys {
            check_name(k, "column")?;
            match columns.iter().position(|c| c == k) {
                Some(i) if !key_index.contains(&i) => key_index.push(i),
                Some(_) => {
                    return Err(Error::parameter(format!(
                        "the key column {} is listed twice; list each key column once",
                        shown(k)
                    )))
                }
                None => {
                    return Err(Error::parameter(format!(
                        "the key column {} is not among the columns; list it in the columns too (each row carries its key)",
                        shown(k)
                    )))
                }
            }
        }
        if kind == BulkKind::Update && key_index.len() == columns.len() {
            return Err(Error::parameter(
                "a bulk update needs at least one column besides the keys to set",
            ));
        }
        Ok(BulkPlan {
            kind,
            dialect,
            table: quote_identifier(table, dialect),
            columns: columns
                .iter()
                .map(|c| quote_identifier_part(c, dialect))
                .collect(),
            keys: key_index,
        })
    }

    /// The condition matching rows of `a` and `b` (table aliases) on the
    /// keys: `a."k" = b."k" AND …`.
    pub(crate) fn key_match(&self, a: &str, b: &str) -> String {
        self.keys
            .iter()
            .map(|&k| format!("{a}.{c} = {b}.{c}", c = self.columns[k]))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The assignments setting the non-key columns of `a` from `b` (table
    /// aliases): `a."c" = b."c", …`.
    pub(crate) fn set_from(&self, a: &str, b: &str) -> String {
        self.non_keys()
            .map(|(_, c)| format!("{a}.{c} = {b}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The columns that are not keys.
    pub(crate) fn non_keys(&self) -> impl Iterator<Item = (usize, &str)> + '_ {
        self.columns
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.keys.contains(i))
            .map(|(i, c)| (i, c.as_str()))
    }

    /// The quoted key columns: `"k1", "k2"`.
    fn key_list(&self) -> String {
        self.keys
            .iter()
            .map(|&k| self.columns[k].as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The quoted column list: `"a", "b"`.
    pub(crate) fn column_list(&self) -> String {
        self.columns.join(", ")
    }

    fn placeholder(&self, n: usize, out: &mut String) {
        use std::fmt::Write;
        match self.dialect {
            Dialect::Postgres => {
                let _ = write!(out, "${n}");
            }
            Dialect::MsSql => {
                let _ = write!(out, "@P{n}");
            }
            Dialect::MySql | Dialect::Sqlite => out.push('?'),
        }
    }

    /// `(p1, p2, …)` for one row whose first parameter is number `first`.
    fn tuple(&self, first: usize, out: &mut String) {
        out.push('(');
        for i in 0..self.columns.len() {
            if i > 0 {
                out.push_str(", ");
            }
            self.placeholder(first + i, out);
        }
        out.push(')');
    }

    /// How many rows the next multi-row statement takes from `rows`, its
    /// values taking at most `max_bytes` (or one row, whatever its size).
    fn rows_per_statement(&self, rows: &[Vec<Value>], max_bytes: usize) -> usize {
        // SQLite's fastest path is one prepared statement run per row.
        if self.dialect == Dialect::Sqlite {
            return 1;
        }
        let cap = self.max_rows_per_statement();
        let mut bytes = 0;
        for (n, row) in rows.iter().take(cap).enumerate() {
            bytes += row.iter().map(wire_size).sum::<usize>();
            if bytes > max_bytes {
                return n.max(1);
            }
        }
        cap.min(rows.len()).max(1)
    }

    /// The most rows one multi-row statement takes: [`ROWS_PER_STATEMENT`],
    /// or fewer when the dialect's parameter limit says so.
    pub(crate) fn max_rows_per_statement(&self) -> usize {
        let by_params = (max_params(self.dialect) / self.columns.len()).max(1);
        by_params.min(ROWS_PER_STATEMENT)
    }

    /// The statement that writes `n` rows at once (insert, upsert, and
    /// update and delete on MySQL), or one row (update and delete
    /// elsewhere, and upsert on SQL Server).
    pub(crate) fn statement(&self, n: usize) -> String {
        self.statement_with(n, &[])
    }

    /// [`statement`](Self::statement), with each column's parameters cast
    /// as `casts` says (see [`casts`](Self::casts)).
    fn statement_with(&self, n: usize, casts: &[Cast]) -> String {
        let table = &self.table;
        let cols = self.column_list();
        let mut sql = String::with_capacity(64 + n * self.columns.len() * 5);
        match (self.kind, self.dialect) {
            (BulkKind::Upsert, Dialect::MsSql) => {
                let on = self.key_match("d", "s");
                let set = self.set_from("d", "s");
                let source = self
                    .columns
                    .iter()
                    .map(|c| format!("s.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                sql.push_str(&format!(
                    "MERGE INTO {table} WITH (HOLDLOCK) AS d USING (VALUES "
                ));
                self.tuple(1, &mut sql);
                sql.push_str(&format!(") AS s ({cols}) ON {on} "));
                if !set.is_empty() {
                    sql.push_str(&format!("WHEN MATCHED THEN UPDATE SET {set} "));
                }
                sql.push_str(&format!(
                    "WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({source});"
                ));
            }
            (BulkKind::Insert | BulkKind::Upsert, _) => {
                sql.push_str(&format!("INSERT INTO {table} ({cols}) VALUES "));
                for r in 0..n {
                    if r > 0 {
                        sql.push_str(", ");
                    }
                    self.tuple(1 + r * self.columns.len(), &mut sql);
                }
                if self.kind == BulkKind::Upsert {
                    sql.push_str(&self.on_conflict());
                }
            }
            (BulkKind::Update, Dialect::MySql) => {
                // The rows as a derived table joined on the keys. Keys are
                // distinct within a statement (see `runs_of_distinct_keys`),
                // so each row of the table is matched once at most; a key
                // that matches nothing updates nothing (never an insert).
                // `UPDATE … JOIN` has no `FROM` of its own: any MySQL or
                // MariaDB version runs it.
                sql.push_str(&format!("UPDATE {table} AS d JOIN ("));
                for r in 0..n {
                    sql.push_str(if r == 0 {
                        "SELECT "
                    } else {
                        " UNION ALL SELECT "
                    });
                    for (i, c) in self.columns.iter().enumerate() {
                        if i > 0 {
                            sql.push_str(", ");
                        }
                        sql.push_str(match casts.get(i) {
                            Some(Cast::Binary) => "CAST(? AS BINARY)",
                            Some(Cast::Text) => "CAST(? AS CHAR)",
                            Some(Cast::None) | None => "?",
                        });
                        if r == 0 {
                            sql.push_str(" AS ");
                            sql.push_str(c);
                        }
                    }
                }
                sql.push_str(&format!(
                    ") AS s ON {} SET {}",
                    self.key_match("d", "s"),
                    self.set_from("d", "s")
                ));
            }
            (BulkKind::Update, _) => {
                let mut n = 0;
                sql.push_str(&format!("UPDATE {table} SET "));
                for (k, (_, c)) in self.non_keys().enumerate() {
                    if k > 0 {
                        sql.push_str(", ");
                    }
                    n += 1;
                    sql.push_str(c);
                    sql.push_str(" = ");
                    self.placeholder(n, &mut sql);
                }
                sql.push_str(" WHERE ");
                for (k, &i) in self.keys.iter().enumerate() {
                    if k > 0 {
                        sql.push_str(" AND ");
                    }
                    n += 1;
                    sql.push_str(&self.columns[i]);
                    sql.push_str(" = ");
                    self.placeholder(n, &mut sql);
                }
            }
            (BulkKind::Delete, Dialect::MySql) => {
                // `k IN (?, …)`, or `(k1, k2) IN ((?, ?), …)`: a NULL key
                // matches nothing, as with `=`.
                sql.push_str(&format!("DELETE FROM {table} WHERE "));
                let single = self.keys.len() == 1;
                if single {
                    sql.push_str(&self.columns[self.keys[0]]);
                } else {
                    sql.push('(');
                    sql.push_str(&self.key_list());
                    sql.push(')');
                }
                sql.push_str(" IN (");
                for r in 0..n {
                    if r > 0 {
                        sql.push_str(", ");
                    }
                    if single {
                        sql.push('?');
                    } else {
                        sql.push('(');
                        sql.push_str(&vec!["?"; self.keys.len()].join(", "));
                        sql.push(')');
                    }
                }
                sql.push(')');
            }
            (BulkKind::Delete, _) => {
                sql.push_str(&format!("DELETE FROM {table} WHERE "));
                for (k, &i) in self.keys.iter().enumerate() {
                    if k > 0 {
                        sql.push_str(" AND ");
                    }
                    sql.push_str(&self.columns[i]);
                    sql.push_str(" = ");
                    self.placeholder(k + 1, &mut sql);
                }
            }
        }
        sql
    }

    /// The upsert's `ON CONFLICT … DO UPDATE` (PostgreSQL, SQLite) or `ON
    /// DUPLICATE KEY UPDATE` (MySQL) clause.
    pub(crate) fn on_conflict(&self) -> String {
        let set: Vec<String> = match self.dialect {
            Dialect::MySql => self
                .non_keys()
                .map(|(_, c)| format!("{c} = VALUES({c})"))
                .collect(),
            _ => self
                .non_keys()
                .map(|(_, c)| format!("{c} = EXCLUDED.{c}"))
                .collect(),
        };
        match self.dialect {
            Dialect::MySql => {
                // Only keys: a no-op update keeps the existing row.
                let set = if set.is_empty() {
                    let k = &self.columns[self.keys[0]];
                    format!("{k} = {k}")
                } else {
                    set.join(", ")
                };
                format!(" ON DUPLICATE KEY UPDATE {set}")
            }
            _ => {
                let keys = self
                    .keys
                    .iter()
                    .map(|&k| self.columns[k].as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                if set.is_empty() {
                    format!(" ON CONFLICT ({keys}) DO NOTHING")
                } else {
                    format!(" ON CONFLICT ({keys}) DO UPDATE SET {}", set.join(", "))
                }
            }
        }
    }

    /// Which value of a row each parameter of a one-row
    /// [`statement`](Self::statement) takes, in parameter order.
    pub(crate) fn bind_order(&self) -> Vec<usize> {
        match self.kind {
            BulkKind::Insert | BulkKind::Upsert => (0..self.columns.len()).collect(),
            BulkKind::Update if self.dialect == Dialect::MySql => (0..self.columns.len()).collect(),
            BulkKind::Update => self
                .non_keys()
                .map(|(i, _)| i)
                .chain(self.keys.iter().copied())
                .collect(),
            BulkKind::Delete => self.keys.clone(),
        }
    }

    /// The values of one row in the order [`statement`](Self::statement)
    /// binds them.
    fn bind_row(&self, row: &[Value], out: &mut Vec<Value>) {
        match self.kind {
            BulkKind::Insert | BulkKind::Upsert => out.extend_from_slice(row),
            BulkKind::Update if self.dialect == Dialect::MySql => out.extend_from_slice(row),
            BulkKind::Update => {
                out.extend(self.non_keys().map(|(i, _)| row[i].clone()));
                out.extend(self.keys.iter().map(|&i| row[i].clone()));
            }
            BulkKind::Delete => out.extend(self.keys.iter().map(|&i| row[i].clone())),
        }
    }

    /// Writes `rows` with plain statements through `exec`: multi-row
    /// `INSERT`s (with the upsert clause for upserts), one `UPDATE` per
    /// row (MySQL: one per many rows, joined on the keys), one `DELETE`
    /// per row (MySQL: one per many rows, `IN (…)`). Returns the rows
    /// affected as the server counts them (MySQL counts an upserted row
    /// that changed as 2). A multi-row update needs its rows' keys
    /// distinct: see [`write_in_runs`](Self::write_in_runs).
    pub(crate) fn run_statements(
        &self,
        rows: &[Vec<Value>],
        exec: &mut dyn FnMut(&str, &[Value]) -> Result<u64>,
    ) -> Result<u64> {
        self.run_statements_within(rows, BYTES_PER_STATEMENT, exec)
    }

    /// [`run_statements`](Self::run_statements) with the values of each
    /// multi-row statement kept under `max_bytes` (as [`wire_size`]
    /// counts them); a row larger than that alone goes in a statement of
    /// its own.
    pub(crate) fn run_statements_within(
        &self,
        rows: &[Vec<Value>],
        max_bytes: usize,
        exec: &mut dyn FnMut(&str, &[Value]) -> Result<u64>,
    ) -> Result<u64> {
        let mut values = Vec::new();
        self.for_each_statement(rows, max_bytes, &mut |sql, now| {
            values.clear();
            for row in now {
                self.bind_row(row, &mut values);
            }
            exec(sql, &values)
        })
    }

    /// Whether writing with this plan may leave the session changed, so
    /// that the pool resets it before the connection's next borrower:
    /// PostgreSQL and SQL Server load upserts, updates and deletes through
    /// a temporary table. MySQL and SQLite run plain statements only.
    pub(crate) fn changes_session(&self) -> bool {
        !matches!(self.dialect, Dialect::MySql | Dialect::Sqlite)
    }

    /// Whether a statement binds its rows' values as they are, row after
    /// row (multi-row inserts and upserts), so that a backend may bind
    /// them straight from the rows.
    pub(crate) fn binds_rows_as_given(&self) -> bool {
        matches!(self.kind, BulkKind::Insert)
            || (self.kind == BulkKind::Upsert && self.dialect != Dialect::MsSql)
    }

    /// Writes `rows` with `write` run by run, as
    /// [`runs_of_distinct_keys`](Self::runs_of_distinct_keys) cuts them;
    /// `write` gets each run and the index of its first row in `rows`.
    /// Returns the sum of what `write` returned.
    pub(crate) fn write_in_runs(
        &self,
        rows: &[Vec<Value>],
        write: &mut RunWriter<'_>,
    ) -> Result<u64> {
        let mut affected = 0;
        let mut first = 0;
        for run in self.runs_of_distinct_keys(rows) {
            affected += write(run, first)?;
            first += run.len();
        }
        Ok(affected)
    }

    /// Cuts `rows` where a key repeats (upserts and updates), so that no
    /// run holds a key twice: one statement, or one temporary table, per
    /// run then writes the rows as they would be written one by one (the
    /// later row wins). PostgreSQL's `ON CONFLICT` refuses to touch a row
    /// twice in one statement, SQL Server's `MERGE` too, and an `UPDATE …
    /// FROM` picks either row. Keys are compared by hash: a collision only
    /// ends a run early. Without a repeated key, one run: `rows`.
    pub(crate) fn runs_of_distinct_keys<'r>(
        &self,
        rows: &'r [Vec<Value>],
    ) -> Vec<&'r [Vec<Value>]> {
        use std::hash::{BuildHasher, Hasher};
        if !matches!(self.kind, BulkKind::Upsert | BulkKind::Update) || rows.len() < 2 {
            return vec![rows];
        }
        let state = std::collections::hash_map::RandomState::new();
        let mut seen = std::collections::HashSet::with_capacity(rows.len());
        let mut runs = Vec::new();
        let mut start = 0;
        for (i, row) in rows.iter().enumerate() {
            let mut h = state.build_hasher();
            for &k in &self.keys {
                hash_value(&row[k], &mut h);
            }
            let key = h.finish();
            if !seen.insert(key) {
                runs.push(&rows[start..i]);
                start = i;
                seen.clear();
                seen.insert(key);
            }
        }
        runs.push(&rows[start..]);
        runs
    }

    /// How each column's parameters are cast in the derived table of a
    /// MySQL multi-row update of `rows` (empty for every other statement,
    /// which assigns its parameters to the columns directly). Measured on
    /// MariaDB 10.11: a bare string parameter in a derived table is read as
    /// text in the connection's character set, so bytes that are not valid
    /// text there are refused (1366), and one longer than 65,535 bytes is
    /// silently cut to its length modulo 65,536. A cast on every
    /// parameter of the column avoids both: bytes as a binary string, text
    /// (and decimals, UUIDs and JSON, sent as text) as text. Keys are cast
    /// only when they carry bytes: a text key cast to the connection's
    /// collation no longer compares with a column of another collation
    /// (1267), while a bare one does.
    fn casts(&self, rows: &[Vec<Value>]) -> Vec<Cast> {
        if !(self.kind == BulkKind::Update && self.dialect == Dialect::MySql) {
            return Vec::new();
        }
        (0..self.columns.len())
            .map(|i| {
                let mut cast = Cast::None;
                for row in rows {
                    match row.get(i) {
                        Some(Value::Bytes(_)) => return Cast::Binary,
                        Some(
                            Value::Text(_) | Value::Json(_) | Value::Decimal(_) | Value::Uuid(_),
                        ) if !self.keys.contains(&i) => cast = Cast::Text,
                        _ => {}
                    }
                }
                cast
            })
            .collect()
    }

    /// The first text key of `rows` too long for a MySQL multi-row update
    /// to match (see [`casts`](Self::casts)): its row's index and length.
    pub(crate) fn key_too_long(&self, rows: &[Vec<Value>]) -> Option<(usize, usize)> {
        const MAX: usize = u16::MAX as usize;
        if !(self.kind == BulkKind::Update && self.dialect == Dialect::MySql) {
            return None;
        }
        rows.iter().enumerate().find_map(|(r, row)| {
            self.keys.iter().find_map(|&k| match row.get(k) {
                Some(Value::Text(s)) if s.len() > MAX => Some((r, s.len())),
                _ => None,
            })
        })
    }

    /// Whether one statement writes many rows (see
    /// [`statement`](Self::statement)).
    fn many_rows_per_statement(&self) -> bool {
        self.binds_rows_as_given()
            || (matches!(self.kind, BulkKind::Delete | BulkKind::Update)
                && self.dialect == Dialect::MySql)
    }

    /// Cuts `rows` into the statements that write them, as
    /// [`run_statements_within`](Self::run_statements_within) does, and
    /// runs `exec` with each statement and its rows; returns the sum of
    /// what `exec` returned.
    pub(crate) fn for_each_statement(
        &self,
        rows: &[Vec<Value>],
        max_bytes: usize,
        exec: &mut StatementRunner<'_>,
    ) -> Result<u64> {
        let multi = self.many_rows_per_statement();
        let mut affected = 0;
        let mut rest = rows;
        let mut cached: Option<(usize, Vec<Cast>, String)> = None;
        while !rest.is_empty() {
            let n = if multi {
                self.rows_per_statement(rest, max_bytes)
            } else {
                1
            };
            let (now, later) = rest.split_at(n.min(rest.len()));
            let casts = self.casts(now);
            let sql = match &cached {
                Some((k, c, sql)) if *k == now.len() && *c == casts => sql,
                _ => {
                    let sql = self.statement_with(now.len(), &casts);
                    &cached.insert((now.len(), casts, sql)).2
                }
            };
            affected += exec(sql, now)?;
            rest = later;
        }
        Ok(affected)
    }
}

/// How a multi-row update casts one column's parameters (see
/// [`BulkPlan::casts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cast {
    None,
    Text,
    Binary,
}

/// Quotes one name as a single identifier (a column: a dot is part of it).
fn quote_identifier_part(name: &str, dialect: Dialect) -> String {
    let (open, close) = match dialect {
        Dialect::MySql => ('`', '`'),
        Dialect::MsSql => ('[', ']'),
        Dialect::Postgres | Dialect::Sqlite => ('"', '"'),
    };
    let mut out = String::with_capacity(name.len() + 2);
    out.push(open);
    for c in name.chars() {
        if c == close {
            out.push(close);
        }
        out.push(c);
    }
    out.push(close);
    out
}

/// At most how many bytes a value takes on the wire: its type (2 bytes in
/// MySQL's binary protocol), a length prefix of up to 9 bytes and the
/// value; fixed-size values take 12 at most, decimals and UUIDs go as text.
pub(crate) fn wire_size(v: &Value) -> usize {
    2 + match v {
        Value::Text(s) => s.len() + 9,
        Value::Bytes(b) => b.len() + 9,
        Value::Json(j) => j.to_string().len() + 9,
        Value::Decimal(_) => 40 + 9,
        Value::Uuid(_) => 36 + 9,
        _ => 13,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_cut_where_a_key_repeats() {
        let plan = BulkPlan::new(
            BulkKind::Upsert,
            Dialect::Postgres,
            "t",
            &["id", "v"],
            &["id"],
        )
        .unwrap();
        let row = |k: i64, v: &str| vec![Value::I64(k), Value::Text(v.into())];
        let rows = vec![
            row(1, "a"),
            row(2, "b"),
            row(1, "c"),
            row(3, "d"),
            row(2, "e"),
            row(2, "f"),
        ];
        let runs = plan.runs_of_distinct_keys(&rows);
        let lens: Vec<usize> = runs.iter().map(|r| r.len()).collect();
        assert_eq!(lens, [2, 3, 1]);
        assert_eq!(runs[1][0], row(1, "c"));
        // No repeat: one run, the rows themselves.
        let distinct = vec![row(1, "a"), row(2, "a")];
        assert_eq!(plan.runs_of_distinct_keys(&distinct).len(), 1);
        // Inserts and deletes are never cut.
        let insert =
            BulkPlan::new(BulkKind::Insert, Dialect::Postgres, "t", &["id", "v"], &[]).unwrap();
        assert_eq!(insert.runs_of_distinct_keys(&rows).len(), 1);
        // A key of two columns repeats only when both do.
        let two = BulkPlan::new(
            BulkKind::Update,
            Dialect::MsSql,
            "t",
            &["id", "v"],
            &["id", "v"],
        );
        assert!(two.is_err(), "an update needs a column besides its keys");
        let two = BulkPlan::new(
            BulkKind::Upsert,
            Dialect::MsSql,
            "t",
            &["id", "v"],
            &["id", "v"],
        )
        .unwrap();
        assert_eq!(two.runs_of_distinct_keys(&rows).len(), 1);
        let pairs = vec![row(1, "a"), row(1, "b"), row(1, "a")];
        assert_eq!(two.runs_of_distinct_keys(&pairs).len(), 2);
    }

    #[test]
    fn names_are_checked_and_quoted() -> Result<()> {
        let p = BulkPlan::new(
            BulkKind::Upsert,
            Dialect::Postgres,
            "app.Order Items",
            &["id", "näme", "select"],
            &["id"],
        )?;
        assert_eq!(p.table, r#""app"."Order Items""#);
        assert_eq!(p.column_list(), r#""id", "näme", "select""#);
        assert!(p
            .statement(2)
            .ends_with(r#"ON CONFLICT ("id") DO UPDATE SET "näme" = EXCLUDED."näme", "select" = EXCLUDED."select""#));
        for bad in ["t\"; DROP TABLE x; --", "", "a;b", "x`y", "new\nline"] {
            let e =
                BulkPlan::new(BulkKind::Insert, Dialect::MySql, bad, &["id"], &[]).expect_err(bad);
            assert_eq!(e.kind(), crate::ErrorKind::Parameter, "{bad}");
        }
        assert!(BulkPlan::new(BulkKind::Update, Dialect::Sqlite, "t", &["id"], &["id"]).is_err());
        assert!(BulkPlan::new(BulkKind::Delete, Dialect::Sqlite, "t", &["id"], &["nope"]).is_err());
        Ok(())
    }

    /// Statements take as many rows as fit the byte budget (one at least),
    /// never more than the row cap, and every row exactly once.
    #[test]
    fn statements_fit_the_byte_budget() -> Result<()> {
        let p = BulkPlan::new(BulkKind::Insert, Dialect::MySql, "t", &["id", "v"], &[])?;
        let row = |n: usize| vec![Value::I64(n as i64), Value::Text("x".repeat(1000))];
        let rows: Vec<Vec<Value>> = (0..2500).map(row).collect();
        let per_row: usize = rows[0].iter().map(wire_size).sum();
        let budget = per_row * 7 + per_row / 2;
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        p.run_statements_within(&rows, budget, &mut |sql, values| {
            let n = values.len() / 2;
            assert_eq!(sql.matches('(').count(), n + 1, "{sql}");
            sizes.push(n);
            seen.extend(values.iter().step_by(2).cloned());
            Ok(n as u64)
        })?;
        let mut want_sizes = vec![7; 2500 / 7];
        want_sizes.push(2500 % 7);
        assert_eq!(sizes, want_sizes);
        let want: Vec<Value> = (0..2500).map(|n| Value::I64(n as i64)).collect();
        assert_eq!(seen, want);

        // A row larger than the budget goes alone; the cap holds for small rows.
        let mut sizes = Vec::new();
        p.run_statements_within(&rows[..3], 10, &mut |_, v| {
            sizes.push(v.len() / 2);
            Ok(1)
        })?;
        assert_eq!(sizes, [1, 1, 1]);
        let small: Vec<Vec<Value>> = (0..2500)
            .map(|n| vec![Value::I64(n), Value::Null])
            .collect();
        let mut sizes = Vec::new();
        p.run_statements_within(&small, usize::MAX, &mut |_, v| {
            sizes.push(v.len() / 2);
            Ok(1)
        })?;
        assert_eq!(sizes, [1000, 1000, 500]);
        Ok(())
    }

    #[test]
    fn statements_per_dialect() -> Result<()> {
        let p = BulkPlan::new(BulkKind::Update, Dialect::MsSql, "t", &["id", "v"], &["id"])?;
        assert_eq!(p.statement(1), "UPDATE [t] SET [v] = @P1 WHERE [id] = @P2");
        let p = BulkPlan::new(BulkKind::Insert, Dialect::MySql, "t", &["a", "b"], &[])?;
        assert_eq!(
            p.statement(2),
            "INSERT INTO `t` (`a`, `b`) VALUES (?, ?), (?, ?)"
        );
        let p = BulkPlan::new(BulkKind::Upsert, Dialect::MySql, "t", &["a", "b"], &["a"])?;
        assert!(p
            .statement(1)
            .ends_with("ON DUPLICATE KEY UPDATE `b` = VALUES(`b`)"));
        let p = BulkPlan::new(BulkKind::Delete, Dialect::MySql, "t", &["a"], &["a"])?;
        assert_eq!(p.statement(3), "DELETE FROM `t` WHERE `a` IN (?, ?, ?)");
        let p = BulkPlan::new(
            BulkKind::Update,
            Dialect::MySql,
            "t",
            &["v", "k", "b"],
            &["k"],
        )?;
        assert_eq!(
            p.statement(2),
            "UPDATE `t` AS d JOIN (SELECT ? AS `v`, ? AS `k`, ? AS `b` UNION ALL SELECT ?, ?, ?) \
             AS s ON d.`k` = s.`k` SET d.`v` = s.`v`, d.`b` = s.`b`"
        );
        // Bytes are cast as binary strings and text as text, except a text
        // key, on every row; the values bind in column order.
        let rows = vec![
            vec![
                Value::Text("a".into()),
                Value::Text("k".into()),
                Value::Null,
            ],
            vec![
                Value::Null,
                Value::Text("l".into()),
                Value::Bytes(vec![255]),
            ],
        ];
        let mut seen = Vec::new();
        p.run_statements(&rows, &mut |sql, values| {
            assert!(
                sql.contains(
                    "SELECT CAST(? AS CHAR) AS `v`, ? AS `k`, CAST(? AS BINARY) AS `b` \
                     UNION ALL SELECT CAST(? AS CHAR), ?, CAST(? AS BINARY)) AS s"
                ),
                "{sql}"
            );
            seen.extend_from_slice(values);
            Ok(2)
        })?;
        assert_eq!(seen, rows.concat());
        assert_eq!(p.key_too_long(&rows), None);
        let long = vec![vec![
            Value::Null,
            Value::Text("x".repeat(70_000)),
            Value::Null,
        ]];
        assert_eq!(p.key_too_long(&long), Some((0, 70_000)));
        let p = BulkPlan::new(
            BulkKind::Delete,
            Dialect::MySql,
            "t",
            &["a", "b"],
            &["b", "a"],
        )?;
        assert_eq!(
            p.statement(2),
            "DELETE FROM `t` WHERE (`b`, `a`) IN ((?, ?), (?, ?))"
        );
        let mut bound = Vec::new();
        p.run_statements(
            &[
                vec![Value::I64(1), Value::I64(2)],
                vec![Value::I64(3), Value::I64(4)],
            ],
            &mut |sql, values| {
                assert!(sql.ends_with("((?, ?), (?, ?))"), "{sql}");
                bound.extend_from_slice(values);
                Ok(2)
            },
        )?;
        let want: Vec<Value> = [2, 1, 4, 3].into_iter().map(Value::I64).collect();
        assert_eq!(bound, want);
        let p = BulkPlan::new(
            BulkKind::Delete,
            Dialect::Postgres,
            "t",
            &["a", "b"],
            &["a", "b"],
        )?;
        assert_eq!(
            p.statement(1),
            r#"DELETE FROM "t" WHERE "a" = $1 AND "b" = $2"#
        );
        Ok(())
    }
}
