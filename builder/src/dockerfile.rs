//! The build step for an app with a `Dockerfile` at its root: the pushed source is the build
//! context, the Docker Engine builds it (with the build limits and timeout, and only the base
//! images the engine already has or can pull without a login), and the image is pushed to
//! Slipway's registry as `apps/<app>:<commit>`, the repository buildpack builds use, so the
//! release names it by digest. Before the engine sees the Dockerfile, every image it names must
//! pass [`base_images::check`] and the pusher's access to the apps whose images it names, and
//! no image it builds on may carry `ONBUILD` triggers that name images: the engine holds every
//! deployed app's image and would build on it without asking anyone.
//!
//! Config vars become build args only when the config var [`BUILD_ARGS_VAR`] names them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use slipway_core::ports::AppAccess;
use slipway_core::{AppName, Fingerprint, ProcessTypes, UserName};
use slipway_runtime::{Archive, ImageBuild, LABEL_INSTANCE, RegistryAuth};
use tokio::sync::mpsc;

use crate::base_images::{self, Refusal};
use crate::hook::Push;
use crate::{BuildError, Shared};

/// The file whose presence at the root of the source selects a Dockerfile build.
pub(crate) const DOCKERFILE: &str = "Dockerfile";

/// Indentation of the engine's output under the pipeline's `-----> ` lines.
const INDENT: &[u8] = b"       ";

/// The config var that lists which config vars a Dockerfile build gets as build args
/// (comma-separated names); without it, none.
pub(crate) const BUILD_ARGS_VAR: &str = "SLIPWAY_DOCKER_BUILD_ARGS";

/// The build args asked for with [`BUILD_ARGS_VAR`]: those config vars, by name.
fn build_args(config: &slipway_core::Config) -> HashMap<String, String> {
    let Some(wanted) = config.get(BUILD_ARGS_VAR) else {
        return HashMap::new();
    };
    wanted
        .split(',')
        .map(str::trim)
        .filter_map(|k| config.get(k).map(|v| (k.to_owned(), v.clone())))
        .collect()
}

/// Builds the pushed source through its Dockerfile, streaming the engine's output to the pusher,
/// and pushes the image to the registry; returns the image by digest
/// (`<registry>/apps/<app>@sha256:...`). `procfile` only decides what the pusher is told: its
/// process types, or the image's own command as `web`.
pub(crate) async fn build(
    shared: &Arc<Shared>,
    app: &AppName,
    pusher: (&UserName, &Fingerprint),
    push: &mut Push,
    context: &Path,
    dockerfile: &str,
    procfile: &ProcessTypes,
) -> Result<String, BuildError> {
    push.reporter
        .line("-----> Dockerfile app detected; building with the Docker Engine")
        .await;
    let tag = format!("{}/apps/{app}:{}", shared.config.registry_addr, push.new);
    let config = shared
        .releases
        .build_config(app)
        .await
        .map_err(|e| BuildError::Build(e.to_string()))?;
    let build_args = build_args(&config);
    may_use_images(shared, app, pusher, dockerfile, &build_args).await?;
    let build = ImageBuild {
        // Streamed from disk to the engine: the context is as large as the push.
        context: Archive::File(context.to_owned()),
        tag: tag.clone(),
        build_args,
        labels: HashMap::from([
            (LABEL_INSTANCE.to_owned(), shared.config.instance_id.clone()),
            ("slipway.build".to_owned(), app.to_string()),
        ]),
        memory_bytes: shared.config.build_memory_bytes,
        nano_cpus: shared.config.build_nano_cpus,
        timeout: shared.config.build_timeout,
        // No login: the server's is admin's, and with it a pusher's `FROM` could read any
        // app's image in Slipway's registry. Base images that need no login are pulled.
        pull_auth: None,
    };
    let engine = shared.engine.clone();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
    let running = tokio::spawn(async move { engine.build_image(build, tx).await });
    relay(rx, push).await;
    running
        .await
        .map_err(|e| BuildError::Build(e.to_string()))?
        .map_err(|e| BuildError::Build(format!("the Dockerfile build failed: {e}")))?;

    // export: the engine pushes the image; the registry skips layers it has.
    push.reporter
        .line("-----> Exporting image to the registry")
        .await;
    let auth = RegistryAuth {
        server: shared.config.registry_addr.clone(),
        username: shared.config.registry_user.clone(),
        password: shared.config.registry_token.clone(),
    };
    let engine = shared.engine.clone();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
    let pushing = tokio::spawn(async move { engine.push_image(&tag, &auth, tx).await });
    relay(rx, push).await;
    let digest = pushing
        .await
        .map_err(|e| BuildError::Export(e.to_string()))?
        .map_err(|e| BuildError::Export(e.to_string()))?;
    let image = format!("{}/apps/{app}@{digest}", shared.config.registry_addr);
    push.reporter.line(&format!("       {image}")).await;
    let processes = if procfile.is_empty() {
        "web (the image's own command)".to_owned()
    } else {
        procfile.keys().cloned().collect::<Vec<_>>().join(", ")
    };
    push.reporter
        .line(&format!("-----> Process types: {processes}"))
        .await;
    Ok(image)
}

