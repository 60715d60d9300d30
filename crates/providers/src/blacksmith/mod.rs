//! The `blacksmith-testbox` provider (alias `blacksmith`): Blacksmith
//! Testboxes, driven through the authenticated `blacksmith` CLI, which
//! holds its own login (no credentials pass through crabbox).
//!
//! - **Invocations** are Crabbox's ([`cli`]): `blacksmith [--org ORG]
//!   testbox warmup|run|list|stop …`, run from the pond's repository root
//!   (the CLI syncs that checkout itself before every `run`).
//! - **Claims**: Testboxes carry no labels; the lease lives in its claim.
//!   The executor writes a pending claim (a provisional `cbx_` ID) before
//!   `create`; `create` records the organization there, then warms up. The
//!   ID is the `tbx_…` token anywhere in warmup's output; the claim is then
//!   re-keyed to it (the `tbx_` claim written before the provisional one is
//!   removed), so Crabbox's `--id tbx_…` finds it.
//! - **The key**: each Testbox gets a generated ed25519 key, kept where
//!   Crabbox keeps it (`<user config>/crabbox/testboxes/<tbx id>/id_ed25519`);
//!   warmup gets its public half, `run` its path.
//! - **Failures**: a warmup that failed but printed an ID has that Testbox
//!   stopped; so has one whose later steps (readiness, claim) failed. The
//!   CLI's own text is the error. Only reads and `stop` are retried, and
//!   only when the CLI says the failure was transient.
//! - **Commands** run as `testbox run --id … "<one shell string>"`. The CLI
//!   forwards no environment, so as Crabbox this refuses env forwarding:
//!   only the pond's own `CRABBOX_*` variables (names and addresses, never
//!   secrets) are exported at the head of the command string. The sync
//!   guard kills a run whose sync started (`Syncing…`) but did not report
//!   its end within the limit (5 min, `CRABBOX_BLACKSMITH_SYNC_TIMEOUT_MS`),
//!   which then exits 124 as Crabbox's does.
//! - **Discovery** is one `testbox list` per organization joined with this
//!   pond's claims by ID; a listing that fails fails the plan.
//! - **Release** is `testbox stop --id`, then the key is removed.

pub mod cli;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::time::Instant;

use crate::claim_backed::{self, extra_str, pending_claim, pond_claims};
use crate::registry::Descriptor;
use crate::ssh_lease::keys::{openssh_ed25519, write_lease_key};
use crate::{CreateRequest, Provider};
use crabbox_core::duration;
use crabbox_core::labels::{self, Labels};
use crabbox_core::lease::{Endpoint, Lease};
use crabbox_core::provider::{OutputSink, ProviderError, ProviderName, Stream};
use crabbox_exec::output::{Collect, NullSink, exit_code, finish_pumps, pump_lines};
use crabbox_exec::remote_shell::{
    bash_tcp_probe_script, checked_text, http_probe_script, probe_command_line, probe_host, quote,
};
use crabbox_exec::session::{ExecRequest, Session};
use crabbox_spec::desired::{DesiredMember, Probe};
use crabbox_spec::providers::BlacksmithTestboxBlock;
use crabbox_state::claims::{Claim, ClaimStore};

use cli::{Row, SyncTracker, Warmup};

/// The CLI, found on `PATH`.
pub const DEFAULT_CLI: &str = "blacksmith";
/// The provider's name in messages, as Crabbox prints it.
const NAME: &str = "blacksmith-testbox";
/// Crabbox's refusal of env forwarding, word for word.
pub const ENV_REFUSAL: &str = "env forwarding is unsupported for provider=blacksmith-testbox; configure secrets in the provider workflow or use an SSH-backed provider";
/// The exit status of a run the sync guard killed.
pub const SYNC_STALLED_EXIT: i32 = 124;

/// Claim field: the organization the Testbox lives in.
const CLAIM_ORG: &str = "blacksmithOrg";
/// Claim field: `--debug` on its runs.
const CLAIM_DEBUG: &str = "blacksmithDebug";
/// The key's file name in its Testbox directory.
const KEY_FILE: &str = "id_ed25519";

