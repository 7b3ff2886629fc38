//! SMTP attack suite (issue 8): hostile input against the real node, one table of cases.
//!
//! Each case is a client script (bytes, pauses, a STARTTLS handshake), the reply it must end
//! with, and exactly how many messages the receiver must get from it — asserted on the
//! receiver's side, where a smuggled or injected message would show up. The SMTP-smuggling
//! rows are generated: every combination of CR, LF and NUL before and after one or two dots,
//! sent pipelined (one burst) and not (the fake end of data alone, then a pause in which the
//! node must stay silent), with the expected outcome computed from RFC 5321's rule
//! (`<CRLF>.<CRLF>` ends the data; a bare CR, bare LF or NUL refuses the message).
//! Every session must also stay in step to its end: the `QUIT` after the attack gets its `221`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mxnode_tests::{
    Node, NodeConfig, Receiver, Reply, RouteConfig, SmtpClient, TestCa, new_webhook_secret,
};

/// How long the node must stay silent after a fake end of data.
const SILENCE: Duration = Duration::from_millis(300);

/// How long the end of a session may take to arrive: the slowest case (a 6 MB bomb) is parsed
/// within this on a loaded machine.
const QUIET: Duration = Duration::from_secs(60);

/// Sessions run at the same time (the node allows 20 per client address by default).
const WORKERS: usize = 8;

/// One step of a client script.
#[derive(Debug, Clone)]
enum Step {
    /// Bytes sent as one burst, without waiting for replies in between.
    Send(Vec<u8>),
    /// Wait for this many replies (a client that is not pipelining).
    Await(usize),
    /// No reply may arrive for [`SILENCE`]: the node is still reading data.
    Silence,
    /// Read up to the `220` of STARTTLS and do the handshake; nothing may follow the `220` in
    /// plaintext.
    StartTls,
}

/// One row of the table.
struct Case {
    name: String,
    /// In the subject and body of every message of the case, so deliveries can be counted.
    tag: String,
    steps: Vec<Step>,
    /// The replies the session ends with before `QUIT`, `;`-separated, each a code with an
    /// optional enhanced code (`"550 5.6.0"`), or `"closed"` when the node must have closed the
    /// session itself (then the last reply is matched without a `221`).
    expect: String,
    /// Messages the receiver must get from this case (tag found in the payload).
    deliveries: usize,
}

const CLIENT: &str = "EHLO client.test\r\n";
const FROM: &str = "MAIL FROM:<alice@example.org>\r\n";
const RCPT: &str = "RCPT TO:<bob@in.example.test>\r\n";

/// EHLO, MAIL, RCPT, DATA: four replies.
fn envelope() -> Vec<u8> {
    format!("{CLIENT}{FROM}{RCPT}DATA\r\n").into_bytes()
}

/// `content` as sent after `354`: unchanged (the cases never start a line with a dot unless
/// they mean it), a CRLF added if missing, then the terminator.
fn terminated(mut content: Vec<u8>) -> Vec<u8> {
    if !content.ends_with(b"\r\n") {
        content.extend_from_slice(b"\r\n");
    }
    content.extend_from_slice(b".\r\n");
    content
}

/// A whole transaction in one burst: envelope, `headers`, an empty line, a body carrying the
/// tag, the terminator.
fn message(tag: &str, headers: &str, body: &str) -> Vec<Step> {
    let mut bytes = envelope();
    bytes.extend(terminated(
        format!("Subject: {tag}\r\n{headers}\r\ntag {tag}\r\n{body}").into_bytes(),
    ));
    vec![Step::Send(bytes)]
}

/// Like [`message`] with raw content (headers and body).
fn raw_message(content: Vec<u8>) -> Vec<Step> {
    let mut bytes = envelope();
    bytes.extend(terminated(content));
    vec![Step::Send(bytes)]
}

