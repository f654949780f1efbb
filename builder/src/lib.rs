//! The builder: Slipway's SSH git server and build pipeline.
//!
//! [`ssh`] accepts `git push` and `git clone` over SSH (public keys only, identity from the
//! verified key), runs git's own receive-pack/upload-pack on the app's bare repository, and for
//! a push hands the commit from the pre-receive [`hook`] to the [`pipeline`]: receive → detect →
//! build → export → release → deploy. [`export`] writes the image straight to the registry; an
//! app with a `Dockerfile` at its root is built and pushed by the engine instead (`dockerfile`),
//! once `base_images` has found no image in it that the pusher may not read.
//!
//! Invariants: no path is built from a name that was not validated as an [`AppName`]; git gets
//! no environment from the client except `GIT_PROTOCOL`; the builder asks the controller only
//! through the ports in `slipway_core::ports` and never touches its database.

mod base_images;
mod cache;
mod dockerfile;
pub mod export;
pub mod hook;
mod pipeline;
pub mod ssh;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_core::AppName;
use slipway_core::ports::{Identity, Releases};
use slipway_runtime::Engine;

/// Errors of a build, each naming the phase that failed. Messages go to the pusher.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The pushed source could not be read.
    #[error("receive: {0}")]
    Receive(String),
    /// No buildpack recognised the app.
    #[error("detect: {0}")]
    Detect(String),
    /// The build container failed.
    #[error("build: {0}")]
    Build(String),
    /// The image could not be written to the registry.
    #[error("export: {0}")]
    Export(String),
    /// The release could not be recorded.
    #[error("release: {0}")]
    Release(String),
    /// The release did not start serving.
    #[error("deploy: {0}")]
    Deploy(String),
}

/// Errors starting the builder.
#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    /// A file or socket could not be set up.
    #[error("{0}")]
    Io(String),
    /// The SSH host key could not be read or made.
    #[error("ssh host key: {0}")]
    HostKey(String),
}

/// Settings of the builder.
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    /// Data directory: `repos/`, `hooks/`, `run/`, `tmp/` and the SSH host key live here.
    pub data_dir: PathBuf,
    /// The SSH listen address.
    pub ssh_addr: SocketAddr,
    /// The registry as the container engine reaches it: `127.0.0.1:5000`.
    pub registry_addr: String,
    /// Registry user for pushes and pulls.
    pub registry_user: String,
    /// Registry token (kept out of logs).
    pub registry_token: String,
    /// This server's instance id, put on build containers.
    pub instance_id: String,
    /// Apps are served at `<app>.<domain>`; shown to the pusher.
    pub domain: String,
    /// The build image: a repository and tag in Slipway's registry, or a reference to any
    /// image the container engine can pull.
    pub build_image: String,
    /// The run image: a repository and tag in Slipway's registry, or a reference to an image
    /// another registry serves without a login (its layers are copied in).
    pub run_image: String,
    /// The program the pre-receive hook runs (`slipway`), with `hook pre-receive`.
    pub hook_program: PathBuf,
    /// A build is killed after this long.
    pub build_timeout: Duration,
    /// Memory limit of a build container.
    pub build_memory_bytes: i64,
    /// CPU limit of a build container, in billionths of a CPU.
    pub build_nano_cpus: i64,
    /// Per-address limits of the SSH server: attempts, connections, grace and idle periods.
    pub ssh_limits: ssh::SshLimits,
}

impl BuilderConfig {
    /// Default stack images, timeouts and limits for the given addresses.
    pub fn new(data_dir: PathBuf, ssh_addr: SocketAddr, registry_addr: String) -> Self {
        BuilderConfig {
            data_dir,
            ssh_addr,
            registry_addr,
            registry_user: String::new(),
            registry_token: String::new(),
            instance_id: String::new(),
            domain: String::new(),
            build_image: "stacks/build:bookworm".into(),
            run_image: "stacks/run:bookworm".into(),
            hook_program: PathBuf::from("slipway"),
            build_timeout: Duration::from_secs(15 * 60),
            build_memory_bytes: 2 << 30,
            build_nano_cpus: 1_500_000_000,
            ssh_limits: ssh::SshLimits::default(),
        }
    }
}

/// State shared by every SSH session and build.
pub(crate) struct Shared {
    pub(crate) config: BuilderConfig,
    pub(crate) identity: Arc<dyn Identity>,
    pub(crate) releases: Arc<dyn Releases>,
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) scratch: PathBuf,
    build_locks: Mutex<HashMap<AppName, Arc<tokio::sync::Mutex<()>>>>,
}

impl Shared {
    /// The lock that keeps builds of one app one at a time.
    pub(crate) fn build_lock(&self, app: &AppName) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.build_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(app.clone()).or_default().clone()
    }

    pub(crate) fn repo_path(&self, app: &AppName) -> PathBuf {
        self.config
            .data_dir
            .join("repos")
            .join(format!("{app}.git"))
    }
}

/// Starts the SSH git server on its listen address; returns its bound address once listening.
pub async fn start(
    config: BuilderConfig,
    identity: Arc<dyn Identity>,
    releases: Arc<dyn Releases>,
    engine: Arc<dyn Engine>,
) -> Result<SocketAddr, BuilderError> {
    let io = |what: &str, e: std::io::Error| BuilderError::Io(format!("{what}: {e}"));
    for dir in ["repos", "hooks", "run", "tmp"] {
        std::fs::create_dir_all(config.data_dir.join(dir)).map_err(|e| io(dir, e))?;
    }
    let hook_path = config.data_dir.join("hooks/pre-receive");
    std::fs::write(&hook_path, hook::script(&config.hook_program))
        .map_err(|e| io("writing the pre-receive hook", e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook_path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io("writing the pre-receive hook", e))?;
    }
    let shared = Arc::new(Shared {
        scratch: config.data_dir.join("tmp"),
        config,
        identity,
        releases,
        engine,
        build_locks: Mutex::default(),
    });
    ssh::serve(shared).await
}

/// The registry host an image reference names (`ghcr.io/x/y:1` gives `ghcr.io`), or `None` for a
/// repository in Slipway's own registry (`stacks/run:bookworm`).
pub(crate) fn registry_host(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains(['.', ':']) || first == "localhost").then_some(first)
}

/// `image` as the engine pulls it: as it is when it names a registry, else in `registry`.
pub(crate) fn in_registry(registry: &str, image: &str) -> String {
    match registry_host(image) {
        Some(_) => image.to_owned(),
        None => format!("{registry}/{image}"),
    }
}

#[cfg(test)]
mod image_names {
    use super::*;

    #[test]
    fn own_registry_or_another() {
        assert_eq!(registry_host("stacks/run:bookworm"), None);
        assert_eq!(registry_host("debian:bookworm"), None);
        assert_eq!(registry_host("ghcr.io/x/run:1"), Some("ghcr.io"));
        assert_eq!(registry_host("127.0.0.1:5001/run"), Some("127.0.0.1:5001"));
        assert_eq!(
            in_registry("127.0.0.1:5000", "stacks/build:bookworm"),
            "127.0.0.1:5000/stacks/build:bookworm"
        );
        assert_eq!(
            in_registry("127.0.0.1:5000", "ghcr.io/x/b:1"),
            "ghcr.io/x/b:1"
        );
    }
}
