//! Content never at rest (DESIGN invariant 1, issues 2 and 8): after delivering, refusing and
//! temp-failing messages that carry a unique marker in subject, body and attachment, no file
//! the node could have written — nor any file it really opened for writing, as strace saw
//! it — and no line of its log holds the marker or the sender address. And the running node
//! cannot dump core: `RLIMIT_CORE` is 0 and the kernel treats it as non-dumpable.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use mxnode_tests::{
    Node, NodeConfig, Receiver, RouteConfig, SmtpClient, TestCa, new_webhook_secret,
    scan_for_marker,
};

fn unique_marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("MXMARK{}x{nanos}", std::process::id())
}

#[test]
fn no_marker_from_subject_body_or_attachment_reaches_disk_or_log() {
    let marker = unique_marker();
    let sender = format!("sender-{marker}@example.org");
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let mut node = Node::start(&marker_config(&receiver));
    let message = marked_message(&marker, &sender);

    let mut client = SmtpClient::connect(node.smtp_addr());
    let delivered = client.send_mail(&sender, &["bob@in.example.test"], message.as_bytes());
    assert_eq!(delivered.code, 250, "{delivered}");
    let failed = client.send_mail(&sender, &["x@fail.example.test"], message.as_bytes());
    assert_eq!(failed.code, 451, "{failed}");
    let refused = client.send_mail(&sender, &["x@refuse.example.test"], message.as_bytes());
    assert_eq!(refused.code, 550, "{refused}");
    let smuggled = client.send_mail(
        &sender,
        &["bob@in.example.test"],
        format!("{message}\n").as_bytes(),
    );
    assert_eq!(smuggled.code, 550, "{smuggled}");
    client.command("QUIT");

    // The receiver really got the marker, so its absence elsewhere means something.
    let received = receiver.received();
    assert!(received.iter().any(|r| r.raw_body.contains(&marker)));

    let status = node.terminate();
    assert!(status.success(), "{status:?}");
    let mut dirs: Vec<&Path> = vec![node.temp_root(), node.data_dir()];
    let system_temp = std::env::temp_dir();
    dirs.push(&system_temp);
    let dev_shm = Path::new("/dev/shm");
    if dev_shm.is_dir() {
        dirs.push(dev_shm);
    }
    let hits = scan_for_marker(&dirs, marker.as_bytes());
    assert!(hits.is_empty(), "content found at rest in {hits:?}");

    let log = node.log();
    assert!(log.contains("listening on smtp://"), "the log was captured");
    assert!(!log.contains(&marker), "content in the log:\n{log}");
    assert!(
        !log.contains("example.org"),
        "a sender address in the log:\n{log}"
    );
    assert!(
        !log.contains("bob@in.example.test"),
        "a recipient address in the log:\n{log}"
    );
}

/// The node's routes for the marker tests: delivered, temp-failed, refused.
fn marker_config(receiver: &Receiver) -> NodeConfig {
    NodeConfig::new()
        .route(RouteConfig::to_receiver(
            "*@in.example.test",
            receiver,
            "/ok",
        ))
        .route(
            RouteConfig::to_receiver("*@fail.example.test", receiver, "/status/500").budget("1s"),
        )
        .route(RouteConfig::to_receiver(
            "*@refuse.example.test",
            receiver,
            "/status/422",
        ))
}

/// A message with `marker` in the sender, subject, body, attachment name and (base64-encoded)
/// attachment content.
fn marked_message(marker: &str, sender: &str) -> String {
    let attachment = base64::engine::general_purpose::STANDARD
        .encode(format!("attachment payload {marker} end"));
    format!(
        "From: <{sender}>\r\nTo: bob@in.example.test\r\nSubject: subject {marker}\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"xx\"\r\n\r\n\
         --xx\r\nContent-Type: text/plain\r\n\r\nbody {marker}\r\n\
         --xx\r\nContent-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename=\"f-{marker}.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{attachment}\r\n--xx--\r\n"
    )
}

