//! Islo's streaming exec: the `text/event-stream` parser, output chunks
//! cut into lines, and what the events say about how the command ended.

use super::*;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SseEvent {
    pub(super) event: String,
    pub(super) data: String,
}

/// An incremental `text/event-stream` parser: `event:`/`data:` fields, `:`
/// comments ignored, several `data:` lines joined with `\n`, a blank line
/// ends an event (so does the end of the stream).
#[derive(Debug, Default)]
pub(super) struct SseParser {
    pub(super) buf: Vec<u8>,
    pub(super) event: String,
    pub(super) data: Vec<String>,
}

impl SseParser {
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, ProviderError> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let line = self.buf[start..end]
                .strip_suffix(b"\r")
                .unwrap_or(&self.buf[start..end]);
            let line = String::from_utf8_lossy(line).into_owned();
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
            start = end + 1;
        }
        self.buf.drain(..start);
        if self.buf.len() > SSE_LINE_LIMIT {
            return Err(ProviderError::Failed(format!(
                "islo exec stream: a line is longer than {} MiB",
                SSE_LINE_LIMIT / 1024 / 1024
            )));
        }
        Ok(events)
    }

    pub(super) fn finish(&mut self) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let line = rest.strip_suffix(b"\r").unwrap_or(&rest);
            let line = String::from_utf8_lossy(line).into_owned();
            if let Some(event) = self.line(&line) {
                return Some(event);
            }
        }
        self.dispatch()
    }

    pub(super) fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => self.data.push(value.to_owned()),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        if self.event.is_empty() && self.data.is_empty() {
            return None;
        }
        Some(SseEvent {
            event: std::mem::take(&mut self.event),
            data: std::mem::take(&mut self.data).join("\n"),
        })
    }
}

/// Turns the chunks of one output stream into lines.
pub(super) struct LineBuffer {
    pub(super) stream: Stream,
    pub(super) pending: String,
}

impl LineBuffer {
    pub(super) fn new(stream: Stream) -> Self {
        Self {
            stream,
            pending: String::new(),
        }
    }

    pub(super) fn push(&mut self, chunk: &str, sink: &dyn OutputSink) {
        self.pending.push_str(chunk);
        while let Some(i) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=i).collect();
            let line = line.strip_suffix('\n').unwrap_or(&line);
            sink.line(self.stream, line.strip_suffix('\r').unwrap_or(line));
        }
    }

    pub(super) fn flush(&mut self, sink: &dyn OutputSink) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            sink.line(self.stream, rest.strip_suffix('\r').unwrap_or(&rest));
        }
    }
}

/// What an exec stream's events amount to.
#[derive(Default)]
pub(super) struct StreamOutcome {
    pub(super) exit: Option<i32>,
    pub(super) error: Option<String>,
}

/// Applies one event; `Ok(true)` once the `exit` event arrived.
pub(super) fn apply_event(
    event: &SseEvent,
    outcome: &mut StreamOutcome,
    out: &mut LineBuffer,
    err: &mut LineBuffer,
    sink: &dyn OutputSink,
) -> Result<bool, ProviderError> {
    match event.event.as_str() {
        "stdout" => out.push(&event.data, sink),
        "stderr" => err.push(&event.data, sink),
        "exit" => {
            let code = event.data.trim().parse::<i32>().map_err(|_| {
                ProviderError::Failed(format!(
                    "islo exec stream: invalid exit event `{}`",
                    event.data.trim()
                ))
            })?;
            outcome.exit = Some(code);
            return Ok(true);
        }
        "error" => outcome.error = Some(event.data.trim().to_owned()),
        _ => {}
    }
    Ok(false)
}
