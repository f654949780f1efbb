//! The stack and the build limits are settings: a run image from another registry (here Debian's
//! docker-registry on loopback, serving without a login), a build timeout that stops a hanging
//! buildpack with a clear rejection, and a build image pushed again under its tag is what the
//! next build runs on.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use slipway_tests::{Server, add_app_buildpack, free_port, git_repo, repo_root, run, text};

/// Debian's docker-registry on a free loopback port; stopped on drop.
struct OtherRegistry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl OtherRegistry {
    fn start() -> OtherRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: test-only\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) is installed");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        OtherRegistry {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for OtherRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn run_image_from_another_registry_and_build_timeout() {
    let other = OtherRegistry::start();
    let run_image = format!("127.0.0.1:{}/elsewhere/run:1", other.port);
    let copied = run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "docker-daemon:slipway/stack-run:bookworm",
        &format!("docker://{run_image}"),
    ]));
    assert!(copied.status.success(), "{}", text(&copied));

    let server = Server::start_with_env(&[
        ("SLIPWAY_RUN_IMAGE", run_image.as_str()),
        ("SLIPWAY_BUILD_TIMEOUT_SECS", "10"),
    ]);
    server.push_stacks();
    let key = server.keygen("stack-key");
    server.cli_ok(&["keys:add", key.with_extension("pub").to_str().unwrap()]);

    // Built on the other registry's run image, whose layers were copied in.
    server.cli_ok(&["apps:create", "elsewhere"]);
    let app = git_repo(
        server.dir.path(),
        "elsewhere",
        &repo_root().join("tests/fixtures/python-app"),
    );
    let push = server.git_push(&app, &key, "elsewhere");
    assert!(push.status.success(), "{}\n{}", text(&push), server.log());
    server.wait_for_body(
        "elsewhere",
        "hello from elsewhere v1",
        Duration::from_secs(60),
    );

    // A buildpack that hangs is stopped at the timeout and the push rejected.
    server.cli_ok(&["apps:create", "slow"]);
    let slow = git_repo(
        server.dir.path(),
        "slow",
        &repo_root().join("tests/fixtures/slow-app"),
    );
    let started = Instant::now();
    let push = server.git_push(&slow, &key, "slow");
    let out = text(&push);
    assert!(!push.status.success(), "{out}");
    assert!(out.contains("Hanging on purpose"), "{out}");
    assert!(out.contains("timed out"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(120), "{out}");
}

/// A buildpack, brought by the app, that prints the build image's stack marker.
const MARKER_BUILD: &str = "#!/bin/sh
echo \"-----> Stack marker: $(cat /etc/slipway-stack-marker 2>/dev/null || echo none)\"
";

#[test]
fn a_build_image_pushed_again_is_what_the_next_build_runs_on() {
    let server = Server::start();
    let (app, key) = server.fixture_app("marker", "procfile-app");
    add_app_buildpack(&app, "marker", MARKER_BUILD, &["slipway/procfile"]);
    slipway_tests::commit_all(&app, "a marker buildpack");
    let push = server.git_push(&app, &key, "marker");
    let out = text(&push);
    assert!(push.status.success(), "{out}\n{}", server.log());
    assert!(out.contains("-----> Stack marker: none"), "{out}");

    // The admin pushes a new build image under the same tag: the next build runs on it, not
    // on the engine's copy of the old one.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM slipway/stack-build:bookworm\nUSER root\nRUN echo v2 > /etc/slipway-stack-marker\nUSER 1000:1000\n",
    )
    .unwrap();
    let local = format!("slipway-e2e-build-v2:{}", server.registry);
    let built = run(Command::new("docker")
        .args(["build", "-q", "-t", &local])
        .arg(dir.path()));
    assert!(built.status.success(), "{}", text(&built));
    let copied = run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--format",
        "oci",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("admin:{}", server.token),
        &format!("docker-daemon:{local}"),
        &format!(
            "docker://127.0.0.1:{}/stacks/build:bookworm",
            server.registry
        ),
    ]));
    run(Command::new("docker").args(["rmi", "--force", &local]));
    assert!(copied.status.success(), "{}", text(&copied));
    std::fs::write(app.join("CHANGES"), "again\n").unwrap();
    slipway_tests::commit_all(&app, "again");
    let push = server.git_push(&app, &key, "marker");
    let out = text(&push);
    assert!(push.status.success(), "{out}\n{}", server.log());
    assert!(out.contains("-----> Stack marker: v2"), "{out}");
}
