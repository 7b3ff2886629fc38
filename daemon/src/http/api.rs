//! The REST API over HTTP (DESIGN §7, `openapi.yaml` beside this file): tide routes that read
//! the request, make one controller call ([`crate::api::Api`]) on the blocking pool, and render
//! its result. Every error answer is `{"error": {"code", "message"}}`, including tide's own 404
//! and 405.
//!
//! This layer holds no logic of its own beyond HTTP: header and query extraction, the body
//! size limit, `Content-Type` checks and status codes. It never logs a request's content (query
//! strings can hold an address; bodies can hold secrets).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use smol::io::AsyncReadExt as _;
use tide::http::mime;
use tide::utils::After;
use tide::{Request, Response, StatusCode};

use crate::api::admin::SESSION_COOKIE;
use crate::api::emails::{AuditFilters, EmailFilters};
use crate::api::{Api, ApiError, Caller, Scope};
use crate::metrics::Format;

/// The header that carries a console session's CSRF token on every state change.
pub const CSRF_HEADER: &str = "X-CSRF-Token";

/// Largest request body accepted (a settings document with many routes fits easily).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The offline bundle upload: its body (hundreds of MiB) is streamed to the spool directory
/// instead of being read into memory by [`read_body_first`].
pub const UPDATE_UPLOAD_PATH: &str = "/api/v1/update/upload";

/// The state every handler sees.
pub type State = Arc<Api>;

/// The API application: every route of DESIGN §7 that this version serves.
pub fn app(api: Arc<Api>) -> tide::Server<State> {
    let mut app = tide::with_state(api);
    app.with(After(finish));
    app.with(read_body_first);
    app.at("/healthz").get(healthz);
    app.at("/metrics").get(metrics);
    app.at("/api/v1/emails").get(list_emails);
    app.at("/api/v1/emails/:id")
        .get(get_email)
        .delete(delete_email);
    app.at("/api/v1/erasure").post(erasure);
    app.at("/api/v1/export").get(export);
    app.at("/api/v1/audit").get(audit);
    app.at("/api/v1/settings")
        .get(get_settings)
        .put(put_settings);
    app.at("/api/v1/keys").get(list_keys).post(create_key);
    app.at("/api/v1/keys/:id").delete(revoke_key);
    app.at("/api/v1/status").get(node_status);
    app.at("/api/v1/tls").get(get_tls).put(put_tls);
    app.at("/api/v1/settings/s3/:name/probe").post(probe_s3);
    app.at("/api/v1/recovery-key")
        .get(get_recovery_key)
        .delete(delete_recovery_key);
    app.at("/api/v1/settings/routes/:index/test")
        .post(test_route);
    app.at("/api/v1/setup")
        .get(setup_status)
        .post(complete_setup);
    app.at("/api/v1/session")
        .get(session_info)
        .post(login)
        .delete(logout);
    app.at("/api/v1/update").get(update_status);
    app.at("/api/v1/update/check").post(update_check);
    app.at("/api/v1/update/apply").post(update_apply);
    app.at(UPDATE_UPLOAD_PATH).post(update_upload);
    crate::http::ui::mount(&mut app);
    app
}

/// The last value of header `name`.
fn header(req: &Request<State>, name: &str) -> Option<String> {
    req.header(name)
        .map(|values| values.last().as_str().to_string())
}

/// The value of cookie `name` in the `Cookie` header(s).
fn cookie(req: &Request<State>, name: &str) -> Option<String> {
    req.header("Cookie")?
        .iter()
        .flat_map(|value| value.as_str().split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().to_string())
        .last()
}

/// The caller's credentials and address.
fn caller(req: &Request<State>) -> Caller {
    Caller {
        authorization: header(req, "Authorization"),
        remote: req
            .peer_addr()
            .and_then(|addr| addr.parse::<SocketAddr>().ok())
            .map(|addr| addr.ip()),
        session: cookie(req, SESSION_COOKIE),
        csrf: header(req, CSRF_HEADER),
        origin: header(req, "Origin"),
        host: header(req, "Host"),
        state_changing: !matches!(
            req.method(),
            tide::http::Method::Get | tide::http::Method::Head | tide::http::Method::Options
        ),
    }
}

/// The last value of query parameter `name`.
fn query(req: &Request<State>, name: &str) -> Option<String> {
    req.url()
        .query_pairs()
        .filter(|(key, _)| key == name)
        .last()
        .map(|(_, value)| value.into_owned())
}

/// Runs a controller call on the blocking pool (the store blocks).
async fn call<T: Send + 'static>(
    req: &Request<State>,
    f: impl FnOnce(&Api) -> T + Send + 'static,
) -> T {
    let api = req.state().clone();
    smol::unblock(move || f(&api)).await
}

