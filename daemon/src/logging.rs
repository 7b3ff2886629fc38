//! Logging: journald when the journal is there, stderr otherwise (development, tests).
//!
//! What is logged is the caller's responsibility and is restricted by invariant 6: ids,
//! statuses and timings, never bodies, header values other than Message-ID, or sender
//! addresses.

use std::io::Write as _;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Installs the logger once at start.
pub fn init(level: LevelFilter) {
    if systemd_journal_logger::connected_to_journal()
        && let Ok(journal) = systemd_journal_logger::JournalLog::new()
        && log::set_boxed_logger(Box::new(journal.with_syslog_identifier("mxnode".into()))).is_ok()
    {
        log::set_max_level(level);
        return;
    }
    if log::set_boxed_logger(Box::new(StderrLog)).is_ok() {
        log::set_max_level(level);
    }
}

/// What a panic prints instead of its message: the message can quote whatever the failed code
/// held (an index, a header, a value of a message), so it is never shown (issue 16).
pub const PANIC_TEXT: &str =
    "internal error (panic); its message is withheld as it could hold message content";

/// Replaces the panic hook with one that prints only [`PANIC_TEXT`], the thread's name and the
/// source location, in one write to stderr (the journal under systemd), never the payload.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let line = panic_line(
            std::thread::current().name(),
            info.location().map(|l| (l.file(), l.line(), l.column())),
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }));
}

/// The one line [`install_panic_hook`] writes.
fn panic_line(thread: Option<&str>, location: Option<(&str, u32, u32)>) -> String {
    let at = location.map_or_else(
        || "an unknown location".to_string(),
        |(file, line, column)| format!("{file}:{line}:{column}"),
    );
    format!(
        "mxnode[ERROR] {PANIC_TEXT}: thread '{}' at {at}\n",
        thread.unwrap_or("unnamed")
    )
}

/// One line per record on stderr: `mxnode[LEVEL] target: message`.
struct StderrLog;

impl Log for StderrLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= Level::Trace
    }

    fn log(&self, record: &Record<'_>) {
        if record.target().starts_with("mxnode") || record.level() <= Level::Warn {
            // Formatted first and written with one call: stderr is unbuffered, and writing the
            // pieces one by one costs a system call each (several per delivery under load).
            let line = format!(
                "mxnode[{}] {}: {}\n",
                record.level(),
                record.target(),
                record.args()
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod panic_tests {
    /// Set in the child run of the test below: install the hook and panic with a payload.
    const CHILD: &str = "MXNODE_PANIC_HOOK_TEST_CHILD";
    const PAYLOAD: &str = "To: victim@example.test Subject: SECRET-PAYLOAD-4711";

    /// Issue 16: a panic prints a fixed text and its location, never its payload. The test
    /// runs itself again as a child process (the hook is process-wide) that panics with an
    /// address and a subject in the message, and reads the child's stderr.
    #[test]
    fn issue_16_a_panic_prints_its_location_and_never_its_payload() {
        if std::env::var_os(CHILD).is_some() {
            super::install_panic_hook();
            panic!("{PAYLOAD}");
        }
        let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "logging::panic_tests::issue_16_a_panic_prints_its_location_and_never_its_payload",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "the child panicked: {stdout}");
        assert!(stderr.contains(super::PANIC_TEXT), "{stderr}");
        assert!(stderr.contains("src/logging.rs:"), "the location: {stderr}");
        for fragment in ["SECRET-PAYLOAD", "victim@example.test", "Subject"] {
            assert!(!stderr.contains(fragment), "{fragment} printed: {stderr}");
            assert!(!stdout.contains(fragment), "{fragment} printed: {stdout}");
        }
    }
}
