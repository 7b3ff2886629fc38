//! Talking to a node's REST API: an HTTPS client that trusts only the test CA
//! ([`ApiClient`]), and the contract-testing tool ([`schemathesis_bin`]).
//!
//! It never writes responses or keys to disk: answers stay in the test's
//! memory, and the contract tool gets the key on its command line only.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::files::workspace_dir;
use crate::node::Node;
use crate::process::output_with_timeout;
use crate::tls::{TestCa, https_agent_trusting};

/// Upper bound of one contract-test run (it is sized to take well under a minute).
const CONTRACT_TIMEOUT: Duration = Duration::from_secs(300);

/// Upper bound of one plain-HTTP request (loopback, a development node).
const PLAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest API answer read (an export of many records).
const MAX_ANSWER_BYTES: u64 = 256 * 1024 * 1024;

/// Where `./build.sh test` installs schemathesis (a venv, pinned version).
const DEFAULT_SCHEMATHESIS: &str = "/var/tmp/mxnode-venv/bin/schemathesis";

/// The schemathesis executable: `$MXNODE_SCHEMATHESIS`, else the venv that
/// `./build.sh test` creates. Panics telling how to install it.
pub fn schemathesis_bin() -> PathBuf {
    let path = std::env::var_os("MXNODE_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SCHEMATHESIS));
    assert!(
        path.is_file(),
        "{} is missing: run ./build.sh test (it installs schemathesis into a venv), or set \
         MXNODE_SCHEMATHESIS",
        path.display()
    );
    path
}

/// Runs `schemathesis run daemon/src/http/openapi.yaml` against `node`'s API
/// with `key`, verifying TLS against `ca`, plus `args`; returns its exit code
/// (-1 when killed) and its output. It runs in a temp directory, so nothing
/// it writes lands in the workspace.
pub fn run_schemathesis(node: &Node, ca: &TestCa, key: &str, args: &[&str]) -> (i32, String) {
    let spec = workspace_dir().join("daemon/src/http/openapi.yaml");
    let cwd = tempfile::Builder::new()
        .prefix("mxnode-test-schemathesis-")
        .tempdir()
        .expect("create a temp dir for schemathesis");
    let output = output_with_timeout(
        Command::new(schemathesis_bin())
            .arg("run")
            .arg(&spec)
            .arg("--url")
            .arg(node.api_url(""))
            .arg("--header")
            .arg(format!("Authorization: Bearer {key}"))
            .arg("--tls-verify")
            .arg(&ca.ca_pem)
            .arg("--no-color")
            .args(args)
            .current_dir(cwd.path())
            .env("HOME", cwd.path()),
        "schemathesis run",
        CONTRACT_TIMEOUT,
    );
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// One answer of the API.
#[derive(Debug, Clone)]
pub struct ApiAnswer {
    pub status: u16,
    /// `Content-Type`, empty when absent.
    pub content_type: String,
    /// `WWW-Authenticate`, empty when absent.
    pub www_authenticate: String,
    /// `Set-Cookie`, empty when absent.
    pub set_cookie: String,
    /// `Retry-After`, empty when absent.
    pub retry_after: String,
    pub body: String,
}

impl ApiAnswer {
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// `error.code` of a JSON error answer, empty otherwise.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// An HTTPS client of one node's API, trusting only the test CA.
pub struct ApiClient {
    agent: ureq::Agent,
    base: String,
}

impl ApiClient {
    /// A client of `node`'s API (configured with [`crate::NodeConfig::http`]
    /// and `ca`).
    pub fn new(node: &Node, ca: &TestCa) -> ApiClient {
        ApiClient {
            agent: https_agent_trusting(&ca.ca_pem),
            base: node.api_url(""),
        }
    }

    /// A client of a plain-HTTP API at `base` (`http://ADDR`, loopback), such as `mxnode dev`'s.
    pub fn plain(base: &str) -> ApiClient {
        ApiClient {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(PLAIN_TIMEOUT))
                .build()
                .into(),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// Sends `method path` with `key` as bearer token (if any) and `body` as
    /// `(content type, bytes)` (if any).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> ApiAnswer {
        let headers: Vec<(&str, String)> = key
            .map(|key| ("Authorization", format!("Bearer {key}")))
            .into_iter()
            .collect();
        self.request_with_headers(method, path, &headers, body)
    }

    /// Sends `method path` with `headers` (e.g. a session cookie and a CSRF token) and `body`
    /// as `(content type, bytes)` (if any).
    pub fn request_with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<(&str, Vec<u8>)>,
    ) -> ApiAnswer {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let result = match body {
            Some((content_type, bytes)) => self.agent.run(
                builder
                    .header("Content-Type", content_type)
                    .body(bytes)
                    .expect("a valid request"),
            ),
            None => self.agent.run(builder.body(()).expect("a valid request")),
        };
        let mut response =
            result.unwrap_or_else(|e| panic!("{method} {path}: no answer from the API: {e}"));
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let (content_type, www_authenticate, set_cookie, retry_after) = (
            header("content-type"),
            header("www-authenticate"),
            header("set-cookie"),
            header("retry-after"),
        );
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .unwrap_or_else(|e| panic!("{method} {path}: unreadable answer: {e}"));
        ApiAnswer {
            status: response.status().as_u16(),
            content_type,
            www_authenticate,
            set_cookie,
            retry_after,
            body,
        }
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> ApiAnswer {
        self.request("GET", path, key, None)
    }

    pub fn delete(&self, path: &str, key: Option<&str>) -> ApiAnswer {
        self.request("DELETE", path, key, None)
    }

    /// `POST` with a JSON body.
    pub fn post(&self, path: &str, key: Option<&str>, body: &Value) -> ApiAnswer {
        self.request(
            "POST",
            path,
            key,
            Some(("application/json", body.to_string().into_bytes())),
        )
    }

    /// `PUT` with a JSON body.
    pub fn put(&self, path: &str, key: Option<&str>, body: &Value) -> ApiAnswer {
        self.request(
            "PUT",
            path,
            key,
            Some(("application/json", body.to_string().into_bytes())),
        )
    }
}
