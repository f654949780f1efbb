//! Turns a `/v2/...` request path into a [`Route`].
//!
//! Owns: the shape of every Distribution API path. Repository names have any number of
//! components, so the path is matched from its end (`.../manifests/<ref>`, `.../tags/list`,
//! `.../blobs/<digest>`, `.../blobs/uploads/[<id>]`, `.../referrers/<digest>`) and whatever
//! precedes the suffix is the name.
//! Must not: do IO or look at methods, headers or bodies.

use crate::names::{Digest, NameError, Reference, RepoName, UploadId};

/// One endpoint of the Distribution API, with its validated path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/_catalog`: the list of repositories.
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`: start an upload.
    Uploads(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`: one upload session.
    Upload(RepoName, UploadId),
    /// `/v2/<name>/referrers/<digest>`: the manifests whose subject is the digest.
    Referrers(RepoName, Digest),
}

/// Parses a request path. `Ok(None)` means the path is no Distribution API endpoint; `Err` means
/// it is one, but a name in it is invalid.
pub(crate) fn parse(path: &str) -> Result<Option<Route>, NameError> {
    let Some(rest) = path.strip_prefix("/v2") else {
        return Ok(None);
    };
    let rest = match rest {
        "" | "/" => return Ok(Some(Route::Base)),
        _ => match rest.strip_prefix('/') {
            Some(rest) => rest,
            None => return Ok(None),
        },
    };
    if rest == "_catalog" {
        return Ok(Some(Route::Catalog));
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    let name = |k: usize| RepoName::parse(&segments[..n - k].join("/"));
    if n < 3 {
        return Ok(None);
    }
    let (third, second, last) = (segments[n - 3], segments[n - 2], segments[n - 1]);
    let route = if second == "tags" && last == "list" {
        Route::Tags(name(2)?)
    } else if second == "manifests" {
        Route::Manifest(name(2)?, Reference::parse(last)?)
    } else if second == "blobs" && last == "uploads" {
        Route::Uploads(name(2)?)
    } else if second == "blobs" {
        Route::Blob(name(2)?, Digest::parse(last)?)
    } else if second == "referrers" {
        Route::Referrers(name(2)?, Digest::parse(last)?)
    } else if third == "blobs" && second == "uploads" && n >= 4 {
        if last.is_empty() {
            Route::Uploads(name(3)?)
        } else {
            Route::Upload(name(3)?, UploadId::parse(last)?)
        }
    } else {
        return Ok(None);
    };
    Ok(Some(route))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn check(path: &str, expected: Option<&str>) {
        let actual = match parse(path) {
            Ok(Some(route)) => Some(format!("{route:?}")),
            Ok(None) => None,
            Err(e) => Some(format!("error: {e}")),
        };
        assert_eq!(actual.as_deref(), expected, "{path}");
    }

    #[test]
    fn paths() {
        check("/v2/", Some("Base"));
        check("/v2", Some("Base"));
        check("/v2/_catalog", Some("Catalog"));
        check("/v3/", None);
        check("/v2x", None);
        check("/v2/app", None);
        check("/v2/app/referrers", None);
        check(
            &format!("/v2/a/b/referrers/{DIGEST}"),
            Some(
                r#"Referrers(RepoName("a/b"), Digest { algorithm: Sha256, hex: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae" })"#,
            ),
        );
        check("/v2/a/b/c/tags/list", Some(r#"Tags(RepoName("a/b/c"))"#));
        check(
            "/v2/a/manifests/latest",
            Some(r#"Manifest(RepoName("a"), Tag(Tag("latest")))"#),
        );
        check(
            &format!("/v2/a/b/manifests/{DIGEST}"),
            Some(
                r#"Manifest(RepoName("a/b"), Digest(Digest { algorithm: Sha256, hex: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae" }))"#,
            ),
        );
        check(
            "/v2/a/b/blobs/uploads/",
            Some(r#"Uploads(RepoName("a/b"))"#),
        );
        check("/v2/a/b/blobs/uploads", Some(r#"Uploads(RepoName("a/b"))"#));
        check(
            "/v2/a/blobs/uploads/0123456789abcdef0123456789abcdef",
            Some(r#"Upload(RepoName("a"), UploadId("0123456789abcdef0123456789abcdef"))"#),
        );
        // Components that look like endpoint words are legal names.
        check("/v2/blobs/tags/list", Some(r#"Tags(RepoName("blobs"))"#));
        check(
            "/v2/manifests/blobs/uploads/",
            Some(r#"Uploads(RepoName("manifests"))"#),
        );
    }

    #[test]
    fn invalid_names_are_errors_not_paths() {
        check(
            "/v2/../etc/tags/list",
            Some(
                r#"error: invalid repository name "../etc": use '/'-separated lower-case components like 'team/app'"#,
            ),
        );
        check(
            "/v2/a//b/tags/list",
            Some(
                r#"error: invalid repository name "a//b": use '/'-separated lower-case components like 'team/app'"#,
            ),
        );
        check(
            "/v2/a/blobs/sha256:..x",
            Some(
                r#"error: invalid digest "sha256:..x": expected sha256:<64 lower-case hex> or sha512:<128 hex>"#,
            ),
        );
        check(
            "/v2/a/blobs/uploads/xyz",
            Some(r#"error: invalid upload id "xyz""#),
        );
        check(
            "/v2/a/referrers/latest",
            Some(
                r#"error: invalid digest "latest": expected sha256:<64 lower-case hex> or sha512:<128 hex>"#,
            ),
        );
        check("/v2/blobs/uploads/", None);
    }
}
