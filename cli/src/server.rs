//! `slipway server`: wires every part together in one process and waits for Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use slipway_builder::BuilderConfig;
use slipway_controller::{Controller, ControllerConfig};
use slipway_core::routes::Routes;
use slipway_core::tls::Certs;
use slipway_registry::{Registry, RegistryConfig};
use slipway_router::{RouterConfig, Sockets, TlsConfig};
use slipway_runtime::docker::Docker;
use tokio::net::TcpListener;

/// Settings of `slipway server`, from flags and environment.
pub(crate) struct ServerArgs {
    pub(crate) data: PathBuf,
    pub(crate) domain: String,
    pub(crate) api_addr: SocketAddr,
    pub(crate) ssh_addr: SocketAddr,
    pub(crate) registry_addr: SocketAddr,
    pub(crate) http_addr: SocketAddr,
    pub(crate) https_addr: SocketAddr,
    pub(crate) database_url: Option<String>,
    pub(crate) retain_releases: usize,
    pub(crate) build_image: String,
    pub(crate) run_image: String,
    pub(crate) build_timeout: std::time::Duration,
    pub(crate) build_memory_bytes: i64,
    pub(crate) build_nano_cpus: i64,
    pub(crate) router_limits: slipway_router::RouterLimits,
    pub(crate) registry_gc_grace: std::time::Duration,
}

/// The id that labels this server's containers, made on first start.
fn instance_id(data: &Path) -> Result<String> {
    let path = data.join("instance-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_owned();
        if !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id);
        }
    }
    let id = hex::encode(rand::random::<[u8; 8]>());
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// The address the container engine (on this machine) uses to reach a listener.
fn local(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
}

/// How long the router's start waits for the reconciler's first pass over the apps.
const FIRST_PASS_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The router's sockets when a service manager passed them in (systemd's socket activation:
/// `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`): named `http` and `https`, or else told apart
/// by the address they are bound to. Kept open by the service manager across restarts, they
/// make a restart of the server refuse no connection.
fn passed_sockets(http: SocketAddr, https: SocketAddr) -> Result<Sockets> {
    let mut passed = listenfd::ListenFd::from_env();
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut sockets = Sockets::default();
    for i in 0..passed.len() {
        let fd = i + 3;
        let listener = passed
            .take_tcp_listener(i)
            .with_context(|| format!("the socket passed as fd {fd} is not a TCP listener"))?
            .with_context(|| format!("the socket passed as fd {fd} is gone"))?;
        // A duplicate closes on exec, so git and the build never inherit the listener.
        let listener = listener
            .try_clone()
            .with_context(|| format!("taking the socket passed as fd {fd}"))?;
        let addr = listener.local_addr()?;
        let slot = match names.get(i).map(String::as_str) {
            Some("http") => &mut sockets.http,
            Some("https") => &mut sockets.https,
            _ if addr == http => &mut sockets.http,
            _ if addr == https => &mut sockets.https,
            _ => bail!(
                "the socket passed as fd {fd} ({addr}) is neither named http or https nor bound \
                 to {http} ({}) or {https} ({})",
                crate::env::HTTP_ADDR,
                crate::env::HTTPS_ADDR
            ),
        };
        if slot.is_some() {
            bail!("two sockets passed for the same listener (fd {fd}, {addr})");
        }
        tracing::info!(fd, %addr, "router: using a socket the service manager passed");
        *slot = Some(listener);
    }
    Ok(sockets)
}

