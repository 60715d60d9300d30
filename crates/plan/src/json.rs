//! The plan for machines, shaped like Terraform's `show -json`:
//! `format_version`, `member_changes[]` with `change: {actions, before,
//! after, reasons}`. A minor version only adds fields; consumers ignore
//! fields they do not know.

use serde_json::{Map, Value, json};

use crate::{Action, Plan};
use crabbox_core::duration;
use crabbox_core::labels;
use crabbox_core::lease::Lease;
use crabbox_spec::desired::DesiredMember;
use crabbox_spec::member_labels::SpecHashes;

/// Version of this JSON format.
pub const FORMAT_VERSION: &str = "1.0";

/// A live lease's attributes, with the same keys as [`desired_view`].
#[must_use]
pub fn lease_view(lease: &Lease) -> Value {
    let mut m = Map::new();
    m.insert("lease_id".into(), lease.id.clone().into());
    m.insert("provider".into(), lease.provider.as_str().into());
    m.insert(
        "class".into(),
        lease
            .known_label(labels::CLASS)
            .map_or(Value::Null, Into::into),
    );
    m.insert(
        "type".into(),
        lease
            .known_label(labels::SERVER_TYPE)
            .map_or(Value::Null, Into::into),
    );
    m.insert(
        "tailscale".into(),
        (lease.label(labels::TAILSCALE) == Some("true")).into(),
    );
    m.insert("expose".into(), lease.ports().into());
    m.insert(
        "keep".into(),
        (lease.label(labels::KEEP) == Some("true")).into(),
    );
    m.insert(
        "ttl".into(),
        labels::secs(&lease.labels, labels::TTL_SECS)
            .map_or(Value::Null, |d| duration::format(d).into()),
    );
    m.insert(
        "idle_timeout".into(),
        labels::secs(&lease.labels, labels::IDLE_TIMEOUT_SECS)
            .map_or(Value::Null, |d| duration::format(d).into()),
    );
    m.insert("state".into(), lease.state().into());
    m.insert(
        "spec_hash".into(),
        lease
            .label(labels::POND_SPEC)
            .map_or(Value::Null, Into::into),
    );
    m.insert(
        "setup_hash".into(),
        lease
            .label(labels::POND_SETUP)
            .map_or(Value::Null, Into::into),
    );
    Value::Object(m)
}

/// A desired member's attributes, with the same keys as [`lease_view`].
#[must_use]
pub fn desired_view(member: &DesiredMember) -> Value {
    let h = SpecHashes::of(member);
    json!({
        "provider": member.provider.as_str(),
        "class": member.class.map(|c| c.as_str()),
        "type": member.server_type,
        "tailscale": member.tailscale,
        "expose": member.expose,
        "keep": member.keep,
        "ttl": duration::format(member.ttl),
        "idle_timeout": duration::format(member.idle_timeout),
        "spec_hash": h.spec,
        "setup_hash": h.setup,
        "depends_on": member.depends_on.iter().map(|(d, c)| json!({"slug": d, "condition": c})).collect::<Vec<_>>(),
        "setup": member.setup,
    })
}

/// The plan as a JSON value.
#[must_use]
pub fn to_value(plan: &Plan) -> Value {
    let changes: Vec<Value> = plan
        .changes
        .iter()
        .map(|c| {
            let before = match (&c.lease, c.action) {
                (Some(l), _) => lease_view(l),
                (None, _) => Value::Null,
            };
            let after = match (&c.desired, c.action) {
                (_, Action::Delete) | (None, _) => Value::Null,
                (Some(m), _) => desired_view(m),
            };
            let mut entry = json!({
                "slug": c.slug,
                "provider": c.provider.as_str(),
                "lease_id": c.lease.as_ref().map(|l| l.id.clone()),
                "change": {
                    "actions": c.action.json_actions(),
                    "before": before,
                    "after": after,
                    "reasons": c.reasons,
                    "attributes": c.attributes,
                    "relabel": c.relabel,
                    "rerun_setup": c.rerun_setup,
                    // What the member runs, interpolated env values hidden.
                    "commands": c.desired.as_ref().map(|m| crate::commands::lines(m, crate::commands::Show::default())),
                    // What the lease last ran, as its claim recorded it (null: not recorded).
                    "commands_before": c.commands_before,
                },
            });
            // Like Terraform's `change.importing`: the lease is taken over,
            // its labels (`attributes`) rewritten.
            if c.action == Action::Adopt {
                entry["change"]["adopting"] = json!({
                    "lease_id": c.lease.as_ref().map(|l| l.id.clone()),
                    "made_by": "crabbox",
                });
            }
            if crate::human::is_kept(c) {
                entry["change"]["kept"] = json!(true);
            }
            entry
        })
        .collect();
    json!({
        "format_version": FORMAT_VERSION,
        "crabbox_version": env!("CARGO_PKG_VERSION"),
        "pond": plan.pond,
        "applyable": true,
        "has_changes": plan.has_changes(),
        "member_changes": changes,
        "output_changes": plan.outputs,
        "forget_claims": plan.forget_claims,
        "inventory": { "unclaimed_leases": plan.unclaimed, "dangling_claims": plan.forget_claims },
        "summary": plan.summary(),
        "warnings": plan.warnings,
    })
}
