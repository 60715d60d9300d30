//! `crabbox init` through the binary: the file it writes validates and
//! names the members, an existing file is refused, `-f -` prints it, and
//! without flags and without a terminal it writes the defaults.

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

fn crabbox(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("crabbox").expect("binary");
    c.current_dir(dir)
        .env("NO_COLOR", "1")
        .env("CRABBOX_STATE_DIR", dir.join("state"))
        .write_stdin("");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(dir: &Path, args: &[&str]) -> Output {
    crabbox(dir).args(args).output().expect("runs")
}

/// A fresh directory named `name` (the default pond name comes from it).
fn project(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join(name);
    std::fs::create_dir(&dir).expect("project dir");
    (tmp, dir)
}

fn validate(dir: &Path, file: &str) -> String {
    let out = run(dir, &["validate", "-f", file]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        std::fs::read_to_string(dir.join(file)).unwrap_or_default()
    );
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

#[test]
fn flags_write_a_commented_spec_that_validates_with_the_members() {
    let (_tmp, dir) = project("shop");
    let out = run(
        &dir,
        &[
            "init",
            "--pond",
            "Shop PR",
            "--provider",
            "local",
            "--member",
            "db",
            "--member",
            "api",
            "--member",
            "edge=ssh",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "data only on request");
    assert!(
        text(&out.stderr).contains("wrote pond.yaml (pond shop-pr, 3 members)"),
        "{}",
        text(&out.stderr)
    );
    let spec = std::fs::read_to_string(dir.join("pond.yaml")).expect("written");
    assert!(
        spec.starts_with("# yaml-language-server: $schema=pond.schema.json\n"),
        "{spec}"
    );
    for line in [
        "pond: shop-pr\n",
        "  provider: local\n",
        "  - slug: db\n",
        "  - slug: api\n",
        "  - slug: edge\n    provider: ssh\n",
    ] {
        assert!(spec.contains(line), "{line:?} in:\n{spec}");
    }
    for key in [
        "# expose:",
        "# depends_on:",
        "# ready:",
        "ttl:",
        "setup:",
        "# env:",
    ] {
        assert!(spec.contains(key), "{key} explained in:\n{spec}");
    }
    assert!(
        validate(&dir, "pond.yaml").contains("valid — pond \"shop-pr\", 3 members"),
        "{spec}"
    );
    // The schema line names a file `crabbox schema` writes.
    let schema = run(&dir, &["schema"]);
    assert!(schema.status.success());
    assert!(text(&schema.stdout).starts_with('{'));
}

#[test]
fn every_provider_gets_a_spec_that_validates() {
    for provider in ["local", "ssh", "hetzner", "islo", "tensorlake"] {
        let (_tmp, dir) = project("p");
        let out = run(&dir, &["init", "--provider", provider, "--member", "one"]);
        assert!(out.status.success(), "{provider}: {}", text(&out.stderr));
        let spec = std::fs::read_to_string(dir.join("pond.yaml")).expect("written");
        assert!(
            spec.contains(&format!("  provider: {provider}\n")),
            "{spec}"
        );
        validate(&dir, "pond.yaml");
    }
}

#[test]
fn an_existing_file_is_refused_without_force() {
    let (_tmp, dir) = project("keep");
    std::fs::write(dir.join("pond.yaml"), "mine\n").expect("existing");
    let out = run(&dir, &["init", "--member", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("error: pond.yaml already exists"), "{err}");
    assert!(err.contains("pass --force to replace it"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("pond.yaml")).expect("kept"),
        "mine\n"
    );

    let out = run(&dir, &["init", "--member", "x", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        std::fs::read_to_string(dir.join("pond.yaml"))
            .expect("replaced")
            .contains("  - slug: x\n")
    );
}

#[test]
fn dash_prints_the_spec_and_writes_nothing() {
    let (_tmp, dir) = project("printed");
    let out = run(
        &dir,
        &[
            "init",
            "-f",
            "-",
            "--member",
            "db=hetzner",
            "--schema",
            "https://example.com/pond.schema.json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let spec = text(&out.stdout);
    assert!(
        spec.starts_with("# yaml-language-server: $schema=https://example.com/pond.schema.json\n"),
        "{spec}"
    );
    assert!(spec.contains("pond: printed\n"), "{spec}");
    assert!(
        spec.contains("  - slug: db\n    provider: hetzner\n"),
        "{spec}"
    );
    assert!(!dir.join("pond.yaml").exists());
    // What it printed validates (read from stdin).
    let out = crabbox(&dir)
        .args(["validate", "-f", "-"])
        .write_stdin(spec)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Without flags and without a terminal (a script, CI) the defaults the
/// questions offer are written: the directory's name, local, one member `app`.
#[test]
fn without_flags_or_a_terminal_the_defaults_are_written() {
    let (_tmp, dir) = project("My Service");
    let out = run(&dir, &["init", "-f", "ponds/dev.yaml"]);
    assert_eq!(out.status.code(), Some(1), "the directory is missing");
    assert!(text(&out.stderr).contains("error: writing ponds/dev.yaml"));

    let out = run(&dir, &["init"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let spec = std::fs::read_to_string(dir.join("pond.yaml")).expect("written");
    assert!(spec.contains("pond: my-service\n"), "{spec}");
    assert!(spec.contains("  provider: local\n"), "{spec}");
    assert!(spec.contains("  - slug: app\n"), "{spec}");
    assert_eq!(spec.matches("  - slug: ").count(), 1, "{spec}");
    validate(&dir, "pond.yaml");
}

#[test]
fn unusable_flags_are_usage_errors() {
    let (_tmp, dir) = project("bad");
    let out = run(&dir, &["init", "--member", "db=digitalocean"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(
            "not a provider this build runs (one of: local, ssh, hetzner, aws, azure, gcp, islo, tensorlake, daytona, e2b, modal, blacksmith-testbox)"
        ),
        "{}",
        text(&out.stderr)
    );
    let out = run(&dir, &["init", "--member", "db", "--member", "DB"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("member `db` is named twice"));
    assert!(!dir.join("pond.yaml").exists());
}

/// On a terminal without flags it asks; an unusable answer is asked again.
/// (`script`, from util-linux, gives it a terminal.)
#[test]
fn on_a_terminal_it_asks_for_the_pond_provider_and_members() {
    let (_tmp, dir) = project("asked");
    let bin = assert_cmd::cargo::cargo_bin("crabbox");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "(printf '\\ndigitalocean\\nislo\\ndb, api=local\\n'; sleep 3) | script -qec '{} init' /dev/null",
            bin.display()
        ))
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("script runs");
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    assert!(shown.contains("Pond name [asked]: "), "{shown}");
    assert!(
        shown.contains("`digitalocean` is not a provider this build runs"),
        "asked again: {shown}"
    );
    let spec = std::fs::read_to_string(dir.join("pond.yaml")).expect("written");
    assert!(spec.contains("pond: asked\n"), "the default: {spec}");
    assert!(spec.contains("  provider: islo\n"), "{spec}");
    assert!(spec.contains("  - slug: db\n"), "{spec}");
    assert!(
        spec.contains("  - slug: api\n    provider: local\n"),
        "{spec}"
    );
    validate(&dir, "pond.yaml");
}
