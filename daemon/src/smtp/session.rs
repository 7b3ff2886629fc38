//! The SMTP server session as a pure state machine (DESIGN §2, §3).
//!
//! A [`Session`] takes bytes from the client and the current time, and returns the
//! replies and actions the I/O driver must carry out, in order: send a reply, start
//! TLS, deliver a transaction, close. It owns the whole protocol: command parsing,
//! the transaction state, the `<CRLF>.<CRLF>` terminator, dot-unstuffing, SMTP
//! smuggling and STARTTLS-injection defences, every protocol limit and timeout.
//!
//! It must never touch a socket, read a clock, spawn, block or log: time comes in as
//! an argument, and the driver turns actions into I/O. That keeps every behaviour
//! testable byte by byte, at every chunk boundary, without a network. It must never
//! panic on client input, and never hold message bytes beyond the node's
//! [`InFlightBudget`] or past `max_message_size`.

use std::fmt;
use std::mem;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::budget::{InFlightBudget, Reservation};

/// Longest command line accepted, in bytes without the line ending. RFC 5321
/// 4.5.3.1.4 asks for at least 512; extensions (SIZE, SMTPUTF8 addresses, source
/// routes) need more, and anything longer is abuse.
pub const MAX_COMMAND_LINE_LENGTH: usize = 2048;

/// Permanent (5xx) command errors in a row after which the session is dropped with
/// `421 4.7.0`: a client that keeps failing is either broken or probing.
pub const MAX_CONSECUTIVE_ERRORS: usize = 20;

/// Bytes buffered while a delivery is in progress. A pipelining client may send the
/// next MAIL/RCPT/DATA group (RFC 2920) but no message data before `354`, so this
/// comfortably holds a legitimate group; past it the session ends after the
/// delivery reply.
pub const MAX_PIPELINED_INPUT: usize = 64 * 1024;

/// Smallest step by which a message buffer (and its budget reservation) grows.
/// Bigger steps mean fewer reallocations; the budget accounts for them anyway.
pub const DATA_GROWTH_STEP: usize = 64 * 1024;

/// Default for [`SessionConfig::max_message_size`] (DESIGN §5 `max_message_size`).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 25 * 1024 * 1024;

/// Default for [`SessionConfig::max_recipients`]: RFC 5321 4.5.3.1.8 asks servers to
/// accept at least 100 recipients per transaction.
pub const DEFAULT_MAX_RECIPIENTS: usize = 100;

/// Default for [`SessionConfig::command_timeout`] (RFC 5321 4.5.3.2.7).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Default for [`SessionConfig::data_timeout`] (RFC 5321 4.5.3.2.5).
pub const DEFAULT_DATA_TIMEOUT: Duration = Duration::from_secs(3 * 60);

/// Default for [`SessionConfig::data_total_timeout`]: a 25 MiB message needs about 44 KB/s to
/// arrive in time, far below any MTA's link, while a client trickling one line per
/// `data_timeout` can hold its growing message for ten minutes at most.
pub const DEFAULT_DATA_TOTAL_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Longest reply text sent per line: RFC 5321 4.5.3.1.5 limits a reply line to 512
/// bytes including the code, separator and CRLF.
pub const MAX_REPLY_TEXT: usize = 512 - 6;

/// Verbs of HTTP requests. A browser can be tricked into POSTing to port 25 with
/// SMTP commands in the body (cross-protocol scripting); such a session is cut at
/// the request line instead of being answered line by line.
const HTTP_VERBS: &[&str] = &[
    "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "PATCH", "TRACE",
];

/// What a session needs to know about the node; shared by all sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Advertised as `SIZE`, enforced at MAIL (declared size) and during DATA.
    pub max_message_size: usize,
    /// Accepted recipients per transaction; past it `452 4.5.3`.
    pub max_recipients: usize,
    /// A certificate is configured, so STARTTLS is offered.
    pub starttls_available: bool,
    /// RFC 5321 4.5.3.2.7 (default 5 min): waiting for a command.
    pub command_timeout: Duration,
    /// RFC 5321 4.5.3.2.5 (default 3 min): between data blocks.
    pub data_timeout: Duration,
    /// The whole of one message's data, from `354` to its terminator (default 10 min).
    pub data_total_timeout: Duration,
}

impl SessionConfig {
    /// The defaults above for `hostname`, without STARTTLS.
    pub fn new(hostname: impl Into<String>) -> Self {
        SessionConfig {
            hostname: hostname.into(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            starttls_available: false,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            data_timeout: DEFAULT_DATA_TIMEOUT,
            data_total_timeout: DEFAULT_DATA_TOTAL_TIMEOUT,
        }
    }
}

/// Decides whether RCPT TO address is routed (pure; implemented by the routing table).
pub trait RecipientPolicy: Send + Sync {
    /// True if mail for `address` (as given, without `<>`) has a route.
    fn accepts(&self, address: &str) -> bool;

    /// Recipients of one transaction must share this value; a recipient with another one gets
    /// `452 4.5.3` and the client sends it in a later transaction (RFC 5321 §4.5.3.1.10). The
    /// routing table uses it to keep routes that enforce DMARC apart from routes that only
    /// report, so the one reply after DATA is true for every recipient (DESIGN §11).
    fn transaction_group(&self, _address: &str) -> u8 {
        0
    }

    /// When set, no recipient can be judged now (the node's settings failed to load): every
    /// `RCPT` and `DATA` gets `451 4.3.0` with this text, so senders retry later rather than
    /// bounce the mail (issue 16).
    fn deferred(&self) -> Option<&str> {
        None
    }
}

/// Any `Fn(&str) -> bool` is a policy, which keeps tests and simple setups short.
impl<F> RecipientPolicy for F
where
    F: Fn(&str) -> bool + Send + Sync,
{
    fn accepts(&self, address: &str) -> bool {
        self(address)
    }
}

/// What the driver must do, in the order returned.
#[derive(Debug)]
pub enum Action {
    /// Send this reply.
    Reply(Reply),
    /// Start the TLS handshake now, then call [`Session::tls_started`]. Bytes received
    /// in plaintext after the STARTTLS command have already been discarded.
    StartTls,
    /// Deliver this transaction, then call [`Session::delivery_done`] with the reply
    /// derived from the outcome. Always the last action of its batch.
    Deliver(Transaction),
    /// Flush the replies before it and close the connection.
    Close,
}

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// Text lines; they already carry the enhanced status code, e.g. "2.0.0 Ok".
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply.
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply (as for EHLO).
    pub fn with_lines(code: u16, lines: Vec<String>) -> Self {
        Reply { code, lines }
    }

    /// The wire form, `250-a\r\n250 b\r\n`.
    ///
    /// Text is reduced to printable ASCII and each line is cut at [`MAX_REPLY_TEXT`]:
    /// reply texts may carry a reason from a webhook receiver, and a CR or LF in it
    /// must never be able to forge a reply line of its own.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let last = self.lines.len().saturating_sub(1);
        if self.lines.is_empty() {
            out.extend_from_slice(format!("{:03} \r\n", self.code).as_bytes());
        }
        for (i, line) in self.lines.iter().enumerate() {
            let separator = if i == last { ' ' } else { '-' };
            out.extend_from_slice(format!("{:03}{separator}", self.code).as_bytes());
            out.extend(
                line.bytes()
                    .take(MAX_REPLY_TEXT)
                    .map(|b| if (0x20..0x7f).contains(&b) { b } else { b'?' }),
            );
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// 2xx (completion) or 3xx (intermediate).
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 5xx: a permanent refusal.
    pub fn is_permanent_failure(&self) -> bool {
        (500..600).contains(&self.code)
    }
}

/// A received message with its envelope, handed to delivery with [`Action::Deliver`].
pub struct Transaction {
    /// The HELO/EHLO argument of the session.
    pub helo: String,
    /// `""` for the null sender `<>`.
    pub mail_from: String,
    /// Accepted recipients, as given (without `<>`).
    pub rcpt_to: Vec<String>,
    /// Dot-unstuffed message bytes, CRLF line ends, without the final ".\r\n".
    pub data: Vec<u8>,
    /// The client declared SMTPUTF8 on MAIL.
    pub smtputf8: bool,
    /// In-flight bytes; the driver drops the transaction after delivery.
    pub reservation: Reservation,
}

/// Deliberately not derived: a `{:?}` of a transaction must never put a sender
/// address or message content into a log (DESIGN invariants 1 and 6).
impl fmt::Debug for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("rcpt_to", &self.rcpt_to.len())
            .field("data", &self.data.len())
            .field("smtputf8", &self.smtputf8)
            .field("reservation", &self.reservation)
            .finish_non_exhaustive()
    }
}

/// Where the session is in the protocol.
enum State {
    /// Reading command lines.
    Command,
    /// Reading message data after `354`; the envelope moved in here from `Command`.
    Data {
        envelope: Envelope,
        reader: DataReader,
        /// When `354` was sent: `data_total_timeout` counts from here.
        started: Instant,
    },
    /// A transaction is out for delivery; input is held in `pending`.
    AwaitingDelivery,
    /// STARTTLS was accepted; plaintext input is discarded until `tls_started`.
    TlsHandshake,
    /// Close was returned; nothing more happens.
    Closed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Command => "command",
            State::Data { .. } => "data",
            State::AwaitingDelivery => "awaiting-delivery",
            State::TlsHandshake => "tls-handshake",
            State::Closed => "closed",
        }
    }
}

/// The envelope of an open transaction (after MAIL, before the end of data).
struct Envelope {
    mail_from: String,
    rcpt_to: Vec<String>,
    smtputf8: bool,
    /// The SIZE parameter: refused at MAIL past the size limit, and at DATA when it does not
    /// fit the budget's free bytes right now; never reserved (issue 16).
    declared_size: Option<usize>,
}

/// One SMTP server session (one connection).
pub struct Session {
    /// Node settings shared by every session.
    config: Arc<SessionConfig>,
    /// Decides RCPT TO; never allows relaying because it only knows our routes.
    recipients: Arc<dyn RecipientPolicy>,
    /// Node-wide bound on message bytes in memory.
    budget: Arc<InFlightBudget>,
    /// The client address's share of `budget` (`smtp.max_in_flight_per_ip`), when bounded.
    client_budget: Option<Arc<InFlightBudget>>,
    /// Protocol state; see [`State`].
    state: State,
    /// The HELO/EHLO argument; MAIL needs it, STARTTLS forgets it (RFC 3207).
    helo: Option<String>,
    /// The TLS handshake completed on this connection.
    tls: bool,
    /// The open transaction in `State::Command` (between MAIL and DATA).
    envelope: Option<Envelope>,
    /// The incomplete command line received so far, at most the limit plus a CR.
    line: Vec<u8>,
    /// The current command line grew past the limit; its bytes are dropped until LF.
    discarding_line: bool,
    /// Input received while a delivery is in progress, processed after it.
    pending: Vec<u8>,
    /// More than [`MAX_PIPELINED_INPUT`] arrived during a delivery.
    pending_overflow: bool,
    /// Permanent command errors in a row, see [`MAX_CONSECUTIVE_ERRORS`].
    consecutive_errors: usize,
    /// When the current command or data line began: the previous line ended (or the phase
    /// began) then. Timeouts count from here, not from the last byte, so a client trickling a
    /// line one byte at a time (slowloris) cannot hold its session past the timeout
    /// (RFC 5321 4.5.3.2.7 bounds the wait for the next *command*, not for its next byte).
    last_input: Instant,
    /// Graceful shutdown requested during DATA or delivery.
    shutdown_requested: bool,
}

impl Session {
    /// A session for a connection accepted at `now`.
    pub fn new(
        config: Arc<SessionConfig>,
        recipients: Arc<dyn RecipientPolicy>,
        budget: Arc<InFlightBudget>,
        now: Instant,
    ) -> Self {
        Session {
            config,
            recipients,
            budget,
            client_budget: None,
            state: State::Command,
            helo: None,
            tls: false,
            envelope: None,
            line: Vec::new(),
            discarding_line: false,
            pending: Vec::new(),
            pending_overflow: false,
            consecutive_errors: 0,
            last_input: now,
            shutdown_requested: false,
        }
    }

    /// Bounds the message bytes this session may hold by its client address's share of the
    /// node's budget, shared with that address's other sessions (issue 16: budget pinning).
    pub fn with_client_budget(mut self, client: Arc<InFlightBudget>) -> Self {
        self.client_budget = Some(client);
        self
    }

    /// The 220 greeting.
    pub fn greeting(&mut self) -> Vec<Action> {
        vec![Action::Reply(Reply::new(
            220,
            format!("{} ESMTP mxnode", self.config.hostname),
        ))]
    }

    /// Bytes from the client. Returns replies/actions in order. After an Action::Deliver the
    /// session stops processing input and buffers further pipelined bytes (bounded) until
    /// delivery_done. Any chunking of the same bytes gives the same actions.
    pub fn feed(&mut self, input: &[u8], now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        // A line ended in this input, so the next one (or the wait for it) starts now. Bytes
        // that only extend the current line leave its deadline where it was.
        if matches!(self.state, State::Command | State::Data { .. }) && input.contains(&b'\n') {
            self.last_input = now;
        }
        self.process(input, &mut out);
        out
    }

    /// The outcome reply of the transaction handed out with Action::Deliver. Emits that reply,
    /// then processes any buffered pipelined input (which may yield StartTls, Deliver or Close
    /// like `feed`). Ignored when no delivery is outstanding.
    pub fn delivery_done(&mut self, reply: Reply, now: Instant) -> Vec<Action> {
        if !matches!(self.state, State::AwaitingDelivery) {
            return Vec::new();
        }
        let mut out = vec![Action::Reply(reply)];
        self.state = State::Command;
        self.last_input = now;
        if self.pending_overflow {
            let text = format!(
                "4.7.0 {} Too much pipelined input, closing connection",
                self.config.hostname
            );
            self.close(Some(Reply::new(421, text)), &mut out);
            return out;
        }
        let pending = mem::take(&mut self.pending);
        self.process(&pending, &mut out);
        out
    }

