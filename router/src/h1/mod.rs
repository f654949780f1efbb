//! The listeners: HTTP/1.x, plain or over TLS, proxied by the router's own code; HTTP/2 (h2c on
//! the plain port, h2 by ALPN on the TLS port) handed to pingora.
//!
//! Why not pingora for HTTP/1 as well: measured with `../shared/bench/router.sh`, pingora's
//! HTTP/1 path cost about twice nginx's CPU per request. Its accept loop hands each connection
//! to a random runtime while the socket stays registered with the accepting one, so every read
//! crosses threads; and its per-request state machine, header maps and pool bookkeeping come on
//! top. Here each router thread runs a single-threaded runtime that accepts, reads, forwards and
//! pools its own connections: a request costs a few syscalls, one pass over the head each way,
//! and no allocation beyond a few small strings.
//!
//! The request lifecycle mirrors `proxy`'s phases for pingora (HTTP/2 goes there):
//! the head is read ([`head::request`], 431 over the limit, 400 when malformed), the host is
//! looked up in the current route table snapshot (404 `no_route`), then HTTPS redirect (plain
//! connections only),
//! maintenance (503), the app's body limit by Content-Length (413), a backend picked by least
//! connections (503 `no_backend`). A connect failure quarantines the instance and tries the
//! next (502 `upstream_connect` when none is left); a connection reused from the pool that fails
//! before the app sent anything is retried on a new one when the request had no body. The
//! request goes up with its body streamed (a chunked body is counted against the limit as it
//! passes, 413), the answer comes back streamed (504 `upstream_timeout` when the app is silent
//! for the read timeout, 502 `upstream_failed` when it closes or sends something that is not
//! HTTP). An upgrade answered 101 becomes a two-way tunnel.
//!
//! Invariants: the request path reads the route-table snapshot and nothing else. A connection
//! to an app is pooled only after a complete response that left it reusable; a client
//! connection is kept only when the request was read to its end.

mod balance;
mod chunked;
mod head;
mod pool;

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BytesMut};
use pingora::apps::ServerApp;
use pingora::protocols::GetSocketDigest;
use pingora::protocols::SocketDigest;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::tls::SslStream;
use pingora::proxy::HttpProxy;
use slipway_core::routes::{AppRoute, Lease, Routes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Sleep, timeout};

use crate::RouterLimits;
use crate::access::Entry;
use crate::pages::{self, Failure};
use crate::proxy::Router;
use crate::redirect;
use crate::tls::{self, TlsListener};
use balance::{Balance, Counted, Handover};
use head::{ClientSide, Forwarding, Framing, HeadError, RequestText};

/// What an HTTP/2 client sends first, before anything else (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long a TLS client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may keep an idle connection open, and may take over a request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often each thread closes the pooled connections that went stale.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// The largest response head accepted from an app.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The largest response body held back until it is complete, to go out with its head in one
/// write; a larger one streams from its first bytes.
const WHOLE_WRITE: u64 = 16 * 1024;
/// Bytes of an unread request body read and dropped before closing, so the client sees the
/// answer rather than a reset.
const LINGER_BYTES: usize = 256 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(1);

/// What every connection of the listener shares.
pub(crate) struct Shared {
    pub(crate) routes: Routes,
    pub(crate) limits: RouterLimits,
    /// The port the listener accepts on, sent as X-Forwarded-Port.
    pub(crate) port: u16,
    /// The router's TLS listener, for the redirect to HTTPS and X-Forwarded-Port.
    pub(crate) tls: Option<TlsListener>,
    /// The TLS listener's handshakes, when there is one.
    pub(crate) acceptor: Option<tls::Acceptor>,
    /// Pingora's proxy, for HTTP/2 connections (h2c, and h2 over TLS).
    pub(crate) h2: Arc<HttpProxy<Router>>,
}

/// Starts `threads` threads that accept on `listener` (and `tls_listener`) and serve what they
/// accept, until `stop` turns true; then each lets its connections finish for up to `grace`.
pub(crate) fn spawn(
    listener: std::net::TcpListener,
    tls_listener: Option<std::net::TcpListener>,
    threads: usize,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let mut handles = Vec::with_capacity(threads);
    let (balance, inboxes) = Balance::new(threads);
    for (n, inbox) in inboxes.into_iter().enumerate() {
        let listeners = Listeners {
            plain: listener.try_clone()?,
            tls: tls_listener.as_ref().map(|l| l.try_clone()).transpose()?,
        };
        // IO and timers only: the process driver would look for exited children on every turn.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let thread = Thread {
            index: n,
            balance: Arc::clone(&balance),
            inbox,
            shared: Arc::clone(&shared),
        };
        let stop = stop.clone();
        let handle = thread::Builder::new()
            .name(format!("slipway-http-{n}"))
            .spawn(move || {
                runtime.block_on(accept_loop(listeners, thread, stop, grace));
                // Dropping the runtime cancels the connections still open after the grace.
            })?;
        handles.push(handle);
    }
    Ok(handles)
}

/// What one router thread serves with, besides the listen sockets.
struct Thread {
    /// The thread's place among the router's threads.
    index: usize,
    balance: Arc<Balance>,
    /// Connections other threads accepted and handed over to this one.
    inbox: mpsc::UnboundedReceiver<Handover>,
    shared: Arc<Shared>,
}

