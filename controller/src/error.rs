//! The controller's errors, and their one mapping to HTTP responses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::db::DbError;

/// Errors of the controller. Each maps to one HTTP status and a stable `code` in the API's error
/// shape: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Missing or unknown API token.
    #[error("missing or invalid API token: set SLIPWAY_TOKEN or run `slipway login`")]
    Unauthorized,
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// Already exists.
    #[error("{0}")]
    Conflict(String),
    /// The request was malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The path exists, the method does not.
    #[error("this path does not take that method; see /v1/openapi.json")]
    MethodNotAllowed,
    /// A database failure; details are logged, not returned.
    #[error("database error")]
    Db(#[from] DbError),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: String,
}

impl IntoResponse for ControllerError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ControllerError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ControllerError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ControllerError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ControllerError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ControllerError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ControllerError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ControllerError::Db(DbError::Exists(_)) => (StatusCode::CONFLICT, "conflict"),
            ControllerError::Db(_) | ControllerError::Io(_) => {
                tracing::error!("api: {self:#}");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let message = match &self {
            ControllerError::Db(DbError::Exists(what)) => format!("{what} already exists"),
            ControllerError::Db(_) | ControllerError::Io(_) => {
                "internal error; the server log has details".to_owned()
            }
            other => other.to_string(),
        };
        (
            status,
            Json(Body {
                error: Inner { code, message },
            }),
        )
            .into_response()
    }
}
