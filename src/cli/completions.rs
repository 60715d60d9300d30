//! `crabbox completions SHELL` and `crabbox man`: generated from the same
//! clap definitions the parser uses, so they never drift from the flags.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
pub(super) struct CompletionsArgs {
    /// The shell to complete for, e.g. `crabbox completions bash >
    /// /etc/bash_completion.d/crabbox`, or `source <(crabbox completions zsh)`.
    #[arg(value_enum)]
    shell: Shell,
}

pub(super) fn completions(args: &CompletionsArgs) -> ExitCode {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "crabbox", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// The man page (roff) on stdout: `crabbox man > crabbox.1`.
pub(super) fn man() -> ExitCode {
    let mut page = Vec::new();
    if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut page) {
        anstream::eprintln!("error: cannot render the man page: {e}");
        return ExitCode::FAILURE;
    }
    // A closed stdout is handled where every command starts.
    let _ = std::io::stdout().write_all(&page);
    ExitCode::SUCCESS
}
