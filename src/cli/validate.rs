//! `crabbox validate`: load a spec and report every problem.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::SpecArgs;
use crabbox_spec::diagnostic;
use crabbox_spec::load::{STDIN_NAME, STDIN_PATH, load_path};

#[derive(Debug, Args)]
pub(super) struct ValidateArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Output format; `json` prints diagnostics (file, line, column, code,
    /// severity, message, hint) for CI annotations.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub(super) format: Format,
}

/// How diagnostics are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Format {
    /// For people, on stderr.
    Human,
    /// For machines (stable, versioned), on stdout.
    Json,
    /// GitHub Actions workflow commands (`::error file=…,line=…,col=…::`), on stdout,
    /// which GitHub shows as annotations on the pull request's diff.
    Github,
}

/// Escapes a workflow command's message (GitHub's rules).
fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a workflow command's property value.
fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// One `::error …::message` line per diagnostic.
fn github_annotations(
    file: &crabbox_spec::source::SourceFile,
    diagnostics: &[crabbox_spec::diagnostic::Diagnostic],
) -> String {
    let mut out = String::new();
    for d in diagnostic::to_json(file, diagnostics) {
        let level = match d.severity {
            crabbox_spec::diagnostic::Severity::Error => "error",
            crabbox_spec::diagnostic::Severity::Warning => "warning",
        };
        let mut message = d.message.to_owned();
        if let Some(hint) = d.hint {
            message.push_str("\nhelp: ");
            message.push_str(hint);
        }
        out.push_str(&format!(
            "::{level} file={},line={},col={},endLine={},endColumn={},title={}::{}\n",
            escape_property(d.file),
            d.line,
            d.column,
            d.end_line,
            d.end_column,
            escape_property(&format!("crabbox {}", d.code)),
            escape_data(&message)
        ));
    }
    out
}

pub(super) fn run(args: &ValidateArgs) -> ExitCode {
    if args.format != Format::Human {
        // Every outcome prints its own document (or annotations).
        super::report::printed_document();
    }
    let name = if args.spec.file == std::path::Path::new(STDIN_PATH) {
        STDIN_NAME.to_owned()
    } else {
        args.spec.file.display().to_string()
    };
    let loaded = match load_path(&args.spec.file, &args.spec.variables()) {
        Ok(loaded) => loaded,
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                "run from the directory holding pond.yaml, or pass -f PATH"
            } else {
                "check the path and its permissions"
            };
            match args.format {
                Format::Human => {
                    anstream::eprintln!("error: cannot read {name}: {e}\n  help: {hint}")
                }
                Format::Json => println!(
                    "{}",
                    json!({
                        "format_version": "1.0", "valid": false, "error_count": 1, "warning_count": 0,
                        "diagnostics": [{"file": name, "line": 0, "column": 0, "end_line": 0, "end_column": 0,
                            "code": "unreadable", "severity": "error", "message": format!("cannot read {name}: {e}"),
                            "hint": hint, "related": []}]
                    })
                ),
                Format::Github => println!(
                    "::error file={},title=crabbox unreadable::{}",
                    escape_property(&name),
                    escape_data(&format!("cannot read {name}: {e}\nhelp: {hint}"))
                ),
            }
            return ExitCode::from(1);
        }
    };
    let errors = loaded.diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = loaded.diagnostics.len() - errors;
    match args.format {
        Format::Human => {
            anstream::eprint!(
                "{}",
                diagnostic::render_human(&loaded.file, &loaded.diagnostics)
            );
            if let Some(pond) = &loaded.pond {
                println!(
                    "{name}: valid — pond \"{}\", {} member{}{}",
                    pond.name,
                    pond.members.len(),
                    if pond.members.len() == 1 { "" } else { "s" },
                    plural_warnings(warnings)
                );
            } else {
                anstream::eprintln!(
                    "{name}: {errors} error{}{}",
                    if errors == 1 { "" } else { "s" },
                    plural_warnings(warnings)
                );
            }
        }
        Format::Github => print!("{}", github_annotations(&loaded.file, &loaded.diagnostics)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "format_version": "1.0",
                "valid": !loaded.has_errors(),
                "error_count": errors,
                "warning_count": warnings,
                "diagnostics": diagnostic::to_json(&loaded.file, &loaded.diagnostics),
            }))
            .expect("JSON serializes")
        ),
    }
    if loaded.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn plural_warnings(n: usize) -> String {
    match n {
        0 => String::new(),
        1 => ", 1 warning".to_owned(),
        n => format!(", {n} warnings"),
    }
}
