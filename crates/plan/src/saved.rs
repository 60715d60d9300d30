//! Saved plans (`plan -o FILE`, `apply FILE`): the plan together with what
//! it was computed from — a hash of the resolved spec and a fingerprint of
//! every lease it read. Applying re-discovers and refuses a pond that changed
//! since (`Saved plan is stale`), then recomputes the plan from the same
//! inputs, which gives the same plan because planning is pure.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::inventory::Inventory;
use crabbox_core::labels::short_hash;
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
    short_hash(&serde_json::to_value(desired).unwrap_or_default())
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
                short_hash(&serde_json::json!({ "labels": l.labels, "endpoint": l.endpoint })),
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
