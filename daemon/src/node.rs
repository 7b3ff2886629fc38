//! Running a node: hardening, listeners, signal handling and graceful shutdown around the SMTP
//! server. `serve` and `dev` both end up in [`run`].

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_signal::{Signal, Signals};
use smol::stream::StreamExt as _;

use crate::api::SettingsBackend;
use crate::config::{Config, ConfigError, RawConfig};
use crate::deliver::Router;
use crate::metrics::Metrics;
use crate::settings::{LiveSettings, SETTINGS_KEY, SettingsDocument, masked_document};
use crate::smtp::budget::InFlightBudget;
use crate::smtp::server::{self, Server};
use crate::smtp::session::SessionConfig;
use crate::store::rocks::RocksStore;
use crate::store::{AuditEvent, Retention, Store, new_id, unix_ms};

/// After SIGTERM, how long sessions in flight may take beyond the longest webhook budget
/// before the node exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// At exit, how long the store's last users (a blocking call still running) are waited for.
const STORE_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data_dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("route setup failed: {0}")]
    Route(#[from] crate::deliver::RouterError),
    #[error("smtp.tls_cert/smtp.tls_key: {0}")]
    Tls(String),
    #[error("cannot listen on smtp.listen: {0}")]
    Listen(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("node.master_key is required: the metadata store is encrypted with it")]
    MasterKeyMissing,
    #[error("metadata store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("http.tls_cert/http.tls_key: {0}")]
    HttpTls(String),
    #[error("cannot listen on http.listen: {0}")]
    HttpListen(std::io::Error),
    #[error("{0}")]
    Auth(crate::auth::AuthSetupError),
}

/// How often the retention sweeper runs: records live in hourly buckets, so a few minutes
/// past their end is the longest a record outlives its retention.
const SWEEP_INTERVAL: Duration = Duration::from_secs(300);
/// How often gauges that are not updated on events (in-flight bytes) are sampled.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// What senders are told while the persisted settings cannot be loaded (no detail: the key
/// and the reason are in the log, for the operator).
const SETTINGS_UNAVAILABLE: &str =
    "Mail deferred: this node's settings failed to load; try again later";

/// Merges the settings persisted through the API over the file's.
///
/// When they exist but cannot be used (the store cannot be read, the document is unreadable,
/// or it no longer validates, e.g. a `file:` secret that is gone), the node must not fall back
/// to the file's settings: on the appliance the file has no routes, so every recipient would
/// get `550` and mail would bounce. The third value is then the problem, and the node defers
/// all mail with `451 4.3.0` until the settings are fixed (issue 16). The problem names the
/// keys, never a value.
fn with_persisted_settings(
    store: &Arc<dyn Store>,
    raw: RawConfig,
    config: Config,
) -> (RawConfig, Config, Option<String>) {
    let persisted = match store.get_setting(SETTINGS_KEY) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return (raw, config, None),
        Err(e) => return (raw, config, Some(format!("cannot be read: {e}"))),
    };
    let merged = match crate::settings::apply_persisted(&raw, &persisted) {
        Ok(merged) => merged,
        Err(e) => return (raw, config, Some(e)),
    };
    match Config::from_raw(merged.clone()) {
        Ok(merged_config) => {
            log::info!("settings saved through the API override the config file's");
            (merged, merged_config, None)
        }
        Err(errors) => {
            let keys: Vec<String> = crate::settings::document_errors(errors)
                .into_iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect();
            (
                raw,
                config,
                Some(format!("do not validate: {}", keys.join("; "))),
            )
        }
    }
}

/// The live settings of a running node (`GET/PUT /api/v1/settings`): validated like the file,
/// persisted encrypted in the store, and applied without a restart — the routing table for new
/// SMTP sessions, subject storage and retention at once.
struct NodeSettings {
    live: LiveSettings,
    store: Arc<dyn Store>,
    server: Arc<Server>,
    retention: Arc<RwLock<Retention>>,
}

impl SettingsBackend for NodeSettings {
    fn current(&self) -> serde_json::Value {
        masked_document(&self.live.effective())
    }

