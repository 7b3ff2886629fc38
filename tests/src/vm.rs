//! The appliance image under test (DESIGN §8): building it (`./build.sh image`, cached by
//! input hash outside the clone, optionally as a test release of another version or with an
//! overlay), provisioning a test's site config into a copy's state partition, booting that copy
//! in qemu (TCG, UEFI, optional software TPM) with SMTP and HTTPS forwarded to 127.0.0.1 ports,
//! the serial console captured in memory, and a QMP socket for an orderly power-down; and an
//! update channel ([`ReleaseChannel`], `tests/peers/release_server.py`) serving signed releases
//! over HTTPS (DESIGN §9).
//!
//! It must never leave qemu, swtpm or the channel running after its test (killed on drop),
//! never wait without a deadline, never write the console output to a file, and never listen
//! on anything but 127.0.0.1.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tempfile::TempDir;

use crate::files::workspace_dir;
use crate::process::{
    POLL_INTERVAL, collect_into, kill_and_reap, output_with_timeout, wait_timeout,
};

/// `./build.sh image`: cold (mmdebstrap, release build) it takes a quarter of an hour on two
/// cores; cached, a minute or two.
const IMAGE_BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// Memory of the VM: the node locks its memory, and LUKS and the initrd want some headroom.
const VM_MEMORY_MIB: u32 = 1536;

/// Size of the blank second disk that first boot turns into the data volume.
pub const DATA_DISK_SIZE: &str = "2G";

/// UEFI firmware (Debian's ovmf package): code read-only, variables per machine.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// How long qemu may take to power off after the ACPI power button (the node drains first).
const POWERDOWN_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// How long swtpm may take to create its control socket.
const SWTPM_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long qemu may take to create its QMP socket.
const QMP_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The guest's view of the host (qemu user networking): connections to it reach the host's
/// 127.0.0.1, where the test's peers listen.
pub const HOST_FROM_GUEST: &str = "10.0.2.2";

/// How long the release server may take to print `listening <port>`.
const CHANNEL_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the release server script lives, resolved at compile time.
const RELEASE_SERVER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/release_server.py");

/// One partition of the image, from `image.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Partition {
    /// GPT partition name (`esp`, `root-a`, `root-b`, `state`).
    pub name: String,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// What `./build.sh image` wrote next to the disk images (`image.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct ImageInfo {
    /// The release version (`mxnode --version`).
    pub version: String,
    /// The partitions in disk order (none for a `--release-only` build).
    #[serde(default)]
    pub partitions: Vec<Partition>,
    /// Whether the image trusts the development release key (issue 16).
    pub development_keys: bool,
    /// os-release's `VARIANT_ID`: `development` or `production`.
    pub variant_id: String,
}

/// What to build: `./build.sh image` options.
#[derive(Debug, Default, Clone)]
pub struct ImageOptions {
    /// `--version`: the release version (default: the binary's).
    pub version: Option<String>,
    /// `--overlay`: a directory copied over the root file system (test releases).
    pub overlay: Option<PathBuf>,
    /// `--release-only`: only the slot artifacts and the signed release, no disk images.
    pub release_only: bool,
    /// `--production`: needs `release_key` and `update_keys` (issue 16).
    pub production: bool,
    /// `MXNODE_RELEASE_KEY`: the private key that signs the release (default: unset, the
    /// development key).
    pub release_key: Option<PathBuf>,
    /// `MXNODE_UPDATE_KEYS`: the keys file the image trusts (default: unset, the development
    /// key).
    pub update_keys: Option<PathBuf>,
}

/// A built appliance image: `mxnode.raw` and its `image.json` in a temp directory.
pub struct Image {
    /// Holds the output directory; dropped last.
    dir: TempDir,
    /// Parsed `image.json`.
    pub info: ImageInfo,
    /// How long the build took (cached or not).
    pub build_time: Duration,
}

impl Image {
    /// Runs `./build.sh image` into a temp directory. Panics with the build's output when it
    /// fails; needs root (the CI machine runs as root).
    pub fn build() -> Image {
        Image::build_with(&ImageOptions::default())
    }

