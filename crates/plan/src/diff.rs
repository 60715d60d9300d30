//! The planner: desired pond + inventory → [`Plan`]. Pure: it reads nothing
//! and writes nothing, so every rule here is tested with plain data
//! (`specs/` scenarios and property tests).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::inventory::Inventory;
use crate::{Action, AttrChange, MemberChange, Plan, adopt};
use crabbox_core::duration;
use crabbox_core::labels::{self, SETUP_PENDING, state};
use crabbox_core::lease::Lease;
use crabbox_spec::desired::{DesiredMember, DesiredPond};
use crabbox_spec::member_labels::SpecHashMemo;

/// Targeting and forcing options.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Plan only these members (and the members they depend on).
    pub only: Vec<String>,
    /// Leave these members alone.
    pub skip: Vec<String>,
    /// Replace these members even if nothing changed.
    pub replace: Vec<String>,
    /// Unix seconds "now", for expiry.
    pub now: u64,
    /// Run setup on members adopted from Crabbox (`--rerun-setup`); without
    /// it adoption only writes labels.
    pub rerun_setup: bool,
    /// Destroy leases that are not in the spec even when labelled
    /// `keep=true` (`--destroy-kept`).
    pub destroy_kept: bool,
}

/// A plan that must not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `prevent_destroy` is set on a member the plan would destroy or replace.
    #[error(
        "member `{slug}` cannot be destroyed: it has lifecycle.prevent_destroy set, but the plan calls for it to be {verb} ({reason})"
    )]
    PreventDestroy {
        /// The member.
        slug: String,
        /// `destroyed` or `replaced`.
        verb: &'static str,
        /// Why the plan wants it.
        reason: String,
    },
    /// A provider or the claim store could not be read: what it holds is
    /// unknown, and planning as if it held nothing would create duplicates
    /// and render outputs without its members.
    #[error(
        "{}\n  nothing is planned while part of the pond cannot be seen: unobserved is not absent\n  help: fix the cause above and plan again, or leave that provider's members out with --skip SLUG",
        reasons.join("\n  ")
    )]
    Unobserved {
        /// One line per provider or store that could not be read.
        reasons: Vec<String>,
        /// Whether missing or refused credentials are the whole cause (see
        /// [`Inventory::only_credentials_missing`]).
        credentials: bool,
    },
    /// A lease Crabbox made for a member does not fit the member's spec, and
    /// `--replace SLUG` was not given: it is neither adopted (it would stay
    /// unlike the spec) nor destroyed without being asked.
    #[error(
        "member `{slug}` has a lease made by Crabbox ({lease}) that does not fit the spec: {}\n  it is neither adopted (it would stay unlike the spec) nor destroyed unless you ask\n  help: change the spec to match the lease to adopt it, or pass `--replace {slug}` to destroy it and create a new one",
        misfits.join("; ")
    )]
    AdoptionMisfit {
        /// The member.
        slug: String,
        /// The lease Crabbox made.
        lease: String,
        /// What differs, one phrase each.
        misfits: Vec<String>,
    },
    /// `--only`/`--skip`/`--replace` names no member.
    #[error("`--{flag} {slug}` names no member of the pond (members: {members})")]
    UnknownTarget {
        /// Which flag.
        flag: &'static str,
        /// What was given.
        slug: String,
        /// What exists.
        members: String,
    },
    /// A targeted member depends on a skipped member that does not exist.
    #[error("member `{slug}` depends on `{dependency}`, which is skipped and does not exist yet")]
    SkippedDependency {
        /// The dependent.
        slug: String,
        /// The skipped dependency.
        dependency: String,
    },
}