fn error_response(error: &ApiError) -> Response {
    let mut res = Response::new(error.status);
    res.set_body(error.body().to_string());
    res.set_content_type(mime::JSON);
    if error.status == 401 {
        res.insert_header("WWW-Authenticate", "Bearer realm=\"mxnode\"");
    }
    res
}

/// `status` with `value` as JSON, or the error.
fn json<T: Serialize>(status: StatusCode, result: Result<T, ApiError>) -> tide::Result {
    match result {
        Ok(value) => {
            let mut res = Response::new(status);
            res.set_body(serde_json::to_string(&value)?);
            res.set_content_type(mime::JSON);
            Ok(res)
        }
        Err(e) => Ok(error_response(&e)),
    }
}

/// 204, or the error.
fn no_content(result: Result<(), ApiError>) -> tide::Result {
    match result {
        Ok(()) => Ok(Response::new(StatusCode::NoContent)),
        Err(e) => Ok(error_response(&e)),
    }
}

fn payload_too_large() -> ApiError {
    ApiError::new(
        413,
        "payload_too_large",
        format!("the body exceeds {MAX_BODY_BYTES} bytes"),
    )
}

/// Reads every request's body (up to [`MAX_BODY_BYTES`]) before any handler answers, and
/// hands it on in memory.
///
/// async-h1 discards an unread body only after the answer is written, through a buffered
/// reader that can swallow the start of the client's next request on a keep-alive connection;
/// that request then never gets an answer. A body read before the answer avoids that. A body
/// over the limit gets 413 and the connection is closed.
fn read_body_first<'a>(
    mut req: Request<State>,
    next: tide::Next<'a, State>,
) -> Pin<Box<dyn Future<Output = tide::Result> + Send + 'a>> {
    Box::pin(async move {
        if req.url().path() == UPDATE_UPLOAD_PATH && req.method() == tide::http::Method::Post {
            return Ok(next.run(req).await);
        }
        let declared_too_large = req.len().is_some_and(|n| n > MAX_BODY_BYTES);
        let mut bytes = Vec::new();
        let read = if declared_too_large {
            Ok(0)
        } else {
            req.take_body()
                .take(MAX_BODY_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
                .await
        };
        if declared_too_large || bytes.len() > MAX_BODY_BYTES || read.is_err() {
            let error = match read {
                Err(_) => ApiError::new(400, "invalid_body", "the request body could not be read"),
                Ok(_) => payload_too_large(),
            };
            let mut res = error_response(&error);
            res.insert_header("Connection", "close");
            return Ok(res);
        }
        // Setting a body resets `Content-Type`; the handlers judge the client's own.
        let content_type = req
            .header("Content-Type")
            .map(|values| values.last().as_str().to_string());
        req.set_body(bytes);
        match content_type {
            Some(value) => {
                req.insert_header("Content-Type", value);
            }
            None => {
                req.remove_header("Content-Type");
            }
        }
        Ok(next.run(req).await)
    })
}