/// One thread's handles on the listen sockets.
struct Listeners {
    plain: std::net::TcpListener,
    tls: Option<std::net::TcpListener>,
}

async fn accept_loop(
    listeners: Listeners,
    mut thread: Thread,
    stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let adopted = TcpListener::from_std(listeners.plain).and_then(|plain| {
        let tls = listeners.tls.map(TcpListener::from_std).transpose()?;
        Ok((plain, tls))
    });
    let (listener, tls_listener) = match adopted {
        Ok(adopted) => adopted,
        Err(e) => {
            tracing::error!(code = "router_listen", error = %e, "route: cannot accept");
            return;
        }
    };
    tokio::spawn(async {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            pool::sweep();
        }
    });
    // Each connection task holds a sender; when all are gone, the channel closes.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    // This thread's connections watch a stop of their own, passed on from `stop`: a watch shared
    // by every thread would have each request lock and write the same cache line on all cores.
    let (local_stop, local_rx) = watch::channel(false);
    let serve = |client: TcpStream, peer: SocketAddr, over_tls: bool, counted: Counted| {
        let shared = Arc::clone(&thread.shared);
        let stop = local_rx.clone();
        let open = open_tx.clone();
        tokio::spawn(async move {
            if over_tls {
                tls_connection(client, peer, &shared, stop).await;
            } else {
                connection(client, peer, &shared, stop).await;
            }
            drop((open, counted));
        });
    };
    let stopping = stopped(stop);
    tokio::pin!(stopping);
    loop {
        let (accepted, over_tls) = tokio::select! {
            biased;
            () = &mut stopping => break,
            Some(handover) = thread.inbox.recv() => {
                take_over(handover, serve);
                continue;
            }
            accepted = listener.accept() => (accepted, false),
            accepted = accept_on(tls_listener.as_ref()) => (accepted, true),
        };
        let (client, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(code = "router_accept", error = %e, "route: accept failed");
                // Out of file descriptors: accepting again at once would fail the same way.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let counted = thread.balance.place(thread.index);
        if counted.thread() == thread.index {
            serve(client, peer, over_tls, counted);
            continue;
        }
        let stream = match client.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(code = "router_accept", error = %e, "route: cannot hand a connection over");
                continue;
            }
        };
        let handover = Handover {
            stream,
            peer,
            over_tls,
            counted,
        };
        if let Err(mut handover) = thread.balance.hand_over(handover) {
            handover.counted.move_to(thread.index);
            take_over(handover, serve);
        }
    }
    // Connections handed over before the stop were accepted: they are served like the rest.
    thread.inbox.close();
    while let Some(handover) = thread.inbox.recv().await {
        take_over(handover, serve);
    }
    let _ = local_stop.send(true);
    drop(listener);
    drop(tls_listener);
    drop(open_tx);
    let _ = timeout(grace, open_rx.recv()).await;
}

/// Serves on this thread a connection that another thread accepted and counted against this one.
fn take_over(handover: Handover, serve: impl Fn(TcpStream, SocketAddr, bool, Counted)) {
    match TcpStream::from_std(handover.stream) {
        Ok(client) => serve(client, handover.peer, handover.over_tls, handover.counted),
        Err(e) => {
            tracing::warn!(code = "router_accept", error = %e, "route: cannot take a connection over");
        }
    }
}

/// Resolves once `stop` turns true; never, if its sender is dropped without stopping.
async fn stopped(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The next connection on `listener`; never, when there is none.
async fn accept_on(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// `client` as pingora's stream, with the socket details its proxy logs and reads.
fn l4_stream(client: TcpStream) -> L4Stream {
    let fd = client.as_raw_fd();
    let mut stream = L4Stream::from(client);
    stream.set_socket_digest(SocketDigest::from_raw_fd(fd));
    stream
}

/// Serves one plain client connection: HTTP/2 with prior knowledge goes to pingora, anything
/// else is HTTP/1.x served here.
async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let _ = client.set_nodelay(true);
    match sniff(&client).await {
        Some(true) => {
            ServerApp::process_new(&shared.h2, Box::new(l4_stream(client)), &stop).await;
        }
        Some(false) => serve_h1(client, peer, shared.port, false, shared, &stop).await,
        None => {}
    }
}

/// Serves one TLS client connection: the handshake, then HTTP/2 (by ALPN) by pingora, else
/// HTTP/1.x here.
async fn tls_connection(
    client: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let (Some(acceptor), Some(listener)) = (&shared.acceptor, &shared.tls) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let stream = match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(l4_stream(client))).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(code = "tls_handshake", client = %peer.ip(), error = %e, "route: TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(code = "tls_handshake", client = %peer.ip(), "route: TLS handshake timed out");
            return;
        }
    };
    if tls::is_h2(&stream) {
        ServerApp::process_new(&shared.h2, Box::new(stream), &stop).await;
    } else {
        serve_h1(stream, peer, listener.port, true, shared, &stop).await;
    }
}

