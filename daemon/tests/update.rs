//! The update channel's refusals and the root-side installer, with real keys and signatures
//! made by the release code (`mxnode::update::release`), on plain files: a slot "device" is a
//! file, the ESP a directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use mxnode::update::install::{
    self, Context, Finished, InstallError, Layout, Request, Slot, StateDir, TrialCause,
};
use mxnode::update::manifest::{ArtifactKind, ManifestDocument, TrustedKeys};
use mxnode::update::policy::{self, Boot, Facts, Refusal};
use mxnode::update::release::{self, BundleError, SignOptions};
use mxnode::update::{DEFAULT_COMPATIBLE, MANIFEST_FILE, PRODUCT, SIGNATURE_FILE};
use semver::Version;

/// 2026-01-01T00:00:00Z, the creation time of every test release.
const CREATED: u64 = 1_767_225_600;
const DAY: Duration = Duration::from_secs(24 * 3600);

fn created() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(CREATED)
}

/// A release key and a signed release 1.2.3 (floor 1.2.0, valid 30 days) in a temp dir.
struct Fixture {
    dir: tempfile::TempDir,
    keys: TrustedKeys,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        release::keygen(&dir.path().join("key")).expect("keygen");
        let public = fs::read_to_string(dir.path().join("key").join(release::PUBLIC_KEY_FILE))
            .expect("public key");
        let keys = TrustedKeys::parse(&public).expect("keys file");
        fs::write(dir.path().join("root.in"), vec![0x5a; 300_000]).expect("root");
        fs::write(dir.path().join("vmlinuz.in"), b"kernel bytes").expect("kernel");
        fs::write(dir.path().join("initrd.in"), b"initrd bytes").expect("initrd");
        let fixture = Fixture { dir, keys };
        fixture.sign("1.2.3", Some("1.2.0"), &fixture.release_dir());
        fixture
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn release_dir(&self) -> PathBuf {
        self.path("release")
    }

    fn sign(&self, version: &str, floor: Option<&str>, out: &Path) {
        release::sign(&SignOptions {
            key: self.path("key").join(release::PRIVATE_KEY_FILE),
            version: version.into(),
            security_floor: floor.map(str::to_string),
            valid_for: 30 * DAY,
            product: PRODUCT.into(),
            compatible: DEFAULT_COMPATIBLE.into(),
            root: self.path("root.in"),
            kernel: self.path("vmlinuz.in"),
            initrd: self.path("initrd.in"),
            out: out.to_path_buf(),
            now: created(),
        })
        .expect("signs");
    }

    fn manifest(&self) -> Vec<u8> {
        fs::read(self.release_dir().join(MANIFEST_FILE)).expect("manifest")
    }

    fn signature(&self) -> Vec<u8> {
        fs::read(self.release_dir().join(SIGNATURE_FILE)).expect("signature")
    }

    /// The release's manifest changed by `edit` and signed again with the release key.
    fn resigned(&self, edit: impl FnOnce(&mut ManifestDocument)) -> (Vec<u8>, Vec<u8>) {
        let mut doc: ManifestDocument =
            serde_json::from_slice(&self.manifest()).expect("manifest document");
        edit(&mut doc);
        let bytes = serde_json::to_vec_pretty(&doc).expect("serialises");
        let pair =
            release::load_key(&self.path("key").join(release::PRIVATE_KEY_FILE)).expect("key");
        let sig = pair.sign(&bytes).as_ref().to_vec();
        (bytes, sig)
    }
}

/// The node's facts for the default case: running 1.0.0, floor 1.1.0, a day after creation.
struct Node {
    running: Version,
    floor: Option<Version>,
    now: SystemTime,
    compatible: &'static str,
}

impl Default for Node {
    fn default() -> Node {
        Node {
            running: Version::new(1, 0, 0),
            floor: Some(Version::new(1, 1, 0)),
            now: created() + DAY,
            compatible: DEFAULT_COMPATIBLE,
        }
    }
}

/// Judges `manifest` + `signature` as a node with `node`'s facts and compares the outcome
/// (`Ok` or the refusal's code) with `expect`.
fn check(
    name: &str,
    manifest: &[u8],
    signature: &[u8],
    keys: &TrustedKeys,
    node: &Node,
    expect: Result<(), &str>,
) {
    let facts = Facts {
        product: PRODUCT,
        compatible: node.compatible,
        floor: node.floor.as_ref(),
        running: &node.running,
        now: node.now,
    };
    let got = policy::check_release(manifest, signature, keys, &facts);
    match (&got, expect) {
        (Ok(_), Ok(())) => {}
        (Err(refusal), Err(code)) if refusal.code() == code => {
            // Every refusal says what is wrong in words.
            assert!(refusal.to_string().len() > 10, "{name}: {refusal}");
        }
        _ => panic!("{name}: expected {expect:?}, got {got:?}"),
    }
}

