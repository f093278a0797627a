//! Values, rows and parameters: the data that crosses the library's boundary.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use rust_decimal::Decimal;
use serde::de::{
    DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor,
};
use serde::ser::{Serialize, SerializeMap, Serializer};
use uuid::Uuid;

use crate::error::{Error, Result};

/// One SQL value, as sent to or read from any backend.
///
/// Each backend converts to and from its own types; where a server type is
/// narrower than the Rust one (an `int` column read as `i64`), the library
/// widens, and where it is wider it checks the range.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// A boolean.
    Bool(bool),
    /// Any integer (read from `smallint`, `int`, `bigint`, …).
    I64(i64),
    /// Any float (`real`, `double precision`, …).
    F64(f64),
    /// An exact decimal (`numeric`, `decimal`).
    Decimal(Decimal),
    /// Text.
    Text(String),
    /// Raw bytes (`bytea`, `blob`, `varbinary`).
    Bytes(Vec<u8>),
    /// A calendar date.
    Date(NaiveDate),
    /// A time of day.
    Time(NaiveTime),
    /// A timestamp without time zone.
    Timestamp(NaiveDateTime),
    /// A timestamp with time zone, normalised to UTC.
    TimestampTz(DateTime<Utc>),
    /// A UUID.
    Uuid(Uuid),
    /// A JSON document.
    Json(serde_json::Value),
}

impl Value {
    /// True for `Value::Null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A short name of the variant, for error messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Bool(_) => "bool",
            Value::I64(_) => "integer",
            Value::F64(_) => "float",
            Value::Decimal(_) => "decimal",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
            Value::Date(_) => "date",
            Value::Time(_) => "time",
            Value::Timestamp(_) => "timestamp",
            Value::TimestampTz(_) => "timestamptz",
            Value::Uuid(_) => "uuid",
            Value::Json(_) => "json",
        }
    }

    /// The value as JSON, as rows serialise it: dates and timestamps as ISO
    /// 8601 text, decimals as text (no precision lost), bytes as an array.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::I64(i) => J::from(*i),
            Value::F64(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Decimal(d) => J::String(d.to_string()),
            Value::Text(s) => J::String(s.clone()),
            Value::Bytes(b) => J::Array(b.iter().map(|x| J::from(*x)).collect()),
            Value::Date(d) => J::String(d.to_string()),
            Value::Time(t) => J::String(t.to_string()),
            Value::Timestamp(t) => J::String(t.format("%Y-%m-%dT%H:%M:%S%.f").to_string()),
            Value::TimestampTz(t) => {
                J::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            }
            Value::Uuid(u) => J::String(u.to_string()),
            Value::Json(j) => j.clone(),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

macro_rules! value_from {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from($v: $t) -> Value { $e }
        })*
    };
}

