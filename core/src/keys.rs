//! OpenSSH public keys as users paste them (`ssh-ed25519 AAAA... comment`): parsing, and the
//! SHA256 fingerprint exactly as `ssh-keygen -lf` prints it.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

use crate::names::Fingerprint;

/// Key types Slipway accepts.
pub const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

/// Why a public key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not `type base64 [comment]` on one line.
    #[error("not an OpenSSH public key: expected one line `ssh-ed25519 AAAA... comment`")]
    Format,
    /// A type Slipway does not accept.
    #[error("unsupported key type {0:?}: use one of {types}", types = KEY_TYPES.join(", "))]
    Type(String),
    /// The base64 blob does not decode or does not match the declared type.
    #[error("the key data is corrupt: it does not decode to a {0} key")]
    Corrupt(String),
    /// An RSA key under 2048 bits.
    #[error("RSA key of {0} bits is too weak: use at least 2048 bits, or ed25519")]
    Weak(usize),
}

/// A parsed public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The key type, such as `ssh-ed25519`.
    pub kind: String,
    /// The key in canonical form: `type base64` (the comment dropped).
    pub canonical: String,
    /// The comment, often `user@host`.
    pub comment: String,
    /// The SHA256 fingerprint.
    pub fingerprint: Fingerprint,
}

/// Reads one SSH wire-format string (u32 length, bytes) from `buf`.
fn wire_string<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = buf.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return None;
    }
    let (s, rest) = rest.split_at(len);
    *buf = rest;
    Some(s)
}

/// Parses a public key line as found in `~/.ssh/id_ed25519.pub` or `authorized_keys` (without
/// options).
pub fn parse(line: &str) -> Result<PublicKey, KeyError> {
    let mut parts = line.trim().splitn(3, char::is_whitespace);
    let kind = parts
        .next()
        .filter(|s| !s.is_empty())
        .ok_or(KeyError::Format)?;
    let data = parts.next().ok_or(KeyError::Format)?.trim();
    let comment = parts.next().unwrap_or("").trim().to_owned();
    if line.trim().contains('\n') {
        return Err(KeyError::Format);
    }
    if !KEY_TYPES.contains(&kind) {
        return Err(KeyError::Type(kind.to_owned()));
    }
    let blob = STANDARD
        .decode(data)
        .map_err(|_| KeyError::Corrupt(kind.to_owned()))?;
    let mut rest = blob.as_slice();
    let inner = wire_string(&mut rest).ok_or_else(|| KeyError::Corrupt(kind.to_owned()))?;
    if inner != kind.as_bytes() {
        return Err(KeyError::Corrupt(kind.to_owned()));
    }
    match kind {
        "ssh-ed25519" => {
            let k = wire_string(&mut rest).ok_or_else(|| KeyError::Corrupt(kind.to_owned()))?;
            if k.len() != 32 || !rest.is_empty() {
                return Err(KeyError::Corrupt(kind.to_owned()));
            }
        }
        "ssh-rsa" => {
            let _e = wire_string(&mut rest).ok_or_else(|| KeyError::Corrupt(kind.to_owned()))?;
            let n = wire_string(&mut rest).ok_or_else(|| KeyError::Corrupt(kind.to_owned()))?;
            if !rest.is_empty() {
                return Err(KeyError::Corrupt(kind.to_owned()));
            }
            let n = match n.iter().position(|b| *b != 0) {
                Some(i) => &n[i..],
                None => &[],
            };
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            if bits < 2048 {
                return Err(KeyError::Weak(bits));
            }
        }
        _ => {
            let _curve =
                wire_string(&mut rest).ok_or_else(|| KeyError::Corrupt(kind.to_owned()))?;
            let _point =
                wire_string(&mut rest).ok_or_else(|| KeyError::Corrupt(kind.to_owned()))?;
            if !rest.is_empty() {
                return Err(KeyError::Corrupt(kind.to_owned()));
            }
        }
    }
    Ok(PublicKey {
        kind: kind.to_owned(),
        canonical: format!("{kind} {data}"),
        comment,
        fingerprint: fingerprint_of_blob(&blob),
    })
}

/// The SHA256 fingerprint of a key's wire-format blob.
pub fn fingerprint_of_blob(blob: &[u8]) -> Fingerprint {
    let digest = Sha256::digest(blob);
    format!("SHA256:{}", STANDARD_NO_PAD.encode(digest))
        .parse()
        .expect("a base64 SHA-256 digest is a valid fingerprint")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated with `ssh-keygen -t ed25519`; `ssh-keygen -lf` printed the fingerprint below.
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILsTM6L1SvH4j4bksECbi3sEpMDWmXW6SfWDG7A3+lLS test@example";
    const ED25519_FP: &str = "SHA256:eYDXum8idINQ8AP/VNoA/k7PGqZTO212zbq3BDQbDHc";

    #[test]
    fn ed25519_fingerprint_matches_ssh_keygen() {
        let k = parse(ED25519).unwrap();
        assert_eq!(k.kind, "ssh-ed25519");
        assert_eq!(k.comment, "test@example");
        assert_eq!(k.fingerprint.as_str(), ED25519_FP);
    }

    #[test]
    fn refuses_bad_keys() {
        assert_eq!(parse(""), Err(KeyError::Format));
        assert_eq!(parse("ssh-ed25519"), Err(KeyError::Format));
        assert!(matches!(parse("ssh-dss AAAA"), Err(KeyError::Type(_))));
        assert!(matches!(
            parse("ssh-ed25519 !!!!"),
            Err(KeyError::Corrupt(_))
        ));
        // A valid ed25519 blob declared as RSA.
        let swapped = ED25519.replace("ssh-ed25519 ", "ssh-rsa ");
        assert!(matches!(parse(&swapped), Err(KeyError::Corrupt(_))));
    }
}
