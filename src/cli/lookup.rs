//! `--id` resolution as Crabbox does it (run.go:3749-3784,
//! hetzner/backend.go:161-176): a lease ID *or* a slug, looked up across
//! every pond this machine knows (claims, pond records) and every pond the
//! configured providers list — no `--pond` needed. A canonical `cbx_` ID
//! matches only a lease ID, never a slug; a slug that matches several
//! leases is exit 4 listing them, as Crabbox does.

use std::collections::BTreeSet;
use std::process::ExitCode;

use clap::Args;

use super::engine::{registry, runtime, store};
use super::exit::{self, NOT_FOUND, USAGE};
use super::report;
use crabbox_apply::discover::{discover, recorded_ponds};
use crabbox_core::lease::Lease;
use crabbox_core::normalize::{checked_name, normalize_name};
use crabbox_core::provider::{ProviderError, ProviderName};
use crabbox_plan::inventory::Inventory;
use crabbox_providers::registry::Registry;
use crabbox_state::claims::ClaimStore;
use crabbox_state::state_dir::state_dir;

/// `--id` (alias `--slug`), and what narrows the search: `--pond`, `--provider`.
#[derive(Debug, Args, Clone, Default)]
pub(super) struct MemberRef {
    /// The lease: its lease ID or its slug, looked up across every pond.
    #[arg(long = "id", alias = "slug", value_name = "ID|SLUG")]
    pub id: Option<String>,
    /// Look only in this pond.
    #[arg(long)]
    pub pond: Option<String>,
    /// Look only at leases of this provider.
    #[arg(long, value_parser = parse_provider)]
    pub provider: Option<ProviderName>,
}

/// The claim store and the registry of a command that `--provider` may
/// narrow to one provider, or its exit code: a named provider that cannot be
/// used here says why (3 for missing credentials).
pub(super) fn store_and_registry(
    only: Option<ProviderName>,
) -> Result<(ClaimStore, Registry), ExitCode> {
    let Some(store) = store(None) else {
        return Err(exit::code(1));
    };
    let registry = registry(&store);
    if let Some(p) = only
        && let Err(e) = registry.get(p)
    {
        return Err(exit::provider_error("", &e));
    }
    Ok((store, registry))
}

