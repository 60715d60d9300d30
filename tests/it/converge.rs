//! Property: for random specs and random live inventories — stale,
//! tainted, duplicated, expired leases, and resources of other ponds or
//! without crabbox's markers — applying the plan and planning again gives
//! "no changes", and nothing outside the pond was touched.

use std::sync::Arc;

use crabbox_apply::discover::discover;
use crabbox_apply::executor::ExecOptions;
use crabbox_apply::progress::{Mode, Reporter};
use crabbox_apply::reconcile;
use crabbox_core::labels::{self};
use crabbox_core::lease::{Endpoint, Lease};
use crabbox_core::provider::ProviderName;
use crabbox_plan::diff::{PlanOptions, plan};
use crabbox_providers::Provider;
use crabbox_providers::registry::Registry;
use crabbox_spec::desired::DesiredPond;
use crabbox_spec::interpolate::Variables;
use crabbox_spec::load::load_str;
use crabbox_spec::member_labels::{SpecHashes, for_create};
use crabbox_state::claims::ClaimStore;
use proptest::prelude::*;

use crate::fake_provider::MemoryProvider;

const SLUGS: [&str; 6] = ["db", "api", "worker", "cache", "web", "queue"];
const POND: &str = "prop";

#[derive(Debug, Clone)]
struct MemberGen {
    slug: usize,
    ports: Vec<u16>,
    setup: u8,
    keep: bool,
    ttl: u8,
    depends_on_previous: bool,
    class: bool,
}

fn member_gen() -> impl Strategy<Value = MemberGen> {
    (
        0..SLUGS.len(),
        prop::collection::vec(8000u16..8004, 0..3),
        0u8..3,
        any::<bool>(),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(slug, ports, setup, keep, ttl, dep, class)| MemberGen {
            slug,
            ports,
            setup,
            keep,
            ttl,
            depends_on_previous: dep,
            class,
        })
}

fn spec_text(members: &[MemberGen]) -> String {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = format!("version: 1\npond: {POND}\ndefaults: {{ sync: false }}\nmembers:\n");
    let mut previous: Option<&str> = None;
    for m in members {
        if !seen.insert(m.slug) {
            continue;
        }
        let slug = SLUGS[m.slug];
        out.push_str(&format!("  - slug: {slug}\n"));
        if !m.ports.is_empty() {
            out.push_str(&format!("    expose: {:?}\n", m.ports));
        }
        out.push_str(&format!("    setup: [ \"echo setup-{}\" ]\n", m.setup));
        out.push_str(&format!(
            "    keep: {}\n    ttl: {}\n",
            m.keep,
            ["30m", "90m", "2h"][usize::from(m.ttl)]
        ));
        if m.class {
            out.push_str("    type: big\n");
        }
        if let Some(p) = previous.filter(|_| m.depends_on_previous) {
            out.push_str(&format!("    depends_on: [{p}]\n"));
        }
        previous = Some(slug);
    }
    out
}

pub(crate) fn load(text: &str) -> DesiredPond {
    let loaded = load_str(
        "gen.yaml",
        text,
        std::path::Path::new("."),
        &Variables::fixed(vec![]),
    );
    loaded
        .pond
        .unwrap_or_else(|| panic!("generated spec is valid:\n{text}\n{:?}", loaded.diagnostics))
}

#[derive(Debug, Clone)]
struct LiveGen {
    slug: usize,
    from_previous: bool,
    damage: u8, // 0 healthy, 1 tainted, 2 setup pending, 3 expired
    age: u16,
}

