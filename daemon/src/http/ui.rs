//! The web console's static files (setup, login and admin pages), embedded in the binary and
//! served at `/` and `/ui/…`. The pages are vanilla JavaScript over the REST API
//! (`ui/app.js`); they load nothing from anywhere else (air-gapped sites), and the
//! Content-Security-Policy forbids inline script and every other origin.
//!
//! It serves fixed bytes only: no templating, no request data in any answer.

use tide::{Request, Response, StatusCode};

use super::api::State;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// Same origin only, no inline script or style, no framing, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Adds the console's routes to `app`.
pub fn mount(app: &mut tide::Server<State>) {
    app.at("/")
        .get(|_: Request<State>| async { Ok(page(INDEX_HTML, "text/html; charset=utf-8")) });
    app.at("/ui/app.js")
        .get(|_: Request<State>| async { Ok(page(APP_JS, "text/javascript; charset=utf-8")) });
    app.at("/ui/style.css")
        .get(|_: Request<State>| async { Ok(page(STYLE_CSS, "text/css; charset=utf-8")) });
}

fn page(body: &'static str, content_type: &str) -> Response {
    let mut res = Response::new(StatusCode::Ok);
    res.set_body(body);
    res.insert_header("Content-Type", content_type);
    res.insert_header("Content-Security-Policy", CONTENT_SECURITY_POLICY);
    res.insert_header("X-Frame-Options", "DENY");
    res.insert_header("Referrer-Policy", "no-referrer");
    res
}
