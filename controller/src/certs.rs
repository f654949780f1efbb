//! Certificates users add for their apps (`certs:add`): what is checked before one is stored,
//! and the facts read from it (names, expiry, fingerprint).
//!
//! Invariant: no message here quotes key material; OpenSSL's own errors name the failing step
//! only.

use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::x509::X509;

/// The largest certificate chain or key accepted, in bytes (a long chain is a few KiB).
pub const MAX_PEM_LEN: usize = 64 * 1024;

/// A checked certificate, ready to store.
#[derive(Clone)]
pub struct CheckedCert {
    /// The DNS names of its subject alternative names, lower-case, in the certificate's order.
    pub names: Vec<String>,
    /// `SHA256:` and the lower-case hex digest of the leaf's DER form.
    pub fingerprint: String,
    /// Expiry, in seconds since the epoch.
    pub not_after: i64,
    /// The leaf then its intermediates, re-encoded as PEM (anything between blocks dropped).
    pub chain_pem: String,
    /// The private key as PKCS#8 PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for CheckedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedCert")
            .field("names", &self.names)
            .field("fingerprint", &self.fingerprint)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Reads and checks a PEM certificate chain (leaf first) and its PEM private key: both parse,
/// the key belongs to the leaf, the leaf has not expired at `now` (seconds since the epoch)
/// and names at least one DNS host. Errors are one line for the user.
pub fn check(chain_pem: &str, key_pem: &str, now: i64) -> Result<CheckedCert, String> {
    if chain_pem.len() > MAX_PEM_LEN || key_pem.len() > MAX_PEM_LEN {
        return Err(format!(
            "the certificate and the key must each be at most {} KiB",
            MAX_PEM_LEN / 1024
        ));
    }
    let chain = X509::stack_from_pem(chain_pem.as_bytes()).unwrap_or_default();
    let Some(leaf) = chain.first() else {
        return Err(
            "the certificate is not PEM: expected a -----BEGIN CERTIFICATE----- block".into(),
        );
    };
    let key = PKey::private_key_from_pem(key_pem.as_bytes()).map_err(|_| {
        "the private key is not an unencrypted PEM private key (-----BEGIN PRIVATE KEY-----)"
            .to_owned()
    })?;
    let public = leaf
        .public_key()
        .map_err(|_| "the certificate's public key cannot be read".to_owned())?;
    if !public.public_eq(&key) {
        return Err("the private key does not belong to the certificate".into());
    }
    let not_after = epoch_seconds(leaf.not_after())?;
    if not_after <= now {
        return Err(format!(
            "the certificate expired on {}; add a current one",
            leaf.not_after()
        ));
    }
    let names: Vec<String> = leaf
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|n| n.dnsname())
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return Err("the certificate names no DNS host in its subjectAltName".into());
    }
    let digest = leaf
        .digest(MessageDigest::sha256())
        .map_err(|_| "cannot fingerprint the certificate".to_owned())?;
    let mut pem = String::new();
    for cert in &chain {
        let block = cert
            .to_pem()
            .map_err(|_| "cannot encode the certificate".to_owned())?;
        pem.push_str(&String::from_utf8_lossy(&block));
    }
    let key_pem = key
        .private_key_to_pem_pkcs8()
        .map_err(|_| "cannot encode the private key".to_owned())?;
    Ok(CheckedCert {
        names,
        fingerprint: format!("SHA256:{}", hex::encode(digest)),
        not_after,
        chain_pem: pem,
        key_pem: String::from_utf8_lossy(&key_pem).into_owned(),
    })
}

/// An ASN.1 time as seconds since the epoch.
fn epoch_seconds(t: &openssl::asn1::Asn1TimeRef) -> Result<i64, String> {
    let epoch = Asn1Time::from_unix(0).map_err(|e| e.to_string())?;
    let diff = epoch
        .diff(t)
        .map_err(|_| "the certificate's expiry cannot be read".to_owned())?;
    Ok(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

/// Whether every name is one the app is served at: each equals one of `hosts`, or is a
/// wildcard covering one of them, or is covered by a wildcard among them. Returns the first
/// name that is not.
pub fn foreign_name<'a>(names: &'a [String], hosts: &[String]) -> Option<&'a str> {
    use slipway_core::tls::name_covers;
    names
        .iter()
        .find(|name| {
            !hosts
                .iter()
                .any(|host| name_covers(name, host) || name_covers(host, name))
        })
        .map(String::as_str)
}

