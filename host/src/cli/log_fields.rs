//! How the text log writes the fields of events and spans: as tracing-subscriber's default
//! does (`message` bare, then `name=value`), but with every control character escaped, so
//! one event is always one line of the log.
//!
//! Many values come from outside: tokens and the targets they name, peers' addresses and
//! reasons, plugins' messages. A newline in a token must not start a forged line in the
//! operator's log, and an escape sequence must not reach the terminal. The JSON format
//! escapes by itself.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// The text log's field formatter ([`FormatFields`]).
#[derive(Debug, Default)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = FieldWriter {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Writes `text` with control characters escaped: `\n`, `\r`, `\t`, and `\u{..}` for the
/// other C0 and C1 controls, DEL, the Unicode line and paragraph separators and the
/// bidirectional controls (which could make a line read as something else). Everything else,
/// backslashes included, is written as it is: the escaping keeps lines whole, it is not an
/// encoding to undo (the JSON format is, for machines).
pub fn write_escaped(out: &mut impl Write, text: &str) -> fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(needs_escape) {
        out.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().unwrap_or_default();
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c => write!(out, "\\u{{{:x}}}", u32::from(c))?,
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_str(rest)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{061c}' | '\u{200e}' | '\u{200f}' // bidirectional marks
            | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' // embeddings, isolates
        )
}

/// A [`fmt::Write`] that escapes what it is given, as [`write_escaped`] does.
struct Escaping<'a, W>(&'a mut W);

impl<W: Write> Write for Escaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        write_escaped(self.0, text)
    }
}

/// Field names in italics and `=` dimmed when the log is in colour, as the default.
const ITALIC: &str = "\x1b[3m";
const DIMMED: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

struct FieldWriter<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl FieldWriter<'_> {
    fn write(&mut self, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
        let name = field.name();
        // Metadata of records from the `log` crate, already shown as the event's target.
        if name.starts_with("log.") {
            return Ok(());
        }
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        if name != "message" {
            self.write_name(name.strip_prefix("r#").unwrap_or(name))?;
        }
        write!(Escaping(&mut self.writer), "{value:?}")
    }

    /// `name=`; names are the program's own, never a peer's.
    fn write_name(&mut self, name: &str) -> fmt::Result {
        if self.writer.has_ansi_escapes() {
            write!(self.writer, "{ITALIC}{name}{RESET}{DIMMED}={RESET}")
        } else {
            write!(self.writer, "{name}=")
        }
    }
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    /// An error and its sources, as `error: source: source`.
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut chain = value.to_string();
        let mut source = value.source();
        while let Some(error) = source {
            chain.push_str(": ");
            chain.push_str(&error.to_string());
            source = error.source();
        }
        self.record_debug(field, &format_args!("{chain}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self.write(field, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: &str) -> String {
        let mut out = String::new();
        write_escaped(&mut out, text).unwrap();
        out
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escaped(""), "");
        assert_eq!(
            escaped("plain text: ü, 日本, \\n"),
            "plain text: ü, 日本, \\n"
        );
        assert_eq!(escaped("a\nb\r\nc\td"), "a\\nb\\r\\nc\\td");
        assert_eq!(escaped("\x1b[31mred"), "\\u{1b}[31mred");
        assert_eq!(
            escaped("\0\x07\x08\x0b\x0c\x7f"),
            "\\u{0}\\u{7}\\u{8}\\u{b}\\u{c}\\u{7f}"
        );
        assert_eq!(escaped("\u{85}\u{9b}"), "\\u{85}\\u{9b}");
        assert_eq!(escaped("a\u{2028}b\u{2029}c"), "a\\u{2028}b\\u{2029}c");
        assert_eq!(escaped("\u{202e}gnp.exe"), "\\u{202e}gnp.exe");
        assert_eq!(
            escaped("\u{2066}x\u{2069}\u{200f}"),
            "\\u{2066}x\\u{2069}\\u{200f}"
        );
    }

    #[test]
    fn a_forged_line_stays_on_its_line() {
        let token = "unix:/tmp/x\n2026-12-06T00:00:00Z  INFO forged line\r\n";
        let out = escaped(token);
        assert!(!out.contains(['\n', '\r']), "{out}");
        assert_eq!(
            out,
            "unix:/tmp/x\\n2026-12-06T00:00:00Z  INFO forged line\\r\\n"
        );
    }

    /// Formats one event through [`EscapedFields`] into a string, as the text log would.
    fn log_line(ansi: bool, emit: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::fmt::MakeWriter;

        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> MakeWriter<'a> for Buffer {
            type Writer = Buffer;
            fn make_writer(&'a self) -> Buffer {
                self.clone()
            }
        }

        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(ansi)
            .without_time()
            .with_target(false)
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn messages_fields_and_span_fields_are_escaped() {
        let hostile = "x\nFORGED \x1b[2J";
        let line = log_line(false, || {
            let span = tracing::info_span!("tunnel", server_app = tracing::field::Empty);
            span.record("server_app", tracing::field::display(hostile));
            let _entered = span.enter();
            tracing::warn!(reason = %hostile, quoted = hostile, "refused: {hostile}");
        });
        assert_eq!(line.lines().count(), 1, "{line:?}");
        assert!(!line.contains('\x1b'), "{line:?}");
        let expected = "WARN tunnel{server_app=x\\nFORGED \\u{1b}[2J}: \
                        refused: x\\nFORGED \\u{1b}[2J \
                        reason=x\\nFORGED \\u{1b}[2J quoted=\"x\\nFORGED \\u{1b}[2J\"\n";
        assert!(line.ends_with(expected), "{line:?}");
    }

    #[test]
    fn errors_show_their_sources_on_the_same_line() {
        let inner = std::io::Error::other("inner\nline");
        let outer = Wrapped(inner);
        let line = log_line(false, || {
            tracing::warn!(
                error = &outer as &(dyn std::error::Error + 'static),
                "failed"
            );
        });
        assert_eq!(line.lines().count(), 1, "{line:?}");
        assert!(
            line.ends_with("failed error=outer: inner\\nline\n"),
            "{line:?}"
        );
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn colour_stays_on_names_and_levels_only() {
        let line = log_line(true, || tracing::info!(peer = %"a\x1bb", "hello"));
        assert!(
            line.contains("\x1b[3mpeer\x1b[0m\x1b[2m=\x1b[0ma\\u{1b}b"),
            "{line:?}"
        );
        assert!(
            line.contains("\x1b[32m"),
            "the level is green as before: {line:?}"
        );
    }
}
