//! HTTP servers. tide lives only in this module (it is unmaintained upstream and runs on
//! async-std's executor), so it can be swapped without touching the rest of the node.

pub mod api;
pub mod dev_receiver;
pub mod server;
pub mod ui;
