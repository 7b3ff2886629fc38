//! The root side of an update (`mxnode update install|finish|status`): re-verifies the
//! node's install request, writes the inactive slot and its boot entry, and records what
//! happened in the state directory that the node reads for its API.
//!
//! Everything works on plain paths (a slot "device" may be a file, the ESP a directory), so
//! the whole sequence is unit-testable; only `main` reads the EFI variable, the kernel command
//! line and runs the reboot. It must never trust the node's own verification (the node is the
//! less privileged side), never write a slot from a boot that is not blessed, and never leave
//! a boot entry pointing at a half-written slot: the target's entry is removed before its slot
//! is touched, and the new entry is the last thing written.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use semver::Version;
use serde::{Deserialize, Serialize};

use super::manifest::{ArtifactKind, MAX_MANIFEST_BYTES, Manifest, TrustedKeys};
use super::policy::{self, Boot, Facts, Refusal};
use super::{REQUEST_FILE, STAGED_DIR, copy_hashing, hash_file, sync_dir, write_atomic};

/// Tries a new boot entry gets before systemd-boot falls back to the other slot.
pub const BOOT_TRIES: u32 = 3;
/// Where efivarfs shows systemd-boot's selected entry (the vendor GUID is the Boot Loader
/// Interface's).
pub const LOADER_ENTRY_SELECTED: &str =
    "/sys/firmware/efi/efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// The image's identity; `IMAGE_VERSION` is the installed version.
pub const OS_RELEASE: &str = "/usr/lib/os-release";
/// Files in the state directory.
pub const STATUS_FILE: &str = "status.json";
pub const PENDING_FILE: &str = "pending.json";
pub const HISTORY_FILE: &str = "history.json";
pub const FLOOR_FILE: &str = "floor";
/// History entries kept (oldest dropped first).
pub const MAX_HISTORY: usize = 50;
/// Install progress is written to `status.json` at most once per this many bytes.
const PROGRESS_STEP_BYTES: u64 = 32 * 1024 * 1024;
/// Largest state file read back (they are small; anything larger is not ours).
const MAX_STATE_FILE_BYTES: u64 = 1024 * 1024;

/// A root slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn parse(text: &str) -> Option<Slot> {
        match text {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }

    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// What the node writes for root: the manifest's exact text and its base64 signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub manifest: String,
    pub signature: String,
}

/// Install progress in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// A refusal or failure as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorView {
    pub code: String,
    pub message: String,
}

impl From<&Refusal> for ErrorView {
    fn from(r: &Refusal) -> ErrorView {
        ErrorView {
            code: r.code().to_string(),
            message: r.to_string(),
        }
    }
}

/// `status.json`: the installer's current state (`installing`, `installed`, `reboot-pending`,
/// `refused`, `failed`, `rolled-back`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallStatus {
    pub state: String,
    pub version: Option<String>,
    pub slot: Option<Slot>,
    pub progress: Progress,
    pub error: Option<ErrorView>,
    /// RFC 3339 time of this status.
    pub at: String,
    /// `HH:MM` UTC of a scheduled reboot.
    pub reboot_at: Option<String>,
}

/// `pending.json`: an installed slot waiting for its first good boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub version: String,
    pub slot: Slot,
    pub from_version: String,
    pub from_slot: Slot,
    pub at: String,
    /// The release's security floor: the installed floor rises to it once the slot is good.
    #[serde(default)]
    pub security_floor: Option<String>,
    /// Why each failed trial boot of the new slot failed, as its health check recorded it
    /// before rebooting (`mxnode update trial-failed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trial_failures: Vec<TrialFailure>,
}

/// Why a trial boot's health check failed (issue 16: forced rollback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialCause {
    /// The node's service did not run: the release itself is broken.
    Service,
    /// The node ran, but its SMTP greeting or `/healthz` did not answer in time: the release
    /// may be good and something else (load, the network, a client holding connections) kept
    /// the probe from getting through.
    Probe,
}

impl TrialCause {
    pub fn as_str(self) -> &'static str {
        match self {
            TrialCause::Service => "service",
            TrialCause::Probe => "probe",
        }
    }
}

/// One failed trial boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialFailure {
    pub at: String,
    pub cause: TrialCause,
}

/// Failed trial boots recorded per pending install; a slot gets three tries, so more are noise.
const MAX_TRIAL_FAILURES: usize = 16;

