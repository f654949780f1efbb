//! Who is calling, what a request needs, and what each user may do.
//!
//! Owns: reading the `Authorization` header, the access each request needs, the access policy,
//! and the `WWW-Authenticate` challenge. A caller is either a user proved by HTTP Basic
//! credentials (a Slipway user name and API token; the name must be the token's owner, so
//! `docker login -u admin` with admin's token works and any other name with it does not), or the
//! holder of a bearer token from `/v2/token`, which grants what its `access` claim lists and
//! nothing else. The policy follows app access: `apps/<app>` is pulled, pushed and deleted by the
//! app's owner, collaborators and admin only; other repositories (the stacks) are pulled by
//! every user and changed by admin only; the catalog, which names every app, is admin's. A
//! token only ever holds the intersection of what was asked and what the policy allows.
//! Must not: sign or parse tokens (that is [`crate::token`]) or build error bodies.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue, Method, header};
use slipway_core::ports::{AppAccess, Identity};
use slipway_core::{AppName, UserName};

use crate::api::RequestError;
use crate::error::RegistryError;
use crate::names::RepoName;
use crate::route::Route;
use crate::token::{Access, Action, Claims, Resource, SERVICE, Scope, TokenKey};

/// The user who may do everything.
const ADMIN: &str = "admin";

/// What an app's operators (and admin, in any repository) may do to a repository.
const EVERYTHING: &[Action] = &[Action::Pull, Action::Push, Action::Delete];

/// Who sent a request.
#[derive(Debug)]
pub(crate) enum Caller {
    /// A user who sent HTTP Basic credentials: the policy decides each request.
    User(UserName),
    /// The holder of a valid bearer token: its claims decide each request.
    Token(Claims),
}

/// One access a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Need {
    /// What it touches.
    pub(crate) resource: Resource,
    /// What it does there.
    pub(crate) action: Action,
    /// The source of a cross-repository mount. A token that does not name it is checked against
    /// its user's access instead: clients such as oci-client ask for the target's scope only,
    /// and a mount shows the user nothing they may not already pull.
    mount_source: bool,
}

impl Need {
    fn new(resource: Resource, action: Action) -> Need {
        Need {
            resource,
            action,
            mount_source: false,
        }
    }
}

/// The access a request needs, as the reference implementation counts it: reads need pull,
/// writes pull and push, deletes delete; uploads pull and push whatever the method; a mount
/// also pull on its source; the catalog `registry:catalog:*`. The version check needs none.
pub(crate) fn needs(
    route: &Route,
    method: &Method,
    query: &HashMap<String, String>,
) -> Result<Vec<Need>, RegistryError> {
    let repo = match route {
        Route::Base => return Ok(Vec::new()),
        Route::Catalog => return Ok(vec![Need::new(Resource::Catalog, Action::All)]),
        Route::Tags(r)
        | Route::Manifest(r, _)
        | Route::Blob(r, _)
        | Route::Uploads(r)
        | Route::Upload(r, _)
        | Route::Referrers(r, _) => Resource::Repository(r.clone()),
    };
    let upload = matches!(route, Route::Uploads(_) | Route::Upload(..));
    let actions: &[Action] = match *method {
        _ if upload => &[Action::Pull, Action::Push],
        Method::GET | Method::HEAD => &[Action::Pull],
        Method::DELETE => &[Action::Delete],
        _ => &[Action::Pull, Action::Push],
    };
    let mut needs: Vec<Need> = actions
        .iter()
        .map(|action| Need::new(repo.clone(), *action))
        .collect();
    if let (Route::Uploads(_), Some(from)) = (route, query.get("from")) {
        let from = RepoName::parse(from)?;
        needs.push(Need {
            resource: Resource::Repository(from),
            action: Action::Pull,
            mount_source: true,
        });
    }
    Ok(needs)
}

/// Refuses the request unless the caller has every access it needs: `Denied` (403) when the
/// user may not do it at all, `InsufficientScope` (401, so the client asks for a wider token)
/// when only the token is too narrow.
pub(crate) async fn authorize(
    identity: &dyn Identity,
    caller: &Caller,
    needs: &[Need],
) -> Result<(), RegistryError> {
    for need in needs {
        let (user, may) = match caller {
            Caller::User(user) => {
                let may = allowed(identity, user, &need.resource).await?;
                (user.clone(), may.contains(&need.action))
            }
            Caller::Token(claims) => {
                if claims.grants(&need.resource, need.action) {
                    continue;
                }
                let user = token_user(claims)?;
                let may = allowed(identity, &user, &need.resource)
                    .await?
                    .contains(&need.action);
                if may && need.mount_source {
                    continue;
                }
                if may {
                    return Err(RequestError::InsufficientScope(format!(
                        "the bearer token does not grant {} on {}: ask /v2/token for that scope",
                        need.action.as_str(),
                        need.resource
                    ))
                    .into());
                }
                (user, false)
            }
        };
        if !may {
            return Err(denied(&user, need).into());
        }
    }
    Ok(())
}