pub(crate) async fn run(args: ServerArgs) -> Result<()> {
    if let Some(url) = &args.database_url
        && slipway_controller::db::Backend::of_url(url).is_none()
    {
        bail!("--database-url must start with postgres:// or sqlite://");
    }
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating data directory {}", args.data.display()))?;
    // Tokens, keys, repositories and the hook sockets live here: owner only.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&args.data, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("securing data directory {}", args.data.display()))?;
    }
    let data = args
        .data
        .canonicalize()
        .with_context(|| format!("data directory {}", args.data.display()))?;
    let instance = instance_id(&data)?;
    let sockets = passed_sockets(args.http_addr, args.https_addr)?;
    let engine = Arc::new(Docker::connect().await?);
    let routes = Routes::default();
    let certs = Certs::default();

    // Bind everything first, so a busy port fails the start before anything runs.
    let api_listener = TcpListener::bind(args.api_addr).await.with_context(|| {
        format!(
            "binding the API on {} (set {})",
            args.api_addr,
            crate::env::API_ADDR
        )
    })?;
    let registry_listener = TcpListener::bind(args.registry_addr)
        .await
        .with_context(|| {
            format!(
                "binding the registry on {} (set {})",
                args.registry_addr,
                crate::env::REGISTRY_ADDR
            )
        })?;
    let registry_addr = local(registry_listener.local_addr()?);

    let (controller, first) = Controller::start(
        ControllerConfig {
            data_dir: data.clone(),
            domain: args.domain.clone(),
            instance_id: instance.clone(),
            registry_addr: registry_addr.clone(),
            database_url: args.database_url.clone(),
            retain_releases: args.retain_releases,
        },
        engine.clone(),
        routes.clone(),
        certs.clone(),
    )
    .await?;

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let registry = Registry::new(
        RegistryConfig {
            root: data.join("registry"),
            token_key: data.join("registry-token-key"),
        },
        controller.clone(),
    )?
    .with_gc_grace(args.registry_gc_grace);
    controller.attach_registry_gc(Arc::new(registry.clone()));
    let registry_task =
        tokio::spawn(registry.serve(registry_listener, stopped(shutdown_rx.clone())));

    let api = slipway_controller::api::router(controller.clone());
    let api_stop = stopped(shutdown_rx.clone());
    let api_task = tokio::spawn(async move {
        axum::serve(api_listener, api)
            .with_graceful_shutdown(api_stop)
            .await
    });

    let (user, token) = controller.system_credentials();
    let mut builder = BuilderConfig::new(data.clone(), args.ssh_addr, registry_addr.clone());
    builder.registry_user = user;
    builder.registry_token = token;
    builder.instance_id = instance.clone();
    builder.domain = args.domain.clone();
    builder.build_image = args.build_image.clone();
    builder.run_image = args.run_image.clone();
    builder.build_timeout = args.build_timeout;
    builder.build_memory_bytes = args.build_memory_bytes;
    builder.build_nano_cpus = args.build_nano_cpus;
    builder.hook_program = std::env::current_exe().context("locating the slipway binary")?;
    let ssh_addr = slipway_builder::start(builder, controller.clone(), controller.clone(), engine)
        .await
        .with_context(|| format!("starting the SSH server (set {})", crate::env::SSH_ADDR))?;

    // Requests wait (in the listen queue) until the instances that outlived a restart of the
    // server are back in the route table, rather than meet an empty one.
    if tokio::time::timeout(FIRST_PASS_WAIT, controller.first_pass())
        .await
        .is_err()
    {
        tracing::warn!(
            "the first pass over the apps took over {}s; routing what is ready",
            FIRST_PASS_WAIT.as_secs()
        );
    }
    let router = slipway_router::start_with_sockets(
        RouterConfig {
            listen: args.http_addr,
            threads: 2,
            limits: args.router_limits,
        },
        routes,
        TlsConfig {
            listen: args.https_addr,
            certs,
        },
        sockets,
    )
    .with_context(|| {
        format!(
            "starting the router (set {} and {})",
            crate::env::HTTP_ADDR,
            crate::env::HTTPS_ADDR
        )
    })?;

    println!("slipway server {instance} is running");
    println!("  data      {}", data.display());
    println!("  api       http://{}", args.api_addr);
    println!("  git       ssh://git@{}/<app>.git", local(ssh_addr));
    println!("  registry  {registry_addr}");
    println!(
        "  apps      http://<app>.{}:{}",
        args.domain,
        router.local_addr().port()
    );
    if let Some(tls) = router.tls_addr() {
        println!("  https     https://<app>.{}:{}", args.domain, tls.port());
    }
    if let Some(first) = first {
        println!();
        println!(
            "First start: the admin API token is in {} (mode 0600).",
            first.token_path.display()
        );
        println!("Use it with:");
        println!("  export SLIPWAY_URL=http://{}", args.api_addr);
        println!(
            "  export SLIPWAY_TOKEN=$(cat {})",
            first.token_path.display()
        );
    }

    wait_for_signal().await;
    println!("slipway server: stopping");
    let _ = shutdown_tx.send(true);
    let _ = tokio::task::spawn_blocking(move || router.stop()).await;
    let _ = api_task.await;
    let _ = registry_task.await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
