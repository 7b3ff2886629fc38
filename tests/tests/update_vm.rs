//! The update channel end to end in a VM (issue 7, DESIGN §9): a box running release N polls an
//! HTTPS channel on the host, installs release N+1 into its other slot by itself and comes back
//! on it; a power cut in the middle of writing the next release (N+2) leaves it running N+1;
//! and N+2, whose node cannot start, is tried until its boot counter runs out, after which
//! systemd-boot falls back to N+1 and the node reports the rollback.
//!
//! Releases: N is the image `./build.sh image` builds (as in tests/tests/image.rs); N+1 and
//! N+2 are test releases of the same tree built with `--version` and `--release-only`, N+2
//! with an overlay whose `mxnode-serve` exits 1. All are signed with the development release
//! key the image trusts (firmware-config/update-dev-key.pk8). The channel is
//! `tests/peers/release_server.py` on the host's 127.0.0.1 (10.0.2.2 from the guest), with a
//! test CA provisioned on the state partition as the channel's trust anchor.
//!
//! Observed from outside only: the serial console (status line per boot, the updater's lines)
//! and the REST API over the forwarded HTTPS port, as the admin set up with the console's
//! one-time token.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use mxnode_tests::vm::{
    DataStorage, HOST_FROM_GUEST, Image, ImageOptions, Machine, ReleaseChannel, Running, StateFiles,
};
use mxnode_tests::{TestCa, workspace_dir};
use serde_json::{Value, json};

/// First boot under TCG: UEFI, kernel, LUKS2 format and TPM enrollment, certificate, node.
const FIRST_BOOT_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// From a blessed boot to the next release's status line: a channel check, the download, the
/// slot write with read-back, the reboot and the new boot.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// A later boot without anything to create.
const BOOT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Three failing boots of a bad release and the fallback boot.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// How often the node asks the channel in this test (the default is hours).
const CHECK_INTERVAL: &str = "1m";
/// Tries a new boot entry gets (`+3`, UPDATE.md), each ending in a reboot by mxnode-health.
const BOOT_TRIES: usize = 3;
/// How often the install's progress is polled before the power cut.
const PROGRESS_POLL: Duration = Duration::from_millis(300);
/// Upper bound of one API request to the VM.
const API_TIMEOUT: Duration = Duration::from_secs(60);

/// The console line mxnode-status.service prints once a boot settled.
const STATUS: &str = "mxnode-status: ";
/// The line mxnode-update prints when it starts an install.
const INSTALL_STARTS: &str = "mxnode-update: install request found";

/// Where the channel's CA goes on the state partition, and where the node reads it.
const CA_ON_STATE: &str = "config/update-ca.pem";
const CA_IN_GUEST: &str = "/var/lib/mxnode-state/config/update-ca.pem";

/// The admin the test sets up through the console's one-time token.
const ADMIN: &str = "operator";
const ADMIN_PASSWORD: &str = "update-test-password-1";

fn skip() -> bool {
    if std::env::var_os("MXNODE_SKIP_IMAGE_TESTS").is_some() {
        eprintln!("MXNODE_SKIP_IMAGE_TESTS is set: not building or booting the image");
        return true;
    }
    false
}

/// `key=value` from a status line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("status line has no {key}=: {line}"))
}

/// `version` with its patch number raised by `by` (pre-release and build suffixes dropped).
fn later(version: &str, by: u64) -> String {
    let core = version.split(['-', '+']).next().unwrap_or(version);
    let parts: Vec<u64> = core
        .split('.')
        .map(|part| part.parse().expect("a numeric version part"))
        .collect();
    assert_eq!(parts.len(), 3, "a semantic version: {version}");
    format!("{}.{}.{}", parts[0], parts[1], parts[2] + by)
}

/// The boot entries of a status line.
fn entries(status: &str) -> Vec<String> {
    field(status, "entries")
        .split(',')
        .map(str::to_string)
        .collect()
}

