//! The HTTP face of the registry: one axum route for `/v2/*` (and `/metrics`), authentication,
//! and a handler per endpoint that turns a request into a storage call and the result into an
//! OCI response.
//!
//! Owns: methods, headers, query parameters, status codes and body streaming. Must not: touch the
//! filesystem (that is [`crate::storage`]), parse paths (that is [`crate::route`]), or build
//! error bodies (that is [`crate::error`]).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, HttpBody as _};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use serde_json::json;
use slipway_core::ports::Identity;

use crate::auth;
use crate::error::RegistryError;
use crate::manifest::{self, MAX_MANIFEST_BYTES, ManifestError, OCI_INDEX};
use crate::metrics::{self, Counters};
use crate::names::{Algorithm, Digest, Reference, RepoName, UploadId};
use crate::route::{self, Route};
use crate::storage::{Storage, StorageError};
use crate::token::{Claims, LIFETIME, SERVICE, Scope, TokenKey};

/// Why a request was refused before it reached storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No credentials, or credentials that name no user.
    #[error(
        "authentication required: log in with a Slipway user name and API token (HTTP Basic, or a bearer token from /v2/token)"
    )]
    Unauthorized,
    /// A bearer token that is malformed, forged, expired or for another service.
    #[error("invalid bearer token: {0}")]
    InvalidToken(String),
    /// A valid bearer token that does not grant what the request needs, though its user may.
    #[error("{0}")]
    InsufficientScope(String),
    /// Authenticated, but this user may not do that to this repository.
    #[error("{0}")]
    Denied(String),
    /// A path under `/v2/` that is no Distribution endpoint.
    #[error("no such registry endpoint")]
    NoSuchEndpoint,
    /// An endpoint that does not answer this method.
    #[error("method {method} is not supported on {endpoint}")]
    MethodNotAllowed {
        /// The request's method.
        method: String,
        /// The endpoint, in words.
        endpoint: &'static str,
    },
    /// A query parameter that could not be understood.
    #[error("invalid query: {0}")]
    Query(String),
    /// A `Content-Range` header that is not `<start>-<end>`.
    #[error("invalid Content-Range {0:?}: expected <start>-<end>")]
    ContentRange(String),
    /// A blob upload completed without `?digest=`.
    #[error("missing digest query parameter: finish an upload with ?digest=<algorithm>:<hex>")]
    DigestMissing,
    /// A manifest body that broke off.
    #[error("reading the manifest body: {0}")]
    Body(String),
}

const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

/// What every request handler shares.
pub(crate) struct Shared {
    /// The blob, manifest and tag store.
    pub(crate) storage: Storage,
    /// Who is who, asked on every request that carries Basic credentials.
    pub(crate) identity: Arc<dyn Identity>,
    /// Signs the bearer tokens `/v2/token` issues and checks those requests carry.
    pub(crate) tokens: TokenKey,
    /// Requests and bytes, for [`crate::Registry::metrics`].
    pub(crate) counters: Arc<Counters>,
}

/// The registry's routes. `/v2/*` is routed once and parsed by [`route::parse`], since
/// repository names have any number of components.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v2", any(handle))
        .route("/v2/", any(handle))
        .route("/v2/{*path}", any(handle))
        // A static route wins over the wildcard; `token` alone is no repository path.
        .route("/v2/token", any(handle_token))
        .route("/metrics", any(handle_metrics))
        // Blob bodies stream to disk and may be gigabytes, so axum's 2 MB default must not
        // apply; manifest bodies are capped at MAX_MANIFEST_BYTES by `read_manifest`.
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

/// `GET /metrics`: the counters in Prometheus text, for authenticated users like every route.
async fn handle_metrics(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.counters.request();
    let (parts, _body) = request.into_parts();
    let answer = async {
        auth::authenticate(
            shared.identity.as_ref(),
            &shared.tokens,
            &parts.headers,
            unix_now(),
        )
        .await?;
        if parts.method != Method::GET {
            return Err(RequestError::MethodNotAllowed {
                method: parts.method.to_string(),
                endpoint: "/metrics",
            }
            .into());
        }
        let text = shared
            .counters
            .snapshot(shared.storage.stored_bytes())
            .to_prometheus();
        let content_type = "text/plain; version=0.0.4; charset=utf-8";
        Ok::<_, RegistryError>(([(header::CONTENT_TYPE, content_type)], text).into_response())
    };
    answer.await.unwrap_or_else(|e| refusal(&parts, e, &[]))
}

