//! The box's one status page (`/`): a self-contained HTML5 document rendered from a
//! [`Snapshot`]. No external assets (inline CSS, no script, no fonts, no images), refreshes itself
//! every 5 s, and reflows from a 360 px phone to a desktop.
//!
//! Every dynamic text goes through [`escape`]. The snapshot carries no patient data and this page
//! adds none.
//!
//! Stable hooks for tests and scrapers: `id="verdict"` with `data-verdict="ok|degraded|failing"`;
//! one `data-service="<name>"` row per service with `data-field="name|state|uptime|restarts|
//! last_error|pid"` children; `data-counter="<ArchiveCounters field>"` holding the plain integer;
//! `data-section="dmp|whitelist|ota"`; `data-disk` on the disk card (`data-warning="true"` when
//! over the threshold).

use std::fmt::Write as _;

use super::model::{
    ArchiveCounters, Disk, Section, ServiceState, ServiceStatus, Snapshot, Verdict,
};

/// Seconds between the page's automatic reloads.
pub const REFRESH_SECONDS: u32 = 5;

/// HTML-escapes text for element content and double- or single-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The name of a service state, as in `/status.json` (`ready`, `wedged`, ...).
pub fn state_name(s: ServiceState) -> &'static str {
    match s {
        ServiceState::Starting => "starting",
        ServiceState::Ready => "ready",
        ServiceState::Restarting => "restarting",
        ServiceState::Wedged => "wedged",
        ServiceState::Failed => "failed",
    }
}

/// Every service state, in the order the metrics list them.
pub const SERVICE_STATES: [ServiceState; 5] = [
    ServiceState::Starting,
    ServiceState::Ready,
    ServiceState::Restarting,
    ServiceState::Wedged,
    ServiceState::Failed,
];

/// `45 s`, `12 min`, `3 h 12 min`, `2 d 4 h`.
pub fn human_duration(seconds: u64) -> String {
    const MIN: u64 = 60;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    if seconds < MIN {
        format!("{seconds} s")
    } else if seconds < HOUR {
        format!("{} min", seconds / MIN)
    } else if seconds < DAY {
        format!("{} h {} min", seconds / HOUR, seconds % HOUR / MIN)
    } else {
        format!("{} d {} h", seconds / DAY, seconds % DAY / HOUR)
    }
}

/// `512 B`, `1.5 KiB`, `3.2 GiB` (binary units, one decimal).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    // 1023.96 KiB would print as "1024.0 KiB": move to the next unit instead.
    if v >= 1023.95 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `2026-12-02T10:00:00Z` → `2026-12-02 10:00:00 UTC`; anything else is shown as given.
fn human_time(rfc3339: &str) -> String {
    match rfc3339.strip_suffix('Z') {
        Some(t) if t.len() >= 19 && t.as_bytes()[..19].is_ascii() && t.as_bytes()[10] == b'T' => {
            // Drop fractional seconds: the page refreshes every 5 s.
            format!("{} {} UTC", &t[..10], &t[11..19])
        }
        _ => rfc3339.to_string(),
    }
}

/// A percentage for display and for the bar: finite, clamped to 0..=100.
fn clamp_percent(p: f64) -> f64 {
    if p.is_finite() {
        p.clamp(0.0, 100.0)
    } else {
        0.0
    }
}

fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Ok => "OK",
        Verdict::Degraded => "DEGRADED",
        Verdict::Failing => "FAILING",
    }
}

/// Colour class of a service state: good, transitional, bad.
fn state_class(s: ServiceState) -> &'static str {
    match s {
        ServiceState::Ready => "good",
        ServiceState::Starting | ServiceState::Restarting => "warn",
        ServiceState::Wedged | ServiceState::Failed => "bad",
    }
}

