//! Shared fixtures for Slipway's end-to-end tests: a `slipway server` on free ports with its own
//! data directory, the `slipway` client against it, SSH keys, git repositories and HTTP through
//! the router — all driven through the real binaries, as a user would.
//!
//! Every server gets its own instance id; on drop, the fixture stops the server and removes the
//! containers labelled with that id, and no others.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    // `cargo test` sets CARGO_MANIFEST_DIR when it runs a test; prefer that to the compile-time
    // value, which names whichever checkout first built this (shared) artifact.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    dir.parent().unwrap().to_owned()
}

/// The `slipway` binary: `SLIPWAY_BIN`, else beside the test binary's `deps/` directory.
pub fn slipway_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SLIPWAY_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("slipway");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p slipway-cli` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1, never the same one twice in this process (tests run in
/// parallel threads, and a port just released is the next one the kernel hands out).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Runs a command, returning its output; panics only if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Output as text, stdout then stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running `slipway server`.
pub struct Server {
    /// Scratch directory holding the data dir, keys and repositories.
    pub dir: tempfile::TempDir,
    /// API port.
    pub api: u16,
    /// SSH port.
    pub ssh: u16,
    /// Registry port.
    pub registry: u16,
    /// Router port.
    pub http: u16,
    /// Router HTTPS port.
    pub https: u16,
    /// The admin token.
    pub token: String,
    /// The PostgreSQL database this server runs on, when the suite runs on PostgreSQL.
    database: Option<Postgres>,
    /// Extra environment for `slipway server` (settings a test needs), kept across restarts.
    env: Vec<(String, String)>,
    /// Whether the router's socket is passed in by `tests/support/hold_socket.py`, which then
    /// is `child` and restarts the server on a line on its stdin.
    passed_socket: bool,
    child: Option<Child>,
}

/// A database of its own on the PostgreSQL server that `SLIPWAY_TEST_POSTGRES` names
/// (`postgres://user:pass@host:port`, as `scripts/postgres.sh` prints), dropped afterwards.
struct Postgres {
    base: String,
    name: String,
}

impl Postgres {
    /// A fresh database when `SLIPWAY_TEST_DATABASE=postgres`; `None` runs on SQLite.
    fn for_this_run() -> Option<Postgres> {
        match std::env::var("SLIPWAY_TEST_DATABASE").as_deref() {
            Ok("postgres") => {}
            Ok("sqlite") | Err(_) => return None,
            Ok(other) => panic!("SLIPWAY_TEST_DATABASE={other}: use sqlite or postgres"),
        }
        let base = std::env::var("SLIPWAY_TEST_POSTGRES").expect(
            "SLIPWAY_TEST_DATABASE=postgres needs SLIPWAY_TEST_POSTGRES (scripts/postgres.sh)",
        );
        let name = format!("slipway_e2e_{}_{}", std::process::id(), free_port());
        let db = Postgres { base, name };
        db.psql(&format!("CREATE DATABASE {}", db.name));
        Some(db)
    }

    fn url(&self) -> String {
        format!("{}/{}", self.base, self.name)
    }

    fn psql(&self, sql: &str) {
        let out = self.try_psql(sql);
        assert!(out.status.success(), "psql {sql}: {}", text(&out));
    }

    fn try_psql(&self, sql: &str) -> Output {
        run(Command::new("psql")
            .arg(format!("{}/postgres", self.base))
            .args(["-qAtc", sql]))
    }
}

impl Drop for Postgres {
    /// Drops the database, retrying a moment if PostgreSQL refuses (a worker it cannot end
    /// yet). A database left behind is only clutter: `scripts/postgres.sh` drops leftovers, so
    /// this warns rather than failing a test whose checks all passed.
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let mut out = self.try_psql(&sql);
        for _ in 0..10 {
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
            out = self.try_psql(&sql);
        }
        if !out.status.success() {
            eprintln!("warning: psql {sql}: {}", text(&out));
        }
    }
}

