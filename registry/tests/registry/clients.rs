//! Real clients against the registry: `oci-client`, which the builder pushes with, and `skopeo`.

use std::path::Path;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use reqwest::Method;
use serde_json::{Value, json};

use crate::util::{OCI_MANIFEST, Server, TOKEN, USER, header, sha256};

async fn oci_push_and_pull(monolithic: bool) {
    let server = Server::start().await;
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        use_monolithic_push: monolithic,
        ..Default::default()
    });
    let auth = RegistryAuth::Basic(USER.to_owned(), TOKEN.to_owned());
    let reference: Reference = format!("{}/slipway/app:v1", server.host)
        .parse()
        .expect("reference");
    // Larger than oci-client's 4 MiB chunk, so a chunked push takes several PATCHes.
    let layer: Vec<u8> = (0..9 * 1024 * 1024u32).map(|i| (i % 241) as u8).collect();
    let layers = vec![ImageLayer::oci_v1(layer.clone(), None)];
    let config = Config::oci_v1(br#"{"architecture":"amd64","os":"linux"}"#.to_vec(), None);
    client
        .push(&reference, &layers, config, &auth, None)
        .await
        .expect("push");

    let image = client
        .pull(&reference, &auth, vec![IMAGE_LAYER_MEDIA_TYPE])
        .await
        .expect("pull");
    assert_eq!(image.layers.len(), 1);
    assert!(image.layers[0].data[..] == layer[..], "layer round-trips");
    let digest = image.digest.expect("manifest digest");
    let response = server
        .request(Method::HEAD, &format!("/v2/slipway/app/manifests/{digest}"))
        .send()
        .await
        .expect("head");
    assert_eq!(header(&response, "docker-content-digest"), digest);
}

#[tokio::test]
async fn oci_client_chunked_push_and_pull() {
    oci_push_and_pull(false).await;
}

#[tokio::test]
async fn oci_client_monolithic_push_and_pull() {
    oci_push_and_pull(true).await;
}

/// Writes a one-layer OCI image layout under `dir` tagged `v1`; returns the config digest.
async fn write_oci_layout(dir: &Path) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs dir");
    let content = dir.join("content");
    std::fs::create_dir_all(&content).expect("content dir");
    std::fs::write(content.join("hello.txt"), "hello from skopeo\n").expect("file");
    let tar = dir.join("layer.tar");
    let status = tokio::process::Command::new("tar")
        .arg("-C")
        .arg(&content)
        .arg("-cf")
        .arg(&tar)
        .arg("hello.txt")
        .status()
        .await
        .expect("run tar");
    assert!(status.success(), "tar failed");
    let layer = std::fs::read(&tar).expect("layer");

    let put = |bytes: &[u8]| {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(&digest[7..]), bytes).expect("blob");
        (digest, bytes.len())
    };
    let (layer_digest, layer_size) = put(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .expect("json");
    let (config_digest, config_size) = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }],
    }))
    .expect("json");
    let (manifest_digest, manifest_size) = put(&manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "v1"},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    config_digest
}

async fn skopeo(args: &[&str]) {
    let output = tokio::process::Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .await
        .expect("run skopeo");
    assert!(
        output.status.success(),
        "skopeo {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Copies `from` to `to` with skopeo, as `USER`, on whichever side is this registry; `all`
/// copies every architecture of an index.
async fn skopeo_copy(from: &str, to: &str, all: bool) {
    let creds = format!("{USER}:{TOKEN}");
    let side = if to.starts_with("docker://") {
        "dest"
    } else {
        "src"
    };
    let (tls, creds_flag) = (
        format!("--{side}-tls-verify=false"),
        format!("--{side}-creds"),
    );
    let mut args = vec!["copy", tls.as_str(), creds_flag.as_str(), &creds, from, to];
    if all {
        args.insert(1, "--all");
    }
    skopeo(&args).await;
}

#[tokio::test]
async fn skopeo_round_trip() {
    if !skopeo_available().await {
        println!("skipping skopeo_round_trip: skopeo is not installed");
        return;
    }
    let server = Server::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let source = work.path().join("source");
    let config_digest = write_oci_layout(&source).await;
    let remote = format!("docker://{}/skopeo/nested/image:v1", server.host);

    skopeo_copy(&format!("oci:{}:v1", source.display()), &remote, false).await;

    // skopeo compresses uncompressed layers on the way to a registry, so the pushed manifest
    // differs from the source; what the registry stored must come back unchanged.
    let response = server
        .request(Method::GET, "/v2/skopeo/nested/image/manifests/v1")
        .send()
        .await
        .expect("get");
    assert_eq!(header(&response, "content-type"), OCI_MANIFEST);
    let pushed_digest = header(&response, "docker-content-digest");
    let pushed = response.bytes().await.expect("body").to_vec();
    assert_eq!(pushed_digest, sha256(&pushed));
    let pushed_manifest: Value = serde_json::from_slice(&pushed).expect("json");
    assert_eq!(pushed_manifest["config"]["digest"], json!(config_digest));

    let back = work.path().join("back");
    skopeo_copy(&remote, &format!("oci:{}:v1", back.display()), false).await;
    let index: Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).expect("index"))
            .expect("json");
    assert_eq!(index["manifests"][0]["digest"], json!(pushed_digest));
    let blob = |digest: &str| {
        std::fs::read(back.join("blobs/sha256").join(&digest[7..])).expect("blob in layout")
    };
    assert_eq!(
        blob(&pushed_digest),
        pushed,
        "manifest bytes survive the round trip"
    );
    let layer_digest = pushed_manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer");
    std::fs::write(work.path().join("layer"), blob(layer_digest)).expect("layer");
    let listing = tokio::process::Command::new("tar")
        .arg("-tf")
        .arg(work.path().join("layer"))
        .output()
        .await
        .expect("run tar");
    assert_eq!(String::from_utf8_lossy(&listing.stdout), "hello.txt\n");
}

