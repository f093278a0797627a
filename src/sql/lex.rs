//! The one SQL lexer: a statement split into tokens, each a kind and a byte span.
//!
//! It knows just enough of each dialect's lexical rules (string literals, quoted
//! identifiers, comments, PostgreSQL dollar quoting and escape strings, native and
//! portable placeholders) for the translator, the normaliser and the classifier to
//! agree on what is code and what is opaque text.
//!
//! The lexer is total: any input, SQL or not, is split into non-empty tokens that
//! tile it exactly, in order, each starting and ending on a character boundary.
//! An unterminated string, quoted identifier, comment or dollar-quoted body runs to
//! the end of the input and says so (`terminated: false`); the server reports it.
//!
//! A few tokens depend on what comes before them, and the lexer keeps just enough
//! state (no allocation) to tell:
//!
//! - `[x]` is a portable quoted identifier unless it subscripts something
//!   (`arr[i]`, `(x)[1]`, `"a"[1]`), follows the word `ARRAY`, or sits inside
//!   another subscript or array constructor;
//! - on PostgreSQL, a `:` right after a subscript's `[`, or after an operand at a
//!   subscript's own level, is an array slice (`tags[:n]`, `tags[lo :hi]`), never a
//!   `:name` placeholder;
//! - `E'…'` takes backslash escapes on PostgreSQL when the `E` is a word of its own;
//! - in the dialect-agnostic syntax, `#` opens a comment only before a statement's
//!   first word (elsewhere it is PostgreSQL's XOR operator).

use super::Dialect;

/// What a token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TokenKind {
    /// Spaces, tabs, line breaks, vertical tabs and form feeds.
    Whitespace,
    /// `-- …`, or `# …` where `#` is a comment, up to but not including the line break.
    LineComment,
    /// `/* … */`, nested where the dialect nests them.
    BlockComment {
        /// Whether the closing `*/` was found (otherwise the comment runs to the end).
        terminated: bool,
    },
    /// A string literal: `'…'` with `''` escaping `'`, MySQL's `"…"`; backslash
    /// escapes on MySQL and in PostgreSQL `E'…'`. A prefix (`N`, `E`) is a word of
    /// its own before it.
    String {
        /// Whether the closing quote was found (otherwise the string runs to the end).
        terminated: bool,
    },
    /// A quoted identifier: `"…"`, `` `…` `` (MySQL, SQLite), or `[…]` where brackets
    /// are native quoting (SQL Server, and the dialect-agnostic syntax).
    QuotedIdent {
        /// Whether the closing quote was found (otherwise the identifier runs to the end).
        terminated: bool,
    },
    /// A portable `[identifier]`, for the translator to quote in the dialect's way.
    BracketIdent,
    /// A PostgreSQL dollar-quoted body, `$$…$$` or `$tag$…$tag$`.
    DollarQuoted {
        /// Whether the closing tag was found (otherwise the body runs to the end).
        terminated: bool,
    },
    /// `::`, PostgreSQL's cast (and SQL Server's static member access).
    Cast,
    /// `?`: a portable positional placeholder.
    Question,
    /// `??`: a literal `?` in portable SQL.
    DoubleQuestion,
    /// `?` directly followed by digits: a numbered placeholder, native to SQLite only.
    NumberedQuestion,
    /// `:name`: a portable named placeholder.
    Named,
    /// A native placeholder: PostgreSQL `$1`, SQL Server `@P1`, SQLite `@name` and `$name`.
    Native,
    /// An identifier or keyword (non-ASCII characters count as letters).
    Word,
    /// A number: a digit, then letters, digits, `_`, `$` and decimal dots (`1.5e3`,
    /// `0x1F`, `1.`).
    Number,
    /// One byte of anything else, always ASCII: operators, `(`, `,`, `;`, a `[` that
    /// subscripts or constructs an array, a `:` that is not a placeholder, …
    Punct(u8),
}

impl TokenKind {
    /// Whitespace or a comment: text that means nothing to the statement.
    pub(super) fn is_trivia(self) -> bool {
        matches!(
            self,
            TokenKind::Whitespace | TokenKind::LineComment | TokenKind::BlockComment { .. }
        )
    }

    /// Whether the token is a value or name that an operator or a slice `:` can follow.
    fn is_operand(self) -> bool {
        matches!(
            self,
            TokenKind::String { .. }
                | TokenKind::QuotedIdent { .. }
                | TokenKind::BracketIdent
                | TokenKind::DollarQuoted { .. }
                | TokenKind::Question
                | TokenKind::NumberedQuestion
                | TokenKind::Named
                | TokenKind::Native
                | TokenKind::Word
                | TokenKind::Number
                | TokenKind::Punct(b')' | b']')
        )
    }
}

/// One token: its kind and where it is in the source, as byte offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Token {
    /// What the token is.
    pub(super) kind: TokenKind,
    /// Byte offset of the token's first byte.
    pub(super) start: usize,
    /// Byte offset just past the token's last byte.
    pub(super) end: usize,
}

impl Token {
    /// The token's text in `src`, the string it was lexed from.
    pub(super) fn text(self, src: &str) -> &str {
        src.get(self.start..self.end).unwrap_or_default()
    }
}

/// Where `#` opens a line comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HashComments {
    /// Nowhere: `#` is an operator (PostgreSQL's XOR) or part of a name.
    Never,
    /// Everywhere (MySQL).
    Always,
    /// Only before the first word of a statement, where no operator can stand.
    StatementStart,
}

