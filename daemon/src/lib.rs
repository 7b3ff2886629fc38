//! mxnode: an email-ingress node. SMTP in, parse in memory, signed webhook out; `250` only
//! after delivery; content never at rest. See ARCHITECTURE.md for the map of this crate.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod certificate;
pub mod config;
pub mod deliver;
pub mod dev;
pub mod hardening;
pub mod http;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod net;
pub mod node;
pub mod notify;
pub mod payload;
pub mod s3;
pub mod settings;
pub mod smtp;
pub mod store;
pub mod update;
pub mod volume;
pub mod webhook;