/// Serves HTTP/1.x requests on `client` until either side closes or the router stops.
async fn serve_h1<S: ClientIo>(
    client: S,
    peer: SocketAddr,
    port: u16,
    https: bool,
    shared: &Shared,
    stop: &watch::Receiver<bool>,
) {
    let mut conn = Conn {
        client,
        peer: peer.ip().to_string(),
        port,
        https,
        buf: BytesMut::with_capacity(8 * 1024),
        ubuf: BytesMut::new(),
        head: Vec::with_capacity(1024),
        out: Vec::with_capacity(2 * 1024),
        text: RequestText::default(),
        timer: Deadline::new(CLIENT_TIMEOUT),
        stopping: Box::pin(stopped(stop.clone())),
        served: false,
    };
    while conn.serve_one(shared).await == Next::KeepAlive && !*stop.borrow() {
        conn.served = true;
    }
}

/// A client connection: TCP, or TLS over it.
trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// Writes what the socket takes without waiting; `WouldBlock` when it takes nothing now or
    /// cannot tell.
    fn try_write_now(&self, bytes: &[u8]) -> std::io::Result<usize>;
}

impl ClientIo for TcpStream {
    fn try_write_now(&self, bytes: &[u8]) -> std::io::Result<usize> {
        self.try_write(bytes)
    }
}

