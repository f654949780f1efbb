//! One build, from the pushed source to a serving release: receive → detect → build → export →
//! release → deploy. Progress goes to the pusher as `-----> ` lines; any failure rejects the
//! push and leaves the running release alone.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use slipway_core::ports::BuiltImage;
use slipway_core::{AppName, ProcessTypes, UserName, procfile};
use slipway_runtime::{BuildSpec, LABEL_INSTANCE, RegistryAuth};
use tokio::sync::mpsc;

use crate::export::{self, Target};
use crate::hook::Push;
use crate::{BuildError, Shared};
use crate::{cache, dockerfile};

/// The embedded `/cnb` tree: the lifecycle, the shipped buildpacks and their order.
const CNB_TAR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cnb.tar"));

/// Runs the whole pipeline for one push and sends the verdict to the hook.
pub(crate) async fn run(shared: Arc<Shared>, app: AppName, user: UserName, mut push: Push) {
    let started = Instant::now();
    push.reporter.log_to(shared.releases.clone(), app.clone());
    let lock = shared.build_lock(&app);
    let _guard = match lock.try_lock() {
        Ok(g) => g,
        Err(_) => {
            push.reporter
                .line(&format!(
                    "-----> Another build of {app} is running; waiting for it to finish"
                ))
                .await;
            lock.lock().await
        }
    };
    let result = build(&shared, &app, &user, &mut push).await;
    match result {
        Ok(version) => {
            push.reporter
                .line(&format!(
                    "-----> Launching... done, v{version} ({:.1}s)\n       http://{app}.{} deployed to Slipway",
                    started.elapsed().as_secs_f64(),
                    shared.config.domain
                ))
                .await;
            push.reporter.finish(0).await;
        }
        Err(e) => {
            tracing::info!(app = %app, "build: rejected: {e}");
            push.reporter.line(&format!(" !     {e}")).await;
            push.reporter
                .line(" !     Push rejected; the running release is unchanged.")
                .await;
            push.reporter.finish(1).await;
        }
    }
}

