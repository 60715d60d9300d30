//! Reconciliation scenarios: every `specs/*.yaml` file is a spec, a live
//! inventory and the plan the planner must make from them. One test runs them
//! all and reports every failing file at once.
//!
//! # Scenario format
//!
//! ```yaml
//! name: setup change re-runs setup in place      # required, unique
//! why: a changed setup command must re-run setup, not replace the lease   # required, one line
//! spec: |            # the pond.yaml (version 1), loaded with `load_str` and no variables
//!   version: 1
//!   pond: p
//!   members:
//!     - slug: db
//!       setup: [ "echo two" ]
//! previous: |        # optional: the spec the live leases were applied from (default: `spec`)
//!   version: 1
//!   pond: p
//!   members:
//!     - slug: db
//!       setup: [ "echo one" ]
//! now: 1000000       # optional: `PlanOptions::now` (default 1_000_000)
//! options: { only: [], skip: [], replace: [], rerun_setup: false, destroy_kept: false }
//!                    # optional; slugs normalized as the CLI does
//! live:              # the leases the providers list
//!   - { slug: db, id: cbx_000000000001 }
//!   - { slug: db, id: cbx_000000000002, created_at: 999000, state: failed,
//!       labels: { failure: setup_step_1_exit_1 }, pond: other, provider: local, remove_labels: [crabbox] }
//!   - { id: cbx_000000000003, raw: true, labels: { crabbox: "true", slug: gone, ... } }
//! dangling_claims: [ cbx_00000000000f ]   # optional: claims whose resource is gone
//! expect:            # in plan order: desired members in document order, then stray leases by slug
//!   - { slug: db, action: update, lease: cbx_000000000001, rerun_setup: true, relabel: false,
//!       reasons: ["setup"], attributes: [setup] }
//! error: "prevent_destroy"   # instead of `expect`: planning fails with an error containing this
//! forget_claims: [ cbx_00000000000f ]     # optional expectation (default: none)
//! warnings: [ "targeting" ]  # optional: substrings each of which some plan warning contains
//! ```
//!
//! A `live` entry without `raw` is a lease as a successful apply of `previous`
//! leaves it: `member_labels::for_create(pond, id, member, created_at)` for the
//! member of `previous` with that slug, then `state=ready` and
//! `pond_setup=<SpecHashes::of(member).setup>` (what `Finalize` writes).
//! `created_at` (default `now - 60`) is the creation time, so `expires_at` is
//! `created_at + ttl`. Then, in order: `state` sets the state label, `pond`
//! the pond label, `provider` the lease's provider (field and label),
//! `labels` adds or overwrites labels, and `remove_labels` removes them.
//! A `raw: true` entry has exactly the labels given (its `provider`, default
//! the `provider` label, else `local`, is only the lease's provider field).
//!
//! The inventory is then built the way `inventory::discover::discover` builds
//! it: leases that are not `Lease::is_ours(pond)` are dropped with a warning,
//! and the rest are sorted by slug, creation time and ID.
//!
//! In `expect`, `slug` and `action` (`no-op`, `create`, `update`, `replace`,
//! `create-before-destroy`, `delete`, `adopt`) are required. `lease` (the acted-on
//! lease's ID, or `null` for none), `provider`, `relabel`, `rerun_setup` and
//! `attributes` (the changed attribute names, in order) are compared when
//! given; `reasons` are substrings each of which some reason must contain.
//!
//! Besides the expectations, every scenario with a plan checks the planner's
//! invariants: planning twice gives the same plan; no change acts on a lease
//! outside the inventory; `create` and only `create` has no lease; without
//! targeting every desired member and every live lease has exactly one entry;
//! and applying the plan (simulated with the same label functions the
//! executor uses) and planning again gives a plan without changes.

use std::collections::{BTreeMap, BTreeSet};

use crabbox_core::labels::{self, state};
use crabbox_core::lease::Lease;
use crabbox_core::normalize::normalize_name;
use crabbox_core::provider::ProviderName;
use crabbox_plan::diff::{PlanOptions, plan};
use crabbox_plan::inventory::Inventory;
use crabbox_plan::{Action, Plan};
use crabbox_spec::desired::DesiredPond;
use crabbox_spec::interpolate::Variables;
use crabbox_spec::load::load_str;
use crabbox_spec::member_labels;
use crabbox_spec::member_labels::SpecHashes;
use crabbox_state::claims::Claim;
use serde::Deserialize;