impl ClientIo for SslStream<L4Stream> {
    fn try_write_now(&self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
}

/// Whether the client opens with HTTP/2's preface, without consuming anything; `None` when it
/// closes or stays silent first.
async fn sniff(client: &TcpStream) -> Option<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = timeout(left, client.peek(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        // The rest of the preface is on its way: `peek` would return at once with the same
        // bytes, so wait a little before looking again.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// How forwarding a request failed.
enum Fault {
    /// The client went away or broke the protocol mid-body; nothing more can be sent.
    Client(String),
    /// The request was refused, with this answer, before the app answered.
    Answer(Failure, String),
}

/// One client connection and its buffers.
struct Conn<S> {
    client: S,
    /// The client's address, as the text X-Forwarded-For carries.
    peer: String,
    /// The port the client connected to, sent as X-Forwarded-Port.
    port: u16,
    /// Whether the client connected over TLS.
    https: bool,
    /// Bytes read from the client and not yet used.
    buf: BytesMut,
    /// Bytes read from the app and not yet used.
    ubuf: BytesMut,
    /// The request head for the app, kept while the request is forwarded (and retried).
    head: Vec<u8>,
    /// A head being written, with the body bytes that go out with it.
    out: Vec<u8>,
    /// Room for the text of the next request.
    text: RequestText,
    /// The deadline of the IO under way.
    timer: Deadline,
    /// Resolves when the router stops; made once per connection, polled while it is idle.
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Whether a request was answered on this connection already.
    served: bool,
}

thread_local! {
    /// Requests this thread is forwarding now, from their head read to their answer sent (a
    /// tunnel or a long download counts all along).
    static IN_PROGRESS: Cell<usize> = const { Cell::new(0) };
}

/// Counts a request as in progress on this thread while it lives.
struct InProgress;

impl InProgress {
    fn start() -> InProgress {
        IN_PROGRESS.with(|n| n.set(n.get() + 1));
        InProgress
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        IN_PROGRESS.with(|n| n.set(n.get() - 1));
    }
}

/// Before a request or an answer is written: when other requests are in progress on this
/// thread, lets those that are ready run first, so that a turn of the event loop reads and
/// parses what is ready, then writes. Measured with `bench/router.sh`'s load: +6.7% requests/s
/// at 64 connections, with as many context switches per request as before, so the gain is not
/// fewer wake-ups. A lone request writes at once.
async fn let_others_go_first() {
    if IN_PROGRESS.with(Cell::get) > 1 {
        tokio::task::yield_now().await;
    }
}

/// The deadline of a connection's IO under way, on one timer per connection. Each [`within`]
/// moves the deadline on, but the timer only ever moves earlier: when it fires before the
/// deadline, it is set to the deadline then. A busy connection's timer so fires about once per
/// timeout, instead of being reset for every read, which was a visible share of each request.
struct Deadline {
    at: tokio::time::Instant,
    timer: Pin<Box<Sleep>>,
}

impl Deadline {
    fn new(limit: Duration) -> Deadline {
        let at = tokio::time::Instant::now() + limit;
        Deadline {
            at,
            timer: Box::pin(tokio::time::sleep_until(at)),
        }
    }
}

/// Runs `io` until it completes or `limit` passes (`None`), on a connection's `deadline`.
async fn within<T>(
    deadline: &mut Deadline,
    limit: Duration,
    io: impl Future<Output = T>,
) -> Option<T> {
    deadline.at = tokio::time::Instant::now() + limit;
    if deadline.timer.deadline() > deadline.at {
        deadline.timer.as_mut().reset(deadline.at);
    }
    let mut io = std::pin::pin!(io);
    loop {
        tokio::select! {
            biased;
            out = &mut io => return Some(out),
            () = deadline.timer.as_mut() => {}
        }
        if tokio::time::Instant::now() >= deadline.at {
            return None;
        }
        let at = deadline.at;
        deadline.timer.as_mut().reset(at);
    }
}

/// What the access log and the counters need of one request.
struct Record<'a> {
    req: &'a head::Request,
    route: Option<&'a Arc<AppRoute>>,
    backend: Option<SocketAddr>,
    attempts: usize,
    status: u16,
    bytes: u64,
    started: Instant,
    /// When the answer was sent, if the clock was read for it already.
    ended: Option<Instant>,
}

impl Record<'_> {
    fn log(&self) {
        let ended = self.ended.unwrap_or_else(Instant::now);
        let elapsed = ended.saturating_duration_since(self.started);
        if let Some(route) = self.route {
            route.stats().record(self.status, elapsed);
        }
        Entry {
            method: self.req.method.as_str(),
            host: &self.req.host,
            path: self.req.target.split('?').next().unwrap_or(""),
            status: self.status,
            app: self.route.map_or("", |r| r.app.as_str()),
            backend: self.backend,
            attempts: self.attempts,
            bytes: self.bytes,
            service_ms: elapsed.as_millis() as u64,
            request_id: &self.req.request_id,
        }
        .log();
    }
}

impl<S: ClientIo> Conn<S> {
    /// Reads one request and answers it.
    async fn serve_one(&mut self, shared: &Shared) -> Next {
        let limits = &shared.limits;
        let mut received = None;
        let req = loop {
            // Between requests there is nothing to parse, and the clock is read when the next
            // request's first bytes are in: that is when it started.
            if !self.buf.is_empty() {
                let (started, at) =
                    *received.get_or_insert_with(|| (Instant::now(), SystemTime::now()));
                let fwd = Forwarding {
                    client: Some(&self.peer),
                    proto: if self.https { "https" } else { "http" },
                    port: self.port,
                    start_ms: at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                };
                match head::request(&self.buf, &fwd, &mut self.head, &mut self.text) {
                    Ok(req) => break (req, started),
                    // A head over the limit is still read up to twice the limit, so that its
                    // 431 can be counted against the app it names.
                    Err(HeadError::Partial) if self.buf.len() > 2 * limits.max_header_bytes => {
                        return self.refuse(Failure::HeadersTooLarge, "").await;
                    }
                    Err(HeadError::Partial) => {}
                    Err(HeadError::TooManyFields) => {
                        return self.refuse(Failure::HeadersTooLarge, "").await;
                    }
                    Err(HeadError::Invalid(why)) => {
                        return self.refuse(Failure::BadRequest(400), why).await;
                    }
                }
            }
            match self.read_client().await {
                Some(n) if n > 0 => {}
                _ => return Next::Close,
            }
        };
        let (req, started) = req;
        self.buf.advance(req.head_len);

        let mut record = Record {
            req: &req,
            route: None,
            backend: None,
            attempts: 0,
            status: 0,
            bytes: 0,
            started,
            ended: None,
        };
        let snapshot = shared.routes.snapshot();
        let Some(route) = snapshot.lookup(&req.host) else {
            tracing::info!(
                code = Failure::NoRoute.code(),
                host = %req.host,
                request_id = %req.request_id,
                "route: no app at this host"
            );
            return self.page(Failure::NoRoute, &mut record).await;
        };
        record.route = Some(route);
        if req.head_len > limits.max_header_bytes {
            tracing::info!(
                code = Failure::HeadersTooLarge.code(),
                app = %route.app,
                request_id = %req.request_id,
                "route: request header too large"
            );
            return self.page(Failure::HeadersTooLarge, &mut record).await;
        }
        if !self.https
            && let Some(tls) = &shared.tls
            && route.https_enforced
            && tls.serves(&req.host)
        {
            return self.redirect(tls.port, &mut record).await;
        }
        if route.maintenance {
            return self.page(Failure::Maintenance, &mut record).await;
        }
        if let (Some(max), Framing::Length(n)) = (route.max_body, req.framing)
            && n > max
        {
            tracing::info!(
                code = Failure::BodyTooLarge.code(),
                app = %route.app,
                request_id = %req.request_id,
                "route: request body over the app's limit"
            );
            return self.page(Failure::BodyTooLarge, &mut record).await;
        }
        let Some(lease) = route.pick() else {
            tracing::warn!(
                code = Failure::NoBackend.code(),
                app = %route.app,
                host = %req.host,
                request_id = %req.request_id,
                "route: no ready instance"
            );
            return self.page(Failure::NoBackend, &mut record).await;
        };
        if req.expect_continue
            && req.framing != Framing::Empty
            && self.buf.is_empty()
            && self
                .write_client_raw(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return Next::Close;
        }
        // Taken and put back, so that its room is kept for the next request.
        let upstream_head = std::mem::take(&mut self.head);
        let in_progress = InProgress::start();
        let next = self
            .forward(shared, route, lease, &upstream_head, &mut record)
            .await;
        drop(in_progress);
        self.head = upstream_head;
        record.log();
        let next = match next {
            Next::KeepAlive if req.keep_alive => Next::KeepAlive,
            _ => Next::Close,
        };
        self.text = req.into_text();
        next
    }

