//! Serving an [`App`] on a listener the node owns: plain HTTP, or HTTPS with rustls (ring)
//! (TLS 1.3 and 1.2 through futures-rustls; the acceptor is reloadable, so a new certificate applies to the next
//! connection without a restart), HTTP/1.1 by hyper's server connection, on smol's executor.
//! `run(listener, app, tls, shutdown)` accepts until shutdown, one task per connection, at most
//! [`MAX_CONNECTIONS`] at a time and [`MAX_CONNECTIONS_PER_IP`] from one client address, with
//! [`RESERVED_LOCAL_CONNECTIONS`] more kept for the box itself (the boot's health check asks
//! `/healthz` over 127.0.0.1, and no remote client may starve it into a rollback, issue 16). A
//! connection past its limit is closed at once, before its TLS handshake. `run` returns once
//! every connection has ended: idle keep-alive connections close at shutdown, a request in
//! progress gets [`SHUTDOWN_GRACE`] to finish its answer. So nothing the application holds (the
//! store) outlives `run`.
//!
//! hyper runs on smol through smol-hyper: `FuturesIo` gives a futures-io stream (a TCP or TLS
//! stream) hyper's `rt::Read`/`rt::Write`, `SmolTimer` gives hyper async-io's timers (the
//! header read timeout). hyper's HTTP/1 server spawns nothing, so it needs no executor, and no
//! tokio runtime runs. We use the crate rather than implementing the two traits here: reading
//! into hyper's uninitialised buffer without a copy takes `unsafe`, which our crates forbid.
//!
//! A connection is served by [`serve`], generic over the stream, so the TLS acceptor can change
//! without touching it. An answer with `Connection: close` ends the connection after it is
//! written; the client may still be sending the request's body (an upload refused early), so
//! what it still sends is read and dropped for a while before the connection closes (a socket
//! closed with unread input sends a reset, which can destroy the answer before the client reads
//! it, and most clients read only after they have sent the whole body).
//!
//! It moves bytes and enforces connection bounds; it never logs a request (paths and queries
//! may carry an address).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{StatusCode, Version};
use smol::channel::Receiver;
use smol::future::FutureExt as _;
use smol::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use smol::{Async, Timer};
use smol_hyper::rt::{FuturesIo, SmolTimer};

use super::Response;
use crate::smtp::tls::ReloadableAcceptor;

/// Connections served at once; further clients are closed at once (the box's own get
/// [`RESERVED_LOCAL_CONNECTIONS`] more).
pub const MAX_CONNECTIONS: usize = 128;
/// Connections one client address may hold at once: a console tab or an API client needs a
/// few, so it takes at least eight addresses to fill [`MAX_CONNECTIONS`]. The box's own
/// address is not capped.
pub const MAX_CONNECTIONS_PER_IP: usize = 16;
/// Connections beyond [`MAX_CONNECTIONS`] only the box itself (a peer of exactly 127.0.0.1 or
/// ::1, which no remote client can claim) may open: the boot's health check and the console
/// banner's probes always get in, however many remote clients hold slots.
pub const RESERVED_LOCAL_CONNECTIONS: usize = 8;
/// A TLS handshake must finish within this time.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's head must arrive within this time, counted from the end of the previous answer
/// on a keep-alive connection (so it also closes idle keep-alive connections): short, so that
/// a client holding connections without asking anything gives them back soon.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest request head (request line and headers) served; a longer one gets the API's JSON
/// 400, which the contract documents for every operation that takes a query.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// The most hyper buffers while reading a head; past it hyper answers 431 itself (without a
/// body) and closes. Above [`MAX_HEAD_BYTES`] so that the heads a client plausibly sends get
/// the JSON 400.
const HEAD_BUFFER_BYTES: usize = 64 * 1024;
/// One request, from its head to its answer (the body read included), must be answered within
/// this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection is closed after this long whatever it does (keep-alive clients reconnect), so
/// no client holds one of the [`MAX_CONNECTIONS`] slots for good. A request in progress then
/// gets [`SHUTDOWN_GRACE`] to finish, as at shutdown.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// After an answer that closes the connection, what the client still sends (the rest of a
/// refused upload) is read and dropped until it closes, stays quiet for [`LINGER_QUIET`], or
/// [`LINGER_MAX`] has passed ("lingering close", as HTTP servers do): a client that writes its
/// whole body before it reads, as most do, then gets the answer instead of a reset. A refused
/// client gets as long to finish sending as an accepted one.
const LINGER_QUIET: Duration = Duration::from_secs(2);
const LINGER_MAX: Duration = REQUEST_TIMEOUT;
/// At shutdown, how long a request in progress may still take before its connection is
/// dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What the server hands each request to, with the client's address. Every request gets an
/// answer (errors are answers too); the body is the application's to read or leave.
pub trait App: Send + Sync + 'static {
    fn respond(
        &self,
        request: hyper::Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response> + Send;

    /// Whether `request` bounds its own time by its progress (a large upload over a slow link,
    /// cut only when it stalls): then neither [`REQUEST_TIMEOUT`] nor the connection's
    /// lifetime cuts it while it runs. Shutdown still does.
    fn paces_itself(&self, _request: &hyper::Request<Incoming>) -> bool {
        false
    }
}

