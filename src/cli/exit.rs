//! Crabbox's exit codes for the verbs Crabbox users type (`warmup`, `run`,
//! `status`, `release`, `list`, `ssh`, `pond …`, …), so scripts written for
//! Crabbox can branch on them (Crabbox's internal/cli/errors.go and the
//! sites listed in docs/crabbox-compat.md §8.3). `plan`/`apply`/`destroy`
//! keep Terraform's 0/1/2 instead (see [`for_usage_error`]).

use std::process::ExitCode;

use crabbox_apply::reconcile::PlanFailure;
use crabbox_core::provider::ProviderError;

/// Usage and validation errors (Crabbox: flag parse errors, `usage: …`).
pub const USAGE: u8 = 2;
/// Missing or rejected credentials (Crabbox: `HCLOUD_TOKEN or HETZNER_TOKEN is required`).
pub const CREDENTIALS: u8 = 3;
/// Lease not found, ambiguous slug, not claimed (Crabbox: `lease/server not found`).
pub const NOT_FOUND: u8 = 4;
/// Timed out waiting (Crabbox: `status --wait`).
pub const TIMEOUT: u8 = 5;
/// The remote side failed: SSH could not connect or a command could not be
/// started there, or no free local port for the SSH mesh (Crabbox:
/// pond_mesh.go:802, 1080; actions.go:270, 440).
pub const REMOTE: u8 = 7;

/// An exit code.
#[must_use]
pub fn code(code: u8) -> ExitCode {
    ExitCode::from(code)
}

/// The exit code for a failed provider call: 3 for credentials, 4 for a
/// resource that does not exist, 2 for what the provider cannot do at all
/// (Crabbox: `provider=… does not support …`, heartbeat.go:83), 1 for
/// anything else.
#[must_use]
pub fn provider_code(e: &ProviderError) -> u8 {
    match e {
        ProviderError::Credentials { .. } => CREDENTIALS,
        ProviderError::NotFound(_) => NOT_FOUND,
        ProviderError::Unsupported(_) => USAGE,
        _ => 1,
    }
}

/// The diagnostic code of a provider error (`--json`'s diagnostics).
#[must_use]
pub fn provider_diagnostic_code(e: &ProviderError) -> &'static str {
    match e {
        ProviderError::Credentials { .. } => "credentials",
        ProviderError::Config { .. } => "provider-config",
        ProviderError::NotFound(_) => "not-found",
        ProviderError::Unsupported(_) => "unsupported",
        _ => "provider-failed",
    }
}

/// Reports a provider error (with its hint) and returns its exit code.
pub fn provider_error(context: &str, e: &ProviderError) -> ExitCode {
    let code_name = provider_diagnostic_code(e);
    match e {
        ProviderError::Credentials { message, hint } | ProviderError::Config { message, hint } => {
            super::report::error(code_name, &format!("{context}{message}"), Some(hint));
        }
        other => super::report::error(code_name, &format!("{context}{other}"), None),
    }
    code(provider_code(e))
}

/// Reports a plan that must not be applied and returns its exit code: 3
/// when missing or refused credentials are the whole cause (the fix is a
/// secret, as for Crabbox's verbs; 3 never collides with
/// `--detailed-exitcode`'s 2), else 1.
pub fn plan_refused(e: &PlanFailure) -> ExitCode {
    if e.is_credentials() {
        super::report::error("credentials", &e.to_string(), None);
        return code(CREDENTIALS);
    }
    super::report::error("plan-failed", &e.to_string(), None);
    code(1)
}

/// The exit code of a command-line parse error (clap). Crabbox's verbs
/// exit 2, as Go's `flag` package does. `plan`, `apply` and `destroy` keep
/// Terraform's convention, where a usage error is 1: with
/// `--detailed-exitcode` a 2 means "the plan has changes", and a mistyped
/// flag must never read as that.
#[must_use]
pub fn for_usage_error(args: &[std::ffi::OsString]) -> u8 {
    let verb = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .find(|a| !a.starts_with('-'));
    match verb.as_deref() {
        Some("plan" | "apply" | "destroy") => 1,
        _ => USAGE,
    }
}