use crate::support::{rendered, root, yaml_files};

/// `options.now` when a scenario does not say.
pub(crate) const DEFAULT_NOW: u64 = 1_000_000;

/// The fewest scenario files `specs/` may hold.
const MIN_SCENARIOS: usize = 32;

/// One scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Scenario {
    name: String,
    why: String,
    spec: String,
    #[serde(default)]
    previous: Option<String>,
    #[serde(default)]
    now: Option<u64>,
    #[serde(default)]
    options: Targeting,
    #[serde(default)]
    live: Vec<LiveLease>,
    #[serde(default)]
    dangling_claims: Vec<String>,
    #[serde(default)]
    expect: Option<Vec<Expected>>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    forget_claims: Vec<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

/// `--only`, `--skip`, `--replace`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Targeting {
    #[serde(default)]
    only: Vec<String>,
    #[serde(default)]
    skip: Vec<String>,
    #[serde(default)]
    replace: Vec<String>,
    #[serde(default)]
    rerun_setup: bool,
    #[serde(default)]
    destroy_kept: bool,
}

/// One live lease.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LiveLease {
    #[serde(default)]
    slug: Option<String>,
    id: String,
    #[serde(default)]
    created_at: Option<u64>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    pond: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    labels: labels::Labels,
    #[serde(default)]
    remove_labels: Vec<String>,
    #[serde(default)]
    raw: bool,
    /// Whether its claim records the commands it ran (default: yes, as
    /// `Finalize` records them; `false` models a lease made by Crabbox or
    /// an older crabbox). Raw leases record nothing.
    #[serde(default = "yes")]
    recorded: bool,
}

fn yes() -> bool {
    true
}

/// One expected plan entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    slug: String,
    action: String,
    #[serde(default, deserialize_with = "present")]
    lease: Option<Option<String>>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    relabel: Option<bool>,
    #[serde(default)]
    rerun_setup: Option<bool>,
    #[serde(default)]
    reasons: Vec<String>,
    #[serde(default)]
    attributes: Option<Vec<String>>,
}

/// Tells `lease: null` (must have no lease) from a missing key (not compared).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// What a scenario plans from.
pub(crate) struct Setup {
    /// The loaded spec.
    pub desired: DesiredPond,
    /// The live leases after discovery's filter.
    pub inventory: Inventory,
    /// Targeting and "now".
    pub options: PlanOptions,
}

/// Parses a scenario document.
pub(crate) fn parse(scenario_yaml: &str) -> Result<Scenario, String> {
    serde_saphyr::from_str(scenario_yaml).map_err(|e| format!("not a scenario: {e}"))
}

fn load_spec(label: &str, text: &str) -> Result<DesiredPond, String> {
    let loaded = load_str(label, text, &root(), &Variables::fixed(vec![]));
    match loaded.pond {
        Some(pond) if !loaded.has_errors() => Ok(pond),
        _ => Err(format!("`{label}` does not load:\n{}", rendered(&loaded))),
    }
}

/// Builds the desired pond, the inventory and the options of a scenario.
pub(crate) fn setup(scenario: &Scenario) -> Result<Setup, String> {
    let desired = load_spec("spec", &scenario.spec)?;
    let previous = match &scenario.previous {
        Some(text) => load_spec("previous", text)?,
        None => desired.clone(),
    };
    let now = scenario.now.unwrap_or(DEFAULT_NOW);
    let mut listed = Vec::new();
    let mut recorded = BTreeMap::new();
    for live in &scenario.live {
        let (lease, ran) = live_lease(live, &previous, now)?;
        if let Some(ran) = ran {
            recorded.insert(lease.id.clone(), ran);
        }
        listed.push(lease);
    }
    let options = PlanOptions {
        only: scenario
            .options
            .only
            .iter()
            .map(|s| normalize_name(s))
            .collect(),
        skip: scenario
            .options
            .skip
            .iter()
            .map(|s| normalize_name(s))
            .collect(),
        replace: scenario
            .options
            .replace
            .iter()
            .map(|s| normalize_name(s))
            .collect(),
        now,
        rerun_setup: scenario.options.rerun_setup,
        destroy_kept: scenario.options.destroy_kept,
    };
    let mut inventory = discovered(&desired.name, listed);
    inventory.applied_commands = recorded.into_iter().collect();
    inventory.dangling_claims = scenario
        .dangling_claims
        .iter()
        .map(|id| Claim {
            lease_id: id.clone(),
            pond: desired.name.clone(),
            provider: "local".into(),
            ..Claim::default()
        })
        .collect();
    Ok(Setup {
        desired,
        inventory,
        options,
    })
}

