//! The backends the integration tests run on, and `each_backend!`, the one
//! way to run a test body on several of them.
//!
//! Server URLs come from the `DBMANAGER_TEST_*` variables that
//! `scripts/test` exports; a test on a server whose variable is missing
//! fails saying so (it is never silently skipped). SQLite needs no server:
//! a file in a fresh temp dir, or `sqlite::memory:`.

use std::ops::Deref;

use dbmanager::{BackendKind, DatabaseConfigBuilder, DatabaseManager, Result};

use super::{manager_with, required_env, unique_name, TempDir};

/// A backend as the tests see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The PostgreSQL server of `scripts/test`.
    Postgres,
    /// The MariaDB server of `scripts/test` (the library's MySQL backend).
    MySql,
    /// An SQLite file in a temp dir of the test's own.
    SqliteFile,
    /// `sqlite::memory:`: one database per manager.
    SqliteMemory,
    /// pgbouncer (transaction pooling) in front of the PostgreSQL server.
    PgBouncer,
    /// The SQL Server wire-protocol peer (pysqlbridge) of `scripts/test`.
    MsSql,
}

impl Backend {
    /// The name in test names (`each_backend!`) and reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::MySql => "mysql",
            Backend::SqliteFile => "sqlite_file",
            Backend::SqliteMemory => "sqlite_memory",
            Backend::PgBouncer => "pgbouncer",
            Backend::MsSql => "mssql",
        }
    }

    /// The library's kind of backend behind this one.
    pub fn kind(self) -> BackendKind {
        match self {
            Backend::Postgres | Backend::PgBouncer => BackendKind::Postgres,
            Backend::MySql => BackendKind::MySql,
            Backend::SqliteFile | Backend::SqliteMemory => BackendKind::Sqlite,
            Backend::MsSql => BackendKind::MsSql,
        }
    }

    pub fn is_sqlite(self) -> bool {
        self.kind() == BackendKind::Sqlite
    }

    /// The variable `scripts/test` sets to this server's application URL.
    fn url_var(self) -> Option<&'static str> {
        match self {
            Backend::Postgres => Some("DBMANAGER_TEST_POSTGRES_URL"),
            Backend::MySql => Some("DBMANAGER_TEST_MYSQL_URL"),
            Backend::PgBouncer => Some("DBMANAGER_TEST_PGBOUNCER_URL"),
            Backend::MsSql => Some("DBMANAGER_TEST_MSSQL_URL"),
            Backend::SqliteFile | Backend::SqliteMemory => None,
        }
    }

    /// The application user's URL of this server. Panics for SQLite,
    /// which has no server: use [`place`](Self::place).
    pub fn url(self) -> String {
        let var = self
            .url_var()
            .unwrap_or_else(|| panic!("{self:?} has no server URL: use Backend::place"));
        required_env(var)
    }

    /// The superuser's URL of this server (to see or kill other sessions).
    pub fn admin_url(self) -> String {
        required_env(match self {
            Backend::Postgres => "DBMANAGER_TEST_POSTGRES_ADMIN_URL",
            Backend::MySql => "DBMANAGER_TEST_MYSQL_ADMIN_URL",
            other => panic!("scripts/test exports no admin URL for {other:?}"),
        })
    }

    /// The pid of this server's main process (to stop it).
    pub fn server_pid(self) -> String {
        required_env(match self {
            Backend::Postgres => "DBMANAGER_TEST_POSTGRES_PID",
            Backend::MySql => "DBMANAGER_TEST_MYSQL_PID",
            Backend::PgBouncer => "DBMANAGER_TEST_PGBOUNCER_PID",
            Backend::MsSql => "DBMANAGER_TEST_MSSQL_PID",
            other => panic!("{other:?} is no server process"),
        })
    }

    /// Where a test's data goes: the server's shared database, or a new
    /// SQLite database (a file in a temp dir of its own, or in memory).
    pub fn place(self) -> Place {
        match self {
            Backend::SqliteFile => {
                let dir = TempDir::new("dbmanager-sqlite");
                Place {
                    url: dir.sqlite_url("test.db"),
                    _dir: Some(dir),
                }
            }
            Backend::SqliteMemory => Place {
                url: "sqlite::memory:".to_owned(),
                _dir: None,
            },
            server => Place {
                url: server.url(),
                _dir: None,
            },
        }
    }

    /// A manager with its own pool (a unique name) on a new [`place`](Self::place).
    pub fn open(self) -> Result<Db> {
        self.open_with(|b| b)
    }

    /// Like [`open`](Self::open), with extra builder settings.
    pub fn open_with(
        self,
        settings: impl FnOnce(DatabaseConfigBuilder) -> DatabaseConfigBuilder,
    ) -> Result<Db> {
        let place = self.place();
        let manager = place.manager_with(self.name(), settings)?;
        Ok(Db { manager, place })
    }

    /// Does a failed DDL statement leave nothing behind (DDL inside a
    /// transaction)? Not on MariaDB, which commits each DDL statement.
    pub fn transactional_ddl(self) -> bool {
        self.kind() != BackendKind::MySql
    }

    /// A statement that runs about ten seconds (SQLite's counts forever;
    /// only an interrupt stops it).
    pub fn endless_statement(self) -> &'static str {
        match self.kind() {
            BackendKind::Postgres => "SELECT pg_sleep(10)",
            BackendKind::MySql => "SELECT SLEEP(10)",
            BackendKind::Sqlite => {
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
            }
            _ => panic!("no endless statement on {self:?}"),
        }
    }

    /// A query whose one column `id` is the server's id of this session.
    pub fn session_id_sql(self) -> &'static str {
        match self.kind() {
            BackendKind::Postgres => "SELECT pg_backend_pid()::int8 AS id",
            BackendKind::MySql => "SELECT CONNECTION_ID() AS id",
            _ => panic!("no session id on {self:?}"),
        }
    }
}

