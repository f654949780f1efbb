//! The live route table: which backends serve which host. The controller's reconciler builds a
//! new table whenever the set of ready instances or domains changes and publishes it; the router
//! reads the current snapshot on every request.
//!
//! Invariants:
//! - Readers never block. Publishing swaps an `Arc` atomically, so a request in flight keeps the
//!   snapshot it started with.
//! - A lookup costs the same however many hosts are routed: one hash lookup for the exact name,
//!   then one per label of the name for wildcard domains.
//! - An app's [`AppStats`] live across publishes: [`Routes::publish`] hands each app's counters
//!   from the old table to the new one, so deploys and scaling never reset them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::names::AppName;

/// How long a backend that refused a connection gets no new requests, unless every backend of
/// its app is in the same state.
pub const QUARANTINE: Duration = Duration::from_secs(5);

/// Where one app's web traffic goes.
#[derive(Debug)]
pub struct AppRoute {
    /// The app.
    pub app: AppName,
    /// Addresses of ready web instances. Empty means the app has no instance ready (503).
    pub backends: Vec<SocketAddr>,
    /// In maintenance mode the router answers 503 with a maintenance page instead.
    pub maintenance: bool,
    /// The largest request body the app accepts, in bytes; `None` for no limit.
    pub max_body: Option<u64>,
    /// Requests in flight and quarantine, one entry per backend, in the order of `backends`.
    load: Box<[BackendLoad]>,
    /// Plain HTTP requests are redirected to HTTPS (`tls:enable`).
    pub https_enforced: bool,
    next: AtomicUsize,
    /// Set when the route is published: the app's counters from the table before, else new.
    stats: OnceLock<Arc<AppStats>>,
}

#[derive(Debug, Default)]
struct BackendLoad {
    in_flight: AtomicUsize,
    /// Milliseconds since [`epoch`] until which the backend is quarantined; 0 when it is not.
    quarantined_until: AtomicU64,
}

/// The instant that quarantine deadlines count from, so they fit in an atomic.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // Plus one, so that 0 always means "not quarantined".
    epoch().elapsed().as_millis() as u64 + 1
}

impl AppRoute {
    /// A route to `backends`.
    pub fn new(app: AppName, backends: Vec<SocketAddr>) -> Self {
        let load = backends.iter().map(|_| BackendLoad::default()).collect();
        AppRoute {
            app,
            backends,
            maintenance: false,
            max_body: None,
            load,
            https_enforced: false,
            next: AtomicUsize::new(0),
            stats: OnceLock::new(),
        }
    }

    /// The same route, in or out of maintenance mode.
    pub fn with_maintenance(mut self, on: bool) -> Self {
        self.maintenance = on;
        self
    }

    /// The same route, redirecting plain HTTP to HTTPS or not.
    pub fn with_https_enforced(mut self, on: bool) -> Self {
        self.https_enforced = on;
        self
    }

    /// The same route with a request body limit.
    pub fn with_max_body(mut self, max_body: Option<u64>) -> Self {
        self.max_body = max_body;
        self
    }

    /// The app's request counters, shared by every table the app is published in.
    pub fn stats(&self) -> &Arc<AppStats> {
        self.stats.get_or_init(Arc::default)
    }

    /// The backend with the fewest requests in flight, skipping quarantined backends while
    /// another is available; ties go round robin. `None` when no instance is ready. The caller
    /// holds the returned [`Lease`] while the request uses the backend.
    pub fn pick(self: &Arc<Self>) -> Option<Lease> {
        self.pick_excluding(&[])
    }

