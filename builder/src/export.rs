//! Export: turns a finished build (the app in `/workspace`, buildpack layers in `/layers`) into
//! an OCI image on top of the run image, and pushes it straight to the registry.
//!
//! Layers are deterministic: entries sorted by path, every mtime fixed, owners 1000:1000, so the
//! same build output gives the same digests. A layer the registry already has is not uploaded.
//! The app's code is the last layer, so a code-only change uploads only that one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use oci_client::client::{Client, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use slipway_core::ProcessTypes;

use crate::BuildError;

/// Seconds since the epoch written as every file's mtime (1980-01-01, as CNB uses).
pub(crate) const EPOCH: u64 = 315_532_800;
/// The user and group that builds and apps run as in the stack images.
const UID: u64 = 1000;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Where and as whom to push.
#[derive(Clone)]
pub struct Target {
    /// The registry as the engine reaches it: `127.0.0.1:5000`.
    pub registry: String,
    /// User name.
    pub username: String,
    /// API token.
    pub token: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// One layer of the image: written to disk, ready to push, or reused from the previous image.
struct Layer {
    /// The layer's bytes; `None` for a layer the previous image already has in the registry.
    file: Option<tempfile::NamedTempFile>,
    digest: String,
    diff_id: String,
    size: u64,
    what: String,
}

/// A launch layer as the image holds it, kept after the export so the next build of the app
/// can reuse it without its contents (a buildpack re-declares it, unchanged, by its metadata).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LaunchLayer {
    /// `<escaped buildpack id>/<layer>`.
    pub rel: String,
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    /// The `<layer>.toml` the buildpack wrote, handed back as metadata in the next build.
    pub toml: String,
    /// What the layer adds to the image's environment, which a reused layer still adds.
    pub env: Vec<EnvOp>,
}

/// The largest `<layer>.toml` kept for reuse; a layer with more metadata is rebuilt each time.
const LAYER_TOML_MAX: u64 = 64 * 1024;

/// One change a launch layer makes to the environment, as CNB `env/` files name them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct EnvOp {
    pub key: String,
    /// `override`, `default`, `prepend` or `append`.
    pub action: String,
    pub value: String,
}

/// What the export produced.
pub struct Exported {
    /// The image by digest: `registry/apps/<app>@sha256:...`.
    pub image: String,
    /// Bytes uploaded to the registry (layers it lacked, config, manifest).
    pub uploaded: u64,
    /// Process types from the buildpacks' `launch.toml`.
    pub launch_processes: ProcessTypes,
    /// The image's launch layers, for the next build to reuse.
    pub(crate) launch_layers: Vec<LaunchLayer>,
    /// How many launch layers came unchanged from the previous image.
    pub reused: usize,
}

struct HashWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn io(what: &str) -> impl Fn(std::io::Error) -> BuildError + '_ {
    move |e| BuildError::Export(format!("{what}: {e}"))
}

/// Writes a deterministic gzip layer holding `root/rel` for each of `dirs`, under the same
/// relative paths (each dir's parents included as directory entries).
fn write_layer(
    root: &Path,
    dirs: &[&str],
    scratch: &Path,
    what: &str,
) -> Result<Layer, BuildError> {
    let file = tempfile::NamedTempFile::new_in(scratch).map_err(io("creating a layer"))?;
    let out = HashWriter {
        inner: std::io::BufWriter::new(file.reopen().map_err(io("opening a layer"))?),
        hash: Sha256::new(),
        len: 0,
    };
    let gz = GzEncoder::new(out, Compression::fast());
    let mut tar = tar::Builder::new(HashWriter {
        inner: gz,
        hash: Sha256::new(),
        len: 0,
    });
    let mut seen = std::collections::BTreeSet::new();
    for rel in dirs {
        let mut parent = PathBuf::new();
        for part in Path::new(rel).iter() {
            parent.push(part);
            if seen.insert(parent.clone()) {
                append(&mut tar, root, &parent)?;
            }
        }
        let mut entries = Vec::new();
        walk(&root.join(rel), Path::new(rel), &mut entries).map_err(io("reading build output"))?;
        for entry in entries {
            append(&mut tar, root, &entry)?;
        }
    }
    let inner = tar.into_inner().map_err(io("writing a layer"))?;
    let diff_id = format!("sha256:{}", hex::encode(inner.hash.finalize()));
    let mut out = inner.inner.finish().map_err(io("compressing a layer"))?;
    out.flush().map_err(io("writing a layer"))?;
    Ok(Layer {
        file: Some(file),
        digest: format!("sha256:{}", hex::encode(out.hash.finalize())),
        diff_id,
        size: out.len,
        what: what.to_owned(),
    })
}

