//! Fuzz target: the SMTP session core (`mxnode::smtp::session`) under arbitrary client bytes,
//! arbitrary chunking and driver events (STARTTLS handshakes, delivery replies, shutdown,
//! timeouts).
//!
//! Input layout: byte 0 picks the session setup ([`Setup::from_byte`]), byte 1 seeds the
//! chunking, the rest is a client script. In the script `<<TLS>>` (the handshake succeeded),
//! `<<SHUTDOWN>>`, `<<TIMEOUT>>` (the driver's timer fired at the deadline) and `<<WAIT>>` (a
//! minute passes) are driver events, as in the session's unit tests; every delivery is answered
//! at once with the reply the setup picks.
//!
//! The script runs twice: each segment fed whole, then cut into pseudo-random chunks. Both runs
//! must give the same replies and deliveries (the session's contract: chunking never matters),
//! and after every call the invariants the I/O driver and the delivery path rely on must hold:
//! `Close` and `Deliver` end their batch, a delivered message has no bare CR, bare LF or NUL
//! (SMTP smuggling) and fits `max_message_size` and its reservation, the in-flight budget is never
//! overdrawn and is whole again once the session and its transactions are gone, reply lines are
//! CRLF-free and within RFC 5321's 512 bytes. It never does I/O (the session does none).

#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mxnode::smtp::budget::InFlightBudget;
use mxnode::smtp::session::{Action, Reply, Session, SessionConfig};

/// Longest reply line on the wire, CRLF included (RFC 5321 4.5.3.1.5).
const MAX_REPLY_LINE: usize = 512;

fuzz_target!(|input: &[u8]| {
    let [setup_byte, chunk_seed, script @ ..] = input else {
        return;
    };
    let mut setup = Setup::from_byte(*setup_byte);
    // The chunk seed's low bit gives the client address a share of half the budget
    // (`smtp.max_in_flight_per_ip`), so both limits are fuzzed.
    setup.client_share = (chunk_seed & 1 == 1).then_some(setup.budget / 2);
    let segments = parse_script(script);
    let whole = run(&setup, &segments, &mut |len| vec![len]);
    let mut rng = Lcg(u64::from(*chunk_seed) + 1);
    let chunked = run(&setup, &segments, &mut |len| rng.split(len));
    assert_eq!(whole, chunked, "chunking changed what the session did");
});

/// The session knobs one input byte selects.
#[derive(Debug, Clone)]
struct Setup {
    starttls: bool,
    max_message_size: usize,
    max_recipients: usize,
    budget: usize,
    /// Answer deliveries 250, 451, 550, 554 in turn instead of always 250.
    mixed_replies: bool,
    /// The client address's share of the budget, when bounded.
    client_share: Option<usize>,
}

impl Setup {
    fn from_byte(b: u8) -> Setup {
        const SIZES: [usize; 4] = [64, 200, 4096, 1 << 20];
        const RECIPIENTS: [usize; 4] = [1, 3, 100, 2];
        const BUDGETS: [usize; 4] = [0, 150, 10_000, 1 << 22];
        Setup {
            starttls: b & 1 != 0,
            max_message_size: SIZES[usize::from((b >> 1) & 3)],
            max_recipients: RECIPIENTS[usize::from((b >> 3) & 3)],
            budget: BUDGETS[usize::from((b >> 5) & 3)],
            mixed_replies: b & 0x80 != 0,
            client_share: None,
        }
    }

    fn config(&self) -> Arc<SessionConfig> {
        Arc::new(SessionConfig {
            max_message_size: self.max_message_size,
            max_recipients: self.max_recipients,
            starttls_available: self.starttls,
            ..SessionConfig::new("mx.test")
        })
    }

    fn delivery_reply(&self, n: usize) -> Reply {
        if !self.mixed_replies {
            return Reply::new(250, "2.0.0 queued");
        }
        match n % 4 {
            0 => Reply::new(250, "2.0.0 queued"),
            1 => Reply::new(451, "4.3.0 later"),
            2 => Reply::new(550, "5.7.1 refused\r\n250 forged"),
            _ => Reply::new(554, "5.6.0 too complex"),
        }
    }
}

