//! `crabbox schema`: print the JSON Schema of pond.yaml (the published one,
//! which accepts `${VAR}` references wherever crabbox does).

use std::process::ExitCode;

pub(super) fn run() -> ExitCode {
    // A closed stdout is handled where every command starts.
    print!("{}", crabbox_spec::schema::schema_text());
    ExitCode::SUCCESS
}