/// The request body as JSON bytes (already in memory, see [`read_body_first`]): 415 unless
/// `Content-Type` is JSON.
async fn json_body(req: &mut Request<State>) -> Result<Vec<u8>, ApiError> {
    let is_json = req
        .content_type()
        .is_some_and(|m| m.essence() == "application/json" || m.subtype().ends_with("+json"));
    if !is_json {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    req.body_bytes()
        .await
        .map_err(|_| ApiError::new(400, "invalid_body", "the request body could not be read"))
}

async fn healthz(req: Request<State>) -> tide::Result {
    json(StatusCode::Ok, Ok(req.state().health()))
}

async fn metrics(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let format = match req.header("Accept") {
        Some(accept) if accept.as_str().contains("application/openmetrics-text") => {
            Format::OpenMetrics
        }
        _ => Format::Prometheus,
    };
    match call(&req, move |api| api.metrics(&caller, format)).await {
        Ok(text) => {
            let mut res = Response::new(StatusCode::Ok);
            res.set_body(text);
            res.insert_header("Content-Type", format.content_type());
            Ok(res)
        }
        Err(e) => Ok(error_response(&e)),
    }
}

async fn list_emails(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let filters = EmailFilters {
        status: query(&req, "status"),
        recipient: query(&req, "recipient"),
        since: query(&req, "since"),
        until: query(&req, "until"),
        cursor: query(&req, "cursor"),
        limit: query(&req, "limit"),
    };
    json(
        StatusCode::Ok,
        call(&req, move |api| api.list_emails(&caller, &filters)).await,
    )
}

async fn get_email(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let id = req.param("id")?.to_string();
    json(
        StatusCode::Ok,
        call(&req, move |api| api.get_email(&caller, &id)).await,
    )
}

async fn delete_email(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let id = req.param("id")?.to_string();
    no_content(call(&req, move |api| api.delete_email(&caller, &id)).await)
}

async fn erasure(mut req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let body = match authenticated_body(&mut req, &caller, Scope::EmailsDelete).await {
        Ok(body) => body,
        Err(e) => return Ok(error_response(&e)),
    };
    json(
        StatusCode::Ok,
        call(&req, move |api| api.erase(&caller, &body)).await,
    )
}

async fn export(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let address = query(&req, "address");
    json(
        StatusCode::Ok,
        call(&req, move |api| api.export(&caller, address.as_deref())).await,
    )
}

async fn audit(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let filters = AuditFilters {
        action: query(&req, "action"),
        since: query(&req, "since"),
        until: query(&req, "until"),
        cursor: query(&req, "cursor"),
        limit: query(&req, "limit"),
    };
    json(
        StatusCode::Ok,
        call(&req, move |api| api.list_audit(&caller, &filters)).await,
    )
}

async fn get_settings(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    json(
        StatusCode::Ok,
        call(&req, move |api| api.get_settings(&caller)).await,
    )
}

async fn put_settings(mut req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let body = match authenticated_body(&mut req, &caller, Scope::SettingsWrite).await {
        Ok(body) => body,
        Err(e) => return Ok(error_response(&e)),
    };
    json(
        StatusCode::Ok,
        call(&req, move |api| api.put_settings(&caller, &body)).await,
    )
}

async fn create_key(mut req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let body = match authenticated_body(&mut req, &caller, Scope::Admin).await {
        Ok(body) => body,
        Err(e) => return Ok(error_response(&e)),
    };
    json(
        StatusCode::Created,
        call(&req, move |api| api.create_key(&caller, &body)).await,
    )
}

async fn list_keys(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    json(
        StatusCode::Ok,
        call(&req, move |api| api.list_keys(&caller)).await,
    )
}

async fn revoke_key(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let id = req.param("id")?.to_string();
    no_content(call(&req, move |api| api.revoke_key(&caller, &id)).await)
}

async fn node_status(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    json(
        StatusCode::Ok,
        call(&req, move |api| api.node_status(&caller)).await,
    )
}

async fn get_tls(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    json(
        StatusCode::Ok,
        call(&req, move |api| api.get_tls(&caller)).await,
    )
}

async fn put_tls(mut req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let body = match authenticated_body(&mut req, &caller, Scope::SettingsWrite).await {
        Ok(body) => body,
        Err(e) => return Ok(error_response(&e)),
    };
    json(
        StatusCode::Ok,
        call(&req, move |api| api.put_tls(&caller, &body)).await,
    )
}

async fn get_recovery_key(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    json(
        StatusCode::Ok,
        call(&req, move |api| api.get_recovery_key(&caller)).await,
    )
}

async fn delete_recovery_key(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    no_content(call(&req, move |api| api.delete_recovery_key(&caller)).await)
}

async fn probe_s3(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let name = req.param("name")?.to_string();
    json(
        StatusCode::Ok,
        call(&req, move |api| api.probe_s3(&caller, &name)).await,
    )
}

async fn test_route(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let index = req.param("index")?.to_string();
    json(
        StatusCode::Ok,
        call(&req, move |api| api.test_route(&caller, &index)).await,
    )
}

async fn setup_status(req: Request<State>) -> tide::Result {
    json(
        StatusCode::Ok,
        call(&req, move |api| api.setup_status()).await,
    )
}

async fn complete_setup(mut req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let body = match json_body(&mut req).await {
        Ok(body) => body,
        Err(e) => return Ok(error_response(&e)),
    };
    json(
        StatusCode::Created,
        call(&req, move |api| api.complete_setup(&caller, &body)).await,
    )
}

/// `Set-Cookie` for the session cookie: `value` for `max_age` seconds (0 deletes it).
fn session_cookie(value: &str, max_age: u64) -> String {
    format!(
        "{SESSION_COOKIE}={value}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age}"
    )
}

async fn login(mut req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let body = match json_body(&mut req).await {
        Ok(body) => body,
        Err(e) => return Ok(error_response(&e)),
    };
    match call(&req, move |api| api.login(&caller, &body)).await {
        Ok(session) => {
            let mut res = json(StatusCode::Created, Ok(&session.view))?;
            res.insert_header(
                "Set-Cookie",
                session_cookie(&session.session_id, session.max_age.as_secs()),
            );
            Ok(res)
        }
        Err(e) => Ok(error_response(&e)),
    }
}

async fn session_info(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    json(
        StatusCode::Ok,
        call(&req, move |api| api.session_info(&caller)).await,
    )
}

async fn logout(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let mut res = no_content(call(&req, move |api| api.logout(&caller)).await)?;
    if res.status() == StatusCode::NoContent {
        res.insert_header("Set-Cookie", session_cookie("", 0));
    }
    Ok(res)
}

async fn update_status(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    json(
        StatusCode::Ok,
        call(&req, move |api| api.update_status(&caller)).await,
    )
}

async fn update_check(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    json(
        StatusCode::Ok,
        call(&req, move |api| api.update_check(&caller)).await,
    )
}

async fn update_apply(req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    json(
        StatusCode::Ok,
        call(&req, move |api| api.update_apply(&caller)).await,
    )
}

/// `POST /api/v1/update/upload`: authenticates, streams the body (at most
/// [`crate::update::agent::MAX_BUNDLE_BYTES`]) into the spool directory, then lets the agent
/// judge and stage it. An answer given before the body was read closes the connection (the
/// unread body must not be taken for the next request).
async fn update_upload(mut req: Request<State>) -> tide::Result {
    let caller = caller(&req);
    let check = caller.clone();
    let close = |e: ApiError| {
        let mut res = error_response(&e);
        res.insert_header("Connection", "close");
        Ok(res)
    };
    let path = match call(&req, move |api| api.update_upload_path(&check)).await {
        Ok(path) => path,
        Err(e) => return close(e),
    };
    let limit = crate::update::agent::MAX_BUNDLE_BYTES;
    if req.len().is_some_and(|n| n as u64 > limit) {
        return close(ApiError::new(
            413,
            "payload_too_large",
            format!("the bundle exceeds {limit} bytes"),
        ));
    }
    let file = match smol::unblock({
        let path = path.clone();
        move || std::fs::File::create(path)
    })
    .await
    {
        Ok(file) => file,
        Err(e) => {
            log::error!("api: cannot spool an update upload: {e}");
            return close(ApiError::internal());
        }
    };
    let mut sink = smol::Unblock::new(file);
    let body = req.take_body().take(limit + 1);
    let copied = smol::io::copy(body, &mut sink).await;
    let flushed = smol::io::AsyncWriteExt::flush(&mut sink).await;
    drop(sink);
    match (copied, flushed) {
        (Ok(n), Ok(())) if n <= limit => {}
        (Ok(_), Ok(())) => {
            let _ = std::fs::remove_file(&path);
            return close(ApiError::new(
                413,
                "payload_too_large",
                format!("the bundle exceeds {limit} bytes"),
            ));
        }
        _ => {
            let _ = std::fs::remove_file(&path);
            return close(ApiError::new(
                400,
                "invalid_body",
                "the request body could not be read",
            ));
        }
    }
    json(
        StatusCode::Ok,
        call(&req, move |api| api.update_upload(&caller, &path)).await,
    )
}

/// Reads a JSON body, but only for a caller whose key holds `scope`: 401 and 403 come before
/// any judgement of the body, and an unauthenticated client cannot make the node read one.
/// (The controller checks again when it gets the body; that costs one key lookup.)
async fn authenticated_body(
    req: &mut Request<State>,
    caller: &Caller,
    scope: Scope,
) -> Result<Vec<u8>, ApiError> {
    let check = caller.clone();
    call(req, move |api| api.authenticate(&check, scope)).await?;
    json_body(req).await
}

/// Answers tide itself produced (unknown route 404, wrong method 405, a handler's error 500)
/// become JSON errors, and every answer gets headers that keep it out of caches and sniffers.
async fn finish(mut res: Response) -> tide::Result {
    let status = res.status();
    let is_json = res
        .content_type()
        .is_some_and(|m| m.essence() == mime::JSON.essence());
    if status.is_client_error() || status.is_server_error() {
        if let Some(error) = res.take_error() {
            log::error!("api: request failed: {error}");
        }
        if !is_json {
            let error = match status {
                StatusCode::NotFound => ApiError::new(404, "not_found", "no such route"),
                StatusCode::MethodNotAllowed => ApiError::new(
                    405,
                    "method_not_allowed",
                    "this route does not accept that method",
                ),
                s if s.is_server_error() => ApiError::internal(),
                s => ApiError::new(u16::from(s), "bad_request", "the request is invalid"),
            };
            let headers = error_response(&error);
            res.set_body(error.body().to_string());
            res.set_content_type(mime::JSON);
            if let Some(challenge) = headers.header("WWW-Authenticate") {
                res.insert_header("WWW-Authenticate", challenge);
            }
        }
    }
    res.insert_header("Cache-Control", "no-store");
    res.insert_header("X-Content-Type-Options", "nosniff");
    Ok(res)
}
