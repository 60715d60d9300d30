//! The imperative verbs Crabbox users know — `warmup`, `run`, `release`,
//! `list`, `status` — each a small plan (or a single provider call) on the
//! same machinery as `apply`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::engine::{failure, registry, runtime, store};
use crabbox_apply::discover::{discover, recorded_ponds};
use crabbox_apply::executor::ExecOptions;
use crabbox_apply::progress::{Mode, Reporter};
use crabbox_apply::reconcile::{self, sync_root};
use crabbox_core::lease::Lease;
use crabbox_core::normalize::checked_name;
use crabbox_core::provider::ProviderName;
use crabbox_core::provider::{OutputSink, Stream};
use crabbox_exec::session::ExecRequest;
use crabbox_plan::diff::{PlanOptions, plan};
use crabbox_plan::inventory::Inventory;
use crabbox_plan::{Action, MemberChange, Plan, human};
use crabbox_providers::registry::{Registry, descriptor};
use crabbox_render::peers::{peer_env, peers_from_leases};
use crabbox_spec::desired::{
    DEFAULT_SYNC_MAX_BYTES, DEFAULT_TTL, DesiredMember, DesiredPond, SyncSettings,
};
use crabbox_state::claims::ClaimStore;
use crabbox_state::state_dir::state_dir;

/// `--pond` and `--id` naming one member.
#[derive(Debug, Args)]
pub(super) struct MemberRef {
    /// The pond.
    #[arg(long)]
    pond: String,
    /// The member: its slug or lease ID.
    #[arg(long = "id", alias = "slug", value_name = "SLUG")]
    id: String,
}

fn norm(name: &str, what: &str) -> Option<String> {
    match checked_name(name) {
        Ok(n) => Some(n),
        Err(_) => {
            anstream::eprintln!(
                "error: `{name}` is not a usable {what}\n  help: use letters, digits and `-`, at most 41 characters"
            );
            None
        }
    }
}

