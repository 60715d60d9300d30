//! The plan for people, in Terraform's words and symbols: a legend of the
//! symbols used, one block per member, and the summary line. Colour is added
//! as ANSI styles; print through `anstream`, which strips them off a
//! terminal and with `NO_COLOR`.

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};

use crate::commands::{self, DiffLine, Show};
use crate::{Action, MemberChange, Plan};

const GREEN: Style = AnsiColor::Green.on_default();
const YELLOW: Style = AnsiColor::Yellow.on_default();
const RED: Style = AnsiColor::Red.on_default();
const BOLD: Style = Style::new().bold();

fn style(action: Action) -> Style {
    match action {
        Action::Create => GREEN,
        Action::Update | Action::Adopt => YELLOW,
        Action::Replace | Action::CreateBeforeDestroy | Action::Delete => RED,
        Action::NoOp => Style::new(),
    }
}

/// The whole plan as text, interpolated env values hidden.
#[must_use]
pub fn render(plan: &Plan) -> String {
    render_with(plan, Show::default())
}

/// The whole plan as text.
#[must_use]
pub fn render_with(plan: &Plan, show: Show) -> String {
    let mut out = String::new();
    if !plan.has_changes() {
        out.push_str("No changes. The pond matches the spec.\n");
        kept_note(&mut out, plan);
        return out;
    }
    let _ = writeln!(
        out,
        "crabbox used the selected providers to generate the following execution plan for pond \"{}\".",
        plan.pond
    );
    // No legend without a member action: an empty one reads as a broken plan.
    if plan.changes.iter().any(MemberChange::is_change) {
        out.push_str("Member actions are indicated with the following symbols:\n");
    }
    for (action, text) in [
        (Action::Create, "create"),
        (Action::Update, "update in-place"),
        (
            Action::Adopt,
            "adopt: write crabbox's labels on a lease made by Crabbox",
        ),
        (Action::Delete, "destroy"),
        (Action::Replace, "destroy and then create replacement"),
        (
            Action::CreateBeforeDestroy,
            "create replacement and then destroy",
        ),
    ] {
        if plan.changes.iter().any(|c| c.action == action) {
            let st = style(action);
            let _ = writeln!(out, "{st}{:>3}{st:#} {text}", action.symbol());
        }
    }
    out.push_str("\ncrabbox will perform the following actions:\n");
    for change in plan.changes.iter().filter(|c| c.is_change()) {
        out.push('\n');
        block(&mut out, change, show);
    }
    kept_note(&mut out, plan);
    if !plan.forget_claims.is_empty() {
        let _ = writeln!(
            out,
            "\nClaims whose lease no longer exists will be removed: {}",
            plan.forget_claims.join(", ")
        );
    }
    if !plan.outputs.is_empty() {
        out.push_str("\nOutput files:\n");
        for o in &plan.outputs {
            if o.action == "create" {
                let lines = o
                    .diff
                    .lines()
                    .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
                    .count();
                let _ = writeln!(
                    out,
                    "  {GREEN}+{GREEN:#} {} (new file, {lines} lines)",
                    o.name
                );
                continue;
            }
            let _ = writeln!(out, "  {YELLOW}~{YELLOW:#} {}", o.name);
            for line in o.diff.lines() {
                let st = if line.starts_with('+') && !line.starts_with("+++") {
                    GREEN
                } else if line.starts_with('-') && !line.starts_with("---") {
                    RED
                } else {
                    Style::new()
                };
                let _ = writeln!(out, "    {st}{line}{st:#}");
            }
        }
    }
    let s = plan.summary();
    let _ = writeln!(
        out,
        "\n{BOLD}Plan:{BOLD:#} {}{} to add, {} to change, {} to destroy.{}",
        // As Terraform puts "N to import" first, only when there are any.
        if s.adopt > 0 {
            format!("{} to adopt, ", s.adopt)
        } else {
            String::new()
        },
        s.add,
        s.change,
        s.destroy,
        // Output files count too: they are why a plan with no member
        // action still has changes (`--detailed-exitcode` 2).
        match plan.outputs.len() {
            0 => String::new(),
            1 => " 1 output file to write.".to_owned(),
            n => format!(" {n} output files to write."),
        }
    );
    out
}

/// Leases not in the spec that stay because they are labelled `keep=true`.
fn kept_note(out: &mut String, plan: &Plan) {
    let kept: Vec<&MemberChange> = plan.changes.iter().filter(|c| is_kept(c)).collect();
    if kept.is_empty() {
        return;
    }
    out.push_str(
        "\nLeases not in the spec that are kept because they are labelled keep=true\n(pass --destroy-kept to destroy them):\n",
    );
    for c in kept {
        let id = c.lease.as_ref().map_or("", |l| l.id.as_str());
        let _ = writeln!(out, "  = {} ({}, lease \"{id}\")", c.slug, c.provider);
    }
}

/// A lease not in the spec that the plan keeps (`keep=true`).
#[must_use]
pub fn is_kept(c: &MemberChange) -> bool {
    c.action == Action::NoOp && c.desired.is_none() && c.lease.is_some()
}

