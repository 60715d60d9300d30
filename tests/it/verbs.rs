//! The everyday verbs: `graph`, `completions`, `man`, and reading the spec
//! from stdin.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command as StdCommand, Stdio};

use assert_cmd::Command;

use crate::support::root;

fn crabbox() -> Command {
    let mut cmd = Command::cargo_bin("crabbox").expect("binary built");
    cmd.current_dir(root()).env_remove("PR_NUMBER");
    cmd
}

/// `crabbox graph` of the pr-e2e example in `format`.
fn graph(format: &str) -> String {
    let out = crabbox()
        .args([
            "graph",
            "-f",
            "examples/pr-e2e/pond.yaml",
            "--var",
            "PR_NUMBER=7",
            "--format",
            format,
        ])
        .output()
        .expect("crabbox runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn graph_dot_is_drawn_by_graphviz() {
    let dot = graph("dot");
    assert!(
        dot.contains(r#""db" [label="db (hetzner)\nports 5432"];"#),
        "{dot}"
    );
    assert!(
        dot.contains(r#""api" -> "seed" [label="completed"];"#),
        "{dot}"
    );
    // Never skipped: scripts/test installs graphviz.
    let mut child = StdCommand::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("Graphviz's `dot` is installed (apt-get install graphviz, or run scripts/test)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dot.as_bytes())
        .expect("write dot");
    let out = child.wait_with_output().expect("dot finishes");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "dot rejected:\n{dot}\n{stderr}"
    );
    let svg = String::from_utf8_lossy(&out.stdout);
    assert!(
        svg.contains("<svg") && svg.contains("db (hetzner)"),
        "{svg}"
    );
}

fn is_mermaid_id(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Mermaid flowchart grammar, the subset the graph uses: a `flowchart LR`
/// header, node lines `ID["label"]` (no `"` inside) and edge lines
/// `ID -->|label| ID` or `ID -.->|label| ID` between declared nodes.
fn check_mermaid(text: &str) -> Result<(usize, usize), String> {
    let mut lines = text.lines();
    if lines.next() != Some("flowchart LR") {
        return Err("first line is not `flowchart LR`".into());
    }
    let mut nodes = BTreeSet::new();
    let mut edges = 0;
    for line in lines {
        let l = line
            .strip_prefix("  ")
            .ok_or_else(|| format!("not indented: {line}"))?;
        if let Some((id, rest)) = l.split_once("[\"") {
            let label = rest
                .strip_suffix("\"]")
                .ok_or_else(|| format!("node not closed: {line}"))?;
            if !is_mermaid_id(id) || label.contains('"') || label.is_empty() {
                return Err(format!("bad node: {line}"));
            }
            nodes.insert(id.to_owned());
            continue;
        }
        let (Some((from, rest)), Some((_, to))) = (l.split_once(' '), l.rsplit_once(' ')) else {
            return Err(format!("neither node nor edge: {line}"));
        };
        let arrow_label = rest
            .strip_suffix(to)
            .and_then(|s| s.strip_suffix(' '))
            .ok_or_else(|| format!("bad edge: {line}"))?;
        let label = arrow_label
            .strip_prefix("-->|")
            .or_else(|| arrow_label.strip_prefix("-.->|"))
            .and_then(|s| s.strip_suffix('|'))
            .ok_or_else(|| format!("bad arrow: {line}"))?;
        if label.is_empty() || label.contains('|') || !nodes.contains(from) || !nodes.contains(to) {
            return Err(format!("bad edge: {line}"));
        }
        edges += 1;
    }
    Ok((nodes.len(), edges))
}

/// [`check_mermaid`] plus the styling lines a plan's diagram ends with:
/// `classDef NAME STYLE` (`key:value` pairs), then `class ID,ID NAME` naming
/// declared nodes and a defined class.
fn check_plan_mermaid(text: &str) -> Result<(usize, usize), String> {
    let (graph, styling): (Vec<&str>, Vec<&str>) = text
        .lines()
        .partition(|l| !l.starts_with("  classDef ") && !l.starts_with("  class "));
    let mut graph = graph.join("\n");
    graph.push('\n');
    let counts = check_mermaid(&graph)?;
    let nodes: BTreeSet<&str> = graph
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.split_once("[\"").map(|(id, _)| id))
        .collect();
    let mut classes = BTreeSet::new();
    for line in styling {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["classDef", name, style]
                if is_mermaid_id(name)
                    && style.split(',').all(|kv| {
                        kv.split_once(':')
                            .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty())
                    }) =>
            {
                classes.insert(*name);
            }
            ["class", ids, name]
                if classes.contains(name) && ids.split(',').all(|id| nodes.contains(id)) => {}
            _ => return Err(format!("bad styling line: {line}")),
        }
    }
    Ok(counts)
}

#[test]
fn the_markdown_plan_opens_with_the_pond_coloured_by_action() {
    let dir = tempfile::tempdir().expect("dir");
    let out = crabbox()
        .env("CRABBOX_STATE_DIR", dir.path().join("state"))
        .env("HOME", dir.path())
        .env("USER", "diagram")
        .args([
            "plan",
            "-f",
            "examples/local/pond.yaml",
            "--format",
            "markdown",
        ])
        .output()
        .expect("crabbox runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = String::from_utf8(out.stdout).expect("utf-8");
    let (heading, rest) = md.split_once("\n\n").expect("a heading");
    assert!(heading.starts_with("### crabbox plan for pond"), "{md}");
    let block = rest
        .strip_prefix("```mermaid\n")
        .expect("the diagram comes first");
    let (mermaid, after) = block.split_once("```\n").expect("a closed block");
    assert_eq!(
        check_plan_mermaid(mermaid).map(|(n, _)| n),
        Ok(3),
        "{mermaid}"
    );
    assert!(mermaid.contains("  classDef create "), "{mermaid}");
    assert!(
        mermaid
            .lines()
            .any(|l| l.starts_with("  class ") && l.contains("m_api") && l.ends_with(" create")),
        "every member is new: {mermaid}"
    );
    assert!(after.contains("**Plan: 3 to add"), "{after}");
    // The checker refuses styling Mermaid would not draw.
    assert!(check_plan_mermaid("flowchart LR\n  a[\"x\"]\n  class a create\n").is_err());
    assert!(check_plan_mermaid("flowchart LR\n  a[\"x\"]\n  classDef create fill\n").is_err());
}

#[test]
fn graph_mermaid_is_a_well_formed_flowchart() {
    let mermaid = graph("mermaid");
    assert_eq!(check_mermaid(&mermaid), Ok((4, 4)), "{mermaid}");
    assert!(
        mermaid.contains("m_db[\"db (hetzner)<br/>ports 5432\"]"),
        "{mermaid}"
    );
    assert!(mermaid.contains("m_seed -->|ready| m_db"), "{mermaid}");
    // The checker itself rejects what Mermaid would.
    assert!(check_mermaid("graph TD\n").is_err());
    assert!(check_mermaid("flowchart LR\n  a[\"x\"]\n  a --> b\n").is_err());
}

#[test]
fn graph_draws_a_peer_reference_without_depends_on_dashed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("pond.yaml");
    std::fs::write(
        &spec,
        "version: 1\npond: g\nmembers:\n  - slug: db\n    provider: local\n    expose: [5432]\n  - slug: app\n    provider: local\n    env: { DB: \"{{peers.db.host}}\" }\n",
    )
    .expect("write spec");
    let out = crabbox()
        .args(["graph", "--format", "mermaid", "-f"])
        .arg(&spec)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("m_app -.->|peers ref| m_db"), "{text}");
    assert_eq!(check_mermaid(&text), Ok((2, 1)), "{text}");
}

