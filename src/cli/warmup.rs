//! `crabbox warmup`: create one lease in a pond, with Crabbox's flags
//! (lease_flags.go:58-96, run.go:47-156) and its `leased …` / `ready …`
//! stdout lines, so scripts that parse them keep working.

use std::process::ExitCode;

use clap::{ArgAction, Args};

use super::engine::{registry, runtime, store};
use super::exit::{self, USAGE};
use super::imperative::{parse_duration, run_small_plan};
use super::lookup::parse_provider;
use super::views::leased_line;
use crabbox_apply::discover::discover;
use crabbox_core::normalize::checked_name;
use crabbox_core::provider::ProviderName;
use crabbox_plan::Action;
use crabbox_plan::diff::{PlanOptions, plan};
use crabbox_spec::desired::{
    DEFAULT_SYNC_MAX_BYTES, DEFAULT_TTL, DesiredMember, DesiredPond, SyncSettings,
};
use crabbox_spec::model::Class;
use crabbox_spec::user_config::UserConfig;
use crabbox_state::state_dir::state_dir;

#[derive(Debug, Args)]
pub(super) struct WarmupArgs {
    /// The pond.
    #[arg(long)]
    pond: String,
    /// The member's slug.
    #[arg(long)]
    slug: String,
    /// The provider (default: the configured default provider, else `local`).
    #[arg(long, value_parser = parse_provider)]
    provider: Option<ProviderName>,
    /// Machine size class: tiny, small, standard, fast, large, beast.
    #[arg(long, value_parser = parse_class)]
    class: Option<Class>,
    /// Exact machine type (wins over --class).
    #[arg(long = "type", value_name = "TYPE")]
    server_type: Option<String>,
    /// Ports peers reach (repeatable).
    #[arg(long = "expose", value_name = "PORT")]
    expose: Vec<u16>,
    /// Lease lifetime.
    #[arg(long, default_value = "90m", value_parser = parse_duration)]
    ttl: std::time::Duration,
    /// Idle timeout (default 30m, as Crabbox).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    idle_timeout: Option<std::time::Duration>,
    /// Join the tailnet (hetzner, aws, azure, gcp; see `crabbox --help`
    /// and the README for the auth key).
    #[arg(long)]
    tailscale: bool,
    /// Keep the lease out of automatic cleanup: true by default, as in
    /// Crabbox; `--keep=false` lets cleanup reclaim it once expired.
    #[arg(
        long,
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value_t = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    keep: bool,
}

fn parse_class(s: &str) -> Result<Class, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        format!("unknown class `{s}` (one of: tiny, small, standard, fast, large, beast)")
    })
}

/// The provider `warmup` uses without `--provider`: the one Crabbox's user
/// config names (`provider:` in its files, `CRABBOX_PROVIDER`), else `local`.
/// Crabbox itself falls back to `hetzner`; a bare `warmup` here never rents a
/// server nobody configured.
fn default_provider() -> Result<ProviderName, String> {
    let config = UserConfig::load().map_err(|e| e.to_string())?;
    config
        .configured_provider()
        .map_or(Ok(ProviderName::Local), parse_provider)
}

/// A usage error (exit 2) with what to do.
fn usage(message: &str, help: &str) -> ExitCode {
    anstream::eprintln!("error: {message}\n  help: {help}");
    exit::code(USAGE)
}

