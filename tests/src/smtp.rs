//! SMTP clients for the tests: a raw client that sends exactly the bytes a
//! test gives it (with an optional STARTTLS upgrade), plus wrappers around
//! two independent implementations, lettre and swaks.
//!
//! The raw client must never "fix" what a test sends: bare LF, odd pipelining
//! and smuggling vectors go out as given. It must never block without a
//! deadline either: every read has a timeout, so a hung daemon fails the test.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use lettre::address::{Address, Envelope};
use lettre::transport::smtp::extension::ClientId;
use lettre::{SmtpTransport, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use socket2::{Domain, Protocol, Socket, Type};

use crate::process::output_with_timeout;

/// Upper bound of any single read or write on an SMTP connection. Long
/// enough for a full webhook budget with retries, short enough that a hang
/// fails the test instead of blocking CI.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(120);

/// A reply line longer than this means the server is broken (RFC 5321
/// allows 512 bytes); it also bounds the client's buffer.
const MAX_REPLY_LINE: usize = 64 * 1024;

/// Bytes asked from the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// Bytes [`SmtpClient::send_burst`] writes before it looks for replies.
const BURST_CHUNK: usize = 16 * 1024;

/// The name the raw client announces in EHLO.
const CLIENT_NAME: &str = "client.test";

/// An SMTP reply: the code and the text of each line (after `NNN-` / `NNN `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code, e.g. 250.
    pub code: u16,
    /// The text of each line, in order, without the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// All lines joined by `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Whether any line contains `needle` (e.g. an EHLO keyword).
    pub fn contains(&self, needle: &str) -> bool {
        self.lines.iter().any(|line| line.contains(needle))
    }

    /// The enhanced status code (RFC 3463) of the first line, e.g. `5.6.0`.
    pub fn enhanced_code(&self) -> Option<&str> {
        let first = self.lines.first()?.split(' ').next()?;
        let parts: Vec<&str> = first.split('.').collect();
        let numeric = parts
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
        (parts.len() == 3 && numeric).then_some(first)
    }

    /// Whether the code is 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

/// The connection under the client: plain TCP, or TLS after STARTTLS.
enum Stream {
    /// Before STARTTLS.
    Plain(TcpStream),
    /// After a successful STARTTLS handshake; boxed because it is large.
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

/// A raw SMTP client over one TCP connection, in the style of mini-redis'
/// tests: the test decides every byte; helpers cover the common dialogue.
/// Convenience methods panic on I/O errors (with context); the `try_`
/// variants return them, for tests that expect the server to hang up.
pub struct SmtpClient {
    /// The connection (plain or TLS).
    stream: Option<Stream>,
    /// Bytes received but not yet consumed as reply lines. Kept explicitly
    /// (not in a BufReader) so a STARTTLS upgrade can check nothing was
    /// pipelined behind the `220`.
    buffer: Vec<u8>,
    /// The server's greeting.
    greeting: Reply,
    /// Whether EHLO was sent on the current (plain or TLS) session;
    /// [`SmtpClient::send_mail`] sends one when not.
    ehlo_sent: bool,
    /// The current read timeout, named in the error when it expires.
    read_timeout: Duration,
}

impl SmtpClient {
    /// Connects to `addr` and reads the greeting. Panics on failure.
    pub fn connect(addr: SocketAddr) -> SmtpClient {
        SmtpClient::try_connect(addr)
            .unwrap_or_else(|error| panic!("SMTP connect to {addr} and read the greeting: {error}"))
    }

    /// Connects to `addr` and reads the greeting, returning I/O errors (e.g.
    /// for session-limit tests where the server may hang up at once).
    pub fn try_connect(addr: SocketAddr) -> io::Result<SmtpClient> {
        SmtpClient::with_stream(TcpStream::connect_timeout(&addr, SMTP_TIMEOUT)?)
    }

    /// Connects to `addr` from the local address `source` and reads the
    /// greeting. Every 127.0.0.0/8 address is loopback on Linux, so a test
    /// can play several client hosts (e.g. `127.0.0.2`) against the node's
    /// per-address limits.
    pub fn try_connect_from(addr: SocketAddr, source: IpAddr) -> io::Result<SmtpClient> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
        socket.connect_timeout(&addr.into(), SMTP_TIMEOUT)?;
        SmtpClient::with_stream(socket.into())
    }

    /// Takes over a connected socket and reads the greeting.
    fn with_stream(tcp: TcpStream) -> io::Result<SmtpClient> {
        tcp.set_read_timeout(Some(SMTP_TIMEOUT))?;
        tcp.set_write_timeout(Some(SMTP_TIMEOUT))?;
        let mut client = SmtpClient {
            stream: Some(Stream::Plain(tcp)),
            buffer: Vec::new(),
            greeting: Reply {
                code: 0,
                lines: Vec::new(),
            },
            ehlo_sent: false,
            read_timeout: SMTP_TIMEOUT,
        };
        client.greeting = client.try_read_reply()?;
        Ok(client)
    }

    /// The greeting the server sent on connect (e.g. `220 mx.test ESMTP`).
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// Changes the read timeout (e.g. shorter, to prove the server stays silent).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        let tcp = match self.stream.as_ref().expect("the connection is open") {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.sock,
        };
        tcp.set_read_timeout(Some(timeout))
            .expect("set the read timeout");
        self.read_timeout = timeout;
    }

    /// Sends `bytes` exactly as given. Panics on failure.
    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .unwrap_or_else(|error| panic!("SMTP send of {} bytes: {error}", bytes.len()));
    }

    /// Sends `bytes` exactly as given, returning I/O errors (the server may
    /// have closed the connection after refusing something).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.stream.as_mut().ok_or_else(closed)?;
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Reads one (possibly multi-line) reply. Panics on EOF, timeout or a
    /// malformed reply.
    pub fn read_reply(&mut self) -> Reply {
        self.try_read_reply()
            .unwrap_or_else(|error| panic!("SMTP read reply: {error}"))
    }

    /// Reads one (possibly multi-line) reply; EOF is `UnexpectedEof`, a
    /// timeout `TimedOut`, a malformed line `InvalidData`. A timeout leaves
    /// a partly received reply buffered, so nothing is lost by retrying.
    pub fn try_read_reply(&mut self) -> io::Result<Reply> {
        loop {
            if let Some(reply) = self.take_buffered_reply()? {
                return Ok(reply);
            }
            self.fill_buffer()?;
        }
    }

    /// Sends `bytes` as one pipelined burst without waiting for replies in
    /// between, while collecting the replies that arrive meanwhile: a burst
    /// whose replies outgrow the socket buffers (say 10,000 `RCPT`s) would
    /// otherwise deadlock, each side blocked writing to the other. Returns
    /// the replies read so far; the rest follow with [`SmtpClient::read_reply`].
    pub fn send_burst(&mut self, bytes: &[u8]) -> io::Result<Vec<Reply>> {
        let mut replies = Vec::new();
        for chunk in bytes.chunks(BURST_CHUNK) {
            match self.try_send(chunk) {
                Ok(()) => {}
                // The server hung up mid-burst (e.g. `421` after too many errors): what it
                // said before is in the replies; the caller sees the close on its next read.
                Err(error) if is_hang_up(&error) => break,
                Err(error) => return Err(error),
            }
            replies.extend(self.replies_within(Duration::from_millis(1))?);
        }
        Ok(replies)
    }

    /// The complete replies that arrive within `wait` (none is an empty
    /// list); e.g. to prove the server stays silent after a fake end of data.
    /// A partly received reply stays buffered for the next read.
    pub fn replies_within(&mut self, wait: Duration) -> io::Result<Vec<Reply>> {
        let previous = self.read_timeout;
        self.set_read_timeout(wait.max(Duration::from_millis(1)));
        let mut replies = Vec::new();
        let result = loop {
            match self.take_buffered_reply() {
                Ok(Some(reply)) => {
                    replies.push(reply);
                    continue;
                }
                Ok(None) => {}
                Err(error) => break Err(error),
            }
            match self.fill_buffer() {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::TimedOut => break Ok(()),
                // Closed: the replies so far are the answer; the next read reports the close.
                Err(error) if is_hang_up(&error) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        if self.stream.is_some() {
            self.set_read_timeout(previous);
        }
        result.map(|()| replies)
    }

    /// Reads replies until the server closes the connection; returns them
    /// and whether it did close (false: `quiet` passed without a reply).
    pub fn replies_until_closed(&mut self, quiet: Duration) -> (Vec<Reply>, bool) {
        let previous = self.read_timeout;
        self.set_read_timeout(quiet);
        let mut replies = Vec::new();
        let closed = loop {
            match self.try_read_reply() {
                Ok(reply) => replies.push(reply),
                Err(error) => break error.kind() != io::ErrorKind::TimedOut,
            }
        };
        if let Some(stream) = &self.stream {
            let tcp = match stream {
                Stream::Plain(tcp) => tcp,
                Stream::Tls(tls) => &tls.sock,
            };
            let _ = tcp.set_read_timeout(Some(previous));
            self.read_timeout = previous;
        }
        (replies, closed)
    }

    /// Sends `line` plus CRLF and reads the reply.
    pub fn command(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// Sends `EHLO name` and reads the (multi-line) reply.
    pub fn ehlo(&mut self, name: &str) -> Reply {
        let reply = self.command(&format!("EHLO {name}"));
        self.ehlo_sent = reply.code == 250;
        reply
    }

    /// One whole transaction: EHLO (unless already sent), `MAIL FROM:<from>`,
    /// `RCPT TO:<…>` for each recipient, `DATA`, then `data` dot-stuffed
    /// (a `.` after CRLF or at the start is doubled), a CRLF added if
    /// missing, and `.` CRLF. Returns the reply after the data, or the first
    /// reply that refused a step. Bare LF in `data` is sent as is.
    pub fn send_mail(&mut self, from: &str, rcpts: &[&str], data: &[u8]) -> Reply {
        self.try_send_mail(from, rcpts, data)
            .unwrap_or_else(|error| panic!("SMTP transaction: {error}"))
    }

    /// [`SmtpClient::send_mail`] returning I/O errors, for tests in which the
    /// server may vanish mid-transaction (a crash, a connection limit).
    pub fn try_send_mail(&mut self, from: &str, rcpts: &[&str], data: &[u8]) -> io::Result<Reply> {
        if !self.ehlo_sent {
            let reply = self.try_command(&format!("EHLO {CLIENT_NAME}"))?;
            self.ehlo_sent = reply.code == 250;
            if reply.code != 250 {
                return Ok(reply);
            }
        }
        let reply = self.try_command(&format!("MAIL FROM:<{from}>"))?;
        if reply.code != 250 {
            return Ok(reply);
        }
        for rcpt in rcpts {
            let reply = self.try_command(&format!("RCPT TO:<{rcpt}>"))?;
            if reply.code != 250 && reply.code != 251 {
                return Ok(reply);
            }
        }
        let reply = self.try_command("DATA")?;
        if reply.code != 354 {
            return Ok(reply);
        }
        self.try_send(&dot_stuff(data))?;
        self.try_read_reply()
    }

    /// Sends `line` plus CRLF and reads the reply, returning I/O errors.
    pub fn try_command(&mut self, line: &str) -> io::Result<Reply> {
        self.try_send(format!("{line}\r\n").as_bytes())?;
        self.try_read_reply()
    }

    /// Sends `STARTTLS`; on `220`, upgrades the connection trusting only the
    /// CA in `ca_pem` (server name `localhost`). Returns the STARTTLS reply;
    /// panics if the handshake fails. The server forgets EHLO after TLS.
    pub fn starttls(&mut self, ca_pem: &Path) -> Reply {
        self.starttls_offering(ca_pem, rustls::DEFAULT_VERSIONS)
    }

    /// [`SmtpClient::starttls`] with a client that offers only `versions`
    /// (e.g. `&[&rustls::version::TLS12]`, a client that stops at TLS 1.2).
    pub fn starttls_offering(
        &mut self,
        ca_pem: &Path,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Reply {
        let reply = self.command("STARTTLS");
        if reply.code == 220 {
            self.upgrade_tls_offering(ca_pem, versions)
                .unwrap_or_else(|error| panic!("STARTTLS handshake: {error}"));
        }
        reply
    }

    /// Performs the TLS handshake on the current connection, for tests that
    /// send `STARTTLS` themselves (e.g. with commands pipelined behind it).
    /// Fails with `InvalidData` if the server sent anything after its `220`
    /// before the handshake: that would be plaintext injected into the TLS
    /// session.
    pub fn upgrade_tls(&mut self, ca_pem: &Path) -> io::Result<()> {
        self.upgrade_tls_offering(ca_pem, rustls::DEFAULT_VERSIONS)
    }

    /// [`SmtpClient::upgrade_tls`] offering only the TLS `versions`.
    fn upgrade_tls_offering(
        &mut self,
        ca_pem: &Path,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> io::Result<()> {
        if !self.buffer.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "server sent {:?} in plaintext after its STARTTLS reply",
                    String::from_utf8_lossy(&self.buffer)
                ),
            ));
        }
        let tcp = match self.stream.take().ok_or_else(closed)? {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the connection already uses TLS",
                ));
            }
        };
        let config = tls_client_config(ca_pem, versions)?;
        let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
        let connection = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(connection, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        self.stream = Some(Stream::Tls(Box::new(tls)));
        self.ehlo_sent = false;
        Ok(())
    }

    /// The server's certificate (DER) after STARTTLS, `None` on a plain
    /// connection; e.g. to tell which certificate a reloaded node serves.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match self.stream.as_ref()? {
            Stream::Plain(_) => None,
            Stream::Tls(tls) => Some(tls.conn.peer_certificates()?.first()?.to_vec()),
        }
    }

    /// The negotiated TLS version and cipher suite (e.g. `TLSv1_3`,
    /// `TLS13_AES_256_GCM_SHA384`), or `None` on a plain connection.
    pub fn tls_info(&self) -> Option<(String, String)> {
        match self.stream.as_ref()? {
            Stream::Plain(_) => None,
            Stream::Tls(tls) => {
                let version = tls.conn.protocol_version()?;
                let suite = tls.conn.negotiated_cipher_suite()?;
                Some((format!("{version:?}"), format!("{:?}", suite.suite())))
            }
        }
    }

    /// Takes the first complete reply out of the buffer, if one is there.
    fn take_buffered_reply(&mut self) -> io::Result<Option<Reply>> {
        let mut lines = Vec::new();
        let mut offset = 0;
        while let Some(end) = self.buffer[offset..].iter().position(|&b| b == b'\n') {
            let mut line = &self.buffer[offset..offset + end];
            offset += end + 1;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            let Some((code, last, text)) = parse_reply_line(&line) else {
                self.buffer.drain(..offset);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("malformed reply line {line:?}"),
                ));
            };
            lines.push(text.to_string());
            if last {
                self.buffer.drain(..offset);
                return Ok(Some(Reply { code, lines }));
            }
        }
        Ok(None)
    }

    /// Reads more bytes into the buffer: `TimedOut` after the read timeout,
    /// `UnexpectedEof` when the server closed, `InvalidData` for a reply
    /// line longer than any server should send.
    fn fill_buffer(&mut self) -> io::Result<()> {
        if self.buffer.len() > MAX_REPLY_LINE
            && !self.buffer[self.buffer.len() - MAX_REPLY_LINE..].contains(&b'\n')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply line longer than 64 KiB",
            ));
        }
        let stream = self.stream.as_mut().ok_or_else(closed)?;
        let mut chunk = [0u8; READ_CHUNK];
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            // A socket read timeout surfaces as WouldBlock on Linux.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no complete reply within {:?} (received so far: {:?})",
                        self.read_timeout,
                        String::from_utf8_lossy(&self.buffer)
                    ),
                ));
            }
            Err(error) => return Err(error),
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed (unterminated: {:?})",
                    String::from_utf8_lossy(&self.buffer)
                ),
            ));
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Whether `error` means the server closed or reset the connection.
fn is_hang_up(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// The error for using a client whose connection was given up.
fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the SMTP connection is gone")
}