/// The inventory discovery makes of what the providers listed: only this
/// pond's resources (the rest with a warning), deduplicated by lease ID,
/// sorted by slug, creation time and ID.
fn discovered(pond: &str, listed: Vec<Lease>) -> Inventory {
    let mut inv = Inventory {
        pond: pond.to_owned(),
        ..Inventory::default()
    };
    let mut by_id: BTreeMap<String, Lease> = BTreeMap::new();
    for lease in listed {
        if lease.is_ours(pond) {
            by_id.insert(lease.id.clone(), lease);
        } else {
            inv.warnings.push(format!(
                "ignoring {} resource {}: it does not carry crabbox's markers for pond `{pond}`",
                lease.provider, lease.cloud_id
            ));
        }
    }
    let mut leases: Vec<Lease> = by_id.into_values().collect();
    leases
        .sort_by(|a, b| (a.slug(), a.created_at(), &a.id).cmp(&(b.slug(), b.created_at(), &b.id)));
    inv.listed = leases
        .iter()
        .map(|l| l.provider)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    inv.leases = leases.into_iter().map(std::sync::Arc::new).collect();
    inv
}

fn provider_named(name: &str) -> Result<ProviderName, String> {
    ProviderName::from_name(name).ok_or_else(|| format!("unknown provider `{name}`"))
}

/// A lease as the providers list it.
/// The lease of a `live` entry and the commands its claim records.
fn live_lease(
    live: &LiveLease,
    previous: &DesiredPond,
    now: u64,
) -> Result<(Lease, Option<Vec<String>>), String> {
    let mut ran = None;
    let mut provider = match &live.provider {
        Some(p) => Some(provider_named(p)?),
        None => None,
    };
    let mut labels = if live.raw {
        if let Some(slug) = &live.slug
            && live.labels.get(labels::SLUG).map(|v| v.as_str()) != Some(slug.as_str())
        {
            return Err(format!(
                "raw lease {}: `slug: {slug}` differs from its slug label",
                live.id
            ));
        }
        if provider.is_none() {
            provider = Some(match live.labels.get(labels::PROVIDER) {
                Some(p) => provider_named(p)?,
                None => ProviderName::Local,
            });
        }
        live.labels.clone()
    } else {
        let slug = live
            .slug
            .as_deref()
            .ok_or_else(|| format!("lease {}: `slug` is required unless `raw: true`", live.id))?;
        let m = previous
            .members
            .iter()
            .find(|m| m.slug == normalize_name(slug))
            .ok_or_else(|| {
                format!("lease {}: `{slug}` is not a member of the previous spec; give `raw: true` labels", live.id)
            })?;
        let mut l = member_labels::for_create(
            &previous.name,
            &live.id,
            m,
            live.created_at.unwrap_or(now.saturating_sub(60)),
        );
        l.insert(labels::STATE.into(), state::READY.into());
        l.insert(labels::POND_SETUP.into(), SpecHashes::of(m).setup);
        if live.recorded {
            ran = Some(ran_by(m));
        }
        if let Some(s) = &live.state {
            l.insert(labels::STATE.into(), s.as_str().into());
        }
        if let Some(p) = &live.pond {
            l.insert(labels::POND.into(), p.as_str().into());
        }
        match provider {
            Some(p) => {
                l.insert(labels::PROVIDER.into(), p.as_str().into());
            }
            None => provider = Some(m.provider),
        }
        l.extend(live.labels.clone());
        for key in &live.remove_labels {
            l.remove(key.as_str());
        }
        l
    };
    if live.raw && (live.state.is_some() || live.pond.is_some() || !live.remove_labels.is_empty()) {
        return Err(format!(
            "raw lease {}: give its labels in `labels`",
            live.id
        ));
    }
    if live.raw && live.created_at.is_some() {
        labels.insert(
            labels::CREATED_AT.into(),
            live.created_at.unwrap_or_default().to_string().into(),
        );
    }
    Ok((
        Lease {
            id: live.id.clone(),
            provider: provider.unwrap_or(ProviderName::Local),
            cloud_id: format!("cloud-{}", live.id),
            labels,
            endpoint: Default::default(),
            listed: true,
            claimed: false,
        },
        ran,
    ))
}

