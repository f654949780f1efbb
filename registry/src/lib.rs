//! Slipway's OCI registry: the Distribution v1.1 API over HTTP, with blobs, manifests and tags
//! stored on the local filesystem.
//!
//! The builder pushes images here and Docker Engine pulls them; `docker login`, `skopeo` and
//! `oci-client` talk to it with HTTP Basic auth (a Slipway user name and API token).
//!
//! Modules, each with one concern:
//! - [`api`]: routes, handlers, headers; the only module that knows HTTP.
//! - [`auth`]: Basic credentials checked against the controller's `Identity` port.
//! - [`route`]: `/v2/...` paths parsed into endpoints (pure).
//! - [`names`]: repository names, tags, digests and upload ids, validated (pure).
//! - [`manifest`]: accepted media types and the blobs a manifest references (pure).
//! - [`storage`]: the on-disk layout; the only module that does IO.
//! - [`error`]: the crate error and its one mapping to OCI error responses.
//!
//! Invariants: no filesystem path is built from unvalidated input; a blob becomes visible only
//! after its digest was verified; no request body is held whole in memory except a manifest
//! (at most 4 MiB). This crate does not read the controller's tables; it asks through
//! [`slipway_core::ports::Identity`].

mod api;
mod auth;
mod error;
mod manifest;
mod names;
mod route;
mod storage;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use slipway_core::ports::Identity;

pub use api::RequestError;
pub use error::RegistryError;
pub use manifest::ManifestError;
pub use names::NameError;
pub use storage::StorageError;

/// How to run the registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The storage directory (path; no default, `slipway server` uses `<data>/registry`). It is
    /// created if missing, and must not be shared by two running registries: uploads left in it
    /// are removed when a registry starts.
    pub root: PathBuf,
}

impl RegistryConfig {
    /// Checks the configuration before anything touches the disk.
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.root.as_os_str().is_empty() {
            return Err(RegistryError::Config(
                "the storage directory is empty: set it to a directory path".to_owned(),
            ));
        }
        Ok(())
    }
}

/// A registry: its storage and the identity service it checks credentials with. Cheap to clone;
/// clones share everything.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<api::Shared>,
}

impl Registry {
    /// Opens the storage under `config.root` (creating it if missing) and removes uploads that an
    /// earlier run left unfinished.
    pub fn new(
        config: RegistryConfig,
        identity: Arc<dyn Identity>,
    ) -> Result<Registry, RegistryError> {
        config.validate()?;
        let storage = storage::Storage::open(&config.root)?;
        Ok(Registry {
            shared: Arc::new(api::Shared { storage, identity }),
        })
    }

    /// The registry's HTTP routes (`/v2/...`), to serve on their own or merged into a larger app.
    pub fn router(&self) -> axum::Router {
        api::router(self.shared.clone())
    }

    /// Serves the registry on `listener` until `shutdown` completes, then finishes the requests
    /// in flight and returns.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "registry listening");
        }
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}