/// The routes of the fuzzed node: `*@in.test` and postmaster.
fn routed(address: &str) -> bool {
    let lower = address.to_lowercase();
    lower.ends_with("@in.test") || lower == "postmaster"
}

#[derive(Debug, Clone)]
enum Segment {
    Bytes(Vec<u8>),
    Tls,
    Shutdown,
    Timeout,
    Wait,
}

fn parse_script(script: &[u8]) -> Vec<Segment> {
    const MARKERS: [(&[u8], Segment); 4] = [
        (b"<<TLS>>", Segment::Tls),
        (b"<<SHUTDOWN>>", Segment::Shutdown),
        (b"<<TIMEOUT>>", Segment::Timeout),
        (b"<<WAIT>>", Segment::Wait),
    ];
    let mut segments = Vec::new();
    let mut bytes = Vec::new();
    let mut i = 0;
    'outer: while let Some(rest) = script.get(i..).filter(|r| !r.is_empty()) {
        for (marker, segment) in &MARKERS {
            if rest.starts_with(marker) {
                segments.push(Segment::Bytes(std::mem::take(&mut bytes)));
                segments.push(segment.clone());
                i += marker.len();
                continue 'outer;
            }
        }
        bytes.push(rest[0]);
        i += 1;
    }
    segments.push(Segment::Bytes(bytes));
    segments
}

/// What one run did, compared between chunkings.
#[derive(Debug, PartialEq, Default)]
struct Outcome {
    actions: Vec<String>,
    /// helo, mail_from, rcpt_to, data, smtputf8 of each delivery.
    delivered: Vec<(String, String, Vec<String>, Vec<u8>, bool)>,
    tls: bool,
    closed: bool,
}

fn run(
    setup: &Setup,
    segments: &[Segment],
    chunks: &mut dyn FnMut(usize) -> Vec<usize>,
) -> Outcome {
    let budget = InFlightBudget::new(setup.budget);
    let start = Instant::now();
    let mut now = start;
    let client = setup.client_share.map(InFlightBudget::new);
    let mut session = Session::new(setup.config(), Arc::new(routed), budget.clone(), now);
    if let Some(client) = &client {
        session = session.with_client_budget(client.clone());
    }
    let mut outcome = Outcome::default();
    let greeting = session.greeting();
    check(&mut outcome, &mut session, setup, &budget, greeting, now);
    for segment in segments {
        now += Duration::from_millis(1);
        let was_closed = session.is_closed();
        let batch = match segment {
            Segment::Bytes(bytes) => {
                let mut offset = 0;
                for size in chunks(bytes.len()) {
                    let piece = &bytes[offset..offset + size];
                    offset += size;
                    let batch = session.feed(piece, now);
                    assert!(!was_closed || batch.is_empty(), "a closed session answered");
                    check(&mut outcome, &mut session, setup, &budget, batch, now);
                }
                assert_eq!(offset, bytes.len());
                Vec::new()
            }
            Segment::Tls => session.tls_started(now),
            Segment::Shutdown => session.shutdown(),
            Segment::Timeout => match session.deadline() {
                Some(deadline) => {
                    let early = session.timed_out(deadline - Duration::from_millis(1));
                    assert!(early.is_empty(), "timed out before the deadline");
                    now = now.max(deadline);
                    session.timed_out(deadline)
                }
                None => Vec::new(),
            },
            Segment::Wait => {
                now += Duration::from_secs(60);
                session.timed_out(now)
            }
        };
        assert!(!was_closed || batch.is_empty(), "a closed session acted");
        check(&mut outcome, &mut session, setup, &budget, batch, now);
        if let Some(client) = &client {
            assert!(client.used() <= client.limit(), "the client's share is overdrawn");
            assert!(client.used() <= budget.used(), "the share is part of the budget");
        }
    }
    outcome.tls = session.is_tls();
    outcome.closed = session.is_closed();
    drop(session);
    assert_eq!(budget.used(), 0, "every reservation is released");
    if let Some(client) = &client {
        assert_eq!(client.used(), 0, "the client's share is released");
    }
    outcome
}

