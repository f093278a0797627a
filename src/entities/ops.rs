//! The operations of the entity layer, each written once for both handles:
//! a [`Runner`] says where its statements run.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value as J};

use super::schema::{
    self, check_entity_name, check_field_name, FieldType, Schema, Tables, MAX_ID, SYSTEM_FIELDS,
};
use super::{Deletion, Exec, Find, Options, Order, Runner, Test};
use crate::error::{Error, ErrorKind, Result};
use crate::sql::{quote_identifier, Dialect};
use crate::value::{Row, Value};

/// An entity as JSON.
pub(crate) fn to_json<E: Serialize + ?Sized>(entity: &E) -> Result<J> {
    serde_json::to_value(entity)
        .map_err(|e| Error::conversion("the entity could not be turned into JSON").with_source(e))
}

/// JSON as the caller's type.
pub(crate) fn from_json<T: DeserializeOwned>(value: J) -> Result<T> {
    serde_json::from_value(value).map_err(|e| {
        Error::conversion(
            "the entity does not fit the type asked for (the cause names the field); \
             make the type's fields match, or read it as serde_json::Value",
        )
        .with_source(e)
    })
}

/// Now, as the text kept in `created_at`, `updated_at`, `deleted_at` and
/// the history: UTC, microseconds, fixed width, so that text order is time order.
fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn opt_text(s: Option<&str>) -> Value {
    s.map_or(Value::Null, text)
}

fn json_kind(value: &J) -> &'static str {
    match value {
        J::Null => "null",
        J::Bool(_) => "a boolean",
        J::Number(_) => "a number",
        J::String(_) => "a text",
        J::Array(_) => "an array",
        J::Object(_) => "an object",
    }
}

/// The SQL of one entity kind, quoted for one dialect.
struct Sql {
    d: Dialect,
    t: Tables,
}

impl Sql {
    fn new(name: &str, d: Dialect) -> Sql {
        Sql {
            d,
            t: Tables::of(name, d),
        }
    }

    fn q(&self, column: &str) -> String {
        quote_identifier(column, self.d)
    }

    /// The columns of an entity, named one by one: a `SELECT *` prepared
    /// (and cached) before a column was added would not show it, or
    /// fail on PostgreSQL ("cached plan must not change result type").
    fn columns(&self, schema: &Schema) -> String {
        let mut cols = vec![self.q("id")];
        cols.extend(schema.fields.iter().map(|(f, _)| self.q(f)));
        cols.extend(SYSTEM_FIELDS[1..].iter().map(|c| self.q(c)));
        cols.join(", ")
    }

    /// The entity `id`'s row.
    fn select_row(&self, schema: &Schema, include_deleted: bool) -> String {
        format!(
            "SELECT {} FROM {} WHERE {} = ?{}",
            self.columns(schema),
            self.t.main,
            self.q("id"),
            self.live(include_deleted, " AND ")
        )
    }

    /// The condition that hides soft-deleted rows, after `joiner`.
    fn live(&self, include_deleted: bool, joiner: &str) -> String {
        if include_deleted {
            String::new()
        } else {
            format!("{joiner}{} IS NULL", self.q("deleted_at"))
        }
    }

    /// The current version, locked until the transaction ends where the
    /// dialect can (SQLite locks the whole database at the first write).
    fn lock_version(&self) -> String {
        let (v, id, t) = (self.q("version"), self.q("id"), &self.t.main);
        match self.d {
            Dialect::Postgres | Dialect::MySql => {
                format!("SELECT {v} FROM {t} WHERE {id} = ? FOR UPDATE")
            }
            Dialect::Sqlite => format!("SELECT {v} FROM {t} WHERE {id} = ?"),
            Dialect::MsSql => {
                format!("SELECT {v} FROM {t} WITH (UPDLOCK, HOLDLOCK) WHERE {id} = ?")
            }
        }
    }

