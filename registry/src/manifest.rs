//! What the registry needs to know about a manifest before storing it: its media type and the
//! blobs it references.
//!
//! Owns: the accepted manifest media types and the reading of a manifest's JSON. Must not: do
//! IO, or change the manifest; the bytes are stored exactly as the client sent them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

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
    /// The manifests that must exist before the manifest may be stored: an index's children.
    pub(crate) manifests: Vec<Digest>,
    /// The manifest this one refers to (`subject`), which need not exist.
    pub(crate) subject: Option<Digest>,
    /// What the referrers API lists this manifest as: its `artifactType`, or for an image
    /// manifest without one its config's media type.
    pub(crate) artifact_type: Option<String>,
    /// The manifest's annotations, as the referrers API repeats them.
    pub(crate) annotations: Option<BTreeMap<String, String>>,
}

impl Inspected {
    /// The descriptor the referrers API lists for this manifest, stored with `digest` and `size`.
    pub(crate) fn referrer_descriptor(&self, digest: &Digest, size: usize) -> Value {
        let mut descriptor = json!({
            "mediaType": self.media_type,
            "digest": digest.to_string(),
            "size": size,
        });
        if let Some(artifact_type) = &self.artifact_type {
            descriptor["artifactType"] = json!(artifact_type);
        }
        if let Some(annotations) = &self.annotations {
            descriptor["annotations"] = json!(annotations);
        }
        descriptor
    }
}

/// The fields of an image manifest or index that the registry reads. Unknown fields are kept in
/// the stored bytes and ignored here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<u64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// A content descriptor; the three fields every descriptor must have.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    /// Read only to require it.
    #[serde(rename = "size")]
    _size: u64,
    /// Where a non-distributable layer is served from instead of this registry.
    #[serde(default)]
    urls: Vec<String>,
}

impl Descriptor {
    fn digest(&self) -> Result<Digest, ManifestError> {
        Digest::parse(&self.digest).map_err(|e| ManifestError::Invalid(e.to_string()))
    }
}

fn invalid(message: &str) -> ManifestError {
    ManifestError::Invalid(message.to_owned())
}

