//! The plan for pull-request comments: the summary first, a table of the
//! changes, then one collapsible section per member and one for the output
//! files — cut at a section boundary below GitHub's 65,536-character comment
//! limit, with a note saying so.

use std::fmt::Write as _;

use crate::commands::Show;
use crate::{Plan, human};

/// Longest comment body we produce (GitHub rejects more than 65,536).
pub const MAX_LEN: usize = 65_000;

/// Room kept for the closing note.
const NOTE_ROOM: usize = 300;

/// The plan as GitHub-flavoured markdown, interpolated env values hidden.
#[must_use]
pub fn render(plan: &Plan) -> String {
    render_with(plan, Show::default())
}

/// Most members a diagram is drawn for: beyond that it is unreadable, and
/// its text would take the room the members' sections need.
pub const DIAGRAM_MAX_MEMBERS: usize = 60;

/// `markdown` (a rendered plan) opening with `mermaid` (a flowchart, see
/// `graph::to_mermaid_for_plan`) right under its heading, which GitHub
/// draws; a pond of more than [`DIAGRAM_MAX_MEMBERS`] members gets a line
/// pointing at `crabbox graph` instead.
#[must_use]
pub fn with_diagram(markdown: &str, mermaid: &str, members: usize) -> String {
    let (heading, rest) = markdown.split_once("\n\n").unwrap_or((markdown, ""));
    let diagram = if members > DIAGRAM_MAX_MEMBERS {
        format!("_{members} members: `crabbox graph --format mermaid` draws the pond._\n")
    } else {
        format!("```mermaid\n{mermaid}```\n")
    };
    format!("{heading}\n\n{diagram}\n{rest}")
}

/// The plan as GitHub-flavoured markdown.
#[must_use]
pub fn render_with(plan: &Plan, show: Show) -> String {
    let s = plan.summary();
    let mut out = String::new();
    let _ = writeln!(out, "### crabbox plan for pond `{}`\n", plan.pond);
    if !plan.has_changes() {
        out.push_str("**No changes.** The pond matches the spec.\n");
        kept_note(&mut out, plan);
        return out;
    }
    let _ = writeln!(
        out,
        "**Plan: {}{} to add, {} to change, {} to destroy.**\n",
        if s.adopt > 0 {
            format!("{} to adopt, ", s.adopt)
        } else {
            String::new()
        },
        s.add,
        s.change,
        s.destroy
    );
    for w in &plan.warnings {
        let _ = writeln!(out, "> [!WARNING]\n> {}\n", cell(w));
    }
    let changed: Vec<_> = plan.changes.iter().filter(|c| c.is_change()).collect();
    out.push_str("| | member | provider | lease | why |\n|---|---|---|---|---|\n");
    for (i, c) in changed.iter().enumerate() {
        // The table may use a third of the room; the sections need the rest.
        if out.len() > MAX_LEN / 3 {
            let _ = writeln!(
                out,
                "\n… and {} more changes in the sections below.",
                changed.len() - i
            );
            break;
        }
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            c.action.symbol(),
            cell(&c.slug),
            c.provider,
            c.lease
                .as_ref()
                .map_or("(new)".to_owned(), |l| format!("`{}`", l.id)),
            cell(&c.reasons.join("; "))
        );
    }
    out.push('\n');
    kept_note(&mut out, plan);

    let mut sections: Vec<String> = changed
        .iter()
        .map(|c| {
            let body = anstream::adapter::strip_str(&human::member_block(c, show)).to_string();
            format!(
                "<details><summary><code>{}</code> {}</summary>\n\n```diff\n{}```\n\n</details>\n",
                c.action.symbol().trim(),
                cell(&human::member_header(c)),
                fence_safe(&body)
            )
        })
        .collect();
    if !plan.outputs.is_empty() {
        let mut files = String::new();
        for o in &plan.outputs {
            let _ = writeln!(files, "{}", fence_safe(&o.diff));
        }
        sections.push(format!(
            "<details><summary>Output files: {}</summary>\n\n```diff\n{}```\n\n</details>\n",
            plan.outputs
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            files
        ));
    }
    let total = sections.len();
    for (i, section) in sections.into_iter().enumerate() {
        if out.len() + section.len() + NOTE_ROOM > MAX_LEN {
            let _ = writeln!(
                out,
                "\n… truncated: {} more section{} left out to stay below GitHub's 65,536-character comment limit. Run `crabbox plan` for the full plan.",
                total - i,
                if total - i == 1 { "" } else { "s" }
            );
            break;
        }
        out.push_str(&section);
    }
    out
}

/// One line naming the leases kept although not in the spec (`keep=true`).
fn kept_note(out: &mut String, plan: &Plan) {
    let kept: Vec<String> = plan
        .changes
        .iter()
        .filter(|c| human::is_kept(c))
        .map(|c| format!("`{}`", c.slug))
        .collect();
    if !kept.is_empty() {
        let _ = writeln!(
            out,
            "Kept although not in the spec (labelled `keep=true`; `--destroy-kept` destroys them): {}\n",
            kept.join(", ")
        );
    }
}

/// Makes text safe inside a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// Keeps a code block closed: a line of backticks inside it would end it early.
fn fence_safe(text: &str) -> String {
    text.replace("```", "ˋˋˋ")
}