/// Every path under `dir`, sorted, depth first, relative to the layer root.
/// Every path under `dir`, relative to `dir`'s root as `rel`, sorted, directories before
/// their contents.
pub(crate) fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel = rel.join(&name);
        out.push(rel.clone());
        if std::fs::symlink_metadata(&path)?.is_dir() {
            walk(&path, &rel, out)?;
        }
    }
    Ok(())
}

fn append<W: Write>(tar: &mut tar::Builder<W>, root: &Path, rel: &Path) -> Result<(), BuildError> {
    append_as(tar, root, rel, rel)
}

/// Appends `root/rel` as `name`, owned by the stack user, with a fixed mtime.
pub(crate) fn append_as<W: Write>(
    tar: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    name: &Path,
) -> Result<(), BuildError> {
    let path = root.join(rel);
    let meta = std::fs::symlink_metadata(&path).map_err(io("reading build output"))?;
    let mut header = tar::Header::new_ustar();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
    header.set_mtime(EPOCH);
    header.set_uid(UID);
    header.set_gid(UID);
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(&path).map_err(io("reading a symlink"))?;
        header.set_size(0);
        tar.append_link(&mut header, name, target)
            .map_err(io("writing a layer"))?;
    } else if ft.is_dir() {
        header.set_size(0);
        tar.append_data(&mut header, name, std::io::empty())
            .map_err(io("writing a layer"))?;
    } else if ft.is_file() {
        let f = std::fs::File::open(&path).map_err(io("reading build output"))?;
        tar.append_data(&mut header, name, f)
            .map_err(io("writing a layer"))?;
    }
    // Sockets, fifos and devices have no place in an image; they are skipped.
    Ok(())
}

/// What the lifecycle reports about a build (`/layers/slipway-build.json`): it reads the
/// buildpacks' TOML, so the exporter never does.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct BuildReport {
    /// Launch layers, `<escaped buildpack id>/<layer>` under `/layers`, in build order.
    #[serde(default)]
    pub launch_layers: Vec<String>,
    /// Layers to keep for the next build, in the same form.
    #[serde(default)]
    pub cache_layers: Vec<String>,
    /// Launch layers to take unchanged from the previous image (also in `launch_layers`).
    #[serde(default)]
    pub reused_layers: Vec<String>,
    /// Process types and their shell commands.
    #[serde(default)]
    pub processes: ProcessTypes,
}

