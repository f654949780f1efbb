//! The shipped buildpacks beyond Python, end to end: a Node.js app, a static site and an app
//! that has only a Procfile are pushed over OpenSSH, detected by their own buildpack, built
//! offline with the stack's tools and served through the router. The Node.js app is also
//! redeployed after a change, and an app whose dependencies cannot be downloaded is rejected
//! quickly with a message saying what to do, while the running release keeps serving.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use slipway_tests::{
    Server, assert_remote_lines, commit_all, copy_dir, edit, git_repo, repo_root, text,
};

/// A server with the stacks pushed, a key, and `app` created from `fixture`, pushed once.
struct Pushed {
    server: Server,
    key: PathBuf,
    repo: PathBuf,
    /// The first push's output.
    out: String,
}

fn push_fixture(app: &str, fixture: &str) -> Pushed {
    push_fixtures(app, &[fixture])
}

/// Like [`push_fixture`], with the app made of `fixtures` copied over one another in order.
fn push_fixtures(app: &str, fixtures: &[&str]) -> Pushed {
    let server = Server::start();
    server.push_stacks();
    let key = server.keygen("bp-key");
    server.cli_ok(&["keys:add", key.with_extension("pub").to_str().unwrap()]);
    server.cli_ok(&["apps:create", app]);
    let source = server.dir.path().join(format!("{app}-source"));
    for fixture in fixtures {
        copy_dir(&repo_root().join("tests/fixtures").join(fixture), &source);
    }
    let repo = git_repo(server.dir.path(), app, &source);
    let push = server.git_push(&repo, &key, app);
    let out = text(&push);
    assert!(
        push.status.success(),
        "push failed:\n{out}\n{}",
        server.log()
    );
    Pushed {
        server,
        key,
        repo,
        out,
    }
}

fn push(p: &Pushed, app: &str) -> (Output, String) {
    let out = p.server.git_push(&p.repo, &p.key, app);
    let text = text(&out);
    (out, text)
}

#[test]
fn nodejs_app_builds_offline_and_redeploys() {
    let p = push_fixture("nodeapp", "node-app");
    assert_remote_lines(
        &p.out,
        &[
            "-----> Node.js app detected",
            "-----> Installing dependencies with npm ci",
            "-----> Web process: npm start (node server.js)",
        ],
    );
    // `npm start` runs in the run image, which has node but no npm of its own, with
    // NODE_ENV=production from the buildpack's launch environment.
    p.server.wait_for_body(
        "nodeapp",
        "node hello from nodeapp v1 (production)",
        Duration::from_secs(60),
    );

    // A one-line change deploys as the next release.
    edit(
        &p.repo.join("server.js"),
        "const greeting = \"hello\";",
        "const greeting = \"howdy\";",
    );
    commit_all(&p.repo, "howdy");
    let (out, text) = push(&p, "nodeapp");
    assert!(out.status.success(), "{text}\n{}", p.server.log());
    // node_modules comes back from the build cache, since package.json and the lock did not
    // change.
    assert_remote_lines(
        &text,
        &[
            "-----> Node.js app detected",
            "-----> Reusing node_modules: package.json and package-lock.json unchanged",
        ],
    );
    assert!(text.contains("KiB uploaded, 1 layer reused)"), "{text}");
    p.server.wait_for_body(
        "nodeapp",
        "node howdy from nodeapp v2 (production)",
        Duration::from_secs(60),
    );

    // A dependency that cannot be downloaded (a registry nothing answers on) fails the build
    // at once, with what to do, instead of hanging; the running release keeps serving.
    std::fs::write(p.repo.join(".npmrc"), "registry=http://127.0.0.1:9/\n").unwrap();
    edit(
        &p.repo.join("package.json"),
        "\"private\": true,",
        "\"private\": true,\n  \"dependencies\": { \"left-pad\": \"1.3.0\" },",
    );
    std::fs::remove_file(p.repo.join("package-lock.json")).unwrap();
    commit_all(&p.repo, "a dependency");
    let started = Instant::now();
    let (out, text) = push(&p, "nodeapp");
    assert!(!out.status.success(), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the failing install took {:?}",
        started.elapsed()
    );
    assert_remote_lines(
        &text,
        &[
            "-----> Installing dependencies with npm install",
            " !     npm install failed",
        ],
    );
    assert!(text.contains("commit node_modules with the app"), "{text}");
    let (code, body) = p.server.http_get("nodeapp");
    assert_eq!(
        (code, body.trim()),
        (200, "node howdy from nodeapp v2 (production)")
    );
}

#[test]
fn static_site_is_served() {
    let p = push_fixture("site", "static-site");
    assert_remote_lines(
        &p.out,
        &[
            "-----> Static HTML app detected",
            "-----> Web process: slipway-static /workspace",
        ],
    );
    p.server
        .wait_for_body("site", "static-site-marker-7f3a9c", Duration::from_secs(60));
    // A directory serves its index.html; anything missing gets the site's 404.html; no
    // directory is listed.
    let (code, body) = p.server.curl("site.slipway.localhost", "/about/", &[]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("about-page-marker"), "{body}");
    let (code, body) = p
        .server
        .curl("site.slipway.localhost", "/missing.html", &[]);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("static-site-not-found"), "{body}");
}

#[test]
fn procfile_app_runs_its_commands() {
    let p = push_fixture("procapp", "procfile-app");
    assert_remote_lines(
        &p.out,
        &[
            "-----> Procfile app detected",
            "       process types: web, worker",
            "-----> Process types: web, worker",
        ],
    );
    p.server.wait_for_body(
        "procapp",
        "procfile hello from procapp v1",
        Duration::from_secs(60),
    );
}

#[test]
fn python_dependencies_are_cached_while_requirements_are_unchanged() {
    // The Python test app, with a requirements.txt naming a vendored wheel.
    let p = push_fixtures("pydeps", &["python-app", "python-deps-app"]);
    assert_remote_lines(
        &p.out,
        &[
            "-----> Python app detected",
            "-----> Installing requirements with pip",
        ],
    );
    p.server
        .wait_for_body("pydeps", "hello from pydeps v1", Duration::from_secs(60));

    // A code change reuses the installed dependencies.
    edit(&p.repo.join("app.py"), "hello", "howdy");
    commit_all(&p.repo, "code only");
    let (out, text) = push(&p, "pydeps");
    assert!(out.status.success(), "{text}");
    assert_remote_lines(
        &text,
        &["-----> Reusing the virtualenv: requirements.txt unchanged"],
    );
    assert!(!text.contains("Installing requirements"), "{text}");
    // The virtualenv layer comes from the previous image, not from the build.
    assert!(text.contains("KiB uploaded, 1 layer reused)"), "{text}");
    p.server
        .wait_for_body("pydeps", "howdy from pydeps v2", Duration::from_secs(60));
    let imported = p.server.cli(&[
        "run",
        "-a",
        "pydeps",
        "--",
        "python3",
        "-c",
        "'import slipwaydep; print(slipwaydep.GREETING_SUFFIX)'",
    ]);
    assert!(
        slipway_tests::text(&imported).contains("with deps"),
        "{}",
        slipway_tests::text(&imported)
    );

    // A changed requirements.txt installs afresh.
    edit(
        &p.repo.join("requirements.txt"),
        "./wheels",
        "# pinned\n./wheels",
    );
    commit_all(&p.repo, "requirements");
    let (out, text) = push(&p, "pydeps");
    assert!(out.status.success(), "{text}");
    assert_remote_lines(&text, &["-----> Installing requirements with pip"]);
}
