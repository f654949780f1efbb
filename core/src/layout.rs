//! Where things live in the data directory. One place, so the part that writes a path and the
//! part that cleans it up agree (the builder creates an app's repository; the controller removes
//! it when the app is destroyed, so a new app of the same name never inherits old code).

use std::path::{Path, PathBuf};

use crate::names::AppName;

/// The bare git repository of `app`: `DATA/repos/<app>.git`.
pub fn repo_path(data_dir: &Path, app: &AppName) -> PathBuf {
    data_dir.join("repos").join(format!("{app}.git"))
}

/// The build cache of `app` (the layers its buildpacks keep between builds):
/// `DATA/cache/<app>.tar`.
pub fn build_cache_path(data_dir: &Path, app: &AppName) -> PathBuf {
    data_dir.join("cache").join(format!("{app}.tar"))
}

/// The launch layers of `app`'s last built image, which its next build may reuse:
/// `DATA/cache/<app>.layers.json`.
pub fn launch_layers_path(data_dir: &Path, app: &AppName) -> PathBuf {
    data_dir.join("cache").join(format!("{app}.layers.json"))
}
