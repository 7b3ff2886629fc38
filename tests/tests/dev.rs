//! `mxnode dev` (`./build.sh run`) as a newcomer meets it (issue 13): the development node
//! serves the setup page and console over plain HTTP on loopback, logs the one-time setup token
//! and the URL, and the token completes setup and leads to a console login. Mail sent to it
//! still reaches the built-in receiver.

use std::io::{BufRead as _, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mxnode_tests::{
    ApiClient, SmtpClient, crlf, mxnode_bin, parse_http_listening, refusing_resolver,
};
use serde_json::json;

/// How long the development node may take to start and print what a newcomer needs.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `mxnode dev`, its output kept in memory, killed on drop.
struct DevNode {
    child: Child,
    output: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl DevNode {
    fn start() -> DevNode {
        let dir = tempfile::Builder::new()
            .prefix("mxnode-test-dev-")
            .tempdir()
            .expect("temp dir");
        let mut child = Command::new(mxnode_bin())
            .args(["dev", "--data-dir"])
            .arg(dir.path().join("dev"))
            .args(["--smtp", "127.0.0.1:0", "--receiver", "127.0.0.1:0"])
            .args(["--http", "127.0.0.1:0"])
            // Never the machine's resolvers: the harness's, which refuses at once.
            .arg("--resolver")
            .arg(refusing_resolver().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mxnode dev");
        let output = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        drain(stdout, Arc::clone(&output));
        drain(stderr, Arc::clone(&output));
        DevNode {
            child,
            output,
            _dir: dir,
        }
    }

    fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }

    /// Waits until the output holds what `find` looks for.
    fn wait_for<T>(&self, what: &str, find: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(found) = find(&self.output()) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "mxnode dev printed no {what}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DevNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drain(stream: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut text = into.lock().expect("output lock");
            text.push_str(&line);
            text.push('\n');
        }
    });
}

/// The 32 hex digits after `enter the setup token ` in `log`.
fn setup_token(log: &str) -> Option<String> {
    const MARKER: &str = "enter the setup token ";
    let at = log.find(MARKER)? + MARKER.len();
    let token: String = log[at..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    (token.len() == 32).then_some(token)
}

/// The first `listening on smtp://ADDR` address in `log`.
fn smtp_addr(log: &str) -> Option<std::net::SocketAddr> {
    let at = log.find("listening on smtp://")? + "listening on smtp://".len();
    let rest = &log[at..];
    let end = rest.find([' ', '\n', ',']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[test]
fn dev_node_serves_the_setup_page_over_http_and_its_printed_token_completes_setup_issue_13() {
    let dev = DevNode::start();
    let base = dev.wait_for("setup page URL", parse_http_listening);
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let token = dev.wait_for("setup token", setup_token);
    let banner = dev.output();
    assert!(
        banner.contains("setup page and console on http://"),
        "the banner names the console:\n{banner}"
    );

    let api = ApiClient::plain(&base);
    let page = api.get("/", None);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    assert_eq!(
        api.get("/api/v1/setup", None).json(),
        json!({"setup_required": true})
    );

    let password = "correct horse battery staple";
    let created = api.post(
        "/api/v1/setup",
        None,
        &json!({"token": token, "username": "admin", "password": password}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let login = api.post(
        "/api/v1/session",
        None,
        &json!({"username": "admin", "password": password}),
    );
    assert_eq!(login.status, 201, "{}", login.body);
    let cookie = login
        .set_cookie
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    // Plain HTTP keeps the unprefixed name: browsers refuse `__Host-` from a non-HTTPS
    // origin (issue 16).
    assert!(cookie.starts_with("mxnode_session="), "{cookie}");
    let me = api.request_with_headers("GET", "/api/v1/session", &[("Cookie", cookie)], None);
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(
        api.get("/api/v1/setup", None).json(),
        json!({"setup_required": false})
    );

    // The node still does what `./build.sh run` promised first: mail reaches the receiver.
    let smtp = dev.wait_for("SMTP address", smtp_addr);
    let mut client = SmtpClient::connect(smtp);
    let reply = client.send_mail(
        "alice@example.org",
        &["bob@example.test"],
        &crlf(b"Subject: hello dev\n\nhi\n"),
    );
    assert_eq!(reply.code, 250, "{reply:?}\n{}", dev.output());
}