/// What `Finalize` records in the claim of a lease that ran `m`'s setup.
fn ran_by(m: &crabbox_spec::desired::DesiredMember) -> Vec<String> {
    crabbox_plan::commands::lines(m, crabbox_plan::commands::Show::default())
}

/// Plans a set-up scenario.
pub(crate) fn plan_setup(s: &Setup) -> Result<Plan, String> {
    plan(&s.desired, &s.inventory, &s.options).map_err(|e| e.to_string())
}

/// The plan of a scenario document (`Err` with the planner's message when
/// planning fails). Panics when the document itself is broken.
pub(crate) fn plan_for(scenario_yaml: &str) -> Result<Plan, String> {
    let scenario = parse(scenario_yaml).unwrap_or_else(|e| panic!("{e}"));
    let s = setup(&scenario).unwrap_or_else(|e| panic!("{e}"));
    plan_setup(&s)
}

/// The plan of a file under `specs/`.
pub(crate) fn plan_for_file(name: &str) -> Result<Plan, String> {
    let text =
        std::fs::read_to_string(root().join("specs").join(name)).expect("scenario file exists");
    plan_for(&text)
}

/// The kebab-case name of an action.
fn action_name(action: Action) -> String {
    serde_json::to_value(action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

const ACTIONS: [&str; 7] = [
    "no-op",
    "create",
    "update",
    "replace",
    "create-before-destroy",
    "delete",
    "adopt",
];

/// Runs one scenario; returns its problems.
fn run(text: &str) -> Vec<String> {
    let scenario = match parse(text) {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    if scenario.name.trim().is_empty()
        || scenario.why.trim().is_empty()
        || scenario.why.contains('\n')
    {
        problems.push("`name` and a one-line `why` are required".to_owned());
    }
    let s = match setup(&scenario) {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    let result = plan_setup(&s);
    match (&scenario.expect, &scenario.error, result) {
        (Some(_), Some(_), _) | (None, None, _) => {
            problems.push("give exactly one of `expect` and `error`".to_owned());
        }
        (None, Some(want), Ok(p)) => {
            problems.push(format!(
                "expected an error containing {want:?}, got a plan:\n{}",
                describe(&p)
            ));
        }
        (None, Some(want), Err(got)) => {
            if !got.contains(want.as_str()) {
                problems.push(format!("expected an error containing {want:?}, got: {got}"));
            }
        }
        (Some(_), None, Err(got)) => problems.push(format!("planning failed: {got}")),
        (Some(expect), None, Ok(p)) => {
            let before = problems.len();
            compare(expect, &scenario, &p, &mut problems);
            if problems.len() > before {
                problems.push(format!("the plan was:\n{}", describe(&p)));
            }
            invariants(&s, &p, &mut problems);
        }
    }
    problems
}

/// Compares a plan with a scenario's expectations.
fn compare(expect: &[Expected], scenario: &Scenario, p: &Plan, problems: &mut Vec<String>) {
    if expect.len() != p.changes.len() {
        problems.push(format!(
            "expected {} entries, the plan has {}",
            expect.len(),
            p.changes.len()
        ));
    }
    for (i, (want, got)) in expect.iter().zip(&p.changes).enumerate() {
        let at = format!("entry {i} (`{}`)", want.slug);
        if !ACTIONS.contains(&want.action.as_str()) {
            problems.push(format!(
                "{at}: `{}` is not an action ({})",
                want.action,
                ACTIONS.join(", ")
            ));
        }
        if got.slug != want.slug {
            problems.push(format!("{at}: slug is `{}`", got.slug));
        }
        let action = action_name(got.action);
        if action != want.action {
            problems.push(format!(
                "{at}: action is {action}, expected {}",
                want.action
            ));
        }
        let lease = got.lease.as_ref().map(|l| l.id.clone());
        if let Some(want_lease) = &want.lease
            && *want_lease != lease
        {
            problems.push(format!("{at}: lease is {lease:?}, expected {want_lease:?}"));
        }
        if let Some(provider) = &want.provider
            && got.provider.as_str() != provider
        {
            problems.push(format!(
                "{at}: provider is {}, expected {provider}",
                got.provider
            ));
        }
        if let Some(relabel) = want.relabel
            && got.relabel != relabel
        {
            problems.push(format!(
                "{at}: relabel is {}, expected {relabel}",
                got.relabel
            ));
        }
        if let Some(rerun) = want.rerun_setup
            && got.rerun_setup != rerun
        {
            problems.push(format!(
                "{at}: rerun_setup is {}, expected {rerun}",
                got.rerun_setup
            ));
        }
        for r in &want.reasons {
            if !got.reasons.iter().any(|g| g.contains(r.as_str())) {
                problems.push(format!(
                    "{at}: no reason contains {r:?} (reasons: {:?})",
                    got.reasons
                ));
            }
        }
        if let Some(attrs) = &want.attributes {
            let names: Vec<&str> = got.attributes.iter().map(|a| a.name.as_str()).collect();
            if names != attrs.iter().map(String::as_str).collect::<Vec<_>>() {
                problems.push(format!(
                    "{at}: attributes are {names:?}, expected {attrs:?}"
                ));
            }
        }
    }
    if p.forget_claims != scenario.forget_claims {
        problems.push(format!(
            "forget_claims are {:?}, expected {:?}",
            p.forget_claims, scenario.forget_claims
        ));
    }
    for w in &scenario.warnings {
        if !p.warnings.iter().any(|g| g.contains(w.as_str())) {
            problems.push(format!(
                "no warning contains {w:?} (warnings: {:?})",
                p.warnings
            ));
        }
    }
}

/// Rules every plan follows, whatever the scenario.
fn invariants(s: &Setup, p: &Plan, problems: &mut Vec<String>) {
    match plan_setup(s) {
        Ok(again) if again == *p => {}
        _ => problems.push("planning twice gave different plans".to_owned()),
    }
    let known: BTreeSet<&str> = s.inventory.leases.iter().map(|l| l.id.as_str()).collect();
    for c in &p.changes {
        if let Some(l) = &c.lease
            && (!known.contains(l.id.as_str()) || !l.is_ours(&p.pond))
        {
            problems.push(format!(
                "`{}` acts on lease {}, which is not in the pond's inventory",
                c.slug, l.id
            ));
        }
        if (c.action == Action::Create) != c.lease.is_none() {
            problems.push(format!(
                "`{}`: {} with lease {:?}",
                c.slug,
                action_name(c.action),
                c.lease.as_ref().map(|l| &l.id)
            ));
        }
    }
    let targeted = !s.options.only.is_empty() || !s.options.skip.is_empty();
    if targeted {
        return;
    }
    for m in &s.desired.members {
        let entries = p
            .changes
            .iter()
            .filter(|c| c.slug == m.slug && c.action != Action::Delete)
            .count();
        if entries != 1 {
            problems.push(format!(
                "member `{}` has {entries} non-delete entries",
                m.slug
            ));
        }
    }
    for l in &s.inventory.leases {
        let entries = p
            .changes
            .iter()
            .filter(|c| c.lease.as_ref().is_some_and(|x| x.id == l.id))
            .count();
        if entries != 1 {
            problems.push(format!("lease {} has {entries} entries", l.id));
        }
    }
    if s.options.replace.is_empty() {
        let applied = simulate_apply(s, p);
        match plan(&s.desired, &applied, &s.options) {
            Ok(next) if !next.has_changes() => {}
            Ok(next) => problems.push(format!(
                "after applying, the next plan still has changes:\n{}",
                describe(&next)
            )),
            Err(e) => problems.push(format!("after applying, planning fails: {e}")),
        }
    }
}

/// The inventory after a successful apply of `p`, with the labels the
/// executor's steps write (`Warmup`, `Relabel`, `Finalize`, `Release`).
fn simulate_apply(s: &Setup, p: &Plan) -> Inventory {
    let mut leases: BTreeMap<String, Lease> = s
        .inventory
        .leases
        .iter()
        .map(|l| (l.id.clone(), Lease::clone(l)))
        .collect();
    let mut recorded = s.inventory.applied_commands.clone();
    let finalize = |labels: &labels::Labels, m: &crabbox_spec::desired::DesiredMember| {
        let mut l = member_labels::for_update(labels, m, s.options.now);
        l.insert(labels::STATE.into(), state::READY.into());
        l.insert(labels::POND_SETUP.into(), SpecHashes::of(m).setup);
        l.remove(labels::FAILURE);
        l
    };
    for (n, c) in p.changes.iter().enumerate() {
        let old = c.lease.as_ref().map(|l| l.id.clone());
        match (c.action, &c.desired) {
            (Action::NoOp, _) => {}
            (Action::Delete, _) => {
                leases.remove(&old.unwrap_or_default());
            }
            (Action::Adopt, Some(m)) => {
                let lease = leases
                    .get_mut(&old.unwrap_or_default())
                    .expect("adopted lease exists");
                lease.labels =
                    crabbox_plan::adopt::labels(&lease.labels, m, c.rerun_setup, s.options.now);
                if c.rerun_setup {
                    lease.labels = finalize(&lease.labels, m);
                    recorded.insert(lease.id.clone(), ran_by(m));
                }
            }
            (Action::Update, Some(m)) => {
                let lease = leases
                    .get_mut(&old.unwrap_or_default())
                    .expect("updated lease exists");
                if c.relabel {
                    lease.labels = member_labels::for_update(&lease.labels, m, s.options.now);
                }
                if c.rerun_setup {
                    lease.labels = finalize(&lease.labels, m);
                    recorded.insert(lease.id.clone(), ran_by(m));
                }
            }
            (Action::Create | Action::Replace | Action::CreateBeforeDestroy, Some(m)) => {
                if let Some(old) = old {
                    leases.remove(&old);
                }
                let id = format!("cbx_ffff{n:08x}");
                let created = member_labels::for_create(&p.pond, &id, m, s.options.now);
                recorded.insert(id.clone(), ran_by(m));
                let lease = Lease {
                    id: id.clone(),
                    provider: m.provider,
                    cloud_id: format!("cloud-{id}"),
                    labels: finalize(&created, m),
                    endpoint: Default::default(),
                    listed: true,
                    claimed: false,
                };
                leases.insert(id, lease);
            }
            (_, None) => {}
        }
    }
    let mut inv = discovered(&p.pond, leases.into_values().collect());
    recorded.retain(|id, _| inv.leases.iter().any(|l| &l.id == id));
    inv.applied_commands = recorded;
    inv
}

/// A plan in one line per entry, for failure messages.
fn describe(p: &Plan) -> String {
    let mut out = String::new();
    for c in &p.changes {
        out.push_str(&format!(
            "  - {{ slug: {}, action: {}, lease: {}, relabel: {}, rerun_setup: {}, attributes: {:?}, reasons: {:?} }}\n",
            c.slug,
            action_name(c.action),
            c.lease.as_ref().map_or("null", |l| l.id.as_str()),
            c.relabel,
            c.rerun_setup,
            c.attributes.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            c.reasons
        ));
    }
    if !p.forget_claims.is_empty() {
        out.push_str(&format!("  forget_claims: {:?}\n", p.forget_claims));
    }
    if !p.warnings.is_empty() {
        out.push_str(&format!("  warnings: {:?}\n", p.warnings));
    }
    out
}

#[test]
fn every_scenario_plans_as_expected() {
    let files = yaml_files("specs");
    assert!(
        files.len() >= MIN_SCENARIOS,
        "specs/ holds {} scenarios, at least {MIN_SCENARIOS} expected",
        files.len()
    );
    let mut names = BTreeSet::new();
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(root().join(file)).expect("scenario readable");
        let mut problems = run(&text);
        if let Ok(s) = parse(&text)
            && !names.insert(s.name.clone())
        {
            problems.push(format!("the name {:?} is used twice", s.name));
        }
        if !problems.is_empty() {
            failures.push(format!("{file}:\n  {}", problems.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}
