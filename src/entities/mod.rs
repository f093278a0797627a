//! The entity layer (seed 003): JSON objects, or any serde struct, saved
//! and read by name and id, with their tables made and widened on demand,
//! every version kept in a history table, soft delete and restore, and
//! optimistic concurrency on a `version` field.
//!
//! It is a service on top of the pipeline: it writes the dialect's SQL
//! (upsert, history, soft delete) and runs it as ordinary statements of a
//! [`Transaction`], so timeouts, retries, metrics and the read-only rule
//! apply to it unchanged.
//!
//! - `schema`: names, column types and the per-dialect DDL;
//! - `ops`: the operations, each on one transaction.

mod ops;
mod schema;

use std::fmt;
use std::panic::Location;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value as J;

use crate::error::Result;
use crate::pipeline::{Limit, Op, Shared};
use crate::resilience::RetryPolicy;
use crate::session::{outcome_affected, outcome_rows, retried_transaction, transient, Transaction};
use crate::sql::Dialect;
use crate::value::{Params, Row, Value};

/// Runs statements for the entity layer: a transaction, or single
/// statements each on a connection of its own.
pub(crate) trait Exec {
    fn dialect(&self) -> Dialect;
    fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>>;
    fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64>;
}

impl Exec for Transaction<'_> {
    fn dialect(&self) -> Dialect {
        self.shared().dialect
    }

    fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        self.execute_query(sql, Params::Positional(params))
    }

    fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64> {
        Transaction::execute(self, sql, Params::Positional(params))
    }
}

/// Single statements, each committed on its own (schema work outside a
/// transaction, so that a racing writer's DDL can be forgiven).
struct Autocommit<'a>(&'a Shared);

impl Exec for Autocommit<'_> {
    fn dialect(&self) -> Dialect {
        self.0.dialect
    }

    fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        self.0
            .run(
                None,
                Op::Query,
                sql,
                Params::Positional(params),
                Limit::DEFAULT,
            )
            .map(outcome_rows)
    }

    fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64> {
        self.0
            .run(
                None,
                Op::Execute,
                sql,
                Params::Positional(params),
                Limit::DEFAULT,
            )
            .map(outcome_affected)
    }
}

/// Where an operation runs: a transaction of its own, or the caller's.
pub(crate) trait Runner {
    fn dialect(&self) -> Dialect;

    /// The database's name, for errors.
    fn database(&self) -> Arc<str>;

    /// Runs `f` in the operation's transaction.
    fn in_tx(&mut self, f: &mut dyn FnMut(&mut Transaction<'_>) -> Result<()>) -> Result<()>;

    /// Runs schema work: `f` gets the statements to use and whether each
    /// DDL must be guarded by a savepoint (inside a caller's transaction).
    fn schema(&mut self, f: &mut dyn FnMut(&mut dyn Exec, bool) -> Result<()>) -> Result<()>;
}

/// One transaction per call, retried after a transient failure.
struct OwnTx<'a> {
    shared: &'a Arc<Shared>,
    policy: RetryPolicy,
    site: &'static Location<'static>,
}

impl Runner for OwnTx<'_> {
    fn dialect(&self) -> Dialect {
        self.shared.dialect
    }

    fn database(&self) -> Arc<str> {
        Arc::clone(self.shared.name())
    }

    fn in_tx(&mut self, f: &mut dyn FnMut(&mut Transaction<'_>) -> Result<()>) -> Result<()> {
        retried_transaction(self.shared, &self.policy, None, self.site, f)
    }

    /// Schema work is idempotent (each step is forgiven when a racing
    /// writer made its effect), so a transient failure (a SQLite file busy
    /// while connections open or switch it to WAL, a deadlock on the
    /// server) runs it again from its start, as the policy allows.
    fn schema(&mut self, f: &mut dyn FnMut(&mut dyn Exec, bool) -> Result<()>) -> Result<()> {
        let shared = self.shared;
        shared.retrying(&self.policy, "entity schema", || {
            f(&mut Autocommit(shared), false).map_err(transient)
        })
    }
}

/// The caller's transaction.
struct InTx<'t, 'c> {
    tx: &'t mut Transaction<'c>,
}

impl Runner for InTx<'_, '_> {
    fn dialect(&self) -> Dialect {
        self.tx.shared().dialect
    }

