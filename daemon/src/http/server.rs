//! Serving a tide application on a listener the node owns: plain HTTP, or HTTPS with
//! async-native-tls (never below TLS 1.2; the acceptor is reloadable, so a new certificate
//! applies to the next connection without a restart), HTTP/1.1 by async-h1 (tide's own HTTP layer), on
//! smol's executor. `run(listener, app, tls, shutdown)` accepts until shutdown, one task per
//! connection, at most [`MAX_CONNECTIONS`] at a time.
//!
//! It moves bytes and enforces connection bounds; it never logs a request (paths and queries
//! may carry an address).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use smol::channel::Receiver;
use smol::future::FutureExt as _;
use smol::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
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

/// Binds the listener (so the caller knows the real address before serving).
pub fn bind(addr: SocketAddr) -> std::io::Result<Async<TcpListener>> {
    Async::<TcpListener>::bind(addr)
}

/// Serves `app` on `listener` until `shutdown` closes. Connections in progress are left to
/// finish on their own (each is bounded by [`REQUEST_TIMEOUT`] per request).
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
            None => return,
            Some((slot, Ok((stream, peer)))) => {
                let app = app.clone();
                // The certificate current now: a replacement applies from the next connection.
                let tls = tls.as_ref().map(|t| t.current());
                smol::spawn(async move {
                    connection(stream, peer, app, tls).await;
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
}

async fn connection<S>(
    stream: Async<TcpStream>,
    peer: SocketAddr,
    app: tide::Server<S>,
    tls: Option<async_native_tls::TlsAcceptor>,
) where
    S: Clone + Send + Sync + 'static,
{
    match tls {
        None => serve(stream, peer, app).await,
        Some(acceptor) => {
            let handshake = async { Some(acceptor.accept(stream).await) }
                .or(async {
                    Timer::after(TLS_HANDSHAKE_TIMEOUT).await;
                    None
                })
                .await;
            match handshake {
                Some(Ok(stream)) => serve(stream, peer, app).await,
                Some(Err(e)) => log::debug!("http: TLS handshake with {peer} failed: {e}"),
                None => log::debug!("http: TLS handshake with {peer} timed out"),
            }
        }
    }
}

/// HTTP/1.1 on one connection (keep-alive) until the client closes or misbehaves.
async fn serve<S, IO>(io: IO, peer: SocketAddr, app: tide::Server<S>)
where
    S: Clone + Send + Sync + 'static,
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // async-h1 reads requests and writes responses through two handles of one stream.
    let io = async_dup::Arc::new(async_dup::Mutex::new(io));
    let result = async_h1::accept(io.clone(), |mut req| {
        let app = app.clone();
        req.set_peer_addr(Some(peer));
        async move {
            app.respond(req)
                .or(async {
                    Timer::after(REQUEST_TIMEOUT).await;
                    Ok(error_response(503, "timeout", "the request took too long"))
                })
                .await
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