/// One line of `history.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: String,
    /// `installed`, `rolled_back` or `refused`.
    pub event: String,
    pub version: String,
    pub slot: Option<Slot>,
    pub message: String,
    /// For `rolled_back`: `service` when a trial boot's node did not run, or nothing was
    /// recorded (the release is barred from the channel); `probe` when the node ran on every
    /// failed try but its health check did not get through (not barred: the channel offers
    /// the release again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<TrialCause>,
}

/// The root-owned, world-readable state directory.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let file = File::open(path).ok()?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_STATE_FILE_BYTES),
        &mut bytes,
    )
    .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

impl StateDir {
    pub fn floor(&self) -> Option<Version> {
        let text = fs::read_to_string(self.0.join(FLOOR_FILE)).ok()?;
        Version::parse(text.trim()).ok()
    }

    /// Raises the floor to `to` (never lowers it).
    pub fn raise_floor(&self, to: &Version) -> std::io::Result<Version> {
        let floor = match self.floor() {
            Some(f) if f >= *to => return Ok(f),
            _ => to.clone(),
        };
        write_atomic(&self.0.join(FLOOR_FILE), format!("{floor}\n").as_bytes())?;
        Ok(floor)
    }

    pub fn history(&self) -> Vec<HistoryEntry> {
        read_json(&self.0.join(HISTORY_FILE)).unwrap_or_default()
    }

    pub fn push_history(&self, entry: HistoryEntry) -> std::io::Result<()> {
        let mut history = self.history();
        history.push(entry);
        let excess = history.len().saturating_sub(MAX_HISTORY);
        history.drain(..excess);
        write_json(&self.0.join(HISTORY_FILE), &history)
    }

    pub fn status(&self) -> Option<InstallStatus> {
        read_json(&self.0.join(STATUS_FILE))
    }

    pub fn write_status(&self, status: &InstallStatus) -> std::io::Result<()> {
        write_json(&self.0.join(STATUS_FILE), status)
    }

    pub fn pending(&self) -> Option<Pending> {
        read_json(&self.0.join(PENDING_FILE))
    }
}

/// Where the slots and the ESP are, as the image's wrapper finds them.
#[derive(Debug, Clone)]
pub struct Layout {
    pub current: Slot,
    pub esp: PathBuf,
    pub slot_a: PathBuf,
    pub slot_b: PathBuf,
    pub partuuid_a: String,
    pub partuuid_b: String,
    /// The kernel command line every entry carries besides root and slot.
    pub cmdline: String,
}

impl Layout {
    fn device(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.slot_a,
            Slot::B => &self.slot_b,
        }
    }

    fn partuuid(&self, slot: Slot) -> &str {
        match slot {
            Slot::A => &self.partuuid_a,
            Slot::B => &self.partuuid_b,
        }
    }
}

/// Everything else the installer judges with.
#[derive(Debug, Clone)]
pub struct Context {
    pub spool_dir: PathBuf,
    pub state: StateDir,
    pub keys: TrustedKeys,
    pub product: String,
    pub compatible: String,
    pub running: Version,
    pub boot: Boot,
    pub now: SystemTime,
}

/// A finished install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub version: Version,
    pub slot: Slot,
    /// The boot entry written (`mxnode-b+3.conf`).
    pub entry: String,
}

/// Why an install did not happen or did not finish.
#[derive(Debug)]
pub enum InstallError {
    /// No request.json: nothing to do.
    NoRequest,
    /// The release or the boot state is refused.
    Refused(Refusal),
    /// Writing failed (the target slot is left without a boot entry; the running slot is
    /// untouched).
    Failed(String),
}

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstallError::NoRequest => write!(f, "no install request"),
            InstallError::Refused(r) => write!(f, "update refused: {r}"),
            InstallError::Failed(why) => write!(f, "update failed: {why}"),
        }
    }
}

fn now_text(now: SystemTime) -> String {
    humantime::format_rfc3339_seconds(now).to_string()
}

/// The boot entry name with the try counter: `mxnode-a+3.conf`.
pub fn entry_name(slot: Slot) -> String {
    format!("mxnode-{}+{BOOT_TRIES}.conf", slot.letter())
}