/// Computes the plan.
///
/// # Errors
/// [`PlanError`] when the plan would violate `prevent_destroy` or a target is unknown.
pub fn plan(
    desired: &DesiredPond,
    inventory: &Inventory,
    options: &PlanOptions,
) -> Result<Plan, PlanError> {
    // Hashed, not ordered: a plan of 10,000 members looks each one up;
    // what is shown in order is sorted where it is shown.
    // Fx-hashed: the keys are slugs, and a plan of 10,000 members hashes
    // each a few times.
    let members: FxHashSet<&str> = desired.members.iter().map(|m| m.slug.as_str()).collect();
    let mut live: FxHashMap<&str, Vec<&Arc<Lease>>> =
        FxHashMap::with_capacity_and_hasher(inventory.leases.len(), Default::default());
    for lease in &inventory.leases {
        live.entry(lease.slug()).or_default().push(lease);
    }
    for (flag, list) in [
        ("only", &options.only),
        ("skip", &options.skip),
        ("replace", &options.replace),
    ] {
        for slug in list {
            if !members.contains(slug.as_str()) && !live.contains_key(slug.as_str()) {
                let all_slugs: BTreeSet<&str> =
                    members.iter().chain(live.keys()).copied().collect();
                return Err(PlanError::UnknownTarget {
                    flag,
                    slug: slug.clone(),
                    members: all_slugs.into_iter().collect::<Vec<_>>().join(", "),
                });
            }
        }
    }
    let targeted = Targets::new(desired, options);
    let mut warnings: Vec<String> = Vec::new();
    if !options.only.is_empty() || !options.skip.is_empty() {
        warnings.push(
            "Resource targeting is in effect: the plan may be incomplete. --only and --skip are for exceptional situations such as recovering from errors; a full `crabbox apply` brings the whole pond to the spec."
                .to_owned(),
        );
    }
    // Unobserved is not absent. A full plan needs every provider and the
    // claim store; a targeted plan (already marked incomplete) may go on
    // when no targeted member lives on a provider that could not be listed.
    let targeting = !options.only.is_empty() || !options.skip.is_empty();
    let blocked = inventory.state_unreadable.is_some()
        || (!inventory.unreachable.is_empty()
            && (!targeting
                || desired.members.iter().any(|m| {
                    targeted.includes(&m.slug)
                        && inventory.unreachable.iter().any(|(p, _)| *p == m.provider)
                })));
    if blocked {
        return Err(PlanError::Unobserved {
            reasons: inventory.unobserved(),
            credentials: inventory.only_credentials_missing(),
        });
    }
    for (p, e) in &inventory.unreachable {
        warnings.push(format!(
            "provider `{p}` could not be listed: {}. Its leases are not in this plan, and no output file is rendered.",
            e.explained()
        ));
    }
    warnings.extend(inventory.warnings.iter().cloned());

    let mut changes = Vec::with_capacity(desired.members.len());
    let mut hashes = SpecHashMemo::default();
    // Desired members in document order.
    for m in &desired.members {
        if !targeted.includes(&m.slug) {
            continue;
        }
        let leases = live.get(m.slug.as_str()).map_or(&[][..], Vec::as_slice);
        member_changes(&desired.name, m, leases, options, &mut hashes, &mut changes)?;
    }
    // Live leases whose slug is not in the spec, by slug.
    let mut strays: Vec<(&str, &Vec<&Arc<Lease>>)> = live
        .iter()
        .filter(|(slug, _)| !members.contains(*slug) && targeted.includes(slug))
        .map(|(slug, leases)| (*slug, leases))
        .collect();
    strays.sort_unstable_by_key(|(slug, _)| *slug);
    for (slug, leases) in strays {
        for lease in leases {
            // `keep=true` says "leave this alone" to Crabbox's cleanup
            // (pool.go:540); a pond adopted from Crabbox is full of it.
            let kept = lease.is_kept() && !options.destroy_kept;
            let mut reasons = vec![format!("`{slug}` is not in the spec")];
            if kept {
                reasons.push(
                    "it is labelled keep=true, so it is kept; `--destroy-kept` destroys it"
                        .to_owned(),
                );
            } else if lease.is_kept() {
                reasons.push("it is labelled keep=true, and --destroy-kept was given".to_owned());
            }
            changes.push(MemberChange {
                slug: (*slug).to_owned(),
                provider: lease.provider,
                action: if kept { Action::NoOp } else { Action::Delete },
                lease: Some(Arc::clone(lease)),
                desired: None,
                attributes: Vec::new(),
                reasons,
                relabel: false,
                rerun_setup: false,
                commands_before: None,
            });
        }
    }
    rerun_after_new_dependencies(&mut changes);
    for c in &mut changes {
        c.commands_before = c
            .lease
            .as_ref()
            .and_then(|l| inventory.applied_commands.get(&l.id).cloned());
    }
    for m in &desired.members {
        for (dep, _) in &m.depends_on {
            if targeted.includes(&m.slug)
                && !targeted.includes(dep)
                && !live.contains_key(dep.as_str())
            {
                return Err(PlanError::SkippedDependency {
                    slug: m.slug.clone(),
                    dependency: dep.clone(),
                });
            }
        }
    }
    for c in &changes {
        let Some(m) = &c.desired else { continue };
        let verb = match c.action {
            Action::Replace | Action::CreateBeforeDestroy => "replaced",
            _ => continue,
        };
        if m.prevent_destroy {
            return Err(PlanError::PreventDestroy {
                slug: c.slug.clone(),
                verb,
                reason: c.reasons.join("; "),
            });
        }
    }
    Ok(Plan {
        pond: desired.name.clone(),
        changes,
        forget_claims: inventory
            .dangling_claims
            .iter()
            .map(|c| c.lease_id.clone())
            .collect(),
        unclaimed: inventory
            .leases
            .iter()
            .filter(|l| !l.claimed)
            .map(|l| l.id.clone())
            .collect(),
        outputs: Vec::new(),
        warnings,
    })
}