#[test]
fn each_refusal_of_the_policy_with_real_signatures() {
    let f = Fixture::new();
    let (manifest, sig) = (f.manifest(), f.signature());
    let node = Node::default();
    check("a good release", &manifest, &sig, &f.keys, &node, Ok(()));

    // The signature covers the exact bytes: one changed byte of the manifest breaks it.
    let tampered = String::from_utf8(manifest.clone())
        .expect("utf-8")
        .replace("\"1.2.3\"", "\"1.2.4\"")
        .into_bytes();
    check(
        "tampered manifest",
        &tampered,
        &sig,
        &f.keys,
        &node,
        Err("bad_signature"),
    );
    let mut flipped = sig.clone();
    flipped[0] ^= 1;
    check(
        "flipped signature bit",
        &manifest,
        &flipped,
        &f.keys,
        &node,
        Err("bad_signature"),
    );
    check(
        "truncated signature",
        &manifest,
        &sig[..63],
        &f.keys,
        &node,
        Err("bad_signature"),
    );
    check(
        "empty signature",
        &manifest,
        b"",
        &f.keys,
        &node,
        Err("bad_signature"),
    );

    // Another key pair: its key id is unknown to the node.
    let other = tempfile::tempdir().expect("temp dir");
    release::keygen(other.path()).expect("keygen");
    let other_keys = TrustedKeys::parse(
        &fs::read_to_string(other.path().join(release::PUBLIC_KEY_FILE)).expect("pub"),
    )
    .expect("keys");
    check(
        "unknown key",
        &manifest,
        &sig,
        &other_keys,
        &node,
        Err("unknown_key"),
    );
    check(
        "no trusted key",
        &manifest,
        &sig,
        &TrustedKeys::default(),
        &node,
        Err("unknown_key"),
    );

    // Manifest contents, each signed properly with the trusted key.
    type Edit = fn(&mut ManifestDocument);
    let edits: &[(&str, Edit, Result<(), &str>)] = &[
        (
            "another product",
            |d| d.product = "othernode".into(),
            Err("wrong_product"),
        ),
        (
            "another compatible",
            |d| d.compatible = "mxnode-arm64-1".into(),
            Err("wrong_compatible"),
        ),
        (
            "version equal to the floor",
            |d| {
                d.version = "1.1.0".into();
                d.security_floor = "1.0.0".into();
            },
            Err("not_newer"),
        ),
        (
            "version below the floor",
            |d| {
                d.version = "1.0.5".into();
                d.security_floor = "1.0.0".into();
            },
            Err("not_newer"),
        ),
        (
            "pre-release of the floor",
            |d| {
                d.version = "1.1.0-rc.1".into();
                d.security_floor = "1.0.0".into();
            },
            Err("not_newer"),
        ),
        (
            "security floor above the version",
            |d| d.security_floor = "1.3.0".into(),
            Err("bad_security_floor"),
        ),
        (
            "expired yesterday",
            |d| d.expires = "2026-01-01T12:00:00Z".into(),
            Err("expired"),
        ),
        (
            "created tomorrow",
            |d| d.created = "2026-01-03T00:00:00Z".into(),
            Err("clock_before_created"),
        ),
        ("format 2", |d| d.format = 2, Err("malformed_manifest")),
        (
            "artifact under another path",
            |d| d.artifacts.root.path = "../root.erofs".into(),
            Err("malformed_manifest"),
        ),
        (
            "uppercase hash",
            |d| d.artifacts.kernel.sha256 = d.artifacts.kernel.sha256.to_uppercase(),
            Err("malformed_manifest"),
        ),
        (
            "empty artifact",
            |d| d.artifacts.initrd.size = 0,
            Err("malformed_manifest"),
        ),
        (
            "version not semver",
            |d| d.version = "2".into(),
            Err("malformed_manifest"),
        ),
        (
            "local time",
            |d| d.created = "2026-01-01T00:00:00+01:00".into(),
            Err("malformed_manifest"),
        ),
        ("newer major", |d| d.version = "2.0.0".into(), Ok(())),
    ];
    for (name, edit, expect) in edits {
        let (bytes, sig) = f.resigned(edit);
        check(name, &bytes, &sig, &f.keys, &node, *expect);
    }

    // The node's side of the same rules.
    let running_newer = Node {
        running: Version::new(1, 2, 3),
        floor: None,
        ..Node::default()
    };
    check(
        "running version equal",
        &manifest,
        &sig,
        &f.keys,
        &running_newer,
        Err("not_newer"),
    );
    let floor_high = Node {
        floor: Some(Version::new(1, 5, 0)),
        ..Node::default()
    };
    check(
        "floor above",
        &manifest,
        &sig,
        &f.keys,
        &floor_high,
        Err("not_newer"),
    );
    let late = Node {
        now: created() + 31 * DAY,
        ..Node::default()
    };
    check(
        "a month later",
        &manifest,
        &sig,
        &f.keys,
        &late,
        Err("expired"),
    );
    // Issue 16: validity is judged before the version. An expired manifest naming the running
    // version (a replayed or stale channel) is `expired`, never `not_newer` ("up to date").
    let running_and_late = Node {
        running: Version::new(1, 2, 3),
        floor: None,
        now: created() + 31 * DAY,
        ..Node::default()
    };
    check(
        "running version, a month later",
        &manifest,
        &sig,
        &f.keys,
        &running_and_late,
        Err("expired"),
    );
    // And the signature is judged before anything else: a forged signature on a manifest
    // naming the running version is `bad_signature`.
    let mut forged = sig.clone();
    forged[0] ^= 0x01;
    check(
        "running version, forged signature",
        &manifest,
        &forged,
        &f.keys,
        &Node {
            running: Version::new(1, 2, 3),
            floor: None,
            ..Node::default()
        },
        Err("bad_signature"),
    );
    let early = Node {
        now: created() - DAY,
        ..Node::default()
    };
    check(
        "clock a day behind",
        &manifest,
        &sig,
        &f.keys,
        &early,
        Err("clock_before_created"),
    );
    let arm = Node {
        compatible: "mxnode-arm64-1",
        ..Node::default()
    };
    check(
        "node of another kind",
        &manifest,
        &sig,
        &f.keys,
        &arm,
        Err("wrong_compatible"),
    );

    // Unknown fields are refused, even when signed.
    let mut value: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
    value["channel"] = serde_json::json!("beta");
    let bytes = serde_json::to_vec(&value).expect("json");
    let pair = release::load_key(&f.path("key").join(release::PRIVATE_KEY_FILE)).expect("key");
    let sig = pair.sign(&bytes).as_ref().to_vec();
    check(
        "unknown field",
        &bytes,
        &sig,
        &f.keys,
        &node,
        Err("malformed_manifest"),
    );
}

