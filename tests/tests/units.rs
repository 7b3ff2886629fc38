//! The appliance's systemd units and the scripts they run, checked on the host (issue 16): the
//! console banner never follows a link the node planted and writes a banner only root reads,
//! and the node's unit is hardened (memory and task limits, a watchdog, no start limit that
//! leaves the node down for good).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mxnode_tests::{TestCa, workspace_dir};

fn banner_script() -> PathBuf {
    workspace_dir().join("image/rootfs/usr/libexec/mxnode/mxnode-banner")
}

/// A temp tree laid out like the box: the node's runtime dir, the first-boot and the uploaded
/// certificate, the banner's output dir.
struct BannerTree {
    dir: tempfile::TempDir,
}

impl BannerTree {
    fn new() -> BannerTree {
        let dir = tempfile::tempdir().expect("temp dir");
        // The unprivileged renderer (nobody, when the test runs as root) must reach the files.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        for sub in ["node", "out"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
            std::fs::set_permissions(dir.path().join(sub), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        BannerTree { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn token(&self) -> PathBuf {
        self.path("node/setup-token")
    }

    fn uploaded_cert(&self) -> PathBuf {
        self.path("node/cert.pem")
    }

    /// Runs the banner (as root when the test is root: then it renders as `nobody`); returns
    /// the issue text and its mode.
    fn run(&self) -> (String, u32) {
        let mut child = Command::new(banner_script())
            .env("MXNODE_BANNER_OUT", self.path("out"))
            .env("MXNODE_BANNER_TOKEN", self.token())
            .env("MXNODE_BANNER_CERT", self.path("first-boot-cert.pem"))
            .env("MXNODE_BANNER_UPLOADED_CERT", self.uploaded_cert())
            .env("MXNODE_BANNER_USER", "nobody")
            .env("MXNODE_BANNER_RELOAD", "no")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mxnode-banner");
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            if Instant::now() > give_up {
                let _ = child.kill();
                panic!("mxnode-banner did not finish within 30 s (blocked on a planted file?)");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().expect("output");
        assert!(
            output.status.success(),
            "mxnode-banner failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let issue = self.path("out/issue");
        let text = std::fs::read_to_string(&issue).expect("issue written");
        let mode = std::fs::metadata(&issue)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777;
        (text, mode)
    }
}

fn line<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label} line in {text}"))
}

fn plant_link(target: &Path, link: &Path) {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).expect("symlink");
}

#[test]
fn issue_16_the_console_banner_follows_no_planted_link_and_is_readable_by_root_only() {
    let tree = BannerTree::new();
    // A secret of root's, and the node planting a link to it as its setup token.
    let secret = tree.path("root-only");
    std::fs::write(&secret, "ROOTSECRET4242\n").expect("write");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    plant_link(&secret, &tree.token());
    // And a link to a real certificate as the "uploaded" one.
    let ca = TestCa::new();
    plant_link(&ca.cert_pem, &tree.uploaded_cert());

    let (text, mode) = tree.run();
    assert!(!text.contains("ROOTSECRET"), "followed the link: {text}");
    assert!(line(&text, "Setup token:").starts_with("(none"), "{text}");
    assert_eq!(
        line(&text, "TLS certificate:"),
        "SHA-256 (no certificate yet)",
        "a linked certificate is not read: {text}"
    );
    assert_eq!(
        mode, 0o600,
        "the banner (with the token) is not world-readable"
    );

    // Run as root, the part that reads the node's files is not root: a token file only root
    // could read stays unread.
    if nix::unistd::geteuid().is_root() {
        std::fs::remove_file(tree.token()).expect("rm");
        std::fs::copy(&secret, tree.token()).expect("copy");
        std::fs::set_permissions(tree.token(), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        let (text, _) = tree.run();
        assert!(!text.contains("ROOTSECRET"), "read as root: {text}");
    }

    // The real files: a token (read to its bound only) and a certificate.
    std::fs::remove_file(tree.token()).expect("rm");
    let token = format!("tok_{}", "A".repeat(4096));
    std::fs::write(tree.token(), format!("{token}\n")).expect("write");
    std::fs::set_permissions(tree.token(), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::remove_file(tree.uploaded_cert()).expect("rm");
    std::fs::copy(&ca.cert_pem, tree.uploaded_cert()).expect("copy");
    std::fs::set_permissions(tree.uploaded_cert(), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let (text, _) = tree.run();
    let shown = line(&text, "Setup token:");
    assert!(shown.starts_with("tok_AAAA"), "{text}");
    assert_eq!(shown.len(), 128, "read to its bound: {shown}");
    let fingerprint = line(&text, "TLS certificate:");
    assert!(
        fingerprint.starts_with("SHA-256 ") && fingerprint.matches(':').count() == 31,
        "{text}"
    );

    // A FIFO as the token blocks nothing.
    std::fs::remove_file(tree.token()).expect("rm");
    nix::unistd::mkfifo(
        &tree.token(),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    let (text, _) = tree.run();
    assert!(line(&text, "Setup token:").starts_with("(none"), "{text}");
}
