//! The no-loss ledger of the fault tests (DESIGN invariant 2): every message the test's
//! senders tried, every answer the node gave, reconciled against what the receiver got.
//!
//! It owns the senders' bookkeeping and the verdict. A message the node acknowledged with
//! `250` must be at the receiver, acknowledged there with a 2xx; a message refused (`4xx`,
//! `5xx`) or cut off (the node vanished) is still the sender's, which retries it with the same
//! bytes as an MTA would; every copy the receiver holds of one message carries the same
//! `webhook-id`, so the receiver can drop duplicates. Tests drive it through
//! [`Ledger::send_all`] and judge with [`Reconciliation::assert_nothing_lost`].
//!
//! It never writes anything to disk: messages are generated from their tags when sent.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::receiver::Received;
use crate::smtp::SmtpClient;

/// The sender address of ledger messages.
const SENDER: &str = "ledger@example.org";

/// What the node answered to one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An SMTP reply after the data (or the refusal of an earlier step).
    Reply(u16, String),
    /// The connection failed or broke before a reply: the sender keeps the message.
    Lost(String),
}

impl Answer {
    /// A `250`: the node took responsibility for the message.
    pub fn acknowledged(&self) -> bool {
        matches!(self, Answer::Reply(250, _))
    }
}

/// How a test's senders behave, MTA-like.
#[derive(Debug, Clone)]
pub struct SendPlan {
    /// Distinct messages.
    pub messages: usize,
    /// Sender threads; each takes the next message still to send.
    pub senders: usize,
    /// Attempts per message before the sender keeps it for good (an MTA's queue).
    pub attempts: usize,
    /// Pause before a retry.
    pub retry_after: Duration,
    /// The recipient of every message (must match a route).
    pub recipient: String,
    /// Size of an attachment each message carries (0: none), for routes that store
    /// attachments in S3.
    pub attachment_bytes: usize,
}

impl SendPlan {
    /// `messages` messages to `recipient` from 8 senders, 4 attempts each, 200 ms apart.
    pub fn new(messages: usize, recipient: &str) -> SendPlan {
        SendPlan {
            messages,
            senders: 8,
            attempts: 4,
            retry_after: Duration::from_millis(200),
            recipient: recipient.to_string(),
            attachment_bytes: 0,
        }
    }
}

/// One message and every answer it got.
#[derive(Debug, Clone)]
struct Entry {
    tag: String,
    answers: Vec<Answer>,
}

/// Every message the senders tried and what the node answered, in memory.
#[derive(Debug)]
pub struct Ledger {
    /// Unique per ledger, so records of another test's messages can never match.
    run: String,
    entries: Mutex<Vec<Entry>>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new()
    }
}

impl Ledger {
    /// An empty ledger with a fresh run id.
    pub fn new() -> Ledger {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Ledger {
            run: format!("L{}x{nanos}", std::process::id()),
            entries: Mutex::new(Vec::new()),
        }
    }

    /// The tag of message `n`: in its Subject and Message-ID.
    fn tag(&self, n: usize) -> String {
        format!("{}-{n}", self.run)
    }

    /// The bytes of the message with `tag`: the same for every attempt, so a retransmission
    /// is the same message to the node (and gets the same `webhook-id`). With
    /// `attachment_bytes > 0` it carries an attachment of that size derived from the tag.
    pub fn message(tag: &str, attachment_bytes: usize) -> Vec<u8> {
        let head = format!(
            "From: Ledger <{SENDER}>\r\nTo: rcpt@in.example.test\r\nSubject: {tag}\r\n\
             Message-ID: <{tag}@ledger.example.org>\r\nMIME-Version: 1.0\r\n"
        );
        if attachment_bytes == 0 {
            return format!("{head}\r\nledger message {tag}\r\n").into_bytes();
        }
        let content: Vec<u8> = tag.bytes().cycle().take(attachment_bytes).collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(content);
        let mut lines = String::new();
        for line in encoded.as_bytes().chunks(76) {
            lines.push_str(&String::from_utf8_lossy(line));
            lines.push_str("\r\n");
        }
        format!(
            "{head}Content-Type: multipart/mixed; boundary=\"ledger\"\r\n\r\n\
             --ledger\r\nContent-Type: text/plain\r\n\r\nledger message {tag}\r\n\
             --ledger\r\nContent-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename=\"{tag}.bin\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{lines}--ledger--\r\n"
        )
        .into_bytes()
    }

