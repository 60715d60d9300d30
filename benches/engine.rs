//! Measures crabbox's own cost: planning and applying N members against the
//! in-memory provider (zero provider latency), so every microsecond is ours.
//! Run with `cargo bench --bench engine`; prints a table, asserts nothing.

#[path = "../tests/it/fake_provider.rs"]
#[allow(dead_code)] // the bench uses the provider, not the test helpers around it
mod fake_provider;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crabbox_apply::discover::discover;
use crabbox_apply::executor::ExecOptions;
use crabbox_apply::progress::{Mode, Reporter};
use crabbox_apply::reconcile;
use crabbox_plan::diff::{PlanOptions, plan};
use crabbox_providers::Provider;
use crabbox_providers::registry::Registry;
use crabbox_spec::interpolate::Variables;
use crabbox_spec::load::load_str;
use crabbox_state::claims::ClaimStore;

fn spec(n: usize) -> String {
    let mut s = String::from("version: 1\npond: bench\ndefaults: { sync: false }\nmembers:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  - slug: m{i}\n    expose: [8080]\n    setup: [ \"echo {i}\" ]\n"
        ));
        if i % 10 != 0 {
            s.push_str(&format!("    depends_on: [m{}]\n", i - i % 10));
        }
    }
    s
}

fn main() {
    println!(
        "{:>6}  {:>12}  {:>12}  {:>14}  {:>14}",
        "members", "plan", "apply", "plan/member", "apply/member"
    );
    for n in [10, 100, 500, 1000] {
        let text = spec(n);
        let desired = load_str(
            "bench.yaml",
            &text,
            std::path::Path::new("."),
            &Variables::fixed(vec![]),
        )
        .pond
        .expect("valid");
        let provider = fake_provider::MemoryProvider::new();
        let registry = Registry::with(vec![provider.clone() as Arc<dyn Provider>]);
        let state = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let options = PlanOptions {
            now: crabbox_core::labels::now_secs(),
            ..PlanOptions::default()
        };

        let t = Instant::now();
        let inventory = rt.block_on(discover(
            "bench",
            &[],
            &registry,
            state.path(),
            &ClaimStore::local(state.path()),
        ));
        let p = plan(&desired, &inventory, &options).expect("plan");
        let plan_time = t.elapsed();

        let reporter = Arc::new(Reporter::new(Mode::Json));
        let ctx = Arc::new(reconcile::context(
            &p,
            Some(&desired),
            &inventory,
            registry.clone(),
            state.path(),
            &ClaimStore::local(state.path()),
            state.path().to_path_buf(),
            None,
            reporter,
        ));
        let t = Instant::now();
        let exec = ExecOptions {
            parallelism: 10,
            continue_on_error: false,
            heartbeat: Duration::from_secs(3600),
            ..ExecOptions::default()
        };
        let (outcome, _) = rt.block_on(reconcile::apply(&p, ctx, &exec, false));
        let apply_time = t.elapsed();
        assert!(outcome.success());
        #[allow(clippy::cast_precision_loss)]
        let per = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1000.0 / n as f64);
        println!(
            "{n:>6}  {:>12?}  {:>12?}  {:>14}  {:>14}",
            plan_time,
            apply_time,
            per(plan_time),
            per(apply_time)
        );
    }
}
