//! The `crabbox` binary: parse arguments, run, exit with the command's code.

fn main() -> std::process::ExitCode {
    crabbox::run(std::env::args_os())
}