/// The text of a slot's boot entry.
pub fn entry_text(version: &Version, slot: Slot, partuuid: &str, cmdline: &str) -> String {
    let t = slot.letter();
    let options = format!("root=PARTUUID={partuuid} mxnode.slot={t} {cmdline}");
    format!(
        "title mxnode {version} (slot {t})\nversion {version}\nsort-key mxnode\n\
         linux /mxnode/{t}/vmlinuz\ninitrd /mxnode/{t}/initrd.img\noptions {}\n",
        options.trim_end()
    )
}

/// Whether `name` is a boot entry of `slot`: `mxnode-a.conf`, `mxnode-a+3.conf`,
/// `mxnode-a+1-2.conf`.
pub fn is_slot_entry(name: &str, slot: Slot) -> bool {
    let prefix = format!("mxnode-{}", slot.letter());
    name.strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(".conf"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('+'))
}

/// Removes every boot entry of `slot` and makes the removal durable.
fn remove_entries(entries: &Path, slot: Slot) -> std::io::Result<()> {
    fs::create_dir_all(entries)?;
    for entry in fs::read_dir(entries)? {
        let entry = entry?;
        if is_slot_entry(&entry.file_name().to_string_lossy(), slot) {
            fs::remove_file(entry.path())?;
        }
    }
    sync_dir(entries)
}

/// Removes the request and the staged release (after an install, or a refused request: a
/// request left behind would start the installer again and again).
fn clear_request(spool_dir: &Path) {
    let _ = fs::remove_file(spool_dir.join(REQUEST_FILE));
    let _ = fs::remove_dir_all(spool_dir.join(STAGED_DIR));
}

/// The most `request.json` may hold: the manifest (at most [`MAX_MANIFEST_BYTES`]) as a JSON
/// string, where escaping turns one byte into at most six (`\u0001`), plus the signature and
/// the keys. The node writes it; root reads it, so a bigger one is refused unread (issue 16).
pub const MAX_REQUEST_BYTES: u64 = 6 * MAX_MANIFEST_BYTES as u64 + 4096;

/// Opens a file of the spool (which the node owns) for root to read: never through a symbolic
/// link (`O_NOFOLLOW`), never blocking on a pipe (`O_NONBLOCK`), and only a regular file; the
/// node could otherwise point root at any file, a device that never ends or a FIFO that
/// never answers (issue 16). Refusals are [`std::io::ErrorKind::InvalidInput`].
pub fn open_spooled(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "is a symbolic link: refused",
                )
            } else {
                e
            }
        })?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is not a regular file: refused",
        ));
    }
    Ok(file)
}

/// Reads a spool file opened by [`open_spooled`], refusing one longer than `max` bytes
/// without reading past the bound.
fn read_spooled(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = open_spooled(path)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, max + 1), &mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("is larger than {max} bytes: refused unread"),
        ));
    }
    Ok(bytes)
}

/// Whether `e` is a refusal of [`open_spooled`]/[`read_spooled`] rather than an I/O failure.
fn refused_spool_file(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::InvalidInput
}

