//! The checked-in schema is what the types generate, and it documents
//! every field.

use serde_json::Value;

use crate::support::root;

#[test]
fn checked_in_schema_is_current() {
    let on_disk = std::fs::read_to_string(root().join("schema/pond.schema.json"))
        .expect("schema file exists");
    assert!(
        on_disk == crabbox::spec::schema::schema_text(),
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
    undocumented(crabbox::spec::schema::schema_value(), "", &mut missing);
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
