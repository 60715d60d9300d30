//! What exists for one pond: the planner's input from discovery.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crabbox_core::lease::Lease;
use crabbox_core::provider::{ProviderError, ProviderName};
use crabbox_state::claims::Claim;

/// What exists for one pond.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Normalized pond name.
    pub pond: String,
    /// The pond's leases, sorted by slug then creation time.
    pub leases: Vec<Arc<Lease>>,
    /// Claims of this pond whose resource the provider no longer lists.
    pub dangling_claims: Vec<Claim>,
    /// Providers that could not be listed, with the error. Their leases
    /// were not observed, which is not the same as absent: nothing about
    /// their members may be planned. The error itself is kept (not only its
    /// text) so that commands can exit 3 when the fix is a credential.
    pub unreachable: Vec<(ProviderName, ProviderError)>,
    /// Why the claim store (local files or PostgreSQL) could not be read,
    /// if it could not: claims were not observed either.
    pub state_unreadable: Option<String>,
    /// Non-fatal problems (corrupt claims, foreign resources skipped…).
    pub warnings: Vec<String>,
    /// The providers that were listed.
    pub listed: Vec<ProviderName>,
    /// By lease ID: the commands each lease last ran, as its claim recorded
    /// them after setup (see `commands::lines`), so that a plan can show
    /// what changes instead of two hashes. Looked up by ID only, so
    /// hashed (10,000 entries in a large pond).
    pub applied_commands: FxHashMap<String, Vec<String>>,
}

impl Inventory {
    /// Why this inventory is not a complete observation of the pond, one line
    /// per provider or store that could not be read; empty when it is.
    #[must_use]
    pub fn unobserved(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .unreachable
            .iter()
            .map(|(p, e)| format!("provider `{p}` could not be listed: {}", e.explained()))
            .collect();
        if let Some(why) = &self.state_unreadable {
            out.push(format!("the claim store could not be read: {why}"));
        }
        out
    }

    /// Whether what could not be read refused for credentials alone (every
    /// unlisted provider wanted a credential, and the claim store was read):
    /// then setting the secrets is the whole fix, and Crabbox's exit code 3
    /// says so.
    #[must_use]
    pub fn only_credentials_missing(&self) -> bool {
        self.state_unreadable.is_none()
            && !self.unreachable.is_empty()
            && self.unreachable.iter().all(|(_, e)| e.is_credentials())
    }
}
