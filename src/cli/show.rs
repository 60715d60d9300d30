//! `crabbox show PLANFILE [--json]`: what a plan saved with `crabbox plan -o`
//! will do, without asking any provider. The saved file keeps the plan's
//! JSON rendering (not the live leases the human rendering is made from),
//! so the text form is a summary drawn from that JSON: one line per member
//! with its Terraform-style symbol and reasons, then the totals.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use super::engine::failure;
use super::report;
use crabbox_plan::saved::SavedPlan;

#[derive(Debug, Args)]
pub(super) struct ShowArgs {
    /// A plan saved with `crabbox plan -o FILE`.
    #[arg(value_name = "PLANFILE")]
    planfile: PathBuf,
    /// Print the saved plan's JSON (the same document as `plan --format json`).
    #[arg(long)]
    pub(super) json: bool,
}

/// Terraform's symbol for a change's `actions`.
fn symbol(actions: &[Value]) -> &'static str {
    let names: Vec<&str> = actions.iter().filter_map(Value::as_str).collect();
    match names[..] {
        ["create"] => "+",
        ["delete"] => "-",
        ["update"] => "~",
        ["delete", "create"] => "-/+",
        ["create", "delete"] => "+/-",
        _ => " ",
    }
}

/// The text summary of a saved plan.
fn render(saved: &SavedPlan, file: &str) -> String {
    let plan = &saved.plan;
    let mut out = format!(
        "Saved plan {file} for pond {} (spec {})\n",
        plan["pond"].as_str().unwrap_or("?"),
        saved.spec_file.display()
    );
    for c in plan["member_changes"].as_array().into_iter().flatten() {
        let change = &c["change"];
        let actions = change["actions"].as_array().cloned().unwrap_or_default();
        let mut verb = actions
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", then ");
        if change.get("adopting").is_some() {
            verb = "adopt".to_owned();
        }
        let _ = write!(
            out,
            "  {:<3} {} ({}): {verb}",
            symbol(&actions),
            c["slug"].as_str().unwrap_or("?"),
            c["provider"].as_str().unwrap_or("?"),
        );
        let reasons: Vec<&str> = change["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !reasons.is_empty() {
            let _ = write!(out, " — {}", reasons.join("; "));
        }
        out.push('\n');
    }
    let n = |k: &str| plan["summary"][k].as_u64().unwrap_or(0);
    let _ = write!(
        out,
        "Plan: {} to add, {} to change, {} to destroy",
        n("add"),
        n("change"),
        n("destroy")
    );
    if n("adopt") > 0 {
        let _ = write!(out, ", {} to adopt", n("adopt"));
    }
    out.push_str(".\n");
    out
}

pub(super) fn run(args: &ShowArgs) -> ExitCode {
    let file = args.planfile.display().to_string();
    let text = match std::fs::read_to_string(&args.planfile) {
        Ok(t) => t,
        Err(e) => {
            report::error(
                "unreadable",
                &format!("cannot read the saved plan {file}: {e}"),
                Some("create one with `crabbox plan -o FILE`"),
            );
            return failure();
        }
    };
    let saved: SavedPlan = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            report::error(
                "not-a-saved-plan",
                &format!("{file} is not a crabbox saved plan: {e}"),
                Some("create one with `crabbox plan -o FILE`"),
            );
            return failure();
        }
    };
    if args.json {
        super::report::printed_document();
        println!(
            "{}",
            serde_json::to_string_pretty(&saved.plan).expect("JSON")
        );
    } else {
        print!("{}", render(&saved, &file));
    }
    ExitCode::SUCCESS
}
