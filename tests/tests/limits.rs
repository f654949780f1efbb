//! Build limits and base images: a build over its memory limit is stopped and the push rejected
//! with why, while the running release keeps serving; bad limits stop the server at startup; a
//! Dockerfile build never pulls with the server's own (admin) login.

use std::process::Command;
use std::time::Duration;

use slipway_tests::{Server, add_app_buildpack, commit_all, run, slipway_bin, text};

/// A buildpack, brought by the app, whose build holds 512 MiB.
const HOG_BUILD: &str = "#!/bin/sh
echo '-----> Hog: holding 512 MiB'
python3 -c 'b = b\"x\" * (512 << 20); print(len(b))'
";

#[test]
fn a_build_over_its_memory_limit_is_rejected_and_the_release_keeps_serving() {
    let server = Server::start_with_env(&[("SLIPWAY_BUILD_MEMORY", "128M")]);
    let (repo, key) = server.deploy_fixture("hungry", "python-app");
    server.wait_for_body("hungry", "hello from hungry v1", Duration::from_secs(60));

    // The app now builds with its own buildpack, which needs more than the limit.
    add_app_buildpack(&repo, "hog", HOG_BUILD, &[]);
    std::fs::write(repo.join("app.py.note"), "v2 never ships\n").unwrap();
    commit_all(&repo, "a hungry build");
    let push = server.git_push(&repo, &key, "hungry");
    let out = text(&push);
    assert!(!push.status.success(), "{out}");
    // The step's own output, then why it stopped, in one line, and what it left alone.
    assert!(out.contains("-----> Hog: holding 512 MiB"), "{out}");
    assert!(
        out.contains("the build ran out of memory (limit 128 MiB)"),
        "{out}"
    );
    assert!(
        out.contains("Push rejected; the running release is unchanged."),
        "{out}"
    );
    let (code, body) = server.http_get("hungry");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from hungry v1"), "{body}");
    let releases = server.cli_ok(&["releases", "-a", "hungry"]);
    assert!(!releases.contains("v2"), "{releases}");
}

#[test]
fn bad_build_limits_stop_the_server_at_startup() {
    for (flag, value, says) in [
        ("--build-memory", "lots", "use a size such as 512M"),
        ("--build-memory", "4M", "a build needs at least 16M"),
        ("--build-cpus", "-1", "use CPUs such as 1.5"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = run(Command::new(slipway_bin())
            .args(["server", "--data"])
            .arg(dir.path())
            .arg(format!("{flag}={value}")));
        assert!(!out.status.success(), "{flag} {value}: {}", text(&out));
        assert!(text(&out).contains(says), "{flag} {value}: {}", text(&out));
    }
}

#[test]
fn a_dockerfile_build_never_pulls_with_the_servers_login() {
    let server = Server::start();
    let (app, key) = server.fixture_app("pulled", "dockerfile-app");
    // An image in Slipway's registry that the engine lacks (the port is new). The server's own
    // login is admin's: lent to the build, it would let any pusher's `FROM` read any app's
    // image. The build gets none, so the registry refuses the pull.
    let base = format!("127.0.0.1:{}/stacks/run:bookworm", server.registry);
    let inspect =
        || run(Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", &base]));
    assert!(!inspect().status.success(), "{base} is already local");
    let dockerfile = std::fs::read_to_string(app.join("Dockerfile")).unwrap();
    let from = dockerfile
        .lines()
        .find(|l| l.starts_with("FROM "))
        .unwrap()
        .to_owned();
    std::fs::write(
        app.join("Dockerfile"),
        dockerfile.replace(&from, &format!("FROM {base}")),
    )
    .unwrap();
    commit_all(&app, "a base image from the registry");

    let push = server.git_push(&app, &key, "pulled");
    let out = text(&push);
    assert!(!push.status.success(), "{out}");
    assert!(out.contains("the Dockerfile build failed"), "{out}");
    assert!(
        out.contains("Push rejected; the running release is unchanged."),
        "{out}"
    );
    assert!(!inspect().status.success(), "{base} was pulled");
}
