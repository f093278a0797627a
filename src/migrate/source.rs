//! Where migration scripts come from (a folder, or text embedded at compile
//! time), the strict grammar of their names, and their checksums.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::status::MigrationKind;

/// The first line that makes a script run outside a transaction.
pub(crate) const NO_TRANSACTION: &str = "-- dbmanager:no-transaction";

/// The file-name pattern, for error messages.
pub(crate) const EXPECTED: &str = "V{version}__{description}.sql, U{version}__{description}.sql or R__{description}.sql, \
     where {version} is digits separated by `.` or `_` (V1, V001, V1.2, V2_1) and {description} is not empty";

/// A migration version: numbers separated by `.` or `_`, compared
/// numerically part by part (`2 < 10 < 10.1`); trailing zero parts do not
/// count (`1.0` is `1`). It keeps the text as written, with `_` shown as
/// `.` (Flyway's form): `V002` is `002`, `V01_01` is `01.01`.
#[derive(Clone, Debug, Eq)]
pub struct Version {
    parts: Vec<u64>,
    text: String,
}

impl Version {
    /// Parses `1`, `001`, `1.2`, `2_1`, `10.1.3`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Migration`] when `text` is not digits separated by single
    /// `.` or `_`.
    pub fn parse(text: &str) -> Result<Version> {
        parse_version(text).ok_or_else(|| {
            Error::new(
                ErrorKind::Migration,
                format!(
                    "`{text}` is not a migration version; use digits separated by `.` or `_` (1, 001, 1.2, 2_1)"
                ),
            )
        })
    }

    /// The numbers, as parsed (`01.01` is `[1, 1]`).
    pub(crate) fn parts(&self) -> &[u64] {
        &self.parts
    }

    fn significant(&self) -> &[u64] {
        let end = self
            .parts
            .iter()
            .rposition(|p| *p != 0)
            .map_or(0, |i| i + 1);
        &self.parts[..end]
    }
}

fn parse_version(text: &str) -> Option<Version> {
    if text.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    for part in text.split(['.', '_']) {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Leading zeros are fine (V001); a part too large for u64 is not.
        parts.push(part.parse::<u64>().ok()?);
    }
    Some(Version {
        parts,
        text: text.replace('_', "."),
    })
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.significant() == other.significant()
    }
}

impl std::hash::Hash for Version {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.significant().hash(state);
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.significant().cmp(other.significant())
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    /// The version as written, `_` shown as `.`: `V001` is `001`, `V2_1`
    /// is `2.1` (what Flyway writes in its history).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Version {
    type Err = Error;
    fn from_str(s: &str) -> Result<Version> {
        Version::parse(s)
    }
}

/// A parsed file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Name {
    pub(crate) kind: MigrationKind,
    pub(crate) version: Option<Version>,
    /// Underscores turned into spaces, as Flyway shows them.
    pub(crate) description: String,
}

/// Parses a migration file name. `Ok(None)` for files that are not
/// migrations at all (not ending in `.sql`, or hidden); `Err` for a `.sql`
/// file whose name breaks the grammar.
pub(crate) fn parse_name(file: &str) -> Result<Option<Name>> {
    if file.starts_with('.') {
        return Ok(None);
    }
    let Some(stem) = file.strip_suffix(".sql") else {
        return not_sql(file);
    };
    let bad = |why: &str| {
        Err(Error::new(
            ErrorKind::Migration,
            format!("migration file `{file}` is badly named ({why}); expected {EXPECTED}"),
        ))
    };
    let (kind, rest) = match stem.as_bytes().first() {
        Some(b'V') => (MigrationKind::Versioned, &stem[1..]),
        Some(b'U') => (MigrationKind::Undo, &stem[1..]),
        Some(b'R') => (MigrationKind::Repeatable, &stem[1..]),
        _ => return bad("it must start with V, U or R"),
    };
    let Some(sep) = rest.find("__") else {
        return bad("no `__` between the version and the description");
    };
    let (version_text, description) = (&rest[..sep], &rest[sep + 2..]);
    if description.trim_matches('_').trim().is_empty() {
        return bad("the description is empty");
    }
    let version = match kind {
        MigrationKind::Repeatable => {
            if !version_text.is_empty() {
                return bad("a repeatable script has no version: R__{description}.sql");
            }
            None
        }
        _ => match parse_version(version_text) {
            Some(v) => Some(v),
            None if version_text.is_empty() => return bad("the version is missing"),
            None => {
                return bad(&format!(
                    "`{version_text}` is not a version: digits separated by `.` or `_`"
                ))
            }
        },
    };
    Ok(Some(Name {
        kind,
        version,
        description: description.replace('_', " "),
    }))
}

