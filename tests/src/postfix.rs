//! A private Postfix instance as the sending MTA of the end-to-end tests: mail is injected into
//! its smtpd on a loopback port and its smtp client relays it to the node, STARTTLS required.
//! The recipe (`main.cf`, `master.cf`, ownership, start and stop) is the benchmark's
//! (`bench/src/peers.rs`), with TLS on the relay side and short queue timers.
//!
//! It must never touch the system's Postfix: every command gets `-c` with the instance's own
//! configuration directory. Postfix's queue holds message content on disk, which is its design;
//! it lives in the instance's temp directory, outside every directory the node's tests scan for
//! content, and is deleted with it on drop.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::User;
use tempfile::TempDir;

use crate::process::{POLL_INTERVAL, kill_and_reap, output_with_timeout, wait_timeout};

/// How long `postfix start` may take, and then its smtpd to listen.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `postfix`/`postqueue` command may take. `postfix stop` waits up to 5 s for the
/// master itself before it kills the process group.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Postfix's mail owner: its daemons run as this user, and own the data directory.
const MAIL_OWNER: &str = "postfix";
/// `postlogd` writes `maillog_file` only below one of `maillog_file_prefixes` (default `/var`,
/// `/dev/stdout`), and Postfix exits without a word elsewhere: the instance lives here.
const INSTANCE_PARENT: &str = "/var/tmp";
/// What `postqueue -p` prints for an empty queue.
const EMPTY_QUEUE: &str = "Mail queue is empty";

/// A running private Postfix: smtpd on [`Postfix::smtp_addr`], everything relayed to one
/// `[ip]:port` over STARTTLS (`smtp_tls_security_level = encrypt`) verified against a given CA.
/// Stopped (`postfix stop`, then `abort`) and deleted on drop.
pub struct Postfix {
    /// Where its smtpd listens, for injecting mail.
    smtp_addr: SocketAddr,
    /// `config_directory`: what every command gets as `-c`.
    etc: PathBuf,
    /// `maillog_file`: holds queue ids, addresses and TLS details, never content.
    log: PathBuf,
    /// Holds config, queue, data and log; dropped last, which deletes them.
    _dir: TempDir,
}