/// The site config: the image's defaults with the channel on the host, its CA and a short
/// check interval in the `[update]` table.
fn site_config(channel: &ReleaseChannel) -> String {
    let defaults = fs::read_to_string(workspace_dir().join("firmware-config/mxnode.toml"))
        .expect("read firmware-config/mxnode.toml");
    let settings = format!(
        "channel = \"https://{HOST_FROM_GUEST}:{port}/\"\nchannel_ca = \"{CA_IN_GUEST}\"\n\
         check_interval = \"{CHECK_INTERVAL}\"\n",
        port = channel.port()
    );
    if defaults.contains("\n[update]\n") {
        defaults.replacen("\n[update]\n", &format!("\n[update]\n{settings}"), 1)
    } else {
        format!("{defaults}\n[update]\n{settings}")
    }
}

/// A test CA whose server certificate also names 10.0.2.2, the host as the guest sees it.
fn ca_for_guest() -> TestCa {
    let mut ca = TestCa::new();
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1", HOST_FROM_GUEST]);
    ca.cert_pem = cert;
    ca.key_pem = key;
    ca
}

/// An overlay whose `mxnode-serve` exits 1: a release whose node never starts.
fn broken_node_overlay() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("mxnode-test-overlay-")
        .tempdir()
        .expect("create the overlay dir");
    let bin = dir.path().join("usr/libexec/mxnode");
    fs::create_dir_all(&bin).expect("create the overlay's libexec dir");
    let serve = bin.join("mxnode-serve");
    fs::write(
        &serve,
        "#!/bin/sh\n# A test release whose node cannot start (update rollback test).\nexit 1\n",
    )
    .expect("write the broken mxnode-serve");
    fs::set_permissions(&serve, fs::Permissions::from_mode(0o755)).expect("chmod mxnode-serve");
    dir
}

/// Builds a test release: `version`, only the slot artifacts and the signed release.
fn test_release(version: &str, overlay: Option<&std::path::Path>) -> Image {
    let release = Image::build_with(&ImageOptions {
        version: Some(version.to_string()),
        overlay: overlay.map(std::path::Path::to_path_buf),
        release_only: true,
        ..ImageOptions::default()
    });
    assert_eq!(release.info.version, version);
    assert!(
        release.release_dir().join("manifest.json.sig").is_file(),
        "./build.sh image signed release {version}"
    );
    release
}

/// Reads status lines one after another, across the reboots the guest makes by itself.
struct Boots {
    /// Console bytes already looked at.
    mark: usize,
}

impl Boots {
    fn new() -> Boots {
        Boots { mark: 0 }
    }

    /// The next status line after the last one, waiting up to `timeout`.
    fn next_status(&mut self, vm: &mut Running, timeout: Duration) -> String {
        let line = vm.wait_for_line_after(STATUS, self.mark, timeout);
        self.skip_past(vm, &line);
        eprintln!("[{:?}] {line}", vm.uptime());
        line
    }

    /// The next console line containing `needle`, waiting up to `timeout`.
    fn next_line(&mut self, vm: &mut Running, needle: &str, timeout: Duration) -> String {
        let line = vm.wait_for_line_after(needle, self.mark, timeout);
        self.skip_past(vm, &line);
        eprintln!("[{:?}] {line}", vm.uptime());
        line
    }

    fn skip_past(&mut self, vm: &Running, line: &str) {
        let console = vm.console();
        let at = console[self.mark..]
            .find(line)
            .map(|offset| self.mark + offset + line.len())
            .unwrap_or(console.len());
        self.mark = at;
    }
}

/// HTTPS to the VM's forwarded port; the certificate is the node's self-signed one (its
/// fingerprint is pinned against the console in tests/tests/image.rs).
fn api_agent() -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(true)
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(API_TIMEOUT))
        .build()
        .into()
}