/// The longest form body `POST /v2/token` reads.
const MAX_TOKEN_FORM_BYTES: usize = 64 * 1024;

/// `GET /v2/token` with Basic credentials, `service` and any number of `scope`s, or
/// `POST /v2/token` with the same as an OAuth2 form (`grant_type=password`, `username`,
/// `password`, or Basic credentials): a bearer token granting, of the scopes asked, what the user
/// may do. Without valid credentials, 401: there is no anonymous access.
async fn handle_token(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.counters.request();
    let (parts, body) = request.into_parts();
    let answer = async {
        let params: Vec<(String, String)> = match parts.method {
            Method::GET => {
                let query = parts.uri.query().unwrap_or_default();
                form_urlencoded::parse(query.as_bytes())
                    .into_owned()
                    .collect()
            }
            Method::POST => {
                let form = axum::body::to_bytes(body, MAX_TOKEN_FORM_BYTES)
                    .await
                    .map_err(|e| RequestError::Query(format!("reading the token form: {e}")))?;
                form_urlencoded::parse(&form).into_owned().collect()
            }
            _ => {
                return Err(RequestError::MethodNotAllowed {
                    method: parts.method.to_string(),
                    endpoint: "the token endpoint",
                }
                .into());
            }
        };
        let param = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        if let Some(service) = param("service")
            && service != SERVICE
        {
            let why = format!("unknown service {service:?}: this registry is {SERVICE:?}");
            return Err(RequestError::Query(why).into());
        }
        let (name, password) = match (auth::basic_credentials(&parts.headers), param("grant_type"))
        {
            (Some(credentials), _) => credentials,
            (None, Some("password")) => match (param("username"), param("password")) {
                (Some(name), Some(password)) => (name.to_owned(), password.to_owned()),
                _ => return Err(RequestError::Unauthorized.into()),
            },
            (None, Some(grant)) => {
                let why = format!("unsupported grant_type {grant:?}: use password");
                return Err(RequestError::Query(why).into());
            }
            (None, None) => return Err(RequestError::Unauthorized.into()),
        };
        let user = auth::login(shared.identity.as_ref(), &name, &password).await?;
        // OAuth2 separates scopes with spaces; Docker repeats the parameter.
        let scopes: Vec<Scope> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split_whitespace())
            .filter_map(Scope::parse)
            .collect();
        let access = auth::grant(shared.identity.as_ref(), &user, &scopes).await?;
        let now = unix_now();
        let claims = Claims::new(user.as_str(), access, now);
        tracing::debug!(%user, access = ?claims.access, "registry token issued");
        let token = shared.tokens.sign(&claims);
        let issued_at = chrono::DateTime::from_timestamp(i64::try_from(now).unwrap_or(0), 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let body = json!({
            "token": token,
            "access_token": token,
            "expires_in": LIFETIME.as_secs(),
            "issued_at": issued_at,
        });
        Ok::<_, RegistryError>(
            ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response(),
        )
    };
    answer.await.unwrap_or_else(|error| {
        let unauthorized = matches!(error, RegistryError::Request(RequestError::Unauthorized));
        let mut response = error.into_response();
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="slipway-registry""#),
            );
        }
        response
    })
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.counters.request();
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    let mut response = match dispatch(&shared, &parts, body).await {
        Ok(response) => response,
        Err(error) => {
            // The scope of the challenge: what the request would have needed.
            let needs = route::parse(&path)
                .ok()
                .flatten()
                .zip(query_of(&parts.uri).ok())
                .and_then(|(route, query)| auth::needs(&route, &method, &query).ok())
                .unwrap_or_default();
            refusal(&parts, error, &needs)
        }
    };
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    tracing::debug!(%method, path, status = response.status().as_u16(), "registry request");
    response
}

