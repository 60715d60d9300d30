//! What a member runs, as lines a reviewer can read: its environment, setup
//! steps, readiness check and sync settings. The plan shows these instead of
//! the `pond_setup` hash, which says that something changed but not what.
//!
//! After setup, apply records these lines (env values from the environment
//! always hidden) in the lease's claim, so the next plan shows an update as
//! a unified diff of what ran against what will run. A lease whose claim
//! holds no record (made by Crabbox, by an older crabbox, or on another
//! machine without a shared state backend) shows the new lines with a note.

use crabbox_spec::desired::{DesiredMember, Probe};

/// How the lines are made.
#[derive(Debug, Clone, Copy, Default)]
pub struct Show {
    /// Print env values that came from `--var` or the environment
    /// (`--show-env`); without it they read `(sensitive)`.
    pub env: bool,
}

/// Shown instead of an interpolated env value.
pub const SENSITIVE: &str = "(sensitive)";

/// Said with the new commands of an update whose old ones are unknown.
pub const OLD_NOT_RECORDED: &str =
    "the commands last applied are not recorded (no claim records them); they become:";

/// Said when the recorded and the planned lines read the same although the
/// setup hash changed.
pub const SAME_LINES: &str =
    "the lines read the same: a hidden (sensitive) value, depends_on or pass_env changed";

/// The claim field (ours, folded into the claim's labels when stored) that
/// records the lines a lease last ran.
pub const CLAIM_FIELD: &str = "crabboxCommands";

/// One line of [`diff`]: kept, removed or added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffLine {
    /// In both.
    Same(String),
    /// Only in the lines last applied.
    Removed(String),
    /// Only in the planned lines.
    Added(String),
}

/// The lines last applied (`before`, as recorded: sensitive values hidden)
/// against `m`'s, in order, every line kept as context (a member's list is
/// short). Lines are compared with sensitive values hidden on both sides,
/// so `--show-env` reveals values without showing them as changes.
#[must_use]
pub fn diff(before: &[String], m: &DesiredMember, show: Show) -> Vec<DiffLine> {
    let hidden = lines(m, Show::default());
    let shown = lines(m, show);
    let ops = similar::capture_diff_slices(similar::Algorithm::Myers, before, &hidden);
    let mut out = Vec::new();
    for op in ops {
        for change in op.iter_changes(before, &hidden) {
            match (change.tag(), change.new_index()) {
                (similar::ChangeTag::Delete, _) => out.push(DiffLine::Removed(change.value())),
                (similar::ChangeTag::Equal, Some(i)) => out.push(DiffLine::Same(shown[i].clone())),
                (similar::ChangeTag::Insert, Some(i)) => {
                    out.push(DiffLine::Added(shown[i].clone()));
                }
                (_, None) => {}
            }
        }
    }
    out
}

/// One line per env entry, setup step, readiness check and sync setting.
#[must_use]
pub fn lines(m: &DesiredMember, show: Show) -> Vec<String> {
    let mut out = Vec::new();
    for (name, value) in &m.env {
        let value = if m.sensitive_env.contains(name) && !show.env {
            SENSITIVE.to_owned()
        } else {
            format!("{value:?}")
        };
        out.push(format!("env {name}={value}"));
    }
    for step in &m.setup {
        let mut line = format!("run {}", step.run);
        if step.background {
            line.push_str("  (background)");
        }
        out.push(line);
    }
    if let Some(ready) = &m.ready {
        if let Some(probe) = &ready.probe {
            out.push(match probe {
                Probe::Tcp { host: None, port } => format!("ready tcp :{port}"),
                Probe::Tcp {
                    host: Some(h),
                    port,
                } => format!("ready tcp {h}:{port}"),
                Probe::Http(url) => format!("ready http {url}"),
                Probe::Command(cmd) => format!("ready command {cmd}"),
            });
        }
        if ready.tailnet {
            out.push("ready tailnet".to_owned());
        }
    }
    if !m.sync.enabled {
        out.push("sync off".to_owned());
    } else if !m.sync.exclude.is_empty() {
        out.push(format!("sync exclude {:?}", m.sync.exclude));
    }
    out
}
