//! Client TLS settings: the trust store (the system bundle plus an optional configured CA file)
//! and the rustls `ClientConfig` every outbound connection uses.
//!
//! Owns: reading and parsing PEM trust files, the protocol floor (TLS 1.3 and 1.2, never
//! below), the cipher suites (AEAD only), the crypto provider (ring, never aws-lc) and the ALPN
//! offer. Never opens a socket and never disables certificate verification: there is no
//! "insecure" switch, a receiver with a private CA is trusted through its CA file.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// System trust store of Debian (the appliance image and the development machines).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// ALPN protocol id of HTTP/2.
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why a configured CA file cannot be trusted. Each client names its own config key in the
/// message built from this.
#[derive(Debug)]
pub enum CaError {
    Read(std::io::Error),
    /// The file holds no PEM certificate.
    Empty,
}

/// Which HTTP versions a client offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// `h2` first, then `http/1.1`: webhook receivers, which may be HTTP/2-only.
    Http2AndHttp1,
    /// `http/1.1` only: S3 stores and the update channel, where one request per connection at
    /// a time is what the callers do anyway.
    Http1,
}

/// The client TLS configuration trusting the system bundle plus, when given, the certificates
/// of the PEM file `ca` (at least one). The system bundle may be missing on a minimal machine;
/// a configured CA can still work.
pub fn client_config(
    ca: Option<&Path>,
    protocols: Protocols,
) -> Result<Arc<ClientConfig>, CaError> {
    let mut roots = RootCertStore::empty();
    if let Ok(pem) = std::fs::read(SYSTEM_CA_BUNDLE) {
        // A bundle may carry certificates webpki cannot use as anchors; they are skipped, as
        // every other TLS library does with the same file.
        roots.add_parsable_certificates(pem_certificates(&pem));
    }
    if let Some(path) = ca {
        let extra = pem_certificates(&std::fs::read(path).map_err(CaError::Read)?);
        if extra.is_empty() {
            return Err(CaError::Empty);
        }
        roots.add_parsable_certificates(extra);
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        // The ring provider supports both versions; the builder refuses only a provider
        // without any suite for them, which `provider()` is not.
        .unwrap_or_else(|_| unreachable!("ring supports TLS 1.3 and 1.2"))
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = match protocols {
        Protocols::Http2AndHttp1 => vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()],
        Protocols::Http1 => vec![ALPN_HTTP1.to_vec()],
    };
    Ok(Arc::new(config))
}

/// rustls's ring provider with only AEAD cipher suites. rustls implements no other kind today;
/// the filter keeps it that way should a future version add one.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|suite| is_aead(suite.suite()));
    Arc::new(provider)
}

/// Whether a suite encrypts with an AEAD (GCM or ChaCha20-Poly1305): every TLS 1.3 suite, and
/// the TLS 1.2 suites named so.
fn is_aead(suite: rustls::CipherSuite) -> bool {
    let name = format!("{suite:?}");
    name.starts_with("TLS13_") || name.contains("_GCM_") || name.contains("CHACHA20_POLY1305")
}

/// Certificates from a PEM bundle, skipping everything else (keys, malformed sections).
fn pem_certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tls_1_3_and_1_2_with_aead_suites_are_offered() {
        let config = client_config(None, Protocols::Http1).expect("config");
        let suites = &config.crypto_provider().cipher_suites;
        assert!(!suites.is_empty());
        for suite in suites {
            let name = format!("{:?}", suite.suite());
            assert!(is_aead(suite.suite()), "{name}");
            assert!(!name.contains("CBC") && !name.contains("NULL"), "{name}");
        }
        let versions: Vec<_> = suites.iter().map(|s| s.version().version).collect();
        assert!(versions.contains(&rustls::ProtocolVersion::TLSv1_3));
        assert!(versions.contains(&rustls::ProtocolVersion::TLSv1_2));
        assert!(versions.iter().all(|v| matches!(
            v,
            rustls::ProtocolVersion::TLSv1_3 | rustls::ProtocolVersion::TLSv1_2
        )));
    }

    #[test]
    fn webhook_clients_offer_h2_before_http_1_1() {
        let config = client_config(None, Protocols::Http2AndHttp1).expect("config");
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let config = client_config(None, Protocols::Http1).expect("config");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dir = dir.path();
        let empty = dir.join("empty.pem");
        std::fs::write(
            &empty,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        assert!(matches!(
            client_config(Some(&empty), Protocols::Http1),
            Err(CaError::Empty)
        ));
        assert!(matches!(
            client_config(Some(&dir.join("missing.pem")), Protocols::Http1),
            Err(CaError::Read(_))
        ));
    }
}
