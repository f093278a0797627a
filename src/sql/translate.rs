//! Portable placeholders and `[identifier]` quoting rewritten to a dialect's native form.
//!
//! The translator walks the lexer's tokens once and copies the statement lazily:
//! only portable placeholders, `??` and portable `[identifier]`s are replaced, and
//! everything between them (string literals, quoted identifiers, comments,
//! dollar-quoted bodies, native placeholders) is copied byte-identical.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::lex::{is_ident_byte, is_tsql_ident_byte, Lexer, Syntax, Token, TokenKind};
use super::{push_quoted, Binds, Dialect, SqlError, Translated};

/// Translates a portable statement to `dialect`'s native SQL.
///
/// `?` becomes `$n` (Postgres), `@Pn` (SQL Server) or stays `?` (MySQL, SQLite);
/// `:name` does the same with one number per distinct name where numbers exist;
/// `??` becomes a literal `?`; `[ident]` becomes the dialect's quoted identifier.
/// String literals, quoted identifiers, comments and dollar-quoted bodies are copied
/// byte-identical, as are native placeholders and PostgreSQL array slices
/// (`tags[:n]`). Unterminated literals and comments are copied to the end unchanged
/// so the server can report them.
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
    let mut translator = Translator::new(sql, dialect);
    for token in Lexer::new(sql, Syntax::of(dialect)) {
        translator.token(token)?;
    }
    Ok(translator.finish())
}

/// Which portable placeholder style a statement uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// `?`.
    Positional,
    /// `:name`.
    Named,
}

/// Names at which lookups switch from a linear scan to a hash map.
const NAME_MAP_THRESHOLD: usize = 16;

/// The translation of one statement: copies `sql` lazily, splicing in replacements.
#[derive(Debug)]
struct Translator<'a> {
    /// The statement being translated.
    sql: &'a str,
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

