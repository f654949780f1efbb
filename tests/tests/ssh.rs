//! The SSH git server's refusals, through the real OpenSSH client: command injection, paths,
//! shells, password auth, a name that is a prefix of another app's, and another user's app;
//! forwarding, terminals and the client's environment; and the limits that keep one address
//! from wearing the server down. Each refusal is one clear line and changes nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use slipway_tests::{Server, git_repo, repo_root, run, text};

/// `ssh` to the server with `key` only and no prompts, killed if it runs for a minute (a
/// forwarding the server wrongly accepted would otherwise hang the test).
fn ssh_command(server: &Server, keys: &[&Path], extra: &[&str], command: Option<&str>) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "ssh", "-p", &server.ssh.to_string()]);
    for key in keys {
        cmd.arg("-i").arg(key);
    }
    cmd.args([
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
    cmd.stdin(Stdio::null());
    cmd
}

fn ssh(server: &Server, key: &Path, extra: &[&str], command: Option<&str>) -> Output {
    run(&mut ssh_command(server, &[key], extra, command))
}

/// A server with an app `webapp` and the admin's key; returns the key's path.
fn server_with_app() -> (Server, PathBuf) {
    let server = Server::start();
    let key = server.keygen("owner-key");
    server.cli_ok(&["keys:add", key.with_extension("pub").to_str().unwrap()]);
    server.cli_ok(&["apps:create", "webapp"]);
    (server, key)
}

/// What an authenticated session answers for a missing app: proof that `key` got in.
const GOT_IN: &str = "app nope does not exist";
const PROBE: &str = "git-upload-pack 'nope.git'";

/// A new connection from 127.0.0.1 gets one line saying `why` and is closed before any SSH
/// is spoken; `ssh` with a good key does not get in.
fn assert_refused_at_once(server: &Server, key: &Path, why: &str) {
    let (mut conn, line) = raw_connection(server);
    assert!(line.contains(why), "{line:?}");
    assert!(closed_by(&mut conn, Instant::now() + Duration::from_secs(5)).is_some());
    let out = ssh(server, key, &[], Some(PROBE));
    assert!(!out.status.success());
    assert!(!text(&out).contains(GOT_IN), "{}", text(&out));
}

/// A raw TCP connection to the SSH port that has read the server's first line.
fn raw_connection(server: &Server) -> (TcpStream, String) {
    let mut conn = TcpStream::connect(("127.0.0.1", server.ssh)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 512 {
        match conn.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    (conn, String::from_utf8_lossy(&line).trim_end().to_owned())
}

/// Reads until the server closes `conn`; returns when, or None if it is still open at `by`.
fn closed_by(conn: &mut TcpStream, by: Instant) -> Option<Instant> {
    let mut buf = [0u8; 4096];
    loop {
        let left = by.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        conn.set_read_timeout(Some(left)).unwrap();
        match conn.read(&mut buf) {
            Ok(0) => return Some(Instant::now()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return None,
            Err(_) => return Some(Instant::now()),
        }
    }
}

#[test]
fn ssh_refuses_what_is_not_a_push() {
    let (server, key) = server_with_app();

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

/// The SHA256 fingerprint of the server's ed25519 host key, as `ssh-keyscan` sees it.
fn scanned_host_key(server: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run(Command::new("sh").arg("-c").arg(format!(
            "ssh-keyscan -t ed25519 -p {} 127.0.0.1 2>/dev/null | ssh-keygen -lf -",
            server.ssh
        )));
        let said = text(&out);
        if let Some(fp) = said.split_whitespace().find(|w| w.starts_with("SHA256:")) {
            return fp.to_owned();
        }
        assert!(Instant::now() < deadline, "ssh-keyscan: {said}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn ssh_host_key_is_kept_and_its_fingerprint_logged() {
    let mut server = Server::start();
    let fp = scanned_host_key(&server);
    let logged = |log: &str| {
        log.lines()
            .filter(|l| l.contains("ssh host key SHA256:"))
            .collect::<Vec<_>>()
            .len()
    };
    let log = server.log();
    assert!(
        log.contains(&format!("ssh host key {fp}")),
        "no {fp}:\n{log}"
    );
    assert_eq!(logged(&log), 1, "{log}");

    // After a restart the key is the same, and it is logged again.
    server.kill_and_restart();
    assert_eq!(scanned_host_key(&server), fp);
    let log = server.log();
    assert_eq!(
        log.matches(&format!("ssh host key {fp}")).count(),
        2,
        "{log}"
    );
    assert_eq!(logged(&log), 2, "{log}");
}

#[test]
fn ssh_client_environment_never_reaches_git() {
    let (server, key) = server_with_app();
    // Each of these would show on stderr if git or the loader saw it: ld.so complains about the
    // missing library, GIT_TRACE prints `trace:` lines, GIT_DIR points git elsewhere.
    let ssh_command = format!(
        "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o SetEnv='LD_PRELOAD=/nonexistent/evil.so GIT_TRACE=1 GIT_DIR=/etc' -o SendEnv=LD_LIBRARY_PATH",
        key.display()
    );
    let clone = server.dir.path().join("clone");
    let out = run(Command::new("git")
        .env("GIT_SSH_COMMAND", ssh_command)
        .env("LD_LIBRARY_PATH", "/nonexistent")
        .arg("clone")
        .arg(format!("ssh://git@127.0.0.1:{}/webapp.git", server.ssh))
        .arg(&clone));
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("empty repository"), "{said}");
    for leak in ["ld.so", "evil.so", "trace:", "/etc"] {
        assert!(
            !said.contains(leak),
            "{leak} reached the server's git: {said}"
        );
    }
    assert!(clone.join(".git").is_dir());
}

#[test]
fn ssh_push_is_logged_with_the_key_it_came_from() {
    let (server, key) = server_with_app();
    let out = run(Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub")));
    let fp = text(&out).split_whitespace().nth(1).unwrap().to_owned();
    assert!(fp.starts_with("SHA256:"), "{}", text(&out));
    // receive-pack advertises the refs and ends when the client sends nothing.
    let out = ssh(&server, &key, &[], Some("git-receive-pack 'webapp.git'"));
    assert!(text(&out).contains("report-status"), "{}", text(&out));
    let logs = server.cli_ok(&["logs", "-a", "webapp"]);
    assert!(
        logs.contains(&format!("receive: git push by admin with key {fp}")),
        "{logs}"
    );
    // A clone is not a push, and is not logged as one.
    let out = ssh(&server, &key, &[], Some("git-upload-pack 'webapp.git'"));
    assert!(text(&out).contains("capabilities"), "{}", text(&out));
    let logs = server.cli_ok(&["logs", "-a", "webapp"]);
    assert_eq!(logs.matches("receive: git push by").count(), 1, "{logs}");
}

#[test]
fn ssh_refuses_forwarding_agents_and_terminals() {
    let (server, key) = server_with_app();
    let api = format!("127.0.0.1:{}", server.api);

    // A direct-tcpip channel (what `-L` and `-W` open) to the API is refused.
    let out = ssh(&server, &key, &["-W", &api], None);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("stdio forwarding failed"),
        "{}",
        text(&out)
    );
    assert!(out.stdout.is_empty(), "{}", text(&out));

    // A remote forwarding is refused; ExitOnForwardFailure makes ssh say so and stop.
    let remote = format!("127.0.0.1:0:{api}");
    let out = ssh(
        &server,
        &key,
        &["-N", "-R", &remote, "-o", "ExitOnForwardFailure=yes"],
        None,
    );
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(124), "ssh -R was not refused");
    assert!(
        text(&out).contains("remote port forwarding failed"),
        "{}",
        text(&out)
    );

    // X11 is refused out loud, and the command then runs as it would without it.
    let mut cmd = ssh_command(&server, &[&key], &["-X"], Some(PROBE));
    let out = run(cmd.env("DISPLAY", ":0"));
    let said = text(&out);
    assert!(said.contains("X11 forwarding request failed"), "{said}");
    assert!(said.contains(GOT_IN), "{said}");

    // A pty is refused; OpenSSH gives up when the user insisted on one with -t.
    let out = ssh(&server, &key, &["-tt"], Some(PROBE));
    let said = text(&out);
    assert!(!out.status.success());
    assert!(said.contains("PTY allocation request failed"), "{said}");
    assert!(!said.contains(GOT_IN), "{said}");

    // With an agent to forward, the session is still only the command; a shell is refused.
    let mut agent = Command::new("ssh-agent");
    agent
        .arg("sh")
        .arg("-c")
        .arg(r#"ssh-add -q "$KEY" && exec "$@""#);
    agent.arg("sh").env("KEY", &key);
    let base = ssh_command(&server, &[&key], &["-A", "-T"], None);
    agent.arg(base.get_program()).args(base.get_args());
    let out = run(agent.stdin(Stdio::null()));
    assert!(!out.status.success());
    assert!(text(&out).contains("runs no shell"), "{}", text(&out));
}

#[test]
fn ssh_limits_connections_per_address() {
    let (server, key) = server_with_app();
    // Ten connections from 127.0.0.1 that never authenticate fill the address's share.
    let mut held = Vec::new();
    for _ in 0..10 {
        let (conn, banner) = raw_connection(&server);
        assert!(banner.starts_with("SSH-2.0-"), "{banner:?}");
        held.push(conn);
    }
    // The eleventh is told why and closed before any SSH is spoken.
    assert_refused_at_once(&server, &key, "too many connections");

    // Another address is not affected.
    let out = ssh(&server, &key, &["-b", "127.0.0.2"], Some(PROBE));
    assert!(text(&out).contains(GOT_IN), "{}", text(&out));

    // Once the connections close, the address may connect again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ssh(&server, &key, &[], Some(PROBE));
        if text(&out).contains(GOT_IN) {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {}", text(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn ssh_limits_failed_logins_per_connection_and_address() {
    let (server, key) = server_with_app();
    let strangers: Vec<PathBuf> = (0..8)
        .map(|i| server.keygen(&format!("stranger-{i}")))
        .collect();
    let strangers: Vec<&Path> = strangers.iter().map(PathBuf::as_path).collect();

    // A connection gets six attempts (OpenSSH's `none` probe is one of them): a good key
    // offered after seven bad ones never gets its turn.
    let mut keys = strangers[..7].to_vec();
    keys.push(&key);
    let out = run(&mut ssh_command(&server, &keys, &[], Some(PROBE)));
    assert!(!out.status.success());
    assert!(!text(&out).contains(GOT_IN), "{}", text(&out));
    let out = ssh(&server, &key, &[], Some(PROBE));
    assert!(text(&out).contains(GOT_IN), "{}", text(&out));

    // That connection failed five times; three more with five bad keys each make twenty
    // failures within a minute, and the address is refused, even with a good key.
    for _ in 0..3 {
        let out = run(&mut ssh_command(&server, &strangers[..5], &[], Some(PROBE)));
        assert!(text(&out).contains("Permission denied"), "{}", text(&out));
    }
    assert_refused_at_once(&server, &key, "too many failed logins");
    assert!(
        server
            .log()
            .contains("refusing new connections from this address"),
        "{}",
        server.log()
    );

    // The ban is on that address only.
    let out = ssh(&server, &key, &["-b", "127.0.0.2"], Some(PROBE));
    assert!(text(&out).contains(GOT_IN), "{}", text(&out));
}

#[test]
fn ssh_closes_connections_that_do_not_authenticate_in_time() {
    let (server, key) = server_with_app();
    let started = Instant::now();
    // One connection says nothing at all; one stops after its version, in the key exchange.
    let (mut silent, _) = raw_connection(&server);
    let (mut stalled, _) = raw_connection(&server);
    stalled.write_all(b"SSH-2.0-stalled_1.0\r\n").unwrap();
    // An authenticated connection with no command is not cut at the grace period.
    let mut idle = ssh_command(&server, &[&key], &["-N"], None)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let by = started + Duration::from_secs(45);
    let silent_closed = closed_by(&mut silent, by).expect("a silent connection was left open");
    let stalled_closed = closed_by(&mut stalled, by).expect("a stalled connection was left open");
    for closed in [silent_closed, stalled_closed] {
        let after = closed.duration_since(started);
        assert!(
            after >= Duration::from_secs(25),
            "closed after only {after:?}"
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let still_running = idle.try_wait().unwrap().is_none();
    let _ = idle.kill();
    let _ = idle.wait();
    assert!(still_running, "an authenticated connection was closed");
}

/// A `/proc/<pid>/status` field of the server (`VmHWM`, `VmRSS`), in KiB.
fn status_kib(server: &Server, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// How much incompressible data [`ssh_large_push_streams_through_the_server`] pushes.
const LARGE_PUSH_MIB: u64 = 200;

#[test]
fn ssh_large_push_streams_through_the_server() {
    let (server, key) = server_with_app();
    server.push_stacks();
    // A Procfile app (a trivial build) beside LARGE_PUSH_MIB of random data. Stored without
    // compression: git would spend longer deflating it than the push takes.
    let repo = git_repo(
        server.dir.path(),
        "large",
        &repo_root().join("tests/fixtures/procfile-app"),
    );
    std::fs::create_dir(repo.join("data")).unwrap();
    let mut random = std::fs::File::open("/dev/urandom").unwrap();
    for i in 0..4 {
        let mut file = std::fs::File::create(repo.join(format!("data/{i}.bin"))).unwrap();
        let copied =
            std::io::copy(&mut (&mut random).take(LARGE_PUSH_MIB << 18), &mut file).unwrap();
        assert_eq!(copied, LARGE_PUSH_MIB << 18);
    }
    for args in [
        &["add", "-A"][..],
        &[
            "-c",
            "user.email=e@x",
            "-c",
            "user.name=e",
            "commit",
            "-qm",
            "data",
        ],
    ] {
        let out = run(Command::new("git")
            .current_dir(&repo)
            .args(["-c", "core.compression=0"])
            .args(args));
        assert!(out.status.success(), "{}", text(&out));
    }
    let before = status_kib(&server, "VmHWM");
    let push = server.git_push(&repo, &key, "webapp");
    assert!(push.status.success(), "{}\n{}", text(&push), server.log());
    // The source went from the hook to disk to the build container, and the app layer from
    // disk to the registry and on to Docker, in bounded buffers: the server's peak memory grew
    // by far less than the push. (Holding the source in memory grew it by twice the push.)
    let grown_mib = status_kib(&server, "VmHWM").saturating_sub(before) / 1024;
    assert!(
        grown_mib < LARGE_PUSH_MIB / 2,
        "the server's peak memory grew by {grown_mib} MiB for a {LARGE_PUSH_MIB} MiB push"
    );
}
