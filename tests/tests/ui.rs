//! The web console in a real browser (issue 5): Debian's headless Chromium driven by
//! playwright-core (`tests/ui/console.mjs`, installed by `./build.sh test` into
//! `tests/ui/node_modules`) against the real node over HTTPS, a real HTTPS receiver, a real
//! S3 store (s3s-fs) and a real SMTP client. The script walks setup (refused without the
//! token), login, the data volume's recovery key (shown once, deleted on confirmation), the
//! status page, a certificate upload (a key that does not match first; then this test checks
//! with its own TLS clients that STARTTLS and HTTPS serve the new certificate, without a
//! restart), a route to the receiver, an S3 connection with its probe (edited and deleted), a
//! real email in the delivery log and its deletion, the audit log, an API key created and
//! revoked, retention with a field error, the compliance report, the Account page (a password
//! change and "log out everywhere else" ending a second session; issue 16), the updates page (a check
//! against a real HTTPS channel serving a release signed by `mxnode release`, which stages
//! it; Apply; a bundle with a forged signature refused) and logout, and saves a screenshot of
//! each page under `$CARGO_TARGET_DIR/ui-artifacts/` (never the repo).
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mxnode_tests::{
    Node, NodeConfig, Receiver, Releases, S3Server, SmtpClient, StaticServer, TestCa, mxnode_bin,
    new_webhook_secret, served_certificate, workspace_dir,
};
use ring::digest::{SHA256, digest};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// The DER of the first certificate in a PEM file.
fn der(pem: &std::path::Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem)
        .expect("a PEM certificate")
        .to_vec()
}

