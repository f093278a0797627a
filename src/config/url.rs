//! Connection strings: which backend they name, and how they are shown with
//! their passwords hidden.

use crate::status::BackendKind;

/// Infers the backend from a connection string, without ever echoing it.
///
/// Accepted: `postgresql://`, `postgres://`, `mysql://`, `mariadb://`,
/// `sqlite:` (`sqlite::memory:`, `sqlite:path`, `sqlite:///abs/path`),
/// `mssql://`, `sqlserver://`, SQLAlchemy's `dialect+driver://` forms
/// (`mssql+pyodbc://`, `postgresql+psycopg2://`), and the ADO.NET form
/// (`Server=host,1433;Database=…;User Id=…;Password=…`) for SQL Server.
pub(crate) fn kind_of_url(url: &str) -> std::result::Result<BackendKind, String> {
    let trimmed = url.trim();
    if trimmed.is_empty() {
        return Err("it is empty".into());
    }
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("sqlite:") {
        return Ok(BackendKind::Sqlite);
    }
    if !trimmed.contains("://") && trimmed.contains('=') {
        let looks_ado = lower
            .split(';')
            .filter_map(|part| part.split_once('='))
            .any(|(k, _)| {
                matches!(
                    k.trim(),
                    "server" | "data source" | "address" | "addr" | "network address"
                )
            });
        return if looks_ado {
            Ok(BackendKind::MsSql)
        } else {
            Err("it is neither a URL nor an ADO.NET `Server=…;` string".into())
        };
    }
    let parsed = url::Url::parse(trimmed).map_err(|e| format!("it is not a valid URL ({e})"))?;
    let scheme = parsed.scheme();
    let dialect = scheme.split('+').next().unwrap_or(scheme);
    let kind = match dialect {
        "postgresql" | "postgres" => BackendKind::Postgres,
        "mysql" | "mariadb" => BackendKind::MySql,
        "mssql" | "sqlserver" => BackendKind::MsSql,
        other => {
            return Err(format!(
                "its scheme `{other}` is not one of postgresql, postgres, mysql, mariadb, sqlite, mssql, sqlserver"
            ))
        }
    };
    if parsed.host_str().map_or(true, str::is_empty) {
        return Err("it names no host".into());
    }
    Ok(kind)
}

/// The connection string with any password replaced by `***`, for logs and
/// `Debug`.
pub(crate) fn redact_url(url: &str) -> String {
    let trimmed = url.trim();
    if trimmed.to_ascii_lowercase().starts_with("sqlite:") {
        return trimmed.to_owned();
    }
    if !trimmed.contains("://") {
        // ADO.NET: redact the value of every password-like key.
        return trimmed
            .split(';')
            .map(|part| match part.split_once('=') {
                Some((k, _))
                    if matches!(k.trim().to_ascii_lowercase().as_str(), "password" | "pwd") =>
                {
                    format!("{}=***", k)
                }
                Some((k, _))
                    if k.trim()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '_') =>
                {
                    part.to_owned()
                }
                // Not `key=value`: a malformed string (`mysql:user:pw@host`,
                // a URL without `//`) may hold a password anywhere in it.
                _ if part.trim().is_empty() => part.to_owned(),
                _ => "***".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(";");
    }
    match url::Url::parse(trimmed) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let secret = matches!(
                        k.to_ascii_lowercase().as_str(),
                        "password" | "pwd" | "sslpassword"
                    );
                    // pyodbc's `odbc_connect=` carries a whole ODBC string.
                    let lower = v.to_ascii_lowercase();
                    let nested = lower.contains("pwd=") || lower.contains("password=");
                    let value = if secret {
                        "***".into()
                    } else if nested {
                        redact_url(&v)
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), value)
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "<unparseable connection string>".into(),
    }
}

/// `pgbouncer=true` (or `1`, `yes`, `on`) in a URL's query.
pub(super) fn url_asks_pgbouncer(url: &str) -> bool {
    url::Url::parse(url.trim()).is_ok_and(|u| {
        u.query_pairs().any(|(k, v)| {
            k.eq_ignore_ascii_case("pgbouncer")
                && matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseConfig;

    #[test]
    fn urls_infer_the_backend() {
        let ok = [
            ("postgresql://u:p@h/d", BackendKind::Postgres),
            ("postgres://h/d", BackendKind::Postgres),
            ("postgresql+psycopg2://u@h/d", BackendKind::Postgres),
            ("mysql://u:p@h:3306/d", BackendKind::MySql),
            ("mariadb://u:p@h/d", BackendKind::MySql),
            ("sqlite::memory:", BackendKind::Sqlite),
            ("sqlite:data/app.db", BackendKind::Sqlite),
            ("sqlite:///tmp/app.db", BackendKind::Sqlite),
            ("mssql://u:p@h:1433/d", BackendKind::MsSql),
            ("sqlserver://h/d", BackendKind::MsSql),
            (
                "mssql+pyodbc://user:pass@server:1433/survey_hub?driver=ODBC+Driver+17+for+SQL+Server",
                BackendKind::MsSql,
            ),
            (
                "Server=tcp:db.example,1433;Database=hub;User Id=app;Password=p;Encrypt=true",
                BackendKind::MsSql,
            ),
        ];
        for (url, kind) in ok {
            assert_eq!(kind_of_url(url), Ok(kind), "{url}");
        }
        for bad in [
            "",
            "   ",
            "oracle://u:secretpw@h/d",
            "postgresql://",
            "just words",
            "k=v;x=y",
            "postgresql://u:secretpw@:5432/d",
        ] {
            let e = kind_of_url(bad).unwrap_err();
            assert!(!e.contains("secretpw"), "{e}");
        }
    }
    #[test]
    fn redaction_hides_passwords_in_every_form() {
        for url in [
            "postgresql://app:s3cr%21t@h:5432/d?sslmode=require",
            "mysql://app:s3cr%21t@h/d",
            "postgresql://h/d?user=app&password=s3cr%21t",
            "Server=h,1433;User Id=app;Password=s3cr%21t;Encrypt=true",
            "Server=h;PWD=s3cr%21t",
            "Server=tcp:h,1433;User Id=app;Password=\"s3cr;t\";Encrypt=true",
            "Server=h;Password='s3cr;t'",
            "Server=h;Password={s3cr}};t}",
            "mssql+pyodbc://u:s3cret@h:1433/d?TrustServerCertificate=yes&Encrypt=yes",
            "mssql+pyodbc://h/?odbc_connect=DRIVER%3D%7BODBC%7D%3BSERVER%3Dh%3BUID%3Du%3BPWD%3Ds3cret",
        ] {
            let r = redact_url(url);
            assert!(!r.contains("s3cr"), "{url} -> {r}");
            assert!(r.contains("***"), "{url} -> {r}");
        }
        let cfg = DatabaseConfig::builder("a")
            .url("postgresql://app:topsecret@h/d")
            .build()
            .unwrap();
        let dbg = format!(
            "{cfg:?} {:?}",
            DatabaseConfig::builder("a").url("mysql://u:topsecret@h/d")
        );
        assert!(!dbg.contains("topsecret"), "{dbg}");
    }
}
