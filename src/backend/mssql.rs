//! SQL Server through `tiberius` (TDS 7.3, TLS through rustls), driven by a
//! private current-thread runtime per connection, so no async runtime is
//! asked of the caller.
//!
//! We open the socket ourselves and keep its descriptor, as the PostgreSQL
//! backend does: that is what lets the watchdog cut loose a caller blocked
//! on a statement past its deadline.
//!
//! # Encryption
//!
//! `encrypt=off` (ADO.NET `Encrypt=False`/`Optional`) encrypts the login
//! packet only, as SQL Server's own clients do; `encrypt=on` encrypts
//! everything when the server offers it; `encrypt=required` (also `true`,
//! `yes`, `mandatory`, and the default) encrypts everything or fails. The
//! server's certificate is verified against the system's roots unless the
//! connection string asks for `TrustServerCertificate=true`.
//!
//! # Timeouts and what happens on the server
//!
//! A statement past its deadline cannot be stopped with TDS's own cancel
//! (an ATTENTION packet) from the watchdog: that has to go through the
//! client, which the blocked caller is using. So the watchdog shuts the
//! connection's socket down instead; the caller gets
//! [`ErrorKind::QueryTimeout`](crate::ErrorKind::QueryTimeout) at once and
//! the connection is discarded (never reused: after a dropped in-flight
//! request the TDS stream is out of step, tiberius#300).
//!
//! On the server, SQL Server notices the closed connection at its next
//! network check (at the latest when it sends results): it stops the
//! request, rolls back the session's open transaction and ends the session,
//! releasing its locks. Until then the request keeps running.
//!
//! SQL Server has no per-session statement timeout. As the second line of
//! defence the session's `LOCK_TIMEOUT` is set to the statement's limit
//! (plus a margin), so a statement blocked on another session's lock gives
//! up on the server by itself (error 1222, reported as a query timeout).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use self_cell::MutBorrow;
use tiberius::{
    AuthMethod, Client, ColumnData, EncryptionLevel, FromSql, QueryItem, QueryStream, ToSql,
};
use tokio::runtime::Runtime;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::blocking::{self, Attempt, SocketHandle};
use super::{connect_error, BulkKind, BulkPlan, ConnectLimit, Connection, Connector};
use crate::backend::Canceller;
use crate::config::DatabaseConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::sql::Dialect;
use crate::value::{Columns, Row, Value};

type Tds = Client<Compat<tokio::net::TcpStream>>;

/// Rows of a stream ended half way that are read and dropped, rather than
/// cancelled, when that is all that is left (see `close_stream`).
const DRAIN_ROWS: usize = 5000;

/// A result being streamed: tiberius' row stream, which borrows the
/// client mutably, and the column names.
struct Streaming<'c> {
    rows: QueryStream<'c>,
    columns: Columns,
}

self_cell::self_cell!(
    /// The client, lent to the result it is streaming, kept together
    /// inside the connection between fetches (`self_cell` checks the
    /// borrow; no unsafe code of ours). The client comes back out with
    /// `into_owner` once the stream ends.
    struct OpenResult {
        owner: MutBorrow<Tds>,
        #[not_covariant]
        dependent: Streaming,
    }
);

/// How encryption is negotiated (the connection string's `Encrypt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encrypt {
    /// Only the login packet is encrypted.
    Off,
    /// Everything, when the server supports it.
    On,
    /// Everything, or the connection fails.
    Required,
}

/// What a SQL Server connection string says, parsed once.
#[derive(Clone, PartialEq, Eq)]
struct Settings {
    host: String,
    port: u16,
    database: Option<String>,
    user: Option<String>,
    password: Option<String>,
    encrypt: Encrypt,
    trust_cert: bool,
    read_only_intent: bool,
    application_name: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("encrypt", &self.encrypt)
            .field("trust_cert", &self.trust_cert)
            .field("read_only_intent", &self.read_only_intent)
            .finish()
    }
}

const EXPECTED: &str = "expected mssql://user:password@host:1433/database[?encrypt=required&trust_server_certificate=true] \
     or Server=tcp:host,1433;Database=…;User Id=…;Password=…";

/// A boolean option's value; the error names the key, never the value.
fn flag(key: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(Error::config(format!(
            "the SQL Server connection string's `{key}` must be true or false"
        ))),
    }
}

fn encrypt_of(value: &str) -> Result<Encrypt> {
    match value.trim().to_ascii_lowercase().as_str() {
        "false" | "no" | "off" | "0" | "optional" => Ok(Encrypt::Off),
        "on" => Ok(Encrypt::On),
        "true" | "yes" | "1" | "required" | "mandatory" => Ok(Encrypt::Required),
        "strict" => Err(Error::config(
            "Encrypt=Strict (TDS 8.0) is not supported by dbmanager's SQL Server client; use Encrypt=true",
        )),
        _ => Err(Error::config(
            "the SQL Server connection string's `encrypt` must be off, on or required (or true/false)",
        )),
    }
}

/// Applies one `key=value` option common to both forms. Keys are compared
/// case-insensitively with spaces and `_` removed. Returns false for a key
/// it does not know.
fn apply_option(s: &mut Settings, key: &str, value: &str) -> Result<bool> {
    let norm: String = key
        .chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-'))
        .collect::<String>()
        .to_ascii_lowercase();
    match norm.as_str() {
        "encrypt" => s.encrypt = encrypt_of(value)?,
        "trustservercertificate" | "trustcert" => s.trust_cert = flag(key, value)?,
        "applicationintent" => {
            s.read_only_intent = match value.trim().to_ascii_lowercase().as_str() {
                "readonly" => true,
                "readwrite" => false,
                _ => {
                    return Err(Error::config(
                        "the SQL Server connection string's `ApplicationIntent` must be ReadOnly or ReadWrite",
                    ))
                }
            }
        }
        "applicationname" | "app" => s.application_name = Some(value.to_owned()),
        "database" | "initialcatalog" => {
            if !value.is_empty() {
                s.database = Some(value.to_owned());
            }
        }
        "userid" | "uid" | "user" | "username" => s.user = Some(value.to_owned()),
        "password" | "pwd" => s.password = Some(value.to_owned()),
        // ODBC/pyodbc options that mean nothing to a TDS client.
        "driver" | "odbcdriver" | "mars" | "multipleactiveresultsets" | "persistsecurityinfo" => {}
        _ => return Ok(false),
    }
    Ok(true)
}

fn defaults() -> Settings {
    Settings {
        host: "localhost".to_owned(),
        port: 1433,
        database: None,
        user: None,
        password: None,
        encrypt: Encrypt::Required,
        trust_cert: false,
        read_only_intent: false,
        application_name: None,
    }
}

/// Parses `mssql://`, `sqlserver://`, `mssql+pyodbc://` URLs and ADO.NET
/// strings. Errors never echo a value.
fn parse(raw: &str) -> Result<Settings> {
    let raw = raw.trim();
    if raw.contains("://") {
        parse_url(raw)
    } else {
        parse_ado(raw)
    }
}