/// Time between `list` polls while a Testbox warms up (Crabbox's 5 s).
const DEFAULT_READY_POLL: Duration = Duration::from_secs(5);
/// How long a Testbox may take to be ready.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// `list`, `stop`.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// `warmup` (it queues a workflow run).
const WARMUP_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// A probe command that runs longer counts as not ready.
const PROBE_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// After SIGTERM to the CLI, how long before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// After the CLI exits, how long to keep reading output.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// How much of the CLI's output goes into a message.
const ERROR_TEXT_MAX: usize = 4096;

/// The `blacksmith-testbox` adapter in the registry's table.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: ProviderName::BlacksmithTestbox,
    build: |dir, claims| {
        Some(
            Arc::new(BlacksmithProvider::from_env(dir).with_claims(claims.clone()))
                as Arc<dyn Provider>,
        )
    },
    credentials: None,
    help: "  CRABBOX_BLACKSMITH_SYNC_TIMEOUT_MS
                              how long a `blacksmith-testbox` run may sync before it is killed
                              (exit 124; 0 disables the guard; default 300000); the `blacksmith`
                              CLI on PATH holds its own login",
    transport_refusal: Some(
        "Blacksmith Testbox owns the command transport and syncs the checkout itself",
    ),
};

/// The `blacksmith-testbox` provider.
#[derive(Debug)]
pub struct BlacksmithProvider {
    cli: String,
    claims: ClaimStore,
    /// Crabbox's per-lease key directories.
    testboxes: PathBuf,
    sync_timeout: Option<Duration>,
    /// Extra variables for every CLI invocation (tests point the fake at its state).
    cli_env: Vec<(String, String)>,
    ready_poll: Duration,
    ready_timeout: Duration,
}

/// One Testbox crabbox owns, as its claim describes it.
#[derive(Debug, Clone)]
struct Target {
    id: String,
    org: Option<String>,
    debug: bool,
    /// Where the CLI runs (the repository it syncs).
    repo_root: Option<PathBuf>,
}

