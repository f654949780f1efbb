//! The reconciler: converges the container engine to the releases in the database and keeps the
//! route table in step with the instances that are ready.
//!
//! It is a loop over a closed set of [`Event`]s. Each event names the apps to look at; for each,
//! the loop observes (the target release, the app's containers), compares, and acts: start the
//! target release's instances, wait until each web instance is ready (it accepts connections on
//! `PORT`, or answers the app's health path), route to them, then drain and stop the others. A
//! release whose instance never becomes ready is marked failed and the previous one keeps
//! serving.
//!
//! Crashes: the engine reports each exit of one of our containers, which makes the app's pass
//! run at once. A crashed instance is replaced immediately the first time, then with doubling
//! delays (capped at [`MAX_BACKOFF`]); from the third crash in a row it is reported as a crash
//! loop in the app's events and `ps`. The count starts again after [`CRASH_WINDOW`] without one.
//!
//! Every running container's output is collected into the app's log.
//!
//! Certificates: at start and after every change of an app's certificates, the loop publishes
//! all apps' certificates to the router as one new [`CertTable`] snapshot.
//!
//! Invariant: it only touches containers labelled with its own `slipway.instance` id, and it
//! routes traffic only to instances that accepted a connection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_core::routes::{AppRoute, RouteTable, Routes};
use slipway_core::tls::{CertTable, Certs};
use slipway_core::{AppName, Release};
use slipway_runtime::{
    Container, ContainerSpec, Engine, LABEL_INSTANCE, LABEL_ONEOFF, RegistryAuth,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::db::{Db, Limits, ReleaseStatus};
use crate::logs::AppLogs;

/// Docker label naming the app of a container.
pub const LABEL_APP: &str = "slipway.app";
/// Docker label naming the process type of a container.
pub const LABEL_PROCESS: &str = "slipway.process";
/// Docker label naming the release (`v7`) of a container.
pub const LABEL_RELEASE: &str = "slipway.release";
/// Docker label recording the resource limits a container was started with, so a change of
/// limits replaces it.
pub const LABEL_LIMITS: &str = "slipway.limits";

/// The longest wait before a crashed instance is started again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Crashes further apart than this do not count as a loop.
pub const CRASH_WINDOW: Duration = Duration::from_secs(600);
/// From this many crashes in a row, a process type is reported as crash-looping.
pub const CRASH_LOOP: u32 = 3;

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
    /// The app's instances (of one process type, or all) are to be replaced by fresh ones,
    /// rolling: each new one is ready before the old ones leave the routes.
    Restarted(AppName, Option<String>),
    /// The app's maintenance mode was turned on or off.
    MaintenanceChanged(AppName),
    /// The app's certificates, or its redirect to HTTPS, changed.
    TlsChanged(AppName),
    /// The app was destroyed.
    Destroyed(AppName),
    /// One of the app's instances exited (crashed, or was killed outside Slipway).
    InstanceExited(AppName),
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
    /// The request body limit of the serving release (`SLIPWAY_MAX_BODY_SIZE`).
    max_body: Option<u64>,
    /// Plain HTTP requests are redirected to HTTPS.
    https_enforced: bool,
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
    /// How long an old instance may keep serving requests in flight after it leaves the routes;
    /// it stops as soon as the router has none on it.
    pub drain: Duration,
}

/// The reconciler's state.
pub struct Reconciler {
    db: Db,
    engine: Arc<dyn Engine>,
    routes: Routes,
    certs: Certs,
    config: ReconcilerConfig,
    /// Host names and ready web backends per app; the route table is built from this.
    ready: Mutex<BTreeMap<AppName, Served>>,
    /// Recent crashes per app, release and process type.
    crashes: Arc<CrashBook>,
    /// The app logs, and the containers whose output is being collected into them.
    logs: Arc<AppLogs>,
    collecting: Arc<Mutex<HashSet<String>>>,
    /// Restarts asked for and not yet done: the process type, or `None` for all.
    restarts: Mutex<HashMap<AppName, Option<String>>>,
    /// One lock per app, so two passes over one app never interleave.
    locks: Mutex<HashMap<AppName, Arc<tokio::sync::Mutex<()>>>>,
    /// The loop's own queue, for passes that must run again after this one.
    again: mpsc::UnboundedSender<Event>,
}

