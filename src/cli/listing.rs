//! `crabbox list [--provider P] [--pond NAME] [--all] [--json]`: the leases
//! this machine can see, across every pond (claims, pond records, and the
//! ponds the configured providers list). `--json` prints Crabbox's shape, a
//! JSON array of its `Server` (pool.go:84-86, hcloud.go:97-129).

use std::collections::BTreeSet;
use std::process::ExitCode;

use clap::Args;

use super::engine::runtime;
use super::exit::{self, USAGE};
use super::lookup::{inventories, parse_provider, ponds, store_and_registry};
use super::views::Server;
use crabbox_core::human_time;
use crabbox_core::normalize::checked_name;
use crabbox_core::provider::ProviderName;

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// Only this provider's leases (default: every provider usable here;
    /// Crabbox lists one provider per call).
    #[arg(long, value_parser = parse_provider)]
    provider: Option<ProviderName>,
    /// Only this pond's leases.
    #[arg(long)]
    pond: Option<String>,
    /// Crabbox: also list provider resources crabbox did not make. No
    /// provider here lists such inventory, so this changes nothing.
    #[arg(long)]
    all: bool,
    /// JSON: an array of Crabbox's `Server` objects.
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) fn list(args: &ListArgs) -> ExitCode {
    let (store, registry) = match store_and_registry(args.provider) {
        Ok(found) => found,
        Err(code) => return code,
    };
    if args.all {
        anstream::eprintln!(
            "note: --all: no provider here lists resources crabbox did not make; listing crabbox's leases"
        );
    }
    let rt = runtime();
    let (ponds, errors) = match &args.pond {
        Some(p) => match checked_name(p) {
            Ok(p) => (BTreeSet::from([p]), Vec::new()),
            Err(_) => {
                super::report::error(
                    "usage",
                    &format!("`{p}` is not a usable pond name"),
                    Some("use letters, digits and `-`, at most 41 characters"),
                );
                return exit::code(USAGE);
            }
        },
        None => match rt.block_on(ponds(&store, &registry, args.provider)) {
            Ok(found) => found,
            Err(e) => {
                super::report::error(
                    "state-unreadable",
                    &e.to_string(),
                    Some("check CRABBOX_STATE_URL / the state directory and try again"),
                );
                return exit::code(1);
            }
        },
    };
    // What could be seen is listed; what could not is an error, so the exit
    // status never says "complete" of a partial list.
    let mut code = None;
    for (name, e) in &errors {
        code.get_or_insert(exit::provider_error(&format!("provider `{name}`: "), e));
    }
    let invs = rt.block_on(inventories(&ponds, args.provider, &registry, &store));
    let mut leases = Vec::new();
    for inv in invs {
        for (name, e) in &inv.unreachable {
            if args.provider.is_none_or(|p| p == *name) {
                code.get_or_insert(exit::provider_error(
                    &format!("pond {}: provider `{name}`: ", inv.pond),
                    e,
                ));
            }
        }
        if let Some(why) = &inv.state_unreadable {
            super::report::error(
                "state-unreadable",
                &format!(
                    "pond {}: the claim store could not be read: {why}",
                    inv.pond
                ),
                None,
            );
            code.get_or_insert(exit::code(1));
        }
        leases.extend(
            inv.leases
                .into_iter()
                .filter(|l| args.provider.is_none_or(|p| p == l.provider)),
        );
    }
    let status = code.unwrap_or(ExitCode::SUCCESS);
    if args.json {
        super::report::printed_document();
        let servers: Vec<Server> = leases.iter().map(|l| Server::of(l)).collect();
        println!("{}", serde_json::to_string(&servers).expect("JSON"));
        return status;
    }
    if leases.is_empty() {
        println!("no leases");
        return status;
    }
    println!(
        "{:<18}  {:<20}  {:<16}  {:<10}  {:<8}  {:<15}  EXPIRY",
        "LEASE", "POND", "SLUG", "PROVIDER", "STATE", "ADDRESS"
    );
    let now = crabbox_core::labels::now_secs();
    for l in &leases {
        println!(
            "{:<18}  {:<20}  {:<16}  {:<10}  {:<8}  {:<15}  {}",
            l.id,
            l.label("pond").unwrap_or_default(),
            l.crabbox_slug(),
            l.provider.as_str(),
            l.state(),
            l.endpoint.host.as_deref().unwrap_or("-"),
            crabbox_core::expiry::expires_at(&l.labels)
                .map_or_else(|| "-".to_owned(), |at| human_time::expiry(at, now))
        );
    }
    status
}