impl BlacksmithProvider {
    /// The provider with the sync guard from the environment and keys where
    /// Crabbox keeps them (beside the state without a user config directory).
    #[must_use]
    pub fn from_env(state_dir: &Path) -> Self {
        Self {
            cli: DEFAULT_CLI.to_owned(),
            claims: ClaimStore::local(state_dir),
            testboxes: crabbox_spec::user_config::user_config_dir().map_or_else(
                || state_dir.join("blacksmith").join("testboxes"),
                |dir| dir.join("crabbox").join("testboxes"),
            ),
            sync_timeout: cli::sync_timeout(|k| std::env::var(k).ok()),
            cli_env: Vec::new(),
            ready_poll: DEFAULT_READY_POLL,
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }

    /// The same provider keeping its leases in `claims`.
    #[must_use]
    pub fn with_claims(self, claims: ClaimStore) -> Self {
        Self { claims, ..self }
    }

    /// Runs `cli` instead of `blacksmith` from `PATH`.
    #[must_use]
    pub fn with_cli(self, cli: &str) -> Self {
        Self {
            cli: cli.to_owned(),
            ..self
        }
    }

    /// Keeps the per-Testbox keys under `dir`.
    #[must_use]
    pub fn with_testboxes(self, dir: &Path) -> Self {
        Self {
            testboxes: dir.to_owned(),
            ..self
        }
    }

    /// The sync guard's limit (`None`: no guard).
    #[must_use]
    pub fn with_sync_timeout(self, limit: Option<Duration>) -> Self {
        Self {
            sync_timeout: limit,
            ..self
        }
    }

    /// Adds a variable to every CLI invocation's environment.
    #[must_use]
    pub fn with_cli_env(mut self, name: &str, value: &str) -> Self {
        self.cli_env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Polls a warming Testbox every `interval` for at most `timeout`.
    #[must_use]
    pub fn with_ready_polling(self, interval: Duration, timeout: Duration) -> Self {
        Self {
            ready_poll: interval,
            ready_timeout: timeout,
            ..self
        }
    }

    /// `<testboxes>/<id>/id_ed25519`.
    #[must_use]
    pub fn key_path(&self, id: &str) -> PathBuf {
        self.testboxes.join(id).join(KEY_FILE)
    }

    // ---- claims ------------------------------------------------------------

    async fn target(&self, lease: &Lease) -> Result<Target, ProviderError> {
        let claim = self
            .claims
            .load(&lease.id)
            .await
            .map_err(ProviderError::state)?
            .ok_or_else(|| ProviderError::NotFound(format!("claim of {}", lease.id)))?;
        if claim.provider != NAME {
            return Err(ProviderError::Failed(format!(
                "claim {} belongs to provider `{}`, not {NAME}",
                lease.id, claim.provider
            )));
        }
        if !cli::is_id(&claim.cloud_id) {
            return Err(ProviderError::NotFound(format!(
                "Blacksmith Testbox of {} (its claim records no tbx_ ID: warmup never finished)",
                lease.id
            )));
        }
        if cli::is_id(&lease.id) && lease.id != claim.cloud_id {
            return Err(ProviderError::Failed(format!(
                "lease {} but its claim records {}; refusing to touch it",
                lease.id, claim.cloud_id
            )));
        }
        Ok(target_of(&claim))
    }

    async fn write_claim(&self, claim: &Claim) -> Result<Claim, ProviderError> {
        self.claims
            .write(claim)
            .await
            .map_err(|e| ProviderError::Failed(format!("writing claim {}: {e}", claim.lease_id)))
    }

    /// Moves a warmed-up lease to the claim named by its Testbox ID: the new
    /// claim first, then the provisional one removed (a crash between them
    /// leaves a provisional claim `list` hides behind the `tbx_` one).
    async fn rekey(&self, provisional: &Claim) -> Result<Claim, ProviderError> {
        let mut claim = provisional.clone();
        claim.lease_id.clone_from(&provisional.cloud_id);
        claim
            .labels
            .insert(labels::LEASE.into(), claim.lease_id.as_str().into());
        let claim = self.write_claim(&claim).await?;
        self.claims
            .remove(&provisional.lease_id)
            .await
            .map_err(ProviderError::state)?;
        Ok(claim)
    }

    // ---- running the CLI ---------------------------------------------------

    fn command(&self, args: &[String], dir: Option<&Path>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.cli);
        cmd.args(args);
        for (name, value) in &self.cli_env {
            cmd.env(name, value);
        }
        if let Some(dir) = dir.filter(|d| d.is_dir()) {
            cmd.current_dir(dir);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }

    /// Runs the CLI, its output line by line to `sink`; killed after
    /// `timeout`, or when a sync it reported did not finish in time.
    async fn run(
        &self,
        args: &[String],
        dir: Option<&Path>,
        sink: Arc<dyn OutputSink>,
        timeout: Option<Duration>,
        guard: Option<Duration>,
    ) -> Result<Ran, ProviderError> {
        let mut child = self.command(args, dir).spawn().map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) {
                ProviderError::Config {
                    message: format!("cannot run the Blacksmith CLI `{}`: {e}", self.cli),
                    hint: "install the `blacksmith` CLI and log in (`blacksmith auth login`)"
                        .to_owned(),
                }
            } else {
                ProviderError::Failed(format!("starting `{}`: {e}", self.cli))
            }
        })?;
        let pid = child.id().and_then(|id| i32::try_from(id).ok());
        let tracker = SyncTracker::default();
        let pumps = [
            child
                .stdout
                .take()
                .map(|r| tokio::spawn(pump(r, Stream::Stdout, sink.clone(), tracker.clone()))),
            child
                .stderr
                .take()
                .map(|r| tokio::spawn(pump(r, Stream::Stderr, sink.clone(), tracker.clone()))),
        ];
        let deadline = timeout.map(|t| Instant::now() + t);
        let tick = guard.map_or(Duration::from_secs(1), |g| g.min(Duration::from_secs(1)));
        let stopped = loop {
            tokio::select! {
                status = child.wait() => {
                    let status = status.map_err(|e| {
                        ProviderError::Failed(format!("waiting for `{}`: {e}", self.cli))
                    })?;
                    finish_pumps(pumps, OUTPUT_GRACE).await;
                    return Ok(Ran::Exited(exit_code(status)));
                }
                () = tokio::time::sleep(tick) => {
                    if guard.is_some_and(|g| tracker.stalled(g)) {
                        break Ran::SyncStalled;
                    }
                    if let (Some(deadline), Some(limit)) = (deadline, timeout)
                        && Instant::now() >= deadline
                    {
                        break Ran::TimedOut(limit);
                    }
                }
            }
        };
        if let Some(pid) = pid {
            // The CLI leads its own group and is not reaped yet.
            kill_group(pid, libc::SIGTERM);
            if tokio::time::timeout(KILL_GRACE, child.wait())
                .await
                .is_err()
            {
                kill_group(pid, libc::SIGKILL);
                let _ = child.wait().await;
            }
        }
        finish_pumps(pumps, OUTPUT_GRACE).await;
        if let (Ran::SyncStalled, Some(limit)) = (&stopped, guard) {
            sink.line(
                Stream::Stderr,
                &format!(
                    "Blacksmith Testbox sync did not print a completion marker for {}; terminating local runner. Rerun with CRABBOX_BLACKSMITH_SYNC_TIMEOUT_MS=0 to disable this guard.",
                    duration::format(limit)
                ),
            );
        }
        Ok(stopped)
    }

    /// Runs the CLI and collects its output.
    async fn capture(&self, args: &[String], timeout: Duration) -> Result<Captured, ProviderError> {
        let sink = Arc::new(Collect::default());
        let ran = self
            .run(args, None, sink.clone(), Some(timeout), None)
            .await?;
        let (stdout, stderr) = sink.take();
        Ok(Captured {
            ran,
            stdout,
            stderr,
        })
    }

    /// `testbox list` in `org`: its rows.
    async fn list_rows(&self, org: Option<&str>) -> Result<Vec<Row>, ProviderError> {
        let captured = self.capture(&cli::list_args(org), CONTROL_TIMEOUT).await?;
        if captured.ran != Ran::Exited(0) {
            return Err(captured.error("testbox list", Retry::IfTransient));
        }
        // Crabbox reads stdout and stderr together.
        let mut lines = captured.stdout;
        lines.extend(captured.stderr);
        Ok(cli::parse_list(&lines))
    }

    /// `testbox stop --id`; `Ok(false)` when the CLI says it is gone.
    async fn stop(&self, org: Option<&str>, id: &str) -> Result<bool, ProviderError> {
        let captured = self
            .capture(&cli::stop_args(org, id), CONTROL_TIMEOUT)
            .await?;
        if captured.ran == Ran::Exited(0) {
            Ok(true)
        } else if captured.is_not_found() {
            Ok(false)
        } else {
            Err(captured.error("testbox stop", Retry::IfTransient))
        }
    }

    /// Waits for `list` to show the Testbox ready or running.
    async fn wait_ready(&self, org: Option<&str>, id: &str) -> Result<(), ProviderError> {
        let deadline = Instant::now() + self.ready_timeout;
        let mut last = String::new();
        loop {
            match self.list_rows(org).await {
                Ok(rows) => match rows.iter().find(|r| r.id == id) {
                    Some(row) if row.is_ready() => return Ok(()),
                    Some(row) if row.is_done() => {
                        return Err(ProviderError::Failed(format!(
                            "Blacksmith Testbox {id} is `{}` instead of ready",
                            row.status
                        )));
                    }
                    Some(row) => last.clone_from(&row.status),
                    None => last = "not listed".to_owned(),
                },
                Err(e) if e.is_retryable() => last = e.to_string(),
                Err(e) => return Err(e),
            }
            if Instant::now() + self.ready_poll >= deadline {
                let stalled = if last.eq_ignore_ascii_case("queued") {
                    "; Blacksmith queue may be stalled, so stop queued ids you created or use another provider"
                } else {
                    ""
                };
                return Err(ProviderError::Failed(format!(
                    "timed out waiting for {id} to become ready (last state {last}{stalled})"
                )));
            }
            tokio::time::sleep(self.ready_poll).await;
        }
    }

    /// The lease key, written under the provisional ID until warmup names the Testbox.
    fn new_key(&self, provisional: &str) -> Result<String, ProviderError> {
        let key = openssh_ed25519::generate(&format!("crabbox {provisional}"))?;
        write_lease_key(&self.key_path(provisional), &key).map_err(ProviderError::Failed)?;
        Ok(key.public)
    }

    /// Moves the key directory of `from` to `to`.
    fn move_key(&self, from: &str, to: &str) -> Result<(), ProviderError> {
        let (from, to) = (self.testboxes.join(from), self.testboxes.join(to));
        let _ = std::fs::remove_dir_all(&to);
        std::fs::rename(&from, &to).map_err(|e| {
            ProviderError::Failed(format!(
                "storing the Blacksmith key {} as {}: {e}",
                from.display(),
                to.display()
            ))
        })
    }

    fn remove_key(&self, id: &str) {
        let _ = std::fs::remove_dir_all(self.testboxes.join(id));
    }

    /// Everything after warmup printed the ID: the key moves to it, the
    /// provisional claim records it, the Testbox gets ready, and the claim
    /// is re-keyed to it (so a failure before leaves only the provisional
    /// claim, which the executor removes).
    async fn finish_create(
        &self,
        provisional: &Claim,
        org: Option<&str>,
        id: &str,
    ) -> Result<Claim, ProviderError> {
        self.move_key(&provisional.lease_id, id)?;
        let mut claim = provisional.clone();
        claim.cloud_id = id.to_owned();
        let claim = self.write_claim(&claim).await?;
        self.wait_ready(org, id).await?;
        self.rekey(&claim).await
    }
}

