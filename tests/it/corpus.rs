//! The corpus of invalid documents (each with its expected diagnostics as a
//! snapshot) and of valid ones, plus the promise that the schema and the
//! loader agree about them.

use std::collections::BTreeSet;

use crabbox_spec::interpolate::{Variables, interpolate};
use crabbox_spec::source::SourceFile;
use crabbox_spec::{schema, yaml};

use crate::support::{check_snapshot, load_fixture, rendered, root, yaml_files};

#[test]
fn invalid_documents_report_their_expected_diagnostics() {
    let files = yaml_files("tests/corpus/invalid");
    assert!(
        files.len() >= 30,
        "the corpus has {} documents",
        files.len()
    );
    let mut mismatches = Vec::new();
    for file in &files {
        let loaded = load_fixture(file);
        assert!(loaded.has_errors(), "{file} should be invalid");
        assert!(loaded.pond.is_none(), "{file} must not resolve to a pond");
        if let Some(m) = check_snapshot(&file.replace(".yaml", ".out"), &rendered(&loaded)) {
            mismatches.push(m);
        }
    }
    assert!(
        mismatches.is_empty(),
        "snapshots differ (UPDATE_SNAPSHOTS=1 rewrites them):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn every_check_has_a_corpus_case() {
    let mut seen = BTreeSet::new();
    for file in yaml_files("tests/corpus/invalid") {
        seen.extend(load_fixture(&file).diagnostics.iter().map(|d| d.code));
    }
    let required = [
        "duplicate-slug",
        "unknown-member",
        "dependency-cycle",
        "port-range",
        "too-many-ports",
        "invalid-port",
        "empty-name",
        "name-too-long",
        "unknown-provider",
        "unknown-key",
        "class-and-type",
        "bad-duration",
        "provider-block-mismatch",
        "islo-workdir",
        "tensorlake-workdir",
        "ssh-host-required",
        "background-outside-setup",
        "template-missing",
        "yaml-syntax",
        "duplicate-key",
        "wrong-type",
        "missing-key",
        "unresolved-variable",
        "bad-interpolation",
        "unsupported-version",
        "unsupported-option",
        "ready-probe",
        "invalid-url",
        "invalid-value",
        "invalid-env-name",
        "defaults-depends-on",
        "meaningless-option",
        "invalid-bind-addr",
        "state-backend",
        "peer-reference",
        "peer-reference-in-command",
        "template-error",
        "islo-size",
        "aws-target",
        "aws-ssh-cidr",
        "aws-root-gb",
        "blacksmith-workflow",
        "blacksmith-idle-timeout",
        "modal-workdir",
        "modal-secret",
        "azure-target",
        "gcp-ssh-cidr",
        "gcp-root-gb",
    ];
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|c| !seen.contains(c))
        .collect();
    assert!(missing.is_empty(), "no corpus case produces: {missing:?}");
}

#[test]
fn valid_documents_and_examples_load_cleanly() {
    let mut files = yaml_files("tests/corpus/valid");
    for example in ["local", "pr-e2e", "build-farm", "tailnet"] {
        files.push(format!("examples/{example}/pond.yaml"));
    }
    for file in files {
        let loaded = load_fixture(&file);
        assert!(!loaded.has_errors(), "{file}:\n{}", rendered(&loaded));
        let pond = loaded.pond.expect("resolves");
        assert!(!pond.members.is_empty(), "{file}");
    }
}

/// What the schema alone says about a document: `None` when it is not YAML.
fn schema_accepts(relative: &str) -> Option<bool> {
    let text = std::fs::read_to_string(root().join(relative)).expect("exists");
    let file = SourceFile::new(relative, text);
    let (mut node, _) = yaml::parse(&file).ok()?;
    interpolate(&file, &mut node, &Variables::fixed(vec![]), &mut Vec::new());
    let (json, index) = yaml::to_json(&node);
    Some(schema::check(&json, &index).is_empty())
}

#[test]
fn the_schema_accepts_valid_documents_and_rejects_what_it_can_express() {
    for file in yaml_files("tests/corpus/valid") {
        assert_eq!(schema_accepts(&file), Some(true), "{file}");
    }
    for example in ["local", "pr-e2e", "build-farm", "tailnet"] {
        let file = format!("examples/{example}/pond.yaml");
        assert_eq!(schema_accepts(&file), Some(true), "{file}");
    }
    for file in yaml_files("tests/corpus/invalid") {
        let text = std::fs::read_to_string(root().join(&file)).expect("exists");
        let header = text.lines().next().unwrap_or_default();
        let expected = match header.strip_prefix("# schema: ") {
            Some("accept") => Some(true),
            Some("reject") => Some(false),
            Some("n/a") => continue,
            _ => panic!("{file} must start with `# schema: accept|reject|n/a`"),
        };
        assert_eq!(schema_accepts(&file), expected, "{file}: {header}");
    }
}

#[test]
fn normalized_names_are_what_the_pond_uses() {
    let pond = load_fixture("tests/corpus/valid/all-providers.yaml")
        .pond
        .expect("valid");
    assert_eq!(pond.name, "alpha-bravo-charlie");
    assert_eq!(pond.written_name.as_deref(), Some("Alpha_Bravo Charlie"));
    assert_eq!(pond.members[0].slug, "local-box");
    assert_eq!(pond.members[0].expose, vec![8080, 8081, 9090]);
    assert_eq!(pond.members[1].depends_on[0].0, "local-box");
    // defaults merge field by field, a member's own values win
    let cloud = &pond.members[2];
    assert_eq!(
        cloud.provider_block.as_ref().expect("block")["location"],
        "nbg1"
    );
    assert_eq!(
        cloud.provider_block.as_ref().expect("block")["image"],
        "ubuntu-24.04"
    );
    assert_eq!(cloud.ttl.as_secs(), 5400);
    assert!(cloud.keep);
    // each member inherits only its own provider's block
    assert!(pond.members[0].provider_block.is_none());
    assert_eq!(pond.members[0].env["SHARED"], "1");
    assert_eq!(pond.members[0].setup[0].run, "echo \"cost is $5\"");
}
