//! The router in front of real app containers, driven with curl: wildcard custom domains, the
//! per-app request body limit set as a config var, the 431 for oversized heads, X-Request-Start,
//! the access log, and the per-app Prometheus metrics on the API.

use std::process::Command;
use std::time::Duration;

use slipway_tests::{Server, run, text};

/// curl through the router with `Host: host` and extra arguments; returns (status, body).
fn curl(server: &Server, host: &str, args: &[&str]) -> (u16, String) {
    let out = run(Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Host: {host}"))
        .args(args)
        .arg(format!("http://127.0.0.1:{}/", server.http)));
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = body.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn the_router_routes_limits_and_counts() {
    let server = Server::start();
    server.deploy_fixture("shop", "python-app");

    // A wildcard domain serves every name under it; the bare parent name is not covered.
    server.cli_ok(&["domains:add", "-a", "shop", "*.shop.test"]);
    let domains = server.cli_ok(&["domains", "-a", "shop"]);
    assert!(domains.contains("*.shop.test"), "{domains}");
    for host in ["tenant1.shop.test", "a.b.shop.test"] {
        let (code, body) = curl(&server, host, &[]);
        assert_eq!(code, 200, "{host}: {body}");
        assert!(body.contains("hello from shop"), "{body}");
    }
    assert_eq!(curl(&server, "shop.test", &[]).0, 404);
    // Wildcards over the platform's own domain, or a bare TLD, are refused.
    for bad in ["*.slipway.localhost", "*.localhost", "*.test", "*"] {
        let out = server.cli(&["domains:add", "-a", "shop", bad]);
        assert!(!out.status.success(), "{bad} accepted");
        let err = text(&out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    server.cli_ok(&["domains:remove", "-a", "shop", "*.shop.test"]);
    // The route table changes a moment later, when the reconciler has read the change.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while curl(&server, "tenant1.shop.test", &[]).0 != 404 {
        assert!(std::time::Instant::now() < deadline, "still routed");
        std::thread::sleep(Duration::from_millis(100));
    }

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
    assert_eq!(curl(&server, host, &["--data-binary", &small]).0, 501);
    let (code, page) = curl(&server, host, &["--data-binary", &big]);
    assert_eq!(code, 413, "{page}");
    assert!(page.contains("larger than shop accepts"), "{page}");
    let chunked = curl(
        &server,
        host,
        &["-H", "Transfer-Encoding: chunked", "--data-binary", &big],
    );
    assert_eq!(chunked.0, 413);

    // Oversized request heads are refused before they reach the app.
    let huge = format!("X-Huge: {}", "y".repeat(40_000));
    assert_eq!(curl(&server, host, &["-H", &huge]).0, 431);

    // Every request is in the access log, with its app, status and request id.
    let (code, _) = curl(&server, host, &["-H", "X-Request-Id: trace-me-42"]);
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
    let added = server.cli_ok(&["users:add", "mallory"]);
    let token = added
        .lines()
        .find_map(|l| l.strip_prefix("their API token (shown once): "))
        .expect("users:add prints the token");
    assert!(text(&metrics(token)).ends_with("403"));
}