/// `AB:CD:…`, as the console shows a fingerprint.
fn fingerprint(der: &[u8]) -> String {
    digest(&SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The certificate a new STARTTLS session on `node` gets.
fn starttls_certificate(node: &Node, ca: &TestCa) -> Vec<u8> {
    let mut client = SmtpClient::connect(node.smtp_addr());
    client.ehlo("client.test");
    assert_eq!(client.starttls(&ca.ca_pem).code, 220);
    client.peer_certificate().expect("a certificate")
}

/// The whole browser walk must finish within this (setup and login hash a password with
/// 600,000 PBKDF2 rounds in an unoptimised build).
const UI_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the screenshots go: `$CARGO_TARGET_DIR/ui-artifacts/console`, else the system temp dir.
fn artifacts_dir() -> PathBuf {
    let root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = root.join("ui-artifacts").join("console");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the artifacts dir");
    dir
}

#[test]
fn console_walkthrough_in_headless_chromium() {
    let ui_dir = workspace_dir().join("tests/ui");
    assert!(
        ui_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run ./build.sh test (npm ci in tests/ui)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").is_file(),
        "/usr/bin/chromium is missing: run ./build.sh test (apt chromium)"
    );
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    // The update channel serves 9.0.0; the offline bundle of 9.0.1 carries 9.0.0's signature.
    let releases = Releases::new();
    let served = tempfile::tempdir().expect("temp dir");
    let good = releases.sign("good", "9.0.0");
    releases.publish(&good, &served.path().join("stable"));
    let channel = StaticServer::start(&ca, served.path());
    let forged = releases.sign("forged", "9.0.1");
    std::fs::copy(
        good.join("manifest.json.sig"),
        forged.join("manifest.json.sig"),
    )
    .expect("forge the signature");
    let forged_bundle = releases.bundle(&forged);
    let update_dirs = tempfile::tempdir().expect("temp dir");
    let state_dir = update_dirs.path().join("state");
    let node = Node::start(&NodeConfig::new().http(&ca).tls(&ca).extra_toml(&format!(
        "[update]\nkeys = {:?}\nchannel = {:?}\nchannel_ca = {:?}\nauto_apply = false\n\
         check_interval = \"24h\"\nstate_dir = {:?}\nspool_dir = {:?}\n",
        releases.keys_file(),
        channel.url("/stable/"),
        ca.ca_pem,
        state_dir,
        update_dirs.path().join("spool"),
    )));
    // A history for the page: the running version's install, recorded by root's own
    // `mxnode update finish` after its first good boot in slot a.
    std::fs::create_dir_all(&state_dir).expect("state dir");
    std::fs::write(
        state_dir.join("pending.json"),
        format!(
            r#"{{"version":"{0}","slot":"a","from_version":"0.0.1","from_slot":"b","at":"2026-01-01T00:00:00Z"}}"#,
            env!("CARGO_PKG_VERSION")
        ),
    )
    .expect("pending.json");
    let finish = Command::new(mxnode_bin())
        .args(["update", "finish", "--current-slot", "a", "--config"])
        .arg(node.config_path())
        .output()
        .expect("run mxnode update finish");
    assert!(
        finish.status.success(),
        "{}",
        String::from_utf8_lossy(&finish.stderr)
    );
    let token = node.setup_token().expect("the node is in setup mode");
    let artifacts = artifacts_dir();
    // The certificate the walk uploads (with its CA as the chain's second certificate), and
    // a key that does not belong to it.
    let (new_cert, new_key) = ca.issue(&["localhost", "127.0.0.1"]);
    let (_, other_key) = ca.issue(&["localhost"]);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("read a PEM file");
    let chain = format!("{}{}", read(&new_cert), ca.ca_pem_text());
    let s3 = S3Server::start();
    s3.create_bucket("mail");
    let pid = node.pid();
    // What the appliance's first boot leaves for the admin (mxnode-data): the data volume's
    // recovery key, shown once after login and deleted when the admin confirms.
    let recovery_key = "fjhkbclr-dvlcgnbn-lbvfivre-rjnfhdeb-ejuckbvk-gtdtrllc-lhibtrci-cuebhtfn";
    let recovery_file = node.data_dir().join("recovery-key");
    std::fs::write(&recovery_file, format!("{recovery_key}\n")).expect("write the recovery key");
    std::fs::set_permissions(&recovery_file, std::fs::Permissions::from_mode(0o400))
        .expect("chmod the recovery key");
    assert_eq!(
        served_certificate(node.http_addr(), &ca.ca_pem),
        der(&ca.cert_pem)
    );
    assert_eq!(starttls_certificate(&node, &ca), der(&ca.cert_pem));

    let mut child = Command::new("node")
        .arg(ui_dir.join("console.mjs"))
        .current_dir(&ui_dir)
        .env("MXNODE_URL", node.api_url(""))
        .env("SETUP_TOKEN", &token)
        .env("RECEIVER_URL", receiver.url("/ok"))
        .env("RECEIVER_SECRET", receiver.secret())
        .env("RECEIVER_CA", receiver.ca_pem())
        .env("ARTIFACTS", &artifacts)
        .env("TLS_CHAIN", &chain)
        .env("TLS_KEY", read(&new_key))
        .env("TLS_WRONG_KEY", read(&other_key))
        .env("TLS_FINGERPRINT", fingerprint(&der(&new_cert)))
        .env("RECOVERY_KEY", recovery_key)
        .env("S3_ENDPOINT", s3.endpoint())
        .env("S3_ACCESS_KEY", s3.access_key())
        .env("S3_SECRET_KEY", s3.secret_key())
        .env("UPDATE_CHANNEL", channel.url("/stable/"))
        .env("UPDATE_BAD_BUNDLE", &forged_bundle)
        .env("RUNNING_VERSION", env!("CARGO_PKG_VERSION"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node (nodejs)");
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });

    let deadline = Instant::now() + UI_TIMEOUT;
    let mut output = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line == "SEND_MAIL" => {
                let mut client = SmtpClient::connect(node.smtp_addr());
                let reply = client.send_mail(
                    "alice@example.org",
                    &["bob@in.example.test"],
                    b"From: Alice <alice@example.org>\r\nTo: bob@in.example.test\r\n\
                      Subject: Console test\r\nMessage-ID: <console@example.org>\r\n\r\nHello\r\n",
                );
                assert_eq!(reply.code, 250, "{reply}");
                // The console's test delivery, then this message.
                assert_eq!(receiver.wait_for(2, Duration::from_secs(10)).len(), 2);
                writeln!(stdin, "SENT").expect("answer the script");
            }
            Ok(line) if line == "CERT_INSTALLED" => {
                // New connections get the uploaded certificate on both listeners, from the
                // same process.
                let new = der(&new_cert);
                assert_eq!(
                    served_certificate(node.http_addr(), &ca.ca_pem),
                    new,
                    "HTTPS"
                );
                assert_eq!(starttls_certificate(&node, &ca), new, "STARTTLS");
                assert_eq!(node.pid(), pid, "no restart");
                writeln!(stdin, "CHECKED").expect("answer the script");
            }
            Ok(line) if line == "APPLIED" => {
                // Apply asked root's installer for the staged release.
                let spool = update_dirs.path().join("spool");
                assert!(spool.join("request.json").is_file(), "request.json");
                assert!(spool.join("staged/root.erofs").is_file(), "staged root");
                writeln!(stdin, "CHECKED").expect("answer the script");
            }
            Ok(line) if line == "PROBED" => {
                // The probe wrote, read back and deleted its object: nothing is left.
                assert_eq!(s3.keys("mail"), Vec::<String>::new());
                writeln!(stdin, "CHECKED").expect("answer the script");
            }
            Ok(line) => output.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("the browser walk took longer than {UI_TIMEOUT:?}: {output:?}");
            }
        }
    }
    drop(stdin);
    let status = child.wait().expect("wait for the script");
    let errors = errors.join().unwrap_or_default();
    assert!(
        status.success() && output.iter().any(|l| l == "UI_OK"),
        "the browser walk failed ({status}); screenshots in {}:\n{}\n{errors}",
        artifacts.display(),
        output.join("\n")
    );
    assert!(
        !recovery_file.exists(),
        "the confirmed recovery key is deleted from the node"
    );
    eprintln!("screenshots: {}", artifacts.display());
}
