//! STARTTLS for the SMTP server: the acceptor (never below TLS 1.2), its reload from the
//! certificate files while the node runs, and what was negotiated.
//!
//! native-tls builds its OpenSSL acceptor from Mozilla's "intermediate" v4 profile, which turns
//! TLS 1.3 off; leaving the maximum version open does not turn it back on. Sessions are
//! therefore TLS 1.2 with AEAD suites. Offering 1.3 needs another TLS layer (DESIGN §3).
//!
//! native-tls exposes neither the negotiated protocol version nor the cipher suite, yet the
//! payload reports both (DESIGN §4). [`HelloRecorder`] keeps a copy of the first bytes the TLS
//! library writes during the handshake; the ServerHello among them names both in plaintext
//! (RFC 8446 §4.1.3). This is passive observation of our own output, not a TLS implementation:
//! the handshake itself is entirely OpenSSL's.

use std::io;
use std::pin::Pin;
use std::sync::RwLock;
use std::task::{Context, Poll};

use smol::io::{AsyncRead, AsyncWrite};

use crate::config::TlsFiles;
use crate::payload::TlsInfo;

/// Enough for a ServerHello record (the certificate follows in later records).
const MAX_RECORDED_BYTES: usize = 4096;

/// Builds the STARTTLS acceptor from PEM files.
pub fn acceptor(files: &TlsFiles) -> Result<async_native_tls::TlsAcceptor, String> {
    let cert = std::fs::read(&files.cert)
        .map_err(|e| format!("cannot read {}: {e}", files.cert.display()))?;
    let key = std::fs::read(&files.key)
        .map_err(|e| format!("cannot read {}: {e}", files.key.display()))?;
    acceptor_from_pem(&cert, &key)
}

/// Builds the acceptor from a PEM certificate chain and a PKCS#8 PEM key.
pub fn acceptor_from_pem(cert: &[u8], key: &[u8]) -> Result<async_native_tls::TlsAcceptor, String> {
    check_key_belongs_to_certificate(cert, key)
        .map_err(|e| format!("certificate or key is not usable: {e}"))?;
    let identity = native_tls::Identity::from_pkcs8(cert, key)
        .map_err(|e| format!("certificate or key is not usable: {e}"))?;
    let acceptor = native_tls::TlsAcceptor::builder(identity)
        .min_protocol_version(Some(native_tls::Protocol::Tlsv12))
        .build()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    Ok(acceptor.into())
}

/// OpenSSL quietly drops a private key that does not belong to the certificate set after it,
/// and native-tls does not check: the acceptor would be built and every handshake would then
/// fail. A renewal copied halfway (the new certificate with the old key) must be refused
/// instead, at start and on reload.
fn check_key_belongs_to_certificate(cert: &[u8], key: &[u8]) -> Result<(), String> {
    let leaf = openssl::x509::X509::stack_from_pem(cert)
        .ok()
        .and_then(|chain| chain.into_iter().next())
        .ok_or("no PEM certificate")?;
    let private =
        openssl::pkey::PKey::private_key_from_pem(key).map_err(|_| "no PEM private key")?;
    let public = leaf
        .public_key()
        .map_err(|_| "the certificate's public key cannot be read")?;
    if public.public_eq(&private) {
        Ok(())
    } else {
        Err("the private key does not belong to the certificate".into())
    }
}

/// A TLS acceptor of a running node (STARTTLS, and the HTTPS listener), replaceable without a
/// restart: [`ReloadableAcceptor::reload`] (SIGHUP, see `node::run`) re-reads the certificate
/// and key files and, only if they make a working acceptor, swaps it in;
/// [`ReloadableAcceptor::switch_to`] does the same with other files (a certificate uploaded
/// through the console, `crate::certificate`). Connections take the acceptor current when they
/// start their handshake, so handshakes already under way and sessions already in TLS keep
/// the certificate they began with.
#[derive(Debug)]
pub struct ReloadableAcceptor {
    /// The files in use (`smtp.tls_cert` / `smtp.tls_key`, or the uploaded ones), re-read on
    /// every reload.
    files: RwLock<TlsFiles>,
    /// The acceptor new handshakes use. A clone is cheap (OpenSSL reference counts its context).
    current: RwLock<AcceptorHandle>,
}

