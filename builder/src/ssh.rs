//! The SSH git server (russh). Public-key authentication only: the user is the owner of the
//! key whose possession the client proved (`auth_publickey`), never a key merely offered. The
//! only commands are `git-receive-pack '<app>.git'` and `git-upload-pack '<app>.git'`; shells,
//! ptys, X11, agent and port forwarding, and subsystems are refused.
//!
//! The server faces the internet, so every client address is bounded ([`SshLimits`]): a few
//! authentication attempts per connection, a few connections at once, a login grace period, an
//! idle timeout, and a ban for an address that keeps failing to authenticate. The accept loop
//! is ours (not `run_on_socket`) so that a refused connection costs no handshake.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};
use russh::server::{Auth, ChannelOpenHandle, Handle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect, MethodKind, MethodSet, Pty};
use slipway_core::ports::AppAccess;
use slipway_core::{AppName, Fingerprint, UserName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{BuilderError, Shared, hook, pipeline};

/// Limits that keep one client address from wearing the SSH server down. Loopback is not
/// exempt. The defaults suit a team pushing from behind one NAT address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshLimits {
    /// Rejected authentication requests one connection may make before it is cut off, counting
    /// OpenSSH's initial `none` probe as OpenSSH's own `MaxAuthTries` does. Default 6.
    pub max_auth_attempts: usize,
    /// Connections one address (an IPv6 /64) may hold open at once; more are closed as soon as
    /// they are accepted. Default 10.
    pub max_connections_per_address: usize,
    /// Failed authentications from one address within [`failure_window`](Self::failure_window)
    /// that get it banned. Default 20.
    pub max_failures_per_address: usize,
    /// The window over which failures are counted. Default 60 s.
    pub failure_window: Duration,
    /// How long a banned address's new connections are refused. Default 60 s.
    pub ban: Duration,
    /// A connection that has not authenticated this long after it was accepted is closed.
    /// Default 30 s.
    pub login_grace: Duration,
    /// A connection on which nothing is sent or received for this long is closed. A build
    /// streams its output, which keeps a push alive. Default 10 min.
    pub idle_timeout: Duration,
}

impl Default for SshLimits {
    fn default() -> Self {
        SshLimits {
            max_auth_attempts: 6,
            max_connections_per_address: 10,
            max_failures_per_address: 20,
            failure_window: Duration::from_secs(60),
            ban: Duration::from_secs(60),
            login_grace: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(10 * 60),
        }
    }
}

/// The address limits are kept per: an IPv4 address, or the /64 of an IPv6 one (a single
/// client usually holds a whole /64, so per-address limits there would be no limit at all).
fn client_address(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// Why a new connection was turned away before the SSH handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The address already holds `max_connections_per_address` connections.
    TooManyConnections,
    /// The address failed to authenticate too often lately.
    Banned,
}

impl Refusal {
    fn message(self) -> &'static str {
        match self {
            Refusal::TooManyConnections => {
                "slipway: too many connections from your address; try again when some finish\r\n"
            }
            Refusal::Banned => {
                "slipway: too many failed logins from your address; try again in a minute\r\n"
            }
        }
    }
}

/// What the gate knows about one client address.
#[derive(Debug, Default)]
struct AddressState {
    open: usize,
    failures: VecDeque<Instant>,
    banned_until: Option<Instant>,
}

impl AddressState {
    fn forget_before(&mut self, now: Instant, window: Duration) {
        while self
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            self.failures.pop_front();
        }
        if self.banned_until.is_some_and(|until| now >= until) {
            self.banned_until = None;
        }
    }

    fn is_idle(&self) -> bool {
        self.open == 0 && self.failures.is_empty() && self.banned_until.is_none()
    }
}

/// Per-address admission: connections held and recent failures. Times are passed in, so the
/// rules are tested without a clock.
#[derive(Debug)]
struct Gate {
    limits: SshLimits,
    addresses: Mutex<HashMap<IpAddr, AddressState>>,
}

/// Sweep addresses that hold nothing once the table grows past this many.
const GATE_SWEEP_AT: usize = 1024;

