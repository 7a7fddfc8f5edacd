//! Logging: journald when the process runs under systemd's journal, stderr otherwise. Log lines
//! carry UIDs, AE titles and counts, never patient data. In the journal every line has the field
//! SERVICE (and SYSLOG_IDENTIFIER drimbox-<service>), and lines about an instance or a study
//! carry STUDY_UID, SOP_UID, PEER_AE (and DICOM_STATUS) from the record's key-values, so that
//! `journalctl SOP_UID=1.2.3…` finds every line about one instance.

use std::io::Write;

struct StderrLog {
    service: &'static str,
}

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let _ = writeln!(
                std::io::stderr().lock(),
                "{} {:<5} {}: {}",
                timestamp(),
                record.level(),
                self.service,
                record.args()
            );
        }
    }
    fn flush(&self) {}
}

fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        now.subsec_millis()
    )
}

/// Installs the logger for one process. `service` names it in every line (and in journald's
/// SERVICE field).
pub fn init(service: &'static str, level: log::LevelFilter) {
    log::set_max_level(level);
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && systemd_journal_logger::connected_to_journal()
    {
        if let Ok(j) = systemd_journal_logger::JournalLog::new() {
            let j = j
                .with_extra_fields(vec![("SERVICE", service)])
                .with_syslog_identifier(format!("drimbox-{service}"));
            if j.install().is_ok() {
                return;
            }
        }
    }
    let _ = log::set_boxed_logger(Box::new(StderrLog { service }));
}
