//! The engine under faults of its own providers: a step whose adapter
//! panics fails that member (its dependents skipped) and the run ends; a
//! provider whose `list` fails is never planned as empty.

use std::sync::Arc;
use std::time::Duration;

use crabbox_apply::discover::discover;
use crabbox_apply::executor::{ExecOptions, StepResult};
use crabbox_apply::graph;
use crabbox_apply::progress::{Mode, Reporter};
use crabbox_apply::reconcile;
use crabbox_core::labels;
use crabbox_plan::diff::{PlanError, PlanOptions, plan};
use crabbox_providers::Provider;
use crabbox_providers::registry::Registry;
use crabbox_state::claims::ClaimStore;
use proptest::prelude::*;

use crate::converge::load;
use crate::fake_provider::MemoryProvider;

const POND: &str = "faults";

fn options() -> PlanOptions {
    PlanOptions {
        now: labels::now_secs(),
        ..PlanOptions::default()
    }
}

#[test]
fn a_step_that_panics_fails_its_member_skips_its_dependents_and_the_run_ends() {
    let desired = load(&format!(
        "version: 1\npond: {POND}\ndefaults: {{ sync: false }}\nmembers:\n  - slug: a\n  - slug: b\n    depends_on: [a]\n  - slug: c\n"
    ));
    let provider = MemoryProvider::new();
    *provider.panic_on_create.lock().expect("lock") = Some("a".to_owned());
    let state = tempfile::tempdir().expect("tempdir");
    let registry = Registry::with(vec![provider.clone() as Arc<dyn Provider>]);
    let rt = crate::support::runtime();
    let inventory = rt.block_on(discover(
        POND,
        &[],
        &registry,
        state.path(),
        &ClaimStore::local(state.path()),
    ));
    let p = plan(&desired, &inventory, &options()).expect("plan");
    let ctx = Arc::new(reconcile::context(
        &p,
        Some(&desired),
        &inventory,
        registry.clone(),
        state.path(),
        &ClaimStore::local(state.path()),
        state.path().to_path_buf(),
        None,
        Arc::new(Reporter::new(Mode::Json)),
    ));
    let started = std::time::Instant::now();
    let (outcome, _) = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                reconcile::apply(
                    &p,
                    ctx,
                    &ExecOptions {
                        heartbeat: Duration::from_secs(3600),
                        continue_on_error: true,
                        ..ExecOptions::default()
                    },
                    false,
                ),
            )
            .await
        })
        .expect("the run ends instead of hanging on the panicked step");
    eprintln!("the run with a panicking step took {:?}", started.elapsed());
    assert!(!outcome.success());

    let g = graph::build(&p, false);
    let results_of = |slug: &str| -> Vec<&StepResult> {
        g.node_indices()
            .filter(|n| g[*n].slug.as_deref() == Some(slug))
            .map(|n| outcome.results.get(&n).expect("every step has a result"))
            .collect()
    };
    let a = results_of("a");
    assert!(
        a.iter().any(|r| matches!(r,
            StepResult::Failed(m) if m.contains("panicked") && m.contains("boom in create of a"))),
        "a failed with the panic's message: {a:?}"
    );
    let b = results_of("b");
    // b's lease may be made meanwhile; everything that waits for a is not run.
    assert!(
        b.contains(&&StepResult::Skipped) && !b.iter().any(|r| matches!(r, StepResult::Failed(_))),
        "b's steps after a's are skipped: {b:?}"
    );
    let c = results_of("c");
    assert!(
        !c.is_empty() && c.iter().all(|r| **r == StepResult::Done),
        "c (independent) done: {c:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever exists and whatever the spec says: a provider that could
    /// not be listed gives no plan (so no create, and no delete).
    #[test]
    fn a_provider_whose_list_fails_is_never_planned(
        members in proptest::collection::btree_set(0usize..5, 1..5),
        existing in proptest::collection::btree_set(0usize..5, 0..5),
    ) {
        const SLUGS: [&str; 5] = ["db", "api", "web", "cache", "queue"];
        let text = format!(
            "version: 1\npond: {POND}\ndefaults: {{ sync: false }}\nmembers:\n{}",
            members.iter().map(|m| format!("  - slug: {}\n", SLUGS[*m])).collect::<String>()
        );
        let desired = load(&text);
        let provider = MemoryProvider::new();
        let registry = Registry::with(vec![provider.clone() as Arc<dyn Provider>]);
        let state = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // The existing members were applied while the API answered.
        if !existing.is_empty() {
            let all = load(&format!(
                "version: 1\npond: {POND}\ndefaults: {{ sync: false }}\nmembers:\n{}",
                existing.iter().map(|m| format!("  - slug: {}\n", SLUGS[*m])).collect::<String>()
            ));
            let inv = rt.block_on(discover(POND, &[], &registry, state.path(), &ClaimStore::local(state.path())));
            let p = plan(&all, &inv, &options()).expect("plan");
            let ctx = Arc::new(reconcile::context(
                &p, Some(&all), &inv, registry.clone(), state.path(),
                &ClaimStore::local(state.path()), state.path().to_path_buf(), None, Arc::new(Reporter::new(Mode::Json)),
            ));
            let (outcome, _) = rt.block_on(reconcile::apply(&p, ctx, &ExecOptions {
                heartbeat: Duration::from_secs(3600),
                ..ExecOptions::default()
            }, false));
            prop_assert!(outcome.success());
        }
        let creates_before = provider.creates.lock().expect("lock").len();
        *provider.list_error.lock().expect("lock") = Some("503 unavailable".to_owned());

        // As the commands observe: the providers the spec names are wanted.
        let inv = rt.block_on(reconcile::observe(&desired, &registry, state.path(), &ClaimStore::local(state.path())));
        prop_assert!(inv.leases.is_empty(), "nothing was seen");
        let planned = plan(&desired, &inv, &options());
        let refused = matches!(planned, Err(PlanError::Unobserved { .. }));
        prop_assert!(refused, "planned against an unseen provider: {:?}", planned.map(|p| p.changes.len()));
        prop_assert_eq!(provider.creates.lock().expect("lock").len(), creates_before);
    }
}