/// The answer to a refused request; a 401 carries the challenge that sends the client to the
/// token endpoint for `needs`.
fn refusal(parts: &http::request::Parts, error: RegistryError, needs: &[auth::Need]) -> Response {
    let reason = match &error {
        RegistryError::Request(RequestError::Unauthorized) => Some(None),
        RegistryError::Request(RequestError::InvalidToken(_)) => Some(Some("invalid_token")),
        RegistryError::Request(RequestError::InsufficientScope(_)) => {
            Some(Some("insufficient_scope"))
        }
        _ => None,
    };
    let mut response = error.into_response();
    if let Some(reason) = reason {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            auth::challenge(&parts.headers, needs, reason),
        );
    }
    response
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The query parameters of a request (the last value of a repeated key).
fn query_of(uri: &http::Uri) -> Result<HashMap<String, String>, RequestError> {
    Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| RequestError::Query(e.body_text()))
}

async fn dispatch(
    shared: &Shared,
    parts: &http::request::Parts,
    body: Body,
) -> Result<Response, RegistryError> {
    let caller = auth::authenticate(
        shared.identity.as_ref(),
        &shared.tokens,
        &parts.headers,
        unix_now(),
    )
    .await?;
    let route = route::parse(parts.uri.path())?.ok_or(RequestError::NoSuchEndpoint)?;
    let query = query_of(&parts.uri)?;
    let needs = auth::needs(&route, &parts.method, &query)?;
    auth::authorize(shared.identity.as_ref(), &caller, &needs).await?;
    let storage = &shared.storage;
    let method = &parts.method;
    let headers = &parts.headers;
    let received = |body: Body| body_stream(body, shared.counters.clone());
    let not_allowed = |endpoint| RequestError::MethodNotAllowed {
        method: method.to_string(),
        endpoint,
    };
    let response = match route {
        Route::Base => match *method {
            Method::GET | Method::HEAD => axum::Json(json!({})).into_response(),
            _ => return Err(not_allowed("/v2/").into()),
        },
        Route::Catalog => match *method {
            Method::GET => catalog(storage, &query).await?,
            _ => return Err(not_allowed("the catalog").into()),
        },
        Route::Tags(repo) => match *method {
            Method::GET => tags(storage, &repo, &query).await?,
            _ => return Err(not_allowed("tags").into()),
        },
        Route::Manifest(repo, reference) => match *method {
            Method::GET => get_manifest(storage, &repo, &reference, false).await?,
            Method::HEAD => get_manifest(storage, &repo, &reference, true).await?,
            Method::PUT => {
                let bytes = read_manifest(headers, body).await?;
                shared.counters.received(bytes.len());
                put_manifest(storage, &repo, &reference, headers, bytes).await?
            }
            Method::DELETE => {
                storage.delete_manifest(&repo, &reference).await?;
                accepted()
            }
            _ => return Err(not_allowed("manifests").into()),
        },
        Route::Blob(repo, digest) => match *method {
            Method::GET => get_blob(shared, &repo, &digest, headers, false).await?,
            Method::HEAD => get_blob(shared, &repo, &digest, headers, true).await?,
            Method::DELETE => {
                storage.delete_blob(&repo, &digest).await?;
                accepted()
            }
            _ => return Err(not_allowed("blobs").into()),
        },
        Route::Uploads(repo) => match *method {
            Method::POST => start_upload(storage, &repo, &query, received(body)).await?,
            _ => return Err(not_allowed("uploads").into()),
        },
        Route::Upload(repo, id) => match *method {
            Method::GET => {
                let size = storage.upload_size(&repo, &id).await?;
                upload_response(StatusCode::NO_CONTENT, &repo, &id, size)
            }
            Method::PATCH => patch_upload(storage, &repo, &id, headers, received(body)).await?,
            Method::PUT => {
                let digest = query_digest(&query, "digest")?.ok_or(RequestError::DigestMissing)?;
                let start = chunk_start(headers)?;
                storage
                    .finish_upload(&repo, &id, &digest, start, received(body))
                    .await?;
                blob_created(&repo, &digest)
            }
            Method::DELETE => {
                storage.cancel_upload(&repo, &id).await?;
                StatusCode::NO_CONTENT.into_response()
            }
            _ => return Err(not_allowed("an upload").into()),
        },
        Route::Referrers(repo, subject) => match *method {
            Method::GET => referrers(storage, &repo, &subject, &query).await?,
            _ => return Err(not_allowed("referrers").into()),
        },
    };
    Ok(count_sent(response, &shared.counters))
}

