//! The validated names of the Distribution API: repository names, tags, digests and upload ids.
//!
//! Owns: the grammar of every string that comes from a request path or query and may end up in a
//! filesystem path. Must not: do IO. Storage builds paths only from these types, so nothing
//! unvalidated ever reaches the filesystem.

use std::fmt;

use sha2::{Digest as _, Sha256, Sha512};

/// Why a name from a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A repository name outside the OCI grammar.
    #[error(
        "invalid repository name {0:?}: use '/'-separated lower-case components like 'team/app'"
    )]
    Repository(String),
    /// A tag outside `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
    #[error("invalid tag {0:?}: use up to 128 letters, digits, '_', '.' and '-'")]
    Tag(String),
    /// A digest that is not `sha256:<64 hex>` or `sha512:<128 hex>`.
    #[error("invalid digest {0:?}: expected sha256:<64 lower-case hex> or sha512:<128 hex>")]
    Digest(String),
    /// An upload id this registry never hands out.
    #[error("invalid upload id {0:?}")]
    Upload(String),
}

/// The longest repository name accepted, as in the reference implementation.
const MAX_REPOSITORY_LEN: usize = 255;

/// A repository name: one or more `/`-separated components, each
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`. No component can be empty, `.`, `..`, or start with `_`,
/// so a name is a safe relative path and never collides with storage's `_`-prefixed directories.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RepoName(String);

impl RepoName {
    /// Validates a full repository name.
    pub(crate) fn parse(s: &str) -> Result<RepoName, NameError> {
        let ok = !s.is_empty() && s.len() <= MAX_REPOSITORY_LEN && s.split('/').all(is_component);
        if ok {
            Ok(RepoName(s.to_owned()))
        } else {
            Err(NameError::Repository(s.to_owned()))
        }
    }

    /// The name as a string slice.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `s` is one path component of a repository name.
pub(crate) fn is_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut i = 0;
    // A run of alphanumerics, then any number of (separator, run of alphanumerics).
    let run = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && alnum(b[*i]) {
            *i += 1;
        }
        *i > start
    };
    if !run(&mut i) {
        return false;
    }
    while i < b.len() {
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if !run(&mut i) {
            return false;
        }
    }
    true
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`. It never contains `/` and never starts with `.`,
/// so it is a safe file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Tag(String);

impl Tag {
    /// Validates a tag.
    pub(crate) fn parse(s: &str) -> Result<Tag, NameError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(NameError::Tag(s.to_owned()))
        }
    }

    /// The tag as a string slice.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// A digest algorithm this registry verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Algorithm {
    /// SHA-256, the default everywhere.
    Sha256,
    /// SHA-512, accepted because the OCI spec registers it.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as it appears before the `:`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A content digest, `<algorithm>:<lower-case hex>`. The hex part is a safe file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Validates a digest string.
    pub(crate) fn parse(s: &str) -> Result<Digest, NameError> {
        let invalid = || NameError::Digest(s.to_owned());
        let (alg, hex) = s.split_once(':').ok_or_else(invalid)?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(invalid()),
        };
        let ok = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        if ok {
            Ok(Digest {
                algorithm,
                hex: hex.to_owned(),
            })
        } else {
            Err(invalid())
        }
    }

    /// The digest of `bytes` under `algorithm`.
    pub(crate) fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let hex = match algorithm {
            Algorithm::Sha256 => hex::encode(Sha256::digest(bytes)),
            Algorithm::Sha512 => hex::encode(Sha512::digest(bytes)),
        };
        Digest { algorithm, hex }
    }

    /// Builds a digest from the raw bytes of a finished hash.
    pub(crate) fn from_hash(algorithm: Algorithm, hash: &[u8]) -> Digest {
        Digest {
            algorithm,
            hex: hex::encode(hash),
        }
    }

    /// The algorithm.
    pub(crate) fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lower-case hex part.
    pub(crate) fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reference {
    /// `.../manifests/latest`
    Tag(Tag),
    /// `.../manifests/sha256:...`
    Digest(Digest),
}

impl Reference {
    /// A reference with a `:` is a digest; anything else must be a tag.
    pub(crate) fn parse(s: &str) -> Result<Reference, NameError> {
        if s.contains(':') {
            Digest::parse(s).map(Reference::Digest)
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(tag) => f.write_str(tag.as_str()),
            Reference::Digest(digest) => digest.fmt(f),
        }
    }
}

/// The id of an upload session: 32 lower-case hex characters, random.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct UploadId(String);

impl UploadId {
    /// A fresh random id.
    pub(crate) fn random() -> UploadId {
        UploadId(hex::encode(rand::random::<[u8; 16]>()))
    }

    /// Validates an id taken from a request path.
    pub(crate) fn parse(s: &str) -> Result<UploadId, NameError> {
        let ok = s.len() == 32
            && s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        if ok {
            Ok(UploadId(s.to_owned()))
        } else {
            Err(NameError::Upload(s.to_owned()))
        }
    }

    /// The id as a string slice.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_repo(input: &str, ok: bool) {
        assert_eq!(RepoName::parse(input).is_ok(), ok, "{input:?}");
    }

    #[test]
    fn repository_names() {
        for good in [
            "a",
            "app",
            "team/app",
            "a/b/c/d/e/f/g/h/i",
            "my-app",
            "my--app",
            "my.app",
            "my_app",
            "my__app",
            "0/9",
        ] {
            check_repo(good, true);
        }
        for bad in [
            "", "/", "a/", "/a", "a//b", ".", "..", "a/../b", "_a", "a/_tags", "a_", "a-", "a___b",
            "a._b", "A", "a b", "a/b%2fc",
        ] {
            check_repo(bad, false);
        }
        check_repo(&"a".repeat(255), true);
        check_repo(&"a".repeat(256), false);
    }

    #[test]
    fn tags() {
        for good in ["latest", "v1.2.3", "_x", "A-b_c.d", &"t".repeat(128)] {
            assert!(Tag::parse(good).is_ok(), "{good:?}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "..", &"t".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests() {
        let hex64 = "a".repeat(64);
        assert!(Digest::parse(&format!("sha256:{hex64}")).is_ok());
        assert!(Digest::parse(&format!("sha512:{}", "0".repeat(128))).is_ok());
        for bad in [
            String::new(),
            hex64.clone(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha512:{hex64}"),
            format!("md5:{hex64}"),
            format!("sha256:../{}", "a".repeat(61)),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Digest::of(Algorithm::Sha256, b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn upload_ids() {
        let id = UploadId::random();
        assert_eq!(UploadId::parse(id.as_str()), Ok(id));
        assert!(UploadId::parse("../../etc").is_err());
    }
}
