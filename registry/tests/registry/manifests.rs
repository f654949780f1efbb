//! Manifests by tag and digest, tag lists, nested repositories and the catalog.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::util::{OCI_MANIFEST, Server, error_code, header, image_manifest, sha256};

#[tokio::test]
async fn manifest_put_and_get_by_tag_and_digest() {
    let server = Server::start().await;
    let config = server.push_blob("app", b"{}").await;
    let layer = server.push_blob("app", b"layer").await;
    let bytes = image_manifest(&config, &[&layer]);
    let digest = sha256(&bytes);

    let response = server
        .request(Method::PUT, "/v2/app/manifests/v1")
        .header("content-type", OCI_MANIFEST)
        .body(bytes.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header(&response, "docker-content-digest"), digest);
    assert_eq!(
        header(&response, "location"),
        format!("/v2/app/manifests/{digest}")
    );

    for reference in ["v1", digest.as_str()] {
        let path = format!("/v2/app/manifests/{reference}");
        let response = server
            .request(Method::GET, &path)
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::OK, "{reference}");
        assert_eq!(header(&response, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&response, "docker-content-digest"), digest);
        assert_eq!(
            response.bytes().await.expect("body").to_vec(),
            bytes,
            "bytes as sent"
        );

        let response = server
            .request(Method::HEAD, &path)
            .send()
            .await
            .expect("head");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-length"), bytes.len().to_string());
        assert_eq!(header(&response, "docker-content-digest"), digest);
    }

    // A push by digest must match the bytes.
    let response = server
        .request(
            Method::PUT,
            &format!("/v2/app/manifests/{}", sha256(b"other")),
        )
        .header("content-type", OCI_MANIFEST)
        .body(bytes.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(
        error_code(response).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );

    // Manifests are per repository.
    let response = server
        .request(Method::GET, &format!("/v2/other/manifests/{digest}"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        error_code(response).await,
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );
    let response = server
        .request(Method::GET, "/v2/app/manifests/v2")
        .send()
        .await
        .expect("get");
    assert_eq!(
        error_code(response).await,
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );
}

#[tokio::test]
async fn manifests_must_reference_pushed_blobs_and_fit_the_limit() {
    let server = Server::start().await;
    let config = server.push_blob("app", b"{}").await;
    let missing = sha256(b"never pushed");
    let response = server
        .request(Method::PUT, "/v2/app/manifests/v1")
        .header("content-type", OCI_MANIFEST)
        .body(image_manifest(&config, &[&missing]))
        .send()
        .await
        .expect("put");
    assert_eq!(
        error_code(response).await,
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN".into())
    );

    let response = server
        .request(Method::PUT, "/v2/app/manifests/v1")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("put");
    assert_eq!(
        error_code(response).await,
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID".into())
    );

    let huge = vec![b' '; 4 * 1024 * 1024 + 1];
    let response = server
        .request(Method::PUT, "/v2/app/manifests/v1")
        .header("content-type", OCI_MANIFEST)
        .body(huge)
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn index_manifests_are_stored_with_their_media_type() {
    let server = Server::start().await;
    let config = server.push_blob("app", b"{}").await;
    let child = server.push_manifest("app", "amd64", &config, &[]).await;
    let index_type = "application/vnd.oci.image.index.v1+json";
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(&child), "size": child.len()}],
    }))
    .expect("json");
    let response = server
        .request(Method::PUT, "/v2/app/manifests/latest")
        .header("content-type", index_type)
        .body(index.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = server
        .request(Method::GET, "/v2/app/manifests/latest")
        .send()
        .await
        .expect("get");
    assert_eq!(header(&response, "content-type"), index_type);
    assert_eq!(response.bytes().await.expect("body").to_vec(), index);
}

#[tokio::test]
async fn tag_list_with_pagination() {
    let server = Server::start().await;
    let config = server.push_blob("app", b"{}").await;
    for tag in ["v2", "latest", "v1"] {
        server.push_manifest("app", tag, &config, &[]).await;
    }

    let list = |query: &'static str| {
        let request = server.request(Method::GET, &format!("/v2/app/tags/list{query}"));
        async move {
            let response = request.send().await.expect("list");
            let link = header(&response, "link");
            let body: Value = response.json().await.expect("json");
            (body, link)
        }
    };
    let (body, link) = list("").await;
    assert_eq!(body, json!({"name": "app", "tags": ["latest", "v1", "v2"]}));
    assert_eq!(link, "");

    let (body, link) = list("?n=2").await;
    assert_eq!(body["tags"], json!(["latest", "v1"]));
    assert_eq!(link, r#"</v2/app/tags/list?n=2&last=v1>; rel="next""#);

    let (body, _) = list("?n=2&last=v1").await;
    assert_eq!(body["tags"], json!(["v2"]));

    let response = server
        .request(Method::GET, "/v2/nothing/tags/list")
        .send()
        .await
        .expect("list");
    assert_eq!(
        error_code(response).await,
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN".into())
    );
}

#[tokio::test]
async fn nested_repository_names_and_catalog() {
    let server = Server::start().await;
    let repo = "team/sub.group/my-app";
    let config = server.push_blob(repo, b"{}").await;
    let layer = server.push_blob(repo, b"nested layer").await;
    let bytes = server.push_manifest(repo, "v1", &config, &[&layer]).await;
    // A repository named like the parent's storage directories' neighbours. Each repository
    // holds its own blobs.
    for other in ["team", "team/blobs"] {
        server.push_blob(other, b"{}").await;
        server.push_manifest(other, "v1", &config, &[]).await;
    }

    let response = server
        .request(Method::GET, &format!("/v2/{repo}/manifests/v1"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.bytes().await.expect("body").to_vec(), bytes);
    let response = server
        .request(Method::GET, &format!("/v2/{repo}/blobs/{layer}"))
        .send()
        .await
        .expect("get");
    assert_eq!(&response.bytes().await.expect("body")[..], b"nested layer");
    let response = server
        .request(Method::GET, &format!("/v2/{repo}/tags/list"))
        .send()
        .await
        .expect("list");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body, json!({"name": repo, "tags": ["v1"]}));

    let response = server
        .request(Method::GET, "/v2/_catalog")
        .send()
        .await
        .expect("catalog");
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body,
        json!({"repositories": ["team", "team/blobs", "team/sub.group/my-app"]})
    );
}
