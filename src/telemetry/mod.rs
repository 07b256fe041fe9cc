//! Logs, metrics and traces.
//!
//! Logs: human-readable on a terminal, JSON lines otherwise ([`json_lines`]); `RUST_LOG`
//! overrides the level.
//! Metrics: a Prometheus recorder rendered at `GET /metrics` ([`metrics`]).
//! Traces: OpenTelemetry over OTLP/HTTP, only when an endpoint is configured; otherwise no
//! span is even created ([`span`]), so an unconfigured tracer costs nothing.

mod json_lines;
pub mod metrics;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
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
    let (json_layer, log_writer) = if json {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .buffered_lines_limit(LOG_BACKLOG_LINES)
            .lossy(true)
            .thread_name("tokenrelay-log")
            .finish(std::io::BufWriter::new(std::io::stderr()));
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

/// Makes `span` a child of the caller's W3C `traceparent`, when traces are exported.
pub fn adopt_remote_parent(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !tracing_enabled() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    let _ = span.set_parent(parent);
}
