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
    if url_scheme(trimmed).is_none() && trimmed.contains('=') {
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
    // A libpq host list (`h1:5432,h2:5433`) is checked through its first host.
    let hosts = host_list(trimmed)?;
    let first = hosts
        .as_ref()
        .and_then(|h| h.urls.first())
        .map_or(trimmed, String::as_str);
    let parsed = url::Url::parse(first).map_err(|e| format!("it is not a valid URL ({e})"))?;
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
///
/// A URL's password (and `password=`-like query parameters) and an ADO.NET
/// string's `Password=`/`PWD=` value are replaced. Strings that do not parse
/// cleanly are redacted generously rather than shown in part:
///
/// - a URL with an `@` past its host, as when a password holding `/`, `?`
///   or `#` is pasted without percent-encoding it, hides everything from the
///   user name to the last `@`;
/// - after an ADO.NET password, everything up to the next `;` that starts a
///   known keyword (`Server=`, `Database=`, `Encrypt=`…) is hidden, since an
///   unquoted password may itself hold `;`, and a quoted one may not close.
pub(crate) fn redact_url(url: &str) -> String {
    let trimmed = url.trim();
    if trimmed.to_ascii_lowercase().starts_with("sqlite:") {
        return trimmed.to_owned();
    }
    match url_scheme(trimmed) {
        Some(scheme) => redact_url_form(trimmed, scheme),
        None => redact_ado(trimmed),
    }
}

/// The scheme of a `scheme://…` URL, or `None` when the string is not one
/// (an ADO.NET string may hold `://` inside a value).
fn url_scheme(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

fn redact_url_form(s: &str, scheme: &str) -> String {
    let after = &s[scheme.len() + "://".len()..];
    let authority_end = after.find(['/', '?', '#', '\\']).unwrap_or(after.len());
    // An `@` past the authority: most likely a password pasted with a `/`,
    // `?` or `#` in it, which a URL parser reads as the end of the host.
    let pasted = after[authority_end..].contains('@');
    if !pasted {
        if let Ok(u) = url::Url::parse(s) {
            return redact_parsed(u);
        }
    }
    match after.rfind('@') {
        Some(at) => {
            let userinfo = &after[..at];
            let user = userinfo
                .split_once(':')
                .map(|(user, _)| user)
                .filter(|user| !user.contains(['@', '/', '?', '#', '\\']));
            let rest = redact_raw_query(&after[at + 1..]);
            match user {
                Some(user) => format!("{scheme}://{user}:***@{rest}"),
                None => format!("{scheme}://***@{rest}"),
            }
        }
        // Unparseable and no `@`: `mysql://root:secret` (the host left out)
        // reads as host `root`, port `secret`; show nothing of it.
        None => format!("{scheme}://***"),
    }
}

/// Query parameters whose value is a secret.
fn secret_query_key(key: &str) -> bool {
    matches!(
        key.to_ascii_lowercase().as_str(),
        "password" | "pwd" | "sslpassword"
    )
}

/// A query value that is itself a connection string with a password
/// (pyodbc's `odbc_connect=` carries a whole ODBC string).
fn nested_secret(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    lower.contains("pwd=") || lower.contains("password=")
}

fn redact_parsed(mut u: url::Url) -> String {
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let value = if secret_query_key(&k) {
                "***".into()
            } else if nested_secret(&v) {
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

/// `host:port/db?query#fragment` as written, with secret query values
/// replaced by `***`.
fn redact_raw_query(rest: &str) -> String {
    let Some((path, query)) = rest.split_once('?') else {
        return rest.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let query = query
        .split('&')
        .map(|pair| {
            let decoded = url::form_urlencoded::parse(pair.as_bytes()).next();
            match (pair.split_once('='), decoded) {
                (Some((key, _)), Some((k, v))) if secret_query_key(&k) || nested_secret(&v) => {
                    format!("{key}=***")
                }
                _ => pair.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    match fragment {
        Some(f) => format!("{path}?{query}#{f}"),
        None => format!("{path}?{query}"),
    }
}

/// Keywords of ADO.NET (SqlClient) and ODBC connection strings, lower case.
/// After a password, text up to the next `;` followed by one of these is
/// taken as part of the password.
const ADO_KEYWORDS: &[&str] = &[
    "addr",
    "address",
    "app",
    "application intent",
    "application name",
    "applicationintent",
    "attachdbfilename",
    "authentication",
    "column encryption setting",
    "command timeout",
    "connect retry count",
    "connect retry interval",
    "connect timeout",
    "connection timeout",
    "current language",
    "data source",
    "database",
    "driver",
    "dsn",
    "encrypt",
    "failover partner",
    "host name in certificate",
    "hostnameincertificate",
    "initial catalog",
    "integrated security",
    "language",
    "load balance timeout",
    "mars_connection",
    "max pool size",
    "min pool size",
    "multi subnet failover",
    "multipleactiveresultsets",
    "multisubnetfailover",
    "network address",
    "packet size",
    "password",
    "persist security info",
    "pooling",
    "pwd",
    "server",
    "server certificate",
    "timeout",
    "trust server certificate",
    "trusted_connection",
    "trustservercertificate",
    "uid",
    "user",
    "user id",
    "username",
    "workstation id",
    "wsid",
];

/// Keys whose value is a secret.
fn secret_ado_key(key: &str) -> bool {
    matches!(key.to_ascii_lowercase().as_str(), "password" | "pwd")
}

/// An ADO.NET or ODBC string with its password values replaced by `***`.
///
/// Values may be quoted with `"…"` or `'…'` (the quote doubled inside) or
/// braced `{…}` (`}}` inside), and so hold `;`. A part that is not
/// `key=value` may be a piece of a malformed string (`mysql:user:pw@host`)
/// and is hidden too.
fn redact_ado(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if bytes[i] == b';' || bytes[i].is_ascii_whitespace() {
            out.push(char::from(bytes[i]));
            i += 1;
            continue;
        }
        let part_end = s[i..].find(';').map_or(s.len(), |p| i + p);
        let key = s[i..part_end].split_once('=').map(|(k, _)| k);
        let Some(key) = key.filter(|k| {
            k.trim()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '_')
        }) else {
            out.push_str("***");
            i = part_end;
            continue;
        };
        let value_start = i + key.len() + 1;
        let quoted_end = quoted_value_end(s, value_start);
        if secret_ado_key(key.trim()) {
            out.push_str(&s[i..value_start]);
            out.push_str("***");
            i = next_keyword(s, quoted_end.unwrap_or(value_start));
        } else {
            let end = quoted_end.unwrap_or(part_end);
            out.push_str(&s[i..end]);
            i = end;
        }
    }
    out
}

/// Where a quoted or braced value starting at `start` (after blanks) ends,
/// when it closes and only blanks follow before the next `;`.
fn quoted_value_end(s: &str, start: usize) -> Option<usize> {
    let bytes = s.as_bytes();
    let open = start + (s[start..].len() - s[start..].trim_start().len());
    let close = match bytes.get(open)? {
        b'"' => '"',
        b'\'' => '\'',
        b'{' => '}',
        _ => return None,
    };
    let mut from = open + 1;
    let end = loop {
        let at = from + s[from..].find(close)?;
        if s[at + 1..].starts_with(close) {
            from = at + 2; // doubled: an escaped quote or brace
        } else {
            break at + 1;
        }
    };
    let rest = s[end..].trim_start();
    (rest.is_empty() || rest.starts_with(';')).then_some(end)
}

/// The first `;` at or after `from` that starts a known keyword's
/// `key=value`, or the end of `s`.
fn next_keyword(s: &str, from: usize) -> usize {
    let mut at = from;
    while let Some(p) = s[at..].find(';') {
        let semi = at + p;
        let next = &s[semi + 1..];
        let key = next.split(';').next().and_then(|part| part.split_once('='));
        if key.is_some_and(|(k, _)| ADO_KEYWORDS.contains(&k.trim().to_ascii_lowercase().as_str()))
        {
            return semi;
        }
        at = semi + 1;
    }
    s.len()
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

/// Which servers of a host list a session may use: libpq's
/// `target_session_attrs`, with libpq's meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSessionAttrs {
    /// Any server that accepts the connection (the default).
    #[default]
    Any,
    /// A server that accepts writes: not in recovery, and not
    /// `default_transaction_read_only` (MySQL/MariaDB: `@@read_only` off).
    ReadWrite,
    /// A server that refuses writes: in recovery or
    /// `default_transaction_read_only`.
    ReadOnly,
    /// A server not in recovery (a primary; MySQL/MariaDB: `@@read_only` off).
    Primary,
    /// A server in recovery (a hot standby; MySQL/MariaDB: `@@read_only` on).
    Standby,
    /// A standby if one answers, else any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// The accepted values, as written in a URL.
    pub const VALUES: &'static str = "any, read-write, read-only, primary, standby, prefer-standby";

    /// Parses a URL's `target_session_attrs` value.
    pub(crate) fn parse(text: &str) -> Option<TargetSessionAttrs> {
        Some(match text.trim().to_ascii_lowercase().as_str() {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" => TargetSessionAttrs::Primary,
            "standby" => TargetSessionAttrs::Standby,
            "prefer-standby" => TargetSessionAttrs::PreferStandby,
            _ => return None,
        })
    }

    /// The value as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    /// Whether a server `in_recovery` (a standby) whose sessions default to
    /// `read_only` fits, on the strict pass; `prefer-standby` takes a
    /// standby on its first pass ([`fits_fallback`](Self::fits_fallback)
    /// takes any server on the second).
    pub fn fits(self, in_recovery: bool, read_only: bool) -> bool {
        match self {
            TargetSessionAttrs::Any => true,
            TargetSessionAttrs::ReadWrite => !in_recovery && !read_only,
            TargetSessionAttrs::ReadOnly => in_recovery || read_only,
            TargetSessionAttrs::Primary => !in_recovery,
            TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby => in_recovery,
        }
    }

    /// Whether a second pass over the hosts takes any server: only for
    /// `prefer-standby`, when no standby answered.
    pub fn fits_fallback(self) -> bool {
        self == TargetSessionAttrs::PreferStandby
    }
}

impl std::fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a URL says of its hosts: every host (`host:port` as written), the
/// URL for each one alone, `target_session_attrs` and `load_balance_hosts`.
#[derive(Clone, Debug)]
pub(crate) struct HostList {
    /// `host:port` (or `host`) as written, for reports; never credentials.
    pub(crate) hosts: Vec<String>,
    /// The URL with only that host, and without the two parameters above
    /// (which the drivers would reject or read differently).
    pub(crate) urls: Vec<String>,
    pub(crate) attrs: TargetSessionAttrs,
    /// `load_balance_hosts=random`: each new connection tries the hosts in a
    /// fresh random order.
    pub(crate) random: bool,
}

/// Reads the host list of a `scheme://user:pass@h1:p1,h2:p2/db?…` URL
/// (libpq's multi-host form, also taken for MySQL/MariaDB). `Ok(None)` for
/// a string that is not of the URL form (SQLite paths, ADO.NET strings).
///
/// # Errors
///
/// A message naming the bad `target_session_attrs` or
/// `load_balance_hosts` value, or an empty host in the list.
pub(crate) fn host_list(url: &str) -> std::result::Result<Option<HostList>, String> {
    let trimmed = url.trim();
    if trimmed.to_ascii_lowercase().starts_with("sqlite:") {
        return Ok(None);
    }
    let Some(scheme) = url_scheme(trimmed) else {
        return Ok(None);
    };
    let after = &trimmed[scheme.len() + 3..];
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let authority = &after[..authority_end];
    let rest = &after[authority_end..];
    let (userinfo, hostpart) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let mut attrs = TargetSessionAttrs::Any;
    let mut random = false;
    let mut kept = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v_dec: String = url::form_urlencoded::parse(format!("v={v}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        match k {
            "target_session_attrs" => {
                attrs = TargetSessionAttrs::parse(&v_dec).ok_or_else(|| {
                    format!(
                        "its target_session_attrs = `{v_dec}` is not known; use one of {}",
                        TargetSessionAttrs::VALUES
                    )
                })?;
            }
            "load_balance_hosts" => {
                random = match v_dec.as_str() {
                    "random" => true,
                    "disable" => false,
                    other => {
                        return Err(format!(
                            "its load_balance_hosts = `{other}` is not known; use disable or random"
                        ))
                    }
                }
            }
            _ => kept.push(pair),
        }
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    let mut hosts = Vec::new();
    let mut urls = Vec::new();
    for host in hostpart.split(',') {
        let host = host.trim();
        if host.is_empty() && hostpart.contains(',') {
            return Err("its host list has an empty entry; write h1:5432,h2:5432".into());
        }
        hosts.push(host.to_owned());
        let auth = match userinfo {
            Some(u) => format!("{u}@{host}"),
            None => host.to_owned(),
        };
        urls.push(format!("{scheme}://{auth}{path}{query}"));
    }
    Ok(Some(HostList {
        hosts,
        urls,
        attrs,
        random,
    }))
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
    fn passwords_that_do_not_parse_cleanly_are_hidden_whole() {
        for (url, shown) in [
            // Pasted into a URL without percent-encoding.
            (
                r"postgresql://u:Qx7@&''#:&\#@host:1/db",
                "postgresql://u:***@host:1/db",
            ),
            (
                "postgresql://u:12/ab@host:1/db?password=x&sslmode=require",
                "postgresql://u:***@host:1/db?password=***&sslmode=require",
            ),
            ("mysql://u:pw?x@host/db#top", "mysql://u:***@host/db#top"),
            ("mysql://pw/x@host/db", "mysql://***@host/db"),
            ("mysql://root:secret", "mysql://***"),
            // Clean URLs are shown as the parser reads them.
            (
                "postgresql://app:s3cret@h:5432/d?sslmode=require",
                "postgresql://app:***@h:5432/d?sslmode=require",
            ),
            // ADO.NET: quoted and braced values hold `;`.
            (
                "Server=h;Password=\"Ab3;xY=9\";Encrypt=true",
                "Server=h;Password=***;Encrypt=true",
            ),
            (
                "Server=h;Password='Ab3;x''Y=9' ;Encrypt=true",
                "Server=h;Password=***;Encrypt=true",
            ),
            (
                "Server=h;PWD={Ab3;x}}Y=9};Encrypt=true",
                "Server=h;PWD=***;Encrypt=true",
            ),
            // Unquoted, or a quote that never closes: hidden up to the next
            // known keyword.
            (
                "Server=h;Password=Ab3;xY=9;Database=d",
                "Server=h;Password=***;Database=d",
            ),
            (
                "Server=h;Password=\"Ab3;x;Encrypt=true",
                "Server=h;Password=***;Encrypt=true",
            ),
            ("Server=h;Password=Ab3;xY=9", "Server=h;Password=***"),
            (
                "Server=h;Password=a://b@c;Database=d",
                "Server=h;Password=***;Database=d",
            ),
            // Other quoted values are shown whole.
            (
                "Server=h;Application Name=\"a;b\";Password=p",
                "Server=h;Application Name=\"a;b\";Password=***",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        assert_eq!(
            kind_of_url("Server=h;Password=a://b@c;Database=d"),
            Ok(BackendKind::MsSql)
        );
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