    /// Sends the request to one of the app's instances and its answer back. `record.status` is
    /// what the client got.
    async fn forward(
        &mut self,
        shared: &Shared,
        route: &Arc<AppRoute>,
        mut lease: Lease,
        upstream_head: &[u8],
        record: &mut Record<'_>,
    ) -> Next {
        let limits = &shared.limits;
        let req = record.req;
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut fresh_only = false;
        loop {
            let backend = lease.addr();
            record.backend = Some(backend);
            record.attempts += 1;
            let pooled = if fresh_only {
                None
            } else {
                pool::take(backend, record.started)
            };
            let reused = pooled.is_some();
            let mut upstream = match pooled {
                Some(stream) => stream,
                None => match connect(backend, limits.connect_timeout).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        route.quarantine(backend);
                        tried.push(backend);
                        let retry = tried.len() < route.backends.len();
                        tracing::debug!(
                            code = Failure::UpstreamConnect.code(),
                            app = %route.app,
                            %backend,
                            retry,
                            request_id = %req.request_id,
                            error = %e,
                            "route: cannot connect to instance"
                        );
                        let next = if retry {
                            drop(lease);
                            route.pick_excluding(&tried)
                        } else {
                            None
                        };
                        match next {
                            Some(next) => {
                                lease = next;
                                continue;
                            }
                            None => {
                                return self
                                    .upstream_fault(Failure::UpstreamConnect, &e, record)
                                    .await;
                            }
                        }
                    }
                },
            };

            // The head goes out with whatever of the body has arrived, in one write.
            self.out.clear();
            self.out.extend_from_slice(upstream_head);
            let mut body = BodyState::request(req.framing, route.max_body);
            let taken = match body.take(&self.buf, &mut self.out) {
                Ok(taken) => taken,
                Err(fault) => return self.fault(fault, record).await,
            };
            self.buf.advance(taken);
            let_others_go_first().await;
            let sent = write_within(
                &mut self.timer,
                limits.read_timeout,
                &mut upstream,
                &self.out,
            )
            .await;
            if let Err(e) = sent {
                if reused && req.framing == Framing::Empty {
                    // The app closed the pooled connection just before it was used.
                    fresh_only = true;
                    record.attempts -= 1;
                    continue;
                }
                let failure = if e.kind() == std::io::ErrorKind::TimedOut {
                    Failure::UpstreamTimeout
                } else {
                    Failure::UpstreamFailed
                };
                return self.upstream_fault(failure, &e, record).await;
            }
            // The rest of the body streams through; an app that stops reading (to answer early)
            // may still have an answer to read.
            let body_sent = match self
                .stream_request_body(&mut upstream, &mut body, limits.read_timeout)
                .await
            {
                Ok(()) => true,
                Err(fault @ Fault::Client(_)) => return self.fault(fault, record).await,
                Err(Fault::Answer(failure, why)) => {
                    if failure == Failure::UpstreamFailed {
                        false
                    } else {
                        return self.fault(Fault::Answer(failure, why), record).await;
                    }
                }
            };

