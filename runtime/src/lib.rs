//! The container engine behind one trait. [`Engine`] is everything the reconciler and the
//! builder ask of an engine: pull an image, run a container, list the containers Slipway owns,
//! remove one, run a build container to completion, and build an image from a Dockerfile and push
//! it. [`docker::Docker`] implements it on the Docker Engine through bollard.
//!
//! Invariant: this crate knows nothing of apps or releases; callers pass labels and it filters on
//! them. It never touches a container that lacks the caller's `slipway.instance` label.

pub mod docker;
mod tarcat;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

/// The label every container and image Slipway makes carries: the server instance's id.
pub const LABEL_INSTANCE: &str = "slipway.instance";

/// The label that marks a one-off container (`slipway run`): the reconciler leaves it alone.
pub const LABEL_ONEOFF: &str = "slipway.oneoff";

/// Errors from the container engine.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine could not be reached or refused the request.
    #[error("container engine: {0}")]
    Engine(String),
    /// The image could not be pulled.
    #[error("pulling image {image}: {reason}")]
    Pull {
        /// The image reference.
        image: String,
        /// What the engine said.
        reason: String,
    },
    /// A build container ran longer than its timeout and was killed.
    #[error("build timed out after {0:?}")]
    Timeout(Duration),
    /// A Dockerfile build failed; the reason is the failing step's error.
    #[error("{0}")]
    Build(String),
    /// The image could not be pushed.
    #[error("pushing image {image}: {reason}")]
    Push {
        /// The image reference.
        image: String,
        /// What the engine said.
        reason: String,
    },
}

/// Credentials for pulling from a registry.
#[derive(Clone)]
pub struct RegistryAuth {
    /// The registry's address as the engine reaches it (`127.0.0.1:5000`).
    pub server: String,
    /// The user name.
    pub username: String,
    /// The password or API token.
    pub password: String,
}

impl RegistryAuth {
    /// No login: for an image that must come from a registry that asks for none. Its server is
    /// empty, which no image reference names, so it is sent nowhere.
    pub fn none() -> RegistryAuth {
        RegistryAuth {
            server: String::new(),
            username: String::new(),
            password: String::new(),
        }
    }
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is a token: keep it out of every log line.
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A long-running container to start.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// The container's name; unique per engine.
    pub name: String,
    /// The image reference, already pulled.
    pub image: String,
    /// The command; empty means the image's own.
    pub cmd: Vec<String>,
    /// `KEY=VALUE` environment entries.
    pub env: Vec<String>,
    /// Labels, including [`LABEL_INSTANCE`].
    pub labels: HashMap<String, String>,
    /// A TCP port inside the container to publish on 127.0.0.1 at a port the engine picks.
    pub publish: Option<u16>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<i64>,
    /// CPU limit in billionths of a CPU (1.5 CPUs is 1_500_000_000).
    pub nano_cpus: Option<i64>,
}

/// A container Slipway started, as the engine reports it now.
#[derive(Debug, Clone)]
pub struct Container {
    /// The engine's id.
    pub id: String,
    /// The container's name, without Docker's leading `/`.
    pub name: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Whether it is running.
    pub running: bool,
    /// Where its published port is reachable from this machine (through Docker's proxy).
    pub published: Option<SocketAddr>,
    /// Its address on the engine's bridge network, reachable from this machine directly.
    pub ip: Option<std::net::IpAddr>,
    /// How it ended, once it is not running.
    pub exit_code: Option<i64>,
}

/// One line a container wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When the engine received it, RFC 3339 with nanoseconds, UTC.
    pub timestamp: String,
    /// The line, without its newline.
    pub text: String,
}

/// A tar archive handed to the engine: small ones from memory, pushed sources and caches from a
/// file read in chunks as the engine takes them, so that their size never reaches memory.
#[derive(Clone)]
pub enum Archive {
    /// Bytes in memory: the embedded lifecycle, generated config files.
    Bytes(bytes::Bytes),
    /// A file on disk, streamed.
    File(PathBuf),
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bytes may be config values, which never reach a log line: only their count.
        match self {
            Archive::Bytes(b) => write!(f, "Archive::Bytes({} bytes)", b.len()),
            Archive::File(path) => write!(f, "Archive::File({})", path.display()),
        }
    }
}

/// A build container to run to completion.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// The container's name.
    pub name: String,
    /// The build image, already pulled.
    pub image: String,
    /// The command.
    pub cmd: Vec<String>,
    /// `KEY=VALUE` environment entries.
    pub env: Vec<String>,
    /// Labels, including [`LABEL_INSTANCE`].
    pub labels: HashMap<String, String>,
    /// Tar archives to extract before start, each at a directory in the container, in order
    /// (a later one overwrites what an earlier one wrote). Consecutive archives for the same
    /// directory reach the engine as one.
    pub uploads: Vec<(String, Archive)>,
    /// Memory limit in bytes (swap included: a build never swaps past it).
    pub memory_bytes: i64,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: i64,
    /// Killed after this long.
    pub timeout: Duration,
}

