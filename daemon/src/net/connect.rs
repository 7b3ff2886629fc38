//! Opening one connection: name resolution (cached briefly per origin), TCP with `TCP_NODELAY`,
//! the rustls handshake, and hyper's HTTP/1.1 or HTTP/2 handshake as ALPN decided; the
//! connection's own task (hyper's `Connection` future) runs on smol's executor until the
//! connection closes.
//!
//! Owns the mapping of socket, TLS and hyper errors to [`NetError`]. Never decides whether a
//! connection is reused (the pool in `client.rs` does) and never waits past the deadlines it is
//! given.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use rustls_pki_types::ServerName;
use smol::Async;
use smol::io::{AsyncRead, AsyncWrite};
use smol_hyper::rt::FuturesIo;

use super::NetError;
use super::target::Origin;
use super::tls::ALPN_H2;

/// The request body type of every connection: one chunk of shared bytes.
pub(crate) type Body = Full<Bytes>;

/// A TCP connection (all addresses of the name tried in turn) waits at most this long, within
/// the request's own deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The TLS handshake waits at most this long, within the request's own deadline.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Resolved addresses are reused this long, so a burst of new connections to one host costs
/// one lookup (each lookup holds a blocking-pool thread) rather than one each.
pub(crate) const RESOLVED_ADDRESSES_TTL: Duration = Duration::from_secs(10);
/// Largest HTTP/1.1 read buffer: a response head must fit in it. Answers are a status line,
/// headers and short bodies; a larger body streams through the buffer.
const MAX_HTTP1_READ_BUFFER: usize = 64 * 1024;
/// Largest HTTP/2 response header list accepted.
const MAX_HTTP2_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// A connection ready for requests.
pub(crate) enum Connection {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

/// Runs `future` until `deadline`, then gives up with [`NetError::Timeout`]`(what)`.
pub(crate) async fn with_deadline<T>(
    deadline: Instant,
    what: &'static str,
    future: impl Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    smol::future::or(future, async {
        smol::Timer::at(deadline).await;
        Err(NetError::Timeout(what))
    })
    .await
}

/// The addresses of `origin`, from `cache` while fresh. The lock also makes concurrent
/// connects to one host wait for a single lookup.
pub(crate) async fn resolve(
    origin: &Origin,
    cache: &smol::lock::Mutex<Option<(Vec<SocketAddr>, Instant)>>,
) -> Result<Vec<SocketAddr>, NetError> {
    // An IP address needs no lookup (and no thread).
    if let Ok(ip) = origin.host.parse::<std::net::IpAddr>() {
        return allowed(vec![SocketAddr::new(ip, origin.port)]);
    }
    let mut cached = cache.lock().await;
    if let Some((addresses, at)) = cached.as_ref()
        && at.elapsed() < RESOLVED_ADDRESSES_TTL
    {
        return Ok(addresses.clone());
    }
    let addresses = smol::net::resolve(origin.host_port())
        .await
        .map_err(|_| NetError::HostNotFound)?;
    if addresses.is_empty() {
        return Err(NetError::HostNotFound);
    }
    let addresses = allowed(addresses)?;
    *cached = Some((addresses.clone(), Instant::now()));
    Ok(addresses)
}

/// The addresses the outbound policy lets the node connect to; an error naming the policy when
/// none is left. Checked after resolution, so a name cannot point past it (DNS rebinding).
fn allowed(addresses: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, NetError> {
    let addresses: Vec<SocketAddr> = addresses
        .into_iter()
        .filter(|a| outbound_allowed(a.ip()))
        .collect();
    if addresses.is_empty() {
        return Err(NetError::Connect(
            "address refused by the outbound policy (unspecified, link-local, multicast or \
             broadcast)"
                .into(),
        ));
    }
    Ok(addresses)
}

/// The outbound address policy (issue 16): a webhook, S3 endpoint, update channel or a
/// settings-driven probe never connects to an unspecified address (0.0.0.0 and :: reach the
/// box's own services), a link-local one (169.254.0.0/16 holds cloud metadata services,
/// fe80::/10), multicast or broadcast. Loopback and private networks stay allowed: receivers
/// and stores inside the customer's network, and `mxnode dev`'s own, live there.
pub fn outbound_allowed(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast())
        }
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_unicast_link_local() || v6.is_multicast()),
    }
}