/// How a CLI invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    Exited(i32),
    TimedOut(Duration),
    /// Killed by the sync guard.
    SyncStalled,
}

/// Which failures may be retried.
#[derive(Debug, Clone, Copy)]
enum Retry {
    /// Only an explicit refusal (a rate limit): `warmup`, which may
    /// otherwise have queued a Testbox.
    IfRefused,
    /// Timeouts, 5xx, rate limits: `list` and `stop`.
    IfTransient,
}

/// A finished invocation and its output.
struct Captured {
    ran: Ran,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

impl Captured {
    /// Both streams, as Crabbox reads them.
    fn all(&self) -> String {
        let mut text = self.stdout.join("\n");
        if !self.stderr.is_empty() {
            text.push('\n');
            text.push_str(&self.stderr.join("\n"));
        }
        text
    }

    fn text(&self) -> String {
        truncate(self.all().trim(), ERROR_TEXT_MAX).to_owned()
    }

    fn is_not_found(&self) -> bool {
        let text = self.all().to_ascii_lowercase();
        text.contains("not found") || text.contains("no such testbox") || text.contains("404")
    }

    /// The error the failed invocation `call` describes: its own text.
    fn error(&self, call: &str, retry: Retry) -> ProviderError {
        let how = match self.ran {
            Ran::Exited(code) => format!("exited {code}"),
            Ran::TimedOut(limit) => format!("timed out after {}", duration::format(limit)),
            Ran::SyncStalled => format!("was killed ({SYNC_STALLED_EXIT})"),
        };
        let text = self.text();
        let message = if text.is_empty() {
            format!("blacksmith {call} {how}")
        } else {
            format!("blacksmith {call} {how}: {text}")
        };
        let lower = text.to_ascii_lowercase();
        let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
        if has(&[
            "not logged in",
            "unauthorized",
            "unauthenticated",
            "auth login",
            "forbidden",
            "401",
            "403",
        ]) {
            return ProviderError::Credentials {
                message,
                hint: "log the `blacksmith` CLI in (`blacksmith auth login`) for the organization in `blacksmith-testbox.org`".to_owned(),
            };
        }
        let refused = has(&["429", "rate limit", "too many requests"]);
        let transient = refused
            || matches!(self.ran, Ran::TimedOut(_))
            || has(&[
                "502",
                "503",
                "504",
                "temporarily unavailable",
                "service unavailable",
                "connection reset",
                "connection refused",
                "try again",
            ]);
        let retryable = match retry {
            Retry::IfRefused => refused,
            Retry::IfTransient => transient,
        };
        if retryable {
            ProviderError::Retryable {
                message,
                retry_after: None,
            }
        } else {
            ProviderError::Failed(message)
        }
    }
}

#[async_trait]
impl Provider for BlacksmithProvider {
    fn name(&self) -> ProviderName {
        ProviderName::BlacksmithTestbox
    }

    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn Session + 'a> {
        Box::new(BlacksmithSession {
            provider: self,
            lease,
        })
    }

    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError> {
        let claims = pond_claims(&self.claims, ProviderName::BlacksmithTestbox, pond, |c| {
            cli::is_id(&c.cloud_id)
        })
        .await?;
        // A provisional claim left by a create that crashed after re-keying
        // is not a second lease of the same Testbox.
        let rekeyed: BTreeSet<String> = claims
            .iter()
            .filter(|c| c.lease_id == c.cloud_id)
            .map(|c| c.cloud_id.clone())
            .collect();
        let mut by_org: BTreeMap<Option<String>, Vec<Claim>> = BTreeMap::new();
        for claim in claims
            .into_iter()
            .filter(|c| c.lease_id == c.cloud_id || !rekeyed.contains(&c.cloud_id))
        {
            by_org
                .entry(extra_str(&claim, CLAIM_ORG).map(str::to_owned))
                .or_default()
                .push(claim);
        }
        let mut leases = Vec::new();
        for (org, claims) in by_org {
            let live: BTreeSet<String> = self
                .list_rows(org.as_deref())
                .await?
                .into_iter()
                .filter(|r| !r.is_done())
                .map(|r| r.id)
                .collect();
            leases.extend(
                claims
                    .iter()
                    .filter(|c| live.contains(&c.cloud_id))
                    .map(lease_from_claim),
            );
        }
        leases.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(leases)
    }

    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError> {
        let warmup = warmup_of(&request.member)?;
        let debug = request
            .member
            .block::<BlacksmithTestboxBlock>()
            .ok()
            .and_then(|b| b.debug)
            .unwrap_or(false);
        let mut claim = pending_claim(&self.claims, &request.lease_id).await?;
        if let Some(org) = &warmup.org {
            claim
                .extra
                .insert(CLAIM_ORG.to_owned(), Value::String(org.clone()));
        }
        if debug {
            claim
                .extra
                .insert(CLAIM_DEBUG.to_owned(), Value::Bool(true));
        }
        claim.labels.clone_from(&request.labels);
        let claim = self.write_claim(&claim).await?;
        let public = self.new_key(&request.lease_id)?;
        let captured = match self
            .capture(&cli::warmup_args(&warmup, &public), WARMUP_TIMEOUT)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                self.remove_key(&request.lease_id);
                return Err(e);
            }
        };
        let printed = cli::find_id(&captured.all()).map(str::to_owned);
        let org = warmup.org.as_deref();
        if captured.ran != Ran::Exited(0) {
            self.remove_key(&request.lease_id);
            let err = captured.error("testbox warmup", Retry::IfRefused);
            let Some(id) = printed else {
                return Err(err);
            };
            // It printed an ID: that Testbox may exist, and nothing else
            // would ever stop it.
            let cleanup = match self.stop(org, &id).await {
                Ok(_) => format!("Testbox {id} stopped"),
                Err(s) => format!("stopping Testbox {id} also failed: {s}"),
            };
            return Err(with_cleanup(err, &cleanup));
        }
        let Some(id) = printed else {
            self.remove_key(&request.lease_id);
            return Err(ProviderError::Failed(format!(
                "blacksmith testbox warmup did not print a tbx_ id{}",
                match captured.text() {
                    t if t.is_empty() => String::new(),
                    t => format!(": {t}"),
                }
            )));
        };
        match self.finish_create(&claim, org, &id).await {
            Ok(claim) => Ok(lease_from_claim(&claim)),
            Err(e) => {
                let cleanup = match self.stop(org, &id).await {
                    Ok(_) => format!("Testbox {id} stopped"),
                    Err(s) => format!("stopping Testbox {id} also failed: {s}"),
                };
                self.remove_key(&request.lease_id);
                self.remove_key(&id);
                Err(with_cleanup(e, &cleanup))
            }
        }
    }

    async fn relabel(&self, lease: &Lease, labels: &Labels) -> Result<(), ProviderError> {
        let mut claim = self
            .claims
            .load(&lease.id)
            .await
            .map_err(ProviderError::state)?
            .ok_or_else(|| ProviderError::NotFound(lease.id.clone()))?;
        claim.labels.clone_from(labels);
        self.write_claim(&claim).await.map(drop)
    }

    async fn release(&self, lease: &Lease) -> Result<(), ProviderError> {
        let target = self.target(lease).await?;
        let gone = || ProviderError::NotFound(format!("Blacksmith Testbox {}", target.id));
        let org = target.org.as_deref();
        let listed = self
            .list_rows(org)
            .await?
            .into_iter()
            .any(|r| r.id == target.id && !r.is_done());
        let stopped = listed && self.stop(org, &target.id).await?;
        self.remove_key(&target.id);
        if stopped { Ok(()) } else { Err(gone()) }
    }
}

