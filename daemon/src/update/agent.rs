//! The node side of the update channel: polls the configured HTTPS channel (or takes an
//! uploaded bundle), judges the release with [`super::policy`], downloads the artifacts into
//! `spool_dir/staged/` while hashing them, and asks root to install with `request.json`.
//! It also reads the installer's state directory for the API's status.
//!
//! The node runs unprivileged: it never writes a slot, the ESP or the state directory. A
//! release that fails any rule is refused before anything is written beside `staged/`, and a
//! partly downloaded artifact is never renamed into place.
//!
//! A check runs on one blocking thread (it writes and hashes hundreds of MiB, and syncs the
//! disk); its HTTP requests go through the channel's [`net::Client`] (rustls on ring, TLS
//! 1.3/1.2, system roots plus `channel_ca`, keep-alive), driven on that same thread with
//! `smol::block_on` and read chunk by chunk into the staged file. Never opens a connection
//! itself (that is [`crate::net`]'s job) and never follows a redirect.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use serde::Serialize;

use super::install::{self, ErrorView, HistoryEntry, InstallStatus, Progress, Request, StateDir};
use super::manifest::{ArtifactKind, MAX_MANIFEST_BYTES, Manifest, SIGNATURE_BYTES, TrustedKeys};
use super::policy::{self, Boot, Facts, Refusal};
use super::release::{self, BundleError};
use super::{MANIFEST_FILE, PRODUCT, REQUEST_FILE, SIGNATURE_FILE, STAGED_DIR, copy_hashing};
use crate::config::UpdateConfig;
use crate::net;

/// One request to the channel (manifest, signature) may take this long.
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// An artifact download may take this long (a root image of a few hundred MiB on a slow
/// line).
const ARTIFACT_TIMEOUT: Duration = Duration::from_secs(3600);
/// The first check after start waits the check interval, but at most this long: a node
/// that just booted serves mail first, and one that reboots often still checks.
pub const MAX_FIRST_CHECK_DELAY: Duration = Duration::from_secs(300);
/// Idle keep-alive connections kept to the channel (a check makes five requests in a row).
const MAX_IDLE_CONNECTIONS: usize = 2;
/// How often the installer's state is looked at for refusals to audit.
const INSTALLER_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Largest offline bundle accepted: the artifacts' limit plus tar overhead.
pub const MAX_BUNDLE_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// Uploads are spooled inside `spool_dir` under this prefix before they are read.
const UPLOAD_PREFIX: &str = "upload-";

/// Removes the spool files of uploads that a stop or crash left behind (issue 16): each upload
/// removes its own when it ends, so any found at start belong to no one.
fn sweep_uploads(spool_dir: &Path) {
    let Ok(entries) = fs::read_dir(spool_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(UPLOAD_PREFIX) && name.ends_with(".tar") {
            match fs::remove_file(entry.path()) {
                Ok(()) => log::info!("update: removed a stale upload spool file ({name})"),
                Err(e) => log::warn!("update: cannot remove the stale upload {name}: {e}"),
            }
        }
    }
}

/// Free bytes on the filesystem that holds `path`'s directory (the spool), for an upload that
/// is being written and must stop before it fills the data volume.
pub fn spool_free(path: &Path) -> std::io::Result<u64> {
    let dir = path.parent().unwrap_or(path);
    let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
}
/// A bundle is unpacked here, then renamed to `staged/`.
const INCOMING_DIR: &str = "incoming";

/// Why a check, upload or apply did not stage or request a release.
#[derive(Debug)]
pub enum UpdateError {
    /// The release is refused (audited).
    Refused(Refusal),
    /// Something on the way failed: the channel, the keys file, the disk.
    Failed { code: &'static str, message: String },
    /// Another check, upload or apply is running.
    Busy,
    /// No `update.channel` is configured.
    NoChannel,
    /// Apply without a staged release.
    NothingStaged,
    /// The upload is not a bundle.
    InvalidBundle(String),
    /// The channel serves a correctly signed manifest whose validity has ended: the channel
    /// (or a mirror, or someone replaying an old manifest) is not being refreshed, and may be
    /// withholding a release. Never "up to date" (issue 16); audited as `update.channel_stale`.
    ChannelStale { version: String, expires: String },
}

impl UpdateError {
    fn failed(code: &'static str, message: impl Into<String>) -> UpdateError {
        UpdateError::Failed {
            code,
            message: message.into(),
        }
    }

