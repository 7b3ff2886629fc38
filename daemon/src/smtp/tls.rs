//! The node's server-side TLS, for STARTTLS and the HTTPS listener: the rustls configuration,
//! loading it from PEM files, replacing it while the node runs, and naming what a handshake
//! negotiated for the payload.
//!
//! TLS is rustls with ring as its crypto provider (DESIGN §3, §12), offering TLS 1.3 and 1.2
//! and nothing older. The suites are those of ring's provider, which are AEAD only: on 1.3
//! AES-GCM and ChaCha20-Poly1305, on 1.2 ECDHE with AES-GCM or ChaCha20-Poly1305 (rustls
//! implements no CBC, RC4, static-RSA or finite-field DHE suite at all). The connection reports the negotiated version
//! and suite itself; [`negotiated`] turns them into the IANA names of the payload (DESIGN §4).
//!
//! It must never serve a key that does not belong to its certificate, nor give up a working
//! configuration for files that do not load.

use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, ProtocolVersion, ServerConfig};

use crate::config::TlsFiles;
use crate::payload::TlsInfo;

/// The protocol versions offered, best first; nothing below 1.2 (DESIGN §3).
static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Why an encrypted key is refused, wherever it comes from (a file or an upload).
pub const ENCRYPTED_KEY: &str = "the key is protected by a passphrase";

/// ring's provider with its default suites and key exchange groups (X25519, P-256, P-384).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server configuration from the PEM certificate and key files.
pub fn config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let cert = std::fs::read(&files.cert)
        .map_err(|e| format!("cannot read {}: {e}", files.cert.display()))?;
    let key = std::fs::read(&files.key)
        .map_err(|e| format!("cannot read {}: {e}", files.key.display()))?;
    config_from_pem(&cert, &key)
}

/// Builds the server configuration from a PEM certificate chain (the server's certificate
/// first) and a PEM private key (PKCS#8, SEC1 or PKCS#1).
pub fn config_from_pem(cert: &[u8], key: &[u8]) -> Result<Arc<ServerConfig>, String> {
    let usable = |e: String| format!("certificate or key is not usable: {e}");
    let chain = certificate_chain(cert).map_err(usable)?;
    let key = private_key(key).map_err(usable)?;
    server_config(chain, key).map_err(usable)
}

/// The certificates of a PEM text, in order.
pub fn certificate_chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the PEM certificate cannot be read: {e}"))?;
    if chain.is_empty() {
        return Err("no PEM certificate".into());
    }
    Ok(chain)
}

/// The first private key of a PEM text: `PRIVATE KEY` (PKCS#8), `EC PRIVATE KEY` (SEC1) or
/// `RSA PRIVATE KEY` (PKCS#1). An encrypted key is refused by name: the node has no one to
/// ask for a passphrase.
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    // `BEGIN ENCRYPTED PRIVATE KEY` (PKCS#8) and `Proc-Type: 4,ENCRYPTED` (OpenSSL's
    // traditional format) both say so in the text.
    if pem.windows(b"ENCRYPTED".len()).any(|w| w == b"ENCRYPTED") {
        return Err(format!("{ENCRYPTED_KEY}; store it unencrypted"));
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key".to_string(),
        other => format!("the PEM private key cannot be read: {other}"),
    })
}

/// The configuration of both listeners: TLS 1.3 and 1.2 with ring's AEAD suites, one
/// certificate chain whatever name the client asks for, no client certificates. No ALPN is
/// configured: STARTTLS has none, and HTTPS clients speak HTTP/1.1 without it.
fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the private key cannot be used: {e}"))?;
    // A renewal copied halfway (the new certificate with the old key) is refused here, not at
    // every handshake. rustls' own check (`CertifiedKey::keys_match`) would do, but it parses
    // the certificate with webpki, which refuses X.509 v1 certificates that OpenSSL served.
    let leaf = chain.first().ok_or("no PEM certificate")?;
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the certificate cannot be read: {e}"))?;
    let key_spki = signing_key.public_key();
    if key_spki.as_deref() != Some(leaf.public_key().raw) {
        return Err("the private key does not belong to the certificate".into());
    }
    let certified = Arc::new(CertifiedKey::new(chain, signing_key));
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OneCertificate(certified)));
    Ok(Arc::new(config))
}

