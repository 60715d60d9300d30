//! Snapshot tests of the three plan renderings (human without colour, JSON,
//! markdown) for representative plans built with the scenario machinery:
//! `specs/mixed-pond.yaml` (every kind of change), `specs/no-op-applied-pond.yaml`
//! (nothing to do), `specs/adopt-pond-with-kept-lease.yaml` (adoption and a
//! kept lease) and a generated pond of 300 new members (markdown
//! truncation), and `specs/plan-shows-commands.yaml` (setup, env and new
//! member commands, an interpolated env value hidden). Lease IDs and "now" are fixed, so the plans are deterministic.
//! `UPDATE_SNAPSHOTS=1 cargo test --test it plan_output` rewrites the files
//! under `tests/snapshots/`; read every rewritten file before committing it.

use std::fmt::Write as _;

use crabbox_plan::commands::Show;
use crabbox_plan::{Action, Plan, human, json, markdown};
use serde_json::Value;

use crate::scenarios::{plan_for, plan_for_file};
use crate::support::check_snapshot;

/// Members of the generated large pond.
const LARGE: usize = 300;

fn human_text(p: &Plan) -> String {
    anstream::adapter::strip_str(&human::render(p)).to_string()
}

fn json_text(p: &Plan) -> String {
    serde_json::to_string_pretty(&json::to_value(p)).expect("plan JSON serializes") + "\n"
}

/// Compares every rendering of `p` with `tests/snapshots/<stem>.{txt,json,md}`.
fn check_all(stem: &str, p: &Plan) {
    let problems: Vec<String> = [
        (format!("tests/snapshots/{stem}.human.txt"), human_text(p)),
        (format!("tests/snapshots/{stem}.json"), json_text(p)),
        (format!("tests/snapshots/{stem}.md"), markdown::render(p)),
    ]
    .iter()
    .filter_map(|(path, text)| check_snapshot(path, text))
    .collect();
    assert!(
        problems.is_empty(),
        "{}\n(UPDATE_SNAPSHOTS=1 rewrites them)",
        problems.join("\n")
    );
}

fn mixed() -> Plan {
    plan_for_file("mixed-pond.yaml").expect("the mixed pond plans")
}

/// A scenario with `LARGE` new members, each with a few attributes.
fn large() -> Plan {
    let mut doc = String::from(
        "name: large\nwhy: many creates\nspec: |\n  version: 1\n  pond: big\n  members:\n",
    );
    for i in 0..LARGE {
        let _ = writeln!(
            doc,
            "    - slug: member-{i:03}\n      expose: [{}]",
            10_000 + i
        );
        if i > 0 {
            let _ = writeln!(doc, "      depends_on: [member-{:03}]", i - 1);
        }
        let _ = writeln!(doc, "      setup: [ \"./start --index {i}\" ]");
    }
    doc.push_str("live: []\n");
    plan_for(&doc).expect("the large pond plans")
}

#[test]
fn mixed_plan_renderings_match_snapshots() {
    check_all("plan-mixed", &mixed());
}

/// The value of `${API_TOKEN:-…}` in `specs/plan-shows-commands.yaml`.
const TOKEN: &str = "s3cret-token";

