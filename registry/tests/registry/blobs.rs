//! Authentication, blob uploads (monolithic, chunked, mounted), blob reads and deletes.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use tokio::io::AsyncWriteExt;

use crate::util::{OTHER_TOKEN, Server, TOKEN, USER, error_code, header, sha256, sha512};

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
        format!(
            r#"Bearer realm="http://{}/v2/token",service="slipway-registry""#,
            server.host
        )
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
    assert_eq!(
        server
            .error_of(Method::GET, &format!("/v2/app/blobs/{unknown}"))
            .await,
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
    assert_eq!(
        server.error_of(Method::GET, &location).await,
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

    // A closing PUT whose chunk is out of order is refused the same way, and the upload lives on.
    let digest = sha256(b"hello world");
    let finish = format!("{location}?digest={digest}");
    let response = server
        .request(Method::PUT, &finish)
        .header("content-range", "0-5")
        .body(" world")
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&response, "range"), "0-4");
    let response = server
        .request(Method::PUT, &finish)
        .header("content-range", "5-10")
        .body(" world")
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::CREATED);
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
    assert_eq!(
        server
            .error_of(Method::PUT, &format!("{location}?digest={claimed}"))
            .await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );

    for digest in [claimed, sha256(data)] {
        assert_eq!(
            server
                .status(Method::HEAD, &format!("/v2/app/blobs/{digest}"))
                .await,
            StatusCode::NOT_FOUND,
            "{digest}"
        );
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
    assert_eq!(
        server.status(Method::DELETE, &location).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        server.status(Method::GET, &location).await,
        StatusCode::NOT_FOUND
    );
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
    assert_eq!(
        server.error_of(Method::GET, "/v2/Bad_Name/tags/list").await,
        (StatusCode::BAD_REQUEST, "NAME_INVALID".into())
    );

    assert_eq!(
        server
            .error_of(Method::GET, "/v2/app/blobs/sha256:..")
            .await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );

    assert_eq!(
        server
            .error_of(Method::PATCH, &format!("/v2/app/blobs/{}", sha256(b"x")))
            .await,
        (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED".into())
    );
}

#[tokio::test]
async fn unsatisfiable_range_is_416() {
    let server = Server::start().await;
    let digest = server.push_blob("app", b"fifteen bytes!!").await;
    let path = format!("/v2/app/blobs/{digest}");
    for range in ["bytes=15-", "bytes=100-200", "bytes=5-0"] {
        let response = server
            .request(Method::GET, &path)
            .header("range", range)
            .send()
            .await
            .expect("get");
        assert_eq!(
            response.status(),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{range}"
        );
        assert_eq!(header(&response, "content-range"), "bytes */15");
    }
    // A suffix range is satisfiable.
    let response = server
        .request(Method::GET, &path)
        .header("range", "bytes=-3")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&response.bytes().await.expect("body")[..], b"s!!");
}

