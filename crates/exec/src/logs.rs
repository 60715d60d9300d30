//! A lease's logs, as `crabbox logs` reads them: one directory per lease
//! (`logs/` beside the workspace, or under `.crabbox/` in a delegated
//! provider's workdir) holding `setup.log`, where the setup steps' output is
//! kept, and `<service>.log` per background service (see
//! [`crate::remote_shell::ServiceDirs`]).
//!
//! Everything here is a POSIX shell script run through a lease's
//! [`crate::session::Session::exec`], so a provider that keeps the layout
//! gets setup logs and `crabbox logs` by naming its directory
//! ([`logs_dir`](crate::session::Session::logs_dir), relative to where
//! `exec` starts); the local provider writes `setup.log` itself, as it
//! reads the step's output.

use crate::remote_shell::quote;

/// The log of the setup steps (`setup.log`); not a service.
pub const SETUP_LOG: &str = "setup";
/// Logs in the directory that are not background services: the setup log,
/// and the local provider's record of every command it ran (`exec.log`).
pub const NOT_SERVICES: [&str; 2] = [SETUP_LOG, "exec"];
/// How long (in tenths of a second) a setup step's output is still copied
/// after the step exited, for children it left holding its output.
const OUTPUT_GRACE_TENTHS: u32 = 10;

/// Script that runs `command` (with the shell `exec` uses: it is `eval`ed in
/// a subshell) with its standard output and error streamed as before *and*
/// appended to `<logs_dir>/setup.log` after `header`; exits with the
/// command's status.
///
/// Each stream goes through its own `tee` reading a FIFO, so stdout and
/// stderr stay apart for the caller; the tees are waited for at most
/// [`OUTPUT_GRACE_TENTHS`] after the command exits, so a child that keeps
/// the output open cannot hold the step (they are ended with `SIGPIPE`,
/// which shells do not report as a killed job). Where no FIFO can be made
/// (`mktemp`/`mkfifo` missing, the directory not writable) the command runs
/// unlogged rather than not at all.
#[must_use]
pub fn setup_logged_script(logs_dir: &str, header: &str, command: &str) -> String {
    format!(
        "crabbox_fifos=''\n\
         if mkdir -p -- {dir} 2>/dev/null \\\n\
         \x20 && crabbox_log=\"$(cd -- {dir} && pwd)/{SETUP_LOG}.log\" \\\n\
         \x20 && printf '%s\\n' {header} >>\"$crabbox_log\" 2>/dev/null \\\n\
         \x20 && crabbox_fifos=$(mktemp -d 2>/dev/null) \\\n\
         \x20 && mkfifo -- \"$crabbox_fifos/out\" \"$crabbox_fifos/err\" 2>/dev/null; then :; else\n\
         \x20 [ -n \"$crabbox_fifos\" ] && rm -rf -- \"$crabbox_fifos\"\n\
         \x20 (eval {command})\n\
         \x20 exit $?\n\
         fi\n\
         tee -a \"$crabbox_log\" <\"$crabbox_fifos/out\" &\n\
         crabbox_tee_out=$!\n\
         tee -a \"$crabbox_log\" <\"$crabbox_fifos/err\" >&2 &\n\
         crabbox_tee_err=$!\n\
         (eval {command}) >\"$crabbox_fifos/out\" 2>\"$crabbox_fifos/err\"\n\
         crabbox_status=$?\n\
         crabbox_i=0\n\
         while [ \"$crabbox_i\" -lt {OUTPUT_GRACE_TENTHS} ] && {{ kill -s 0 \"$crabbox_tee_out\" 2>/dev/null || kill -s 0 \"$crabbox_tee_err\" 2>/dev/null; }}; do\n\
         \x20 sleep 0.1\n\
         \x20 crabbox_i=$((crabbox_i + 1))\n\
         done\n\
         kill -s PIPE \"$crabbox_tee_out\" \"$crabbox_tee_err\" 2>/dev/null\n\
         wait \"$crabbox_tee_out\" \"$crabbox_tee_err\" 2>/dev/null\n\
         rm -rf -- \"$crabbox_fifos\"\n\
         printf '%s\\n' \"--- exit $crabbox_status\" >>\"$crabbox_log\" 2>/dev/null\n\
         exit \"$crabbox_status\"\n",
        dir = quote(logs_dir),
        header = quote(header),
        command = quote(command),
    )
}

