//! `crabbox schema [--document pond|plan|events|diagnostics]`: print a JSON
//! Schema. `pond` (the default) is pond.yaml's published schema, which
//! accepts `${VAR}` references wherever crabbox does; the others describe
//! crabbox's JSON output (`crabbox_apply::schemas`). Each is checked in as
//! `schema/<name>.schema.json`.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crabbox_apply::schemas::Document;

#[derive(Debug, Args)]
pub(super) struct SchemaArgs {
    /// Which schema.
    #[arg(long, value_enum, default_value_t = Which::Pond)]
    document: Which,
}

/// The `--document` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// pond.yaml.
    Pond,
    /// The plan document (`plan --format json`, `show --json`).
    Plan,
    /// One NDJSON line of `apply --json` / `destroy --json`.
    Events,
    /// What a `--json` command prints when it fails; `validate --format json`.
    Diagnostics,
}

pub(super) fn run(args: &SchemaArgs) -> ExitCode {
    let document = match args.document {
        Which::Pond => Document::Pond,
        Which::Plan => Document::Plan,
        Which::Events => Document::Events,
        Which::Diagnostics => Document::Diagnostics,
    };
    // A closed stdout is handled where every command starts.
    print!("{}", document.text());
    ExitCode::SUCCESS
}