    /// Runs `./build.sh image` with `options` into a temp directory (see [`Image::build`]).
    pub fn build_with(options: &ImageOptions) -> Image {
        let dir = tempfile::Builder::new()
            .prefix("mxnode-test-image-")
            .tempdir()
            .expect("create the image output dir");
        let started = Instant::now();
        let mut command = Command::new(workspace_dir().join("build.sh"));
        command
            .arg("image")
            .current_dir(workspace_dir())
            .env("MXNODE_IMAGE_OUT", dir.path());
        if let Some(version) = &options.version {
            command.arg("--version").arg(version);
        }
        if let Some(overlay) = &options.overlay {
            command.arg("--overlay").arg(overlay);
        }
        if options.release_only {
            command.arg("--release-only");
        }
        if options.production {
            command.arg("--production");
        }
        if let Some(key) = &options.release_key {
            command.env("MXNODE_RELEASE_KEY", key);
        }
        if let Some(keys) = &options.update_keys {
            command.env("MXNODE_UPDATE_KEYS", keys);
        }
        let output = output_with_timeout(&mut command, "./build.sh image", IMAGE_BUILD_TIMEOUT);
        let build_time = started.elapsed();
        assert!(
            output.status.success(),
            "./build.sh image failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!(
            "./build.sh image took {build_time:?}:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json = fs::read_to_string(dir.path().join("image.json")).expect("read image.json");
        let info: ImageInfo = serde_json::from_str(&json).expect("parse image.json");
        Image {
            dir,
            info,
            build_time,
        }
    }

    /// The image's `/usr/lib/os-release`, as the build copied it next to the disk images.
    pub fn os_release(&self) -> String {
        fs::read_to_string(self.dir.path().join("os-release")).expect("read os-release")
    }

    /// `mxnode.raw`.
    pub fn raw(&self) -> PathBuf {
        self.dir.path().join("mxnode.raw")
    }

    /// The signed release of this image's slot artifacts (`release/`: manifest.json,
    /// manifest.json.sig, root.erofs, vmlinuz, initrd.img).
    pub fn release_dir(&self) -> PathBuf {
        self.dir.path().join("release")
    }

    /// The partition named `name`. Panics when the layout lacks it.
    pub fn partition(&self, name: &str) -> &Partition {
        self.info
            .partitions
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("image.json has no partition {name:?}"))
    }
}

/// Files for the state partition of a test machine: what an operator (or automation) puts
/// there before first boot. Paths are relative to the partition's root, e.g.
/// `config/mxnode.toml`, which the appliance then uses instead of its baked-in config.
#[derive(Debug, Default, Clone)]
pub struct StateFiles {
    /// (relative path, contents).
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl StateFiles {
    /// No files: the partition as the image ships it (plus nothing).
    pub fn new() -> StateFiles {
        StateFiles::default()
    }

    /// Adds a file (mode 0644, owned by root).
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((PathBuf::from(path), contents.into()));
        self
    }
}

/// Where a test machine's data volume goes on first boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStorage {
    /// A blank second disk of [`DATA_DISK_SIZE`] (a VM with a separate data disk).
    SecondDisk,
    /// No second disk; the boot disk is this many bytes larger than the image (a server's
    /// disk that the image was written to), so the data partition is appended to it.
    GrownBootDisk(u64),
}

/// A test machine: its own copy of the boot disk (with a provisioned state partition), a blank
/// data disk, UEFI variables and optionally a TPM, all in a temp directory; booted any number
/// of times in a row, keeping its disks, like a box that is switched off and on.
pub struct Machine {
    /// Boot disk, data disk, OVMF variables, TPM state, sockets.
    dir: TempDir,
    /// Whether a software TPM 2.0 is attached.
    tpm: bool,
    /// Whether the blank second disk is attached.
    second_disk: bool,
    /// Host port forwarded to the guest's SMTP port 25.
    smtp_port: u16,
    /// Host port forwarded to the guest's HTTPS port 443.
    https_port: u16,
}

