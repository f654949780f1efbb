//! The build cache: the layers buildpacks mark `cache = true`, kept per app between builds in
//! `DATA/cache/<app>.tar` and uploaded to `/cache` in the next build container, where the
//! lifecycle hands them back to their buildpacks. The controller removes the file with the app.
//!
//! Invariant: a failed or partial save never leaves a broken cache (write to a temporary file,
//! then rename); a missing or unreadable cache only makes the next build slower.

use std::path::{Path, PathBuf};

use slipway_core::AppName;

use crate::export::{self, BuildReport};

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
