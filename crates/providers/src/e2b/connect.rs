//! envd's process stream in the Connect protocol (JSON codec): every
//! message is an envelope of one flags byte, a big-endian 4-byte length and
//! that many bytes of JSON. Flag `0x01` marks a compressed message (never
//! asked for, so refused), `0x02` the end of the stream, whose JSON may hold
//! `{"error": {code, message}}`. Process events are `start`, `data`
//! (`stdout`/`stderr`, base64), `keepalive` and `end` (`exitCode`,
//! `exited`, `error`). Only an `end` event makes a result: a stream cut
//! before it is a failure, never a success (Crabbox's `parseE2BProcessStream`).

use base64::Engine as _;
use serde_json::Value;

use crabbox_core::provider::ProviderError;

/// Flag of a compressed message.
const COMPRESSED: u8 = 0x01;
/// Flag of the end-of-stream message.
const END_STREAM: u8 = 0x02;
/// The largest message accepted (the output of one read of a process).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// `value` as one Connect envelope.
pub(super) fn envelope(value: &Value) -> Vec<u8> {
    let json = serde_json::to_vec(value).unwrap_or_default();
    let mut out = Vec::with_capacity(json.len() + 5);
    out.push(0);
    out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// What one envelope said.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The process ended with this code (`error` set when envd says why).
    End {
        code: i32,
        error: Option<String>,
    },
    /// `start`, `keepalive`: nothing to do.
    Other,
    /// The end-of-stream message, with the error it carried if any.
    Trailer(Option<String>),
}

/// Splits a byte stream into envelopes as chunks arrive.
#[derive(Default)]
pub(super) struct Decoder {
    buffer: Vec<u8>,
}

impl Decoder {
    /// The events of every envelope completed by `chunk`.
    ///
    /// # Errors
    /// A compressed or oversized envelope, or one that is not JSON.
    pub(super) fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, ProviderError> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(header) = self.buffer.get(..5) {
            let flags = header[0];
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if flags & COMPRESSED != 0 {
                return Err(failed("compressed Connect envelopes are not supported"));
            }
            if len > MAX_MESSAGE {
                return Err(failed(&format!("a Connect message of {len} bytes")));
            }
            if self.buffer.len() < 5 + len {
                break;
            }
            let body: Vec<u8> = self.buffer.drain(..5 + len).skip(5).collect();
            let value: Value = serde_json::from_slice(&body)
                .map_err(|e| failed(&format!("a Connect message is not JSON: {e}")))?;
            events.push(if flags & END_STREAM != 0 {
                Event::Trailer(trailer_error(&value))
            } else {
                event(&value)?
            });
        }
        Ok(events)
    }

    /// Whether bytes of an unfinished envelope are left.
    pub(super) fn has_partial(&self) -> bool {
        !self.buffer.is_empty()
    }
}

fn failed(what: &str) -> ProviderError {
    ProviderError::Failed(format!("e2b process stream: {what}"))
}

fn trailer_error(value: &Value) -> Option<String> {
    let error = value.get("error")?;
    let code = error
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    Some(format!("{code}: {message}"))
}

fn event(value: &Value) -> Result<Event, ProviderError> {
    let Some(event) = value.get("event") else {
        return Ok(Event::Other);
    };
    if let Some(data) = event.get("data") {
        let decode = |field: &str| -> Result<Option<Vec<u8>>, ProviderError> {
            data.get(field)
                .and_then(Value::as_str)
                .map(|b64| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| failed(&format!("{field} is not base64: {e}")))
                })
                .transpose()
        };
        if let Some(out) = decode("stdout")? {
            return Ok(Event::Stdout(out));
        }
        if let Some(err) = decode("stderr")? {
            return Ok(Event::Stderr(err));
        }
        if let Some(pty) = decode("pty")? {
            return Ok(Event::Stdout(pty));
        }
        return Ok(Event::Other);
    }
    if let Some(end) = event.get("end") {
        let code = end
            .get("exitCode")
            .and_then(Value::as_i64)
            .and_then(|c| i32::try_from(c).ok())
            .unwrap_or(0);
        let error = end
            .get("error")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
            .map(str::to_owned);
        let exited = end.get("exited").and_then(Value::as_bool).unwrap_or(true);
        // A process that did not exit (killed by a signal) with code 0
        // would read as a success.
        let code = if !exited && code == 0 { 1 } else { code };
        return Ok(Event::End { code, error });
    }
    Ok(Event::Other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn envelopes_are_flags_length_and_json_split_anywhere() {
        let mut stream = envelope(&json!({"event": {"start": {"pid": 7}}}));
        stream.extend(envelope(
            &json!({"event": {"data": {"stdout": b64("hi\n")}}}),
        ));
        stream.extend(envelope(
            &json!({"event": {"data": {"stderr": b64("oops")}}}),
        ));
        stream.extend(envelope(
            &json!({"event": {"end": {"exitCode": 3, "exited": true, "status": "exit status 3"}}}),
        ));
        let mut end = envelope(&json!({}));
        end[0] = END_STREAM;
        stream.extend(end);
        for chunk in [1, 2, 7, 4096] {
            let mut d = Decoder::default();
            let events: Vec<Event> = stream
                .chunks(chunk)
                .flat_map(|c| d.feed(c).expect("decodes"))
                .collect();
            assert_eq!(
                events,
                vec![
                    Event::Other,
                    Event::Stdout(b"hi\n".to_vec()),
                    Event::Stderr(b"oops".to_vec()),
                    Event::End {
                        code: 3,
                        error: None
                    },
                    Event::Trailer(None),
                ]
            );
            assert!(!d.has_partial());
        }
    }

    #[test]
    fn compressed_envelopes_and_trailer_errors() {
        let mut compressed = envelope(&json!({}));
        compressed[0] = COMPRESSED;
        assert!(Decoder::default().feed(&compressed).is_err());
        let mut trailer = envelope(&json!({"error": {"code": "unavailable", "message": "gone"}}));
        trailer[0] = END_STREAM;
        assert_eq!(
            Decoder::default().feed(&trailer).expect("decodes"),
            vec![Event::Trailer(Some("unavailable: gone".to_owned()))]
        );
    }
}