/// A file not ending in `.sql`: an error when only the extension's case is
/// wrong (`V5__create.SQL` is meant to be a migration, and skipping it would
/// report "nothing to do"); otherwise not a migration, with a warning when
/// it looks like one (`V5__x.sql.bak`, `V5__x.txt`): such files are often
/// backups kept on purpose, so they are not refused.
fn not_sql(file: &str) -> Result<Option<Name>> {
    let split = file.len().saturating_sub(4);
    if file.is_char_boundary(split) && file[split..].eq_ignore_ascii_case(".sql") {
        let fixed = format!("{}.sql", &file[..split]);
        return Err(Error::new(
            ErrorKind::Migration,
            format!(
                "migration file `{file}` is badly named (the extension must be lower-case \
                 `.sql`); rename it `{fixed}`"
            ),
        ));
    }
    if let Some(fixed) = ignored_lookalike(file) {
        tracing::warn!(
            file,
            "`{file}` looks like a migration but is ignored: only files ending in `.sql` \
             are migrations (name it `{fixed}` to apply it)"
        );
    }
    Ok(None)
}

/// The name a file that is not a `.sql` file would have as a migration,
/// when the rest of its name is a valid migration name.
pub(crate) fn ignored_lookalike(file: &str) -> Option<String> {
    let candidate = match file.find(".sql") {
        // `V5__x.sql.bak`, `V5__x.sql~`
        Some(i) => format!("{}.sql", &file[..i]),
        // `V5__x.txt`, `V5__x`
        None => match file.rfind('.') {
            Some(i) if i > 0 => format!("{}.sql", &file[..i]),
            _ => format!("{file}.sql"),
        },
    };
    (candidate != file && matches!(parse_name(&candidate), Ok(Some(_)))).then_some(candidate)
}

/// Flyway's checksum: CRC32 over the script's lines without their endings
/// (`\n`, `\r\n` or `\r`), a leading byte-order mark ignored, as a signed
/// 32-bit number. A change of line endings alone keeps the checksum.
pub fn checksum(sql: &str) -> i32 {
    let text = sql.strip_prefix('\u{feff}').unwrap_or(sql);
    let mut hasher = crc32fast::Hasher::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                hasher.update(&bytes[start..i]);
                i += 1;
                start = i;
            }
            b'\r' => {
                hasher.update(&bytes[start..i]);
                i += 1;
                if bytes.get(i) == Some(&b'\n') {
                    i += 1;
                }
                start = i;
            }
            _ => i += 1,
        }
    }
    hasher.update(&bytes[start..]);
    hasher.finalize() as i32
}

/// One script, read and checked.
#[derive(Clone, Debug)]
pub(crate) struct Script {
    pub(crate) kind: MigrationKind,
    pub(crate) version: Option<Version>,
    pub(crate) description: String,
    /// The file name.
    pub(crate) script: String,
    pub(crate) sql: String,
    pub(crate) checksum: i32,
    /// Starts with `-- dbmanager:no-transaction`.
    pub(crate) no_transaction: bool,
}

impl Script {
    pub(crate) fn version_text(&self) -> Option<String> {
        self.version.as_ref().map(Version::to_string)
    }
}

/// Every script of a source, sorted and checked for duplicates.
#[derive(Debug, Default)]
pub(crate) struct Scripts {
    /// In version order.
    pub(crate) versioned: Vec<Script>,
    pub(crate) undo: BTreeMap<Version, Script>,
    /// In description order.
    pub(crate) repeatable: Vec<Script>,
    /// Flyway callbacks by event, each event's in file-name order.
    pub(crate) callbacks: BTreeMap<Event, Vec<Script>>,
}

