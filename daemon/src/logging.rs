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
