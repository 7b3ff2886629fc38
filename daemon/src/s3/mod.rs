//! S3 storage (issue 3): a route's attachments, and optionally its raw message, are PUT to the
//! customer's S3-compatible store before the webhook is called, so the payload can point at
//! them instead of carrying them.
//!
//! One [`S3Client`] per `[s3.NAME]` connection: its own [`net::Client`] (rustls on ring, TLS
//! 1.3/1.2, system roots plus the connection's `ca`, HTTP/1.1 keep-alive), requests as futures
//! on the caller's executor like the webhook's, SigV4 signing ([`sigv4`]), path-style or
//! virtual-hosted addressing, bounded retries of transient failures inside a deadline the
//! caller sets. Object keys and file-name sanitising live in [`keys`]; the endpoint, bucket
//! and prefix rules a configuration must follow are checked by [`crate::config`].
//! [`S3Client::probe`] proves a connection works (PUT, GET, compare, DELETE).
//!
//! Bodies are sent from borrowed slices of what the caller already holds in memory (the parsed
//! attachment, the received message): nothing is copied per upload, nothing is written to disk.
//! Log lines name the connection, bucket, key and S3 error code; never content, never an
//! address, never the secret. Never opens a connection itself (that is [`crate::net`]'s job).

pub mod keys;
pub mod sigv4;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::{S3Config, Secret};
use crate::net;

/// First pause between attempts of one upload; doubled after each transient failure.
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
/// Longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// One upload attempt never takes longer than this (a 25 MiB body over a slow link included),
/// so a hanging store still leaves budget to retry.
const MAX_ATTEMPT_TIME: Duration = Duration::from_secs(120);
/// An attempt shorter than this is not worth starting.
const MIN_ATTEMPT_TIME: Duration = Duration::from_millis(200);
/// The bucket check before a connection's first upload waits at most this long.
const BUCKET_CHECK_TIME: Duration = Duration::from_secs(10);
/// Each step of [`S3Client::probe`] waits at most this long.
const PROBE_STEP_TIME: Duration = Duration::from_secs(30);
/// How much of an error answer is read to find its `<Code>`.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// How much of the probe object is read back (it is a few dozen bytes).
const MAX_PROBE_BODY_BYTES: usize = 4096;
/// Longest S3 error code kept (the longest AWS code is about 40 characters).
const MAX_ERROR_CODE_CHARS: usize = 64;
/// Idle keep-alive connections kept per host.
const MAX_IDLE_CONNECTIONS: usize = 16;
/// A body without a known hash is hashed on the caller's task up to this size (microseconds),
/// on the blocking pool above it.
const INLINE_HASH_MAX_BYTES: usize = 64 * 1024;
/// Random bytes in a probe object's name and content.
const PROBE_NONCE_BYTES: usize = 16;

/// Why a client could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("endpoint: {0}")]
    Endpoint(String),
    #[error("cannot read CA bundle {path}: {source}")]
    ReadCa {
        path: String,
        source: std::io::Error,
    },
    #[error("CA bundle {path} holds no PEM certificate")]
    EmptyCa { path: String },
}

/// A failed S3 request, classified for retries. Never holds content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3Error {
    /// The store answered with a status other than 2xx; `code` is the `<Code>` of its XML
    /// error body (e.g. `SignatureDoesNotMatch`, `NoSuchBucket`), `""` when it sent none.
    #[error("HTTP {status} {}", if code.is_empty() { "(no error code)" } else { code })]
    Status { status: u16, code: String },
    /// No answer: connection refused, TLS failure, timeout.
    #[error("{0}")]
    Transport(String),
}

impl S3Error {
    /// Whether another attempt may succeed: no answer, 5xx, 408, 429, or a throttling code.
    pub fn is_transient(&self) -> bool {
        match self {
            S3Error::Transport(_) => true,
            S3Error::Status { status, code } => {
                *status >= 500
                    || *status == 408
                    || *status == 429
                    || matches!(
                        code.as_str(),
                        "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable"
                    )
            }
        }
    }

