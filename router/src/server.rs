//! The router's lifecycle: bind the listen sockets, start the threads that serve them, stop
//! them when asked.
//!
//! Both listeners are served by `h1` on `RouterConfig::threads` threads of its own, each a
//! single-threaded runtime accepting on the shared sockets: HTTP/1.x by the router's own code,
//! plain or after the TLS handshake; HTTP/2 connections (h2c by prior knowledge, h2 by ALPN) are
//! handed from there to pingora's proxy, on the same thread. Pingora's `Server` is not used, so
//! none of its signal handlers or `exit` paths are installed; [`RouterHandle::stop`] is the only
//! way the router stops.
//!
//! Binding. The listen sockets are bound here, on the caller's thread, so a taken port is an
//! error returned by [`start`] rather than a panic inside a runtime; port 0 works.
//!
//! Protocols. The plain listener speaks HTTP/1.x and, to clients that open with HTTP/2's
//! preface (prior knowledge), h2c; the TLS listener offers h2 then http/1.1 by ALPN. Upstream
//! connections are HTTP/1.1 either way.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use slipway_core::routes::Routes;
use tokio::sync::watch;

use crate::h1;
use crate::proxy::Router;
use crate::tls::TlsListener;
use crate::{RouterConfig, RouterError, Sockets, TlsConfig};

/// How long requests in flight may run on after [`RouterHandle::stop`] before they are cut.
const STOP_GRACE_SECONDS: u64 = 2;

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
    let (http_listener, local_addr) = listen(config.listen, sockets.http)?;
    let (tls_listener, tls_addr, acceptor, tls) = match tls {
        Some(tls) => {
            let acceptor =
                crate::tls::Acceptor::new(tls.certs.clone()).map_err(RouterError::Tls)?;
            let (listener, addr) = listen(tls.listen, sockets.https)?;
            let listening = TlsListener::new(addr.port(), tls.certs);
            (Some(listener), Some(addr), Some(acceptor), Some(listening))
        }
        None => (None, None, None, None),
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let router =
        Router::new(routes.clone(), local_addr.port(), config.limits).with_tls(tls.clone());
    // HTTP/2 connections (h2c on the plain port, h2 on the TLS port) go to pingora, on the
    // thread that accepted them.
    let mut h2 = pingora::proxy::http_proxy(&Arc::new(server_conf(config.threads)), router);
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    h2.server_options = Some(options);
    let shared = Arc::new(h1::Shared {
        routes,
        limits: config.limits,
        port: local_addr.port(),
        tls,
        acceptor,
        h2: Arc::new(h2),
    });
    let grace = Duration::from_secs(STOP_GRACE_SECONDS);
    let threads = h1::spawn(
        http_listener,
        tls_listener,
        config.threads,
        shared,
        stop_rx,
        grace,
    )
    .map_err(RouterError::Spawn)?;
    tracing::info!(listen = %local_addr, tls = ?tls_addr, "route: router listening");
    Ok(RouterHandle {
        local_addr,
        tls_addr,
        stop: stop_tx,
        threads,
    })
}

/// A listen socket, `inherited` or bound to `addr`, with its actual address.
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
    // Each router thread registers the socket with its runtime, which needs it non-blocking.
    listener.set_nonblocking(true).map_err(bind_error)?;
    Ok((listener, local_addr))
}

/// Pingora's settings for its HTTP/2 proxy: its upstream connector sizes itself by `threads`.
fn server_conf(threads: usize) -> ServerConf {
    ServerConf {
        threads,
        ..ServerConf::default()
    }
}
