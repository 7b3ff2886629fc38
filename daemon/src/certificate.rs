//! The node's TLS certificate as the console replaces it (DESIGN §7): validating an uploaded PEM
//! chain and private key (each problem named by its field), the public facts the console shows
//! about a certificate, storing an upload under `data_dir/tls/uploaded/`, and switching the
//! running listeners (STARTTLS and HTTPS) to it without a restart.
//!
//! Certificates are read by `x509-parser` (signatures checked with ring, the crypto of the TLS
//! layer); keys are read and matched by the TLS layer itself (`smtp::tls`, rustls), so what
//! passes here is what the listeners will load. The only DER written here is the PKCS#8
//! envelope around a SEC1 or PKCS#1 key (RFC 5208), the one form every release of the node
//! loads. Dates keep OpenSSL's rendering (`Nov 22 12:00:00 2026 GMT`), which the API returns.
//! It must never log, return or echo a private key: the key is written once, 0600, and only the
//! certificate's public facts leave this module.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use ring::digest::{SHA256, digest};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;
use x509_parser::time::ASN1Time;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

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

/// OpenSSL's short name of a name attribute (`CN`, `O`, …), so subjects read as they always
/// did; an attribute without one is shown by its OID.
fn attribute_key(attribute: &AttributeTypeAndValue<'_>) -> String {
    let oid = attribute.attr_type().to_id_string();
    let short = match oid.as_str() {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.15" => "businessCategory",
        "2.5.4.17" => "postalCode",
        "2.5.4.41" => "name",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.44" => "generationQualifier",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.65" => "pseudonym",
        "2.5.4.97" => "organizationIdentifier",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.3.6.1.4.1.311.60.2.1.1" => "jurisdictionL",
        "1.3.6.1.4.1.311.60.2.1.2" => "jurisdictionST",
        "1.3.6.1.4.1.311.60.2.1.3" => "jurisdictionC",
        _ => return oid,
    };
    short.to_string()
}

/// The text of a name attribute: the string types as they are, a BMPString decoded from
/// UTF-16, anything else byte by byte (lossy).
fn attribute_value(attribute: &AttributeTypeAndValue<'_>) -> String {
    if let Ok(text) = attribute.as_str() {
        return text.to_string();
    }
    let bytes = attribute.as_slice();
    if attribute.attr_value().tag() == x509_parser::der_parser::asn1_rs::Tag::BmpString {
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
            .collect();
        return String::from_utf16_lossy(&units);
    }
    String::from_utf8_lossy(bytes).into_owned()
}

/// `CN=mx.test, O=Example`: every attribute in certificate order.
fn name(n: &X509Name<'_>) -> String {
    n.iter_attributes()
        .map(|a| format!("{}={}", attribute_key(a), attribute_value(a)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(names)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            GeneralName::IPAddress(ip) => {
                let ip = match ip.len() {
                    4 => <[u8; 4]>::try_from(*ip).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(*ip).ok().map(IpAddr::from),
                    _ => None,
                };
                ip.map(|ip| ip.to_string())
            }
            GeneralName::RFC822Name(email) => Some(format!("email:{email}")),
            GeneralName::URI(uri) => Some(format!("uri:{uri}")),
            _ => None,
        })
        .collect()
}

