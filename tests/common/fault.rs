//! Fault injection for the resilience tests: private servers a test may
//! stop, restart or freeze (started by `scripts/servers.sh`), SIGSTOP of a
//! process or a process tree, a loopback TCP proxy that delays or stalls
//! bytes, and a loopback listener that accepts and never answers.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::Backend;

/// Runs a function of `scripts/servers.sh` with arguments; its stdout.
pub fn servers_sh(function: &str, args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/servers.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source '{script}' && {function} \"$@\""))
        .arg("servers.sh")
        .args(args)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{function} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A server of this test's own (PostgreSQL or MariaDB), removed on drop.
#[derive(Debug)]
pub struct PrivateServer {
    pub url: String,
    pub admin_url: String,
    dir: String,
}

impl PrivateServer {
    /// A PostgreSQL or a MariaDB server.
    pub fn start(backend: Backend) -> PrivateServer {
        let kind = match backend {
            Backend::Postgres => "postgres",
            Backend::MySql => "mariadb",
            other => panic!("no private {other:?} server"),
        };
        let out = servers_sh("dbm_private_server", &[kind]);
        PrivateServer::from_printed(&out)
    }

    /// A streaming standby of `primary` (a private PostgreSQL), made with
    /// `pg_basebackup -R` on a port of its own.
    pub fn standby_of(primary: &PrivateServer) -> PrivateServer {
        let out = servers_sh("dbm_private_server", &["postgres-standby", &primary.dir]);
        PrivateServer::from_printed(&out)
    }

    /// The server `dbm_private_server` describes in its `KEY=value` lines.
    fn from_printed(out: &str) -> PrivateServer {
        let get = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("dbm_private_server printed no {key}"))
                .to_owned()
        };
        PrivateServer {
            url: get("URL"),
            admin_url: get("ADMIN_URL"),
            dir: get("DIR"),
        }
    }

    /// Promotes a standby to a primary (`pg_ctl promote`, waiting for it).
    pub fn promote(&self) {
        servers_sh("dbm_private_ctl", &[&self.dir, "promote"]);
    }

    /// Stops the server (PostgreSQL: fast shutdown; MariaDB: SIGTERM).
    pub fn stop(&self) {
        servers_sh("dbm_private_ctl", &[&self.dir, "stop"]);
    }

    /// Starts it again on the same port.
    pub fn start_again(&self) {
        servers_sh("dbm_private_ctl", &[&self.dir, "start"]);
    }

    /// The server's main pid.
    pub fn pid(&self) -> u32 {
        servers_sh("dbm_private_ctl", &[&self.dir, "pid"])
            .trim()
            .parse()
            .expect("the server runs")
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/servers.sh");
        let _ = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{script}' && dbm_private_ctl \"$1\" remove"
            ))
            .arg("servers.sh")
            .arg(&self.dir)
            .output();
    }
}

/// `kill -SIG pid`; whether it was delivered.
fn signal(pid: &str, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, pid])
        .status()
        .is_ok_and(|s| s.success())
}

