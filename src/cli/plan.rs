//! `crabbox plan`: discover, diff, print.

use std::process::ExitCode;

use clap::Args;

use super::engine::{TargetArgs, load_spec, registry_for, runtime, store};
use super::lease_modes;
use super::{PlanFormat, SpecArgs};
use crabbox_apply::reconcile::{observe, plan_with_outputs};
use crabbox_plan::commands::Show;
use crabbox_plan::saved::{self, SavedPlan};
use crabbox_plan::{human, json, markdown};
use crabbox_state::state_dir::state_dir;

#[derive(Debug, Args)]
pub(super) struct PlanArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Use this pond name instead of the spec's.
    #[arg(long)]
    pond: Option<String>,
    #[command(flatten)]
    targets: TargetArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = PlanFormat::Human)]
    pub(super) format: PlanFormat,
    /// Exit 0 when there are no changes, 2 when there are, 1 on error.
    #[arg(long)]
    detailed_exitcode: bool,
    /// Print env values that came from `--var` or the environment
    /// (`${VAR}`); without it they read `(sensitive)`.
    #[arg(long)]
    show_env: bool,
    /// Save the plan to FILE for `crabbox apply FILE`.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: Option<std::path::PathBuf>,
}

pub(super) fn run(args: &PlanArgs) -> ExitCode {
    let Some(loaded) = load_spec(&args.spec, args.pond.as_deref()) else {
        return ExitCode::from(1);
    };
    let Some(store) = store(Some(&loaded.desired)) else {
        return ExitCode::from(1);
    };
    let registry = registry_for(&store, &loaded.desired);
    let state = state_dir();
    let options = args.targets.options();
    let rt = runtime();
    let inventory = rt.block_on(observe(&loaded.desired, &registry, &state, &store));
    let plan = match plan_with_outputs(&loaded.desired, &inventory, &options, &registry) {
        Ok(p) => p,
        Err(e) => return super::exit::plan_refused(&e),
    };
    for w in &plan.warnings {
        anstream::eprintln!("warning: {w}");
    }
    let modes = lease_modes::of(&loaded.desired);
    let show = Show { env: args.show_env };
    match args.format {
        PlanFormat::Human => {
            anstream::print!("{}", human::render_with(&plan, show));
            if let Some(modes) = &modes {
                print!("{}", lease_modes::human(modes));
            }
        }
        PlanFormat::Json => {
            let mut value = json::to_value(&plan);
            if let Some(modes) = &modes {
                lease_modes::add_to_json(&mut value, modes);
            }
            super::report::printed_document();
            println!("{}", serde_json::to_string_pretty(&value).expect("JSON"));
        }
        PlanFormat::Markdown => {
            let mermaid = crabbox_plan::graph::to_mermaid_for_plan(&loaded.desired, &plan);
            print!(
                "{}",
                markdown::with_diagram(
                    &markdown::render_with(&plan, show),
                    &mermaid,
                    loaded.desired.members.len()
                )
            );
            if let Some(modes) = &modes {
                print!("{}", lease_modes::markdown(modes));
            }
        }
    }
    if let Some(path) = &args.out {
        let saved = SavedPlan {
            crabbox_saved_plan: saved::VERSION,
            spec_file: loaded.file.clone(),
            spec_hash: saved::spec_hash(&loaded.desired),
            pond_override: args.pond.clone(),
            only: args.targets.only.clone(),
            skip: args.targets.skip.clone(),
            replace: args.targets.replace.clone(),
            rerun_setup: args.targets.rerun_setup,
            destroy_kept: args.targets.destroy_kept,
            fingerprint: saved::fingerprint(&inventory),
            plan: json::to_value(&plan),
        };
        let text = serde_json::to_string_pretty(&saved).expect("JSON");
        if let Err(e) = crabbox_fs::atomic_file::write(path, text.as_bytes()) {
            super::report::error("unwritable", &format!("cannot save the plan: {e}"), None);
            return ExitCode::from(1);
        }
        anstream::eprintln!(
            "Saved the plan to {}. To perform exactly these actions, run: crabbox apply {}",
            path.display(),
            path.display()
        );
    }
    if args.detailed_exitcode && plan.has_changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