    pub fn view(&self) -> ErrorView {
        let (code, message) = match self {
            UpdateError::Refused(r) => return ErrorView::from(r),
            UpdateError::Failed { code, message } => (*code, message.clone()),
            UpdateError::Busy => ("update_busy", "another update operation is running".into()),
            UpdateError::NoChannel => ("no_channel", "no update.channel is configured".into()),
            UpdateError::NothingStaged => (
                "nothing_staged",
                "no release is staged: check the channel or upload a bundle first".into(),
            ),
            UpdateError::InvalidBundle(why) => ("invalid_bundle", why.clone()),
            UpdateError::ChannelStale { version, expires } => (
                "channel_stale",
                format!(
                    "the channel's signed manifest (version {version}) expired at {expires}: the \
                     channel or a mirror is not being refreshed and may be withholding updates"
                ),
            ),
        };
        ErrorView {
            code: code.to_string(),
            message,
        }
    }
}

/// What a successful check, upload or apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The channel offers the running version.
    UpToDate { version: String },
    /// A release is staged; `requested` if `request.json` was written.
    Staged { version: String, requested: bool },
    /// The release is installed in the other slot and waits for the reboot (`pending.json`).
    AwaitingReboot { version: String },
}

/// The node's own view of the update, besides the installer's files.
#[derive(Debug, Clone)]
struct NodeState {
    last_check: Option<SystemTime>,
    available: Option<String>,
    state: &'static str,
    progress: Progress,
    last_error: Option<ErrorView>,
    changed: SystemTime,
    /// The last check found a verified but expired manifest (cleared by a check that verified
    /// an unexpired one): the `mxnode_update_channel_stale` gauge.
    channel_stale: bool,
}

/// `GET /api/v1/update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpdateView {
    /// The installed version running now.
    pub version: String,
    /// The root slot booted (`a`/`b`), null off the appliance.
    pub slot: Option<String>,
    /// Whether the current boot is blessed; null when the machine has no A/B boot.
    pub blessed: Option<bool>,
    pub floor: Option<String>,
    pub channel: Option<String>,
    pub last_check: Option<String>,
    /// The version staged or offered by the channel, when newer than the running one.
    pub available: Option<String>,
    /// `idle`, `checking`, `downloading`, `staged`, `requested`, `refused`, `failed`,
    /// `channel_stale`, or the installer's `installing`, `installed`, `reboot-pending`,
    /// `rolled-back`.
    pub state: String,
    pub progress: Progress,
    pub last_error: Option<ErrorView>,
    pub history: Vec<HistoryEntry>,
}

/// The node's update agent.
pub struct Updater {
    config: UpdateConfig,
    /// The channel's HTTPS client (system roots plus `channel_ca`), when a channel is set.
    client: Option<net::Client>,
    state: Mutex<NodeState>,
    /// Held while a check, upload or apply runs: one at a time.
    busy: Mutex<()>,
    /// The `at` of the last installer status whose refusal was audited.
    audited_installer: Mutex<Option<String>>,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("channel", &self.config.channel)
            .finish_non_exhaustive()
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

impl Updater {
    /// The agent for `config`; creates the spool directory.
    pub fn new(config: UpdateConfig) -> Result<Updater, String> {
        fs::create_dir_all(&config.spool_dir).map_err(|e| {
            format!(
                "update.spool_dir: cannot create {}: {e}",
                config.spool_dir.display()
            )
        })?;
        let client = match &config.channel {
            Some(_) => Some(channel_client(config.channel_ca.as_deref())?),
            None => None,
        };
        sweep_uploads(&config.spool_dir);
        // Refusals the installer recorded before this start were audited by the node then.
        let audited = StateDir(config.state_dir.clone()).status().map(|s| s.at);
        Ok(Updater {
            client,
            state: Mutex::new(NodeState {
                last_check: None,
                available: None,
                state: "idle",
                progress: Progress::default(),
                last_error: None,
                changed: SystemTime::UNIX_EPOCH,
                channel_stale: false,
            }),
            busy: Mutex::new(()),
            audited_installer: Mutex::new(audited),
            config,
        })
    }