impl BuildReport {
    /// Reads the report the lifecycle wrote under `layers_dir`; a layer path that is not two
    /// plain names is refused, since buildpacks (user code) ran before it was read.
    pub(crate) fn read(layers_dir: &Path) -> Result<BuildReport, BuildError> {
        let path = layers_dir.join("slipway-build.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| BuildError::Export(format!("the build left no report ({e})")))?;
        let report: BuildReport = serde_json::from_str(&text)
            .map_err(|e| BuildError::Export(format!("the build report is garbled: {e}")))?;
        let all = report.launch_layers.iter().chain(&report.cache_layers);
        for rel in all.chain(&report.reused_layers) {
            let plain = |c: &str| !c.is_empty() && c != "." && c != "..";
            let parts: Vec<&str> = rel.split('/').collect();
            if parts.len() != 2 || !parts.iter().all(|c| plain(c)) {
                return Err(BuildError::Export(format!(
                    "the build report names layer {rel:?}"
                )));
            }
        }
        Ok(report)
    }
}

/// Environment a launch layer contributes, in order: `bin/` on `PATH`, `lib/` on
/// `LD_LIBRARY_PATH`, and the files in `env/` and `env.launch/`.
fn layer_env(dir: &Path, in_image: &str) -> Vec<EnvOp> {
    let op = |key: &str, action: &str, value: String| EnvOp {
        key: key.to_owned(),
        action: action.to_owned(),
        value,
    };
    let mut ops = Vec::new();
    if dir.join("bin").is_dir() {
        ops.push(op("PATH", "prepend", format!("{in_image}/bin")));
    }
    if dir.join("lib").is_dir() {
        ops.push(op("LD_LIBRARY_PATH", "prepend", format!("{in_image}/lib")));
    }
    for sub in ["env", "env.launch"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Ok(value) = std::fs::read_to_string(&file) else {
                continue;
            };
            let (key, action) = name.rsplit_once('.').unwrap_or((name, "override"));
            if matches!(action, "override" | "default" | "prepend" | "append") {
                ops.push(op(key, action, value));
            }
        }
    }
    ops
}

/// Applies a layer's environment changes to `env`.
fn apply_env(ops: &[EnvOp], env: &mut BTreeMap<String, String>) {
    for EnvOp { key, action, value } in ops {
        let old = env.get(key).filter(|old| !old.is_empty());
        let value = match (action.as_str(), old) {
            ("default", Some(_)) => continue,
            ("prepend", Some(old)) => format!("{value}:{old}"),
            ("append", Some(old)) => format!("{old}:{value}"),
            _ => value.clone(),
        };
        env.insert(key.clone(), value);
    }
}

