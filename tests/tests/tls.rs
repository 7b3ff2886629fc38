//! TLS of the node's listeners, checked with an independent client (OpenSSL's `s_client`):
//! STARTTLS and HTTPS offer TLS 1.3 and 1.2 and nothing older (issue 8, DESIGN §3), keys in
//! every PEM form OpenSSL writes are served, and the certificate is reloaded without a restart
//! (SIGHUP, the unit's `ExecReload`): new sessions get the new certificate, sessions in
//! progress keep theirs, and files that do not load leave the certificate in use in place.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use mxnode_tests::{
    Node, NodeConfig, Receiver, RouteConfig, SmtpClient, TestCa, new_webhook_secret,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

const WAIT: Duration = Duration::from_secs(30);

/// The log line of a refused reload; it names the config keys.
const REFUSED: &str = "smtp.tls_cert/smtp.tls_key not reloaded";

/// Waits until `needle` is in the node's log `count` times.
fn wait_for_count(node: &Node, needle: &str, count: usize) -> bool {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if node.log().matches(needle).count() >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Runs `openssl s_client` against `addr` (after `STARTTLS` when `starttls`) offering only
/// `protocol` (e.g. `-tls1_1`) and returns (handshake succeeded, output). `@SECLEVEL=0` lets
/// OpenSSL 3 really offer the old protocols, so a failure is the server's refusal, not the
/// client's policy.
fn s_client(addr: SocketAddr, starttls: bool, protocol: &str) -> (bool, String) {
    let mut command = Command::new("openssl");
    command.arg("s_client");
    if starttls {
        command.args(["-starttls", "smtp"]);
    }
    let mut child = command
        .arg("-connect")
        .arg(addr.to_string())
        .args([protocol, "-cipher", "DEFAULT:@SECLEVEL=0", "-brief"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed (./build.sh test installs it)");
    let start = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(start.elapsed() < WAIT, "openssl s_client {protocol} hangs");
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("openssl output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (text.contains("CONNECTION ESTABLISHED"), text)
}

/// TLS 1.3 and 1.2 succeed on `addr` with AEAD suites; 1.1 and 1.0 are refused for their
/// version.
fn offers_tls_1_3_and_1_2_only(addr: SocketAddr, starttls: bool) {
    let (ok, text) = s_client(addr, starttls, "-tls1_3");
    assert!(ok, "TLS 1.3 is offered:\n{text}");
    assert!(text.contains("Protocol version: TLSv1.3"), "{text}");
    let (ok, text) = s_client(addr, starttls, "-tls1_2");
    assert!(ok, "TLS 1.2 is offered:\n{text}");
    assert!(text.contains("Protocol version: TLSv1.2"), "{text}");
    // OpenSSL's name of the suite: ECDHE key exchange with an AEAD cipher.
    assert!(
        text.contains("Ciphersuite: ECDHE-")
            && (text.contains("-GCM-") || text.contains("-CHACHA20-POLY1305")),
        "{text}"
    );
    // The same client offering only an older version is refused. rustls answers a TLS 1.1 or
    // 1.0 ClientHello with `handshake_failure` rather than `protocol_version`: such a hello
    // lacks the signature_algorithms extension (new in TLS 1.2), which rustls requires before
    // it gets to the version.
    for old in ["-tls1_1", "-tls1"] {
        let (ok, text) = s_client(addr, starttls, old);
        assert!(!ok, "{old} must be refused:\n{text}");
        assert!(
            text.contains("alert protocol version") || text.contains("alert handshake failure"),
            "{old} refused by the server:\n{text}"
        );
    }
}

#[test]
fn starttls_offers_tls_1_3_and_1_2_and_refuses_anything_older() {
    let ca = TestCa::new();
    let node = Node::start(&NodeConfig::new().tls(&ca));
    offers_tls_1_3_and_1_2_only(node.smtp_addr(), true);
}

#[test]
fn https_offers_tls_1_3_and_1_2_and_refuses_anything_older() {
    let ca = TestCa::new();
    let node = Node::start(&NodeConfig::new().http(&ca));
    offers_tls_1_3_and_1_2_only(node.http_addr(), false);
}

/// Runs `openssl` with the space-separated `args` in `dir`, asserting success.
fn openssl(dir: &Path, args: &str) {
    let output = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        output.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn keys_in_each_pem_form_openssl_writes_are_served_and_an_encrypted_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name);
    // RSA in PKCS#1 (`BEGIN RSA PRIVATE KEY`), EC P-384 in SEC1 with its curve
    // (`BEGIN EC PRIVATE KEY`), and the RSA key encrypted in PKCS#8.
    openssl(dir.path(), "genrsa -traditional -out rsa.key 2048");
    openssl(
        dir.path(),
        "ecparam -name secp384r1 -genkey -noout -out ec.key",
    );
    openssl(
        dir.path(),
        "pkcs8 -topk8 -in rsa.key -v2 aes-256-cbc -passout pass:secret -out encrypted.key",
    );
    // The RSA key's certificate is X.509 v1 (`openssl x509 -req` adds no extensions), which
    // OpenSSL served and webpki would refuse to parse; the EC key's is v3.
    openssl(
        dir.path(),
        "req -new -key rsa.key -subj /CN=localhost -out rsa.csr",
    );
    openssl(
        dir.path(),
        "x509 -req -in rsa.csr -signkey rsa.key -days 2 -out rsa.pem",
    );
    openssl(
        dir.path(),
        "req -x509 -key ec.key -subj /CN=localhost -days 2 -out ec.pem",
    );
    for (key, header) in [
        ("rsa.key", "-----BEGIN RSA PRIVATE KEY-----"),
        ("ec.key", "-----BEGIN EC PRIVATE KEY-----"),
        ("encrypted.key", "-----BEGIN ENCRYPTED PRIVATE KEY-----"),
    ] {
        let text = fs::read_to_string(path(key)).expect("read key");
        assert!(text.starts_with(header), "{key}: {text}");
    }
    let install = |cert: &str, key: &str| {
        fs::copy(path(cert), path("cert.pem")).expect("install cert");
        fs::copy(path(key), path("key.pem")).expect("install key");
    };

    install("rsa.pem", "rsa.key");
    let node = Node::start(&NodeConfig::new().tls_files(&path("cert.pem"), &path("key.pem")));
    let (ok, text) = s_client(node.smtp_addr(), true, "-tls1_2");
    assert!(
        ok,
        "a PKCS#1 RSA key with a v1 certificate is served:\n{text}"
    );
    assert!(text.contains("Ciphersuite: ECDHE-RSA-"), "{text}");
    let (ok, text) = s_client(node.smtp_addr(), true, "-tls1_3");
    assert!(ok, "{text}");

    install("ec.pem", "ec.key");
    node.reload();
    assert!(
        node.wait_for_log("reloaded smtp.tls_cert", WAIT),
        "{}",
        node.log()
    );
    let (ok, text) = s_client(node.smtp_addr(), true, "-tls1_2");
    assert!(ok, "a SEC1 P-384 key is served:\n{text}");
    assert!(text.contains("Ciphersuite: ECDHE-ECDSA-"), "{text}");

    install("rsa.pem", "encrypted.key");
    node.reload();
    assert!(wait_for_count(&node, REFUSED, 1), "{}", node.log());
    let log = node.log();
    let refusal = log
        .lines()
        .find(|line| line.contains(REFUSED))
        .unwrap_or_default();
    assert!(refusal.contains("passphrase"), "{refusal}");
    let (ok, text) = s_client(node.smtp_addr(), true, "-tls1_2");
    assert!(ok, "the SEC1 key stays in use:\n{text}");
    assert!(text.contains("Ciphersuite: ECDHE-ECDSA-"), "{text}");
}

/// The DER of the (first) certificate in a PEM file.
fn der(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem)
        .expect("a PEM certificate")
        .to_vec()
}

/// Installs `cert`/`key` as the node's files the way a renewal tool does: write beside, rename.
fn install(cert: &Path, key: &Path, dir: &Path) {
    for (from, name) in [(cert, "cert.pem"), (key, "key.pem")] {
        let staged = dir.join(format!("{name}.new"));
        fs::copy(from, &staged).expect("stage the file");
        fs::rename(&staged, dir.join(name)).expect("install the file");
    }
}

/// A STARTTLS session on `node`, returning the client (in TLS) and the server's certificate.
fn tls_session(node: &Node, ca: &TestCa) -> (SmtpClient, Vec<u8>) {
    let mut client = SmtpClient::connect(node.smtp_addr());
    client.ehlo("client.test");
    assert_eq!(client.starttls(&ca.ca_pem).code, 220);
    let certificate = client.peer_certificate().expect("a certificate");
    (client, certificate)
}

#[test]
fn sighup_reloads_the_certificate_for_new_sessions_and_keeps_it_when_the_files_are_bad() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let (cert_a, key_a) = ca.issue(&["localhost"]);
    let (cert_b, key_b) = ca.issue(&["localhost"]);
    let files = tempfile::tempdir().expect("tempdir");
    install(&cert_a, &key_a, files.path());
    let node = Node::start(
        &NodeConfig::new()
            .tls_files(
                &files.path().join("cert.pem"),
                &files.path().join("key.pem"),
            )
            .route(RouteConfig::to_receiver(
                "*@in.example.test",
                &receiver,
                "/ok",
            )),
    );
    let pid = node.pid();

    let (mut before, served) = tls_session(&node, &ca);
    assert_eq!(served, der(&cert_a), "certificate A at start");

    install(&cert_b, &key_b, files.path());
    node.reload();
    assert!(
        node.wait_for_log("reloaded smtp.tls_cert", WAIT),
        "{}",
        node.log()
    );
    let (mut after, served) = tls_session(&node, &ca);
    assert_eq!(served, der(&cert_b), "a new session gets certificate B");
    assert_eq!(node.pid(), pid, "no restart");
    // The session that began with A goes on.
    let reply = before.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        b"Subject: a\r\n\r\nx\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}");

    // Renewals gone wrong: B's certificate with A's key; a truncated certificate.
    install(&cert_b, &key_a, files.path());
    node.reload();
    assert!(wait_for_count(&node, REFUSED, 1), "{}", node.log());
    install(&cert_b, &key_b, files.path());
    fs::write(
        files.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n",
    )
    .expect("write");
    node.reload();
    assert!(wait_for_count(&node, REFUSED, 2), "{}", node.log());
    let (mut still, served) = tls_session(&node, &ca);
    assert_eq!(served, der(&cert_b), "bad files leave certificate B in use");
    let reply = still.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        b"Subject: b\r\n\r\nx\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}");
    let reply = after.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        b"Subject: c\r\n\r\nx\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}");
    assert_eq!(receiver.received().len(), 3);
}
