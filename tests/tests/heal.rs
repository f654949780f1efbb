//! The reconciler heals and the app's history is kept: a killed instance is replaced and its
//! output stays in `slipway logs` next to the build's; a crash-looping release is reported, with
//! backoff; limits and a health check path take effect with a rolling replacement; and a server
//! killed in the middle of a rollout converges when it comes back.

use std::process::Command;
use std::time::{Duration, Instant};

use slipway_tests::{Server, git_repo, repo_root, run, text};

/// The app's running web containers: (id, memory limit, nano CPUs).
fn web_containers(server: &Server, app: &str) -> Vec<(String, i64, i64)> {
    let ids = text(&run(Command::new("docker").args([
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=slipway.instance={}", server.instance_id()),
        "--filter",
        &format!("label=slipway.app={app}"),
        "--filter",
        "label=slipway.process=web",
    ])));
    ids.split_whitespace()
        .filter_map(|id| {
            let out = run(Command::new("docker").args([
                "inspect",
                "-f",
                "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}",
                id,
            ]));
            // Removed between the listing and now: it is no longer running.
            if !out.status.success() {
                return None;
            }
            let out = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut f = out.split_whitespace().map(|n| n.parse::<i64>().unwrap());
            Some((id.to_owned(), f.next()?, f.next()?))
        })
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_reconciler_heals_and_keeps_history() {
    let mut server = Server::start();
    server.push_stacks();
    let key = server.keygen("heal-key");
    server.cli_ok(&["keys:add", key.with_extension("pub").to_str().unwrap()]);
    server.cli_ok(&["apps:create", "heal"]);
    let app = git_repo(
        server.dir.path(),
        "heal",
        &repo_root().join("tests/fixtures/python-app"),
    );
    let push = server.git_push(&app, &key, "heal");
    assert!(push.status.success(), "{}\n{}", text(&push), server.log());
    server.wait_for_body("heal", "hello from heal v1", Duration::from_secs(30));

    // The build's output is in the app's log.
    let logs = server.cli_ok(&["logs", "-a", "heal", "-n", "1000"]);
    assert!(logs.contains("heal[build]: -----> Building heal"), "{logs}");
    assert!(logs.contains("heal[slipway]: v1 is serving"), "{logs}");

    // A killed instance is replaced; its output stays in the log after it is gone.
    let (killed, _, _) = web_containers(&server, "heal")
        .pop()
        .expect("a web container");
    let started = Instant::now();
    run(Command::new("docker").args(["kill", &killed]));
    server.wait_for_body("heal", "hello from heal v1", Duration::from_secs(60));
    println!(
        "crash to serving again: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    wait_until(
        "the killed container is gone",
        Duration::from_secs(30),
        || {
            web_containers(&server, "heal")
                .iter()
                .all(|(id, _, _)| *id != killed)
        },
    );
    let logs = server.cli_ok(&["logs", "-a", "heal", "-n", "1000"]);
    let source = format!("heal[web.{}]: listening on port 5000", &killed[..8]);
    assert!(logs.contains(&source), "{source} missing from\n{logs}");
    let events = server.cli_ok(&["events", "-a", "heal"]);
    assert!(events.contains("exited with status 137"), "{events}");

    // Limits: bad values are refused in one line; good ones replace the instance, rolling.
    let bad = server.cli(&["limits:set", "-a", "heal", "web=12Q"]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("512M"), "{}", text(&bad));
    let bad = server.cli(&["limits:set", "-a", "heal", "--cpu", "web=640"]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("CPUs"), "{}", text(&bad));
    server.cli_ok(&["limits:set", "-a", "heal", "web=256M"]);
    let limits = server.cli_ok(&["limits:set", "-a", "heal", "--cpu", "web=0.5"]);
    assert!(
        limits.contains("256M") && limits.contains("0.5"),
        "{limits}"
    );
    wait_until(
        "the instance runs with its limits",
        Duration::from_secs(60),
        || {
            web_containers(&server, "heal")
                .iter()
                .any(|(_, mem, cpu)| *mem == 256 << 20 && *cpu == 500_000_000)
        },
    );
    server.wait_for_body("heal", "hello from heal v1", Duration::from_secs(30));
    server.cli_ok(&["limits:unset", "-a", "heal", "web"]);
    assert!(
        server
            .cli_ok(&["limits", "-a", "heal"])
            .contains("no limits")
    );

    // A health check path: new instances get traffic once it answers.
    let bad = server.cli(&["healthcheck:set", "-a", "heal", "no-slash"]);
    assert!(!bad.status.success());
    server.cli_ok(&["healthcheck:set", "-a", "heal", "/healthz"]);
    server.cli_ok(&["ps:restart", "-a", "heal"]);
    wait_until(
        "the health check was asked",
        Duration::from_secs(60),
        || {
            server
                .cli_ok(&["logs", "-a", "heal", "-n", "1000"])
                .contains("health check /healthz by slipway-health")
        },
    );
    server.wait_for_body("heal", "hello from heal v1", Duration::from_secs(30));
    server.cli_ok(&["healthcheck:unset", "-a", "heal"]);

    // A release that keeps crashing is reported as crash-looping, with backoff.
    server.cli_ok(&["config:set", "-a", "heal", "CRASH_AFTER=1"]);
    wait_until("ps reports the crash loop", Duration::from_secs(90), || {
        server
            .cli_ok(&["ps", "-a", "heal"])
            .contains("crash-looping")
    });
    let events = server.cli_ok(&["events", "-a", "heal"]);
    assert!(events.contains("is crash-looping"), "{events}");
    assert!(events.contains("exited with status 3"), "{events}");
    server.cli_ok(&["config:unset", "-a", "heal", "CRASH_AFTER"]);
    server.wait_for_body("heal", "hello from heal v3", Duration::from_secs(90));
    assert!(!server.cli_ok(&["ps", "-a", "heal"]).contains("crash"));

    // The server killed in the middle of a rollout: after a restart it converges on the new
    // release, with one web instance and nothing orphaned.
    server.cli_ok(&["config:set", "-a", "heal", "GREETING=again-7f3e"]);
    std::thread::sleep(Duration::from_millis(300));
    server.kill_and_restart();
    server.wait_for_body("heal", "again-7f3e from heal v4", Duration::from_secs(90));
    wait_until("one web instance is left", Duration::from_secs(60), || {
        web_containers(&server, "heal").len() == 1
    });
    let releases = server.cli_ok(&["releases", "-a", "heal"]);
    assert!(releases.contains("v4"), "{releases}");

    // Config values never reach the log, the events or the server's own log.
    let logs = server.cli_ok(&["logs", "-a", "heal", "-n", "10000"]);
    let events = server.cli_ok(&["events", "-a", "heal"]);
    for (what, text) in [
        ("logs", &logs),
        ("events", &events),
        ("server log", &server.log()),
    ] {
        assert!(
            !text.contains("again-7f3e"),
            "a config value in the {what}:\n{text}"
        );
    }
}
