//! The `tensorlake` provider: Tensorlake Firecracker sandboxes, driven by
//! shelling out to the `tensorlake` CLI (`tensorlake sbx …`).
//!
//! - **Invocations** are `<cli> [--api-url U] [--organization O] [--project P]
//!   [--namespace N] sbx …`. The API key reaches the CLI only through its
//!   environment, as `TENSORLAKE_API_KEY`; it is never on a command line, and
//!   it is replaced by `<redacted>` in every message and echoed line. Inherited
//!   `TENSORLAKE_*` settings are removed from the child's environment, so the
//!   flags above are the only scope the CLI sees.
//! - **Claims**: sandboxes carry no labels, so the lease lives in its claim
//!   file. The executor writes a pending claim before `create`; `create`
//!   records there the sandbox name, the workdir and the scope (API URL,
//!   organization, project, namespace, and the member's `cliPath`) before the
//!   create call, and the sandbox ID (`cloudID`) right after it. Later calls
//!   use the claim's scope, so a sandbox is always addressed where it was made.
//! - **Discovery** is one `sbx ls -q` per scope (normally one) joined with
//!   this pond's claims by ID. IDs without a claim are never returned or
//!   touched; a claim without an ID, or whose ID is not listed, is no lease
//!   (discovery reports it as dangling).
//! - **Create** runs `sbx create` with only the options the member's block
//!   sets, waits for `sbx describe` to report a running status and creates the
//!   workdir. If anything after the sandbox exists fails, it is terminated.
//! - **Commands** run as `sbx exec -w <workdir> <id> bash -lc '<script>'`
//!   (no `--` before the argv, as Crabbox does). Environment values never go
//!   on a command line: they are written to a local 0600 profile of
//!   `export K='v'` lines, copied with `sbx cp` to `/tmp/crabbox-env-<rand>.sh`,
//!   sourced and deleted by the script before the command runs; the local
//!   file is deleted whatever happens. The CLI's exit status is the command's.
//! - **Background services** are started through exec as the SSH transport
//!   does: each the leader of its own session (`setsid`), output in
//!   `<workdir>/.crabbox/logs/<name>.log`, pid in `<workdir>/.crabbox/pids/`,
//!   every process carrying `CRABBOX_LEASE_ID`, checked before a recorded
//!   process group is signalled.
//! - **Release** terminates the sandbox; one that is gone is
//!   [`ProviderError::NotFound`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::claim_backed::{self, extra_str, pending_claim, pond_claims};
mod settings;

use crate::registry::Descriptor;
use crabbox_exec::output::{Collect, NullSink, Outcome, exit_code, finish_pumps, pump_lines};
use crabbox_exec::session::Session;
use serde_json::{Map, Value};
pub use settings::TensorlakeDefaults;
use settings::{Scope, Settings};
use tokio::io::AsyncRead;
use tokio::time::Instant;

use crate::{CreateRequest, Provider};
use crabbox_core::duration;
use crabbox_core::labels::{self, Labels};
use crabbox_core::lease::{Endpoint, Lease, TENSORLAKE_PREFIX, mint};
use crabbox_core::provider::ProviderName;
use crabbox_core::provider::{OutputSink, ProviderError, Stream};
use crabbox_exec::remote_shell::{
    ENV_LEASE_ID, ENV_WORKSPACE, EXITED_AT_ONCE, LOGS, NO_PROBE_TOOL, STATE_DIR, ServiceDirs,
    bash_tcp_probe_script, check_service_name, checked_text, early_exit, export_lines,
    http_probe_script, probe_command_line, probe_host, quote, stop_functions,
};
use crabbox_exec::session::ExecRequest;
use crabbox_fs::atomic_file;
use crabbox_spec::desired::{DesiredMember, Probe};
use crabbox_spec::providers::TensorlakeBlock;
use crabbox_state::claims::{Claim, ClaimStore};

/// The CLI when neither the block nor the environment names one.
pub const DEFAULT_CLI: &str = "tensorlake";
/// The workdir when the block names none.
pub const DEFAULT_WORKDIR: &str = TensorlakeBlock::DEFAULT_WORKDIR;
/// The key variable crabbox reads first.
const KEY_ENV: &str = "CRABBOX_TENSORLAKE_API_KEY";
/// The key variable the CLI reads (and crabbox's fallback).
const CLI_KEY_ENV: &str = "TENSORLAKE_API_KEY";
/// The API URL variable the CLI reads.
const CLI_URL_ENV: &str = "TENSORLAKE_API_URL";
/// Inherited variables removed from the CLI's environment: the scope goes on
/// its command line and the key is set explicitly.
const STRIPPED_ENV: [&str; 9] = [
    KEY_ENV,
    CLI_KEY_ENV,
    CLI_URL_ENV,
    "CRABBOX_TENSORLAKE_API_URL",
    "TENSORLAKE_ORGANIZATION_ID",
    "TENSORLAKE_PROJECT_ID",
    "INDEXIFY_NAMESPACE",
    "TENSORLAKE_PAT",
    "TENSORLAKE_GIT_TOKEN",
];
/// What replaces the API key in messages.
const REDACTED: &str = "<redacted>";

/// Claim fields (Crabbox keeps unknown fields, so these survive its writes).
const CLAIM_NAME: &str = "tensorlakeSandboxName";
const CLAIM_WORKDIR: &str = "tensorlakeWorkdir";
const CLAIM_SCOPE: &str = "tensorlakeScope";

/// Sandbox IDs: a whole stdout line of 12 to 40 lowercase letters and digits.
const ID_MIN: usize = 12;
const ID_MAX: usize = 40;
/// Sandbox names are at most this long.
const NAME_MAX: usize = 63;
/// `describe` statuses that mean the sandbox runs.
const READY_STATES: [&str; 4] = ["running", "ready", "started", "active"];
/// `describe` statuses from which a sandbox will never run.
const DEAD_STATES: [&str; 6] = [
    "terminated",
    "terminating",
    "failed",
    "error",
    "stopped",
    "deleted",
];
/// How much of the CLI's error output goes into a message.
const ERROR_TEXT_MAX: usize = 4096;

