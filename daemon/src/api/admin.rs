//! The console's administrator (DESIGN §7): setup mode, the admin account, login sessions,
//! login rate limiting and CSRF checks. Sessions act on the same controller as API keys, with
//! every scope.
//!
//! Setup mode: while the store holds no `admin` setting, [`Api::begin_setup`] generates a
//! one-time token, logs it (journald) and writes it to `<runtime_dir>/setup-token` (0600, in a
//! 0700 directory) for the console banner. `POST /api/v1/setup` with that token creates the
//! admin and ends setup mode for good (the token is forgotten and its file deleted); without it
//! nothing happens. There are no default credentials.
//!
//! The password is stored only as PBKDF2-HMAC-SHA256 (ring) with a random per-user salt. A
//! session id is 256 random bits held in memory only, keyed by its SHA-256, so a node restart
//! logs everyone out. State-changing requests of a session must carry the session's CSRF token
//! (`X-CSRF-Token`, a synchronizer token) and, when the browser sends `Origin`, come from the
//! node's own origin.
//!
//! It must never log or store a password, a setup token (other than the one announcement in
//! the journal, which is the point of it), a session id or a CSRF token, and never put what a
//! client typed as a user name into a log line (people type passwords into the wrong field).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use ring::digest::{SHA256, digest};
use ring::pbkdf2;
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};

use super::{Api, ApiError, Caller, FieldError, Principal, Scope, rfc3339};
use crate::store::{StoreError, unix_ms};

/// PBKDF2-HMAC-SHA256 iterations for new password hashes (OWASP's 2023 recommendation). The
/// count is stored with each hash, so raising it later keeps old hashes verifiable.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Random salt per password hash.
const SALT_BYTES: usize = 16;
/// Length of the derived key.
const HASH_BYTES: usize = 32;
/// Shortest admin password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest admin password accepted (bounds the hashing work per request).
pub const MAX_PASSWORD_CHARS: usize = 1024;
/// Longest admin user name.
pub const MAX_USERNAME_CHARS: usize = 64;
/// Random bytes of a setup token, a session id and a CSRF token.
const TOKEN_BYTES: usize = 32;
/// A session ends after this long without a request.
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after login, however active.
pub const SESSION_MAX_AGE: Duration = Duration::from_secs(12 * 60 * 60);
/// Sessions held at once; the oldest is dropped beyond it (bounds memory).
const MAX_SESSIONS: usize = 64;
/// Failed logins from one client within [`LOCKOUT`] before it is locked out of logins.
pub const CLIENT_FAILURES_BEFORE_LOCKOUT: u32 = 5;
/// Failed logins from all clients within [`LOCKOUT`] before every login is locked out (a
/// guesser with many addresses).
pub const GLOBAL_FAILURES_BEFORE_LOCKOUT: u32 = 50;
/// Wrong setup tokens from one client within [`LOCKOUT`] before it is locked out of setup.
/// Counted apart from logins: setup-token guesses never lock the admin out of logging in.
pub const CLIENT_SETUP_FAILURES_BEFORE_LOCKOUT: u32 = 5;
/// Wrong setup tokens from all clients within [`LOCKOUT`] before setup is locked out.
pub const GLOBAL_SETUP_FAILURES_BEFORE_LOCKOUT: u32 = 50;
/// How long a lockout lasts, and the window failures are counted in.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// PBKDF2 hashes (login, setup, password change) computed at once; past it the request is
/// answered 503 `busy` with `Retry-After` at once. Each hash is ~0.3 s of one core's full
/// attention: two at once leave the box's other core to mail.
pub const MAX_CONCURRENT_HASHES: usize = 2;
/// `Retry-After` (seconds) of the 503 when every hash slot is taken.
const HASH_BUSY_RETRY_SECONDS: u64 = 2;
/// Clients whose failures are tracked at once; beyond it only the global count applies.
const MAX_TRACKED_CLIENTS: usize = 10_000;
/// Name of the session cookie over HTTPS: the `__Host-` prefix makes browsers accept it only
/// with `Secure`, `Path=/` and no `Domain`, from a secure origin, so neither a sibling host
/// nor a plain-HTTP response can plant or overwrite it.
pub const SESSION_COOKIE: &str = "__Host-mxnode_session";
/// Name of the session cookie on plain HTTP (`mxnode dev` and other loopback listeners only):
/// without a prefix, as browsers refuse `__Host-` cookies from an origin that is not HTTPS.
pub const PLAIN_SESSION_COOKIE: &str = "mxnode_session";
/// The store setting that holds the admin account.
const ADMIN_SETTING: &str = "admin";
/// The setup token's file name under `node.runtime_dir`.
pub const SETUP_TOKEN_FILE: &str = "setup-token";
/// Prefix of a session principal's `key_id`, so its audit actor reads `admin:<name>`.
pub(crate) const SESSION_PRINCIPAL_PREFIX: &str = "session:";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new().fill(&mut buf).map_err(|_| {
        log::error!("admin: no system randomness");
        ApiError::internal()
    })?;
    Ok(hex(&buf))
}

