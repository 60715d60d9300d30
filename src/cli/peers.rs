//! `crabbox peers`, `crabbox render` and `crabbox pond peers`: how members
//! reach each other, from the live pond.

use std::process::ExitCode;

use clap::Args;

use super::SpecArgs;
use super::engine::{failure, load_spec, registry, runtime, store};
use crabbox_apply::discover::discover;
use crabbox_apply::reconcile::{observe, outputs_dir, templates};
use crabbox_core::normalize::checked_name;
use crabbox_core::provider::ProviderName;
use crabbox_plan::inventory::Inventory;
use crabbox_providers::registry::Registry;
use crabbox_render::files::{output_files, peers_json, write_outputs};
use crabbox_render::peers::{Peer, peers_from_leases};
use crabbox_state::state_dir::state_dir;

#[derive(Debug, Args)]
pub(super) struct PeersArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// The pond to show, by name (no spec needed).
    #[arg(long)]
    pond: Option<String>,
    /// Only this provider's members.
    #[arg(long, value_parser = super::lookup::parse_provider)]
    provider: Option<ProviderName>,
    /// Crabbox's `pond peers --json` shape: {"members": [...]}.
    #[arg(long)]
    pub(super) json: bool,
    /// Publish this port of every URL-bridge member (reusing a live share) and show its URL.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    share_port: Option<u16>,
    /// Lifetime of a share made by --share-port (60s to 7 days).
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    share_ttl: std::time::Duration,
}

fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    crabbox_core::duration::parse(s).ok_or_else(|| format!("`{s}` is not a duration such as 24h"))
}

/// Finds the pond by `--pond NAME`, or by the spec; with the registry
/// built for the state the spec (or the environment) chose. The error is
/// the exit code, after saying why (3 when a provider rejected or lacks
/// its credentials).
pub(super) fn pond_inventory(
    rt: &tokio::runtime::Runtime,
    spec: &SpecArgs,
    pond: Option<&str>,
) -> Result<(String, Inventory, Registry), ExitCode> {
    let (name, inv, registry) = if let Some(name) = pond.filter(|_| !spec.file.exists()) {
        let Ok(name) = checked_name(name) else {
            super::report::error(
                "usage",
                &format!("`{name}` is not a usable pond name"),
                None,
            );
            return Err(super::exit::code(super::exit::USAGE));
        };
        let store = store(None).ok_or_else(failure)?;
        let registry = registry(&store);
        let inv = rt.block_on(discover(&name, &[], &registry, &state_dir(), &store));
        (name, inv, registry)
    } else {
        let loaded = load_spec(spec, pond).ok_or_else(failure)?;
        let store = store(Some(&loaded.desired)).ok_or_else(failure)?;
        let registry = super::engine::registry_for(&store, &loaded.desired);
        let inv = rt.block_on(observe(&loaded.desired, &registry, &state_dir(), &store));
        (loaded.desired.name.clone(), inv, registry)
    };
    if fully_observed(&inv) {
        return Ok((name, inv, registry));
    }
    // Credentials missing or rejected: Crabbox's 3; anything else 1.
    if inv.unreachable.iter().any(|(_, e)| e.is_credentials()) {
        return Err(super::exit::code(super::exit::CREDENTIALS));
    }
    Err(failure())
}

/// Whether every provider and the claim store could be read; says what
/// could not otherwise. Peers and rendered files describe the whole pond,
/// so a partial view is an error, never a shorter list.
fn fully_observed(inv: &Inventory) -> bool {
    let missing = inv.unobserved();
    let hint = "fix the cause above and try again: the pond's members there cannot be seen";
    for why in &missing {
        anstream::eprintln!("error: {why}");
        super::report::record("unobserved", why, Some(hint));
    }
    if !missing.is_empty() {
        anstream::eprintln!("  help: {hint}");
    }
    missing.is_empty()
}

pub(super) fn peers_of(pond: &str, inv: &Inventory, registry: &Registry) -> Vec<Peer> {
    let reg = registry.clone();
    peers_from_leases(pond, &inv.leases, move |p| reg.features(p))
}

/// Prints peers as JSON or a table.
pub(super) fn print_peers(peers: &[Peer], json: bool) {
    if json {
        super::report::printed_document();
        print!("{}", peers_json(peers));
        return;
    }
    if peers.is_empty() {
        println!("no members");
        return;
    }
    let w = peers.iter().map(|p| p.slug.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<w$}  {:<10}  {:<9}  {:<24}  LEASE",
        "SLUG", "PROVIDER", "TRANSPORT", "ENDPOINT"
    );
    for p in peers {
        let ports = p
            .ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let endpoint = if ports.is_empty() {
            p.endpoint.clone()
        } else {
            format!("{} ({ports})", p.endpoint)
        };
        println!(
            "{:<w$}  {:<10}  {:<9}  {:<24}  {}",
            p.slug,
            p.provider.as_str(),
            p.transport,
            endpoint,
            p.lease_id
        );
    }
}

