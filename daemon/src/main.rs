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
    },
    /// Manage REST API keys offline (the node must not be running: the store is locked by it).
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
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
        Command::Dev {
            data_dir,
            smtp,
            receiver,
        } => {
            mxnode::logging::init(log::LevelFilter::Info);
            let options = mxnode::dev::DevOptions {
                data_dir,
                smtp_listen: smtp,
                receiver_listen: receiver,
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
