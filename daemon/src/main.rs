//! The `mxnode` command line.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mxnode::config::{Config, RawConfig};

#[derive(Parser)]
#[command(
    name = "mxnode",
    version,
    about = "Email-ingress node: SMTP in, signed webhook out, nothing at rest"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file; lists every problem and exits non-zero if there is one.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
        /// Also prove every [s3.*] connection works (writes, reads back and deletes a probe
        /// object). Without it the check stays offline, as systemd's ExecStartPre needs.
        #[arg(long)]
        probe: bool,
    },
    /// Prove one [s3.NAME] connection works: write, read back and delete a probe object.
    S3Test {
        #[arg(long)]
        config: PathBuf,
        /// The NAME of the [s3.NAME] table.
        name: String,
    },
    /// Run a development node on embedded defaults with a built-in receiver that prints mail.
    Dev {
        /// Node state (self-signed TLS certificate); never message content.
        #[arg(long, default_value = ".dev")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:2525")]
        smtp: String,
        #[arg(long, default_value = "127.0.0.1:8025")]
        receiver: String,
        /// The setup page, console and REST API (plain HTTP: a loopback address only).
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
        /// The DNS server of sender authentication (IP or IP:port); default: the system's.
        #[arg(long)]
        resolver: Option<String>,
    },
    /// Manage REST API keys offline (the node must not be running: the store is locked by it).
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Forgotten admin password: remove the console's admin account offline (the node must be
    /// stopped). Its next start enters setup mode and shows a fresh one-time setup token (the
    /// journal, the console banner, <node.runtime_dir>/setup-token); mail and API keys are
    /// untouched.
    ResetAdmin {
        #[arg(long)]
        config: PathBuf,
    },
    /// Make releases for the update channel: keys, signed manifests, offline bundles.
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
    },
    /// Install a staged release into the inactive slot (root; run by mxnode-update.service).
    Update {
        #[command(subcommand)]
        command: UpdateCommand,
    },
}

