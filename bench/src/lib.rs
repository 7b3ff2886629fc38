//! The benchmarks of `./build.sh bench` (issues 9 and 14): mxnode against Postfix, Haraka and
//! the protocol limit on loopback, measured as ratios in one run so a noisy shared machine
//! cancels out.
//!
//! - [`messages`] and [`stats`]: pure helpers, also used by the parse micro-benchmark
//!   (`benches/parse.rs`).
//! - [`peers`]: the processes under test and around them (smtp-sink, a private Postfix, a
//!   private Haraka, the webhook sink, mxnode), each stopped when dropped.
//! - [`source`] and [`latency`]: load from `smtp-source`, and our own paced client that times
//!   end of data → reply.
//! - [`run`]: one sweep over targets × sizes × sessions; [`report`]: table, checks, JSON.
//!
//! Benchmarks report; they never assert on time. Nothing here writes message content anywhere
//! but the scratch directory's generated message files (synthetic, not mail).

#![forbid(unsafe_code)]

pub mod latency;
pub mod messages;
pub mod peers;
pub mod report;
pub mod run;
pub mod source;
pub mod stats;