/// The SHA-256 fingerprint of a certificate's DER, `AB:CD:…`.
fn fingerprint(der: &[u8]) -> String {
    digest(&SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A certificate time as OpenSSL prints it (`ASN1_TIME_print`): `Nov  2 12:00:00 2026 GMT`, the
/// day padded with a space.
fn openssl_time(time: &ASN1Time) -> String {
    let t = time.to_datetime();
    let month: String = t.month().to_string().chars().take(3).collect();
    format!(
        "{month} {:2} {:02}:{:02}:{:02} {} GMT",
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.year()
    )
}

/// Whole days from `now` to `then` (unix seconds; negative, rounded down, when `then` is past),
/// as OpenSSL's `ASN1_TIME_diff` counted them.
fn days_between(now: i64, then: i64) -> i64 {
    then.saturating_sub(now).div_euclid(SECONDS_PER_DAY)
}

/// A certificate with its DER (the fingerprint is over the bytes as uploaded).
struct Parsed<'a> {
    der: &'a [u8],
    cert: X509Certificate<'a>,
}

fn facts_of(chain: &[Parsed<'_>], now: i64) -> Option<CertificateFacts> {
    let leaf = chain.first()?;
    let validity = leaf.cert.validity();
    Some(CertificateFacts {
        subject: name(leaf.cert.subject()),
        issuer: name(leaf.cert.issuer()),
        sans: sans(&leaf.cert),
        not_before: openssl_time(&validity.not_before),
        not_after: openssl_time(&validity.not_after),
        days_left: days_between(now, validity.not_after.timestamp()),
        sha256_fingerprint: fingerprint(leaf.der),
        chain_length: chain.len(),
    })
}

/// Parses each certificate; `None` when one is not an X.509 certificate.
fn parse<'a>(ders: &'a [CertificateDer<'static>]) -> Option<Vec<Parsed<'a>>> {
    ders.iter()
        .map(|der| {
            X509Certificate::from_der(der)
                .ok()
                .map(|(_, cert)| Parsed { der, cert })
        })
        .collect()
}

/// The unix time now.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The facts of the PEM chain `chain_pem` now, `None` when it holds no certificate.
pub fn facts(chain_pem: &[u8]) -> Option<CertificateFacts> {
    let ders = crate::smtp::tls::certificate_chain(chain_pem).ok()?;
    facts_of(&parse(&ders)?, unix_now())
}

/// `der` as PEM with `label` (`CERTIFICATE`, `PRIVATE KEY`), in 64-column lines as OpenSSL
/// writes it.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let base64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in base64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A validated upload: the chain as PEM (normalised) and the key as PKCS#8 PEM, the form every
/// release of the node loads (a rollback included).
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

fn read_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    if pem.trim().is_empty() {
        return Err("paste the certificate chain in PEM (-----BEGIN CERTIFICATE-----)".into());
    }
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        if pem.contains("PRIVATE KEY-----") {
            return Err("this is a private key: it belongs in the key field".into());
        }
        return Err("no PEM certificate found (-----BEGIN CERTIFICATE-----)".into());
    }
    let unreadable =
        || "a PEM certificate could not be read (truncated, or not an X.509 certificate)";
    let chain = crate::smtp::tls::certificate_chain(pem.as_bytes()).map_err(|_| unreadable())?;
    if chain.len() > MAX_CHAIN_CERTIFICATES {
        return Err(format!(
            "{} certificates: at most {MAX_CHAIN_CERTIFICATES} in one chain",
            chain.len()
        ));
    }
    if parse(&chain).is_none() {
        return Err(unreadable().into());
    }
    Ok(chain)
}

/// A private key as the TLS layer loads it: its PKCS#8 DER and its public key (the DER of a
/// SubjectPublicKeyInfo, as certificates carry it).
struct Key {
    pkcs8: PrivatePkcs8KeyDer<'static>,
    public: Vec<u8>,
}

fn read_key(pem: &str) -> Result<Key, String> {
    if pem.trim().is_empty() {
        return Err("paste the private key in PEM (-----BEGIN PRIVATE KEY-----)".into());
    }
    if pem.contains("ENCRYPTED") {
        return Err(format!(
            "{}: upload it unencrypted (the node stores it readable by itself only)",
            crate::smtp::tls::ENCRYPTED_KEY
        ));
    }
    if !pem.contains("PRIVATE KEY-----") {
        if pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err("this is a certificate: the key field needs the private key".into());
        }
        return Err("no PEM private key found (-----BEGIN PRIVATE KEY-----)".into());
    }
    let damaged = || {
        "the PEM private key could not be read (truncated or damaged, or not an RSA, ECDSA \
         P-256/P-384 or Ed25519 key)"
            .to_string()
    };
    let key = crate::smtp::tls::private_key(pem.as_bytes()).map_err(|_| damaged())?;
    let pkcs8 = to_pkcs8(&key).ok_or_else(damaged)?;
    let public =
        rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(pkcs8.clone_key()))
            .ok()
            .and_then(|signing| signing.public_key().map(|spki| spki.to_vec()))
            .ok_or_else(damaged)?;
    Ok(Key { pkcs8, public })
}