fn parse_url(raw: &str) -> Result<Settings> {
    let url = url::Url::parse(raw).map_err(|_| {
        Error::config(format!(
            "the SQL Server connection string is not a valid URL; {EXPECTED}"
        ))
    })?;
    let mut s = defaults();
    s.host = match url.host_str() {
        Some(h) if !h.is_empty() => h.trim_matches(['[', ']']).to_owned(),
        _ => {
            return Err(Error::config(format!(
                "the SQL Server URL names no host; {EXPECTED}"
            )))
        }
    };
    s.port = url.port().unwrap_or(1433);
    let decode = |v: &str| {
        url::form_urlencoded::parse(format!("x={}", v.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    if !url.username().is_empty() {
        s.user = Some(decode(url.username()));
    }
    if let Some(pw) = url.password() {
        s.password = Some(decode(pw));
    }
    let path = url.path().trim_matches('/');
    if path.contains('/') {
        return Err(Error::config(
            "the SQL Server URL's path must be only the database name (named instances are not supported: give the instance's port instead)",
        ));
    }
    if !path.is_empty() {
        s.database = Some(decode(path));
    }
    for (k, v) in url.query_pairs() {
        if !apply_option(&mut s, &k, &v)? {
            tracing::debug!(option = %k, "ignoring an unknown SQL Server URL option");
        }
    }
    Ok(s)
}

/// Splits an ADO.NET string into `(key, value)` pairs; values may be quoted
/// with `'…'`, `"…"` (doubling the quote escapes it) or `{…}`.
fn ado_pairs(raw: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = raw;
    loop {
        rest = rest.trim_start_matches([';', ' ', '\t', '\r', '\n']);
        if rest.is_empty() {
            return Ok(out);
        }
        let Some(eq) = rest.find('=') else {
            return Err(Error::config(format!(
                "the SQL Server connection string has a part without `=`; {EXPECTED}"
            )));
        };
        let key = rest[..eq].trim().to_owned();
        rest = rest[eq + 1..].trim_start();
        let value;
        match rest.chars().next() {
            Some(q @ ('\'' | '"' | '{')) => {
                let close = if q == '{' { '}' } else { q };
                let mut v = String::new();
                let mut chars = rest[1..].char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    if c == close {
                        if rest[1 + i + 1..].starts_with(close) {
                            v.push(c);
                            chars.next();
                            continue;
                        }
                        end = Some(1 + i + 1);
                        break;
                    }
                    v.push(c);
                }
                let Some(end) = end else {
                    return Err(Error::config(format!(
                        "the SQL Server connection string's `{key}` has an unterminated quote"
                    )));
                };
                value = v;
                rest = &rest[end..];
            }
            _ => {
                let end = rest.find(';').unwrap_or(rest.len());
                value = rest[..end].trim().to_owned();
                rest = &rest[end..];
            }
        }
        out.push((key, value));
    }
}

fn parse_ado(raw: &str) -> Result<Settings> {
    let mut s = defaults();
    let mut server = None;
    for (k, v) in ado_pairs(raw)? {
        let norm = k.to_ascii_lowercase();
        let norm = norm.trim();
        if matches!(
            norm,
            "server" | "data source" | "address" | "addr" | "network address"
        ) {
            server = Some(v);
        } else if norm == "integrated security" || norm == "trusted_connection" {
            if flag(&k, &v).unwrap_or(true) && !v.eq_ignore_ascii_case("false") {
                return Err(Error::config(
                    "Integrated Security (Windows authentication) is not supported; give User Id and Password",
                ));
            }
        } else if !apply_option(&mut s, &k, &v)? {
            tracing::debug!(option = %k, "ignoring an unknown SQL Server connection string option");
        }
    }
    let Some(server) = server else {
        return Err(Error::config(format!(
            "the SQL Server connection string names no Server; {EXPECTED}"
        )));
    };
    let server = server.trim();
    let server = server
        .strip_prefix("tcp:")
        .or_else(|| server.strip_prefix("TCP:"))
        .unwrap_or(server);
    let (host, port) = match server.rsplit_once(',') {
        Some((h, p)) => (
            h.trim(),
            Some(p.trim().parse::<u16>().map_err(|_| {
                Error::config("the port after the comma in the SQL Server connection string's Server is not a number")
            })?),
        ),
        None => (server, None),
    };
    if host.contains('\\') && port.is_none() {
        return Err(Error::config(
            "named instances (Server=host\\instance) are not supported: give the instance's port (Server=host,port)",
        ));
    }
    let host = host.split('\\').next().unwrap_or(host);
    s.host = match host {
        "" | "." | "(local)" => "localhost".to_owned(),
        h => h.to_owned(),
    };
    s.port = port.unwrap_or(1433);
    Ok(s)
}

pub(crate) struct MsConnector {
    settings: Settings,
    read_only: bool,
    target: String,
    limit: ConnectLimit,
}

impl MsConnector {
    pub(crate) fn new(config: &DatabaseConfig) -> Result<Self> {
        let settings = parse(&config.url)?;
        if settings.user.is_none() {
            return Err(Error::config(
                "the SQL Server connection string has no user; dbmanager logs in with SQL Server authentication (user and password)",
            ));
        }
        let target = format!("SQL Server at {}:{}", settings.host, settings.port);
        Ok(MsConnector {
            read_only: config.read_only || settings.read_only_intent,
            settings,
            target,
            limit: ConnectLimit::of(config),
        })
    }

    fn tiberius_config(&self) -> tiberius::Config {
        let s = &self.settings;
        let mut c = tiberius::Config::new();
        c.host(&s.host);
        c.port(s.port);
        if let Some(db) = &s.database {
            c.database(db);
        }
        c.application_name(s.application_name.as_deref().unwrap_or("dbmanager"));
        c.authentication(AuthMethod::sql_server(
            s.user.as_deref().unwrap_or_default(),
            s.password.as_deref().unwrap_or_default(),
        ));
        c.encryption(match s.encrypt {
            Encrypt::Off => EncryptionLevel::Off,
            Encrypt::On => EncryptionLevel::On,
            Encrypt::Required => EncryptionLevel::Required,
        });
        if s.trust_cert {
            c.trust_cert();
        }
        c.readonly(self.read_only);
        c
    }
}

impl Connector for MsConnector {
    fn connect(&self) -> Result<Box<dyn Connection>> {
        let deadline = Instant::now() + self.limit.timeout;
        let rt = blocking::runtime("SQL Server")?;
        let addrs = blocking::resolve(
            &self.settings.host,
            self.settings.port,
            deadline,
            &self.target,
            &self.limit,
        )?;
        let failed = |timed_out: bool, e: Box<dyn std::error::Error + Send + Sync>| {
            Attempt::Next(connect_error(timed_out, &self.target, &self.limit, e))
        };
        let (client, socket) = blocking::first_to_connect(
            &addrs,
            &self.target,
            &self.limit,
            deadline,
            |addr, deadline| {
                let left = deadline.saturating_duration_since(Instant::now());
                let tcp = match std::net::TcpStream::connect_timeout(addr, left).and_then(|s| {
                    s.set_nodelay(true)?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                }) {
                    Ok(s) => s,
                    Err(e) => return failed(e.kind() == std::io::ErrorKind::TimedOut, e.into()),
                };
                let socket = SocketHandle::of(&tcp);
                let config = self.tiberius_config();
                let left = deadline.saturating_duration_since(Instant::now());
                let shook = rt.block_on(async {
                    let tcp = tokio::net::TcpStream::from_std(tcp)
                        .map_err(tiberius::error::Error::from)?;
                    match tokio::time::timeout(left, Client::connect(config, tcp.compat_write()))
                        .await
                    {
                        Ok(r) => r.map(Some),
                        Err(_) => Ok(None),
                    }
                });
                match shook {
                    Ok(Some(c)) => Attempt::Done((c, socket)),
                    // The server answered: a wrong password is final, not worth another address.
                    Err(tiberius::error::Error::Server(e)) => Attempt::Stop(classify_token(&e)),
                    Err(e @ tiberius::error::Error::Tls(_)) => Attempt::Stop(
                        Error::new(
                            ErrorKind::Connect,
                            format!(
                                "the TLS handshake with {} failed; if the server uses a self-signed certificate, add TrustServerCertificate=true (trust_server_certificate=true in a URL) to the connection string (SQL Server encrypts the login even with encrypt=off)",
                                self.target
                            ),
                        )
                        .with_source(e),
                    ),
                    Err(e) => failed(false, e.into()),
                    Ok(None) => failed(
                        true,
                        "the login did not finish in time".into(),
                    ),
                }
            },
        )?;
        let broken = Arc::new(AtomicBool::new(false));
        let canceller: Arc<dyn Canceller> = Arc::new(MsCancel {
            broken: Arc::clone(&broken),
            socket: socket.clone(),
        });
        Ok(Box::new(MsConnection {
            rt: Some(rt),
            client: Some(client),
            broken,
            in_flight: false,
            canceller,
            socket,
            stream: None,
            close_limit: self.limit.timeout,
        }))
    }

    fn dialect(&self) -> Dialect {
        Dialect::MsSql
    }

    fn refuses_async_context(&self) -> bool {
        // `block_on` panics on a thread that drives another runtime.
        true
    }
}

/// Stops a statement past its deadline by shutting the socket down: the
/// client is borrowed by the blocked caller, so TDS's own cancel cannot be
/// sent. The connection is then broken and discarded.
struct MsCancel {
    broken: Arc<AtomicBool>,
    socket: SocketHandle,
}

impl MsCancel {
    fn cut(&self) -> bool {
        self.broken.store(true, Ordering::SeqCst);
        self.socket.cut()
    }
}

impl Canceller for MsCancel {
    fn cancel(&self) -> Result<()> {
        self.cut();
        Ok(())
    }

    fn abort(&self) -> bool {
        self.cut()
    }
}

struct MsConnection {
    /// `Some` until dropped; see `Drop`.
    rt: Option<Runtime>,
    client: Option<Tds>,
    /// Set when a request was cut or failed at the transport level: the TDS
    /// stream can no longer be trusted (tiberius#300).
    broken: Arc<AtomicBool>,
    /// True while a request runs; still true if it was abandoned half way
    /// (a panic unwinding through `block_on`), which leaves the TDS stream
    /// out of step.
    in_flight: bool,
    canceller: Arc<dyn Canceller>,
    socket: SocketHandle,
    /// The result of an open stream, holding the client while it is open
    /// (`client` is `None` then).
    stream: Option<OpenResult>,
    /// How long ending a stream half way may take (the connect timeout).
    close_limit: Duration,
}

/// A [`Value`] bound as a SQL Server parameter.
struct Param<'a>(&'a Value);

impl ToSql for Param<'_> {
    fn to_sql(&self) -> ColumnData<'_> {
        match self.0 {
            Value::Null => ColumnData::String(None),
            Value::Bool(b) => ColumnData::Bit(Some(*b)),
            Value::I64(i) => ColumnData::I64(Some(*i)),
            Value::F64(f) => ColumnData::F64(Some(*f)),
            Value::Decimal(d) => ColumnData::Numeric(Some(
                tiberius::numeric::Numeric::new_with_scale(d.mantissa(), d.scale() as u8),
            )),
            Value::Text(s) => ColumnData::String(Some(s.as_str().into())),
            Value::Bytes(b) => ColumnData::Binary(Some(b.as_slice().into())),
            Value::Date(d) => d.to_sql(),
            Value::Time(t) => t.to_sql(),
            Value::Timestamp(t) => t.to_sql(),
            Value::TimestampTz(t) => t.to_sql(),
            Value::Uuid(u) => ColumnData::Guid(Some(*u)),
            Value::Json(j) => ColumnData::String(Some(j.to_string().into())),
        }
    }
}

