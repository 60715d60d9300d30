//! The plan: what must change for the live pond to match the spec, with the
//! reasons, and its renderings (human, JSON, markdown). Computing a plan is a
//! pure function of the desired pond and the inventory: no I/O here.

pub mod adopt;
pub mod commands;
pub mod diff;
pub mod graph;
pub mod human;
pub mod inventory;
pub mod json;
pub mod markdown;
pub mod saved;

use serde::Serialize;

use std::sync::Arc;

use crabbox_core::lease::Lease;
use crabbox_core::provider::ProviderName;
use crabbox_spec::desired::DesiredMember;

/// What happens to one member (or one stray lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Nothing.
    NoOp,
    /// `+` a new lease: warmup, sync, setup, ready.
    Create,
    /// `~` relabel and/or re-run setup on the existing lease.
    Update,
    /// `-/+` release, then create.
    Replace,
    /// `+/-` create, wait for ready, then release the old lease.
    CreateBeforeDestroy,
    /// `-` release.
    Delete,
    /// `~` write our labels (and claim) on a lease Crabbox's CLI made for
    /// the member, like Terraform's import: the lease is kept.
    Adopt,
}

impl Action {
    /// Terraform's symbol.
    #[must_use]
    pub fn symbol(self) -> &'static str {
        match self {
            Self::NoOp => " ",
            Self::Create => "+",
            Self::Update | Self::Adopt => "~",
            Self::Replace => "-/+",
            Self::CreateBeforeDestroy => "+/-",
            Self::Delete => "-",
        }
    }

    /// Terraform's JSON `actions` list.
    #[must_use]
    pub fn json_actions(self) -> &'static [&'static str] {
        match self {
            Self::NoOp => &["no-op"],
            Self::Create => &["create"],
            // Terraform marks an import beside its actions (`importing`);
            // the JSON rendering adds `adopting` the same way.
            Self::Update | Self::Adopt => &["update"],
            Self::Replace => &["delete", "create"],
            Self::CreateBeforeDestroy => &["create", "delete"],
            Self::Delete => &["delete"],
        }
    }
}

/// One attribute that changes, for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttrChange {
    /// Attribute name (`class`, `expose`, `setup`…).
    pub name: String,
    /// Value on the live lease (`None`: not set / unknown).
    pub before: Option<String>,
    /// Desired value.
    pub after: Option<String>,
    /// Whether this change alone forces a replacement.
    pub forces_replacement: bool,
}

/// The change for one member or stray lease.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberChange {
    /// Normalized slug.
    pub slug: String,
    /// Provider of the desired member, else of the lease.
    pub provider: ProviderName,
    /// What happens.
    pub action: Action,
    /// The live lease this change acts on (kept, updated, replaced or deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<Arc<Lease>>,
    /// The desired member (absent for deletions).
    #[serde(skip)]
    pub desired: Option<DesiredMember>,
    /// Attributes that differ.
    pub attributes: Vec<AttrChange>,
    /// Why, in words (`lease is tainted: setup step 2 exited with 1`).
    pub reasons: Vec<String>,
    /// For updates: labels must be rewritten.
    pub relabel: bool,
    /// For updates: setup must run again.
    pub rerun_setup: bool,
    /// What the live lease last ran ([`commands::lines`], env values from
    /// the environment hidden), when its claim recorded it: the left side
    /// of the setup diff. `None` for leases made before it was recorded, by
    /// Crabbox, or on another machine without a shared state backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commands_before: Option<Vec<String>>,
}

impl MemberChange {
    /// Whether anything happens.
    #[must_use]
    pub fn is_change(&self) -> bool {
        self.action != Action::NoOp
    }
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Normalized pond name.
    pub pond: String,
    /// One entry per desired member and per live lease not matched to one.
    pub changes: Vec<MemberChange>,
    /// Claims to forget (their resource is gone).
    pub forget_claims: Vec<String>,
    /// Leases the providers list that have no local claim (label-only:
    /// created on another machine, or by the Go CLI without a claim here).
    pub unclaimed: Vec<String>,
    /// Rendered output files whose content changes.
    pub outputs: Vec<OutputChange>,
    /// Warnings to show with the plan (targeting, unreachable providers…).
    pub warnings: Vec<String>,
}

/// A rendered output file that the apply will write or change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputChange {
    /// File name inside the output directory.
    pub name: String,
    /// `create` or `update`.
    pub action: &'static str,
    /// Unified diff of old and new content.
    pub diff: String,
}

/// Counts in Terraform's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Summary {
    /// Leases made by Crabbox that are adopted (left out of JSON when 0,
    /// as Terraform leaves out `import` when nothing is imported).
    #[serde(skip_serializing_if = "is_zero")]
    pub adopt: usize,
    /// Leases created (replacements count here too).
    pub add: usize,
    /// Leases updated in place.
    pub change: usize,
    /// Leases released (replacements count here too).
    pub destroy: usize,
}

impl Plan {
    /// Add/change/destroy counts; a replacement counts once in add and once in destroy.
    #[must_use]
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.changes {
            match c.action {
                Action::NoOp => {}
                Action::Create => s.add += 1,
                Action::Update => s.change += 1,
                Action::Replace | Action::CreateBeforeDestroy => {
                    s.add += 1;
                    s.destroy += 1;
                }
                Action::Delete => s.destroy += 1,
                Action::Adopt => s.adopt += 1,
            }
        }
        s
    }

    /// Whether applying would change anything.
    #[must_use]
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(MemberChange::is_change)
            || !self.forget_claims.is_empty()
            || !self.outputs.is_empty()
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &usize) -> bool {
    *n == 0
}
