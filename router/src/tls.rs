//! HTTPS: the TLS listener's handshakes and the certificate each presents, picked by
//! the server name the client sends (SNI) from the controller's published
//! [`CertTable`](slipway_core::tls::CertTable).
//!
//! Pingora pauses each handshake once the client's hello has arrived and calls
//! [`SniCerts::certificate_callback`], which installs the certificate (with its chain and key)
//! that the current snapshot holds for the name: an exact name first, else a wildcard. A name
//! without a certificate gets none, and OpenSSL ends that handshake with an alert; nothing
//! else is served in its place.
//!
//! The table carries PEM; parsing it costs tens of microseconds per certificate, so it is done
//! once per published snapshot, on the first handshake that sees it, and reuses what the
//! previous snapshot had already parsed (matched by fingerprint). Handshakes never wait on the
//! controller.
//!
//! Invariant: no private key and no certificate body reaches a log line.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::header::HeaderValue;
use parking_lot::Mutex;
use pingora::listeners::TlsAccept;
use pingora::protocols::IO;
use pingora::protocols::tls::server::handshake_with_callback;
use pingora::protocols::tls::{SslStream, TlsRef};
use pingora::tls::ext;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::{AlpnError, NameType, SslAcceptor, SslMethod, select_next_proto};
use pingora::tls::x509::X509;
use slipway_core::tls::{CertTable, Certs, TlsCert};

/// A parsed certificate, ready to install into a handshake.
struct Loaded {
    leaf: X509,
    intermediates: Vec<X509>,
    key: PKey<Private>,
}

impl Loaded {
    fn parse(cert: &TlsCert) -> Result<Loaded, String> {
        let mut chain = X509::stack_from_pem(cert.chain_pem.as_bytes())
            .map_err(|e| format!("certificate: {e}"))?
            .into_iter();
        let leaf = chain.next().ok_or("certificate: no PEM certificate")?;
        let key = PKey::private_key_from_pem(cert.key_pem().as_bytes())
            // OpenSSL's message names no key material.
            .map_err(|e| format!("private key: {e}"))?;
        Ok(Loaded {
            leaf,
            intermediates: chain.collect(),
            key,
        })
    }

