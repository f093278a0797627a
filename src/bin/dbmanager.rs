//! `dbmanager`: migrations and checks from the command line, on the
//! library's public API only.
//!
//! ```text
//! dbmanager --database rpa_db migrate
//! dbmanager --database rpa_db --env staging info --json
//! ```
//!
//! Configuration is read exactly as `DatabaseManager::new` reads it
//! (`{ENV}_GLOBAL_{NAME}_CONNECTION_STRING`, `envs/.env.{env}`, …);
//! `--env` sets the environment name. Exit code 0 when all is well, 1 on any
//! error or problem, 2 on a usage error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use dbmanager::migrate::MigrationReport;
use dbmanager::migrate::{MigrateOptions, MigrationKind, Target, Version};
use dbmanager::{variable_stem, DatabaseConfig, DatabaseManager, MigrationState};

#[derive(Parser, Debug)]
#[command(
    name = "dbmanager",
    version = version(),
    about = "Migrations and checks for dbmanager databases",
    after_help = AFTER_HELP
)]
struct Cli {
    /// The logical database name (as in DatabaseManager::new); default
    /// $DBMANAGER_DATABASE. Its settings come from the environment
    /// ({ENV}_GLOBAL_{NAME}_CONNECTION_STRING, …).
    #[arg(long, short = 'd', global = true, value_name = "NAME")]
    database: Option<String>,
    /// The connection string (postgresql://…, mysql://…, sqlite:…,
    /// mssql://…); overrides the configured one. Without --database (and
    /// $DBMANAGER_DATABASE), $DATABASE_URL is read.
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// The migrations folder; default {ENV}_GLOBAL_{NAME}_MIGRATIONS_DIR,
    /// else migrations/NAME (or migrations/ when connecting by URL alone).
    #[arg(long, global = true, value_name = "DIR")]
    migrations_dir: Option<std::path::PathBuf>,
    /// The environment name (sets ENVIRONMENT; default `development`).
    #[arg(long, short = 'e', global = true)]
    env: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// The version and the backends this build was compiled with (cargo
/// features): `0.1.0 (postgres, mysql, sqlite, mssql)`.
fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        let backends: Vec<&str> = [
            ("postgres", cfg!(feature = "postgres")),
            ("mysql", cfg!(feature = "mysql")),
            ("sqlite", cfg!(feature = "sqlite")),
            ("mssql", cfg!(feature = "mssql")),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        let backends = if backends.is_empty() {
            "no backends".to_owned()
        } else {
            backends.join(", ")
        };
        format!("{} ({backends})", env!("CARGO_PKG_VERSION"))
    })
}

const AFTER_HELP: &str = "\
Environment variables (ENV is the environment name, NAME the database's, both upper-cased):
  ENVIRONMENT                            the environment name (default development; --env sets it)
  {ENV}_GLOBAL_{NAME}_CONNECTION_STRING  the database's connection string (--url overrides it)
  {ENV}_GLOBAL_{NAME}_MIGRATIONS_DIR     its migrations folder (--migrations-dir overrides it)
  {ENV}_GLOBAL_{NAME}_…                  its other settings (pool, timeouts, …; see the README)
  DBMANAGER_ENV_DIR                      where the .env.{env} files are (default envs/)
  DBMANAGER_DATABASE                     the database name when --database is not given
  DATABASE_URL                           the connection string when no name is given
  DBMANAGER_LOG                          off, warn (default), info or debug: the library's messages on stderr

Examples:
  dbmanager -d rpa_db migrate --dry-run          show the pending migrations' SQL
  dbmanager -d rpa_db migrate                    apply them
  dbmanager -d rpa_db -e staging info --json     the staging database's history, as JSON
  dbmanager -d rpa_db new add customer email     write the next V file
  dbmanager --url sqlite:app.db health           check a database given by URL
  dbmanager completions bash > ~/.local/share/bash-completion/completions/dbmanager

