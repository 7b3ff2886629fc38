//! The SMTP I/O layer: sockets, STARTTLS, timers and connection limits around the pure
//! [`Session`](super::session::Session).
//!
//! `run(listeners, server, shutdown)` accepts connections until shutdown; one task per
//! connection. Everything protocol-related is decided by the session core; this module only
//! moves bytes, enforces the connection limits (total and per client IP, `421` past them) and
//! hands transactions to delivery. It never logs what it moves.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use smol::channel::Receiver;
use smol::future::FutureExt as _;
use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};
use smol::{Async, Timer};

use super::budget::InFlightBudget;
use super::session::{Action, Reply, Session, SessionConfig};
use super::tls::ReloadableAcceptor;
use crate::deliver::{self, DeliveryReport, PeerInfo, Router};
use crate::store::Store;

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Sessions beyond `smtp.max_sessions` only the box itself (a client of exactly 127.0.0.1 or
/// ::1, which no remote sender can claim) may open: the boot's health check must get its `220`
/// however many remote senders hold sessions, or they could force an update's rollback
/// (issue 16).
pub const RESERVED_LOCAL_SESSIONS: usize = 4;
/// A STARTTLS handshake must finish within this time.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a connection needs, shared by all connections.
pub struct Server {
    pub session_config: Arc<SessionConfig>,
    /// The routing table; replaced as a whole when settings change. Each session takes the
    /// table current at its start and keeps it, so a change applies from the next session on.
    pub router: RwLock<Arc<Router>>,
    pub budget: Arc<InFlightBudget>,
    /// STARTTLS, when a certificate is configured; reloadable while the node runs (SIGHUP).
    pub tls: Option<std::sync::Arc<ReloadableAcceptor>>,
    pub max_sessions: usize,
    pub max_sessions_per_ip: usize,
    /// Message bytes the sessions of one client address may hold together
    /// (`smtp.max_in_flight_per_ip`), within `budget`.
    pub max_in_flight_per_ip: usize,
    /// Where delivery records go (DESIGN §6); `None` runs without a metadata store.
    pub store: Option<Arc<dyn Store>>,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Sender authentication (DESIGN §11): SPF from `MAIL FROM`, the rest after the data.
    pub auth: Arc<crate::auth::Authenticator>,
    /// `retention.store_subject`, changeable at run time.
    pub store_subject: AtomicBool,
    /// Sessions open now, across all listeners.
    pub active: AtomicUsize,
    /// Sessions open now per client address, and the budget share they hold together, to
    /// keep one client from taking every slot or every byte.
    pub per_ip: Mutex<HashMap<IpAddr, ClientShare>>,
}

/// What the open sessions of one client address hold together.
#[derive(Debug)]
pub struct ClientShare {
    /// Sessions open now.
    sessions: usize,
    /// Their message bytes, bounded by `smtp.max_in_flight_per_ip`.
    budget: Arc<InFlightBudget>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// The routing table new sessions use.
    pub fn current_router(&self) -> Arc<Router> {
        self.router
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the routing table for sessions that start from now on.
    pub fn replace_router(&self, router: Arc<Router>) {
        *self.router.write().unwrap_or_else(|p| p.into_inner()) = router;
    }

    /// Records a delivery's metadata before the sender gets its reply, so that every
    /// acknowledged message has its record even if the node is killed right after. A store
    /// failure never changes the reply: it is logged loudly and delivery stands.
    async fn record(&self, report: &DeliveryReport, smtp_code: u16) {
        let records = report.records(smtp_code, self.store_subject.load(Ordering::Relaxed));
        if let Some(results) = &report.auth {
            self.metrics.auth_results(results);
        }
        for (record, route) in records.iter().zip(&report.routes) {
            self.metrics.message(record.status.as_str());
            if let Some(latency) = route.webhook_latency {
                self.metrics.webhook_latency(latency);
            }
            if let Some(latency) = route.s3_latency {
                self.metrics.s3_latency(latency);
            }
        }
        let Some(store) = self.store.clone() else {
            return;
        };
        smol::unblock(move || {
            for record in &records {
                if let Err(e) = store.put_record(record) {
                    log::error!(
                        "metadata store: cannot record delivery {} (record {}): {e}",
                        record.delivery_id,
                        record.id
                    );
                }
            }
        })
        .await;
    }

    /// Number of sessions open right now.
    pub fn active_sessions(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Takes a session slot for `ip`, or says which limit is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<SessionSlot, &'static str> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let limit = if crate::hardening::is_the_box_itself(ip) {
            self.max_sessions.saturating_add(RESERVED_LOCAL_SESSIONS)
        } else {
            self.max_sessions
        };
        if self.active.load(Ordering::SeqCst) >= limit {
            return Err("4.7.0 Too many connections, try again later");
        }
        let share = per_ip.entry(ip).or_insert_with(|| ClientShare {
            sessions: 0,
            budget: InFlightBudget::new(self.max_in_flight_per_ip),
        });
        if share.sessions >= self.max_sessions_per_ip {
            return Err("4.7.0 Too many connections from your address, try again later");
        }
        share.sessions += 1;
        let client_budget = share.budget.clone();
        self.active.fetch_add(1, Ordering::SeqCst);
        self.metrics.session_opened();
        Ok(SessionSlot {
            server: self.clone(),
            ip,
            client_budget,
        })
    }
}

/// A held session slot; released on drop.
struct SessionSlot {
    server: Arc<Server>,
    ip: IpAddr,
    /// The budget share of the slot's client address.
    client_budget: Arc<InFlightBudget>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut per_ip = self.server.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(share) = per_ip.get_mut(&self.ip) {
            share.sessions -= 1;
            if share.sessions == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.server.active.fetch_sub(1, Ordering::SeqCst);
        self.server.metrics.session_closed();
    }
}

/// Binds the listeners (so the caller knows the real addresses before serving).
pub fn bind(addrs: &[SocketAddr]) -> std::io::Result<Vec<Async<TcpListener>>> {
    addrs
        .iter()
        .map(|addr| Async::<TcpListener>::bind(*addr))
        .collect()
}

/// Accepts connections on every listener until `shutdown` closes, then returns. Connections in
/// progress keep running; see [`Server::active_sessions`].
pub async fn run(listeners: Vec<Async<TcpListener>>, server: Arc<Server>, shutdown: Receiver<()>) {
    let tasks: Vec<_> = listeners
        .into_iter()
        .map(|listener| smol::spawn(accept_loop(listener, server.clone(), shutdown.clone())))
        .collect();
    for task in tasks {
        task.await;
    }
}

async fn accept_loop(listener: Async<TcpListener>, server: Arc<Server>, shutdown: Receiver<()>) {
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                let _ = shutdown.recv().await;
                None
            })
            .await;
        match accepted {
            None => return,
            Some(Ok((stream, peer))) => {
                let server = server.clone();
                let shutdown = shutdown.clone();
                smol::spawn(async move {
                    handle_connection(stream, peer, server, shutdown).await;
                })
                .detach();
            }
            Some(Err(e)) => {
                // Typically EMFILE: back off briefly instead of spinning.
                log::warn!("smtp: accept failed: {e}");
                Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle_connection(
    mut stream: Async<TcpStream>,
    peer: SocketAddr,
    server: Arc<Server>,
    shutdown: Receiver<()>,
) {
    let slot = match server.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(text) => {
            let reply = Reply::new(421, text).to_bytes();
            let _ = stream
                .write_all(&reply)
                .or(async {
                    Timer::after(Duration::from_secs(5)).await;
                    Ok(())
                })
                .await;
            return;
        }
    };
    let router = server.current_router();
    let mut session = Session::new(
        server.session_config.clone(),
        router.clone(),
        server.budget.clone(),
        Instant::now(),
    )
    .with_client_budget(slot.client_budget.clone());
    let mut info = PeerInfo {
        remote_ip: peer.ip().to_string(),
        tls: None,
        router,
    };
    let greeting = session.greeting();
    match drive(
        &mut stream,
        &mut session,
        greeting,
        &server,
        &info,
        &shutdown,
    )
    .await
    {
        Ok(Ending::StartTls) => {}
        Ok(Ending::Closed) | Err(_) => return,
    }
    let Some(tls) = &server.tls else {
        return;
    };
    // The certificate current now: a reload during this handshake applies from the next one.
    let acceptor = tls.current();
    let handshake = async { acceptor.accept(stream).await.map_err(|e| e.to_string()) }
        .or(async {
            Timer::after(TLS_HANDSHAKE_TIMEOUT).await;
            Err("handshake timed out".to_string())
        })
        .await;
    let mut tls_stream = match handshake {
        Ok(s) => s,
        Err(e) => {
            log::info!("smtp: TLS handshake with a client failed: {e}");
            return;
        }
    };
    info.tls = super::tls::negotiated(tls_stream.get_ref().1);
    let actions = session.tls_started(Instant::now());
    let _ = drive(
        &mut tls_stream,
        &mut session,
        actions,
        &server,
        &info,
        &shutdown,
    )
    .await;
}

/// Why [`drive`] returned.
enum Ending {
    Closed,
    StartTls,
}

/// Runs the session over one stream until it closes or asks for TLS.
async fn drive<S>(
    stream: &mut S,
    session: &mut Session,
    initial: Vec<Action>,
    server: &Server,
    peer: &PeerInfo,
    shutdown: &Receiver<()>,
) -> std::io::Result<Ending>
where
    S: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin,
{
    let mut pending = std::collections::VecDeque::from(initial);
    let mut out = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut shutdown_seen = false;
    // The SPF check of the open transaction, started when its MAIL FROM is accepted.
    let mut spf = crate::auth::SpfTracker::default();
    let client: Option<std::net::IpAddr> = peer.remote_ip.parse().ok();
    loop {
        // Carry out every action the session produced.
        while let Some(action) = pending.pop_front() {
            match action {
                Action::Reply(reply) => out.extend_from_slice(&reply.to_bytes()),
                Action::Deliver(tx) => {
                    // Replies for pipelined commands go out before the (long) delivery.
                    write_out(stream, &mut out, server).await?;
                    // Consumes the transaction: its bytes and in-flight reservation are
                    // released when delivery is over.
                    let auth = client.map(|client| {
                        let check = spf.take_for(&server.auth, client, &tx.helo, &tx.mail_from);
                        (server.auth.as_ref(), check)
                    });
                    let report = deliver::deliver(&peer.router, tx, peer, auth).await;
                    let reply = report.outcome.reply();
                    server.record(&report, reply.code).await;
                    pending.extend(session.delivery_done(reply, Instant::now()));
                }
                Action::StartTls => {
                    write_out(stream, &mut out, server).await?;
                    return Ok(Ending::StartTls);
                }
                Action::Close => {
                    write_out(stream, &mut out, server).await?;
                    return Ok(Ending::Closed);
                }
            }
        }
        write_out(stream, &mut out, server).await?;
        if session.is_closed() {
            return Ok(Ending::Closed);
        }

        // Wait for input, the session's deadline or shutdown.
        let deadline = session.deadline();
        let event = async { Event::Read(stream.read(&mut buf).await) }
            .or(async {
                match deadline {
                    Some(at) => {
                        Timer::at(at).await;
                    }
                    None => std::future::pending::<()>().await,
                }
                Event::Deadline
            })
            .or(async {
                if shutdown_seen {
                    std::future::pending::<()>().await;
                }
                let _ = shutdown.recv().await;
                Event::Shutdown
            })
            .await;
        match event {
            Event::Read(Ok(0)) => return Ok(Ending::Closed),
            Event::Read(Ok(n)) => {
                pending.extend(session.feed(&buf[..n], Instant::now()));
                spf.observe(&server.auth, client, session.sender());
                spf.observe_header(&server.auth, session.header_section());
            }
            Event::Read(Err(e)) => return Err(e),
            Event::Deadline => pending.extend(session.timed_out(Instant::now())),
            Event::Shutdown => {
                shutdown_seen = true;
                pending.extend(session.shutdown());
            }
        }
    }
}

enum Event {
    Read(std::io::Result<usize>),
    Deadline,
    Shutdown,
}

/// Writes and flushes buffered replies, bounded by the command timeout so a client that stops
/// reading cannot hold the session forever.
async fn write_out<S>(stream: &mut S, out: &mut Vec<u8>, server: &Server) -> std::io::Result<()>
where
    S: smol::io::AsyncWrite + Unpin,
{
    if out.is_empty() {
        return Ok(());
    }
    let timeout = server.session_config.command_timeout;
    async {
        stream.write_all(out).await?;
        stream.flush().await
    }
    .or(async {
        Timer::after(timeout).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client does not read replies",
        ))
    })
    .await?;
    out.clear();
    Ok(())
}