    /// The S3 error code for logs: the XML `<Code>`, or `-` when there is none.
    pub fn code(&self) -> &str {
        match self {
            S3Error::Status { code, .. } if !code.is_empty() => code,
            _ => "-",
        }
    }
}

/// Why [`S3Client::probe`] failed: the step, the probe object, and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{step} failed (bucket {bucket}, key {key}): {detail}")]
pub struct ProbeError {
    /// `HEAD bucket`, `PUT`, `GET`, `compare` or `DELETE`.
    pub step: &'static str,
    pub bucket: String,
    pub key: String,
    /// The S3 error, or what differed.
    pub detail: String,
    /// The S3 error code when the store sent one, else `-`.
    pub code: String,
}

/// One `[s3.NAME]` connection, ready to use. Cheap to share behind an `Arc`.
pub struct S3Client {
    /// The connection's name in the config (`[s3.NAME]`), for logs.
    name: String,
    /// Its trust store, and connections kept alive between uploads and messages.
    client: net::Client,
    /// `https` (or `http` to loopback, for development and tests).
    scheme: String,
    /// `host[:port]` of the endpoint as configured.
    authority: String,
    bucket: String,
    region: String,
    access_key_id: String,
    secret_access_key: Secret,
    /// Bucket in the path (`host/bucket/key`) rather than in the host name (`bucket.host/key`).
    path_style: bool,
    /// Normalised key prefix without surrounding `/`, `""` for none.
    prefix: String,
    /// Set once the bucket is known to exist, so it is checked only before the first upload.
    bucket_seen: AtomicBool,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Client")
            .field("name", &self.name)
            .field("endpoint", &format!("{}://{}", self.scheme, self.authority))
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .finish_non_exhaustive()
    }
}

/// Probes connection `name` (see [`S3Client::probe`]) and says how it went in one line for the
/// command line: `Ok` names the probe object, `Err` the connection, the step that failed and
/// the S3 error code.
pub async fn probe_connection(name: &str, config: &S3Config) -> Result<String, String> {
    let client = Arc::new(S3Client::new(name, config).map_err(|e| format!("s3.{name}: {e}"))?);
    match client.probe().await {
        Ok(key) => Ok(format!(
            "s3.{name}: ok (wrote, read back and deleted {key} in bucket {})",
            config.bucket
        )),
        Err(e) => Err(format!("s3.{name}: {e}")),
    }
}

/// The `Content-Type` an object is stored with: the attachment's type when it is a plain
/// `type/subtype` of token characters, else `application/octet-stream` (a header value must
/// never fail the upload, which would fail the message for good).
pub fn object_content_type(content_type: &str) -> &str {
    const MAX_CONTENT_TYPE_BYTES: usize = 127;
    let token = |part: &str| {
        !part.is_empty()
            && part.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'!' | b'#' | b'$' | b'&' | b'^' | b'_' | b'.' | b'+' | b'-'
                    )
            })
    };
    match content_type.split_once('/') {
        Some((kind, subtype))
            if content_type.len() <= MAX_CONTENT_TYPE_BYTES && token(kind) && token(subtype) =>
        {
            content_type
        }
        _ => "application/octet-stream",
    }
}

impl S3Client {
    /// Builds the client of connection `name`: system roots plus the connection's `ca`.
    pub fn new(name: &str, config: &S3Config) -> Result<S3Client, SetupError> {
        let (scheme, authority) =
            net::parse_endpoint(&config.endpoint).map_err(SetupError::Endpoint)?;
        let ca = config.ca.as_deref();
        let tls = net::client_config(ca, net::Protocols::Http1).map_err(|e| {
            let path = ca.map(|p| p.display().to_string()).unwrap_or_default();
            match e {
                net::CaError::Read(source) => SetupError::ReadCa { path, source },
                net::CaError::Empty => SetupError::EmptyCa { path },
            }
        })?;
        let client = net::Client::new(tls, MAX_IDLE_CONNECTIONS);
        Ok(S3Client {
            name: name.to_string(),
            client,
            scheme,
            authority,
            bucket: config.bucket.clone(),
            region: config.region.clone(),
            access_key_id: config.access_key_id.clone(),
            secret_access_key: config.secret_access_key.clone(),
            path_style: config.path_style,
            prefix: config.prefix.clone(),
            bucket_seen: AtomicBool::new(false),
        })
    }

