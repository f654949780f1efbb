//! Build limits and base images: a build over its memory limit is stopped and the push rejected
//! with why, while the running release keeps serving; bad limits stop the server at startup; a
//! Dockerfile build never pulls with the server's own (admin) login, and never builds on the
//! image of an app its pusher has no access to, though the engine holds that image, nor on a
//! base image whose ONBUILD triggers could read one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use slipway_tests::{
    Server, add_app_buildpack, assert_remote_lines, commit_all, git_repo, repo_root, run,
    slipway_bin, text,
};

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
    // image. The pull before the build gets none, so the registry refuses it, and the build
    // never starts.
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
    assert!(
        out.contains(&format!(
            "FROM {base} is not on this server and could not be pulled without a login"
        )),
        "{out}"
    );
    assert!(
        out.contains("Push rejected; the running release is unchanged."),
        "{out}"
    );
    assert!(!inspect().status.success(), "{base} was pulled");
}

/// A user with an app, its key, and a repository of the Dockerfile fixture for it.
fn user_app(server: &Server, user: &str, app: &str) -> (String, PathBuf, PathBuf) {
    let token = server.add_user(user);
    let key = server.keygen(&format!("{user}-key"));
    let env = [("SLIPWAY_TOKEN", token.as_str())];
    for args in [
        &["keys:add", key.with_extension("pub").to_str().unwrap()][..],
        &["apps:create", app],
    ] {
        let out = server.cli_env(args, &env);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let fixture = repo_root().join("tests/fixtures/dockerfile-app");
    (token, key, git_repo(server.dir.path(), app, &fixture))
}

/// Alice deploys her app `secret` from its Dockerfile: the engine now holds its image, by the
/// tag returned with her token.
fn alice_deploys_secret(server: &Server) -> (String, String) {
    let (alice, alice_key, alice_repo) = user_app(server, "alice", "secret");
    let push = server.git_push(&alice_repo, &alice_key, "secret");
    assert!(push.status.success(), "{}\n{}", text(&push), server.log());
    let commit = run(Command::new("git")
        .current_dir(&alice_repo)
        .args(["rev-parse", "HEAD"]));
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_owned();
    let image = format!("127.0.0.1:{}/apps/secret:{commit}", server.registry);
    let local =
        run(Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", &image]));
    assert!(
        local.status.success(),
        "the engine lacks {image}: {}",
        text(&local)
    );
    (alice, image)
}

/// Pushes, as `thief` from `repo` with `key`, a Dockerfile that builds on `base`, and asserts
/// that the push is refused with one line saying `why`, before the engine builds anything.
fn push_is_refused(server: &Server, (repo, key): (&Path, &Path), base: &str, why: &str) {
    std::fs::write(
        repo.join("Dockerfile"),
        format!("FROM {base}\nCMD [\"python3\", \"/app/server.py\"]\n"),
    )
    .unwrap();
    commit_all(repo, &format!("build on {base}"));
    let push = server.git_push(repo, key, "thief");
    let out = text(&push);
    assert!(!push.status.success(), "{out}");
    assert_remote_lines(
        &out,
        &[
            &format!(" !     build: Dockerfile line 1: FROM {base} {why}"),
            " !     Push rejected; the running release is unchanged.",
        ],
    );
    assert!(!out.contains("Step 1/"), "the engine built it:\n{out}");
}

/// Local images a test tagged, removed when it ends, passed or not.
struct Tagged(Vec<String>);

impl Tagged {
    /// Builds `dockerfile` (with an empty context) into the local image `tag` with the engine's
    /// classic builder, as Slipway's builds use it.
    fn build(&mut self, tag: &str, dockerfile: &str) {
        let context = tempfile::tempdir().unwrap();
        std::fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
        self.0.push(tag.to_owned());
        let out = run(Command::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "-t", tag])
            .arg(context.path()));
        assert!(out.status.success(), "building {tag}: {}", text(&out));
    }
}

impl Drop for Tagged {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = run(Command::new("docker").args(["image", "rm", tag]));
        }
    }
}