/// What `[` opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Brackets {
    /// A quoted identifier up to `]`, `]]` escaping `]` (SQL Server).
    Quote,
    /// A portable `[identifier]` or, by context, a subscript or array constructor.
    Portable,
}

/// Which native placeholders the dialect has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NativeParams {
    /// None besides `?` (MySQL), or none recognised (the dialect-agnostic syntax).
    None,
    /// `$1` (PostgreSQL).
    Dollar,
    /// `@P1` (SQL Server).
    AtP,
    /// `@name` and `$name` (SQLite; its `?1` is a [`TokenKind::NumberedQuestion`]).
    Sqlite,
}

/// The lexical rules of one dialect, or the dialect-agnostic rules of [`Syntax::ANY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Syntax {
    /// A backslash escapes the next character in `'…'` and `"…"` strings (MySQL).
    backslash_escapes: bool,
    /// `"…"` is a string literal, not a quoted identifier (MySQL).
    double_quoted_strings: bool,
    /// `E'…'` strings take backslash escapes (PostgreSQL).
    escape_strings: bool,
    /// `$tag$…$tag$` quotes a body (PostgreSQL).
    dollar_quotes: bool,
    /// Dollar-quote tags are ASCII only (elsewhere `$é$` may be a name).
    ascii_dollar_tags: bool,
    /// `` `…` `` quotes an identifier (MySQL, SQLite).
    backticks: bool,
    /// `/* */` comments nest (PostgreSQL, SQL Server).
    nested_comments: bool,
    /// `--` opens a comment only when whitespace, a control character or the end
    /// follows it (MySQL).
    dash_comment_needs_space: bool,
    /// A carriage return ends a line comment, as a line feed does (PostgreSQL).
    carriage_return_ends_comment: bool,
    /// Where `#` opens a line comment.
    hash_comments: HashComments,
    /// What `[` opens.
    brackets: Brackets,
    /// The dialect's native placeholders.
    native: NativeParams,
    /// Subscripts take `[lo:hi]` slices (PostgreSQL).
    array_slices: bool,
}

impl Syntax {
    /// Rules shared by every dialect; each dialect turns on its own.
    const BASE: Syntax = Syntax {
        backslash_escapes: false,
        double_quoted_strings: false,
        escape_strings: false,
        dollar_quotes: false,
        ascii_dollar_tags: false,
        backticks: false,
        nested_comments: false,
        dash_comment_needs_space: false,
        carriage_return_ends_comment: false,
        hash_comments: HashComments::Never,
        brackets: Brackets::Portable,
        native: NativeParams::None,
        array_slices: false,
    };

    /// The rules for reading a statement of unknown dialect when hiding too little is
    /// safer than hiding too much (the read-only classifier): every dialect's quoting
    /// (`"…"`, `` `…` ``, `[…]`, dollar quotes) and nested comments, but no backslash
    /// escapes, since reading too little of a literal can only show more keywords;
    /// dollar quotes only with ASCII tags (`$é$` is a name on MySQL); `#` comments
    /// only before a statement's first word.
    pub(super) const ANY: Syntax = Syntax {
        dollar_quotes: true,
        ascii_dollar_tags: true,
        backticks: true,
        nested_comments: true,
        hash_comments: HashComments::StatementStart,
        brackets: Brackets::Quote,
        ..Syntax::BASE
    };

    /// The rules of `dialect`.
    pub(super) const fn of(dialect: Dialect) -> Syntax {
        match dialect {
            Dialect::Postgres => Syntax {
                escape_strings: true,
                dollar_quotes: true,
                nested_comments: true,
                carriage_return_ends_comment: true,
                native: NativeParams::Dollar,
                array_slices: true,
                ..Syntax::BASE
            },
            Dialect::MySql => Syntax {
                backslash_escapes: true,
                double_quoted_strings: true,
                backticks: true,
                dash_comment_needs_space: true,
                hash_comments: HashComments::Always,
                ..Syntax::BASE
            },
            Dialect::Sqlite => Syntax {
                backticks: true,
                native: NativeParams::Sqlite,
                ..Syntax::BASE
            },
            Dialect::MsSql => Syntax {
                nested_comments: true,
                brackets: Brackets::Quote,
                native: NativeParams::AtP,
                ..Syntax::BASE
            },
        }
    }
}

/// The last token that was not whitespace or a comment, as far as `[` and `:` care.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Prev {
    /// Nothing yet, an operator or other punctuation, a cast, `??`.
    #[default]
    Other,
    /// The word `ARRAY`: a `[` after it constructs an array.
    Array,
    /// A value, name, or closing `)` / `]`.
    Operand,
    /// A `[` that did not open a portable identifier.
    OpenBracket,
}

/// Which of the open `(` and `[` groups are subscripts: a stack of bits, one per
/// level, that forgets what lies deeper than 64 levels (such groups count as not
/// being subscripts).
#[derive(Clone, Copy, Debug, Default)]
struct Groups {
    /// Bit `k` is set when the group at depth `k` (0 = outermost) is a subscript.
    bits: u64,
    /// Number of open groups.
    depth: usize,
}

impl Groups {
    /// Opens a group.
    fn push(&mut self, subscript: bool) {
        if self.depth < 64 {
            let bit = 1u64 << self.depth;
            if subscript {
                self.bits |= bit;
            } else {
                self.bits &= !bit;
            }
        }
        self.depth = self.depth.saturating_add(1);
    }

