//! The controller: Slipway's source of truth. It owns the database (users, tokens, keys, apps,
//! releases), serves the HTTP API the CLI talks to, answers the builder's and the registry's
//! questions through the ports in `slipway_core::ports`, and runs the reconciler that makes the
//! container engine match the releases.
//!
//! Invariant: only [`db`] holds SQL; the API and the ports go through [`Controller`]'s methods.

pub mod api;
pub mod certs;
pub mod db;
mod error;
pub mod logs;
pub mod reconciler;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use slipway_core::ports::{
    AppAccess, BuiltImage, GcReport, Identity, KeptImage, KeyOwner, PortError, RegistryGc, Releases,
};
use slipway_core::routes::Routes;
use slipway_core::tls::Certs;
use slipway_core::{AppName, Fingerprint, Release, UserName};
use slipway_runtime::{Engine, RegistryAuth};

pub use error::ControllerError;

use db::{Db, NewRelease, ReleaseStatus};
use logs::AppLogs;
use reconciler::{CrashBook, Event, Reconciler, ReconcilerConfig, ReconcilerHandle};

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Where the database and the admin token live.
    pub data_dir: PathBuf,
    /// Apps are served at `<app>.<domain>`.
    pub domain: String,
    /// This server's instance id, put on every container it starts.
    pub instance_id: String,
    /// The registry address as the container engine reaches it (`127.0.0.1:5000`).
    pub registry_addr: String,
    /// `postgres://...` or `sqlite://...`; `None` is SQLite at `DATA/slipway.db`.
    pub database_url: Option<String>,
    /// How many releases before the newest one of each app keep their images through registry
    /// garbage collection (count; `slipway server` defaults to [`DEFAULT_RETAIN_RELEASES`]).
    /// The release running is always kept.
    pub retain_releases: usize,
}

/// The registry repositories whose images releases own (the builder exports `apps/<app>`,
/// tagged by commit): in them only retention keeps an image, never a tag.
pub const APP_REPOSITORIES: &str = "apps";

/// How many releases before the newest one keep their images unless configured otherwise.
pub const DEFAULT_RETAIN_RELEASES: usize = 10;

/// The controller. Cheap to share behind an `Arc`.
pub struct Controller {
    db: Db,
    engine: Arc<dyn Engine>,
    config: ControllerConfig,
    reconciler: ReconcilerHandle,
    logs: Arc<AppLogs>,
    crashes: Arc<CrashBook>,
    /// A token that lives only in this process's memory: the controller's own credential for
    /// pulling release images from the registry. It acts as `admin`.
    system_token: String,
    /// Garbage collection of Slipway's own registry, attached once the registry runs.
    registry_gc: OnceLock<Arc<dyn RegistryGc>>,
    /// The route table the reconciler publishes; its per-app counters are `GET /metrics`.
    routes: Routes,
}

/// What the first start created.
pub struct FirstStart {
    /// The admin's API token, also written to `DATA/admin-token`.
    pub admin_token: String,
    /// Where it was written.
    pub token_path: PathBuf,
}

/// The manifest a release image names in the registry at `registry_addr`
/// (`<registry_addr>/<repository>@<digest>`), or `None` for an image elsewhere or by tag.
pub(crate) fn kept_image(registry_addr: &str, image: &str) -> Option<KeptImage> {
    let rest = image.strip_prefix(registry_addr)?.strip_prefix('/')?;
    let (repository, digest) = rest.split_once('@')?;
    (!repository.is_empty() && digest.contains(':')).then(|| KeptImage {
        repository: repository.to_owned(),
        digest: digest.to_owned(),
    })
}