/// Installs the requested release into the slot that is not running, recording every step in
/// `status.json`; a refusal also goes into the history.
pub fn install(ctx: &Context, layout: &Layout) -> Result<Installed, InstallError> {
    let status = |state: &str, version: Option<String>, progress: Progress, error| InstallStatus {
        state: state.to_string(),
        version,
        slot: Some(layout.current.other()),
        progress,
        error,
        at: now_text(ctx.now),
        reboot_at: None,
    };
    let request_path = ctx.spool_dir.join(REQUEST_FILE);
    let request: Request = match read_spooled(&request_path, MAX_REQUEST_BYTES) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(InstallError::NoRequest),
        Err(e) if refused_spool_file(&e) => {
            let refusal = Refusal::Malformed(format!("request.json: {e}"));
            return Err(refuse(ctx, layout, None, refusal));
        }
        Err(e) => {
            return Err(InstallError::Failed(format!(
                "cannot read the request: {e}"
            )));
        }
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                let refusal = Refusal::Malformed(format!("request.json: {e}"));
                return Err(refuse(ctx, layout, None, refusal));
            }
        },
    };
    let signature = base64::engine::general_purpose::STANDARD
        .decode(&request.signature)
        .unwrap_or_default();
    let floor = ctx.state.floor();
    let facts = Facts {
        product: &ctx.product,
        compatible: &ctx.compatible,
        floor: floor.as_ref(),
        running: &ctx.running,
        now: ctx.now,
    };
    let manifest =
        policy::check_release(request.manifest.as_bytes(), &signature, &ctx.keys, &facts)
            .and_then(|m| policy::check_boot(&ctx.boot).map(|()| m))
            .map_err(|r| refuse(ctx, layout, None, r))?;
    let version = Some(manifest.version.to_string());
    let target = layout.current.other();
    let total = manifest.artifacts.total_size();
    // Each status write is an fsynced rename: one per PROGRESS_STEP_BYTES, not per chunk.
    let reported = std::cell::Cell::new(0u64);
    let report = |done: u64| {
        if done != 0 && done < reported.get() + PROGRESS_STEP_BYTES && done != total {
            return;
        }
        reported.set(done);
        let _ = ctx.state.write_status(&status(
            "installing",
            version.clone(),
            Progress { done, total },
            None,
        ));
    };
    report(0);
    match write_slot(ctx, layout, &manifest, target, &report) {
        Ok(()) => {}
        Err(SlotError::Refused(r)) => return Err(refuse(ctx, layout, Some(&manifest), r)),
        Err(SlotError::Io(why)) => {
            let _ = ctx.state.write_status(&status(
                "failed",
                version,
                Progress { done: 0, total },
                Some(ErrorView {
                    code: "install_failed".into(),
                    message: why.clone(),
                }),
            ));
            return Err(InstallError::Failed(why));
        }
    }
    let pending = Pending {
        version: manifest.version.to_string(),
        slot: target,
        from_version: ctx.running.to_string(),
        from_slot: layout.current,
        at: now_text(ctx.now),
        security_floor: Some(manifest.security_floor.to_string()),
        trial_failures: Vec::new(),
    };
    write_json(&ctx.state.0.join(PENDING_FILE), &pending)
        .map_err(|e| InstallError::Failed(format!("cannot record pending.json: {e}")))?;
    clear_request(&ctx.spool_dir);
    let _ = ctx.state.write_status(&status(
        "installed",
        version,
        Progress { done: total, total },
        None,
    ));
    Ok(Installed {
        version: manifest.version,
        slot: target,
        entry: entry_name(target),
    })
}

/// A write step failed because of the release (a staged file that does not match) or the
/// machine.
enum SlotError {
    Refused(Refusal),
    Io(String),
}

fn io(what: &str, path: &Path) -> impl Fn(std::io::Error) -> SlotError {
    let context = format!("{what} {}", path.display());
    move |e| SlotError::Io(format!("{context}: {e}"))
}