/// A provider name as `--provider` takes it.
pub(super) fn parse_provider(s: &str) -> Result<ProviderName, String> {
    ProviderName::from_cli_name(s).ok_or_else(|| {
        format!(
            "unknown provider `{s}` (one of: {})",
            ProviderName::ALL
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

impl MemberRef {
    /// The identifier from `--id` or the one positional argument, as
    /// Crabbox takes it (lease_flags.go:485-496): both, or neither, is a
    /// usage error (exit 2) printing `usage`.
    pub(super) fn id_or(&self, positional: Option<&str>, usage: &str) -> Result<String, ExitCode> {
        match (self.id.as_deref(), positional) {
            (Some(id), None) | (None, Some(id)) if !id.trim().is_empty() => {
                Ok(id.trim().to_owned())
            }
            _ => {
                anstream::eprintln!("usage: {usage}");
                report::record("usage", &format!("usage: {usage}"), None);
                Err(exit::code(USAGE))
            }
        }
    }
}

/// What an identifier names, and what was used to find it.
pub(super) struct Found {
    /// The lease's pond.
    pub pond: String,
    /// The providers usable here.
    pub registry: Registry,
    /// The claim store.
    pub store: ClaimStore,
    /// The runtime the lookups ran on.
    pub rt: tokio::runtime::Runtime,
    /// The pond's inventory.
    pub inv: Inventory,
    /// The lease.
    pub lease: Lease,
}

/// Whether `id` is Crabbox's canonical lease ID (`cbx_` + 12 lowercase
/// hex, slug.go:13): such an ID is an identity, never a slug.
pub(super) fn is_canonical(id: &str) -> bool {
    id.strip_prefix("cbx_").is_some_and(|hex| {
        hex.len() == 12
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Every pond to search: the one named, else those this machine's state
/// knows and those the configured providers list (restricted to
/// `provider`). Listing errors are returned beside the ponds.
pub(super) async fn ponds(
    store: &ClaimStore,
    registry: &Registry,
    provider: Option<ProviderName>,
) -> Result<(BTreeSet<String>, Vec<(ProviderName, ProviderError)>), String> {
    let mut ponds = recorded_ponds(&state_dir(), store)
        .await
        .map_err(|e| format!("the claim store could not be read: {e}"))?;
    let mut errors = Vec::new();
    for name in registry.configured() {
        if provider.is_some_and(|p| p != name) {
            continue;
        }
        let Ok(p) = registry.get(name) else { continue };
        match p.ponds().await {
            Ok(listed) => ponds.extend(listed),
            Err(e) => errors.push((name, e)),
        }
    }
    Ok((ponds, errors))
}

/// The inventories of `ponds`.
pub(super) async fn inventories(
    ponds: &BTreeSet<String>,
    provider: Option<ProviderName>,
    registry: &Registry,
    store: &ClaimStore,
) -> Vec<Inventory> {
    let wanted: Vec<ProviderName> = provider.into_iter().collect();
    let mut out = Vec::new();
    for pond in ponds {
        out.push(discover(pond, &wanted, registry, &state_dir(), store).await);
    }
    out
}

/// What an identifier names: a live lease, or a claim whose provider was
/// listed and no longer has its lease (dangling).
pub(super) enum Hit {
    /// A live lease.
    Lease(Found),
    /// A dangling claim: its lease ID, and its pond's inventory and tools.
    Dangling(Found, String),
}

/// Finds the lease `id` names; prints why and returns the exit code when
/// there is none (4), several (4), or the providers that might hold it
/// could not be asked (3 for credentials, else 1).
pub(super) fn find(member: &MemberRef, id: &str) -> Result<Found, ExitCode> {
    match search(member, id)? {
        Hit::Lease(found) => Ok(found),
        Hit::Dangling(_, lease_id) => {
            report::error(
                "not-found",
                &format!("lease/server not found: {id}"),
                Some(&format!(
                    "the claim {lease_id} names a lease its provider no longer has; `crabbox release {lease_id}` forgets it"
                )),
            );
            Err(exit::code(NOT_FOUND))
        }
    }
}

/// [`find`], also returning a dangling claim `id` names.
pub(super) fn search(member: &MemberRef, id: &str) -> Result<Hit, ExitCode> {
    let store = store(None).ok_or_else(|| exit::code(1))?;
    let registry = registry(&store);
    let rt = runtime();
    if let Some(p) = member.provider
        && let Err(e) = registry.get(p)
    {
        return Err(exit::provider_error("", &e));
    }
    let ponds = match &member.pond {
        Some(name) => match checked_name(name) {
            Ok(n) => (BTreeSet::from([n]), Vec::new()),
            Err(_) => {
                report::error(
                    "usage",
                    &format!("`{name}` is not a usable pond name"),
                    Some("use letters, digits and `-`, at most 41 characters"),
                );
                return Err(exit::code(USAGE));
            }
        },
        None => match rt.block_on(ponds(&store, &registry, member.provider)) {
            Ok(found) => found,
            Err(e) => {
                report::error("state-unreadable", &e.to_string(), None);
                return Err(exit::code(1));
            }
        },
    };
    let (ponds, mut errors) = ponds;
    let invs = rt.block_on(inventories(&ponds, member.provider, &registry, &store));
    let of_provider = |l: &Lease| member.provider.is_none_or(|p| p == l.provider);
    let all = || {
        invs.iter()
            .flat_map(|inv| inv.leases.iter().map(move |l| (inv, &**l)))
            .filter(|(_, l)| of_provider(l))
    };
    let mut matches: Vec<(&Inventory, &Lease)> = all().filter(|(_, l)| l.id == id).collect();
    if matches.is_empty() && !is_canonical(id) {
        let slug = normalize_name(id);
        // Crabbox's name of the lease first (its `slug` label, unique in the
        // account: `api-1a2b` when another pond had `api`), then the pond
        // member's name, which `--pond` makes unique.
        matches = all().filter(|(_, l)| l.crabbox_slug() == slug).collect();
        if matches.is_empty() {
            matches = all().filter(|(_, l)| l.slug() == slug).collect();
        }
    }
    match matches.as_slice() {
        [(inv, lease)] => {
            let (inv, lease) = ((*inv).clone(), (*lease).clone());
            return Ok(Hit::Lease(Found {
                pond: inv.pond.clone(),
                registry,
                store,
                rt,
                inv,
                lease,
            }));
        }
        [] => {}
        many => {
            // Crabbox's text (run.go:3766-3773), with the pond added.
            let mut text = format!("slug {id:?} matches multiple active leases:");
            for (inv, l) in many {
                text.push_str(&format!(
                    "\n  lease={} slug={} server={} host={} pond={}",
                    l.id,
                    l.crabbox_slug(),
                    if l.cloud_id.is_empty() {
                        "-"
                    } else {
                        &l.cloud_id
                    },
                    l.endpoint.host.as_deref().unwrap_or(""),
                    inv.pond
                ));
            }
            report::error(
                "ambiguous",
                &text,
                Some("name one by its lease ID, or narrow with --pond/--provider"),
            );
            return Err(exit::code(NOT_FOUND));
        }
    }
    // Not live, but claimed here: the claim outlived its lease.
    let slug = normalize_name(id);
    let dangling: Vec<(&Inventory, &crabbox_state::claims::Claim)> = invs
        .iter()
        .flat_map(|inv| inv.dangling_claims.iter().map(move |c| (inv, c)))
        .filter(|(_, c)| member.provider.is_none_or(|p| p.as_str() == c.provider))
        .filter(|(_, c)| c.lease_id == id || (!is_canonical(id) && normalize_name(&c.slug) == slug))
        .collect();
    if let [(inv, claim)] = dangling.as_slice() {
        let lease = crabbox_providers::claim_backed::lease_from_claim(
            claim,
            ProviderName::from_name(&claim.provider).unwrap_or(ProviderName::Local),
            crabbox_core::lease::Endpoint::default(),
        );
        let lease_id = claim.lease_id.clone();
        let inv = (*inv).clone();
        return Ok(Hit::Dangling(
            Found {
                pond: inv.pond.clone(),
                registry,
                store,
                rt,
                inv,
                lease,
            },
            lease_id,
        ));
    }
    // Not seen: a provider that could not be listed may hold it.
    for inv in &invs {
        for (name, e) in &inv.unreachable {
            if member.provider.is_none_or(|p| p == *name) {
                errors.push((*name, e.clone()));
            }
        }
        if let Some(why) = &inv.state_unreadable {
            report::error(
                "state-unreadable",
                &format!("the claim store could not be read: {why}"),
                None,
            );
            return Err(exit::code(1));
        }
    }
    if let Some((name, e)) = errors
        .iter()
        .find(|(_, e)| matches!(e, ProviderError::Credentials { .. }))
        .or_else(|| errors.first())
    {
        let code = exit::provider_error(
            &format!("`{id}` was not found, and provider `{name}` could not be asked: "),
            e,
        );
        return Err(code);
    }
    report::error(
        "not-found",
        &format!("lease/server not found: {id}"),
        Some(
            "`crabbox list` shows the leases this machine can see; `crabbox claims` the local claims",
        ),
    );
    Err(exit::code(NOT_FOUND))
}