pub(super) fn warmup(args: &WarmupArgs) -> ExitCode {
    let (Ok(pond), Ok(slug)) = (checked_name(&args.pond), checked_name(&args.slug)) else {
        return usage(
            &format!(
                "`{}`/`{}` is not a usable pond name/slug",
                args.pond, args.slug
            ),
            "use letters, digits and `-`, at most 41 characters",
        );
    };
    let provider = match args.provider.map_or_else(default_provider, Ok) {
        Ok(provider) => provider,
        Err(e) => {
            return usage(
                &e,
                "fix Crabbox's user config (`crabbox config path` shows it) or pass --provider",
            );
        }
    };
    if args.tailscale
        && let Some(why) = crabbox_spec::check::cannot_join_tailnet(provider)
    {
        return usage(
            &format!("--tailscale: provider `{provider}` cannot join a tailnet: {why}"),
            "drop --tailscale (peers reach each other through CRABBOX_POND_<PEER>_<PORT> and `crabbox pond connect`), or use --provider hetzner, aws, azure or gcp",
        );
    }
    if matches!(provider, ProviderName::Local | ProviderName::Ssh)
        && (args.class.is_some() || args.server_type.is_some())
    {
        anstream::eprintln!(
            "warning: --class/--type have no effect on provider `{provider}`: it uses a machine that already exists"
        );
    }
    let mut expose = args.expose.clone();
    expose.sort_unstable();
    expose.dedup();
    let defaults = DesiredMember::new(&slug, provider);
    let member = DesiredMember {
        expose,
        class: args.class,
        server_type: args.server_type.clone(),
        sync: SyncSettings {
            enabled: false,
            exclude: Vec::new(),
            max_bytes: DEFAULT_SYNC_MAX_BYTES,
        },
        ttl: if args.ttl.is_zero() {
            DEFAULT_TTL
        } else {
            args.ttl
        },
        idle_timeout: args
            .idle_timeout
            .filter(|d| !d.is_zero())
            .unwrap_or(defaults.idle_timeout),
        keep: args.keep,
        tailscale: args.tailscale,
        ..defaults
    };
    let idle = member.idle_timeout;
    let desired = DesiredPond {
        name: pond.clone(),
        written_name: None,
        members: vec![member],
        outputs_dir: None,
        templates: Vec::new(),
        state: crabbox_spec::desired::StateStore::default(),
    };
    let Some(store) = store(None) else {
        return exit::code(1);
    };
    let registry = registry(&store);
    if let Err(e) = registry.get(provider) {
        return exit::provider_error("", &e);
    }
    let rt = runtime();
    let inv = rt.block_on(discover(
        &pond,
        &[provider],
        &registry,
        &state_dir(),
        &store,
    ));
    // A provider the pond uses that could not be listed: say why, with its
    // code (3 for a rejected token), before the planner refuses.
    if let Some((name, e)) = inv.unreachable.first() {
        return exit::provider_error(&format!("provider `{name}` could not be listed: "), e);
    }
    let options = PlanOptions {
        only: vec![slug.clone()],
        now: crabbox_core::labels::now_secs(),
        ..PlanOptions::default()
    };
    let mut p = match plan(&desired, &inv, &options) {
        Ok(p) => p,
        Err(e) => {
            anstream::eprintln!("error: {e}");
            return exit::code(1);
        }
    };
    p.warnings.clear();
    let existing = p
        .changes
        .iter()
        .find(|c| c.action != Action::Create)
        .and_then(|c| c.lease.clone());
    if let Some(existing) = &existing {
        anstream::eprintln!(
            "pond `{pond}` already has `{slug}` ({}); warmup is idempotent here and changes nothing",
            existing.id
        );
    } else {
        if let Some(code) = super::apply::tailnet_key_missing(&p) {
            return code;
        }
        let code = run_small_plan(&rt, &p, Some(&desired), &inv, registry.clone(), &store);
        if code != ExitCode::SUCCESS {
            return code;
        }
    }
    // Crabbox's two stdout lines, from the lease as it is now.
    let inv = rt.block_on(discover(
        &pond,
        &[provider],
        &registry,
        &state_dir(),
        &store,
    ));
    let Some(lease) = inv.leases.iter().find(|l| l.slug() == slug) else {
        anstream::eprintln!(
            "error: `{slug}` was created but is not listed by provider `{provider}`"
        );
        return exit::code(1);
    };
    println!(
        "{}",
        leased_line(lease, super::views::idle_timeout(lease).unwrap_or(idle))
    );
    if let Ok(adapter) = registry.get(provider)
        && let Some(t) = rt.block_on(adapter.ssh_target(lease))
    {
        println!(
            "ready ssh={}@{}:{} network=public workroot={}",
            t.user, t.host, t.port, t.work_root
        );
    }
    ExitCode::SUCCESS
}