impl Postfix {
    /// Writes the instance's configuration into a fresh temp directory, starts it and waits
    /// until its smtpd listens. Mail to any domain goes to `relay_to`, only over TLS, and the
    /// server certificate is checked against `ca_pem` (logged as `Trusted` when it verifies;
    /// `encrypt` alone would deliver over an unverified connection too).
    pub fn start(relay_to: SocketAddr, ca_pem: &Path) -> Postfix {
        let dir = tempfile::Builder::new()
            .prefix("mxnode-test-postfix-")
            .tempdir_in(INSTANCE_PARENT)
            .expect("create the Postfix instance's temp dir");
        // Postfix's daemons run as the mail owner and must reach the queue below this.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("open the Postfix temp dir to the mail owner");
        let etc = dir.path().join("etc");
        let queue = dir.path().join("queue");
        let data = dir.path().join("data");
        let log = dir.path().join("postfix.log");
        for d in [&etc, &queue, &data] {
            fs::create_dir_all(d).expect("create a Postfix directory");
        }
        // The smtp client runs as the mail owner, which cannot read the test CA's private
        // directory: a world-readable copy beside main.cf.
        let ca = etc.join("ca.pem");
        fs::copy(ca_pem, &ca).expect("copy the test CA for Postfix");
        fs::set_permissions(&ca, fs::Permissions::from_mode(0o644)).expect("chmod ca.pem");
        let smtp_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        fs::write(
            etc.join("main.cf"),
            main_cf(&queue, &data, &log, relay_to, &ca),
        )
        .expect("write main.cf");
        fs::write(etc.join("master.cf"), master_cf(smtp_addr)).expect("write master.cf");
        // The data directory belongs to the mail owner, as `postfix post-install` would set
        // it; the queue directory stays root's, and `postfix start` creates its
        // subdirectories with their owners.
        let owner = User::from_name(MAIL_OWNER)
            .ok()
            .flatten()
            .expect("the postfix user exists (Debian package postfix)");
        std::os::unix::fs::chown(&data, Some(owner.uid.as_raw()), None)
            .expect("chown the Postfix data directory");
        let postfix = Postfix {
            smtp_addr,
            etc,
            log,
            _dir: dir,
        };
        let output = postfix.run("postfix", &["start"]);
        assert!(
            output.status.success(),
            "postfix start failed: {}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            postfix.log()
        );
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while TcpStream::connect_timeout(&smtp_addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Postfix does not listen on {smtp_addr}; its log:\n{}",
                postfix.log()
            );
            thread::sleep(POLL_INTERVAL);
        }
        postfix
    }

    /// Where its smtpd listens (plain SMTP, relaying for 127.0.0.0/8).
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addr
    }

    /// Its log so far (`maillog_file`): queue ids, addresses, statuses and TLS details.
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the log contains `needle`; false after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// What `postqueue -p` prints: the queue listing, or "Mail queue is empty".
    pub fn queue_listing(&self) -> String {
        let output = self.run("postqueue", &["-p"]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// Waits until `postqueue -p` reports an empty queue; false (with the listing in the log of
    /// the caller's assertion) after `timeout`.
    pub fn wait_until_queue_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.queue_listing().contains(EMPTY_QUEUE) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Runs `program -c ETC args…` with a deadline (panics after [`COMMAND_TIMEOUT`]).
    fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        output_with_timeout(
            Command::new(program).arg("-c").arg(&self.etc).args(args),
            &format!("{program} {}", args.join(" ")),
            COMMAND_TIMEOUT,
        )
    }

    /// `postfix -c ETC verb` for drop: bounded, and never panics.
    fn run_quietly(&self, verb: &str) -> bool {
        let Ok(mut child) = Command::new("postfix")
            .arg("-c")
            .arg(&self.etc)
            .arg(verb)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return false;
        };
        match wait_timeout(&mut child, COMMAND_TIMEOUT) {
            Some(status) => status.success(),
            None => {
                kill_and_reap(&mut child);
                false
            }
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // `stop` lets the master end its daemons (and kills their group after 5 s); `abort`
        // is for a master that did not answer.
        if !self.run_quietly("stop") {
            self.run_quietly("abort");
        }
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free loopback port")
        .port()
}

/// `main.cf`: relay everything from loopback to `relay_to`, TLS required and checked against
/// `ca`, no local delivery, no DNS; short queue timers so a deferred message is retried within
/// seconds, not minutes.
fn main_cf(queue: &Path, data: &Path, log: &Path, relay_to: SocketAddr, ca: &Path) -> String {
    format!(
        "compatibility_level = 3.6\n\
         queue_directory = {queue}\n\
         data_directory = {data}\n\
         maillog_file = {log}\n\
         mail_owner = {MAIL_OWNER}\n\
         setgid_group = postdrop\n\
         myhostname = postfix.test\n\
         mydestination =\n\
         mynetworks = 127.0.0.0/8\n\
         inet_interfaces = loopback-only\n\
         inet_protocols = ipv4\n\
         relayhost = [{relay_ip}]:{relay_port}\n\
         smtpd_relay_restrictions = permit_mynetworks, reject\n\
         alias_maps =\n\
         alias_database =\n\
         local_recipient_maps =\n\
         smtpd_tls_security_level = none\n\
         smtp_tls_security_level = encrypt\n\
         smtp_tls_CAfile = {ca}\n\
         smtp_tls_loglevel = 1\n\
         smtp_dns_support_level = disabled\n\
         queue_run_delay = 1s\n\
         minimal_backoff_time = 1s\n\
         maximal_backoff_time = 2s\n\
         biff = no\n",
        queue = queue.display(),
        data = data.display(),
        log = log.display(),
        relay_ip = relay_to.ip(),
        relay_port = relay_to.port(),
        ca = ca.display(),
    )
}

/// `master.cf`: the services an SMTP relay needs, none chrooted (the queue directory is no
/// chroot jail), plus `postlog` for `maillog_file`.
fn master_cf(smtpd: SocketAddr) -> String {
    format!(
        "{smtpd} inet n - n - - smtpd\n\
         pickup unix n - n 60 1 pickup\n\
         cleanup unix n - n - 0 cleanup\n\
         qmgr unix n - n 300 1 qmgr\n\
         tlsmgr unix - - n 1000? 1 tlsmgr\n\
         rewrite unix - - n - - trivial-rewrite\n\
         bounce unix - - n - 0 bounce\n\
         defer unix - - n - 0 bounce\n\
         trace unix - - n - 0 bounce\n\
         verify unix - - n - 1 verify\n\
         flush unix n - n 1000? 0 flush\n\
         proxymap unix - - n - - proxymap\n\
         smtp unix - - n - - smtp\n\
         relay unix - - n - - smtp\n\
         showq unix n - n - - showq\n\
         error unix - - n - - error\n\
         retry unix - - n - - error\n\
         discard unix - - n - - discard\n\
         anvil unix - - n - 1 anvil\n\
         scache unix - - n - 1 scache\n\
         postlog unix-dgram n - n - 1 postlogd\n"
    )
}