#[test]
fn artifact_space_slot_and_boot_refusals() {
    let f = Fixture::new();
    let manifest =
        mxnode::update::manifest::Manifest::parse(&f.manifest()).expect("manifest parses");
    let root = manifest.artifacts.root.clone();
    assert_eq!(
        policy::check_artifact(&manifest, ArtifactKind::Root, root.size, &root.sha256),
        Ok(())
    );
    let codes = [
        policy::check_artifact(&manifest, ArtifactKind::Root, root.size - 1, &root.sha256),
        policy::check_artifact(&manifest, ArtifactKind::Root, root.size, &"0".repeat(64)),
        policy::check_space(&manifest, root.size + policy::SPACE_MARGIN_BYTES),
        policy::check_slot(&manifest, root.size - 1),
        policy::check_boot(&Boot::Entry("mxnode-a+2-1.conf".into())),
        policy::check_boot(&Boot::Entry("mxnode-b+3.conf".into())),
        policy::check_boot(&Boot::NotAb),
    ]
    .map(|r| r.map_err(|e| e.code()));
    assert_eq!(
        codes,
        [
            Err("artifact_mismatch"),
            Err("artifact_mismatch"),
            Err("no_space"),
            Err("slot_too_small"),
            Err("not_blessed"),
            Err("not_blessed"),
            Err("not_ab_node"),
        ]
    );
    assert_eq!(
        policy::check_space(
            &manifest,
            manifest.artifacts.total_size() + policy::SPACE_MARGIN_BYTES
        ),
        Ok(())
    );
    assert_eq!(policy::check_slot(&manifest, root.size), Ok(()));
    assert_eq!(
        policy::check_boot(&Boot::Entry("mxnode-a.conf".into())),
        Ok(())
    );
}

#[test]
fn loader_entry_names_and_blessing() {
    fn efivar(name: &str) -> Vec<u8> {
        let mut bytes = vec![6, 0, 0, 0];
        for unit in name.encode_utf16().chain([0]) {
            bytes.extend(unit.to_le_bytes());
        }
        bytes
    }
    let cases: &[(&[u8], Option<&str>)] = &[
        (&efivar("mxnode-a.conf"), Some("mxnode-a.conf")),
        (&efivar("mxnode-b+3.conf"), Some("mxnode-b+3.conf")),
        (&[6, 0, 0], None),
        (&[6, 0, 0, 0, b'a'], None),
        (&[6, 0, 0, 0, 0, 0], None),
        (&[6, 0, 0, 0, 0x00, 0xd8, b'a', 0], None),
    ];
    for (bytes, expect) in cases {
        assert_eq!(
            policy::parse_loader_entry(bytes).as_deref(),
            *expect,
            "{bytes:?}"
        );
    }
    for (entry, blessed) in [
        ("mxnode-a.conf", true),
        ("mxnode-a+3.conf", false),
        ("mxnode-b+0-3.conf", false),
        ("mxnode-b+1-2.conf", false),
        ("mxnode+x.conf", true),
        ("mxnode-a+.conf", true),
        ("mxnode-a", true),
    ] {
        assert_eq!(policy::is_blessed(entry), blessed, "{entry}");
    }
}