#[cfg(test)]
pub(crate) mod tests {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509, X509NameBuilder};

    use super::*;

    /// A fresh P-256 key.
    fn key() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    /// A self-signed certificate for `names` valid from `days_from` to `days_to` (from now),
    /// and its key, as PEM.
    pub(crate) fn self_signed(names: &[&str], days_from: i64, days_to: i64) -> (String, String) {
        let key = key();
        let mut subject = X509NameBuilder::new().unwrap();
        subject
            .append_entry_by_nid(Nid::COMMONNAME, names.first().unwrap_or(&"none"))
            .unwrap();
        let subject = subject.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&subject).unwrap();
        b.set_issuer_name(&subject).unwrap();
        b.set_pubkey(&key).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        b.set_not_before(&Asn1Time::from_unix(now + days_from * 86_400).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(now + days_to * 86_400).unwrap())
            .unwrap();
        if !names.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for n in names {
                san.dns(n);
            }
            let san = san.build(&b.x509v3_context(None, None)).unwrap();
            b.append_extension(san).unwrap();
        }
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = String::from_utf8(b.build().to_pem().unwrap()).unwrap();
        let key = String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        (cert, key)
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn a_good_certificate_is_read() {
        let (cert, key) = self_signed(&["www.example.com", "*.Example.org"], -1, 30);
        let checked = check(&format!("junk before\n{cert}"), &key, now()).unwrap();
        assert_eq!(checked.names, ["www.example.com", "*.example.org"]);
        assert!(checked.fingerprint.starts_with("SHA256:"));
        assert_eq!(checked.fingerprint.len(), "SHA256:".len() + 64);
        assert!((checked.not_after - now() - 30 * 86_400).abs() < 5);
        assert!(checked.chain_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(checked.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{checked:?}").contains("PRIVATE"));
    }

    #[test]
    fn bad_input_gets_one_line() {
        let (cert, key) = self_signed(&["www.example.com"], -1, 30);
        let (_, other_key) = self_signed(&["www.example.com"], -1, 30);
        let (expired, expired_key) = self_signed(&["www.example.com"], -30, -1);
        let (nameless, nameless_key) = self_signed(&[], -1, 30);
        let check_err = |c: &str, k: &str, wanted: &str| {
            let e = check(c, k, now()).unwrap_err();
            assert!(e.contains(wanted), "{e:?} lacks {wanted:?}");
            assert!(!e.contains('\n'), "{e:?}");
            assert!(!e.contains("PRIVATE KEY-----\n"), "{e:?}");
        };
        check_err("not a cert", &key, "not PEM");
        check_err(&cert, "not a key", "not an unencrypted PEM private key");
        check_err(&cert, &cert, "not an unencrypted PEM private key");
        check_err(&cert, &other_key, "does not belong");
        check_err(&expired, &expired_key, "expired on");
        check_err(&nameless, &nameless_key, "names no DNS host");
        check_err(&"x".repeat(MAX_PEM_LEN + 1), &key, "at most 64 KiB");
    }

    #[test]
    fn names_must_be_the_apps() {
        let hosts = |h: &[&str]| h.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let app = hosts(&["web.slipway.test", "www.example.com"]);
        assert_eq!(foreign_name(&hosts(&["www.example.com"]), &app), None);
        assert_eq!(foreign_name(&hosts(&["*.example.com"]), &app), None);
        assert_eq!(
            foreign_name(&hosts(&["www.example.com", "example.com"]), &app),
            Some("example.com")
        );
        assert_eq!(
            foreign_name(&hosts(&["*.other.com"]), &app),
            Some("*.other.com")
        );
        // A wildcard domain of the app covers the names under it.
        let wild = hosts(&["*.example.net"]);
        assert_eq!(foreign_name(&hosts(&["a.example.net"]), &wild), None);
        assert_eq!(foreign_name(&hosts(&["*.example.net"]), &wild), None);
    }
}