    fn database(&self) -> Arc<str> {
        Arc::clone(self.tx.shared().name())
    }

    fn in_tx(&mut self, f: &mut dyn FnMut(&mut Transaction<'_>) -> Result<()>) -> Result<()> {
        f(self.tx)
    }

    fn schema(&mut self, f: &mut dyn FnMut(&mut dyn Exec, bool) -> Result<()>) -> Result<()> {
        if self.tx.shared().dialect == Dialect::MySql {
            // MySQL commits the open transaction before any DDL, which would
            // commit the caller's work half done: its schema work runs on a
            // connection of its own instead.
            let shared = Arc::clone(self.tx.shared());
            f(&mut Autocommit(&shared), false)
        } else {
            f(self.tx, true)
        }
    }
}

/// Options every operation of a handle shares.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Options {
    include_deleted: bool,
}

/// How [`delete_entity`](Entities::delete_entity) deletes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Deletion {
    /// Sets `deleted_at`: the entity is hidden from reads (unless asked
    /// for with [`Entities::include_deleted`]), keeps its history and can
    /// be brought back with [`restore_entity`](Entities::restore_entity).
    #[default]
    Soft,
    /// Removes the entity and its history for good.
    Permanent,
}

/// A sort direction for [`Find::order_by`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Order {
    /// Smallest first.
    #[default]
    Asc,
    /// Largest first.
    Desc,
}

/// One test of a [`Find`]: data, never SQL text.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Test {
    /// `=`, `<>`, `<`, `<=`, `>`, `>=` against a value.
    Compare(&'static str, J),
    In(Vec<J>),
    /// A `LIKE` pattern, `%` and `_` as wildcards.
    Like(String),
    /// A substring, matched literally.
    Contains(String),
    IsNull,
    IsNotNull,
}

/// What [`find_entities`](Entities::find_entities) and
/// [`count_entities`](Entities::count_entities) look for: conditions on
/// fields (all of them must hold), an order, a page. Conditions are data:
/// field names are checked against the entity's fields and values are
/// bound as parameters, never pasted into SQL.
///
/// ```
/// use dbmanager::{Find, Order};
///
/// let page = Find::new()
///     .eq("status", "active")
///     .ge("age", 18)
///     .is_in("country", ["DE", "FR"])
///     .contains("name", "an")
///     .order_by("name", Order::Asc)
///     .limit(50)
///     .offset(100);
/// # let _ = page;
/// ```
///
/// Text comparisons follow the database: `like` and `contains` ignore
/// ASCII case on SQLite and respect it on PostgreSQL and MySQL (whose
/// entity tables use a binary collation). A comparison never matches a
/// field that is null: use [`is_null`](Self::is_null) for those
/// (`eq(field, null)` means the same).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Find {
    pub(crate) conditions: Vec<(String, Test)>,
    pub(crate) order: Vec<(String, Order)>,
    pub(crate) limit: Option<u64>,
    pub(crate) offset: Option<u64>,
}

impl Find {
    /// Everything, in id order.
    pub fn new() -> Find {
        Find::default()
    }

    fn test(mut self, field: &str, test: Test) -> Find {
        self.conditions.push((field.to_owned(), test));
        self
    }

    /// `field` equals `value` (`null`: the field is null).
    pub fn eq(self, field: &str, value: impl Into<J>) -> Find {
        self.test(field, Test::Compare("=", value.into()))
    }

    /// `field` differs from `value` (`null`: the field is not null).
    pub fn ne(self, field: &str, value: impl Into<J>) -> Find {
        self.test(field, Test::Compare("<>", value.into()))
    }

