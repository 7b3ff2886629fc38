//! The console's authentication end to end (issue 5, DESIGN §7): the real binary over HTTPS
//! (test CA) in setup mode, its token file, setup with and without the token, login with its
//! cookie, lockout after wrong passwords, CSRF and Origin checks on state changes, logout.
//! Session expiry by time is pinned in the controller's tests (`api/tests.rs`, `console`),
//! which move the clock.

use std::os::unix::fs::PermissionsExt as _;

use mxnode_tests::{ApiAnswer, ApiClient, Node, NodeConfig, TestCa};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

fn start() -> (TestCa, Node) {
    let ca = TestCa::new();
    let node = Node::start(&NodeConfig::new().http(&ca));
    (ca, node)
}

fn setup(api: &ApiClient, token: &str, password: &str) -> ApiAnswer {
    api.post(
        "/api/v1/setup",
        None,
        &json!({"token": token, "username": "admin", "password": password}),
    )
}

fn login(api: &ApiClient, password: &str) -> ApiAnswer {
    api.post(
        "/api/v1/session",
        None,
        &json!({"username": "admin", "password": password}),
    )
}

/// The `name=value` part of a `Set-Cookie` header.
fn cookie_of(answer: &ApiAnswer) -> String {
    answer
        .set_cookie
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `method path` with the session cookie and, when given, the CSRF token and Origin.
fn with_session(
    api: &ApiClient,
    method: &str,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    origin: Option<&str>,
    body: Option<&Value>,
) -> ApiAnswer {
    let mut headers = vec![("Cookie", cookie.to_string())];
    if let Some(csrf) = csrf {
        headers.push(("X-CSRF-Token", csrf.to_string()));
    }
    if let Some(origin) = origin {
        headers.push(("Origin", origin.to_string()));
    }
    let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
    api.request_with_headers(method, path, &headers, body)
}

/// Completes setup on `node` and logs in: the cookie and the CSRF token.
fn admin_session(node: &Node, api: &ApiClient) -> (String, String) {
    let token = node.setup_token().expect("the node is in setup mode");
    assert_eq!(setup(api, &token, PASSWORD).status, 201);
    let answer = login(api, PASSWORD);
    assert_eq!(answer.status, 201, "{}", answer.body);
    let csrf = answer.json()["csrf_token"]
        .as_str()
        .expect("a CSRF token")
        .to_string();
    (cookie_of(&answer), csrf)
}

#[test]
fn setup_mode_demands_the_token_and_ends_for_good() {
    let (ca, mut node) = start();
    let api = ApiClient::new(&node, &ca);
    let status = api.get("/api/v1/setup", None);
    assert_eq!(
        status.json(),
        json!({"setup_required": true}),
        "{}",
        status.body
    );

    // The token file is private, and the journal announces the token and the fingerprint.
    let token = node.setup_token().expect("the token file exists");
    assert_eq!(token.len(), 32, "{token}");
    let file = node.runtime_dir().join("setup-token");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&node.runtime_dir()), 0o700);
    let log = node.log();
    assert!(
        log.contains(&token),
        "the log names the setup token:\n{log}"
    );
    assert!(log.contains("SHA-256 fingerprint"), "{log}");

    // Without the token: nothing.
    let wrong = setup(&api, "00000000000000000000000000000000", PASSWORD);
    assert_eq!(
        (wrong.status, wrong.error_code().as_str()),
        (403, "wrong_setup_token")
    );
    assert!(
        wrong.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("console")
    );
    let early = login(&api, PASSWORD);
    assert_eq!(
        (early.status, early.error_code().as_str()),
        (409, "setup_required")
    );
    let weak = setup(&api, &token, "short");
    assert_eq!(weak.status, 400, "{}", weak.body);
    assert_eq!(weak.json()["error"]["fields"][0]["key"], "password");

    let done = setup(&api, &token, PASSWORD);
    assert_eq!(done.status, 201, "{}", done.body);
    assert_eq!(done.json(), json!({"username": "admin"}));
    assert!(node.setup_token().is_none(), "the token file is deleted");
    let again = setup(&api, &token, PASSWORD);
    assert_eq!(
        (again.status, again.error_code().as_str()),
        (409, "setup_complete")
    );
    assert!(
        !node.log().contains(PASSWORD),
        "the password never reaches the log"
    );

    // After a restart the admin is still there and no new token appears.
    node.terminate();
    node.restart();
    let api = ApiClient::new(&node, &ca);
    assert_eq!(
        api.get("/api/v1/setup", None).json(),
        json!({"setup_required": false})
    );
    assert!(node.setup_token().is_none());
    assert_eq!(login(&api, PASSWORD).status, 201);
}

