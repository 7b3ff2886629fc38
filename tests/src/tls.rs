//! Test certificates: a throwaway CA per test and leaf certificates it signs,
//! as PEM files in a temp directory, plus HTTPS clients that trust exactly
//! that CA.
//!
//! It must never produce anything a real system would trust, nor trust the
//! system roots itself: TLS in tests proves verification against the test
//! CA, so an unrelated CA must fail.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// Upper bound of one harness HTTPS request, so a hung receiver fails the test.
const HTTPS_TIMEOUT: Duration = Duration::from_secs(120);

/// A fresh certificate authority with a server certificate for `localhost`
/// and `127.0.0.1`. Each `TestCa::new()` has its own key, so a second one is
/// the "unrelated CA" of negative tests. The files vanish with the value.
pub struct TestCa {
    /// The CA certificate (PEM): what a client must trust, e.g. a route's
    /// `webhook_ca` or swaks' `--tls-ca-path`.
    pub ca_pem: PathBuf,
    /// The server certificate for `localhost` / `127.0.0.1` (PEM, leaf only).
    pub cert_pem: PathBuf,
    /// The server certificate's private key (PKCS#8 PEM).
    pub key_pem: PathBuf,
    /// Signs further leaf certificates (e.g. for a wrong host name).
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// Names the files of further leaf certificates uniquely.
    issued: AtomicUsize,
    /// Holds the PEM files; dropped last, which deletes them.
    dir: TempDir,
}

impl TestCa {
    /// A new CA and its `localhost` / `127.0.0.1` server certificate.
    pub fn new() -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("mxnode-test-ca-")
            .tempdir()
            .expect("create a temp dir for test certificates");

        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "mxnode test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate the CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign the CA");

        let ca_pem = dir.path().join("ca.pem");
        fs::write(&ca_pem, issuer.pem()).expect("write ca.pem");

        let mut ca = TestCa {
            ca_pem,
            cert_pem: PathBuf::new(),
            key_pem: PathBuf::new(),
            issuer,
            issued: AtomicUsize::new(0),
            dir,
        };
        let (cert_pem, key_pem) = ca.issue(&["localhost", "127.0.0.1"]);
        ca.cert_pem = cert_pem;
        ca.key_pem = key_pem;
        ca
    }

    /// A further server certificate for `names` (DNS names or IP addresses)
    /// signed by this CA, as `(cert_pem, key_pem)` paths; e.g. a certificate
    /// for the wrong host name.
    pub fn issue(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let sans: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf parameters");
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate a leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the leaf certificate");

        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let cert_pem = self.dir.path().join(format!("server-{n}.pem"));
        let key_pem = self.dir.path().join(format!("server-{n}.key"));
        fs::write(&cert_pem, cert.pem()).expect("write the leaf certificate");
        fs::write(&key_pem, key.serialize_pem()).expect("write the leaf key");
        (cert_pem, key_pem)
    }

    /// The temp directory holding this CA's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate as PEM text.
    pub fn ca_pem_text(&self) -> String {
        fs::read_to_string(&self.ca_pem).expect("read ca.pem")
    }

    /// An HTTPS client that trusts this CA and nothing else, treats every
    /// HTTP status as a normal answer (tests assert on statuses), and gives
    /// up after a bounded time.
    pub fn https_agent(&self) -> ureq::Agent {
        https_agent_trusting(&self.ca_pem)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// An HTTPS client trusting only the CA certificates in the PEM file `ca_pem`.
pub(crate) fn https_agent_trusting(ca_pem: &Path) -> ureq::Agent {
    let pem = fs::read(ca_pem).unwrap_or_else(|error| panic!("read {}: {error}", ca_pem.display()));
    let root = Certificate::from_pem(&pem).expect("parse the CA certificate");
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(vec![root])))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(HTTPS_TIMEOUT))
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ca_writes_pem_files() {
        let ca = TestCa::new();
        for path in [&ca.ca_pem, &ca.cert_pem, &ca.key_pem] {
            let text = fs::read_to_string(path).expect("read pem");
            assert!(text.starts_with("-----BEGIN "), "{}", path.display());
        }
        assert!(ca.ca_pem_text().contains("CERTIFICATE"));
        assert_ne!(ca.ca_pem_text(), TestCa::new().ca_pem_text());
    }
}