    fn apply(&self, document: serde_json::Value) -> Result<serde_json::Value, Vec<ConfigError>> {
        let (merged, config, _) = self.live.prepare(document)?;
        let router = Router::new(&config).map_err(|e| {
            vec![ConfigError {
                key: "routes".into(),
                message: e.to_string(),
            }]
        })?;
        // Persist every run-time section, so the store alone says what overrides the file.
        let persisted = SettingsDocument {
            routes: Some(merged.route.clone()),
            s3: Some(merged.s3.clone()),
            retention: Some(merged.retention.clone()),
        };
        let bytes = serde_json::to_vec(&persisted).map_err(|e| {
            vec![ConfigError {
                key: String::new(),
                message: format!("cannot encode settings: {e}"),
            }]
        })?;
        self.store.put_setting(SETTINGS_KEY, &bytes).map_err(|e| {
            vec![ConfigError {
                key: String::new(),
                message: format!("cannot save settings: {e}"),
            }]
        })?;
        self.server.replace_router(Arc::new(router));
        // Settings that load again end the deferral of a start whose settings did not.
        self.server.metrics.set_settings_load_failed(false);
        self.server.store_subject.store(
            config.retention.store_subject,
            std::sync::atomic::Ordering::Relaxed,
        );
        *self.retention.write().unwrap_or_else(|p| p.into_inner()) = Retention {
            metadata: config.retention.metadata,
            audit: config.retention.audit,
        };
        self.live.commit(merged);
        log::info!(
            "settings applied: {} route(s), {} S3 connection(s); new SMTP sessions use them",
            config.routes.len(),
            config.s3.len()
        );
        Ok(self.current())
    }

    fn probe_s3(&self, name: &str) -> Option<crate::api::settings::S3Probe> {
        self.probe(name)
    }

    fn test_delivery(&self, index: usize) -> Option<crate::api::settings::TestDelivery> {
        use crate::api::settings::TestDelivery;
        use crate::webhook::{WebhookClient, WebhookOutcome};
        let config = Config::from_raw(self.live.effective()).ok()?;
        let route = config.routes.get(index)?;
        let client = match WebhookClient::new(route) {
            Ok(client) => client,
            Err(e) => {
                return Some(TestDelivery {
                    outcome: "failed",
                    status: None,
                    detail: e.to_string(),
                });
            }
        };
        let now = std::time::SystemTime::now();
        let id = crate::store::new_id("msg_test_", now);
        let body = sample_payload(&id, &config.node.hostname, route, now);
        let deadline = Instant::now() + route.webhook_budget.min(TEST_DELIVERY_BUDGET);
        let outcome = smol::block_on(client.deliver_until(&id, Arc::new(body), deadline));
        log::info!("settings: test delivery {id} through route {index}");
        Some(match outcome {
            WebhookOutcome::Accepted { status, .. } => TestDelivery {
                outcome: "accepted",
                status: Some(status),
                detail: String::new(),
            },
            WebhookOutcome::Rejected { status, reason } => TestDelivery {
                outcome: "rejected",
                status: Some(status),
                detail: reason,
            },
            WebhookOutcome::Failed {
                last_error,
                last_status,
                ..
            } => TestDelivery {
                outcome: "failed",
                status: last_status,
                detail: last_error,
            },
        })
    }
}

impl NodeSettings {
    fn probe(&self, name: &str) -> Option<crate::api::settings::S3Probe> {
        use crate::api::settings::S3Probe;
        let config = Config::from_raw(self.live.effective()).ok()?;
        let connection = config.s3.get(name)?;
        let outcome = smol::block_on(crate::s3::probe_connection(name, connection));
        log::info!(
            "settings: S3 probe of s3.{name}: {}",
            if outcome.is_ok() { "ok" } else { "failed" }
        );
        Some(match outcome {
            Ok(detail) => S3Probe { ok: true, detail },
            Err(detail) => S3Probe { ok: false, detail },
        })
    }
}

/// How long a console test delivery may retry (the operator is waiting for the page).
const TEST_DELIVERY_BUDGET: Duration = Duration::from_secs(10);