impl Gate {
    fn new(limits: SshLimits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            addresses: Mutex::default(),
        })
    }

    fn addresses(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, AddressState>> {
        self.addresses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection from `ip`, or says why not. The permit frees its slot on drop.
    fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Permit, Refusal> {
        let key = client_address(ip);
        let mut addresses = self.addresses();
        if addresses.len() >= GATE_SWEEP_AT {
            addresses.retain(|_, state| {
                state.forget_before(now, self.limits.failure_window);
                !state.is_idle()
            });
        }
        let state = addresses.entry(key).or_default();
        state.forget_before(now, self.limits.failure_window);
        if state.banned_until.is_some() {
            return Err(Refusal::Banned);
        }
        if state.open >= self.limits.max_connections_per_address {
            return Err(Refusal::TooManyConnections);
        }
        state.open += 1;
        Ok(Permit {
            gate: self.clone(),
            key,
        })
    }

    /// Records a failed authentication from `ip`; true when it gets the address banned.
    fn failed(&self, ip: IpAddr, now: Instant) -> bool {
        let mut addresses = self.addresses();
        let state = addresses.entry(client_address(ip)).or_default();
        state.forget_before(now, self.limits.failure_window);
        state.failures.push_back(now);
        if state.banned_until.is_none()
            && state.failures.len() >= self.limits.max_failures_per_address
        {
            state.banned_until = Some(now + self.limits.ban);
            state.failures.clear();
            return true;
        }
        false
    }
}

/// One admitted connection's slot in the [`Gate`].
#[derive(Debug)]
struct Permit {
    gate: Arc<Gate>,
    key: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut addresses = self.gate.addresses();
        if let Some(state) = addresses.get_mut(&self.key) {
            state.open = state.open.saturating_sub(1);
            if state.is_idle() {
                addresses.remove(&self.key);
            }
        }
    }
}

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

/// Loads the host key from `DATA/ssh_host_ed25519_key`, creating it on first start, and logs
/// its fingerprint on every start so users can check what `ssh` shows them.
fn host_key(data_dir: &Path) -> Result<PrivateKey, BuilderError> {
    let path = data_dir.join("ssh_host_ed25519_key");
    let key = if path.exists() {
        PrivateKey::read_openssh_file(&path)
            .map_err(|e| BuilderError::HostKey(format!("reading {}: {e}", path.display())))?
    } else {
        let seed: [u8; 32] = rand::random();
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        // Written beside and renamed, so a crash never leaves half a key to fail the next start.
        let partial = path.with_extension("partial");
        key.write_openssh_file(&partial, LineEnding::LF)
            .and_then(|()| std::fs::rename(&partial, &path).map_err(Into::into))
            .map_err(|e| BuilderError::HostKey(format!("writing {}: {e}", path.display())))?;
        info!("ssh: created host key {}", path.display());
        key
    };
    info!(
        "ssh host key {}",
        key.public_key().fingerprint(HashAlg::Sha256)
    );
    Ok(key)
}

/// Binds the SSH address and serves in the background; returns the bound address.
pub(crate) async fn serve(shared: Arc<Shared>) -> Result<SocketAddr, BuilderError> {
    let key = host_key(&shared.config.data_dir)?;
    let limits = shared.config.ssh_limits.clone();
    let config = Arc::new(russh::server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        keys: vec![key],
        // OpenSSH first asks with method "none" to learn the methods: answer at once, so a push
        // does not pay the rejection delay, but keep a constant delay for real rejections.
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: limits.max_auth_attempts,
        inactivity_timeout: Some(limits.idle_timeout),
        nodelay: true,
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind(shared.config.ssh_addr)
        .await
        .map_err(|e| BuilderError::Io(format!("binding SSH on {}: {e}", shared.config.ssh_addr)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BuilderError::Io(e.to_string()))?;
    let gate = Gate::new(limits);
    tokio::spawn(accept_loop(listener, config, shared, gate));
    Ok(addr)
}

/// Accepts connections for as long as the process runs. A connection the gate refuses gets one
/// line and is closed before any SSH is spoken; the others run in tasks of their own.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
    gate: Arc<Gate>,
) {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait for connections to finish, do not spin.
                warn!("ssh: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = match gate.admit(peer.ip(), Instant::now()) {
            Ok(permit) => permit,
            Err(refusal) => {
                debug!(%peer, "ssh: refused a connection: {refusal:?}");
                // A fresh socket's send buffer takes one short line without blocking.
                let _ = socket.try_write(refusal.message().as_bytes());
                continue;
            }
        };
        let authenticated = Arc::new(AtomicBool::new(false));
        let connection = Connection {
            shared: shared.clone(),
            gate: gate.clone(),
            peer,
            authenticated: authenticated.clone(),
            user: None,
            key: None,
            deploy_key_app: None,
            stdin: HashMap::new(),
            git_protocol: HashMap::new(),
        };
        let config = config.clone();
        tokio::spawn(async move {
            serve_connection(config, socket, connection, authenticated).await;
            drop(permit);
        });
    }
}