            let client = ClientSide {
                head_request: req.method == http::Method::HEAD,
                minor: req.minor,
                keep_alive: req.keep_alive && body_sent,
                request_id: &req.request_id,
            };
            let resp = match self
                .read_response_head(&mut upstream, &client, limits)
                .await
            {
                Ok(resp) => resp,
                Err(ReadFault::Closed)
                    if reused && req.framing == Framing::Empty && self.ubuf.is_empty() =>
                {
                    fresh_only = true;
                    record.attempts -= 1;
                    continue;
                }
                Err(ReadFault::Closed) => {
                    let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                    return self
                        .upstream_fault(Failure::UpstreamFailed, &e, record)
                        .await;
                }
                Err(ReadFault::Timeout) => {
                    let e = std::io::Error::from(std::io::ErrorKind::TimedOut);
                    return self
                        .upstream_fault(Failure::UpstreamTimeout, &e, record)
                        .await;
                }
                Err(ReadFault::Io(e)) => {
                    return self
                        .upstream_fault(Failure::UpstreamFailed, &e, record)
                        .await;
                }
                Err(ReadFault::Invalid(why)) => {
                    let e = std::io::Error::new(std::io::ErrorKind::InvalidData, why);
                    return self
                        .upstream_fault(Failure::UpstreamFailed, &e, record)
                        .await;
                }
                Err(ReadFault::ClientGone) => return Next::Close,
            };
            if resp.status == 101 && !req.upgrade {
                let e = std::io::Error::new(std::io::ErrorKind::InvalidData, "101 unasked");
                return self
                    .upstream_fault(Failure::UpstreamFailed, &e, record)
                    .await;
            }
            record.status = resp.status;
            if resp.status == 101 {
                self.tunnel(upstream, record).await;
                return Next::Close;
            }
            let dechunk = resp.framing == Framing::Chunked && req.minor == 0;
            return match self
                .stream_response(&mut upstream, &resp, dechunk, limits.read_timeout)
                .await
            {
                Ok(bytes) => {
                    record.bytes = bytes;
                    let ended = Instant::now();
                    record.ended = Some(ended);
                    if resp.reusable && self.ubuf.is_empty() {
                        pool::put(backend, upstream, ended);
                    }
                    let delimited = resp.framing != Framing::UntilClose && !dechunk;
                    if body_sent && delimited && req.framing != Framing::UntilClose {
                        Next::KeepAlive
                    } else {
                        Next::Close
                    }
                }
                Err((bytes, why)) => {
                    record.bytes = bytes;
                    tracing::warn!(
                        code = Failure::UpstreamFailed.code(),
                        app = %route.app,
                        %backend,
                        request_id = %req.request_id,
                        error = %why,
                        "route: response cut short"
                    );
                    Next::Close
                }
            };
        }
    }

    /// Copies the rest of the request body from the client to the app.
    async fn stream_request_body(
        &mut self,
        upstream: &mut TcpStream,
        body: &mut BodyState,
        write_timeout: Duration,
    ) -> Result<(), Fault> {
        while !body.is_done() {
            let read = read_into(&mut self.client, &mut self.buf);
            match within(&mut self.timer, CLIENT_TIMEOUT, read).await {
                Some(Ok(n)) if n > 0 => {}
                Some(Ok(_)) => return Err(Fault::Client("closed during the body".into())),
                Some(Err(e)) => return Err(Fault::Client(e.to_string())),
                None => return Err(Fault::Client("timed out sending the body".into())),
            }
            self.out.clear();
            let taken = body.take(&self.buf, &mut self.out)?;
            self.buf.advance(taken);
            let sent = write_within(&mut self.timer, write_timeout, upstream, &self.out).await;
            if let Err(e) = sent {
                return Err(Fault::Answer(Failure::UpstreamFailed, e.to_string()));
            }
        }
        Ok(())
    }

    /// Reads the app's response head into `self.out`, rewritten for the client; interim
    /// answers (103) are passed on.
    async fn read_response_head(
        &mut self,
        upstream: &mut TcpStream,
        client: &ClientSide<'_>,
        limits: &RouterLimits,
    ) -> Result<head::Response, ReadFault> {
        self.ubuf.clear();
        loop {
            match head::response(&self.ubuf, client, &mut self.out) {
                Ok(resp) if (100..200).contains(&resp.status) && resp.status != 101 => {
                    self.ubuf.advance(resp.head_len);
                    // The router answered `Expect` itself, so the app's 100 is not passed on.
                    if resp.status != 100 {
                        self.flush_out().await.map_err(|_| ReadFault::ClientGone)?;
                    }
                    continue;
                }
                Ok(resp) => {
                    self.ubuf.advance(resp.head_len);
                    return Ok(resp);
                }
                Err(HeadError::Partial) if self.ubuf.len() <= MAX_RESPONSE_HEAD => {}
                Err(HeadError::Partial | HeadError::TooManyFields) => {
                    return Err(ReadFault::Invalid("response head too large"));
                }
                Err(HeadError::Invalid(why)) => return Err(ReadFault::Invalid(why)),
            }
            let read = read_into(upstream, &mut self.ubuf);
            match within(&mut self.timer, limits.read_timeout, read).await {
                Some(Ok(0)) => return Err(ReadFault::Closed),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ReadFault::Io(e)),
                None => return Err(ReadFault::Timeout),
            }
        }
    }

    /// Sends the head in `self.out` and the body after it to the client. Returns the body bytes
    /// sent, or how many were sent before the app failed.
    async fn stream_response(
        &mut self,
        upstream: &mut TcpStream,
        resp: &head::Response,
        dechunk: bool,
        read_timeout: Duration,
    ) -> Result<u64, (u64, String)> {
        let mut body = match resp.framing {
            Framing::Empty => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked if dechunk => BodyState::Dechunk(chunked::Scanner::default()),
            Framing::Chunked => BodyState::Chunked(chunked::Scanner::default(), None),
            Framing::UntilClose => BodyState::UntilClose,
        };
        let mut bytes = 0u64;
        if !body.is_done() && self.ubuf.is_empty() {
            // The body often follows the head within microseconds: one try, without waiting,
            // lets head and body go to the client in one write.
            let _ = upstream.try_read_buf(&mut self.ubuf);
        }
        // A small body of known length is waited for, so that head and body still go out in one
        // write, as nginx's `postpone_output` does: a head written alone costs a segment, a
        // syscall and a wake-up of the client.
        let whole = matches!(resp.framing, Framing::Length(n) if n <= WHOLE_WRITE);
        let mut first_write = true;
        loop {
            let before = self.out.len();
            let taken = body
                .take(&self.ubuf, &mut self.out)
                .map_err(|_| (bytes, "malformed chunked body from the app".to_owned()))?;
            bytes += (self.out.len() - before) as u64;
            self.ubuf.advance(taken);
            if !self.out.is_empty() && (body.is_done() || !whole) {
                if first_write {
                    first_write = false;
                    let_others_go_first().await;
                }
                self.flush_out()
                    .await
                    .map_err(|e| (bytes, format!("client: {e}")))?;
            }
            if body.is_done() {
                return Ok(bytes);
            }
            let read = read_into(upstream, &mut self.ubuf);
            let why = match within(&mut self.timer, read_timeout, read).await {
                Some(Ok(0)) if matches!(body, BodyState::UntilClose) => return Ok(bytes),
                Some(Ok(0)) => "closed before the end of the body".to_owned(),
                Some(Ok(_)) => continue,
                Some(Err(e)) => e.to_string(),
                None => "timed out in the body".to_owned(),
            };
            // What was held back goes out, so the client sees the answer cut short, as it
            // would have without the wait.
            let _ = self.flush_out().await;
            return Err((bytes, why));
        }
    }

    /// Writes `self.out` to the client and empties it.
    async fn flush_out(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let sent = self.write_client_raw(&out).await;
        self.out = out;
        self.out.clear();
        sent
    }

    /// After a 101: the head in `self.out`, then bytes both ways until either side closes.
    async fn tunnel(&mut self, mut upstream: TcpStream, record: &mut Record<'_>) {
        self.out.extend_from_slice(&self.ubuf);
        self.ubuf.clear();
        let out = std::mem::take(&mut self.out);
        if self.write_client_raw(&out).await.is_err() {
            return;
        }
        if !self.buf.is_empty() && upstream.write_all(&self.buf).await.is_err() {
            return;
        }
        self.buf.clear();
        if let Ok((_, down)) = tokio::io::copy_bidirectional(&mut self.client, &mut upstream).await
        {
            record.bytes = down;
        }
    }

    async fn read_client(&mut self) -> Option<usize> {
        // A kept-alive connection idle between requests is closed when the router stops, as
        // HTTP lets a server do. A new connection's first request is waited for (within the
        // stop's grace): its client has sent it or is about to, and closing with it unread would
        // reset the connection.
        let between_requests = self.served && self.buf.is_empty();
        let read = within(
            &mut self.timer,
            CLIENT_TIMEOUT,
            read_into(&mut self.client, &mut self.buf),
        );
        if !between_requests {
            return read.await?.ok();
        }
        tokio::select! {
            // Bytes already sent are read rather than reset.
            biased;
            read = read => read?.ok(),
            () = self.stopping.as_mut() => None,
        }
    }

    async fn write_client_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        write_within(&mut self.timer, CLIENT_TIMEOUT, &mut self.client, bytes).await
    }

    /// Answers a request whose head could not be used, and closes.
    async fn refuse(&mut self, failure: Failure, why: &str) -> Next {
        let request_id = crate::forwarded::new_request_id();
        tracing::info!(
            code = failure.code(),
            status = failure.status(),
            request_id = %request_id,
            error = why,
            "route: request refused"
        );
        let page = page_bytes(failure, "", "", &request_id, false, true);
        let _ = self.write_client_raw(&page).await;
        self.linger().await;
        Next::Close
    }

    /// Answers with the router's page for `failure`.
    async fn page(&mut self, failure: Failure, record: &mut Record<'_>) -> Next {
        let req = record.req;
        // A body that was not read leaves the connection unusable for another request.
        let close = !req.keep_alive || req.framing != Framing::Empty;
        let sent = self.send_page(failure, record, close).await;
        record.log();
        if sent.is_err() {
            return Next::Close;
        }
        if close {
            self.linger().await;
            return Next::Close;
        }
        Next::KeepAlive
    }

    async fn redirect(&mut self, https_port: u16, record: &mut Record<'_>) -> Next {
        let req = record.req;
        let status = redirect::status(&req.method);
        let location = redirect::location(&req.host, https_port, &req.target);
        let close = !req.keep_alive || req.framing != Framing::Empty;
        let reason = if status == 301 {
            "Moved Permanently"
        } else {
            "Permanent Redirect"
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nLocation: {location}\r\nContent-Length: 0\r\nCache-Control: no-store\r\nX-Request-Id: {}\r\n{}\r\n",
            req.request_id,
            if close { "Connection: close\r\n" } else { "" }
        );
        record.status = status;
        let sent = self.write_client_raw(head.as_bytes()).await;
        record.log();
        if sent.is_err() || close {
            self.linger().await;
            return Next::Close;
        }
        Next::KeepAlive
    }

    /// Answers an instance's failure with its page (when nothing of the answer was sent yet)
    /// and closes.
    async fn upstream_fault(
        &mut self,
        failure: Failure,
        e: &std::io::Error,
        record: &mut Record<'_>,
    ) -> Next {
        let req = record.req;
        tracing::warn!(
            code = failure.code(),
            status = failure.status(),
            app = %record.route.map_or("", |r| r.app.as_str()),
            backend = %record.backend.map(|b| b.to_string()).unwrap_or_default(),
            attempts = record.attempts,
            request_id = %req.request_id,
            error = %e,
            "route: instance failed"
        );
        self.answer_and_close(failure, record).await
    }

    async fn fault(&mut self, fault: Fault, record: &mut Record<'_>) -> Next {
        match fault {
            Fault::Client(why) => {
                tracing::info!(
                    code = "client_gone",
                    app = %record.route.map_or("", |r| r.app.as_str()),
                    request_id = %record.req.request_id,
                    error = %why,
                    "route: request failed on the client side"
                );
                Next::Close
            }
            Fault::Answer(failure, why) => {
                tracing::info!(
                    code = failure.code(),
                    status = failure.status(),
                    app = %record.route.map_or("", |r| r.app.as_str()),
                    request_id = %record.req.request_id,
                    error = %why,
                    "route: request refused"
                );
                self.answer_and_close(failure, record).await
            }
        }
    }

    /// Sends the page for `failure` and notes its status in `record`.
    async fn send_page(
        &mut self,
        failure: Failure,
        record: &mut Record<'_>,
        close: bool,
    ) -> std::io::Result<()> {
        let req = record.req;
        let app = record.route.map_or("", |r| r.app.as_str());
        let head_only = req.method == http::Method::HEAD;
        let page = page_bytes(failure, &req.host, app, &req.request_id, head_only, close);
        record.status = failure.status();
        self.write_client_raw(&page).await
    }

    async fn answer_and_close(&mut self, failure: Failure, record: &mut Record<'_>) -> Next {
        if self.send_page(failure, record, true).await.is_ok() {
            self.linger().await;
        }
        Next::Close
    }

    /// Closes the sending side, then reads and drops what the client still sends for a moment,
    /// so that closing with unread bytes does not reset the connection before the client has
    /// read the answer.
    async fn linger(&mut self) {
        if self.client.shutdown().await.is_err() {
            return;
        }
        let mut drained = 0;
        let mut scratch = [0u8; 8192];
        let deadline = Instant::now() + LINGER_TIME;
        while drained < LINGER_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.client.read(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => return,
            }
        }
    }
}