impl Machine {
    /// A machine booting a copy of `image` whose state partition holds `state`, with room for
    /// data as `storage` says, and a TPM when `tpm`.
    pub fn new(image: &Image, state: &StateFiles, storage: DataStorage, tpm: bool) -> Machine {
        let dir = tempfile::Builder::new()
            .prefix("mxnode-test-vm-")
            .tempdir()
            .expect("create the machine's temp dir");
        let boot = dir.path().join("boot.raw");
        run(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(image.raw())
                .arg(&boot),
            "copy the disk image",
        );
        provision_state(dir.path(), &boot, image.partition("state"), state);
        match storage {
            DataStorage::SecondDisk => run(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(dir.path().join("data.qcow2"))
                    .arg(DATA_DISK_SIZE),
                "create the data disk",
            ),
            DataStorage::GrownBootDisk(extra) => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&boot)
                    .expect("open the disk copy");
                let size = file.metadata().expect("size of the disk copy").len();
                file.set_len(size + extra).expect("grow the disk copy");
            }
        }
        fs::copy(OVMF_VARS, dir.path().join("OVMF_VARS.fd")).expect("copy the OVMF variables");
        if tpm {
            fs::create_dir(dir.path().join("tpm")).expect("create the TPM state dir");
        }
        Machine {
            dir,
            tpm,
            second_disk: storage == DataStorage::SecondDisk,
            smtp_port: free_port(),
            https_port: free_port(),
        }
    }

    /// The host address forwarded to the guest's SMTP port.
    pub fn smtp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.smtp_port))
    }

    /// The host address forwarded to the guest's HTTPS port.
    pub fn https_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.https_port))
    }

    /// Powers the machine on: starts swtpm (when attached) and qemu.
    pub fn boot(&self) -> Running {
        let dir = self.dir.path();
        let swtpm = self.tpm.then(|| {
            let socket = dir.join("tpm/swtpm-sock");
            let _ = fs::remove_file(&socket);
            let mut child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .arg("--tpmstate")
                .arg(format!("dir={}", dir.join("tpm").display()))
                .arg("--ctrl")
                .arg(format!("type=unixio,path={}", socket.display()))
                .arg("--terminate")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|error| {
                    panic!("cannot start swtpm: {error} (is swtpm installed?)")
                });
            if !wait_for_path(&socket, SWTPM_STARTUP_TIMEOUT) {
                kill_and_reap(&mut child);
                panic!("swtpm did not create {} in time", socket.display());
            }
            child
        });

        let qmp = dir.join("qmp.sock");
        let _ = fs::remove_file(&qmp);
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args([
                "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "2",
            ])
            .args(["-m", &VM_MEMORY_MIB.to_string()])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                dir.join("OVMF_VARS.fd").display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=virtio,format=raw,file={}",
                dir.join("boot.raw").display()
            ))
            .arg("-netdev")
            .arg(format!(
                "user,id=net0,hostfwd=tcp:127.0.0.1:{}-:25,hostfwd=tcp:127.0.0.1:{}-:443",
                self.smtp_port, self.https_port
            ))
            .args(["-device", "virtio-net-pci,netdev=net0"]);
        if self.second_disk {
            command.arg("-drive").arg(format!(
                "if=virtio,format=qcow2,file={}",
                dir.join("data.qcow2").display()
            ));
        }
        if self.tpm {
            command
                .arg("-chardev")
                .arg(format!(
                    "socket,id=chrtpm,path={}",
                    dir.join("tpm/swtpm-sock").display()
                ))
                .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
                .args(["-device", "tpm-crb,tpmdev=tpm0"]);
        }
        let mut qemu = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start qemu-system-x86_64: {error} (is qemu-system-x86 installed?)")
            });
        let console = Arc::new(Mutex::new(String::new()));
        let mut collectors = Vec::new();
        if let Some(stdout) = qemu.stdout.take() {
            collectors.push(collect_into(stdout, Arc::clone(&console)));
        }
        if let Some(stderr) = qemu.stderr.take() {
            collectors.push(collect_into(stderr, Arc::clone(&console)));
        }
        Running {
            qemu,
            swtpm,
            console,
            qmp,
            started: Instant::now(),
            printed: false,
        }
    }
}

/// A powered-on machine. Killed (qemu, then swtpm) on drop; its console is printed to stderr
/// when the test is failing.
pub struct Running {
    /// qemu-system-x86_64.
    qemu: Child,
    /// The software TPM, when attached.
    swtpm: Option<Child>,
    /// Everything on the serial console (and qemu's own messages), in memory.
    console: Arc<Mutex<String>>,
    /// qemu's QMP socket.
    qmp: PathBuf,
    /// When qemu started.
    started: Instant,
    /// Whether the console was printed already (once is enough).
    printed: bool,
}

