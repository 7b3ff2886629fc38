//! The node's TLS certificate as the console replaces it (DESIGN §7): validating an uploaded PEM
//! chain and private key (each problem named by its field), the public facts the console shows
//! about a certificate, storing an upload under `data_dir/tls/uploaded/`, and switching the
//! running listeners (STARTTLS and HTTPS) to it without a restart.
//!
//! X.509 is read by OpenSSL, the library the TLS layer itself uses; nothing here parses DER.
//! It must never log, return or echo a private key: the key is written once, 0600, and only the
//! certificate's public facts leave this module.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::pkey::{PKey, Private};
use openssl::x509::{X509, X509NameRef, X509VerifyResult};
use ring::digest::{SHA256, digest};
use serde::Serialize;

use crate::config::{ConfigError, TlsFiles};
use crate::smtp::tls::ReloadableAcceptor;

/// Where an uploaded certificate and key live, under `node.data_dir` (the encrypted data volume
/// on the appliance; the configured `tls_cert`/`tls_key` may sit on a read-only partition).
pub const UPLOADED_DIR: &str = "tls/uploaded";
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
/// Most certificates accepted in one uploaded chain (the server certificate, intermediates and
/// optionally the root).
pub const MAX_CHAIN_CERTIFICATES: usize = 8;
const SECONDS_PER_DAY: i64 = 86_400;

/// What the console shows about a certificate chain (its first certificate, the server's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateFacts {
    /// e.g. `CN=mx1.example.test, O=Example`.
    pub subject: String,
    pub issuer: String,
    /// Subject alternative names: DNS names, IP addresses, e-mail addresses, URIs.
    pub sans: Vec<String>,
    /// OpenSSL's rendering, e.g. `Nov 22 12:00:00 2026 GMT`.
    pub not_before: String,
    pub not_after: String,
    /// Whole days until `not_after` (negative once expired).
    pub days_left: i64,
    /// SHA-256 of the certificate's DER, `AB:CD:…` (what browsers show).
    pub sha256_fingerprint: String,
    /// Certificates in the chain, the server's included.
    pub chain_length: usize,
}

