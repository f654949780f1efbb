//! The HTTP API, JSON over HTTP with bearer-token auth. Paths live under `/v1`. Errors always
//! have the shape `{"error": {"code": "...", "message": "..."}}` (see [`ControllerError`]).
//!
//! This module parses and checks requests and shapes responses; it holds no SQL.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::Query;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use slipway_core::release::{MAX_BODY_SIZE_VAR, is_config_key, parse_size};
use slipway_core::{AppName, Fingerprint, Release, UserName, keys};

use crate::db::{AppRow, Limits, NewRelease, ReleaseStatus};
use crate::reconciler::{Event, LABEL_APP, LABEL_PROCESS, LABEL_RELEASE, desired_formation};
use crate::{Controller, ControllerError};

type Result<T> = std::result::Result<T, ControllerError>;
type Ctl = State<Arc<Controller>>;

/// The API's routes.
pub fn router(controller: Arc<Controller>) -> Router {
    Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/keys", get(list_keys).post(add_key))
        .route("/v1/keys/{fingerprint}", delete(remove_key))
        .route("/v1/apps", get(list_apps).post(create_app))
        .route("/v1/apps/{app}", get(app_info).delete(destroy_app))
        .route("/v1/apps/{app}/config", get(get_config).patch(patch_config))
        .route("/v1/apps/{app}/releases", get(list_releases))
        .route("/v1/apps/{app}/rollback", post(rollback))
        .route("/v1/apps/{app}/domains", get(list_domains).post(add_domain))
        .route("/v1/apps/{app}/domains/{host}", delete(remove_domain))
        .route("/v1/apps/{app}/certs", get(list_certs).post(add_cert))
        .route("/v1/apps/{app}/certs/{name}", delete(remove_cert))
        .route("/v1/apps/{app}/tls", get(get_tls).put(set_tls))
        .route("/v1/apps/{app}/ps", get(list_ps))
        .route("/v1/apps/{app}/formation", get(get_formation).patch(scale))
        .route("/v1/apps/{app}/restart", post(restart))
        .route("/v1/apps/{app}/limits", get(get_limits).patch(set_limits))
        .route(
            "/v1/apps/{app}/healthcheck",
            get(get_healthcheck).put(set_healthcheck),
        )
        .route("/v1/apps/{app}/logs", get(logs))
        .route("/v1/apps/{app}/access", get(list_access).post(add_access))
        .route("/v1/apps/{app}/access/{user}", delete(remove_access))
        .route("/v1/apps/{app}/deploy", post(deploy_image))
        .route("/v1/apps/{app}/run", post(run_oneoff))
        .route(
            "/v1/apps/{app}/maintenance",
            get(get_maintenance).put(set_maintenance),
        )
        .route("/v1/events", get(list_events))
        .route("/v1/registry/gc", post(registry_gc))
        .route("/v1/users", post(create_user))
        .route("/v1/tokens", post(create_token))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(|| async { ControllerError::NotFound("no such API path".into()) })
        .method_not_allowed_fallback(|| async { ControllerError::MethodNotAllowed })
        .with_state(controller)
}

/// The authenticated caller.
struct Caller(UserName);

/// A JSON request body. Like axum's `Json`, but a body that is not JSON of the right shape is
/// answered in the API's one error shape (400 `bad_request`), not as framework text.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ControllerError;

    async fn from_request(
        req: axum::extract::Request,
        state: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(body)) => Ok(Body(body)),
            Err(rejection) => Err(ControllerError::BadRequest(format!(
                "request body: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// Query parameters, with the same error shape as [`Body`].
struct Params<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ControllerError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(Params(q)),
            Err(rejection) => Err(ControllerError::BadRequest(rejection.body_text())),
        }
    }
}

impl FromRequestParts<Arc<Controller>> for Caller {
    type Rejection = ControllerError;

    async fn from_request_parts(parts: &mut Parts, ctl: &Arc<Controller>) -> Result<Self> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ControllerError::Unauthorized)?;
        match ctl.authenticate(token.trim()).await? {
            Some(user) => Ok(Caller(user)),
            None => Err(ControllerError::Unauthorized),
        }
    }
}

fn app_name(raw: &str) -> Result<AppName> {
    raw.parse()
        .map_err(|e: slipway_core::NameError| ControllerError::BadRequest(e.to_string()))
}

/// The app's row, if `caller` may operate it (owner, collaborator or admin).
async fn authorized_row(ctl: &Controller, caller: &UserName, raw: &str) -> Result<AppRow> {
    let app = app_name(raw)?;
    let row = ctl
        .db()
        .app(&app)
        .await?
        .ok_or_else(|| ControllerError::NotFound(format!("app {app} does not exist")))?;
    if !ctl.may_operate(&row, caller).await? {
        return Err(ControllerError::Forbidden(format!(
            "you have no access to app {app}"
        )));
    }
    Ok(row)
}

/// The app, if `caller` may operate it (owner, collaborator or admin).
async fn authorized_app(ctl: &Controller, caller: &UserName, raw: &str) -> Result<AppName> {
    Ok(authorized_row(ctl, caller, raw).await?.name)
}

/// The app, if `caller` owns it (or is admin): for destroying it and managing its access.
async fn owned_app(ctl: &Controller, caller: &UserName, raw: &str) -> Result<AppName> {
    let AppRow {
        name: app, owner, ..
    } = authorized_row(ctl, caller, raw).await?;
    if owner != caller.as_str() && caller.as_str() != "admin" {
        return Err(ControllerError::Forbidden(format!(
            "only {owner}, the owner of {app}, can do that"
        )));
    }
    Ok(app)
}

#[derive(Serialize)]
struct WhoAmI {
    user: UserName,
}

async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI { user: caller.0 })
}

