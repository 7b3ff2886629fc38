//! The request as handlers see it ([`Request`]: method, path, query, headers, peer address,
//! path parameters, and the body already in memory) and a small router from method and path
//! segments to a handler ([`Router`]).
//!
//! Routing keeps the rules the API was built with: a pattern is `/`-separated segments, each
//! either literal or `:name`, which matches one non-empty segment; a path no pattern matches
//! is [`Routed::NotFound`], a path some pattern matches for other methods only is
//! [`Routed::MethodNotAllowed`], and `HEAD` falls back to a route's `GET` handler (hyper then
//! sends the head of that answer without its body). Parameters are the path's own text, not
//! percent-decoded.
//!
//! It knows nothing of the API: what a 404, a 405 or an oversized body look like is the
//! application's choice.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::{HeaderMap, Method};

use super::Response;

/// The values of a route's `:name` segments, by name.
pub type Params = Vec<(&'static str, String)>;

/// One request, its body read before the handler runs (except on a streamed route).
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// The path of the request target, as sent (routing compares it segment by segment).
    pub path: String,
    /// The query string without `?`, as sent.
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The client's address (the controller's per-client login lockout uses it).
    pub peer: SocketAddr,
    /// The values of the route's `:name` segments.
    pub params: Params,
    /// The whole body; empty on a streamed route.
    pub body: Bytes,
    /// On a streamed route, the body still to be read (the handler reads it itself).
    pub stream: Option<Incoming>,
    /// Whether the request came over HTTPS (the session cookie's name depends on it).
    pub https: bool,
}

impl Request {
    /// The request described by `head`, without its body yet.
    pub fn new(head: hyper::http::request::Parts, peer: SocketAddr) -> Request {
        Request {
            method: head.method,
            path: head.uri.path().to_string(),
            query: head.uri.query().map(str::to_string),
            headers: head.headers,
            peer,
            params: Vec::new(),
            body: Bytes::new(),
            stream: None,
            https: false,
        }
    }

    /// The last value of header `name` (a value that is not UTF-8 is read lossily).
    pub fn header(&self, name: &str) -> Option<String> {
        let value = self.headers.get_all(name).iter().next_back()?;
        Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
    }

    /// Every value of header `name`, in the order sent.
    pub fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = String> + 'a {
        self.headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    }

    /// The last value of query parameter `name`, decoded as a form (`+` is a space).
    pub fn query(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_deref().unwrap_or("").as_bytes())
            .filter(|(key, _)| key == name)
            .last()
            .map(|(_, value)| value.into_owned())
    }

    /// The value of the route's `:name` segment (empty if the route has none by that name).
    pub fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(key, _)| *key == name)
            .map_or("", |(_, value)| value)
    }
}

/// Why a body could not be read into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// It declared, or turned out to have, more bytes than the limit.
    TooLarge,
    /// The connection failed or the framing was broken.
    Unreadable,
}

/// Reads `body` to its end, at most `limit` bytes. A body that declares more (`Content-Length`)
/// is refused before any of it is read.
pub async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(BodyError::TooLarge);
    }
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Unreadable)?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(bytes))
}

/// A handler's answer, boxed so handlers of every route fit in one table.
pub type Answer = Pin<Box<dyn Future<Output = Response> + Send>>;

/// What a route runs for one method.
pub struct Endpoint<S> {
    handler: Box<dyn Fn(S, Request) -> Answer + Send + Sync>,
    /// The handler reads the body itself from [`Request::stream`] (an upload streamed to
    /// disk); every other handler gets it in memory in [`Request::body`].
    pub streamed: bool,
}

impl<S> Endpoint<S> {
    pub fn call(&self, state: S, request: Request) -> Answer {
        (self.handler)(state, request)
    }
}

/// The outcome of routing a method and a path.
pub enum Routed<'a, S> {
    Found(&'a Endpoint<S>, Params),
    MethodNotAllowed,
    NotFound,
}

enum Segment {
    Literal(&'static str),
    Param(&'static str),
}

struct Route<S> {
    segments: Vec<Segment>,
    endpoints: Vec<(Method, Endpoint<S>)>,
}

impl<S> Route<S> {
    /// The parameters, if `path` (split at `/`, without the leading one) matches.
    fn matches(&self, path: &[&str]) -> Option<Params> {
        if path.len() != self.segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (segment, part) in self.segments.iter().zip(path) {
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Param(name) if !part.is_empty() => params.push((*name, part.to_string())),
                _ => return None,
            }
        }
        Some(params)
    }

    fn endpoint(&self, method: &Method) -> Option<&Endpoint<S>> {
        self.endpoints
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, endpoint)| endpoint)
    }
}

/// Method and path to handler. `S` is the state every handler gets (cloned per request).
pub struct Router<S> {
    routes: Vec<Route<S>>,
}

impl<S> Default for Router<S> {
    fn default() -> Self {
        Router { routes: Vec::new() }
    }
}