value_from! {
    bool => |v| Value::Bool(v),
    i8 => |v| Value::I64(v.into()),
    i16 => |v| Value::I64(v.into()),
    i32 => |v| Value::I64(v.into()),
    i64 => |v| Value::I64(v),
    u8 => |v| Value::I64(v.into()),
    u16 => |v| Value::I64(v.into()),
    u32 => |v| Value::I64(v.into()),
    f32 => |v| Value::F64(v.into()),
    f64 => |v| Value::F64(v),
    Decimal => |v| Value::Decimal(v),
    String => |v| Value::Text(v),
    &str => |v| Value::Text(v.to_owned()),
    &String => |v| Value::Text(v.clone()),
    Vec<u8> => |v| Value::Bytes(v),
    &[u8] => |v| Value::Bytes(v.to_vec()),
    NaiveDate => |v| Value::Date(v),
    NaiveTime => |v| Value::Time(v),
    NaiveDateTime => |v| Value::Timestamp(v),
    DateTime<Utc> => |v| Value::TimestampTz(v),
    Uuid => |v| Value::Uuid(v),
    serde_json::Value => |v| Value::Json(v),
    &Value => |v| v.clone(),
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Conversion from a [`Value`] read from a row into a Rust type.
///
/// Conversions are lenient where no information is lost (an integer column
/// read as `f64`, `0`/`1` read as `bool`, ISO text read as a date) and
/// checked where it could be (an `i64` that does not fit an `i32`).
pub trait FromValue: Sized {
    /// Converts the value.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Conversion`](crate::ErrorKind::Conversion) when the value
    /// cannot be represented as `Self` (including `NULL` for non-`Option` types).
    fn from_value(value: &Value) -> Result<Self>;

    /// Converts a value its owner gives up ([`Row::take`]): text, bytes and
    /// whole values are moved out of `value` rather than copied. By default
    /// as [`from_value`](Self::from_value). On an error, `value` must be
    /// left as it was.
    ///
    /// # Errors
    ///
    /// As [`from_value`](Self::from_value).
    fn take_value(value: &mut Value) -> Result<Self> {
        Self::from_value(value)
    }
}

#[cold]
fn mismatch(value: &Value, target: &str) -> Error {
    Error::conversion(format!(
        "cannot read a {} value as {target}",
        value.type_name()
    ))
}

impl FromValue for Value {
    fn from_value(value: &Value) -> Result<Self> {
        Ok(value.clone())
    }

    fn take_value(value: &mut Value) -> Result<Self> {
        Ok(std::mem::replace(value, Value::Null))
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }

    fn take_value(value: &mut Value) -> Result<Self> {
        match value {
            Value::Null => Ok(None),
            v => T::take_value(v).map(Some),
        }
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Bool(b) => Ok(*b),
            Value::I64(0) => Ok(false),
            Value::I64(1) => Ok(true),
            Value::Text(s) if s.eq_ignore_ascii_case("true") || s == "1" => Ok(true),
            Value::Text(s) if s.eq_ignore_ascii_case("false") || s == "0" => Ok(false),
            v => Err(mismatch(v, "bool")),
        }
    }
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::I64(i) => Ok(*i),
            Value::Bool(b) => Ok(i64::from(*b)),
            Value::Decimal(d) if d.fract().is_zero() => {
                i64::try_from(*d).map_err(|_| mismatch(value, "i64"))
            }
            Value::Text(s) => s.trim().parse().map_err(|_| mismatch(value, "i64")),
            v => Err(mismatch(v, "i64")),
        }
    }
}

macro_rules! from_value_via_i64 {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: &Value) -> Result<Self> {
                let wide = i64::from_value(value)?;
                <$t>::try_from(wide).map_err(|_| {
                    Error::conversion(format!("{wide} does not fit in {}", stringify!($t)))
                })
            }
        }
    )*};
}
from_value_via_i64!(i8, i16, i32, u8, u16, u32, u64, usize);

impl FromValue for f64 {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::F64(f) => Ok(*f),
            Value::I64(i) => Ok(*i as f64),
            Value::Decimal(d) => d.to_string().parse().map_err(|_| mismatch(value, "f64")),
            Value::Text(s) => s.trim().parse().map_err(|_| mismatch(value, "f64")),
            v => Err(mismatch(v, "f64")),
        }
    }
}

impl FromValue for f32 {
    fn from_value(value: &Value) -> Result<Self> {
        f64::from_value(value).map(|f| f as f32)
    }
}

impl FromValue for Decimal {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Decimal(d) => Ok(*d),
            Value::I64(i) => Ok(Decimal::from(*i)),
            Value::F64(f) => Decimal::try_from(*f).map_err(|_| mismatch(value, "Decimal")),
            Value::Text(s) => s.trim().parse().map_err(|_| mismatch(value, "Decimal")),
            v => Err(mismatch(v, "Decimal")),
        }
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Text(s) => Ok(s.clone()),
            // As strict as the numbers are on text: an integer, float or
            // bool column is read with its own type, not quietly as text.
            Value::Null | Value::Bytes(_) | Value::I64(_) | Value::F64(_) | Value::Bool(_) => {
                Err(mismatch(value, "String"))
            }
            Value::Json(serde_json::Value::String(s)) => Ok(s.clone()),
            Value::Json(j) => Ok(j.to_string()),
            v => match v.to_json() {
                serde_json::Value::String(s) => Ok(s),
                other => Ok(other.to_string()),
            },
        }
    }

    fn take_value(value: &mut Value) -> Result<Self> {
        match value {
            Value::Text(s) => Ok(std::mem::take(s)),
            v => Self::from_value(v),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Bytes(b) => Ok(b.clone()),
            Value::Text(s) => Ok(s.as_bytes().to_vec()),
            v => Err(mismatch(v, "bytes")),
        }
    }

    fn take_value(value: &mut Value) -> Result<Self> {
        match value {
            Value::Bytes(b) => Ok(std::mem::take(b)),
            Value::Text(s) => Ok(std::mem::take(s).into_bytes()),
            v => Self::from_value(v),
        }
    }
}