/// Counts the body of a successful answer as sent: a streamed blob as it goes, any other body
/// by its declared length.
fn count_sent(response: Response, counters: &Arc<Counters>) -> Response {
    if let Some(len) = response.body().size_hint().exact() {
        counters.sent(usize::try_from(len).unwrap_or(usize::MAX));
        return response;
    }
    let (parts, body) = response.into_parts();
    let stream = body
        .into_data_stream()
        .map(|chunk| chunk.map_err(io::Error::other));
    let stream = metrics::counted(stream, counters.clone(), Counters::sent);
    Response::from_parts(parts, Body::from_stream(stream))
}

/// The answer to an accepted delete.
fn accepted() -> Response {
    respond(
        StatusCode::ACCEPTED,
        &[(header::CONTENT_LENGTH, "0".to_owned())],
        Body::empty(),
    )
}

/// `HEAD`/`GET /v2/<name>/blobs/<digest>`, with a single byte range honoured.
async fn get_blob(
    shared: &Shared,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, RegistryError> {
    let size = shared
        .storage
        .blob_size(repo, digest)
        .await?
        .ok_or_else(|| StorageError::BlobUnknown(digest.to_string()))?;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(ByteRange::Whole, |v| ByteRange::parse(v, size));
    let (status, start, len) = match range {
        ByteRange::Whole => (StatusCode::OK, 0, size),
        ByteRange::Part(start, end) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        ByteRange::Unsatisfiable => {
            let response = respond(
                StatusCode::RANGE_NOT_SATISFIABLE,
                &[(header::CONTENT_RANGE, format!("bytes */{size}"))],
                Body::empty(),
            );
            return Ok(response);
        }
    };
    let mut extra = vec![
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::CONTENT_LENGTH, len.to_string()),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
        (header::ETAG, format!("\"{digest}\"")),
    ];
    if status == StatusCode::PARTIAL_CONTENT {
        let end = start + len - 1;
        extra.push((header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")));
    }
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(shared.storage.read_blob(digest, start, len).await?)
    };
    Ok(respond(status, &extra, body))
}

/// What a `Range` header asks of a blob.
#[derive(Debug, PartialEq, Eq)]
enum ByteRange {
    /// No usable range (absent, malformed or several ranges): send the whole blob.
    Whole,
    /// The inclusive byte range `a..=b`.
    Part(u64, u64),
    /// A range that starts beyond the end.
    Unsatisfiable,
}

impl ByteRange {
    fn parse(value: &str, size: u64) -> ByteRange {
        let Some(spec) = value.trim().strip_prefix("bytes=") else {
            return ByteRange::Whole;
        };
        let Some((a, b)) = spec.split_once('-') else {
            return ByteRange::Whole;
        };
        if spec.contains(',') {
            return ByteRange::Whole;
        }
        let (a, b) = (a.trim(), b.trim());
        let parsed = if a.is_empty() {
            // A suffix: the last `b` bytes.
            b.parse::<u64>()
                .ok()
                .map(|n| (size.saturating_sub(n), u64::MAX, n > 0))
        } else {
            let end = if b.is_empty() {
                Ok(u64::MAX)
            } else {
                b.parse()
            };
            a.parse::<u64>()
                .ok()
                .zip(end.ok())
                .map(|(start, end)| (start, end, true))
        };
        match parsed {
            // A range that ends before it starts cannot be satisfied either, as distribution
            // and the conformance suite have it.
            Some((start, end, true)) if start < size && end >= start => {
                ByteRange::Part(start, end.min(size - 1))
            }
            Some((_, _, true)) => ByteRange::Unsatisfiable,
            _ => ByteRange::Whole,
        }
    }
}

/// `POST /v2/<name>/blobs/uploads/`: a mount, a monolithic upload, or a new session.
async fn start_upload(
    storage: &Storage,
    repo: &RepoName,
    query: &HashMap<String, String>,
    body: impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
) -> Result<Response, RegistryError> {
    if let Some(digest) = query_digest(query, "mount")? {
        // A mount without `from` would need the registry to find the blob in some repository
        // the user may read; with per-repository scopes to come (issue #4) it gets a session.
        // With scopes the user must also be allowed to pull `from`.
        if let Some(from) = query.get("from") {
            let from = RepoName::parse(from)?;
            if storage.mount_blob(repo, &from, &digest).await? {
                return Ok(blob_created(repo, &digest));
            }
        }
    } else if let Some(digest) = query_digest(query, "digest")? {
        storage.put_blob(repo, &digest, body).await?;
        return Ok(blob_created(repo, &digest));
    }
    let id = storage.start_upload(repo).await?;
    Ok(upload_response(StatusCode::ACCEPTED, repo, &id, 0))
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`: append one chunk.
async fn patch_upload(
    storage: &Storage,
    repo: &RepoName,
    id: &UploadId,
    headers: &HeaderMap,
    body: impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
) -> Result<Response, RegistryError> {
    let start = chunk_start(headers)?;
    let size = storage.append_upload(repo, id, start, body).await?;
    Ok(upload_response(StatusCode::ACCEPTED, repo, id, size))
}

/// Where a chunk says it starts, when it has a `Content-Range`.
fn chunk_start(headers: &HeaderMap) -> Result<Option<u64>, RequestError> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    let start =
        content_range_start(text).ok_or_else(|| RequestError::ContentRange(text.to_owned()))?;
    Ok(Some(start))
}

/// The start of a chunk's `Content-Range`: `<start>-<end>`, as the OCI spec writes it, or the
/// RFC 9110 form `bytes <start>-<end>/<total>` that some clients send.
fn content_range_start(value: &str) -> Option<u64> {
    let value = value.trim();
    let value = value.strip_prefix("bytes ").unwrap_or(value).trim();
    let range = value.split_once('/').map_or(value, |(range, _total)| range);
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    (end >= start).then_some(start)
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`.
async fn get_manifest(
    storage: &Storage,
    repo: &RepoName,
    reference: &Reference,
    head: bool,
) -> Result<Response, RegistryError> {
    let stored = storage.get_manifest(repo, reference).await?;
    let headers = [
        (header::CONTENT_TYPE, stored.media_type),
        (header::CONTENT_LENGTH, stored.bytes.len().to_string()),
        (DOCKER_CONTENT_DIGEST, stored.digest.to_string()),
        (header::ETAG, format!("\"{}\"", stored.digest)),
    ];
    let body = if head {
        Body::empty()
    } else {
        Body::from(stored.bytes)
    };
    Ok(respond(StatusCode::OK, &headers, body))
}

/// `PUT /v2/<name>/manifests/<reference>`: store the bytes as sent, keyed by their digest.
async fn put_manifest(
    storage: &Storage,
    repo: &RepoName,
    reference: &Reference,
    headers: &HeaderMap,
    bytes: Bytes,
) -> Result<Response, RegistryError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let inspected = manifest::inspect(content_type, &bytes)?;
    let (tag, digest) = match reference {
        Reference::Tag(tag) => (Some(tag), Digest::of(Algorithm::Sha256, &bytes)),
        Reference::Digest(expected) => {
            let actual = Digest::of(expected.algorithm(), &bytes);
            if actual != *expected {
                return Err(StorageError::DigestMismatch {
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                }
                .into());
            }
            (None, actual)
        }
    };
    let subject = inspected.subject.clone();
    storage
        .put_manifest(repo, tag, &digest, inspected, bytes)
        .await?;
    let mut headers = vec![
        (header::LOCATION, format!("/v2/{repo}/manifests/{digest}")),
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
        (header::CONTENT_LENGTH, "0".to_owned()),
    ];
    if let Some(subject) = subject {
        // Tells the client that this registry indexes referrers, so it need not maintain the
        // fallback tag schema.
        headers.push((OCI_SUBJECT, subject.to_string()));
    }
    Ok(respond(StatusCode::CREATED, &headers, Body::empty()))
}

/// `GET /v2/<name>/referrers/<digest>`: an image index of the manifests whose subject is the
/// digest, filtered by `artifactType` when the query names one. A subject without referrers,
/// or one that does not exist, has an empty index.
async fn referrers(
    storage: &Storage,
    repo: &RepoName,
    subject: &Digest,
    query: &HashMap<String, String>,
) -> Result<Response, RegistryError> {
    let artifact_type = query.get("artifactType").map(String::as_str);
    let manifests = storage.referrers(repo, subject, artifact_type).await?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let mut headers = vec![(header::CONTENT_TYPE, OCI_INDEX.to_owned())];
    if artifact_type.is_some() {
        headers.push((OCI_FILTERS_APPLIED, "artifactType".to_owned()));
    }
    Ok(respond(
        StatusCode::OK,
        &headers,
        Body::from(index.to_string()),
    ))
}

/// Reads a manifest body, refusing more than [`MAX_MANIFEST_BYTES`] without reading it all.
async fn read_manifest(headers: &HeaderMap, body: Body) -> Result<Bytes, RegistryError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_MANIFEST_BYTES as u64) {
        return Err(ManifestError::TooLarge.into());
    }
    let mut stream = body.into_data_stream();
    let mut bytes = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| RequestError::Body(e.to_string()))?;
        if bytes.len() + chunk.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge.into());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}