    /// The TLS handshake after Action::StartTls succeeded: reset to a fresh session (RFC 3207:
    /// forget HELO, transaction), no STARTTLS advertised any more. The client speaks first, so
    /// this normally returns nothing. Ignored unless a handshake was pending. (On a failed
    /// handshake the driver simply drops the connection and the session.)
    pub fn tls_started(&mut self, now: Instant) -> Vec<Action> {
        if !matches!(self.state, State::TlsHandshake) {
            return Vec::new();
        }
        self.state = State::Command;
        self.tls = true;
        self.helo = None;
        self.envelope = None;
        self.line.clear();
        self.discarding_line = false;
        self.pending.clear();
        self.consecutive_errors = 0;
        self.last_input = now;
        let mut out = Vec::new();
        self.process(&[], &mut out);
        out
    }

    /// `(HELO, MAIL FROM)` of the transaction open now, from the accepted `MAIL` until the end
    /// of its data: the driver starts the SPF check with it (DESIGN §11).
    pub fn sender(&self) -> Option<(&str, &str)> {
        let helo = self.helo.as_deref()?;
        match (&self.state, &self.envelope) {
            (State::Command, Some(envelope)) | (State::Data { envelope, .. }, _) => {
                Some((helo, envelope.mail_from.as_str()))
            }
            _ => None,
        }
    }

    /// The header section of the message being received, up to and including the empty line
    /// that ends it, once that line is in and while the rest is still arriving: the driver
    /// starts the authentication lookups with it (DESIGN §11). None in every other state, and
    /// for a message that is no longer stored (refused or over a limit).
    pub fn header_section(&self) -> Option<&[u8]> {
        match &self.state {
            State::Data { reader, .. } => reader.header_section(),
            _ => None,
        }
    }

    /// The TLS handshake completed on this connection.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// When the driver must call `timed_out` if no input arrives (None while waiting for
    /// delivery, and when closed). During a TLS handshake it bounds the handshake.
    pub fn deadline(&self) -> Option<Instant> {
        let timeout = match self.state {
            State::Command | State::TlsHandshake => self.config.command_timeout,
            State::Data { started, .. } => {
                // The next line is due within `data_timeout`, the whole message within
                // `data_total_timeout`: whichever comes first.
                let line = self.last_input.checked_add(self.config.data_timeout);
                let total = started.checked_add(self.config.data_total_timeout);
                return match (line, total) {
                    (Some(line), Some(total)) => Some(line.min(total)),
                    (line, total) => line.or(total),
                };
            }
            State::AwaitingDelivery | State::Closed => return None,
        };
        // A timeout too large to represent means no deadline at all.
        self.last_input.checked_add(timeout)
    }

    /// Deadline passed: 421 4.4.2 and Close. A call before the deadline (the timer raced
    /// with input) returns nothing. During a TLS handshake only Close: the wire belongs to
    /// the handshake, a plaintext reply would be garbage there.
    pub fn timed_out(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match self.deadline() {
            Some(deadline) if now >= deadline => {}
            _ => return out,
        }
        if matches!(self.state, State::TlsHandshake) {
            self.close(None, &mut out);
        } else if let State::Data { started, .. } = self.state
            && started
                .checked_add(self.config.data_total_timeout)
                .is_some_and(|total| now >= total)
        {
            let text = format!(
                "4.4.2 {} Message data took longer than {} s, closing connection",
                self.config.hostname,
                self.config.data_total_timeout.as_secs()
            );
            self.close(Some(Reply::new(421, text)), &mut out);
        } else {
            let text = format!(
                "4.4.2 {} Timeout exceeded, closing connection",
                self.config.hostname
            );
            self.close(Some(Reply::new(421, text)), &mut out);
        }
        out
    }

    /// Graceful shutdown: between commands (also after MAIL/RCPT: no message bytes yet) →
    /// 421 4.3.2 + Close at once; during DATA or delivery → finish it, then 421 4.3.2 + Close
    /// instead of reading the next command.
    /// During a TLS handshake: Close only (no plaintext reply into the handshake).
    pub fn shutdown(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        match self.state {
            State::Closed => {}
            State::TlsHandshake => self.close(None, &mut out),
            // Between commands nothing is lost by closing, even after MAIL/RCPT: the client
            // has sent no message yet and retries later. Waiting for it could hold shutdown
            // for the whole command timeout.
            State::Command => {
                let reply = self.shutdown_reply();
                self.close(Some(reply), &mut out);
            }
            State::Data { .. } | State::AwaitingDelivery => {
                self.shutdown_requested = true;
            }
        }
        out
    }

    /// Close was returned; the session does nothing more.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Runs `input` through the state machine until it is used up or the state stops
    /// reading (delivery, TLS handshake, closed).
    fn process(&mut self, mut input: &[u8], out: &mut Vec<Action>) {
        loop {
            match &mut self.state {
                State::Command => {
                    // "Instead of reading the next command": checked before every
                    // command, also when none is buffered, so an idle client does not
                    // hold up the shutdown.
                    if self.shutdown_requested {
                        let reply = self.shutdown_reply();
                        self.close(Some(reply), out);
                        return;
                    }
                    if input.is_empty() {
                        return;
                    }
                    let used = self.command_input(input, out);
                    input = input.get(used..).unwrap_or_default();
                }
                State::Data { reader, .. } => {
                    if input.is_empty() {
                        return;
                    }
                    let (used, complete) = reader.push(input);
                    input = input.get(used..).unwrap_or_default();
                    if complete {
                        self.finish_data(out);
                    }
                }
                State::AwaitingDelivery => {
                    self.hold(input);
                    return;
                }
                // CVE-2011-0411: plaintext behind STARTTLS is dropped, never executed.
                State::TlsHandshake | State::Closed => return,
            }
        }
    }

    /// Consumes command input up to and including the next LF (or all of it when there is
    /// none) and executes a completed line. Returns the bytes used.
    fn command_input(&mut self, input: &[u8], out: &mut Vec<Action>) -> usize {
        let Some(lf) = input.iter().position(|&b| b == b'\n') else {
            self.buffer_partial_line(input);
            return input.len();
        };
        let piece = input.get(..lf).unwrap_or_default();
        // The limit plus one byte leaves room for the CR of the CRLF.
        if self.discarding_line || self.line.len() + piece.len() > MAX_COMMAND_LINE_LENGTH + 1 {
            self.discarding_line = false;
            self.line.clear();
            self.command_reply(Reply::new(500, "5.5.2 Line too long"), out);
            return lf + 1;
        }
        let mut line = mem::take(&mut self.line);
        line.extend_from_slice(piece);
        // CRLF is the line end; a bare LF is accepted leniently for commands (never in
        // DATA). Only one CR is stripped: any other CR is a control character below.
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > MAX_COMMAND_LINE_LENGTH {
            self.command_reply(Reply::new(500, "5.5.2 Line too long"), out);
        } else {
            self.execute(&line, out);
        }
        line.clear();
        self.line = line;
        lf + 1
    }

    fn buffer_partial_line(&mut self, input: &[u8]) {
        if self.discarding_line {
            return;
        }
        if self.line.len() + input.len() > MAX_COMMAND_LINE_LENGTH + 1 {
            self.discarding_line = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(input);
        }
    }

    /// Executes one command line (without its line ending).
    fn execute(&mut self, line: &[u8], out: &mut Vec<Action>) {
        let Ok(text) = std::str::from_utf8(line) else {
            let reply = Reply::new(500, "5.5.2 Syntax error: invalid UTF-8 in command");
            return self.command_reply(reply, out);
        };
        // NUL, bare CR, TAB, DEL, C1: no SMTP command contains them, and a CR inside a
        // line is how a second command would be smuggled past a line-based filter.
        if text.chars().any(char::is_control) {
            let reply = Reply::new(500, "5.5.2 Syntax error: control character in command");
            return self.command_reply(reply, out);
        }
        let (verb, argument) = text.split_once(' ').unwrap_or((text, ""));
        let verb = verb.to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => self.hello(argument, true),
            "HELO" => self.hello(argument, false),
            "MAIL" => self.mail(argument),
            "RCPT" => self.rcpt(argument),
            "DATA" => self.data(argument),
            "RSET" => self.rset(argument),
            "NOOP" => Reply::new(250, "2.0.0 Ok"),
            "QUIT" => {
                out.push(Action::Reply(Reply::new(221, "2.0.0 Bye")));
                return self.close(None, out);
            }
            "VRFY" if argument.trim().is_empty() => Reply::new(501, "5.5.4 Syntax: VRFY address"),
            // RFC 5321 3.5.3: 252 when the server will not verify. Address harvesting
            // learns nothing; RCPT gives the real answer.
            "VRFY" => Reply::new(252, "2.5.0 Cannot VRFY user; send RCPT to find out"),
            "EXPN" => Reply::new(502, "5.5.1 EXPN not supported"),
            "HELP" => Reply::new(
                214,
                "2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS",
            ),
            "STARTTLS" => return self.starttls(argument, out),
            verb if HTTP_VERBS.contains(&verb) => {
                let text = format!(
                    "4.7.0 {} This is an SMTP server, closing connection",
                    self.config.hostname
                );
                return self.close(Some(Reply::new(421, text)), out);
            }
            _ => Reply::new(500, "5.5.1 Command unrecognized"),
        };
        self.command_reply(reply, out);
    }

    /// EHLO/HELO: names the client and resets any transaction (RFC 5321 4.1.4).
    fn hello(&mut self, argument: &str, extended: bool) -> Reply {
        let Some(domain) = argument.split_whitespace().next() else {
            let text = if extended {
                "5.5.4 Syntax: EHLO hostname"
            } else {
                "5.5.4 Syntax: HELO hostname"
            };
            return Reply::new(501, text);
        };
        self.helo = Some(domain.to_owned());
        self.envelope = None;
        if !extended {
            return Reply::new(250, self.config.hostname.clone());
        }
        let mut lines = vec![
            self.config.hostname.clone(),
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
        ];
        if self.config.starttls_available && !self.tls {
            lines.push("STARTTLS".to_owned());
        }
        Reply::with_lines(250, lines)
    }

    fn mail(&mut self, argument: &str) -> Reply {
        if self.helo.is_none() {
            return Reply::new(503, "5.5.1 Send HELO/EHLO first");
        }
        if self.envelope.is_some() {
            return Reply::new(503, "5.5.1 Nested MAIL command");
        }
        let Some(rest) = strip_prefix_ignore_case(argument.trim(), "FROM:") else {
            return Reply::new(501, "5.5.4 Syntax: MAIL FROM:<address>");
        };
        let Some((address, parameters)) = parse_path(rest.trim_start(), false) else {
            return Reply::new(501, "5.1.7 Bad sender address syntax");
        };
        let parameters = match parse_mail_parameters(parameters) {
            Ok(parameters) => parameters,
            Err(reply) => return reply,
        };
        if parameters
            .size
            .is_some_and(|size| size > self.config.max_message_size)
        {
            return too_large();
        }
        if !address.is_ascii() && !parameters.smtputf8 {
            return Reply::new(553, "5.6.7 Non-ASCII address requires SMTPUTF8");
        }
        self.envelope = Some(Envelope {
            mail_from: address,
            rcpt_to: Vec::new(),
            smtputf8: parameters.smtputf8,
            declared_size: parameters.size,
        });
        Reply::new(250, "2.1.0 Ok")
    }

    fn rcpt(&mut self, argument: &str) -> Reply {
        let Some(envelope) = self.envelope.as_mut() else {
            return Reply::new(503, "5.5.1 Need MAIL before RCPT");
        };
        let Some(rest) = strip_prefix_ignore_case(argument.trim(), "TO:") else {
            return Reply::new(501, "5.5.4 Syntax: RCPT TO:<address>");
        };
        let path = parse_path(rest.trim_start(), true).filter(|(address, _)| !address.is_empty());
        let Some((address, parameters)) = path else {
            return Reply::new(501, "5.1.3 Bad recipient address syntax");
        };
        if !parameters.trim().is_empty() {
            // We advertise no RCPT extension (no DSN).
            return Reply::new(555, "5.5.4 Unsupported RCPT parameter");
        }
        if !address.is_ascii() && !envelope.smtputf8 {
            return Reply::new(553, "5.6.7 Non-ASCII address requires SMTPUTF8");
        }
        if let Some(text) = self.recipients.deferred() {
            return Reply::new(451, format!("4.3.0 {text}"));
        }
        if envelope.rcpt_to.len() >= self.config.max_recipients {
            return Reply::new(452, "4.5.3 Too many recipients");
        }
        // The policy knows only our routes, so relaying is impossible by construction.
        // The address is not echoed: replies must not reflect client input.
        if !self.recipients.accepts(&address) {
            return Reply::new(550, "5.1.1 Recipient address rejected: no route");
        }
        if let Some(first) = envelope.rcpt_to.first()
            && self.recipients.transaction_group(first)
                != self.recipients.transaction_group(&address)
        {
            return Reply::new(
                452,
                "4.5.3 Send this recipient in a separate transaction (its route's policy differs)",
            );
        }
        envelope.rcpt_to.push(address);
        Reply::new(250, "2.1.5 Ok")
    }

    fn data(&mut self, argument: &str) -> Reply {
        if !argument.trim().is_empty() {
            return Reply::new(501, "5.5.4 Syntax: DATA");
        }
        let Some(envelope) = self.envelope.take() else {
            return Reply::new(503, "5.5.1 Need MAIL before DATA");
        };
        if let Some(text) = self.recipients.deferred() {
            self.envelope = Some(envelope);
            return Reply::new(451, format!("4.3.0 {text}"));
        }
        if envelope.rcpt_to.is_empty() {
            self.envelope = Some(envelope);
            return Reply::new(554, "5.5.1 No valid recipients");
        }
        // Nothing is reserved up front, not even a declared SIZE: the reservation grows as
        // bytes arrive, so holding the budget costs a client the bytes themselves (issue 16).
        // A declared size that cannot fit what is free right now is turned away before its
        // bytes are sent; it holds nothing either way.
        let free = self.budget.available().min(
            self.client_budget
                .as_ref()
                .map_or(usize::MAX, |client| client.available()),
        );
        let Some(reservation) = self
            .budget
            .try_reserve_within(self.client_budget.as_ref(), 0)
            .filter(|_| envelope.declared_size.is_none_or(|size| size <= free))
        else {
            self.envelope = Some(envelope);
            return Reply::new(452, "4.3.1 Insufficient system resources");
        };
        self.state = State::Data {
            envelope,
            reader: DataReader::new(reservation, self.config.max_message_size),
            started: self.last_input,
        };
        Reply::new(354, "End data with <CR><LF>.<CR><LF>")
    }

    fn rset(&mut self, argument: &str) -> Reply {
        if !argument.trim().is_empty() {
            return Reply::new(501, "5.5.4 Syntax: RSET");
        }
        self.envelope = None;
        Reply::new(250, "2.0.0 Ok")
    }

    fn starttls(&mut self, argument: &str, out: &mut Vec<Action>) {
        let refusal = if !argument.trim().is_empty() {
            Some(Reply::new(501, "5.5.4 Syntax: STARTTLS"))
        } else if !self.config.starttls_available {
            Some(Reply::new(502, "5.5.1 STARTTLS not available"))
        } else if self.tls {
            Some(Reply::new(503, "5.5.1 TLS already active"))
        } else if self.envelope.is_some() {
            Some(Reply::new(
                503,
                "5.5.1 STARTTLS not allowed inside a transaction",
            ))
        } else {
            None
        };
        if let Some(reply) = refusal {
            return self.command_reply(reply, out);
        }
        self.consecutive_errors = 0;
        out.push(Action::Reply(Reply::new(220, "2.0.0 Ready to start TLS")));
        out.push(Action::StartTls);
        self.state = State::TlsHandshake;
        // Everything already received behind the STARTTLS line is plaintext the client
        // must not have sent; `process` drops the rest of the current input.
        self.line.clear();
        self.discarding_line = false;
        self.pending.clear();
    }

    /// The terminator was seen: hand the message out or refuse it.
    fn finish_data(&mut self, out: &mut Vec<Action>) {
        let state = mem::replace(&mut self.state, State::Command);
        let State::Data {
            envelope, reader, ..
        } = state
        else {
            self.state = state;
            return;
        };
        match reader.finish() {
            Ok((data, reservation)) => {
                out.push(Action::Deliver(Transaction {
                    helo: self.helo.clone().unwrap_or_default(),
                    mail_from: envelope.mail_from,
                    rcpt_to: envelope.rcpt_to,
                    data,
                    smtputf8: envelope.smtputf8,
                    reservation,
                }));
                self.state = State::AwaitingDelivery;
            }
            Err(reply) => out.push(Action::Reply(reply)),
        }
    }

    /// Keeps input that arrives during a delivery, up to [`MAX_PIPELINED_INPUT`].
    fn hold(&mut self, input: &[u8]) {
        if self.pending_overflow || input.is_empty() {
            return;
        }
        if self.pending.len() + input.len() > MAX_PIPELINED_INPUT {
            self.pending_overflow = true;
            self.pending = Vec::new();
        } else {
            self.pending.extend_from_slice(input);
        }
    }

    /// Sends the reply to a command and keeps the count of permanent errors in a row.
    /// Only 5xx count: 4xx here means our limits (budget, recipients), not a bad client.
    fn command_reply(&mut self, reply: Reply, out: &mut Vec<Action>) {
        if reply.is_positive() {
            self.consecutive_errors = 0;
        } else if reply.is_permanent_failure() {
            self.consecutive_errors += 1;
        }
        out.push(Action::Reply(reply));
        if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
            let text = format!(
                "4.7.0 {} Too many errors, closing connection",
                self.config.hostname
            );
            self.close(Some(Reply::new(421, text)), out);
        }
    }

    fn shutdown_reply(&self) -> Reply {
        Reply::new(
            421,
            format!(
                "4.3.2 {} Service shutting down, closing connection",
                self.config.hostname
            ),
        )
    }

    /// Ends the session: an optional last reply, then Close. Drops the envelope, any
    /// message bytes (releasing their reservation) and buffered input.
    fn close(&mut self, reply: Option<Reply>, out: &mut Vec<Action>) {
        if let Some(reply) = reply {
            out.push(Action::Reply(reply));
        }
        out.push(Action::Close);
        self.state = State::Closed;
        self.envelope = None;
        self.line = Vec::new();
        self.pending = Vec::new();
    }
}

