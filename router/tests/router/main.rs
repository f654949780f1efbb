//! The router driven over real HTTP: a router started in-process on a free port, echo apps
//! behind it, and reqwest as the client.

mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use slipway_core::routes::{AppRoute, RouteTable, Routes};
use slipway_router::{RouterConfig, RouterError, RouterHandle, RouterLimits};
use upstream::{Upstream, echoed, echoed_headers, refusing_addr};

/// A router on a free 127.0.0.1 port with an empty route table.
struct Harness {
    router: RouterHandle,
    routes: Routes,
    client: reqwest::Client,
}

impl Harness {
    fn start() -> Harness {
        Harness::start_with(RouterLimits::default())
    }

    fn start_with(limits: RouterLimits) -> Harness {
        let routes = Routes::default();
        let config = RouterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            threads: 1,
            limits,
        };
        let router = slipway_router::start(config, routes.clone()).expect("router starts");
        Harness {
            router,
            routes,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    fn port(&self) -> u16 {
        self.router.local_addr().port()
    }

    /// Publishes a table of `(host, app, backends)`.
    fn publish(&self, entries: &[(&str, &str, Vec<SocketAddr>)]) {
        self.publish_routes(
            entries
                .iter()
                .map(|(host, app, backends)| {
                    (*host, AppRoute::new(app.parse().unwrap(), backends.clone()))
                })
                .collect(),
        );
    }

    /// Publishes a table of `(host, route)`.
    fn publish_routes(&self, entries: Vec<(&str, AppRoute)>) {
        let mut table = RouteTable::default();
        for (host, route) in entries {
            table.insert([host.to_string()], route);
        }
        self.routes.publish(table);
    }

    /// A GET of `path` through the router with `Host: host`.
    fn get(&self, host: &str, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("http://127.0.0.1:{}{path}", self.port()))
            .header(HOST, host)
    }

    async fn text(&self, host: &str, path: &str) -> (StatusCode, String) {
        let resp = self.get(host, path).send().await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    }
}

/// Checks an error page: status, small HTML with exact length, the sentence, a request id.
async fn check_page(resp: reqwest::Response, status: StatusCode, sentence: &str) {
    assert_eq!(resp.status(), status);
    let headers = resp.headers().clone();
    assert_eq!(headers[CONTENT_TYPE], "text/html; charset=utf-8");
    let length: usize = headers[CONTENT_LENGTH].to_str().unwrap().parse().unwrap();
    let request_id = headers["x-request-id"].to_str().unwrap().to_owned();
    let body = resp.text().await.unwrap();
    assert_eq!(body.len(), length);
    assert!(body.len() < 1024, "{body}");
    assert!(body.contains(sentence), "{sentence:?} not in {body}");
    assert!(body.contains(&request_id), "{body}");
}

#[tokio::test]
async fn routes_by_host_with_and_without_port() {
    let h = Harness::start();
    let web = Upstream::start("web").await;
    let api = Upstream::start("api").await;
    h.publish(&[
        ("web.slipway.test", "web", vec![web.addr]),
        ("api.example.com", "api", vec![api.addr]),
    ]);

    let with_port = format!("web.slipway.test:{}", h.port());
    for (host, upstream) in [
        ("web.slipway.test", "web"),
        (with_port.as_str(), "web"),
        ("WEB.Slipway.Test", "web"),
        ("api.example.com", "api"),
    ] {
        let resp = h.get(host, "/hello?x=1").send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{host}");
        assert_eq!(resp.headers()["x-upstream"], upstream, "{host}");
        let body = resp.text().await.unwrap();
        assert!(body.starts_with("get /hello?x=1 http/1.1\n"), "{body}");
        // The app sees the Host the client sent.
        assert_eq!(echoed(&body, "host"), host);
    }
}

