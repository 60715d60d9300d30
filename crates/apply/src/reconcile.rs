//! The observe → plan → apply loop that the commands share: discover the
//! pond, plan against the spec (with the rendered files' diffs), build the
//! step graph and run it. Commands only parse flags and print.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::discover::discover;
use crate::executor::{ExecOptions, Outcome, StepResult, execute};
use crate::graph::{self, StepKind};
use crate::progress::Reporter;
use crate::steps::{Context, OutputTarget, without_mesh_files};
use crabbox_core::labels::POND_SPEC;
use crabbox_core::lease::{Endpoint, Lease};
use crabbox_core::provider::ProviderName;
use crabbox_plan::diff::{PlanError, PlanOptions, plan};
use crabbox_plan::inventory::Inventory;
use crabbox_plan::{Action, OutputChange, Plan};
use crabbox_providers::registry::Registry;
use crabbox_render::files::{output_files, unified_diff};
use crabbox_render::peers::peers_from_leases;
use crabbox_spec::desired::DesiredPond;
use crabbox_state::claims::ClaimStore;
use crabbox_state::state_dir::expand_tilde;

/// The directory a pond's outputs are written to.
#[must_use]
pub fn outputs_dir(desired: &DesiredPond) -> PathBuf {
    desired.outputs_dir.as_deref().map_or_else(
        || expand_tilde(&format!("~/.crabbox/pond/{}", desired.name)),
        expand_tilde,
    )
}

/// Reads the user templates of a pond.
///
/// # Errors
/// A template file that cannot be read.
pub fn templates(desired: &DesiredPond) -> Result<Vec<(String, String)>, String> {
    desired
        .templates
        .iter()
        .map(|(src, dest)| {
            std::fs::read_to_string(src)
                .map(|text| (dest.clone(), text))
                .map_err(|e| format!("cannot read template {}: {e}", src.display()))
        })
        .collect()
}

/// Discovers the leases of the spec's pond.
pub async fn observe(
    desired: &DesiredPond,
    registry: &Registry,
    state_dir: &Path,
    claims: &ClaimStore,
) -> Inventory {
    let wanted: Vec<ProviderName> = desired.members.iter().map(|m| m.provider).collect();
    discover(&desired.name, &wanted, registry, state_dir, claims).await
}

/// Why [`plan_with_outputs`] made no plan.
#[derive(Debug)]
pub enum PlanFailure {
    /// The planner refused: the plan must not be applied.
    Refused(PlanError),
    /// An output file's template does not render.
    Outputs(String),
}

impl PlanFailure {
    /// Whether missing or refused credentials are the whole cause (the
    /// commands exit 3 then).
    #[must_use]
    pub fn is_credentials(&self) -> bool {
        matches!(
            self,
            Self::Refused(PlanError::Unobserved {
                credentials: true,
                ..
            })
        )
    }
}

impl std::fmt::Display for PlanFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(e) => e.fmt(f),
            Self::Outputs(why) => f.write_str(why),
        }
    }
}

/// Plans, including the diffs of rendered output files. The files' future
/// content uses `(known after apply)` for addresses of leases not created yet.
///
/// # Errors
/// A plan that must not be applied, or a template that does not render.
pub fn plan_with_outputs(
    desired: &DesiredPond,
    inventory: &Inventory,
    options: &PlanOptions,
    registry: &Registry,
) -> Result<Plan, PlanFailure> {
    let mut p = plan(desired, inventory, options).map_err(PlanFailure::Refused)?;
    if !inventory.unobserved().is_empty() {
        // Part of the pond was not seen (a targeted plan may go on): the
        // files would describe a pond without those members, so none is
        // rendered.
        return Ok(p);
    }
    let reg = registry.clone();
    // Each projected lease is made when its peer is, and dropped once the
    // peer is made: with 10,000 members all of them at once were another
    // copy of every lease's labels, tens of MiB at the command's peak.
    let peers = peers_from_leases(
        &desired.name,
        projected_leases(&p, crabbox_core::labels::now_secs()),
        |n| reg.features(n),
    );
    let dir = outputs_dir(desired);
    // Exactly the files apply's render step would write.
    let files = without_mesh_files(
        &dir,
        output_files(
            &desired.name,
            &peers,
            &templates(desired).map_err(PlanFailure::Outputs)?,
        )
        .map_err(PlanFailure::Outputs)?,
    );
    for f in files {
        let path = dir.join(&f.name);
        if holds(&path, f.contents.as_bytes()) {
            continue;
        }
        // A file that is there but cannot be read is not a file to create:
        // what the plan would replace is unknown.
        let old = match std::fs::read_to_string(&path) {
            Ok(old) => Some(old),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(PlanFailure::Outputs(format!(
                    "cannot read the output file {}: {e}; apply would replace it with the rendered {}: move it aside or make it readable",
                    path.display(),
                    f.name
                )));
            }
        };
        if old.as_deref() != Some(f.contents.as_str()) {
            p.outputs.push(OutputChange {
                name: f.name.clone(),
                action: if old.is_some() { "update" } else { "create" },
                diff: unified_diff(&f.name, old.as_deref().unwrap_or(""), &f.contents),
            });
        }
    }
    Ok(p)
}