/// Carries out one batch of actions like the I/O driver, answering deliveries at once, and
/// checks every invariant on the way.
fn check(
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
                Action::Reply(reply) => {
                    check_wire_form(&reply);
                    outcome
                        .actions
                        .push(format!("{} {}", reply.code, reply.lines.join(" / ")));
                }
                Action::StartTls => outcome.actions.push("starttls".into()),
                Action::Close => {
                    assert!(last, "Close ends its batch");
                    assert!(session.is_closed());
                    outcome.actions.push("close".into());
                }
                Action::Deliver(tx) => {
                    assert!(last, "Deliver ends its batch");
                    assert_eq!(session.deadline(), None, "no timeout while delivering");
                    check_transaction(&tx, setup, budget);
                    outcome.actions.push("deliver".into());
                    outcome.delivered.push((
                        tx.helo.clone(),
                        tx.mail_from.clone(),
                        tx.rcpt_to.clone(),
                        tx.data.clone(),
                        tx.smtputf8,
                    ));
                    // Delivery is over: the transaction and its reservation go, as in the driver.
                    drop(tx);
                    delivered = true;
                }
            }
        }
        assert!(budget.used() <= budget.limit(), "budget overdrawn");
        if !delivered {
            // Waiting for input: a deadline exactly while the session is open.
            assert_eq!(session.deadline().is_none(), session.is_closed());
            return;
        }
        let reply = setup.delivery_reply(outcome.delivered.len() - 1);
        batch = session.delivery_done(reply, now);
    }
}

fn check_transaction(
    tx: &mxnode::smtp::session::Transaction,
    setup: &Setup,
    budget: &InFlightBudget,
) {
    let data = &tx.data;
    assert!(
        data.len() <= setup.max_message_size,
        "message over max_message_size"
    );
    assert!(
        tx.reservation.bytes() >= data.len(),
        "message outside its reservation"
    );
    assert!(budget.used() >= tx.reservation.bytes());
    assert!(
        data.is_empty() || data.ends_with(b"\r\n"),
        "message without its last CRLF"
    );
    for (i, &b) in data.iter().enumerate() {
        match b {
            0 => panic!("NUL delivered"),
            b'\r' => assert_eq!(data.get(i + 1), Some(&b'\n'), "bare CR delivered"),
            b'\n' => assert!(i > 0 && data[i - 1] == b'\r', "bare LF delivered"),
            _ => {}
        }
    }
    assert!(!tx.rcpt_to.is_empty() && tx.rcpt_to.len() <= setup.max_recipients);
    assert!(
        tx.rcpt_to.iter().all(|r| routed(r)),
        "an unrouted recipient was accepted"
    );
    if !tx.smtputf8 {
        assert!(tx.mail_from.is_ascii() && tx.rcpt_to.iter().all(|r| r.is_ascii()));
    }
}

/// A reply cannot smuggle a line of its own and fits RFC 5321's line limit.
fn check_wire_form(reply: &Reply) {
    assert!(
        (200..600).contains(&reply.code),
        "reply code {}",
        reply.code
    );
    let wire = reply.to_bytes();
    let lines: Vec<&[u8]> = wire.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(lines.len(), reply.lines.len().max(1));
    for line in lines {
        assert!(line.len() <= MAX_REPLY_LINE, "reply line too long");
        let body = line.strip_suffix(b"\r\n").expect("reply lines end in CRLF");
        assert!(!body.iter().any(|&b| b == b'\r' || b == b'\n'));
        assert_eq!(&body[..3], reply.code.to_string().as_bytes());
    }
}

/// A small deterministic generator for chunk sizes.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % bound.max(1)
    }

    /// `len` cut into chunks of 1 to 16 bytes, now and then a larger one.
    fn split(&mut self, len: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut left = len;
        while left > 0 {
            let size = if self.next(8) == 0 {
                1 + self.next(512)
            } else {
                1 + self.next(16)
            };
            let size = size.min(left);
            sizes.push(size);
            left -= size;
        }
        sizes
    }
}