/// Constant-time equality of two strings of public length.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The admin account as stored (encrypted by the store).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AdminRecord {
    username: String,
    /// `pbkdf2-sha256`.
    algorithm: String,
    iterations: u32,
    salt_hex: String,
    hash_hex: String,
    created_at: u64,
}

fn hash_password(password: &str, salt: &[u8], iterations: u32) -> [u8; HASH_BYTES] {
    let mut out = [0u8; HASH_BYTES];
    let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

fn password_matches(record: &AdminRecord, password: &str) -> bool {
    let (Some(salt), Some(hash)) = (unhex(&record.salt_hex), unhex(&record.hash_hex)) else {
        return false;
    };
    let Some(iterations) = NonZeroU32::new(record.iterations) else {
        return false;
    };
    record.algorithm == "pbkdf2-sha256"
        && pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password.as_bytes(),
            &hash,
        )
        .is_ok()
}

/// One login session, in memory.
#[derive(Debug, Clone)]
struct Session {
    username: String,
    csrf: String,
    created_ms: u64,
    last_seen_ms: u64,
}

impl Session {
    fn expires_ms(&self) -> u64 {
        (self.last_seen_ms + millis(SESSION_IDLE_TIMEOUT))
            .min(self.created_ms + millis(SESSION_MAX_AGE))
    }
}

/// Failures of one client (or of all) in the current window, and the attempts under way.
#[derive(Debug, Default, Clone, Copy)]
struct Failures {
    count: u32,
    window_start_ms: u64,
    locked_until_ms: u64,
    /// Attempts admitted and not yet judged: they count against the limit before their hash
    /// runs, so parallel guesses cannot outrun the lockout.
    pending: u32,
}

impl Failures {
    /// Failures counted in the window still open at `now`.
    fn counted(&self, now: u64) -> u32 {
        if now.saturating_sub(self.window_start_ms) >= millis(LOCKOUT) {
            0
        } else {
            self.count
        }
    }

    fn add(&mut self, now: u64, limit: u32) {
        if now.saturating_sub(self.window_start_ms) >= millis(LOCKOUT) {
            self.count = 0;
            self.window_start_ms = now;
        }
        self.count += 1;
        if self.count >= limit {
            self.locked_until_ms = now + millis(LOCKOUT);
            self.count = 0;
            self.window_start_ms = now;
        }
    }

    /// Refuses while locked out, or while the failures so far and the attempts under way
    /// reach `limit`.
    fn admit(&self, now: u64, limit: u32) -> Result<(), ApiError> {
        if self.locked_until_ms > now {
            return Err(too_many_attempts(self.locked_until_ms, now));
        }
        if self.counted(now) + self.pending >= limit {
            return Err(ApiError::new(
                429,
                "attempts_pending",
                "too many attempts are under way: wait for their answers, then try again",
            )
            .retry_after(HASH_BUSY_RETRY_SECONDS));
        }
        Ok(())
    }
}

/// The per-client and global limits of one kind of attempt.
#[derive(Debug, Clone, Copy)]
struct Limits {
    client: u32,
    global: u32,
}

const LOGIN_LIMITS: Limits = Limits {
    client: CLIENT_FAILURES_BEFORE_LOCKOUT,
    global: GLOBAL_FAILURES_BEFORE_LOCKOUT,
};

const SETUP_LIMITS: Limits = Limits {
    client: CLIENT_SETUP_FAILURES_BEFORE_LOCKOUT,
    global: GLOBAL_SETUP_FAILURES_BEFORE_LOCKOUT,
};

#[derive(Debug, Default)]
struct Limiter {
    clients: HashMap<Option<IpAddr>, Failures>,
    global: Failures,
}

/// One admitted attempt (a login, a setup token, a current password), counted as under way
/// from before its check until it is judged; dropping it unjudged counts nothing.
struct Attempt<'a> {
    limiter: &'a Mutex<Limiter>,
    limits: Limits,
    remote: Option<IpAddr>,
    /// Whether the client's own entry holds this attempt (beyond [`MAX_TRACKED_CLIENTS`] only
    /// the global count does).
    tracked: bool,
}

