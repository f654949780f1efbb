//! Who is calling: HTTP Basic credentials checked against the controller's [`Identity`].
//!
//! Owns: reading the `Authorization` header and deciding whether it names a user. The password
//! is a Slipway API token; the user name must be the token's owner, so `docker login -u admin`
//! with admin's token works and any other name with it does not. Then `authorize` decides what
//! the user may do with the repository, following app access: `apps/<app>` is pulled and pushed
//! by the app's owner, collaborators and admin only; other repositories (the stacks) are pulled
//! by every user and pushed by admin only; the catalog, which names every app, is admin's.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, header};
use slipway_core::UserName;
use slipway_core::ports::Identity;

use crate::api::RequestError;
use crate::error::RegistryError;
use crate::names::RepoName;
use crate::route::Route;
use http::Method;
use slipway_core::AppName;
use slipway_core::ports::AppAccess;
use std::collections::HashMap;

/// What a request does to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Pull,
    Push,
}

/// Refuses the request unless `user` may do it to the repository it names (and, for a
/// cross-repository mount, pull from the repository it mounts from).
pub(crate) async fn authorize(
    identity: &dyn Identity,
    user: &UserName,
    route: &Route,
    method: &Method,
    query: &HashMap<String, String>,
) -> Result<(), RegistryError> {
    if user.as_str() == "admin" {
        return Ok(());
    }
    let action = if matches!(*method, Method::GET | Method::HEAD) {
        Action::Pull
    } else {
        Action::Push
    };
    let repo = match route {
        Route::Base => return Ok(()),
        Route::Catalog => {
            return Err(RequestError::Denied("only admin may list every repository".into()).into());
        }
        Route::Tags(r)
        | Route::Manifest(r, _)
        | Route::Blob(r, _)
        | Route::Uploads(r)
        | Route::Upload(r, _)
        | Route::Referrers(r, _) => r,
    };
    check(identity, user, repo.as_str(), action).await?;
    if let (Route::Uploads(_), Some(from)) = (route, query.get("from")) {
        let from = RepoName::parse(from)
            .map_err(|_| RequestError::Denied(format!("cannot mount from {from:?}")))?;
        check(identity, user, from.as_str(), Action::Pull).await?;
    }
    Ok(())
}

async fn check(
    identity: &dyn Identity,
    user: &UserName,
    repo: &str,
    action: Action,
) -> Result<(), RegistryError> {
    let app = repo
        .strip_prefix("apps/")
        .filter(|rest| !rest.contains('/'))
        .and_then(|name| name.parse::<AppName>().ok());
    let allowed = match app {
        Some(app) => identity.app_access(user, &app).await? == AppAccess::Allowed,
        // Outside apps/: shared images everyone builds on, changed by admin only.
        None => action == Action::Pull,
    };
    if allowed {
        return Ok(());
    }
    let verb = match action {
        Action::Pull => "pull from",
        Action::Push => "push to",
    };
    Err(RequestError::Denied(format!("{user} may not {verb} {repo}")).into())
}

/// The user whose credentials the request carries; refuses requests without valid ones.
pub(crate) async fn authenticate(
    identity: &dyn Identity,
    headers: &HeaderMap,
) -> Result<UserName, RegistryError> {
    let Some((user, token)) = basic_credentials(headers) else {
        return Err(RequestError::Unauthorized.into());
    };
    match identity.user_by_token(&token).await? {
        Some(owner) if owner.as_str() == user => Ok(owner),
        _ => Err(RequestError::Unauthorized.into()),
    }
}

/// The user name and password of a `Basic` `Authorization` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, token) = decoded.split_once(':')?;
    if user.is_empty() || token.is_empty() {
        return None;
    }
    Some((user.to_owned(), token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: &str, expected: Option<(&str, &str)>) {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().expect("header value"));
        let actual = basic_credentials(&headers);
        let expected = expected.map(|(u, t)| (u.to_owned(), t.to_owned()));
        assert_eq!(actual, expected, "{value}");
    }

    #[test]
    fn basic_headers() {
        let encode = |s: &str| STANDARD.encode(s);
        check(
            &format!("Basic {}", encode("admin:tok")),
            Some(("admin", "tok")),
        );
        check(
            &format!("basic {}", encode("admin:a:b")),
            Some(("admin", "a:b")),
        );
        check(&format!("Bearer {}", encode("admin:tok")), None);
        check(&format!("Basic {}", encode("admin")), None);
        check(&format!("Basic {}", encode("admin:")), None);
        check(&format!("Basic {}", encode(":tok")), None);
        check("Basic !!!", None);
    }
}

#[cfg(test)]
mod access {
    use super::*;
    use async_trait::async_trait;
    use slipway_core::Fingerprint;
    use slipway_core::ports::{KeyOwner, PortError};

    /// `alice` operates app `mine` and nothing else.
    struct Fake;

    #[async_trait]
    impl Identity for Fake {
        async fn key_owner(&self, _: &Fingerprint) -> Result<Option<KeyOwner>, PortError> {
            Ok(None)
        }

        async fn user_by_token(&self, _: &str) -> Result<Option<UserName>, PortError> {
            Ok(None)
        }

        async fn app_access(&self, user: &UserName, app: &AppName) -> Result<AppAccess, PortError> {
            Ok(match (user.as_str(), app.as_str()) {
                ("alice", "mine") => AppAccess::Allowed,
                (_, "mine" | "theirs") => AppAccess::Forbidden,
                _ => AppAccess::NoSuchApp,
            })
        }
    }

    async fn may(user: &str, method: Method, path: &str) -> bool {
        let route = crate::route::parse(path.split('?').next().unwrap())
            .unwrap()
            .unwrap();
        let query: HashMap<String, String> = path
            .split_once('?')
            .map(|(_, q)| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let user: UserName = user.parse().unwrap();
        authorize(&Fake, &user, &route, &method, &query)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn repositories_follow_app_access() {
        let manifest = |repo: &str| format!("/v2/{repo}/manifests/latest");
        assert!(may("alice", Method::GET, &manifest("apps/mine")).await);
        assert!(may("alice", Method::PUT, &manifest("apps/mine")).await);
        assert!(!may("alice", Method::GET, &manifest("apps/theirs")).await);
        assert!(!may("alice", Method::DELETE, &manifest("apps/theirs")).await);
        assert!(!may("alice", Method::GET, &manifest("apps/missing")).await);
        assert!(may("alice", Method::GET, &manifest("stacks/run")).await);
        assert!(!may("alice", Method::PUT, &manifest("stacks/run")).await);
        assert!(!may("alice", Method::GET, "/v2/_catalog").await);
        assert!(may("alice", Method::GET, "/v2/").await);
        assert!(may("admin", Method::PUT, &manifest("apps/theirs")).await);
        assert!(may("admin", Method::GET, "/v2/_catalog").await);
        // Mounting needs pull on the source too.
        let mount =
            |from: &str| format!("/v2/apps/mine/blobs/uploads/?mount=sha256:00&from={from}");
        assert!(may("alice", Method::POST, &mount("stacks/run")).await);
        assert!(!may("alice", Method::POST, &mount("apps/theirs")).await);
        assert!(!may("alice", Method::POST, &mount("..")).await);
    }
}