/// A lease of this provider: commands go through `testbox run`.
struct BlacksmithSession<'a> {
    provider: &'a BlacksmithProvider,
    lease: &'a Lease,
}

impl BlacksmithSession<'_> {
    /// Runs one shell string on the Testbox through `testbox run`.
    async fn run(
        &self,
        target: &Target,
        script: &str,
        sink: Arc<dyn OutputSink>,
        timeout: Option<Duration>,
    ) -> Result<Ran, ProviderError> {
        let key = self.provider.key_path(&target.id);
        let key = key.exists().then(|| key.display().to_string());
        let args = cli::run_args(
            target.org.as_deref(),
            &target.id,
            key.as_deref(),
            target.debug,
            checked_text("command", script)?,
        );
        self.provider
            .run(
                &args,
                target.repo_root.as_deref(),
                sink,
                timeout,
                self.provider.sync_timeout,
            )
            .await
    }
}

#[async_trait]
impl Session for BlacksmithSession<'_> {
    /// Nothing to send: `testbox run` syncs the checkout it runs from (the
    /// pond's repository root) itself, before every command.
    async fn upload(&self, _archive: &Path) -> Result<(), ProviderError> {
        self.provider.target(self.lease).await.map(drop)
    }

    async fn exec(
        &self,
        request: &ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ProviderError> {
        let target = self.provider.target(self.lease).await?;
        let script = with_pond_env(&request.env, checked_text("command", &request.command)?)?;
        match self.run(&target, &script, sink, request.timeout).await? {
            Ran::Exited(code) => Ok(code),
            Ran::SyncStalled => Ok(SYNC_STALLED_EXIT),
            Ran::TimedOut(limit) => Err(ProviderError::Failed(format!(
                "command timed out after {}",
                duration::format(limit)
            ))),
        }
    }

    async fn start_background(
        &self,
        _request: &ExecRequest,
        name: &str,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Config {
            message: format!(
                "background service `{name}`: provider {NAME} runs each command to completion through its CLI"
            ),
            hint: "run it to completion, or put the service on a provider with background support"
                .to_owned(),
        })
    }

    /// Nothing to stop: no service is ever started.
    async fn stop_background(&self) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn probe(
        &self,
        probe: &Probe,
        env: &BTreeMap<String, String>,
    ) -> Result<bool, ProviderError> {
        let target = self.provider.target(self.lease).await?;
        let script = match probe {
            Probe::Command(command) => with_pond_env(env, &probe_command_line(command)?)?,
            Probe::Tcp { host, port } => bash_tcp_probe_script(probe_host(host.as_deref())?, *port),
            Probe::Http(url) => http_probe_script(checked_text("probe URL", url)?, "testbox"),
        };
        let ran = self
            .run(
                &target,
                &script,
                Arc::new(NullSink),
                Some(PROBE_COMMAND_TIMEOUT),
            )
            .await?;
        Ok(ran == Ran::Exited(0))
    }
}

