//! Serving a tide application on a listener the node owns: plain HTTP, or HTTPS with
//! async-native-tls (never below TLS 1.2; the acceptor is reloadable, so a new certificate
//! applies to the next connection without a restart), HTTP/1.1 by async-h1 (tide's own HTTP layer), on
//! smol's executor. `run(listener, app, tls, shutdown)` accepts until shutdown, one task per
//! connection, at most [`MAX_CONNECTIONS`] at a time, and returns once every connection has
//! ended: idle keep-alive connections close at shutdown, a request in progress gets
//! [`SHUTDOWN_GRACE`] to finish. So nothing the application holds (the store) outlives `run`.
//!
//! It moves bytes and enforces connection bounds; it never logs a request (paths and queries
//! may carry an address).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use smol::channel::Receiver;
use smol::future::FutureExt as _;
use smol::io::{AsyncBufRead, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use smol::lock::Semaphore;
use smol::{Async, Timer};

use crate::smtp::tls::ReloadableAcceptor;

/// Connections served at once; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 128;
/// A TLS handshake must finish within this time.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// One request, from its headers to the end of the response, must finish within this time
/// (async-h1 itself bounds waiting for the headers to 60 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection is closed after this long whatever it does (keep-alive clients reconnect), so
/// no client holds one of the [`MAX_CONNECTIONS`] slots for good.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Time to write the answer to a request async-h1 could not read.
const ERROR_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After that answer, how long and how much of the client's unread request is read and
/// dropped before closing: closing a socket with unread input sends a TCP reset, which can
/// destroy the answer before the client reads it ("lingering close", as HTTP servers do).
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 256 * 1024;
/// At shutdown, how long a request in progress may still take before its connection is
/// dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// At shutdown, a connection with no request in progress (head read, answer not yet written)
/// for this long is closed.
const SHUTDOWN_IDLE: Duration = Duration::from_millis(100);

/// Binds the listener (so the caller knows the real address before serving).
pub fn bind(addr: SocketAddr) -> std::io::Result<Async<TcpListener>> {
    Async::<TcpListener>::bind(addr)
}

/// Serves `app` on `listener` until `shutdown` closes, then waits for the connections to end
/// (bounded by [`SHUTDOWN_GRACE`]).
pub async fn run<S>(
    listener: Async<TcpListener>,
    app: tide::Server<S>,
    tls: Option<Arc<ReloadableAcceptor>>,
    shutdown: Receiver<()>,
) where
    S: Clone + Send + Sync + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = async {
            let slot = slots.acquire_arc().await;
            Some((slot, listener.accept().await))
        }
        .or(async {
            let _ = shutdown.recv().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some((slot, Ok((stream, peer)))) => {
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
            Some((_, Err(e))) => {
                // Typically EMFILE: back off briefly instead of spinning.
                log::warn!("http: accept failed: {e}");
                Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
    // Every connection task gives its slot back when it ends.
    for _ in 0..MAX_CONNECTIONS {
        std::mem::forget(slots.acquire().await);
    }
}

async fn connection<S>(
    stream: Async<TcpStream>,
    peer: SocketAddr,
    app: tide::Server<S>,
    tls: Option<futures_rustls::TlsAcceptor>,
    shutdown: Receiver<()>,
) where
    S: Clone + Send + Sync + 'static,
{
    let requests = Arc::new(AtomicUsize::new(0));
    let served = async {
        match tls {
            None => serve(stream, peer, app, requests.clone()).await,
            Some(acceptor) => {
                let handshake = async { Some(acceptor.accept(stream).await) }
                    .or(async {
                        Timer::after(TLS_HANDSHAKE_TIMEOUT).await;
                        None
                    })
                    .await;
                match handshake {
                    Some(Ok(stream)) => serve(stream, peer, app, requests.clone()).await,
                    Some(Err(e)) => log::debug!("http: TLS handshake with {peer} failed: {e}"),
                    None => log::debug!("http: TLS handshake with {peer} timed out"),
                }
            }
        }
    };
    served.or(closing(shutdown, &requests)).await;
}

/// Resolves once shutdown has begun and the connection has had no request in progress for
/// [`SHUTDOWN_IDLE`], or [`SHUTDOWN_GRACE`] after shutdown whatever it does.
async fn closing(shutdown: Receiver<()>, requests: &AtomicUsize) {
    let _ = shutdown.recv().await;
    let idle = async {
        let mut quiet = Duration::ZERO;
        while quiet < SHUTDOWN_IDLE {
            Timer::after(SHUTDOWN_IDLE / 4).await;
            quiet = if requests.load(Ordering::Acquire) == 0 {
                quiet + SHUTDOWN_IDLE / 4
            } else {
                Duration::ZERO
            };
        }
    };
    idle.or(async {
        Timer::after(SHUTDOWN_GRACE).await;
    })
    .await;
}

/// Counts a request in progress for as long as it lives.
struct InProgress(Arc<AtomicUsize>);

impl InProgress {
    fn new(requests: &Arc<AtomicUsize>) -> InProgress {
        requests.fetch_add(1, Ordering::AcqRel);
        InProgress(requests.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `res` with a body that keeps its request counted as in progress until the body has been
/// written out (or dropped), so shutdown never cuts an answer half way.
fn counted(mut res: tide::http::Response, in_progress: InProgress) -> tide::http::Response {
    let body = res.take_body();
    let (len, mime) = (body.len(), body.mime().clone());
    let mut counted = tide::http::Body::from_reader(
        CountedBody {
            body,
            _in_progress: in_progress,
        },
        len,
    );
    counted.set_mime(mime);
    res.set_body(counted);
    res
}

/// A response body that holds its request's [`InProgress`] until written out or dropped.
struct CountedBody {
    body: tide::http::Body,
    _in_progress: InProgress,
}

impl AsyncRead for CountedBody {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().body).poll_read(cx, buf)
    }
}

impl AsyncBufRead for CountedBody {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().body).poll_fill_buf(cx)
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        Pin::new(&mut self.get_mut().body).consume(amt)
    }
}

/// HTTP/1.1 on one connection (keep-alive) until the client closes or misbehaves.
async fn serve<S, IO>(io: IO, peer: SocketAddr, app: tide::Server<S>, requests: Arc<AtomicUsize>)
where
    S: Clone + Send + Sync + 'static,
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // async-h1 reads requests and writes responses through two handles of one stream.
    let io = async_dup::Arc::new(async_dup::Mutex::new(io));
    let result = async_h1::accept(io.clone(), |mut req| {
        let app = app.clone();
        req.set_peer_addr(Some(peer));
        let in_progress = InProgress::new(&requests);
        async move {
            let res = app
                .respond(req)
                .or(async {
                    Timer::after(REQUEST_TIMEOUT).await;
                    Ok(error_response(503, "timeout", "the request took too long"))
                })
                .await?;
            Ok(counted(res, in_progress))
        }
    })
    .or(async {
        Timer::after(CONNECTION_LIFETIME).await;
        Ok(())
    })
    .await;
    if let Err(e) = result {
        // async-h1 gives up on a request it cannot read (an unknown method, HTTP/1.0, a
        // malformed head) by returning here without answering; answer it, then close. Our
        // endpoint never fails, so no response of ours is half-written at this point.
        log::debug!("http: connection with {peer} ended: {e}");
        let mut res = error_response(400, "bad_request", "the request could not be read");
        res.insert_header("Connection", "close");
        let mut encoder = async_h1::server::Encoder::new(res, tide::http::Method::Get);
        let mut io = io;
        let _ = smol::io::copy(&mut encoder, &mut io)
            .or(async {
                Timer::after(ERROR_WRITE_TIMEOUT).await;
                Ok(0)
            })
            .await;
        linger(io).await;
    }
}

/// Half-closes `io` (our answer is complete) and reads what the client still sends until it
/// closes too, bounded by [`LINGER_TIMEOUT`] and [`LINGER_MAX_BYTES`].
async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO) {
    let drain = async {
        let _ = io.close().await;
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while let Ok(n @ 1..) = io.read(&mut buf).await {
            total += n;
            if total > LINGER_MAX_BYTES {
                break;
            }
        }
    };
    drain
        .or(async {
            Timer::after(LINGER_TIMEOUT).await;
        })
        .await;
}

/// A JSON error answer made here, outside the application (same shape as the API's errors).
fn error_response(status: u16, code: &str, message: &str) -> tide::http::Response {
    let mut res = tide::http::Response::new(status);
    res.set_body(serde_json::json!({"error": {"code": code, "message": message}}).to_string());
    res.set_content_type(tide::http::mime::JSON);
    res
}
