//! `crabbox apply` and `crabbox destroy`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::SpecArgs;
use super::engine::{Loaded, TargetArgs, approved, failure, load_spec, registry, runtime, store};
use super::lease_modes;
use super::report;
use crabbox_apply::executor::{ExecOptions, StepResult};
use crabbox_apply::progress::{Mode, Reporter};
use crabbox_apply::reconcile::{
    self, Applied, observe, outputs_dir, plan_with_outputs, sync_root, templates,
};
use crabbox_apply::steps::{OutputTarget, sweep_leftovers};
use crabbox_plan::saved::{self, SavedPlan};
use crabbox_plan::{Action, MemberChange, Plan, human, json};
use crabbox_render::files::{ENV, HOSTS, PEERS_JSON};
use crabbox_render::written;
use crabbox_spec::desired::DesiredPond;
use crabbox_spec::suggest::did_you_mean;
use crabbox_state::claims::ClaimStore;
use crabbox_state::lock;
use crabbox_state::state_dir::state_dir;

/// Flags for running a plan.
#[derive(Debug, Args, Clone)]
pub(super) struct RunArgs {
    /// Skip the interactive approval (required without a terminal).
    #[arg(long)]
    auto_approve: bool,
    /// Most steps running at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    parallelism: u16,
    /// Keep going on independent members after a failure.
    #[arg(long)]
    continue_on_error: bool,
    /// How long to wait for the pond's lock (e.g. `30s`); 0 fails at once, naming the holder.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    lock_timeout: Duration,
    /// Progress as NDJSON events on stdout.
    #[arg(long)]
    pub(super) json: bool,
    /// Longest any member may take to become ready (caps each `ready.timeout`), e.g. `5m`.
    #[arg(long, value_parser = parse_duration)]
    wait_timeout: Option<Duration>,
    /// Print env values that came from `--var` or the environment
    /// (`${VAR}`) in the plan; without it they read `(sensitive)`.
    #[arg(long)]
    show_env: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    crabbox_core::duration::parse(s)
        .ok_or_else(|| format!("`{s}` is not a duration such as 30s or 2m"))
}

#[derive(Debug, Args)]
pub(super) struct ApplyArgs {
    /// A plan saved with `crabbox plan -o FILE`; applied exactly, or refused if the pond changed since.
    #[arg(value_name = "PLANFILE")]
    planfile: Option<PathBuf>,
    #[command(flatten)]
    spec: SpecArgs,
    /// Use this pond name instead of the spec's.
    #[arg(long)]
    pond: Option<String>,
    #[command(flatten)]
    targets: TargetArgs,
    #[command(flatten)]
    pub(super) run: RunArgs,
}

#[derive(Debug, Args)]
pub(super) struct DestroyArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Destroy this pond by name, without a spec (finds it through labels, claims and the pond record).
    #[arg(long)]
    pond: Option<String>,
    /// Destroy what can be seen even when a provider cannot be listed.
    #[arg(long)]
    skip_unreachable: bool,
    /// Also destroy leases that are not in the spec but labelled keep=true
    /// (with a spec, those are left alone; `--pond NAME` destroys every lease).
    #[arg(long)]
    destroy_kept: bool,
    #[command(flatten)]
    pub(super) run: RunArgs,
}

/// This process's command line for the lock's holder record, with the
/// values of `--var` left out (they may be secrets).
fn command_line() -> String {
    redact_vars(std::env::args())
}

fn redact_vars(args: impl Iterator<Item = String>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut value_next = false;
    for arg in args {
        let hide = |kv: &str| match kv.split_once('=') {
            Some((k, _)) => format!("{k}=…"),
            None => kv.to_owned(),
        };
        if value_next {
            out.push(hide(&arg));
            value_next = false;
        } else if let Some(kv) = arg.strip_prefix("--var=") {
            out.push(format!("--var={}", hide(kv)));
        } else {
            value_next = arg == "--var";
            out.push(arg);
        }
    }
    out.join(" ")
}

