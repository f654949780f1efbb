//! Packs the shipped buildpacks (`../buildpacks`) and the build lifecycle into one tar archive
//! that is compiled into the binary, so `slipway` needs no files beside it. The archive is
//! uploaded to `/` (as `cnb/...`) in every build container.

use std::path::Path;

fn main() {
    // Read at run time, not with env!(): the compiled build script may be reused from another
    // checkout of the workspace that shares the target directory (CI clones afresh each time).
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let buildpacks = manifest.join("../buildpacks");
    let lifecycle = manifest.join("lifecycle");
    println!("cargo:rerun-if-changed={}", buildpacks.display());
    println!("cargo:rerun-if-changed={}", lifecycle.display());

    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("cnb.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&out).unwrap());
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    // Each buildpack goes to buildpacks/<id>, as the lifecycle finds it.
    let mut dirs: Vec<_> = std::fs::read_dir(&buildpacks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("buildpack.toml").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        let toml = std::fs::read_to_string(dir.join("buildpack.toml")).unwrap();
        let id = toml
            .lines()
            .find_map(|l| l.trim().strip_prefix("id = "))
            .map(|id| id.trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("{} has no id", dir.display()));
        tar.append_dir_all(format!("cnb/buildpacks/{id}"), &dir)
            .unwrap();
    }
    tar.append_dir_all("cnb/lifecycle", &lifecycle).unwrap();
    // The order, as the CNB platform spec lays it out: /cnb/order.toml.
    tar.append_path_with_name(buildpacks.join("order.toml"), "cnb/order.toml")
        .unwrap();
    tar.finish().unwrap();
}
