//! A slow network: a loopback TCP proxy that delays or stalls the bytes
//! between the library and the server. Timeouts fire, and a connection
//! whose statement was cut is never reused in an unknown state.

mod common;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use common::fault::{Link, Proxy, Tally};
use common::Backend;
use dbmanager::{DatabaseManager, ErrorKind, Result};

/// The server address of `url` and the URL with the proxy's port instead.
fn via_proxy(url: &str) -> (SocketAddr, Box<dyn Fn(u16) -> String>) {
    let parsed = url::Url::parse(url).expect("test URL");
    let host = parsed.host_str().expect("host").to_owned();
    let port = parsed.port().expect("port");
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .expect("resolves")
        .next()
        .expect("an address");
    let url = url.to_owned();
    (
        addr,
        Box::new(move |p| {
            let mut u = url::Url::parse(&url).expect("test URL");
            u.set_port(Some(p)).expect("port");
            u.to_string()
        }),
    )
}

fn through_a_slow_network(b: Backend) -> Result<()> {
    let (label, id_sql) = (b.name(), b.session_id_sql());
    let (server, rewrite) = via_proxy(&b.url());
    let proxy = Proxy::start(server);
    let db: DatabaseManager =
        common::manager_with(&common::unique_name("proxy"), &rewrite(proxy.port()), |b| {
            b.pool_size(2)
                .max_overflow(0)
                .query_timeout(Some(Duration::from_millis(1500)))
                .connect_timeout(Duration::from_secs(2))
                .acquire_timeout(Duration::from_secs(5))
                .circuit_failures(0)
        })?;
    let tally = Tally::default();
    let mut conn = db.connection()?;
    let first_id: i64 = conn.query_one(id_sql, ())?.get("id")?;

    // Delay: every chunk waits 100 ms each way; a quick statement is slower
    // but fine, a long one still times out on schedule.
    proxy.set(Link::Delay(Duration::from_millis(100)));
    let started = Instant::now();
    let id: i64 = conn.query_one(id_sql, ())?.get("id")?;
    tally.ok();
    assert_eq!(id, first_id, "same connection");
    let delayed_ok = started.elapsed();

    // Stall: nothing gets through; the statement times out within its
    // limit plus the watchdog's grace to cut the connection.
    proxy.set(Link::Stall);
    let started = Instant::now();
    let err = conn
        .query_one(id_sql, ())
        .expect_err("a stalled network cannot answer");
    let stalled_took = started.elapsed();
    tally.err(&err);
    assert_eq!(err.kind(), ErrorKind::QueryTimeout, "{err}");
    assert!(
        stalled_took < Duration::from_secs(15),
        "hung for {stalled_took:?}"
    );
    drop(conn);
    proxy.set(Link::Pass);

    // The cut connection was discarded: the next statement runs on a new
    // session, never on the one left in an unknown state.
    let status = db.pool_status();
    assert!(
        status.invalid >= 1,
        "the connection was discarded: {status:?}"
    );
    let mut conn = db.connection()?;
    let next_id: i64 = conn.query_one(id_sql, ())?.get("id")?;
    tally.ok();
    assert_ne!(next_id, first_id, "a new session after the cut");
    drop(conn);

    // Delay bigger than the timeout: the statement times out, the next
    // one (network fine again) works.
    proxy.set(Link::Delay(Duration::from_millis(2000)));
    let started = Instant::now();
    let err = db
        .execute_query("SELECT 1", ())
        .expect_err("slower than its limit");
    let slow_took = started.elapsed();
    tally.err(&err);
    assert_eq!(err.kind(), ErrorKind::QueryTimeout, "{err}");
    proxy.set(Link::Pass);
    let mut ok_after = 0;
    for _ in 0..10 {
        db.execute_query("SELECT 1", ())?;
        tally.ok();
        ok_after += 1;
    }
    tally.report(
        &format!("slow_network/{label}"),
        &format!(
            "delayed_ok={:.2}s stalled_timeout_after={:.2}s slow_timeout_after={:.2}s discarded={} ok_after={ok_after} proxy_connections={}",
            delayed_ok.as_secs_f64(),
            stalled_took.as_secs_f64(),
            slow_took.as_secs_f64(),
            db.pool_status().invalid,
            proxy.accepted.load(std::sync::atomic::Ordering::Relaxed)
        ),
    );
    assert_eq!(db.pool_status().checked_out, 0);
    Ok(())
}
each_backend!(through_a_slow_network, [Postgres, MySql]);

/// MariaDB: a statement past its deadline that the server's own limit
/// stopped (1969) before the watchdog's `KILL QUERY` reached the server
/// (the network is slow, so the kill's connection takes a while) is not
/// proof that the kill hit it: the kill could land on the connection's next
/// statement. The connection is discarded, not reused; only the server's
/// report that the kill stopped the statement (1317) lets it be reused.
#[test]
fn a_statement_the_server_stopped_before_the_kill_arrived_is_not_reused() -> Result<()> {
    let b = Backend::MySql;
    let (server, rewrite) = via_proxy(&b.url());
    let proxy = Proxy::start(server);
    let db: DatabaseManager = common::manager_with(
        &common::unique_name("proxy_kill"),
        &rewrite(proxy.port()),
        |c| {
            c.pool_size(1)
                .max_overflow(0)
                .connect_timeout(Duration::from_secs(5))
                .acquire_timeout(Duration::from_secs(10))
                .circuit_failures(0)
        },
    )?;
    let limit = Duration::from_millis(50);
    let mut conn = db.connection()?;
    let before: i64 = conn.query_one(b.session_id_sql(), ())?.get("id")?;
    // The server-side limit for `limit` is set now, while the link is fast.
    conn.execute_query_with_timeout("SELECT 1", (), limit)?;
    proxy.set(Link::Delay(Duration::from_millis(50)));
    // The server stops it 100 ms after it arrives; the kill needs a new
    // connection (several round trips of 100 ms) and arrives later.
    let e = conn
        .execute_query_with_timeout(
            "SET STATEMENT max_statement_time = 0.1 FOR SELECT SLEEP(5)",
            (),
            limit,
        )
        .expect_err("times out");
    proxy.set(Link::Pass);
    assert_eq!(e.kind(), ErrorKind::QueryTimeout, "{e}");
    let text = common::error_text(&e);
    assert!(
        text.contains("make the statement faster") && text.contains("max_statement_time"),
        "the watchdog fired and the server's own limit stopped the statement: {text}"
    );
    drop(conn);
    let after: i64 = db.query_one(b.session_id_sql(), ())?.get("id")?;
    assert_ne!(
        after, before,
        "the connection was reused after an unconfirmed kill"
    );
    Ok(())
}