/// Runs one connection; closes it if it has not authenticated within the login grace period.
async fn serve_connection(
    config: Arc<russh::server::Config>,
    socket: tokio::net::TcpStream,
    connection: Connection,
    authenticated: Arc<AtomicBool>,
) {
    let peer = connection.peer;
    let grace = connection.shared.config.ssh_limits.login_grace;
    let deadline = tokio::time::Instant::now() + grace;
    // A second descriptor of the same socket: shutting it down ends the session even while
    // russh waits in a key exchange, where it does not act on `Handle::disconnect`.
    let (socket, killer) = match socket.into_std().and_then(|s| {
        let killer = s.try_clone()?;
        Ok((tokio::net::TcpStream::from_std(s)?, killer))
    }) {
        Ok(pair) => pair,
        Err(e) => {
            warn!(%peer, "ssh: setting up a connection: {e}");
            return;
        }
    };
    let _ = socket.set_nodelay(true);
    let session = tokio::time::timeout_at(
        deadline,
        russh::server::run_stream(config, socket, connection),
    )
    .await;
    let session = match session {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            debug!(%peer, "ssh: connection setup failed: {e}");
            return;
        }
        Err(_) => {
            info!(%peer, "ssh: closed a connection that sent no SSH version within {grace:?}");
            return;
        }
    };
    let handle = session.handle();
    tokio::pin!(session);
    tokio::select! {
        result = &mut session => {
            if let Err(e) = result {
                debug!(%peer, "ssh: connection ended: {e}");
            }
            return;
        }
        () = tokio::time::sleep_until(deadline) => {}
    }
    if !authenticated.load(Ordering::Acquire) {
        info!(%peer, "ssh: closed a connection that did not authenticate within {grace:?}");
        let polite = async {
            let _ = handle
                .disconnect(
                    Disconnect::ByApplication,
                    "authentication timed out".into(),
                    String::new(),
                )
                .await;
            (&mut session).await
        };
        match tokio::time::timeout(Duration::from_secs(1), polite).await {
            Ok(_) => return,
            Err(_) => {
                let _ = killer.shutdown(std::net::Shutdown::Both);
            }
        }
    }
    if let Err(e) = session.await {
        debug!(%peer, "ssh: connection ended: {e}");
    }
}

/// One SSH connection.
struct Connection {
    shared: Arc<Shared>,
    gate: Arc<Gate>,
    peer: SocketAddr,
    /// Set once authentication succeeds; the login grace period ends for this connection.
    authenticated: Arc<AtomicBool>,
    user: Option<UserName>,
    /// The fingerprint of the key the user authenticated with, for the audit trail.
    key: Option<Fingerprint>,
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

impl Connection {
    /// Rejects an authentication attempt and counts it against the client's address.
    fn failed(&self, what: &str) -> Auth {
        info!(peer = %self.peer, "ssh: authentication failed with {what}");
        if self.gate.failed(self.peer.ip(), Instant::now()) {
            let limits = &self.gate.limits;
            warn!(
                peer = %self.peer,
                "ssh: {} failed authentications within {:?}; refusing new connections from this address for {:?}",
                limits.max_failures_per_address,
                limits.failure_window,
                limits.ban
            );
        }
        Auth::reject()
    }

