//! Portable SQL: `?`, `:name`, `[ident]` and `??` translated to each backend's native form.
//!
//! Users write one statement with `?` positional or `:name` named placeholders and
//! `[identifier]` quoting; [`translate`] rewrites it for one [`Dialect`]. The work is
//! done by a small single-pass byte scanner that knows just enough of each dialect's
//! lexical rules (string literals, quoted identifiers, comments, dollar quoting) to
//! leave everything that is not a portable token byte-identical. Splits happen only
//! at ASCII bytes, so multi-byte UTF-8 characters are never cut.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

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

/// Translates a portable statement to `dialect`'s native SQL.
///
/// `?` becomes `$n` (Postgres), `@Pn` (SQL Server) or stays `?` (MySQL, SQLite);
/// `:name` does the same with one number per distinct name where numbers exist;
/// `??` becomes a literal `?`; `[ident]` becomes the dialect's quoted identifier.
/// String literals, quoted identifiers, comments and dollar-quoted bodies are copied
/// byte-identical, as are native placeholders. Unterminated literals and comments are
/// copied to the end unchanged so the server can report them.
///
/// Fails when a statement mixes `?` and `:name`, mixes portable with native numbered
/// placeholders, writes `?` directly followed by a digit outside SQLite, or uses `??`
/// for MySQL or SQLite (where every `?` is a placeholder).
pub(crate) fn translate(sql: &str, dialect: Dialect) -> Result<Translated, SqlError> {
    if !sql.bytes().any(|b| matches!(b, b'?' | b':' | b'[')) {
        return Ok(Translated {
            sql: sql.to_owned(),
            binds: Binds::Native,
        });
    }
    Scanner::new(sql, dialect).run()
}

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

/// A byte that can continue an identifier or number (non-ASCII bytes count as letters).
fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// A byte that starts a word: an identifier, keyword or number.
fn is_word_start(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// A byte that can start an identifier (dollar-quote tags, SQLite `@name`/`$name`).
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// A byte that can start a `:name` placeholder's name.
fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

/// A byte that can continue a `:name` placeholder's name.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// End of a quoted run opened at `start` by `quote`; a doubled quote is an escape, and so
/// is a backslash when `backslash` is set. Unterminated: the end of input.
fn skip_quoted(b: &[u8], start: usize, quote: u8, backslash: bool) -> usize {
    let mut j = start + 1;
    while j < b.len() {
        let c = b[j];
        if c == quote {
            if b.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += if backslash && c == b'\\' { 2 } else { 1 };
    }
    b.len()
}

/// Index of the newline ending a line comment that starts at `start` (or the end of input).
fn line_end(b: &[u8], start: usize, cr_ends: bool) -> usize {
    b[start..]
        .iter()
        .position(|&c| c == b'\n' || (cr_ends && c == b'\r'))
        .map_or(b.len(), |p| start + p)
}

/// End of a `/* */` comment opened at `start`, counting nested openers when `nested`.
fn skip_block_comment(b: &[u8], start: usize, nested: bool) -> usize {
    let mut depth = 1usize;
    let mut j = start + 2;
    while j + 1 < b.len() {
        if b[j] == b'*' && b[j + 1] == b'/' {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else if nested && b[j] == b'/' && b[j + 1] == b'*' {
            depth += 1;
            j += 2;
        } else {
            j += 1;
        }
    }
    b.len()
}

/// End of the run of bytes from `start` that satisfy `pred`.
fn run_end(b: &[u8], start: usize, pred: fn(u8) -> bool) -> usize {
    b[start..]
        .iter()
        .position(|&c| !pred(c))
        .map_or(b.len(), |p| start + p)
}

/// The statement's shape for logs and statistics: comments dropped,
/// whitespace collapsed, string, number and dollar-quoted literals replaced
/// by `?` (so no value written into the SQL reaches a log), at most `max`
/// bytes (cut at a character boundary, with `…`).
pub(crate) fn normalise(sql: &str, dialect: Dialect, max: usize) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len().min(max) + 4);
    let mut i = 0;
    let mut space = false;
    let push = |out: &mut String, piece: &str, space: &mut bool| {
        if *space && !out.is_empty() {
            out.push(' ');
        }
        *space = false;
        out.push_str(piece);
    };
    while i < b.len() && out.len() < max {
        let c = b[i];
        let (end, literal) = match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                space = true;
                i += 1;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                space = true;
                i = line_end(b, i, false);
                continue;
            }
            b'#' if dialect == Dialect::MySql => {
                space = true;
                i = line_end(b, i, false);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                space = true;
                i = skip_block_comment(b, i, dialect != Dialect::MySql);
                continue;
            }
            b'\'' => (skip_quoted(b, i, b'\'', dialect == Dialect::MySql), true),
            b'"' if dialect == Dialect::MySql => (skip_quoted(b, i, b'"', true), true),
            b'"' => (skip_quoted(b, i, b'"', false), false),
            b'`' => (skip_quoted(b, i, b'`', false), false),
            b'$' if dialect == Dialect::Postgres
                && b.get(i + 1)
                    .is_some_and(|&n| n == b'$' || is_ident_start(n)) =>
            {
                let tag_end = run_end(b, i + 1, |c| is_ident_start(c) || c.is_ascii_digit());
                if b.get(tag_end) == Some(&b'$') {
                    let tag = &sql[i..=tag_end];
                    let body = tag_end + 1;
                    (
                        sql[body..]
                            .find(tag)
                            .map_or(b.len(), |p| body + p + tag.len()),
                        true,
                    )
                } else {
                    (i + 1, false)
                }
            }
            _ if c.is_ascii_digit() => (
                run_end(b, i, |c| c.is_ascii_alphanumeric() || c == b'.'),
                true,
            ),
            _ if is_word_start(c) => (run_end(b, i, is_ident_byte), false),
            _ => {
                // One character of punctuation (UTF-8 safe: ASCII here).
                let len = sql[i..].chars().next().map_or(1, char::len_utf8);
                (i + len, false)
            }
        };
        let end = end.min(b.len());
        push(
            &mut out,
            if literal { "?" } else { &sql[i..end] },
            &mut space,
        );
        i = end;
    }
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    if i < b.len() {
        out.push('…');
    }
    out
}

/// What a statement does to the database, as far as its keywords tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StatementKind {
    /// Only reads: `SELECT`, `SHOW`, `EXPLAIN`, `VALUES`, `WITH … SELECT`.
    Read,
    /// Writes; the keyword that says so (`INSERT`, `CREATE`, …).
    Write(String),
    /// Cannot tell from the keywords (`CALL`, `EXEC`, `SET`, `PRAGMA`, …):
    /// left to the server's session-level read-only setting.
    Unknown,
}

/// First keywords of statements that change data, schema or permissions.
const WRITE_KEYWORDS: &[&str] = &[
    "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "REPLACE", "CREATE", "ALTER", "DROP",
    "TRUNCATE", "GRANT", "REVOKE", "DENY", "RENAME", "COMMENT", "LOAD", "IMPORT", "REINDEX",
    "CLUSTER", "VACUUM", "REFRESH", "SECURITY", "OPTIMIZE", "REPAIR",
];

/// First keywords of statements that only read.
const READ_KEYWORDS: &[&str] = &["SELECT", "SHOW", "VALUES", "TABLE", "DESCRIBE", "DESC"];

/// Keywords that write wherever they appear inside a `WITH` or `EXPLAIN`
/// (PostgreSQL's data-modifying CTEs, `EXPLAIN ANALYZE DELETE …`).
const DML_KEYWORDS: &[&str] = &["INSERT", "UPDATE", "DELETE", "MERGE"];

