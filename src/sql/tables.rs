//! The tables a statement names, for the query cache: which cached reads a
//! write makes stale.
//!
//! It reads names where SQL puts tables (after `FROM`, `JOIN`, `INTO`,
//! `UPDATE`, `TABLE`, `USING`, `TRUNCATE`, and in a `FROM a, b` list) and
//! errs on the side of "every table" whenever the text does not say enough:
//! a table function in `FROM`, a write that is not a plain row change (DDL,
//! `CALL`, `SET`, …), a row change whose target it cannot find. What no text
//! shows (a view over another table, a function reading tables) is beyond
//! it; the cache's TTL bounds that.

use super::lex::{Lexer, Syntax, TokenKind};
use super::StatementKind;

/// The tables a statement reads or writes, as far as its text tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Tables {
    /// These tables: unquoted, lower-cased, the last part of a qualified
    /// name (`app."Users"` is `users`), so that two spellings of one table
    /// always meet (two tables of one name in two schemas meet too, which
    /// only costs an extra invalidation).
    Named(Vec<String>),
    /// The text does not tell: any table.
    All,
}

/// Words after which a table name comes.
const BEFORE_TABLE: &[&str] = &[
    "FROM", "JOIN", "INTO", "UPDATE", "TABLE", "USING", "TRUNCATE",
];

/// Words between a table keyword and the name (`DROP TABLE IF EXISTS t`,
/// `DELETE FROM ONLY t`, `INSERT IGNORE INTO t`).
const NOT_A_NAME: &[&str] = &[
    "ONLY",
    "IF",
    "NOT",
    "EXISTS",
    "TABLE",
    "LOW_PRIORITY",
    "HIGH_PRIORITY",
    "DELAYED",
    "IGNORE",
    "QUICK",
];

/// Keywords after which a name in table position is followed by a call's
/// `(` when it is a table function (`FROM generate_series(1, 3)`); after
/// `INTO` the `(` opens a column list.
const CALL_POSITION: &[&str] = &["FROM", "JOIN", "USING"];

/// Words after which `UPDATE` is a clause, not a table keyword (`FOR
/// UPDATE`, `ON DUPLICATE KEY UPDATE`, `DO UPDATE`, `ON UPDATE`).
const CLAUSE_OPENERS: &[&str] = &["FOR", "KEY", "DO", "ON"];

/// Words that end a `FROM a, b` list.
const END_OF_LIST: &[&str] = &[
    "WHERE",
    "GROUP",
    "ORDER",
    "LIMIT",
    "HAVING",
    "UNION",
    "INTERSECT",
    "EXCEPT",
    "ON",
    "SET",
    "WINDOW",
    "FETCH",
    "OFFSET",
    "FOR",
    "RETURNING",
    "VALUES",
    "SELECT",
    "JOIN",
    "INNER",
    "LEFT",
    "RIGHT",
    "FULL",
    "CROSS",
    "NATURAL",
    "OUTER",
    "OUTPUT",
];

/// First keywords of the writes whose tables are all named in the text.
const ROW_WRITES: &[&str] = &[
    "INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "UPSERT", "TRUNCATE",
];

/// The tables a read names. `Tables::All` when a table function stands
/// where a table would.
pub(crate) fn read_tables(sql: &str) -> Tables {
    let mut all = Vec::new();
    for s in statements(sql) {
        if s.unknown {
            return Tables::All;
        }
        all.extend(s.names);
    }
    Tables::Named(dedup(all))
}

/// The tables a statement (or script) may change: every table a plain row
/// change names (its target and those it reads: more is harmless),
/// nothing for a read, and `Tables::All` for anything else (DDL, `CALL`,
/// `SET`, `COMMIT`, a row change whose target it cannot find).
pub(crate) fn written_tables(sql: &str) -> Tables {
    let mut all = Vec::new();
    for s in statements(sql) {
        let Some(first) = s.first.as_deref() else {
            continue;
        };
        match super::classify_statement(&s.text) {
            StatementKind::Read => continue,
            StatementKind::Write(_) if is_one_of(first, ROW_WRITES) => {
                if s.unknown || s.names.is_empty() {
                    return Tables::All;
                }
                all.extend(s.names);
            }
            _ => return Tables::All,
        }
    }
    Tables::Named(dedup(all))
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.sort_unstable();
    v.dedup();
    v
}

