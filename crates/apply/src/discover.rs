//! Discovery: one list call per provider, concurrently, merged with the local
//! claim files into the pond's [`Inventory`]. Only resources that carry
//! crabbox's markers for this pond are ever returned.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::Deserialize as _;

use crabbox_core::labels::{self, LabelText};
use crabbox_core::lease::Lease;
use crabbox_core::provider::ProviderName;
use crabbox_core::provider::features_of;
use crabbox_fs::atomic_file;
use crabbox_plan::inventory::Inventory;
use crabbox_providers::claimed_ports;
use crabbox_providers::registry::Registry;
use crabbox_state::claims::{ClaimHead, ClaimStore};

/// Lists every relevant provider for `pond` and merges the claims of
/// `claims` (the command's store).
///
/// Providers listed: those the spec names (`wanted`), those named by this
/// pond's claims, those the pond has used before (the pond record), and every
/// provider configured here — so members removed from the spec are still found.
pub async fn discover(
    pond: &str,
    wanted: &[ProviderName],
    registry: &Registry,
    state_dir: &Path,
    claims: &ClaimStore,
) -> Inventory {
    let mut inv = Inventory {
        pond: pond.to_owned(),
        ..Inventory::default()
    };
    let mut providers: BTreeSet<ProviderName> = wanted.iter().copied().collect();
    match remembered_providers(state_dir, pond) {
        Ok(remembered) => providers.extend(remembered),
        // The record is part of the state: unread, the pond's providers are unknown.
        Err(e) => inv.state_unreadable = Some(e.to_string()),
    }
    // What the pond uses: the spec, its record and (below) its claims.
    let mut used = providers.clone();
    providers.extend(registry.configured());

    // Listing takes round trips to the providers: the claims are read
    // meanwhile, and a provider only they name is listed once they are.
    // The SSH ports the claims record follow once they are read (an
    // SSH-lease cloud need not read a record per lease for them).
    let (send_ports, claimed_ports) = claimed_ports::channel();
    let mut tasks = tokio::task::JoinSet::new();
    let mut spawn = |name: ProviderName, inv: &mut Inventory| match registry.get(name) {
        Ok(provider) => {
            let pond = pond.to_owned();
            let ports = claimed_ports.clone();
            tasks
                .spawn(async move { (name, provider.list_with_claimed_ports(&pond, ports).await) });
        }
        Err(e) => inv.unreachable.push((name, e)),
    };
    for &name in &providers {
        spawn(name, &mut inv);
    }
    // Each claim without its copy of the lease's labels: the listing has
    // them, and copying 10,000 claims' labels was most of reading them.
    let (mut pond_claims, problems, claims_read) = match claims.load_all_heads().await {
        Ok((claims, problems)) => (claims, problems, true),
        Err(e) => {
            inv.state_unreadable = Some(e.to_string());
            (Vec::new(), Vec::new(), false)
        }
    };
    for p in problems {
        inv.warnings.push(format!(
            "skipping claim {}: {}",
            p.path.display(),
            p.message
        ));
    }
    // This pond's, kept in place.
    pond_claims.retain(|c| c.pond == pond);
    if claims_read {
        send_ports.send(
            pond_claims
                .iter()
                .filter(|c| c.ssh_port != 0)
                .map(|c| (c.lease_id.clone(), c.ssh_port))
                .collect(),
        );
    } else {
        // Unsent, the ports are unknown (not "none"): each provider reads its own.
        drop(send_ports);
    }
    let named_by_claims: BTreeSet<ProviderName> = pond_claims
        .iter()
        .filter_map(|c| ProviderName::from_name(&c.provider))
        .filter(|p| !providers.contains(p))
        .collect();
    used.extend(
        pond_claims
            .iter()
            .filter_map(|c| ProviderName::from_name(&c.provider)),
    );
    for name in named_by_claims {
        spawn(name, &mut inv);
    }
    // While the pages are still on their way: what each claim records of
    // what ran, read from the claim's JSON without copying it (10,000
    // claims in a large pond; after the last page they delay the plan).
    let ran: Vec<Option<Result<Vec<String>, String>>> = pond_claims
        .iter()
        .map(|c| {
            c.extra(crabbox_plan::commands::CLAIM_FIELD)
                .map(|record| Vec::<String>::deserialize(record).map_err(|e| e.to_string()))
        })
        .collect();

    // Keyed by inline strings: a lease ID fits, so no key allocates. Hashed
    // with Fx, not SipHash: the keys are lease IDs, and hashing 10,000 of
    // them twice with a hash made to resist chosen keys showed in profiles.
    let mut by_id: FxHashMap<LabelText, Lease> = FxHashMap::default();
    // Each listed lease finds its claim by ID: a scan of the claims per
    // lease was the most of discovering 10,000 members.
    let claim_of: FxHashMap<&str, &ClaimHead> = pond_claims
        .iter()
        .map(|c| (c.lease_id.as_str(), c))
        .collect();
    while let Some(joined) = tasks.join_next().await {
        let Ok((name, result)) = joined else { continue };
        match result {
            Ok(leases) => {
                inv.listed.push(name);
                for mut lease in leases {
                    if let Some(claim) = claim_of.get(lease.id.as_str()) {
                        adopt_claim_labels(&mut lease, claim, pond);
                    }
                    if lease.is_ours(pond) {
                        by_id.insert(lease.id.as_str().into(), lease);
                    } else {
                        inv.warnings.push(format!("ignoring {} resource {}: it does not carry crabbox's markers for pond `{pond}`", name, lease.cloud_id));
                    }
                }
            }
            Err(e) => inv.unreachable.push((name, e)),
        }
    }
    drop(claim_of);
    inv.listed.sort();
    // A provider only configured here (credentials in the environment) that
    // the pond has never used holds none of the members crabbox made for it:
    // not seeing it is a warning. One the pond uses stays unobserved.
    let unreachable = std::mem::take(&mut inv.unreachable);
    for (name, e) in unreachable {
        if used.contains(&name) || inv.state_unreadable.is_some() {
            inv.unreachable.push((name, e));
        } else {
            inv.warnings.push(format!(
                "provider `{name}` could not be listed: {}; this pond has never used it (not in the spec, its claims or its record), so it is left out",
                e.explained()
            ));
        }
    }
    inv.unreachable.sort_by_key(|(name, _)| *name);
    let mut dangling = Vec::new();
    for (claim, ran) in pond_claims.into_iter().zip(ran) {
        if let Some(lease) = by_id.get_mut(claim.lease_id.as_str()) {
            lease.claimed = true;
            // What only the claim knows: the URL bridge's shares.
            if lease.endpoint.shares.is_empty()
                && let Some(shares) = claim.extra(crabbox_state::claims::SHARES_FIELD)
            {
                lease.endpoint.shares = serde_json::from_value(shares.clone()).unwrap_or_default();
            }
            // What ran, for the setup diff; a record that does not read is
            // said, not taken for "never recorded".
            if let Some(ran) = ran {
                match ran {
                    Ok(ran) => {
                        inv.applied_commands.insert(lease.id.clone(), ran);
                    }
                    Err(e) => inv.warnings.push(format!(
                        "the claim of {} records what ran in a form this crabbox cannot read ({e}); its setup changes show without the old commands",
                        lease.id
                    )),
                }
            }
            if lease.endpoint.url.is_none() && !claim.bridge_url.is_empty() {
                lease.endpoint.url = Some(claim.bridge_url.clone());
            }
            crate::tailnet::address_from_claim(lease, &claim);
        } else if ProviderName::from_name(&claim.provider).is_some_and(|p| inv.listed.contains(&p))
        {
            dangling.push(claim.lease_id);
        }
    }
    // A claim whose lease is gone is read whole: `crabbox status` and the
    // lookups show it as the lease it was. Its head read, a whole claim that
    // does not is a store that could not be read, not a claim to pass over.
    for id in dangling {
        match claims.load(&id).await {
            Ok(Some(claim)) => inv.dangling_claims.push(claim),
            // Forgotten since it was read: nothing dangles.
            Ok(None) => {}
            Err(e) => {
                inv.state_unreadable = Some(format!("reading claim {id} again: {e}"));
            }
        }
    }
    let mut leases: Vec<Lease> = by_id.into_values().collect();
    // Each key once: reading labels at every comparison cost more than the
    // rest of discovery. Inline strings: a slug and an ID fit.
    leases.sort_by_cached_key(|l| {
        (
            LabelText::from(l.slug()),
            l.created_at(),
            LabelText::from(l.id.as_str()),
        )
    });
    inv.leases = leases.into_iter().map(Arc::new).collect();
    inv
}