#[test]
fn a_dockerfile_cannot_build_on_a_base_image_whose_triggers_name_other_images() {
    let server = Server::start();
    server.push_stacks();
    let (_, image) = alice_deploys_secret(&server);

    // A base image, local to the engine and so never checked by any registry, whose ONBUILD
    // trigger copies from alice's image: the engine would run it right after bob's FROM.
    let mut tagged = Tagged(Vec::new());
    let evil = format!("onbuild.example/evil:{}", server.registry);
    tagged.build(
        &evil,
        &format!("FROM {image}\nONBUILD COPY --from={image} /app /stolen\n"),
    );
    let (_, bob_key, bob_repo) = user_app(&server, "bob", "thief");
    let fixture = std::fs::read_to_string(bob_repo.join("Dockerfile")).unwrap();
    push_is_refused(
        &server,
        (&bob_repo, &bob_key),
        &evil,
        &format!(
            "has ONBUILD triggers that name other images (COPY --from={image} /app /stolen); \
             Slipway does not build on those"
        ),
    );
    let releases = server.cli_ok(&["releases", "-a", "thief"]);
    assert!(!releases.contains("v1"), "{releases}");

    // A base image whose trigger names no image is built on, the trigger run.
    let harmless = format!("onbuild.example/harmless:{}", server.registry);
    tagged.build(
        &harmless,
        // This server's port keeps the engine's build cache from skipping the trigger's step.
        &format!(
            "FROM slipway/stack-run:bookworm\nONBUILD RUN echo harmless trigger ran for {}\n",
            server.registry
        ),
    );
    let from = fixture.lines().find(|l| l.starts_with("FROM ")).unwrap();
    std::fs::write(
        bob_repo.join("Dockerfile"),
        fixture.replace(from, &format!("FROM {harmless}")),
    )
    .unwrap();
    commit_all(&bob_repo, "build on a base image with a harmless trigger");
    let push = server.git_push(&bob_repo, &bob_key, "thief");
    let out = text(&push);
    assert!(push.status.success(), "{out}\n{}", server.log());
    for needle in [
        "Executing 1 build trigger".to_owned(),
        format!("harmless trigger ran for {}", server.registry),
    ] {
        assert!(
            out.contains(&needle),
            "push output lacks {needle:?}:\n{out}"
        );
    }
    server.wait_for_body(
        "thief",
        "docker hello from thief v1",
        Duration::from_secs(60),
    );
}

#[test]
fn a_dockerfile_cannot_build_on_an_app_its_pusher_has_no_access_to() {
    let server = Server::start();
    server.push_stacks();
    let (alice, image) = alice_deploys_secret(&server);

    // Bob's Dockerfile builds on it: refused in one line before the engine builds anything.
    let (_, bob_key, bob_repo) = user_app(&server, "bob", "thief");
    push_is_refused(
        &server,
        (&bob_repo, &bob_key),
        &image,
        "is an image in Slipway's registry that this push may not use; build on a stacks/ \
         image, an app you have access to, or a public image",
    );
    assert_eq!(
        server.http_get("secret").0,
        200,
        "alice's app stopped serving"
    );
    let releases = server.cli_ok(&["releases", "-a", "thief"]);
    assert!(!releases.contains("v1"), "{releases}");
    assert!(
        run(Command::new("docker").args(["image", "inspect", &image]))
            .status
            .success(),
        "{image} went away"
    );

    // Once alice makes bob a collaborator, the same push builds on her image.
    let out = server.cli_env(
        &["access:add", "bob", "-a", "secret"],
        &[("SLIPWAY_TOKEN", alice.as_str())],
    );
    assert!(out.status.success(), "{}", text(&out));
    let push = server.git_push(&bob_repo, &bob_key, "thief");
    let out = text(&push);
    assert!(push.status.success(), "{out}\n{}", server.log());
    assert!(out.contains(&format!("Step 1/4 : FROM {image}")), "{out}");
    server.wait_for_body(
        "thief",
        "docker hello from thief v1",
        Duration::from_secs(60),
    );
}