    /// Closes the innermost group, if any.
    fn pop(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Whether the innermost open group is a subscript.
    fn in_subscript(&self) -> bool {
        matches!(self.depth, 1..=64) && self.bits >> (self.depth - 1) & 1 == 1
    }
}

/// What the lexer remembers of the tokens before the current one.
#[derive(Clone, Copy, Debug, Default)]
struct Context {
    /// The last token that was not whitespace or a comment.
    prev: Prev,
    /// Open `[` that subscript or construct arrays (not portable identifiers).
    open_brackets: usize,
    /// The open groups, for telling slices from placeholders.
    groups: Groups,
    /// The token just lexed is a PostgreSQL `E` directly before a `'`.
    escape_string_next: bool,
    /// A word was seen since the start or the last `;`.
    statement_has_word: bool,
}

/// The lexer: an iterator over the tokens of one statement (or script).
#[derive(Clone, Debug)]
pub(super) struct Lexer<'a> {
    /// The source, as bytes; tokens only ever split it at ASCII bytes.
    src: &'a [u8],
    /// Where the next token starts.
    pos: usize,
    /// The rules in force.
    syntax: Syntax,
    /// What the lexer remembers of earlier tokens.
    context: Context,
}

impl<'a> Lexer<'a> {
    /// A lexer for `src` under `syntax`.
    pub(super) fn new(src: &'a str, syntax: Syntax) -> Self {
        Lexer {
            src: src.as_bytes(),
            pos: 0,
            syntax,
            context: Context::default(),
        }
    }

    /// Moves on to `pos` (clamped to the source, moved forward to a character
    /// boundary), forgetting what came before as at a statement's start: the
    /// script splitter skips text that is not SQL (a `DELIMITER` line, `COPY`
    /// data).
    pub(super) fn skip_to(&mut self, pos: usize) {
        let mut pos = pos.min(self.src.len()).max(self.pos);
        while pos < self.src.len() && (self.src[pos] & 0xC0) == 0x80 {
            pos += 1;
        }
        self.pos = pos;
        self.context = Context::default();
    }

    /// The byte at `i`, if any.
    fn byte(&self, i: usize) -> Option<u8> {
        self.src.get(i).copied()
    }

    /// The byte just before `i`, if any.
    fn byte_before(&self, i: usize) -> Option<u8> {
        i.checked_sub(1).and_then(|j| self.byte(j))
    }

    /// The kind and end of the token starting at `start` with byte `first`.
    fn lex_token(&self, start: usize, first: u8) -> (TokenKind, usize) {
        let next = self.byte(start + 1);
        match first {
            c if is_space(c) => (TokenKind::Whitespace, run_end(self.src, start, is_space)),
            b'-' if next == Some(b'-') && self.dash_comment_at(start) => {
                (TokenKind::LineComment, self.line_end(start))
            }
            b'#' if self.hash_comment_here() => (TokenKind::LineComment, self.line_end(start)),
            b'/' if next == Some(b'*') => self.block_comment(start),
            b'\'' => {
                let backslash = self.syntax.backslash_escapes || self.context.escape_string_next;
                self.string(start, b'\'', backslash)
            }
            b'"' if self.syntax.double_quoted_strings => {
                self.string(start, b'"', self.syntax.backslash_escapes)
            }
            b'"' => self.quoted_ident(start, b'"'),
            b'`' if self.syntax.backticks => self.quoted_ident(start, b'`'),
            b'[' => self.bracket(start),
            b'$' => self.dollar(start),
            b'@' => self.at(start),
            b'?' => self.question(start),
            b':' => self.colon(start),
            b'0'..=b'9' => (TokenKind::Number, self.number_end(start)),
            c if is_ident_start(c) => (TokenKind::Word, run_end(self.src, start, is_ident_byte)),
            c => (TokenKind::Punct(c), start + 1),
        }
    }

    /// End of a number starting at `start`: identifier bytes (`0x1F`, `1e5`), and dots
    /// followed by a digit or by no identifier byte (`1.5e3`, `1.`). A dot before a
    /// letter, `_`, `$` or non-ASCII ends the number, so `1.x` leaves `x` a word and
    /// `1.$1` a placeholder.
    fn number_end(&self, start: usize) -> usize {
        let mut j = start;
        while let Some(c) = self.byte(j) {
            let decimal_dot = c == b'.'
                && self
                    .byte(j + 1)
                    .map_or(true, |n| n.is_ascii_digit() || !is_ident_byte(n));
            if !(is_ident_byte(c) || decimal_dot) {
                break;
            }
            j += 1;
        }
        j
    }

    /// Whether the `--` at `start` opens a comment.
    fn dash_comment_at(&self, start: usize) -> bool {
        !self.syntax.dash_comment_needs_space || self.byte(start + 2).map_or(true, |c| c <= b' ')
    }

    /// Whether a `#` here opens a comment.
    fn hash_comment_here(&self) -> bool {
        match self.syntax.hash_comments {
            HashComments::Never => false,
            HashComments::Always => true,
            HashComments::StatementStart => !self.context.statement_has_word,
        }
    }

    /// End of a line comment starting at `start`: the line break, which is not part of it.
    fn line_end(&self, start: usize) -> usize {
        let cr = self.syntax.carriage_return_ends_comment;
        let rest = self.src.get(start..).unwrap_or_default();
        rest.iter()
            .position(|&c| c == b'\n' || (cr && c == b'\r'))
            .map_or(self.src.len(), |p| start + p)
    }