#[derive(Serialize)]
struct KeyOut {
    fingerprint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    app: Option<String>,
    public_key: String,
    comment: String,
    created_at: i64,
}

async fn list_keys(State(ctl): Ctl, caller: Caller) -> Result<Json<Vec<KeyOut>>> {
    let keys = ctl.db().keys(&caller.0).await?;
    Ok(Json(
        keys.into_iter()
            .map(|k| KeyOut {
                fingerprint: k.fingerprint,
                app: k.app,
                public_key: k.public_key,
                comment: k.comment,
                created_at: k.created_at,
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
struct AddKey {
    public_key: String,
    /// Makes a deploy key that can push this app only.
    app: Option<String>,
}

#[derive(Serialize)]
struct AddedKey {
    fingerprint: Fingerprint,
}

async fn add_key(
    State(ctl): Ctl,
    caller: Caller,
    Body(body): Body<AddKey>,
) -> Result<(StatusCode, Json<AddedKey>)> {
    let key =
        keys::parse(&body.public_key).map_err(|e| ControllerError::BadRequest(e.to_string()))?;
    let app = match &body.app {
        Some(raw) => Some(authorized_app(&ctl, &caller.0, raw).await?),
        None => None,
    };
    ctl.db()
        .add_key(
            &caller.0,
            &key.fingerprint,
            &key.canonical,
            &key.comment,
            app.as_ref(),
        )
        .await?;
    let detail = match &app {
        Some(app) => format!("added deploy key {} for {app}", key.fingerprint),
        None => format!("added key {}", key.fingerprint),
    };
    ctl.record(app.as_ref(), "key", caller.0.as_str(), &detail)
        .await;
    Ok((
        StatusCode::CREATED,
        Json(AddedKey {
            fingerprint: key.fingerprint,
        }),
    ))
}

async fn remove_key(
    State(ctl): Ctl,
    caller: Caller,
    Path(fingerprint): Path<String>,
) -> Result<StatusCode> {
    let fp: Fingerprint = fingerprint
        .parse()
        .map_err(|e: slipway_core::NameError| ControllerError::BadRequest(e.to_string()))?;
    if ctl.db().remove_key(&caller.0, &fp).await? {
        ctl.record(None, "key", caller.0.as_str(), &format!("removed key {fp}"))
            .await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ControllerError::NotFound(format!("you have no key {fp}")))
    }
}

#[derive(Serialize)]
struct AppOut {
    name: AppName,
    owner: String,
    url: String,
    created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    release: Option<ReleaseOut>,
}

fn app_out(ctl: &Controller, row: crate::db::AppRow, release: Option<ReleaseOut>) -> AppOut {
    AppOut {
        url: format!("http://{}.{}", row.name, ctl.domain()),
        name: row.name,
        owner: row.owner,
        created_at: row.created_at,
        release,
    }
}

async fn list_apps(State(ctl): Ctl, caller: Caller) -> Result<Json<Vec<AppOut>>> {
    let mut out = Vec::new();
    for app in ctl.db().apps().await? {
        if ctl.may_operate(&app, &caller.0).await? {
            out.push(app_out(&ctl, app, None));
        }
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
struct CreateApp {
    name: String,
}

async fn create_app(
    State(ctl): Ctl,
    caller: Caller,
    Body(body): Body<CreateApp>,
) -> Result<(StatusCode, Json<AppOut>)> {
    let app = app_name(&body.name)?;
    ctl.db().create_app(&app, &caller.0).await?;
    ctl.record(
        Some(&app),
        "app",
        caller.0.as_str(),
        &format!("created {app}"),
    )
    .await;
    let row = ctl
        .db()
        .app(&app)
        .await?
        .ok_or_else(|| ControllerError::NotFound(format!("app {app} vanished")))?;
    Ok((StatusCode::CREATED, Json(app_out(&ctl, row, None))))
}

async fn app_info(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<AppOut>> {
    let row = authorized_row(&ctl, &caller.0, &raw).await?;
    let app = row.name.clone();
    let release = ctl
        .db()
        .releases(&app)
        .await?
        .into_iter()
        .next()
        .map(ReleaseOut::from);
    Ok(Json(app_out(&ctl, row, release)))
}

async fn destroy_app(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<StatusCode> {
    let app = owned_app(&ctl, &caller.0, &raw).await?;
    ctl.db().delete_app(&app).await?;
    ctl.record(
        Some(&app),
        "app",
        caller.0.as_str(),
        &format!("destroyed {app}"),
    )
    .await;
    ctl.forget(&app).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_config(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<BTreeMap<String, String>>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    let latest = ctl.db().current_release(&app).await?;
    Ok(Json(latest.map(|r| r.config).unwrap_or_default()))
}

/// `{"KEY": "value"}` sets, `{"KEY": null}` unsets; one new release for the whole change.
async fn patch_config(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
    Body(changes): Body<BTreeMap<String, Option<String>>>,
) -> Result<Json<ReleaseOut>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    if changes.is_empty() {
        return Err(ControllerError::BadRequest("no config vars given".into()));
    }
    if let Some(bad) = changes.keys().find(|k| !is_config_key(k)) {
        return Err(ControllerError::BadRequest(format!(
            "invalid config var name {bad:?}: use letters, digits and '_', not starting with a digit, and not one of {}",
            Release::RESERVED_VARS.join(", ")
        )));
    }
    if let Some(Some(size)) = changes.get(MAX_BODY_SIZE_VAR)
        && let Err(e) = parse_size(size)
    {
        return Err(ControllerError::BadRequest(format!(
            "{MAX_BODY_SIZE_VAR}={e}"
        )));
    }
    let (set, unset): (Vec<_>, Vec<_>) = changes.iter().partition(|(_, v)| v.is_some());
    let mut description = Vec::new();
    if !set.is_empty() {
        description.push(format!(
            "set {}",
            set.iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !unset.is_empty() {
        description.push(format!(
            "unset {}",
            unset
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let release = ctl
        .release(&app, None, |prev| {
            let mut config = prev.map(|p| p.config.clone()).unwrap_or_default();
            for (k, v) in changes {
                match v {
                    Some(v) => config.insert(k, v),
                    None => config.remove(&k),
                };
            }
            NewRelease {
                image: prev.and_then(|p| p.image.clone()),
                config,
                processes: prev.map(|p| p.processes.clone()).unwrap_or_default(),
                commit: prev.and_then(|p| p.commit.clone()),
                description: description.join("; "),
                created_by: caller.0.to_string(),
            }
        })
        .await?;
    Ok(Json(ReleaseOut::from((release, ReleaseStatus::Pending))))
}

#[derive(Serialize)]
struct ReleaseOut {
    version: i64,
    image: Option<String>,
    processes: BTreeMap<String, String>,
    commit: Option<String>,
    description: String,
    created_by: String,
    created_at: i64,
    status: &'static str,
}

impl From<(Release, ReleaseStatus)> for ReleaseOut {
    fn from((r, status): (Release, ReleaseStatus)) -> Self {
        ReleaseOut {
            version: r.version,
            image: r.image,
            processes: r.processes,
            commit: r.commit,
            description: r.description,
            created_by: r.created_by,
            created_at: r.created_at,
            status: match status {
                ReleaseStatus::Pending => "pending",
                ReleaseStatus::Deployed => "deployed",
                ReleaseStatus::Failed => "failed",
            },
        }
    }
}

async fn list_releases(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<Vec<ReleaseOut>>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    let releases = ctl.db().releases(&app).await?;
    Ok(Json(releases.into_iter().map(ReleaseOut::from).collect()))
}

#[derive(Deserialize)]
struct CreateUser {
    name: String,
}

#[derive(Serialize)]
struct NewToken {
    user: UserName,
    token: String,
}

/// Admin only: a new user and their first token.
async fn create_user(
    State(ctl): Ctl,
    caller: Caller,
    Body(body): Body<CreateUser>,
) -> Result<(StatusCode, Json<NewToken>)> {
    if caller.0.as_str() != "admin" {
        return Err(ControllerError::Forbidden(
            "only admin can add users".into(),
        ));
    }
    let user: UserName = body
        .name
        .parse()
        .map_err(|e: slipway_core::NameError| ControllerError::BadRequest(e.to_string()))?;
    let token = ctl.create_user(&user).await?;
    Ok((StatusCode::CREATED, Json(NewToken { user, token })))
}

async fn create_token(State(ctl): Ctl, caller: Caller) -> Result<(StatusCode, Json<NewToken>)> {
    let token = ctl.create_token(&caller.0).await?;
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            user: caller.0,
            token,
        }),
    ))
}

#[derive(Deserialize, Default)]
struct Rollback {
    version: Option<i64>,
}

/// A new release with the image, config and process types of an earlier one: the given
/// version, or the one before the current.
async fn rollback(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
    body: Option<Json<Rollback>>,
) -> Result<Json<ReleaseOut>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    let version = body.and_then(|b| b.0.version);
    let releases = ctl.db().releases(&app).await?;
    let (current, _) = ctl.db().target_release(&app).await?.ok_or_else(|| {
        ControllerError::BadRequest(format!("{app} has no release to roll back from"))
    })?;
    let to = match version {
        Some(v) => releases
            .iter()
            .find(|(r, _)| r.version == v)
            .ok_or_else(|| ControllerError::NotFound(format!("{app} has no release v{v}")))?,
        None => releases
            .iter()
            .find(|(r, s)| {
                r.version < current.version && r.image.is_some() && *s != ReleaseStatus::Failed
            })
            .ok_or_else(|| {
                ControllerError::BadRequest(format!(
                    "{app} has no release before v{} to roll back to",
                    current.version
                ))
            })?,
    };
    let to = to.0.clone();
    if to.image.is_none() {
        return Err(ControllerError::BadRequest(format!(
            "v{} has no image (it was a config change before the first build)",
            to.version
        )));
    }
    let release = ctl
        .release(&app, None, |_| NewRelease {
            image: to.image.clone(),
            config: to.config.clone(),
            processes: to.processes.clone(),
            commit: to.commit.clone(),
            description: format!("rollback to v{}", to.version),
            created_by: caller.0.to_string(),
        })
        .await?;
    Ok(Json(ReleaseOut::from((release, ReleaseStatus::Pending))))
}

/// Whether `host` is a DNS name an app can be served at: lower-case labels of letters, digits
/// and '-', at least two of them.
fn valid_host(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    host.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

async fn list_domains(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<Vec<String>>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    Ok(Json(app_hosts(&ctl, &app).await?))
}

#[derive(Deserialize)]
struct AddDomain {
    host: String,
}

async fn add_domain(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
    Body(body): Body<AddDomain>,
) -> Result<StatusCode> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    let host = body.host.trim().trim_end_matches('.').to_ascii_lowercase();
    // `*.example.com` routes every name under example.com that no exact domain claims.
    let named = host.strip_prefix("*.").unwrap_or(&host);
    if !valid_host(named) || (named != host && named.split('.').count() < 2) {
        return Err(ControllerError::BadRequest(format!(
            "invalid domain {:?}: use a DNS name such as www.example.com, or *.example.com for every name under example.com",
            body.host
        )));
    }
    let platform = ctl.domain();
    if named != host && (platform == named || platform.ends_with(&format!(".{named}"))) {
        return Err(ControllerError::BadRequest(format!(
            "{host} would cover the platform's own domain {platform}, where apps get <app>.{platform}"
        )));
    }
    if host.ends_with(&format!(".{}", ctl.domain())) {
        return Err(ControllerError::BadRequest(format!(
            "{host} is under the platform's own domain {}; apps get <app>.{} already",
            ctl.domain(),
            ctl.domain()
        )));
    }
    ctl.db().add_domain(&app, &host).await?;
    ctl.record(
        Some(&app),
        "domain",
        caller.0.as_str(),
        &format!("added {host}"),
    )
    .await;
    ctl.notify(Event::DomainsChanged(app));
    Ok(StatusCode::CREATED)
}

async fn remove_domain(
    State(ctl): Ctl,
    caller: Caller,
    Path((raw, host)): Path<(String, String)>,
) -> Result<StatusCode> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    let host = host.to_ascii_lowercase();
    if !ctl.db().remove_domain(&app, &host).await? {
        return Err(ControllerError::NotFound(format!(
            "{app} has no domain {host}"
        )));
    }
    ctl.record(
        Some(&app),
        "domain",
        caller.0.as_str(),
        &format!("removed {host}"),
    )
    .await;
    ctl.notify(Event::DomainsChanged(app));
    Ok(StatusCode::NO_CONTENT)
}

/// The hosts `app` is served at: `<app>.<domain>`, then its custom domains.
async fn app_hosts(ctl: &Controller, app: &AppName) -> Result<Vec<String>> {
    let mut hosts = vec![format!("{app}.{}", ctl.domain())];
    hosts.extend(ctl.db().domains(app).await?);
    Ok(hosts)
}

#[derive(Serialize)]
struct CertOut {
    names: Vec<String>,
    fingerprint: String,
    not_after: i64,
    created_at: i64,
}

impl From<crate::db::CertRow> for CertOut {
    fn from(c: crate::db::CertRow) -> Self {
        CertOut {
            names: c.names,
            fingerprint: c.fingerprint,
            not_after: c.not_after,
            created_at: c.created_at,
        }
    }
}

async fn list_certs(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<Vec<CertOut>>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    let certs = ctl.db().certs(&app).await?;
    Ok(Json(certs.into_iter().map(CertOut::from).collect()))
}

#[derive(Deserialize)]
struct AddCert {
    /// The certificate, then any intermediates, in PEM.
    certificate: String,
    /// Its unencrypted private key in PEM. Never logged nor returned.
    private_key: String,
}

#[derive(Serialize)]
struct AddedCert {
    #[serde(flatten)]
    cert: CertOut,
    /// How many of the app's certificates for exactly the same names it replaced.
    replaced: u64,
}

async fn add_cert(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
    Body(body): Body<AddCert>,
) -> Result<(StatusCode, Json<AddedCert>)> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    let now = chrono::Utc::now().timestamp();
    let cert = crate::certs::check(&body.certificate, &body.private_key, now)
        .map_err(ControllerError::BadRequest)?;
    if let Some(name) = crate::certs::foreign_name(&cert.names, &app_hosts(&ctl, &app).await?) {
        return Err(ControllerError::BadRequest(format!(
            "the certificate names {name}, which is not a domain of {app}: add it with domains:add first"
        )));
    }
    let replaced = ctl.db().add_cert(&app, &cert).await?;
    ctl.record(
        Some(&app),
        "cert",
        caller.0.as_str(),
        &format!(
            "added certificate {} for {}",
            cert.fingerprint,
            cert.names.join(", ")
        ),
    )
    .await;
    ctl.notify(Event::TlsChanged(app));
    Ok((
        StatusCode::CREATED,
        Json(AddedCert {
            cert: CertOut {
                names: cert.names,
                fingerprint: cert.fingerprint,
                not_after: cert.not_after,
                created_at: now,
            },
            replaced,
        }),
    ))
}

/// Removes the app's certificates that cover `name` (one of their names, exactly) or whose
/// fingerprint it is.
async fn remove_cert(
    State(ctl): Ctl,
    caller: Caller,
    Path((raw, name)): Path<(String, String)>,
) -> Result<StatusCode> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    let wanted = name.trim().to_ascii_lowercase();
    let fingerprint = wanted.strip_prefix("sha256:").unwrap_or(&wanted);
    let matching: Vec<String> = ctl
        .db()
        .certs(&app)
        .await?
        .into_iter()
        .filter(|c| {
            c.names.contains(&wanted) || c.fingerprint.strip_prefix("SHA256:") == Some(fingerprint)
        })
        .map(|c| c.fingerprint)
        .collect();
    if matching.is_empty() {
        return Err(ControllerError::NotFound(format!(
            "{app} has no certificate for {name}"
        )));
    }
    for fp in &matching {
        ctl.db().remove_cert(&app, fp).await?;
        ctl.record(
            Some(&app),
            "cert",
            caller.0.as_str(),
            &format!("removed certificate {fp}"),
        )
        .await;
    }
    ctl.notify(Event::TlsChanged(app));
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, Deserialize)]
struct Tls {
    /// Whether plain HTTP requests are redirected to HTTPS.
    https_enforced: bool,
}

async fn get_tls(State(ctl): Ctl, caller: Caller, Path(raw): Path<String>) -> Result<Json<Tls>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    Ok(Json(Tls {
        https_enforced: ctl.db().https_enforced(&app).await?,
    }))
}

async fn set_tls(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
    Body(body): Body<Tls>,
) -> Result<Json<Tls>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    // Redirecting to HTTPS without a certificate would lock every client out.
    if body.https_enforced && ctl.db().certs(&app).await?.is_empty() {
        return Err(ControllerError::BadRequest(format!(
            "{app} has no certificate: add one with certs:add before tls:enable"
        )));
    }
    ctl.db()
        .set_https_enforced(&app, body.https_enforced)
        .await?;
    let detail = if body.https_enforced {
        "HTTPS enforced"
    } else {
        "HTTPS no longer enforced"
    };
    ctl.record(Some(&app), "tls", caller.0.as_str(), detail)
        .await;
    ctl.notify(Event::TlsChanged(app));
    Ok(Json(body))
}

#[derive(Serialize)]
struct Instance {
    name: String,
    process: String,
    release: String,
    /// `up`, `crashed (status N)`, or for a process type backing off after crashes,
    /// `crashed N times in a row; restarting in Ss` (`crash-looping` from the third).
    state: String,
}

async fn app_instances(ctl: &Controller, app: &AppName) -> Result<Vec<slipway_runtime::Container>> {
    ctl.engine()
        .list(&[
            (slipway_runtime::LABEL_INSTANCE, ctl.instance_id()),
            (LABEL_APP, app.as_str()),
        ])
        .await
        .map_err(|e| ControllerError::Io(e.to_string()))
}

async fn list_ps(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<Vec<Instance>>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    let mut out: Vec<Instance> = app_instances(&ctl, &app)
        .await?
        .into_iter()
        .filter(|c| !c.labels.contains_key(slipway_runtime::LABEL_ONEOFF))
        .map(|c| Instance {
            process: c.labels.get(LABEL_PROCESS).cloned().unwrap_or_default(),
            release: c.labels.get(LABEL_RELEASE).cloned().unwrap_or_default(),
            state: match (c.running, c.exit_code) {
                (true, _) => "up".to_owned(),
                (false, Some(code)) => format!("crashed (status {code})"),
                (false, None) => "crashed".to_owned(),
            },
            name: c.name,
        })
        .collect();
    // Crashes of the release that should run; older releases' are history (see `events`).
    let target = ctl.db().target_release(&app).await?.map(|(r, _)| r.label());
    let crashes = ctl.crashes().status(&app).into_iter();
    for crash in crashes.filter(|c| Some(&c.release) == target.as_ref()) {
        let what = if crash.count >= crate::reconciler::CRASH_LOOP {
            "crash-looping"
        } else {
            "crashed"
        };
        let when = if crash.restart_in > 0 {
            format!("restarting in {}s", crash.restart_in)
        } else {
            "restarted".to_owned()
        };
        out.push(Instance {
            name: "-".to_owned(),
            process: crash.process,
            release: crash.release,
            state: format!("{what}: {} crashes in a row; {when}", crash.count),
        });
    }
    out.sort_by(|a, b| (&a.process, &a.name).cmp(&(&b.process, &b.name)));
    Ok(Json(out))
}

async fn get_formation(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<BTreeMap<String, usize>>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    let formation = ctl.db().formation(&app).await?;
    let current = ctl.db().current_release(&app).await?;
    let mut out: BTreeMap<String, usize> = current
        .as_ref()
        .map(|r| r.processes.keys().map(|k| (k.clone(), 0)).collect())
        .unwrap_or_default();
    if let Some(r) = &current {
        out.extend(desired_formation(r, &formation));
    }
    Ok(Json(out))
}

/// `{"web": 2, "worker": 1}`: instances per process type.
async fn scale(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
    Body(body): Body<BTreeMap<String, i64>>,
) -> Result<Json<BTreeMap<String, usize>>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    if body.is_empty() {
        return Err(ControllerError::BadRequest(
            "give at least one TYPE=N".into(),
        ));
    }
    let current = ctl.db().current_release(&app).await?;
    for (process, n) in &body {
        if !slipway_core::procfile::is_process_type(process) {
            return Err(ControllerError::BadRequest(format!(
                "invalid process type {process:?}"
            )));
        }
        if !(0..=100).contains(n) {
            return Err(ControllerError::BadRequest(format!(
                "{process}={n}: use a quantity from 0 to 100"
            )));
        }
        let known = current
            .as_ref()
            .is_some_and(|r| r.processes.contains_key(process));
        if !known {
            return Err(ControllerError::BadRequest(format!(
                "{app} has no process type {process}; its Procfile defines the types"
            )));
        }
    }
    ctl.db().scale(&app, &body).await?;
    let summary: Vec<String> = body.iter().map(|(k, v)| format!("{k}={v}")).collect();
    ctl.record(Some(&app), "scale", caller.0.as_str(), &summary.join(" "))
        .await;
    ctl.notify(Event::Scaled(app.clone()));
    let formation = ctl.db().formation(&app).await?;
    Ok(Json(
        current
            .map(|r| desired_formation(&r, &formation))
            .unwrap_or_default(),
    ))
}

async fn get_limits(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<BTreeMap<String, Limits>>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    Ok(Json(ctl.db().limits(&app).await?))
}

/// `{"web": {"memory_bytes": 536870912, "nano_cpus": null}}`: sets the given limits of each
/// process type (`null` removes one; a field left out stays as it is). Running instances are
/// replaced, rolling, to take the new limits.
async fn set_limits(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
    Body(body): Body<BTreeMap<String, BTreeMap<String, Option<i64>>>>,
) -> Result<Json<BTreeMap<String, Limits>>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    if body.is_empty() {
        return Err(ControllerError::BadRequest(
            "give at least one process type".into(),
        ));
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    let mut limits = ctl.db().limits(&app).await?;
    let mut summary = Vec::new();
    for (process, fields) in &body {
        if !slipway_core::procfile::is_process_type(process) {
            return Err(ControllerError::BadRequest(format!(
                "invalid process type {process:?}"
            )));
        }
        let entry = limits.entry(process.clone()).or_default();
        for (field, value) in fields {
            match (field.as_str(), *value) {
                ("memory_bytes", Some(v)) if !(MIN_MEMORY..=1 << 40).contains(&v) => {
                    return Err(ControllerError::BadRequest(format!(
                        "{process}: memory must be from 6M to 1T"
                    )));
                }
                ("nano_cpus", Some(v)) if !(10_000_000..=cpus * 1_000_000_000).contains(&v) => {
                    return Err(ControllerError::BadRequest(format!(
                        "{process}: cpu must be from 0.01 to {cpus} (this machine's CPUs)"
                    )));
                }
                ("memory_bytes", v) => entry.memory_bytes = v,
                ("nano_cpus", v) => entry.nano_cpus = v,
                (other, _) => {
                    return Err(ControllerError::BadRequest(format!(
                        "unknown limit {other:?}: use memory_bytes or nano_cpus"
                    )));
                }
            }
            summary.push(format!(
                "{process} {field}={}",
                value.map_or("none".to_owned(), |v| v.to_string())
            ));
        }
    }
    let changed: BTreeMap<String, Limits> = body
        .keys()
        .map(|p| (p.clone(), limits.get(p).copied().unwrap_or_default()))
        .collect();
    ctl.db().set_limits(&app, &changed).await?;
    ctl.record(Some(&app), "limits", caller.0.as_str(), &summary.join(", "))
        .await;
    ctl.notify(Event::Scaled(app.clone()));
    Ok(Json(ctl.db().limits(&app).await?))
}

/// Docker's smallest memory limit.
const MIN_MEMORY: i64 = 6 << 20;

#[derive(Serialize, Deserialize)]
struct Healthcheck {
    /// The HTTP path a new web instance must answer with 2xx or 3xx before it gets traffic;
    /// `null`: accepting a connection on `PORT` is enough.
    path: Option<String>,
}

async fn get_healthcheck(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<Healthcheck>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    Ok(Json(Healthcheck {
        path: ctl.db().health_path(&app).await?,
    }))
}

async fn set_healthcheck(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
    Body(body): Body<Healthcheck>,
) -> Result<Json<Healthcheck>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    if let Some(path) = &body.path {
        // It goes into an HTTP request line: one absolute path of visible ASCII, nothing more.
        let valid = path.starts_with('/')
            && path.len() <= 1024
            && path.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(ControllerError::BadRequest(format!(
                "{path:?} is not a health check path: use an absolute path such as /health"
            )));
        }
    }
    ctl.db().set_health_path(&app, body.path.as_deref()).await?;
    let detail = match &body.path {
        Some(p) => format!("health check: GET {p}"),
        None => "health check: accepting connections on PORT".to_owned(),
    };
    ctl.record(Some(&app), "healthcheck", caller.0.as_str(), &detail)
        .await;
    Ok(Json(body))
}

