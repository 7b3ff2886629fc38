//! STARTTLS for the SMTP server: the acceptor (never below TLS 1.2), and what was negotiated.
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
    let identity = native_tls::Identity::from_pkcs8(cert, key)
        .map_err(|e| format!("certificate or key is not usable: {e}"))?;
    let acceptor = native_tls::TlsAcceptor::builder(identity)
        .min_protocol_version(Some(native_tls::Protocol::Tlsv12))
        .build()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    Ok(acceptor.into())
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