    /// A `/* */` comment starting at `start`, counting nested openers where they nest.
    fn block_comment(&self, start: usize) -> (TokenKind, usize) {
        let mut depth = 1usize;
        let mut j = start + 2;
        while let (Some(a), Some(b)) = (self.byte(j), self.byte(j + 1)) {
            if a == b'*' && b == b'/' {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return (TokenKind::BlockComment { terminated: true }, j);
                }
            } else if self.syntax.nested_comments && a == b'/' && b == b'*' {
                depth += 1;
                j += 2;
            } else {
                j += 1;
            }
        }
        (
            TokenKind::BlockComment { terminated: false },
            self.src.len(),
        )
    }

    /// A string literal opened at `start` by `quote`.
    fn string(&self, start: usize, quote: u8, backslash: bool) -> (TokenKind, usize) {
        match quoted_end(self.src, start, quote, backslash) {
            Some(end) => (TokenKind::String { terminated: true }, end),
            None => (TokenKind::String { terminated: false }, self.src.len()),
        }
    }

    /// A quoted identifier opened at `start`, closed by `close`.
    fn quoted_ident(&self, start: usize, close: u8) -> (TokenKind, usize) {
        match quoted_end(self.src, start, close, false) {
            Some(end) => (TokenKind::QuotedIdent { terminated: true }, end),
            None => (TokenKind::QuotedIdent { terminated: false }, self.src.len()),
        }
    }

    /// `[` at `start`: a quoted or portable identifier, or the `[` of a subscript
    /// or array constructor.
    fn bracket(&self, start: usize) -> (TokenKind, usize) {
        if self.syntax.brackets == Brackets::Quote {
            return self.quoted_ident(start, b']');
        }
        let may_quote = self.context.open_brackets == 0
            && self.context.prev != Prev::Array
            && !self.follows_operand(start);
        match may_quote.then(|| portable_ident_end(self.src, start)) {
            Some(Some(end)) => (TokenKind::BracketIdent, end),
            _ => (TokenKind::Punct(b'['), start + 1),
        }
    }

    /// Whether the byte before `start` ends an operand written right against it,
    /// making a `[` there a subscript (`arr[`, `(x)[`, `"a"[`, `a[1][`).
    fn follows_operand(&self, start: usize) -> bool {
        self.byte_before(start)
            .is_some_and(|b| is_ident_byte(b) || matches!(b, b']' | b')' | b'"'))
    }

    /// `$` at `start`: a native placeholder, a dollar-quoted body, or punctuation.
    fn dollar(&self, start: usize) -> (TokenKind, usize) {
        let next = self.byte(start + 1);
        match self.syntax.native {
            NativeParams::Dollar if next.is_some_and(|c| c.is_ascii_digit()) => {
                return (TokenKind::Native, run_end(self.src, start + 1, is_digit));
            }
            NativeParams::Sqlite if next.is_some_and(is_ident_start) => {
                return (
                    TokenKind::Native,
                    run_end(self.src, start + 1, is_ident_byte),
                );
            }
            _ => {}
        }
        if self.syntax.dollar_quotes {
            if let Some(token) = self.dollar_quoted(start) {
                return token;
            }
        }
        (TokenKind::Punct(b'$'), start + 1)
    }

    /// A dollar-quoted body opened at `start`, if a `$$` or `$tag$` opens there.
    fn dollar_quoted(&self, start: usize) -> Option<(TokenKind, usize)> {
        let ascii = self.syntax.ascii_dollar_tags;
        let tag_byte = |c: u8| is_tag_byte(c) && (c.is_ascii() || !ascii);
        let tag_end = match self.byte(start + 1)? {
            b'$' => start + 1,
            c if is_ident_start(c) && tag_byte(c) => run_end(self.src, start + 1, tag_byte),
            _ => return None,
        };
        if self.byte(tag_end) != Some(b'$') {
            return None;
        }
        let body = tag_end + 1;
        let tag = self.src.get(start..body)?;
        let rest = self.src.get(body..)?;
        Some(match find(rest, tag) {
            Some(p) => (
                TokenKind::DollarQuoted { terminated: true },
                body + p + tag.len(),
            ),
            None => (
                TokenKind::DollarQuoted { terminated: false },
                self.src.len(),
            ),
        })
    }

    /// `@` at `start`: a native placeholder or punctuation.
    fn at(&self, start: usize) -> (TokenKind, usize) {
        match self.syntax.native {
            NativeParams::AtP => {
                if let Some(end) = self.tsql_param_end(start) {
                    return (TokenKind::Native, end);
                }
            }
            NativeParams::Sqlite if self.byte(start + 1).is_some_and(is_ident_start) => {
                return (
                    TokenKind::Native,
                    run_end(self.src, start + 1, is_ident_byte),
                );
            }
            _ => {}
        }
        (TokenKind::Punct(b'@'), start + 1)
    }

    /// End of a SQL Server `@P1` (or `@p1`) placeholder at `start`, unless a word
    /// touches it on either side (`x@P1`, `@P1x` are names, `@@P1` a variable).
    fn tsql_param_end(&self, start: usize) -> Option<usize> {
        if self.byte_before(start).is_some_and(is_tsql_ident_byte)
            || !matches!(self.byte(start + 1), Some(b'P' | b'p'))
            || !self.byte(start + 2).is_some_and(|c| c.is_ascii_digit())
        {
            return None;
        }
        let end = run_end(self.src, start + 2, is_digit);
        (!self.byte(end).is_some_and(is_tsql_ident_byte)).then_some(end)
    }

    /// `?` at `start`: `??`, `?` with digits, or a lone `?`.
    fn question(&self, start: usize) -> (TokenKind, usize) {
        match self.byte(start + 1) {
            Some(b'?') => (TokenKind::DoubleQuestion, start + 2),
            Some(c) if c.is_ascii_digit() => (
                TokenKind::NumberedQuestion,
                run_end(self.src, start + 1, is_digit),
            ),
            _ => (TokenKind::Question, start + 1),
        }
    }

    /// `:` at `start`: a `::` cast, a `:name` placeholder, or punctuation.
    ///
    /// A `:` written right after a word or another `:` (`a:b`, `x:::y`) or that
    /// separates PostgreSQL slice bounds never starts a placeholder.
    fn colon(&self, start: usize) -> (TokenKind, usize) {
        match self.byte(start + 1) {
            Some(b':') => (TokenKind::Cast, start + 2),
            Some(c)
                if is_name_start(c)
                    && !self
                        .byte_before(start)
                        .is_some_and(|b| is_ident_byte(b) || b == b':')
                    && !self.at_slice_bound() =>
            {
                (TokenKind::Named, run_end(self.src, start + 1, is_name_byte))
            }
            _ => (TokenKind::Punct(b':'), start + 1),
        }
    }

    /// Whether a `:` here separates the bounds of a PostgreSQL array slice: it stands
    /// at a subscript's own level, right after the `[` (`[:hi]`) or after an operand
    /// (`[lo :hi]`, `[f(x):hi]`).
    fn at_slice_bound(&self) -> bool {
        self.syntax.array_slices
            && self.context.groups.in_subscript()
            && self.context.prev != Prev::Other
    }

    /// Updates the context with `token`, just lexed.
    fn record(&mut self, token: Token) {
        self.context.escape_string_next = false;
        if token.kind.is_trivia() {
            return;
        }
        self.context.prev = match token.kind {
            TokenKind::Word => self.record_word(token),
            TokenKind::Punct(b'[') => {
                let subscript =
                    self.follows_operand(token.start) && self.context.prev != Prev::Array;
                self.context.open_brackets += 1;
                self.context.groups.push(subscript);
                Prev::OpenBracket
            }
            TokenKind::Punct(b']') => {
                self.context.open_brackets = self.context.open_brackets.saturating_sub(1);
                self.context.groups.pop();
                Prev::Operand
            }
            TokenKind::Punct(b'(') => {
                self.context.groups.push(false);
                Prev::Other
            }
            TokenKind::Punct(b')') => {
                self.context.groups.pop();
                Prev::Operand
            }
            TokenKind::Punct(b';') => {
                self.context.statement_has_word = false;
                Prev::Other
            }
            kind if kind.is_operand() => Prev::Operand,
            _ => Prev::Other,
        };
    }

    /// Updates the context with a word just lexed; what it makes of a following `[`.
    fn record_word(&mut self, token: Token) -> Prev {
        let word = self.src.get(token.start..token.end).unwrap_or_default();
        self.context.statement_has_word = true;
        self.context.escape_string_next = self.syntax.escape_strings
            && word.eq_ignore_ascii_case(b"e")
            && self.byte(token.end) == Some(b'\'');
        if word.eq_ignore_ascii_case(b"array") {
            Prev::Array
        } else {
            Prev::Operand
        }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let start = self.pos;
        let first = self.byte(start)?;
        let (kind, end) = self.lex_token(start, first);
        // Every token is at least one byte long and ends within the source.
        let end = end.clamp(start + 1, self.src.len());
        self.pos = end;
        let token = Token { kind, start, end };
        self.record(token);
        Some(token)
    }
}

