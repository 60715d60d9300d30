//! A child process's output, the same way for every transport that runs
//! one (ssh, the Tensorlake CLI, local steps) and every provider API that
//! streams one: its pipes read line by line, the lines collected or
//! dropped, the pumps drained with a grace period, and how it ended.

use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crabbox_core::provider::{OutputSink, Stream};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::task::JoinHandle;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// With this exit code (128 + the signal for a signal death).
    Exited(i32),
    /// Killed at the time limit.
    TimedOut(Duration),
}

/// The exit code of a finished process: 128 + the signal for a signal
/// death, as a shell reports it.
#[must_use]
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Reads `reader` to its end, one line at a time, and hands `each` the raw
/// bytes (with their newline, for logs that keep them) and the text
/// (newline and a trailing `\r` removed, invalid UTF-8 replaced). A read
/// error ends the stream like its end does: the process's exit status,
/// not its pipe, says how it went.
pub async fn pump_lines(reader: impl AsyncRead + Unpin, mut each: impl FnMut(&[u8], &str)) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        each(&buf, &String::from_utf8_lossy(line));
    }
}

/// Waits for the output pumps to reach the end of their pipes; gives up
/// after `grace` when something else keeps them open (a detached
/// grandchild holding the pipe must not hang the command).
pub async fn finish_pumps(pumps: [Option<JoinHandle<()>>; 2], grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    for pump in pumps.into_iter().flatten() {
        let abort = pump.abort_handle();
        if tokio::time::timeout_at(deadline, pump).await.is_err() {
            abort.abort();
        }
    }
}

/// An output sink that keeps every line of each stream.
#[derive(Default)]
pub struct Collect {
    lines: Mutex<(Vec<String>, Vec<String>)>,
}

impl Collect {
    /// The lines kept so far (stdout, stderr), leaving it empty.
    pub fn take(&self) -> (Vec<String>, Vec<String>) {
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl OutputSink for Collect {
    fn line(&self, stream: Stream, line: &str) {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        match stream {
            Stream::Stdout => lines.0.push(line.to_owned()),
            Stream::Stderr => lines.1.push(line.to_owned()),
        }
    }
}

/// An output sink that drops everything (probe commands).
pub struct NullSink;

impl OutputSink for NullSink {
    fn line(&self, _stream: Stream, _line: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_lose_their_newline_and_carriage_return_but_not_the_last_partial_line() {
        let input: &[u8] = b"one\r\ntwo\n\xffthree";
        let mut seen = Vec::new();
        pump_lines(input, |raw, text| {
            seen.push((raw.to_vec(), text.to_owned()))
        })
        .await;
        assert_eq!(
            seen,
            vec![
                (b"one\r\n".to_vec(), "one".to_owned()),
                (b"two\n".to_vec(), "two".to_owned()),
                (b"\xffthree".to_vec(), "\u{fffd}three".to_owned()),
            ]
        );
    }

    #[test]
    fn a_signal_death_is_128_plus_the_signal() {
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
    }

    #[test]
    fn collect_keeps_each_stream_apart() {
        let c = Collect::default();
        c.line(Stream::Stdout, "a");
        c.line(Stream::Stderr, "b");
        assert_eq!(c.take(), (vec!["a".to_owned()], vec!["b".to_owned()]));
        assert_eq!(c.take(), (Vec::new(), Vec::new()));
    }
}
