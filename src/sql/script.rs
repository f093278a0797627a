//! Scripts cut into statements the way each server's own client does it
//! (psql, the mysql client, sqlite3, sqlcmd), on the one lexer: a `;` inside a
//! string, a quoted identifier, a comment or a dollar-quoted body ends nothing.
//!
//! Per dialect, on top of the lexer's quoting rules:
//!
//! - PostgreSQL: `COPY … FROM stdin;` takes the lines after it, up to a line
//!   `\.`, as its data (sent through the COPY protocol, not parsed as SQL);
//!   `CREATE FUNCTION … BEGIN ATOMIC … END` is one statement, as in psql;
//! - MySQL and MariaDB: the client command `DELIMITER xx` (any text: `//`,
//!   `$$`, `|`, `;;`) changes what ends a statement until the next
//!   `DELIMITER`; without it, `CREATE PROCEDURE`, `FUNCTION`, `TRIGGER` and
//!   `EVENT` bodies (`BEGIN … END`, `IF … END IF`, `CASE … END CASE`, loops)
//!   are one statement, as Flyway reads them; `/*! … */` comments are code;
//! - SQLite: `CREATE TRIGGER … BEGIN …; …; END;` is one statement, as in sqlite3;
//! - SQL Server: a line holding only `GO` (optionally a count, `GO 3`) ends a
//!   batch, as in sqlcmd; a batch goes to the server whole, `;` and all.
//!
//! Each statement keeps the line it starts on, for error messages, and what it
//! does to a transaction (`BEGIN`, `COMMIT`, `ROLLBACK`), so that a runner can
//! say truthfully what a failure left behind.

use std::borrow::Cow;
use std::fmt;

use super::lex::{Lexer, Syntax, Token, TokenKind};
use super::Dialect;

/// What a statement does to the transaction around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxControl {
    /// Nothing: an ordinary statement.
    None,
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END`.
    Commit,
    /// `ROLLBACK` (not `ROLLBACK TO` a savepoint), `ABORT`.
    Rollback,
}

/// One statement of a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Statement {
    /// The statement's text as written, without the delimiter that ended it
    /// and without the comments before it.
    pub(crate) sql: String,
    /// The line (from 1) of the script where the statement starts.
    pub(crate) line: usize,
    /// The inline data of a PostgreSQL `COPY … FROM stdin`, each row ending
    /// with a line break, without the closing `\.` line.
    pub(crate) copy_data: Option<String>,
    /// How many times to run it (SQL Server `GO n`; otherwise 1).
    pub(crate) repeat: u32,
    /// What it does to the transaction around it.
    pub(crate) control: TxControl,
}

impl Statement {
    /// The statement on one line, whitespace collapsed, cut after `max` characters.
    pub(crate) fn shortened(&self, max: usize) -> String {
        let mut out = String::new();
        for (k, word) in self.sql.split_whitespace().enumerate() {
            if k > 0 {
                out.push(' ');
            }
            out.push_str(word);
            if out.chars().count() > max {
                break;
            }
        }
        if out.chars().count() > max {
            let cut: String = out.chars().take(max).collect();
            format!("{}…", cut.trim_end())
        } else {
            out
        }
    }
}

/// Why a script could not be split, or a placeholder not replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScriptError {
    /// What is wrong and what to do.
    pub(crate) message: String,
    /// The line (from 1) where it is.
    pub(crate) line: usize,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (line {})", self.message, self.line)
    }
}

impl std::error::Error for ScriptError {}

/// Splits `src` into its statements as `dialect`'s own client would.
///
/// # Errors
///
/// A `DELIMITER` command without a delimiter (MySQL), `GO 0` (SQL Server),
/// a psql command other than `\restrict` / `\unrestrict` (PostgreSQL).
pub(crate) fn split_script(src: &str, dialect: Dialect) -> Result<Vec<Statement>, ScriptError> {
    let mut s = Splitter {
        src,
        dialect,
        lexer: Lexer::new(src, Syntax::of(dialect)),
        line_starts: std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect(),
        out: Vec::new(),
        delimiter: None,
        cur: Current::default(),
    };
    s.run()?;
    Ok(s.out)
}

/// Words of a statement remembered for telling what it is.
const KEPT_WORDS: usize = 8;

/// The statement being read.
#[derive(Default)]
struct Current {
    /// Where its first token starts.
    start: Option<usize>,
    /// Its first words, upper-cased.
    words: Vec<String>,
    /// How many words it has had.
    word_count: usize,
    /// The last word, upper-cased.
    prev: String,
    /// A `(` was seen.
    saw_paren: bool,
    /// Its body holds statements of its own (`BEGIN … END`): only a `;` at
    /// depth 0 ends it.
    compound: bool,
    /// Open blocks of a compound statement.
    depth: u32,
    /// Open parentheses: psql ends no statement inside them (`CREATE RULE
    /// … DO ALSO (…; …)`).
    parens: u32,
    /// A PostgreSQL `COPY … FROM STDIN`.
    copy_from_stdin: bool,
}

