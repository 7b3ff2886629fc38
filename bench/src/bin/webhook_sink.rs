//! `webhook-sink`: the HTTPS receiver the benchmarked node delivers to. It verifies nothing,
//! reads each request body to the end, waits the configured delay and answers `200`, over
//! HTTP/1.1 keep-alive connections on TLS (rustls on ring, a test certificate).
//!
//! It exists to measure mxnode, so it must cost as little as possible per request and never
//! become the bottleneck: no signature check, no JSON parsing, nothing kept but three counters
//! (`GET /stats`: requests, body bytes, and TLS connections accepted, which shows whether the
//! node reuses its keep-alive connections or pays a handshake per message). It never writes a body anywhere: bodies are read into memory and dropped.
//! HTTP is hyper's (HTTP/1.1 server connections, driven on smol through smol-hyper), TLS is
//! rustls' (ring) through futures-rustls: nothing hand-written.
//!
//! ```text
//! webhook-sink --cert server.pem --key server.key [--listen 127.0.0.1:0] [--delay-ms 20]
//! ```
//!
//! Prints `listening on https://ADDR` on stdout once it accepts connections.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use smol::Async;
use smol_hyper::rt::FuturesIo;

#[derive(Parser)]
#[command(about = "HTTPS webhook sink for benchmarks: answers 200 after a delay, checks nothing")]
struct Args {
    /// Address to listen on (loopback only: it trusts everyone).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// PEM certificate (chain) of the server.
    #[arg(long)]
    cert: PathBuf,
    /// PKCS#8 PEM private key of the server.
    #[arg(long)]
    key: PathBuf,
    /// Milliseconds to wait before answering each POST: a receiver's own processing time.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Executor threads; the default leaves the machine's other core to the node under test.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// What every request handler shares.
struct State {
    /// The receiver's simulated processing time per delivery.
    delay: Duration,
    /// POSTs answered so far, so the driver can check that every message reached the sink.
    requests: Arc<AtomicU64>,
    /// Body bytes read so far.
    bytes: Arc<AtomicU64>,
    /// TLS handshakes completed so far (the driver's own `/stats` connection among them).
    connections: Arc<AtomicU64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "--listen must be a loopback address"
    );
    let cert = std::fs::read(&args.cert).with_context(|| format!("{}", args.cert.display()))?;
    let key = std::fs::read(&args.key).with_context(|| format!("{}", args.key.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .context("certificate")?;
    let key = PrivateKeyDer::from_pem_slice(&key).context("key")?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS setup")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("certificate or key")?;
    let acceptor = futures_rustls::TlsAcceptor::from(Arc::new(config));

    let state = State {
        delay: Duration::from_millis(args.delay_ms),
        requests: Arc::new(AtomicU64::new(0)),
        bytes: Arc::new(AtomicU64::new(0)),
        connections: Arc::new(AtomicU64::new(0)),
    };
    let state = Arc::new(state);

    let listener = Async::<TcpListener>::bind(args.listen).context("bind")?;
    let addr = listener.get_ref().local_addr()?;

    let executor = Arc::new(smol::Executor::new());
    for _ in 1..args.threads.max(1) {
        let executor = executor.clone();
        std::thread::spawn(move || {
            smol::block_on(executor.run(std::future::pending::<()>()));
        });
    }
    let spawner = executor.clone();
    smol::block_on(executor.run(async move {
        println!("listening on https://{addr}");
        std::io::stdout().flush()?;
        loop {
            let (stream, _) = listener.accept().await?;
            // Replies are one small write; never let Nagle hold them back.
            let _ = stream.get_ref().set_nodelay(true);
            let acceptor = acceptor.clone();
            let state = state.clone();
            spawner
                .spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    state.connections.fetch_add(1, Ordering::Relaxed);
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(respond(&state, request).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(FuturesIo::new(tls), service)
                        .await;
                })
                .detach();
        }
    }))
}

/// `GET /stats`, or any `POST` (a delivery); 404 otherwise.
async fn respond(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/stats") => stats(state),
        (&Method::POST, _) => empty(receive(state, request.into_body()).await),
        _ => empty(StatusCode::NOT_FOUND),
    }
}

async fn receive(state: &State, body: Incoming) -> StatusCode {
    let Ok(body) = body.collect().await else {
        return StatusCode::BAD_REQUEST;
    };
    let len = body.to_bytes().len();
    if !state.delay.is_zero() {
        smol::Timer::after(state.delay).await;
    }
    state.requests.fetch_add(1, Ordering::Relaxed);
    state.bytes.fetch_add(len as u64, Ordering::Relaxed);
    StatusCode::OK
}

fn stats(state: &State) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "requests": state.requests.load(Ordering::Relaxed),
        "bytes": state.bytes.load(Ordering::Relaxed),
        "connections": state.connections.load(Ordering::Relaxed),
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = status;
    response
}
