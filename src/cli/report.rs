//! Where a command's errors go. People read them on stderr, always, as
//! `error: …` and `  help: …` lines. With `--json` (`--format json`) the
//! command's stdout is for machines, so a failing command also leaves a
//! JSON document there: the diagnostics document (`{"format_version",
//! "error_count", "warning_count", "diagnostics": […]}`, the shape of
//! `validate --format json`, `schema/diagnostics.schema.json`), or, for
//! `apply`/`destroy`, whose stdout is NDJSON events, a last `diagnostics`
//! event carrying the same fields. Exit codes are the commands' own.
//!
//! Error sites call [`error`] (or [`spec`] for a spec's diagnostics, or
//! [`exit::provider_error`](super::exit::provider_error), which comes here);
//! `cli::run` calls [`finish`] with the exit code. A command that printed
//! its own JSON document before failing (a partial `list`, `claims` with
//! malformed files, `status --wait` ending in a terminal state) calls
//! [`printed_document`] first, so stdout still holds exactly one document.
//! An error path that reported nothing still gets a diagnostic
//! (`command-failed`), so `--json` never ends with an empty stdout.

use std::process::ExitCode;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::Command;
use super::validate::Format;
use crabbox_spec::diagnostic::{self, Diagnostic};
use crabbox_spec::source::SourceFile;

/// What the running command's stdout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Text: errors go to stderr only.
    Text,
    /// One JSON document.
    Document,
    /// NDJSON events (`apply --json`, `destroy --json`).
    Events,
}