    /// Like [`AppRoute::pick`], but never one of `tried` unless nothing else is left.
    pub fn pick_excluding(self: &Arc<Self>, tried: &[SocketAddr]) -> Option<Lease> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        // With one instance there is no turn to take: the shared counter is left alone, as
        // every router thread would otherwise write the same cache line on each request.
        let start = if n > 1 {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        // Read only if some instance was ever quarantined (0 means never).
        let mut now = None;
        // Rank: untried before tried, healthy before quarantined, then fewest in flight.
        let mut best: Option<(usize, (bool, bool, usize))> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let load = &self.load[i];
            let until = load.quarantined_until.load(Ordering::Relaxed);
            let rank = (
                tried.contains(&self.backends[i]),
                until != 0 && until > *now.get_or_insert_with(now_ms),
                load.in_flight.load(Ordering::Relaxed),
            );
            if best.is_none_or(|(_, r)| rank < r) {
                best = Some((i, rank));
            }
        }
        let (i, _) = best?;
        self.load[i].in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            route: Arc::clone(self),
            index: i,
        })
    }

    /// Keeps `backend` out of rotation for [`QUARANTINE`], after it refused a connection.
    pub fn quarantine(&self, backend: SocketAddr) {
        if let Some(i) = self.backends.iter().position(|b| *b == backend) {
            let until = now_ms() + QUARANTINE.as_millis() as u64;
            self.load[i]
                .quarantined_until
                .store(until, Ordering::Relaxed);
        }
    }

    /// Requests in flight on `backend`, as counted by the leases picked from this route.
    pub fn in_flight(&self, backend: SocketAddr) -> usize {
        self.backends
            .iter()
            .position(|b| *b == backend)
            .map_or(0, |i| self.load[i].in_flight.load(Ordering::Relaxed))
    }
}

/// A request's hold on one backend of a route: counts as in flight until dropped.
#[derive(Debug)]
pub struct Lease {
    route: Arc<AppRoute>,
    index: usize,
}

impl Lease {
    /// The backend's address.
    pub fn addr(&self) -> SocketAddr {
        self.route.backends[self.index]
    }

    /// The route the backend was picked from.
    pub fn route(&self) -> &Arc<AppRoute> {
        &self.route
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.route.load[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Upper bounds of the latency histogram's buckets, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// One app's request counters: by status class and a latency histogram. Lock-free.
#[derive(Debug, Default)]
pub struct AppStats {
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx; index 0 counts requests that got
    /// no response (the client went away).
    by_class: [AtomicU64; 6],
    /// Requests whose latency was at most each of [`LATENCY_BUCKETS`] (not cumulative).
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    /// Requests slower than the last bucket.
    overflow: AtomicU64,
    /// Sum of all latencies, in microseconds.
    latency_sum_us: AtomicU64,
}

/// A copy of an [`AppStats`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Responses by status class; see [`AppStats`].
    pub by_class: [u64; 6],
    /// Cumulative counts for each of [`LATENCY_BUCKETS`], as Prometheus wants them.
    pub cumulative: [u64; LATENCY_BUCKETS.len()],
    /// All requests counted.
    pub count: u64,
    /// Sum of latencies, in microseconds.
    pub latency_sum_us: u64,
}

impl AppStats {
    /// Counts one finished request: its status (0 for none) and how long it took.
    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = match status {
            100..=599 => usize::from(status / 100),
            _ => 0,
        };
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        match LATENCY_BUCKETS.iter().position(|le| secs <= *le) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        self.latency_sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let by_class = std::array::from_fn(|i| self.by_class[i].load(Ordering::Relaxed));
        let mut running = 0;
        let cumulative = std::array::from_fn(|i| {
            running += self.buckets[i].load(Ordering::Relaxed);
            running
        });
        StatsSnapshot {
            by_class,
            cumulative,
            count: running + self.overflow.load(Ordering::Relaxed),
            latency_sum_us: self.latency_sum_us.load(Ordering::Relaxed),
        }
    }
}

/// Hosts mapped to app routes. Host names are stored lower-case without a port; a wildcard
/// domain `*.example.com` is stored as `example.com` among the wildcards.
#[derive(Debug, Default)]
pub struct RouteTable {
    hosts: HostMap,
    wildcards: HostMap,
}

/// Keyed with foldhash's fast hasher, seeded per process: every request looks its host up, and
/// SipHash cost more than the rest of the lookup. The keys stored come from the controller, so
/// the client-chosen names looked up cannot crowd the table.
type HostMap = HashMap<String, Arc<AppRoute>, foldhash::fast::RandomState>;

impl RouteTable {
    /// Adds `route` under each of `hosts`. A host `*.example.com` routes every name under
    /// `example.com`, at any depth, that no exact host or longer wildcard claims.
    pub fn insert(&mut self, hosts: impl IntoIterator<Item = String>, route: AppRoute) {
        let route = Arc::new(route);
        for host in hosts {
            let host = host.to_ascii_lowercase();
            match host.strip_prefix("*.") {
                Some(parent) => self.wildcards.insert(parent.to_owned(), route.clone()),
                None => self.hosts.insert(host, route.clone()),
            };
        }
    }