impl FromValue for NaiveDate {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Date(d) => Ok(*d),
            Value::Timestamp(t) => Ok(t.date()),
            Value::Text(s) => parse_date(s).ok_or_else(|| mismatch(value, "a date")),
            v => Err(mismatch(v, "a date")),
        }
    }
}

impl FromValue for NaiveTime {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Time(t) => Ok(*t),
            Value::Text(s) => parse_time(s).ok_or_else(|| mismatch(value, "a time")),
            v => Err(mismatch(v, "a time")),
        }
    }
}

impl FromValue for NaiveDateTime {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Timestamp(t) => Ok(*t),
            Value::Date(d) => Ok(d.and_time(NaiveTime::MIN)),
            Value::Text(s) => parse_timestamp(s).ok_or_else(|| mismatch(value, "a timestamp")),
            v => Err(mismatch(v, "a timestamp")),
        }
    }
}

impl FromValue for DateTime<Utc> {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::TimestampTz(t) => Ok(*t),
            // A timestamp without zone is taken as UTC, as text without an
            // offset is (MySQL's DATETIME has no zone).
            Value::Timestamp(t) => Ok(t.and_utc()),
            Value::Text(s) => {
                parse_timestamptz(s).ok_or_else(|| mismatch(value, "a timestamp with time zone"))
            }
            v => Err(mismatch(v, "a timestamp with time zone")),
        }
    }
}

impl FromValue for Uuid {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Uuid(u) => Ok(*u),
            Value::Text(s) => Uuid::parse_str(s.trim()).map_err(|_| mismatch(value, "a uuid")),
            Value::Bytes(b) => Uuid::from_slice(b).map_err(|_| mismatch(value, "a uuid")),
            v => Err(mismatch(v, "a uuid")),
        }
    }
}

impl FromValue for serde_json::Value {
    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Json(j) => Ok(j.clone()),
            Value::Text(s) => serde_json::from_str(s).map_err(|_| mismatch(value, "JSON")),
            v => Ok(v.to_json()),
        }
    }
}

/// Parses `YYYY-MM-DD`.
pub(crate) fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()
}