// ---- helpers ----------------------------------------------------------------

/// The CLI's warmup flags from a member's block (checked by the block's own
/// rules, the ones `validate` applies); the idle timeout defaults to the
/// member's.
fn warmup_of(member: &DesiredMember) -> Result<Warmup, ProviderError> {
    let block: BlacksmithTestboxBlock = crate::block_of(member)?;
    if let Some(problem) = block.problems().into_iter().next() {
        return Err(ProviderError::Config {
            message: format!("member `{}`: {}", member.slug, problem.message),
            hint: problem.hint,
        });
    }
    let set = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let idle = block
        .idle_timeout
        .as_deref()
        .and_then(duration::parse)
        .unwrap_or(member.idle_timeout);
    Ok(Warmup {
        org: set(&block.org),
        workflow: set(&block.workflow).unwrap_or_default(),
        job: set(&block.job),
        git_ref: set(&block.git_ref),
        idle_minutes: cli::minutes_ceil(idle),
    })
}

/// `script` after `export` lines of the pond's own variables (`CRABBOX_*`:
/// the pond, the slug, the peers' addresses, none of them secret). Any
/// other variable would be env forwarding, which the CLI cannot do safely:
/// refused with Crabbox's reason.
fn with_pond_env(env: &BTreeMap<String, String>, script: &str) -> Result<String, ProviderError> {
    let forwarded: Vec<&str> = env
        .keys()
        .filter(|k| !k.starts_with("CRABBOX_"))
        .map(String::as_str)
        .collect();
    if !forwarded.is_empty() {
        return Err(ProviderError::Config {
            message: format!("{ENV_REFUSAL} (asked for {})", forwarded.join(", ")),
            hint: "remove `env`/`pass_env` from this member; Blacksmith Testboxes get secrets from their workflow".to_owned(),
        });
    }
    let mut out = String::new();
    for (k, v) in env {
        crabbox_exec::remote_shell::check_env_name(k)?;
        out.push_str(&format!(
            "export {k}={}\n",
            quote(checked_text("env value", v)?)
        ));
    }
    out.push_str(script);
    Ok(out)
}

