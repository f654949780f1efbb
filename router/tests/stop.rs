//! Stopping the router: the listener closes and the threads end. In a process of its own, as
//! `slipway server` runs one router and stops it only on the way out.

use std::io::{Read, Write};
use std::net::TcpStream;

use slipway_core::routes::Routes;
use slipway_router::RouterConfig;

#[test]
fn stop_closes_the_listener() {
    let config = RouterConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        ..RouterConfig::default()
    };
    let router = slipway_router::start(config, Routes::default()).expect("router starts");
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