/// Parses `HH:MM[:SS[.fff]]`.
pub(crate) fn parse_time(s: &str) -> Option<NaiveTime> {
    let s = s.trim();
    NaiveTime::parse_from_str(s, "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M"))
        .ok()
}

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.fff]`.
pub(crate) fn parse_timestamp(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim();
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
        .ok()
        .or_else(|| parse_date(s).map(|d| d.and_time(NaiveTime::MIN)))
}

/// Parses RFC 3339 or `YYYY-MM-DD HH:MM:SS[.fff]+HH:MM`; text without an
/// offset is taken as UTC.
pub(crate) fn parse_timestamptz(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| parse_timestamp(s).map(|t| t.and_utc()))
}

/// Column names of a result, shared by all its rows.
pub(crate) type Columns = Arc<[Arc<str>]>;

/// Values a [`Row`] holds inside itself; a wider row keeps them on the
/// heap. Narrow rows (ids, key and value, the rows a batch job pages
/// through) then cost one allocation fewer each, and a row stays within
/// two cache lines.
pub(crate) const INLINE_VALUES: usize = 3;

/// A row's values, in column order.
pub(crate) type Values = smallvec::SmallVec<[Value; INLINE_VALUES]>;

/// One row of a result: column names (shared across the result) and values.
///
/// Serialises as a JSON object in column order.
#[derive(Clone, PartialEq)]
pub struct Row {
    columns: Columns,
    values: Values,
}

impl Row {
    pub(crate) fn new(columns: Columns, values: Values) -> Row {
        debug_assert_eq!(columns.len(), values.len());
        Row { columns, values }
    }

    /// Reads column `index` (a name or a 0-based position) as `T`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Parameter`](crate::ErrorKind::Parameter) when there is no
    /// such column; [`ErrorKind::Conversion`](crate::ErrorKind::Conversion)
    /// when the value cannot be read as `T`. Reads are as strict one way as
    /// the other: an integer, float or bool column is not read as a
    /// `String` (as a text column is not read as an `i64`); a decimal, date,
    /// time, UUID or JSON value reads as its text.
    pub fn get<T: FromValue>(&self, index: impl ColumnIndex) -> Result<T> {
        let i = index.position(&self.columns)?;
        T::from_value(&self.values[i]).map_err(|e| {
            Error::conversion(format!("column `{}`: {}", self.columns[i], e_message(&e)))
        })
    }

    /// Moves the value of column `index` out of the row as `T`, leaving
    /// NULL in its place: text and bytes are handed over, not copied as
    /// [`get`](Self::get) copies them. For rows read one at a time (a
    /// [`stream`](crate::DatabaseManager::stream)) that are not needed
    /// afterwards.
    ///
    /// ```
    /// # use dbmanager::{Result, Row};
    /// fn name_of(mut row: Row) -> Result<String> {
    ///     row.take("name")
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get); after an error the value is still in the row.
    pub fn take<T: FromValue>(&mut self, index: impl ColumnIndex) -> Result<T> {
        let i = index.position(&self.columns)?;
        match T::take_value(&mut self.values[i]) {
            Ok(v) => {
                self.values[i] = Value::Null;
                Ok(v)
            }
            Err(e) => Err(Error::conversion(format!(
                "column `{}`: {}",
                self.columns[i],
                e_message(&e)
            ))),
        }
    }

    /// The raw value of column `index`, if the column exists.
    pub fn value(&self, index: impl ColumnIndex) -> Option<&Value> {
        index.position(&self.columns).ok().map(|i| &self.values[i])
    }

    /// Column names, in order.
    pub fn columns(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.columns.iter().map(|c| &**c)
    }

    /// Values, in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True for a row with no columns.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Takes the values out of the row.
    pub fn into_values(self) -> Vec<Value> {
        self.values.into_vec()
    }

    /// The row as a JSON object (`{"id": 1, "name": "x"}`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.columns
                .iter()
                .zip(&self.values)
                .map(|(c, v)| (c.to_string(), v.to_json()))
                .collect(),
        )
    }

    /// Deserialises the row into `T` through serde, matching fields by column name.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Conversion`](crate::ErrorKind::Conversion) naming the
    /// field that did not fit.
    ///
    /// Each value reads as its JSON form does (see [`to_json`](Self::to_json)),
    /// except a decimal, which reads as its text into a `String` or
    /// [`Decimal`] field and as a number into an `f64`/`f32` field (or an
    /// integer field, when it has no fraction and fits).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(RowDeserializer(self))
            .map_err(|e| Error::conversion(format!("row does not fit the target type: {e}")))
    }
}

/// Deserialises a [`Row`] as a map of column names to values, as its JSON
/// object would (a repeated column name: the last one), without building
/// that object.
struct RowDeserializer<'a>(&'a Row);

/// Forwards the listed `deserialize_*` methods to the JSON form of
/// `self.0` (a row or a value).
macro_rules! forward_to_json {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, Self::Error> {
            self.0.to_json().$method(visitor)
        }
    )*};
}

impl<'de> Deserializer<'de> for RowDeserializer<'_> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        visitor.visit_map(RowMap {
            row: self.0,
            next: 0,
            value: None,
        })
    }

    fn deserialize_map<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        self.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        self.deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        self.0.to_json().deserialize_unit_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        self.0.to_json().deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        self.0
            .to_json()
            .deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        self.0.to_json().deserialize_enum(name, variants, visitor)
    }

    forward_to_json! {
        deserialize_bool, deserialize_i8, deserialize_i16, deserialize_i32, deserialize_i64,
        deserialize_i128, deserialize_u8, deserialize_u16, deserialize_u32, deserialize_u64,
        deserialize_u128, deserialize_f32, deserialize_f64, deserialize_char, deserialize_str,
        deserialize_string, deserialize_bytes, deserialize_byte_buf, deserialize_unit,
        deserialize_seq, deserialize_identifier, deserialize_ignored_any,
    }
}