impl PeersArgs {
    /// `pond peers --pond NAME [--provider P] [--share-port N --share-ttl D]`.
    pub(super) fn for_pond(
        name: &str,
        json: bool,
        provider: Option<ProviderName>,
        share_port: Option<u16>,
        share_ttl: std::time::Duration,
    ) -> Self {
        Self {
            spec: SpecArgs::none(),
            pond: Some(name.to_owned()),
            provider,
            json,
            share_port,
            share_ttl,
        }
    }
}

pub(super) fn peers(args: &PeersArgs) -> ExitCode {
    let rt = runtime();
    let (pond, mut inv, registry) = match pond_inventory(&rt, &args.spec, args.pond.as_deref()) {
        Ok(found) => found,
        Err(code) => return code,
    };
    if let Some(only) = args.provider {
        inv.leases.retain(|l| l.provider == only);
    }
    let mut published = Vec::new();
    if let Some(port) = args.share_port {
        for lease in &mut inv.leases {
            let lease = std::sync::Arc::make_mut(lease);
            let Ok(provider) = registry.get(lease.provider) else {
                continue;
            };
            if !crabbox_core::provider::features_of(provider.name()).url_bridge {
                anstream::eprintln!(
                    "note: {} ({}) has no URL bridge: port {port} is not published; peers reach it {}",
                    lease.slug(),
                    lease.provider,
                    if crabbox_core::provider::features_of(provider.name()).local {
                        "on its loopback address"
                    } else {
                        "over SSH (`crabbox pond connect`)"
                    }
                );
                continue;
            }
            match rt.block_on(async { provider.bridge()?.share(lease, port, args.share_ttl).await })
            {
                Ok(share) => {
                    lease.endpoint.shares.retain(|s| s.port != port);
                    lease.endpoint.url.get_or_insert_with(|| share.url.clone());
                    published.push((lease.id.clone(), share.clone()));
                    lease.endpoint.shares.push(share);
                }
                Err(e) => {
                    super::report::error(
                        super::exit::provider_diagnostic_code(&e),
                        &format!("sharing port {port} of {}: {e}", lease.slug()),
                        None,
                    );
                    return failure();
                }
            }
        }
    }
    for w in &inv.warnings {
        anstream::eprintln!("warning: {w}");
    }
    let mut peers = peers_of(&pond, &inv, &registry);
    for (lease_id, share) in &published {
        if let Some(peer) = peers.iter_mut().find(|p| &p.crabbox.lease_id == lease_id) {
            crabbox_render::bridge::add_published(&mut peer.crabbox, share);
        }
    }
    print_peers(&peers, args.json);
    ExitCode::SUCCESS
}

#[derive(Debug, Args)]
pub(super) struct RenderArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Use this pond name instead of the spec's.
    #[arg(long)]
    pond: Option<String>,
}

pub(super) fn render(args: &RenderArgs) -> ExitCode {
    let Some(loaded) = load_spec(&args.spec, args.pond.as_deref()) else {
        return failure();
    };
    let Some(store) = store(Some(&loaded.desired)) else {
        return failure();
    };
    let registry = super::engine::registry_for(&store, &loaded.desired);
    let rt = runtime();
    let inv = rt.block_on(observe(&loaded.desired, &registry, &state_dir(), &store));
    if !fully_observed(&inv) {
        return failure();
    }
    let peers = peers_of(&loaded.desired.name, &inv, &registry);
    let files = match templates(&loaded.desired)
        .and_then(|t| output_files(&loaded.desired.name, &peers, &t))
    {
        Ok(f) => f,
        Err(e) => {
            anstream::eprintln!("error: {e}");
            return failure();
        }
    };
    let dir = outputs_dir(&loaded.desired);
    let files = crabbox_apply::steps::without_mesh_files(&dir, files);
    if let Err(e) = write_outputs(&dir, &files) {
        anstream::eprintln!("error: writing {}: {e}", dir.display());
        return failure();
    }
    if let Err(e) =
        crabbox_render::written::remember(&state_dir(), &loaded.desired.name, &dir, &files)
    {
        anstream::eprintln!("error: recording the outputs written: {e}");
        return failure();
    }
    for f in &files {
        println!("{}", dir.join(&f.name).display());
    }
    ExitCode::SUCCESS
}
