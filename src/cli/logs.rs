//! `crabbox logs`: a member's setup output and its background services'
//! logs, read (or followed) on the lease through its session, so every
//! provider that keeps the log layout (`crabbox_exec::logs`) is served the
//! same way; one that keeps none is refused with exit 2.

use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

use clap::Args;

use super::exit::{self, REMOTE, USAGE};
use super::imperative::{Passthrough, found};
use super::lookup::{Found, MemberRef};
use crabbox_core::provider::{OutputSink, ProviderError, Stream};
use crabbox_exec::logs::{NOT_SERVICES, SETUP_LOG, list_script, read_script};
use crabbox_exec::session::{ExecRequest, Session};

#[derive(Debug, Args)]
pub(super) struct LogsArgs {
    #[command(flatten)]
    member: MemberRef,
    /// The lease ID or slug (instead of --id).
    #[arg(value_name = "ID|SLUG")]
    lease: Option<String>,
    /// Keep printing lines as they are written (from the start of the log),
    /// until interrupted or stdout is closed.
    #[arg(long)]
    follow: bool,
    /// Print only the last N lines (with --follow: then follow).
    #[arg(long, value_name = "N")]
    tail: Option<u64>,
    /// Print this background service's log instead of the setup output
    /// (`setup-2` is the service of the second setup step, `background: true`).
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
}

/// The standard output of a small script, kept.
#[derive(Default)]
pub(super) struct Collect(Mutex<Vec<String>>);

impl Collect {
    /// The lines kept so far, taken out.
    pub(super) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl OutputSink for Collect {
    fn line(&self, stream: Stream, line: &str) {
        if stream == Stream::Stdout {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line.to_owned());
        }
    }
}

/// `logs`: the setup log (naming the services on stderr), or `--service`'s
/// log; `--follow` streams what is appended.
pub(super) fn logs(args: &LogsArgs) -> ExitCode {
    let usage = "crabbox logs --id <lease-id-or-slug> [--service NAME] [--follow]";
    let Found {
        registry,
        rt,
        lease,
        ..
    } = match found(&args.member, args.lease.as_deref(), usage) {
        Ok(f) => f,
        Err(code) => {
            let id = args.member.id.as_deref().or(args.lease.as_deref());
            if id.is_some_and(|id| id.starts_with("run_")) {
                anstream::eprintln!(
                    "  help: `run_…` is a Crabbox run ID: Crabbox's own `crabbox logs` reads a coordinator's recorded runs; this one reads a pond member's setup and service logs"
                );
            }
            return code;
        }
    };
    let provider = match registry.get(lease.provider) {
        Ok(p) => p,
        Err(e) => return exit::provider_error("", &e),
    };
    let session = provider.session(&lease);
    let slug = lease.slug();
    let Some(dir) = session.logs_dir() else {
        anstream::eprintln!(
            "error: provider {} keeps no logs on its leases, so {slug} has none to show\n  help: `crabbox run --id {slug} -- CMD` runs a command there, streaming its output",
            lease.provider
        );
        return exit::code(USAGE);
    };
    let remote_failure = |e: ProviderError| match e {
        e @ ProviderError::Credentials { .. } => exit::provider_error("", &e),
        e => {
            anstream::eprintln!("error: reading the logs of {slug} ({}): {e}", lease.id);
            exit::code(REMOTE)
        }
    };
    let names = match rt.block_on(list(session.as_ref(), &dir)) {
        Ok(names) => names,
        Err(e) => return remote_failure(e),
    };
    let services: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !NOT_SERVICES.contains(n))
        .collect();
    let listed = if services.is_empty() {
        "none".to_owned()
    } else {
        services.join(", ")
    };
    let name = match &args.service {
        Some(name) if services.contains(&name.as_str()) => name.as_str(),
        Some(name) => {
            anstream::eprintln!(
                "error: {slug} has no background service `{name}` (its services: {listed})\n  help: background services are the setup steps with `background: true`, named setup-<step number>"
            );
            return exit::code(USAGE);
        }
        None => {
            anstream::eprintln!(
                "setup output of {slug}; background services: {listed}{}",
                if services.is_empty() {
                    ""
                } else {
                    " (crabbox logs --service NAME)"
                }
            );
            if !args.follow && !names.iter().any(|n| n == SETUP_LOG) {
                anstream::eprintln!(
                    "no setup output is kept on {slug} yet: it is written when setup runs (`crabbox apply`, `--rerun-setup` to run it again)"
                );
                return ExitCode::SUCCESS;
            }
            SETUP_LOG
        }
    };
    let request = ExecRequest {
        command: read_script(&dir, name, args.tail, args.follow),
        ..ExecRequest::default()
    };
    match rt.block_on(session.exec_unrecorded(&request, Arc::new(Passthrough))) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => {
            anstream::eprintln!("error: reading {name}.log on {slug} exited with {code}");
            exit::code(1)
        }
        Err(e) => remote_failure(e),
    }
}

/// The names of the logs in `dir` on the lease, sorted.
async fn list(session: &dyn Session, dir: &str) -> Result<Vec<String>, ProviderError> {
    let sink = Arc::new(Collect::default());
    let request = ExecRequest {
        command: list_script(dir),
        ..ExecRequest::default()
    };
    let code = session.exec_unrecorded(&request, sink.clone()).await?;
    if code != 0 {
        return Err(ProviderError::Failed(format!(
            "listing {dir} exited with {code}"
        )));
    }
    let mut names = sink.take();
    names.sort();
    Ok(names)
}
