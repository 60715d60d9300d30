//! The command line: argument definitions (clap) and dispatch to one module
//! per command. Output contract: data on stdout, diagnostics and progress on
//! stderr, colour only on a terminal and never with `NO_COLOR`.

mod apply;
mod claims;
mod cleanup;
mod completions;
mod config;
mod doctor;
mod engine;
mod exit;
mod graph;
mod imperative;
mod init;
mod lease_cmds;
mod lease_modes;
mod listing;
mod logs;
mod lookup;
mod peers;
mod plan;
mod pond;
mod report;
mod schema;
mod show;
mod state;
mod sweep;
mod validate;
mod views;
mod warmup;
mod whoami;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crabbox_providers::registry::ADAPTERS;
use crabbox_spec::interpolate::Variables;

const EXIT_CODES: &str = "\
Exit codes of plan, apply and destroy (Terraform's):
  0  success (with --detailed-exitcode: success and no changes)
  1  error of any kind, usage errors included: invalid spec, unreadable file, failed
     provider call, stale saved plan
  2  plan succeeded and has changes (only with --detailed-exitcode)
Exit codes of the other commands (Crabbox's):
  0  success (run: the remote command's own exit code)
  1  other errors (a failed provider call, unreadable state)
  2  usage: unknown flag, missing --id, bad value; a refused or unsupported option or
     operation; malformed claim files
  3  missing or rejected provider credentials (HCLOUD_TOKEN unset, a 401)
  4  lease not found, or a slug that matches several leases
  5  status --wait timed out, or the lease reached a terminal state first
  7  the remote side failed (SSH could not connect, the command could not start), or
     pond connect found no free local port

Environment:
  CRABBOX_STATE_DIR           state directory (claims, local leases, locks); default
                              Crabbox's: $XDG_STATE_HOME/crabbox, else
                              ${XDG_CONFIG_HOME:-~/.config}/crabbox/state (macOS:
                              ~/Library/Application Support/crabbox/state)
  CRABBOX_STATE_URL           postgres://… keeps claims and pond locks in PostgreSQL, shared
                              by every CI runner (wins over the spec's `state:`)";

const ENVIRONMENT_TAIL: &str =
    "  CRABBOX_COORDINATOR         a Crabbox coordinator's URL: hetzner (aws, azure, gcp, daytona)
                              leases go through it (brokered mode)
  CRABBOX_COORDINATOR_TOKEN   its bearer token (a CI secret; never on the command line)
  CRABBOX_OWNER, CRABBOX_ORG  sent to the coordinator as X-Crabbox-Owner / X-Crabbox-Org;
                              the owner also names the pond's Tailscale tag
  CRABBOX_TAILSCALE_AUTH_KEY  auth key `tailscale: true` members join with (the variable
                              `tailscale.authKeyEnv` names); else one is minted per member
  TS_API_KEY                  Tailscale API key: mints keys, finds members' addresses,
                              removes released members' devices; CRABBOX_TS_API_URL or
                              TS_API_URL, TS_TAILNET (default `-`), TS_CONTROL_URL (Headscale)
  CRABBOX_POND_ACL_BOOTSTRAP  `1`: apply adds the pond tag's rows to the tailnet policy
  NO_COLOR                    never colour output
  CI                          plain progress lines instead of live spinners";

/// The text after `--help`'s options: exit codes, then the environment,
/// each provider's variables taken from its descriptor.
fn after_help() -> String {
    let mut text = String::from(EXIT_CODES);
    for d in ADAPTERS.iter().filter(|d| !d.help.is_empty()) {
        text.push('\n');
        text.push_str(d.help);
    }
    text.push('\n');
    text.push_str(ENVIRONMENT_TAIL);
    text
}

/// Declarative Crabbox ponds: plan and apply a checked-in pond.yaml against
/// the leases that really exist.
#[derive(Debug, Parser)]
#[command(name = "crabbox", version, about, after_help = after_help(), max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a pond.yaml: YAML syntax, variables, schema and semantic rules.
    /// Every problem is reported at once as FILE:LINE:COL with a hint.
    Validate(validate::ValidateArgs),
    /// Print the JSON Schema of pond.yaml (the same bytes as schema/pond.schema.json), or
    /// with --document of crabbox's JSON output (plan, events, diagnostics).
    Schema(schema::SchemaArgs),
    /// Discover the live pond, diff it against the spec and print the plan.
    Plan(plan::PlanArgs),
    /// Plan (or load a saved plan, refusing a stale one) and carry it out.
    Apply(apply::ApplyArgs),
    /// Release every member of the pond, dependents first; "not found" counts as released.
    Destroy(apply::DestroyArgs),
    /// The pond's members and how to reach them.
    Peers(peers::PeersArgs),
    /// Write peers.json, hosts, env and user templates from the live pond.
    Render(peers::RenderArgs),
    /// Create one lease in a pond (idempotent: an existing slug is left alone);
    /// prints Crabbox's `leased <id> slug=… provider=…` line.
    Warmup(warmup::WarmupArgs),
    /// Run a command on a member, streaming its output; exits with the command's exit code.
    Run(imperative::RunArgs),
    /// Release one lease (by lease ID or slug, in any pond).
    #[command(alias = "stop")]
    Release(imperative::ReleaseArgs),
    /// List leases (of every pond this machine or its providers know, or of one).
    List(listing::ListArgs),
    /// Show one lease (by lease ID or slug); --wait waits until it is ready.
    Status(imperative::StatusArgs),
    /// Print the ssh command line that logs in to a lease (by lease ID or slug).
    Ssh(lease_cmds::SshArgs),
    /// One lease's details as key=value lines (--json: the status view).
    Inspect(lease_cmds::InspectArgs),
    /// Touch a lease: last_touched_at now, expiry recomputed (--idle-timeout replaces it).
    Heartbeat(lease_cmds::HeartbeatArgs),
    /// The local claim files (exit 2 when one is malformed); --verify marks dangling ones.
    Claims(claims::ClaimsArgs),
    /// Release this machine's expired leases by Crabbox's rules (never keep=true).
    Cleanup(cleanup::CleanupArgs),
    /// Pause a member (providers that can: islo), releasing its compute but keeping the lease and its claim.
    Pause(imperative::PauseArgs),
    /// Resume a paused member.
    Resume(imperative::PauseArgs),
    /// Check a pond's network: its Tailscale policy rows and, from every
    /// member, each peer's exposed ports (exit 1 when a path is down).
    Doctor(doctor::DoctorArgs),
    /// Destroy ponds whose every lease expired and, with --prefix, those not kept
    /// (closed pull requests). --dry-run shows the plan.
    Sweep(sweep::SweepArgs),
    /// Crabbox-compatible pond verbs.
    #[command(subcommand)]
    Pond(pond::PondCommand),
    /// State backends (where claims and pond locks live: local files, or PostgreSQL
    /// when CRABBOX_STATE_URL or the spec's `state:` names a database).
    #[command(subcommand)]
    State(state::StateCommand),
    /// Crabbox's user config (CRABBOX_CONFIG, else <user config dir>/crabbox/config.yaml,
    /// then ./crabbox.yaml and ./.crabbox.yaml) as crabbox reads it.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Who the Crabbox coordinator (CRABBOX_COORDINATOR) takes this process for.
    Whoami(whoami::WhoamiArgs),
    /// The pond's members and dependencies from the spec, as Graphviz dot or Mermaid.
    Graph(graph::GraphArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff): `crabbox man > crabbox.1`.
    Man,
    /// Print a plan saved with `crabbox plan -o FILE` (--json: its JSON document).
    Show(show::ShowArgs),
    /// A member's setup output, or one of its background services' logs
    /// (by lease ID or slug); --follow streams new lines.
    Logs(logs::LogsArgs),
    /// Write a commented pond.yaml to start from (flags, or questions on a terminal).
    Init(init::InitArgs),
}

/// The spec file and the variables it is read with; shared by every command
/// that reads pond.yaml.
#[derive(Debug, Args, Clone)]
pub struct SpecArgs {
    /// The pond spec to read.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        default_value = "pond.yaml"
    )]
    pub file: PathBuf,
    /// Set a variable for ${VAR} interpolation; wins over the environment. Repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
}