/// A version 1 payload (DESIGN §4) that says it is a test, to an address the route matches.
fn sample_payload(
    id: &str,
    hostname: &str,
    route: &crate::config::Route,
    now: std::time::SystemTime,
) -> Vec<u8> {
    let rcpt = match route.name.strip_prefix("*@") {
        Some(domain) => format!("test@{domain}"),
        None => route.name.clone(),
    };
    let sender = format!("mxnode-test@{hostname}");
    let received_at = humantime::format_rfc3339_seconds(now).to_string();
    serde_json::json!({
        "version": 1,
        "id": id,
        "test": true,
        "received_at": received_at,
        "envelope": {
            "mail_from": sender, "rcpt_to": [rcpt], "helo": hostname,
            "remote_ip": "127.0.0.1", "tls": null
        },
        "message_id": format!("<{id}@{hostname}>"),
        "subject": "mxnode test delivery",
        "date": received_at,
        "from": [{"name": "mxnode", "address": sender}],
        "to": [{"name": null, "address": rcpt}], "cc": [], "reply_to": [],
        "headers": [{"name": "Subject", "value": "mxnode test delivery"}],
        "text": "A test delivery sent from the mxnode console. No mail was received.",
        "html": null,
        "attachments": [],
        "size": 0,
        "warnings": []
    })
    .to_string()
    .into_bytes()
}

