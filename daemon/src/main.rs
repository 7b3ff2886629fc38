//! The `mxnode` command line.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mxnode::config::Config;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
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
        Command::Serve { config } => {
            mxnode::logging::init(log::LevelFilter::Info);
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    log::error!("{}: invalid configuration:\n{errors}", config.display());
                    return ExitCode::from(2);
                }
            };
            exit(smol::block_on(mxnode::node::run(config)).map_err(anyhow::Error::from))
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
                let (config, listener, key) = mxnode::dev::prepare(&options)?;
                smol::spawn(async move {
                    if let Err(e) = mxnode::http::dev_receiver::serve(listener, key).await {
                        log::error!("dev receiver stopped: {e}");
                    }
                })
                .detach();
                mxnode::node::run(config).await?;
                Ok(())
            }))
        }
    }
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