impl Server {
    /// Starts a server on free ports and waits until its API answers.
    pub fn start() -> Server {
        Server::start_with_env(&[])
    }

    /// Like [`Server::start`], with extra environment variables for `slipway server`.
    pub fn start_with_env(env: &[(&str, &str)]) -> Server {
        Server::start_inner(env, false)
    }

    /// Like [`Server::start`], with the router's socket bound once by a stand-in for systemd's
    /// socket activation and passed in; [`Server::graceful_restart`] restarts the server on it.
    pub fn start_with_passed_socket() -> Server {
        Server::start_inner(&[], true)
    }

    fn start_inner(env: &[(&str, &str)], passed_socket: bool) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("slipway-e2e-")
            .tempdir()
            .unwrap();
        let mut server = Server {
            dir,
            api: free_port(),
            ssh: free_port(),
            registry: free_port(),
            http: free_port(),
            https: free_port(),
            token: String::new(),
            database: Postgres::for_this_run(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            passed_socket,
            child: None,
        };
        // A free port can be taken by someone else before the server binds it (an outgoing
        // connection's port, say): then start again on other ports.
        for attempt in 1.. {
            match server.try_spawn() {
                Ok(()) => break,
                Err(log) if attempt < 5 && log.contains("Address already in use") => {
                    (server.api, server.ssh) = (free_port(), free_port());
                    (server.registry, server.http) = (free_port(), free_port());
                    server.https = free_port();
                }
                Err(log) => panic!("{log}"),
            }
        }
        server
    }

