//! The tables of one entity kind: names checked, column types chosen from
//! JSON values, and the DDL per dialect. Tables are made on first use and
//! widened by new columns; nothing is ever dropped, renamed or narrowed.
//!
//! Schema work is safe when several processes do it at once: every DDL
//! statement is idempotent in effect (`CREATE TABLE IF NOT EXISTS`, or an
//! `ADD COLUMN` whose failure is forgiven when the column is then found in
//! the catalog), and the metadata row of a new field is written before its
//! column, so its primary key picks one type for everybody.

use serde_json::Value as J;

use super::Exec;
use crate::error::{Error, ErrorKind, Result};
use crate::sql::{quote_identifier, Dialect};
use crate::value::Value;

/// The longest entity name: its tables add `__history` and `__meta`, and
/// PostgreSQL cuts names at 63 bytes.
pub(crate) const MAX_ENTITY_NAME: usize = 48;
/// The longest field name (PostgreSQL's limit; MySQL's is 64).
pub(crate) const MAX_FIELD_NAME: usize = 63;

/// The columns every entity table has, kept by the library.
pub(crate) const SYSTEM_FIELDS: [&str; 7] = [
    "id",
    "created_at",
    "updated_at",
    "created_by",
    "updated_by",
    "version",
    "deleted_at",
];

/// The longest id, in characters.
pub(crate) const MAX_ID: usize = 255;

fn is_plain(name: &str) -> bool {
    let b = name.as_bytes();
    matches!(b.first(), Some(c) if c.is_ascii_alphabetic() || *c == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Checks an entity name: it becomes three table names.
pub(crate) fn check_entity_name(name: &str) -> Result<()> {
    if is_plain(name) && name.len() <= MAX_ENTITY_NAME && !name.contains("__") {
        return Ok(());
    }
    Err(Error::parameter(format!(
        "the entity name {name:?} cannot be a table name: use 1 to {MAX_ENTITY_NAME} ASCII letters, \
         digits and `_`, starting with a letter or `_`, without `__` (it separates the entity's \
         history and metadata tables)"
    )))
}

/// Checks a field name: it becomes a column name.
pub(crate) fn check_field_name(entity: &str, field: &str) -> Result<()> {
    if is_plain(field) && field.len() <= MAX_FIELD_NAME {
        return Ok(());
    }
    Err(Error::parameter(format!(
        "the field {field:?} of entity `{entity}` cannot be a column name: use 1 to {MAX_FIELD_NAME} \
         ASCII letters, digits and `_`, starting with a letter or `_` (rename the field, or keep such \
         data inside a nested object, which is stored as JSON)"
    )))
}

/// The type of a column, chosen from the first non-null value a field had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldType {
    Boolean,
    Integer,
    Float,
    Text,
    Json,
}

impl FieldType {
    /// The name kept in the metadata table.
    pub(crate) fn name(self) -> &'static str {
        match self {
            FieldType::Boolean => "boolean",
            FieldType::Integer => "integer",
            FieldType::Float => "float",
            FieldType::Text => "text",
            FieldType::Json => "json",
        }
    }

    fn parse(s: &str) -> Option<FieldType> {
        [
            FieldType::Boolean,
            FieldType::Integer,
            FieldType::Float,
            FieldType::Text,
            FieldType::Json,
        ]
        .into_iter()
        .find(|t| t.name() == s.trim())
    }

    /// The type a new column gets for `value`; `None` for null, which says
    /// nothing (such a column is made `text`).
    pub(crate) fn of(value: &J) -> Option<FieldType> {
        Some(match value {
            J::Null => return None,
            J::Bool(_) => FieldType::Boolean,
            J::Number(n) if n.is_i64() => FieldType::Integer,
            J::Number(_) => FieldType::Float,
            J::String(_) => FieldType::Text,
            J::Array(_) | J::Object(_) => FieldType::Json,
        })
    }

    /// The column type in `dialect`.
    fn column(self, dialect: Dialect) -> &'static str {
        use Dialect::{MsSql, MySql, Postgres, Sqlite};
        match (self, dialect) {
            (FieldType::Boolean, MsSql) => "BIT",
            (FieldType::Boolean, _) => "BOOLEAN",
            (FieldType::Integer, _) => "BIGINT",
            (FieldType::Float, Postgres) => "DOUBLE PRECISION",
            (FieldType::Float, MySql) => "DOUBLE",
            (FieldType::Float, Sqlite) => "REAL",
            (FieldType::Float, MsSql) => "FLOAT",
            (FieldType::Text, Postgres | Sqlite) => "TEXT",
            (FieldType::Text, MySql) => "LONGTEXT",
            (FieldType::Text, MsSql) => "NVARCHAR(MAX)",
            (FieldType::Json, Postgres) => "JSONB",
            (FieldType::Json, MySql) => "LONGTEXT",
            (FieldType::Json, Sqlite) => "JSON",
            (FieldType::Json, MsSql) => "NVARCHAR(MAX)",
        }
    }

    /// `value` as a statement parameter for a column of this type.
    ///
    /// The rule when a value does not fit its column: an integer goes into
    /// a float column (as a float), anything goes into a JSON column, and
    /// null goes anywhere; every other mismatch is a `Conversion` error,
    /// never a silent change of the value or of the column.
    pub(crate) fn to_param(self, entity: &str, field: &str, value: &J) -> Result<Value> {
        Ok(match (self, value) {
            (_, J::Null) => Value::Null,
            (FieldType::Json, v) => Value::Json(v.clone()),
            (FieldType::Boolean, J::Bool(b)) => Value::Bool(*b),
            (FieldType::Integer, J::Number(n)) if n.is_i64() => {
                Value::I64(n.as_i64().unwrap_or_default())
            }
            (FieldType::Float, J::Number(n)) => match n.as_f64() {
                Some(f) => Value::F64(f),
                None => return Err(mismatch(self, entity, field, value)),
            },
            (FieldType::Text, J::String(s)) => Value::Text(s.clone()),
            _ => return Err(mismatch(self, entity, field, value)),
        })
    }

    /// A column value read back as the JSON it was saved from.
    pub(crate) fn to_json(self, value: Value) -> J {
        match (self, value) {
            (_, Value::Null) => J::Null,
            (FieldType::Boolean, Value::I64(i)) => J::Bool(i != 0),
            (FieldType::Float, Value::I64(i)) => J::from(i as f64),
            (FieldType::Json, Value::Text(s)) => serde_json::from_str(&s).unwrap_or(J::String(s)),
            (FieldType::Json, Value::Bytes(b)) => serde_json::from_slice(&b)
                .unwrap_or_else(|_| J::String(String::from_utf8_lossy(&b).into_owned())),
            (FieldType::Text, Value::Bytes(b)) => {
                J::String(String::from_utf8_lossy(&b).into_owned())
            }
            (FieldType::Float, Value::Decimal(d)) => {
                d.to_string().parse::<f64>().map_or(J::Null, J::from)
            }
            (_, v) => v.to_json(),
        }
    }
}