    /// `field` is less than `value`.
    pub fn lt(self, field: &str, value: impl Into<J>) -> Find {
        self.test(field, Test::Compare("<", value.into()))
    }

    /// `field` is less than or equal to `value`.
    pub fn le(self, field: &str, value: impl Into<J>) -> Find {
        self.test(field, Test::Compare("<=", value.into()))
    }

    /// `field` is greater than `value`.
    pub fn gt(self, field: &str, value: impl Into<J>) -> Find {
        self.test(field, Test::Compare(">", value.into()))
    }

    /// `field` is greater than or equal to `value`.
    pub fn ge(self, field: &str, value: impl Into<J>) -> Find {
        self.test(field, Test::Compare(">=", value.into()))
    }

    /// `field` is one of `values` (none: nothing matches).
    pub fn is_in<V: Into<J>>(self, field: &str, values: impl IntoIterator<Item = V>) -> Find {
        let values = values.into_iter().map(Into::into).collect();
        self.test(field, Test::In(values))
    }

    /// `field` matches the SQL `LIKE` `pattern` (`%` any text, `_` one character).
    pub fn like(self, field: &str, pattern: &str) -> Find {
        self.test(field, Test::Like(pattern.to_owned()))
    }

    /// `field` contains `text` (taken literally: `%` and `_` are no wildcards).
    pub fn contains(self, field: &str, text: &str) -> Find {
        self.test(field, Test::Contains(text.to_owned()))
    }

    /// `field` is null (or was never set).
    pub fn is_null(self, field: &str) -> Find {
        self.test(field, Test::IsNull)
    }

    /// `field` is not null.
    pub fn is_not_null(self, field: &str) -> Find {
        self.test(field, Test::IsNotNull)
    }

    /// Sorts by `field` (after any earlier `order_by`); ties are broken by id.
    pub fn order_by(mut self, field: &str, order: Order) -> Find {
        self.order.push((field.to_owned(), order));
        self
    }

    /// At most `n` entities (ignored by `count_entities`).
    pub fn limit(mut self, n: u64) -> Find {
        self.limit = Some(n);
        self
    }

    /// Skips the first `n` entities (ignored by `count_entities`).
    pub fn offset(mut self, n: u64) -> Find {
        self.offset = Some(n);
        self
    }
}

/// One saved version of an entity, from
/// [`get_entity_history`](Entities::get_entity_history).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HistoryEntry<T> {
    /// The entity's version this entry records (1, 2, …).
    pub version: i64,
    /// What made it: `save`, `delete` or `restore`.
    pub operation: String,
    /// When, as UTC ISO 8601 text (`2026-11-30T02:41:07.123456Z`).
    pub changed_at: String,
    /// The `user_id` given to the call that made it.
    pub changed_by: Option<String>,
    /// The `comment` given to the save.
    pub comment: Option<String>,
    /// The entity as it was after the change.
    pub entity: T,
}

/// The entity layer on one database: from
/// [`DatabaseManager::entities`](crate::DatabaseManager::entities). Each
/// call runs in a transaction of its own, retried after a transient
/// failure as the manager's transactions are.
///
/// An entity is a JSON object (or any `Serialize` struct that serialises
/// to one) kept in a table named after its kind, one column per field:
///
/// - the table, a history table (`{name}__history`) and a metadata table
///   (`{name}__meta`) are made on first save; a field the table lacks gets
///   a column, typed from its first non-null value (boolean, integer,
///   float, text, or JSON for objects and arrays) and recorded in the
///   metadata table. Columns are never dropped, retyped or narrowed: a
///   later value that does not fit is a [`Conversion`](crate::ErrorKind::Conversion)
///   error, except that an integer goes into a float column and anything
///   into a JSON column. A field first seen as null gets a text column.
/// - the system fields `id` (a UUID v4 when absent), `created_at`,
///   `updated_at` (UTC ISO 8601 text), `created_by`, `updated_by` (the
///   `user_id` given), `version` (1, 2, …) and `deleted_at` are kept by the
///   library; values given for them are ignored, except `id` and `version`.
/// - a save with a `version` that is not the entity's current one fails
///   with [`VersionConflict`](crate::ErrorKind::VersionConflict) instead of
///   overwriting someone else's change; without `version` it saves over
///   whatever is there. A save updates the fields it names and keeps the
///   others; saving a soft-deleted entity updates it and leaves it deleted
///   (restore it to bring it back).
///
/// Names of entities and fields must be plain identifiers (letters,
/// digits, `_`); anything else is refused with a clear error, never put
/// into SQL.
#[derive(Clone)]
pub struct Entities {
    shared: Arc<Shared>,
    policy: RetryPolicy,
    options: Options,
}