async fn build(
    shared: &Arc<Shared>,
    app: &AppName,
    user: &UserName,
    push: &mut Push,
) -> Result<i64, BuildError> {
    let short: String = push.new.chars().take(7).collect();
    push.reporter
        .line(&format!("-----> Building {app} from {short}"))
        .await;

    // receive: the source, re-owned by the stack's user, and its Procfile.
    let source = push.source.path().to_owned();
    let (workspace_tar, procfile_text) = tokio::task::spawn_blocking(move || own_source(&source))
        .await
        .map_err(|e| BuildError::Receive(e.to_string()))??;
    let procfile: ProcessTypes = match procfile_text {
        Some(text) => procfile::parse(&text).map_err(|e| BuildError::Receive(e.to_string()))?,
        None => ProcessTypes::new(),
    };

    // build: a Dockerfile at the root builds through the Docker Engine instead of buildpacks.
    let source = push.source.path().to_owned();
    if tokio::task::spawn_blocking(move || dockerfile::present(&source))
        .await
        .map_err(|e| BuildError::Receive(e.to_string()))??
    {
        let image = dockerfile::build(shared, app, push, &procfile).await?;
        let built = BuiltImage {
            app: app.clone(),
            image,
            processes: procfile,
            commit: push.new.clone(),
            user: user.clone(),
        };
        return release(shared, push, built).await;
    }

    // detect + build, inside a container of the build image.
    let cache_file = cache::path(&shared.config.data_dir, app);
    let config = shared
        .releases
        .build_config(app)
        .await
        .map_err(|e| BuildError::Build(e.to_string()))?;
    let registry = RegistryAuth {
        server: shared.config.registry_addr.clone(),
        username: shared.config.registry_user.clone(),
        password: shared.config.registry_token.clone(),
    };
    let build_image = crate::in_registry(&shared.config.registry_addr, &shared.config.build_image);
    shared
        .engine
        .pull(&build_image, &registry)
        .await
        .map_err(|e| BuildError::Build(format!("{e}; push the stacks with stacks/push.sh")))?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let spec = BuildSpec {
        name: format!("slipway-build-{app}-{:08x}", rand::random::<u32>()),
        image: build_image,
        cmd: vec!["/cnb/lifecycle/build".into()],
        // SOURCE_DATE_EPOCH makes tools that honour it (pip's .pyc files among them) write the
        // same bytes on every build, so unchanged layers keep their digests.
        env: vec![
            "CNB_PLATFORM_API=0.10".into(),
            format!("SOURCE_DATE_EPOCH={}", export::EPOCH),
        ],
        labels: HashMap::from([
            (LABEL_INSTANCE.to_owned(), shared.config.instance_id.clone()),
            ("slipway.build".to_owned(), app.to_string()),
        ]),
        uploads: [
            Some(("/".to_owned(), CNB_TAR.to_vec())),
            Some(("/workspace".to_owned(), workspace_tar)),
            // The previous build's cache layers, under /cache.
            cache::load(&cache_file).map(|tar| ("/".to_owned(), tar)),
            // Config vars as the CNB platform gives them: one file each in /platform/env.
            Some(("/".to_owned(), platform_env(&config)?)),
        ]
        .into_iter()
        .flatten()
        .collect(),
        memory_bytes: shared.config.build_memory_bytes,
        nano_cpus: shared.config.build_nano_cpus,
        timeout: shared.config.build_timeout,
    };
    let engine = shared.engine.clone();
    let running = tokio::spawn(async move { engine.run_build(spec, tx).await });
    while let Some(chunk) = rx.recv().await {
        push.reporter.output(&chunk).await;
    }
    let (container, code) = running
        .await
        .map_err(|e| BuildError::Build(e.to_string()))?
        .map_err(|e| BuildError::Build(e.to_string()))?;
    let outcome = async {
        match code {
            0 => {}
            100 => return Err(BuildError::Detect("no buildpack detected this app".into())),
            n => return Err(BuildError::Build(format!("the build failed (exit {n})"))),
        }
        // export: copy the result out and push it.
        push.reporter.line("-----> Exporting image").await;
        let scratch =
            tempfile::tempdir_in(&shared.scratch).map_err(|e| BuildError::Export(e.to_string()))?;
        for (path, name) in [("/workspace", "workspace.tar"), ("/layers", "layers.tar")] {
            let dest = scratch.path().join(name);
            shared
                .engine
                .download(&container, path, &dest)
                .await
                .map_err(|e| BuildError::Export(e.to_string()))?;
            let root = scratch.path().join("root");
            tokio::task::spawn_blocking(move || unpack(&dest, &root))
                .await
                .map_err(|e| BuildError::Export(e.to_string()))??;
        }
        let target = Target {
            registry: shared.config.registry_addr.clone(),
            username: shared.config.registry_user.clone(),
            token: shared.config.registry_token.clone(),
        };
        let exported = export::export(
            &scratch.path().join("root"),
            scratch.path(),
            &target,
            &shared.config.run_image,
            app.as_str(),
            &push.new,
            &procfile,
        )
        .await?;
        let (cache_file, layers) = (cache_file.clone(), scratch.path().join("root/layers"));
        tokio::task::spawn_blocking(move || cache::save(&cache_file, &layers))
            .await
            .map_err(|e| BuildError::Export(e.to_string()))?;
        Ok(exported)
    }
    .await;
    let _ = shared
        .engine
        .remove(&container, std::time::Duration::ZERO)
        .await;
    let exported = outcome?;
    push.reporter
        .line(&format!(
            "       {} ({} KiB uploaded)",
            exported.image,
            exported.uploaded.div_ceil(1024)
        ))
        .await;

    // release: Procfile wins over the buildpacks' launch metadata.
    let mut processes = exported.launch_processes;
    processes.extend(procfile);
    if !processes.contains_key("web") {
        push.reporter
            .line("       no web process: add a Procfile with `web: <command>` to serve HTTP")
            .await;
    } else {
        push.reporter
            .line(&format!(
                "-----> Process types: {}",
                processes.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
            .await;
    }
    let built = BuiltImage {
        app: app.clone(),
        image: exported.image,
        processes,
        commit: push.new.clone(),
        user: user.clone(),
    };
    release(shared, push, built).await
}

/// release → deploy: records the release and returns its version once it serves.
async fn release(
    shared: &Arc<Shared>,
    push: &mut Push,
    built: BuiltImage,
) -> Result<i64, BuildError> {
    let app = built.app.clone();
    let release = shared
        .releases
        .release_build(built)
        .await
        .map_err(|e| BuildError::Release(e.to_string()))?;
    push.reporter
        .line(&format!("-----> Releasing v{}", release.version))
        .await;

    // deploy: the push returns once the new release serves, or with why it could not.
    shared
        .releases
        .await_deploy(&app, release.version)
        .await
        .map_err(|e| BuildError::Deploy(e.to_string()))?;
    Ok(release.version)
}

/// `/platform/env/<KEY>` files holding the config vars, readable by the stack user only. Their
/// values are never printed: buildpacks read what they need.
fn platform_env(config: &slipway_core::Config) -> Result<Vec<u8>, BuildError> {
    let err =
        |e: std::io::Error| BuildError::Build(format!("preparing the build environment: {e}"));
    let mut tar = tar::Builder::new(Vec::new());
    for (dir, mode) in [("platform", 0o755), ("platform/env", 0o700)] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(mode);
        header.set_uid(1000);
        header.set_gid(1000);
        header.set_size(0);
        tar.append_data(&mut header, dir, std::io::empty())
            .map_err(err)?;
    }
    for (key, value) in config {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o600);
        header.set_uid(1000);
        header.set_gid(1000);
        header.set_size(value.len() as u64);
        tar.append_data(&mut header, format!("platform/env/{key}"), value.as_bytes())
            .map_err(err)?;
    }
    tar.into_inner().map_err(err)
}