#[test]
fn bash_completions_know_the_commands_and_their_flags() {
    let out = crabbox()
        .args(["completions", "bash"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("complete -F"), "{script}");
    assert!(
        script.contains("apply") && script.contains("--detailed-exitcode"),
        "{script}"
    );
    let out = crabbox()
        .args(["completions", "zsh"])
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("#compdef crabbox"));
}

#[test]
fn man_prints_a_roff_page() {
    let out = crabbox().arg("man").output().expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = String::from_utf8_lossy(&out.stdout);
    // clap_mangen writes two lines defining the apostrophe string, then the
    // title: `.TH` comes before any section.
    let title = page.find("\n.TH crabbox 1 ").expect("a .TH title line");
    assert!(
        title < page.find(".SH NAME").expect("a NAME section"),
        "{page}"
    );
    assert!(page.contains("apply"), "{page}");
}

/// `crabbox ARGS -f -` with `spec` on stdin.
fn with_stdin_spec(args: &[&str], spec: &str) -> std::process::Output {
    let state = tempfile::tempdir().expect("state dir");
    crabbox()
        .args(args)
        .args(["-f", "-"])
        .env("CRABBOX_STATE_DIR", state.path())
        .env_remove("CRABBOX_STATE_URL")
        .write_stdin(spec)
        .output()
        .expect("runs")
}

