//! crabbox's machine interfaces: `--json` prints JSON on stdout even when
//! the command fails; NDJSON events carry `version`, `timestamp` and
//! `type`; the schemas under `schema/` are what `crabbox schema --document`
//! generates, and every JSON document the tests produce (plan snapshots,
//! the events of an apply and a destroy, diagnostics of `validate` and of
//! failing commands) passes them in an independent validator: Python's
//! `jsonschema` (Draft 7), which `./scripts/test` installs. A missing
//! Python or module fails the test, it is never skipped.

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;

use crabbox_apply::schemas::Document;

use crate::support::root;

#[test]
fn checked_in_schemas_are_what_crabbox_schema_prints() {
    for document in Document::ALL {
        let file = format!("schema/{}", document.file_name());
        let on_disk = std::fs::read_to_string(root().join(&file)).expect("schema file exists");
        assert!(
            on_disk == document.text(),
            "{file} is stale: run `cargo run -- schema --document {} > {file}`",
            document.name()
        );
        let printed = crabbox(&["schema", "--document", document.name()], Path::new("."));
        assert!(printed.status.success());
        assert_eq!(String::from_utf8_lossy(&printed.stdout), on_disk, "{file}");
    }
    // Plain `crabbox schema` stays the pond.yaml schema.
    let plain = crabbox(&["schema"], Path::new("."));
    assert_eq!(plain.stdout, Document::Pond.text().into_bytes());
}

