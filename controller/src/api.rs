//! The HTTP API, JSON over HTTP with bearer-token auth. Paths live under `/v1`. Errors always
//! have the shape `{"error": {"code": "...", "message": "..."}}` (see [`ControllerError`]).
//!
//! This module parses and checks requests and shapes responses; it holds no SQL.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use slipway_core::release::is_config_key;
use slipway_core::{AppName, Fingerprint, Release, UserName, keys};

use crate::db::{NewRelease, ReleaseStatus};
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
        .fallback(|| async { ControllerError::NotFound("no such API path".into()) })
        .with_state(controller)
}

/// The authenticated caller.
struct Caller(UserName);

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

/// The app, if `caller` may see it.
async fn authorized_app(ctl: &Controller, caller: &UserName, raw: &str) -> Result<AppName> {
    let app = app_name(raw)?;
    let row = ctl
        .db()
        .app(&app)
        .await?
        .ok_or_else(|| ControllerError::NotFound(format!("app {app} does not exist")))?;
    if row.owner != caller.as_str() && caller.as_str() != "admin" {
        return Err(ControllerError::Forbidden(format!(
            "you have no access to app {app}"
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
}

#[derive(Serialize)]
struct AddedKey {
    fingerprint: Fingerprint,
}

async fn add_key(
    State(ctl): Ctl,
    caller: Caller,
    Json(body): Json<AddKey>,
) -> Result<(StatusCode, Json<AddedKey>)> {
    let key =
        keys::parse(&body.public_key).map_err(|e| ControllerError::BadRequest(e.to_string()))?;
    ctl.db()
        .add_key(&caller.0, &key.fingerprint, &key.canonical, &key.comment)
        .await?;
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
    let apps = ctl.db().apps().await?;
    Ok(Json(
        apps.into_iter()
            .filter(|a| a.owner == caller.0.as_str() || caller.0.as_str() == "admin")
            .map(|a| app_out(&ctl, a, None))
            .collect(),
    ))
}

#[derive(Deserialize)]
struct CreateApp {
    name: String,
}

async fn create_app(
    State(ctl): Ctl,
    caller: Caller,
    Json(body): Json<CreateApp>,
) -> Result<(StatusCode, Json<AppOut>)> {
    let app = app_name(&body.name)?;
    ctl.db().create_app(&app, &caller.0).await?;
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
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    let row = ctl
        .db()
        .app(&app)
        .await?
        .ok_or_else(|| ControllerError::NotFound(format!("app {app} does not exist")))?;
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
    let app = authorized_app(&ctl, &caller.0, &raw).await?;
    ctl.db().delete_app(&app).await?;
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
    Json(changes): Json<BTreeMap<String, Option<String>>>,
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
        .release(&app, |prev| {
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
