//! The REST API over HTTP (DESIGN §7, `openapi.yaml` beside this file): routes that read the
//! request, make one controller call ([`crate::api::Api`]) on the blocking pool, and render its
//! result. Every error answer is `{"error": {"code", "message"}}`, including 404 for an unknown
//! path and 405 for a known path with another method.
//!
//! This layer holds no logic of its own beyond HTTP: header and query extraction, the body
//! size limit, `Content-Type` checks and status codes. Every request's body is read into
//! memory (at most [`MAX_BODY_BYTES`]) before it is answered, except the offline bundle's,
//! which is streamed to the spool directory. It never logs a request's content (query strings
//! can hold an address; bodies can hold secrets).

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{
    CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, SET_COOKIE,
    WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Method, StatusCode};
use serde::Serialize;
use smol::io::AsyncWriteExt as _;

use super::Response;
use super::router::{BodyError, Request, Routed, Router, read_body};
use crate::api::admin::{PLAIN_SESSION_COOKIE, SESSION_COOKIE};
use crate::api::emails::{AuditFilters, EmailFilters};
use crate::api::{Api, ApiError, Caller, Scope};
use crate::metrics::Format;

/// The header that carries a console session's CSRF token on every state change.
pub const CSRF_HEADER: &str = "X-CSRF-Token";

/// Largest request body accepted (a settings document with many routes fits easily).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The offline bundle upload: its body (hundreds of MiB) is streamed to the spool directory
/// instead of being read into memory.
pub const UPDATE_UPLOAD_PATH: &str = "/api/v1/update/upload";

/// An upload that sends nothing for this long is cut (`408 upload_stalled`); it has no other
/// deadline, so a slow link only has to keep moving.
pub const UPLOAD_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// While an upload is spooled, the free space is looked at again after every this many bytes;
/// below the update margin the upload stops with `507 no_space`.
const UPLOAD_SPACE_CHECK_BYTES: u64 = 16 * 1024 * 1024;

/// Removes an upload's spool file when dropped: however the upload ends (refused, cut,
/// the client gone, the node stopping), nothing is left on the data volume (issue 16).
struct SpoolGuard(std::path::PathBuf);

impl Drop for SpoolGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The state every handler sees.
pub type State = Arc<Api>;

/// The API application: every route of DESIGN §7 that this version serves, and the console.
pub struct App {
    api: State,
    router: Router<State>,
    /// `http.allow_from`: the networks answered; empty for all (see [`App::admits`]).
    allow_from: Vec<ipnet::IpNet>,
    /// Whether the listener serves HTTPS.
    https: bool,
}

impl App {
    /// Only answers clients on the management networks (`http.allow_from`), and always the box
    /// itself: an MX's port 25 faces the internet, its console need not.
    pub fn allowing_only(mut self, networks: Vec<ipnet::IpNet>) -> App {
        self.allow_from = networks;
        self
    }

    fn admits(&self, peer: std::net::IpAddr) -> bool {
        let peer = match peer {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.allow_from.is_empty()
            || crate::hardening::is_the_box_itself(peer)
            || self.allow_from.iter().any(|net| net.contains(&peer))
    }
}

/// The API application over `api`, for a listener that serves HTTPS (`https`) or plain HTTP.
pub fn app(api: Arc<Api>, https: bool) -> App {
    let mut router = Router::default();
    router.at("/healthz").get(healthz);
    router.at("/metrics").get(metrics);
    router.at("/api/v1/emails").get(list_emails);
    router
        .at("/api/v1/emails/:id")
        .get(get_email)
        .delete(delete_email);
    router.at("/api/v1/erasure").post(erasure);
    router.at("/api/v1/export").get(export);
    router.at("/api/v1/audit").get(audit);
    router
        .at("/api/v1/settings")
        .get(get_settings)
        .put(put_settings);
    router.at("/api/v1/keys").get(list_keys).post(create_key);
    router.at("/api/v1/keys/:id").delete(revoke_key);
    router.at("/api/v1/status").get(node_status);
    router.at("/api/v1/tls").get(get_tls).put(put_tls);
    router.at("/api/v1/settings/s3/:name/probe").post(probe_s3);
    router
        .at("/api/v1/recovery-key")
        .get(get_recovery_key)
        .delete(delete_recovery_key);
    router
        .at("/api/v1/settings/routes/:index/test")
        .post(test_route);
    router
        .at("/api/v1/setup")
        .get(setup_status)
        .post(complete_setup);
    router
        .at("/api/v1/session")
        .get(session_info)
        .post(login)
        .delete(logout);
    router.at("/api/v1/sessions").delete(end_other_sessions);
    router.at("/api/v1/admin/password").post(change_password);
    router.at("/api/v1/update").get(update_status);
    router.at("/api/v1/update/check").post(update_check);
    router.at("/api/v1/update/apply").post(update_apply);
    router.at(UPDATE_UPLOAD_PATH).post_streamed(update_upload);
    crate::http::ui::mount(&mut router);
    App {
        api,
        router,
        https,
        allow_from: Vec::new(),
    }
}

impl super::server::App for App {
    /// The bundle upload is cut when it stalls ([`UPLOAD_IDLE_TIMEOUT`]), not after a fixed
    /// time: a large bundle over a slow link takes as long as it takes (issue 16).
    fn paces_itself(&self, request: &hyper::Request<Incoming>) -> bool {
        request.method() == hyper::Method::POST && request.uri().path() == UPDATE_UPLOAD_PATH
    }