fn header(change: &MemberChange) -> &'static str {
    match change.action {
        Action::Create => "will be created",
        Action::Adopt => "will be adopted",
        Action::Update => "will be updated in-place",
        Action::Replace | Action::CreateBeforeDestroy
            if change.reasons.iter().any(|r| r.contains("--replace")) =>
        {
            "will be replaced, as requested"
        }
        Action::Replace | Action::CreateBeforeDestroy
            if change.reasons.iter().any(|r| r.contains("tainted")) =>
        {
            "is tainted, so must be replaced"
        }
        Action::Replace | Action::CreateBeforeDestroy => "must be replaced",
        Action::Delete => "will be destroyed",
        Action::NoOp => "is unchanged",
    }
}

/// One member's block, as it appears in the full plan.
#[must_use]
pub fn member_block(c: &MemberChange, show: Show) -> String {
    let mut out = String::new();
    block(&mut out, c, show);
    out
}

/// `db will be created`, `api must be replaced`…
#[must_use]
pub fn member_header(c: &MemberChange) -> String {
    format!("{} {}", c.slug, header(c))
}

fn block(out: &mut String, c: &MemberChange, show: Show) {
    let st = style(c.action);
    let _ = writeln!(out, "  {BOLD}# {}{BOLD:#} {}", c.slug, header(c));
    for r in &c.reasons {
        let _ = writeln!(out, "  # (because {r})");
    }
    let _ = writeln!(
        out,
        "{st}{:>3}{st:#} member \"{}\" {{",
        c.action.symbol(),
        c.slug
    );
    let mut rows: Vec<(String, String, String)> = Vec::new();
    if let Some(lease) = &c.lease {
        let sym = if c.action == Action::Delete { "-" } else { " " };
        rows.push((
            sym.to_owned(),
            "lease".to_owned(),
            format!("\"{}\"", lease.id),
        ));
        if c.action == Action::Delete {
            rows.push((
                "-".to_owned(),
                "provider".to_owned(),
                format!("\"{}\"", lease.provider),
            ));
            if let Some(ports) = Some(lease.ports()).filter(|p| !p.is_empty()) {
                rows.push(("-".to_owned(), "expose".to_owned(), format!("{ports:?}")));
            }
        }
    }
    for a in &c.attributes {
        match (&a.before, &a.after) {
            (None, Some(after)) if c.action == Action::Adopt => {
                rows.push(("+".to_owned(), a.name.clone(), quoted(after)));
            }
            (Some(before), None) if c.action == Action::Adopt => {
                rows.push(("-".to_owned(), a.name.clone(), quoted(before)));
            }
            (None, Some(after)) if c.action == Action::Create => {
                rows.push(("+".to_owned(), a.name.clone(), quoted(after)))
            }
            (before, after) => {
                let text = format!(
                    "{} -> {}{}",
                    before
                        .as_deref()
                        .map_or_else(|| "(unknown)".to_owned(), quoted),
                    after.as_deref().map_or_else(|| "null".to_owned(), quoted),
                    if a.forces_replacement {
                        " # forces replacement"
                    } else {
                        ""
                    }
                );
                rows.push(("~".to_owned(), a.name.clone(), text));
            }
        }
    }
    let width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    for (sym, name, value) in rows {
        let st = match sym.as_str() {
            "+" => GREEN,
            "-" => RED,
            "~" => YELLOW,
            _ => Style::new(),
        };
        let _ = writeln!(out, "      {st}{sym}{st:#} {name:<width$} = {value}");
    }
    commands_rows(out, c, show);
    out.push_str("    }\n");
}

/// What the member will run, when the change runs its setup: the lines a
/// reviewer needs instead of the `pond_setup` hash.
fn commands_rows(out: &mut String, c: &MemberChange, show: Show) {
    let Some(m) = &c.desired else { return };
    let runs_setup = match c.action {
        Action::Create | Action::Replace | Action::CreateBeforeDestroy => true,
        Action::Update | Action::Adopt => c.rerun_setup,
        Action::Delete | Action::NoOp => false,
    };
    let lines = commands::lines(m, show);
    if !runs_setup {
        return;
    }
    let updating = matches!(c.action, Action::Update | Action::Adopt);
    match &c.commands_before {
        Some(before) if updating => {
            let diff = commands::diff(before, m, show);
            if diff.iter().all(|l| matches!(l, DiffLine::Same(_))) {
                let _ = writeln!(out, "        # {}", commands::SAME_LINES);
            }
            for line in diff {
                let (st, sym, text) = match line {
                    DiffLine::Same(t) => (Style::new(), " ", t),
                    DiffLine::Removed(t) => (RED, "-", t),
                    DiffLine::Added(t) => (GREEN, "+", t),
                };
                let _ = writeln!(out, "        {st}{sym}{st:#} {text}");
            }
        }
        _ if lines.is_empty() => {}
        _ => {
            if updating {
                let _ = writeln!(out, "        # {}", commands::OLD_NOT_RECORDED);
            }
            for line in lines {
                let _ = writeln!(out, "        {GREEN}+{GREEN:#} {line}");
            }
        }
    }
}

/// Strings are quoted; lists and numbers are shown as they are.
fn quoted(v: &str) -> String {
    if v.starts_with('[') || v.parse::<f64>().is_ok() || v == "true" || v == "false" {
        v.to_owned()
    } else {
        format!("\"{v}\"")
    }
}