impl fmt::Debug for Session {
    /// Protocol state only: no addresses, no content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state.name())
            .field("tls", &self.tls)
            .field("helo_seen", &self.helo.is_some())
            .field("in_transaction", &self.envelope.is_some())
            .field("pending", &self.pending.len())
            .field("consecutive_errors", &self.consecutive_errors)
            .field("shutdown_requested", &self.shutdown_requested)
            .finish_non_exhaustive()
    }
}

fn too_large() -> Reply {
    Reply::new(552, "5.3.4 Message size exceeds fixed maximum message size")
}

/// `prefix` (ASCII) at the start of `s`, compared without case.
fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.as_bytes().get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix.as_bytes()) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Parses `<path>` at the start of `s` (RFC 5321 4.1.2 Reverse-path / Forward-path).
/// Returns the mailbox without `<>` and source route (`""` for `<>`) and the text after
/// the closing bracket (the parameters). `allow_postmaster` admits the bare
/// `<Postmaster>` of RCPT (RFC 5321 4.5.1). None on any syntax error.
fn parse_path(s: &str, allow_postmaster: bool) -> Option<(String, &str)> {
    let inner_and_rest = s.strip_prefix('<')?;
    // Find the closing '>' outside a quoted local part ("a>b"@c is one address).
    let mut in_quotes = false;
    let mut escaped = false;
    let mut end = None;
    for (i, c) in inner_and_rest.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if c == '>' && !in_quotes {
            end = Some(i);
            break;
        }
    }
    let end = end?;
    let inner = inner_and_rest.get(..end)?;
    let rest = inner_and_rest.get(end + 1..)?;
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    if inner.is_empty() {
        return Some((String::new(), rest));
    }
    // RFC 5321 4.1.1.3 / appendix C: a source route `@a,@b:` is accepted and ignored.
    let mailbox = if inner.starts_with('@') {
        let (route, mailbox) = inner.split_once(':')?;
        if !route
            .split(',')
            .all(|hop| hop.strip_prefix('@').is_some_and(is_domain))
        {
            return None;
        }
        mailbox
    } else {
        inner
    };
    if allow_postmaster && mailbox.eq_ignore_ascii_case("postmaster") {
        return Some((mailbox.to_owned(), rest));
    }
    is_mailbox(mailbox).then(|| (mailbox.to_owned(), rest))
}

/// `local@domain` per RFC 5321 4.1.2, with RFC 6531 non-ASCII allowed (whether the
/// transaction may use it is checked separately, so the error can say why).
fn is_mailbox(mailbox: &str) -> bool {
    let (local, domain) = if let Some(quoted) = mailbox.strip_prefix('"') {
        // Quoted-string: qtextSMTP or quoted-pair, then the closing quote and '@'.
        let mut escaped = false;
        let mut close = None;
        for (i, c) in quoted.char_indices() {
            if escaped {
                if !(' '..='~').contains(&c) {
                    return false;
                }
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                close = Some(i);
                break;
            } else if c.is_ascii() && !(' '..='~').contains(&c) {
                return false;
            }
        }
        let Some(close) = close else { return false };
        let Some(after) = quoted.get(close + 1..) else {
            return false;
        };
        let Some(domain) = after.strip_prefix('@') else {
            return false;
        };
        (mailbox.get(..close + 2).unwrap_or_default(), domain)
    } else {
        let Some((local, domain)) = mailbox.split_once('@') else {
            return false;
        };
        let atext = |c: char| {
            !c.is_ascii() || c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c)
        };
        if local.is_empty() || !local.chars().all(atext) {
            return false;
        }
        (local, domain)
    };
    !local.is_empty() && (is_domain(domain) || is_address_literal(domain))
}

/// Dot-separated labels of letters, digits, '-' ('_' tolerated), or non-ASCII (U-labels).
fn is_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| !c.is_ascii() || c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// `[192.0.2.1]`, `[IPv6:…]`: printable ASCII without brackets or backslash inside.
fn is_address_literal(domain: &str) -> bool {
    domain
        .strip_prefix('[')
        .and_then(|d| d.strip_suffix(']'))
        .is_some_and(|inner| {
            !inner.is_empty()
                && inner
                    .chars()
                    .all(|c| ('!'..='~').contains(&c) && !matches!(c, '[' | ']' | '\\'))
        })
}

/// The MAIL parameters we implement.
#[derive(Debug, Default)]
struct MailParameters {
    /// RFC 1870 SIZE; saturates at `usize::MAX` (which is too large anyway).
    size: Option<usize>,
    /// RFC 6531 SMTPUTF8.
    smtputf8: bool,
}

/// RFC 5321 4.1.2 Mail-parameters: `SIZE=n`, `BODY=7BIT|8BITMIME`, `SMTPUTF8`.
fn parse_mail_parameters(text: &str) -> Result<MailParameters, Reply> {
    let mut parameters = MailParameters::default();
    let mut body_seen = false;
    let duplicate = || Reply::new(501, "5.5.4 Duplicate MAIL parameter");
    for parameter in text.split(' ').filter(|p| !p.is_empty()) {
        let (keyword, value) = match parameter.split_once('=') {
            Some((keyword, value)) => (keyword, Some(value)),
            None => (parameter, None),
        };
        if keyword.eq_ignore_ascii_case("SIZE") {
            let Some(digits) =
                value.filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            else {
                return Err(Reply::new(501, "5.5.4 Invalid SIZE parameter"));
            };
            if parameters.size.is_some() {
                return Err(duplicate());
            }
            parameters.size = Some(digits.parse().unwrap_or(usize::MAX));
        } else if keyword.eq_ignore_ascii_case("BODY") {
            let known = value.is_some_and(|v| {
                v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME")
            });
            if !known {
                return Err(Reply::new(501, "5.5.4 Invalid BODY parameter"));
            }
            if body_seen {
                return Err(duplicate());
            }
            body_seen = true;
        } else if keyword.eq_ignore_ascii_case("SMTPUTF8") {
            if value.is_some() {
                return Err(Reply::new(501, "5.5.4 SMTPUTF8 takes no value"));
            }
            if parameters.smtputf8 {
                return Err(duplicate());
            }
            parameters.smtputf8 = true;
        } else {
            return Err(Reply::new(555, "5.5.4 Unsupported MAIL parameter"));
        }
    }
    Ok(parameters)
}

/// Position of the DATA reader relative to the `<CRLF>.<CRLF>` terminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinePosition {
    /// After a CRLF (or right after the DATA command's CRLF, RFC 5321 4.1.1.4).
    LineStart,
    /// Inside a line.
    Text,
    /// A CR inside a line; stored only once the LF follows.
    Cr,
    /// A '.' at the start of a line: the terminator or a stuffed dot.
    Dot,
    /// ".\r" at the start of a line: one LF from the terminator.
    DotCr,
}

/// Why a message was refused at its terminator although the transfer completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataDefect {
    /// A CR or LF outside a CRLF pair (CVE-2023-51764 class).
    BareLineEnding,
    /// A NUL byte: forbidden in SMTP text (RFC 5321 4.1.1.4, RFC 6152) and used to
    /// hide terminators from some implementations (`\r\n\0.\r\n`).
    Nul,
}

/// The byte-fed DATA state machine: finds the exact terminator whatever the chunking,
/// unstuffs dots, detects smuggling defects and stores the message within its limits.
struct DataReader {
    /// Where we are relative to the terminator.
    position: LinePosition,
    /// Unstuffed message bytes seen, counted even when no longer stored.
    size: usize,
    /// `max_message_size`; nothing beyond it is stored.
    max_size: usize,
    /// The first defect found; the message will be refused.
    defect: Option<DataDefect>,
    /// The budget could not grow; the message will be tempfailed.
    budget_exhausted: bool,
    /// The stored message; its capacity never exceeds the reservation.
    data: Vec<u8>,
    /// Budget held for `data`; None once storing stopped.
    reservation: Option<Reservation>,
    /// Length of the header section in `data` (through its empty line), once it is in.
    header_end: Option<usize>,
}

impl DataReader {
    fn new(reservation: Reservation, max_size: usize) -> Self {
        DataReader {
            position: LinePosition::LineStart,
            size: 0,
            max_size,
            defect: None,
            budget_exhausted: false,
            data: Vec::with_capacity(reservation.bytes()),
            reservation: Some(reservation),
            header_end: None,
        }
    }

    /// The stored header section, once its empty line is in.
    fn header_section(&self) -> Option<&[u8]> {
        self.header_end.and_then(|end| self.data.get(..end))
    }

