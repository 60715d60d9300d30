//! What the reconciling commands share: loading the spec with diagnostics
//! printed, the runtime, the registry, plan flags and approval.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::SpecArgs;
use super::report;
use crabbox_core::normalize::checked_name;
use crabbox_plan::diff::PlanOptions;
use crabbox_providers::registry::Registry;
use crabbox_spec::desired::{DesiredPond, StateStore};
use crabbox_spec::load::{STDIN_PATH, load_path};
use crabbox_state::claims::ClaimStore;
use crabbox_state::state_dir::state_dir;
use crabbox_state::state_pg::URL_ENV;

/// Flags that choose what a plan covers.
#[derive(Debug, Args, Clone, Default)]
pub struct TargetArgs {
    /// Plan only this member and what it depends on. Repeatable. For
    /// exceptional situations such as recovering from errors.
    #[arg(long = "only", value_name = "SLUG")]
    pub only: Vec<String>,
    /// Leave this member alone. Repeatable.
    #[arg(long = "skip", value_name = "SLUG")]
    pub skip: Vec<String>,
    /// Replace this member even if nothing changed. Repeatable.
    #[arg(long = "replace", value_name = "SLUG")]
    pub replace: Vec<String>,
    /// Run setup on the members adopted from Crabbox (by default adoption only writes labels).
    #[arg(long)]
    pub rerun_setup: bool,
    /// Destroy leases that are not in the spec even when labelled keep=true.
    #[arg(long)]
    pub destroy_kept: bool,
}

impl TargetArgs {
    /// Plan options with "now".
    #[must_use]
    pub fn options(&self) -> PlanOptions {
        let norm = |v: &Vec<String>| {
            v.iter()
                .map(|s| crabbox_core::normalize::normalize_name(s))
                .collect()
        };
        PlanOptions {
            only: norm(&self.only),
            skip: norm(&self.skip),
            replace: norm(&self.replace),
            now: crabbox_core::labels::now_secs(),
            rerun_setup: self.rerun_setup,
            destroy_kept: self.destroy_kept,
        }
    }
}

/// A loaded spec and where it lives.
pub struct Loaded {
    /// The resolved pond.
    pub desired: DesiredPond,
    /// The spec file's directory.
    pub dir: PathBuf,
    /// The spec file, absolute when possible.
    pub file: PathBuf,
}

/// Loads the spec, printing diagnostics on stderr; `None` when it is unusable.
pub fn load_spec(args: &SpecArgs, pond_override: Option<&str>) -> Option<Loaded> {
    let loaded = match load_path(&args.file, &args.variables()) {
        Ok(l) => l,
        Err(e) => {
            report::error(
                "unreadable",
                &format!("cannot read {}: {e}", args.file.display()),
                Some("run from the directory holding pond.yaml, or pass -f PATH"),
            );
            return None;
        }
    };
    report::spec(&loaded.file, &loaded.diagnostics);
    let mut desired = loaded.pond?;
    if let Some(name) = pond_override {
        match checked_name(name) {
            Ok(n) => desired.name = n,
            Err(_) => {
                report::error(
                    "usage",
                    &format!("--pond `{name}` is not a usable pond name"),
                    Some("use letters, digits and `-`, at most 41 characters"),
                );
                return None;
            }
        }
    }
    if args.file == Path::new(STDIN_PATH) {
        // `-f -`: relative paths (templates, outputs) from the current directory.
        let dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        return Some(Loaded {
            desired,
            dir,
            file: args.file.clone(),
        });
    }
    let file = std::fs::canonicalize(&args.file).unwrap_or_else(|_| args.file.clone());
    let dir = file
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    Some(Loaded { desired, dir, file })
}

/// The multi-threaded runtime the async commands run on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

/// The claim store (and pond lock place) of this command, decided once:
/// the database of `CRABBOX_STATE_URL` when set, else of the spec's
/// `state:`, else the claim files in the state directory. `None` after
/// printing why the configured URL cannot be used.
pub fn store(desired: Option<&DesiredPond>) -> Option<ClaimStore> {
    let env_url = std::env::var(URL_ENV).ok();
    let spec_url = match desired.map(|d| &d.state) {
        Some(StateStore::Postgres { url }) => Some(url.as_str()),
        Some(StateStore::Local) | None => None,
    };
    match ClaimStore::configured(&state_dir(), env_url.as_deref(), spec_url) {
        Ok(store) => Some(store),
        Err(e) => {
            report::error("state-unusable", &e.to_string(), None);
            None
        }
    }
}

/// The providers usable here, keeping claims in `claims`.
#[must_use]
pub fn registry(claims: &ClaimStore) -> Registry {
    Registry::from_environment(&state_dir(), claims)
}

/// [`registry`] for a command that read a spec: a coordinator named in its
/// `broker:` counts as if `CRABBOX_COORDINATOR` named it (the environment
/// wins).
#[must_use]
pub fn registry_for(claims: &ClaimStore, desired: &DesiredPond) -> Registry {
    let coordinator = crabbox_providers::coordinator::Settings::for_members(&desired.members);
    Registry::with_coordinator(&state_dir(), claims, coordinator.as_ref())
}

/// Asks for approval on a terminal; refuses without one.
pub fn approved(auto_approve: bool, what: &str) -> bool {
    if auto_approve {
        return true;
    }
    if !std::io::stdin().is_terminal() {
        report::error(
            "approval-required",
            &format!("{what} needs approval, and there is no terminal to ask on"),
            Some("review the plan above and pass --auto-approve (CI does)"),
        );
        return false;
    }
    anstream::eprint!(
        "\nDo you want to perform these actions?\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: "
    );
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if answer.trim() == "yes" {
        true
    } else {
        anstream::eprintln!("\n{what} cancelled.");
        report::record("cancelled", &format!("{what} cancelled"), None);
        false
    }
}

/// Exit code 1.
#[must_use]
pub fn failure() -> ExitCode {
    ExitCode::from(1)
}

/// Refuses a spec given where a saved plan goes (`crabbox apply pond.yaml`):
/// reading it as a plan would only say it is not JSON. `true` after
/// printing the command that was meant.
pub fn spec_given_as_plan(verb: &str, path: &Path) -> bool {
    let is_yaml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    if is_yaml {
        report::error(
            "usage",
            &format!("{} is a pond spec, not a saved plan", path.display()),
            Some(&format!(
                "pass the spec with -f: `crabbox {verb} -f {}`",
                path.display()
            )),
        );
    }
    is_yaml
}

/// Adds a tip to clap's "unexpected argument" error when that argument is a
/// YAML file (`crabbox plan pond.yaml`): the spec goes after `-f`.
pub fn hint_spec_positional(e: &mut clap::Error) {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return;
    };
    let path = Path::new(arg);
    let is_yaml = !arg.starts_with('-')
        && path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("yaml") || x.eq_ignore_ascii_case("yml"));
    if is_yaml {
        let tip = format!("pass the spec with -f: `-f {arg}`");
        e.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![tip.into()]),
        );
    }
}
