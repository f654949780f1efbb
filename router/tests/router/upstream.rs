//! A tiny HTTP/1.1 app for the router to proxy to. It answers every request with the request
//! line, the headers it received (one `name: value` line each, names lower-case), a blank line
//! and the request body, over keep-alive connections. `/close` closes the connection instead of
//! answering, and `/slow` answers after 3 s. Its responses carry hop-by-hop fields the router must not pass on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A running echo app.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    /// Starts an echo app named `name` (sent back as `X-Upstream`) on a free local port.
    pub(crate) async fn start(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, name));
            }
        });
        Upstream { addr, connections }
    }

    /// How many connections the app has accepted.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// An address where nothing listens, so connecting is refused.
pub(crate) fn refusing_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn serve(stream: TcpStream, name: &'static str) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut head = String::new();
        let mut content_length = 0;
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if head.is_empty() {
                head = format!("{}\n", line.to_ascii_lowercase());
                continue;
            }
            let (k, v) = line.split_once(':').unwrap();
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim();
            if k == "content-length" {
                content_length = v.parse().unwrap();
            }
            head.push_str(&format!("{k}: {v}\n"));
        }
        if head.contains(" /close ") {
            return;
        }
        if head.contains(" /slow ") {
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        }
        let mut body = vec![0; content_length];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let mut answer = head.into_bytes();
        answer.push(b'\n');
        answer.extend_from_slice(&body);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             X-Upstream: {name}\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
             Keep-Alive: timeout=60\r\n\r\n",
            answer.len()
        );
        // One write, as servers send small answers: two would leave the body behind Nagle's
        // algorithm for a delayed ACK, and the request in flight that long.
        let mut out = response.into_bytes();
        out.extend_from_slice(&answer);
        if stream.get_mut().write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The headers an echo answer reports, in the order received.
pub(crate) fn echoed_headers(body: &str) -> Vec<(String, String)> {
    let head = body.split("\n\n").next().unwrap();
    head.lines()
        .skip(1)
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap_or((l, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The one value of header `name` in an echo answer; panics if it is absent or repeated.
pub(crate) fn echoed(body: &str, name: &str) -> String {
    let values: Vec<String> = echoed_headers(body)
        .into_iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values.len(), 1, "{name} in {body}");
    values.into_iter().next().unwrap()
}