const CSS: &str = r#"
*,*::before,*::after{box-sizing:border-box}
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}
body{margin:0;background:#eef1f5;color:#1b2430;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Liberation Sans","DejaVu Sans",sans-serif}
.wrap{max-width:1180px;margin:0 auto;padding:16px}
header.top{display:flex;flex-wrap:wrap;align-items:baseline;justify-content:space-between;gap:4px 16px;margin:0 0 12px}
header.top h1{font-size:20px;margin:0;letter-spacing:.2px}
header.top .meta{color:#5b6778;font-size:13px}
.verdict{border-radius:10px;padding:18px 20px;color:#fff;margin-bottom:16px;box-shadow:0 1px 3px rgba(0,0,0,.12)}
.verdict .word{font-size:40px;font-weight:800;letter-spacing:1.5px;line-height:1.1}
.verdict .sub{margin-top:4px;font-size:15px;opacity:.95}
.verdict ul{margin:8px 0 0;padding-left:20px;font-size:16px}
.verdict li{margin:2px 0}
.v-ok{background:#1e7b34}
.v-degraded{background:#b45309}
.v-failing{background:#b91c1c}
.card{background:#fff;border-radius:10px;padding:14px 16px;box-shadow:0 1px 2px rgba(16,24,40,.08);border:1px solid #dde3ea;min-width:0}
.card h2{font-size:13px;text-transform:uppercase;letter-spacing:.8px;color:#5b6778;margin:0 0 10px;font-weight:700}
.stack>*+*{margin-top:16px}
.grid{display:grid;gap:16px;grid-template-columns:repeat(auto-fit,minmax(250px,1fr))}
.grid.main{grid-template-columns:minmax(0,1fr) minmax(0,2fr);grid-template-areas:"disk archive" "box archive"}
.grid.main>[data-disk]{grid-area:disk}
.grid.main>[data-block="archive"]{grid-area:archive}
.grid.main>[data-block="box"]{grid-area:box}
.grid.sections{grid-template-columns:repeat(auto-fit,minmax(220px,1fr))}
table{width:100%;border-collapse:collapse}
th,td{text-align:left;padding:8px 10px;border-bottom:1px solid #e6eaef;vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.6px;color:#5b6778;font-weight:700}
tbody tr:last-child td{border-bottom:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td[data-field="name"]{font-weight:700}
td[data-field="state"],td[data-field="uptime"],td[data-field="pid"],td[data-field="restarts"]{white-space:nowrap}
td[data-field="last_error"]{overflow-wrap:anywhere;color:#374151;max-width:420px}
.svc-counters{display:block;font-weight:400;font-size:12px;color:#5b6778;margin-top:2px}
.badge{display:inline-block;padding:1px 9px;border-radius:999px;font-size:13px;font-weight:700;white-space:nowrap}
.badge.good{background:#dcfce7;color:#14532d}
.badge.warn{background:#fef3c7;color:#7c2d12}
.badge.bad{background:#fee2e2;color:#7f1d1d}
.none{color:#8a94a3}
.bar{height:14px;border-radius:7px;background:#e5e9ef;overflow:hidden;margin:8px 0 6px}
.bar>span{display:block;height:100%;background:#2563eb;border-radius:7px 0 0 7px}
.bar.warn>span{background:#d97706}
.disk-figures{display:flex;justify-content:space-between;flex-wrap:wrap;gap:2px 12px;font-size:14px}
.disk-figures b{font-size:22px}
.path{font-size:12px;color:#5b6778;overflow-wrap:anywhere;margin-top:4px}
.alert{margin-top:10px;padding:8px 10px;border-radius:6px;background:#fef3c7;color:#7c2d12;border:1px solid #f59e0b;font-weight:600}
.unknown{color:#5b6778;font-size:16px;font-weight:600;margin:4px 0}
.unknown.down{color:#b91c1c}
[data-block="archive"]{display:flex;flex-direction:column}
.counters{display:grid;gap:10px;grid-template-columns:repeat(3,minmax(0,1fr));grid-auto-rows:1fr;flex:1}
.counter{background:#f6f8fa;border:1px solid #e6eaef;border-radius:8px;padding:8px 10px;min-width:0;display:flex;flex-direction:column;justify-content:center}
.counter .label{font-size:12px;color:#5b6778}
.counter .value{font-size:22px;font-weight:700;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
.counter .exact{font-size:11px;color:#8a94a3;font-variant-numeric:tabular-nums}
.counter.attention .value{color:#b45309}
dl.kv{display:grid;grid-template-columns:auto 1fr;gap:6px 14px;margin:0}
dl.kv dt{color:#5b6778;font-size:13px;padding-top:1px}
dl.kv dd{margin:0;font-weight:600;overflow-wrap:anywhere;font-variant-numeric:tabular-nums}
.section .summary{font-size:15px;font-weight:600}
.exams{margin:12px 0}
.exams .summary{font-weight:600;margin:0 0 8px}
table.exams{width:100%;border-collapse:collapse;font-size:13px;table-layout:fixed}
table.exams th{text-align:left;color:#5b6778;font-weight:600;border-bottom:1px solid #dde3ea;padding:4px 6px}
table.exams td{border-bottom:1px solid #eef1f5;padding:4px 6px;overflow-wrap:anywhere}
table.exams td.uid{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;width:40%}
table.exams tr[data-exam-state="on hold"] td{background:#fff4e5}
.section.off .summary{color:#8a94a3;font-weight:400;font-style:italic}
.section.off{background:#f8f9fb}
footer{color:#8a94a3;font-size:12px;margin-top:18px;text-align:center}
footer a{color:#5b6778}
@media (max-width:980px){
.grid.main{grid-template-columns:minmax(0,1fr) minmax(0,1fr);grid-template-areas:"disk box" "archive archive"}
}
@media (max-width:640px){
.grid.main{grid-template-columns:minmax(0,1fr);grid-template-areas:"disk" "archive" "box"}
}
@media (max-width:640px){
.wrap{padding:10px}
.verdict{padding:14px 16px}
.verdict .word{font-size:32px}
.card{padding:12px}
table.services thead{display:none}
table.services,table.services tbody,table.services tr,table.services td{display:block;width:100%}
table.services tr{border:1px solid #e6eaef;border-radius:8px;padding:6px 10px;margin-bottom:10px}
table.services tbody tr:last-child{margin-bottom:0}
table.services td{border:0;padding:3px 0;display:flex;justify-content:space-between;gap:12px;text-align:right;max-width:none}
table.services td::before{content:attr(data-label);color:#5b6778;font-weight:400;font-size:13px;text-align:left;flex:none}
table.services td[data-field="name"]{display:block;text-align:left;font-size:16px;border-bottom:1px solid #eef1f5;padding-bottom:5px;margin-bottom:3px}
table.services td[data-field="name"]::before{content:none}
.counters{grid-template-columns:repeat(2,minmax(0,1fr))}
.counters>.counter:last-child:nth-child(odd){grid-column:1/-1}
}
"#;

/// Renders the status page.
pub fn render_html(s: &Snapshot) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n\
         <meta name=\"color-scheme\" content=\"light\">\n\
         <link rel=\"icon\" href=\"data:,\">\n\
         <title>{} \u{2014} DRIMbox {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
         <div class=\"wrap\">\n",
        verdict_label(s.verdict),
        escape(&s.dicom.ae_title),
    );
    let _ = writeln!(
        h,
        "<header class=\"top\"><h1>DRIMbox status</h1>\
         <span class=\"meta\">{} \u{b7} refreshes every {REFRESH_SECONDS} s</span></header>",
        escape(&human_time(&s.generated_at)),
    );
    render_verdict(&mut h, s);
    h.push_str("<main class=\"stack\">\n");
    render_services(&mut h, &s.services);
    h.push_str("<div class=\"grid main\">\n");
    render_disk(&mut h, s.disk.as_ref());
    render_counters(&mut h, s.archive.as_ref());
    render_box(&mut h, s);
    h.push_str("</div>\n");
    render_exams(&mut h, s.exams.as_ref());
    h.push_str("<div class=\"grid sections\">\n");
    render_section(&mut h, "dmp", "DMP publications", &s.dmp);
    render_section(&mut h, "whitelist", "Whitelist", &s.whitelist);
    render_section(&mut h, "wado", "Image access (WADO-RS)", &s.wado);
    render_section(&mut h, "ota", "OTA updates", &s.ota);
    h.push_str("</div>\n");
    render_exchanges(&mut h, &s.dmp_exchanges);
    h.push_str("</main>\n");
    let _ = writeln!(
        h,
        "<footer>Machine-readable: <a href=\"status.json\">status.json</a> \u{b7} \
         <a href=\"metrics\">metrics</a> \u{b7} schema {} \u{b7} \
         <a href=\"update\">install an update</a> (administrator)</footer>",
        s.schema
    );
    h.push_str("</div>\n</body>\n</html>\n");
    h
}

/// `/update`: the update state with the uploads' lines ([`super::upload_lines`], already in
/// `ota`) and the install form, or while an upload is pending a word to wait (the
/// administrator's page; hooks `data-section="ota"`, `id="notice"`, `form#install`).
pub fn render_update(ota: &Section, pending: bool, notice: Option<&str>) -> String {
    let mut h = String::with_capacity(8 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n\
         <link rel=\"icon\" href=\"data:,\">\n\
         <title>Install an update \u{2014} DRIMbox</title>\n<style>{CSS}{FORM_CSS}</style>\n\
         </head>\n<body>\n<div class=\"wrap\">\n\
         <header class=\"top\"><h1>Install an update</h1>\
         <span class=\"meta\"><a href=\"./\">back to the status page</a></span></header>\n\
         <main class=\"stack\">\n"
    );
    if let Some(n) = notice {
        let _ = writeln!(
            h,
            "<div class=\"card notice\" id=\"notice\">{}</div>",
            escape(n)
        );
    }
    render_section(&mut h, "ota", "OTA updates", ota);
    h.push_str(
        "<section class=\"card\">\n<h2>Bundle</h2>\n\
         <p>A signed update bundle (<code>.raucb</code>) from the vendor. It is written into the \
         other slot only once its signature, its signer, its compatible string, its version and \
         its security epoch are verified; the box boots it on trial and goes back to the current \
         slot by itself if it is not healthy.</p>\n",
    );
    if pending {
        h.push_str("<p class=\"alert\">An update is being installed: wait for it to finish.</p>\n");
    } else {
        h.push_str(
            "<form id=\"install\" method=\"post\" action=\"update\" \
             enctype=\"multipart/form-data\">\n\
             <p><input type=\"file\" name=\"bundle\" accept=\".raucb\" required></p>\n\
             <p><label><input type=\"checkbox\" name=\"reboot\" value=\"on\" checked> \
             reboot into it once installed</label></p>\n\
             <p><button type=\"submit\">Install</button></p>\n</form>\n",
        );
    }
    h.push_str("</section>\n</main>\n</div>\n</body>\n</html>\n");
    h
}

const FORM_CSS: &str = ".notice{border-left:4px solid #1e7b34;font-weight:600;overflow-wrap:anywhere}\
form button{font:inherit;font-weight:700;padding:8px 18px;border-radius:6px;border:0;background:#2563eb;color:#fff}\
form input[type=file]{font:inherit;max-width:100%}\
code{font-size:13px}";

fn render_verdict(h: &mut String, s: &Snapshot) {
    let v = s.verdict.as_str();
    let _ = write!(
        h,
        "<section id=\"verdict\" class=\"verdict v-{v}\" data-verdict=\"{v}\" role=\"status\">\n\
         <div class=\"word\">{}</div>\n",
        verdict_label(s.verdict)
    );
    if s.reasons.is_empty() {
        if s.verdict == Verdict::Ok {
            h.push_str("<div class=\"sub\">No problem reported.</div>\n");
        }
    } else {
        h.push_str("<ul class=\"reasons\">\n");
        for r in &s.reasons {
            let _ = writeln!(h, "<li>{}</li>", escape(r));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("</section>\n");
}

fn render_services(h: &mut String, services: &[ServiceStatus]) {
    h.push_str("<section class=\"card\" data-block=\"services\">\n<h2>Services</h2>\n");
    if services.is_empty() {
        h.push_str("<p class=\"unknown\">No service reported.</p>\n</section>\n");
        return;
    }
    h.push_str(
        "<table class=\"services\">\n<thead><tr><th>Service</th><th>State</th><th>Uptime</th>\
         <th class=\"num\">Restarts</th><th>Last error</th><th class=\"num\">PID</th></tr></thead>\n\
         <tbody>\n",
    );
    for svc in services {
        let name = escape(&svc.name);
        let state = state_name(svc.state);
        let _ = write!(
            h,
            "<tr data-service=\"{name}\" data-state=\"{state}\">\
             <td data-field=\"name\" data-label=\"Service\">{name}",
        );
        if !svc.counters.is_empty() {
            h.push_str("<span class=\"svc-counters\" data-field=\"counters\">");
            for (i, (k, v)) in svc.counters.iter().enumerate() {
                if i > 0 {
                    h.push_str(" \u{b7} ");
                }
                let _ = write!(h, "{} {v}", escape(&k.replace('_', " ")));
            }
            h.push_str("</span>");
        }
        h.push_str("</td>");
        let _ = write!(
            h,
            "<td data-field=\"state\" data-label=\"State\"><span class=\"badge {}\">{state}</span></td>",
            state_class(svc.state)
        );
        let uptime = if svc.uptime_seconds == 0 && svc.pid.is_none() {
            "<span class=\"none\">\u{2014}</span>".to_string()
        } else {
            human_duration(svc.uptime_seconds)
        };
        let _ = write!(
            h,
            "<td data-field=\"uptime\" data-label=\"Uptime\" data-seconds=\"{}\">{uptime}</td>",
            svc.uptime_seconds
        );
        let _ = write!(
            h,
            "<td data-field=\"restarts\" data-label=\"Restarts\" class=\"num\">{}</td>",
            svc.restarts
        );
        match svc.last_error.as_deref().filter(|e| !e.trim().is_empty()) {
            Some(e) => {
                let _ = write!(
                    h,
                    "<td data-field=\"last_error\" data-label=\"Last error\">{}</td>",
                    escape(e)
                );
            }
            None => h.push_str(
                "<td data-field=\"last_error\" data-label=\"Last error\">\
                 <span class=\"none\">\u{2014}</span></td>",
            ),
        }
        match svc.pid {
            Some(p) => {
                let _ = write!(
                    h,
                    "<td data-field=\"pid\" data-label=\"PID\" class=\"num\">{p}</td>"
                );
            }
            None => h.push_str(
                "<td data-field=\"pid\" data-label=\"PID\" class=\"num\">\
                 <span class=\"none\">\u{2014}</span></td>",
            ),
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
}

fn render_disk(h: &mut String, disk: Option<&Disk>) {
    let Some(d) = disk else {
        h.push_str(
            "<section class=\"card\" data-disk=\"unknown\">\n<h2>Archive disk</h2>\n\
             <p class=\"unknown\">unknown</p>\n</section>\n",
        );
        return;
    };
    let warn = d.warning();
    let pct = clamp_percent(d.used_percent);
    let used = d.total_bytes.saturating_sub(d.available_bytes);
    let _ = write!(
        h,
        "<section class=\"card\" data-disk=\"known\" data-warning=\"{warn}\">\n<h2>Archive disk</h2>\n\
         <div class=\"disk-figures\"><span><b>{pct:.1} %</b> used</span>\
         <span>{} free of {}</span></div>\n\
         <div class=\"bar{}\" role=\"progressbar\" aria-label=\"disk used\" aria-valuemin=\"0\" \
         aria-valuemax=\"100\" aria-valuenow=\"{pct:.1}\"><span style=\"width:{pct:.1}%\"></span></div>\n\
         <div class=\"disk-figures\"><span>{} used</span><span>warning at {:.0} %</span></div>\n\
         <div class=\"path\">{}</div>\n",
        escape(&human_bytes(d.available_bytes)),
        escape(&human_bytes(d.total_bytes)),
        if warn { " warn" } else { "" },
        escape(&human_bytes(used)),
        clamp_percent(d.warn_percent),
        escape(&d.path),
    );
    if warn {
        let _ = writeln!(
            h,
            "<div class=\"alert\" data-field=\"disk_warning\" role=\"alert\">\u{26a0} Disk {pct:.1} % \
             full (warning at {:.0} %): free space or extend the archive.</div>",
            clamp_percent(d.warn_percent)
        );
    }
    h.push_str("</section>\n");
}

fn render_counters(h: &mut String, archive: Option<&ArchiveCounters>) {
    h.push_str("<section class=\"card\" data-block=\"archive\">\n<h2>Archive</h2>\n");
    let Some(a) = archive else {
        h.push_str(
            "<p class=\"unknown down\" data-archive=\"down\">archive not answering</p>\n</section>\n",
        );
        return;
    };
    h.push_str("<div class=\"counters\">\n");
    let plain: [(&str, &str, u64, bool); 8] = [
        ("studies_today", "Studies today", a.studies_today, false),
        (
            "studies_waiting",
            "Studies waiting",
            a.studies_waiting,
            false,
        ),
        ("studies_stable", "Studies stable", a.studies_stable, false),
        ("studies", "Studies total", a.studies, false),
        ("instances", "Instances", a.instances, false),
        (
            "rejected_instances",
            "Rejected instances",
            a.rejected_instances,
            false,
        ),
        (
            "rejection_notes",
            "Rejection notes",
            a.rejection_notes,
            false,
        ),
        (
            "missing_files",
            "Missing files",
            a.missing_files,
            a.missing_files > 0,
        ),
    ];
    for (field, label, value, attention) in plain {
        let _ = writeln!(
            h,
            "<div class=\"counter{}\"><div class=\"label\">{label}</div>\
             <div class=\"value\" data-counter=\"{field}\">{value}</div></div>",
            if attention { " attention" } else { "" }
        );
    }
    let _ = writeln!(
        h,
        "<div class=\"counter\"><div class=\"label\">Stored</div>\
         <div class=\"value\">{}</div>\
         <div class=\"exact\"><span data-counter=\"bytes\">{}</span> bytes</div></div>",
        escape(&human_bytes(a.bytes)),
        a.bytes
    );
    h.push_str("</div>\n</section>\n");
}

fn render_box(h: &mut String, s: &Snapshot) {
    let _ = write!(
        h,
        "<section class=\"card\" data-block=\"box\">\n<h2>This box</h2>\n<dl class=\"kv\">\n\
         <dt>Firmware</dt><dd data-field=\"version\">{}</dd>\n\
         <dt>Build</dt><dd data-field=\"build\">{}</dd>\n\
         <dt>Clock</dt><dd><time data-field=\"generated_at\" datetime=\"{}\">{}</time></dd>\n\
         <dt>DICOM AE</dt><dd data-field=\"ae_title\">{}</dd>\n\
         <dt>DICOM port</dt><dd data-field=\"port\">{}</dd>\n</dl>\n</section>\n",
        escape(&s.firmware.version),
        escape(&s.firmware.build),
        escape(&s.generated_at),
        escape(&human_time(&s.generated_at)),
        escape(&s.dicom.ae_title),
        s.dicom.port,
    );
}

/// The exams card: counts by state, then one row per listed exam (`data-exam-state`), with the
/// reason of a hold. Study Instance UIDs only: no name, no patient identifier.
fn render_exams(h: &mut String, exams: Option<&crate::status::model::Exams>) {
    h.push_str("<section class=\"card exams\" data-section=\"exams\">\n<h2>Exams</h2>\n");
    let Some(e) = exams else {
        h.push_str("<div class=\"summary\">archive not answering</div>\n</section>\n");
        return;
    };
    if e.by_state.is_empty() {
        h.push_str("<div class=\"summary\">no exam yet</div>\n</section>\n");
        return;
    }
    let counts: Vec<String> = e
        .by_state
        .iter()
        .map(|(k, v)| format!("{v} {}", escape(k)))
        .collect();
    let _ = writeln!(
        h,
        "<div class=\"summary\">{}</div>",
        counts.join(" \u{b7} ")
    );
    h.push_str(
        "<table class=\"exams\"><thead><tr><th>Study</th><th>State</th><th>Why</th>\
         <th>Images</th><th>Lots</th></tr></thead><tbody>\n",
    );
    for l in &e.listed {
        let _ = writeln!(
            h,
            "<tr data-exam-state=\"{}\"><td class=\"uid\">{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            escape(&l.state),
            escape(&l.study_uid),
            escape(&l.state),
            escape(l.reason.as_deref().unwrap_or("")),
            l.images,
            l.lots
        );
    }
    h.push_str("</tbody></table>\n");
    if e.more > 0 {
        let _ = writeln!(h, "<div class=\"meta\">and {} more</div>", e.more);
    }
    h.push_str("</section>\n");
}

fn render_section(h: &mut String, key: &str, title: &str, sec: &Section) {
    let summary = if sec.summary.trim().is_empty() {
        if sec.configured {
            "configured"
        } else {
            "not configured"
        }
    } else {
        sec.summary.as_str()
    };
    let _ = write!(
        h,
        "<section class=\"card section{}\" data-section=\"{key}\" data-configured=\"{}\">\n\
         <h2>{title}</h2>\n<div class=\"summary\">{}</div>\n",
        if sec.configured { "" } else { " off" },
        sec.configured,
        escape(summary),
    );
    for line in &sec.details {
        let _ = writeln!(h, "<div class=\"meta detail\">{}</div>", escape(line));
    }
    h.push_str("</section>\n");
}

/// The last steps of deliveries to the DMP (nothing when there were none).
fn render_exchanges(h: &mut String, lines: &[crate::status::model::ExchangeLine]) {
    if lines.is_empty() {
        return;
    }
    h.push_str(
        "<section class=\"card exchanges\" data-section=\"dmp-exchanges\">\n\
         <h2>Last DMP exchanges</h2>\n<table class=\"exams\"><thead><tr><th>When</th>\
         <th>Study</th><th>Lot</th><th>Action</th><th>Transactions</th><th>Attempts</th>\
         <th>Outcome</th></tr></thead><tbody>\n",
    );
    for l in lines {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"uid\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            escape(&human_time(&l.at)),
            escape(&l.study_uid),
            l.lot,
            escape(&l.action),
            escape(&l.transactions),
            l.attempts,
            escape(&l.outcome)
        );
    }
    h.push_str("</tbody></table>\n</section>\n");
}

/// Hand-built snapshots shared by the unit tests of the status modules.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::collections::BTreeMap;

    use super::super::model::*;

    fn service(name: &str, state: ServiceState, pid: Option<u32>, uptime: u64) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            state,
            pid,
            uptime_seconds: uptime,
            restarts: 0,
            last_error: None,
            counters: BTreeMap::new(),
        }
    }

    fn base() -> Snapshot {
        let mut receiver = service("receiver", ServiceState::Ready, Some(4243), 11_520);
        receiver.counters.insert("associations".into(), 17);
        receiver.counters.insert("instances_stored".into(), 1_204);
        Snapshot {
            schema: SCHEMA_VERSION,
            generated_at: "2026-12-02T10:00:00Z".into(),
            generated_at_ms: 1_796_205_600_000,
            verdict: Verdict::Ok,
            reasons: vec![],
            firmware: Firmware {
                version: "0.1.0".into(),
                build: "2a8ce64".into(),
            },
            dicom: DicomEndpoint {
                ae_title: "DRIMBOX".into(),
                port: 11112,
            },
            services: vec![
                service("archive", ServiceState::Ready, Some(4242), 11_532),
                receiver,
            ],
            disk: Some(Disk {
                path: "/var/lib/drimbox".into(),
                total_bytes: 500 * (1 << 30),
                available_bytes: 380 * (1 << 30),
                used_percent: 24.0,
                warn_percent: 90.0,
            }),
            archive: Some(ArchiveCounters {
                studies: 312,
                studies_today: 14,
                studies_waiting: 1,
                studies_stable: 311,
                instances: 48_210,
                rejected_instances: 3,
                rejection_notes: 1,
                missing_files: 0,
                bytes: 25_769_803_776,
                reports: 310,
            }),
            exams: None,
            dmp: Section::not_configured(),
            dmp_exchanges: Vec::new(),
            whitelist: Section::not_configured(),
            wado: Section::not_configured(),
            ota: Section::not_configured(),
        }
    }

    /// Everything fine.
    pub(crate) fn ok() -> Snapshot {
        base()
    }

    /// Disk over the threshold, a restarted receiver; one section configured.
    pub(crate) fn degraded() -> Snapshot {
        let mut s = base();
        s.verdict = Verdict::Degraded;
        s.reasons = vec!["archive disk 93.4 % used (warning at 90 %)".into()];
        let d = s.disk.as_mut().unwrap();
        d.available_bytes = 33 * (1 << 30);
        d.used_percent = 93.4;
        let r = &mut s.services[1];
        r.restarts = 2;
        r.uptime_seconds = 754;
        r.last_error = Some("exited with status 101 <after> \"panic\" & 'restart'".into());
        s.archive.as_mut().unwrap().missing_files = 2;
        s.whitelist = Section {
            details: Vec::new(),
            configured: true,
            summary: "1 240 entries, updated 2026-12-02 06:00 UTC".into(),
        };
        s
    }

    /// A failed service, the archive not answering, no disk figures.
    pub(crate) fn failing() -> Snapshot {
        let mut s = base();
        s.verdict = Verdict::Failing;
        s.reasons = vec![
            "service archive failed: crash loop, 5 restarts in 60 s".into(),
            "archive not answering".into(),
        ];
        let a = &mut s.services[0];
        a.state = ServiceState::Failed;
        a.pid = None;
        a.uptime_seconds = 0;
        a.restarts = 5;
        a.last_error = Some("killed by signal 9 (SIGKILL)".into());
        let r = &mut s.services[1];
        r.state = ServiceState::Restarting;
        r.pid = None;
        r.uptime_seconds = 0;
        r.restarts = 1;
        s.archive = None;
        s.disk = None;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures;
    use super::*;

    /// The text between `<tag ...attr...>` and the next `<`, for the first element carrying `attr`.
    fn text_of<'a>(html: &'a str, attr: &str) -> Option<&'a str> {
        let at = html.find(attr)?;
        let start = at + html[at..].find('>')? + 1;
        let end = start + html[start..].find('<')?;
        Some(&html[start..end])
    }

    /// The opening tag of the first element carrying `attr`.
    fn tag_of<'a>(html: &'a str, attr: &str) -> Option<&'a str> {
        let at = html.find(attr)?;
        let start = html[..at].rfind('<')?;
        let end = at + html[at..].find('>')?;
        Some(&html[start..=end])
    }

    /// The `<tr data-service=...>...</tr>` row of one service.
    fn row<'a>(html: &'a str, name: &str) -> &'a str {
        let key = format!("data-service=\"{name}\"");
        let at = html.find(&key).unwrap_or_else(|| panic!("no row {name}"));
        let end = at + html[at..].find("</tr>").unwrap();
        &html[at..end]
    }

    #[test]
    fn escape_neutralises_markup_and_quotes() {
        assert_eq!(
            escape("<script>alert(\"x\")</script>"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
        );
        assert_eq!(escape("it's a & b"), "it&#39;s a &amp; b");
        assert_eq!(escape("plain é ü 日本"), "plain é ü 日本");
        assert_eq!(escape(""), "");
        // Already-escaped text is escaped again, not passed through.
        assert_eq!(escape("&lt;"), "&amp;lt;");
    }

    #[test]
    fn humanised_figures() {
        assert_eq!(human_duration(0), "0 s");
        assert_eq!(human_duration(59), "59 s");
        assert_eq!(human_duration(60), "1 min");
        assert_eq!(human_duration(3599), "59 min");
        assert_eq!(human_duration(3 * 3600 + 12 * 60 + 7), "3 h 12 min");
        assert_eq!(human_duration(2 * 86400 + 4 * 3600 + 59), "2 d 4 h");
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_bytes(25_769_803_776), "24.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(
            human_time("2026-12-02T10:00:00Z"),
            "2026-12-02 10:00:00 UTC"
        );
        assert_eq!(
            human_time("2026-12-02T10:00:00.123Z"),
            "2026-12-02 10:00:00 UTC"
        );
        assert_eq!(human_time("garbage"), "garbage");
        assert_eq!(human_time("ü"), "ü");
        // Non-ASCII where the seconds would be: shown as given, no panic on a char boundary.
        assert_eq!(
            human_time("2026-12-02T10:00:0\u{e9}Z"),
            "2026-12-02T10:00:0\u{e9}Z"
        );
    }

    #[test]
    fn state_names_match_the_json() {
        for st in SERVICE_STATES {
            assert_eq!(
                serde_json::to_string(&st).unwrap(),
                format!("\"{}\"", state_name(st))
            );
        }
    }

    #[test]
    fn document_shell_is_self_contained() {
        for s in [fixtures::ok(), fixtures::degraded(), fixtures::failing()] {
            let h = render_html(&s);
            assert!(h.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"));
            assert!(h.trim_end().ends_with("</html>"));
            assert!(h.contains("<meta charset=\"utf-8\">"));
            assert!(h.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
            assert!(h.contains(
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            ));
            for banned in [
                "http://",
                "https://",
                "//cdn",
                "<script",
                "@import",
                "url(",
                "@font-face",
                " src=",
                "<img",
                "<iframe",
            ] {
                assert!(!h.contains(banned), "page contains {banned:?}");
            }
            // Only the inline data: icon may be linked.
            assert_eq!(h.matches("<link").count(), 1);
            assert!(h.contains("<link rel=\"icon\" href=\"data:,\">"));
        }
    }

    #[test]
    fn ok_page() {
        let s = fixtures::ok();
        let h = render_html(&s);
        let v = tag_of(&h, "id=\"verdict\"").unwrap();
        assert!(v.contains("data-verdict=\"ok\""), "{v}");
        assert_eq!(text_of(&h, "id=\"verdict\"").unwrap().trim(), "");
        assert!(h.contains("<div class=\"word\">OK</div>"));
        assert!(h.contains("v-ok"));

        let r = row(&h, "receiver");
        assert_eq!(text_of(r, "data-field=\"state\"").unwrap(), "");
        assert!(r.contains(">ready</span>"));
        assert_eq!(text_of(r, "data-field=\"uptime\""), Some("3 h 12 min"));
        assert_eq!(text_of(r, "data-field=\"restarts\""), Some("0"));
        assert_eq!(text_of(r, "data-field=\"pid\""), Some("4243"));
        assert!(r.contains("associations 17"));
        let a = row(&h, "archive");
        assert!(a.contains("data-field=\"last_error\" data-label=\"Last error\"><span class=\"none\">\u{2014}</span>"));

        for (field, value) in [
            ("studies", "312"),
            ("studies_today", "14"),
            ("studies_waiting", "1"),
            ("studies_stable", "311"),
            ("instances", "48210"),
            ("rejected_instances", "3"),
            ("rejection_notes", "1"),
            ("missing_files", "0"),
            ("bytes", "25769803776"),
        ] {
            assert_eq!(
                text_of(&h, &format!("data-counter=\"{field}\"")),
                Some(value),
                "{field}"
            );
        }
        assert!(h.contains(">24.0 GiB<"));
        assert!(tag_of(&h, "data-disk=")
            .unwrap()
            .contains("data-warning=\"false\""));
        assert!(!h.contains("role=\"alert\""));
        assert!(h.contains("style=\"width:24.0%\""));
        for sec in ["dmp", "whitelist", "ota"] {
            let t = tag_of(&h, &format!("data-section=\"{sec}\"")).unwrap();
            assert!(t.contains("section off"), "{t}");
            assert!(t.contains("data-configured=\"false\""));
        }
        assert!(h.contains("<div class=\"summary\">not configured</div>"));
        assert!(h.contains("<dd data-field=\"version\">0.1.0</dd>"));
        assert!(h.contains("<dd data-field=\"build\">2a8ce64</dd>"));
        assert!(h.contains("<dd data-field=\"ae_title\">DRIMBOX</dd>"));
        assert!(h.contains("<dd data-field=\"port\">11112</dd>"));
        assert!(h.contains("datetime=\"2026-12-02T10:00:00Z\">2026-12-02 10:00:00 UTC</time>"));
    }

    #[test]
    fn degraded_page_warns_about_the_disk_and_escapes_errors() {
        let h = render_html(&fixtures::degraded());
        assert!(tag_of(&h, "id=\"verdict\"")
            .unwrap()
            .contains("data-verdict=\"degraded\""));
        assert!(h.contains("<div class=\"word\">DEGRADED</div>"));
        assert!(h.contains("<li>archive disk 93.4 % used (warning at 90 %)</li>"));
        assert!(tag_of(&h, "data-disk=")
            .unwrap()
            .contains("data-warning=\"true\""));
        assert!(h.contains("class=\"bar warn\""));
        let alert = text_of(&h, "data-field=\"disk_warning\"").unwrap();
        assert!(alert.contains("93.4 %"), "{alert}");
        let r = row(&h, "receiver");
        assert_eq!(
            text_of(r, "data-field=\"last_error\""),
            Some("exited with status 101 &lt;after&gt; &quot;panic&quot; &amp; &#39;restart&#39;")
        );
        assert_eq!(text_of(r, "data-field=\"uptime\""), Some("12 min"));
        assert_eq!(text_of(r, "data-field=\"restarts\""), Some("2"));
        assert!(h.contains("<div class=\"counter attention\"><div class=\"label\">Missing files"));
        let t = tag_of(&h, "data-section=\"whitelist\"").unwrap();
        assert!(!t.contains(" off"), "{t}");
        assert!(h.contains("1 240 entries"));
    }

    #[test]
    fn failing_page_says_plainly_what_is_unknown() {
        let h = render_html(&fixtures::failing());
        assert!(tag_of(&h, "id=\"verdict\"")
            .unwrap()
            .contains("data-verdict=\"failing\""));
        assert!(h.contains("v-failing"));
        assert!(h.contains("<li>archive not answering</li>"));
        assert!(
            h.contains("<p class=\"unknown down\" data-archive=\"down\">archive not answering</p>")
        );
        assert!(h.contains("data-disk=\"unknown\""));
        assert!(h.contains("<p class=\"unknown\">unknown</p>"));
        assert!(!h.contains("data-counter="));
        let a = row(&h, "archive");
        assert!(a.contains("data-state=\"failed\""));
        assert!(a.contains("<span class=\"badge bad\">failed</span>"));
        assert!(a.contains("killed by signal 9 (SIGKILL)"));
        assert!(
            a.contains("data-field=\"pid\" data-label=\"PID\" class=\"num\"><span class=\"none\">")
        );
        assert_eq!(text_of(a, "data-field=\"restarts\""), Some("5"));
        let r = row(&h, "receiver");
        assert!(r.contains("<span class=\"badge warn\">restarting</span>"));
    }

    #[test]
    fn hostile_text_everywhere_is_escaped() {
        let evil = "<script>alert('x')</script>\"><img src=x onerror=1>";
        let mut s = fixtures::degraded();
        s.reasons.push(evil.into());
        s.firmware.version = evil.into();
        s.firmware.build = evil.into();
        s.dicom.ae_title = evil.into();
        s.generated_at = evil.into();
        s.services[0].name = evil.into();
        s.services[0].last_error = Some(evil.into());
        s.services[0].counters.insert(evil.into(), 1);
        s.disk.as_mut().unwrap().path = evil.into();
        s.dmp_exchanges = vec![crate::status::model::ExchangeLine {
            at: "2026-12-02T10:00:00Z".into(),
            study_uid: "<script>".into(),
            lot: 1,
            action: "publish".into(),
            transactions: "ITI-41".into(),
            attempts: 1,
            outcome: "retry scheduled: <b>x</b>".into(),
        }];
        s.dmp = Section {
            details: vec!["<i>detail</i>".into()],
            configured: true,
            summary: evil.into(),
        };
        let h = render_html(&s);
        assert!(!h.contains("<script"), "unescaped script tag");
        assert!(!h.contains("<img"), "unescaped img tag");
        assert!(!h.contains("'x'"));
        assert!(h.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&gt;"));
        assert!(h.contains("data-service=\"&lt;script&gt;"));
        assert!(!h.contains("<b>x") && !h.contains("<i>detail"));
        assert!(h.contains("Last DMP exchanges") && h.contains("retry scheduled: &lt;b&gt;x"));
    }

    #[test]
    fn odd_disk_figures_do_not_break_the_bar() {
        let mut s = fixtures::ok();
        let d = s.disk.as_mut().unwrap();
        d.used_percent = f64::NAN;
        assert!(render_html(&s).contains("style=\"width:0.0%\""));
        let d = s.disk.as_mut().unwrap();
        d.used_percent = 140.0;
        d.available_bytes = d.total_bytes + 1;
        assert!(render_html(&s).contains("style=\"width:100.0%\""));
    }

    #[test]
    fn blank_summaries_and_empty_services() {
        let mut s = fixtures::ok();
        s.services.clear();
        s.ota = Section {
            details: Vec::new(),
            configured: true,
            summary: " ".into(),
        };
        let h = render_html(&s);
        assert!(h.contains("No service reported."));
        assert!(!h.contains("data-service="));
        assert!(h.contains("<div class=\"summary\">configured</div>"));
    }
}