impl MsConnection {
    /// Whether a request may be sent: an open stream is ended first, and a
    /// broken connection, or one with a request still in flight, is lost.
    fn ready(&mut self) -> Result<()> {
        if self.stream.is_some() && !self.close_stream() {
            return Err(lost(None));
        }
        if self.broken.load(Ordering::SeqCst) || self.in_flight {
            return Err(lost(None));
        }
        Ok(())
    }

    /// Runs one request to completion on this connection's runtime; a
    /// transport failure marks the connection broken.
    fn call<T>(
        &mut self,
        f: impl for<'c> FnOnce(
            &'c mut Tds,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = tiberius::Result<T>> + 'c>,
        >,
    ) -> Result<T> {
        self.ready()?;
        let (Some(rt), Some(client)) = (self.rt.as_ref(), self.client.as_mut()) else {
            return Err(lost(None));
        };
        self.in_flight = true;
        let result = rt.block_on(f(client));
        self.in_flight = false;
        self.settle(result)
    }

    /// Maps a request's outcome; a transport failure marks the connection
    /// broken.
    fn settle<T>(&self, result: tiberius::Result<T>) -> Result<T> {
        match result {
            Ok(v) => Ok(v),
            Err(tiberius::error::Error::Server(e)) => Err(classify_token(&e)),
            Err(e) => {
                if transport(&e) {
                    self.broken.store(true, Ordering::SeqCst);
                }
                Err(classify(e))
            }
        }
    }

    /// Takes the client back from an ended stream. What is left of its
    /// result (nothing, or the tokens after the first result set) is
    /// drained by tiberius before the next request.
    fn end_stream(&mut self) {
        if let Some(open) = self.stream.take() {
            self.client = Some(open.into_owner().into_inner());
        }
    }
}

impl MsConnection {
    /// Loads `rows` into `table` (quoted) with TDS bulk load. Every value
    /// is converted for its column's type, as the server reports it,
    /// before anything is sent, so a value that does not fit is an error
    /// naming its row and column, and the connection stays clean. A
    /// failure while rows are on the wire discards the connection.
    fn bulk_load(
        &mut self,
        table: &str,
        columns: &[String],
        rows: &[Vec<Value>],
        first: usize,
    ) -> Result<u64> {
        self.ready()?;
        let (Some(rt), Some(client)) = (self.rt.as_ref(), self.client.as_mut()) else {
            return Err(lost(None));
        };
        let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
        self.in_flight = true;
        let meta = rt.block_on(client.column_metadata(table, &cols));
        self.in_flight = false;
        let meta = self.settle(meta)?;
        let slots = slots_of(columns, &meta)?;
        let tds_rows = rows
            .iter()
            .enumerate()
            .map(|(i, row)| tds_row(first + i, row, columns, &slots))
            .collect::<Result<Vec<_>>>()?;
        let (Some(rt), Some(client)) = (self.rt.as_ref(), self.client.as_mut()) else {
            return Err(lost(None));
        };
        self.in_flight = true;
        let loaded = rt.block_on(async {
            let mut req = client
                .bulk_insert_with_options(
                    table,
                    &cols,
                    tiberius::SqlBulkCopyOption::KeepIdentity.into(),
                    &[],
                )
                .await
                .map_err(Refused)?;
            for row in tds_rows {
                req.send(row).await.map_err(Cut)?;
            }
            Ok(req.finalize().await.map_err(Refused)?.total())
        });
        self.in_flight = false;
        match loaded {
            Ok(n) => Ok(n),
            // The server answered: its whole reply was read.
            Err(Stop::Refused(Refused(e))) => self.settle(Err(e)),
            Err(Stop::Cut(Cut(e))) => {
                self.broken.store(true, Ordering::SeqCst);
                self.settle(Err(e))
            }
        }
    }
}

/// A bulk load's failure where the server's reply was read to its end.
struct Refused(tiberius::error::Error);

/// A bulk load's failure with rows left half sent: the connection is out
/// of step.
struct Cut(tiberius::error::Error);

enum Stop {
    Refused(Refused),
    Cut(Cut),
}

impl From<Refused> for Stop {
    fn from(e: Refused) -> Stop {
        Stop::Refused(e)
    }
}

impl From<Cut> for Stop {
    fn from(e: Cut) -> Stop {
        Stop::Cut(e)
    }
}

/// The temporary table upserts, updates and deletes load into.
const BULK_TEMP: &str = "#dbmanager_bulk";

