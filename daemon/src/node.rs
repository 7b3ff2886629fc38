//! Running a node: hardening, listeners, signal handling and graceful shutdown around the SMTP
//! server. `serve` and `dev` both end up in [`run`].

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_signal::{Signal, Signals};
use smol::stream::StreamExt as _;

use crate::config::Config;
use crate::deliver::Router;
use crate::smtp::budget::InFlightBudget;
use crate::smtp::server::{self, Server};
use crate::smtp::session::SessionConfig;

/// After SIGTERM, how long sessions in flight may take beyond the longest webhook budget
/// before the node exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data_dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("route setup failed: {0}")]
    Route(#[from] crate::webhook::WebhookError),
    #[error("smtp.tls_cert/smtp.tls_key: {0}")]
    Tls(String),
    #[error("cannot listen on smtp.listen: {0}")]
    Listen(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the node until SIGTERM or SIGINT, then shuts down gracefully: stop accepting, let
/// transactions in flight finish (bounded), exit.
pub async fn run(config: Config) -> Result<(), StartError> {
    let hardening = crate::hardening::lock_down();
    for warning in &hardening.warnings {
        log::warn!("hardening: {warning}");
    }
    std::fs::create_dir_all(&config.node.data_dir).map_err(|source| StartError::DataDir {
        path: config.node.data_dir.display().to_string(),
        source,
    })?;
    let router = Arc::new(Router::new(&config)?);
    if config.routes.is_empty() {
        log::warn!("no [[route]] is configured: every recipient will be refused with 550 5.1.1");
    }
    let tls = match &config.smtp.tls {
        Some(files) => Some(crate::smtp::tls::acceptor(files).map_err(StartError::Tls)?),
        None => None,
    };
    let session_config = Arc::new(SessionConfig {
        hostname: config.node.hostname.clone(),
        max_message_size: config.smtp.max_message_size,
        max_recipients: config.smtp.max_recipients,
        starttls_available: tls.is_some(),
        command_timeout: config.smtp.command_timeout,
        data_timeout: config.smtp.data_timeout,
    });
    let server = Arc::new(Server {
        session_config,
        router,
        budget: InFlightBudget::new(config.smtp.max_in_flight),
        tls,
        max_sessions: config.smtp.max_sessions,
        max_sessions_per_ip: config.smtp.max_sessions_per_ip,
        active: AtomicUsize::new(0),
        per_ip: Mutex::new(Default::default()),
    });
    let mut signals = Signals::new([Signal::Term, Signal::Int]).map_err(StartError::Signals)?;
    let listeners = server::bind(&config.smtp.listen).map_err(StartError::Listen)?;
    for listener in &listeners {
        if let Ok(addr) = listener.get_ref().local_addr() {
            log::info!(
                "listening on smtp://{addr} (STARTTLS {})",
                if server.tls.is_some() { "on" } else { "off" }
            );
        }
    }
    crate::notify::notify("READY=1");
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let accepting = smol::spawn(server::run(listeners, server.clone(), stopped));

    let signal = signals.next().await;
    log::info!("received {signal:?}: no new sessions; finishing transactions in flight");
    crate::notify::notify("STOPPING=1");
    drop(stop);
    accepting.await;

    let longest_budget = config
        .routes
        .iter()
        .map(|r| r.webhook_budget)
        .max()
        .unwrap_or_default();
    let give_up = Instant::now() + longest_budget + SHUTDOWN_GRACE;
    while server.active_sessions() > 0 && Instant::now() < give_up {
        smol::Timer::after(Duration::from_millis(50)).await;
    }
    let left = server.active_sessions();
    if left > 0 {
        log::warn!("shutting down with {left} session(s) still open");
    } else {
        log::info!("all sessions finished; exiting");
    }
    Ok(())
}