    fn install(&self, ssl: &mut TlsRef) -> Result<(), String> {
        ext::ssl_use_certificate(ssl, &self.leaf).map_err(|e| e.to_string())?;
        ext::ssl_use_private_key(ssl, &self.key).map_err(|e| e.to_string())?;
        for cert in &self.intermediates {
            ext::ssl_add_chain_cert(ssl, cert).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// One snapshot of the certificate table, parsed.
#[derive(Default)]
struct Parsed {
    table: Arc<CertTable>,
    /// By fingerprint; certificates that did not parse are absent.
    loaded: HashMap<String, Arc<Loaded>>,
}

impl Parsed {
    /// Parses `table`, reusing what `previous` holds for the same fingerprints.
    fn new(table: Arc<CertTable>, previous: &Parsed) -> Parsed {
        let mut loaded = HashMap::with_capacity(table.len());
        for cert in table.certs() {
            if loaded.contains_key(&cert.fingerprint) {
                continue;
            }
            if let Some(done) = previous.loaded.get(&cert.fingerprint) {
                loaded.insert(cert.fingerprint.clone(), done.clone());
                continue;
            }
            match Loaded::parse(cert) {
                Ok(done) => {
                    loaded.insert(cert.fingerprint.clone(), Arc::new(done));
                }
                Err(e) => tracing::warn!(
                    code = "tls_bad_cert",
                    names = ?cert.names,
                    fingerprint = %cert.fingerprint,
                    "route: certificate not usable: {e}"
                ),
            }
        }
        Parsed { table, loaded }
    }
}

/// The TLS listener's certificate source: the published table, parsed.
pub(crate) struct SniCerts {
    certs: Certs,
    parsed: Mutex<Arc<Parsed>>,
}

impl SniCerts {
    pub(crate) fn new(certs: Certs) -> Self {
        SniCerts {
            certs,
            parsed: Mutex::default(),
        }
    }

    /// The parsed form of the current snapshot, parsing it now if it is new.
    fn current(&self) -> Arc<Parsed> {
        let table = self.certs.snapshot();
        let mut parsed = self.parsed.lock();
        if !Arc::ptr_eq(&parsed.table, &table) {
            *parsed = Arc::new(Parsed::new(table, &parsed));
        }
        parsed.clone()
    }

    /// The certificate to present for `server_name`.
    fn find(&self, server_name: &str) -> Option<Arc<Loaded>> {
        let parsed = self.current();
        let cert = parsed.table.lookup(server_name)?;
        parsed.loaded.get(&cert.fingerprint).cloned()
    }
}

#[async_trait]
impl TlsAccept for SniCerts {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let Some(name) = ssl.servername(NameType::HOST_NAME).map(str::to_owned) else {
            tracing::debug!(code = "tls_no_sni", "route: TLS client sent no server name");
            return;
        };
        let Some(loaded) = self.find(&name) else {
            tracing::debug!(
                code = "tls_no_cert",
                server_name = %name,
                "route: no certificate for this name"
            );
            return;
        };
        if let Err(e) = loaded.install(ssl) {
            tracing::warn!(
                code = "tls_install",
                server_name = %name,
                "route: cannot present the certificate: {e}"
            );
        }
    }
}

/// What the request path needs to know of the TLS listener.
#[derive(Clone)]
pub(crate) struct TlsListener {
    /// The port it accepts on: where redirects to HTTPS go.
    pub(crate) port: u16,
    /// The same port as the X-Forwarded-Port of requests that came over TLS.
    pub(crate) port_value: HeaderValue,
    certs: Certs,
}

impl TlsListener {
    pub(crate) fn new(port: u16, certs: Certs) -> Self {
        TlsListener {
            port,
            port_value: HeaderValue::from(port),
            certs,
        }
    }

    /// Whether a certificate for `host` (a `Host` value, any port ignored) is published, so a
    /// redirect there can succeed.
    pub(crate) fn serves(&self, host: &str) -> bool {
        self.certs
            .snapshot()
            .lookup(crate::redirect::without_port(host))
            .is_some()
    }
}

/// The TLS listener's handshakes: Mozilla's intermediate profile, certificates from the
/// published table by SNI, and ALPN offering HTTP/2 before HTTP/1.1.
pub(crate) struct Acceptor {
    ssl: SslAcceptor,
    certs: SniCerts,
}

impl Acceptor {
    pub(crate) fn new(certs: Certs) -> Result<Acceptor, String> {
        let mut builder =
            SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(|e| e.to_string())?;
        builder.set_alpn_select_callback(|_, offered| {
            // A client that offers neither gets no ALPN answer and speaks HTTP/1.1.
            select_next_proto(ALPN_PREFERENCE, offered).ok_or(AlpnError::NOACK)
        });
        Ok(Acceptor {
            ssl: builder.build(),
            certs: SniCerts::new(certs),
        })
    }

    /// Runs the server side of the handshake on `io`, with the certificate for the name the
    /// client asks for.
    pub(crate) async fn accept<S: IO>(&self, io: S) -> pingora::Result<SslStream<S>> {
        handshake_with_callback(&self.ssl, io, &self.certs).await
    }
}

/// The protocols offered by ALPN, in order of preference, in its wire format.
const ALPN_PREFERENCE: &[u8] = b"\x02h2\x08http/1.1";

/// Whether the handshake on `stream` settled on HTTP/2.
pub(crate) fn is_h2<S>(stream: &SslStream<S>) -> bool {
    stream.ssl().selected_alpn_protocol() == Some(b"h2")
}

#[cfg(test)]
mod tests {
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::ssl::{Ssl, SslContext, SslMethod};
    use openssl::x509::extension::SubjectAlternativeName;

    use super::*;

    /// A self-signed certificate for `name` under `fingerprint` (any unique string will do).
    fn cert(name: &str, fingerprint: &str) -> TlsCert {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut x509 = X509::builder().unwrap();
        x509.set_pubkey(&key).unwrap();
        x509.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        x509.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .dns(name)
            .build(&x509.x509v3_context(None, None))
            .unwrap();
        x509.append_extension(san).unwrap();
        x509.sign(&key, MessageDigest::sha256()).unwrap();
        let pem = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
        TlsCert::new(
            vec![name.to_owned()],
            fingerprint.to_owned(),
            1,
            pem(x509.build().to_pem().unwrap()),
            pem(key.private_key_to_pem_pkcs8().unwrap()),
        )
    }

    fn table(certs: Vec<TlsCert>) -> CertTable {
        let mut table = CertTable::default();
        certs.into_iter().for_each(|c| table.insert(c));
        table
    }

    #[test]
    fn certificates_are_picked_by_name_and_parsed_once() {
        let certs = Certs::default();
        let sni = SniCerts::new(certs.clone());
        assert!(sni.find("a.example.com").is_none());

        let a = cert("a.example.com", "fp-a");
        let a_again = TlsCert::new(
            a.names.clone(),
            a.fingerprint.clone(),
            a.not_after,
            a.chain_pem.clone(),
            a.key_pem().to_owned(),
        );
        let junk = TlsCert::new(
            vec!["bad.example.com".into()],
            "fp-bad".into(),
            1,
            "junk".into(),
            "junk".into(),
        );
        certs.publish(table(vec![a, junk]));
        let found = sni.find("a.example.com").expect("a's certificate");
        // A certificate that does not parse is left out, and nothing is presented for it.
        assert!(sni.find("bad.example.com").is_none());

        // The next snapshot reuses what was parsed, and adds the new wildcard.
        certs.publish(table(vec![a_again, cert("*.example.org", "fp-w")]));
        assert!(Arc::ptr_eq(&found, &sni.find("A.example.com").unwrap()));
        assert!(sni.find("www.example.org").is_some());
        assert!(sni.find("example.org").is_none());

        // What is found installs into a handshake: OpenSSL checks the key matches.
        let context = SslContext::builder(SslMethod::tls()).unwrap().build();
        let mut ssl = Ssl::new(&context).unwrap();
        found.install(&mut ssl).unwrap();
    }
}