/// The write sequence: entry out, root in (hashed, fsynced, read back), kernel and initrd,
/// entry in.
fn write_slot(
    ctx: &Context,
    layout: &Layout,
    manifest: &Manifest,
    target: Slot,
    report: &dyn Fn(u64),
) -> Result<(), SlotError> {
    let staged = ctx.spool_dir.join(STAGED_DIR);
    let entries = layout.esp.join("loader/entries");
    remove_entries(&entries, target)
        .map_err(io("cannot remove the old boot entry in", &entries))?;

    let device = layout.device(target);
    let mut slot = OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(io("cannot open slot", device))?;
    let slot_size = slot
        .seek(SeekFrom::End(0))
        .and_then(|size| slot.seek(SeekFrom::Start(0)).map(|_| size))
        .map_err(io("cannot size slot", device))?;
    policy::check_slot(manifest, slot_size).map_err(SlotError::Refused)?;
    let root = &manifest.artifacts.root;
    let source = staged.join(ArtifactKind::Root.file_name());
    let mut from = open_spooled(&source).map_err(io("cannot open", &source))?;
    let copied = copy_hashing(&mut from, &mut slot, root.size, &mut |n| report(n))
        .and_then(|c| slot.sync_all().map(|()| c))
        .map_err(io("cannot write slot", device))?;
    policy::check_artifact(manifest, ArtifactKind::Root, copied.size, &copied.sha256)
        .map_err(SlotError::Refused)?;
    // Read back what the device holds now, not what we meant to write: the written pages are
    // clean after the fsync, and dropping them from the page cache makes the read-back come
    // from the device. (Advice only: a file system may keep them, which costs nothing here.)
    let _ = nix::fcntl::posix_fadvise(
        &slot,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    drop(slot);
    let back = hash_file(device, root.size).map_err(io("cannot read back slot", device))?;
    if back.size != root.size || back.sha256 != root.sha256 {
        return Err(SlotError::Io(format!(
            "slot {} does not read back what was written",
            device.display()
        )));
    }

    let kernel_dir = layout.esp.join("mxnode").join(target.letter());
    fs::create_dir_all(&kernel_dir).map_err(io("cannot create", &kernel_dir))?;
    let mut done = root.size;
    for kind in [ArtifactKind::Kernel, ArtifactKind::Initrd] {
        let name = kind.file_name();
        let source = staged.join(name);
        let tmp = kernel_dir.join(format!(".{name}.tmp"));
        let mut from = open_spooled(&source).map_err(io("cannot open", &source))?;
        let mut to = File::create(&tmp).map_err(io("cannot create", &tmp))?;
        let expected = manifest.artifacts.get(kind).size;
        let copied = copy_hashing(&mut from, &mut to, expected, &mut |n| report(done + n))
            .and_then(|c| to.sync_all().map(|()| c))
            .map_err(io("cannot write", &tmp))?;
        policy::check_artifact(manifest, kind, copied.size, &copied.sha256)
            .map_err(SlotError::Refused)?;
        fs::rename(&tmp, kernel_dir.join(name)).map_err(io("cannot rename", &tmp))?;
        done += copied.size;
    }
    sync_dir(&kernel_dir).map_err(io("cannot sync", &kernel_dir))?;

    let text = entry_text(
        &manifest.version,
        target,
        layout.partuuid(target),
        &layout.cmdline,
    );
    let entry = entries.join(entry_name(target));
    write_atomic(&entry, text.as_bytes()).map_err(io("cannot write", &entry))
}

/// Records a refusal (status and history), clears the request, and returns it.
fn refuse(
    ctx: &Context,
    layout: &Layout,
    manifest: Option<&Manifest>,
    refusal: Refusal,
) -> InstallError {
    let version = manifest.map(|m| m.version.to_string());
    let _ = ctx.state.write_status(&InstallStatus {
        state: "refused".into(),
        version: version.clone(),
        slot: Some(layout.current.other()),
        progress: Progress::default(),
        error: Some(ErrorView::from(&refusal)),
        at: now_text(ctx.now),
        reboot_at: None,
    });
    let _ = ctx.state.push_history(HistoryEntry {
        at: now_text(ctx.now),
        event: "refused".into(),
        version: version.unwrap_or_default(),
        slot: None,
        message: refusal.to_string(),
        cause: None,
    });
    clear_request(&ctx.spool_dir);
    InstallError::Refused(refusal)
}

/// What `finish` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// No install was pending; the floor was raised to the running version.
    Nothing,
    /// The new slot booted well.
    Installed { version: String },
    /// The new slot failed its tries and systemd-boot fell back to `current`.
    RolledBack { version: String, current: Slot },
}

/// A trial boot's health check failed (`mxnode update trial-failed`, run by `mxnode-health`
/// before it reboots): recorded with the pending install when this boot runs the slot that
/// install wrote, so that a rollback can tell a broken release from a starved probe. False
/// (nothing recorded) when no install is pending on this slot.
pub fn record_trial_failure(
    state: &StateDir,
    current: Slot,
    cause: TrialCause,
    now: SystemTime,
) -> std::io::Result<bool> {
    let Some(mut pending) = state.pending() else {
        return Ok(false);
    };
    if pending.slot != current {
        return Ok(false);
    }
    pending.trial_failures.push(TrialFailure {
        at: now_text(now),
        cause,
    });
    let excess = pending
        .trial_failures
        .len()
        .saturating_sub(MAX_TRIAL_FAILURES);
    pending.trial_failures.drain(..excess);
    write_json(&state.0.join(PENDING_FILE), &pending)?;
    sync_dir(&state.0)?;
    Ok(true)
}