#[test]
fn session_cookie_drives_the_api_and_state_changes_need_csrf_token_and_origin() {
    let (ca, node) = start();
    let api = ApiClient::new(&node, &ca);
    let token = node.setup_token().expect("setup mode");
    assert_eq!(setup(&api, &token, PASSWORD).status, 201);
    let answer = login(&api, PASSWORD);
    assert_eq!(answer.status, 201, "{}", answer.body);
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(
            answer.set_cookie.contains(attribute),
            "{}",
            answer.set_cookie
        );
    }
    let cookie = cookie_of(&answer);
    let csrf = answer.json()["csrf_token"]
        .as_str()
        .expect("csrf")
        .to_string();

    let emails = with_session(&api, "GET", "/api/v1/emails", &cookie, None, None, None);
    assert_eq!(emails.status, 200, "{}", emails.body);
    let info = with_session(&api, "GET", "/api/v1/session", &cookie, None, None, None);
    assert_eq!(
        info.json()["csrf_token"],
        csrf.as_str(),
        "a reload recovers the token"
    );

    let key = json!({"name": "ci", "scopes": ["emails:read"]});
    let no_token = with_session(
        &api,
        "POST",
        "/api/v1/keys",
        &cookie,
        None,
        None,
        Some(&key),
    );
    assert_eq!(
        (no_token.status, no_token.error_code().as_str()),
        (403, "csrf"),
        "{}",
        no_token.body
    );
    assert!(no_token.body.contains("CSRF"), "{}", no_token.body);
    let foreign = with_session(
        &api,
        "POST",
        "/api/v1/keys",
        &cookie,
        Some(&csrf),
        Some("https://evil.example"),
        Some(&key),
    );
    assert_eq!(
        (foreign.status, foreign.error_code().as_str()),
        (403, "cross_origin")
    );
    let origin = api_origin(&node);
    let created = with_session(
        &api,
        "POST",
        "/api/v1/keys",
        &cookie,
        Some(&csrf),
        Some(&origin),
        Some(&key),
    );
    assert_eq!(created.status, 201, "{}", created.body);

    let out = with_session(
        &api,
        "DELETE",
        "/api/v1/session",
        &cookie,
        Some(&csrf),
        None,
        None,
    );
    assert_eq!(out.status, 204, "{}", out.body);
    assert!(out.set_cookie.contains("Max-Age=0"), "{}", out.set_cookie);
    let after = with_session(&api, "GET", "/api/v1/emails", &cookie, None, None, None);
    assert_eq!(
        (after.status, after.error_code().as_str()),
        (401, "session_expired")
    );

    // The audit log shows who did what.
    let (cookie, _) = {
        let answer = login(&api, PASSWORD);
        (cookie_of(&answer), ())
    };
    let audit = with_session(
        &api,
        "GET",
        "/api/v1/audit?limit=100",
        &cookie,
        None,
        None,
        None,
    );
    let actions: Vec<String> = audit.json()["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str().map(str::to_string))
        .collect();
    for action in ["setup.complete", "login", "logout", "api_key.create"] {
        assert!(
            actions.contains(&action.to_string()),
            "{action}: {actions:?}"
        );
    }
    assert!(audit.body.contains("admin:admin"), "{}", audit.body);
}

/// `https://127.0.0.1:PORT`, what a browser sends as `Origin`.
fn api_origin(node: &Node) -> String {
    node.api_url("")
}

#[test]
fn wrong_passwords_lock_the_client_out_with_a_clear_message() {
    let (ca, node) = start();
    let api = ApiClient::new(&node, &ca);
    let (_, _) = admin_session(&node, &api);
    for attempt in 1..=5 {
        let wrong = login(&api, "not the password at all");
        assert_eq!(wrong.status, 401, "attempt {attempt}: {}", wrong.body);
        assert!(
            wrong.body.contains("wrong user name or password"),
            "{}",
            wrong.body
        );
    }
    let locked = login(&api, PASSWORD);
    assert_eq!(
        (locked.status, locked.error_code().as_str()),
        (429, "locked_out"),
        "{}",
        locked.body
    );
    assert!(
        locked.body.contains("try again in 15 minute"),
        "{}",
        locked.body
    );
    assert!(!node.log().contains("not the password at all"));
}