/// `value` folded (RFC 5322 §2.2.3) into lines of at most 900 characters, so a long header
/// stays within `smtp.max_header_line` (issue 16). ASCII only.
fn fold(value: &str) -> String {
    value
        .as_bytes()
        .chunks(900)
        .map(|chunk| std::str::from_utf8(chunk).expect("ASCII"))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// Commands only (after EHLO).
fn commands(text: &[u8]) -> Vec<Step> {
    let mut bytes = CLIENT.as_bytes().to_vec();
    bytes.extend_from_slice(text);
    vec![Step::Send(bytes)]
}

/// A client script built from the case's tag.
type Script = Box<dyn Fn(&str) -> Vec<Step>>;

/// The hand-written rows: (name, script, expected ending, deliveries).
fn handwritten() -> Vec<(&'static str, Script, &'static str, usize)> {
    vec![
        // NUL bytes.
        (
            "NUL in the body",
            Box::new(|t| message(t, "", "nul\0byte")),
            "550 5.6.0",
            0,
        ),
        (
            "NUL in a header",
            Box::new(|t| message(t, "X-A: a\0b\r\n", "")),
            "550 5.6.0",
            0,
        ),
        (
            "NUL in MAIL FROM",
            Box::new(|_| commands(b"MAIL FROM:<a\0b@example.org>\r\n")),
            "500 5.5.2",
            0,
        ),
        (
            "NUL hiding a terminator",
            Box::new(|t| message(t, "", "x\r\n\0.\r\nMAIL FROM:<e@example.org>")),
            "550 5.6.0",
            0,
        ),
        // Invalid UTF-8 in SMTPUTF8 addresses.
        (
            "invalid UTF-8 in an SMTPUTF8 sender",
            Box::new(|_| commands(b"MAIL FROM:<\xff\xfe@example.org> SMTPUTF8\r\n")),
            "500 5.5.2",
            0,
        ),
        (
            "truncated UTF-8 in an SMTPUTF8 recipient",
            Box::new(|_| {
                commands(
                    b"MAIL FROM:<a@example.org> SMTPUTF8\r\nRCPT TO:<b\xc3@in.example.test>\r\n",
                )
            }),
            "250 2.1.0; 500 5.5.2",
            0,
        ),
        (
            "overlong UTF-8 encoding of '/' in a recipient",
            Box::new(|_| {
                commands(b"MAIL FROM:<a@example.org> SMTPUTF8\r\nRCPT TO:<\xc0\xafx@in.example.test>\r\n")
            }),
            "250 2.1.0; 500 5.5.2",
            0,
        ),
        (
            "UTF-16 surrogate encoded in UTF-8 in a sender",
            Box::new(|_| commands(b"MAIL FROM:<\xed\xa0\x80@example.org> SMTPUTF8\r\n")),
            "500 5.5.2",
            0,
        ),
        (
            "non-ASCII sender without SMTPUTF8",
            Box::new(|_| commands("MAIL FROM:<δ@example.org>\r\n".as_bytes())),
            "553 5.6.7",
            0,
        ),
        (
            "valid SMTPUTF8 transaction is delivered",
            Box::new(|t| {
                let mut bytes = format!(
                    "{CLIENT}MAIL FROM:<δοκιμή@example.org> SMTPUTF8\r\nRCPT TO:<δ@in.example.test>\r\nDATA\r\n"
                )
                .into_bytes();
                bytes.extend(terminated(
                    format!("Subject: {t}\r\n\r\ntag {t}\r\n").into_bytes(),
                ));
                vec![Step::Send(bytes)]
            }),
            "250 2.0.0",
            1,
        ),
        // Overlong lines and commands.
        (
            "3,000-byte MAIL FROM",
            Box::new(|_| {
                commands(format!("MAIL FROM:<{}@example.org>\r\n", "a".repeat(3000)).as_bytes())
            }),
            "500 5.5.2",
            0,
        ),
        (
            "100 KB EHLO argument",
            Box::new(|_| {
                vec![Step::Send(
                    format!("EHLO {}\r\n", "h".repeat(100_000)).into_bytes(),
                )]
            }),
            "500 5.5.2",
            0,
        ),
        (
            "1 MiB command line, then the session goes on",
            Box::new(|_| commands(format!("{}\r\nNOOP\r\n", "X".repeat(1 << 20)).as_bytes())),
            "500 5.5.2; 250 2.0.0",
            0,
        ),
        (
            "1 MiB line in the body",
            Box::new(|t| message(t, "", &"y".repeat(1 << 20))),
            "250 2.0.0",
            1,
        ),
        (
            "HTTP request to the SMTP port",
            Box::new(|_| {
                vec![Step::Send(
                    b"POST / HTTP/1.1\r\nHost: mx\r\n\r\nMAIL FROM:<a@b>\r\n".to_vec(),
                )]
            }),
            "closed; 421 4.7.0",
            0,
        ),
        (
            "20 unknown commands in a row",
            Box::new(|_| commands("BOGUS\r\n".repeat(20).as_bytes())),
            "closed; 500 5.5.1; 421 4.7.0",
            0,
        ),
        // 10,000 recipients.
        (
            "10,000 recipients: the first 100 are taken, one delivery",
            Box::new(|t| {
                let mut bytes = format!("{CLIENT}{FROM}").into_bytes();
                for n in 0..10_000 {
                    bytes.extend(format!("RCPT TO:<r{n}@in.example.test>\r\n").as_bytes());
                }
                bytes.extend(b"DATA\r\n");
                bytes.extend(terminated(
                    format!("Subject: {t}\r\n\r\ntag {t}\r\n").into_bytes(),
                ));
                vec![Step::Send(bytes)]
            }),
            "452 4.5.3; 354; 250 2.0.0",
            1,
        ),
        // STARTTLS command injection (CVE-2011-0411 class).
        (
            "commands pipelined behind STARTTLS are discarded",
            Box::new(|_| {
                vec![
                    Step::Send(format!("{CLIENT}STARTTLS\r\n{FROM}{RCPT}DATA\r\n").into_bytes()),
                    Step::StartTls,
                    // Had the injected MAIL/RCPT been executed, DATA would now get 354.
                    Step::Send(format!("{CLIENT}DATA\r\n").into_bytes()),
                ]
            }),
            "250; 503 5.5.1",
            0,
        ),
        (
            "STARTTLS in the same packet as a whole message",
            Box::new(|t| {
                let mut bytes = format!("{CLIENT}STARTTLS\r\n").into_bytes();
                bytes.extend(envelope());
                bytes.extend(terminated(
                    format!("Subject: {t}\r\n\r\ntag {t}\r\n").into_bytes(),
                ));
                vec![
                    Step::Send(bytes),
                    Step::StartTls,
                    Step::Send(b"MAIL FROM:<a@example.org>\r\n".to_vec()),
                ]
            }),
            "503 5.5.1",
            0,
        ),
        // Header bombs.
        (
            "5,000 encoded words in the subject",
            Box::new(|t| {
                let words = vec!["=?UTF-8?B?w6Q=?="; 5000].join("\r\n ");
                message(t, &format!("X-Bomb: {words}\r\nComments: {words}\r\n"), "")
            }),
            "250 2.0.0",
            1,
        ),
        (
            "40,000 nested comments in From, folded",
            Box::new(|t| {
                let nested = fold(&format!("{}x{}", "(".repeat(40_000), ")".repeat(40_000)));
                message(t, &format!("From: {nested} <a@example.org>\r\n"), "")
            }),
            "250 2.0.0",
            1,
        ),
        (
            "100,000 nested comments in From, one line past max_header_line (issue 16)",
            Box::new(|t| {
                let nested = format!("{}x{}", "(".repeat(100_000), ")".repeat(100_000));
                message(t, &format!("From: {nested} <a@example.org>\r\n"), "")
            }),
            "554 5.6.0",
            0,
        ),
        (
            "15,000 nested groups and angle brackets in To, 90,000 quotes in Cc, folded",
            Box::new(|t| {
                let nested = fold(&format!(
                    "{}b@example.org{}",
                    "g:<".repeat(15_000),
                    ">;".repeat(15_000)
                ));
                message(
                    t,
                    &format!("To: {nested}\r\nCc: {}\r\n", fold(&"\"".repeat(90_000))),
                    "",
                )
            }),
            "250 2.0.0",
            1,
        ),
        (
            "40,000 nested comments in Content-Type, folded",
            Box::new(|t| {
                let nested = fold(&format!("{}x{}", "(".repeat(40_000), ")".repeat(40_000)));
                message(
                    t,
                    &format!("Content-Type: text/plain; {nested} charset=utf-8\r\n"),
                    "",
                )
            }),
            "250 2.0.0",
            1,
        ),
        // An encoded word cannot be folded: one this long is a line past max_header_line.
        (
            "135 KB encoded word (issue 16: refused at max_header_line)",
            Box::new(|t| {
                let word = BASE64.encode("ä".repeat(50_000));
                assert!(word.len() > 130_000);
                message(
                    t,
                    &format!(
                        "X-Big: =?UTF-8?B?{word}?=\r\nThread-Topic: =?UTF-8?Q?{}?=\r\n",
                        "=C3=A4".repeat(23_000)
                    ),
                    "",
                )
            }),
            "554 5.6.0",
            0,
        ),
        // Issue 16: quadratic decoding and memory amplification through headers.
        (
            "issue 16: x=?x=?… header line past max_header_line",
            Box::new(|t| message(t, &format!("X-A: {}\r\n", "x=?".repeat(100_000)), "")),
            "554 5.6.0",
            0,
        ),
        (
            "issue 16: the quadratic encoded-word shapes filling max_header_section",
            Box::new(|t| {
                let mut headers = String::new();
                for unit in ["x=?", "=?", " =?", "=?a?q?b?= ", "=?utf-8?q?=C3=A9?= x"] {
                    let line = unit.repeat(32_000 / unit.len());
                    for _ in 0..6 {
                        headers.push_str(&format!("X-A: {line}\r\n"));
                    }
                }
                assert!(headers.len() < 1_000_000);
                message(t, &headers, "")
            }),
            "250 2.0.0",
            1,
        ),
        (
            "issue 16: header section past max_header_section",
            Box::new(|t| {
                let words = vec!["=?UTF-8?Q?a?="; 4_000].join("\r\n ");
                message(t, &format!("X-Bomb: {words}\r\n").repeat(20), "")
            }),
            "554 5.6.0",
            0,
        ),
        (
            "issue 16: one header field past max_header_field",
            Box::new(|t| {
                let words = vec!["=?UTF-8?Q?a?="; 10_000].join("\r\n ");
                message(t, &format!("X-Bomb: {words}\r\n"), "")
            }),
            "554 5.6.0",
            0,
        ),
        (
            "issue 16: To: @,@,@,… past max_addresses",
            Box::new(|t| message(t, &format!("To: {}@\r\n", fold(&"@,".repeat(45_000))), "")),
            "554 5.6.0",
            0,
        ),
        (
            "issue 16: a MIME part's header line past max_header_line",
            Box::new(|t| {
                message(
                    t,
                    "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n",
                    &format!(
                        "--b\r\nContent-Type: text/plain\r\n\r\ntext\r\n--b\r\n\
                         Content-Type: application/pdf; name=\"{}\"\r\n\r\nx\r\n--b--\r\n",
                        " =?".repeat(20_000)
                    ),
                )
            }),
            "554 5.6.0",
            0,
        ),
        (
            "issue 16: 3,000 RFC 2231 parameter continuations",
            Box::new(|t| {
                let params: String = (0..3000).map(|i| format!(";\r\n a{i}*0*=x")).collect();
                message(t, &format!("Content-Type: text/plain{params}\r\n"), "")
            }),
            "250 2.0.0",
            1,
        ),
        (
            "10,000 header fields",
            Box::new(|t| message(t, &"X-Field: v\r\n".repeat(10_000), "")),
            "554 5.6.0",
            0,
        ),
        // Transfer encodings with garbage.
        (
            "base64 with garbage, bad padding and a bare '='",
            Box::new(|t| {
                message(
                    t,
                    "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n",
                    &format!(
                        "--b\r\nContent-Type: text/plain\r\n\r\ntext {t}\r\n--b\r\n\
                         Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n\
                         QUJD!!!@@@$$$ ZGVm\r\n====\r\n=\r\n\x7f\x01\x02 YWJj=ZGVm\r\n{}\r\n--b\r\n\
                         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
                         =ZZ=4=\r\n=C3=\r\n--b--\r\n",
                        "+/".repeat(40_000)
                    ),
                )
            }),
            "250 2.0.0",
            1,
        ),
        // Zip-bomb-like MIME structures.
        (
            "100,000 nested multiparts",
            Box::new(|t| {
                let mut content = format!("Subject: {t}\r\nMIME-Version: 1.0\r\n");
                for level in 0..100_000 {
                    content.push_str(&format!(
                        "Content-Type: multipart/mixed; boundary=\"b{level}\"\r\n\r\n--b{level}\r\n"
                    ));
                }
                content.push_str(&format!("Content-Type: text/plain\r\n\r\ntag {t}\r\n"));
                for level in (0..100_000).rev() {
                    content.push_str(&format!("--b{level}--\r\n"));
                }
                raw_message(content.into_bytes())
            }),
            "554 5.6.0",
            0,
        ),
        (
            "100,000 nested multiparts sharing one boundary",
            Box::new(|t| {
                let mut content = format!("Subject: {t}\r\nMIME-Version: 1.0\r\n");
                content.push_str(
                    &"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n".repeat(100_000),
                );
                content.push_str(&format!(
                    "Content-Type: text/plain\r\n\r\ntag {t}\r\n--b--\r\n"
                ));
                raw_message(content.into_bytes())
            }),
            "554 5.6.0",
            0,
        ),
        (
            "50,000 sibling parts",
            Box::new(|t| {
                let mut content = format!(
                    "Subject: {t}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"s\"\r\n\r\n"
                );
                content.push_str(&format!("--s\r\n\r\ntag {t}\r\n"));
                content.push_str(
                    &"--s\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n".repeat(50_000),
                );
                content.push_str("--s--\r\n");
                raw_message(content.into_bytes())
            }),
            "554 5.6.0",
            0,
        ),
        (
            "1,000 nested message/rfc822 parts",
            Box::new(|t| {
                let mut content = format!("Subject: {t}\r\nMIME-Version: 1.0\r\n");
                content.push_str(&"Content-Type: message/rfc822\r\n\r\n".repeat(1000));
                content.push_str("Subject: inner\r\n\r\ninner\r\n");
                raw_message(content.into_bytes())
            }),
            "250 2.0.0",
            1,
        ),
        (
            "200,000 empty parts between delimiter lines",
            Box::new(|t| {
                let mut content = format!(
                    "Subject: {t}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n"
                );
                content.push_str(&"--a\r\n".repeat(200_000));
                content.push_str("--a--\r\n");
                raw_message(content.into_bytes())
            }),
            "554 5.6.0",
            0,
        ),
    ]
}

/// The bytes between the message head and the smuggled commands, for every published
/// end-of-data variant: CR, LF and NUL in any order (up to two) before and after one or two
/// dots.
fn fake_terminators() -> Vec<Vec<u8>> {
    let mut around: Vec<Vec<u8>> = vec![Vec::new()];
    for first in [b'\r', b'\n', 0] {
        around.push(vec![first]);
        for second in [b'\r', b'\n', 0] {
            around.push(vec![first, second]);
        }
    }
    let mut fakes = Vec::new();
    for before in &around {
        for dots in [&b"."[..], b".."] {
            for after in &around {
                let mut fake = before.clone();
                fake.extend_from_slice(dots);
                fake.extend_from_slice(after);
                fakes.push(fake);
            }
        }
    }
    fakes
}

/// RFC 5321's answer for the data `content` (everything after `354`, final terminator
/// included): the data ends at the first `<CRLF>.<CRLF>` (the CRLF of `DATA` counts); the
/// message is refused if it holds a CR or LF outside a CRLF pair or a NUL; bytes after the end
/// of data are commands (here: a clean second transaction). Returns (expected ending,
/// deliveries).
fn rfc5321_outcome(content: &[u8]) -> (String, usize) {
    let mut wire = b"\r\n".to_vec();
    wire.extend_from_slice(content);
    let end = wire
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .expect("the content ends with a terminator");
    let message = &wire[2..end + 2];
    let defect = message.iter().enumerate().any(|(i, &b)| match b {
        0 => true,
        b'\r' => message.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || message[i - 1] != b'\r',
        _ => false,
    });
    let rest = &wire[end + 5..];
    let (first, delivered) = if defect {
        ("550 5.6.0", 0)
    } else {
        ("250 2.0.0", 1)
    };
    if rest.is_empty() {
        return (first.to_string(), delivered);
    }
    assert!(
        rest.starts_with(b"MAIL FROM"),
        "the model covers clean pipelining only"
    );
    (format!("{first}; 250; 250; 354; 250 2.0.0"), delivered + 1)
}

/// One smuggling row: `fake` between a message and a second, smuggled transaction.
fn smuggling_case(index: usize, fake: &[u8], pipelined: bool) -> Case {
    let tag = format!("smuggle{index}{}", if pipelined { "p" } else { "s" });
    let head = format!("Subject: {tag}\r\n\r\ntag {tag}\r\nbody").into_bytes();
    let smuggled = format!(
        "MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@in.example.test>\r\nDATA\r\n\
         Subject: smuggled {tag}\r\n\r\nsmuggled {tag}\r\n.\r\n"
    )
    .into_bytes();
    let mut content = head.clone();
    content.extend_from_slice(fake);
    content.extend_from_slice(&smuggled);
    let (expect, deliveries) = rfc5321_outcome(&content);
    let ends_early = expect.contains(';');
    let steps = if pipelined {
        let mut bytes = envelope();
        bytes.extend(content);
        vec![Step::Send(bytes)]
    } else {
        let mut first = head;
        first.extend_from_slice(fake);
        let mut steps = vec![Step::Send(envelope()), Step::Await(4), Step::Send(first)];
        if !ends_early {
            // A node that took the fake terminator for the end of data would answer now.
            steps.push(Step::Silence);
        }
        steps.push(Step::Send(smuggled));
        steps
    };
    let shown: String = fake.iter().map(|b| format!("{:?}", *b as char)).collect();
    Case {
        name: format!(
            "smuggling {shown} {}",
            if pipelined {
                "pipelined"
            } else {
                "in two writes"
            }
        ),
        tag,
        steps,
        expect,
        deliveries,
    }
}

fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = handwritten()
        .into_iter()
        .enumerate()
        .map(|(i, (name, steps, expect, deliveries))| {
            let tag = format!("attack{i}x");
            Case {
                name: name.to_string(),
                steps: steps(&tag),
                tag,
                expect: expect.to_string(),
                deliveries,
            }
        })
        .collect();
    for (i, fake) in fake_terminators().iter().enumerate() {
        for pipelined in [true, false] {
            cases.push(smuggling_case(i, fake, pipelined));
        }
    }
    cases
}

