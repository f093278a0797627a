//! Portable SQL: `?`, `:name`, `[ident]` and `??` translated to each backend's native
//! form, and the other readings the library makes of a statement.
//!
//! Users write one statement with `?` positional or `:name` named placeholders and
//! `[identifier]` quoting; [`translate`] rewrites it for one [`Dialect`],
//! [`normalise`] gives its shape for logs and statistics, and
//! [`classify_statement`] tells reads from writes for read-only databases. All three
//! read the statement through one lexer, so they agree on what is a string literal, a
//! quoted identifier, a comment or a dollar-quoted body.
//!
//! - `lex`: the lexer, an iterator of tokens (a kind and a byte span each) under one
//!   dialect's lexical rules, or the dialect-agnostic rules of the classifier;
//! - `translate`: portable placeholders and `[identifier]`s rewritten, everything
//!   else copied byte-identical;
//! - `normalise`: comments dropped, whitespace collapsed, literals replaced by `?`;
//! - `classify`: a statement's first keywords say whether it reads or writes;
//! - `tables`: the tables a statement reads or writes, for the query cache;
//! - `bind`: the caller's values put in the order of a translated statement's
//!   placeholders.

mod bind;
mod classify;
mod lex;
mod normalise;
mod script;
mod tables;
mod translate;

use std::fmt;

// used by the pipeline
pub(crate) use bind::bind_ref;
pub(crate) use classify::{classify_statement, StatementKind};
pub(crate) use normalise::normalise;
// used by migrations
pub(crate) use script::{replace_placeholders, split_script, ScriptError, Statement, TxControl};
pub(crate) use tables::{read_tables, written_tables, Tables};
pub(crate) use translate::translate;

/// The SQL dialect a statement is translated to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Dialect {
    /// PostgreSQL: `$1` placeholders, `"ident"` quoting.
    Postgres,
    /// MySQL and MariaDB: `?` placeholders, `` `ident` `` quoting.
    MySql,
    /// SQLite: `?` placeholders, `"ident"` quoting.
    Sqlite,
    /// SQL Server: `@P1` placeholders, `[ident]` quoting.
    MsSql,
}

impl Dialect {
    /// What to put before a statement to have the backend explain its plan
    /// (`None`: not available here).
    pub(crate) fn explain_prefix(self) -> Option<&'static str> {
        match self {
            Dialect::Postgres => Some("EXPLAIN (FORMAT JSON) "),
            Dialect::MySql => Some("EXPLAIN FORMAT=JSON "),
            Dialect::Sqlite => Some("EXPLAIN QUERY PLAN "),
            // SHOWPLAN needs a session switch (SET SHOWPLAN_XML ON) that this
            // release does not make.
            Dialect::MsSql => None,
        }
    }
}

/// A statement in the backend's native form, with how user values map onto its placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Translated {
    /// The statement in the backend's native SQL.
    pub(crate) sql: String,
    /// How the caller's values map onto the native placeholders of `sql`.
    pub(crate) binds: Binds,
}

/// How the caller's values map onto a translated statement's native placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Binds {
    /// No portable placeholder in the text: values are bound in the order given (native placeholders like `$1`, `@P1`, or none at all).
    Native,
    /// `count` portable `?` placeholders; native slot i takes the caller's value i.
    Positional(usize),
    /// `:name` placeholders: native slot i takes the value named `names[i]`.
    /// Postgres (`$n`) and SQL Server (`@Pn`) reuse one number for a repeated name, so names are unique there;
    /// MySQL and SQLite (`?`) repeat the name once per occurrence.
    Named(Vec<String>),
}

/// Why a statement could not be translated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SqlError {
    /// What is wrong; an optional hint follows the first `"; "`.
    pub(crate) message: String,
    /// Byte offset in the original statement where the problem was found.
    pub(crate) position: usize,
}

impl fmt::Display for SqlError {
    /// Formats as `what (at byte N); hint`, or `what (at byte N)` when there is no hint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message.split_once("; ") {
            Some((what, hint)) => write!(f, "{what} (at byte {}); {hint}", self.position),
            None => write!(f, "{} (at byte {})", self.message, self.position),
        }
    }
}