/// What one statement of a script names.
#[derive(Default)]
struct Scanned {
    /// Its text (for the classifier).
    text: String,
    first: Option<String>,
    names: Vec<String>,
    /// A table position held something that is not a plain name.
    unknown: bool,
}

/// Where the scanner is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    /// After a table keyword (the keyword's index in `BEFORE_TABLE`), or a
    /// comma in a `FROM` list: a name comes.
    Expect {
        call_position: bool,
    },
    /// Inside a name (`a`, `a.`, `a.b`): the last part so far.
    Name {
        call_position: bool,
    },
    /// After a name's `.`.
    Dot {
        call_position: bool,
    },
}

fn statements(sql: &str) -> Vec<Scanned> {
    let mut out = Vec::new();
    let mut cur = Scanned::default();
    let mut start = 0;
    let mut state = State::Idle;
    let mut depth = 0usize;
    // The depths of the `FROM`/`UPDATE` lists open (a subquery's inside
    // its parent's).
    let mut lists: Vec<usize> = Vec::new();
    let mut name = String::new();
    let tokens = Lexer::new(sql, Syntax::ANY).filter(|t| !t.kind.is_trivia());
    let mut last_word: Option<&str> = None;
    for t in tokens {
        let text = t.text(sql);
        let prev = last_word;
        if t.kind == TokenKind::Word {
            last_word = Some(text);
        }
        // A name ends at anything but `.` and a next part.
        match state {
            State::Name { call_position } => {
                if t.kind == TokenKind::Punct(b'.') {
                    state = State::Dot { call_position };
                    continue;
                }
                if call_position && t.kind == TokenKind::Punct(b'(') {
                    cur.unknown = true;
                } else {
                    cur.names.push(std::mem::take(&mut name));
                }
                name.clear();
                state = State::Idle;
            }
            State::Dot { call_position } => {
                if let Some(part) = part(t.kind, text) {
                    name = part;
                    state = State::Name { call_position };
                    continue;
                }
                // `a.*` or something odd: keep what there was.
                cur.names.push(std::mem::take(&mut name));
                state = State::Idle;
            }
            _ => {}
        }
        match t.kind {
            TokenKind::Punct(b';') => {
                cur.text = sql[start..t.start].to_owned();
                start = t.end;
                out.push(std::mem::take(&mut cur));
                state = State::Idle;
                depth = 0;
                lists.clear();
                continue;
            }
            TokenKind::Punct(b'(') => {
                depth += 1;
                state = State::Idle;
                continue;
            }
            TokenKind::Punct(b')') => {
                depth = depth.saturating_sub(1);
                while lists.last().is_some_and(|&d| d > depth) {
                    lists.pop();
                }
                state = State::Idle;
                continue;
            }
            TokenKind::Punct(b',') if lists.last() == Some(&depth) && state == State::Idle => {
                state = State::Expect {
                    call_position: true,
                };
                continue;
            }
            _ => {}
        }
        if t.kind == TokenKind::Word && cur.first.is_none() {
            cur.first = Some(text.to_ascii_uppercase());
        }
        if let State::Expect { call_position } = state {
            if t.kind == TokenKind::Word && is_one_of(text, NOT_A_NAME) {
                continue;
            }
            match part(t.kind, text) {
                Some(p) if !(t.kind == TokenKind::Word && is_one_of(text, END_OF_LIST)) => {
                    name = p;
                    state = State::Name { call_position };
                    continue;
                }
                // `FROM (SELECT …)` is handled above; anything else in a
                // table position is not a name this scanner knows.
                _ => {
                    cur.unknown = true;
                    state = State::Idle;
                }
            }
        }
        if t.kind == TokenKind::Word {
            let clause = prev.is_some_and(|p| is_one_of(p, CLAUSE_OPENERS));
            let keyword = BEFORE_TABLE.iter().find(|k| k.eq_ignore_ascii_case(text));
            if let Some(k) = keyword.filter(|_| !clause) {
                state = State::Expect {
                    call_position: CALL_POSITION.contains(k),
                };
                if matches!(*k, "FROM" | "UPDATE" | "USING") && lists.last() != Some(&depth) {
                    lists.push(depth);
                }
            } else if lists.last() == Some(&depth) && is_one_of(text, END_OF_LIST) {
                lists.pop();
            }
        }
    }
    match state {
        State::Name { .. } | State::Dot { .. } => cur.names.push(name),
        State::Expect { .. } => cur.unknown = true,
        State::Idle => {}
    }
    cur.text = sql[start..].to_owned();
    out.push(cur);
    out
}

