//! The router: Slipway's HTTP reverse proxy and the `route` step of a deploy. It sends each
//! request to a ready `web` instance of the app whose host name the request carries, using the
//! route table the controller publishes, and answers with a small error page when it cannot.
//!
//! - `server` binds the listen sockets and starts `h1`'s threads, which serve both listeners.
//! - `h1` is HTTP/1.x, plain or over TLS, proxied by the router's own code on per-thread
//!   runtimes (pingora's HTTP/1 path cost twice nginx's CPU per request); HTTP/2 connections
//!   (h2c, and h2 by ALPN) go on to pingora's proxy on the same thread.
//! - `proxy` is the request lifecycle for HTTP/2: which pingora `ProxyHttp` phases the router
//!   overrides, and why.
//! - `tls` is HTTPS: the TLS listener's handshakes and the certificate each picks by
//!   SNI from the published [`CertTable`](slipway_core::tls::CertTable); `redirect` answers
//!   plain HTTP for apps that enforce HTTPS.
//! - `forwarded` holds the header rules (X-Forwarded-*, X-Request-Id, hop-by-hop fields) as plain
//!   functions; `pages` renders the error pages and names each failure with a stable code word.
//!
//! Invariants:
//! - The router never calls the controller, or anything else, on the request path. It reads the
//!   latest [`RouteTable`](slipway_core::routes::RouteTable) snapshot, which never blocks; TLS
//!   handshakes likewise read only the latest certificate snapshot.
//! - The router never takes process signals and never exits the process. The embedding process
//!   (`slipway server`) handles Ctrl-C and SIGTERM and calls [`RouterHandle::stop`].

mod access;
mod forwarded;
mod h1;
mod pages;
mod proxy;
mod redirect;
mod server;
mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use slipway_core::routes::Routes;
use slipway_core::tls::Certs;

pub use access::ACCESS_LOG;
pub use server::RouterHandle;

/// How the router listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// Address to accept plain HTTP on. Default `0.0.0.0:8080` (`SLIPWAY_HTTP_ADDR`). Port 0 asks
    /// the kernel for a free port; [`RouterHandle::local_addr`] tells which one it chose.
    pub listen: SocketAddr,
    /// Worker threads of the proxy's runtime. Default 2; must be at least 1.
    pub threads: usize,
    /// Timeouts and size limits.
    pub limits: RouterLimits,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            threads: 2,
            limits: RouterLimits::default(),
        }
    }
}

/// How long the router waits on an instance, and how large a request it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterLimits {
    /// How long an instance may take to accept a connection before another is tried (502 when
    /// none does). Default 5 s (`SLIPWAY_ROUTER_CONNECT_TIMEOUT_SECS`).
    pub connect_timeout: Duration,
    /// How long an instance may stay silent: before the first byte of its answer, and between
    /// reads after that (504). Default 30 s (`SLIPWAY_ROUTER_READ_TIMEOUT_SECS`).
    pub read_timeout: Duration,
    /// The largest request head (target and headers) forwarded; larger ones get 431.
    /// Default 32 KiB.
    pub max_header_bytes: usize,
}

impl Default for RouterLimits {
    fn default() -> Self {
        RouterLimits {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
        }
    }
}

impl RouterConfig {
    /// Checks the values that the type system does not.
    pub fn validate(&self) -> Result<(), RouterError> {
        if self.threads == 0 {
            return Err(RouterError::Config("router threads must be at least 1"));
        }
        if self.limits.connect_timeout.is_zero() || self.limits.read_timeout.is_zero() {
            return Err(RouterError::Config(
                "router timeouts must be at least 1 second",
            ));
        }
        Ok(())
    }
}

/// How the router accepts HTTPS.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Address to accept TLS on (`SLIPWAY_HTTPS_ADDR`, `slipway server` defaults to
    /// `0.0.0.0:8443`). Port 0 asks the kernel for a free port; [`RouterHandle::tls_addr`] tells
    /// which one it chose.
    pub listen: SocketAddr,
    /// The certificates to present, by server name; the controller publishes changes here and
    /// the next handshake uses them.
    pub certs: Certs,
}

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The configuration was refused by [`RouterConfig::validate`].
    #[error("invalid router config: {0}")]
    Config(&'static str),
    /// The listen socket could not be bound, typically because the port is taken.
    #[error("router cannot listen on {addr}")]
    Bind {
        /// The address from [`RouterConfig::listen`].
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// OpenSSL refused the TLS listener's settings.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// The router's thread could not be started.
    #[error("cannot start the router thread")]
    Spawn(#[source] std::io::Error),
}

/// Starts the proxy on its own OS thread and returns once the listen socket is bound, or with
/// [`RouterError::Bind`] if it cannot be bound.
///
/// Pingora builds and owns its tokio runtimes, so the proxy never runs on the caller's runtime;
/// calling this from async code is fine, as it only binds a socket and spawns a thread.
/// Connections that arrive before the proxy's first `accept` wait in the socket's backlog.
pub fn start(config: RouterConfig, routes: Routes) -> Result<RouterHandle, RouterError> {
    server::start(config, routes, None, Sockets::default())
}

/// Listen sockets the router takes as they are instead of binding its addresses: the ones a
/// service manager opened and passed in (systemd's socket activation). A socket that outlives
/// the process is what makes a restart graceful: connections that arrive while the server
/// restarts wait in its queue for the next process instead of being refused.
#[derive(Debug, Default)]
pub struct Sockets {
    /// For plain HTTP, instead of binding [`RouterConfig::listen`].
    pub http: Option<std::net::TcpListener>,
    /// For HTTPS, instead of binding [`TlsConfig::listen`].
    pub https: Option<std::net::TcpListener>,
}

/// Like [`start`], and also accepts HTTPS as `tls` says: HTTP/2 or HTTP/1.1 by ALPN, a
/// certificate per server name. Both sockets are bound before this returns.
pub fn start_with_tls(
    config: RouterConfig,
    routes: Routes,
    tls: TlsConfig,
) -> Result<RouterHandle, RouterError> {
    server::start(config, routes, Some(tls), Sockets::default())
}

/// Like [`start_with_tls`], on the sockets in `sockets` where there are some.
pub fn start_with_sockets(
    config: RouterConfig,
    routes: Routes,
    tls: TlsConfig,
    sockets: Sockets,
) -> Result<RouterHandle, RouterError> {
    server::start(config, routes, Some(tls), sockets)
}