/// `GET /v2/<name>/tags/list`, paginated with `n` and `last`.
async fn tags(
    storage: &Storage,
    repo: &RepoName,
    query: &HashMap<String, String>,
) -> Result<Response, RegistryError> {
    let all = storage.tags(repo).await?;
    let (page, link) = paginate(all, query, &format!("/v2/{repo}/tags/list"))?;
    Ok(json_page(
        json!({ "name": repo.as_str(), "tags": page }),
        link,
    ))
}

/// `GET /v2/_catalog`, paginated with `n` and `last`.
async fn catalog(
    storage: &Storage,
    query: &HashMap<String, String>,
) -> Result<Response, RegistryError> {
    let all = storage.repositories().await?;
    let (page, link) = paginate(all, query, "/v2/_catalog")?;
    Ok(json_page(json!({ "repositories": page }), link))
}

/// One page of a sorted list: the entries after `last`, at most `n` of them. Also returns the
/// `Link` header to the next page of `path` when there is one.
fn paginate(
    all: Vec<String>,
    query: &HashMap<String, String>,
    path: &str,
) -> Result<(Vec<String>, Option<String>), RegistryError> {
    let n = match query.get("n") {
        None => None,
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| RequestError::Query(format!("n={v:?} is not a number")))?,
        ),
    };
    let mut rest: Vec<String> = match query.get("last") {
        Some(last) => all.into_iter().filter(|t| t > last).collect(),
        None => all,
    };
    let Some(n) = n else {
        return Ok((rest, None));
    };
    let more = rest.len() > n;
    rest.truncate(n);
    let next = match (more, rest.last()) {
        // Names and tags need no escaping in a URL.
        (true, Some(last)) => Some(format!("<{path}?n={n}&last={last}>; rel=\"next\"")),
        _ => None,
    };
    Ok((rest, next))
}

