//! The checked-in schema is what the types generate, and it documents
//! every field.

use serde_json::Value;

use crate::support::root;

#[test]
fn checked_in_schema_is_current() {
    let on_disk = std::fs::read_to_string(root().join("schema/pond.schema.json"))
        .expect("schema file exists");
    assert!(
        on_disk == crabbox_spec::schema::schema_text(),
        "schema/pond.schema.json is stale: run `cargo run -- schema > schema/pond.schema.json`"
    );
}

fn undocumented(node: &Value, path: &str, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                for (name, prop) in props {
                    if prop
                        .get("description")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        out.push(format!("{path}/{name}"));
                    }
                }
            }
            for (k, v) in map {
                undocumented(v, &format!("{path}/{k}"), out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| undocumented(v, path, out)),
        _ => {}
    }
}

#[test]
fn every_field_has_a_description() {
    let mut missing = Vec::new();
    undocumented(crabbox_spec::schema::published_value(), "", &mut missing);
    assert!(
        missing.is_empty(),
        "fields without description: {missing:#?}"
    );
}

#[test]
fn every_example_names_the_schema() {
    for entry in std::fs::read_dir(root().join("examples")).expect("examples") {
        let path = entry.expect("entry").path().join("pond.yaml");
        if path.exists() {
            let text = std::fs::read_to_string(&path).expect("read");
            assert!(
                text.starts_with("# yaml-language-server: $schema="),
                "{} must start with the yaml-language-server schema line",
                path.display()
            );
        }
    }
}

/// Checks each document, as written (no `${VAR}` replaced), against the
/// published schema with an independent validator: Python's `jsonschema`
/// (Draft 7) on the document read by PyYAML. One verdict per path: `Ok` or
/// the first error. Fails, never skips, when Python or the modules are missing.
fn independent_verdicts(paths: &[String]) -> Vec<Result<(), String>> {
    const SCRIPT: &str = r#"
import json, sys
try:
    import jsonschema, yaml
except ImportError as e:
    print(f"missing Python module: {e.name}; install it: python3 -m pip install jsonschema pyyaml", file=sys.stderr)
    sys.exit(3)
schema = json.load(open(sys.argv[1]))
jsonschema.Draft7Validator.check_schema(schema)
validator = jsonschema.Draft7Validator(schema)
for path in sys.argv[2:]:
    errors = sorted(validator.iter_errors(yaml.safe_load(open(path))), key=lambda e: list(e.path))
    print("ok" if not errors else "invalid: " + errors[0].message.replace("\n", " ")[:200])
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(root().join("schema/pond.schema.json"))
        .args(paths.iter().map(|p| root().join(p)))
        .output()
        .expect("python3 runs (install python3)");
    crate::support::validator_verdicts(&out, paths.len())
}

/// Whether `crabbox validate` accepts a file, with `PR_NUMBER` given and no
/// other variable from the environment.
fn crabbox_accepts(path: &str) -> bool {
    assert_cmd::Command::cargo_bin("crabbox")
        .expect("binary")
        .current_dir(root())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["validate", "-f", path, "--var", "PR_NUMBER=7"])
        .output()
        .expect("runs")
        .status
        .success()
}

/// Every `pond.yaml` under `examples/`.
fn example_ponds() -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![root().join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("examples") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n == "pond.yaml") {
                let relative = path.strip_prefix(root()).expect("under the root");
                found.push(relative.display().to_string());
            }
        }
    }
    found.sort();
    found
}

#[test]
fn examples_and_interpolated_specs_pass_an_independent_validator_as_crabbox_does() {
    let mut paths = example_ponds();
    assert!(paths.len() >= 3, "{paths:?}");
    paths.extend(crate::support::yaml_files("tests/corpus/valid"));
    assert!(paths.contains(&"tests/corpus/valid/interpolation-typed.yaml".to_owned()));
    for (path, verdict) in paths.iter().zip(independent_verdicts(&paths)) {
        assert!(crabbox_accepts(path), "crabbox validate refuses {path}");
        assert_eq!(verdict, Ok(()), "the published schema refuses {path}");
    }
}

#[test]
fn the_independent_validator_refuses_what_the_schema_part_of_crabbox_refuses() {
    // The invalid corpus says, per document, what the schema alone says.
    let mut paths = Vec::new();
    let mut expected = Vec::new();
    for file in crate::support::yaml_files("tests/corpus/invalid") {
        let text = std::fs::read_to_string(root().join(&file)).expect("exists");
        match text
            .lines()
            .next()
            .and_then(|h| h.strip_prefix("# schema: "))
        {
            Some("accept") => expected.push(true),
            Some("reject") => expected.push(false),
            _ => continue,
        }
        paths.push(file);
    }
    // Typed fields with text that is no interpolation (and an escaped one).
    // Under the repository: the independent validator is given relative paths.
    let scratch = root().join("target");
    std::fs::create_dir_all(&scratch).expect("target dir");
    let dir = tempfile::tempdir_in(scratch).expect("tempdir");
    for (i, field) in [
        "  ttl: banana",
        "  ttl: $${TTL}",
        "  keep: maybe",
        "  provider: nope",
        "  hetzner:\n    ssh_port: twenty-two",
    ]
    .iter()
    .enumerate()
    {
        let path = dir.path().join(format!("typed-{i}.yaml"));
        std::fs::write(
            &path,
            format!("version: 1\npond: p\ndefaults:\n{field}\nmembers:\n  - slug: a\n"),
        )
        .expect("write");
        let relative = path.strip_prefix(root()).expect("under the root");
        let relative = relative.display().to_string();
        assert!(!crabbox_accepts(&relative), "crabbox accepts {field}");
        paths.push(relative);
        expected.push(false);
    }
    for ((path, verdict), accept) in paths.iter().zip(independent_verdicts(&paths)).zip(expected) {
        assert_eq!(verdict.is_ok(), accept, "{path}: {verdict:?}");
    }
}