/// Classifies a statement (or a script of several, split at `;`) by its
/// keywords: the first one after comments, whitespace and parentheses, and
/// for `WITH` and `EXPLAIN` any data-modifying keyword in the rest. A
/// script is a write if any of its statements is, unknown if any is, and
/// a read otherwise. String literals, quoted identifiers (`"x"`, `` `x` ``,
/// `[x]`), comments and dollar-quoted bodies are skipped, so a keyword
/// inside them never counts.
///
/// This is the library's first line for read-only databases; what it
/// cannot tell (a function with side effects called from a `SELECT`,
/// `SELECT … INTO`, a procedure) is left to the session's own read-only
/// setting.
pub(crate) fn classify_statement(sql: &str) -> StatementKind {
    let b = sql.as_bytes();
    // Words of the current statement: (upper-cased word, nesting depth).
    let mut words: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut overall = StatementKind::Read;
    let mut i = 0;
    let finish = |words: &mut Vec<(String, usize)>, overall: &mut StatementKind| {
        let kind = classify_words(words);
        words.clear();
        match (&*overall, kind) {
            (StatementKind::Write(_), _) => {}
            (_, w @ StatementKind::Write(_)) => *overall = w,
            (_, StatementKind::Unknown) => *overall = StatementKind::Unknown,
            (_, StatementKind::Read) => {}
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'-' if b.get(i + 1) == Some(&b'-') => i = line_end(b, i, false),
            b'#' if words.is_empty() => i = line_end(b, i, false),
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i, true),
            // No backslash escapes: reading too little of a literal shows more
            // keywords, which can only make a statement look like a write.
            b'\'' => i = skip_quoted(b, i, b'\'', false),
            b'"' => i = skip_quoted(b, i, b'"', false),
            b'`' => i = skip_quoted(b, i, b'`', false),
            b'[' => i = skip_quoted(b, i, b']', false),
            b'$' => {
                // PostgreSQL dollar quoting: `$$…$$` or `$tag$…$tag$`.
                let tag_end = run_end(b, i + 1, is_name_byte);
                if b.get(tag_end) == Some(&b'$') {
                    let tag = &b[i..=tag_end];
                    let body = tag_end + 1;
                    i = b[body..]
                        .windows(tag.len())
                        .position(|w| w == tag)
                        .map_or(b.len(), |p| body + p + tag.len());
                } else {
                    i += 1;
                }
            }
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b';' => {
                finish(&mut words, &mut overall);
                depth = 0;
                i += 1;
            }
            _ if is_ident_start(c) => {
                let end = run_end(b, i, is_ident_byte);
                words.push((sql[i..end].to_ascii_uppercase(), depth));
                i = end;
            }
            _ if is_word_start(c) => i = run_end(b, i, is_ident_byte),
            _ => i += 1,
        }
    }
    finish(&mut words, &mut overall);
    overall
}

/// Classifies one statement's words.
fn classify_words(words: &[(String, usize)]) -> StatementKind {
    let Some((first, _)) = words.first() else {
        return StatementKind::Read;
    };
    let first = first.as_str();
    if WRITE_KEYWORDS.contains(&first) {
        return StatementKind::Write(first.to_owned());
    }
    if first == "WITH" || first == "EXPLAIN" {
        // A DML keyword anywhere, except in `FOR UPDATE`, `FOR NO KEY
        // UPDATE`, `ON DELETE`/`ON UPDATE` (clauses, not statements).
        let dml = words.iter().enumerate().skip(1).find(|(k, (w, _))| {
            DML_KEYWORDS.contains(&w.as_str())
                && !matches!(words[k - 1].0.as_str(), "FOR" | "KEY" | "ON" | "SHARE")
        });
        if let Some((_, (w, _))) = dml {
            return StatementKind::Write(w.clone());
        }
        if first == "EXPLAIN" {
            return StatementKind::Read;
        }
        let main = words[1..]
            .iter()
            .find(|(w, d)| *d == 0 && (READ_KEYWORDS.contains(&w.as_str())));
        return if main.is_some() {
            StatementKind::Read
        } else {
            StatementKind::Unknown
        };
    }
    if READ_KEYWORDS.contains(&first) {
        return StatementKind::Read;
    }
    StatementKind::Unknown
}

/// Which portable placeholder style a statement uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// `?`.
    Positional,
    /// `:name`.
    Named,
}

/// Names at which lookups switch from a linear scan to a hash map.
const NAME_MAP_THRESHOLD: usize = 16;

/// The single-pass translator: copies `sql` lazily, splicing in replacements.
struct Scanner<'a> {
    /// The statement being translated.
    sql: &'a str,
    /// `sql` as bytes.
    b: &'a [u8],
    /// The target dialect.
    dialect: Dialect,
    /// The output; empty until the first replacement.
    out: String,
    /// Bytes of `sql` already copied or replaced into `out`.
    copied: usize,
    /// Whether anything was replaced (otherwise the input is returned as is).
    changed: bool,
    /// The portable placeholder style in use, once one is seen.
    style: Option<Style>,
    /// Number of `?` placeholders seen.
    positional: usize,
    /// Names for `Binds::Named`.
    names: Vec<String>,
    /// Name → index in `names` (Postgres and SQL Server), built once names get numerous.
    name_map: Option<HashMap<String, usize>>,
    /// Position of the first native placeholder (`$1`, `@P1`, SQLite `?1`/`@a`/`$a`).
    native_at: Option<usize>,
}

impl<'a> Scanner<'a> {
    /// A scanner for `sql` in `dialect`.
    fn new(sql: &'a str, dialect: Dialect) -> Self {
        Scanner {
            sql,
            b: sql.as_bytes(),
            dialect,
            out: String::new(),
            copied: 0,
            changed: false,
            style: None,
            positional: 0,
            names: Vec::new(),
            name_map: None,
            native_at: None,
        }
    }