fn live_gen() -> impl Strategy<Value = LiveGen> {
    (
        0..SLUGS.len(),
        any::<bool>(),
        prop_oneof![4 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
        1u16..1000,
    )
        .prop_map(|(slug, from_previous, damage, age)| LiveGen {
            slug,
            from_previous,
            damage,
            age,
        })
}

/// A resource as some earlier apply left it.
fn applied_lease(
    n: usize,
    g: &LiveGen,
    current: &DesiredPond,
    previous: &DesiredPond,
) -> Option<Lease> {
    let source = if g.from_previous { previous } else { current };
    let m = source.members.iter().find(|m| m.slug == SLUGS[g.slug])?;
    let id = format!("cbx_{n:012x}");
    let now = labels::now_secs();
    let mut l = for_create(POND, &id, m, now - u64::from(g.age));
    l.insert(labels::STATE.into(), labels::state::READY.into());
    l.insert(labels::POND_SETUP.into(), SpecHashes::of(m).setup);
    match g.damage {
        1 => {
            l.insert(labels::STATE.into(), labels::state::FAILED.into());
            l.insert(labels::FAILURE.into(), "setup_step_1_exit_1".into());
        }
        2 => {
            l.insert(labels::POND_SETUP.into(), labels::SETUP_PENDING.into());
        }
        3 => {
            l.insert(labels::EXPIRES_AT.into(), "1".into());
        }
        _ => {}
    }
    Some(Lease {
        id: id.clone(),
        provider: ProviderName::Local,
        cloud_id: format!("mem-{id}"),
        labels: l,
        endpoint: Endpoint {
            host: Some("192.0.2.200".into()),
            ..Endpoint::default()
        },
        listed: true,
        claimed: false,
    })
}

/// Resources that are not ours to touch: another pond's, and ones that lack crabbox's marker.
fn foreign(n: usize, current: &DesiredPond) -> Vec<Lease> {
    let m = &current.members[0];
    let mut other = for_create("other-pond", &format!("cbx_f{n:011x}"), m, 1);
    other.insert(labels::STATE.into(), "ready".into());
    let mut unmarked = for_create(POND, &format!("cbx_e{n:011x}"), m, 1);
    unmarked.remove(labels::CRABBOX);
    let mut wrong_id = for_create(POND, "cbx_000000000000", m, 1);
    wrong_id.insert(labels::SLUG.into(), "intruder".into());
    [
        ("other", other, format!("cbx_f{n:011x}")),
        ("unmarked", unmarked, format!("cbx_e{n:011x}")),
        ("mismatch", wrong_id, format!("cbx_d{n:011x}")),
    ]
    .into_iter()
    .map(|(kind, labels, id)| Lease {
        id,
        provider: ProviderName::Local,
        cloud_id: format!("foreign-{kind}-{n}"),
        labels,
        endpoint: Endpoint::default(),
        listed: true,
        claimed: false,
    })
    .collect()
}

fn converge(
    current_members: &[MemberGen],
    previous_members: &[MemberGen],
    live: &[LiveGen],
) -> Result<(), TestCaseError> {
    let current = load(&spec_text(current_members));
    let previous = load(&spec_text(previous_members));
    let provider = MemoryProvider::new();
    for (n, g) in live.iter().enumerate() {
        if let Some(l) = applied_lease(n + 1, g, &current, &previous) {
            provider.plant(l);
        }
    }
    let planted_foreign = foreign(99, &current);
    for f in &planted_foreign {
        provider.plant(f.clone());
    }
    let state = tempfile::tempdir().expect("tempdir");
    let registry = Registry::with(vec![provider.clone() as Arc<dyn Provider>]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let options = PlanOptions {
        now: labels::now_secs(),
        ..PlanOptions::default()
    };

    let inventory = rt.block_on(discover(
        POND,
        &[],
        &registry,
        state.path(),
        &ClaimStore::local(state.path()),
    ));
    let first =
        plan(&current, &inventory, &options).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let ctx = Arc::new(reconcile::context(
        &first,
        Some(&current),
        &inventory,
        registry.clone(),
        state.path(),
        &ClaimStore::local(state.path()),
        state.path().to_path_buf(),
        None,
        Arc::new(Reporter::new(Mode::Json)),
    ));
    let (outcome, _) = rt.block_on(reconcile::apply(
        &first,
        ctx,
        &ExecOptions {
            heartbeat: std::time::Duration::from_secs(3600),
            ..ExecOptions::default()
        },
        false,
    ));
    prop_assert!(outcome.success(), "apply failed: {:?}", outcome.results);

    let after = rt.block_on(discover(
        POND,
        &[],
        &registry,
        state.path(),
        &ClaimStore::local(state.path()),
    ));
    let second =
        plan(&current, &after, &options).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let left: Vec<String> = second
        .changes
        .iter()
        .filter(|c| c.is_change())
        .map(|c| format!("{} {:?} {:?}", c.slug, c.action, c.reasons))
        .collect();
    prop_assert!(
        left.is_empty() && second.forget_claims.is_empty(),
        "second plan not empty: {left:?}"
    );
    // Leases not in the spec stay only when labelled keep=true (they are
    // never destroyed without --destroy-kept).
    let members: Vec<&str> = current.members.iter().map(|m| m.slug.as_str()).collect();
    let strays: Vec<&Lease> = after
        .leases
        .iter()
        .map(|l| &**l)
        .filter(|l| !members.contains(&l.slug()))
        .collect();
    prop_assert!(
        strays.iter().all(|l| l.is_kept()),
        "a lease not in the spec and not kept survived: {strays:?}"
    );
    let kept = strays.len();
    prop_assert_eq!(
        after.leases.len(),
        current.members.len() + kept,
        "one lease per member, plus the kept ones"
    );

    let touched = provider.touched.lock().expect("lock").clone();
    let resources = provider.resources.lock().expect("lock").clone();
    for f in &planted_foreign {
        prop_assert!(
            !touched.contains(&f.cloud_id),
            "touched foreign resource {}",
            f.cloud_id
        );
        prop_assert_eq!(
            resources.get(&f.cloud_id),
            Some(f),
            "foreign resource changed"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn apply_then_plan_is_empty_and_foreign_resources_are_untouched(
        current in prop::collection::vec(member_gen(), 1..6),
        previous in prop::collection::vec(member_gen(), 1..6),
        live in prop::collection::vec(live_gen(), 0..8),
    ) {
        converge(&current, &previous, &live)?;
    }
}