/// The columns of a row, in order, each name once (its last column).
struct RowMap<'a> {
    row: &'a Row,
    next: usize,
    value: Option<&'a Value>,
}

impl<'de> MapAccess<'de> for RowMap<'_> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> std::result::Result<Option<K::Value>, Self::Error> {
        let columns = &self.row.columns;
        while self.next < columns.len() {
            let i = self.next;
            self.next += 1;
            if columns[i + 1..].iter().any(|c| *c == columns[i]) {
                continue; // a later column of the same name wins, as in JSON
            }
            self.value = Some(&self.row.values[i]);
            let key: serde::de::value::StrDeserializer<'_, serde_json::Error> =
                columns[i].as_ref().into_deserializer();
            return seed.deserialize(key).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> std::result::Result<S::Value, Self::Error> {
        let value = self
            .value
            .take()
            .ok_or_else(|| serde::de::Error::custom("a value was asked for before its key"))?;
        seed.deserialize(CellDeserializer(value))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.row.values.len() - self.next)
    }
}

/// One value of a row: its JSON form, except that a decimal also reads as
/// a float (and an integer without fraction as an integer).
struct CellDeserializer<'a>(&'a Value);

impl CellDeserializer<'_> {
    /// The decimal's value as the closest `f64`.
    fn float(d: &Decimal) -> std::result::Result<f64, serde_json::Error> {
        d.to_string()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("the decimal {d} is not a number")))
    }

    /// Reads an integer target: a decimal without fraction that fits in
    /// 64 bits as that integer, anything else as its JSON form (whose
    /// visitor says what was wrong).
    fn integer<'de, V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> std::result::Result<V::Value, serde_json::Error> {
        if let Value::Decimal(d) = self.0 {
            if d.fract().is_zero() {
                if let Ok(i) = i64::try_from(*d) {
                    return visitor.visit_i64(i);
                }
                if let Ok(u) = u64::try_from(*d) {
                    return visitor.visit_u64(u);
                }
            }
        }
        self.0.to_json().deserialize_any(visitor)
    }
}

macro_rules! cell_integers {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, Self::Error> {
            self.integer(visitor)
        }
    )*};
}

impl<'de> Deserializer<'de> for CellDeserializer<'_> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        self.0.to_json().deserialize_any(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        match self.0 {
            Value::Decimal(d) => visitor.visit_f64(Self::float(d)?),
            v => v.to_json().deserialize_f64(visitor),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        self.deserialize_f64(visitor)
    }

    cell_integers! {
        deserialize_i8, deserialize_i16, deserialize_i32, deserialize_i64, deserialize_i128,
        deserialize_u8, deserialize_u16, deserialize_u32, deserialize_u64, deserialize_u128,
    }

    fn deserialize_option<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            // Decimals only: other values read as their JSON form does.
            Value::Decimal(_) => visitor.visit_some(self),
            v => v.to_json().deserialize_option(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        match self.0 {
            Value::Decimal(_) => visitor.visit_newtype_struct(self),
            v => v.to_json().deserialize_newtype_struct(name, visitor),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        self.0.to_json().deserialize_unit_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        self.0.to_json().deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        self.0
            .to_json()
            .deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        self.0.to_json().deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        self.0.to_json().deserialize_enum(name, variants, visitor)
    }

    forward_to_json! {
        deserialize_bool, deserialize_char, deserialize_str, deserialize_string,
        deserialize_bytes, deserialize_byte_buf, deserialize_unit, deserialize_seq,
        deserialize_map, deserialize_identifier, deserialize_ignored_any,
    }
}

fn e_message(e: &Error) -> String {
    let full = e.to_string();
    full.strip_prefix("value conversion error: ")
        .map(str::to_owned)
        .unwrap_or(full)
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.columns.iter().zip(&self.values))
            .finish()
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.values.len()))?;
        for (c, v) in self.columns.iter().zip(&self.values) {
            map.serialize_entry(&**c, v)?;
        }
        map.end()
    }
}

/// A way to name a column: its name or its 0-based position.
pub trait ColumnIndex: sealed::Sealed {
    #[doc(hidden)]
    fn position(&self, columns: &[Arc<str>]) -> Result<usize>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for usize {}
    impl Sealed for &str {}
}