fn json_page(body: serde_json::Value, link: Option<String>) -> Response {
    let mut response = axum::Json(body).into_response();
    if let Some(link) = link {
        response
            .headers_mut()
            .insert(header::LINK, header_value(&link));
    }
    response
}

/// A `digest`-like query parameter, validated; `None` when absent.
fn query_digest(
    query: &HashMap<String, String>,
    key: &str,
) -> Result<Option<Digest>, RegistryError> {
    match query.get(key) {
        None => Ok(None),
        Some(v) => Ok(Some(Digest::parse(v)?)),
    }
}

/// The answer to a finished blob upload or mount.
fn blob_created(repo: &RepoName, digest: &Digest) -> Response {
    respond(
        StatusCode::CREATED,
        &[
            (header::LOCATION, format!("/v2/{repo}/blobs/{digest}")),
            (DOCKER_CONTENT_DIGEST, digest.to_string()),
            (header::CONTENT_LENGTH, "0".to_owned()),
        ],
        Body::empty(),
    )
}

/// The answer that tells a client where an upload session is and how much it holds.
fn upload_response(status: StatusCode, repo: &RepoName, id: &UploadId, size: u64) -> Response {
    let mut response = respond(
        status,
        &[
            (header::LOCATION, format!("/v2/{repo}/blobs/uploads/{id}")),
            (
                HeaderName::from_static("docker-upload-uuid"),
                id.to_string(),
            ),
            (header::CONTENT_LENGTH, "0".to_owned()),
        ],
        Body::empty(),
    );
    response
        .headers_mut()
        .insert(header::RANGE, range_header(size));
    response
}