/// How a build container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildExit {
    /// The container, kept for the caller to copy the build's output from.
    pub container: String,
    /// Its exit code.
    pub code: i64,
    /// Whether the kernel killed a process in it for going over the memory limit (the build
    /// may have gone on and failed for that reason with another code).
    pub out_of_memory: bool,
}

/// An image to build from a `Dockerfile` at the root of a build context.
#[derive(Clone)]
pub struct ImageBuild {
    /// The build context: a tar archive (uncompressed or gzip) with the `Dockerfile` at its root.
    pub context: Archive,
    /// The reference to tag the image with: `host:port/repo:tag`.
    pub tag: String,
    /// `--build-arg` values; the Dockerfile sees only those it declares with `ARG`.
    pub build_args: HashMap<String, String>,
    /// Labels put on the image, including [`LABEL_INSTANCE`].
    pub labels: HashMap<String, String>,
    /// Memory limit of each step's container, in bytes.
    pub memory_bytes: i64,
    /// CPU limit of each step's container, in billionths of a CPU.
    pub nano_cpus: i64,
    /// The build is cancelled after this long.
    pub timeout: Duration,
    /// A login the engine may use to pull base images the Dockerfile names (`FROM`) that it
    /// lacks; without one, only images that need no login are pulled.
    pub pull_auth: Option<RegistryAuth>,
}

impl std::fmt::Debug for ImageBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Build arguments may be config values, which never reach a log line.
        f.debug_struct("ImageBuild")
            .field("tag", &self.tag)
            .field("context", &self.context)
            .field("build_args", &self.build_args.keys().collect::<Vec<_>>())
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// The container engine.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Pulls `image` unless the engine already has it, with `auth` only if `image` is in
    /// `auth`'s registry.
    async fn pull(&self, image: &str, auth: &RegistryAuth) -> Result<(), RuntimeError>;

    /// The `ONBUILD` triggers in the config of `image`, which the engine must have (see
    /// [`pull`](Engine::pull)): the instructions it runs in a build right after a `FROM` of it.
    async fn image_triggers(&self, image: &str) -> Result<Vec<String>, RuntimeError>;

    /// Creates and starts a container.
    async fn run(&self, spec: &ContainerSpec) -> Result<Container, RuntimeError>;

    /// One container as the engine reports it now, or `None` when it is gone.
    async fn container(&self, id: &str) -> Result<Option<Container>, RuntimeError>;

    /// The containers, running or not, that carry every one of `labels`.
    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<Container>, RuntimeError>;

    /// Stops a container (SIGTERM, then SIGKILL after `grace`) and removes it.
    async fn remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// Runs a build container until it exits, sending its output to `output` as it comes, and
    /// returns how it ended. The container is kept so that the caller can
    /// [`download`](Engine::download) from it, then [`remove`](Engine::remove) it; one that
    /// outlives the spec's timeout is killed and removed.
    async fn run_build(
        &self,
        spec: BuildSpec,
        output: mpsc::Sender<Vec<u8>>,
    ) -> Result<BuildExit, RuntimeError>;

    /// The last `tail` lines a container wrote (stdout and stderr), each prefixed with its RFC 3339
    /// timestamp.
    async fn logs(&self, id: &str, tail: usize) -> Result<Vec<u8>, RuntimeError>;

    /// Follows a container's output (stdout and stderr) from `since` (seconds since the epoch;
    /// 0 for all of it) and sends it line by line until the container stops or `lines` closes.
    async fn follow_logs(
        &self,
        id: &str,
        since: i64,
        lines: mpsc::Sender<LogLine>,
    ) -> Result<(), RuntimeError>;

    /// Sends the id of each container carrying every one of `labels` as it exits, until the
    /// engine's event stream ends (the caller reconnects) or `exits` closes.
    async fn watch_exits(
        &self,
        labels: &[(&str, &str)],
        exits: mpsc::Sender<String>,
    ) -> Result<(), RuntimeError>;

    /// A tar archive of `path` inside a (possibly stopped) container, written to `dest`.
    async fn download(
        &self,
        id: &str,
        path: &str,
        dest: &std::path::Path,
    ) -> Result<(), RuntimeError>;

    /// Builds an image from a Dockerfile, pulling the base images the engine lacks (with
    /// `pull_auth`, if any, for its registry), sending the build's output to `output` as it comes, and
    /// returns the image's id.
    /// A failed step fails the build with the engine's error (the step's own output has already
    /// been sent); a build that outlives its timeout is cancelled.
    async fn build_image(
        &self,
        build: ImageBuild,
        output: mpsc::Sender<Vec<u8>>,
    ) -> Result<String, RuntimeError>;

    /// Pushes the local image `tag` (`host:port/repo:tag`) to its registry, sending progress to
    /// `output`, and returns the pushed manifest's digest (`sha256:...`). `auth` is sent only
    /// when `tag` names `auth`'s registry.
    async fn push_image(
        &self,
        tag: &str,
        auth: &RegistryAuth,
        output: mpsc::Sender<Vec<u8>>,
    ) -> Result<String, RuntimeError>;
}
