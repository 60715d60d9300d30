//! Progress of an apply: plain lines on stderr in Terraform's words
//! (`db: Creating...`, `Still creating... [10s elapsed]`, `Creation complete
//! after 2s [id=…]`), or NDJSON events on stdout with `--json`, carrying
//! per-step timings. Every event line starts with the same three keys,
//! `version` ([`EVENTS_VERSION`]), `timestamp` (RFC 3339 UTC, milliseconds)
//! and `type`, made in one place ([`event`]) so that the lines the commands
//! print themselves (`planned_changes`, `change_summary`, `diagnostics`)
//! carry them too; `schema/events.schema.json` describes every type.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use serde_json::json;

use crate::graph::{Step, StepKind};
use crabbox_core::provider::Stream;

/// Version of the NDJSON event format: a new key or event type keeps it,
/// a changed or removed one raises it.
pub const EVENTS_VERSION: u64 = 1;

/// One event: `version`, `timestamp` (now) and `type` first, then `fields`
/// (an object).
#[must_use]
pub fn event(kind: &str, fields: serde_json::Value) -> serde_json::Value {
    event_at(kind, fields, SystemTime::now())
}

/// [`event`] stamped with `at`.
#[must_use]
pub fn event_at(kind: &str, fields: serde_json::Value, at: SystemTime) -> serde_json::Value {
    let mut line = serde_json::Map::new();
    line.insert("version".into(), EVENTS_VERSION.into());
    line.insert(
        "timestamp".into(),
        humantime::format_rfc3339_millis(at).to_string().into(),
    );
    line.insert("type".into(), kind.into());
    if let serde_json::Value::Object(fields) = fields {
        line.extend(fields);
    }
    serde_json::Value::Object(line)
}

/// Prints one event line on stdout, flushed at once (a consumer follows
/// the run as it happens).
pub fn print_event(kind: &str, fields: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", event(kind, fields));
    let _ = out.flush();
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Lines for people on stderr.
    Human,
    /// NDJSON events on stdout.
    Json,
}

/// Writes progress; safe to share between concurrent steps.
pub struct Reporter {
    mode: Mode,
    /// Serializes whole lines from concurrent steps.
    lock: Mutex<()>,
    /// On a terminal: one live spinner per running step, finished lines above.
    live: Option<Live>,
}

/// Live multi-line progress on a terminal.
struct Live {
    bars: MultiProgress,
    running: Mutex<HashMap<String, ProgressBar>>,
}