#[derive(Subcommand)]
enum ReleaseCommand {
    /// Generate an Ed25519 release key: DIR/release-key.pk8 (0600) and DIR/release-key.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Copy the artifacts into DIR and write manifest.json and manifest.json.sig.
    Sign {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        version: String,
        #[arg(long)]
        security_floor: Option<String>,
        /// How long the release stays installable, e.g. "30d".
        #[arg(long, default_value = "30d")]
        valid_for: String,
        #[arg(long, default_value = mxnode::update::PRODUCT)]
        product: String,
        #[arg(long, default_value = mxnode::update::DEFAULT_COMPATIBLE)]
        compatible: String,
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initrd: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Pack a signed release directory into one tar file for offline upload.
    Bundle {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum UpdateCommand {
    /// Verify the node's install request again and write it into the other slot.
    Install {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        current_slot: String,
        #[arg(long)]
        esp: PathBuf,
        #[arg(long)]
        slot_a: PathBuf,
        #[arg(long)]
        slot_b: PathBuf,
        #[arg(long)]
        root_partuuid_a: String,
        #[arg(long)]
        root_partuuid_b: String,
        /// Kernel command line of every boot entry besides root= and mxnode.slot=.
        #[arg(long, default_value = "")]
        cmdline: String,
    },
    /// After a good boot: record the installed version or the rollback; raise the floor.
    Finish {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        current_slot: String,
    },
    /// A trial boot's health check failed (run by mxnode-health before it reboots): record
    /// why with the pending install, so a rollback can tell a broken release (`service`: the
    /// node did not run; barred from the channel) from a starved probe (`probe`: the node ran
    /// but its SMTP greeting or /healthz did not get through; not barred).
    TrialFailed {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        current_slot: String,
        #[arg(long, value_parser = ["service", "probe"])]
        cause: String,
    },
    /// Print the installer's state (status, pending install, floor, history) and whether
    /// update.keys trusts the development key, as JSON.
    Status {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create a key and print it once on stdout; only its hash is stored.
    Create {
        #[arg(long)]
        config: PathBuf,
        /// A name for people, e.g. "grafana".
        #[arg(long)]
        name: String,
        /// A scope the key holds (repeatable): metrics:read, emails:read, emails:delete,
        /// audit:read, settings:read, settings:write, update:read, update:write, admin.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
}

fn main() -> ExitCode {
    // Before anything runs: a panic's message never reaches the journal (issue 16).
    mxnode::logging::install_panic_hook();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config, probe } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} route(s), SMTP on {})",
                    config.display(),
                    c.routes.len(),
                    c.smtp
                        .listen
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if c.routes.is_empty() {
                    println!(
                        "warning: no [[route]] is configured: every recipient will be refused"
                    );
                }
                if probe && !probe_all(&c) {
                    return ExitCode::FAILURE;
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}: {} problem(s)", config.display(), errors.0.len());
                for e in &errors.0 {
                    eprintln!("  {e}");
                }
                ExitCode::FAILURE
            }
        },
        Command::S3Test { config, name } => {
            let c = match Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{}: {} problem(s)", config.display(), errors.0.len());
                    for e in &errors.0 {
                        eprintln!("  {e}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            let Some(s3) = c.s3.get(&name) else {
                eprintln!("{}: no [s3.{name}] table", config.display());
                return ExitCode::FAILURE;
            };
            match smol::block_on(mxnode::s3::probe_connection(&name, s3)) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(line) => {
                    eprintln!("{line}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve { config } => {
            mxnode::logging::init(log::LevelFilter::Info);
            let loaded = RawConfig::read(&config)
                .and_then(|raw| Config::from_raw(raw.clone()).map(|c| (raw, c)));
            let (raw, config) = match loaded {
                Ok(loaded) => loaded,
                Err(errors) => {
                    log::error!("{}: invalid configuration:\n{errors}", config.display());
                    return ExitCode::from(2);
                }
            };
            exit(smol::block_on(mxnode::node::run(raw, config)).map_err(anyhow::Error::from))
        }
        Command::ApiKey {
            command:
                ApiKeyCommand::Create {
                    config,
                    name,
                    scopes,
                },
        } => {
            mxnode::logging::init(log::LevelFilter::Info);
            exit(create_api_key(&config, &name, &scopes))
        }
        Command::ResetAdmin { config } => {
            mxnode::logging::init(log::LevelFilter::Info);
            exit(reset_admin(&config))
        }
        Command::Release { command } => exit(release(command)),
        Command::Update { command } => {
            mxnode::logging::init(log::LevelFilter::Info);
            exit(update(command))
        }
        Command::Dev {
            data_dir,
            smtp,
            receiver,
            http,
            resolver,
        } => {
            mxnode::logging::init(log::LevelFilter::Info);
            let options = mxnode::dev::DevOptions {
                data_dir,
                smtp_listen: smtp,
                receiver_listen: receiver,
                http_listen: http,
                resolver,
            };
            exit(smol::block_on(async {
                let (raw, config, listener, key) = mxnode::dev::prepare(&options)?;
                smol::spawn(async move {
                    if let Err(e) = mxnode::http::dev_receiver::serve(listener, key).await {
                        log::error!("dev receiver stopped: {e}");
                    }
                })
                .detach();
                mxnode::node::run(raw, config).await?;
                Ok(())
            }))
        }
    }
}

/// `mxnode api-key create`: opens the store offline, creates the key, audits it as `cli`.
fn create_api_key(config: &Path, name: &str, scopes: &[String]) -> anyhow::Result<()> {
    let config = Config::load(config).map_err(|errors| {
        anyhow::anyhow!("{}: invalid configuration:\n{errors}", config.display())
    })?;
    let store = mxnode::node::open_store(&config).map_err(|e| {
        anyhow::anyhow!("{e} (is `mxnode serve` running? stop it first, or use the API)")
    })?;
    let created = mxnode::api::keys::create(
        store.as_ref(),
        name,
        scopes,
        "cli",
        std::time::SystemTime::now(),
    )
    .map_err(|e| {
        let fields: Vec<String> = e
            .fields
            .iter()
            .map(|f| format!("{}: {}", f.key, f.message))
            .collect();
        anyhow::anyhow!(
            "{}{}",
            e.message,
            if fields.is_empty() {
                String::new()
            } else {
                format!(": {}", fields.join("; "))
            }
        )
    })?;
    eprintln!(
        "created API key {} ({}) with scopes {}; it is shown only this once:",
        created.view.id,
        created.view.name,
        created.view.scopes.join(", ")
    );
    println!("{}", created.key);
    Ok(())
}

/// `mxnode reset-admin`: opens the store offline and removes the admin account, audited as
/// `cli`. Run as root on the appliance, it hands the store files it touched back to the owner
/// of `node.data_dir` (the node runs unprivileged and must be able to open them).
fn reset_admin(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path).map_err(|errors| {
        anyhow::anyhow!(
            "{}: invalid configuration:\n{errors}",
            config_path.display()
        )
    })?;
    let removed = {
        let store = mxnode::node::open_store(&config).map_err(|e| {
            anyhow::anyhow!(
                "{e} (is `mxnode serve` running? stop it first: the store is locked by it)"
            )
        })?;
        let removed =
            mxnode::api::admin::reset_admin(store.as_ref(), "cli", std::time::SystemTime::now())?;
        store.quiesce();
        removed
    };
    restore_ownership(&config.node.data_dir)?;
    match removed {
        Some(name) => eprintln!(
            "removed the admin account \"{name}\"; start the node (`systemctl start mxnode`): it enters setup mode and shows a new one-time setup token in its journal, on the console banner and in {}",
            config
                .node
                .runtime_dir
                .join(mxnode::api::admin::SETUP_TOKEN_FILE)
                .display()
        ),
        None => eprintln!(
            "no admin account exists: the node is already in setup mode; its setup token is shown at every start"
        ),
    }
    Ok(())
}

/// Gives files under `dir` (two levels) that this process owns back to `dir`'s owner, when
/// they differ (a root CLI writing into the unprivileged node's store).
fn restore_ownership(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = std::fs::metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    if owner.uid() == me {
        return Ok(());
    }
    let mut pending = vec![(dir.to_path_buf(), 0)];
    while let Some((path, depth)) = pending.pop() {
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            let meta = entry.path().symlink_metadata()?;
            if meta.file_type().is_symlink() {
                continue;
            }
            if meta.uid() == me {
                std::os::unix::fs::chown(entry.path(), Some(owner.uid()), Some(owner.gid()))
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot hand {} back to the node: {e}",
                            entry.path().display()
                        )
                    })?;
            }
            if meta.is_dir() && depth < 2 {
                pending.push((entry.path(), depth + 1));
            }
        }
    }
    Ok(())
}