/// Serves one certificate chain whatever server name the client asks for.
#[derive(Debug)]
struct OneCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// What the handshake on `connection` negotiated, once it is complete.
pub fn negotiated(connection: &ServerConnection) -> Option<TlsInfo> {
    let version = connection.protocol_version()?;
    let suite = connection.negotiated_cipher_suite()?.suite();
    Some(TlsInfo {
        version: version_name(version),
        cipher: cipher_name(suite),
    })
}

/// OpenSSL's names of the protocol versions (`TLSv1.3`), which the payload uses.
fn version_name(version: ProtocolVersion) -> String {
    match version {
        ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        // Never negotiated (not offered); named in the same style all the same.
        other => format!("{other:?}").replace('_', "."),
    }
}

/// The IANA name of a cipher suite (the TLS Cipher Suites registry). rustls spells the TLS 1.3
/// suites `TLS13_…` where IANA has `TLS_…`, so the names of the suites the node offers are
/// listed here rather than derived; any other suite falls back to rustls' name, adjusted.
fn cipher_name(suite: CipherSuite) -> String {
    let name = match u16::from(suite) {
        0x1301 => "TLS_AES_128_GCM_SHA256",
        0x1302 => "TLS_AES_256_GCM_SHA384",
        0x1303 => "TLS_CHACHA20_POLY1305_SHA256",
        0xC02B => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        0xC02C => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        0xC02F => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        0xC030 => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        0xCCA8 => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        0xCCA9 => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        other => {
            return match suite.as_str() {
                Some(name) => name.replacen("TLS13_", "TLS_", 1),
                None => format!("0x{other:04X}"),
            };
        }
    };
    name.to_string()
}

/// The TLS configuration of a running node's listener (STARTTLS, and the HTTPS listener),
/// replaceable without a restart: [`ReloadableAcceptor::reload`] (SIGHUP, see `node::run`)
/// re-reads the certificate and key files and, only if they make a working configuration,
/// swaps it in; [`ReloadableAcceptor::switch_to`] does the same with other files (a certificate
/// uploaded through the console, `crate::certificate`). Connections take the configuration
/// current when they start their handshake, so handshakes already under way and sessions
/// already in TLS keep the certificate they began with.
#[derive(Debug)]
pub struct ReloadableAcceptor {
    /// The files in use (`smtp.tls_cert` / `smtp.tls_key`, or the uploaded ones), re-read on
    /// every reload.
    files: RwLock<TlsFiles>,
    /// The configuration new handshakes use; handing it out is a reference count.
    current: RwLock<Arc<ServerConfig>>,
}

impl ReloadableAcceptor {
    /// Loads the configuration from `files` (at start: an error stops the node).
    pub fn load(files: &TlsFiles) -> Result<Self, String> {
        Ok(ReloadableAcceptor {
            files: RwLock::new(files.clone()),
            current: RwLock::new(config(files)?),
        })
    }

    /// The acceptor for a handshake starting now (a cheap clone of the current configuration).
    pub fn current(&self) -> futures_rustls::TlsAcceptor {
        let config = self.current.read().unwrap_or_else(|p| p.into_inner());
        futures_rustls::TlsAcceptor::from(config.clone())
    }

    /// Re-reads the certificate and key files. On success new handshakes use them; on any
    /// error (unreadable files, a key that does not match, not PEM) the configuration in use
    /// stays, so a half-copied renewal can never take TLS down.
    pub fn reload(&self) -> Result<(), String> {
        // Under the write lock, so a concurrent switch cannot be undone by a reload that read
        // the files before it.
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = config(&self.files())?;
        Ok(())
    }

    /// Makes `files` the certificate and key in use (and the files later reloads re-read), if
    /// they make a working configuration; otherwise nothing changes.
    pub fn switch_to(&self, files: &TlsFiles) -> Result<(), String> {
        let fresh = config(files)?;
        // Files and configuration change under one lock, so a concurrent reload cannot pair
        // the new configuration with the old files.
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *self.files.write().unwrap_or_else(|p| p.into_inner()) = files.clone();
        *current = fresh;
        Ok(())
    }

