//! Fuzz target: configuration parsing — `RawConfig::parse` (TOML, unknown keys) and
//! `Config::from_raw` (validation) on arbitrary text, as `mxnode check-config` runs them.
//!
//! Neither stage may panic, a failure always names at least one problem, and no problem
//! message may quote a literal secret of the input (errors name keys, never values: they may
//! be secrets). Secrets given as `file:` or `env:` references are resolved as in production,
//! which reads files; the target otherwise does no I/O.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mxnode::config::{Config, ConfigErrors, RawConfig};

/// Literal secrets at least this long are looked for in the error messages; shorter ones could
/// match ordinary words of a message by chance.
const MIN_TRACKED_SECRET: usize = 24;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let raw = match RawConfig::parse(text) {
        Ok(raw) => raw,
        Err(errors) => {
            check_errors(&errors, &[]);
            return;
        }
    };
    // A secret that also occurs elsewhere in the text (say inside an `env:` name an error may
    // quote, as the fuzzer found) cannot be told apart from that other value.
    let secrets: Vec<String> = literal_secrets(&raw)
        .into_iter()
        .filter(|secret| text.matches(secret.as_str()).count() == 1)
        .collect();
    match Config::from_raw(raw) {
        Ok(config) => {
            assert!(config.smtp.max_message_size > 0);
            assert!(config.smtp.max_sessions > 0 && config.smtp.max_sessions_per_ip > 0);
            assert!(!config.smtp.listen.is_empty());
        }
        Err(errors) => check_errors(&errors, &secrets),
    }
});

fn literal_secrets(raw: &RawConfig) -> Vec<String> {
    let mut values: Vec<&Option<String>> = vec![&raw.node.master_key];
    values.extend(raw.route.iter().map(|r| &r.webhook_secret));
    values.extend(raw.s3.values().map(|s| &s.secret_access_key));
    values
        .into_iter()
        .flatten()
        .filter(|v| v.len() >= MIN_TRACKED_SECRET)
        .filter(|v| !v.starts_with("file:") && !v.starts_with("env:"))
        .cloned()
        .collect()
}

fn check_errors(errors: &ConfigErrors, secrets: &[String]) {
    assert!(!errors.0.is_empty(), "a failure names at least one problem");
    let text = errors.to_string();
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "an error quotes a secret: {text}"
        );
    }
}
