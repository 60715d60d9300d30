//! What a member runs, as lines a reviewer can read: its environment, setup
//! steps, readiness check and sync settings. The plan shows these instead of
//! the `pond_setup` hash, which says that something changed but not what.
//!
//! The commands last applied are not known: a lease records only their hash
//! (`pond_setup`), so an update shows the new commands with a note saying so.

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

/// Said with the new commands of an update.
pub const OLD_NOT_RECORDED: &str =
    "the commands last applied are not recorded (a lease keeps only their hash); they become:";

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
        out.push(match &ready.probe {
            Probe::Tcp { host: None, port } => format!("ready tcp :{port}"),
            Probe::Tcp {
                host: Some(h),
                port,
            } => format!("ready tcp {h}:{port}"),
            Probe::Http(url) => format!("ready http {url}"),
            Probe::Command(cmd) => format!("ready command {cmd}"),
        });
    }
    if !m.sync.enabled {
        out.push("sync off".to_owned());
    } else if !m.sync.exclude.is_empty() {
        out.push(format!("sync exclude {:?}", m.sync.exclude));
    }
    out
}
