//! The request lifecycle over TLS and HTTP/2 (plain HTTP/1.x is `h1`'s, which follows the
//! same steps with the same pages, codes and headers): the [`ProxyHttp`] phases the router
//! overrides, in the order pingora runs them (pingora's `docs/user_guide/phase.md` draws the
//! whole chart). Every other phase keeps pingora's default; in particular bodies are never
//! touched, so pingora streams them in both directions.
//!
//! - `init_downstream_modules`: installs none; the router never compresses, so pingora's default
//!   (its compression module, switched off) would be pure per-request cost.
//! - `request_filter`: reads the host, settles the request id, looks the host up in the current
//!   route-table snapshot and picks a backend. An unknown host is answered 404 (`no_route`) and
//!   an app without a ready instance 503 (`no_backend`), or in maintenance mode 503
//!   (`maintenance`), right here, before any upstream work. A plain HTTP request to an app that
//!   enforces HTTPS is redirected there (see `redirect`) when the router holds a certificate
//!   for its host, so a host without one keeps working over HTTP.
//! - `upstream_peer`: turns the chosen backend into a plain HTTP/1.1 [`HttpPeer`]; pingora keeps
//!   its connections in a keep-alive pool. On a retry it moves on to the app's next backend.
//! - `fail_to_connect`: a failed connect has sent nothing yet, so it is retried on the app's
//!   other backends, each tried once.
//! - `upstream_request_filter`: sets X-Forwarded-For/Proto/Host/Port (Proto `https` and the TLS
//!   port for requests that came over TLS) and X-Request-Id. Pingora's
//!   default upstream request policy has already removed the standard hop-by-hop fields and those
//!   the client's `Connection` names.
//! - `response_filter`: removes the response's hop-by-hop fields that pingora passes through,
//!   answers in HTTP/1.1 even when the app answered in HTTP/1.0, and returns X-Request-Id to
//!   the client.
//! - `fail_to_proxy`: answers a failed request with the router's page for it: 502
//!   (`upstream_connect`, `upstream_failed`), 504 (`upstream_timeout`), 4xx (`bad_request`),
//!   500 (`internal`).
//! - `suppress_error_log`, `suppress_proxy_warn_log`: pingora's own log lines for these failures
//!   are replaced by the router's `tracing` events, which carry the code word.
//! - `logging`: one access event per request, at debug level.
//!
//! Invariant: the request path reads the route table snapshot and nothing else; it never blocks
//! and never calls the controller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::{Error, ErrorType, Result};
use slipway_core::routes::{AppRoute, Lease, Routes};

use crate::RouterLimits;
use crate::access::Entry;
use crate::forwarded::{self, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PORT};
use crate::forwarded::{X_FORWARDED_PROTO, X_REQUEST_ID, X_REQUEST_START};
use crate::pages::{self, Failure};
use crate::redirect;
use crate::tls::TlsListener;

/// How long an idle upstream connection stays in the pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The router's [`ProxyHttp`] implementation.
pub(crate) struct Router {
    routes: Routes,
    /// The port the router accepts on, sent as X-Forwarded-Port; made once, as the value is the
    /// same for every request.
    listen_port: HeaderValue,
    limits: RouterLimits,
    /// The router's TLS listener, if it has one.
    tls: Option<TlsListener>,
}

impl Router {
    pub(crate) fn new(routes: Routes, listen_port: u16, limits: RouterLimits) -> Self {
        Router {
            routes,
            listen_port: HeaderValue::from(listen_port),
            limits,
            tls: None,
        }
    }

    /// The same router, told about its TLS listener.
    pub(crate) fn with_tls(mut self, tls: Option<TlsListener>) -> Self {
        self.tls = tls;
        self
    }
}

/// What one request has learned so far.
pub(crate) struct RequestCtx {
    started: Instant,
    /// The wall-clock time of `started`, for X-Request-Start.
    received: SystemTime,
    /// Empty until `request_filter` settles it.
    request_id: String,
    /// `request_id` as a header value, made once and sent both upstream and downstream.
    request_id_value: Option<HeaderValue>,
    /// The host the request names, as sent (port included).
    host: String,
    /// The route from the snapshot the request started with; later tables do not affect it.
    route: Option<Arc<AppRoute>>,
    /// The backend of the current attempt, counted in flight on it while held.
    lease: Option<Lease>,
    /// Backends whose connection failed, in order.
    tried: Vec<SocketAddr>,
    /// Upstream connection attempts made.
    attempts: usize,
    /// Request body bytes received so far.
    body_bytes: u64,
    /// Whether the request came over TLS.
    tls: bool,
}

