//! The SSH git server's refusals, through the real OpenSSH client: command injection, paths,
//! shells, password auth, a name that is a prefix of another app's, and another user's app.
//! Each refusal is one clear line and changes nothing.

use std::path::Path;
use std::process::{Command, Output};

use slipway_tests::{Server, run, text};

fn ssh(server: &Server, key: &Path, extra: &[&str], command: Option<&str>) -> Output {
    let mut cmd = Command::new("ssh");
    cmd.args(["-p", &server.ssh.to_string(), "-i"])
        .arg(key)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
        ])
        .args(extra)
        .arg("git@127.0.0.1");
    if let Some(c) = command {
        cmd.arg(c);
    }
    run(cmd.stdin(std::process::Stdio::null()))
}

#[test]
fn ssh_refuses_what_is_not_a_push() {
    let server = Server::start();
    let key = server.keygen("owner-key");
    server.cli_ok(&["keys:add", key.with_extension("pub").to_str().unwrap()]);
    server.cli_ok(&["apps:create", "webapp"]);

    // Command injection after the repository argument runs nothing.
    let marker = server.dir.path().join("pwned");
    let injected = format!("git-receive-pack 'webapp.git'; touch {}", marker.display());
    let out = ssh(&server, &key, &[], Some(&injected));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("expected one repository argument"),
        "{}",
        text(&out)
    );
    assert!(!marker.exists(), "the injected command ran");

    // Paths and other commands are refused before anything touches the disk.
    for (command, expected) in [
        ("git-receive-pack '../webapp.git'", "invalid app name"),
        ("git-receive-pack '/etc/passwd'", "invalid app name"),
        (
            "git-upload-archive 'webapp.git'",
            "only git push and git clone",
        ),
        ("sh -c id", "only git push and git clone"),
    ] {
        let out = ssh(&server, &key, &[], Some(command));
        assert!(!out.status.success(), "{command}");
        assert!(text(&out).contains(expected), "{command}: {}", text(&out));
    }
    assert!(!server.data().join("repos/etc").exists());

    // A shell is refused.
    let out = ssh(&server, &key, &["-T"], None);
    assert!(!out.status.success());
    assert!(text(&out).contains("runs no shell"), "{}", text(&out));

    // Password authentication is not offered.
    let out = ssh(
        &server,
        &key,
        &[
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "PubkeyAuthentication=no",
        ],
        Some("git-upload-pack 'webapp.git'"),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("Permission denied"), "{}", text(&out));

    // A name that is a prefix of an existing app's is a different (missing) app.
    let out = ssh(&server, &key, &[], Some("git-upload-pack 'web.git'"));
    assert!(
        text(&out).contains("app web does not exist"),
        "{}",
        text(&out)
    );

    // Another user's app is refused; cloning their own works for the owner.
    let added = server.cli_ok(&["users:add", "bob"]);
    let bob_token = added
        .lines()
        .find_map(|l| l.strip_prefix("their API token (shown once): "))
        .unwrap()
        .to_owned();
    let bob_key = server.keygen("bob-key");
    let out = server.cli_env(
        &["keys:add", bob_key.with_extension("pub").to_str().unwrap()],
        &[("SLIPWAY_TOKEN", &bob_token)],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = ssh(&server, &bob_key, &[], Some("git-upload-pack 'webapp.git'"));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no access to app webapp"),
        "{}",
        text(&out)
    );

    // The same key cannot be added twice, by anyone.
    let out = server.cli_env(
        &["keys:add", key.with_extension("pub").to_str().unwrap()],
        &[("SLIPWAY_TOKEN", &bob_token)],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("already exists"), "{}", text(&out));
}