    /// The route for a `Host` header value (any port suffix and trailing dot ignored): the exact
    /// host, else the longest wildcard domain that covers it.
    pub fn lookup(&self, host: &str) -> Option<&Arc<AppRoute>> {
        let host = strip_port(host).trim_end_matches('.');
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        if let Some(route) = self.hosts.get(host) {
            return Some(route);
        }
        if self.wildcards.is_empty() {
            return None;
        }
        let mut rest = host;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(route) = self.wildcards.get(parent) {
                return Some(route);
            }
            rest = parent;
        }
        None
    }

    /// How many host names (exact and wildcard) are routed.
    pub fn len(&self) -> usize {
        self.hosts.len() + self.wildcards.len()
    }

    /// Whether no host is routed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The route of `app`, if it is routed.
    pub fn app(&self, app: &AppName) -> Option<&Arc<AppRoute>> {
        self.apps().find(|r| r.app == *app)
    }

    /// Every app's route, once each.
    pub fn apps(&self) -> impl Iterator<Item = &Arc<AppRoute>> {
        let mut seen = std::collections::HashSet::new();
        self.hosts
            .values()
            .chain(self.wildcards.values())
            .filter(move |r| seen.insert(Arc::as_ptr(r)))
    }
}

impl RouteTable {
    /// Every app's counters in the Prometheus text format (version 0.0.4):
    /// `slipway_router_requests_total{app,class}` and the histogram
    /// `slipway_router_request_duration_seconds{app}`. Apps appear once they are routed, with
    /// their counts from before any redeploy.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write as _;
        let mut apps: Vec<_> = self.apps().collect();
        apps.sort_by(|a, b| a.app.as_str().cmp(b.app.as_str()));
        let mut out = String::new();
        out.push_str(
            "# HELP slipway_router_requests_total Requests answered by the router, by app and status class.\n\
             # TYPE slipway_router_requests_total counter\n",
        );
        let classes = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];
        let snapshots: Vec<_> = apps
            .iter()
            .map(|r| (&r.app, r.stats().snapshot()))
            .collect();
        for (app, s) in &snapshots {
            for (class, n) in classes.iter().zip(s.by_class) {
                let _ = writeln!(
                    out,
                    "slipway_router_requests_total{{app=\"{app}\",class=\"{class}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP slipway_router_request_duration_seconds Time from a request's arrival to the end of its answer.\n\
             # TYPE slipway_router_request_duration_seconds histogram\n",
        );
        for (app, s) in &snapshots {
            for (le, n) in LATENCY_BUCKETS.iter().zip(s.cumulative) {
                let _ = writeln!(
                    out,
                    "slipway_router_request_duration_seconds_bucket{{app=\"{app}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "slipway_router_request_duration_seconds_bucket{{app=\"{app}\",le=\"+Inf\"}} {}\n\
                 slipway_router_request_duration_seconds_sum{{app=\"{app}\"}} {}\n\
                 slipway_router_request_duration_seconds_count{{app=\"{app}\"}} {}",
                s.count,
                s.latency_sum_us as f64 / 1e6,
                s.count
            );
        }
        out
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

    /// Replaces the table; requests already routed keep their snapshot. Each app keeps the
    /// [`AppStats`] it had in the table before.
    pub fn publish(&self, table: RouteTable) {
        let old = self.snapshot();
        let stats: HashMap<&AppName, &Arc<AppStats>> =
            old.apps().map(|r| (&r.app, r.stats())).collect();
        for route in table.apps() {
            if let Some(kept) = stats.get(&route.app) {
                // A route's counters are set once, here, before any request can see the route.
                let _ = route.stats.set(Arc::clone(kept));
            }
        }
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
            assert_eq!(
                t.lookup(host).and_then(|r| r.pick()).map(|l| l.addr()),
                Some(addr),
                "{host}"
            );
        }
        assert!(t.lookup("other.slipway.localhost").is_none());
        assert!(t.lookup("[::1]:8080").is_none());
    }

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (1..=n)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect()
    }

    #[test]
    fn round_robin_when_idle() {
        let b = addrs(2);
        let r = Arc::new(AppRoute::new("x".parse().unwrap(), b.clone()));
        let picks: Vec<_> = (0..3).map(|_| r.pick().unwrap().addr()).collect();
        assert_eq!(picks, [b[0], b[1], b[0]]);
        assert!(
            Arc::new(AppRoute::new("x".parse().unwrap(), vec![]))
                .pick()
                .is_none()
        );
    }

    #[test]
    fn least_in_flight_wins_and_leases_release() {
        let b = addrs(3);
        let r = Arc::new(AppRoute::new("x".parse().unwrap(), b.clone()));
        let first = r.pick().unwrap();
        let second = r.pick().unwrap();
        assert_ne!(first.addr(), second.addr());
        // Both busy backends are passed over, whatever the round-robin position.
        for _ in 0..4 {
            let third = r.pick().unwrap();
            assert_ne!(third.addr(), first.addr());
            assert_ne!(third.addr(), second.addr());
        }
        assert_eq!(r.in_flight(first.addr()), 1);
        let addr = first.addr();
        drop(first);
        assert_eq!(r.in_flight(addr), 0);
    }

    #[test]
    fn quarantined_and_tried_backends_come_last() {
        let b = addrs(2);
        let r = Arc::new(AppRoute::new("x".parse().unwrap(), b.clone()));
        r.quarantine(b[0]);
        for _ in 0..4 {
            assert_eq!(r.pick().unwrap().addr(), b[1]);
        }
        assert_eq!(r.pick_excluding(&[b[1]]).unwrap().addr(), b[0]);
        // With every backend quarantined, one is still picked rather than none.
        r.quarantine(b[1]);
        assert!(r.pick().is_some());
    }

    #[test]
    fn wildcards_cover_names_below_and_exact_hosts_win() {
        let mut t = RouteTable::default();
        let route = |app: &str| AppRoute::new(app.parse().unwrap(), vec![]);
        t.insert(["*.example.com".to_owned()], route("wild"));
        t.insert(["*.eu.example.com".to_owned()], route("eu"));
        t.insert(["www.example.com".to_owned()], route("www"));
        let app = |host: &str| t.lookup(host).map(|r| r.app.as_str().to_owned());
        assert_eq!(app("www.example.com").as_deref(), Some("www"));
        assert_eq!(app("Shop.Example.com:443").as_deref(), Some("wild"));
        assert_eq!(app("a.b.example.com").as_deref(), Some("wild"));
        assert_eq!(app("x.eu.example.com").as_deref(), Some("eu"));
        assert_eq!(app("example.com"), None);
        assert_eq!(app("example.org"), None);
        assert_eq!(app("notexample.com"), None);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn stats_survive_publishing() {
        let routes = Routes::default();
        let publish = |backends| {
            let mut t = RouteTable::default();
            t.insert(
                ["a.test".to_owned(), "b.test".to_owned()],
                AppRoute::new("a".parse().unwrap(), backends),
            );
            routes.publish(t);
        };
        publish(addrs(1));
        let stats = |host| routes.snapshot().lookup(host).unwrap().stats().clone();
        stats("a.test").record(200, Duration::from_millis(3));
        stats("b.test").record(502, Duration::from_secs(20));
        publish(addrs(2));
        let s = stats("a.test").snapshot();
        assert_eq!(s.count, 2);
        assert_eq!(s.by_class[2], 1);
        assert_eq!(s.by_class[5], 1);
        assert_eq!(s.cumulative[2], 1, "3 ms falls in the 5 ms bucket");
        assert_eq!(
            *s.cumulative.last().unwrap(),
            1,
            "20 s is above every bucket"
        );
        let text = routes.snapshot().prometheus();
        assert!(text.contains("slipway_router_requests_total{app=\"a\",class=\"5xx\"} 1\n"));
        assert!(text.contains(
            "slipway_router_request_duration_seconds_bucket{app=\"a\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains("slipway_router_request_duration_seconds_count{app=\"a\"} 2\n"));
    }
}