impl RequestCtx {
    fn backend(&self) -> Option<SocketAddr> {
        self.lease.as_ref().map(Lease::addr)
    }

    fn app(&self) -> &str {
        self.route.as_ref().map_or("", |r| r.app.as_str())
    }

    /// The request id, made up now if the request failed before `request_filter` settled one.
    fn request_id(&mut self) -> &str {
        if self.request_id.is_empty() {
            self.request_id = forwarded::new_request_id();
        }
        &self.request_id
    }

    /// The request id as a header value (see [`RequestCtx::request_id`]).
    fn request_id_value(&mut self) -> Result<HeaderValue> {
        if let Some(value) = &self.request_id_value {
            return Ok(value.clone());
        }
        let value = HeaderValue::from_str(self.request_id())
            .map_err(|_| Error::explain(ErrorType::InternalError, "invalid request id"))?;
        self.request_id_value = Some(value.clone());
        Ok(value)
    }
}

#[async_trait]
impl ProxyHttp for Router {
    type CTX = RequestCtx;

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // No modules. Pingora's default adds its response compression module, switched off,
        // which still costs a module context and its filter calls on every request.
    }

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            received: SystemTime::now(),
            request_id: String::new(),
            request_id_value: None,
            host: String::new(),
            route: None,
            lease: None,
            tried: Vec::new(),
            attempts: 0,
            body_bytes: 0,
            tls: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = forwarded::request_id(req.headers.get(X_REQUEST_ID));
        ctx.host = forwarded::request_host(req).unwrap_or_default().to_owned();
        ctx.tls = session
            .digest()
            .is_some_and(|digest| digest.ssl_digest.is_some());

        let Some(route) = self.routes.snapshot().lookup(&ctx.host).cloned() else {
            tracing::info!(
                code = Failure::NoRoute.code(),
                host = %ctx.host,
                request_id = %ctx.request_id,
                "route: no app at this host"
            );
            respond(session, ctx, Failure::NoRoute).await?;
            return Ok(true);
        };
        if forwarded::header_bytes(session.req_header()) > self.limits.max_header_bytes {
            ctx.route = Some(route);
            tracing::info!(
                code = Failure::HeadersTooLarge.code(),
                app = ctx.app(),
                request_id = %ctx.request_id,
                "route: request header too large"
            );
            respond(session, ctx, Failure::HeadersTooLarge).await?;
            return Ok(true);
        }
        if let Some(tls) = &self.tls
            && route.https_enforced
            && !ctx.tls
            && tls.serves(&ctx.host)
        {
            ctx.route = Some(route);
            let request_id = ctx.request_id().to_owned();
            redirect::send(session, &ctx.host, tls.port, &request_id).await?;
            return Ok(true);
        }
        if route.maintenance {
            ctx.route = Some(route);
            respond(session, ctx, Failure::Maintenance).await?;
            return Ok(true);
        }
        if let Some(max) = route.max_body
            && forwarded::content_length(session.req_header()).is_some_and(|n| n > max)
        {
            ctx.route = Some(route);
            tracing::info!(
                code = Failure::BodyTooLarge.code(),
                app = ctx.app(),
                request_id = %ctx.request_id,
                "route: request body over the app's limit"
            );
            respond(session, ctx, Failure::BodyTooLarge).await?;
            return Ok(true);
        }
        ctx.lease = route.pick();
        ctx.route = Some(route);
        if ctx.lease.is_none() {
            tracing::warn!(
                code = Failure::NoBackend.code(),
                app = ctx.app(),
                host = %ctx.host,
                request_id = %ctx.request_id,
                "route: no ready instance"
            );
            respond(session, ctx, Failure::NoBackend).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if ctx.attempts > 0
            && let (Some(route), Some(failed)) = (&ctx.route, ctx.backend())
        {
            // A retry after a failed connect: the failed backend is released first, so it does
            // not count as busy while the next one is picked.
            ctx.tried.push(failed);
            ctx.lease = None;
            ctx.lease = route.pick_excluding(&ctx.tried);
        }
        let Some(backend) = ctx.backend() else {
            return Error::e_explain(ErrorType::InternalError, "no backend chosen for request");
        };
        ctx.attempts += 1;
        let mut peer = HttpPeer::new(backend, false, String::new());
        peer.options.connection_timeout = Some(self.limits.connect_timeout);
        peer.options.read_timeout = Some(self.limits.read_timeout);
        peer.options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let backends = ctx.route.as_ref().map_or(0, |r| r.backends.len());
        if let (Some(route), Some(backend)) = (&ctx.route, ctx.backend()) {
            route.quarantine(backend);
        }
        let retry = ctx.attempts < backends;
        tracing::debug!(
            code = Failure::UpstreamConnect.code(),
            app = ctx.app(),
            backend = %peer,
            retry,
            request_id = %ctx.request_id,
            error = %e,
            "route: cannot connect to instance"
        );
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let chain =
            forwarded::forwarded_for(upstream_request.headers.get_all(X_FORWARDED_FOR), client);
        match chain {
            Some(chain) => upstream_request.insert_header(X_FORWARDED_FOR, chain)?,
            None => {
                upstream_request.remove_header(X_FORWARDED_FOR);
            }
        }
        let (proto, port) = match (&self.tls, ctx.tls) {
            (Some(tls), true) => ("https", &tls.port_value),
            _ => ("http", &self.listen_port),
        };
        upstream_request.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static(proto))?;
        if ctx.host.is_empty() {
            upstream_request.remove_header(X_FORWARDED_HOST);
        } else {
            upstream_request.insert_header(X_FORWARDED_HOST, ctx.host.as_str())?;
        }
        upstream_request.insert_header(X_FORWARDED_PORT, port.clone())?;
        upstream_request.insert_header(X_REQUEST_ID, ctx.request_id_value()?)?;
        upstream_request.insert_header(X_REQUEST_START, forwarded::request_start(ctx.received))?;
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A body without Content-Length (chunked) is measured as it streams through.
        if let (Some(chunk), Some(max)) = (body, ctx.route.as_ref().and_then(|r| r.max_body)) {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > max {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over the app's limit",
                );
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forwarded::strip_response_hop_by_hop(upstream_response);
        // The router speaks HTTP/1.1 to clients whatever the app speaks (RFC 9110 §6.2): an
        // HTTP/1.0 status line would tell clients the connection cannot be kept alive.
        if upstream_response.version < http::Version::HTTP_11 {
            upstream_response.set_version(http::Version::HTTP_11);
        }
        upstream_response.insert_header(X_REQUEST_ID, ctx.request_id_value()?)?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let failure = Failure::classify(e);
        let status = failure.map_or(0, Failure::status);
        let code = failure.map_or("client_gone", Failure::code);
        let backend = ctx.backend().map(|b| b.to_string()).unwrap_or_default();
        let request_id = ctx.request_id().to_owned();
        match failure {
            None | Some(Failure::BadRequest(_)) => tracing::info!(
                code,
                status,
                host = %ctx.host,
                request_id,
                error = %e,
                "route: request failed on the client side"
            ),
            Some(Failure::Internal) => tracing::error!(
                code,
                status,
                host = %ctx.host,
                app = ctx.app(),
                request_id,
                error = %e,
                "route: router fault"
            ),
            Some(_) => tracing::warn!(
                code,
                status,
                app = ctx.app(),
                backend,
                attempts = ctx.attempts,
                request_id,
                error = %e,
                "route: instance failed"
            ),
        }

        // After a failure the connection's state is uncertain (part of a request body may be
        // unread), so it is closed rather than reused.
        session.set_keepalive(None);
        if let Some(failure) = failure
            && session.response_written().is_none()
            && let Err(e) = respond(session, ctx, failure).await
        {
            tracing::debug!(code, error = %e, "route: cannot send the error page");
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // `fail_to_proxy` has logged it, with the code word.
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        // Retries are logged by `fail_to_connect`.
        true
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        if let Some(route) = &ctx.route {
            route.stats().record(status, elapsed);
        }
        let req = session.req_header();
        Entry {
            method: req.method.as_str(),
            host: &ctx.host,
            path: req.uri.path(),
            status,
            app: ctx.app(),
            backend: ctx.backend(),
            attempts: ctx.attempts,
            bytes: session.body_bytes_sent() as u64,
            service_ms: elapsed.as_millis() as u64,
            request_id: &ctx.request_id,
        }
        .log();
    }
}

/// Sends the router's page for `failure`, with Content-Type, Content-Length and X-Request-Id.
async fn respond(session: &mut Session, ctx: &mut RequestCtx, failure: Failure) -> Result<()> {
    let message = failure.message(&ctx.host, ctx.app());
    let body = pages::render(failure, &message, ctx.request_id());
    let mut resp = ResponseHeader::build(failure.status(), Some(5))?;
    resp.insert_header(header::CONTENT_TYPE, "text/html; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    resp.insert_header(X_REQUEST_ID, ctx.request_id())?;
    // A HEAD answer carries the page's headers but no body.
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if head_only {
        return Ok(());
    }
    session.write_response_body(Some(body), true).await
}
