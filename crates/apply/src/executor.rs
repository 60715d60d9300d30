//! Runs a step graph: independent steps in parallel (bounded), each step
//! once all it waits for succeeded. On a failure its dependents are skipped,
//! steps already running finish, and nothing new starts (unless
//! `continue_on_error`, which keeps going on independent branches). Ctrl-C
//! stops starting steps; a second Ctrl-C exits at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use petgraph::Direction;
use petgraph::stable_graph::NodeIndex;
use tokio::task::JoinSet;

use crate::graph::{StepGraph, StepKind};
use crate::steps::{self, Context};

/// How to run.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Most steps running at once.
    pub parallelism: usize,
    /// Keep starting independent steps after a failure.
    pub continue_on_error: bool,
    /// Interval of "Still creating..." lines.
    pub heartbeat: Duration,
    /// Set when the pond lock was lost mid-run (see `PondLock::lost`): no new
    /// step starts, since another crabbox may now be changing the pond.
    pub lock_lost: Option<Arc<AtomicBool>>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        Self {
            parallelism: 10,
            continue_on_error: false,
            heartbeat: Duration::from_secs(10),
            lock_lost: None,
        }
    }
}

/// How each step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepResult {
    /// Succeeded.
    Done,
    /// Failed with this message.
    Failed(String),
    /// Did not run: a step it waits for failed, or the run stopped.
    Skipped,
}

/// The result of a run.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every step's result.
    pub results: BTreeMap<NodeIndex, StepResult>,
    /// The run was interrupted (Ctrl-C).
    pub interrupted: bool,
    /// The pond lock was lost during the run.
    pub lock_lost: bool,
    /// Per step: wall time.
    pub timings: BTreeMap<NodeIndex, Duration>,
}

impl Outcome {
    /// Steps that failed.
    #[must_use]
    pub fn failures(&self) -> usize {
        self.results
            .values()
            .filter(|r| matches!(r, StepResult::Failed(_)))
            .count()
    }

    /// Whether every step succeeded.
    #[must_use]
    pub fn success(&self) -> bool {
        !self.interrupted
            && !self.lock_lost
            && self.results.values().all(|r| *r == StepResult::Done)
    }
}

/// Set by the first Ctrl-C; the run stops starting steps.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler once per process.
fn watch_interrupts(reporter: Arc<crate::progress::Reporter>) {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    tokio::spawn(async move {
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { return },
                () = async { match sigterm.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
            }
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                reporter.message(
                    "error",
                    "Interrupted again: stopping running commands and exiting now.",
                );
                crabbox_exec::process_groups::kill_all();
                std::process::exit(130);
            }
            reporter.message(
                "warning",
                "Interrupt received: no new steps will start; waiting for running steps to finish (press Ctrl-C again to exit now).",
            );
        }
    });
}

/// What a step's task that ended without a result says: the panic's
/// message (a bug in crabbox or an adapter, never a reason to hang).
fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return format!("the step was cancelled: {e}");
    }
    let payload = e.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    format!("internal error: the step panicked: {text}")
}

