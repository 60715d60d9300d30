//! The imperative verbs Crabbox users know — `run`, `release`/`stop`,
//! `status`, `pause`/`resume` — each a small plan (or a single provider
//! call) on the same machinery as `apply`, naming the lease with `--id` as
//! Crabbox does (see `lookup`), and exiting with Crabbox's codes (`exit`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use super::engine::failure;
use super::exit::{self, REMOTE, TIMEOUT, USAGE};
use super::lookup::{Found, Hit, MemberRef, find, search};
use super::views::StatusView;
use crabbox_apply::discover::recorded_ponds;
use crabbox_apply::executor::ExecOptions;
use crabbox_apply::progress::{Mode, Reporter};
use crabbox_apply::reconcile::{self, sync_root};
use crabbox_core::provider::{OutputSink, ProviderError, ProviderName, Stream};
use crabbox_exec::session::ExecRequest;
use crabbox_plan::inventory::Inventory;
use crabbox_plan::{Action, MemberChange, Plan, human};
use crabbox_providers::registry::descriptor;
use crabbox_render::peers::{peer_env, peers_from_leases};
use crabbox_spec::desired::DesiredPond;
use crabbox_state::claims::ClaimStore;
use crabbox_state::state_dir::state_dir;

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
pub(super) struct Passthrough;

impl OutputSink for Passthrough {
    fn line(&self, stream: Stream, line: &str) {
        match stream {
            Stream::Stdout => println!("{line}"),
            Stream::Stderr => eprintln!("{line}"),
        }
    }
}

/// The lease `member` names (with `positional` as Crabbox's positional
/// ID), or the exit code after saying why not.
pub(super) fn found(
    member: &MemberRef,
    positional: Option<&str>,
    usage: &str,
) -> Result<Found, ExitCode> {
    let id = member.id_or(positional, usage)?;
    find(member, &id)
}

pub(super) fn run(args: &RunArgs) -> ExitCode {
    let Found {
        pond,
        registry,
        rt,
        inv,
        lease,
        ..
    } = match found(
        &args.member,
        None,
        "crabbox run --id <lease-id-or-slug> -- <command...>",
    ) {
        Ok(f) => f,
        Err(code) => return code,
    };
    if let Some(flag) = args.crabbox_only.first_given() {
        anstream::eprintln!(
            "error: {}\n  help: drop the option; run commands with `crabbox run --id SLUG -- CMD`",
            refusal(flag, lease.provider)
        );
        return exit::code(USAGE);
    }
    let provider = match registry.get(lease.provider) {
        Ok(p) => p,
        Err(e) => return exit::provider_error("", &e),
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
            .map(|a| super::views::shell_word(a))
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
        // The command never ran to an exit status: the remote side failed
        // (Crabbox's 7), unless the provider refused the credentials (3).
        Err(e @ ProviderError::Credentials { .. }) => exit::provider_error("", &e),
        Err(e) => {
            anstream::eprintln!("error: running on {} ({}): {e}", lease.slug(), lease.id);
            exit::code(REMOTE)
        }
    }
}

pub(super) fn run_small_plan(
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
    /// The lease ID or slug (instead of --id).
    #[arg(value_name = "ID|SLUG")]
    lease: Option<String>,
}

/// `release`/`stop`: deletes the lease. A claim whose lease its provider
/// no longer has is forgotten, as Crabbox counts a 404 on release as
/// released and removes the claim (hetzner/backend.go:341-369).
pub(super) fn release(args: &ReleaseArgs) -> ExitCode {
    let id = match args.member.id_or(
        args.lease.as_deref(),
        "crabbox stop --id <lease-or-server-id>",
    ) {
        Ok(id) => id,
        Err(code) => return code,
    };
    let (found, dangling) = match search(&args.member, &id) {
        Ok(Hit::Lease(f)) => (f, None),
        Ok(Hit::Dangling(f, lease_id)) => (f, Some(lease_id)),
        Err(code) => return code,
    };
    let Found {
        pond,
        registry,
        store,
        rt,
        inv,
        lease,
    } = found;
    if let Some(lease_id) = dangling {
        let p = Plan {
            pond: pond.clone(),
            changes: Vec::new(),
            forget_claims: vec![lease_id.clone()],
            unclaimed: Vec::new(),
            outputs: Vec::new(),
            warnings: Vec::new(),
        };
        anstream::eprintln!(
            "{lease_id} ({}) is gone from provider {}; forgetting its claim",
            lease.slug(),
            lease.provider
        );
        return run_small_plan(&rt, &p, None, &inv, registry, &store);
    }
    let p = Plan {
        pond: pond.clone(),
        changes: vec![MemberChange {
            slug: lease.slug().to_owned(),
            provider: lease.provider,
            action: Action::Delete,
            lease: Some(std::sync::Arc::new(lease)),
            desired: None,
            attributes: Vec::new(),
            reasons: vec!["release requested".to_owned()],
            relabel: false,
            rerun_setup: false,
            commands_before: None,
        }],
        forget_claims: Vec::new(),
        unclaimed: Vec::new(),
        outputs: Vec::new(),
        warnings: Vec::new(),
    };
    anstream::print!("{}", human::render(&p));
    run_small_plan(&rt, &p, None, &inv, registry, &store)
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

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    member: MemberRef,
    /// The lease ID or slug (instead of --id).
    #[arg(value_name = "ID|SLUG")]
    lease: Option<String>,
    /// Wait until the lease is ready (or reaches a terminal state), checking every 5s.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits before giving up with exit 5.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    wait_timeout: Duration,
    /// Crabbox's status view as JSON.
    #[arg(long)]
    pub(super) json: bool,
}