    /// Consumes bytes up to and including the terminator. Returns the bytes used and
    /// whether the terminator was reached.
    fn push(&mut self, input: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while let Some(rest) = input.get(i..).filter(|rest| !rest.is_empty()) {
            if self.position == LinePosition::Text {
                // Fast path: plain text up to the next byte that matters.
                let run = memchr::memchr3(b'\r', b'\n', 0, rest).unwrap_or(rest.len());
                if run > 0 {
                    self.store(rest.get(..run).unwrap_or_default());
                    i += run;
                    continue;
                }
            }
            let Some(&byte) = rest.first() else { break };
            i += 1;
            if self.step(byte) {
                return (i, true);
            }
        }
        (input.len(), false)
    }

    /// One byte; true when it completes the terminator.
    fn step(&mut self, byte: u8) -> bool {
        match self.position {
            LinePosition::LineStart if byte == b'.' => self.position = LinePosition::Dot,
            LinePosition::LineStart | LinePosition::Text => self.text_byte(byte),
            LinePosition::Cr if byte == b'\n' => {
                self.store(b"\r\n");
                self.position = LinePosition::LineStart;
                // An empty line ends the header section (one at the very start: no headers).
                if self.header_end.is_none()
                    && self.reservation.is_some()
                    && (self.data.ends_with(b"\r\n\r\n") || self.data == b"\r\n")
                {
                    self.header_end = Some(self.data.len());
                }
            }
            LinePosition::Cr => {
                self.set_defect(DataDefect::BareLineEnding);
                self.text_byte(byte);
            }
            LinePosition::Dot if byte == b'\r' => self.position = LinePosition::DotCr,
            // RFC 5321 4.5.2: a line starting with a dot loses that dot. The next byte
            // is ordinary text (a bare LF or NUL here is a defect like anywhere else).
            LinePosition::Dot => self.text_byte(byte),
            LinePosition::DotCr if byte == b'\n' => return true,
            // ".\r" not followed by LF: a bare CR, never an end of data.
            LinePosition::DotCr => {
                self.set_defect(DataDefect::BareLineEnding);
                self.text_byte(byte);
            }
        }
        false
    }

    /// A byte inside a line (or starting one that is not a dot).
    fn text_byte(&mut self, byte: u8) {
        self.position = LinePosition::Text;
        match byte {
            b'\r' => self.position = LinePosition::Cr,
            // A bare LF never starts a line: only CRLF can precede the terminator.
            b'\n' => self.set_defect(DataDefect::BareLineEnding),
            0 => self.set_defect(DataDefect::Nul),
            _ => self.store(&[byte]),
        }
    }

    fn set_defect(&mut self, defect: DataDefect) {
        if self.defect.is_none() {
            self.defect = Some(defect);
        }
        // The message will be refused: give its memory back now, not at the terminator.
        self.stop_storing();
    }

    fn stop_storing(&mut self) {
        self.data = Vec::new();
        self.reservation = None;
    }