/// A member whose dependency gets a new lease (created or replaced) runs its
/// setup again: its environment carried the old address. Like compose's
/// `depends_on: { restart: true }`, but always, because addresses change.
fn rerun_after_new_dependencies(changes: &mut [MemberChange]) {
    let moving: BTreeSet<String> = changes
        .iter()
        .filter(|c| {
            matches!(
                c.action,
                Action::Create | Action::Replace | Action::CreateBeforeDestroy
            ) && c.desired.is_some()
        })
        .map(|c| c.slug.clone())
        .collect();
    for c in changes.iter_mut() {
        let Some(m) = &c.desired else { continue };
        if !matches!(c.action, Action::NoOp | Action::Update) || c.rerun_setup {
            continue;
        }
        if let Some((dep, _)) = m.depends_on.iter().find(|(d, _)| moving.contains(d)) {
            c.reasons.push(format!(
                "dependency `{dep}` gets a new lease, so setup runs again with its new address"
            ));
            c.rerun_setup = true;
            c.action = Action::Update;
        }
    }
}

/// The members a plan acts on.
enum Targets {
    /// Everything (desired members and stray leases) except skipped slugs.
    All(BTreeSet<String>),
    /// Exactly these slugs: `--only` plus their dependencies, minus `--skip`.
    Only(BTreeSet<String>),
}

impl Targets {
    fn new(desired: &DesiredPond, options: &PlanOptions) -> Self {
        let skip: BTreeSet<String> = options.skip.iter().cloned().collect();
        if options.only.is_empty() {
            return Self::All(skip);
        }
        let deps: BTreeMap<&str, Vec<&str>> = desired
            .members
            .iter()
            .map(|m| {
                (
                    m.slug.as_str(),
                    m.depends_on.iter().map(|(d, _)| d.as_str()).collect(),
                )
            })
            .collect();
        let mut set = BTreeSet::new();
        let mut stack: Vec<&str> = options.only.iter().map(String::as_str).collect();
        while let Some(s) = stack.pop() {
            if set.insert(s.to_owned()) {
                stack.extend(deps.get(s).into_iter().flatten().copied());
            }
        }
        set.retain(|s| !skip.contains(s));
        Self::Only(set)
    }