/// The key as PKCS#8 (RFC 5208): as it is, or a SEC1 (RFC 5915) or PKCS#1 (RFC 8017) key put
/// into the PKCS#8 envelope with its algorithm; `None` when ring cannot load the result.
fn to_pkcs8(key: &PrivateKeyDer<'_>) -> Option<PrivatePkcs8KeyDer<'static>> {
    /// AlgorithmIdentifier rsaEncryption, NULL parameters.
    const RSA: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    /// AlgorithmIdentifier id-ecPublicKey with the named curve P-256 (prime256v1).
    const EC_P256: &[u8] = &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    /// AlgorithmIdentifier id-ecPublicKey with the named curve P-384 (secp384r1).
    const EC_P384: &[u8] = &[
        0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81,
        0x04, 0x00, 0x22,
    ];
    let loads = |der: &Vec<u8>| {
        let candidate = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.as_slice()));
        rustls::crypto::ring::sign::any_supported_type(&candidate).is_ok()
    };
    let der = match key {
        PrivateKeyDer::Pkcs8(pkcs8) => Some(pkcs8.secret_pkcs8_der().to_vec()).filter(loads),
        PrivateKeyDer::Pkcs1(pkcs1) => {
            Some(pkcs8_envelope(RSA, pkcs1.secret_pkcs1_der())).filter(loads)
        }
        // SEC1 may leave the curve out (its parameters are optional): the curve is the one
        // ring accepts the key for.
        PrivateKeyDer::Sec1(sec1) => [EC_P256, EC_P384]
            .into_iter()
            .map(|algorithm| pkcs8_envelope(algorithm, sec1.secret_sec1_der()))
            .find(loads),
        _ => None,
    }?;
    Some(PrivatePkcs8KeyDer::from(der))
}

/// PrivateKeyInfo ::= SEQUENCE { version INTEGER (0), algorithm, privateKey OCTET STRING }.
fn pkcs8_envelope(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let mut content = vec![0x02, 0x01, 0x00];
    content.extend_from_slice(algorithm);
    content.extend(der_element(0x04, key));
    der_element(0x30, &content)
}

/// One DER element: the tag, the definite length (short or long form), the content.
fn der_element(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let significant = &bytes[bytes.iter().take_while(|&&b| b == 0).count()..];
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

/// `n. (subject)` for messages about certificate number `index` (from 0) of a chain.
fn which(chain: &[Parsed<'_>], index: usize) -> String {
    let subject = chain.get(index).map(|c| name(c.cert.subject()));
    format!(
        "certificate {} ({})",
        index + 1,
        subject.unwrap_or_default()
    )
}

/// Whether two names are the same the way OpenSSL compares them: equal encodings, or equal
/// after folding case and runs of spaces (its canonical form, RFC 5280 §7.1).
fn same_name(a: &X509Name<'_>, b: &X509Name<'_>) -> bool {
    let canonical = |n: &X509Name<'_>| {
        name(n)
            .to_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    a.as_raw() == b.as_raw() || canonical(a) == canonical(b)
}

/// Whether `parent` issued `child`, as OpenSSL's `X509_check_issued` decides it: the child's
/// issuer is the parent's subject, the key identifiers agree when both are given, and the parent
/// may sign certificates (when it restricts its key usage at all); and then the child's
/// signature checks with the parent's key.
fn issued(parent: &X509Certificate<'_>, child: &X509Certificate<'_>) -> bool {
    if !same_name(parent.subject(), child.issuer()) {
        return false;
    }
    let authority_key = child
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
            _ => None,
        });
    let subject_key = parent
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski),
            _ => None,
        });
    if let (Some(authority), Some(subject)) = (authority_key, subject_key)
        && authority.0 != subject.0
    {
        return false;
    }
    if let Ok(Some(usage)) = parent.key_usage()
        && !usage.value.key_cert_sign()
    {
        return false;
    }
    match child.verify_signature(Some(parent.public_key())) {
        Ok(()) => true,
        // An algorithm ring does not verify (e.g. ECDSA with SHA-512, P-521) is not a wrong
        // order: the names and key identifiers above already tie the two together, and the
        // TLS client checks the signature anyway.
        Err(X509Error::SignatureUnsupportedAlgorithm) => true,
        Err(_) => false,
    }
}