/// The moments a Flyway SQL callback (`beforeMigrate.sql`,
/// `afterEachMigrate__note.sql`, …) runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Event {
    BeforeMigrate,
    BeforeEachMigrate,
    AfterEachMigrate,
    AfterEachMigrateError,
    AfterMigrate,
    AfterMigrateApplied,
    AfterMigrateError,
    BeforeValidate,
    AfterValidate,
    AfterValidateError,
    BeforeInfo,
    AfterInfo,
    AfterInfoError,
    BeforeRepair,
    AfterRepair,
    AfterRepairError,
    BeforeUndo,
    BeforeEachUndo,
    AfterEachUndo,
    AfterEachUndoError,
    AfterUndo,
    AfterUndoError,
}

impl Event {
    /// Every event that runs, by its Flyway name.
    const ALL: [(&'static str, Event); 22] = [
        ("beforeMigrate", Event::BeforeMigrate),
        ("beforeEachMigrate", Event::BeforeEachMigrate),
        ("afterEachMigrate", Event::AfterEachMigrate),
        ("afterEachMigrateError", Event::AfterEachMigrateError),
        ("afterMigrate", Event::AfterMigrate),
        ("afterMigrateApplied", Event::AfterMigrateApplied),
        ("afterMigrateError", Event::AfterMigrateError),
        ("beforeValidate", Event::BeforeValidate),
        ("afterValidate", Event::AfterValidate),
        ("afterValidateError", Event::AfterValidateError),
        ("beforeInfo", Event::BeforeInfo),
        ("afterInfo", Event::AfterInfo),
        ("afterInfoError", Event::AfterInfoError),
        ("beforeRepair", Event::BeforeRepair),
        ("afterRepair", Event::AfterRepair),
        ("afterRepairError", Event::AfterRepairError),
        ("beforeUndo", Event::BeforeUndo),
        ("beforeEachUndo", Event::BeforeEachUndo),
        ("afterEachUndo", Event::AfterEachUndo),
        ("afterEachUndoError", Event::AfterEachUndoError),
        ("afterUndo", Event::AfterUndo),
        ("afterUndoError", Event::AfterUndoError),
    ];

    /// Flyway callbacks this library knows but does not run (per
    /// statement, clean, connect…): skipped with a warning.
    const NOT_RUN: [&'static str; 13] = [
        "beforeEachMigrateStatement",
        "afterEachMigrateStatement",
        "afterEachMigrateStatementError",
        "beforeRepeatables",
        "afterVersioned",
        "beforeClean",
        "afterClean",
        "afterCleanError",
        "beforeConnect",
        "afterConnect",
        "beforeBaseline",
        "afterBaseline",
        "afterBaselineError",
    ];

    /// The event of a callback file name: `{event}.sql` or
    /// `{event}__{description}.sql`. `Ok(None)` when it is no callback;
    /// `Err(name)` for a Flyway callback that does not run here.
    pub(crate) fn of_file(file: &str) -> std::result::Result<Option<Event>, &'static str> {
        let Some(stem) = file.strip_suffix(".sql") else {
            return Ok(None);
        };
        let event = stem.split_once("__").map_or(stem, |(e, _)| e);
        if let Some((_, e)) = Event::ALL.iter().find(|(n, _)| *n == event) {
            return Ok(Some(*e));
        }
        match Event::NOT_RUN.iter().find(|n| **n == event) {
            Some(n) => Err(n),
            None => Ok(None),
        }
    }
}

/// Where the scripts of a database come from.
#[derive(Clone, Debug)]
pub struct MigrationSource(SourceKind);

#[derive(Clone, Debug)]
enum SourceKind {
    Directory(PathBuf),
    Embedded(&'static [(&'static str, &'static str)]),
}

impl MigrationSource {
    /// Scripts read from a folder and its subfolders when migrations run.
    pub fn directory(path: impl Into<PathBuf>) -> MigrationSource {
        MigrationSource(SourceKind::Directory(path.into()))
    }

    /// Scripts embedded in the program as `(file name, text)` pairs; see
    /// [`embed_migrations!`](crate::embed_migrations).
    pub const fn embedded(files: &'static [(&'static str, &'static str)]) -> MigrationSource {
        MigrationSource(SourceKind::Embedded(files))
    }