fn find_lease(inv: &Inventory, id: &str) -> Result<Lease, String> {
    let slug = crabbox_core::normalize::normalize_name(id);
    let matches: Vec<&Lease> = inv
        .leases
        .iter()
        .filter(|l| l.id == id || l.slug() == slug)
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!(
            "pond `{}` has no member `{id}` (members: {})",
            inv.pond,
            if inv.leases.is_empty() {
                "none".to_owned()
            } else {
                inv.leases
                    .iter()
                    .map(Lease::slug)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )),
        many => Err(format!(
            "`{id}` matches {} leases: {}; name one by its lease ID",
            many.len(),
            many.iter()
                .map(|l| l.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    #[command(flatten)]
    member: MemberRef,
    /// Forward this variable from crabbox's environment to the command
    /// (repeatable). Values never go on a command line: each provider passes
    /// them through its own channel (a stdin script over SSH, a temporary
    /// profile for Tensorlake); only presence and length are printed.
    #[arg(long = "allow-env", value_name = "NAME")]
    allow_env: Vec<String>,
    #[command(flatten)]
    crabbox_only: CrabboxRunOptions,
    /// The command and its arguments (after `--`), run with `sh -c` in the member's workspace.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Options of Crabbox's own `run` that drive a sync target or capture
/// results. crabbox syncs in `apply` (the spec's `sync:`), so these are
/// accepted only to be refused with the reason, instead of clap's bare
/// "unexpected argument" — and Islo and Tensorlake refuse them in Crabbox too.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Crabbox run options (refused, with the reason)")]
struct CrabboxRunOptions {
    /// Sync without running (Crabbox).
    #[arg(long)]
    sync_only: bool,
    /// Checksum-based sync (Crabbox).
    #[arg(long)]
    checksum: bool,
    /// Bypass the sync size guardrail (Crabbox).
    #[arg(long)]
    force_sync_large: bool,
    /// Resync everything (Crabbox).
    #[arg(long)]
    full_resync: bool,
    /// Run a local script (Crabbox).
    #[arg(long, value_name = "FILE")]
    script: Option<String>,
    /// Read the script from stdin (Crabbox).
    #[arg(long)]
    script_stdin: bool,
    /// Fresh PR checkout (Crabbox).
    #[arg(long)]
    fresh_pr: bool,
    /// Capture output on failure (Crabbox).
    #[arg(long)]
    capture_on_fail: bool,
    /// Collect artifacts (Crabbox).
    #[arg(long, value_name = "GLOB")]
    artifact_glob: Option<String>,
    /// Environment helper (Crabbox).
    #[arg(long, value_name = "HELPER")]
    env_helper: Option<String>,
    /// Stop the lease after the run (Crabbox).
    #[arg(long)]
    stop_after: bool,
}

impl CrabboxRunOptions {
    /// The first option given, by its flag.
    fn first_given(&self) -> Option<&'static str> {
        [
            (self.sync_only, "--sync-only"),
            (self.checksum, "--checksum"),
            (self.force_sync_large, "--force-sync-large"),
            (self.full_resync, "--full-resync"),
            (self.script.is_some(), "--script"),
            (self.script_stdin, "--script-stdin"),
            (self.fresh_pr, "--fresh-pr"),
            (self.capture_on_fail, "--capture-on-fail"),
            (self.artifact_glob.is_some(), "--artifact-glob"),
            (self.env_helper.is_some(), "--env-helper"),
            (self.stop_after, "--stop-after"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }
}

/// Why `flag` is refused for a lease on `provider`: its descriptor's
/// reason when the provider owns the command transport.
fn refusal(flag: &str, provider: ProviderName) -> String {
    match descriptor(provider).and_then(|d| d.transport_refusal) {
        Some(why) => format!("`{flag}` is rejected on provider {provider}: {why}"),
        None => format!(
            "`{flag}` is not supported by crabbox run: the repository is synced by `crabbox apply` (the member's `sync:` in pond.yaml, whose size guardrail cannot be forced)"
        ),
    }
}

/// Writes a member's output straight to our stdout/stderr.
struct Passthrough;

impl OutputSink for Passthrough {
    fn line(&self, stream: Stream, line: &str) {
        match stream {
            Stream::Stdout => println!("{line}"),
            Stream::Stderr => eprintln!("{line}"),
        }
    }
}

/// What a `--pond/--id` pair names, and what was used to find it.
struct Resolved {
    pond: String,
    registry: Registry,
    store: ClaimStore,
    rt: tokio::runtime::Runtime,
    inv: Inventory,
    lease: Lease,
}

/// The pond, its inventory and the lease a `--pond/--id` pair names;
/// prints the error and returns `None` when there is no such member.
fn resolve(member: &MemberRef) -> Option<Resolved> {
    let pond = norm(&member.pond, "pond name")?;
    let store = store(None)?;
    let registry = registry(&store);
    let rt = runtime();
    let inv = rt.block_on(discover(&pond, &[], &registry, &state_dir(), &store));
    match find_lease(&inv, &member.id) {
        Ok(lease) => Some(Resolved {
            pond,
            registry,
            store,
            rt,
            inv,
            lease,
        }),
        Err(e) => {
            anstream::eprintln!("error: {e}");
            None
        }
    }
}

pub(super) fn run(args: &RunArgs) -> ExitCode {
    let Some(Resolved {
        pond,
        registry,
        rt,
        inv,
        lease,
        ..
    }) = resolve(&args.member)
    else {
        return failure();
    };
    if let Some(flag) = args.crabbox_only.first_given() {
        anstream::eprintln!(
            "error: {}\n  help: drop the option; run commands with `crabbox run --pond P --id SLUG -- CMD`",
            refusal(flag, lease.provider)
        );
        return failure();
    }
    let provider = match registry.get(lease.provider) {
        Ok(p) => p,
        Err(e) => {
            anstream::eprintln!("error: {e}");
            return failure();
        }
    };
    let reg = registry.clone();
    let peers = peers_from_leases(&pond, &inv.leases, move |p| reg.features(p));
    let mut env = peer_env(&pond, &peers);
    env.insert("CRABBOX_POND".into(), pond.clone());
    env.insert("CRABBOX_SLUG".into(), lease.slug().to_owned());
    for name in &args.allow_env {
        match std::env::var(name) {
            Ok(value) => {
                anstream::eprintln!("forwarding {name} (set, {} chars)", value.chars().count());
                env.insert(name.clone(), value);
            }
            Err(_) => anstream::eprintln!("not forwarding {name} (unset)"),
        }
    }
    // One argument is a whole shell command line (`run -- "make test"`); several are quoted word by word.
    let command = match args.command.as_slice() {
        [line] => line.clone(),
        words => words
            .iter()
            .map(|a| shell_word(a))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let request = ExecRequest {
        command,
        env,
        timeout: None,
    };
    match rt.block_on(
        provider
            .session(&lease)
            .exec(&request, Arc::new(Passthrough)),
    ) {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) => {
            anstream::eprintln!("error: {e}");
            failure()
        }
    }
}

/// Quotes one argument for `sh -c` unless it is plainly safe.
fn shell_word(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

#[derive(Debug, Args)]
pub(super) struct WarmupArgs {
    /// The pond.
    #[arg(long)]
    pond: String,
    /// The member's slug.
    #[arg(long)]
    slug: String,
    /// The provider.
    #[arg(long, default_value = "local", value_parser = parse_provider)]
    provider: ProviderName,
    /// Ports peers reach (repeatable).
    #[arg(long = "expose", value_name = "PORT")]
    expose: Vec<u16>,
    /// Lease lifetime.
    #[arg(long, default_value = "90m")]
    ttl: String,
    /// Keep the lease out of Crabbox's automatic cleanup.
    #[arg(long)]
    keep: bool,
}

fn parse_provider(s: &str) -> Result<ProviderName, String> {
    ProviderName::from_name(s).ok_or_else(|| {
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

pub(super) fn warmup(args: &WarmupArgs) -> ExitCode {
    let (Some(pond), Some(slug)) = (norm(&args.pond, "pond name"), norm(&args.slug, "slug")) else {
        return failure();
    };
    let Some(ttl) = crabbox_core::duration::parse(&args.ttl) else {
        anstream::eprintln!("error: --ttl `{}` is not a duration such as 90m", args.ttl);
        return failure();
    };
    let mut expose = args.expose.clone();
    expose.sort_unstable();
    expose.dedup();
    let member = DesiredMember {
        expose,
        sync: SyncSettings {
            enabled: false,
            exclude: Vec::new(),
            max_bytes: DEFAULT_SYNC_MAX_BYTES,
        },
        ttl: if ttl.is_zero() { DEFAULT_TTL } else { ttl },
        keep: args.keep,
        ..DesiredMember::new(&slug, args.provider)
    };
    let desired = DesiredPond {
        name: pond.clone(),
        written_name: None,
        members: vec![member],
        outputs_dir: None,
        templates: Vec::new(),
        state: crabbox_spec::desired::StateStore::default(),
    };
    let Some(store) = store(None) else {
        return failure();
    };
    let registry = registry(&store);
    let rt = runtime();
    let inv = rt.block_on(discover(
        &pond,
        &[args.provider],
        &registry,
        &state_dir(),
        &store,
    ));
    let options = PlanOptions {
        only: vec![slug.clone()],
        now: crabbox_core::labels::now_secs(),
        ..PlanOptions::default()
    };
    let mut p = match plan(&desired, &inv, &options) {
        Ok(p) => p,
        Err(e) => {
            anstream::eprintln!("error: {e}");
            return failure();
        }
    };
    p.warnings.clear();
    if let Some(existing) = p
        .changes
        .iter()
        .find(|c| c.action != Action::Create)
        .and_then(|c| c.lease.clone())
    {
        anstream::eprintln!(
            "pond `{pond}` already has `{slug}` ({}); warmup is idempotent here and changes nothing",
            existing.id
        );
        return ExitCode::SUCCESS;
    }
    run_small_plan(&rt, &p, Some(&desired), &inv, registry, &store)
}

fn run_small_plan(
    rt: &tokio::runtime::Runtime,
    p: &Plan,
    desired: Option<&DesiredPond>,
    inv: &Inventory,
    registry: crabbox_providers::registry::Registry,
    store: &ClaimStore,
) -> ExitCode {
    let reporter = Arc::new(Reporter::new(Mode::Human));
    let ctx = Arc::new(reconcile::context(
        p,
        desired,
        inv,
        registry,
        &state_dir(),
        store,
        sync_root(&PathBuf::from(".")),
        None,
        reporter.clone(),
    ));
    let (outcome, applied) = rt.block_on(reconcile::apply(p, ctx, &ExecOptions::default(), false));
    anstream::eprintln!(
        "Members: {} added, {} changed, {} destroyed.",
        applied.added,
        applied.changed,
        applied.destroyed
    );
    if outcome.success() {
        ExitCode::SUCCESS
    } else {
        failure()
    }
}

#[derive(Debug, Args)]
pub(super) struct ReleaseArgs {
    #[command(flatten)]
    member: MemberRef,
}

pub(super) fn release(args: &ReleaseArgs) -> ExitCode {
    let Some(Resolved {
        pond,
        registry,
        store,
        rt,
        inv,
        lease,
    }) = resolve(&args.member)
    else {
        return failure();
    };
    let p = Plan {
        pond: pond.clone(),
        changes: vec![MemberChange {
            slug: lease.slug().to_owned(),
            provider: lease.provider,
            action: Action::Delete,
            lease: Some(lease),
            desired: None,
            attributes: Vec::new(),
            reasons: vec!["release requested".to_owned()],
            relabel: false,
            rerun_setup: false,
        }],
        forget_claims: Vec::new(),
        unclaimed: Vec::new(),
        outputs: Vec::new(),
        warnings: Vec::new(),
    };
    anstream::print!("{}", human::render(&p));
    run_small_plan(&rt, &p, None, &inv, registry, &store)
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// The pond (default: every pond this machine knows from claims and pond records).
    #[arg(long)]
    pond: Option<String>,
    /// JSON: an array of leases.
    #[arg(long)]
    json: bool,
}

/// Ponds this machine knows: from the claims in `store` and the per-pond
/// records.
///
/// # Errors
/// The claim store could not be read.
pub(super) async fn known_ponds(store: &ClaimStore) -> std::io::Result<Vec<String>> {
    Ok(recorded_ponds(&state_dir(), store)
        .await?
        .into_iter()
        .collect())
}

pub(super) fn list(args: &ListArgs) -> ExitCode {
    let Some(store) = store(None) else {
        return failure();
    };
    let rt = runtime();
    let ponds = match &args.pond {
        Some(p) => match norm(p, "pond name") {
            Some(p) => vec![p],
            None => return failure(),
        },
        None => match rt.block_on(known_ponds(&store)) {
            Ok(ponds) => ponds,
            Err(e) => {
                anstream::eprintln!(
                    "error: the claim store could not be read: {e}\n  help: check CRABBOX_STATE_URL / the state directory and try again"
                );
                return failure();
            }
        },
    };
    let registry = registry(&store);
    let mut leases = Vec::new();
    // What could be seen is listed; what could not is an error, so the exit
    // status never says "complete" of a partial list.
    let mut complete = true;
    for pond in &ponds {
        let inv = rt.block_on(discover(pond, &[], &registry, &state_dir(), &store));
        for why in inv.unobserved() {
            anstream::eprintln!("error: pond {pond}: {why}");
            complete = false;
        }
        leases.extend(inv.leases);
    }
    let status = if complete {
        ExitCode::SUCCESS
    } else {
        failure()
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&leases).expect("JSON"));
        return status;
    }
    if leases.is_empty() {
        println!("no leases");
        return status;
    }
    println!(
        "{:<18}  {:<20}  {:<16}  {:<10}  {:<8}  ADDRESS",
        "LEASE", "POND", "SLUG", "PROVIDER", "STATE"
    );
    for l in &leases {
        println!(
            "{:<18}  {:<20}  {:<16}  {:<10}  {:<8}  {}",
            l.id,
            l.label("pond").unwrap_or_default(),
            l.slug(),
            l.provider.as_str(),
            l.state(),
            l.endpoint.host.as_deref().unwrap_or("-")
        );
    }
    status
}

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    member: MemberRef,
    /// JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn status(args: &StatusArgs) -> ExitCode {
    let Some(Resolved { lease: l, .. }) = resolve(&args.member) else {
        return failure();
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&l).expect("JSON"));
        return ExitCode::SUCCESS;
    }
    println!(
        "lease     {}\nslug      {}\nprovider  {}\nstate     {}\naddress   {}",
        l.id,
        l.slug(),
        l.provider,
        l.state(),
        l.endpoint.host.as_deref().unwrap_or("-")
    );
    for (k, v) in &l.labels {
        println!("label     {k}={v}");
    }
    ExitCode::SUCCESS
}

#[derive(Debug, Args)]
pub(super) struct PauseArgs {
    #[command(flatten)]
    member: MemberRef,
}

/// `pause` and `resume`: release or restore a lease's compute, keeping the lease and its claim.
pub(super) fn pause_or_resume(args: &PauseArgs, pause: bool) -> ExitCode {
    let Some(Resolved {
        registry,
        rt,
        lease,
        ..
    }) = resolve(&args.member)
    else {
        return failure();
    };
    let provider = match registry.get(lease.provider) {
        Ok(p) => p,
        Err(e) => {
            anstream::eprintln!("error: {e}");
            return failure();
        }
    };
    let result = rt.block_on(async {
        if pause {
            provider.pauser("pause")?.pause(&lease).await
        } else {
            provider.pauser("resume")?.resume(&lease).await
        }
    });
    match result {
        Ok(()) => {
            anstream::eprintln!(
                "{} {} ({}); its claim is kept",
                if pause { "paused" } else { "resumed" },
                lease.slug(),
                lease.id
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            anstream::eprintln!("error: {e}");
            failure()
        }
    }
}