impl<'a> Attempt<'a> {
    /// Admits an attempt of `remote`, or refuses it (429) before any work is done.
    fn begin(
        limiter: &'a Mutex<Limiter>,
        limits: Limits,
        remote: Option<IpAddr>,
        now: u64,
    ) -> Result<Attempt<'a>, ApiError> {
        let mut l = lock(limiter);
        if let Some(client) = l.clients.get(&remote) {
            client.admit(now, limits.client)?;
        }
        l.global.admit(now, limits.global)?;
        if l.clients.len() >= MAX_TRACKED_CLIENTS {
            l.clients
                .retain(|_, f| f.locked_until_ms > now || f.pending > 0 || f.counted(now) > 0);
        }
        let tracked = l.clients.len() < MAX_TRACKED_CLIENTS || l.clients.contains_key(&remote);
        if tracked {
            l.clients.entry(remote).or_default().pending += 1;
        }
        l.global.pending += 1;
        Ok(Attempt {
            limiter,
            limits,
            remote,
            tracked,
        })
    }

    /// The attempt failed: it counts towards the lockout.
    fn failed(self, now: u64) {
        let mut l = lock(self.limiter);
        if self.tracked {
            l.clients
                .entry(self.remote)
                .or_default()
                .add(now, self.limits.client);
        }
        l.global.add(now, self.limits.global);
    }

    /// The attempt succeeded: the client's failures are forgiven.
    fn succeeded(self) {
        if let Some(f) = lock(self.limiter).clients.get_mut(&self.remote) {
            f.count = 0;
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut l = lock(self.limiter);
        if self.tracked
            && let Some(f) = l.clients.get_mut(&self.remote)
        {
            f.pending = f.pending.saturating_sub(1);
        }
        l.global.pending = l.global.pending.saturating_sub(1);
    }
}

/// A slot of [`MAX_CONCURRENT_HASHES`], held while one hash runs.
pub(crate) struct HashSlot<'a>(&'a AtomicUsize);

impl Drop for HashSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Setup mode: the token and where it was written.
#[derive(Debug)]
struct Setup {
    token: String,
    file: Option<PathBuf>,
}

/// The controller's administrator state.
#[derive(Debug)]
pub(crate) struct AdminState {
    /// Iterations for new hashes ([`PBKDF2_ITERATIONS`]; unit tests lower it).
    iterations: AtomicU32,
    setup: Mutex<Option<Setup>>,
    /// By the SHA-256 (hex) of the session id.
    sessions: Mutex<HashMap<String, Session>>,
    /// Failed logins (and current passwords).
    limiter: Mutex<Limiter>,
    /// Wrong setup tokens, apart from logins.
    setup_limiter: Mutex<Limiter>,
    /// PBKDF2 hashes running now.
    hashing: AtomicUsize,
    /// When the controller was made (the node's start), for the status page's uptime.
    started: std::time::Instant,
    /// The HTTPS certificate file, for the status page (set by the node at start).
    tls_cert: Mutex<Option<PathBuf>>,
    /// `node.data_dir`, for the status page's disk use (set by the node at start).
    data_dir: Mutex<Option<PathBuf>>,
    /// `update.keys`, for the status page's `development_keys` (set by the node at start).
    update_keys: Mutex<Option<PathBuf>>,
    /// The node's TLS listeners, for the certificate page (set by the node at start).
    certificates: Mutex<Option<std::sync::Arc<dyn super::tls::CertificateBackend>>>,
}

impl std::fmt::Debug for dyn super::tls::CertificateBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertificateBackend")
    }
}

impl Default for AdminState {
    fn default() -> AdminState {
        AdminState {
            started: std::time::Instant::now(),
            tls_cert: Mutex::new(None),
            certificates: Mutex::new(None),
            data_dir: Mutex::new(None),
            update_keys: Mutex::new(None),
            iterations: AtomicU32::new(PBKDF2_ITERATIONS),
            setup: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
            limiter: Mutex::new(Limiter::default()),
            setup_limiter: Mutex::new(Limiter::default()),
            hashing: AtomicUsize::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `GET /api/v1/setup`: whether the node still waits for its admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetupStatus {
    pub setup_required: bool,
}

/// `POST /api/v1/setup` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    pub token: String,
    pub username: String,
    pub password: String,
}

/// `POST /api/v1/session` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// `POST /api/v1/admin/password` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChangeRequest {
    pub current_password: String,
    pub new_password: String,
}

/// How many other sessions a password change or "log out everywhere" ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionsEnded {
    pub ended: usize,
}

/// The admin created by setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminView {
    pub username: String,
}

/// A session as its owner sees it: the CSRF token to send with every state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionView {
    pub username: String,
    pub csrf_token: String,
    pub expires_at: String,
}

/// A new session: the cookie value (for the HTTP layer's `Set-Cookie`, never rendered into a
/// body) and its view.
#[derive(Debug)]
pub struct NewSession {
    pub session_id: String,
    pub max_age: Duration,
    pub view: SessionView,
}

/// `GET /api/v1/status`: what the console's status page shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub version: &'static str,
    pub uptime_seconds: u64,
    /// Bytes the metadata store takes on disk.
    pub store_size_bytes: u64,
    /// The certificate the TLS listeners serve (HTTPS's when both have TLS).
    pub tls: Option<crate::certificate::CertificateFacts>,
    /// The file system holding `node.data_dir`.
    pub disk: Option<crate::volume::DiskUse>,
    /// The appliance's data volume (encryption, unlock method); `null` off the appliance.
    pub volume: Option<crate::volume::VolumeState>,
    /// Whether the release keys this node trusts (`update.keys`) include the development key,
    /// whose private half is public: then anyone can sign a release it installs (issue 16).
    pub development_keys: bool,
}

