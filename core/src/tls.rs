//! The live certificate table: which certificate the router presents for a TLS server name
//! (SNI). The controller builds a new table from the certificates users added whenever they
//! change and publishes it; the router reads the current snapshot during each handshake.
//!
//! Invariant: readers never block. Publishing swaps an `Arc` atomically, so a handshake in
//! progress keeps the snapshot it started with.
//! Invariant: the private key is never printed: [`TlsCert`]'s `Debug` leaves it out.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// One certificate with its private key, as the router needs it.
pub struct TlsCert {
    /// The DNS names the certificate covers (its subject alternative names), lower-case;
    /// `*.example.com` for a wildcard.
    pub names: Vec<String>,
    /// `SHA256:` and the hex digest of the leaf certificate's DER form; identifies it.
    pub fingerprint: String,
    /// When the certificate expires, in seconds since the epoch.
    pub not_after: i64,
    /// The leaf certificate, then any intermediates, in PEM.
    pub chain_pem: String,
    key_pem: String,
}

impl TlsCert {
    /// A certificate whose facts (names, fingerprint, expiry) the caller has read from
    /// `chain_pem` and checked against `key_pem`.
    pub fn new(
        names: Vec<String>,
        fingerprint: String,
        not_after: i64,
        chain_pem: String,
        key_pem: String,
    ) -> Self {
        TlsCert {
            names,
            fingerprint,
            not_after,
            chain_pem,
            key_pem,
        }
    }

    /// The private key, in PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

impl fmt::Debug for TlsCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCert")
            .field("names", &self.names)
            .field("fingerprint", &self.fingerprint)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Server names mapped to certificates. When several certificates cover one name, the one that
/// expires last is presented, so a renewed certificate takes over as soon as it is added.
#[derive(Debug, Default)]
pub struct CertTable {
    /// Exact names and wildcard patterns (`*.example.com`), lower-case.
    names: HashMap<String, Arc<TlsCert>>,
    certs: Vec<Arc<TlsCert>>,
}

impl CertTable {
    /// Adds `cert` under each of its names.
    pub fn insert(&mut self, cert: TlsCert) {
        let cert = Arc::new(cert);
        for name in &cert.names {
            let name = name.to_ascii_lowercase();
            match self.names.get(&name) {
                Some(held) if held.not_after >= cert.not_after => {}
                _ => {
                    self.names.insert(name, cert.clone());
                }
            }
        }
        self.certs.push(cert);
    }

    /// The certificate for a server name: one naming it exactly, else a wildcard covering it
    /// (`*.example.com` covers `www.example.com`, not `example.com` nor `a.b.example.com`).
    pub fn lookup(&self, server_name: &str) -> Option<&Arc<TlsCert>> {
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(cert) = self.names.get(&name) {
            return Some(cert);
        }
        let (_, parent) = name.split_once('.')?;
        self.names.get(&format!("*.{parent}"))
    }

    /// Every certificate in the table.
    pub fn certs(&self) -> &[Arc<TlsCert>] {
        &self.certs
    }

    /// How many certificates the table holds.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Whether the table holds no certificate.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// Whether `pattern` (a name from a certificate, possibly `*.example.com`) covers `host`.
pub fn name_covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(parent)),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// A shared handle to the current certificate table: cheap to clone, cheap to read.
#[derive(Debug, Clone, Default)]
pub struct Certs(Arc<ArcSwap<CertTable>>);

impl Certs {
    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<CertTable> {
        self.0.load_full()
    }

    /// Replaces the table; handshakes in progress keep their snapshot.
    pub fn publish(&self, table: CertTable) {
        self.0.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str], fingerprint: &str, not_after: i64) -> TlsCert {
        TlsCert::new(
            names.iter().map(|n| (*n).to_owned()).collect(),
            fingerprint.to_owned(),
            not_after,
            String::new(),
            "SECRET KEY".to_owned(),
        )
    }

    #[test]
    fn lookup_exact_then_wildcard() {
        let mut t = CertTable::default();
        t.insert(cert(&["a.example.com", "b.example.com"], "ab", 10));
        t.insert(cert(&["*.example.com"], "star", 10));
        t.insert(cert(&["example.org"], "org", 10));
        let found = |name: &str| t.lookup(name).map(|c| c.fingerprint.as_str());
        assert_eq!(found("a.example.com"), Some("ab"));
        assert_eq!(found("B.Example.com."), Some("ab"));
        assert_eq!(found("c.example.com"), Some("star"));
        assert_eq!(found("example.com"), None);
        assert_eq!(found("x.c.example.com"), None);
        assert_eq!(found("example.org"), Some("org"));
        assert_eq!(found("www.example.org"), None);
        assert_eq!(found(""), None);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn the_certificate_that_expires_last_wins() {
        let mut t = CertTable::default();
        t.insert(cert(&["a.example.com"], "old", 10));
        t.insert(cert(&["a.example.com"], "new", 20));
        t.insert(cert(&["a.example.com"], "older", 5));
        assert_eq!(t.lookup("a.example.com").unwrap().fingerprint, "new");
    }

    #[test]
    fn wildcard_coverage() {
        assert!(name_covers("*.example.com", "www.example.com"));
        assert!(name_covers("*.example.com", "WWW.example.COM"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(!name_covers("*.example.com", ".example.com"));
        assert!(name_covers("www.example.com", "www.example.com"));
        assert!(!name_covers("www.example.com", "api.example.com"));
    }

    #[test]
    fn debug_leaves_the_key_out() {
        let shown = format!("{:?}", cert(&["a.example.com"], "fp", 1));
        assert!(shown.contains("a.example.com"), "{shown}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