#[test]
fn commands_plan_renderings_match_snapshots() {
    let p = plan_for_file("plan-shows-commands.yaml").expect("the commands pond plans");
    let human = human_text(&p);
    let md = markdown::render(&p);
    let json = json_text(&p);
    for text in [&human, &md, &json] {
        assert!(text.contains("run ./migrate --all"), "{text}");
        assert!(
            text.contains("run ./scripts/start-db.sh  (background)"),
            "{text}"
        );
        assert!(
            text.contains("run npm ci"),
            "new members list their setup: {text}"
        );
        assert!(
            text.contains("env MODE=\\\"fast\\\"") || text.contains("env MODE=\"fast\""),
            "{text}"
        );
        assert!(text.contains("env API_TOKEN=(sensitive)"), "{text}");
        assert!(!text.contains(TOKEN), "an interpolated value leaks: {text}");
    }
    // Updates of leases whose claim recorded what ran show a unified diff:
    // the setup change of db, the env change of api (its command unchanged).
    for (slug, lines) in [
        (
            "db",
            &[
                "- run ./migrate\n",
                "+ run ./migrate --all\n",
                "+ run ./scripts/start-db.sh  (background)\n",
                "  ready tcp :5432\n",
            ][..],
        ),
        (
            "api",
            &[
                "- env MODE=\"slow\"\n",
                "+ env API_TOKEN=(sensitive)\n",
                "+ env MODE=\"fast\"\n",
                "  run ./api --mode $MODE\n",
            ][..],
        ),
    ] {
        // Each member's section of the PR comment carries its diff, as
        // the human plan's block does.
        let section = md
            .split("<details>")
            .find(|s| s.contains(&format!("{slug} will be updated in-place")))
            .unwrap_or_else(|| panic!("a {slug} section: {md}"));
        let block = human
            .split("\n\n")
            .find(|s| s.contains(&format!("# {slug} will be updated in-place")))
            .unwrap_or_else(|| panic!("a {slug} block: {human}"));
        for text in [section, block] {
            let at: Vec<Option<usize>> = lines.iter().map(|l| text.find(l)).collect();
            assert!(
                at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1]),
                "{slug}: expected the lines {lines:?} in order in:\n{text}"
            );
        }
        assert!(!block.contains(crabbox_plan::commands::OLD_NOT_RECORDED));
    }
    // A lease whose claim holds no record: the new lines, with a note.
    let worker = human
        .split("\n\n")
        .find(|s| s.contains("# worker will be updated in-place"))
        .expect("a worker block");
    assert!(
        worker.contains(crabbox_plan::commands::OLD_NOT_RECORDED),
        "{worker}"
    );
    assert!(worker.contains("+ run ./worker --queue jobs"), "{worker}");
    // The JSON carries both sides.
    let doc: Value = serde_json::from_str(&json).expect("plan JSON");
    let db = &doc["member_changes"][0]["change"];
    assert_eq!(db["commands_before"][0], "run ./migrate");
    assert_eq!(db["commands"][0], "run ./migrate --all");
    assert!(doc["member_changes"][3]["change"]["commands_before"].is_null());
    check_all("plan-commands", &p);
}

#[test]
fn show_env_prints_interpolated_values() {
    let p = plan_for_file("plan-shows-commands.yaml").expect("the commands pond plans");
    let show = Show { env: true };
    let human = anstream::adapter::strip_str(&human::render_with(&p, show)).to_string();
    assert!(
        human.contains(&format!("env API_TOKEN=\"{TOKEN}\"")),
        "{human}"
    );
    assert!(markdown::render_with(&p, show).contains(TOKEN));
}

#[test]
fn adoption_plan_renderings_match_snapshots() {
    let p = plan_for_file("adopt-pond-with-kept-lease.yaml").expect("the Crabbox pond plans");
    let human = human_text(&p);
    assert!(human.contains("  ~ adopt: write crabbox's labels on a lease made by Crabbox"));
    assert!(human.contains("Plan: 1 to adopt, 0 to add, 0 to change, 0 to destroy."));
    assert!(human.contains("  = old (hetzner, lease \"cbx_0123456789cd\")"));
    check_all("plan-adopt", &p);
}

#[test]
fn empty_plan_renderings_match_snapshots() {
    let p = plan_for_file("no-op-applied-pond.yaml").expect("the applied pond plans");
    assert!(!p.has_changes());
    assert_eq!(human_text(&p), "No changes. The pond matches the spec.\n");
    check_all("plan-empty", &p);
}

#[test]
fn large_plan_markdown_matches_snapshot() {
    let md = markdown::render(&large());
    if let Some(problem) = check_snapshot("tests/snapshots/plan-large.md", &md) {
        panic!("{problem}\n(UPDATE_SNAPSHOTS=1 rewrites it)");
    }
}