/// Validates each instance against `schema/<document>.schema.json` with
/// Python's `jsonschema`; one verdict per instance, `Ok` or the first
/// error with its path.
fn verdicts(document: Document, instances: &[Value]) -> Vec<Result<(), String>> {
    const SCRIPT: &str = r#"
import json, sys
try:
    import jsonschema
except ImportError as e:
    print(f"missing Python module: {e.name}; run ./scripts/test, or: python3 -m pip install jsonschema", file=sys.stderr)
    sys.exit(3)
schema = json.load(open(sys.argv[1]))
jsonschema.Draft7Validator.check_schema(schema)
validator = jsonschema.Draft7Validator(schema)
for instance in json.load(sys.stdin):
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if not errors:
        print("ok")
    else:
        e = errors[0]
        # Under oneOf the best match names the branch that almost fitted.
        best = jsonschema.exceptions.best_match(errors)
        where = "/".join(str(p) for p in best.absolute_path)
        print(("invalid at /" + where + ": " + best.message).replace("\n", " ")[:400])
"#;
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(root().join("schema").join(document.file_name()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (install python3, or run ./scripts/test)");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(&serde_json::to_vec(instances).expect("JSON"))
            .expect("instances written");
    }
    let out = child.wait_with_output().expect("python3 finishes");
    crate::support::validator_verdicts(&out, instances.len())
}

/// Asserts that every instance passes `document`'s schema.
fn assert_valid(document: Document, what: &str, instances: &[Value]) {
    for (i, verdict) in verdicts(document, instances).into_iter().enumerate() {
        assert_eq!(
            verdict,
            Ok(()),
            "{what} #{i} does not pass schema/{}: {}",
            document.file_name(),
            instances[i]
        );
    }
}

fn crabbox(args: &[&str], dir: &Path) -> Output {
    Command::cargo_bin("crabbox")
        .expect("binary")
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .expect("crabbox runs")
}

/// A throw-away state directory, home and working directory.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["home", "work"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("dir");
        }
        Self { dir }
    }

    fn spec(&self, text: &str) {
        std::fs::write(self.dir.path().join("work/pond.yaml"), text).expect("spec");
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::cargo_bin("crabbox")
            .expect("binary")
            .current_dir(self.dir.path().join("work"))
            .env("CRABBOX_STATE_DIR", self.dir.path().join("state"))
            .env("HOME", self.dir.path().join("home"))
            .env("USER", "machine")
            .env("NO_COLOR", "1")
            .env_remove("CRABBOX_STATE_URL")
            .env_remove("CRABBOX_COORDINATOR")
            .env_remove("HCLOUD_TOKEN")
            .env_remove("HETZNER_TOKEN")
            .args(args)
            .output()
            .expect("crabbox runs")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every stdout line as JSON.
fn ndjson(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The one JSON document on stdout.
fn document(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// Neither `version` nor `members` is right: two errors at known places.
const INVALID_SPEC: &str = "pond: demo\nmembers:\n  web: {}\n";

#[test]
fn apply_json_on_an_invalid_spec_prints_its_diagnostics_as_the_last_event() {
    let s = Scratch::new();
    s.spec(INVALID_SPEC);
    let out = s.run(&["apply", "--json", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1), "Terraform's 1, as before");
    // People still read the diagnostics on stderr.
    assert!(
        text(&out.stderr).contains("pond.yaml:1:1: error: missing required key `version`"),
        "{}",
        text(&out.stderr)
    );
    let events = ndjson(&out);
    assert_eq!(events.len(), 1, "{}", text(&out.stdout));
    let event = &events[0];
    assert_eq!(event["type"], "diagnostics");
    assert_eq!(event["version"], 1);
    assert_eq!(event["error_count"], 2);
    let first = &event["diagnostics"][0];
    assert_eq!(first["code"], "missing-key");
    assert_eq!(
        (first["file"].as_str(), first["line"].as_u64()),
        (Some("pond.yaml"), Some(1))
    );
    assert_eq!(event["diagnostics"][1]["code"], "wrong-type");
    assert_valid(Document::Events, "apply --json on an invalid spec", &events);
    // The same diagnostics are a diagnostics document for the other commands.
    let out = s.run(&["plan", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc = document(&out);
    assert_eq!(doc["diagnostics"], event["diagnostics"]);
    assert_valid(
        Document::Diagnostics,
        "plan --format json on an invalid spec",
        &[doc],
    );
}

#[test]
fn failures_outside_the_spec_print_a_diagnostics_document_with_the_old_exit_codes() {
    let s = Scratch::new();
    // (arguments, exit code, diagnostic code)
    let cases: [(&[&str], i32, &str); 6] = [
        (&["status", "nope", "--json"], 4, "not-found"),
        (&["inspect", "nope", "--json"], 4, "not-found"),
        (&["plan", "--format", "json"], 1, "unreadable"),
        (&["show", "missing.plan", "--json"], 1, "unreadable"),
        (
            &["list", "--provider", "hetzner", "--json"],
            3,
            "credentials",
        ),
        (&["status", "--json", "--bogus"], 2, "usage"),
    ];
    let mut docs = Vec::new();
    for (args, code, diagnostic) in cases {
        let out = s.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("error"),
            "{args:?}: people still read why on stderr"
        );
        let doc = document(&out);
        assert_eq!(doc["diagnostics"][0]["code"], diagnostic, "{args:?}: {doc}");
        assert_eq!(doc["diagnostics"][0]["line"], Value::Null, "{args:?}");
        assert_eq!(doc["error_count"], 1, "{args:?}");
        docs.push(doc);
    }
    let missing_credentials = &docs[4]["diagnostics"][0];
    assert!(
        missing_credentials["hint"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{missing_credentials}"
    );
    assert_valid(Document::Diagnostics, "failing --json commands", &docs);
    // Without --json, stdout stays empty.
    let out = s.run(&["status", "nope"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn apply_and_destroy_events_carry_version_timestamp_and_type_and_pass_the_schema() {
    let s = Scratch::new();
    s.spec(
        "version: 1\npond: machine-events\ndefaults: { provider: local, sync: false }\nmembers:\n  - slug: db\n    setup:\n      - run: echo ready\n        timeout: 1m\n  - slug: web\n    depends_on: [db]\n    env: { PORT: \"8080\" }\n",
    );
    let apply = s.run(&["apply", "--json", "--auto-approve"]);
    assert!(apply.status.success(), "{}", text(&apply.stderr));
    let destroy = s.run(&["destroy", "--json", "--auto-approve"]);
    assert!(destroy.status.success(), "{}", text(&destroy.stderr));
    for (what, out) in [("apply", &apply), ("destroy", &destroy)] {
        let events = ndjson(out);
        assert_eq!(events[0]["type"], "planned_changes", "{what}");
        assert_eq!(
            events.last().expect("events")["type"],
            "change_summary",
            "{what}"
        );
        for e in &events {
            assert_eq!(e["version"], 1, "{what}: {e}");
            let stamp = e["timestamp"].as_str().expect("a timestamp");
            humantime::parse_rfc3339(stamp).unwrap_or_else(|_| panic!("{what}: {stamp}"));
            assert!(stamp.ends_with('Z') && stamp.len() == 24, "{what}: {stamp}");
            assert!(e["type"].is_string(), "{what}: {e}");
        }
        let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        assert!(
            types.contains(&"apply_start") && types.contains(&"apply_complete"),
            "{what}: {types:?}"
        );
        assert_valid(Document::Events, what, &events);
    }
    assert!(
        ndjson(&apply)
            .iter()
            .any(|e| e["type"] == "output" && e["line"] == "ready"),
        "the setup's output is an event"
    );
    // The plan inside the first event is the plan document.
    let plan = ndjson(&apply)[0]["plan"].clone();
    assert_valid(
        Document::Plan,
        "apply's planned_changes plan",
        std::slice::from_ref(&plan),
    );
    // The schemas are strict: a line without its timestamp, an unknown
    // key, a wrong type are refused.
    let mut no_stamp = ndjson(&apply)[1].clone();
    no_stamp
        .as_object_mut()
        .expect("an object")
        .remove("timestamp");
    let mut unknown_key = plan.clone();
    unknown_key["member_changes"][0]["change"]["surprise"] = true.into();
    let mut wrong_type = plan;
    wrong_type["summary"]["add"] = "one".into();
    assert!(verdicts(Document::Events, &[no_stamp])[0].is_err());
    let refused = verdicts(Document::Plan, &[unknown_key, wrong_type]);
    assert!(refused.iter().all(Result::is_err), "{refused:?}");
}

#[test]
fn plan_snapshots_and_saved_plans_pass_the_plan_schema() {
    let mut plans = Vec::new();
    for entry in std::fs::read_dir(root().join("tests/snapshots")).expect("snapshots") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read");
            plans.push(serde_json::from_str::<Value>(&text).expect("snapshot is JSON"));
        }
    }
    assert!(plans.len() >= 4, "{}", plans.len());
    assert_valid(Document::Plan, "a plan snapshot", &plans);

    // `plan -o` then `show --json` on a live local pond.
    let s = Scratch::new();
    s.spec("version: 1\npond: machine-plan\ndefaults: { provider: local, sync: false }\nmembers:\n  - slug: one\n    class: beast\n");
    let out = s.run(&["plan", "--format", "json", "-o", "saved.plan"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = s.run(&["show", "saved.plan", "--json"]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    assert_valid(
        Document::Plan,
        "plan / show --json",
        &[document(&out), document(&shown)],
    );
}

#[test]
fn validate_json_reports_pass_the_diagnostics_schema() {
    let mut docs = Vec::new();
    let mut files = crate::support::yaml_files("tests/corpus/invalid");
    files.extend(crate::support::yaml_files("tests/corpus/valid"));
    files.push("tests/corpus/invalid/no-such-file.yaml".to_owned());
    for file in &files {
        let out = crabbox(&["validate", "--format", "json", "-f", file], &root());
        docs.push(document(&out));
    }
    assert!(docs.iter().any(|d| d["valid"] == false));
    assert!(docs.iter().any(|d| d["valid"] == true));
    assert_valid(Document::Diagnostics, "validate --format json", &docs);
}

#[test]
fn human_views_say_times_in_words_and_machine_views_keep_their_values() {
    let s = Scratch::new();
    s.spec("version: 1\npond: machine-times\ndefaults: { provider: local, sync: false }\nmembers:\n  - slug: web\n    ttl: 2h\n");
    let out = s.run(&["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // `list`'s table: an EXPIRY column in words (idle timeout 30m wins).
    let list = text(&s.run(&["list"]).stdout);
    let header = list.lines().next().expect("a header");
    assert!(header.ends_with("ADDRESS          EXPIRY"), "{list}");
    let row = list.lines().nth(1).expect("a row");
    assert!(
        (row.contains("expires in 29m (") || row.contains("expires in 30m ("))
            && row.ends_with(" UTC)"),
        "{list}"
    );
    // `status`: Crabbox's line on stdout as before, the words on stderr.
    let status = s.run(&["status", "web"]);
    assert!(status.status.success());
    let line = text(&status.stdout);
    assert_eq!(line.lines().count(), 1, "{line}");
    let expires = line
        .trim_end()
        .rsplit_once(" expires=")
        .map(|(_, v)| v.to_owned())
        .expect("Crabbox's expires=");
    humantime::parse_rfc3339(&expires).expect("RFC 3339, as Crabbox prints it");
    let note = text(&status.stderr);
    assert!(
        note.starts_with("web: expires in ")
            && note.contains("; created ")
            && note.trim_end().ends_with(" ago"),
        "{note}"
    );
    // JSON keeps machine values.
    let view = document(&s.run(&["status", "web", "--json"]));
    assert_eq!(view["expiresAt"].as_str(), Some(expires.as_str()));
}

#[test]
fn a_failed_apply_ends_with_its_summary_then_the_diagnostics() {
    let s = Scratch::new();
    s.spec("version: 1\npond: machine-fails\ndefaults: { provider: local, sync: false }\nmembers:\n  - slug: web\n    setup:\n      - run: exit 3\n");
    let out = s.run(&["apply", "--json", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let events = ndjson(&out);
    let n = events.len();
    assert_eq!(events[n - 2]["type"], "change_summary");
    assert_eq!(events[n - 2]["ok"], false);
    let last = &events[n - 1];
    assert_eq!(last["type"], "diagnostics");
    assert_eq!(last["diagnostics"][0]["code"], "step-failed", "{last}");
    assert!(events.iter().any(|e| e["type"] == "apply_errored"));
    assert_valid(Document::Events, "a failed apply", &events);
    let _ = s.run(&["destroy", "--auto-approve"]);
}
