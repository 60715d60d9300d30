//! `validate` and the adapters accept exactly the same workdirs: every value
//! `validate` lets through is one the adapter takes, and every value the
//! adapter refuses is one `validate` reports.

use std::path::Path;

use crabbox_providers::{islo, tensorlake};
use crabbox_spec::interpolate::Variables;
use crabbox_spec::load::load_str;
use proptest::prelude::*;

/// Paths built from the pieces the rules care about.
fn workdir() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/"),
        Just("."),
        Just(".."),
        Just("app"),
        Just("tmp"),
        Just("workspace"),
        Just("etc"),
        Just(" "),
        Just("\\"),
        Just("\0"),
        Just("crabbox"),
    ];
    prop_oneof![
        prop::collection::vec(piece, 0..7).prop_map(|p| p.concat()),
        "[a-z/. ]{0,12}",
    ]
}

/// What `validate` makes of `workdir` in the provider's block: the value the
/// adapter will be given, or `None` when it reports an error.
fn validated(provider: &str, workdir: &str) -> Option<String> {
    let quoted = serde_json::to_string(workdir).expect("a JSON string is a YAML string");
    let doc = format!(
        "version: 1\npond: p\nmembers:\n  - slug: m\n    provider: {provider}\n    {provider}: {{ workdir: {quoted} }}\n"
    );
    let loaded = load_str("pond.yaml", &doc, Path::new("."), &Variables::fixed(vec![]));
    let pond = loaded.pond?;
    let block = pond.members[0].provider_block.as_ref()?;
    Some(block["workdir"].as_str()?.to_owned())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn islo_validate_and_adapter_agree(wd in workdir()) {
        let adapter = islo::checked_workdir(&wd);
        match validated("islo", &wd) {
            Some(given) => prop_assert!(
                islo::checked_workdir(&given).is_ok(),
                "validate accepts {wd:?}, the adapter refuses it: {adapter:?}"
            ),
            None => prop_assert!(
                adapter.is_err(),
                "validate refuses {wd:?}, the adapter takes it as {adapter:?}"
            ),
        }
    }

    #[test]
    fn tensorlake_validate_and_adapter_agree(wd in workdir()) {
        let adapter = tensorlake::checked_workdir("m", &wd);
        match validated("tensorlake", &wd) {
            Some(given) => prop_assert!(
                tensorlake::checked_workdir("m", &given).is_ok(),
                "validate accepts {wd:?}, the adapter refuses it: {adapter:?}"
            ),
            None => prop_assert!(
                adapter.is_err(),
                "validate refuses {wd:?}, the adapter takes it as {adapter:?}"
            ),
        }
    }
}

#[test]
fn the_issue_cases_are_refused_by_validate() {
    assert_eq!(validated("islo", "."), None);
    assert_eq!(validated("tensorlake", "/workspace/./x"), None);
    assert_eq!(
        validated("islo", "app/backend").as_deref(),
        Some("app/backend")
    );
    assert_eq!(
        validated("tensorlake", "/workspace/app").as_deref(),
        Some("/workspace/app")
    );
}
