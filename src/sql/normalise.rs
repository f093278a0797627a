//! A statement's shape for logs and statistics, with no value written into it.

use super::lex::{Lexer, Syntax, TokenKind};
use super::Dialect;

/// The statement's shape for logs and statistics: comments dropped,
/// whitespace collapsed, string, number and dollar-quoted literals replaced
/// by `?` (so no value written into the SQL reaches a log), at most `max`
/// bytes (cut at a character boundary, with `…`).
pub(crate) fn normalise(sql: &str, dialect: Dialect, max: usize) -> String {
    let mut out = String::with_capacity(sql.len().min(max) + 4);
    // Whitespace or a comment came since the last piece written.
    let mut space = false;
    let mut cut = false;
    for token in Lexer::new(sql, Syntax::of(dialect)) {
        if out.len() >= max {
            cut = true;
            break;
        }
        let piece = match token.kind {
            kind if kind.is_trivia() => {
                space = true;
                continue;
            }
            TokenKind::String { .. } | TokenKind::DollarQuoted { .. } | TokenKind::Number => "?",
            _ => token.text(sql),
        };
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push_str(piece);
    }
    truncate(&mut out, max);
    if cut {
        out.push('…');
    }
    out
}

/// Cuts `out` to at most `max` bytes, at a character boundary.
fn truncate(out: &mut String, max: usize) {
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