/// A lease of a label-less provider (Islo, Tensorlake, static SSH) made by
/// Crabbox's CLI has no labels: Crabbox writes its claims without them
/// (islo/backend.go:651) and places the lease in the pond by the claim's
/// `pond` alone. Such a lease gets the labels of Crabbox's ownership test
/// from that claim, so that the planner recognises it as a Crabbox-made
/// member to adopt (`Lease::is_crabbox_member`). Leases with labels keep
/// theirs.
fn adopt_claim_labels(lease: &mut Lease, claim: &ClaimHead, pond: &str) {
    if features_of(lease.provider).labels
        || lease.label(labels::CRABBOX).is_some()
        || claim.pond != pond
        || claim.slug.is_empty()
    {
        return;
    }
    for (key, value) in [
        (labels::CRABBOX, "true"),
        (labels::CREATED_BY, "crabbox"),
        (labels::PROVIDER, lease.provider.as_str()),
        (labels::LEASE, lease.id.as_str()),
        (labels::SLUG, claim.slug.as_str()),
        (labels::POND, pond),
    ] {
        lease.labels.insert(key.into(), value.into());
    }
}

/// Every pond this machine's state knows: those with a claim in `claims`,
/// and those with a provider record (a pond whose leases are all on labelled
/// providers has no claims). A state that cannot be read is an error, not
/// "no ponds": callers would otherwise miss leases they must see.
///
/// # Errors
/// The claim store or the pond records could not be read.
pub async fn recorded_ponds(
    state_dir: &Path,
    claims: &ClaimStore,
) -> std::io::Result<BTreeSet<String>> {
    let (claims, _) = claims.load_all().await?;
    let mut ponds: BTreeSet<String> = claims
        .into_iter()
        .map(|c| c.pond)
        .filter(|p| !p.is_empty())
        .collect();
    let records = state_dir.join("ponds");
    let entries = match std::fs::read_dir(&records) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ponds),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("reading {}: {e}", records.display()),
            ));
        }
    };
    for entry in entries {
        let entry = entry?;
        if entry.path().join("providers.json").exists() {
            ponds.insert(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(ponds)
}

fn record_path(state_dir: &Path, pond: &str) -> std::path::PathBuf {
    state_dir.join("ponds").join(pond).join("providers.json")
}

/// Providers this pond has used, from the per-pond record (none when there
/// is no record yet).
///
/// # Errors
/// A record that exists but cannot be read or parsed: what it says is unknown.
pub fn remembered_providers(state_dir: &Path, pond: &str) -> std::io::Result<Vec<ProviderName>> {
    let path = record_path(state_dir, pond);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    let names: Vec<String> = serde_json::from_str(&text).map_err(|e| {
        std::io::Error::other(format!("{} is not a provider list: {e}", path.display()))
    })?;
    Ok(names
        .iter()
        .filter_map(|n| ProviderName::from_name(n))
        .collect())
}

/// Adds providers to the pond's record.
///
/// # Errors
/// I/O errors writing the record.
pub fn remember_providers(
    state_dir: &Path,
    pond: &str,
    used: &[ProviderName],
) -> std::io::Result<()> {
    let mut all: BTreeSet<ProviderName> =
        remembered_providers(state_dir, pond)?.into_iter().collect();
    let before = all.len();
    all.extend(used.iter().copied());
    if all.len() == before && record_path(state_dir, pond).exists() {
        return Ok(());
    }
    let names: Vec<&str> = all.iter().map(|p| p.as_str()).collect();
    atomic_file::write(
        &record_path(state_dir, pond),
        serde_json::to_string(&names)
            .map_err(std::io::Error::other)?
            .as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crabbox_core::provider::ProviderName;

    fn islo_lease(labels: labels::Labels) -> Lease {
        Lease {
            id: "isb_crabbox-repo-0a1b2c".to_owned(),
            provider: ProviderName::Islo,
            cloud_id: "crabbox-repo-0a1b2c".to_owned(),
            labels,
            endpoint: crabbox_core::lease::Endpoint::default(),
            listed: true,
            claimed: true,
        }
    }

    /// A claim as Crabbox writes it for an Islo lease: no `labels`
    /// (internal/providers/islo/backend.go:651), the pond in `pond`.
    fn crabbox_claim(pond: &str) -> ClaimHead {
        ClaimHead {
            lease_id: "isb_crabbox-repo-0a1b2c".to_owned(),
            slug: "api".to_owned(),
            provider: "islo".to_owned(),
            cloud_id: "crabbox-repo-0a1b2c".to_owned(),
            pond: pond.to_owned(),
            ..ClaimHead::default()
        }
    }

    #[test]
    fn a_label_less_lease_of_a_crabbox_claim_is_a_crabbox_member_to_adopt() {
        let mut lease = islo_lease(labels::Labels::new());
        assert!(!lease.is_ours("crab"), "no labels: not recognised before");
        adopt_claim_labels(&mut lease, &crabbox_claim("crab"), "crab");
        assert!(lease.is_ours("crab"));
        assert!(lease.is_unadopted_crabbox_member("crab"));
        assert_eq!(lease.slug(), "api");
    }

    #[test]
    fn claim_labels_are_left_alone_and_other_ponds_get_none() {
        let mut other = islo_lease(labels::Labels::new());
        adopt_claim_labels(&mut other, &crabbox_claim("elsewhere"), "crab");
        assert!(other.labels.is_empty());
        let mut ours = islo_lease([("crabbox".into(), "true".into())].into_iter().collect());
        adopt_claim_labels(&mut ours, &crabbox_claim("crab"), "crab");
        assert_eq!(ours.labels.len(), 1, "a lease with labels keeps its own");
    }
}
