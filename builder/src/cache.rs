//! The build cache: the layers buildpacks mark `cache = true`, kept per app between builds in
//! `DATA/cache/<app>.tar` and uploaded to `/cache` in the next build container, where the
//! lifecycle hands them back to their buildpacks. The controller removes the file with the app.
//!
//! Beside it, `DATA/cache/<app>.layers.json` records the launch layers of the app's last image
//! (digest, metadata, environment). The next build gets their metadata without their contents;
//! a buildpack that finds it unchanged re-declares the layer without building it, and the
//! exporter reuses the layer from the registry: a rebuild that keeps its dependencies neither
//! uploads them into the build container nor copies them back out.
//!
//! Invariant: a failed or partial save never leaves a broken cache (write to a temporary file,
//! then rename); a missing or unreadable cache only makes the next build slower.

use std::path::{Path, PathBuf};

use slipway_core::AppName;

use crate::export::{self, BuildReport, LaunchLayer};

/// The launch layers of an app's last image, and the build image they were built on: layers
/// from another build image are not offered for reuse.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LaunchRecord {
    build_image: String,
    layers: Vec<LaunchLayer>,
}

/// The launch layers the last build of the app left on `build_image`, or none.
pub(crate) fn previous_launch_layers(file: &Path, build_image: &str) -> Vec<LaunchLayer> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    match serde_json::from_str::<LaunchRecord>(&text) {
        Ok(record) if record.build_image == build_image => record.layers,
        Ok(_) => Vec::new(),
        Err(e) => {
            tracing::warn!("build cache: {} is garbled: {e}", file.display());
            Vec::new()
        }
    }
}

/// Records the launch layers of the image just exported, replacing the last record.
pub(crate) fn save_launch_layers(file: &Path, build_image: &str, layers: Vec<LaunchLayer>) {
    let record = LaunchRecord {
        build_image: build_image.to_owned(),
        layers,
    };
    let result = (|| {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let partial = file.with_extension("json.partial");
        std::fs::write(
            &partial,
            serde_json::to_vec(&record).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&partial, file)
    })();
    if let Err(e) = result {
        tracing::warn!("build cache: saving {}: {e}", file.display());
    }
}

/// Forgets the launch layers: the next build makes every layer afresh.
pub(crate) fn clear_launch_layers(file: &Path) {
    if let Err(e) = std::fs::remove_file(file)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("build cache: removing {}: {e}", file.display());
    }
}