/// `async_native_tls::TlsAcceptor` has no `Debug`; this says only that one is there.
#[derive(Clone)]
struct AcceptorHandle(async_native_tls::TlsAcceptor);

impl std::fmt::Debug for AcceptorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

impl ReloadableAcceptor {
    /// Loads the acceptor from `files` (at start: an error stops the node).
    pub fn load(files: &TlsFiles) -> Result<Self, String> {
        Ok(ReloadableAcceptor {
            files: RwLock::new(files.clone()),
            current: RwLock::new(AcceptorHandle(acceptor(files)?)),
        })
    }

    /// The acceptor for a handshake starting now.
    pub fn current(&self) -> async_native_tls::TlsAcceptor {
        let handle = self.current.read().unwrap_or_else(|p| p.into_inner());
        handle.0.clone()
    }

    /// Re-reads the certificate and key files. On success new handshakes use them; on any
    /// error (unreadable files, a key that does not match, not PEM) the acceptor in use stays,
    /// so a half-copied renewal can never take STARTTLS down.
    pub fn reload(&self) -> Result<(), String> {
        // Under the write lock, so a concurrent switch cannot be undone by a reload that read
        // the files before it.
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let fresh = acceptor(&self.files())?;
        *current = AcceptorHandle(fresh);
        Ok(())
    }

    /// Makes `files` the certificate and key in use (and the files later reloads re-read), if
    /// they make a working acceptor; otherwise nothing changes.
    pub fn switch_to(&self, files: &TlsFiles) -> Result<(), String> {
        let fresh = acceptor(files)?;
        // Files and acceptor change under one lock, so a concurrent reload cannot pair the
        // new acceptor with the old files.
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *self.files.write().unwrap_or_else(|p| p.into_inner()) = files.clone();
        *current = AcceptorHandle(fresh);
        Ok(())
    }

    /// The certificate and key files in use.
    pub fn files(&self) -> TlsFiles {
        self.files.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A stream wrapper that records the first bytes written through it.
#[derive(Debug)]
pub struct HelloRecorder<S> {
    inner: S,
    written: Vec<u8>,
}

impl<S> HelloRecorder<S> {
    pub fn new(inner: S) -> Self {
        HelloRecorder {
            inner,
            written: Vec::new(),
        }
    }

    /// What the handshake negotiated, if the ServerHello was seen.
    pub fn negotiated(&self) -> Option<TlsInfo> {
        parse_server_hello(&self.written)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HelloRecorder<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HelloRecorder<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            let room = MAX_RECORDED_BYTES.saturating_sub(this.written.len());
            this.written.extend_from_slice(&buf[..n.min(room)]);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Reads version and cipher suite from the first handshake record if it is a ServerHello.
fn parse_server_hello(bytes: &[u8]) -> Option<TlsInfo> {
    // Record: type(1)=22 handshake, legacy version(2), length(2).
    if bytes.len() < 5 || bytes[0] != 22 {
        return None;
    }
    let record_len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    let record = bytes.get(5..5 + record_len)?;
    // Handshake: type(1)=2 ServerHello, length(3), legacy_version(2), random(32).
    if record.first() != Some(&2) {
        return None;
    }
    let mut legacy_version = u16::from_be_bytes([*record.get(4)?, *record.get(5)?]);
    let mut at = 4 + 2 + 32;
    let session_id_len = usize::from(*record.get(at)?);
    at += 1 + session_id_len;
    let suite = u16::from_be_bytes([*record.get(at)?, *record.get(at + 1)?]);
    at += 2 + 1; // cipher suite, compression method
    // Extensions: the supported_versions extension (43) holds the real version for TLS 1.3.
    if let Some(len_bytes) = record.get(at..at + 2) {
        let end = (at + 2 + usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]])))
            .min(record.len());
        at += 2;
        while at + 4 <= end {
            let kind = u16::from_be_bytes([record[at], record[at + 1]]);
            let len = usize::from(u16::from_be_bytes([record[at + 2], record[at + 3]]));
            if kind == 43 && len == 2 {
                legacy_version = u16::from_be_bytes([*record.get(at + 4)?, *record.get(at + 5)?]);
            }
            at += 4 + len;
        }
    }
    let version = match legacy_version {
        0x0304 => "TLSv1.3",
        0x0303 => "TLSv1.2",
        0x0302 => "TLSv1.1",
        0x0301 => "TLSv1",
        _ => return None,
    };
    Some(TlsInfo {
        version: version.into(),
        cipher: cipher_name(suite),
    })
}

