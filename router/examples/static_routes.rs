//! Runs the router alone with a fixed route table, for benchmarks against nginx
//! (`../shared/bench/router.sh`) without a controller or containers:
//!
//! ```sh
//! cargo run --release -p slipway-router --example static_routes -- 127.0.0.1:8080 app.bench.test=127.0.0.1:18081
//! ```
//!
//! Arguments: the listen address, then `host=backend[,backend...]` routes, or `+N=backend` for
//! N generated apps (`app<i>.bench.test` and `www.customer<i>.example.com` each), to measure the
//! router's memory with a large table. Closing stdin (or Ctrl-C) stops it.
//!
//! With `ACCESS_LOG=1` it logs as `slipway server` does: every request's `slipway::access` line
//! to standard output through a 64 KiB buffer, to measure the access log's cost.

use std::io::{BufWriter, Stdout, Write};
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use slipway_core::routes::{AppRoute, RouteTable, Routes};
use slipway_router::RouterConfig;

fn main() {
    let log = (std::env::var_os("ACCESS_LOG").is_some_and(|v| v == "1")).then(|| {
        let out: &'static Mutex<BufWriter<Stdout>> = Box::leak(Box::new(Mutex::new(
            BufWriter::with_capacity(64 * 1024, std::io::stdout()),
        )));
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Line(out))
            .init();
        out
    });
    let mut args = std::env::args().skip(1);
    let usage = "usage: static_routes LISTEN HOST=BACKEND[,BACKEND...]...";
    let listen: SocketAddr = args.next().expect(usage).parse().expect(usage);
    let mut table = RouteTable::default();
    for (i, route) in args.enumerate() {
        let (host, backends) = route.split_once('=').expect(usage);
        let backends: Vec<SocketAddr> = backends
            .split(',')
            .map(|b| b.parse().expect(usage))
            .collect();
        if let Some(n) = host.strip_prefix('+') {
            for j in 0..n.parse::<usize>().expect(usage) {
                let app = format!("app{j}").parse().expect("a valid app name");
                let hosts = [
                    format!("app{j}.bench.test"),
                    format!("www.customer{j}.example.com"),
                ];
                table.insert(hosts, AppRoute::new(app, backends.clone()));
            }
            continue;
        }
        let app = format!("bench{i}").parse().expect("a valid app name");
        table.insert([host.to_owned()], AppRoute::new(app, backends));
    }
    let routes = Routes::default();
    routes.publish(table);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let router = slipway_router::start(
        RouterConfig {
            listen,
            threads,
            ..RouterConfig::default()
        },
        routes,
    )
    .unwrap_or_else(|e| panic!("starting the router: {e}"));
    println!("router listening on {}", router.local_addr());
    // Block until Ctrl-C; the router itself never takes signals.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        // Also stop when stdin closes, for scripted runs.
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    let _ = rx.recv();
    router.stop();
    if let Some(out) = log {
        let _ = out.lock().map(|mut out| out.flush());
    }
}

/// One log line's writer: the line goes into the shared buffer whole.
struct Line(&'static Mutex<BufWriter<Stdout>>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut out = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        out.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