pub(super) fn apply(args: &ApplyArgs) -> ExitCode {
    let (spec, targets, pond_override, saved) = match &args.planfile {
        Some(path) => {
            if super::engine::spec_given_as_plan("apply", path) {
                return failure();
            }
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    report::error(
                        "unreadable",
                        &format!("cannot read the saved plan {}: {e}", path.display()),
                        None,
                    );
                    return failure();
                }
            };
            let saved: SavedPlan = match serde_json::from_str(&text) {
                Ok(s) => s,
                Err(e) => {
                    report::error(
                        "not-a-saved-plan",
                        &format!("{} is not a crabbox saved plan: {e}", path.display()),
                        Some("create one with `crabbox plan -o FILE`"),
                    );
                    return failure();
                }
            };
            let spec = SpecArgs {
                file: saved.spec_file.clone(),
                vars: args.spec.vars.clone(),
            };
            let targets = TargetArgs {
                only: saved.only.clone(),
                skip: saved.skip.clone(),
                replace: saved.replace.clone(),
                rerun_setup: saved.rerun_setup,
                destroy_kept: saved.destroy_kept,
            };
            (spec, targets, saved.pond_override.clone(), Some(saved))
        }
        None => (
            args.spec.clone(),
            args.targets.clone(),
            args.pond.clone(),
            None,
        ),
    };
    let Some(loaded) = load_spec(&spec, pond_override.as_deref()) else {
        return failure();
    };
    if let Some(saved) = &saved
        && saved.spec_hash != saved::spec_hash(&loaded.desired)
    {
        report::error(
            "stale-plan",
            &format!(
                "Saved plan is stale\n  The spec {} (or the variables it was read with) changed after the plan was created.",
                saved.spec_file.display()
            ),
            Some("run `crabbox plan -o FILE` again"),
        );
        return failure();
    }
    let Some(store) = store(Some(&loaded.desired)) else {
        return failure();
    };
    let rt = runtime();
    let pond_lock = match rt.block_on(lock::acquire(
        &store,
        &loaded.desired.name,
        &command_line(),
        args.run.lock_timeout,
    )) {
        Ok(l) => l,
        Err(e) => {
            report::error(
                "locked",
                &e.to_string(),
                Some(&format!(
                    "wait for it to finish, pass --lock-timeout 5m to wait, or see `crabbox pond unlock {}`",
                    loaded.desired.name
                )),
            );
            return failure();
        }
    };
    let code = apply_locked(
        &rt,
        &store,
        &loaded,
        &targets,
        saved.as_ref(),
        &args.run,
        &pond_lock,
    );
    rt.block_on(pond_lock.release());
    code
}