impl Running {
    /// The serial console so far.
    pub fn console(&self) -> String {
        self.console
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Time since power-on.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// How much the console holds so far, in bytes: a mark for [`Running::wait_for_line_after`]
    /// (a guest that reboots itself keeps writing to the same console).
    pub fn console_len(&self) -> usize {
        self.console().len()
    }

    /// Waits until a console line contains `needle` and returns that line; panics with the
    /// console after `timeout` or when qemu exits first.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line_after(needle, 0, timeout)
    }

    /// Like [`Running::wait_for_line`], but only looks at the console after byte `mark`
    /// (from [`Running::console_len`]).
    pub fn wait_for_line_after(&mut self, needle: &str, mark: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let console = self.console();
            if let Some(line) = console
                .get(mark..)
                .unwrap_or_default()
                .lines()
                .find(|line| line.contains(needle))
                .map(str::to_string)
            {
                return line;
            }
            if let Ok(Some(status)) = self.qemu.try_wait() {
                self.print_console();
                panic!("qemu exited ({status}) before the console showed {needle:?}");
            }
            if Instant::now() >= deadline {
                self.print_console();
                panic!("the console did not show {needle:?} within {timeout:?}");
            }
            thread::sleep(POLL_INTERVAL * 25);
        }
    }

    /// Presses the ACPI power button (QMP `system_powerdown`) and waits for qemu to exit: the
    /// guest shuts down in order (node drained, data volume unmounted and locked).
    pub fn power_down(mut self) {
        let mut qmp = UnixStream::connect(&self.qmp).expect("connect to qemu's QMP socket");
        qmp.set_read_timeout(Some(QMP_STARTUP_TIMEOUT))
            .expect("set the QMP timeout");
        let mut reader = BufReader::new(qmp.try_clone().expect("clone the QMP socket"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("read the QMP greeting");
        for command in [
            r#"{"execute":"qmp_capabilities"}"#,
            r#"{"execute":"system_powerdown"}"#,
        ] {
            writeln!(qmp, "{command}").expect("send a QMP command");
            // Skip asynchronous events until the command's answer.
            loop {
                line.clear();
                reader.read_line(&mut line).expect("read a QMP answer");
                if line.contains("\"return\"") || line.contains("\"error\"") || line.is_empty() {
                    break;
                }
            }
            assert!(!line.contains("\"error\""), "QMP {command}: {line}");
        }
        match wait_timeout(&mut self.qemu, POWERDOWN_TIMEOUT) {
            Some(status) => assert!(status.success(), "qemu exited with {status}"),
            None => {
                self.print_console();
                panic!("the guest did not power off within {POWERDOWN_TIMEOUT:?}");
            }
        }
        if let Some(swtpm) = self.swtpm.as_mut() {
            // swtpm --terminate ends with qemu's connection; give it a moment, then insist.
            if wait_timeout(swtpm, Duration::from_secs(10)).is_none() {
                kill_and_reap(swtpm);
            }
        }
    }

    /// Pulls the plug: kills qemu at once, without any shutdown (a power cut).
    pub fn power_cut(mut self) {
        kill_and_reap(&mut self.qemu);
        if let Some(swtpm) = self.swtpm.as_mut() {
            kill_and_reap(swtpm);
        }
    }

    /// Prints the console to stderr (shown by nextest for a failing test).
    fn print_console(&mut self) {
        if !self.printed {
            self.printed = true;
            eprintln!(
                "----- serial console -----\n{}\n----- end of console -----",
                self.console()
            );
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if thread::panicking() {
            self.print_console();
        }
        kill_and_reap(&mut self.qemu);
        if let Some(swtpm) = self.swtpm.as_mut() {
            kill_and_reap(swtpm);
        }
    }
}

/// Builds an ext4 file system for the state partition with the image's directories plus
/// `state`'s files (`mkfs.ext4 -d`, no mounting), and writes it over the partition in `disk`.
fn provision_state(dir: &Path, disk: &Path, partition: &Partition, state: &StateFiles) {
    let tree = dir.join("state");
    for sub in ["config", "network", "tls", "luks", "node", "update"] {
        fs::create_dir_all(tree.join(sub)).expect("create a state directory");
    }
    for (path, contents) in &state.files {
        let target = tree.join(path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).expect("create a state directory");
        }
        fs::write(&target, contents).expect("write a state file");
    }
    let image = dir.join("state.img");
    File::create(&image)
        .and_then(|f| f.set_len(partition.size))
        .expect("create the state image");
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-L", "state", "-E", "root_owner=0:0", "-d"])
            .arg(&tree)
            .arg(&image),
        "mkfs.ext4 the state partition",
    );
    let mut source = File::open(&image).expect("open the state image");
    let mut target = OpenOptions::new()
        .write(true)
        .open(disk)
        .expect("open the disk copy");
    target
        .seek(SeekFrom::Start(partition.offset))
        .expect("seek to the state partition");
    let mut buffer = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        let n = source.read(&mut buffer).expect("read the state image");
        if n == 0 {
            break;
        }
        target
            .write_all(&buffer[..n])
            .expect("write the state partition");
        written += n as u64;
    }
    assert_eq!(written, partition.size, "state image size");
    fs::remove_dir_all(&tree).expect("remove the state tree");
    fs::remove_file(&image).expect("remove the state image");
}