    /// Sends every message of `plan` to the address `target` gives at the time of each
    /// attempt (a test may restart the node elsewhere), retrying what was not acknowledged.
    /// Returns when every message was acknowledged or ran out of attempts.
    pub fn send_all(&self, plan: &SendPlan, target: &(dyn Fn() -> SocketAddr + Sync)) {
        {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let first = entries.len();
            entries.extend((first..first + plan.messages).map(|n| Entry {
                tag: self.tag(n),
                answers: Vec::new(),
            }));
        }
        let next = AtomicUsize::new(0);
        thread::scope(|scope| {
            for _ in 0..plan.senders.max(1) {
                scope.spawn(|| {
                    loop {
                        let index = next.fetch_add(1, Ordering::SeqCst);
                        if index >= plan.messages {
                            return;
                        }
                        self.deliver(index, plan, target);
                    }
                });
            }
        });
    }

    /// Up to `plan.attempts` attempts for message `index`; stops at the first `250`.
    fn deliver(&self, index: usize, plan: &SendPlan, target: &(dyn Fn() -> SocketAddr + Sync)) {
        let tag = self.tag(index);
        let data = Ledger::message(&tag, plan.attachment_bytes);
        for attempt in 0..plan.attempts {
            if attempt > 0 {
                thread::sleep(plan.retry_after);
            }
            let answer = match SmtpClient::try_connect(target()) {
                Err(error) => Answer::Lost(format!("connect: {error}")),
                Ok(client) if client.greeting().code != 220 => {
                    let greeting = client.greeting();
                    Answer::Reply(greeting.code, greeting.text())
                }
                Ok(mut client) => {
                    match client.try_send_mail(SENDER, &[plan.recipient.as_str()], &data) {
                        Ok(reply) => {
                            let _ = client.try_command("QUIT");
                            Answer::Reply(reply.code, reply.text())
                        }
                        Err(error) => Answer::Lost(error.to_string()),
                    }
                }
            };
            let done = answer.acknowledged();
            self.record(&tag, answer);
            if done {
                return;
            }
        }
    }

    fn record(&self, tag: &str, answer: Answer) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.iter_mut().find(|e| e.tag == tag) {
            entry.answers.push(answer);
        }
    }

    /// Compares the ledger with what the receiver got.
    pub fn reconcile(&self, received: &[Received]) -> Reconciliation {
        self.reconcile_checked(received, &|_| Ok(()))
    }

    /// [`Ledger::reconcile`], and `check` must accept the receiver's acknowledged copy of
    /// every message the node acknowledged (e.g.: its attachments are in S3, intact).
    pub fn reconcile_checked(
        &self,
        received: &[Received],
        check: &dyn Fn(&Received) -> Result<(), String>,
    ) -> Reconciliation {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut copies: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
        let mut foreign = 0;
        for record in received {
            let subject = record.body["subject"].as_str().unwrap_or_default();
            if entries.iter().any(|e| e.tag == subject) {
                copies.entry(subject.to_string()).or_default().push(record);
            } else if subject.starts_with(&self.run) {
                foreign += 1;
            }
        }
        let mut result = Reconciliation {
            messages: entries.len(),
            foreign,
            ..Reconciliation::default()
        };
        for entry in &entries {
            let held = copies.get(&entry.tag).map(Vec::as_slice).unwrap_or(&[]);
            let acknowledged_by_receiver = held.iter().any(|r| r.acknowledged);
            result.attempts += entry.answers.len();
            for answer in &entry.answers {
                match answer {
                    Answer::Reply(code, _) => {
                        *result.replies.entry(*code).or_default() += 1;
                    }
                    Answer::Lost(_) => result.lost_connections += 1,
                }
            }
            if entry.answers.iter().any(Answer::acknowledged) {
                result.acknowledged += 1;
                if !acknowledged_by_receiver {
                    result.acknowledged_not_delivered.push(entry.tag.clone());
                }
                for copy in held.iter().filter(|r| r.acknowledged) {
                    if let Err(problem) = check(copy) {
                        result
                            .failed_checks
                            .push(format!("{}: {problem}", entry.tag));
                    }
                }
            } else {
                result.still_with_sender += 1;
            }
            if held.len() > 1 {
                result.receiver_duplicates += held.len() - 1;
            }
            let ids: std::collections::BTreeSet<_> =
                held.iter().map(|r| r.header("webhook-id")).collect();
            if ids.len() > 1 || ids.contains(&None) {
                result.inconsistent_ids.push(entry.tag.clone());
            }
            if held.iter().any(|r| !r.signature_valid) {
                result.bad_signatures.push(entry.tag.clone());
            }
        }
        result.table = render_table(&entries);
        result
    }
}

