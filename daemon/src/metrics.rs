//! Prometheus text exposition (format 0.0.4) of everything the daemon counts: per model
//! version requests, latency, queue and engine time, batch sizes, engine choice and
//! fallbacks; the data path's connection and error counters; process memory.
//!
//! Rendering only reads relaxed atomics: a scrape never blocks a core. Names follow the
//! Prometheus conventions: `edgeinfer_` prefix, `_seconds` for times, `_total` for counters.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::UNIX_EPOCH;

use edgeinfer_proto::ErrorCode;

use crate::model_table::{
    AtomicHistogram, CountHistogram, ModelVersion, Outcome, Snapshot, BATCH_BOUNDS,
    LATENCY_BOUNDS_S,
};
use crate::server::ServerStats;

/// Prometheus' content type for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric. `server` is absent when only HTTP runs (tests, tools).
pub fn render(snapshot: &Snapshot, server: Option<&ServerStats>) -> String {
    let mut out = String::with_capacity(16 << 10);
    render_into(&mut out, snapshot, server);
    out
}

/// [`render`] into an existing buffer (the HTTP layer appends its own counters after).
pub fn render_into(out: &mut String, snapshot: &Snapshot, server: Option<&ServerStats>) {
    let versions: Vec<&ModelVersion> = snapshot.versions().map(|v| &**v).collect();

    header(
        out,
        "edgeinfer_build_info",
        "gauge",
        "Build of the running daemon.",
    );
    let _ = writeln!(
        out,
        "edgeinfer_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );

    header(
        out,
        "edgeinfer_model_table_generation",
        "gauge",
        "Times the model table has been swapped.",
    );
    let _ = writeln!(
        out,
        "edgeinfer_model_table_generation {}",
        snapshot.generation
    );

    header(
        out,
        "edgeinfer_model_ready",
        "gauge",
        "1 when the model version is loaded and warm.",
    );
    for v in &versions {
        let _ = writeln!(
            out,
            "edgeinfer_model_ready{{{}}} {}",
            mv(v),
            v.is_ready() as u8
        );
    }

    header(
        out,
        "edgeinfer_model_engine_info",
        "gauge",
        "The engine each model version runs on (value 1).",
    );
    for v in &versions {
        let _ = writeln!(
            out,
            "edgeinfer_model_engine_info{{{},engine=\"{}\"}} 1",
            mv(v),
            v.model.backend()
        );
    }

    header(
        out,
        "edgeinfer_model_engine_fallbacks",
        "gauge",
        "Engines considered for the model version and not used (see edgeinfer_model_engine_fallback_info).",
    );
    for v in &versions {
        let _ = writeln!(
            out,
            "edgeinfer_model_engine_fallbacks{{{}}} {}",
            mv(v),
            v.model.report.fallbacks.len()
        );
    }
    header(
        out,
        "edgeinfer_model_engine_fallback_info",
        "gauge",
        "One series per engine not used for a model version, with the reason (value 1).",
    );
    for v in &versions {
        for f in &v.model.report.fallbacks {
            let _ = writeln!(
                out,
                "edgeinfer_model_engine_fallback_info{{{},engine=\"{}\",reason=\"{}\"}} 1",
                mv(v),
                f.backend,
                escape(&truncate(&f.reason, 200))
            );
        }
    }

    header(
        out,
        "edgeinfer_model_loaded_timestamp_seconds",
        "gauge",
        "When the model version was loaded.",
    );
    for v in &versions {
        let t = v
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let _ = writeln!(
            out,
            "edgeinfer_model_loaded_timestamp_seconds{{{}}} {t:.3}",
            mv(v)
        );
    }

    header(
        out,
        "edgeinfer_requests_total",
        "counter",
        "Inference requests by model, version and outcome.",
    );
    for v in &versions {
        for o in Outcome::ALL {
            let _ = writeln!(
                out,
                "edgeinfer_requests_total{{{},status=\"{}\"}} {}",
                mv(v),
                o.label(),
                v.stats.count(o)
            );
        }
    }

    header(
        out,
        "edgeinfer_rows_total",
        "counter",
        "Input rows (batch entries) scored.",
    );
    for v in &versions {
        let _ = writeln!(
            out,
            "edgeinfer_rows_total{{{}}} {}",
            mv(v),
            v.stats.rows.load(Relaxed)
        );
    }

    latency_histogram(
        out,
        &versions,
        "edgeinfer_request_duration_seconds",
        "From a request's arrival to its response being ready.",
        |v| &v.stats.latency,
    );
    latency_histogram(
        out,
        &versions,
        "edgeinfer_request_queue_seconds",
        "Time a request waited before its engine run started (queue, batching).",
        |v| &v.stats.queue,
    );
    latency_histogram(
        out,
        &versions,
        "edgeinfer_engine_run_seconds",
        "Engine run time.",
        |v| &v.stats.compute,
    );
    count_histogram(
        out,
        &versions,
        "edgeinfer_batch_rows",
        "Rows per engine run.",
        |v| &v.stats.batch_rows,
    );

    if let Some(s) = server {
        render_server(out, s);
    }
    // The feature store's counters and fill (nothing when [cache] is off).
    crate::server::entity::render_metrics(out);

    header(
        out,
        "edgeinfer_process_resident_memory_bytes",
        "gauge",
        "Resident set size of the daemon.",
    );
    if let Some(rss) = resident_bytes() {
        let _ = writeln!(out, "edgeinfer_process_resident_memory_bytes {rss}");
    }
    header(
        out,
        "edgeinfer_process_start_time_seconds",
        "gauge",
        "When the daemon started, Unix time.",
    );
    if let Some(t) = process_start_time() {
        let _ = writeln!(out, "edgeinfer_process_start_time_seconds {t:.3}");
    }
    // The telemetry interval's latency percentiles, as published on MQTT.
    crate::telemetry_glue::write_metrics(out);
}

fn render_server(out: &mut String, s: &ServerStats) {
    header(
        out,
        "edgeinfer_connections_open",
        "gauge",
        "Binary-protocol connections open now.",
    );
    let _ = writeln!(
        out,
        "edgeinfer_connections_open {}",
        s.connections_open.load(Relaxed)
    );
    header(
        out,
        "edgeinfer_shm_sessions_open",
        "gauge",
        "Shared-memory sessions open now, each holding one memfd with its two rings.",
    );
    let _ = writeln!(
        out,
        "edgeinfer_shm_sessions_open {}",
        s.shm_sessions_open.load(Relaxed)
    );
    for (name, help, v) in [
        (
            "edgeinfer_shm_sessions_granted_total",
            "Shared-memory sessions granted in HELLO.",
            &s.shm_sessions_granted,
        ),
        (
            "edgeinfer_shm_sessions_hostile_total",
            "Shared-memory sessions ended because the client broke the ring protocol.",
            &s.shm_sessions_hostile,
        ),
        (
            "edgeinfer_connections_accepted_total",
            "Binary-protocol connections accepted.",
            &s.connections_accepted,
        ),
        (
            "edgeinfer_connections_refused_total",
            "Connections closed at once because server.max_connections were open.",
            &s.connections_refused,
        ),
        (
            "edgeinfer_connections_timed_out_total",
            "Connections closed for a slow frame, idleness, or a client that took no answer bytes for server.write_timeout_ms.",
            &s.connections_timed_out,
        ),
        (
            "edgeinfer_connections_unauthenticated_total",
            "Connections closed for a missing or wrong HELLO token, or a Unix peer not in the allow-lists.",
            &s.connections_unauthenticated,
        ),
        (
            "edgeinfer_accept_fd_exhausted_total",
            "Accepts that failed for lack of file descriptors (EMFILE/ENFILE); accepting backs off meanwhile.",
            &s.accept_fd_exhausted,
        ),
        (
            "edgeinfer_requests_refused_before_data_total",
            "PREDICTs refused from their metadata (row cap, unknown model) before their tensor bytes were read; the rest of the frame is discarded.",
            &s.refused_before_data,
        ),
        (
            "edgeinfer_chunked_requests_total",
            "Requests with more rows than one step's engine-time budget, run in several chunks with other connections' work between them.",
            &s.chunked_requests,
        ),
        (
            "edgeinfer_request_chunks_total",
            "Engine runs of chunks of those requests.",
            &s.request_chunks,
        ),
    ] {
        header(out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", v.load(Relaxed));
    }
    header(
        out,
        "edgeinfer_protocol_errors_total",
        "counter",
        "ERROR frames sent, by wire error code.",
    );
    for code in ErrorCode::ALL {
        let _ = writeln!(
            out,
            "edgeinfer_protocol_errors_total{{code=\"{}\"}} {}",
            code.name(),
            s.errors(code)
        );
    }
    header(
        out,
        "edgeinfer_core_requests_total",
        "counter",
        "Requests (any opcode) read by each core.",
    );
    for c in &s.cores {
        let _ = writeln!(
            out,
            "edgeinfer_core_requests_total{{cpu=\"{}\"}} {}",
            c.cpu,
            c.requests.load(Relaxed)
        );
    }
    header(
        out,
        "edgeinfer_core_queue_depth",
        "gauge",
        "Requests waiting on each core now (queued or batching).",
    );
    for c in &s.cores {
        let _ = writeln!(
            out,
            "edgeinfer_core_queue_depth{{cpu=\"{}\"}} {}",
            c.cpu,
            c.queue_depth.load(Relaxed)
        );
    }
    header(
        out,
        "edgeinfer_core_connections_open",
        "gauge",
        "Connections open on each core now.",
    );
    for c in &s.cores {
        let _ = writeln!(
            out,
            "edgeinfer_core_connections_open{{cpu=\"{}\"}} {}",
            c.cpu,
            c.connections_open.load(Relaxed)
        );
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// `model="…",version="…"`.
fn mv(v: &ModelVersion) -> String {
    format!(
        "model=\"{}\",version=\"{}\"",
        escape(&v.name),
        escape(&v.version)
    )
}

fn latency_histogram(
    out: &mut String,
    versions: &[&ModelVersion],
    name: &str,
    help: &str,
    pick: impl Fn(&ModelVersion) -> &AtomicHistogram,
) {
    header(out, name, "histogram", help);
    for v in versions {
        let (counts, sum) = pick(v).cumulative();
        let labels = mv(v);
        for (bound, c) in LATENCY_BOUNDS_S.iter().zip(&counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {c}");
        }
        let total = counts.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
    }
}

fn count_histogram(
    out: &mut String,
    versions: &[&ModelVersion],
    name: &str,
    help: &str,
    pick: impl Fn(&ModelVersion) -> &CountHistogram,
) {
    header(out, name, "histogram", help);
    for v in versions {
        let (counts, sum) = pick(v).cumulative();
        let labels = mv(v);
        for (bound, c) in BATCH_BOUNDS.iter().zip(&counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {c}");
        }
        let total = counts.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
    }
}

/// Label values escape backslash, double quote and newline.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Resident set size, from `/proc/self/statm` (second field, in pages).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Process start, Unix seconds: boot time plus the start tick of `/proc/self/stat`.
fn process_start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let start_ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    (hz > 0.0).then(|| btime + start_ticks / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(truncate("abc", 3), "abc");
    }

    #[test]
    fn process_figures_are_plausible() {
        let rss = resident_bytes().unwrap();
        assert!(rss > 1 << 20 && rss < 64 << 30, "{rss}");
        let start = process_start_time().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start} vs {now}"
        );
    }

    #[test]
    fn server_stats_render() {
        let s = ServerStats::new(&[0, 1]);
        s.connections_open.store(3, Relaxed);
        s.cores[1].requests.store(42, Relaxed);
        s.connections_unauthenticated.store(5, Relaxed);
        s.accept_fd_exhausted.store(6, Relaxed);
        s.refused_before_data.store(7, Relaxed);
        s.chunked_requests.store(8, Relaxed);
        s.request_chunks.store(9, Relaxed);
        let text = render(&Snapshot::default(), Some(&s));
        for line in [
            "edgeinfer_connections_unauthenticated_total 5",
            "edgeinfer_accept_fd_exhausted_total 6",
            "edgeinfer_requests_refused_before_data_total 7",
            "edgeinfer_chunked_requests_total 8",
            "edgeinfer_request_chunks_total 9",
        ] {
            assert!(text.contains(&format!("\n{line}\n")), "{line} in:\n{text}");
        }
        assert!(
            text.contains("# TYPE edgeinfer_request_chunks_total counter\n"),
            "{text}"
        );
        assert!(text.contains("\nedgeinfer_connections_open 3\n"), "{text}");
        assert!(
            text.contains("\nedgeinfer_core_requests_total{cpu=\"1\"} 42\n"),
            "{text}"
        );
        assert!(
            text.contains("edgeinfer_protocol_errors_total{code=\"BAD_FRAME\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("\nedgeinfer_process_resident_memory_bytes "),
            "{text}"
        );
    }
}