/// How reading the app's response head failed.
enum ReadFault {
    /// The app closed the connection before a complete head.
    Closed,
    Timeout,
    Io(std::io::Error),
    Invalid(&'static str),
    /// The client went away while an interim answer was passed on.
    ClientGone,
}

/// Where a body stands as it passes through.
enum BodyState {
    Done,
    /// This many bytes left.
    Length(u64),
    /// Chunks, passed on as they are, with the limit on their data if there is one.
    Chunked(chunked::Scanner, Option<u64>),
    /// Chunks, of which only the data is passed on.
    Dechunk(chunked::Scanner),
    /// Everything until the sender closes.
    UntilClose,
}

impl BodyState {
    /// The state of a request body with `framing`, limited to `max` data bytes. (A request
    /// never runs until the client closes: without a length or chunks it has no body.)
    fn request(framing: Framing, max: Option<u64>) -> BodyState {
        match framing {
            Framing::Empty | Framing::UntilClose => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(chunked::Scanner::default(), max),
        }
    }

    fn is_done(&self) -> bool {
        match self {
            BodyState::Done => true,
            BodyState::Length(n) => *n == 0,
            BodyState::Chunked(scanner, _) | BodyState::Dechunk(scanner) => scanner.is_done(),
            BodyState::UntilClose => false,
        }
    }