/// End of a quoted run opened at `start` by `quote`, just past the closing quote; a
/// doubled quote is an escape, and so is a backslash when `backslash` is set.
/// `None` when unterminated.
fn quoted_end(src: &[u8], start: usize, quote: u8, backslash: bool) -> Option<usize> {
    let mut j = start + 1;
    while let Some(&c) = src.get(j) {
        if c == quote {
            if src.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return Some(j + 1);
        }
        j += if backslash && c == b'\\' { 2 } else { 1 };
    }
    None
}

/// End of a portable `[identifier]` opened at `start`, just past its `]`: the content
/// is on one line, holds no `[`, is not empty or blank, and does not start with a
/// digit (`[1]` is a subscript or array).
fn portable_ident_end(src: &[u8], start: usize) -> Option<usize> {
    let rest = src.get(start + 1..)?;
    let len = rest
        .iter()
        .position(|&c| matches!(c, b']' | b'[' | b'\n' | b'\r'))?;
    let content = rest.get(..len)?;
    let ok = rest.get(len) == Some(&b']')
        && content.first().is_some_and(|c| !c.is_ascii_digit())
        && !content.iter().all(u8::is_ascii_whitespace);
    ok.then_some(start + 1 + len + 1)
}

/// Offset of the first occurrence of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// End of the run of bytes from `start` that satisfy `pred`.
fn run_end(src: &[u8], start: usize, pred: impl Fn(u8) -> bool) -> usize {
    src.get(start..)
        .and_then(|rest| rest.iter().position(|&c| !pred(c)))
        .map_or(src.len(), |p| start + p)
}