#[test]
fn bundle_round_trip_and_tampered_artifact_is_refused() {
    let f = Fixture::new();
    let bundle = f.path("bundle.tar");
    release::bundle(&f.release_dir(), &bundle).expect("bundles");
    let node = Node::default();
    let judge = |keys: TrustedKeys| {
        let node = &node;
        move |m: &[u8], s: &[u8]| {
            policy::check_release(
                m,
                s,
                &keys,
                &Facts {
                    product: PRODUCT,
                    compatible: DEFAULT_COMPATIBLE,
                    floor: node.floor.as_ref(),
                    running: &node.running,
                    now: node.now,
                },
            )
        }
    };
    let into = f.path("unpacked");
    fs::create_dir_all(&into).expect("dir");
    let mut file = fs::File::open(&bundle).expect("bundle");
    let (manifest, bytes, sig) =
        release::read_bundle(&mut file, &into, &mut judge(f.keys.clone()), &mut |_| {})
            .expect("a good bundle is taken");
    assert_eq!(manifest.version, Version::new(1, 2, 3));
    assert_eq!(bytes, f.manifest());
    assert_eq!(sig, f.signature());
    assert_eq!(
        fs::read(into.join("root.erofs")).expect("root"),
        fs::read(f.path("root.in")).expect("root")
    );

    // The same bundle with one byte of the root image changed after signing.
    let tampered_dir = f.path("tampered");
    fs::create_dir_all(&tampered_dir).expect("dir");
    for name in [
        MANIFEST_FILE,
        SIGNATURE_FILE,
        "vmlinuz",
        "initrd.img",
        "root.erofs",
    ] {
        fs::copy(f.release_dir().join(name), tampered_dir.join(name)).expect("copy");
    }
    let mut root = fs::read(tampered_dir.join("root.erofs")).expect("root");
    root[1000] ^= 0xff;
    fs::write(tampered_dir.join("root.erofs"), root).expect("root");
    release::bundle(&tampered_dir, &f.path("tampered.tar")).expect("bundles");
    let into = f.path("unpacked2");
    fs::create_dir_all(&into).expect("dir");
    let mut file = fs::File::open(f.path("tampered.tar")).expect("bundle");
    match release::read_bundle(&mut file, &into, &mut judge(f.keys.clone()), &mut |_| {}) {
        Err(BundleError::Refused(Refusal::ArtifactMismatch { artifact, .. })) => {
            assert_eq!(artifact, "root.erofs")
        }
        other => panic!("expected an artifact mismatch, got {other:?}"),
    }
    assert!(!into.join("root.erofs").exists());

    // A bundle judged by a node that trusts another key stops at the signature.
    let mut file = fs::File::open(&bundle).expect("bundle");
    match release::read_bundle(
        &mut file,
        &f.path("unpacked"),
        &mut judge(TrustedKeys::default()),
        &mut |_| {},
    ) {
        Err(BundleError::Refused(r)) => assert_eq!(r.code(), "unknown_key"),
        other => panic!("expected unknown_key, got {other:?}"),
    }
    // Not a tar at all.
    match release::read_bundle(
        &mut &b"not a tar"[..],
        &f.path("unpacked"),
        &mut judge(f.keys.clone()),
        &mut |_| {},
    ) {
        Err(BundleError::Invalid(_)) => {}
        other => panic!("expected an invalid bundle, got {other:?}"),
    }
}