/// Binds the listener (so the caller knows the real address before serving).
pub fn bind(addr: SocketAddr) -> std::io::Result<Async<TcpListener>> {
    Async::<TcpListener>::bind(addr)
}

/// Serves `app` on `listener` until `shutdown` closes, then waits for the connections to end
/// (bounded by [`SHUTDOWN_GRACE`]).
pub async fn run<A: App>(
    listener: Async<TcpListener>,
    app: Arc<A>,
    tls: Option<Arc<ReloadableAcceptor>>,
    shutdown: Receiver<()>,
) {
    let slots = Arc::new(Slots::default());
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                let _ = shutdown.recv().await;
                None
            })
            .await;
        match accepted {
            None => break,
            Some(Ok((stream, peer))) => {
                // Past its limit a connection is closed before anything is read or sent: no
                // handshake to pay for, and the slot stays free for the clients within theirs.
                let Some(slot) = slots.admit(peer.ip()) else {
                    log::debug!("http: connection from {peer} refused: connection limit");
                    drop(stream);
                    continue;
                };
                let app = app.clone();
                // The certificate current now: a replacement applies from the next connection.
                let tls = tls.as_ref().map(|t| t.current());
                let shutdown = shutdown.clone();
                smol::spawn(async move {
                    connection(stream, peer, app, tls, shutdown).await;
                    drop(slot);
                })
                .detach();
            }
            Some(Err(e)) => {
                // Typically EMFILE: back off briefly instead of spinning.
                log::warn!("http: accept failed: {e}");
                Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
    // Every connection task gives its slot back when it ends.
    while slots.open() > 0 {
        Timer::after(Duration::from_millis(20)).await;
    }
}

/// The connections open now, in all and per client address.
#[derive(Debug, Default)]
struct Slots {
    table: Mutex<SlotTable>,
}

#[derive(Debug, Default)]
struct SlotTable {
    open: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Slots {
    /// A slot for a connection from `ip`, or None past [`MAX_CONNECTIONS`] (plus the reserve
    /// for the box's own address) or [`MAX_CONNECTIONS_PER_IP`].
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let local = crate::hardening::is_the_box_itself(ip);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let limit = if local {
            MAX_CONNECTIONS + RESERVED_LOCAL_CONNECTIONS
        } else {
            MAX_CONNECTIONS
        };
        let from_ip = table.per_ip.get(&ip).copied().unwrap_or(0);
        if table.open >= limit || (!local && from_ip >= MAX_CONNECTIONS_PER_IP) {
            return None;
        }
        table.open += 1;
        table.per_ip.insert(ip, from_ip + 1);
        Some(Slot {
            slots: self.clone(),
            ip,
        })
    }

    fn open(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).open
    }
}

