//! The router's protocol side through real clients against a real app container: HTTPS with a
//! certificate per domain picked by SNI and swapped without a restart (curl with a test CA),
//! certificate checks in `certs:add`, the redirect to HTTPS (`tls:enable`), X-Forwarded-Proto
//! and -Port, HTTP/2 over TLS and h2c, WebSockets (Debian's python3-websocket) and a streamed
//! response whose first chunk arrives long before its end (curl -N).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slipway_tests::{Server, git_repo, repo_root, run, text};

const APP: &str = "tls";
/// Two custom domains, each with its own certificate, and one under a wildcard certificate.
const A: &str = "www.tls-a.test";
const B: &str = "www.tls-b.test";
const WILD: &str = "api.wild.test";

#[test]
fn https_http2_websockets_and_streaming() {
    let server = Server::start();
    server.push_stacks();
    let key = server.keygen("tls-key");
    server.cli_ok(&["keys:add", key.with_extension("pub").to_str().unwrap()]);
    server.cli_ok(&["apps:create", APP]);
    let repo = git_repo(
        server.dir.path(),
        APP,
        &repo_root().join("tests/fixtures/python-app"),
    );
    let push = server.git_push(&repo, &key, APP);
    assert!(push.status.success(), "{}\n{}", text(&push), server.log());
    server.wait_for_body(APP, "hello from tls v1", Duration::from_secs(30));
    for host in [A, B, WILD] {
        server.cli_ok(&["domains:add", "-a", APP, host]);
    }

    let ca = TestCa::new(server.dir.path());
    certificates(&server, &ca);
    redirect_to_https(&server, &ca);
    http2(&server, &ca);
    websockets(&server, &ca);
    streaming(&server, &ca);
    new_connection_cost(&server, &ca);
}

