//! The network plumbing of every outbound connection: the webhook POSTs, the S3 requests and
//! the update channel (DESIGN §12).
//!
//! Owns the client TLS settings and trust stores ([`tls`]), the URL rules and pool keys
//! ([`target`]), connecting (name resolution, TCP, the rustls handshake, hyper's HTTP/1.1 or
//! HTTP/2 handshake as ALPN decided; `connect.rs`) and the HTTP [`Client`] with its keep-alive
//! pool and deadlines (`client.rs`). Everything runs as futures on the caller's smol executor:
//! a request in flight is a task's state, not a thread, and every wait (connect, TLS, answer,
//! body) ends at a deadline driven by a smol timer.
//!
//! Never knows what it carries: no signing, no retries, no classification of statuses (the
//! webhook, S3 and update modules own those), never logs a header value or a body, never
//! follows a redirect, never blocks a thread (the only hop to smol's blocking pool is the
//! system's name resolver, for host names that are not IP addresses, once per short cache
//! period), and never skips certificate verification.

mod client;
mod connect;
pub mod target;
pub mod tls;

use std::sync::Arc;

use bytes::Bytes;

pub use client::{Client, Response};
pub use target::{check_url, is_loopback_host, parse_endpoint};
pub use tls::{CaError, Protocols, SYSTEM_CA_BUNDLE, client_config};

/// Why a request got no (complete) answer. The messages name the problem class — timeout,
/// connection failed, TLS/certificate failure, reset — for logs and the delivery's last error;
/// they never carry a header value or a body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// A deadline passed; the label says in which step (connect, TLS handshake, waiting for the
    /// answer, reading the answer).
    #[error("timeout ({0})")]
    Timeout(&'static str),
    /// The name did not resolve.
    #[error("host not found")]
    HostNotFound,
    /// No TCP connection: refused, unreachable (the reason after the colon).
    #[error("connection failed: {0}")]
    Connect(String),
    /// The TLS handshake failed: an untrusted or invalid certificate, an alert from the peer.
    #[error("TLS failure: {0}")]
    Tls(String),
    /// The peer reset or aborted the connection.
    #[error("connection reset")]
    Reset,
    /// The peer closed the connection before the answer was complete.
    #[error("connection closed before the answer was complete")]
    Closed,
    /// The answer broke HTTP (malformed head, an HTTP/2 protocol error).
    #[error("HTTP error: {0}")]
    Protocol(String),
    /// The answer's body is longer than the caller reads.
    #[error("answer body over {0} bytes")]
    TooLarge(usize),
    /// Another I/O error, by kind.
    #[error("I/O error: {0}")]
    Io(std::io::ErrorKind),
    /// The request itself cannot be sent (a URL this client refuses).
    #[error("invalid request: {0}")]
    Request(String),
}

/// A request body that shares bytes the caller already holds (a payload, an attachment, the
/// received message) instead of copying them: the `Bytes` owns one more reference.
pub fn shared_body<B>(bytes: Arc<B>) -> Bytes
where
    B: AsRef<[u8]> + Send + Sync + 'static,
{
    Bytes::from_owner(Shared(bytes))
}

/// `Arc<B>` seen as its bytes, for [`Bytes::from_owner`].
struct Shared<B>(Arc<B>);

impl<B: AsRef<[u8]>> AsRef<[u8]> for Shared<B> {
    fn as_ref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("mxnode/", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_body_is_the_callers_bytes_without_a_copy() {
        let data = Arc::new(b"payload".to_vec());
        let body = shared_body(data.clone());
        assert_eq!(&body[..], b"payload");
        assert_eq!(body.as_ptr(), data.as_ptr(), "same memory");
        assert_eq!(Arc::strong_count(&data), 2);
        drop(body);
        assert_eq!(Arc::strong_count(&data), 1);
    }
}
