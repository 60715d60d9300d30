//! `crabbox pond peers|release|unlock`: Crabbox-compatible pond verbs.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::SpecArgs;
use super::engine::failure;
use crate::apply::lock;
use crate::inventory::state_dir::state_dir;
use crate::spec::normalize::checked_name;

#[derive(Debug, Subcommand)]
pub(super) enum PondCommand {
    /// The pond's members and how to reach them (`--json`: Crabbox's shape).
    Peers {
        /// The pond.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Release every lease of the pond, dependents first ("not found" counts as released).
    Release(ReleaseArgs),
    /// Show who holds the pond's apply lock; with --force, stop the holder if it runs on this host.
    Unlock {
        /// The pond.
        name: String,
        /// Send SIGTERM to the holding process (only when it runs on this host).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub(super) struct ReleaseArgs {
    /// The pond.
    name: String,
}

pub(super) fn run(cmd: &PondCommand) -> ExitCode {
    match cmd {
        PondCommand::Peers { name, json } => {
            super::peers::peers(&super::peers::PeersArgs::for_pond(name, *json))
        }
        PondCommand::Release(args) => {
            super::apply::destroy(&super::apply::DestroyArgs::for_pond(&args.name))
        }
        PondCommand::Unlock { name, force } => unlock(name, *force),
    }
}

fn unlock(name: &str, force: bool) -> ExitCode {
    let Ok(pond) = checked_name(name) else {
        anstream::eprintln!("error: `{name}` is not a usable pond name");
        return failure();
    };
    match lock::status(&state_dir(), &pond) {
        Ok(None) => {
            println!("pond `{pond}` is not locked");
            ExitCode::SUCCESS
        }
        Ok(Some(holder)) => {
            let here = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default();
            match holder {
                Some(h) if force && h.host == here => {
                    // SAFETY: kill(2) with a pid read from our own lock file; no memory is involved.
                    let r = unsafe {
                        libc::kill(libc::pid_t::try_from(h.pid).unwrap_or(0), libc::SIGTERM)
                    };
                    if r == 0 {
                        println!("sent SIGTERM to {h}; the lock is released when it exits");
                        ExitCode::SUCCESS
                    } else {
                        anstream::eprintln!(
                            "error: could not signal pid {}: {}",
                            h.pid,
                            std::io::Error::last_os_error()
                        );
                        failure()
                    }
                }
                Some(h) => {
                    anstream::eprintln!(
                        "error: pond `{pond}` is locked by {h}\n  help: the lock is released when that process exits; {}",
                        if h.host == here {
                            "pass --force to stop it"
                        } else {
                            "stop it on its host"
                        }
                    );
                    failure()
                }
                None => {
                    anstream::eprintln!(
                        "error: pond `{pond}` is locked by a process that recorded no details\n  help: the lock is released when that process exits"
                    );
                    failure()
                }
            }
        }
        Err(e) => {
            anstream::eprintln!("error: cannot read the lock of pond `{pond}`: {e}");
            failure()
        }
    }
}

impl SpecArgs {
    /// Spec args that point at no file (for commands given `--pond NAME`).
    pub(super) fn none() -> Self {
        Self {
            file: std::path::PathBuf::from("/nonexistent/crabbox/pond.yaml"),
            vars: Vec::new(),
        }
    }
}