/// Whether the file at `path` holds exactly `contents`: compared piece by
/// piece as it is read, so an unchanged `peers.json` of 10,000 members
/// (10 MiB) is not read into memory of its own only to be compared.
fn holds(path: &Path, contents: &[u8]) -> bool {
    use std::io::Read as _;
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    if file.metadata().map(|m| m.len()).ok() != u64::try_from(contents.len()).ok() {
        return false;
    }
    let mut piece = vec![0_u8; 64 * 1024];
    let mut rest = contents;
    loop {
        match file.read(&mut piece) {
            // The whole file read: it matched so far, and nothing of it is left over.
            Ok(0) => return rest.is_empty(),
            Ok(n) => match rest.strip_prefix(&piece[..n]) {
                Some(after) => rest = after,
                None => return false,
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// The leases that will exist after the plan, with placeholders for new
/// ones, one at a time.
fn projected_leases(p: &Plan, now: u64) -> impl Iterator<Item = Lease> + '_ {
    p.changes
        .iter()
        .filter_map(move |c| match (c.action, &c.lease, &c.desired) {
            (Action::Delete, _, _) => None,
            (Action::NoOp | Action::Update, Some(lease), Some(m)) => {
                let labels = match (c.action, lease.label(POND_SPEC)) {
                    // The planner leaves a lease alone only when it carries
                    // the member's spec hash: the hash need not be computed
                    // again (it serializes the member).
                    (Action::NoOp, Some(spec)) => crabbox_spec::member_labels::for_update_hashed(
                        &lease.labels,
                        m,
                        spec.into(),
                        now,
                    ),
                    _ => crabbox_spec::member_labels::for_update(&lease.labels, m, now),
                };
                Some(with_labels(lease, labels))
            }
            (Action::Adopt, Some(lease), Some(m)) => Some(with_labels(
                lease,
                crabbox_plan::adopt::labels(&lease.labels, m, c.rerun_setup, now),
            )),
            // A lease not in the spec that stays (`keep=true`) is still a peer.
            (Action::NoOp, Some(lease), None) => Some(Lease::clone(lease)),
            (_, _, Some(m)) => {
                let labels =
                    crabbox_spec::member_labels::for_create(&p.pond, "cbx_000000000000", m, 0);
                Some(Lease {
                    id: "(known after apply)".to_owned(),
                    provider: m.provider,
                    cloud_id: String::new(),
                    labels,
                    endpoint: Endpoint {
                        host: Some("(known after apply)".to_owned()),
                        ..Endpoint::default()
                    },
                    listed: false,
                    claimed: false,
                })
            }
            _ => None,
        })
}

/// `lease` with other labels (its own are not copied only to be replaced).
fn with_labels(lease: &Lease, labels: crabbox_core::labels::Labels) -> Lease {
    Lease {
        id: lease.id.clone(),
        provider: lease.provider,
        cloud_id: lease.cloud_id.clone(),
        labels,
        endpoint: lease.endpoint.clone(),
        listed: lease.listed,
        claimed: lease.claimed,
    }
}

/// Builds the shared context for running a plan.
#[must_use]
#[allow(clippy::too_many_arguments)] // each piece comes from a different place; a struct would only rename them
pub fn context(
    p: &Plan,
    desired: Option<&DesiredPond>,
    inventory: &Inventory,
    registry: Registry,
    state_dir: &Path,
    claims: &ClaimStore,
    sync_root: PathBuf,
    outputs: Option<OutputTarget>,
    reporter: Arc<Reporter>,
) -> Context {
    // Every lease that stays: unchanged, updated, and the old side of replacements.
    let mut leases: BTreeMap<String, Lease> = BTreeMap::new();
    for lease in &inventory.leases {
        leases
            .entry(lease.slug().to_owned())
            .or_insert_with(|| Lease::clone(lease));
    }
    for c in &p.changes {
        if let Some(lease) = &c.lease
            && c.action != Action::Delete
        {
            leases.insert(c.slug.clone(), Lease::clone(lease));
        }
    }
    Context {
        pond: p.pond.clone(),
        registry,
        state_dir: state_dir.to_owned(),
        claims: claims.clone(),
        members: desired
            .map(|d| {
                d.members
                    .iter()
                    .map(|m| (m.slug.clone(), m.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        leases: Mutex::new(leases),
        sync_root,
        outputs,
        reporter,
        wait_timeout: None,
        taken_slugs: tokio::sync::Mutex::default(),
        tailnet_acl: tokio::sync::OnceCell::new(),
    }
}

/// Counts of what an apply did, in Terraform's words.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// Leases created.
    pub added: usize,
    /// Members updated in place.
    pub changed: usize,
    /// Leases made by Crabbox that were adopted.
    pub adopted: usize,
    /// Leases released.
    pub destroyed: usize,
}

/// Runs a plan and counts what happened.
pub async fn apply(
    p: &Plan,
    ctx: Arc<Context>,
    options: &ExecOptions,
    render: bool,
) -> (Outcome, Applied) {
    let g = graph::build(p, render);
    let outcome = execute(&g, ctx, options).await;
    let mut applied = Applied::default();
    let mut update_slugs: BTreeMap<String, bool> = p
        .changes
        .iter()
        .filter(|c| c.action == Action::Update)
        .map(|c| (c.slug.clone(), true))
        .collect();
    let mut adopt_slugs: BTreeMap<String, bool> = p
        .changes
        .iter()
        .filter(|c| c.action == Action::Adopt)
        .map(|c| (c.slug.clone(), true))
        .collect();
    for n in g.node_indices() {
        let done = outcome.results.get(&n) == Some(&StepResult::Done);
        let step = &g[n];
        match &step.kind {
            StepKind::Warmup if done => applied.added += 1,
            StepKind::Release(_) if done => applied.destroyed += 1,
            _ => {}
        }
        for slugs in [&mut update_slugs, &mut adopt_slugs] {
            if let Some(all_done) = step.slug.as_ref().and_then(|s| slugs.get_mut(s)) {
                *all_done &= done;
            }
        }
    }
    applied.changed = update_slugs.values().filter(|d| **d).count();
    applied.adopted = adopt_slugs.values().filter(|d| **d).count();
    (outcome, applied)
}

/// Crabbox's own directories, which sync never copies even when they lie
/// inside the repository: the state directory (local leases' workspaces
/// live there), the pond's outputs directory, and `~/.crabbox`, where every
/// pond's outputs and SSH mesh files go by default.
#[must_use]
pub fn own_dirs(state_dir: &Path, outputs: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = vec![state_dir.to_owned(), expand_tilde("~/.crabbox")];
    dirs.extend(outputs.map(Path::to_path_buf));
    dirs
}

/// The repository root that sync copies: the git top level of `dir`, else `dir`.
#[must_use]
pub fn sync_root(dir: &Path) -> PathBuf {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--show-toplevel"])
        .output();
    match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        _ => dir.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_holds_exactly_its_contents_however_long() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peers.json");
        // Longer than one piece, so pieces after the first are compared too.
        let long: Vec<u8> = (0..200_000_u32).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(&path, &long).expect("write");
        assert!(holds(&path, &long));
        let mut late = long.clone();
        late[150_000] = b'!';
        assert!(!holds(&path, &late), "a difference past the first piece");
        assert!(!holds(&path, &long[..long.len() - 1]), "shorter");
        assert!(!holds(&path, &[long.as_slice(), b"x"].concat()), "longer");
        assert!(
            !holds(&dir.path().join("none"), b""),
            "a missing file holds nothing"
        );
        std::fs::write(&path, b"").expect("empty");
        assert!(holds(&path, b""));
    }
}
