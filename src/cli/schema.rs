//! `crabbox schema`: print the JSON Schema of pond.yaml.

use std::io::Write as _;
use std::process::ExitCode;

pub(super) fn run() -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(crate::spec::schema::schema_text().as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            anstream::eprintln!("error: cannot write the schema: {e}");
            ExitCode::from(1)
        }
    }
}
