//! `/metrics`: the [`Snapshot`] in the Prometheus text exposition format 0.0.4
//! (`Content-Type: text/plain; version=0.0.4; charset=utf-8`).
//!
//! Every family has its `# HELP` and `# TYPE` lines followed by all its samples; names are
//! prefixed `drimbox_`; label values are escaped per the format. Families whose source is
//! unknown (archive not answering, disk not examined) keep their HELP/TYPE lines and have no
//! sample, and `drimbox_archive_up` / `drimbox_disk_known` say why. No patient data: service
//! names, states, counter names, version strings and counts only.

use std::fmt::Write as _;

use super::model::{ArchiveCounters, ServiceState, Snapshot, Verdict};
use super::page::{state_name, SERVICE_STATES};

/// The `Content-Type` to serve [`render_metrics`] with.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes HELP text: backslash and line feed.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the format spells it (`NaN`, `+Inf`, `-Inf`, shortest round-trip otherwise).
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Writes families one at a time so that each one's samples follow its HELP and TYPE.
struct Out {
    text: String,
    family: &'static str,
}

impl Out {
    fn family(&mut self, name: &'static str, kind: &str, help: &str) {
        self.family = name;
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// The series of the current family: its name and `labels` (name, unescaped value).
    fn series(&mut self, labels: &[(&str, &str)]) {
        self.text.push_str(self.family);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label_value(val));
            }
            self.text.push('}');
        }
    }

    /// One sample with a float value.
    fn sample(&mut self, labels: &[(&str, &str)], v: f64) {
        self.series(labels);
        let _ = writeln!(self.text, " {}", value(v));
    }

    /// One sample with an integer value, written exactly (an f64 would round above 2^53).
    fn int(&mut self, labels: &[(&str, &str)], v: u64) {
        self.series(labels);
        let _ = writeln!(self.text, " {v}");
    }
}

/// An archive figure: metric name, HELP text, and where it comes from.
type ArchiveFamily = (&'static str, &'static str, fn(&ArchiveCounters) -> u64);

fn bool01(b: bool) -> u64 {
    u64::from(b)
}