    /// Starts `slipway server` on this fixture's ports and data directory, and waits until its
    /// API answers.
    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("{log}");
        }
    }

    /// [`Server::spawn`], returning why the server did not start.
    fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let mut cmd = if self.passed_socket {
            let mut holder = Command::new("python3");
            holder
                .arg(repo_root().join("tests/support/hold_socket.py"))
                .arg(format!("127.0.0.1:{}", self.http))
                .arg("--")
                .arg(slipway_bin())
                .stdin(Stdio::piped());
            holder
        } else {
            Command::new(slipway_bin())
        };
        cmd.arg("server").arg("--data").arg(self.data());
        if let Some(db) = &self.database {
            cmd.arg("--database-url").arg(db.url());
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .env("SLIPWAY_API_ADDR", format!("127.0.0.1:{}", self.api))
            .env("SLIPWAY_SSH_ADDR", format!("127.0.0.1:{}", self.ssh))
            .env(
                "SLIPWAY_REGISTRY_ADDR",
                format!("127.0.0.1:{}", self.registry),
            )
            .env("SLIPWAY_HTTP_ADDR", format!("127.0.0.1:{}", self.http))
            .env("SLIPWAY_HTTPS_ADDR", format!("127.0.0.1:{}", self.https))
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting slipway server");
        self.child = Some(child);
        let token_path = self.data().join("admin-token");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(t) = std::fs::read_to_string(&token_path)
                && !t.trim().is_empty()
                && std::net::TcpStream::connect(("127.0.0.1", self.api)).is_ok()
            {
                self.token = t.trim().to_owned();
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "slipway server exited with {status}:\n{}",
                    self.log()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("server did not start:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server process's id, to read its `/proc` entries.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// Kills the server with SIGKILL, as a crash or power loss would, and starts it again on the
    /// same data directory and ports.
    pub fn kill_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }

    /// Restarts a server started with [`Server::start_with_passed_socket`] the way
    /// `systemctl restart` does: SIGTERM, wait, start again on the same socket. Returns once the
    /// new server's router has started.
    pub fn graceful_restart(&mut self) {
        assert!(
            self.passed_socket,
            "only a server with a passed socket restarts gracefully"
        );
        let started = |log: &str| log.matches(" is running").count();
        let before = started(&self.log());
        let child = self.child.as_mut().expect("the server is running");
        let stdin = child.stdin.as_mut().expect("the socket holder's stdin");
        std::io::Write::write_all(stdin, b"restart\n").unwrap();
        std::io::Write::flush(stdin).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while started(&self.log()) <= before {
            assert!(
                Instant::now() < deadline,
                "the server did not start again:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// This server's instance id.
    pub fn instance_id(&self) -> String {
        std::fs::read_to_string(self.data().join("instance-id"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A `slipway` client command against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(Command::new(slipway_bin())
            .args(args)
            .env("SLIPWAY_URL", format!("http://127.0.0.1:{}", self.api))
            .env("SLIPWAY_TOKEN", &self.token)
            .current_dir(self.dir.path()))
    }

    /// A `slipway` client command with exactly the environment given (no token unless passed).
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(slipway_bin());
        cmd.args(args)
            .env_remove("SLIPWAY_TOKEN")
            .env("SLIPWAY_URL", format!("http://127.0.0.1:{}", self.api))
            .current_dir(self.dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    }

    /// Like [`cli`](Server::cli), but asserts success and returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "slipway {args:?} failed:\n{}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Adds user `name` with `users:add` and returns their API token, which it prints once.
    pub fn add_user(&self, name: &str) -> String {
        let added = self.cli_ok(&["users:add", name]);
        added
            .lines()
            .find_map(|l| l.strip_prefix("their API token (shown once): "))
            .unwrap_or_else(|| panic!("users:add printed no token:\n{added}"))
            .to_owned()
    }

    /// Pushes the default stack images into this server's registry.
    pub fn push_stacks(&self) {
        let out = run(Command::new("bash")
            .arg(repo_root().join("stacks/push.sh"))
            .arg(format!("127.0.0.1:{}", self.registry))
            .arg(format!("admin:{}", self.token)));
        assert!(
            out.status.success(),
            "stacks/push.sh failed:\n{}",
            text(&out)
        );
    }

    /// A new ed25519 key pair under the scratch dir; returns the private key's path.
    pub fn keygen(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let out = run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path));
        assert!(out.status.success(), "ssh-keygen: {}", text(&out));
        path
    }

    /// `git push` of `repo`'s main to `app` with the OpenSSH client and `key`.
    pub fn git_push(&self, repo: &Path, key: &Path, app: &str) -> Output {
        let ssh = format!(
            "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            key.display()
        );
        run(Command::new("git")
            .current_dir(repo)
            .env("GIT_SSH_COMMAND", ssh)
            .args([
                "push",
                &format!("ssh://git@127.0.0.1:{}/{app}.git", self.ssh),
                "main",
            ]))
    }

    /// Everything before a first push of fixture `fixture` as app `app`: the stacks pushed, an
    /// SSH key of the app's name added, the app created, and a git repository of the fixture.
    /// Returns (repository, private key).
    pub fn fixture_app(&self, app: &str, fixture: &str) -> (PathBuf, PathBuf) {
        self.push_stacks();
        let key = self.keygen(&format!("{app}-key"));
        self.cli_ok(&["keys:add", key.with_extension("pub").to_str().unwrap()]);
        self.cli_ok(&["apps:create", app]);
        let repo = git_repo(
            self.dir.path(),
            app,
            &repo_root().join("tests/fixtures").join(fixture),
        );
        (repo, key)
    }

    /// The usual start of a test: pushes the stacks, adds a key named after `app`, creates `app`
    /// and pushes `tests/fixtures/<fixture>` to it, then waits until v1 serves. Returns the
    /// app's repository and the key's private half.
    pub fn deploy_fixture(&self, app: &str, fixture: &str) -> (PathBuf, PathBuf) {
        let (repo, key) = self.fixture_app(app, fixture);
        let push = self.git_push(&repo, &key, app);
        assert!(push.status.success(), "{}\n{}", text(&push), self.log());
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.http_get(app).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "{app} never served\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        (repo, key)
    }

    /// GET `/` on the router with `Host: <app>.slipway.localhost`; returns (status, body).
    pub fn http_get(&self, app: &str) -> (u16, String) {
        self.http_get_host(&format!("{app}.slipway.localhost"))
    }

    /// GET `/` on the router with the given `Host`; returns (status, body).
    pub fn http_get_host(&self, host: &str) -> (u16, String) {
        self.curl(host, "/", &[])
    }

    /// curl to `path` on the router with `Host: host` and extra curl arguments (a method, a
    /// body, headers); returns (status, body), status 0 when no answer came within 10 s.
    pub fn curl(&self, host: &str, path: &str, args: &[&str]) -> (u16, String) {
        let out = run(Command::new("curl")
            .args(["-s", "-m", "10", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Host: {host}"))
            .args(args)
            .arg(format!("http://127.0.0.1:{}{path}", self.http)));
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = body.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Polls the router until the app's body contains `needle`, or panics after `timeout`.
    pub fn wait_for_body(&self, app: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (code, body) = self.http_get(app);
            if code == 200 && body.contains(needle) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{app} never answered with {needle:?}; last: {code} {body:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the server with SIGINT (Ctrl-C) and returns whether it exited cleanly in time.
    pub fn interrupt(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = run(Command::new("kill").args(["-INT", &child.id().to_string()]));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Remove this server's containers, and only this server's.
        let id = std::fs::read_to_string(self.data().join("instance-id")).unwrap_or_default();
        let id = id.trim();
        if !id.is_empty() {
            let out = run(Command::new("docker").args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=slipway.instance={id}"),
            ]));
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// A git repository with `files` committed on main, under `dir/name`.
pub fn git_repo(dir: &Path, name: &str, from: &Path) -> PathBuf {
    let repo = dir.join(name);
    copy_dir(from, &repo);
    git(&repo, &["init", "-q", "-b", "main"]);
    commit_all(&repo, "initial");
    repo
}

/// Gives the app in `repo` a buildpack of its own, `buildpacks/<name>`, written to the CNB spec:
/// it always detects and runs `build` (a shell script) as `bin/build`; `project.toml` makes the
/// group that buildpack, then the shipped buildpacks named in `then` (ids), in order.
pub fn add_app_buildpack(repo: &Path, name: &str, build: &str, then: &[&str]) {
    let bp = repo.join("buildpacks").join(name);
    std::fs::create_dir_all(bp.join("bin")).unwrap();
    std::fs::write(
        bp.join("buildpack.toml"),
        format!("api = \"0.10\"\n\n[buildpack]\nid = \"test/{name}\"\nversion = \"1.0.0\"\n"),
    )
    .unwrap();
    std::fs::write(bp.join("bin/detect"), "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::write(bp.join("bin/build"), build).unwrap();
    for script in ["detect", "build"] {
        let path = bp.join("bin").join(script);
        let mut mode = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut mode, 0o755);
        std::fs::set_permissions(&path, mode).unwrap();
    }
    let mut project = format!("[[io.buildpacks.group]]\nuri = \"buildpacks/{name}\"\n");
    for id in then {
        project.push_str(&format!("\n[[io.buildpacks.group]]\nid = \"{id}\"\n"));
    }
    std::fs::write(repo.join("project.toml"), project).unwrap();
}

/// Commits every change in `repo`.
pub fn commit_all(repo: &Path, message: &str) {
    git(repo, &["add", "-A"]);
    git(
        repo,
        &[
            "-c",
            "user.email=e2e@slipway.test",
            "-c",
            "user.name=e2e",
            "commit",
            "-q",
            "-m",
            message,
        ],
    );
}

fn git(repo: &Path, args: &[&str]) {
    let out = run(Command::new("git").current_dir(repo).args(args));
    assert!(out.status.success(), "git {args:?}: {}", text(&out));
}

/// Copies the directory `from` into `to` (created if missing), recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Asserts that the push output has every one of `lines` as a `remote:` line's start.
pub fn assert_remote_lines(out: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            out.lines()
                .any(|l| l.trim_start_matches("remote: ").starts_with(line)),
            "push output lacks {line:?}:\n{out}"
        );
    }
}

/// Replaces the first `from` in the file at `path` with `to`; panics if `from` is not there.
pub fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} lacks {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}
