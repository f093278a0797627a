//! PostgreSQL through `tokio-postgres`, driven by a private current-thread
//! runtime per connection (as the `postgres` crate does), so no async
//! runtime is asked of the caller.
//!
//! We open the socket ourselves rather than through the `postgres` crate:
//! holding its descriptor is what lets the watchdog cut loose a caller
//! blocked on a server that no longer answers (a stopped backend, a dead
//! network), which a cancel request cannot reach.
//!
//! Each connection keeps its own cache of prepared statements, so a
//! repeated statement costs one round trip, as with the raw driver.
//!
//! TLS: `sslmode=disable` (and no `sslmode`) connect in plain text;
//! `prefer`, `require`, `verify-ca` and `verify-full` use rustls and verify
//! the server's certificate against the Mozilla root store (stricter than
//! libpq's `require`, which does not verify).

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::runtime::Runtime;
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::{CancelToken, Client, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::blocking::{self, Attempt, SocketHandle};
use super::{connect_error, BulkKind, BulkPlan, BulkRows, ConnectLimit, Connection, Connector};
use crate::backend::Canceller;
use crate::config::DatabaseConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::sql::Dialect;
use crate::value::{self, Columns, Row, Value};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Prepared statements kept per connection before the cache is emptied.
const STATEMENT_CACHE: usize = 256;

pub(crate) struct PgConnector {
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    target: String,
    limit: ConnectLimit,
    /// READ_ONLY: `SET default_transaction_read_only = on` at connect (behind
    /// pgbouncer: a read-only transaction around each statement instead).
    read_only: bool,
    /// Behind pgbouncer in transaction pooling mode.
    pgbouncer: bool,
}

impl PgConnector {
    pub(crate) fn new(config: &DatabaseConfig) -> Result<Self> {
        let (url, wants_tls) = normalise_url(&config.url)?;
        let pgbouncer = config.pgbouncer;
        let mut pg = tokio_postgres::Config::from_str(&url).map_err(|_| {
            Error::config(
                "the PostgreSQL connection string cannot be parsed; expected postgresql://user:password@host:port/database[?sslmode=require]",
            )
        })?;
        if pg.get_application_name().is_none() {
            pg.application_name("dbmanager");
        }
        let target = describe_target(&pg);
        let tls = if wants_tls {
            Some(tls_connector()?)
        } else {
            None
        };
        Ok(PgConnector {
            config: pg,
            tls,
            target,
            limit: ConnectLimit::of(config),
            read_only: config.read_only,
            pgbouncer,
        })
    }
}

/// Makes the URL acceptable to `tokio_postgres::Config`: scheme `postgresql`,
/// libpq's `verify-ca`/`verify-full` mapped to `require` (we always verify).
/// Returns whether TLS is wanted.
fn normalise_url(raw: &str) -> Result<(String, bool)> {
    let mut url = url::Url::parse(raw.trim())
        .map_err(|_| Error::config("the PostgreSQL connection string is not a valid URL"))?;
    let mut wants_tls = false;
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        // Ours (see `DatabaseConfigBuilder::pgbouncer`), not the driver's.
        .filter(|(k, _)| !k.eq_ignore_ascii_case("pgbouncer"))
        .map(|(k, v)| {
            if k == "sslmode" {
                let mode = match &*v {
                    "verify-ca" | "verify-full" => "require".to_owned(),
                    other => other.to_owned(),
                };
                wants_tls = mode != "disable";
                (k.into_owned(), mode)
            } else {
                (k.into_owned(), v.into_owned())
            }
        })
        .collect();
    if pairs.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    let rest = &url.as_str()[url.scheme().len()..];
    Ok((format!("postgresql{rest}"), wants_tls))
}

fn describe_target(pg: &tokio_postgres::Config) -> String {
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!("PostgreSQL at {host}:{port}")
}

fn tls_connector() -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Other, "cannot set up TLS").with_source(e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Where one connection goes: a TCP address or a Unix socket path.
#[derive(Clone)]
enum Endpoint {
    Tcp(std::net::SocketAddr, String),
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

/// A connected socket, before the runtime takes it.
enum Socket {
    Tcp(std::net::TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

impl Socket {
    fn handle(&self) -> SocketHandle {
        match self {
            Socket::Tcp(s) => SocketHandle::of(s),
            #[cfg(unix)]
            Socket::Unix(s) => SocketHandle::of(s),
        }
    }
}

/// Every endpoint the configuration names, in order (libpq's host list),
/// host names resolved before `deadline`.
fn endpoints(
    config: &tokio_postgres::Config,
    deadline: Instant,
    target: &str,
    limit: &ConnectLimit,
) -> Result<Vec<Endpoint>> {
    let hosts = config.get_hosts();
    let ports = config.get_ports();
    let mut out = Vec::new();
    let default_host = [Host::Tcp("localhost".to_owned())];
    let hosts = if hosts.is_empty() {
        &default_host[..]
    } else {
        hosts
    };
    for (i, host) in hosts.iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        match host {
            Host::Tcp(name) => {
                for addr in blocking::resolve(name, port, deadline, target, limit)? {
                    out.push(Endpoint::Tcp(addr, name.clone()));
                }
            }
            #[cfg(unix)]
            Host::Unix(dir) => out.push(Endpoint::Unix(dir.join(format!(".s.PGSQL.{port}")))),
        }
    }
    Ok(out)
}

/// Opens a socket to `endpoint` within `timeout`.
fn open(endpoint: &Endpoint, timeout: Duration) -> std::io::Result<Socket> {
    match endpoint {
        Endpoint::Tcp(addr, _) => {
            let s = std::net::TcpStream::connect_timeout(addr, timeout)?;
            s.set_nodelay(true)?;
            s.set_nonblocking(true)?;
            Ok(Socket::Tcp(s))
        }
        #[cfg(unix)]
        Endpoint::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path)?;
            s.set_nonblocking(true)?;
            Ok(Socket::Unix(s))
        }
    }
}

/// The rustls connector for a stream of type `S` to `host`.
fn rustls_for<S>(
    mk: &MakeRustlsConnect,
    host: &str,
    _stream: &S,
) -> std::result::Result<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect, BoxError>
where
    MakeRustlsConnect: MakeTlsConnect<S>,
    <MakeRustlsConnect as MakeTlsConnect<S>>::Error: Into<BoxError>,
{
    MakeTlsConnect::<S>::make_tls_connect(&mut mk.clone(), host).map_err(Into::into)
}

/// Runs the startup handshake on `socket` and spawns the connection task on
/// the runtime; returns the client.
async fn handshake(
    config: &tokio_postgres::Config,
    socket: Socket,
    host: &str,
    tls: Option<&MakeRustlsConnect>,
) -> std::result::Result<Client, BoxError> {
    macro_rules! go {
        ($stream:expr) => {{
            let stream = $stream;
            match tls {
                None => {
                    let (client, conn) = config.connect_raw(stream, NoTls).await?;
                    tokio::spawn(conn);
                    client
                }
                Some(mk) => {
                    let tls = rustls_for(mk, host, &stream)?;
                    let (client, conn) = config.connect_raw(stream, tls).await?;
                    tokio::spawn(conn);
                    client
                }
            }
        }};
    }
    Ok(match socket {
        Socket::Tcp(s) => go!(tokio::net::TcpStream::from_std(s)?),
        #[cfg(unix)]
        Socket::Unix(s) => go!(tokio::net::UnixStream::from_std(s)?),
    })
}

impl Connector for PgConnector {
    fn connect(&self) -> Result<Box<dyn Connection>> {
        let deadline = Instant::now() + self.limit.timeout;
        let rt = blocking::runtime("PostgreSQL")?;
        let endpoints = endpoints(&self.config, deadline, &self.target, &self.limit)?;
        let failed = |timed_out: bool, e: BoxError| {
            Attempt::Next(connect_error(timed_out, &self.target, &self.limit, e))
        };
        let (client, endpoint, host, socket) = blocking::first_to_connect(
            &endpoints,
            &self.target,
            &self.limit,
            deadline,
            |endpoint, deadline| {
                let socket =
                    match open(endpoint, deadline.saturating_duration_since(Instant::now())) {
                        Ok(s) => s,
                        Err(e) => {
                            return failed(e.kind() == std::io::ErrorKind::TimedOut, e.into())
                        }
                    };
                let handle = socket.handle();
                let host = match endpoint {
                    Endpoint::Tcp(_, h) => h.clone(),
                    #[cfg(unix)]
                    Endpoint::Unix(_) => String::new(),
                };
                let left = deadline.saturating_duration_since(Instant::now());
                let shook = rt.block_on(async {
                    tokio::time::timeout(left, async {
                        let client =
                            handshake(&self.config, socket, &host, self.tls.as_ref()).await?;
                        if self.read_only && !self.pgbouncer {
                            // READ_ONLY: every transaction of the session is
                            // read-only, so the server refuses the writes the
                            // library's check misses (SQLSTATE 25006). Behind
                            // pgbouncer this SET would land on whichever server
                            // connection it picked, for every client of it:
                            // there each statement gets a read-only transaction
                            // of its own instead (see `PgConnection::read_only`).
                            client
                                .batch_execute("SET default_transaction_read_only = on")
                                .await?;
                        }
                        Ok::<_, BoxError>(client)
                    })
                    .await
                });
                match shook {
                    Ok(Ok(c)) => Attempt::Done((c, endpoint.clone(), host, handle)),
                    // The server answered: a wrong password is final, not worth another host.
                    Ok(Err(e)) => match e.downcast::<tokio_postgres::Error>() {
                        Ok(pg) if pg.as_db_error().is_some() => Attempt::Stop(classify(*pg)),
                        Ok(pg) => failed(false, pg),
                        Err(e) => failed(false, e),
                    },
                    Err(elapsed) => failed(true, elapsed.into()),
                }
            },
        )?;
        let canceller: Arc<dyn Canceller> = Arc::new(PgCancel {
            token: client.cancel_token(),
            endpoint,
            host,
            tls: self.tls.clone(),
            timeout: self.limit.timeout,
            socket: socket.clone(),
        });
        Ok(Box::new(PgConnection {
            rt: Some(rt),
            client: Some(client),
            statements: HashMap::default(),
            canceller,
            socket,
            tx_failed: None,
            pgbouncer: self.pgbouncer,
            read_only: self.read_only,
            stream: None,
        }))
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn refuses_async_context(&self) -> bool {
        true
    }
}

/// The kind of the first I/O error in `e`'s chain, if any.
fn source_io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur = e.source();
    while let Some(s) = cur {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = s.source();
    }
    None
}

struct PgConnection {
    /// `Some` until dropped; see `Drop`.
    rt: Option<Runtime>,
    client: Option<Client>,
    statements: HashMap<String, (Statement, Columns), crate::sql::TextHash>,
    canceller: Arc<dyn Canceller>,
    socket: SocketHandle,
    /// Inside a transaction begun here: whether a statement in it failed on
    /// the server, which aborts the whole transaction on PostgreSQL.
    tx_failed: Option<bool>,
    /// Behind pgbouncer (transaction pooling): unnamed statements only, and
    /// statement limits with `SET LOCAL` inside transactions.
    pgbouncer: bool,
    /// READ_ONLY. Transactions begin `READ ONLY`. Behind pgbouncer, where no
    /// session setting can be relied on (nor made without reaching other
    /// clients), a statement outside a transaction runs in a read-only
    /// transaction of its own, pipelined with it (no extra round trip); a
    /// statement that would end such a transaction (`COMMIT`, …) and a
    /// script that is not a plain read (it could hold one) are refused.
    read_only: bool,
    /// The open stream of [`Connection::open_stream`], and its columns.
    stream: Option<(std::pin::Pin<Box<tokio_postgres::RowStream>>, Columns)>,
}

/// Puts a session back as a new connection has it: `DISCARD ALL` but for
/// `DEALLOCATE ALL`, which would also drop the prepared statements of this
/// connection's cache and of the driver's type lookups (they are ours and
/// stay valid); statements the caller made with SQL `PREPARE` are dropped.
/// One round trip; the leading `ROLLBACK` ends a transaction left open
/// (DISCARD ALL itself refuses to run inside one).
const RESET_SESSION: &str = "ROLLBACK; CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; \
     UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES; \
     DO $reset$ DECLARE s record; BEGIN \
     FOR s IN SELECT name FROM pg_prepared_statements WHERE from_sql LOOP \
     EXECUTE format('DEALLOCATE %I', s.name); END LOOP; END $reset$";

/// The first keyword of a statement (after whitespace, comments and
/// parentheses), upper-cased, and the one after it.
fn leading_keywords(sql: &str) -> (String, String) {
    let b = sql.as_bytes();
    let mut words = Vec::new();
    let mut i = 0;
    while i < b.len() && words.len() < 2 {
        match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = b[i + 2..]
                    .windows(2)
                    .position(|w| w == b"*/")
                    .map_or(b.len(), |p| i + 2 + p + 2);
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end = b[i..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .map_or(b.len(), |p| i + p);
                words.push(sql[i..end].to_ascii_uppercase());
                i = end;
            }
            c if c.is_ascii_whitespace() || c == b'(' => i += 1,
            _ => break,
        }
    }
    let mut words = words.into_iter();
    (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    )
}

