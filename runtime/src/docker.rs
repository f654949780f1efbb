//! [`Engine`] on the Docker Engine, through bollard and the local socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, CreateImageOptions, DownloadFromContainerOptions,
    EventsOptions, ListContainersOptions, LogsOptions, PushImageOptions, RemoveContainerOptions,
    StopContainerOptions, UploadToContainerOptions, WaitContainerOptions,
};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::{
    Archive, BuildExit, BuildSpec, Container, ContainerSpec, Engine, ImageBuild, LogLine,
    RegistryAuth, RuntimeError,
};

/// The Docker Engine on this machine.
#[derive(Clone)]
pub struct Docker {
    api: bollard::Docker,
}

fn engine(e: bollard::errors::Error) -> RuntimeError {
    RuntimeError::Engine(e.to_string())
}

/// Bytes read from an archive file per chunk sent to the engine: large enough that a gigabyte
/// is not a quarter of a million tiny writes, small enough that nothing piles up in memory.
const ARCHIVE_CHUNK: usize = 256 * 1024;

/// An archive as a request body stream. A file is opened here, so a missing one fails with its
/// path rather than as a broken request, and then read chunk by chunk as the engine takes it.
async fn archive_body(
    archive: Archive,
) -> Result<BoxStream<'static, std::io::Result<Bytes>>, RuntimeError> {
    match archive {
        Archive::Bytes(bytes) => Ok(futures_util::stream::once(async { Ok(bytes) }).boxed()),
        Archive::File(path) => {
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| RuntimeError::Engine(format!("opening {}: {e}", path.display())))?;
            Ok(tokio_util::io::ReaderStream::with_capacity(file, ARCHIVE_CHUNK).boxed())
        }
    }
}

impl Docker {
    /// Connects to the local Docker Engine (`DOCKER_HOST` or the default socket) and checks that
    /// it answers.
    pub async fn connect() -> Result<Docker, RuntimeError> {
        let api = bollard::Docker::connect_with_local_defaults().map_err(engine)?;
        api.ping().await.map_err(|e| {
            RuntimeError::Engine(format!(
                "Docker Engine is not answering ({e}); start it with `dockerd &` or run setup.sh"
            ))
        })?;
        Ok(Docker { api })
    }

    async fn inspect(&self, id: &str) -> Result<Container, RuntimeError> {
        let info = self.api.inspect_container(id, None).await.map_err(engine)?;
        Ok(to_container(info))
    }
}

/// A container as the engine's inspect answer describes it.
fn to_container(info: bollard::models::ContainerInspectResponse) -> Container {
    let network = info.network_settings.unwrap_or_default();
    let ip = network.networks.and_then(|nets| {
        nets.into_values()
            .find_map(|n| n.ip_address.filter(|a| !a.is_empty())?.parse().ok())
    });
    let published = network.ports.and_then(|ports| {
        ports.into_values().flatten().flatten().find_map(|b| {
            let port: u16 = b.host_port?.parse().ok()?;
            Some(SocketAddr::from(([127, 0, 0, 1], port)))
        })
    });
    let config = info.config.unwrap_or_default();
    let state = info.state.unwrap_or_default();
    let running = state.running.unwrap_or(false);
    Container {
        id: info.id.unwrap_or_default(),
        name: info
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        labels: config.labels.unwrap_or_default(),
        running,
        published,
        ip,
        exit_code: if running { None } else { state.exit_code },
    }
}

/// A line as the engine sends it with `timestamps`: `<RFC 3339 time> <text>`.
fn split_timestamp(line: &[u8]) -> LogLine {
    let line = String::from_utf8_lossy(line);
    let line = line.strip_suffix('\r').unwrap_or(&line);
    match line.split_once(' ') {
        Some((ts, text)) if ts.len() >= 20 && ts.as_bytes()[4] == b'-' => LogLine {
            timestamp: ts.to_owned(),
            text: text.to_owned(),
        },
        _ => LogLine {
            timestamp: String::new(),
            text: line.to_owned(),
        },
    }
}

