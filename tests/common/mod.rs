//! Helpers shared by the integration tests.
//!
//! The backends and the way to run a body on several of them are in
//! [`backend`]; fault injection for the resilience tests in [`fault`].
//!
//! The server URLs come from the `DBMANAGER_TEST_*` variables that
//! `scripts/test` exports after starting throwaway servers. Without them the
//! tests panic with a message saying so: a test that needs a server is
//! never silently skipped.

#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dbmanager::{DatabaseConfig, DatabaseConfigBuilder, DatabaseManager, ErrorKind, Result};

pub mod backend;
pub mod fault;
pub mod migration;

#[allow(unused_imports)] // each test file uses a different subset
pub use backend::{Backend, Db, Place};

/// Reads a variable the test script exports, or panics saying how to get it.
pub fn required_env(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{var} is not set: run the integration tests with `scripts/test` \
             (it starts the throwaway servers the tests use and sets the \
             DBMANAGER_TEST_* variables), e.g. `scripts/test --test queries`"
        ),
    }
}

static BESIDE: RwLock<()> = RwLock::new(());

/// Taken by a test that disturbs the others of its file (it stops a shared
/// server, or loads the whole machine): no test of the file that takes
/// [`alone`] or [`shared`] runs beside it.
pub fn alone() -> RwLockWriteGuard<'static, ()> {
    BESIDE.write().unwrap_or_else(|e| e.into_inner())
}

/// Taken by the tests that may run beside each other, but not beside one
/// that holds [`alone`].
pub fn shared() -> RwLockReadGuard<'static, ()> {
    BESIDE.read().unwrap_or_else(|e| e.into_inner())
}

/// The password inside a URL (percent-decoded), if it has one.
pub fn password_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let pw = parsed.password()?;
    Some(
        percent_decode(pw)
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| pw.to_owned()),
    )
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `url` with its password replaced by `password`.
pub fn with_password(url: &str, password: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("the test URL parses");
    parsed
        .set_password(Some(password))
        .expect("the test URL can carry a password");
    parsed.to_string()
}

/// A name no other test (in this or another test process) uses: tests run
/// in parallel and share one database per server. Lower-case ASCII letters,
/// digits and `_`, valid unquoted on every backend.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{n}_{:x}",
        std::process::id(),
        nanos % 0x10_0000
    )
}

/// A manager with its own pool for `url`, configured in code.
pub fn manager(name: &str, url: &str) -> Result<DatabaseManager> {
    manager_with(name, url, |b| b)
}

/// Like [`manager`], with extra builder settings.
pub fn manager_with(
    name: &str,
    url: &str,
    settings: impl FnOnce(DatabaseConfigBuilder) -> DatabaseConfigBuilder,
) -> Result<DatabaseManager> {
    let builder = DatabaseConfig::builder(name).url(url);
    DatabaseManager::from_config(settings(builder).build()?)
}

/// A directory removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// An `sqlite:` URL for a file named `file` in this directory.
    pub fn sqlite_url(&self, file: &str) -> String {
        format!("sqlite:{}", self.0.join(file).display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `call`, a statement that cannot finish within its limit, and
/// asserts that it fails with `QueryTimeout` within `within` (the limit
/// plus whatever grace the case allows): the caller is not left hanging.
pub fn times_out_within<T: std::fmt::Debug>(
    within: Duration,
    what: &str,
    call: impl FnOnce() -> Result<T>,
) -> dbmanager::Error {
    let started = Instant::now();
    let err = call().expect_err(what);
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::QueryTimeout, "{what}: {err}");
    assert!(took < within, "{what}: took {took:?}");
    err
}

/// A loopback port with nothing listening on it (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    port
}

/// Every layer of an error: `Display`, `{:?}` and each `source()` in turn.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("{e}\n{e:?}\n");
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(&format!("{s}\n{s:?}\n"));
        cur = s.source();
    }
    out
}

/// Everything logged through `tracing` by this test process so far, at
/// every level, spans included. The subscriber is process-wide (not a
/// thread-local default) so that it also sees what the pool and the
/// watchdog log from their own threads; the first call installs it.
pub fn logged() -> String {
    use std::sync::{Arc, Mutex, OnceLock};

    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static LOGS: OnceLock<Sink> = OnceLock::new();
    let sink = LOGS.get_or_init(|| {
        let sink = Sink(Arc::new(Mutex::new(Vec::new())));
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test process");
        sink
    });
    let text = String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned();
    text
}