/// Rewrites the `git archive` tar so every entry belongs to the stack user (1000:1000), and
/// returns it with the Procfile's text, if there is one.
fn own_source(source: &Path) -> Result<(Vec<u8>, Option<String>), BuildError> {
    let err = |e: std::io::Error| BuildError::Receive(format!("reading the pushed source: {e}"));
    let mut archive = tar::Archive::new(std::fs::File::open(source).map_err(err)?);
    let mut out = tar::Builder::new(Vec::new());
    let mut procfile = None;
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let mut header = entry.header().clone();
        if matches!(
            header.entry_type(),
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        let path = entry.path().map_err(err)?.into_owned();
        header.set_uid(1000);
        header.set_gid(1000);
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(err)?;
        if path == Path::new("Procfile") {
            procfile = Some(String::from_utf8_lossy(&data).into_owned());
        }
        if header.entry_type() == tar::EntryType::Symlink {
            let target = entry
                .link_name()
                .map_err(err)?
                .unwrap_or_default()
                .into_owned();
            out.append_link(&mut header, &path, target).map_err(err)?;
        } else {
            out.append_data(&mut header, &path, data.as_slice())
                .map_err(err)?;
        }
    }
    Ok((out.into_inner().map_err(err)?, procfile))
}

fn unpack(tar_path: &Path, root: &Path) -> Result<(), BuildError> {
    let err = |e: std::io::Error| BuildError::Export(format!("reading build output: {e}"));
    std::fs::create_dir_all(root).map_err(err)?;
    let mut archive = tar::Archive::new(std::fs::File::open(tar_path).map_err(err)?);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    archive.unpack(root).map_err(err)
}