/// Returns a new random API token: 32 bytes as hex.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Controller {
    /// Opens the database, creates the admin user on first start, and starts the reconciler
    /// (which brings back every app at once). The reconciler publishes the route table to
    /// `routes` and the apps' certificates to `certs`.
    pub async fn start(
        config: ControllerConfig,
        engine: Arc<dyn Engine>,
        routes: Routes,
        certs: Certs,
    ) -> Result<(Arc<Controller>, Option<FirstStart>), ControllerError> {
        let db = match &config.database_url {
            Some(url) => Db::open(url).await?,
            None => Db::open_sqlite(&config.data_dir.join("slipway.db")).await?,
        };
        let first = if db.has_users().await? {
            None
        } else {
            Some(create_admin(&db, &config.data_dir).await?)
        };
        let system_token = new_token();
        let logs = Arc::new(
            AppLogs::open(&config.data_dir.join("logs"), logs::DEFAULT_CAP)
                .map_err(|e| ControllerError::Io(format!("opening the app logs: {e}")))?,
        );
        let crashes = Arc::new(CrashBook::default());
        let reconciler = Reconciler::spawn(
            db.clone(),
            engine.clone(),
            routes.clone(),
            certs,
            logs.clone(),
            crashes.clone(),
            ReconcilerConfig {
                instance_id: config.instance_id.clone(),
                domain: config.domain.clone(),
                registry: RegistryAuth {
                    server: config.registry_addr.clone(),
                    username: "admin".to_owned(),
                    password: system_token.clone(),
                },
                ready_timeout: Duration::from_secs(60),
                tick: Duration::from_secs(5),
                drain: Duration::from_secs(30),
            },
        );
        let controller = Arc::new(Controller {
            db,
            engine,
            config,
            reconciler,
            logs,
            crashes,
            system_token,
            registry_gc: OnceLock::new(),
            routes,
        });
        Ok((controller, first))
    }

    /// The controller's own registry credentials (`admin` and an in-memory token), for the
    /// builder's pushes and the engine's pulls.
    pub fn system_credentials(&self) -> (String, String) {
        ("admin".to_owned(), self.system_token.clone())
    }

    /// The router's per-app request counters, in the Prometheus text format.
    pub fn router_metrics(&self) -> String {
        self.routes.snapshot().prometheus()
    }

    /// Attaches the registry's garbage collection, which `POST /v1/registry/gc` runs. The
    /// registry starts after the controller (it asks the controller who may push), so this
    /// comes later than [`Controller::start`]; a second call changes nothing.
    pub fn attach_registry_gc(&self, gc: Arc<dyn RegistryGc>) {
        let _ = self.registry_gc.set(gc);
    }

    /// The images in Slipway's registry that releases still need: for every app the release
    /// running, the newest release and the `retain_releases` before it. Destroyed apps have
    /// none; images from other registries are not ours to keep.
    pub(crate) async fn retained_images(&self) -> Result<Vec<KeptImage>, ControllerError> {
        let mut keep = Vec::new();
        for app in self.db.apps().await? {
            let releases = self.db.releases(&app.name).await?;
            let running = self.db.target_release(&app.name).await?;
            let images = releases
                .iter()
                .take(self.config.retain_releases.saturating_add(1))
                .map(|(r, _)| r)
                .chain(running.as_ref().map(|(r, _)| r))
                .filter_map(|r| r.image.as_deref());
            for image in images {
                if let Some(kept) = kept_image(&self.config.registry_addr, image)
                    && !keep.contains(&kept)
                {
                    keep.push(kept);
                }
            }
        }
        Ok(keep)
    }

    /// Collects the registry's garbage, keeping [`Controller::retained_images`], and records
    /// what went in the audit log.
    pub(crate) async fn collect_registry(
        &self,
        actor: &UserName,
        dry_run: bool,
    ) -> Result<GcReport, ControllerError> {
        let gc = self.registry_gc.get().ok_or_else(|| {
            ControllerError::Io("registry garbage collection is not available here".to_owned())
        })?;
        let keep = self.retained_images().await?;
        let managed = [APP_REPOSITORIES.to_owned()];
        let report = gc.collect(&keep, &managed, dry_run).await.map_err(|e| {
            tracing::warn!("registry gc: {e}");
            ControllerError::Io(e.0)
        })?;
        let verb = if dry_run { "would free" } else { "freed" };
        let detail = format!(
            "registry gc {verb} {} bytes: {} manifests, {} blobs",
            report.bytes_freed,
            report.manifests.len(),
            report.blobs.len()
        );
        self.record(None, "registry-gc", actor.as_str(), &detail)
            .await;
        Ok(report)
    }

    /// The domain apps are served under.
    pub fn domain(&self) -> &str {
        &self.config.domain
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    pub(crate) fn crashes(&self) -> &CrashBook {
        &self.crashes
    }

    pub(crate) fn logs(&self) -> &AppLogs {
        &self.logs
    }

    pub(crate) fn engine(&self) -> &dyn Engine {
        self.engine.as_ref()
    }

    pub(crate) fn engine_arc(&self) -> Arc<dyn Engine> {
        self.engine.clone()
    }

    /// How the engine pulls release images from Slipway's registry.
    pub(crate) fn registry_auth(&self) -> RegistryAuth {
        RegistryAuth {
            server: self.config.registry_addr.clone(),
            username: "admin".to_owned(),
            password: self.system_token.clone(),
        }
    }

    pub(crate) fn instance_id(&self) -> &str {
        &self.config.instance_id
    }

    pub(crate) fn notify(&self, event: Event) {
        self.reconciler.send(event);
    }

    /// Returns once the reconciler's first pass over every app has ended, so that the route
    /// table holds the instances that survived a restart of the server.
    pub async fn first_pass(&self) {
        self.reconciler.first_pass().await;
    }

    /// What `user` may do with `app`: the owner, its collaborators and admin may do everything.
    pub async fn access(
        &self,
        user: &UserName,
        app: &AppName,
    ) -> Result<AppAccess, ControllerError> {
        let Some(row) = self.db.app(app).await? else {
            return Ok(AppAccess::NoSuchApp);
        };
        Ok(if self.may_operate(&row, user).await? {
            AppAccess::Allowed
        } else {
            AppAccess::Forbidden
        })
    }

    /// Whether `user` may operate the app in `row`: its owner, a collaborator, or admin.
    pub(crate) async fn may_operate(
        &self,
        row: &db::AppRow,
        user: &UserName,
    ) -> Result<bool, ControllerError> {
        Ok(row.owner == user.as_str()
            || user.as_str() == "admin"
            || self
                .db
                .collaborators(&row.name)
                .await?
                .iter()
                .any(|c| c == user.as_str()))
    }

    /// Creates a user and returns their first API token.
    pub(crate) async fn create_user(&self, name: &UserName) -> Result<String, ControllerError> {
        let token = new_token();
        self.db.create_user(name, &hash_token(&token)).await?;
        Ok(token)
    }

    /// Makes another API token for `user`.
    pub(crate) async fn create_token(&self, user: &UserName) -> Result<String, ControllerError> {
        let token = new_token();
        self.db.add_token(user, &hash_token(&token)).await?;
        Ok(token)
    }

    /// The user behind an API token.
    pub async fn authenticate(&self, token: &str) -> Result<Option<UserName>, ControllerError> {
        if constant_time_eq(token.as_bytes(), self.system_token.as_bytes()) {
            return Ok(Some("admin".parse().expect("admin is a valid user name")));
        }
        Ok(self.db.user_by_token_hash(&hash_token(token)).await?)
    }

    /// Appends to the audit log what `actor` did through the API (with a token, so no key). A
    /// failure to record is logged, never fails the action itself.
    pub(crate) async fn record(
        &self,
        app: Option<&AppName>,
        kind: &str,
        actor: &str,
        detail: &str,
    ) {
        self.record_from(app, kind, actor, None, detail).await;
    }

    /// Appends to the audit log; `key` is the SSH key `actor` used, when one acted (a push).
    pub(crate) async fn record_from(
        &self,
        app: Option<&AppName>,
        kind: &str,
        actor: &str,
        key: Option<&Fingerprint>,
        detail: &str,
    ) {
        if let Err(e) = self.db.add_event(app, kind, actor, key, detail).await {
            tracing::warn!("events: recording {kind}: {e}");
        }
        if let Some(app) = app {
            let by = match key {
                Some(key) => format!("by {actor} with key {key}"),
                None => format!("by {actor}"),
            };
            self.logs
                .append(app, "api", None, &format!("{detail} ({by})"));
        }
    }

    /// Records a release made from the latest one by `change`, and rolls it out. `key` is the
    /// SSH key of a push that made it; `None` when an API token acted.
    pub(crate) async fn release(
        &self,
        app: &AppName,
        key: Option<&Fingerprint>,
        change: impl FnOnce(Option<&Release>) -> NewRelease,
    ) -> Result<Release, ControllerError> {
        let release = self.db.add_release(app, change).await?;
        self.record_from(
            Some(app),
            "release",
            &release.created_by,
            key,
            &format!("{}: {}", release.label(), release.description),
        )
        .await;
        self.reconciler.send(Event::Released(app.clone()));
        Ok(release)
    }

    /// After an app's rows are gone: stop its containers and delete its git repository.
    pub(crate) async fn forget(&self, app: &AppName) -> Result<(), ControllerError> {
        self.reconciler.send(Event::Destroyed(app.clone()));
        self.logs.remove(app);
        let data = &self.config.data_dir;
        for cache in [
            slipway_core::layout::build_cache_path(data, app),
            slipway_core::layout::launch_layers_path(data, app),
        ] {
            if let Err(e) = tokio::fs::remove_file(&cache).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(app = %app, "removing the build cache {}: {e}", cache.display());
            }
        }
        let repo = slipway_core::layout::repo_path(&self.config.data_dir, app);
        match tokio::fs::remove_dir_all(&repo).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ControllerError::Io(format!(
                "removing {}: {e}",
                repo.display()
            ))),
        }
    }
}