    fn includes(&self, slug: &str) -> bool {
        match self {
            Self::All(skip) => !skip.contains(slug),
            Self::Only(set) => set.contains(slug),
        }
    }
}

/// Whether a lease counts as healthy (usable, not to be replaced for its own sake).
fn health(lease: &Lease, now: u64) -> Result<(), String> {
    if lease.state() == state::FAILED {
        let why = lease
            .label(labels::FAILURE)
            .map_or_else(|| "a failed step".to_owned(), |f| f.replace('_', " "));
        return Err(format!("lease is tainted by {why}"));
    }
    if let Some(exp) = crabbox_core::expiry::expires_at(&lease.labels)
        && exp <= now
    {
        return Err(format!(
            "lease expired {} ago",
            duration::format(std::time::Duration::from_secs(now - exp))
        ));
    }
    Ok(())
}

/// Appends the changes of member `m` to `out` (a vector of its own per
/// member cost an allocation each).
fn member_changes<'a>(
    pond: &str,
    m: &'a DesiredMember,
    leases: &[&Arc<Lease>],
    options: &PlanOptions,
    hashes: &mut SpecHashMemo<'a>,
    out: &mut Vec<MemberChange>,
) -> Result<(), PlanError> {
    let base = MemberChange {
        slug: m.slug.clone(),
        provider: m.provider,
        action: Action::NoOp,
        lease: None,
        desired: Some(m.clone()),
        attributes: Vec::new(),
        reasons: Vec::new(),
        relabel: false,
        rerun_setup: false,
        commands_before: None,
    };
    if leases.is_empty() {
        out.push(MemberChange {
            action: Action::Create,
            attributes: created_attributes(m),
            ..base
        });
        return Ok(());
    }
    // Keep the oldest healthy lease; the others are duplicates.
    let keep = leases
        .iter()
        .copied()
        .find(|l| health(l, options.now).is_ok())
        .unwrap_or(leases[0]);
    if keep.is_unadopted_crabbox_member(pond) {
        out.push(adoption(m, keep, base, options)?);
        out.extend(duplicates(m, leases, keep));
        return Ok(());
    }
    let hashes = hashes.of(m);
    let mut change = MemberChange {
        lease: Some(Arc::clone(keep)),
        ..base
    };
    let mut forced = Vec::new();
    if options.replace.contains(&m.slug) {
        forced.push("replacement requested with --replace".to_owned());
    }
    if let Err(why) = health(keep, options.now) {
        forced.push(why);
    } else if keep.created_at().saturating_add(m.ttl.as_secs()) <= options.now {
        // Relabelling would set an expiry in the past; the next plan would replace it anyway.
        forced.push(format!(
            "the new ttl ({}) is shorter than the lease's age",
            duration::format(m.ttl)
        ));
    }
    // Values are borrowed, and formatted only when they differ (equal
    // values show alike): 10,000 unchanged members are compared at every plan.
    let mut attr = |name: &str, before: Option<&str>, after: Option<&str>, forces: bool| {
        if before != after {
            change.attributes.push(AttrChange {
                name: name.to_owned(),
                before: before.map(str::to_owned),
                after: after.map(str::to_owned),
                forces_replacement: forces,
            });
        }
    };
    attr(
        "provider",
        Some(keep.provider.as_str()),
        Some(m.provider.as_str()),
        true,
    );
    // With an exact type, a `class` label records nothing the spec asks
    // for: Crabbox labels every lease with its configured class, even one
    // made with `--type`, and an empty class `unknown`.
    // On `local` and `ssh` a size means nothing (the spec warns): ignored,
    // never a replacement.
    if m.sizes_machine() && m.server_type.is_none() {
        attr(
            "class",
            keep.known_label(labels::CLASS),
            m.class.map(|c| c.as_str()),
            true,
        );
    }
    // With a class, `server_type` records which of the class's types the
    // provider picked: information, not something the spec asked for.
    if m.sizes_machine() && m.server_type.is_some() {
        attr(
            "type",
            keep.label(labels::SERVER_TYPE),
            m.server_type.as_deref().map(labels::sanitize).as_deref(),
            true,
        );
    }
    attr(
        "tailscale",
        Some(flag(keep.label(labels::TAILSCALE) == Some("true"))),
        Some(flag(m.tailscale)),
        true,
    );
    attr(
        "provider_settings",
        keep.label(labels::POND_BLOCK),
        Some(hashes.block.as_str()),
        true,
    );
    let ports = keep.ports();
    if ports != m.expose {
        attr(
            "expose",
            Some(&format!("{ports:?}")),
            Some(&format!("{:?}", m.expose)),
            false,
        );
    }
    attr("keep", keep.label(labels::KEEP), Some(flag(m.keep)), false);
    for (name, key, after) in [
        ("ttl", labels::TTL_SECS, m.ttl),
        ("idle_timeout", labels::IDLE_TIMEOUT_SECS, m.idle_timeout),
    ] {
        let before = labels::secs(&keep.labels, key);
        if before != Some(after) {
            attr(
                name,
                before.map(duration::format).as_deref(),
                Some(&duration::format(after)),
                false,
            );
        }
    }
    let setup_before = keep.label(labels::POND_SETUP);
    if setup_before != Some(hashes.setup.as_str()) {
        let (before, reason) = if setup_before == Some(SETUP_PENDING) {
            (None, "setup has not completed on this lease".to_owned())
        } else {
            (
                setup_before.map(str::to_owned),
                "setup, env, sync or readiness changed".to_owned(),
            )
        };
        change.attributes.push(AttrChange {
            name: "setup".to_owned(),
            before,
            after: Some(format!(
                "{} ({} step{})",
                hashes.setup,
                m.setup.len(),
                if m.setup.len() == 1 { "" } else { "s" }
            )),
            forces_replacement: false,
        });
        change.rerun_setup = true;
        change.reasons.push(reason);
    }
    let forcing: Vec<String> = change
        .attributes
        .iter()
        .filter(|a| a.forces_replacement)
        .map(|a| format!("{} changed (forces replacement)", a.name))
        .collect();
    forced.extend(forcing);
    if !forced.is_empty() {
        change.action = if m.create_before_destroy {
            Action::CreateBeforeDestroy
        } else {
            Action::Replace
        };
        change.reasons = forced;
        change.rerun_setup = false;
    } else {
        change.relabel = change
            .attributes
            .iter()
            .any(|a| !a.forces_replacement && a.name != "setup")
            || keep.label(labels::POND_SPEC) != Some(hashes.spec.as_str()) && !change.rerun_setup;
        if change.relabel {
            change
                .reasons
                .insert(0, "labels differ from the spec".to_owned());
        }
        if change.relabel || change.rerun_setup {
            change.action = Action::Update;
        }
    }
    out.push(change);
    out.extend(duplicates(m, leases, keep));
    Ok(())
}

