//! The `validate` and `schema` commands as a user runs them.

use assert_cmd::Command;
use predicates::prelude::*;

use crate::support::root;

fn crabbox() -> Command {
    let mut cmd = Command::cargo_bin("crabbox").expect("binary built");
    cmd.current_dir(root()).env_remove("PR_NUMBER");
    cmd
}

#[test]
fn examples_validate() {
    for example in ["local", "pr-e2e", "build-farm", "tailnet"] {
        crabbox()
            .args([
                "validate",
                "-f",
                &format!("examples/{example}/pond.yaml"),
                "--var",
                "PR_NUMBER=7",
            ])
            .assert()
            .success()
            .stdout(predicate::str::contains("valid"));
    }
}

#[test]
fn port_out_of_range_points_at_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pond.yaml");
    std::fs::write(
        &path,
        "version: 1\npond: demo\ndefaults:\n  provider: local\nmembers:\n  - slug: api\n    expose: [8080, 70000]\n",
    )
    .expect("write");
    crabbox()
        .current_dir(dir.path())
        .arg("validate")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "pond.yaml:7:20: error: port 70000 is outside 1..65535",
        ))
        .stderr(predicate::str::contains("65535"))
        .stderr(predicate::str::contains("^^^^^"));
}

#[test]
fn json_diagnostics_for_ci() {
    let out = crabbox()
        .args([
            "validate",
            "-f",
            "tests/corpus/invalid/02-unknown-dependency.yaml",
            "--format",
            "json",
        ])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON on stdout");
    assert_eq!(v["valid"], false);
    let d = &v["diagnostics"][0];
    assert_eq!(d["code"], "unknown-member");
    assert_eq!(d["line"], 7);
    assert_eq!(d["column"], 18);
    assert_eq!(d["severity"], "error");
    assert_eq!(d["hint"], "did you mean `db`?");
    assert_eq!(d["file"], "tests/corpus/invalid/02-unknown-dependency.yaml");
}

#[test]
fn var_wins_over_environment_and_unset_is_an_error() {
    crabbox()
        .args(["validate", "-f", "examples/pr-e2e/pond.yaml"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("variable `PR_NUMBER` is not set"))
        .stderr(predicate::str::contains("--var PR_NUMBER=VALUE"));
    crabbox()
        .env("PR_NUMBER", "1")
        .args([
            "validate",
            "-f",
            "examples/pr-e2e/pond.yaml",
            "--var",
            "PR_NUMBER=99",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("pond \"pr-99\""));
}

#[test]
fn unreadable_file_says_what_to_do() {
    crabbox()
        .args(["validate", "-f", "no/such/pond.yaml"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cannot read no/such/pond.yaml"))
        .stderr(predicate::str::contains("help:"));
}

#[test]
fn colour_only_when_asked_and_never_with_no_color() {
    let file = "tests/corpus/invalid/01-duplicate-slug.yaml";
    let escape = || predicate::str::contains("\u{1b}[");
    crabbox()
        .args(["validate", "-f", file])
        .env_remove("CLICOLOR_FORCE")
        .assert()
        .code(1)
        .stderr(escape().not());
    crabbox()
        .args(["validate", "-f", file])
        .env("CLICOLOR_FORCE", "1")
        .assert()
        .code(1)
        .stderr(escape());
    crabbox()
        .args(["validate", "-f", file])
        .env("CLICOLOR_FORCE", "1")
        .env("NO_COLOR", "1")
        .assert()
        .code(1)
        .stderr(escape().not());
}

#[test]
fn schema_command_prints_the_checked_in_file() {
    let expected = std::fs::read(root().join("schema/pond.schema.json")).expect("schema file");
    crabbox().arg("schema").assert().success().stdout(expected);
}

#[test]
fn help_documents_exit_codes() {
    crabbox()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("Exit codes"))
        .stdout(predicate::str::contains("--detailed-exitcode"));
}

#[test]
fn github_annotations_for_ci() {
    let out = crabbox()
        .args([
            "validate",
            "-f",
            "tests/corpus/invalid/39-class-on-local-warns-and-errors.yaml",
            "--format",
            "github",
        ])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("::warning file=tests/corpus/invalid/39-class-on-local-warns-and-errors.yaml,line=5,col=3,")
            && lines[0].contains("title=crabbox meaningless-option::"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("::error file=") && lines[1].contains(",line=9,col=18,"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("%0Ahelp: members are: api, db"),
        "newlines are escaped: {}",
        lines[1]
    );
    crabbox()
        .args([
            "validate",
            "-f",
            "examples/local/pond.yaml",
            "--format",
            "github",
        ])
        .assert()
        .success()
        .stdout("");
}

#[test]
fn a_reference_to_a_member_that_does_not_exist_is_an_error_at_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("pond.yaml"),
        "version: 1\npond: demo\nmembers:\n  - slug: db\n  - slug: api\n    env: { X: \"{{peers.nope.host}}\" }\n",
    )
    .expect("write");
    crabbox()
        .current_dir(dir.path())
        .arg("validate")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "pond.yaml:6:16: error: `{{peers.nope.host}}`: no member `nope` in the pond (members: db, api) [peer-reference]",
        ));
}

#[test]
fn an_invalid_byte_is_reported_at_its_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("pond.yaml"),
        b"version: 1\npond: demo\nmembers:\n  - slug: d\xffb\n".as_slice(),
    )
    .expect("write");
    crabbox()
        .current_dir(dir.path())
        .arg("validate")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "pond.yaml:4:12: error: invalid UTF-8: byte 0xFF cannot appear here [not-utf8]",
        ))
        .stderr(predicate::str::contains("4 |   - slug: d\u{FFFD}b"));
    let out = crabbox()
        .current_dir(dir.path())
        .args(["validate", "--format", "json"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(v["diagnostics"][0]["line"], 4);
    assert_eq!(v["diagnostics"][0]["column"], 12);
}

#[test]
fn a_utf16_file_is_named_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bytes = vec![0xFF, 0xFE];
    for unit in "version: 1\n".encode_utf16() {
        bytes.extend(unit.to_le_bytes());
    }
    std::fs::write(dir.path().join("pond.yaml"), bytes).expect("write");
    crabbox()
        .current_dir(dir.path())
        .arg("validate")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "pond.yaml:1:1: error: the file is UTF-16 (little-endian) text",
        ))
        .stderr(predicate::str::contains("iconv -f UTF-16 -t UTF-8"));
}