/// SNI picks each domain's own certificate; a name without one fails the handshake; removing
/// and adding a certificate takes effect without a restart; bad certificates are refused.
fn certificates(server: &Server, ca: &TestCa) {
    let (a_cert, a_key) = ca.leaf("a", &[A]);
    let (b_cert, b_key) = ca.leaf("b", &[B]);
    let (wild_cert, wild_key) = ca.leaf("wild", &["*.wild.test"]);
    for (cert, key) in [
        (&a_cert, &a_key),
        (&b_cert, &b_key),
        (&wild_cert, &wild_key),
    ] {
        server.cli_ok(&["certs:add", "-a", APP, path(cert), path(key)]);
    }
    let listed = server.cli_ok(&["certs", "-a", APP]);
    // The test certificates last a day: time to renew them, the listing and the log say.
    for name in [A, B, "*.wild.test", "SHA256:", "renew soon"] {
        assert!(listed.contains(name), "{name} not in:\n{listed}");
    }
    wait_for("the expiry warning in the server's log", || {
        server
            .log()
            .contains(&format!("the certificate for {A} expires"))
    });

    // Each name verifies against the test CA only if its own certificate is presented.
    for host in [A, B, WILD] {
        wait_for(&format!("HTTPS to {host}"), || {
            let out = ca.curl(server, host, "/", &[]);
            out.status.success() && text(&out).contains("hello from tls v1")
        });
    }
    // The app's own name has no certificate: the handshake fails, nothing else is presented.
    let none = ca.curl(server, &format!("{APP}.slipway.localhost"), "/", &[]);
    assert_eq!(none.status.code(), Some(35), "{}", text(&none));

    // Removing a certificate, then adding it back, applies without a restart.
    let started = Instant::now();
    server.cli_ok(&["certs:remove", "-a", APP, B]);
    wait_for("B's certificate to go", || {
        ca.curl(server, B, "/", &[]).status.code() == Some(35)
    });
    let removed = started.elapsed();
    assert!(ca.curl(server, A, "/", &[]).status.success());
    let started = Instant::now();
    server.cli_ok(&["certs:add", "-a", APP, path(&b_cert), path(&b_key)]);
    wait_for("B's certificate to return", || {
        ca.curl(server, B, "/", &[]).status.success()
    });
    println!(
        "from the command to the first handshake that shows it (polled every 200 ms): \
         certs:remove {removed:?}, certs:add {:?}",
        started.elapsed()
    );

    // Refusals are one line, and the key never comes back.
    let (foreign_cert, foreign_key) = ca.leaf("foreign", &["www.not-this-app.test"]);
    let check_refusal = |args: &[&str], wanted: &str| {
        let out = server.cli(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let said = text(&out);
        assert!(said.contains(wanted), "{wanted:?} not in {said}");
        assert_eq!(said.trim().lines().count(), 1, "{said}");
    };
    check_refusal(
        &[
            "certs:add",
            "-a",
            APP,
            path(&foreign_cert),
            path(&foreign_key),
        ],
        "not a domain of tls",
    );
    check_refusal(
        &["certs:add", "-a", APP, path(&a_cert), path(&b_key)],
        "does not belong to the certificate",
    );
    check_refusal(
        &["certs:add", "-a", APP, path(&a_key), path(&a_key)],
        "not PEM",
    );
    check_refusal(
        &["certs:remove", "-a", APP, "nothing.test"],
        "no certificate",
    );
    let json = server.cli_ok(&["--json", "certs", "-a", APP]);
    assert!(!json.contains("PRIVATE"), "{json}");
    assert!(
        !server.log().contains("PRIVATE KEY"),
        "a key reached the log"
    );
}

/// `tls:enable` redirects plain HTTP to HTTPS (301 for GET, 308 for POST) with host, path and
/// query, for the hosts that have a certificate; requests over TLS carry X-Forwarded-Proto https and the TLS port.
fn redirect_to_https(server: &Server, ca: &TestCa) {
    server.cli_ok(&["tls:enable", "-a", APP]);
    let location = format!("https://{A}:{}/headers?x=1", server.https);
    wait_for("the redirect to HTTPS", || {
        let (code, headers) = plain(server, A, "GET", "/headers?x=1");
        code == 301 && headers.contains(&format!("location: {location}"))
    });
    let (code, headers) = plain(server, A, "POST", "/headers?x=1");
    assert_eq!(code, 308, "{headers}");
    // The app's own name has no certificate, so it is not sent where it cannot be served.
    let own = format!("{APP}.slipway.localhost");
    assert_eq!(plain(server, &own, "GET", "/").0, 200);
    assert!(
        headers.contains(&format!("location: {location}")),
        "{headers}"
    );

    for version in ["--http1.1", "--http2"] {
        let out = ca.curl(server, A, "/headers", &[version]);
        let echoed = text(&out).to_ascii_lowercase();
        assert!(
            echoed.contains("x-forwarded-proto: https"),
            "{version}: {echoed}"
        );
        assert!(
            echoed.contains(&format!("x-forwarded-port: {}", server.https)),
            "{version}: {echoed}"
        );
    }

    server.cli_ok(&["tls:disable", "-a", APP]);
    wait_for("plain HTTP again", || {
        plain(server, A, "GET", "/headers").0 == 200
    });
    let (_, echoed) = plain(server, A, "GET", "/headers");
    let echoed = echoed.to_ascii_lowercase();
    assert!(echoed.contains("x-forwarded-proto: http\n"), "{echoed}");
    assert!(
        echoed.contains(&format!("x-forwarded-port: {}", server.http)),
        "{echoed}"
    );
}

/// HTTP/2 from clients: by ALPN over TLS, and h2c with prior knowledge on the plain port;
/// HTTP/1.1 still works on both.
fn http2(server: &Server, ca: &TestCa) {
    let version = |out: std::process::Output| {
        assert!(out.status.success(), "{}", text(&out));
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        said.rsplit('\n').next().unwrap_or_default().to_owned()
    };
    let w = ["-w", "\n%{http_version}"];
    assert_eq!(
        version(ca.curl(server, A, "/", &[&["--http2"], &w[..]].concat())),
        "2"
    );
    assert_eq!(
        version(ca.curl(server, A, "/", &[&["--http1.1"], &w[..]].concat())),
        "1.1"
    );
    let h2c = run(Command::new("curl")
        .args([
            "-s",
            "-m",
            "10",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version}",
            "-H",
        ])
        .arg(format!("Host: {A}"))
        .arg(format!("http://127.0.0.1:{}/", server.http)));
    assert!(text(&h2c).contains("hello from tls v1"), "{}", text(&h2c));
    assert_eq!(version(h2c), "2");
}

/// A WebSocket through the router, over plain HTTP and over TLS, echoes messages both ways.
fn websockets(server: &Server, ca: &TestCa) {
    let script = r#"
import socket, ssl, sys, websocket
port, host, cafile = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sock = socket.create_connection(("127.0.0.1", port), timeout=10)
scheme = "ws"
if cafile:
    sock = ssl.create_default_context(cafile=cafile).wrap_socket(sock, server_hostname=host)
    scheme = "wss"
ws = websocket.create_connection("{}://{}:{}/ws".format(scheme, host, port), socket=sock, timeout=10)
for message in ["hello", "x" * 70000]:
    ws.send(message)
    assert ws.recv() == message
ws.ping("p")
ws.close()
print("echoed over", scheme)
"#;
    let ws = |port: u16, cafile: &str| {
        run(Command::new("/usr/bin/python3").args(["-c", script, &port.to_string(), A, cafile]))
    };
    let plain_ws = ws(server.http, "");
    assert!(
        text(&plain_ws).contains("echoed over ws"),
        "{}",
        text(&plain_ws)
    );
    let tls_ws = ws(server.https, path(&ca.cert));
    assert!(
        text(&tls_ws).contains("echoed over wss"),
        "{}",
        text(&tls_ws)
    );
}

