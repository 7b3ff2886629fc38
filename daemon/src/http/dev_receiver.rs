//! The development node's built-in webhook receiver: verifies each delivery's Standard Webhooks
//! signature and prints the payload to stdout, so `./build.sh run` shows mail arriving with
//! nothing else installed. Development only: printing content is what it is for.
//!
//! It answers `POST /webhook` (204, or 401 for a bad signature), 405 for another method there
//! and 404 elsewhere, on the same connection layer as the API (`server.rs`, plain HTTP).

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use ring::hmac;

use super::Response;
use super::router::{BodyError, read_body};

/// Largest payload read: far above what the development node sends (its 25 MiB message size
/// limit, base64-encoded, in JSON).
const MAX_PAYLOAD_BYTES: usize = 256 * 1024 * 1024;

struct Receiver {
    /// The route's webhook secret, which signs every delivery.
    key: hmac::Key,
}

/// Serves on `listener` until the process ends.
pub async fn serve(listener: TcpListener, key: Vec<u8>) -> std::io::Result<()> {
    let listener = smol::Async::new(listener)?;
    let receiver = Arc::new(Receiver {
        key: hmac::Key::new(hmac::HMAC_SHA256, &key),
    });
    // Never closed: the receiver serves until the process ends.
    let (_serving, shutdown) = smol::channel::bounded::<()>(1);
    super::server::run(listener, receiver, None, shutdown).await;
    Ok(())
}

impl super::server::App for Receiver {
    async fn respond(&self, request: hyper::Request<Incoming>, _: SocketAddr) -> Response {
        let status = match (request.method(), request.uri().path()) {
            (&Method::POST, "/webhook") => self.receive(request).await,
            (_, "/webhook") => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::NOT_FOUND,
        };
        let mut response = Response::new(Full::default());
        *response.status_mut() = status;
        response
    }
}

impl Receiver {
    async fn receive(&self, request: hyper::Request<Incoming>) -> StatusCode {
        let (head, body) = request.into_parts();
        let body = match read_body(body, MAX_PAYLOAD_BYTES).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => return StatusCode::PAYLOAD_TOO_LARGE,
            Err(BodyError::Unreadable) => return StatusCode::BAD_REQUEST,
        };
        let header = |name: &str| {
            head.headers
                .get_all(name)
                .iter()
                .next_back()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default()
        };
        let (id, timestamp, signatures) = (
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        );
        let signed = [id.as_bytes(), b".", timestamp.as_bytes(), b".", &body].concat();
        let valid = signatures.split(' ').any(|sig| {
            sig.strip_prefix("v1,")
                .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
                .is_some_and(|tag| hmac::verify(&self.key, &signed, &tag).is_ok())
        });
        if !valid {
            println!("dev receiver: refused a delivery with a bad signature (id {id})");
            return StatusCode::UNAUTHORIZED;
        }
        let pretty = serde_json::from_slice::<serde_json::Value>(&body)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "dev receiver: delivery {id} (signature valid)\n{pretty}"
        );
        let _ = out.flush();
        StatusCode::NO_CONTENT
    }
}