#[derive(Deserialize, Default)]
struct Restart {
    process: Option<String>,
}

/// Replaces the app's instances (of one process type, or all) with fresh ones, rolling: the
/// reconciler starts each new one and routes to it before the old ones drain and stop.
async fn restart(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
    body: Option<Json<Restart>>,
) -> Result<StatusCode> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    let process = body.and_then(|b| b.0.process);
    let detail = format!(
        "restarted {}",
        process.as_deref().unwrap_or("all instances")
    );
    ctl.record(Some(&app), "restart", caller.0.as_str(), &detail)
        .await;
    ctl.notify(Event::Restarted(app, process));
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize)]
struct LogsQuery {
    lines: Option<usize>,
    follow: Option<bool>,
}

/// The app's log: its instances' output, its builds and the platform's notices, each line
/// `<timestamp> <app>[<source>]: <text>`. The last `lines` (default 100); with `follow=true`
/// the answer stays open and streams new lines as they come.
async fn logs(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
    Params(q): Params<LogsQuery>,
) -> Result<axum::response::Response> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    let lines = q.lines.unwrap_or(100).min(10_000);
    // Subscribe before reading the tail, so no line falls between the two.
    let mut follow = q.follow.unwrap_or(false).then(|| ctl.logs().follow(&app));
    let tail = ctl.logs().tail(&app, lines);
    let mut body: String = tail.iter().map(|l| format!("{l}\n")).collect();
    if body.is_empty() && follow.is_none() {
        body = format!("{app} has no output yet\n");
    }
    let builder =
        axum::response::Response::builder().header("content-type", "text/plain; charset=utf-8");
    let Some(mut rx) = follow.take() else {
        return builder
            .body(axum::body::Body::from(body))
            .map_err(|e| ControllerError::Io(e.to_string()));
    };
    let newest = tail.last().cloned().unwrap_or_default();
    let (tx, out) = tokio::sync::mpsc::channel::<std::result::Result<String, std::io::Error>>(64);
    tokio::spawn(async move {
        if !body.is_empty() && tx.send(Ok(body)).await.is_err() {
            return;
        }
        loop {
            let received = tokio::select! {
                r = rx.recv() => r,
                // The client went away: stop following.
                () = tx.closed() => return,
            };
            let line = match received {
                Ok(line) => line,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Arc::from(format!(
                    "(slipway: {n} lines skipped: this client fell behind)"
                )),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            // Already sent with the tail.
            if *line <= *newest && !newest.is_empty() {
                continue;
            }
            if tx.send(Ok(format!("{line}\n"))).await.is_err() {
                return;
            }
        }
    });
    builder
        .body(axum::body::Body::from_stream(tokio_stream_from(out)))
        .map_err(|e| ControllerError::Io(e.to_string()))
}