/// The `Range` of an upload holding `size` bytes: `0-<last byte>`. An empty upload is `0-0`, as
/// the reference implementation and the clients written against it expect.
pub(crate) fn range_header(size: u64) -> HeaderValue {
    header_value(&format!("0-{}", size.saturating_sub(1)))
}

fn respond(status: StatusCode, headers: &[(HeaderName, String)], body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(name.clone(), header_value(value));
    }
    response
}

/// A header value built from validated names, digests and numbers, which are visible ASCII.
fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A request body as the byte stream storage consumes, counted as received.
fn body_stream(
    body: Body,
    counters: Arc<Counters>,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    let stream = body
        .into_data_stream()
        .map(|chunk| chunk.map_err(io::Error::other));
    metrics::counted(stream, counters, Counters::received)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        let check = |value: &str, expected: ByteRange| {
            assert_eq!(ByteRange::parse(value, 100), expected, "{value}");
        };
        check("bytes=0-9", ByteRange::Part(0, 9));
        check("bytes=90-", ByteRange::Part(90, 99));
        check("bytes=90-200", ByteRange::Part(90, 99));
        check("bytes=-10", ByteRange::Part(90, 99));
        check("bytes=-500", ByteRange::Part(0, 99));
        check("bytes=100-", ByteRange::Unsatisfiable);
        check("bytes=-0", ByteRange::Whole);
        check("bytes=5-1", ByteRange::Unsatisfiable);
        check("bytes=0-1,5-6", ByteRange::Whole);
        check("items=0-1", ByteRange::Whole);
        assert_eq!(ByteRange::parse("bytes=-5", 0), ByteRange::Unsatisfiable);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(content_range_start("0-1023"), Some(0));
        assert_eq!(content_range_start("1024-2047"), Some(1024));
        assert_eq!(content_range_start("bytes 10-19/*"), Some(10));
        assert_eq!(content_range_start("5-1"), None);
        assert_eq!(content_range_start("abc"), None);
    }

    #[test]
    fn pagination() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let page = |pairs: &[(&str, &str)]| paginate(all.clone(), &q(pairs), "/p").expect("page");
        assert_eq!(page(&[]), (all.clone(), None));
        assert_eq!(
            page(&[("n", "2")]),
            (
                vec!["a".into(), "b".into()],
                Some(r#"</p?n=2&last=b>; rel="next""#.into())
            )
        );
        assert_eq!(
            page(&[("n", "2"), ("last", "b")]),
            (vec!["c".into(), "d".into()], None)
        );
        assert_eq!(page(&[("last", "c")]), (vec!["d".into()], None));
        assert!(paginate(all.clone(), &q(&[("n", "x")]), "/p").is_err());
    }
}