/// The statement applying the loaded temporary table to the target.
fn bulk_apply_sql(plan: &BulkPlan) -> String {
    let table = &plan.table;
    let cols = plan.column_list();
    let on = plan.key_match("d", "s");
    let set = plan.set_from("d", "s");
    match plan.kind {
        BulkKind::Upsert => {
            let source = plan
                .columns
                .iter()
                .map(|c| format!("s.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
            let matched = if set.is_empty() {
                String::new()
            } else {
                format!("WHEN MATCHED THEN UPDATE SET {set} ")
            };
            format!(
                "MERGE INTO {table} WITH (HOLDLOCK) AS d USING {BULK_TEMP} AS s ON {on} \
                 {matched}WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({source});"
            )
        }
        BulkKind::Update => {
            format!("UPDATE d SET {set} FROM {table} AS d INNER JOIN {BULK_TEMP} AS s ON {on}")
        }
        BulkKind::Delete => {
            format!("DELETE d FROM {table} AS d INNER JOIN {BULK_TEMP} AS s ON {on}")
        }
        BulkKind::Insert => format!("INSERT INTO {table} ({cols}) SELECT {cols} FROM {BULK_TEMP}"),
    }
}

/// What a bulk-load column takes, from its type as the server reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Bit,
    U8,
    I16,
    I32,
    I64,
    F32,
    F64,
    Money,
    Decimal,
    Text,
    Binary,
    Guid,
    Date,
    /// `time(n)`: the scale.
    Time(u8),
    /// `datetime`.
    DateTime,
    /// `smalldatetime`.
    SmallDateTime,
    /// `datetime2(n)`: the scale.
    DateTime2(u8),
    /// `datetimeoffset(n)`: the scale.
    DateTimeOffset(u8),
    /// `xml`.
    Xml,
    /// A type bulk load here cannot write (`sql_variant`, a CLR type).
    Other(&'static str),
}

/// The slot of one column type.
fn slot_of(ty: &tiberius::TypeInfo) -> Slot {
    use tiberius::{FixedLenType as F, TypeInfo, VarLenType as V};
    match ty {
        TypeInfo::FixedLen(f) => match f {
            F::Int1 => Slot::U8,
            F::Int2 => Slot::I16,
            F::Int4 => Slot::I32,
            F::Int8 => Slot::I64,
            F::Bit => Slot::Bit,
            F::Float4 => Slot::F32,
            F::Float8 => Slot::F64,
            F::Money | F::Money4 => Slot::Money,
            F::Datetime => Slot::DateTime,
            F::Datetime4 => Slot::SmallDateTime,
            F::Null => Slot::Other("null"),
        },
        TypeInfo::VarLenSized(v) => match (v.r#type(), v.len()) {
            (V::Intn, 1) => Slot::U8,
            (V::Intn, 2) => Slot::I16,
            (V::Intn, 4) => Slot::I32,
            (V::Intn, _) => Slot::I64,
            (V::Bitn, _) => Slot::Bit,
            (V::Floatn, 4) => Slot::F32,
            (V::Floatn, _) => Slot::F64,
            (V::Money, _) => Slot::Money,
            (V::Guid, _) => Slot::Guid,
            (V::Datetimen, 4) => Slot::SmallDateTime,
            (V::Datetimen, _) => Slot::DateTime,
            (V::Daten, _) => Slot::Date,
            (V::Timen, n) => Slot::Time(n as u8),
            (V::Datetime2, n) => Slot::DateTime2(n as u8),
            (V::DatetimeOffsetn, n) => Slot::DateTimeOffset(n as u8),
            (V::BigVarChar | V::BigChar | V::NVarchar | V::NChar | V::Text | V::NText, _) => {
                Slot::Text
            }
            (V::BigVarBin | V::BigBinary | V::Image, _) => Slot::Binary,
            (V::Xml, _) => Slot::Xml,
            (V::Decimaln | V::Numericn, _) => Slot::Decimal,
            (V::SSVariant, _) => Slot::Other("sql_variant"),
            (V::Udt, _) => Slot::Other("a CLR user-defined type"),
        },
        TypeInfo::VarLenSizedPrecision { .. } => Slot::Decimal,
        TypeInfo::Xml { .. } => Slot::Xml,
        TypeInfo::Udt(_) => Slot::Other("a CLR user-defined type"),
    }
}

/// The slots of the columns a load writes, in order; a column bulk load
/// cannot write (computed, a timestamp/rowversion) is an error naming it.
fn slots_of(columns: &[String], meta: &[tiberius::MetaDataColumn<'_>]) -> Result<Vec<Slot>> {
    if meta.len() != columns.len() {
        return Err(Error::parameter(format!(
            "SQL Server reported {} columns for the {} listed; list each column of the table once",
            meta.len(),
            columns.len()
        )));
    }
    columns
        .iter()
        .zip(meta)
        .map(|(name, m)| {
            if !m.base.is_updateable() && !m.base.is_identity() {
                return Err(Error::parameter(format!(
                    "SQL Server reports the column {name} as read-only (computed, a rowversion, or not writable on this server), so bulk load cannot write it; leave it out of the columns"
                )));
            }
            Ok(slot_of(&m.base.ty))
        })
        .collect()
}

/// One row for the bulk load; the error names the row (its index in the
/// chunk) and the column, never a value.
fn tds_row<'a>(
    index: usize,
    row: &'a [Value],
    columns: &[String],
    slots: &[Slot],
) -> Result<tiberius::TokenRow<'a>> {
    let mut out = tiberius::TokenRow::with_capacity(slots.len());
    for ((value, slot), name) in row.iter().zip(slots).zip(columns) {
        let data = tds_value(value, *slot).map_err(|why| {
            Error::conversion(format!(
                "row {} of the chunk, column {name}: {why}",
                index + 1
            ))
        })?;
        out.push(data);
    }
    Ok(out)
}

/// One value as its column's slot takes it, or why it cannot be.
fn tds_value(value: &Value, slot: Slot) -> std::result::Result<ColumnData<'_>, String> {
    use chrono::{NaiveDate, NaiveDateTime, Timelike};
    use tiberius::time as t;
    let mismatch = || {
        format!(
            "a {} value cannot be written to a column of this type ({slot:?})",
            value.type_name()
        )
    };
    let int = |range: std::ops::RangeInclusive<i64>| -> std::result::Result<i64, String> {
        let v = match value {
            Value::I64(v) => *v,
            Value::Bool(b) => i64::from(*b),
            _ => return Err(mismatch()),
        };
        if range.contains(&v) {
            Ok(v)
        } else {
            Err(format!("the value is out of the column's range {range:?}"))
        }
    };
    let days_since = |d: NaiveDate, epoch: NaiveDate| (d - epoch).num_days();
    let epoch_1900 = NaiveDate::from_ymd_opt(1900, 1, 1).expect("a valid date");
    let datetime = |v: &Value| -> Option<NaiveDateTime> {
        match v {
            Value::Timestamp(t) => Some(*t),
            Value::TimestampTz(t) => Some(t.naive_utc()),
            Value::Date(d) => d.and_hms_opt(0, 0, 0),
            _ => None,
        }
    };
    // A time of day at `scale` digits of a second, in units of 10^-scale s.
    let increments = |time: chrono::NaiveTime, scale: u8| -> u64 {
        let nanos = u64::from(time.num_seconds_from_midnight()) * 1_000_000_000
            + u64::from(time.nanosecond().min(999_999_999));
        nanos / 10_u64.pow(9 - u32::from(scale.min(7)))
    };
    let null = matches!(value, Value::Null);
    Ok(match slot {
        Slot::Other(what) => return Err(format!("bulk load cannot write {what} columns")),
        Slot::Bit if null => ColumnData::Bit(None),
        Slot::Bit => match value {
            Value::Bool(b) => ColumnData::Bit(Some(*b)),
            Value::I64(0) => ColumnData::Bit(Some(false)),
            Value::I64(1) => ColumnData::Bit(Some(true)),
            _ => return Err(mismatch()),
        },
        Slot::U8 if null => ColumnData::U8(None),
        Slot::U8 => ColumnData::U8(Some(int(0..=255)? as u8)),
        Slot::I16 if null => ColumnData::I16(None),
        Slot::I16 => ColumnData::I16(Some(int(i16::MIN.into()..=i16::MAX.into())? as i16)),
        Slot::I32 if null => ColumnData::I32(None),
        Slot::I32 => ColumnData::I32(Some(int(i32::MIN.into()..=i32::MAX.into())? as i32)),
        Slot::I64 if null => ColumnData::I64(None),
        Slot::I64 => ColumnData::I64(Some(int(i64::MIN..=i64::MAX)?)),
        Slot::F32 | Slot::F64 if null => match slot {
            Slot::F32 => ColumnData::F32(None),
            _ => ColumnData::F64(None),
        },
        Slot::F32 | Slot::F64 => {
            let f = match value {
                Value::F64(f) => *f,
                Value::I64(i) => *i as f64,
                Value::Decimal(d) => {
                    use rust_decimal::prelude::ToPrimitive;
                    d.to_f64().ok_or_else(mismatch)?
                }
                _ => return Err(mismatch()),
            };
            if slot == Slot::F32 {
                ColumnData::F32(Some(f as f32))
            } else {
                ColumnData::F64(Some(f))
            }
        }
        Slot::Money | Slot::Decimal if null => match slot {
            Slot::Money => ColumnData::F64(None),
            _ => ColumnData::Numeric(None),
        },
        Slot::Money | Slot::Decimal => match value {
            Value::Decimal(d) => ColumnData::Numeric(Some(
                tiberius::numeric::Numeric::new_with_scale(d.mantissa(), d.scale() as u8),
            )),
            Value::I64(i) => ColumnData::Numeric(Some(tiberius::numeric::Numeric::new_with_scale(
                i128::from(*i),
                0,
            ))),
            Value::F64(f) if slot == Slot::Money => ColumnData::F64(Some(*f)),
            Value::F64(f) => {
                let d = rust_decimal::Decimal::try_from(*f).map_err(|_| mismatch())?;
                ColumnData::Numeric(Some(tiberius::numeric::Numeric::new_with_scale(
                    d.mantissa(),
                    d.scale() as u8,
                )))
            }
            _ => return Err(mismatch()),
        },
        Slot::Text | Slot::Xml if null => match slot {
            Slot::Xml => ColumnData::Xml(None),
            _ => ColumnData::String(None),
        },
        Slot::Xml => match value {
            Value::Text(s) => ColumnData::Xml(Some(std::borrow::Cow::Owned(
                tiberius::xml::XmlData::new(s.as_str()),
            ))),
            _ => return Err(mismatch()),
        },
        Slot::Text => match value {
            Value::Text(s) => ColumnData::String(Some(s.as_str().into())),
            Value::Json(j) => ColumnData::String(Some(j.to_string().into())),
            Value::I64(i) => ColumnData::String(Some(i.to_string().into())),
            Value::Decimal(d) => ColumnData::String(Some(d.to_string().into())),
            Value::Uuid(u) => ColumnData::String(Some(u.to_string().into())),
            _ => return Err(mismatch()),
        },
        Slot::Binary => match value {
            Value::Null => ColumnData::Binary(None),
            Value::Bytes(b) => ColumnData::Binary(Some(b.as_slice().into())),
            _ => return Err(mismatch()),
        },
        Slot::Guid => match value {
            Value::Null => ColumnData::Guid(None),
            Value::Uuid(u) => ColumnData::Guid(Some(*u)),
            Value::Text(s) => ColumnData::Guid(Some(
                uuid::Uuid::parse_str(s).map_err(|_| "the text is not a UUID".to_owned())?,
            )),
            _ => return Err(mismatch()),
        },
        Slot::Date => match value {
            Value::Null => ColumnData::Date(None),
            Value::Date(d) => {
                let epoch = NaiveDate::from_ymd_opt(1, 1, 1).expect("a valid date");
                ColumnData::Date(Some(t::Date::new(days_since(*d, epoch) as u32)))
            }
            _ => return Err(mismatch()),
        },
        Slot::Time(scale) => match value {
            Value::Null => ColumnData::Time(None),
            Value::Time(time) => {
                ColumnData::Time(Some(t::Time::new(increments(*time, scale), scale)))
            }
            _ => return Err(mismatch()),
        },
        Slot::DateTime | Slot::SmallDateTime if null => match slot {
            Slot::DateTime => ColumnData::DateTime(None),
            _ => ColumnData::SmallDateTime(None),
        },
        Slot::DateTime => {
            let dt = datetime(value).ok_or_else(mismatch)?;
            let days = days_since(dt.date(), epoch_1900);
            // 1/300 of a second, rounded as SQL Server rounds.
            let nanos = u64::from(dt.time().num_seconds_from_midnight()) * 1_000_000_000
                + u64::from(dt.time().nanosecond().min(999_999_999));
            let fragments = (nanos * 3 + 5_000_000) / 10_000_000;
            let days = i32::try_from(days).map_err(|_| "the date is out of range".to_owned())?;
            ColumnData::DateTime(Some(t::DateTime::new(days, fragments as u32)))
        }
        Slot::SmallDateTime => {
            let dt = datetime(value).ok_or_else(mismatch)?;
            let days = u16::try_from(days_since(dt.date(), epoch_1900)).map_err(|_| {
                "the date is out of smalldatetime's range (1900 to 2079)".to_owned()
            })?;
            let minutes = (dt.time().num_seconds_from_midnight() + 30) / 60;
            ColumnData::SmallDateTime(Some(t::SmallDateTime::new(days, minutes as u16)))
        }
        Slot::DateTime2(_) | Slot::DateTimeOffset(_) if null => match slot {
            Slot::DateTime2(_) => ColumnData::DateTime2(None),
            _ => ColumnData::DateTimeOffset(None),
        },
        Slot::DateTime2(scale) | Slot::DateTimeOffset(scale) => {
            let dt = datetime(value).ok_or_else(mismatch)?;
            let epoch = NaiveDate::from_ymd_opt(1, 1, 1).expect("a valid date");
            let dt2 = t::DateTime2::new(
                t::Date::new(days_since(dt.date(), epoch) as u32),
                t::Time::new(increments(dt.time(), scale), scale),
            );
            if matches!(slot, Slot::DateTime2(_)) {
                ColumnData::DateTime2(Some(dt2))
            } else {
                ColumnData::DateTimeOffset(Some(t::DateTimeOffset::new(dt2, 0)))
            }
        }
    })
}