/// Opens a connection to `origin` at one of `addresses`, TLS when the origin says so, and
/// performs the HTTP handshake ALPN chose. The TCP and TLS steps each end at their own timeout
/// or `deadline`, whichever comes first.
pub(crate) async fn open(
    origin: &Origin,
    addresses: &[SocketAddr],
    tls: &TlsConnector,
    deadline: Instant,
) -> Result<Connection, NetError> {
    let connect_deadline = deadline.min(Instant::now() + CONNECT_TIMEOUT);
    let tcp = with_deadline(connect_deadline, "connect", tcp_connect(addresses)).await?;
    let stream = if origin.tls {
        let name = ServerName::try_from(origin.host.clone())
            .map_err(|_| NetError::Request(format!("{} is not a valid host name", origin.host)))?;
        let tls_deadline = deadline.min(Instant::now() + TLS_HANDSHAKE_TIMEOUT);
        let handshake = async { tls.connect(name, tcp).await.map_err(|e| tls_error(&e)) };
        let stream = with_deadline(tls_deadline, "TLS handshake", handshake).await?;
        Stream::Tls(Box::new(stream))
    } else {
        Stream::Plain(tcp)
    };
    let h2 = matches!(&stream, Stream::Tls(s) if s.get_ref().1.alpn_protocol() == Some(ALPN_H2));
    let io = FuturesIo::new(stream);
    let label = origin.to_string();
    if h2 {
        let handshake = async {
            http2::Builder::new(Spawner)
                .max_header_list_size(MAX_HTTP2_HEADER_LIST_BYTES)
                .handshake(io)
                .await
                .map_err(|e| hyper_error(&e))
        };
        let (sender, connection) = with_deadline(deadline, "HTTP/2 handshake", handshake).await?;
        smol::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!(
                    "net: HTTP/2 connection to {label} ended: {}",
                    hyper_error(&e)
                );
            }
        })
        .detach();
        Ok(Connection::Http2(sender))
    } else {
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(MAX_HTTP1_READ_BUFFER)
            // Queue the body's bytes and write them vectored, never copying a body (a 25 MiB
            // attachment, shared with the parsed message) into hyper's own buffer, which is
            // what its default for a stream without vectored writes does.
            .writev(true)
            .handshake(io)
            .await
            .map_err(|e| hyper_error(&e))?;
        smol::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!(
                    "net: HTTP/1.1 connection to {label} ended: {}",
                    hyper_error(&e)
                );
            }
        })
        .detach();
        Ok(Connection::Http1(sender))
    }
}

/// Connects to the first address that accepts; the error of the last one otherwise.
async fn tcp_connect(addresses: &[SocketAddr]) -> Result<Async<TcpStream>, NetError> {
    let mut last = NetError::HostNotFound;
    for address in addresses {
        match Async::<TcpStream>::connect(*address).await {
            Ok(stream) => {
                // Requests are written as a head and a body; without this the body can wait
                // for the head's ACK (Nagle with delayed ACKs), tens of milliseconds a request.
                let _ = stream.get_ref().set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = NetError::Connect(io_reason(&e)),
        }
    }
    Err(last)
}

/// A failed TLS handshake in words: rustls's reason (e.g. `invalid peer certificate:
/// UnknownIssuer`), or what happened to the socket.
fn tls_error(e: &io::Error) -> NetError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls_error) => NetError::Tls(rustls_error.to_string()),
        None => match io_error(e) {
            NetError::Closed => NetError::Tls("the peer closed the connection".into()),
            other => other,
        },
    }
}

/// An I/O error by class.
pub(crate) fn io_error(e: &io::Error) -> NetError {
    if let Some(rustls_error) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return NetError::Tls(rustls_error.to_string());
    }
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => NetError::Reset,
        io::ErrorKind::UnexpectedEof => NetError::Closed,
        io::ErrorKind::TimedOut => NetError::Timeout("socket"),
        kind => NetError::Io(kind),
    }
}

/// Why a connect failed, in a few words (`connection refused`, `network unreachable`).
fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(_) => e.kind().to_string(),
        None => e.to_string(),
    }
}

/// A hyper error by class: the I/O error under it when there is one, else hyper's own words
/// (and those of its sources, such as an HTTP/2 reason), which never quote content.
pub(crate) fn hyper_error(e: &hyper::Error) -> NetError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io_error(io);
        }
        source = s.source();
    }
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        return NetError::Closed;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    NetError::Protocol(text)
}

/// hyper's executor for an HTTP/2 connection's background work: smol's.
#[derive(Debug, Clone, Copy)]
struct Spawner;

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        smol::spawn(future).detach();
    }
}

/// A connection's byte stream: plain TCP (loopback only) or rustls over TCP.
enum Stream {
    Plain(Async<TcpStream>),
    Tls(Box<TlsStream<Async<TcpStream>>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod policy_tests {
    use super::outbound_allowed;

    /// Issue 16 (outbound address policy): what a settings-driven target may and may not reach.
    #[test]
    fn outbound_policy_refuses_unspecified_link_local_multicast_and_broadcast() {
        for refused in [
            "0.0.0.0",
            "169.254.169.254",
            "169.254.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
        ] {
            assert!(
                !outbound_allowed(refused.parse().expect("an address")),
                "{refused} is refused"
            );
        }
        for allowed in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "192.168.1.10",
            "fd00::5",
            "203.0.113.9",
            "2001:db8::1",
        ] {
            assert!(
                outbound_allowed(allowed.parse().expect("an address")),
                "{allowed} is allowed"
            );
        }
    }
}