/// SQL whitespace.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// An ASCII digit.
fn is_digit(b: u8) -> bool {
    b.is_ascii_digit()
}

/// A byte that can continue an identifier or number (non-ASCII bytes count as letters).
pub(super) fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// A byte that continues a T-SQL name, where `@` and `#` are name characters too.
pub(super) fn is_tsql_ident_byte(b: u8) -> bool {
    is_ident_byte(b) || b == b'@' || b == b'#'
}

/// A byte that can start an identifier (non-ASCII bytes count as letters).
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// A byte that can continue a dollar-quote tag.
fn is_tag_byte(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

/// A byte that can start a `:name` placeholder's name.
fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

/// A byte that can continue a `:name` placeholder's name.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Dialect::{MsSql, MySql, Postgres, Sqlite};
    use TokenKind::*;

    /// Every syntax the lexer is used with.
    const SYNTAXES: [Syntax; 5] = [
        Syntax::of(Postgres),
        Syntax::of(MySql),
        Syntax::of(Sqlite),
        Syntax::of(MsSql),
        Syntax::ANY,
    ];

    /// The tokens of `src` other than whitespace, with their text.
    fn lex(src: &str, syntax: Syntax) -> Vec<(TokenKind, &str)> {
        Lexer::new(src, syntax)
            .filter(|t| t.kind != Whitespace)
            .map(|t| (t.kind, t.text(src)))
            .collect()
    }

    /// The kinds of the tokens of `src` other than whitespace.
    fn kinds(src: &str, syntax: Syntax) -> Vec<TokenKind> {
        lex(src, syntax).into_iter().map(|(k, _)| k).collect()
    }

    const STRING: TokenKind = String { terminated: true };
    const QUOTED: TokenKind = QuotedIdent { terminated: true };

    #[test]
    fn words_numbers_and_punctuation() {
        for s in SYNTAXES {
            assert_eq!(
                lex("SELECT a_1, 1.5e3, naïve+名 FROM t;", s),
                vec![
                    (Word, "SELECT"),
                    (Word, "a_1"),
                    (Punct(b','), ","),
                    (Number, "1.5e3"),
                    (Punct(b','), ","),
                    (Word, "naïve"),
                    (Punct(b'+'), "+"),
                    (Word, "名"),
                    (Word, "FROM"),
                    (Word, "t"),
                    (Punct(b';'), ";"),
                ],
                "{s:?}"
            );
        }
    }

    #[test]
    fn whitespace_is_one_token_per_run() {
        let src = "a \t\r\n\x0b\x0c b";
        let tokens: Vec<Token> = Lexer::new(src, Syntax::of(Postgres)).collect();
        assert_eq!(tokens.len(), 3);
        assert_eq!(tokens[1].kind, Whitespace);
        assert_eq!(tokens[1].text(src), " \t\r\n\x0b\x0c ");
    }

    #[test]
    fn strings() {
        for s in SYNTAXES {
            assert_eq!(
                lex("'it''s' N'x'", s),
                vec![(STRING, "'it''s'"), (Word, "N"), (STRING, "'x'")]
            );
        }
        // Backslash escapes on MySQL only.
        assert_eq!(lex(r"'a\'b'", Syntax::of(MySql)), vec![(STRING, r"'a\'b'")]);
        assert_eq!(
            kinds(r"'a\'b'", Syntax::of(Postgres)),
            vec![STRING, Word, String { terminated: false }]
        );
        assert_eq!(kinds(r"'a\'b'", Syntax::ANY)[0], STRING);
    }

    #[test]
    fn double_quotes_are_strings_on_mysql_only() {
        assert_eq!(
            lex(r#""a\"b""#, Syntax::of(MySql)),
            vec![(STRING, r#""a\"b""#)]
        );
        for s in [
            Syntax::of(Postgres),
            Syntax::of(Sqlite),
            Syntax::of(MsSql),
            Syntax::ANY,
        ] {
            assert_eq!(lex(r#""a""b""#, s), vec![(QUOTED, r#""a""b""#)], "{s:?}");
        }
    }

    #[test]
    fn postgres_escape_strings() {
        let pg = Syntax::of(Postgres);
        assert_eq!(
            lex(r"E'\'' e'\\' ee'\'", pg),
            vec![
                (Word, "E"),
                (STRING, r"'\''"),
                (Word, "e"),
                (STRING, r"'\\'"),
                (Word, "ee"),
                (STRING, r"'\'"),
            ]
        );
        // The prefix must touch the quote, and be a word, not a placeholder's name.
        assert_eq!(kinds(r"E '\'", pg)[1], STRING);
        assert_eq!(kinds(r":e'\'", pg), vec![Named, STRING]);
        // Not escape strings elsewhere.
        assert_eq!(
            lex(r"E'\' x", Syntax::of(Sqlite)),
            vec![(Word, "E"), (STRING, r"'\'"), (Word, "x")]
        );
    }

    #[test]
    fn quoted_identifiers() {
        for s in [Syntax::of(MySql), Syntax::of(Sqlite), Syntax::ANY] {
            assert_eq!(lex("`a``b`", s), vec![(QUOTED, "`a``b`")], "{s:?}");
        }
        for s in [Syntax::of(Postgres), Syntax::of(MsSql)] {
            assert_eq!(
                kinds("`a`", s),
                vec![Punct(b'`'), Word, Punct(b'`')],
                "{s:?}"
            );
        }
        for s in [Syntax::of(MsSql), Syntax::ANY] {
            assert_eq!(lex("[a]]b?] x", s)[0], (QUOTED, "[a]]b?]"), "{s:?}");
        }
    }

    #[test]
    fn comments() {
        for s in SYNTAXES {
            assert_eq!(
                lex("a -- c ?\nb /* x */ c", s),
                vec![
                    (Word, "a"),
                    (LineComment, "-- c ?"),
                    (Word, "b"),
                    (BlockComment { terminated: true }, "/* x */"),
                    (Word, "c"),
                ],
                "{s:?}"
            );
            // `/*/` does not close.
            assert_eq!(
                kinds("/*/ x", s),
                vec![BlockComment { terminated: false }],
                "{s:?}"
            );
        }
    }

    #[test]
    fn block_comments_nest_where_the_dialect_nests_them() {
        let src = "/* /* */ x */";
        for s in [Syntax::of(Postgres), Syntax::of(MsSql), Syntax::ANY] {
            assert_eq!(lex(src, s), vec![(BlockComment { terminated: true }, src)]);
        }
        for s in [Syntax::of(MySql), Syntax::of(Sqlite)] {
            assert_eq!(
                kinds(src, s),
                vec![
                    BlockComment { terminated: true },
                    Word,
                    Punct(b'*'),
                    Punct(b'/')
                ]
            );
        }
    }

    #[test]
    fn mysql_dash_comments_need_a_space() {
        let my = Syntax::of(MySql);
        assert_eq!(
            kinds("5--1", my),
            vec![Number, Punct(b'-'), Punct(b'-'), Number]
        );
        assert_eq!(kinds("5-- 1", my), vec![Number, LineComment]);
        assert_eq!(kinds("5--", my), vec![Number, LineComment]);
        assert_eq!(
            kinds("5--1", Syntax::of(Postgres)),
            vec![Number, LineComment]
        );
    }

    #[test]
    fn postgres_line_comments_end_at_a_carriage_return() {
        assert_eq!(
            kinds("-- a\rb", Syntax::of(Postgres)),
            vec![LineComment, Word]
        );
        assert_eq!(kinds("-- a\rb", Syntax::of(MySql)), vec![LineComment]);
    }

    #[test]
    fn hash_comments() {
        assert_eq!(
            kinds("a # b\nc", Syntax::of(MySql)),
            vec![Word, LineComment, Word]
        );
        assert_eq!(
            kinds("a # b", Syntax::of(Postgres)),
            vec![Word, Punct(b'#'), Word]
        );
        // Dialect-agnostic: only before a statement's first word.
        assert_eq!(
            kinds("# c\n( # d\nSELECT a # b; # e\nx", Syntax::ANY),
            vec![
                LineComment,
                Punct(b'('),
                LineComment,
                Word,
                Word,
                Punct(b'#'),
                Word,
                Punct(b';'),
                LineComment,
                Word
            ]
        );
    }

    #[test]
    fn dollar_quotes() {
        let pg = Syntax::of(Postgres);
        let done = DollarQuoted { terminated: true };
        assert_eq!(
            lex("$$ a $b$ $$ $fn$ $$ $fn$ $ä$x$ä$", pg),
            vec![
                (done, "$$ a $b$ $$"),
                (done, "$fn$ $$ $fn$"),
                (done, "$ä$x$ä$")
            ]
        );
        assert_eq!(
            kinds("$t$ x $t", pg),
            vec![DollarQuoted { terminated: false }]
        );
        // Not dollar quotes: `$` then a word, `$` inside a word.
        assert_eq!(kinds("$abc x", pg), vec![Punct(b'$'), Word, Word]);
        assert_eq!(kinds("a$b$ c", pg), vec![Word, Word]);
        assert_eq!(kinds("$$ x $t$ $$", Syntax::ANY), vec![done]);
        assert_eq!(kinds("$t$ x $t$", Syntax::ANY), vec![done]);
        // Dialect-agnostic: `$é$` may be a MySQL name, so its "body" is read.
        assert_eq!(kinds("$é$ x $é$", Syntax::ANY)[..2], [Punct(b'$'), Word]);
        assert_eq!(
            kinds("$$", Syntax::of(MySql)),
            vec![Punct(b'$'), Punct(b'$')]
        );
    }

    #[test]
    fn native_placeholders() {
        assert_eq!(
            lex("$12a", Syntax::of(Postgres)),
            vec![(Native, "$12"), (Word, "a")]
        );
        assert_eq!(
            lex("@P1 @p2 x@P3 @P4x @@P5 @Price", Syntax::of(MsSql)),
            vec![
                (Native, "@P1"),
                (Native, "@p2"),
                (Word, "x"),
                (Punct(b'@'), "@"),
                (Word, "P3"),
                (Punct(b'@'), "@"),
                (Word, "P4x"),
                (Punct(b'@'), "@"),
                (Punct(b'@'), "@"),
                (Word, "P5"),
                (Punct(b'@'), "@"),
                (Word, "Price"),
            ]
        );
        assert_eq!(
            lex("@a $b_1 ?12 @", Syntax::of(Sqlite)),
            vec![
                (Native, "@a"),
                (Native, "$b_1"),
                (NumberedQuestion, "?12"),
                (Punct(b'@'), "@")
            ]
        );
        assert_eq!(
            kinds("@a $1", Syntax::ANY),
            vec![Punct(b'@'), Word, Punct(b'$'), Number]
        );
    }

    #[test]
    fn portable_placeholders() {
        for s in SYNTAXES {
            assert_eq!(
                lex("? ?? ??? ?1 :a_1 ::int :1 a:b :::c", s),
                vec![
                    (Question, "?"),
                    (DoubleQuestion, "??"),
                    (DoubleQuestion, "??"),
                    (Question, "?"),
                    (NumberedQuestion, "?1"),
                    (Named, ":a_1"),
                    (Cast, "::"),
                    (Word, "int"),
                    (Punct(b':'), ":"),
                    (Number, "1"),
                    (Word, "a"),
                    (Punct(b':'), ":"),
                    (Word, "b"),
                    (Cast, "::"),
                    (Punct(b':'), ":"),
                    (Word, "c"),
                ],
                "{s:?}"
            );
        }
    }

    #[test]
    fn brackets_by_context() {
        let pg = Syntax::of(Postgres);
        assert_eq!(
            lex("[a b] arr[i] ARRAY [[1]] [x]", pg),
            vec![
                (BracketIdent, "[a b]"),
                (Word, "arr"),
                (Punct(b'['), "["),
                (Word, "i"),
                (Punct(b']'), "]"),
                (Word, "ARRAY"),
                (Punct(b'['), "["),
                (Punct(b'['), "["),
                (Number, "1"),
                (Punct(b']'), "]"),
                (Punct(b']'), "]"),
                (BracketIdent, "[x]"),
            ]
        );
        for not_ident in ["[1]", "[]", "[ ]", "[a\nb]", "[a[b]]", "[open"] {
            assert_eq!(kinds(not_ident, pg)[0], Punct(b'['), "{not_ident}");
        }
        assert_eq!(kinds("(x)[a] \"y\"[b] é[c]", pg)[3], Punct(b'['));
        assert!(!kinds("(x)[a] \"y\"[b] é[c]", pg).contains(&BracketIdent));
    }

    #[test]
    fn postgres_slices_are_not_placeholders() {
        let pg = Syntax::of(Postgres);
        for slice in [
            "tags[:n]",
            "tags[ :n]",
            "tags[lo:hi]",
            "tags[lo :hi]",
            "tags[f(x) :n]",
            "tags[? :n]",
            "tags[a[1] :n]",
            "tags[1][:n]",
            "ARRAY[1, 2][:n]",
            "tags[/* c */:n]",
        ] {
            assert!(!kinds(slice, pg).contains(&Named), "{slice}");
        }
        for placeholder in [
            "tags[(:n)]",
            "tags[1 + :n]",
            "tags[f(:n)]",
            "ARRAY[:a]",
            "ARRAY [[:a]]",
            "tags[:n]",
        ] {
            let syntax = if placeholder == "tags[:n]" {
                Syntax::of(MySql)
            } else {
                pg
            };
            assert!(kinds(placeholder, syntax).contains(&Named), "{placeholder}");
        }
    }

    #[test]
    fn unterminated_constructs_run_to_the_end() {
        for s in SYNTAXES {
            for (src, kind) in [
                ("x 'abc", String { terminated: false }),
                ("x /* a * /", BlockComment { terminated: false }),
                ("x -- a", LineComment),
            ] {
                assert_eq!(lex(src, s).last(), Some(&(kind, &src[2..])), "{s:?}: {src}");
            }
        }
        assert_eq!(
            kinds("x /* a /* b */", Syntax::of(Postgres))[1],
            BlockComment { terminated: false }
        );
        assert_eq!(
            kinds("x \"abc", Syntax::of(Postgres))[1],
            QuotedIdent { terminated: false }
        );
        assert_eq!(
            kinds("x [abc", Syntax::of(MsSql))[1],
            QuotedIdent { terminated: false }
        );
    }

    #[test]
    fn groups_remember_64_levels() {
        let mut g = Groups::default();
        for k in 0..70 {
            g.push(k % 2 == 0);
        }
        assert!(!g.in_subscript(), "deeper than 64: not known");
        for _ in 0..6 {
            g.pop();
        }
        assert!(!g.in_subscript(), "level 63 is odd");
        g.pop();
        assert!(g.in_subscript());
        for _ in 0..100 {
            g.pop();
        }
        assert!(!g.in_subscript());
    }

    /// Text made mostly of the bytes the lexer cares about.
    fn sqlish() -> impl Strategy<Value = std::string::String> {
        prop_oneof![
            any::<std::string::String>(),
            "[?:\\[\\]()'\"`$#@/*\\\\ \n\r;.aeEN_P0-9é名-]{0,64}",
        ]
    }

    proptest! {
        #[test]
        fn tokens_tile_the_input(src in sqlish()) {
            for syntax in SYNTAXES {
                let mut at = 0;
                for token in Lexer::new(&src, syntax) {
                    prop_assert_eq!(token.start, at, "gap or overlap in {:?}", src);
                    prop_assert!(token.end > token.start, "empty token in {:?}", src);
                    prop_assert!(
                        src.is_char_boundary(token.start) && src.is_char_boundary(token.end),
                        "{:?} splits a character in {:?}", token, src
                    );
                    at = token.end;
                }
                prop_assert_eq!(at, src.len(), "{:?} not covered", src);
            }
        }
    }
}
