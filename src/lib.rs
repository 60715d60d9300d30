//! crabbox: declarative Crabbox ponds. A checked-in `pond.yaml` is planned
//! against the leases that really exist and applied through provider adapters.
//!
//! The binary is a thin wrapper over [`run`]; everything lives here so that
//! tests and tools use the same code paths as the command line.

pub mod allocator;
pub mod cli;
mod closed_stdout;

/// Runs the command line `args` (the program name first) and returns the
/// exit status. A closed stdout (`crabbox plan | head -c1`) ends any command
/// quietly with status 0.
pub fn run(
    args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> std::process::ExitCode {
    allocator::tune_for_a_command();
    closed_stdout::guard(|| cli::run(args))
}
