//! Authentication, blob uploads (monolithic, chunked, mounted) and blob reads.

use reqwest::{Method, StatusCode};

use crate::util::{OTHER_TOKEN, Server, USER, error_code, header, sha256};

#[tokio::test]
async fn base_requires_matching_user_and_token() {
    let server = Server::start().await;

    let response = server
        .anonymous(Method::GET, "/v2/")
        .send()
        .await
        .expect("get");
    assert_eq!(
        header(&response, "www-authenticate"),
        r#"Basic realm="slipway""#
    );
    assert_eq!(
        error_code(response).await,
        (StatusCode::UNAUTHORIZED, "UNAUTHORIZED".into())
    );

    // A valid token of another user is refused under this user's name.
    let response = server
        .anonymous(Method::GET, "/v2/")
        .basic_auth(USER, Some(OTHER_TOKEN))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let response = server
        .anonymous(Method::GET, "/v2/app/tags/list")
        .basic_auth(USER, Some("wrong"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let response = server
        .request(Method::GET, "/v2/")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "docker-distribution-api-version"),
        "registry/2.0"
    );
}

#[tokio::test]
async fn monolithic_push_then_head_get_and_range() {
    let server = Server::start().await;
    let data = b"hello, registry".to_vec();
    let digest = sha256(&data);

    let response = server
        .request(
            Method::POST,
            &format!("/v2/app/blobs/uploads/?digest={digest}"),
        )
        .body(data.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "location"),
        format!("/v2/app/blobs/{digest}")
    );
    assert_eq!(header(&response, "docker-content-digest"), digest);

    let path = format!("/v2/app/blobs/{digest}");
    let response = server
        .request(Method::HEAD, &path)
        .send()
        .await
        .expect("head");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-length"), data.len().to_string());
    assert_eq!(
        header(&response, "content-type"),
        "application/octet-stream"
    );
    assert_eq!(header(&response, "docker-content-digest"), digest);

    let response = server
        .request(Method::GET, &path)
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.expect("body").to_vec(), data);

    let response = server
        .request(Method::GET, &path)
        .header("range", "bytes=7-14")
        .send()
        .await
        .expect("get range");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&response, "content-range"), "bytes 7-14/15");
    assert_eq!(&response.bytes().await.expect("body")[..], b"registry");

    let unknown = sha256(b"nothing");
    let response = server
        .request(Method::GET, &format!("/v2/app/blobs/{unknown}"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        error_code(response).await,
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN".into())
    );
}

#[tokio::test]
async fn blobs_larger_than_axum_default_limit() {
    let server = Server::start().await;
    let data: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let digest = server.push_blob("big", &data).await;
    let response = server
        .request(Method::GET, &format!("/v2/big/blobs/{digest}"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.bytes().await.expect("body").len(), data.len());
}

#[tokio::test]
async fn chunked_upload_post_patch_put() {
    let server = Server::start().await;
    let response = server
        .request(Method::POST, "/v2/app/blobs/uploads/")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&response, "range"), "0-0");
    let location = header(&response, "location");
    let uuid = header(&response, "docker-upload-uuid");
    assert_eq!(location, format!("/v2/app/blobs/uploads/{uuid}"));

    let response = server
        .request(Method::PATCH, &location)
        .header("content-range", "0-4")
        .body("hello")
        .send()
        .await
        .expect("patch");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&response, "range"), "0-4");

    // Content-Range is optional: docker sends none.
    let response = server
        .request(Method::PATCH, &header(&response, "location"))
        .body(", ")
        .send()
        .await
        .expect("patch");
    assert_eq!(header(&response, "range"), "0-6");

    let response = server
        .request(Method::GET, &location)
        .send()
        .await
        .expect("status");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&response, "range"), "0-6");

    let digest = sha256(b"hello, world");
    let response = server
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .body("world")
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "location"),
        format!("/v2/app/blobs/{digest}")
    );
    assert_eq!(header(&response, "docker-content-digest"), digest);

    let response = server
        .request(Method::GET, &format!("/v2/app/blobs/{digest}"))
        .send()
        .await
        .expect("get");
    assert_eq!(&response.bytes().await.expect("body")[..], b"hello, world");

    // The session is over.
    let response = server
        .request(Method::GET, &location)
        .send()
        .await
        .expect("status");
    assert_eq!(
        error_code(response).await,
        (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN".into())
    );
}