/// The SHA-256 fingerprint of the first certificate of a PEM file, `AB:CD:…`.
pub fn certificate_fingerprint(cert_pem: &[u8]) -> Option<String> {
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem).ok()?;
    let sum = digest(&SHA256, &der);
    Some(
        sum.as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// Writes `text` to `dir/name`, creating `dir` 0700 and the file 0600.
fn write_token_file(dir: &Path, text: &str) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join(SETUP_TOKEN_FILE);
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(format!("{text}\n").as_bytes())?;
    Ok(path)
}

/// The problem with a new password, if any.
fn password_problem(key: &str, password: &str) -> Option<FieldError> {
    let length = password.chars().count();
    if length < MIN_PASSWORD_CHARS {
        Some(FieldError::new(
            key,
            format!("at least {MIN_PASSWORD_CHARS} characters"),
        ))
    } else if length > MAX_PASSWORD_CHARS {
        Some(FieldError::new(
            key,
            format!("at most {MAX_PASSWORD_CHARS} characters"),
        ))
    } else {
        None
    }
}

/// Offline (`mxnode reset-admin`, the node stopped): deletes the admin account, so the node's
/// next start enters setup mode with a fresh one-time setup token (journal, console banner,
/// `<node.runtime_dir>/setup-token`). Audited as `admin.reset` by `actor`. Returns the name of
/// the admin removed, `None` when there was none (already in setup mode).
pub fn reset_admin(
    store: &dyn crate::store::Store,
    actor: &str,
    now: std::time::SystemTime,
) -> Result<Option<String>, StoreError> {
    let Some(bytes) = store.get_setting(ADMIN_SETTING)? else {
        return Ok(None);
    };
    let username = serde_json::from_slice::<AdminRecord>(&bytes)
        .map(|r| r.username)
        .unwrap_or_else(|_| "unknown".into());
    store.delete_setting(ADMIN_SETTING)?;
    super::audit_event(
        store,
        now,
        actor,
        "admin.reset",
        Some(format!("admin:{username}")),
        Some("admin account removed; setup mode at the next start".into()),
    )?;
    Ok(Some(username))
}

fn too_many_attempts(until_ms: u64, now: u64) -> ApiError {
    let minutes = until_ms.saturating_sub(now).div_ceil(60_000).max(1);
    ApiError::new(
        429,
        "locked_out",
        format!("too many failed attempts: locked out; try again in {minutes} minute(s)"),
    )
    .retry_after(until_ms.saturating_sub(now).div_ceil(1000))
}

