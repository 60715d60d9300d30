//! `crabbox cleanup [--dry-run] [--provider P]`: releases this machine's
//! expired leases by Crabbox's rules (`shouldCleanupServer`,
//! pool.go:535-586): never `keep=true`; `failed`/`released`/`expired` at
//! once; `running`/`provisioning` 12 hours after expiry; any other state
//! once expired; no expiry, no cleanup. Only leases with a claim here are
//! touched ("exact local claim", hetzner/backend.go:250-288). Unlike
//! Crabbox (one provider per call) it covers every provider usable here
//! unless `--provider` names one.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::engine::runtime;
use super::exit;
use super::imperative::run_small_plan;
use super::lookup::{inventories, parse_provider, ponds, store_and_registry};
use super::views::{display_id, server_name};
use crabbox_core::labels;
use crabbox_core::lease::Lease;
use crabbox_core::provider::ProviderName;
use crabbox_plan::{Action, MemberChange, Plan};

#[derive(Debug, Args)]
pub(super) struct CleanupArgs {
    /// Print what would be deleted (`delete server id=… name=…`) and delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Only this provider's leases.
    #[arg(long, value_parser = parse_provider)]
    provider: Option<ProviderName>,
}

/// How long a `running`/`provisioning` lease outlives its expiry (pool.go:553-556).
const BUSY_GRACE_SECS: u64 = 12 * 3600;

/// The lease's expiry in Unix seconds, from `expires_at` (Unix seconds or
/// RFC 3339), else the legacy `ttl` label (pool.go:575-586).
fn expiry(lease: &Lease) -> Option<u64> {
    let parse = |v: &str| {
        v.parse::<u64>().ok().or_else(|| {
            humantime::parse_rfc3339_weak(v)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        })
    };
    lease
        .label(labels::EXPIRES_AT)
        .or_else(|| lease.label("ttl"))
        .and_then(parse)
}

/// Crabbox's decision for one lease at `now`.
fn should_clean(lease: &Lease, now: u64) -> bool {
    if lease.labels.is_empty()
        || lease
            .label(labels::KEEP)
            .is_some_and(|k| k.eq_ignore_ascii_case("true"))
    {
        return false;
    }
    let state = lease.state().to_ascii_lowercase();
    match state.as_str() {
        "failed" | "released" | "expired" => true,
        "running" | "provisioning" => expiry(lease).is_some_and(|e| now > e + BUSY_GRACE_SECS),
        _ => expiry(lease).is_some_and(|e| now > e),
    }
}

pub(super) fn cleanup(args: &CleanupArgs) -> ExitCode {
    let (store, registry) = match store_and_registry(args.provider) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let rt = runtime();
    let (ponds, errors) = match rt.block_on(ponds(&store, &registry, args.provider)) {
        Ok(found) => found,
        Err(e) => {
            anstream::eprintln!("error: {e}");
            return exit::code(1);
        }
    };
    let mut status = ExitCode::SUCCESS;
    for (name, e) in &errors {
        status = exit::provider_error(&format!("provider `{name}`: "), e);
    }
    let now = labels::now_secs();
    let mut by_pond: BTreeMap<String, (crabbox_plan::inventory::Inventory, Vec<Arc<Lease>>)> =
        BTreeMap::new();
    for inv in rt.block_on(inventories(&ponds, args.provider, &registry, &store)) {
        for why in inv.unobserved() {
            anstream::eprintln!(
                "warning: pond {}: {why}; its leases there are not cleaned",
                inv.pond
            );
        }
        let due: Vec<Arc<Lease>> = inv
            .leases
            .iter()
            .filter(|l| args.provider.is_none_or(|p| p == l.provider))
            .filter(|l| {
                if !l.claimed {
                    anstream::eprintln!(
                        "skip {} ({}): exact local claim missing or stale",
                        l.id,
                        l.slug()
                    );
                }
                l.claimed && should_clean(l, now)
            })
            .cloned()
            .collect();
        if !due.is_empty() {
            by_pond.insert(inv.pond.clone(), (inv, due));
        }
    }
    for (pond, (inv, due)) in by_pond {
        for l in &due {
            if args.dry_run {
                // Crabbox's dry-run line (hetzner/backend.go:268).
                println!("delete server id={} name={}", display_id(l), server_name(l));
            } else {
                anstream::eprintln!(
                    "deleting {} ({}, pond {pond}, state {})",
                    l.id,
                    l.slug(),
                    l.state()
                );
            }
        }
        if args.dry_run {
            continue;
        }
        let p = Plan {
            pond: pond.clone(),
            changes: due
                .into_iter()
                .map(|l| MemberChange {
                    slug: l.slug().to_owned(),
                    provider: l.provider,
                    action: Action::Delete,
                    lease: Some(l),
                    desired: None,
                    attributes: Vec::new(),
                    reasons: vec!["expired (crabbox cleanup)".to_owned()],
                    relabel: false,
                    rerun_setup: false,
                    commands_before: None,
                })
                .collect(),
            forget_claims: Vec::new(),
            unclaimed: Vec::new(),
            outputs: Vec::new(),
            warnings: Vec::new(),
        };
        let code = run_small_plan(&rt, &p, None, &inv, registry.clone(), &store);
        if code != ExitCode::SUCCESS {
            status = code;
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(labels: &[(&str, &str)]) -> Lease {
        let mut l: Lease = serde_json::from_value(serde_json::json!({
            "id": "cbx_000000000001", "provider": "local", "cloud_id": "x", "labels": {},
        }))
        .expect("a lease");
        l.labels = labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        l
    }

    /// Crabbox's table (pool.go:535-569).
    #[test]
    fn cleanup_follows_crabboxs_rules() {
        let now = 1_000_000;
        let past = (now - 10).to_string();
        let recent = (now - 3600).to_string();
        let future = (now + 10).to_string();
        assert!(!should_clean(&lease(&[]), now), "no labels");
        assert!(!should_clean(
            &lease(&[("keep", "TRUE"), ("state", "failed")]),
            now
        ));
        assert!(
            should_clean(&lease(&[("state", "failed")]), now),
            "failed at once"
        );
        assert!(should_clean(
            &lease(&[("state", "ready"), ("expires_at", &past)]),
            now
        ));
        assert!(!should_clean(
            &lease(&[("state", "ready"), ("expires_at", &future)]),
            now
        ));
        assert!(!should_clean(
            &lease(&[("state", "running"), ("expires_at", &recent)]),
            now
        ));
        assert!(should_clean(
            &lease(&[
                ("state", "running"),
                ("expires_at", &(now - BUSY_GRACE_SECS - 1).to_string())
            ]),
            now
        ));
        assert!(
            !should_clean(&lease(&[("state", "ready")]), now),
            "no expiry"
        );
    }
}
