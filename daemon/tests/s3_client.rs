//! The S3 client (`mxnode::s3`) against a real S3 server that checks SigV4 (s3s-fs, started by
//! the harness): signatures it accepts and refuses, key encoding, the bucket check, the probe,
//! and HTTPS with a connection CA.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mxnode::config::{S3Config, Secret};
use mxnode::s3::{S3Client, S3Error};
use mxnode_tests::{S3Server, TestCa, TlsFront};

const BUCKET: &str = "mail";

fn config(server: &S3Server, secret: &str) -> S3Config {
    S3Config {
        endpoint: server.endpoint().to_string(),
        bucket: BUCKET.into(),
        region: "us-east-1".into(),
        access_key_id: server.access_key().to_string(),
        secret_access_key: Secret::new(secret.as_bytes().to_vec()),
        path_style: true,
        ca: None,
        prefix: String::new(),
    }
}

fn client(config: &S3Config) -> Arc<S3Client> {
    Arc::new(S3Client::new("primary", config).expect("client"))
}

fn put(client: &Arc<S3Client>, key: &str, body: &[u8]) -> Result<(), S3Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    smol::block_on(client.put_object(
        key,
        "application/pdf",
        Arc::new(body.to_vec()),
        None,
        deadline,
    ))
}

#[test]
fn signed_put_is_stored_with_its_bytes_and_content_type() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let client = client(&config(&server, server.secret_key()));
    let body = b"%PDF-1.7 not really".to_vec();
    put(&client, "2026/01/02/msg_1/1-report.pdf", &body).expect("stored");
    assert_eq!(
        server.object(BUCKET, "2026/01/02/msg_1/1-report.pdf"),
        Some(body)
    );
    assert_eq!(
        server
            .content_type(BUCKET, "2026/01/02/msg_1/1-report.pdf")
            .as_deref(),
        Some("application/pdf")
    );
}

#[test]
fn a_wrong_secret_is_refused_by_the_store_with_signature_does_not_match() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let client = client(&config(&server, "not-the-secret"));
    let error = put(&client, "k/1-a.pdf", b"x").expect_err("a wrong signature is refused");
    assert_eq!(
        error,
        S3Error::Status {
            status: 403,
            code: "SignatureDoesNotMatch".into()
        }
    );
    assert!(!error.is_transient(), "a refusal is not retried");
    assert!(server.keys(BUCKET).is_empty());
}

#[test]
fn an_unknown_access_key_is_refused_by_the_store() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let mut config = config(&server, server.secret_key());
    config.access_key_id = "AKNOBODY".into();
    let error = put(&client(&config), "k/1-a.pdf", b"x").expect_err("refused");
    assert!(
        matches!(&error, S3Error::Status { status: 403, .. }),
        "{error}"
    );
    assert!(server.keys(BUCKET).is_empty());
}

#[test]
fn keys_with_unicode_spaces_and_reserved_characters_are_signed_as_the_store_expects() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let client = client(&config(&server, server.secret_key()));
    for key in [
        "p/2026/01/02/msg_1/1-報告書_2026.pdf",
        "p/a b/c+d=e&f;g,h(i)j!k'l*m~n$o@p.bin",
        "p/ü/é.txt",
    ] {
        put(&client, key, key.as_bytes()).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(
            server.object(BUCKET, key).as_deref(),
            Some(key.as_bytes()),
            "{key}"
        );
    }
}

#[test]
fn a_missing_bucket_stops_the_upload_before_anything_is_written() {
    let server = S3Server::start();
    let client = client(&config(&server, server.secret_key()));
    let error = put(&client, "k/1-a.pdf", b"x").expect_err("no bucket");
    assert_eq!(
        error,
        S3Error::Status {
            status: 404,
            code: "NoSuchBucket".into()
        }
    );
    // s3s-fs would have created the bucket's directory on a PUT: the check prevented it.
    assert!(!server.root().join(BUCKET).exists());
}

#[test]
fn probe_writes_reads_back_and_deletes() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let mut config = config(&server, server.secret_key());
    config.prefix = "mail/in".into();
    let key = smol::block_on(client(&config).probe()).expect("probe passes");
    assert!(key.starts_with("mail/in/mxnode-probe/"), "{key}");
    assert!(
        server.keys(BUCKET).is_empty(),
        "the probe object is deleted"
    );
}

#[test]
fn probe_names_the_failing_step_and_code() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let error = smol::block_on(client(&config(&server, "wrong")).probe()).expect_err("fails");
    assert_eq!(error.step, "PUT");
    assert_eq!(error.code, "SignatureDoesNotMatch");
    assert_eq!(error.bucket, BUCKET);

    let missing = S3Server::start();
    let error =
        smol::block_on(client(&config(&missing, missing.secret_key())).probe()).expect_err("fails");
    assert_eq!(error.step, "HEAD bucket");
    assert_eq!(error.code, "NoSuchBucket");
}

#[test]
fn https_endpoint_is_trusted_through_the_connection_ca_only() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let ca = TestCa::new();
    let front = TlsFront::start(&ca, server.port());

    let mut trusted = config(&server, server.secret_key());
    trusted.endpoint = front.endpoint();
    trusted.ca = Some(ca.ca_pem.clone());
    put(&client(&trusted), "k/1-a.pdf", b"over TLS").expect("stored over HTTPS");
    assert_eq!(
        server.object(BUCKET, "k/1-a.pdf").as_deref(),
        Some(&b"over TLS"[..])
    );

    let other = TestCa::new();
    let mut untrusted = trusted.clone();
    untrusted.ca = Some(other.ca_pem.clone());
    let started = Instant::now();
    let error = smol::block_on(client(&untrusted).put_object(
        "k/2-b.pdf",
        "text/plain",
        Arc::new(b"x".to_vec()),
        None,
        Instant::now() + Duration::from_secs(2),
    ))
    .expect_err("an unrelated CA must not verify the store");
    assert!(matches!(error, S3Error::Transport(_)), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "retries stay inside the deadline"
    );
    assert_eq!(server.object(BUCKET, "k/2-b.pdf"), None);
}