/// Writes an OCI image layout under `dir` whose tag `v1` is an index of one image per
/// architecture, with gzip layers so that skopeo copies every manifest unchanged. Returns the
/// index's bytes.
async fn write_multi_arch_layout(dir: &Path) -> Vec<u8> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs dir");
    let put = |bytes: &[u8]| {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(&digest[7..]), bytes).expect("blob");
        json!({"digest": digest, "size": bytes.len()})
    };
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let content = dir.join(arch);
        std::fs::create_dir_all(&content).expect("content dir");
        std::fs::write(content.join("arch.txt"), arch).expect("file");
        let tar = dir.join(format!("{arch}.tar.gz"));
        let status = tokio::process::Command::new("tar")
            .arg("-C")
            .arg(&content)
            .arg("-czf")
            .arg(&tar)
            .arg("arch.txt")
            .status()
            .await
            .expect("run tar");
        assert!(status.success(), "tar failed");
        let mut layer = put(&std::fs::read(&tar).expect("layer"));
        layer["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+gzip");
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
        }))
        .expect("json");
        let mut config = put(&config);
        config["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": [layer],
        }))
        .expect("json");
        let mut child = put(&manifest);
        child["mediaType"] = json!(OCI_MANIFEST);
        child["platform"] = json!({"architecture": arch, "os": "linux"});
        children.push(child);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": children,
    }))
    .expect("json");
    let mut top = put(&index);
    top["mediaType"] = json!(OCI_INDEX);
    top["annotations"] = json!({"org.opencontainers.image.ref.name": "v1"});
    let layout = json!({"schemaVersion": 2, "manifests": [top]});
    std::fs::write(dir.join("index.json"), layout.to_string()).expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    index
}

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[tokio::test]
async fn skopeo_multi_arch_round_trip_and_delete() {
    if !skopeo_available().await {
        println!("skipping skopeo_multi_arch_round_trip_and_delete: skopeo is not installed");
        return;
    }
    let server = Server::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let source = work.path().join("source");
    let index = write_multi_arch_layout(&source).await;
    let remote = format!("docker://{}/multi/arch:v1", server.host);

    skopeo_copy(&format!("oci:{}:v1", source.display()), &remote, true).await;
    let response = server
        .request(Method::GET, "/v2/multi/arch/manifests/v1")
        .send()
        .await
        .expect("get");
    assert_eq!(header(&response, "content-type"), OCI_INDEX);
    assert_eq!(response.bytes().await.expect("body").to_vec(), index);

    // Every architecture comes back, byte for byte.
    let back = work.path().join("back");
    skopeo_copy(&remote, &format!("oci:{}:v1", back.display()), true).await;
    let parsed: Value = serde_json::from_slice(&index).expect("json");
    for child in parsed["manifests"].as_array().expect("children") {
        let digest = child["digest"].as_str().expect("digest");
        let source_bytes = std::fs::read(source.join("blobs/sha256").join(&digest[7..]));
        let back_bytes = std::fs::read(back.join("blobs/sha256").join(&digest[7..]));
        assert_eq!(
            back_bytes.expect("child manifest pulled"),
            source_bytes.expect("source")
        );
    }

    // skopeo deletes by digest; the tag goes with the manifest.
    let creds = format!("{USER}:{TOKEN}");
    skopeo(&["delete", "--tls-verify=false", "--creds", &creds, &remote]).await;
    assert_eq!(
        server
            .status(Method::GET, "/v2/multi/arch/manifests/v1")
            .await,
        reqwest::StatusCode::NOT_FOUND
    );
}

async fn skopeo_available() -> bool {
    tokio::process::Command::new("skopeo")
        .arg("--version")
        .output()
        .await
        .is_ok_and(|o| o.status.success())
}