/// `mxnode release …`.
fn release(command: ReleaseCommand) -> anyhow::Result<()> {
    use mxnode::update::release;
    match command {
        ReleaseCommand::Keygen { out } => {
            let id = release::keygen(&out)?;
            println!("{id}");
            eprintln!(
                "key {id}: private key {}, public key line {}",
                out.join(release::PRIVATE_KEY_FILE).display(),
                out.join(release::PUBLIC_KEY_FILE).display()
            );
        }
        ReleaseCommand::Sign {
            key,
            version,
            security_floor,
            valid_for,
            product,
            compatible,
            root,
            kernel,
            initrd,
            out,
        } => {
            let valid_for = mxnode::config::parse_duration(&valid_for)
                .map_err(|e| anyhow::anyhow!("--valid-for: {e}"))?;
            let manifest = release::sign(&release::SignOptions {
                key,
                version,
                security_floor,
                valid_for,
                product,
                compatible,
                root,
                kernel,
                initrd,
                out: out.clone(),
                now: std::time::SystemTime::now(),
            })?;
            eprintln!(
                "signed {} {} with key {} into {}",
                manifest.product,
                manifest.version,
                manifest.key_id,
                out.display()
            );
        }
        ReleaseCommand::Bundle { dir, out } => {
            release::bundle(&dir, &out)?;
            eprintln!("wrote {}", out.display());
        }
    }
    Ok(())
}

fn slot_arg(text: &str) -> anyhow::Result<mxnode::update::install::Slot> {
    mxnode::update::install::Slot::parse(text)
        .ok_or_else(|| anyhow::anyhow!("--current-slot must be a or b, not {text:?}"))
}

