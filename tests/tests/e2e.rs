//! `git push` deploys: the whole path through the real binaries. A user's keys, an app, config,
//! a push over OpenSSH that builds with the Python buildpack, a release served through the
//! router, a config change rolled out, and the refusals: an unknown key, an app that does not
//! exist, an app no buildpack recognises, and a failing build that leaves the old release up.

use std::process::Command;
use std::time::Duration;

use slipway_tests::{Server, commit_all, git_repo, repo_root, run, text};

#[test]
fn git_push_deploys() {
    let mut server = Server::start();
    server.push_stacks();

    // Keys: the fingerprint Slipway stores is the one `ssh-keygen -lf` prints.
    let key = server.keygen("alice");
    let pub_key = key.with_extension("pub");
    let added = server.cli_ok(&["keys:add", pub_key.to_str().unwrap()]);
    let keygen = text(&run(Command::new("ssh-keygen").arg("-lf").arg(&pub_key)));
    let fingerprint = keygen.split_whitespace().nth(1).unwrap().to_owned();
    assert!(added.contains(&fingerprint), "{added} vs {keygen}");
    assert!(server.cli_ok(&["keys"]).contains(&fingerprint));

    // Apps and config.
    server.cli_ok(&["apps:create", "pyapp"]);
    assert!(server.cli_ok(&["apps"]).contains("pyapp"));
    server.cli_ok(&["config:set", "-a", "pyapp", "GREETING=hello-e2e"]);
    assert!(
        server
            .cli_ok(&["config", "-a", "pyapp"])
            .contains("GREETING=hello-e2e")
    );

    // The first push builds, releases and deploys; the push returns once the app serves.
    let app = git_repo(
        server.dir.path(),
        "pyapp",
        &repo_root().join("tests/fixtures/python-app"),
    );
    let push = server.git_push(&app, &key, "pyapp");
    let out = text(&push);
    assert!(
        push.status.success(),
        "push failed:\n{out}\n{}",
        server.log()
    );
    assert!(out.contains("remote: -----> Python app detected"), "{out}");
    assert!(
        out.contains("remote: -----> Launching... done, v2"),
        "{out}"
    );
    let (code, body) = server.http_get("pyapp");
    assert_eq!((code, body.trim()), (200, "hello-e2e from pyapp v2"));
    let releases = server.cli_ok(&["releases", "-a", "pyapp"]);
    assert!(
        releases.contains("v2") && releases.contains("deployed"),
        "{releases}"
    );

    // Operators find the container by its labels; its port is published on 127.0.0.1 only.
    let ps = text(&run(Command::new("docker").args([
        "ps",
        "--filter",
        &format!("label=slipway.instance={}", server.instance_id()),
        "--filter",
        "label=slipway.app=pyapp",
        "--filter",
        "label=slipway.process=web",
        "--filter",
        "label=slipway.release=v2",
        "--format",
        "{{.Ports}}",
    ])));
    assert!(ps.trim().starts_with("127.0.0.1:"), "{ps:?}");

    // A config change is a new release, rolled out the same way.
    server.cli_ok(&["config:set", "-a", "pyapp", "GREETING=changed"]);
    server.wait_for_body("pyapp", "changed from pyapp v3", Duration::from_secs(90));

    // An unknown key is refused by SSH authentication.
    let stranger = server.keygen("mallory");
    let push = server.git_push(&app, &stranger, "pyapp");
    assert!(!push.status.success());
    assert!(
        text(&push).contains("Permission denied (publickey)"),
        "{}",
        text(&push)
    );

    // A deploy key pushes its one app and nothing else.
    server.cli_ok(&["apps:create", "other"]);
    let deploy_key = server.keygen("deploy-key");
    let added = server.cli_ok(&[
        "keys:add",
        "--app",
        "other",
        deploy_key.with_extension("pub").to_str().unwrap(),
    ]);
    assert!(added.contains("deploy key"), "{added}");
    let push = server.git_push(&app, &deploy_key, "pyapp");
    assert!(!push.status.success());
    assert!(
        text(&push).contains("this deploy key can only push app other"),
        "{}",
        text(&push)
    );
    let push = server.git_push(&app, &deploy_key, "other");
    assert!(push.status.success(), "{}", text(&push));
    server.wait_for_body("other", "from other v1", Duration::from_secs(30));

    // A push to an app that does not exist says so.
    let push = server.git_push(&app, &key, "nope");
    assert!(!push.status.success());
    assert!(
        text(&push).contains("app nope does not exist"),
        "{}",
        text(&push)
    );

    // An app no buildpack recognises is rejected with what is supported.
    server.cli_ok(&["apps:create", "plain"]);
    let plain_dir = server.dir.path().join("plain-src");
    std::fs::create_dir_all(&plain_dir).unwrap();
    std::fs::write(plain_dir.join("README"), "nothing to build\n").unwrap();
    let plain = git_repo(server.dir.path(), "plain", &plain_dir);
    let push = server.git_push(&plain, &key, "plain");
    let out = text(&push);
    assert!(!push.status.success(), "{out}");
    assert!(out.contains("no buildpack can build this app"), "{out}");
    assert!(out.contains("supported: Python"), "{out}");

    // A failing build rejects the push, and the running release keeps answering.
    std::fs::write(app.join("requirements.txt"), "-r does-not-exist.txt\n").unwrap();
    commit_all(&app, "break the build");
    let push = server.git_push(&app, &key, "pyapp");
    let out = text(&push);
    assert!(!push.status.success(), "{out}");
    assert!(out.contains("Push rejected"), "{out}");
    assert!(out.contains("[remote rejected] main -> main"), "{out}");
    let (code, body) = server.http_get("pyapp");
    assert_eq!((code, body.trim()), (200, "changed from pyapp v3"));

    // A crashed app container is replaced.
    let killed = text(&run(Command::new("docker").args([
        "ps",
        "-q",
        "--filter",
        &format!("label=slipway.instance={}", server.instance_id()),
        "--filter",
        "label=slipway.app=pyapp",
    ])));
    assert!(!killed.trim().is_empty());
    run(Command::new("docker")
        .args(["kill"])
        .args(killed.split_whitespace()));
    server.wait_for_body("pyapp", "changed from pyapp v3", Duration::from_secs(60));
    let events = server.cli_ok(&["events", "-a", "pyapp"]);
    assert!(events.contains("crash"), "{events}");
    assert!(events.contains("v2: deploy"), "{events}");

    // After the server itself dies and restarts, the app is served again without anyone acting.
    server.kill_and_restart();
    server.wait_for_body("pyapp", "changed from pyapp v3", Duration::from_secs(60));

    // Destroying an app stops its containers, and its name starts afresh.
    server.cli_ok(&["apps:destroy", "plain", "--confirm", "plain"]);
    assert!(!server.cli_ok(&["apps"]).contains("plain"));
    assert!(!server.data().join("repos/plain.git").exists());

    // Ctrl-C stops the server cleanly.
    assert!(
        server.interrupt(),
        "server did not stop cleanly:\n{}",
        server.log()
    );
}