#[tokio::test]
async fn sha512_blobs_monolithic_and_chunked() {
    let server = Server::start().await;
    let data = b"content addressed by sha512";
    let digest = sha512(data);

    let response = server
        .request(
            Method::POST,
            &format!("/v2/app/blobs/uploads/?digest={digest}"),
        )
        .body(data.to_vec())
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = server
        .request(Method::GET, &format!("/v2/app/blobs/{digest}"))
        .send()
        .await
        .expect("get");
    assert_eq!(header(&response, "docker-content-digest"), digest);
    assert_eq!(&response.bytes().await.expect("body")[..], data);

    let chunked = b"chunked and sha512";
    let digest = sha512(chunked);
    let location = server.start_upload("other").await;
    let response = server
        .request(Method::PATCH, &location)
        .body(&chunked[..7])
        .send()
        .await
        .expect("patch");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = server
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .body(&chunked[7..])
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = server
        .request(Method::GET, &format!("/v2/other/blobs/{digest}"))
        .send()
        .await
        .expect("get");
    assert_eq!(&response.bytes().await.expect("body")[..], chunked);

    // A wrong sha512 is refused like a wrong sha256.
    let wrong = sha512(b"not this");
    let response = server
        .request(
            Method::POST,
            &format!("/v2/app/blobs/uploads/?digest={wrong}"),
        )
        .body(data.to_vec())
        .send()
        .await
        .expect("post");
    assert_eq!(
        error_code(response).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
}

#[tokio::test]
async fn blobs_belong_to_repositories_and_delete_from_one() {
    let server = Server::start().await;
    let digest = server.push_blob("a", b"per repository").await;
    let in_a = format!("/v2/a/blobs/{digest}");
    let in_b = format!("/v2/b/blobs/{digest}");

    // Pushed to `a`, the blob is not in `b` until mounted there.
    assert_eq!(
        server.status(Method::HEAD, &in_b).await,
        StatusCode::NOT_FOUND
    );
    let response = server
        .request(
            Method::POST,
            &format!("/v2/b/blobs/uploads/?mount={digest}&from=a"),
        )
        .send()
        .await
        .expect("mount");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(server.status(Method::HEAD, &in_b).await, StatusCode::OK);

    assert_eq!(
        server.status(Method::DELETE, &in_a).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        server.error_of(Method::GET, &in_a).await,
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN".into())
    );
    // The other repository keeps it.
    let response = server
        .request(Method::GET, &in_b)
        .send()
        .await
        .expect("get");
    assert_eq!(
        &response.bytes().await.expect("body")[..],
        b"per repository"
    );

    assert_eq!(
        server.error_of(Method::DELETE, &in_a).await,
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN".into())
    );
}

#[tokio::test]
async fn mounts_that_cannot_be_served_start_an_upload() {
    let server = Server::start().await;
    let digest = server.push_blob("base", b"only in base").await;
    // Without `from`, and from a repository that lacks the blob, the client gets a session.
    for query in [
        format!("mount={digest}"),
        format!("mount={digest}&from=elsewhere"),
    ] {
        let response = server
            .request(Method::POST, &format!("/v2/app/blobs/uploads/?{query}"))
            .send()
            .await
            .expect("mount");
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{query}");
        let location = header(&response, "location");
        assert!(location.starts_with("/v2/app/blobs/uploads/"), "{location}");
        assert_eq!(
            server.status(Method::GET, &location).await,
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(
        server
            .status(Method::HEAD, &format!("/v2/app/blobs/{digest}"))
            .await,
        StatusCode::NOT_FOUND
    );

    for (query, expected) in [
        (format!("mount={digest}&from=Bad_Name"), "NAME_INVALID"),
        ("mount=sha256:xyz&from=base".to_owned(), "DIGEST_INVALID"),
    ] {
        assert_eq!(
            server
                .error_of(Method::POST, &format!("/v2/app/blobs/uploads/?{query}"))
                .await,
            (StatusCode::BAD_REQUEST, expected.into()),
            "{query}"
        );
    }
}

#[tokio::test]
async fn concurrent_uploads_of_one_blob_store_it_once() {
    let server = Server::start().await;
    let data: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 239) as u8).collect();
    let digest = sha256(&data);
    let mut pushes = Vec::new();
    for i in 0..8 {
        let request = if i % 2 == 0 {
            server
                .request(
                    Method::POST,
                    &format!("/v2/app{i}/blobs/uploads/?digest={digest}"),
                )
                .body(data.clone())
        } else {
            // Half of them chunked: a session, then the whole blob with the closing PUT.
            let location = server.start_upload(&format!("app{i}")).await;
            server
                .request(Method::PUT, &format!("{location}?digest={digest}"))
                .body(data.clone())
        };
        pushes.push(tokio::spawn(request.send()));
    }
    for push in pushes {
        let response = push.await.expect("task").expect("push");
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    for i in 0..8 {
        let response = server
            .request(Method::GET, &format!("/v2/app{i}/blobs/{digest}"))
            .send()
            .await
            .expect("get");
        assert!(
            response.bytes().await.expect("body")[..] == data[..],
            "app{i}"
        );
    }
    let content: Vec<String> = server
        .stored_files()
        .into_iter()
        .filter(|f| f.starts_with("blobs/"))
        .collect();
    assert_eq!(
        content,
        [format!("blobs/sha256/{}/{}", &digest[7..9], &digest[7..])]
    );
    assert_eq!(server.registry.metrics().stored_bytes, data.len() as u64);
}

#[tokio::test]
async fn interrupted_upload_leaves_nothing() {
    let server = Server::start().await;
    let digest = sha256(b"never finished");
    let mut stream = tokio::net::TcpStream::connect(&server.host)
        .await
        .expect("connect");
    let auth = base64_basic(USER, TOKEN);
    let head = format!(
        "POST /v2/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {}\r\n\
         Authorization: Basic {auth}\r\nContent-Length: 1000000\r\n\r\n",
        server.host
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(&[7; 4096]).await.expect("write");
    stream.flush().await.expect("flush");
    // Wait until the registry has started writing, then go away mid-body.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !server
        .stored_files()
        .iter()
        .any(|f| f.starts_with("uploads/"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upload never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !server.stored_files().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {:?}",
            server.stored_files()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of a Basic `Authorization` header.
fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[tokio::test]
async fn upload_session_errors() {
    let server = Server::start().await;
    let location = server.start_upload("app").await;
    let id = location.rsplit('/').next().expect("id").to_owned();

    // Sessions belong to their repository.
    assert_eq!(
        server
            .error_of(Method::GET, &format!("/v2/other/blobs/uploads/{id}"))
            .await,
        (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN".into())
    );
    // Ids this registry never handed out.
    for path in [
        "/v2/app/blobs/uploads/0123456789abcdef0123456789abcdef",
        "/v2/app/blobs/uploads/not-an-id",
    ] {
        for method in [Method::GET, Method::PATCH, Method::PUT, Method::DELETE] {
            assert_eq!(
                server
                    .error_of(method.clone(), &format!("{path}?digest={}", sha256(b"")))
                    .await,
                (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN".into()),
                "{method} {path}"
            );
        }
    }
    // Finishing without a digest, or with a malformed one.
    assert_eq!(
        server.error_of(Method::PUT, &location).await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
    assert_eq!(
        server
            .error_of(Method::PUT, &format!("{location}?digest=sha256:abc"))
            .await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
    // A Content-Range that is no range.
    let response = server
        .request(Method::PATCH, &location)
        .header("content-range", "abc")
        .body("x")
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
    // The session survived every refusal.
    assert_eq!(
        server.status(Method::GET, &location).await,
        StatusCode::NO_CONTENT
    );
    // POST to an upload, and an unknown method on the uploads endpoint.
    assert_eq!(
        server.error_of(Method::POST, &location).await,
        (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED".into())
    );
    assert_eq!(
        server.status(Method::GET, "/v2/app/blobs/uploads/").await,
        StatusCode::METHOD_NOT_ALLOWED
    );
}
