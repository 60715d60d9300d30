//! The plan for pull-request comments: the summary first, a table of
//! changes, then the full plan folded away — cut safely below GitHub's
//! 65,536-character comment limit.

use std::fmt::Write as _;

use crate::plan::{Plan, human};

/// Longest comment body we produce (GitHub rejects more than 65,536).
pub const MAX_LEN: usize = 65_000;

/// The plan as GitHub-flavoured markdown.
#[must_use]
pub fn render(plan: &Plan) -> String {
    let s = plan.summary();
    let mut head = String::new();
    let _ = writeln!(head, "### crabbox plan for pond `{}`\n", plan.pond);
    if plan.has_changes() {
        let _ = writeln!(
            head,
            "**Plan: {} to add, {} to change, {} to destroy.**\n",
            s.add, s.change, s.destroy
        );
        head.push_str("| | member | provider | lease | why |\n|---|---|---|---|---|\n");
        let changed: Vec<_> = plan.changes.iter().filter(|c| c.is_change()).collect();
        for (i, c) in changed.iter().enumerate() {
            // The table may use half the room; the rest is for the full plan.
            if head.len() > MAX_LEN / 2 {
                let _ = writeln!(
                    head,
                    "\n… and {} more changes, listed in the full plan.",
                    changed.len() - i
                );
                break;
            }
            let _ = writeln!(
                head,
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
    } else {
        head.push_str("**No changes.** The pond matches the spec.\n");
    }
    for w in &plan.warnings {
        let _ = writeln!(head, "\n> [!WARNING]\n> {}", cell(w));
    }
    let body = anstream::adapter::strip_str(&human::render(plan)).to_string();
    let open = "\n<details><summary>Full plan</summary>\n\n```diff\n";
    let close = "```\n\n</details>\n";
    let room = MAX_LEN.saturating_sub(head.len() + open.len() + close.len() + 200);
    let mut details = body;
    if details.len() > room {
        let mut cut = room;
        while !details.is_char_boundary(cut) {
            cut -= 1;
        }
        let cut = details[..cut].rfind('\n').map_or(cut, |i| i + 1);
        let omitted = details.len() - cut;
        details.truncate(cut);
        let _ = writeln!(
            details,
            "… truncated: {omitted} more characters. Run `crabbox plan` for the full plan."
        );
    }
    format!("{head}{open}{details}{close}")
}

/// Makes text safe inside a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