/// Builds the image from the extracted build output under `root` (holding `workspace/` and
/// `layers/`) on top of `run_image`, and pushes it as `apps/<app>:<tag>`. Launch layers the
/// build reused come from `previous`, the launch layers of the app's previous image.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn export(
    root: &Path,
    scratch: &Path,
    target: &Target,
    run_image: &str,
    app: &str,
    tag: &str,
    processes: &ProcessTypes,
    previous: &[LaunchLayer],
) -> Result<Exported, BuildError> {
    let reg_err = |what: &'static str| {
        move |e: oci_client::errors::OciDistributionError| {
            BuildError::Export(format!("{what}: {e}"))
        }
    };
    let client = own_client();
    let auth = RegistryAuth::Basic(target.username.clone(), target.token.clone());
    // The run image: a repository in Slipway's registry, or any image another registry serves
    // to anyone (its layers are then copied in).
    let external = crate::registry_host(run_image).is_some();
    let (run_ref, source, source_auth) = image_source(target, run_image)
        .map_err(|e| BuildError::Export(format!("run image reference: {e}")))?;
    let app_ref: Reference = format!("{}/apps/{app}:{tag}", target.registry)
        .parse()
        .map_err(|e| BuildError::Export(format!("image reference: {e}")))?;
    client
        .auth(&app_ref, &auth, RegistryOperation::Push)
        .await
        .map_err(reg_err("logging in to the registry"))?;
    let (run_manifest, _, run_config) = source
        .pull_manifest_and_config(&run_ref, &source_auth)
        .await
        .map_err(|e| {
            let hint = if external {
                "check the name and that its registry serves it without a login"
            } else {
                "push the stacks with stacks/push.sh"
            };
            BuildError::Export(format!("run image {run_image}: {e}; {hint}"))
        })?;

    // Buildpack layers marked launch=true, then the app: sorted, so the order is stable.
    let (layers_dir, root_owned) = (root.join("layers"), root.to_owned());
    let (scratch_owned, previous) = (scratch.to_owned(), previous.to_vec());
    let (built, records, mut env, launch) = tokio::task::spawn_blocking(move || {
        let report = BuildReport::read(&layers_dir)?;
        let mut env = BTreeMap::new();
        let (mut built, mut records) = (Vec::new(), Vec::new());
        for layer in &report.launch_layers {
            let rel = format!("layers/{layer}");
            let record = if report.reused_layers.contains(layer) {
                // The lifecycle only offers the previous image's layers for reuse; a report
                // naming another one is refused.
                let old = previous.iter().find(|l| &l.rel == layer).ok_or_else(|| {
                    BuildError::Export(format!("the build reuses an unknown layer {layer}"))
                })?;
                built.push(Layer {
                    file: None,
                    digest: old.digest.clone(),
                    diff_id: old.diff_id.clone(),
                    size: old.size,
                    what: rel,
                });
                LaunchLayer {
                    toml: layer_toml(&layers_dir, layer).unwrap_or_else(|| old.toml.clone()),
                    ..old.clone()
                }
            } else if root_owned.join(&rel).is_dir() {
                let written = write_layer(&root_owned, &[&rel], &scratch_owned, &rel)?;
                let record = LaunchLayer {
                    rel: layer.clone(),
                    digest: written.digest.clone(),
                    diff_id: written.diff_id.clone(),
                    size: written.size,
                    toml: layer_toml(&layers_dir, layer).unwrap_or_default(),
                    env: layer_env(&root_owned.join(&rel), &format!("/{rel}")),
                };
                built.push(written);
                record
            } else {
                continue;
            };
            apply_env(&record.env, &mut env);
            records.push(record);
        }
        let launch = report.processes;
        built.push(write_layer(
            &root_owned,
            &["workspace"],
            &scratch_owned,
            "app",
        )?);
        Ok::<_, BuildError>((built, records, env, launch))
    })
    .await
    .map_err(|e| BuildError::Export(format!("export task: {e}")))??;

    // Run image layers: mount them into the app's repository (free when the registry has them).
    for layer in &run_manifest.layers {
        if client
            .blob_exists(&app_ref, &layer.digest)
            .await
            .unwrap_or(false)
        {
            continue;
        }
        if !external {
            client
                .mount_blob(&app_ref, &run_ref, &layer.digest)
                .await
                .map_err(reg_err("mounting a run image layer"))?;
            continue;
        }
        // Streamed from the other registry into ours; the digest is checked on our side.
        let blob = source
            .pull_blob_stream(&run_ref, layer)
            .await
            .map_err(reg_err("fetching a run image layer"))?;
        let stream = blob.stream.map(|r| {
            r.map_err(|e| {
                oci_client::errors::OciDistributionError::GenericError(Some(e.to_string()))
            })
        });
        let size = u64::try_from(layer.size).ok();
        client
            .push_blob_stream(&app_ref, stream, &layer.digest, size)
            .await
            .map_err(reg_err("copying a run image layer"))?;
    }
    let mut uploaded = 0;
    for layer in &built {
        if client
            .blob_exists(&app_ref, &layer.digest)
            .await
            .unwrap_or(false)
        {
            continue;
        }
        let Some(file) = &layer.file else {
            return Err(BuildError::Export(format!(
                "layer {} of the previous image is gone from the registry; push again to \
                 rebuild it",
                layer.what
            )));
        };
        let file = tokio::fs::File::open(file.path())
            .await
            .map_err(io("reading a layer"))?;
        let stream = tokio_util::io::ReaderStream::new(file).map(|r| {
            r.map_err(|e| {
                oci_client::errors::OciDistributionError::GenericError(Some(e.to_string()))
            })
        });
        client
            .push_blob_stream(&app_ref, stream, &layer.digest, Some(layer.size))
            .await
            .map_err(|e| BuildError::Export(format!("uploading layer {}: {e}", layer.what)))?;
        uploaded += layer.size;
    }

    let mut config: Value = serde_json::from_str(&run_config)
        .map_err(|e| BuildError::Export(format!("run image config: {e}")))?;
    let base_env: Vec<String> = config["config"]["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for entry in base_env {
        if let Some((k, v)) = entry.split_once('=') {
            match env.get_mut(k) {
                // Layer paths go before the run image's own.
                Some(ours) if k == "PATH" || k == "LD_LIBRARY_PATH" => {
                    *ours = format!("{ours}:{v}")
                }
                Some(_) => {}
                None => {
                    env.insert(k.to_owned(), v.to_owned());
                }
            }
        }
    }
    let mut all_processes = launch.clone();
    all_processes.extend(processes.clone());
    let cmd = all_processes
        .get("web")
        .map(|c| json!(["/bin/sh", "-c", c]))
        .unwrap_or(Value::Null);
    config["config"]["Env"] = json!(
        env.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
    );
    config["config"]["WorkingDir"] = json!("/workspace");
    config["config"]["User"] = json!("1000:1000");
    config["config"]["Cmd"] = cmd;
    config["config"]["Entrypoint"] = Value::Null;
    config["created"] = json!("1980-01-01T00:00:01Z");
    if let Some(ids) = config["rootfs"]["diff_ids"].as_array_mut() {
        ids.extend(built.iter().map(|l| json!(l.diff_id)));
    }
    if let Some(history) = config["history"].as_array_mut() {
        history.extend(built.iter().map(|l| {
            json!({"created": "1980-01-01T00:00:01Z", "created_by": format!("slipway export: {}", l.what)})
        }));
    }
    let config_bytes = serde_json::to_vec(&config)
        .map_err(|e| BuildError::Export(format!("image config: {e}")))?;
    let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config_bytes)));
    client
        .push_blob(&app_ref, config_bytes.clone(), &config_digest)
        .await
        .map_err(reg_err("uploading the image config"))?;
    uploaded += config_bytes.len() as u64;

    let mut layers: Vec<Value> = run_manifest
        .layers
        .iter()
        .map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size}))
        .collect();
    layers.extend(
        built
            .iter()
            .map(|l| json!({"mediaType": OCI_LAYER_GZIP, "digest": l.digest, "size": l.size})),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_bytes.len()},
        "layers": layers,
    });
    let manifest_bytes = serde_json::to_vec(&manifest)
        .map_err(|e| BuildError::Export(format!("image manifest: {e}")))?;
    let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest_bytes)));
    client
        .push_manifest_raw(
            &app_ref,
            manifest_bytes.clone(),
            http::HeaderValue::from_static(OCI_MANIFEST),
        )
        .await
        .map_err(reg_err("uploading the image manifest"))?;
    uploaded += manifest_bytes.len() as u64;
    Ok(Exported {
        image: format!("{}/apps/{app}@{manifest_digest}", target.registry),
        uploaded,
        launch_processes: launch,
        reused: built.iter().filter(|l| l.file.is_none()).count(),
        launch_layers: records,
    })
}