    async fn respond(&self, request: hyper::Request<Incoming>, peer: SocketAddr) -> Response {
        if !self.admits(peer.ip()) {
            // Before the body is read or a route looked at: nothing here for this network.
            return finish(closing(error_response(&ApiError::new(
                403,
                "not_management_network",
                "this address is not on a management network of the node (http.allow_from)",
            ))));
        }
        let (head, body) = request.into_parts();
        let mut request = Request::new(head, peer);
        request.https = self.https;
        let routed = self.router.route(&request.method, &request.path);
        if matches!(routed, Routed::Found(endpoint, _) if endpoint.streamed) {
            request.stream = Some(body);
        } else {
            // Read before any answer, a 404 or 405 included. A body over the limit gets 413
            // and the connection is closed (its rest is not taken for the next request).
            request.body = match read_body(body, MAX_BODY_BYTES).await {
                Ok(bytes) => bytes,
                Err(BodyError::TooLarge) => {
                    return finish(closing(error_response(&payload_too_large())));
                }
                Err(BodyError::Unreadable) => {
                    return finish(closing(error_response(&unreadable_body())));
                }
            };
        }
        let response = match routed {
            Routed::Found(endpoint, params) => {
                request.params = params;
                endpoint.call(self.api.clone(), request).await
            }
            Routed::MethodNotAllowed => error_response(&ApiError::new(
                405,
                "method_not_allowed",
                "this route does not accept that method",
            )),
            Routed::NotFound => error_response(&ApiError::new(404, "not_found", "no such route")),
        };
        finish(response)
    }
}

/// The value of cookie `name` in the `Cookie` header(s) (the last one named so).
fn cookie(req: &Request, name: &str) -> Option<String> {
    let headers: Vec<String> = req.header_values("Cookie").collect();
    headers
        .iter()
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().to_string())
        .next_back()
}

/// The caller's credentials and address.
fn caller(req: &Request) -> Caller {
    Caller {
        authorization: req.header("Authorization"),
        remote: Some(req.peer.ip()),
        session: cookie(req, session_cookie_name(req.https)),
        csrf: req.header(CSRF_HEADER),
        origin: req.header("Origin"),
        host: req.header("Host"),
        state_changing: !matches!(req.method, Method::GET | Method::HEAD | Method::OPTIONS),
    }
}

/// Runs a controller call on the blocking pool (the store blocks).
async fn call<T: Send + 'static>(api: &State, f: impl FnOnce(&Api) -> T + Send + 'static) -> T {
    let api = api.clone();
    smol::unblock(move || f(&api)).await
}

/// `status` with `body` of type `content_type`.
fn response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

fn error_response(error: &ApiError) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = response(status, "application/json", error.body().to_string());
    if error.status == 401 {
        res.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"mxnode\""),
        );
    }
    if let Some(seconds) = error.retry_after {
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    res
}

/// `res` with `Connection: close`: answered before its body was read, the request's rest must
/// not be taken for the next one.
fn closing(mut res: Response) -> Response {
    res.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    res
}

/// `status` with `value` as JSON, or the error.
fn json<T: Serialize>(status: StatusCode, result: Result<T, ApiError>) -> Response {
    let value = match result {
        Ok(value) => value,
        Err(e) => return error_response(&e),
    };
    match serde_json::to_string(&value) {
        Ok(body) => response(status, "application/json", body),
        Err(e) => {
            log::error!("api: request failed: {e}");
            error_response(&ApiError::internal())
        }
    }
}