struct Splitter<'a> {
    src: &'a str,
    dialect: Dialect,
    lexer: Lexer<'a>,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
    out: Vec<Statement>,
    /// A MySQL `DELIMITER` in force other than `;`.
    delimiter: Option<String>,
    cur: Current,
}

impl Splitter<'_> {
    fn line_of(&self, pos: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= pos)
    }

    /// End of the line holding `pos`: the offset of its `\n`, or the end.
    fn line_end(&self, pos: usize) -> usize {
        self.src[pos..]
            .find('\n')
            .map_or(self.src.len(), |i| pos + i)
    }

    /// Comments and whitespace, except MySQL's `/*! … */` (code the server runs).
    fn is_trivia(&self, tok: Token) -> bool {
        if !tok.kind.is_trivia() {
            return false;
        }
        !(self.dialect == Dialect::MySql
            && matches!(tok.kind, TokenKind::BlockComment { .. })
            && (tok.text(self.src).starts_with("/*!") || tok.text(self.src).starts_with("/*M!")))
    }

    fn run(&mut self) -> Result<(), ScriptError> {
        while let Some(tok) = self.lexer.next() {
            if self.is_trivia(tok) {
                continue;
            }
            if self.dialect == Dialect::MsSql && self.go_line(tok)? {
                continue;
            }
            if self.dialect == Dialect::Postgres
                && self.cur.start.is_none()
                && tok.kind == TokenKind::Punct(b'\\')
            {
                self.psql_meta_command(tok)?;
                continue;
            }
            if self.dialect == Dialect::MySql
                && self.cur.start.is_none()
                && tok.kind == TokenKind::Word
                && tok.text(self.src).eq_ignore_ascii_case("DELIMITER")
            {
                self.delimiter_command(tok)?;
                continue;
            }
            if let Some(d) = self.delimiter.clone() {
                if let Some(at) = self.delimiter_in(tok, &d) {
                    if at > tok.start && self.cur.start.is_none() {
                        self.cur.start = Some(tok.start);
                    }
                    self.finish(at);
                    self.lexer.skip_to(at + d.len());
                    continue;
                }
            } else if tok.kind == TokenKind::Punct(b';')
                && self.cur.depth == 0
                && self.cur.parens == 0
                && self.dialect != Dialect::MsSql
            {
                self.finish(tok.start);
                continue;
            }
            if self.cur.start.is_none() {
                self.cur.start = Some(tok.start);
            }
            match tok.kind {
                TokenKind::Word => self.word(tok),
                TokenKind::Punct(b'(') => {
                    self.cur.saw_paren = true;
                    if self.dialect == Dialect::Postgres {
                        self.cur.parens += 1;
                    }
                }
                TokenKind::Punct(b')') => self.cur.parens = self.cur.parens.saturating_sub(1),
                _ => {}
            }
        }
        self.finish(self.src.len());
        Ok(())
    }

    /// Where the MySQL delimiter `d` starts in `tok`, if it does: the mysql
    /// client looks for it byte by byte outside quotes and comments, so it
    /// may sit inside what the lexer reads as one word (`END$$`).
    fn delimiter_in(&self, tok: Token, d: &str) -> Option<usize> {
        if matches!(
            tok.kind,
            TokenKind::String { .. }
                | TokenKind::QuotedIdent { .. }
                | TokenKind::BlockComment { .. }
                | TokenKind::LineComment
        ) {
            return None;
        }
        (tok.start..tok.end)
            .filter(|&p| self.src.is_char_boundary(p))
            .find(|&p| self.src[p..].starts_with(d))
    }

    /// `DELIMITER xx`: the rest of the line names the new delimiter (its
    /// first run of non-blank characters).
    fn delimiter_command(&mut self, tok: Token) -> Result<(), ScriptError> {
        let end = self.line_end(tok.end);
        let rest = self.src[tok.end..end].trim();
        let new = rest.split_whitespace().next().unwrap_or_default();
        if new.is_empty() || new.contains('\\') {
            return Err(ScriptError {
                message: "DELIMITER needs a delimiter after it on the same line (for example `DELIMITER //`, and `DELIMITER ;` to go back), without a backslash".to_owned(),
                line: self.line_of(tok.start),
            });
        }
        self.delimiter = (new != ";").then(|| new.to_owned());
        self.lexer.skip_to(end);
        Ok(())
    }

    /// PostgreSQL: a backslash where a statement would start begins one of
    /// psql's own commands, up to the end of the line. `\restrict` and
    /// `\unrestrict`, which `pg_dump` writes around a dump to guard psql
    /// against a hostile server, do nothing here and are skipped; any other
    /// (`\connect`, `\set`, `\i`, …) needs psql and is refused with its line.
    fn psql_meta_command(&mut self, tok: Token) -> Result<(), ScriptError> {
        let end = self.line_end(tok.start);
        let command = self.src[tok.start + 1..end]
            .split_whitespace()
            .next()
            .unwrap_or_default();
        if matches!(command, "restrict" | "unrestrict") {
            self.lexer.skip_to(end);
            return Ok(());
        }
        Err(ScriptError {
            message: format!(
                "`\\{command}` is a command of psql, not SQL, and no database driver can run it: \
                 remove it from the script (or run that part with psql)"
            ),
            line: self.line_of(tok.start),
        })
    }

    /// SQL Server: a line holding only `GO`, an optional count and an
    /// optional comment ends the batch.
    fn go_line(&mut self, tok: Token) -> Result<bool, ScriptError> {
        if tok.kind != TokenKind::Word || !tok.text(self.src).eq_ignore_ascii_case("GO") {
            return Ok(false);
        }
        let line_start = self.src[..tok.start].rfind('\n').map_or(0, |i| i + 1);
        if !self.src[line_start..tok.start].trim().is_empty() {
            return Ok(false);
        }
        let end = self.line_end(tok.end);
        let mut rest = self.src[tok.end..end].trim();
        if let Some(i) = rest.find("--") {
            rest = rest[..i].trim();
        }
        let count = if rest.is_empty() {
            1
        } else if rest.bytes().all(|b| b.is_ascii_digit()) {
            match rest.parse::<u32>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(ScriptError {
                        message: format!("`GO {rest}`: the count must be a number from 1"),
                        line: self.line_of(tok.start),
                    })
                }
            }
        } else {
            return Ok(false);
        };
        let before = self.out.len();
        self.finish(line_start);
        if self.out.len() > before {
            if let Some(last) = self.out.last_mut() {
                last.repeat = count;
            }
        }
        self.lexer.skip_to(end);
        Ok(true)
    }

    /// A word of the statement: what kind of statement it is, and the
    /// blocks of a compound one.
    fn word(&mut self, tok: Token) {
        let w = tok.text(self.src).to_ascii_uppercase();
        let cur = &mut self.cur;
        cur.word_count += 1;
        if cur.words.len() < KEPT_WORDS {
            cur.words.push(w.clone());
        }
        let first = cur.words.first().cloned().unwrap_or_default();
        if first == "COPY" && cur.prev == "FROM" && w == "STDIN" {
            cur.copy_from_stdin = true;
        }
        match self.dialect {
            Dialect::Sqlite => {
                if !cur.compound
                    && w == "TRIGGER"
                    && cur.words[..cur.words.len() - 1]
                        .iter()
                        .all(|x| matches!(x.as_str(), "CREATE" | "TEMP" | "TEMPORARY"))
                {
                    cur.compound = true;
                }
                if cur.compound {
                    match w.as_str() {
                        "BEGIN" | "CASE" => cur.depth += 1,
                        "END" => cur.depth = cur.depth.saturating_sub(1),
                        _ => {}
                    }
                }
            }
            Dialect::MySql if self.delimiter.is_none() => {
                let next_is_not = self.next_word() == "NOT";
                let cur = &mut self.cur;
                if !cur.compound {
                    let routine =
                        matches!(w.as_str(), "PROCEDURE" | "FUNCTION" | "TRIGGER" | "EVENT")
                            && first == "CREATE"
                            && !cur.saw_paren
                            && cur.word_count <= KEPT_WORDS
                            && !cur.words[..cur.words.len() - 1].iter().any(|x| {
                                matches!(
                                    x.as_str(),
                                    "TABLE"
                                        | "VIEW"
                                        | "INDEX"
                                        | "DATABASE"
                                        | "SCHEMA"
                                        | "USER"
                                        | "ROLE"
                                        | "SEQUENCE"
                                        | "SERVER"
                                        | "TABLESPACE"
                                )
                            });
                    // MariaDB's anonymous block: BEGIN NOT ATOMIC … END.
                    let block = cur.word_count == 1 && w == "BEGIN" && next_is_not;
                    cur.compound = routine || block;
                }
                let cur = &mut self.cur;
                if cur.compound && cur.prev != "END" {
                    let opens = match w.as_str() {
                        "BEGIN" | "CASE" | "LOOP" => true,
                        "IF" | "WHILE" | "REPEAT" => {
                            let next = self.next_token();
                            let call = next.is_some_and(|n| {
                                n.start == tok.end && n.kind == TokenKind::Punct(b'(')
                            });
                            !call && !matches!(self.next_word().as_str(), "EXISTS" | "NOT")
                        }
                        _ => false,
                    };
                    let cur = &mut self.cur;
                    if opens {
                        cur.depth += 1;
                    } else if w == "END" {
                        cur.depth = cur.depth.saturating_sub(1);
                    }
                }
            }
            Dialect::Postgres => {
                if first == "CREATE" && cur.prev == "BEGIN" && w == "ATOMIC" {
                    cur.compound = true;
                    cur.depth += 1;
                } else if cur.compound {
                    match w.as_str() {
                        "CASE" => cur.depth += 1,
                        "END" => cur.depth = cur.depth.saturating_sub(1),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        self.cur.prev = w;
    }

    /// The next token that is not whitespace or a comment.
    fn next_token(&self) -> Option<Token> {
        self.lexer.clone().find(|t| !t.kind.is_trivia())
    }

    /// The next token, upper-cased, when it is a word (else empty).
    fn next_word(&self) -> String {
        self.next_token()
            .filter(|t| t.kind == TokenKind::Word)
            .map(|t| t.text(self.src).to_ascii_uppercase())
            .unwrap_or_default()
    }

    /// Ends the current statement at `end` (the start of what ended it).
    fn finish(&mut self, end: usize) {
        let cur = std::mem::take(&mut self.cur);
        let Some(start) = cur.start else {
            return;
        };
        let sql = self.src[start..end.max(start)].trim_end();
        if sql.is_empty() {
            return;
        }
        let copy_data =
            (self.dialect == Dialect::Postgres && cur.copy_from_stdin).then(|| self.copy_data(end));
        self.out.push(Statement {
            sql: sql.to_owned(),
            line: self.line_of(start),
            copy_data,
            repeat: 1,
            control: control_of(&cur.words, self.dialect),
        });
    }

    /// The data of a `COPY … FROM stdin` whose statement ended at `end`: the
    /// lines after that one, up to a line `\.` (or the end of the script).
    /// The lexer goes on after it.
    fn copy_data(&mut self, end: usize) -> String {
        let data_start = (self.line_end(end) + 1).min(self.src.len());
        let mut line = data_start;
        while line < self.src.len() {
            let eol = self.line_end(line);
            if self.src[line..eol].trim_end_matches('\r') == "\\." {
                self.lexer.skip_to((eol + 1).min(self.src.len()));
                return self.src[data_start..line].to_owned();
            }
            line = eol + 1;
        }
        self.lexer.skip_to(self.src.len());
        self.src[data_start..].to_owned()
    }
}

/// What a statement starting with `words` does to the transaction around it.
fn control_of(words: &[String], dialect: Dialect) -> TxControl {
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or_default();
    match w(0) {
        "BEGIN" => match dialect {
            // MariaDB's BEGIN NOT ATOMIC is a block, not a transaction.
            Dialect::MySql if w(1) == "NOT" => TxControl::None,
            // T-SQL's BEGIN alone opens a block.
            Dialect::MsSql if !matches!(w(1), "TRAN" | "TRANSACTION" | "DISTRIBUTED") => {
                TxControl::None
            }
            _ => TxControl::Begin,
        },
        "START" if w(1) == "TRANSACTION" => TxControl::Begin,
        "COMMIT" => TxControl::Commit,
        "END" if dialect != Dialect::MySql => TxControl::Commit,
        "ROLLBACK" if w(1) == "TO" || w(2) == "TO" => TxControl::None,
        "ROLLBACK" => TxControl::Rollback,
        "ABORT" if dialect == Dialect::Postgres => TxControl::Rollback,
        _ => TxControl::None,
    }
}

/// The prefix and suffix of a placeholder, as Flyway writes them: `${name}`.
const PLACEHOLDER_OPEN: &str = "${";

/// Replaces Flyway-style `${name}` placeholders everywhere in `src` (as
/// Flyway does, comments and strings included) with what `lookup` gives.
/// A name is letters, digits, `_`, `.`, `:` and `-`; a `${` not followed by
/// such a name and `}` stays as it is.
///
/// # Errors
///
/// A placeholder `lookup` knows nothing of, named with its line.
pub(crate) fn replace_placeholders<'s>(
    src: &'s str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Cow<'s, str>, ScriptError> {
    if !src.contains(PLACEHOLDER_OPEN) {
        return Ok(Cow::Borrowed(src));
    }
    let mut out = String::with_capacity(src.len());
    let mut rest = 0;
    let mut from = 0;
    while let Some(i) = src[from..].find(PLACEHOLDER_OPEN) {
        let open = from + i;
        let name_start = open + PLACEHOLDER_OPEN.len();
        let name_len = src[name_start..]
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
            .count();
        let close = name_start + name_len;
        if name_len == 0 || src.as_bytes().get(close) != Some(&b'}') {
            from = name_start;
            continue;
        }
        let name = &src[name_start..close];
        let Some(value) = lookup(name) else {
            return Err(ScriptError {
                message: format!("no value for the placeholder `${{{name}}}`"),
                line: src[..open].matches('\n').count() + 1,
            });
        };
        out.push_str(&src[rest..open]);
        out.push_str(&value);
        rest = close + 1;
        from = rest;
    }
    out.push_str(&src[rest..]);
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Dialect::{MsSql, MySql, Postgres, Sqlite};

    fn sqls(src: &str, d: Dialect) -> Vec<String> {
        split_script(src, d)
            .expect("splits")
            .into_iter()
            .map(|s| s.sql)
            .collect()
    }

    #[test]
    fn semicolons_in_quotes_and_comments_end_nothing() {
        let src =
            "INSERT INTO t VALUES ('a;b'); -- c;d\nSELECT \"x;y\" /* ; */ FROM t;\n\nSELECT 1";
        for d in [Postgres, MySql, Sqlite] {
            assert_eq!(
                sqls(src, d),
                [
                    "INSERT INTO t VALUES ('a;b')",
                    "SELECT \"x;y\" /* ; */ FROM t",
                    "SELECT 1"
                ],
                "{d:?}"
            );
        }
    }

    #[test]
    fn lines_are_where_statements_start() {
        let src = "-- header\n\nCREATE TABLE a (id INT);\n/* two\nlines */ CREATE TABLE b (\n id INT\n);\n\n\nSELEC 1;";
        let st = split_script(src, Postgres).expect("splits");
        assert_eq!(
            st.iter().map(|s| s.line).collect::<Vec<_>>(),
            [3, 5, 10],
            "{st:?}"
        );
        assert_eq!(st[2].shortened(80), "SELEC 1");
    }

    #[test]
    fn postgres_dollar_quotes_and_nested_comments() {
        let src = "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$ LANGUAGE plpgsql;\n\
                   /* outer /* inner; */ still; */ SELECT 2;\nDO $$ BEGIN PERFORM 1; END $$;";
        assert_eq!(
            sqls(src, Postgres),
            [
                "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$ LANGUAGE plpgsql",
                "SELECT 2",
                "DO $$ BEGIN PERFORM 1; END $$"
            ]
        );
    }

    #[test]
    fn pg_dump_restrict_lines_are_skipped_and_other_psql_commands_refused() {
        // What pg_dump writes since its August 2025 releases.
        let src = "--\n-- PostgreSQL database dump\n--\n\n\\restrict AbC123xyz\n\nSET lock_timeout = 0;\n\
                   CREATE TABLE t (a text);\nCOPY t (a) FROM stdin;\nx\\ty\n\\.\n\n\\unrestrict AbC123xyz\n";
        let st = split_script(src, Postgres).expect("splits");
        assert_eq!(
            st.iter().map(|s| s.sql.as_str()).collect::<Vec<_>>(),
            [
                "SET lock_timeout = 0",
                "CREATE TABLE t (a text)",
                "COPY t (a) FROM stdin"
            ]
        );
        assert_eq!(st[0].line, 7);
        assert_eq!(st[2].copy_data.as_deref(), Some("x\\ty\n"));
        let err = split_script("SELECT 1;\n\\connect other\nSELECT 2;", Postgres)
            .expect_err("psql's \\connect cannot run");
        assert_eq!(err.line, 2);
        assert!(
            err.message.contains("`\\connect` is a command of psql"),
            "{err}"
        );
        // A backslash is psql's only where a statement would start.
        assert_eq!(sqls("SELECT E'a\\\\b';", Postgres), ["SELECT E'a\\\\b'"]);
    }

    #[test]
    fn postgres_begin_atomic_is_one_statement() {
        let src = "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT CASE WHEN a > 0 THEN 1 ELSE 0 END;\n  SELECT a;\nEND;\nSELECT f(1);";
        let st = sqls(src, Postgres);
        assert_eq!(st.len(), 2, "{st:?}");
        assert!(st[0].ends_with("END"), "{st:?}");
    }

    #[test]
    fn postgres_semicolons_in_parentheses_end_nothing() {
        let src = "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2));\nSELECT 1;";
        let st = sqls(src, Postgres);
        assert_eq!(st.len(), 2, "{st:?}");
        assert!(st[0].ends_with("VALUES (2))"), "{st:?}");
    }

    #[test]
    fn postgres_copy_from_stdin_takes_its_data() {
        let src = "CREATE TABLE t (a int, b text);\nCOPY t (a, b) FROM stdin;\n1\tone\n2\t\\N\n3\ta\\tb;c\n\\.\nSELECT count(*) FROM t;\n";
        let st = split_script(src, Postgres).expect("splits");
        assert_eq!(st.len(), 3, "{st:?}");
        assert_eq!(st[1].sql, "COPY t (a, b) FROM stdin");
        assert_eq!(
            st[1].copy_data.as_deref(),
            Some("1\tone\n2\t\\N\n3\ta\\tb;c\n")
        );
        assert_eq!(st[2].sql, "SELECT count(*) FROM t");
        assert_eq!(st[2].line, 7);
        // Without a closing line, the data runs to the end.
        let st = split_script("COPY t FROM STDIN;\n1\tx\n", Postgres).expect("splits");
        assert_eq!(st[0].copy_data.as_deref(), Some("1\tx\n"));
        // CRLF line ends.
        let st =
            split_script("COPY t FROM stdin;\r\n1\r\n\\.\r\nSELECT 1;", Postgres).expect("splits");
        assert_eq!(st[0].copy_data.as_deref(), Some("1\r\n"));
        assert_eq!(st[1].sql, "SELECT 1");
        // COPY to a file is an ordinary statement.
        let st = split_script("COPY t TO stdout;\nSELECT 1;", Postgres).expect("splits");
        assert_eq!(st[0].copy_data, None);
        assert_eq!(st.len(), 2);
    }

    #[test]
    fn mysql_delimiter_command() {
        for d in ["//", "$$", "|", ";;", "@@", "END_OF"] {
            let src = format!(
                "CREATE TABLE t (a INT);\nDELIMITER {d}\nCREATE PROCEDURE p()\nBEGIN\n  INSERT INTO t VALUES (1);\n  SELECT 'x{d}';\nEND{d}\nCREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW BEGIN SET NEW.a = 2; END {d}\nDELIMITER ;\nCALL p();\n"
            );
            let st = split_script(&src, MySql).expect("splits");
            assert_eq!(st.len(), 4, "{d}: {st:?}");
            assert_eq!(st[0].sql, "CREATE TABLE t (a INT)");
            assert!(
                st[1].sql.starts_with("CREATE PROCEDURE p()") && st[1].sql.ends_with("END"),
                "{d}: {}",
                st[1].sql
            );
            assert_eq!(st[1].line, 3);
            assert!(st[2].sql.ends_with("SET NEW.a = 2; END"), "{}", st[2].sql);
            assert_eq!(st[3].sql, "CALL p()");
            assert_eq!(st[3].line, 10);
        }
        let e = split_script("DELIMITER\nSELECT 1;", MySql).expect_err("no delimiter");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("DELIMITER //"), "{e}");
        // Lower case, and not a command on other dialects.
        assert_eq!(sqls("delimiter //\nSELECT 1//", MySql), ["SELECT 1"]);
    }

    #[test]
    fn mysql_routines_without_delimiter() {
        let src = "CREATE PROCEDURE p(IN n INT)\nBEGIN\n  DECLARE i INT DEFAULT 0;\n  IF n > 0 THEN\n    SET i = IF(n > 5, 5, n);\n  END IF;\n  WHILE i > 0 DO SET i = i - 1; END WHILE;\n  CASE i WHEN 0 THEN SELECT 1; ELSE SELECT 2; END CASE;\n  DROP TABLE IF EXISTS tmp;\nEND;\nCREATE TABLE event (id INT);\nCREATE DEFINER = CURRENT_USER TRIGGER tr BEFORE INSERT ON t FOR EACH ROW\nIF NEW.a < 0 THEN SET NEW.a = 0; END IF;\nSELECT 1;";
        let st = sqls(src, MySql);
        assert_eq!(st.len(), 4, "{st:#?}");
        assert!(
            st[0].ends_with("DROP TABLE IF EXISTS tmp;\nEND"),
            "{}",
            st[0]
        );
        assert_eq!(st[1], "CREATE TABLE event (id INT)");
        assert!(st[2].ends_with("END IF"), "{}", st[2]);
        // A trigger with a single statement and no block.
        assert_eq!(
            sqls(
                "CREATE TRIGGER t2 BEFORE INSERT ON t FOR EACH ROW SET NEW.a = 1;\nSELECT 2;",
                MySql
            )
            .len(),
            2
        );
        // MariaDB's anonymous block.
        assert_eq!(
            sqls(
                "BEGIN NOT ATOMIC SELECT 1; SELECT 2; END;\nSELECT 3;",
                MySql
            )
            .len(),
            2
        );
    }

    #[test]
    fn mysql_hash_comments_and_versioned_comments() {
        let src = "# a comment; with a semicolon\nSELECT 1; # trailing;\n/*!40101 SET NAMES utf8mb4 */;\nSELECT 'it''s', \"a;b\", 'c\\';d';";
        assert_eq!(
            sqls(src, MySql),
            [
                "SELECT 1",
                "/*!40101 SET NAMES utf8mb4 */",
                "SELECT 'it''s', \"a;b\", 'c\\';d'"
            ]
        );
    }

    #[test]
    fn sqlite_triggers() {
        let src = "CREATE TABLE t (a INT, b INT);\nCREATE TEMP TRIGGER IF NOT EXISTS tr AFTER INSERT ON t\nBEGIN\n  UPDATE t SET b = CASE WHEN new.a > 0 THEN 1 ELSE 0 END WHERE rowid = new.rowid;\n  SELECT 1;\nEND;\nINSERT INTO t (a) VALUES (1);";
        let st = sqls(src, Sqlite);
        assert_eq!(st.len(), 3, "{st:#?}");
        assert!(st[1].ends_with("SELECT 1;\nEND"), "{}", st[1]);
        // Transactions outside triggers are statements of their own.
        let st = split_script("BEGIN;\nSELECT 1;\nEND;", Sqlite).expect("splits");
        assert_eq!(
            st.iter().map(|s| s.control).collect::<Vec<_>>(),
            [TxControl::Begin, TxControl::None, TxControl::Commit]
        );
    }

    #[test]
    fn sql_server_go() {
        let src = "CREATE TABLE t (a INT);\nINSERT INTO t VALUES (1);\nGO\nCREATE PROCEDURE p AS\nBEGIN\n  SELECT 'GO';\n  -- GO\nEND\n  go  \nINSERT INTO t VALUES (2)\nGO 3 -- three times\nSELECT 1 AS go\n";
        let st = split_script(src, MsSql).expect("splits");
        assert_eq!(st.len(), 4, "{st:#?}");
        assert_eq!(
            st[0].sql,
            "CREATE TABLE t (a INT);\nINSERT INTO t VALUES (1);"
        );
        assert!(st[1].sql.starts_with("CREATE PROCEDURE p AS") && st[1].sql.ends_with("END"));
        assert_eq!(st[1].line, 4);
        assert_eq!(
            (st[2].sql.as_str(), st[2].repeat),
            ("INSERT INTO t VALUES (2)", 3)
        );
        assert_eq!(st[3].sql, "SELECT 1 AS go");
        assert!(split_script("SELECT 1\nGO 0\n", MsSql).is_err());
    }

    #[test]
    fn transaction_control_is_seen() {
        let st = split_script(
            "BEGIN;\nINSERT INTO t VALUES (1);\nCOMMIT;\nSTART TRANSACTION;\nROLLBACK TO SAVEPOINT a;\nROLLBACK;\nEND;",
            Postgres,
        )
        .expect("splits");
        assert_eq!(
            st.iter().map(|s| s.control).collect::<Vec<_>>(),
            [
                TxControl::Begin,
                TxControl::None,
                TxControl::Commit,
                TxControl::Begin,
                TxControl::None,
                TxControl::Rollback,
                TxControl::Commit
            ]
        );
    }

    #[test]
    fn empty_and_comment_only_scripts() {
        for d in [Postgres, MySql, Sqlite, MsSql] {
            assert!(sqls("", d).is_empty());
            assert!(sqls("  -- nothing\n/* at all */\n", d).is_empty(), "{d:?}");
            if d != MsSql {
                assert!(sqls(" ;;\n;", d).is_empty(), "{d:?}");
            }
        }
    }

    #[test]
    fn placeholders_are_replaced() {
        let look = |n: &str| match n {
            "schema" => Some("app".to_owned()),
            "flyway:user" => Some("me".to_owned()),
            _ => None,
        };
        assert_eq!(
            replace_placeholders("CREATE TABLE ${schema}.t; -- by ${flyway:user}", look)
                .expect("ok"),
            "CREATE TABLE app.t; -- by me"
        );
        assert!(matches!(
            replace_placeholders("SELECT 1", look).expect("ok"),
            Cow::Borrowed(_)
        ));
        // Not placeholders: kept.
        assert_eq!(
            replace_placeholders("SELECT '${', '${ x}', $${schema}", look).expect("ok"),
            "SELECT '${', '${ x}', $app"
        );
        let e = replace_placeholders("SELECT 1;\nSELECT ${nope};", look).expect_err("undefined");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("${nope}"), "{e}");
    }

    fn statement_strategy(d: Dialect) -> BoxedStrategy<String> {
        let mut parts = vec![
            "SELECT 1",
            "INSERT INTO t VALUES ('a;b')",
            "SELECT 'x''y;'",
            "UPDATE t SET a = 2 /* ; */ WHERE b = 3",
            "SELECT a -- c;\n FROM t",
            "DELETE FROM t",
        ];
        match d {
            Postgres => parts.extend([
                "DO $$ BEGIN PERFORM 1; END $$",
                "SELECT $t$;$t$",
                "SELECT E'\\';'",
                "SELECT 4 /* a /* b; */ c; */",
            ]),
            MySql => parts.extend([
                "SELECT \"a;b\"",
                "SELECT 'a\\';b'",
                "SELECT 1 # c;\n + 1",
                "SELECT `a;b` FROM t",
            ]),
            Sqlite => parts.extend([
                "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END",
                "SELECT `a;b`",
            ]),
            MsSql => {}
        }
        proptest::collection::vec(proptest::sample::select(parts), 0..6)
            .prop_map(|v| {
                v.into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
                    .join("\u{1}")
            })
            .boxed()
    }

    proptest! {
        #[test]
        fn never_panics_and_statements_lie_in_order(src in "\\PC{0,200}", k in 0usize..4) {
            let d = [Postgres, MySql, Sqlite, MsSql][k];
            if let Ok(st) = split_script(&src, d) {
                let mut from = 0;
                for s in &st {
                    prop_assert!(!s.sql.is_empty());
                    if s.copy_data.is_none() {
                        let at = src[from..].find(&s.sql).map(|i| from + i);
                        prop_assert!(at.is_some(), "{:?} not after {from} in {src:?}", s.sql);
                        let at = at.unwrap_or_default();
                        prop_assert_eq!(s.line, src[..at].matches('\n').count() + 1);
                        from = at + s.sql.len();
                    }
                }
            }
        }

        #[test]
        fn joined_statements_split_back(
            (d, joined) in (0usize..3).prop_flat_map(|k| {
                let d = [Postgres, MySql, Sqlite][k];
                (Just(d), statement_strategy(d))
            }),
            sep in proptest::sample::select(vec![";\n", "; ", ";\n\n-- note\n", ";\r\n"]),
        ) {
            let parts: Vec<&str> = if joined.is_empty() { Vec::new() } else { joined.split('\u{1}').collect() };
            let src = parts.join(sep);
            prop_assert_eq!(sqls(&src, d), parts);
        }

        #[test]
        fn mysql_delimiters_split_back(
            joined in statement_strategy(MySql),
            d in proptest::sample::select(vec!["//", "$$", "|", ";;", "~~"]),
        ) {
            let parts: Vec<&str> = if joined.is_empty() { Vec::new() } else { joined.split('\u{1}').collect() };
            let body: String = parts.iter().map(|p| format!("{p}{d}\n")).collect();
            let src = format!("DELIMITER {d}\n{body}DELIMITER ;\nSELECT 9;");
            let mut want: Vec<&str> = parts.clone();
            want.push("SELECT 9");
            prop_assert_eq!(sqls(&src, MySql), want);
        }

        #[test]
        fn go_batches_split_back(n in 1usize..5, count in 1u32..4) {
            let batches: Vec<String> = (0..n).map(|i| format!("SELECT {i};\nSELECT 'go';")).collect();
            let src = batches.iter().map(|b| format!("{b}\nGO {count}\n")).collect::<String>();
            let st = split_script(&src, MsSql).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(st.iter().map(|s| s.sql.clone()).collect::<Vec<_>>(), batches);
            prop_assert!(st.iter().all(|s| s.repeat == count));
        }
    }
}