#[tokio::test]
async fn out_of_order_patch_is_416() {
    let server = Server::start().await;
    let response = server
        .request(Method::POST, "/v2/app/blobs/uploads/")
        .send()
        .await
        .expect("post");
    let location = header(&response, "location");

    let response = server
        .request(Method::PATCH, &location)
        .header("content-range", "5-9")
        .body("world")
        .send()
        .await
        .expect("patch");
    assert_eq!(
        error_code(response).await,
        (
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID".into()
        )
    );

    // The refused chunk left nothing behind: the upload is still empty and usable.
    let response = server
        .request(Method::PATCH, &location)
        .header("content-range", "0-4")
        .body("hello")
        .send()
        .await
        .expect("patch");
    assert_eq!(header(&response, "range"), "0-4");
    let response = server
        .request(Method::PATCH, &location)
        .header("content-range", "0-4")
        .body("hello")
        .send()
        .await
        .expect("patch");
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&response, "range"), "0-4");
}

#[tokio::test]
async fn digest_mismatch_leaves_nothing() {
    let server = Server::start().await;
    let data = b"the real content";
    let claimed = sha256(b"something else");

    let response = server
        .request(
            Method::POST,
            &format!("/v2/app/blobs/uploads/?digest={claimed}"),
        )
        .body(data.to_vec())
        .send()
        .await
        .expect("post");
    assert_eq!(
        error_code(response).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );

    // Chunked, too.
    let response = server
        .request(Method::POST, "/v2/app/blobs/uploads/")
        .send()
        .await
        .expect("post");
    let location = header(&response, "location");
    server
        .request(Method::PATCH, &location)
        .body(data.to_vec())
        .send()
        .await
        .expect("patch");
    let response = server
        .request(Method::PUT, &format!("{location}?digest={claimed}"))
        .send()
        .await
        .expect("put");
    assert_eq!(
        error_code(response).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );

    for digest in [claimed, sha256(data)] {
        let response = server
            .request(Method::HEAD, &format!("/v2/app/blobs/{digest}"))
            .send()
            .await
            .expect("head");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{digest}");
    }
    assert_eq!(server.stored_files(), Vec::<String>::new());
}

#[tokio::test]
async fn cancelled_upload_is_gone() {
    let server = Server::start().await;
    let response = server
        .request(Method::POST, "/v2/app/blobs/uploads/")
        .send()
        .await
        .expect("post");
    let location = header(&response, "location");
    server
        .request(Method::PATCH, &location)
        .body("partial")
        .send()
        .await
        .expect("patch");
    let response = server
        .request(Method::DELETE, &location)
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = server
        .request(Method::GET, &location)
        .send()
        .await
        .expect("status");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(server.stored_files(), Vec::<String>::new());
}

#[tokio::test]
async fn mount_existing_blob_or_start_upload() {
    let server = Server::start().await;
    let digest = server.push_blob("base", b"shared layer").await;

    let response = server
        .request(
            Method::POST,
            &format!("/v2/app/blobs/uploads/?mount={digest}&from=base"),
        )
        .send()
        .await
        .expect("mount");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "location"),
        format!("/v2/app/blobs/{digest}")
    );

    let missing = sha256(b"not here");
    let response = server
        .request(
            Method::POST,
            &format!("/v2/app/blobs/uploads/?mount={missing}&from=base"),
        )
        .send()
        .await
        .expect("mount");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(!header(&response, "docker-upload-uuid").is_empty());
}

#[tokio::test]
async fn invalid_names_and_digests_are_refused() {
    let server = Server::start().await;
    let response = server
        .request(Method::GET, "/v2/Bad_Name/tags/list")
        .send()
        .await
        .expect("get");
    assert_eq!(
        error_code(response).await,
        (StatusCode::BAD_REQUEST, "NAME_INVALID".into())
    );

    let response = server
        .request(Method::GET, "/v2/app/blobs/sha256:..")
        .send()
        .await
        .expect("get");
    assert_eq!(
        error_code(response).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );

    let response = server
        .request(Method::PATCH, &format!("/v2/app/blobs/{}", sha256(b"x")))
        .send()
        .await
        .expect("patch");
    assert_eq!(
        error_code(response).await,
        (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED".into())
    );
}