/// The archive to upload to `/` of the build container before the cache: each previous launch
/// layer's `<layer>.toml` under `cache/<buildpack>/` (metadata only, no contents), and
/// `cache/launch-layers.json` naming them, as the lifecycle expects.
pub(crate) fn launch_metadata(layers: &[LaunchLayer]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut append = |name: &str, mode: u32, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(if mode & 0o100 != 0 {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        header.set_mode(mode);
        header.set_uid(1000);
        header.set_gid(1000);
        header.set_mtime(export::EPOCH);
        header.set_size(data.len() as u64);
        tar.append_data(&mut header, name, data)
    };
    append("cache", 0o755, &[])?;
    let mut dirs = std::collections::BTreeSet::new();
    for layer in layers {
        let Some((buildpack, _)) = layer.rel.split_once('/') else {
            continue;
        };
        if dirs.insert(buildpack) {
            append(&format!("cache/{buildpack}"), 0o755, &[])?;
        }
        append(
            &format!("cache/{}.toml", layer.rel),
            0o644,
            layer.toml.as_bytes(),
        )?;
    }
    let names: Vec<&str> = layers.iter().map(|l| l.rel.as_str()).collect();
    let json = serde_json::to_vec(&names).map_err(std::io::Error::other)?;
    append("cache/launch-layers.json", 0o644, &json)?;
    tar.into_inner()
}

/// Where `app`'s cache lives under the data directory.
pub(crate) fn path(data_dir: &Path, app: &AppName) -> PathBuf {
    slipway_core::layout::build_cache_path(data_dir, app)
}

/// The cache to upload to `/` of the build container (entries under `cache/`), if there is one:
/// its file, which the upload streams.
pub(crate) fn load(file: &Path) -> Option<PathBuf> {
    file.is_file().then(|| file.to_owned())
}

/// Packs the cache layers the build under `layers` reported into `file`, replacing the old
/// cache. Errors are logged: the build itself succeeded.
pub(crate) fn save(file: &Path, layers: &Path) {
    if let Err(e) = try_save(file, layers) {
        tracing::warn!("build cache: saving {}: {e}", file.display());
    }
}

fn try_save(file: &Path, layers: &Path) -> std::io::Result<()> {
    let report = BuildReport::read(layers).map_err(std::io::Error::other)?;
    if report.cache_layers.is_empty() {
        return match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = file.with_extension("tar.partial");
    let mut tar = tar::Builder::new(std::fs::File::create(&partial)?);
    // Owned by the stack user, so the lifecycle can move the layers back into place.
    let mut names = vec![PathBuf::new()];
    for rel in &report.cache_layers {
        let (buildpack, layer) = rel.split_once('/').unwrap_or((rel, ""));
        let bp = PathBuf::from(buildpack);
        if !names.contains(&bp) {
            names.push(bp);
        }
        if layers.join(format!("{rel}.toml")).is_file() {
            names.push(PathBuf::from(buildpack).join(format!("{layer}.toml")));
        }
        names.push(PathBuf::from(rel));
        export::walk(&layers.join(rel), Path::new(rel), &mut names)?;
    }
    for rel in &names {
        export::append_as(&mut tar, layers, rel, &Path::new("cache").join(rel))
            .map_err(std::io::Error::other)?;
    }
    tar.into_inner()?.sync_all()?;
    std::fs::rename(&partial, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(rel: &str) -> LaunchLayer {
        LaunchLayer {
            rel: rel.to_owned(),
            digest: "sha256:aa".to_owned(),
            diff_id: "sha256:bb".to_owned(),
            size: 3,
            toml: "[metadata]\nchecksum = \"c\"\n".to_owned(),
            env: Vec::new(),
        }
    }

    #[test]
    fn launch_layers_are_offered_only_on_the_same_build_image() {
        let data = tempfile::tempdir().unwrap();
        let file = data.path().join("cache/app.layers.json");
        assert!(previous_launch_layers(&file, "build:1").is_empty());
        save_launch_layers(&file, "build:1", vec![layer("bp/venv")]);
        assert_eq!(previous_launch_layers(&file, "build:1"), [layer("bp/venv")]);
        assert!(previous_launch_layers(&file, "build:2").is_empty());
        std::fs::write(&file, "{").unwrap();
        assert!(previous_launch_layers(&file, "build:1").is_empty());
        clear_launch_layers(&file);
        assert!(!file.exists());
    }

    #[test]
    fn launch_metadata_holds_tomls_and_the_list() {
        let tar = launch_metadata(&[layer("bp/venv"), layer("bp/deps")]).unwrap();
        let mut files = std::collections::BTreeMap::new();
        for entry in tar::Archive::new(&tar[..]).entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            files.insert(entry.path().unwrap().display().to_string(), text);
        }
        assert!(files["cache/bp/venv.toml"].contains("checksum"));
        assert!(files.contains_key("cache/bp/deps.toml"));
        assert_eq!(
            files["cache/launch-layers.json"],
            r#"["bp/venv","bp/deps"]"#
        );
        // Metadata only: no layer directory.
        assert!(!files.contains_key("cache/bp/venv"));
    }

    #[test]
    fn saves_only_cache_layers_and_clears_when_none() {
        let layers = tempfile::tempdir().unwrap();
        let l = layers.path();
        std::fs::create_dir_all(l.join("bp/deps/lib")).unwrap();
        std::fs::write(l.join("bp/deps/lib/x"), "x").unwrap();
        std::fs::write(l.join("bp/deps.toml"), "[types]\ncache = true\n").unwrap();
        std::fs::create_dir_all(l.join("bp/other")).unwrap();
        std::fs::write(
            l.join("slipway-build.json"),
            r#"{"cache_layers": ["bp/deps"]}"#,
        )
        .unwrap();
        let data = tempfile::tempdir().unwrap();
        let app: AppName = "web".parse().unwrap();
        let file = path(data.path(), &app);
        save(&file, l);
        let cache = load(&file).expect("a cache");
        let mut names: Vec<String> = tar::Archive::new(std::fs::File::open(cache).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert!(
            names.contains(&"cache/bp/deps/lib/x".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"cache/bp/deps.toml".to_owned()),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains("other")), "{names:?}");

        std::fs::write(l.join("slipway-build.json"), r#"{"cache_layers": []}"#).unwrap();
        save(&file, l);
        assert!(load(&file).is_none());
    }
}