/// A flag as labels and the plan write it.
fn flag(on: bool) -> &'static str {
    if on { "true" } else { "false" }
}

/// The deletions of `m`'s leases other than `keep`.
fn duplicates(m: &DesiredMember, leases: &[&Arc<Lease>], keep: &Lease) -> Vec<MemberChange> {
    let mut out = Vec::new();
    for dup in leases.iter().filter(|l| l.id != keep.id) {
        out.push(MemberChange {
            slug: m.slug.clone(),
            provider: dup.provider,
            action: Action::Delete,
            lease: Some(Arc::clone(dup)),
            desired: None,
            attributes: Vec::new(),
            reasons: vec![format!(
                "duplicate lease of `{}`: keeping the oldest healthy one, {}",
                m.slug, keep.id
            )],
            relabel: false,
            rerun_setup: false,
            commands_before: None,
        });
    }
    out
}

/// The change for a member whose lease Crabbox's CLI made: adopted when
/// what can be seen of it fits the spec, replaced only with `--replace`.
///
/// # Errors
/// [`PlanError::AdoptionMisfit`] when it does not fit and `--replace` does
/// not name it.
fn adoption(
    m: &DesiredMember,
    lease: &Arc<Lease>,
    base: MemberChange,
    options: &PlanOptions,
) -> Result<MemberChange, PlanError> {
    let mut misfits = adopt::misfits(lease, m);
    if lease.state() == state::FAILED {
        misfits.push("the lease is in state `failed`".to_owned());
    }
    if lease.created_at().saturating_add(m.ttl.as_secs()) <= options.now {
        misfits.push(format!(
            "the lease is older than the spec's ttl ({})",
            duration::format(m.ttl)
        ));
    }
    let change = MemberChange {
        lease: Some(Arc::clone(lease)),
        ..base
    };
    if options.replace.contains(&m.slug) {
        let mut reasons = vec![
            "replacement requested with --replace".to_owned(),
            format!("lease {} was made by Crabbox", lease.id),
        ];
        reasons.extend(misfits);
        return Ok(MemberChange {
            action: if m.create_before_destroy {
                Action::CreateBeforeDestroy
            } else {
                Action::Replace
            },
            reasons,
            ..change
        });
    }
    if !misfits.is_empty() {
        return Err(PlanError::AdoptionMisfit {
            slug: m.slug.clone(),
            lease: lease.id.clone(),
            misfits,
        });
    }
    let after = adopt::labels(&lease.labels, m, options.rerun_setup, options.now);
    let attributes = after
        .iter()
        .filter(|(k, v)| lease.labels.get(k) != Some(*v))
        .map(|(k, v)| AttrChange {
            name: k.to_string(),
            before: lease.labels.get(k).map(ToString::to_string),
            after: Some(v.to_string()),
            forces_replacement: false,
        })
        .chain(
            lease
                .labels
                .keys()
                .filter(|k| !after.contains_key(k))
                .map(|k| AttrChange {
                    name: k.to_string(),
                    before: lease.labels.get(k).map(ToString::to_string),
                    after: None,
                    forces_replacement: false,
                }),
        )
        .collect();
    let mut reasons = vec![format!(
        "lease {} was made by Crabbox and fits the spec; its labels are rewritten as ours",
        lease.id
    )];
    if options.rerun_setup {
        reasons.push("setup runs on it (--rerun-setup)".to_owned());
    }
    Ok(MemberChange {
        action: Action::Adopt,
        attributes,
        reasons,
        relabel: true,
        rerun_setup: options.rerun_setup,
        commands_before: None,
        ..change
    })
}

/// The attributes shown for a new member.
fn created_attributes(m: &DesiredMember) -> Vec<AttrChange> {
    let mut attrs = vec![("provider", Some(m.provider.as_str().to_owned()))];
    if m.sizes_machine() {
        attrs.push(("class", m.class.map(|c| c.as_str().to_owned())));
        attrs.push(("type", m.server_type.clone()));
    }
    if !m.expose.is_empty() {
        attrs.push(("expose", Some(format!("{:?}", m.expose))));
    }
    if !m.depends_on.is_empty() {
        attrs.push((
            "depends_on",
            Some(format!(
                "{:?}",
                m.depends_on
                    .iter()
                    .map(|(d, _)| d.as_str())
                    .collect::<Vec<_>>()
            )),
        ));
    }
    attrs.push((
        "setup",
        Some(format!(
            "{} step{}",
            m.setup.len(),
            if m.setup.len() == 1 { "" } else { "s" }
        )),
    ));
    attrs.push(("ttl", Some(duration::format(m.ttl))));
    attrs
        .into_iter()
        .filter_map(|(name, after)| {
            after.map(|a| AttrChange {
                name: name.to_owned(),
                before: None,
                after: Some(a),
                forces_replacement: false,
            })
        })
        .collect()
}