/// 204, or the error.
fn no_content(result: Result<(), ApiError>) -> Response {
    match result {
        Ok(()) => {
            let mut res = Response::new(Full::default());
            *res.status_mut() = StatusCode::NO_CONTENT;
            res
        }
        Err(e) => error_response(&e),
    }
}

fn payload_too_large() -> ApiError {
    ApiError::new(
        413,
        "payload_too_large",
        format!("the body exceeds {MAX_BODY_BYTES} bytes"),
    )
}

fn unreadable_body() -> ApiError {
    ApiError::new(400, "invalid_body", "the request body could not be read")
}

/// Whether `Content-Type` (its last value) names JSON: `application/json` or `*/*+json`, in
/// any case, with any parameters.
fn is_json(content_type: Option<&str>) -> bool {
    let Some(value) = content_type else {
        return false;
    };
    let http_whitespace = |c: char| matches!(c, ' ' | '\t' | '\r' | '\n');
    let token = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
    };
    let essence = value.split(';').next().unwrap_or_default();
    let Some((kind, subtype)) = essence.trim_matches(http_whitespace).split_once('/') else {
        return false;
    };
    let subtype = subtype.trim_end_matches(http_whitespace);
    if !token(kind) || !token(subtype) {
        return false;
    }
    let (kind, subtype) = (kind.to_ascii_lowercase(), subtype.to_ascii_lowercase());
    (kind == "application" && subtype == "json") || subtype.ends_with("+json")
}

/// The request body as JSON bytes (already in memory): 415 unless `Content-Type` is JSON.
fn json_body(req: &Request) -> Result<Vec<u8>, ApiError> {
    if !is_json(req.header("Content-Type").as_deref()) {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    Ok(req.body.to_vec())
}

async fn healthz(api: State, _: Request) -> Response {
    json(StatusCode::OK, Ok(api.health()))
}

async fn metrics(api: State, req: Request) -> Response {
    let caller = caller(&req);
    // The first `Accept` header decides.
    let format = match req.header_values("Accept").next() {
        Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
        _ => Format::Prometheus,
    };
    match call(&api, move |api| api.metrics(&caller, format)).await {
        Ok(text) => response(StatusCode::OK, format.content_type(), text),
        Err(e) => error_response(&e),
    }
}

async fn list_emails(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let filters = EmailFilters {
        status: req.query("status"),
        recipient: req.query("recipient"),
        since: req.query("since"),
        until: req.query("until"),
        cursor: req.query("cursor"),
        limit: req.query("limit"),
    };
    json(
        StatusCode::OK,
        call(&api, move |api| api.list_emails(&caller, &filters)).await,
    )
}

async fn get_email(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let id = req.param("id").to_string();
    json(
        StatusCode::OK,
        call(&api, move |api| api.get_email(&caller, &id)).await,
    )
}

async fn delete_email(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let id = req.param("id").to_string();
    no_content(call(&api, move |api| api.delete_email(&caller, &id)).await)
}

async fn erasure(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let body = match authenticated_body(&api, &req, &caller, Scope::EmailsDelete).await {
        Ok(body) => body,
        Err(e) => return error_response(&e),
    };
    json(
        StatusCode::OK,
        call(&api, move |api| api.erase(&caller, &body)).await,
    )
}

async fn export(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let address = req.query("address");
    json(
        StatusCode::OK,
        call(&api, move |api| api.export(&caller, address.as_deref())).await,
    )
}

async fn audit(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let filters = AuditFilters {
        action: req.query("action"),
        since: req.query("since"),
        until: req.query("until"),
        cursor: req.query("cursor"),
        limit: req.query("limit"),
    };
    json(
        StatusCode::OK,
        call(&api, move |api| api.list_audit(&caller, &filters)).await,
    )
}

async fn get_settings(api: State, req: Request) -> Response {
    let caller = caller(&req);
    json(
        StatusCode::OK,
        call(&api, move |api| api.get_settings(&caller)).await,
    )
}

async fn put_settings(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let body = match authenticated_body(&api, &req, &caller, Scope::SettingsWrite).await {
        Ok(body) => body,
        Err(e) => return error_response(&e),
    };
    json(
        StatusCode::OK,
        call(&api, move |api| api.put_settings(&caller, &body)).await,
    )
}

async fn create_key(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let body = match authenticated_body(&api, &req, &caller, Scope::Admin).await {
        Ok(body) => body,
        Err(e) => return error_response(&e),
    };
    json(
        StatusCode::CREATED,
        call(&api, move |api| api.create_key(&caller, &body)).await,
    )
}

async fn list_keys(api: State, req: Request) -> Response {
    let caller = caller(&req);
    json(
        StatusCode::OK,
        call(&api, move |api| api.list_keys(&caller)).await,
    )
}

async fn revoke_key(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let id = req.param("id").to_string();
    no_content(call(&api, move |api| api.revoke_key(&caller, &id)).await)
}

async fn node_status(api: State, req: Request) -> Response {
    let caller = caller(&req);
    json(
        StatusCode::OK,
        call(&api, move |api| api.node_status(&caller)).await,
    )
}

async fn get_tls(api: State, req: Request) -> Response {
    let caller = caller(&req);
    json(
        StatusCode::OK,
        call(&api, move |api| api.get_tls(&caller)).await,
    )
}

async fn put_tls(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let body = match authenticated_body(&api, &req, &caller, Scope::SettingsWrite).await {
        Ok(body) => body,
        Err(e) => return error_response(&e),
    };
    json(
        StatusCode::OK,
        call(&api, move |api| api.put_tls(&caller, &body)).await,
    )
}

async fn get_recovery_key(api: State, req: Request) -> Response {
    let caller = caller(&req);
    json(
        StatusCode::OK,
        call(&api, move |api| api.get_recovery_key(&caller)).await,
    )
}

async fn delete_recovery_key(api: State, req: Request) -> Response {
    let caller = caller(&req);
    no_content(call(&api, move |api| api.delete_recovery_key(&caller)).await)
}

async fn probe_s3(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let name = req.param("name").to_string();
    json(
        StatusCode::OK,
        call(&api, move |api| api.probe_s3(&caller, &name)).await,
    )
}

async fn test_route(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let index = req.param("index").to_string();
    json(
        StatusCode::OK,
        call(&api, move |api| api.test_route(&caller, &index)).await,
    )
}

async fn setup_status(api: State, _: Request) -> Response {
    json(
        StatusCode::OK,
        call(&api, move |api| api.setup_status()).await,
    )
}

async fn complete_setup(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let body = match json_body(&req) {
        Ok(body) => body,
        Err(e) => return error_response(&e),
    };
    json(
        StatusCode::CREATED,
        call(&api, move |api| api.complete_setup(&caller, &body)).await,
    )
}

/// The session cookie's name: `__Host-mxnode_session` over HTTPS, `mxnode_session` on plain
/// HTTP (loopback only), where browsers would refuse the prefix. Over HTTPS a cookie of the
/// plain name is ignored: it may have been planted.
fn session_cookie_name(https: bool) -> &'static str {
    if https {
        SESSION_COOKIE
    } else {
        PLAIN_SESSION_COOKIE
    }
}