struct State {
    output: Output,
    diagnostics: Vec<Value>,
    printed_document: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    output: Output::Text,
    diagnostics: Vec::new(),
    printed_document: false,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What `command` prints on stdout: a document or events with `--json`.
pub(super) fn output_of(command: &Command) -> Output {
    use super::config::ConfigCommand;
    use super::pond::PondCommand;
    let document = |json: bool| if json { Output::Document } else { Output::Text };
    match command {
        Command::Validate(a) => document(a.format == Format::Json),
        Command::Plan(a) => document(a.format == super::PlanFormat::Json),
        Command::Apply(a) => events(a.run.json),
        Command::Destroy(a) => events(a.run.json),
        Command::Peers(a) => document(a.json),
        Command::List(a) => document(a.json),
        Command::Status(a) => document(a.json),
        Command::Inspect(a) => document(a.json),
        Command::Heartbeat(a) => document(a.json),
        Command::Claims(a) => document(a.json),
        Command::Whoami(a) => document(a.json),
        Command::Show(a) => document(a.json),
        Command::Doctor(a) => document(a.json),
        Command::Config(ConfigCommand::Show(a)) => document(a.json),
        Command::Pond(PondCommand::Peers(a)) => document(a.json),
        Command::Pond(PondCommand::Connect(a)) => document(a.json),
        _ => Output::Text,
    }
}

fn events(json: bool) -> Output {
    if json { Output::Events } else { Output::Text }
}

/// Sets what stdout is, before the command runs.
pub(super) fn set_output(output: Output) {
    let mut s = state();
    s.output = output;
    s.diagnostics.clear();
    s.printed_document = false;
}

/// A diagnostic that no place in a file caused: `file`, `line`, `column`
/// and their ends are null; the keys are those of a spec diagnostic.
#[must_use]
pub fn diagnostic(severity: &str, code: &str, message: &str, hint: Option<&str>) -> Value {
    json!({
        "file": null, "line": null, "column": null, "end_line": null, "end_column": null,
        "code": code, "severity": severity, "message": message, "hint": hint, "related": [],
    })
}

/// Records a diagnostic for the JSON output without printing anything
/// (for errors the command already showed its own way, such as a failed
/// step's events).
pub(super) fn record(code: &str, message: &str, hint: Option<&str>) {
    state()
        .diagnostics
        .push(diagnostic("error", code, message, hint));
}

/// An error: `error: MESSAGE` and `  help: HINT` on stderr, and a
/// diagnostic with `code` for the JSON output.
pub(super) fn error(code: &str, message: &str, hint: Option<&str>) {
    match hint {
        Some(hint) => anstream::eprintln!("error: {message}\n  help: {hint}"),
        None => anstream::eprintln!("error: {message}"),
    }
    record(code, message, hint);
}

/// A spec's diagnostics: rendered on stderr, and kept with their places
/// for the JSON output.
pub(super) fn spec(file: &SourceFile, diagnostics: &[Diagnostic]) {
    if diagnostics.is_empty() {
        return;
    }
    anstream::eprint!("{}", diagnostic::render_human(file, diagnostics));
    let found = diagnostic::to_json(file, diagnostics)
        .into_iter()
        .map(|d| serde_json::to_value(d).expect("a diagnostic serializes"));
    state().diagnostics.extend(found);
}

/// The command printed its own JSON document on stdout.
pub(super) fn printed_document() {
    state().printed_document = true;
}

/// The diagnostics document's fields: `format_version`, the counts and
/// `diagnostics` (`validate --format json` adds `valid`).
#[must_use]
pub fn document_fields(diagnostics: Vec<Value>) -> serde_json::Map<String, Value> {
    let errors = diagnostics
        .iter()
        .filter(|d| d["severity"] == "error")
        .count();
    let mut fields = serde_json::Map::new();
    fields.insert("format_version".into(), "1.0".into());
    fields.insert("error_count".into(), errors.into());
    fields.insert("warning_count".into(), (diagnostics.len() - errors).into());
    fields.insert("diagnostics".into(), diagnostics.into());
    fields
}

/// After the command: with `--json` and a failure, the diagnostics on
/// stdout (unless the command printed its own document). Returns `code`.
pub(super) fn finish(command: &str, code: ExitCode) -> ExitCode {
    if code == ExitCode::SUCCESS {
        return code;
    }
    let (output, mut diagnostics, printed) = {
        let mut s = state();
        (
            s.output,
            std::mem::take(&mut s.diagnostics),
            s.printed_document,
        )
    };
    if !diagnostics.iter().any(|d| d["severity"] == "error") {
        diagnostics.push(diagnostic(
            "error",
            "command-failed",
            &format!("crabbox {command} failed"),
            Some("stderr says why"),
        ));
    }
    match output {
        Output::Text => {}
        Output::Document if printed => {}
        Output::Document => println!(
            "{}",
            serde_json::to_string_pretty(&Value::Object(document_fields(diagnostics)))
                .expect("JSON")
        ),
        Output::Events => crabbox_apply::progress::print_event(
            "diagnostics",
            Value::Object(document_fields(diagnostics)),
        ),
    }
    code
}

/// The verb of a command line, for `command-failed`: its first word, with
/// the subcommand of a group (`pond peers`).
pub(super) fn verb(args: &[std::ffi::OsString]) -> String {
    let mut words = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .filter(|a| !a.starts_with('-'));
    let first = words.next().unwrap_or_default().into_owned();
    match (first.as_str(), words.next()) {
        ("pond" | "config" | "state", Some(sub)) => format!("{first} {sub}"),
        _ => first,
    }
}

/// A command-line (clap) error when the arguments ask for JSON: the
/// diagnostics document, code `usage` (NDJSON's `diagnostics` event for
/// `apply`/`destroy`). Arguments after `--` belong to a remote command.
pub(super) fn usage_error(args: &[std::ffi::OsString], error: &clap::Error) {
    let words: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .take_while(|a| a != "--")
        .collect();
    let json = words.iter().enumerate().any(|(i, w)| {
        w == "--json"
            || w == "--format=json"
            || (w == "--format" && words.get(i + 1).is_some_and(|v| v == "json"))
    });
    if !json {
        return;
    }
    let text = anstream::adapter::strip_str(&error.render().to_string()).to_string();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let message = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_owned();
    let hint = lines
        .find_map(|l| l.trim().strip_prefix("tip: "))
        .map(str::to_owned)
        .unwrap_or_else(|| "see `crabbox --help`".to_owned());
    let fields = document_fields(vec![diagnostic("error", "usage", &message, Some(&hint))]);
    let first = words.iter().find(|w| !w.starts_with('-'));
    if matches!(first.map(String::as_str), Some("apply" | "destroy")) {
        crabbox_apply::progress::print_event("diagnostics", Value::Object(fields));
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Object(fields)).expect("JSON")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_counts_errors_and_warnings() {
        let fields = document_fields(vec![
            diagnostic("error", "not-found", "lease/server not found: web", None),
            diagnostic("warning", "x", "y", Some("z")),
        ]);
        assert_eq!(fields["error_count"], 1);
        assert_eq!(fields["warning_count"], 1);
        assert_eq!(fields["diagnostics"][0]["line"], Value::Null);
        assert_eq!(fields["diagnostics"][1]["hint"], "z");
    }

    #[test]
    fn the_verb_is_the_first_one_or_two_words() {
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(verb(&args(&["crabbox", "apply", "--json"])), "apply");
        assert_eq!(
            verb(&args(&["crabbox", "pond", "peers", "--pond", "x"])),
            "pond peers"
        );
        assert_eq!(verb(&args(&["crabbox", "status", "web"])), "status");
    }
}