/// Issue 16 (offline bundle upload): a tar extension entry (GNU long name, PAX header) is read
/// only up to 64 KiB; a larger one is refused before its data is read into memory, a small one
/// is ignored.
#[test]
fn tar_extension_entries_in_a_bundle_are_size_capped() {
    let f = Fixture::new();
    let node = Node::default();
    let mut judge = |m: &[u8], s: &[u8]| {
        policy::check_release(
            m,
            s,
            &f.keys,
            &Facts {
                product: PRODUCT,
                compatible: DEFAULT_COMPATIBLE,
                floor: node.floor.as_ref(),
                running: &node.running,
                now: node.now,
            },
        )
    };
    // `extension` writes what comes before the release's files.
    let bundle_with = |name: &str, extension: &dyn Fn(&mut tar::Builder<Vec<u8>>)| {
        let mut builder = tar::Builder::new(Vec::new());
        extension(&mut builder);
        for file in [
            MANIFEST_FILE,
            SIGNATURE_FILE,
            "root.erofs",
            "vmlinuz",
            "initrd.img",
        ] {
            let bytes = fs::read(f.release_dir().join(file)).expect("release file");
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            builder
                .append_data(&mut header, file, &bytes[..])
                .expect("append");
        }
        let bytes = builder.into_inner().expect("tar");
        let into = f.path(name);
        fs::create_dir_all(&into).expect("dir");
        (bytes, into)
    };

    let (small, into) = bundle_with("small-pax", &|b| {
        // One PAX record, "<length> comment=...\n", its length counting its own digits.
        let rest = " comment=made by hand\n";
        let record = format!("{}{rest}", rest.len() + 2);
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::XHeader);
        header.set_size(record.len() as u64);
        header.set_mode(0o644);
        b.append_data(&mut header, "PaxHeaders/manifest.json", record.as_bytes())
            .expect("pax");
    });
    release::read_bundle(&mut &small[..], &into, &mut judge, &mut |_| {})
        .expect("a small PAX header is ignored");

    let (large, into) = bundle_with("large-long-name", &|b| {
        let long = "a".repeat(1 << 20);
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        b.append_data(&mut header, &long, &b"x"[..])
            .expect("long name");
    });
    match release::read_bundle(&mut &large[..], &into, &mut judge, &mut |_| {}) {
        Err(BundleError::Invalid(why)) => {
            assert!(why.contains("tar extension entry"), "{why}")
        }
        other => panic!("expected an invalid bundle, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The installer on plain files.

/// Size of the slot "devices": larger than the root image, as a partition is.
const SLOT_BYTES: usize = 1024 * 1024;

/// A machine running slot a (blessed) with 1.0.0, and a staged request for 1.2.3.
struct Machine {
    f: Fixture,
    ctx: Context,
    layout: Layout,
}

impl Machine {
    fn new() -> Machine {
        let f = Fixture::new();
        let spool = f.path("spool");
        let staged = spool.join("staged");
        fs::create_dir_all(&staged).expect("dir");
        for name in ["root.erofs", "vmlinuz", "initrd.img"] {
            fs::copy(f.release_dir().join(name), staged.join(name)).expect("stage");
        }
        let request = Request {
            manifest: String::from_utf8(f.manifest()).expect("utf-8"),
            signature: base64::engine::general_purpose::STANDARD.encode(f.signature()),
        };
        fs::write(
            spool.join("request.json"),
            serde_json::to_vec(&request).expect("json"),
        )
        .expect("request");
        let state = f.path("state");
        fs::create_dir_all(&state).expect("dir");
        let esp = f.path("esp");
        let entries = esp.join("loader/entries");
        fs::create_dir_all(&entries).expect("dir");
        fs::write(entries.join("mxnode-a.conf"), "title running\n").expect("entry");
        // An older, failed entry of the target slot and a blessed one: both must go first.
        fs::write(entries.join("mxnode-b+0-3.conf"), "title old\n").expect("entry");
        fs::write(entries.join("mxnode-b.conf"), "title old\n").expect("entry");
        fs::write(f.path("slot-a"), vec![0xaa; SLOT_BYTES]).expect("slot");
        fs::write(f.path("slot-b"), vec![0xbb; SLOT_BYTES]).expect("slot");
        let ctx = Context {
            spool_dir: spool,
            state: StateDir(state),
            keys: f.keys.clone(),
            product: PRODUCT.into(),
            compatible: DEFAULT_COMPATIBLE.into(),
            running: Version::new(1, 0, 0),
            boot: Boot::Entry("mxnode-a.conf".into()),
            now: created() + DAY,
        };
        let layout = Layout {
            current: Slot::A,
            esp,
            slot_a: f.path("slot-a"),
            slot_b: f.path("slot-b"),
            partuuid_a: "11111111-1111-4111-8111-111111111111".into(),
            partuuid_b: "22222222-2222-4222-8222-222222222222".into(),
            cmdline: "console=ttyS0 quiet".into(),
        };
        Machine { f, ctx, layout }
    }

    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.layout.esp.join("loader/entries"))
            .expect("entries")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn status_state(&self) -> (String, Option<String>) {
        let status = self.ctx.state.status().expect("status.json");
        (status.state, status.error.map(|e| e.code))
    }
}

#[test]
fn install_writes_the_other_slot_its_kernel_and_a_counting_entry() {
    let m = Machine::new();
    let installed = install::install(&m.ctx, &m.layout).expect("installs");
    assert_eq!(installed.slot, Slot::B);
    assert_eq!(installed.entry, "mxnode-b+3.conf");

    let root = fs::read(m.f.path("root.in")).expect("root");
    let slot_b = fs::read(&m.layout.slot_b).expect("slot b");
    assert_eq!(
        &slot_b[..root.len()],
        &root[..],
        "the root image is in slot b"
    );
    assert_eq!(slot_b.len(), SLOT_BYTES, "the slot device keeps its size");
    assert_eq!(
        fs::read(&m.layout.slot_a).expect("slot a"),
        vec![0xaa; SLOT_BYTES]
    );
    assert_eq!(
        fs::read(m.layout.esp.join("mxnode/b/vmlinuz")).expect("kernel"),
        b"kernel bytes"
    );
    assert_eq!(
        fs::read(m.layout.esp.join("mxnode/b/initrd.img")).expect("initrd"),
        b"initrd bytes"
    );
    // The old entries of slot b are gone, slot a's stays, the new one counts tries.
    assert_eq!(m.entries(), ["mxnode-a.conf", "mxnode-b+3.conf"]);
    assert_eq!(
        fs::read_to_string(m.layout.esp.join("loader/entries/mxnode-b+3.conf")).expect("entry"),
        "title mxnode 1.2.3 (slot b)\nversion 1.2.3\nsort-key mxnode\n\
         linux /mxnode/b/vmlinuz\ninitrd /mxnode/b/initrd.img\n\
         options root=PARTUUID=22222222-2222-4222-8222-222222222222 mxnode.slot=b console=ttyS0 quiet\n"
    );
    let pending = m.ctx.state.pending().expect("pending.json");
    assert_eq!(
        (
            pending.version.as_str(),
            pending.slot,
            pending.from_version.as_str(),
            pending.from_slot
        ),
        ("1.2.3", Slot::B, "1.0.0", Slot::A)
    );
    assert!(!m.ctx.spool_dir.join("request.json").exists());
    assert!(!m.ctx.spool_dir.join("staged").exists());
    assert_eq!(m.status_state(), ("installed".into(), None));
    let status = m.ctx.state.status().expect("status");
    assert_eq!(status.progress.done, status.progress.total);

    // A second run finds no request and does nothing.
    assert!(matches!(
        install::install(&m.ctx, &m.layout),
        Err(InstallError::NoRequest)
    ));
}

#[test]
fn finish_on_the_new_slot_records_the_install_and_raises_the_floor() {
    let m = Machine::new();
    install::install(&m.ctx, &m.layout).expect("installs");
    let running = Version::new(1, 2, 3);
    let outcome =
        install::finish(&m.ctx.state, Slot::B, &running, created() + 2 * DAY).expect("finishes");
    assert_eq!(
        outcome,
        Finished::Installed {
            version: "1.2.3".into()
        }
    );
    assert_eq!(m.ctx.state.floor(), Some(Version::new(1, 2, 3)));
    assert!(m.ctx.state.pending().is_none());
    let history = m.ctx.state.history();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].event.as_str(), history[0].slot),
        ("installed", Some(Slot::B))
    );
    // The installed release can never be installed again.
    let floor = m.ctx.state.floor();
    let facts = Facts {
        product: PRODUCT,
        compatible: DEFAULT_COMPATIBLE,
        floor: floor.as_ref(),
        running: &running,
        now: created() + 2 * DAY,
    };
    assert_eq!(
        policy::check_release(&m.f.manifest(), &m.f.signature(), &m.f.keys, &facts)
            .map_err(|r| r.code()),
        Err("not_newer")
    );
}

