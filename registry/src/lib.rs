//! Slipway's OCI registry: the Distribution v1.1 API over HTTP, with blobs, manifests and tags
//! stored on the local filesystem.
//!
//! The builder pushes images here and Docker Engine pulls them; `docker login`, `skopeo` and
//! `oci-client` talk to it with a Slipway user name and API token, either as HTTP Basic
//! credentials on every request or through Docker's token protocol: a `401` challenge sends the
//! client to `/v2/token`, which trades those credentials for a short-lived bearer token.
//!
//! Modules, each with one concern:
//! - [`api`]: routes, handlers, headers; the only module that knows HTTP.
//! - [`auth`]: who the caller is (Basic credentials checked against the controller's `Identity`
//!   port, or a bearer token), what each request needs, the access policy, the challenge.
//! - [`token`]: scopes, claims, the signing key and the JWT form of bearer tokens.
//! - [`route`]: `/v2/...` paths parsed into endpoints (pure).
//! - [`names`]: repository names, tags, digests and upload ids, validated (pure).
//! - [`manifest`]: accepted media types and what a manifest references (pure).
//! - [`storage`]: what is stored and what is visible: digest checks, upload sessions and their
//!   expiry, per-repository blobs, manifests, tags, referrers; over any [`backend`]. Its `gc`
//!   submodule is garbage collection ([`Registry::gc`]): what no kept, tagged or referenced
//!   manifest needs goes, never anything younger than the grace period.
//! - [`backend`]: the object-store trait storage is kept in (the seam for an S3 backend).
//! - [`fs`]: the filesystem backend; with `backend`, the only code that does IO on storage
//!   (`token` reads or makes its key file once, when the registry is created).
//! - [`metrics`]: request and byte counters and their Prometheus text.
//! - [`error`]: the crate error and its one mapping to OCI error responses.
//!
//! Invariants: no filesystem path is built from unvalidated input; a blob becomes visible only
//! after its digest was verified, and only in the repository it was pushed or mounted to; no
//! request body is held whole in memory except a manifest (at most 4 MiB). This crate does not
//! read the controller's tables; it asks through [`slipway_core::ports::Identity`].

mod api;
mod auth;
mod backend;
mod error;
mod fs;
mod manifest;
mod metrics;
mod names;
mod route;
mod storage;
mod token;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use slipway_core::ports::{GcReport, Identity, KeptImage, PortError, RegistryGc};

pub use api::RequestError;
pub use error::RegistryError;
pub use manifest::ManifestError;
pub use metrics::Metrics;
pub use names::NameError;
pub use storage::StorageError;

/// How long an upload session may go untouched before [`Registry::serve`] removes it, unless
/// [`Registry::with_upload_expiry`] says otherwise.
pub const DEFAULT_UPLOAD_EXPIRY: Duration = Duration::from_secs(60 * 60);

/// How old a manifest, blob link or content must be before garbage collection may remove it,
/// unless [`Registry::with_gc_grace`] says otherwise: long enough for any push to finish.
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(60 * 60);

/// How to run the registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The storage directory (path; no default, `slipway server` uses `<data>/registry`). It is
    /// created if missing, and must not be shared by two running registries: uploads left in it
    /// are removed when a registry starts.
    pub root: PathBuf,
    /// The file holding the key that signs bearer tokens (path; no default, `slipway server`
    /// uses `<data>/registry-token-key`). A random key is written there, mode 0600, if the file
    /// is missing; removing it invalidates every token issued.
    pub token_key: PathBuf,
}