async fn create_admin(db: &Db, data_dir: &Path) -> Result<FirstStart, ControllerError> {
    let token = new_token();
    let admin: UserName = "admin".parse().expect("admin is a valid user name");
    let token_path = data_dir.join("admin-token");
    write_secret(&token_path, &token)?;
    db.create_user(&admin, &hash_token(&token)).await?;
    Ok(FirstStart {
        admin_token: token,
        token_path,
    })
}

/// Writes a secret file readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> Result<(), ControllerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| ControllerError::Io(format!("writing {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(format!("{secret}\n").as_bytes()).map_err(io)?;
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn port(e: impl std::fmt::Display) -> PortError {
    PortError(e.to_string())
}

#[async_trait]
impl Identity for Controller {
    async fn key_owner(&self, fp: &Fingerprint) -> Result<Option<KeyOwner>, PortError> {
        self.db.key_owner(fp).await.map_err(port)
    }

    async fn user_by_token(&self, token: &str) -> Result<Option<UserName>, PortError> {
        self.authenticate(token).await.map_err(port)
    }

    async fn app_access(&self, user: &UserName, app: &AppName) -> Result<AppAccess, PortError> {
        self.access(user, app).await.map_err(port)
    }
}

#[async_trait]
impl Releases for Controller {
    async fn release_build(&self, built: BuiltImage) -> Result<Release, PortError> {
        let short = built.commit.chars().take(7).collect::<String>();
        self.release(&built.app, Some(&built.key), |prev| NewRelease {
            image: Some(built.image),
            config: prev.map(|p| p.config.clone()).unwrap_or_default(),
            processes: built.processes,
            commit: Some(built.commit),
            description: format!("deploy {short}"),
            created_by: built.user.to_string(),
        })
        .await
        .map_err(port)
    }

