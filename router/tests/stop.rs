//! Stopping the router: the listener closes, connections already accepted get their request
//! answered, and the threads end. In a process of its own, as `slipway server` runs one router
//! and stops it only on the way out.

use std::io::{Read, Write};
use std::net::TcpStream;

use slipway_core::routes::Routes;
use slipway_router::RouterConfig;

/// A router on a free port, with one thread and no routes.
fn start() -> slipway_router::RouterHandle {
    let config = RouterConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        ..RouterConfig::default()
    };
    slipway_router::start(config, Routes::default()).expect("router starts")
}

#[test]
fn stop_closes_the_listener() {
    let router = start();
    let addr = router.local_addr();

    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: nope.slipway.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");

    router.stop();
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn a_connection_open_when_the_router_stops_gets_its_first_request_answered() {
    let router = start();
    let addr = router.local_addr();

    // Connections accepted before the stop, whose requests come just after it: each is answered
    // (here, the 404 for an unknown host), none is reset.
    let mut conns: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let stopping = std::thread::spawn(move || router.stop());
    std::thread::sleep(std::time::Duration::from_millis(200));
    for conn in &mut conns {
        conn.write_all(b"GET / HTTP/1.1\r\nHost: nope.slipway.test\r\nConnection: close\r\n\r\n")
            .unwrap();
    }
    for conn in &mut conns {
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    }
    stopping.join().unwrap();
}