fn json_kind(value: &J) -> &'static str {
    match value {
        J::Null => "null",
        J::Bool(_) => "boolean",
        J::Number(n) if n.is_i64() => "integer",
        J::Number(n) if n.is_u64() => "integer above 2^63",
        J::Number(_) => "float",
        J::String(_) => "text",
        J::Array(_) => "array",
        J::Object(_) => "object",
    }
}

#[cold]
fn mismatch(ty: FieldType, entity: &str, field: &str, value: &J) -> Error {
    Error::conversion(format!(
        "field `{field}` of entity `{entity}` is a {} column, so a {} value cannot be stored in it; \
         columns are never retyped: store a {} value, or save this data under a new field name",
        ty.name(),
        json_kind(value),
        ty.name()
    ))
}

/// What is known of one entity kind's tables.
#[derive(Clone, Debug, Default)]
pub(crate) struct Schema {
    /// The user fields with a column, as the metadata records them.
    pub(crate) fields: Vec<(String, FieldType)>,
}

impl Schema {
    /// The type of a field's column, system columns included.
    pub(crate) fn type_of(&self, field: &str) -> Option<FieldType> {
        match field {
            "version" => Some(FieldType::Integer),
            f if SYSTEM_FIELDS.contains(&f) => Some(FieldType::Text),
            f => self.fields.iter().find(|(n, _)| n == f).map(|&(_, t)| t),
        }
    }

    /// An existing column whose name differs from `field` only in case
    /// (one column on MySQL and SQLite, which compare names so).
    fn clashes_with(&self, field: &str) -> Option<&str> {
        SYSTEM_FIELDS
            .iter()
            .copied()
            .chain(self.fields.iter().map(|(n, _)| n.as_str()))
            .find(|n| *n != field && n.eq_ignore_ascii_case(field))
    }

