//! Operating a deployed app: custom domains, scaling, restarts, logs, rollback, and users with
//! their own tokens and `slipway login`.

use std::time::{Duration, Instant};

use slipway_tests::{Server, git_repo, repo_root, text};

#[test]
fn operate_a_deployed_app() {
    let server = Server::start();
    server.push_stacks();
    let key = server.keygen("ops-key");
    server.cli_ok(&["keys:add", key.with_extension("pub").to_str().unwrap()]);
    server.cli_ok(&["apps:create", "ops"]);
    let app = git_repo(
        server.dir.path(),
        "ops",
        &repo_root().join("tests/fixtures/python-app"),
    );
    let push = server.git_push(&app, &key, "ops");
    assert!(push.status.success(), "{}\n{}", text(&push), server.log());
    server.wait_for_body("ops", "hello from ops v1", Duration::from_secs(30));

    // A custom domain routes to the app; an unknown host gets the router's 404.
    server.cli_ok(&["domains:add", "-a", "ops", "www.ops.test"]);
    assert!(
        server
            .cli_ok(&["domains", "-a", "ops"])
            .contains("www.ops.test")
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.http_get_host("www.ops.test").0 != 200 {
        assert!(Instant::now() < deadline, "www.ops.test never routed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(server.http_get_host("nothing.ops.test").0, 404);
    let bad = server.cli(&["domains:add", "-a", "ops", "not a host"]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("invalid domain"), "{}", text(&bad));
    server.cli_ok(&["domains:remove", "-a", "ops", "www.ops.test"]);

    // Maintenance mode answers 503 with a page that says so, until it is turned off.
    server.cli_ok(&["maintenance:on", "-a", "ops"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = server.http_get("ops");
        if code == 503 && body.contains("maintenance") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never in maintenance: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server.cli_ok(&["maintenance:off", "-a", "ops"]);
    server.wait_for_body("ops", "hello from ops v1", Duration::from_secs(30));

    // Scaling web to two instances runs two, both serving.
    server.cli_ok(&["ps:scale", "-a", "ops", "web=2"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = server.cli_ok(&["ps", "-a", "ops"]);
        if ps.matches(" up ").count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "never two instances:\n{ps}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let bad = server.cli(&["ps:scale", "-a", "ops", "clock=1"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("no process type clock"),
        "{}",
        text(&bad)
    );

    let events = server.cli_ok(&["events", "-a", "ops"]);
    assert!(
        events.contains("web=2") && events.contains("maintenance on"),
        "{events}"
    );
    // The push's release names the key it came from, as `ssh-keygen -lf` prints it; what an
    // API token did names none.
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    let fp = text(&out).split_whitespace().nth(1).unwrap().to_owned();
    assert!(fp.starts_with("SHA256:"), "{}", text(&out));
    let pushed = events.lines().find(|l| l.contains("v1: deploy")).unwrap();
    assert!(pushed.contains(&fp), "{events}");
    let scaled = events.lines().find(|l| l.contains("web=2")).unwrap();
    assert!(!scaled.contains("SHA256:"), "{events}");
    let json: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["--json", "events", "-a", "ops"])).unwrap();
    let by_kind = |kind: &str| -> serde_json::Value {
        json.as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} event: {json}"))["fingerprint"]
            .clone()
    };
    assert_eq!(by_kind("release"), serde_json::json!(fp), "{json}");
    assert_eq!(by_kind("scale"), serde_json::Value::Null, "{json}");

    // Logs carry the app's output, with the instance's process type.
    let logs = server.cli_ok(&["logs", "-a", "ops", "-n", "50"]);
    assert!(logs.contains("ops[web."), "{logs}");
    assert!(logs.contains("listening on port 5000"), "{logs}");

    // A config change, then a rollback to the release before it.
    server.cli_ok(&["config:set", "-a", "ops", "GREETING=bonjour"]);
    server.wait_for_body("ops", "bonjour from ops v2", Duration::from_secs(90));
    let out = server.cli_ok(&["rollback", "-a", "ops"]);
    assert!(out.contains("rollback to v1"), "{out}");
    server.wait_for_body("ops", "hello from ops v3", Duration::from_secs(90));

    // A restart replaces the instances, rolling, and the app keeps its formation.
    let names = |ps: &str| -> Vec<String> {
        ps.lines()
            .filter(|l| l.contains(" up"))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("slipway-")))
            .map(str::to_owned)
            .collect()
    };
    // The rollback's old instances drain first.
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        let now = names(&server.cli_ok(&["ps", "-a", "ops"]));
        if now.len() == 2 {
            break now;
        }
        assert!(Instant::now() < deadline, "never settled: {now:?}");
        std::thread::sleep(Duration::from_millis(250));
    };
    server.cli_ok(&["ps:restart", "-a", "ops"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ps = server.cli_ok(&["ps", "-a", "ops"]);
        let now = names(&ps);
        if now.len() == 2 && now.iter().all(|n| !before.contains(n)) {
            break;
        }
        assert!(Instant::now() < deadline, "never replaced:\n{ps}");
        std::thread::sleep(Duration::from_millis(250));
    }
    server.wait_for_body("ops", "hello from ops v3", Duration::from_secs(60));

    // One-off runs see the config and report the command's exit code.
    let run = server.cli(&[
        "run",
        "-a",
        "ops",
        "--",
        "echo",
        "release=$SLIPWAY_RELEASE;",
        "exit",
        "3",
    ]);
    assert_eq!(run.status.code(), Some(3), "{}", text(&run));
    assert!(text(&run).contains("release=v3"), "{}", text(&run));
    // ... and the reconciler leaves them alone: the app still runs two web instances.
    assert_eq!(
        server.cli_ok(&["ps", "-a", "ops"]).matches(" up ").count(),
        2
    );

    // A prebuilt image (here: the current release's own) deploys with its own command.
    let info = server.cli_ok(&["apps:info", "-a", "ops"]);
    let image = info
        .lines()
        .find_map(|l| l.strip_prefix("image    "))
        .expect("apps:info shows the image")
        .trim()
        .to_owned();
    server.cli_ok(&["deploy", "-a", "ops", "--image", &image]);
    server.wait_for_body("ops", "hello from ops v4", Duration::from_secs(90));
    let bad = server.cli(&["deploy", "-a", "ops", "--image", "bad image; rm -rf /"]);
    assert!(
        text(&bad).contains("invalid image reference"),
        "{}",
        text(&bad)
    );

    // Users: admin adds bob; bob's token works, sees no apps, and cannot touch admin's.
    let bob_token = server.add_user("bob");
    let bob = |args: &[&str]| server.cli_env(args, &[("SLIPWAY_TOKEN", &bob_token)]);
    assert!(bob(&["apps"]).status.success());
    assert!(!text(&bob(&["apps"])).contains("ops"));
    let denied = bob(&["config", "-a", "ops"]);
    assert!(!denied.status.success());
    assert!(
        text(&denied).contains("no access to app ops"),
        "{}",
        text(&denied)
    );
    let denied = bob(&["users:add", "eve"]);
    assert!(text(&denied).contains("only admin"), "{}", text(&denied));

    // In the registry too, bob reaches the stacks but not admin's app, and pushes no stacks.
    let skopeo = |args: &[&str]| {
        slipway_tests::run(std::process::Command::new("skopeo").args(args).args([
            "--tls-verify=false",
            "--creds",
            &format!("bob:{bob_token}"),
        ]))
    };
    let registry = format!("docker://127.0.0.1:{}", server.registry);
    let stack = skopeo(&[
        "inspect",
        "--raw",
        &format!("{registry}/stacks/run:bookworm"),
    ]);
    assert!(stack.status.success(), "{}", text(&stack));
    let theirs = skopeo(&["inspect", "--raw", &format!("{registry}/apps/ops:latest")]);
    assert!(!theirs.status.success());
    assert!(text(&theirs).contains("denied"), "{}", text(&theirs));
    let overwrite = slipway_tests::run(std::process::Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-creds",
        &format!("bob:{bob_token}"),
        "--dest-creds",
        &format!("bob:{bob_token}"),
        &format!("{registry}/stacks/run:bookworm"),
        &format!("{registry}/stacks/run:bob"),
    ]));
    assert!(text(&overwrite).contains("denied"), "{}", text(&overwrite));
    assert!(!overwrite.status.success(), "{}", text(&overwrite));

    // As a collaborator, bob can operate the app but not destroy it.
    server.cli_ok(&["access:add", "-a", "ops", "bob"]);
    assert!(server.cli_ok(&["access", "-a", "ops"]).contains("bob"));
    let config = bob(&["config", "-a", "ops"]);
    assert!(config.status.success(), "{}", text(&config));
    assert!(text(&bob(&["apps"])).contains("ops"));
    let destroy = bob(&["apps:destroy", "ops", "--confirm", "ops"]);
    assert!(
        text(&destroy).contains("only admin, the owner of ops"),
        "{}",
        text(&destroy)
    );
    server.cli_ok(&["access:remove", "-a", "ops", "bob"]);
    assert!(!bob(&["config", "-a", "ops"]).status.success());

    // `slipway login` saves a token; later commands need no SLIPWAY_TOKEN.
    let config_home = server.dir.path().join("bob-config");
    let config_home = config_home.to_str().unwrap();
    let fresh = bob(&["tokens:create"]);
    let fresh = String::from_utf8_lossy(&fresh.stdout).trim().to_owned();
    let login = server.cli_env(
        &["login", "--token", &fresh],
        &[("XDG_CONFIG_HOME", config_home)],
    );
    assert!(login.status.success(), "{}", text(&login));
    assert!(text(&login).contains("as bob"), "{}", text(&login));
    let apps = server.cli_env(&["apps"], &[("XDG_CONFIG_HOME", config_home)]);
    assert!(apps.status.success(), "{}", text(&apps));
    let no_token = server.cli_env(&["apps"], &[("XDG_CONFIG_HOME", "/nonexistent")]);
    assert!(
        text(&no_token).contains("no API token"),
        "{}",
        text(&no_token)
    );
}