    async fn build_config(&self, app: &AppName) -> Result<slipway_core::Config, PortError> {
        Ok(self
            .db
            .current_release(app)
            .await
            .map_err(port)?
            .map(|r| r.config)
            .unwrap_or_default())
    }

    fn log_build(&self, app: &AppName, text: &str) {
        self.logs.append(app, "build", None, text);
    }

    async fn await_deploy(&self, app: &AppName, version: i64) -> Result<(), PortError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            match self.db.release_status(app, version).await.map_err(port)? {
                Some(ReleaseStatus::Deployed) => return Ok(()),
                Some(ReleaseStatus::Failed) => {
                    return Err(PortError(format!(
                        "v{version} did not start: its web process never accepted connections on $PORT; the previous release keeps serving"
                    )));
                }
                None => return Err(PortError(format!("app {app} was destroyed"))),
                Some(ReleaseStatus::Pending) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(PortError(format!(
                    "v{version} is still starting after 5 minutes"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_images_in_our_registry_are_kept() {
        let check = |image: &str, expected: Option<(&str, &str)>| {
            let kept = kept_image("127.0.0.1:5000", image);
            let got = kept
                .as_ref()
                .map(|k| (k.repository.as_str(), k.digest.as_str()));
            assert_eq!(got, expected, "{image}");
        };
        check(
            "127.0.0.1:5000/apps/web@sha256:abc",
            Some(("apps/web", "sha256:abc")),
        );
        check("127.0.0.1:5000/apps/web:latest", None);
        check("127.0.0.1:50001/apps/web@sha256:abc", None);
        check("registry.example.com/team/app@sha256:abc", None);
        check("127.0.0.1:5000/@sha256:abc", None);
    }
}