    /// Counts unstuffed message bytes and stores them while within every limit.
    fn store(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len());
        if self.defect.is_some() || self.budget_exhausted || self.reservation.is_none() {
            return;
        }
        if self.size > self.max_size {
            self.stop_storing();
            return;
        }
        if !self.ensure_capacity(self.size) {
            self.budget_exhausted = true;
            self.stop_storing();
            return;
        }
        self.data.extend_from_slice(bytes);
    }

    /// Makes room for `needed` bytes, growing the reservation first so that allocated
    /// message memory never exceeds what the budget granted.
    fn ensure_capacity(&mut self, needed: usize) -> bool {
        if needed <= self.data.capacity() {
            return true;
        }
        let Some(reservation) = self.reservation.as_mut() else {
            return false;
        };
        let held = reservation.bytes();
        if needed > held {
            // Geometric growth keeps reallocations logarithmic; when the budget cannot
            // give that much, halve down to exactly what is needed, so a message that
            // fits the budget is never refused for the sake of headroom.
            let minimum = needed - held;
            let generous = held
                .saturating_mul(2)
                .max(DATA_GROWTH_STEP)
                .min(self.max_size)
                .max(needed);
            let mut additional = generous - held;
            while !reservation.try_grow(additional) {
                if additional == minimum {
                    return false;
                }
                additional = (additional / 2).max(minimum);
            }
        }
        let target = reservation.bytes();
        self.data
            .reserve_exact(target.saturating_sub(self.data.len()));
        true
    }

    /// The outcome at the terminator: the message and its reservation, or the refusal.
    /// A smuggling defect wins over size, size over the (temporary) budget failure.
    fn finish(self) -> Result<(Vec<u8>, Reservation), Reply> {
        match self.defect {
            Some(DataDefect::BareLineEnding) => {
                return Err(Reply::new(
                    550,
                    "5.6.0 Message refused: bare CR or LF in message (SMTP smuggling protection)",
                ));
            }
            Some(DataDefect::Nul) => {
                return Err(Reply::new(
                    550,
                    "5.6.0 Message refused: NUL byte in message (SMTP smuggling protection)",
                ));
            }
            None => {}
        }
        if self.size > self.max_size {
            return Err(too_large());
        }
        match self.reservation {
            Some(mut reservation) if !self.budget_exhausted => {
                // Growth doubles the buffer; the message is held until its reply, so the
                // headroom goes back to the allocator and to the in-flight budget now.
                let mut data = self.data;
                data.shrink_to_fit();
                reservation.shrink_to(data.capacity());
                Ok((data, reservation))
            }
            _ => Err(Reply::new(
                451,
                "4.3.1 Insufficient system resources, try again later",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const HOST: &str = "mx.test";
    const MILLI: Duration = Duration::from_millis(1);
    /// EHLO, MAIL and one accepted RCPT: the start of most scripts.
    const ENVELOPE: &str =
        "EHLO client.test\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@in.test>\r\n";
    /// The replies to [`ENVELOPE`].
    const ENVELOPE_OK: &str = "250; 250 2.1.0; 250 2.1.5";

    /// The knobs a test can turn; everything else is a fixed small session.
    #[derive(Clone)]
    struct Setup {
        max_message_size: usize,
        max_recipients: usize,
        starttls: bool,
        budget: usize,
        /// What the fake delivery answers to every transaction.
        delivery_reply: Reply,
    }

    impl Default for Setup {
        fn default() -> Self {
            Setup {
                max_message_size: 200,
                max_recipients: 3,
                starttls: true,
                budget: 10_000,
                delivery_reply: Reply::new(250, "2.0.0 queued"),
            }
        }
    }

    impl Setup {
        fn config(&self) -> Arc<SessionConfig> {
            Arc::new(SessionConfig {
                max_message_size: self.max_message_size,
                max_recipients: self.max_recipients,
                starttls_available: self.starttls,
                ..SessionConfig::new(HOST)
            })
        }
    }

    /// Routes `*@in.test` and `postmaster`; remembers every address it was asked about,
    /// so tests can prove a smuggled or injected RCPT never reached it.
    #[derive(Default)]
    struct RecordingPolicy {
        queries: Mutex<Vec<String>>,
    }

    impl RecipientPolicy for RecordingPolicy {
        fn accepts(&self, address: &str) -> bool {
            self.queries
                .lock()
                .expect("policy lock is not poisoned")
                .push(address.to_owned());
            let lower = address.to_lowercase();
            lower.ends_with("@in.test") || lower == "postmaster"
        }

        /// `enforce-…@in.test` stands for a route of another group (one enforcing DMARC).
        fn transaction_group(&self, address: &str) -> u8 {
            u8::from(address.to_lowercase().starts_with("enforce-"))
        }
    }

    /// A script is client bytes with driver events in between.
    #[derive(Debug, Clone)]
    enum Segment {
        Bytes(Vec<u8>),
        /// `<<TLS>>`: the handshake succeeded.
        Tls,
        /// `<<SHUTDOWN>>`: graceful shutdown requested.
        Shutdown,
        /// `<<TIMEOUT>>`: no input until the deadline.
        Timeout,
    }

    fn parse_script(script: &[u8]) -> Vec<Segment> {
        let markers: [(&[u8], Segment); 3] = [
            (b"<<TLS>>", Segment::Tls),
            (b"<<SHUTDOWN>>", Segment::Shutdown),
            (b"<<TIMEOUT>>", Segment::Timeout),
        ];
        let mut segments = Vec::new();
        let mut bytes = Vec::new();
        let mut i = 0;
        'outer: while i < script.len() {
            for (marker, segment) in &markers {
                if script[i..].starts_with(marker) {
                    segments.push(Segment::Bytes(mem::take(&mut bytes)));
                    segments.push(segment.clone());
                    i += marker.len();
                    continue 'outer;
                }
            }
            bytes.push(script[i]);
            i += 1;
        }
        segments.push(Segment::Bytes(bytes));
        segments
    }

    /// A delivered transaction, compared across chunkings.
    #[derive(Debug, PartialEq)]
    struct Delivered {
        helo: String,
        mail_from: String,
        rcpt_to: Vec<String>,
        data: Vec<u8>,
        smtputf8: bool,
    }

    /// Everything observable about one run of a script.
    #[derive(Debug, PartialEq, Default)]
    struct Outcome {
        /// Each action rendered: "250 2.0.0 Ok", "deliver", "starttls", "close".
        actions: Vec<String>,
        delivered: Vec<Delivered>,
        /// Addresses the recipient policy was asked about.
        queries: Vec<String>,
        tls: bool,
        closed: bool,
    }

    fn render(reply: &Reply) -> String {
        format!("{} {}", reply.code, reply.lines.join(" / "))
    }

    /// Plays the driver: runs `segments` feeding each byte segment in the chunk sizes
    /// `chunks(len)` gives, answers every Deliver with the setup's reply at once, and
    /// checks the invariants the driver relies on after every call.
    fn run(setup: &Setup, segments: &[Segment], chunks: &dyn Fn(usize) -> Vec<usize>) -> Outcome {
        let policy = Arc::new(RecordingPolicy::default());
        let budget = InFlightBudget::new(setup.budget);
        let mut now = Instant::now();
        let mut session = Session::new(setup.config(), policy.clone(), budget.clone(), now);
        let mut outcome = Outcome::default();

        let greeting = session.greeting();
        assert!(
            matches!(&greeting[..], [Action::Reply(r)] if render(r) == "220 mx.test ESMTP mxnode"),
            "greeting: {greeting:?}"
        );
        for segment in segments {
            let batches = match segment {
                Segment::Bytes(bytes) => {
                    let sizes = chunks(bytes.len());
                    assert_eq!(sizes.iter().sum::<usize>(), bytes.len());
                    let mut offset = 0;
                    for size in sizes {
                        now += MILLI;
                        let batch = session.feed(&bytes[offset..offset + size], now);
                        offset += size;
                        // Record at once: deliveries are answered before the next read.
                        record(&mut outcome, &mut session, setup, &budget, batch, now);
                    }
                    Vec::new()
                }
                Segment::Tls => vec![session.tls_started(now)],
                Segment::Shutdown => vec![session.shutdown()],
                Segment::Timeout => match session.deadline() {
                    Some(deadline) => {
                        let early = session.timed_out(deadline - MILLI);
                        assert!(early.is_empty(), "timed out before the deadline: {early:?}");
                        now = deadline;
                        vec![session.timed_out(now)]
                    }
                    None => {
                        outcome.actions.push("no deadline".to_owned());
                        Vec::new()
                    }
                },
            };
            for batch in batches {
                record(&mut outcome, &mut session, setup, &budget, batch, now);
            }
        }
        outcome.queries = policy.queries.lock().expect("policy lock").clone();
        outcome.tls = session.is_tls();
        outcome.closed = session.is_closed();
        drop(session);
        assert_eq!(budget.used(), 0, "every reservation is released");
        outcome
    }

    fn record(
        outcome: &mut Outcome,
        session: &mut Session,
        setup: &Setup,
        budget: &InFlightBudget,
        mut batch: Vec<Action>,
        now: Instant,
    ) {
        loop {
            let count = batch.len();
            let mut delivered = false;
            for (i, action) in batch.into_iter().enumerate() {
                let last = i + 1 == count;
                match action {
                    Action::Reply(reply) => outcome.actions.push(render(&reply)),
                    Action::StartTls => outcome.actions.push("starttls".to_owned()),
                    Action::Close => {
                        assert!(last, "Close is the last action");
                        assert!(session.is_closed());
                        outcome.actions.push("close".to_owned());
                    }
                    Action::Deliver(transaction) => {
                        assert!(last, "Deliver is the last action of its batch");
                        assert_eq!(session.deadline(), None, "no timeout during delivery");
                        let held = transaction.reservation.bytes();
                        assert!(
                            held >= transaction.data.len(),
                            "data is within its reservation"
                        );
                        assert!(held <= setup.max_message_size.max(transaction.data.len()));
                        assert!(budget.used() >= held);
                        outcome.actions.push("deliver".to_owned());
                        outcome.delivered.push(Delivered {
                            helo: transaction.helo.clone(),
                            mail_from: transaction.mail_from.clone(),
                            rcpt_to: transaction.rcpt_to.clone(),
                            data: transaction.data.clone(),
                            smtputf8: transaction.smtputf8,
                        });
                        delivered = true;
                    }
                }
            }
            if !delivered {
                break;
            }
            batch = session.delivery_done(setup.delivery_reply.clone(), now);
        }
        assert!(budget.used() <= budget.limit());
        assert_eq!(session.deadline().is_none(), session.is_closed());
    }

    /// `expect` is `;`-separated: each item matches one action, either exactly or as a
    /// prefix ending at a word ("250 2.1.0" matches "250 2.1.0 Ok"); "=…" demands the
    /// whole rendering.
    fn assert_actions(actual: &[String], expect: &str, script: &[u8]) {
        let expected: Vec<&str> = expect
            .split(';')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        let matches = actual.len() == expected.len()
            && actual
                .iter()
                .zip(&expected)
                .all(|(a, e)| match e.strip_prefix('=') {
                    Some(exact) => a == exact,
                    None => a == e || a.starts_with(&format!("{e} ")),
                });
        assert!(
            matches,
            "script {:?}\nexpected {expected:#?}\nactual {actual:#?}",
            String::from_utf8_lossy(script)
        );
    }

    fn check(script: impl AsRef<[u8]>, expect: &str) -> Outcome {
        check_with(&Setup::default(), script, expect)
    }

    /// The one test driver: runs `script` in one feed and checks the actions against
    /// `expect`, then runs it again fed byte by byte, split in two at every position and
    /// in several fixed chunk sizes, and demands exactly the same outcome each time.
    fn check_with(setup: &Setup, script: impl AsRef<[u8]>, expect: &str) -> Outcome {
        let script = script.as_ref();
        let segments = parse_script(script);
        let reference = run(setup, &segments, &|len| vec![len]);
        assert_actions(&reference.actions, expect, script);

        let same = |outcome: Outcome, how: &str| {
            assert!(
                outcome == reference,
                "script {:?} fed {how} differs\none feed: {reference:#?}\n{how}: {outcome:#?}",
                String::from_utf8_lossy(script)
            );
        };
        same(run(setup, &segments, &|len| vec![1; len]), "byte by byte");
        let longest = segments
            .iter()
            .map(|s| match s {
                Segment::Bytes(b) => b.len(),
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        for at in 0..=longest {
            let split = |len: usize| vec![at.min(len), len - at.min(len)];
            same(run(setup, &segments, &split), &format!("split at {at}"));
        }
        for size in [2, 3, 5, 8, 13, 64] {
            let sizes = |len: usize| {
                let mut sizes = vec![size; len / size];
                sizes.push(len % size);
                sizes
            };
            same(
                run(setup, &segments, &sizes),
                &format!("in chunks of {size}"),
            );
        }
        reference
    }

    fn ehlo_lines(starttls: bool) -> String {
        let mut lines = "=250 mx.test / PIPELINING / SIZE 200 / 8BITMIME / SMTPUTF8 / \
                         ENHANCEDSTATUSCODES"
            .to_owned();
        if starttls {
            lines.push_str(" / STARTTLS");
        }
        lines
    }

    #[test]
    fn ehlo_advertises_the_extensions_and_starttls_only_when_available() {
        check("EHLO client.test\r\n", &ehlo_lines(true));
        let without = Setup {
            starttls: false,
            ..Setup::default()
        };
        check_with(&without, "EHLO client.test\r\n", &ehlo_lines(false));
        let after_tls = format!("220 2.0.0; starttls; {}", ehlo_lines(false));
        check("STARTTLS\r\n<<TLS>>EHLO client.test\r\n", &after_tls);
    }

    #[test]
    fn a_transaction_is_delivered_with_its_envelope() {
        let outcome = check(
            format!("{ENVELOPE}DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n"),
            &format!(
                "{ENVELOPE_OK}; =354 End data with <CR><LF>.<CR><LF>; deliver; \
                 =250 2.0.0 queued; =221 2.0.0 Bye; close"
            ),
        );
        assert_eq!(
            outcome.delivered,
            [Delivered {
                helo: "client.test".into(),
                mail_from: "alice@example.test".into(),
                rcpt_to: vec!["bob@in.test".into()],
                data: b"Subject: hi\r\n\r\nbody\r\n".to_vec(),
                smtputf8: false,
            }]
        );
        assert!(outcome.closed);
    }

    #[test]
    fn commands_and_their_sequence_errors() {
        let cases: &[(&str, &str)] = &[
            ("HELO client.test\r\n", "=250 mx.test"),
            ("HELO\r\n", "=501 5.5.4 Syntax: HELO hostname"),
            ("EHLO\r\n", "=501 5.5.4 Syntax: EHLO hostname"),
            ("EHLO   \r\n", "501 5.5.4"),
            ("ehlo client.test\r\nnoop\r\n", "250 mx.test; 250 2.0.0"),
            ("NOOP anything goes\r\n", "=250 2.0.0 Ok"),
            ("RSET\r\n", "=250 2.0.0 Ok"),
            ("RSET now\r\n", "=501 5.5.4 Syntax: RSET"),
            ("QUIT\r\nNOOP\r\n", "=221 2.0.0 Bye; close"),
            ("quit\r\n", "221 2.0.0; close"),
            ("VRFY bob\r\n", "252 2.5.0"),
            ("VRFY\r\n", "501 5.5.4"),
            ("EXPN staff\r\n", "=502 5.5.1 EXPN not supported"),
            ("HELP\r\n", "214 2.0.0"),
            ("FOO\r\n", "=500 5.5.1 Command unrecognized"),
            ("BDAT 10 LAST\r\n", "500 5.5.1"),
            ("\r\n", "500 5.5.1"),
            (" NOOP\r\n", "500 5.5.1"),
            (
                "MAIL FROM:<alice@example.test>\r\n",
                "=503 5.5.1 Send HELO/EHLO first",
            ),
            (
                "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nMAIL FROM:<a@example.test>\r\n",
                "250; 250 2.1.0; =503 5.5.1 Nested MAIL command",
            ),
            (
                "EHLO c.test\r\nRCPT TO:<bob@in.test>\r\n",
                "250; =503 5.5.1 Need MAIL before RCPT",
            ),
            (
                "EHLO c.test\r\nDATA\r\n",
                "250; =503 5.5.1 Need MAIL before DATA",
            ),
            (
                "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nDATA\r\n",
                "250; 250; =554 5.5.1 No valid recipients",
            ),
            (
                "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\n",
                "250; 250; 550 5.1.1; 554 5.5.1",
            ),
            (
                "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<bob@in.test>\r\nDATA now\r\n",
                "250; 250; 250; =501 5.5.4 Syntax: DATA",
            ),
            // RSET, EHLO and HELO each end the transaction.
            (
                "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<bob@in.test>\r\nRSET\r\n\
                 RCPT TO:<bob@in.test>\r\nDATA\r\n",
                "250; 250; 250; 250 2.0.0; 503 5.5.1; 503 5.5.1",
            ),
            (
                "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nEHLO c.test\r\nRCPT TO:<bob@in.test>\r\n",
                "250; 250; 250; 503 5.5.1",
            ),
            (
                "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nHELO c.test\r\nRCPT TO:<bob@in.test>\r\n",
                "250; 250; 250; 503 5.5.1",
            ),
            // HELO is enough for a transaction.
            (
                "HELO c.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<bob@in.test>\r\nDATA\r\n.\r\n",
                "250; 250; 250; 354; deliver; 250",
            ),
            // Cross-protocol requests are cut at once, not answered line by line.
            (
                "GET / HTTP/1.1\r\nHost: x\r\n",
                "=421 4.7.0 mx.test This is an SMTP server, closing connection; close",
            ),
            ("post /mail HTTP/1.1\r\n", "421 4.7.0; close"),
            ("CONNECT mx.test:25 HTTP/1.1\r\n", "421 4.7.0; close"),
        ];
        for (script, expect) in cases {
            check(script, expect);
        }
    }

    #[test]
    fn mail_from_syntax_parameters_and_limits() {
        let cases: &[(&str, &str)] = &[
            ("MAIL FROM:<alice@example.test>", "=250 2.1.0 Ok"),
            ("mail from:<alice@example.test>", "250 2.1.0"),
            ("MAIL FROM: <alice@example.test>", "250 2.1.0"),
            ("MAIL FROM:<>", "250 2.1.0"),
            (
                "MAIL FROM:<@relay.test,@hop.test:alice@example.test>",
                "250 2.1.0",
            ),
            ("MAIL FROM:<\"a b>c\"@example.test>", "250 2.1.0"),
            ("MAIL FROM:<\"a\\\"b\"@example.test>", "250 2.1.0"),
            ("MAIL FROM:<alice@[192.0.2.1]>", "250 2.1.0"),
            ("MAIL FROM:<alice@[IPv6:2001:db8::1]>", "250 2.1.0"),
            ("MAIL FROM:<a.b+tag@sub.example.test>", "250 2.1.0"),
            (
                "MAIL <alice@example.test>",
                "=501 5.5.4 Syntax: MAIL FROM:<address>",
            ),
            ("MAIL FROM alice", "501 5.5.4"),
            ("MAIL", "501 5.5.4"),
            (
                "MAIL FROM:alice@example.test",
                "=501 5.1.7 Bad sender address syntax",
            ),
            ("MAIL FROM:<alice@example.test", "501 5.1.7"),
            ("MAIL FROM:<alice@example.test>SIZE=1", "501 5.1.7"),
            ("MAIL FROM:<alice example@example.test>", "501 5.1.7"),
            ("MAIL FROM:<alice@>", "501 5.1.7"),
            ("MAIL FROM:<@example.test>", "501 5.1.7"),
            ("MAIL FROM:<@relay.test:>", "501 5.1.7"),
            ("MAIL FROM:<relay.test:alice@example.test>", "501 5.1.7"),
            ("MAIL FROM:<alice>", "501 5.1.7"),
            ("MAIL FROM:<postmaster>", "501 5.1.7"),
            ("MAIL FROM:<alice@exa mple.test>", "501 5.1.7"),
            ("MAIL FROM:<alice@example..test>", "501 5.1.7"),
            ("MAIL FROM:<alice@example.test.>", "501 5.1.7"),
            ("MAIL FROM:<a@b@example.test>", "501 5.1.7"),
            ("MAIL FROM:<\"unterminated@example.test>", "501 5.1.7"),
            ("MAIL FROM:<alice@[]>", "501 5.1.7"),
            ("MAIL FROM:<<alice@example.test>>", "501 5.1.7"),
            ("MAIL FROM:<alice@example.test> SIZE=100", "250 2.1.0"),
            ("MAIL FROM:<alice@example.test> size=200", "250 2.1.0"),
            (
                "MAIL FROM:<alice@example.test> SIZE=201",
                "=552 5.3.4 Message size exceeds fixed maximum message size",
            ),
            (
                "MAIL FROM:<alice@example.test> SIZE=999999999999999999999999999",
                "552 5.3.4",
            ),
            (
                "MAIL FROM:<alice@example.test> SIZE=",
                "=501 5.5.4 Invalid SIZE parameter",
            ),
            ("MAIL FROM:<alice@example.test> SIZE=12k", "501 5.5.4"),
            ("MAIL FROM:<alice@example.test> SIZE=-1", "501 5.5.4"),
            ("MAIL FROM:<alice@example.test> SIZE", "501 5.5.4"),
            (
                "MAIL FROM:<alice@example.test> SIZE=1 SIZE=2",
                "=501 5.5.4 Duplicate MAIL parameter",
            ),
            ("MAIL FROM:<alice@example.test> BODY=8BITMIME", "250 2.1.0"),
            ("MAIL FROM:<alice@example.test> BODY=7bit", "250 2.1.0"),
            (
                "MAIL FROM:<alice@example.test> BODY=BINARYMIME",
                "501 5.5.4",
            ),
            (
                "MAIL FROM:<alice@example.test> BODY=7BIT BODY=7BIT",
                "501 5.5.4",
            ),
            ("MAIL FROM:<alice@example.test> SMTPUTF8", "250 2.1.0"),
            ("MAIL FROM:<alice@example.test> SMTPUTF8=yes", "501 5.5.4"),
            (
                "MAIL FROM:<alice@example.test> RET=HDRS",
                "=555 5.5.4 Unsupported MAIL parameter",
            ),
            ("MAIL FROM:<alice@example.test> AUTH=<>", "555 5.5.4"),
            (
                "MAIL FROM:<alice@example.test>  BODY=8BITMIME  SMTPUTF8 SIZE=10 ",
                "250 2.1.0",
            ),
            (
                "MAIL FROM:<δοκιμή@παράδειγμα.test>",
                "=553 5.6.7 Non-ASCII address requires SMTPUTF8",
            ),
            ("MAIL FROM:<alice@παράδειγμα.test>", "553 5.6.7"),
            ("MAIL FROM:<\"δ\"@example.test>", "553 5.6.7"),
            ("MAIL FROM:<δοκιμή@παράδειγμα.test> SMTPUTF8", "250 2.1.0"),
        ];
        for (line, expect) in cases {
            check(
                format!("EHLO c.test\r\n{line}\r\n"),
                &format!("250; {expect}"),
            );
        }
    }

    #[test]
    fn rcpt_to_syntax_routing_and_limits() {
        let cases: &[(&str, &str)] = &[
            ("RCPT TO:<bob@in.test>", "=250 2.1.5 Ok"),
            ("rcpt to:<Bob@In.Test>", "250 2.1.5"),
            ("RCPT TO: <bob@in.test>", "250 2.1.5"),
            ("RCPT TO:<@relay.test:bob@in.test>", "250 2.1.5"),
            ("RCPT TO:<Postmaster>", "250 2.1.5"),
            (
                "RCPT TO:<bob@elsewhere.test>",
                "=550 5.1.1 Recipient address rejected: no route",
            ),
            ("RCPT TO:<>", "=501 5.1.3 Bad recipient address syntax"),
            ("RCPT TO:bob@in.test", "501 5.1.3"),
            ("RCPT TO:<bob@in.test>x", "501 5.1.3"),
            ("RCPT TO:<bob@in.test", "501 5.1.3"),
            ("RCPT <bob@in.test>", "=501 5.5.4 Syntax: RCPT TO:<address>"),
            (
                "RCPT TO:<bob@in.test> NOTIFY=NEVER",
                "=555 5.5.4 Unsupported RCPT parameter",
            ),
            ("RCPT TO:<δοκιμή@in.test>", "553 5.6.7"),
        ];
        for (line, expect) in cases {
            check(
                format!("EHLO c.test\r\nMAIL FROM:<a@example.test>\r\n{line}\r\n"),
                &format!("250; 250; {expect}"),
            );
        }
    }

    #[test]
    fn source_route_is_dropped_from_the_addresses() {
        let outcome = check(
            "EHLO c.test\r\nMAIL FROM:<@a.test,@b.test:alice@example.test>\r\n\
             RCPT TO:<@relay.test:bob@in.test>\r\nDATA\r\n.\r\n",
            "250; 250; 250; 354; deliver; 250",
        );
        assert_eq!(outcome.queries, ["bob@in.test"]);
        assert_eq!(outcome.delivered[0].mail_from, "alice@example.test");
        assert_eq!(outcome.delivered[0].rcpt_to, ["bob@in.test"]);
    }

    #[test]
    fn null_sender_is_delivered_as_empty_string() {
        let outcome = check(
            "EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<bob@in.test>\r\nDATA\r\nbounce\r\n.\r\n",
            "250; 250; 250; 354; deliver; 250",
        );
        assert_eq!(outcome.delivered[0].mail_from, "");
    }

    #[test]
    fn smtputf8_transaction_carries_non_ascii_addresses() {
        let outcome = check(
            "EHLO c.test\r\nMAIL FROM:<δοκιμή@παράδειγμα.test> SMTPUTF8\r\n\
             RCPT TO:<δοκιμή@in.test>\r\nDATA\r\nhi\r\n.\r\n",
            "250; 250 2.1.0; 250 2.1.5; 354; deliver; 250",
        );
        let delivered = &outcome.delivered[0];
        assert!(delivered.smtputf8);
        assert_eq!(delivered.mail_from, "δοκιμή@παράδειγμα.test");
        assert_eq!(delivered.rcpt_to, ["δοκιμή@in.test"]);
    }

    #[test]
    fn recipients_past_the_limit_get_452_and_rejected_ones_do_not_count() {
        let outcome = check(
            "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<nobody@elsewhere.test>\r\n\
             RCPT TO:<r1@in.test>\r\nRCPT TO:<r2@in.test>\r\nRCPT TO:<r3@in.test>\r\n\
             RCPT TO:<r4@in.test>\r\nDATA\r\n.\r\n",
            "250; 250; 550 5.1.1; 250; 250; 250; =452 4.5.3 Too many recipients; 354; deliver; 250",
        );
        assert_eq!(
            outcome.delivered[0].rcpt_to,
            ["r1@in.test", "r2@in.test", "r3@in.test"]
        );
        // Past the limit the policy is not even asked.
        assert_eq!(outcome.queries.len(), 4);
    }

    #[test]
    fn recipients_of_another_transaction_group_get_452_and_come_in_the_next_transaction() {
        let outcome = check(
            "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<enforce-1@in.test>\r\n\
             RCPT TO:<r1@in.test>\r\nRCPT TO:<enforce-2@in.test>\r\nDATA\r\n.\r\n\
             MAIL FROM:<a@example.test>\r\nRCPT TO:<r1@in.test>\r\nDATA\r\n.\r\n",
            "250; 250; 250; 452 4.5.3; 250; 354; deliver; 250; 250; 250; 354; deliver; 250",
        );
        assert_eq!(
            outcome.delivered[0].rcpt_to,
            ["enforce-1@in.test", "enforce-2@in.test"]
        );
        assert_eq!(outcome.delivered[1].rcpt_to, ["r1@in.test"]);
    }

    #[test]
    fn sender_is_known_from_mail_until_the_end_of_data() {
        let setup = Setup::default();
        let budget = InFlightBudget::new(setup.budget);
        let now = Instant::now();
        let mut session = session_with(&setup, &budget, now);
        assert_eq!(session.sender(), None);
        session.feed(b"EHLO c.test\r\n", now);
        assert_eq!(session.sender(), None);
        session.feed(b"MAIL FROM:<a@example.test>\r\n", now);
        assert_eq!(session.sender(), Some(("c.test", "a@example.test")));
        session.feed(b"RCPT TO:<r@in.test>\r\nDATA\r\nSubject: x\r\n", now);
        assert_eq!(session.sender(), Some(("c.test", "a@example.test")));
        let actions = session.feed(b".\r\n", now);
        assert!(matches!(actions.last(), Some(Action::Deliver(_))));
        assert_eq!(session.sender(), None);
        session.delivery_done(Reply::new(250, "2.0.0 ok"), now);
        session.feed(b"MAIL FROM:<>\r\nRSET\r\n", now);
        assert_eq!(session.sender(), None);
        session.feed(b"MAIL FROM:<>\r\n", now);
        assert_eq!(session.sender(), Some(("c.test", "")));
    }

    #[test]
    fn header_section_is_known_from_its_empty_line_until_the_end_of_data() {
        let setup = Setup::default();
        let budget = InFlightBudget::new(setup.budget);
        let now = Instant::now();
        let mut session = session_with(&setup, &budget, now);
        session.feed(b"EHLO c.test\r\nMAIL FROM:<a@example.test>\r\n", now);
        session.feed(b"RCPT TO:<r@in.test>\r\nDATA\r\nSubject: x\r\n", now);
        assert_eq!(session.header_section(), None);
        session.feed(b"From: a@example.test\r", now);
        assert_eq!(session.header_section(), None);
        session.feed(b"\n\r\nbody\r\n\r\nmore", now);
        assert_eq!(
            session.header_section(),
            Some(&b"Subject: x\r\nFrom: a@example.test\r\n\r\n"[..])
        );
        let actions = session.feed(b"\r\n.\r\n", now);
        assert!(matches!(actions.last(), Some(Action::Deliver(_))));
        assert_eq!(session.header_section(), None);
        session.delivery_done(Reply::new(250, "2.0.0 ok"), now);
        // No headers at all: the section is the empty line alone.
        session.feed(
            b"MAIL FROM:<>\r\nRCPT TO:<r@in.test>\r\nDATA\r\n\r\nbody",
            now,
        );
        assert_eq!(session.header_section(), Some(&b"\r\n"[..]));
    }

    #[test]
    fn pipelined_transactions_are_answered_in_order() {
        let outcome = check(
            "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<one@in.test>\r\nDATA\r\n\
             first\r\n.\r\nMAIL FROM:<b@example.test>\r\nRCPT TO:<nobody@elsewhere.test>\r\n\
             RCPT TO:<two@in.test>\r\nDATA\r\nsecond\r\n.\r\nNOOP\r\nQUIT\r\n",
            "250; 250; 250; 354; deliver; 250 2.0.0 queued; 250 2.1.0; 550 5.1.1; 250 2.1.5; \
             354; deliver; 250 2.0.0 queued; 250 2.0.0 Ok; 221; close",
        );
        let data: Vec<&[u8]> = outcome.delivered.iter().map(|d| &d.data[..]).collect();
        assert_eq!(data, [&b"first\r\n"[..], b"second\r\n"]);
        assert_eq!(outcome.delivered[1].mail_from, "b@example.test");
        assert_eq!(outcome.delivered[1].rcpt_to, ["two@in.test"]);
    }

    #[test]
    fn delivery_reply_is_passed_through_and_ends_the_transaction() {
        let setup = Setup {
            delivery_reply: Reply::new(451, "4.3.0 Try again later"),
            ..Setup::default()
        };
        check_with(
            &setup,
            format!(
                "{ENVELOPE}DATA\r\nhi\r\n.\r\nRCPT TO:<bob@in.test>\r\nMAIL FROM:<a@example.test>\r\n"
            ),
            &format!(
                "{ENVELOPE_OK}; 354; deliver; =451 4.3.0 Try again later; 503 5.5.1; 250 2.1.0"
            ),
        );
    }

    #[test]
    fn commands_may_end_with_a_bare_lf() {
        let outcome = check(
            "EHLO c.test\nMAIL FROM:<a@example.test>\nRCPT TO:<bob@in.test>\nDATA\nhello\r\n.\r\nQUIT\n",
            "250; 250; 250; 354; deliver; 250; 221; close",
        );
        assert_eq!(outcome.delivered[0].data, b"hello\r\n");
    }

    #[test]
    fn message_bytes_are_dot_unstuffed_and_kept_exactly() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"hello\r\n.\r\n", b"hello\r\n"),
            // The CRLF of the DATA command starts the first line: "." alone ends at once.
            (b".\r\n", b""),
            (b"\r\n.\r\n", b"\r\n"),
            (b"..\r\n.\r\n", b".\r\n"),
            (b"..hidden\r\n.\r\n", b".hidden\r\n"),
            (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n"),
            (b"a\r\n...\r\n.\r\n", b"a\r\n..\r\n"),
            (b".a\r\n.\r\n", b"a\r\n"),
            (b"a.\r\n.b\r\n.\r\n", b"a.\r\nb\r\n"),
            (b" .\r\n.\r\n", b" .\r\n"),
            (b"a\r\n. \r\n.\r\n", b"a\r\n \r\n"),
            (b"x\r\n\r\n\r\n.\r\n", b"x\r\n\r\n\r\n"),
            (b"no final line end.\r\n.\r\n", b"no final line end.\r\n"),
            // 8-bit data is fine (8BITMIME), including bytes that are not UTF-8.
            (
                b"Gr\xc3\xbc\xc3\x9fe \xff\xfe\x80\r\n.\r\n",
                b"Gr\xc3\xbc\xc3\x9fe \xff\xfe\x80\r\n",
            ),
            (b"tab\there\x7f\r\n.\r\n", b"tab\there\x7f\r\n"),
        ];
        for &(body, data) in cases {
            let mut script = format!("{ENVELOPE}DATA\r\n").into_bytes();
            script.extend_from_slice(body);
            script.extend_from_slice(b"QUIT\r\n");
            let outcome = check(
                &script,
                &format!("{ENVELOPE_OK}; 354; deliver; 250; 221; close"),
            );
            assert_eq!(
                outcome.delivered[0].data,
                data,
                "body {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// Malformed terminators of the SMTP smuggling research (CVE-2023-51764 class,
    /// `smtpsmug` test names in comments) and bare CR/LF/NUL anywhere in the data.
    const SMUGGLING_VECTORS: &[(&str, &str)] = &[
        ("\n.\n", "bare CR or LF"),       // lflf
        ("\r.\r", "bare CR or LF"),       // crcr
        ("\r.\n", "bare CR or LF"),       // crlf
        ("\n.\r", "bare CR or LF"),       // lfcr
        ("\n.\r\n", "bare CR or LF"),     // lfcrlf
        ("\r\n.\n", "bare CR or LF"),     // crlflf
        ("\r.\r\n", "bare CR or LF"),     // crcrlf
        ("\r\n.\r", "bare CR or LF"),     // crlfcr
        ("\r\n\0.\r\n", "NUL byte"),      // nullbefore
        ("\r\n.\0\r\n", "NUL byte"),      // nullafter
        ("\r\n\r.\r\n", "bare CR or LF"), // CR starting a line
        ("\r\n\n.\r\n", "bare CR or LF"), // LF starting a line
        ("\n", "bare CR or LF"),
        ("\r", "bare CR or LF"),
        ("\r\r\n", "bare CR or LF"),
        ("\0", "NUL byte"),
    ];

    #[test]
    fn smuggled_commands_behind_a_fake_terminator_are_refused_data() {
        for (vector, reason) in SMUGGLING_VECTORS {
            let script = format!(
                "{ENVELOPE}DATA\r\nSubject: real\r\n\r\nfirst part{vector}\
                 MAIL FROM:<mallory@evil.test>\r\nRCPT TO:<smuggled@in.test>\r\nDATA\r\n\
                 Subject: smuggled\r\n\r\nsecond\r\n.\r\nNOOP\r\n"
            );
            let outcome = check(
                &script,
                &format!(
                    "{ENVELOPE_OK}; 354; =550 5.6.0 Message refused: {reason} in message \
                     (SMTP smuggling protection); 250 2.0.0 Ok"
                ),
            );
            assert!(outcome.delivered.is_empty(), "vector {vector:?}");
            assert_eq!(outcome.queries, ["bob@in.test"], "vector {vector:?}");
        }
    }

    #[test]
    fn bare_line_endings_poison_the_message_up_to_the_real_terminator() {
        for (vector, reason) in SMUGGLING_VECTORS {
            for position in ["start", "end"] {
                let body = match position {
                    "start" => format!("{vector}x\r\n.\r\n"),
                    _ => format!("text{vector}\r\n.\r\n"),
                };
                let outcome = check(
                    format!("{ENVELOPE}DATA\r\n{body}QUIT\r\n"),
                    &format!("{ENVELOPE_OK}; 354; 550 5.6.0 Message refused: {reason}; 221; close"),
                );
                assert!(
                    outcome.delivered.is_empty(),
                    "vector {vector:?} at {position}"
                );
            }
        }
    }

    #[test]
    fn starttls_discards_injected_plaintext_and_resets_the_session() {
        let outcome = check(
            "EHLO c.test\r\nSTARTTLS\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<injected@in.test>\r\n\
             <<TLS>>MAIL FROM:<a@example.test>\r\nEHLO c.test\r\nMAIL FROM:<a@example.test>\r\n\
             RCPT TO:<bob@in.test>\r\nDATA\r\nhi\r\n.\r\n",
            &format!(
                "250; =220 2.0.0 Ready to start TLS; starttls; =503 5.5.1 Send HELO/EHLO first; \
                 {}; 250 2.1.0; 250 2.1.5; 354; deliver; 250",
                ehlo_lines(false)
            ),
        );
        assert_eq!(outcome.queries, ["bob@in.test"]);
        assert!(outcome.tls);
    }

    #[test]
    fn starttls_from_pipelined_input_after_a_delivery_discards_what_follows() {
        check(
            format!("{ENVELOPE}DATA\r\nhi\r\n.\r\nSTARTTLS\r\nNOOP\r\n<<TLS>>NOOP\r\n"),
            &format!("{ENVELOPE_OK}; 354; deliver; 250; 220 2.0.0; starttls; =250 2.0.0 Ok"),
        );
    }

    #[test]
    fn starttls_refusals() {
        let unavailable = Setup {
            starttls: false,
            ..Setup::default()
        };
        check_with(
            &unavailable,
            "STARTTLS\r\n",
            "=502 5.5.1 STARTTLS not available",
        );
        check("STARTTLS now\r\n", "=501 5.5.4 Syntax: STARTTLS");
        check(
            "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nSTARTTLS\r\n",
            "250; 250; =503 5.5.1 STARTTLS not allowed inside a transaction",
        );
        check(
            "STARTTLS\r\n<<TLS>>STARTTLS\r\n",
            "220 2.0.0; starttls; =503 5.5.1 TLS already active",
        );
        // tls_started without a handshake outstanding changes nothing.
        let outcome = check("<<TLS>>EHLO c.test\r\n", &ehlo_lines(true));
        assert!(!outcome.tls);
    }

    fn long_line(prefix: &str, content_length: usize, ending: &str) -> Vec<u8> {
        let mut line = prefix.as_bytes().to_vec();
        line.resize(content_length, b'a');
        line.extend_from_slice(ending.as_bytes());
        line
    }

    #[test]
    fn command_lines_are_limited_and_the_rest_of_a_long_line_is_discarded() {
        let max = MAX_COMMAND_LINE_LENGTH;
        let cases: &[(Vec<u8>, &str)] = &[
            (long_line("NOOP ", max, "\r\n"), "250 2.0.0"),
            (long_line("NOOP ", max, "\n"), "250 2.0.0"),
            (
                long_line("NOOP ", max + 1, "\r\n"),
                "=500 5.5.2 Line too long",
            ),
            (long_line("NOOP ", max + 1, "\n"), "500 5.5.2"),
            (long_line("NOOP ", max, "\r\r\n"), "500 5.5.2"),
            (long_line("RCPT TO:<", 3 * max, "\r\n"), "500 5.5.2"),
        ];
        for (line, expect) in cases {
            let mut script = line.clone();
            script.extend_from_slice(b"NOOP\r\n");
            check(&script, &format!("{expect}; 250 2.0.0"));
        }
    }

    #[test]
    fn too_many_errors_in_a_row_close_the_session() {
        let errors = |n: usize| "FOO\r\n".repeat(n);
        let replies = |n: usize| "500 5.5.1;".repeat(n);
        let limit = MAX_CONSECUTIVE_ERRORS;
        check(
            errors(limit + 5),
            &format!(
                "{} =421 4.7.0 mx.test Too many errors, closing connection; close",
                replies(limit)
            ),
        );
        // A successful command resets the count.
        check(
            format!("{}NOOP\r\n{}", errors(limit - 1), errors(limit - 1)),
            &format!("{} 250; {}", replies(limit - 1), replies(limit - 1)),
        );
        // 4xx are our limits, not the client's fault: they do not count.
        let no_recipients = Setup {
            max_recipients: 0,
            ..Setup::default()
        };
        check_with(
            &no_recipients,
            format!(
                "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\n{}",
                "RCPT TO:<bob@in.test>\r\n".repeat(limit + 5)
            ),
            &format!("250; 250; {}", "452 4.5.3;".repeat(limit + 5)),
        );
    }

    #[test]
    fn invalid_utf8_nul_and_control_characters_in_commands_are_refused() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"EHLO \xff\xfe\r\n",
                "=500 5.5.2 Syntax error: invalid UTF-8 in command",
            ),
            (b"\xc0\xaf\r\n", "500 5.5.2"),
            (
                b"EHLO c.test\r\nMAIL FROM:<\xc3(@example.test>\r\n",
                "250; 500 5.5.2",
            ),
            (
                b"NOOP\0\r\n",
                "=500 5.5.2 Syntax error: control character in command",
            ),
            (b"\0\r\n", "500 5.5.2"),
            (
                b"EHLO c.test\r\nMAIL FROM:<a\0@example.test>\r\n",
                "250; 500 5.5.2",
            ),
            // A CR inside a line must not be able to start a second command.
            (b"NOOP\rMAIL FROM:<a@example.test>\r\n", "500 5.5.2"),
            (b"EHLO c.test\r\r\n", "500 5.5.2"),
            (b"NOOP\tx\r\n", "500 5.5.2"),
            (b"NOOP \xc2\x85\r\n", "500 5.5.2"),
            // Well-formed UTF-8 outside addresses is fine.
            (b"EHLO \xce\xb4.test\r\n", "250 mx.test"),
        ];
        for &(script, expect) in cases {
            let mut script = script.to_vec();
            script.extend_from_slice(b"NOOP\r\n");
            check(&script, &format!("{expect}; 250 2.0.0"));
        }
    }

    #[test]
    fn message_size_is_enforced_during_data() {
        let body = |len: usize| {
            let mut body = "a".repeat(len - 2);
            body.push_str("\r\n");
            body
        };
        let outcome = check(
            format!("{ENVELOPE}DATA\r\n{}.\r\n", body(200)),
            &format!("{ENVELOPE_OK}; 354; deliver; 250"),
        );
        assert_eq!(outcome.delivered[0].data.len(), 200);
        check(
            format!("{ENVELOPE}DATA\r\n{}.\r\nNOOP\r\n", body(201)),
            &format!(
                "{ENVELOPE_OK}; 354; =552 5.3.4 Message size exceeds fixed maximum message size; 250"
            ),
        );
        // Stuffed dots do not count: 200 bytes after unstuffing.
        let outcome = check(
            format!("{ENVELOPE}DATA\r\n.{}.\r\n", body(200)),
            &format!("{ENVELOPE_OK}; 354; deliver; 250"),
        );
        assert_eq!(outcome.delivered[0].data.len(), 200);
        // A smuggling defect is reported before the size.
        check(
            format!("{ENVELOPE}DATA\r\n\n{}.\r\n", body(400)),
            &format!("{ENVELOPE_OK}; 354; 550 5.6.0"),
        );
    }

    fn session_with(setup: &Setup, budget: &Arc<InFlightBudget>, now: Instant) -> Session {
        let policy = |address: &str| address.ends_with("@in.test");
        Session::new(setup.config(), Arc::new(policy), Arc::clone(budget), now)
    }

    fn replies(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|action| match action {
                Action::Reply(reply) => render(reply),
                Action::StartTls => "starttls".to_owned(),
                Action::Deliver(_) => "deliver".to_owned(),
                Action::Close => "close".to_owned(),
            })
            .collect()
    }

    #[test]
    fn oversized_data_is_not_buffered_past_the_limit() {
        let setup = Setup::default();
        let budget = InFlightBudget::new(1 << 20);
        let now = Instant::now();
        let mut session = session_with(&setup, &budget, now);
        session.feed(format!("{ENVELOPE}DATA\r\n").as_bytes(), now);
        session.feed(&[b'a'; 150], now);
        assert!(
            (150..=setup.max_message_size).contains(&budget.used()),
            "{}",
            budget.used()
        );
        session.feed(&[b'a'; 100], now);
        assert_eq!(
            budget.used(),
            0,
            "past the limit the stored bytes are dropped"
        );
        for _ in 0..100 {
            session.feed(&[b'a'; 1000], now);
            assert_eq!(budget.used(), 0);
        }
        let actions = session.feed(b"\r\n.\r\n", now);
        assert_eq!(
            replies(&actions),
            ["552 5.3.4 Message size exceeds fixed maximum message size"]
        );
    }

    #[test]
    fn smuggling_defect_releases_the_message_memory_at_once() {
        let setup = Setup::default();
        let budget = InFlightBudget::new(1 << 20);
        let now = Instant::now();
        let mut session = session_with(&setup, &budget, now);
        session.feed(format!("{ENVELOPE}DATA\r\nsome text").as_bytes(), now);
        assert!(budget.used() > 0);
        session.feed(b"\n.\n", now);
        assert_eq!(budget.used(), 0);
    }

    /// Issue 16 (budget pinning): a declared SIZE is checked at MAIL but reserves nothing;
    /// the budget holds only the bytes that have arrived.
    #[test]
    fn a_declared_size_reserves_nothing_of_the_budget() {
        let setup = Setup {
            budget: 250,
            ..Setup::default()
        };
        let budget = InFlightBudget::new(setup.budget);
        let now = Instant::now();
        let mut pinning = session_with(&setup, &budget, now);
        let actions = pinning.feed(
            b"EHLO c.test\r\nMAIL FROM:<a@example.test> SIZE=200\r\nRCPT TO:<bob@in.test>\r\nDATA\r\n",
            now,
        );
        assert_eq!(
            replies(&actions).last().map(String::as_str),
            Some("354 End data with <CR><LF>.<CR><LF>")
        );
        assert_eq!(
            budget.used(),
            0,
            "SIZE=200 holds nothing before the bytes come"
        );
        pinning.feed(b"Subject: x\r\n", now);
        // What arrived, with headroom up to the message size limit (200).
        assert!((12..=200).contains(&budget.used()), "{}", budget.used());
        // Another sender's message fits in what the first has not sent.
        let mut other = session_with(&setup, &budget, now);
        let actions = other.feed(format!("{ENVELOPE}DATA\r\nsmall\r\n.\r\n").as_bytes(), now);
        assert_eq!(
            replies(&actions).last().map(String::as_str),
            Some("deliver")
        );
    }

    /// Issue 16 (budget pinning): a client that sends a line just inside every
    /// `data_timeout` is still cut at `data_total_timeout` after its `354`, and its bytes
    /// go back to the budget.
    #[test]
    fn message_data_is_bounded_in_total_time_however_steadily_lines_arrive() {
        let setup = Setup::default();
        let config = Arc::new(SessionConfig {
            data_timeout: Duration::from_secs(10),
            data_total_timeout: Duration::from_secs(25),
            ..(*setup.config()).clone()
        });
        let budget = InFlightBudget::new(1 << 20);
        let start = Instant::now();
        let policy = |address: &str| address.ends_with("@in.test");
        let mut session = Session::new(config, Arc::new(policy), Arc::clone(&budget), start);
        session.feed(format!("{ENVELOPE}DATA\r\n").as_bytes(), start);
        let mut now = start;
        for _ in 0..2 {
            now += Duration::from_secs(9);
            assert!(
                session.timed_out(now).is_empty(),
                "a line is due only after 10 s"
            );
            session.feed(b"x\r\n", now);
        }
        assert_eq!(session.deadline(), Some(start + Duration::from_secs(25)));
        assert!(
            session
                .timed_out(start + Duration::from_secs(25) - MILLI)
                .is_empty()
        );
        let actions = session.timed_out(start + Duration::from_secs(25));
        assert_eq!(
            replies(&actions),
            [
                "421 4.4.2 mx.test Message data took longer than 25 s, closing connection",
                "close"
            ]
        );
        assert_eq!(budget.used(), 0, "the message's bytes are released");
    }

    #[test]
    fn message_outgrowing_the_budget_is_tempfailed_at_its_end() {
        let setup = Setup {
            budget: 50,
            ..Setup::default()
        };
        let big = "b".repeat(78);
        let outcome = check_with(
            &setup,
            format!(
                "{ENVELOPE}DATA\r\n{big}\r\n.\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<bob@in.test>\r\nDATA\r\n{}\r\n.\r\n",
                "s".repeat(48)
            ),
            &format!(
                "{ENVELOPE_OK}; 354; =451 4.3.1 Insufficient system resources, try again later; \
                 250; 250; 354; deliver; 250"
            ),
        );
        // The budget is used exactly: 50 bytes fit although the first message did not.
        assert_eq!(outcome.delivered[0].data.len(), 50);
    }

    #[test]
    fn reservations_are_shared_between_sessions_and_released_on_drop() {
        let setup = Setup::default();
        let budget = InFlightBudget::new(300);
        let now = Instant::now();
        let mut first = session_with(&setup, &budget, now);
        let mut actions = first.feed(
            format!("{ENVELOPE}DATA\r\n{}\r\n.\r\n", "x".repeat(100)).as_bytes(),
            now,
        );
        let Some(Action::Deliver(transaction)) = actions.pop() else {
            panic!("expected a delivery: {actions:?}");
        };
        assert!(budget.used() >= 102);
        let held = budget.used();

        let mut second = session_with(&setup, &budget, now);
        let script = "EHLO c.test\r\nMAIL FROM:<a@example.test> SIZE=200\r\nRCPT TO:<bob@in.test>\r\nDATA\r\n";
        let actions = second.feed(script.as_bytes(), now);
        assert_eq!(
            replies(&actions).last().map(String::as_str),
            Some("452 4.3.1 Insufficient system resources"),
            "a declared size that cannot fit what is free now is refused before its bytes"
        );
        let actions = second.feed(
            b"RSET\r\nMAIL FROM:<a@example.test> SIZE=150\r\nRCPT TO:<bob@in.test>\r\nDATA\r\n",
            now,
        );
        assert_eq!(
            replies(&actions).last().map(String::as_str),
            Some("354 End data with <CR><LF>.<CR><LF>")
        );
        assert_eq!(budget.used(), held, "a declared size reserves nothing");
        second.feed(&[b'y'; 150], now);
        assert!(budget.used() >= held + 150, "{}", budget.used());

        drop(transaction);
        assert!((150..=200).contains(&budget.used()), "{}", budget.used());
        assert!(held > 0);
        drop(second);
        assert_eq!(
            budget.used(),
            0,
            "a session dropped mid-DATA releases its bytes"
        );
        drop(first);
    }

    #[test]
    fn timeouts_close_with_421() {
        let timeout = "=421 4.4.2 mx.test Timeout exceeded, closing connection; close";
        check("<<TIMEOUT>>", timeout);
        check("EHLO c.test\r\nNOO<<TIMEOUT>>", &format!("250; {timeout}"));
        check(
            format!("{ENVELOPE}DATA\r\npartial message<<TIMEOUT>>"),
            &format!("{ENVELOPE_OK}; 354; {timeout}"),
        );
        // During the handshake the wire belongs to TLS: close without a reply.
        check("STARTTLS\r\n<<TIMEOUT>>", "220 2.0.0; starttls; close");
        check("QUIT\r\n<<TIMEOUT>>", "221; close; no deadline");
    }

    /// One step of a timed session: what happens at `at` seconds, the expected
    /// actions, and the expected deadline afterwards in seconds (None: no deadline).
    enum Step {
        Feed(u64, &'static str, &'static str, Option<u64>),
        DeliveryDone(u64, &'static str, Option<u64>),
        TlsStarted(u64, Option<u64>),
        TimedOut(u64, &'static str, Option<u64>),
    }

    #[test]
    fn deadlines_follow_the_protocol_phase() {
        use Step::*;
        const C: u64 = 300; // command timeout
        const D: u64 = 180; // data timeout
        let steps = [
            Feed(10, "EHLO c.test\r\n", "250", Some(10 + C)),
            Feed(
                20,
                "MAIL FROM:<a@example.test>\r\nRCPT TO:<bob@in.test>\r\nDATA\r\n",
                "250;250;354",
                Some(20 + D),
            ),
            Feed(30, "some data\r\n", "", Some(30 + D)),
            TimedOut(30 + D - 1, "", Some(30 + D)),
            Feed(40, ".\r\n", "deliver", None),
            Feed(50, "NOOP\r\n", "", None),
            TimedOut(10_000, "", None),
            DeliveryDone(60, "250;250", Some(60 + C)),
            Feed(70, "STARTTLS\r\n", "220;starttls", Some(70 + C)),
            Feed(80, "EHLO injected\r\n", "", Some(70 + C)),
            TlsStarted(90, Some(90 + C)),
            Feed(100, "QUIT\r\n", "221;close", None),
        ];
        run_steps(&steps);
    }

    #[test]
    fn bytes_trickled_into_one_line_do_not_move_its_deadline() {
        // Slowloris: a client that sends a byte now and then but never ends its line is cut
        // when the line's time is up; a line that ends starts the next line's time.
        use Step::*;
        const C: u64 = 300; // command timeout
        const D: u64 = 180; // data timeout
        run_steps(&[
            Feed(10, "EHLO c.test\r\n", "250", Some(10 + C)),
            Feed(100, "NO", "", Some(10 + C)),
            Feed(200, "O", "", Some(10 + C)),
            Feed(300, "P\r\nRS", "250", Some(300 + C)),
            Feed(400, "ET\r\n", "250", Some(400 + C)),
            Feed(500, "EHLO ", "", Some(400 + C)),
            TimedOut(400 + C, "421 4.4.2; close", None),
        ]);
        run_steps(&[
            Feed(
                10,
                "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<bob@in.test>\r\nDATA\r\n",
                "250;250;250;354",
                Some(10 + D),
            ),
            Feed(100, "a long line, trickled", "", Some(10 + D)),
            Feed(150, " byte by byte", "", Some(10 + D)),
            Feed(160, "\r\nnext line", "", Some(160 + D)),
            TimedOut(160 + D - 1, "", Some(160 + D)),
            TimedOut(160 + D, "421 4.4.2; close", None),
        ]);
    }

    /// Plays `steps` on a fresh session started at second 0; the command timeout is 300 s and
    /// the data timeout 180 s (the defaults).
    fn run_steps(steps: &[Step]) {
        use Step::*;
        const C: u64 = 300;
        let setup = Setup::default();
        let budget = InFlightBudget::new(10_000);
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut session = session_with(&setup, &budget, start);
        assert_eq!(session.deadline(), Some(at(C)));
        for (i, step) in steps.iter().enumerate() {
            let (actions, expect, deadline) = match *step {
                Feed(t, bytes, expect, deadline) => {
                    (session.feed(bytes.as_bytes(), at(t)), expect, deadline)
                }
                DeliveryDone(t, expect, deadline) => (
                    session.delivery_done(Reply::new(250, "2.0.0 queued"), at(t)),
                    expect,
                    deadline,
                ),
                TlsStarted(t, deadline) => (session.tls_started(at(t)), "", deadline),
                TimedOut(t, expect, deadline) => (session.timed_out(at(t)), expect, deadline),
            };
            assert_actions(&replies(&actions), expect, format!("step {i}").as_bytes());
            assert_eq!(session.deadline(), deadline.map(at), "step {i}");
        }
    }

    #[test]
    fn shutdown_closes_between_commands_and_lets_data_and_delivery_finish() {
        let shutdown = "=421 4.3.2 mx.test Service shutting down, closing connection; close";
        let cases: &[(&str, String)] = &[
            ("<<SHUTDOWN>>", shutdown.to_owned()),
            (
                "EHLO c.test\r\n<<SHUTDOWN>>NOOP\r\n",
                format!("250; {shutdown}"),
            ),
            ("NOO<<SHUTDOWN>>P\r\n", shutdown.to_owned()),
            // Between commands, even inside a transaction, nothing is lost by closing.
            (
                "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\n<<SHUTDOWN>>RCPT TO:<bob@in.test>\r\n\
                 DATA\r\nhi\r\n.\r\nNOOP\r\n",
                format!("250; 250; {shutdown}"),
            ),
            (
                "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<bob@in.test>\r\nDATA\r\nhi\
                 <<SHUTDOWN>>\r\n.\r\nNOOP\r\n",
                format!("250; 250; 250; 354; deliver; 250 2.0.0 queued; {shutdown}"),
            ),
            (
                "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\n<<SHUTDOWN>><<SHUTDOWN>>RSET\r\nNOOP\r\n",
                format!("250; 250; {shutdown}"),
            ),
            (
                "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<bob@in.test>\r\nDATA\r\n\
                 bad\n<<SHUTDOWN>>.\r\n.\r\nNOOP\r\n",
                format!("250; 250; 250; 354; 550 5.6.0; {shutdown}"),
            ),
            (
                "STARTTLS\r\n<<SHUTDOWN>>",
                "220 2.0.0; starttls; close".to_owned(),
            ),
            ("QUIT\r\n<<SHUTDOWN>>", "221; close".to_owned()),
        ];
        for (script, expect) in cases {
            check(script, expect);
        }
    }

    #[test]
    fn shutdown_during_delivery_closes_after_the_delivery_reply() {
        let setup = Setup::default();
        let budget = InFlightBudget::new(10_000);
        let now = Instant::now();
        let mut session = session_with(&setup, &budget, now);
        let actions = session.feed(format!("{ENVELOPE}DATA\r\nhi\r\n.\r\n").as_bytes(), now);
        assert_eq!(
            replies(&actions).last().map(String::as_str),
            Some("deliver")
        );
        assert!(session.shutdown().is_empty());
        assert!(session.feed(b"NOOP\r\n", now).is_empty());
        let actions = session.delivery_done(Reply::new(250, "2.0.0 queued"), now);
        assert_eq!(
            replies(&actions),
            [
                "250 2.0.0 queued",
                "421 4.3.2 mx.test Service shutting down, closing connection",
                "close"
            ]
        );
        assert!(session.is_closed());
        assert!(
            session
                .delivery_done(Reply::new(250, "2.0.0 again"), now)
                .is_empty()
        );
    }

    #[test]
    fn input_pipelined_during_delivery_is_bounded() {
        let noops = |bytes: usize| "NOOP\r\n".repeat(bytes / 6);
        for (pipelined, expect_noops, expect_close) in [
            (noops(MAX_PIPELINED_INPUT), MAX_PIPELINED_INPUT / 6, false),
            (noops(MAX_PIPELINED_INPUT + 6), 0, true),
        ] {
            let setup = Setup::default();
            let budget = InFlightBudget::new(10_000);
            let now = Instant::now();
            let mut session = session_with(&setup, &budget, now);
            session.feed(format!("{ENVELOPE}DATA\r\nhi\r\n.\r\n").as_bytes(), now);
            for chunk in pipelined.as_bytes().chunks(1000) {
                assert!(session.feed(chunk, now).is_empty());
            }
            let got = replies(&session.delivery_done(Reply::new(250, "2.0.0 queued"), now));
            assert_eq!(got[0], "250 2.0.0 queued");
            assert_eq!(
                got.iter().filter(|r| *r == "250 2.0.0 Ok").count(),
                expect_noops
            );
            let closed = got.ends_with(&[
                "421 4.7.0 mx.test Too much pipelined input, closing connection".to_owned(),
                "close".to_owned(),
            ]);
            assert_eq!(closed, expect_close);
        }
    }

    #[test]
    fn reply_wire_form_is_sanitised() {
        let cases: &[(Reply, &str)] = &[
            (Reply::new(250, "2.0.0 Ok"), "250 2.0.0 Ok\r\n"),
            (
                Reply::with_lines(250, vec!["a".into(), "b".into(), "c".into()]),
                "250-a\r\n250-b\r\n250 c\r\n",
            ),
            (Reply::with_lines(250, vec![]), "250 \r\n"),
            (
                Reply::new(550, "5.7.1 no\r\n250 2.0.0 forged"),
                "550 5.7.1 no??250 2.0.0 forged\r\n",
            ),
            (Reply::new(550, "5.7.1 grüße\0"), "550 5.7.1 gr????e?\r\n"),
            (
                Reply::new(250, "x".repeat(1000)),
                &format!("250 {}\r\n", "x".repeat(MAX_REPLY_TEXT)),
            ),
        ];
        for (reply, wire) in cases {
            assert_eq!(
                String::from_utf8_lossy(&reply.to_bytes()),
                *wire,
                "{reply:?}"
            );
        }
        for (code, positive) in [
            (199, false),
            (200, true),
            (354, true),
            (399, true),
            (400, false),
            (550, false),
        ] {
            assert_eq!(Reply::new(code, "").is_positive(), positive, "{code}");
        }
    }

    #[test]
    fn debug_output_never_shows_addresses_or_content() {
        let setup = Setup::default();
        let budget = InFlightBudget::new(10_000);
        let now = Instant::now();
        let mut session = session_with(&setup, &budget, now);
        let mut actions = session.feed(
            format!("{ENVELOPE}DATA\r\nsecret body\r\n.\r\n").as_bytes(),
            now,
        );
        let debug = format!("{actions:?} {session:?}");
        for leak in ["alice", "bob", "secret", "client.test"] {
            assert!(!debug.contains(leak), "{leak} in {debug}");
        }
        assert!(matches!(actions.pop(), Some(Action::Deliver(t)) if t.data == b"secret body\r\n"));
    }

    /// A small deterministic generator, so the soak test needs no dependency.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, bound: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % bound.max(1)
        }
    }

    #[test]
    fn arbitrary_input_never_panics_and_always_releases_the_budget() {
        const PIECES: &[&[u8]] = &[
            b"EHLO c.test\r\n",
            b"MAIL FROM:<a@example.test>\r\n",
            b"MAIL FROM:<> SIZE=50\r\n",
            b"RCPT TO:<bob@in.test>\r\n",
            b"RCPT TO:<x@elsewhere.test>\r\n",
            b"DATA\r\n",
            b"\r\n.\r\n",
            b".\r\n",
            b"..",
            b"\r\n",
            b"\n",
            b"\r",
            b"\0",
            b"\xff\xc3",
            b"text ",
            b"STARTTLS\r\n",
            b"RSET\r\n",
            b"QUIT\r\n",
            b"NOOP\r\n",
            b"<",
            b">",
            b"@",
            b":",
            b"SMTPUTF8",
            b"\xce\xb4",
            b"GET ",
        ];
        let setup = Setup::default();
        let budget = InFlightBudget::new(400);
        let mut rng = Lcg(7);
        for _ in 0..300 {
            let mut now = Instant::now();
            let mut session = session_with(&setup, &budget, now);
            let mut input = Vec::new();
            for _ in 0..rng.next(200) {
                input.extend_from_slice(PIECES[rng.next(PIECES.len())]);
            }
            let mut rest = &input[..];
            let mut held = Vec::new();
            while !rest.is_empty() && !session.is_closed() {
                let (chunk, tail) = rest.split_at(1 + rng.next(rest.len()).min(40));
                rest = tail;
                now += MILLI;
                let mut batch = session.feed(chunk, now);
                while let Some(Action::Deliver(transaction)) = batch.pop() {
                    held.push(transaction);
                    if rng.next(3) == 0 {
                        held.clear();
                    }
                    batch = session.delivery_done(Reply::new(250, "2.0.0 queued"), now);
                }
                if batch.iter().any(|a| matches!(a, Action::StartTls)) {
                    session.tls_started(now);
                }
                assert!(budget.used() <= budget.limit());
                match rng.next(50) {
                    0 => drop(session.shutdown()),
                    1 => drop(session.timed_out(now + Duration::from_secs(3600))),
                    _ => {}
                }
            }
            drop(held);
            drop(session);
            assert_eq!(budget.used(), 0);
        }
    }
}
