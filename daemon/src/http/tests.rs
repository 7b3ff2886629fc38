//! The connection layer over a real loopback socket, speaking raw bytes: keep-alive with
//! bodies, the body limit closing the connection, `HEAD`, a request hyper cannot parse, and
//! graceful shutdown. The API's routes themselves are tested end to end (`tests/api.rs`,
//! `tests/api_contract.rs`) and in the controller's tests.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::Response;
use super::api::MAX_BODY_BYTES;
use super::server::{self, App};
use crate::api::Api;
use crate::api::settings::SettingsBackend;
use crate::config::ConfigError;
use crate::metrics::Metrics;
use crate::store::memory::MemoryStore;

/// How long a client waits for the server to answer or close before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// A settings backend with nothing to set: the tests here never reach settings.
struct NoSettings;

impl SettingsBackend for NoSettings {
    fn current(&self) -> Value {
        json!({})
    }

    fn apply(&self, document: Value) -> Result<Value, Vec<ConfigError>> {
        Ok(document)
    }
}

/// A server on a loopback port, run on its own thread until dropped or [`Served::shut_down`].
struct Served {
    addr: SocketAddr,
    stop: Option<smol::channel::Sender<()>>,
    running: Option<JoinHandle<()>>,
}

impl Served {
    fn start<A: App>(app: A) -> Served {
        let listener = server::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
        let addr = listener.get_ref().local_addr().expect("local address");
        let (stop, shutdown) = smol::channel::bounded::<()>(1);
        let running = std::thread::spawn(move || {
            smol::block_on(server::run(listener, Arc::new(app), None, shutdown));
        });
        Served {
            addr,
            stop: Some(stop),
            running: Some(running),
        }
    }

    /// The API application over an in-memory store.
    fn api() -> Served {
        let api = Api::new(
            Arc::new(MemoryStore::new()),
            Arc::new(Metrics::new()),
            Arc::new(NoSettings),
        );
        Served::start(super::api::app(Arc::new(api), false))
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        stream
    }

    /// Begins shutdown and waits until `run` has returned; returns how long that took.
    fn shut_down(&mut self) -> Duration {
        let began = Instant::now();
        drop(self.stop.take());
        if let Some(running) = self.running.take() {
            running.join().expect("the server thread");
        }
        began.elapsed()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

/// One answer as it came over the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header lines, names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn error_code(&self) -> String {
        let body: Value = serde_json::from_slice(&self.body).unwrap_or_default();
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// How the reading ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The server closed the connection (or reset it after its answers).
    Closed,
    /// The connection was still open when the expected answers had arrived.
    Open,
}

/// Reads from `stream` until `expected` answers have arrived (then waits briefly for more) or
/// the server closes; `head_only` answers (to `HEAD`) have no body whatever they declare.
///
/// After an answer with `Connection: close` it closes its own side, as HTTP clients do, and
/// waits (up to [`PATIENCE`]) for the server to close.
fn read_answers(stream: &mut TcpStream, expected: usize, head_only: &[bool]) -> (Vec<Answer>, End) {
    let deadline = Instant::now() + PATIENCE;
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut closed_ours = false;
    loop {
        let answers = parse_answers(&raw, head_only);
        let settled = answers.len() >= expected;
        let closing = answers
            .last()
            .is_some_and(|answer| answer.header("connection") == Some("close"));
        if closing && !closed_ours {
            let _ = stream.shutdown(Shutdown::Write);
            closed_ours = true;
        }
        match stream.read(&mut buf) {
            Ok(0) => return (answers, End::Closed),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (answers, End::Closed);
            }
            Err(_) if settled && (!closing || Instant::now() >= deadline) => {
                // Quiet after the answers we expected: the connection is still open.
                return (answers, End::Open);
            }
            Err(_) => assert!(Instant::now() < deadline, "no answer in time: {raw:?}"),
        }
    }
}

/// The complete answers at the start of `raw`.
fn parse_answers(mut raw: &[u8], head_only: &[bool]) -> Vec<Answer> {
    let mut answers = Vec::new();
    while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let declared = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let length = if head_only.get(answers.len()) == Some(&true) {
            0
        } else {
            declared
        };
        let rest = &raw[end + 4..];
        if rest.len() < length {
            break;
        }
        answers.push(Answer {
            status,
            headers,
            body: rest[..length].to_vec(),
        });
        raw = &rest[length..];
    }
    answers
}

/// A POST of `body` as JSON to `path`.
fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: node.test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