/// Whether `reply` matches one expected item: `"550"`, `"550 5.6.0"`.
fn reply_matches(reply: &Reply, expected: &str) -> bool {
    let mut parts = expected.split(' ');
    let code_ok = parts.next() == Some(reply.code.to_string().as_str());
    let enhanced_ok = match parts.next() {
        Some(enhanced) => reply.enhanced_code() == Some(enhanced),
        None => true,
    };
    code_ok && enhanced_ok
}

/// Runs one case and returns a description of what went wrong, if anything.
fn run(case: &Case, node: &Node, ca: &TestCa) -> Result<(), String> {
    let mut client =
        SmtpClient::try_connect(node.smtp_addr()).map_err(|e| format!("connect: {e}"))?;
    let mut replies: Vec<Reply> = Vec::new();
    for step in &case.steps {
        match step {
            Step::Send(bytes) => {
                replies.extend(client.send_burst(bytes).map_err(|e| format!("send: {e}"))?);
            }
            Step::Await(n) => {
                while replies.len() < *n {
                    replies.push(client.try_read_reply().map_err(|e| format!("await: {e}"))?);
                }
            }
            Step::Silence => {
                let early = client.replies_within(SILENCE).map_err(|e| format!("{e}"))?;
                if !early.is_empty() {
                    return Err(format!("the node answered a fake end of data: {early:?}"));
                }
            }
            Step::StartTls => {
                // The 220 may already be in, read while the burst was being sent.
                let ready = |r: &Reply| r.code == 220 && r.text().contains("TLS");
                while !replies.iter().any(ready) {
                    let reply = client
                        .try_read_reply()
                        .map_err(|e| format!("before TLS: {e}"))?;
                    replies.push(reply);
                }
                if !replies.last().is_some_and(ready) {
                    return Err(format!(
                        "plaintext replies after the STARTTLS 220 (injected commands ran): {replies:?}"
                    ));
                }
                client
                    .upgrade_tls(&ca.ca_pem)
                    .map_err(|e| format!("STARTTLS: {e}"))?;
            }
        }
    }
    let mut expected: Vec<&str> = case.expect.split(';').map(str::trim).collect();
    let closed_by_node = expected.first() == Some(&"closed");
    if closed_by_node {
        expected.remove(0);
    } else {
        // (Not after the node hung up: bytes to a closed socket make it reset the
        // connection, which may discard its last reply before the client reads it.)
        let _ = client.try_send(b"QUIT\r\n");
    }
    let (rest, closed) = client.replies_until_closed(QUIET);
    replies.extend(rest);
    if !closed {
        return Err(format!("the session did not end within {QUIET:?}"));
    }
    if !closed_by_node {
        match replies.pop() {
            Some(reply) if reply.code == 221 => {}
            other => return Err(format!("no 221 for QUIT (session out of step): {other:?}")),
        }
    }
    let tail = replies
        .len()
        .checked_sub(expected.len())
        .map(|start| &replies[start..]);
    let ok = tail.is_some_and(|tail| tail.iter().zip(&expected).all(|(r, e)| reply_matches(r, e)));
    if !ok {
        let shown: Vec<String> = replies
            .iter()
            .rev()
            .take(6)
            .rev()
            .map(|r| r.to_string())
            .collect();
        return Err(format!(
            "expected the session to end with {expected:?}, it ended with {shown:?}"
        ));
    }
    let accepted = replies
        .iter()
        .filter(|r| {
            r.code == 250 && r.enhanced_code() == Some("2.0.0") && r.text().contains("accepted")
        })
        .count();
    if accepted != case.deliveries {
        return Err(format!(
            "{accepted} messages accepted, expected {}",
            case.deliveries
        ));
    }
    Ok(())
}