impl RegistryConfig {
    /// Checks the configuration before anything touches the disk.
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.root.as_os_str().is_empty() {
            return Err(RegistryError::Config(
                "the storage directory is empty: set it to a directory path".to_owned(),
            ));
        }
        if self.token_key.as_os_str().is_empty() {
            return Err(RegistryError::Config(
                "the token key file is empty: set it to a file path".to_owned(),
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
    upload_expiry: Duration,
    gc_grace: Duration,
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
        let tokens = token::TokenKey::load_or_create(&config.token_key).map_err(|source| {
            RegistryError::TokenKey {
                path: config.token_key.clone(),
                source,
            }
        })?;
        Ok(Registry {
            shared: Arc::new(api::Shared {
                storage,
                identity,
                tokens,
                counters: Arc::default(),
            }),
            upload_expiry: DEFAULT_UPLOAD_EXPIRY,
            gc_grace: DEFAULT_GC_GRACE,
        })
    }

    /// Sets how long an upload session may go untouched (no request on it) before it is removed
    /// with its data; [`DEFAULT_UPLOAD_EXPIRY`] otherwise.
    pub fn with_upload_expiry(mut self, expiry: Duration) -> Registry {
        self.upload_expiry = expiry;
        self
    }

    /// Sets how old something must be before garbage collection may remove it;
    /// [`DEFAULT_GC_GRACE`] otherwise. Zero spares nothing, not even a push in progress.
    pub fn with_gc_grace(mut self, grace: Duration) -> Registry {
        self.gc_grace = grace;
        self
    }

    /// Collects garbage while the registry serves: removes every manifest that is not in
    /// `keep` (`(repository, digest)` pairs; names that are not valid are ignored), not tagged
    /// (tags count only outside the repositories under a `managed` prefix such as `apps`),
    /// not listed by a surviving index and not a referrer of a surviving manifest; then the blob
    /// links no surviving manifest references and the content no link references. Nothing
    /// younger than the grace period goes. A `dry_run` deletes nothing and reports the same.
    pub async fn gc(
        &self,
        keep: &[(String, String)],
        managed: &[String],
        dry_run: bool,
    ) -> Result<GcReport, RegistryError> {
        let keep: Vec<_> = keep
            .iter()
            .filter_map(|(repo, digest)| {
                Some((
                    names::RepoName::parse(repo).ok()?,
                    names::Digest::parse(digest).ok()?,
                ))
            })
            .collect();
        let report = self
            .shared
            .storage
            .gc(&keep, managed, self.gc_grace, dry_run)
            .await?;
        tracing::info!(
            dry_run,
            manifests = report.manifests.len(),
            blobs = report.blobs.len(),
            bytes = report.bytes_freed,
            "registry garbage collection"
        );
        Ok(report)
    }

    /// The registry's counters since it was created: requests, bytes in and out, and the bytes
    /// of content in storage. `GET /metrics` serves the same in Prometheus text.
    pub fn metrics(&self) -> Metrics {
        self.shared
            .counters
            .snapshot(self.shared.storage.stored_bytes())
    }

    /// Removes the upload sessions untouched for longer than the upload expiry; returns how
    /// many. [`Registry::serve`] does this periodically; a caller that serves
    /// [`Registry::router`] itself calls it.
    pub async fn expire_uploads(&self) -> usize {
        self.shared.storage.expire_uploads(self.upload_expiry).await
    }

    /// The registry's HTTP routes (`/v2/...`), to serve on their own or merged into a larger app.
    pub fn router(&self) -> axum::Router {
        api::router(self.shared.clone())
    }

    /// Serves the registry on `listener` until `shutdown` completes, then finishes the requests
    /// in flight and returns. Expires abandoned uploads meanwhile.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "registry listening");
        }
        let sweeper = tokio::spawn(self.clone().sweep_uploads());
        let served = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await;
        sweeper.abort();
        served
    }

    /// Expires abandoned uploads forever, checking a few times per expiry period (at most
    /// every minute), so a session lives between one and about one and a half periods.
    async fn sweep_uploads(self) {
        let period =
            (self.upload_expiry / 2).clamp(Duration::from_millis(10), Duration::from_secs(60));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let expired = self.expire_uploads().await;
            if expired > 0 {
                tracing::info!(expired, "registry expired abandoned uploads");
            }
        }
    }
}

#[async_trait]
impl RegistryGc for Registry {
    async fn collect(
        &self,
        keep: &[KeptImage],
        managed: &[String],
        dry_run: bool,
    ) -> Result<GcReport, PortError> {
        let keep: Vec<(String, String)> = keep
            .iter()
            .map(|k| (k.repository.clone(), k.digest.clone()))
            .collect();
        self.gc(&keep, managed, dry_run)
            .await
            .map_err(|e| PortError(format!("registry garbage collection: {e}")))
    }
}