fn children(pid: &str) -> Vec<String> {
    Command::new("pgrep")
        .args(["-P", pid])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Processes stopped with SIGSTOP, to make a server that stops answering;
/// SIGCONT on [`resume`](Self::resume) or drop (also when the test fails).
#[derive(Debug)]
pub struct Stopped(Vec<String>);

impl Stopped {
    /// One process (a whole MariaDB server, or one PostgreSQL backend).
    pub fn process(pid: impl ToString) -> Stopped {
        Stopped::all(vec![pid.to_string()])
    }

    /// A process and its children (a PostgreSQL postmaster and every backend).
    pub fn tree(pid: impl ToString) -> Stopped {
        let pid = pid.to_string();
        let mut all = vec![pid.clone()];
        all.extend(children(&pid));
        Stopped::all(all)
    }

    /// `pids[0]` must stop; its children may have exited meanwhile.
    fn all(pids: Vec<String>) -> Stopped {
        let stopped = Stopped(pids);
        let main = signal(&stopped.0[0], "-STOP");
        for p in &stopped.0[1..] {
            signal(p, "-STOP");
        }
        assert!(main, "could not stop process {}", stopped.0[0]);
        stopped
    }

    pub fn resume(mut self) {
        self.cont();
    }

    fn cont(&mut self) {
        for p in self.0.drain(..) {
            signal(&p, "-CONT");
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.cont();
    }
}

/// What the proxy does with the bytes it forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Forward at once.
    Pass,
    /// Hold every chunk this long before forwarding it.
    Delay(Duration),
    /// Forward nothing (connections stay open, bytes wait).
    Stall,
}

/// A loopback TCP proxy on std threads: every accepted connection is piped
/// to `target`, both ways, through the current [`Link`] setting.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    link: Arc<Mutex<Link>>,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
    /// Connections still to be closed at once, as a server that refuses them.
    refuse: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let link = Arc::new(Mutex::new(Link::Pass));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let refuse = Arc::new(AtomicU64::new(0));
        {
            let (link, stop, accepted, refuse) =
                (link.clone(), stop.clone(), accepted.clone(), refuse.clone());
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let refused = refuse
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_ok();
                    if refused {
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5))
                    else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    for (from, to) in [
                        (client.try_clone(), server.try_clone()),
                        (server.try_clone(), client.try_clone()),
                    ] {
                        if let (Ok(from), Ok(to)) = (from, to) {
                            let (link, stop) = (link.clone(), stop.clone());
                            thread::spawn(move || pipe(from, to, &link, &stop));
                        }
                    }
                }
            });
        }
        Proxy {
            addr,
            link,
            stop,
            accepted,
            refuse,
        }
    }

    /// Closes the next `n` connections as soon as they are accepted.
    pub fn refuse_next(&self, n: u64) {
        self.refuse.store(n, Ordering::Relaxed);
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set(&self, link: Link) {
        *self.link.lock().unwrap() = link;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.set(Link::Pass);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, link: &Mutex<Link>, stop: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        // Hold the chunk while the link says so.
        loop {
            let now = *link.lock().unwrap();
            match now {
                Link::Pass => break,
                Link::Delay(d) => {
                    thread::sleep(d);
                    break;
                }
                Link::Stall => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// A loopback TCP listener that accepts every connection and then never
/// says or reads anything: a server (or a proxy in front of one) that is
/// reachable but hung. Connections stay open until it is dropped.
#[derive(Debug)]
pub struct Silent {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
}

impl Silent {
    pub fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the silent listener");
        let addr = listener.local_addr().expect("silent listener address");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            thread::spawn(move || {
                let mut open = Vec::new();
                for client in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(client) = client {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        open.push(client);
                    }
                }
                // Dropped here: every held connection closes.
            });
        }
        Silent {
            addr,
            stop,
            accepted,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// The value of a metric of `family` for `database` (and `extra` label,
/// `name="value"`) in the exposition text, 0 when absent.
pub fn metric(family: &str, database: &str, extra: Option<&str>) -> f64 {
    let text = dbmanager::metrics::metrics_text();
    let label = format!("database=\"{database}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| l.contains(&label))
        .filter(|l| extra.map_or(true, |e| l.contains(e)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Errors counted by kind, for the scenario reports.
#[derive(Debug, Default)]
pub struct Tally {
    pub requests: AtomicU64,
    pub errors: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Tally {
    pub fn ok(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn err(&self, e: &dbmanager::Error) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self
            .errors
            .lock()
            .unwrap()
            .entry(format!("{:?}", e.kind()))
            .or_default() += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.lock().unwrap().values().sum()
    }

    pub fn report(&self, scenario: &str, extra: &str) {
        eprintln!(
            "SCENARIO {scenario}: requests={} errors={} by kind={:?} {extra}",
            self.requests.load(Ordering::Relaxed),
            self.error_count(),
            self.errors.lock().unwrap()
        );
    }
}

/// Seconds since `t`, for reports.
pub fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}
