//! `crabbox ssh`, `inspect` and `heartbeat`: one lease, named by lease ID
//! or slug (`--id` or positionally), as Crabbox's ssh_cmd.go, inspect.go
//! and heartbeat.go print it.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::exit::{self, TIMEOUT, USAGE};
use super::imperative::{found, parse_duration, ssh_of};
use super::lookup::MemberRef;
use super::views::{
    StatusView, blank, go_duration, idle_timeout, label_time, ssh_command_line, terminal,
};
use crabbox_core::labels::{self, Labels};
use crabbox_core::lease::Lease;

#[derive(Debug, Args)]
pub(super) struct SshArgs {
    #[command(flatten)]
    member: MemberRef,
    /// The lease ID or slug (instead of --id).
    #[arg(value_name = "ID|SLUG")]
    lease: Option<String>,
}

/// `ssh`: prints the command that logs in to an SSH-lease member; like
/// Crabbox's, it does not run it (`$(crabbox ssh --id api)` does).
pub(super) fn ssh(args: &SshArgs) -> ExitCode {
    let found = match found(
        &args.member,
        args.lease.as_deref(),
        "crabbox ssh [flags] <lease-id-or-slug>",
    ) {
        Ok(f) => f,
        Err(code) => return code,
    };
    match ssh_of(&found) {
        Some(target) => {
            println!("{}", ssh_command_line(&target));
            ExitCode::SUCCESS
        }
        None => {
            anstream::eprintln!(
                "error: provider={} does not support ssh: {} ({}) has no SSH login\n  help: run commands with `crabbox run --id {} -- CMD`",
                found.lease.provider,
                found.lease.slug(),
                found.lease.id,
                found.lease.id
            );
            exit::code(USAGE)
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct InspectArgs {
    #[command(flatten)]
    member: MemberRef,
    /// The lease ID or slug (instead of --id).
    #[arg(value_name = "ID|SLUG")]
    lease: Option<String>,
    /// Crabbox's status view as JSON.
    #[arg(long)]
    pub(super) json: bool,
}

/// `inspect`: Crabbox's `key=value` lines (inspect.go:39), then one
/// `label.<key>=<value>` line per label; `--json` prints the status view.
pub(super) fn inspect(args: &InspectArgs) -> ExitCode {
    let found = match found(
        &args.member,
        args.lease.as_deref(),
        "crabbox inspect --id <lease-id-or-slug>",
    ) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let v = StatusView::of(&found.lease, ssh_of(&found).as_ref());
    if args.json {
        super::report::printed_document();
        println!("{}", serde_json::to_string(&v).expect("JSON"));
        return ExitCode::SUCCESS;
    }
    println!(
        "id={}\nslug={}\nprovider={}\ntarget={}\nwindows_mode=-\nstate={}\nserver={}\nhost={}\nnetwork={}\nssh={} -p {} {}@{}\nssh_fallback_ports=-\nidle_for={}\nidle_timeout={}\nlast_touched={}\nexpires={}",
        v.id,
        blank(&v.slug, "-"),
        v.provider,
        v.target_os,
        v.state,
        v.server_id,
        v.host,
        v.network,
        v.ssh_key,
        v.ssh_port,
        v.ssh_user,
        v.ssh_host,
        blank(&v.idle_for, "-"),
        blank(&v.idle_timeout, "-"),
        blank(&v.last_touched_at, "-"),
        blank(&v.expires_at, "-"),
    );
    for (k, value) in &v.labels {
        println!("label.{k}={value}");
    }
    ExitCode::SUCCESS
}

#[derive(Debug, Args)]
pub(super) struct HeartbeatArgs {
    #[command(flatten)]
    member: MemberRef,
    /// The lease ID or slug (instead of --id).
    #[arg(value_name = "ID|SLUG")]
    lease: Option<String>,
    /// Replace the lease's idle timeout (must be positive).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    idle_timeout: Option<Duration>,
    /// JSON: Crabbox's {id, slug, provider, state, lastTouchedAt, idleTimeout, expiresAt}.
    #[arg(long)]
    pub(super) json: bool,
}

/// Crabbox's `leaseHeartbeatView` (heartbeat.go:12-20), keys in its order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HeartbeatView<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    slug: &'a str,
    provider: &'a str,
    state: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    last_touched_at: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    idle_timeout: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    expires_at: &'a str,
}

/// The default idle timeout (Crabbox: config.go:2982).
const DEFAULT_IDLE: Duration = Duration::from_secs(30 * 60);

/// The labels after a touch at `now` (Unix seconds), as Crabbox's
/// touch computes them (provider_labels.go:71-121): `last_touched_at`
/// now, the idle timeout replaced when given, and
/// `expires_at = min(now + idle, created_at + ttl)` (the ttl term only
/// when both are known).
fn touched(lease: &Lease, now: u64, idle_override: Option<Duration>) -> Labels {
    let mut l = lease.labels.clone();
    let idle = idle_override
        .or_else(|| idle_timeout(lease))
        .unwrap_or(DEFAULT_IDLE);
    labels::set(&mut l, labels::LAST_TOUCHED_AT, now);
    if idle_override.is_some() {
        labels::set(&mut l, labels::IDLE_TIMEOUT_SECS, idle.as_secs());
        if l.contains_key(labels::IDLE_TIMEOUT) {
            labels::set(&mut l, labels::IDLE_TIMEOUT, idle.as_secs());
        }
    }
    let by_idle = now + idle.as_secs();
    let created = lease
        .label(labels::CREATED_AT)
        .and_then(|v| v.parse::<u64>().ok());
    let ttl = labels::secs(&lease.labels, labels::TTL_SECS).filter(|t| !t.is_zero());
    let expires = match (created, ttl) {
        (Some(c), Some(t)) => by_idle.min(c + t.as_secs()),
        _ => by_idle,
    };
    labels::set(&mut l, labels::EXPIRES_AT, expires);
    l
}

/// `heartbeat`: touches the lease (Crabbox: heartbeat.go:26-180) and
/// prints `heartbeat lease=… slug=… provider=… state=… idle_timeout=…
/// last_touched=… expires=…` (heartbeat.go:188). A lease in a terminal
/// state is exit 5, as in Crabbox.
pub(super) fn heartbeat(args: &HeartbeatArgs) -> ExitCode {
    if args.idle_timeout.is_some_and(|d| d.is_zero()) {
        super::report::error("usage", "idle timeout must be positive", None);
        return exit::code(USAGE);
    }
    let found = match found(
        &args.member,
        args.lease.as_deref(),
        "crabbox heartbeat --id <lease-id-or-slug> [--provider <provider>] [--idle-timeout <duration>] [--json]",
    ) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let mut lease = found.lease.clone();
    if terminal(lease.state()) {
        super::report::error(
            "terminal-state",
            &format!("lease {} is in terminal state {}", lease.id, lease.state()),
            None,
        );
        return exit::code(TIMEOUT);
    }
    let provider = match found.registry.get(lease.provider) {
        Ok(p) => p,
        Err(e) => return exit::provider_error("", &e),
    };
    let labels = touched(&lease, labels::now_secs(), args.idle_timeout);
    if let Err(e) = found.rt.block_on(provider.relabel(&lease, &labels)) {
        return exit::provider_error(&format!("touching {}: ", lease.id), &e);
    }
    lease.labels = labels;
    let idle = idle_timeout(&lease).map(go_duration).unwrap_or_default();
    let last = label_time(&lease, "last_touched_at");
    let expires = label_time(&lease, labels::EXPIRES_AT);
    if args.json {
        let v = HeartbeatView {
            id: &lease.id,
            slug: lease.crabbox_slug(),
            provider: lease.provider.as_str(),
            state: lease.state(),
            last_touched_at: &last,
            idle_timeout: &idle,
            expires_at: &expires,
        };
        super::report::printed_document();
        println!("{}", serde_json::to_string(&v).expect("JSON"));
    } else {
        println!(
            "heartbeat lease={} slug={} provider={} state={} idle_timeout={} last_touched={} expires={}",
            lease.id,
            blank(lease.crabbox_slug(), "-"),
            lease.provider,
            lease.state(),
            blank(&idle, "-"),
            blank(&last, "-"),
            blank(&expires, "-"),
        );
    }
    ExitCode::SUCCESS
}
