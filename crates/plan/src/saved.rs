//! Saved plans (`plan -o FILE`, `apply FILE`): the plan together with what
//! it was computed from — a hash of the resolved spec and a fingerprint of
//! every lease it read. Applying re-discovers and refuses a pond that changed
//! since (`Saved plan is stale`), then recomputes the plan from the same
//! inputs, which gives the same plan because planning is pure.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::inventory::Inventory;
use crabbox_core::labels::{self, short_hash};
use crabbox_spec::desired::DesiredPond;

/// Version of the saved-plan format.
pub const VERSION: u32 = 1;

/// A saved plan file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedPlan {
    /// Format version.
    pub crabbox_saved_plan: u32,
    /// The spec file, absolute.
    pub spec_file: PathBuf,
    /// Hash of the resolved spec (after interpolation and normalization).
    pub spec_hash: String,
    /// `--pond` override used, if any.
    pub pond_override: Option<String>,
    /// `--only` used.
    pub only: Vec<String>,
    /// `--skip` used.
    pub skip: Vec<String>,
    /// `--replace` used.
    pub replace: Vec<String>,
    /// `--rerun-setup` used (absent in plans saved before it existed).
    #[serde(default)]
    pub rerun_setup: bool,
    /// `--destroy-kept` used (absent in plans saved before it existed).
    #[serde(default)]
    pub destroy_kept: bool,
    /// Lease ID → hash of its labels and state, for every lease read.
    pub fingerprint: BTreeMap<String, String>,
    /// The plan as JSON (for showing and for checking the recomputed plan).
    pub plan: serde_json::Value,
}

/// Hash of a resolved spec.
#[must_use]
pub fn spec_hash(desired: &DesiredPond) -> String {
    short_hash(&serde_json::to_value(desired).unwrap_or_default()).into()
}

/// Fingerprint of every lease (and dangling claim) an inventory holds.
#[must_use]
pub fn fingerprint(inventory: &Inventory) -> BTreeMap<String, String> {
    let mut f: BTreeMap<String, String> = inventory
        .leases
        .iter()
        .map(|l| {
            (
                l.id.clone(),
                short_hash(&serde_json::json!({ "labels": l.labels, "endpoint": l.endpoint }))
                    .into(),
            )
        })
        .collect();
    for c in &inventory.dangling_claims {
        f.insert(c.lease_id.clone(), "dangling-claim".to_owned());
    }
    f
}

/// What changed between two fingerprints, in words; empty when equal.
#[must_use]
pub fn differences(
    saved: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (id, h) in saved {
        match now.get(id) {
            None => out.push(format!("lease {id} no longer exists")),
            Some(n) if n != h => out.push(format!("lease {id} changed (labels or state)")),
            Some(_) => {}
        }
    }
    for id in now.keys().filter(|id| !saved.contains_key(*id)) {
        out.push(format!("lease {id} appeared"));
    }
    out
}

/// Labels whose planned values follow the clock: a touch sets
/// `last_touched_at` to "now" and recomputes `expires_at` from it. A saved
/// plan applied a second later computes other values for them although
/// nothing changed; the settings they derive from (`ttl`, `idle_timeout`)
/// are compared as attributes of their own.
const CLOCK_LABELS: [&str; 2] = [labels::EXPIRES_AT, labels::LAST_TOUCHED_AT];

/// Whether a saved plan's member changes are the ones computed now (both as
/// `json::to_value` renders them), apart from values that follow the clock.
#[must_use]
pub fn same_member_changes(saved: &Value, now: &Value) -> bool {
    let changes = |plan: &Value| {
        let mut changes = plan.get("member_changes").cloned();
        if let Some(c) = &mut changes {
            drop_clock_attributes(c);
        }
        changes
    };
    changes(saved) == changes(now)
}

fn drop_clock_attributes(v: &mut Value) {
    match v {
        Value::Array(items) => {
            items.retain(|item| {
                !item
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| CLOCK_LABELS.contains(&n))
            });
            items.iter_mut().for_each(drop_clock_attributes);
        }
        Value::Object(fields) => fields.values_mut().for_each(drop_clock_attributes),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(touched: &str, keep: &str) -> Value {
        json!({"member_changes": [{"slug": "api", "change": {"attributes": [
            {"name": "expires_at", "before": "1", "after": touched},
            {"name": "keep", "before": "true", "after": keep},
            {"name": "last_touched_at", "before": "1", "after": touched},
        ]}}]})
    }

    #[test]
    fn clock_values_do_not_make_a_saved_plan_stale_other_changes_do() {
        assert!(same_member_changes(
            &plan("100", "false"),
            &plan("101", "false")
        ));
        assert!(!same_member_changes(
            &plan("100", "false"),
            &plan("100", "true")
        ));
        assert!(!same_member_changes(&plan("100", "false"), &json!({})));
    }
}