/// Checks a pushed manifest. `content_type` is the request's `Content-Type` without parameters;
/// when absent, the manifest's own `mediaType` field decides. When both are given they must
/// agree, so that what a client pulls is typed as what was pushed.
pub(crate) fn inspect(
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<Inspected, ManifestError> {
    let raw: Raw =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid(e.to_string()))?;
    let media_type = match (content_type, raw.media_type.as_deref()) {
        (Some(ct), Some(mt)) if ct != mt => {
            return Err(ManifestError::Invalid(format!(
                "Content-Type {ct:?} differs from the manifest's mediaType {mt:?}"
            )));
        }
        (Some(ct), _) => ct.to_owned(),
        (None, Some(mt)) => mt.to_owned(),
        (None, None) => return Err(invalid("no Content-Type and no mediaType field")),
    };
    if !matches!(
        media_type.as_str(),
        OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_MANIFEST_LIST
    ) {
        return Err(ManifestError::MediaType(media_type));
    }
    if raw.schema_version != Some(2) {
        return Err(invalid("schemaVersion must be 2"));
    }
    let digests = |list: &[Descriptor]| -> Result<Vec<Digest>, ManifestError> {
        list.iter().map(Descriptor::digest).collect()
    };
    let (blobs, manifests, config_type) = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = raw
                .config
                .as_ref()
                .ok_or_else(|| invalid("an image manifest needs a config descriptor"))?;
            if raw.manifests.is_some() {
                return Err(invalid("an image manifest has no manifests list"));
            }
            let mut blobs = vec![config.digest()?];
            for layer in raw.layers.as_deref().unwrap_or_default() {
                let digest = layer.digest()?;
                // A layer with `urls` (non-distributable) is served from elsewhere and never
                // pushed here, as in the reference implementation.
                if layer.urls.is_empty() {
                    blobs.push(digest);
                }
            }
            (blobs, Vec::new(), Some(config.media_type.clone()))
        }
        _ => {
            let children = raw
                .manifests
                .as_deref()
                .ok_or_else(|| invalid("an index needs a manifests list"))?;
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(invalid("an index has no config or layers"));
            }
            (Vec::new(), digests(children)?, None)
        }
    };
    let subject = raw.subject.as_ref().map(Descriptor::digest).transpose()?;
    Ok(Inspected {
        media_type,
        blobs,
        manifests,
        subject,
        artifact_type: raw.artifact_type.or(config_type),
        annotations: raw.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

    fn descriptor(digest: &str) -> String {
        format!(r#"{{"mediaType":"x/y","digest":"{digest}","size":1}}"#)
    }

    /// Inspects `json` and writes what was found in one line: the media type, then the first two
    /// hex digits of each referenced blob, child manifest and subject, then the artifact type.
    fn check(content_type: Option<&str>, json: &str, expected: &str) {
        let short = |ds: &[Digest]| -> String {
            ds.iter()
                .map(|d| d.to_string()[7..9].to_owned())
                .collect::<Vec<_>>()
                .join(",")
        };
        let actual = match inspect(content_type, json.as_bytes()) {
            Ok(i) => format!(
                "{} blobs={} manifests={} subject={} artifact={}",
                i.media_type,
                short(&i.blobs),
                short(&i.manifests),
                short(i.subject.as_slice()),
                i.artifact_type.as_deref().unwrap_or("-"),
            ),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(actual, expected, "{json}");
    }

    #[test]
    fn image_manifests_list_config_and_layers() {
        let json = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{CONFIG}","digest":"{A}","size":1}},"layers":[{}]}}"#,
            descriptor(B)
        );
        check(
            Some(OCI_MANIFEST),
            &json,
            &format!("{OCI_MANIFEST} blobs=aa,bb manifests= subject= artifact={CONFIG}"),
        );
        check(
            Some(DOCKER_MANIFEST),
            &json,
            &format!("{DOCKER_MANIFEST} blobs=aa,bb manifests= subject= artifact={CONFIG}"),
        );
        let typed = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{}}}"#,
            descriptor(A)
        );
        check(
            None,
            &typed,
            &format!("{OCI_MANIFEST} blobs=aa manifests= subject= artifact=x/y"),
        );
    }

    #[test]
    fn non_distributable_layers_need_not_be_here() {
        let foreign = format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"{C}","size":9,"urls":["https://example.com/layer"]}}"#
        );
        let json = format!(
            r#"{{"schemaVersion":2,"config":{},"layers":[{foreign},{}]}}"#,
            descriptor(A),
            descriptor(B)
        );
        check(
            Some(OCI_MANIFEST),
            &json,
            &format!("{OCI_MANIFEST} blobs=aa,bb manifests= subject= artifact=x/y"),
        );
    }

    #[test]
    fn indexes_reference_manifests() {
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[{},{}]}}"#,
            descriptor(A),
            descriptor(B)
        );
        check(
            Some(OCI_INDEX),
            &json,
            &format!("{OCI_INDEX} blobs= manifests=aa,bb subject= artifact=-"),
        );
        check(
            Some(DOCKER_MANIFEST_LIST),
            &json,
            &format!("{DOCKER_MANIFEST_LIST} blobs= manifests=aa,bb subject= artifact=-"),
        );
    }

    #[test]
    fn artifacts_with_a_subject() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.example.sbom","config":{},"layers":[],"subject":{},"annotations":{{"k":"v"}}}}"#,
            descriptor(A),
            descriptor(C)
        );
        check(
            Some(OCI_MANIFEST),
            &json,
            &format!(
                "{OCI_MANIFEST} blobs=aa manifests= subject=cc artifact=application/vnd.example.sbom"
            ),
        );
        let inspected = inspect(None, json.as_bytes()).expect("inspect");
        let digest = Digest::parse(B).expect("digest");
        assert_eq!(
            inspected.referrer_descriptor(&digest, 42),
            json!({
                "mediaType": OCI_MANIFEST,
                "digest": B,
                "size": 42,
                "artifactType": "application/vnd.example.sbom",
                "annotations": {"k": "v"},
            })
        );
    }

    #[test]
    fn refusals() {
        let manifest = |body: &str| format!(r#"{{"schemaVersion":2,{body}}}"#);
        check(
            Some("text/plain"),
            &manifest(r#""layers":[]"#),
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
            Some(OCI_INDEX),
            &format!(r#"{{"mediaType":"{OCI_MANIFEST}"}}"#),
            r#"error: invalid manifest: Content-Type "application/vnd.oci.image.index.v1+json" differs from the manifest's mediaType "application/vnd.oci.image.manifest.v1+json""#,
        );
        check(
            Some(OCI_MANIFEST),
            &format!(r#"{{"schemaVersion":1,"config":{}}}"#, descriptor(A)),
            "error: invalid manifest: schemaVersion must be 2",
        );
        check(
            Some(OCI_MANIFEST),
            &manifest(r#""layers":[]"#),
            "error: invalid manifest: an image manifest needs a config descriptor",
        );
        check(
            Some(OCI_MANIFEST),
            &manifest(r#""config":{"mediaType":"x/y","digest":"sha256:zz","size":1}"#),
            r#"error: invalid manifest: invalid digest "sha256:zz": expected sha256:<64 lower-case hex> or sha512:<128 hex>"#,
        );
        check(
            Some(OCI_MANIFEST),
            &manifest(&format!(r#""config":{{"digest":"{A}","size":1}}"#)),
            "error: invalid manifest: missing field `mediaType` at line 1 column 121",
        );
        check(
            Some(OCI_INDEX),
            &manifest(r#""layers":[]"#),
            "error: invalid manifest: an index needs a manifests list",
        );
        check(
            Some(OCI_INDEX),
            &manifest(&format!(r#""manifests":[],"config":{}"#, descriptor(A))),
            "error: invalid manifest: an index has no config or layers",
        );
        check(
            Some(OCI_MANIFEST),
            &manifest(&format!(
                r#""config":{},"subject":{{"mediaType":"x/y","digest":"nope","size":1}}"#,
                descriptor(A)
            )),
            r#"error: invalid manifest: invalid digest "nope": expected sha256:<64 lower-case hex> or sha512:<128 hex>"#,
        );
    }
}
