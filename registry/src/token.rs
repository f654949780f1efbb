//! Bearer tokens: the short-lived JWTs that `/v2/token` issues and that requests carry in
//! `Authorization: Bearer` instead of HTTP Basic credentials, as in Docker's token protocol.
//!
//! Owns: the scope grammar (`repository:<name>:<actions>`, `registry:catalog:*`), the claims, the
//! signing key and the compact JWT form (HS256): signing, and verifying the signature (in
//! constant time), the algorithm, `iss`, `aud`, `nbf` and `exp`. The key is 32 random bytes,
//! made once and kept in a file of mode 0600, so tokens outlive a restart but never the key.
//! Must not: decide who may do what (that is [`crate::auth`]) or read requests.

use std::fmt;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::names::RepoName;

/// The `service` of every challenge and the `aud` of every token.
pub(crate) const SERVICE: &str = "slipway-registry";

/// The `iss` of every token.
pub(crate) const ISSUER: &str = "slipway";

/// How long a token is valid after it is issued.
pub(crate) const LIFETIME: Duration = Duration::from_secs(5 * 60);

/// What a scope or a token's access entry is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resource {
    /// One repository (`repository:<name>`).
    Repository(RepoName),
    /// The list of every repository (`registry:catalog`).
    Catalog,
}

impl Resource {
    /// The `type` of an access entry.
    fn kind(&self) -> &'static str {
        match self {
            Resource::Repository(_) => "repository",
            Resource::Catalog => "registry",
        }
    }

    /// The `name` of an access entry.
    fn name(&self) -> &str {
        match self {
            Resource::Repository(name) => name.as_str(),
            Resource::Catalog => "catalog",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.name())
    }
}

/// One action on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Read manifests, blobs, tags and referrers.
    Pull,
    /// Upload blobs and manifests.
    Push,
    /// Delete manifests and blobs.
    Delete,
    /// `*`: in a scope, every action the user has; for the catalog, reading it.
    All,
}

impl Action {
    /// The action as scopes and tokens spell it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::All => "*",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "pull" => Action::Pull,
            "push" => Action::Push,
            "delete" => Action::Delete,
            "*" => Action::All,
            _ => return None,
        })
    }
}

/// A requested scope: a resource and the actions asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    /// What the scope is about.
    pub(crate) resource: Resource,
    /// The actions asked for, in the order given; unknown actions are dropped.
    pub(crate) actions: Vec<Action>,
}

impl Scope {
    /// Parses one scope; `None` for a resource type or name this registry does not have, which
    /// the token endpoint then ignores, as the reference implementation does.
    pub(crate) fn parse(s: &str) -> Option<Scope> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        let resource = match (kind, name) {
            ("repository", name) => Resource::Repository(RepoName::parse(name).ok()?),
            ("registry", "catalog") => Resource::Catalog,
            _ => return None,
        };
        let actions = actions.split(',').filter_map(Action::parse).collect();
        Some(Scope { resource, actions })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let actions: Vec<&str> = self.actions.iter().map(|a| a.as_str()).collect();
        write!(f, "{}:{}", self.resource, actions.join(","))
    }
}

/// One entry of a token's `access` claim: the actions granted on one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

impl Access {
    /// The entry granting `actions` on `resource`.
    pub(crate) fn new(resource: &Resource, actions: &[Action]) -> Access {
        Access {
            kind: resource.kind().to_owned(),
            name: resource.name().to_owned(),
            actions: actions.iter().map(|a| a.as_str().to_owned()).collect(),
        }
    }
}

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// Who issued it: [`ISSUER`].
    pub(crate) iss: String,
    /// The user it was issued to.
    pub(crate) sub: String,
    /// The service it is for: [`SERVICE`].
    pub(crate) aud: String,
    /// Seconds since the epoch after which it is refused.
    pub(crate) exp: u64,
    /// Seconds since the epoch before which it is refused.
    pub(crate) nbf: u64,
    /// Seconds since the epoch when it was issued.
    pub(crate) iat: u64,
    /// A random id.
    pub(crate) jti: String,
    /// What it grants.
    pub(crate) access: Vec<Access>,
}

impl Claims {
    /// The claims of a token for `user`, issued `now` (seconds since the epoch), granting
    /// `access`.
    pub(crate) fn new(user: &str, access: Vec<Access>, now: u64) -> Claims {
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        Claims {
            iss: ISSUER.to_owned(),
            sub: user.to_owned(),
            aud: SERVICE.to_owned(),
            exp: now + LIFETIME.as_secs(),
            nbf: now,
            iat: now,
            jti: hex::encode(jti),
            access,
        }
    }

    /// Whether the token grants `action` on `resource` (`*` grants every action).
    pub(crate) fn grants(&self, resource: &Resource, action: Action) -> bool {
        self.access.iter().any(|a| {
            a.kind == resource.kind()
                && a.name == resource.name()
                && a.actions
                    .iter()
                    .any(|granted| granted == action.as_str() || granted == "*")
        })
    }
}

/// Why a bearer token was refused. The messages go to the client; none holds key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    /// Not three base64url parts with a JSON header and payload.
    #[error("malformed token")]
    Malformed,
    /// Signed with another algorithm than HS256.
    #[error("unsupported token algorithm")]
    Algorithm,
    /// The signature does not match this registry's key.
    #[error("bad token signature")]
    Signature,
    /// Issued by someone else or for another service.
    #[error("token is not for this registry")]
    Audience,
    /// Used before `nbf`.
    #[error("token is not valid yet")]
    NotYetValid,
    /// Used at or after `exp`.
    #[error("token expired")]
    Expired,
}

/// The key that signs and verifies tokens.
pub(crate) struct TokenKey([u8; 32]);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