/// A client for Slipway's own registry (plain HTTP on loopback).
fn own_client() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        use_monolithic_push: true,
        ..Default::default()
    })
}

/// Where to read `image` from: Slipway's registry with the server's login, or the registry the
/// reference names, without one (over HTTPS unless it is on loopback).
fn image_source(
    target: &Target,
    image: &str,
) -> Result<(Reference, Client, RegistryAuth), oci_client::ParseError> {
    let reference: Reference = crate::in_registry(&target.registry, image).parse()?;
    if crate::registry_host(image).is_none() {
        let auth = RegistryAuth::Basic(target.username.clone(), target.token.clone());
        return Ok((reference, own_client(), auth));
    }
    let host = reference.resolve_registry().to_owned();
    let loopback = ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|l| host == *l || host.starts_with(&format!("{l}:")));
    let protocol = if loopback {
        ClientProtocol::HttpsExcept(vec![host])
    } else {
        ClientProtocol::Https
    };
    let config = ClientConfig {
        protocol,
        ..Default::default()
    };
    Ok((reference, Client::new(config), RegistryAuth::Anonymous))
}

/// `image` pinned to what its registry serves now, `registry/repo@sha256:...`: the engine's
/// copy of a tag may be older than the stack an admin pushed since.
pub(crate) async fn pinned(target: &Target, image: &str) -> Result<String, String> {
    let (reference, client, auth) = image_source(target, image).map_err(|e| e.to_string())?;
    let digest = client
        .fetch_manifest_digest(&reference, &auth)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "{}/{}@{digest}",
        reference.resolve_registry(),
        reference.repository()
    ))
}

