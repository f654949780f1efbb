//! What happens over time and across restarts: abandoned uploads expire, counters count, and a
//! storage directory of the first layout is upgraded in place.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::util::{OCI_MANIFEST, Server, error_code, header, image_manifest, sha256};

#[tokio::test]
async fn abandoned_uploads_expire_and_busy_ones_do_not() {
    let expiry = Duration::from_millis(400);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_with(dir, |r| r.with_upload_expiry(expiry)).await;
    let abandoned = server.start_upload("app").await;
    let busy = server.start_upload("app").await;
    for location in [&abandoned, &busy] {
        let response = server
            .request(Method::PATCH, location)
            .body("partial")
            .send()
            .await
            .expect("patch");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }

    // Touch one session more often than the expiry; leave the other alone.
    for _ in 0..8 {
        tokio::time::sleep(expiry / 4).await;
        assert_eq!(
            server.status(Method::GET, &busy).await,
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(
        server.error_of(Method::GET, &abandoned).await,
        (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN".into())
    );
    let busy_id = busy.rsplit('/').next().expect("id");
    assert_eq!(server.stored_files(), [format!("uploads/{busy_id}")]);

    // The busy one still completes.
    let digest = sha256(b"partial");
    assert_eq!(
        server
            .status(Method::PUT, &format!("{busy}?digest={digest}"))
            .await,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn metrics_count_requests_bytes_and_storage() {
    let server = Server::start().await;
    let before = server.registry.metrics();
    assert_eq!(
        (
            before.requests,
            before.bytes_received,
            before.bytes_sent,
            before.stored_bytes
        ),
        (0, 0, 0, 0)
    );
    let data = vec![42u8; 1000];
    let digest = server.push_blob("app", &data).await;
    // The same content again, in another repository, is not stored twice.
    server.push_blob("other", &data).await;
    let response = server
        .request(Method::GET, &format!("/v2/app/blobs/{digest}"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.bytes().await.expect("body").len(), 1000);
    let manifest = server.push_manifest("app", "v1", &digest, &[]).await;

    let after = server.registry.metrics();
    assert_eq!(after.requests, 4);
    assert_eq!(after.bytes_received, 2000 + manifest.len() as u64);
    assert_eq!(after.bytes_sent, 1000);
    assert_eq!(after.stored_bytes, 1000 + manifest.len() as u64);

    let response = server
        .request(Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, "content-type").starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.expect("text");
    for line in [
        "# TYPE slipway_registry_requests_total counter".to_owned(),
        "slipway_registry_requests_total 5".to_owned(),
        format!("slipway_registry_stored_bytes {}", after.stored_bytes),
        format!(
            "slipway_registry_received_bytes_total {}",
            after.bytes_received
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    }

    let response = server
        .anonymous(Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics");
    assert_eq!(
        error_code(response).await,
        (StatusCode::UNAUTHORIZED, "UNAUTHORIZED".into())
    );
    assert_eq!(
        server.status(Method::POST, "/metrics").await,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn first_layout_storage_is_upgraded() {
    // Write what the first layout held: shared blobs, a manifest link and a tag, no links from
    // the repository to its blobs.
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("registry");
    let config = b"{}".to_vec();
    let layer = b"an old layer".to_vec();
    let manifest = image_manifest(&sha256(&config), &[&sha256(&layer)]);
    for bytes in [&config, &layer, &manifest] {
        let digest = sha256(bytes);
        let path = root
            .join("blobs/sha256")
            .join(&digest[7..9])
            .join(&digest[7..]);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("blob");
    }
    let repo = root.join("repositories/team/app");
    let link = repo.join("_manifests/sha256").join(&sha256(&manifest)[7..]);
    std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
    std::fs::write(link, OCI_MANIFEST).expect("link");
    std::fs::create_dir_all(repo.join("_tags")).expect("mkdir");
    std::fs::write(repo.join("_tags/v1"), sha256(&manifest)).expect("tag");

    let server = Server::start_with(dir, |r| r).await;
    let response = server
        .request(Method::GET, "/v2/team/app/manifests/v1")
        .send()
        .await
        .expect("get");
    assert_eq!(response.bytes().await.expect("body").to_vec(), manifest);
    for blob in [&config, &layer] {
        let response = server
            .request(Method::GET, &format!("/v2/team/app/blobs/{}", sha256(blob)))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(&response.bytes().await.expect("body")[..], &blob[..]);
    }
    let stored = (config.len() + layer.len() + manifest.len()) as u64;
    assert_eq!(server.registry.metrics().stored_bytes, stored);
    assert_eq!(
        std::fs::read_to_string(server.root().join("layout")).expect("marker"),
        "2\n"
    );
}