/// Runs `command` to completion (bounded), panicking with its output on failure.
fn run(command: &mut Command, what: &str) {
    let output = output_with_timeout(command, what, Duration::from_secs(300));
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A currently free TCP port on 127.0.0.1 (bound and released at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("find a free port on 127.0.0.1")
}

/// Polls until `path` exists or `timeout` passes.
fn wait_for_path(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        thread::sleep(POLL_INTERVAL);
    }
    false
}

/// An update channel: `tests/peers/release_server.py` serving one signed release directory
/// over HTTPS on 127.0.0.1 (the guest reaches it as [`HOST_FROM_GUEST`]), switchable to
/// another release while it runs. Killed on drop.
pub struct ReleaseChannel {
    /// The python process.
    child: Child,
    /// The port it bound.
    port: u16,
    /// Holds `current`, the symlink the server serves through.
    dir: TempDir,
    /// What it printed: `served <status> <path>` per request.
    log: Arc<Mutex<String>>,
}

impl ReleaseChannel {
    /// Starts serving `release` (a signed release directory) with the certificate and key
    /// (PEM files) `cert` and `key`.
    pub fn start(cert: &Path, key: &Path, release: &Path) -> ReleaseChannel {
        let dir = tempfile::Builder::new()
            .prefix("mxnode-test-channel-")
            .tempdir()
            .expect("create the channel's temp dir");
        std::os::unix::fs::symlink(release, dir.path().join("current"))
            .expect("link the served release");
        let mut child = Command::new("python3")
            .arg(RELEASE_SERVER_SCRIPT)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg("--root")
            .arg(dir.path().join("current"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start python3 {RELEASE_SERVER_SCRIPT}: {error}")
            });
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stdout) = child.stdout.take() {
            collect_into(stdout, Arc::clone(&log));
        }
        let deadline = Instant::now() + CHANNEL_STARTUP_TIMEOUT;
        let port = loop {
            let text = crate::process::snapshot(&log);
            if let Some(port) = text
                .lines()
                .find_map(|line| line.strip_prefix("listening "))
                .and_then(|port| port.trim().parse().ok())
            {
                break port;
            }
            if Instant::now() >= deadline {
                kill_and_reap(&mut child);
                panic!("the release server did not start: {text}");
            }
            thread::sleep(POLL_INTERVAL);
        };
        ReleaseChannel {
            child,
            port,
            dir,
            log,
        }
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves `release` from now on (the symlink is replaced atomically).
    pub fn switch_to(&self, release: &Path) {
        let next = self.dir.path().join("next");
        let _ = fs::remove_file(&next);
        std::os::unix::fs::symlink(release, &next).expect("link the next release");
        fs::rename(&next, self.dir.path().join("current")).expect("switch the served release");
    }

    /// The paths answered with `status` so far, in order.
    pub fn served(&self, status: u16) -> Vec<String> {
        let prefix = format!("served {status} ");
        crate::process::snapshot(&self.log)
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }
}

impl Drop for ReleaseChannel {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
        if thread::panicking() {
            eprintln!(
                "----- release channel -----\n{}----- end of release channel -----",
                crate::process::snapshot(&self.log)
            );
        }
    }
}
