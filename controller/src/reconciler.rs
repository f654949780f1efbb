//! The reconciler: converges the container engine to the releases in the database and keeps the
//! route table in step with the instances that are ready.
//!
//! It is a loop over a closed set of [`Event`]s. Each event names the apps to look at; for each,
//! the loop observes (the target release, the app's containers), compares, and acts: start the
//! target release's web instance, wait until it accepts connections, route to it, then stop the
//! others. A release whose instance never becomes ready is marked failed and the previous one
//! keeps serving.
//!
//! Invariant: it only touches containers labelled with its own `slipway.instance` id, and it
//! routes traffic only to instances that accepted a connection.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_core::routes::{AppRoute, RouteTable, Routes};
use slipway_core::{AppName, Release};
use slipway_runtime::{Container, ContainerSpec, Engine, LABEL_INSTANCE, RegistryAuth};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::db::{Db, ReleaseStatus};

/// Docker label naming the app of a container.
pub const LABEL_APP: &str = "slipway.app";
/// Docker label naming the process type of a container.
pub const LABEL_PROCESS: &str = "slipway.process";
/// Docker label naming the release (`v7`) of a container.
pub const LABEL_RELEASE: &str = "slipway.release";

/// The port every web process listens on inside its container (`PORT`).
pub const APP_PORT: u16 = 5000;

/// Everything that makes the reconciler look again.
#[derive(Debug, Clone)]
pub enum Event {
    /// A new release of the app was recorded.
    Released(AppName),
    /// The app was destroyed.
    Destroyed(AppName),
    /// Periodic check of every app: replaces crashed instances, and at start brings every app
    /// back.
    Tick,
}

/// Settings of the reconciler.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// This server's instance id, put on every container.
    pub instance_id: String,
    /// Apps are served at `<app>.<domain>`.
    pub domain: String,
    /// Credentials the engine uses to pull release images.
    pub registry: RegistryAuth,
    /// How long a new instance may take to accept connections.
    pub ready_timeout: Duration,
    /// How often every app is checked.
    pub tick: Duration,
    /// How long an old instance keeps serving in-flight requests after it leaves the routes.
    pub drain: Duration,
}

/// The reconciler's state.
pub struct Reconciler {
    db: Db,
    engine: Arc<dyn Engine>,
    routes: Routes,
    config: ReconcilerConfig,
    /// Ready web backends per app; the route table is built from this.
    ready: Mutex<BTreeMap<AppName, Vec<SocketAddr>>>,
    /// One lock per app, so two passes over one app never interleave.
    locks: Mutex<HashMap<AppName, Arc<tokio::sync::Mutex<()>>>>,
    /// The loop's own queue, for passes that must run again after this one.
    again: mpsc::UnboundedSender<Event>,
}

/// Where the reconciler takes events.
#[derive(Clone)]
pub struct ReconcilerHandle(mpsc::UnboundedSender<Event>);

impl ReconcilerHandle {
    /// Queues an event; a no-op once the server is shutting down.
    pub fn send(&self, event: Event) {
        let _ = self.0.send(event);
    }
}