fn secs(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn verbs(step: &Step) -> (&'static str, &'static str, &'static str) {
    match step.kind {
        StepKind::Warmup => ("Creating...", "Still creating...", "Creation complete"),
        StepKind::Relabel => (
            "Modifying...",
            "Still modifying...",
            "Modifications complete",
        ),
        StepKind::Adopt(_) => ("Adopting...", "Still adopting...", "Adoption complete"),
        StepKind::StopServices => (
            "Stopping services...",
            "Still stopping services...",
            "Services stopped",
        ),
        StepKind::Sync => ("Syncing...", "Still syncing...", "Sync complete"),
        StepKind::Setup => (
            "Running setup...",
            "Still running setup...",
            "Setup complete",
        ),
        StepKind::Ready => (
            "Waiting for ready...",
            "Still waiting for ready...",
            "Ready",
        ),
        StepKind::Share => ("Sharing ports...", "Still sharing ports...", "Ports shared"),
        StepKind::Finalize => ("Marking ready...", "Still marking ready...", "Marked ready"),
        StepKind::Release(_) => (
            "Destroying...",
            "Still destroying...",
            "Destruction complete",
        ),
        StepKind::ForgetClaim(_) => (
            "Forgetting claim...",
            "Still forgetting claim...",
            "Claim forgotten",
        ),
        StepKind::Render => (
            "Rendering outputs...",
            "Still rendering...",
            "Outputs written",
        ),
    }
}

impl Reporter {
    /// A reporter in `mode`; human progress is live when stderr is a terminal
    /// (and not under CI, whose logs want plain lines).
    #[must_use]
    pub fn new(mode: Mode) -> Self {
        let live = (mode == Mode::Human
            && std::io::stderr().is_terminal()
            && std::env::var_os("CI").is_none())
        .then(|| Live {
            bars: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            running: Mutex::new(HashMap::new()),
        });
        Self {
            mode,
            lock: Mutex::new(()),
            live,
        }
    }

    /// Identifies a running step for its spinner.
    fn key(step: &Step) -> String {
        match &step.kind {
            StepKind::Release(lease) => format!("{step} {}", lease.id),
            _ => step.to_string(),
        }
    }

    /// The mode.
    #[must_use]
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn who(step: &Step) -> String {
        step.slug.clone().unwrap_or_else(|| "pond".to_owned())
    }

    fn emit(&self, human: &str, kind: &str, fields: serde_json::Value) {
        let _guard = self.lock.lock();
        match self.mode {
            Mode::Human => match &self.live {
                Some(live) => {
                    let _ = live.bars.println(human);
                }
                None => anstream::eprintln!("{human}"),
            },
            Mode::Json => print_event(kind, fields),
        }
    }

    /// A step started.
    pub fn start(&self, step: &Step, detail: &str) {
        let (start, _, _) = verbs(step);
        if let Some(live) = &self.live {
            let bar = live.bars.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .expect("a valid template"),
            );
            bar.set_message(format!("{}: {start}", Self::who(step)));
            bar.enable_steady_tick(Duration::from_millis(120));
            live.running
                .lock()
                .expect("bars lock")
                .insert(Self::key(step), bar);
            return;
        }
        let detail_text = if detail.is_empty() {
            String::new()
        } else {
            format!(" [{detail}]")
        };
        self.emit(
            &format!("{}: {start}{detail_text}", Self::who(step)),
            "apply_start",
            json!({"slug": step.slug, "step": step.name(), "detail": detail}),
        );
    }

    /// A step still running (every 10 s); the live display shows this already.
    pub fn heartbeat(&self, step: &Step, elapsed: Duration) {
        if self.live.is_some() {
            return;
        }
        let (_, still, _) = verbs(step);
        self.emit(
            &format!("{}: {still} [{} elapsed]", Self::who(step), secs(elapsed)),
            "apply_progress",
            json!({"slug": step.slug, "step": step.name(), "elapsed_ms": elapsed.as_millis()}),
        );
    }

    fn finish_bar(&self, step: &Step) {
        if let Some(bar) = self.live.as_ref().and_then(|l| {
            l.running
                .lock()
                .expect("bars lock")
                .remove(&Self::key(step))
        }) {
            bar.finish_and_clear();
        }
    }

    /// A step finished.
    pub fn done(&self, step: &Step, elapsed: Duration, detail: &str) {
        self.finish_bar(step);
        let (_, _, done) = verbs(step);
        let detail_text = if detail.is_empty() {
            String::new()
        } else {
            format!(" [{detail}]")
        };
        self.emit(
            &format!("{}: {done} after {}{detail_text}", Self::who(step), secs(elapsed)),
            "apply_complete",
            json!({"slug": step.slug, "step": step.name(), "elapsed_ms": elapsed.as_millis(), "detail": detail}),
        );
    }

    /// A step failed.
    pub fn failed(&self, step: &Step, elapsed: Duration, error: &str) {
        self.finish_bar(step);
        self.emit(
            &format!("{}: {} failed after {}: {error}", Self::who(step), step.name(), secs(elapsed)),
            "apply_errored",
            json!({"slug": step.slug, "step": step.name(), "elapsed_ms": elapsed.as_millis(), "error": error}),
        );
    }

    /// A step did not run.
    pub fn skipped(&self, step: &Step, why: &str) {
        self.emit(
            &format!("{}: {} skipped: {why}", Self::who(step), step.name()),
            "apply_skipped",
            json!({"slug": step.slug, "step": step.name(), "reason": why}),
        );
    }

    /// A line a command printed on a member.
    pub fn output(&self, slug: &str, stream: Stream, line: &str) {
        let name = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        self.emit(
            &format!("{slug} | {line}"),
            "output",
            json!({"slug": slug, "stream": name, "line": line}),
        );
    }

    /// A free-form message (warnings, summaries).
    pub fn message(&self, level: &str, text: &str) {
        self.emit(text, "message", json!({"level": level, "message": text}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_starts_with_version_timestamp_and_type() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_508_064_809);
        let line = event_at("apply_start", json!({"slug": "db", "step": "warmup"}), at);
        assert_eq!(
            line.to_string(),
            r#"{"version":1,"timestamp":"2026-12-05T22:01:04.809Z","type":"apply_start","slug":"db","step":"warmup"}"#
        );
    }
}