impl Api {
    fn admin_record(&self) -> Result<Option<AdminRecord>, StoreError> {
        Ok(self
            .store
            .get_setting(ADMIN_SETTING)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Lowers the PBKDF2 iterations of new hashes (unit tests run unoptimised ring).
    #[cfg(test)]
    pub(crate) fn set_password_iterations(&self, iterations: u32) {
        self.admin.iterations.store(iterations, Ordering::Relaxed);
    }

    /// At start: when no admin exists, enters setup mode with a fresh one-time token, logs it
    /// with the URL hint and the certificate fingerprint, and writes it to
    /// `<runtime_dir>/setup-token`. With an admin, removes a stale token file. Returns the token
    /// (for the caller's tests; the node ignores it).
    pub fn begin_setup(
        &self,
        runtime_dir: Option<&Path>,
        tls_fingerprint: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        if self.admin_record()?.is_some() {
            if let Some(dir) = runtime_dir {
                let _ = std::fs::remove_file(dir.join(SETUP_TOKEN_FILE));
            }
            return Ok(None);
        }
        let token = random_hex(TOKEN_BYTES / 2)?;
        let file = match runtime_dir.map(|dir| write_token_file(dir, &token)) {
            Some(Ok(path)) => Some(path),
            Some(Err(e)) => {
                log::warn!("setup: cannot write the setup token file: {e}");
                None
            }
            None => None,
        };
        log::warn!(
            "setup mode: no admin exists yet. Open the node's setup page (its https:// address) and enter the setup token {token}{}{}",
            file.as_ref()
                .map(|p| format!(" (also in {})", p.display()))
                .unwrap_or_default(),
            tls_fingerprint
                .map(|f| format!("; TLS certificate SHA-256 fingerprint {f}"))
                .unwrap_or_default()
        );
        *lock(&self.admin.setup) = Some(Setup {
            token: token.clone(),
            file,
        });
        Ok(Some(token))
    }

    /// Names the HTTPS certificate file the status page reports on.
    pub fn set_tls_certificate(&self, path: Option<PathBuf>) {
        *lock(&self.admin.tls_cert) = path;
    }

    /// Names `node.data_dir` for the status page's disk use.
    pub fn set_data_dir(&self, dir: PathBuf) {
        *lock(&self.admin.data_dir) = Some(dir);
    }

    pub(crate) fn data_dir(&self) -> Option<PathBuf> {
        lock(&self.admin.data_dir).clone()
    }

    /// Names the `update.keys` file the status page and metrics judge (issue 16).
    pub fn set_update_keys(&self, path: PathBuf) {
        *lock(&self.admin.update_keys) = Some(path);
    }

    /// Whether the trusted release keys include the development key: the keys file is read
    /// now and its keys compared, never a build flag (see ARCHITECTURE.md). False when no
    /// keys file was named or it does not load (then no release is trusted at all).
    pub(crate) fn development_keys(&self) -> bool {
        lock(&self.admin.update_keys)
            .clone()
            .is_some_and(|path| crate::update::agent::development_keys(&path))
    }

    /// Hands the controller the node's TLS listeners (the certificate page).
    pub fn set_certificates(&self, backend: std::sync::Arc<dyn super::tls::CertificateBackend>) {
        *lock(&self.admin.certificates) = Some(backend);
    }

    pub(crate) fn certificates(
        &self,
    ) -> Option<std::sync::Arc<dyn super::tls::CertificateBackend>> {
        lock(&self.admin.certificates).clone()
    }

    /// `GET /api/v1/status` (`settings:read`): version, uptime, store size, certificate.
    pub fn node_status(&self, caller: &Caller) -> Result<NodeStatus, ApiError> {
        self.authenticate(caller, Scope::SettingsRead)?;
        let tls = match self.certificates() {
            Some(backend) => backend.state().certificate,
            None => lock(&self.admin.tls_cert)
                .clone()
                .and_then(|path| std::fs::read(path).ok())
                .and_then(|pem| crate::certificate::facts(&pem)),
        };
        Ok(NodeStatus {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.admin.started.elapsed().as_secs(),
            store_size_bytes: self.store.size_bytes(),
            tls,
            disk: self
                .data_dir()
                .and_then(|dir| crate::volume::disk_use(&dir)),
            volume: crate::volume::volume_state(Path::new(crate::volume::VOLUME_STATE_FILE)),
            development_keys: self.development_keys(),
        })
    }

    /// `GET /api/v1/setup`.
    pub fn setup_status(&self) -> Result<SetupStatus, ApiError> {
        Ok(SetupStatus {
            setup_required: self.admin_record()?.is_none(),
        })
    }

    /// Admits a login (or current-password) attempt of the caller before its hash, or
    /// refuses it (429) while the caller or everyone is locked out.
    fn begin_login(&self, caller: &Caller) -> Result<Attempt<'_>, ApiError> {
        Attempt::begin(
            &self.admin.limiter,
            LOGIN_LIMITS,
            caller.remote,
            unix_ms(self.now()),
        )
    }

    /// Takes one of the [`MAX_CONCURRENT_HASHES`] slots, or answers 503 `busy`.
    pub(crate) fn hash_slot(&self) -> Result<HashSlot<'_>, ApiError> {
        let hashing = &self.admin.hashing;
        hashing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CONCURRENT_HASHES).then_some(n + 1)
            })
            .map_err(|_| {
                ApiError::new(
                    503,
                    "busy",
                    format!(
                        "the node is already checking {MAX_CONCURRENT_HASHES} passwords: try again in a few seconds"
                    ),
                )
                .retry_after(HASH_BUSY_RETRY_SECONDS)
            })?;
        Ok(HashSlot(hashing))
    }

    /// Counts a failed attempt and records it.
    fn attempt_failed(&self, attempt: Attempt<'_>, caller: &Caller, detail: &str) {
        attempt.failed(unix_ms(self.now()));
        self.record_failure(caller, "login.failed", None, None, detail.to_string());
    }

    fn check_origin(caller: &Caller) -> Result<(), ApiError> {
        let Some(origin) = caller.origin.as_deref() else {
            return Ok(());
        };
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        match (origin_host, caller.host.as_deref()) {
            (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
            _ => Err(ApiError::new(
                403,
                "cross_origin",
                "cross-origin request refused: the Origin is not this node",
            )),
        }
    }

    /// `POST /api/v1/setup`: with the setup token, creates the admin and ends setup mode.
    pub fn complete_setup(&self, caller: &Caller, body: &[u8]) -> Result<AdminView, ApiError> {
        Self::check_origin(caller)?;
        let attempt = Attempt::begin(
            &self.admin.setup_limiter,
            SETUP_LIMITS,
            caller.remote,
            unix_ms(self.now()),
        )?;
        let request: SetupRequest = serde_json::from_slice(body).map_err(|_| {
            ApiError::invalid(
                "invalid_body",
                "expected {\"token\", \"username\", \"password\"}",
                Vec::new(),
            )
        })?;
        if self.admin_record()?.is_some() {
            return Err(ApiError::new(
                409,
                "setup_complete",
                "setup is already complete: log in instead",
            ));
        }
        let token_ok = lock(&self.admin.setup)
            .as_ref()
            .is_some_and(|s| same(&s.token, request.token.trim()));
        if !token_ok {
            self.attempt_failed(attempt, caller, "wrong setup token");
            return Err(ApiError::new(
                403,
                "wrong_setup_token",
                "wrong setup token: use the token shown on the node's console",
            ));
        }
        let mut problems = Vec::new();
        let username = request.username.trim();
        if username.is_empty() {
            problems.push(FieldError::new("username", "must not be empty"));
        } else if username.chars().count() > MAX_USERNAME_CHARS
            || username
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            problems.push(FieldError::new(
                "username",
                format!("at most {MAX_USERNAME_CHARS} characters, no spaces or control characters"),
            ));
        }
        problems.extend(password_problem("password", &request.password));
        if !problems.is_empty() {
            return Err(ApiError::invalid(
                "invalid_admin",
                "the admin account is not valid",
                problems,
            ));
        }
        drop(attempt);
        let record = self.new_admin_record(username, &request.password)?;
        let bytes = serde_json::to_vec(&record).map_err(|_| ApiError::internal())?;
        {
            // Under the setup lock, so two racing setups cannot both create an admin.
            let mut setup = lock(&self.admin.setup);
            if self.admin_record()?.is_some() {
                return Err(ApiError::new(
                    409,
                    "setup_complete",
                    "setup is already complete: log in instead",
                ));
            }
            self.store.put_setting(ADMIN_SETTING, &bytes)?;
            if let Some(file) = setup.take().and_then(|s| s.file)
                && let Err(e) = std::fs::remove_file(&file)
            {
                log::warn!("setup: cannot delete {}: {e}", file.display());
            }
        }
        self.audit_best_effort(
            &format!("admin:{}", record.username),
            "setup.complete",
            None,
            Some("admin created; setup mode ended".into()),
        );
        Ok(AdminView {
            username: record.username,
        })
    }

    /// A fresh record for `username` with `password` hashed (in a hash slot).
    fn new_admin_record(&self, username: &str, password: &str) -> Result<AdminRecord, ApiError> {
        let salt = random_hex(SALT_BYTES)?;
        let salt_bytes = unhex(&salt).unwrap_or_default();
        let iterations = self.admin.iterations.load(Ordering::Relaxed);
        let hash = {
            let _slot = self.hash_slot()?;
            hash_password(password, &salt_bytes, iterations)
        };
        Ok(AdminRecord {
            username: username.to_string(),
            algorithm: "pbkdf2-sha256".into(),
            iterations,
            hash_hex: hex(&hash),
            salt_hex: salt,
            created_at: unix_ms(self.now()),
        })
    }

    /// `POST /api/v1/session`: checks the admin's password and opens a session.
    ///
    /// The attempt is counted as under way before the password is hashed, and at most
    /// [`MAX_CONCURRENT_HASHES`] hashes run at once, so parallel guesses can neither outrun
    /// the lockout nor take every core.
    pub fn login(&self, caller: &Caller, body: &[u8]) -> Result<NewSession, ApiError> {
        Self::check_origin(caller)?;
        let attempt = self.begin_login(caller)?;
        let request: LoginRequest = serde_json::from_slice(body).map_err(|_| {
            ApiError::invalid(
                "invalid_body",
                "expected {\"username\", \"password\"}",
                Vec::new(),
            )
        })?;
        let Some(record) = self.admin_record()? else {
            return Err(ApiError::new(
                409,
                "setup_required",
                "no admin exists yet: complete setup with the setup token first",
            ));
        };
        if request.password.chars().count() > MAX_PASSWORD_CHARS {
            self.attempt_failed(attempt, caller, "wrong user name or password");
            return Err(ApiError::unauthorized("wrong user name or password"));
        }
        // The hash runs whatever the name, so timing does not tell whether the name was right.
        let password_ok = {
            let _slot = self.hash_slot()?;
            password_matches(&record, &request.password)
        };
        if !(password_ok && same(&record.username, request.username.trim())) {
            self.attempt_failed(attempt, caller, "wrong user name or password");
            return Err(ApiError::unauthorized("wrong user name or password"));
        }
        attempt.succeeded();
        let session_id = random_hex(TOKEN_BYTES)?;
        let now = unix_ms(self.now());
        let session = Session {
            username: record.username.clone(),
            csrf: random_hex(TOKEN_BYTES)?,
            created_ms: now,
            last_seen_ms: now,
        };
        let view = view_of(&session);
        {
            let mut sessions = lock(&self.admin.sessions);
            sessions.retain(|_, s| s.expires_ms() > now);
            while sessions.len() >= MAX_SESSIONS {
                let oldest = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.created_ms)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => sessions.remove(&k),
                    None => break,
                };
            }
            sessions.insert(session_digest(&session_id), session);
        }
        self.audit_best_effort(&format!("admin:{}", record.username), "login", None, None);
        Ok(NewSession {
            session_id,
            max_age: SESSION_MAX_AGE,
            view,
        })
    }

    /// `GET /api/v1/session`: the caller's session (a page reload recovers its CSRF token).
    pub fn session_info(&self, caller: &Caller) -> Result<SessionView, ApiError> {
        let session = self.live_session(caller)?;
        Ok(view_of(&session))
    }

    /// `DELETE /api/v1/session`: ends the caller's session.
    pub fn logout(&self, caller: &Caller) -> Result<(), ApiError> {
        let principal = self.authenticate_session(caller, Scope::Admin)?;
        if let Some(id) = caller.session.as_deref() {
            lock(&self.admin.sessions).remove(&session_digest(id));
        }
        self.audit_best_effort(&principal.actor(), "logout", None, None);
        Ok(())
    }

    /// Ends every session but the caller's own (when the caller is a session); how many.
    fn end_other_sessions_of(&self, caller: &Caller) -> usize {
        // A request with `Authorization` is the key's, whatever cookie it carries.
        let keep = caller
            .authorization
            .is_none()
            .then(|| caller.session.as_deref().map(session_digest))
            .flatten();
        let mut sessions = lock(&self.admin.sessions);
        let before = sessions.len();
        sessions.retain(|digest, _| keep.as_deref() == Some(digest.as_str()));
        before - sessions.len()
    }

    /// `DELETE /api/v1/sessions` (admin): "log out everywhere": ends every console session but
    /// the caller's own.
    pub fn end_other_sessions(&self, caller: &Caller) -> Result<SessionsEnded, ApiError> {
        let principal = self.authenticate(caller, Scope::Admin)?;
        let ended = self.end_other_sessions_of(caller);
        self.audit_best_effort(
            &principal.actor(),
            "sessions.end_others",
            None,
            Some(format!("{ended} other session(s) ended")),
        );
        Ok(SessionsEnded { ended })
    }

    /// `POST /api/v1/admin/password` (admin): with the current password, sets a new one and
    /// ends every other session. The current password is judged like a login (counted before
    /// its hash, the same lockout, a hash slot).
    pub fn change_password(&self, caller: &Caller, body: &[u8]) -> Result<SessionsEnded, ApiError> {
        let principal = self.authenticate(caller, Scope::Admin)?;
        let request: PasswordChangeRequest = serde_json::from_slice(body).map_err(|_| {
            ApiError::invalid(
                "invalid_body",
                "expected {\"current_password\", \"new_password\"}",
                Vec::new(),
            )
        })?;
        let Some(record) = self.admin_record()? else {
            return Err(ApiError::new(
                409,
                "setup_required",
                "no admin exists yet: complete setup with the setup token first",
            ));
        };
        let mut problems: Vec<FieldError> = password_problem("new_password", &request.new_password)
            .into_iter()
            .collect();
        if problems.is_empty() && same(&request.new_password, &request.current_password) {
            problems.push(FieldError::new(
                "new_password",
                "must differ from the current password",
            ));
        }
        if !problems.is_empty() {
            return Err(ApiError::invalid(
                "invalid_password",
                "the new password is not valid",
                problems,
            ));
        }
        let attempt = self.begin_login(caller)?;
        let wrong = || {
            ApiError::new(
                403,
                "wrong_password",
                "the current password is wrong: nothing was changed",
            )
        };
        if request.current_password.chars().count() > MAX_PASSWORD_CHARS {
            self.attempt_failed(attempt, caller, "wrong current password");
            return Err(wrong());
        }
        let current_ok = {
            let _slot = self.hash_slot()?;
            password_matches(&record, &request.current_password)
        };
        if !current_ok {
            self.attempt_failed(attempt, caller, "wrong current password");
            return Err(wrong());
        }
        attempt.succeeded();
        let new = AdminRecord {
            created_at: record.created_at,
            ..self.new_admin_record(&record.username, &request.new_password)?
        };
        let bytes = serde_json::to_vec(&new).map_err(|_| ApiError::internal())?;
        self.store.put_setting(ADMIN_SETTING, &bytes)?;
        let ended = self.end_other_sessions_of(caller);
        self.audit_best_effort(
            &principal.actor(),
            "admin.password_change",
            Some(format!("admin:{}", record.username)),
            Some(format!("password changed; {ended} other session(s) ended")),
        );
        Ok(SessionsEnded { ended })
    }

    /// The caller's unexpired session, its last use moved to now.
    fn live_session(&self, caller: &Caller) -> Result<Session, ApiError> {
        let Some(id) = caller.session.as_deref() else {
            return Err(ApiError::unauthorized("not logged in"));
        };
        let now = unix_ms(self.now());
        let mut sessions = lock(&self.admin.sessions);
        let key = session_digest(id);
        let Some(session) = sessions.get_mut(&key) else {
            return Err(ApiError::new(
                401,
                "session_expired",
                "your session has ended: log in again",
            ));
        };
        if session.expires_ms() <= now {
            sessions.remove(&key);
            return Err(ApiError::new(
                401,
                "session_expired",
                "your session has expired: log in again",
            ));
        }
        session.last_seen_ms = now;
        Ok(session.clone())
    }

    /// Authenticates a session cookie: unexpired, and for a state change the right CSRF token
    /// from this node's origin. A session holds every scope.
    pub(crate) fn authenticate_session(
        &self,
        caller: &Caller,
        _scope: Scope,
    ) -> Result<Principal, ApiError> {
        if caller.state_changing {
            Self::check_origin(caller)?;
        }
        let session = self.live_session(caller)?;
        if caller.state_changing
            && !caller
                .csrf
                .as_deref()
                .is_some_and(|t| same(t, &session.csrf))
        {
            self.record_failure(
                caller,
                "access.denied",
                Some(format!("admin:{}", session.username)),
                None,
                "missing or wrong CSRF token".into(),
            );
            return Err(ApiError::new(
                403,
                "csrf",
                "missing or wrong CSRF token (X-CSRF-Token): reload the page and try again",
            ));
        }
        Ok(Principal {
            key_id: format!("{SESSION_PRINCIPAL_PREFIX}{}", session.username),
            scopes: vec![Scope::Admin],
        })
    }
}

