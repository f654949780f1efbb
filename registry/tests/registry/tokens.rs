//! Docker's token protocol: the `401` challenge, `/v2/token`, and requests with bearer tokens.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::util::{OTHER_TOKEN, Server, TOKEN, USER, error_code, header, sha256};

/// Bob's credentials: he operates `apps/bobs` only.
const BOB: (&str, &str) = ("bob", OTHER_TOKEN);

/// The parameters of a `Bearer` challenge.
fn challenge(value: &str) -> Vec<(String, String)> {
    let params = value.strip_prefix("Bearer ").expect("a Bearer challenge");
    // Values hold no commas but between scopes' actions, so split on `",`.
    params
        .split("\",")
        .map(|p| {
            let (k, v) = p.split_once('=').expect("k=v");
            (k.to_owned(), v.trim_matches('"').to_owned())
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// The claims of a token, unverified.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("json")
}

/// Asks the token endpoint for `scopes` as `who`; returns the answer's status and body.
async fn ask(server: &Server, who: (&str, &str), scopes: &[&str]) -> (StatusCode, Value) {
    let mut query = vec![("service", "slipway-registry")];
    query.extend(scopes.iter().map(|s| ("scope", *s)));
    let response = server
        .anonymous(Method::GET, "/v2/token")
        .query(&query)
        .basic_auth(who.0, Some(who.1))
        .send()
        .await
        .expect("token request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A token for `scopes` as `who`.
async fn token(server: &Server, who: (&str, &str), scopes: &[&str]) -> String {
    let (status, body) = ask(server, who, scopes).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn the_challenge_leads_to_a_token_that_pulls_and_pushes() {
    let server = Server::start().await;
    let manifest = "/v2/apps/bobs/manifests/v1";

    // The challenge names the realm on the host asked, the service and the request's scope.
    let response = server
        .anonymous(Method::GET, manifest)
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let params = challenge(&header(&response, "www-authenticate"));
    let realm = param(&params, "realm").to_owned();
    assert_eq!(realm, server.url("/v2/token"));
    assert_eq!(param(&params, "service"), "slipway-registry");
    assert_eq!(param(&params, "scope"), "repository:apps/bobs:pull");

    // The token endpoint, as Docker calls it.
    let response = reqwest::Client::new()
        .get(&realm)
        .query(&[
            ("account", "bob"),
            ("client_id", "docker"),
            ("offline_token", "true"),
            ("service", param(&params, "service")),
            ("scope", param(&params, "scope")),
        ])
        .basic_auth(BOB.0, Some(BOB.1))
        .send()
        .await
        .expect("token");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "cache-control"), "no-store");
    let body: Value = response.json().await.expect("json");
    let pull = body["token"].as_str().expect("token").to_owned();
    assert_eq!(body["access_token"], body["token"]);
    assert_eq!(body["expires_in"], 300);
    assert!(
        body["issued_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    let c = claims(&pull);
    assert_eq!(c["sub"], "bob");
    assert_eq!(c["aud"], "slipway-registry");
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 300);
    assert_eq!(
        c["access"],
        json!([{"type": "repository", "name": "apps/bobs", "actions": ["pull"]}])
    );

    // A pull-only token reads but does not push; the answer asks for the wider scope.
    let bearer = |method, path: &str, token: &str| {
        server.anonymous(method, path).bearer_auth(token.to_owned())
    };
    let response = bearer(Method::GET, manifest, &pull).send().await.unwrap();
    assert_eq!(
        error_code(response).await,
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );
    let data = b"pushed with a bearer token";
    let digest = sha256(data);
    let upload = format!("/v2/apps/bobs/blobs/uploads/?digest={digest}");
    let response = bearer(Method::POST, &upload, &pull)
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let params = challenge(&header(&response, "www-authenticate"));
    assert_eq!(param(&params, "scope"), "repository:apps/bobs:pull,push");
    assert_eq!(param(&params, "error"), "insufficient_scope");
    let blob = format!("/v2/apps/bobs/blobs/{digest}");
    assert_eq!(
        server.status(Method::HEAD, &blob).await,
        StatusCode::NOT_FOUND
    );

    // With push granted, the push goes through and the blob reads back.
    let push = token(&server, BOB, &["repository:apps/bobs:pull,push"]).await;
    let response = bearer(Method::POST, &upload, &push)
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = bearer(Method::GET, &blob, &pull).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().as_ref(), data);
    // Deleting needs `delete`, which neither token holds.
    let response = bearer(Method::DELETE, &blob, &push).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Any valid token passes the version check, and reads the metrics.
    for path in ["/v2/", "/metrics"] {
        let response = bearer(Method::GET, path, &pull).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn tokens_grant_only_what_the_user_may_do() {
    let server = Server::start().await;
    // Several scopes, repeated and space-separated; `*` asks for everything the user has.
    let bobs = token(
        &server,
        BOB,
        &[
            "repository:apps/admins:pull,push repository:stacks/run:pull,push",
            "registry:catalog:*",
            "repository:apps/bobs:*",
            "repository:Not_A_Name:pull",
        ],
    )
    .await;
    assert_eq!(
        claims(&bobs)["access"],
        json!([
            {"type": "repository", "name": "stacks/run", "actions": ["pull"]},
            {"type": "repository", "name": "apps/bobs", "actions": ["pull", "push", "delete"]},
        ])
    );
    // What the user may not do is refused as such (403), token or not.
    for (method, path) in [
        (Method::GET, "/v2/apps/admins/tags/list"),
        (Method::POST, "/v2/stacks/run/blobs/uploads/"),
        (Method::GET, "/v2/_catalog"),
    ] {
        let response = server
            .anonymous(method.clone(), path)
            .bearer_auth(&bobs)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(response).await,
            (StatusCode::FORBIDDEN, "DENIED".into()),
            "{method} {path}"
        );
    }
    // Admin gets the catalog when asking for it.
    let admins = token(&server, (USER, TOKEN), &["registry:catalog:*"]).await;
    let response = server
        .anonymous(Method::GET, "/v2/_catalog")
        .bearer_auth(&admins)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // A token with nothing granted is still a token: it passes the version check only.
    let empty = token(&server, BOB, &[]).await;
    assert_eq!(claims(&empty)["access"], json!([]));
    let response = server
        .anonymous(Method::GET, "/v2/stacks/run/tags/list")
        .bearer_auth(&empty)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn forged_and_foreign_tokens_are_refused() {
    let server = Server::start().await;
    let other = Server::start().await;
    let refused = |token: String| {
        let request = server
            .anonymous(Method::GET, "/v2/stacks/run/tags/list")
            .bearer_auth(token);
        async move {
            let response = request.send().await.expect("request");
            let params = challenge(&header(&response, "www-authenticate"));
            assert_eq!(param(&params, "error"), "invalid_token");
            assert_eq!(param(&params, "scope"), "repository:stacks/run:pull");
            error_code(response).await
        }
    };
    let unauthorized = (StatusCode::UNAUTHORIZED, "UNAUTHORIZED".to_owned());
    // Signed by another registry's key.
    let foreign = token(&other, BOB, &["repository:stacks/run:pull"]).await;
    assert_eq!(refused(foreign).await, unauthorized);
    // Bob's token with its claims rewritten to admin's.
    let bobs = token(&server, BOB, &["repository:stacks/run:pull"]).await;
    let parts: Vec<&str> = bobs.split('.').collect();
    let mut forged = claims(&bobs);
    forged["sub"] = "admin".into();
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
    let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    assert_eq!(refused(tampered).await, unauthorized);
    // Unsigned.
    let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    assert_eq!(refused(format!("{none}.{payload}.")).await, unauthorized);
    assert_eq!(refused("garbage".into()).await, unauthorized);
}

#[tokio::test]
async fn the_token_endpoint_needs_credentials() {
    let server = Server::start().await;
    let response = server
        .anonymous(Method::GET, "/v2/token?scope=repository:stacks/run:pull")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&response, "www-authenticate"),
        r#"Basic realm="slipway-registry""#
    );
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = ask(&server, ("bob", "wrong"), &["repository:stacks/run:pull"]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = ask(&server, (USER, OTHER_TOKEN), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = server
        .anonymous(Method::GET, "/v2/token?service=registry.example")
        .basic_auth(BOB.0, Some(BOB.1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = server
        .anonymous(Method::PUT, "/v2/token")
        .basic_auth(BOB.0, Some(BOB.1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);

    // The OAuth2 password grant, as Docker posts it.
    let form = |grant: &str, password: &str| {
        server
            .anonymous(Method::POST, "/v2/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type={grant}&username=bob&password={password}&service=slipway-registry\
                 &scope=repository%3Astacks%2Frun%3Apull&client_id=docker&access_type=offline"
            ))
            .send()
    };
    let response = form("password", OTHER_TOKEN).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["access"],
        json!([{"type": "repository", "name": "stacks/run", "actions": ["pull"]}])
    );
    let response = form("password", "wrong").await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = form("refresh_token", OTHER_TOKEN).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn tokens_outlive_a_restart_but_not_the_key() {
    use std::os::unix::fs::PermissionsExt as _;
    let server = Server::start().await;
    let issued = token(&server, BOB, &["repository:stacks/run:pull"]).await;
    let key = server.dir.path().join("token-key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let use_token = |server: &Server| {
        server
            .anonymous(Method::GET, "/v2/")
            .bearer_auth(issued.clone())
            .send()
    };

    let dir = server.dir;
    let again = Server::start_with(dir, |r| r).await;
    assert_eq!(use_token(&again).await.unwrap().status(), StatusCode::OK);

    std::fs::remove_file(&key).unwrap();
    let dir = again.dir;
    let fresh = Server::start_with(dir, |r| r).await;
    assert_eq!(
        use_token(&fresh).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}