#[test]
fn large_plan_markdown_is_cut_safely() {
    let p = large();
    assert_eq!(p.changes.len(), LARGE);
    assert!(p.changes.iter().all(|c| c.action == Action::Create));
    let full = human_text(&p);
    assert!(
        full.len() > markdown::MAX_LEN,
        "the plan must be long enough to need cutting"
    );

    let md = markdown::render(&p);
    assert!(
        md.chars().count() <= 65_000 && md.len() <= markdown::MAX_LEN,
        "{} characters",
        md.chars().count()
    );
    let mut lines = md.lines().filter(|l| !l.trim().is_empty());
    assert_eq!(lines.next(), Some("### crabbox plan for pond `big`"));
    assert_eq!(
        lines.next(),
        Some("**Plan: 300 to add, 0 to change, 0 to destroy.**"),
        "the summary comes first"
    );
    let fences: Vec<&str> = md
        .lines()
        .filter(|l| l.trim_start().starts_with("```"))
        .collect();
    assert_eq!(
        fences.len() % 2,
        0,
        "every opened fence is closed: {fences:?}"
    );
    assert!(
        fences.chunks(2).all(|pair| pair[1].trim() == "```"),
        "{fences:?}"
    );
    assert!(md.contains("… truncated:"), "the cut is announced");
    assert!(
        md.trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("… truncated:") && l.contains("65,536")),
        "the note closes the comment"
    );
    assert_eq!(
        md.matches("<details>").count(),
        md.matches("</details>").count(),
        "sections are cut whole"
    );
    assert!(md.matches("<details>").count() > 10, "per-member sections");
    // The table lists every member; the sections after it are what is cut.
    assert!(md.contains("| member-299 |"));
}

#[test]
fn json_is_versioned_and_uses_terraform_action_lists() {
    const LISTS: [&[&str]; 6] = [
        &["no-op"],
        &["create"],
        &["update"],
        &["delete", "create"],
        &["create", "delete"],
        &["delete"],
    ];
    for p in [
        mixed(),
        large(),
        plan_for_file("no-op-applied-pond.yaml").expect("plans"),
    ] {
        let v = json::to_value(&p);
        assert_eq!(v["format_version"], "1.0");
        let changes = v["member_changes"]
            .as_array()
            .expect("member_changes is a list");
        assert_eq!(changes.len(), p.changes.len());
        for (entry, change) in changes.iter().zip(&p.changes) {
            let actions: Vec<&str> = entry["change"]["actions"]
                .as_array()
                .expect("actions is a list")
                .iter()
                .map(|a| a.as_str().expect("action is text"))
                .collect();
            assert!(LISTS.contains(&actions.as_slice()), "{actions:?}");
            assert_eq!(actions, change.action.json_actions());
            assert_eq!(entry["slug"], change.slug.as_str());
            assert_eq!(
                entry["lease_id"],
                change
                    .lease
                    .as_ref()
                    .map_or(Value::Null, |l| l.id.clone().into())
            );
        }
    }
}

#[test]
fn human_summary_counts_a_replacement_in_add_and_destroy() {
    let p = mixed();
    let count = |a: Action| p.changes.iter().filter(|c| c.action == a).count();
    let (create, update, replace, delete) = (
        count(Action::Create),
        count(Action::Update),
        count(Action::Replace) + count(Action::CreateBeforeDestroy),
        count(Action::Delete),
    );
    assert_eq!((create, update, replace, delete), (1, 1, 2, 2));
    let line = format!(
        "Plan: {} to add, {} to change, {} to destroy.",
        create + replace,
        update,
        replace + delete
    );
    assert_eq!(line, "Plan: 3 to add, 1 to change, 4 to destroy.");
    let text = human_text(&p);
    assert!(text.lines().any(|l| l == line), "{text}");
    assert!(
        markdown::render(&p).contains(&format!("**{line}**")),
        "the markdown summary agrees"
    );
}

/// A change only in a value the plan hides reads the same on both sides:
/// the plan says so instead of printing an empty diff.
#[test]
fn a_hidden_value_change_is_named_not_shown() {
    let p = plan_for(
        r#"
name: hidden change
why: only an interpolated value changed
spec: |
  version: 1
  pond: p
  members:
    - slug: api
      env: { TOKEN: "${TOKEN:-new-secret}" }
      setup: [ "./api" ]
previous: |
  version: 1
  pond: p
  members:
    - slug: api
      env: { TOKEN: "${TOKEN:-old-secret}" }
      setup: [ "./api" ]
live:
  - { slug: api, id: cbx_000000000001 }
"#,
    )
    .expect("plans");
    let human = human_text(&p);
    assert!(
        human.contains(crabbox_plan::commands::SAME_LINES),
        "{human}"
    );
    assert!(human.contains("  env TOKEN=(sensitive)\n"), "{human}");
    assert!(!human.contains("secret"), "{human}");
}
