//! What the backends built on an async client (PostgreSQL, SQL Server)
//! share: a private current-thread runtime per connection, dropping it
//! safely, cutting a connection's socket from the watchdog, host names
//! resolved within the connect timeout, and the connect loop over a host's
//! addresses.

#[cfg(any(unix, feature = "postgres", feature = "mssql"))]
use std::sync::Arc;
#[cfg(any(feature = "postgres", feature = "mssql"))]
use std::time::Instant;

#[cfg(any(feature = "postgres", feature = "mssql"))]
use super::ConnectLimit;
#[cfg(any(feature = "postgres", feature = "mssql"))]
use crate::error::{Error, ErrorKind, Result};

/// A current-thread runtime for one connection of `backend`.
#[cfg(any(feature = "postgres", feature = "mssql"))]
pub(crate) fn runtime(backend: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Error::new(
                ErrorKind::Other,
                format!("cannot start the {backend} client's runtime"),
            )
            .with_source(e)
        })
}

#[cfg(any(feature = "postgres", feature = "mssql"))]
/// Drops `value` (a runtime, a client holding one) where that is allowed:
/// dropping a runtime panics on a thread that drives another async runtime,
/// so there it is dropped on a plain thread instead.
pub(crate) fn drop_off_runtime<T: Send + 'static>(value: T) {
    if tokio::runtime::Handle::try_current().is_ok() {
        let _ = std::thread::Builder::new()
            .name("dbmanager-close".into())
            .spawn(move || drop(value));
    } else {
        drop(value);
    }
}

/// A connection's socket, as the watchdog's last resort sees it: a
/// duplicate of its descriptor, owned here, so a cut always reaches this
/// connection's socket, never another that reused a closed descriptor's
/// number.
#[derive(Clone, Debug)]
pub(crate) struct SocketHandle {
    #[cfg(unix)]
    fd: Option<Arc<std::os::fd::OwnedFd>>,
}

impl SocketHandle {
    /// The handle of `socket`, taken while the caller owns it.
    #[cfg(unix)]
    pub(crate) fn of(socket: &impl std::os::fd::AsRawFd) -> SocketHandle {
        // SAFETY: `socket` is open for the duration of this call, and the
        // borrow does not outlive it: the duplicate is a descriptor of our own.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket.as_raw_fd()) };
        let fd = borrowed.try_clone_to_owned().map(Arc::new);
        if let Err(e) = &fd {
            tracing::debug!(error = %e, "no descriptor for the watchdog's cut");
        }
        SocketHandle { fd: fd.ok() }
    }

    /// No handle (platforms without `shutdown(2)`).
    #[cfg(not(unix))]
    pub(crate) fn of<T>(_socket: &T) -> SocketHandle {
        SocketHandle {}
    }

    /// True when the peer closed the socket, or sent something nobody asked
    /// for, while the connection sat idle (a terminated session's farewell,
    /// a reset): a statement written to it now would fail after it was
    /// sent. One `poll(2)` that does not wait; false where it cannot tell.
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_gone(true)
    }

    /// As [`peer_closed`](Self::peer_closed), for a driver that reads
    /// what its server sends between requests by itself (tokio-postgres:
    /// the `ReadyForQuery` after a cancelled statement's error, notices,
    /// parameter changes): data waiting to be read is then no sign of
    /// anything, only the peer's end of the stream is. Where the end of the
    /// stream cannot be told apart (`POLLRDHUP` is Linux's), any data still
    /// counts.
    pub(crate) fn peer_hung_up(&self) -> bool {
        self.peer_gone(!cfg!(target_os = "linux"))
    }

    fn peer_gone(&self, data_counts: bool) -> bool {
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            let Some(fd) = &self.fd else { return false };
            #[cfg(target_os = "linux")]
            let events = libc::POLLIN | libc::POLLRDHUP;
            #[cfg(not(target_os = "linux"))]
            let events = libc::POLLIN;
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events,
                revents: 0,
            };
            // SAFETY: one valid pollfd, a descriptor we own, no wait.
            let ready = unsafe { libc::poll(&mut p, 1, 0) };
            if ready <= 0 {
                return false;
            }
            #[cfg(target_os = "linux")]
            let hung_up = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
            #[cfg(not(target_os = "linux"))]
            let hung_up = libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
            p.revents & hung_up != 0 || (data_counts && p.revents != 0)
        }
        #[cfg(not(unix))]
        {
            let _ = data_counts;
            false
        }
    }

    /// Shuts the socket down so that a call blocked on it sees the end of
    /// the stream at once. Returns false where that is not possible.
    pub(crate) fn cut(&self) -> bool {
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            match &self.fd {
                // SAFETY: the descriptor is ours and open while `self` lives;
                // shutdown(2) does not close it.
                Some(fd) => unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) == 0 },
                None => false,
            }
        }
        #[cfg(not(unix))]
        {
            false
        }
    }
}