    /// The dialect's upsert of `columns` (values in that order), updating
    /// `updates` when the row exists. Except on MySQL (whose row lock
    /// from [`lock_version`](Self::lock_version) does the job), the update
    /// happens only while the row's version is the one bound last, so a
    /// writer that raced this one makes it affect no row.
    fn upsert(&self, columns: &[&str], updates: &[&str]) -> String {
        let t = &self.t.main;
        let cols: Vec<String> = columns.iter().map(|c| self.q(c)).collect();
        let marks = vec!["?"; cols.len()].join(", ");
        let (id, version) = (self.q("id"), self.q("version"));
        let set = |f: &dyn Fn(&str) -> String| {
            updates
                .iter()
                .map(|c| f(&self.q(c)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let cols_list = cols.join(", ");
        match self.d {
            Dialect::Postgres | Dialect::Sqlite => format!(
                "INSERT INTO {t} ({cols_list}) VALUES ({marks}) ON CONFLICT ({id}) DO UPDATE SET {} \
                 WHERE {t}.{version} = ?",
                set(&|c| format!("{c} = excluded.{c}"))
            ),
            Dialect::MySql => format!(
                "INSERT INTO {t} ({cols_list}) VALUES ({marks}) ON DUPLICATE KEY UPDATE {}",
                set(&|c| format!("{c} = VALUES({c})"))
            ),
            Dialect::MsSql => {
                let source: Vec<String> = cols.iter().map(|c| format!("? AS {c}")).collect();
                let values: Vec<String> = cols.iter().map(|c| format!("src.{c}")).collect();
                format!(
                    "MERGE INTO {t} WITH (HOLDLOCK) AS tgt USING (SELECT {}) AS src ON tgt.{id} = src.{id} \
                     WHEN MATCHED AND tgt.{version} = ? THEN UPDATE SET {} \
                     WHEN NOT MATCHED THEN INSERT ({cols_list}) VALUES ({});",
                    source.join(", "),
                    set(&|c| format!("tgt.{c} = src.{c}")),
                    values.join(", ")
                )
            }
        }
    }

    fn insert_history(&self) -> String {
        let cols: Vec<String> = [
            "id",
            "version",
            "operation",
            "changed_at",
            "changed_by",
            "comment",
            "entity",
        ]
        .iter()
        .map(|c| self.q(c))
        .collect();
        format!(
            "INSERT INTO {} ({}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            self.t.history,
            cols.join(", ")
        )
    }

    /// `LIMIT`/`OFFSET` in the dialect's words (the query has an `ORDER BY`).
    fn page(&self, limit: Option<u64>, offset: Option<u64>) -> String {
        let limit = limit.map(|l| l.min(i64::MAX as u64));
        let offset = offset.map(|o| o.min(i64::MAX as u64));
        let mut out = String::new();
        match self.d {
            Dialect::MsSql => {
                if limit.is_some() || offset.is_some() {
                    out.push_str(&format!(" OFFSET {} ROWS", offset.unwrap_or(0)));
                    if let Some(l) = limit {
                        out.push_str(&format!(" FETCH NEXT {l} ROWS ONLY"));
                    }
                }
            }
            Dialect::Postgres | Dialect::Sqlite | Dialect::MySql => {
                match (limit, offset) {
                    (Some(l), _) => out.push_str(&format!(" LIMIT {l}")),
                    // SQLite and MySQL want a LIMIT before any OFFSET.
                    (None, Some(_)) if self.d == Dialect::Sqlite => out.push_str(" LIMIT -1"),
                    (None, Some(_)) if self.d == Dialect::MySql => {
                        out.push_str(" LIMIT 18446744073709551615");
                    }
                    _ => {}
                }
                if let Some(o) = offset {
                    out.push_str(&format!(" OFFSET {o}"));
                }
            }
        }
        out
    }
}

/// A row of an entity table as the JSON object it was saved as.
fn row_to_json(schema: &Schema, row: Row) -> J {
    let names: Vec<String> = row.columns().map(str::to_owned).collect();
    let mut map = Map::new();
    for (name, value) in names.into_iter().zip(row.into_values()) {
        let json = match schema.type_of(&name) {
            Some(ty) => ty.to_json(value),
            None => value.to_json(),
        };
        map.insert(name, json);
    }
    J::Object(map)
}

/// Names the database on errors made here (statement errors already do).
fn named<T>(r: &dyn Runner, result: Result<T>) -> Result<T> {
    result.map_err(|e| e.on_database(&r.database()))
}

#[cold]
fn stale(name: &str, id: &str, given: i64, current: Option<i64>) -> Error {
    let message = match current {
        Some(current) => format!(
            "entity `{name}` `{id}` was saved with version {given}, but its current version is \
             {current}: it was saved or deleted since it was read, and saving would overwrite that; \
             read it again, apply the change to it and save that (or leave `version` out to save over it)"
        ),
        None => format!(
            "entity `{name}` `{id}` was saved with version {given}, but there is no such entity \
             (deleted permanently, or never saved); leave `version` out to create it"
        ),
    };
    Error::new(ErrorKind::VersionConflict, message)
}

/// The id of an entity to save: its own, or a new UUID v4.
fn entity_id(name: &str, value: Option<&J>) -> Result<String> {
    match value {
        None | Some(J::Null) => Ok(uuid::Uuid::new_v4().to_string()),
        Some(J::String(s)) if !s.is_empty() && s.chars().count() <= MAX_ID => Ok(s.clone()),
        Some(J::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Some(other) => Err(Error::parameter(format!(
            "the `id` of an entity of `{name}` is {}; give a text of 1 to {MAX_ID} characters or an \
             integer, or leave it out for a new UUID",
            json_kind(other)
        ))),
    }
}

/// The version an entity to save says it was read at.
fn expected_version(name: &str, value: Option<&J>) -> Result<Option<i64>> {
    match value {
        None | Some(J::Null) => Ok(None),
        Some(J::Number(n)) if n.is_i64() => Ok(n.as_i64()),
        Some(other) => Err(Error::parameter(format!(
            "the `version` of an entity of `{name}` is {}; it is the integer the entity was read \
             with, or absent",
            json_kind(other)
        ))),
    }
}

/// The fields `entities` need, with the type of each one's first non-null
/// value; every entity and field name checked.
fn wanted_fields(name: &str, entities: &[J]) -> Result<Vec<(String, Option<FieldType>)>> {
    let mut wanted: Vec<(String, Option<FieldType>)> = Vec::new();
    for entity in entities {
        let object = entity.as_object().ok_or_else(|| {
            Error::parameter(format!(
                "an entity of `{name}` must be a JSON object (or a struct that serialises to one), \
                 not {}",
                json_kind(entity)
            ))
        })?;
        entity_id(name, object.get("id"))?;
        expected_version(name, object.get("version"))?;
        for (field, value) in object {
            check_field_name(name, field)?;
            if SYSTEM_FIELDS.contains(&field.as_str()) {
                continue;
            }
            match wanted.iter_mut().find(|(n, _)| n == field) {
                Some(slot) => {
                    if slot.1.is_none() {
                        slot.1 = FieldType::of(value);
                    }
                }
                None => wanted.push((field.clone(), FieldType::of(value))),
            }
        }
    }
    Ok(wanted)
}

/// Saves `entities` (checked objects) in one transaction.
pub(crate) fn save(
    r: &mut dyn Runner,
    name: &str,
    entities: &[J],
    user: Option<&str>,
    comment: Option<&str>,
) -> Result<Vec<J>> {
    let result = (|| {
        check_entity_name(name)?;
        if entities.is_empty() {
            return Ok(Vec::new());
        }
        let wanted = wanted_fields(name, entities)?;
        let mut schema = Schema::default();
        r.schema(&mut |ex, guarded| {
            schema = schema::ensure(ex, guarded, name, &wanted)?;
            Ok(())
        })?;
        let sql = Sql::new(name, r.dialect());
        let mut saved = Vec::with_capacity(entities.len());
        r.in_tx(&mut |tx| {
            saved.clear();
            // One upsert per entity. A multi-row upsert on the bulk path
            // can take the place of this loop without changing callers:
            // the schema is settled above, and each entity's version check
            // and history row are per entity either way.
            for entity in entities {
                saved.push(save_one(tx, &sql, &schema, name, entity, user, comment)?);
            }
            Ok(())
        })?;
        Ok(saved)
    })();
    named(r, result)
}

fn save_one(
    tx: &mut dyn Exec,
    sql: &Sql,
    schema: &Schema,
    name: &str,
    entity: &J,
    user: Option<&str>,
    comment: Option<&str>,
) -> Result<J> {
    let empty = Map::new();
    let object = entity.as_object().unwrap_or(&empty);
    let id = entity_id(name, object.get("id"))?;
    let expected = expected_version(name, object.get("version"))?;
    let current = match tx.query(&sql.lock_version(), vec![text(&id)])?.first() {
        Some(row) => Some(row.get::<i64>(0)?),
        None => None,
    };
    match (expected, current) {
        (Some(given), Some(current)) if given != current => {
            return Err(stale(name, &id, given, Some(current)))
        }
        (Some(given), None) => return Err(stale(name, &id, given, None)),
        _ => {}
    }
    let version = current.map_or(1, |c| c + 1);
    let at = now();

    let mut columns: Vec<&str> = vec!["id"];
    let mut values = vec![text(&id)];
    for (field, value) in object {
        if SYSTEM_FIELDS.contains(&field.as_str()) {
            continue;
        }
        let ty = schema
            .type_of(field)
            .ok_or_else(|| schema.unknown(name, field))?;
        columns.push(field);
        values.push(ty.to_param(name, field, value)?);
    }
    let mut updates: Vec<&str> = columns[1..].to_vec();
    updates.extend(["updated_at", "updated_by", "version"]);
    columns.extend([
        "created_at",
        "updated_at",
        "created_by",
        "updated_by",
        "version",
    ]);
    values.extend([
        text(&at),
        text(&at),
        opt_text(user),
        opt_text(user),
        Value::I64(version),
    ]);
    if sql.d != Dialect::MySql {
        values.push(current.map_or(Value::Null, Value::I64));
    }
    if tx.execute(&sql.upsert(&columns, &updates), values)? == 0 {
        // Another writer made or changed it between the read and the write.
        return Err(stale(name, &id, current.unwrap_or(0), None)
            .replace_in_message("there is no such entity", "another writer saved it first"));
    }
    let row = tx
        .query(&sql.select_row(schema, true), vec![text(&id)])?
        .into_iter()
        .next()
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Other,
                format!("entity `{name}` `{id}` was saved but cannot be read back"),
            )
        })?;
    let saved = row_to_json(schema, row);
    add_history(tx, sql, &id, version, "save", &at, user, comment, &saved)?;
    Ok(saved)
}

#[allow(clippy::too_many_arguments)]
fn add_history(
    tx: &mut dyn Exec,
    sql: &Sql,
    id: &str,
    version: i64,
    operation: &str,
    at: &str,
    user: Option<&str>,
    comment: Option<&str>,
    entity: &J,
) -> Result<()> {
    tx.execute(
        &sql.insert_history(),
        vec![
            text(id),
            Value::I64(version),
            text(operation),
            text(at),
            opt_text(user),
            opt_text(comment),
            Value::Text(entity.to_string()),
        ],
    )
    .map(drop)
}

/// Runs `f` in the operation's transaction with the entity kind's schema,
/// or returns `absent` when its tables do not exist.
fn reading<T>(
    r: &mut dyn Runner,
    name: &str,
    absent: impl Fn() -> T,
    mut f: impl FnMut(&mut dyn Exec, &Sql, &Schema) -> Result<T>,
) -> Result<T> {
    let result = (|| {
        check_entity_name(name)?;
        let sql = Sql::new(name, r.dialect());
        let mut out = None;
        r.in_tx(&mut |tx| {
            out = Some(match schema::load(tx, &sql.t)? {
                None => absent(),
                Some((schema, _)) => f(tx, &sql, &schema)?,
            });
            Ok(())
        })?;
        Ok(out.unwrap_or_else(&absent))
    })();
    named(r, result)
}

pub(crate) fn get(r: &mut dyn Runner, o: Options, name: &str, id: &str) -> Result<Option<J>> {
    reading(
        r,
        name,
        || None,
        |tx, sql, schema| {
            let rows = tx.query(&sql.select_row(schema, o.include_deleted), vec![text(id)])?;
            Ok(rows.into_iter().next().map(|row| row_to_json(schema, row)))
        },
    )
}

fn parse_snapshot(text: &str) -> Result<J> {
    serde_json::from_str(text).map_err(|e| {
        Error::conversion("a history row's entity is not valid JSON (was it edited by hand?)")
            .with_source(e)
    })
}

pub(crate) fn by_version(
    r: &mut dyn Runner,
    name: &str,
    id: &str,
    version: i64,
) -> Result<Option<J>> {
    reading(
        r,
        name,
        || None,
        |tx, sql, _| {
            let query = format!(
                "SELECT {} FROM {} WHERE {} = ? AND {} = ?",
                sql.q("entity"),
                sql.t.history,
                sql.q("id"),
                sql.q("version")
            );
            match tx
                .query(&query, vec![text(id), Value::I64(version)])?
                .first()
            {
                Some(row) => parse_snapshot(&row.get::<String>(0)?).map(Some),
                None => Ok(None),
            }
        },
    )
}

/// One history row, the entity still JSON.
pub(crate) struct Recorded {
    pub(crate) version: i64,
    pub(crate) operation: String,
    pub(crate) changed_at: String,
    pub(crate) changed_by: Option<String>,
    pub(crate) comment: Option<String>,
    pub(crate) entity: J,
}

pub(crate) fn history(r: &mut dyn Runner, name: &str, id: &str) -> Result<Vec<Recorded>> {
    reading(r, name, Vec::new, |tx, sql, _| {
        let cols: Vec<String> = [
            "version",
            "operation",
            "changed_at",
            "changed_by",
            "comment",
            "entity",
        ]
        .iter()
        .map(|c| sql.q(c))
        .collect();
        let query = format!(
            "SELECT {} FROM {} WHERE {} = ? ORDER BY {}",
            cols.join(", "),
            sql.t.history,
            sql.q("id"),
            sql.q("version")
        );
        tx.query(&query, vec![text(id)])?
            .iter()
            .map(|row| {
                Ok(Recorded {
                    version: row.get(0)?,
                    operation: row.get(1)?,
                    changed_at: row.get(2)?,
                    changed_by: row.get(3)?,
                    comment: row.get(4)?,
                    entity: parse_snapshot(&row.get::<String>(5)?)?,
                })
            })
            .collect()
    })
}

/// Escapes `text` for `LIKE … ESCAPE '!'`.
fn escape_like(text: &str, d: Dialect) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '!' | '%' | '_') || (c == '[' && d == Dialect::MsSql) {
            out.push('!');
        }
        out.push(c);
    }
    out
}