/// "exited with status N", as events say how an instance ended.
fn how_it_ended(exit_code: Option<i64>) -> String {
    match exit_code {
        Some(code) => format!("exited with status {code}"),
        None => "exited".to_owned(),
    }
}

/// A certificate with fewer days left than this is reported in the server's log.
const CERT_RENEW_DAYS: i64 = 14;

/// Where the reconciler takes events.
#[derive(Clone)]
pub struct ReconcilerHandle {
    events: mpsc::UnboundedSender<Event>,
    first_pass: tokio::sync::watch::Receiver<bool>,
}

impl ReconcilerHandle {
    /// Queues an event; a no-op once the server is shutting down.
    pub fn send(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Returns once the first pass over every app has ended: instances that survived a restart
    /// of the server are adopted and, when ready, in the route table.
    pub async fn first_pass(&self) {
        let mut done = self.first_pass.clone();
        let _ = done.wait_for(|d| *d).await;
    }
}

/// Crashes of one process type of one release.
#[derive(Debug, Clone, Copy)]
struct Crash {
    /// Crashes in a row, each within [`CRASH_WINDOW`] of the one before.
    count: u32,
    /// When the last one happened.
    at: Instant,
}

impl Crash {
    /// How long after the last crash the next start may happen: at once after the first, then
    /// 1 s, 2 s, 4 s ... up to [`MAX_BACKOFF`].
    fn backoff(&self) -> Duration {
        match self.count {
            0 | 1 => Duration::ZERO,
            n => Duration::from_secs(1u64 << (n - 2).min(16)).min(MAX_BACKOFF),
        }
    }
}

/// What a process type's crashes look like now, for `ps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashStatus {
    /// The process type.
    pub process: String,
    /// The release (`v7`).
    pub release: String,
    /// Crashes in a row.
    pub count: u32,
    /// Seconds until the next start is allowed (0: now).
    pub restart_in: u64,
}

/// Recent crashes, shared between the reconciler and the API's `ps`.
#[derive(Default)]
pub struct CrashBook(Mutex<HashMap<(AppName, String, String), Crash>>);

impl CrashBook {
    /// Records a crash; returns the crashes in a row and the wait before the next start.
    fn record(&self, app: &AppName, release: &str, process: &str) -> (u32, Duration) {
        let mut book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let key = (app.clone(), release.to_owned(), process.to_owned());
        let crash = book.entry(key).or_insert(Crash { count: 0, at: now });
        if now.duration_since(crash.at) > CRASH_WINDOW {
            crash.count = 0;
        }
        crash.count += 1;
        crash.at = now;
        (crash.count, crash.backoff())
    }

    /// How long until `process` of `release` may start again after its last crash, if it must
    /// wait.
    fn wait(&self, app: &AppName, release: &str, process: &str) -> Option<Duration> {
        let book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let crash = book.get(&(app.clone(), release.to_owned(), process.to_owned()))?;
        let left = crash.backoff().saturating_sub(crash.at.elapsed());
        (!left.is_zero()).then_some(left)
    }

    /// The app's process types that crashed within [`CRASH_WINDOW`].
    pub fn status(&self, app: &AppName) -> Vec<CrashStatus> {
        let book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<CrashStatus> = book
            .iter()
            .filter(|((a, _, _), c)| a == app && c.at.elapsed() <= CRASH_WINDOW)
            .map(|((_, release, process), c)| CrashStatus {
                process: process.clone(),
                release: release.clone(),
                count: c.count,
                restart_in: c.backoff().saturating_sub(c.at.elapsed()).as_secs(),
            })
            .collect();
        out.sort_by(|a, b| (&a.process, &a.release).cmp(&(&b.process, &b.release)));
        out
    }

