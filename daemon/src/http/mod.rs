//! HTTP servers: the REST API, setup page and console (`api`, `ui`) and the development node's
//! receiver (`dev_receiver`), on one connection layer (`server`: hyper's HTTP/1.1 driven by
//! smol, plain or TLS) and a small router (`router`). hyper's types stay in this module: the
//! controller (`crate::api`) knows no HTTP type.

pub mod api;
pub mod dev_receiver;
pub mod router;
pub mod server;
pub mod ui;

#[cfg(test)]
mod tests;

/// Every answer: status, headers and a body already in memory.
pub type Response = hyper::Response<http_body_util::Full<hyper::body::Bytes>>;