/// `(code, is_last_line, text)` of one reply line: `250-text`, `250 text` or `250`.
fn parse_reply_line(line: &str) -> Option<(u16, bool, &str)> {
    let digits = line.get(..3)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code = digits.parse().ok()?;
    match line.as_bytes().get(3) {
        None => Some((code, true, "")),
        Some(b' ') => Some((code, true, &line[4..])),
        Some(b'-') => Some((code, false, &line[4..])),
        Some(_) => None,
    }
}

/// `data` as it goes on the wire after `354`: dots at line starts doubled
/// (RFC 5321 4.5.2; a line starts after CRLF only), a final CRLF ensured,
/// and the `.` CRLF terminator appended.
fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 5);
    let mut at_line_start = true;
    let mut previous = 0u8;
    for &byte in data {
        if at_line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        at_line_start = byte == b'\n' && previous == b'\r';
        previous = byte;
    }
    if !data.is_empty() && !data.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The certificate (DER) a TLS server at `addr` serves to a new connection
/// (server name `localhost`), verified against `ca_pem` only: e.g. the
/// node's HTTPS listener after its certificate was replaced. Panics when
/// the handshake fails or takes longer than 10 s.
pub fn served_certificate(addr: SocketAddr, ca_pem: &Path) -> Vec<u8> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|error| panic!("connect to {addr}: {error}"));
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    let config = tls_client_config(ca_pem, rustls::DEFAULT_VERSIONS).expect("a TLS client config");
    let name = ServerName::try_from("localhost").expect("a server name");
    let connection = ClientConnection::new(config, name).expect("a TLS client");
    let mut tls = StreamOwned::new(connection, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .unwrap_or_else(|error| panic!("TLS handshake with {addr}: {error}"));
    }
    tls.conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.to_vec())
        .expect("the server sent a certificate")
}

