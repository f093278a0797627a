//! One migration test's world: a folder of scripts, a history table and a
//! prefix for the objects its scripts create (`{t}` in scripts).

use std::path::PathBuf;

use dbmanager::{DatabaseConfig, DatabaseConfigBuilder, DatabaseManager};

use super::{manager_with, unique_name, Backend, Place, TempDir};

pub struct Case {
    pub backend: Backend,
    pub dir: TempDir,
    /// Object-name prefix; `{t}` in scripts becomes this.
    pub t: String,
    pub history: String,
    pub place: Place,
}

impl Case {
    /// A fresh world on `backend`; `label` names its folder and prefix.
    pub fn new(backend: Backend, label: &str) -> Case {
        let dir = TempDir::new(label);
        std::fs::create_dir_all(dir.path().join("sql")).expect("mkdir");
        Case {
            backend,
            t: unique_name(label),
            history: unique_name("hist"),
            dir,
            place: backend.place(),
        }
    }

    pub fn sql_dir(&self) -> PathBuf {
        self.dir.path().join("sql")
    }

    /// Writes a script (a path below the folder), `{t}` replaced; returns
    /// its text.
    pub fn write(&self, file: &str, sql: &str) -> String {
        let path = self.sql_dir().join(file);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        let text = sql.replace("{t}", &self.t);
        std::fs::write(path, &text).expect("write a script");
        text
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.sql_dir().join(file)).expect("remove a script");
    }

    pub fn url(&self) -> &str {
        self.place.url()
    }

    pub fn config(&self) -> DatabaseConfigBuilder {
        DatabaseConfig::builder(self.backend.name())
            .url(self.url())
            .migrations_dir(self.sql_dir())
            .history_table(&self.history)
    }

    pub fn db(&self) -> DatabaseManager {
        self.db_with(|b| b)
    }

    pub fn db_with(
        &self,
        f: impl FnOnce(DatabaseConfigBuilder) -> DatabaseConfigBuilder,
    ) -> DatabaseManager {
        manager_with("x", self.url(), |_| f(self.config())).expect("a manager")
    }

    /// The column `v` of the one row of `sql` (`{t}` replaced).
    pub fn scalar<T: serde::de::DeserializeOwned + dbmanager::FromValue>(
        &self,
        db: &DatabaseManager,
        sql: &str,
    ) -> T {
        db.query_one(&sql.replace("{t}", &self.t), ())
            .and_then(|r| r.get::<T>("v"))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Rows in `table` (`{t}` replaced).
    pub fn count(&self, db: &DatabaseManager, table: &str) -> i64 {
        db.query_one(
            &format!(
                "SELECT COUNT(*) AS n FROM {}",
                table.replace("{t}", &self.t)
            ),
            (),
        )
        .and_then(|r| r.get::<i64>("n"))
        .expect("count")
    }

    /// Whether `table` (`{t}` replaced) exists.
    pub fn exists(&self, db: &DatabaseManager, table: &str) -> bool {
        db.execute_query(
            &format!(
                "SELECT 1 FROM {} WHERE 1 = 0",
                table.replace("{t}", &self.t)
            ),
            (),
        )
        .is_ok()
    }

    /// `ident` quoted for the backend.
    pub fn q(&self, ident: &str) -> String {
        if self.backend == Backend::MySql {
            format!("`{ident}`")
        } else {
            format!("\"{ident}\"")
        }
    }
}
