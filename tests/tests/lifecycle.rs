//! The build lifecycle to the Cloud Native Buildpacks spec, with buildpacks written outside
//! Slipway: an app's own group in project.toml (a build plan between two buildpacks, an optional
//! one that does not detect, build, cache and launch layers, launch.toml with args), its cache
//! and a launch layer reused on the next build, a Heroku-style classic buildpack, and the same
//! commit building to the same image digest.

use std::path::Path;
use std::time::Duration;

use slipway_tests::{Server, commit_all, git_repo, repo_root, text};

fn push_ok(server: &Server, repo: &Path, key: &Path, app: &str) -> String {
    let push = server.git_push(repo, key, app);
    let out = text(&push);
    assert!(push.status.success(), "{out}\n{}", server.log());
    out
}

/// The image digest of the app's current release, from `apps:info --json`.
fn image_digest(server: &Server, app: &str) -> String {
    let info = server.cli_ok(&["--json", "apps:info", "-a", app]);
    let at = info
        .find("@sha256:")
        .unwrap_or_else(|| panic!("no image in {info}"));
    info[at + 1..at + 72].to_owned()
}

#[test]
fn spec_buildpacks_classic_buildpacks_and_reproducible_images() {
    let server = Server::start();
    server.push_stacks();
    let key = server.keygen("cnb-key");
    server.cli_ok(&["keys:add", key.with_extension("pub").to_str().unwrap()]);

    // The app's own CNB group: plan, optional buildpack, build/cache/launch layers, args.
    server.cli_ok(&["apps:create", "cnbapp"]);
    let fixture = repo_root().join("tests/fixtures/cnb-app");
    let app = git_repo(server.dir.path(), "cnbapp", &fixture);
    let out = push_ok(&server, &app, &key, "cnbapp");
    assert!(out.contains("-----> Test tool"), "{out}");
    assert!(out.contains("making the tool layer"), "{out}");
    assert!(out.contains("making the words layer"), "{out}");
    assert!(out.contains("-----> Test greeter"), "{out}");
    assert!(!out.contains("never runs"), "{out}");
    server.wait_for_body(
        "cnbapp",
        "loud hello from cnbapp v1",
        Duration::from_secs(60),
    );
    let first = image_digest(&server, "cnbapp");

    // The cache layer comes back on the next build, and config vars reach the buildpacks as
    // files in the platform directory, their values unprinted.
    server.cli_ok(&["config:set", "-a", "cnbapp", "BUILD_MESSAGE=value-9c1d"]);
    std::fs::write(app.join("README"), "a change\n").unwrap();
    commit_all(&app, "change");
    let out = push_ok(&server, &app, &key, "cnbapp");
    assert!(out.contains("reusing the cached tool layer"), "{out}");
    // The launch-only layer comes from the previous image, its environment included.
    assert!(
        out.contains("reusing the words layer from the previous image"),
        "{out}"
    );
    assert!(out.contains("KiB uploaded, 1 layer reused)"), "{out}");
    assert!(out.contains("platform env: BUILD_MESSAGE"), "{out}");
    assert!(!out.contains("value-9c1d"), "{out}");
    server.wait_for_body(
        "cnbapp",
        "loud hello from cnbapp v3 (bye)",
        Duration::from_secs(60),
    );

    // The same commit, built by another app from scratch, is the same image.
    server.cli_ok(&["apps:create", "twin"]);
    let twin = git_repo(server.dir.path(), "twin", &fixture);
    push_ok(&server, &twin, &key, "twin");
    assert_eq!(image_digest(&server, "twin"), first);

    // A classic buildpack: bin/detect, bin/compile with a cache dir, bin/release.
    server.cli_ok(&["apps:create", "classic"]);
    let classic = git_repo(
        server.dir.path(),
        "classic",
        &repo_root().join("tests/fixtures/classic-app"),
    );
    let out = push_ok(&server, &classic, &key, "classic");
    assert!(out.contains("-----> Classic Test app detected"), "{out}");
    assert!(out.contains("build 1 with this cache"), "{out}");
    server.wait_for_body(
        "classic",
        "classic compiled from classic v1",
        Duration::from_secs(60),
    );
    std::fs::write(classic.join("README"), "a change\n").unwrap();
    commit_all(&classic, "change");
    let out = push_ok(&server, &classic, &key, "classic");
    assert!(out.contains("build 2 with this cache"), "{out}");

    // The cache goes with the app.
    let cache = server.data().join("cache/classic.tar");
    assert!(cache.exists());
    server.cli_ok(&["apps:destroy", "classic", "--confirm", "classic"]);
    assert!(!cache.exists());
}
