//! The referrers API: manifests with a `subject`, listed by subject, filtered by artifact type.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::util::{OCI_MANIFEST, Server, error_code, header, sha256};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// An artifact manifest about `subject` (digest and size of an image manifest).
fn artifact(artifact_type: &str, empty: &str, subject: (&str, usize), note: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_CONFIG, "digest": empty, "size": 2},
        "layers": [{"mediaType": EMPTY_CONFIG, "digest": empty, "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.0, "size": subject.1},
        "annotations": {"note": note},
    }))
    .expect("json")
}

async fn referrers(server: &Server, path: &str) -> (StatusCode, String, String, Value) {
    let response = server
        .request(Method::GET, path)
        .send()
        .await
        .expect("referrers");
    let status = response.status();
    let content_type = header(&response, "content-type");
    let filters = header(&response, "oci-filters-applied");
    let body = response.json().await.expect("json");
    (status, content_type, filters, body)
}

#[tokio::test]
async fn referrers_are_listed_filtered_and_forgotten_on_delete() {
    let server = Server::start().await;
    let empty = server.push_blob("app", b"{}").await;
    let image = server.push_manifest("app", "v1", &empty, &[]).await;
    let subject = sha256(&image);

    let sbom = artifact(
        "application/vnd.example.sbom",
        &empty,
        (&subject, image.len()),
        "s",
    );
    let signature = artifact(
        "application/vnd.example.sig",
        &empty,
        (&subject, image.len()),
        "g",
    );
    for bytes in [&sbom, &signature] {
        let response = server
            .put_manifest("app", &sha256(bytes), OCI_MANIFEST, bytes)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(header(&response, "oci-subject"), subject);
    }
    // A manifest without a subject gets no OCI-Subject header and is no referrer.
    let response = server.put_manifest("app", "v2", OCI_MANIFEST, &image).await;
    assert_eq!(header(&response, "oci-subject"), "");

    let descriptor = |bytes: &[u8], artifact_type: &str, note: &str| {
        json!({
            "mediaType": OCI_MANIFEST,
            "digest": sha256(bytes),
            "size": bytes.len(),
            "artifactType": artifact_type,
            "annotations": {"note": note},
        })
    };
    let mut expected = vec![
        descriptor(&sbom, "application/vnd.example.sbom", "s"),
        descriptor(&signature, "application/vnd.example.sig", "g"),
    ];
    expected.sort_by_key(|d| d["digest"].as_str().unwrap_or_default().to_owned());

    let path = format!("/v2/app/referrers/{subject}");
    let (status, content_type, filters, body) = referrers(&server, &path).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, OCI_INDEX));
    assert_eq!(filters, "");
    assert_eq!(
        body,
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": expected})
    );

    let filtered = format!("{path}?artifactType=application/vnd.example.sig");
    let (status, _, filters, body) = referrers(&server, &filtered).await;
    assert_eq!((status, filters.as_str()), (StatusCode::OK, "artifactType"));
    assert_eq!(
        body["manifests"],
        json!([descriptor(&signature, "application/vnd.example.sig", "g")])
    );

    // Deleting a referrer removes it from the list.
    let gone = format!("/v2/app/manifests/{}", sha256(&signature));
    assert_eq!(
        server.status(Method::DELETE, &gone).await,
        StatusCode::ACCEPTED
    );
    let (_, _, _, body) = referrers(&server, &path).await;
    assert_eq!(
        body["manifests"],
        json!([descriptor(&sbom, "application/vnd.example.sbom", "s")])
    );

    // Referrers belong to the repository they were pushed to.
    let (status, _, _, body) = referrers(&server, &format!("/v2/other/referrers/{subject}")).await;
    assert_eq!(
        (status, body["manifests"].clone()),
        (StatusCode::OK, json!([]))
    );
}

#[tokio::test]
async fn a_subject_need_not_exist() {
    let server = Server::start().await;
    let empty = server.push_blob("app", b"{}").await;
    let absent = sha256(b"a manifest pushed later, or never");
    let bytes = artifact("application/vnd.example.sbom", &empty, (&absent, 10), "n");
    let response = server
        .put_manifest("app", "sbom", OCI_MANIFEST, &bytes)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header(&response, "oci-subject"), absent);
    let (status, _, _, body) = referrers(&server, &format!("/v2/app/referrers/{absent}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["manifests"][0]["digest"], json!(sha256(&bytes)));

    // A subject nobody refers to has an empty index, not an error.
    let nobody = sha256(b"nobody");
    let (status, content_type, _, body) =
        referrers(&server, &format!("/v2/app/referrers/{nobody}")).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, OCI_INDEX));
    assert_eq!(body["manifests"], json!([]));
}

#[tokio::test]
async fn referrers_errors() {
    let server = Server::start().await;
    assert_eq!(
        server
            .error_of(Method::GET, "/v2/app/referrers/sha256:nothex")
            .await,
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into())
    );
    let response = server
        .request(
            Method::DELETE,
            &format!("/v2/app/referrers/{}", sha256(b"x")),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(
        error_code(response).await,
        (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED".into())
    );
    let response = server
        .anonymous(Method::GET, &format!("/v2/app/referrers/{}", sha256(b"x")))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