/// After a good boot (`mxnode update finish`): resolves `pending.json` against the slot that
/// actually runs and raises the floor.
pub fn finish(
    state: &StateDir,
    current: Slot,
    running: &Version,
    now: SystemTime,
) -> std::io::Result<Finished> {
    state.raise_floor(running)?;
    let Some(pending) = state.pending() else {
        return Ok(Finished::Nothing);
    };
    let outcome = if pending.slot == current {
        let mut floor = Version::parse(&pending.version).unwrap_or_else(|_| running.clone());
        if let Some(security) = pending
            .security_floor
            .as_deref()
            .and_then(|s| Version::parse(s).ok())
        {
            floor = floor.max(security);
        }
        state.raise_floor(&floor)?;
        state.push_history(HistoryEntry {
            at: now_text(now),
            event: "installed".into(),
            version: pending.version.clone(),
            slot: Some(current),
            message: format!("installed {} in slot {}", pending.version, current.letter()),
            cause: None,
        })?;
        state.write_status(&InstallStatus {
            state: "installed".into(),
            version: Some(pending.version.clone()),
            slot: Some(current),
            progress: Progress::default(),
            error: None,
            at: now_text(now),
            reboot_at: None,
        })?;
        Finished::Installed {
            version: pending.version.clone(),
        }
    } else {
        // Barred unless every recorded try shows the node running: a release is only kept
        // from the channel for good when it is known (or cannot be shown not) to be broken.
        let cause = if !pending.trial_failures.is_empty()
            && pending
                .trial_failures
                .iter()
                .all(|f| f.cause == TrialCause::Probe)
        {
            TrialCause::Probe
        } else {
            TrialCause::Service
        };
        let message = match cause {
            TrialCause::Service => format!(
                "rolled back from {} to {running} (slot {}): the new slot failed its boots",
                pending.version,
                current.letter()
            ),
            TrialCause::Probe => format!(
                "rolled back from {} to {running} (slot {}): the node ran on the new slot but its \
                 health check did not get through on any try; not barred: the channel offers {} \
                 again (set update.auto_apply = false to stop it)",
                pending.version,
                current.letter(),
                pending.version
            ),
        };
        state.push_history(HistoryEntry {
            at: now_text(now),
            event: "rolled_back".into(),
            version: pending.version.clone(),
            slot: Some(current),
            message: message.clone(),
            cause: Some(cause),
        })?;
        state.write_status(&InstallStatus {
            state: "rolled-back".into(),
            version: Some(pending.version.clone()),
            slot: Some(current),
            progress: Progress::default(),
            error: Some(ErrorView {
                code: "rolled_back".into(),
                message,
            }),
            at: now_text(now),
            reboot_at: None,
        })?;
        Finished::RolledBack {
            version: pending.version.clone(),
            current,
        }
    };
    fs::remove_file(state.0.join(PENDING_FILE))?;
    sync_dir(&state.0)?;
    Ok(outcome)
}

/// The installed version: `IMAGE_VERSION` of an mxnode image's os-release, else the binary's
/// own version (development and test nodes).
pub fn installed_version(os_release: Option<&str>) -> Version {
    let binary = Version::parse(env!("CARGO_PKG_VERSION")).unwrap_or(Version::new(0, 0, 0));
    let Some(text) = os_release else {
        return binary;
    };
    let value = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().trim_matches('"').to_string())
    };
    if value("IMAGE_ID").as_deref() != Some("mxnode") {
        return binary;
    }
    value("IMAGE_VERSION")
        .and_then(|v| Version::parse(&v).ok())
        .unwrap_or(binary)
}

/// [`installed_version`] of this machine.
pub fn running_version() -> Version {
    installed_version(fs::read_to_string(OS_RELEASE).ok().as_deref())
}

/// Created by the image's mxnode-update-finish.service once this boot reached
/// boot-complete.target (health passed, systemd-bless-boot ran); /run is per boot. Needed
/// because systemd-boot (252) keeps the counted name (`mxnode-a+3.conf`) in
/// `LoaderEntrySelected` for the whole boot, even after systemd-bless-boot renamed the entry:
/// by the name alone, the boot that was just blessed would stay unblessed until a reboot.
pub const BLESSED_MARKER: &str = "/run/mxnode-update/blessed";

/// The boot state of this machine from `LoaderEntrySelected` and [`BLESSED_MARKER`].
pub fn read_boot() -> Boot {
    boot_state(
        fs::read(LOADER_ENTRY_SELECTED).ok().as_deref(),
        Path::new(BLESSED_MARKER).exists(),
    )
}