Exit codes:
  0  success
  1  an error, or problems found (failed migrations, validation, an unhealthy database)
  2  a usage error (unknown flag, no database given)";

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply pending migrations.
    Migrate {
        /// Stop after this version.
        #[arg(long)]
        target: Option<String>,
        /// Print the plan and its SQL; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Seconds to wait for another migrator.
        #[arg(long, default_value_t = 60)]
        lock_timeout: u64,
    },
    /// Show applied and pending migrations and problems.
    Info,
    /// Check applied migrations against the files.
    Validate,
    /// Mark an existing database as being at VERSION.
    Baseline {
        /// The baseline version.
        version: String,
    },
    /// Remove failed history rows and realign checksums.
    Repair,
    /// Import refinery's or sqlx's history into ours (once, before the first migrate).
    Adopt,
    /// Undo applied versions above TO_VERSION with their U scripts.
    Undo {
        /// The version to go back to.
        to_version: String,
    },
    /// Create the next V file in the migrations folder (needs no
    /// connection).
    New {
        /// Also write the matching U file that undoes it.
        #[arg(long, short = 'r')]
        reversible: bool,
        /// What the migration does (becomes the file name's description).
        description: Vec<String>,
    },
    /// Check the database (connection, `SELECT 1`, migrations, pool,
    /// timeouts); exits non-zero unless healthy.
    Health,
    /// Show the connection pool.
    Pool,
    /// Print a shell completion script (needs no connection):
    /// `dbmanager completions bash > /etc/bash_completion.d/dbmanager`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Load a CSV file into TABLE (its header row names the columns), on
    /// the server's fastest bulk path, at constant memory. An empty field is
    /// NULL. All or nothing unless --commit-each-chunk.
    Import {
        /// The table (may be schema.table).
        table: String,
        /// The CSV file (`-` for standard input).
        file: PathBuf,
        /// Rows per chunk.
        #[arg(long, default_value_t = 10_000)]
        chunk_size: usize,
        /// Commit after each chunk; a failed import then says where to go on.
        #[arg(long)]
        commit_each_chunk: bool,
        /// Skip the first N data rows (go on where a failed import stopped).
        #[arg(long, default_value_t = 0, value_name = "N")]
        start_at: u64,
        /// The field delimiter.
        #[arg(long, default_value_t = ',')]
        delimiter: char,
    },
    /// Run QUERY and write its rows to standard output as CSV (a header
    /// row, then the rows as they come: constant memory). NULL is an empty
    /// field.
    Export {
        /// The query.
        query: String,
        /// The field delimiter.
        #[arg(long, default_value_t = ',')]
        delimiter: char,
    },
}

/// `println!` that ends the program quietly when stdout is gone (`dbmanager
/// … | head -1`): exit 0 as soon as the reader closed the pipe, as Unix
/// tools do, rather than a panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        write_out(format_args!($($arg)*))
    };
}

fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// One ASCII byte for a delimiter flag.
fn delimiter_byte(c: char) -> BoxResult<u8> {
    u8::try_from(c)
        .ok()
        .filter(u8::is_ascii)
        .ok_or_else(|| format!("--delimiter must be one ASCII character, not {c:?}").into())
}