/// A duration flag such as `5m` or `90s`.
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    crabbox_core::duration::parse(s).ok_or_else(|| format!("`{s}` is not a duration such as 5m"))
}

/// How often `status --wait` looks again (Crabbox: status.go:131).
const WAIT_POLL: Duration = Duration::from_secs(5);

/// The SSH target of an SSH-lease member, for the view's `ssh*` fields.
pub(super) fn ssh_of(found: &Found) -> Option<crabbox_exec::ssh::SshTarget> {
    let provider = found.registry.get(found.lease.provider).ok()?;
    found.rt.block_on(provider.ssh_target(&found.lease))
}

/// `status`: Crabbox's status line (or `--json` view); with `--wait`,
/// again every 5 seconds until ready, a terminal state (exit 5) or
/// `--wait-timeout` (exit 5), as Crabbox's status.go:13-133.
pub(super) fn status(args: &StatusArgs) -> ExitCode {
    let usage = "crabbox status --id <lease-id-or-slug>";
    let id = match args.member.id_or(args.lease.as_deref(), usage) {
        Ok(id) => id,
        Err(code) => return code,
    };
    let deadline = Instant::now() + args.wait_timeout;
    loop {
        let found = match find(&args.member, &id) {
            Ok(f) => f,
            Err(code) => return code,
        };
        let view = StatusView::of(&found.lease, ssh_of(&found).as_ref());
        let done = !args.wait || view.wait_done();
        if !args.json {
            println!("{}", view.line());
            // Crabbox's line is for scripts; people get the times in words.
            if let Some(note) =
                super::views::times_note(&found.lease, crabbox_core::labels::now_secs())
            {
                anstream::eprintln!("{}: {note}", found.lease.crabbox_slug());
            }
        } else if done {
            super::report::printed_document();
            println!("{}", serde_json::to_string(&view).expect("JSON"));
        }
        if done {
            if args.wait && !view.ready {
                super::report::error(
                    "terminal-state",
                    &format!(
                        "lease {id} reached terminal state {} before ready",
                        view.state
                    ),
                    None,
                );
                return exit::code(TIMEOUT);
            }
            return ExitCode::SUCCESS;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            super::report::error(
                "timeout",
                &format!("timed out waiting for {id} to become ready"),
                Some("wait longer with --wait-timeout, or see why with `crabbox inspect`"),
            );
            return exit::code(TIMEOUT);
        }
        std::thread::sleep(WAIT_POLL.min(left));
    }
}

#[derive(Debug, Args)]
pub(super) struct PauseArgs {
    #[command(flatten)]
    member: MemberRef,
    /// The lease ID or slug (instead of --id).
    #[arg(value_name = "ID|SLUG")]
    lease: Option<String>,
}

/// `pause` and `resume`: release or restore a lease's compute, keeping the lease and its claim.
pub(super) fn pause_or_resume(args: &PauseArgs, pause: bool) -> ExitCode {
    let verb = if pause { "pause" } else { "resume" };
    let Found {
        registry,
        rt,
        lease,
        ..
    } = match found(
        &args.member,
        args.lease.as_deref(),
        &format!("crabbox {verb} --id <lease-id-or-slug>"),
    ) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let provider = match registry.get(lease.provider) {
        Ok(p) => p,
        Err(e) => return exit::provider_error("", &e),
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
        Err(e) => exit::provider_error("", &e),
    }
}