impl<S: 'static> Router<S> {
    /// The route for `pattern` (`/api/v1/emails/:id`), to add handlers to.
    pub fn at(&mut self, pattern: &'static str) -> RouteBuilder<'_, S> {
        let segments: Vec<Segment> = split(pattern)
            .into_iter()
            .map(|segment| match segment.strip_prefix(':') {
                Some(name) => Segment::Param(name),
                None => Segment::Literal(segment),
            })
            .collect();
        self.routes.push(Route {
            segments,
            endpoints: Vec::new(),
        });
        let route = self.routes.len() - 1;
        RouteBuilder {
            route: &mut self.routes[route],
        }
    }

    /// The handler for `method` on `path`: one registered for that method, else (for `HEAD`)
    /// the `GET` one, else 405 if the path has handlers for other methods, else 404.
    pub fn route(&self, method: &Method, path: &str) -> Routed<'_, S> {
        let path = split(path);
        let matching: Vec<(&Route<S>, Params)> = self
            .routes
            .iter()
            .filter_map(|route| route.matches(&path).map(|params| (route, params)))
            .collect();
        let find = |method: &Method| {
            matching.iter().find_map(|(route, params)| {
                route
                    .endpoint(method)
                    .map(|endpoint| Routed::Found(endpoint, params.clone()))
            })
        };
        let found = find(method).or_else(|| {
            if method == Method::HEAD {
                find(&Method::GET)
            } else {
                None
            }
        });
        if let Some(found) = found {
            found
        } else if matching.is_empty() {
            Routed::NotFound
        } else {
            Routed::MethodNotAllowed
        }
    }
}

/// `path` split at `/`, without its leading `/` (`/` is one empty segment).
fn split(path: &str) -> Vec<&str> {
    path.strip_prefix('/').unwrap_or(path).split('/').collect()
}

/// Adds handlers to one route.
pub struct RouteBuilder<'a, S> {
    route: &'a mut Route<S>,
}

impl<S: 'static> RouteBuilder<'_, S> {
    fn add<H, F>(&mut self, method: Method, streamed: bool, handler: H) -> &mut Self
    where
        H: Fn(S, Request) -> F + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        let handler: Box<dyn Fn(S, Request) -> Answer + Send + Sync> =
            Box::new(move |state, request| Box::pin(handler(state, request)));
        self.route
            .endpoints
            .push((method, Endpoint { handler, streamed }));
        self
    }

    pub fn get<H, F>(&mut self, handler: H) -> &mut Self
    where
        H: Fn(S, Request) -> F + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        self.add(Method::GET, false, handler)
    }

    pub fn post<H, F>(&mut self, handler: H) -> &mut Self
    where
        H: Fn(S, Request) -> F + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        self.add(Method::POST, false, handler)
    }

    pub fn put<H, F>(&mut self, handler: H) -> &mut Self
    where
        H: Fn(S, Request) -> F + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        self.add(Method::PUT, false, handler)
    }

    pub fn delete<H, F>(&mut self, handler: H) -> &mut Self
    where
        H: Fn(S, Request) -> F + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        self.add(Method::DELETE, false, handler)
    }

    /// A `POST` whose handler reads the body itself, from [`Request::stream`].
    pub fn post_streamed<H, F>(&mut self, handler: H) -> &mut Self
    where
        H: Fn(S, Request) -> F + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        self.add(Method::POST, true, handler)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router<()> {
        let mut router = Router::default();
        let ok = |_: (), _: Request| async { Response::default() };
        router.at("/").get(ok);
        router.at("/api/v1/emails").get(ok);
        router.at("/api/v1/emails/:id").get(ok).delete(ok);
        router.at("/api/v1/erasure").post(ok);
        router.at("/api/v1/settings/s3/:name/probe").post(ok);
        router
    }

    /// What routing `method path` gives: `found p1=v1,…`, `405` or `404`.
    fn check(method: &str, path: &str, expect: &str) {
        let router = router();
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let actual = match router.route(&method, path) {
            Routed::Found(_, params) => {
                let params: Vec<String> = params
                    .iter()
                    .map(|(name, value)| format!("{name}={value}"))
                    .collect();
                format!("found {}", params.join(","))
            }
            Routed::MethodNotAllowed => "405".to_string(),
            Routed::NotFound => "404".to_string(),
        };
        assert_eq!(actual, expect, "{method} {path}");
    }

    #[test]
    fn routes_match_whole_segments_and_parameters_are_never_empty() {
        check("GET", "/", "found ");
        check("GET", "/api/v1/emails", "found ");
        check("GET", "/api/v1/emails/", "404");
        check("GET", "/api/v1/emails/rec_1", "found id=rec_1");
        check("GET", "/api/v1/emails/rec%201", "found id=rec%201");
        check("GET", "/api/v1/emails/rec_1/", "404");
        check("GET", "/api/v1/emailsx", "404");
        check("POST", "/api/v1/settings/s3/main/probe", "found name=main");
        check("POST", "/api/v1/settings/s3//probe", "404");
        check("GET", "/nothing-here", "404");
        check("GET", "*", "404");
    }

    #[test]
    fn a_known_path_with_another_method_is_405_and_head_falls_back_to_get() {
        check("PATCH", "/api/v1/emails", "405");
        check("POST", "/api/v1/emails/rec_1", "405");
        check("GET", "/api/v1/erasure", "405");
        check("HEAD", "/api/v1/erasure", "405");
        check("HEAD", "/api/v1/emails/rec_1", "found id=rec_1");
        check("OPTIONS", "/", "405");
        check("FROB", "/nothing-here", "404");
    }

    #[test]
    fn query_parameters_are_form_decoded_and_the_last_wins() {
        let head = hyper::Request::get("/x?status=a&recipient=b%40c.test+x&status=d")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        let request = Request::new(head, "127.0.0.1:1".parse().expect("addr"));
        assert_eq!(request.query("status").as_deref(), Some("d"));
        assert_eq!(request.query("recipient").as_deref(), Some("b@c.test x"));
        assert_eq!(request.query("cursor"), None);
    }
}