/// A long-lived streamed response passes through unbuffered: its first line arrives long before
/// its last, over HTTP/1.1 and over HTTP/2 with TLS.
fn streaming(server: &Server, ca: &TestCa) {
    let plain = || {
        let mut cmd = Command::new("curl");
        cmd.args(["-sN", "-m", "20", "-H"])
            .arg(format!("Host: {A}"))
            .arg(format!("http://127.0.0.1:{}/stream", server.http));
        cmd
    };
    let tls = || {
        let mut cmd = ca.curl_command(server, A, "/stream");
        cmd.args(["-N", "--http2"]);
        cmd
    };
    for (name, mut cmd) in [("HTTP/1.1", plain()), ("HTTP/2 over TLS", tls())] {
        let started = Instant::now();
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let first_at = started.elapsed();
        let rest: Vec<String> = lines.map(Result::unwrap).collect();
        let last_at = started.elapsed();
        assert!(child.wait().unwrap().success());
        assert_eq!(first, "chunk 0", "{name}");
        assert_eq!(rest.last().map(String::as_str), Some("chunk 4"), "{name}");
        // The app sends a line a second: the first must not wait for the rest.
        assert!(
            first_at < Duration::from_millis(1500) && last_at >= Duration::from_millis(3500),
            "{name}: first line after {first_at:?}, last after {last_at:?}"
        );
        println!("{name}: first chunk after {first_at:?}, whole response after {last_at:?}");
    }
}

/// Prints what a request on a fresh connection costs over plain HTTP and over TLS (median of
/// 15 each, curl's own timings), so the handshake's share is on record beside its anchor.
fn new_connection_cost(server: &Server, ca: &TestCa) {
    let median = |mut cmd: Command| {
        let mut times: Vec<f64> = (0..15)
            .map(|_| {
                let out = run(&mut cmd);
                assert!(out.status.success(), "{}", text(&out));
                let said = String::from_utf8_lossy(&out.stdout).into_owned();
                said.rsplit('\n')
                    .next()
                    .unwrap()
                    .trim()
                    .parse::<f64>()
                    .unwrap()
                    * 1000.0
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    let mut plain = Command::new("curl");
    plain
        .args(["-s", "-m", "10", "-w", "\n%{time_total}", "-H"])
        .arg(format!("Host: {A}"))
        .arg(format!("http://127.0.0.1:{}/", server.http));
    let tls = |version: &str| {
        let mut cmd = ca.curl_command(server, A, "/");
        cmd.args([version, "-w", "\n%{time_total}"]);
        cmd
    };
    let plain_ms = median(plain);
    let h1_ms = median(tls("--http1.1"));
    let h2_ms = median(tls("--http2"));
    println!(
        "request on a new connection, median of 15: plain HTTP/1.1 {plain_ms:.1} ms, \
         TLS HTTP/1.1 {h1_ms:.1} ms, TLS HTTP/2 {h2_ms:.1} ms"
    );
}

/// A plain HTTP request through the router without following redirects; returns the status
/// and the response headers and body as text (header names lower-case).
fn plain(server: &Server, host: &str, method: &str, target: &str) -> (u16, String) {
    let out = run(Command::new("curl")
        .args([
            "-s",
            "-i",
            "-m",
            "10",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            "-H",
        ])
        .arg(format!("Host: {host}"))
        .arg(format!("http://127.0.0.1:{}{target}", server.http)));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let (response, code) = said.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        lower_header_names(response),
    )
}

fn lower_header_names(response: &str) -> String {
    response
        .split("\r\n")
        .map(|line| match line.split_once(": ") {
            Some((name, value)) => format!("{}: {value}", name.to_ascii_lowercase()),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Polls `check` until it holds, or panics after 30 s.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "waited in vain for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A throwaway certificate authority made with the openssl command, and leaf certificates it
/// signs.
struct TestCa {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TestCa {
    fn new(scratch: &Path) -> TestCa {
        let dir = scratch.join("ca");
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Slipway test CA",
            "-keyout",
            path(&key),
            "-out",
            path(&cert),
        ]);
        TestCa { dir, cert, key }
    }

    /// A certificate for `names` signed by this CA, and its key: (cert.pem, key.pem).
    fn leaf(&self, label: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = self.dir.join(format!("{label}.key"));
        let csr = self.dir.join(format!("{label}.csr"));
        let cert = self.dir.join(format!("{label}.pem"));
        let ext = self.dir.join(format!("{label}.ext"));
        let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(&ext, format!("subjectAltName={}\n", sans.join(","))).unwrap();
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={}", names[0]),
            "-keyout",
            path(&key),
            "-out",
            path(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            path(&csr),
            "-CA",
            path(&self.cert),
            "-CAkey",
            path(&self.key),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            path(&ext),
            "-out",
            path(&cert),
        ]);
        (cert, key)
    }

    /// curl over HTTPS to `host` (resolved to 127.0.0.1, so SNI carries `host`), trusting only
    /// this CA.
    fn curl_command(&self, server: &Server, host: &str, target: &str) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-m", "10", "--cacert", path(&self.cert), "--resolve"])
            .arg(format!("{host}:{}:127.0.0.1", server.https))
            .arg(format!("https://{host}:{}{target}", server.https));
        cmd
    }

    fn curl(
        &self,
        server: &Server,
        host: &str,
        target: &str,
        extra: &[&str],
    ) -> std::process::Output {
        run(self.curl_command(server, host, target).args(extra))
    }
}

fn openssl(args: &[&str]) {
    let out = run(Command::new("openssl").args(args));
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
}