    /// A `field is not a field of` error, listing the fields there are.
    pub(crate) fn unknown(&self, entity: &str, field: &str) -> Error {
        let mut names: Vec<&str> = SYSTEM_FIELDS.to_vec();
        names.extend(self.fields.iter().map(|(n, _)| n.as_str()));
        Error::parameter(format!(
            "entity `{entity}` has no field `{field}`; its fields are {}",
            names.join(", ")
        ))
    }
}

/// The quoted names of one entity kind's three tables.
#[derive(Clone, Debug)]
pub(crate) struct Tables {
    pub(crate) main: String,
    pub(crate) history: String,
    pub(crate) meta: String,
    /// The unquoted names, for catalog look-ups.
    main_raw: String,
    meta_raw: String,
    history_raw: String,
}

impl Tables {
    pub(crate) fn of(entity: &str, dialect: Dialect) -> Tables {
        let history_raw = format!("{entity}__history");
        let meta_raw = format!("{entity}__meta");
        Tables {
            main: quote_identifier(entity, dialect),
            history: quote_identifier(&history_raw, dialect),
            meta: quote_identifier(&meta_raw, dialect),
            main_raw: entity.to_owned(),
            meta_raw,
            history_raw,
        }
    }
}

/// The column names of `table` from the catalog; empty when it does not exist.
fn columns(ex: &mut dyn Exec, table: &str) -> Result<Vec<String>> {
    let sql = match ex.dialect() {
        Dialect::Postgres => {
            "SELECT CAST(column_name AS TEXT) FROM information_schema.columns \
             WHERE table_schema = current_schema() AND CAST(table_name AS TEXT) = ?"
        }
        Dialect::MySql => {
            "SELECT column_name FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ?"
        }
        Dialect::Sqlite => "SELECT name FROM pragma_table_info(?)",
        Dialect::MsSql => "SELECT name FROM sys.columns WHERE object_id = OBJECT_ID(?)",
    };
    ex.query(sql, vec![Value::Text(table.to_owned())])?
        .iter()
        .map(|r| r.get::<String>(0))
        .collect()
}

/// The recorded fields of an entity kind whose tables exist.
fn read_meta(ex: &mut dyn Exec, tables: &Tables) -> Result<Vec<(String, FieldType)>> {
    let sql = format!(
        "SELECT field_name, field_type FROM {} ORDER BY field_name",
        tables.meta
    );
    let mut out = Vec::new();
    for row in ex.query(&sql, Vec::new())? {
        let name: String = row.get(0)?;
        let ty: String = row.get(1)?;
        let ty = FieldType::parse(&ty).ok_or_else(|| {
            Error::new(
                ErrorKind::Other,
                format!(
                    "the metadata table {} gives field `{name}` the unknown type `{ty}`; \
                     it should be one of boolean, integer, float, text, json",
                    tables.meta_raw
                ),
            )
        })?;
        out.push((name, ty));
    }
    Ok(out)
}

/// What the tables of an entity kind hold now: `None` when they do not
/// exist (yet). The main table is made last, so when it exists the other two do.
pub(crate) fn load(ex: &mut dyn Exec, tables: &Tables) -> Result<Option<(Schema, Vec<String>)>> {
    let cols = columns(ex, &tables.main_raw)?;
    if cols.is_empty() {
        return Ok(None);
    }
    let fields = read_meta(ex, tables)?
        .into_iter()
        .filter(|(n, _)| cols.iter().any(|c| c == n))
        .collect();
    Ok(Some((Schema { fields }, cols)))
}