    /// Refuses a channel other than a session, saying at debug level what it was for.
    async fn refuse_channel(&self, reply: ChannelOpenHandle, what: &str) -> Result<(), ConnError> {
        debug!(peer = %self.peer, "ssh: refused {what}");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }
}

impl russh::server::Handler for Connection {
    type Error = ConnError;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, ConnError> {
        let fp = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        let Ok(fp) = fp.parse::<Fingerprint>() else {
            return Ok(self.failed("a key without a SHA256 fingerprint"));
        };
        match self.shared.identity.key_owner(&fp).await {
            Ok(Some(owner)) => {
                debug!(peer = %self.peer, user = %owner.user, "ssh: authenticated with {fp}");
                self.user = Some(owner.user);
                self.deploy_key_app = owner.app;
                self.key = Some(fp);
                Ok(Auth::Accept)
            }
            Ok(None) => Ok(self.failed(&format!("unknown key {fp}"))),
            Err(e) => {
                warn!("ssh: looking up {fp}: {e}");
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_password(&mut self, _user: &str, _password: &str) -> Result<Auth, ConnError> {
        // Not offered, but russh asks anyway when a client tries it.
        Ok(self.failed("a password"))
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, ConnError> {
        Ok(self.failed("keyboard-interactive"))
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), ConnError> {
        self.authenticated.store(true, Ordering::Release);
        Ok(())
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

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), ConnError> {
        self.refuse_channel(reply, "an X11 channel").await
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), ConnError> {
        self.refuse_channel(
            reply,
            &format!("forwarding to {host_to_connect}:{port_to_connect}"),
        )
        .await
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), ConnError> {
        self.refuse_channel(reply, "a forwarded-tcpip channel")
            .await
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), ConnError> {
        self.refuse_channel(reply, &format!("forwarding to socket {socket_path:?}"))
            .await
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, ConnError> {
        debug!(peer = %self.peer, "ssh: refused remote forwarding from {address}:{port}");
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, ConnError> {
        debug!(peer = %self.peer, "ssh: refused remote forwarding from socket {socket_path:?}");
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, ConnError> {
        // Answered with a failure by russh when this returns false.
        debug!(peer = %self.peer, ?channel, "ssh: refused agent forwarding");
        Ok(false)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), ConnError> {
        debug!(peer = %self.peer, ?channel, "ssh: refused a pty");
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), ConnError> {
        debug!(peer = %self.peer, ?channel, "ssh: refused X11 forwarding");
        session.channel_failure(channel)?;
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
            debug!(peer = %self.peer, ?channel, "ssh: ignored environment variable {name:?}");
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
        let (Some(user), Some(key)) = (self.user.clone(), self.key.clone()) else {
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
        info!(peer = %self.peer, %user, %app, %key, "receive: git {}", service.program());
        if service == GitService::ReceivePack {
            // Every push, accepted or not, in the app's log; the release a push makes is in the
            // events with the same user and key.
            self.shared
                .releases
                .log_build(&app, &format!("receive: git push by {user} with key {key}"));
        }
        tokio::spawn(async move {
            let code = match run_git(
                &shared, service, &app, &user, &key, protocol, rx, &handle, channel,
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
    key: &Fingerprint,
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
                Ok(push) => {
                    let pusher = (user.clone(), key.clone());
                    pipeline::run(shared.clone(), app.clone(), pusher, push).await;
                }
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

    fn gate(connections: usize, failures: usize) -> Arc<Gate> {
        Gate::new(SshLimits {
            max_connections_per_address: connections,
            max_failures_per_address: failures,
            ..SshLimits::default()
        })
    }

    #[test]
    fn connections_per_address_are_bounded_and_released() {
        let gate = gate(2, 20);
        let now = Instant::now();
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "203.0.113.8".parse().unwrap();
        let first = gate.admit(a, now).unwrap();
        let _second = gate.admit(a, now).unwrap();
        assert_eq!(gate.admit(a, now).unwrap_err(), Refusal::TooManyConnections);
        // Another address is not affected, and a finished connection frees its slot.
        let _other = gate.admit(b, now).unwrap();
        drop(first);
        let _third = gate.admit(a, now).unwrap();
        assert_eq!(gate.admit(a, now).unwrap_err(), Refusal::TooManyConnections);
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let gate = gate(2, 20);
        let permit = gate.admit("198.51.100.1".parse().unwrap(), Instant::now());
        drop(permit);
        assert!(gate.addresses().is_empty());
    }

    #[test]
    fn repeated_failures_ban_an_address_for_a_while() {
        let gate = gate(10, 3);
        let limits = SshLimits::default();
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(!gate.failed(ip, t0));
        assert!(!gate.failed(ip, t0 + Duration::from_secs(1)));
        // Failures older than the window no longer count.
        let later = t0 + limits.failure_window + Duration::from_secs(1);
        assert!(!gate.failed(ip, later));
        assert!(!gate.failed(ip, later));
        assert!(gate.admit(ip, later).is_ok());
        assert!(gate.failed(ip, later), "the third failure in a window bans");
        assert_eq!(gate.admit(ip, later).unwrap_err(), Refusal::Banned);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(gate.admit(other, later).is_ok());
        let almost = later + limits.ban - Duration::from_millis(1);
        assert_eq!(gate.admit(ip, almost).unwrap_err(), Refusal::Banned);
        assert!(gate.admit(ip, later + limits.ban).is_ok());
    }

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        let gate = gate(1, 20);
        let now = Instant::now();
        let _held = gate.admit("2001:db8:1:2::1".parse().unwrap(), now).unwrap();
        assert_eq!(
            gate.admit("2001:db8:1:2:ffff::9".parse().unwrap(), now)
                .unwrap_err(),
            Refusal::TooManyConnections
        );
        assert!(gate.admit("2001:db8:1:3::1".parse().unwrap(), now).is_ok());
        // An IPv4 client seen through a dual-stack socket is the same IPv4 client.
        let _v4 = gate.admit("192.0.2.9".parse().unwrap(), now).unwrap();
        assert!(
            gate.admit("::ffff:192.0.2.9".parse().unwrap(), now)
                .is_err()
        );
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