/// `Set-Cookie` for the session cookie: `value` for `max_age` seconds (0 deletes it). Always
/// `Secure`, `Path=/` and no `Domain` (what `__Host-` demands; browsers accept `Secure` from
/// a loopback `http://` origin too).
fn session_cookie(https: bool, value: &str, max_age: u64) -> String {
    let name = session_cookie_name(https);
    format!("{name}={value}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age}")
}

async fn login(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let https = req.https;
    let body = match json_body(&req) {
        Ok(body) => body,
        Err(e) => return error_response(&e),
    };
    match call(&api, move |api| api.login(&caller, &body)).await {
        Ok(session) => {
            let mut res = json(StatusCode::CREATED, Ok(&session.view));
            let cookie = session_cookie(https, &session.session_id, session.max_age.as_secs());
            match HeaderValue::try_from(cookie) {
                Ok(cookie) => {
                    res.headers_mut().insert(SET_COOKIE, cookie);
                    res
                }
                Err(_) => error_response(&ApiError::internal()),
            }
        }
        Err(e) => error_response(&e),
    }
}

async fn session_info(api: State, req: Request) -> Response {
    let caller = caller(&req);
    json(
        StatusCode::OK,
        call(&api, move |api| api.session_info(&caller)).await,
    )
}

async fn logout(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let https = req.https;
    let mut res = no_content(call(&api, move |api| api.logout(&caller)).await);
    if res.status() == StatusCode::NO_CONTENT {
        let expired = HeaderValue::try_from(session_cookie(https, "", 0));
        if let Ok(expired) = expired {
            res.headers_mut().insert(SET_COOKIE, expired);
        }
    }
    res
}

async fn end_other_sessions(api: State, req: Request) -> Response {
    let caller = caller(&req);
    json(
        StatusCode::OK,
        call(&api, move |api| api.end_other_sessions(&caller)).await,
    )
}