impl Reconciler {
    /// Starts the loop on the current runtime. The first pass runs at once.
    pub fn spawn(
        db: Db,
        engine: Arc<dyn Engine>,
        routes: Routes,
        config: ReconcilerConfig,
    ) -> ReconcilerHandle {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let this = Arc::new(Reconciler {
            db,
            engine,
            routes,
            config,
            ready: Mutex::default(),
            locks: Mutex::default(),
            again: tx.clone(),
        });
        let handle = ReconcilerHandle(tx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.config.tick);
            loop {
                let event = tokio::select! {
                    e = rx.recv() => match e { Some(e) => e, None => return },
                    _ = tick.tick() => Event::Tick,
                };
                this.clone().handle(event).await;
            }
        });
        handle
    }

    async fn handle(self: Arc<Self>, event: Event) {
        let apps = match event {
            Event::Released(app) | Event::Destroyed(app) => vec![app],
            Event::Tick => match self.all_apps().await {
                Ok(apps) => apps,
                Err(e) => {
                    warn!("reconcile: listing apps: {e}");
                    return;
                }
            },
        };
        for app in apps {
            let this = self.clone();
            tokio::spawn(async move {
                let lock = this.lock_for(&app);
                let Ok(_guard) = lock.try_lock() else {
                    // A pass over this app is running; a release queues behind it instead.
                    let _guard = lock.lock().await;
                    return this.reconcile(&app).await;
                };
                this.reconcile(&app).await
            });
        }
    }

    fn lock_for(&self, app: &AppName) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(app.clone()).or_default().clone()
    }

    /// Apps in the database and apps that still have containers.
    async fn all_apps(&self) -> Result<Vec<AppName>, String> {
        let mut apps: Vec<AppName> = self
            .db
            .apps()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|a| a.name)
            .collect();
        let containers = self
            .engine
            .list(&[(LABEL_INSTANCE, &self.config.instance_id)])
            .await
            .map_err(|e| e.to_string())?;
        for c in containers {
            if let Some(app) = c.labels.get(LABEL_APP).and_then(|a| a.parse().ok())
                && !apps.contains(&app)
            {
                apps.push(app);
            }
        }
        Ok(apps)
    }

    async fn reconcile(&self, app: &AppName) {
        if let Err(e) = self.try_reconcile(app).await {
            warn!(app = %app, "deploy: {e}");
        }
    }

    async fn try_reconcile(&self, app: &AppName) -> Result<(), String> {
        let exists = self.db.app(app).await.map_err(|e| e.to_string())?.is_some();
        let target = if exists {
            self.db
                .target_release(app)
                .await
                .map_err(|e| e.to_string())?
        } else {
            None
        };
        let containers = self
            .engine
            .list(&[
                (LABEL_INSTANCE, &self.config.instance_id),
                (LABEL_APP, app.as_str()),
            ])
            .await
            .map_err(|e| e.to_string())?;

        let Some((release, status)) = target else {
            // Destroyed, or nothing built yet: nothing may run.
            self.set_ready(app, exists.then(Vec::new));
            self.retire(containers).await;
            return Ok(());
        };
        let label = release.label();
        let (current, stale): (Vec<Container>, Vec<Container>) =
            containers.into_iter().partition(|c| {
                c.running
                    && c.labels.get(LABEL_RELEASE) == Some(&label)
                    && c.labels.get(LABEL_PROCESS).map(String::as_str) == Some("web")
            });

        let mut backends = Vec::new();
        for c in &current {
            if let Some(addr) = backend_addr(c)
                && accepts(addr).await
            {
                backends.push(addr);
            }
        }
        if backends.is_empty() && release.processes.contains_key("web") {
            match self.start_web(&release).await {
                Ok(addr) => backends.push(addr),
                Err(e) => {
                    if status == ReleaseStatus::Pending {
                        self.db
                            .set_release_status(app, release.version, ReleaseStatus::Failed)
                            .await
                            .map_err(|e| e.to_string())?;
                        // The previous release, if any, is the target again: make sure it runs.
                        let _ = self.again.send(Event::Released(app.clone()));
                    }
                    return Err(format!("{label}: {e}"));
                }
            }
        }
        self.set_ready(app, Some(backends));
        if status == ReleaseStatus::Pending {
            self.db
                .set_release_status(app, release.version, ReleaseStatus::Deployed)
                .await
                .map_err(|e| e.to_string())?;
            info!(app = %app, release = %label, "deploy: serving");
        }
        // Old instances leave the routes first, finish what they were doing, then stop.
        let stale: Vec<Container> = stale
            .into_iter()
            .chain(
                current
                    .into_iter()
                    .filter(|c| backend_addr(c).is_none_or(|a| !self.is_ready(app, a))),
            )
            .collect();
        if !stale.is_empty() {
            tokio::time::sleep(self.config.drain).await;
            self.retire(stale).await;
        }
        Ok(())
    }

    async fn start_web(&self, release: &Release) -> Result<SocketAddr, String> {
        let image = release.image.as_deref().ok_or("release has no image")?;
        self.engine
            .pull(image, &self.config.registry)
            .await
            .map_err(|e| e.to_string())?;
        let mut env: Vec<String> = release
            .config
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("PORT={APP_PORT}"));
        env.push(format!("SLIPWAY_APP={}", release.app));
        env.push(format!("SLIPWAY_RELEASE={}", release.label()));
        env.push("SLIPWAY_PROCESS=web".to_owned());
        let command = &release.processes["web"];
        let suffix: u32 = rand::random();
        let spec = ContainerSpec {
            name: format!(
                "slipway-{}-{}-web-{}-{:08x}",
                short(&self.config.instance_id),
                release.app,
                release.label(),
                suffix
            ),
            image: image.to_owned(),
            cmd: vec!["/bin/sh".into(), "-c".into(), command.clone()],
            env,
            labels: HashMap::from([
                (LABEL_INSTANCE.to_owned(), self.config.instance_id.clone()),
                (LABEL_APP.to_owned(), release.app.to_string()),
                (LABEL_PROCESS.to_owned(), "web".to_owned()),
                (LABEL_RELEASE.to_owned(), release.label()),
            ]),
            publish: Some(APP_PORT),
            memory_bytes: None,
        };
        let container = self.engine.run(&spec).await.map_err(|e| e.to_string())?;
        let Some(addr) = backend_addr(&container) else {
            self.retire(vec![container]).await;
            return Err("the instance has no network address".into());
        };
        let deadline = tokio::time::Instant::now() + self.config.ready_timeout;
        loop {
            if accepts(addr).await {
                return Ok(addr);
            }
            let still_running = self
                .engine
                .list(&[(LABEL_INSTANCE, &self.config.instance_id)])
                .await
                .map(|cs| cs.iter().any(|c| c.id == container.id && c.running))
                .unwrap_or(true);
            if !still_running {
                self.retire(vec![container]).await;
                return Err(format!(
                    "the web process exited before listening on PORT {APP_PORT}"
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                self.retire(vec![container]).await;
                return Err(format!(
                    "the web process did not listen on PORT {APP_PORT} within {:?}",
                    self.config.ready_timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn retire(&self, containers: Vec<Container>) {
        for c in containers {
            if let Err(e) = self.engine.remove(&c.id, Duration::from_secs(10)).await {
                warn!(container = %c.name, "deploy: removing: {e}");
            }
        }
    }

    fn is_ready(&self, app: &AppName, addr: SocketAddr) -> bool {
        let ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        ready.get(app).is_some_and(|b| b.contains(&addr))
    }

    /// Sets the app's ready backends (`None` removes the app's route) and publishes the table.
    fn set_ready(&self, app: &AppName, backends: Option<Vec<SocketAddr>>) {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match backends {
            Some(b) => ready.insert(app.clone(), b.clone()) != Some(b),
            None => ready.remove(app).is_some(),
        };
        if changed {
            let mut table = RouteTable::default();
            for (app, backends) in ready.iter() {
                table.insert(
                    [format!("{app}.{}", self.config.domain)],
                    AppRoute::new(app.clone(), backends.clone()),
                );
            }
            self.routes.publish(table);
        }
    }
}

/// The address the router uses: the container's bridge address, which skips Docker's proxy
/// (whose port accepts connections even before the app listens).
fn backend_addr(c: &Container) -> Option<SocketAddr> {
    c.ip.map(|ip| SocketAddr::new(ip, APP_PORT))
}

async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}