/// The column names of a result.
fn column_names(columns: Option<&[tiberius::Column]>) -> Columns {
    columns
        .map(|cols| {
            cols.iter()
                .map(|c| Arc::<str>::from(c.name()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into()
}

/// Reads one row's cells.
fn row_of(columns: &Columns, r: &tiberius::Row) -> Result<Row> {
    let values = r
        .cells()
        .map(|(col, data)| read(col.name(), data))
        .collect::<Result<_>>()?;
    Ok(Row::new(Arc::clone(columns), values))
}

impl Connection for MsConnection {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let sql = sql.to_owned();
        let params: Vec<Value> = params.to_vec();
        let (columns, rows) = self.call(move |c| {
            Box::pin(async move {
                let args: Vec<Param<'_>> = params.iter().map(Param).collect();
                let refs: Vec<&dyn ToSql> = args.iter().map(|p| p as &dyn ToSql).collect();
                let mut stream = if refs.is_empty() {
                    c.simple_query(sql).await?
                } else {
                    c.query(sql, &refs).await?
                };
                let columns = column_names(stream.columns().await?);
                let rows = stream.into_first_result().await?;
                Ok((columns, rows))
            })
        })?;
        rows.iter().map(|r| row_of(&columns, r)).collect()
    }

    /// Sends the statement and keeps its result open in the connection,
    /// with the client lent to it: rows are read as [`fetch`] asks, so
    /// memory stays flat. Only the first result set is streamed.
    fn open_stream(&mut self, sql: &str, params: &[Value]) -> Result<Option<Vec<Row>>> {
        self.ready()?;
        let (Some(rt), Some(client)) = (self.rt.as_ref(), self.client.take()) else {
            return Err(lost(None));
        };
        self.in_flight = true;
        let opened = OpenResult::try_new_or_recover(MutBorrow::new(client), |c| {
            let c = c.borrow_mut();
            rt.block_on(async move {
                let args: Vec<Param<'_>> = params.iter().map(Param).collect();
                let refs: Vec<&dyn ToSql> = args.iter().map(|p| p as &dyn ToSql).collect();
                let mut rows = if refs.is_empty() {
                    c.simple_query(sql).await?
                } else {
                    c.query(sql, &refs).await?
                };
                let columns = column_names(rows.columns().await?);
                Ok(Streaming { rows, columns })
            })
        });
        self.in_flight = false;
        match opened {
            Ok(open) => {
                self.stream = Some(open);
                Ok(None)
            }
            Err((client, e)) => {
                self.client = Some(client.into_inner());
                self.settle(Err(e))
            }
        }
    }

    fn fetch(&mut self, max: usize, out: &mut Vec<Row>) -> Result<bool> {
        let (Some(rt), Some(open)) = (self.rt.as_ref(), self.stream.as_mut()) else {
            return Ok(false);
        };
        self.in_flight = true;
        let got = open.with_dependent_mut(|_, s| {
            let got = rt.block_on(async {
                let mut raw = Vec::with_capacity(max);
                while raw.len() < max {
                    match s.rows.try_next().await? {
                        Some(QueryItem::Row(r)) if r.result_index() == 0 => raw.push(r),
                        // A later result set: the stream is the first one's.
                        Some(QueryItem::Row(_)) => return Ok((raw, false)),
                        Some(QueryItem::Metadata(m)) if m.result_index() > 0 => {
                            return Ok((raw, false))
                        }
                        Some(QueryItem::Metadata(_)) => {}
                        None => return Ok((raw, false)),
                    }
                }
                Ok((raw, true))
            });
            got.map(|(raw, more)| (raw, more, Arc::clone(&s.columns)))
        });
        self.in_flight = false;
        let (raw, more, columns) = match self.settle(got) {
            Ok(v) => v,
            Err(e) => {
                self.end_stream();
                return Err(e);
            }
        };
        if !more {
            self.end_stream();
        }
        out.reserve(raw.len());
        for r in &raw {
            out.push(row_of(&columns, r)?);
        }
        Ok(more)
    }

    /// Ends an open result before its last row, leaving the connection
    /// clean or marking it for discarding (tiberius#300), all of it bounded
    /// by the connect timeout:
    ///
    /// 1. the rest is read and dropped, up to [`DRAIN_ROWS`] rows: a short
    ///    remainder costs less than a new login;
    /// 2. if more is left, TDS's cancel (an ATTENTION packet) stops the
    ///    request on the server, and tiberius skips what is still on the
    ///    wire up to the server's acknowledgement;
    /// 3. if that fails (the server had already sent the whole result, so
    ///    its acknowledgement comes as a message of its own, which tiberius
    ///    does not wait for), or anything takes too long, the connection is
    ///    discarded.
    ///
    /// Steps 1 and 3 are exercised against the test server; step 2 needs a
    /// real SQL Server still sending the result, which the test server never
    /// is (it sends each answer whole before reading the next packet).
    fn close_stream(&mut self) -> bool {
        let Some(mut open) = self.stream.take() else {
            return true;
        };
        let Some(rt) = self.rt.as_ref() else {
            return false;
        };
        self.in_flight = true;
        let limit = self.close_limit;
        let drained = open.with_dependent_mut(|_, s| {
            rt.block_on(async {
                tokio::time::timeout(limit, async {
                    for _ in 0..DRAIN_ROWS {
                        if s.rows.try_next().await?.is_none() {
                            return Ok(true);
                        }
                    }
                    Ok::<_, tiberius::error::Error>(false)
                })
                .await
            })
        });
        let mut client = open.into_owner().into_inner();
        let clean = match drained {
            Ok(Ok(true)) => true,
            Ok(Ok(false)) => matches!(
                rt.block_on(async { tokio::time::timeout(limit, client.cancel_query()).await }),
                Ok(Ok(()))
            ),
            // An error of the server's ends its answer: the rest is
            // drained before the next request. Anything else: discarded.
            Ok(Err(tiberius::error::Error::Server(_))) => true,
            Ok(Err(_)) | Err(_) => false,
        };
        self.in_flight = false;
        self.client = Some(client);
        if !clean {
            tracing::debug!(
                "a SQL Server stream ended half way could not be stopped cleanly; its connection is discarded"
            );
            self.broken.store(true, Ordering::SeqCst);
        }
        clean
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let sql = sql.to_owned();
        let params: Vec<Value> = params.to_vec();
        self.call(move |c| {
            Box::pin(async move {
                let args: Vec<Param<'_>> = params.iter().map(Param).collect();
                let refs: Vec<&dyn ToSql> = args.iter().map(|p| p as &dyn ToSql).collect();
                Ok(c.execute(sql, &refs).await?.total())
            })
        })
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        let sql = sql.to_owned();
        self.call(move |c| {
            Box::pin(async move {
                c.simple_query(sql).await?.into_results().await?;
                Ok(())
            })
        })
    }

    fn begin(&mut self) -> Result<()> {
        self.batch("BEGIN TRANSACTION")
    }

    fn commit(&mut self) -> Result<()> {
        self.batch("COMMIT TRANSACTION")
    }

    fn rollback(&mut self) -> Result<()> {
        // Only when one is open: SQL Server ends the transaction itself on
        // some errors (XACT_ABORT, deadlocks), and a ROLLBACK then fails with 3903.
        self.batch("IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION")
    }

    fn ping(&mut self) -> Result<()> {
        self.batch("SELECT 1")
    }

    /// TDS bulk load (`INSERT BULK`, tiberius' `bulk_insert`) for inserts;
    /// for upserts, updates and deletes a bulk load into a temporary table
    /// with the target's column types, then one `MERGE`, `UPDATE … FROM`
    /// or `DELETE … FROM` joined on the keys.
    ///
    /// The test server (pysqlbridge) has no bulk load: against it this
    /// fails with its error at `INSERT BULK`, cleanly. The rows written, the
    /// `MERGE`/`UPDATE`/`DELETE` from the temporary table and the mapping of
    /// values to each column type are verified only by unit tests of the
    /// encoding, not against a real SQL Server.
    fn bulk_write(&mut self, plan: &BulkPlan, rows: &[Vec<Value>]) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        if plan.kind == BulkKind::Insert {
            return self.bulk_load(&plan.table, &plan.columns, rows, 0);
        }
        // A key repeated within the rows cuts them into runs applied one
        // after the other (MERGE refuses to touch a row twice): the later
        // row wins, as it would written row by row.
        plan.write_in_runs(rows, &mut |run, first| self.bulk_apply(plan, run, first))
    }

    fn canceller(&self) -> Arc<dyn Canceller> {
        Arc::clone(&self.canceller)
    }

    fn set_server_timeout(&mut self, limit: Option<Duration>) -> Result<()> {
        // No statement timeout exists on the server; bound lock waits.
        let ms = limit.map_or(-1, |d| d.as_millis().clamp(1, i32::MAX as u128) as i64);
        self.batch(&format!("SET LOCK_TIMEOUT {ms}"))
    }

    fn is_closed(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
            || self.in_flight
            || (self.client.is_none() && self.stream.is_none())
    }

    fn peer_closed(&self) -> bool {
        self.socket.peer_closed()
    }
}

impl MsConnection {
    /// One run of a bulk upsert, update or delete: its rows loaded into
    /// [`BULK_TEMP`], then applied to the target in one statement. `first`
    /// is the index of its first row in the chunk.
    fn bulk_apply(&mut self, plan: &BulkPlan, rows: &[Vec<Value>], first: usize) -> Result<u64> {
        let cols = plan.column_list();
        let table = &plan.table;
        // A UNION makes SELECT … INTO leave out an identity property, so
        // every column takes the values given. Each chunk runs in a
        // transaction, so a failure after this rolls the table back too.
        self.batch(&format!(
            "SELECT {cols} INTO {BULK_TEMP} FROM {table} WHERE 1 = 0 \
             UNION ALL SELECT {cols} FROM {table} WHERE 1 = 0"
        ))?;
        let applied = self
            .bulk_load(BULK_TEMP, &plan.columns, rows, first)
            .and_then(|_| self.execute(&bulk_apply_sql(plan), &[]));
        let dropped = self.batch(&format!("DROP TABLE {BULK_TEMP}"));
        // The first failure is the one to report.
        let affected = applied?;
        dropped?;
        Ok(affected)
    }
}

impl Drop for MsConnection {
    fn drop(&mut self) {
        // The open result first: it holds the client.
        blocking::drop_off_runtime((self.stream.take(), self.client.take(), self.rt.take()));
    }
}

/// Reads one cell, widening to [`Value`]'s types.
fn read(column: &str, data: &ColumnData<'static>) -> Result<Value> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
    let conv = |e: tiberius::error::Error| {
        Error::conversion(format!(
            "column `{column}` of type {} cannot be read",
            data_type_name(data)
        ))
        .with_source(e)
    };
    macro_rules! via {
        ($t:ty, $wrap:expr) => {
            <$t as FromSql<'_>>::from_sql(data)
                .map_err(conv)?
                .map_or(Value::Null, $wrap)
        };
    }
    Ok(match data {
        ColumnData::U8(v) => v.map_or(Value::Null, |v| Value::I64(v.into())),
        ColumnData::I16(v) => v.map_or(Value::Null, |v| Value::I64(v.into())),
        ColumnData::I32(v) => v.map_or(Value::Null, |v| Value::I64(v.into())),
        ColumnData::I64(v) => v.map_or(Value::Null, Value::I64),
        ColumnData::F32(v) => v.map_or(Value::Null, |v| Value::F64(v.into())),
        ColumnData::F64(v) => v.map_or(Value::Null, Value::F64),
        ColumnData::Bit(v) => v.map_or(Value::Null, Value::Bool),
        ColumnData::String(v) => v
            .as_ref()
            .map_or(Value::Null, |s| Value::Text(s.to_string())),
        ColumnData::Guid(v) => v.map_or(Value::Null, Value::Uuid),
        ColumnData::Binary(v) => v.as_ref().map_or(Value::Null, |b| Value::Bytes(b.to_vec())),
        ColumnData::Numeric(v) => v.map_or(Value::Null, |n| numeric(n.value(), n.scale())),
        ColumnData::Xml(v) => v
            .as_ref()
            .map_or(Value::Null, |x| Value::Text(x.to_string())),
        ColumnData::DateTime(_) | ColumnData::SmallDateTime(_) | ColumnData::DateTime2(_) => {
            via!(NaiveDateTime, Value::Timestamp)
        }
        ColumnData::Date(_) => via!(NaiveDate, Value::Date),
        ColumnData::Time(_) => via!(NaiveTime, Value::Time),
        ColumnData::DateTimeOffset(_) => via!(DateTime<Utc>, Value::TimestampTz),
    })
}

/// A `decimal`/`numeric` value (`value` × 10^-`scale`; SQL Server allows 38
/// digits and a scale up to 38) as a [`Value::Decimal`] when
/// `rust_decimal` can hold it exactly (96 bits, scale up to 28), after
/// dropping trailing zero decimals (`CAST(1 AS DECIMAL(38,30))` is 1);
/// otherwise as its exact digits in [`Value::Text`] (`12345678.9012…`), which
/// reads as `String` or `f64`. Never rounded, never a panic.
fn numeric(mut value: i128, mut scale: u8) -> Value {
    loop {
        if let Ok(d) = rust_decimal::Decimal::try_from_i128_with_scale(value, scale.into()) {
            return Value::Decimal(d);
        }
        if scale == 0 || value % 10 != 0 {
            break;
        }
        value /= 10;
        scale -= 1;
    }
    let digits = value.unsigned_abs().to_string();
    let scale = usize::from(scale);
    let mut text = String::with_capacity(digits.len() + scale + 3);
    if value < 0 {
        text.push('-');
    }
    if scale == 0 {
        text.push_str(&digits);
    } else {
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        text.push_str(int);
        text.push('.');
        text.push_str(frac);
    }
    Value::Text(text)
}

fn data_type_name(data: &ColumnData<'_>) -> &'static str {
    match data {
        ColumnData::U8(_) => "tinyint",
        ColumnData::I16(_) => "smallint",
        ColumnData::I32(_) => "int",
        ColumnData::I64(_) => "bigint",
        ColumnData::F32(_) => "real",
        ColumnData::F64(_) => "float",
        ColumnData::Bit(_) => "bit",
        ColumnData::String(_) => "nvarchar",
        ColumnData::Guid(_) => "uniqueidentifier",
        ColumnData::Binary(_) => "varbinary",
        ColumnData::Numeric(_) => "decimal",
        ColumnData::Xml(_) => "xml",
        ColumnData::DateTime(_) => "datetime",
        ColumnData::SmallDateTime(_) => "smalldatetime",
        ColumnData::DateTime2(_) => "datetime2",
        ColumnData::Date(_) => "date",
        ColumnData::Time(_) => "time",
        ColumnData::DateTimeOffset(_) => "datetimeoffset",
    }
}

/// True when the error leaves the TDS stream unusable.
fn transport(e: &tiberius::error::Error) -> bool {
    use tiberius::error::Error as E;
    matches!(
        e,
        E::Io { .. } | E::Protocol(_) | E::Tls(_) | E::Routing { .. }
    )
}

#[cold]
fn lost(source: Option<tiberius::error::Error>) -> Error {
    let e = Error::new(
        ErrorKind::Connect,
        "the connection to SQL Server was lost (or cut at a statement's deadline); it is discarded",
    );
    match source {
        Some(s) => e.with_source(s),
        None => e,
    }
}

/// Maps a client-side tiberius error to ours.
#[cold]
fn classify(e: tiberius::error::Error) -> Error {
    use tiberius::error::Error as E;
    match e {
        E::Server(ref t) => classify_token(t),
        E::Io { .. } | E::Protocol(_) | E::Tls(_) => lost(Some(e)),
        E::Routing { .. } => Error::new(
            ErrorKind::Connect,
            "the server redirected the connection (Azure SQL gateway routing), which dbmanager does not follow; connect to the redirected host directly",
        )
        .with_source(e),
        E::BulkInput(ref m) => Error::conversion(format!(
            "a value cannot be written by bulk load: {m}"
        ))
        .with_source(e),
        E::Conversion(_) | E::Encoding(_) | E::Utf8 | E::Utf16 | E::ParseInt(_) => {
            Error::conversion("a value could not be converted between Rust and SQL Server")
                .with_source(e)
        }
    }
}

/// The kind of a SQL Server error number.
fn kind_of_code(code: u32) -> ErrorKind {
    match code {
        18456 | 18452 | 18470 | 18486 | 18487 | 18488 | 4060 => ErrorKind::Auth,
        2627 | 2601 => ErrorKind::UniqueViolation,
        547 | 515 | 2628 => ErrorKind::Constraint,
        229 | 230 | 262 | 297 | 300 | 916 => ErrorKind::Permission,
        102 | 105 | 156 | 170 | 207 | 208 | 209 | 2812 | 137 | 4145 | 8180 | 1038 => {
            ErrorKind::Syntax
        }
        1205 => ErrorKind::Conflict,
        1222 => ErrorKind::QueryTimeout,
        3906 | 3908 => ErrorKind::ReadOnly,
        245 | 8114 | 8115 | 220 | 232 | 241 | 242 | 295 | 8152 | 517 | 8134 => {
            ErrorKind::Conversion
        }
        40613 | 40197 | 40501 | 49918 | 49919 | 49920 | 4221 | 10928 | 10929 => ErrorKind::Connect,
        _ => ErrorKind::Database,
    }
}

/// Maps a server error to ours; SQL Server's number becomes `db_code()`.
/// The server's message becomes ours (it never contains a password).
#[cold]
fn classify_token(t: &tiberius::error::TokenError) -> Error {
    let code = t.code();
    let kind = kind_of_code(code);
    let mut message = t.message().to_owned();
    if kind == ErrorKind::Auth && code == 18456 {
        message.push_str(" Check the user and password in the connection string.");
    }
    Error::new(kind, message).with_code(code.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_numbers_are_transient_or_permanent() {
        let retryable = |c| Error::new(kind_of_code(c), "").is_retryable();
        for c in [1205, 40613, 40197, 40501, 10928] {
            assert!(retryable(c), "{c}");
        }
        for c in [102, 208, 2627, 547, 229, 18456, 1222] {
            assert!(!retryable(c), "{c}");
        }
    }

    #[test]
    fn urls_of_every_form_parse() -> Result<()> {
        let s = parse("mssql://app:p%40ss@db.example:1444/hub?encrypt=off&TrustServerCertificate=yes&ApplicationIntent=ReadOnly")?;
        assert_eq!((s.host.as_str(), s.port), ("db.example", 1444));
        assert_eq!(s.database.as_deref(), Some("hub"));
        assert_eq!(s.user.as_deref(), Some("app"));
        assert_eq!(s.password.as_deref(), Some("p@ss"));
        assert_eq!(s.encrypt, Encrypt::Off);
        assert!(s.trust_cert && s.read_only_intent);

        let s = parse("mssql+pyodbc://user:pass@server:1433/survey_hub?driver=ODBC+Driver+17+for+SQL+Server&TrustServerCertificate=yes&Encrypt=yes")?;
        assert_eq!(s.encrypt, Encrypt::Required);
        assert!(s.trust_cert);
        assert_eq!(s.database.as_deref(), Some("survey_hub"));

        let s = parse("sqlserver://u:p@h")?;
        assert_eq!(s.port, 1433);
        assert_eq!(
            s.encrypt,
            Encrypt::Required,
            "encrypted and verified by default"
        );
        assert!(!s.trust_cert, "certificates are trusted only when asked");
        Ok(())
    }

    #[test]
    fn ado_strings_parse() -> Result<()> {
        let s = parse("Server=tcp:db.example,1433;Database=hub;User Id=app;Password=\"a;b\"\"c\";Encrypt=True;TrustServerCertificate=False;ApplicationIntent=ReadOnly")?;
        assert_eq!((s.host.as_str(), s.port), ("db.example", 1433));
        assert_eq!(s.database.as_deref(), Some("hub"));
        assert_eq!(s.user.as_deref(), Some("app"));
        assert_eq!(s.password.as_deref(), Some("a;b\"c"));
        assert_eq!(s.encrypt, Encrypt::Required);
        assert!(!s.trust_cert && s.read_only_intent);

        let s = parse("Data Source=.;Initial Catalog=x;UID=u;PWD={p}};w};Encrypt=Optional")?;
        assert_eq!(s.host, "localhost");
        assert_eq!(s.password.as_deref(), Some("p};w"));
        assert_eq!(s.encrypt, Encrypt::Off);
        assert_eq!(parse("Server=h;Encrypt=on;User Id=u")?.encrypt, Encrypt::On);
        Ok(())
    }

    #[test]
    fn bad_strings_say_why_without_values() {
        for (bad, expect) in [
            ("Server=h,port;Password=hunter2", "not a number"),
            ("Server=h;Encrypt=hunter2", "must be off, on or required"),
            ("Server=h\\SQLEXPRESS;Password=hunter2", "named instances"),
            ("Database=x;Password=hunter2", "names no Server"),
            ("Server=h;Password='hunter2", "unterminated quote"),
            (
                "Server=h;Integrated Security=SSPI;Password=hunter2",
                "Windows authentication",
            ),
            ("mssql://u:hunter2@h/a/b", "named instances"),
        ] {
            let e = parse(bad).unwrap_err();
            let text = format!("{e} {e:?}");
            assert_eq!(e.kind(), ErrorKind::Config);
            assert!(text.contains(expect), "{bad}: {text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn server_numbers_are_classified() {
        assert_eq!(kind_of_code(18456), ErrorKind::Auth);
        assert_eq!(kind_of_code(208), ErrorKind::Syntax);
        assert_eq!(kind_of_code(1205), ErrorKind::Conflict);
        assert_eq!(kind_of_code(2627), ErrorKind::UniqueViolation);
        assert_eq!(kind_of_code(2601), ErrorKind::UniqueViolation);
        assert_eq!(kind_of_code(547), ErrorKind::Constraint);
        assert_eq!(kind_of_code(229), ErrorKind::Permission);
        assert_eq!(kind_of_code(230), ErrorKind::Permission);
        assert_eq!(kind_of_code(1222), ErrorKind::QueryTimeout);
        assert_eq!(kind_of_code(50000), ErrorKind::Database);
    }

    fn numeric(value: i128, scale: u8) -> Result<Value> {
        read(
            "amount",
            &ColumnData::Numeric(Some(tiberius::numeric::Numeric::new_with_scale(
                value, scale,
            ))),
        )
    }

    #[test]
    fn decimals_past_rust_decimal_range_are_read_without_loss_or_panic() -> Result<()> {
        // CAST(1 AS DECIMAL(38,30)): scale 30, trailing zeros only.
        assert_eq!(
            numeric(10_i128.pow(30), 30)?,
            Value::Decimal(rust_decimal::Decimal::ONE)
        );
        // 1.5 * 1.5 as DECIMAL(19,15) * DECIMAL(19,15): DECIMAL(38,30).
        assert_eq!(
            numeric(225 * 10_i128.pow(28), 30)?,
            Value::Decimal("2.25".parse().unwrap())
        );
        // 38 significant digits, 30 of them decimals: more than 96 bits and
        // a scale over 28, kept exactly as text.
        let many = 12_345_678_901_234_567_890_123_456_789_012_345_678_i128;
        assert_eq!(
            numeric(many, 30)?,
            Value::Text("12345678.901234567890123456789012345678".into())
        );
        assert_eq!(
            numeric(-many, 30)?,
            Value::Text("-12345678.901234567890123456789012345678".into())
        );
        assert_eq!(
            numeric(-5, 37)?,
            Value::Text("-0.0000000000000000000000000000000000005".into())
        );
        // Over 96 bits without decimals: DECIMAL(38,0).
        assert_eq!(
            numeric(many, 0)?,
            Value::Text("12345678901234567890123456789012345678".into())
        );
        // Within range: unchanged, scale kept.
        assert_eq!(
            numeric(123_456_789, 4)?,
            Value::Decimal("12345.6789".parse().unwrap())
        );
        assert_eq!(
            numeric(1_000, 2)?,
            Value::Decimal(rust_decimal::Decimal::new(1_000, 2))
        );
        Ok(())
    }

    fn var(ty: tiberius::VarLenType, len: usize) -> tiberius::TypeInfo {
        tiberius::TypeInfo::VarLenSized(tiberius::VarLenContext::new(ty, len, None))
    }

    #[test]
    fn column_types_map_to_bulk_slots() {
        use tiberius::{FixedLenType as F, TypeInfo, VarLenType as V};
        let cases = [
            (TypeInfo::FixedLen(F::Int4), Slot::I32),
            (TypeInfo::FixedLen(F::Int8), Slot::I64),
            (TypeInfo::FixedLen(F::Bit), Slot::Bit),
            (TypeInfo::FixedLen(F::Datetime), Slot::DateTime),
            (TypeInfo::FixedLen(F::Datetime4), Slot::SmallDateTime),
            (var(V::Intn, 1), Slot::U8),
            (var(V::Intn, 2), Slot::I16),
            (var(V::Intn, 4), Slot::I32),
            (var(V::Intn, 8), Slot::I64),
            (var(V::Floatn, 4), Slot::F32),
            (var(V::Floatn, 8), Slot::F64),
            (var(V::Datetimen, 4), Slot::SmallDateTime),
            (var(V::Datetimen, 8), Slot::DateTime),
            (var(V::Datetime2, 3), Slot::DateTime2(3)),
            (var(V::Timen, 7), Slot::Time(7)),
            (var(V::NVarchar, 80), Slot::Text),
            (var(V::BigVarChar, 80), Slot::Text),
            (var(V::BigVarBin, 16), Slot::Binary),
            (var(V::Guid, 16), Slot::Guid),
            (
                TypeInfo::VarLenSizedPrecision {
                    ty: V::Decimaln,
                    size: 9,
                    precision: 12,
                    scale: 2,
                },
                Slot::Decimal,
            ),
        ];
        for (ty, slot) in cases {
            assert_eq!(slot_of(&ty), slot, "{ty:?}");
        }
    }

    #[test]
    fn values_become_the_columns_tds_data() {
        use chrono::{NaiveDate, NaiveTime};
        fn ok(v: &Value, slot: Slot) -> ColumnData<'_> {
            tds_value(v, slot).expect("converts")
        }
        assert_eq!(ok(&Value::I64(7), Slot::I32), ColumnData::I32(Some(7)));
        assert_eq!(ok(&Value::I64(7), Slot::U8), ColumnData::U8(Some(7)));
        assert_eq!(ok(&Value::Bool(true), Slot::I16), ColumnData::I16(Some(1)));
        assert_eq!(ok(&Value::Null, Slot::I64), ColumnData::I64(None));
        assert_eq!(ok(&Value::I64(1), Slot::Bit), ColumnData::Bit(Some(true)));
        assert_eq!(ok(&Value::I64(2), Slot::F64), ColumnData::F64(Some(2.0)));
        assert_eq!(
            ok(&Value::Text("ünï ✓".into()), Slot::Text),
            ColumnData::String(Some("ünï ✓".into()))
        );
        assert_eq!(
            ok(&Value::Decimal("12.50".parse().unwrap()), Slot::Decimal),
            ColumnData::Numeric(Some(tiberius::numeric::Numeric::new_with_scale(1250, 2)))
        );
        let u = uuid::Uuid::new_v4();
        assert_eq!(
            ok(&Value::Text(u.to_string()), Slot::Guid),
            ColumnData::Guid(Some(u))
        );
        // Dates and times as tiberius' own chrono conversions make them
        // (days from 0001-01-01, 100 ns units at scale 7); `datetime` counts
        // days from 1900-01-01 and 1/300 s; other scales rescale.
        let day = NaiveDate::from_ymd_opt(1900, 1, 2).unwrap();
        assert_eq!(ok(&Value::Date(day), Slot::Date), day.to_sql());
        let noon = day.and_hms_milli_opt(12, 0, 0, 10).unwrap();
        assert_eq!(
            ok(&Value::Timestamp(noon), Slot::DateTime2(7)),
            noon.to_sql()
        );
        let t = NaiveTime::from_hms_micro_opt(0, 0, 1, 5).unwrap();
        assert_eq!(ok(&Value::Time(t), Slot::Time(7)), t.to_sql());
        match ok(&Value::Timestamp(noon), Slot::DateTime) {
            ColumnData::DateTime(Some(d)) => {
                assert_eq!(d.days(), 1);
                assert_eq!(d.seconds_fragments(), 12 * 3600 * 300 + 3);
            }
            other => panic!("{other:?}"),
        }
        match ok(&Value::Timestamp(noon), Slot::DateTime2(3)) {
            ColumnData::DateTime2(Some(d)) => {
                assert_eq!(d.time().scale(), 3);
                assert_eq!(d.time().increments(), 12 * 3_600_000 + 10);
            }
            other => panic!("{other:?}"),
        }
        let t = NaiveTime::from_hms_micro_opt(0, 0, 1, 5).unwrap();
        match ok(&Value::Time(t), Slot::Time(7)) {
            ColumnData::Time(Some(x)) => assert_eq!(x.increments(), 10_000_050),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn values_that_do_not_fit_say_why_without_the_value() {
        for (v, slot, why) in [
            (Value::I64(300), Slot::U8, "out of the column's range"),
            (Value::I64(1 << 40), Slot::I32, "out of the column's range"),
            (Value::Text("hunter2".into()), Slot::I32, "text value"),
            (Value::Text("hunter2".into()), Slot::Guid, "not a UUID"),
            (Value::Bytes(vec![1]), Slot::Text, "bytes value"),
            (Value::I64(1), Slot::Other("sql_variant"), "sql_variant"),
        ] {
            let e = tds_value(&v, slot).expect_err("refused");
            assert!(e.contains(why), "{e}");
            assert!(!e.contains("hunter2") && !e.contains("300"), "{e}");
        }
        let row = [Value::I64(1), Value::Text("hunter2".into())];
        let e = tds_row(
            4,
            &row,
            &["[id]".into(), "[n]".into()],
            &[Slot::I32, Slot::I32],
        )
        .expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::Conversion);
        let text = e.to_string();
        assert!(text.contains("row 5 of the chunk, column [n]"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn bulk_statements_join_the_loaded_rows_on_the_keys() -> Result<()> {
        let plan = |kind, keys: &[&str]| {
            BulkPlan::new(
                kind,
                Dialect::MsSql,
                "app.Order Items",
                &["id", "Näme x"],
                keys,
            )
        };
        let up = bulk_apply_sql(&plan(BulkKind::Upsert, &["id"])?);
        assert_eq!(
            up,
            "MERGE INTO [app].[Order Items] WITH (HOLDLOCK) AS d USING #dbmanager_bulk AS s \
             ON d.[id] = s.[id] WHEN MATCHED THEN UPDATE SET d.[Näme x] = s.[Näme x] \
             WHEN NOT MATCHED THEN INSERT ([id], [Näme x]) VALUES (s.[id], s.[Näme x]);"
        );
        let only_keys = bulk_apply_sql(&plan(BulkKind::Upsert, &["id", "Näme x"])?);
        assert!(!only_keys.contains("WHEN MATCHED"), "{only_keys}");
        assert_eq!(
            bulk_apply_sql(&plan(BulkKind::Update, &["id"])?),
            "UPDATE d SET d.[Näme x] = s.[Näme x] FROM [app].[Order Items] AS d \
             INNER JOIN #dbmanager_bulk AS s ON d.[id] = s.[id]"
        );
        assert_eq!(
            bulk_apply_sql(&plan(BulkKind::Delete, &["id"])?),
            "DELETE d FROM [app].[Order Items] AS d INNER JOIN #dbmanager_bulk AS s ON d.[id] = s.[id]"
        );
        Ok(())
    }

    #[test]
    fn settings_debug_hides_the_password() -> Result<()> {
        let s = parse("Server=h;User Id=u;Password=hunter2")?;
        assert!(!format!("{s:?}").contains("hunter2"));
        Ok(())
    }
}
