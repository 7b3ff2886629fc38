//! The end-to-end test harness: real peers around the real `mxnode` binary.
//!
//! It owns starting and stopping everything a test talks to — the daemon
//! ([`Node`]), an HTTPS webhook receiver ([`Receiver`]), test certificates
//! ([`TestCa`]), an S3-compatible store ([`S3Server`], s3s-fs, with an
//! optional HTTPS [`TlsFront`]) and SMTP clients ([`SmtpClient`] for exact bytes,
//! [`send_with_lettre`] and [`swaks`] for independent implementations, and a
//! private [`Postfix`] as a real sending MTA) — and
//! small file helpers ([`corpus_dir`], [`crlf`], [`scan_for_marker`]), and
//! for the fault tests a proxy that breaks connections ([`FaultProxy`]) and
//! the no-loss [`ledger`]. The update channel is a static HTTPS file server
//! ([`StaticServer`]) serving releases signed by the release tool ([`Releases`]).
//! Sender authentication gets a real DNS server ([`DnsServer`], dnsmasq); every other node asks
//! a loopback resolver that refuses at once ([`refusing_resolver`]).
//! The REST API is reached with [`ApiClient`] (and contract-tested with [`schemathesis_bin`]). The
//! appliance image is built and booted in qemu by [`vm`].
//!
//! **Architecture Invariant:** the harness never writes message content,
//! webhook bodies or daemon logs to disk. Tests prove "content never at rest"
//! by scanning temp directories for markers ([`scan_for_marker`]); a harness
//! copy would be a false alarm, so all captured output stays in memory. (A [`Postfix`] peer's
//! queue is Postfix's own design; it lives under /var/tmp, outside every scanned directory.)
//!
//! **Architecture Invariant:** every peer listens on 127.0.0.1 only, and every
//! wait is bounded, so a broken daemon fails a test instead of hanging CI.

#![forbid(unsafe_code)]

mod api;
pub mod corpus;
mod dns;
mod fault_proxy;
mod files;
pub mod ledger;
mod node;
mod postfix;
mod process;
mod receiver;
mod release;
mod s3;
mod smtp;
mod static_server;
mod tls;
pub mod vm;

pub use api::{ApiAnswer, ApiClient, run_schemathesis, schemathesis_bin};
pub use dns::{DnsServer, refusing_resolver};
pub use fault_proxy::FaultProxy;
pub use files::{corpus_dir, crlf, scan_for_marker, workspace_dir};
pub use node::{Node, NodeConfig, RouteConfig, mxnode_bin, parse_http_listening};
pub use postfix::Postfix;
pub use process::output_with_timeout;
pub use receiver::{Received, Receiver, new_webhook_secret, webhook_signature};
pub use release::{RELEASE_FILES, Releases, release_cli};
pub use s3::{S3Connection, S3Server, TlsFront, s3s_fs_bin};
pub use smtp::{Reply, SmtpClient, send_with_lettre, served_certificate, swaks};
pub use static_server::StaticServer;
pub use tls::TestCa;
