//! The SSH git server (russh). Public-key authentication only: the user is the owner of the
//! key whose possession the client proved (`auth_publickey`), never a key merely offered. The
//! only commands are `git-receive-pack '<app>.git'` and `git-upload-pack '<app>.git'`; shells,
//! ptys, subsystems and forwarding are refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};
use russh::server::{Auth, ChannelOpenHandle, Handle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use slipway_core::ports::AppAccess;
use slipway_core::{AppName, UserName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{BuilderError, Shared, hook, pipeline};

/// A git service the client may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitService {
    /// `git push`.
    ReceivePack,
    /// `git clone` and `git fetch`.
    UploadPack,
}

impl GitService {
    fn program(self) -> &'static str {
        match self {
            GitService::ReceivePack => "receive-pack",
            GitService::UploadPack => "upload-pack",
        }
    }
}

/// Why an exec command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not a git command Slipway runs.
    #[error("only git push and git clone are supported here; this server runs no other commands")]
    NotGit,
    /// A git command whose argument is not exactly one quoted `'<app>.git'`.
    #[error("expected one repository argument such as 'myapp.git'")]
    BadArgument,
    /// The repository name is not a valid app name.
    #[error("{0}")]
    BadName(#[from] slipway_core::NameError),
}

/// Parses the exec command git sends: `git-receive-pack '/myapp.git'` (the leading `/` comes
/// with `ssh://` URLs and is optional; so is `.git`).
pub fn parse_command(command: &str) -> Result<(GitService, AppName), CommandError> {
    let (verb, arg) = command.split_once(' ').ok_or(CommandError::NotGit)?;
    let service = match verb {
        "git-receive-pack" => GitService::ReceivePack,
        "git-upload-pack" => GitService::UploadPack,
        _ => return Err(CommandError::NotGit),
    };
    let inner = arg
        .strip_prefix('\'')
        .and_then(|a| a.strip_suffix('\''))
        .ok_or(CommandError::BadArgument)?;
    let inner = inner.strip_prefix('/').unwrap_or(inner);
    let name = inner.strip_suffix(".git").unwrap_or(inner);
    Ok((service, name.parse()?))
}

/// Loads the host key from `DATA/ssh_host_ed25519_key`, creating it on first start.
fn host_key(data_dir: &Path) -> Result<PrivateKey, BuilderError> {
    let path = data_dir.join("ssh_host_ed25519_key");
    if path.exists() {
        return PrivateKey::read_openssh_file(&path)
            .map_err(|e| BuilderError::HostKey(format!("reading {}: {e}", path.display())));
    }
    let seed: [u8; 32] = rand::random();
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.write_openssh_file(&path, LineEnding::LF)
        .map_err(|e| BuilderError::HostKey(format!("writing {}: {e}", path.display())))?;
    info!(
        "ssh: created host key {} ({})",
        path.display(),
        key.public_key().fingerprint(HashAlg::Sha256)
    );
    Ok(key)
}

