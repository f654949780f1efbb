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
use slipway_runtime::{
    Container, ContainerSpec, Engine, LABEL_INSTANCE, LABEL_ONEOFF, RegistryAuth,
};
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
    /// The app's formation (instances per process type) changed.
    Scaled(AppName),
    /// The app's custom domains changed.
    DomainsChanged(AppName),
    /// The app's instances were removed for a restart.
    Restarted(AppName),
    /// The app's maintenance mode was turned on or off.
    MaintenanceChanged(AppName),
    /// The app was destroyed.
    Destroyed(AppName),
    /// Periodic check of every app: replaces crashed instances, and at start brings every app
    /// back.
    Tick,
}

/// How the router should serve one app.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Served {
    /// `<app>.<domain>` and the app's custom domains.
    hosts: Vec<String>,
    /// Ready web instances.
    backends: Vec<SocketAddr>,
    /// Maintenance mode: the router answers 503 instead.
    maintenance: bool,
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
    /// Host names and ready web backends per app; the route table is built from this.
    ready: Mutex<BTreeMap<AppName, Served>>,
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
            Event::Released(app)
            | Event::Scaled(app)
            | Event::DomainsChanged(app)
            | Event::Restarted(app)
            | Event::MaintenanceChanged(app)
            | Event::Destroyed(app) => vec![app],
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
        // One-off runs (`slipway run`) end on their own; only a destroyed app's are removed.
        let containers: Vec<Container> = containers
            .into_iter()
            .filter(|c| !(exists && c.labels.contains_key(LABEL_ONEOFF)))
            .collect();

        let Some((release, status)) = target else {
            // Destroyed, or nothing built yet: nothing may run.
            let route = if exists {
                Some(self.served(app, Vec::new()).await?)
            } else {
                None
            };
            self.set_route(app, route);
            self.retire(containers).await;
            return Ok(());
        };
        let formation = self.db.formation(app).await.map_err(|e| e.to_string())?;
        let desired = desired_formation(&release, &formation);
        let label = release.label();

        // Observe: the running instances of the target release, by process type.
        let mut current: BTreeMap<String, Vec<Container>> = BTreeMap::new();
        let mut stale = Vec::new();
        for c in containers {
            let process = c.labels.get(LABEL_PROCESS).cloned().unwrap_or_default();
            if !c.running && c.labels.get(LABEL_RELEASE) == Some(&label) {
                self.event(
                    app,
                    "crash",
                    &format!("{process} instance {} exited; replacing it", c.name),
                )
                .await;
            }
            if c.running
                && c.labels.get(LABEL_RELEASE) == Some(&label)
                && desired.contains_key(&process)
            {
                current.entry(process).or_default().push(c);
            } else {
                stale.push(c);
            }
        }

        // Compare and act, process type by process type.
        let mut backends = Vec::new();
        for (process, want) in &desired {
            let mut have = current.remove(process).unwrap_or_default();
            if process == "web" {
                let mut ready = Vec::new();
                for c in have {
                    match backend_addr(&c) {
                        Some(addr) if accepts(addr).await => ready.push(c),
                        _ => stale.push(c),
                    }
                }
                have = ready;
            }
            while have.len() > *want {
                stale.extend(have.pop());
            }
            while have.len() < *want {
                match self.start(&release, process).await {
                    Ok(c) => have.push(c),
                    Err(e) => {
                        self.event(
                            app,
                            "deploy",
                            &format!("{label} {process} did not start: {e}"),
                        )
                        .await;
                        if status == ReleaseStatus::Pending && process == "web" {
                            self.db
                                .set_release_status(app, release.version, ReleaseStatus::Failed)
                                .await
                                .map_err(|e| e.to_string())?;
                            // The previous release, if any, is the target again: make sure it runs.
                            let _ = self.again.send(Event::Released(app.clone()));
                        }
                        return Err(format!("{label} {process}: {e}"));
                    }
                }
            }
            if process == "web" {
                backends = have.iter().filter_map(backend_addr).collect();
            }
        }
        let route = self.served(app, backends).await?;
        self.set_route(app, Some(route));
        if status == ReleaseStatus::Pending {
            self.db
                .set_release_status(app, release.version, ReleaseStatus::Deployed)
                .await
                .map_err(|e| e.to_string())?;
            info!(app = %app, release = %label, "deploy: serving");
            self.event(app, "deploy", &format!("{label} is serving"))
                .await;
        }
        // Old instances leave the routes first, finish what they were doing, then stop.
        if !stale.is_empty() {
            tokio::time::sleep(self.config.drain).await;
            self.retire(stale).await;
        }
        Ok(())
    }

    /// How to serve `app` with `backends`: its host names (`<app>.<domain>` and its custom
    /// domains) and whether it is in maintenance mode.
    async fn served(&self, app: &AppName, backends: Vec<SocketAddr>) -> Result<Served, String> {
        let mut hosts = vec![format!("{app}.{}", self.config.domain)];
        hosts.extend(self.db.domains(app).await.map_err(|e| e.to_string())?);
        let maintenance = self.db.maintenance(app).await.map_err(|e| e.to_string())?;
        Ok(Served {
            hosts,
            backends,
            maintenance,
        })
    }

    /// Starts one instance of `process`. A web instance gets `PORT` published and counts as
    /// started only once it accepts connections.
    async fn start(&self, release: &Release, process: &str) -> Result<Container, String> {
        let image = release.image.as_deref().ok_or("release has no image")?;
        self.engine
            .pull(image, &self.config.registry)
            .await
            .map_err(|e| e.to_string())?;
        let env = container_env(release, process);
        let web = process == "web";
        let cmd = match release.processes.get(process) {
            Some(command) => vec!["/bin/sh".into(), "-c".into(), command.clone()],
            // A web process without a command runs the image's own (Dockerfile builds).
            None => Vec::new(),
        };
        let spec = ContainerSpec {
            name: format!(
                "slipway-{}-{}-{process}-{}-{:08x}",
                short(&self.config.instance_id),
                release.app,
                release.label(),
                rand::random::<u32>()
            ),
            image: image.to_owned(),
            cmd,
            env,
            labels: HashMap::from([
                (LABEL_INSTANCE.to_owned(), self.config.instance_id.clone()),
                (LABEL_APP.to_owned(), release.app.to_string()),
                (LABEL_PROCESS.to_owned(), process.to_owned()),
                (LABEL_RELEASE.to_owned(), release.label()),
            ]),
            publish: web.then_some(APP_PORT),
            memory_bytes: None,
        };
        let container = self.engine.run(&spec).await.map_err(|e| e.to_string())?;
        if !web {
            return Ok(container);
        }
        let Some(addr) = backend_addr(&container) else {
            self.retire(vec![container]).await;
            return Err("the instance has no network address".into());
        };
        let deadline = tokio::time::Instant::now() + self.config.ready_timeout;
        loop {
            if accepts(addr).await {
                return Ok(container);
            }
            let still_running = match self.engine.container(&container.id).await {
                Ok(c) => c.is_some_and(|c| c.running),
                // The engine did not answer: keep waiting until the deadline.
                Err(_) => true,
            };
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

    async fn event(&self, app: &AppName, kind: &str, detail: &str) {
        if let Err(e) = self.db.add_event(Some(app), kind, "slipway", detail).await {
            warn!("events: recording {kind}: {e}");
        }
    }

    async fn retire(&self, containers: Vec<Container>) {
        for c in containers {
            if let Err(e) = self.engine.remove(&c.id, Duration::from_secs(10)).await {
                warn!(container = %c.name, "deploy: removing: {e}");
            }
        }
    }

    /// Sets the app's host names and ready backends (`None` removes the app's routes) and
    /// publishes the table when that changed anything.
    fn set_route(&self, app: &AppName, route: Option<Served>) {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match route {
            Some(r) => ready.insert(app.clone(), r.clone()) != Some(r),
            None => ready.remove(app).is_some(),
        };
        if changed {
            let mut table = RouteTable::default();
            for (app, served) in ready.iter() {
                table.insert(
                    served.hosts.clone(),
                    AppRoute::new(app.clone(), served.backends.clone())
                        .with_maintenance(served.maintenance),
                );
            }
            self.routes.publish(table);
        }
    }
}

/// The environment of every container of `release` running `process`: the config vars, then
/// the platform's own variables, which config cannot override.
pub fn container_env(release: &Release, process: &str) -> Vec<String> {
    let mut env: Vec<String> = release
        .config
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.push(format!("PORT={APP_PORT}"));
    env.push(format!("SLIPWAY_APP={}", release.app));
    env.push(format!("SLIPWAY_RELEASE={}", release.label()));
    env.push(format!("SLIPWAY_PROCESS={process}"));
    env
}

/// How many instances of each process type should run: the formation's explicit quantities,
/// else web=1 and 0 for the rest. Only types the release defines (and web, which may run the
/// image's own command) are considered.
pub fn desired_formation(
    release: &Release,
    formation: &BTreeMap<String, i64>,
) -> BTreeMap<String, usize> {
    let mut types: Vec<&String> = release.processes.keys().collect();
    let web = "web".to_owned();
    if !types.contains(&&web) && release.processes.is_empty() {
        types.push(&web);
    }
    types
        .into_iter()
        .map(|t| {
            let default = if t == "web" { 1 } else { 0 };
            let n = formation.get(t).copied().unwrap_or(default).max(0) as usize;
            (t.clone(), n)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn release(processes: &[(&str, &str)]) -> Release {
        Release {
            app: "a".parse().unwrap(),
            version: 1,
            image: Some("img".into()),
            config: Default::default(),
            processes: processes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            commit: None,
            description: String::new(),
            created_by: "admin".into(),
            created_at: 0,
        }
    }

    fn check(processes: &[(&str, &str)], formation: &[(&str, i64)], expected: &[(&str, usize)]) {
        let formation = formation.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let got = desired_formation(&release(processes), &formation);
        let expected: BTreeMap<String, usize> =
            expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        assert_eq!(got, expected, "{processes:?} {formation:?}");
    }

    #[test]
    fn formation_defaults_and_overrides() {
        check(&[("web", "w"), ("worker", "x")], &[], &[("web", 1)]);
        check(
            &[("web", "w"), ("worker", "x")],
            &[("worker", 2)],
            &[("web", 1), ("worker", 2)],
        );
        check(&[("web", "w")], &[("web", 0)], &[]);
        // Types the release does not define never run, whatever the formation says.
        check(&[("web", "w")], &[("clock", 3)], &[("web", 1)]);
        // An image with its own command and no Procfile runs as web.
        check(&[], &[], &[("web", 1)]);
        check(&[("worker", "x")], &[], &[]);
    }
}