/// A progress bar on standard error when it is a terminal; hidden
/// otherwise (a pipe, a log file, CI).
fn progress_bar(len: Option<u64>) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {msg} ({elapsed}, {eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        ),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// `dbmanager import`: CSV records streamed into a bulk insert, one chunk
/// in memory at a time.
fn import(
    db: &DatabaseManager,
    table: &str,
    file: &Path,
    chunk_size: usize,
    commit_each_chunk: bool,
    start_at: u64,
    delimiter: char,
) -> BoxResult<dbmanager::BulkReport> {
    use std::cell::{Cell, RefCell};
    let (input, len): (Box<dyn std::io::Read>, Option<u64>) = if file == Path::new("-") {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter_byte(delimiter)?)
        .from_reader(std::io::BufReader::with_capacity(1 << 16, input));
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("cannot read the header row of {}: {e}", file.display()))?
        .iter()
        .map(str::to_owned)
        .collect();
    if header.iter().all(|h| h.trim().is_empty()) {
        return Err(format!(
            "{} has no header row: its first line must name the columns of {table} the rows fill",
            file.display()
        )
        .into());
    }
    let columns: Vec<&str> = header.iter().map(String::as_str).collect();
    let bar = progress_bar(len);
    let failed: RefCell<Option<csv::Error>> = RefCell::new(None);
    let rows_read = Cell::new(0u64);
    let mut record = csv::StringRecord::new();
    let rows = std::iter::from_fn(|| {
        if failed.borrow().is_some() {
            return None;
        }
        match reader.read_record(&mut record) {
            Ok(true) => {
                let n = rows_read.get() + 1;
                rows_read.set(n);
                if n % 4096 == 0 {
                    bar.set_position(reader.position().byte());
                    bar.set_message(format!("{n} rows"));
                }
                Some(
                    record
                        .iter()
                        .map(|f| {
                            if f.is_empty() {
                                dbmanager::Value::Null
                            } else {
                                dbmanager::Value::Text(f.to_owned())
                            }
                        })
                        .collect::<Vec<_>>(),
                )
            }
            Ok(false) => None,
            Err(e) => {
                *failed.borrow_mut() = Some(e);
                // A row with no values: the load fails on it and rolls back
                // (or stops after the chunks already committed).
                Some(Vec::new())
            }
        }
    });
    let mut bulk = db.bulk(table).chunk_size(chunk_size).start_at(start_at);
    if commit_each_chunk {
        bulk = bulk.commit_each_chunk();
    }
    let result = bulk.insert(&columns, rows);
    bar.finish_and_clear();
    if let Some(e) = failed.into_inner() {
        let resume = match (&result, commit_each_chunk) {
            (Err(b), true) => b
                .bulk_position()
                .map(|p| format!("; rows before {p} are committed: fix the file and run again with --start-at {p}"))
                .unwrap_or_default(),
            _ => "; nothing was imported".to_owned(),
        };
        return Err(format!("{} is not valid CSV: {e}{resume}", file.display()).into());
    }
    result.map_err(|e| {
        let hint = match e.bulk_position() {
            Some(p) if commit_each_chunk && p > start_at => {
                format!(" (rerun with --start-at {p} to go on)")
            }
            _ => String::new(),
        };
        format!("{e}{hint}").into()
    })
}

/// `dbmanager export`: the rows of a stream written as CSV as they come.
fn export(db: &DatabaseManager, query: &str, delimiter: char) -> BoxResult<()> {
    let stdout = std::io::stdout();
    let mut out = csv::WriterBuilder::new()
        .delimiter(delimiter_byte(delimiter)?)
        .from_writer(std::io::BufWriter::with_capacity(1 << 16, stdout.lock()));
    let bar = progress_bar(None);
    let mut n = 0u64;
    let mut fields: Vec<String> = Vec::new();
    let written = (|| -> BoxResult<()> {
        for row in db.stream(query, ())? {
            let row = row?;
            if n == 0 {
                out.write_record(row.columns())?;
            }
            fields.clear();
            fields.extend(row.values().iter().map(csv_field));
            out.write_record(&fields)?;
            n += 1;
            if n % 4096 == 0 {
                bar.set_message(format!("{n} rows"));
            }
        }
        out.flush()?;
        Ok(())
    })();
    bar.finish_and_clear();
    match written {
        Err(e) if is_broken_pipe(&*e) => std::process::exit(0),
        other => other,
    }
}

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return io.kind() == std::io::ErrorKind::BrokenPipe;
    }
    if let Some(c) = e.downcast_ref::<csv::Error>() {
        return matches!(c.kind(), csv::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe);
    }
    false
}

/// One value as a CSV field: NULL empty, bytes as `\x` and hex, the rest
/// in their usual text form.
fn csv_field(v: &dbmanager::Value) -> String {
    use dbmanager::Value as V;
    match v {
        V::Null => String::new(),
        V::Text(s) => s.clone(),
        V::Bytes(b) => {
            let mut s = String::with_capacity(2 + 2 * b.len());
            s.push_str("\\x");
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
            s
        }
        V::Json(j) => j.to_string(),
        other => match other.to_json() {
            serde_json::Value::String(s) => s,
            j => j.to_string(),
        },
    }
}

