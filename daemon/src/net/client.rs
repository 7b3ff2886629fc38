//! The HTTP client: one per webhook route, S3 connection or update channel, each with its own
//! trust store and its own keep-alive pool keyed by origin (scheme, host, port).
//!
//! An HTTP/1.1 connection serves one request at a time and goes back to the pool once its
//! answer has been read to the end; the most recently used idle one is taken first, one idle
//! longer than [`IDLE_TIMEOUT`] is closed. When ALPN picked `h2`, the origin's one HTTP/2
//! connection is shared by every request until it breaks. A connection that failed, timed out,
//! or whose answer was not read to the end is never reused. A request that a reused connection
//! turned down before sending anything (the peer had closed it) is sent again on a fresh one;
//! anything else is the caller's to retry.
//!
//! Never retries a request that may have reached the peer, never follows redirects, never
//! reads more of a body than the caller asks for.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_rustls::TlsConnector;
use http::header::{HOST, HeaderValue, USER_AGENT};
use http::{HeaderMap, Request, Uri, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::{http1, http2};

use super::NetError;
use super::connect::{self, Body, Connection, with_deadline};
use super::target::Origin;

/// An idle HTTP/1.1 connection older than this is closed instead of reused: servers drop idle
/// connections after their own timeout (S3 after about 20 s), and a request sent on one the
/// server is closing fails.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP client with its trust store and its connection pool. Cheap to share behind an
/// `Arc`; every method takes `&self`.
pub struct Client {
    shared: Arc<Shared>,
}

struct Shared {
    /// rustls with this client's trust store and ALPN offer.
    tls: TlsConnector,
    /// Idle HTTP/1.1 connections kept per origin; one returned to a full pool is closed.
    max_idle_per_origin: usize,
    /// Per-origin state, created on first use; a client talks to one or two origins.
    origins: Mutex<HashMap<Origin, Arc<OriginPool>>>,
}

/// The connections of one origin.
#[derive(Default)]
struct OriginPool {
    /// The client's `max_idle_per_origin`.
    max_idle: usize,
    /// Idle HTTP/1.1 connections, the most recently returned last.
    idle: Mutex<VecDeque<Idle>>,
    /// The shared HTTP/2 connection, once one was negotiated.
    http2: Mutex<Option<http2::SendRequest<Body>>>,
    /// The origin's resolved addresses and when they were resolved; the async lock makes
    /// concurrent connects wait for one lookup.
    resolved: smol::lock::Mutex<Option<(Vec<SocketAddr>, Instant)>>,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("max_idle_per_origin", &self.shared.max_idle_per_origin)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client trusting what `tls` trusts (see [`super::client_config`]), keeping up to
    /// `max_idle_per_origin` idle HTTP/1.1 connections per origin.
    pub fn new(tls: Arc<rustls::ClientConfig>, max_idle_per_origin: usize) -> Client {
        Client {
            shared: Arc::new(Shared {
                tls: TlsConnector::from(tls),
                max_idle_per_origin,
                origins: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sends `request` (an absolute `https://` URL, or `http://` to loopback) and waits for the
    /// answer's head until `deadline`; the returned [`Response`] reads its body until the same
    /// deadline. A `User-Agent` is added when the request has none.
    pub async fn send(
        &self,
        request: Request<Bytes>,
        deadline: Instant,
    ) -> Result<Response, NetError> {
        let (parts, body) = request.into_parts();
        let origin = Origin::of(&parts.uri)?;
        let pool = self.pool(&origin);
        let message = Message {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
        };

        // The shared HTTP/2 connection, while it works.
        if let Some(sender) = pool.http2_sender() {
            match send_http2(sender, &message, deadline).await? {
                Ok(response) => return Ok(Response::new(response, deadline, None)),
                Err(Unsent) => pool.forget_http2(),
            }
        }
        // An idle HTTP/1.1 connection, most recently used first.
        while let Some(mut sender) = pool.take_idle() {
            let ready = with_deadline(deadline, "waiting for the answer", async {
                sender.ready().await.map_err(|e| connect::hyper_error(&e))
            })
            .await;
            match ready {
                Ok(()) => {}
                Err(e @ NetError::Timeout(_)) => return Err(e),
                // Closed by the peer while idle: try the next one.
                Err(_) => continue,
            }
            match send_http1(&mut sender, &message, deadline).await? {
                Ok(response) => {
                    let back = ReturnToPool { pool, sender };
                    return Ok(Response::new(response, deadline, Some(back)));
                }
                Err(Unsent) => continue,
            }
        }
        // A new connection.
        let addresses = with_deadline(
            deadline,
            "resolving the host name",
            connect::resolve(&origin, &pool.resolved),
        )
        .await?;
        match connect::open(&origin, &addresses, &self.shared.tls, deadline).await? {
            Connection::Http2(sender) => {
                pool.set_http2(sender.clone());
                match send_http2(sender, &message, deadline).await? {
                    Ok(response) => Ok(Response::new(response, deadline, None)),
                    Err(Unsent) => Err(NetError::Closed),
                }
            }
            Connection::Http1(mut sender) => {
                match send_http1(&mut sender, &message, deadline).await? {
                    Ok(response) => {
                        let back = ReturnToPool { pool, sender };
                        Ok(Response::new(response, deadline, Some(back)))
                    }
                    Err(Unsent) => Err(NetError::Closed),
                }
            }
        }
    }

    /// A `GET` of `url` (see [`Client::send`]).
    pub async fn get(&self, url: &str, deadline: Instant) -> Result<Response, NetError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| NetError::Request("not a valid URL".into()))?;
        let request = Request::get(uri)
            .body(Bytes::new())
            .map_err(|e| NetError::Request(e.to_string()))?;
        self.send(request, deadline).await
    }

    /// The state of `origin`, created on first use.
    fn pool(&self, origin: &Origin) -> Arc<OriginPool> {
        let mut origins = lock(&self.shared.origins);
        origins
            .entry(origin.clone())
            .or_insert_with(|| {
                Arc::new(OriginPool {
                    max_idle: self.shared.max_idle_per_origin,
                    ..OriginPool::default()
                })
            })
            .clone()
    }
}

/// A request kept apart so it can be built again for another connection.
struct Message {
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Message {
    /// The request for an HTTP/1.1 connection: origin-form target, `Host` from the URL unless
    /// the caller set one (S3 signs it).
    fn http1(&self) -> Request<Body> {
        let target = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/"));
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = target;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = self.headers.clone();
        let headers = request.headers_mut();
        if !headers.contains_key(HOST)
            && let Some(authority) = self.uri.authority()
            && let Ok(value) = HeaderValue::from_str(authority.as_str())
        {
            headers.insert(HOST, value);
        }
        add_user_agent(headers);
        request
    }

    /// The request for an HTTP/2 connection: the absolute URL gives `:scheme` and
    /// `:authority`; a `Host` header would repeat the latter.
    fn http2(&self) -> Request<Body> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = Version::HTTP_2;
        *request.headers_mut() = self.headers.clone();
        request.headers_mut().remove(HOST);
        add_user_agent(request.headers_mut());
        request
    }
}

fn add_user_agent(headers: &mut HeaderMap) {
    if !headers.contains_key(USER_AGENT) {
        headers.insert(USER_AGENT, HeaderValue::from_static(super::USER_AGENT));
    }
}

/// A connection turned the request down without sending any of it (it had closed), so
/// another connection may take it.
struct Unsent;

/// What one connection made of a request: its answer's head, [`Unsent`], or a failure.
type Sent = Result<Result<hyper::Response<Incoming>, Unsent>, NetError>;

/// Sends on an HTTP/1.1 connection and waits for the answer's head until `deadline`.
async fn send_http1(
    sender: &mut http1::SendRequest<Body>,
    message: &Message,
    deadline: Instant,
) -> Sent {
    with_deadline(deadline, "waiting for the answer", async {
        match sender.try_send_request(message.http1()).await {
            Ok(response) => Ok(Ok(response)),
            Err(mut e) => match e.take_message() {
                Some(_) => Ok(Err(Unsent)),
                None => Err(connect::hyper_error(e.error())),
            },
        }
    })
    .await
}

/// Sends on the shared HTTP/2 connection and waits for the answer's head until `deadline`.
async fn send_http2(
    mut sender: http2::SendRequest<Body>,
    message: &Message,
    deadline: Instant,
) -> Sent {
    with_deadline(deadline, "waiting for the answer", async {
        if sender.ready().await.is_err() {
            return Ok(Err(Unsent));
        }
        match sender.try_send_request(message.http2()).await {
            Ok(response) => Ok(Ok(response)),
            Err(mut e) => match e.take_message() {
                Some(_) => Ok(Err(Unsent)),
                None => Err(connect::hyper_error(e.error())),
            },
        }
    })
    .await
}

impl OriginPool {
    /// The shared HTTP/2 connection, unless it closed.
    fn http2_sender(&self) -> Option<http2::SendRequest<Body>> {
        let mut http2 = lock(&self.http2);
        match http2.as_ref() {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                *http2 = None;
                None
            }
            None => None,
        }
    }

    fn set_http2(&self, sender: http2::SendRequest<Body>) {
        let mut http2 = lock(&self.http2);
        // A connection opened while another was being negotiated: keep the one that works.
        if http2.as_ref().is_none_or(|current| current.is_closed()) {
            *http2 = Some(sender);
        }
    }

    fn forget_http2(&self) {
        *lock(&self.http2) = None;
    }

    /// The most recently returned idle connection that is neither closed nor too old.
    fn take_idle(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = lock(&self.idle);
        // The oldest are at the front: drop those past the idle timeout.
        while idle
            .front()
            .is_some_and(|i| i.since.elapsed() >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        while let Some(Idle { sender, .. }) = idle.pop_back() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps a connection whose answer was read to the end, unless the pool is full.
    fn give_back(&self, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// An HTTP/1.1 connection to put back into its pool once its answer was read to the end.
struct ReturnToPool {
    pool: Arc<OriginPool>,
    sender: http1::SendRequest<Body>,
}

/// An answer: its head, and its body to read until the request's deadline.
pub struct Response {
    status: http::StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Incoming,
    deadline: Instant,
    /// Set for an HTTP/1.1 connection until the body is read to the end.
    pool: Option<ReturnToPool>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Response {
    fn new(
        response: hyper::Response<Incoming>,
        deadline: Instant,
        pool: Option<ReturnToPool>,
    ) -> Response {
        let (parts, body) = response.into_parts();
        let mut response = Response {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
            deadline,
            pool,
        };
        if response.body.is_end_stream() {
            response.finished();
        }
        response
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }

    /// `HTTP/1.1` or `HTTP/2`, as negotiated.
    pub fn version(&self) -> Version {
        self.version
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The next piece of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, NetError> {
        loop {
            let frame = with_deadline(self.deadline, "reading the answer", async {
                match self.body.frame().await {
                    None => Ok(None),
                    Some(Ok(frame)) => Ok(Some(frame)),
                    Some(Err(e)) => Err(connect::hyper_error(&e)),
                }
            })
            .await?;
            match frame {
                None => {
                    self.finished();
                    return Ok(None);
                }
                // Trailers carry nothing a caller reads.
                Some(frame) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        if self.body.is_end_stream() {
                            self.finished();
                        }
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body, refused with [`NetError::TooLarge`] past `limit` bytes.
    pub async fn read_body(mut self, limit: usize) -> Result<Vec<u8>, NetError> {
        let mut body = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            if body.len() + chunk.len() > limit {
                return Err(NetError::TooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// At most the first `limit` bytes of the body; the rest is left unread (and the
    /// connection is then not reused).
    pub async fn read_prefix(mut self, limit: usize) -> Result<Vec<u8>, NetError> {
        let mut body = Vec::new();
        while body.len() < limit {
            match self.chunk().await? {
                Some(chunk) => {
                    let take = chunk.len().min(limit - body.len());
                    body.extend_from_slice(&chunk[..take]);
                }
                None => break,
            }
        }
        Ok(body)
    }

    /// The body was read to the end: the connection can serve another request.
    fn finished(&mut self) {
        if let Some(ReturnToPool { pool, sender }) = self.pool.take() {
            pool.give_back(sender);
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// here is a single push, pop or swap).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