/// The `WHERE` clause of `find` and its values.
fn where_clause(
    sql: &Sql,
    schema: &Schema,
    name: &str,
    find: &Find,
    o: Options,
) -> Result<(String, Vec<Value>)> {
    let mut parts = Vec::new();
    let mut params = Vec::new();
    if !o.include_deleted {
        parts.push(sql.live(false, ""));
    }
    for (field, test) in &find.conditions {
        check_field_name(name, field)?;
        let ty = schema
            .type_of(field)
            .ok_or_else(|| schema.unknown(name, field))?;
        let col = sql.q(field);
        let scalar = || {
            if ty == FieldType::Json {
                Err(Error::parameter(format!(
                    "field `{field}` of entity `{name}` holds JSON, which can only be tested with \
                     is_null or is_not_null"
                )))
            } else {
                Ok(())
            }
        };
        let textual = || {
            if ty == FieldType::Text {
                Ok(())
            } else {
                Err(Error::parameter(format!(
                    "field `{field}` of entity `{name}` is a {} column; like and contains test text \
                     columns only",
                    ty.name()
                )))
            }
        };
        match test {
            Test::Compare(op, J::Null) if matches!(*op, "=" | "<>") => {
                let not = if *op == "<>" { "NOT " } else { "" };
                parts.push(format!("{col} IS {not}NULL"));
            }
            Test::Compare(op, J::Null) => {
                return Err(Error::parameter(format!(
                    "field `{field}` of entity `{name}` cannot be compared with {op} null; \
                     use is_null or is_not_null"
                )))
            }
            Test::Compare(op, value) => {
                scalar()?;
                params.push(ty.to_param(name, field, value)?);
                parts.push(format!("{col} {op} ?"));
            }
            Test::In(values) if values.is_empty() => parts.push("1 = 0".to_owned()),
            Test::In(values) => {
                scalar()?;
                for value in values {
                    if value.is_null() {
                        return Err(Error::parameter(format!(
                            "the values of is_in on field `{field}` of entity `{name}` include \
                             null, which never matches; test is_null separately"
                        )));
                    }
                    params.push(ty.to_param(name, field, value)?);
                }
                let marks = vec!["?"; values.len()].join(", ");
                parts.push(format!("{col} IN ({marks})"));
            }
            Test::Like(pattern) => {
                textual()?;
                params.push(text(pattern));
                parts.push(format!("{col} LIKE ?"));
            }
            Test::Contains(needle) => {
                textual()?;
                params.push(Value::Text(format!("%{}%", escape_like(needle, sql.d))));
                parts.push(format!("{col} LIKE ? ESCAPE '!'"));
            }
            Test::IsNull => parts.push(format!("{col} IS NULL")),
            Test::IsNotNull => parts.push(format!("{col} IS NOT NULL")),
        }
    }
    let clause = if parts.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", parts.join(" AND "))
    };
    Ok((clause, params))
}

