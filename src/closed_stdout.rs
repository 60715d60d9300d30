//! A closed stdout ends the program quietly with status 0, as ripgrep does
//! (`crabbox plan --format json | head -c1`).
//!
//! Rust ignores `SIGPIPE`, so writing to a pipe whose reader is gone fails
//! with `EPIPE`, and `println!` turns that failure into a panic ("failed
//! printing to stdout"). Instead of threading write errors through every
//! command, the one entry point catches exactly that panic: on the thread
//! that runs the command it unwinds to [`guard`] (so destructors, such as lock
//! releases, still run) and becomes exit status 0; on any other thread (a task
//! streaming a member's output) the process exits with status 0 at once.
//! Every other panic keeps the default report.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::process::ExitCode;
use std::sync::Once;

thread_local! {
    /// Whether this thread is inside [`guard`], which turns the panic into a
    /// clean exit after unwinding.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `command`; a write to a closed stdout ends it with status 0 and no
/// message.
pub fn guard(command: impl FnOnce() -> ExitCode) -> ExitCode {
    install_hook();
    let was = GUARDED.replace(true);
    let outcome = panic::catch_unwind(AssertUnwindSafe(command));
    GUARDED.set(was);
    match outcome {
        Ok(code) => code,
        Err(payload) if is_closed_stdout(payload_text(payload.as_ref())) => ExitCode::SUCCESS,
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// Wraps the current panic hook once: closed-stdout panics are silent.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
            if !is_closed_stdout(payload_text(info.payload())) {
                default(info);
            } else if !GUARDED.get() {
                std::process::exit(0);
            }
        }));
    });
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or_default()
}

/// Whether a panic message is the standard library's report of a failed
/// `print!` to stdout because the pipe's reader is gone (`EPIPE`).
fn is_closed_stdout(message: &str) -> bool {
    message.starts_with("failed printing to stdout")
        && message.ends_with(&format!("(os error {})", libc::EPIPE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_stdout_is_recognised() {
        let epipe = std::io::Error::from_raw_os_error(libc::EPIPE);
        assert!(is_closed_stdout(&format!(
            "failed printing to stdout: {epipe}"
        )));
        let other = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(!is_closed_stdout(&format!(
            "failed printing to stdout: {other}"
        )));
        assert!(!is_closed_stdout(&format!(
            "failed printing to stderr: {epipe}"
        )));
    }
}
