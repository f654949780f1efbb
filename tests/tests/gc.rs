//! Registry garbage collection with release retention: images that retained releases need, and
//! the tagged stack images, survive `slipway registry:gc`; an older release's image goes.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use slipway_tests::{Server, commit_all, git_repo, repo_root, run, text};

/// The HTTP status of GET on a manifest in the server's registry, as admin.
fn manifest_status(server: &Server, repository: &str, reference: &str) -> String {
    let out = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-u",
        &format!("admin:{}", server.token),
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        &format!(
            "http://127.0.0.1:{}/v2/{repository}/manifests/{reference}",
            server.registry
        ),
    ]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `(repository, digest)` of release `version`'s image, which is in the server's registry.
fn release_image(server: &Server, app: &str, version: i64) -> (String, String) {
    let releases: Value =
        serde_json::from_str(&server.cli_ok(&["--json", "releases", "-a", app])).unwrap();
    let release = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == version)
        .unwrap_or_else(|| panic!("no v{version} in {releases}"));
    let image = release["image"].as_str().expect("an image");
    let registry = format!("127.0.0.1:{}/", server.registry);
    let (repository, digest) = image
        .strip_prefix(&registry)
        .and_then(|rest| rest.split_once('@'))
        .unwrap_or_else(|| panic!("{image} is not in {registry}"));
    (repository.to_owned(), digest.to_owned())
}

/// The `(repository, digest)` pairs a `registry:gc` JSON report lists as removed.
fn collected(report: &Value) -> Vec<(String, String)> {
    report["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            (
                m["repository"].as_str().unwrap().to_owned(),
                m["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn gc_collects_images_no_retained_release_needs() {
    let server = Server::start_with_env(&[
        ("SLIPWAY_RETAIN_RELEASES", "1"),
        ("SLIPWAY_REGISTRY_GC_GRACE_SECS", "0"),
    ]);
    server.push_stacks();
    let key = server.keygen("gc-key");
    server.cli_ok(&["keys:add", key.with_extension("pub").to_str().unwrap()]);
    server.cli_ok(&["apps:create", "gc"]);
    let app = git_repo(
        server.dir.path(),
        "gc",
        &repo_root().join("tests/fixtures/python-app"),
    );

    // v1 and v2 are two builds with different images; v3 is a config change on v2's image.
    let push = server.git_push(&app, &key, "gc");
    assert!(push.status.success(), "{}\n{}", text(&push), server.log());
    server.wait_for_body("gc", "hello from gc v1", Duration::from_secs(60));
    std::fs::write(app.join("NOTES.txt"), "a second build\n").unwrap();
    commit_all(&app, "second build");
    let push = server.git_push(&app, &key, "gc");
    assert!(push.status.success(), "{}\n{}", text(&push), server.log());
    server.wait_for_body("gc", "hello from gc v2", Duration::from_secs(90));
    server.cli_ok(&["config:set", "-a", "gc", "GREETING=bonjour"]);
    server.wait_for_body("gc", "bonjour from gc v3", Duration::from_secs(90));

    let old = release_image(&server, "gc", 1);
    let kept = release_image(&server, "gc", 2);
    assert_ne!(old, kept, "two builds made one image");
    assert_eq!(release_image(&server, "gc", 3), kept);
    assert_eq!(manifest_status(&server, &old.0, &old.1), "200");

    // A destroyed app keeps no release, so its image goes too.
    server.cli_ok(&["apps:create", "gone"]);
    let push = server.git_push(&app, &key, "gone");
    assert!(
        push.status.success(),
        "{}
{}",
        text(&push),
        server.log()
    );
    let gone = release_image(&server, "gone", 1);
    server.cli_ok(&["apps:destroy", "gone", "--confirm", "gone"]);
    let mut expected = vec![old.clone(), gone.clone()];
    expected.sort();

    // Only admin collects.
    let created: Value =
        serde_json::from_str(&server.cli_ok(&["--json", "users:add", "bob"])).unwrap();
    let bob = created["token"].as_str().unwrap();
    let refused = server.cli_env(&["registry:gc", "--dry-run"], &[("SLIPWAY_TOKEN", bob)]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("only admin"), "{}", text(&refused));

    // A dry run lists v1's image (retention 1 keeps v3 and v2) and the destroyed app's, and
    // removes nothing.
    let dry: Value = serde_json::from_str(&server.cli_ok(&["--json", "registry:gc", "--dry-run"]))
        .expect("a JSON report");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(collected(&dry), expected, "{dry}");
    assert!(dry["bytes_freed"].as_u64().unwrap() > 0, "{dry}");
    assert_eq!(manifest_status(&server, &old.0, &old.1), "200");
    let table = server.cli_ok(&["registry:gc", "--dry-run"]);
    assert!(
        table.contains(&old.1) && table.contains("would remove 2 manifests"),
        "{table}"
    );

    // The real run removes what the dry run listed.
    let report: Value =
        serde_json::from_str(&server.cli_ok(&["--json", "registry:gc"])).expect("a JSON report");
    assert_eq!(report["dry_run"], false);
    assert_eq!(collected(&report), expected, "{report}");
    assert_eq!(report["bytes_freed"], dry["bytes_freed"]);
    assert_eq!(manifest_status(&server, &old.0, &old.1), "404");
    assert_eq!(manifest_status(&server, &gone.0, &gone.1), "404");
    assert_eq!(manifest_status(&server, &kept.0, &kept.1), "200");
    for stack in ["stacks/run", "stacks/build"] {
        assert_eq!(
            manifest_status(&server, stack, "bookworm"),
            "200",
            "{stack}"
        );
    }
    let events = server.cli_ok(&["events"]);
    assert!(events.contains("registry gc freed"), "{events}");

    // A rollback to a retained release still deploys, and nothing more is collected.
    let out = server.cli_ok(&["rollback", "-a", "gc", "v2"]);
    assert!(out.contains("rollback to v2"), "{out}");
    server.wait_for_body("gc", "hello from gc v4", Duration::from_secs(90));
    let again: Value = serde_json::from_str(&server.cli_ok(&["--json", "registry:gc"])).unwrap();
    assert_eq!(collected(&again), [], "{again}");
}
