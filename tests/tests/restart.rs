//! Graceful restart: with the router's socket held by a service manager (systemd's socket
//! activation, played by `tests/support/hold_socket.py`), restarting `slipway server` under
//! steady load fails no request. Connections that arrive while no server runs wait in the
//! socket's queue; the new server routes to the instances that outlived the old one before it
//! accepts them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use slipway_tests::Server;

/// GETs `/` on a new connection each time until `stop`; counts answers and failures, and the
/// slowest answer.
fn load(port: u16, host: String, stop: Arc<AtomicBool>) -> (usize, Vec<String>, Duration) {
    let (mut ok, mut failures, mut slowest) = (0, Vec::new(), Duration::ZERO);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let answer = (|| -> std::io::Result<String> {
            let mut conn = TcpStream::connect(("127.0.0.1", port))?;
            conn.set_read_timeout(Some(Duration::from_secs(60)))?;
            write!(
                conn,
                "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            )?;
            let mut text = String::new();
            conn.read_to_string(&mut text)?;
            Ok(text)
        })();
        slowest = slowest.max(started.elapsed());
        match answer {
            Ok(text) if text.starts_with("HTTP/1.1 200") => ok += 1,
            Ok(text) => failures.push(text.lines().next().unwrap_or("").to_owned()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    (ok, failures, slowest)
}

#[test]
fn a_restart_under_load_fails_no_request() {
    let mut server = Server::start_with_passed_socket();
    server.deploy_fixture("steady", "python-app");
    server.wait_for_body("steady", "hello from steady v1", Duration::from_secs(60));

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (port, stop) = (server.http, stop.clone());
            std::thread::spawn(move || load(port, "steady.slipway.localhost".into(), stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let restarted = Instant::now();
    server.graceful_restart();
    let gap = restarted.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);

    let (mut ok, mut failures, mut slowest) = (0, Vec::new(), Duration::ZERO);
    for client in clients {
        let (n, f, s) = client.join().unwrap();
        ok += n;
        failures.extend(f);
        slowest = slowest.max(s);
    }
    eprintln!(
        "{ok} requests, slowest {slowest:?}, restart {gap:?}, failures {:?}",
        &failures[..failures.len().min(10)]
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the restart ({gap:?}): {:?}\n{}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(10)],
        server.log()
    );
    assert!(ok > 20, "only {ok} requests");
    // Some requests were held across the restart, not merely sent before and after it: the
    // slowest waited for most of it.
    assert!(
        slowest * 2 > gap,
        "no request waited for the restart (slowest {slowest:?}, restart took {gap:?})"
    );
    // The new server is a working one: it deploys.
    server.cli_ok(&["config:set", "-a", "steady", "GREETING=again"]);
    server.wait_for_body("steady", "again from steady v2", Duration::from_secs(120));
}
