//! The live route table: which backends serve which host. The controller's reconciler builds a
//! new table whenever the set of ready instances or domains changes and publishes it; the router
//! reads the current snapshot on every request.
//!
//! Invariant: readers never block. Publishing swaps an `Arc` atomically, so a request in flight
//! keeps the snapshot it started with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use crate::names::AppName;

/// Where one app's web traffic goes.
#[derive(Debug)]
pub struct AppRoute {
    /// The app.
    pub app: AppName,
    /// Addresses of ready web instances. Empty means the app has no instance ready (503).
    pub backends: Vec<SocketAddr>,
    /// In maintenance mode the router answers 503 with a maintenance page instead.
    pub maintenance: bool,
    next: AtomicUsize,
}

impl AppRoute {
    /// A route to `backends`.
    pub fn new(app: AppName, backends: Vec<SocketAddr>) -> Self {
        AppRoute {
            app,
            backends,
            maintenance: false,
            next: AtomicUsize::new(0),
        }
    }

    /// The same route, in or out of maintenance mode.
    pub fn with_maintenance(mut self, on: bool) -> Self {
        self.maintenance = on;
        self
    }

    /// The next backend in round-robin order, or none when no instance is ready.
    pub fn pick(&self) -> Option<SocketAddr> {
        if self.backends.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.backends[i % self.backends.len()])
    }
}

/// Hosts mapped to app routes. Host names are stored lower-case without a port.
#[derive(Debug, Default)]
pub struct RouteTable {
    hosts: HashMap<String, Arc<AppRoute>>,
}

impl RouteTable {
    /// Adds `route` under each of `hosts`.
    pub fn insert(&mut self, hosts: impl IntoIterator<Item = String>, route: AppRoute) {
        let route = Arc::new(route);
        for host in hosts {
            self.hosts.insert(host.to_ascii_lowercase(), route.clone());
        }
    }

    /// The route for a `Host` header value (any port suffix and trailing dot ignored).
    pub fn lookup(&self, host: &str) -> Option<&Arc<AppRoute>> {
        let host = strip_port(host).trim_end_matches('.');
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hosts.get(&host.to_ascii_lowercase())
        } else {
            self.hosts.get(host)
        }
    }

    /// How many host names are routed.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether no host is routed.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal: "[::1]:8080".
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// A shared handle to the current route table: cheap to clone, cheap to read.
#[derive(Debug, Clone, Default)]
pub struct Routes(Arc<ArcSwap<RouteTable>>);

impl Routes {
    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }

    /// Replaces the table; requests already routed keep their snapshot.
    pub fn publish(&self, table: RouteTable) {
        self.0.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ignores_port_and_case() {
        let mut t = RouteTable::default();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        t.insert(
            ["web.slipway.localhost".to_owned()],
            AppRoute::new("web".parse().unwrap(), vec![addr]),
        );
        for host in [
            "web.slipway.localhost",
            "WEB.slipway.localhost:8080",
            "web.slipway.localhost.",
        ] {
            assert_eq!(t.lookup(host).and_then(|r| r.pick()), Some(addr), "{host}");
        }
        assert!(t.lookup("other.slipway.localhost").is_none());
        assert!(t.lookup("[::1]:8080").is_none());
    }

    #[test]
    fn round_robin() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let r = AppRoute::new("x".parse().unwrap(), vec![a, b]);
        assert_eq!([r.pick(), r.pick(), r.pick()], [Some(a), Some(b), Some(a)]);
        assert_eq!(AppRoute::new("x".parse().unwrap(), vec![]).pick(), None);
    }
}
