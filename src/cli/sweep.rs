//! `crabbox sweep`: the scheduled clean-up a CI system runs because a
//! pull request's `closed` run does not always fire. Finds every pond this
//! machine can see (provider labels, claims, pond records) and destroys those
//! whose every lease has expired and, with `--prefix`, those not in `--keep`
//! (the open pull requests).

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::engine::{failure, registry, runtime, store};
use crabbox_apply::discover::{discover, recorded_ponds};
use crabbox_core::labels::{self, now_secs};
use crabbox_core::lease::Lease;
use crabbox_state::claims::ClaimStore;
use crabbox_state::state_dir::state_dir;

#[derive(Debug, Args)]
pub(super) struct SweepArgs {
    /// Ponds whose names start with this prefix are per-pull-request ponds
    /// (`pr-`): any of them not named in --keep is destroyed.
    #[arg(long)]
    prefix: Option<String>,
    /// Ponds to keep, comma-separated or repeated (the open pull requests,
    /// e.g. from `gh pr list`).
    #[arg(long, value_delimiter = ',')]
    keep: Vec<String>,
    /// Show what would be destroyed, and why, without destroying anything.
    #[arg(long)]
    dry_run: bool,
}

/// Why a pond is swept, if it is.
fn verdict(pond: &str, leases: &[Arc<Lease>], args: &SweepArgs, now: u64) -> Option<String> {
    if leases.is_empty() {
        return None;
    }
    if let Some(prefix) = &args.prefix
        && pond.starts_with(prefix.as_str())
        && !args
            .keep
            .iter()
            .any(|k| crabbox_core::normalize::normalize_name(k) == pond)
    {
        return Some(format!("matches --prefix {prefix} and is not kept"));
    }
    // `keep=true` leases are never swept for age, as in Crabbox's own cleanup.
    let expired = |l: &Arc<Lease>| {
        l.label(labels::KEEP) != Some("true") && crabbox_core::expiry::is_expired(&l.labels, now)
    };
    leases.iter().all(expired).then(|| {
        format!(
            "every lease expired ({} lease{})",
            leases.len(),
            if leases.len() == 1 { "" } else { "s" }
        )
    })
}

/// Every pond this machine can find: claims, pond records, provider labels.
///
/// # Errors
/// The claim store could not be read.
fn all_ponds(
    rt: &tokio::runtime::Runtime,
    registry: &crabbox_providers::registry::Registry,
    store: &ClaimStore,
) -> std::io::Result<BTreeSet<String>> {
    let mut ponds = rt.block_on(recorded_ponds(&state_dir(), store))?;
    for name in registry.configured() {
        let Ok(provider) = registry.get(name) else {
            continue;
        };
        match rt.block_on(provider.ponds()) {
            Ok(found) => ponds.extend(found),
            Err(e) => anstream::eprintln!("warning: provider `{name}` could not be listed: {e}"),
        }
    }
    Ok(ponds)
}

pub(super) fn run(args: &SweepArgs) -> ExitCode {
    let Some(store) = store(None) else {
        return ExitCode::from(1);
    };
    let registry = registry(&store);
    let rt = runtime();
    let now = now_secs();
    let mut doomed = Vec::new();
    let ponds = match all_ponds(&rt, &registry, &store) {
        Ok(ponds) => ponds,
        Err(e) => {
            anstream::eprintln!(
                "error: the claim store could not be read: {e}\n  help: check CRABBOX_STATE_URL / the state directory and run the sweep again"
            );
            return ExitCode::from(1);
        }
    };
    let mut unobserved = 0;
    for pond in ponds {
        let inv = rt.block_on(discover(&pond, &[], &registry, &state_dir(), &store));
        let missing = inv.unobserved();
        if !missing.is_empty() {
            // Expiry cannot be judged from part of a pond.
            anstream::eprintln!("error: pond {pond} is left alone: {}", missing.join("; "));
            unobserved += 1;
            continue;
        }
        match verdict(&pond, &inv.leases, args, now) {
            Some(why) => {
                println!(
                    "{} pond {pond}: {why}",
                    if args.dry_run {
                        "would destroy"
                    } else {
                        "destroying"
                    }
                );
                doomed.push(pond);
            }
            None if !inv.leases.is_empty() => println!(
                "keeping pond {pond} ({} lease{})",
                inv.leases.len(),
                if inv.leases.len() == 1 { "" } else { "s" }
            ),
            None => {}
        }
    }
    drop(rt);
    if args.dry_run {
        println!(
            "Sweep plan: {} pond{} to destroy.",
            doomed.len(),
            if doomed.len() == 1 { "" } else { "s" }
        );
        return if unobserved == 0 {
            ExitCode::SUCCESS
        } else {
            failure()
        };
    }
    let mut failed = unobserved;
    for pond in &doomed {
        if super::apply::destroy(&super::apply::DestroyArgs::for_pond(pond)) != ExitCode::SUCCESS {
            failed += 1;
        }
    }
    println!(
        "Sweep complete! Ponds: {} destroyed, {failed} failed.",
        doomed.len() + unobserved - failed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        failure()
    }
}
