//! The questions other parts ask the controller, as traits. The controller implements them; the
//! builder and the registry hold them as `Arc<dyn ...>`, so neither reaches into the controller's
//! tables and both can be tested against a fake. One goes the other way: the registry implements
//! [`RegistryGc`] and the controller holds it, so the controller never depends on the registry.

use async_trait::async_trait;

use crate::names::{AppName, Fingerprint, UserName};
use crate::release::{Config, ProcessTypes, Release};

/// A failure inside the controller while answering (a database error, say). The message is for
/// logs and for the user; it never carries secrets.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PortError(pub String);

/// What a user may do with an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppAccess {
    /// The app exists and the user may push to it and pull it.
    Allowed,
    /// No app by that name.
    NoSuchApp,
    /// The app exists but the user has no access to it.
    Forbidden,
}

/// Who holds an SSH key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOwner {
    /// The user the key belongs to.
    pub user: UserName,
    /// For a deploy key, the one app it may push; `None` for a user's own key.
    pub app: Option<AppName>,
}

/// Identity and access: who holds a key or a token, and what they may touch.
#[async_trait]
pub trait Identity: Send + Sync + 'static {
    /// Who owns the key with this fingerprint, and for which app if it is a deploy key.
    async fn key_owner(&self, fp: &Fingerprint) -> Result<Option<KeyOwner>, PortError>;

    /// The user who owns this API token.
    async fn user_by_token(&self, token: &str) -> Result<Option<UserName>, PortError>;

    /// Whether `user` may push to `app`.
    async fn app_access(&self, user: &UserName, app: &AppName) -> Result<AppAccess, PortError>;
}

/// What a finished build hands to the controller.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The app that was built.
    pub app: AppName,
    /// The pushed image by digest: `host:port/repo@sha256:...`.
    pub image: String,
    /// Process types from the Procfile or the buildpacks' launch metadata.
    pub processes: ProcessTypes,
    /// The commit that was built.
    pub commit: String,
    /// The pusher.
    pub user: UserName,
    /// The SSH key the pusher authenticated with, for the audit log.
    pub key: Fingerprint,
}

/// Releases and rollouts, as the builder needs them after a successful build.
#[async_trait]
pub trait Releases: Send + Sync + 'static {
    /// Records a new release for a built image and asks for it to be deployed.
    async fn release_build(&self, built: BuiltImage) -> Result<Release, PortError>;

    /// The app's config vars as a build sees them: files under `/platform/env` for buildpacks,
    /// and the build args a Dockerfile build was asked to get.
    async fn build_config(&self, app: &AppName) -> Result<Config, PortError>;

    /// Appends build output (one or more lines) to the app's log, where `slipway logs` shows it.
    fn log_build(&self, app: &AppName, text: &str);

    /// Waits until `version` of `app` is serving, or returns why it could not be deployed.
    async fn await_deploy(&self, app: &AppName, version: i64) -> Result<(), PortError>;
}

/// A manifest that registry garbage collection removed (or would remove).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CollectedManifest {
    /// The repository it was in (`apps/web`).
    pub repository: String,
    /// Its digest (`sha256:...`).
    pub digest: String,
    /// The size of its bytes.
    pub bytes: u64,
}

/// Stored content that registry garbage collection deleted (or would delete).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CollectedBlob {
    /// Its digest (`sha256:...`).
    pub digest: String,
    /// Its size.
    pub bytes: u64,
}

/// What one garbage collection of the registry removed, or would remove on a dry run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    /// Whether nothing was deleted (the lists say what would have been).
    pub dry_run: bool,
    /// The manifests removed from their repositories, sorted by repository and digest.
    pub manifests: Vec<CollectedManifest>,
    /// The content deleted (layers, configs and manifest bytes), sorted by digest.
    pub blobs: Vec<CollectedBlob>,
    /// The bytes of storage freed: the sum of `blobs`.
    pub bytes_freed: u64,
}

/// One image the registry must keep: a manifest by repository and digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeptImage {
    /// The repository (`apps/web`).
    pub repository: String,
    /// The manifest's digest (`sha256:...`).
    pub digest: String,
}

/// Garbage collection of Slipway's own registry, as the controller asks for it. The controller
/// decides which images releases still need; the registry decides what that leaves unreferenced.
#[async_trait]
pub trait RegistryGc: Send + Sync + 'static {
    /// Removes every manifest not in `keep` (nor tagged, nor otherwise needed by one that stays)
    /// and the content nothing references any more; on a `dry_run`, only reports it. In the
    /// repositories under a `managed` prefix (`apps`: the caller decides their lifecycle) tags
    /// protect nothing, and a removed manifest's tags go with it.
    async fn collect(
        &self,
        keep: &[KeptImage],
        managed: &[String],
        dry_run: bool,
    ) -> Result<GcReport, PortError>;
}