/// Issue 16: a burst of parallel wrong logins from one address cannot outrun the lockout (an
/// attempt counts from before its 600,000-iteration hash, not after it) nor run more than two
/// hashes at once: at most five are judged (401); the rest are refused at once, 503 `busy`
/// with `Retry-After` while both hash slots are taken, 429 once the address is locked out.
/// Before, every one of them was hashed and answered 401.
#[test]
fn issue16_parallel_wrong_logins_are_counted_before_hashing_and_hashes_are_capped() {
    const BURST: usize = 24;
    let (ca, node) = start();
    let api = ApiClient::new(&node, &ca);
    let (_, _) = admin_session(&node, &api);
    let barrier = std::sync::Barrier::new(BURST);
    let answers: Vec<ApiAnswer> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..BURST)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    login(&api, "not the password at all")
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a login thread"))
            .collect()
    });
    let judged = answers.iter().filter(|a| a.status == 401).count();
    assert!(
        (1..=5).contains(&judged),
        "{judged} of {BURST} parallel guesses were judged: {:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    for answer in &answers {
        match answer.status {
            401 => {}
            503 => {
                assert_eq!(answer.error_code(), "busy", "{}", answer.body);
                assert!(answer.body.contains("passwords"), "{}", answer.body);
                assert!(
                    answer.retry_after.parse::<u64>().is_ok_and(|s| s > 0),
                    "Retry-After: {:?}",
                    answer.retry_after
                );
            }
            429 => {
                assert!(
                    ["locked_out", "attempts_pending"].contains(&answer.error_code().as_str()),
                    "{}",
                    answer.body
                );
                assert!(!answer.retry_after.is_empty(), "{}", answer.body);
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
}

/// A self-signed certificate for `localhost` that expired on 2021-01-01, and its key, as PEM.
fn expired_certificate() -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("parameters");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = params.self_signed(&key).expect("self-sign");
    (cert.pem(), key.serialize_pem())
}

/// `PUT /api/v1/tls` in the admin's session; `csrf` as given.
fn upload(
    api: &ApiClient,
    cookie: &str,
    csrf: Option<&str>,
    origin: &str,
    certificate: &str,
    key: &str,
) -> ApiAnswer {
    with_session(
        api,
        "PUT",
        "/api/v1/tls",
        cookie,
        csrf,
        Some(origin),
        Some(&json!({"certificate": certificate, "key": key})),
    )
}

/// The `key: message` pairs of a validation answer.
fn field_errors(answer: &ApiAnswer) -> Vec<String> {
    answer.json()["error"]["fields"]
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .map(|f| {
                    format!(
                        "{}: {}",
                        f["key"].as_str().unwrap_or(""),
                        f["message"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn certificate_uploads_are_refused_field_by_field_and_a_good_one_survives_a_restart() {
    let ca = TestCa::new();
    let mut node = Node::start(&NodeConfig::new().http(&ca).tls(&ca));
    let api = ApiClient::new(&node, &ca);
    let (cookie, csrf) = admin_session(&node, &api);
    let origin = api_origin(&node);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("read PEM");
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let (cert, key) = (read(&cert), read(&key));
    let (_, other_key) = ca.issue(&["localhost"]);
    let other_key = read(&other_key);
    let (expired, expired_key) = expired_certificate();
    let unrelated_ca = TestCa::new().ca_pem_text();
    let original = mxnode_tests::served_certificate(node.http_addr(), &ca.ca_pem);

    // (certificate, key, the field-level message expected)
    let cases: [(String, &str, &str); 5] = [
        (
            cert.clone(),
            &other_key,
            "key: the private key does not belong to the certificate (CN=localhost)",
        ),
        (
            expired.clone(),
            &expired_key,
            "certificate: the certificate expired on Jan  1 00:00:00 2021 GMT",
        ),
        (
            format!("{}{cert}", ca.ca_pem_text()),
            &key,
            "certificate: the chain is in the wrong order: the key belongs to certificate 2 (CN=localhost)",
        ),
        (
            format!("{cert}{unrelated_ca}"),
            &key,
            "certificate: the chain is in the wrong order: certificate 2 (CN=mxnode test CA) did not issue certificate 1 (CN=localhost)",
        ),
        (cert.clone(), "", "key: paste the private key in PEM"),
    ];
    for (certificate, key, expected) in &cases {
        let answer = upload(&api, &cookie, Some(&csrf), &origin, certificate, key);
        assert_eq!(
            (answer.status, answer.error_code().as_str()),
            (400, "invalid_certificate"),
            "{}",
            answer.body
        );
        let fields = field_errors(&answer);
        assert!(
            fields.iter().any(|f| f.starts_with(expected)),
            "{expected:?} not in {fields:?}"
        );
        // The key's material never comes back (its second line is base64 of the key).
        if let Some(material) = key.lines().nth(1) {
            assert!(!answer.body.contains(material), "{}", answer.body);
        }
    }

    // Without the CSRF token nothing is even validated.
    let answer = upload(&api, &cookie, None, &origin, &cert, &key);
    assert_eq!(
        (answer.status, answer.error_code().as_str()),
        (403, "csrf"),
        "{}",
        answer.body
    );
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("X-CSRF-Token")
    );
    assert_eq!(
        mxnode_tests::served_certificate(node.http_addr(), &ca.ca_pem),
        original,
        "refused uploads change nothing"
    );
    assert!(!node.data_dir().join("tls/uploaded").exists());

    // A good one: stored privately, served at once, never echoed, and kept over a restart.
    let answer = upload(&api, &cookie, Some(&csrf), &origin, &cert, &key);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["source"], "uploaded");
    assert_eq!(answer.json()["used_by"], json!(["smtp", "https"]));
    assert_eq!(
        answer.json()["certificate"]["sans"],
        json!(["localhost", "127.0.0.1"])
    );
    assert!(!answer.body.contains("PRIVATE KEY"), "{}", answer.body);
    let uploaded = mxnode_tests::served_certificate(node.http_addr(), &ca.ca_pem);
    assert_ne!(uploaded, original);
    let key_file = node.data_dir().join("tls/uploaded/key.pem");
    let mode = std::fs::metadata(&key_file)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let audit = with_session(
        &api,
        "GET",
        "/api/v1/audit?action=tls.update",
        &cookie,
        None,
        None,
        None,
    );
    let fingerprint = answer.json()["certificate"]["sha256_fingerprint"].clone();
    assert_eq!(
        audit.json()["items"][0]["target"],
        fingerprint,
        "{}",
        audit.body
    );
    assert!(node.terminate().success());
    node.restart();
    assert_eq!(
        mxnode_tests::served_certificate(node.http_addr(), &ca.ca_pem),
        uploaded,
        "the upload wins over the configured files after a restart"
    );
    // SIGHUP re-reads the files in use, the uploaded ones, for both listeners.
    node.reload();
    for line in [
        "reloaded the HTTPS certificate and key",
        "reloaded smtp.tls_cert and smtp.tls_key",
    ] {
        assert!(
            node.wait_for_log(line, std::time::Duration::from_secs(10)),
            "{}",
            node.log()
        );
    }
    assert_eq!(
        mxnode_tests::served_certificate(node.http_addr(), &ca.ca_pem),
        uploaded
    );
}

#[test]
fn the_recovery_key_is_shown_until_confirmed_then_deleted() {
    let (ca, node) = start();
    let api = ApiClient::new(&node, &ca);
    let (cookie, csrf) = admin_session(&node, &api);
    let origin = api_origin(&node);
    let get = || {
        with_session(
            &api,
            "GET",
            "/api/v1/recovery-key",
            &cookie,
            None,
            None,
            None,
        )
    };
    let delete = |csrf: Option<&str>| {
        with_session(
            &api,
            "DELETE",
            "/api/v1/recovery-key",
            &cookie,
            csrf,
            Some(&origin),
            None,
        )
    };
    // Off the appliance there is none.
    assert_eq!(get().status, 404, "{}", get().body);

    let key = "fjhkbclr-dvlcgnbn-lbvfivre-rjnfhdeb-ejuckbvk-gtdtrllc-lhibtrci-cuebhtfn";
    let file = node.data_dir().join("recovery-key");
    std::fs::write(&file, format!("{key}\n")).expect("write the recovery key");
    let shown = get();
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.json(), json!({"recovery_key": key}));
    assert_eq!(
        get().json(),
        json!({"recovery_key": key}),
        "until confirmed"
    );

    let refused = delete(None);
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (403, "csrf"),
        "{}",
        refused.body
    );
    assert!(file.exists(), "no CSRF token, no deletion");
    assert_eq!(delete(Some(&csrf)).status, 204);
    assert!(!file.exists());
    assert_eq!(get().status, 404);
    assert_eq!(delete(Some(&csrf)).status, 404);
    assert!(!node.log().contains(key), "the key is never logged");
    let audit = with_session(&api, "GET", "/api/v1/audit", &cookie, None, None, None);
    assert!(audit.body.contains("recovery_key.delete"), "{}", audit.body);
    assert!(!audit.body.contains(key));
}

/// Issue 16: the admin can change the password, only with the current one, and "log out
/// everywhere" exists; both end every other session and keep the caller's, need the CSRF
/// token, and are audited without either password.
#[test]
fn issue16_password_change_and_log_out_everywhere_end_every_other_session() {
    const NEW_PASSWORD: &str = "a much longer new passphrase";
    let (ca, node) = start();
    let api = ApiClient::new(&node, &ca);
    let (cookie, csrf) = admin_session(&node, &api);
    let origin = api_origin(&node);
    let second = cookie_of(&login(&api, PASSWORD));
    let works = |cookie: &str| {
        with_session(&api, "GET", "/api/v1/session", cookie, None, None, None).status
    };
    assert_eq!(works(&second), 200);
    let change = |csrf: Option<&str>, current: &str, new: &str| {
        with_session(
            &api,
            "POST",
            "/api/v1/admin/password",
            &cookie,
            csrf,
            Some(&origin),
            Some(&json!({"current_password": current, "new_password": new})),
        )
    };

    let no_token = change(None, PASSWORD, NEW_PASSWORD);
    assert_eq!(
        (no_token.status, no_token.error_code().as_str()),
        (403, "csrf")
    );
    let wrong = change(Some(&csrf), "not the password at all", NEW_PASSWORD);
    assert_eq!(
        (wrong.status, wrong.error_code().as_str()),
        (403, "wrong_password"),
        "{}",
        wrong.body
    );
    let short = change(Some(&csrf), PASSWORD, "short");
    assert_eq!(short.status, 400, "{}", short.body);
    assert_eq!(short.json()["error"]["fields"][0]["key"], "new_password");
    assert_eq!(works(&second), 200, "refused changes end nothing");

    let changed = change(Some(&csrf), PASSWORD, NEW_PASSWORD);
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(changed.json(), json!({"ended": 1}));
    assert_eq!(works(&second), 401, "the other session ended");
    assert_eq!(works(&cookie), 200, "the caller's session goes on");
    assert_eq!(
        login(&api, PASSWORD).status,
        401,
        "the old password is gone"
    );
    let third = cookie_of(&login(&api, NEW_PASSWORD));
    assert_eq!(works(&third), 200);

    let everywhere = |csrf: Option<&str>| {
        with_session(
            &api,
            "DELETE",
            "/api/v1/sessions",
            &cookie,
            csrf,
            Some(&origin),
            None,
        )
    };
    assert_eq!(everywhere(None).error_code(), "csrf");
    assert_eq!(works(&third), 200);
    let ended = everywhere(Some(&csrf));
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(ended.json(), json!({"ended": 1}));
    assert_eq!(
        works(&third),
        401,
        "log out everywhere ended the other session"
    );
    assert_eq!(works(&cookie), 200, "and kept the caller's");

    let audit = with_session(
        &api,
        "GET",
        "/api/v1/audit?limit=100",
        &cookie,
        None,
        None,
        None,
    );
    for action in ["admin.password_change", "sessions.end_others"] {
        assert!(audit.body.contains(action), "{action}: {}", audit.body);
    }
    assert!(
        audit.body.contains("1 other session(s) ended"),
        "{}",
        audit.body
    );
    for secret in [PASSWORD, NEW_PASSWORD, "not the password at all"] {
        assert!(!audit.body.contains(secret), "{}", audit.body);
        assert!(!node.log().contains(secret), "the log holds a password");
    }
}

/// Issue 16: a forgotten admin password is reset offline: `mxnode reset-admin` refuses while
/// the node runs (its store is locked), and with the node stopped removes the admin, so the
/// next start is in setup mode with a fresh one-time token; API keys survive; audited as `cli`.
#[test]
fn issue16_reset_admin_cli_returns_the_console_to_setup_mode() {
    let ca = TestCa::new();
    let mut node = Node::start(&NodeConfig::new().http(&ca).api_key("ops", &["admin"]));
    let api = ApiClient::new(&node, &ca);
    let (_, _) = admin_session(&node, &api);
    let config = node.config_path().to_path_buf();
    let reset = || {
        std::process::Command::new(mxnode_tests::mxnode_bin())
            .args(["reset-admin", "--config"])
            .arg(&config)
            .output()
            .expect("run mxnode reset-admin")
    };
    let running = reset();
    assert!(!running.status.success());
    assert!(
        String::from_utf8_lossy(&running.stderr).contains("stop it first"),
        "{}",
        String::from_utf8_lossy(&running.stderr)
    );

    assert!(node.terminate().success());
    let done = reset();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(
        stderr.contains("removed the admin account \"admin\""),
        "{stderr}"
    );
    assert!(stderr.contains("setup token"), "{stderr}");
    node.restart();
    let api = ApiClient::new(&node, &ca);
    assert_eq!(
        api.get("/api/v1/setup", None).json(),
        json!({"setup_required": true})
    );
    let early = login(&api, PASSWORD);
    assert_eq!(
        (early.status, early.error_code().as_str()),
        (409, "setup_required")
    );
    let key = node.api_key("ops").to_string();
    let audit = api.get("/api/v1/audit?action=admin.reset", Some(&key));
    assert_eq!(audit.status, 200, "the API key still works: {}", audit.body);
    assert_eq!(audit.json()["items"][0]["actor"], "cli", "{}", audit.body);
    let token = node.setup_token().expect("a fresh setup token");
    assert_eq!(setup(&api, &token, PASSWORD).status, 201);
    assert_eq!(login(&api, PASSWORD).status, 201);
}

/// Issue 16: over HTTPS the session cookie carries the `__Host-` prefix (so browsers take it
/// only with `Secure`, `Path=/` and no `Domain`, and nothing on a sibling host or plain HTTP can
/// plant or overwrite it), and the node reads the session only from that name: the same id
/// under the unprefixed name, as a planted cookie would be, is not a session.
#[test]
fn issue16_https_session_cookie_has_the_host_prefix_and_only_it_is_read() {
    let (ca, node) = start();
    let api = ApiClient::new(&node, &ca);
    let token = node.setup_token().expect("setup mode");
    assert_eq!(setup(&api, &token, PASSWORD).status, 201);
    let answer = login(&api, PASSWORD);
    assert_eq!(answer.status, 201, "{}", answer.body);
    let set_cookie = &answer.set_cookie;
    assert!(
        set_cookie.starts_with("__Host-mxnode_session="),
        "{set_cookie}"
    );
    let attributes: Vec<&str> = set_cookie.split(';').skip(1).map(str::trim).collect();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(attributes.contains(&attribute), "{set_cookie}");
    }
    assert!(
        !attributes
            .iter()
            .any(|a| a.to_ascii_lowercase().starts_with("domain")),
        "{set_cookie}"
    );
    let cookie = cookie_of(&answer);
    let id = cookie.split_once('=').map(|(_, v)| v).unwrap_or_default();
    let get = |cookie: String| {
        with_session(&api, "GET", "/api/v1/session", &cookie, None, None, None).status
    };
    assert_eq!(get(cookie.clone()), 200);
    assert_eq!(
        get(format!("mxnode_session={id}")),
        401,
        "the unprefixed name is not read"
    );

    let csrf = answer.json()["csrf_token"]
        .as_str()
        .expect("csrf")
        .to_string();
    let out = with_session(
        &api,
        "DELETE",
        "/api/v1/session",
        &cookie,
        Some(&csrf),
        None,
        None,
    );
    assert_eq!(out.status, 204, "{}", out.body);
    assert!(
        out.set_cookie.starts_with("__Host-mxnode_session=;"),
        "logout clears the prefixed cookie: {}",
        out.set_cookie
    );
}