/// Words of the strace command line: every system call that creates, opens, renames or
/// truncates a file, whole path strings, no signals.
const STRACE: &[&str] = &[
    "strace",
    "-f",
    "-qq",
    "-s",
    "4096",
    "-e",
    "signal=none",
    "-e",
    "trace=open,openat,openat2,creat,rename,renameat,renameat2,link,linkat,symlink,symlinkat,\
     mknod,mknodat,truncate",
];

/// Files an strace log shows written: opened with a write flag, created, renamed or linked to,
/// truncated. Paths relative to a directory descriptor are returned as given.
fn written_paths(strace_log: &str) -> Vec<PathBuf> {
    const WRITE_FLAGS: &[&str] = &["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"];
    let mut paths = Vec::new();
    for line in strace_log.lines() {
        // `[pid 123] openat(…)` for other threads and processes, `openat(…)` for the first.
        let call = match line.strip_prefix("[pid") {
            Some(rest) => rest
                .split_once(']')
                .map_or("", |(_, call)| call.trim_start()),
            None => line,
        };
        let Some((name, rest)) = call.split_once('(') else {
            continue;
        };
        let quoted: Vec<&str> = rest.split('"').skip(1).step_by(2).collect();
        let target = match name {
            "open" | "openat" | "openat2" if WRITE_FLAGS.iter().any(|f| rest.contains(f)) => {
                quoted.first()
            }
            "creat" | "truncate" | "mknod" | "mknodat" => quoted.first(),
            "rename" | "renameat" | "renameat2" | "link" | "linkat" | "symlink" | "symlinkat" => {
                quoted.last()
            }
            _ => None,
        };
        if let Some(path) = target {
            paths.push(PathBuf::from(path));
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

#[test]
fn written_paths_are_read_from_strace_lines() {
    let log = "[pid  7] openat(AT_FDCWD, \"/a/x\", O_WRONLY|O_CREAT|O_CLOEXEC, 0666) = 5\n\
               openat(AT_FDCWD, \"/etc/hosts\", O_RDONLY|O_CLOEXEC) = 3\n\
               [pid 8] renameat2(AT_FDCWD, \"/a/tmp\", AT_FDCWD, \"/a/final\", RENAME_NOREPLACE) = 0\n\
               creat(\"/b\", 0600) = 4\n\
               INFO listening on smtp://127.0.0.1:1\n";
    assert_eq!(
        written_paths(log),
        ["/a/final", "/a/x", "/b"].map(PathBuf::from)
    );
}

/// The daemon started under a wrapper that forks (strace): found as the wrapper's child, and
/// killed on drop so a failing test leaves nothing running.
struct WrappedDaemon(u32);

impl WrappedDaemon {
    fn child_of(wrapper: u32) -> WrappedDaemon {
        let path = format!("/proc/{wrapper}/task/{wrapper}/children");
        let children = std::fs::read_to_string(&path).expect("read the wrapper's children");
        let pid = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the wrapper started the daemon");
        WrappedDaemon(pid)
    }

    /// SIGTERM, then waits until the process is gone.
    fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(self.0 as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Path::new(&format!("/proc/{}/exe", self.0)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WrappedDaemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0 as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

#[test]
fn no_file_the_node_opens_for_writing_receives_content() {
    let marker = unique_marker();
    let sender = format!("sender-{marker}@example.org");
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let mut node = Node::start(&marker_config(&receiver).tls(&ca).wrapper(STRACE));
    let daemon = WrappedDaemon::child_of(node.pid());
    let message = marked_message(&marker, &sender);

    let mut client = SmtpClient::connect(node.smtp_addr());
    assert_eq!(client.starttls(&ca.ca_pem).code, 220);
    let over_tls = client.send_mail(&sender, &["bob@in.example.test"], message.as_bytes());
    assert_eq!(over_tls.code, 250, "{over_tls}");
    let mut client = SmtpClient::connect(node.smtp_addr());
    for (rcpt, data, code) in [
        ("bob@in.example.test", message.clone(), 250),
        ("x@fail.example.test", message.clone(), 451),
        ("x@refuse.example.test", message.clone(), 550),
        ("bob@in.example.test", format!("{message}\n"), 550),
    ] {
        let reply = client.send_mail(&sender, &[rcpt], data.as_bytes());
        assert_eq!(reply.code, code, "{rcpt}: {reply}");
    }
    client.command("QUIT");
    assert!(
        receiver
            .received()
            .iter()
            .any(|r| r.raw_body.contains(&marker))
    );

    daemon.terminate();
    node.terminate();
    let log = node.log();
    let written = written_paths(&log);
    let config_opened = format!("\"{}\", O_RDONLY", node.config_path().display());
    assert!(
        log.contains(&config_opened),
        "strace saw the node open its config file (is strace working?):\n{log}"
    );
    let outside: Vec<&PathBuf> = written
        .iter()
        .filter(|p| !p.starts_with(node.temp_root()) && !p.starts_with("/dev/null"))
        // Thread names (RocksDB's background threads name themselves): procfs, not a disk.
        .filter(|p| !(p.starts_with("/proc/self/task") && p.ends_with("comm")))
        .collect();
    assert!(
        outside.is_empty(),
        "the node wrote outside its data dir and temp dir: {outside:?}"
    );
    let mut scan: Vec<&Path> = written.iter().map(PathBuf::as_path).collect();
    let system_temp = std::env::temp_dir();
    scan.extend([node.temp_root(), node.data_dir(), system_temp.as_path()]);
    if Path::new("/dev/shm").is_dir() {
        scan.push(Path::new("/dev/shm"));
    }
    let hits = scan_for_marker(&scan, marker.as_bytes());
    assert!(hits.is_empty(), "content found at rest in {hits:?}");
    assert!(!log.contains(&marker), "content in the log:\n{log}");
    assert!(
        !log.contains("example.org"),
        "an address in the log:\n{log}"
    );
    eprintln!("files the node opened for writing: {written:?}");
}

/// When the tests run as root, a wrapper that drops every capability: a process with the
/// node's uid but without CAP_SYS_PTRACE is what the kernel's dumpable check is about.
fn without_capabilities() -> Vec<&'static str> {
    if nix::unistd::geteuid().is_root() {
        vec![
            "setpriv",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--",
        ]
    } else {
        Vec::new()
    }
}

/// Whether a process with our uid and no capabilities may read `/proc/<pid>/environ`. That
/// is a ptrace access check, and the kernel refuses it for a process that is not dumpable
/// (PR_GET_DUMPABLE 0), whatever else matches.
fn environ_readable_without_capabilities(pid: u32) -> bool {
    let mut words = without_capabilities();
    let path = format!("/proc/{pid}/environ");
    words.extend(["cat", path.as_str()]);
    let output = Command::new(words[0])
        .args(&words[1..])
        .output()
        .expect("run cat");
    output.status.success()
}

#[test]
fn running_node_is_not_dumpable_and_cannot_write_a_core_file() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    // Started without capabilities when we are root, so that only dumpability decides.
    let node = Node::start(&marker_config(&receiver).wrapper(&without_capabilities()));
    let pid = node.pid();

    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(
        &fields[4..6],
        ["0", "0"],
        "RLIMIT_CORE is 0 (soft and hard): {core}"
    );

    // A control process like the node (same uid, same wrapper), but dumpable.
    let mut words = without_capabilities();
    words.extend(["sleep", "60"]);
    let mut control = Command::new(words[0])
        .args(&words[1..])
        .spawn()
        .expect("start the control process");
    std::thread::sleep(Duration::from_millis(200));
    let control_readable = environ_readable_without_capabilities(control.id());
    let node_readable = environ_readable_without_capabilities(pid);
    let _ = control.kill();
    let _ = control.wait();
    assert!(
        control_readable,
        "the check works: a dumpable process's environ is readable"
    );
    assert!(
        !node_readable,
        "the node is non-dumpable (PR_SET_DUMPABLE 0): the kernel refuses the ptrace check"
    );
    if !nix::unistd::geteuid().is_root() {
        // For a non-root process the kernel also hands its /proc files to root.
        use std::os::unix::fs::MetadataExt as _;
        let owner = std::fs::metadata(format!("/proc/{pid}/status"))
            .expect("stat")
            .uid();
        assert_eq!(
            owner, 0,
            "/proc/<pid> of a non-dumpable process belongs to root"
        );
    }
}
