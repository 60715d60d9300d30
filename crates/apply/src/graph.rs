//! The plan as a graph of steps (petgraph): per member `warmup → sync →
//! setup → ready → finalize`; a member's setup waits for each dependency's
//! readiness (or setup, for `completed`); warmups wait for nothing, so all
//! provisioning overlaps. `-/+` releases first, `+/-` releases last, and
//! rendering runs after everything.

use std::collections::BTreeMap;
use std::fmt;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};

use crabbox_core::lease::Lease;
use crabbox_plan::{Action, Plan};
use crabbox_spec::model::Condition;

/// What one step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    /// Create the member's lease.
    Warmup,
    /// Rewrite an existing lease's labels (in-place update).
    Relabel,
    /// Write our labels and claim on a lease Crabbox's CLI made; `true`
    /// when setup runs after it (`--rerun-setup`).
    Adopt(bool),
    /// Stop the services a previous setup started (before re-running it).
    StopServices,
    /// Copy the repository into the workspace.
    Sync,
    /// Run the setup steps.
    Setup,
    /// Wait for the ready check.
    Ready,
    /// Publish the exposed ports at public URLs (URL-bridge providers).
    Share,
    /// Mark the lease ready (labels `state=ready`, `pond_setup`).
    Finalize,
    /// Release a lease.
    Release(Box<Lease>),
    /// Remove a claim whose resource is gone.
    ForgetClaim(String),
    /// Write peers.json, hosts, env and templates.
    Render,
}

/// One node of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The member it belongs to (`None` for pond-wide steps).
    pub slug: Option<String>,
    /// What it does.
    pub kind: StepKind,
}

impl Step {
    /// Short name for progress and events (`warmup`, `release`…).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self.kind {
            StepKind::Warmup => "warmup",
            StepKind::Relabel => "relabel",
            StepKind::Adopt(_) => "adopt",
            StepKind::StopServices => "stop-services",
            StepKind::Sync => "sync",
            StepKind::Setup => "setup",
            StepKind::Ready => "ready",
            StepKind::Share => "share",
            StepKind::Finalize => "finalize",
            StepKind::Release(_) => "release",
            StepKind::ForgetClaim(_) => "forget-claim",
            StepKind::Render => "render",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.slug {
            Some(s) => write!(f, "{s}: {}", self.name()),
            None => f.write_str(self.name()),
        }
    }
}

/// The step graph; edges point from a step to the steps that wait for it.
pub type StepGraph = StableDiGraph<Step, ()>;

/// Per member: the step that means "ready" and the one that means "setup done".
#[derive(Default, Clone, Copy)]
struct Marks {
    ready: Option<NodeIndex>,
    setup: Option<NodeIndex>,
    first_setup: Option<NodeIndex>,
}

/// Builds the step graph of a plan. `render` adds the final render step.
#[must_use]
pub fn build(plan: &Plan, render: bool) -> StepGraph {
    let mut g = StepGraph::new();
    let mut marks: BTreeMap<String, Marks> = BTreeMap::new();
    let mut releases: BTreeMap<String, Vec<NodeIndex>> = BTreeMap::new();
    let chain = |g: &mut StepGraph, slug: &str, kinds: Vec<StepKind>| -> Vec<NodeIndex> {
        let mut nodes: Vec<NodeIndex> = Vec::new();
        for kind in kinds {
            let n = g.add_node(Step {
                slug: Some(slug.to_owned()),
                kind,
            });
            if let Some(prev) = nodes.last() {
                g.add_edge(*prev, n, ());
            }
            nodes.push(n);
        }
        nodes
    };
    for c in &plan.changes {
        if c.action == Action::Delete {
            if let Some(lease) = &c.lease {
                let n = g.add_node(Step {
                    slug: Some(c.slug.clone()),
                    kind: StepKind::Release(Box::new(Lease::clone(lease))),
                });
                releases.entry(c.slug.clone()).or_default().push(n);
            }
            continue;
        }
        let Some(m) = &c.desired else { continue };
        let mut provision = vec![StepKind::Warmup];
        if m.sync.enabled {
            provision.push(StepKind::Sync);
        }
        provision.extend([StepKind::Setup, StepKind::Ready]);
        if crabbox_core::provider::features_of(m.provider).url_bridge && !m.expose.is_empty() {
            provision.push(StepKind::Share);
        }
        provision.push(StepKind::Finalize);
        let nodes = match c.action {
            Action::NoOp => continue,
            Action::Create => chain(&mut g, &c.slug, provision),
            Action::Update => {
                let mut kinds = Vec::new();
                if c.relabel {
                    kinds.push(StepKind::Relabel);
                }
                if c.rerun_setup {
                    kinds.push(StepKind::StopServices);
                    kinds.extend(provision.into_iter().skip(1));
                }
                chain(&mut g, &c.slug, kinds)
            }
            Action::Adopt => {
                let mut kinds = vec![StepKind::Adopt(c.rerun_setup)];
                if c.rerun_setup {
                    kinds.extend(provision.into_iter().skip(1));
                }
                chain(&mut g, &c.slug, kinds)
            }
            Action::Replace => {
                let old = c
                    .lease
                    .as_deref()
                    .map(|l| StepKind::Release(Box::new(l.clone())));
                let nodes = chain(&mut g, &c.slug, old.into_iter().chain(provision).collect());
                releases.entry(c.slug.clone()).or_default().push(nodes[0]);
                nodes
            }
            Action::CreateBeforeDestroy => {
                let old = c
                    .lease
                    .as_deref()
                    .map(|l| StepKind::Release(Box::new(l.clone())));
                let nodes = chain(&mut g, &c.slug, provision.into_iter().chain(old).collect());
                if let Some(last) = nodes.last().filter(|_| c.lease.is_some()) {
                    releases.entry(c.slug.clone()).or_default().push(*last);
                }
                nodes
            }
            Action::Delete => continue,
        };
        let find = |k: &StepKind| nodes.iter().copied().find(|n| g[*n].kind == *k);
        marks.insert(
            c.slug.clone(),
            Marks {
                ready: find(&StepKind::Finalize),
                setup: find(&StepKind::Setup),
                first_setup: find(&StepKind::Setup)
                    .or_else(|| find(&StepKind::Relabel))
                    .or_else(|| find(&StepKind::Adopt(false))),
            },
        );
    }
    // Setup waits for dependencies; a dependency's release waits for its dependents' releases.
    for c in &plan.changes {
        let Some(m) = &c.desired else { continue };
        let mine = marks.get(&c.slug).and_then(|mk| mk.first_setup);
        for (dep, condition) in &m.depends_on {
            if let (Some(mine), Some(theirs)) = (mine, marks.get(dep)) {
                let wait_for = match condition {
                    Condition::Ready => theirs.ready,
                    Condition::Completed => theirs.setup,
                };
                if let Some(w) = wait_for {
                    g.add_edge(w, mine, ());
                }
            }
            for &mine_release in releases.get(&c.slug).into_iter().flatten() {
                for &their_release in releases.get(dep).into_iter().flatten() {
                    g.add_edge(mine_release, their_release, ());
                }
            }
        }
    }
    for id in &plan.forget_claims {
        g.add_node(Step {
            slug: None,
            kind: StepKind::ForgetClaim(id.clone()),
        });
    }
    if render {
        let all: Vec<NodeIndex> = g.node_indices().collect();
        let r = g.add_node(Step {
            slug: None,
            kind: StepKind::Render,
        });
        for n in all {
            g.add_edge(n, r, ());
        }
    }
    g
}