/// The admin's session on the node: sets the admin up with the one-time token from the
/// console on the first call of a machine (during the first boot: the token the console shows
/// is that boot's), then logs in (sessions end with a node restart).
fn admin_session(machine: &Machine, vm: &Running, set_up: &mut bool) -> String {
    let agent = api_agent();
    let base = format!("https://{}", machine.https_addr());
    if !*set_up {
        let console = vm.console();
        let token = console
            .lines()
            .filter_map(|line| line.split("Setup token:").nth(1))
            .map(str::trim)
            .rfind(|token| !token.is_empty() && !token.starts_with('('))
            .expect("the console banner shows the setup token")
            .to_string();
        let answer = agent
            .post(format!("{base}/api/v1/setup"))
            .header("Content-Type", "application/json")
            .send(
                json!({"token": token, "username": ADMIN, "password": ADMIN_PASSWORD}).to_string(),
            )
            .expect("POST /api/v1/setup");
        assert!(
            answer.status().is_success(),
            "setup with the console token: {}",
            answer.status()
        );
        *set_up = true;
    }
    let answer = agent
        .post(format!("{base}/api/v1/session"))
        .header("Content-Type", "application/json")
        .send(json!({"username": ADMIN, "password": ADMIN_PASSWORD}).to_string())
        .expect("POST /api/v1/session");
    assert!(answer.status().is_success(), "login: {}", answer.status());
    answer
        .headers()
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .expect("the login sets the session cookie")
        .to_string()
}

/// `GET /api/v1/update` as the admin.
fn update_status(machine: &Machine, cookie: &str) -> Value {
    let mut answer = api_agent()
        .get(format!("https://{}/api/v1/update", machine.https_addr()))
        .header("Cookie", cookie)
        .call()
        .expect("GET /api/v1/update");
    assert_eq!(answer.status().as_u16(), 200, "GET /api/v1/update");
    let text = answer
        .body_mut()
        .read_to_string()
        .expect("read GET /api/v1/update");
    serde_json::from_str(&text).expect("GET /api/v1/update is JSON")
}

/// The status line says `version` runs from `slot`, its boot is blessed, and mxnode runs.
fn assert_running(status: &str, version: &str, slot: &str) {
    assert_eq!(field(status, "version"), version, "{status}");
    assert_eq!(field(status, "slot"), slot, "{status}");
    assert_eq!(field(status, "node"), "active", "{status}");
    assert_eq!(field(status, "health"), "active", "{status}");
    assert_eq!(field(status, "blessed"), "yes", "{status}");
    assert!(
        entries(status).contains(&format!("mxnode-{slot}.conf")),
        "slot {slot}'s entry is blessed: {status}"
    );
}