/// Time between `describe` polls while a sandbox boots.
const DEFAULT_READY_POLL: Duration = Duration::from_secs(1);
/// How long a sandbox may take to run.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// `ls`, `describe`, `terminate`.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// `create`, `cp`, unpacking, workdir creation, service start/stop.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// A probe command that runs longer counts as not ready.
const PROBE_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// After SIGTERM to a timed-out CLI, how long before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// After the CLI exits, how long to keep reading output something else may
/// still hold open.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// One sandbox crabbox owns, as its claim describes it.
#[derive(Debug, Clone)]
struct Target {
    lease_id: String,
    id: String,
    workdir: String,
    scope: Scope,
}

impl Target {
    /// The background services' `logs/` and `pids/` under `<workdir>/.crabbox/`.
    fn services(&self) -> ServiceDirs {
        ServiceDirs::under(&format!("{}/{STATE_DIR}", self.workdir))
    }

    /// Script lines exporting the lease's own variables (not secret).
    fn own_exports(&self) -> String {
        format!(
            "export {ENV_LEASE_ID}={} {ENV_WORKSPACE}={}\n",
            quote(&self.lease_id),
            quote(&self.workdir)
        )
    }
}
/// The `tensorlake` adapter in the registry's table.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: ProviderName::Tensorlake,
    build: |dir, claims| {
        TensorlakeProvider::from_env(dir)
            .map(|p| Arc::new(p.with_claims(claims.clone())) as Arc<dyn Provider>)
    },
    credentials: Some("CRABBOX_TENSORLAKE_API_KEY (or TENSORLAKE_API_KEY)"),
    help: "  CRABBOX_TENSORLAKE_API_KEY, TENSORLAKE_API_KEY
                              Tensorlake API key (enables `tensorlake`; given to the CLI in its
                              environment only); TENSORLAKE_API_URL, TENSORLAKE_ORGANIZATION_ID,
                              TENSORLAKE_PROJECT_ID, INDEXIFY_NAMESPACE pass through",
    transport_refusal: Some(
        "Tensorlake owns the command transport and does not expose Crabbox's rsync semantics",
    ),
};

/// The `tensorlake` provider.
pub struct TensorlakeProvider {
    api_key: String,
    state_dir: PathBuf,
    claims: ClaimStore,
    defaults: TensorlakeDefaults,
    /// Extra variables for every CLI invocation (tests point the fake CLI at its state).
    cli_env: Vec<(String, String)>,
    ready_poll: Duration,
    ready_timeout: Duration,
}

impl std::fmt::Debug for TensorlakeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorlakeProvider")
            .field(
                "api_key",
                &if self.api_key.is_empty() {
                    "<unset>"
                } else {
                    REDACTED
                },
            )
            .field("state_dir", &self.state_dir)
            .field("defaults", &self.defaults)
            .field(
                "cli_env",
                &self.cli_env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("ready_poll", &self.ready_poll)
            .field("ready_timeout", &self.ready_timeout)
            .finish_non_exhaustive()
    }
}