/// The registry host of an image reference (`127.0.0.1:5000/apps/x@sha256:..` gives
/// `127.0.0.1:5000`; `python:3` gives `docker.io`).
fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// `auth` as the engine takes it, but only for an image of `auth`'s own registry: credentials
/// never go to a registry named in a user's image reference.
fn credentials_for(image: &str, auth: &RegistryAuth) -> Option<DockerCredentials> {
    (registry_of(image) == auth.server).then(|| DockerCredentials {
        username: Some(auth.username.clone()),
        password: Some(auth.password.clone()),
        serveraddress: Some(auth.server.clone()),
        ..Default::default()
    })
}

/// Splits `host:port/repo:tag` into (`host:port/repo`, `tag`); a reference without a tag gets
/// `latest`, as the engine would.
fn split_tag(reference: &str) -> (&str, &str) {
    let name_start = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[name_start..].rfind(':') {
        Some(i) => (
            &reference[..name_start + i],
            &reference[name_start + i + 1..],
        ),
        None => (reference, "latest"),
    }
}

/// The manifest digest in the engine's last push status line:
/// `<tag>: digest: sha256:<hex> size: <n>`.
fn pushed_digest(status: &str) -> Option<&str> {
    let rest = status.split_once("digest: ")?.1;
    let digest = rest.split_whitespace().next()?;
    digest.starts_with("sha256:").then_some(digest)
}

/// CPU period and quota (microseconds) that give `nano_cpus` billionths of a CPU, as the build
/// API takes a CPU limit.
fn cpu_quota(nano_cpus: i64) -> (i32, i32) {
    const PERIOD: i64 = 100_000;
    let quota =
        (nano_cpus.saturating_mul(PERIOD) / 1_000_000_000).clamp(1_000, i64::from(i32::MAX));
    (PERIOD as i32, quota as i32)
}

#[async_trait]
impl Engine for Docker {
    async fn pull(&self, image: &str, auth: &RegistryAuth) -> Result<(), RuntimeError> {
        if self.api.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let credentials = credentials_for(image, auth);
        let options = CreateImageOptions {
            from_image: Some(image.to_owned()),
            ..Default::default()
        };
        let mut progress = self.api.create_image(Some(options), None, credentials);
        while let Some(step) = progress.next().await {
            step.map_err(|e| RuntimeError::Pull {
                image: image.to_owned(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    async fn image_triggers(&self, image: &str) -> Result<Vec<String>, RuntimeError> {
        let info = self.api.inspect_image(image).await.map_err(engine)?;
        Ok(info.config.and_then(|c| c.on_build).unwrap_or_default())
    }

    async fn run(&self, spec: &ContainerSpec) -> Result<Container, RuntimeError> {
        let mut host = HostConfig {
            memory: spec.memory_bytes,
            nano_cpus: spec.nano_cpus,
            init: Some(true),
            ..Default::default()
        };
        let mut exposed = None;
        if let Some(port) = spec.publish {
            let key = format!("{port}/tcp");
            // Port "" lets the engine pick a free port; 127.0.0.1 keeps it off the network.
            host.port_bindings = Some(HashMap::from([(
                key.clone(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".to_owned()),
                    host_port: Some(String::new()),
                }]),
            )]));
            exposed = Some(vec![key]);
        }
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.cmd.is_empty()).then(|| spec.cmd.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            exposed_ports: exposed,
            host_config: Some(host),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let created = self
            .api
            .create_container(Some(options), body)
            .await
            .map_err(engine)?;
        if let Err(e) = self.api.start_container(&created.id, None).await {
            let _ = self.remove(&created.id, Duration::ZERO).await;
            return Err(engine(e));
        }
        self.inspect(&created.id).await
    }

    async fn container(&self, id: &str) -> Result<Option<Container>, RuntimeError> {
        match self.api.inspect_container(id, None).await {
            Ok(info) => Ok(Some(to_container(info))),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(engine(e)),
        }
    }

    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<Container>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let summaries = self
            .api
            .list_containers(Some(options))
            .await
            .map_err(engine)?;
        let mut out = Vec::with_capacity(summaries.len());
        for s in summaries {
            let Some(id) = s.id else { continue };
            match self.inspect(&id).await {
                Ok(c) => out.push(c),
                // Removed between list and inspect: it is simply gone.
                Err(_) => continue,
            }
        }
        Ok(out)
    }

    async fn remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let stop = StopContainerOptions {
            t: Some(grace.as_secs().try_into().unwrap_or(i32::MAX)),
            ..Default::default()
        };
        // A container that already stopped answers 304; either way, remove it next.
        let _ = self.api.stop_container(id, Some(stop)).await;
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.api.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(engine(e)),
        }
    }