impl SpecArgs {
    /// Variables: `--var` over the environment.
    #[must_use]
    pub fn variables(&self) -> Variables {
        Variables::from_env(self.vars.clone())
    }
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

/// How a plan is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// Terraform-style text.
    Human,
    /// Versioned JSON (`format_version`), shaped like Terraform's.
    Json,
    /// For pull-request comments: summary first, cut below 65,000 characters.
    Markdown,
}

/// Parses arguments and runs the command; returns the process exit code.
pub fn run(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> ExitCode {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(mut e) => {
            engine::hint_spec_positional(&mut e);
            let _ = e.print();
            if e.use_stderr() {
                report::usage_error(&args, &e);
            }
            return if e.use_stderr() {
                ExitCode::from(exit::for_usage_error(&args))
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    report::set_output(report::output_of(&cli.command));
    let code = match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Schema(args) => schema::run(&args),
        Command::Plan(args) => plan::run(&args),
        Command::Apply(args) => apply::apply(&args),
        Command::Destroy(args) => apply::destroy(&args),
        Command::Peers(args) => peers::peers(&args),
        Command::Render(args) => peers::render(&args),
        Command::Warmup(args) => warmup::warmup(&args),
        Command::Run(args) => imperative::run(&args),
        Command::Release(args) => imperative::release(&args),
        Command::List(args) => listing::list(&args),
        Command::Status(args) => imperative::status(&args),
        Command::Pause(args) => imperative::pause_or_resume(&args, true),
        Command::Resume(args) => imperative::pause_or_resume(&args, false),
        Command::Doctor(args) => doctor::doctor(&args),
        Command::Ssh(args) => lease_cmds::ssh(&args),
        Command::Inspect(args) => lease_cmds::inspect(&args),
        Command::Heartbeat(args) => lease_cmds::heartbeat(&args),
        Command::Claims(args) => claims::claims(&args),
        Command::Cleanup(args) => cleanup::cleanup(&args),
        Command::Sweep(args) => sweep::run(&args),
        Command::Pond(cmd) => pond::run(&cmd),
        Command::State(cmd) => state::run(&cmd),
        Command::Config(cmd) => config::run(&cmd),
        Command::Whoami(args) => whoami::whoami(&args),
        Command::Graph(args) => graph::run(&args),
        Command::Completions(args) => completions::completions(&args),
        Command::Man => completions::man(),
        Command::Show(args) => show::run(&args),
        Command::Logs(args) => logs::logs(&args),
        Command::Init(args) => init::init(&args),
    };
    report::finish(&report::verb(&args), code)
}