/// A name part from a word or quoted identifier, unquoted and lower-cased.
fn part(kind: TokenKind, text: &str) -> Option<String> {
    match kind {
        TokenKind::Word => Some(text.to_lowercase()),
        TokenKind::QuotedIdent { terminated: true } | TokenKind::BracketIdent => {
            let inner = text.get(1..text.len().saturating_sub(1))?;
            let q = &text[..1];
            let close = if q == "[" { "]" } else { q };
            Some(inner.replace(&close.repeat(2), close).to_lowercase())
        }
        _ => None,
    }
}

fn is_one_of(word: &str, keywords: &[&str]) -> bool {
    keywords.iter().any(|k| k.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(v: &[&str]) -> Tables {
        Tables::Named(v.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn reads_name_their_tables() {
        assert_eq!(read_tables("SELECT 1"), named(&[]));
        assert_eq!(read_tables("SELECT * FROM t WHERE id = ?"), named(&["t"]));
        assert_eq!(
            read_tables("select a.x from app.\"Users\" a join [Orders] o on o.u = a.id"),
            named(&["orders", "users"])
        );
        assert_eq!(
            read_tables("SELECT * FROM a, b AS bb, c cc WHERE a.x IN (SELECT y FROM d)"),
            named(&["a", "b", "c", "d"])
        );
        assert_eq!(
            read_tables("SELECT * FROM (SELECT x FROM inner_t) s, `q`"),
            named(&["inner_t", "q"])
        );
        assert_eq!(
            read_tables("SELECT 'FROM x' AS s, f(1, 2) FROM t -- FROM y"),
            named(&["t"])
        );
        assert_eq!(
            read_tables("SELECT * FROM generate_series(1, 3)"),
            Tables::All
        );
        assert_eq!(read_tables("SELECT * FROM"), Tables::All);
        assert_eq!(read_tables("SELECT * FROM t FOR UPDATE"), named(&["t"]));
    }

    #[test]
    fn writes_name_their_targets_or_say_all() {
        assert_eq!(
            written_tables("INSERT INTO t (a, b) VALUES (?, ?)"),
            named(&["t"])
        );
        assert_eq!(
            written_tables("UPDATE public.t SET a = 1 WHERE id IN (SELECT id FROM u)"),
            named(&["t", "u"])
        );
        assert_eq!(written_tables("DELETE FROM ONLY t"), named(&["t"]));
        assert_eq!(
            written_tables("INSERT INTO t (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET n = 2"),
            named(&["t"])
        );
        assert_eq!(written_tables("TRUNCATE TABLE t"), named(&["t"]));
        assert_eq!(written_tables("truncate t"), named(&["t"]));
        assert_eq!(written_tables("SELECT * FROM t"), named(&[]));
        assert_eq!(written_tables("DELETE t WHERE id = 1"), Tables::All);
        assert_eq!(written_tables("CREATE INDEX i ON t (a)"), Tables::All);
        assert_eq!(written_tables("COMMIT"), Tables::All);
        assert_eq!(
            written_tables("INSERT INTO a VALUES (1); UPDATE b SET x = 2"),
            named(&["a", "b"])
        );
        assert_eq!(
            written_tables("INSERT INTO a VALUES (1); DROP TABLE b"),
            Tables::All
        );
    }
}