#[test]
fn dash_reads_the_spec_from_stdin_and_names_it_stdin() {
    let good = "version: 1\npond: piped\nmembers:\n  - slug: one\n    provider: local\n";
    let out = with_stdin_spec(&["validate"], good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("<stdin>: valid — pond \"piped\""),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = with_stdin_spec(&["graph", "--format", "mermaid"], good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("m_one[\"one (local)\"]"));
    let out = with_stdin_spec(&["plan", "--format", "json"], good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"one\""));

    let bad = "version: 1\npond: piped\nmembers:\n  - slug: one\n    provider: nowhere\n";
    for verb in ["validate", "plan"] {
        let out = with_stdin_spec(&[verb], bad);
        assert_eq!(out.status.code(), Some(1), "{verb}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("<stdin>:5:"), "{verb}: {err}");
    }
}

#[test]
fn apply_with_a_spec_where_the_plan_goes_suggests_dash_f() {
    let out = crabbox()
        .args(["apply", "examples/local/pond.yaml"])
        .output()
        .expect("runs");
    // Terraform's convention for plan/apply usage errors: 1 (src/cli/exit.rs).
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("examples/local/pond.yaml is a pond spec, not a saved plan")
            && err.contains("`crabbox apply -f examples/local/pond.yaml`"),
        "{err}"
    );
}

#[test]
fn a_spec_given_without_dash_f_gets_a_tip_and_the_usual_usage_code() {
    // plan: Terraform's usage code 1; validate: Crabbox's 2 (src/cli/exit.rs).
    for (verb, code) in [("plan", 1), ("validate", 2)] {
        let out = crabbox()
            .args([verb, "examples/local/pond.yaml"])
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(code), "{verb}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("tip: pass the spec with -f: `-f examples/local/pond.yaml`"),
            "{verb}: {err}"
        );
    }
    // Any other stray argument gets no such tip.
    let out = crabbox().args(["plan", "extra"]).output().expect("runs");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("-f extra"));
}

#[test]
fn show_prints_a_saved_plan_as_text_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("pond.yaml");
    std::fs::write(
        &spec,
        "version: 1\npond: shown\nmembers:\n  - slug: db\n    provider: local\n  - slug: app\n    provider: local\n    depends_on: [db]\n",
    )
    .expect("spec");
    let planfile = dir.path().join("plan.json");
    let out = crabbox()
        .arg("plan")
        .arg("-f")
        .arg(&spec)
        .arg("-o")
        .arg(&planfile)
        .env("CRABBOX_STATE_DIR", dir.path().join("state"))
        .env_remove("CRABBOX_STATE_URL")
        .output()
        .expect("plan runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = crabbox()
        .arg("show")
        .arg(&planfile)
        .output()
        .expect("show runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("for pond shown"), "{text}");
    assert!(text.contains("  +   db (local): create\n"), "{text}");
    assert!(text.contains("  +   app (local): create\n"), "{text}");
    assert!(
        text.ends_with("Plan: 2 to add, 0 to change, 0 to destroy.\n"),
        "{text}"
    );

    let out = crabbox()
        .arg("show")
        .arg(&planfile)
        .arg("--json")
        .output()
        .expect("show runs");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&planfile).expect("plan")).expect("JSON");
    assert_eq!(json, saved["plan"]);
    assert_eq!(json["summary"]["add"], 2);

    let out = crabbox()
        .args(["show", "examples/local/pond.yaml"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a crabbox saved plan"));
}

/// The diagram of a plan with every kind of change: each member drawn once,
/// in its action's class — a dropped member (`docs`) drawn though the spec
/// no longer has it, a spare lease of a kept member (`queue`) leaving the
/// member uncoloured.
#[test]
fn the_plan_diagram_colours_updates_replacements_and_destroys() {
    let text = std::fs::read_to_string(root().join("specs/mixed-pond.yaml")).expect("scenario");
    let s = crate::scenarios::setup(&crate::scenarios::parse(&text).expect("a scenario"))
        .expect("sets up");
    let plan = crate::scenarios::plan_setup(&s).expect("plans");
    let mermaid = crabbox_plan::graph::to_mermaid_for_plan(&s.desired, &plan);
    let (nodes, _) = check_plan_mermaid(&mermaid).unwrap_or_else(|e| panic!("{e}:\n{mermaid}"));
    assert_eq!(nodes, 7, "six members and the dropped one: {mermaid}");
    let class_of = |id: &str| -> Vec<&str> {
        mermaid
            .lines()
            .filter_map(|l| l.strip_prefix("  class "))
            .filter_map(|l| l.split_once(' '))
            .filter(|(ids, _)| ids.split(',').any(|i| i == id))
            .map(|(_, class)| class)
            .collect()
    };
    for (id, class) in [
        ("m_db", vec!["replace"]),
        ("m_worker", vec!["replace"]),
        ("m_api", vec!["update"]),
        ("m_web", vec!["create"]),
        ("m_docs", vec!["destroy"]),
        ("m_cache", vec![]),
        ("m_queue", vec![]),
    ] {
        assert_eq!(class_of(id), class, "{id}: {mermaid}");
    }
    assert!(mermaid.contains("m_docs[\"docs (hetzner)\"]"), "{mermaid}");
    assert!(
        mermaid.contains("classDef destroy fill:#ffebe9,stroke:#cf222e\n"),
        "{mermaid}"
    );
}