/// Runs the graph to completion.
pub async fn execute(graph: &StepGraph, ctx: Arc<Context>, options: &ExecOptions) -> Outcome {
    watch_interrupts(ctx.reporter.clone());
    let mut outcome = Outcome::default();
    let mut waiting: BTreeMap<NodeIndex, usize> = graph
        .node_indices()
        .map(|n| (n, graph.neighbors_directed(n, Direction::Incoming).count()))
        .collect();
    let mut ready: BTreeSet<NodeIndex> = waiting
        .iter()
        .filter(|(_, w)| **w == 0)
        .map(|(n, _)| *n)
        .collect();
    let mut running: BTreeMap<NodeIndex, Instant> = BTreeMap::new();
    // Which node each task runs, so that a task that panicked (and so
    // returned nothing) still fails its own step.
    let mut task_nodes: BTreeMap<tokio::task::Id, NodeIndex> = BTreeMap::new();
    let mut tasks: JoinSet<(NodeIndex, Result<String, steps::StepError>, Duration)> =
        JoinSet::new();
    let mut stopped = false;
    let mut heartbeat = tokio::time::interval(options.heartbeat);
    heartbeat.tick().await;

    loop {
        if INTERRUPTED.load(Ordering::SeqCst) && !outcome.interrupted {
            outcome.interrupted = true;
            stopped = true;
        }
        if !outcome.lock_lost
            && options
                .lock_lost
                .as_ref()
                .is_some_and(|l| l.load(Ordering::SeqCst))
        {
            outcome.lock_lost = true;
            stopped = true;
            ctx.reporter.message(
                "error",
                "error: the pond lock was lost (broken with `pond unlock --force`, or it expired): no new step starts, since another crabbox may now be changing this pond; run apply again",
            );
        }
        // Start what can start.
        while !stopped && running.len() < options.parallelism.max(1) {
            let Some(&n) = ready.iter().next() else { break };
            ready.remove(&n);
            let step = graph[n].clone();
            // Rendering runs last and always, to record what exists.
            let ctx = ctx.clone();
            running.insert(n, Instant::now());
            ctx.reporter.start(&step, "");
            let task = tasks.spawn(async move {
                let started = Instant::now();
                let result = steps::run(&ctx, &step).await;
                (n, result, started.elapsed())
            });
            task_nodes.insert(task.id(), n);
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            Some(joined) = tasks.join_next() => {
                let (n, result, elapsed) = match joined {
                    Ok(r) => r,
                    Err(e) => {
                        let Some(n) = task_nodes.get(&e.id()).copied() else { continue };
                        let elapsed = running.get(&n).map(Instant::elapsed).unwrap_or_default();
                        (n, Err(steps::StepError { message: panic_message(e) }), elapsed)
                    }
                };
                running.remove(&n);
                outcome.timings.insert(n, elapsed);
                let step = &graph[n];
                match result {
                    Ok(detail) => {
                        ctx.reporter.done(step, elapsed, &detail);
                        outcome.results.insert(n, StepResult::Done);
                        for next in graph.neighbors_directed(n, Direction::Outgoing) {
                            // A dependent already skipped (another of its
                            // dependencies failed) is no longer counted.
                            let Some(w) = waiting.get_mut(&next) else { continue };
                            *w -= 1;
                            if *w == 0 && !outcome.results.contains_key(&next) {
                                ready.insert(next);
                            }
                        }
                    }
                    Err(e) => {
                        ctx.reporter.failed(step, elapsed, &e.message);
                        outcome.results.insert(n, StepResult::Failed(e.message));
                        skip_dependents(graph, n, &mut outcome, &mut ready, &mut waiting, &ctx);
                        if !options.continue_on_error {
                            stopped = true;
                        }
                    }
                }
            }
            _ = heartbeat.tick() => {
                for (n, started) in &running {
                    ctx.reporter.heartbeat(&graph[*n], started.elapsed());
                }
            }
        }
    }
    // The render step runs even after failures, so the files show what exists.
    let render = graph
        .node_indices()
        .find(|n| graph[*n].kind == StepKind::Render);
    for n in graph.node_indices() {
        if !outcome.results.contains_key(&n) && Some(n) != render {
            outcome.results.insert(n, StepResult::Skipped);
        }
    }
    if let Some(r) = render.filter(|r| !outcome.results.contains_key(r)) {
        let step = &graph[r];
        let started = Instant::now();
        ctx.reporter.start(step, "");
        let result = steps::run(&ctx, step).await;
        outcome.timings.insert(r, started.elapsed());
        outcome.results.insert(
            r,
            match result {
                Ok(detail) => {
                    ctx.reporter.done(step, started.elapsed(), &detail);
                    StepResult::Done
                }
                Err(e) => {
                    ctx.reporter.failed(step, started.elapsed(), &e.message);
                    StepResult::Failed(e.message)
                }
            },
        );
    }
    outcome
}

/// Marks every step downstream of `failed` as skipped (except rendering).
fn skip_dependents(
    graph: &StepGraph,
    failed: NodeIndex,
    outcome: &mut Outcome,
    ready: &mut BTreeSet<NodeIndex>,
    waiting: &mut BTreeMap<NodeIndex, usize>,
    ctx: &Context,
) {
    let mut stack: Vec<NodeIndex> = graph
        .neighbors_directed(failed, Direction::Outgoing)
        .collect();
    while let Some(n) = stack.pop() {
        if graph[n].kind == StepKind::Render || outcome.results.contains_key(&n) {
            continue;
        }
        ctx.reporter
            .skipped(&graph[n], &format!("{} failed", graph[failed]));
        outcome.results.insert(n, StepResult::Skipped);
        ready.remove(&n);
        waiting.remove(&n);
        stack.extend(graph.neighbors_directed(n, Direction::Outgoing));
    }
}