fn target_of(claim: &Claim) -> Target {
    Target {
        id: claim.cloud_id.clone(),
        org: extra_str(claim, CLAIM_ORG).map(str::to_owned),
        debug: claim.extra.get(CLAIM_DEBUG).and_then(Value::as_bool) == Some(true),
        repo_root: Some(claim.repo_root.clone())
            .filter(|r| !r.is_empty())
            .map(PathBuf::from),
    }
}

fn lease_from_claim(claim: &Claim) -> Lease {
    claim_backed::lease_from_claim(claim, ProviderName::BlacksmithTestbox, Endpoint::default())
}

/// `e` with what its cleanup did appended.
fn with_cleanup(e: ProviderError, cleanup: &str) -> ProviderError {
    match e {
        ProviderError::Config { message, hint } => ProviderError::Config {
            message: format!("{message} ({cleanup})"),
            hint,
        },
        ProviderError::Credentials { message, hint } => ProviderError::Credentials {
            message: format!("{message} ({cleanup})"),
            hint,
        },
        other => ProviderError::Failed(format!("{other} ({cleanup})")),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn kill_group(pgid: i32, signal: i32) {
    // SAFETY: killpg(2) only takes integers and touches no memory.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

/// Copies one pipe to the sink line by line, the sync tracker reading along.
async fn pump(
    reader: impl tokio::io::AsyncRead + Unpin,
    stream: Stream,
    sink: Arc<dyn OutputSink>,
    tracker: SyncTracker,
) {
    pump_lines(reader, |_, line| {
        tracker.observe(line);
        sink.line(stream, line);
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ponds_own_variables_are_exported() {
        let env: BTreeMap<String, String> = [
            ("CRABBOX_POND".to_owned(), "p".to_owned()),
            ("CRABBOX_SLUG".to_owned(), "it's".to_owned()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            with_pond_env(&env, "make").expect("ok"),
            "export CRABBOX_POND='p'\nexport CRABBOX_SLUG='it'\\''s'\nmake"
        );
        let mut secret = env.clone();
        secret.insert("API_TOKEN".to_owned(), "s3cret".to_owned());
        let err = with_pond_env(&secret, "make").expect_err("refused");
        assert!(err.to_string().contains(ENV_REFUSAL), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn failures_keep_the_clis_text_and_retry_only_transient_reads() {
        let captured = |code, err: &str| Captured {
            ran: Ran::Exited(code),
            stdout: vec![],
            stderr: err.lines().map(str::to_owned).collect(),
        };
        let e = captured(1, "Error: not logged in; run blacksmith auth login")
            .error("testbox list", Retry::IfTransient);
        assert!(matches!(e, ProviderError::Credentials { .. }), "{e:?}");
        let e = captured(1, "HTTP 503").error("testbox list", Retry::IfTransient);
        assert!(
            e.is_retryable() && e.to_string().contains("HTTP 503"),
            "{e}"
        );
        let e = captured(1, "HTTP 503").error("testbox warmup", Retry::IfRefused);
        assert!(!e.is_retryable(), "{e}");
        let e = captured(1, "429 rate limit").error("testbox warmup", Retry::IfRefused);
        assert!(e.is_retryable(), "{e}");
    }
}