/// A test's database URL, and for an SQLite file the temp dir that holds
/// it (removed on drop).
#[derive(Debug)]
pub struct Place {
    url: String,
    _dir: Option<TempDir>,
}

impl Place {
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A manager with its own pool (a unique name starting with `prefix`) here.
    pub fn manager(&self, prefix: &str) -> Result<DatabaseManager> {
        self.manager_with(prefix, |b| b)
    }

    /// Like [`manager`](Self::manager), with extra builder settings.
    pub fn manager_with(
        &self,
        prefix: &str,
        settings: impl FnOnce(DatabaseConfigBuilder) -> DatabaseConfigBuilder,
    ) -> Result<DatabaseManager> {
        manager_with(&unique_name(prefix), &self.url, settings)
    }
}

/// A manager on a [`Place`] of its own; keeps the place (an SQLite file's
/// temp dir) alive as long as the manager.
pub struct Db {
    manager: DatabaseManager,
    place: Place,
}

impl Db {
    pub fn url(&self) -> &str {
        self.place.url()
    }

    pub fn place(&self) -> &Place {
        &self.place
    }
}

impl Deref for Db {
    type Target = DatabaseManager;
    fn deref(&self) -> &DatabaseManager {
        &self.manager
    }
}

/// Runs a test body on several backends: one `#[test]` per backend, in a
/// module named after the body, so that a failure names the backend
/// (`batch::postgres`, `batch::sqlite_memory`, …; `cargo test batch::`
/// runs them all). The body is a plain function of the file, taking the
/// [`Backend`] and returning what a test may return (`()` or a `Result`);
/// write the call right below it.
///
/// ```ignore
/// /// What it checks.
/// fn batch(b: Backend) -> Result<()> { … }
/// each_backend!(batch);
///
/// fn cancelled_on_the_server(b: Backend) { … }
/// each_backend!(cancelled_on_the_server, [Postgres, MySql]);
/// ```
///
/// Without a list, the body runs on PostgreSQL, MariaDB, an SQLite file
/// and `sqlite::memory:`; a list names [`Backend`] variants.
#[macro_export]
macro_rules! each_backend {
    ($body:ident) => {
        $crate::each_backend!($body, [Postgres, MySql, SqliteFile, SqliteMemory]);
    };
    ($body:ident, [$($backend:ident),+ $(,)?]) => {
        mod $body {
            $($crate::each_backend!(@test $body, $backend);)+
        }
    };
    (@test $body:ident, Postgres) => {
        $crate::each_backend!(@test $body, Postgres, postgres);
    };
    (@test $body:ident, MySql) => {
        $crate::each_backend!(@test $body, MySql, mysql);
    };
    (@test $body:ident, SqliteFile) => {
        $crate::each_backend!(@test $body, SqliteFile, sqlite_file);
    };
    (@test $body:ident, SqliteMemory) => {
        $crate::each_backend!(@test $body, SqliteMemory, sqlite_memory);
    };
    (@test $body:ident, PgBouncer) => {
        $crate::each_backend!(@test $body, PgBouncer, pgbouncer);
    };
    (@test $body:ident, MsSql) => {
        $crate::each_backend!(@test $body, MsSql, mssql);
    };
    (@test $body:ident, $backend:ident, $test:ident) => {
        #[test]
        fn $test() -> impl std::process::Termination {
            super::$body($crate::common::Backend::$backend)
        }
    };
}