/// The DDL of the three tables, metadata and history first, the main table last.
fn create_statements(dialect: Dialect, tables: &Tables) -> [(String, String); 3] {
    use Dialect::{MsSql, MySql, Postgres, Sqlite};
    let (key, short, text) = match dialect {
        Postgres | Sqlite => ("VARCHAR(255)", "VARCHAR(255)", "TEXT"),
        MySql => ("VARCHAR(255)", "VARCHAR(255)", "LONGTEXT"),
        MsSql => ("NVARCHAR(255)", "NVARCHAR(255)", "NVARCHAR(MAX)"),
    };
    let suffix = match dialect {
        // Unicode whatever the server's default character set, and
        // case-sensitive comparisons, as on PostgreSQL.
        MySql => " DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        _ => "",
    };
    let create = |raw: &str, quoted: &str, body: String| {
        let sql = match dialect {
            // No IF NOT EXISTS: a table made meanwhile by another writer
            // makes this fail, and `idempotent` then finds it and goes on.
            MsSql => format!("CREATE TABLE {quoted} ({body})"),
            _ => format!("CREATE TABLE IF NOT EXISTS {quoted} ({body}){suffix}"),
        };
        (raw.to_owned(), sql)
    };
    let q = |c: &str| quote_identifier(c, dialect);
    [
        create(
            &tables.meta_raw,
            &tables.meta,
            format!(
                "{} {key} NOT NULL PRIMARY KEY, {} VARCHAR(16) NOT NULL",
                q("field_name"),
                q("field_type")
            ),
        ),
        create(
            &tables.history_raw,
            &tables.history,
            format!(
                "{id} {key} NOT NULL, {version} BIGINT NOT NULL, {op} VARCHAR(16) NOT NULL, \
                 {at} VARCHAR(40) NOT NULL, {by} {short}, {comment} {text}, {entity} {text} NOT NULL, \
                 PRIMARY KEY ({id}, {version})",
                id = q("id"),
                version = q("version"),
                op = q("operation"),
                at = q("changed_at"),
                by = q("changed_by"),
                comment = q("comment"),
                entity = q("entity"),
            ),
        ),
        create(
            &tables.main_raw,
            &tables.main,
            format!(
                "{} {key} NOT NULL PRIMARY KEY, {} VARCHAR(40) NOT NULL, {} VARCHAR(40) NOT NULL, \
                 {} {short}, {} {short}, {} BIGINT NOT NULL, {} VARCHAR(40)",
                q("id"),
                q("created_at"),
                q("updated_at"),
                q("created_by"),
                q("updated_by"),
                q("version"),
                q("deleted_at"),
            ),
        ),
    ]
}