/// Script that prints the name of every log in `logs_dir` (`web` for
/// `web.log`), one a line; nothing when the directory does not exist yet.
#[must_use]
pub fn list_script(logs_dir: &str) -> String {
    format!(
        "cd -- {dir} 2>/dev/null || exit 0\n\
         for f in *.log; do\n\
         \x20 [ -f \"$f\" ] && printf '%s\\n' \"${{f%.log}}\"\n\
         done\n\
         exit 0\n",
        dir = quote(logs_dir)
    )
}

/// Script that prints log `name` of `logs_dir` (only its last `tail`
/// lines when given); with `follow`, keeps printing what is appended
/// (across rotation, and once the file appears) until it is stopped.
#[must_use]
pub fn read_script(logs_dir: &str, name: &str, tail: Option<u64>, follow: bool) -> String {
    let file = quote(&format!("{}/{name}.log", logs_dir.trim_end_matches('/')));
    let from = tail.map_or_else(|| "+1".to_owned(), |n| n.to_string());
    match (tail, follow) {
        (None, false) => format!("exec cat -- {file}\n"),
        (Some(_), false) => format!("exec tail -n {from} -- {file}\n"),
        (_, true) => format!("exec tail -n {from} -F -- {file}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh(script: &str, dir: &std::path::Path) -> std::process::Output {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .expect("sh runs")
    }

    #[test]
    fn a_logged_setup_step_keeps_both_streams_apart_and_in_the_log_with_its_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("workspace");
        std::fs::create_dir(&work).expect("workspace");
        let script = setup_logged_script(
            "../logs",
            "--- step 1",
            "echo out; echo err >&2; cd /; exit 3",
        );
        let out = sh(&script, &work);
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
        let log = std::fs::read_to_string(dir.path().join("logs/setup.log")).expect("log");
        assert!(log.starts_with("--- step 1\n"), "{log}");
        assert!(log.contains("out\n") && log.contains("err\n"), "{log}");
        assert!(log.ends_with("--- exit 3\n"), "{log}");

        // A second step appends.
        let out = sh(
            &setup_logged_script("../logs", "--- step 2", "echo two"),
            &work,
        );
        assert_eq!(out.status.code(), Some(0));
        let log = std::fs::read_to_string(dir.path().join("logs/setup.log")).expect("log");
        assert!(log.starts_with("--- step 1\n"), "{log}");
        assert!(log.ends_with("--- step 2\ntwo\n--- exit 0\n"), "{log}");
    }

    #[test]
    fn a_step_whose_child_keeps_its_output_open_does_not_hold_the_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let started = std::time::Instant::now();
        let out = sh(
            &setup_logged_script("logs", "--- h", "sleep 5 & echo started"),
            dir.path(),
        );
        assert_eq!(out.status.code(), Some(0));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_step_runs_unlogged_when_the_log_cannot_be_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("logs"), "a file, not a directory").expect("file");
        let out = sh(&setup_logged_script("logs", "--- h", "echo hi"), dir.path());
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    }

    #[test]
    fn listing_names_every_log_and_nothing_without_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = sh(&list_script("logs"), dir.path());
        assert_eq!(out.status.code(), Some(0));
        assert!(out.stdout.is_empty());
        std::fs::create_dir(dir.path().join("logs")).expect("logs");
        for f in ["setup.log", "setup-1.log", "web.log", "notes.txt"] {
            std::fs::write(dir.path().join("logs").join(f), "").expect("log");
        }
        let out = sh(&list_script("logs"), dir.path());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "setup-1\nsetup\nweb\n"
        );
    }

    #[test]
    fn reading_quotes_the_file_and_keeps_the_tail() {
        assert_eq!(
            read_script("../logs/", "web", None, false),
            "exec cat -- '../logs/web.log'\n"
        );
        assert_eq!(
            read_script("logs", "web", Some(80), false),
            "exec tail -n 80 -- 'logs/web.log'\n"
        );
        assert_eq!(
            read_script(".crabbox/logs", "setup-1", None, true),
            "exec tail -n +1 -F -- '.crabbox/logs/setup-1.log'\n"
        );
        assert_eq!(
            read_script("logs", "setup", Some(0), true),
            "exec tail -n 0 -F -- 'logs/setup.log'\n"
        );
    }
}