/// A rustls client config trusting only the certificates in `ca_pem`,
/// offering the TLS `versions` (rustls' defaults: TLS 1.3 and 1.2).
fn tls_client_config(
    ca_pem: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).map_err(io::Error::other)? {
        roots
            .add(cert.map_err(io::Error::other)?)
            .map_err(io::Error::other)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Sends `raw` (a complete message, CRLF line endings) from `from` (empty
/// for the null sender) to `rcpts` over plaintext SMTP with lettre, an
/// independent client. Returns the final reply code, or an error whose text
/// starts with the server's code when the server refused (e.g. `"451 …"`).
/// lettre dot-stuffs, but always appends CRLF `.` CRLF, so a message that
/// already ends in CRLF arrives with one extra empty line.
pub fn send_with_lettre(
    addr: SocketAddr,
    from: &str,
    rcpts: &[&str],
    raw: &[u8],
) -> Result<u16, String> {
    let from = match from {
        "" => None,
        from => Some(
            from.parse::<Address>()
                .map_err(|error| format!("invalid sender {from:?}: {error}"))?,
        ),
    };
    let to = rcpts
        .iter()
        .map(|rcpt| {
            rcpt.parse::<Address>()
                .map_err(|error| format!("invalid recipient {rcpt:?}: {error}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let envelope = Envelope::new(from, to).map_err(|error| format!("envelope: {error}"))?;
    let transport = SmtpTransport::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .hello_name(ClientId::Domain(CLIENT_NAME.to_string()))
        .timeout(Some(SMTP_TIMEOUT))
        .build();
    match transport.send_raw(&envelope, raw) {
        Ok(response) => Ok(u16::from(response.code())),
        Err(error) => Err(match error.status() {
            Some(code) => format!("{} {error}", u16::from(code)),
            None => error.to_string(),
        }),
    }
}

/// Runs `swaks --server <ip> --port <port> <args>` (bounded by
/// [`SMTP_TIMEOUT`]) and returns its output; swaks prints the whole
/// dialogue, so tests can assert on it. For STARTTLS pass `--tls`; to also
/// verify the certificate add `--tls-verify --tls-ca-path <ca.pem>`.
pub fn swaks(addr: SocketAddr, args: &[&str]) -> Output {
    let port = addr.port().to_string();
    let ip = addr.ip().to_string();
    output_with_timeout(
        Command::new("swaks")
            .args(["--server", &ip, "--port", &port])
            .args(args),
        "swaks",
        SMTP_TIMEOUT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_dot_stuff(data: &str, expect: &str) {
        let out = dot_stuff(data.as_bytes());
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            expect,
            "data {data:?}"
        );
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_terminates() {
        check_dot_stuff("", ".\r\n");
        check_dot_stuff("a\r\n", "a\r\n.\r\n");
        check_dot_stuff("a", "a\r\n.\r\n");
        check_dot_stuff(".a\r\n", "..a\r\n.\r\n");
        check_dot_stuff("a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n");
        check_dot_stuff("a\r\n..b\r\n", "a\r\n...b\r\n.\r\n");
        // Bare LF is not a line end on the wire: sent as is, not stuffed.
        check_dot_stuff("a\n.b\r\n", "a\n.b\r\n.\r\n");
    }

    fn check_line(line: &str, expect: Option<(u16, bool, &str)>) {
        assert_eq!(parse_reply_line(line), expect, "line {line:?}");
    }

    #[test]
    fn reply_lines_are_parsed() {
        check_line("250 ok", Some((250, true, "ok")));
        check_line("250-PIPELINING", Some((250, false, "PIPELINING")));
        check_line("354", Some((354, true, "")));
        check_line("25", None);
        check_line("abc def", None);
        check_line("250+x", None);
    }

    #[test]
    fn enhanced_codes_are_found() {
        let reply = |text: &str| Reply {
            code: 550,
            lines: vec![text.to_string()],
        };
        assert_eq!(reply("5.6.0 bare LF").enhanced_code(), Some("5.6.0"));
        assert_eq!(reply("mx.test ready").enhanced_code(), None);
        assert_eq!(reply("5.6 x").enhanced_code(), None);
    }
}
