//! What providers without labels share (static SSH hosts, Islo,
//! Tensorlake): their leases live in crabbox's claims, so listing a pond
//! is reading its claims, and a lease is built from its claim.

use crabbox_core::lease::{Endpoint, Lease};
use crabbox_core::provider::{ProviderError, ProviderName};
use crabbox_state::claims::{Claim, ClaimStore};
use serde_json::Value;

/// The claims of `pond` on `provider` whose resource `exists` (a pending
/// claim whose create never completed is not a lease: discovery reports it
/// as dangling). A store that cannot be read is an error, never "no leases".
///
/// # Errors
/// The claim store could not be read.
pub async fn pond_claims(
    store: &ClaimStore,
    provider: ProviderName,
    pond: &str,
    exists: impl Fn(&Claim) -> bool,
) -> Result<Vec<Claim>, ProviderError> {
    let (claims, _) = store.load_all().await.map_err(ProviderError::state)?;
    Ok(claims
        .into_iter()
        .filter(|c| c.provider == provider.as_str() && c.pond == pond && exists(c))
        .collect())
}

/// The lease a claim stands for, reached at `endpoint`.
#[must_use]
pub fn lease_from_claim(claim: &Claim, provider: ProviderName, endpoint: Endpoint) -> Lease {
    Lease {
        id: claim.lease_id.clone(),
        provider,
        cloud_id: claim.cloud_id.clone(),
        labels: claim.labels.clone(),
        endpoint,
        listed: true,
        claimed: true,
    }
}

/// A non-empty string field the provider keeps in the claim's extra
/// fields (Crabbox's own names, e.g. `staticHost`).
#[must_use]
pub fn extra_str<'a>(claim: &'a Claim, key: &str) -> Option<&'a str> {
    claim
        .extra
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The pending claim a create of a claim-backed provider starts from: the
/// engine writes it before calling `create`, so its absence is a bug, and a
/// store that cannot be read is an error (never "no claim").
///
/// # Errors
/// The store could not be read, or the claim is missing.
pub async fn pending_claim(claims: &ClaimStore, lease_id: &str) -> Result<Claim, ProviderError> {
    claims
        .load(lease_id)
        .await
        .map_err(ProviderError::state)?
        .ok_or_else(|| {
            ProviderError::Failed(format!(
                "the pending claim of {lease_id} is missing; it is written before create"
            ))
        })
}
