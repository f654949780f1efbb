//! One build, from the pushed source to a serving release: receive → detect → build → export →
//! release → deploy. Progress goes to the pusher as `-----> ` lines; any failure rejects the
//! push and leaves the running release alone.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use slipway_core::ports::BuiltImage;
use slipway_core::{AppName, Fingerprint, ProcessTypes, UserName, procfile};
use slipway_runtime::{Archive, BuildSpec, LABEL_INSTANCE, RegistryAuth};
use tokio::sync::mpsc;

use crate::export::{self, Target};
use crate::hook::Push;
use crate::{BuildError, Shared};
use crate::{cache, dockerfile};

/// The embedded `/cnb` tree: the lifecycle, the shipped buildpacks and their order.
const CNB_TAR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cnb.tar"));

/// Runs the whole pipeline for one push by `pusher` (the user and the key they authenticated
/// with) and sends the verdict to the hook.
pub(crate) async fn run(
    shared: Arc<Shared>,
    app: AppName,
    pusher: (UserName, Fingerprint),
    mut push: Push,
) {
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
    let result = build(&shared, &app, &pusher, &mut push).await;
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
    (user, key): &(UserName, Fingerprint),
    push: &mut Push,
) -> Result<i64, BuildError> {
    let short: String = push.new.chars().take(7).collect();
    push.reporter
        .line(&format!("-----> Building {app} from {short}"))
        .await;

    // receive: the source, re-owned by the stack's user, and its Procfile.
    let (original, scratch) = (push.source.path().to_owned(), shared.scratch.clone());
    let source = tokio::task::spawn_blocking(move || own_source(&original, &scratch))
        .await
        .map_err(|e| BuildError::Receive(e.to_string()))??;
    let procfile: ProcessTypes = match &source.procfile {
        Some(text) => procfile::parse(text).map_err(|e| BuildError::Receive(e.to_string()))?,
        None => ProcessTypes::new(),
    };

    // build: a Dockerfile at the root builds through the Docker Engine instead of buildpacks.
    if let Some(found) = source.dockerfile.clone() {
        let tar = source.tar.path().to_owned();
        let text = tokio::task::spawn_blocking(move || read_dockerfile(&tar, found))
            .await
            .map_err(|e| BuildError::Receive(e.to_string()))??;
        let image = dockerfile::build(
            shared,
            app,
            (user, key),
            push,
            source.tar.path(),
            &text,
            &procfile,
        )
        .await?;
        let built = BuiltImage {
            app: app.clone(),
            image,
            processes: procfile,
            commit: push.new.clone(),
            user: user.clone(),
            key: key.clone(),
        };
        return release(shared, push, built).await;
    }

    // detect + build, inside a container of the build image.
    let cache_file = cache::path(&shared.config.data_dir, app);
    let layers_file = slipway_core::layout::launch_layers_path(&shared.config.data_dir, app);
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
    let hint = "push the stacks with stacks/push.sh";
    let target = Target {
        registry: shared.config.registry_addr.clone(),
        username: shared.config.registry_user.clone(),
        token: shared.config.registry_token.clone(),
    };
    let build_image = export::pinned(&target, &shared.config.build_image)
        .await
        .map_err(|e| {
            BuildError::Build(format!(
                "build image {}: {e}; {hint}",
                shared.config.build_image
            ))
        })?;
    shared
        .engine
        .pull(&build_image, &registry)
        .await
        .map_err(|e| BuildError::Build(format!("{e}; {hint}")))?;
    let previous = cache::previous_launch_layers(&layers_file, &build_image);
    let launch_metadata =
        cache::launch_metadata(&previous).map_err(|e| BuildError::Build(e.to_string()))?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let build_image_name = build_image.clone();
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
        // The source and the cache stream from their files: a push's size never reaches memory.
        uploads: [
            Some((
                "/workspace".to_owned(),
                Archive::File(source.tar.path().to_owned()),
            )),
            // The rest all go to /, in one request to the engine.
            Some(("/".to_owned(), Archive::Bytes(Bytes::from_static(CNB_TAR)))),
            // The previous image's launch layers, metadata only, then the previous build's
            // cache layers, under /cache.
            Some(("/".to_owned(), Archive::Bytes(launch_metadata.into()))),
            cache::load(&cache_file).map(|tar| ("/".to_owned(), Archive::File(tar))),
            // Config vars as the CNB platform gives them: one file each in /platform/env.
            Some((
                "/".to_owned(),
                Archive::Bytes(platform_env(&config)?.into()),
            )),
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
    let exit = running
        .await
        .map_err(|e| BuildError::Build(e.to_string()))?
        .map_err(|e| BuildError::Build(e.to_string()))?;
    let container = exit.container.clone();
    let outcome = async {
        match exit.code {
            0 => {}
            _ if exit.out_of_memory => {
                return Err(BuildError::Build(out_of_memory(
                    shared.config.build_memory_bytes,
                )));
            }
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
        let exported = export::export(
            &scratch.path().join("root"),
            scratch.path(),
            &target,
            &shared.config.run_image,
            app.as_str(),
            &push.new,
            &procfile,
            &previous,
        )
        .await;
        let exported = match exported {
            Ok(exported) => exported,
            Err(e) => {
                // The next build starts afresh rather than trip over the same layers.
                cache::clear_launch_layers(&layers_file);
                return Err(e);
            }
        };
        let (cache_file, layers) = (cache_file.clone(), scratch.path().join("root/layers"));
        let (layers_file, records) = (layers_file.clone(), exported.launch_layers.clone());
        let build_image = build_image_name.clone();
        tokio::task::spawn_blocking(move || {
            cache::save(&cache_file, &layers);
            cache::save_launch_layers(&layers_file, &build_image, records);
        })
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
    let reused = match exported.reused {
        0 => String::new(),
        1 => ", 1 layer reused".to_owned(),
        n => format!(", {n} layers reused"),
    };
    push.reporter
        .line(&format!(
            "       {} ({} KiB uploaded{reused})",
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
        key: key.clone(),
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

/// What the pusher is told when the kernel stopped the build for its memory.
pub(crate) fn out_of_memory(limit: i64) -> String {
    format!(
        "the build ran out of memory (limit {} MiB); the server's SLIPWAY_BUILD_MEMORY sets it",
        limit >> 20
    )
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

/// The pushed source as the build gets it.
struct Source {
    /// The `git archive` tar with every entry owned by the stack user, in the scratch directory.
    tar: tempfile::NamedTempFile,
    /// The Procfile's text, if there is one at the root.
    procfile: Option<String>,
    /// The `Dockerfile` at the root, if there is one.
    dockerfile: Option<Dockerfile>,
}

/// The root `Dockerfile` as the archive holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dockerfile {
    /// A file, and its text.
    Text(String),
    /// A symbolic link, and where it points.
    Link(PathBuf),
}

/// The largest Procfile read: a few lines of commands, never the size of a push.
const PROCFILE_MAX: u64 = 64 * 1024;

/// The largest Dockerfile read, to check the images it names before the engine sees it.
const DOCKERFILE_MAX: u64 = 1024 * 1024;

/// How many symbolic links a `Dockerfile` is followed through.
const DOCKERFILE_LINKS: usize = 8;

/// The bytes of a file entry that must be small enough to read, or why not.
fn small_file(
    entry: &mut impl Read,
    size: u64,
    name: &str,
    max: u64,
) -> Result<Vec<u8>, BuildError> {
    if size > max {
        return Err(BuildError::Receive(format!(
            "the {name} is larger than {} KiB",
            max / 1024
        )));
    }
    let mut data = Vec::new();
    entry
        .read_to_end(&mut data)
        .map_err(|e| BuildError::Receive(format!("reading the {name}: {e}")))?;
    Ok(data)
}

/// The text the engine builds from for `found`: the file itself, or the file its links lead to
/// inside the source (an absolute target starts at its root, as the engine keeps it inside). A
/// link that leads nowhere is refused: the engine would then build from another file. So is a
/// `..` in a link, or a linked directory on the way: the engine resolves those against links this
/// does not follow.
fn read_dockerfile(tar_path: &Path, found: Dockerfile) -> Result<String, BuildError> {
    let mut link = match found {
        Dockerfile::Text(text) => return Ok(text),
        Dockerfile::Link(target) => (PathBuf::from(dockerfile::DOCKERFILE), target),
    };
    let err = |e: std::io::Error| BuildError::Receive(format!("reading the pushed source: {e}"));
    for _ in 0..DOCKERFILE_LINKS {
        let (from, target) = &link;
        if target
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            break;
        }
        let wanted = in_scope(from.parent().unwrap_or(Path::new("")), target);
        let mut archive = tar::Archive::new(std::io::BufReader::new(
            std::fs::File::open(tar_path).map_err(err)?,
        ));
        let mut next = None;
        for entry in archive.entries().map_err(err)? {
            let mut entry = entry.map_err(err)?;
            if in_scope(Path::new(""), &entry.path().map_err(err)?) != wanted {
                continue;
            }
            let kind = entry.header().entry_type();
            next = if kind.is_file() {
                let size = entry.header().size().map_err(err)?;
                let data = small_file(&mut entry, size, "Dockerfile", DOCKERFILE_MAX)?;
                Some(Dockerfile::Text(
                    String::from_utf8_lossy(&data).into_owned(),
                ))
            } else if kind.is_symlink() {
                let target = entry.link_name().map_err(err)?.unwrap_or_default();
                Some(Dockerfile::Link(target.into_owned()))
            } else {
                None
            };
        }
        match next {
            Some(Dockerfile::Text(text)) => return Ok(text),
            Some(Dockerfile::Link(target)) => link = (wanted, target),
            None => break,
        }
    }
    Err(BuildError::Receive(
        "the Dockerfile is a symbolic link that Slipway cannot follow to a file in the source; make it a file"
            .into(),
    ))
}

/// `target`, seen from directory `dir` of the source, as a plain relative path inside the source:
/// an absolute path starts at its root, and `..` (in an entry's own path) stops there.
fn in_scope(dir: &Path, target: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    let start = if target.is_absolute() {
        Path::new("")
    } else {
        dir
    };
    for part in start.components().chain(target.components()) {
        match part {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Rewrites the `git archive` tar at `original` into a file in `scratch` so every entry belongs
/// to the stack user (1000:1000), entry by entry from disk to disk: a push of any size passes
/// through in a buffer's worth of memory. Notes the Procfile and the Dockerfile on the way.
fn own_source(original: &Path, scratch: &Path) -> Result<Source, BuildError> {
    let err = |e: std::io::Error| BuildError::Receive(format!("reading the pushed source: {e}"));
    let input = std::io::BufReader::new(std::fs::File::open(original).map_err(err)?);
    let mut archive = tar::Archive::new(input);
    let tar = tempfile::NamedTempFile::new_in(scratch).map_err(err)?;
    let mut out = tar::Builder::new(std::io::BufWriter::new(tar.reopen().map_err(err)?));
    let (mut procfile, mut dockerfile) = (None, None);
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let mut header = entry.header().clone();
        let kind = header.entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        let path = entry.path().map_err(err)?.into_owned();
        header.set_uid(1000);
        header.set_gid(1000);
        let is_dockerfile = path == Path::new(dockerfile::DOCKERFILE);
        if kind == tar::EntryType::Symlink {
            let target = entry
                .link_name()
                .map_err(err)?
                .unwrap_or_default()
                .into_owned();
            if is_dockerfile {
                dockerfile = Some(Dockerfile::Link(target.clone()));
            }
            out.append_link(&mut header, &path, target).map_err(err)?;
        } else if (path == Path::new("Procfile") || is_dockerfile) && kind.is_file() {
            let size = header.size().map_err(err)?;
            let data = if is_dockerfile {
                small_file(&mut entry, size, "Dockerfile", DOCKERFILE_MAX)?
            } else {
                small_file(&mut entry, size, "Procfile", PROCFILE_MAX)?
            };
            out.append_data(&mut header, &path, data.as_slice())
                .map_err(err)?;
            let text = String::from_utf8_lossy(&data).into_owned();
            if is_dockerfile {
                dockerfile = Some(Dockerfile::Text(text));
            } else {
                procfile = Some(text);
            }
        } else {
            out.append_data(&mut header, &path, &mut entry)
                .map_err(err)?;
        }
    }
    out.into_inner()
        .map_err(err)?
        .into_inner()
        .map_err(|e| err(e.into_error()))?
        .sync_data()
        .map_err(err)?;
    Ok(Source {
        tar,
        procfile,
        dockerfile,
    })
}

fn unpack(tar_path: &Path, root: &Path) -> Result<(), BuildError> {
    let err = |e: std::io::Error| BuildError::Export(format!("reading build output: {e}"));
    std::fs::create_dir_all(root).map_err(err)?;
    let mut archive = tar::Archive::new(std::fs::File::open(tar_path).map_err(err)?);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    archive.unpack(root).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::{Dockerfile, own_source, read_dockerfile};
    use std::path::Path;

    /// A `git archive`-like tar of `files` (a `->` in the data makes a symlink), owned by root.
    fn archive(files: &[(&str, &str)]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut tar = tar::Builder::new(file.reopen().unwrap());
        for (path, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            if let Some(target) = data.strip_prefix("-> ") {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, path, target).unwrap();
            } else {
                header.set_size(data.len() as u64);
                header.set_cksum();
                tar.append_data(&mut header, path, data.as_bytes()).unwrap();
            }
        }
        tar.finish().unwrap();
        file
    }

    fn owned(files: &[(&str, &str)]) -> super::Source {
        let scratch = std::env::temp_dir();
        own_source(archive(files).path(), &scratch).unwrap()
    }

    #[test]
    fn source_is_owned_by_the_stack_user_with_its_contents() {
        let source = owned(&[
            ("Procfile", "web: ./run\n"),
            ("big.bin", &"x".repeat(100_000)),
            ("link", "-> big.bin"),
        ]);
        assert_eq!(source.procfile.as_deref(), Some("web: ./run\n"));
        assert!(source.dockerfile.is_none());
        let mut tar = tar::Archive::new(std::fs::File::open(source.tar.path()).unwrap());
        let mut seen = Vec::new();
        for entry in tar.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (1000, 1000));
            let size = header.size().unwrap();
            let link = entry.link_name().unwrap().map(|l| l.display().to_string());
            seen.push((entry.path().unwrap().display().to_string(), size, link));
        }
        assert_eq!(
            seen,
            [
                ("Procfile".to_owned(), 11, None),
                ("big.bin".to_owned(), 100_000, None),
                ("link".to_owned(), 0, Some("big.bin".to_owned())),
            ]
        );
    }

    #[test]
    fn dockerfile_only_at_the_root() {
        assert_eq!(
            owned(&[("app.py", ""), ("Dockerfile", "FROM scratch\n")]).dockerfile,
            Some(Dockerfile::Text("FROM scratch\n".into()))
        );
        assert!(
            owned(&[("docker/Dockerfile", "FROM scratch\n"), ("Procfile", "")])
                .dockerfile
                .is_none()
        );
        assert!(
            owned(&[("dockerfile", "FROM scratch\n")])
                .dockerfile
                .is_none()
        );
    }

    /// The text the engine would build from, for a source of `files`.
    fn dockerfile_text(files: &[(&str, &str)]) -> Result<String, String> {
        let source = owned(files);
        let found = source.dockerfile.clone().expect("a Dockerfile");
        read_dockerfile(source.tar.path(), found).map_err(|e| e.to_string())
    }

    #[test]
    fn a_linked_dockerfile_is_read_where_the_engine_reads_it() {
        let real = "FROM debian\n";
        // Through links, relative and absolute, with `..` kept inside the source.
        for files in [
            vec![("Dockerfile", "-> docker/real"), ("docker/real", real)],
            vec![("docker/real", real), ("Dockerfile", "-> /docker/real")],
            vec![
                ("Dockerfile", "-> ./docker/link"),
                ("docker/link", "-> real"),
                ("docker/real", real),
            ],
        ] {
            assert_eq!(dockerfile_text(&files).as_deref(), Ok(real), "{files:?}");
        }
        // A link that leads nowhere (the engine would then read `dockerfile`), or round in
        // circles, is refused.
        for files in [
            vec![("Dockerfile", "-> missing"), ("dockerfile", real)],
            vec![("Dockerfile", "-> a"), ("a", "-> Dockerfile")],
            // Through `..`, a linked directory would take the engine elsewhere.
            vec![
                ("Dockerfile", "-> d/../real"),
                ("d", "-> x/y"),
                ("real", real),
            ],
            vec![("Dockerfile", "-> d/real"), ("d", "-> x"), ("x/real", real)],
        ] {
            let err = dockerfile_text(&files).unwrap_err();
            assert!(
                err.contains("symbolic link that Slipway cannot follow"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_huge_procfile_or_dockerfile_is_refused() {
        for (name, huge) in [
            ("Procfile", "web: x\n".repeat(20_000)),
            ("Dockerfile", "RUN true\n".repeat(120_000)),
        ] {
            let err = own_source(archive(&[(name, &huge)]).path(), Path::new("/tmp"))
                .err()
                .unwrap();
            assert!(
                err.to_string().contains(&format!("{name} is larger")),
                "{err}"
            );
        }
    }
}