#[test]
fn a_keep_alive_client_gets_an_answer_to_each_request_with_a_body() {
    let served = Served::api();
    let mut client = served.connect();
    let setup = post(
        "/api/v1/setup",
        br#"{"token": "0000", "username": "admin", "password": "a password"}"#,
    );
    let broken_setup = post("/api/v1/setup", b"{");
    let erasure = post("/api/v1/erasure", br#"{"address": "bob@example.test"}"#);
    // One at a time, then pipelined in one write.
    client.write_all(&setup).expect("send");
    let (first, end) = read_answers(&mut client, 1, &[]);
    assert_eq!(end, End::Open);
    client.write_all(&erasure).expect("send");
    let (second, end) = read_answers(&mut client, 1, &[]);
    assert_eq!(end, End::Open);
    client
        .write_all(&[broken_setup, erasure, setup].concat())
        .expect("send");
    let (pipelined, end) = read_answers(&mut client, 3, &[]);
    assert_eq!(end, End::Open, "{pipelined:?}");

    let codes: Vec<String> = first
        .iter()
        .chain(&second)
        .chain(&pipelined)
        .map(Answer::error_code)
        .collect();
    // No setup token was issued and no key was sent: each request was read whole and judged
    // on its own body.
    assert_eq!(
        codes,
        [
            "wrong_setup_token",
            "unauthorized",
            "invalid_body",
            "unauthorized",
            "wrong_setup_token"
        ],
        "{first:?} {second:?} {pipelined:?}"
    );
}

#[test]
fn an_oversized_body_gets_413_and_the_connection_closes_before_the_next_request() {
    let served = Served::api();
    let next = post("/api/v1/erasure", br#"{"address": "bob@example.test"}"#);
    // Far more than the socket buffers hold: the server must keep reading after its answer.
    let oversized = 32 * MAX_BODY_BYTES;
    let declared = post("/api/v1/erasure", &vec![b' '; oversized]);
    let mut chunked = b"POST /api/v1/erasure HTTP/1.1\r\nHost: node.test\r\n\
        Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for _ in 0..oversized / 4096 {
        chunked.extend_from_slice(b"1000\r\n");
        chunked.extend_from_slice(&[b' '; 4096]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");

    for request in [declared, chunked] {
        let mut client = served.connect();
        client
            .set_write_timeout(Some(PATIENCE))
            .expect("write timeout");
        // Like most clients: the whole request first, then the answer.
        client
            .write_all(&[request, next.clone()].concat())
            .expect("the server reads what the client sends after its answer");
        let (answers, end) = read_answers(&mut client, 1, &[]);
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0].status, 413);
        assert_eq!(answers[0].error_code(), "payload_too_large");
        assert_eq!(answers[0].header("connection"), Some("close"));
        assert_eq!(
            end,
            End::Closed,
            "the rest of the body is never taken for a request"
        );
    }
}

#[test]
fn head_gets_the_get_answers_head_and_the_connection_stays_usable() {
    let served = Served::api();
    let mut client = served.connect();
    client
        .write_all(
            b"HEAD /healthz HTTP/1.1\r\nHost: node.test\r\n\r\n\
              GET /healthz HTTP/1.1\r\nHost: node.test\r\n\r\n",
        )
        .expect("send");
    let (answers, end) = read_answers(&mut client, 2, &[true, false]);
    assert_eq!(end, End::Open);
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[0].status, 200);
    assert!(answers[0].body.is_empty());
    assert_eq!(
        answers[0].header("content-length"),
        Some(answers[1].body.len().to_string().as_str())
    );
    assert_eq!(answers[0].header("cache-control"), Some("no-store"));
    assert_eq!(answers[1].status, 200);
}

#[test]
fn a_request_that_cannot_be_served_gets_400_and_the_connection_closes() {
    let served = Served::api();
    // Over the 8 KiB a head may have, under what hyper buffers: still the API's JSON error.
    let long_query = format!(
        "GET /api/v1/export?address={} HTTP/1.1\r\nHost: node.test\r\n\r\n",
        "%C3%A9".repeat(1500)
    )
    .into_bytes();
    for request in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        &long_query,
    ] {
        let line = String::from_utf8_lossy(&request[..request.len().min(40)]).into_owned();
        let mut client = served.connect();
        client.write_all(request).expect("send");
        let (answers, end) = read_answers(&mut client, 1, &[]);
        assert_eq!(answers.len(), 1, "{line}: {answers:?}");
        assert_eq!(answers[0].status, 400, "{line}");
        if request.starts_with(b"GET") {
            assert_eq!(answers[0].error_code(), "bad_request", "{line}");
        }
        assert_eq!(end, End::Closed, "{line}");
    }
}

/// Answers every request after [`Slow::DELAY`], telling the test when a request began.
struct Slow {
    began: smol::channel::Sender<()>,
}

impl Slow {
    const DELAY: Duration = Duration::from_millis(500);
}

impl App for Slow {
    async fn respond(&self, _: hyper::Request<Incoming>, _: SocketAddr) -> Response {
        let _ = self.began.try_send(());
        smol::Timer::after(Slow::DELAY).await;
        Response::new(Full::new("done".into()))
    }
}

#[test]
fn shutdown_closes_idle_connections_finishes_the_answer_in_progress_then_returns() {
    let (began, beginning) = smol::channel::unbounded();
    let mut served = Served::start(Slow { began });
    let request = b"GET / HTTP/1.1\r\nHost: node.test\r\n\r\n";
    // An idle keep-alive connection (it had one answer) and a fresh one that sent nothing.
    let mut idle = served.connect();
    idle.write_all(request).expect("send");
    assert_eq!(read_answers(&mut idle, 1, &[]).0.len(), 1);
    let silent = served.connect();
    let mut busy = served.connect();
    busy.write_all(request).expect("send");
    // The idle connection's request, then the busy one's.
    for _ in 0..2 {
        smol::block_on(beginning.recv()).expect("a request began");
    }

    let took = served.shut_down();
    assert!(
        took >= Slow::DELAY / 2 && took < Slow::DELAY + Duration::from_secs(3),
        "run returned after {took:?}"
    );
    let (answers, end) = read_answers(&mut busy, 1, &[]);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].body, b"done");
    assert_eq!(end, End::Closed);
    for mut client in [idle, silent.try_clone().expect("clone")] {
        let (answers, end) = read_answers(&mut client, 0, &[]);
        assert!(answers.is_empty(), "{answers:?}");
        assert_eq!(end, End::Closed);
    }
    let _ = silent.shutdown(Shutdown::Both);
}
