//! `crabbox state migrate`: moves claims from local files into the PostgreSQL
//! state backend.

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use super::engine::failure;
use crabbox_core::state_url::{is_postgres_url, redact};
use crabbox_state::claims::ClaimStore;
use crabbox_state::migrate::{Copied, copy_claim};
use crabbox_state::state_dir::state_dir;
use crabbox_state::state_pg::{self, Database};

#[derive(Debug, Subcommand)]
pub(super) enum StateCommand {
    /// Copy every local claim file (of CRABBOX_STATE_DIR) into the PostgreSQL
    /// state database. Claims already there with the same revision are
    /// skipped; one there with another revision is left as it is and
    /// reported (exit 1). The local files are kept; crabbox ignores them
    /// while CRABBOX_STATE_URL (or the spec's `state:`) names the database.
    Migrate(MigrateArgs),
}

/// A state backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum BackendArg {
    /// Claim files in the state directory.
    Local,
    /// The PostgreSQL state database.
    Postgres,
}

#[derive(Debug, Args)]
pub(super) struct MigrateArgs {
    /// The backend to read (only `local`).
    #[arg(long, value_enum)]
    from: BackendArg,
    /// The backend to write (only `postgres`).
    #[arg(long, value_enum)]
    to: BackendArg,
    /// The database, postgres://user@host:5432/db (default: $CRABBOX_STATE_URL).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Show what would be copied; change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub(super) fn run(cmd: &StateCommand) -> ExitCode {
    match cmd {
        StateCommand::Migrate(args) => migrate(args),
    }
}

fn migrate(args: &MigrateArgs) -> ExitCode {
    if (args.from, args.to) != (BackendArg::Local, BackendArg::Postgres) {
        anstream::eprintln!(
            "error: only `--from local --to postgres` is supported\n  help: claims move from one machine's files into the shared database"
        );
        return failure();
    }
    let Some(url) = args
        .url
        .clone()
        .or_else(|| std::env::var(state_pg::URL_ENV).ok())
        .filter(|u| !u.is_empty())
    else {
        anstream::eprintln!(
            "error: no database to migrate to\n  help: pass --url postgres://user@host:5432/db or set {}",
            state_pg::URL_ENV
        );
        return failure();
    };
    if !is_postgres_url(&url) {
        anstream::eprintln!(
            "error: `{}` is not a PostgreSQL URL\n  help: write postgres://user@host:5432/db (or postgresql://…)",
            redact(&url)
        );
        return failure();
    }
    let rt = super::engine::runtime();
    let local = ClaimStore::local(&state_dir());
    let (claims, problems) = match rt.block_on(local.load_all()) {
        Ok(loaded) => loaded,
        Err(e) => {
            anstream::eprintln!("error: {e}\n  help: check the state directory's permissions");
            return failure();
        }
    };
    for p in &problems {
        anstream::eprintln!(
            "warning: skipping unreadable claim {}: {}",
            p.path.display(),
            p.message
        );
    }
    let db = Database::new(&url);
    let shown = db.display_url();
    let (mut copied, mut present, mut differ) = (0usize, 0usize, 0usize);
    let verb = if args.dry_run { "would copy" } else { "copied" };
    for claim in &claims {
        let result = rt.block_on(copy_claim(&db, claim, args.dry_run));
        match result {
            Ok(Copied::Copied) => {
                copied += 1;
                println!(
                    "{verb} {} (pond {}, provider {})",
                    claim.lease_id, claim.pond, claim.provider
                );
            }
            Ok(Copied::Present) => present += 1,
            Ok(Copied::Differs(revision)) => {
                differ += 1;
                anstream::eprintln!(
                    "warning: {} is already in the database with revision {revision} (the local file has {}); left as it is",
                    claim.lease_id,
                    if claim.revision.is_empty() {
                        "none"
                    } else {
                        &claim.revision
                    }
                );
            }
            Err(e) => {
                anstream::eprintln!("error: {}: {e}", claim.lease_id);
                return failure();
            }
        }
    }
    println!(
        "{verb} {copied} claim{} to {shown}; {present} already there, {differ} differing, {} unreadable",
        if copied == 1 { "" } else { "s" },
        problems.len()
    );
    if differ > 0 || !problems.is_empty() {
        anstream::eprintln!(
            "error: not every local claim is in the database\n  help: resolve the claims named above (remove the stale copy), then run this again"
        );
        return failure();
    }
    ExitCode::SUCCESS
}