/// What one connection attempt to one address came to.
#[cfg(any(feature = "postgres", feature = "mssql"))]
pub(crate) enum Attempt<T> {
    /// Connected.
    Done(T),
    /// This address failed in a way another might not: try the next one.
    Next(Error),
    /// The server answered with a refusal (a wrong password): stop here.
    Stop(Error),
}

/// Tries `addrs` in order until one connects, all of it before `deadline`
/// (the end of the connect's limit, of which name resolution may have used
/// a part); `attempt` gets the address and the deadline. The error is the
/// last address's, or a connect timeout when none could be tried in time.
#[cfg(any(feature = "postgres", feature = "mssql"))]
pub(crate) fn first_to_connect<A, T>(
    addrs: &[A],
    target: &str,
    limit: &ConnectLimit,
    deadline: Instant,
    mut attempt: impl FnMut(&A, Instant) -> Attempt<T>,
) -> Result<T> {
    let mut last = None;
    for addr in addrs {
        if Instant::now() >= deadline {
            break;
        }
        match attempt(addr, deadline) {
            Attempt::Done(t) => return Ok(t),
            Attempt::Next(e) => last = Some(e),
            Attempt::Stop(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        super::connect_error(
            true,
            target,
            limit,
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no address could be tried in time",
            ),
        )
    }))
}

/// The addresses of `host:port` (for a connect to `target`), looked up
/// before `deadline`. The system resolver has no timeout of its own, so it
/// runs on a thread while the caller waits at most until the deadline;
/// every caller that wants the same name meanwhile waits for the same
/// lookup, so a resolver that hangs holds one thread per name, not one per
/// attempt. An IP address needs no lookup.
#[cfg(any(feature = "postgres", feature = "mssql"))]
pub(crate) fn resolve(
    host: &str,
    port: u16,
    deadline: Instant,
    target: &str,
    limit: &ConnectLimit,
) -> Result<Vec<std::net::SocketAddr>> {
    use std::net::ToSocketAddrs;
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
        return Ok(vec![std::net::SocketAddr::new(ip, port)]);
    }
    let name = host.to_owned();
    let answer = lookup(lookups(), (host.to_owned(), port), deadline, move || {
        (name.as_str(), port)
            .to_socket_addrs()
            .map(Iterator::collect)
    });
    match answer {
        Some(Ok(addrs)) => Ok(addrs),
        Some(Err(e)) => Err(super::connect_error(false, target, limit, e)),
        None => Err(limit.resolve_timed_out(host, target)),
    }
}

/// What a lookup came to; the error as its kind and text, for every waiter.
#[cfg(any(feature = "postgres", feature = "mssql"))]
type Answer = std::result::Result<Vec<std::net::SocketAddr>, (std::io::ErrorKind, String)>;

/// One lookup in progress, and the callers waiting for it.
#[cfg(any(feature = "postgres", feature = "mssql"))]
#[derive(Default)]
struct Lookup {
    answer: parking_lot::Mutex<Option<Answer>>,
    done: parking_lot::Condvar,
}

/// The lookups in progress, by host and port.
#[cfg(any(feature = "postgres", feature = "mssql"))]
type Lookups = parking_lot::Mutex<std::collections::HashMap<(String, u16), Arc<Lookup>>>;

#[cfg(any(feature = "postgres", feature = "mssql"))]
fn lookups() -> &'static Lookups {
    static LOOKUPS: std::sync::OnceLock<Lookups> = std::sync::OnceLock::new();
    LOOKUPS.get_or_init(Default::default)
}

/// Waits until `deadline` for the lookup of `key`: the one in progress in
/// `pending`, or a new one running `resolver` on a thread of its own.
/// `None` when it did not answer in time (it goes on, for later callers).
#[cfg(any(feature = "postgres", feature = "mssql"))]
fn lookup(
    pending: &'static Lookups,
    key: (String, u16),
    deadline: Instant,
    resolver: impl FnOnce() -> std::io::Result<Vec<std::net::SocketAddr>> + Send + 'static,
) -> Option<std::io::Result<Vec<std::net::SocketAddr>>> {
    let lookup = {
        let mut map = pending.lock();
        match map.get(&key) {
            Some(l) => Arc::clone(l),
            None => {
                let l = Arc::new(Lookup::default());
                let theirs = Arc::clone(&l);
                let key2 = key.clone();
                let spawned = std::thread::Builder::new()
                    .name("dbmanager-resolve".into())
                    .spawn(move || {
                        let answer = resolver().map_err(|e| (e.kind(), e.to_string()));
                        *theirs.answer.lock() = Some(answer);
                        theirs.done.notify_all();
                        let mut map = pending.lock();
                        if map.get(&key2).is_some_and(|l| Arc::ptr_eq(l, &theirs)) {
                            map.remove(&key2);
                        }
                    });
                if let Err(e) = spawned {
                    return Some(Err(e));
                }
                map.insert(key, Arc::clone(&l));
                l
            }
        }
    };
    let mut answer = lookup.answer.lock();
    while answer.is_none() {
        if lookup.done.wait_until(&mut answer, deadline).timed_out() {
            break;
        }
    }
    answer
        .clone()
        .map(|a| a.map_err(|(kind, text)| std::io::Error::new(kind, text)))
}

