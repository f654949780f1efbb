//! What the registry needs to know about a manifest before storing it: its media type and the
//! blobs it references.
//!
//! Owns: the accepted manifest media types and the reading of a manifest's JSON. Must not: do
//! IO, or change the manifest; the bytes are stored exactly as the client sent them.

use serde::Deserialize;

use crate::names::Digest;

/// The largest manifest accepted, in bytes.
pub(crate) const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// OCI image manifest.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list, schema 2.
pub(crate) const DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// A media type this registry does not store.
    #[error(
        "unsupported manifest media type {0:?}: push an OCI image manifest or index, or a Docker schema 2 manifest or list"
    )]
    MediaType(String),
    /// Bytes that are not a manifest of the declared type.
    #[error("invalid manifest: {0}")]
    Invalid(String),
    /// A manifest larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
}

/// A manifest that passed inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inspected {
    /// The media type to store and to answer with.
    pub(crate) media_type: String,
    /// The blobs that must exist before the manifest may be stored: an image manifest's config
    /// and layers. Empty for indexes, whose children are manifests, not blobs.
    pub(crate) blobs: Vec<Digest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    media_type: Option<String>,
}

#[derive(Deserialize)]
struct ImageManifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

/// Checks a pushed manifest. `content_type` is the request's `Content-Type` without parameters;
/// when absent, the manifest's own `mediaType` field decides.
pub(crate) fn inspect(
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<Inspected, ManifestError> {
    let header: Header =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid(e.to_string()))?;
    let media_type = match (content_type, header.media_type) {
        (Some(ct), _) => ct.to_owned(),
        (None, Some(mt)) => mt,
        (None, None) => {
            return Err(ManifestError::Invalid(
                "no Content-Type and no mediaType field".to_owned(),
            ));
        }
    };
    let blobs = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: ImageManifest =
                serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid(e.to_string()))?;
            std::iter::once(&m.config)
                .chain(&m.layers)
                .map(|d| {
                    Digest::parse(&d.digest).map_err(|e| ManifestError::Invalid(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        OCI_INDEX | DOCKER_MANIFEST_LIST => Vec::new(),
        _ => return Err(ManifestError::MediaType(media_type)),
    };
    Ok(Inspected { media_type, blobs })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn check(content_type: Option<&str>, json: &str, expected: &str) {
        let actual = match inspect(content_type, json.as_bytes()) {
            Ok(i) => {
                let blobs: Vec<String> = i
                    .blobs
                    .iter()
                    .map(|d| d.to_string()[7..9].to_owned())
                    .collect();
                format!("{} {}", i.media_type, blobs.join(","))
            }
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(actual, expected, "{json}");
    }

    #[test]
    fn image_manifests_list_config_and_layers() {
        let json = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{A}","size":1}},"layers":[{{"digest":"{B}","size":2}}]}}"#
        );
        check(Some(OCI_MANIFEST), &json, &format!("{OCI_MANIFEST} aa,bb"));
        check(
            Some(DOCKER_MANIFEST),
            &json,
            &format!("{DOCKER_MANIFEST} aa,bb"),
        );
        let typed = format!(r#"{{"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{A}"}}}}"#);
        check(None, &typed, &format!("{OCI_MANIFEST} aa"));
    }

    #[test]
    fn indexes_reference_no_blobs() {
        let json = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{A}"}}]}}"#);
        check(Some(OCI_INDEX), &json, &format!("{OCI_INDEX} "));
        check(
            Some(DOCKER_MANIFEST_LIST),
            &json,
            &format!("{DOCKER_MANIFEST_LIST} "),
        );
    }

    #[test]
    fn refusals() {
        check(
            Some("text/plain"),
            "{}",
            r#"error: unsupported manifest media type "text/plain": push an OCI image manifest or index, or a Docker schema 2 manifest or list"#,
        );
        check(
            None,
            "{}",
            "error: invalid manifest: no Content-Type and no mediaType field",
        );
        check(
            Some(OCI_MANIFEST),
            "not json",
            "error: invalid manifest: expected ident at line 1 column 2",
        );
        check(
            Some(OCI_MANIFEST),
            r#"{"config":{"digest":"sha256:zz"}}"#,
            r#"error: invalid manifest: invalid digest "sha256:zz": expected sha256:<64 lower-case hex> or sha512:<128 hex>"#,
        );
    }
}