#[derive(Serialize)]
struct AccessOut {
    owner: String,
    collaborators: Vec<String>,
}

async fn list_access(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<AccessOut>> {
    let AppRow {
        name: app, owner, ..
    } = authorized_row(&ctl, &caller.0, &raw).await?;
    Ok(Json(AccessOut {
        owner,
        collaborators: ctl.db().collaborators(&app).await?,
    }))
}

#[derive(Deserialize)]
struct AddAccess {
    user: String,
}

fn user_name(raw: &str) -> Result<UserName> {
    raw.parse()
        .map_err(|e: slipway_core::NameError| ControllerError::BadRequest(e.to_string()))
}

async fn add_access(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
    Body(body): Body<AddAccess>,
) -> Result<StatusCode> {
    let app = owned_app(&ctl, &caller.0, &raw).await?;
    let user = user_name(&body.user)?;
    if !ctl.db().add_collaborator(&app, &user).await? {
        return Err(ControllerError::NotFound(format!("no user {user}")));
    }
    ctl.record(
        Some(&app),
        "access",
        caller.0.as_str(),
        &format!("added {user}"),
    )
    .await;
    Ok(StatusCode::CREATED)
}

async fn remove_access(
    State(ctl): Ctl,
    caller: Caller,
    Path((raw, user)): Path<(String, String)>,
) -> Result<StatusCode> {
    let app = owned_app(&ctl, &caller.0, &raw).await?;
    let user = user_name(&user)?;
    if !ctl.db().remove_collaborator(&app, &user).await? {
        return Err(ControllerError::NotFound(format!(
            "{user} is not a collaborator on {app}"
        )));
    }
    ctl.record(
        Some(&app),
        "access",
        caller.0.as_str(),
        &format!("removed {user}"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct DeployImage {
    image: String,
}

/// A release of a prebuilt image from any registry the engine can reach. Its process types come
/// from the current release when it has them, else the image's own command runs as web.
async fn deploy_image(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
    Body(body): Body<DeployImage>,
) -> Result<Json<ReleaseOut>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    let image = body.image.trim().to_owned();
    let ok = !image.is_empty()
        && image.len() <= 512
        && !image.starts_with(['-', '/'])
        && image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"./:@_-".contains(&b));
    if !ok {
        return Err(ControllerError::BadRequest(format!(
            "invalid image reference {:?}: expected something like registry.example.com/team/app:1.2 or name@sha256:...",
            body.image
        )));
    }
    let release = ctl
        .release(&app, None, |prev| NewRelease {
            image: Some(image.clone()),
            config: prev.map(|p| p.config.clone()).unwrap_or_default(),
            processes: Default::default(),
            commit: None,
            description: format!("deploy image {image}"),
            created_by: caller.0.to_string(),
        })
        .await?;
    Ok(Json(ReleaseOut::from((release, ReleaseStatus::Pending))))
}

#[derive(Deserialize)]
struct RunOneoff {
    command: String,
}

/// Runs a one-off container of the current release. The answer streams newline-delimited
/// JSON: `{"output": "..."}` as the command writes, then `{"exit": N}`.
async fn run_oneoff(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
    Body(body): Body<RunOneoff>,
) -> Result<axum::response::Response> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    if body.command.trim().is_empty() {
        return Err(ControllerError::BadRequest("give a command to run".into()));
    }
    let (release, _) = ctl.db().target_release(&app).await?.ok_or_else(|| {
        ControllerError::BadRequest(format!("{app} has no release yet: git push first"))
    })?;
    let spec = slipway_runtime::BuildSpec {
        name: format!(
            "slipway-{}-{app}-run-{:08x}",
            &ctl.instance_id()[..8.min(ctl.instance_id().len())],
            rand::random::<u32>()
        ),
        image: release.image.clone().unwrap_or_default(),
        cmd: vec!["/bin/sh".into(), "-c".into(), body.command],
        env: crate::reconciler::container_env(&release, "run"),
        labels: std::collections::HashMap::from([
            (
                slipway_runtime::LABEL_INSTANCE.to_owned(),
                ctl.instance_id().to_owned(),
            ),
            (LABEL_APP.to_owned(), app.to_string()),
            (LABEL_PROCESS.to_owned(), "run".to_owned()),
            (LABEL_RELEASE.to_owned(), release.label()),
            (slipway_runtime::LABEL_ONEOFF.to_owned(), "true".to_owned()),
        ]),
        uploads: Vec::new(),
        memory_bytes: 1 << 30,
        nano_cpus: 1_000_000_000,
        timeout: std::time::Duration::from_secs(3600),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<String, std::io::Error>>(64);
    let ctl2 = ctl.clone();
    let image = release.image.clone().unwrap_or_default();
    let limit = spec.memory_bytes;
    tokio::spawn(async move {
        let line = |v: serde_json::Value| format!("{v}\n");
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        let engine = ctl2.engine_arc();
        let pulled = engine.pull(&image, &ctl2.registry_auth()).await;
        if let Err(e) = pulled {
            let _ = tx
                .send(Ok(line(serde_json::json!({"output": format!("{e}\n")}))))
                .await;
            let _ = tx.send(Ok(line(serde_json::json!({"exit": 1})))).await;
            return;
        }
        let running = tokio::spawn(async move { engine.run_build(spec, out_tx).await });
        while let Some(chunk) = out_rx.recv().await {
            let text = String::from_utf8_lossy(&chunk).into_owned();
            if tx
                .send(Ok(line(serde_json::json!({ "output": text }))))
                .await
                .is_err()
            {
                break;
            }
        }
        let code = match running.await {
            Ok(Ok(exit)) => {
                let _ = ctl2
                    .engine()
                    .remove(&exit.container, std::time::Duration::ZERO)
                    .await;
                if exit.out_of_memory && exit.code != 0 {
                    let _ = tx
                        .send(Ok(line(serde_json::json!({
                            "output": format!("ran out of memory (limit {} MiB)\n", limit >> 20)
                        }))))
                        .await;
                }
                exit.code
            }
            Ok(Err(e)) => {
                let _ = tx
                    .send(Ok(line(serde_json::json!({"output": format!("{e}\n")}))))
                    .await;
                1
            }
            Err(_) => 1,
        };
        let _ = tx.send(Ok(line(serde_json::json!({ "exit": code })))).await;
    });
    let stream = tokio_stream_from(rx);
    axum::response::Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from_stream(stream))
        .map_err(|e| ControllerError::Io(e.to_string()))
}

/// A stream over a channel's messages.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[derive(Serialize, Deserialize)]
struct Maintenance {
    maintenance: bool,
}

async fn get_maintenance(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<Maintenance>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    Ok(Json(Maintenance {
        maintenance: ctl.db().maintenance(&app).await?,
    }))
}

async fn set_maintenance(
    State(ctl): Ctl,
    caller: Caller,
    Path(raw): Path<String>,
    Body(body): Body<Maintenance>,
) -> Result<Json<Maintenance>> {
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    ctl.db().set_maintenance(&app, body.maintenance).await?;
    let detail = if body.maintenance {
        "maintenance on"
    } else {
        "maintenance off"
    };
    ctl.record(Some(&app), "maintenance", caller.0.as_str(), detail)
        .await;
    ctl.notify(Event::MaintenanceChanged(app));
    Ok(Json(body))
}

#[derive(Deserialize)]
struct EventsQuery {
    app: Option<String>,
    limit: Option<i64>,
}

#[derive(Serialize)]
struct EventOut {
    app: Option<String>,
    kind: String,
    actor: String,
    fingerprint: Option<String>,
    detail: String,
    created_at: i64,
}

/// The audit log: of one app (for whoever may operate it), else the caller's own actions (all
/// of them for admin).
async fn list_events(
    State(ctl): Ctl,
    caller: Caller,
    Params(q): Params<EventsQuery>,
) -> Result<Json<Vec<EventOut>>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let rows = match &q.app {
        Some(raw) => {
            let app = authorized_app(&ctl, &caller.0, raw).await?;
            ctl.db().events(Some(&app), None, limit).await?
        }
        None if caller.0.as_str() == "admin" => ctl.db().events(None, None, limit).await?,
        None => {
            ctl.db()
                .events(None, Some(caller.0.as_str()), limit)
                .await?
        }
    };
    Ok(Json(
        rows.into_iter()
            .map(|e| EventOut {
                app: e.app,
                kind: e.kind,
                actor: e.actor,
                fingerprint: e.fingerprint,
                detail: e.detail,
                created_at: e.created_at,
            })
            .collect(),
    ))
}