    /// The connection's name (`[s3.NAME]`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The normalised key prefix, `""` for none.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The object's URL (not presigned): what the payload's `s3.url` carries.
    pub fn object_url(&self, key: &str) -> String {
        format!("{}://{}{}", self.scheme, self.host(), self.path(Some(key)))
    }

    /// Stores `body` under `key`, retrying transient failures until `deadline`.
    ///
    /// `payload_sha256` is the body's lowercase hex SHA-256 when the caller already has it
    /// (attachments carry theirs); otherwise it is computed once here. Before the connection's
    /// first upload the bucket is checked (see [`S3Client::check_bucket`]). The final failure is
    /// logged with bucket, key and S3 error code.
    pub async fn put_object<B>(
        self: &Arc<Self>,
        key: &str,
        content_type: &str,
        body: Arc<B>,
        payload_sha256: Option<String>,
        deadline: Instant,
    ) -> Result<(), S3Error>
    where
        B: AsRef<[u8]> + Send + Sync + 'static,
    {
        if let Err(e) = self.check_bucket(deadline).await {
            log::warn!(
                "s3 {}: not uploading: bucket={} key={} status={} code={}",
                self.name,
                self.bucket,
                keys::loggable_key(key),
                status_of(&e),
                e.code()
            );
            return Err(e);
        }
        let payload_sha256 = match payload_sha256 {
            Some(hash) => hash,
            // A large body (the raw message) is hashed on the blocking pool, where it cannot
            // hold up the sessions sharing the executor.
            None if (*body).as_ref().len() <= INLINE_HASH_MAX_BYTES => {
                sigv4::sha256_hex((*body).as_ref())
            }
            None => {
                let body = body.clone();
                smol::unblock(move || sigv4::sha256_hex((*body).as_ref())).await
            }
        };
        let started = Instant::now();
        let mut backoff = INITIAL_BACKOFF;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let timeout = deadline
                .saturating_duration_since(Instant::now())
                .clamp(MIN_ATTEMPT_TIME, MAX_ATTEMPT_TIME);
            let result = self
                .put(
                    key,
                    content_type,
                    net::shared_body(body.clone()),
                    &payload_sha256,
                    timeout,
                )
                .await;
            let error = match result {
                Ok(()) => {
                    log::debug!(
                        "s3 {}: stored {} bytes after {attempts} attempt(s) in {} ms",
                        self.name,
                        (*body).as_ref().len(),
                        started.elapsed().as_millis()
                    );
                    return Ok(());
                }
                Err(e) => e,
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !error.is_transient() || remaining < backoff + MIN_ATTEMPT_TIME {
                log::warn!(
                    "s3 {}: PUT failed after {attempts} attempt(s) in {} ms: bucket={} key={} \
                     status={} code={} ({error})",
                    self.name,
                    started.elapsed().as_millis(),
                    self.bucket,
                    keys::loggable_key(key),
                    status_of(&error),
                    error.code()
                );
                return Err(error);
            }
            log::info!(
                "s3 {}: PUT attempt {attempts} failed ({error}); retrying",
                self.name
            );
            smol::Timer::after(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Checks once per connection, before its first upload, that the bucket exists: a `HEAD`
    /// answered 404 fails the upload with `NoSuchBucket`.
    ///
    /// S3 itself refuses a PUT into a missing bucket, but some S3-compatible stores (s3s-fs,
    /// some gateways) silently create the path, so a mistyped bucket name would scatter mail
    /// where nobody looks. Only a definite 404 stops delivery: a 403 (credentials that may PUT
    /// but not list, as least-privilege policies grant) or a failed check lets the PUT decide.
    pub async fn check_bucket(self: &Arc<Self>, deadline: Instant) -> Result<(), S3Error> {
        if self.bucket_seen.load(Ordering::Relaxed) {
            return Ok(());
        }
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .clamp(MIN_ATTEMPT_TIME, BUCKET_CHECK_TIME);
        match self.head_bucket(timeout).await {
            Ok(()) | Err(S3Error::Status { status: 403, .. }) => {
                self.bucket_seen.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e @ S3Error::Status { status: 404, .. }) => Err(e),
            Err(e) => {
                log::info!(
                    "s3 {}: bucket check inconclusive ({e}); the upload decides",
                    self.name
                );
                Ok(())
            }
        }
    }

    /// Proves the connection works: the bucket exists, and a probe object can be written,
    /// read back identically and deleted. Returns the probe object's key.
    pub async fn probe(self: &Arc<Self>) -> Result<String, ProbeError> {
        let mut nonce = [0u8; PROBE_NONCE_BYTES];
        // Without randomness the probe still works; a fixed name is merely less unique.
        let _ = SystemRandom::new().fill(&mut nonce);
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let key = if self.prefix.is_empty() {
            format!("mxnode-probe/{nonce}")
        } else {
            format!("{}/mxnode-probe/{nonce}", self.prefix)
        };
        let content = format!("mxnode connection probe {nonce}\n").into_bytes();
        let fail = |step: &'static str, detail: String, code: &str| ProbeError {
            step,
            bucket: self.bucket.clone(),
            key: key.clone(),
            detail,
            code: code.to_string(),
        };
        let from = |step: &'static str| move |e: S3Error| fail(step, e.to_string(), e.code());

        // Only a missing bucket fails here: a 403 may be a policy that allows objects but not
        // listing, and the PUT decides.
        if let Err(e @ S3Error::Status { status: 404, .. }) =
            self.head_bucket(PROBE_STEP_TIME).await
        {
            return Err(from("HEAD bucket")(e));
        }
        let content = Bytes::from(content);
        self.put(
            &key,
            "text/plain",
            content.clone(),
            &sigv4::sha256_hex(&content),
            PROBE_STEP_TIME,
        )
        .await
        .map_err(from("PUT"))?;
        let read = self.get(&key, PROBE_STEP_TIME).await;
        // Delete even when reading failed, so a half-working store keeps no probe litter.
        let deleted = self.delete(&key, PROBE_STEP_TIME).await;
        let read = read.map_err(from("GET"))?;
        if read != content {
            return Err(fail(
                "compare",
                format!(
                    "read back {} bytes that differ from the {} written",
                    read.len(),
                    content.len()
                ),
                "-",
            ));
        }
        deleted.map_err(from("DELETE"))?;
        Ok(key)
    }

    async fn put(
        &self,
        key: &str,
        content_type: &str,
        body: Bytes,
        payload_sha256: &str,
        timeout: Duration,
    ) -> Result<(), S3Error> {
        let request = self.signed("PUT", Some(key), Some(content_type), payload_sha256, body)?;
        self.execute(request, timeout, 0).await.map(|_| ())
    }

    async fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>, S3Error> {
        let request = self.signed(
            "GET",
            Some(key),
            None,
            sigv4::EMPTY_PAYLOAD_SHA256,
            Bytes::new(),
        )?;
        self.execute(request, timeout, MAX_PROBE_BODY_BYTES).await
    }

    async fn delete(&self, key: &str, timeout: Duration) -> Result<(), S3Error> {
        let request = self.signed(
            "DELETE",
            Some(key),
            None,
            sigv4::EMPTY_PAYLOAD_SHA256,
            Bytes::new(),
        )?;
        self.execute(request, timeout, 0).await.map(|_| ())
    }

    async fn head_bucket(&self, timeout: Duration) -> Result<(), S3Error> {
        let request = self.signed(
            "HEAD",
            None,
            None,
            sigv4::EMPTY_PAYLOAD_SHA256,
            Bytes::new(),
        )?;
        match self.execute(request, timeout, 0).await {
            // A HEAD answer has no body to carry a code; 404 on a bucket means this one.
            Err(S3Error::Status { status: 404, .. }) => Err(S3Error::Status {
                status: 404,
                code: "NoSuchBucket".into(),
            }),
            other => other.map(|_| ()),
        }
    }

    /// A signed request for the bucket (`key` `None`) or one of its objects.
    fn signed<B>(
        &self,
        method: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        payload_sha256: &str,
        body: B,
    ) -> Result<http::Request<B>, S3Error> {
        let host = self.host();
        let path = self.path(key);
        let amz_date = sigv4::amz_date(SystemTime::now());
        let mut headers: Vec<(&str, &str)> = vec![
            ("host", &host),
            ("x-amz-content-sha256", payload_sha256),
            ("x-amz-date", &amz_date),
        ];
        if let Some(content_type) = content_type {
            headers.push(("content-type", content_type));
        }
        let authorization = sigv4::authorization(
            &sigv4::Request {
                method,
                canonical_uri: &path,
                canonical_query: "",
                headers: &headers,
                payload_sha256,
                amz_date: &amz_date,
                region: &self.region,
            },
            &sigv4::Credentials {
                access_key_id: &self.access_key_id,
                secret_access_key: self.secret_access_key.expose(),
            },
        );
        let mut builder = http::Request::builder()
            .method(method)
            .uri(format!("{}://{host}{path}", self.scheme));
        for (name, value) in &headers {
            builder = builder.header(*name, *value);
        }
        builder
            .header("authorization", authorization)
            .body(body)
            .map_err(|e| S3Error::Transport(format!("cannot build the request: {e}")))
    }

    /// Sends a request; a 2xx answer yields up to `max_body` bytes of its body, anything else
    /// an [`S3Error`] with the error code from the body.
    async fn execute(
        &self,
        request: http::Request<Bytes>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Vec<u8>, S3Error> {
        let deadline = Instant::now() + timeout;
        let response = self
            .client
            .send(request, deadline)
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if (200..300).contains(&status) {
            return response
                .read_body(max_body.max(MAX_ERROR_BODY_BYTES))
                .await
                .map_err(transport_error);
        }
        let body = response
            .read_prefix(MAX_ERROR_BODY_BYTES)
            .await
            .unwrap_or_default();
        Err(S3Error::Status {
            status,
            code: error_code(&body),
        })
    }

    /// The host the request goes to: the endpoint, or `bucket.endpoint` (virtual-hosted).
    fn host(&self) -> String {
        if self.path_style {
            self.authority.clone()
        } else {
            format!("{}.{}", self.bucket, self.authority)
        }
    }

    /// The encoded request path of the bucket (`key` `None`) or an object.
    fn path(&self, key: Option<&str>) -> String {
        let key = key.map(|k| sigv4::uri_encode(k, true));
        match (self.path_style, key) {
            (true, Some(key)) => format!("/{}/{key}", sigv4::uri_encode(&self.bucket, false)),
            (true, None) => format!("/{}", sigv4::uri_encode(&self.bucket, false)),
            (false, Some(key)) => format!("/{key}"),
            (false, None) => "/".to_string(),
        }
    }
}

/// The HTTP status of an error for logs, `-` without an answer.
fn status_of(error: &S3Error) -> String {
    match error {
        S3Error::Status { status, .. } => status.to_string(),
        S3Error::Transport(_) => "-".into(),
    }
}

/// The `<Code>` of an S3 XML error body, restricted to the characters codes use; `""` when
/// there is none. Not an XML parser: S3 error documents put the code in one flat element.
pub fn error_code(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let Some(start) = text.find("<Code>").map(|at| at + "<Code>".len()) else {
        return String::new();
    };
    let Some(len) = text[start..].find("</Code>") else {
        return String::new();
    };
    text[start..start + len]
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(MAX_ERROR_CODE_CHARS)
        .collect()
}

/// A request that got no answer, in the words of [`net::NetError`] (timeout, connection failed,
/// TLS failure, reset).
fn transport_error(e: net::NetError) -> S3Error {
    S3Error::Transport(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(endpoint: &str, path_style: bool, prefix: &str) -> S3Client {
        S3Client::new(
            "primary",
            &S3Config {
                endpoint: endpoint.into(),
                bucket: "mail".into(),
                region: "us-east-1".into(),
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: Secret::new(b"secret".to_vec()),
                path_style,
                ca: None,
                prefix: prefix.into(),
            },
        )
        .expect("valid client")
    }

    #[test]
    fn path_style_puts_the_bucket_in_the_path() {
        let c = client("https://s3.example.test:9000/", true, "");
        assert_eq!(
            c.object_url("2026/01/02/msg_1/1-a b.pdf"),
            "https://s3.example.test:9000/mail/2026/01/02/msg_1/1-a%20b.pdf"
        );
        assert_eq!(c.path(None), "/mail");
    }

    #[test]
    fn virtual_hosted_style_puts_the_bucket_in_the_host() {
        let c = client("https://S3.Example.test", false, "");
        assert_eq!(
            c.object_url("k/ü.txt"),
            "https://mail.s3.example.test/k/%C3%BC.txt"
        );
        assert_eq!(c.path(None), "/");
    }

    #[test]
    fn requests_carry_the_signed_headers() {
        let c = client("http://127.0.0.1:9000", true, "");
        let request = c
            .signed("PUT", Some("a/b.txt"), Some("text/plain"), "abc", ())
            .expect("request");
        assert_eq!(
            request.uri().to_string(),
            "http://127.0.0.1:9000/mail/a/b.txt"
        );
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(header("host"), "127.0.0.1:9000");
        assert_eq!(header("x-amz-content-sha256"), "abc");
        assert_eq!(header("content-type"), "text/plain");
        let authorization = header("authorization");
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{authorization}"
        );
        assert!(
            authorization
                .contains("SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date,"),
            "{authorization}"
        );
        assert!(!authorization.contains("secret"));
    }

    #[test]
    fn odd_content_types_are_stored_as_octet_stream() {
        assert_eq!(object_content_type("application/pdf"), "application/pdf");
        assert_eq!(
            object_content_type("application/vnd.ms-excel.sheet.macroenabled.12"),
            "application/vnd.ms-excel.sheet.macroenabled.12"
        );
        for odd in [
            "",
            "text",
            "text/",
            "text/plain; charset=x",
            "a/b\r\nx: y",
            "ü/x",
        ] {
            assert_eq!(
                object_content_type(odd),
                "application/octet-stream",
                "{odd:?}"
            );
        }
    }

    fn check_code(body: &str, expect: &str) {
        assert_eq!(error_code(body.as_bytes()), expect, "{body}");
    }

    #[test]
    fn error_codes_come_from_the_xml_body() {
        check_code(
            "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>\
             <Message>The request signature we calculated does not match</Message></Error>",
            "SignatureDoesNotMatch",
        );
        check_code(
            "<Error><Code>No Such\r\nBucket<x></Code></Error>",
            "NoSuchBucketx",
        );
        check_code("", "");
        check_code("<Error><Code>unterminated", "");
        check_code(
            &format!("<Code>{}</Code>", "A".repeat(500)),
            &"A".repeat(64),
        );
    }

    #[test]
    fn transient_errors_are_retried_and_refusals_are_not() {
        let status = |status: u16, code: &str| S3Error::Status {
            status,
            code: code.into(),
        };
        assert!(S3Error::Transport("timeout".into()).is_transient());
        assert!(status(500, "InternalError").is_transient());
        assert!(status(503, "SlowDown").is_transient());
        assert!(status(429, "").is_transient());
        assert!(status(400, "RequestTimeout").is_transient());
        assert!(!status(403, "SignatureDoesNotMatch").is_transient());
        assert!(!status(403, "InvalidAccessKeyId").is_transient());
        assert!(!status(404, "NoSuchBucket").is_transient());
        assert_eq!(status(404, "").code(), "-");
        assert_eq!(
            status(403, "AccessDenied").to_string(),
            "HTTP 403 AccessDenied"
        );
    }
}