impl TokenKey {
    /// Reads the key from `path` (64 hex characters), or makes a random one there (mode 0600)
    /// when the file is missing.
    pub(crate) fn load_or_create(path: &Path) -> io::Result<TokenKey> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut key = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut key).map_err(|_| {
                    io::Error::other("not 64 hex characters; remove the file to make a new key")
                })?;
                Ok(TokenKey(key))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                // Written whole under another name, then renamed: a crash leaves no half key.
                let temp =
                    PathBuf::from(format!("{}.{}.tmp", path.display(), hex::encode(&key[..4])));
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&temp)?;
                file.write_all(hex::encode(key).as_bytes())?;
                file.sync_all()?;
                std::fs::rename(&temp, path)?;
                Ok(TokenKey(key))
            }
            Err(e) => Err(e),
        }
    }

    /// The compact JWT of `claims`, signed.
    pub(crate) fn sign(&self, claims: &Claims) -> String {
        let header = Header {
            alg: "HS256".to_owned(),
            typ: Some("JWT".to_owned()),
        };
        let encode = |value: &[u8]| URL_SAFE_NO_PAD.encode(value);
        // Serializing plain structs of strings and numbers cannot fail.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let signed = format!("{}.{}", encode(&header), encode(&payload));
        let signature = hmac_sha256(&self.0, signed.as_bytes());
        format!("{signed}.{}", encode(&signature))
    }

    /// The claims of `token` if this key signed it, for this service, and it is valid at `now`
    /// (seconds since the epoch).
    pub(crate) fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| TokenError::Malformed)
        };
        let header: Header =
            serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm);
        }
        let signed = &token[..token.len() - signature.len() - 1];
        let expected = hmac_sha256(&self.0, signed.as_bytes());
        if !bool::from(decode(signature)?.as_slice().ct_eq(&expected)) {
            return Err(TokenError::Signature);
        }
        let claims: Claims =
            serde_json::from_slice(&decode(payload)?).map_err(|_| TokenError::Malformed)?;
        if claims.iss != ISSUER || claims.aud != SERVICE {
            return Err(TokenError::Audience);
        }
        if now < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`, which is at most one block (64 bytes).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn key() -> TokenKey {
        TokenKey([7; 32])
    }

    fn repo(name: &str) -> Resource {
        Resource::Repository(RepoName::parse(name).unwrap())
    }

    fn claims(access: Vec<Access>) -> Claims {
        Claims::new("alice", access, NOW)
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn scopes() {
        let check = |s: &str, expected: Option<&str>| {
            let parsed = Scope::parse(s).map(|scope| scope.to_string());
            assert_eq!(parsed.as_deref(), expected, "{s}");
        };
        check("repository:apps/web:pull", Some("repository:apps/web:pull"));
        check(
            "repository:a/b/c:pull,push,bogus",
            Some("repository:a/b/c:pull,push"),
        );
        check("repository:a:*", Some("repository:a:*"));
        check("registry:catalog:*", Some("registry:catalog:*"));
        check("registry:other:*", None);
        check("repository:../x:pull", None);
        check("repository:Upper:pull", None);
        check("repository:a", None);
        check("plugin:a:pull", None);
    }

    #[test]
    fn signed_tokens_round_trip_and_grant_their_access() {
        let granted = claims(vec![
            Access::new(&repo("apps/web"), &[Action::Pull]),
            Access::new(&Resource::Catalog, &[Action::All]),
        ]);
        let token = key().sign(&granted);
        let verified = key().verify(&token, NOW + 10).expect("valid");
        assert_eq!(verified, granted);
        assert!(verified.grants(&repo("apps/web"), Action::Pull));
        assert!(!verified.grants(&repo("apps/web"), Action::Push));
        assert!(!verified.grants(&repo("apps/other"), Action::Pull));
        assert!(verified.grants(&Resource::Catalog, Action::All));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let token = key().sign(&claims(vec![]));
        let verify = |token: &str, now: u64| key().verify(token, now);
        assert_eq!(verify(&token, NOW + 300), Err(TokenError::Expired));
        assert_eq!(verify(&token, NOW - 1), Err(TokenError::NotYetValid));
        // Another key's signature.
        let forged = TokenKey([8; 32]).sign(&claims(vec![]));
        assert_eq!(verify(&forged, NOW), Err(TokenError::Signature));
        // A payload changed after signing.
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let (header, _) = signed.split_once('.').unwrap();
        let mut admin = claims(vec![Access::new(&repo("apps/web"), &[Action::Push])]);
        admin.sub = "admin".into();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&admin).unwrap());
        let tampered = format!("{header}.{payload}.{signature}");
        assert_eq!(verify(&tampered, NOW), Err(TokenError::Signature));
        // `alg: none` with no signature.
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(
            verify(&format!("{none}.{payload}."), NOW),
            Err(TokenError::Algorithm)
        );
        // Another service's or issuer's token, correctly signed.
        let mut other = claims(vec![]);
        other.aud = "registry.example".into();
        assert_eq!(verify(&key().sign(&other), NOW), Err(TokenError::Audience));
        let mut other = claims(vec![]);
        other.iss = "someone".into();
        assert_eq!(verify(&key().sign(&other), NOW), Err(TokenError::Audience));
        for garbage in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert_eq!(
                verify(garbage, NOW),
                Err(TokenError::Malformed),
                "{garbage}"
            );
        }
    }

    #[test]
    fn the_key_is_made_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token-key");
        let first = TokenKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = TokenKey::load_or_create(&path).unwrap();
        assert_eq!(first.0, again.0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(&path, "short").unwrap();
        assert!(TokenKey::load_or_create(&path).is_err());
    }
}
