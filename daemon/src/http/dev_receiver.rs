//! The development node's built-in webhook receiver: verifies each delivery's Standard Webhooks
//! signature and prints the payload to stdout, so `./build.sh run` shows mail arriving with
//! nothing else installed. Development only: printing content is what it is for.

use std::io::Write as _;
use std::net::TcpListener;

use base64::Engine as _;
use ring::hmac;

#[derive(Clone)]
struct State {
    key: hmac::Key,
}

/// Serves on `listener` until the process ends.
pub async fn serve(listener: TcpListener, key: Vec<u8>) -> std::io::Result<()> {
    let mut app = tide::with_state(State {
        key: hmac::Key::new(hmac::HMAC_SHA256, &key),
    });
    app.at("/webhook").post(receive);
    app.listen(listener).await
}

async fn receive(mut req: tide::Request<State>) -> tide::Result {
    let body = req.body_bytes().await?;
    let header = |name: &str| {
        req.header(name)
            .map(|v| v.last().as_str().to_string())
            .unwrap_or_default()
    };
    let (id, timestamp, signatures) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let signed = [id.as_bytes(), b".", timestamp.as_bytes(), b".", &body].concat();
    let valid = signatures.split(' ').any(|sig| {
        sig.strip_prefix("v1,")
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .is_some_and(|tag| hmac::verify(&req.state().key, &signed, &tag).is_ok())
    });
    if !valid {
        println!("dev receiver: refused a delivery with a bad signature (id {id})");
        return Ok(tide::Response::new(401));
    }
    let pretty = serde_json::from_slice::<serde_json::Value>(&body)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "dev receiver: delivery {id} (signature valid)\n{pretty}"
    );
    let _ = out.flush();
    Ok(tide::Response::new(204))
}
