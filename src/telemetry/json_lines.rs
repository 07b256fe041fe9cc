//! The JSON log line: one flat object per event, written straight into the line buffer.
//!
//! tracing-subscriber's own JSON format goes through serde_json and an adaptor that checks
//! every chunk for UTF-8 again, which made the one line a cache hit logs a large part of the
//! whole request (docs/benchmarks.md measures a cache hit with and without the log line).
//! This formatter writes the same members (`timestamp`, `level`, `message`, the event's
//! fields, `target`, and `span` when one is current) with a fraction of that work.

use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::clock::write_rfc3339;

/// Formats each event as one JSON object on one line.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let metadata = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        write_rfc3339_micros(&mut writer, SystemTime::now())?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(metadata.level().as_str())?;
        writer.write_str("\"")?;
        let mut fields = Fields { out: &mut writer, result: Ok(()) };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        write_escaped(&mut writer, metadata.target())?;
        if let Some(span) = ctx.lookup_current() {
            writer.write_str(",\"span\":")?;
            write_escaped(&mut writer, span.name())?;
        }
        writer.write_str("}\n")
    }
}

/// Appends `,"name":value` for each field: numbers and booleans bare, everything else as a
/// JSON string.
struct Fields<'a, W> {
    out: &'a mut W,
    result: fmt::Result,
}

impl<W: Write> Fields<'_, W> {
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            self.out.write_str(",")?;
            write_escaped(self.out, field.name())?;
            self.out.write_str(":")?;
            value(self.out)
        })();
    }
}

impl<W: Write> Visit for Fields<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| write_escaped(out, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| out.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| out.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| out.write_str(if value { "true" } else { "false" }));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.member(field, |out| {
            out.write_str("\"")?;
            write!(Escaping(out), "{value}")?;
            out.write_str("\"")
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |out| {
            out.write_str("\"")?;
            write!(Escaping(out), "{value:?}")?;
            out.write_str("\"")
        });
    }
}

/// Writes `value` as a JSON string, quotes included. (`write_str` rather than `write_char`
/// throughout: the writer is behind a `dyn`, and a `char` is UTF-8-encoded on every call.)
fn write_escaped(out: &mut impl Write, value: &str) -> fmt::Result {
    out.write_str("\"")?;
    Escaping(out).write_str(value)?;
    out.write_str("\"")
}

/// Which bytes JSON strings must escape (RFC 8259 section 7), plus DEL, which terminals
/// misread: one table lookup per byte.
const MUST_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table[0x7f] = true;
    table
};

/// Escapes what passes through it for the inside of a JSON string (RFC 8259 section 7):
/// quotation mark, reverse solidus and control characters. Runs of plain text are passed on
/// whole.
struct Escaping<'a, W>(&'a mut W);

impl<W: Write> Write for Escaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // Nearly every value (paths, resources, names, fingerprints) has nothing to escape: one
        // quick pass finds that, and the text goes on whole.
        if !text.bytes().any(|b| MUST_ESCAPE[usize::from(b)]) {
            return self.0.write_str(text);
        }
        let mut plain_from = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f | 0x7f => "",
                _ => continue,
            };
            self.0.write_str(&text[plain_from..at])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain_from = at + 1;
        }
        self.0.write_str(&text[plain_from..])
    }
}

/// Writes `time` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), the timestamp format of
/// tracing-subscriber's JSON, which log pipelines already parse.
fn write_rfc3339_micros(out: &mut impl Write, time: SystemTime) -> fmt::Result {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    write_rfc3339(out, since_epoch.as_secs(), Some(since_epoch.subsec_micros()))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use proptest::prelude::*;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// The lines a closure's events produce through this formatter.
    fn lines_of(emit: impl FnOnce()) -> Vec<serde_json::Value> {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let layer = tracing_subscriber::fmt::layer()
            .event_format(JsonLines)
            .with_writer(move || SharedWriter(Arc::clone(&sink)));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect()
    }

    struct SharedWriter(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for SharedWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_flat_object_per_event_with_typed_fields() {
        let error = std::io::Error::other("disk \"full\"");
        let lines = lines_of(|| {
            tracing::info!(status = 200u16, latency_us = 48u64, delta = -3i64, ok = true, path = "/a", %error, "token request");
            let span = tracing::info_span!("background_refresh");
            let _entered = span.enter();
            tracing::warn!(resource = ?"r", "in a span");
        });
        assert_eq!(lines.len(), 2);
        let first = &lines[0];
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["message"], "token request");
        assert_eq!(first["status"], 200);
        assert_eq!(first["latency_us"], 48);
        assert_eq!(first["delta"], -3);
        assert_eq!(first["ok"], true);
        assert_eq!(first["path"], "/a");
        assert_eq!(first["error"], "disk \"full\"");
        assert_eq!(first["target"], module_path!());
        assert!(first.get("span").is_none());
        assert_eq!(lines[1]["span"], "background_refresh");
        assert_eq!(lines[1]["resource"], "\"r\"");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut text = String::new();
        write_rfc3339_micros(&mut text, UNIX_EPOCH + Duration::new(1_795_968_258, 904_784_000)).unwrap();
        assert_eq!(text, "2026-11-29T16:04:18.904784Z");
        text.clear();
        write_rfc3339_micros(&mut text, UNIX_EPOCH + Duration::from_secs(951_782_400)).unwrap();
        assert_eq!(text, "2000-02-29T00:00:00.000000Z");
        text.clear();
        write_rfc3339_micros(&mut text, UNIX_EPOCH).unwrap();
        assert_eq!(text, "1970-01-01T00:00:00.000000Z");
    }

    proptest! {
        #[test]
        fn any_text_survives_escaping(value in any::<String>()) {
            let mut text = String::new();
            write_escaped(&mut text, &value).unwrap();
            prop_assert_eq!(serde_json::from_str::<String>(&text).unwrap(), value);
        }
    }
}