    /// The folder, for a directory source.
    pub fn path(&self) -> Option<&Path> {
        match &self.0 {
            SourceKind::Directory(p) => Some(p),
            SourceKind::Embedded(_) => None,
        }
    }

    /// A short description for messages: the folder, or `embedded scripts`.
    pub fn describe(&self) -> String {
        match &self.0 {
            SourceKind::Directory(p) => p.display().to_string(),
            SourceKind::Embedded(files) => format!("{} embedded scripts", files.len()),
        }
    }

    /// Reads, parses and sorts the scripts; `strict` refuses a `.sql` file
    /// that is neither a migration nor a callback (otherwise skipped with a
    /// warning).
    pub(crate) fn load(&self, strict: bool) -> Result<Scripts> {
        let files: Vec<(String, String)> = match &self.0 {
            SourceKind::Embedded(files) => files
                .iter()
                .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
                .collect(),
            SourceKind::Directory(dir) => {
                let mut files = Vec::new();
                read_dir(dir, "", &mut files)?;
                files
            }
        };
        collect_with(files, strict)
    }
}

/// The setting a missing-folder message names; [`Migrator`](super::Migrator)
/// names the environment variable beside it when the configuration came
/// from the environment.
pub(crate) const MIGRATIONS_DIR_SETTING: &str = "DatabaseConfigBuilder::migrations_dir";

/// Reads the `.sql` files of `dir` and its subfolders (hidden ones
/// skipped) into `files`, each named by its path below the migrations
/// folder (`sub/V2__x.sql`), `/`-separated.
fn read_dir(dir: &Path, prefix: &str, files: &mut Vec<(String, String)>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::NotFound {
            "does not exist".to_owned()
        } else {
            "cannot be read".to_owned()
        };
        Error::new(
            ErrorKind::Migration,
            format!(
                "the migrations folder {} {why}; create it (it may stay empty) or point \
                 {MIGRATIONS_DIR_SETTING} at the right one",
                dir.display()
            ),
        )
        .with_source(e)
    })?;
    let mut entries: Vec<_> = entries
        .map(|entry| {
            entry.map_err(|e| {
                Error::new(
                    ErrorKind::Migration,
                    format!("cannot list the migrations folder {}", dir.display()),
                )
                .with_source(e)
            })
        })
        .collect::<Result<_>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        // The listing's own type, without a call per file; a link is
        // followed, as `is_dir`/`is_file` follow it.
        let (is_dir, is_file) = match entry.file_type() {
            Ok(t) if !t.is_symlink() => (t.is_dir(), t.is_file()),
            _ => (path.is_dir(), path.is_file()),
        };
        if is_dir {
            read_dir(&path, &format!("{prefix}{name}/"), files)?;
            continue;
        }
        if !is_file {
            continue;
        }
        if !name.ends_with(".sql") && parse_name(&name)?.is_none() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::InvalidData {
                "it is not UTF-8 text: save it as UTF-8, with binary values as hex \
                 literals (`mariadb-dump --hex-blob`, `X'…'`)"
                    .to_owned()
            } else {
                e.to_string()
            };
            Error::new(
                ErrorKind::Migration,
                format!("cannot read migration {}: {why}", path.display()),
            )
            .with_source(e)
        })?;
        files.push((format!("{prefix}{name}"), text));
    }
    Ok(())
}

/// The file name of a path below the migrations folder.
fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What a `.sql` file that is neither a migration nor a callback becomes:
/// an error when `strict`, else skipped with a warning.
fn stray(path: &str, why: Error, strict: bool) -> Result<()> {
    if strict {
        return Err(why.with_hint(
            "strict migrations refuse any other .sql file in the folder: rename it, move it out, or turn the strict setting off",
        ));
    }
    tracing::warn!(file = path, reason = %why, "skipping a .sql file that is neither a migration nor a callback");
    Ok(())
}

/// [`collect_with`], refusing every badly named `.sql` file.
#[cfg(test)]
pub(crate) fn collect(files: Vec<(String, String)>) -> Result<Scripts> {
    collect_with(files, true)
}