/// A held connection slot; given back on drop.
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.slots.table.lock().unwrap_or_else(|p| p.into_inner());
        table.open -= 1;
        if let Some(count) = table.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                table.per_ip.remove(&self.ip);
            }
        }
    }
}

async fn connection<A: App>(
    stream: Async<TcpStream>,
    peer: SocketAddr,
    app: Arc<A>,
    tls: Option<futures_rustls::TlsAcceptor>,
    shutdown: Receiver<()>,
) {
    // Shutdown ends a connection still in its TLS handshake; once `serve` runs, it handles
    // shutdown itself.
    let serving = AtomicBool::new(false);
    let served = async {
        match tls {
            None => serve(stream, peer, app, shutdown.clone(), &serving).await,
            Some(acceptor) => {
                let handshake = async { Some(acceptor.accept(stream).await) }
                    .or(async {
                        Timer::after(TLS_HANDSHAKE_TIMEOUT).await;
                        None
                    })
                    .await;
                match handshake {
                    Some(Ok(stream)) => serve(stream, peer, app, shutdown.clone(), &serving).await,
                    Some(Err(e)) => log::debug!("http: TLS handshake with {peer} failed: {e}"),
                    None => log::debug!("http: TLS handshake with {peer} timed out"),
                }
            }
        }
    };
    let cut_short = async {
        let _ = shutdown.recv().await;
        if serving.load(Ordering::Acquire) {
            smol::future::pending::<()>().await;
        }
    };
    served.or(cut_short).await;
}

/// HTTP/1.1 on one connection (keep-alive) until the client closes, the connection's time is
/// up, or shutdown; then the connection is closed (gently after an answer that closes it).
async fn serve<S, A>(
    io: S,
    peer: SocketAddr,
    app: Arc<A>,
    shutdown: Receiver<()>,
    serving: &AtomicBool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: App,
{
    serving.store(true, Ordering::Release);
    // Set when an answer said `Connection: close`: the request's body may be unread.
    let closes = Arc::new(AtomicBool::new(false));
    // Set while a request that paces itself (`App::paces_itself`) is answered.
    let pacing = Arc::new(AtomicBool::new(false));
    let service = {
        let (closes, pacing) = (closes.clone(), pacing.clone());
        service_fn(move |request: hyper::Request<Incoming>| {
            let (app, closes, pacing) = (app.clone(), closes.clone(), pacing.clone());
            // Boxed: hyper needs an `Unpin` future to hand the connection back at its end.
            let answering: Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>> =
                Box::pin(async move {
                    let paces = app.paces_itself(&request);
                    pacing.store(paces, Ordering::Release);
                    let response = if paces {
                        respond_unless_malformed(&*app, request, peer).await
                    } else {
                        answer(&*app, request, peer).await
                    };
                    pacing.store(false, Ordering::Release);
                    let close = response.headers().get(CONNECTION);
                    if close.is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close")) {
                        closes.store(true, Ordering::Release);
                    }
                    Ok(response)
                });
            answering
        })
    };
    let mut connection = http1::Builder::new()
        .timer(SmolTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(HEAD_BUFFER_BYTES)
        // A client that half-closes after its request still gets the answer.
        .half_close(true)
        .serve_connection(FuturesIo::new(io), service);

    let stop = async {
        let _ = shutdown.recv().await;
    }
    .or(async {
        Timer::after(CONNECTION_LIFETIME).await;
        // A request that paces itself ends by its own rules, not by the connection's age.
        while pacing.load(Ordering::Acquire) {
            Timer::after(Duration::from_secs(1)).await;
        }
    });
    let ended =
        async { Some(smol::future::poll_fn(|cx| connection.poll_without_shutdown(cx)).await) }
            .or(async {
                stop.await;
                None
            })
            .await;
    let result = match ended {
        Some(result) => result,
        None => {
            // Closes an idle connection now, one in the middle of a request once its answer
            // is written.
            Pin::new(&mut connection).graceful_shutdown();
            let finished = async {
                Some(smol::future::poll_fn(|cx| connection.poll_without_shutdown(cx)).await)
            }
            .or(async {
                Timer::after(SHUTDOWN_GRACE).await;
                None
            })
            .await;
            match finished {
                Some(result) => result,
                None => return,
            }
        }
    };
    // hyper answers a request it cannot parse itself (400, 414, 431) and ends the connection.
    let answered_error = match &result {
        Ok(()) => false,
        Err(e) => {
            log::debug!("http: connection with {peer} ended: {e}");
            e.is_parse() || e.is_parse_status() || e.is_parse_too_large()
        }
    };
    let io = connection.into_parts().io.into_inner();
    let linger = answered_error || closes.load(Ordering::Acquire);
    close(io, linger, &shutdown).await;
}

/// `app`'s answer to `request`, or the server's own when the request must not be served or
/// the answer takes longer than [`REQUEST_TIMEOUT`].
async fn answer<A: App>(app: &A, request: hyper::Request<Incoming>, peer: SocketAddr) -> Response {
    respond_unless_malformed(app, request, peer)
        .or(async {
            Timer::after(REQUEST_TIMEOUT).await;
            closing(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took too long",
            ))
        })
        .await
}