/// The `<layer>.toml` of launch layer `rel` under `layers_dir`, if it is small enough to keep.
fn layer_toml(layers_dir: &Path, rel: &str) -> Option<String> {
    let path = layers_dir.join(format!("{rel}.toml"));
    let meta = std::fs::metadata(&path).ok()?;
    (meta.is_file() && meta.len() <= LAYER_TOML_MAX)
        .then(|| std::fs::read_to_string(&path).ok())
        .flatten()
}

use futures_util::StreamExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_report_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let write =
            |json: &str| std::fs::write(dir.path().join("slipway-build.json"), json).unwrap();
        write(
            r#"{"launch_layers": ["slipway_python/venv"], "processes": {"web": "python3 app.py"}}"#,
        );
        let report = BuildReport::read(dir.path()).unwrap();
        assert_eq!(report.launch_layers, ["slipway_python/venv"]);
        assert_eq!(report.processes["web"], "python3 app.py");
        for bad in [
            r#"{"launch_layers": ["../../etc"]}"#,
            r#"{"cache_layers": ["a/b/c"]}"#,
            "{",
        ] {
            write(bad);
            assert!(BuildReport::read(dir.path()).is_err(), "{bad}");
        }
    }

    #[test]
    fn layer_environment_is_recorded_and_replayed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("bin")).unwrap();
        std::fs::create_dir_all(d.join("env")).unwrap();
        std::fs::create_dir_all(d.join("env.launch")).unwrap();
        std::fs::write(d.join("env/NODE_ENV.default"), "production").unwrap();
        std::fs::write(d.join("env/PATH.append"), "/extra").unwrap();
        std::fs::write(d.join("env.launch/GREETING"), "hi").unwrap();
        std::fs::write(d.join("env.launch/ODD.unknown"), "x").unwrap();
        let ops = layer_env(d, "/layers/bp/deps");
        let mut env = BTreeMap::from([
            ("PATH".to_owned(), "/usr/bin".to_owned()),
            ("NODE_ENV".to_owned(), "development".to_owned()),
        ]);
        // As a reused layer does: from the record, after a JSON round trip.
        let ops: Vec<EnvOp> = serde_json::from_str(&serde_json::to_string(&ops).unwrap()).unwrap();
        apply_env(&ops, &mut env);
        assert_eq!(env["PATH"], "/layers/bp/deps/bin:/usr/bin:/extra");
        assert_eq!(env["NODE_ENV"], "development");
        assert_eq!(env["GREETING"], "hi");
        assert!(!env.contains_key("ODD"));
    }

    #[test]
    fn reused_layers_must_be_known_and_plain() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("slipway-build.json"),
            r#"{"launch_layers": ["bp/venv"], "reused_layers": ["../x"]}"#,
        )
        .unwrap();
        assert!(BuildReport::read(dir.path()).is_err());
    }

    #[test]
    fn layers_are_deterministic() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("workspace/sub")).unwrap();
        std::fs::write(root.path().join("workspace/sub/a.txt"), "a").unwrap();
        std::fs::write(root.path().join("workspace/b.txt"), "b").unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let one = write_layer(root.path(), &["workspace"], scratch.path(), "app").unwrap();
        // Touch the files: mtimes must not leak into the layer.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(root.path().join("workspace/b.txt"), "b").unwrap();
        let two = write_layer(root.path(), &["workspace"], scratch.path(), "app").unwrap();
        assert_eq!(one.digest, two.digest);
        assert_eq!(one.diff_id, two.diff_id);
    }
}
