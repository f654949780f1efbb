//! Stopping the router: the listener closes, connections already accepted get their request
//! answered, and the threads end. In a process of its own, as `slipway server` runs one router
//! and stops it only on the way out.

use std::io::{Read, Write};
use std::net::TcpStream;

use slipway_core::routes::Routes;
use slipway_router::RouterConfig;

/// A router on a free port, with `threads` threads and no routes.
fn start(threads: usize) -> slipway_router::RouterHandle {
    let config = RouterConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads,
        ..RouterConfig::default()
    };
    slipway_router::start(config, Routes::default()).expect("router starts")
}

#[test]
fn stop_closes_the_listener() {
    let router = start(1);
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
    first_requests_after_a_stop_are_answered(1, 8);
}

#[test]
fn connections_handed_between_threads_get_their_first_request_answered_through_a_stop() {
    // A burst of connections over two threads: a thread that accepted more than its share hands
    // some to the other, and those are answered like the rest.
    first_requests_after_a_stop_are_answered(2, 32);
}

/// Opens `conns` connections to a router with `threads` threads, stops the router, then sends a
/// request on each: each is answered (here, the 404 for an unknown host), none is reset.
fn first_requests_after_a_stop_are_answered(threads: usize, conns: usize) {
    let router = start(threads);
    let addr = router.local_addr();

    let mut conns: Vec<TcpStream> = (0..conns)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
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

#[test]
fn connections_spread_over_two_threads_are_each_served() {
    let router = start(2);
    let addr = router.local_addr();

    let mut conns: Vec<TcpStream> = (0..32).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for _ in 0..3 {
        for conn in &mut conns {
            conn.write_all(b"GET / HTTP/1.1\r\nHost: nope.slipway.test\r\n\r\n")
                .unwrap();
            let answer = read_response(conn);
            assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
        }
    }
    router.stop();
}

/// One response from `conn`, read to the end of its body (by Content-Length).
fn read_response(conn: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        let Some(head_end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length = text[..head_end]
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            })
            .expect("a Content-Length");
        if answer.len() >= head_end + 4 + length {
            return text.into_owned();
        }
    }
}
