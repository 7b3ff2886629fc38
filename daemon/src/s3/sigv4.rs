//! AWS Signature Version 4 for S3 requests with the signature in the `Authorization` header and
//! the payload hashed in one piece (`x-amz-content-sha256`), as the AWS S3 API reference
//! ("Signature Calculations for the Authorization Header: Transferring Payload in a Single
//! Chunk") describes it.
//!
//! This module owns only the composition of SigV4: the canonical request, the string to sign,
//! the signing-key derivation and the `Authorization` value. The primitives are ring's SHA-256
//! and HMAC-SHA256; nothing cryptographic is implemented here. It is pure: no I/O, no clock (the
//! caller passes the request time), and it never logs — its inputs include the secret key.

use std::fmt::Write as _;
use std::time::SystemTime;

use ring::{digest, hmac};

/// The algorithm name that starts the string to sign and the `Authorization` value.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The service name of S3 in the credential scope.
pub const SERVICE: &str = "s3";
/// SHA-256 of the empty string, the payload hash of a request without a body.
pub const EMPTY_PAYLOAD_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What is signed about one request. Header names must be lowercase and must include `host`,
/// `x-amz-date` and `x-amz-content-sha256`; every header listed is signed.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `PUT`, `HEAD`, `DELETE`.
    pub method: &'a str,
    /// The request path exactly as sent: already URI-encoded (see [`uri_encode`]).
    pub canonical_uri: &'a str,
    /// The canonical query string (names and values encoded, sorted, `&`-joined), or `""`.
    pub canonical_query: &'a str,
    /// The signed headers, lowercase names with their values.
    pub headers: &'a [(&'a str, &'a str)],
    /// Lowercase hex SHA-256 of the body, the same value as the `x-amz-content-sha256` header.
    pub payload_sha256: &'a str,
    /// The request time as `YYYYMMDDTHHMMSSZ`, the same value as the `x-amz-date` header.
    pub amz_date: &'a str,
    /// The bucket's region, e.g. `us-east-1`.
    pub region: &'a str,
}

/// The signer's identity: the access key id and its secret.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a [u8],
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// The canonical request: method, path, query, headers (sorted, values trimmed, inner runs of
/// spaces collapsed), the signed header list and the payload hash, one per line.
pub fn canonical_request(request: &Request<'_>) -> String {
    let headers = sorted_headers(request.headers);
    let mut out = String::new();
    out.push_str(request.method);
    out.push('\n');
    out.push_str(request.canonical_uri);
    out.push('\n');
    out.push_str(request.canonical_query);
    out.push('\n');
    for (name, value) in &headers {
        out.push_str(name);
        out.push(':');
        out.push_str(value);
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers(&headers));
    out.push('\n');
    out.push_str(request.payload_sha256);
    out
}

/// `<date>/<region>/s3/aws4_request`.
pub fn credential_scope(request: &Request<'_>) -> String {
    format!(
        "{}/{}/{SERVICE}/aws4_request",
        date_part(request.amz_date),
        request.region
    )
}

