//! DNS peers for sender authentication (DESIGN §11).
//!
//! [`DnsServer`] is Debian's dnsmasq serving the TXT records a test gives it (SPF, DKIM keys,
//! DMARC policies) on 127.0.0.1, authoritative-style for `.test` and the other top-level
//! domains of its records (any name under them it does not list is NXDOMAIN), with `dead.test`
//! delegated to a UDP socket that reads nothing and answers nothing: the domain whose server
//! never answers. dnsmasq was chosen because one process with
//! `txt-record=` lines is a whole test zone: no zone files, no keys, no control channel.
//!
//! [`refusing_resolver`] is for every other test node: a resolver on loopback that answers each
//! query `REFUSED` at once, so nodes that do not test authentication never send a query off the
//! machine and never wait for a timeout (their verdicts are `temperror`/`none`).
//!
//! It must never listen beyond 127.0.0.1 and never forward a query anywhere else.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use tempfile::TempDir;

use crate::process::{kill_and_reap, snapshot};

/// How long dnsmasq may take to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest character-string of a TXT record (RFC 1035 §3.3.14): longer values (a 2048-bit
/// DKIM key) are split into several, which the reader joins.
const TXT_STRING_MAX: usize = 255;

/// A running dnsmasq on 127.0.0.1; killed on drop.
pub struct DnsServer {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    /// `dead.test`'s server: bound, never read.
    _black_hole: UdpSocket,
    _dir: TempDir,
}

impl DnsServer {
    /// Serves `records` as `(name, TXT value)`; a name may appear more than once.
    pub fn start(records: &[(&str, &str)]) -> DnsServer {
        let black_hole = UdpSocket::bind("127.0.0.1:0").expect("bind the black-hole socket");
        let hole = black_hole.local_addr().expect("black-hole address");
        let dir = tempfile::tempdir().expect("temp dir for the dnsmasq config");
        let mut conf = String::new();
        // Every top-level domain of the zone is answered here and nowhere else: a name it
        // does not list is NXDOMAIN, never a question for another server.
        let mut tlds: Vec<&str> = records
            .iter()
            .filter_map(|(name, _)| name.trim_end_matches('.').rsplit('.').next())
            .chain(["test"])
            .collect();
        tlds.sort_unstable();
        tlds.dedup();
        for tld in tlds {
            let _ = writeln!(conf, "local=/{tld}/");
        }
        let _ = writeln!(conf, "server=/dead.test/{}#{}", hole.ip(), hole.port());
        for (name, value) in records {
            let strings: Vec<String> = value
                .as_bytes()
                .chunks(TXT_STRING_MAX)
                .map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk)))
                .collect();
            let _ = writeln!(conf, "txt-record={name},{}", strings.join(","));
        }
        let conf_path = dir.path().join("dnsmasq.conf");
        std::fs::write(&conf_path, conf).expect("write the dnsmasq config");
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("dnsmasq")
                .args([
                    "--keep-in-foreground",
                    "--no-daemon",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--pid-file=",
                    "--user=",
                    "--local-ttl=60",
                    "--log-facility=-",
                    "--log-queries",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--conf-file={}", conf_path.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start dnsmasq ({e}): install dnsmasq-base (./build.sh test)")
                });
            let stderr = child.stderr.take().expect("stderr was piped");
            let log = Arc::new(Mutex::new(String::new()));
            let (ready_tx, ready_rx) = mpsc::channel();
            let sink = log.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line.contains("cleared cache") || line.contains("started") {
                        let _ = ready_tx.send(true);
                    }
                    if let Ok(mut log) = sink.lock() {
                        log.push_str(&line);
                    }
                    line.clear();
                }
                let _ = ready_tx.send(false);
            });
            if ready_rx.recv_timeout(STARTUP_TIMEOUT) == Ok(true) {
                // "started" comes before the sockets are bound on some versions: wait for the
                // line after it, or a moment.
                let _ = ready_rx.recv_timeout(Duration::from_millis(200));
                if child.try_wait().ok().flatten().is_none() {
                    return DnsServer {
                        child,
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        log,
                        _black_hole: black_hole,
                        _dir: dir,
                    };
                }
            }
            kill_and_reap(&mut child);
        }
        panic!("dnsmasq did not start on a free port after 5 tries");
    }

    /// Where it listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its query log so far (names asked, answers given).
    pub fn log(&self) -> String {
        snapshot(&self.log)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// A port free on 127.0.0.1 for both UDP and TCP right now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
        let port = udp.local_addr().expect("UDP address").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The address of this process's refusing resolver (started on first use, lives as long as the
/// test binary).
pub fn refusing_resolver() -> SocketAddr {
    static RESOLVER: OnceLock<SocketAddr> = OnceLock::new();
    *RESOLVER.get_or_init(|| {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the refusing resolver");
        let addr = socket.local_addr().expect("refusing resolver address");
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut answer = Message::error_msg(
                    query.metadata.id,
                    query.metadata.op_code,
                    ResponseCode::Refused,
                );
                answer.add_queries(query.queries.iter().cloned());
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from);
                }
            }
        });
        addr
    })
}