pub(crate) fn find(r: &mut dyn Runner, o: Options, name: &str, find: &Find) -> Result<Vec<J>> {
    reading(r, name, Vec::new, |tx, sql, schema| {
        let (clause, params) = where_clause(sql, schema, name, find, o)?;
        let mut order = Vec::new();
        for (field, direction) in &find.order {
            check_field_name(name, field)?;
            schema
                .type_of(field)
                .ok_or_else(|| schema.unknown(name, field))?;
            let dir = match direction {
                Order::Asc => "ASC",
                Order::Desc => "DESC",
            };
            order.push(format!("{} {dir}", sql.q(field)));
        }
        order.push(format!("{} ASC", sql.q("id")));
        let query = format!(
            "SELECT {} FROM {}{clause} ORDER BY {}{}",
            sql.columns(schema),
            sql.t.main,
            order.join(", "),
            sql.page(find.limit, find.offset)
        );
        Ok(tx
            .query(&query, params)?
            .into_iter()
            .map(|row| row_to_json(schema, row))
            .collect())
    })
}

pub(crate) fn count(r: &mut dyn Runner, o: Options, name: &str, find: &Find) -> Result<u64> {
    reading(
        r,
        name,
        || 0,
        |tx, sql, schema| {
            let (clause, params) = where_clause(sql, schema, name, find, o)?;
            let query = format!("SELECT COUNT(*) FROM {}{clause}", sql.t.main);
            let n: i64 = match tx.query(&query, params)?.first() {
                Some(row) => row.get(0)?,
                None => 0,
            };
            Ok(u64::try_from(n).unwrap_or(0))
        },
    )
}