/// The ledger's verdict and its figures.
#[derive(Debug, Default)]
pub struct Reconciliation {
    /// Distinct messages the senders had.
    pub messages: usize,
    /// Attempts made, over all messages.
    pub attempts: usize,
    /// How often each reply code was the answer.
    pub replies: BTreeMap<u16, usize>,
    /// Attempts that ended without a reply (connection refused, reset, closed).
    pub lost_connections: usize,
    /// Messages that got a `250`.
    pub acknowledged: usize,
    /// Messages that never got a `250`: the sender (its MTA queue) still holds them.
    pub still_with_sender: usize,
    /// Extra copies at the receiver (a retry of a message the receiver already had).
    pub receiver_duplicates: usize,
    /// The violations: `250` without an acknowledged copy at the receiver.
    pub acknowledged_not_delivered: Vec<String>,
    /// Messages whose copies at the receiver carry different (or no) `webhook-id`s.
    pub inconsistent_ids: Vec<String>,
    /// Messages with a copy whose signature did not verify.
    pub bad_signatures: Vec<String>,
    /// Acknowledged copies the test's own check refused, with the reason.
    pub failed_checks: Vec<String>,
    /// Receiver records of this run that match no message the senders had.
    pub foreign: usize,
    /// Every message with its answers, for the failure message.
    pub table: String,
}

impl Reconciliation {
    /// One line of figures, e.g. for the test output and the README.
    pub fn summary(&self) -> String {
        let replies: Vec<String> = self
            .replies
            .iter()
            .map(|(code, n)| format!("{code}×{n}"))
            .collect();
        format!(
            "{} messages, {} attempts (replies {}, {} lost connections): {} acknowledged and \
             delivered, {} still with the sender, {} duplicate copies at the receiver",
            self.messages,
            self.attempts,
            replies.join(" "),
            self.lost_connections,
            self.acknowledged - self.acknowledged_not_delivered.len(),
            self.still_with_sender,
            self.receiver_duplicates
        )
    }

    /// DESIGN invariant 2: zero messages acknowledged and not delivered; duplicates only with
    /// one `webhook-id`; every copy signed; nothing delivered that was never sent.
    pub fn assert_nothing_lost(&self) {
        let problems = [
            (
                "acknowledged but not delivered",
                &self.acknowledged_not_delivered,
            ),
            ("copies with different webhook-ids", &self.inconsistent_ids),
            ("copies with a bad signature", &self.bad_signatures),
            (
                "acknowledged copies that failed the check",
                &self.failed_checks,
            ),
        ];
        let mut report = String::new();
        for (what, tags) in problems {
            if !tags.is_empty() {
                let _ = writeln!(report, "{what}: {tags:?}");
            }
        }
        if self.foreign > 0 {
            let _ = writeln!(report, "{} records of messages never sent", self.foreign);
        }
        assert!(
            report.is_empty(),
            "{report}{}\nledger:\n{}",
            self.summary(),
            self.table
        );
    }
}

