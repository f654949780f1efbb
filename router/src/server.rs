//! The router's lifecycle: bind the listen sockets, start the threads that serve them, stop
//! them when asked.
//!
//! Plain HTTP is served by `h1` on `RouterConfig::threads` threads of its own, each a
//! single-threaded runtime accepting on the shared socket (h2c connections are handed from there
//! to pingora's proxy, on the same thread). HTTPS is served by pingora's `Server`, on a
//! dedicated OS thread, when there is a TLS listener.
//!
//! Signals. Pingora's `Server::run_forever` watches SIGINT, SIGTERM and SIGQUIT (through
//! `UnixShutdownSignalWatch`) and ends with `std::process::exit`. The router calls `Server::run`
//! instead, with [`StopSignal`] as its `ShutdownSignalWatch`: it resolves only when
//! [`RouterHandle::stop`] is called, so pingora installs no signal handler and `run` returns to
//! the router thread. The server is made from a `ServerConf` value, never from the process's
//! arguments or a configuration file, with `daemon` off and without `bootstrap()`, so none of
//! pingora's other `exit` paths (daemonizing, `--test`, `--upgrade`) can be reached.
//!
//! Binding. The listen sockets are bound here, on the caller's thread, so a taken port is an
//! error returned by [`start`] rather than a panic inside a runtime. Pingora adopts the TLS
//! socket through its listen-fd table, the mechanism it uses to hand sockets over during
//! graceful upgrades: [`PreBound`] gives the service a table that holds the socket under its
//! address, and pingora listens on it instead of binding again. There is no window between a
//! check and a second bind, and port 0 works.
//!
//! Protocols. The plain listener speaks HTTP/1.x and, to clients that open with HTTP/2's
//! preface (prior knowledge), h2c; the TLS listener offers h2 then http/1.1 by ALPN. Upstream
//! connections are HTTP/1.1 either way.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{
    Fds, ListenFds, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch,
};
use pingora::services::Service;
use pingora::services::listening::Service as ListeningService;
use slipway_core::routes::Routes;
use slipway_core::tls::Certs;
use tokio::sync::watch;

use crate::h1;
use crate::proxy::Router;
use crate::tls::TlsListener;
use crate::{RouterConfig, RouterError, Sockets, TlsConfig};

/// How long requests in flight may run on after [`RouterHandle::stop`] before they are cut.
const STOP_GRACE_SECONDS: u64 = 2;
/// How long pingora then waits for its runtimes to wind down.
const RUNTIME_SHUTDOWN_SECONDS: u64 = 1;
/// Names the service and its threads (pingora keeps the first 16 characters).
const SERVICE_NAME: &str = "slipway-router";

/// A running router. Dropping it leaves the router running until the process exits.
#[derive(Debug)]
pub struct RouterHandle {
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    /// The plain listener's threads, then pingora's, if it runs.
    threads: Vec<JoinHandle<()>>,
}

impl RouterHandle {
    /// The address the router accepts on, with the actual port when port 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the router accepts HTTPS on, if it does, with the actual port.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Stops accepting connections, lets requests in flight finish for up to
    /// `STOP_GRACE_SECONDS` (2 s), shuts the proxy down and returns.
    ///
    /// This blocks the calling thread for about three seconds; from async code call it through
    /// `tokio::task::spawn_blocking`.
    pub fn stop(self) {
        // The receiver lives as long as the server thread, so a failed send means the thread
        // has already ended; joining it below is all that is left to do.
        let _ = self.stop.send(true);
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!(code = "router_panic", "route: a router thread panicked");
            }
        }
        tracing::info!(listen = %self.local_addr, "route: router stopped");
    }
}

pub(crate) fn start(
    config: RouterConfig,
    routes: Routes,
    tls: Option<TlsConfig>,
    sockets: Sockets,
) -> Result<RouterHandle, RouterError> {
    config.validate()?;
    let http = listen(config.listen, sockets.http)?;
    let tls = match tls {
        Some(tls) => {
            let settings = crate::tls::settings(tls.certs.clone()).map_err(RouterError::Tls)?;
            let (listener, addr) = listen(tls.listen, sockets.https)?;
            Some(TlsEndpoint {
                listener,
                addr,
                settings,
                certs: tls.certs,
            })
        }
        None => None,
    };
    let local_addr = http.1;
    let tls_addr = tls.as_ref().map(|tls| tls.addr);

    let (stop_tx, stop_rx) = watch::channel(false);
    let tls_listener =
        (tls.as_ref()).map(|tls| TlsListener::new(tls.addr.port(), tls.certs.clone()));
    let router = || {
        Router::new(routes.clone(), local_addr.port(), config.limits).with_tls(tls_listener.clone())
    };
    // h2c connections on the plain port go to pingora, on the plain listener's threads.
    let mut h2c = pingora::proxy::http_proxy(&Arc::new(server_conf(config.threads)), router());
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    h2c.server_options = Some(options);
    let shared = Arc::new(h1::Shared {
        routes: routes.clone(),
        limits: config.limits,
        port: local_addr.port(),
        tls: tls_listener.clone(),
        h2c: Arc::new(h2c),
    });
    let grace = Duration::from_secs(STOP_GRACE_SECONDS);
    let mut threads = h1::spawn(http.0, config.threads, shared, stop_rx.clone(), grace)
        .map_err(RouterError::Spawn)?;
    if let Some(tls) = tls {
        let threads_n = config.threads;
        let proxy = router();
        let thread = thread::Builder::new()
            .name(SERVICE_NAME.to_owned())
            .spawn(move || run(tls, threads_n, proxy, stop_rx))
            .map_err(RouterError::Spawn)?;
        threads.push(thread);
    }
    tracing::info!(listen = %local_addr, tls = ?tls_addr, "route: router listening");
    Ok(RouterHandle {
        local_addr,
        tls_addr,
        stop: stop_tx,
        threads,
    })
}