pub(crate) fn delete(
    r: &mut dyn Runner,
    name: &str,
    id: &str,
    user: Option<&str>,
    how: Deletion,
) -> Result<bool> {
    reading(
        r,
        name,
        || false,
        |tx, sql, schema| match how {
            Deletion::Permanent => {
                let id_col = sql.q("id");
                let gone = tx.execute(
                    &format!("DELETE FROM {} WHERE {id_col} = ?", sql.t.main),
                    vec![text(id)],
                )?;
                tx.execute(
                    &format!("DELETE FROM {} WHERE {id_col} = ?", sql.t.history),
                    vec![text(id)],
                )?;
                Ok(gone > 0)
            }
            Deletion::Soft => mark(tx, sql, schema, id, user, true),
        },
    )
}

pub(crate) fn restore(
    r: &mut dyn Runner,
    name: &str,
    id: &str,
    user: Option<&str>,
) -> Result<bool> {
    reading(
        r,
        name,
        || false,
        |tx, sql, schema| mark(tx, sql, schema, id, user, false),
    )
}

/// Sets (`deleted`) or clears `deleted_at` as a new version with its
/// history row; false when it was already so, or there is no such entity.
fn mark(
    tx: &mut dyn Exec,
    sql: &Sql,
    schema: &Schema,
    id: &str,
    user: Option<&str>,
    deleted: bool,
) -> Result<bool> {
    let at = now();
    let (deleted_at, version) = (sql.q("deleted_at"), sql.q("version"));
    let update = format!(
        "UPDATE {} SET {deleted_at} = ?, {} = ?, {} = ?, {version} = {version} + 1 \
         WHERE {} = ? AND {deleted_at} IS {}NULL",
        sql.t.main,
        sql.q("updated_at"),
        sql.q("updated_by"),
        sql.q("id"),
        if deleted { "" } else { "NOT " }
    );
    let stamp = if deleted { text(&at) } else { Value::Null };
    if tx.execute(&update, vec![stamp, text(&at), opt_text(user), text(id)])? == 0 {
        return Ok(false);
    }
    let Some(row) = tx
        .query(&sql.select_row(schema, true), vec![text(id)])?
        .into_iter()
        .next()
    else {
        return Ok(false);
    };
    let entity = row_to_json(schema, row);
    let version = entity.get("version").and_then(J::as_i64).unwrap_or(0);
    let operation = if deleted { "delete" } else { "restore" };
    add_history(tx, sql, id, version, operation, &at, user, None, &entity)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upserts_per_dialect() {
        let cols = ["id", "name", "created_at", "version"];
        let ups = ["name", "version"];
        let pg = Sql::new("users", Dialect::Postgres).upsert(&cols, &ups);
        assert_eq!(
            pg,
            "INSERT INTO \"users\" (\"id\", \"name\", \"created_at\", \"version\") VALUES (?, ?, ?, ?) \
             ON CONFLICT (\"id\") DO UPDATE SET \"name\" = excluded.\"name\", \"version\" = excluded.\"version\" \
             WHERE \"users\".\"version\" = ?"
        );
        let my = Sql::new("users", Dialect::MySql).upsert(&cols, &ups);
        assert!(
            my.ends_with(
                "ON DUPLICATE KEY UPDATE `name` = VALUES(`name`), `version` = VALUES(`version`)"
            ),
            "{my}"
        );
        let ms = Sql::new("users", Dialect::MsSql).upsert(&cols, &ups);
        assert!(ms.starts_with("MERGE INTO [users] WITH (HOLDLOCK)"), "{ms}");
        assert_eq!(ms.matches('?').count(), 5, "{ms}");
    }

    #[test]
    fn pages_per_dialect() {
        let page = |d| Sql::new("e", d).page(Some(10), Some(20));
        assert_eq!(page(Dialect::Postgres), " LIMIT 10 OFFSET 20");
        assert_eq!(
            page(Dialect::MsSql),
            " OFFSET 20 ROWS FETCH NEXT 10 ROWS ONLY"
        );
        let only_offset = |d| Sql::new("e", d).page(None, Some(5));
        assert_eq!(only_offset(Dialect::Sqlite), " LIMIT -1 OFFSET 5");
        assert_eq!(
            only_offset(Dialect::MySql),
            " LIMIT 18446744073709551615 OFFSET 5"
        );
        assert_eq!(only_offset(Dialect::Postgres), " OFFSET 5");
        assert_eq!(Sql::new("e", Dialect::MsSql).page(None, None), "");
    }

    #[test]
    fn contains_is_literal() {
        assert_eq!(escape_like("50%_a!", Dialect::Postgres), "50!%!_a!!");
        assert_eq!(escape_like("[x]", Dialect::MsSql), "![x]");
        assert_eq!(escape_like("[x]", Dialect::MySql), "[x]");
    }

    #[test]
    fn ids_and_versions_are_checked() {
        use serde_json::json;
        assert_eq!(entity_id("e", Some(&json!("a"))).unwrap(), "a");
        assert_eq!(entity_id("e", Some(&json!(7))).unwrap(), "7");
        assert_eq!(entity_id("e", None).unwrap().len(), 36);
        assert!(entity_id("e", Some(&json!(""))).is_err());
        assert!(entity_id("e", Some(&json!({"a": 1}))).is_err());
        assert_eq!(expected_version("e", Some(&json!(3))).unwrap(), Some(3));
        assert!(expected_version("e", Some(&json!("3"))).is_err());
        let e = wanted_fields("e", &[json!([1])]).unwrap_err();
        assert!(e.to_string().contains("must be a JSON object"), "{e}");
        let e = wanted_fields("e", &[json!({"a b": 1})]).unwrap_err();
        assert!(e.to_string().contains("cannot be a column name"), "{e}");
        let w = wanted_fields("e", &[json!({"a": null, "id": "x"}), json!({"a": 2})]).unwrap();
        assert_eq!(w, vec![("a".to_owned(), Some(FieldType::Integer))]);
    }

    #[test]
    fn stale_versions_say_what_to_do() {
        let e = stale("users", "u1", 1, Some(3));
        assert_eq!(e.kind(), ErrorKind::VersionConflict);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("current version is 3"), "{e}");
    }
}