impl ColumnIndex for usize {
    fn position(&self, columns: &[Arc<str>]) -> Result<usize> {
        if *self < columns.len() {
            Ok(*self)
        } else {
            Err(Error::parameter(format!(
                "column index {self} is out of range: the row has {} columns",
                columns.len()
            )))
        }
    }
}

impl ColumnIndex for &str {
    fn position(&self, columns: &[Arc<str>]) -> Result<usize> {
        columns
            .iter()
            .position(|c| &**c == *self)
            .or_else(|| columns.iter().position(|c| c.eq_ignore_ascii_case(self)))
            .ok_or_else(|| {
                let names: Vec<&str> = columns.iter().map(|c| &**c).collect();
                Error::parameter(format!(
                    "no column named `{self}`; the row has {}",
                    names.join(", ")
                ))
            })
    }
}

/// Statement parameters: positional (for `?` and native placeholders) or
/// named (for `:name`).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum Params {
    /// No parameters.
    #[default]
    None,
    /// Values in placeholder order.
    Positional(Vec<Value>),
    /// Values by name, for `:name` placeholders.
    Named(Vec<(String, Value)>),
}

impl Params {
    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        match self {
            Params::None => true,
            Params::Positional(v) => v.is_empty(),
            Params::Named(v) => v.is_empty(),
        }
    }
}

/// Anything that can be given as statement parameters: `()`, a tuple of up to
/// 12 values, a slice or `Vec` of [`Value`], a map of names to values, or
/// [`params!`](crate::params).
pub trait IntoParams {
    /// Converts into [`Params`].
    fn into_params(self) -> Params;

    /// Appends positional values to `out` and returns `None`; other
    /// parameters come back as they are. A bulk load reads each row into
    /// one reused buffer this way; tuples need no `Vec` of their own.
    #[doc(hidden)]
    fn append_params(self, out: &mut Vec<Value>) -> Option<Params>
    where
        Self: Sized,
    {
        match self.into_params() {
            Params::Positional(values) => {
                out.extend(values);
                None
            }
            other => Some(other),
        }
    }
}

impl IntoParams for Params {
    fn into_params(self) -> Params {
        self
    }
}

impl IntoParams for &Params {
    fn into_params(self) -> Params {
        self.clone()
    }
}

impl IntoParams for () {
    fn into_params(self) -> Params {
        Params::None
    }
}

impl IntoParams for Vec<Value> {
    fn into_params(self) -> Params {
        Params::Positional(self)
    }
}

impl IntoParams for &[Value] {
    fn into_params(self) -> Params {
        Params::Positional(self.to_vec())
    }
}

impl<const N: usize> IntoParams for [Value; N] {
    fn into_params(self) -> Params {
        Params::Positional(self.into())
    }
}

