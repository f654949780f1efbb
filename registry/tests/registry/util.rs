//! Shared fixtures: a real registry server on 127.0.0.1:0 over a fresh temp directory, a fake
//! identity service, and helpers to push blobs and manifests with reqwest.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use sha2::{Digest as _, Sha256, Sha512};
use slipway_core::ports::{AppAccess, Identity, KeyOwner, PortError};
use slipway_core::{AppName, Fingerprint, UserName};
use slipway_registry::{Registry, RegistryConfig};
use tokio::sync::oneshot;

/// The user every fixture request authenticates as.
pub(crate) const USER: &str = "admin";
/// `USER`'s API token.
pub(crate) const TOKEN: &str = "admin-token";
/// Another user's token, to check that user name and token must match.
pub(crate) const OTHER_TOKEN: &str = "bob-token";

/// The one app `bob` operates; every other app is admin's.
pub(crate) const BOBS_APP: &str = "bobs";

/// Knows two users, `admin` and `bob`, by their tokens.
struct FakeIdentity;

#[async_trait]
impl Identity for FakeIdentity {
    async fn key_owner(&self, _fp: &Fingerprint) -> Result<Option<KeyOwner>, PortError> {
        Ok(None)
    }

    async fn user_by_token(&self, token: &str) -> Result<Option<UserName>, PortError> {
        let user = match token {
            TOKEN => "admin",
            OTHER_TOKEN => "bob",
            _ => return Ok(None),
        };
        Ok(Some(user.parse().expect("user name")))
    }

    async fn app_access(&self, user: &UserName, app: &AppName) -> Result<AppAccess, PortError> {
        Ok(match (user.as_str(), app.as_str()) {
            ("admin", _) | ("bob", BOBS_APP) => AppAccess::Allowed,
            _ => AppAccess::Forbidden,
        })
    }
}

/// A running registry; stops when dropped.
pub(crate) struct Server {
    /// `host:port`, as image references spell the registry.
    pub(crate) host: String,
    /// The storage directory.
    pub(crate) dir: tempfile::TempDir,
    /// The running registry, for its metrics.
    pub(crate) registry: Registry,
    client: reqwest::Client,
    _shutdown: oneshot::Sender<()>,
}

impl Server {
    /// Starts a registry over a fresh storage directory.
    pub(crate) async fn start() -> Server {
        Server::start_with(tempfile::tempdir().expect("temp dir"), |r| r).await
    }

    /// Starts a registry over `dir`'s `registry` subdirectory, as `configure` adjusts it.
    pub(crate) async fn start_with(
        dir: tempfile::TempDir,
        configure: impl FnOnce(Registry) -> Registry,
    ) -> Server {
        let config = RegistryConfig {
            root: dir.path().join("registry"),
            token_key: dir.path().join("token-key"),
        };
        let registry = Registry::new(config, Arc::new(FakeIdentity)).expect("registry");
        let registry = configure(registry);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let host = listener.local_addr().expect("addr").to_string();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(registry.clone().serve(listener, async {
            let _ = rx.await;
        }));
        Server {
            host,
            dir,
            registry,
            client: reqwest::Client::new(),
            _shutdown: tx,
        }
    }

    /// The storage root.
    pub(crate) fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("registry")
    }

    /// Every file in storage but the layout marker: content, links, tags and uploads.
    pub(crate) fn stored_files(&self) -> Vec<String> {
        let mut files = files_under(&self.root());
        files.retain(|f| f != "layout");
        files
    }

    /// An absolute URL for a path or a `Location` header.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host)
    }

    /// A request without credentials.
    pub(crate) fn anonymous(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// A request as `USER`.
    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.anonymous(method, path).basic_auth(USER, Some(TOKEN))
    }

    /// Pushes `data` in one `POST ?digest=` request and returns its digest.
    pub(crate) async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let response = self
            .request(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            )
            .body(data.to_vec())
            .send()
            .await
            .expect("push blob");
        assert_eq!(response.status(), StatusCode::CREATED, "push blob");
        digest
    }

    /// Sends `bytes` as a manifest of `media_type` to `reference` of `repo`.
    pub(crate) async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Response {
        self.request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("put manifest")
    }

    /// Starts an upload session in `repo` and returns its location.
    pub(crate) async fn start_upload(&self, repo: &str) -> String {
        let response = self
            .request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .expect("start upload");
        assert_eq!(response.status(), StatusCode::ACCEPTED, "start upload");
        header(&response, "location")
    }

    /// The status and first OCI error code of the answer to a request without a body.
    pub(crate) async fn error_of(&self, method: Method, path: &str) -> (StatusCode, String) {
        let response = self.request(method, path).send().await.expect("request");
        error_code(response).await
    }

    /// The status of a request without a body to `path`.
    pub(crate) async fn status(&self, method: Method, path: &str) -> StatusCode {
        self.request(method, path)
            .send()
            .await
            .expect("request")
            .status()
    }

    /// Pushes an image manifest of `config` and `layers` (already pushed) under `reference` and
    /// returns the manifest's bytes.
    pub(crate) async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        config: &str,
        layers: &[&str],
    ) -> Vec<u8> {
        let bytes = image_manifest(config, layers);
        let response = self
            .request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", OCI_MANIFEST)
            .body(bytes.clone())
            .send()
            .await
            .expect("push manifest");
        assert_eq!(response.status(), StatusCode::CREATED, "push manifest");
        bytes
    }
}

/// The OCI image manifest media type.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// An OCI image manifest's bytes.
pub(crate) fn image_manifest(config: &str, layers: &[&str]) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|d| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": d,
                "size": 1,
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config,
            "size": 1,
        },
        "layers": layers,
    });
    serde_json::to_vec_pretty(&manifest).expect("json")
}

/// `sha256:<hex>` of `data`.
pub(crate) fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// `sha512:<hex>` of `data`.
pub(crate) fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(data)))
}

/// A response header as a string ("" when absent).
pub(crate) fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header").to_owned())
        .unwrap_or_default()
}

/// The status and first OCI error code of a response.
pub(crate) async fn error_code(response: Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("json error body");
    let code = body["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, code)
}

/// Every file under `dir`, as paths relative to it, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).expect("prefix");
                found.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}