fn name(n: &X509NameRef) -> String {
    n.entries()
        .map(|e| {
            let value = String::from_utf8_lossy(e.data().as_slice()).into_owned();
            match e.object().nid().short_name() {
                Ok(key) => format!("{key}={value}"),
                Err(_) => value,
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn sans(cert: &X509) -> Vec<String> {
    let Some(names) = cert.subject_alt_names() else {
        return Vec::new();
    };
    names
        .iter()
        .filter_map(|n| {
            if let Some(dns) = n.dnsname() {
                return Some(dns.to_string());
            }
            if let Some(ip) = n.ipaddress() {
                let ip = match ip.len() {
                    4 => <[u8; 4]>::try_from(ip).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(ip).ok().map(IpAddr::from),
                    _ => None,
                };
                return ip.map(|ip| ip.to_string());
            }
            n.email()
                .map(|e| format!("email:{e}"))
                .or_else(|| n.uri().map(|u| format!("uri:{u}")))
        })
        .collect()
}

/// The SHA-256 fingerprint of a certificate, `AB:CD:…`.
fn fingerprint(cert: &X509) -> Option<String> {
    let der = cert.to_der().ok()?;
    Some(
        digest(&SHA256, &der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// Whole days from `now` to `then` (negative when `then` is past).
fn days_between(now: &Asn1TimeRef, then: &Asn1TimeRef) -> i64 {
    now.diff(then).map_or(0, |d| {
        i64::from(d.days) + i64::from(d.secs).div_euclid(SECONDS_PER_DAY)
    })
}

fn facts_of(chain: &[X509], now: &Asn1TimeRef) -> Option<CertificateFacts> {
    let leaf = chain.first()?;
    Some(CertificateFacts {
        subject: name(leaf.subject_name()),
        issuer: name(leaf.issuer_name()),
        sans: sans(leaf),
        not_before: leaf.not_before().to_string(),
        not_after: leaf.not_after().to_string(),
        days_left: days_between(now, leaf.not_after()),
        sha256_fingerprint: fingerprint(leaf)?,
        chain_length: chain.len(),
    })
}

/// The facts of the PEM chain `chain_pem` now, `None` when it holds no certificate.
pub fn facts(chain_pem: &[u8]) -> Option<CertificateFacts> {
    let chain = X509::stack_from_pem(chain_pem).ok()?;
    let now = Asn1Time::days_from_now(0).ok()?;
    facts_of(&chain, &now)
}

/// `der` as PEM with `label` (`CERTIFICATE`, `PRIVATE KEY`), in 64-column lines as OpenSSL
/// writes it.
#[cfg(test)]
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let base64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in base64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A validated upload: the chain as PEM (normalised) and the key as PKCS#8 PEM, which is what
/// the TLS layer loads.
pub struct Upload {
    pub chain_pem: String,
    key_pem: String,
    pub facts: CertificateFacts,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("facts", &self.facts)
            .finish_non_exhaustive()
    }
}

fn problem(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

fn read_chain(pem: &str) -> Result<Vec<X509>, String> {
    if pem.trim().is_empty() {
        return Err("paste the certificate chain in PEM (-----BEGIN CERTIFICATE-----)".into());
    }
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        if pem.contains("PRIVATE KEY-----") {
            return Err("this is a private key: it belongs in the key field".into());
        }
        return Err("no PEM certificate found (-----BEGIN CERTIFICATE-----)".into());
    }
    let chain = X509::stack_from_pem(pem.as_bytes()).map_err(|_| {
        "a PEM certificate could not be read (truncated, or not an X.509 certificate)".to_string()
    })?;
    if chain.is_empty() {
        return Err("no PEM certificate found (-----BEGIN CERTIFICATE-----)".into());
    }
    if chain.len() > MAX_CHAIN_CERTIFICATES {
        return Err(format!(
            "{} certificates: at most {MAX_CHAIN_CERTIFICATES} in one chain",
            chain.len()
        ));
    }
    Ok(chain)
}

fn read_key(pem: &str) -> Result<PKey<Private>, String> {
    if pem.trim().is_empty() {
        return Err("paste the private key in PEM (-----BEGIN PRIVATE KEY-----)".into());
    }
    if pem.contains("ENCRYPTED") {
        return Err(
            "the key is protected by a passphrase: upload it unencrypted (the node \
                    stores it readable by itself only)"
                .into(),
        );
    }
    if !pem.contains("PRIVATE KEY-----") {
        if pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err("this is a certificate: the key field needs the private key".into());
        }
        return Err("no PEM private key found (-----BEGIN PRIVATE KEY-----)".into());
    }
    // A callback that supplies no passphrase: OpenSSL's default would prompt on a terminal.
    PKey::private_key_from_pem_callback(pem.as_bytes(), |_| Ok(0))
        .map_err(|_| "the PEM private key could not be read (truncated or damaged)".to_string())
}

/// `n. (subject)` for messages about certificate number `index` (from 0) of a chain.
fn which(chain: &[X509], index: usize) -> String {
    let subject = chain.get(index).map(|c| name(c.subject_name()));
    format!(
        "certificate {} ({})",
        index + 1,
        subject.unwrap_or_default()
    )
}

/// Checks an uploaded chain and key at unix time `now`: both PEM, the key belongs to the first
/// certificate, each certificate is issued (and signed) by the next, none is expired or not yet
/// valid, and OpenSSL can serve them. Every problem is named by its field (`certificate` or
/// `key`).
pub fn validate(chain_pem: &str, key_pem: &str, now: i64) -> Result<Upload, Vec<ConfigError>> {
    let chain = read_chain(chain_pem).map_err(|m| problem("certificate", m));
    let key = read_key(key_pem).map_err(|m| problem("key", m));
    let (chain, key) = match (chain, key) {
        (Ok(chain), Ok(key)) => (chain, key),
        (chain, key) => {
            return Err([chain.err(), key.err()].into_iter().flatten().collect());
        }
    };
    let now = Asn1Time::from_unix(now)
        .map_err(|_| vec![problem("", "the node's clock cannot be read")])?;
    let mut problems = Vec::new();

    let owner = chain
        .iter()
        .position(|c| c.public_key().is_ok_and(|p| p.public_eq(&key)));
    match owner {
        Some(0) => {}
        Some(index) => problems.push(problem(
            "certificate",
            format!(
                "the chain is in the wrong order: the key belongs to {}; put the server \
                 certificate first, then each certificate's issuer",
                which(&chain, index)
            ),
        )),
        None => problems.push(problem(
            "key",
            format!(
                "the private key does not belong to the certificate ({})",
                name(chain[0].subject_name())
            ),
        )),
    }
    if !matches!(owner, Some(index) if index > 0) {
        for i in 0..chain.len().saturating_sub(1) {
            let (child, parent) = (&chain[i], &chain[i + 1]);
            let signed = parent
                .public_key()
                .is_ok_and(|p| child.verify(&p).unwrap_or(false));
            if parent.issued(child) != X509VerifyResult::OK || !signed {
                problems.push(problem(
                    "certificate",
                    format!(
                        "the chain is in the wrong order: {} did not issue {}; put the server \
                         certificate first, then each certificate's issuer",
                        which(&chain, i + 1),
                        which(&chain, i)
                    ),
                ));
                break;
            }
        }
    }
    for (i, cert) in chain.iter().enumerate() {
        let subject = if i == 0 {
            "the certificate".to_string()
        } else {
            which(&chain, i)
        };
        if cert.not_after() < now {
            problems.push(problem(
                "certificate",
                format!("{subject} expired on {}", cert.not_after()),
            ));
        } else if cert.not_before() > now {
            problems.push(problem(
                "certificate",
                format!("{subject} is not valid before {}", cert.not_before()),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    let mut normalised = String::new();
    for cert in &chain {
        let pem = cert
            .to_pem()
            .map_err(|_| vec![problem("certificate", "the certificate cannot be encoded")])?;
        normalised.push_str(&String::from_utf8_lossy(&pem));
    }
    let key_pem = key
        .private_key_to_pem_pkcs8()
        .map_err(|_| vec![problem("key", "the key cannot be encoded as PKCS#8")])?;
    let key_pem = String::from_utf8_lossy(&key_pem).into_owned();
    crate::smtp::tls::config_from_pem(normalised.as_bytes(), key_pem.as_bytes())
        .map_err(|e| vec![problem("certificate", e)])?;
    let facts = facts_of(&chain, &now)
        .ok_or_else(|| vec![problem("certificate", "the certificate cannot be read")])?;
    Ok(Upload {
        chain_pem: normalised,
        key_pem,
        facts,
    })
}

/// The uploaded certificate and key files under `data_dir`, when both exist.
pub fn uploaded(data_dir: &Path) -> Option<TlsFiles> {
    let dir = data_dir.join(UPLOADED_DIR);
    let files = TlsFiles {
        cert: dir.join(CERT_FILE),
        key: dir.join(KEY_FILE),
    };
    (files.cert.is_file() && files.key.is_file()).then_some(files)
}

/// Writes `bytes` to `path` through a new file beside it (mode `mode`, synced) and a rename, so
/// a reader sees the old file or the whole new one.
fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let staged = path.with_extension("pem.new");
    let _ = std::fs::remove_file(&staged);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&staged)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&staged, path)
}

/// Stores `upload` under `data_dir/tls/uploaded/` (directory 0700, key 0600, certificate 0644)
/// and returns the files.
pub fn store(data_dir: &Path, upload: &Upload) -> std::io::Result<TlsFiles> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let dir = data_dir.join(UPLOADED_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let files = TlsFiles {
        cert: dir.join(CERT_FILE),
        key: dir.join(KEY_FILE),
    };
    replace_file(&files.key, upload.key_pem.as_bytes(), 0o600)?;
    replace_file(&files.cert, upload.chain_pem.as_bytes(), 0o644)?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(files)
}

/// Which certificate a listener starts with: an uploaded one when it loads, else the configured
/// files (`None` when the listener has no TLS).
pub fn starting_acceptor(
    data_dir: &Path,
    configured: Option<&TlsFiles>,
    what: &str,
) -> Result<Option<Arc<ReloadableAcceptor>>, String> {
    let Some(configured) = configured else {
        return Ok(None);
    };
    if let Some(files) = uploaded(data_dir) {
        match ReloadableAcceptor::load(&files) {
            Ok(acceptor) => {
                log::info!(
                    "{what}: using the certificate uploaded through the console ({})",
                    files.cert.display()
                );
                return Ok(Some(Arc::new(acceptor)));
            }
            Err(e) => log::error!(
                "{what}: the uploaded certificate in {} is not usable, using the configured one: {e}",
                files.cert.display()
            ),
        }
    }
    ReloadableAcceptor::load(configured).map(|a| Some(Arc::new(a)))
}

/// The certificate state the console shows (`GET /api/v1/tls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsState {
    /// The certificate new connections get, when any listener has TLS.
    pub certificate: Option<CertificateFacts>,
    /// `uploaded` (through the console), `config` (the `tls_cert` files) or `none`.
    pub source: &'static str,
    /// Listeners serving it: `smtp` (STARTTLS), `https`.
    pub used_by: Vec<&'static str>,
}

/// The running node's TLS listeners, for the console's certificate page.
#[derive(Debug)]
pub struct NodeCertificates {
    data_dir: PathBuf,
    smtp: Option<Arc<ReloadableAcceptor>>,
    https: Option<Arc<ReloadableAcceptor>>,
}

impl NodeCertificates {
    pub fn new(
        data_dir: PathBuf,
        smtp: Option<Arc<ReloadableAcceptor>>,
        https: Option<Arc<ReloadableAcceptor>>,
    ) -> NodeCertificates {
        NodeCertificates {
            data_dir,
            smtp,
            https,
        }
    }

    fn listeners(&self) -> impl Iterator<Item = (&'static str, &Arc<ReloadableAcceptor>)> {
        [("smtp", &self.smtp), ("https", &self.https)]
            .into_iter()
            .filter_map(|(name, acceptor)| acceptor.as_ref().map(|a| (name, a)))
    }

    /// What the listeners serve now (HTTPS's certificate when both have TLS).
    pub fn state(&self) -> TlsState {
        let used_by: Vec<&'static str> = self.listeners().map(|(name, _)| name).collect();
        let files = self
            .https
            .as_ref()
            .or(self.smtp.as_ref())
            .map(|a| a.files());
        let uploaded_dir = self.data_dir.join(UPLOADED_DIR);
        TlsState {
            certificate: files
                .as_ref()
                .and_then(|f| std::fs::read(&f.cert).ok())
                .and_then(|pem| facts(&pem)),
            source: match &files {
                None => "none",
                Some(f) if f.cert.starts_with(&uploaded_dir) => "uploaded",
                Some(_) => "config",
            },
            used_by,
        }
    }

    /// Stores `upload` and switches every TLS listener to it; connections already in TLS keep
    /// the certificate they began with.
    pub fn install(&self, upload: &Upload) -> Result<TlsState, String> {
        let files = store(&self.data_dir, upload)
            .map_err(|e| format!("cannot store the certificate under {UPLOADED_DIR}: {e}"))?;
        for (name, acceptor) in self.listeners() {
            acceptor
                .switch_to(&files)
                .map_err(|e| format!("{name}: {e}"))?;
        }
        log::info!(
            "TLS certificate replaced through the console (SHA-256 {}); new {} connections use it",
            upload.facts.sha256_fingerprint,
            self.listeners()
                .map(|(name, _)| name)
                .collect::<Vec<_>>()
                .join(" and ")
        );
        Ok(self.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    /// 2026-11-22T00:00:00Z.
    const NOW: i64 = 1_795_305_600;

    struct Pki {
        ca_pem: String,
        intermediate_pem: String,
        leaf_pem: String,
        leaf_key: String,
        other_key: String,
    }

    fn ca_params(cn: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
    }

    /// A root, an intermediate it signs and a leaf for `mx.test` the intermediate signs, valid
    /// from `from` to `until` (unix seconds).
    fn pki(from: i64, until: i64) -> Pki {
        let validity = |p: &mut CertificateParams| {
            p.not_before = time::OffsetDateTime::from_unix_timestamp(from).expect("time");
            p.not_after = time::OffsetDateTime::from_unix_timestamp(until).expect("time");
        };
        let root_key = KeyPair::generate().expect("key");
        let mut root_params = ca_params("Test Root");
        validity(&mut root_params);
        let root = root_params.self_signed(&root_key).expect("root");
        let root_issuer = Issuer::new(root_params, root_key);
        let mid_key = KeyPair::generate().expect("key");
        let mut mid_params = ca_params("Test Intermediate");
        validity(&mut mid_params);
        let mid = mid_params.signed_by(&mid_key, &root_issuer).expect("mid");
        let mid_issuer = Issuer::new(mid_params, mid_key);
        let leaf_key = KeyPair::generate().expect("key");
        let mut leaf_params =
            CertificateParams::new(vec!["mx.test".to_string(), "127.0.0.1".to_string()])
                .expect("params");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "mx.test");
        validity(&mut leaf_params);
        let leaf = leaf_params.signed_by(&leaf_key, &mid_issuer).expect("leaf");
        Pki {
            ca_pem: root.pem(),
            intermediate_pem: mid.pem(),
            leaf_pem: leaf.pem(),
            leaf_key: leaf_key.serialize_pem(),
            other_key: KeyPair::generate().expect("key").serialize_pem(),
        }
    }

    fn valid() -> Pki {
        pki(NOW - SECONDS_PER_DAY, NOW + 90 * SECONDS_PER_DAY)
    }

    /// The field-level problems of an upload, as `field: message` lines.
    fn problems(chain: &str, key: &str) -> Vec<String> {
        match validate(chain, key, NOW) {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .into_iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect(),
        }
    }

    /// `check(chain, key, expected)`: every expected fragment appears in one problem, and there
    /// are as many problems as fragments.
    fn check(chain: &str, key: &str, expected: &[&str]) {
        let found = problems(chain, key);
        assert_eq!(found.len(), expected.len(), "{found:?}");
        for fragment in expected {
            assert!(
                found.iter().any(|p| p.contains(fragment)),
                "{fragment:?} not in {found:?}"
            );
        }
    }

    #[test]
    fn a_full_chain_in_order_with_its_key_is_accepted_and_described() {
        let p = valid();
        let chain = format!("{}{}{}", p.leaf_pem, p.intermediate_pem, p.ca_pem);
        let upload = validate(&chain, &p.leaf_key, NOW).expect("valid");
        let facts = upload.facts.clone();
        assert_eq!(facts.subject, "CN=mx.test");
        assert_eq!(facts.issuer, "CN=Test Intermediate");
        assert_eq!(facts.sans, vec!["mx.test", "127.0.0.1"]);
        assert_eq!(facts.chain_length, 3);
        assert_eq!(facts.days_left, 90);
        assert_eq!(facts.sha256_fingerprint.len(), 32 * 3 - 1);
        assert!(upload.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(
            !format!("{upload:?}").contains("PRIVATE"),
            "Debug hides the key"
        );

        // A traditional (SEC1) key is accepted and stored as PKCS#8, which the TLS layer loads.
        let sec1 = PKey::private_key_from_pem(p.leaf_key.as_bytes())
            .and_then(|k| k.ec_key())
            .and_then(|k| k.private_key_to_pem())
            .expect("SEC1 PEM");
        let sec1 = String::from_utf8(sec1).expect("PEM is text");
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let upload = validate(&chain, &sec1, NOW).expect("a SEC1 key is accepted");
        assert!(upload.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn each_bad_upload_is_refused_with_a_field_level_reason() {
        let p = valid();
        let expired = pki(NOW - 100 * SECONDS_PER_DAY, NOW - SECONDS_PER_DAY);
        let future = pki(NOW + SECONDS_PER_DAY, NOW + 100 * SECONDS_PER_DAY);
        let ok_chain = format!("{}{}", p.leaf_pem, p.intermediate_pem);
        check(&ok_chain, &p.leaf_key, &[]);
        check(&p.leaf_pem, &p.leaf_key, &[]);
        check(
            &ok_chain,
            &p.other_key,
            &["key: the private key does not belong to the certificate (CN=mx.test)"],
        );
        check(
            &format!("{}{}", p.intermediate_pem, p.leaf_pem),
            &p.leaf_key,
            &[
                "certificate: the chain is in the wrong order: the key belongs to certificate 2 (CN=mx.test)",
            ],
        );
        check(
            &format!("{}{}", p.leaf_pem, p.ca_pem),
            &p.leaf_key,
            &[
                "certificate: the chain is in the wrong order: certificate 2 (CN=Test Root) did not issue certificate 1",
            ],
        );
        check(
            &expired.leaf_pem,
            &expired.leaf_key,
            &["certificate: the certificate expired on"],
        );
        check(
            &future.leaf_pem,
            &future.leaf_key,
            &["certificate: the certificate is not valid before"],
        );
        check("", "", &["certificate: paste", "key: paste"]);
        check(
            &p.leaf_key,
            &p.leaf_pem,
            &[
                "certificate: this is a private key",
                "key: this is a certificate",
            ],
        );
        check(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            &p.leaf_key,
            &["certificate: a PEM certificate could not be read"],
        );
        check(
            &p.leaf_pem,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
            &["key: the key is protected by a passphrase"],
        );
        check(
            &p.leaf_pem,
            "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
            &["key: the PEM private key could not be read"],
        );
        let long: String =
            std::iter::repeat_n(p.leaf_pem.as_str(), MAX_CHAIN_CERTIFICATES + 1).collect();
        check(&long, &p.leaf_key, &["certificate: 9 certificates"]);
    }

    #[test]
    fn garbage_never_panics() {
        let p = valid();
        for cut in (0..p.leaf_pem.len()).step_by(7) {
            let _ = validate(&p.leaf_pem[..cut], &p.leaf_key, NOW);
        }
        for cut in (0..p.leaf_key.len()).step_by(7) {
            let _ = validate(&p.leaf_pem, &p.leaf_key[..cut], NOW);
        }
    }

    #[test]
    fn an_upload_is_stored_privately_and_switches_the_listeners() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let first = rcgen::generate_simple_self_signed(vec!["a.test".into()]).expect("cert");
        let configured = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        std::fs::write(&configured.cert, first.cert.pem()).expect("write");
        std::fs::write(&configured.key, first.signing_key.serialize_pem()).expect("write");
        let smtp = starting_acceptor(dir.path(), Some(&configured), "smtp").expect("loads");
        let node = NodeCertificates::new(dir.path().to_path_buf(), smtp, None);
        assert_eq!(node.state().source, "config");
        assert_eq!(node.state().used_by, vec!["smtp"]);

        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let fresh = pki(now - SECONDS_PER_DAY, now + 30 * SECONDS_PER_DAY);
        let upload = validate(&fresh.leaf_pem, &fresh.leaf_key, now).expect("valid");
        let state = node.install(&upload).expect("installed");
        assert_eq!(state.source, "uploaded");
        assert_eq!(
            state.certificate.map(|c| c.sha256_fingerprint),
            Some(upload.facts.sha256_fingerprint.clone())
        );
        let files = uploaded(dir.path()).expect("stored");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(mode(files.key.parent().expect("dir")), 0o700);
        // At the next start the upload wins over the configured files.
        let again = starting_acceptor(dir.path(), Some(&configured), "smtp")
            .expect("loads")
            .expect("tls");
        assert_eq!(again.files().cert, files.cert);
    }
}
