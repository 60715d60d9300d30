//! Problems found in user input, as data: a code, a severity, a message, the
//! span it is about and an optional hint. Every stage produces these; they are
//! rendered in exactly one place ([`render_human`] / [`render_json`]).

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};
use serde::Serialize;

use crate::source::{SourceFile, Span};

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
    /// The text at `span` is a secret: the snippet shows `*` in its place,
    /// so the diagnostic does not copy it into a CI log.
    pub secret: bool,
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
            secret: false,
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

    /// Marks the text at the span as a secret, masked in the snippet.
    #[must_use]
    pub fn masking_secret(mut self) -> Self {
        self.secret = true;
        self
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

/// How many diagnostics [`render_human`] shows; the rest are counted. Past a
/// few dozen a person fixes and re-runs, and a generated document with
/// thousands of errors must not print gigabytes (the JSON form keeps all).
pub const MAX_SHOWN: usize = 50;

/// How many characters of a source line a snippet shows around its span.
const SNIPPET_WIDTH: usize = 120;

/// Renders diagnostics for people: `FILE:LINE:COL: error: message [code]`,
/// the source line with carets under the span, notes, then `help:`; the
/// first [`MAX_SHOWN`], then a line counting the others.
/// The text carries ANSI styles; print it through `anstream`, which strips
/// them when the stream is not a terminal or `NO_COLOR` is set.
#[must_use]
pub fn render_human(file: &SourceFile, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diagnostics.iter().take(MAX_SHOWN) {
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
            snippet(&mut out, file, span, d.secret);
        }
        for note in &d.notes {
            let lc = file.line_col(note.span.start);
            let _ = writeln!(
                out,
                "{BOLD}{}:{}:{}:{BOLD:#} {NOTE}note:{NOTE:#} {}",
                file.name, lc.line, lc.column, note.message
            );
            snippet(&mut out, file, note.span, false);
        }
        if let Some(hint) = &d.hint {
            let _ = writeln!(out, "  {NOTE}help:{NOTE:#} {hint}");
        }
        out.push('\n');
    }
    if let Some(hidden) = diagnostics.get(MAX_SHOWN..).filter(|h| !h.is_empty()) {
        let errors = hidden.iter().filter(|d| d.is_error()).count();
        let warnings = hidden.len() - errors;
        let _ = writeln!(
            out,
            "{BOLD}… and {} more ({errors} error{}, {warnings} warning{}) not shown; `crabbox validate --format json` lists every one{BOLD:#}\n",
            hidden.len(),
            if errors == 1 { "" } else { "s" },
            if warnings == 1 { "" } else { "s" },
        );
    }
    out
}

/// The line of `span` with carets under it (clipped to that line). A long
/// line is cut to [`SNIPPET_WIDTH`] characters around the span, marked `…`.
fn snippet(out: &mut String, file: &SourceFile, span: Span, mask: bool) {
    let start = file.line_col(span.start);
    let end = file.line_col(span.end.max(span.start));
    let line = file.line_text(start.line);
    let full: String = if mask {
        let last = if end.line == start.line {
            end.column
        } else {
            usize::MAX
        };
        line.chars()
            .enumerate()
            .map(|(i, c)| {
                if (start.column - 1..last - 1).contains(&i) {
                    '*'
                } else {
                    c
                }
            })
            .collect()
    } else {
        line.to_owned()
    };
    let line_chars = full.chars().count();
    let width = if end.line == start.line {
        end.column.saturating_sub(start.column).max(1)
    } else {
        line_chars.saturating_sub(start.column - 1).max(1)
    };
    // The window of the line shown: all of it, or SNIPPET_WIDTH characters
    // starting a little before the span.
    let (skip, take) = if line_chars <= SNIPPET_WIDTH {
        (0, line_chars)
    } else {
        let skip = (start.column - 1).saturating_sub(SNIPPET_WIDTH / 4);
        (skip, SNIPPET_WIDTH)
    };
    let before = if skip > 0 { "…" } else { "" };
    let after = if skip + take < line_chars { "…" } else { "" };
    let text: String = full.chars().skip(skip).take(take).collect();
    let width = width
        .min(take.saturating_sub(start.column - 1 - skip))
        .max(1);
    let gutter = start.line.to_string().len();
    let pad = " ".repeat(gutter);
    let indent: String = before
        .chars()
        .map(|_| ' ')
        .chain(
            full.chars()
                .skip(skip)
                .take(start.column - 1 - skip)
                .map(|c| if c == '\t' { '\t' } else { ' ' }),
        )
        .collect();
    let _ = writeln!(out, "{pad} {GUTTER}|{GUTTER:#}");
    let _ = writeln!(
        out,
        "{GUTTER}{}{GUTTER:#} {GUTTER}|{GUTTER:#} {before}{text}{after}",
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

    #[test]
    fn long_lines_are_cut_around_the_span_and_the_rest_is_counted() {
        let line = format!("x: [{}]", vec!["70000"; 100].join(", "));
        let file = SourceFile::new("p.yaml", format!("{line}\n"));
        let at = line.rfind("70000").expect("last port");
        let diagnostics: Vec<Diagnostic> = (0..MAX_SHOWN + 2)
            .map(|_| Diagnostic::error("port-range", Span::new(at, 5), "bad"))
            .collect();
        let text = anstream::adapter::strip_str(&render_human(&file, &diagnostics)).to_string();
        let mut lines = text.lines().skip(2);
        let shown = lines.next().expect("source line");
        let carets = lines.next().expect("caret line");
        assert!(
            shown.starts_with("1 | …") && shown.ends_with("70000]"),
            "{shown}"
        );
        assert!(shown.chars().count() <= SNIPPET_WIDTH + 8, "{shown}");
        let caret_at = carets.find('^').expect("carets");
        let under: String = shown.chars().skip(caret_at).take(5).collect();
        assert_eq!(under, "70000", "{shown}\n{carets}");
        assert_eq!(text.matches("error: bad").count(), MAX_SHOWN);
        assert!(
            text.contains("… and 2 more (2 errors, 0 warnings) not shown"),
            "{text}"
        );
    }
}
