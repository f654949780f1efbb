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

/// One layer written to disk, ready to push.
struct Layer {
    file: tempfile::NamedTempFile,
    digest: String,
    diff_id: String,
    size: u64,
    what: String,
}

/// What the export produced.
pub struct Exported {
    /// The image by digest: `registry/apps/<app>@sha256:...`.
    pub image: String,
    /// Bytes uploaded to the registry (layers it lacked, config, manifest).
    pub uploaded: u64,
    /// Process types from the buildpacks' `launch.toml`.
    pub launch_processes: ProcessTypes,
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
        file,
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
        for rel in report.launch_layers.iter().chain(&report.cache_layers) {
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

/// Environment a launch layer contributes: `bin/` on `PATH`, `lib/` on `LD_LIBRARY_PATH`, and
/// the files in `env/` and `env.launch/`.
fn layer_env(dir: &Path, in_image: &str, env: &mut BTreeMap<String, String>) {
    let prepend = |env: &mut BTreeMap<String, String>, key: &str, value: String| {
        let joined = match env.get(key) {
            Some(old) if !old.is_empty() => format!("{value}:{old}"),
            _ => value,
        };
        env.insert(key.to_owned(), joined);
    };
    if dir.join("bin").is_dir() {
        prepend(env, "PATH", format!("{in_image}/bin"));
    }
    if dir.join("lib").is_dir() {
        prepend(env, "LD_LIBRARY_PATH", format!("{in_image}/lib"));
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
            match action {
                "override" => {
                    env.insert(key.to_owned(), value);
                }
                "default" => {
                    env.entry(key.to_owned()).or_insert(value);
                }
                "prepend" => prepend(env, key, value),
                "append" => {
                    let joined = match env.get(key) {
                        Some(old) if !old.is_empty() => format!("{old}:{value}"),
                        _ => value,
                    };
                    env.insert(key.to_owned(), joined);
                }
                _ => {}
            }
        }
    }
}

/// Builds the image from the extracted build output under `root` (holding `workspace/` and
/// `layers/`) on top of `run_image`, and pushes it as `apps/<app>:<tag>`.
pub async fn export(
    root: &Path,
    scratch: &Path,
    target: &Target,
    run_image: &str,
    app: &str,
    tag: &str,
    processes: &ProcessTypes,
) -> Result<Exported, BuildError> {
    let reg_err = |what: &'static str| {
        move |e: oci_client::errors::OciDistributionError| {
            BuildError::Export(format!("{what}: {e}"))
        }
    };
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        use_monolithic_push: true,
        ..Default::default()
    });
    let auth = RegistryAuth::Basic(target.username.clone(), target.token.clone());
    // The run image: a repository in Slipway's registry, or any image another registry serves
    // to anyone (its layers are then copied in).
    let external = crate::registry_host(run_image).is_some();
    let run_ref: Reference = crate::in_registry(&target.registry, run_image)
        .parse()
        .map_err(|e| BuildError::Export(format!("run image reference: {e}")))?;
    let (source, source_auth) = if external {
        let host = run_ref.resolve_registry().to_owned();
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
        (Client::new(config), RegistryAuth::Anonymous)
    } else {
        (client.clone(), auth.clone())
    };
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
    let scratch_owned = scratch.to_owned();
    let (built, mut env, launch) = tokio::task::spawn_blocking(move || {
        let report = BuildReport::read(&layers_dir)?;
        let mut env = BTreeMap::new();
        let mut rels = Vec::new();
        for layer in &report.launch_layers {
            let rel = format!("layers/{layer}");
            if root_owned.join(&rel).is_dir() {
                layer_env(&root_owned.join(&rel), &format!("/{rel}"), &mut env);
                rels.push(rel);
            }
        }
        let launch = report.processes;
        let mut built = Vec::new();
        for rel in &rels {
            built.push(write_layer(&root_owned, &[rel], &scratch_owned, rel)?);
        }
        built.push(write_layer(
            &root_owned,
            &["workspace"],
            &scratch_owned,
            "app",
        )?);
        Ok::<_, BuildError>((built, env, launch))
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
        let file = tokio::fs::File::open(layer.file.path())
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
    })
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
