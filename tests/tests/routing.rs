//! The router in front of real app containers, driven with curl: wildcard custom domains, the
//! per-app request body limit set as a config var, the 431 for oversized heads, X-Request-Start,
//! the access log, the per-app Prometheus metrics on the API, and deploys and restarts under
//! steady load without a failed request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use slipway_tests::{Server, run, text};

/// Sends GETs for `host` over keep-alive connections until `stop`, and returns how many got a
/// 200 and every other outcome (status, or the I/O error). A connection the router closes is
/// reopened, as any HTTP client does; a request it sent and got no answer to counts as failed.
fn load(port: u16, host: String, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let mut ok = 0;
    let mut failed = Vec::new();
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        let stream = match &mut conn {
            Some(c) => c,
            None => {
                let s = TcpStream::connect(("127.0.0.1", port)).expect("router accepts");
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                conn.insert(BufReader::new(s))
            }
        };
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        if stream.get_mut().write_all(request.as_bytes()).is_err() {
            conn = None;
            continue;
        }
        match read_response(stream) {
            Ok((200, keep)) => {
                ok += 1;
                if !keep {
                    conn = None;
                }
            }
            Ok((status, _)) => {
                failed.push(format!("status {status}"));
                conn = None;
            }
            Err(e) => {
                failed.push(e.to_string());
                conn = None;
            }
        }
    }
    (ok, failed)
}

/// Reads one HTTP/1.1 response with a Content-Length body: (status, connection kept open).
fn read_response(stream: &mut BufReader<TcpStream>) -> std::io::Result<(u16, bool)> {
    let mut line = String::new();
    if stream.read_line(&mut line)? == 0 {
        return Err(std::io::Error::other("connection closed before an answer"));
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut length, mut keep) = (0usize, true);
    loop {
        let mut header = String::new();
        stream.read_line(&mut header)?;
        let header = header.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(v) = header.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if header == "connection: close" {
            keep = false;
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    Ok((status, keep))
}

/// Polls `/` at `host` until it answers `status`, for up to 10 s.
fn wait_for_status(server: &Server, host: &str, status: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = server.curl(host, "/", &[]);
        if code == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{host} still answers {code}: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_router_routes_limits_and_counts() {
    let server = Server::start();
    server.deploy_fixture("shop", "python-app");

    // A wildcard domain serves every name under it; the bare parent name is not covered.
    server.cli_ok(&["domains:add", "-a", "shop", "*.shop.test"]);
    let domains = server.cli_ok(&["domains", "-a", "shop"]);
    assert!(domains.contains("*.shop.test"), "{domains}");
    // The route table changes a moment later, when the reconciler has read the change.
    wait_for_status(&server, "tenant1.shop.test", 200);
    for host in ["tenant1.shop.test", "a.b.shop.test"] {
        let (code, body) = server.curl(host, "/", &[]);
        assert_eq!(code, 200, "{host}: {body}");
        assert!(body.contains("hello from shop"), "{body}");
    }
    assert_eq!(server.curl("shop.test", "/", &[]).0, 404);
    // Wildcards over the platform's own domain, or a bare TLD, are refused.
    for bad in ["*.slipway.localhost", "*.localhost", "*.test", "*"] {
        let out = server.cli(&["domains:add", "-a", "shop", bad]);
        assert!(!out.status.success(), "{bad} accepted");
        let err = text(&out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    server.cli_ok(&["domains:remove", "-a", "shop", "*.shop.test"]);
    wait_for_status(&server, "tenant1.shop.test", 404);

    // The body limit is a config var; a bad value is refused in one line.
    let out = server.cli(&["config:set", "-a", "shop", "SLIPWAY_MAX_BODY_SIZE=lots"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("use a size such as"), "{}", text(&out));
    server.cli_ok(&["config:set", "-a", "shop", "SLIPWAY_MAX_BODY_SIZE=1K"]);
    server.wait_for_body("shop", "hello from shop v2", Duration::from_secs(60));
    let host = "shop.slipway.localhost";
    let small = "x".repeat(1000);
    let big = "x".repeat(2000);
    // The python app has no POST handler (501), but the router lets the small body through.
    assert_eq!(server.curl(host, "/", &["--data-binary", &small]).0, 501);
    let (code, page) = server.curl(host, "/", &["--data-binary", &big]);
    assert_eq!(code, 413, "{page}");
    assert!(page.contains("larger than shop accepts"), "{page}");
    let chunked = server.curl(
        host,
        "/",
        &["-H", "Transfer-Encoding: chunked", "--data-binary", &big],
    );
    assert_eq!(chunked.0, 413);

    // Oversized request heads are refused before they reach the app.
    let huge = format!("X-Huge: {}", "y".repeat(40_000));
    assert_eq!(server.curl(host, "/", &["-H", &huge]).0, 431);

    // Every request is in the access log, with its app, status and request id.
    let (code, _) = server.curl(host, "/", &["-H", "X-Request-Id: trace-me-42"]);
    assert_eq!(code, 200);
    std::thread::sleep(Duration::from_millis(500));
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("slipway::access") && l.contains("trace-me-42"))
        .unwrap_or_else(|| panic!("no access log line in\n{log}"));
    assert!(
        line.contains("status=200") && line.contains("app=shop"),
        "{line}"
    );

    // Metrics: admin only, per app, by status class, with a latency histogram.
    let metrics = |token: &str| {
        run(Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("http://127.0.0.1:{}/metrics", server.api)))
    };
    let out = text(&metrics(&server.token));
    assert!(out.ends_with("200"), "{out}");
    for needle in [
        "slipway_router_requests_total{app=\"shop\",class=\"2xx\"}",
        "slipway_router_requests_total{app=\"shop\",class=\"4xx\"}",
        "slipway_router_request_duration_seconds_bucket{app=\"shop\",le=\"+Inf\"}",
    ] {
        assert!(out.contains(needle), "{needle} not in {out}");
    }
    let four_xx: u64 = out
        .lines()
        .find(|l| l.starts_with("slipway_router_requests_total{app=\"shop\",class=\"4xx\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    // 413 twice, 431 once: the metrics count what the router answered itself too.
    assert!(four_xx >= 3, "{out}");
    let token = server.add_user("mallory");
    assert!(text(&metrics(&token)).ends_with("403"));

    // Deploys and a restart under steady load over keep-alive connections: not one request
    // fails. Two web instances, so a restart is rolling between them.
    server.cli_ok(&["ps:scale", "-a", "shop", "web=2"]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (port, host, stop) = (server.http, host.to_owned(), stop.clone());
            std::thread::spawn(move || load(port, host, stop))
        })
        .collect();
    for (i, greeting) in ["hi", "hey"].iter().enumerate() {
        server.cli_ok(&["config:set", "-a", "shop", &format!("GREETING={greeting}")]);
        let release = format!("{greeting} from shop v{}", i + 3);
        server.wait_for_body("shop", &release, Duration::from_secs(60));
    }
    server.cli_ok(&["ps:restart", "-a", "shop"]);
    // The restart replaces both instances, each ready before the old ones drain and stop.
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for client in clients {
        let (n, f) = client.join().unwrap();
        ok += n;
        failed.extend(f);
    }
    println!(
        "under load: {ok} requests answered 200, {} failed",
        failed.len()
    );
    assert!(ok > 100, "the load ran: {ok}");
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
}