/// Whether a statement ends (or starts) a transaction.
fn controls_transaction(sql: &str) -> bool {
    match leading_keywords(sql) {
        (first, _)
            if matches!(
                &*first,
                "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT"
            ) =>
        {
            true
        }
        (first, second) => first == "PREPARE" && second == "TRANSACTION",
    }
}

/// The error of a statement refused on a read-only database behind pgbouncer.
#[cold]
fn refused_behind_pgbouncer(what: &str) -> Error {
    Error::new(
        ErrorKind::ReadOnly,
        format!(
            "this database is read-only and reached through pgbouncer, where each statement runs in a \
             read-only transaction of its own (a session setting would reach other clients); {what} could \
             leave that transaction, so it was refused before reaching the server; use \
             DatabaseManager::transaction for several statements in one transaction"
        ),
    )
}

/// Stops a running statement with PostgreSQL's cancel request, sent over a
/// connection of its own (TLS when the session uses it), bounded by the
/// connect timeout; cuts the session's socket when the server does not answer.
struct PgCancel {
    token: CancelToken,
    endpoint: Endpoint,
    host: String,
    tls: Option<MakeRustlsConnect>,
    timeout: Duration,
    socket: SocketHandle,
}

impl PgCancel {
    async fn send(&self, socket: Socket) -> std::result::Result<(), BoxError> {
        macro_rules! go {
            ($stream:expr) => {{
                let stream = $stream;
                match &self.tls {
                    None => self.token.cancel_query_raw(stream, NoTls).await?,
                    Some(mk) => {
                        let tls = rustls_for(mk, &self.host, &stream)?;
                        self.token.cancel_query_raw(stream, tls).await?
                    }
                }
            }};
        }
        match socket {
            Socket::Tcp(s) => go!(UntilEof(tokio::net::TcpStream::from_std(s)?)),
            #[cfg(unix)]
            Socket::Unix(s) => go!(UntilEof(tokio::net::UnixStream::from_std(s)?)),
        }
        Ok(())
    }
}