    async fn run_build(
        &self,
        spec: BuildSpec,
        output: mpsc::Sender<Vec<u8>>,
    ) -> Result<BuildExit, RuntimeError> {
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.cmd.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            host_config: Some(HostConfig {
                memory: Some(spec.memory_bytes),
                // Swap counts against the limit: on a host with swap a build over it would
                // otherwise crawl instead of stopping.
                memory_swap: Some(spec.memory_bytes),
                nano_cpus: Some(spec.nano_cpus),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let id = self
            .api
            .create_container(Some(options), body)
            .await
            .map_err(engine)?
            .id;
        // Archives bound for the same directory, one after another, go as one archive: one
        // request to the engine instead of one each.
        let mut uploads = spec.uploads.into_iter().peekable();
        while let Some((path, first)) = uploads.next() {
            let mut parts = vec![archive_body(first).await?];
            while let Some((_, next)) = uploads.next_if(|(p, _)| *p == path) {
                parts.push(archive_body(next).await?);
            }
            let body = match parts.len() {
                1 => parts.remove(0),
                _ => crate::tarcat::concat(parts),
            };
            let options = UploadToContainerOptions {
                path,
                ..Default::default()
            };
            self.api
                .upload_to_container(&id, Some(options), bollard::body_try_stream(body))
                .await
                .map_err(engine)?;
        }
        self.api.start_container(&id, None).await.map_err(engine)?;

        let logs = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut stream = self.api.logs(&id, Some(logs));
        let relay = async {
            while let Some(Ok(chunk)) = stream.next().await {
                if output.send(chunk.into_bytes().to_vec()).await.is_err() {
                    break;
                }
            }
        };
        if tokio::time::timeout(spec.timeout, relay).await.is_err() {
            let _ = self.remove(&id, Duration::ZERO).await;
            return Err(RuntimeError::Timeout(spec.timeout));
        }
        let mut wait = self.api.wait_container(&id, None::<WaitContainerOptions>);
        let wait_code = match wait.next().await {
            Some(Ok(r)) => r.status_code,
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(engine(e)),
            // No answer: the exit code comes from the inspection below.
            None => -1,
        };
        let state = self
            .api
            .inspect_container(&id, None)
            .await
            .map_err(engine)?
            .state
            .unwrap_or_default();
        let code = match wait_code {
            -1 => state.exit_code.unwrap_or(-1),
            code => code,
        };
        Ok(BuildExit {
            container: id,
            code,
            out_of_memory: state.oom_killed.unwrap_or(false),
        })
    }

    async fn logs(&self, id: &str, tail: usize) -> Result<Vec<u8>, RuntimeError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            timestamps: true,
            tail: tail.to_string(),
            ..Default::default()
        };
        let mut stream = self.api.logs(id, Some(options));
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.map_err(engine)?.into_bytes());
        }
        Ok(out)
    }

    async fn follow_logs(
        &self,
        id: &str,
        since: i64,
        lines: mpsc::Sender<LogLine>,
    ) -> Result<(), RuntimeError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            timestamps: true,
            follow: true,
            since: since.try_into().unwrap_or(0),
            ..Default::default()
        };
        let mut stream = self.api.logs(id, Some(options));
        // stdout and stderr arrive in frames that need not end at a newline: each keeps its own
        // unfinished line.
        let mut partial: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(engine)?;
            let which = usize::from(matches!(chunk, LogOutput::StdErr { .. }));
            let buf = &mut partial[which];
            buf.extend_from_slice(&chunk.into_bytes());
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                if lines.send(split_timestamp(&line[..end])).await.is_err() {
                    return Ok(());
                }
            }
        }
        for buf in partial.iter().filter(|b| !b.is_empty()) {
            let _ = lines.send(split_timestamp(buf)).await;
        }
        Ok(())
    }

    async fn watch_exits(
        &self,
        labels: &[(&str, &str)],
        exits: mpsc::Sender<String>,
    ) -> Result<(), RuntimeError> {
        let mut filters: HashMap<String, Vec<String>> = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("event".to_owned(), vec!["die".to_owned()]),
        ]);
        filters.insert(
            "label".to_owned(),
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        );
        let options = EventsOptions {
            filters: Some(filters),
            ..Default::default()
        };
        let mut stream = self.api.events(Some(options));
        while let Some(event) = stream.next().await {
            let event = event.map_err(engine)?;
            if let Some(id) = event.actor.and_then(|a| a.id)
                && exits.send(id).await.is_err()
            {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn download(&self, id: &str, path: &str, dest: &Path) -> Result<(), RuntimeError> {
        let options = DownloadFromContainerOptions {
            path: path.to_owned(),
        };
        let mut stream = self.api.download_from_container(id, Some(options));
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| RuntimeError::Engine(format!("creating {}: {e}", dest.display())))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(engine)?;
            file.write_all(&chunk)
                .await
                .map_err(|e| RuntimeError::Engine(format!("writing {}: {e}", dest.display())))?;
        }
        file.flush()
            .await
            .map_err(|e| RuntimeError::Engine(format!("writing {}: {e}", dest.display())))?;
        Ok(())
    }

    async fn build_image(
        &self,
        build: ImageBuild,
        output: mpsc::Sender<Vec<u8>>,
    ) -> Result<String, RuntimeError> {
        let (cpuperiod, cpuquota) = cpu_quota(build.nano_cpus);
        let memory: i32 = build
            .memory_bytes
            .clamp(6 << 20, i64::from(i32::MAX))
            .try_into()
            .unwrap_or(i32::MAX);
        let options = BuildImageOptions {
            dockerfile: "Dockerfile".to_owned(),
            t: Some(build.tag.clone()),
            // The build API takes the memory limit as a 32-bit number here: at most 2 GiB.
            memory: Some(memory),
            // Swap counts against the limit, as for buildpack builds.
            memswap: Some(memory),
            cpuperiod: Some(cpuperiod),
            cpuquota: Some(cpuquota),
            buildargs: Some(build.build_args),
            labels: Some(build.labels),
            // Never asked to pull: a base image the engine has is used as it is, so a build runs
            // the very image whose `ONBUILD` triggers the builder read before it (and pulled,
            // if the engine lacked it). Only one it lacks is pulled (with `pull_auth`, if any).
            pull: None,
            rm: true,
            forcerm: true,
            ..Default::default()
        };
        let context = bollard::body_try_stream(archive_body(build.context).await?);
        let logins = build.pull_auth.as_ref().map(|auth| {
            let login = DockerCredentials {
                username: Some(auth.username.clone()),
                password: Some(auth.password.clone()),
                serveraddress: Some(auth.server.clone()),
                ..Default::default()
            };
            HashMap::from([(auth.server.clone(), login)])
        });
        let mut stream = self.api.build_image(options, logins, Some(context));
        let mut image_id = None;
        let relay = async {
            while let Some(info) = stream.next().await {
                let info = info.map_err(|e| match e {
                    bollard::errors::Error::DockerStreamError { error } => {
                        let mut error = error.trim_end().to_owned();
                        // 137 is SIGKILL, which is what the kernel sends a step over its
                        // memory limit.
                        if error.ends_with("returned a non-zero code: 137") {
                            error.push_str(&format!(
                                " (killed: out of memory? the limit is {} MiB)",
                                memory >> 20
                            ));
                        }
                        RuntimeError::Build(error)
                    }
                    e => engine(e),
                })?;
                if let Some(id) = info.aux.and_then(|a| a.id) {
                    image_id = Some(id);
                }
                if let Some(text) = info.stream.or(info.status) {
                    // A closed receiver means nobody listens any more; the build goes on.
                    let _ = output.send(text.into_bytes()).await;
                }
            }
            Ok::<(), RuntimeError>(())
        };
        // Dropping the request on timeout closes the connection, which cancels the build.
        tokio::time::timeout(build.timeout, relay)
            .await
            .map_err(|_| RuntimeError::Timeout(build.timeout))??;
        match image_id {
            Some(id) => Ok(id),
            None => self
                .api
                .inspect_image(&build.tag)
                .await
                .map_err(engine)?
                .id
                .ok_or_else(|| {
                    RuntimeError::Build(format!("no image {} after the build", build.tag))
                }),
        }
    }

    async fn push_image(
        &self,
        tag: &str,
        auth: &RegistryAuth,
        output: mpsc::Sender<Vec<u8>>,
    ) -> Result<String, RuntimeError> {
        let (repository, version) = split_tag(tag);
        let options = PushImageOptions {
            tag: Some(version.to_owned()),
            ..Default::default()
        };
        let failed = |reason: String| RuntimeError::Push {
            image: tag.to_owned(),
            reason,
        };
        let mut stream = self
            .api
            .push_image(repository, Some(options), credentials_for(tag, auth));
        let mut digest = None;
        while let Some(info) = stream.next().await {
            let info = info.map_err(|e| failed(e.to_string()))?;
            let Some(status) = info.status else { continue };
            if let Some(d) = pushed_digest(&status) {
                digest = Some(d.to_owned());
            }
            // The repository and the digest; per-layer lines (without the layer's id, which
            // this API model drops) would only flood the pusher.
            let per_layer = matches!(
                status.as_str(),
                "Preparing" | "Waiting" | "Pushing" | "Pushed" | "Layer already exists"
            ) || status.starts_with("Mounted from");
            if !per_layer {
                let _ = output.send(format!("{status}\n").into_bytes()).await;
            }
        }
        if let Some(digest) = digest {
            return Ok(digest);
        }
        // Older engines may not print the digest: the image's repo digests name it.
        let info = self.api.inspect_image(tag).await.map_err(engine)?;
        info.repo_digests
            .unwrap_or_default()
            .iter()
            .find_map(|r| {
                r.strip_prefix(repository)?
                    .strip_prefix('@')
                    .map(str::to_owned)
            })
            .ok_or_else(|| failed("the engine did not report the pushed digest".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::{cpu_quota, credentials_for, pushed_digest, registry_of, split_tag};
    use crate::RegistryAuth;

    #[test]
    fn tags() {
        assert_eq!(
            split_tag("127.0.0.1:5000/apps/web:abc123"),
            ("127.0.0.1:5000/apps/web", "abc123")
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/apps/web"),
            ("127.0.0.1:5000/apps/web", "latest")
        );
        assert_eq!(split_tag("python:3"), ("python", "3"));
    }

    #[test]
    fn push_status_digest() {
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            pushed_digest(&format!("abc: digest: {d} size: 1234")),
            Some(d)
        );
        assert_eq!(pushed_digest("Pushed"), None);
        assert_eq!(pushed_digest("digest: md5:00 size: 1"), None);
    }

    #[test]
    fn cpu_limits() {
        assert_eq!(cpu_quota(1_500_000_000), (100_000, 150_000));
        assert_eq!(cpu_quota(1_000_000_000), (100_000, 100_000));
        // Too small a quota is refused by the kernel; keep at least 1% of a CPU.
        assert_eq!(cpu_quota(1), (100_000, 1_000));
    }

    #[test]
    fn registry_hosts() {
        assert_eq!(
            registry_of("127.0.0.1:5000/apps/web@sha256:ab"),
            "127.0.0.1:5000"
        );
        assert_eq!(registry_of("ghcr.io/org/app:1"), "ghcr.io");
        assert_eq!(registry_of("localhost/app"), "localhost");
        assert_eq!(registry_of("python:3"), "docker.io");
        assert_eq!(registry_of("library/python"), "docker.io");
        // A user's image naming a host that merely starts like ours is another registry.
        assert_eq!(
            registry_of("127.0.0.1:5000.evil.com/x"),
            "127.0.0.1:5000.evil.com"
        );
    }

    #[test]
    fn no_login_is_sent_nowhere() {
        for image in [
            "python:3",
            "/x",
            "localhost/x",
            "127.0.0.1:5000/apps/web:1",
            ":/x",
        ] {
            assert!(
                credentials_for(image, &RegistryAuth::none()).is_none(),
                "{image}"
            );
        }
    }
}