fn denied(user: &UserName, need: &Need) -> RequestError {
    let Resource::Repository(repo) = &need.resource else {
        return RequestError::Denied("only admin may list every repository".into());
    };
    let verb = match need.action {
        Action::Pull => "pull from",
        Action::Push => "push to",
        Action::Delete => "delete from",
        Action::All => "access",
    };
    RequestError::Denied(format!("{user} may not {verb} {repo}"))
}

/// The user a token was issued to.
fn token_user(claims: &Claims) -> Result<UserName, RequestError> {
    claims
        .sub
        .parse()
        .map_err(|_| RequestError::InvalidToken("token names no user".into()))
}

/// What `user` may do to `resource`.
async fn allowed(
    identity: &dyn Identity,
    user: &UserName,
    resource: &Resource,
) -> Result<&'static [Action], RegistryError> {
    let admin = user.as_str() == ADMIN;
    let repo = match resource {
        Resource::Catalog if admin => return Ok(&[Action::All]),
        Resource::Catalog => return Ok(&[]),
        Resource::Repository(_) if admin => return Ok(EVERYTHING),
        Resource::Repository(repo) => repo,
    };
    let app = repo
        .as_str()
        .strip_prefix("apps/")
        .filter(|rest| !rest.contains('/'))
        .and_then(|name| name.parse::<AppName>().ok());
    Ok(match app {
        Some(app) if identity.app_access(user, &app).await? == AppAccess::Allowed => EVERYTHING,
        Some(_) => &[],
        // Outside apps/: shared images everyone builds on, changed by admin only.
        None => &[Action::Pull],
    })
}

/// The `access` claim of a token for `user` asking for `scopes`: per scope, the actions asked
/// that the policy allows (`*` asks for all of them); scopes granting nothing are left out.
pub(crate) async fn grant(
    identity: &dyn Identity,
    user: &UserName,
    scopes: &[Scope],
) -> Result<Vec<Access>, RegistryError> {
    let mut access = Vec::new();
    for scope in scopes {
        let allowed = allowed(identity, user, &scope.resource).await?;
        let granted: Vec<Action> = if scope.actions.contains(&Action::All) {
            allowed.to_vec()
        } else {
            let mut granted = Vec::new();
            for action in &scope.actions {
                if allowed.contains(action) && !granted.contains(action) {
                    granted.push(*action);
                }
            }
            granted
        };
        if !granted.is_empty() {
            access.push(Access::new(&scope.resource, &granted));
        }
    }
    Ok(access)
}

/// The caller of a request: Basic credentials checked with `identity`, or a bearer token checked
/// with `key` at `now` (seconds since the epoch). Refuses requests with neither.
pub(crate) async fn authenticate(
    identity: &dyn Identity,
    key: &TokenKey,
    headers: &HeaderMap,
    now: u64,
) -> Result<Caller, RegistryError> {
    if let Some(token) = bearer_token(headers) {
        let claims = key
            .verify(token, now)
            .map_err(|e| RequestError::InvalidToken(e.to_string()))?;
        token_user(&claims)?;
        return Ok(Caller::Token(claims));
    }
    let Some((user, token)) = basic_credentials(headers) else {
        return Err(RequestError::Unauthorized.into());
    };
    Ok(Caller::User(login(identity, &user, &token).await?))
}

/// The user named `user` if `token` is one of their API tokens.
pub(crate) async fn login(
    identity: &dyn Identity,
    user: &str,
    token: &str,
) -> Result<UserName, RegistryError> {
    match identity.user_by_token(token).await? {
        Some(owner) if owner.as_str() == user => Ok(owner),
        _ => Err(RequestError::Unauthorized.into()),
    }
}

/// The user name and password of a `Basic` `Authorization` header.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let encoded = credentials(headers, "basic")?;
    let decoded = STANDARD.decode(encoded).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, token) = decoded.split_once(':')?;
    if user.is_empty() || token.is_empty() {
        return None;
    }
    Some((user.to_owned(), token.to_owned()))
}

/// The token of a `Bearer` `Authorization` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    credentials(headers, "bearer")
}