#[cfg(all(test, any(feature = "postgres", feature = "mssql")))]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    fn pending() -> &'static Lookups {
        Box::leak(Box::default())
    }

    fn key() -> (String, u16) {
        ("db.example".to_owned(), 5432)
    }

    /// A resolver that hangs: callers stop waiting at their deadline, share
    /// the one lookup meanwhile, and get its answer once it comes.
    #[test]
    fn a_hung_resolver_is_waited_for_only_until_the_deadline() {
        let pending = pending();
        let calls = Arc::new(AtomicU32::new(0));
        let (release, released) = mpsc::channel::<()>();
        let addr: SocketAddr = "192.0.2.7:5432".parse().unwrap();
        let resolver = {
            let calls = Arc::clone(&calls);
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                let _ = released.recv();
                Ok(vec![addr])
            }
        };
        let started = Instant::now();
        let first = lookup(
            pending,
            key(),
            Instant::now() + Duration::from_millis(200),
            resolver,
        );
        assert!(first.is_none(), "no answer yet");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
        // A second caller joins the lookup in progress: no second thread.
        let second = lookup(
            pending,
            key(),
            Instant::now() + Duration::from_millis(100),
            || panic!("a second lookup of the same name"),
        );
        assert!(second.is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // The resolver answers: a caller still waiting gets the addresses.
        let waiter = std::thread::spawn(move || {
            lookup(
                pending,
                key(),
                Instant::now() + Duration::from_secs(10),
                || panic!("a second lookup of the same name"),
            )
        });
        std::thread::sleep(Duration::from_millis(50));
        release.send(()).unwrap();
        let answer = waiter.join().unwrap().expect("answered in time");
        assert_eq!(answer.unwrap(), vec![addr]);
        // Once answered, the lookup is gone: the next caller asks again.
        let again = Instant::now() + Duration::from_secs(10);
        while pending.lock().contains_key(&key()) {
            assert!(Instant::now() < again, "the finished lookup stays");
            std::thread::sleep(Duration::from_millis(10));
        }
        let fresh = lookup(pending, key(), again, move || Ok(vec![addr]));
        assert_eq!(fresh.expect("answered").unwrap(), vec![addr]);
    }

    #[test]
    fn a_failed_lookup_keeps_its_kind() {
        let answer = lookup(
            pending(),
            key(),
            Instant::now() + Duration::from_secs(10),
            || {
                Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such host",
                ))
            },
        );
        let e = answer.expect("answered").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().contains("no such host"));
    }

    fn limit() -> ConnectLimit {
        let config = crate::config::DatabaseConfig::builder("dns")
            .url("postgresql://u:p@db.example/app")
            .connect_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        ConnectLimit::of(&config)
    }

    /// An IP address is used as it is, whatever the deadline.
    #[test]
    fn an_address_needs_no_lookup() {
        let past = Instant::now();
        let limit = limit();
        let v4 = resolve("127.0.0.1", 5432, past, "x", &limit).unwrap();
        assert_eq!(v4, vec!["127.0.0.1:5432".parse().unwrap()]);
        let v6 = resolve("[::1]", 1433, past, "x", &limit).unwrap();
        assert_eq!(v6, vec!["[::1]:1433".parse().unwrap()]);
    }

    /// A lookup past its deadline is a connect timeout that says what
    /// timed out and what to raise.
    #[test]
    fn a_late_lookup_is_a_connect_timeout() {
        let e = limit().resolve_timed_out("db.example", "PostgreSQL at db.example:5432");
        assert_eq!(e.kind(), ErrorKind::ConnectTimeout);
        let text = e.to_string();
        assert!(
            text.contains("resolving the host name `db.example`"),
            "{text}"
        );
        assert!(text.contains("connect timeout of 1"), "{text}");
        assert!(
            text.contains("DatabaseConfigBuilder::connect_timeout"),
            "{text}"
        );
    }
}

#[cfg(all(test, target_os = "linux"))]
mod socket_tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    use super::SocketHandle;

    /// Data waiting on an idle connection counts as lost for a driver that
    /// does not read between requests, not for one that does; the peer's end
    /// of the stream counts for both.
    #[test]
    fn waiting_data_and_hang_ups_are_told_apart() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let ours = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut theirs, _) = listener.accept().expect("accept");
        let handle = SocketHandle::of(&ours);
        assert!(!handle.peer_closed() && !handle.peer_hung_up(), "quiet");

        theirs.write_all(b"Z").expect("write");
        let waited = std::time::Instant::now();
        while !handle.peer_closed() && waited.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::yield_now();
        }
        assert!(
            handle.peer_closed(),
            "data waiting: lost for a strict driver"
        );
        assert!(!handle.peer_hung_up(), "data waiting: no hang-up");

        drop(theirs);
        let waited = std::time::Instant::now();
        while !handle.peer_hung_up() && waited.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::yield_now();
        }
        assert!(
            handle.peer_hung_up() && handle.peer_closed(),
            "the peer hung up"
        );
    }
}
