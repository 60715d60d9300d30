//! Huge bad documents: validate stays fast and small in what it prints, and
//! nothing the input controls decides how deep crabbox recurses.

use std::process::Output;
use std::time::{Duration, Instant};

use assert_cmd::Command;

/// Runs `crabbox validate` (with `args`) on `text`; returns the output and
/// how long it took.
fn validate(text: &str, args: &[&str]) -> (Output, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pond.yaml"), text).expect("write");
    let started = Instant::now();
    let out = Command::cargo_bin("crabbox")
        .expect("binary")
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .arg("validate")
        .args(args)
        .timeout(Duration::from_secs(60))
        .output()
        .expect("runs");
    (out, started.elapsed())
}

/// 20,000 out-of-range ports on one line: the line every snippet shows is
/// 140 kB long.
fn one_long_line() -> String {
    format!(
        "version: 1\npond: p\nmembers:\n  - slug: a\n    expose: [{}]\n",
        vec!["70000"; 20_000].join(", ")
    )
}

/// 1,000 members with 20 out-of-range ports each, one member per line.
fn many_members() -> String {
    let mut doc = "version: 1\npond: p\nmembers:\n".to_owned();
    for i in 0..1_000 {
        let ports: Vec<String> = (70_001..70_021).map(|p| p.to_string()).collect();
        doc.push_str(&format!(
            "  - slug: m{i}\n    expose: [{}]\n",
            ports.join(", ")
        ));
    }
    doc
}

fn assert_fifty_shown_and_the_rest_counted(out: &Output, elapsed: Duration, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}");
    let shown = stderr.matches(": error: port ").count();
    assert_eq!(shown, 50, "{what}: shown diagnostics");
    assert!(
        stderr.contains(
            "… and 19950 more (19950 errors, 0 warnings) not shown; `crabbox validate --format json` lists every one"
        ),
        "{what}: {}",
        &stderr[stderr.len().saturating_sub(400)..]
    );
    assert!(stderr.ends_with("pond.yaml: 20000 errors\n"), "{what}");
    assert!(
        stderr.len() < 64 * 1024,
        "{what}: {} bytes of stderr",
        stderr.len()
    );
    // About 0.5 s in a debug build on an idle machine (the old code needed
    // 15 s and gigabytes, or crashed); the bound leaves room for a loaded CI
    // machine running the suite in parallel while still catching a return
    // to quadratic work.
    eprintln!("{what}: validate took {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(10),
        "{what}: took {elapsed:?}"
    );
}

#[test]
fn twenty_thousand_errors_on_one_line_show_fifty_and_a_count() {
    let (out, elapsed) = validate(&one_long_line(), &[]);
    assert_fifty_shown_and_the_rest_counted(&out, elapsed, "one line");
}

#[test]
fn twenty_thousand_errors_across_members_show_fifty_and_a_count() {
    let (out, elapsed) = validate(&many_members(), &[]);
    assert_fifty_shown_and_the_rest_counted(&out, elapsed, "many members");
}

#[test]
fn json_keeps_every_diagnostic() {
    let (out, _) = validate(&one_long_line(), &["--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["error_count"], 20_000);
    assert_eq!(v["diagnostics"].as_array().map(Vec::len), Some(20_000));
    assert_eq!(v["diagnostics"][19_999]["line"], 5);
}

#[test]
fn a_twenty_thousand_member_dependency_ring_is_a_cycle_error() {
    let n = 20_000;
    let mut doc = "version: 1\npond: p\nmembers:\n".to_owned();
    for i in 0..n {
        doc.push_str(&format!(
            "  - slug: m{i}\n    depends_on: [m{}]\n",
            (i + 1) % n
        ));
    }
    let (out, _) = validate(&doc, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "no crash: {:?}", out.status);
    assert!(
        stderr.starts_with("pond.yaml:5:5: error: dependency cycle: m0 -> m1 -> m2 -> "),
        "{}",
        &stderr[..stderr.len().min(300)]
    );
    assert!(stderr.contains("m19999 -> m0 [dependency-cycle]"));
    assert!(stderr.ends_with("pond.yaml: 1 error\n"));
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let depth = 100_000;
    let doc = format!(
        "version: 1\npond: p\nmembers: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let mut block = "version: 1\npond: p\nmembers:\n  - slug: a\n    env:\n".to_owned();
    for level in 0..5_000 {
        block.push_str(&format!("{}k{level}:\n", " ".repeat(6 + 2 * level)));
    }
    for doc in [doc, block] {
        let (out, _) = validate(&doc, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "no crash: {:?}", out.status);
        assert!(
            stderr.contains("error: invalid YAML: nested deeper than 64 levels [yaml-syntax]"),
            "{}",
            &stderr[..stderr.len().min(500)]
        );
    }
}
