//! The crate's error type and its one translation into OCI error responses.
//!
//! Owns: [`RegistryError`], the OCI error codes, and the mapping from each failure to a status,
//! a code and a JSON body `{"errors":[{"code","message","detail"}]}`. Must not: return internal
//! detail (paths, OS errors, identity failures) to clients; those are logged with `tracing` and
//! answered with a bare 500.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use slipway_core::ports::PortError;

use crate::api::RequestError;
use crate::manifest::ManifestError;
use crate::names::NameError;
use crate::storage::StorageError;

/// Everything that can go wrong in the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The configuration is unusable.
    #[error("invalid registry configuration: {0}")]
    Config(String),
    /// A name, tag, digest or upload id in a request is malformed.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A pushed manifest was refused.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Storage refused or failed an operation.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A request was refused before it reached storage.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The key that signs bearer tokens could not be read or made.
    #[error("token signing key {path}: {source}")]
    TokenKey {
        /// The key file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The identity service failed to answer.
    #[error("looking up the user: {0}")]
    Identity(#[from] PortError),
}

/// The error codes of the OCI Distribution spec that this registry uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
}

impl Code {
    fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
        }
    }
}

/// How a client error is answered.
struct Answer {
    status: StatusCode,
    code: Code,
    detail: Option<Value>,
}

fn answer(status: StatusCode, code: Code) -> Option<Answer> {
    Some(Answer {
        status,
        code,
        detail: None,
    })
}

impl RegistryError {
    /// The answer for a client error, or `None` for an internal failure.
    fn answer(&self) -> Option<Answer> {
        use StatusCode as S;
        match self {
            RegistryError::Config(_)
            | RegistryError::Identity(_)
            | RegistryError::TokenKey { .. } => None,
            RegistryError::Name(e) => match e {
                NameError::Repository(_) => answer(S::BAD_REQUEST, Code::NameInvalid),
                NameError::Tag(_) => answer(S::BAD_REQUEST, Code::ManifestInvalid),
                NameError::Digest(_) => answer(S::BAD_REQUEST, Code::DigestInvalid),
                NameError::Upload(_) => answer(S::NOT_FOUND, Code::BlobUploadUnknown),
            },
            RegistryError::Manifest(e) => match e {
                ManifestError::MediaType(_) | ManifestError::Invalid(_) => {
                    answer(S::BAD_REQUEST, Code::ManifestInvalid)
                }
                ManifestError::TooLarge => answer(S::PAYLOAD_TOO_LARGE, Code::SizeInvalid),
            },
            RegistryError::Storage(e) => match e {
                StorageError::BlobUnknown(digest) => Some(Answer {
                    status: S::NOT_FOUND,
                    code: Code::BlobUnknown,
                    detail: Some(json!({ "digest": digest })),
                }),
                StorageError::UploadUnknown(_) => answer(S::NOT_FOUND, Code::BlobUploadUnknown),
                StorageError::RangeInvalid { size, .. } => Some(Answer {
                    status: S::RANGE_NOT_SATISFIABLE,
                    code: Code::BlobUploadInvalid,
                    detail: Some(json!({ "size": size })),
                }),
                StorageError::DigestMismatch { expected, actual } => Some(Answer {
                    status: S::BAD_REQUEST,
                    code: Code::DigestInvalid,
                    detail: Some(json!({ "expected": expected, "actual": actual })),
                }),
                StorageError::ManifestBlobUnknown(digest) => Some(Answer {
                    status: S::BAD_REQUEST,
                    code: Code::ManifestBlobUnknown,
                    detail: Some(json!({ "digest": digest })),
                }),
                StorageError::ManifestUnknown { .. } => answer(S::NOT_FOUND, Code::ManifestUnknown),
                StorageError::RepositoryUnknown(_) => answer(S::NOT_FOUND, Code::NameUnknown),
                StorageError::Body(_) => answer(S::BAD_REQUEST, Code::BlobUploadInvalid),
                StorageError::Io { .. } => None,
            },
            RegistryError::Request(e) => match e {
                RequestError::Unauthorized
                | RequestError::InvalidToken(_)
                | RequestError::InsufficientScope(_) => answer(S::UNAUTHORIZED, Code::Unauthorized),
                RequestError::Denied(_) => answer(S::FORBIDDEN, Code::Denied),
                RequestError::NoSuchEndpoint => answer(S::NOT_FOUND, Code::Unsupported),
                RequestError::MethodNotAllowed { .. } => {
                    answer(S::METHOD_NOT_ALLOWED, Code::Unsupported)
                }
                RequestError::Query(_) => answer(S::BAD_REQUEST, Code::Unsupported),
                RequestError::ContentRange(_) => {
                    answer(S::RANGE_NOT_SATISFIABLE, Code::BlobUploadInvalid)
                }
                RequestError::DigestMissing => answer(S::BAD_REQUEST, Code::DigestInvalid),
                RequestError::Body(_) => answer(S::BAD_REQUEST, Code::ManifestInvalid),
            },
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let Some(answer) = self.answer() else {
            tracing::error!(error = %self, "registry request failed");
            let body = json!({ "errors": [{
                "code": "UNKNOWN",
                "message": "internal registry error; the registry's log has the cause",
            }]});
            return (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response();
        };
        tracing::debug!(error = %self, status = %answer.status, "registry request refused");
        let mut error = json!({ "code": answer.code.as_str(), "message": self.to_string() });
        if let Some(detail) = answer.detail {
            error["detail"] = detail;
        }
        let mut response = (answer.status, Json(json!({ "errors": [error] }))).into_response();
        let headers = response.headers_mut();
        // A 401's challenge depends on the request; `api` adds it.
        if let RegistryError::Storage(StorageError::RangeInvalid { size, .. }) = &self {
            // Tells the client where to resume, as a successful PATCH would.
            headers.insert("range", crate::api::range_header(*size));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn check(error: RegistryError, expected_status: u16, expected_body: &str) {
        let response = error.into_response();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        assert_eq!(
            (status, String::from_utf8_lossy(&bytes).into_owned()),
            (expected_status, expected_body.to_owned())
        );
    }

    #[tokio::test]
    async fn client_errors_carry_code_message_and_detail() {
        check(
            StorageError::DigestMismatch {
                expected: "sha256:aa".into(),
                actual: "sha256:bb".into(),
            }
            .into(),
            400,
            r#"{"errors":[{"code":"DIGEST_INVALID","detail":{"actual":"sha256:bb","expected":"sha256:aa"},"message":"content has digest sha256:bb, not sha256:aa"}]}"#,
        )
        .await;
        check(
            RequestError::Unauthorized.into(),
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required: log in with a Slipway user name and API token (HTTP Basic, or a bearer token from /v2/token)"}]}"#,
        )
        .await;
    }

    #[tokio::test]
    async fn internal_errors_hide_their_detail() {
        check(
            StorageError::Io {
                op: "write",
                path: "/secret/path".into(),
                source: std::io::Error::other("disk full"),
            }
            .into(),
            500,
            r#"{"errors":[{"code":"UNKNOWN","message":"internal registry error; the registry's log has the cause"}]}"#,
        )
        .await;
    }
}
