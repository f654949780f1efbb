//! Manifests by tag and digest, indexes, deletes, tag lists, nested repositories and the catalog.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::util::{OCI_MANIFEST, Server, error_code, header, image_manifest, sha256};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// An index (or manifest list) of `media_type` over `children` (digest, bytes, media type).
fn index_of(media_type: &str, children: &[(&str, &[u8], &str)]) -> Vec<u8> {
    let manifests: Vec<Value> = children
        .iter()
        .map(|(digest, bytes, child_type)| {
            json!({
                "mediaType": child_type,
                "digest": digest,
                "size": bytes.len(),
                "platform": {"architecture": "amd64", "os": "linux"},
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    }))
    .expect("json")
}

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
    assert_eq!(
        server
            .error_of(Method::GET, &format!("/v2/other/manifests/{digest}"))
            .await,
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );
    assert_eq!(
        server.error_of(Method::GET, "/v2/app/manifests/v2").await,
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

    assert_eq!(
        server.error_of(Method::GET, "/v2/nothing/tags/list").await,
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

#[tokio::test]
async fn index_children_must_exist_in_the_repository() {
    let server = Server::start().await;
    let config = server.push_blob("app", b"{}").await;
    let amd64 = server.push_manifest("app", "amd64", &config, &[]).await;
    let amd64_digest = sha256(&amd64);
    let missing = sha256(b"no such manifest");

    let index = index_of(
        OCI_INDEX,
        &[
            (&amd64_digest, &amd64, OCI_MANIFEST),
            (&missing, b"x", OCI_MANIFEST),
        ],
    );
    let response = server
        .put_manifest("app", "latest", OCI_INDEX, &index)
        .await;
    assert_eq!(
        error_code(response).await,
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN".into())
    );
    // A child in another repository does not count.
    let index = index_of(OCI_INDEX, &[(&amd64_digest, &amd64, OCI_MANIFEST)]);
    let response = server
        .put_manifest("other", "latest", OCI_INDEX, &index)
        .await;
    assert_eq!(
        error_code(response).await,
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN".into())
    );
    let response = server
        .put_manifest("app", "latest", OCI_INDEX, &index)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn docker_schema2_manifests_and_lists() {
    let server = Server::start().await;
    let config = server.push_blob("app", b"{\"os\":\"linux\"}").await;
    let layer = server.push_blob("app", b"docker layer").await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": config,
            "size": 15,
        },
        "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "digest": layer,
            "size": 12,
        }],
    }))
    .expect("json");
    let digest = sha256(&manifest);
    let response = server
        .put_manifest("app", &digest, DOCKER_MANIFEST, &manifest)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);

    let list = index_of(DOCKER_LIST, &[(&digest, &manifest, DOCKER_MANIFEST)]);
    let response = server
        .put_manifest("app", "multi", DOCKER_LIST, &list)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    for (reference, media_type, bytes) in [
        ("multi", DOCKER_LIST, &list),
        (digest.as_str(), DOCKER_MANIFEST, &manifest),
    ] {
        let response = server
            .request(Method::GET, &format!("/v2/app/manifests/{reference}"))
            .send()
            .await
            .expect("get");
        assert_eq!(header(&response, "content-type"), media_type);
        assert_eq!(&response.bytes().await.expect("body")[..], &bytes[..]);
    }
}