/// The string to sign: algorithm, request time, credential scope and the hex SHA-256 of the
/// canonical request.
pub fn string_to_sign(request: &Request<'_>, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{}\n{}\n{}",
        request.amz_date,
        credential_scope(request),
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The signing key: HMAC chain of `"AWS4" + secret` over date, region, service and
/// `aws4_request`.
pub fn signing_key(secret_access_key: &[u8], date: &str, region: &str, service: &str) -> [u8; 32] {
    let mut secret = Vec::with_capacity(4 + secret_access_key.len());
    secret.extend_from_slice(b"AWS4");
    secret.extend_from_slice(secret_access_key);
    let k_date = hmac_sha256(&secret, date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, b"aws4_request")
}

/// The hex signature of a request.
pub fn signature(request: &Request<'_>, credentials: &Credentials<'_>) -> String {
    let canonical = canonical_request(request);
    let to_sign = string_to_sign(request, &canonical);
    let key = signing_key(
        credentials.secret_access_key,
        date_part(request.amz_date),
        request.region,
        SERVICE,
    );
    hex(&hmac_sha256(&key, to_sign.as_bytes()))
}

/// The `Authorization` header value.
pub fn authorization(request: &Request<'_>, credentials: &Credentials<'_>) -> String {
    let headers = sorted_headers(request.headers);
    format!(
        "{ALGORITHM} Credential={}/{},SignedHeaders={},Signature={}",
        credentials.access_key_id,
        credential_scope(request),
        signed_headers(&headers),
        signature(request, credentials)
    )
}

/// `YYYYMMDDTHHMMSSZ` in UTC, the `x-amz-date` form of `time`.
pub fn amz_date(time: SystemTime) -> String {
    // "2013-05-24T00:00:00Z" → "20130524T000000Z".
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// SigV4's URI encoding: every byte except the unreserved `A-Z a-z 0-9 - . _ ~` becomes `%XX`
/// (uppercase hex); `/` stays as it is when `keep_slash` (object key paths).
pub fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && byte == b'/')
        {
            out.push(byte as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The `YYYYMMDD` part of an `x-amz-date` value.
fn date_part(amz_date: &str) -> &str {
    amz_date.get(..8).unwrap_or(amz_date)
}

/// Headers sorted by name, values trimmed with inner runs of spaces collapsed to one.
fn sorted_headers<'a>(headers: &[(&'a str, &'a str)]) -> Vec<(&'a str, String)> {
    let mut out: Vec<(&str, String)> = headers
        .iter()
        .map(|(name, value)| {
            (
                *name,
                value.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(b.0));
    out
}

fn signed_headers(sorted: &[(&str, String)]) -> String {
    sorted
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(";")
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // The AWS S3 API reference's SigV4 examples ("Examples: Signature Calculations",
    // sig-v4-header-based-auth) sign with these credentials at 2013-05-24T00:00:00Z.
    const EXAMPLE_ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
    const EXAMPLE_SECRET: &[u8] = b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const EXAMPLE_DATE: &str = "20130524T000000Z";
    const EXAMPLE_HOST: &str = "examplebucket.s3.amazonaws.com";

    fn example_credentials() -> Credentials<'static> {
        Credentials {
            access_key_id: EXAMPLE_ACCESS_KEY_ID,
            secret_access_key: EXAMPLE_SECRET,
        }
    }

    #[test]
    fn signing_key_matches_the_aws_derivation_example() {
        // AWS General Reference, "Examples of how to derive a signing key for Signature
        // Version 4": this secret, 20120215, us-east-1, iam.
        let key = signing_key(
            b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex(&key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn get_object_example_of_the_s3_reference_signs_identically() {
        // "Example: GET Object": the first 10 bytes of test.txt, empty payload.
        let headers = [
            ("host", EXAMPLE_HOST),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_PAYLOAD_SHA256),
            ("x-amz-date", EXAMPLE_DATE),
        ];
        let request = Request {
            method: "GET",
            canonical_uri: "/test.txt",
            canonical_query: "",
            headers: &headers,
            payload_sha256: EMPTY_PAYLOAD_SHA256,
            amz_date: EXAMPLE_DATE,
            region: "us-east-1",
        };
        let canonical = canonical_request(&request);
        assert_eq!(
            canonical,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            string_to_sign(&request, &canonical),
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        assert_eq!(
            authorization(&request, &example_credentials()),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn put_object_example_of_the_s3_reference_signs_identically() {
        // "Example: PUT Object": "Welcome to Amazon S3." to test$file.text, whose `$` the
        // canonical URI encodes.
        let body = b"Welcome to Amazon S3.";
        let payload = sha256_hex(body);
        assert_eq!(
            payload,
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        let uri = format!("/{}", uri_encode("test$file.text", true));
        assert_eq!(uri, "/test%24file.text");
        let headers = [
            ("date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("host", EXAMPLE_HOST),
            ("x-amz-content-sha256", payload.as_str()),
            ("x-amz-date", EXAMPLE_DATE),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ];
        let request = Request {
            method: "PUT",
            canonical_uri: &uri,
            canonical_query: "",
            headers: &headers,
            payload_sha256: &payload,
            amz_date: EXAMPLE_DATE,
            region: "us-east-1",
        };
        let canonical = canonical_request(&request);
        assert!(
            canonical.starts_with("PUT\n/test%24file.text\n\n"),
            "{canonical}"
        );
        assert_eq!(
            string_to_sign(&request, &canonical),
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d"
        );
        assert_eq!(
            signature(&request, &example_credentials()),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    #[test]
    fn header_order_and_spacing_do_not_change_the_signature() {
        let sorted = [
            ("host", "h.test"),
            ("x-amz-content-sha256", EMPTY_PAYLOAD_SHA256),
            ("x-amz-date", EXAMPLE_DATE),
        ];
        let shuffled = [
            ("x-amz-date", EXAMPLE_DATE),
            ("host", "  h.test "),
            ("x-amz-content-sha256", EMPTY_PAYLOAD_SHA256),
        ];
        let request = |headers| Request {
            method: "HEAD",
            canonical_uri: "/b",
            canonical_query: "",
            headers,
            payload_sha256: EMPTY_PAYLOAD_SHA256,
            amz_date: EXAMPLE_DATE,
            region: "us-east-1",
        };
        assert_eq!(
            signature(&request(&sorted), &example_credentials()),
            signature(&request(&shuffled), &example_credentials())
        );
    }

    fn check_encode(text: &str, keep_slash: bool, expect: &str) {
        assert_eq!(uri_encode(text, keep_slash), expect, "{text:?}");
    }

    #[test]
    fn uri_encoding_keeps_only_unreserved_bytes() {
        check_encode("a-z_0.9~", false, "a-z_0.9~");
        check_encode("a b+c", false, "a%20b%2Bc");
        check_encode("a/b", true, "a/b");
        check_encode("a/b", false, "a%2Fb");
        check_encode("100%", true, "100%25");
        check_encode("ключ", true, "%D0%BA%D0%BB%D1%8E%D1%87");
        check_encode("=&?#", true, "%3D%26%3F%23");
    }

    #[test]
    fn amz_date_is_the_compact_utc_form() {
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_369_353_600);
        assert_eq!(amz_date(time), EXAMPLE_DATE);
    }
}