/// A listen socket for pingora to adopt, `inherited` or bound to `addr`; returns it with its
/// actual address.
fn listen(
    addr: SocketAddr,
    inherited: Option<TcpListener>,
) -> Result<(TcpListener, SocketAddr), RouterError> {
    let bind_error = |source| RouterError::Bind { addr, source };
    // Rust's std sets SO_REUSEADDR on listeners, as pingora does when it binds by itself, so a
    // restarted server can take the port back while old connections sit in TIME_WAIT.
    let listener = match inherited {
        Some(listener) => listener,
        None => TcpListener::bind(addr).map_err(bind_error)?,
    };
    let local_addr = listener.local_addr().map_err(bind_error)?;
    // Pingora registers the adopted socket with tokio, which needs it non-blocking.
    listener.set_nonblocking(true).map_err(bind_error)?;
    Ok((listener, local_addr))
}

/// The TLS socket, bound, and what it serves.
struct TlsEndpoint {
    listener: TcpListener,
    addr: SocketAddr,
    settings: TlsSettings,
    certs: Certs,
}

/// Pingora's settings: `threads` runtimes, the stop grace, no work stealing.
fn server_conf(threads: usize) -> ServerConf {
    ServerConf {
        threads,
        grace_period_seconds: Some(STOP_GRACE_SECONDS),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN_SECONDS),
        // One runtime per thread, no work stealing: a request's tasks stay on the thread that
        // accepted its connection. Measured with `../shared/bench/router.sh`'s load, this cut
        // the CPU per request by about 12% and raised throughput by a third.
        //
        // The price: pingora finds a thread's runtime through a `thread_local::ThreadLocal`,
        // whose thread ids are recycled, so a router started after another one stopped in the
        // same process can be handed the stopped runtime and lose its listener. `slipway
        // server` starts one router for the life of the process; tests that stop a router run
        // in a process of their own (`tests/stop.rs`).
        work_stealing: false,
        ..ServerConf::default()
    }
}

/// The TLS thread: runs pingora on the TLS socket until [`StopSignal`] fires.
fn run(tls: TlsEndpoint, threads: usize, router: Router, stop: watch::Receiver<bool>) {
    let mut server = Server::new_with_opt_and_conf(None, server_conf(threads));
    let mut proxy =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, router, SERVICE_NAME);
    let mut fds = Fds::new();
    // Pingora looks sockets up in the table by the exact string the listener was added with.
    // Ownership of the socket passes to pingora, which closes it when the service ends.
    let key = tls.addr.to_string();
    proxy.add_tls_with_settings(&key, None, tls.settings);
    fds.add(key, tls.listener.into_raw_fd());
    server.add_service(PreBound {
        inner: proxy,
        fds: Arc::new(Mutex::new(fds)),
    });

    server.run(RunArgs {
        shutdown_signal: Box::new(StopSignal(stop)),
    });
}

/// Wraps the proxy service so that it listens on the socket [`start`] bound, whatever table
/// the server passes in.
struct PreBound<A> {
    inner: ListeningService<A>,
    fds: ListenFds,
}

#[async_trait]
impl<A> Service for PreBound<A>
where
    ListeningService<A>: Service,
    A: Send + Sync + 'static,
{
    async fn start_service(
        &mut self,
        _server_fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        Service::start_service(
            &mut self.inner,
            Some(self.fds.clone()),
            shutdown,
            listeners_per_fd,
        )
        .await;
    }

    fn name(&self) -> &str {
        Service::name(&self.inner)
    }

    fn threads(&self) -> Option<usize> {
        Service::threads(&self.inner)
    }
}

/// Pingora's shutdown trigger: [`RouterHandle::stop`], never a process signal.
struct StopSignal(watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut stop = self.0.clone();
        let stopped = stop.wait_for(|stop| *stop).await.is_ok();
        if !stopped {
            // The handle was dropped without `stop`: serve until the process exits.
            std::future::pending::<()>().await;
        }
        ShutdownSignal::GracefulTerminate
    }
}