    pub fn config(&self) -> &UpdateConfig {
        &self.config
    }

    /// Whether the keys this node trusts for releases (`update.keys`, read now, as a check
    /// reads it) include the development key: then anyone can sign a release it installs
    /// (issue 16). A keys file that does not load trusts no key, so it answers false.
    pub fn development_keys(&self) -> bool {
        development_keys(&self.config.keys)
    }

    fn set(&self, now: SystemTime, f: impl FnOnce(&mut NodeState)) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state);
        state.changed = now;
    }

    fn facts_inputs(
        &self,
    ) -> Result<(TrustedKeys, Option<semver::Version>, semver::Version), UpdateError> {
        let keys = TrustedKeys::load(&self.config.keys)
            .map_err(|e| UpdateError::failed("keys_file", format!("update.keys: {e}")))?;
        let floor = StateDir(self.config.state_dir.clone()).floor();
        Ok((keys, floor, install::running_version()))
    }

    /// Judges a manifest and signature as of `now`.
    fn judge(
        &self,
        manifest: &[u8],
        signature: &[u8],
        now: SystemTime,
    ) -> Result<Manifest, UpdateError> {
        let (keys, floor, running) = self.facts_inputs()?;
        let facts = Facts {
            product: PRODUCT,
            compatible: &self.config.compatible,
            floor: floor.as_ref(),
            running: &running,
            now,
        };
        policy::check_release(manifest, signature, &keys, &facts).map_err(UpdateError::Refused)
    }

    /// Runs `f` as the one update operation, recording its outcome in the node state.
    fn exclusive(
        &self,
        now: SystemTime,
        f: impl FnOnce() -> Result<Outcome, UpdateError>,
    ) -> Result<Outcome, UpdateError> {
        let Ok(_guard) = self.busy.try_lock() else {
            return Err(UpdateError::Busy);
        };
        // Root is reading the staged release: replacing it now would fail that install.
        if StateDir(self.config.state_dir.clone())
            .status()
            .is_some_and(|s| s.state == "installing")
            && self.config.spool_dir.join(REQUEST_FILE).exists()
        {
            return Err(UpdateError::Busy);
        }
        let result = f();
        let standing = result.is_err().then(|| self.standing()).flatten();
        self.set(now, |s| match &result {
            Ok(Outcome::UpToDate { .. }) => {
                s.state = "idle";
                s.available = None;
                s.last_error = None;
            }
            Ok(Outcome::Staged { version, requested }) => {
                s.state = if *requested { "requested" } else { "staged" };
                s.available = Some(version.clone());
                s.last_error = None;
            }
            Ok(Outcome::AwaitingReboot { version }) => {
                s.state = "reboot-pending";
                s.available = Some(version.clone());
                s.last_error = None;
            }
            Err(e) => {
                // A release staged earlier and still in place stays what the state says;
                // the refusal or failure is the last error.
                s.state = match standing {
                    Some(word) => word,
                    None if matches!(e, UpdateError::Refused(_)) => "refused",
                    None if matches!(e, UpdateError::ChannelStale { .. }) => "channel_stale",
                    None => "failed",
                };
                if standing.is_none() {
                    s.available = None;
                }
                s.last_error = Some(e.view());
            }
        });
        result
    }

    /// `requested` or `staged` while an earlier release is still staged in the spool.
    fn standing(&self) -> Option<&'static str> {
        if self.config.spool_dir.join(REQUEST_FILE).exists() {
            Some("requested")
        } else if self.staged_dir().join(MANIFEST_FILE).exists() {
            Some("staged")
        } else {
            None
        }
    }

    /// Polls the channel once: judges its release, downloads and stages it, and requests the
    /// install when `auto_apply` is set.
    ///
    /// The manifest is always verified first (signature, then validity): only a verified,
    /// unexpired manifest naming the running version is "up to date"; a verified but expired
    /// one is [`UpdateError::ChannelStale`], whatever version it names (issue 16).
    pub fn check(&self, now: SystemTime) -> Result<Outcome, UpdateError> {
        let (Some(channel), Some(client)) = (&self.config.channel, &self.client) else {
            return Err(UpdateError::NoChannel);
        };
        let result = self.exclusive(now, || {
            self.set(now, |s| {
                s.state = "checking";
                s.last_check = Some(now);
            });
            let manifest_bytes = fetch_small(
                client,
                &format!("{channel}{MANIFEST_FILE}"),
                MAX_MANIFEST_BYTES,
            )?;
            let signature = fetch_small(
                client,
                &format!("{channel}{SIGNATURE_FILE}"),
                SIGNATURE_BYTES,
            )?;
            let manifest = match self.judge(&manifest_bytes, &signature, now) {
                Ok(manifest) => manifest,
                // Verified and valid, and the running version: nothing to do.
                Err(UpdateError::Refused(Refusal::NotNewer { version, .. }))
                    if version == install::running_version() =>
                {
                    return Ok(Outcome::UpToDate {
                        version: version.to_string(),
                    });
                }
                // Verified (expiry is judged only after the signature), but expired.
                Err(UpdateError::Refused(Refusal::Expired { expires })) => {
                    return Err(UpdateError::ChannelStale {
                        version: Manifest::parse(&manifest_bytes)
                            .map(|m| m.version.to_string())
                            .unwrap_or_default(),
                        expires,
                    });
                }
                Err(e) => return Err(e),
            };
            let history = StateDir(self.config.state_dir.clone()).history();
            policy::check_not_rolled_back(
                &manifest,
                history.iter().map(|h| {
                    (
                        h.event.as_str(),
                        h.version.as_str(),
                        h.at.as_str(),
                        h.cause.map(install::TrialCause::as_str),
                    )
                }),
            )
            .map_err(UpdateError::Refused)?;
            // Installed already, the reboot still to come: nothing to fetch or install again.
            if StateDir(self.config.state_dir.clone())
                .pending()
                .is_some_and(|p| p.version == manifest.version.to_string())
            {
                return Ok(Outcome::AwaitingReboot {
                    version: manifest.version.to_string(),
                });
            }
            let staged = self.staged_dir();
            if fs::read(staged.join(MANIFEST_FILE)).ok().as_deref() == Some(&manifest_bytes[..])
                && self.staged_complete(&manifest)
            {
                return self.staged(&manifest, &manifest_bytes, &signature, now, false);
            }
            policy::check_space(&manifest, self.available_space()?)
                .map_err(UpdateError::Refused)?;
            self.unstage();
            fs::create_dir_all(&staged).map_err(|e| {
                UpdateError::failed("spool", format!("cannot create {}: {e}", staged.display()))
            })?;
            let total = manifest.artifacts.total_size();
            let mut done = 0;
            for kind in ArtifactKind::ALL {
                let artifact = manifest.artifacts.get(kind);
                let url = format!("{channel}{}", artifact.path);
                let part = staged.join(format!("{}.part", kind.file_name()));
                let copied = download(client, &url, &part, artifact.size, &mut |n| {
                    self.set(now, |s| {
                        s.state = "downloading";
                        s.progress = Progress {
                            done: done + n,
                            total,
                        };
                    })
                })?;
                if let Err(refusal) =
                    policy::check_artifact(&manifest, kind, copied.size, &copied.sha256)
                {
                    let _ = fs::remove_dir_all(&staged);
                    return Err(UpdateError::Refused(refusal));
                }
                fs::rename(&part, staged.join(kind.file_name())).map_err(|e| {
                    UpdateError::failed("spool", format!("cannot stage {}: {e}", kind.file_name()))
                })?;
                done += copied.size;
            }
            self.staged(&manifest, &manifest_bytes, &signature, now, true)
        });
        // Only the outcome of a verified manifest says whether the channel is stale; a failed
        // fetch or a refusal leaves the last word standing.
        match &result {
            Ok(_) => self.set(now, |s| s.channel_stale = false),
            Err(UpdateError::ChannelStale { .. }) => self.set(now, |s| s.channel_stale = true),
            Err(_) => {}
        }
        result
    }

    /// Whether the last check found the channel's verified manifest expired (issue 16).
    pub fn channel_stale(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .channel_stale
    }

    /// Takes an uploaded bundle (already spooled at `path` inside the spool directory).
    pub fn upload(&self, path: &Path, now: SystemTime) -> Result<Outcome, UpdateError> {
        let result = self.exclusive(now, || self.read_upload(path, now));
        let _ = fs::remove_file(path);
        result
    }

    fn read_upload(&self, path: &Path, now: SystemTime) -> Result<Outcome, UpdateError> {
        let incoming = self.config.spool_dir.join(INCOMING_DIR);
        let _ = fs::remove_dir_all(&incoming);
        fs::create_dir_all(&incoming).map_err(|e| {
            UpdateError::failed(
                "spool",
                format!("cannot create {}: {e}", incoming.display()),
            )
        })?;
        let mut file = File::open(path)
            .map_err(|e| UpdateError::failed("spool", format!("cannot read the upload: {e}")))?;
        let available = self.available_space()?;
        let mut judge = |m: &[u8], s: &[u8]| -> Result<Manifest, Refusal> {
            let manifest = match self.judge(m, s, now) {
                Ok(m) => m,
                Err(UpdateError::Refused(r)) => return Err(r),
                Err(other) => return Err(Refusal::Malformed(other.view().message)),
            };
            policy::check_space(&manifest, available)?;
            Ok(manifest)
        };
        let result = release::read_bundle(&mut file, &incoming, &mut judge, &mut |n| {
            self.set(now, |s| {
                s.state = "downloading";
                s.progress.done = n;
            })
        });
        let (manifest, bytes, signature) = match result {
            Ok(taken) => taken,
            Err(e) => {
                let _ = fs::remove_dir_all(&incoming);
                return Err(match e {
                    BundleError::Refused(r) => UpdateError::Refused(r),
                    BundleError::Invalid(why) => UpdateError::InvalidBundle(why),
                    BundleError::Io(e) => {
                        UpdateError::failed("spool", format!("cannot store the bundle: {e}"))
                    }
                });
            }
        };
        let staged = self.staged_dir();
        self.unstage();
        fs::rename(&incoming, &staged)
            .map_err(|e| UpdateError::failed("spool", format!("cannot stage the bundle: {e}")))?;
        self.staged(&manifest, &bytes, &signature, now, true)
    }

    /// Requests the install of the staged release (re-judged now).
    pub fn apply(&self, now: SystemTime) -> Result<Outcome, UpdateError> {
        self.exclusive(now, || {
            let staged = self.staged_dir();
            let (Ok(bytes), Ok(signature)) = (
                fs::read(staged.join(MANIFEST_FILE)),
                fs::read(staged.join(SIGNATURE_FILE)),
            ) else {
                return Err(UpdateError::NothingStaged);
            };
            let manifest = self.judge(&bytes, &signature, now)?;
            if !self.staged_complete(&manifest) {
                return Err(UpdateError::NothingStaged);
            }
            self.request(&manifest, &bytes, &signature)?;
            Ok(Outcome::Staged {
                version: manifest.version.to_string(),
                requested: true,
            })
        })
    }

    /// Withdraws the install request and removes the staged release (the request always
    /// goes first: it must never name files that are being replaced).
    fn unstage(&self) {
        let _ = fs::remove_file(self.config.spool_dir.join(REQUEST_FILE));
        let _ = fs::remove_dir_all(self.staged_dir());
    }

    fn staged_dir(&self) -> PathBuf {
        self.config.spool_dir.join(STAGED_DIR)
    }

    /// Whether every artifact of `manifest` is staged with its size (hashes were checked when
    /// staged, and root checks them again).
    fn staged_complete(&self, manifest: &Manifest) -> bool {
        ArtifactKind::ALL.iter().all(|k| {
            fs::metadata(self.staged_dir().join(k.file_name()))
                .is_ok_and(|m| m.len() == manifest.artifacts.get(*k).size)
        })
    }

    /// Records the staged release's manifest and signature; requests the install when
    /// configured (`auto` says whether this comes from a check or upload).
    fn staged(
        &self,
        manifest: &Manifest,
        bytes: &[u8],
        signature: &[u8],
        now: SystemTime,
        fresh: bool,
    ) -> Result<Outcome, UpdateError> {
        let staged = self.staged_dir();
        if fresh {
            for (name, content) in [(MANIFEST_FILE, bytes), (SIGNATURE_FILE, signature)] {
                super::write_atomic(&staged.join(name), content).map_err(|e| {
                    UpdateError::failed("spool", format!("cannot write staged {name}: {e}"))
                })?;
            }
        }
        let total = manifest.artifacts.total_size();
        self.set(now, |s| s.progress = Progress { done: total, total });
        let requested = if self.config.auto_apply {
            self.request(manifest, bytes, signature)?;
            true
        } else {
            self.config.spool_dir.join(REQUEST_FILE).exists()
        };
        Ok(Outcome::Staged {
            version: manifest.version.to_string(),
            requested,
        })
    }

    /// Writes `request.json` for root; refused from a boot that is known not to be blessed
    /// (a machine without A/B boot gets its refusal from the installer).
    fn request(
        &self,
        manifest: &Manifest,
        bytes: &[u8],
        signature: &[u8],
    ) -> Result<(), UpdateError> {
        if let Boot::Entry(entry) = install::read_boot() {
            policy::check_boot(&Boot::Entry(entry)).map_err(UpdateError::Refused)?;
        }
        let manifest_text = String::from_utf8(bytes.to_vec())
            .map_err(|_| UpdateError::Refused(Refusal::Malformed("not UTF-8".into())))?;
        let request = Request {
            manifest: manifest_text,
            signature: base64::engine::general_purpose::STANDARD.encode(signature),
        };
        let json = serde_json::to_vec(&request)
            .map_err(|e| UpdateError::failed("spool", format!("cannot encode the request: {e}")))?;
        super::write_atomic(&self.config.spool_dir.join(REQUEST_FILE), &json).map_err(|e| {
            UpdateError::failed("spool", format!("cannot write {REQUEST_FILE}: {e}"))
        })?;
        log::info!("update: requested the install of {}", manifest.version);
        Ok(())
    }

    /// Free bytes on the spool filesystem.
    fn available_space(&self) -> Result<u64, UpdateError> {
        let stat = nix::sys::statvfs::statvfs(&self.config.spool_dir).map_err(|e| {
            UpdateError::failed("spool", format!("cannot stat the spool directory: {e}"))
        })?;
        Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
    }

    /// A fresh spool path for one upload of `declared` bytes (when the client said), or
    /// `no_space` when the spool filesystem cannot hold the bundle and its unpacked artifacts
    /// (about twice its size) plus the margin: an upload that cannot fit is refused before a
    /// byte is spooled (issue 16).
    pub fn upload_spool(&self, declared: Option<u64>) -> Result<PathBuf, UpdateError> {
        if let Some(declared) = declared {
            let needed = declared
                .saturating_mul(2)
                .saturating_add(policy::SPACE_MARGIN_BYTES);
            let available = self.available_space()?;
            if available < needed {
                return Err(UpdateError::failed(
                    "no_space",
                    format!(
                        "the spool filesystem has {available} bytes free; this bundle needs {needed} \
                         (the bundle, its unpacked artifacts and a margin)"
                    ),
                ));
            }
        }
        Ok(self.upload_path())
    }

    /// A fresh spool path for one upload (concurrent uploads never share a file; the second
    /// is refused as busy once spooled, and its file removed).
    pub fn upload_path(&self) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.config
            .spool_dir
            .join(format!("{UPLOAD_PREFIX}{}-{n}.tar", std::process::id()))
    }

    /// The status the API shows: the node's state, overridden by the installer's when that is
    /// newer.
    pub fn view(&self) -> UpdateView {
        let node = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let dir = StateDir(self.config.state_dir.clone());
        let installer = dir.status().filter(|s| {
            humantime::parse_rfc3339(&s.at).is_ok_and(|at| {
                at >= node
                    .changed
                    .checked_sub(Duration::from_secs(1))
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            })
        });
        let (state, progress, last_error) = match installer {
            Some(InstallStatus {
                state,
                progress,
                error,
                ..
            }) => (state, progress, error),
            None => (node.state.to_string(), node.progress, node.last_error),
        };
        let boot = install::read_boot();
        UpdateView {
            version: install::running_version().to_string(),
            slot: install::booted_slot().map(|s| s.letter().to_string()),
            blessed: match boot {
                Boot::NotAb => None,
                Boot::Entry(entry) => Some(policy::is_blessed(&entry)),
            },
            floor: dir.floor().map(|f| f.to_string()),
            channel: self.config.channel.clone(),
            last_check: node.last_check.map(rfc3339),
            available: node.available,
            state,
            progress,
            last_error,
            history: dir.history(),
        }
    }

    /// A refusal, failure or rollback the installer recorded since the last call, to audit
    /// once, with the installer's state (`refused`, `failed`, `rolled-back`).
    pub fn installer_event(&self) -> Option<(String, ErrorView)> {
        let status = StateDir(self.config.state_dir.clone()).status()?;
        if !matches!(status.state.as_str(), "refused" | "failed" | "rolled-back") {
            return None;
        }
        let mut audited = self
            .audited_installer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if audited.as_deref() == Some(status.at.as_str()) {
            return None;
        }
        *audited = Some(status.at);
        status.error.map(|e| (status.state, e))
    }
}