/// The name the database is configured under when only a URL is given.
const URL_ONLY_NAME: &str = "default";

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "dbmanager", &mut out);
        outln!("{}", String::from_utf8_lossy(&out).trim_end());
        return ExitCode::SUCCESS;
    }
    // A migration says which script it is on, and how long each took, to
    // a person watching it.
    let progress = matches!(cli.command, Command::Migrate { dry_run: false, .. })
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    show_warnings(progress);
    if let Some(env) = &cli.env {
        // Before any thread exists: the library reads ENVIRONMENT.
        std::env::set_var("ENVIRONMENT", env);
    }
    if let Err(message) = connect_settings(&mut cli) {
        Cli::command()
            .error(clap::error::ErrorKind::MissingRequiredArgument, message)
            .exit();
    }
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            let message = in_cli_terms(&e.to_string());
            let causes: Vec<String> = causes(&*e).iter().map(|c| in_cli_terms(c)).collect();
            if cli.json {
                let v = serde_json::json!({ "ok": false, "error": message, "causes": causes });
                outln!("{v}");
            } else {
                eprintln!("error: {message}");
                for c in causes {
                    eprintln!("  caused by: {c}");
                }
            }
            ExitCode::from(1)
        }
    }
}

/// Shows the library's warnings (an unknown `{PREFIX}{NAME}_*` variable, a
/// file in the migrations folder that is skipped, …) on stderr, where a
/// person at the terminal sees them (with `progress`, also each script a
/// migration applies); `DBMANAGER_LOG=off` silences them.
fn show_warnings(progress: bool) {
    let level = match std::env::var("DBMANAGER_LOG").ok().as_deref() {
        Some("off") => return,
        Some("info") => tracing::Level::INFO,
        Some("debug") => tracing::Level::DEBUG,
        Some("warn") => tracing::Level::WARN,
        _ if progress => tracing::Level::INFO,
        _ => tracing::Level::WARN,
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .without_time()
        .with_target(false)
        .try_init();
}

/// The library's messages name its Rust API where a setting is changed;
/// here the same setting is a flag.
fn in_cli_terms(message: &str) -> String {
    const TERMS: [(&str, &str); 2] = [
        ("MigrateOptions::lock_timeout", "--lock-timeout SECONDS"),
        (
            "DatabaseConfigBuilder::migrations_dir",
            "--migrations-dir DIR",
        ),
    ];
    TERMS
        .iter()
        .fold(message.to_owned(), |m, (rust, flag)| m.replace(rust, flag))
}

fn causes(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push(c.to_string());
        cur = c.source();
    }
    out
}

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Settles which database to use, before any thread exists: the name
/// (`--database`, else `$DBMANAGER_DATABASE`, else `default` when a URL is
/// given), and `--url` (or `$DATABASE_URL` when no name is given) and
/// `--migrations-dir` as the process variables the library reads for that
/// name, which win over the `.env` file. `Err`: a usage error.
fn connect_settings(cli: &mut Cli) -> Result<(), String> {
    let env_var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if cli.database.is_none() {
        cli.database = env_var("DBMANAGER_DATABASE");
    }
    let mut url_only = false;
    if cli.database.is_none() {
        if cli.url.is_none() {
            cli.url = env_var("DATABASE_URL");
        }
        // `new` only writes files: a folder is all it needs.
        if cli.url.is_none() && !matches!(cli.command, Command::New { .. }) {
            let environment = env_var("ENVIRONMENT").unwrap_or_else(|| "development".to_owned());
            return Err(format!(
                "no database given: pass --database NAME (configured through \
                 {}_GLOBAL_NAME_CONNECTION_STRING), or --url URL, or set \
                 DBMANAGER_DATABASE or DATABASE_URL",
                variable_stem(&environment)
            ));
        }
        cli.database = Some(URL_ONLY_NAME.to_owned());
        url_only = true;
    }
    let name = cli.database.as_deref().unwrap_or(URL_ONLY_NAME);
    let environment = env_var("ENVIRONMENT").unwrap_or_else(|| "development".to_owned());
    let prefix = format!(
        "{}_GLOBAL_{}_",
        variable_stem(&environment),
        variable_stem(name)
    );
    if let Some(url) = &cli.url {
        std::env::set_var(format!("{prefix}CONNECTION_STRING"), url);
    }
    if let Some(dir) = &cli.migrations_dir {
        std::env::set_var(format!("{prefix}MIGRATIONS_DIR"), dir);
    } else if url_only && env_var(&format!("{prefix}MIGRATIONS_DIR")).is_none() {
        // As sqlx does: ./migrations when the database has no name.
        std::env::set_var(format!("{prefix}MIGRATIONS_DIR"), "migrations");
    }
    Ok(())
}