/// Runs one schema statement, forgiving its failure when `done` then finds
/// its effect made (by another process racing this one). With `guarded`
/// (inside a caller's transaction) it runs under a savepoint, so a failure
/// does not end the transaction.
fn idempotent(
    ex: &mut dyn Exec,
    guarded: bool,
    sql: &str,
    params: Vec<Value>,
    done: &mut dyn FnMut(&mut dyn Exec) -> Result<bool>,
) -> Result<()> {
    let (save, undo, release) = match ex.dialect() {
        Dialect::MsSql => (
            "SAVE TRANSACTION dbm_entity_schema",
            "ROLLBACK TRANSACTION dbm_entity_schema",
            None,
        ),
        _ => (
            "SAVEPOINT dbm_entity_schema",
            "ROLLBACK TO SAVEPOINT dbm_entity_schema",
            Some("RELEASE SAVEPOINT dbm_entity_schema"),
        ),
    };
    if guarded {
        ex.execute(save, Vec::new())?;
    }
    match ex.execute(sql, params) {
        Ok(_) => {
            if let (true, Some(release)) = (guarded, release) {
                ex.execute(release, Vec::new())?;
            }
            Ok(())
        }
        Err(e) => {
            if e.kind() == ErrorKind::ReadOnly {
                return Err(e);
            }
            if guarded {
                ex.execute(undo, Vec::new())?;
            }
            if done(ex)? {
                tracing::debug!(error = %e, "schema change made concurrently by another writer");
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// Makes the tables of an entity kind and the columns of `wanted` fields
/// that they lack, and returns the schema then.
pub(crate) fn ensure(
    ex: &mut dyn Exec,
    guarded: bool,
    entity: &str,
    wanted: &[(String, Option<FieldType>)],
) -> Result<Schema> {
    let dialect = ex.dialect();
    let tables = Tables::of(entity, dialect);
    let (mut schema, mut cols) = match load(ex, &tables)? {
        Some(found) => found,
        None => {
            for (raw, sql) in create_statements(dialect, &tables) {
                idempotent(ex, guarded, &sql, Vec::new(), &mut |ex| {
                    Ok(!columns(ex, &raw)?.is_empty())
                })?;
            }
            load(ex, &tables)?.ok_or_else(|| {
                Error::new(
                    ErrorKind::Other,
                    format!("the tables of entity `{entity}` were made but are not visible"),
                )
            })?
        }
    };
    let mut recorded = read_meta(ex, &tables)?;
    let mut changed = false;
    for (field, first_type) in wanted {
        if SYSTEM_FIELDS.contains(&field.as_str()) || schema.type_of(field).is_some() {
            continue;
        }
        if let Some(other) = schema.clashes_with(field) {
            return Err(Error::parameter(format!(
                "the field `{field}` of entity `{entity}` differs from its field `{other}` only in \
                 case, and column names are compared without case on MySQL and SQLite; use one spelling"
            )));
        }
        // The metadata row first: when two writers add the field at once,
        // its primary key picks one type, and both make that column.
        if !recorded.iter().any(|(n, _)| n == field) {
            let sql = format!(
                "INSERT INTO {} (field_name, field_type) VALUES (?, ?)",
                tables.meta
            );
            let ty = first_type.unwrap_or(FieldType::Text);
            let params = vec![Value::Text(field.clone()), Value::Text(ty.name().into())];
            idempotent(ex, guarded, &sql, params, &mut |ex| {
                Ok(read_meta(ex, &tables)?.iter().any(|(n, _)| n == field))
            })?;
            recorded = read_meta(ex, &tables)?;
        }
        let ty = recorded
            .iter()
            .find(|(n, _)| n == field)
            .map_or(FieldType::Text, |&(_, t)| t);
        if !cols.iter().any(|c| c == field) {
            let sql = format!(
                "ALTER TABLE {} ADD {} {}",
                tables.main,
                quote_identifier(field, dialect),
                ty.column(dialect)
            );
            idempotent(ex, guarded, &sql, Vec::new(), &mut |ex| {
                Ok(columns(ex, &tables.main_raw)?.iter().any(|c| c == field))
            })?;
            cols.push(field.clone());
        }
        schema.fields.push((field.clone(), ty));
        changed = true;
    }
    if changed {
        tracing::debug!(entity, "entity schema widened");
    }
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_tables_or_columns_are_refused() {
        for ok in ["users", "_x", "Order_Lines2"] {
            assert!(check_entity_name(ok).is_ok(), "{ok}");
            assert!(check_field_name("e", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1users",
            "users; DROP TABLE users",
            "a\"b",
            "a`b",
            "a]b",
            "naïve",
            "a b",
            "a.b",
            "x--",
        ] {
            let e = check_entity_name(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Parameter);
            assert!(e.to_string().contains("cannot be a table name"), "{e}");
            assert!(check_field_name("e", bad).is_err(), "{bad}");
        }
        assert!(check_entity_name("a__history").is_err());
        assert!(check_entity_name(&"a".repeat(49)).is_err());
        assert!(check_field_name("e", &"a".repeat(64)).is_err());
    }

    #[test]
    fn types_follow_the_first_value_and_mismatches_are_errors() {
        use serde_json::json;
        assert_eq!(FieldType::of(&json!(true)), Some(FieldType::Boolean));
        assert_eq!(FieldType::of(&json!(3)), Some(FieldType::Integer));
        assert_eq!(FieldType::of(&json!(3.5)), Some(FieldType::Float));
        assert_eq!(FieldType::of(&json!("x")), Some(FieldType::Text));
        assert_eq!(FieldType::of(&json!({"a": 1})), Some(FieldType::Json));
        assert_eq!(FieldType::of(&json!([1])), Some(FieldType::Json));
        assert_eq!(FieldType::of(&json!(null)), None);

        let f = FieldType::Float.to_param("e", "f", &json!(2)).unwrap();
        assert_eq!(f, Value::F64(2.0));
        let e = FieldType::Integer
            .to_param("users", "age", &json!("forty"))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conversion);
        assert!(
            e.to_string()
                .contains("field `age` of entity `users` is a integer column, so a text value"),
            "{e}"
        );
        assert!(FieldType::Text.to_param("e", "f", &json!(1)).is_err());
        assert!(FieldType::Integer.to_param("e", "f", &json!(1.5)).is_err());
        assert!(FieldType::Integer
            .to_param("e", "f", &json!(u64::MAX))
            .is_err());
        assert_eq!(
            FieldType::Json.to_param("e", "f", &json!(1)).unwrap(),
            Value::Json(json!(1))
        );
        assert_eq!(
            FieldType::Boolean.to_param("e", "f", &json!(null)).unwrap(),
            Value::Null
        );
        for t in ["boolean", "integer", "float", "text", "json"] {
            assert_eq!(FieldType::parse(t).map(FieldType::name), Some(t));
        }
    }

    #[test]
    fn read_back_as_saved() {
        use serde_json::json;
        assert_eq!(FieldType::Boolean.to_json(Value::I64(1)), json!(true));
        assert_eq!(
            FieldType::Json.to_json(Value::Text("{\"a\":[1]}".into())),
            json!({"a": [1]})
        );
        assert_eq!(FieldType::Float.to_json(Value::I64(2)), json!(2.0));
        assert_eq!(FieldType::Text.to_json(Value::Null), J::Null);
    }
}