fn session_digest(id: &str) -> String {
    hex(digest(&SHA256, id.as_bytes()).as_ref())
}

fn view_of(session: &Session) -> SessionView {
    SessionView {
        username: session.username.clone(),
        csrf_token: session.csrf.clone(),
        expires_at: rfc3339(session.expires_ms()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_verifies_only_the_same_password() {
        let salt = [7u8; SALT_BYTES];
        let record = AdminRecord {
            username: "admin".into(),
            algorithm: "pbkdf2-sha256".into(),
            iterations: 1000,
            salt_hex: hex(&salt),
            hash_hex: hex(&hash_password("correct horse battery", &salt, 1000)),
            created_at: 0,
        };
        assert!(password_matches(&record, "correct horse battery"));
        assert!(!password_matches(&record, "correct horse batterY"));
        assert!(!password_matches(&record, ""));
    }

    #[test]
    fn lockout_starts_at_the_limit_and_lasts_its_time() {
        let mut f = Failures::default();
        for _ in 1..CLIENT_FAILURES_BEFORE_LOCKOUT {
            f.add(1_000, CLIENT_FAILURES_BEFORE_LOCKOUT);
            assert_eq!(f.locked_until_ms, 0);
        }
        f.add(1_000, CLIENT_FAILURES_BEFORE_LOCKOUT);
        assert_eq!(f.locked_until_ms, 1_000 + millis(LOCKOUT));
    }

    /// Issue 16: an attempt counts from before its hash, so parallel guesses cannot outrun
    /// the lockout: with five under way the sixth is refused before any hash runs, and an
    /// attempt dropped unjudged counts nothing.
    #[test]
    fn issue16_attempts_under_way_count_against_the_limit_before_hashing() {
        let limiter = Mutex::new(Limiter::default());
        let remote: Option<IpAddr> = "198.51.100.1".parse().ok();
        let under_way: Vec<_> = (0..CLIENT_FAILURES_BEFORE_LOCKOUT)
            .map(|_| Attempt::begin(&limiter, LOGIN_LIMITS, remote, 1_000).expect("admitted"))
            .collect();
        let refused = Attempt::begin(&limiter, LOGIN_LIMITS, remote, 1_000)
            .map(|_| ())
            .expect_err("refused");
        assert_eq!((refused.status, refused.code), (429, "attempts_pending"));
        let other: Option<IpAddr> = "198.51.100.2".parse().ok();
        assert!(Attempt::begin(&limiter, LOGIN_LIMITS, other, 1_000).is_ok());
        for attempt in under_way {
            attempt.failed(1_000);
        }
        let locked = Attempt::begin(&limiter, LOGIN_LIMITS, remote, 1_000)
            .map(|_| ())
            .expect_err("locked");
        assert_eq!((locked.status, locked.code), (429, "locked_out"));
        assert_eq!(locked.retry_after, Some(LOCKOUT.as_secs()));

        let fresh: Option<IpAddr> = "198.51.100.3".parse().ok();
        for _ in 0..2 * CLIENT_FAILURES_BEFORE_LOCKOUT {
            drop(Attempt::begin(&limiter, LOGIN_LIMITS, fresh, 1_000).expect("uncounted"));
        }
    }

    #[test]
    fn certificate_facts_are_read_from_pem() {
        let certified = rcgen::generate_simple_self_signed(vec!["node.test".to_string()])
            .expect("a certificate");
        let pem = certified.cert.pem();
        let info = crate::certificate::facts(pem.as_bytes()).expect("parses");
        assert_eq!(info.sha256_fingerprint.split(':').count(), 32, "{info:?}");
        assert!(info.days_left > 365, "{info:?}");
        assert_eq!(
            certificate_fingerprint(pem.as_bytes()),
            Some(info.sha256_fingerprint)
        );
        assert_eq!(certificate_fingerprint(b"not a certificate"), None);
    }

    #[test]
    fn origin_must_be_the_node_itself() {
        let check = |origin: Option<&str>, host: Option<&str>| {
            Api::check_origin(&Caller {
                origin: origin.map(str::to_string),
                host: host.map(str::to_string),
                ..Caller::default()
            })
            .is_ok()
        };
        assert!(check(None, Some("node:443")));
        assert!(check(Some("https://node:443"), Some("node:443")));
        assert!(!check(Some("https://evil.example"), Some("node:443")));
        assert!(!check(Some("null"), Some("node:443")));
        assert!(!check(Some("https://node:443"), None));
    }
}