#[test]
fn the_node_updates_itself_survives_a_power_cut_mid_install_and_rolls_back_a_release_that_fails() {
    if skip() {
        return;
    }
    let started = Instant::now();
    let image = Image::build();
    let n = image.info.version.clone();
    let (n1, n2) = (later(&n, 1), later(&n, 2));
    let next = test_release(&n1, None);
    let overlay = broken_node_overlay();
    let broken = test_release(&n2, Some(overlay.path()));
    eprintln!("releases {n}, {n1}, {n2} built in {:?}", started.elapsed());

    let ca = ca_for_guest();
    let channel = ReleaseChannel::start(&ca.cert_pem, &ca.key_pem, &next.release_dir());
    let state = StateFiles::new()
        .file("config/mxnode.toml", site_config(&channel))
        .file(CA_ON_STATE, fs::read(&ca.ca_pem).expect("read the test CA"));
    let machine = Machine::new(&image, &state, DataStorage::SecondDisk, true);
    let mut set_up = false;

    // Release N boots from slot A, finds N+1 on the channel, installs it into slot B by itself
    // and comes back on slot B.
    let mut vm = machine.boot();
    let mut boots = Boots::new();
    let status = boots.next_status(&mut vm, FIRST_BOOT_TIMEOUT);
    assert_running(&status, &n, "a");
    // The admin is set up now, while the console shows this boot's one-time token.
    admin_session(&machine, &vm, &mut set_up);
    boots.next_line(&mut vm, INSTALL_STARTS, UPDATE_TIMEOUT);
    let status = boots.next_status(&mut vm, UPDATE_TIMEOUT);
    assert_running(&status, &n1, "b");
    for file in [
        "/manifest.json",
        "/manifest.json.sig",
        "/root.erofs",
        "/vmlinuz",
        "/initrd.img",
    ] {
        assert!(
            channel.served(200).iter().any(|path| path == file),
            "the node fetched {file} from the channel: {:?}",
            channel.served(200)
        );
    }
    let cookie = admin_session(&machine, &vm, &mut set_up);
    let update = update_status(&machine, &cookie);
    assert_eq!(update["version"], n1.as_str(), "{update}");
    assert_eq!(update["slot"], "b", "{update}");
    assert_eq!(update["blessed"], true, "{update}");
    let history = update["history"].to_string();
    assert!(
        history.contains("installed") && history.contains(&n1),
        "the history records the install of {n1}: {update}"
    );

    // The channel offers N+2. Once its install is writing slot A, the power goes (the session
    // is opened before: logging in costs seconds of PBKDF2 under emulation).
    channel.switch_to(&broken.release_dir());
    boots.next_line(&mut vm, INSTALL_STARTS, UPDATE_TIMEOUT);
    let deadline = Instant::now() + UPDATE_TIMEOUT;
    loop {
        let update = update_status(&machine, &cookie);
        let done = update["progress"]["done"].as_u64().unwrap_or(0);
        let total = update["progress"]["total"].as_u64().unwrap_or(0);
        if done > 0 && done < total {
            eprintln!("power cut at {done} of {total} bytes: {update}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the install never reported progress: {update}"
        );
        std::thread::sleep(PROGRESS_POLL);
    }
    vm.power_cut();

    // Power on: slot A has no boot entry (the install removed it before writing), so the box
    // boots N+1 from slot B as before.
    let mut vm = machine.boot();
    let mut boots = Boots::new();
    let status = boots.next_status(&mut vm, BOOT_TIMEOUT);
    assert_running(&status, &n1, "b");
    assert!(
        !entries(&status)
            .iter()
            .any(|entry| entry.starts_with("mxnode-a")),
        "the half-written slot A has no boot entry: {status}"
    );
    // The redone install and the status line both wait for boot-complete.target, in either
    // order: look for the install from the start of this boot.
    boots = Boots::new();

    // The interrupted install is done again from this blessed boot (the staged release is
    // still there), and N+2 boots on trial: its node never starts, mxnode-health reboots each
    // try, and when the tries are used up systemd-boot falls back to N+1 on slot B.
    boots.next_line(&mut vm, INSTALL_STARTS, UPDATE_TIMEOUT);
    for attempt in 1..=BOOT_TRIES {
        // The kernel prints its command line first thing: this try boots slot A.
        boots.next_line(&mut vm, "mxnode.slot=a", UPDATE_TIMEOUT);
        if attempt == 1 {
            // Nothing new for N+1 once it is back: the channel offers N+1 again.
            channel.switch_to(&next.release_dir());
        }
        let failed = boots.next_line(&mut vm, "mxnode-health: FAILED", BOOT_TIMEOUT);
        // Since issue 16 the unit restarts for ever: the check gives up after 5 restarts.
        assert!(
            failed.contains("mxnode.service keeps exiting")
                || failed.contains("mxnode.service failed"),
            "try {attempt}: the health check gives up as soon as the node keeps failing: {failed}"
        );
        boots.next_line(
            &mut vm,
            "mxnode-health: this boot entry is on trial: rebooting",
            Duration::from_secs(60),
        );
    }
    let status = boots.next_status(&mut vm, ROLLBACK_TIMEOUT);
    assert_running(&status, &n1, "b");
    assert!(
        entries(&status)
            .iter()
            .any(|entry| entry.starts_with("mxnode-a+0-")),
        "slot A's entry used up its tries: {status}"
    );
    let cookie = admin_session(&machine, &vm, &mut set_up);
    let update = update_status(&machine, &cookie);
    assert_eq!(update["version"], n1.as_str(), "{update}");
    assert_eq!(update["slot"], "b", "{update}");
    let history = update["history"].to_string();
    assert!(
        history.contains("rolled back") && history.contains(&n2),
        "the history reports the rollback from {n2}: {update}"
    );
    // Issue 16: each failed try recorded its cause before rebooting; the node never ran, so
    // the rollback is the release's fault and bars it from the channel.
    let rollback = update["history"]
        .as_array()
        .and_then(|h| h.iter().find(|e| e["event"] == "rolled_back"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(rollback["cause"], "service", "{update}");
    vm.power_down();
    eprintln!("update test took {:?}", started.elapsed());
}