/// The boot state from the `LoaderEntrySelected` bytes (None: no such variable) and whether
/// this boot was marked blessed after boot-complete.target: a marked boot counts as its
/// entry's blessed name (the counter dropped, as systemd-bless-boot renamed it).
pub fn boot_state(selected: Option<&[u8]>, marked_blessed: bool) -> Boot {
    match selected.and_then(policy::parse_loader_entry) {
        Some(entry) if marked_blessed && !policy::is_blessed(&entry) => {
            let stem = entry.strip_suffix(".conf").unwrap_or(&entry);
            let name = stem.rsplit_once('+').map_or(stem, |(name, _)| name);
            Boot::Entry(format!("{name}.conf"))
        }
        Some(entry) => Boot::Entry(entry),
        None => Boot::NotAb,
    }
}

/// The slot this machine booted, from `mxnode.slot=` on the kernel command line.
pub fn booted_slot() -> Option<Slot> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mxnode.slot="))
        .and_then(Slot::parse)
}

/// A daily maintenance window in UTC, `HH:MM-HH:MM` (may wrap past midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceWindow {
    /// Minutes after midnight UTC.
    pub start: u32,
    pub end: u32,
}

impl MaintenanceWindow {
    pub fn parse(text: &str) -> Result<MaintenanceWindow, String> {
        let minutes = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let digits = |t: &str| t.len() == 2 && t.bytes().all(|b| b.is_ascii_digit());
            if !digits(h) || !digits(m) {
                return None;
            }
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start, end) = text
            .split_once('-')
            .and_then(|(a, b)| Some((minutes(a)?, minutes(b)?)))
            .ok_or_else(|| "must be HH:MM-HH:MM in UTC, e.g. \"02:00-04:00\"".to_string())?;
        if start == end {
            return Err("start and end must differ".into());
        }
        Ok(MaintenanceWindow { start, end })
    }

    /// Whether `now` lies inside the window.
    pub fn contains(&self, now: SystemTime) -> bool {
        let minute = minute_of_day(now);
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }

    /// The start as `HH:MM` (what `shutdown -r` takes).
    pub fn start_text(&self) -> String {
        format!("{:02}:{:02}", self.start / 60, self.start % 60)
    }
}

fn minute_of_day(now: SystemTime) -> u32 {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ((secs % 86_400) / 60) as u32
}

/// When to reboot after an install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebootPlan {
    Now,
    /// `HH:MM` UTC, the window's start.
    At(String),
}

/// Reboot now without a window or inside it, else at the window's start.
pub fn reboot_plan(window: Option<&MaintenanceWindow>, now: SystemTime) -> RebootPlan {
    match window {
        Some(w) if !w.contains(now) => RebootPlan::At(w.start_text()),
        _ => RebootPlan::Now,
    }
}

/// Records a scheduled reboot in `status.json`.
pub fn record_reboot_pending(state: &StateDir, at: &str) -> std::io::Result<()> {
    let Some(mut status) = state.status() else {
        return Ok(());
    };
    status.state = "reboot-pending".into();
    status.reboot_at = Some(at.to_string());
    state.write_status(&status)
}

#[cfg(test)]
mod boot_state_tests {
    use super::*;

    /// `LoaderEntrySelected` as efivarfs shows it: attributes, UTF-16LE name, NUL.
    fn efivar(name: &str) -> Vec<u8> {
        let mut bytes = vec![6, 0, 0, 0];
        for unit in name.encode_utf16().chain([0]) {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        bytes
    }

    fn check(selected: Option<&str>, marked: bool, expected: Boot, blessed: bool) {
        let bytes = selected.map(efivar);
        let boot = boot_state(bytes.as_deref(), marked);
        assert_eq!(boot, expected, "{selected:?}, marked {marked}");
        assert_eq!(
            policy::check_boot(&boot).is_ok(),
            blessed,
            "{selected:?}, marked {marked}"
        );
    }

    #[test]
    fn a_counted_entry_is_blessed_once_the_boot_was_marked_after_boot_complete() {
        let entry = |name: &str| Boot::Entry(name.to_string());
        check(
            Some("mxnode-a+3.conf"),
            false,
            entry("mxnode-a+3.conf"),
            false,
        );
        check(Some("mxnode-a+3.conf"), true, entry("mxnode-a.conf"), true);
        check(
            Some("mxnode-b+2-1.conf"),
            true,
            entry("mxnode-b.conf"),
            true,
        );
        check(Some("mxnode-b.conf"), false, entry("mxnode-b.conf"), true);
        check(Some("mxnode-b.conf"), true, entry("mxnode-b.conf"), true);
        // A `+` that is not a counter stays part of the name.
        check(Some("mxnode+x.conf"), true, entry("mxnode+x.conf"), true);
        check(None, true, Boot::NotAb, false);
        check(None, false, Boot::NotAb, false);
    }
}

#[cfg(test)]
mod spool_tests {
    use super::*;