/// Deletes what retention has ended, at start and then every [`SWEEP_INTERVAL`], until `stop`
/// closes.
async fn sweep_until_stopped(
    store: Arc<dyn Store>,
    retention: Arc<RwLock<Retention>>,
    stop: smol::channel::Receiver<()>,
) {
    use smol::future::FutureExt as _;
    loop {
        let current = *retention.read().unwrap_or_else(|p| p.into_inner());
        let swept = {
            let store = store.clone();
            smol::unblock(move || store.sweep(std::time::SystemTime::now(), current)).await
        };
        match swept {
            Ok(report)
                if report.records_deleted
                    + report.audit_events_deleted
                    + report.buckets_destroyed
                    > 0 =>
            {
                let detail = format!(
                    "deleted {} record(s) and {} audit event(s); destroyed {} bucket key(s)",
                    report.records_deleted, report.audit_events_deleted, report.buckets_destroyed
                );
                log::info!("retention sweep: {detail}");
                let now = std::time::SystemTime::now();
                let event = AuditEvent {
                    id: new_id("aud_", now),
                    time: unix_ms(now),
                    actor: "system".into(),
                    action: "retention.sweep".into(),
                    target: None,
                    detail: Some(detail),
                };
                let store = store.clone();
                if let Err(e) = smol::unblock(move || store.append_audit(&event)).await {
                    log::error!("audit log: cannot record the retention sweep: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => log::error!("retention sweep failed: {e}"),
        }
        let stopped = async {
            let _ = stop.recv().await;
            true
        }
        .or(async {
            smol::Timer::after(SWEEP_INTERVAL).await;
            false
        })
        .await;
        if stopped {
            return;
        }
    }
}

/// Samples gauges that change too often to update on every event.
async fn sample_gauges(server: Arc<Server>) {
    loop {
        server.metrics.set_in_flight(server.budget.used() as u64);
        smol::Timer::after(GAUGE_INTERVAL).await;
    }
}

/// Opens the metadata store (RocksDB under `data_dir`) with the node master key.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    let key = config
        .node
        .master_key
        .as_ref()
        .ok_or(StartError::MasterKeyMissing)?;
    // Validation guarantees 32 bytes; a mismatch here is a bug, reported rather than panicked on.
    let key: &[u8; 32] = key
        .expose()
        .try_into()
        .map_err(|_| StartError::MasterKeyMissing)?;
    Ok(Arc::new(RocksStore::open(&config.node.data_dir, key)?))
}

/// The REST API, bound and ready to serve.
struct HttpService {
    listener: smol::Async<std::net::TcpListener>,
    app: crate::http::api::App,
    tls: Option<Arc<crate::smtp::tls::ReloadableAcceptor>>,
}

/// Builds the API on `store` and binds `http.listen`; logs `listening on https://ADDR`.
fn prepare_http(
    config: &Config,
    addr: std::net::SocketAddr,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    settings: Arc<dyn SettingsBackend>,
    smtp_tls: Option<Arc<crate::smtp::tls::ReloadableAcceptor>>,
    updater: Option<Arc<crate::update::agent::Updater>>,
) -> Result<HttpService, StartError> {
    let api = Arc::new(crate::api::Api::new(store, metrics, settings));
    api.set_update_keys(config.update.keys.clone());
    if let Some(updater) = updater {
        api.set_updater(updater);
    }
    if let (true, Some(files)) = (config.http.self_signed, &config.http.tls) {
        let dir = files.cert.parent().unwrap_or(&config.node.data_dir);
        crate::dev::ensure_self_signed(dir, &config.node.hostname).map_err(|e| {
            StartError::HttpTls(format!("cannot create the self-signed certificate: {e}"))
        })?;
    }
    // A certificate uploaded through the console wins over the configured files.
    let tls = crate::certificate::starting_acceptor(
        &config.node.data_dir,
        config.http.tls.as_ref(),
        "https",
    )
    .map_err(StartError::HttpTls)?;
    // Setup mode (no admin yet): the one-time token goes to the journal and the runtime dir,
    // with the fingerprint an operator compares against the browser's certificate warning.
    let fingerprint = tls
        .as_ref()
        .and_then(|t| std::fs::read(t.files().cert).ok())
        .and_then(|pem| crate::api::admin::certificate_fingerprint(&pem));
    api.set_tls_certificate(tls.as_ref().map(|t| t.files().cert));
    api.set_data_dir(config.node.data_dir.clone());
    api.set_certificates(Arc::new(crate::certificate::NodeCertificates::new(
        config.node.data_dir.clone(),
        smtp_tls,
        tls.clone(),
    )));
    if let Err(e) = api.begin_setup(Some(&config.node.runtime_dir), fingerprint.as_deref()) {
        log::error!("setup: cannot determine whether an admin exists: {e}");
    }
    let listener = crate::http::server::bind(addr).map_err(StartError::HttpListen)?;
    if let Ok(addr) = listener.get_ref().local_addr() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        log::info!("listening on {scheme}://{addr} (setup page, console and REST API)");
    }
    Ok(HttpService {
        listener,
        app: crate::http::api::app(api, tls.is_some())
            .allowing_only(config.http.allow_from.clone()),
        tls,
    })
}

/// Runs the node until SIGTERM or SIGINT, then shuts down gracefully: stop accepting, let
/// transactions in flight finish (bounded), exit.
///
/// `raw` is the file's configuration and `config` its validated form; settings persisted in the
/// store through the API are merged over them (they win over the file, DESIGN §5).
pub async fn run(raw: RawConfig, config: Config) -> Result<(), StartError> {
    let hardening = crate::hardening::lock_down();
    for warning in &hardening.warnings {
        log::warn!("hardening: {warning}");
    }
    std::fs::create_dir_all(&config.node.data_dir).map_err(|source| StartError::DataDir {
        path: config.node.data_dir.display().to_string(),
        source,
    })?;
    // Opened once per process (RocksDB locks its directory) and shared by delivery, the API,
    // settings and the retention sweeper.
    let store = open_store(&config)?;
    let result = serve(raw, config, store.clone()).await;
    close_store(store).await;
    result
}

/// Closes the store on this thread, before the process runs its exit handlers: RocksDB closed
/// later by the last reference on another thread, or torn down under its own background work
/// during exit, can crash the process at exit. A store still in use after
/// [`STORE_CLOSE_WAIT`] (a blocking call that outlived its request) has its background work
/// stopped and is left to the OS, as after a kill: every write it acknowledged is in its log.
async fn close_store(store: Arc<dyn Store>) {
    let give_up = Instant::now() + STORE_CLOSE_WAIT;
    while Arc::strong_count(&store) > 1 && Instant::now() < give_up {
        smol::Timer::after(Duration::from_millis(20)).await;
    }
    if Arc::strong_count(&store) > 1 {
        log::warn!("metadata store still in use at exit: stopping its background work only");
        store.quiesce();
        std::mem::forget(store);
    } else {
        drop(store);
        log::info!("metadata store closed");
    }
}

/// [`run`] once the store is open; every reference to it made here is gone when this returns,
/// except in blocking calls still running.
async fn serve(raw: RawConfig, config: Config, store: Arc<dyn Store>) -> Result<(), StartError> {
    // `WatchdogSec=` of the unit: pings from the executor every half timeout until this returns
    // (dropping the task stops it), so a stuck executor gets the node restarted.
    let _watchdog = crate::notify::start_watchdog();
    let (raw, config, settings_problem) = with_persisted_settings(&store, raw, config);
    let router = match &settings_problem {
        Some(problem) => {
            log::error!(
                "SETTINGS NOT LOADED: the settings saved through the API (key `{SETTINGS_KEY}` \
                 of the metadata store in {}) {problem}. ALL MAIL IS DEFERRED with 451 4.3.0 \
                 until they are fixed with PUT /api/v1/settings (mxnode_settings_load_failed = 1)",
                config.node.data_dir.display()
            );
            Arc::new(Router::deferring(SETTINGS_UNAVAILABLE))
        }
        None => Arc::new(Router::new(&config)?),
    };
    if settings_problem.is_none() && config.routes.is_empty() {
        log::warn!("no [[route]] is configured: every recipient will be refused with 550 5.1.1");
    }
    // A certificate uploaded through the console wins over the configured files.
    let tls = crate::certificate::starting_acceptor(
        &config.node.data_dir,
        config.smtp.tls.as_ref(),
        "smtp",
    )
    .map_err(StartError::Tls)?;
    let session_config = Arc::new(SessionConfig {
        hostname: config.node.hostname.clone(),
        max_message_size: config.smtp.max_message_size,
        max_recipients: config.smtp.max_recipients,
        starttls_available: tls.is_some(),
        command_timeout: config.smtp.command_timeout,
        data_timeout: config.smtp.data_timeout,
        data_total_timeout: config.smtp.data_total_timeout,
    });
    let metrics = Arc::new(Metrics::new());
    metrics.set_settings_load_failed(settings_problem.is_some());
    let auth = Arc::new(
        crate::auth::Authenticator::new(&config.auth, &config.node.hostname)
            .map_err(StartError::Auth)?,
    );
    let server = Arc::new(Server {
        auth,
        session_config,
        router: std::sync::RwLock::new(router),
        store: Some(store.clone()),
        store_subject: std::sync::atomic::AtomicBool::new(config.retention.store_subject),
        metrics: metrics.clone(),
        budget: InFlightBudget::new(config.smtp.max_in_flight),
        tls: tls.clone(),
        max_sessions: config.smtp.max_sessions,
        max_sessions_per_ip: config.smtp.max_sessions_per_ip,
        max_in_flight_per_ip: config.smtp.max_in_flight_per_ip,
        active: AtomicUsize::new(0),
        per_ip: Mutex::new(Default::default()),
    });
    let retention = Arc::new(RwLock::new(Retention {
        metadata: config.retention.metadata,
        audit: config.retention.audit,
    }));
    let settings: Arc<dyn SettingsBackend> = Arc::new(NodeSettings {
        live: LiveSettings::new(raw),
        store: store.clone(),
        server: server.clone(),
        retention: retention.clone(),
    });
    // Issue 16: a node that would install releases signed with the public development key
    // says so at every start (and in its status, console and metrics).
    if crate::update::agent::development_keys(&config.update.keys) {
        log::warn!(
            "update: {} trusts the development release key, whose private half is in the \
             repository: anyone can sign a release this node installs (a production image is \
             built with ./build.sh image --production)",
            config.update.keys.display()
        );
    }
    // The update agent: a node that cannot run it still serves mail (the API says why).
    let updater = match crate::update::agent::Updater::new(config.update.clone()) {
        Ok(updater) => Some(Arc::new(updater)),
        Err(e) => {
            log::error!("update: {e}; updates are off");
            None
        }
    };
    let http = match config.http.listen {
        Some(addr) => Some(prepare_http(
            &config,
            addr,
            store.clone(),
            metrics.clone(),
            settings,
            tls,
            updater.clone(),
        )?),
        None => None,
    };
    let (stop_sweeping, sweeping_stopped) = smol::channel::bounded::<()>(1);
    let sweeper = smol::spawn(sweep_until_stopped(
        store.clone(),
        retention,
        sweeping_stopped,
    ));
    let gauges = smol::spawn(sample_gauges(server.clone()));
    let (stop_updating, updating_stopped) = smol::channel::bounded::<()>(1);
    let updating = updater.map(|updater| {
        let store = store.clone();
        let audit: crate::update::agent::Audit = Arc::new(move |action: &str, detail: String| {
            let now = std::time::SystemTime::now();
            if let Err(e) =
                crate::api::audit_event(store.as_ref(), now, "system", action, None, Some(detail))
            {
                log::error!("audit: cannot store the event {action}: {e}");
            }
        });
        smol::spawn(crate::update::agent::run(updater, audit, updating_stopped))
    });
    let mut signals =
        Signals::new([Signal::Term, Signal::Int, Signal::Hup]).map_err(StartError::Signals)?;
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
    let https_tls = http.as_ref().and_then(|http| http.tls.clone());
    let serving_api = http.map(|http| {
        smol::spawn(crate::http::server::run(
            http.listener,
            Arc::new(http.app),
            http.tls,
            stopped.clone(),
        ))
    });
    let accepting = smol::spawn(server::run(listeners, server.clone(), stopped));

    // SIGHUP reloads the STARTTLS and HTTPS certificates (the unit's ExecReload); SIGTERM/SIGINT
    // stop.
    let signal = loop {
        match signals.next().await {
            Some(Ok(Signal::Hup)) => {
                reload_tls(&server);
                reload_https_tls(https_tls.as_deref());
            }
            other => break other,
        }
    };
    let signal = match signal {
        Some(Ok(signal)) => format!("{signal:?}").to_uppercase(),
        _ => "the end of the signal stream".to_string(),
    };
    log::info!("received {signal}: no new sessions; finishing transactions in flight");
    crate::notify::notify("STOPPING=1");
    drop(stop);
    accepting.await;
    if let Some(serving_api) = serving_api {
        serving_api.await;
    }
    // A sweep in progress runs on a blocking thread: wait for it, so the store is closed
    // before the process exits (RocksDB must not be torn down under its own threads).
    drop(stop_sweeping);
    sweeper.await;
    // A download in progress is abandoned (its partial file is never staged).
    drop(stop_updating);
    if let Some(updating) = updating {
        updating.cancel().await;
    }
    // Awaited, not just dropped: a dropped task is cancelled later on the executor's thread,
    // where its last reference to the server (and so to the store) could close RocksDB while
    // the process already runs its exit handlers (a crash at exit, seen in `at_rest`).
    gauges.cancel().await;

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

/// SIGHUP: re-reads the HTTPS certificate and key files in use for new connections, keeping
/// the certificate in use when they do not make a working one.
fn reload_https_tls(tls: Option<&crate::smtp::tls::ReloadableAcceptor>) {
    if let Some(tls) = tls {
        match tls.reload() {
            Ok(()) => log::info!(
                "received SIGHUP: reloaded the HTTPS certificate and key for new connections"
            ),
            Err(e) => log::error!(
                "received SIGHUP: HTTPS certificate not reloaded, keeping the certificate in use: {e}"
            ),
        }
    }
}

/// SIGHUP: re-reads `smtp.tls_cert` and `smtp.tls_key` for new STARTTLS sessions. Files that do
/// not make a working certificate are refused and the certificate in use stays, so a renewal
/// copied halfway never takes STARTTLS down.
fn reload_tls(server: &Server) {
    match &server.tls {
        None => log::info!("received SIGHUP: no smtp.tls_cert is configured, nothing to reload"),
        Some(tls) => match tls.reload() {
            Ok(()) => log::info!(
                "received SIGHUP: reloaded smtp.tls_cert and smtp.tls_key for new STARTTLS sessions"
            ),
            Err(e) => log::error!(
                "received SIGHUP: smtp.tls_cert/smtp.tls_key not reloaded, keeping the certificate in use: {e}"
            ),
        },
    }
}