async fn change_password(api: State, req: Request) -> Response {
    let caller = caller(&req);
    let body = match authenticated_body(&api, &req, &caller, Scope::Admin).await {
        Ok(body) => body,
        Err(e) => return error_response(&e),
    };
    json(
        StatusCode::OK,
        call(&api, move |api| api.change_password(&caller, &body)).await,
    )
}

async fn update_status(api: State, req: Request) -> Response {
    let caller = caller(&req);
    json(
        StatusCode::OK,
        call(&api, move |api| api.update_status(&caller)).await,
    )
}

async fn update_check(api: State, req: Request) -> Response {
    let caller = caller(&req);
    json(
        StatusCode::OK,
        call(&api, move |api| api.update_check(&caller)).await,
    )
}

async fn update_apply(api: State, req: Request) -> Response {
    let caller = caller(&req);
    json(
        StatusCode::OK,
        call(&api, move |api| api.update_apply(&caller)).await,
    )
}

/// `POST /api/v1/update/upload`: authenticates, streams the body (at most
/// [`crate::update::agent::MAX_BUNDLE_BYTES`]) into the spool directory, then lets the agent
/// judge and stage it. An answer given before the body was read closes the connection (the
/// unread body must not be taken for the next request).
async fn update_upload(api: State, mut req: Request) -> Response {
    let caller = caller(&req);
    let check = caller.clone();
    let close = |e: ApiError| closing(error_response(&e));
    let Some(mut body) = req.stream.take() else {
        return close(unreadable_body());
    };
    let limit = crate::update::agent::MAX_BUNDLE_BYTES;
    let too_large = || {
        ApiError::new(
            413,
            "payload_too_large",
            format!("the bundle exceeds {limit} bytes"),
        )
    };
    let declared = body.size_hint().exact();
    if body.size_hint().lower() > limit {
        return close(too_large());
    }
    let path = match call(&api, move |api| api.update_upload_path(&check, declared)).await {
        Ok(path) => path,
        Err(e) => return close(e),
    };
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
    let guard = SpoolGuard(path.clone());
    let mut sink = smol::Unblock::new(file);
    let copied: Result<u64, ApiError> = async {
        let mut written = 0u64;
        let mut checked = 0u64;
        loop {
            // `None`: nothing arrived for UPLOAD_IDLE_TIMEOUT.
            let next = smol::future::FutureExt::or(async { Some(body.frame().await) }, async {
                smol::Timer::after(UPLOAD_IDLE_TIMEOUT).await;
                None
            })
            .await;
            let frame = match next {
                None => {
                    return Err(ApiError::new(
                        408,
                        "upload_stalled",
                        format!(
                            "the upload sent nothing for {} s",
                            UPLOAD_IDLE_TIMEOUT.as_secs()
                        ),
                    ));
                }
                Some(None) => break,
                Some(Some(Ok(frame))) => frame,
                Some(Some(Err(_))) => return Err(unreadable_body()),
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            written += data.len() as u64;
            if written > limit {
                return Err(too_large());
            }
            sink.write_all(&data).await.map_err(|_| unreadable_body())?;
            if written - checked >= UPLOAD_SPACE_CHECK_BYTES {
                checked = written;
                let file = path.clone();
                let free = smol::unblock(move || crate::update::agent::spool_free(&file)).await;
                if free.is_ok_and(|free| free < crate::update::policy::SPACE_MARGIN_BYTES) {
                    return Err(ApiError::new(
                        507,
                        "no_space",
                        "the spool filesystem is nearly full: the upload stopped before it \
                         filled the data volume",
                    ));
                }
            }
        }
        sink.flush().await.map_err(|_| unreadable_body())?;
        Ok(written)
    }
    .await;
    drop(sink);
    if let Err(e) = copied {
        return close(e);
    }
    let answer = json(
        StatusCode::OK,
        call(&api, move |api| api.update_upload(&caller, &path)).await,
    );
    drop(guard);
    answer
}

/// Reads a JSON body, but only for a caller whose key holds `scope`: 401 and 403 come before
/// any judgement of the body. (The controller checks again when it gets the body; that costs
/// one key lookup.)
async fn authenticated_body(
    api: &State,
    req: &Request,
    caller: &Caller,
    scope: Scope,
) -> Result<Vec<u8>, ApiError> {
    let check = caller.clone();
    call(api, move |api| api.authenticate(&check, scope)).await?;
    json_body(req)
}

/// Every answer gets headers that keep it out of caches and sniffers.
fn finish(mut res: Response) -> Response {
    let headers = res.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res
}