#[test]
fn hostile_input_gets_its_defined_reply_and_exactly_the_deliveries_it_should() {
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let node = Node::start(&NodeConfig::new().tls(&ca).route(RouteConfig::to_receiver(
        "*@in.example.test",
        &receiver,
        "/ok",
    )));
    let cases = cases();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(case) = cases.get(i) else { return };
                    if let Err(problem) = run(case, &node, &ca) {
                        failures
                            .lock()
                            .expect("lock")
                            .push(format!("{}: {problem}", case.name));
                    }
                }
            });
        }
    });

    // What the receiver got, per case: a smuggled or injected message would show up here.
    let received = receiver.received();
    let mut failures = failures.into_inner().expect("lock");
    for case in &cases {
        let got = received
            .iter()
            .filter(|r| r.raw_body.contains(&case.tag))
            .count();
        if got != case.deliveries {
            failures.push(format!(
                "{}: the receiver got {got} messages, expected {}",
                case.name, case.deliveries
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Still serving, and no panic anywhere in its log.
    let mut client = SmtpClient::connect(node.smtp_addr());
    let reply = client.send_mail(
        "a@example.org",
        &["bob@in.example.test"],
        b"Subject: after\r\n\r\nx\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}");
    assert!(!node.log().contains("panicked"), "{}", node.log());
}