/// Whether the keys file at `path` trusts the development key (see [`Updater::development_keys`]).
pub fn development_keys(path: &Path) -> bool {
    TrustedKeys::load(path).is_ok_and(|keys| keys.trusts_development_key())
}

/// The channel's HTTPS client: system roots plus `channel_ca`, HTTP/1.1.
fn channel_client(channel_ca: Option<&Path>) -> Result<net::Client, String> {
    let tls = net::client_config(channel_ca, net::Protocols::Http1).map_err(|e| {
        let path = channel_ca
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        match e {
            net::CaError::Read(e) => format!("update.channel_ca: cannot read {path}: {e}"),
            net::CaError::Empty => format!("update.channel_ca: {path} holds no PEM certificate"),
        }
    })?;
    Ok(net::Client::new(tls, MAX_IDLE_CONNECTIONS))
}

/// GETs `url`, expecting 200; the answer's body is to be read before `timeout` ends too. Runs
/// the request on this (blocking) thread.
fn get(client: &net::Client, url: &str, timeout: Duration) -> Result<net::Response, UpdateError> {
    let response = smol::block_on(client.get(url, Instant::now() + timeout))
        .map_err(|e| UpdateError::failed("channel_unreachable", format!("GET {url}: {e}")))?;
    let status = response.status();
    if status != 200 {
        return Err(UpdateError::failed(
            "channel_error",
            format!("GET {url}: HTTP {status}"),
        ));
    }
    Ok(response)
}