/// Binds the SSH address and serves in the background; returns the bound address.
pub(crate) async fn serve(shared: Arc<Shared>) -> Result<SocketAddr, BuilderError> {
    let key = host_key(&shared.config.data_dir)?;
    let config = Arc::new(russh::server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        keys: vec![key],
        // OpenSSH first asks with method "none" to learn the methods: answer at once, so a push
        // does not pay the rejection delay, but keep a constant delay for real rejections.
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 6,
        inactivity_timeout: Some(Duration::from_secs(30 * 60)),
        nodelay: true,
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind(shared.config.ssh_addr)
        .await
        .map_err(|e| BuilderError::Io(format!("binding SSH on {}: {e}", shared.config.ssh_addr)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BuilderError::Io(e.to_string()))?;
    let mut server = Server { shared };
    tokio::spawn(async move {
        use russh::server::Server as _;
        if let Err(e) = server.run_on_socket(config, &listener).await {
            warn!("ssh: server stopped: {e}");
        }
    });
    Ok(addr)
}

struct Server {
    shared: Arc<Shared>,
}

impl russh::server::Server for Server {
    type Handler = Connection;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Connection {
        Connection {
            shared: self.shared.clone(),
            peer,
            user: None,
            deploy_key_app: None,
            stdin: HashMap::new(),
            git_protocol: HashMap::new(),
        }
    }
}

/// One SSH connection.
struct Connection {
    shared: Arc<Shared>,
    peer: Option<SocketAddr>,
    user: Option<UserName>,
    /// When the client authenticated with a deploy key: the one app it may touch.
    deploy_key_app: Option<AppName>,
    /// Where the client's data for each running command goes.
    stdin: HashMap<ChannelId, mpsc::Sender<Bytes>>,
    /// `GIT_PROTOCOL`, the one environment variable passed on to git.
    git_protocol: HashMap<ChannelId, String>,
}

/// Errors inside the SSH connection handler.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
}

impl russh::server::Handler for Connection {
    type Error = ConnError;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, ConnError> {
        let fp = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        let Ok(fp) = fp.parse() else {
            return Ok(Auth::reject());
        };
        match self.shared.identity.key_owner(&fp).await {
            Ok(Some(owner)) => {
                debug!(peer = ?self.peer, user = %owner.user, "ssh: authenticated with {fp}");
                self.user = Some(owner.user);
                self.deploy_key_app = owner.app;
                Ok(Auth::Accept)
            }
            Ok(None) => {
                info!(peer = ?self.peer, "ssh: unknown key {fp}");
                Ok(Auth::reject())
            }
            Err(e) => {
                warn!("ssh: looking up {fp}: {e}");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), ConnError> {
        // The channel object is dropped: its messages reach this handler's callbacks instead,
        // and russh ignores a dropped receiver rather than stalling on it.
        reply.accept().await;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), ConnError> {
        if name == "GIT_PROTOCOL" && value.len() < 64 && value.bytes().all(|b| b.is_ascii_graphic())
        {
            self.git_protocol.insert(channel, value.to_owned());
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), ConnError> {
        refuse(
            channel,
            session,
            "this server runs no shell; push with `git push`",
        )
        .await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), ConnError> {
        refuse(channel, session, "no subsystems are available here").await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), ConnError> {
        let Some(user) = self.user.clone() else {
            return refuse(channel, session, "not authenticated").await;
        };
        let command = String::from_utf8_lossy(data);
        let (service, app) = match parse_command(&command) {
            Ok(parsed) => parsed,
            Err(e) => return refuse(channel, session, &e.to_string()).await,
        };
        if let Some(only) = &self.deploy_key_app
            && *only != app
        {
            let msg = format!("this deploy key can only push app {only}");
            return refuse(channel, session, &msg).await;
        }
        match self.shared.identity.app_access(&user, &app).await {
            Ok(AppAccess::Allowed) => {}
            Ok(AppAccess::NoSuchApp) => {
                let msg =
                    format!("app {app} does not exist; create it with `slipway apps:create {app}`");
                return refuse(channel, session, &msg).await;
            }
            Ok(AppAccess::Forbidden) => {
                return refuse(
                    channel,
                    session,
                    &format!("you have no access to app {app}"),
                )
                .await;
            }
            Err(e) => {
                warn!("ssh: access check for {app}: {e}");
                return refuse(channel, session, "internal error; try again").await;
            }
        }
        session.channel_success(channel)?;
        let (tx, rx) = mpsc::channel(16);
        self.stdin.insert(channel, tx);
        let protocol = self.git_protocol.remove(&channel);
        let shared = self.shared.clone();
        let handle = session.handle();
        info!(peer = ?self.peer, %user, %app, "receive: git {}", service.program());
        tokio::spawn(async move {
            let code = match run_git(
                &shared, service, &app, &user, protocol, rx, &handle, channel,
            )
            .await
            {
                Ok(code) => code,
                Err(e) => {
                    warn!(%app, "receive: {e}");
                    let _ = handle
                        .extended_data(channel, 1, Bytes::from(format!("error: {e}\n")))
                        .await;
                    1
                }
            };
            finish(&handle, channel, code).await;
        });
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), ConnError> {
        if let Some(tx) = self.stdin.get(&channel) {
            // Waiting here pushes back on the client through the SSH window.
            if tx.send(Bytes::copy_from_slice(data)).await.is_err() {
                self.stdin.remove(&channel);
            }
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), ConnError> {
        self.stdin.remove(&channel);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), ConnError> {
        self.stdin.remove(&channel);
        self.git_protocol.remove(&channel);
        Ok(())
    }
}

async fn refuse(channel: ChannelId, session: &mut Session, msg: &str) -> Result<(), ConnError> {
    // Report the reason on stderr and exit 1, so git prints it as `fatal: ...`-adjacent text.
    session.channel_success(channel)?;
    let handle = session.handle();
    let msg = format!("slipway: {msg}\n");
    tokio::spawn(async move {
        let _ = handle.extended_data(channel, 1, Bytes::from(msg)).await;
        finish(&handle, channel, 1).await;
    });
    Ok(())
}

async fn finish(handle: &Handle, channel: ChannelId, code: u32) {
    let _ = handle.exit_status_request(channel, code).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

async fn ensure_repo(path: &Path) -> std::io::Result<()> {
    if path.join("HEAD").exists() {
        return Ok(());
    }
    let status = tokio::process::Command::new("git")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["init", "--quiet", "--bare", "--initial-branch=main"])
        .arg(path)
        .status()
        .await?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("git init failed"))
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_git(
    shared: &Arc<Shared>,
    service: GitService,
    app: &AppName,
    user: &UserName,
    protocol: Option<String>,
    mut stdin_rx: mpsc::Receiver<Bytes>,
    handle: &Handle,
    channel: ChannelId,
) -> Result<u32, String> {
    let repo = shared.repo_path(app);
    ensure_repo(&repo)
        .await
        .map_err(|e| format!("creating the repository: {e}"))?;
    let mut cmd = tokio::process::Command::new("git");
    // The client's environment never reaches git, except GIT_PROTOCOL.
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &shared.config.data_dir);
    if let Some(p) = protocol {
        cmd.env("GIT_PROTOCOL", p);
    }
    let hooks = shared.config.data_dir.join("hooks");
    let mut listener = None;
    let socket_path = shared
        .config
        .data_dir
        .join("run")
        .join(format!("push-{:016x}.sock", rand::random::<u64>()));
    if service == GitService::ReceivePack {
        listener = Some(hook::listen(&socket_path).map_err(|e| format!("hook socket: {e}"))?);
        cmd.env(hook::SOCKET_ENV, &socket_path);
        cmd.arg("-c")
            .arg(format!("core.hooksPath={}", hooks.display()));
    }
    cmd.arg(service.program())
        .arg(&repo)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("starting git: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("git has no stdin")?;
    let mut stdout = child.stdout.take().ok_or("git has no stdout")?;
    let mut stderr = child.stderr.take().ok_or("git has no stderr")?;

    let feed = async move {
        while let Some(chunk) = stdin_rx.recv().await {
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // Dropping stdin closes git's input once the client is done.
    };
    let out = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if handle
                        .data(channel, Bytes::copy_from_slice(&buf[..n]))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let err = async {
        let mut buf = vec![0u8; 8 * 1024];
        loop {
            match stderr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = handle
                        .extended_data(channel, 1, Bytes::copy_from_slice(&buf[..n]))
                        .await;
                }
            }
        }
    };
    let build = async {
        if let Some(listener) = &listener {
            // The hook connects only when refs change; receive-pack may end without it.
            match hook::accept(listener, &shared.scratch).await {
                Ok(push) => pipeline::run(shared.clone(), app.clone(), user.clone(), push).await,
                Err(e) => warn!(%app, "receive: hook connection: {e}"),
            }
        }
    };
    let feed = tokio::spawn(feed);
    let status = {
        let wait = async {
            tokio::join!(out, err);
            child.wait().await
        };
        tokio::pin!(wait);
        tokio::select! {
            status = &mut wait => status,
            _ = build => (&mut wait).await,
        }
    };
    feed.abort();
    let _ = std::fs::remove_file(&socket_path);
    let status = status.map_err(|e| format!("git: {e}"))?;
    Ok(status.code().unwrap_or(1) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<(GitService, &str), ()>) {
        let got = parse_command(input)
            .map(|(s, a)| (s, a.to_string()))
            .map_err(|_| ());
        assert_eq!(got, expected.map(|(s, a)| (s, a.to_owned())), "{input:?}");
    }

    #[test]
    fn commands() {
        check(
            "git-receive-pack 'web.git'",
            Ok((GitService::ReceivePack, "web")),
        );
        check(
            "git-receive-pack '/web.git'",
            Ok((GitService::ReceivePack, "web")),
        );
        check("git-upload-pack 'web'", Ok((GitService::UploadPack, "web")));
        for bad in [
            "git-receive-pack web.git",
            "git-receive-pack 'web.git'; touch /tmp/x",
            "git-receive-pack '../web.git'",
            "git-receive-pack '//etc/web.git'",
            "git-receive-pack 'a/b.git'",
            "git-receive-pack '/tmp/x'",
            "git-upload-archive 'web.git'",
            "sh -c 'id'",
            "git-receive-pack",
            "git-receive-pack 'web.git' 'x'",
        ] {
            check(bad, Err(()));
        }
    }
}