/// The part of `apply` that runs under the pond lock.
fn apply_locked(
    rt: &tokio::runtime::Runtime,
    store: &ClaimStore,
    loaded: &Loaded,
    targets: &TargetArgs,
    saved: Option<&SavedPlan>,
    run: &RunArgs,
    pond_lock: &lock::PondLock,
) -> ExitCode {
    let state = state_dir();
    let registry = super::engine::registry_for(store, &loaded.desired);
    let inventory = rt.block_on(observe(&loaded.desired, &registry, &state, store));
    let plan = match plan_with_outputs(&loaded.desired, &inventory, &targets.options(), &registry) {
        Ok(p) => p,
        Err(e) => return super::exit::plan_refused(&e),
    };
    if let Some(code) = tailnet_key_missing(&plan) {
        return code;
    }
    if let Some(saved) = saved {
        let changed = saved::differences(&saved.fingerprint, &saved::fingerprint(&inventory));
        let same_plan = saved::same_member_changes(&saved.plan, &json::to_value(&plan));
        if !changed.is_empty() || !same_plan {
            report::error(
                "stale-plan",
                &format!(
                    "Saved plan is stale\n  The pond was changed by another operation after the plan was created:\n{}",
                    if changed.is_empty() {
                        "    the plan computed now differs".to_owned()
                    } else {
                        changed
                            .iter()
                            .map(|c| format!("    {c}"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    }
                ),
                Some("run `crabbox plan -o FILE` again"),
            );
            return failure();
        }
    }
    run_plan(
        rt,
        &plan,
        Some(&loaded.desired),
        &inventory,
        registry,
        store,
        run,
        loaded.dir.clone(),
        "Apply",
        saved.is_some(),
        pond_lock,
    )
}

/// Refuses (exit 3) an apply that would create a member joining the
/// tailnet without any way to get it an auth key, before anything is
/// created: one member's create failing halfway through a pond would leave
/// the others made for nothing.
pub(super) fn tailnet_key_missing(plan: &Plan) -> Option<ExitCode> {
    let joins = plan.changes.iter().any(|c| {
        matches!(
            c.action,
            Action::Create | Action::Replace | Action::CreateBeforeDestroy
        ) && c.desired.as_ref().is_some_and(|m| m.tailscale)
    });
    if !joins {
        return None;
    }
    // An unreadable config is reported by the create that needs it.
    let config = crabbox_spec::user_config::UserConfig::load().ok()?;
    let config = crabbox_providers::tailnet::enroll::TailscaleConfig::from_config(&config);
    let env = std::env::vars().collect();
    let e = crabbox_providers::tailnet::enroll::missing_key(&config, &env)?;
    Some(super::exit::provider_error("", &e))
}

#[allow(clippy::too_many_arguments)] // the pieces of one apply, each already validated
fn run_plan(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    desired: Option<&DesiredPond>,
    inventory: &crabbox_plan::inventory::Inventory,
    registry: crabbox_providers::registry::Registry,
    store: &ClaimStore,
    run: &RunArgs,
    spec_dir: PathBuf,
    verb: &str,
    pre_approved: bool,
    lock: &lock::PondLock,
) -> ExitCode {
    let mode = if run.json { Mode::Json } else { Mode::Human };
    let reporter = Arc::new(Reporter::new(mode));
    for w in &plan.warnings {
        reporter.message("warning", &format!("warning: {w}"));
    }
    let modes = desired.and_then(lease_modes::of);
    match mode {
        Mode::Human => {
            anstream::print!(
                "{}",
                human::render_with(plan, crabbox_plan::commands::Show { env: run.show_env })
            );
            if let Some(modes) = &modes {
                print!("{}", lease_modes::human(modes));
            }
        }
        Mode::Json => {
            let mut value = json::to_value(plan);
            if let Some(modes) = &modes {
                lease_modes::add_to_json(&mut value, modes);
            }
            crabbox_apply::progress::print_event(
                "planned_changes",
                serde_json::json!({ "plan": value }),
            );
        }
    }
    if !plan.has_changes() {
        rt.block_on(sweep_leftovers(
            &registry,
            &plan.pond,
            &inventory.listed,
            &reporter,
        ));
        summary(&reporter, verb, Applied::default(), true);
        return ExitCode::SUCCESS;
    }
    if !pre_approved && !approved(run.auto_approve, verb) {
        return failure();
    }
    let outputs = match desired.map(|d| {
        templates(d).map(|t| OutputTarget {
            dir: outputs_dir(d),
            templates: t,
        })
    }) {
        Some(Ok(o)) => Some(o),
        Some(Err(e)) => {
            report::error("template-unreadable", &e.to_string(), None);
            return failure();
        }
        None => None,
    };
    let mut ctx = reconcile::context(
        plan,
        desired,
        inventory,
        registry.clone(),
        &state_dir(),
        store,
        sync_root(&spec_dir),
        outputs,
        reporter.clone(),
    );
    ctx.wait_timeout = run.wait_timeout;
    let ctx = Arc::new(ctx);
    let options = ExecOptions {
        parallelism: usize::from(run.parallelism),
        continue_on_error: run.continue_on_error,
        lock_lost: Some(lock.lost()),
        ..ExecOptions::default()
    };
    // Outputs describe the whole pond: not rendered from a partial view.
    let render = desired.is_some() && inventory.unobserved().is_empty();
    let (outcome, applied) = rt.block_on(reconcile::apply(plan, ctx, &options, render));
    // After the run (under the pond lock): what dead runs left behind.
    rt.block_on(sweep_leftovers(
        &registry,
        &plan.pond,
        &inventory.listed,
        &reporter,
    ));
    let ok = outcome.success();
    if !ok {
        let failed: Vec<String> = outcome
            .results
            .values()
            .filter_map(|r| match r {
                StepResult::Failed(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        if outcome.interrupted {
            let why = "interrupted; the steps that finished are recorded in labels and claims, and the next plan shows what is left.";
            reporter.message("error", &format!("Error: {why}"));
            report::record("interrupted", why, None);
        }
        for f in &failed {
            reporter.message("error", &format!("Error: {f}"));
            report::record("step-failed", f, None);
        }
    }
    summary(&reporter, verb, applied, ok);
    if ok { ExitCode::SUCCESS } else { failure() }
}

fn summary(reporter: &Reporter, verb: &str, a: Applied, ok: bool) {
    // As Terraform's "N imported", only when there are any.
    let adopted = if a.adopted > 0 {
        format!("{} adopted, ", a.adopted)
    } else {
        String::new()
    };
    let text = if verb == "Destroy" {
        format!(
            "{verb} {}! Members: {} destroyed.",
            if ok { "complete" } else { "incomplete" },
            a.destroyed
        )
    } else {
        format!(
            "{verb} {}! Members: {adopted}{} added, {} changed, {} destroyed.",
            if ok { "complete" } else { "incomplete" },
            a.added,
            a.changed,
            a.destroyed
        )
    };
    match reporter.mode() {
        Mode::Human => anstream::eprintln!("\n{text}"),
        Mode::Json => {
            let mut event = serde_json::json!({"ok": ok, "added": a.added, "changed": a.changed, "destroyed": a.destroyed, "message": text});
            if a.adopted > 0 {
                event["adopted"] = a.adopted.into();
            }
            crabbox_apply::progress::print_event("change_summary", event);
        }
    }
}

impl DestroyArgs {
    /// `pond release NAME`: destroy by name, without asking (as Crabbox does).
    pub(super) fn for_pond(name: &str) -> Self {
        Self {
            spec: SpecArgs::none(),
            pond: Some(name.to_owned()),
            skip_unreachable: false,
            destroy_kept: false,
            run: RunArgs {
                auto_approve: true,
                parallelism: 10,
                continue_on_error: true,
                lock_timeout: Duration::ZERO,
                wait_timeout: None,
                json: false,
                show_env: false,
            },
        }
    }
}

pub(super) fn destroy(args: &DestroyArgs) -> ExitCode {
    let state = state_dir();
    let rt = runtime();
    let (desired, pond, spec_dir) = if args.spec.file.exists() || args.pond.is_none() {
        let Some(loaded) = load_spec(&args.spec, args.pond.as_deref()) else {
            return failure();
        };
        let name = loaded.desired.name.clone();
        (Some(loaded.desired), name, loaded.dir)
    } else {
        match crabbox_core::normalize::checked_name(args.pond.as_deref().unwrap_or_default()) {
            Ok(n) => (None, n, PathBuf::from(".")),
            Err(_) => {
                report::error("usage", "--pond is not a usable pond name", None);
                return failure();
            }
        }
    };
    let Some(store) = store(desired.as_ref()) else {
        return failure();
    };
    let registry = match &desired {
        Some(d) => super::engine::registry_for(&store, d),
        None => registry(&store),
    };
    let wanted: Vec<_> = desired
        .iter()
        .flat_map(|d| d.members.iter().map(|m| m.provider))
        .collect();
    // Where outputs go without `outputs.dir`, and where the mesh keeps its files.
    let mesh_dir = super::pond::pond_dir(&pond);
    let mut outputs = vec![(
        mesh_dir.clone(),
        MESH_AND_BUILT_IN_OUTPUTS.map(str::to_owned).to_vec(),
    )];
    if let Some(d) = &desired {
        outputs.push((
            outputs_dir(d),
            BUILT_IN_OUTPUTS
                .into_iter()
                .map(str::to_owned)
                .chain(d.templates.iter().map(|(_, dest)| dest.clone()))
                .collect(),
        ));
    }
    // A pond that has nothing is said to have nothing, before the lock (or
    // anything else) is created for it; what is there is then looked at
    // again under the lock.
    let seen = rt.block_on(crabbox_apply::discover::discover(
        &pond, &wanted, &registry, &state, &store,
    ));
    if has_nothing(&seen, &state, &pond, &outputs) {
        let message = unknown_pond(&rt, &store, &pond);
        if args.run.json {
            crabbox_apply::progress::print_event(
                "change_summary",
                serde_json::json!({"ok": true, "added": 0, "changed": 0, "destroyed": 0, "message": message}),
            );
        }
        anstream::eprintln!("{message}");
        return ExitCode::SUCCESS;
    }
    let pond_lock = match rt.block_on(lock::acquire(
        &store,
        &pond,
        &command_line(),
        args.run.lock_timeout,
    )) {
        Ok(l) => l,
        Err(e) => {
            report::error(
                "locked",
                &e.to_string(),
                Some("wait for it to finish or pass --lock-timeout 5m"),
            );
            return failure();
        }
    };
    let code = destroy_locked(
        &rt,
        args,
        &store,
        registry,
        &pond,
        desired.as_ref(),
        spec_dir,
        &wanted,
        &outputs,
        &pond_lock,
    );
    rt.block_on(pond_lock.release());
    code
}

/// The part of `destroy` that runs under the pond lock.
#[allow(clippy::too_many_arguments)] // what destroy found before taking the lock
fn destroy_locked(
    rt: &tokio::runtime::Runtime,
    args: &DestroyArgs,
    store: &ClaimStore,
    registry: crabbox_providers::registry::Registry,
    pond: &str,
    desired: Option<&DesiredPond>,
    spec_dir: PathBuf,
    wanted: &[crabbox_core::provider::ProviderName],
    outputs: &[(PathBuf, Vec<String>)],
    pond_lock: &lock::PondLock,
) -> ExitCode {
    let state = state_dir();
    let mesh_dir = super::pond::pond_dir(pond);
    let inventory = rt.block_on(crabbox_apply::discover::discover(
        pond, wanted, &registry, &state, store,
    ));
    if let Some(why) = &inventory.state_unreadable {
        report::error(
            "state-unreadable",
            &format!("the claim store could not be read: {why}"),
            Some(
                "destroy must see every claim of the pond; check CRABBOX_STATE_URL / the state directory and try again",
            ),
        );
        return failure();
    }
    for (p, e) in &inventory.unreachable {
        let why = e.explained();
        if args.skip_unreachable {
            anstream::eprintln!(
                "warning: provider `{p}` could not be listed: {why}; its leases are left alone (--skip-unreachable)"
            );
        } else {
            report::error(
                "provider-unreachable",
                &format!("provider `{p}` could not be listed: {why}"),
                Some(
                    "fix its credentials (destroy must see every lease of the pond), or pass --skip-unreachable to destroy only what can be seen",
                ),
            );
            return super::exit::code(if e.is_credentials() {
                super::exit::CREDENTIALS
            } else {
                1
            });
        }
    }
    let members: std::collections::BTreeMap<&str, &crabbox_spec::desired::DesiredMember> = desired
        .into_iter()
        .flat_map(|d| d.members.iter().map(|m| (m.slug.as_str(), m)))
        .collect();
    let mut changes = Vec::new();
    for lease in &inventory.leases {
        let m = members.get(lease.slug()).copied();
        if desired.is_some() && m.is_none() && lease.is_kept() && !args.destroy_kept {
            anstream::eprintln!(
                "keeping `{}` (lease {}): it is not in the spec and is labelled keep=true; pass --destroy-kept to destroy it",
                lease.slug(),
                lease.id
            );
            continue;
        }
        if let Some(m) = m.filter(|m| m.prevent_destroy) {
            report::error(
                "prevent-destroy",
                &format!(
                    "member `{}` cannot be destroyed: it has lifecycle.prevent_destroy set",
                    m.slug
                ),
                Some("remove prevent_destroy from the spec first"),
            );
            return failure();
        }
        changes.push(MemberChange {
            slug: lease.slug().to_owned(),
            provider: lease.provider,
            action: Action::Delete,
            lease: Some(lease.clone()),
            desired: m.cloned(),
            attributes: Vec::new(),
            reasons: vec!["destroy requested".to_owned()],
            relabel: false,
            rerun_setup: false,
            commands_before: None,
        });
    }
    let plan = Plan {
        pond: pond.to_owned(),
        changes,
        forget_claims: inventory
            .dangling_claims
            .iter()
            .map(|c| c.lease_id.clone())
            .collect(),
        unclaimed: Vec::new(),
        outputs: Vec::new(),
        warnings: inventory.warnings.clone(),
    };
    // Tunnels into members that are about to disappear go first.
    match crabbox_exec::mesh::stop(&mesh_dir) {
        Ok(n) if n > 0 => anstream::eprintln!(
            "disconnected the SSH mesh ({n} tunnel{})",
            if n == 1 { "" } else { "s" }
        ),
        Ok(_) => {}
        Err(e) => anstream::eprintln!("warning: could not disconnect the SSH mesh: {e}"),
    }
    let code = run_plan(
        rt, &plan, None, &inventory, registry, store, &args.run, spec_dir, "Destroy", false,
        pond_lock,
    );
    if code == ExitCode::SUCCESS {
        // The rendered files describe leases that no longer exist, whichever
        // form of destroy this is: the spec's outputs, the default directory
        // (the mesh's and `--pond NAME`'s) and everything recorded as written.
        for problem in written::remove_all(&state, pond, outputs) {
            anstream::eprintln!("warning: could not remove an output file: {problem}");
        }
        let _ = std::fs::remove_file(state.join("ponds").join(pond).join("providers.json"));
    }
    code
}

/// The files crabbox renders under every outputs directory.
const BUILT_IN_OUTPUTS: [&str; 3] = [PEERS_JSON, HOSTS, ENV];
/// The files in a pond's default directory: the rendered ones and the
/// SSH mesh's port map.
const MESH_AND_BUILT_IN_OUTPUTS: [&str; 4] = [PEERS_JSON, HOSTS, ENV, "ports.json"];

/// Whether there is nothing of `pond` to destroy: no lease, no claim, every
/// provider listed, no pond record and no output file.
fn has_nothing(
    inv: &crabbox_plan::inventory::Inventory,
    state: &std::path::Path,
    pond: &str,
    outputs: &[(PathBuf, Vec<String>)],
) -> bool {
    inv.leases.is_empty()
        && inv.dangling_claims.is_empty()
        && inv.unobserved().is_empty()
        && !state
            .join("ponds")
            .join(pond)
            .join("providers.json")
            .exists()
        && !written::any(state, pond)
        && !outputs
            .iter()
            .any(|(dir, names)| names.iter().any(|n| dir.join(n).exists()))
}

/// `no pond named … found; known ponds: …`, with a did-you-mean.
fn unknown_pond(rt: &tokio::runtime::Runtime, store: &ClaimStore, pond: &str) -> String {
    let (known, list) = match rt.block_on(super::imperative::known_ponds(store)) {
        Ok(known) if known.is_empty() => (known, "none".to_owned()),
        Ok(known) => {
            let list = known.join(", ");
            (known, list)
        }
        Err(e) => (
            Vec::new(),
            format!("unknown (the claim store could not be read: {e})"),
        ),
    };
    let mut message = format!("no pond named `{pond}` found; known ponds: {list}");
    if let Some(close) = did_you_mean(pond, known.iter().map(String::as_str)) {
        message.push_str(&format!("\n  help: did you mean `{close}`?"));
    }
    message
}

#[cfg(test)]
mod tests {
    #[test]
    fn var_values_are_left_out_of_the_recorded_command_line() {
        let args = [
            "crabbox",
            "apply",
            "--var",
            "TOKEN=s3cret",
            "--var=PR=42",
            "-f",
            "p.yaml",
        ];
        assert_eq!(
            super::redact_vars(args.iter().map(|s| (*s).to_owned())),
            "crabbox apply --var TOKEN=… --var=PR=… -f p.yaml"
        );
    }
}