    /// Scans the whole statement once, left to right.
    fn run(mut self) -> Result<Translated, SqlError> {
        let b = self.b;
        let len = b.len();
        let d = self.dialect;
        let mut i = 0;
        // The previous token (ignoring whitespace and comments) was the word ARRAY.
        let mut after_array = false;
        // Open `[` that are array constructors or subscripts, not identifiers.
        let mut subscript_depth = 0usize;
        while i < len {
            let c = b[i];
            match c {
                b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                    i += 1;
                    continue;
                }
                b'-' if b.get(i + 1) == Some(&b'-')
                    // MySQL needs whitespace or a control character after `--`.
                    && (d != Dialect::MySql || b.get(i + 2).map_or(true, |&n| n <= b' ')) =>
                {
                    i = line_end(b, i, d == Dialect::Postgres);
                    continue;
                }
                b'#' if d == Dialect::MySql => {
                    i = line_end(b, i, false);
                    continue;
                }
                b'/' if b.get(i + 1) == Some(&b'*') => {
                    let nested = matches!(d, Dialect::Postgres | Dialect::MsSql);
                    i = skip_block_comment(b, i, nested);
                    continue;
                }
                b'\'' => i = skip_quoted(b, i, b'\'', d == Dialect::MySql),
                b'"' => i = skip_quoted(b, i, b'"', d == Dialect::MySql),
                b'`' if matches!(d, Dialect::MySql | Dialect::Sqlite) => {
                    i = skip_quoted(b, i, b'`', false)
                }
                b'$' => i = self.dollar(i)?,
                b'@' => i = self.at(i)?,
                b'?' => i = self.question(i)?,
                b':' => i = self.colon(i)?,
                b'[' if d == Dialect::MsSql => {
                    // Native bracket quoting, `]]` escaping `]`.
                    i = skip_quoted(b, i, b']', false);
                }
                b'[' => {
                    let prev = if i > 0 { b[i - 1] } else { b' ' };
                    let subscript = subscript_depth > 0
                        || after_array
                        || is_ident_byte(prev)
                        || matches!(prev, b']' | b')' | b'"');
                    match if subscript { None } else { self.bracket_end(i) } {
                        Some(end) => {
                            let content = &self.sql[i + 1..end - 1];
                            push_quoted(self.splice(i, end), content, d);
                            i = end;
                        }
                        None => {
                            subscript_depth += 1;
                            i += 1;
                        }
                    }
                }
                b']' => {
                    subscript_depth = subscript_depth.saturating_sub(1);
                    i += 1;
                }
                _ if is_word_start(c) => {
                    let end = run_end(b, i, is_ident_byte);
                    let word = &b[i..end];
                    if d == Dialect::Postgres
                        && word.eq_ignore_ascii_case(b"e")
                        && b.get(end) == Some(&b'\'')
                    {
                        // E'...' escape string: backslash escapes apply.
                        i = skip_quoted(b, end, b'\'', true);
                    } else {
                        after_array = word.eq_ignore_ascii_case(b"array");
                        i = end;
                        continue;
                    }
                }
                _ => i += 1,
            }
            after_array = false;
        }
        Ok(self.finish())
    }

    /// Builds the result once the whole statement is scanned.
    fn finish(mut self) -> Translated {
        let sql = if self.changed {
            self.out.push_str(&self.sql[self.copied..]);
            self.out
        } else {
            self.sql.to_owned()
        };
        let binds = match self.style {
            None => Binds::Native,
            Some(Style::Positional) => Binds::Positional(self.positional),
            Some(Style::Named) => Binds::Named(self.names),
        };
        Translated { sql, binds }
    }

    /// Copies pending input up to `start`, marks `start..end` as replaced, and returns
    /// the output for the caller to append the replacement.
    fn splice(&mut self, start: usize, end: usize) -> &mut String {
        if !self.changed {
            self.changed = true;
            self.out.reserve(self.sql.len() + 16);
        }
        self.out.push_str(&self.sql[self.copied..start]);
        self.copied = end;
        &mut self.out
    }

    /// If the `[` at `start` opens a portable `[identifier]`, the index just past its `]`.
    fn bracket_end(&self, start: usize) -> Option<usize> {
        let b = self.b;
        let mut j = start + 1;
        while j < b.len() && !matches!(b[j], b']' | b'[' | b'\n' | b'\r') {
            j += 1;
        }
        let content = &b[start + 1..j.min(b.len())];
        let ok = b.get(j) == Some(&b']')
            && !content.is_empty()
            && !content[0].is_ascii_digit()
            && !content.iter().all(u8::is_ascii_whitespace);
        ok.then_some(j + 1)
    }

    /// Whether byte `b` would fuse with a `$n` / `@Pn` placeholder written next to it.
    fn glues(&self, b: u8) -> bool {
        is_ident_byte(b) || (self.dialect == Dialect::MsSql && matches!(b, b'@' | b'#'))
    }

    /// Replaces `start..end` with native placeholder number `n` (Postgres and SQL Server),
    /// adding a space on a side where the placeholder would fuse with a neighbouring word.
    fn write_numbered(&mut self, start: usize, end: usize, n: usize) {
        let before = start > 0 && self.glues(self.b[start - 1]);
        let after = end < self.b.len() && self.glues(self.b[end]);
        let prefix = if self.dialect == Dialect::Postgres {
            "$"
        } else {
            "@P"
        };
        let out = self.splice(start, end);
        if before {
            out.push(' ');
        }
        let _ = write!(out, "{prefix}{n}");
        if after {
            out.push(' ');
        }
    }

    /// Records a portable placeholder of `style` at `pos`, rejecting mixed statements.
    fn portable(&mut self, style: Style, pos: usize) -> Result<(), SqlError> {
        if self.style.is_some_and(|s| s != style) {
            return Err(SqlError {
                message: "mixes `?` and `:name` placeholders; use one style per statement".into(),
                position: pos,
            });
        }
        if self.native_at.is_some() {
            return Err(self.native_mix(pos));
        }
        self.style = Some(style);
        Ok(())
    }

    /// Records a native placeholder at `pos`, rejecting statements that also use portable ones.
    fn native(&mut self, pos: usize) -> Result<(), SqlError> {
        if self.style.is_some() {
            return Err(self.native_mix(pos));
        }
        self.native_at.get_or_insert(pos);
        Ok(())
    }

    /// The error for a statement mixing native and portable placeholders.
    fn native_mix(&self, pos: usize) -> SqlError {
        let example = match self.dialect {
            Dialect::Postgres => "`$1`",
            Dialect::MsSql => "`@P1`",
            Dialect::Sqlite => "`?1`, `@name` or `$name`",
            Dialect::MySql => "native",
        };
        SqlError {
            message: format!(
                "mixes native placeholders ({example}) with portable `?`/`:name` ones; \
                 use one style per statement"
            ),
            position: pos,
        }
    }

    /// `$` at `i`: Postgres `$n` or dollar quote, SQLite `$name`; otherwise plain.
    fn dollar(&mut self, i: usize) -> Result<usize, SqlError> {
        let b = self.b;
        let next = b.get(i + 1).copied();
        match self.dialect {
            Dialect::Postgres => match next {
                Some(n) if n.is_ascii_digit() => {
                    self.native(i)?;
                    Ok(run_end(b, i + 1, |c| c.is_ascii_digit()))
                }
                Some(n) if n == b'$' || is_ident_start(n) => {
                    let tag_end = run_end(b, i + 1, |c| is_ident_start(c) || c.is_ascii_digit());
                    if b.get(tag_end) != Some(&b'$') {
                        return Ok(i + 1);
                    }
                    let body = tag_end + 1;
                    let tag = &self.sql[i..body];
                    Ok(self.sql[body..]
                        .find(tag)
                        .map_or(b.len(), |p| body + p + tag.len()))
                }
                _ => Ok(i + 1),
            },
            Dialect::Sqlite if next.is_some_and(is_ident_start) => {
                self.native(i)?;
                Ok(i + 1)
            }
            _ => Ok(i + 1),
        }
    }

    /// `@` at `i`: SQL Server `@Pn`, SQLite `@name`; otherwise plain.
    fn at(&mut self, i: usize) -> Result<usize, SqlError> {
        let b = self.b;
        match self.dialect {
            Dialect::MsSql
                if (i == 0 || !self.glues(b[i - 1]))
                    && matches!(b.get(i + 1), Some(b'P' | b'p'))
                    && b.get(i + 2).is_some_and(u8::is_ascii_digit) =>
            {
                let end = run_end(b, i + 2, |c| c.is_ascii_digit());
                if b.get(end).map_or(true, |&c| !self.glues(c)) {
                    self.native(i)?;
                }
                Ok(end)
            }
            Dialect::Sqlite if b.get(i + 1).copied().is_some_and(is_ident_start) => {
                self.native(i)?;
                Ok(i + 1)
            }
            _ => Ok(i + 1),
        }
    }

    /// `?` at `i`: `??` literal, SQLite `?NNN`, or a portable positional placeholder.
    fn question(&mut self, i: usize) -> Result<usize, SqlError> {
        let b = self.b;
        let d = self.dialect;
        match b.get(i + 1) {
            Some(b'?') => {
                if matches!(d, Dialect::MySql | Dialect::Sqlite) {
                    let name = if d == Dialect::MySql {
                        "MySQL"
                    } else {
                        "SQLite"
                    };
                    return Err(SqlError {
                        message: format!(
                            "`??` (a literal `?`) cannot be written for {name}, where every `?` \
                             is a placeholder; `??` is meant for PostgreSQL operators such as jsonb `?`"
                        ),
                        position: i,
                    });
                }
                self.splice(i, i + 2).push('?');
                Ok(i + 2)
            }
            Some(n) if n.is_ascii_digit() => {
                if d == Dialect::Sqlite {
                    self.native(i)?;
                    return Ok(run_end(b, i + 1, |c| c.is_ascii_digit()));
                }
                Err(SqlError {
                    message: "`?` directly followed by a digit (a numbered `?1` placeholder) is \
                              not portable; use `?` or `:name`"
                        .into(),
                    position: i,
                })
            }
            _ => {
                self.portable(Style::Positional, i)?;
                self.positional += 1;
                if matches!(d, Dialect::Postgres | Dialect::MsSql) {
                    self.write_numbered(i, i + 1, self.positional);
                }
                Ok(i + 1)
            }
        }
    }

    /// `:` at `i`: `::` cast, or a `:name` placeholder when it starts one.
    fn colon(&mut self, i: usize) -> Result<usize, SqlError> {
        let b = self.b;
        match b.get(i + 1) {
            Some(b':') => Ok(i + 2),
            Some(&n)
                if is_name_start(n)
                    && (i == 0 || !(is_ident_byte(b[i - 1]) || b[i - 1] == b':')) =>
            {
                let end = run_end(b, i + 1, is_name_byte);
                self.portable(Style::Named, i)?;
                let name = &self.sql[i + 1..end];
                match self.dialect {
                    Dialect::MySql | Dialect::Sqlite => {
                        self.names.push(name.to_owned());
                        self.splice(i, end).push('?');
                    }
                    Dialect::Postgres | Dialect::MsSql => {
                        let n = self.name_number(name);
                        self.write_numbered(i, end, n);
                    }
                }
                Ok(end)
            }
            _ => Ok(i + 1),
        }
    }

    /// The 1-based number of `name` among the distinct names, adding it if new.
    fn name_number(&mut self, name: &str) -> usize {
        let found = match &self.name_map {
            Some(map) => map.get(name).copied(),
            None => self.names.iter().position(|n| n == name),
        };
        if let Some(k) = found {
            return k + 1;
        }
        self.names.push(name.to_owned());
        let k = self.names.len() - 1;
        if let Some(map) = &mut self.name_map {
            map.insert(name.to_owned(), k);
        } else if self.names.len() >= NAME_MAP_THRESHOLD {
            let map = self.names.iter().cloned().zip(0..).collect();
            self.name_map = Some(map);
        }
        k + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Dialect::{MsSql, MySql, Postgres, Sqlite};

    const ALL: [Dialect; 4] = [Postgres, MySql, Sqlite, MsSql];

    /// Translates and returns the SQL text and binds.
    fn tr(sql: &str, d: Dialect) -> Result<(String, Binds), SqlError> {
        translate(sql, d).map(|t| (t.sql, t.binds))
    }

    /// Asserts that `sql` comes out unchanged with `Binds::Native`.
    fn assert_untouched(sql: &str, d: Dialect) -> Result<(), SqlError> {
        assert_eq!(tr(sql, d)?, (sql.to_owned(), Binds::Native), "{d:?}: {sql}");
        Ok(())
    }

    fn named(names: &[&str]) -> Binds {
        Binds::Named(names.iter().map(|n| n.to_string()).collect())
    }

    // ---- fast path and plain text ----

    #[test]
    fn text_without_portable_tokens_is_copied() -> Result<(), SqlError> {
        for d in ALL {
            assert_untouched("", d)?;
            assert_untouched("SELECT 1", d)?;
            assert_untouched("SELECT 'héllo' AS \"naïve\" -- 名前\nFROM t", d)?;
        }
        Ok(())
    }

    #[test]
    fn native_placeholders_pass_through() -> Result<(), SqlError> {
        assert_untouched("SELECT * FROM t WHERE a = $1 AND b = $2", Postgres)?;
        assert_untouched("SELECT * FROM t WHERE a = @P1 AND b = @P2", MsSql)?;
        assert_untouched("SELECT * FROM t WHERE a = ?1 AND b = ?2", Sqlite)?;
        assert_untouched("SELECT * FROM t WHERE a = @a AND b = $b", Sqlite)?;
        // A native placeholder together with something translated: still native binds.
        assert_eq!(
            tr("SELECT [a] FROM t WHERE id = $1", Postgres)?,
            ("SELECT \"a\" FROM t WHERE id = $1".into(), Binds::Native)
        );
        Ok(())
    }

    // ---- positional ----

    #[test]
    fn positional_per_dialect() -> Result<(), SqlError> {
        let sql = "SELECT * FROM t WHERE a = ? AND b IN (?,?)";
        let cases = [
            (Postgres, "SELECT * FROM t WHERE a = $1 AND b IN ($2,$3)"),
            (MySql, sql),
            (Sqlite, sql),
            (MsSql, "SELECT * FROM t WHERE a = @P1 AND b IN (@P2,@P3)"),
        ];
        for (d, want) in cases {
            assert_eq!(
                tr(sql, d)?,
                (want.to_owned(), Binds::Positional(3)),
                "{d:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn positional_many_numbers() -> Result<(), SqlError> {
        let sql = ["?"; 12].join(",");
        let (out, binds) = tr(&sql, Postgres)?;
        let want: Vec<String> = (1..=12).map(|n| format!("${n}")).collect();
        assert_eq!(out, want.join(","));
        assert_eq!(binds, Binds::Positional(12));
        Ok(())
    }

    #[test]
    fn numbered_placeholder_gets_space_where_it_would_fuse() -> Result<(), SqlError> {
        assert_eq!(tr("WHERE id=?AND x", Postgres)?.0, "WHERE id=$1 AND x");
        assert_eq!(tr("SELECT x?", Postgres)?.0, "SELECT x $1");
        assert_eq!(tr("WHERE id=?AND x", MsSql)?.0, "WHERE id=@P1 AND x");
        assert_eq!(tr("SELECT :a$", Postgres)?.0, "SELECT $1 $");
        // `?` needs no space.
        assert_eq!(tr("WHERE id=?AND x", MySql)?.0, "WHERE id=?AND x");
        Ok(())
    }

    #[test]
    fn question_followed_by_digit() -> Result<(), SqlError> {
        for d in [Postgres, MySql, MsSql] {
            let err = tr("SELECT ?1", d).unwrap_err();
            assert_eq!(err.position, 7, "{d:?}");
        }
        assert_untouched("SELECT ?1, ?23", Sqlite)?;
        Ok(())
    }

    // ---- named ----

    #[test]
    fn named_per_dialect() -> Result<(), SqlError> {
        let sql = "WHERE a = :a AND b = :b_2 OR c = :a";
        assert_eq!(
            tr(sql, Postgres)?,
            (
                "WHERE a = $1 AND b = $2 OR c = $1".into(),
                named(&["a", "b_2"])
            )
        );
        assert_eq!(
            tr(sql, MsSql)?,
            (
                "WHERE a = @P1 AND b = @P2 OR c = @P1".into(),
                named(&["a", "b_2"])
            )
        );
        for d in [MySql, Sqlite] {
            assert_eq!(
                tr(sql, d)?,
                (
                    "WHERE a = ? AND b = ? OR c = ?".into(),
                    named(&["a", "b_2", "a"])
                ),
                "{d:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn named_with_many_distinct_names() -> Result<(), SqlError> {
        let names: Vec<String> = (0..40).map(|k| format!("n{k}")).collect();
        let mut sql: Vec<String> = names.iter().map(|n| format!(":{n}")).collect();
        sql.extend(names.iter().rev().map(|n| format!(":{n}")));
        let (out, binds) = tr(&sql.join(","), Postgres)?;
        let mut want: Vec<String> = (1..=40).map(|k| format!("${k}")).collect();
        want.extend((1..=40).rev().map(|k| format!("${k}")));
        assert_eq!(out, want.join(","));
        assert_eq!(binds, Binds::Named(names));
        Ok(())
    }

    #[test]
    fn named_at_start_and_end() -> Result<(), SqlError> {
        assert_eq!(tr(":x", Postgres)?, ("$1".into(), named(&["x"])));
        assert_eq!(tr("(:_x)", MySql)?, ("(?)".into(), named(&["_x"])));
        Ok(())
    }

    #[test]
    fn colons_that_are_not_placeholders() -> Result<(), SqlError> {
        for d in ALL {
            for sql in [
                "SELECT x::int, 'a'::text, (y)::numeric(10,2)",
                "SELECT geography::Point(1, 2, 4326)",
                "SET @x := 1",
                "x := 5",
                "SELECT a : b",
                "SELECT a:b",
                "SELECT 1:2",
                "SELECT x:::y",
                "SELECT :1",
                "SELECT :名前",
                "SELECT ':x', \"a:b\"",
                "WHERE t > '12:30:00'",
                "SELECT arr[lo:hi], arr[1:2]",
                "SELECT é:x",
            ] {
                assert_untouched(sql, d)?;
            }
        }
        Ok(())
    }

    #[test]
    fn named_before_cast() -> Result<(), SqlError> {
        assert_eq!(
            tr(":id::int", Postgres)?,
            ("$1::int".into(), named(&["id"]))
        );
        assert_eq!(
            tr("x = :id::int", MySql)?,
            ("x = ?::int".into(), named(&["id"]))
        );
        Ok(())
    }

    // ---- `??` ----

    #[test]
    fn double_question_is_literal() -> Result<(), SqlError> {
        assert_eq!(
            tr(
                "SELECT data ?? 'k', data ??| array['a'], data ??& array['b']",
                Postgres
            )?,
            (
                "SELECT data ? 'k', data ?| array['a'], data ?& array['b']".into(),
                Binds::Native
            )
        );
        assert_eq!(
            tr("WHERE data ?? 'k' AND id = ?", Postgres)?,
            ("WHERE data ? 'k' AND id = $1".into(), Binds::Positional(1))
        );
        assert_eq!(
            tr("WHERE data ?? :k", Postgres)?,
            ("WHERE data ? $1".into(), named(&["k"]))
        );
        assert_eq!(
            tr("WHERE data ?? 'k' AND id = $1", Postgres)?,
            ("WHERE data ? 'k' AND id = $1".into(), Binds::Native)
        );
        assert_eq!(
            tr("SELECT ??, ?", MsSql)?,
            ("SELECT ?, @P1".into(), Binds::Positional(1))
        );
        // `???`: a literal then a placeholder.
        assert_eq!(tr("a ??? b", Postgres)?.0, "a ?$1 b");
        Ok(())
    }

    #[test]
    fn double_question_rejected_where_question_is_native() {
        for d in [MySql, Sqlite] {
            let err = tr("SELECT a ?? b", d).unwrap_err();
            assert_eq!(err.position, 9, "{d:?}");
            assert!(err.message.contains("`??`"), "{err}");
        }
    }

    // ---- mixing ----

    #[test]
    fn mixing_styles_is_an_error() {
        for d in ALL {
            let err = tr("SELECT * FROM t WHERE a = ? AND b = :b", d).unwrap_err();
            assert_eq!(err.position, 36, "{d:?}");
            let err = tr("WHERE b = :b AND a = ?", d).unwrap_err();
            assert_eq!(err.position, 21, "{d:?}");
        }
        let err = tr("SELECT * FROM t WHERE a = :a AND ? ", Postgres).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mixes `?` and `:name` placeholders (at byte 33); use one style per statement"
        );
    }

    #[test]
    fn mixing_native_and_portable_is_an_error() {
        let cases = [
            (Postgres, "WHERE a = $1 AND b = ?", 21),
            (Postgres, "WHERE a = :a AND b = $2", 21),
            (MsSql, "WHERE a = @P1 AND b = ?", 22),
            (MsSql, "WHERE a = ? AND b = @p2", 20),
            (Sqlite, "WHERE a = ?1 AND b = ?", 21),
            (Sqlite, "WHERE a = @a AND b = :b", 21),
            (Sqlite, "WHERE a = $a AND b = ?", 21),
        ];
        for (d, sql, pos) in cases {
            let err = tr(sql, d).unwrap_err();
            assert_eq!(err.position, pos, "{d:?}: {sql}");
            assert!(err.to_string().contains("native"), "{err}");
        }
    }

    #[test]
    fn mssql_variables_are_not_native_placeholders() -> Result<(), SqlError> {
        assert_eq!(
            tr("DECLARE @x int = ?; SELECT @x, @@ROWCOUNT, @Price1", MsSql)?,
            (
                "DECLARE @x int = @P1; SELECT @x, @@ROWCOUNT, @Price1".into(),
                Binds::Positional(1)
            )
        );
        Ok(())
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

    // ---- brackets ----

    #[test]
    fn brackets_per_dialect() -> Result<(), SqlError> {
        let sql = "SELECT [my col], t.[x] FROM [dbo].[t] WHERE [a b] = ?";
        let cases = [
            (
                Postgres,
                "SELECT \"my col\", t.\"x\" FROM \"dbo\".\"t\" WHERE \"a b\" = $1",
            ),
            (
                MySql,
                "SELECT `my col`, t.`x` FROM `dbo`.`t` WHERE `a b` = ?",
            ),
            (
                Sqlite,
                "SELECT \"my col\", t.\"x\" FROM \"dbo\".\"t\" WHERE \"a b\" = ?",
            ),
            (
                MsSql,
                "SELECT [my col], t.[x] FROM [dbo].[t] WHERE [a b] = @P1",
            ),
        ];
        for (d, want) in cases {
            assert_eq!(
                tr(sql, d)?,
                (want.to_owned(), Binds::Positional(1)),
                "{d:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn bracket_content_quote_doubling() -> Result<(), SqlError> {
        assert_eq!(tr("SELECT [a\"b`c]", Postgres)?.0, "SELECT \"a\"\"b`c\"");
        assert_eq!(tr("SELECT [a\"b`c]", Sqlite)?.0, "SELECT \"a\"\"b`c\"");
        assert_eq!(tr("SELECT [a\"b`c]", MySql)?.0, "SELECT `a\"b``c`");
        assert_eq!(tr("SELECT [a\"b`c]", MsSql)?.0, "SELECT [a\"b`c]");
        assert_eq!(tr("SELECT [naïve 名]", Postgres)?.0, "SELECT \"naïve 名\"");
        Ok(())
    }

    #[test]
    fn bracket_content_is_not_scanned() -> Result<(), SqlError> {
        assert_eq!(
            tr("SELECT [a?b], [c:d]", Postgres)?,
            ("SELECT \"a?b\", \"c:d\"".into(), Binds::Native)
        );
        assert_untouched("SELECT [a?b], [c:d], [x'y]", MsSql)?;
        Ok(())
    }

    #[test]
    fn brackets_that_are_not_identifiers() -> Result<(), SqlError> {
        for d in [Postgres, MySql, Sqlite] {
            for sql in [
                "SELECT arr[1], arr[i], arr[i][j], (x)[1], \"arr\"[i], f(x)[k]",
                "SELECT ARRAY[a, b], ARRAY [a, b], array\n\t[c], Array /* c */ [d]",
                "SELECT ARRAY[[a,b],[c,d]], ARRAY [[e]]",
                "SELECT '{1,2}'::int[], x::text [], CAST(y AS int[])",
                "SELECT [], [ ], [1abc], [2]",
                "SELECT [a\nb], [c\r\nd]",
                "SELECT [unterminated",
                "SELECT [a[b]]",
                "SELECT $1[i]",
                "SELECT é[x]",
            ] {
                assert_untouched(sql, d)?;
            }
        }
        Ok(())
    }

    #[test]
    fn bracket_after_subscript_closes() -> Result<(), SqlError> {
        assert_eq!(
            tr("SELECT arr[i], [col] FROM ARRAY[[1]] x, [t]", Postgres)?.0,
            "SELECT arr[i], \"col\" FROM ARRAY[[1]] x, \"t\""
        );
        assert_eq!(
            tr("SELECT ARRAY [1], [a]", Postgres)?.0,
            "SELECT ARRAY [1], \"a\""
        );
        assert_eq!(tr("SELECT arrayx [a]", Postgres)?.0, "SELECT arrayx \"a\"");
        Ok(())
    }

    #[test]
    fn placeholders_inside_subscripts() -> Result<(), SqlError> {
        assert_eq!(
            tr("SELECT arr[?], ARRAY[?, ?]", Postgres)?,
            ("SELECT arr[$1], ARRAY[$2, $3]".into(), Binds::Positional(3))
        );
        assert_eq!(
            tr("SELECT arr[:i]", Postgres)?,
            ("SELECT arr[$1]".into(), named(&["i"]))
        );
        Ok(())
    }

    #[test]
    fn mssql_native_brackets() -> Result<(), SqlError> {
        assert_untouched("SELECT [a]]b?], [1col], [x\ny] FROM [t]", MsSql)?;
        // `x@P1` is one T-SQL identifier, not a native placeholder.
        assert_eq!(tr("SELECT x@P1, ?", MsSql)?.0, "SELECT x@P1, @P1");
        assert_untouched("SELECT [unterminated ?", MsSql)?;
        Ok(())
    }

    // ---- literals, identifiers, comments ----

    #[test]
    fn string_literals_are_skipped() -> Result<(), SqlError> {
        for d in ALL {
            assert_eq!(
                tr("SELECT '?', 'it''s :x [y]', N'?' , ?", d)?.1,
                Binds::Positional(1),
                "{d:?}"
            );
            assert_untouched("SELECT ':a ? [b]' || 'x''?'", d)?;
        }
        Ok(())
    }

    #[test]
    fn backslashes_in_strings() -> Result<(), SqlError> {
        // Standard strings: backslash is an ordinary character, the string ends at `'`.
        for d in [Postgres, Sqlite, MsSql] {
            assert_eq!(tr(r"SELECT 'a\', ?", d)?.1, Binds::Positional(1), "{d:?}");
        }
        // MySQL: backslash escapes; the string is unterminated.
        assert_untouched(r"SELECT 'a\', ?", MySql)?;
        assert_eq!(tr(r"SELECT 'a\'?', ?", MySql)?.1, Binds::Positional(1));
        assert_eq!(tr(r#"SELECT "a\"?", ?"#, MySql)?.1, Binds::Positional(1));
        Ok(())
    }

    #[test]
    fn postgres_escape_strings() -> Result<(), SqlError> {
        assert_eq!(
            tr(r"SELECT E'\'?', e'\\', ?", Postgres)?,
            (r"SELECT E'\'?', e'\\', $1".into(), Binds::Positional(1))
        );
        assert_untouched(r"SELECT E'\', ?", Postgres)?;
        // Not an escape string elsewhere, nor with a longer word.
        assert_eq!(tr(r"SELECT E'\', ?", Sqlite)?.1, Binds::Positional(1));
        assert_eq!(tr(r"SELECT ee'\', ?", Postgres)?.1, Binds::Positional(1));
        Ok(())
    }

    #[test]
    fn double_quotes() -> Result<(), SqlError> {
        for d in ALL {
            assert_eq!(
                tr("SELECT \"a?\"\":b\", ?", d)?.1,
                Binds::Positional(1),
                "{d:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn backticks() -> Result<(), SqlError> {
        for d in [MySql, Sqlite] {
            assert_eq!(
                tr("SELECT `a?``:b`, ?", d)?.1,
                Binds::Positional(1),
                "{d:?}"
            );
        }
        // Not a quote in Postgres.
        assert_eq!(tr("SELECT `?`", Postgres)?.1, Binds::Positional(1));
        Ok(())
    }

    #[test]
    fn line_comments() -> Result<(), SqlError> {
        for d in ALL {
            assert_eq!(
                tr("SELECT ? -- what? :x [y]\n, ?", d)?.1,
                Binds::Positional(2),
                "{d:?}"
            );
            assert_untouched("SELECT 1 -- ?", d)?;
        }
        // MySQL needs whitespace after `--`.
        assert_eq!(tr("SELECT 5--?", MySql)?.1, Binds::Positional(1));
        assert_untouched("SELECT 5--?", Postgres)?;
        assert_untouched("SELECT 5 --", MySql)?;
        Ok(())
    }

    #[test]
    fn hash_comments_mysql_only() -> Result<(), SqlError> {
        assert_eq!(tr("SELECT ? # :x ?\n", MySql)?.1, Binds::Positional(1));
        assert_eq!(
            tr("SELECT a # ?", Postgres)?,
            ("SELECT a # $1".into(), Binds::Positional(1))
        );
        Ok(())
    }

    #[test]
    fn block_comments() -> Result<(), SqlError> {
        for d in ALL {
            assert_eq!(
                tr("SELECT /* ? :x [y] */ ?", d)?.1,
                Binds::Positional(1),
                "{d:?}"
            );
            assert_untouched("SELECT /*/ ? */", d)?;
        }
        // Nested in Postgres and SQL Server.
        for d in [Postgres, MsSql] {
            assert_eq!(tr("/* /* ? */ ? */ ?", d)?.1, Binds::Positional(1), "{d:?}");
            assert_untouched("/* /* */ ?", d)?;
        }
        for d in [MySql, Sqlite] {
            assert_eq!(tr("/* /* */ ?", d)?.1, Binds::Positional(1), "{d:?}");
        }
        Ok(())
    }

    #[test]
    fn normalised_statements_keep_no_literal() {
        use Dialect::*;
        assert_eq!(
            normalise(
                "SELECT  *\n FROM t -- note\n WHERE a = 'secret' AND b = 42 AND c = ?",
                Postgres,
                200
            ),
            "SELECT * FROM t WHERE a = ? AND b = ? AND c = ?"
        );
        assert_eq!(
            normalise("SELECT $x$pw$x$, 1.5e3, \"Col\"", Postgres, 200),
            "SELECT ?, ?, \"Col\""
        );
        assert_eq!(
            normalise("SELECT \"pw\" # c\n, `x`", MySql, 200),
            "SELECT ? , `x`"
        );
        assert_eq!(
            normalise("SELECT 1 /* a */ + 2", Sqlite, 200),
            "SELECT ? + ?"
        );
        let long = normalise(&"SELECT aaaa, ".repeat(50), Sqlite, 20);
        assert!(
            long.ends_with('…') && long.len() <= 20 + '…'.len_utf8(),
            "{long}"
        );
        assert_eq!(normalise("SELECT 'é' || ü", Postgres, 200), "SELECT ? || ü");
    }

    #[test]
    fn dollar_quotes() -> Result<(), SqlError> {
        assert_eq!(
            tr("DO $$ SELECT ?, :x, [y] $$; SELECT ?", Postgres)?,
            (
                "DO $$ SELECT ?, :x, [y] $$; SELECT $1".into(),
                Binds::Positional(1)
            )
        );
        assert_eq!(
            tr("AS $fn$ a $$ ? $$ b $fn$, $_x1$?$_x1$, ?", Postgres)?.1,
            Binds::Positional(1)
        );
        assert_eq!(
            tr("AS $ä$ ? $ä$ ?", Postgres)?,
            ("AS $ä$ ? $ä$ $1".into(), Binds::Positional(1))
        );
        // Not dollar quotes: a stray `$`, `$` inside an identifier.
        assert_eq!(tr("SELECT $abc ?", Postgres)?.1, Binds::Positional(1));
        assert_eq!(tr("SELECT a$b$ ?, $b$", Postgres)?.1, Binds::Positional(1));
        // Only Postgres has them.
        assert_eq!(tr("SELECT $$ ? $$", MySql)?.1, Binds::Positional(1));
        assert_eq!(tr("SELECT $$ ? $$", MsSql)?.1, Binds::Positional(1));
        Ok(())
    }

    #[test]
    fn unterminated_constructs_copy_the_rest() -> Result<(), SqlError> {
        for d in ALL {
            assert_untouched("SELECT 'abc ? :x", d)?;
            assert_untouched("SELECT \"abc ? :x", d)?;
            assert_untouched("SELECT /* ? [x]", d)?;
            let (out, binds) = tr("SELECT ? 'x ?", d)?;
            assert!(out.ends_with(" 'x ?"), "{d:?}: {out}");
            assert_eq!(binds, Binds::Positional(1), "{d:?}");
        }
        assert_untouched("SELECT $$ ? :x", Postgres)?;
        assert_untouched("SELECT $t$ ? $t", Postgres)?;
        assert_untouched(r"SELECT E'? \'", Postgres)?;
        assert_untouched("SELECT `? :x", MySql)?;
        assert_untouched("SELECT `? :x", Sqlite)?;
        Ok(())
    }

    #[test]
    fn mssql_n_strings() -> Result<(), SqlError> {
        assert_eq!(
            tr("SELECT N'naïve ? '' :x', ?", MsSql)?,
            ("SELECT N'naïve ? '' :x', @P1".into(), Binds::Positional(1))
        );
        Ok(())
    }

    #[test]
    fn non_ascii_everywhere() -> Result<(), SqlError> {
        let sql = "SELECT 'héllo ? 名', \"tåble\", [naïve], é?, :ü, ? -- 注释 ?\nFROM ☃";
        let (out, binds) = tr(sql, Postgres)?;
        assert_eq!(
            out,
            "SELECT 'héllo ? 名', \"tåble\", \"naïve\", é $1, :ü, $2 -- 注释 ?\nFROM ☃"
        );
        assert_eq!(binds, Binds::Positional(2));
        Ok(())
    }

    // ---- quote_identifier / is_plain_identifier ----

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

    // ---- property tests ----

    fn dialect() -> impl Strategy<Value = Dialect> {
        prop_oneof![Just(Postgres), Just(MySql), Just(Sqlite), Just(MsSql)]
    }

    /// Arbitrary text, mostly made of the characters the scanner cares about.
    fn sqlish() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[?:\\[\\]'\"`$#/*\\\\ \n\r()aeEN_P@0-9é名-]{0,48}",
        ]
    }

    /// Arbitrary literal content: any text or scanner-relevant characters;
    /// without `?`, `$` and `@` when `clean`.
    fn content(clean: bool) -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[?:\\[\\]'\"`$#/*\\\\ \n\r()aeEN_P@0-9é名-]{0,24}",
        ]
        .prop_map(move |c| {
            if clean {
                c.replace(['?', '$', '@'], "")
            } else {
                c
            }
        })
    }

    /// A string literal, quoted identifier, comment or dollar-quoted body valid in `d`,
    /// whose content is opaque to translation.
    fn opaque(d: Dialect, clean: bool) -> BoxedStrategy<String> {
        let content = move || content(clean);
        let mysql = d == MySql;
        let bs = move |s: &str| {
            if mysql {
                s.replace('\\', "\\\\")
            } else {
                s.to_owned()
            }
        };
        let mut options: Vec<BoxedStrategy<String>> = vec![
            content()
                .prop_map(move |c| format!("'{}'", bs(&c).replace('\'', "''")))
                .boxed(),
            content()
                .prop_map(move |c| format!("N'{}'", bs(&c).replace('\'', "''")))
                .boxed(),
            content()
                .prop_map(move |c| format!("\"{}\"", bs(&c).replace('"', "\"\"")))
                .boxed(),
            content()
                .prop_map(|c| format!("-- {}\n", c.replace(['\n', '\r'], " ")))
                .boxed(),
            content()
                .prop_map(|c| format!("/*{}*/", c.replace('*', "* ").replace('/', "/ ")))
                .boxed(),
        ];
        match d {
            Postgres => {
                options.push(
                    content()
                        .prop_map(|c| {
                            format!("E'{}'", c.replace('\\', "\\\\").replace('\'', "\\'"))
                        })
                        .boxed(),
                );
                options.push(
                    ("[a-z_]{0,4}", content())
                        .prop_map(|(tag, c)| format!("${tag}${}${tag}$", c.replace('$', "$ ")))
                        .boxed(),
                );
            }
            MySql | Sqlite => {
                options.push(
                    content()
                        .prop_map(|c| format!("`{}`", c.replace('`', "``")))
                        .boxed(),
                );
                if mysql {
                    options.push(
                        content()
                            .prop_map(|c| format!("#{}\n", c.replace('\n', " ")))
                            .boxed(),
                    );
                }
            }
            MsSql => options.push(
                content()
                    .prop_map(|c| format!("[{}]", c.replace(']', "]]")))
                    .boxed(),
            ),
        }
        proptest::strategy::Union::new(options).boxed()
    }

    /// The native form of the `k`-th (1-based) placeholder.
    fn native(d: Dialect, k: usize) -> String {
        match d {
            Postgres => format!("${k}"),
            MsSql => format!("@P{k}"),
            MySql | Sqlite => "?".into(),
        }
    }

    /// Counts native placeholders in translated output and checks their numbering.
    /// The output must contain no `?`, `$` or `@` outside placeholders except
    /// dollar-quote delimiters.
    fn native_count(out: &str, d: Dialect) -> usize {
        let b = out.as_bytes();
        let mut numbers = Vec::new();
        let mut occurrences = 0;
        for i in 0..b.len() {
            let (prefix_ok, digits_at) = match d {
                Postgres => (
                    b[i] == b'$' && (i == 0 || !(is_ident_byte(b[i - 1]))),
                    i + 1,
                ),
                MsSql => (b[i..].starts_with(b"@P"), i + 2),
                MySql | Sqlite => {
                    if b[i] == b'?' {
                        occurrences += 1;
                    }
                    continue;
                }
            };
            let end = run_end(b, digits_at.min(b.len()), |c| c.is_ascii_digit());
            if prefix_ok && end > digits_at {
                numbers.push(out[digits_at..end].parse::<usize>().unwrap());
                occurrences += 1;
            }
        }
        if matches!(d, Postgres | MsSql) {
            numbers.sort_unstable();
            numbers.dedup();
            let want: Vec<usize> = (1..=numbers.len()).collect();
            assert_eq!(numbers, want, "placeholder numbers in {out:?}");
            return numbers.len();
        }
        occurrences
    }

    fn bind_count(binds: &Binds) -> usize {
        match binds {
            Binds::Native => 0,
            Binds::Positional(n) => *n,
            Binds::Named(names) => names.len(),
        }
    }

    /// A statement fragment for property (4), in one placeholder style.
    fn fragment(d: Dialect, named: bool) -> BoxedStrategy<String> {
        let placeholder = if named {
            prop_oneof![Just(":a"), Just(":b"), Just(":_c1"), Just("(:a)")]
                .prop_map(str::to_owned)
                .boxed()
        } else {
            prop_oneof![Just("?"), Just("(?)"), Just("=?,")]
                .prop_map(str::to_owned)
                .boxed()
        };
        let mut plain = vec![
            "x::int",
            ":=",
            " : ",
            "a:b",
            "arr[1]",
            "arr[i]",
            "[col]",
            "[my col]",
            "ARRAY [1, 2]",
            "foo",
            "42",
            ",",
            "(",
            ")",
            "=",
            "[1]",
            "[]",
            "é",
            "'a:b'",
        ];
        if matches!(d, Postgres | MsSql) {
            plain.push("??");
            plain.push("a ??| b");
        }
        let plain = proptest::sample::select(plain).prop_map(str::to_owned);
        let literal = opaque(d, true);
        prop_oneof![3 => placeholder, 3 => plain, 2 => literal].boxed()
    }

    proptest! {
        #[test]
        fn never_panics(sql in sqlish(), d in dialect()) {
            if let Ok(t) = translate(&sql, d) {
                // The output is a valid String by construction; binds agree with the style.
                if let Binds::Named(names) = &t.binds {
                    prop_assert!(!names.is_empty());
                }
                if t.binds == Binds::Native && !sql.contains(['[', '?']) {
                    prop_assert_eq!(&t.sql, &sql);
                }
            }
        }

        #[test]
        fn never_panics_any_dialect(sql in any::<String>()) {
            for d in ALL {
                let _ = translate(&sql, d);
            }
        }

        #[test]
        fn opaque_parts_are_byte_identical(
            (d, parts, named) in dialect().prop_flat_map(|d| {
                (Just(d), proptest::collection::vec(opaque(d, false), 0..6), any::<bool>())
            })
        ) {
            let mut sql = String::new();
            let mut want = String::new();
            for (k, part) in parts.iter().enumerate() {
                let (ph, native_k) = if named { (":p".to_owned(), 1) } else { ("?".to_owned(), k + 1) };
                sql.push_str(&format!("{ph} {part} "));
                want.push_str(&format!("{} {part} ", native(d, native_k)));
            }
            sql.push_str(if named { ":p" } else { "?" });
            want.push_str(&native(d, if named { 1 } else { parts.len() + 1 }));
            let t = translate(&sql, d).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&t.sql, &want);
            let binds = if named {
                match d {
                    Postgres | MsSql => Binds::Named(vec!["p".into()]),
                    MySql | Sqlite => Binds::Named(vec!["p".into(); parts.len() + 1]),
                }
            } else {
                Binds::Positional(parts.len() + 1)
            };
            prop_assert_eq!(t.binds, binds);
        }

        #[test]
        fn text_without_portable_tokens_is_identical(sql in sqlish(), d in dialect()) {
            let sql = sql.replace(['?', ':', '['], "");
            let t = translate(&sql, d).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(t.sql, sql);
            prop_assert_eq!(t.binds, Binds::Native);
        }

        #[test]
        fn placeholder_count_matches_binds(
            (d, frags) in (dialect(), any::<bool>()).prop_flat_map(|(d, named)| {
                (Just(d), proptest::collection::vec(fragment(d, named), 0..16))
            })
        ) {
            let sql = frags.join(" ");
            let t = translate(&sql, d).map_err(|e| TestCaseError::fail(format!("{e}: {sql:?}")))?;
            prop_assert_eq!(native_count(&t.sql, d), bind_count(&t.binds), "{:?} -> {:?}", sql, t.sql);
        }
    }

    #[test]
    fn statements_are_classified_by_their_keywords() {
        use super::{classify_statement as c, StatementKind::*};
        let w = |k: &str| Write(k.to_owned());
        for read in [
            "SELECT 1",
            "  select * from t",
            "-- note\n/* block /* nested */ */ ( SELECT 1 ) UNION (SELECT 2)",
            "SHOW TABLES",
            "EXPLAIN SELECT * FROM t",
            "VALUES (1), (2)",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
            "SELECT 'DELETE FROM t', \"update\", [insert] FROM t -- DROP TABLE t",
            "WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x",
            "SELECT $$ DELETE $$, $f$ DROP $f$",
            "SELECT 1; SELECT 2;",
            "",
        ] {
            assert_eq!(c(read), Read, "{read}");
        }
        for (write, kw) in [
            ("INSERT INTO t VALUES (1)", "INSERT"),
            ("update t set a = 1", "UPDATE"),
            ("/* comment */ DELETE FROM t", "DELETE"),
            ("-- SELECT\nCREATE TABLE t (id int)", "CREATE"),
            (
                "MERGE INTO t USING s ON 1=1 WHEN MATCHED THEN DELETE",
                "MERGE",
            ),
            ("ALTER TABLE t ADD c int", "ALTER"),
            ("DROP TABLE t", "DROP"),
            ("TRUNCATE TABLE t", "TRUNCATE"),
            ("GRANT SELECT ON t TO u", "GRANT"),
            ("REPLACE INTO t VALUES (1)", "REPLACE"),
            (
                "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
                "INSERT",
            ),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                "DELETE",
            ),
            ("EXPLAIN ANALYZE DELETE FROM t", "DELETE"),
            ("SELECT 1; DELETE FROM t", "DELETE"),
            ("( ( UPDATE t SET a = 1 ) )", "UPDATE"),
        ] {
            assert_eq!(c(write), w(kw), "{write}");
        }
        for unknown in [
            "CALL proc()",
            "EXEC sp_who",
            "SET LOCK_TIMEOUT 5",
            "PRAGMA user_version = 5",
            "BEGIN",
            "WITH x AS (SELECT 1) CALL p()",
            "SELECT 1; EXEC p",
        ] {
            assert_eq!(c(unknown), Unknown, "{unknown}");
        }
        // A write wins over an unknown anywhere in the script.
        assert_eq!(c("EXEC p; DROP TABLE t"), w("DROP"));
    }

    proptest::proptest! {
        #[test]
        fn the_classifier_never_panics(s in ".{0,200}") {
            let _ = super::classify_statement(&s);
        }
    }
}