#[test]
fn finish_on_the_old_slot_reports_the_rollback() {
    let m = Machine::new();
    install::install(&m.ctx, &m.layout).expect("installs");
    let outcome = install::finish(
        &m.ctx.state,
        Slot::A,
        &Version::new(1, 0, 0),
        created() + 2 * DAY,
    )
    .expect("finishes");
    assert_eq!(
        outcome,
        Finished::RolledBack {
            version: "1.2.3".into(),
            current: Slot::A
        }
    );
    assert_eq!(
        m.status_state(),
        ("rolled-back".into(), Some("rolled_back".into()))
    );
    let history = m.ctx.state.history();
    assert_eq!(
        history.last().map(|h| h.event.as_str()),
        Some("rolled_back")
    );
    assert!(
        history[0]
            .message
            .contains("rolled back from 1.2.3 to 1.0.0"),
        "{}",
        history[0].message
    );
    // The floor follows the running version only.
    assert_eq!(m.ctx.state.floor(), Some(Version::new(1, 0, 0)));
    assert!(m.ctx.state.pending().is_none());
    // Nothing pending: finish only raises the floor.
    assert_eq!(
        install::finish(&m.ctx.state, Slot::A, &Version::new(1, 0, 1), created())
            .expect("finishes"),
        Finished::Nothing
    );
    assert_eq!(m.ctx.state.floor(), Some(Version::new(1, 0, 1)));
}