    /// Appends to `out` what of `buf` belongs to the body (only the data, when dechunking) and
    /// returns how many bytes of `buf` that was.
    fn take(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Result<usize, Fault> {
        match self {
            BodyState::Done => Ok(0),
            BodyState::Length(left) => {
                let n = (*left).min(buf.len() as u64) as usize;
                out.extend_from_slice(&buf[..n]);
                *left -= n as u64;
                Ok(n)
            }
            BodyState::Chunked(scanner, max) => {
                let n = scanner
                    .scan(buf, |_| {})
                    .map_err(|e| Fault::Answer(Failure::BadRequest(400), e.0.to_owned()))?;
                if max.is_some_and(|max| scanner.data_bytes() > max) {
                    return Err(Fault::Answer(
                        Failure::BodyTooLarge,
                        "request body over the app's limit".to_owned(),
                    ));
                }
                out.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            BodyState::Dechunk(scanner) => scanner
                .scan(buf, |data| out.extend_from_slice(data))
                .map_err(|e| Fault::Answer(Failure::UpstreamFailed, e.0.to_owned())),
            BodyState::UntilClose => {
                out.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }
}

/// Writes all of `bytes`, or fails with `TimedOut` when the peer has not taken them within
/// `limit`. The socket's buffer usually takes them at once, and then no timer is involved.
async fn write_within(
    timer: &mut Deadline,
    limit: Duration,
    stream: &mut impl ClientIo,
    bytes: &[u8],
) -> std::io::Result<()> {
    let written = match stream.try_write_now(bytes) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    let rest = &bytes[written..];
    if rest.is_empty() {
        return Ok(());
    }
    match within(timer, limit, stream.write_all(rest)).await {
        Some(result) => result,
        None => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Reads what the socket has into the spare room of `buf`, making room first.
async fn read_into(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    stream.read_buf(buf).await
}

async fn connect(backend: SocketAddr, limit: Duration) -> std::io::Result<TcpStream> {
    let stream = match timeout(limit, TcpStream::connect(backend)).await {
        Ok(stream) => stream?,
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The router's page for `failure` as a whole HTTP/1.1 response.
fn page_bytes(
    failure: Failure,
    host: &str,
    app: &str,
    request_id: &str,
    head_only: bool,
    close: bool,
) -> Vec<u8> {
    let message = failure.message(host, app);
    let body = pages::render(failure, &message, request_id);
    let status = failure.status();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Request-Id: {request_id}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(&body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_yields_before_writing_only_among_others_in_progress() {
        let ready_at_once = || async {
            let wait = std::pin::pin!(let_others_go_first());
            futures_util::poll!(wait).is_ready()
        };
        let first = InProgress::start();
        assert!(ready_at_once().await, "a lone request writes at once");
        let second = InProgress::start();
        assert!(
            !ready_at_once().await,
            "two in progress: the writer lets the other go first"
        );
        drop(second);
        assert!(ready_at_once().await);
        drop(first);
        assert_eq!(IN_PROGRESS.with(Cell::get), 0);
    }
}
