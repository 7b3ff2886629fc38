//! `mxnode dev`: a development node on embedded defaults. SMTP on 127.0.0.1:2525 routes
//! `*@localhost` and `*@example.test` to a built-in receiver that prints each payload, with
//! STARTTLS on a self-signed certificate; the setup page, console and REST API answer on
//! `http://127.0.0.1:8080` (setup mode until an admin exists). Nothing else needs to be installed.

use std::net::TcpListener;
use std::path::Path;

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::{Config, RawConfig};

/// Embedded defaults; `@…@` placeholders are filled in at start.
const DEV_CONFIG: &str = include_str!("dev.toml");

/// Options of `mxnode dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub data_dir: std::path::PathBuf,
    pub smtp_listen: String,
    pub receiver_listen: String,
    /// The setup page, console and REST API; plain HTTP, so a loopback address only.
    pub http_listen: String,
    /// `auth.resolvers`: the DNS server for sender authentication; the system's when `None`.
    pub resolver: Option<String>,
}

/// Prepares the development node: self-signed TLS, the receiver, the config.
pub fn prepare(options: &DevOptions) -> anyhow::Result<(RawConfig, Config, TcpListener, Vec<u8>)> {
    std::fs::create_dir_all(&options.data_dir)?;
    let data_dir = std::fs::canonicalize(&options.data_dir)?;
    let (cert, key) = ensure_self_signed(&data_dir.join("tls"), "localhost")?;
    let master_key = ensure_master_key(&data_dir.join("master-key"))?;

    let mut key_bytes = vec![0u8; 24];
    SystemRandom::new()
        .fill(&mut key_bytes)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(&key_bytes)
    );
    let receiver = TcpListener::bind(&options.receiver_listen)?;
    let receiver_addr = receiver.local_addr()?;

    let text = DEV_CONFIG
        .replace("@DATA_DIR@", &data_dir.display().to_string())
        .replace("@SMTP_LISTEN@", &options.smtp_listen)
        .replace("@HTTP_LISTEN@", &options.http_listen)
        .replace("@TLS_CERT@", &cert.display().to_string())
        .replace("@TLS_KEY@", &key.display().to_string())
        .replace("@WEBHOOK@", &format!("http://{receiver_addr}/webhook"))
        .replace("@SECRET@", &secret)
        .replace("@MASTER_KEY@", &format!("file:{}", master_key.display()))
        .replace(
            "@RESOLVERS@",
            &options.resolver.as_ref().map_or_else(String::new, |r| {
                // A JSON string is a valid TOML basic string.
                format!("resolvers = [{}]", serde_json::Value::from(r.as_str()))
            }),
        );
    let raw = RawConfig::parse(&text)?;
    let config = Config::from_raw(raw.clone())?;
    println!(
        "mxnode dev: SMTP on {} (STARTTLS, self-signed), mail for *@localhost and *@example.test \
         is printed below by the built-in receiver on http://{receiver_addr}/webhook; setup page \
         and console on http://{}/ (the setup token is logged below until an admin exists)",
        options.smtp_listen, options.http_listen
    );
    Ok((raw, config, receiver, key_bytes))
}

/// Returns the certificate and key in `dir`, creating a self-signed pair on first use.
pub fn ensure_self_signed(
    dir: &Path,
    hostname: &str,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.is_file() && key_path.is_file() {
        return Ok((cert_path, key_path));
    }
    std::fs::create_dir_all(dir)?;
    let certified =
        rcgen::generate_simple_self_signed(vec![hostname.to_string(), "127.0.0.1".into()])?;
    write_private(&key_path, certified.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, certified.cert.pem())?;
    Ok((cert_path, key_path))
}

/// Returns the development node's master key file, creating a random key on first use. A
/// production node gets its key from a systemd credential instead (DESIGN §5).
pub fn ensure_master_key(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    if !path.is_file() {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| anyhow::anyhow!("no system randomness"))?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        write_private(path, hex.as_bytes())?;
    }
    Ok(path.to_path_buf())
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}