/// Issue 16 (forced rollback): a rollback after trial boots whose node ran but whose health
/// probe never got through is recorded with cause `probe` and does not bar the release from
/// the channel; one try where the node itself failed bars it, as before.
#[test]
fn a_rollback_caused_only_by_a_starved_health_probe_does_not_bar_the_release() {
    let history_of = |causes: &[TrialCause]| {
        let m = Machine::new();
        install::install(&m.ctx, &m.layout).expect("installs");
        // A trial-failed record from the old slot is not about the install: ignored.
        assert!(
            !install::record_trial_failure(&m.ctx.state, Slot::A, TrialCause::Service, created())
                .expect("records")
        );
        for &cause in causes {
            assert!(
                install::record_trial_failure(&m.ctx.state, Slot::B, cause, created() + DAY)
                    .expect("records")
            );
        }
        install::finish(
            &m.ctx.state,
            Slot::A,
            &Version::new(1, 0, 0),
            created() + 2 * DAY,
        )
        .expect("finishes");
        assert!(m.ctx.state.pending().is_none());
        m.ctx.state.history()
    };
    let manifest =
        mxnode::update::manifest::Manifest::parse(&Fixture::new().manifest()).expect("parses");
    let barred = |history: &[install::HistoryEntry]| {
        policy::check_not_rolled_back(
            &manifest,
            history.iter().map(|h| {
                (
                    h.event.as_str(),
                    h.version.as_str(),
                    h.at.as_str(),
                    h.cause.map(TrialCause::as_str),
                )
            }),
        )
        .is_err()
    };

    let starved = history_of(&[TrialCause::Probe; 3]);
    let last = starved.last().expect("history");
    assert_eq!(
        (last.event.as_str(), last.cause),
        ("rolled_back", Some(TrialCause::Probe))
    );
    assert!(last.message.contains("not barred"), "{}", last.message);
    assert!(!barred(&starved), "the channel may offer the release again");

    let broken = history_of(&[TrialCause::Probe, TrialCause::Service, TrialCause::Probe]);
    assert_eq!(
        broken.last().and_then(|h| h.cause),
        Some(TrialCause::Service)
    );
    assert!(barred(&broken));
    // Nothing recorded (a node from before issue 16, or the record failed): barred, as before.
    let unknown = history_of(&[]);
    assert_eq!(
        unknown.last().and_then(|h| h.cause),
        Some(TrialCause::Service)
    );
    assert!(barred(&unknown));
}

/// Regression (issue 7): after a rollback, a channel still offering the failed version must
/// not have the node install it again (install, three failed boots, fall back, for ever).
#[test]
fn a_version_that_rolled_back_is_not_taken_from_the_channel_again() {
    let f = Fixture::new();
    let manifest =
        mxnode::update::manifest::Manifest::parse(&f.manifest()).expect("manifest parses");
    let version = manifest.version.to_string();
    let at = "2026-11-22T10:00:00Z";
    let refused = policy::check_not_rolled_back(
        &manifest,
        [
            ("installed", "1.0.0", at, None),
            ("rolled_back", version.as_str(), at, None),
        ],
    )
    .expect_err("a rolled-back version is refused");
    assert_eq!(refused.code(), "rolled_back_before");
    assert!(refused.to_string().contains(&version), "{refused}");
    // Installed before, or another version rolled back: no refusal.
    assert_eq!(
        policy::check_not_rolled_back(
            &manifest,
            [
                ("installed", version.as_str(), at, None),
                ("rolled_back", "9.9.9", at, None),
                ("refused", version.as_str(), at, None),
                // Issue 16: a rollback whose tries all showed the node running does not bar.
                ("rolled_back", version.as_str(), at, Some("probe")),
            ]
        ),
        Ok(())
    );
}

/// Runs the installer on a machine changed by `setup` and expects refusal `code` with slot b
/// and its entries untouched (or, for refusals found while writing, without a boot entry).
fn check_install_refused(name: &str, setup: impl FnOnce(&mut Machine), code: &str, touched: bool) {
    let mut m = Machine::new();
    setup(&mut m);
    match install::install(&m.ctx, &m.layout) {
        Err(InstallError::Refused(r)) => assert_eq!(r.code(), code, "{name}: {r}"),
        other => panic!("{name}: expected refusal {code}, got {other:?}"),
    }
    assert_eq!(
        m.status_state(),
        ("refused".into(), Some(code.into())),
        "{name}"
    );
    assert_eq!(
        m.ctx.state.history().last().map(|h| h.event.clone()),
        Some("refused".into()),
        "{name}"
    );
    assert!(
        !m.ctx.spool_dir.join("request.json").exists(),
        "{name}: request cleared"
    );
    assert!(m.ctx.state.pending().is_none(), "{name}");
    if touched {
        assert_eq!(
            m.entries(),
            ["mxnode-a.conf"],
            "{name}: no entry for a bad slot"
        );
    } else {
        assert_eq!(
            m.entries(),
            ["mxnode-a.conf", "mxnode-b+0-3.conf", "mxnode-b.conf"],
            "{name}: entries untouched"
        );
        assert_eq!(
            fs::read(&m.layout.slot_b).expect("slot"),
            vec![0xbb; SLOT_BYTES],
            "{name}"
        );
    }
}