    /// Forgets an app's crashes (it was destroyed).
    fn forget(&self, app: &AppName) {
        let mut book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        book.retain(|(a, _, _), _| a != app);
    }
}

impl Reconciler {
    /// Starts the loop on the current runtime. The first pass runs at once.
    pub fn spawn(
        db: Db,
        engine: Arc<dyn Engine>,
        routes: Routes,
        certs: Certs,
        logs: Arc<AppLogs>,
        crashes: Arc<CrashBook>,
        config: ReconcilerConfig,
    ) -> ReconcilerHandle {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let this = Arc::new(Reconciler {
            db,
            engine,
            routes,
            certs,
            config,
            ready: Mutex::default(),
            crashes,
            logs,
            collecting: Arc::default(),
            restarts: Mutex::default(),
            locks: Mutex::default(),
            again: tx.clone(),
        });
        let (first_pass_tx, first_pass) = tokio::sync::watch::channel(false);
        let handle = ReconcilerHandle {
            events: tx.clone(),
            first_pass,
        };
        tokio::spawn(watch_exits(
            this.engine.clone(),
            this.config.instance_id.clone(),
            tx.clone(),
        ));
        tokio::spawn(async move {
            this.publish_certs().await;
            let mut tick = tokio::time::interval(this.config.tick);
            let mut first_pass = Some(first_pass_tx);
            loop {
                let event = tokio::select! {
                    e = rx.recv() => match e { Some(e) => e, None => return },
                    _ = tick.tick() => Event::Tick,
                };
                let tick = matches!(event, Event::Tick);
                let passes = this.clone().handle(event).await;
                if tick && let Some(done) = first_pass.take() {
                    tokio::spawn(async move {
                        for pass in passes {
                            let _ = pass.await;
                        }
                        let _ = done.send(true);
                    });
                }
            }
        });
        handle
    }