/// `tag: 451, 451, 250` per message.
fn render_table(entries: &[Entry]) -> String {
    let mut out = String::new();
    for entry in entries {
        let answers: Vec<String> = entry
            .answers
            .iter()
            .map(|a| match a {
                Answer::Reply(code, _) => code.to_string(),
                Answer::Lost(why) => format!("lost ({why})"),
            })
            .collect();
        let _ = writeln!(out, "  {}: {}", entry.tag, answers.join(", "));
    }
    out
}

/// How long [`wait_until`] polls at most by default.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Shared, replaceable target address for senders while a test restarts the node.
#[derive(Debug, Clone)]
pub struct Target(Arc<Mutex<SocketAddr>>);

impl Target {
    pub fn new(addr: SocketAddr) -> Target {
        Target(Arc::new(Mutex::new(addr)))
    }

    pub fn get(&self) -> SocketAddr {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set(&self, addr: SocketAddr) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver record of message `tag` with `id`, acknowledged or not.
    fn copy(tag: &str, id: &str, acknowledged: bool) -> Received {
        serde_json::from_value(serde_json::json!({
            "path": "/ok",
            "time": 0.0,
            "headers": { "webhook-id": id },
            "raw_body": "",
            "json": { "subject": tag },
            "signature_valid": true,
            "timestamp_fresh": true,
            "status": if acknowledged { Some(200) } else { None },
            "acknowledged": acknowledged,
        }))
        .expect("a record")
    }

    /// A ledger with messages 0..answers.len(), each with its answers.
    fn ledger(answers: &[&[Answer]]) -> Ledger {
        let ledger = Ledger::new();
        *ledger.entries.lock().expect("lock") = answers
            .iter()
            .enumerate()
            .map(|(n, answers)| Entry {
                tag: ledger.tag(n),
                answers: answers.to_vec(),
            })
            .collect();
        ledger
    }

    fn ok() -> Answer {
        Answer::Reply(250, "2.0.0 accepted".into())
    }

    fn later() -> Answer {
        Answer::Reply(451, "4.3.0 later".into())
    }

    #[test]
    fn an_acknowledged_message_the_receiver_lacks_is_lost() {
        let ledger = ledger(&[&[ok()], &[later(), ok()]]);
        let t0 = ledger.tag(0);
        let result = ledger.reconcile(&[copy(&t0, "msg_a", true)]);
        assert_eq!(result.acknowledged_not_delivered, [ledger.tag(1)]);
        // A copy the receiver did not acknowledge (it hung) does not count either.
        let result =
            ledger.reconcile(&[copy(&t0, "msg_a", true), copy(&ledger.tag(1), "b", false)]);
        assert_eq!(result.acknowledged_not_delivered, [ledger.tag(1)]);
    }

    #[test]
    fn refused_messages_stay_with_the_sender_and_duplicates_need_one_id() {
        let ledger = ledger(&[&[later(), Answer::Lost("reset".into())], &[later(), ok()]]);
        let (t0, t1) = (ledger.tag(0), ledger.tag(1));
        let same = [
            copy(&t0, "msg_a", true),
            copy(&t1, "msg_b", true),
            copy(&t1, "msg_b", true),
        ];
        let result = ledger.reconcile(&same);
        result.assert_nothing_lost();
        assert_eq!((result.acknowledged, result.still_with_sender), (1, 1));
        assert_eq!(result.receiver_duplicates, 1);
        assert_eq!(result.lost_connections, 1);
        let split = [copy(&t1, "msg_b", true), copy(&t1, "msg_c", true)];
        assert_eq!(ledger.reconcile(&split).inconsistent_ids, [t1]);
    }
}
