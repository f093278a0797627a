//! What the backends built on an async client (PostgreSQL, SQL Server)
//! share: a private current-thread runtime per connection, dropping it
//! safely, cutting a connection's socket from the watchdog, and the connect
//! loop over a host's addresses.

#[cfg(unix)]
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