/// IANA names of the suites OpenSSL's intermediate profile offers; others by number.
fn cipher_name(suite: u16) -> String {
    let name = match suite {
        0x1301 => "TLS_AES_128_GCM_SHA256",
        0x1302 => "TLS_AES_256_GCM_SHA384",
        0x1303 => "TLS_CHACHA20_POLY1305_SHA256",
        0xC02B => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        0xC02C => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        0xC02F => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        0xC030 => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        0xCCA8 => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        0xCCA9 => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        0x009E => "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
        0x009F => "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
        0xCCAA => "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        other => return format!("0x{other:04X}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ServerHello record: version 1.2 in the legacy field, optional supported_versions.
    fn server_hello(suite: u16, supported_version: Option<u16>) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]); // random
        body.push(0); // empty session id
        body.extend(suite.to_be_bytes());
        body.push(0); // compression
        let mut ext = Vec::new();
        ext.extend([0xff, 0x01, 0x00, 0x01, 0x00]); // renegotiation_info
        if let Some(v) = supported_version {
            ext.extend([0x00, 43, 0x00, 0x02]);
            ext.extend(v.to_be_bytes());
        }
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut handshake = vec![2, 0, 0, body.len() as u8];
        handshake.extend(body);
        let mut record = vec![22, 0x03, 0x03];
        record.extend((handshake.len() as u16).to_be_bytes());
        record.extend(handshake);
        record
    }

    #[test]
    fn tls13_version_comes_from_supported_versions() {
        let info = parse_server_hello(&server_hello(0x1302, Some(0x0304))).expect("parsed");
        assert_eq!(info.version, "TLSv1.3");
        assert_eq!(info.cipher, "TLS_AES_256_GCM_SHA384");
    }

    #[test]
    fn tls12_hello_names_the_suite() {
        let info = parse_server_hello(&server_hello(0xC030, None)).expect("parsed");
        assert_eq!(info.version, "TLSv1.2");
        assert_eq!(info.cipher, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384");
    }

    /// A self-signed certificate and its key as PEM, for `name`.
    fn self_signed(name: &str) -> (String, String) {
        let certified =
            rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("generate");
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    #[test]
    fn a_key_that_does_not_belong_to_the_certificate_is_refused() {
        // Found by the TLS reload suite (issue 8): native-tls built an acceptor from B's
        // certificate and A's key, and OpenSSL silently served no key at all.
        let (cert_a, key_a) = self_signed("a.test");
        let (cert_b, _) = self_signed("b.test");
        assert!(acceptor_from_pem(cert_a.as_bytes(), key_a.as_bytes()).is_ok());
        let Err(error) = acceptor_from_pem(cert_b.as_bytes(), key_a.as_bytes()) else {
            panic!("B's certificate with A's key must be refused");
        };
        assert!(error.contains("does not belong"), "{error}");
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
        write(self_signed("a.test"));
        let tls = ReloadableAcceptor::load(&files).expect("certificate A loads");

        write(self_signed("b.test"));
        assert_eq!(tls.reload(), Ok(()), "certificate B replaces A");

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
        // The acceptor in use is still there for new sessions.
        let _still_serving = tls.current();
    }

    #[test]
    fn truncated_or_foreign_bytes_give_nothing_and_never_panic() {
        let full = server_hello(0x1301, Some(0x0304));
        for cut in 0..full.len() {
            let _ = parse_server_hello(&full[..cut]);
        }
        assert_eq!(parse_server_hello(b"220 hello"), None);
        assert_eq!(parse_server_hello(&[]), None);
    }
}
