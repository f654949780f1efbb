//! Every environment variable the `slipway` binary reads, in one place. Deeper code never reads
//! the environment; it gets these values through its config structs.

/// The API listen address of `slipway server` (default `127.0.0.1:7700`).
pub(crate) const API_ADDR: &str = "SLIPWAY_API_ADDR";
/// The SSH git server's listen address (default `0.0.0.0:2222`).
pub(crate) const SSH_ADDR: &str = "SLIPWAY_SSH_ADDR";
/// The registry's listen address (default `127.0.0.1:5000`).
pub(crate) const REGISTRY_ADDR: &str = "SLIPWAY_REGISTRY_ADDR";
/// The router's listen address (default `0.0.0.0:8080`).
pub(crate) const HTTP_ADDR: &str = "SLIPWAY_HTTP_ADDR";
/// The router's HTTPS listen address (default `0.0.0.0:8443`).
pub(crate) const HTTPS_ADDR: &str = "SLIPWAY_HTTPS_ADDR";
/// The data directory (default `./slipway-data`).
pub(crate) const DATA: &str = "SLIPWAY_DATA";
/// The domain apps are served under (default `slipway.localhost`).
pub(crate) const DOMAIN: &str = "SLIPWAY_DOMAIN";
/// The database URL; SQLite under the data directory when unset.
pub(crate) const DATABASE_URL: &str = "SLIPWAY_DATABASE_URL";
/// How many releases before the newest one of each app keep their images through registry
/// garbage collection (count, default 10).
pub(crate) const RETAIN_RELEASES: &str = "SLIPWAY_RETAIN_RELEASES";
/// How old (seconds) a manifest, blob link or blob must be before registry garbage collection
/// may remove it (default 3600), so pushes in progress are spared.
pub(crate) const REGISTRY_GC_GRACE_SECS: &str = "SLIPWAY_REGISTRY_GC_GRACE_SECS";
/// The build image: a repository in Slipway's registry (default `stacks/build:bookworm`) or any
/// image reference with a registry host.
pub(crate) const BUILD_IMAGE: &str = "SLIPWAY_BUILD_IMAGE";
/// The run image apps are built on (default `stacks/run:bookworm`), the same way.
pub(crate) const RUN_IMAGE: &str = "SLIPWAY_RUN_IMAGE";
/// Seconds a build may run before it is stopped and the push rejected (default 900).
pub(crate) const BUILD_TIMEOUT_SECS: &str = "SLIPWAY_BUILD_TIMEOUT_SECS";
/// Memory a build may use, swap included (default `2G`).
pub(crate) const BUILD_MEMORY: &str = "SLIPWAY_BUILD_MEMORY";
/// CPUs a build may use (default `1.5`).
pub(crate) const BUILD_CPUS: &str = "SLIPWAY_BUILD_CPUS";
/// Seconds the router waits for an instance to accept a connection (default 5).
pub(crate) const ROUTER_CONNECT_TIMEOUT_SECS: &str = "SLIPWAY_ROUTER_CONNECT_TIMEOUT_SECS";
/// Seconds an instance may stay silent before the router answers 504 (default 30).
pub(crate) const ROUTER_READ_TIMEOUT_SECS: &str = "SLIPWAY_ROUTER_READ_TIMEOUT_SECS";
/// The API URL the client commands talk to (default `http://127.0.0.1:7700`).
pub(crate) const URL: &str = "SLIPWAY_URL";
/// The API token the client commands send.
pub(crate) const TOKEN: &str = "SLIPWAY_TOKEN";