#[test]
fn install_refusals_leave_the_machine_bootable() {
    check_install_refused(
        "boot still counting",
        |m| m.ctx.boot = Boot::Entry("mxnode-a+2-1.conf".into()),
        "not_blessed",
        false,
    );
    check_install_refused(
        "no EFI variable",
        |m| m.ctx.boot = Boot::NotAb,
        "not_ab_node",
        false,
    );
    check_install_refused(
        "untrusted key",
        |m| m.ctx.keys = TrustedKeys::default(),
        "unknown_key",
        false,
    );
    check_install_refused(
        "floor already at the version",
        |m| {
            m.ctx
                .state
                .raise_floor(&Version::new(1, 2, 3))
                .expect("floor");
        },
        "not_newer",
        false,
    );
    check_install_refused(
        "expired by install time",
        |m| m.ctx.now = created() + 40 * DAY,
        "expired",
        false,
    );
    check_install_refused(
        "signature changed in the request",
        |m| {
            let path = m.ctx.spool_dir.join("request.json");
            let mut request: Request =
                serde_json::from_slice(&fs::read(&path).expect("request")).expect("json");
            request.manifest = request.manifest.replace("1.2.3", "1.2.4");
            fs::write(&path, serde_json::to_vec(&request).expect("json")).expect("write");
        },
        "bad_signature",
        false,
    );
    check_install_refused(
        "request not JSON",
        |m| fs::write(m.ctx.spool_dir.join("request.json"), "{").expect("write"),
        "malformed_manifest",
        false,
    );
    // Found while writing: the target's entry is already gone, so nothing boots the slot.
    check_install_refused(
        "staged root changed after the node checked it",
        |m| {
            let path = m.ctx.spool_dir.join("staged/root.erofs");
            let mut root = fs::read(&path).expect("root");
            root[7] ^= 1;
            fs::write(&path, root).expect("write");
        },
        "artifact_mismatch",
        true,
    );
    check_install_refused(
        "staged kernel truncated",
        |m| fs::write(m.ctx.spool_dir.join("staged/vmlinuz"), b"kernel").expect("write"),
        "artifact_mismatch",
        true,
    );
    check_install_refused(
        "slot smaller than the root image",
        |m| fs::write(&m.layout.slot_b, vec![0u8; 1000]).expect("write"),
        "slot_too_small",
        true,
    );
}

#[test]
fn maintenance_window_and_reboot_plan() {
    use install::{MaintenanceWindow, RebootPlan};
    let at = |h: u64, m: u64| created() + Duration::from_secs(h * 3600 + m * 60);
    let w = MaintenanceWindow::parse("02:00-04:00").expect("parses");
    assert_eq!(install::reboot_plan(Some(&w), at(3, 0)), RebootPlan::Now);
    assert_eq!(
        install::reboot_plan(Some(&w), at(4, 0)),
        RebootPlan::At("02:00".into())
    );
    assert_eq!(install::reboot_plan(None, at(12, 0)), RebootPlan::Now);
    let night = MaintenanceWindow::parse("23:30-01:00").expect("parses");
    assert!(night.contains(at(0, 30)) && night.contains(at(23, 45)) && !night.contains(at(1, 0)));
    for bad in [
        "",
        "2:00-4:00",
        "02:00",
        "24:00-01:00",
        "02:00-02:00",
        "02:60-03:00",
        "+1:00-02:00",
    ] {
        assert!(MaintenanceWindow::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn installed_version_comes_from_an_mxnode_image_only() {
    let binary = Version::parse(env!("CARGO_PKG_VERSION")).expect("version");
    for (os_release, expect) in [
        (
            Some("ID=debian\nIMAGE_ID=mxnode\nIMAGE_VERSION=1.4.0\n"),
            Version::new(1, 4, 0),
        ),
        (
            Some("IMAGE_ID=\"mxnode\"\nIMAGE_VERSION=\"2.0.1\"\n"),
            Version::new(2, 0, 1),
        ),
        (Some("ID=debian\nIMAGE_VERSION=9.9.9\n"), binary.clone()),
        (
            Some("IMAGE_ID=mxnode\nIMAGE_VERSION=garbage\n"),
            binary.clone(),
        ),
        (None, binary.clone()),
    ] {
        assert_eq!(
            install::installed_version(os_release),
            expect,
            "{os_release:?}"
        );
    }
}

#[test]
fn keys_file_lines_are_parsed_strictly() {
    let f = Fixture::new();
    let line = fs::read_to_string(f.path("key").join(release::PUBLIC_KEY_FILE)).expect("pub");
    let text = format!("# release keys\n\n{line}");
    assert!(!TrustedKeys::parse(&text).expect("parses").is_empty());
    assert!(TrustedKeys::parse("").expect("parses").is_empty());
    let bad = TrustedKeys::parse("# ok\nAAAA\n").expect_err("a short key is refused");
    assert!(bad.contains("line 2"), "{bad}");
    assert!(
        TrustedKeys::load(&f.path("missing.txt"))
            .expect("missing = empty")
            .is_empty()
    );
}
