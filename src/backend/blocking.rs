//! What the backends built on an async client (PostgreSQL, SQL Server)
//! share: a private current-thread runtime per connection, dropping it
//! safely, and cutting a connection's socket from the watchdog.

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

/// A connection's socket, as the watchdog's last resort sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SocketHandle {
    #[cfg(unix)]
    fd: std::os::fd::RawFd,
}

impl SocketHandle {
    /// The handle of `socket`, taken before the runtime owns it.
    #[cfg(unix)]
    pub(crate) fn of(socket: &impl std::os::fd::AsRawFd) -> SocketHandle {
        SocketHandle {
            fd: socket.as_raw_fd(),
        }
    }

    /// No handle (platforms without `shutdown(2)` on a raw descriptor).
    #[cfg(not(unix))]
    pub(crate) fn of<T>(_socket: &T) -> SocketHandle {
        SocketHandle {}
    }

    /// Shuts the socket down so that a call blocked on it sees the end of
    /// the stream at once. Returns false where that is not possible.
    ///
    /// Only the watchdog calls this, and only while the statement is still
    /// registered: the connection (and so its descriptor) is then open and
    /// its owner blocked in a call on it, so the descriptor cannot have been
    /// closed and reused.
    pub(crate) fn cut(self) -> bool {
        #[cfg(unix)]
        {
            // SAFETY: see above; shutdown(2) does not close the descriptor.
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) == 0 }
        }
        #[cfg(not(unix))]
        {
            false
        }
    }
}