/// Renders `/metrics`.
pub fn render_metrics(s: &Snapshot) -> String {
    let mut o = Out {
        text: String::with_capacity(4096),
        family: "",
    };

    o.family(
        "drimbox_up",
        "gauge",
        "1 when the status service answers (always 1 in an answer).",
    );
    o.int(&[], 1);

    o.family(
        "drimbox_verdict",
        "gauge",
        "Overall verdict of the box: 1 for the current one, 0 for the others.",
    );
    for v in [Verdict::Ok, Verdict::Degraded, Verdict::Failing] {
        o.int(&[("verdict", v.as_str())], bool01(s.verdict == v));
    }

    o.family(
        "drimbox_verdict_reasons",
        "gauge",
        "Number of reasons given for a verdict other than ok.",
    );
    o.int(&[], s.reasons.len() as u64);

    o.family(
        "drimbox_status_generated_timestamp_seconds",
        "gauge",
        "When the status snapshot was assembled, seconds since the Unix epoch.",
    );
    o.sample(&[], s.generated_at_ms as f64 / 1000.0);

    o.family(
        "drimbox_build_info",
        "gauge",
        "Firmware version and build; always 1.",
    );
    o.int(
        &[
            ("version", &s.firmware.version),
            ("build", &s.firmware.build),
        ],
        1,
    );

    o.family(
        "drimbox_service_up",
        "gauge",
        "1 when the service reported ready and is heartbeating, 0 otherwise.",
    );
    for svc in &s.services {
        o.int(
            &[("service", &svc.name)],
            bool01(svc.state == ServiceState::Ready),
        );
    }

    o.family(
        "drimbox_service_state",
        "gauge",
        "State of each service, one-hot: 1 for the current state, 0 for the others.",
    );
    for svc in &s.services {
        for st in SERVICE_STATES {
            o.int(
                &[("service", &svc.name), ("state", state_name(st))],
                bool01(svc.state == st),
            );
        }
    }

    o.family(
        "drimbox_service_restarts_total",
        "counter",
        "Restarts of each service since the supervisor started.",
    );
    for svc in &s.services {
        o.int(&[("service", &svc.name)], u64::from(svc.restarts));
    }

    o.family(
        "drimbox_service_uptime_seconds",
        "gauge",
        "Seconds since the service's current process started (0 when not running).",
    );
    for svc in &s.services {
        o.int(&[("service", &svc.name)], svc.uptime_seconds);
    }

    o.family(
        "drimbox_service_counter",
        "untyped",
        "Counters each service reports (associations, instances_stored, ...), as reported.",
    );
    for svc in &s.services {
        for (name, v) in &svc.counters {
            o.int(&[("service", &svc.name), ("counter", name)], *v);
        }
    }

    o.family(
        "drimbox_archive_up",
        "gauge",
        "1 when the archive answered the status query; the drimbox_archive_* figures are absent otherwise.",
    );
    o.int(&[], bool01(s.archive.is_some()));

    let archive: [ArchiveFamily; 10] = [
        ("drimbox_archive_studies", "Studies in the archive.", |a| {
            a.studies
        }),
        (
            "drimbox_archive_studies_today",
            "Studies whose first instance arrived today (UTC).",
            |a| a.studies_today,
        ),
        (
            "drimbox_archive_studies_waiting",
            "Studies not yet stable (instances still arriving within the quiet period).",
            |a| a.studies_waiting,
        ),
        (
            "drimbox_archive_studies_stable",
            "Studies marked stable.",
            |a| a.studies_stable,
        ),
        (
            "drimbox_archive_instances",
            "Instances in the archive.",
            |a| a.instances,
        ),
        (
            "drimbox_archive_rejected_instances",
            "Instances rejected by an IOCM rejection note (kept, not published).",
            |a| a.rejected_instances,
        ),
        (
            "drimbox_archive_rejection_notes",
            "IOCM rejection notes received.",
            |a| a.rejection_notes,
        ),
        (
            "drimbox_archive_missing_files",
            "Indexed instances whose file was missing at the last recovery.",
            |a| a.missing_files,
        ),
        ("drimbox_archive_bytes", "Bytes of stored instances.", |a| {
            a.bytes
        }),
        (
            "drimbox_archive_reports",
            "Report messages (HL7) recorded.",
            |a| a.reports,
        ),
    ];
    for (name, help, get) in archive {
        o.family(name, "gauge", help);
        if let Some(a) = &s.archive {
            o.int(&[], get(a));
        }
    }

    o.family(
        "drimbox_disk_known",
        "gauge",
        "1 when the data directory's file system could be examined; the drimbox_disk_* figures are absent otherwise.",
    );
    o.int(&[], bool01(s.disk.is_some()));
    o.family(
        "drimbox_disk_total_bytes",
        "gauge",
        "Size of the file system holding the archive's data directory.",
    );
    if let Some(d) = &s.disk {
        o.int(&[], d.total_bytes);
    }
    o.family(
        "drimbox_disk_available_bytes",
        "gauge",
        "Bytes available on the file system holding the archive's data directory.",
    );
    if let Some(d) = &s.disk {
        o.int(&[], d.available_bytes);
    }
    o.family(
        "drimbox_disk_used_ratio",
        "gauge",
        "Used fraction of the archive's file system (0 to 1).",
    );
    if let Some(d) = &s.disk {
        o.sample(&[], d.used_percent / 100.0);
    }
    o.family(
        "drimbox_disk_warn_ratio",
        "gauge",
        "Used fraction at or above which the disk is a warning (status.disk_warn_percent / 100).",
    );
    if let Some(d) = &s.disk {
        o.sample(&[], d.warn_percent / 100.0);
    }
    o.family(
        "drimbox_disk_warning",
        "gauge",
        "1 when the used fraction is at or above the warning threshold.",
    );
    if let Some(d) = &s.disk {
        o.int(&[], bool01(d.warning()));
    }

    o.family(
        "drimbox_section_configured",
        "gauge",
        "1 when the section (dmp, whitelist, wado, ota) is configured.",
    );
    for (name, sec) in [
        ("dmp", &s.dmp),
        ("whitelist", &s.whitelist),
        ("wado", &s.wado),
        ("ota", &s.ota),
    ] {
        o.int(&[("section", name)], bool01(sec.configured));
    }

    o.text
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use super::super::page::fixtures;
    use super::*;

    /// One parsed sample line.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    fn valid_metric_name(n: &str) -> bool {
        let mut c = n.chars();
        matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn valid_label_name(n: &str) -> bool {
        let mut c = n.chars();
        matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !n.starts_with("__")
    }

    fn parse_value(v: &str) -> Result<f64, String> {
        match v {
            "NaN" => Ok(f64::NAN),
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            _ => v.parse::<f64>().map_err(|e| format!("value {v:?}: {e}")),
        }
    }

    /// Parses `{a="x",b="y"}` (starting at `{`), unescaping values; returns labels and the rest.
    fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
        let mut labels = BTreeMap::new();
        let b = s.as_bytes();
        let mut i = 1;
        loop {
            if b.get(i) == Some(&b'}') {
                return Ok((labels, &s[i + 1..]));
            }
            let eq = s[i..].find('=').ok_or("label without =")? + i;
            let name = &s[i..eq];
            if !valid_label_name(name) {
                return Err(format!("bad label name {name:?}"));
            }
            if b.get(eq + 1) != Some(&b'"') {
                return Err(format!("label {name} value not quoted"));
            }
            let mut j = eq + 2;
            let mut v = String::new();
            loop {
                let c = s[j..].chars().next().ok_or("unterminated label value")?;
                match c {
                    '"' => break,
                    '\\' => {
                        let e = s[j + 1..].chars().next().ok_or("dangling backslash")?;
                        v.push(match e {
                            '\\' => '\\',
                            '"' => '"',
                            'n' => '\n',
                            _ => return Err(format!("bad escape \\{e}")),
                        });
                        j += 1 + e.len_utf8();
                    }
                    '\n' => return Err("raw newline in label value".into()),
                    c => {
                        v.push(c);
                        j += c.len_utf8();
                    }
                }
            }
            if labels.insert(name.to_string(), v).is_some() {
                return Err(format!("label {name} twice"));
            }
            i = j + 1;
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {}
                _ => return Err("expected , or } after a label".into()),
            }
        }
    }

    /// Checks the exposition format line by line and returns the samples. Every sample must
    /// follow its family's TYPE (HELP before TYPE, each once), a family's samples must be
    /// contiguous, no series may repeat, values must parse as f64.
    fn check(text: &str) -> Result<Vec<Sample>, String> {
        if !text.ends_with('\n') {
            return Err("output must end with a line feed".into());
        }
        let mut helped = HashSet::new();
        let mut typed: HashMap<String, String> = HashMap::new();
        let mut closed: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut series = HashSet::new();
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let err = |m: String| format!("line {n} {line:?}: {m}");
            if line.is_empty() {
                return Err(err("empty line".into()));
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let (kw, rest) = rest
                    .split_once(' ')
                    .ok_or_else(|| err("bare comment".into()))?;
                let (name, arg) = rest.split_once(' ').ok_or_else(|| err("no text".into()))?;
                if !valid_metric_name(name) {
                    return Err(err("bad metric name".into()));
                }
                if current.as_deref() != Some(name) {
                    if let Some(c) = current.take() {
                        closed.insert(c);
                    }
                    if closed.contains(name) {
                        return Err(err("family reopened".into()));
                    }
                    current = Some(name.to_string());
                }
                match kw {
                    "HELP" => {
                        if !helped.insert(name.to_string()) {
                            return Err(err("second HELP".into()));
                        }
                        if typed.contains_key(name) {
                            return Err(err("HELP after TYPE".into()));
                        }
                    }
                    "TYPE" => {
                        if !["counter", "gauge", "untyped", "summary", "histogram"].contains(&arg) {
                            return Err(err("unknown type".into()));
                        }
                        if typed.insert(name.to_string(), arg.to_string()).is_some() {
                            return Err(err("second TYPE".into()));
                        }
                    }
                    _ => return Err(err("unknown comment keyword".into())),
                }
                continue;
            }
            if line.starts_with('#') {
                return Err(err("malformed comment".into()));
            }
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| err("no value".into()))?;
            let name = &line[..name_end];
            if !valid_metric_name(name) {
                return Err(err("bad metric name".into()));
            }
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..]).map_err(err)?
            } else {
                (BTreeMap::new(), &line[name_end..])
            };
            let rest = rest
                .strip_prefix(' ')
                .ok_or_else(|| err("no space before the value".into()))?;
            let mut parts = rest.split(' ');
            let value = parse_value(parts.next().unwrap()).map_err(err)?;
            if let Some(ts) = parts.next() {
                ts.parse::<i64>()
                    .map_err(|e| err(format!("timestamp: {e}")))?;
            }
            if parts.next().is_some() {
                return Err(err("trailing fields".into()));
            }
            if !typed.contains_key(name) || current.as_deref() != Some(name) {
                return Err(err("sample without a preceding TYPE for its family".into()));
            }
            if !series.insert((name.to_string(), format!("{labels:?}"))) {
                return Err(err("duplicate series".into()));
            }
            out.push(Sample {
                name: name.into(),
                labels,
                value,
            });
        }
        for name in helped.iter() {
            if !typed.contains_key(name) {
                return Err(format!("{name} has HELP but no TYPE"));
            }
        }
        Ok(out)
    }

    fn get(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("plain"), "plain");
        assert_eq!(escape_label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
        assert_eq!(value(1.0), "1");
        assert_eq!(value(0.25), "0.25");
        assert_eq!(value(f64::NAN), "NaN");
        assert_eq!(value(f64::INFINITY), "+Inf");
        assert_eq!(value(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn checker_rejects_bad_output() {
        assert!(check("x 1\n").is_err(), "no TYPE");
        assert!(
            check("# TYPE x gauge\nx{a=\"1} 1\n").is_err(),
            "unterminated"
        );
        assert!(check("# TYPE x gauge\nx one\n").is_err(), "value");
        assert!(check("# TYPE x gauge\nx 1\n# TYPE y gauge\ny 1\nx 2\n").is_err());
        assert!(check("# TYPE x gauge\nx 1\nx 2\n").is_err(), "duplicate");
        assert!(check("# TYPE x gauge\nx 1").is_err(), "no final newline");
        assert!(check("# HELP x h\n# TYPE x gauge\nx{a=\"q\\\"\\n\\\\\"} 1\n").is_ok());
    }

    #[test]
    fn ok_snapshot() {
        let text = render_metrics(&fixtures::ok());
        let m = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(m.iter().all(|s| s.name.starts_with("drimbox_")));
        assert_eq!(get(&m, "drimbox_up", &[]), Some(1.0));
        assert_eq!(get(&m, "drimbox_verdict", &[("verdict", "ok")]), Some(1.0));
        assert_eq!(
            get(&m, "drimbox_verdict", &[("verdict", "degraded")]),
            Some(0.0)
        );
        assert_eq!(
            get(&m, "drimbox_verdict", &[("verdict", "failing")]),
            Some(0.0)
        );
        assert_eq!(
            get(
                &m,
                "drimbox_build_info",
                &[("version", "0.1.0"), ("build", "2a8ce64")]
            ),
            Some(1.0)
        );
        for svc in ["archive", "receiver"] {
            assert_eq!(
                get(&m, "drimbox_service_up", &[("service", svc)]),
                Some(1.0)
            );
            assert_eq!(
                get(&m, "drimbox_service_restarts_total", &[("service", svc)]),
                Some(0.0)
            );
            let states: Vec<f64> = SERVICE_STATES
                .iter()
                .map(|st| {
                    get(
                        &m,
                        "drimbox_service_state",
                        &[("service", svc), ("state", state_name(*st))],
                    )
                    .unwrap()
                })
                .collect();
            assert_eq!(states, vec![0.0, 1.0, 0.0, 0.0, 0.0], "{svc}");
        }
        assert_eq!(
            get(
                &m,
                "drimbox_service_uptime_seconds",
                &[("service", "receiver")]
            ),
            Some(11_520.0)
        );
        assert_eq!(
            get(
                &m,
                "drimbox_service_counter",
                &[("service", "receiver"), ("counter", "instances_stored")]
            ),
            Some(1204.0)
        );
        for (name, v) in [
            ("drimbox_archive_up", 1.0),
            ("drimbox_archive_studies", 312.0),
            ("drimbox_archive_studies_today", 14.0),
            ("drimbox_archive_studies_waiting", 1.0),
            ("drimbox_archive_studies_stable", 311.0),
            ("drimbox_archive_instances", 48_210.0),
            ("drimbox_archive_rejected_instances", 3.0),
            ("drimbox_archive_rejection_notes", 1.0),
            ("drimbox_archive_missing_files", 0.0),
            ("drimbox_archive_bytes", 25_769_803_776.0),
            ("drimbox_disk_known", 1.0),
            ("drimbox_disk_total_bytes", 500.0 * 1_073_741_824.0),
            ("drimbox_disk_available_bytes", 380.0 * 1_073_741_824.0),
            ("drimbox_disk_used_ratio", 0.24),
            ("drimbox_disk_warn_ratio", 0.9),
            ("drimbox_disk_warning", 0.0),
            (
                "drimbox_status_generated_timestamp_seconds",
                1_796_205_600.0,
            ),
        ] {
            assert_eq!(get(&m, name, &[]), Some(v), "{name}");
        }
        assert_eq!(
            get(&m, "drimbox_section_configured", &[("section", "dmp")]),
            Some(0.0)
        );
        // Exact integers, not f64 renderings.
        assert!(text.contains("\ndrimbox_archive_bytes 25769803776\n"));
        assert!(text.contains("# TYPE drimbox_service_restarts_total counter\n"));
    }

    #[test]
    fn degraded_snapshot() {
        let text = render_metrics(&fixtures::degraded());
        let m = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(get(&m, "drimbox_verdict", &[("verdict", "ok")]), Some(0.0));
        assert_eq!(
            get(&m, "drimbox_verdict", &[("verdict", "degraded")]),
            Some(1.0)
        );
        assert_eq!(get(&m, "drimbox_verdict_reasons", &[]), Some(1.0));
        assert_eq!(get(&m, "drimbox_disk_warning", &[]), Some(1.0));
        assert_eq!(get(&m, "drimbox_disk_used_ratio", &[]), Some(0.934));
        assert_eq!(
            get(
                &m,
                "drimbox_service_restarts_total",
                &[("service", "receiver")]
            ),
            Some(2.0)
        );
        assert_eq!(get(&m, "drimbox_archive_missing_files", &[]), Some(2.0));
        assert_eq!(
            get(
                &m,
                "drimbox_section_configured",
                &[("section", "whitelist")]
            ),
            Some(1.0)
        );
        // Free text (last_error, summaries) never becomes a label.
        assert!(!text.contains("panic"));
        assert!(!text.contains("entries"));
    }

    #[test]
    fn failing_snapshot() {
        let text = render_metrics(&fixtures::failing());
        let m = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            get(&m, "drimbox_verdict", &[("verdict", "failing")]),
            Some(1.0)
        );
        assert_eq!(
            get(&m, "drimbox_service_up", &[("service", "archive")]),
            Some(0.0)
        );
        assert_eq!(
            get(
                &m,
                "drimbox_service_state",
                &[("service", "archive"), ("state", "failed")]
            ),
            Some(1.0)
        );
        assert_eq!(
            get(
                &m,
                "drimbox_service_state",
                &[("service", "receiver"), ("state", "restarting")]
            ),
            Some(1.0)
        );
        assert_eq!(
            get(
                &m,
                "drimbox_service_restarts_total",
                &[("service", "archive")]
            ),
            Some(5.0)
        );
        assert_eq!(get(&m, "drimbox_archive_up", &[]), Some(0.0));
        assert_eq!(get(&m, "drimbox_disk_known", &[]), Some(0.0));
        // Unknown figures are absent, not zero.
        for name in ["drimbox_archive_instances", "drimbox_disk_used_ratio"] {
            assert!(text.contains(&format!("# TYPE {name} gauge\n")));
            assert_eq!(get(&m, name, &[]), None, "{name}");
        }
    }

    #[test]
    fn hostile_label_values_round_trip() {
        let mut s = fixtures::ok();
        let evil = "re\"ce\\iver\nx}";
        s.services[1].name = evil.into();
        s.firmware.build = "a\"b".into();
        s.services[1].counters.insert("odd\"name".into(), 7);
        let text = render_metrics(&s);
        let m = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            get(&m, "drimbox_service_up", &[("service", evil)]),
            Some(1.0)
        );
        assert_eq!(
            get(
                &m,
                "drimbox_service_counter",
                &[("service", evil), ("counter", "odd\"name")]
            ),
            Some(7.0)
        );
        assert_eq!(
            get(
                &m,
                "drimbox_build_info",
                &[("version", "0.1.0"), ("build", "a\"b")]
            ),
            Some(1.0)
        );
        let mut s = fixtures::ok();
        s.disk.as_mut().unwrap().used_percent = f64::NAN;
        let text = render_metrics(&s);
        let m = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(get(&m, "drimbox_disk_used_ratio", &[]).unwrap().is_nan());
    }
}
