//! The `slipway` binary. `slipway server` starts every part in one process; every other
//! subcommand is a client of the HTTP API. This file only parses arguments and dispatches: the
//! work lives in the library crates.

mod client;
mod env;
mod log_output;
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "slipway",
    version,
    about = "A git-push PaaS on your own servers"
)]
struct Cli {
    /// The API URL.
    #[arg(long, global = true, env = env::URL, hide_env_values = true)]
    url: Option<String>,
    /// The API token.
    #[arg(long, global = true, env = env::TOKEN, hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON answer on stdout instead of tables for people; commands that only act
    /// print `{}`. Errors stay one line on stderr. `logs`, `run` and `login` ignore it.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per process; the server's settings are the big variant"
)]
enum Command {
    /// Run every part of Slipway in this process.
    Server {
        /// Data directory.
        #[arg(long, env = env::DATA, default_value = "./slipway-data")]
        data: PathBuf,
        /// Apps are served at <app>.<domain>.
        #[arg(long, env = env::DOMAIN, default_value = "slipway.localhost")]
        domain: String,
        /// API listen address.
        #[arg(long, env = env::API_ADDR, default_value = "127.0.0.1:7700")]
        api_addr: SocketAddr,
        /// SSH git server listen address.
        #[arg(long, env = env::SSH_ADDR, default_value = "0.0.0.0:2222")]
        ssh_addr: SocketAddr,
        /// Registry listen address.
        #[arg(long, env = env::REGISTRY_ADDR, default_value = "127.0.0.1:5000")]
        registry_addr: SocketAddr,
        /// Router (HTTP) listen address.
        #[arg(long, env = env::HTTP_ADDR, default_value = "0.0.0.0:8080")]
        http_addr: SocketAddr,
        /// Router (HTTPS) listen address.
        #[arg(long, env = env::HTTPS_ADDR, default_value = "0.0.0.0:8443")]
        https_addr: SocketAddr,
        /// Database URL (SQLite under DATA by default).
        #[arg(long, env = env::DATABASE_URL)]
        database_url: Option<String>,
        /// Releases before the newest one of each app whose images registry:gc keeps.
        #[arg(long, env = env::RETAIN_RELEASES, default_value_t = slipway_controller::DEFAULT_RETAIN_RELEASES)]
        retain_releases: usize,
        /// Seconds a registry object must have existed before registry:gc may remove it.
        #[arg(long, env = env::REGISTRY_GC_GRACE_SECS, default_value_t = slipway_registry::DEFAULT_GC_GRACE.as_secs())]
        registry_gc_grace_secs: u64,
        /// The build image: a repository in Slipway's registry, or any image with its registry
        /// host (`ghcr.io/org/build:1`).
        #[arg(long, env = env::BUILD_IMAGE, default_value = "stacks/build:bookworm")]
        build_image: String,
        /// The run image apps are built on, the same way; one from another registry must be
        /// readable without a login.
        #[arg(long, env = env::RUN_IMAGE, default_value = "stacks/run:bookworm")]
        run_image: String,
        /// Seconds a build may run before the push is rejected.
        #[arg(long, env = env::BUILD_TIMEOUT_SECS, default_value_t = 900)]
        build_timeout_secs: u64,
        /// Memory a build may use (`2G`, `512M`), swap included; a build over it is stopped
        /// and the push rejected.
        #[arg(long, env = env::BUILD_MEMORY, default_value = "2G",
              value_parser = client::parse_build_memory)]
        build_memory: i64,
        /// CPUs a build may use (`1.5`, or millicores such as `500m`).
        #[arg(long, env = env::BUILD_CPUS, default_value = "1.5",
              value_parser = client::parse_build_cpus)]
        build_cpus: i64,
        /// Seconds the router waits for an instance to accept a connection (then 502).
        #[arg(long, env = env::ROUTER_CONNECT_TIMEOUT_SECS, default_value_t = 5,
              value_parser = clap::value_parser!(u64).range(1..))]
        router_connect_timeout_secs: u64,
        /// Seconds an instance may stay silent, before its first byte and between reads (then 504).
        #[arg(long, env = env::ROUTER_READ_TIMEOUT_SECS, default_value_t = 30,
              value_parser = clap::value_parser!(u64).range(1..))]
        router_read_timeout_secs: u64,
    },
    /// List your SSH keys.
    Keys,
    /// Add an SSH public key.
    #[command(name = "keys:add")]
    KeysAdd {
        path: String,
        /// Make a deploy key that can push this app only.
        #[arg(long)]
        app: Option<String>,
    },
    /// Remove an SSH key by fingerprint.
    #[command(name = "keys:remove")]
    KeysRemove { fingerprint: String },
    /// List apps.
    Apps,
    /// Create an app.
    #[command(name = "apps:create")]
    AppsCreate { name: String },
    /// Show an app.
    #[command(name = "apps:info")]
    AppsInfo {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Destroy an app, its releases and its containers.
    #[command(name = "apps:destroy")]
    AppsDestroy {
        name: String,
        #[arg(long)]
        confirm: Option<String>,
    },
    /// Show config vars.
    Config {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Set config vars (a new release).
    #[command(name = "config:set")]
    ConfigSet {
        #[arg(short, long)]
        app: Option<String>,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Unset config vars (a new release).
    #[command(name = "config:unset")]
    ConfigUnset {
        #[arg(short, long)]
        app: Option<String>,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// List releases.
    Releases {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Roll back to an earlier release (default: the one before the current).
    Rollback {
        version: Option<String>,
        #[arg(short, long)]
        app: Option<String>,
    },
    /// List an app's domains.
    Domains {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Serve an app at another host name.
    #[command(name = "domains:add")]
    DomainsAdd {
        host: String,
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Stop serving an app at a host name.
    #[command(name = "domains:remove")]
    DomainsRemove {
        host: String,
        #[arg(short, long)]
        app: Option<String>,
    },
    /// List an app's TLS certificates: names, expiry, fingerprint.
    Certs {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Add a TLS certificate (PEM, leaf first, then intermediates) and its private key.
    #[command(name = "certs:add")]
    CertsAdd {
        /// The certificate chain, PEM.
        cert: String,
        /// Its unencrypted private key, PEM.
        key: String,
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Remove the certificates covering a name (or with a fingerprint).
    #[command(name = "certs:remove")]
    CertsRemove {
        name: String,
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Redirect the app's plain HTTP requests to HTTPS.
    #[command(name = "tls:enable")]
    TlsEnable {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Serve the app's plain HTTP requests again.
    #[command(name = "tls:disable")]
    TlsDisable {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// List an app's instances.
    Ps {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Set instances per process type: web=2 worker=1.
    #[command(name = "ps:scale")]
    PsScale {
        #[arg(required = true)]
        pairs: Vec<String>,
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Restart an app's instances (all, or one process type).
    #[command(name = "ps:restart")]
    PsRestart {
        process: Option<String>,
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Show the memory and CPU limits of an app's process types.
    Limits {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Set limits: web=512M worker=1G (memory, K/M/G), or with --cpu: web=1.5 (CPUs, or 500m).
    #[command(name = "limits:set")]
    LimitsSet {
        #[arg(required = true)]
        pairs: Vec<String>,
        /// The values are CPUs, not memory.
        #[arg(long)]
        cpu: bool,
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Remove limits of process types (memory and CPU, or only one with --memory / --cpu).
    #[command(name = "limits:unset")]
    LimitsUnset {
        #[arg(required = true)]
        types: Vec<String>,
        #[arg(long, conflicts_with = "cpu")]
        memory: bool,
        #[arg(long)]
        cpu: bool,
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Show the HTTP path a new web instance must answer before it gets traffic.
    Healthcheck {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Make new web instances answer PATH (2xx or 3xx) before they get traffic.
    #[command(name = "healthcheck:set")]
    HealthcheckSet {
        path: String,
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Go back to readiness by accepting connections on PORT.
    #[command(name = "healthcheck:unset")]
    HealthcheckUnset {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Show an app's output.
    Logs {
        #[arg(short, long)]
        app: Option<String>,
        /// How many lines.
        #[arg(short = 'n', long = "num", default_value_t = 100)]
        num: usize,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
    },
    /// Add a user (admin only); prints their API token.
    #[command(name = "users:add")]
    UsersAdd { name: String },
    /// Make another API token for yourself.
    #[command(name = "tokens:create")]
    TokensCreate,
    /// Save an API URL and token for later commands.
    Login,
    /// List who may push and operate an app.
    Access {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Let another user push and operate an app (owner only).
    #[command(name = "access:add")]
    AccessAdd {
        user: String,
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Take a collaborator off an app (owner only).
    #[command(name = "access:remove")]
    AccessRemove {
        user: String,
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Release a prebuilt image.
    Deploy {
        #[arg(long)]
        image: String,
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Run a one-off command in a container of the current release.
    Run {
        #[arg(short, long)]
        app: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Answer the app's traffic with a 503 maintenance page.
    #[command(name = "maintenance:on")]
    MaintenanceOn {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Serve the app's traffic again.
    #[command(name = "maintenance:off")]
    MaintenanceOff {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// The audit log: deploys, crashes, scaling, config, keys and access changes.
    Events {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Remove registry images no retained release, tag or kept image needs (admin only).
    #[command(name = "registry:gc")]
    RegistryGc {
        /// List what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Internal: git hooks run by the SSH git server.
    #[command(hide = true)]
    Hook { name: String },
}

fn main() {
    let cli = Cli::parse();
    if let Command::Hook { name } = &cli.command {
        // Runs inside git receive-pack: synchronous, no runtime, no logging setup.
        let code = if name == "pre-receive" {
            slipway_builder::hook::run_client()
        } else {
            eprintln!("slipway: unknown hook {name}");
            1
        };
        std::process::exit(code);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("slipway: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("slipway: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let api = || client::Api::from_env(cli.url.clone(), cli.token.clone(), cli.json);
    match &cli.command {
        Command::Server {
            data,
            domain,
            api_addr,
            ssh_addr,
            registry_addr,
            http_addr,
            https_addr,
            database_url,
            retain_releases,
            registry_gc_grace_secs,
            build_image,
            run_image,
            build_timeout_secs,
            build_memory,
            build_cpus,
            router_connect_timeout_secs,
            router_read_timeout_secs,
        } => {
            // Kept until the server returns, when dropping it writes out buffered access lines.
            let log_output = log_output::LogOutput::stdout();
            tracing_subscriber::fmt()
                // Colours only on a terminal: a log file gets plain `key=value` fields.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                .with_writer(log_output.handle())
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,pingora=warn,russh=warn,sqlx=warn".into()),
                )
                .init();
            server::run(server::ServerArgs {
                data: data.clone(),
                domain: domain.clone(),
                api_addr: *api_addr,
                ssh_addr: *ssh_addr,
                registry_addr: *registry_addr,
                http_addr: *http_addr,
                https_addr: *https_addr,
                database_url: database_url.clone(),
                retain_releases: *retain_releases,
                registry_gc_grace: std::time::Duration::from_secs(*registry_gc_grace_secs),
                build_image: build_image.clone(),
                run_image: run_image.clone(),
                build_timeout: std::time::Duration::from_secs(*build_timeout_secs),
                build_memory_bytes: *build_memory,
                build_nano_cpus: *build_cpus,
                router_limits: slipway_router::RouterLimits {
                    connect_timeout: std::time::Duration::from_secs(*router_connect_timeout_secs),
                    read_timeout: std::time::Duration::from_secs(*router_read_timeout_secs),
                    ..Default::default()
                },
            })
            .await
        }
        Command::Keys => client::keys(&api()?).await,
        Command::KeysAdd { path, app } => client::keys_add(&api()?, path, app.as_deref()).await,
        Command::KeysRemove { fingerprint } => client::keys_remove(&api()?, fingerprint).await,
        Command::Apps => client::apps(&api()?).await,
        Command::AppsCreate { name } => client::apps_create(&api()?, name).await,
        Command::AppsInfo { app } => {
            client::apps_info(&api()?, &client::resolve_app(app.clone())?).await
        }
        Command::AppsDestroy { name, confirm } => {
            client::apps_destroy(&api()?, name, confirm.as_deref()).await
        }
        Command::Config { app } => {
            client::config(&api()?, &client::resolve_app(app.clone())?).await
        }
        Command::ConfigSet { app, pairs } => {
            client::config_set(&api()?, &client::resolve_app(app.clone())?, pairs).await
        }
        Command::ConfigUnset { app, keys } => {
            client::config_unset(&api()?, &client::resolve_app(app.clone())?, keys).await
        }
        Command::Releases { app } => {
            client::releases(&api()?, &client::resolve_app(app.clone())?).await
        }
        Command::Rollback { version, app } => {
            client::rollback(
                &api()?,
                &client::resolve_app(app.clone())?,
                version.as_deref(),
            )
            .await
        }
        Command::Domains { app } => {
            client::domains(&api()?, &client::resolve_app(app.clone())?).await
        }
        Command::DomainsAdd { host, app } => {
            client::domains_add(&api()?, &client::resolve_app(app.clone())?, host).await
        }
        Command::DomainsRemove { host, app } => {
            client::domains_remove(&api()?, &client::resolve_app(app.clone())?, host).await
        }
        Command::Certs { app } => client::certs(&api()?, &client::resolve_app(app.clone())?).await,
        Command::CertsAdd { cert, key, app } => {
            client::certs_add(&api()?, &client::resolve_app(app.clone())?, cert, key).await
        }
        Command::CertsRemove { name, app } => {
            client::certs_remove(&api()?, &client::resolve_app(app.clone())?, name).await
        }
        Command::TlsEnable { app } => {
            client::tls(&api()?, &client::resolve_app(app.clone())?, true).await
        }
        Command::TlsDisable { app } => {
            client::tls(&api()?, &client::resolve_app(app.clone())?, false).await
        }
        Command::Ps { app } => client::ps(&api()?, &client::resolve_app(app.clone())?).await,
        Command::PsScale { pairs, app } => {
            client::ps_scale(&api()?, &client::resolve_app(app.clone())?, pairs).await
        }
        Command::Limits { app } => {
            client::limits(&api()?, &client::resolve_app(app.clone())?).await
        }
        Command::LimitsSet { pairs, cpu, app } => {
            client::limits_set(&api()?, &client::resolve_app(app.clone())?, pairs, *cpu).await
        }
        Command::LimitsUnset {
            types,
            memory,
            cpu,
            app,
        } => {
            let fields: &[&str] = match (*memory, *cpu) {
                (true, _) => &["memory_bytes"],
                (_, true) => &["nano_cpus"],
                _ => &["memory_bytes", "nano_cpus"],
            };
            client::limits_unset(&api()?, &client::resolve_app(app.clone())?, types, fields).await
        }
        Command::Healthcheck { app } => {
            client::healthcheck(&api()?, &client::resolve_app(app.clone())?, None).await
        }
        Command::HealthcheckSet { path, app } => {
            let path = Some(Some(path.as_str()));
            client::healthcheck(&api()?, &client::resolve_app(app.clone())?, path).await
        }
        Command::HealthcheckUnset { app } => {
            client::healthcheck(&api()?, &client::resolve_app(app.clone())?, Some(None)).await
        }
        Command::PsRestart { process, app } => {
            client::ps_restart(
                &api()?,
                &client::resolve_app(app.clone())?,
                process.as_deref(),
            )
            .await
        }
        Command::Logs { app, num, follow } => {
            client::logs(&api()?, &client::resolve_app(app.clone())?, *num, *follow).await
        }
        Command::UsersAdd { name } => client::users_add(&api()?, name).await,
        Command::TokensCreate => client::tokens_create(&api()?).await,
        Command::Login => client::login(cli.url.clone(), cli.token.clone()).await,
        Command::Access { app } => {
            client::access(&api()?, &client::resolve_app(app.clone())?).await
        }
        Command::AccessAdd { user, app } => {
            client::access_add(&api()?, &client::resolve_app(app.clone())?, user).await
        }
        Command::AccessRemove { user, app } => {
            client::access_remove(&api()?, &client::resolve_app(app.clone())?, user).await
        }
        Command::Deploy { image, app } => {
            client::deploy(&api()?, &client::resolve_app(app.clone())?, image).await
        }
        Command::Run { app, command } => {
            let code = client::run(&api()?, &client::resolve_app(app.clone())?, command).await?;
            std::process::exit(code);
        }
        Command::MaintenanceOn { app } => {
            client::maintenance(&api()?, &client::resolve_app(app.clone())?, true).await
        }
        Command::MaintenanceOff { app } => {
            client::maintenance(&api()?, &client::resolve_app(app.clone())?, false).await
        }
        Command::Events { app } => {
            let app = app.clone().or_else(client::remote_app);
            client::events(&api()?, app.as_deref()).await
        }
        Command::RegistryGc { dry_run } => client::registry_gc(&api()?, *dry_run).await,
        Command::Hook { .. } => unreachable!("handled before the runtime starts"),
    }
}