/// `mxnode update …` (root).
fn update(command: UpdateCommand) -> anyhow::Result<()> {
    use mxnode::update::install::{self, StateDir};
    let load = |path: &Path| {
        RawConfig::read(path)
            .and_then(|raw| mxnode::config::update_only(&raw))
            .map_err(|errors| {
                anyhow::anyhow!("{}: invalid configuration:\n{errors}", path.display())
            })
    };
    match command {
        UpdateCommand::Install {
            config,
            current_slot,
            esp,
            slot_a,
            slot_b,
            root_partuuid_a,
            root_partuuid_b,
            cmdline,
        } => {
            let u = &load(&config)?;
            let keys = mxnode::update::manifest::TrustedKeys::load(&u.keys)
                .map_err(|e| anyhow::anyhow!("update.keys: {e}"))?;
            std::fs::create_dir_all(&u.state_dir)?;
            let ctx = install::Context {
                spool_dir: u.spool_dir.clone(),
                state: StateDir(u.state_dir.clone()),
                keys,
                product: mxnode::update::PRODUCT.into(),
                compatible: u.compatible.clone(),
                running: install::running_version(),
                boot: install::read_boot(),
                now: std::time::SystemTime::now(),
            };
            let layout = install::Layout {
                current: slot_arg(&current_slot)?,
                esp,
                slot_a,
                slot_b,
                partuuid_a: root_partuuid_a,
                partuuid_b: root_partuuid_b,
                cmdline,
            };
            let installed = match install::install(&ctx, &layout) {
                Ok(installed) => installed,
                Err(install::InstallError::NoRequest) => {
                    log::info!("update: no install request; nothing to do");
                    return Ok(());
                }
                Err(e) => return Err(anyhow::anyhow!("{e}")),
            };
            log::info!(
                "update: installed {} into slot {} (boot entry {})",
                installed.version,
                installed.slot.letter(),
                installed.entry
            );
            match install::reboot_plan(u.maintenance_window.as_ref(), ctx.now) {
                install::RebootPlan::Now => run(&["systemctl", "reboot"]),
                install::RebootPlan::At(at) => {
                    install::record_reboot_pending(&ctx.state, &at)?;
                    log::info!("update: reboot scheduled at {at} UTC (maintenance window)");
                    run(&["shutdown", "-r", &at])
                }
            }
        }
        UpdateCommand::Finish {
            config,
            current_slot,
        } => {
            let u = load(&config)?;
            std::fs::create_dir_all(&u.state_dir)?;
            let state = StateDir(u.state_dir.clone());
            let outcome = install::finish(
                &state,
                slot_arg(&current_slot)?,
                &install::running_version(),
                std::time::SystemTime::now(),
            )?;
            match outcome {
                install::Finished::Nothing => log::info!("update: nothing pending"),
                install::Finished::Installed { version } => {
                    log::info!("update: {version} is installed and booted well")
                }
                install::Finished::RolledBack { version, current } => log::warn!(
                    "update: {version} failed its boots; rolled back to slot {}",
                    current.letter()
                ),
            }
            Ok(())
        }
        UpdateCommand::TrialFailed {
            config,
            current_slot,
            cause,
        } => {
            let u = load(&config)?;
            let state = StateDir(u.state_dir.clone());
            let cause = match cause.as_str() {
                "probe" => install::TrialCause::Probe,
                _ => install::TrialCause::Service,
            };
            let recorded = install::record_trial_failure(
                &state,
                slot_arg(&current_slot)?,
                cause,
                std::time::SystemTime::now(),
            )?;
            if recorded {
                log::warn!(
                    "update: this trial boot failed its health check ({})",
                    cause.as_str()
                );
            } else {
                log::info!("update: no install pending on this slot: nothing to record");
            }
            Ok(())
        }
        UpdateCommand::Status { config } => {
            let u = load(&config)?;
            let state = StateDir(u.state_dir.clone());
            let view = serde_json::json!({
                "version": install::running_version().to_string(),
                "floor": state.floor().map(|f| f.to_string()),
                "status": state.status(),
                "pending": state.pending(),
                "history": state.history(),
                // Whether update.keys trusts the development key (issue 16).
                "development_keys": mxnode::update::agent::development_keys(&u.keys),
            });
            println!("{}", serde_json::to_string_pretty(&view)?);
            Ok(())
        }
    }
}

/// Runs a system command; a failure names it.
fn run(argv: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", argv.join(" ")))?;
    if !status.success() {
        anyhow::bail!("{} failed: {status}", argv.join(" "));
    }
    Ok(())
}

/// Probes every `[s3.*]` connection of `config`, printing one line each; true if all work.
fn probe_all(config: &Config) -> bool {
    let mut all_ok = true;
    for (name, s3) in &config.s3 {
        match smol::block_on(mxnode::s3::probe_connection(name, s3)) {
            Ok(line) => println!("{line}"),
            Err(line) => {
                eprintln!("{line}");
                all_ok = false;
            }
        }
    }
    all_ok
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
