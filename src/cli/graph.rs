//! `crabbox graph`: the pond's members and their dependencies, from the
//! spec alone (no provider is asked), as Graphviz `dot` or Mermaid.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::SpecArgs;
use super::engine::load_spec;
use crabbox_plan::graph::{to_dot, to_mermaid};

#[derive(Debug, Args)]
pub(super) struct GraphArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    format: GraphFormat,
}

/// How the graph is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GraphFormat {
    /// Graphviz (`crabbox graph | dot -Tsvg > pond.svg`).
    Dot,
    /// A Mermaid flowchart (GitHub renders it in a ```mermaid block).
    Mermaid,
}

pub(super) fn run(args: &GraphArgs) -> ExitCode {
    let Some(loaded) = load_spec(&args.spec, None) else {
        return ExitCode::FAILURE;
    };
    let text = match args.format {
        GraphFormat::Dot => to_dot(&loaded.desired),
        GraphFormat::Mermaid => to_mermaid(&loaded.desired),
    };
    print!("{text}");
    ExitCode::SUCCESS
}