/// Refuses the build unless every image `dockerfile` names is one the pusher may read: public
/// images, stack images, and the images of apps the pusher has access to (with a deploy key,
/// only its own app's), none of them a base image whose `ONBUILD` triggers name another image.
/// The engine holds every deployed app's image, so this is decided before it sees the
/// Dockerfile, and nothing is pulled for an image refused by name.
async fn may_use_images(
    shared: &Shared,
    app: &AppName,
    (user, key): (&UserName, &Fingerprint),
    dockerfile: &str,
    build_args: &HashMap<String, String>,
) -> Result<(), BuildError> {
    let refused = |r: Refusal| BuildError::Build(r.to_string());
    let images = base_images::check(dockerfile, build_args, &shared.config.registry_addr)
        .map_err(refused)?;
    let failed = |e: slipway_core::ports::PortError| BuildError::Build(e.to_string());
    let mut deploy_key = None;
    if images.apps.iter().any(|i| i.app != *app) {
        deploy_key = shared
            .identity
            .key_owner(key)
            .await
            .map_err(failed)?
            .and_then(|owner| owner.app);
    }
    for image in &images.apps {
        let allowed = image.app == *app
            || (deploy_key.is_none()
                && shared
                    .identity
                    .app_access(user, &image.app)
                    .await
                    .map_err(failed)?
                    == AppAccess::Allowed);
        if !allowed {
            return Err(refused(Refusal::no_access(image)));
        }
    }
    // The engine runs a base image's ONBUILD triggers right after its FROM, and a trigger's
    // `COPY --from` reads whatever image it names: so each base image is made present here
    // (pulled without a login, as the build would) and its triggers read. The build is never
    // asked to pull, so it uses these very images: a tag the engine holds changes only by a
    // pull of it while missing, so the images it copies from are made present too (the build
    // then pulls nothing), and pulls wait for each other (two pulls of one missing tag could
    // get two images from a registry, the later one landing after the earlier was read).
    let _pulling = PULLS.lock().await;
    for (image, base) in images
        .bases
        .iter()
        .map(|b| (b, true))
        .chain(images.sources.iter().map(|s| (s, false)))
    {
        shared
            .engine
            .pull(&image.reference, &RegistryAuth::none())
            .await
            .map_err(|e| refused(Refusal::unavailable(image, &e.to_string())))?;
        if !base {
            continue;
        }
        let triggers = shared
            .engine
            .image_triggers(&image.reference)
            .await
            .map_err(|e| BuildError::Build(e.to_string()))?;
        if let Some(trigger) = base_images::naming_trigger(&triggers) {
            return Err(refused(Refusal::triggers(image, trigger)));
        }
    }
    Ok(())
}

/// Held while the images of one Dockerfile build are pulled and read.
static PULLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sends the engine's output to the pusher as it comes, indented under the pipeline's lines.
async fn relay(mut rx: mpsc::Receiver<Vec<u8>>, push: &mut Push) {
    let mut at_line_start = true;
    while let Some(chunk) = rx.recv().await {
        push.reporter
            .output(&indent(&chunk, &mut at_line_start))
            .await;
    }
    if !at_line_start {
        push.reporter.output(b"\n").await;
    }
}

/// `chunk` with [`INDENT`] before every line that starts in it; `at_line_start` carries whether
/// the previous chunk ended a line.
fn indent(chunk: &[u8], at_line_start: &mut bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + INDENT.len());
    for &b in chunk {
        if *at_line_start {
            out.extend_from_slice(INDENT);
        }
        out.push(b);
        *at_line_start = b == b'\n';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{BUILD_ARGS_VAR, build_args, indent};

    #[test]
    fn build_args_only_when_asked() {
        let mut config = slipway_core::Config::new();
        config.insert("SECRET".into(), "s".into());
        config.insert("VERSION".into(), "7".into());
        assert!(build_args(&config).is_empty());
        config.insert(BUILD_ARGS_VAR.into(), "VERSION, MISSING".into());
        let args = build_args(&config);
        assert_eq!(args.len(), 1);
        assert_eq!(args["VERSION"], "7");
    }

    #[test]
    fn indents_lines_across_chunks() {
        let mut start = true;
        let mut out = indent(b"Step 1/2 : FROM x\n ---> ab", &mut start);
        out.extend(indent(b"c\nStep 2/2", &mut start));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "       Step 1/2 : FROM x\n        ---> abc\n       Step 2/2"
        );
        assert!(!start);
    }
}