#[tokio::test]
async fn malformed_manifests_are_refused() {
    let server = Server::start().await;
    let config = server.push_blob("app", b"{}").await;
    let good = image_manifest(&config, &[]);
    let schema1 = "application/vnd.docker.distribution.manifest.v1+prettyjws";
    let cases: [(&str, &[u8], StatusCode, &str); 6] = [
        (
            OCI_MANIFEST,
            b"{not json",
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            OCI_MANIFEST,
            b"[]",
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            OCI_INDEX,
            &good,
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (schema1, b"{}", StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
        (
            OCI_MANIFEST,
            br#"{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"sha256:00","size":1}}"#,
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            OCI_MANIFEST,
            br#"{"schemaVersion":2,"layers":[]}"#,
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
    ];
    for (media_type, bytes, status, code) in cases {
        let response = server.put_manifest("app", "v1", media_type, bytes).await;
        assert_eq!(
            error_code(response).await,
            (status, code.into()),
            "{media_type} {}",
            String::from_utf8_lossy(bytes)
        );
    }
    // An invalid tag in the path.
    let response = server
        .put_manifest("app", "-bad", OCI_MANIFEST, &good)
        .await;
    assert_eq!(
        error_code(response).await,
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID".into())
    );
    // Too large without a Content-Length: the body is cut off at the limit, not read whole.
    let chunks = (0..5).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024 * 1024]));
    let response = server
        .request(Method::PUT, "/v2/app/manifests/v1")
        .header("content-type", OCI_MANIFEST)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("put");
    assert_eq!(
        error_code(response).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID".into())
    );
    // Nothing was tagged by any of them.
    assert_eq!(
        server.status(Method::GET, "/v2/app/manifests/v1").await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn delete_tags_and_manifests() {
    let server = Server::start().await;
    let config = server.push_blob("app", b"{}").await;
    let bytes = server.push_manifest("app", "v1", &config, &[]).await;
    server.push_manifest("app", "v2", &config, &[]).await;
    let other = server
        .push_manifest("app", "keep", &config, &[&config])
        .await;
    let digest = sha256(&bytes);

    // A tag: the manifest stays, reachable by digest and the other tag.
    assert_eq!(
        server.status(Method::DELETE, "/v2/app/manifests/v1").await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        server.status(Method::GET, "/v2/app/manifests/v1").await,
        StatusCode::NOT_FOUND
    );
    for reference in ["v2", digest.as_str()] {
        let path = format!("/v2/app/manifests/{reference}");
        assert_eq!(server.status(Method::GET, &path).await, StatusCode::OK);
    }
    assert_eq!(
        server
            .error_of(Method::DELETE, "/v2/app/manifests/v1")
            .await,
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );

    // A digest: the manifest goes, and so do the tags that point at it.
    let path = format!("/v2/app/manifests/{digest}");
    assert_eq!(
        server.status(Method::DELETE, &path).await,
        StatusCode::ACCEPTED
    );
    for reference in ["v2", digest.as_str()] {
        assert_eq!(
            server
                .error_of(Method::GET, &format!("/v2/app/manifests/{reference}"))
                .await,
            (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into()),
            "{reference}"
        );
    }
    let response = server
        .request(Method::GET, "/v2/app/tags/list")
        .send()
        .await
        .expect("list");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["tags"], json!(["keep"]));
    assert_eq!(
        server.error_of(Method::DELETE, &path).await,
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );
    // The other manifest and the blobs are untouched.
    let keep = format!("/v2/app/manifests/{}", sha256(&other));
    assert_eq!(server.status(Method::GET, &keep).await, StatusCode::OK);
    let blob = format!("/v2/app/blobs/{config}");
    assert_eq!(server.status(Method::GET, &blob).await, StatusCode::OK);
    // Another repository's manifest is not this one's to delete.
    let response = server
        .request(
            Method::DELETE,
            &format!("/v2/elsewhere/manifests/{}", sha256(&other)),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(
        error_code(response).await,
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );
}

#[tokio::test]
async fn catalog_pagination() {
    let server = Server::start().await;
    for repo in ["c", "a/x", "b", "a"] {
        let config = server.push_blob(repo, b"{}").await;
        server.push_manifest(repo, "v1", &config, &[]).await;
    }
    let page = |query: &'static str| {
        let request = server.request(Method::GET, &format!("/v2/_catalog{query}"));
        async move {
            let response = request.send().await.expect("catalog");
            let link = header(&response, "link");
            let body: Value = response.json().await.expect("json");
            (body["repositories"].clone(), link)
        }
    };
    assert_eq!(
        page("").await,
        (json!(["a", "a/x", "b", "c"]), String::new())
    );
    assert_eq!(
        page("?n=2").await,
        (
            json!(["a", "a/x"]),
            r#"</v2/_catalog?n=2&last=a/x>; rel="next""#.to_owned()
        )
    );
    assert_eq!(
        page("?n=2&last=a/x").await,
        (json!(["b", "c"]), String::new())
    );
    assert_eq!(page("?n=0").await, (json!([]), String::new()));
    assert_eq!(
        server.error_of(Method::GET, "/v2/_catalog?n=many").await,
        (StatusCode::BAD_REQUEST, "UNSUPPORTED".into())
    );
}