/// A stream whose shutdown first waits until the peer closes it, as libpq
/// does after a cancel request. The driver closes its side as soon as the
/// request is written; a pooler (pgbouncer 1.18) that sees the client gone
/// before it forwarded the request drops it, so the statement would run on.
struct UntilEof<S>(S);

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for UntilEof<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite
    for UntilEof<S>
{
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        // The caller bounds the whole cancel with a timeout.
        let mut scratch = [0u8; 64];
        loop {
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match std::pin::Pin::new(&mut self.0).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => break,
            }
        }
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Canceller for PgCancel {
    fn cancel(&self) -> Result<()> {
        let failed = |e: BoxError| {
            Error::new(ErrorKind::Connect, "the cancel request could not be sent").with_source(e)
        };
        let socket = open(&self.endpoint, self.timeout).map_err(|e| failed(e.into()))?;
        let rt = blocking::runtime("PostgreSQL")?;
        match rt.block_on(async { tokio::time::timeout(self.timeout, self.send(socket)).await }) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(failed(e)),
            Err(e) => Err(failed(e.into())),
        }
    }

    fn abort(&self) -> bool {
        self.socket.cut()
    }
}

impl PgConnection {
    /// Runs one client call to completion on this connection's runtime.
    fn call<'a, T, F>(&'a mut self, f: impl FnOnce(&'a Client) -> F) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, tokio_postgres::Error>> + 'a,
    {
        let (Some(rt), Some(client)) = (self.rt.as_ref(), self.client.as_ref()) else {
            return Err(Error::new(
                ErrorKind::Connect,
                "the connection to PostgreSQL was closed",
            ));
        };
        rt.block_on(f(client)).map_err(classify)
    }

    fn prepared(&mut self, sql: &str) -> Result<(Statement, Columns)> {
        if let Some((s, c)) = self.statements.get(sql) {
            return Ok((s.clone(), Arc::clone(c)));
        }
        let stmt = self.call(|c| c.prepare(sql))?;
        let cols: Columns = stmt
            .columns()
            .iter()
            .map(|c| Arc::<str>::from(c.name()))
            .collect::<Vec<_>>()
            .into();
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements
            .insert(sql.to_owned(), (stmt.clone(), Arc::clone(&cols)));
        Ok((stmt, cols))
    }
}

/// PostgreSQL's refusal of a prepared statement whose result columns
/// changed under it.
fn is_stale_plan(e: &Error) -> bool {
    e.db_code() == Some("0A000") && e.to_string().contains("cached plan must not change")
}

/// One of the driver's own prepared statements (`s0`, `s1`, …) no longer
/// exists in the session (26000): deallocated under the connection. A
/// program's own `EXECUTE` of a name it never prepared is not this.
fn is_lost_statement(e: &Error) -> bool {
    e.db_code() == Some("26000") && driver_statement_clash("26000", &e.to_string())
}

fn as_sql(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl PgConnection {
    /// Notes a server-side failure inside a transaction (see `commit`).
    fn noting<T>(&mut self, sql: &str, result: Result<T>) -> Result<T> {
        if let Some(failed) = &mut self.tx_failed {
            match &result {
                Err(e) => *failed |= e.db_code().is_some(),
                // Rolling back to a savepoint puts a failed transaction right.
                Ok(_) if rolls_back_to_savepoint(sql) => *failed = false,
                Ok(_) => {}
            }
        }
        result
    }

    /// Behind pgbouncer: one unnamed statement (parse, bind, execute in one
    /// round trip), every parameter sent as text of type `unknown` so that
    /// the server infers its type as it does for a named statement. Returns
    /// the rows and the affected-row count.
    fn run_unnamed(&mut self, sql: &str, params: &[Value]) -> Result<(Vec<Row>, u64)> {
        use futures_util::TryStreamExt;
        let typed: Vec<(&Value, Type)> = params.iter().map(|v| (v, Type::UNKNOWN)).collect();
        let wrap = self.wraps_read_only(sql)?;
        let (rows, affected) = self.call(|c| {
            let run = async move {
                let stream = c.query_typed_raw(sql, typed).await?;
                futures_util::pin_mut!(stream);
                let mut rows = Vec::new();
                while let Some(row) = stream.try_next().await? {
                    rows.push(row);
                }
                Ok((rows, stream.rows_affected().unwrap_or(0)))
            };
            read_only_around(c, wrap, run)
        })?;
        let columns: Columns = match rows.first() {
            Some(r) => r
                .columns()
                .iter()
                .map(|c| Arc::<str>::from(c.name()))
                .collect::<Vec<_>>()
                .into(),
            None => Vec::new().into(),
        };
        let rows = rows
            .iter()
            .map(|r| {
                let values = (0..r.len()).map(|i| read(r, i)).collect::<Result<_>>()?;
                Ok(Row::new(Arc::clone(&columns), values))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((rows, affected))
    }

    /// Behind pgbouncer on a read-only database: whether `sql` needs a
    /// read-only transaction of its own (it runs outside one), or an error
    /// when it controls transactions itself.
    fn wraps_read_only(&self, sql: &str) -> Result<bool> {
        if !(self.read_only && self.pgbouncer) {
            return Ok(false);
        }
        if controls_transaction(sql) {
            return Err(refused_behind_pgbouncer("a transaction control statement"));
        }
        Ok(self.tx_failed.is_none())
    }

    /// A script run as is (for the library's own statements).
    fn simple(&mut self, sql: &str) -> Result<()> {
        let result = self.call(|c| c.batch_execute(sql));
        self.noting(sql, result)
    }

    /// Runs `run` with the kept prepared statement of `sql`. When the
    /// server refuses it because the tables it reads changed since it was
    /// prepared ("cached plan must not change result type", as after another
    /// session's `ALTER TABLE`) or it no longer exists (the session's
    /// statements deallocated), the statement is dropped and, outside a
    /// transaction (which that error aborts), prepared again and run once
    /// more.
    fn with_plan<T>(
        &mut self,
        sql: &str,
        mut run: impl FnMut(&mut Self, Statement, Columns) -> Result<T>,
    ) -> Result<T> {
        let (stmt, columns) = self.prepared(sql)?;
        match run(self, stmt, columns) {
            Err(e) if is_stale_plan(&e) || is_lost_statement(&e) => {
                if is_lost_statement(&e) {
                    // The session's statements are gone (`DEALLOCATE ALL`,
                    // `DISCARD ALL`): none of those kept can be used.
                    self.statements.clear();
                } else {
                    self.statements.remove(sql);
                }
                if self.tx_failed.is_some() {
                    return Err(e.with_hint(
                        "the statement changed or went away on the server since this \
                         connection prepared it; the transaction is aborted: run it again",
                    ));
                }
                let (stmt, columns) = self.prepared(sql)?;
                run(self, stmt, columns)
            }
            other => other,
        }
    }

    fn run_query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        if self.pgbouncer {
            return self.run_unnamed(sql, params).map(|(rows, _)| rows);
        }
        let args = as_sql(params);
        let (rows, columns) = self.with_plan(sql, |this, stmt, columns| {
            Ok((this.call(|c| c.query(&stmt, &args))?, columns))
        })?;
        rows.iter()
            .map(|r| {
                let values = (0..r.len()).map(|i| read(r, i)).collect::<Result<_>>()?;
                Ok(Row::new(Arc::clone(&columns), values))
            })
            .collect()
    }

    fn run_execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        if self.pgbouncer {
            return self.run_unnamed(sql, params).map(|(_, n)| n);
        }
        let args = as_sql(params);
        self.with_plan(sql, |this, stmt, _| this.call(|c| c.execute(&stmt, &args)))
    }
}

/// `ROLLBACK [WORK | TRANSACTION] TO …`: after it succeeds, the
/// transaction is no longer aborted.
fn rolls_back_to_savepoint(sql: &str) -> bool {
    let mut words = sql
        .split_ascii_whitespace()
        .filter(|w| !w.eq_ignore_ascii_case("WORK") && !w.eq_ignore_ascii_case("TRANSACTION"));
    matches!(
        (words.next(), words.next()),
        (Some(a), Some(b)) if a.eq_ignore_ascii_case("ROLLBACK") && b.eq_ignore_ascii_case("TO")
    )
}

/// Where the rows of a `COPY` come from: a gathered chunk, or the caller's
/// input one at a time.
enum CopySource<'a> {
    Gathered(std::slice::Iter<'a, Vec<Value>>),
    AsTheyCome(&'a mut dyn BulkRows),
}

/// The temporary table a bulk upsert, update or delete copies its rows into.
const BULK_TEMP: &str = "\"dbmanager_bulk\"";

impl PgConnection {
    /// Binary `COPY … FROM STDIN` of `rows` into `table` (quoted) with the
    /// types of `types`; returns the rows copied. A value that does not fit
    /// its column names its row (its index in the chunk: `first` plus its
    /// index in `rows`) and column.
    fn copy_rows(
        &mut self,
        table: &str,
        cols: &str,
        types: &[Type],
        rows: &[Vec<Value>],
        first: usize,
    ) -> Result<u64> {
        self.copy_from(table, cols, types, first, CopySource::Gathered(rows.iter()))
    }

    /// Binary `COPY … FROM STDIN` of the rows of `source`. An error taking
    /// a row from the caller's input stops the copy (the server gets
    /// `CopyFail`) and is returned.
    fn copy_from(
        &mut self,
        table: &str,
        cols: &str,
        types: &[Type],
        first: usize,
        mut source: CopySource<'_>,
    ) -> Result<u64> {
        use tokio_postgres::binary_copy::BinaryCopyInWriter;
        let sql = format!("COPY {table} ({cols}) FROM STDIN BINARY");
        let failed_at = std::cell::Cell::new(None);
        let at = &failed_at;
        let mut input_error = None;
        let input = &mut input_error;
        let result = self.call(|c| async move {
            let sink = c.copy_in(sql.as_str()).await?;
            let writer = BinaryCopyInWriter::new(sink, types);
            futures_util::pin_mut!(writer);
            let mut buffer = Vec::with_capacity(types.len());
            let mut i = 0;
            loop {
                let row: &[Value] = match &mut source {
                    CopySource::Gathered(rows) => match rows.next() {
                        Some(row) => row,
                        None => break,
                    },
                    CopySource::AsTheyCome(rows) => match rows.next_row(&mut buffer) {
                        Ok(true) => &buffer,
                        Ok(false) => break,
                        // Dropping the writer unfinished sends CopyFail.
                        Err(e) => {
                            *input = Some(e);
                            return Ok(0);
                        }
                    },
                };
                if let Err(e) = writer.as_mut().write(&as_sql(row)).await {
                    at.set(Some(i));
                    return Err(e);
                }
                i += 1;
            }
            writer.finish().await
        });
        let result = result.map_err(|e| match failed_at.get() {
            Some(i) if e.db_code().is_none() => e.with_hint(&format!(
                "row {} of the chunk has a value that does not fit its column's type",
                first + i
            )),
            _ => e,
        });
        let result = match input_error {
            Some(e) => Err(e),
            None => result,
        };
        self.noting("", result)
    }

    /// One run of [`bulk_write`](Connection::bulk_write): rows whose keys
    /// are distinct; `first` is the index of its first row in the chunk.
    fn bulk_write_run(
        &mut self,
        plan: &BulkPlan,
        rows: &[Vec<Value>],
        first: usize,
    ) -> Result<u64> {
        if self.pgbouncer || rows.is_empty() {
            return plan.run_statements(rows, &mut |sql, params| self.execute(sql, params));
        }
        let cols = plan.column_list();
        let types = self.column_types(&plan.table, &cols)?;
        if plan.kind == BulkKind::Insert {
            return self.copy_rows(&plan.table, &cols, &types, rows, first);
        }
        self.simple(&format!(
            "DROP TABLE IF EXISTS pg_temp.{BULK_TEMP}; \
             CREATE TEMP TABLE {BULK_TEMP} ON COMMIT DROP AS SELECT {cols} FROM {} WITH NO DATA",
            plan.table
        ))?;
        self.copy_rows(BULK_TEMP, &cols, &types, rows, first)?;
        let table = &plan.table;
        let on = plan.key_match("d", "s");
        let sql = match plan.kind {
            BulkKind::Upsert => format!(
                "INSERT INTO {table} ({cols}) SELECT {cols} FROM {BULK_TEMP}{}",
                plan.on_conflict()
            ),
            BulkKind::Update => format!(
                "UPDATE {table} AS d SET {} FROM {BULK_TEMP} AS s WHERE {on}",
                plan.non_keys()
                    .map(|(_, c)| format!("{c} = s.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            BulkKind::Delete | BulkKind::Insert => {
                format!("DELETE FROM {table} AS d USING {BULK_TEMP} AS s WHERE {on}")
            }
        };
        let result = self.call(|c| c.execute(sql.as_str(), &[]));
        self.noting("", result)
    }

    /// The server's types of `cols` in `table`, from the description of a
    /// statement that reads no row (cached like any prepared statement).
    fn column_types(&mut self, table: &str, cols: &str) -> Result<Vec<Type>> {
        let sql = format!("SELECT {cols} FROM {table} LIMIT 0");
        let (stmt, _) = self.prepared(&sql)?;
        Ok(stmt.columns().iter().map(|c| c.type_().clone()).collect())
    }
}

impl Connection for PgConnection {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let result = self.run_query(sql, params);
        self.noting(sql, result)
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let result = self.run_execute(sql, params);
        self.noting(sql, result)
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        if !(self.read_only && self.pgbouncer) {
            return self.simple(sql);
        }
        // A script could end the read-only transaction it runs in and go on
        // outside it: only plain reads are taken.
        if crate::sql::classify_statement(sql) != crate::sql::StatementKind::Read {
            return Err(refused_behind_pgbouncer(
                "a script that is not a plain read (it may hold a COMMIT)",
            ));
        }
        let wrap = self.tx_failed.is_none();
        let result = self.call(|c| read_only_around(c, wrap, c.batch_execute(sql)));
        self.noting(sql, result)
    }

    fn copy_in(&mut self, sql: &str, data: &[u8]) -> Result<u64> {
        use futures_util::SinkExt;
        let data = bytes::Bytes::copy_from_slice(data);
        let result = self.call(|c| async move {
            let sink = c.copy_in::<_, bytes::Bytes>(sql).await?;
            futures_util::pin_mut!(sink);
            sink.send(data).await?;
            sink.finish().await
        });
        self.noting(sql, result)
    }

    fn begin(&mut self) -> Result<()> {
        self.simple(if self.read_only {
            "BEGIN READ ONLY"
        } else {
            "BEGIN"
        })?;
        self.tx_failed = Some(false);
        Ok(())
    }

    /// PostgreSQL answers COMMIT of an aborted transaction with a silent
    /// ROLLBACK; that is reported as an error here, never as success.
    fn commit(&mut self) -> Result<()> {
        if self.tx_failed.take() == Some(true) {
            self.simple("ROLLBACK")?;
            return Err(Error::new(
                ErrorKind::Database,
                "the transaction was rolled back, not committed: a statement in it failed, \
                 which aborts the whole transaction on PostgreSQL; handle that statement's \
                 error by ending the transaction, then run it again",
            )
            .with_code("25P02"));
        }
        self.simple("COMMIT")
    }

    fn rollback(&mut self) -> Result<()> {
        self.tx_failed = None;
        self.simple("ROLLBACK")
    }

    fn ping(&mut self) -> Result<()> {
        self.call(|c| c.simple_query("")).map(drop)
    }

    /// Rows as the server sends them (`query_raw`): the driver's channel
    /// holds one batch of messages, so memory stays flat however many rows
    /// come. Behind pgbouncer the whole result is read at once.
    fn open_stream(&mut self, sql: &str, params: &[Value]) -> Result<Option<Vec<Row>>> {
        if self.pgbouncer {
            return self.query(sql, params).map(Some);
        }
        let result = self.with_plan(sql, |this, stmt, columns| {
            let stream = this.call(|c| c.query_raw(&stmt, params.iter()))?;
            Ok((stream, columns))
        });
        let (stream, columns) = self.noting("", result)?;
        self.stream = Some((Box::pin(stream), columns));
        Ok(None)
    }

    fn fetch(&mut self, max: usize, out: &mut Vec<Row>) -> Result<bool> {
        use futures_util::StreamExt;
        let (Some(rt), Some((stream, columns))) = (self.rt.as_ref(), self.stream.as_mut()) else {
            return Ok(false);
        };
        let got = rt.block_on(async {
            let mut raw = Vec::with_capacity(max);
            while raw.len() < max {
                match stream.next().await {
                    Some(Ok(row)) => raw.push(row),
                    Some(Err(e)) => return Err(e),
                    None => return Ok((raw, false)),
                }
            }
            Ok((raw, true))
        });
        let (raw, more) = match got {
            Ok(v) => v,
            Err(e) => {
                self.stream = None;
                let e = classify(e);
                return self.noting("", Err(e));
            }
        };
        for r in &raw {
            let values = (0..r.len()).map(|i| read(r, i)).collect::<Result<_>>()?;
            out.push(Row::new(Arc::clone(columns), values));
        }
        if !more {
            self.stream = None;
        }
        Ok(more)
    }

    /// The rest of the result is still on its way: the connection is
    /// discarded rather than read to the end (which could take as long as
    /// the whole query).
    fn close_stream(&mut self) -> bool {
        self.stream.take().is_none()
    }

    /// Binary `COPY` for inserts; for upserts, updates and deletes a `COPY`
    /// into a temporary table dropped at commit, then one `INSERT … ON
    /// CONFLICT`, `UPDATE … FROM` or `DELETE … USING` from it. Behind
    /// pgbouncer, plain statements.
    ///
    /// A key repeated within the rows cuts them into runs written one
    /// after the other, so that the later row wins
    /// ([`BulkPlan::runs_of_distinct_keys`]).
    fn bulk_write(&mut self, plan: &BulkPlan, rows: &[Vec<Value>]) -> Result<u64> {
        plan.write_in_runs(rows, &mut |run, first| {
            self.bulk_write_run(plan, run, first)
        })
    }

    /// Inserts by `COPY` take the rows as they come.
    fn bulk_writes_rows_as_they_come(&self, plan: &BulkPlan) -> bool {
        !self.pgbouncer && plan.kind == BulkKind::Insert
    }

    fn bulk_write_rows(&mut self, plan: &BulkPlan, rows: &mut dyn BulkRows) -> Result<u64> {
        if !self.bulk_writes_rows_as_they_come(plan) {
            let all = super::bulk::gather(rows)?;
            return self.bulk_write(plan, &all);
        }
        let cols = plan.column_list();
        let types = self.column_types(&plan.table, &cols)?;
        self.copy_from(&plan.table, &cols, &types, 0, CopySource::AsTheyCome(rows))
    }

    fn is_closed(&self) -> bool {
        self.client.as_ref().map_or(true, Client::is_closed)
    }

    /// Only the server's end of the stream: tokio-postgres reads what is
    /// left between requests itself (the `ReadyForQuery` that follows a
    /// cancelled statement's error may still be on its way when the
    /// statement returns), so waiting data is no sign of a lost session.
    fn peer_closed(&self) -> bool {
        self.socket.peer_hung_up()
    }

    fn canceller(&self) -> Arc<dyn Canceller> {
        Arc::clone(&self.canceller)
    }

    fn set_server_timeout(&mut self, limit: Option<Duration>) -> Result<()> {
        let ms = limit.map_or(0, |d| d.as_millis().clamp(1, i32::MAX as u128));
        if self.pgbouncer {
            // A session SET would follow the server connection to other
            // clients: only SET LOCAL, inside a transaction; outside one the
            // watchdog alone limits the statement.
            if self.tx_failed.is_none() {
                return Ok(());
            }
            return self.simple(&format!("SET LOCAL statement_timeout = {ms}"));
        }
        self.simple(&format!("SET statement_timeout = {ms}"))
    }

    fn server_timeout_is_local(&self) -> bool {
        self.pgbouncer
    }

    /// Directly: one round trip of [`RESET_SESSION`], then the READ_ONLY
    /// setting of connect again. Behind pgbouncer the server session is
    /// pgbouncer's to reset (its `server_reset_query`), and `DISCARD` there
    /// would reach whichever client holds that server connection next: only
    /// a transaction left open is ended, so it does not follow this
    /// connection to its next borrower (nor pin a server connection).
    fn reset_session(&mut self) -> Result<bool> {
        self.tx_failed = None;
        self.stream = None;
        if self.pgbouncer {
            self.simple("ROLLBACK")?;
        } else if self.read_only {
            self.simple(&format!(
                "{RESET_SESSION}; SET default_transaction_read_only = on"
            ))?;
        } else {
            self.simple(RESET_SESSION)?;
        }
        Ok(true)
    }
}

impl Drop for PgConnection {
    fn drop(&mut self) {
        blocking::drop_off_runtime((self.client.take(), self.rt.take()));
    }
}

/// Runs `run` between `BEGIN READ ONLY` and `COMMIT` when `wrap`, the three
/// pipelined (one round trip); a failed statement is rolled back by that
/// `COMMIT`, and its error returned.
async fn read_only_around<T>(
    client: &Client,
    wrap: bool,
    run: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> std::result::Result<T, tokio_postgres::Error> {
    if !wrap {
        return run.await;
    }
    let (begin, result, commit) = futures_util::future::join3(
        client.batch_execute("BEGIN READ ONLY"),
        run,
        client.batch_execute("COMMIT"),
    )
    .await;
    begin?;
    let value = result?;
    commit?;
    Ok(value)
}

/// Reads column `i` by its PostgreSQL type.
fn read(row: &tokio_postgres::Row, i: usize) -> Result<Value> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
    let ty = row.columns()[i].type_();
    let conv = |e: tokio_postgres::Error| {
        Error::conversion(format!(
            "column `{}` of type {ty} cannot be read",
            row.columns()[i].name()
        ))
        .with_source(e)
    };
    macro_rules! get {
        ($t:ty, $wrap:expr) => {
            row.try_get::<_, Option<$t>>(i)
                .map_err(conv)?
                .map_or(Value::Null, $wrap)
        };
    }
    Ok(match *ty {
        Type::BOOL => get!(bool, Value::Bool),
        Type::CHAR => get!(i8, |v| Value::I64(v.into())),
        Type::INT2 => get!(i16, |v| Value::I64(v.into())),
        Type::INT4 => get!(i32, |v| Value::I64(v.into())),
        Type::INT8 => get!(i64, Value::I64),
        Type::OID => get!(u32, |v| Value::I64(v.into())),
        Type::FLOAT4 => get!(f32, |v| Value::F64(v.into())),
        Type::FLOAT8 => get!(f64, Value::F64),
        Type::NUMERIC => get!(rust_decimal::Decimal, Value::Decimal),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            get!(String, Value::Text)
        }
        Type::BYTEA => get!(Vec<u8>, Value::Bytes),
        Type::DATE => get!(NaiveDate, Value::Date),
        Type::TIME => get!(NaiveTime, Value::Time),
        Type::TIMESTAMP => get!(NaiveDateTime, Value::Timestamp),
        Type::TIMESTAMPTZ => get!(DateTime<Utc>, Value::TimestampTz),
        Type::UUID => get!(uuid::Uuid, Value::Uuid),
        Type::JSON | Type::JSONB => get!(serde_json::Value, Value::Json),
        // `SELECT pg_sleep(1)`, `SELECT pg_notify(…)`: nothing to read.
        Type::VOID => Value::Null,
        _ => {
            // Text-like types we do not model (citext, enums, …) arrive as text.
            match row.try_get::<_, Option<String>>(i) {
                Ok(v) => v.map_or(Value::Null, Value::Text),
                Err(_) => {
                    return Err(Error::conversion(format!(
                        "column `{}` has type {ty}, which dbmanager does not read; cast it in SQL (e.g. `{}::text`)",
                        row.columns()[i].name(),
                        row.columns()[i].name()
                    )))
                }
            }
        }
    })
}

fn narrow<T: TryFrom<i64>>(v: i64, ty: &Type) -> std::result::Result<T, BoxError> {
    T::try_from(v).map_err(|_| format!("{v} does not fit in a {ty} parameter").into())
}

/// A text parameter parsed for a `ty` slot; the error names the type, never the value.
fn text_as<T>(parsed: Option<T>, ty: &Type) -> std::result::Result<T, BoxError> {
    parsed.ok_or_else(|| format!("a text parameter is not a valid {ty}").into())
}

fn is_text(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    )
}

/// Binds a [`Value`] as whatever type the server inferred for the
/// placeholder, widening and range-checking integers, and accepting text
/// for types that have a text form. Any other pairing goes through the
/// driver's type check (`to_sql_checked`), so a value is never written in
/// a binary format the server would misread.
impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        use rust_decimal::Decimal;
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Bool(b) => match *ty {
                Type::BOOL => b.to_sql(ty, out),
                _ if is_text(ty) => b.to_string().to_sql(ty, out),
                _ => Value::I64(i64::from(*b)).to_sql(ty, out),
            },
            Value::I64(v) => match *ty {
                Type::INT2 => narrow::<i16>(*v, ty)?.to_sql(ty, out),
                Type::INT4 => narrow::<i32>(*v, ty)?.to_sql(ty, out),
                Type::INT8 => v.to_sql(ty, out),
                Type::OID => narrow::<u32>(*v, ty)?.to_sql(ty, out),
                Type::CHAR => narrow::<i8>(*v, ty)?.to_sql(ty, out),
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                Type::NUMERIC => Decimal::from(*v).to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                _ if is_text(ty) => v.to_string().to_sql(ty, out),
                _ => v.to_sql_checked(ty, out),
            },
            Value::F64(v) => match *ty {
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                Type::NUMERIC => Decimal::try_from(*v)?.to_sql(ty, out),
                Type::INT2 | Type::INT4 | Type::INT8 if v.fract() == 0.0 && v.abs() < 9.0e18 => {
                    Value::I64(*v as i64).to_sql(ty, out)
                }
                _ if is_text(ty) => v.to_string().to_sql(ty, out),
                _ => v.to_sql_checked(ty, out),
            },
            Value::Decimal(d) => match *ty {
                Type::FLOAT8 => d.to_string().parse::<f64>()?.to_sql(ty, out),
                Type::FLOAT4 => d.to_string().parse::<f32>()?.to_sql(ty, out),
                Type::INT2 | Type::INT4 | Type::INT8 if d.fract().is_zero() => {
                    Value::I64(i64::try_from(*d)?).to_sql(ty, out)
                }
                _ if is_text(ty) => d.to_string().to_sql(ty, out),
                _ => d.to_sql_checked(ty, out),
            },
            Value::Text(s) => match *ty {
                Type::JSON | Type::JSONB => {
                    serde_json::from_str::<serde_json::Value>(s)?.to_sql(ty, out)
                }
                Type::UUID => uuid::Uuid::parse_str(s)?.to_sql(ty, out),
                Type::NUMERIC => s.trim().parse::<Decimal>()?.to_sql(ty, out),
                // Text for a binary-format type is parsed first: sent as is,
                // its bytes would be misread (or rejected) by the server.
                Type::INT2 | Type::INT4 | Type::INT8 | Type::OID | Type::CHAR => {
                    Value::I64(s.trim().parse()?).to_sql(ty, out)
                }
                Type::FLOAT4 | Type::FLOAT8 => Value::F64(s.trim().parse()?).to_sql(ty, out),
                Type::BOOL => {
                    Value::Bool(crate::value::FromValue::from_value(self)?).to_sql(ty, out)
                }
                Type::DATE => text_as(value::parse_date(s), ty)?.to_sql(ty, out),
                Type::TIME => text_as(value::parse_time(s), ty)?.to_sql(ty, out),
                Type::TIMESTAMP => text_as(value::parse_timestamp(s), ty)?.to_sql(ty, out),
                Type::TIMESTAMPTZ => text_as(value::parse_timestamptz(s), ty)?.to_sql(ty, out),
                _ => s.as_str().to_sql(ty, out),
            },
            Value::Bytes(b) => match *ty {
                // Text form of bytea: `\x` and hex digits.
                Type::UNKNOWN => {
                    let mut hex = String::with_capacity(2 + 2 * b.len());
                    hex.push_str("\\x");
                    for byte in b {
                        hex.push_str(&format!("{byte:02x}"));
                    }
                    hex.as_str().to_sql(&Type::TEXT, out)
                }
                _ if is_text(ty) => b.as_slice().to_sql(ty, out),
                _ => b.as_slice().to_sql_checked(ty, out),
            },
            Value::Date(d) => match *ty {
                _ if is_text(ty) => d.to_string().to_sql(ty, out),
                Type::TIMESTAMP => d.and_time(chrono::NaiveTime::MIN).to_sql(ty, out),
                Type::TIMESTAMPTZ => d.and_time(chrono::NaiveTime::MIN).and_utc().to_sql(ty, out),
                _ => d.to_sql_checked(ty, out),
            },
            Value::Time(t) => match *ty {
                _ if is_text(ty) => t.to_string().to_sql(ty, out),
                _ => t.to_sql_checked(ty, out),
            },
            Value::Timestamp(t) => match *ty {
                Type::TIMESTAMPTZ => t.and_utc().to_sql(ty, out),
                _ if is_text(ty) => t.to_string().to_sql(ty, out),
                _ => t.to_sql_checked(ty, out),
            },
            Value::TimestampTz(t) => match *ty {
                Type::TIMESTAMP => t.naive_utc().to_sql(ty, out),
                _ if is_text(ty) => t.to_rfc3339().to_sql(ty, out),
                _ => t.to_sql_checked(ty, out),
            },
            Value::Uuid(u) => match *ty {
                _ if is_text(ty) => u.to_string().to_sql(ty, out),
                _ => u.to_sql_checked(ty, out),
            },
            Value::Json(j) => match *ty {
                _ if is_text(ty) => j.to_string().to_sql(ty, out),
                _ => j.to_sql_checked(ty, out),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    /// Parameters of type `unknown` (sent so, behind pgbouncer, for the
    /// server to infer the type) travel in text form, which the server
    /// parses for whatever type it inferred.
    fn encode_format(&self, ty: &Type) -> tokio_postgres::types::Format {
        if *ty == Type::UNKNOWN {
            tokio_postgres::types::Format::Text
        } else {
            tokio_postgres::types::Format::Binary
        }
    }

    tokio_postgres::types::to_sql_checked!();
}

/// The kind of a SQLSTATE: transient ones (class 08 connection exceptions,
/// 57P01–57P03 shutting down or starting, 53300 too many connections, 40001
/// serialization failure, 40P01 deadlock, 55P03 lock not available) are the
/// kinds [`Error::is_retryable`] accepts.
fn kind_of_sqlstate(code: &str) -> ErrorKind {
    match code {
        "23505" => ErrorKind::UniqueViolation,
        c if c.starts_with("23") => ErrorKind::Constraint,
        "28000" | "28P01" => ErrorKind::Auth,
        "42501" => ErrorKind::Permission,
        c if c.starts_with("42") => ErrorKind::Syntax,
        "40001" | "40P01" | "55P03" => ErrorKind::Conflict,
        "57014" => ErrorKind::QueryTimeout,
        "25006" => ErrorKind::ReadOnly,
        "53300" | "57P01" | "57P02" | "57P03" => ErrorKind::Connect,
        c if c.starts_with("08") => ErrorKind::Connect,
        c if c.starts_with("22") => ErrorKind::Conversion,
        _ => ErrorKind::Database,
    }
}

/// What to do when the database named in the URL does not exist (3D000).
const MISSING_DATABASE_HINT: &str = "the server has no database of that name: create it \
    (`CREATE DATABASE name;` as a user allowed to, or `createdb name`) or fix the \
    database name at the end of the connection string";

/// Maps a `postgres` error to ours by SQLSTATE class; the server's message
/// becomes ours (it never contains a password).
/// What a named prepared statement of the driver (`s0`, `s1`, …) found
/// taken or gone means: the server session is shared with other clients,
/// as a pooler in transaction pooling mode shares it.
const POOLER_HINT: &str = "the server session holds another client's prepared statements: \
     is this database reached through pgbouncer (or another pooler) in transaction pooling \
     mode? Then set {PREFIX}{NAME}_PGBOUNCER=true (DatabaseConfigBuilder::pgbouncer, or \
     pgbouncer=true in the URL)";

/// `prepared statement "sN" already exists` (42P05) or `does not exist`
/// (26000) for a name the driver gave (`s` and digits).
fn driver_statement_clash(code: &str, message: &str) -> bool {
    if code != "42P05" && code != "26000" {
        return false;
    }
    message
        .split('"')
        .nth(1)
        .and_then(|name| name.strip_prefix('s'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cold]
fn classify(e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let kind = kind_of_sqlstate(code);
        let mut message = db.message().to_owned();
        if let Some(detail) = db.detail() {
            message.push_str(". ");
            message.push_str(detail);
        }
        if let Some(tokio_postgres::error::ErrorPosition::Original(p)) = db.position() {
            message.push_str(&format!(" (at character {p})"));
        }
        let e = Error::new(kind, message).with_code(code);
        return if code == "3D000" {
            e.with_hint(MISSING_DATABASE_HINT)
        } else if driver_statement_clash(code, db.message()) {
            e.with_hint(POOLER_HINT)
        } else {
            e
        };
    }
    if e.is_closed() || source_io_kind(&e).is_some() {
        return Error::new(ErrorKind::Connect, "the connection to PostgreSQL was lost")
            .with_source(e);
    }
    let text = e.to_string();
    if text.contains("error serializing parameter")
        || text.contains("expected") && text.contains("parameters")
    {
        return Error::parameter("a parameter could not be sent to PostgreSQL").with_source(e);
    }
    Error::new(ErrorKind::Database, "PostgreSQL client error").with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clash_of_the_drivers_statement_names_points_at_a_pooler() {
        assert!(driver_statement_clash(
            "42P05",
            r#"prepared statement "s0" already exists"#
        ));
        assert!(driver_statement_clash(
            "26000",
            r#"prepared statement "s12" does not exist"#
        ));
        // A user's own PREPARE is not the driver's.
        assert!(!driver_statement_clash(
            "42P05",
            r#"prepared statement "stmt" already exists"#
        ));
        assert!(!driver_statement_clash(
            "42P05",
            r#"prepared statement "s" already exists"#
        ));
        assert!(!driver_statement_clash(
            "42P01",
            r#"relation "s0" does not exist"#
        ));
    }

    #[test]
    fn a_rollback_to_a_savepoint_is_recognised() {
        for yes in [
            "ROLLBACK TO SAVEPOINT s",
            "rollback to s",
            "ROLLBACK WORK TO SAVEPOINT s",
            "  ROLLBACK\n TRANSACTION TO s",
        ] {
            assert!(rolls_back_to_savepoint(yes), "{yes}");
        }
        for no in [
            "ROLLBACK",
            "ROLLBACK WORK",
            "SAVEPOINT s",
            "SELECT 'ROLLBACK TO'",
        ] {
            assert!(!rolls_back_to_savepoint(no), "{no}");
        }
    }

    #[test]
    fn sqlstates_are_transient_or_permanent() {
        let retryable = |c| Error::new(kind_of_sqlstate(c), "").is_retryable();
        for c in [
            "40001", "40P01", "57P01", "57P02", "57P03", "08006", "08001", "53300",
        ] {
            assert!(retryable(c), "{c}");
        }
        for c in [
            "42601", "42P01", "23505", "23503", "42501", "28P01", "57014", "22P02",
        ] {
            assert!(!retryable(c), "{c}");
        }
    }

    #[test]
    fn urls_are_normalised_for_the_driver() -> Result<()> {
        let (u, tls) = normalise_url("postgres://u:p@h:5/d")?;
        assert_eq!((u.as_str(), tls), ("postgresql://u:p@h:5/d", false));
        let (u, tls) = normalise_url("postgresql+psycopg2://u@h/d?sslmode=verify-full")?;
        assert_eq!(
            (u.as_str(), tls),
            ("postgresql://u@h/d?sslmode=require", true)
        );
        let (_, tls) = normalise_url("postgresql://h/d?sslmode=disable")?;
        assert!(!tls);
        Ok(())
    }
}