impl TensorlakeProvider {
    /// The provider configured from the environment: the API key from
    /// `CRABBOX_TENSORLAKE_API_KEY`, else `TENSORLAKE_API_KEY` (`None` when
    /// neither is set); defaults from [`TensorlakeDefaults::from_env`].
    #[must_use]
    pub fn from_env(state_dir: &Path) -> Option<Self> {
        Self::from_vars(state_dir, |name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), reading variables through `vars`.
    #[must_use]
    pub fn from_vars(state_dir: &Path, vars: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let var = |name: &str| {
            vars(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let key = var(KEY_ENV).or_else(|| var(CLI_KEY_ENV))?;
        Some(Self::new(&key, state_dir).with_defaults(TensorlakeDefaults::from_vars(&vars)))
    }

    /// A provider using `api_key`, keeping its leases in the claims under
    /// `state_dir`, with defaults from the environment. An empty key makes
    /// every call a [`ProviderError::Config`] error.
    #[must_use]
    pub fn new(api_key: &str, state_dir: &Path) -> Self {
        Self {
            api_key: api_key.trim().to_owned(),
            state_dir: state_dir.to_owned(),
            claims: ClaimStore::local(state_dir),
            defaults: TensorlakeDefaults::from_env(),
            cli_env: Vec::new(),
            ready_poll: DEFAULT_READY_POLL,
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }

    /// The same provider keeping its leases in `claims` (the command's store)
    /// instead of the claim files under its state directory.
    #[must_use]
    pub fn with_claims(self, claims: ClaimStore) -> Self {
        Self { claims, ..self }
    }

    /// Replaces the defaults used when a member's block leaves a setting out.
    #[must_use]
    pub fn with_defaults(mut self, defaults: TensorlakeDefaults) -> Self {
        self.defaults = defaults;
        self
    }

    /// Adds a variable to the environment of every CLI invocation (it
    /// cannot replace `TENSORLAKE_API_KEY`).
    #[must_use]
    pub fn with_cli_env(mut self, name: &str, value: &str) -> Self {
        self.cli_env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Polls a booting sandbox every `interval` for at most `timeout`.
    #[must_use]
    pub fn with_ready_polling(mut self, interval: Duration, timeout: Duration) -> Self {
        self.ready_poll = interval;
        self.ready_timeout = timeout;
        self
    }

    // ---- claims ----------------------------------------------------------

    /// The sandbox a lease names, from its claim: only sandboxes crabbox
    /// recorded are ever addressed.
    async fn target(&self, lease: &Lease) -> Result<Target, ProviderError> {
        let claim = self
            .claims
            .load(&lease.id)
            .await
            .map_err(ProviderError::state)?
            .ok_or_else(|| ProviderError::NotFound(format!("claim of {}", lease.id)))?;
        if claim.provider != ProviderName::Tensorlake.as_str() {
            return Err(ProviderError::Failed(format!(
                "claim {} belongs to provider `{}`, not tensorlake",
                lease.id, claim.provider
            )));
        }
        if claim.cloud_id.is_empty() {
            return Err(ProviderError::NotFound(format!(
                "tensorlake sandbox of {} (its claim records no sandbox ID: create never finished)",
                lease.id
            )));
        }
        // Crabbox addresses a `tlsbx_` lease by the ID in its name
        // (tensorlake/backend.go:358-388).
        if let Some(named) = lease.id.strip_prefix(TENSORLAKE_PREFIX)
            && named != claim.cloud_id
        {
            return Err(ProviderError::Failed(format!(
                "lease {} names sandbox {named} but its claim records {}; refusing to touch it",
                lease.id, claim.cloud_id
            )));
        }
        if !lease.cloud_id.is_empty() && lease.cloud_id != claim.cloud_id {
            return Err(ProviderError::Failed(format!(
                "lease {} names sandbox {} but its claim records {}; refusing to touch it",
                lease.id, lease.cloud_id, claim.cloud_id
            )));
        }
        self.target_of(&claim)
    }

    fn target_of(&self, claim: &Claim) -> Result<Target, ProviderError> {
        if !is_sandbox_id(&claim.cloud_id) {
            return Err(ProviderError::Failed(format!(
                "claim {} records `{}`, which is not a Tensorlake sandbox ID",
                claim.lease_id, claim.cloud_id
            )));
        }
        let workdir = extra_str(claim, CLAIM_WORKDIR).unwrap_or(DEFAULT_WORKDIR);
        Ok(Target {
            lease_id: claim.lease_id.clone(),
            id: claim.cloud_id.clone(),
            workdir: checked_workdir(&claim.slug, workdir)?,
            scope: self.scope_of(claim),
        })
    }

    /// The scope recorded in a claim (the defaults for a claim without one).
    fn scope_of(&self, claim: &Claim) -> Scope {
        let Some(recorded) = claim.extra.get(CLAIM_SCOPE).and_then(Value::as_object) else {
            return Scope {
                cli: self.default_cli(),
                cli_from_block: false,
                api_url: self.defaults.api_url.clone(),
                organization: self.defaults.organization.clone(),
                project: self.defaults.project.clone(),
                namespace: self.defaults.namespace.clone(),
            };
        };
        let get = |k: &str| {
            recorded
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let cli = get("cliPath");
        Scope {
            cli_from_block: cli.is_some(),
            cli: cli.unwrap_or_else(|| self.default_cli()),
            api_url: get("apiUrl"),
            organization: get("organizationId"),
            project: get("projectId"),
            namespace: get("namespace"),
        }
    }

    fn default_cli(&self) -> String {
        self.defaults
            .cli
            .clone()
            .unwrap_or_else(|| DEFAULT_CLI.to_owned())
    }

    async fn write_claim(&self, claim: &Claim) -> Result<Claim, ProviderError> {
        self.claims
            .write(claim)
            .await
            .map_err(|e| ProviderError::Failed(format!("writing claim {}: {e}", claim.lease_id)))
    }

    /// Moves a created lease from its provisional claim to the claim named
    /// as Crabbox names it, `tlsbx_<sandbox id>`: the new claim is written
    /// first, then the provisional one removed. A crash before the write
    /// leaves the provisional claim recording the sandbox ID, which `list`
    /// reports as a lease as it does claims of earlier crabbox versions; a
    /// crash after it leaves a provisional claim that `list` hides behind
    /// the `tlsbx_` one, so discovery reports it as dangling and the next
    /// apply forgets it.
    async fn rekey(&self, provisional: &Claim) -> Result<(), ProviderError> {
        let claim = rekeyed(provisional);
        if claim.lease_id == provisional.lease_id {
            return Ok(());
        }
        self.write_claim(&claim).await?;
        self.claims
            .remove(&provisional.lease_id)
            .await
            .map_err(ProviderError::state)
    }

    // ---- running the CLI ---------------------------------------------------

    fn check_key(&self) -> Result<(), ProviderError> {
        if self.api_key.is_empty() {
            Err(ProviderError::Credentials {
                message: "no Tensorlake API key: the tensorlake provider needs one".to_owned(),
                hint: format!("set {KEY_ENV} or {CLI_KEY_ENV} (a key from the Tensorlake console)"),
            })
        } else {
            Ok(())
        }
    }

    /// `text` with the API key replaced.
    fn redact(&self, text: &str) -> String {
        if self.api_key.is_empty() {
            text.to_owned()
        } else {
            text.replace(&self.api_key, REDACTED)
        }
    }

    /// `<cli> <globals> sbx <args>` with the key in its environment only.
    fn command(&self, scope: &Scope, args: &[String]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&scope.cli);
        cmd.args(scope.global_args()).arg("sbx").args(args);
        for name in STRIPPED_ENV {
            cmd.env_remove(name);
        }
        for (name, value) in &self.cli_env {
            cmd.env(name, value);
        }
        cmd.env(CLI_KEY_ENV, &self.api_key);
        if let Some(url) = &scope.api_url {
            cmd.env(CLI_URL_ENV, url);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }

    /// Runs `sbx <args>`, its output line by line to `sink` (redacted).
    async fn run(
        &self,
        scope: &Scope,
        args: &[String],
        sink: Arc<dyn OutputSink>,
        timeout: Option<Duration>,
    ) -> Result<Outcome, ProviderError> {
        self.check_key()?;
        let mut child = self.command(scope, args).spawn().map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) {
                ProviderError::Config {
                    message: format!("cannot run the Tensorlake CLI `{}`: {e}", scope.cli),
                    hint: "install it (`pip install tensorlake`) or name it with `tensorlake.cliPath` or CRABBOX_TENSORLAKE_CLI".to_owned(),
                }
            } else {
                ProviderError::Failed(format!("starting `{}`: {e}", scope.cli))
            }
        })?;
        let pid = child.id().and_then(|id| i32::try_from(id).ok());
        let key = (!self.api_key.is_empty()).then(|| Arc::<str>::from(self.api_key.as_str()));
        let pumps = [
            child
                .stdout
                .take()
                .map(|r| tokio::spawn(pump(r, Stream::Stdout, sink.clone(), key.clone()))),
            child
                .stderr
                .take()
                .map(|r| tokio::spawn(pump(r, Stream::Stderr, sink, key))),
        ];
        let waited = match timeout {
            Some(limit) => tokio::time::timeout(limit, child.wait()).await.ok(),
            None => Some(child.wait().await),
        };
        let Some(status) = waited else {
            if let Some(pid) = pid {
                // The CLI leads its own group (`process_group(0)`) and is not
                // reaped yet, so the group ID cannot have been reused.
                kill_group(pid, libc::SIGTERM);
                if tokio::time::timeout(KILL_GRACE, child.wait())
                    .await
                    .is_err()
                {
                    kill_group(pid, libc::SIGKILL);
                    let _ = child.wait().await;
                }
            }
            for pump in pumps.into_iter().flatten() {
                pump.abort();
            }
            return Ok(Outcome::TimedOut(timeout.unwrap_or_default()));
        };
        let status = status
            .map_err(|e| ProviderError::Failed(format!("waiting for `{}`: {e}", scope.cli)))?;
        finish_pumps(pumps, OUTPUT_GRACE).await;
        Ok(Outcome::Exited(exit_code(status)))
    }

    /// Runs `sbx <args>` and collects its output.
    async fn capture(
        &self,
        scope: &Scope,
        args: &[String],
        timeout: Duration,
    ) -> Result<Captured, ProviderError> {
        let sink = Arc::new(Collect::default());
        let outcome = self.run(scope, args, sink.clone(), Some(timeout)).await?;
        let (stdout, stderr) = sink.take();
        Ok(Captured {
            outcome,
            stdout,
            stderr,
        })
    }

    /// Runs `sbx <args>`; its stdout when it exits 0, else the error it describes.
    async fn control(
        &self,
        scope: &Scope,
        args: &[String],
        timeout: Duration,
        retry: Retry,
    ) -> Result<Vec<String>, ProviderError> {
        let captured = self.capture(scope, args, timeout).await?;
        if captured.outcome == Outcome::Exited(0) {
            Ok(captured.stdout)
        } else {
            Err(self.cli_error(&describe_call(args), &captured, retry))
        }
    }

    /// The error a failed invocation describes.
    fn cli_error(&self, call: &str, captured: &Captured, retry: Retry) -> ProviderError {
        let text = captured.error_text();
        let how = match captured.outcome {
            Outcome::Exited(code) => format!("exited {code}"),
            Outcome::TimedOut(limit) => format!("timed out after {}", duration::format(limit)),
        };
        let message = self.redact(&if text.is_empty() {
            format!("tensorlake {call} {how}")
        } else {
            format!("tensorlake {call} {how}: {text}")
        });
        let lower = text.to_ascii_lowercase();
        let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
        if has(&[
            "unauthorized",
            "unauthenticated",
            "forbidden",
            "invalid api key",
            "401",
            "403",
        ]) {
            return ProviderError::Credentials {
                message,
                hint: format!(
                    "check the API key in {KEY_ENV} or {CLI_KEY_ENV}, and the organization/project it belongs to"
                ),
            };
        }
        let refused_before_acting = has(&["429", "rate limit", "too many requests"]);
        let transient = refused_before_acting
            || matches!(captured.outcome, Outcome::TimedOut(_))
            || has(&[
                "502",
                "503",
                "504",
                "temporarily unavailable",
                "service unavailable",
                "timed out",
                "connection reset",
                "connection refused",
            ]);
        let retryable = match retry {
            Retry::Never => false,
            Retry::IfRefused => refused_before_acting,
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

    /// `sbx exec [-w <workdir>] <id> bash -lc <script>`, streamed to `sink`.
    async fn shell(
        &self,
        target: &Target,
        workdir: Option<&str>,
        script: &str,
        sink: Arc<dyn OutputSink>,
        timeout: Option<Duration>,
    ) -> Result<Outcome, ProviderError> {
        let mut args = vec!["exec".to_owned()];
        if let Some(workdir) = workdir {
            args.push("-w".to_owned());
            args.push(workdir.to_owned());
        }
        args.extend([
            target.id.clone(),
            "bash".to_owned(),
            "-lc".to_owned(),
            checked_text("command", script)?.to_owned(),
        ]);
        self.run(&target.scope, &args, sink, timeout).await
    }

    /// Runs a script of crabbox's own in the sandbox and collects its output.
    async fn script(
        &self,
        target: &Target,
        script: &str,
        timeout: Duration,
    ) -> Result<Captured, ProviderError> {
        let sink = Arc::new(Collect::default());
        let outcome = self
            .shell(target, None, script, sink.clone(), Some(timeout))
            .await?;
        let (stdout, stderr) = sink.take();
        Ok(Captured {
            outcome,
            stdout,
            stderr,
        })
    }

    /// Runs a script of crabbox's own; an error unless it exits 0.
    async fn script_ok(
        &self,
        target: &Target,
        doing: &str,
        script: &str,
    ) -> Result<(), ProviderError> {
        let captured = self.script(target, script, TRANSFER_TIMEOUT).await?;
        if captured.outcome == Outcome::Exited(0) {
            Ok(())
        } else {
            Err(self.cli_error(
                &format!("exec ({doing} in sandbox {})", target.id),
                &captured,
                Retry::Never,
            ))
        }
    }

    /// `sbx cp <local> <id>:<remote>`.
    async fn copy_in(
        &self,
        target: &Target,
        local: &Path,
        remote: &str,
    ) -> Result<(), ProviderError> {
        let args = vec![
            "cp".to_owned(),
            local.display().to_string(),
            format!("{}:{remote}", target.id),
        ];
        self.control(&target.scope, &args, TRANSFER_TIMEOUT, Retry::IfTransient)
            .await
            .map(drop)
    }

    /// The sandbox's status from `sbx describe`; `None` when it is gone.
    async fn status(&self, scope: &Scope, id: &str) -> Result<Option<String>, ProviderError> {
        let args = vec!["describe".to_owned(), id.to_owned()];
        let captured = self.capture(scope, &args, CONTROL_TIMEOUT).await?;
        if captured.outcome != Outcome::Exited(0) {
            if captured.is_not_found() {
                return Ok(None);
            }
            return Err(self.cli_error(&describe_call(&args), &captured, Retry::IfTransient));
        }
        parse_status(&captured.stdout).map(Some).ok_or_else(|| {
            ProviderError::Failed(format!(
                "tensorlake sbx describe {id} printed no `Status:` line"
            ))
        })
    }

    /// `sbx terminate <id>`; `Ok(false)` when the sandbox was already gone.
    async fn terminate(&self, scope: &Scope, id: &str) -> Result<bool, ProviderError> {
        let args = vec!["terminate".to_owned(), id.to_owned()];
        let captured = self.capture(scope, &args, CONTROL_TIMEOUT).await?;
        if captured.outcome == Outcome::Exited(0) {
            Ok(true)
        } else if captured.is_not_found() {
            Ok(false)
        } else {
            Err(self.cli_error(&describe_call(&args), &captured, Retry::IfTransient))
        }
    }

    /// Waits for `describe` to report a running status.
    async fn wait_running(&self, scope: &Scope, id: &str) -> Result<(), ProviderError> {
        let deadline = Instant::now() + self.ready_timeout;
        let mut last;
        loop {
            match self.status(scope, id).await {
                Ok(Some(status)) if READY_STATES.contains(&status.as_str()) => return Ok(()),
                Ok(Some(status)) if DEAD_STATES.contains(&status.as_str()) => {
                    return Err(ProviderError::Failed(format!(
                        "tensorlake sandbox {id} is `{status}` instead of running"
                    )));
                }
                Ok(Some(status)) => last = format!("status `{status}`"),
                Ok(None) => {
                    return Err(ProviderError::Failed(format!(
                        "tensorlake sandbox {id} disappeared while booting"
                    )));
                }
                Err(e) if e.is_retryable() => last = e.to_string(),
                Err(e) => return Err(e),
            }
            if Instant::now() + self.ready_poll >= deadline {
                return Err(ProviderError::Failed(format!(
                    "tensorlake sandbox {id} was not running within {} (last: {last})",
                    duration::format(self.ready_timeout)
                )));
            }
            tokio::time::sleep(self.ready_poll).await;
        }
    }

    /// Everything after the sandbox exists: it runs, its workdir exists.
    async fn finish_create(&self, target: &Target) -> Result<(), ProviderError> {
        self.wait_running(&target.scope, &target.id).await?;
        self.script_ok(
            target,
            "creating the workdir",
            &format!("mkdir -p -- {}", quote(&target.workdir)),
        )
        .await
    }

    // ---- environment profiles ----------------------------------------------

    /// Copies `env` into the sandbox as a profile; `None` when there is nothing
    /// to forward. The local file is removed when the returned value is dropped.
    async fn upload_profile(
        &self,
        target: &Target,
        env: &BTreeMap<String, String>,
    ) -> Result<Option<RemoteProfile>, ProviderError> {
        if env.is_empty() {
            return Ok(None);
        }
        let text = export_lines(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        let dir = self.state_dir.join("tensorlake").join("tmp");
        atomic_file::create_private_dir(&dir)
            .map_err(|e| ProviderError::Failed(format!("creating {}: {e}", dir.display())))?;
        let mut file = tempfile::Builder::new()
            .prefix("crabbox-env-")
            .suffix(".sh")
            .tempfile_in(&dir)
            .map_err(|e| {
                ProviderError::Failed(format!("creating a profile in {}: {e}", dir.display()))
            })?;
        let write = file
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.flush());
        let local = file.into_temp_path();
        write.map_err(|e| {
            ProviderError::Failed(format!("writing the profile {}: {e}", local.display()))
        })?;
        let remote = format!("/tmp/crabbox-env-{}.sh", random_hex(8));
        self.copy_in(target, &local, &remote).await?;
        Ok(Some(RemoteProfile {
            _local: local,
            remote,
        }))
    }

    /// Best-effort removal of a profile the command may not have deleted.
    async fn remove_remote(&self, target: &Target, remote: &str) {
        let _ = self
            .script(
                target,
                &format!("rm -f -- {}", quote(remote)),
                CONTROL_TIMEOUT,
            )
            .await;
    }

    /// Runs `body` with `env` sourced from an uploaded profile; the profile
    /// is gone, locally and in the sandbox, when this returns.
    async fn run_with_env(
        &self,
        target: &Target,
        workdir: Option<&str>,
        env: &BTreeMap<String, String>,
        body: &str,
        sink: Arc<dyn OutputSink>,
        timeout: Option<Duration>,
    ) -> Result<Outcome, ProviderError> {
        let profile = self.upload_profile(target, env).await?;
        let mut script = String::new();
        if let Some(profile) = &profile {
            let remote = quote(&profile.remote);
            let _ = writeln!(
                script,
                ". {remote} || {{ rm -f -- {remote}; exit 127; }}; rm -f -- {remote}"
            );
        }
        script.push_str(&target.own_exports());
        script.push_str(body);
        let outcome = self.shell(target, workdir, &script, sink, timeout).await;
        if let Some(profile) = profile {
            // The script deletes it first thing; when it may not have run to
            // that point, delete it again.
            if !matches!(outcome, Ok(Outcome::Exited(0))) {
                self.remove_remote(target, &profile.remote).await;
            }
            drop(profile);
        }
        outcome
    }
}

/// Which failures the executor may retry.
#[derive(Debug, Clone, Copy)]
enum Retry {
    /// None (the call may have acted: `exec` of crabbox's own scripts).
    Never,
    /// Only an explicit refusal (rate limits): `create`, which may otherwise
    /// have made a sandbox.
    IfRefused,
    /// Timeouts, 5xx and rate limits: reads and idempotent calls.
    IfTransient,
}

/// A forwarded-environment profile: the local file (a `TempPath`, so it is
/// removed when this is dropped, whatever happened) and where it was copied
/// in the sandbox.
struct RemoteProfile {
    _local: tempfile::TempPath,
    remote: String,
}

/// A finished invocation and its (redacted) output.
struct Captured {
    outcome: Outcome,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

impl Captured {
    /// Up to 4 KiB of stderr (stdout when stderr is empty), trimmed.
    fn error_text(&self) -> String {
        let stderr = self.stderr.join("\n");
        let text = if stderr.trim().is_empty() {
            self.stdout.join("\n")
        } else {
            stderr
        };
        truncate(text.trim(), ERROR_TEXT_MAX).to_owned()
    }

    /// Whether the CLI said the sandbox does not exist.
    fn is_not_found(&self) -> bool {
        let text = self.error_text().to_ascii_lowercase();
        text.contains("not found") || text.contains("404") || text.contains("no such sandbox")
    }
}

#[async_trait]
impl Provider for TensorlakeProvider {
    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn Session + 'a> {
        Box::new(TensorlakeSession {
            provider: self,
            lease,
        })
    }

    fn name(&self) -> ProviderName {
        ProviderName::Tensorlake
    }

    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError> {
        self.check_key()?;
        // Claims with a sandbox ID, by the scope their sandbox lives in: one
        // `ls -q` per scope (normally exactly one).
        let mut by_scope: BTreeMap<Scope, Vec<Claim>> = BTreeMap::new();
        let claims = pond_claims(&self.claims, ProviderName::Tensorlake, pond, |c| {
            is_sandbox_id(&c.cloud_id)
        })
        .await?;
        // A provisional claim left by a create that crashed after re-keying
        // (see `rekey`) is not a second lease of the same sandbox.
        let rekeyed: BTreeSet<String> = claims
            .iter()
            .filter(|c| c.lease_id == mint::tensorlake(&c.cloud_id))
            .map(|c| c.cloud_id.clone())
            .collect();
        for claim in claims.into_iter().filter(|c| {
            c.lease_id == mint::tensorlake(&c.cloud_id) || !rekeyed.contains(&c.cloud_id)
        }) {
            by_scope
                .entry(self.scope_of(&claim))
                .or_default()
                .push(claim);
        }
        let mut leases = Vec::new();
        for (scope, claims) in by_scope {
            let args = vec!["ls".to_owned(), "-q".to_owned()];
            let listed: BTreeSet<String> = self
                .control(&scope, &args, CONTROL_TIMEOUT, Retry::IfTransient)
                .await?
                .iter()
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect();
            leases.extend(
                claims
                    .iter()
                    .filter(|c| listed.contains(&c.cloud_id))
                    .map(lease_from_claim),
            );
        }
        leases.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(leases)
    }

    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError> {
        self.check_key()?;
        let settings = Settings::of(&request.member, &self.defaults)?;
        let mut claim = pending_claim(&self.claims, &request.lease_id).await?;
        let name = sandbox_name(&request.pond, &request.member.slug);
        // What is about to exist is recorded first.
        claim
            .extra
            .insert(CLAIM_NAME.to_owned(), Value::String(name.clone()));
        claim.extra.insert(
            CLAIM_WORKDIR.to_owned(),
            Value::String(settings.workdir.clone()),
        );
        claim
            .extra
            .insert(CLAIM_SCOPE.to_owned(), settings.scope.to_claim());
        claim.labels.clone_from(&request.labels);
        let mut claim = self.write_claim(&claim).await?;

        let mut args = vec!["create".to_owned()];
        args.extend(settings.create_args.iter().cloned());
        args.push(name.clone());
        let captured = self
            .capture(&settings.scope, &args, TRANSFER_TIMEOUT)
            .await?;
        if captured.outcome != Outcome::Exited(0) {
            return Err(self.cli_error("sbx create", &captured, Retry::IfRefused));
        }
        let id = parse_sandbox_id(&captured.stdout).ok_or_else(|| {
            let stderr = truncate(captured.stderr.join("\n").trim(), ERROR_TEXT_MAX).to_owned();
            ProviderError::Failed(format!(
                "tensorlake sbx create {name} printed no sandbox ID (a line of {ID_MIN} to {ID_MAX} lowercase letters and digits){}",
                if stderr.is_empty() {
                    String::new()
                } else {
                    format!("; stderr: {stderr}")
                }
            ))
        })?;
        let target = Target {
            lease_id: request.lease_id.clone(),
            id: id.clone(),
            workdir: settings.workdir.clone(),
            scope: settings.scope.clone(),
        };
        claim.cloud_id.clone_from(&id);
        let result = match self.write_claim(&claim).await {
            Ok(written) => {
                claim = written;
                self.finish_create(&target).await
            }
            Err(e) => Err(e),
        };
        let result = match result {
            Ok(()) => self.rekey(&claim).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let cleanup = match self.terminate(&target.scope, &id).await {
                Ok(_) => format!("sandbox {id} terminated"),
                Err(t) => format!("terminating sandbox {id} also failed: {t}"),
            };
            return Err(match e {
                ProviderError::Config { message, hint } => ProviderError::Config {
                    message: format!("{message} ({cleanup})"),
                    hint,
                },
                ProviderError::Credentials { message, hint } => ProviderError::Credentials {
                    message: format!("{message} ({cleanup})"),
                    hint,
                },
                other => ProviderError::Failed(format!("{other} ({cleanup})")),
            });
        }
        let rekeyed = rekeyed(&claim);
        Ok(lease_from_claim(&rekeyed))
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
        let gone = || {
            ProviderError::NotFound(format!(
                "tensorlake sandbox {} (lease {})",
                target.id, lease.id
            ))
        };
        match self.status(&target.scope, &target.id).await? {
            None => return Err(gone()),
            Some(status) if status == "terminated" || status == "deleted" => return Err(gone()),
            Some(_) => {}
        }
        if self.terminate(&target.scope, &target.id).await? {
            Ok(())
        } else {
            Err(gone())
        }
    }
}

/// A lease of this provider, reached through its own command API.
struct TensorlakeSession<'a> {
    provider: &'a TensorlakeProvider,
    lease: &'a Lease,
}

#[async_trait]
impl Session for TensorlakeSession<'_> {
    async fn upload(&self, archive: &Path) -> Result<(), ProviderError> {
        let target = self.provider.target(self.lease).await?;
        let remote = format!("/tmp/crabbox-sync-{}.tgz", random_hex(8));
        self.provider.copy_in(&target, archive, &remote).await?;
        let (wd, remote_q) = (quote(&target.workdir), quote(&remote));
        let script = format!(
            "mkdir -p -- {wd} && tar -xzf {remote_q} -C {wd}\nstatus=$?\nrm -f -- {remote_q}\nexit $status\n"
        );
        self.provider
            .script_ok(&target, "unpacking the sync archive", &script)
            .await
    }

    async fn exec(
        &self,
        request: &ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ProviderError> {
        let target = self.provider.target(self.lease).await?;
        let command = checked_text("command", &request.command)?;
        let outcome = self
            .provider
            .run_with_env(
                &target,
                Some(&target.workdir),
                &request.env,
                &format!("{command}\n"),
                sink,
                request.timeout,
            )
            .await?;
        match outcome {
            Outcome::Exited(code) => Ok(code),
            Outcome::TimedOut(limit) => Err(ProviderError::Failed(format!(
                "command timed out after {}",
                duration::format(limit)
            ))),
        }
    }

    /// `.crabbox/logs` in the workdir `exec` runs in, where services log.
    fn logs_dir(&self) -> Option<String> {
        Some(format!("{STATE_DIR}/{LOGS}"))
    }

    async fn start_background(
        &self,
        request: &ExecRequest,
        name: &str,
    ) -> Result<(), ProviderError> {
        check_service_name(name)?;
        let target = self.provider.target(self.lease).await?;
        let command = checked_text("command", &request.command)?;
        let services = target.services();
        let log = services.log(name);
        let body = format!(
            "{}cd {} || exit 127\n{}",
            stop_functions(&target.lease_id, &target.workdir),
            quote(&target.workdir),
            services.start_script(name, "sh -c", command)
        );
        let sink = Arc::new(Collect::default());
        let outcome = self
            .provider
            .run_with_env(
                &target,
                None,
                &request.env,
                &body,
                sink.clone(),
                Some(TRANSFER_TIMEOUT),
            )
            .await?;
        let (stdout, stderr) = sink.take();
        let captured = Captured {
            outcome,
            stdout,
            stderr,
        };
        match captured.outcome {
            Outcome::Exited(0) => Ok(()),
            Outcome::Exited(EXITED_AT_ONCE) => {
                let (status, tail) = early_exit(&captured.stdout);
                Err(ProviderError::Failed(format!(
                    "background service `{name}` exited with status {status} right after starting; last lines of {log} in sandbox {}:\n{tail}",
                    target.id
                )))
            }
            _ => Err(self.provider.cli_error(
                &format!("exec (starting background service `{name}`)"),
                &captured,
                Retry::Never,
            )),
        }
    }

    async fn stop_background(&self) -> Result<(), ProviderError> {
        let target = self.provider.target(self.lease).await?;
        let script = format!(
            "{}{}",
            stop_functions(&target.lease_id, &target.workdir),
            target.services().stop_all()
        );
        self.provider
            .script_ok(&target, "stopping background services", &script)
            .await
    }

    async fn probe(
        &self,
        probe: &Probe,
        env: &BTreeMap<String, String>,
    ) -> Result<bool, ProviderError> {
        let target = self.provider.target(self.lease).await?;
        let script = match probe {
            Probe::Command(command) => {
                let body = probe_command_line(command)?;
                let outcome = self
                    .provider
                    .run_with_env(
                        &target,
                        Some(&target.workdir),
                        env,
                        &body,
                        Arc::new(NullSink),
                        Some(PROBE_COMMAND_TIMEOUT),
                    )
                    .await?;
                return Ok(outcome == Outcome::Exited(0));
            }
            Probe::Tcp { host, port } => bash_tcp_probe_script(probe_host(host.as_deref())?, *port),
            Probe::Http(url) => http_probe_script(checked_text("probe URL", url)?, "sandbox"),
        };
        let captured = self
            .provider
            .script(&target, &script, PROBE_COMMAND_TIMEOUT)
            .await?;
        match captured.outcome {
            Outcome::Exited(0) => Ok(true),
            Outcome::Exited(NO_PROBE_TOOL) => Err(ProviderError::Failed(format!(
                "cannot probe in tensorlake sandbox {}: {}",
                target.id,
                captured.error_text()
            ))),
            Outcome::Exited(_) | Outcome::TimedOut(_) => Ok(false),
        }
    }
}

// ---- helpers ----------------------------------------------------------------

/// A claim under its Crabbox-shaped ID, `tlsbx_<sandbox id>`, its `lease`
/// label following (a claim already so named is returned as it is).
fn rekeyed(claim: &Claim) -> Claim {
    let id = mint::tensorlake(&claim.cloud_id);
    let mut claim = claim.clone();
    if claim.lease_id != id {
        claim
            .labels
            .insert(labels::LEASE.into(), id.as_str().into());
        claim.lease_id = id;
    }
    claim
}

fn lease_from_claim(claim: &Claim) -> Lease {
    claim_backed::lease_from_claim(claim, ProviderName::Tensorlake, Endpoint::default())
}

/// Whether `s` has the shape of a Tensorlake sandbox ID.
#[must_use]
pub fn is_sandbox_id(s: &str) -> bool {
    (ID_MIN..=ID_MAX).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// The sandbox ID in `sbx create`'s output: its first line that is one.
#[must_use]
pub fn parse_sandbox_id(stdout: &[String]) -> Option<String> {
    stdout
        .iter()
        .map(|l| l.trim())
        .find(|l| is_sandbox_id(l))
        .map(str::to_owned)
}

/// The lowercased value of `describe`'s `Status:` line.
fn parse_status(stdout: &[String]) -> Option<String> {
    stdout.iter().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case("status")
            .then(|| value.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
    })
}

/// `crabbox-<pond>-<slug>-<6 hex>`: lowercase letters, digits and `-`, at
/// most 63 characters.
#[must_use]
pub fn sandbox_name(pond: &str, slug: &str) -> String {
    let suffix = random_hex(3);
    let room = NAME_MAX - "crabbox-".len() - 1 - suffix.len();
    let mut base = String::new();
    for c in format!("{pond}-{slug}").chars() {
        let c = if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '-'
        };
        if !(c == '-' && (base.is_empty() || base.ends_with('-'))) {
            base.push(c);
        }
    }
    base.truncate(room);
    let base = base.trim_matches('-');
    let base = if base.is_empty() { "member" } else { base };
    format!("crabbox-{base}-{suffix}")
}

/// The workdir, checked by the block's own rule
/// ([`TensorlakeBlock::checked_workdir`], the one `validate` applies): an
/// absolute directory other than `/`, `/tmp`, `/workspace` or a system
/// directory, without `.` or `..`; trailing slashes removed.
///
/// # Errors
/// [`ProviderError::Config`] naming the member.
pub fn checked_workdir(slug: &str, workdir: &str) -> Result<String, ProviderError> {
    TensorlakeBlock::checked_workdir(Some(workdir)).map_err(|p| ProviderError::Config {
        message: format!("member `{slug}`: {}", p.message),
        hint: p.hint,
    })
}

/// `args` as `sbx <verb> …` for messages (the verb and the sandbox ID only).
fn describe_call(args: &[String]) -> String {
    let verb = args.first().map_or("", String::as_str);
    match verb {
        "describe" | "terminate" => {
            format!("sbx {verb} {}", args.get(1).map_or("", String::as_str))
        }
        _ => format!("sbx {verb}"),
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

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS provides randomness");
    buf.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn kill_group(pgid: i32, signal: i32) {
    // SAFETY: killpg(2) only takes integers and touches no memory.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

/// Copies one pipe to the sink line by line, with the key redacted.
async fn pump(
    reader: impl AsyncRead + Unpin,
    stream: Stream,
    sink: Arc<dyn OutputSink>,
    key: Option<Arc<str>>,
) {
    pump_lines(reader, |_, line| match &key {
        Some(key) if line.contains(&**key) => sink.line(stream, &line.replace(&**key, REDACTED)),
        _ => sink.line(stream, line),
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_owned).collect()
    }

    #[test]
    fn sandbox_ids_are_parsed_from_the_first_matching_line() {
        assert_eq!(
            parse_sandbox_id(&lines(
                "Created sandbox crabbox-p-a-abc123\n3pryjysezwsnlex226i5h\nx"
            )),
            Some("3pryjysezwsnlex226i5h".to_owned())
        );
        assert_eq!(
            parse_sandbox_id(&lines("  561sdfohklnysghdfbgrz  ")),
            Some("561sdfohklnysghdfbgrz".to_owned())
        );
        for none in [
            "",
            "sandbox created",
            "UPPERCASE1234567890",
            "short123",
            &"a".repeat(41),
        ] {
            assert_eq!(parse_sandbox_id(&lines(none)), None, "{none:?}");
        }
    }

    #[test]
    fn status_lines_are_read_case_insensitively() {
        assert_eq!(
            parse_status(&lines("ID: x\nName: y\nStatus:  Running \n")),
            Some("running".to_owned())
        );
        assert_eq!(parse_status(&lines("ID: x\n")), None);
    }

    #[test]
    fn names_are_bounded_host_names() {
        let name = sandbox_name("pr-42", "API_v2");
        assert!(name.starts_with("crabbox-pr-42-api-v2-"), "{name}");
        assert_eq!(name.len(), "crabbox-pr-42-api-v2-".len() + 6);
        let long = sandbox_name(&"p".repeat(41), &"s".repeat(80));
        assert!(long.len() <= NAME_MAX, "{long}");
        assert!(!long.contains("--"), "{long}");
        assert!(sandbox_name("", "--").starts_with("crabbox-member-"));
        assert!(!is_sandbox_id(&name));
    }

    #[test]
    fn workdirs_must_be_narrow_absolute_paths() {
        assert_eq!(
            checked_workdir("m", "/workspace/app/").expect("ok"),
            "/workspace/app"
        );
        for bad in [
            "",
            "/",
            "relative",
            "/tmp",
            "/workspace/",
            "/usr",
            "/a/../b",
            "/a/./b",
        ] {
            assert!(checked_workdir("m", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_prefer_crabbox_variables() {
        let vars: BTreeMap<&str, &str> = [
            ("TENSORLAKE_API_URL", "https://tl.example"),
            ("CRABBOX_TENSORLAKE_API_URL", "https://crabbox.example"),
            ("TENSORLAKE_ORGANIZATION_ID", "org"),
            ("INDEXIFY_NAMESPACE", "ns"),
            ("TENSORLAKE_PROJECT_ID", " "),
        ]
        .into_iter()
        .collect();
        let d = TensorlakeDefaults::from_vars(|k| vars.get(k).map(|v| (*v).to_owned()));
        assert_eq!(d.api_url.as_deref(), Some("https://crabbox.example"));
        assert_eq!(d.organization.as_deref(), Some("org"));
        assert_eq!(d.namespace.as_deref(), Some("ns"));
        assert_eq!(d.project, None);
        assert_eq!(d.cli, None);
    }

    #[test]
    fn errors_are_classified_and_redacted() {
        let p = TensorlakeProvider::new("tl_apiKey_SECRET", Path::new("/nonexistent"));
        let captured = |code, err: &str| Captured {
            outcome: Outcome::Exited(code),
            stdout: vec![],
            stderr: lines(err),
        };
        let err = p.cli_error(
            "sbx ls",
            &captured(1, "Error: unauthorized"),
            Retry::IfTransient,
        );
        assert!(matches!(err, ProviderError::Credentials { .. }), "{err:?}");
        let err = p.cli_error("sbx ls", &captured(1, "HTTP 503"), Retry::IfTransient);
        assert!(err.is_retryable(), "{err:?}");
        let err = p.cli_error("sbx create", &captured(1, "HTTP 503"), Retry::IfRefused);
        assert!(!err.is_retryable(), "{err:?}");
        let err = p.cli_error(
            "sbx create",
            &captured(1, "429 rate limit"),
            Retry::IfRefused,
        );
        assert!(err.is_retryable(), "{err:?}");
        let long = "x".repeat(10_000);
        let err = p.cli_error("sbx ls", &captured(2, &long), Retry::Never);
        assert!(err.to_string().len() < ERROR_TEXT_MAX + 100);
        assert_eq!(p.redact("key tl_apiKey_SECRET!"), "key <redacted>!");
        let debug = format!("{p:?}");
        assert!(
            !debug.contains("SECRET") && debug.contains(REDACTED),
            "{debug}"
        );
    }
}