    /// Starts a pass over each app the event concerns; returns the passes.
    async fn handle(self: Arc<Self>, event: Event) -> Vec<tokio::task::JoinHandle<()>> {
        let apps = match event {
            Event::Released(app)
            | Event::Scaled(app)
            | Event::DomainsChanged(app)
            | Event::MaintenanceChanged(app)
            | Event::InstanceExited(app) => vec![app],
            Event::TlsChanged(app) => {
                self.publish_certs().await;
                vec![app]
            }
            Event::Restarted(app, process) => {
                let mut restarts = self.restarts.lock().unwrap_or_else(|e| e.into_inner());
                // Two restarts before a pass: of the same type stays that type, else all.
                let merged = match restarts.get(&app) {
                    Some(queued) if *queued != process => None,
                    _ => process,
                };
                restarts.insert(app.clone(), merged);
                vec![app]
            }
            Event::Destroyed(app) => {
                self.crashes.forget(&app);
                self.publish_certs().await;
                vec![app]
            }
            Event::Tick => match self.all_apps().await {
                Ok(apps) => apps,
                Err(e) => {
                    warn!("reconcile: listing apps: {e}");
                    return Vec::new();
                }
            },
        };
        let mut passes = Vec::with_capacity(apps.len());
        for app in apps {
            let this = self.clone();
            passes.push(tokio::spawn(async move {
                let lock = this.lock_for(&app);
                let Ok(_guard) = lock.try_lock() else {
                    // A pass over this app is running; a release queues behind it instead.
                    let _guard = lock.lock().await;
                    return this.reconcile(&app).await;
                };
                this.reconcile(&app).await
            }));
        }
        passes
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
                Some(self.served(app, Vec::new(), None).await?)
            } else {
                None
            };
            self.set_route(app, route);
            self.retire(containers).await;
            return Ok(());
        };
        let formation = self.db.formation(app).await.map_err(|e| e.to_string())?;
        let desired = desired_formation(&release, &formation);
        let limits = self.db.limits(app).await.map_err(|e| e.to_string())?;
        let health = self.db.health_path(app).await.map_err(|e| e.to_string())?;
        let label = release.label();
        let restart = self
            .restarts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(app);

        // Observe: the running instances of the target release, by process type.
        let mut current: BTreeMap<String, Vec<Container>> = BTreeMap::new();
        let mut stale = Vec::new();
        let after = self.logs.last_timestamp(app);
        for c in containers {
            let process = c.labels.get(LABEL_PROCESS).cloned().unwrap_or_default();
            if c.running {
                self.collect(app, &c, &after);
            }
            let of_target = c.labels.get(LABEL_RELEASE) == Some(&label);
            if !c.running && of_target {
                let how = how_it_ended(c.exit_code);
                self.crashed(app, &label, &process, &format!("instance {} {how}", c.name))
                    .await;
            }
            let limits_now = limits_label(limits.get(&process));
            let restarting = restart
                .as_ref()
                .is_some_and(|only| only.as_ref().is_none_or(|p| *p == process));
            if c.running
                && !restarting
                && of_target
                && desired.contains_key(&process)
                && c.labels.get(LABEL_LIMITS) == Some(&limits_now)
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
                        _ => {
                            // Killed between the listing and the check: the crash it is gets
                            // recorded, or the next pass, finding it removed, never would.
                            if let Some(how) = self.exited(app, &c.id).await {
                                let what = format!("instance {} {how}", c.name);
                                self.crashed(app, &label, process, &what).await;
                            }
                            stale.push(c)
                        }
                    }
                }
                have = ready;
            }
            while have.len() > *want {
                stale.extend(have.pop());
            }
            while have.len() < *want {
                if status != ReleaseStatus::Pending
                    && self.crashes.wait(app, &label, process).is_some()
                {
                    // Backing off after crashes; `crashed` scheduled the pass that starts it.
                    break;
                }
                let started = self
                    .start(&release, process, limits.get(process), health.as_deref())
                    .await;
                match started {
                    Ok(c) => have.push(c),
                    Err(e) if status != ReleaseStatus::Pending => {
                        self.crashed(app, &label, process, &format!("did not start: {e}"))
                            .await;
                        break;
                    }
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
        let route = self.served(app, backends, release.max_body_size()).await?;
        // The route the old instances served from: its in-flight counts tell when they are done.
        let before = self.routes.snapshot().app(app).cloned();
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
            self.drain(before.as_deref(), &stale).await;
            self.retire(stale).await;
        }
        Ok(())
    }

    /// Waits until the router has no request in flight on any of `stale` (counted on `route`,
    /// the route they served from), for at most [`ReconcilerConfig::drain`]. Requests that read
    /// the route table just before it changed are given a moment to show up first.
    async fn drain(&self, route: Option<&AppRoute>, stale: &[Container]) {
        const SETTLE: Duration = Duration::from_millis(100);
        const POLL: Duration = Duration::from_millis(50);
        let deadline = tokio::time::Instant::now() + self.config.drain;
        tokio::time::sleep(SETTLE.min(self.config.drain)).await;
        let Some(route) = route else { return };
        let addrs: Vec<SocketAddr> = stale.iter().filter_map(backend_addr).collect();
        loop {
            let busy: usize = addrs.iter().map(|a| route.in_flight(*a)).sum();
            if busy == 0 {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    app = %route.app,
                    requests = busy,
                    "deploy: drain timed out; stopping instances with requests in flight"
                );
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// How to serve `app` with `backends`: its host names (`<app>.<domain>` and its custom
    /// domains), whether it is in maintenance mode, and its request body limit.
    async fn served(
        &self,
        app: &AppName,
        backends: Vec<SocketAddr>,
        max_body: Option<u64>,
    ) -> Result<Served, String> {
        let mut hosts = vec![format!("{app}.{}", self.config.domain)];
        hosts.extend(self.db.domains(app).await.map_err(|e| e.to_string())?);
        let maintenance = self.db.maintenance(app).await.map_err(|e| e.to_string())?;
        let https_enforced = (self.db.https_enforced(app).await).map_err(|e| e.to_string())?;
        Ok(Served {
            hosts,
            backends,
            maintenance,
            max_body,
            https_enforced,
        })
    }

    /// Publishes every app's certificates to the router as one new snapshot.
    async fn publish_certs(&self) {
        match self.db.tls_certs().await {
            Ok(certs) => {
                let mut table = CertTable::default();
                let now = crate::db::now();
                for cert in certs {
                    // Said at every start and certificate change, where an operator looks.
                    let days = (cert.not_after - now).div_euclid(86_400);
                    if days < CERT_RENEW_DAYS {
                        let when = match days {
                            ..0 => "has expired".to_owned(),
                            0 => "expires within a day".to_owned(),
                            1 => "expires in a day".to_owned(),
                            d => format!("expires in {d} days"),
                        };
                        warn!(
                            code = "cert_expiring",
                            fingerprint = %cert.fingerprint,
                            "tls: the certificate for {} {when}; add a renewed one with certs:add",
                            cert.names.join(",")
                        );
                    }
                    table.insert(cert);
                }
                info!(certs = table.len(), "route: certificates published");
                self.certs.publish(table);
            }
            Err(e) => warn!("route: reading certificates: {e}"),
        }
    }

    /// Records a crash of `process` of release `label`, reports it in the app's events (and, from
    /// the [`CRASH_LOOP`]th in a row, as a crash loop), and schedules the pass that replaces it
    /// once its backoff is over.
    async fn crashed(&self, app: &AppName, label: &str, process: &str, what: &str) {
        let (count, wait) = self.crashes.record(app, label, process);
        let mut detail = format!("{process} {what}");
        if count >= CRASH_LOOP {
            detail.push_str(&format!(
                "; {label} {process} is crash-looping ({count} crashes in a row)"
            ));
        }
        if wait.is_zero() {
            detail.push_str("; starting a new instance now");
        } else {
            detail.push_str(&format!("; starting a new instance in {}s", wait.as_secs()));
            let again = self.again.clone();
            let app = app.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = again.send(Event::InstanceExited(app));
            });
        }
        warn!(app = %app, "crash: {detail}");
        self.event(app, "crash", &detail).await;
    }

    /// Collects a running container's output into the app's log, once per container. Lines at
    /// or before `after` (the log's newest timestamp when the container was found) were
    /// collected before a restart of the server and are skipped.
    fn collect(&self, app: &AppName, c: &Container, after: &str) {
        if c.labels.contains_key(LABEL_ONEOFF) {
            return;
        }
        {
            let mut collecting = self.collecting.lock().unwrap_or_else(|e| e.into_inner());
            if !collecting.insert(c.id.clone()) {
                return;
            }
        }
        let process = c.labels.get(LABEL_PROCESS).map_or("app", String::as_str);
        let source = format!("{process}.{}", short(&c.id));
        let (engine, logs, collecting) = (
            self.engine.clone(),
            self.logs.clone(),
            self.collecting.clone(),
        );
        let (app, id, after) = (app.clone(), c.id.clone(), after.to_owned());
        tokio::spawn(async move {
            let (tx, mut rx) = mpsc::channel(256);
            let follow = {
                let (engine, id) = (engine.clone(), id.clone());
                let since = crate::logs::unix_seconds(&after);
                tokio::spawn(async move { engine.follow_logs(&id, since, tx).await })
            };
            while let Some(line) = rx.recv().await {
                let ts = crate::logs::normalize(&line.timestamp);
                if let Some(ts) = &ts
                    && ts.as_str() <= after.as_str()
                {
                    continue;
                }
                logs.append(&app, &source, ts.as_deref(), &line.text);
            }
            if let Ok(Err(e)) = follow.await {
                warn!(app = %app, container = %id, "logs: following: {e}");
            }
            collecting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    }

    /// Starts one instance of `process` with its `limits`. A web instance gets `PORT`
    /// published and counts as started only once it is ready: it accepts connections, or
    /// answers `health` with 2xx or 3xx when the app has a health path.
    async fn start(
        &self,
        release: &Release,
        process: &str,
        limits: Option<&Limits>,
        health: Option<&str>,
    ) -> Result<Container, String> {
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
                (LABEL_LIMITS.to_owned(), limits_label(limits)),
            ]),
            publish: web.then_some(APP_PORT),
            memory_bytes: limits.and_then(|l| l.memory_bytes),
            nano_cpus: limits.and_then(|l| l.nano_cpus),
        };
        let container = self.engine.run(&spec).await.map_err(|e| e.to_string())?;
        self.collect(&release.app, &container, "");
        if !web {
            return Ok(container);
        }
        let Some(addr) = backend_addr(&container) else {
            self.retire(vec![container]).await;
            return Err("the instance has no network address".into());
        };
        let deadline = tokio::time::Instant::now() + self.config.ready_timeout;
        loop {
            let ready = match health {
                Some(path) => answers(addr, path).await,
                None => accepts(addr).await,
            };
            if ready {
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
                let what = match health {
                    Some(path) => format!("answer {path} with 2xx or 3xx"),
                    None => format!("listen on PORT {APP_PORT}"),
                };
                return Err(format!(
                    "the web process did not {what} within {:?}",
                    self.config.ready_timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn event(&self, app: &AppName, kind: &str, detail: &str) {
        if let Err(e) = self
            .db
            .add_event(Some(app), kind, "slipway", None, detail)
            .await
        {
            warn!("events: recording {kind}: {e}");
        }
        self.logs.append(app, "slipway", None, detail);
    }

    /// How container `id` of `app` ended ("exited with status 137"), if it has.
    async fn exited(&self, app: &AppName, id: &str) -> Option<String> {
        let labels = [
            (LABEL_INSTANCE, self.config.instance_id.as_str()),
            (LABEL_APP, app.as_str()),
        ];
        let containers = self.engine.list(&labels).await.ok()?;
        let c = containers.into_iter().find(|c| c.id == id && !c.running)?;
        Some(how_it_ended(c.exit_code))
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
                        .with_maintenance(served.maintenance)
                        .with_max_body(served.max_body)
                        .with_https_enforced(served.https_enforced),
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

/// The value of [`LABEL_LIMITS`] for `limits`: `memory:cpu`, `-` where there is none.
fn limits_label(limits: Option<&Limits>) -> String {
    let part = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
    let l = limits.copied().unwrap_or_default();
    format!("{}:{}", part(l.memory_bytes), part(l.nano_cpus))
}

/// Follows the exits of this server's containers and makes each one's app reconcile at once.
/// Reconnects when the engine's event stream ends.
async fn watch_exits(
    engine: Arc<dyn Engine>,
    instance: String,
    events: mpsc::UnboundedSender<Event>,
) {
    loop {
        let (tx, mut rx) = mpsc::channel(64);
        let watch = {
            let (engine, instance) = (engine.clone(), instance.clone());
            tokio::spawn(async move {
                engine
                    .watch_exits(&[(LABEL_INSTANCE, instance.as_str())], tx)
                    .await
            })
        };
        while let Some(id) = rx.recv().await {
            // Gone already: Slipway removed it itself.
            let Ok(Some(c)) = engine.container(&id).await else {
                continue;
            };
            if c.labels.contains_key(LABEL_ONEOFF) {
                continue;
            }
            if let Some(app) = c.labels.get(LABEL_APP).and_then(|a| a.parse().ok())
                && events.send(Event::InstanceExited(app)).is_err()
            {
                return;
            }
        }
        if let Ok(Err(e)) = watch.await {
            warn!("reconcile: watching container exits: {e}; reconnecting");
        }
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether an HTTP GET of `path` gets a 2xx or 3xx answer within 2 seconds.
async fn answers(addr: SocketAddr, path: &str) -> bool {
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: slipway-health\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        // `HTTP/1.x NNN`
        let status: u16 = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
        Some(head.starts_with(b"HTTP/1.") && (200..400).contains(&status))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Some(true))
    )
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