/// GETs a small file, refusing one over `limit` bytes.
fn fetch_small(client: &net::Client, url: &str, limit: usize) -> Result<Vec<u8>, UpdateError> {
    let response = get(client, url, SMALL_REQUEST_TIMEOUT)?;
    smol::block_on(response.read_body(limit)).map_err(|e| match e {
        net::NetError::TooLarge(_) => UpdateError::failed(
            "channel_error",
            format!("GET {url}: more than {limit} bytes"),
        ),
        e => UpdateError::failed("channel_unreachable", format!("GET {url}: {e}")),
    })
}

/// Downloads `url` into `part`, at most `limit` bytes (one more is read to notice a longer
/// file), hashing on the way.
fn download(
    client: &net::Client,
    url: &str,
    part: &Path,
    limit: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<super::Copied, UpdateError> {
    let response = get(client, url, ARTIFACT_TIMEOUT)?;
    let mut file = File::create(part).map_err(|e| {
        UpdateError::failed("spool", format!("cannot create {}: {e}", part.display()))
    })?;
    let mut reader = BodyReader {
        response,
        pending: bytes::Bytes::new(),
    };
    copy_hashing(&mut reader, &mut file, limit, progress)
        .and_then(|c| file.sync_all().map(|()| c))
        .map_err(|e| UpdateError::failed("channel_unreachable", format!("GET {url}: {e}")))
}

/// An answer's body as a blocking reader, for [`copy_hashing`] on the check's own thread: each
/// read waits (`smol::block_on`) for the next piece the connection delivers.
struct BodyReader {
    response: net::Response,
    /// What is left of the last piece.
    pending: bytes::Bytes,
}

impl std::io::Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pending.is_empty() {
            match smol::block_on(self.response.chunk()) {
                Ok(Some(chunk)) => self.pending = chunk,
                Ok(None) => return Ok(0),
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

/// Records an event in the audit log (the node passes its store's audit here).
pub type Audit = Arc<dyn Fn(&str, String) + Send + Sync>;

/// The node's update loop: the first check after [`MAX_FIRST_CHECK_DELAY`] at most, then every
/// `check_interval` (only with a channel); installer refusals audited as they appear. Ends
/// when `stop` closes.
pub async fn run(updater: Arc<Updater>, audit: Audit, stop: smol::channel::Receiver<()>) {
    let interval = updater.config.check_interval;
    let mut next_check = std::time::Instant::now() + interval.min(MAX_FIRST_CHECK_DELAY);
    loop {
        let tick = async {
            smol::Timer::after(INSTALLER_POLL_INTERVAL).await;
            true
        };
        let stopped = async {
            let _ = stop.recv().await;
            false
        };
        if !smol::future::or(tick, stopped).await {
            return;
        }
        let u = updater.clone();
        let a = audit.clone();
        let due = updater.config.channel.is_some() && std::time::Instant::now() >= next_check;
        if due {
            next_check = std::time::Instant::now() + interval;
        }
        smol::unblock(move || {
            match u.installer_event() {
                Some((state, error)) if state == "rolled-back" => {
                    a("update.rolled_back", error.message);
                }
                Some((state, error)) => {
                    let verb = if state == "failed" {
                        "failed"
                    } else {
                        "refused"
                    };
                    a(
                        &format!("update.{verb}"),
                        format!("update {verb}: {} ({})", error.message, error.code),
                    );
                }
                None => {}
            }
            if due {
                let _ = record_outcome(&a, "system check", u.check(SystemTime::now()));
            }
        })
        .await;
    }
}

/// Audits the outcome of a check, upload or apply; refusals as `update.refused`.
pub fn record_outcome(
    audit: &Audit,
    what: &str,
    result: Result<Outcome, UpdateError>,
) -> Result<Outcome, UpdateError> {
    match &result {
        Ok(Outcome::UpToDate { version }) => {
            log::info!("update: {what}: up to date ({version})");
        }
        Ok(Outcome::AwaitingReboot { version }) => {
            log::info!("update: {what}: {version} is installed and waits for the reboot");
        }
        Ok(Outcome::Staged { version, requested }) => audit(
            if *requested {
                "update.requested"
            } else {
                "update.staged"
            },
            format!(
                "{what}: {version} staged{}",
                if *requested {
                    ", install requested"
                } else {
                    ""
                }
            ),
        ),
        Err(UpdateError::Refused(r)) => {
            audit(
                "update.refused",
                format!("update refused: {r} ({})", r.code()),
            );
        }
        Err(e @ UpdateError::ChannelStale { .. }) => {
            let view = e.view();
            log::warn!("update: {what}: {} ({})", view.message, view.code);
            audit(
                "update.channel_stale",
                format!("{what}: {} ({})", view.message, view.code),
            );
        }
        Err(UpdateError::Busy) => {}
        Err(e) => {
            let view = e.view();
            log::warn!("update: {what} failed: {} ({})", view.message, view.code);
        }
    }
    result
}