/// Parses names (files are paths below the migrations folder), sorts,
/// sorts callbacks out, and refuses duplicates anywhere in the tree.
pub(crate) fn collect_with(files: Vec<(String, String)>, strict: bool) -> Result<Scripts> {
    let mut scripts = Scripts::default();
    let mut versions: BTreeMap<Version, String> = BTreeMap::new();
    let mut repeatables: BTreeMap<String, String> = BTreeMap::new();
    for (file, sql) in files {
        let base = file_name(&file);
        match Event::of_file(base) {
            Ok(Some(event)) => {
                scripts.callbacks.entry(event).or_default().push(Script {
                    kind: MigrationKind::Repeatable,
                    version: None,
                    description: base.trim_end_matches(".sql").to_owned(),
                    checksum: checksum(&sql),
                    no_transaction: first_line_says_no_transaction(&sql),
                    script: file.clone(),
                    sql,
                });
                continue;
            }
            Ok(None) => {}
            Err(event) => {
                tracing::warn!(file = %file, "the Flyway callback `{event}` does not run in dbmanager; skipping `{file}`");
                continue;
            }
        }
        let name = match parse_name(base) {
            Ok(Some(name)) => name,
            Ok(None) => continue,
            Err(e) if base.ends_with(".sql") => {
                stray(&file, e, strict)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let no_transaction = first_line_says_no_transaction(&sql);
        let script = Script {
            kind: name.kind,
            version: name.version.clone(),
            description: name.description.clone(),
            checksum: checksum(&sql),
            script: file.clone(),
            sql,
            no_transaction,
        };
        let duplicate = |other: &str, what: String| {
            Error::new(
                ErrorKind::Migration,
                format!("{what} is defined twice, by `{other}` and `{file}`; give one of them another version"),
            )
        };
        match name.kind {
            MigrationKind::Versioned => {
                let v = name.version.clone().unwrap_or_else(|| Version {
                    parts: vec![],
                    text: String::new(),
                });
                if let Some(other) = versions.get(&v) {
                    return Err(duplicate(other, format!("migration version {v}")));
                }
                versions.insert(v, file.clone());
                scripts.versioned.push(script);
            }
            MigrationKind::Undo => {
                let v = name.version.clone().unwrap_or_else(|| Version {
                    parts: vec![],
                    text: String::new(),
                });
                if let Some(other) = scripts.undo.get(&v) {
                    return Err(duplicate(&other.script, format!("undo version {v}")));
                }
                scripts.undo.insert(v, script);
            }
            MigrationKind::Repeatable | MigrationKind::Baseline => {
                if let Some(other) = repeatables.get(&name.description) {
                    return Err(Error::new(
                        ErrorKind::Migration,
                        format!(
                            "repeatable script `{}` is defined twice, by `{other}` and `{file}`; rename one",
                            name.description
                        ),
                    ));
                }
                repeatables.insert(name.description.clone(), file.clone());
                scripts.repeatable.push(script);
            }
        }
    }
    scripts.versioned.sort_by(|a, b| a.version.cmp(&b.version));
    for list in scripts.callbacks.values_mut() {
        list.sort_by(|a, b| file_name(&a.script).cmp(file_name(&b.script)));
    }
    scripts
        .repeatable
        .sort_by(|a, b| a.description.cmp(&b.description));
    Ok(scripts)
}

/// Whether the first line is `-- dbmanager:no-transaction`.
fn first_line_says_no_transaction(sql: &str) -> bool {
    let body = sql.strip_prefix('\u{feff}').unwrap_or(sql);
    body.lines()
        .next()
        .is_some_and(|l| l.trim().eq_ignore_ascii_case(NO_TRANSACTION))
}

/// Embeds migration scripts in the program at compile time, so a deployed
/// binary needs no migrations folder. The folder is relative to the crate's
/// `Cargo.toml`; list each file (a `macro_rules!` cannot list a folder).
///
/// ```
/// # // The doc test embeds the quickstart example's scripts.
/// static MIGRATIONS: dbmanager::migrate::MigrationSource = dbmanager::embed_migrations!(
///     "migrations/quickstart",
///     ["V1__Create_customers.sql", "V2__Add_orders.sql"]
/// );
/// # let _ = &MIGRATIONS;
/// ```
#[macro_export]
macro_rules! embed_migrations {
    ($dir:literal, [$($file:literal),* $(,)?]) => {
        $crate::migrate::MigrationSource::embedded(&[
            $(($file, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $dir, "/", $file)))),*
        ])
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("a version")
    }

    #[test]
    fn callbacks_are_told_from_migrations_and_strays() -> Result<()> {
        assert_eq!(
            Event::of_file("beforeMigrate.sql"),
            Ok(Some(Event::BeforeMigrate))
        );
        assert_eq!(
            Event::of_file("afterEachMigrate__log_it.sql"),
            Ok(Some(Event::AfterEachMigrate))
        );
        assert_eq!(Event::of_file("beforeMigrate.txt"), Ok(None));
        assert_eq!(Event::of_file("beforemigrate.sql"), Ok(None));
        assert!(Event::of_file("beforeEachMigrateStatement.sql").is_err());
        let files = vec![
            ("a/V1__x.sql".to_owned(), "SELECT 1;".to_owned()),
            ("cb/beforeMigrate__b.sql".to_owned(), "SELECT 2;".to_owned()),
            ("beforeMigrate__a.sql".to_owned(), "SELECT 3;".to_owned()),
            ("notes.sql".to_owned(), "x".to_owned()),
        ];
        let s = collect_with(files.clone(), false)?;
        assert_eq!(s.versioned.len(), 1);
        assert_eq!(s.versioned[0].script, "a/V1__x.sql");
        let before: Vec<&str> = s.callbacks[&Event::BeforeMigrate]
            .iter()
            .map(|c| c.script.as_str())
            .collect();
        assert_eq!(before, ["beforeMigrate__a.sql", "cb/beforeMigrate__b.sql"]);
        let e = collect_with(files, true).expect_err("strict");
        assert!(e.to_string().contains("notes.sql"), "{e}");
        let e = collect_with(
            vec![
                ("x/V1__a.sql".to_owned(), String::new()),
                ("y/z/V01__b.sql".to_owned(), String::new()),
            ],
            false,
        )
        .expect_err("duplicate");
        assert!(
            e.to_string().contains("x/V1__a.sql") && e.to_string().contains("y/z/V01__b.sql"),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(v("2") < v("10"));
        assert!(v("10") < v("10.1"));
        assert!(v("1") < v("1.1"));
        assert!(v("1.1") < v("2"));
        assert_eq!(v("001"), v("1"));
        assert_eq!(v("1.0"), v("1"));
        assert_eq!(v("2_1"), v("2.1"));
        assert_eq!(v("2_1").to_string(), "2.1");
        assert_eq!(v("001").to_string(), "001");
        assert_eq!(v("01_01").to_string(), "01.01");
        let mut all = [v("10"), v("1.1"), v("2"), v("1")];
        all.sort();
        let shown: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["1", "1.1", "2", "10"]);
    }

    #[test]
    fn bad_versions_are_errors() {
        for bad in [
            "",
            "1.",
            ".1",
            "1..2",
            "a",
            "1a",
            "1-2",
            "99999999999999999999999",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_parse() -> Result<()> {
        let n = parse_name("V001__Create_processed_surveys.sql")?.expect("a migration");
        assert_eq!(n.kind, MigrationKind::Versioned);
        assert_eq!(n.version, Some(v("1")));
        assert_eq!(n.description, "Create processed surveys");
        let n = parse_name("V1_1__x.sql")?.expect("a migration");
        assert_eq!(n.version, Some(v("1.1")));
        let n = parse_name("V10.1.2__x.sql")?.expect("a migration");
        assert_eq!(n.version, Some(v("10.1.2")));
        let n = parse_name("U3__drop.sql")?.expect("a migration");
        assert_eq!(n.kind, MigrationKind::Undo);
        let n = parse_name("R__views.sql")?.expect("a migration");
        assert_eq!((n.kind, n.version), (MigrationKind::Repeatable, None));
        assert_eq!(parse_name("README.md")?, None);
        assert_eq!(parse_name(".V1__hidden.sql")?, None);
        Ok(())
    }

    #[test]
    fn bad_names_are_errors_naming_the_file_and_pattern() {
        for bad in [
            "V1_x.sql",
            "V__x.sql",
            "Vx__y.sql",
            "V1__.sql",
            "V1.__x.sql",
            "X1__x.sql",
            "v1__x.sql",
            "R1__x.sql",
            "U__x.sql",
            "1__x.sql",
            "V1-2__x.sql",
            "V1 __x.sql",
        ] {
            let e = parse_name(bad).expect_err(bad);
            let text = e.to_string();
            assert!(text.contains(bad), "{text}");
            assert!(text.contains("V{version}__{description}.sql"), "{text}");
            assert_eq!(e.kind(), ErrorKind::Migration);
        }
    }

    #[test]
    fn near_miss_extensions_are_named() {
        for (file, fixed) in [
            ("V5__create.SQL", "V5__create.sql"),
            ("U5__x.Sql", "U5__x.sql"),
        ] {
            let text = parse_name(file).unwrap_err().to_string();
            assert!(text.contains(file) && text.contains(fixed), "{text}");
        }
        // Skipped, but recognised (and warned about) as look-alikes.
        assert_eq!(parse_name("V5__x.sql.bak").unwrap(), None);
        assert_eq!(
            ignored_lookalike("V5__x.sql.bak").as_deref(),
            Some("V5__x.sql")
        );
        assert_eq!(ignored_lookalike("V5__x.txt").as_deref(), Some("V5__x.sql"));
        assert_eq!(
            ignored_lookalike("R__views").as_deref(),
            Some("R__views.sql")
        );
        assert_eq!(ignored_lookalike("README.md"), None);
        assert_eq!(ignored_lookalike("notes.txt"), None);
    }

    #[test]
    fn duplicate_versions_are_errors() {
        let e = collect(vec![
            ("V1__a.sql".into(), "".into()),
            ("V001__b.sql".into(), "".into()),
        ])
        .expect_err("duplicate");
        let text = e.to_string();
        assert!(
            text.contains("V1__a.sql") && text.contains("V001__b.sql"),
            "{text}"
        );
    }

    #[test]
    fn scripts_sort_by_version() -> Result<()> {
        let s = collect(vec![
            ("V10__a.sql".into(), "".into()),
            ("V1.1__b.sql".into(), "".into()),
            ("V2__c.sql".into(), "".into()),
            ("V1__d.sql".into(), "".into()),
            ("R__z.sql".into(), "".into()),
            ("R__a.sql".into(), "".into()),
        ])?;
        let order: Vec<&str> = s.versioned.iter().map(|m| m.script.as_str()).collect();
        assert_eq!(
            order,
            ["V1__d.sql", "V1.1__b.sql", "V2__c.sql", "V10__a.sql"]
        );
        let order: Vec<&str> = s.repeatable.iter().map(|m| m.script.as_str()).collect();
        assert_eq!(order, ["R__a.sql", "R__z.sql"]);
        Ok(())
    }

    #[test]
    fn checksum_ignores_line_endings_and_bom() {
        let lf = "CREATE TABLE t (id INT);\nINSERT INTO t VALUES (1);\n";
        let crlf = "CREATE TABLE t (id INT);\r\nINSERT INTO t VALUES (1);\r\n";
        let cr = "CREATE TABLE t (id INT);\rINSERT INTO t VALUES (1);\r";
        let bom = "\u{feff}CREATE TABLE t (id INT);\nINSERT INTO t VALUES (1);\n";
        assert_eq!(checksum(lf), checksum(crlf));
        assert_eq!(checksum(lf), checksum(cr));
        assert_eq!(checksum(lf), checksum(bom));
        assert_ne!(checksum(lf), checksum("CREATE TABLE t (id BIGINT);\n"));
        // Flyway: CRC32 of the line bytes without endings.
        let mut h = crc32fast::Hasher::new();
        h.update(b"CREATE TABLE t (id INT);");
        h.update(b"INSERT INTO t VALUES (1);");
        assert_eq!(checksum(lf), h.finalize() as i32);
    }

    #[test]
    fn no_transaction_directive() -> Result<()> {
        let s = collect(vec![
            (
                "V1__a.sql".into(),
                "-- dbmanager:no-transaction\nVACUUM;".into(),
            ),
            ("V2__b.sql".into(), "SELECT 1;".into()),
        ])?;
        assert!(s.versioned[0].no_transaction);
        assert!(!s.versioned[1].no_transaction);
        Ok(())
    }
}
