//! The update channel through the real node binary (issue 7): releases made with
//! `mxnode release keygen|sign|bundle`, served by a real HTTPS channel on 127.0.0.1 (a static
//! file server with the test CA's certificate) or uploaded as a bundle, judged and staged by
//! the node, which asks for the install with `request.json`. Refusals answer with a status and
//! leave an audit entry.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use mxnode_tests::{
    ApiClient, Node, NodeConfig, Releases, StaticServer, TestCa, mxnode_bin, workspace_dir,
};
use serde_json::Value;

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The offline bundle of a release directory, as the bytes an upload sends.
fn bundle(releases: &Releases, dir: &Path) -> Vec<u8> {
    fs::read(releases.bundle(dir)).expect("bundle")
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The audit events with `action`, newest first.
fn audit(api: &ApiClient, key: &str, action: &str) -> Vec<Value> {
    let answer = api.get(&format!("/api/v1/audit?action={action}"), Some(key));
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn channel_check_stages_a_signed_release_and_refusals_are_audited() {
    let ca = TestCa::new();
    let releases = Releases::new();
    let served = tempfile::tempdir().expect("temp dir");
    let channel_dir = served.path().join("stable");
    let good = releases.sign("good", "9.0.0");
    releases.publish(&good, &channel_dir);
    let server = StaticServer::start(&ca, served.path());
    let node_dirs = tempfile::tempdir().expect("temp dir");
    let spool = node_dirs.path().join("spool");
    let state = node_dirs.path().join("state");
    let channel_url = server.url("/stable/");
    let node = Node::start(
        &NodeConfig::new()
            .http(&ca)
            .api_key("admin", &["admin"])
            .api_key("reader", &["update:read"])
            .extra_toml(&format!(
                "[update]\nkeys = {:?}\nchannel = {channel_url:?}\nchannel_ca = {:?}\n\
                 check_interval = \"1h\"\nstate_dir = {:?}\nspool_dir = {:?}\n",
                path_str(&releases.keys_file()),
                path_str(&ca.ca_pem),
                path_str(&state),
                path_str(&spool),
            )),
    );
    let api = ApiClient::new(&node, &ca);
    let admin = node.api_key("admin");
    let reader = node.api_key("reader");

    // Status before anything happened: every field of the contract, for a development node.
    let status = api.get("/api/v1/update", Some(reader));
    assert_eq!(status.status, 200, "{}", status.body);
    let view = status.json();
    assert_eq!(view["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(view["channel"], channel_url.as_str());
    assert_eq!(view["state"], "idle");
    assert_eq!(view["progress"], serde_json::json!({"done": 0, "total": 0}));
    for null in [
        "slot",
        "blessed",
        "floor",
        "last_check",
        "available",
        "last_error",
    ] {
        assert!(
            view[null].is_null(),
            "{null} is null before any check: {view}"
        );
    }
    assert_eq!(view["history"], serde_json::json!([]));

    // update:read may look, not act.
    let denied = api.post("/api/v1/update/check", Some(reader), &Value::Null);
    assert_eq!(denied.status, 403, "{}", denied.body);

    // A check finds 9.0.0, downloads and stages it, and requests the install.
    let checked = api.post("/api/v1/update/check", Some(admin), &Value::Null);
    assert_eq!(checked.status, 200, "{}", checked.body);
    let view = checked.json();
    assert_eq!(view["state"], "requested", "{view}");
    assert_eq!(view["available"], "9.0.0");
    assert!(view["last_check"].is_string());
    let total = 3_000_000 + 8 + 9;
    assert_eq!(
        view["progress"],
        serde_json::json!({"done": total, "total": total})
    );
    let manifest_text = fs::read_to_string(good.join("manifest.json")).expect("manifest");
    let manifest: Value = serde_json::from_str(&manifest_text).expect("json");
    for (key, file) in [
        ("root", "root.erofs"),
        ("kernel", "vmlinuz"),
        ("initrd", "initrd.img"),
    ] {
        let staged = fs::read(spool.join("staged").join(file)).expect("staged artifact");
        assert_eq!(
            sha256_hex(&staged),
            manifest["artifacts"][key]["sha256"]
                .as_str()
                .expect("sha256"),
            "{file} staged with the listed hash"
        );
    }
    let request: Value =
        serde_json::from_slice(&fs::read(spool.join("request.json")).expect("request.json"))
            .expect("request json");
    assert_eq!(
        request["manifest"],
        manifest_text.as_str(),
        "the exact signed bytes"
    );
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(request["signature"].as_str().expect("signature"))
            .expect("base64"),
        fs::read(good.join("manifest.json.sig")).expect("sig")
    );
    assert_eq!(audit(&api, admin, "update.requested").len(), 1);

    // The channel now serves 9.0.1 whose root image was changed after signing.
    let tampered = releases.sign("tampered", "9.0.1");
    let mut root = fs::read(tampered.join("root.erofs")).expect("root");
    root[123_456] ^= 0x01;
    fs::write(tampered.join("root.erofs"), root).expect("tamper");
    releases.publish(&tampered, &channel_dir);
    let refused = api.post("/api/v1/update/check", Some(admin), &Value::Null);
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(refused.error_code(), "artifact_mismatch");
    assert!(
        !spool.join("staged/root.erofs").exists(),
        "a mismatching artifact is never staged"
    );
    assert!(
        !spool.join("request.json").exists(),
        "the earlier request is withdrawn when its staged files are replaced"
    );
    let view = api.get("/api/v1/update", Some(reader)).json();
    assert_eq!(view["state"], "refused", "{view}");
    assert_eq!(view["last_error"]["code"], "artifact_mismatch");
    assert!(
        view["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("root.erofs")),
        "{view}"
    );
    let events = audit(&api, admin, "update.refused");
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0]["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("update refused: ") && d.contains("root.erofs")),
        "{events:?}"
    );

    // An offline bundle whose signature belongs to another manifest.
    let forged = releases.sign("forged", "9.0.2");
    fs::copy(
        good.join("manifest.json.sig"),
        forged.join("manifest.json.sig"),
    )
    .expect("sig");
    let upload = |body: Vec<u8>, key: Option<&str>| {
        api.request(
            "POST",
            "/api/v1/update/upload",
            key,
            Some(("application/x-tar", body)),
        )
    };
    let refused = upload(bundle(&releases, &forged), Some(admin));
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(refused.error_code(), "bad_signature");
    assert_eq!(audit(&api, admin, "update.refused").len(), 2);

    // Not a bundle at all, and no key.
    let garbage = upload(b"definitely not a tar archive".repeat(40), Some(admin));
    assert_eq!(garbage.status, 400, "{}", garbage.body);
    assert_eq!(garbage.error_code(), "invalid_bundle");
    let anonymous = upload(bundle(&releases, &good), None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);

    // A good bundle is staged and requested like a channel release.
    let offline = releases.sign("offline", "9.1.0");
    let taken = upload(bundle(&releases, &offline), Some(admin));
    assert_eq!(taken.status, 200, "{}", taken.body);
    assert_eq!(taken.json()["available"], "9.1.0");
    let request: Value =
        serde_json::from_slice(&fs::read(spool.join("request.json")).expect("request.json"))
            .expect("request json");
    assert_eq!(
        request["manifest"],
        fs::read_to_string(offline.join("manifest.json"))
            .expect("manifest")
            .as_str()
    );
    assert_eq!(
        fs::read(spool.join("staged/root.erofs")).expect("staged root"),
        fs::read(releases.path("root.in")).expect("root")
    );

    // A refused upload leaves the requested release standing (update state after a refusal).
    let refused_again = upload(bundle(&releases, &forged), Some(admin));
    assert_eq!(refused_again.error_code(), "bad_signature");
    assert!(spool.join("request.json").exists());
    let view = api.get("/api/v1/update", Some(reader)).json();
    assert_eq!(view["state"], "requested", "{view}");
    assert_eq!(view["available"], "9.1.0", "{view}");
    assert_eq!(view["last_error"]["code"], "bad_signature", "{view}");

    let leftovers: Vec<_> = fs::read_dir(&spool)
        .expect("spool")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().starts_with("upload-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "spooled uploads are removed: {leftovers:?}"
    );
}

/// systemd-boot's selected entry, as `mxnode::update::install` reads it.
const LOADER_ENTRY_SELECTED: &str =
    "/sys/firmware/efi/efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Runs `mxnode update …` and returns (success, stdout, stderr).
fn update_cli(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(mxnode_bin())
        .arg("update")
        .args(args)
        .output()
        .expect("run mxnode update");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn installer_cli_reads_only_the_update_table_and_refuses_without_ab_boot() {
    if Path::new(LOADER_ENTRY_SELECTED).exists() {
        // A test machine booted by systemd-boot is an A/B machine to the installer; the
        // refusal pinned here needs one that is not (the qemu tests cover the other kind).
        eprintln!("skipped: {LOADER_ENTRY_SELECTED} exists on this machine");
        return;
    }
    let releases = Releases::new();
    let good = releases.sign("good", "9.0.0");
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = dir.path().join("spool");
    let state = dir.path().join("state");
    fs::create_dir_all(spool.join("staged")).expect("spool");
    for name in ["root.erofs", "vmlinuz", "initrd.img"] {
        fs::copy(good.join(name), spool.join("staged").join(name)).expect("stage");
    }
    let request = serde_json::json!({
        "manifest": fs::read_to_string(good.join("manifest.json")).expect("manifest"),
        "signature": base64::engine::general_purpose::STANDARD
            .encode(fs::read(good.join("manifest.json.sig")).expect("sig")),
    });
    fs::write(spool.join("request.json"), request.to_string()).expect("request");
    // The node's secrets are not the installer's: a master key root cannot read is fine.
    let config = dir.path().join("mxnode.toml");
    fs::write(
        &config,
        format!(
            "[node]\nmaster_key = \"file:/nonexistent/master-key\"\n\n[update]\nkeys = {:?}\n\
             state_dir = {:?}\nspool_dir = {:?}\n",
            path_str(&releases.keys_file()),
            path_str(&state),
            path_str(&spool),
        ),
    )
    .expect("config");
    let esp = dir.path().join("esp");
    fs::create_dir_all(esp.join("loader/entries")).expect("esp");
    fs::write(dir.path().join("slot-a"), vec![0u8; 4 << 20]).expect("slot");
    fs::write(dir.path().join("slot-b"), vec![0u8; 4 << 20]).expect("slot");
    let config = path_str(&config);
    let install_args = [
        "install",
        "--config",
        &config,
        "--current-slot",
        "a",
        "--esp",
        &path_str(&esp),
        "--slot-a",
        &path_str(&dir.path().join("slot-a")),
        "--slot-b",
        &path_str(&dir.path().join("slot-b")),
        "--root-partuuid-a",
        "11111111-1111-4111-8111-111111111111",
        "--root-partuuid-b",
        "22222222-2222-4222-8222-222222222222",
        "--cmdline",
        "console=ttyS0",
    ];

    // This machine does not boot through systemd-boot: the request is refused and cleared.
    let (ok, _, stderr) = update_cli(&install_args);
    assert!(!ok, "install must fail without A/B boot");
    assert!(stderr.contains("not an A/B node"), "{stderr}");
    assert!(!spool.join("request.json").exists());
    assert!(
        fs::read(dir.path().join("slot-b")).expect("slot") == vec![0u8; 4 << 20],
        "the slot is untouched"
    );
    let (ok, stdout, stderr) = update_cli(&["status", "--config", &config]);
    assert!(ok, "{stderr}");
    let status: Value = serde_json::from_str(&stdout).expect("status JSON");
    assert_eq!(status["status"]["state"], "refused", "{status}");
    assert_eq!(status["status"]["error"]["code"], "not_ab_node");
    assert_eq!(status["history"][0]["event"], "refused");

    // Without a request the installer has nothing to do.
    let (ok, _, stderr) = update_cli(&install_args);
    assert!(ok, "no request is not an error: {stderr}");
    // finish raises the floor to the running version.
    let (ok, _, stderr) = update_cli(&["finish", "--config", &config, "--current-slot", "a"]);
    assert!(ok, "{stderr}");
    let (_, stdout, _) = update_cli(&["status", "--config", &config]);
    let status: Value = serde_json::from_str(&stdout).expect("status JSON");
    assert_eq!(status["floor"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn without_auto_apply_a_check_only_stages_and_apply_requests() {
    let ca = TestCa::new();
    let releases = Releases::new();
    let served = tempfile::tempdir().expect("temp dir");
    releases.publish(
        &releases.sign("good", "9.0.0"),
        &served.path().join("stable"),
    );
    let server = StaticServer::start(&ca, served.path());
    let node_dirs = tempfile::tempdir().expect("temp dir");
    let spool = node_dirs.path().join("spool");
    fs::create_dir_all(node_dirs.path().join("state")).expect("state dir");
    let node = Node::start(
        &NodeConfig::new()
            .http(&ca)
            .api_key("operator", &["update:write", "update:read", "audit:read"])
            .extra_toml(&format!(
                "[update]\nkeys = {:?}\nchannel = {:?}\nchannel_ca = {:?}\nauto_apply = false\n\
                 state_dir = {:?}\nspool_dir = {:?}\n",
                path_str(&releases.keys_file()),
                server.url("/stable"),
                path_str(&ca.ca_pem),
                path_str(&node_dirs.path().join("state")),
                path_str(&spool),
            )),
    );
    let api = ApiClient::new(&node, &ca);
    let key = node.api_key("operator");

    let early = api.post("/api/v1/update/apply", Some(key), &Value::Null);
    assert_eq!(early.status, 409, "{}", early.body);
    assert_eq!(early.error_code(), "nothing_staged");

    let checked = api.post("/api/v1/update/check", Some(key), &Value::Null);
    assert_eq!(checked.status, 200, "{}", checked.body);
    assert_eq!(checked.json()["state"], "staged");
    assert!(spool.join("staged/root.erofs").exists());
    assert!(!spool.join("request.json").exists(), "staged only");
    assert_eq!(audit(&api, key, "update.staged").len(), 1);

    let applied = api.post("/api/v1/update/apply", Some(key), &Value::Null);
    assert_eq!(applied.status, 200, "{}", applied.body);
    assert_eq!(applied.json()["state"], "requested");
    assert!(spool.join("request.json").exists());
    assert_eq!(audit(&api, key, "update.requested").len(), 1);

    // Root installed it (as `mxnode update install` records) and the reboot is still to come:
    // a check neither downloads nor requests it again.
    fs::remove_file(spool.join("request.json")).expect("root took the request");
    fs::write(
        node_dirs.path().join("state/pending.json"),
        serde_json::json!({"version": "9.0.0", "slot": "b", "from_version": "0.1.0",
                           "from_slot": "a", "at": "2026-01-01T00:00:00Z"})
        .to_string(),
    )
    .expect("pending.json");
    let again = api.post("/api/v1/update/check", Some(key), &Value::Null);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["state"], "reboot-pending", "{}", again.body);
    assert!(!spool.join("request.json").exists(), "not requested again");

    // A refusal root's installer recorded (it cannot reach the store) is audited by the node.
    fs::write(
        node_dirs.path().join("state/status.json"),
        serde_json::json!({"state": "refused", "version": "9.0.0", "slot": "b",
                           "progress": {"done": 0, "total": 0},
                           "error": {"code": "not_blessed", "message": "the current boot is not blessed yet"},
                           "at": "2026-01-01T00:00:01Z", "reboot_at": null})
        .to_string(),
    )
    .expect("status.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let refused = loop {
        let events = audit(&api, key, "update.refused");
        if !events.is_empty() || std::time::Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    assert_eq!(
        refused.len(),
        1,
        "the installer's refusal is audited once: {refused:?}"
    );
    assert!(
        refused[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not_blessed")),
        "{refused:?}"
    );

    // Regression (issue 7): 9.0.0 failed its boots and the node fell back; the channel still
    // offers it, and a check must not send the node round that loop again.
    fs::remove_file(node_dirs.path().join("state/pending.json")).expect("finish cleared it");
    fs::write(
        node_dirs.path().join("state/history.json"),
        serde_json::json!([{"at": "2026-01-01T00:10:00Z", "event": "rolled_back",
                            "version": "9.0.0", "slot": "a",
                            "message": "rolled back from 9.0.0 to 0.1.0 (slot a)"}])
        .to_string(),
    )
    .expect("history.json");
    let looped = api.post("/api/v1/update/check", Some(key), &Value::Null);
    assert_eq!(looped.status, 422, "{}", looped.body);
    assert_eq!(looped.error_code(), "rolled_back_before", "{}", looped.body);
    assert!(!spool.join("request.json").exists(), "not requested again");
}

/// A node trusting the release keys in `keys_file`, with an admin key; its update directories
/// in `dirs`.
fn node_trusting(ca: &TestCa, keys_file: &Path, dirs: &Path) -> Node {
    Node::start(
        &NodeConfig::new()
            .http(ca)
            .api_key("admin", &["admin"])
            .extra_toml(&format!(
                "[update]\nkeys = {:?}\nstate_dir = {:?}\nspool_dir = {:?}\n",
                path_str(keys_file),
                path_str(&dirs.join("state")),
                path_str(&dirs.join("spool")),
            )),
    )
}

/// `development_keys` of `GET /api/v1/status` and the `mxnode_update_development_keys` gauge.
fn development_keys(node: &Node, ca: &TestCa) -> (Value, String) {
    let api = ApiClient::new(node, ca);
    let admin = node.api_key("admin");
    let status = api.get("/api/v1/status", Some(admin));
    assert_eq!(status.status, 200, "{}", status.body);
    let metrics = api.get("/metrics", Some(admin));
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    let gauge = metrics
        .body
        .lines()
        .find(|l| l.starts_with("mxnode_update_development_keys "))
        .unwrap_or_else(|| panic!("no development-keys gauge in /metrics:\n{}", metrics.body))
        .to_string();
    (status.json()["development_keys"].clone(), gauge)
}

/// Issue 16: a node whose trusted release keys include the development key (whose private
/// half is in the repository) says so in its status and metrics, judged by comparing the keys
/// it really trusts: the repository's default keys file and a file listing the development key
/// beside another answer true; a freshly generated key alone answers false.
#[test]
fn status_and_metrics_report_development_keys_only_when_the_development_key_is_trusted() {
    let ca = TestCa::new();
    let releases = Releases::new();
    let dirs = tempfile::tempdir().expect("temp dir");

    let default_keys = workspace_dir().join("firmware-config/update-keys.txt");
    let node = node_trusting(&ca, &default_keys, &dirs.path().join("default"));
    let (development, gauge) = development_keys(&node, &ca);
    assert_eq!(
        development,
        Value::Bool(true),
        "the repository's default keys"
    );
    assert_eq!(gauge, "mxnode_update_development_keys 1");
    let log = node.log();
    assert!(
        log.contains("trusts the development release key"),
        "the node warns at start: {log}"
    );
    drop(node);

    // The development key among others is still the development key.
    let mixed = dirs.path().join("mixed-keys.txt");
    fs::write(
        &mixed,
        format!(
            "# a production key and the development key\n{}{}",
            fs::read_to_string(releases.keys_file()).expect("fresh key"),
            fs::read_to_string(workspace_dir().join("firmware-config/update-dev-key.pub"))
                .expect("development public key"),
        ),
    )
    .expect("write the keys file");
    let node = node_trusting(&ca, &mixed, &dirs.path().join("mixed"));
    assert_eq!(development_keys(&node, &ca).0, Value::Bool(true));
    drop(node);

    let node = node_trusting(&ca, &releases.keys_file(), &dirs.path().join("fresh"));
    let (development, gauge) = development_keys(&node, &ca);
    assert_eq!(development, Value::Bool(false), "a freshly generated key");
    assert_eq!(gauge, "mxnode_update_development_keys 0");
    assert!(!node.log().contains("trusts the development release key"));
}

/// The `mxnode_update_channel_stale` gauge.
fn channel_stale_gauge(api: &ApiClient, key: &str) -> String {
    let metrics = api.get("/metrics", Some(key));
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    metrics
        .body
        .lines()
        .find(|l| l.starts_with("mxnode_update_channel_stale "))
        .unwrap_or_else(|| panic!("no channel-stale gauge in /metrics:\n{}", metrics.body))
        .to_string()
}

/// Issue 16 (update freeze): the node verifies the channel's manifest before anything else. A
/// manifest naming the running version is "up to date" only when its signature verifies under
/// a trusted key and it has not expired: forged, empty or foreign signatures are refused
/// (audited), and a correctly signed but expired manifest — a channel or mirror that is not
/// refreshed, or an old manifest replayed — is `channel_stale` (502, audited, a gauge, the
/// update state), whatever version it names; never "up to date".
#[test]
fn channel_check_verifies_first_and_an_expired_channel_is_stale_never_up_to_date() {
    let running = env!("CARGO_PKG_VERSION");
    let ca = TestCa::new();
    let releases = Releases::new();
    let served = tempfile::tempdir().expect("temp dir");
    let channel_dir = served.path().join("stable");
    let server = StaticServer::start(&ca, served.path());
    let node_dirs = tempfile::tempdir().expect("temp dir");
    let node = Node::start(
        &NodeConfig::new()
            .http(&ca)
            .api_key("admin", &["admin"])
            .extra_toml(&format!(
                "[update]\nkeys = {:?}\nchannel = {:?}\nchannel_ca = {:?}\n\
                 check_interval = \"1h\"\nstate_dir = {:?}\nspool_dir = {:?}\n",
                path_str(&releases.keys_file()),
                server.url("/stable/"),
                path_str(&ca.ca_pem),
                path_str(&node_dirs.path().join("state")),
                path_str(&node_dirs.path().join("spool")),
            )),
    );
    let api = ApiClient::new(&node, &ca);
    let admin = node.api_key("admin");
    let check = || api.post("/api/v1/update/check", Some(admin), &Value::Null);
    let state = || api.get("/api/v1/update", Some(admin)).json();

    // The running version, correctly signed and valid: up to date (the control).
    let current = releases.sign("current", running);
    releases.publish(&current, &channel_dir);
    let answer = check();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["state"], "idle", "{}", answer.body);

    // The same manifest with a signature of another manifest, then an empty signature.
    let other = releases.sign("other", "9.0.0");
    fs::copy(
        other.join("manifest.json.sig"),
        channel_dir.join("manifest.json.sig"),
    )
    .expect("forge the signature");
    let answer = check();
    assert_eq!(
        answer.status, 422,
        "a forged signature is no 'up to date': {}",
        answer.body
    );
    assert_eq!(answer.error_code(), "bad_signature");
    assert_eq!(state()["state"], "refused");
    fs::write(channel_dir.join("manifest.json.sig"), b"").expect("empty signature");
    let answer = check();
    assert_eq!(
        answer.status, 422,
        "an unsigned manifest is no 'up to date': {}",
        answer.body
    );
    assert_eq!(answer.error_code(), "bad_signature");

    // The running version signed by a key this node does not trust.
    let foreign = Releases::new();
    let foreign_current = foreign.sign("current", running);
    foreign.publish(&foreign_current, &channel_dir);
    let answer = check();
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert_eq!(answer.error_code(), "unknown_key");
    assert_eq!(audit(&api, admin, "update.refused").len(), 3);
    assert_eq!(
        channel_stale_gauge(&api, admin),
        "mxnode_update_channel_stale 0",
        "refusals are not a stale channel"
    );

    // Correctly signed, naming the running version, but expired: the channel is stale.
    let stale = releases.sign_valid_for("stale", running, "1s");
    let newer_stale = releases.sign_valid_for("newer-stale", "9.0.1", "1s");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    releases.publish(&stale, &channel_dir);
    let answer = check();
    assert_eq!(
        answer.status, 502,
        "an expired manifest is no 'up to date': {}",
        answer.body
    );
    assert_eq!(answer.error_code(), "channel_stale");
    let view = state();
    assert_eq!(view["state"], "channel_stale", "{view}");
    assert_eq!(view["last_error"]["code"], "channel_stale", "{view}");
    assert!(
        view["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired") && m.contains(running)),
        "{view}"
    );
    assert_eq!(
        channel_stale_gauge(&api, admin),
        "mxnode_update_channel_stale 1"
    );
    let events = audit(&api, admin, "update.channel_stale");
    assert_eq!(events.len(), 1, "{events:?}");

    // An expired manifest of a newer version is the same stale channel, not a mere refusal.
    releases.publish(&newer_stale, &channel_dir);
    let answer = check();
    assert_eq!(answer.error_code(), "channel_stale", "{}", answer.body);
    assert_eq!(audit(&api, admin, "update.channel_stale").len(), 2);
    assert!(
        !node_dirs.path().join("spool/staged/root.erofs").exists(),
        "nothing of an expired release is staged"
    );

    // A fresh, valid manifest again: up to date, no longer stale.
    releases.publish(&current, &channel_dir);
    let answer = check();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["state"], "idle");
    assert_eq!(
        channel_stale_gauge(&api, admin),
        "mxnode_update_channel_stale 0"
    );
}

/// A node serving the API over plain HTTP on loopback, with an admin key and `[update]` on
/// `spool` (and `state` beside it), trusting `releases`' key.
fn upload_node(releases: &Releases, spool: &Path, state: &Path) -> Node {
    Node::start(
        &NodeConfig::new()
            .http_plain()
            .api_key("admin", &["admin"])
            .extra_toml(&format!(
                "[update]\nkeys = {:?}\nstate_dir = {:?}\nspool_dir = {:?}\n",
                path_str(&releases.keys_file()),
                path_str(state),
                path_str(spool),
            )),
    )
}

/// The `upload-*` spool files left in `spool`.
fn spooled_uploads(spool: &Path) -> Vec<String> {
    fs::read_dir(spool)
        .expect("spool")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("upload-"))
        .collect()
}

/// Sends `POST /api/v1/update/upload` with `body` over plain HTTP: `chunks` pieces with `pause`
/// after each, then reads the answer; returns (status, body). With `stop_after` it stops
/// sending after that many chunks (the connection stays open) and waits for the answer.
fn slow_upload(
    addr: std::net::SocketAddr,
    key: &str,
    body: &[u8],
    chunks: usize,
    pause: Duration,
    stop_after: Option<usize>,
) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(180)))
        .expect("timeout");
    let head = format!(
        "POST /api/v1/update/upload HTTP/1.1\r\nHost: node.test\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/x-tar\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("head");
    for (i, chunk) in body.chunks(body.len().div_ceil(chunks)).enumerate() {
        if stop_after == Some(i) {
            break;
        }
        if stream.write_all(chunk).is_err() {
            break;
        }
        std::thread::sleep(pause);
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Issue 16 (offline bundle upload): a bundle that takes longer than the 60 s request timeout
/// to arrive, but keeps moving, is taken (no late 503), and its spool file is gone after.
#[test]
fn a_slow_bundle_upload_is_taken_as_long_as_it_keeps_moving() {
    let releases = Releases::new();
    let dirs = tempfile::tempdir().expect("temp dir");
    let (spool, state) = (dirs.path().join("spool"), dirs.path().join("state"));
    let node = upload_node(&releases, &spool, &state);
    let body = bundle(&releases, &releases.sign("slow", "9.3.0"));
    let started = std::time::Instant::now();
    let (status, answer) = slow_upload(
        node.http_addr(),
        node.api_key("admin"),
        &body,
        35,
        Duration::from_secs(2),
        None,
    );
    assert!(
        started.elapsed() > Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"available\":\"9.3.0\""), "{answer}");
    assert!(
        spooled_uploads(&spool).is_empty(),
        "{:?}",
        spooled_uploads(&spool)
    );
}

/// Issue 16 (offline bundle upload): an upload that stops sending is cut after 60 s of silence
/// with `408 upload_stalled`, and leaves no spool file behind.
#[test]
fn a_stalled_bundle_upload_is_cut_and_leaves_no_spool_file() {
    let releases = Releases::new();
    let dirs = tempfile::tempdir().expect("temp dir");
    let (spool, state) = (dirs.path().join("spool"), dirs.path().join("state"));
    let node = upload_node(&releases, &spool, &state);
    let body = bundle(&releases, &releases.sign("stalled", "9.3.1"));
    let (status, answer) = slow_upload(
        node.http_addr(),
        node.api_key("admin"),
        &body,
        4,
        Duration::ZERO,
        Some(2),
    );
    assert_eq!(status, 408, "{answer}");
    assert!(answer.contains("upload_stalled"), "{answer}");
    assert!(
        spooled_uploads(&spool).is_empty(),
        "{:?}",
        spooled_uploads(&spool)
    );
}

/// Issue 16 (offline bundle upload): spool files a crash or stop left behind are swept at start.
#[test]
fn stale_upload_spool_files_are_removed_at_start() {
    let releases = Releases::new();
    let dirs = tempfile::tempdir().expect("temp dir");
    let (spool, state) = (dirs.path().join("spool"), dirs.path().join("state"));
    fs::create_dir_all(&spool).expect("spool");
    fs::write(spool.join("upload-4242-0.tar"), vec![0u8; 4096]).expect("stale upload");
    fs::write(spool.join("keep.txt"), b"not an upload").expect("other file");
    let _node = upload_node(&releases, &spool, &state);
    assert!(
        spooled_uploads(&spool).is_empty(),
        "{:?}",
        spooled_uploads(&spool)
    );
    assert!(
        spool.join("keep.txt").exists(),
        "only upload spool files are swept"
    );
}

/// Unmounts a tmpfs when dropped.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Issue 16 (offline bundle upload): on a spool filesystem that cannot hold the bundle, its
/// unpacked artifacts and the 256 MiB margin, an upload is refused with `507 no_space` before a
/// byte is spooled (the test mounts a 64 MiB tmpfs as the spool: it runs as root, as CI does).
#[test]
fn an_upload_the_spool_cannot_hold_is_refused_before_it_is_spooled() {
    let releases = Releases::new();
    let dirs = tempfile::tempdir().expect("temp dir");
    let (spool, state) = (dirs.path().join("spool"), dirs.path().join("state"));
    fs::create_dir_all(&spool).expect("spool");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "mxnode-test-spool"])
        .arg(&spool)
        .status()
        .expect("run mount");
    assert!(
        mounted.success(),
        "mounting a tmpfs needs root (CI runs as root)"
    );
    let _tmpfs = Tmpfs(spool.clone());
    let node = upload_node(&releases, &spool, &state);
    let body = bundle(&releases, &releases.sign("big", "9.3.2"));
    let (status, answer) = slow_upload(
        node.http_addr(),
        node.api_key("admin"),
        &body,
        1,
        Duration::ZERO,
        None,
    );
    assert_eq!(status, 507, "{answer}");
    assert!(answer.contains("no_space"), "{answer}");
    assert!(
        spooled_uploads(&spool).is_empty(),
        "{:?}",
        spooled_uploads(&spool)
    );
}