    struct Spool {
        dir: PathBuf,
    }

    impl Drop for Spool {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn spool(name: &str) -> Spool {
        let dir = std::env::temp_dir().join(format!(
            "mxnode-install-{name}-{}-{}",
            std::process::id(),
            now_text(SystemTime::now()).replace(':', "")
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("state")).expect("spool dir");
        Spool { dir }
    }

    fn install_from(spool: &Spool) -> Result<Installed, InstallError> {
        let ctx = Context {
            spool_dir: spool.dir.clone(),
            state: StateDir(spool.dir.join("state")),
            keys: TrustedKeys::default(),
            product: "mxnode".into(),
            compatible: "x86_64".into(),
            running: Version::new(1, 0, 0),
            boot: Boot::NotAb,
            now: SystemTime::now(),
        };
        let layout = Layout {
            current: Slot::A,
            esp: spool.dir.join("esp"),
            slot_a: spool.dir.join("slot-a"),
            slot_b: spool.dir.join("slot-b"),
            partuuid_a: String::new(),
            partuuid_b: String::new(),
            cmdline: String::new(),
        };
        install(&ctx, &layout)
    }

    fn refusal_text(result: Result<Installed, InstallError>) -> String {
        match result {
            Err(InstallError::Refused(refusal)) => refusal.to_string(),
            Err(other) => panic!("expected a refusal, got {other:?}"),
            Ok(installed) => panic!("expected a refusal, got {installed:?}"),
        }
    }

    /// Issue 16: root's installer reads `request.json` from the spool the node owns. A link
    /// planted there (here to a well-formed request elsewhere, as it could be to any file of
    /// root's) is refused without being followed, and so is a file over the bound (refused
    /// unread: the old code read all of it and parsed it).
    #[test]
    fn issue_16_the_installer_refuses_a_symlinked_or_oversized_request_json() {
        let linked = spool("link");
        let elsewhere = linked.dir.join("elsewhere.json");
        fs::write(&elsewhere, br#"{"manifest": "{}", "signature": ""}"#).expect("write");
        std::os::unix::fs::symlink(&elsewhere, linked.dir.join(REQUEST_FILE)).expect("link");
        let text = refusal_text(install_from(&linked));
        assert!(text.contains("request.json"), "{text}");
        assert!(text.contains("symbolic link"), "{text}");
        assert!(
            !linked.dir.join(REQUEST_FILE).exists(),
            "the refused request is cleared"
        );

        let oversized = spool("big");
        let manifest = "a".repeat(usize::try_from(MAX_REQUEST_BYTES).expect("small") + 1);
        let body = format!(r#"{{"manifest": "{manifest}", "signature": ""}}"#);
        fs::write(oversized.dir.join(REQUEST_FILE), body).expect("write");
        let text = refusal_text(install_from(&oversized));
        assert!(text.contains("request.json"), "{text}");
        assert!(text.contains("larger than"), "{text}");

        // A FIFO never blocks the installer: it is not a regular file.
        let fifo = spool("fifo");
        nix::unistd::mkfifo(
            &fifo.dir.join(REQUEST_FILE),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo");
        let text = refusal_text(install_from(&fifo));
        assert!(text.contains("not a regular file"), "{text}");
    }

    #[test]
    fn issue_16_open_spooled_reads_a_regular_file_and_refuses_links_to_it() {
        let s = spool("open");
        let file = s.dir.join("root.img");
        fs::write(&file, b"image").expect("write");
        let link = s.dir.join("link.img");
        std::os::unix::fs::symlink(&file, &link).expect("link");
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut open_spooled(&file).expect("regular"), &mut bytes)
            .expect("read");
        assert_eq!(bytes, b"image");
        let e = open_spooled(&link).expect_err("a link is refused");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        let e = open_spooled(Path::new("/dev/zero")).expect_err("a device is refused");
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