impl std::error::Error for SqlError {}

/// Quotes a validated identifier for the dialect ("x" / `x` / [x]), doubling the closing quote character inside.
///
/// A dot separates schema and table (as [`is_plain_identifier`] allows), so each part is
/// quoted on its own: `public.users` becomes `"public"."users"`.
pub(crate) fn quote_identifier(name: &str, dialect: Dialect) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (k, part) in name.split('.').enumerate() {
        if k > 0 {
            out.push('.');
        }
        push_quoted(&mut out, part, dialect);
    }
    out
}

/// Checks that `name` is a plain identifier (ASCII letter or `_` first, then letters, digits, `_`; optionally one `schema.table` dot; at most 63 bytes). Used for table names that come from configuration.
///
/// The 63-byte limit applies to the whole name, dot included.
pub(crate) fn is_plain_identifier(name: &str) -> bool {
    fn part_ok(part: &str) -> bool {
        let b = part.as_bytes();
        matches!(b.first(), Some(c) if c.is_ascii_alphabetic() || *c == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
    }
    if name.len() > 63 {
        return false;
    }
    match name.split_once('.') {
        None => part_ok(name),
        Some((schema, table)) => part_ok(schema) && part_ok(table),
    }
}

/// Appends `content` quoted for `dialect`, doubling the closing quote character.
fn push_quoted(out: &mut String, content: &str, dialect: Dialect) {
    let (open, close) = match dialect {
        Dialect::Postgres | Dialect::Sqlite => ('"', '"'),
        Dialect::MySql => ('`', '`'),
        Dialect::MsSql => ('[', ']'),
    };
    out.push(open);
    for ch in content.chars() {
        if ch == close {
            out.push(close);
        }
        out.push(ch);
    }
    out.push(close);
}

/// A quick hash for statement texts (the keys of statement caches and
/// statistics), eight bytes a step (SipHash, the
/// default, costs more than the rest of recording a statement). The texts
/// come from the program, not from an adversary, and the table is bounded.
#[derive(Default)]
pub(crate) struct TextHasher(u64);

impl std::hash::Hasher for TextHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or_default());
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        let mut last = [0u8; 8];
        let rest = chunks.remainder();
        last[..rest.len()].copy_from_slice(rest);
        self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(last) ^ (rest.len() as u64) << 56)
            .wrapping_mul(K);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type TextHash = std::hash::BuildHasherDefault<TextHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use Dialect::{MsSql, MySql, Postgres, Sqlite};

    #[test]
    fn quote_identifier_per_dialect() {
        assert_eq!(quote_identifier("users", Postgres), "\"users\"");
        assert_eq!(quote_identifier("users", Sqlite), "\"users\"");
        assert_eq!(quote_identifier("users", MySql), "`users`");
        assert_eq!(quote_identifier("users", MsSql), "[users]");
        assert_eq!(
            quote_identifier("public.users", Postgres),
            "\"public\".\"users\""
        );
        assert_eq!(quote_identifier("dbo.users", MsSql), "[dbo].[users]");
        assert_eq!(quote_identifier("a\"b", Postgres), "\"a\"\"b\"");
        assert_eq!(quote_identifier("a`b", MySql), "`a``b`");
        assert_eq!(quote_identifier("a]b[", MsSql), "[a]]b[]");
        assert_eq!(quote_identifier("", Postgres), "\"\"");
    }

    #[test]
    fn plain_identifiers() {
        for ok in ["users", "_x1", "A", "public.users", "_._", &"a".repeat(63)] {
            assert!(is_plain_identifier(ok), "{ok}");
        }
        let long = format!("{}.{}", "a".repeat(31), "b".repeat(32));
        for bad in [
            "",
            "1a",
            "a.b.c",
            "a.",
            ".a",
            "a-b",
            "a b",
            "a\"b",
            "naïve",
            "a.1b",
            &"a".repeat(64),
            &long,
        ] {
            assert!(!is_plain_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn error_display_and_trait() {
        let e = SqlError {
            message: "bad thing".into(),
            position: 3,
        };
        assert_eq!(e.to_string(), "bad thing (at byte 3)");
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(boxed.source().is_none());
    }
}
