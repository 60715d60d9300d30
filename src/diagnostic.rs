//! Problems found in user input, as data: a code, a severity, a message, the
//! span it is about and an optional hint. Every stage produces these; they are
//! rendered in exactly one place ([`render_human`] / [`render_json`]).

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};
use serde::Serialize;

use crate::spec::source::{SourceFile, Span};

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Blocks the command.
    Error,
    /// Reported, but the document is still usable.
    Warning,
}

/// A secondary place that helps explain a diagnostic ("first defined here").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Where.
    pub span: Span,
    /// What about it.
    pub message: String,
}

/// One problem with a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Stable, kebab-case identifier of the check (`port-range`, `unknown-key`, …).
    pub code: &'static str,
    /// Error or warning.
    pub severity: Severity,
    /// One sentence saying what is wrong.
    pub message: String,
    /// Where; `None` only for problems with the file as a whole.
    pub span: Option<Span>,
    /// Other places worth showing.
    pub notes: Vec<Note>,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// An error at `span`.
    #[must_use]
    pub fn error(code: &'static str, span: Span, message: impl Into<String>) -> Self {
        Self {
            code,
            severity: Severity::Error,
            message: message.into(),
            span: Some(span),
            notes: Vec::new(),
            hint: None,
        }
    }

    /// A warning at `span`.
    #[must_use]
    pub fn warning(code: &'static str, span: Span, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, span, message)
        }
    }

    /// Adds a hint line.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a secondary location.
    #[must_use]
    pub fn with_note(mut self, span: Span, message: impl Into<String>) -> Self {
        self.notes.push(Note {
            span,
            message: message.into(),
        });
        self
    }

    /// Whether this diagnostic blocks the command.
    #[must_use]
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

const BOLD: Style = Style::new().bold();
const ERROR: Style = AnsiColor::Red.on_default().bold();
const WARNING: Style = AnsiColor::Yellow.on_default().bold();
const NOTE: Style = AnsiColor::Cyan.on_default().bold();
const GUTTER: Style = AnsiColor::Blue.on_default().bold();

/// Renders diagnostics for people: `FILE:LINE:COL: error: message [code]`,
/// the source line with carets under the span, notes, then `help:`.
/// The text carries ANSI styles; print it through `anstream`, which strips
/// them when the stream is not a terminal or `NO_COLOR` is set.
#[must_use]
pub fn render_human(file: &SourceFile, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diagnostics {
        let (label, style) = match d.severity {
            Severity::Error => ("error", ERROR),
            Severity::Warning => ("warning", WARNING),
        };
        let place = d.span.map_or_else(
            || file.name.clone(),
            |s| {
                let lc = file.line_col(s.start);
                format!("{}:{}:{}", file.name, lc.line, lc.column)
            },
        );
        let _ = writeln!(
            out,
            "{BOLD}{place}:{BOLD:#} {style}{label}:{style:#} {BOLD}{}{BOLD:#} [{}]",
            d.message, d.code
        );
        if let Some(span) = d.span {
            snippet(&mut out, file, span);
        }
        for note in &d.notes {
            let lc = file.line_col(note.span.start);
            let _ = writeln!(
                out,
                "{BOLD}{}:{}:{}:{BOLD:#} {NOTE}note:{NOTE:#} {}",
                file.name, lc.line, lc.column, note.message
            );
            snippet(&mut out, file, note.span);
        }
        if let Some(hint) = &d.hint {
            let _ = writeln!(out, "  {NOTE}help:{NOTE:#} {hint}");
        }
        out.push('\n');
    }
    out
}

/// The line of `span` with carets under it (clipped to that line).
fn snippet(out: &mut String, file: &SourceFile, span: Span) {
    let start = file.line_col(span.start);
    let text = file.line_text(start.line);
    let end = file.line_col(span.end.max(span.start));
    let width = if end.line == start.line {
        end.column.saturating_sub(start.column).max(1)
    } else {
        text.chars().count().saturating_sub(start.column - 1).max(1)
    };
    let gutter = start.line.to_string().len();
    let pad = " ".repeat(gutter);
    let indent: String = text
        .chars()
        .take(start.column - 1)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let _ = writeln!(out, "{pad} {GUTTER}|{GUTTER:#}");
    let _ = writeln!(
        out,
        "{GUTTER}{}{GUTTER:#} {GUTTER}|{GUTTER:#} {text}",
        start.line
    );
    let _ = writeln!(
        out,
        "{pad} {GUTTER}|{GUTTER:#} {indent}{ERROR}{}{ERROR:#}",
        "^".repeat(width)
    );
}

/// One diagnostic in machine form, for CI annotations.
#[derive(Debug, Serialize)]
pub struct JsonDiagnostic<'a> {
    /// File name as given.
    pub file: &'a str,
    /// 1-based line (0 when the problem has no position).
    pub line: usize,
    /// 1-based character column (0 when the problem has no position).
    pub column: usize,
    /// Line where the span ends.
    pub end_line: usize,
    /// Column where the span ends (exclusive).
    pub end_column: usize,
    /// Stable check identifier.
    pub code: &'a str,
    /// `error` or `warning`.
    pub severity: Severity,
    /// What is wrong.
    pub message: &'a str,
    /// What to do, when known.
    pub hint: Option<&'a str>,
    /// Secondary places.
    pub related: Vec<JsonNote<'a>>,
}

/// A secondary place in machine form.
#[derive(Debug, Serialize)]
pub struct JsonNote<'a> {
    /// 1-based line.
    pub line: usize,
    /// 1-based character column.
    pub column: usize,
    /// What about it.
    pub message: &'a str,
}

/// Converts diagnostics to their JSON form.
#[must_use]
pub fn to_json<'a>(file: &'a SourceFile, diagnostics: &'a [Diagnostic]) -> Vec<JsonDiagnostic<'a>> {
    diagnostics
        .iter()
        .map(|d| {
            let (start, end) = d.span.map_or(((0, 0), (0, 0)), |s| {
                let a = file.line_col(s.start);
                let b = file.line_col(s.end.max(s.start));
                ((a.line, a.column), (b.line, b.column))
            });
            JsonDiagnostic {
                file: &file.name,
                line: start.0,
                column: start.1,
                end_line: end.0,
                end_column: end.1,
                code: d.code,
                severity: d.severity,
                message: &d.message,
                hint: d.hint.as_deref(),
                related: d
                    .notes
                    .iter()
                    .map(|n| {
                        let lc = file.line_col(n.span.start);
                        JsonNote {
                            line: lc.line,
                            column: lc.column,
                            message: &n.message,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_rendering_points_at_the_value() {
        let file = SourceFile::new("pond.yaml", "a: 1\nexpose: [8080, 70000]\n");
        let d = Diagnostic::error(
            "port-range",
            Span::new(20, 5),
            "port 70000 is outside 1..65535",
        )
        .with_hint("use a port between 1 and 65535");
        let text = anstream::adapter::strip_str(&render_human(&file, &[d])).to_string();
        assert_eq!(
            text,
            "pond.yaml:2:16: error: port 70000 is outside 1..65535 [port-range]\n  |\n2 | expose: [8080, 70000]\n  |                ^^^^^\n  help: use a port between 1 and 65535\n\n"
        );
    }
}
