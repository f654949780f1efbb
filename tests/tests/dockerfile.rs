//! Dockerfile builds: a `Dockerfile` at the root builds through the Docker Engine, the image
//! lands in Slipway's registry labelled with the server's instance id, the image's own command
//! serves as `web` unless a Procfile says otherwise, and a broken Dockerfile rejects the push
//! with the failing step's output while the running release keeps serving.

use std::process::Command;
use std::time::Duration;

use slipway_tests::{Server, commit_all, git_repo, repo_root, run, text};

#[test]
fn dockerfile_builds() {
    let server = Server::start();
    let key = server.keygen("docker-key");
    server.cli_ok(&["keys:add", key.with_extension("pub").to_str().unwrap()]);
    server.cli_ok(&["apps:create", "dock"]);
    let app = git_repo(
        server.dir.path(),
        "dock",
        &repo_root().join("tests/fixtures/dockerfile-app"),
    );
    // The engine caches steps across servers: a file of this server's own makes `COPY . /app/`
    // and the RUN step after it run afresh, so their output shows.
    std::fs::write(app.join("build-nonce"), server.instance_id()).unwrap();
    commit_all(&app, "this server's nonce");

    // The push shows the Dockerfile's steps and their output as they run, then the app serves
    // through the router with the image's own CMD.
    let push = server.git_push(&app, &key, "dock");
    let out = text(&push);
    assert!(push.status.success(), "{out}\n{}", server.log());
    for needle in [
        "Dockerfile app detected",
        "Step 1/6 : FROM slipway/stack-run:bookworm",
        "Successfully tagged",
        // The RUN step's own output (the stack user), not just its command line.
        "dockerfile build step ran as 1000",
        "web (the image's own command)",
        "Releasing v1",
    ] {
        assert!(out.contains(needle), "push output lacks {needle:?}:\n{out}");
    }
    assert!(
        !out.contains("-----> Detecting") && !out.contains("buildpack"),
        "a Dockerfile app went through buildpacks:\n{out}"
    );
    server.wait_for_body("dock", "docker hello from dock v1", Duration::from_secs(60));

    // The release names the image in Slipway's registry by digest, and the image carries this
    // server's instance id so cleanup finds it.
    let releases = server.cli_ok(&["releases", "-a", "dock", "--json"]);
    let repo = format!("127.0.0.1:{}/apps/dock", server.registry);
    assert!(
        releases.contains(&format!("{repo}@sha256:")),
        "release image is not {repo}@sha256:...: {releases}"
    );
    let images = run(Command::new("docker").args([
        "images",
        "--format",
        "{{.Repository}}",
        "--filter",
        &format!("label=slipway.instance={}", server.instance_id()),
    ]));
    assert!(
        String::from_utf8_lossy(&images.stdout)
            .lines()
            .any(|r| r == repo),
        "no image of {repo} labelled with the instance id: {}",
        text(&images)
    );

    // A failing step rejects the push with that step's output and error; v1 keeps serving.
    let dockerfile = app.join("Dockerfile");
    let good = std::fs::read_to_string(&dockerfile).unwrap();
    let broken = good.replace("CMD [", "RUN echo \"broken-$((40 + 2))\" && exit 3\nCMD [");
    assert_ne!(broken, good, "the fixture's Dockerfile has no CMD");
    std::fs::write(&dockerfile, broken).unwrap();
    commit_all(&app, "a step that fails");
    let push = server.git_push(&app, &key, "dock");
    let out = text(&push);
    assert!(
        !push.status.success(),
        "a broken Dockerfile was accepted:\n{out}"
    );
    // `broken-42` is only in the step's output: its command line says `$((40 + 2))`.
    for needle in [
        "broken-42",
        "returned a non-zero code: 3",
        "Push rejected; the running release is unchanged.",
    ] {
        assert!(out.contains(needle), "push output lacks {needle:?}:\n{out}");
    }
    let (code, body) = server.http_get("dock");
    assert_eq!(
        (code, body.trim()),
        (200, "docker hello from dock v1"),
        "the running release changed after a failed build"
    );

    // A Procfile's web command wins over the image's CMD.
    std::fs::write(&dockerfile, good).unwrap();
    std::fs::write(
        app.join("Procfile"),
        "web: python3 /app/server.py via-procfile\n",
    )
    .unwrap();
    commit_all(&app, "a Procfile");
    let push = server.git_push(&app, &key, "dock");
    let out = text(&push);
    assert!(push.status.success(), "{out}\n{}", server.log());
    assert!(
        out.contains("-----> Process types: web") && !out.contains("the image's own command"),
        "push output lacks the Procfile's process types:\n{out}"
    );
    server.wait_for_body(
        "dock",
        "docker hello from dock v2 via-procfile",
        Duration::from_secs(60),
    );
}
