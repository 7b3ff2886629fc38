//! Content never at rest (DESIGN invariant 1, issue 2): after delivering, refusing and
//! temp-failing messages that carry a unique marker in subject, body and attachment, no file
//! the node could have written and no line of its log holds the marker or the sender address.

use std::path::Path;

use base64::Engine as _;
use mxnode_tests::{
    Node, NodeConfig, Receiver, RouteConfig, SmtpClient, TestCa, new_webhook_secret,
    scan_for_marker,
};

fn unique_marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("MXMARK{}x{nanos}", std::process::id())
}

#[test]
fn no_marker_from_subject_body_or_attachment_reaches_disk_or_log() {
    let marker = unique_marker();
    let sender = format!("sender-{marker}@example.org");
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca, &new_webhook_secret());
    let mut node = Node::start(
        &NodeConfig::new()
            .route(RouteConfig::to_receiver(
                "*@in.example.test",
                &receiver,
                "/ok",
            ))
            .route(
                RouteConfig::to_receiver("*@fail.example.test", &receiver, "/status/500")
                    .budget("1s"),
            )
            .route(RouteConfig::to_receiver(
                "*@refuse.example.test",
                &receiver,
                "/status/422",
            )),
    );
    let attachment = base64::engine::general_purpose::STANDARD
        .encode(format!("attachment payload {marker} end"));
    let message = format!(
        "From: <{sender}>\r\nTo: bob@in.example.test\r\nSubject: subject {marker}\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"xx\"\r\n\r\n\
         --xx\r\nContent-Type: text/plain\r\n\r\nbody {marker}\r\n\
         --xx\r\nContent-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename=\"f-{marker}.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{attachment}\r\n--xx--\r\n"
    );

    let mut client = SmtpClient::connect(node.smtp_addr());
    let delivered = client.send_mail(&sender, &["bob@in.example.test"], message.as_bytes());
    assert_eq!(delivered.code, 250, "{delivered}");
    let failed = client.send_mail(&sender, &["x@fail.example.test"], message.as_bytes());
    assert_eq!(failed.code, 451, "{failed}");
    let refused = client.send_mail(&sender, &["x@refuse.example.test"], message.as_bytes());
    assert_eq!(refused.code, 550, "{refused}");
    let smuggled = client.send_mail(
        &sender,
        &["bob@in.example.test"],
        format!("{message}\n").as_bytes(),
    );
    assert_eq!(smuggled.code, 550, "{smuggled}");
    client.command("QUIT");

    // The receiver really got the marker, so its absence elsewhere means something.
    let received = receiver.received();
    assert!(received.iter().any(|r| r.raw_body.contains(&marker)));

    let status = node.terminate();
    assert!(status.success(), "{status:?}");
    let mut dirs: Vec<&Path> = vec![node.temp_root(), node.data_dir()];
    let system_temp = std::env::temp_dir();
    dirs.push(&system_temp);
    let dev_shm = Path::new("/dev/shm");
    if dev_shm.is_dir() {
        dirs.push(dev_shm);
    }
    let hits = scan_for_marker(&dirs, marker.as_bytes());
    assert!(hits.is_empty(), "content found at rest in {hits:?}");

    let log = node.log();
    assert!(log.contains("listening on smtp://"), "the log was captured");
    assert!(!log.contains(&marker), "content in the log:\n{log}");
    assert!(
        !log.contains("example.org"),
        "a sender address in the log:\n{log}"
    );
    assert!(
        !log.contains("bob@in.example.test"),
        "a recipient address in the log:\n{log}"
    );
}