impl fmt::Debug for Entities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entities")
            .field("database", &self.shared.name())
            .field("include_deleted", &self.options.include_deleted)
            .finish()
    }
}

/// The entity layer inside a transaction of the caller's, from
/// [`Transaction::entities`]: its work commits or rolls back with that
/// transaction. The same methods as [`Entities`].
///
/// On MySQL and MariaDB, which commit an open transaction before any DDL,
/// the schema work of a new entity kind or field runs on a connection of
/// its own: it stays even when the transaction rolls back, and a new field
/// of a kind this transaction already wrote to waits for the transaction's
/// lock on that table until the statement timeout
/// ([`QueryTimeout`](crate::ErrorKind::QueryTimeout)). Save an entity with
/// all its fields before the transaction writes to that kind, or add new
/// fields outside it.
pub struct TxEntities<'t, 'c> {
    tx: &'t mut Transaction<'c>,
    options: Options,
}

impl fmt::Debug for TxEntities<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxEntities")
            .field("database", &self.tx.shared().name())
            .field("include_deleted", &self.options.include_deleted)
            .finish()
    }
}

impl Entities {
    pub(crate) fn new(shared: Arc<Shared>, policy: RetryPolicy) -> Entities {
        Entities {
            shared,
            policy,
            options: Options::default(),
        }
    }

    /// This handle, with soft-deleted entities visible to `get_entity`,
    /// `find_entities` and `count_entities`.
    #[must_use]
    pub fn include_deleted(mut self) -> Entities {
        self.options.include_deleted = true;
        self
    }

    #[track_caller]
    fn runner(&self) -> (OwnTx<'_>, Options) {
        let runner = OwnTx {
            shared: &self.shared,
            policy: self.policy,
            site: Location::caller(),
        };
        (runner, self.options)
    }
}

impl<'c> Transaction<'c> {
    /// The entity layer inside this transaction: see [`TxEntities`] and
    /// [`DatabaseManager::entities`](crate::DatabaseManager::entities).
    ///
    /// ```
    /// # fn main() -> dbmanager::Result<()> {
    /// # let db = dbmanager::DatabaseManager::from_config(
    /// #     dbmanager::DatabaseConfig::builder("doc_tx_entities").url("sqlite::memory:").build()?)?;
    /// use dbmanager::serde_json::json;
    ///
    /// db.transaction(|tx| {
    ///     let order = tx.entities().save_entity("orders", &json!({"total": 12.5}), Some("web"), None)?;
    ///     tx.execute("UPDATE orders SET total = total + 1 WHERE id = ?", (order["id"].as_str(),))?;
    ///     Ok::<_, dbmanager::Error>(())
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn entities(&mut self) -> TxEntities<'_, 'c> {
        TxEntities {
            tx: self,
            options: Options::default(),
        }
    }
}

impl<'c> TxEntities<'_, 'c> {
    /// This handle, with soft-deleted entities visible to `get_entity`,
    /// `find_entities` and `count_entities`.
    #[must_use]
    pub fn include_deleted(mut self) -> Self {
        self.options.include_deleted = true;
        self
    }

    fn runner(&mut self) -> (InTx<'_, 'c>, Options) {
        (InTx { tx: self.tx }, self.options)
    }
}