#[tokio::test]
async fn unknown_host_is_404() {
    let h = Harness::start();
    h.publish(&[("web.slipway.test", "web", vec![refusing_addr()])]);
    let resp = h.get("nope.slipway.test", "/").send().await.unwrap();
    check_page(
        resp,
        StatusCode::NOT_FOUND,
        "no app is served at nope.slipway.test",
    )
    .await;

    // The host comes from the client, so the page escapes it.
    let resp = h.get("<b>x</b>", "/").send().await.unwrap();
    check_page(
        resp,
        StatusCode::NOT_FOUND,
        "no app is served at &lt;b&gt;x&lt;/b&gt;",
    )
    .await;

    // A HEAD answer has the headers and no body.
    let resp = h
        .client
        .head(format!("http://127.0.0.1:{}/", h.port()))
        .header(HOST, "nope.slipway.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.text().await.unwrap(), "");
}

#[tokio::test]
async fn app_without_ready_instance_is_503() {
    let h = Harness::start();
    h.publish(&[("idle.slipway.test", "idle", vec![])]);
    let resp = h.get("idle.slipway.test", "/").send().await.unwrap();
    check_page(
        resp,
        StatusCode::SERVICE_UNAVAILABLE,
        "no instance of idle is ready",
    )
    .await;
}

#[tokio::test]
async fn refused_connection_is_502() {
    let h = Harness::start();
    h.publish(&[("down.slipway.test", "down", vec![refusing_addr()])]);
    let resp = h.get("down.slipway.test", "/").send().await.unwrap();
    check_page(
        resp,
        StatusCode::BAD_GATEWAY,
        "no instance of down could be reached",
    )
    .await;
}

#[tokio::test]
async fn upstream_closing_without_answer_is_502() {
    let h = Harness::start();
    let web = Upstream::start("web").await;
    h.publish(&[("web.slipway.test", "web", vec![web.addr])]);
    let resp = h.get("web.slipway.test", "/close").send().await.unwrap();
    check_page(
        resp,
        StatusCode::BAD_GATEWAY,
        "web closed the connection without a valid answer",
    )
    .await;
}

#[tokio::test]
async fn refused_backend_is_skipped_for_a_ready_one() {
    let h = Harness::start();
    let web = Upstream::start("web").await;
    h.publish(&[("web.slipway.test", "web", vec![refusing_addr(), web.addr])]);
    // Round-robin starts every other request on the refusing backend; each must still succeed.
    for _ in 0..4 {
        let (status, _) = h.text("web.slipway.test", "/").await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn round_robin_over_backends() {
    let h = Harness::start();
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    h.publish(&[("web.slipway.test", "web", vec![a.addr, b.addr])]);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let resp = h.get("web.slipway.test", "/").send().await.unwrap();
        seen.push(resp.headers()["x-upstream"].to_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["a", "b", "a", "b"]);
}

#[tokio::test]
async fn forwarded_headers_reach_the_app() {
    let h = Harness::start();
    let web = Upstream::start("web").await;
    h.publish(&[("web.slipway.test", "web", vec![web.addr])]);
    let host = format!("web.slipway.test:{}", h.port());

    let resp = h
        .get(&host, "/")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.example")
        .header("x-forwarded-port", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = resp.text().await.unwrap();
    assert_eq!(echoed(&body, "x-forwarded-for"), "203.0.113.7, 127.0.0.1");
    assert_eq!(echoed(&body, "x-forwarded-proto"), "http");
    assert_eq!(echoed(&body, "x-forwarded-host"), host);
    assert_eq!(echoed(&body, "x-forwarded-port"), h.port().to_string());
    let start: u128 = echoed(&body, "x-request-start").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert!(start <= now && now - start < 10_000, "{start} vs {now}");
    // No id was sent, so the router made one and gave the app and the client the same.
    assert_eq!(request_id.len(), 32, "{request_id}");
    assert_eq!(echoed(&body, "x-request-id"), request_id);

    // Without a chain from the client, the chain is the client alone.
    let (_, body) = h.text("web.slipway.test", "/").await;
    assert_eq!(echoed(&body, "x-forwarded-for"), "127.0.0.1");
}

#[tokio::test]
async fn request_id_is_kept_only_when_valid() {
    let h = Harness::start();
    let web = Upstream::start("web").await;
    h.publish(&[("web.slipway.test", "web", vec![web.addr])]);

    for (sent, kept) in [
        ("req-42.abc_DEF", true),
        ("has spaces", false),
        ("<script>", false),
        (&*"x".repeat(201), false),
    ] {
        let resp = h
            .get("web.slipway.test", "/")
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();
        let returned = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body = resp.text().await.unwrap();
        assert_eq!(echoed(&body, "x-request-id"), returned);
        assert_eq!(returned == sent, kept, "{sent:?} -> {returned:?}");
    }

    // Error pages carry the client's id too.
    let resp = h
        .get("nope.slipway.test", "/")
        .header("x-request-id", "req-404")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-404");
}

#[tokio::test]
async fn hop_by_hop_fields_are_dropped_both_ways() {
    let h = Harness::start();
    let web = Upstream::start("web").await;
    h.publish(&[("web.slipway.test", "web", vec![web.addr])]);

    let hop_by_hop = |req: reqwest::RequestBuilder| {
        req.header("connection", "x-private")
            .header("x-private", "1")
            .header("keep-alive", "timeout=1")
            .header("proxy-connection", "keep-alive")
            .header("te", "trailers")
    };
    const STRIPPED: [&str; 4] = ["x-private", "keep-alive", "proxy-connection", "te"];

    // Sent straight to the app, every field arrives and comes back: the check below is real.
    let direct = hop_by_hop(h.client.get(format!("http://{}/", web.addr)));
    let resp = direct.send().await.unwrap();
    assert!(resp.headers().contains_key("x-hop"));
    let body = resp.text().await.unwrap();
    let names: Vec<String> = echoed_headers(&body).into_iter().map(|(k, _)| k).collect();
    for name in STRIPPED {
        assert!(names.iter().any(|n| n == name), "{name} not sent: {body}");
    }

    let resp = hop_by_hop(h.get("web.slipway.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    for name in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(
            !resp.headers().contains_key(name),
            "{name} reached the client"
        );
    }
    let body = resp.text().await.unwrap();
    let names: Vec<String> = echoed_headers(&body).into_iter().map(|(k, _)| k).collect();
    for name in STRIPPED {
        assert!(
            !names.iter().any(|n| n == name),
            "{name} reached the app: {body}"
        );
    }
}

#[tokio::test]
async fn request_and_response_bodies_pass_through() {
    let h = Harness::start();
    let web = Upstream::start("web").await;
    h.publish(&[("web.slipway.test", "web", vec![web.addr])]);

    let payload: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let resp = h
        .client
        .post(format!("http://127.0.0.1:{}/upload", h.port()))
        .header(HOST, "web.slipway.test")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.bytes().await.unwrap();
    assert!(body.ends_with(&payload), "the body did not come back whole");
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let h = Harness::start();
    let web = Upstream::start("web").await;
    h.publish(&[("web.slipway.test", "web", vec![web.addr])]);
    for _ in 0..10 {
        let (status, _) = h.text("web.slipway.test", "/").await;
        assert_eq!(status, StatusCode::OK);
    }
    // Pingora returns a connection to its pool just after the response ends, so a request can
    // occasionally open a second one; ten fresh connections would mean no pooling at all.
    assert!(web.connections() < 5, "{} connections", web.connections());
}

#[tokio::test]
async fn publishing_a_table_changes_routing() {
    let h = Harness::start();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;

    h.publish(&[("web.slipway.test", "web", vec![blue.addr])]);
    let resp = h.get("web.slipway.test", "/").send().await.unwrap();
    assert_eq!(resp.headers()["x-upstream"], "blue");

    h.publish(&[("web.slipway.test", "web", vec![green.addr])]);
    let resp = h.get("web.slipway.test", "/").send().await.unwrap();
    assert_eq!(resp.headers()["x-upstream"], "green");

    h.publish(&[]);
    let (status, _) = h.text("web.slipway.test", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn taken_port_is_an_error_from_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = RouterConfig {
        listen: addr,
        threads: 1,
        ..RouterConfig::default()
    };
    match slipway_router::start(config, Routes::default()) {
        Err(RouterError::Bind { addr: a, source }) => {
            assert_eq!(a, addr);
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
}

#[test]
fn zero_threads_is_refused() {
    let config = RouterConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 0,
        ..RouterConfig::default()
    };
    assert!(matches!(
        slipway_router::start(config, Routes::default()),
        Err(RouterError::Config(_))
    ));
}

#[tokio::test]
async fn router_takes_no_signals() {
    let h = Harness::start();
    let (status, _) = h.text("nope.slipway.test", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // SigCgt is the mask of signals this process has a handler for; bit n-1 is signal n. Had
    // pingora installed its handlers, SIGINT (2), SIGQUIT (3) or SIGTERM (15) would be set.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let caught = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .map(|mask| u64::from_str_radix(mask.trim(), 16).unwrap())
        .unwrap();
    for signal in [2, 3, 15] {
        assert_eq!(caught & (1 << (signal - 1)), 0, "signal {signal} is caught");
    }
}

#[tokio::test]
async fn wildcard_domains_route_names_below_them() {
    let h = Harness::start();
    let shop = Upstream::start("shop").await;
    let www = Upstream::start("www").await;
    h.publish(&[
        ("*.example.com", "shop", vec![shop.addr]),
        ("www.example.com", "www", vec![www.addr]),
    ]);
    for (host, upstream) in [
        ("www.example.com", "www"),
        ("tenant1.example.com", "shop"),
        ("a.b.example.com", "shop"),
    ] {
        let resp = h.get(host, "/").send().await.expect(host);
        assert_eq!(resp.status(), StatusCode::OK, "{host}");
        assert_eq!(resp.headers()["x-upstream"], upstream, "{host}");
    }
    let resp = h.get("example.com", "/").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bodies_over_the_apps_limit_are_413() {
    let h = Harness::start();
    let web = Upstream::start("web").await;
    h.publish_routes(vec![(
        "web.slipway.test",
        AppRoute::new("web".parse().unwrap(), vec![web.addr]).with_max_body(Some(1024)),
    )]);
    let url = format!("http://127.0.0.1:{}/", h.port());
    let post = |body: reqwest::Body| {
        h.client
            .post(&url)
            .header(HOST, "web.slipway.test")
            .body(body)
    };
    let resp = post(vec![b'x'; 1024].into()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = post(vec![b'x'; 1025].into()).send().await.unwrap();
    check_page(
        resp,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body is larger than web accepts",
    )
    .await;
    // Without Content-Length the body is counted as it streams.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..3).map(|_| Ok(vec![b'x'; 800])).collect();
    let resp = post(reqwest::Body::wrap_stream(futures_util::stream::iter(
        chunks,
    )))
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn oversized_request_head_is_431() {
    let h = Harness::start();
    let web = Upstream::start("web").await;
    h.publish(&[("web.slipway.test", "web", vec![web.addr])]);
    let big = "x".repeat(40 * 1024);
    let resp = h
        .get("web.slipway.test", "/")
        .header("x-big", big)
        .send()
        .await
        .unwrap();
    check_page(
        resp,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "header is too large",
    )
    .await;
    let (status, _) = h.text("web.slipway.test", "/").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn silent_instance_is_504_after_the_read_timeout() {
    let h = Harness::start_with(RouterLimits {
        read_timeout: Duration::from_secs(1),
        ..RouterLimits::default()
    });
    let web = Upstream::start("web").await;
    h.publish(&[("web.slipway.test", "web", vec![web.addr])]);
    let resp = h.get("web.slipway.test", "/slow").send().await.unwrap();
    check_page(
        resp,
        StatusCode::GATEWAY_TIMEOUT,
        "web did not answer in time",
    )
    .await;
}

/// Reads one answer with a Content-Length from `conn`, head and body.
async fn read_answer(conn: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if answer.len() >= end + 4 + length {
                return String::from_utf8_lossy(&answer).into_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_connection_idle_past_the_read_timeout_stays_open_and_the_timeout_still_holds() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start_with(RouterLimits {
        read_timeout: Duration::from_secs(1),
        ..RouterLimits::default()
    });
    let web = Upstream::start("web").await;
    h.publish(&[("web.slipway.test", "web", vec![web.addr])]);
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", h.port()))
        .await
        .unwrap();
    let ask = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: web.slipway.test\r\n\r\n");

    conn.write_all(ask("/").as_bytes()).await.unwrap();
    let answer = read_answer(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    // Idle for longer than the read timeout. The connection's timer, set for the app's
    // answer, fires while the router waits for the client, which may idle for a minute.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    conn.write_all(ask("/").as_bytes()).await.unwrap();
    let answer = read_answer(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    // The app answers /slow after 3 s: a 504 shows the read timeout still fires in time.
    conn.write_all(ask("/slow").as_bytes()).await.unwrap();
    let answer = read_answer(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");
}

#[tokio::test]
async fn instance_that_stops_reading_the_body_is_504_after_the_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start_with(RouterLimits {
        read_timeout: Duration::from_secs(1),
        ..RouterLimits::default()
    });
    // An instance that reads the head and then neither reads nor answers.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut conn, _)) = app.accept().await {
            let mut head = [0u8; 1024];
            let _ = conn.read(&mut head).await;
            held.push(conn);
        }
    });
    h.publish(&[("web.slipway.test", "web", vec![addr])]);

    // The body is far larger than the socket buffers between client, router and instance.
    let size = 64 * 1024 * 1024;
    let client = tokio::net::TcpStream::connect(("127.0.0.1", h.port()))
        .await
        .unwrap();
    let (mut rx, mut tx) = client.into_split();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: web.slipway.test\r\nContent-Length: {size}\r\n\r\n"
    );
    tokio::spawn(async move {
        let _ = tx.write_all(head.as_bytes()).await;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if tx.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // Held open: the router must answer, not wait for the client to give up.
        std::future::pending::<()>().await;
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer while the instance stopped reading");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");
}

#[tokio::test]
async fn busy_instance_is_passed_over() {
    let h = Harness::start();
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    h.publish(&[("web.slipway.test", "web", vec![a.addr, b.addr])]);
    // The first request goes to a and stays there for 3 s.
    let slow = tokio::spawn(h.get("web.slipway.test", "/slow").send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..4 {
        let resp = h.get("web.slipway.test", "/").send().await.unwrap();
        assert_eq!(resp.headers()["x-upstream"], "b");
    }
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.headers()["x-upstream"], "a");
}

#[tokio::test]
async fn requests_are_counted_per_app() {
    let h = Harness::start();
    let web = Upstream::start("web").await;
    h.publish(&[("web.slipway.test", "web", vec![web.addr])]);
    for _ in 0..3 {
        h.text("web.slipway.test", "/").await;
    }
    h.text("web.slipway.test", "/close").await;
    // Counting happens after the answer is sent; give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = h.routes.snapshot().prometheus();
    assert!(
        text.contains("slipway_router_requests_total{app=\"web\",class=\"2xx\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("slipway_router_requests_total{app=\"web\",class=\"5xx\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("slipway_router_request_duration_seconds_count{app=\"web\"} 4\n"),
        "{text}"
    );
}

/// Sends `raw` on a new connection and returns everything the router sends back until it
/// closes the connection.
async fn raw_exchange(port: u16, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out))
        .await
        .expect("the router closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn wire_level_requests_are_answered_as_http_says() {
    let h = Harness::start();
    let web = Upstream::start("web").await;
    h.publish(&[("web.slipway.test", "web", vec![web.addr])]);

    // A bare HTTP/1.0 request, shorter than HTTP/2's preface, is answered at once (no host: 404).
    let out = raw_exchange(h.port(), b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 404 "), "{out}");
    assert!(out.contains("Connection: close\r\n"), "{out}");

    // Two requests in one write are both answered, in order, on the same connection.
    let out = raw_exchange(
        h.port(),
        b"GET /one HTTP/1.1\r\nHost: web.slipway.test\r\n\r\nGET /two HTTP/1.1\r\nHost: web.slipway.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let one = out.find("get /one").expect("first answered");
    let two = out.find("get /two").expect("second answered");
    assert!(one < two, "{out}");
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");

    // Request smuggling shapes are refused, not guessed at.
    let out = raw_exchange(
        h.port(),
        b"POST / HTTP/1.1\r\nHost: web.slipway.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    let out = raw_exchange(
        h.port(),
        b"POST / HTTP/1.1\r\nHost: web.slipway.test\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");

    // An HTTP/1.0 client that asks for keep-alive is told it has it.
    let out = raw_exchange(
        h.port(),
        b"GET /a HTTP/1.0\r\nHost: web.slipway.test\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\nHost: web.slipway.test\r\n\r\n",
    )
    .await;
    assert!(out.contains("Connection: keep-alive\r\n"), "{out}");
    assert!(out.contains("get /b"), "{out}");
}

/// An instance that answers each connection's first request with `parts`, written one at a
/// time with `pause` between them, then closes.
async fn scripted_app(parts: &'static [&'static [u8]], pause: Duration) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = app.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = conn.read(&mut head).await;
                for part in parts {
                    if conn.write_all(part).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_small_body_goes_out_with_its_head_in_one_write() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start();
    let parts: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"hello"];
    let addr = scripted_app(parts, Duration::from_millis(300)).await;
    h.publish(&[("web.slipway.test", "web", vec![addr])]);

    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", h.port()))
        .await
        .unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: web.slipway.test\r\n\r\n")
        .await
        .unwrap();
    // The app sends the body 300 ms after the head; the router holds the head back until then,
    // so the first read has all of the answer.
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello"), "{answer}");
}

#[tokio::test]
async fn a_body_cut_short_reaches_the_client_as_far_as_it_came() {
    let h = Harness::start();
    let parts: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"];
    let addr = scripted_app(parts, Duration::ZERO).await;
    h.publish(&[("web.slipway.test", "web", vec![addr])]);

    // The app closes after 3 of 10 bytes: the client gets the head and those 3, then the close.
    let answer = raw_exchange(
        h.port(),
        b"GET / HTTP/1.1\r\nHost: web.slipway.test\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nabc"), "{answer}");
}
