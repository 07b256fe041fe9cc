//! Logs, metrics and traces.
//!
//! Logs: human-readable on a terminal, JSON lines otherwise ([`json_lines`]); `RUST_LOG`
//! overrides the level.
//! Metrics: a Prometheus recorder rendered at `GET /metrics` ([`metrics`]).
//! Traces: OpenTelemetry over OTLP/HTTP, only when an endpoint is configured; otherwise no
//! span is even created ([`span`]), so an unconfigured tracer costs nothing.

mod json_lines;
pub mod metrics;

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat, TraceExport};
use json_lines::JsonLines;

/// Whether spans are exported; read on every request, so it is an atomic, not a lock.
static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether trace export is on.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// A span from `make` when traces are exported, else the disabled span (free).
pub fn span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if tracing_enabled() { make() } else { tracing::Span::none() }
}

/// Flushes the log writer and stops the trace exporter when dropped (at the end of `main`'s
/// work).
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    /// Writes the last buffered log lines when dropped.
    log_writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        drop(self.log_writer.take());
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("tokenrelay: flushing traces failed: {error}");
        }
    }
}

/// Log lines queued for the writer thread before further lines are dropped. The queue is
/// allocated and touched in full at start (32 bytes a line), so its length is resident memory
/// from the first moment: tracing-appender's default of 128,000 lines would be 4 MiB, these
/// 16,384 lines are 512 KiB and cover a short stall of the writer at the highest request
/// rates measured (docs/benchmarks.md).
const LOG_BACKLOG_LINES: usize = 16_384;

/// Installs the global subscriber: logs to stderr (stdout carries only what a user asked
/// for: the `token` output, the `--dev` export lines), plus span export when configured.
pub fn init(log: &LogConfig, traces: Option<&TraceExport>) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let terminal = std::io::stderr().is_terminal();
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    let text_layer = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colour codes only make sense on a terminal; in files and pipes they are noise.
            .with_ansi(terminal)
    });
    // JSON lines are what a pod writes at request rate: they go through a channel to a writer
    // thread that batches them into one `write` per burst instead of one per line. Lossy: if
    // the thread falls `LOG_BACKLOG_LINES` behind, lines are dropped rather than requests slowed.
    // Each dropped line is counted (`tokenrelay_log_lines_dropped_total`, see
    // [`render_log_lines_dropped`]).
    let (json_layer, log_writer) = if json {
        let (writer, guard) = lossy_writer(std::io::BufWriter::new(std::io::stderr()), LOG_BACKLOG_LINES);
        let _ = LOG_LINES_DROPPED.set(writer.error_counter());
        (Some(tracing_subscriber::fmt::layer().event_format(JsonLines).with_writer(writer)), Some(guard))
    } else {
        (None, None)
    };

    let provider = traces.and_then(|export| match tracer_provider(export) {
        Ok(provider) => Some(provider),
        Err(error) => {
            eprintln!("tokenrelay: trace export disabled: {error}");
            None
        }
    });
    let otel_layer = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("tokenrelay")));
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        TRACING.store(true, Ordering::Relaxed);
    }
    // A second initialisation (unit tests) is harmless; ignore it.
    let _ = tracing_subscriber::registry().with(filter).with(otel_layer).with(text_layer).with(json_layer).try_init();
    TelemetryGuard { provider, log_writer }
}

/// A writer that hands lines to a thread writing to `out`, dropping (and counting in its
/// error counter) any line that finds `backlog` lines already queued.
fn lossy_writer(out: impl std::io::Write + Send + 'static, backlog: usize) -> (NonBlocking, WorkerGuard) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(backlog)
        .lossy(true)
        .thread_name("tokenrelay-log")
        .finish(out)
}

/// The name of the dropped-lines counter on `/metrics`.
pub const LOG_LINES_DROPPED_METRIC: &str = "tokenrelay_log_lines_dropped_total";

/// The JSON writer's count of dropped lines, once [`init`] has made one. The writer keeps the
/// count itself (an atomic it increments only when a line is dropped), so the request path pays
/// nothing for it; `/metrics` reads it at scrape time.
static LOG_LINES_DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped so far because the writer thread fell behind; 0 with text logs, which
/// are written synchronously and never dropped.
pub fn log_lines_dropped() -> u64 {
    LOG_LINES_DROPPED.get().map_or(0, |counter| counter.dropped_lines() as u64)
}

/// Appends `tokenrelay_log_lines_dropped_total` in the Prometheus text format. Always present,
/// at 0 until a line is dropped, so that an alert on its increase sees the first one.
pub fn render_log_lines_dropped(out: &mut String) {
    write_log_lines_dropped(out, log_lines_dropped());
}

fn write_log_lines_dropped(out: &mut String, dropped: u64) {
    let _ = writeln!(
        out,
        "# HELP {LOG_LINES_DROPPED_METRIC} Log lines dropped because the log writer fell \
         {LOG_BACKLOG_LINES} lines behind."
    );
    let _ = writeln!(out, "# TYPE {LOG_LINES_DROPPED_METRIC} counter");
    let _ = writeln!(out, "{LOG_LINES_DROPPED_METRIC} {dropped}");
}

/// An OTLP/HTTP (protobuf) exporter behind the SDK's batch processor, which exports from its
/// own thread (hence the blocking HTTP client). `OTEL_*` variables (headers, timeouts, batch
/// sizes, resource attributes) are read by the SDK itself.
fn tracer_provider(export: &TraceExport) -> Result<SdkTracerProvider, String> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary);
    if let Some(endpoint) = &export.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let exporter = builder.build().map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(export.service_name.clone()).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// Makes `span` a child of the caller's W3C `traceparent` in `headers`, when traces are
/// exported.
pub fn adopt_remote_parent(span: &tracing::Span, headers: &dyn opentelemetry::propagation::Extractor) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !tracing_enabled() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(headers));
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::mpsc;

    use super::*;

    /// A sink whose writes wait until the test lets them through, so the queue fills.
    struct Stalled(mpsc::Receiver<()>);

    impl Write for Stalled {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_beyond_the_backlog_are_dropped_counted_and_rendered() {
        let (release, stalled) = mpsc::channel();
        let (mut writer, guard) = lossy_writer(Stalled(stalled), 2);
        let counter = writer.error_counter();
        // The worker takes the first line and stalls writing it; two more fill the queue; each
        // line after that is dropped, and the caller never waits.
        for line in 0..10 {
            writer.write_all(format!("line {line}\n").as_bytes()).unwrap();
        }
        let dropped = counter.dropped_lines() as u64;
        assert!((7..=8).contains(&dropped), "{dropped} dropped");
        let mut text = String::new();
        write_log_lines_dropped(&mut text, dropped);
        assert!(text.contains("# TYPE tokenrelay_log_lines_dropped_total counter\n"), "{text}");
        assert!(text.ends_with(&format!("\ntokenrelay_log_lines_dropped_total {dropped}\n")), "{text}");
        drop(release);
        drop(guard);
    }
}