/// Checks an uploaded chain and key at unix time `now`: both PEM, the key belongs to the first
/// certificate, each certificate is issued (and signed) by the next, none is expired or not yet
/// valid, and the TLS layer can serve them. Every problem is named by its field (`certificate`
/// or `key`).
pub fn validate(chain_pem: &str, key_pem: &str, now: i64) -> Result<Upload, Vec<ConfigError>> {
    let chain = read_chain(chain_pem).map_err(|m| problem("certificate", m));
    let key = read_key(key_pem).map_err(|m| problem("key", m));
    let (ders, key) = match (chain, key) {
        (Ok(chain), Ok(key)) => (chain, key),
        (chain, key) => {
            return Err([chain.err(), key.err()].into_iter().flatten().collect());
        }
    };
    let chain = parse(&ders)
        .ok_or_else(|| vec![problem("certificate", "the certificate cannot be read")])?;
    let mut problems = Vec::new();

    let owner = chain
        .iter()
        .position(|c| c.cert.public_key().raw == key.public.as_slice());
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
                name(chain[0].cert.subject())
            ),
        )),
    }
    if !matches!(owner, Some(index) if index > 0) {
        for (i, pair) in chain.windows(2).enumerate() {
            if !issued(&pair[1].cert, &pair[0].cert) {
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
    for (i, parsed) in chain.iter().enumerate() {
        let subject = if i == 0 {
            "the certificate".to_string()
        } else {
            which(&chain, i)
        };
        let validity = parsed.cert.validity();
        if validity.not_after.timestamp() < now {
            problems.push(problem(
                "certificate",
                format!("{subject} expired on {}", openssl_time(&validity.not_after)),
            ));
        } else if validity.not_before.timestamp() > now {
            problems.push(problem(
                "certificate",
                format!(
                    "{subject} is not valid before {}",
                    openssl_time(&validity.not_before)
                ),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    let normalised: String = ders.iter().map(|der| pem("CERTIFICATE", der)).collect();
    let key_pem = pem("PRIVATE KEY", key.pkcs8.secret_pkcs8_der());
    crate::smtp::tls::config_from_pem(normalised.as_bytes(), key_pem.as_bytes())
        .map_err(|e| vec![problem("certificate", e)])?;
    let facts = facts_of(&chain, now)
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

        // A traditional (SEC1) key is accepted and stored as PKCS#8, the form every release of
        // the node loads.
        let sec1 = crate::smtp::tls::test_keys::sec1_pem(&p.leaf_key);
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let from_sec1 = validate(&chain, &sec1, NOW).expect("a SEC1 key is accepted");
        assert_eq!(from_sec1.key_pem, upload.key_pem, "the same key, as PKCS#8");
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

    /// A self-signed certificate with a many-part subject, every kind of SAN the console shows
    /// and fixed validity (2026-11-02 09:05:07 to 2027-01-31 23:59:59 UTC), as PEM.
    fn described() -> String {
        use rcgen::SanType;
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        for (kind, value) in [
            (DnType::CountryName, "DE"),
            (DnType::OrganizationName, "Example"),
            (DnType::OrganizationalUnitName, "Mail"),
            (DnType::CommonName, "mx.test"),
            // emailAddress, which rcgen has no name for.
            (
                DnType::CustomDnType(vec![1, 2, 840, 113_549, 1, 9, 1]),
                "postmaster@mx.test",
            ),
        ] {
            params.distinguished_name.push(kind, value);
        }
        params.subject_alt_names = vec![
            SanType::DnsName("mx.test".try_into().expect("ia5")),
            SanType::IpAddress("192.0.2.1".parse().expect("ip")),
            SanType::IpAddress("2001:db8::1".parse().expect("ip")),
            SanType::Rfc822Name("postmaster@mx.test".try_into().expect("ia5")),
            SanType::URI("https://mx.test/".try_into().expect("ia5")),
        ];
        params.not_before = time::OffsetDateTime::from_unix_timestamp(1_793_610_307).expect("t");
        params.not_after = time::OffsetDateTime::from_unix_timestamp(1_801_439_999).expect("t");
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("self-signed").pem()
    }

    #[test]
    fn facts_read_as_openssl_prints_them() {
        // Checked against `openssl x509 -noout -subject -issuer -dates -ext subjectAltName` on
        // the same certificate (OpenSSL 3.0): the facts the console and API showed when OpenSSL
        // read them.
        let pem = described();
        let facts = facts(pem.as_bytes()).expect("facts");
        // rcgen writes the common name first.
        let subject = "CN=mx.test, C=DE, O=Example, OU=Mail, emailAddress=postmaster@mx.test";
        assert_eq!(facts.subject, subject);
        assert_eq!(facts.issuer, subject);
        assert_eq!(
            facts.sans,
            vec![
                "mx.test",
                "192.0.2.1",
                "2001:db8::1",
                "email:postmaster@mx.test",
                "uri:https://mx.test/"
            ]
        );
        assert_eq!(facts.not_before, "Nov  2 09:05:07 2026 GMT");
        assert_eq!(facts.not_after, "Jan 31 23:59:59 2027 GMT");
        assert_eq!(facts.chain_length, 1);
        let der = crate::smtp::tls::certificate_chain(pem.as_bytes()).expect("PEM");
        let sum = digest(&SHA256, &der[0]);
        assert_eq!(facts.sha256_fingerprint.replace(':', "").len(), 64);
        assert!(
            facts
                .sha256_fingerprint
                .starts_with(&format!("{:02X}:", sum.as_ref()[0]))
        );

        // Days left count whole days, rounded down, as `ASN1_TIME_diff` did.
        let not_after = 1_801_439_999;
        assert_eq!(days_between(NOW, not_after), 70);
        assert_eq!(days_between(not_after, not_after), 0);
        assert_eq!(days_between(not_after + 1, not_after), -1);
        assert_eq!(days_between(not_after + SECONDS_PER_DAY, not_after), -1);
        assert_eq!(days_between(not_after + SECONDS_PER_DAY + 1, not_after), -2);
    }

    /// Prints [`described`]'s PEM, for comparing with `openssl x509` by hand.
    #[test]
    #[ignore = "prints a certificate for a manual comparison with openssl"]
    fn print_described_certificate() {
        println!("{}", described());
    }

    #[test]
    fn der_lengths_take_the_short_and_the_long_form() {
        // X.690 §8.1.3: up to 127 in one byte, beyond that 0x80 | the count of length bytes.
        for (len, head) in [
            (0usize, vec![0x04, 0x00]),
            (0x7f, vec![0x04, 0x7f]),
            (0x80, vec![0x04, 0x81, 0x80]),
            (0xff, vec![0x04, 0x81, 0xff]),
            (0x100, vec![0x04, 0x82, 0x01, 0x00]),
            (0x1_0000, vec![0x04, 0x83, 0x01, 0x00, 0x00]),
        ] {
            let element = der_element(0x04, &vec![0; len]);
            assert_eq!(element[..head.len()], head[..], "{len}");
            assert_eq!(element.len(), head.len() + len);
        }
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
