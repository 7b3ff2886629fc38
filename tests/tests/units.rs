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

/// `KEY=value` lines of one section of a unit file (the last one of a key wins, as in systemd).
fn unit_section(text: &str, section: &str) -> std::collections::HashMap<String, String> {
    let mut current = String::new();
    let mut keys = std::collections::HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
        } else if current == section
            && let Some((key, value)) = line.split_once('=')
        {
            keys.insert(key.trim().to_string(), value.trim().to_string());
        }
    }
    keys
}

/// `5s`, `5min`, `30s` as seconds.
fn seconds(value: &str) -> u64 {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("a duration: {value}"));
    match unit {
        "" | "s" => number,
        "min" => number * 60,
        "h" => number * 3600,
        other => panic!("unit {other} of {value}"),
    }
}

/// `2560M`, `2G` as MiB.
fn mebibytes(value: &str) -> u64 {
    let (number, unit) = value.split_at(value.len() - 1);
    let number: u64 = number.parse().unwrap_or_else(|_| panic!("a size: {value}"));
    match unit {
        "M" => number,
        "G" => number * 1024,
        other => panic!("unit {other} of {value}"),
    }
}

/// Issue 16: the node's unit bounds memory and tasks (memory above the node's own bound of
/// 64 MiB + 4 x the default `max_in_flight`), has a watchdog, restarts always, and its start
/// limit can never be reached by its own restarts (so it never ends up failed for good). With
/// systemd-analyze on the host, the units also parse without an unknown key.
#[test]
fn issue_16_the_node_unit_bounds_memory_and_tasks_has_a_watchdog_and_never_stays_failed() {
    let text = std::fs::read_to_string(workspace_dir().join("systemd/mxnode.service"))
        .expect("read mxnode.service");
    let unit = unit_section(&text, "Unit");
    let service = unit_section(&text, "Service");
    let get = |keys: &std::collections::HashMap<String, String>, key: &str| {
        keys.get(key)
            .cloned()
            .unwrap_or_else(|| panic!("mxnode.service has no {key}"))
    };

    let max_in_flight_mib = 512;
    let memory = mebibytes(&get(&service, "MemoryMax"));
    assert!(
        memory >= 64 + 4 * max_in_flight_mib,
        "MemoryMax={memory}M is below the node's own bound"
    );
    assert!(
        memory <= 4096,
        "MemoryMax={memory}M bounds nothing on the appliance"
    );
    let tasks: u64 = get(&service, "TasksMax").parse().expect("a number");
    assert!(
        (600..=4096).contains(&tasks),
        "TasksMax={tasks}: above the 500 blocking threads, still a bound"
    );

    assert_eq!(get(&service, "Type"), "notify");
    assert_eq!(get(&service, "NotifyAccess"), "main");
    let watchdog = seconds(&get(&service, "WatchdogSec"));
    assert!((10..=120).contains(&watchdog), "WatchdogSec={watchdog}");

    assert_eq!(get(&service, "Restart"), "always");
    let restart_sec = seconds(&get(&service, "RestartSec"));
    assert!(restart_sec >= 1, "RestartSec={restart_sec}");
    let interval = seconds(&get(&unit, "StartLimitIntervalSec"));
    let burst: u64 = get(&unit, "StartLimitBurst").parse().expect("a number");
    assert!(
        interval == 0 || interval / restart_sec < burst,
        "{} restarts fit in StartLimitIntervalSec={interval}s: StartLimitBurst={burst} would \
         leave the node failed",
        interval / restart_sec + 1
    );

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let output = Command::new("systemd-analyze")
            .arg("verify")
            .args(["mxnode.service", "mxnode-banner.service"])
            .current_dir(workspace_dir().join("systemd"))
            .output()
            .expect("systemd-analyze verify");
        let report = String::from_utf8_lossy(&output.stderr);
        for line in report.lines() {
            // Executables and the other units exist only in the image.
            let expected = line.contains("is not executable")
                || line.contains("not found")
                || line.contains("Failed to create");
            assert!(expected, "systemd-analyze verify: {line}");
        }
    }
}

/// Issue 16: the real binary, started with a notification socket and `WATCHDOG_USEC` as systemd
/// does, pings `WATCHDOG=1` at half the timeout after `READY=1`.
#[test]
fn issue_16_the_node_pings_the_systemd_watchdog() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let node = mxnode_tests::Node::start(
        &mxnode_tests::NodeConfig::new()
            .env("NOTIFY_SOCKET", &path.display().to_string())
            .env("WATCHDOG_USEC", "400000"),
    );
    let mut seen = Vec::new();
    let mut buffer = [0u8; 256];
    while seen
        .iter()
        .filter(|s: &&String| s.as_str() == "WATCHDOG=1")
        .count()
        < 3
    {
        let n = socket
            .recv(&mut buffer)
            .unwrap_or_else(|e| panic!("no watchdog ping within 20 s ({e}); got {seen:?}"));
        seen.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    assert!(seen.contains(&"READY=1".to_string()), "{seen:?}");
    assert!(node.log().contains("systemd watchdog"), "{}", node.log());
}