fn database(cli: &Cli) -> BoxResult<&str> {
    cli.database
        .as_deref()
        .ok_or_else(|| "give the database with --database NAME or --url URL".into())
}

/// Prints `value` as JSON with `"ok": true` beside its keys, as failures
/// carry `"ok": false`.
fn print_json(value: &impl serde::Serialize) -> BoxResult<()> {
    print_json_ok(value, true)
}

/// Prints `value` as JSON with `"ok"` (whether the command succeeded, as its
/// exit code says) beside its keys.
fn print_json_ok(value: &impl serde::Serialize, ok: bool) -> BoxResult<()> {
    let mut v = serde_json::to_value(value)?;
    if let Some(map) = v.as_object_mut() {
        map.insert("ok".into(), ok.into());
    }
    outln!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Runs the command; `Ok(false)` when it found problems.
fn run(cli: &Cli) -> BoxResult<bool> {
    let name = database(cli)?;
    if let Command::New {
        description,
        reversible,
    } = &cli.command
    {
        let dir = new_migrations_dir(cli, name);
        let paths = new_migration(&dir, &description.join(" "), *reversible)?;
        if cli.json {
            let mut v = serde_json::json!({ "created": paths[0] });
            if let Some(undo) = paths.get(1) {
                v["undo"] = undo.as_str().into();
            }
            print_json(&v)?;
        } else {
            for path in &paths {
                outln!("created {path}");
            }
        }
        return Ok(true);
    }
    let db = DatabaseManager::new(name).map_err(|e| with_name_suggestion(e, name))?;
    match &cli.command {
        Command::Migrate {
            target,
            dry_run,
            lock_timeout,
        } => {
            let mut options =
                MigrateOptions::default().lock_timeout(Duration::from_secs(*lock_timeout));
            if let Some(t) = target {
                options = options.target(Target::Version(Version::parse(t)?));
            }
            let migrator = db.migrator().options(options);
            if *dry_run {
                let plan = migrator.dry_run()?;
                if cli.json {
                    print_json_ok(&plan, plan.problems.is_empty())?;
                } else {
                    if plan.steps.is_empty() {
                        outln!("{}: nothing to do", plan.database_name);
                    }
                    for s in &plan.steps {
                        outln!(
                            "-- {} {} ({}{})\n{}\n",
                            s.kind,
                            s.script,
                            s.version
                                .as_deref()
                                .map(|v| format!("version {v}, "))
                                .unwrap_or_default(),
                            if s.in_transaction {
                                "in a transaction"
                            } else {
                                "no transaction"
                            },
                            s.sql.trim_end()
                        );
                    }
                    for p in &plan.problems {
                        outln!("problem: {p}");
                    }
                }
                return Ok(plan.problems.is_empty());
            }
            let report = migrator.run()?;
            print_report(cli, &report, "applied")?;
        }
        Command::Info => {
            let status = db.migration_status()?;
            if cli.json {
                print_json_ok(&status, status.problems.is_empty())?;
            } else {
                outln!(
                    "{} — history table {}, current version {}",
                    status.database_name,
                    status.history_table,
                    status.current_version.as_deref().unwrap_or("(none)")
                );
                let mut rows = vec![[
                    "Version".to_owned(),
                    "Description".into(),
                    "Type".into(),
                    "Installed on".into(),
                    "State".into(),
                    "Checksum".into(),
                ]];
                for a in &status.applied {
                    rows.push([
                        a.version.clone().unwrap_or_default(),
                        a.description.clone(),
                        a.kind.to_string(),
                        a.installed_on.clone(),
                        if a.success { "Success" } else { "Failed" }.into(),
                        a.checksum.map(|c| c.to_string()).unwrap_or_default(),
                    ]);
                }
                for p in &status.pending {
                    rows.push([
                        p.version.clone().unwrap_or_default(),
                        p.description.clone(),
                        if p.kind == MigrationKind::Repeatable {
                            "SQL (R)"
                        } else {
                            "SQL"
                        }
                        .into(),
                        String::new(),
                        "Pending".into(),
                        p.checksum.to_string(),
                    ]);
                }
                print_table(&rows);
                for p in &status.problems {
                    outln!("problem: {p}");
                }
            }
            return Ok(status.problems.is_empty());
        }
        Command::Validate => {
            db.migrator().validate()?;
            if cli.json {
                print_json(&serde_json::json!({}))?;
            } else {
                outln!("{}: applied migrations match their files", db.name());
            }
        }
        Command::Baseline { version } => {
            let report = db.migrator().baseline(version)?;
            print_report(cli, &report, "baselined")?;
        }
        Command::Repair => {
            let report = db.migrator().repair()?;
            if cli.json {
                print_json(&report)?;
            } else if report.removed_failed.is_empty() && report.realigned.is_empty() {
                outln!("{}: nothing to repair", db.name());
            } else {
                for s in &report.removed_failed {
                    outln!("removed failed row of {s}");
                }
                for s in &report.realigned {
                    outln!("realigned the checksum of {s}");
                }
            }
        }
        Command::Adopt => {
            let report = db.migrator().adopt()?;
            print_report(cli, &report, "adopted")?;
        }
        Command::Undo { to_version } => {
            let report = db.migrator().undo(to_version)?;
            print_report(cli, &report, "undone")?;
        }
        Command::Health => {
            let h = db.health_check();
            let healthy = h.status == dbmanager::Health::Healthy;
            if cli.json {
                print_json_ok(&h, healthy)?;
            } else {
                print_health(&h)?;
            }
            return Ok(healthy);
        }
        Command::Pool => {
            let status = db.pool_status();
            let config = db.config();
            if cli.json {
                let mut v = serde_json::to_value(&status)?;
                if let Some(map) = v.as_object_mut() {
                    // This process's own pool, made for this command: only
                    // its settings mean anything.
                    map.insert("live".into(), false.into());
                    for key in [
                        "connections",
                        "checked_in",
                        "checked_out",
                        "overflow",
                        "invalid",
                        "waiting",
                        "timeouts",
                        "connections_created",
                        "suspected_leaks",
                        "circuit",
                    ] {
                        map.remove(key);
                    }
                    map.insert(
                        "acquire_timeout_ms".into(),
                        millis(config.acquire_timeout()).into(),
                    );
                    map.insert(
                        "connect_timeout_ms".into(),
                        millis(config.connect_timeout()).into(),
                    );
                    map.insert(
                        "query_timeout_ms".into(),
                        config.query_timeout().map(millis).into(),
                    );
                }
                print_json(&v)?;
            } else {
                outln!(
                    "{}: pool settings ({}, {})\nThese are the settings an application's \
                     pool gets. This command is not the application, so live figures \
                     (connections in use, callers waiting) are not shown: read them \
                     from the application's metrics.",
                    status.database_name,
                    config.kind(),
                    config.redacted_url()
                );
                let rows = [
                    ["Setting".to_owned(), "Value".to_owned()],
                    ["Pool size".into(), status.pool_size.to_string()],
                    ["Max overflow".into(), status.max_overflow.to_string()],
                    ["Max connections".into(), status.max_size.to_string()],
                    ["Acquire timeout".into(), human(config.acquire_timeout())],
                    ["Connect timeout".into(), human(config.connect_timeout())],
                    [
                        "Query timeout".into(),
                        config.query_timeout().map_or("none".into(), human),
                    ],
                    ["Idle timeout".into(), human(config.idle_timeout())],
                    [
                        "Max lifetime".into(),
                        config.max_lifetime().map_or("none".into(), human),
                    ],
                    ["Read-only".into(), yes_no(status.read_only)],
                ];
                print_table(&rows);
            }
        }
        Command::Import {
            table,
            file,
            chunk_size,
            commit_each_chunk,
            start_at,
            delimiter,
        } => {
            let report = import(
                &db,
                table,
                file,
                *chunk_size,
                *commit_each_chunk,
                *start_at,
                *delimiter,
            )?;
            if cli.json {
                print_json(&report)?;
            } else {
                eprintln!(
                    "imported {} row{} into {table} in {} chunk{} ({} affected) in {}",
                    report.rows,
                    if report.rows == 1 { "" } else { "s" },
                    report.chunks,
                    if report.chunks == 1 { "" } else { "s" },
                    report.rows_affected,
                    human(report.elapsed)
                );
            }
        }
        Command::Export { query, delimiter } => export(&db, query, *delimiter)?,
        Command::New { .. } | Command::Completions { .. } => unreachable!("handled above"),
    }
    Ok(true)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `250 ms`, `30 s`, `1.5 s`, `30 min`.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms % 60_000 == 0 {
        format!("{} min", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// A unit enum's serialised name as words: `half_open` → `half open`.
fn word(v: &impl serde::Serialize) -> BoxResult<String> {
    Ok(serde_json::to_value(v)?
        .as_str()
        .unwrap_or_default()
        .replace('_', " "))
}

/// The health report as a person reads it: the verdict first, then why.
fn print_health(h: &dbmanager::HealthStatus) -> BoxResult<()> {
    let m = &h.migration_status;
    let migrations = match m.state {
        MigrationState::Pending => format!(
            "{} pending ({}), at version {}",
            m.pending_migrations.len(),
            m.pending_migrations.join(", "),
            m.current_version.as_deref().unwrap_or("none")
        ),
        MigrationState::Ok => format!(
            "up to date, at version {}",
            m.current_version.as_deref().unwrap_or("none")
        ),
        MigrationState::NotManaged => "not managed here (no migrations folder)".to_owned(),
        _ => word(&m.state)?,
    };
    let mut rows = vec![
        ["Check".to_owned(), "Result".to_owned()],
        ["Status".into(), word(&h.status)?],
        [
            "Database".into(),
            format!("{} ({})", h.database_name, h.database_type),
        ],
        [
            "Connection".into(),
            if h.connection { "ok" } else { "failed" }.into(),
        ],
        [
            "SELECT 1".into(),
            if h.query_test { "ok" } else { "failed" }.into(),
        ],
        [
            "Response time".into(),
            format!("{:.1} ms", h.response_time_ms),
        ],
        ["Migrations".into(), migrations],
    ];
    for p in &m.problems {
        rows.push(["Migration problem".into(), p.clone()]);
    }
    if let Some(e) = &h.error {
        rows.push(["Error".into(), e.clone()]);
    }
    for r in &h.degraded_reasons {
        if h.error.as_deref().is_some_and(|e| e.contains(r.as_str())) {
            continue;
        }
        rows.push(["Why".into(), r.clone()]);
    }
    rows.push([
        "Pool in use".into(),
        format!("{:.0} %", h.pool_saturation * 100.0),
    ]);
    rows.push(["Circuit breaker".into(), word(&h.circuit)?]);
    rows.push(["Timeout rate".into(), word(&h.scaling)?]);
    rows.push(["Read-only".into(), yes_no(h.read_only)]);
    rows.push(["Checked at".into(), h.timestamp.clone()]);
    print_table(&rows);
    Ok(())
}

fn print_report(cli: &Cli, report: &MigrationReport, verb: &str) -> BoxResult<()> {
    if cli.json {
        return print_json(report);
    }
    if report.applied.is_empty() {
        outln!(
            "{}: nothing to do (current version {})",
            report.database_name,
            report.current_version.as_deref().unwrap_or("none")
        );
        return Ok(());
    }
    for s in &report.applied {
        outln!("{verb} {} ({} ms)", s.script, s.execution_time_ms);
    }
    outln!(
        "{}: now at version {}",
        report.database_name,
        report.current_version.as_deref().unwrap_or("none")
    );
    Ok(())
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+";
    outln!("{line}");
    for (k, r) in rows.iter().enumerate() {
        let cells: String = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("| {c:<w$} ", w = widths[i]))
            .collect();
        outln!("{cells}|");
        if k == 0 {
            outln!("{line}");
        }
    }
    outln!("{line}");
}

/// A configuration error for a database whose connection string is not
/// set, with the closest configured name (`rpadb` → `rpa_db`) when there is
/// one: the names are read from the `{ENV}_GLOBAL_*_CONNECTION_STRING`
/// variables of the process and of the `.env` file.
fn with_name_suggestion(e: dbmanager::Error, name: &str) -> Box<dyn std::error::Error> {
    if e.kind() != dbmanager::ErrorKind::Config {
        return e.into();
    }
    let environment = std::env::var("ENVIRONMENT").unwrap_or_else(|_| "development".to_owned());
    let prefix = format!("{}_GLOBAL_", variable_stem(&environment));
    const SUFFIX: &str = "_CONNECTION_STRING";
    let mut vars: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    let dir = std::env::var("DBMANAGER_ENV_DIR").unwrap_or_else(|_| "envs".to_owned());
    let file = Path::new(&dir).join(format!(".env.{}", environment.to_lowercase()));
    if let Ok(iter) = dotenvy::from_path_iter(&file) {
        vars.extend(iter.filter_map(|item| item.ok().map(|(k, _)| k)));
    }
    let mut configured: Vec<String> = vars
        .iter()
        .filter_map(|v| v.strip_prefix(&prefix)?.strip_suffix(SUFFIX))
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    configured.sort();
    configured.dedup();
    let wanted = variable_stem(name);
    if configured.contains(&wanted) {
        return e.into(); // configured, but something else is wrong
    }
    let squash = |s: &str| s.replace('_', "");
    let closest = configured
        .iter()
        .map(|c| {
            let d = strsim::levenshtein(&squash(&wanted), &squash(c))
                .min(strsim::levenshtein(&wanted, c));
            (d, c)
        })
        .min()
        .filter(|(d, c)| *d <= 2.max(c.len() / 3));
    match closest {
        Some((_, c)) => {
            let suggestion = c.to_lowercase();
            format!("{e}; did you mean `{suggestion}` (--database {suggestion})?").into()
        }
        None => e.into(),
    }
}

/// The folder `new` writes to, without connecting: `--migrations-dir`, else
/// the database's configured folder, read as the library reads it even when
/// no connection string is configured.
fn new_migrations_dir(cli: &Cli, name: &str) -> PathBuf {
    if let Some(dir) = &cli.migrations_dir {
        return dir.clone();
    }
    if let Ok(config) = DatabaseConfig::from_env(name) {
        return config.migrations_dir().to_owned();
    }
    // No usable connection string: any will do to read the folder setting,
    // since `new` never connects.
    let environment = std::env::var("ENVIRONMENT").unwrap_or_else(|_| "development".to_owned());
    let var = format!(
        "{}_GLOBAL_{}_CONNECTION_STRING",
        variable_stem(&environment),
        variable_stem(name)
    );
    std::env::set_var(&var, "sqlite::memory:");
    let dir = DatabaseConfig::from_env(name)
        .map(|c| c.migrations_dir().to_owned())
        .unwrap_or_else(|_| Path::new("migrations").join(name));
    std::env::remove_var(&var);
    dir
}

/// Creates `V{next}__{description}.sql` (and with `reversible` the matching
/// `U{next}__{description}.sql`), keeping the zero padding of the existing
/// files (V001 → V002).
fn new_migration(dir: &Path, description: &str, reversible: bool) -> BoxResult<Vec<String>> {
    let description: String = description
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if description.trim_matches('_').is_empty() {
        return Err("give a description, e.g. `dbmanager -d rpa_db new add customer email`".into());
    }
    std::fs::create_dir_all(dir)?;
    let mut highest: Option<(u64, usize)> = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix('V') else {
            continue;
        };
        let Some((version, _)) = rest.split_once("__") else {
            continue;
        };
        let major = version.split(['.', '_']).next().unwrap_or("");
        if let Ok(n) = major.parse::<u64>() {
            if highest.map_or(true, |(h, _)| n > h) {
                highest = Some((n, major.len()));
            }
        }
    }
    let (next, width) = highest.map_or((1, 3), |(n, w)| (n + 1, w));
    let words = description.replace('_', " ");
    let path = dir.join(format!("V{next:0width$}__{description}.sql"));
    let mut created = vec![path.display().to_string()];
    if reversible {
        let undo = dir.join(format!("U{next:0width$}__{description}.sql"));
        if undo.exists() {
            return Err(format!("{} exists already", undo.display()).into());
        }
        std::fs::write(&path, format!("-- {words}\n"))?;
        std::fs::write(&undo, format!("-- Undo: {words}\n"))?;
        created.push(undo.display().to_string());
    } else {
        std::fs::write(&path, format!("-- {words}\n"))?;
    }
    Ok(created)
}