/// `app`'s answer to `request`, or the 400 of a request that must not be served; no deadline.
async fn respond_unless_malformed<A: App>(
    app: &A,
    request: hyper::Request<Incoming>,
    peer: SocketAddr,
) -> Response {
    if let Some(refusal) = malformed(&request) {
        return refusal;
    }
    app.respond(request, peer).await
}

/// A request hyper parsed but we do not serve: a head over [`MAX_HEAD_BYTES`], or not exactly
/// one `Host` (RFC 9112 §3.2: HTTP/1.1 requires it; no request may carry two). It gets 400 and
/// the connection closes.
fn malformed(request: &hyper::Request<Incoming>) -> Option<Response> {
    let hosts = request.headers().get_all(HOST).iter().count();
    let missing_host = request.version() == Version::HTTP_11 && hosts != 1;
    (head_bytes(request) > MAX_HEAD_BYTES || missing_host || hosts > 1).then(|| {
        closing(error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request could not be read",
        ))
    })
}

/// The size of `request`'s head as sent, near enough: request line and header lines.
fn head_bytes(request: &hyper::Request<Incoming>) -> usize {
    let uri = request.uri();
    let target = uri.scheme_str().map_or(0, |scheme| scheme.len() + 3)
        + uri
            .authority()
            .map_or(0, |authority| authority.as_str().len())
        + uri
            .path_and_query()
            .map_or(1, |target| target.as_str().len());
    let line = request.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + ": ".len() + value.len() + "\r\n".len())
        .sum();
    line + headers + "\r\n".len()
}

/// Closes `io` (for TLS: sends close_notify), with `linger` after reading and dropping what
/// the client still sends (see [`LINGER_MAX`]); shutdown ends lingering at once.
async fn close<IO: AsyncRead + AsyncWrite + Unpin>(
    mut io: IO,
    linger: bool,
    shutdown: &Receiver<()>,
) {
    if linger {
        let drain = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let read = io.read(&mut buf).or(async {
                    Timer::after(LINGER_QUIET).await;
                    Ok(0)
                });
                if !matches!(read.await, Ok(1..)) {
                    break;
                }
            }
        };
        drain
            .or(async {
                Timer::after(LINGER_MAX).await;
            })
            .or(async {
                let _ = shutdown.recv().await;
            })
            .await;
    }
    let _ = io
        .close()
        .or(async {
            Timer::after(LINGER_QUIET).await;
            Ok(())
        })
        .await;
}

/// `response` with `Connection: close`.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CONNECTION, hyper::header::HeaderValue::from_static("close"));
    response
}

/// A JSON error answer made here, outside the application (same shape as the API's errors).
fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