impl<'a> Translator<'a> {
    /// A translator for `sql` in `dialect`.
    fn new(sql: &'a str, dialect: Dialect) -> Self {
        Translator {
            sql,
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

    /// Takes the next token of the statement.
    fn token(&mut self, token: Token) -> Result<(), SqlError> {
        match token.kind {
            TokenKind::Question => self.question(token),
            TokenKind::DoubleQuestion => self.double_question(token),
            TokenKind::NumberedQuestion => self.numbered_question(token),
            TokenKind::Named => self.named(token),
            TokenKind::Native => self.native(token.start),
            TokenKind::BracketIdent => {
                self.bracket_ident(token);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Builds the result once the whole statement is read.
    fn finish(mut self) -> Translated {
        let sql = if self.changed {
            self.out
                .push_str(self.sql.get(self.copied..).unwrap_or_default());
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
        self.out
            .push_str(self.sql.get(self.copied..start).unwrap_or_default());
        self.copied = end;
        &mut self.out
    }

    /// `?`: a portable positional placeholder.
    fn question(&mut self, token: Token) -> Result<(), SqlError> {
        self.portable(Style::Positional, token.start)?;
        self.positional += 1;
        if matches!(self.dialect, Dialect::Postgres | Dialect::MsSql) {
            self.write_numbered(token, self.positional);
        }
        Ok(())
    }

    /// `??`: a literal `?`, where `?` is not itself a native placeholder.
    fn double_question(&mut self, token: Token) -> Result<(), SqlError> {
        let name = match self.dialect {
            Dialect::MySql => "MySQL",
            Dialect::Sqlite => "SQLite",
            Dialect::Postgres | Dialect::MsSql => {
                self.splice(token.start, token.end).push('?');
                return Ok(());
            }
        };
        Err(SqlError {
            message: format!(
                "`??` (a literal `?`) cannot be written for {name}, where every `?` \
                 is a placeholder; `??` is meant for PostgreSQL operators such as jsonb `?`"
            ),
            position: token.start,
        })
    }

    /// `?` followed by digits: native on SQLite, not portable elsewhere.
    fn numbered_question(&mut self, token: Token) -> Result<(), SqlError> {
        if self.dialect == Dialect::Sqlite {
            return self.native(token.start);
        }
        Err(SqlError {
            message: "`?` directly followed by a digit (a numbered `?1` placeholder) is \
                      not portable; use `?` or `:name`"
                .into(),
            position: token.start,
        })
    }

    /// `:name`: a portable named placeholder.
    fn named(&mut self, token: Token) -> Result<(), SqlError> {
        self.portable(Style::Named, token.start)?;
        let sql = self.sql;
        let name = token.text(sql).strip_prefix(':').unwrap_or_default();
        match self.dialect {
            Dialect::MySql | Dialect::Sqlite => {
                self.names.push(name.to_owned());
                self.splice(token.start, token.end).push('?');
            }
            Dialect::Postgres | Dialect::MsSql => {
                let n = self.name_number(name);
                self.write_numbered(token, n);
            }
        }
        Ok(())
    }

    /// A portable `[identifier]`, quoted the dialect's way.
    fn bracket_ident(&mut self, token: Token) {
        let sql = self.sql;
        let text = token.text(sql);
        let content = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        let dialect = self.dialect;
        push_quoted(self.splice(token.start, token.end), content, dialect);
    }

    /// Whether byte `b` would fuse with a `$n` / `@Pn` placeholder written next to it.
    fn glues(&self, b: u8) -> bool {
        match self.dialect {
            Dialect::MsSql => is_tsql_ident_byte(b),
            _ => is_ident_byte(b),
        }
    }

    /// Replaces `token` with native placeholder number `n` (Postgres and SQL Server),
    /// adding a space on a side where the placeholder would fuse with a neighbouring word.
    fn write_numbered(&mut self, token: Token, n: usize) {
        let bytes = self.sql.as_bytes();
        let glues_at =
            |i: Option<usize>| i.and_then(|i| bytes.get(i)).is_some_and(|&b| self.glues(b));
        let before = glues_at(token.start.checked_sub(1));
        let after = glues_at(Some(token.end));
        let prefix = if self.dialect == Dialect::Postgres {
            "$"
        } else {
            "@P"
        };
        let out = self.splice(token.start, token.end);
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
        // On PostgreSQL `arr[:i]` is a slice; a named subscript goes in parentheses.
        assert_eq!(
            tr("SELECT arr[(:i)], arr[1 + :j], ARRAY[:k]", Postgres)?,
            (
                "SELECT arr[($1)], arr[1 + $2], ARRAY[$3]".into(),
                named(&["i", "j", "k"])
            )
        );
        // Without array slices, `[:i]` is a placeholder.
        for d in [MySql, Sqlite] {
            assert_eq!(
                tr("SELECT arr[:i]", d)?,
                ("SELECT arr[?]".into(), named(&["i"])),
                "{d:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn postgres_array_slices_stay_as_written() -> Result<(), SqlError> {
        for sql in [
            "SELECT tags[:n] FROM t",
            "SELECT tags[ :n], tags[lo:hi], tags[lo :hi], tags[lo:], tags[:hi]",
            "SELECT tags[f(x):n], tags[(x) :n], tags[a[1] :n], tags[1][:n]",
            "SELECT (ARRAY[1, 2, 3])[:n], ARRAY[1, 2][:n]",
        ] {
            assert_untouched(sql, Postgres)?;
        }
        // Placeholders around a slice are still translated, and brackets still quote.
        assert_eq!(
            tr("SELECT tags[:n], [col] FROM t WHERE id = ?", Postgres)?,
            (
                "SELECT tags[:n], \"col\" FROM t WHERE id = $1".into(),
                Binds::Positional(1)
            )
        );
        assert_eq!(
            tr("SELECT tags[:hi] FROM t WHERE id = :id", Postgres)?,
            (
                "SELECT tags[:hi] FROM t WHERE id = $1".into(),
                named(&["id"])
            )
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
            let digits_at = digits_at.min(b.len());
            let end = digits_at
                + b[digits_at..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count();
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
}
