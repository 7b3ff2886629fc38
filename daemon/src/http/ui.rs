//! The web console's static files (setup, login and admin pages), embedded in the binary and
//! served at `/` and `/ui/…`. The pages are vanilla JavaScript over the REST API
//! (`ui/app.js`); they load nothing from anywhere else (air-gapped sites), and the
//! Content-Security-Policy forbids inline script and every other origin.
//!
//! It serves fixed bytes only: no templating, no request data in any answer.

use http_body_util::Full;
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue};

use super::Response;
use super::api::State;
use super::router::{Request, Router};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// Same origin only, no inline script or style, no framing, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Adds the console's routes to `router`.
pub fn mount(router: &mut Router<State>) {
    router
        .at("/")
        .get(|_: State, _: Request| async { page(INDEX_HTML, "text/html; charset=utf-8") });
    router
        .at("/ui/app.js")
        .get(|_: State, _: Request| async { page(APP_JS, "text/javascript; charset=utf-8") });
    router
        .at("/ui/style.css")
        .get(|_: State, _: Request| async { page(STYLE_CSS, "text/css; charset=utf-8") });
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = StatusCode::OK;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        "Content-Security-Policy",
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert("X-Frame-Options", HeaderValue::from_static("DENY"));
    headers.insert("Referrer-Policy", HeaderValue::from_static("no-referrer"));
    res
}
