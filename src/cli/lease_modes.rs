//! How each member's leases are made — `brokered (<url>)` through a Crabbox
//! coordinator, or `direct` — shown beside every rendering of a plan
//! (`plan` in each format, `apply`'s plan), and only when some member is
//! brokered, so plans of ponds that use no coordinator read as before. The
//! token never appears: the mode names the coordinator's URL only.

use std::fmt::Write as _;

use crabbox_providers::coordinator::{Settings, mode_of};
use crabbox_spec::desired::DesiredPond;

/// Member slug → mode, in spec order; `None` when no member is brokered.
#[must_use]
pub fn of(desired: &DesiredPond) -> Option<Vec<(String, String)>> {
    let settings = Settings::for_members(&desired.members);
    let modes: Vec<(String, String)> = desired
        .members
        .iter()
        .map(|m| (m.slug.clone(), mode_of(m, settings.as_ref())))
        .collect();
    modes
        .iter()
        .any(|(_, m)| m.starts_with("brokered"))
        .then_some(modes)
}

/// The block after a human plan.
#[must_use]
pub fn human(modes: &[(String, String)]) -> String {
    let mut out = String::from("\nLease modes:\n");
    let width = modes.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
    for (slug, mode) in modes {
        let _ = writeln!(out, "  {slug:<width$} = {mode}");
    }
    out
}

/// The section after a Markdown plan (a pull-request comment).
#[must_use]
pub fn markdown(modes: &[(String, String)]) -> String {
    let mut out = String::from("\n**Lease modes**\n\n| member | mode |\n|---|---|\n");
    for (slug, mode) in modes {
        let _ = writeln!(out, "| `{slug}` | {mode} |");
    }
    out
}

/// Adds `lease_modes` (`{slug: mode}`) to a JSON plan.
pub fn add_to_json(plan: &mut serde_json::Value, modes: &[(String, String)]) {
    if let Some(object) = plan.as_object_mut() {
        object.insert(
            "lease_modes".to_owned(),
            modes
                .iter()
                .map(|(s, m)| (s.clone(), serde_json::Value::from(m.as_str())))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        );
    }
}