    /// The certificate and key files in use.
    pub fn files(&self) -> TlsFiles {
        self.files.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Test keys in the forms rcgen does not write.
#[cfg(test)]
pub(crate) mod test_keys {
    use x509_parser::der_parser::ber::BerObjectContent;
    use x509_parser::der_parser::parse_der;

    /// The SEC1 `EC PRIVATE KEY` PEM inside a PKCS#8 PEM EC key (as `openssl ec` writes it,
    /// minus the optional curve parameters).
    pub(crate) fn sec1_pem(pkcs8_pem: &str) -> String {
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(pkcs8_pem.as_bytes())
            .map(|k: rustls::pki_types::PrivatePkcs8KeyDer<'static>| k.secret_pkcs8_der().to_vec())
            .expect("a PKCS#8 PEM key");
        let (_, info) = parse_der(&der).expect("PKCS#8 is DER");
        let BerObjectContent::Sequence(fields) = info.content else {
            panic!("PKCS#8 is a sequence");
        };
        let sec1 = fields[2].as_slice().expect("the key is an octet string");
        crate::certificate::pem("EC PRIVATE KEY", sec1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key (PKCS#8) as PEM, for `name`.
    fn self_signed(name: &str) -> (String, String) {
        let certified =
            rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("generate");
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    /// Runs a handshake between a rustls client offering `versions` (trusting `cert_pem`) and
    /// a server on `server`, in memory, and returns what the server reports.
    fn handshake(
        server: Arc<ServerConfig>,
        cert_pem: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Option<TlsInfo> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificate_chain(cert_pem.as_bytes()).expect("PEM") {
            roots.add(cert).expect("a root");
        }
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("a.test").expect("name");
        let mut client =
            rustls::ClientConnection::new(Arc::new(client), name).expect("client connection");
        let mut server = ServerConnection::new(server).expect("server connection");
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).expect("client writes");
            server
                .read_tls(&mut bytes.as_slice())
                .expect("server reads");
            server.process_new_packets().expect("server accepts");
            let mut bytes = Vec::new();
            server.write_tls(&mut bytes).expect("server writes");
            client
                .read_tls(&mut bytes.as_slice())
                .expect("client reads");
            client.process_new_packets().expect("client accepts");
        }
        negotiated(&server)
    }

    #[test]
    fn a_handshake_reports_the_negotiated_version_and_suite_by_their_iana_names() {
        let (cert, key) = self_signed("a.test");
        let config = config_from_pem(cert.as_bytes(), key.as_bytes()).expect("config");
        let tls13 = handshake(config.clone(), &cert, &[&rustls::version::TLS13]).expect("1.3");
        assert_eq!(tls13.version, "TLSv1.3");
        // rustls' client prefers AES-256-GCM where AES is fast.
        assert!(
            [
                "TLS_AES_256_GCM_SHA384",
                "TLS_AES_128_GCM_SHA256",
                "TLS_CHACHA20_POLY1305_SHA256"
            ]
            .contains(&tls13.cipher.as_str()),
            "{tls13:?}"
        );
        let tls12 = handshake(config, &cert, &[&rustls::version::TLS12]).expect("1.2");
        assert_eq!(tls12.version, "TLSv1.2");
        // rcgen's default key is ECDSA P-256.
        assert!(
            tls12.cipher.starts_with("TLS_ECDHE_ECDSA_WITH_"),
            "{tls12:?}"
        );
    }

    #[test]
    fn every_offered_suite_is_aead_and_has_its_iana_name() {
        // The IANA registry's names and numbers of what ring's provider offers.
        let expected = [
            (0x1301, "TLS_AES_128_GCM_SHA256"),
            (0x1302, "TLS_AES_256_GCM_SHA384"),
            (0x1303, "TLS_CHACHA20_POLY1305_SHA256"),
            (0xC02B, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
            (0xC02C, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
            (0xC02F, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            (0xC030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
            (0xCCA8, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
            (0xCCA9, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
        ];
        let offered = provider().cipher_suites.clone();
        assert_eq!(offered.len(), expected.len(), "{offered:?}");
        for suite in offered {
            let code = u16::from(suite.suite());
            let name = cipher_name(suite.suite());
            assert!(
                expected.contains(&(code, name.as_str())),
                "{code:#06x} {name}"
            );
            assert!(name.contains("_GCM_") || name.contains("_CHACHA20_POLY1305_"));
            // rustls names them the same way, except for the TLS 1.3 prefix.
            let rustls_name = suite.suite().as_str().expect("a known suite");
            assert_eq!(rustls_name.replacen("TLS13_", "TLS_", 1), name);
        }
        // Suites the node never offers are still named, never dropped.
        assert_eq!(
            cipher_name(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA),
            "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"
        );
        assert_eq!(
            cipher_name(CipherSuite::TLS13_AES_128_CCM_SHA256),
            "TLS_AES_128_CCM_SHA256"
        );
        assert_eq!(cipher_name(CipherSuite::from(0xFAFA)), "0xFAFA");
        assert_eq!(version_name(ProtocolVersion::TLSv1_1), "TLSv1.1");
    }

    #[test]
    fn a_key_that_does_not_belong_to_the_certificate_is_refused() {
        // Found by the TLS reload suite (issue 8): native-tls built an acceptor from B's
        // certificate and A's key, and OpenSSL silently served no key at all.
        let (cert_a, key_a) = self_signed("a.test");
        let (cert_b, _) = self_signed("b.test");
        assert!(config_from_pem(cert_a.as_bytes(), key_a.as_bytes()).is_ok());
        let Err(error) = config_from_pem(cert_b.as_bytes(), key_a.as_bytes()) else {
            panic!("B's certificate with A's key must be refused");
        };
        assert!(error.contains("does not belong"), "{error}");
    }

    #[test]
    fn sec1_keys_load_and_encrypted_keys_are_refused_by_name() {
        let (cert, key) = self_signed("a.test");
        let sec1 = test_keys::sec1_pem(&key);
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{sec1}");
        assert!(config_from_pem(cert.as_bytes(), sec1.as_bytes()).is_ok());

        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let error = config_from_pem(cert.as_bytes(), encrypted.as_bytes()).expect_err("refused");
        assert!(error.contains("passphrase"), "{error}");
        let traditional = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                           DEK-Info: AES-128-CBC,00\n\nMIIB\n-----END RSA PRIVATE KEY-----\n";
        let error = config_from_pem(cert.as_bytes(), traditional.as_bytes()).expect_err("refused");
        assert!(error.contains("passphrase"), "{error}");

        let error = config_from_pem(cert.as_bytes(), cert.as_bytes()).expect_err("no key");
        assert!(error.contains("no PEM private key"), "{error}");
        let damaged = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";
        assert!(config_from_pem(cert.as_bytes(), damaged.as_bytes()).is_err());
    }

    #[test]
    fn reload_takes_valid_files_and_keeps_the_acceptor_when_they_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        let write = |(cert, key): (String, String)| {
            std::fs::write(&files.cert, cert).expect("write cert");
            std::fs::write(&files.key, key).expect("write key");
        };
        let serving = |tls: &ReloadableAcceptor| {
            let config = tls.current.read().expect("lock").clone();
            Arc::as_ptr(&config)
        };
        write(self_signed("a.test"));
        let tls = ReloadableAcceptor::load(&files).expect("certificate A loads");
        let a = serving(&tls);

        write(self_signed("b.test"));
        assert_eq!(tls.reload(), Ok(()), "certificate B replaces A");
        let b = serving(&tls);
        assert_ne!(a, b);

        // A renewal copied halfway: the certificate of C with the key of B.
        let (cert_c, _) = self_signed("c.test");
        std::fs::write(&files.cert, cert_c).expect("write cert");
        let error = tls
            .reload()
            .expect_err("a key that does not match is refused");
        assert!(error.contains("not usable"), "{error}");

        std::fs::write(&files.cert, "not PEM").expect("write cert");
        assert!(tls.reload().is_err(), "garbage is refused");

        std::fs::remove_file(&files.key).expect("remove key");
        let error = tls.reload().expect_err("a missing key is refused");
        assert!(error.contains(&files.key.display().to_string()), "{error}");
        // The configuration in use is still there for new sessions.
        assert_eq!(serving(&tls), b);
        let _still_serving = tls.current();
    }
}