#[derive(Deserialize, Default)]
struct RegistryGcRequest {
    #[serde(default)]
    dry_run: bool,
}

/// Admin only: garbage collection of the registry, keeping the images of retained releases.
/// Answers what went (or, on a dry run, would go).
async fn registry_gc(
    State(ctl): Ctl,
    caller: Caller,
    body: Option<Json<RegistryGcRequest>>,
) -> Result<Json<slipway_core::ports::GcReport>> {
    if caller.0.as_str() != "admin" {
        return Err(ControllerError::Forbidden(
            "only admin can collect the registry's garbage".into(),
        ));
    }
    let dry_run = body.is_some_and(|Json(b)| b.dry_run);
    Ok(Json(ctl.collect_registry(&caller.0, dry_run).await?))
}

/// `GET /metrics`: the router's per-app counters in the Prometheus text format, for admin (a
/// Prometheus scrape job sends the token as a bearer credential).
async fn metrics(
    State(ctl): Ctl,
    caller: Caller,
) -> Result<([(axum::http::HeaderName, &'static str); 1], String)> {
    if caller.0.as_str() != "admin" {
        return Err(ControllerError::Forbidden(
            "only admin can read the metrics".into(),
        ));
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ctl.router_metrics(),
    ))
}

/// This API's OpenAPI 3.1 document, kept beside the crate and checked against [`router`] by a
/// test below.
const OPENAPI: &str = include_str!("../openapi.json");

/// The OpenAPI document. It needs no token, so that tools can find out what the API offers.
async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    const METHODS: [&str; 5] = ["get", "put", "post", "patch", "delete"];

    /// Every `(path, method)` that [`super::router`] registers, read from this file's source:
    /// each `.route("PATH", get(..).post(..))` in the body of `fn router`.
    fn routed() -> BTreeSet<(String, String)> {
        let source = include_str!("api.rs");
        let start = source.find("pub fn router(").expect("fn router");
        let body = &source[start..start + source[start..].find("\n}\n").expect("end of router")];
        let mut out = BTreeSet::new();
        for (at, _) in body.match_indices(".route(") {
            let call = &body[at + ".route(".len()..];
            // The call runs to its matching parenthesis.
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .expect("a closed .route( call")
                .0;
            let call = &call[..end];
            let path = call.split('"').nth(1).expect("a path literal").to_owned();
            for method in METHODS {
                // `get(` but not `forget(`: the method name starts a word.
                let called = call.match_indices(&format!("{method}(")).any(|(i, _)| {
                    call[..i]
                        .chars()
                        .next_back()
                        .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
                });
                if called {
                    out.insert((path.clone(), method.to_owned()));
                }
            }
        }
        out
    }

    /// Every `(path, method)` the OpenAPI document describes.
    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let paths = doc["paths"].as_object().expect("paths");
        paths
            .iter()
            .flat_map(|(path, item)| {
                METHODS
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(move |m| (path.clone(), (*m).to_owned()))
            })
            .collect()
    }

    /// Every `$ref` in `v`, so the test can check that each one resolves.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn openapi_document_matches_router() {
        let doc: Value = serde_json::from_str(super::OPENAPI).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let routed = routed();
        assert!(
            routed.len() > 20,
            "read too few routes from api.rs: {routed:?}"
        );
        let documented = documented(&doc);
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "controller/openapi.json and the router disagree.\n\
             routed but not documented: {undocumented:?}\n\
             documented but not routed: {unrouted:?}"
        );
        let mut all = Vec::new();
        refs(&doc, &mut all);
        for r in all {
            let pointer = r.strip_prefix('#').expect("a local $ref");
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }
}
