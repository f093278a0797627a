//! Read or write: what a statement does to the database, from its keywords.

use super::lex::{Lexer, Syntax, TokenKind};

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

impl StatementKind {
    /// The kind of a script whose statements so far are `self` and whose next one
    /// is `next`: a write if any statement writes, unknown if any is unknown.
    fn then(self, next: StatementKind) -> StatementKind {
        match (self, next) {
            (w @ StatementKind::Write(_), _) | (_, w @ StatementKind::Write(_)) => w,
            (StatementKind::Unknown, _) | (_, StatementKind::Unknown) => StatementKind::Unknown,
            (StatementKind::Read, StatementKind::Read) => StatementKind::Read,
        }
    }
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

/// Words after which a DML keyword is a clause, not a statement (`FOR UPDATE`,
/// `FOR NO KEY UPDATE`, `FOR SHARE`, `ON DELETE`, `ON UPDATE`).
const CLAUSE_OPENERS: &[&str] = &["FOR", "KEY", "ON", "SHARE"];

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
    let mut script = StatementKind::Read;
    let mut statement = Statement::default();
    // Parentheses open in the current statement.
    let mut depth = 0usize;
    for token in Lexer::new(sql, Syntax::ANY) {
        match token.kind {
            TokenKind::Word => statement.word(token.text(sql), depth),
            TokenKind::Punct(b'(') => depth += 1,
            TokenKind::Punct(b')') => depth = depth.saturating_sub(1),
            TokenKind::Punct(b';') => {
                script = script.then(statement.kind());
                if matches!(script, StatementKind::Write(_)) {
                    return script;
                }
                statement = Statement::default();
                depth = 0;
            }
            _ => {}
        }
    }
    script.then(statement.kind())
}

/// What the classifier keeps of one statement's words, as they come.
#[derive(Debug, Default)]
struct Statement<'a> {
    /// The first word.
    first: Option<&'a str>,
    /// The word before the current one.
    prev: Option<&'a str>,
    /// The first DML keyword after the first word that is not part of a clause.
    dml: Option<&'a str>,
    /// A read keyword after the first word, outside parentheses (`WITH … SELECT`).
    reads: bool,
}

impl<'a> Statement<'a> {
    /// Takes the next word, at parenthesis depth `depth`.
    fn word(&mut self, word: &'a str, depth: usize) {
        if self.first.is_none() {
            self.first = Some(word);
        } else {
            if self.dml.is_none()
                && is_one_of(word, DML_KEYWORDS)
                && !self.prev.is_some_and(|p| is_one_of(p, CLAUSE_OPENERS))
            {
                self.dml = Some(word);
            }
            self.reads |= depth == 0 && is_one_of(word, READ_KEYWORDS);
        }
        self.prev = Some(word);
    }

    /// What the statement does, from its words.
    fn kind(&self) -> StatementKind {
        let Some(first) = self.first else {
            return StatementKind::Read;
        };
        if is_one_of(first, WRITE_KEYWORDS) {
            return StatementKind::Write(first.to_ascii_uppercase());
        }
        let with = first.eq_ignore_ascii_case("WITH");
        if with || first.eq_ignore_ascii_case("EXPLAIN") {
            return match self.dml {
                Some(dml) => StatementKind::Write(dml.to_ascii_uppercase()),
                None if !with || self.reads => StatementKind::Read,
                None => StatementKind::Unknown,
            };
        }
        if is_one_of(first, READ_KEYWORDS) {
            return StatementKind::Read;
        }
        StatementKind::Unknown
    }
}

/// Whether `word` is one of `keywords` (upper case), ignoring ASCII case.
fn is_one_of(word: &str, keywords: &[&str]) -> bool {
    keywords.iter().any(|k| k.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
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
