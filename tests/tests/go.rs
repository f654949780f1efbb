//! The Go buildpack, end to end: a Go module is pushed over OpenSSH, detected, compiled offline
//! with the build stack's Go into a static binary and served through the router from the run
//! image, which has no Go. A one-line change rebuilds from the build cache and deploys as v2; a
//! module whose dependencies are not vendored (nothing can be downloaded here) is rejected at
//! once with what to do, while v2 keeps serving.

use std::path::Path;
use std::time::{Duration, Instant};

use slipway_tests::{Server, assert_remote_lines, commit_all, edit, git_repo, repo_root, text};

/// Pushes `repo` to the app `goapp`, asserts that the push succeeded, and returns its output.
fn push_ok(server: &Server, repo: &Path, key: &Path) -> String {
    let push = server.git_push(repo, key, "goapp");
    let out = text(&push);
    assert!(push.status.success(), "{out}\n{}", server.log());
    out
}

#[test]
fn go_app_builds_offline_reuses_its_cache_and_redeploys() {
    let server = Server::start();
    server.push_stacks();
    let key = server.keygen("go-key");
    server.cli_ok(&["keys:add", key.with_extension("pub").to_str().unwrap()]);
    server.cli_ok(&["apps:create", "goapp"]);
    let repo = git_repo(
        server.dir.path(),
        "goapp",
        &repo_root().join("tests/fixtures/go-app"),
    );

    let out = push_ok(&server, &repo, &key);
    assert_remote_lines(
        &out,
        &[
            "-----> Go app detected",
            "       go version go1.19",
            "-----> Building example.com/goapp with go build",
            "-----> Web process: goapp",
        ],
    );
    // The first build has no cache to reuse.
    assert!(!out.contains("Reusing the build cache"), "{out}");
    server.wait_for_body("goapp", "go hello from goapp v1", Duration::from_secs(60));

    // A one-line change: the compiled standard library comes back from the build cache.
    edit(
        &repo.join("main.go"),
        "const greeting = \"hello\"",
        "const greeting = \"howdy\"",
    );
    commit_all(&repo, "howdy");
    let out = push_ok(&server, &repo, &key);
    assert_remote_lines(
        &out,
        &[
            "-----> Go app detected",
            "-----> Reusing the build cache from the last build",
            "-----> Web process: goapp",
        ],
    );
    server.wait_for_body("goapp", "go howdy from goapp v2", Duration::from_secs(60));

    // A dependency that is not vendored cannot be downloaded: the build stops before compiling,
    // with one line saying what to do, and v2 keeps serving.
    edit(
        &repo.join("go.mod"),
        "go 1.19\n",
        "go 1.19\n\nrequire github.com/google/uuid v1.3.0\n",
    );
    edit(
        &repo.join("main.go"),
        "\t\"os\"\n",
        "\t\"os\"\n\n\t\"github.com/google/uuid\"\n",
    );
    edit(
        &repo.join("main.go"),
        "func main() {\n",
        "func main() {\n\t_ = uuid.New()\n",
    );
    commit_all(&repo, "a dependency");
    let started = Instant::now();
    let push = server.git_push(&repo, &key, "goapp");
    let out = text(&push);
    assert!(!push.status.success(), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the rejected build took {:?}",
        started.elapsed()
    );
    assert_remote_lines(
        &out,
        &[" !     go.mod requires other modules and builds on this server cannot download them"],
    );
    assert!(out.contains("run `go mod vendor`"), "{out}");
    let (code, body) = server.http_get("goapp");
    assert_eq!((code, body.trim()), (200, "go howdy from goapp v2"));
}