/// The credentials of an `Authorization` header with this scheme (any case).
fn credentials<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (given, credentials) = value.trim().split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| credentials.trim())
}

/// The `WWW-Authenticate` value that sends a client to the token endpoint for `needs`:
/// `Bearer realm="<scheme>://<host>/v2/token",service="slipway-registry",scope="..."`, with
/// `error` when a token was refused. The realm is on the host the client asked for.
pub(crate) fn challenge(headers: &HeaderMap, needs: &[Need], error: Option<&str>) -> HeaderValue {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let scheme = if https { "https" } else { "http" };
    let mut value = format!(r#"Bearer realm="{scheme}://{host}/v2/token",service="{SERVICE}""#);
    // One scope per resource, in the order needed.
    let mut scopes: Vec<Scope> = Vec::new();
    for need in needs {
        match scopes.iter_mut().find(|s| s.resource == need.resource) {
            Some(scope) => scope.actions.push(need.action),
            None => scopes.push(Scope {
                resource: need.resource.clone(),
                actions: vec![need.action],
            }),
        }
    }
    if !scopes.is_empty() {
        let scopes: Vec<String> = scopes.iter().map(Scope::to_string).collect();
        value.push_str(&format!(r#",scope="{}""#, scopes.join(" ")));
    }
    if let Some(error) = error {
        value.push_str(&format!(r#",error="{error}""#));
    }
    // Built from validated names, fixed words and the checked host: visible ASCII.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
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

    #[test]
    fn challenges() {
        let check = |host: Option<&str>, path: &str, method: Method, error, expected: &str| {
            let mut headers = HeaderMap::new();
            if let Some(host) = host {
                headers.insert(header::HOST, host.parse().unwrap());
            }
            let (path, query) = path.split_once('?').unwrap_or((path, ""));
            let route = crate::route::parse(path).unwrap().unwrap();
            let query: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            let needs = needs(&route, &method, &query).unwrap();
            let value = challenge(&headers, &needs, error);
            assert_eq!(value.to_str().unwrap(), expected, "{path}");
        };
        let realm = r#"Bearer realm="http://127.0.0.1:5000/v2/token",service="slipway-registry""#;
        let host = Some("127.0.0.1:5000");
        check(host, "/v2/", Method::GET, None, realm);
        check(
            host,
            "/v2/apps/web/manifests/latest",
            Method::HEAD,
            None,
            &format!(r#"{realm},scope="repository:apps/web:pull""#),
        );
        check(
            host,
            "/v2/apps/web/blobs/uploads/?mount=sha256:00&from=stacks/run",
            Method::POST,
            Some("insufficient_scope"),
            &format!(
                r#"{realm},scope="repository:apps/web:pull,push repository:stacks/run:pull",error="insufficient_scope""#
            ),
        );
        check(
            host,
            "/v2/_catalog",
            Method::GET,
            None,
            &format!(r#"{realm},scope="registry:catalog:*""#),
        );
        check(
            Some("evil\"host"),
            "/v2/",
            Method::GET,
            None,
            r#"Bearer realm="http://localhost/v2/token",service="slipway-registry""#,
        );
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

    fn request(path: &str) -> (Route, HashMap<String, String>) {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let route = crate::route::parse(path).unwrap().unwrap();
        let query = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        (route, query)
    }

    async fn decide(caller: &Caller, method: Method, path: &str) -> Result<(), RegistryError> {
        let (route, query) = request(path);
        let needs = needs(&route, &method, &query)?;
        authorize(&Fake, caller, &needs).await
    }

    async fn may(user: &str, method: Method, path: &str) -> bool {
        let caller = Caller::User(user.parse().unwrap());
        decide(&caller, method, path).await.is_ok()
    }

    fn manifest(repo: &str) -> String {
        format!("/v2/{repo}/manifests/latest")
    }

    fn mount(from: &str) -> String {
        format!("/v2/apps/mine/blobs/uploads/?mount=sha256:00&from={from}")
    }

    #[tokio::test]
    async fn repositories_follow_app_access() {
        assert!(may("alice", Method::GET, &manifest("apps/mine")).await);
        assert!(may("alice", Method::PUT, &manifest("apps/mine")).await);
        assert!(may("alice", Method::DELETE, &manifest("apps/mine")).await);
        assert!(!may("alice", Method::GET, &manifest("apps/theirs")).await);
        assert!(!may("alice", Method::DELETE, &manifest("apps/theirs")).await);
        assert!(!may("alice", Method::GET, &manifest("apps/missing")).await);
        assert!(may("alice", Method::GET, &manifest("stacks/run")).await);
        assert!(!may("alice", Method::PUT, &manifest("stacks/run")).await);
        assert!(!may("alice", Method::DELETE, &manifest("stacks/run")).await);
        assert!(!may("alice", Method::GET, "/v2/_catalog").await);
        assert!(may("alice", Method::GET, "/v2/").await);
        assert!(may("admin", Method::PUT, &manifest("apps/theirs")).await);
        assert!(may("admin", Method::GET, "/v2/_catalog").await);
        // Mounting needs pull on the source too.
        assert!(may("alice", Method::POST, &mount("stacks/run")).await);
        assert!(!may("alice", Method::POST, &mount("apps/theirs")).await);
        assert!(!may("alice", Method::POST, &mount("..")).await);
    }

    async fn token(user: &str, scopes: &[&str]) -> Caller {
        let user: UserName = user.parse().unwrap();
        let scopes: Vec<Scope> = scopes.iter().filter_map(|s| Scope::parse(s)).collect();
        let access = grant(&Fake, &user, &scopes).await.unwrap();
        Caller::Token(Claims::new(user.as_str(), access, 0))
    }

    fn access_of(caller: &Caller) -> String {
        let Caller::Token(claims) = caller else {
            unreachable!("a token caller")
        };
        serde_json::to_string(&claims.access).unwrap()
    }

    #[tokio::test]
    async fn tokens_hold_what_was_asked_and_allowed() {
        let check = |caller: Caller, expected: &str| {
            assert_eq!(access_of(&caller), expected);
        };
        check(
            token(
                "alice",
                &[
                    "repository:apps/mine:pull,push",
                    "repository:apps/theirs:pull",
                ],
            )
            .await,
            r#"[{"type":"repository","name":"apps/mine","actions":["pull","push"]}]"#,
        );
        check(
            token("alice", &["repository:stacks/run:pull,push,delete"]).await,
            r#"[{"type":"repository","name":"stacks/run","actions":["pull"]}]"#,
        );
        check(
            token("alice", &["repository:apps/mine:*", "registry:catalog:*"]).await,
            r#"[{"type":"repository","name":"apps/mine","actions":["pull","push","delete"]}]"#,
        );
        check(
            token(
                "admin",
                &["registry:catalog:*", "repository:apps/theirs:push"],
            )
            .await,
            r#"[{"type":"registry","name":"catalog","actions":["*"]},{"type":"repository","name":"apps/theirs","actions":["push"]}]"#,
        );
        check(
            token("alice", &["repository:apps/missing:pull"]).await,
            "[]",
        );
    }

    /// The status and code of a refusal, or "ok".
    async fn outcome(caller: &Caller, method: Method, path: &str) -> String {
        match decide(caller, method, path).await {
            Ok(()) => "ok".into(),
            Err(RegistryError::Request(RequestError::Denied(_))) => "denied".into(),
            Err(RegistryError::Request(RequestError::InsufficientScope(_))) => {
                "insufficient scope".into()
            }
            Err(e) => format!("{e}"),
        }
    }

    #[tokio::test]
    async fn tokens_grant_their_access_claim_only() {
        let pull = token("alice", &["repository:apps/mine:pull"]).await;
        assert_eq!(
            outcome(&pull, Method::GET, &manifest("apps/mine")).await,
            "ok"
        );
        // Alice may push, but this token does not say so: the client should ask for more.
        assert_eq!(
            outcome(&pull, Method::PUT, &manifest("apps/mine")).await,
            "insufficient scope"
        );
        // Alice may not touch `theirs` whatever the token says.
        assert_eq!(
            outcome(&pull, Method::GET, &manifest("apps/theirs")).await,
            "denied"
        );
        assert_eq!(outcome(&pull, Method::GET, "/v2/").await, "ok");
        assert_eq!(outcome(&pull, Method::GET, "/v2/_catalog").await, "denied");
        // A mount's source is checked against the user's access when the token omits it.
        let push = token("alice", &["repository:apps/mine:pull,push"]).await;
        assert_eq!(
            outcome(&push, Method::POST, &mount("stacks/run")).await,
            "ok"
        );
        assert_eq!(
            outcome(&push, Method::POST, &mount("apps/theirs")).await,
            "denied"
        );
        // Admin's tokens are as narrow as what admin asked for.
        let admin = token("admin", &["repository:apps/theirs:pull"]).await;
        assert_eq!(
            outcome(&admin, Method::DELETE, &manifest("apps/theirs")).await,
            "insufficient scope"
        );
        assert_eq!(
            outcome(&admin, Method::GET, &manifest("apps/theirs")).await,
            "ok"
        );
    }
}