/// The public methods of [`Entities`] (`&self`) and [`TxEntities`]
/// (`&mut self`); each is one line into `ops`.
macro_rules! entity_methods {
    (&mut $s:ident) => { entity_methods!(@with [&mut $s] $s); };
    (&$s:ident) => { entity_methods!(@with [&$s] $s); };
    (@with [$($recv:tt)+] $s:ident) => {
        /// Saves an entity: creates it, or updates the fields it names, with
        /// the dialect's upsert, and records the new version in the history.
        /// `entity` is a JSON object or a struct that serialises to one;
        /// `user_id` goes into `created_by`/`updated_by` and the history,
        /// `comment` into the history. Returns the entity as saved, system
        /// fields included.
        ///
        /// # Errors
        ///
        /// [`Parameter`](crate::ErrorKind::Parameter) for an entity that is
        /// not an object or a name that cannot be a table or column;
        /// [`Conversion`](crate::ErrorKind::Conversion) for a value that
        /// does not fit its column; [`VersionConflict`](crate::ErrorKind::VersionConflict)
        /// for a stale `version`; [`ReadOnly`](crate::ErrorKind::ReadOnly)
        /// on a read-only database; any statement error.
        #[track_caller]
        pub fn save_entity<E: Serialize + ?Sized>(
            $($recv)+,
            name: &str,
            entity: &E,
            user_id: Option<&str>,
            comment: Option<&str>,
        ) -> Result<J> {
            let (mut r, _) = $s.runner();
            let mut saved = ops::save(&mut r, name, std::slice::from_ref(&ops::to_json(entity)?), user_id, comment)?;
            Ok(saved.pop().unwrap_or_default())
        }

        /// [`save_entity`](Self::save_entity), returning the saved entity
        /// as a `T` (through serde).
        ///
        /// # Errors
        ///
        /// As [`save_entity`](Self::save_entity);
        /// [`Conversion`](crate::ErrorKind::Conversion) when the saved
        /// entity does not fit `T`.
        #[track_caller]
        pub fn save_entity_as<T: DeserializeOwned, E: Serialize + ?Sized>(
            $($recv)+,
            name: &str,
            entity: &E,
            user_id: Option<&str>,
            comment: Option<&str>,
        ) -> Result<T> {
            ops::from_json($s.save_entity(name, entity, user_id, comment)?)
        }

        /// Saves several entities of one kind, all or none (one
        /// transaction), each as [`save_entity`](Self::save_entity) does.
        /// Returns them as saved, in order.
        ///
        /// # Errors
        ///
        /// As [`save_entity`](Self::save_entity), for the first that fails;
        /// nothing is saved then.
        #[track_caller]
        pub fn save_entities<E: Serialize>(
            $($recv)+,
            name: &str,
            entities: &[E],
            user_id: Option<&str>,
            comment: Option<&str>,
        ) -> Result<Vec<J>> {
            let entities = entities.iter().map(ops::to_json).collect::<Result<Vec<_>>>()?;
            let (mut r, _) = $s.runner();
            ops::save(&mut r, name, &entities, user_id, comment)
        }

        /// The entity `id` of kind `name`, as a `T` (a
        /// [`serde_json::Value`] or a struct of yours); `None` when there is
        /// none, or it is soft-deleted and the handle does not
        /// [`include_deleted`](Self::include_deleted).
        ///
        /// # Errors
        ///
        /// [`Conversion`](crate::ErrorKind::Conversion) when it does not fit
        /// `T`; an invalid name; any statement error.
        #[track_caller]
        pub fn get_entity<T: DeserializeOwned>($($recv)+, name: &str, id: &str) -> Result<Option<T>> {
            let (mut r, o) = $s.runner();
            ops::get(&mut r, o, name, id)?.map(ops::from_json).transpose()
        }

        /// The entity `id` of kind `name` as it was at `version`, from its
        /// history (deleted or not); `None` when there is no such version.
        ///
        /// To bring an old version back, save it without its `version`
        /// field (or with the current one): saved as it is, its old
        /// `version` is stale and refused.
        ///
        /// # Errors
        ///
        /// As [`get_entity`](Self::get_entity).
        #[track_caller]
        pub fn get_entity_by_version<T: DeserializeOwned>(
            $($recv)+,
            name: &str,
            id: &str,
            version: i64,
        ) -> Result<Option<T>> {
            let (mut r, _) = $s.runner();
            ops::by_version(&mut r, name, id, version)?.map(ops::from_json).transpose()
        }

        /// Every recorded version of the entity `id`, oldest first.
        ///
        /// # Errors
        ///
        /// As [`get_entity`](Self::get_entity).
        #[track_caller]
        pub fn get_entity_history<T: DeserializeOwned>(
            $($recv)+,
            name: &str,
            id: &str,
        ) -> Result<Vec<HistoryEntry<T>>> {
            let (mut r, _) = $s.runner();
            ops::history(&mut r, name, id)?
                .into_iter()
                .map(|h| {
                    Ok(HistoryEntry {
                        version: h.version,
                        operation: h.operation,
                        changed_at: h.changed_at,
                        changed_by: h.changed_by,
                        comment: h.comment,
                        entity: ops::from_json(h.entity)?,
                    })
                })
                .collect()
        }

        /// The entities of kind `name` that `find` selects, in its order
        /// (ties, and no order, by id). Soft-deleted ones only when the
        /// handle [`include_deleted`](Self::include_deleted). An entity kind
        /// never saved has none.
        ///
        /// # Errors
        ///
        /// [`Parameter`](crate::ErrorKind::Parameter) for a field the entity
        /// does not have; [`Conversion`](crate::ErrorKind::Conversion) for a
        /// value that cannot be compared with its field; as
        /// [`get_entity`](Self::get_entity).
        #[track_caller]
        pub fn find_entities<T: DeserializeOwned>($($recv)+, name: &str, find: &Find) -> Result<Vec<T>> {
            let (mut r, o) = $s.runner();
            ops::find(&mut r, o, name, find)?.into_iter().map(ops::from_json).collect()
        }

        /// How many entities of kind `name` match `find`'s conditions (its
        /// order and page are ignored).
        ///
        /// # Errors
        ///
        /// As [`find_entities`](Self::find_entities).
        #[track_caller]
        pub fn count_entities($($recv)+, name: &str, find: &Find) -> Result<u64> {
            let (mut r, o) = $s.runner();
            ops::count(&mut r, o, name, find)
        }

        /// Deletes the entity `id`: [`Deletion::Soft`] sets `deleted_at`
        /// (a new version, in the history), [`Deletion::Permanent`] removes
        /// it and its history. Returns whether there was something to delete.
        ///
        /// # Errors
        ///
        /// [`ReadOnly`](crate::ErrorKind::ReadOnly) on a read-only
        /// database; as [`get_entity`](Self::get_entity).
        #[track_caller]
        pub fn delete_entity(
            $($recv)+,
            name: &str,
            id: &str,
            user_id: Option<&str>,
            how: Deletion,
        ) -> Result<bool> {
            let (mut r, _) = $s.runner();
            ops::delete(&mut r, name, id, user_id, how)
        }

        /// Brings a soft-deleted entity back (clears `deleted_at`; a new
        /// version, in the history). Returns whether it was deleted.
        ///
        /// # Errors
        ///
        /// As [`delete_entity`](Self::delete_entity).
        #[track_caller]
        pub fn restore_entity($($recv)+, name: &str, id: &str, user_id: Option<&str>) -> Result<bool> {
            let (mut r, _) = $s.runner();
            ops::restore(&mut r, name, id, user_id)
        }
    };
}

impl Entities {
    entity_methods!(&self);
}

impl TxEntities<'_, '_> {
    entity_methods!(&mut self);
}