impl<K: Into<String>, V: Into<Value>> IntoParams for HashMap<K, V> {
    fn into_params(self) -> Params {
        Params::Named(
            self.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl<K: Into<String>, V: Into<Value>> IntoParams for BTreeMap<K, V> {
    fn into_params(self) -> Params {
        Params::Named(
            self.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl IntoParams for Vec<(String, Value)> {
    fn into_params(self) -> Params {
        Params::Named(self)
    }
}

macro_rules! tuple_params {
    ($($name:ident),+) => {
        impl<$($name: Into<Value>),+> IntoParams for ($($name,)+) {
            #[allow(non_snake_case)]
            fn into_params(self) -> Params {
                let ($($name,)+) = self;
                Params::Positional(vec![$($name.into()),+])
            }

            #[allow(non_snake_case)]
            fn append_params(self, out: &mut Vec<Value>) -> Option<Params> {
                let ($($name,)+) = self;
                $(out.push($name.into());)+
                None
            }
        }
    };
}
tuple_params!(A);
tuple_params!(A, B);
tuple_params!(A, B, C);
tuple_params!(A, B, C, D);
tuple_params!(A, B, C, D, E);
tuple_params!(A, B, C, D, E, F);
tuple_params!(A, B, C, D, E, F, G);
tuple_params!(A, B, C, D, E, F, G, H);
tuple_params!(A, B, C, D, E, F, G, H, I);
tuple_params!(A, B, C, D, E, F, G, H, I, J);
tuple_params!(A, B, C, D, E, F, G, H, I, J, K);
tuple_params!(A, B, C, D, E, F, G, H, I, J, K, L);

/// Parameters: named ones for `:name` placeholders (`"name" => value`),
/// or positional ones for `?` placeholders (values separated by commas).
///
/// ```
/// use dbmanager::{params, Params, Value};
/// let p = params! { "status" => "active", "limit" => 10 };
/// assert!(matches!(p, Params::Named(ref v) if v.len() == 2));
///
/// let p = params![true, 1, "x"];
/// assert!(matches!(p, Params::Positional(ref v)
///     if v == &[Value::Bool(true), Value::I64(1), Value::Text("x".into())]));
///
/// assert!(matches!(params!(), Params::None));
/// ```
#[macro_export]
macro_rules! params {
    () => { $crate::Params::None };
    ($($name:expr => $value:expr),+ $(,)?) => {
        $crate::Params::Named(::std::vec![
            $((::std::string::String::from($name), $crate::Value::from($value))),+
        ])
    };
    ($($value:expr),+ $(,)?) => {
        $crate::Params::Positional(::std::vec![$($crate::Value::from($value)),+])
    };
}

/// Feeds a value to a hasher: the query cache's keys, and the bulk
/// writer's check for a key repeated within a chunk. Floats hash by their
/// bits, JSON by its text.
pub(crate) fn hash_value(v: &Value, h: &mut impl std::hash::Hasher) {
    use std::hash::Hash;
    std::mem::discriminant(v).hash(h);
    match v {
        Value::Null => {}
        Value::Bool(b) => b.hash(h),
        Value::I64(i) => i.hash(h),
        Value::F64(f) => f.to_bits().hash(h),
        Value::Decimal(d) => d.hash(h),
        Value::Text(s) => s.hash(h),
        Value::Bytes(b) => b.hash(h),
        Value::Date(d) => d.hash(h),
        Value::Time(t) => t.hash(h),
        Value::Timestamp(t) => t.hash(h),
        Value::TimestampTz(t) => t.hash(h),
        Value::Uuid(u) => u.hash(h),
        Value::Json(j) => j.to_string().hash(h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_narrow_row_fits_two_cache_lines() {
        assert!(std::mem::size_of::<Row>() <= 128);
        let narrow = Row::new(
            vec![Arc::from("id"), Arc::from("name")].into(),
            smallvec::smallvec![Value::I64(1), Value::Text("a".into())],
        );
        assert!(!narrow.values.spilled(), "held inline");
        assert_eq!(
            narrow.into_values(),
            vec![Value::I64(1), Value::Text("a".into())]
        );
    }

    fn row() -> Row {
        let cols: Columns = vec![Arc::from("id"), Arc::from("name"), Arc::from("when")].into();
        Row::new(
            cols,
            smallvec::smallvec![
                Value::I64(7),
                Value::Text("ada".into()),
                Value::Text("2024-01-15 10:30:00".into()),
            ],
        )
    }

    #[test]
    fn take_moves_a_value_out_and_leaves_it_on_an_error() -> Result<()> {
        let mut r = row();
        // A failed take leaves the value where it was.
        assert_eq!(
            r.take::<String>("id").unwrap_err().kind(),
            crate::ErrorKind::Conversion
        );
        assert_eq!(r.get::<i64>("id")?, 7);
        let name: String = r.take("name")?;
        assert_eq!(name, "ada");
        assert_eq!(r.value("name"), Some(&Value::Null));
        assert_eq!(r.take::<Option<String>>("name")?, None);
        assert_eq!(r.take::<i64>(0)?, 7);
        assert_eq!(r.value("id"), Some(&Value::Null));
        let when: Vec<u8> = r.take("when")?;
        assert_eq!(when, b"2024-01-15 10:30:00");
        assert!(r.take::<Value>("nope").is_err());
        Ok(())
    }

    #[test]
    fn string_is_strict_on_numbers() {
        let e = row().get::<String>("id").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Conversion);
        let msg = e.to_string();
        assert!(msg.contains("`id`"), "{msg}");
        assert!(msg.contains("integer") && msg.contains("String"), "{msg}");
    }

    #[test]
    fn get_by_name_and_position_with_widening() -> Result<()> {
        let r = row();
        assert_eq!(r.get::<i64>("id")?, 7);
        assert_eq!(r.get::<i32>(0)?, 7);
        assert_eq!(r.get::<f64>("id")?, 7.0);
        assert_eq!(r.get::<String>("NAME")?, "ada");
        assert_eq!(
            r.get::<NaiveDateTime>("when")?,
            NaiveDate::from_ymd_opt(2024, 1, 15)
                .unwrap()
                .and_hms_opt(10, 30, 0)
                .unwrap()
        );
        Ok(())
    }

    #[test]
    fn missing_column_and_bad_conversion_are_errors() {
        let r = row();
        let e = r.get::<i64>("nope").unwrap_err();
        assert!(e.to_string().contains("id, name, when"), "{e}");
        let e = r.get::<i64>("name").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Conversion);
        assert!(e.to_string().contains("column `name`"), "{e}");
        assert!(r.get::<i64>(9).is_err());
        assert!(Option::<i64>::from_value(&Value::Null).unwrap().is_none());
        assert!(i64::from_value(&Value::Null).is_err());
        assert!(i8::from_value(&Value::I64(300)).is_err());
    }

    #[test]
    fn row_serialises_as_object_in_order() {
        let json = serde_json::to_string(&row()).unwrap();
        assert_eq!(
            json,
            r#"{"id":7,"name":"ada","when":"2024-01-15 10:30:00"}"#
        );
    }

    #[test]
    fn deserialize_into_struct() -> Result<()> {
        #[derive(serde::Deserialize)]
        struct P {
            id: i64,
            name: String,
        }
        let p: P = row().deserialize()?;
        assert_eq!((p.id, p.name.as_str()), (7, "ada"));
        Ok(())
    }

    #[test]
    fn deserialize_reads_decimals_as_floats_and_keeps_the_json_shape() -> Result<()> {
        let cols: Columns = vec![Arc::from("id"), Arc::from("amount"), Arc::from("id")].into();
        let r = Row::new(
            cols,
            smallvec::smallvec![
                Value::I64(1),
                Value::Decimal("2.50".parse().unwrap()),
                Value::I64(2),
            ],
        );
        #[derive(serde::Deserialize)]
        struct F {
            id: i64,
            amount: f64,
        }
        let f: F = r.deserialize()?;
        assert_eq!((f.id, f.amount), (2, 2.5), "the last `id` wins, as in JSON");
        // Any target reads what the row's JSON form reads.
        let json: serde_json::Value = r.deserialize()?;
        assert_eq!(json, r.to_json());
        let map: HashMap<String, serde_json::Value> = r.deserialize()?;
        assert_eq!(map["amount"], "2.50");
        let some: Option<F> = r.deserialize()?;
        assert!(some.is_some());
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Whole {
            amount: i64,
        }
        assert!(r.deserialize::<Whole>().is_err(), "2.50 is no integer");
        let big = Row::new(
            vec![Arc::from("amount")].into(),
            smallvec::smallvec![Value::Decimal(Decimal::from(u64::MAX))],
        );
        #[derive(serde::Deserialize)]
        struct Big {
            amount: u64,
        }
        assert_eq!(big.deserialize::<Big>()?.amount, u64::MAX);
        Ok(())
    }

    #[test]
    fn params_forms() {
        assert_eq!(().into_params(), Params::None);
        assert_eq!(
            (1, "a", None::<i64>).into_params(),
            Params::Positional(vec![Value::I64(1), Value::Text("a".into()), Value::Null])
        );
        let p = crate::params! { "a" => 1, "b" => true };
        assert_eq!(
            p,
            Params::Named(vec![
                ("a".into(), Value::I64(1)),
                ("b".into(), Value::Bool(true))
            ])
        );
    }

    #[test]
    fn timestamptz_text_forms() {
        let a = parse_timestamptz("2024-01-15T10:30:00Z").unwrap();
        let b = parse_timestamptz("2024-01-15 12:30:00+02:00").unwrap();
        let c = parse_timestamptz("2024-01-15 10:30:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
    }
}
